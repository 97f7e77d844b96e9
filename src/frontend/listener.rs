//! The client listener: accepts connections, gives each a session task with its own tracing
//! span, and on shutdown stops accepting and lets sessions finish their current command.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use sluice_proto::framing;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::client::ClientConn;
use super::session;
use crate::backend::{PoolLimits, ServerPool};
use crate::cluster::ClusterRx;
use crate::config::Config;
use crate::errors;
use crate::router::rules::Rule;

/// What every session shares: the configuration and servers in force (replaced whole by a
/// reload), the cluster view, the shutdown signal, counters.
pub struct Shared {
    pub cluster: ClusterRx,
    pub shutdown: watch::Receiver<bool>,
    pub counters: Counters,
    /// Rotates among equally loaded replicas.
    pub turn: AtomicUsize,
    /// Client sessions open now.
    pub clients: AtomicUsize,
    /// The configuration, servers and rules in force, replaced whole by a reload; sessions pick
    /// up a new one at their next command (they compare `routing_gen`, one atomic load).
    routing: std::sync::RwLock<Arc<RoutingState>>,
    pub routing_gen: AtomicU64,
    /// Config reloads that were applied / refused.
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Open sessions, for the admin port.
    pub sessions: super::registry::Registry,
    /// Prometheus handles (histograms used on the hot path, the rest filled at scrape).
    pub metrics: crate::metrics::Metrics,
    /// Per-statement statistics (`SHOW QUERY DIGEST`).
    pub digests: crate::metrics::digest::Digests,
    /// Statements that pinned sessions (`SHOW PINS`).
    pub pin_log: crate::metrics::pins::PinLog,
    /// Per-source and per-user connection state (`[firewall]`).
    pub firewall: super::firewall::Firewall,
    next_id: AtomicU32,
}

/// One configured server's pool and counters. Server indices never change while Sluice runs:
/// a server added by a reload gets the next index, a removed one keeps its index with its pool
/// retired (`ServerConfig::removed`), so an index in a cluster view always means the same
/// server.
pub struct ServerSlot {
    pub pool: ServerPool,
    /// Statements in flight (for least-outstanding replica choice).
    pub outstanding: AtomicU32,
    /// Commands answered.
    pub queries: AtomicU64,
}

impl ServerSlot {
    pub fn new(server: &crate::config::ServerConfig, limits: PoolLimits) -> Self {
        ServerSlot {
            pool: ServerPool::new(&server.name, &server.address, limits),
            outstanding: AtomicU32::new(0),
            queries: AtomicU64::new(0),
        }
    }
}

