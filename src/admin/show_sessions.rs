//! `SHOW SESSIONS`: the open client sessions.

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply, ResultSet};
use crate::router::PinReason;

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&[
        "id",
        "client",
        "user",
        "db",
        "state",
        "pinned",
        "pinned_s",
        "pinned_by",
        "held",
        "backend",
        "age_s",
        "tls",
    ]);
    let config = ctx.shared.config();
    let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    for s in ctx.shared.sessions.list() {
        let (user, db) = s.names();
        let state = if s.busy.load(Ordering::Relaxed) {
            "running"
        } else if s.in_transaction.load(Ordering::Relaxed) {
            "idle in transaction"
        } else {
            "idle"
        };
        let pins = s.pins.load(Ordering::Relaxed);
        let pinned = PinReason::describe(pins);
        let (pinned_s, pinned_by) = match s.pinned_by.lock().ok().and_then(|p| p.clone()) {
            Some((since, stmt)) if pins != 0 => (
                Some(format!("{:.1}", since.elapsed().as_secs_f64())),
                Some(stmt),
            ),
            _ => (None, None),
        };
        let backend = s.last_server.load(Ordering::Relaxed);
        let backend = if backend == usize::MAX {
            s.primary.load(Ordering::Relaxed)
        } else {
            backend
        };
        rs.push(vec![
            Some(s.id.to_string()),
            Some(s.client.to_string()),
            Some(user),
            db,
            Some(state.to_string()),
            (!pinned.is_empty()).then_some(pinned),
            pinned_s,
            pinned_by,
            Some(s.held.load(Ordering::Relaxed).to_string()),
            names.get(backend).map(|n| n.to_string()),
            Some(s.started.elapsed().as_secs().to_string()),
            s.tls.get().cloned(),
        ]);
    }
    Reply::Rows(rs)
}
