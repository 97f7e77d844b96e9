//! `KILL SESSION id`: ends a client session at once (its backend connections are closed,
//! never returned to a pool).

use std::sync::atomic::Ordering;

use super::{AdminCtx, Reply};

pub(super) fn run(ctx: &AdminCtx, id: u32) -> Reply {
    if ctx.shared.sessions.kill(id) {
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
