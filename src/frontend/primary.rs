//! The session's primary connection across failovers and switchovers.
//!
//! A session keeps one connection to the primary. When that connection breaks (the primary
//! died) or the cluster's primary changes (failover, switchover), the session moves at its next
//! command that needs the primary:
//! - an idle session, or one that only reads, moves silently: a connection to the new primary
//!   is taken from its pool, the recorded session state (`USE`, `SET NAMES`, `SET SESSION …`)
//!   is replayed and prepared statements are prepared again under the same client ids;
//! - a session whose transaction died with the old connection gets error 9020 (SQLSTATE 40001:
//!   retry the transaction) once; its next transaction runs on the new primary;
//! - a session that holds state no replay can rebuild (temporary tables, locks, user
//!   variables, …) gets error 9021 and is closed, as a direct connection would be;
//! - while no primary is writable (failover running, switchover pausing writes), the command
//!   waits up to `[monitor] failover_hold_ms`, then gets error 9001.
//!
//! A transaction still open on a live old primary (switchover) stays there until it ends.

use std::time::{Duration, Instant};

use sluice_proto::command::COM_STMT_PREPARE;
use sluice_proto::err::ErrPacket;
use sluice_proto::flags::status::{SERVER_STATUS_AUTOCOMMIT, SERVER_STATUS_IN_TRANS};
use sluice_proto::tracker::ResponseKind;

use super::session::Session;
use super::SessionError;
use crate::backend::{BackendError, PoolError};
use crate::errors;
use crate::router::PinReason;

/// Why the primary cannot serve the command.
pub(super) enum Unavailable {
    /// Answer the command with this error; the session goes on.
    Reply(ErrPacket),
    /// Answer with this error and close the session.
    Close(ErrPacket),
}

impl Session {
    /// Whether the session's primary connection is usable for new work right now (cheap: one
    /// read of the published view).
    #[inline]
    fn primary_current(&self) -> bool {
        if self.primary_lost.is_some() {
            return false;
        }
        if self.status & SERVER_STATUS_IN_TRANS != 0 {
            // A transaction finishes where it started.
            return true;
        }
        self.shared.cluster.borrow().writable_primary() == Some(self.primary_index)
    }

