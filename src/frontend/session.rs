//! One client session: authenticate, open the backend connection, then relay commands until
//! the client quits, a connection breaks, or the proxy shuts down.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::auth_switch::AuthSwitchRequest;
use sluice_proto::command::{self, ChangeUser};
use sluice_proto::err::ErrPacket;
use sluice_proto::flags::cap;
use sluice_proto::tracker::ResponseKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::ClientConn;
use super::handshake::{self, AuthPlugin, Authenticated};
use super::relay::relay_response;
use super::routing::ReplicaConn;
use super::{SessionError, Shared};
use crate::backend::{BackendConn, BackendError, LoginParams, PoolError};
use crate::config::UserConfig;
use crate::errors;
use crate::router::{Route, StatementClass};
use sluice_proto::framing::HEADER_LEN;
use std::sync::atomic::Ordering;

/// Commands that belong to replication or are obsolete: a proxy does not pass them on.
fn refused_command(code: u8) -> bool {
    matches!(
        code,
        command::COM_BINLOG_DUMP
            | command::COM_BINLOG_DUMP_GTID
            | command::COM_REGISTER_SLAVE
            | command::COM_TABLE_DUMP
            | command::COM_CONNECT_OUT
            | command::COM_DAEMON
            | command::COM_STMT_BULK_EXECUTE
    )
}

pub(super) struct Session {
    pub(super) client: ClientConn,
    /// The session's own connection to the primary.
    pub(super) backend: BackendConn,
    pub(super) user: UserConfig,
    pub(super) capabilities: u64,
    pub(super) salt: Vec<u8>,
    pub(super) shared: Arc<Shared>,
    /// Options from the client's handshake, for opening replica connections.
    pub(super) login: LoginInfo,
    /// Connections to replicas, by server index.
    pub(super) replicas: Vec<Option<ReplicaConn>>,
    /// Replayable session state, in order (raw command payloads).
    pub(super) state_log: Vec<Vec<u8>>,
    /// Non-replayable state keeping the session on the primary (bit per `PinReason`).
    pub(super) pins: u8,
    /// Status flags of the last response.
    pub(super) status: u16,
    pub(super) previous: Route,
    /// A write succeeded since `last_gtid` was last read.
    pub(super) wrote: bool,
    /// The GTID of the session's last write: replicas must have applied it to serve reads.
    pub(super) last_gtid: Option<String>,
    /// Prepared statements, by the id Sluice gave the client.
    pub(super) stmts: std::collections::HashMap<u32, super::statements::Stmt>,
    pub(super) next_stmt: u32,
    /// The default database, as far as Sluice followed it (for rules matching on schema).
    pub(super) current_db: Option<Vec<u8>>,
    /// The replica running the session's `START TRANSACTION READ ONLY` transaction.
    pub(super) txn_replica: Option<usize>,
    /// The server index of the primary connection.
    pub(super) primary_index: usize,
    /// No command is in flight: every connection is between responses.
    pub(super) idle: bool,
    /// The client changed connection options (COM_SET_OPTION), which COM_CHANGE_USER may not
    /// reset: its primary connection is not reused.
    pub(super) options_changed: bool,
    /// The primary connection broke (why): the next command needing the primary reconnects.
    pub(super) primary_lost: Option<String>,
    /// What the admin port sees of this session.
    pub(super) info: Arc<super::registry::SessionInfo>,
    /// The routing settings and rules in force (refreshed after a reload).
    pub(super) routing: Arc<super::RoutingState>,
}

/// What a replica connection must be opened with.
pub(super) struct LoginInfo {
    pub database: Option<Vec<u8>>,
    pub charset: u8,
    pub max_packet: u32,
    pub connect_attrs: Option<Vec<u8>>,
}