/// The pool bounds `[proxy]` sets.
pub fn pool_limits(config: &Config) -> PoolLimits {
    let p = &config.proxy;
    PoolLimits {
        max_connections: p.max_backend_connections as usize,
        max_idle: p.pool_max_idle as usize,
        wait: std::time::Duration::from_millis(p.pool_wait_ms),
        connect_timeout: std::time::Duration::from_millis(p.connect_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(p.pool_idle_timeout_ms),
    }
}

/// Process-wide counters (served by the metrics endpoint once it exists).
#[derive(Default)]
pub struct Counters {
    /// Clients refused because `[proxy] max_client_connections` were open.
    pub rejected_too_many: AtomicU64,
    /// Sessions closed after `[proxy] client_idle_timeout_ms` without a command.
    pub idle_timeouts: AtomicU64,
    /// Sluice hints that could not be understood (and were ignored).
    pub invalid_hints: AtomicU64,
    /// Sessions pinned to the primary, by reason (indexed like `PinReason::ALL`).
    pub pins: [AtomicU64; crate::router::PinReason::COUNT],
    /// Reads sent to a replica / kept on the primary.
    pub replica_reads: AtomicU64,
    pub primary_reads: AtomicU64,
    /// Reads sent to the primary because no replica had applied the session's last write
    /// within `[routing] read_your_writes_timeout_ms`.
    pub ryw_fallbacks: AtomicU64,
    /// Client connections accepted (and counted against the limit).
    pub connections_total: AtomicU64,
    /// Commands answered, by route (0 primary, 1 replica) and statement class.
    pub queries: [[AtomicU64; crate::router::StatementClass::COUNT]; 2],
    /// Sessions closed by `KILL SESSION`.
    pub sessions_killed: AtomicU64,
}

/// What sessions read, as one snapshot: the configuration (its `servers` include removed ones,
/// flagged, so that indices stay stable), one slot per server, the pool bounds, the
/// `[routing]` settings and the compiled rules with their hit counters.
pub struct RoutingState {
    pub config: Arc<Config>,
    /// `[firewall] allow` / `deny`, parsed.
    pub addresses: super::firewall::AddressLists,
    /// How clients authenticate: TLS from `[proxy.tls]` (certificates read at start and at
    /// each reload), users' address lists.
    pub auth: super::handshake::AuthOptions,
    pub slots: Vec<Arc<ServerSlot>>,
    pub pool_limits: PoolLimits,
    pub max_lag_ms: u64,
    pub read_your_writes: crate::config::ReadYourWrites,
    pub read_your_writes_timeout_ms: u64,
    pub rules: Vec<Rule>,
    pub rule_hits: Vec<AtomicU64>,
    pub generation: u64,
}

impl RoutingState {
    pub fn new(
        config: Arc<Config>,
        slots: Vec<Arc<ServerSlot>>,
        rules: Vec<Rule>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        generation: u64,
    ) -> Self {
        RoutingState {
            auth: super::handshake::AuthOptions {
                check_address: true,
                require_tls: config.proxy.tls.as_ref().is_some_and(|t| t.require),
                tls,
                greeting_plugin: super::handshake::AuthPlugin::from_name(
                    config.proxy.default_auth_plugin.as_bytes(),
                )
                .unwrap_or_default(),
            },
            max_lag_ms: config.routing.max_lag_ms,
            read_your_writes: config.routing.read_your_writes,
            read_your_writes_timeout_ms: config.routing.read_your_writes_timeout_ms,
            rule_hits: rules.iter().map(|_| AtomicU64::new(0)).collect(),
            pool_limits: pool_limits(&config),
            addresses: super::firewall::AddressLists::new(&config.firewall),
            rules,
            slots,
            config,
            generation,
        }
    }

    /// The slot of server `i` (`None` for an index this snapshot does not know yet).
    pub fn slot(&self, i: usize) -> Option<&ServerSlot> {
        self.slots.get(i).map(|s| &**s)
    }

    /// A server's configured name.
    pub fn server_name(&self, i: usize) -> &str {
        self.config.servers.get(i).map_or("?", |s| s.name.as_str())
    }
}

impl Shared {
    /// The snapshot in force.
    pub fn routing(&self) -> Arc<RoutingState> {
        match self.routing.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.routing().config.clone()
    }

    /// Replaces the snapshot (a reload); sessions switch at their next command.
    pub fn set_routing(
        &self,
        config: Arc<Config>,
        slots: Vec<Arc<ServerSlot>>,
        rules: Vec<Rule>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> u64 {
        let gen = self.routing_gen.load(Ordering::Relaxed) + 1;
        let state = Arc::new(RoutingState::new(config, slots, rules, tls, gen));
        match self.routing.write() {
            Ok(mut w) => *w = state,
            Err(p) => *p.into_inner() = state,
        }
        self.routing_gen.store(gen, Ordering::Release);
        gen
    }

    pub fn new(
        config: Arc<Config>,
        rules: Vec<Rule>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        cluster: ClusterRx,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let limits = pool_limits(&config);
        let slots = config
            .servers
            .iter()
            .map(|s| Arc::new(ServerSlot::new(s, limits)))
            .collect();
        let digests = crate::metrics::digest::Digests::new(
            config.admin.query_digest,
            config.admin.query_digest_max_entries,
        );
        Shared {
            routing: std::sync::RwLock::new(Arc::new(RoutingState::new(
                config, slots, rules, tls, 0,
            ))),
            routing_gen: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            reload_lock: tokio::sync::Mutex::new(()),
            cluster,
            shutdown,
            counters: Counters::default(),
            turn: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            sessions: Default::default(),
            metrics: crate::metrics::Metrics::new(),
            digests,
            pin_log: Default::default(),
            firewall: Default::default(),
            next_id: AtomicU32::new(1),
        }
    }
}

/// Sends an ERR in place of the greeting and closes (in the background, bounded).
fn refuse(stream: tokio::net::TcpStream, err: sluice_proto::err::ErrPacket) {
    tokio::spawn(async move {
        let mut out = bytes::BytesMut::new();
        framing::write_packet(&mut out, 0, &err.encode_pre_handshake());
        let mut stream = stream;
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
    });
}

fn shared_abort(shared: &Shared, id: u32, h: tokio::task::AbortHandle) {
    shared.sessions.set_abort(id, h);
}

/// Accepts clients until shutdown. Each session holds a clone of `done`; the caller knows all
/// sessions ended when every clone is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, done: mpsc::Sender<()>) {
    let mut shutdown = shared.shutdown.clone();
    let shared_for_abort = shared.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        if *shutdown.borrow() {
            break;
        }
        let _ = stream.set_nodelay(true);
        // Over the limit: refused before the handshake, as MySQL does (error 1040 in place of
        // the greeting), with nothing allocated for the session.
        let routing = shared.routing();
        let config = &routing.config;
        let limit = config.proxy.max_client_connections as usize;
        let max_packet = config.proxy.max_packet_bytes as usize;
        // The firewall answers before a greeting is sent (as MySQL does for a host it does
        // not accept), and nothing is allocated for a session.
        if let Err(r) = shared
            .firewall
            .admit(peer.ip(), &config.firewall, &routing.addresses)
        {
            let ip = super::firewall::canonical(peer.ip()).to_string();
            let err = match r {
                super::firewall::Refusal::Address => errors::host_not_allowed(&ip),
                super::firewall::Refusal::Blocked { remaining_s } => {
                    errors::host_blocked(&ip, remaining_s)
                }
                super::firewall::Refusal::Rate { per_s } => errors::connection_rate(&ip, per_s),
            };
            tracing::info!(client = %peer, reason = super::firewall::Refusal::REASONS[r.index()], "connection refused by the firewall");
            refuse(stream, err);
            continue;
        }
        if shared.clients.load(Ordering::Relaxed) >= limit {
            shared
                .counters
                .rejected_too_many
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, limit, "too many client connections");
            refuse(stream, errors::too_many_connections());
            continue;
        }
        shared.clients.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(super::registry::SessionInfo::new(id, peer));
        shared.sessions.insert(info.clone());
        // Removes the session from the registry and the count when the task ends or is
        // aborted (KILL SESSION).
        let guard = super::registry::SessionGuard {
            shared: shared.clone(),
            id,
        };
        let shared = shared.clone();
        let done = done.clone();
        let span = tracing::info_span!("session", id, client = %peer, user = tracing::field::Empty);
        let task = tokio::spawn(
            async move {
                let _guard = guard;
                let mut client = ClientConn::new(stream, peer, max_packet);
                client.errors = Some(shared.metrics.errors.clone());
                match session::run(shared, client, id, info).await {
                    Ok(()) => tracing::debug!("session ended"),
                    Err(e) if e.is_normal() => tracing::debug!("session ended: {e}"),
                    Err(e) => tracing::info!("session ended: {e}"),
                }
                drop(done);
            }
            .instrument(span),
        );
        shared_abort(&shared_for_abort, id, task.abort_handle());
    }
    tracing::info!("listener closed");
}
