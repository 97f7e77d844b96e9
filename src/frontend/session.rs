//! One client session: authenticate, then take each command, run it on a leased server
//! connection (see `lease.rs`) and relay its answer, until the client quits, a connection
//! breaks, or the proxy shuts down.
//!
//! The session is state (`session_state.rs`), a plan per command (`routing.rs`), leased
//! connections (`lease.rs`) and the relay (`relay.rs`); prepared statements are in
//! `statements.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proto::auth_switch::AuthSwitchRequest;
use sluice_proto::command::{self, ChangeUser};
use sluice_proto::flags::cap;
use sluice_proto::flags::status::SERVER_STATUS_IN_TRANS;
use sluice_proto::framing::{PacketExtent, HEADER_LEN};
use sluice_proto::tracker::{Outcome, ResponseKind};
use tokio::io::AsyncWriteExt;

use super::client::ClientConn;
use super::handshake::{self, AuthPlugin, Authenticated};
use super::lease::{wait_for_primary, Leased, Outstanding, Unavailable};
use super::relay::{relay_response, Metadata};
use super::session_state::{Hold, SessionState};
use super::{SessionError, Shared};
use crate::backend::BackendConn;
use crate::config::{Multiplexing, UserConfig};
use crate::errors;
use crate::router::{PinReason, Route, StatementClass};

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
    )
}

pub(super) struct Session {
    pub(super) client: ClientConn,
    pub(super) user: UserConfig,
    pub(super) capabilities: u64,
    pub(super) salt: Vec<u8>,
    pub(super) shared: Arc<Shared>,
    pub(super) login: LoginInfo,
    /// What the admin port sees of this session.
    pub(super) info: Arc<super::registry::SessionInfo>,
    /// The routing settings and rules in force (refreshed after a reload).
    pub(super) routing: Arc<super::RoutingState>,
    /// Transaction status, pins, wanted variables, prepared statements.
    pub(super) st: SessionState,
    /// The connections the session holds now.
    pub(super) primary: Option<Leased>,
    pub(super) replica: Option<Leased>,
    /// The open transaction runs on the held replica (`START TRANSACTION READ ONLY`).
    pub(super) txn_on_replica: bool,
    /// `[proxy] multiplexing = "transaction"`.
    pub(super) multiplex: bool,
    /// The transaction died with its connection: the next command gets 9020.
    pub(super) txn_lost: Option<String>,
    /// Pinned state died with its connection: the next command gets 9021.
    pub(super) state_lost: Option<String>,
    /// Per server: the newest GTID of this session known to be applied there.
    pub(super) seen_gtid: Vec<Option<String>>,
    /// The cluster view as of this command (refreshed when the monitor published a new one:
    /// a version check, not a lock on the shared channel, per command).
    pub(super) view: Arc<crate::cluster::ClusterView>,
    cluster_rx: crate::cluster::ClusterRx,
    /// When a hold (see `SessionState::hold`) ends at the latest.
    hold_until: Option<tokio::time::Instant>,
    /// No command is in flight.
    idle: bool,
    /// Query digests this session saw stored (`SHOW QUERY DIGEST`).
    pub(super) known_digests: crate::metrics::digest::KnownDigests,
    /// The server and id of the primary ([0]) and replica ([1]) connection this session gave
    /// back last: its next lease on that server takes the same one if it is idle.
    pub(super) last_conns: [(usize, u64); 2],
    /// A prepared execution rebuilt with its parameter types, kept between executions.
    pub(super) exec_buf: Vec<u8>,
    /// The current command's MySQL query attributes (taken off every COM_QUERY and
    /// COM_STMT_EXECUTE on arrival, put back for a server connection that negotiated them),
    /// and for an execution its statement's parameter count.
    pub(super) attrs: sluice_proto::query_attrs::Attributes,
    pub(super) attrs_params: u16,
    /// `info.pinned_by` holds a statement (cleared when the pins end).
    pinned_by_shown: bool,
    /// When the last relayed statement's answer ended (`account`'s clock read).
    answered: Option<Instant>,
    /// `[proxy] client_idle_timeout_ms`: when the last command arrived, and a timer that
    /// fires at the earliest moment the session could be idle too long.
    last_command: tokio::time::Instant,
    /// When this session first saw the shutdown (drain) signal.
    drain_started: Option<tokio::time::Instant>,
    /// The client has sent a command since its login (a session that has not is given
    /// longer before a drain closes it: its client is most likely about to use it).
    commanded: bool,
    /// The process is shutting down (the shutdown channel said so; it never goes back).
    shutting_down: bool,
    idle_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether `idle_timer` holds the session's waker for its current deadline (polled since
    /// it was last reset).
    idle_armed: bool,
    /// The user and database are shown to the admin port only when they change:
    /// `st.names_changed` when the user and database were last published (`None`: never).
    published_names: Option<u32>,
}

/// What server connections are opened with (from the client's handshake).
pub(super) struct LoginInfo {
    pub charset: u8,
    pub max_packet: u32,
    pub connect_attrs: Option<Vec<u8>>,
    /// The compressed protocol the client asked for (zstd before zlib, as MySQL chooses).
    pub compression: Option<sluice_proto::compress::Algorithm>,
}

/// The statement an execution runs (see [`Session::forward`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Executed {
    /// The client's statement id (its record of the column definitions it holds).
    pub client: Option<u32>,
    /// Where the held connection keeps the server's statement.
    pub server: Option<crate::backend::stmt_cache::Memo>,
    /// The statement may be a `CALL` (classified as a write; no cursor asked for): its
    /// response may carry the result of OUT parameters, which a client without
    /// `CLIENT_PS_MULTI_RESULTS` does not get.
    pub write: bool,
}

/// Which held connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Primary,
    Replica,
}

/// What the relay of one command produced.
pub(super) struct Relayed {
    pub outcome: Outcome,
}

/// Runs a session to its end.
///
/// The session's task future holds little beside the command loop: the login (a TLS
/// handshake, a server connection opened, each a few KiB of future) is boxed and ends before
/// it, and `Session` lives in a box of its own. With thousands of idle sessions, what each
/// holds is that memory (see docs/benchmarks.md).
pub async fn run(
    shared: Arc<Shared>,
    client: ClientConn,
    id: u32,
    info: Arc<super::registry::SessionInfo>,
) -> Result<(), SessionError> {
    // Held until the session ends (dropped after it).
    let Some((_user_slot, mut s)) = Box::pin(open(shared, client, id, info)).await? else {
        return Ok(());
    };
    let result = s.command_loop().await;
    let orderly = matches!(result, Ok(()) | Err(SessionError::ClientClosed));
    Box::pin(s.finish(orderly)).await;
    result
}

