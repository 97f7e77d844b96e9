//! `SHOW STATS`: totals since start — commands by route and class, then connection and
//! routing counters.

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply, ResultSet};
use crate::router::StatementClass;

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let c = &ctx.shared.counters;
    let mut rs = ResultSet::new(&["name", "route", "class", "value"]);
    for (r, route) in ["primary", "replica"].iter().enumerate() {
        for class in StatementClass::ALL {
            let v = c.queries[r][class.index()].load(Ordering::Relaxed);
            if v > 0 {
                rs.push(vec![
                    Some("queries".into()),
                    Some(route.to_string()),
                    Some(class.as_str().to_string()),
                    Some(v.to_string()),
                ]);
            }
        }
    }
    let totals = [
        (
            "client_connections_open",
            ctx.shared.clients.load(Ordering::Relaxed) as u64,
        ),
        (
            "client_connections_total",
            c.connections_total.load(Ordering::Relaxed),
        ),
        (
            "client_connections_rejected",
            c.rejected_too_many.load(Ordering::Relaxed),
        ),
        (
            "client_idle_timeouts",
            c.idle_timeouts.load(Ordering::Relaxed),
        ),
        ("sessions_killed", c.sessions_killed.load(Ordering::Relaxed)),
        ("reads_on_replicas", c.replica_reads.load(Ordering::Relaxed)),
        ("reads_on_primary", c.primary_reads.load(Ordering::Relaxed)),
        (
            "read_your_writes_fallbacks",
            c.ryw_fallbacks.load(Ordering::Relaxed),
        ),
        ("invalid_hints", c.invalid_hints.load(Ordering::Relaxed)),
    ];
    for (name, v) in totals {
        rs.push(vec![Some(name.into()), None, None, Some(v.to_string())]);
    }
    Reply::Rows(rs)
}
