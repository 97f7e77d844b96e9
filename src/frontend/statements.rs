//! Prepared statements (binary protocol) with read/write splitting. Sluice owns the statement
//! ids the client sees. A statement is prepared on the primary when the client prepares it
//! (the client gets the primary's metadata, under Sluice's id) and lazily on a replica the
//! first time an execution is routed there; each connection keeps its own id map. Executions
//! of reads go where the router sends the same text query; everything else runs on the
//! primary. Closing a statement closes it on every connection that prepared it, so a
//! backend's `max_prepared_stmt_count` never fills with leaked statements.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use sluice_proto::command::*;
use sluice_proto::err::{ErrPacket, ERR_HEADER};
use sluice_proto::framing::HEADER_LEN;
use sluice_proto::stmt::StmtExecute;
use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};
use tokio::io::AsyncWriteExt;

use super::relay::{relay_response, relay_rewriting};
use super::session::Session;
use super::SessionError;
use crate::backend::BackendConn;
use crate::router::{self, Route, StatementClass};

/// One statement the client prepared.
pub struct Stmt {
    pub sql: Vec<u8>,
    /// The statement's digest (computed once, at prepare).
    pub digest: u64,
    pub params: u16,
    /// The primary's id for it.
    pub primary_id: u32,
    /// Parameter types from the last execution that bound them (2 bytes per parameter).
    pub types: Option<Vec<u8>>,
    pub primary_types_sent: bool,
    /// Long data was sent (to the primary): the next execution must run there.
    pub long_data: bool,
    /// Where it last ran (COM_STMT_FETCH follows it).
    pub last_exec: Route,
}

/// A replica connection's view of the session's statements: Sluice id → (server id, whether
/// parameter types were sent on this connection).
pub type ReplicaStmts = HashMap<u32, (u32, bool)>;

/// The outcome reported when the backend broke before answering (the client got an error).
const GONE: sluice_proto::tracker::Outcome = sluice_proto::tracker::Outcome {
    status: None,
    error: true,
};

fn unknown_statement(id: u32, what: &str) -> ErrPacket {
    ErrPacket::new(
        1243,
        b"HY000",
        format!("Unknown prepared statement handler ({id}) given to {what}"),
    )
}

