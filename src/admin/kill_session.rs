//! `KILL SESSION id`: ends a client session at once (its backend connections are closed,
//! never returned to a pool), and answers once the session's client connection is closed.

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply};

pub(super) async fn run(ctx: &AdminCtx, id: u32) -> Reply {
    if let Some(victim) = ctx.shared.sessions.kill(id) {
        crate::frontend::registry::Registry::closed(&victim).await;
        ctx.shared
            .counters
            .sessions_killed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(session = id, "session killed by the admin port");
        Reply::Ok(format!("session {id} killed"))
    } else {
        Reply::error(1094, b"HY000", format!("Unknown session id: {id}"))
    }
}