/// Runs a session to its end.
pub async fn run(
    shared: Arc<Shared>,
    mut client: ClientConn,
    id: u32,
    info: Arc<super::registry::SessionInfo>,
) -> Result<(), SessionError> {
    let snapshot = shared.routing();
    let handshake_ms = snapshot.config.proxy.handshake_timeout_ms;
    let ip = client.peer.ip();
    let firewall = &snapshot.config.firewall;
    // The deadline covers the whole handshake, however slowly the bytes trickle in.
    let auth = tokio::time::timeout(
        Duration::from_millis(handshake_ms),
        authenticate(&shared, &snapshot, &mut client, id),
    )
    .await
    .map_err(|_| SessionError::HandshakeTimeout(handshake_ms))
    .and_then(|r| r);
    // Failed logins count toward blocking the address: wrong credentials, a malformed or
    // abandoned handshake. A client that just closes (a load balancer's TCP check) does not.
    let auth = match auth {
        Ok(Some(a)) => a,
        Ok(None) => {
            shared.firewall.login_failed(ip, firewall);
            return Ok(());
        }
        Err(e) => {
            if matches!(
                e,
                SessionError::Malformed(_) | SessionError::HandshakeTimeout(_)
            ) {
                shared.firewall.login_failed(ip, firewall);
            }
            return Err(e);
        }
    };
    shared.firewall.login_ok(ip);
    if let Some((cipher, version)) = client.stream.tls_info() {
        tracing::debug!(%cipher, %version, "client uses TLS");
        let _ = info.tls.set(format!("{version} {cipher}"));
    }
    // Held until the session ends.
    let Some(_user_slot) = shared.firewall.user_slot(&auth.user) else {
        tracing::info!(user = %auth.user.name, limit = auth.user.max_connections, "user has too many sessions");
        client
            .send_err(
                auth.next_seq,
                &errors::too_many_user_connections(&auth.user.name),
            )
            .await?;
        return Ok(());
    };
    let Some((backend, primary_index)) =
        open_primary(&shared, &snapshot, &mut client, &auth).await?
    else {
        return Ok(());
    };
    tracing::Span::current().record("user", tracing::field::display(&auth.user.name));
    info.primary.store(primary_index, Ordering::Relaxed);
    tracing::debug!("client authenticated");
    let r = auth.response;
    let login = LoginInfo {
        database: r
            .database
            .filter(|_| auth.capabilities & cap::CLIENT_CONNECT_WITH_DB != 0),
        charset: r.charset,
        max_packet: r.max_packet,
        connect_attrs: r.connect_attrs,
    };
    let replicas = snapshot.slots.iter().map(|_| None).collect();
    let mut s = Session {
        client,
        backend,
        user: auth.user,
        capabilities: auth.capabilities,
        salt: auth.salt,
        shared,
        login,
        replicas,
        state_log: Vec::new(),
        pins: 0,
        status: sluice_proto::flags::status::SERVER_STATUS_AUTOCOMMIT,
        previous: Route::Primary,
        wrote: false,
        last_gtid: None,
        stmts: Default::default(),
        next_stmt: 0,
        current_db: None,
        txn_replica: None,
        primary_index,
        idle: true,
        options_changed: false,
        primary_lost: None,
        info,
        routing: snapshot,
    };
    s.current_db = s.login.database.clone();
    s.info.set_names(&s.user.name, s.current_db.as_deref());
    let result = s.command_loop().await;
    let orderly = matches!(result, Ok(()) | Err(SessionError::ClientClosed));
    s.finish(orderly).await;
    result
}