impl Session {
    /// Handles a COM_STMT_* command whose whole packet is at the front of the client buffer.
    pub(super) async fn statement_command(
        &mut self,
        code: u8,
        wire_len: usize,
        last_seq: u8,
    ) -> Result<(), SessionError> {
        let payload = self.client.rbuf[HEADER_LEN..wire_len].to_vec();
        let id = payload
            .get(1..5)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let seq = last_seq.wrapping_add(1);
        match code {
            COM_STMT_PREPARE => {
                // Deny rules apply to prepared statements as to text queries.
                let mut c = router::classify_query(&payload[1..]);
                if let (Some(err), _) = self.apply_rules(&payload[1..], &mut c) {
                    self.client.consume(wire_len);
                    return self.client.send_err(seq, &err).await;
                }
                let max = self
                    .routing
                    .config
                    .proxy
                    .max_prepared_statements_per_session;
                if self.stmts.len() >= max as usize {
                    // Bounded per session, so that one client cannot fill the server's
                    // max_prepared_stmt_count (or Sluice's memory) by never closing any.
                    self.client.consume(wire_len);
                    return self
                        .client
                        .send_err(seq, &crate::errors::too_many_prepared_statements(max))
                        .await;
                }
                if !self.primary_or_reply(wire_len, seq, false).await? {
                    return Ok(());
                }
                self.forward_raw_to_primary(wire_len).await?;
                let sluice_id = self.next_stmt_id();
                let (outcome, server) = self
                    .relay_primary(ResponseKind::Prepare, seq, Some(sluice_id))
                    .await?;
                if let (false, Some((primary_id, params))) = (outcome.error, server) {
                    self.stmts.insert(
                        sluice_id,
                        Stmt {
                            digest: crate::router::lexer::digest(&payload[1..]),
                            sql: payload[1..].to_vec(),
                            params,
                            primary_id,
                            types: None,
                            primary_types_sent: false,
                            long_data: false,
                            last_exec: Route::Primary,
                        },
                    );
                }
                Ok(())
            }
            COM_STMT_EXECUTE => self.execute(id, payload, wire_len, seq).await,
            COM_STMT_SEND_LONG_DATA => {
                if !self.stmts.contains_key(&id) || self.ensure_primary(false).await.is_err() {
                    // No response exists for this command: the execution reports the problem.
                    self.client.consume(wire_len);
                    return Ok(());
                }
                let Some(st) = self.stmts.get_mut(&id) else {
                    // No response exists for this command; the execution will report it.
                    self.client.consume(wire_len);
                    return Ok(());
                };
                st.long_data = true;
                let pid = st.primary_id;
                self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5]
                    .copy_from_slice(&pid.to_le_bytes());
                match self.forward_raw_to_primary(wire_len).await {
                    // No response exists for this command: the next one reconnects.
                    Err(SessionError::BackendGone(d)) => {
                        self.mark_primary_lost(d);
                        Ok(())
                    }
                    r => r,
                }
            }
            COM_STMT_CLOSE => {
                self.client.consume(wire_len);
                if let Some(st) = self.stmts.remove(&id) {
                    let mut p = vec![COM_STMT_CLOSE];
                    p.extend_from_slice(&st.primary_id.to_le_bytes());
                    if self.primary_lost.is_none() {
                        write_or_lost(&mut self.backend, &p).await?;
                    }
                    for rc in self.replicas.iter_mut().flatten() {
                        if let Some((rid, _)) = rc.stmts.remove(&id) {
                            let mut p = vec![COM_STMT_CLOSE];
                            p.extend_from_slice(&rid.to_le_bytes());
                            if rc.conn.write_packet(0, &p).await.is_err() {
                                tracing::debug!(server = %rc.conn.server, "replica connection lost while closing a statement");
                            }
                        }
                    }
                }
                Ok(())
            }
            COM_STMT_RESET => {
                if self.stmts.contains_key(&id)
                    && !self.primary_or_reply(wire_len, seq, false).await?
                {
                    return Ok(());
                }
                let Some(st) = self.stmts.get_mut(&id) else {
                    self.client.consume(wire_len);
                    return self
                        .client
                        .send_err(seq, &unknown_statement(id, "mysqld_stmt_reset"))
                        .await;
                };
                st.long_data = false;
                let (pid, last) = (st.primary_id, st.last_exec);
                if let Route::Replica(i) = last {
                    // The cursor lives there: reset it too (its answer is Sluice's to read).
                    if let Some(rc) = self.replicas[i].as_mut() {
                        if let Some(&(rid, _)) = rc.stmts.get(&id) {
                            let mut p = vec![COM_STMT_RESET];
                            p.extend_from_slice(&rid.to_le_bytes());
                            if control(&mut rc.conn, &p, ResponseKind::Simple)
                                .await
                                .is_err()
                            {
                                self.replicas[i] = None;
                            }
                        }
                    }
                }
                self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5]
                    .copy_from_slice(&pid.to_le_bytes());
                self.forward_raw_to_primary(wire_len).await?;
                self.relay_primary(ResponseKind::Simple, seq, None)
                    .await
                    .map(|_| ())
            }
            COM_STMT_FETCH => {
                let Some(st) = self.stmts.get(&id) else {
                    self.client.consume(wire_len);
                    return self
                        .client
                        .send_err(seq, &unknown_statement(id, "mysqld_stmt_fetch"))
                        .await;
                };
                let (target, mut backend_id) = match st.last_exec {
                    Route::Replica(i) => {
                        match self.replicas[i].as_ref().and_then(|rc| rc.stmts.get(&id)) {
                            Some(&(rid, _)) => (Route::Replica(i), rid),
                            None => (Route::Primary, st.primary_id),
                        }
                    }
                    Route::Primary => (Route::Primary, st.primary_id),
                };
                if target == Route::Primary {
                    if !self.primary_or_reply(wire_len, seq, false).await? {
                        return Ok(());
                    }
                    backend_id = self.stmts.get(&id).map_or(backend_id, |s| s.primary_id);
                }
                self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5]
                    .copy_from_slice(&backend_id.to_le_bytes());
                self.send_and_relay(target, None, wire_len, ResponseKind::Fetch, seq)
                    .await
                    .map(|_| ())
            }
            _ => unreachable!("only statement commands come here"),
        }
    }

    fn next_stmt_id(&mut self) -> u32 {
        loop {
            self.next_stmt = self.next_stmt.wrapping_add(1).max(1);
            if !self.stmts.contains_key(&self.next_stmt) {
                return self.next_stmt;
            }
        }
    }

    async fn execute(
        &mut self,
        id: u32,
        payload: Vec<u8>,
        wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        let Some(st) = self.stmts.get_mut(&id) else {
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &unknown_statement(id, "mysqld_stmt_execute"))
                .await;
        };
        // Where the parameter types sit: after id, flags, iteration count and the NULL bitmap.
        let bound_at = 1 + StmtExecute::bound_flag_at(st.params);
        // A malformed execution never reaches a server (the answer MySQL gives; the session
        // goes on). Values sent as long data are not in the packet, so they are not checked.
        let parsed = StmtExecute::parse(&payload[1..], st.params);
        let well_formed = match &parsed {
            Err(_) => false,
            Ok(e) if st.long_data => e.iterations == 1,
            Ok(e) => {
                e.iterations == 1
                    && match e.types.or(st.types.as_deref()) {
                        Some(t) => e.check_values(t).is_ok(),
                        None => st.params == 0,
                    }
            }
        };
        if !well_formed {
            self.client.consume(wire_len);
            let e = ErrPacket::new(
                1210,
                b"HY000",
                "Incorrect arguments to mysqld_stmt_execute (malformed parameters)",
            );
            return self.client.send_err(seq, &e).await;
        }
        let binds_types = matches!(&parsed, Ok(e) if e.types.is_some());
        if let Ok(StmtExecute { types: Some(t), .. }) = &parsed {
            st.types = Some(t.to_vec());
        }
        let sql = st.sql.clone();
        let digest = self.shared.digests.begin_hashed(st.digest, &sql);
        let long_data = st.long_data;
        let c = router::classify_query(&sql);
        let mut route = Route::Primary;
        let in_trans = self.status & sluice_proto::flags::status::SERVER_STATUS_IN_TRANS != 0;
        if let (Some(i), true) = (self.txn_replica, in_trans) {
            // Part of a read-only transaction running on that replica.
            route = Route::Replica(i);
        } else if !long_data {
            route = self.route_classified(&c).0;
        }
        if let Route::Replica(i) = route {
            let ok = self.ensure_replica(i).await
                && self.replica_has_our_writes(i).await
                && self.prepare_on_replica(i, id).await;
            if !ok {
                route = Route::Primary;
            }
        }
        if route == Route::Primary && !self.primary_or_reply(wire_len, seq, false).await? {
            return Ok(());
        }
        let Some(st) = self.stmts.get_mut(&id) else {
            return Err(SessionError::Malformed("statement vanished".into()));
        };
        let (backend_id, types_sent) = match route {
            Route::Primary => (st.primary_id, st.primary_types_sent),
            Route::Replica(i) => {
                let rc = self.replicas[i].as_ref().expect("ensured above");
                rc.stmts[&id]
            }
        };
        // A connection that never saw this statement's types needs them, even when the client
        // (which bound them once, elsewhere) does not send them again.
        let rebuilt = if st.params > 0 && !binds_types && !types_sent {
            st.types.as_ref().map(|types| {
                let mut p = Vec::with_capacity(payload.len() + types.len());
                p.extend_from_slice(&payload[..bound_at]);
                p.push(1);
                p.extend_from_slice(types);
                p.extend_from_slice(payload.get(bound_at + 1..).unwrap_or_default());
                p[1..5].copy_from_slice(&backend_id.to_le_bytes());
                p
            })
        } else {
            None
        };
        let now_sent = binds_types || rebuilt.is_some() || types_sent;
        match route {
            Route::Primary => st.primary_types_sent = now_sent,
            Route::Replica(i) => {
                if let Some(e) = self.replicas[i]
                    .as_mut()
                    .and_then(|rc| rc.stmts.get_mut(&id))
                {
                    e.1 = now_sent;
                }
            }
        }
        st.long_data = false;
        st.last_exec = route;
        self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&backend_id.to_le_bytes());
        let started = std::time::Instant::now();
        let outcome = self
            .send_and_relay(route, rebuilt, wire_len, ResponseKind::Execute, seq)
            .await?;
        let server = match route {
            Route::Replica(i) => Some(i),
            Route::Primary => None,
        };
        if let Some(d) = digest {
            let rows = match server.and_then(|i| self.replicas[i].as_ref()) {
                Some(rc) => rc.conn.last_rows,
                None => self.backend.last_rows,
            };
            self.shared
                .digests
                .record(d, started.elapsed(), rows, server.is_some(), outcome.error);
        }
        self.count(server, c.class, started);
        self.previous = route;
        if let Some(s) = outcome.status {
            self.status = s;
        }
        if route == Route::Primary && !outcome.error {
            self.wrote |= Session::may_write(COM_QUERY, c.class);
        }
        if matches!(c.class, StatementClass::Read) {
            let counter = if route == Route::Primary {
                &self.shared.counters.primary_reads
            } else {
                &self.shared.counters.replica_reads
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Prepares statement `id` on replica `i` unless it already is. False on failure.
    async fn prepare_on_replica(&mut self, i: usize, id: u32) -> bool {
        let Some(sql) = self.stmts.get(&id).map(|s| s.sql.clone()) else {
            return false;
        };
        let Some(rc) = self.replicas[i].as_mut() else {
            return false;
        };
        if rc.stmts.contains_key(&id) {
            return true;
        }
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(COM_STMT_PREPARE);
        p.extend_from_slice(&sql);
        match control(&mut rc.conn, &p, ResponseKind::Prepare).await {
            Ok(first) if first.len() >= 5 && first[0] == 0 => {
                let rid = u32::from_le_bytes([first[1], first[2], first[3], first[4]]);
                rc.stmts.insert(id, (rid, false));
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(server = %rc.conn.server, error = %e, "preparing on a replica failed; executing on the primary");
                self.replicas[i] = None;
                false
            }
        }
    }

    async fn forward_raw_to_primary(&mut self, wire_len: usize) -> Result<(), SessionError> {
        let r = self
            .backend
            .stream
            .write_all(&self.client.rbuf[..wire_len])
            .await;
        self.client.consume(wire_len);
        if let Err(e) = r {
            return Err(SessionError::BackendGone(e.to_string()));
        }
        Ok(())
    }

    async fn relay_primary(
        &mut self,
        kind: ResponseKind,
        seq: u8,
        rewrite: Option<u32>,
    ) -> Result<(sluice_proto::tracker::Outcome, Option<(u32, u16)>), SessionError> {
        relay_rewriting(
            &mut self.client,
            &mut self.backend,
            kind,
            seq,
            false,
            rewrite,
        )
        .await
    }

    /// Sends the command at the front of the client buffer (or `rebuilt` instead of it) to
    /// `route` and relays the answer.
    async fn send_and_relay(
        &mut self,
        route: Route,
        rebuilt: Option<Vec<u8>>,
        wire_len: usize,
        kind: ResponseKind,
        seq: u8,
    ) -> Result<sluice_proto::tracker::Outcome, SessionError> {
        let (conn, index) = match route {
            Route::Replica(i) => match self.replicas[i].as_mut() {
                Some(rc) => (&mut rc.conn, Some(i)),
                None => (&mut self.backend, None),
            },
            Route::Primary => (&mut self.backend, None),
        };
        let w = match &rebuilt {
            Some(p) => conn.write_packet(0, p).await.map_err(|e| e.to_string()),
            None => conn
                .stream
                .write_all(&self.client.rbuf[..wire_len])
                .await
                .map_err(|e| e.to_string()),
        };
        self.client.consume(wire_len);
        if let Err(e) = w {
            self.backend_gone(index, e, seq).await?;
            return Ok(GONE);
        }
        if let Some(i) = index {
            if let Some(slot) = self.routing.slot(i) {
                slot.outstanding.fetch_add(1, Ordering::Relaxed);
            }
        }
        let r = relay_response(&mut self.client, conn, kind, seq, false).await;
        if let Some(i) = index {
            if let Some(slot) = self.routing.slot(i) {
                slot.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        match r {
            Err(SessionError::BackendGone(d)) => {
                self.backend_gone(index, d, seq).await?;
                Ok(GONE)
            }
            r => r,
        }
    }
}

async fn write_or_lost(conn: &mut BackendConn, payload: &[u8]) -> Result<(), SessionError> {
    conn.write_packet(0, payload)
        .await
        .map_err(|e| SessionError::BackendLost(e.to_string()))
}

/// Runs a command on a connection Sluice controls and reads its whole answer; returns the first
/// packet's payload. An ERR answer is returned as `Ok` (the connection stays usable).
pub(super) async fn control(
    conn: &mut BackendConn,
    payload: &[u8],
    kind: ResponseKind,
) -> Result<Vec<u8>, String> {
    conn.write_packet(0, payload)
        .await
        .map_err(|e| e.to_string())?;
    let mut t = ResponseTracker::new(kind, conn.deprecate_eof());
    let mut first = None;
    loop {
        let p = conn.read_packet().await.map_err(|e| e.to_string())?;
        if first.is_none() {
            first = Some(p.payload.to_vec());
            if p.payload.first() == Some(&ERR_HEADER) {
                return Ok(first.unwrap_or_default());
            }
        }
        match t
            .feed(p.payload.len(), &p.payload)
            .map_err(|e| e.to_string())?
        {
            Progress::Done(_) => return Ok(first.unwrap_or_default()),
            Progress::More => {}
            Progress::LocalInfile => return Err("unexpected LOCAL INFILE".into()),
        }
    }
}
