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
}

/// Where a replica's lag figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagSource {
    /// Not measured (primary, unreachable, or replication stopped).
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

/// A published snapshot of the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub servers: Vec<ServerState>,
    /// Index into `servers` of the one writable server, when exactly one is.
    pub primary: Option<usize>,
    /// The handshake of the current primary, once a login to it succeeded.
    pub primary_hello: Option<ServerHello>,
}

impl ClusterView {
    pub fn primary(&self) -> Option<&ServerState> {
        self.primary.map(|i| &self.servers[i])
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
            })
            .collect(),
        primary: None,
        primary_hello: None,
    };
    watch::channel(Arc::new(view))
}
