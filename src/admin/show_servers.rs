//! `SHOW SERVERS` and `SELECT * FROM servers [WHERE col = 'v']`.

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply, ResultSet};

const COLUMNS: [&str; 15] = [
    "name",
    "address",
    "role",
    "healthy",
    "lag_ms",
    "gtid_pos",
    "generation",
    "excluded",
    "source",
    "not_following",
    "conn_in_use",
    "conn_idle",
    "queries_total",
    "queries_per_s",
    "last_error",
];

pub(super) fn run(ctx: &AdminCtx, filter: Option<&(String, String)>) -> Reply {
    if let Some((col, _)) = filter {
        if !COLUMNS.contains(&col.as_str()) {
            return Reply::error(
                1054,
                b"42S22",
                format!(
                    "Unknown column '{col}' in 'where clause' (columns: {})",
                    COLUMNS.join(", ")
                ),
            );
        }
    }
    let view = ctx.shared.cluster.borrow().clone();
    let rates = ctx.query_rates();
    let mut rs = ResultSet::new(&COLUMNS);
    let routing = ctx.shared.routing();
    for (i, s) in view.servers.iter().enumerate() {
        if routing.config.servers.get(i).is_some_and(|c| c.removed) {
            continue;
        }
        let slot = routing.slot(i);
        let (in_use, idle) = slot.map_or((0, 0), |s| s.pool.counts());
        let total = slot.map_or(0, |s| s.queries.load(Ordering::Relaxed));
        let row = vec![
            Some(s.name.clone()),
            Some(s.address.clone()),
            Some(s.role.as_str().to_string()),
            Some(if s.healthy { "yes" } else { "no" }.to_string()),
            s.lag_ms.map(|l| l.to_string()),
            Some(s.gtid_pos.clone()),
            Some(s.generation.to_string()),
            s.excluded.clone(),
            s.source.clone(),
            s.not_following.clone(),
            Some(in_use.to_string()),
            Some(idle.to_string()),
            Some(total.to_string()),
            Some(format!("{:.1}", rates.get(i).copied().unwrap_or(0.0))),
            s.last_error.clone(),
        ];
        if let Some((col, val)) = filter {
            let at = COLUMNS.iter().position(|c| c == col).unwrap_or(0);
            if row[at].as_deref() != Some(val.as_str()) {
                continue;
            }
        }
        rs.push(row);
    }
    Reply::Rows(rs)
}
