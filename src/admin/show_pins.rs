//! `SHOW PINS`: the statement shapes that pinned sessions to their server connection (turning
//! multiplexing off for them while the pin lasts), most frequent first, with the reason and
//! the users; `RESET PINS` forgets them.

use std::time::UNIX_EPOCH;

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&[
        "reason",
        "statement",
        "count",
        "users",
        "first_seen",
        "last_seen",
    ]);
    let secs = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .ok()
    };
    for p in ctx.shared.pin_log.list() {
        let users: Vec<String> = p.users.iter().map(|(u, n)| format!("{u}:{n}")).collect();
        rs.push(vec![
            Some(p.reason.as_str().to_string()),
            Some(p.text),
            Some(p.count.to_string()),
            Some(users.join(",")),
            secs(p.first_seen),
            secs(p.last_seen),
        ]);
    }
    Reply::Rows(rs)
}

/// `SHOW ACCOUNTS`: the database's accounts as Sluice matches them (most specific host first),
/// with what a login would get; never a hash.
pub(super) fn accounts(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["user", "host", "plugin", "state"]);
    for a in ctx.shared.accounts.list() {
        let state = if a.plugin != "mysql_native_password" || a.stored.is_err() {
            "unsupported plugin"
        } else if a.locked {
            "locked"
        } else if a.expired {
            "expired"
        } else {
            "ok"
        };
        rs.push(vec![
            Some(a.user),
            Some(a.host),
            Some(a.plugin),
            Some(state.to_string()),
        ]);
    }
    Reply::Rows(rs)
}

pub(super) fn reset(ctx: &AdminCtx) -> Reply {
    ctx.shared.pin_log.clear();
    Reply::Ok("pin statistics reset".into())
}