/// Authenticates the client and logs its session in. `None` when the session ended there
/// (the client was answered, or left).
async fn open(
    shared: Arc<Shared>,
    mut client: ClientConn,
    id: u32,
    info: Arc<super::registry::SessionInfo>,
) -> Result<Option<(crate::frontend::firewall::UserSlot, Box<Session>)>, SessionError> {
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
    // A malformed or abandoned handshake counts toward blocking the address (MySQL's
    // max_connect_errors). Wrong credentials do not (they were throttled per user and
    // address instead), nor does a client that just closes (a load balancer's TCP check).
    let auth = match auth {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(None),
        Err(e) => {
            if matches!(
                e,
                SessionError::Malformed(_) | SessionError::HandshakeTimeout(_)
            ) {
                shared.firewall.connect_error(ip, firewall);
            }
            return Err(e);
        }
    };
    shared.firewall.login_ok(ip, &auth.user.name);
    if let Some((cipher, version)) = client.stream.get_ref().tls_info() {
        tracing::debug!(%cipher, %version, "client uses TLS");
        let _ = info.tls.set(format!("{version} {cipher}"));
    }
    // Held until the session ends.
    let Some(user_slot) = shared.firewall.user_slot(&auth.user) else {
        tracing::info!(user = %auth.user.name, limit = auth.user.max_connections, "user has too many sessions");
        client
            .send_err(
                auth.next_seq,
                &errors::too_many_user_connections(&auth.user.name),
            )
            .await?;
        return Ok(None);
    };
    tracing::Span::current().record("user", tracing::field::display(&auth.user.name));
    let Authenticated {
        user,
        response: r,
        capabilities,
        salt,
        next_seq,
    } = auth;
    // An empty name is no database, as the server takes it (mysql-connector-python sends
    // CLIENT_CONNECT_WITH_DB with an empty name).
    let database = r
        .database
        .filter(|d| capabilities & cap::CLIENT_CONNECT_WITH_DB != 0 && !d.is_empty());
    let multiplex = snapshot.config.proxy.multiplexing == Multiplexing::Transaction;
    let snapshot_idle_ms = snapshot.config.proxy.client_idle_timeout_ms;
    let mut cluster_rx = shared.cluster.clone();
    let view = cluster_rx.borrow_and_update().clone();
    let mut s = Box::new(Session {
        client,
        user,
        capabilities,
        salt,
        login: LoginInfo {
            charset: r.charset,
            max_packet: r.max_packet,
            connect_attrs: r.connect_attrs,
            compression: if capabilities & cap::CLIENT_ZSTD_COMPRESSION != 0 {
                Some(sluice_proto::compress::Algorithm::Zstd(i32::from(
                    r.zstd_level.unwrap_or(3),
                )))
            } else if capabilities & cap::CLIENT_COMPRESS != 0 {
                Some(sluice_proto::compress::Algorithm::Zlib)
            } else {
                None
            },
        },
        info,
        routing: snapshot,
        st: SessionState::new(database, capabilities),
        primary: None,
        replica: None,
        txn_on_replica: false,
        multiplex,
        txn_lost: None,
        state_lost: None,
        seen_gtid: Vec::new(),
        view,
        cluster_rx,
        hold_until: None,
        idle: true,
        known_digests: Default::default(),
        last_conns: [(usize::MAX, 0); 2],
        exec_buf: Vec::new(),
        attrs: Default::default(),
        attrs_params: 0,
        pinned_by_shown: false,
        answered: None,
        last_command: tokio::time::Instant::now(),
        drain_started: None,
        commanded: false,
        shutting_down: false,
        idle_armed: false,
        idle_timer: Box::pin(tokio::time::sleep(Duration::from_millis(
            snapshot_idle_ms.max(1),
        ))),
        published_names: None,
        shared,
    });
    s.publish_state();
    if !s.login_primary(next_seq).await? {
        return Ok(None);
    }
    tracing::debug!("client authenticated");
    // Quiet time counts from the login's answer, not from the session's creation.
    s.last_command = tokio::time::Instant::now();
    Ok(Some((user_slot, s)))
}

