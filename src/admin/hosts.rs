//! `SHOW BLOCKED HOSTS` (addresses blocked after `[firewall] max_connect_errors` interrupted or
//! malformed handshakes) and `FLUSH HOSTS` (lift every block, as MySQL's statement of the same name).

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn show(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["address", "blocked_for_s", "failures"]);
    for (ip, left, failures) in ctx.shared.firewall.blocked() {
        rs.push(vec![
            Some(ip.to_string()),
            Some(left.to_string()),
            Some(failures.to_string()),
        ]);
    }
    Reply::Rows(rs)
}

pub(super) fn flush(ctx: &AdminCtx) -> Reply {
    let n = ctx.shared.firewall.flush_hosts();
    tracing::warn!(unblocked = n, "FLUSH HOSTS: every address block lifted");
    Reply::Ok(format!("{n} blocked address(es) unblocked"))
}