/// Authenticates the client. `None` when the client was refused (it has been told why).
async fn authenticate(
    shared: &Shared,
    snapshot: &super::RoutingState,
    client: &mut ClientConn,
    id: u32,
) -> Result<Option<Authenticated>, SessionError> {
    let hello = shared.cluster.borrow().primary_hello.clone();
    let users = &snapshot.config.users;
    match handshake::authenticate(client, users, id, hello.as_ref(), &snapshot.auth).await {
        Ok(a) => Ok(Some(a)),
        Err(SessionError::AccessDenied(user)) => {
            tracing::info!(user = %user, "access denied");
            Ok(None)
        }
        Err(SessionError::AddressDenied(user)) => {
            shared.firewall.refused[super::firewall::USER_ADDRESS].fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = %user, "access denied: the user may not connect from this address");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Waits (up to `[monitor] failover_hold_ms`) for a writable primary.
async fn wait_for_primary(shared: &Shared, hold_ms: u64) -> Option<usize> {
    let mut rx = shared.cluster.clone();
    let hold = Duration::from_millis(hold_ms);
    let deadline = tokio::time::Instant::now() + hold;
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

/// Logs in to the primary on the authenticated client's behalf and sends the client the
/// server's OK. `None` when the client was refused (it has been told why).
async fn open_primary(
    shared: &Shared,
    snapshot: &super::RoutingState,
    client: &mut ClientConn,
    auth: &Authenticated,
) -> Result<Option<(BackendConn, usize)>, SessionError> {
    let hold_ms = snapshot.config.monitor.failover_hold_ms;
    let Some(index) = wait_for_primary(shared, hold_ms).await else {
        client
            .send_err(auth.next_seq, &errors::no_primary_within(hold_ms))
            .await?;
        return Err(SessionError::NoPrimary);
    };
    let r = &auth.response;
    let params = LoginParams {
        user: auth.user.name.as_bytes(),
        password: auth.user.password.as_bytes(),
        database: r
            .database
            .as_deref()
            .filter(|_| auth.capabilities & cap::CLIENT_CONNECT_WITH_DB != 0),
        capabilities: auth.capabilities,
        charset: r.charset,
        max_packet: r.max_packet,
        connect_attrs: r.connect_attrs.as_deref(),
    };
    // A server added by a reload that happened after this session's snapshot was taken.
    let fresh;
    let snapshot = if index < snapshot.slots.len() {
        snapshot
    } else {
        fresh = shared.routing();
        &fresh
    };
    let Some(pool) = snapshot.slot(index).map(|s| &s.pool) else {
        client
            .send_err(auth.next_seq, &errors::no_primary())
            .await?;
        return Err(SessionError::NoPrimary);
    };
    match pool.acquire(params, &snapshot.pool_limits).await {
        Ok((conn, ok)) => {
            client.write_packet(auth.next_seq, &ok).await?;
            Ok(Some((conn, index)))
        }
        Err(PoolError::Backend(BackendError::Refused(err))) => {
            // The server's own answer (e.g. unknown database) goes to the client unchanged.
            client.send_err(auth.next_seq, &err).await?;
            Ok(None)
        }
        Err(PoolError::Exhausted {
            server,
            max,
            waited_ms,
        }) => {
            tracing::warn!(server = %server, max, "no free backend connection slot");
            client
                .send_err(
                    auth.next_seq,
                    &errors::pool_exhausted(&server, max, waited_ms),
                )
                .await?;
            Err(SessionError::NoPrimary)
        }
        Err(PoolError::Backend(e)) => {
            let detail = format!("{} ({}): {e}", pool.name, pool.address);
            tracing::warn!(error = %detail, "backend login failed");
            let err = match &e {
                BackendError::AuthPlugin(plugin) => errors::backend_auth_plugin(&pool.name, plugin),
                _ => errors::backend_connect(&pool.name, &e.to_string()),
            };
            client.send_err(auth.next_seq, &err).await?;
            Err(SessionError::Backend(e))
        }
    }
}

impl Session {
    /// A reload replaced the configuration, servers or rules: take the new snapshot. New
    /// servers get a (still empty) replica slot; connections to removed servers are closed
    /// unless a read-only transaction runs there (it ends first).
    pub(super) fn refresh_snapshot(&mut self) {
        self.routing = self.shared.routing();
        let n = self.routing.slots.len();
        if self.replicas.len() < n {
            self.replicas.resize_with(n, || None);
        }
        for (i, r) in self.replicas.iter_mut().enumerate() {
            let removed = self
                .routing
                .config
                .servers
                .get(i)
                .is_some_and(|s| s.removed);
            if removed && r.is_some() && self.txn_replica != Some(i) {
                *r = None;
            }
        }
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            self.idle = true;
            self.info.busy.store(false, Ordering::Relaxed);
            if *shutdown.borrow() {
                return self.close().await;
            }
            let ext = tokio::select! {
                r = self.client.next_packet() => match r {
                    Ok(ext) => ext,
                    Err(SessionError::TooLarge(n)) => {
                        let _ = self.client.send_err(1, &errors::packet_too_large()).await;
                        return Err(SessionError::TooLarge(n));
                    }
                    Err(e) => return Err(e),
                },
                _ = idle_deadline(self.routing.config.proxy.client_idle_timeout_ms) => {
                    // Like the server's wait_timeout: the client stayed silent too long.
                    self.shared.counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("closing a client idle for longer than client_idle_timeout_ms");
                    return self.close().await;
                }
                r = idle_backend_event(&mut self.backend), if self.primary_lost.is_none() => {
                    // The server closed (or spoke out of turn) while the session was idle. The
                    // next command that needs the primary reconnects (see `primary.rs`).
                    self.mark_primary_lost(r);
                    continue;
                }
                _ = shutdown.changed() => continue,
            };
            self.idle = false;
            self.info.busy.store(true, Ordering::Relaxed);
            if self.shared.routing_gen.load(Ordering::Acquire) != self.routing.generation {
                self.refresh_snapshot();
            }
            let payload = &self.client.rbuf[HEADER_LEN..ext.wire_len];
            if ext.first_seq != 0 {
                let _ = self
                    .client
                    .send_err(ext.last_seq.wrapping_add(1), &errors::out_of_order())
                    .await;
                return Err(SessionError::Malformed(
                    "command with a non-zero sequence id".into(),
                ));
            }
            let Some(&code) = payload.first() else {
                let e = ErrPacket::new(1835, b"08S01", "Malformed communication packet");
                let _ = self.client.send_err(1, &e).await;
                return Err(SessionError::Malformed("empty command packet".into()));
            };
            match code {
                command::COM_QUIT => {
                    self.client.consume(ext.wire_len);
                    self.idle = true;
                    return self.close().await;
                }
                command::COM_CHANGE_USER => {
                    if !self
                        .primary_or_reply(ext.wire_len, ext.last_seq.wrapping_add(1), true)
                        .await?
                    {
                        continue;
                    }
                    let payload = self.client.rbuf[HEADER_LEN..ext.wire_len].to_vec();
                    self.client.consume(ext.wire_len);
                    self.change_user(&payload).await?;
                    continue;
                }
                c if refused_command(c) => {
                    self.client.consume(ext.wire_len);
                    self.client.send_err(1, &errors::unknown_command(c)).await?;
                    continue;
                }
                _ => {}
            }
            if matches!(
                code,
                command::COM_STMT_PREPARE
                    | command::COM_STMT_EXECUTE
                    | command::COM_STMT_SEND_LONG_DATA
                    | command::COM_STMT_CLOSE
                    | command::COM_STMT_RESET
                    | command::COM_STMT_FETCH
            ) {
                match self
                    .statement_command(code, ext.wire_len, ext.last_seq)
                    .await
                {
                    Ok(()) => continue,
                    Err(SessionError::BackendGone(detail)) => {
                        self.backend_gone(None, detail, ext.last_seq.wrapping_add(1))
                            .await?;
                        continue;
                    }
                    Err(SessionError::BackendLost(detail)) => {
                        let _ = self.client.send_err(1, &errors::server_lost(&detail)).await;
                        return Err(SessionError::BackendLost(detail));
                    }
                    Err(SessionError::BackendProtocol(detail)) => {
                        let e = errors::backend_protocol("(statement)", &detail);
                        let _ = self.client.send_err(1, &e).await;
                        return Err(SessionError::BackendProtocol(detail));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.options_changed |= code == command::COM_SET_OPTION;
            let payload = &self.client.rbuf[HEADER_LEN..ext.wire_len];
            let (mut route, mut effect) = self.plan(payload);
            // Inside a read-only transaction on a replica, everything goes there until the
            // server's status flags say the transaction ended.
            if self.status & sluice_proto::flags::status::SERVER_STATUS_IN_TRANS == 0 {
                self.txn_replica = None;
            }
            if let (Some(i), None) = (self.txn_replica, effect.reject.as_ref()) {
                route = Route::Replica(i);
            }
            if let Some(err) = effect.reject.take() {
                self.client.consume(ext.wire_len);
                self.client.send_err(1, &err).await?;
                continue;
            }
            let replay_copy = effect.replay.then(|| payload.to_vec());
            // A server may ask for a local file only in answer to the client's own
            // `LOAD DATA LOCAL` (and only if the client enabled it).
            let local_files = code == command::COM_QUERY
                && self.capabilities & cap::CLIENT_LOCAL_FILES != 0
                && crate::router::lexer::mentions_load_local(&payload[1..]);
            let digest = match code {
                command::COM_QUERY => self.shared.digests.begin(&payload[1..]),
                _ => None,
            };
            if let Route::Replica(i) = route {
                if !self.ensure_replica(i).await || !self.replica_has_our_writes(i).await {
                    route = Route::Primary;
                }
            }
            let on_replica = matches!(route, Route::Replica(i) if self.replicas[i].is_some());
            if !on_replica
                && !self
                    .primary_or_reply(ext.wire_len, ext.last_seq.wrapping_add(1), false)
                    .await?
            {
                continue;
            }
            let (conn, server_index) = match route {
                Route::Replica(i) => match self.replicas[i].as_mut() {
                    Some(rc) => (&mut rc.conn, Some(i)),
                    None => (&mut self.backend, None),
                },
                Route::Primary => (&mut self.backend, None),
            };
            if let Err(e) = conn
                .stream
                .write_all(&self.client.rbuf[..ext.wire_len])
                .await
            {
                self.client.consume(ext.wire_len);
                self.backend_gone(server_index, e.to_string(), ext.last_seq.wrapping_add(1))
                    .await?;
                continue;
            }
            self.client.consume(ext.wire_len);
            let kind = ResponseKind::for_command(code);
            if kind == ResponseKind::None {
                continue;
            }
            if matches!(effect.class, StatementClass::Read) {
                let c = if server_index.is_some() {
                    &self.shared.counters.replica_reads
                } else {
                    &self.shared.counters.primary_reads
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(i) = server_index {
                if let Some(slot) = self.routing.slot(i) {
                    slot.outstanding.fetch_add(1, Ordering::Relaxed);
                }
            }
            let started = std::time::Instant::now();
            let result = relay_response(
                &mut self.client,
                conn,
                kind,
                ext.last_seq.wrapping_add(1),
                local_files,
            )
            .await;
            let rows = conn.last_rows;
            if let Some(i) = server_index {
                if let Some(slot) = self.routing.slot(i) {
                    slot.outstanding.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if let (Some(d), Ok(o)) = (digest, &result) {
                let took = started.elapsed();
                self.shared
                    .digests
                    .record(d, took, rows, server_index.is_some(), o.error);
            }
            if result.is_ok() {
                let class = if code == command::COM_QUERY {
                    effect.class
                } else {
                    StatementClass::Command
                };
                self.count(server_index, class, started);
            }
            match result {
                Ok(outcome) => {
                    self.previous = route;
                    if let (StatementClass::BeginReadOnly, Some(i), false) =
                        (effect.class, server_index, outcome.error)
                    {
                        self.txn_replica = Some(i);
                    }
                    if let Some(st) = outcome.status {
                        self.status = st;
                        self.info.in_transaction.store(
                            st & sluice_proto::flags::status::SERVER_STATUS_IN_TRANS != 0,
                            Ordering::Relaxed,
                        );
                    }
                    if !outcome.error && server_index.is_none() {
                        self.wrote |= Session::may_write(code, effect.class);
                        self.apply(effect, replay_copy);
                        if code == command::COM_RESET_CONNECTION {
                            self.reset_state().await;
                        }
                    }
                }
                Err(SessionError::BackendGone(detail)) => {
                    // Nothing of the response reached the client: a clean error, and the
                    // session goes on.
                    self.backend_gone(server_index, detail, ext.last_seq.wrapping_add(1))
                        .await?;
                }
                Err(SessionError::BackendLost(detail)) => {
                    // Whatever sequence id comes next is unknown mid-response; clients accept an
                    // ERR at any point and then see the connection close.
                    let _ = self.client.send_err(1, &errors::server_lost(&detail)).await;
                    return Err(SessionError::BackendLost(detail));
                }
                Err(SessionError::BackendProtocol(detail)) => {
                    // Named only on this error path: no per-query copy of the name.
                    let server_name = match server_index {
                        Some(i) => self.routing.server_name(i),
                        None => self.backend.server.as_str(),
                    };
                    let e = errors::backend_protocol(server_name, &detail);
                    let _ = self.client.send_err(1, &e).await;
                    return Err(SessionError::BackendProtocol(detail));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// COM_CHANGE_USER: Sluice checks the new credentials itself, then logs the backend
    /// connection in as that user.
    async fn change_user(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        let cu = match ChangeUser::parse(&payload[1..], self.capabilities) {
            Ok(cu) => cu,
            Err(e) => {
                let _ = self.client.send_err(1, &errors::bad_handshake()).await;
                return Err(SessionError::Malformed(e.to_string()));
            }
        };
        let mut seq = 1u8;
        let mut token = cu.auth_response.clone();
        let user = self.routing.config.find_user(&cu.username).cloned();
        let allowed = user.as_ref().map_or(AuthPlugin::ALL.to_vec(), |u| {
            super::handshake::allowed_plugins(u)
        });
        // Without a plugin name the token is mysql_native_password's.
        let answered = match cu.auth_plugin.as_deref() {
            Some(name) => AuthPlugin::from_name(name),
            None => Some(AuthPlugin::Native),
        };
        let plugin = match answered {
            Some(p) if allowed.contains(&p) => p,
            _ => {
                self.salt = handshake::new_salt();
                let sw = AuthSwitchRequest {
                    plugin: allowed[0].name().to_vec(),
                    data: self.salt.clone(),
                };
                self.client.write_packet(seq, &sw.encode()).await?;
                let reply = self.client.read_packet().await?;
                token = reply.payload.to_vec();
                seq = reply.last_seq.wrapping_add(1);
                allowed[0]
            }
        };
        let ip = self.client.peer.ip();
        let verified = user.as_ref().is_some_and(|u| {
            plugin.verify(u.password.as_bytes(), &self.salt, &token)
                && super::firewall::user_admits(u, ip)
        });
        if verified && plugin == AuthPlugin::CachingSha2 && !token.is_empty() {
            self.client
                .write_packet(seq, &sluice_proto::scramble::SHA2_FAST_AUTH_SUCCESS)
                .await?;
            seq = seq.wrapping_add(1);
        }
        let Some(user) = user.filter(|_| verified) else {
            let host = self.client.peer.ip().to_string();
            let e = errors::access_denied(&cu.username, &host, !token.is_empty());
            let _ = self.client.send_err(seq, &e).await;
            return Err(SessionError::AccessDenied(
                String::from_utf8_lossy(&cu.username).into_owned(),
            ));
        };
        match self
            .backend
            .change_user(&cu, user.password.as_bytes())
            .await
        {
            Ok(ok) => {
                self.client.write_packet(seq, &ok).await?;
                tracing::debug!(from = %self.user.name, to = %user.name, "change user");
                self.user = user;
                self.login.database = (!cu.database.is_empty()).then(|| cu.database.clone());
                if let Some(cs) = cu.charset {
                    self.login.charset = cs as u8;
                }
                self.reset_state().await;
                Ok(())
            }
            Err(BackendError::Refused(err)) => {
                let _ = self.client.send_err(seq, &err).await;
                Err(SessionError::Backend(BackendError::Refused(err)))
            }
            Err(e) => {
                let _ = self
                    .client
                    .send_err(seq, &errors::server_lost(&e.to_string()))
                    .await;
                Err(SessionError::Backend(e))
            }
        }
    }

    /// Counts a command answered on `server` (`None` = the primary) and its latency.
    pub(super) fn count(
        &self,
        server: Option<usize>,
        class: StatementClass,
        started: std::time::Instant,
    ) {
        let route = usize::from(server.is_some());
        self.shared.counters.queries[route][class.index()].fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.query_seconds[route].observe(started.elapsed().as_secs_f64());
        let at = server.unwrap_or(self.primary_index);
        self.info.last_server.store(at, Ordering::Relaxed);
        if let Some(slot) = self.routing.slot(at) {
            slot.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A backend connection broke before any of its answer reached the client. The client
    /// gets an error saying the outcome is unknown; a broken replica connection is dropped, a
    /// broken primary connection is replaced at the next command that needs it.
    pub(super) async fn backend_gone(
        &mut self,
        server_index: Option<usize>,
        detail: String,
        seq: u8,
    ) -> Result<(), SessionError> {
        let name = match server_index {
            Some(i) => self.routing.server_name(i).to_string(),
            None => self.backend.server.clone(),
        };
        match server_index {
            Some(i) => {
                self.replicas[i] = None;
                if self.txn_replica == Some(i) {
                    self.txn_replica = None;
                    self.status &= !sluice_proto::flags::status::SERVER_STATUS_IN_TRANS;
                }
            }
            None => {
                self.mark_primary_lost(detail.clone());
                self.status &= !sluice_proto::flags::status::SERVER_STATUS_IN_TRANS;
            }
        }
        self.client
            .send_err(seq, &errors::lost_in_flight(&name, &detail))
            .await
    }

    async fn close(&mut self) -> Result<(), SessionError> {
        // The backend connections are returned to their pools (or closed) by `finish`.
        let _ = self.client.stream.shutdown().await;
        Ok(())
    }

    /// Ends the session: connections in a known state (no response pending, no transaction,
    /// no locks or other pinned state) go back to their pools; the others are closed.
    async fn finish(mut self, orderly: bool) {
        let clean = orderly && self.idle && self.pins == 0;
        for (i, slot) in self.replicas.iter_mut().enumerate() {
            if let Some(rc) = slot.take() {
                if clean && self.txn_replica.is_none() && rc.conn.rbuf.is_empty() {
                    if let Some(slot) = self.routing.slot(i) {
                        slot.pool.release(rc.conn);
                    }
                } else {
                    rc.conn.quit().await;
                }
            }
        }
        let in_trans = self.status & sluice_proto::flags::status::SERVER_STATUS_IN_TRANS != 0;
        if self.primary_lost.is_some() {
            return;
        }
        if clean && !in_trans && !self.options_changed && self.backend.rbuf.is_empty() {
            if let Some(pool) = self.routing.slot(self.primary_index).map(|s| &s.pool) {
                pool.release(self.backend);
                return;
            }
        }
        self.backend.quit().await;
    }
}

/// Resolves after `ms` milliseconds, or never when `ms` is 0.
async fn idle_deadline(ms: u64) {
    if ms == 0 {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Resolves when the backend closes or sends bytes while no command is outstanding.
/// Cancel-safe: anything read stays in the buffer.
async fn idle_backend_event(backend: &mut BackendConn) -> String {
    if !backend.rbuf.is_empty() {
        return "server sent data with no command outstanding".into();
    }
    backend.rbuf.reserve(1024);
    match backend.stream.read_buf(&mut backend.rbuf).await {
        Ok(0) => "server closed the connection".into(),
        Ok(_) => "server sent data with no command outstanding".into(),
        Err(e) => e.to_string(),
    }
}