    /// Makes the session's primary connection point at the current primary, waiting (bounded)
    /// for one. `resetting`: the command resets the session state anyway (COM_CHANGE_USER).
    pub(super) async fn ensure_primary(&mut self, resetting: bool) -> Result<(), Unavailable> {
        if self.primary_current() {
            return Ok(());
        }
        if !resetting {
            if let Some(why) = self.primary_lost.clone() {
                if self.status & SERVER_STATUS_IN_TRANS != 0 {
                    // The transaction died with the connection; say so once.
                    self.status &= !SERVER_STATUS_IN_TRANS;
                    return Err(Unavailable::Reply(errors::transaction_lost(&why)));
                }
            }
            if self.pins != 0 {
                let reasons: Vec<&str> = PinReason::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| self.pins & (1 << i) != 0)
                    .map(|(_, p)| p.as_str())
                    .collect();
                return Err(Unavailable::Close(errors::session_state_lost(
                    &reasons.join(", "),
                )));
            }
        }
        let hold = self.routing.config.monitor.failover_hold_ms;
        let deadline = Instant::now() + Duration::from_millis(hold);
        let mut rx = self.shared.cluster.clone();
        let mut last_error = None;
        loop {
            let target = rx.borrow_and_update().writable_primary();
            if let Some(p) = target {
                if p == self.primary_index && self.primary_lost.is_none() {
                    return Ok(());
                }
                match self.connect_primary(p).await {
                    Ok(()) => return Ok(()),
                    Err(Unavailable::Reply(e)) => last_error = Some(e),
                    Err(close) => return Err(close),
                }
            }
            let wait = tokio::time::timeout_at(deadline.into(), rx.changed()).await;
            match wait {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(Unavailable::Reply(errors::no_primary())),
                Err(_) => {
                    return Err(Unavailable::Reply(
                        last_error.unwrap_or_else(|| errors::no_primary_within(hold)),
                    ))
                }
            }
        }
    }

    /// Opens a connection to server `p` for this session and moves the session onto it.
    async fn connect_primary(&mut self, p: usize) -> Result<(), Unavailable> {
        if p >= self.routing.slots.len() {
            // Promoted a server added by a reload this session has not seen yet.
            self.refresh_snapshot();
        }
        let routing = self.routing.clone();
        let Some(slot) = routing.slot(p) else {
            return Err(Unavailable::Reply(errors::no_primary()));
        };
        let params = self.login_params();
        let server = slot.pool.name.clone();
        let mut conn = match slot.pool.acquire(params, &routing.pool_limits).await {
            Ok((c, _)) => c,
            Err(PoolError::Backend(BackendError::Refused(e))) => return Err(Unavailable::Reply(e)),
            Err(PoolError::Exhausted {
                server,
                max,
                waited_ms,
            }) => {
                return Err(Unavailable::Reply(errors::pool_exhausted(
                    &server, max, waited_ms,
                )))
            }
            Err(PoolError::Backend(e)) => {
                return Err(Unavailable::Reply(errors::backend_connect(
                    &server,
                    &e.to_string(),
                )))
            }
        };
        for cmd in &self.state_log {
            if let Err(e) = super::routing::replay(&mut conn, cmd).await {
                tracing::warn!(server = %server, error = %e, "replaying session state on the new primary failed");
                return Err(Unavailable::Close(errors::session_state_lost(&format!(
                    "session settings could not be replayed: {e}"
                ))));
            }
        }
        // Prepared statements keep their client ids; the server ids change.
        for st in self.stmts.values_mut() {
            let mut payload = Vec::with_capacity(st.sql.len() + 1);
            payload.push(COM_STMT_PREPARE);
            payload.extend_from_slice(&st.sql);
            match super::statements::control(&mut conn, &payload, ResponseKind::Prepare).await {
                Ok(first) if first.len() >= 5 && first[0] == 0 => {
                    st.primary_id = u32::from_le_bytes([first[1], first[2], first[3], first[4]]);
                    st.primary_types_sent = false;
                }
                Ok(_) => {
                    // The server refused it now; executions get its "unknown statement" error.
                    st.primary_id = u32::MAX;
                }
                Err(e) => {
                    return Err(Unavailable::Reply(errors::backend_connect(&server, &e)));
                }
            }
        }
        let old = std::mem::replace(&mut self.backend, conn);
        if self.primary_lost.take().is_none() {
            // A live old primary (switchover): say goodbye properly.
            old.quit().await;
        }
        tracing::info!(server = %server, "session moved to the new primary");
        self.primary_index = p;
        self.info
            .primary
            .store(p, std::sync::atomic::Ordering::Relaxed);
        self.status = (self.status & !SERVER_STATUS_IN_TRANS) | SERVER_STATUS_AUTOCOMMIT;
        Ok(())
    }

    /// [`Session::ensure_primary`] for a command at the front of the client buffer: on failure
    /// the command is consumed and answered with the error. `Ok(false)` = answered, skip it.
    pub(super) async fn primary_or_reply(
        &mut self,
        wire_len: usize,
        seq: u8,
        resetting: bool,
    ) -> Result<bool, SessionError> {
        match self.ensure_primary(resetting).await {
            Ok(()) => Ok(true),
            Err(Unavailable::Reply(e)) => {
                self.client.consume(wire_len);
                self.client.send_err(seq, &e).await?;
                Ok(false)
            }
            Err(Unavailable::Close(e)) => {
                self.client.consume(wire_len);
                let _ = self.client.send_err(seq, &e).await;
                Err(SessionError::BackendLost(
                    "session state lost with the old primary".into(),
                ))
            }
        }
    }

    /// The primary connection broke: remember why; the next command that needs the primary
    /// reconnects (or reports the lost transaction).
    pub(super) fn mark_primary_lost(&mut self, why: String) {
        tracing::info!(reason = %why, "lost the primary connection");
        self.primary_lost = Some(why);
    }
}
