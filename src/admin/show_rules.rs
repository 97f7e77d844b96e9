//! `SHOW RULES`: routing rules in evaluation order, with how often each matched.

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply, ResultSet};

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["name", "file", "action", "max_lag_ms", "log_only", "hits"]);
    let routing = ctx.shared.routing();
    for (rule, hits) in routing.rules.iter().zip(&routing.rule_hits) {
        let action = match (&rule.deny, rule.route) {
            (Some(msg), _) => format!("deny: {msg}"),
            (None, Some(r)) => format!("route {r:?}").to_lowercase(),
            (None, None) => "budget".to_string(),
        };
        rs.push(vec![
            Some(rule.name.clone()),
            Some(rule.file.display().to_string()),
            Some(action),
            rule.max_lag_ms.map(|m| m.to_string()),
            Some(if rule.log_only { "yes" } else { "no" }.to_string()),
            Some(hits.load(Ordering::Relaxed).to_string()),
        ]);
    }
    Reply::Rows(rs)
}