/// Authenticates the client. `None` when the client was refused (it has been told why).
async fn authenticate(
    shared: &Shared,
    snapshot: &super::RoutingState,
    client: &mut ClientConn,
    id: u32,
) -> Result<Option<Authenticated>, SessionError> {
    let hello = shared.cluster.borrow().primary_hello.clone();
    let users = handshake::Users::Source {
        shared,
        config: &snapshot.config,
    };
    let firewall = &snapshot.config.firewall;
    let ip = client.peer.ip();
    // Below the handshake deadline, so that the client still gets its 1045.
    let cap = Duration::from_millis(snapshot.config.proxy.handshake_timeout_ms / 2);
    let delay = |user: &str| shared.firewall.wrong_password(ip, user, firewall).min(cap);
    match handshake::authenticate(client, &users, id, hello.as_ref(), &snapshot.auth, &delay).await
    {
        Ok(a) => Ok(Some(a)),
        Err(SessionError::AccessDenied(user)) => {
            tracing::info!(user = %user, "access denied");
            Ok(None)
        }
        Err(SessionError::AccountRefused(user, why)) => {
            tracing::info!(user = %user, reason = %why, "login refused");
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

/// The OK Sluice sends for a login or change of user served by a reused connection.
const LOGIN_OK: [u8; 7] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

impl Session {
    /// Logs in to the primary on the client's behalf (a new or reused connection brought to
    /// the session's database) and sends the client the OK, or the server's refusal. False
    /// when the client was refused.
    async fn login_primary(&mut self, seq: u8) -> Result<bool, SessionError> {
        let hold_ms = self.routing.config.monitor.failover_hold_ms;
        let Some(p) = wait_for_primary(&self.shared, hold_ms).await else {
            self.client
                .send_err(seq, &errors::no_primary_within(hold_ms))
                .await?;
            return Ok(false);
        };
        match self.lease(p).await {
            Ok((conn, ok)) => {
                self.hold_primary(p, conn);
                // The server's own OK, as the client would have had it (a session-state block
                // only for a client that asked for them).
                let ok = match ok {
                    None => LOGIN_OK.to_vec(),
                    Some(b) if self.capabilities & cap::CLIENT_SESSION_TRACK != 0 => b.to_vec(),
                    Some(b) => sluice_proto::ok::without_session_state(&b)
                        .map_err(|e| SessionError::BackendProtocol(e.to_string()))?,
                };
                self.client.write_packet(seq, &ok).await?;
                // The login's OK goes out as is; everything after it is compressed.
                if let Some(algorithm) = self.login.compression {
                    self.client.start_compression(algorithm)?;
                }
                self.settle().await;
                Ok(true)
            }
            Err(Unavailable::Reply(e) | Unavailable::Close(e)) => {
                self.client.send_err(seq, &e).await?;
                Ok(false)
            }
        }
    }

    /// A reload replaced the configuration, servers or rules: take the new snapshot. A held
    /// replica connection to a removed server is given up unless a transaction runs there.
    pub(super) fn refresh_snapshot(&mut self) {
        self.routing = self.shared.routing();
        let removed =
            |i: usize, r: &Self| r.routing.config.servers.get(i).is_some_and(|s| s.removed);
        if let Some(r) = &self.replica {
            if removed(r.server, self) && !self.txn_on_replica {
                self.replica = None;
                self.info.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            self.idle = true;
            self.info.busy.store(false, Ordering::Relaxed);
            self.info.waiting.store(true, Ordering::Relaxed);
            if self.shutting_down(&mut shutdown) && self.may_close_for_shutdown() {
                return self.close().await;
            }
            let Some(ext) = self.next_command(&mut shutdown).await? else {
                continue;
            };
            self.idle = false;
            self.info.waiting.store(false, Ordering::Relaxed);
            self.info.busy.store(true, Ordering::Relaxed);
            if self.shared.routing_gen.load(Ordering::Acquire) != self.routing.generation {
                self.refresh_snapshot();
            }
            if self.cluster_rx.has_changed().unwrap_or(false) {
                self.view = self.cluster_rx.borrow_and_update().clone();
            }
            let seq = ext.last_seq.wrapping_add(1);
            if ext.first_seq != 0 {
                let _ = self.client.send_err(seq, &errors::out_of_order()).await;
                return Err(SessionError::Malformed(
                    "command with a non-zero sequence id".into(),
                ));
            }
            let Some(&code) = self
                .client
                .rbuf
                .get(HEADER_LEN)
                .filter(|_| ext.wire_len > HEADER_LEN)
            else {
                let _ = self.client.send_err(1, &errors::malformed_packet("")).await;
                return Err(SessionError::Malformed("empty command packet".into()));
            };
            match code {
                command::COM_QUIT => {
                    self.client.consume(ext.wire_len);
                    self.idle = true;
                    return self.close().await;
                }
                command::COM_CHANGE_USER => {
                    let payload = self.client.rbuf[HEADER_LEN..ext.wire_len].to_vec();
                    self.client.consume(ext.wire_len);
                    Box::pin(self.change_user(&payload)).await?;
                }
                c if refused_command(c) => {
                    self.client.consume(ext.wire_len);
                    self.client
                        .send_err(seq, &errors::unknown_command(c))
                        .await?;
                }
                command::COM_STMT_PREPARE
                | command::COM_STMT_EXECUTE
                | command::COM_STMT_SEND_LONG_DATA
                | command::COM_STMT_CLOSE
                | command::COM_STMT_RESET
                | command::COM_STMT_FETCH
                | command::COM_STMT_BULK_EXECUTE => {
                    self.statement_command(code, ext.wire_len, seq).await?
                }
                _ => self.command(code, ext.wire_len, seq).await?,
            }
            if !self.settle_now() {
                self.settle().await;
            }
            self.publish_state();
            // Idle time (client_idle_timeout_ms, the shutdown drain) counts from the answer:
            // the clock read that timed a relayed statement, else a new one.
            self.last_command = match self.answered.take() {
                Some(at) => tokio::time::Instant::from_std(at),
                None => tokio::time::Instant::now(),
            };
        }
    }

    /// Whether the process is shutting down. Read per statement: an atomic load of the
    /// channel's version, not its lock (shared by every session, on every core).
    fn shutting_down(&mut self, rx: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        if !self.shutting_down && !matches!(rx.has_changed(), Ok(false)) {
            self.shutting_down = *rx.borrow_and_update();
        }
        self.shutting_down
    }

    /// How long the client may stay silent: the session's own `SET wait_timeout` (seconds, as
    /// the server would apply it to this session); else the primary's default, as the server
    /// applies it to a new session (`interactive_timeout` for a client that said
    /// `CLIENT_INTERACTIVE`, `wait_timeout` otherwise), capped by `[proxy]
    /// client_idle_timeout_ms` (0 = no cap); without a known primary, that key alone.
    fn idle_limit_ms(&self) -> u64 {
        if let Some(secs) = self
            .st
            .vars
            .get(b"wait_timeout")
            .and_then(wait_timeout_secs)
        {
            return secs.saturating_mul(1000);
        }
        let cap = self.routing.config.proxy.client_idle_timeout_ms;
        let server = self.view.idle_timeouts.map(|(wait, interactive)| {
            let secs = if self.capabilities & cap::CLIENT_INTERACTIVE != 0 {
                interactive
            } else {
                wait
            };
            secs.saturating_mul(1000)
        });
        match (server, cap) {
            (Some(s), 0) => s,
            (Some(s), c) => s.min(c),
            (None, c) => c,
        }
    }

    /// On shutdown (or after a takeover), a session closes at a transaction boundary once the
    /// client has been quiet for `DRAIN_QUIET`: a client that connects, runs a statement and
    /// leaves is never cut short, and one that keeps a transaction open finishes it (within
    /// `shutdown_grace_ms`).
    /// A client that never pauses is closed at its first transaction boundary after half the
    /// grace period.
    fn may_close_for_shutdown(&mut self) -> bool {
        let started = *self
            .drain_started
            .get_or_insert_with(tokio::time::Instant::now);
        let half_grace = Duration::from_millis(self.routing.config.proxy.shutdown_grace_ms / 2);
        !self.st.in_transaction()
            && (self.last_command.elapsed() >= self.drain_quiet()
                || started.elapsed() >= half_grace)
    }

    /// How long a draining session waits for its client to be quiet: `DRAIN_QUIET` after a
    /// command; before the first one, `FIRST_COMMAND_QUIET` (a client that just logged in,
    /// on a loaded machine, may take longer than 200 ms to send its first statement, and
    /// closing it then looks to the client like a failed connect).
    fn drain_quiet(&self) -> Duration {
        if self.commanded {
            DRAIN_QUIET
        } else {
            FIRST_COMMAND_QUIET
        }
    }

    /// Waits for the client's next command, watching the held connections meanwhile. `None`
    /// when something else happened (the loop looks again).
    async fn next_command(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<PacketExtent>, SessionError> {
        let idle_ms = self.idle_limit_ms();
        if idle_ms > 0 {
            // A SET wait_timeout may have shortened the limit since the timer was set.
            let due = self.last_command + Duration::from_millis(idle_ms);
            if self.idle_timer.deadline() > due {
                self.idle_timer.as_mut().reset(due);
                self.idle_armed = false;
            }
        }
        // A hold ends at the next command, or after multiplexing_hold_ms.
        if self.st.hold.is_some() && self.hold_until.is_none() {
            let ms = self.routing.config.proxy.multiplexing_hold_ms;
            self.hold_until = Some(tokio::time::Instant::now() + Duration::from_millis(ms));
        }
        let hold_until = self.hold_until;
        let draining = self.shutting_down(shutdown);
        let drain_at =
            (draining && !self.st.in_transaction()).then(|| self.last_command + self.drain_quiet());
        // Branches with nothing to watch are disabled, not polled (most commands: no held
        // connection, no hold, no drain).
        let (has_primary, has_replica) = (self.primary.is_some(), self.replica.is_some());
        let primary = self.primary.as_mut().map(|l| &mut *l.conn);
        let replica = self.replica.as_mut().map(|l| &mut *l.conn);
        let client = &mut self.client;
        // One timer for the session's life, moved only when it fires early (no timer-wheel
        // work per command). Once it has the session's waker for its deadline it is not
        // polled again until it has fired (the session is one task for its life, so the
        // waker it holds stays valid): a look at its state instead of a poll per command.
        let mut idle_timer = self.idle_timer.as_mut();
        let idle_armed = &mut self.idle_armed;
        let idle_timer = std::future::poll_fn(move |cx| {
            if *idle_armed && !idle_timer.is_elapsed() {
                return std::task::Poll::Pending;
            }
            *idle_armed = true;
            std::future::Future::poll(idle_timer.as_mut(), cx)
        });
        // In this order: a KILL answered OK wins over a command that arrived meanwhile (as on
        // the server, whose KILL shuts the victim's socket), and no random draw per wait.
        tokio::select! {
            biased;
            _ = self.info.killed.fired() => {
                // KILL by its user or the admin port: the client sees its connection closed
                // (TLS closed properly first), as after a server-side kill. The KILL answers
                // once the connection is closed.
                let r = self.close().await;
                self.info.closed.fire();
                r?;
                Err(SessionError::ClientClosed)
            }
            r = client.next_packet() => match r {
                Ok(ext) => {
                    self.hold_until = None;
                    self.commanded = true;
                    Ok(Some(ext))
                }
                Err(SessionError::TooLarge(n)) => {
                    let _ = self.client.send_err(1, &errors::packet_too_large()).await;
                    Err(SessionError::TooLarge(n))
                }
                Err(e) => Err(e),
            },
            _ = idle_timer, if idle_ms > 0 => {
                let due = self.last_command + Duration::from_millis(idle_ms);
                if tokio::time::Instant::now() < due {
                    self.idle_timer.as_mut().reset(due);
                    self.idle_armed = false;
                    return Ok(None);
                }
                // Like the server's wait_timeout: the client stayed silent too long.
                self.shared.counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(idle_ms, "closing a client idle for longer than its wait_timeout (client_idle_timeout_ms or the session's SET wait_timeout)");
                self.close().await?;
                Err(SessionError::ClientClosed)
            }
            why = watch(primary), if has_primary => {
                self.held_broke(true, why);
                Ok(None)
            }
            why = watch(replica), if has_replica => {
                self.held_broke(false, why);
                Ok(None)
            }
            _ = until(hold_until), if hold_until.is_some() => {
                self.hold_until = None;
                self.end_hold().await;
                self.publish_state();
                Ok(None)
            }
            _ = self.info.drain.fired(), if !draining => Ok(None),
            _ = until(drain_at), if drain_at.is_some() => Ok(None),
        }
    }

    /// A command other than the prepared-statement ones, at the front of the client buffer.
    async fn command(
        &mut self,
        code: u8,
        mut wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        if code == command::COM_QUERY && self.capabilities & cap::CLIENT_QUERY_ATTRIBUTES != 0 {
            // Everything below reads the statement as without query attributes.
            match self.take_query_attributes(wire_len) {
                Some(n) => wire_len = n,
                None => {
                    self.client.consume(wire_len);
                    let e = errors::malformed_packet("query attributes");
                    return self.client.send_err(seq, &e).await;
                }
            }
        }
        // Connection ids are Sluice's session ids (src/frontend/kill.rs).
        if code == command::COM_PROCESS_KILL {
            let k = super::kill::parse_process_kill(&self.client.rbuf[HEADER_LEN..wire_len]);
            return Box::pin(self.kill(k.ok_or("a malformed COM_PROCESS_KILL"), wire_len, seq))
                .await;
        }
        if code == command::COM_QUERY {
            let sql = &self.client.rbuf[HEADER_LEN + 1..wire_len];
            if let Some(k) = super::kill::parse(sql) {
                return Box::pin(self.kill(k, wire_len, seq)).await;
            }
            if let Some(new) = super::kill::rewrite_connection_id(sql, self.info.id) {
                wire_len = self.client.replace_query(wire_len, &new);
            }
        }
        let payload = &self.client.rbuf[HEADER_LEN..wire_len];
        // With the query digest on, a text query is lexed once for its class, its digest and
        // the `LOAD … LOCAL` test; otherwise the classifier's byte-scan fast path serves plain
        // selects and the digest is not needed.
        let seen = (code == command::COM_QUERY && self.shared.digests.is_enabled())
            .then(|| crate::router::classify_query_seen(&payload[1..]));
        let (mut plan, seen) = match seen {
            Some((c, seen)) => (self.plan_classified(&payload[1..], c, true), Some(seen)),
            None => (self.plan(payload), None),
        };
        if code == command::COM_SET_OPTION {
            // The multi-statement option is replayable session state (`SessionVars`): it
            // follows the session to the connections it leases. An unknown option is the
            // server's error, and changes nothing.
            plan.applied.single_statements = match payload.get(1..3) {
                Some([0, 0]) => Some(false),
                Some([1, 0]) => Some(true),
                _ => None,
            };
        }
        if let Some(err) = plan.reject.take() {
            self.client.consume(wire_len);
            return self.client.send_err(seq, &err).await;
        }
        // A server may ask for a local file only in answer to the client's own
        // `LOAD DATA LOCAL`, and only if the client enabled it: server connections enable
        // local files for every session, so a client that did not gets the server's refusal
        // from Sluice (the whole query: a multi-statement query is not begun).
        let load_local = code == command::COM_QUERY
            && seen.map_or_else(
                || crate::router::lexer::mentions_load_local(&payload[1..]),
                |s| s.load_local(),
            );
        let local_files = load_local && self.capabilities & cap::CLIENT_LOCAL_FILES != 0;
        if load_local && !local_files {
            let mysql = self
                .shared
                .cluster
                .borrow()
                .primary_hello
                .as_ref()
                .is_some_and(|h| crate::backend::is_mysql_version(&h.version));
            self.client.consume(wire_len);
            return self
                .client
                .send_err(seq, &errors::local_infile_disabled(mysql))
                .await;
        }
        let digest = seen.and_then(|s| {
            self.shared.digests.begin_hashed_known(
                s.digest(),
                &payload[1..],
                &mut self.known_digests,
            )
        });
        let pin_text = plan
            .applied
            .pin
            .map(|_| statement_text(&self.client.rbuf[HEADER_LEN..wire_len]));
        let Some(on) = self.target(&mut plan, wire_len, seq).await? else {
            return Ok(());
        };
        let kind = ResponseKind::for_command(code);
        let started = Instant::now();
        let Some(r) = self
            .forward(on, wire_len, None, kind, seq, local_files, None)
            .await?
        else {
            return Ok(());
        };
        let class = if code == command::COM_QUERY {
            plan.class
        } else {
            StatementClass::Command
        };
        let (rows, warnings, insert_id) = self.account(on, class, digest, started, r.outcome);
        self.after(
            on,
            code,
            &plan,
            r.outcome,
            (rows, warnings, insert_id),
            pin_text,
        );
        if code == command::COM_RESET_CONNECTION && !r.outcome.error {
            self.reset_connection_state(on);
        }
        Ok(())
    }

    /// `KILL` / `COM_PROCESS_KILL` with a Sluice session id.
    pub(super) async fn kill(
        &mut self,
        k: Result<super::kill::Kill, &'static str>,
        wire_len: usize,
        seq: u8,
    ) -> Result<(), SessionError> {
        use super::kill::{decide, unsupported, Verdict};
        self.client.consume(wire_len);
        let k = match k {
            Ok(k) => k,
            Err(what) => return self.client.send_err(seq, &unsupported(what)).await,
        };
        match decide(&self.shared, self.info.id, &self.user.name, k) {
            Verdict::Killed(victim) => {
                super::registry::Registry::closed(&victim).await;
                self.send_local_ok(seq).await
            }
            Verdict::Idle => self.send_local_ok(seq).await,
            Verdict::Refused(e) => self.client.send_err(seq, &e).await,
            Verdict::Myself => {
                let _ = self
                    .client
                    .send_err(seq, &super::kill::connection_killed())
                    .await;
                self.close().await?;
                Err(SessionError::ClientClosed)
            }
            Verdict::Interrupt { server, thread } => {
                let (mut conn, _) = match self.lease(server).await {
                    Ok(c) => c,
                    Err(Unavailable::Reply(e) | Unavailable::Close(e)) => {
                        return self.client.send_err(seq, &e).await
                    }
                };
                let sql = format!("\x03KILL QUERY {thread}");
                let r = conn.control(sql.as_bytes(), ResponseKind::Query).await;
                if let Some(slot) = self.routing.slot(server) {
                    if r.is_ok() {
                        slot.pool.release(conn);
                    }
                }
                match r {
                    // The statement ended between the check and the kill: nothing to do.
                    Ok(Ok(_)) | Ok(Err(_)) => self.send_local_ok(seq).await,
                    Err(e) => {
                        self.client
                            .send_err(
                                seq,
                                &errors::backend_connect(
                                    &self
                                        .routing
                                        .slot(server)
                                        .map_or_else(String::new, |s| s.pool.name.clone()),
                                    &e.to_string(),
                                ),
                            )
                            .await
                    }
                }
            }
        }
    }

    /// Takes the query attributes off the `COM_QUERY` at the front of the client buffer
    /// (`wire_len` bytes) into `self.attrs`; returns the classic command's length. `None`:
    /// malformed attributes.
    fn take_query_attributes(&mut self, wire_len: usize) -> Option<usize> {
        let payload = self.client.command_payload(wire_len);
        let (attrs, at) = sluice_proto::query_attrs::split_query(payload.get(1..)?).ok()?;
        let n = match payload {
            std::borrow::Cow::Borrowed(_) => self.client.strip_after_command(wire_len, at),
            std::borrow::Cow::Owned(p) => {
                let mut classic = Vec::with_capacity(p.len() - at);
                classic.push(command::COM_QUERY);
                classic.extend_from_slice(&p[1 + at..]);
                self.client.replace_command(wire_len, &classic)
            }
        };
        if !attrs.is_empty() {
            self.shared
                .counters
                .query_attributes
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!(attributes = attrs.len(), "a query with attributes");
        }
        self.attrs = attrs;
        self.attrs_params = 0;
        Some(n)
    }

    /// For a server connection that negotiated query attributes: the command to send (the
    /// classic `payload`, or the client's at the front of its buffer) with the current
    /// command's attributes put back. `Ok(None)`: the classic command goes as it is.
    fn with_attributes(
        &self,
        wire_len: usize,
        payload: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, sluice_proto::error::ProtoError> {
        use sluice_proto::query_attrs::{join_execute, join_query};
        let classic = match payload {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => self.client.command_payload(wire_len),
        };
        let mut out = Vec::with_capacity(classic.len() + 16);
        match classic.first() {
            Some(&command::COM_QUERY) => {
                out.push(command::COM_QUERY);
                join_query(&self.attrs, &classic[1..], &mut out);
            }
            Some(&command::COM_STMT_EXECUTE) => {
                out.push(command::COM_STMT_EXECUTE);
                out.extend_from_slice(&join_execute(
                    &classic[1..],
                    self.attrs_params,
                    &self.attrs,
                )?);
            }
            _ => return Ok(None),
        }
        Ok(Some(out))
    }

    /// An OK that Sluice answers itself, with the session's status flags.
    async fn send_local_ok(&mut self, seq: u8) -> Result<(), SessionError> {
        let ok = sluice_proto::ok::OkPacket {
            header: 0,
            affected_rows: 0,
            last_insert_id: 0,
            status: self.st.status,
            warnings: 0,
            info: Vec::new(),
            session_state: None,
        };
        self.client
            .write_packet(seq, &ok.encode(self.capabilities))
            .await
    }

    /// Counts a relayed statement (digest, per-route and per-server counters, latency, where
    /// reads ran) and returns what its final OK/EOF said: rows, warnings, insert id.
    pub(super) fn account(
        &mut self,
        on: Held,
        class: StatementClass,
        digest: Option<crate::metrics::digest::Pending>,
        started: Instant,
        outcome: Outcome,
    ) -> (u64, u16, u64) {
        let conn = self.conn(on);
        let (rows, warnings, insert_id) = (conn.last_rows, conn.last_warnings, conn.last_insert_id);
        let replica = on == Held::Replica;
        // One clock read per statement (it also marks the answer for the idle timer).
        let now = Instant::now();
        self.answered = Some(now);
        let took = now.saturating_duration_since(started);
        if let Some(d) = digest {
            self.shared
                .digests
                .record(d, took, rows, replica, outcome.error);
        }
        self.count(replica.then(|| self.server_of(on)), class, took);
        if class == StatementClass::Read {
            let c = if replica {
                &self.shared.counters.replica_reads
            } else {
                &self.shared.counters.primary_reads
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        (rows, warnings, insert_id)
    }

    /// Updates the session after a relayed command.
    pub(super) fn after(
        &mut self,
        on: Held,
        code: u8,
        plan: &super::routing::Plan,
        outcome: Outcome,
        (rows, warnings, insert_id): (u64, u16, u64),
        pin_text: Option<String>,
    ) {
        self.st.previous = match on {
            Held::Primary => Route::Primary,
            Held::Replica => Route::Replica(self.server_of(on)),
        };
        if let Some(st) = outcome.status {
            self.st.status = st;
        }
        let conn_id = self.conn(on).id;
        if insert_id != 0 || plan.reads.insert_id {
            // LAST_INSERT_ID() of this connection may be the session's now.
            let dirty_here = self.st.lii_dirty && self.st.lii_conn == Some(conn_id);
            if !dirty_here {
                self.st.lii_in_sync =
                    !self.st.lii_dirty && self.conn(on).insert_id_seen == self.st.lii;
            }
            if dirty_here && insert_id == 0 {
                // Keep the insert id an earlier statement on this connection reported.
            } else {
                self.st.lii_ok = insert_id;
            }
            self.st.lii_dirty = true;
            self.st.lii_conn = Some(conn_id);
        }
        if outcome.error {
            // SHOW WARNINGS / SHOW ERRORS read the error on this connection.
            self.st.keep_after(1, false, false);
            return;
        }
        if plan.class == StatementClass::BeginReadOnly
            && on == Held::Replica
            && self.st.in_transaction()
        {
            self.txn_on_replica = true;
        }
        if on == Held::Primary {
            self.st.wrote |= Session::may_write(code, plan.class);
        }
        let changes_rows = matches!(
            plan.class,
            StatementClass::Write | StatementClass::Other | StatementClass::Multi
        ) && (rows > 0 || insert_id != 0);
        self.st.keep_after(warnings, plan.found_rows, changes_rows);
        if plan.keeps_warnings && self.st.hold.is_none() {
            self.st.hold = Some(Hold::Warnings);
        }
        if self.st.pins & PinReason::NextTransaction.bit() != 0
            && plan.applied.pin != Some(PinReason::NextTransaction)
            && !self.st.in_transaction()
        {
            // The next transaction (or autocommit statement) ran with it.
            self.st.pins &= !PinReason::NextTransaction.bit();
        }
        let mut a = plan.applied.clone();
        let tracked = self.conn_mut(on).session_state.take();
        if let Some(ok) = &tracked {
            if !matches!(plan.class, StatementClass::SessionSet | StatementClass::Use) {
                // State changed by what Sluice does not parse (a procedure's `USE`, `SET`),
                // as the server reported it.
                learn_session_state(ok, self.conn(on).capabilities, &mut a);
            }
            // MySQL: the GTID of what this statement committed (src/frontend/gtid.rs).
            if on == Held::Primary && self.conn(on).is_mysql() {
                if let Some(g) = super::gtid::own_gtid(ok, self.conn(on).capabilities) {
                    self.st.last_gtid = Some(g);
                    if !self.st.in_transaction() {
                        self.st.wrote = false;
                    }
                }
            }
        }
        if !a.sets.is_empty() || a.db.is_some() {
            let conn = self.conn_mut(on);
            tracing::trace!(
                conn = conn.id,
                sets = a.sets.len(),
                "session state changed on its connection"
            );
            for (k, v) in &a.sets {
                conn.state.set(k.clone(), v.clone());
            }
            if let Some(db) = &a.db {
                conn.state.db = (!db.is_empty()).then(|| db.clone());
            }
        }
        if let Some(single) = a.single_statements {
            self.conn_mut(on).state.single_statements = single;
        }
        if let Some(p) = self.st.apply(a) {
            self.pinned(p, pin_text.unwrap_or_default());
        }
    }

    /// A pin started: counted, shown to the admin port, logged once per statement shape.
    pub(super) fn pinned(&mut self, p: PinReason, text: String) {
        let i = PinReason::ALL.iter().position(|&x| x == p).unwrap_or(0);
        self.shared.counters.pins[i].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut by) = self.info.pinned_by.lock() {
            if by.is_none() {
                *by = Some((Instant::now(), text.clone()));
            }
        }
        self.pinned_by_shown = true;
        self.shared.pin_log.record(p, &self.user.name, &text);
    }

    /// Publishes the session's state to the admin port.
    pub(super) fn publish_state(&mut self) {
        self.info
            .in_transaction
            .store(self.st.in_transaction(), Ordering::Relaxed);
        self.info.pins.store(self.st.pins, Ordering::Relaxed);
        // The lock only when a pin was shown (not once per statement).
        if self.st.pins == 0 && self.pinned_by_shown {
            if let Ok(mut by) = self.info.pinned_by.lock() {
                *by = None;
            }
            self.pinned_by_shown = false;
        }
        // A change of user resets the state, which counts as a change of names.
        if self.published_names != Some(self.st.names_changed) {
            self.published_names = Some(self.st.names_changed);
            self.info
                .set_names(&self.user.name, self.st.vars.db.as_deref());
        }
    }

    /// COM_RESET_CONNECTION succeeded: the server forgot the session (variables, temporary
    /// tables, locks, prepared statements) but kept its database.
    fn reset_connection_state(&mut self, on: Held) {
        let db = self.st.vars.db.clone();
        self.st.reset(db.clone());
        let conn = self.conn_mut(on);
        conn.stmts.clear_forgotten();
        conn.insert_id_seen = 0;
        // The server's character set after a reset is not the login one everywhere: the next
        // lease sets it explicitly.
        conn.state = crate::backend::SessionVars {
            db,
            sets: vec![(crate::backend::state::NAMES_KEY.to_vec(), Vec::new())],
            single_statements: conn.state.single_statements,
        };
    }

    /// Chooses and leases the connection a planned command runs on. `None`: the command was
    /// answered (with an error) and consumed.
    pub(super) async fn target(
        &mut self,
        plan: &mut super::routing::Plan,
        wire_len: usize,
        seq: u8,
    ) -> Result<Option<Held>, SessionError> {
        // Most statements of a transaction: it holds the primary, nothing is held over from
        // the previous statement and nothing must be read or cleared first. What the steps
        // below would decide, without their futures.
        if self.st.hold.is_none()
            && plan.route == Route::Primary
            && !plan.reads.insert_id
            && !plan.reads.previous
            && !self.txn_on_replica
            && self.txn_lost.is_none()
            && self.state_lost.is_none()
            && self.primary.is_some()
            && self.st.in_transaction()
        {
            return Ok(Some(Held::Primary));
        }
        let hold = self.st.hold.take();
        let held_previous = hold.is_some();
        if held_previous {
            self.hold_until = None;
            let movable = self.st.previous == Route::Primary && plan.route == Route::Primary
                || matches!(
                    plan.class,
                    StatementClass::Read | StatementClass::ReadPrevious
                );
            if hold == Some(Hold::Warnings) && !plan.clears_diagnostics && movable {
                // The warnings stay readable until a statement that uses a table: this one
                // runs where they are, and the hold goes on after it.
                plan.reads.previous = true;
                plan.keeps_warnings = true;
            }
            if plan.reads.previous || plan.reads.insert_id {
                // A dependent statement runs where the previous one did.
                plan.route = self.st.previous;
            }
            // Whatever the hold kept and this command does not use goes back.
            let keep_primary = plan.route == Route::Primary;
            let keep_replica = matches!(plan.route, Route::Replica(i) if self.replica.as_ref().is_some_and(|r| r.server == i));
            if !keep_replica && !self.txn_on_replica {
                self.release_replica().await;
            }
            if !keep_primary && self.multiplex && !self.st.needs_held() {
                self.release_primary().await;
            }
        }
        if self.txn_on_replica && self.st.in_transaction() {
            if let Some(r) = &self.replica {
                plan.route = Route::Replica(r.server);
            }
        }
        if let Route::Replica(i) = plan.route {
            if self.know_last_gtid().await
                && self.lease_replica(i).await
                && self.replica_has_our_writes(i).await
            {
                return self
                    .prepare_target(Held::Replica, plan, held_previous, wire_len, seq)
                    .await;
            }
            if self.txn_on_replica {
                self.client.consume(wire_len);
                self.client
                    .send_err(
                        seq,
                        &errors::lost_in_flight(
                            self.routing.server_name(i),
                            "the replica connection of the read-only transaction broke",
                        ),
                    )
                    .await?;
                self.txn_on_replica = false;
                self.st.status &= !SERVER_STATUS_IN_TRANS;
                return Ok(None);
            }
        }
        match self.lease_primary().await {
            Ok(()) => {
                self.prepare_target(Held::Primary, plan, held_previous, wire_len, seq)
                    .await
            }
            Err(Unavailable::Reply(e)) => {
                self.client.consume(wire_len);
                self.client.send_err(seq, &e).await?;
                Ok(None)
            }
            Err(Unavailable::Close(e)) => {
                self.client.consume(wire_len);
                let _ = self.client.send_err(seq, &e).await;
                Err(SessionError::BackendLost(
                    "session state lost with its server connection".into(),
                ))
            }
        }
    }

    /// Last preparations on the chosen connection: LAST_INSERT_ID() for a statement that
    /// reads it; for a statement that reads the previous statement's outcome on a connection
    /// that did not run it (the previous statement left nothing to read: no warnings, no
    /// changed rows), the diagnostics of whoever used the connection before are cleared.
    async fn prepare_target(
        &mut self,
        on: Held,
        plan: &super::routing::Plan,
        held_previous: bool,
        wire_len: usize,
        seq: u8,
    ) -> Result<Option<Held>, SessionError> {
        let clear = plan.reads.previous && !held_previous;
        if plan.reads.insert_id || clear {
            let (slot, st) = match on {
                Held::Primary => (&mut self.primary, &mut self.st),
                Held::Replica => (&mut self.replica, &mut self.st),
            };
            if let Some(l) = slot.as_mut() {
                let mut r = Ok(());
                if clear {
                    // A statement that uses a table clears the diagnostics area (`DO 0` does not).
                    let sql = b"\x03DO (SELECT 1 FROM (SELECT 1) AS sluice_clear)";
                    r = match l.conn.control(sql, ResponseKind::Query).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                if r.is_ok() && plan.reads.insert_id {
                    r = Session::sync_insert_id(&mut l.conn, st).await;
                }
                if let Err(e) = r {
                    let name = l.conn.server.clone();
                    self.drop_held(on);
                    self.client.consume(wire_len);
                    self.client
                        .send_err(seq, &errors::lost_in_flight(&name, &e.to_string()))
                        .await?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(on))
    }

    pub(super) fn conn(&self, on: Held) -> &BackendConn {
        match on {
            Held::Primary => &self.primary.as_ref().expect("leased").conn,
            Held::Replica => &self.replica.as_ref().expect("leased").conn,
        }
    }

    pub(super) fn conn_mut(&mut self, on: Held) -> &mut BackendConn {
        match on {
            Held::Primary => &mut self.primary.as_mut().expect("leased").conn,
            Held::Replica => &mut self.replica.as_mut().expect("leased").conn,
        }
    }

    /// The held connection `on`, if the session still holds it (not after a lost connection).
    pub(super) fn held_mut(&mut self, on: Held) -> Option<&mut BackendConn> {
        match on {
            Held::Primary => self.primary.as_mut().map(|l| &mut *l.conn),
            Held::Replica => self.replica.as_mut().map(|l| &mut *l.conn),
        }
    }

    pub(super) fn server_of(&self, on: Held) -> usize {
        match on {
            Held::Primary => self.primary.as_ref().map_or(usize::MAX, |l| l.server),
            Held::Replica => self.replica.as_ref().map_or(usize::MAX, |l| l.server),
        }
    }

    /// Forwards the command at the front of the client buffer (or `rebuilt` instead) on a
    /// held connection and relays the answer. Every failure is handled here: `Ok(None)` when
    /// the client got an error and the session goes on. `exec`: the statement an execution
    /// runs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &mut self,
        on: Held,
        wire_len: usize,
        rebuilt: Option<&[u8]>,
        kind: ResponseKind,
        seq: u8,
        local_files: bool,
        exec: Option<Executed>,
    ) -> Result<Option<Relayed>, SessionError> {
        let server = self.server_of(on);
        // Query attributes go back on for a connection that negotiated them.
        let attrs_conn = match on {
            Held::Primary => self.primary.as_ref(),
            Held::Replica => self.replica.as_ref(),
        }
        .is_some_and(|l| l.conn.query_attributes());
        let joined = if attrs_conn {
            match self.with_attributes(wire_len, rebuilt) {
                Ok(j) => j,
                Err(e) => {
                    self.client.consume(wire_len);
                    let e = errors::incorrect_arguments("mysqld_stmt_execute", &e.to_string());
                    self.client.send_err(seq, &e).await?;
                    return Ok(None);
                }
            }
        } else {
            None
        };
        let rebuilt = joined.as_deref().or(rebuilt);
        // The in-flight count is kept while the statement runs (borrowed snapshot: no Arc
        // clone per statement).
        let outstanding = match on {
            Held::Replica => self
                .routing
                .slot(server)
                .map(|s| Outstanding::new(&s.outstanding)),
            Held::Primary => None,
        };
        let leased = match on {
            Held::Primary => self.primary.as_mut(),
            Held::Replica => self.replica.as_mut(),
        };
        let Some(leased) = leased else {
            self.client.consume(wire_len);
            return Err(SessionError::BackendProtocol("no connection leased".into()));
        };
        let conn = &mut leased.conn;
        self.info.running.store(
            super::kill::pack(server, conn.handshake.connection_id),
            Ordering::Relaxed,
        );
        let written = match rebuilt {
            Some(p) => conn.write_packet(0, p).await.map_err(|e| e.to_string()),
            None => conn
                .send_raw(&self.client.rbuf[..wire_len])
                .await
                .map_err(|e| e.to_string()),
        };
        self.client.consume(wire_len);
        let result = match written {
            Err(e) => Err(SessionError::BackendGone(e)),
            Ok(()) if kind == ResponseKind::None => {
                return Ok(Some(Relayed {
                    outcome: Outcome {
                        status: None,
                        error: false,
                    },
                }))
            }
            Ok(()) => {
                let meta = if self.capabilities & cap::MARIADB_CLIENT_CACHE_METADATA == 0 {
                    Metadata::Plain
                } else {
                    match exec.and_then(|e| self.st.stmts.get_mut(&e.client?)) {
                        Some(st) => Metadata::Cached(&mut st.meta),
                        None => Metadata::Sent,
                    }
                };
                let server_stmt = exec.and_then(|e| e.server);
                relay_response(
                    &mut self.client,
                    conn,
                    kind,
                    seq,
                    super::relay::ClientAllows {
                        local_files,
                        session_track: self.capabilities & cap::CLIENT_SESSION_TRACK != 0,
                        out_parameters: self.capabilities & cap::CLIENT_PS_MULTI_RESULTS != 0
                            || !exec.is_some_and(|e| e.write),
                    },
                    meta,
                    server_stmt,
                )
                .await
            }
        };
        drop(outstanding);
        match result {
            Ok(outcome) => {
                // Column definitions kept beyond their budget (cached metadata): statements
                // are closed, least recently used first (COM_STMT_CLOSE has no answer).
                let c = self.held_mut(on);
                if let Some(c) = c.filter(|c| c.stmts.metadata_over_budget()) {
                    if let Err(e) = c.trim_metadata(0).await {
                        tracing::debug!(server = %c.server, error = %e, "closing statements");
                        self.drop_held(on);
                    }
                }
                Ok(Some(Relayed { outcome }))
            }
            // Nothing of the response reached the client (gone), or only whole packets did
            // (cut: an ERR ends the response, clients accept one in place of the next row):
            // a clean error, and the session goes on.
            Err(SessionError::BackendGone(detail)) => self.lost_in_flight(on, seq, &detail).await,
            Err(SessionError::BackendCut { detail, seq }) => {
                self.lost_in_flight(on, seq, &detail).await
            }
            Err(SessionError::BackendLost(detail)) => {
                // Inside a packet: the client holds part of one; clients accept an ERR at
                // any point and then see the connection close.
                self.drop_held(on);
                let _ = self.client.send_err(1, &errors::server_lost(&detail)).await;
                Err(SessionError::BackendLost(detail))
            }
            Err(SessionError::BackendProtocol(detail)) => {
                let name = self.conn(on).server.clone();
                self.drop_held(on);
                let e = errors::backend_protocol(&name, &detail);
                let _ = self.client.send_err(1, &e).await;
                Err(SessionError::BackendProtocol(detail))
            }
            Err(e) => {
                self.drop_held(on);
                Err(e)
            }
        }
    }

    /// The server connection broke while the client can still be told cleanly: drop it and
    /// answer 2013 with sequence id `seq`.
    async fn lost_in_flight(
        &mut self,
        on: Held,
        seq: u8,
        detail: &str,
    ) -> Result<Option<Relayed>, SessionError> {
        let name = self.conn(on).server.clone();
        self.drop_held(on);
        self.client
            .send_err(seq, &errors::lost_in_flight(&name, detail))
            .await?;
        Ok(None)
    }

    /// A connection of server `i` broke. If the server died, its idle connections are dead
    /// too: the pool closes those already closed, and looks again at each one returned before
    /// now when it is next leased.
    pub(super) fn server_broke(&self, i: usize) {
        if let Some(slot) = self.routing.slot(i) {
            let n = slot.pool.drop_closed_idle();
            if n > 0 {
                tracing::debug!(server = %slot.pool.name, closed = n, "closed idle connections the server had closed");
            }
        }
    }

    /// Closes a held connection that broke (its pool slot frees when it is dropped).
    pub(super) fn drop_held(&mut self, on: Held) {
        let dropped = match on {
            Held::Primary => self.primary.take(),
            Held::Replica => self.replica.take(),
        };
        if let Some(l) = &dropped {
            self.info.held.fetch_sub(1, Ordering::Relaxed);
            self.server_broke(l.server);
        }
        match on {
            Held::Primary => self.lost_primary("the connection broke".into()),
            Held::Replica => {
                if self.txn_on_replica {
                    self.txn_on_replica = false;
                    self.st.status &= !SERVER_STATUS_IN_TRANS;
                }
            }
        }
        self.st.hold = None;
    }

    /// Gives back or closes every held connection (COM_CHANGE_USER, the end).
    async fn drop_all_held(&mut self) {
        let clean = self.idle_state_clean();
        for mut l in [self.primary.take(), self.replica.take()]
            .into_iter()
            .flatten()
        {
            self.info.held.fetch_sub(1, Ordering::Relaxed);
            if self.st.lii_dirty && self.st.lii_conn == Some(l.conn.id) {
                // The session's statements may have changed its LAST_INSERT_ID(), unread:
                // the next session that reads it there sets it first.
                l.conn.insert_id_seen = crate::backend::INSERT_ID_UNKNOWN;
            }
            if clean && !l.conn.has_unread() {
                if let Some(slot) = self.routing.slot(l.server) {
                    slot.pool.release(l.conn);
                    continue;
                }
            }
            l.conn.quit().await;
        }
        self.txn_on_replica = false;
    }

    /// Whether the held connections carry nothing another session must not see.
    fn idle_state_clean(&self) -> bool {
        self.idle && self.st.pins == 0 && !self.st.in_transaction()
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
        let ip = self.client.peer.ip();
        let found = self
            .shared
            .find_user(&self.routing.config, &cu.username, ip)
            .await;
        let (mut user, refusal) = handshake::found_user(found, &cu.username);
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
        let verified = user.as_mut().is_some_and(|u| {
            handshake::verify_user(u, plugin, &self.salt, &token)
                && super::firewall::user_admits(u, ip)
        });
        if let (true, Some(e)) = (verified, &refusal) {
            let _ = self.client.send_err(seq, e).await;
            return Err(SessionError::AccountRefused(
                String::from_utf8_lossy(&cu.username).into_owned(),
                String::from_utf8_lossy(&e.message).into_owned(),
            ));
        }
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
        tracing::debug!(from = %self.user.name, to = %user.name, "change user");
        // The server-side session ends: connections with state no one else may see are closed.
        self.drop_all_held().await;
        self.user = user;
        if let Some(cs) = cu.charset {
            self.login.charset = cs as u8;
        }
        self.st
            .reset((!cu.database.is_empty()).then(|| cu.database.clone()));
        self.publish_state();
        self.login_primary(seq).await.map(|_| ())
    }

    /// Counts a command answered on `server` (`None` = the primary) and its latency.
    pub(super) fn count(
        &self,
        server: Option<usize>,
        class: StatementClass,
        took: std::time::Duration,
    ) {
        let route = usize::from(server.is_some());
        self.shared.counters.queries[route][class.index()].fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.query_seconds.observe(route, took);
        let at = server.unwrap_or_else(|| self.primary.as_ref().map_or(usize::MAX, |p| p.server));
        self.info.last_server.store(at, Ordering::Relaxed);
        if let Some(slot) = self.routing.slot(at) {
            slot.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn close(&mut self) -> Result<(), SessionError> {
        // The held connections are returned to their pools (or closed) by `finish`.
        let _ = self.client.stream.shutdown().await;
        Ok(())
    }

    /// Ends the session: connections in a known state go back to their pools; the others
    /// are closed.
    async fn finish(&mut self, orderly: bool) {
        if !orderly {
            self.idle = false;
        }
        self.st.hold = None;
        self.drop_all_held().await;
    }
}

/// Server variables whose tracked changes are followed (the ones MariaDB tracks by default,
/// `session_track_system_variables`, and others an operator may add).
const LEARNED_VARIABLES: &[&[u8]] = &[
    b"autocommit",
    b"character_set_client",
    b"character_set_connection",
    b"character_set_results",
    b"collation_connection",
    b"time_zone",
    b"sql_mode",
    b"tx_isolation",
    b"transaction_isolation",
    b"tx_read_only",
    b"transaction_read_only",
    b"sql_auto_is_null",
    b"max_statement_time",
    b"wait_timeout",
];

/// Adds what an OK packet's session-state block reports (a new default database, tracked
/// system variables) to a statement's effect on the session.
fn learn_session_state(ok: &[u8], caps: u64, a: &mut super::session_state::Applied) {
    use sluice_proto::ok::{session_track, OkPacket};
    let Ok(ok) = OkPacket::parse(ok, caps) else {
        return;
    };
    for (kind, data) in ok.session_state_entries().filter_map(Result::ok) {
        let mut r = sluice_proto::lenenc::Reader::new(data);
        match kind {
            session_track::SCHEMA => {
                if let Ok(db) = r.lenenc_bytes("schema") {
                    a.db = Some(db.to_vec());
                }
            }
            session_track::SYSTEM_VARIABLES => {
                let (Ok(name), Ok(value)) = (r.lenenc_bytes("name"), r.lenenc_bytes("value"))
                else {
                    continue;
                };
                let name = name.to_ascii_lowercase();
                if !LEARNED_VARIABLES.contains(&name.as_slice()) {
                    continue;
                }
                let mut assignment = name.clone();
                assignment.extend_from_slice(b" = '");
                for &b in value {
                    if b == b'\'' || b == b'\\' {
                        assignment.push(b'\\');
                    }
                    assignment.push(b);
                }
                assignment.push(b'\'');
                a.sets.push((name, assignment));
            }
            _ => {}
        }
    }
}

/// The text of a command for pin records: normalized, bounded. For a query, its SQL; for
/// another command, its name.
pub(super) fn statement_text(payload: &[u8]) -> String {
    let mut t = match payload.first() {
        Some(&command::COM_QUERY) | Some(&command::COM_STMT_PREPARE) => {
            crate::router::lexer::normalize(&payload[1..])
        }
        Some(&c) => format!("(command 0x{c:02x})"),
        None => String::new(),
    };
    if t.len() > 200 {
        let mut cut = 200;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

/// Resolves when a held connection breaks; never when there is none.
async fn watch(conn: Option<&mut BackendConn>) -> String {
    match conn {
        Some(c) => c.idle_event().await,
        None => std::future::pending().await,
    }
}

/// The seconds of a `wait_timeout = N` assignment (`None` for DEFAULT, an expression or
/// anything but a plain number: the configured limit applies).
fn wait_timeout_secs(assignment: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(assignment).ok()?;
    let value = text.rsplit('=').next()?.trim().trim_end_matches(';').trim();
    let n: u64 = value.parse().ok()?;
    // The server's range is 1 … 31536000; 0 is raised to 1.
    Some(n.clamp(1, 31_536_000))
}

/// How long a client must have been quiet before a draining session closes it.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// The same before the client's first command after its login.
const FIRST_COMMAND_QUIET: Duration = Duration::from_secs(2);

async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
