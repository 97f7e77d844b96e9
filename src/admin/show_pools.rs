//! `SHOW POOLS`: backend connections per server.

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["server", "in_use", "idle", "waiting", "max"]);
    let routing = ctx.shared.routing();
    for (slot, server) in routing.slots.iter().zip(&routing.config.servers) {
        if server.removed {
            continue;
        }
        let pool = &slot.pool;
        let (in_use, idle) = pool.counts();
        rs.push(vec![
            Some(pool.name.clone()),
            Some(in_use.to_string()),
            Some(idle.to_string()),
            Some(pool.waiting().to_string()),
            Some(pool.max().to_string()),
        ]);
    }
    Reply::Rows(rs)
}
