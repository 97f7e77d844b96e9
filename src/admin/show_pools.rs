//! `SHOW POOLS`: backend connections per server.

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["server", "in_use", "idle", "waiting", "max"]);
    for pool in &ctx.shared.pools {
        let (in_use, idle) = pool.counts();
        rs.push(vec![
            Some(pool.name.clone()),
            Some(in_use.to_string()),
            Some(idle.to_string()),
            Some(pool.waiting().to_string()),
            Some(ctx.shared.pool_limits.max_connections.to_string()),
        ]);
    }
    Reply::Rows(rs)
}
