//! The session's server connections, leased from the pools: taken when a command needs one,
//! brought to the session's state, and given back at the first moment the session does not
//! need them (`[proxy] multiplexing = "transaction"`), or kept for the session's life
//! (`"session"`).
//!
//! A session holds at most one primary and one replica connection. It keeps the primary
//! connection while a transaction is open or a pin holds it; a replica connection while a
//! `START TRANSACTION READ ONLY` runs there; either one until the next command after a
//! statement that left warnings, changed rows or used `SQL_CALC_FOUND_ROWS` (bounded by
//! `[proxy] multiplexing_hold_ms`).
//!
//! Failover needs nothing special: a session that holds no primary connection leases one from
//! whichever server is the writable primary now (waiting up to `[monitor] failover_hold_ms`
//! while there is none); one whose transaction died with its connection gets error 9020 once;
//! one whose pinned state died gets error 9021 and is closed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_proto::err::ErrPacket;
use sluice_proto::tracker::ResponseKind;

use super::session::Session;
use super::Shared;
use crate::backend::{BackendConn, BackendError, LoginParams, PoolError, SyncError};
use crate::errors;
use crate::router::PinReason;

/// A leased connection and the server it belongs to.
pub struct Leased {
    pub server: usize,
    pub conn: Box<BackendConn>,
}

/// Why a command cannot have the connection it needs.
pub(super) enum Unavailable {
    /// Answer the command with this error; the session goes on.
    Reply(ErrPacket),
    /// Answer with this error and close the session.
    Close(ErrPacket),
}

/// Counts a statement in flight on a server while it lives (least-outstanding replica choice);
/// dropping it — also when the session is aborted mid-relay — takes the count back.
pub(super) struct Outstanding<'a>(&'a AtomicU32);

