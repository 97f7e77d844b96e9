//! `SHOW QUERY DIGEST` (per normalized statement: executions, time, rows, route; the busiest
//! first) and `RESET QUERY DIGEST`.

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn show(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&[
        "digest",
        "digest_text",
        "count",
        "errors",
        "total_ms",
        "avg_ms",
        "p99_ms",
        "max_ms",
        "rows",
        "route",
        "on_primary",
        "on_replica",
        "first_seen_ms",
        "last_seen_ms",
    ]);
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    for (hash, e) in ctx.shared.digests.snapshot() {
        let avg = e.total_us.checked_div(e.count).unwrap_or(0);
        rs.push(vec![
            Some(format!("{hash:016x}")),
            Some(e.text.to_string()),
            Some(e.count.to_string()),
            Some(e.errors.to_string()),
            Some(ms(e.total_us)),
            Some(ms(avg)),
            Some(ms(e.quantile_us(0.99))),
            Some(ms(e.max_us)),
            Some(e.rows.to_string()),
            Some(e.route().to_string()),
            Some(e.on_primary.to_string()),
            Some(e.on_replica.to_string()),
            Some(e.first_seen_ms.to_string()),
            Some(e.last_seen_ms.to_string()),
        ]);
    }
    Reply::Rows(rs)
}

pub(super) fn reset(ctx: &AdminCtx) -> Reply {
    let n = ctx.shared.digests.reset();
    let state = if ctx.shared.digests.is_enabled() {
        ""
    } else {
        " (digests are off: [admin] query_digest = false)"
    };
    Reply::Ok(format!("{n} digest(s) cleared{state}"))
}
