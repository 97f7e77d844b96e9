//! Prepared statements (binary protocol), multiplexed. Sluice owns the statement ids the
//! client sees; a statement is prepared on whichever connection executes it, lazily, through
//! that connection's shared and bounded cache (`backend/stmt_cache.rs`), so prepared
//! statements never pin a session. The client's COM_STMT_PREPARE runs on the primary (the
//! client gets its metadata under Sluice's id); its class and digest are computed once, then.
//!
//! Every execution carries its parameter types (added when the client did not resend them),
//! because the server statement may have been bound by another session. What lives on one
//! connection pins the session until it ends: long data sent for the next execution
//! (`long_data`), an open cursor (`cursor`, until the last row was fetched or the statement is
//! reset or closed).

use std::sync::Arc;

use sluice_proto::command::*;
use sluice_proto::err::ErrPacket;
use sluice_proto::flags::cap;
use sluice_proto::flags::status::{SERVER_STATUS_CURSOR_EXISTS, SERVER_STATUS_LAST_ROW_SENT};
use sluice_proto::framing::HEADER_LEN;
use sluice_proto::stmt::StmtExecute;
use sluice_proto::tracker::ResponseKind;

use super::routing::Plan;
use super::session::{statement_text, Executed, Held, Session};
use super::session_state::Stmt;
use super::SessionError;
use crate::backend::StmtBudget;
use crate::errors;
use crate::router::{PinReason, Route};

fn unknown_statement(id: u32, what: &str) -> ErrPacket {
    ErrPacket::new(
        1243,
        b"HY000",
        format!("Unknown prepared statement handler ({id}) given to {what}"),
    )
}

fn no_open_cursor(id: u32) -> ErrPacket {
    ErrPacket::new(
        1421,
        b"HY000",
        format!("The statement ({id}) has no open cursor."),
    )
}

/// Where parameter types go in a rebuilt execution: `(at, len, marker, types)`.
type TypesAt<'a> = (usize, usize, &'a [u8], Arc<[u8]>);

impl Session {
    /// Handles a COM_STMT_* command whose whole packet is at the front of the client buffer.
    pub(super) async fn statement_command(
        &mut self,
        code: u8,
        wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        let id = self
            .client
            .rbuf
            .get(HEADER_LEN + 1..HEADER_LEN + 5)
            .filter(|_| wire_len >= HEADER_LEN + 5)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match code {
            COM_STMT_PREPARE => self.prepare(wire_len, seq).await,
            COM_STMT_EXECUTE => self.execute(id, wire_len, seq).await,
            sluice_proto::command::COM_STMT_BULK_EXECUTE => {
                self.bulk_execute(id, wire_len, seq).await
            }
            COM_STMT_SEND_LONG_DATA => self.long_data(id, wire_len).await,
            COM_STMT_CLOSE => {
                // No answer. The server statement stays in its connection's cache.
                self.client.consume(wire_len);
                if self.st.stmts.remove(&id).is_some() {
                    self.end_statement_pins(id);
                }
                Ok(())
            }
            COM_STMT_RESET => self.reset_statement(id, wire_len, seq).await,
            COM_STMT_FETCH => self.fetch(id, wire_len, seq).await,
            _ => unreachable!("only statement commands come here"),
        }
    }

