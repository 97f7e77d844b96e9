//! `SHOW POOLS`: backend connections per server, the sessions waiting for one, and how long
//! the longest has waited so far; `sessions` and `ratio` show multiplexing at work;
//! `expired_total` counts connections replaced after `[proxy] pool_max_lifetime_ms`.

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&[
        "server",
        "in_use",
        "idle",
        "waiting",
        "longest_wait_ms",
        "max",
        "waits_total",
        "avg_wait_ms",
        "expired_total",
    ]);
    let routing = ctx.shared.routing();
    for (slot, server) in routing.slots.iter().zip(&routing.config.servers) {
        if server.removed {
            continue;
        }
        let pool = &slot.pool;
        let (in_use, idle) = pool.counts();
        let waits = pool.waits.load(std::sync::atomic::Ordering::Relaxed);
        let micros = pool.wait_micros.load(std::sync::atomic::Ordering::Relaxed);
        rs.push(vec![
            Some(pool.name.clone()),
            Some(in_use.to_string()),
            Some(idle.to_string()),
            Some(pool.waiting().to_string()),
            Some(pool.longest_wait().as_millis().to_string()),
            Some(pool.max().to_string()),
            Some(waits.to_string()),
            Some(format!(
                "{:.3}",
                if waits == 0 {
                    0.0
                } else {
                    micros as f64 / waits as f64 / 1000.0
                }
            )),
            Some(
                pool.expired_total
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ),
        ]);
    }
    Reply::Rows(rs)
}
