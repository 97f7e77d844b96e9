//! The shared view of the servers: each one's role and health, and what the primary's
//! handshake looked like. The monitor publishes a new immutable snapshot; sessions read the
//! latest one without holding any lock across an await.

use std::sync::Arc;

use tokio::sync::watch;

/// A server's role, as discovered (never configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `read_only = OFF`.
    Primary,
    /// `read_only = ON`.
    Replica,
    /// Not reachable, or not probed yet.
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// One server as the monitor last saw it.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub name: String,
    pub address: String,
    /// `[[servers]] weight`: share of reads (0 = none).
    pub weight: u32,
    pub role: Role,
    pub healthy: bool,
    pub version: Option<String>,
    pub last_error: Option<String>,
    /// Replication lag in milliseconds, for a replica; `None` = unknown or replication
    /// stopped, which counts as infinitely lagged.
    pub lag_ms: Option<u64>,
    /// How `lag_ms` was measured.
    pub lag_source: LagSource,
    /// `@@gtid_current_pos` (MariaDB) or `@@gtid_executed` (MySQL) at the last probe.
    pub gtid_pos: String,
    /// The failover generation this server has seen (`sluice.cluster`; 0 = none yet).
    pub generation: u64,
    /// Why the server is kept out of routing and promotion (diverged, fenced, …); `None` when
    /// it is usable.
    pub excluded: Option<String>,
    /// `host:port` it replicates from, when it is a replica.
    pub source: Option<String>,
    /// A replica that a failover or switchover pointed at the new primary and that does not
    /// follow it yet: why (the monitor keeps retrying).
    pub not_following: Option<String>,
    /// How many times the monitor deposed this server as primary (a failover away from it):
    /// each time, every connection Sluice has to it is cut, so that nothing it commits later
    /// is acknowledged through Sluice.
    pub deposed: u64,
}

/// Where a replica's lag figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagSource {
    /// Not measured (primary, unreachable, or replication stopped).
    #[default]
    None,
    /// Sluice's heartbeat row: now − the stamp the replica has applied.
    Heartbeat,
    /// `Seconds_Behind_Master` × 1000 (when the heartbeat cannot be written or read).
    SecondsBehindMaster,
}

impl ServerState {
    /// Whether this server may serve a read with the given lag budget.
    pub fn serves_reads_within(&self, max_lag_ms: u64) -> bool {
        self.healthy
            && self.excluded.is_none()
            && self.weight > 0
            && self.role == Role::Replica
            && self.lag_ms.is_some_and(|l| l <= max_lag_ms)
    }
}

/// What the primary's own handshake advertised; Sluice's greeting to clients mirrors it so that
/// drivers see the same server version and capabilities as on a direct connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub version: Vec<u8>,
    pub capabilities: u64,
    pub charset: u8,
}

/// What the monitor is doing about the primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MonitorState {
    /// Not probed yet.
    #[default]
    Starting,
    /// A primary is known and answers.
    Ok,
    /// No server is writable, or several are (see the log).
    NoPrimary,
    /// The primary misses probes but a replica still receives from it: Sluice's own path to it
    /// is broken, the primary is not dead. No failover.
    PrimaryUnreachableFromProxy,
    /// The primary is confirmed dead and failover is `manual` or `off`.
    PrimaryDead,
    /// A failover or switchover is running; writes wait (up to `failover_hold_ms`).
    Switching,
    /// The primary is dead but automatic failover is blocked (anti-flap) until this time
    /// (ms since the epoch), unless acknowledged.
    Blocked { until_ms: u64 },
    /// Failover was refused or failed; automatic failover is disabled until acknowledged.
    Failed { reason: String },
}

impl MonitorState {
    pub fn describe(&self) -> String {
        match self {
            MonitorState::Starting => "starting".into(),
            MonitorState::Ok => "ok".into(),
            MonitorState::NoPrimary => "no primary".into(),
            MonitorState::PrimaryUnreachableFromProxy => "primary unreachable from proxy".into(),
            MonitorState::PrimaryDead => "primary dead (failover not automatic)".into(),
            MonitorState::Switching => "failover in progress".into(),
            MonitorState::Blocked { until_ms } => {
                format!("primary dead; automatic failover blocked until {until_ms} (anti-flap)")
            }
            MonitorState::Failed { reason } => format!("failover disabled: {reason}"),
        }
    }
}

/// Semi-synchronous replication as the primary reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SemiSync {
    /// `rpl_semi_sync_master_enabled`.
    pub enabled: bool,
    /// `Rpl_semi_sync_master_status`: ON, not fallen back to asynchronous.
    pub active: bool,
    /// `Rpl_semi_sync_master_clients`: replicas acknowledging.
    pub clients: u32,
}

/// One failover or switchover this instance performed (or tried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRecord {
    /// `failover` or `switchover`.
    pub kind: &'static str,
    pub from: String,
    pub to: Option<String>,
    pub generation: u64,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// From the decision to the new primary being published.
    pub duration_ms: u64,
    pub ok: bool,
    pub detail: String,
}

/// A published snapshot of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub servers: Vec<ServerState>,
    /// Index into `servers` of the primary: the one writable server of the newest generation.
    pub primary: Option<usize>,
    /// The handshake of the current primary, once a login to it succeeded.
    pub primary_hello: Option<ServerHello>,
    /// The newest failover generation seen; writes go only to a primary of this generation.
    pub generation: u64,
    /// Writes wait: a switchover or failover is under way.
    pub hold: bool,
    pub state: MonitorState,
    /// Semi-synchronous replication on the primary, as last seen.
    pub semi_sync: SemiSync,
    /// The primary's `@@global.wait_timeout` and `interactive_timeout` (seconds): a client
    /// session's idle limit unless it sets its own, as on a direct connection.
    pub idle_timeouts: Option<(u64, u64)>,
    /// Monitor rounds in which the heartbeat could not be written on the primary (total).
    pub heartbeat_failures: u64,
    /// Failovers and switchovers this instance ran, oldest first.
    pub history: Arc<Vec<FailoverRecord>>,
    /// Records ever made by this instance (`history` keeps the last 100): metrics count new
    /// records from this, so they go on moving after the cap.
    pub history_total: u64,
}

impl ClusterView {
    pub fn primary(&self) -> Option<&ServerState> {
        self.primary.map(|i| &self.servers[i])
    }

    /// The primary, when new work may be sent to it (no switch under way).
    pub fn writable_primary(&self) -> Option<usize> {
        self.primary.filter(|_| !self.hold)
    }
}

/// Receivers read the newest view; only the monitor sends.
pub type ClusterRx = watch::Receiver<Arc<ClusterView>>;
pub type ClusterTx = watch::Sender<Arc<ClusterView>>;

/// A channel holding an initial view with every server unknown.
pub fn channel(servers: &[crate::config::ServerConfig]) -> (ClusterTx, ClusterRx) {
    let view = ClusterView {
        servers: servers
            .iter()
            .map(|s| ServerState {
                name: s.name.clone(),
                address: s.address.clone(),
                weight: s.weight,
                role: Role::Unknown,
                healthy: false,
                version: None,
                last_error: None,
                lag_ms: None,
                lag_source: LagSource::None,
                gtid_pos: String::new(),
                generation: 0,
                excluded: None,
                source: None,
                not_following: None,
                deposed: 0,
            })
            .collect(),
        ..ClusterView::default()
    };
    watch::channel(Arc::new(view))
}
