//! What the whole process shares, in one place: the configuration snapshot with its server
//! slots (pools and counters), the routing settings and rules in force, the cluster view, the
//! counters, the session registry, the metrics handles, the query digest, the pin log and the
//! firewall's state. Sessions, the admin port, the metrics endpoint and reloads all read it
//! from here; none of them imports another's module for it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::{PoolLimits, ServerPool};
use crate::cluster::ClusterRx;
use crate::config::Config;
use crate::frontend::{firewall, handshake, registry};
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
    pub sessions: registry::Registry,
    /// Prometheus handles (histograms used on the hot path, the rest filled at scrape).
    pub metrics: crate::metrics::Metrics,
    /// Per-statement statistics (`SHOW QUERY DIGEST`).
    pub digests: crate::metrics::digest::Digests,
    /// Statements that pinned sessions (`SHOW PINS`).
    pub pin_log: crate::metrics::pins::PinLog,
    /// Per-source and per-user connection state (`[firewall]`).
    pub firewall: firewall::Firewall,
    /// Accounts read from the database (`[auth] source`).
    pub accounts: crate::accounts::Accounts,
    /// Users who passed caching_sha2_password's full authentication (MySQL's cache).
    pub sha2_cache: Sha2Cache,
    pub(crate) next_id: AtomicU32,
}

/// One configured server's pool and counters. Server indices never change while Sluice runs:
/// a server added by a reload gets the next index, a removed one keeps its index with its pool
/// retired (`ServerConfig::removed`), so an index in a cluster view always means the same
/// server.
pub struct ServerSlot {
    pub pool: ServerPool,
    /// Statements in flight (for least-outstanding replica choice).
    pub outstanding: AtomicU32,
    /// Commands answered (counted per thread: src/lanes.rs).
    pub queries: crate::lanes::LaneCounter,
}

impl ServerSlot {
    pub fn new(server: &crate::config::ServerConfig, limits: PoolLimits) -> Self {
        ServerSlot {
            pool: ServerPool::new(&server.name, &server.address, limits),
            outstanding: AtomicU32::new(0),
            queries: Default::default(),
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
        max_lifetime: std::time::Duration::from_millis(p.pool_max_lifetime_ms),
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
    pub replica_reads: crate::lanes::LaneCounter,
    pub primary_reads: crate::lanes::LaneCounter,
    /// Reads sent to the primary because no replica had applied the session's last write
    /// within `[routing] read_your_writes_timeout_ms`.
    pub ryw_fallbacks: AtomicU64,
    /// Client connections accepted (and counted against the limit).
    pub connections_total: AtomicU64,
    /// Commands answered, by route (0 primary, 1 replica) and statement class.
    pub queries: [[crate::lanes::LaneCounter; crate::router::StatementClass::COUNT]; 2],
    /// Sessions closed by `KILL SESSION`.
    pub sessions_killed: AtomicU64,
    /// Client commands that carried MySQL query attributes.
    pub query_attributes: AtomicU64,
}

/// What sessions read, as one snapshot: the configuration (its `servers` include removed ones,
/// flagged, so that indices stay stable), one slot per server, the pool bounds, the
/// `[routing]` settings and the compiled rules with their hit counters.
pub struct RoutingState {
    pub config: Arc<Config>,
    /// `[firewall] allow` / `deny`, parsed.
    pub addresses: firewall::AddressLists,
    /// How clients authenticate: TLS from `[proxy.tls]` (certificates read at start and at
    /// each reload), users' address lists.
    pub auth: handshake::AuthOptions,
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
            auth: handshake::AuthOptions {
                check_address: true,
                compression: config.proxy.compression,
                query_attributes: config.proxy.query_attributes,
                require_tls: config.proxy.tls.as_ref().is_some_and(|t| t.require),
                tls,
                greeting_plugin: handshake::AuthPlugin::from_name(
                    config.proxy.default_auth_plugin.as_bytes(),
                )
                .unwrap_or_default(),
                // Read and checked when the file was loaded; a key that went away since is
                // logged and the fast path stays.
                rsa: config.rsa_key().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "[proxy] rsa_private_key not applied");
                    None
                }),
            },
            max_lag_ms: config.routing.max_lag_ms,
            read_your_writes: config.routing.read_your_writes,
            read_your_writes_timeout_ms: config.routing.read_your_writes_timeout_ms,
            rule_hits: rules.iter().map(|_| AtomicU64::new(0)).collect(),
            pool_limits: pool_limits(&config),
            addresses: firewall::AddressLists::new(&config.firewall),
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
            accounts: Default::default(),
            sha2_cache: Default::default(),
            next_id: AtomicU32::new(1),
        }
    }
}