    async fn prepare(&mut self, wire_len: usize, seq: u8) -> Result<(), SessionError> {
        let raw = &self.client.rbuf[HEADER_LEN + 1..wire_len];
        // `CONNECTION_ID()` is the session's id in prepared statements too (sqlx prepares
        // every query), kept in the text that is prepared on each connection.
        let sql: Arc<[u8]> = match super::kill::rewrite_connection_id(raw, self.info.id) {
            Some(new) => Arc::from(new),
            None => Arc::from(raw),
        };
        // Deny rules apply to prepared statements as to text queries.
        let mut plan = self.plan_sql(&sql, false);
        if let Some(err) = plan.reject.take() {
            self.client.consume(wire_len);
            return self.client.send_err(seq, &err).await;
        }
        // A prepared KILL names a Sluice session id, as the text one does: its executions are
        // answered here. Prepared on the server all the same, for the server's own answer.
        let kill = match super::kill::parse_prepared(&sql) {
            Some(Err(what)) => {
                self.client.consume(wire_len);
                return self
                    .client
                    .send_err(seq, &super::kill::unsupported(what))
                    .await;
            }
            Some(Ok(k)) => Some(k),
            None => None,
        };
        let max = self
            .routing
            .config
            .proxy
            .max_prepared_statements_per_session;
        if self.st.stmts.len() >= max as usize {
            // Bounded per session, so that one client cannot fill Sluice's memory by never
            // closing any.
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &crate::errors::too_many_prepared_statements(max))
                .await;
        }
        let mut primary_plan = Plan::default();
        let Some(on) = self.target(&mut primary_plan, wire_len, seq).await? else {
            return Ok(());
        };
        let sluice_id = self.st.next_stmt_id();
        self.client.consume(wire_len);
        let routing = self.routing.clone();
        let budget = Session::budget_of(&routing, self.server_of(on));
        let answer = match self.held_conn(on) {
            Some(conn) => conn.prepare_for_client(&sql, &budget).await,
            None => Err(crate::backend::BackendError::Closed),
        };
        let (params, packets) = match answer {
            Ok(Ok((_, params, packets))) => (params, packets),
            Ok(Err(e)) => return self.client.send_err(seq, &e).await,
            Err(e) => {
                let name = self.conn(on).server.clone();
                self.drop_held(on);
                return self
                    .client
                    .send_err(seq, &crate::errors::lost_in_flight(&name, &e.to_string()))
                    .await;
            }
        };
        // The client sees Sluice's id for the statement.
        let mut out = bytes::BytesMut::new();
        let mut s = seq;
        for (i, p) in packets.iter().enumerate() {
            if i == 0 {
                let mut first = p.to_vec();
                first[1..5].copy_from_slice(&sluice_id.to_le_bytes());
                sluice_proto::framing::write_packet(&mut out, s, &first);
            } else {
                sluice_proto::framing::write_packet(&mut out, s, p);
            }
            s = s.wrapping_add(1);
        }
        self.client.write_all(&out).await?;
        let meta = self.prepared_metadata(&packets);
        self.st.stmts.insert(
            sluice_id,
            Stmt {
                digest: crate::router::lexer::digest(&sql),
                cached: super::routing::CachedClass::of(&sql),
                class: plan.class,
                sql,
                params,
                types: None,
                kill,
                memo: None,
                meta,
            },
        );
        Ok(())
    }

    /// For a client with cached metadata: the column definitions of a prepare answer
    /// (`packets`: the OK, parameters, columns, and EOFs without `CLIENT_DEPRECATE_EOF`), as
    /// an execution's answer frames them (sequence ids from 2). The client keeps them, and
    /// the server leaves them out of an execution whose definitions are the same.
    fn prepared_metadata(&self, packets: &[bytes::Bytes]) -> Option<Box<[u8]>> {
        if self.capabilities & cap::MARIADB_CLIENT_CACHE_METADATA == 0 {
            return None;
        }
        let deprecate_eof = self.capabilities & cap::CLIENT_DEPRECATE_EOF != 0;
        crate::backend::prepared_definitions(packets, deprecate_eof)
            .filter(|d| d.len() <= super::relay::MAX_KEPT_METADATA)
    }

    /// The prepared-statement budget of connections to `server`.
    fn budget_of(routing: &super::RoutingState, server: usize) -> StmtBudget<'_> {
        static NONE: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(usize::MAX);
        StmtBudget {
            configured: routing.config.proxy.max_prepared_statements_per_connection as usize,
            learned: routing.slot(server).map_or(&NONE, |s| &s.pool.stmt_cap),
        }
    }

    fn held_conn(&mut self, on: Held) -> Option<&mut crate::backend::BackendConn> {
        match on {
            Held::Primary => self.primary.as_mut().map(|l| &mut *l.conn),
            Held::Replica => self.replica.as_mut().map(|l| &mut *l.conn),
        }
    }

    async fn execute(&mut self, id: u32, mut wire_len: usize, seq: u8) -> Result<(), SessionError> {
        if self.capabilities & sluice_proto::flags::cap::CLIENT_QUERY_ATTRIBUTES != 0 {
            // The query attributes come off here and go back on in `forward` for a server
            // connection that negotiated them; everything between sees a classic execution.
            let params = self.st.stmts.get(&id).map_or(0, |s| s.params);
            let split = sluice_proto::query_attrs::split_execute(
                self.client
                    .command_payload(wire_len)
                    .get(1..)
                    .unwrap_or_default(),
                params,
            );
            match split {
                Ok((classic, attrs)) => {
                    let mut p = Vec::with_capacity(classic.len() + 1);
                    p.push(COM_STMT_EXECUTE);
                    p.extend_from_slice(&classic);
                    wire_len = self.client.replace_command(wire_len, &p);
                    if !attrs.is_empty() {
                        self.shared
                            .counters
                            .query_attributes
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::trace!(
                            attributes = attrs.len(),
                            params,
                            "an execution with attributes"
                        );
                    }
                    self.attrs = attrs;
                    self.attrs_params = params;
                }
                Err(e) => {
                    self.client.consume(wire_len);
                    let e = errors::incorrect_arguments("mysqld_stmt_execute", &e.to_string());
                    return self.client.send_err(seq, &e).await;
                }
            }
        }
        let Some(st) = self.st.stmts.get_mut(&id) else {
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &unknown_statement(id, "mysqld_stmt_execute"))
                .await;
        };
        let payload = &self.client.rbuf[HEADER_LEN..wire_len];
        // Where the parameter types sit: after id, flags, iteration count and the NULL bitmap.
        let bound_at = 1 + StmtExecute::bound_flag_at(st.params);
        // A malformed execution never reaches a server (the answer MySQL gives; the session
        // goes on). Values sent as long data are not in the packet, so they are not checked.
        let long_data = self.st.long_data == Some(id);
        let parsed = StmtExecute::parse(&payload[1..], st.params);
        let well_formed = match &parsed {
            Err(_) => false,
            Ok(e) if long_data => e.iterations == 1,
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
            let e = errors::incorrect_arguments("mysqld_stmt_execute", "malformed parameters");
            return self.client.send_err(seq, &e).await;
        }
        let (binds_types, cursor) = match &parsed {
            Ok(e) => (e.types.is_some(), e.flags & 0x0F != 0),
            Err(_) => (false, false),
        };
        if let Ok(StmtExecute { types: Some(t), .. }) = &parsed {
            // Drivers that send the types with every execution send the same ones: no
            // allocation then.
            if st.types.as_deref() != Some(*t) {
                st.types = Some(Arc::from(*t));
            }
        }
        if let Some(pk) = st.kill {
            let k = match (pk.id, &parsed) {
                (Some(id), _) => Ok(pk.with(id)),
                (None, Ok(e)) => match e.types.or(st.types.as_deref()) {
                    Some(t) => super::kill::bound_id(e, t).map(|id| pk.with(id)),
                    None => Err("KILL ? without a parameter type"),
                },
                (None, Err(_)) => Err("a malformed execution"),
            };
            return Box::pin(self.kill(k, wire_len, seq)).await;
        }
        let (class, digest_hash, params, cached, memo) =
            (st.class, st.digest, st.params, st.cached, st.memo);
        // The types the server has bound once this execution ran: the client's own, or the
        // ones it sent last (added below unless the server statement has them bound).
        let types = (params > 0).then(|| st.types.clone()).flatten();
        // The text is borrowed, not cloned: an execution whose server statement is found
        // through the memo never reads it (no reference count written per execution).
        let st = &self.st.stmts[&id];
        let digest =
            self.shared
                .digests
                .begin_hashed_known(digest_hash, &st.sql, &mut self.known_digests);
        let mut plan = self.plan_prepared(&st.sql, cached);
        if long_data || cursor {
            // Long data lives on the primary connection that took it; a cursor stays on the
            // connection that opened it, which the session then keeps.
            plan.route = Route::Primary;
        }
        let Some(on) = self.target(&mut plan, wire_len, seq).await? else {
            return Ok(());
        };
        let mut renewed = memo;
        let by_memo = self
            .held_mut(on)
            .and_then(|c| c.stmts.get_by_memo(c.id, memo));
        let server_id = match by_memo {
            Some(server_id) => server_id,
            None => {
                // (The session's statements change only between its commands.)
                let Some(sql) = self.st.stmts.get(&id).map(|st| st.sql.clone()) else {
                    self.client.consume(wire_len);
                    let e = unknown_statement(id, "mysqld_stmt_execute");
                    return self.client.send_err(seq, &e).await;
                };
                let Some(server_id) = self
                    .ensure_prepared(on, &sql, &mut renewed, wire_len, seq)
                    .await?
                else {
                    return Ok(());
                };
                server_id
            }
        };
        if renewed != memo {
            if let Some(st) = self.st.stmts.get_mut(&id) {
                st.memo = renewed;
            }
        }
        // Without types, the server uses the ones bound last on its statement, which may
        // have been another session's: they are added unless they are these. (Always on a
        // connection with query attributes: an execution that carries them binds types.)
        let add_types = !binds_types
            && types.as_ref().is_some_and(|t| {
                long_data
                    || !self.held_mut(on).is_some_and(|c| {
                        !c.query_attributes() && c.stmts.types_bound(c.id, renewed, t)
                    })
            });
        let rebuilt = self.with_server_id(
            wire_len,
            server_id,
            types
                .clone()
                .filter(|_| add_types)
                .map(|t| (bound_at, 1, &[1u8][..], t)),
        );
        let started = std::time::Instant::now();
        let r = self
            .forward(
                on,
                wire_len,
                rebuilt.as_deref(),
                ResponseKind::Execute,
                seq,
                false,
                Some(Executed {
                    client: Some(id),
                    server: renewed,
                    write: class == crate::router::StatementClass::Write && !cursor,
                }),
            )
            .await;
        self.reuse(rebuilt);
        let ok = matches!(&r, Ok(Some(r)) if !r.outcome.error);
        if let Some(c) = self.held_mut(on) {
            // After an error the server may or may not have bound them: unknown.
            let bound = types.as_ref().filter(|_| ok);
            c.stmts.set_bound(c.id, renewed, bound);
        }
        let Some(r) = r? else {
            return Ok(());
        };
        let (rows, warnings, insert_id) = self.account(on, class, digest, started, r.outcome);
        if long_data {
            self.st.long_data = None;
            self.st.apply(super::session_state::Applied {
                unpin: Some(PinReason::LongData),
                ..Default::default()
            });
        }
        if self.st.cursor == Some(id) {
            // Re-executing closes the statement's previous cursor.
            self.end_statement_pins(id);
        }
        let opened = r
            .outcome
            .status
            .is_some_and(|s| s & SERVER_STATUS_CURSOR_EXISTS != 0);
        if cursor && opened && !r.outcome.error {
            plan.applied.pin = Some(PinReason::Cursor);
            self.st.cursor = Some(id);
        }
        let pin_text = plan.applied.pin.map(|_| {
            let mut p = vec![COM_STMT_PREPARE];
            if let Some(st) = self.st.stmts.get(&id) {
                p.extend_from_slice(&st.sql);
            }
            statement_text(&p)
        });
        self.after(
            on,
            COM_STMT_EXECUTE,
            &plan,
            r.outcome,
            (rows, warnings, insert_id),
            pin_text,
        );
        Ok(())
    }

    /// COM_STMT_BULK_EXECUTE (MariaDB batch execution, `MARIADB_CLIENT_STMT_BULK_OPERATIONS`):
    /// the statement runs many times with the rows of parameters in the packet. Always a
    /// write, on the primary. The server statement may have been bound by another session, so
    /// a bulk without parameter types (a driver sends them with the first bulk only) gets the
    /// types of the statement's last typed execution added; with none known, 1210.
    async fn bulk_execute(
        &mut self,
        id: u32,
        wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        const SEND_TYPES: u16 = 128;
        let Some(st) = self.st.stmts.get(&id) else {
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &unknown_statement(id, "mysqld_stmt_bulk_execute"))
                .await;
        };
        if st.kill.is_some() {
            self.client.consume(wire_len);
            let e = super::kill::unsupported("KILL by COM_STMT_BULK_EXECUTE");
            return self.client.send_err(seq, &e).await;
        }
        let payload = &self.client.rbuf[HEADER_LEN..wire_len];
        let flags = payload
            .get(5..7)
            .map_or(0, |f| u16::from_le_bytes([f[0], f[1]]));
        let n_types = 2 * usize::from(st.params);
        let typed = flags & SEND_TYPES != 0 && payload.len() >= 7 + n_types;
        if st.params == 0 || payload.len() < 7 || !typed && st.types.is_none() {
            self.client.consume(wire_len);
            let e = errors::incorrect_arguments(
                "mysqld_stmt_bulk_execute",
                "Sluice needs the parameter types in every bulk execution",
            );
            return self.client.send_err(seq, &e).await;
        }
        let types = if typed {
            let t = &payload[7..7 + n_types];
            if let Some(st) = self.st.stmts.get_mut(&id) {
                if st.types.as_deref() != Some(t) {
                    st.types = Some(Arc::from(t));
                }
            }
            None
        } else {
            st.types.clone()
        };
        let Some(st) = self.st.stmts.get_mut(&id) else {
            self.client.consume(wire_len);
            let e = unknown_statement(id, "mysqld_stmt_bulk_execute");
            return self.client.send_err(seq, &e).await;
        };
        // A bulk execution's result sets (RETURNING) come with their definitions, which the
        // client then keeps: the record of the last ones no longer says what it holds.
        st.meta = None;
        let (sql, digest_hash, cached) = (st.sql.clone(), st.digest, st.cached);
        let digest =
            self.shared
                .digests
                .begin_hashed_known(digest_hash, &sql, &mut self.known_digests);
        let mut plan = self.plan_prepared(&sql, cached);
        plan.route = Route::Primary;
        let Some(on) = self.target(&mut plan, wire_len, seq).await? else {
            return Ok(());
        };
        let mut memo = None;
        let Some(server_id) = self
            .ensure_prepared(on, &sql, &mut memo, wire_len, seq)
            .await?
        else {
            return Ok(());
        };
        // What a bulk execution leaves bound is not tracked: the next execution sends types.
        if let Some(c) = self.held_mut(on) {
            c.stmts.set_bound(c.id, memo, None);
        }
        let marker = (flags | SEND_TYPES).to_le_bytes();
        let rebuilt =
            self.with_server_id(wire_len, server_id, types.map(|t| (5, 2, &marker[..], t)));
        let started = std::time::Instant::now();
        let r = self
            .forward(
                on,
                wire_len,
                rebuilt.as_deref(),
                ResponseKind::Execute,
                seq,
                false,
                Some(Executed {
                    client: None,
                    server: memo,
                    write: false,
                }),
            )
            .await;
        self.reuse(rebuilt);
        let Some(r) = r? else {
            return Ok(());
        };
        let counts = self.account(
            on,
            crate::router::StatementClass::Write,
            digest,
            started,
            r.outcome,
        );
        self.after(on, COM_STMT_EXECUTE, &plan, r.outcome, counts, None);
        Ok(())
    }

    /// Puts the server's statement id in the execution at the front of the client buffer. With
    /// `types = (at, len, marker, types)`, returns a rebuilt payload instead, in which the
    /// `len` bytes at `at` become `marker` followed by the parameter types (the server
    /// statement may have been bound by another session).
    fn with_server_id(
        &mut self,
        wire_len: usize,
        server_id: u32,
        types: Option<TypesAt<'_>>,
    ) -> Option<Vec<u8>> {
        let Some((at, len, marker, t)) = types else {
            self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5]
                .copy_from_slice(&server_id.to_le_bytes());
            return None;
        };
        let payload = &self.client.rbuf[HEADER_LEN..wire_len];
        // The session's buffer (given back by `reuse`): no allocation per execution.
        let mut p = std::mem::take(&mut self.exec_buf);
        p.clear();
        p.reserve(payload.len() + marker.len() + t.len());
        p.extend_from_slice(&payload[..at]);
        p.extend_from_slice(marker);
        p.extend_from_slice(&t);
        p.extend_from_slice(payload.get(at + len..).unwrap_or_default());
        p[1..5].copy_from_slice(&server_id.to_le_bytes());
        Some(p)
    }

    /// Keeps a rebuilt execution's buffer for the next one (unless a huge one made it big).
    fn reuse(&mut self, rebuilt: Option<Vec<u8>>) {
        if let Some(b) = rebuilt.filter(|b| b.capacity() <= 64 * 1024) {
            self.exec_buf = b;
        }
    }

    /// The server's id for `sql` on the held connection `on`, preparing it there if needed.
    /// `None`: the command was answered with an error and consumed.
    async fn ensure_prepared(
        &mut self,
        on: Held,
        sql: &Arc<[u8]>,
        memo: &mut Option<crate::backend::stmt_cache::Memo>,
        wire_len: usize,
        seq: u8,
    ) -> Result<Option<u32>, SessionError> {
        // Disjoint borrows of the routing snapshot and the held connection: no clone of the
        // snapshot's Arc (shared by every session: a contended atomic twice per execution).
        let held = match on {
            Held::Primary => self.primary.as_mut(),
            Held::Replica => self.replica.as_mut(),
        };
        let answer = match held {
            Some(l) => {
                let budget = Session::budget_of(&self.routing, l.server);
                l.conn.prepared_memo(sql, memo, &budget).await
            }
            None => Err(crate::backend::BackendError::Closed),
        };
        match answer {
            Ok(Ok(id)) => Ok(Some(id)),
            Ok(Err(e)) => {
                self.client.consume(wire_len);
                self.client.send_err(seq, &e).await?;
                Ok(None)
            }
            Err(e) => {
                let name = self.conn(on).server.clone();
                self.drop_held(on);
                self.client.consume(wire_len);
                self.client
                    .send_err(seq, &crate::errors::lost_in_flight(&name, &e.to_string()))
                    .await?;
                Ok(None)
            }
        }
    }

    /// COM_STMT_SEND_LONG_DATA: no answer exists for it; problems surface at the execution.
    async fn long_data(&mut self, id: u32, wire_len: usize) -> Result<(), SessionError> {
        let Some(sql) = self.st.stmts.get(&id).map(|s| s.sql.clone()) else {
            self.client.consume(wire_len);
            return Ok(());
        };
        if self.lease_primary().await.is_err() {
            self.client.consume(wire_len);
            return Ok(());
        }
        let routing = self.routing.clone();
        let budget = Session::budget_of(&routing, self.server_of(Held::Primary));
        let conn = self.conn_mut(Held::Primary);
        let server_id = match conn.prepared(&sql, &budget).await {
            Ok(Ok(sid)) => sid,
            Ok(Err(_)) => {
                self.client.consume(wire_len);
                return Ok(());
            }
            Err(_) => {
                self.drop_held(Held::Primary);
                self.client.consume(wire_len);
                return Ok(());
            }
        };
        self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&server_id.to_le_bytes());
        if self
            .forward(
                Held::Primary,
                wire_len,
                None,
                ResponseKind::None,
                0,
                false,
                None,
            )
            .await?
            .is_some()
            && self.st.long_data.is_none()
        {
            self.st.long_data = Some(id);
            let text = statement_text(&[&[COM_STMT_PREPARE][..], &sql].concat());
            if let Some(p) = self.st.apply(super::session_state::Applied {
                pin: Some(PinReason::LongData),
                ..Default::default()
            }) {
                self.pinned(p, text);
            }
        }
        Ok(())
    }

    async fn reset_statement(
        &mut self,
        id: u32,
        wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        let Some(sql) = self.st.stmts.get(&id).map(|s| s.sql.clone()) else {
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &unknown_statement(id, "mysqld_stmt_reset"))
                .await;
        };
        let mut plan = Plan::default();
        let Some(on) = self.target(&mut plan, wire_len, seq).await? else {
            return Ok(());
        };
        let mut memo = None;
        let Some(server_id) = self
            .ensure_prepared(on, &sql, &mut memo, wire_len, seq)
            .await?
        else {
            return Ok(());
        };
        // A reset statement's bound types are not relied on: the next execution sends them.
        if let Some(c) = self.held_mut(on) {
            c.stmts.set_bound(c.id, memo, None);
        }
        self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&server_id.to_le_bytes());
        if let Some(r) = self
            .forward(on, wire_len, None, ResponseKind::Simple, seq, false, None)
            .await?
        {
            if let Some(s) = r.outcome.status {
                self.st.status = s;
            }
            if !r.outcome.error {
                self.end_statement_pins(id);
            }
        }
        Ok(())
    }

    async fn fetch(&mut self, id: u32, wire_len: usize, seq: u8) -> Result<(), SessionError> {
        let Some(sql) = self.st.stmts.get(&id).map(|s| s.sql.clone()) else {
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &unknown_statement(id, "mysqld_stmt_fetch"))
                .await;
        };
        if self.st.cursor != Some(id) || self.primary.is_none() {
            self.client.consume(wire_len);
            return self.client.send_err(seq, &no_open_cursor(id)).await;
        }
        let Some(server_id) = self.conn_mut(Held::Primary).stmts.get(&sql) else {
            self.client.consume(wire_len);
            return self.client.send_err(seq, &no_open_cursor(id)).await;
        };
        self.client.rbuf[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&server_id.to_le_bytes());
        if let Some(r) = self
            .forward(
                Held::Primary,
                wire_len,
                None,
                ResponseKind::Fetch,
                seq,
                false,
                None,
            )
            .await?
        {
            let done = r.outcome.error
                || r.outcome
                    .status
                    .is_some_and(|s| s & SERVER_STATUS_LAST_ROW_SENT != 0);
            if done {
                self.end_statement_pins(id);
            }
        }
        Ok(())
    }

    /// Ends the cursor and long-data pins that belong to statement `id`.
    fn end_statement_pins(&mut self, id: u32) {
        if self.st.cursor == Some(id) {
            self.st.cursor = None;
            self.st.apply(super::session_state::Applied {
                unpin: Some(PinReason::Cursor),
                ..Default::default()
            });
        }
        if self.st.long_data == Some(id) {
            self.st.long_data = None;
            self.st.apply(super::session_state::Applied {
                unpin: Some(PinReason::LongData),
                ..Default::default()
            });
        }
    }
}