impl<'a> Outstanding<'a> {
    pub(super) fn new(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Outstanding(c)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits (up to `hold_ms`) for a writable primary.
pub(super) async fn wait_for_primary(shared: &Shared, hold_ms: u64) -> Option<usize> {
    let mut rx = shared.cluster.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(hold_ms);
    loop {
        if let Some(p) = rx.borrow_and_update().writable_primary() {
            return Some(p);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

impl Session {
    /// How this session's user logs in to a server.
    pub(super) fn login_params(&self) -> LoginParams<'_> {
        LoginParams {
            user: self.user.name.as_bytes(),
            secret: self.user.secret(),
            database: self.st.vars.db.as_deref(),
            capabilities: self.capabilities,
            charset: self.login.charset,
            max_packet: self.login.max_packet,
            connect_attrs: self.login.connect_attrs.as_deref(),
        }
    }

    /// The id of the connection the session last gave back to server `i` (0: none).
    fn preferred(&self, i: usize) -> u64 {
        self.last_conns
            .iter()
            .find(|(server, _)| *server == i)
            .map_or(0, |&(_, id)| id)
    }

    /// An idle connection to server `i` that serves as it is (of the session's key, on its
    /// loop, in its state), without waiting: what [`Session::lease`] would hand out in the
    /// common case, without its nested futures. `None`: `lease` decides.
    fn lease_ready(&self, i: usize) -> Option<Box<BackendConn>> {
        let slot = self.routing.slot(i)?;
        slot.pool
            .take_ready(&self.login_params(), &self.st.vars, self.preferred(i))
    }

    /// Leases a connection to server `i`, brought to the session's state. The server's login
    /// OK is returned when the connection logged in for this lease.
    pub(super) async fn lease(
        &mut self,
        i: usize,
    ) -> Result<(Box<BackendConn>, Option<bytes::Bytes>), Unavailable> {
        if i >= self.routing.slots.len() {
            // A server added by a reload this session has not seen yet.
            self.refresh_snapshot();
        }
        // Borrowed, not cloned: an Arc clone is a contended atomic on every statement.
        let routing = &self.routing;
        let Some(slot) = routing.slot(i) else {
            return Err(Unavailable::Reply(errors::no_primary()));
        };
        let prefer = self.preferred(i);
        let got = slot
            .pool
            .acquire(
                self.login_params(),
                &routing.pool_limits,
                &self.st.vars,
                prefer,
            )
            .await;
        let acquired = match got {
            Ok(a) => a,
            Err(PoolError::Backend(BackendError::Refused(e))) => return Err(Unavailable::Reply(e)),
            Err(PoolError::Exhausted {
                server,
                max,
                waited_ms,
            }) => {
                tracing::warn!(server = %server, max, "no server connection within pool_wait_ms");
                return Err(Unavailable::Reply(errors::pool_exhausted(
                    &server, max, waited_ms,
                )));
            }
            Err(PoolError::Backend(e)) => {
                let err = match &e {
                    BackendError::AuthPlugin(p) => errors::backend_auth_plugin(&slot.pool.name, p),
                    _ => errors::backend_connect(&slot.pool.name, &e.to_string()),
                };
                tracing::warn!(server = %slot.pool.name, error = %e, "cannot open a server connection");
                return Err(Unavailable::Reply(err));
            }
        };
        if !acquired.waited.is_zero() {
            self.shared
                .metrics
                .pool_wait_seconds
                .observe(acquired.waited);
        }
        let mut conn = acquired.conn;
        // Most leases find the connection in the session's state already: the statements
        // that bring it there (a few hundred bytes of future) are boxed, off the session's
        // own future, which every idle session holds.
        let synced = if conn.state == self.st.vars && conn.charset == self.login.charset {
            Ok(())
        } else {
            Box::pin(conn.sync_to(&self.st.vars, self.login.charset, self.user.secret())).await
        };
        match synced {
            Ok(()) => {}
            Err(SyncError::Refused(e)) => {
                if !conn.state.sets.iter().any(|(k, _)| k == b"?unknown") {
                    slot.pool.release(conn);
                }
                return Err(Unavailable::Reply(e));
            }
            Err(SyncError::Backend(e)) => {
                return Err(Unavailable::Reply(errors::backend_connect(
                    &slot.pool.name,
                    &e.to_string(),
                )))
            }
        }
        let ok = acquired.login_ok.filter(|b| !b.is_empty());
        Ok((conn, ok))
    }

    /// Makes sure the session holds a connection to the writable primary (or to the server
    /// its open transaction runs on).
    pub(super) async fn lease_primary(&mut self) -> Result<(), Unavailable> {
        if let Some(why) = self.txn_lost.take() {
            // The transaction died with its connection; say so once.
            return Err(Unavailable::Reply(errors::transaction_lost(&why)));
        }
        if let Some(reasons) = self.state_lost.take() {
            return Err(Unavailable::Close(errors::session_state_lost(&reasons)));
        }
        if let Some(p) = &self.primary {
            if self.st.in_transaction() {
                // A transaction finishes where it started.
                return Ok(());
            }
            if self.view.writable_primary() == Some(p.server) {
                return Ok(());
            }
            if self.st.pins != 0 {
                return Err(Unavailable::Close(errors::session_state_lost(
                    &PinReason::describe(self.st.pins),
                )));
            }
            // The primary changed (switchover, failover): leave the old one.
            if let Some(old) = self.primary.take() {
                self.info.held.fetch_sub(1, Ordering::Relaxed);
                Box::pin(old.conn.quit()).await;
            }
        }
        // The primary of the view this command started with, first: no watch receiver and
        // no clock read on the way of a statement that gets its connection at once.
        let mut target = self.view.writable_primary();
        if let Some(p) = target {
            if let Some(conn) = self.lease_ready(p) {
                self.hold_primary(p, conn);
                return Ok(());
            }
        }
        let hold = self.routing.config.monitor.failover_hold_ms;
        let mut waiting: Option<(tokio::sync::watch::Receiver<_>, tokio::time::Instant)> = None;
        let mut last_error = None;
        loop {
            if let Some(p) = target {
                match self.lease(p).await {
                    Ok((conn, _)) => {
                        self.hold_primary(p, conn);
                        return Ok(());
                    }
                    Err(Unavailable::Reply(e)) if e.code == errors::SLUICE_BACKEND_CONNECT => {
                        // The primary may be dying: wait for the cluster view to change.
                        last_error = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            let (rx, deadline) = match &mut waiting {
                Some(w) => w,
                None => {
                    let mut rx = self.shared.cluster.clone();
                    let now = rx.borrow_and_update().writable_primary();
                    let w = waiting.insert((
                        rx,
                        tokio::time::Instant::now() + Duration::from_millis(hold),
                    ));
                    if now != target {
                        // The view changed since the command started.
                        target = now;
                        continue;
                    }
                    w
                }
            };
            match tokio::time::timeout_at(*deadline, rx.changed()).await {
                Ok(Ok(())) => target = rx.borrow_and_update().writable_primary(),
                Ok(Err(_)) => return Err(Unavailable::Reply(errors::no_primary())),
                Err(_) => {
                    return Err(Unavailable::Reply(
                        last_error.unwrap_or_else(|| errors::no_primary_within(hold)),
                    ))
                }
            }
        }
    }

    pub(super) fn hold_primary(&mut self, server: usize, conn: Box<BackendConn>) {
        self.info.held.fetch_add(1, Ordering::Relaxed);
        self.info.primary.store(server, Ordering::Relaxed);
        self.primary = Some(Leased { server, conn });
    }

    /// Makes sure the session holds a connection to replica `i`. False (the caller uses the
    /// primary) when none can be had.
    pub(super) async fn lease_replica(&mut self, i: usize) -> bool {
        if self.replica.as_ref().is_some_and(|r| r.server == i) {
            return true;
        }
        self.release_replica().await;
        let got = match self.lease_ready(i) {
            Some(conn) => Ok((conn, None)),
            None => self.lease(i).await,
        };
        match got {
            Ok((conn, _)) => {
                self.info.held.fetch_add(1, Ordering::Relaxed);
                self.replica = Some(Leased { server: i, conn });
                true
            }
            Err(Unavailable::Reply(e) | Unavailable::Close(e)) => {
                tracing::debug!(server = %self.routing.server_name(i), error = %String::from_utf8_lossy(&e.message), "no replica connection; reading from the primary");
                false
            }
        }
    }

    /// [`Session::settle`] without an await, as far as it goes: false when a connection to
    /// give back must be read first (its LAST_INSERT_ID(), its GTID), which `settle` then
    /// does. What it gave back is not given back twice: `settle` finds it gone.
    pub(super) fn settle_now(&mut self) -> bool {
        if self.st.hold.is_some() {
            return true;
        }
        let replica_txn = self.st.in_transaction() && self.txn_on_replica;
        if !replica_txn {
            self.txn_on_replica = false;
            if let Some(r) = self.replica.take() {
                if let Some(r) = self.give_back_now(r, false) {
                    self.replica = Some(r);
                    return false;
                }
                self.info.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.multiplex && !self.st.needs_held() {
            if let Some(p) = self.primary.take() {
                if let Some(p) = self.give_back_now(p, true) {
                    self.primary = Some(p);
                    return false;
                }
                self.info.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// After a command: gives back every connection the session does not need now.
    pub(super) async fn settle(&mut self) {
        let multiplex = self.multiplex;
        if self.st.hold.is_some() {
            // Kept for the next command (see `multiplexing_hold_ms`).
            return;
        }
        let replica_txn = self.st.in_transaction() && self.txn_on_replica;
        if !replica_txn {
            self.txn_on_replica = false;
            self.release_replica().await;
        }
        if multiplex && !self.st.needs_held() {
            self.release_primary().await;
        }
    }

    /// Gives back whatever the session holds only because of a hold.
    pub(super) async fn end_hold(&mut self) {
        if self.st.hold.take().is_some() {
            self.settle().await;
        }
    }

    pub(super) async fn release_replica(&mut self) {
        if let Some(r) = self.replica.take() {
            self.info.held.fetch_sub(1, Ordering::Relaxed);
            self.give_back(r, false).await;
        }
    }

    pub(super) async fn release_primary(&mut self) {
        if let Some(p) = self.primary.take() {
            self.info.held.fetch_sub(1, Ordering::Relaxed);
            self.give_back(p, true).await;
        }
    }

    /// Returns a connection to its pool, first reading what the session must remember from it
    /// (its LAST_INSERT_ID(), the GTID of its writes). A connection in an unknown state is
    /// closed instead.
    async fn give_back(&mut self, mut l: Leased, primary: bool) {
        let (capture_gtid, capture_lii) = self.to_capture(&l, primary);
        if capture_gtid || capture_lii {
            let mysql = l.conn.is_mysql();
            let sql: &[u8] = match (capture_lii, capture_gtid) {
                (true, true) => super::gtid::read_insert_id_and_last(mysql),
                (true, false) => b"\x03SELECT LAST_INSERT_ID()",
                _ => super::gtid::read_last(mysql, true),
            };
            match l.conn.control_row(sql).await {
                Ok(Some(row)) => {
                    let mut it = row.into_iter();
                    if capture_lii {
                        let now = it
                            .next()
                            .flatten()
                            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                            .unwrap_or(0);
                        Session::learn_insert_id(&mut l.conn, &mut self.st, now);
                    }
                    if capture_gtid {
                        self.st.last_gtid = it
                            .next()
                            .flatten()
                            .and_then(|g| super::gtid::clean(&g, mysql));
                        self.st.wrote = false;
                    }
                }
                _ => {
                    tracing::debug!(server = %l.conn.server, "could not read the connection's last insert id / GTID; closing it");
                    return;
                }
            }
        }
        self.give_back_read(l, primary);
    }

    /// What must be read from connection `l` before it goes back: (its GTID, its
    /// LAST_INSERT_ID()).
    fn to_capture(&self, l: &Leased, primary: bool) -> (bool, bool) {
        let ryw = self.routing.read_your_writes != crate::config::ReadYourWrites::Off;
        let capture_gtid = primary && ryw && self.st.wrote;
        let capture_lii = self.st.lii_dirty && self.st.lii_conn == Some(l.conn.id);
        (capture_gtid, capture_lii)
    }

    /// [`Session::give_back`] when nothing is to be read from the connection first (else it
    /// is handed back untouched).
    fn give_back_now(&mut self, l: Leased, primary: bool) -> Option<Leased> {
        if self.to_capture(&l, primary) != (false, false) {
            return Some(l);
        }
        self.give_back_read(l, primary);
        None
    }

    /// Returns connection `l`, whatever the session must remember from it read: to its pool,
    /// or closed when a response on it is unread.
    fn give_back_read(&mut self, l: Leased, primary: bool) {
        if self.st.lii_conn == Some(l.conn.id) {
            self.st.lii_conn = None;
        }
        if l.conn.has_unread() {
            return;
        }
        if let Some(slot) = self.routing.slot(l.server) {
            self.last_conns[usize::from(!primary)] = (l.server, l.conn.id);
            slot.pool.release(l.conn);
        }
    }

    /// A held connection broke while the session was idle: forget it; the next command that
    /// needs the primary reports the lost transaction or pinned state.
    pub(super) fn held_broke(&mut self, primary: bool, why: String) {
        tracing::info!(reason = %why, "lost a held server connection");
        let broken = if primary {
            self.primary.take()
        } else {
            self.replica.take()
        };
        if let Some(l) = broken {
            self.server_broke(l.server);
        }
        if primary {
            self.lost_primary(why);
        } else if self.txn_on_replica {
            self.txn_on_replica = false;
            self.st.status &= !sluice_proto::flags::status::SERVER_STATUS_IN_TRANS;
        }
        self.info.held.fetch_sub(1, Ordering::Relaxed);
        self.st.hold = None;
    }

    /// The primary connection is gone: an open transaction or pinned state went with it.
    pub(super) fn lost_primary(&mut self, why: String) {
        if self.st.in_transaction() {
            self.st.status &= !sluice_proto::flags::status::SERVER_STATUS_IN_TRANS;
            self.txn_lost = Some(why);
        }
        if self.st.pins != 0 {
            self.state_lost = Some(PinReason::describe(self.st.pins));
            self.st.pins = 0;
        }
        self.st.lii_dirty = false;
        self.st.lii_conn = None;
    }

    /// The connection's LAST_INSERT_ID() read after statements that may have changed it.
    fn learn_insert_id(
        conn: &mut BackendConn,
        st: &mut super::session_state::SessionState,
        now: u64,
    ) {
        st.lii = if st.lii_in_sync {
            now
        } else if conn.insert_id_seen == crate::backend::INSERT_ID_UNKNOWN {
            // What the connection had before is not known: an insert id its OK reported is a
            // generated one (the session's); any other value is another session's.
            if now == st.lii_ok {
                now
            } else {
                st.lii
            }
        } else {
            super::session_state::insert_id_after(st.lii, conn.insert_id_seen, now, st.lii_ok)
        };
        conn.insert_id_seen = now;
        st.lii_dirty = false;
        st.lii_conn = None;
    }

    /// Brings LAST_INSERT_ID() on the connection about to run a statement that reads it to
    /// the session's value (first learning what statements held on it did to it).
    pub(super) async fn sync_insert_id(
        conn: &mut BackendConn,
        st: &mut super::session_state::SessionState,
    ) -> Result<(), BackendError> {
        if st.lii_dirty && st.lii_conn == Some(conn.id) {
            if st.lii_in_sync {
                // The connection's value is the session's: read as is (learned at release).
                return Ok(());
            }
            let row = conn.control_row(b"\x03SELECT LAST_INSERT_ID()").await?;
            let now = row
                .and_then(|r| r.into_iter().next().flatten())
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                .unwrap_or(0);
            Session::learn_insert_id(conn, st, now);
        }
        if conn.insert_id_seen == st.lii {
            return Ok(());
        }
        let sql = format!("\u{3}DO LAST_INSERT_ID({})", st.lii);
        match conn.control(sql.as_bytes(), ResponseKind::Query).await? {
            Ok(_) => {
                conn.insert_id_seen = st.lii;
                Ok(())
            }
            Err(e) => Err(BackendError::Protocol(e.to_string())),
        }
    }
}