/// The users (name and a digest of the password) that passed caching_sha2_password's full
/// authentication since start: their next logins use the fast path, as with MySQL's cache. A
/// changed password is a new entry. Bounded by `[[users]]` (only config users have one).
#[derive(Default)]
pub struct Sha2Cache(std::sync::Mutex<std::collections::HashSet<(String, [u8; 32])>>);

impl Sha2Cache {
    fn key(user: &crate::config::UserConfig) -> (String, [u8; 32]) {
        (
            user.name.clone(),
            sluice_proto::scramble::sha2_cache_digest(user.password.as_bytes()),
        )
    }

    pub fn contains(&self, user: &crate::config::UserConfig) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(&Self::key(user)))
    }

    pub fn insert(&self, user: &crate::config::UserConfig) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(Self::key(user));
        }
    }
}

impl Shared {
    /// Where to read the accounts from now (the primary, with the monitor login); `None`
    /// without a known primary or monitor login.
    pub fn account_source(&self) -> Option<crate::accounts::LoadSource> {
        let routing = self.routing();
        let config = &routing.config;
        let (user, password) = config.monitor.credentials(&config.users)?;
        let address = self.cluster.borrow().primary()?.address.clone();
        let tls = crate::tls::backend_tls(config)
            .ok()
            .flatten()
            .and_then(|t| {
                let server = config.servers.iter().find(|s| s.address == address)?;
                crate::tls::for_server(Some(&t), server)
            });
        Some(crate::accounts::LoadSource {
            tls,
            address,
            user: user.to_string(),
            password: password.to_string(),
            timeout: std::time::Duration::from_millis(config.proxy.connect_timeout_ms.max(1000)),
        })
    }

    /// The user `name` logs in as from `ip`, by `[auth] source`: `[[users]]`, then the
    /// database's accounts (read again, within `lookup_interval_ms`, for a name not found).
    pub async fn find_user(
        &self,
        config: &crate::config::Config,
        name: &[u8],
        ip: std::net::IpAddr,
    ) -> crate::accounts::Found {
        use crate::accounts::Found;
        if config.auth.source.uses_config() {
            if let Some(u) = config.find_user(name) {
                return Found::User(u.clone());
            }
        }
        if !config.auth.source.uses_database() {
            return Found::Unknown;
        }
        match self.accounts.find(name, ip) {
            Found::Unknown => {}
            found => return found,
        }
        let interval = std::time::Duration::from_millis(config.auth.lookup_interval_ms);
        match self.account_source() {
            Some(src) => self.accounts.load_if_older(&src, interval).await,
            None => self
                .accounts
                .unavailable("no primary is known (or no monitor login)", interval),
        }
        self.accounts.find(name, ip)
    }
}

/// Reads the database's accounts every `[auth] refresh_ms` while `[auth] source` uses them
/// (and at once when the primary changes). Runs until shutdown.
pub async fn refresh_accounts(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut cluster = shared.cluster.clone();
    let mut last_primary: Option<String> = None;
    loop {
        let routing = shared.routing();
        let every = std::time::Duration::from_millis(routing.config.auth.refresh_ms.max(100));
        let primary = cluster.borrow().primary().map(|p| p.address.clone());
        if routing.config.auth.source.uses_database() && primary.is_some() {
            if let Some(src) = shared.account_source() {
                match shared.accounts.load(&src).await {
                    Ok(n) if last_primary != primary => {
                        tracing::info!(accounts = n, from = %src.address, "accounts read from the database");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the accounts; the last ones read stay in force")
                    }
                }
                last_primary = primary;
            }
        }
        // Until the next refresh, or a new primary (views change every monitor round).
        let deadline = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                r = cluster.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let now = cluster.borrow().primary().map(|p| p.address.clone());
            if now.is_some() && now != last_primary {
                break;
            }
        }
    }
}

/// Cuts every connection to a server the monitor deposed as primary (a failover away from
/// it): a statement blocked on a hung primary gets an error now (CR_SERVER_LOST: it may or
/// may not have been applied) instead of an OK when the server wakes up, possibly after its
/// replacement took writes. Runs until shutdown.
pub async fn cut_deposed(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut rx = shared.cluster.clone();
    let mut seen: Vec<u64> = rx.borrow().servers.iter().map(|s| s.deposed).collect();
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let view = rx.borrow_and_update().clone();
        let routing = shared.routing();
        for (i, s) in view.servers.iter().enumerate() {
            if s.deposed > seen.get(i).copied().unwrap_or(0) {
                if let Some(slot) = routing.slot(i) {
                    let n = slot.pool.cut_all();
                    tracing::warn!(server = %s.name, connections = n, "primary deposed: every connection to it was cut");
                }
            }
        }
        seen = view.servers.iter().map(|s| s.deposed).collect();
    }
}

