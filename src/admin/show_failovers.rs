//! `SHOW FAILOVERS`: failovers and switchovers this instance ran, oldest first.

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let view = ctx.shared.cluster.borrow().clone();
    let mut rs = ResultSet::new(&[
        "kind",
        "from",
        "to",
        "generation",
        "started_ms",
        "duration_ms",
        "ok",
        "detail",
    ]);
    for r in view.history.iter() {
        rs.push(vec![
            Some(r.kind.to_string()),
            Some(r.from.clone()),
            r.to.clone(),
            Some(r.generation.to_string()),
            Some(r.started_ms.to_string()),
            Some(r.duration_ms.to_string()),
            Some(if r.ok { "yes" } else { "no" }.to_string()),
            Some(r.detail.clone()),
        ]);
    }
    Reply::Rows(rs)
}