/// Keeps `[proxy] pool_min_idle` warm connections per server (logged in as the first
/// `[[users]]` entry, with the common client capabilities), checking once a second until
/// shutdown. Removed servers are skipped; a server that refuses is retried at the next round.
pub async fn keep_pools_warm(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    loops: Option<Arc<crate::loops::SessionLoops>>,
) {
    let mut ticker = Ticker::new(std::time::Duration::from_secs(1), shutdown);
    while ticker.next().await {
        match &loops {
            None => warm_once(&shared, 1).await,
            // Opened on each session loop (a connection belongs to the loop that opened it).
            Some(l) => {
                let n = l.len();
                let tasks: Vec<_> = l
                    .handles()
                    .iter()
                    .map(|h| {
                        let shared = shared.clone();
                        h.spawn(async move { warm_once(&shared, n).await })
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
    }
}

/// Tops up every pool's idle connections of this thread's session loop to `pool_min_idle`
/// spread over `loops` loops (rounded up).
async fn warm_once(shared: &Shared, loops: usize) {
    let routing = shared.routing();
    let min = (routing.config.proxy.pool_min_idle as usize).div_ceil(loops.max(1));
    let Some(user) = routing.config.users.first() else {
        return;
    };
    if min == 0 {
        return;
    }
    for (slot, server) in routing.slots.iter().zip(&routing.config.servers) {
        if server.removed {
            continue;
        }
        let p = crate::backend::LoginParams {
            user: user.name.as_bytes(),
            secret: user.secret(),
            database: None,
            capabilities: WARM_CAPABILITIES,
            charset: 45,
            max_packet: 1 << 24,
            connect_attrs: None,
        };
        slot.pool.fill_idle(p, &routing.pool_limits, min).await;
    }
}

/// The capabilities warm connections are opened with: what common drivers (libmariadb,
/// libmysqlclient, mysql_async) ask for; a session whose client asked for other capabilities
/// does not use them (pools are partitioned by capabilities). Metadata caching: libmariadb
/// and mysql_async ask for it (a server that does not offer it leaves it out).
const WARM_CAPABILITIES: u64 = {
    use sluice_proto::flags::cap;
    cap::MARIADB_CLIENT_CACHE_METADATA
        | cap::CLIENT_LONG_PASSWORD
        | cap::CLIENT_PROTOCOL_41
        | cap::CLIENT_TRANSACTIONS
        | cap::CLIENT_SECURE_CONNECTION
        | cap::CLIENT_LOCAL_FILES
        | cap::CLIENT_MULTI_STATEMENTS
        | cap::CLIENT_MULTI_RESULTS
        | cap::CLIENT_PS_MULTI_RESULTS
        | cap::CLIENT_DEPRECATE_EOF
        | cap::CLIENT_PLUGIN_AUTH
};

/// A periodic background job's clock: [`Ticker::next`] waits for the next tick (the first one
/// at once; a late tick delays the following ones instead of bunching them) and answers
/// `false` once shutdown has been signalled, so a job is `while ticker.next().await { … }`.
pub struct Ticker {
    tick: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

impl Ticker {
    pub fn new(period: std::time::Duration, shutdown: watch::Receiver<bool>) -> Ticker {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { tick, shutdown }
    }

    /// `true` at the next tick, `false` at shutdown (also when it was signalled before).
    pub async fn next(&mut self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = self.tick.tick() => {}
            r = self.shutdown.changed() => {
                // The sender gone counts as shutdown, like a signalled one.
                if r.is_err() {
                    return false;
                }
            }
        }
        !*self.shutdown.borrow()
    }
}

#[cfg(test)]
mod ticker_tests {
    use super::Ticker;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn ticks_until_shutdown_then_stops() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut t = Ticker::new(Duration::from_secs(10), rx);
        let start = tokio::time::Instant::now();
        assert!(t.next().await, "the first tick is at once");
        assert!(t.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        tx.send(true).unwrap();
        assert!(!t.next().await);
        assert!(!t.next().await, "stays stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_while_waiting_ends_the_wait() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut t = Ticker::new(Duration::from_secs(3600), rx);
        assert!(t.next().await);
        let waiting = tokio::spawn(async move { t.next().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        assert!(!waiting.await.unwrap());
    }
}
