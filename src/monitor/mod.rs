//! Watches the servers and keeps the cluster writable.
//!
//! Every `[monitor] interval_ms` all servers are probed at once (each probe bounded by
//! `timeout_ms`): `read_only`, GTID positions, replication status, semi-sync settings and
//! Sluice's generation row. Health flips only after `down_after` failed / `up_after`
//! successful probes in a row. The primary is the one writable server of the newest
//! generation; a writable server of an older generation (an old primary that came back) is
//! fenced with `read_only = ON` at once and never receives writes. Lag is measured with a
//! heartbeat ([`lag`]). When the primary is down *and* the replicas confirm that their link
//! to it broke, [`failover`] promotes the most advanced replica — only in the Sluice instance
//! that holds a lock on a majority of the servers. A new [`ClusterView`] is published on the
//! watch channel whenever anything changed; sessions never wait on the monitor.

pub mod error;
pub mod failover;
pub mod gtid;
pub mod lag;
pub mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{self, LoginParams};
use crate::cluster::{
    ClusterTx, ClusterView, FailoverRecord, LagSource, MonitorState, Role, ServerHello,
};
use crate::config::{Config, FailoverMode};
pub use error::MonitorError;
use probe::{Probe, ServerConn};

pub use lag::now_ms;

/// Semi-sync on the primary as the monitor last saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SemiSyncSeen {
    pub enabled: bool,
    /// Status ON, at least one acknowledging replica, and `Rpl_semi_sync_master_no_tx` did
    /// not move since the previous probe.
    pub active: bool,
    pub clients: u32,
    pub no_tx: u64,
    pub primary: Option<usize>,
}

/// Operator commands for a running monitor (the admin port and tests send them).
#[derive(Debug)]
pub enum Command {
    /// Lift the anti-flap block and re-enable automatic failover after a failure.
    Acknowledge,
    /// Planned switchover to the named replica.
    Switchover { to: String },
    /// Promote a replica now (the primary must be down); `None` = the best candidate.
    Failover { to: Option<String> },
    /// Take a replica out of service (no new reads, never promoted) or put it back.
    SetServer { name: String, online: bool },
    /// A reload: new `[monitor]` settings, credentials and server list (the same servers at
    /// the same indices, new ones appended, removed ones flagged).
    Reconfigure(Arc<Config>),
}

type Reply = oneshot::Sender<Result<String, String>>;

/// Sends commands to a running monitor.
#[derive(Clone)]
pub struct MonitorHandle {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl MonitorHandle {
    pub async fn send(&self, cmd: Command) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((cmd, tx))
            .await
            .map_err(|_| "the monitor has stopped".to_string())?;
        rx.await
            .map_err(|_| "the monitor has stopped".to_string())?
    }
}

/// What the monitor knows about one server.
#[derive(Default)]
pub(crate) struct Watched {
    pub(crate) sc: ServerConn,
    /// This round's probe (`None` = failed).
    pub(crate) probe: Option<Probe>,
    error: Option<String>,
    fails: u32,
    oks: u32,
    pub(crate) healthy: bool,
    seen: bool,
    /// The replica's IO thread was running while the primary was last reachable.
    pub(crate) io_ok: bool,
    io_bad: u32,
    /// The server had `rpl_semi_sync_slave_enabled` at its last successful probe.
    pub(crate) semi_slave: bool,
    /// The server came back after being down (cleared once looked at).
    returned: bool,
    /// Why the server is kept out of routing and promotion.
    pub(crate) excluded: Option<String>,
    rejoin_after: Option<Instant>,
    /// Taken out of service by an operator (`SET SERVER name OFFLINE`).
    pub(crate) offline: bool,
    lag: (Option<u64>, LagSource),
    /// What the replica's link to its source showed last (heartbeats received, GTID received,
    /// binlog read position) and when that last changed, as observed by the probes.
    link_sig: Option<(Option<u64>, String, String)>,
    link_changed: Option<Instant>,
    /// `rpl_semi_sync_slave_kill_conn_timeout` was set on this server (`manage_heartbeat_period`).
    link_managed: bool,
    /// Times a failover deposed this server as primary (every connection to it is cut).
    pub(crate) deposed: u64,
    /// A repoint to a new primary that has not held yet (retried every round).
    pub(crate) repoint: Option<Repoint>,
    /// A promoted server whose replication from its old source is not reset yet.
    pub(crate) detach_pending: bool,
}

/// A replica that must follow a new primary and does not yet.
#[derive(Debug, Clone)]
pub(crate) struct Repoint {
    pub to: usize,
    pub use_gtid: &'static str,
    pub since: Instant,
    pub attempts: u32,
    pub last_try: Instant,
    pub why: String,
    /// `started_ms` of the failover record whose detail gets the outcome.
    pub record_ms: u64,
}

/// A replica whose link shows nothing (no event, no heartbeat) for this many heartbeat
/// periods has lost its source.
pub const SILENT_PERIODS: u64 = 4;
/// Heartbeat periods above this are not used to judge a link (MariaDB's default is 30 s:
/// silence would take minutes to show).
pub const MAX_TRUSTED_PERIOD_MS: u64 = 2_000;

impl Watched {
    fn new(tls: Option<Arc<crate::tls::BackendTls>>) -> Watched {
        Watched {
            sc: ServerConn {
                tls,
                ..Default::default()
            },
            lag: (None, LagSource::None),
            ..Default::default()
        }
    }
}

/// The monitor's state. Also used without a running proxy by `sluice switchover` and
/// `sluice failover`.
pub struct Monitor {
    pub(crate) config: Arc<Config>,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) timeout: Duration,
    /// One entry per configured server (removed ones stay, flagged, so indices never move).
    pub(crate) srv: Vec<Watched>,
    pub(crate) generation: u64,
    /// The primary as last known (it may be down now).
    pub(crate) known_primary: Option<usize>,
    pub(crate) primary: Option<usize>,
    hold: bool,
    /// Semi-sync as last seen on the live primary.
    pub(crate) semi_sync: SemiSyncSeen,
    /// This instance's last automatic failover (ms), unless acknowledged.
    pub(crate) last_failover_ms: Option<u64>,
    /// Automatic failover is disabled after a failover was refused or failed midway.
    pub(crate) disabled: Option<String>,
    /// The generation when automatic failover was disabled.
    pub(crate) disabled_at: u64,
    pub(crate) history: Vec<FailoverRecord>,
    /// Records ever made (the history keeps the last 100).
    pub(crate) history_total: u64,
    pub(crate) state: MonitorState,
    heartbeat_failing: bool,
    heartbeat_failures: u64,
    conflict_logged: bool,
    /// The last reason an automatic failover attempt failed (logged when it changes).
    last_failover_error: Option<String>,
    hello: Option<(usize, ServerHello)>,
    tx: Option<ClusterTx>,
    /// `[backend_tls]`, for the probes and the login that reads the primary's handshake.
    backend_tls: Option<Arc<crate::tls::BackendTls>>,
}

impl Monitor {
    pub fn new(config: Arc<Config>, tx: Option<ClusterTx>) -> Monitor {
        let (user, password) = config
            .monitor
            .credentials(&config.users)
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .unwrap_or_default();
        // Validated when Sluice started (or reloaded): an error here cannot happen.
        let backend_tls = crate::tls::backend_tls(&config).ok().flatten();
        Monitor {
            timeout: Duration::from_millis(config.monitor.timeout_ms),
            user,
            password,
            srv: config
                .servers
                .iter()
                .map(|s| Watched::new(crate::tls::for_server(backend_tls.as_ref(), s)))
                .collect(),
            backend_tls,
            generation: 0,
            known_primary: None,
            primary: None,
            hold: false,
            semi_sync: SemiSyncSeen::default(),
            last_failover_ms: None,
            disabled: None,
            disabled_at: 0,
            history: Vec::new(),
            history_total: 0,
            state: MonitorState::Starting,
            heartbeat_failing: false,
            heartbeat_failures: 0,
            conflict_logged: false,
            last_failover_error: None,
            hello: None,
            tx,
            config,
        }
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.config.servers[i].name
    }

    /// Probes every server at once and updates health counters.
    pub(crate) async fn probe_all(&mut self) {
        self.probe_some(|_| true).await;
    }

    /// Probes the servers `which` selects, at once, and updates their health counters (the
    /// others keep what they had).
    pub(crate) async fn probe_some(&mut self, which: impl Fn(usize) -> bool) {
        let (user, password, timeout) = (&self.user, &self.password, self.timeout);
        let futs = self
            .srv
            .iter_mut()
            .zip(&self.config.servers)
            .enumerate()
            .filter(|(i, _)| which(*i))
            .map(|(i, (w, s))| async move {
                if s.removed {
                    return (i, Err(MonitorError::Refused(String::new())), Instant::now());
                }
                let r = w.sc.probe(&s.address, user, password, timeout).await;
                // When this server answered (another may take the whole timeout).
                (i, r, Instant::now())
            });
        let results = futures::future::join_all(futs).await;
        let m = &self.config.monitor;
        for (i, r, answered) in results {
            if self.config.servers[i].removed {
                self.srv[i].healthy = false;
                self.srv[i].probe = None;
                self.srv[i].error = None;
                continue;
            }
            match r {
                Ok(p) => {
                    self.srv[i].oks += 1;
                    self.srv[i].fails = 0;
                    if !self.srv[i].healthy && (!self.srv[i].seen || self.srv[i].oks >= m.up_after)
                    {
                        if self.srv[i].seen {
                            tracing::info!(server = %self.config.servers[i].name, "server is up again");
                            self.srv[i].returned = true;
                        }
                        self.srv[i].healthy = true;
                    }
                    self.srv[i].seen = true;
                    self.srv[i].error = None;
                    let w = &mut self.srv[i];
                    let sig = p.replication.as_ref().map(|r| {
                        (
                            r.heartbeats,
                            r.io_pos
                                .as_ref()
                                .map(|g| g.text.clone())
                                .unwrap_or_default(),
                            r.read_pos.clone(),
                        )
                    });
                    if sig.is_none() {
                        w.link_changed = None;
                    } else if w.link_sig != sig || w.link_changed.is_none() {
                        w.link_changed = Some(answered);
                    }
                    w.link_sig = sig;
                    self.srv[i].semi_slave = p.semi_sync_slave;
                    self.srv[i].probe = Some(p);
                }
                Err(e) => {
                    self.srv[i].fails += 1;
                    self.srv[i].oks = 0;
                    if self.srv[i].healthy && self.srv[i].fails >= m.down_after {
                        tracing::warn!(server = %self.config.servers[i].name, error = %e, failed_probes = self.srv[i].fails, "server is down");
                        self.srv[i].healthy = false;
                    } else if self.srv[i].error.is_none() {
                        tracing::debug!(server = %self.config.servers[i].name, error = %e, "probe failed");
                    }
                    if !self.srv[i].seen && self.srv[i].error.is_none() {
                        tracing::warn!(server = %self.config.servers[i].name, error = %e, "server probe failed");
                    }
                    self.srv[i].error = Some(e.to_string());
                    self.srv[i].probe = None;
                }
            }
        }
        let newest = self
            .srv
            .iter()
            .filter_map(|w| w.probe.as_ref())
            .map(Probe::generation)
            .max()
            .unwrap_or(0);
        self.generation = self.generation.max(newest);
    }

    /// How long (ms) replica `i`'s link has shown nothing — no event, no heartbeat, no byte of
    /// binlog — when that is at least [`SILENT_PERIODS`] heartbeat periods: its source is gone
    /// or hung although the IO thread may still say `Yes`. `None`: not silent, or no trusted
    /// heartbeat period to judge by.
    pub(crate) fn link_silent(&self, i: usize) -> Option<u64> {
        let w = &self.srv[i];
        let r = w.probe.as_ref()?.replication.as_ref()?;
        let period = r
            .heartbeat_period_ms
            .filter(|&p| p > 0 && p <= MAX_TRUSTED_PERIOD_MS)?;
        let silent = w.link_changed?.elapsed().as_millis() as u64;
        (silent >= SILENT_PERIODS * period).then_some(silent)
    }

    /// Whether replica `i`'s heartbeat period is short enough for silence to show.
    fn may_fall_silent(&self, i: usize) -> bool {
        self.srv[i]
            .probe
            .as_ref()
            .and_then(|p| p.replication.as_ref())
            .and_then(|r| r.heartbeat_period_ms)
            .is_some_and(|p| p > 0 && p <= MAX_TRUSTED_PERIOD_MS)
    }

    /// The primary `k` just failed a probe. Instead of waiting for `down_after` rounds, ask
    /// the replicas at once, and again every 50 ms for a short while: a refused connection
    /// shows on them within milliseconds (their IO threads see the reset), a hung or
    /// black-holed primary within [`SILENT_PERIODS`] heartbeat periods. When they confirm,
    /// the primary is down now; when one still receives (its link shows progress twice), it
    /// is alive and only Sluice's path to it failed. Bounded: at most
    /// `SILENT_PERIODS × replication_heartbeat_ms + 2 × interval_ms`, and never more than 3 s.
    async fn confirm_quickly(&mut self, k: usize) {
        let m = &self.config.monitor;
        let window = SILENT_PERIODS * m.replication_heartbeat_ms + 2 * m.interval_ms;
        let deadline = Instant::now() + Duration::from_millis(window.min(3_000));
        let step = Duration::from_millis(m.interval_ms.clamp(10, 50));
        let n = self.srv.len();
        let mut progress = vec![0u32; n];
        loop {
            match failover::assess(self, k) {
                failover::Assessment::Confirmed(by) => {
                    let why: Vec<String> = by
                        .iter()
                        .map(|&i| match self.link_silent(i) {
                            Some(ms) => {
                                format!("{}: no event or heartbeat for {ms} ms", self.name(i))
                            }
                            None => format!("{}: IO thread not running", self.name(i)),
                        })
                        .collect();
                    tracing::warn!(server = %self.name(k), error = ?self.srv[k].error, replicas = ?why, "primary is down: its probe failed and the replicas confirm");
                    self.srv[k].healthy = false;
                    return;
                }
                failover::Assessment::UnreachableFromProxy(receiving) => {
                    let alive = receiving
                        .iter()
                        .any(|&i| !self.may_fall_silent(i) || progress[i] >= 2);
                    if alive {
                        return;
                    }
                }
                failover::Assessment::Unconfirmed(_) => return,
            }
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(step).await;
            let before: Vec<_> = self.srv.iter().map(|w| w.link_sig.clone()).collect();
            let replicas: Vec<bool> = (0..n)
                .map(|i| i != k && self.srv[i].healthy && self.srv[i].io_ok)
                .collect();
            self.probe_some(|i| replicas[i]).await;
            for i in 0..n {
                if replicas[i]
                    && self.srv[i].link_sig.is_some()
                    && self.srv[i].link_sig != before[i]
                {
                    progress[i] += 1;
                }
            }
        }
    }

    /// With `manage_heartbeat_period`: replicas that follow the primary with another
    /// heartbeat period get `replication_heartbeat_ms` (and semi-sync replicas a short
    /// `rpl_semi_sync_slave_kill_conn_timeout`, so that stopping replication from a hung
    /// primary takes 1 s instead of 5). Only replicas whose both threads run are touched.
    async fn manage_links(&mut self, p: usize) {
        let m = &self.config.monitor;
        if !m.manage_heartbeat_period {
            return;
        }
        let want = m.replication_heartbeat_ms;
        let timeout = self.timeout;
        for i in 0..self.srv.len() {
            if i == p || !self.srv[i].healthy {
                continue;
            }
            let Some(r) = self.srv[i]
                .probe
                .as_ref()
                .filter(|x| x.read_only)
                .and_then(|x| x.replication.as_ref())
            else {
                continue;
            };
            if !(r.io_yes() && r.sql_running) {
                continue;
            }
            let period_ok = r.heartbeat_period_ms == Some(want);
            let semi = self.srv[i].semi_slave && !self.srv[i].link_managed;
            if period_ok && !semi {
                continue;
            }
            let flavor = self.srv[i].sc.flavor();
            let Some(c) = self.srv[i].sc.conn.as_mut() else {
                continue;
            };
            if semi && flavor == probe::Flavor::MariaDb {
                let _ = probe::run_sql(
                    c,
                    timeout,
                    &["SET GLOBAL rpl_semi_sync_slave_kill_conn_timeout = 1"],
                )
                .await;
            }
            if !period_ok {
                let secs = format!("{:.3}", want as f64 / 1000.0);
                let stmts = match flavor {
                    probe::Flavor::MariaDb => [
                        "STOP SLAVE".to_string(),
                        format!("CHANGE MASTER TO MASTER_HEARTBEAT_PERIOD = {secs}"),
                        "START SLAVE".to_string(),
                    ],
                    probe::Flavor::MySql => [
                        "STOP REPLICA".to_string(),
                        format!("CHANGE REPLICATION SOURCE TO SOURCE_HEARTBEAT_PERIOD = {secs}"),
                        "START REPLICA".to_string(),
                    ],
                };
                let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
                match probe::run_sql(c, timeout.max(Duration::from_secs(3)), &refs).await {
                    Ok(()) => {
                        tracing::info!(server = %self.name(i), period_ms = want, "replication heartbeat period set (manage_heartbeat_period)");
                    }
                    Err(e) => {
                        tracing::warn!(server = %self.name(i), error = %e, "cannot set the replication heartbeat period");
                        self.srv[i].sc.reset();
                        continue;
                    }
                }
            }
            self.srv[i].link_managed = true;
        }
    }

    /// The newest generation row any reachable server holds.
    pub(crate) fn newest_row(&self) -> Option<probe::GenerationRow> {
        self.srv
            .iter()
            .filter_map(|w| w.probe.as_ref())
            .filter_map(|p| p.generation.clone())
            .max_by_key(|g| g.generation)
    }

    /// Sets `read_only = ON` on writable servers of an older generation: old primaries.
    async fn fence_stale(&mut self) {
        for i in 0..self.srv.len() {
            let stale = match &self.srv[i].probe {
                Some(p) => !p.read_only && p.generation() < self.generation,
                None => false,
            };
            if !stale {
                continue;
            }
            let gen = self.srv[i].probe.as_ref().map_or(0, Probe::generation);
            let flavor = self.srv[i].sc.flavor();
            let timeout = self.timeout;
            let Some(c) = self.srv[i].sc.conn.as_mut() else {
                continue;
            };
            let stmts = flavor.set_read_only(true);
            match probe::run_sql(c, timeout, stmts).await {
                Ok(()) => {
                    tracing::warn!(server = %self.config.servers[i].name, generation = gen, current = self.generation, "fenced a writable server of an old generation (set read_only = ON); it never receives writes");
                    if let Some(p) = self.srv[i].probe.as_mut() {
                        p.read_only = true;
                    }
                    if self.srv[i].excluded.is_none() {
                        self.srv[i].excluded = Some(format!(
                            "fenced: old primary of generation {gen} (current {})",
                            self.generation
                        ));
                    }
                }
                Err(e) => {
                    tracing::error!(server = %self.config.servers[i].name, error = %e, "cannot fence an old primary; it is excluded from routing");
                    self.srv[i].excluded = Some(format!("stale primary, fencing failed: {e}"));
                }
            }
        }
    }

    /// The one writable server of the newest generation, if exactly one.
    fn choose_primary(&mut self) -> Option<usize> {
        let writable: Vec<usize> = (0..self.srv.len())
            .filter(|&i| {
                self.srv[i].healthy
                    && self.srv[i]
                        .probe
                        .as_ref()
                        .is_some_and(|p| !p.read_only && p.generation() >= self.generation)
            })
            .collect();
        match writable.as_slice() {
            [one] => {
                self.conflict_logged = false;
                Some(*one)
            }
            [] => {
                // A primary that missed fewer than `down_after` probes is still the primary.
                self.primary
                    .filter(|&k| self.srv[k].healthy && self.srv[k].probe.is_none())
            }
            many => {
                if !self.conflict_logged {
                    let names: Vec<&str> = many.iter().map(|&i| self.name(i)).collect();
                    tracing::error!(servers = ?names, "several servers of the newest generation are writable (read_only=OFF); refusing to pick a primary");
                    self.conflict_logged = true;
                }
                None
            }
        }
    }

    /// A primary that restarted with `read_only = ON` (as production configs often say) while
    /// no other server took over: it is still the primary of the newest generation, so writes
    /// are re-enabled on it (under the failover lock). An operator setting `read_only` on a
    /// running primary is left alone: only a server that was down and came back qualifies.
    async fn restore_restarted_primary(&mut self) -> Option<usize> {
        let i = (0..self.srv.len()).find(|&i| {
            let Some(p) = self.srv[i].probe.as_ref().filter(|_| self.srv[i].returned) else {
                return false;
            };
            let ours = match &p.generation {
                Some(g) => {
                    g.primary_name == self.config.servers[i].name && g.generation == self.generation
                }
                None => self.generation == 0 && self.known_primary == Some(i),
            };
            p.read_only && p.replication.is_none() && ours && self.srv[i].excluded.is_none()
        })?;
        if !self.lock_majority().await {
            return None;
        }
        let flavor = self.srv[i].sc.flavor();
        let stmts = flavor.set_read_only(false);
        let timeout = self.timeout;
        let r = match self.srv[i].sc.conn.as_mut() {
            Some(c) => probe::run_sql(c, timeout, stmts).await,
            None => Err("not connected".into()),
        };
        self.unlock_all().await;
        match r {
            Ok(()) => {
                tracing::warn!(server = %self.name(i), generation = self.generation, "the primary restarted read-only and no other server took over: writes re-enabled on it");
                if let Some(p) = self.srv[i].probe.as_mut() {
                    p.read_only = false;
                }
                Some(i)
            }
            Err(e) => {
                tracing::error!(server = %self.name(i), error = %e, "cannot re-enable writes on the restarted primary");
                None
            }
        }
    }

    /// Heartbeat and semi-sync status on the primary; lag on the replicas.
    /// Returns whether the heartbeat write on the primary timed out (the primary stalled).
    async fn measure(&mut self, primary: Option<usize>) -> bool {
        let timeout = self.timeout;
        let mut written = false;
        let mut stalled = false;
        // No heartbeat write while a switchover holds writes: the monitor login bypasses
        // read_only, and a write after the switching instance read the primary's position
        // would reach some replicas and not the new primary (its history would diverge).
        if let Some(p) = primary.filter(|_| !self.hold) {
            let sc = &mut self.srv[p].sc;
            if sc.conn.is_some() {
                let r = async {
                    probe::ensure_schema(sc, timeout).await?;
                    let c = sc.conn.as_mut().ok_or("not connected")?;
                    lag::write_heartbeat(c, timeout).await
                }
                .await;
                match r {
                    Ok(()) => written = true,
                    Err(e) if e.is_timeout() => {
                        // The primary stopped answering between the probe and now (hung, or
                        // black-holed): the connection is in an unknown state, and this is as
                        // good as a failed probe. Semi-sync stays as last seen.
                        tracing::debug!(server = %self.config.servers[p].name, error = %e, "heartbeat write timed out");
                        self.srv[p].sc.reset();
                        self.srv[p].probe = None;
                        self.srv[p].fails += 1;
                        self.srv[p].oks = 0;
                        self.srv[p].error = Some(e.to_string());
                        stalled = true;
                    }
                    Err(e) if !self.heartbeat_failing => {
                        tracing::warn!(server = %self.config.servers[p].name, error = %e, "cannot write the heartbeat; using Seconds_Behind_Master");
                    }
                    Err(_) => {}
                }
                let enabled = self.srv[p]
                    .probe
                    .as_ref()
                    .is_some_and(|x| x.semi_sync_master);
                let was = self.semi_sync.clone();
                let mut now = SemiSyncSeen {
                    enabled,
                    ..SemiSyncSeen::default()
                };
                if stalled {
                    now = was.clone();
                } else if enabled {
                    // Unknown (the primary died between the probe and this query): semi-sync
                    // stays as last seen on this primary, it is not taken for a fallback to
                    // asynchronous.
                    if was.primary == Some(p) {
                        now = was.clone();
                    }
                    if let Some(c) = self.srv[p].sc.conn.as_mut() {
                        if let Ok((on, clients, no_tx)) = probe::semi_sync_status(c, timeout).await
                        {
                            // Effective only while a replica acknowledges and no commit went
                            // through without an acknowledgement since the last look.
                            let same_primary = was.primary == Some(p);
                            now = SemiSyncSeen {
                                enabled,
                                active: on && clients > 0 && (!same_primary || no_tx == was.no_tx),
                                clients,
                                no_tx,
                                primary: Some(p),
                            };
                        }
                    }
                }
                if now.active != was.active && enabled {
                    if now.active {
                        tracing::info!(server = %self.config.servers[p].name, clients = now.clients, "semi-sync replication active");
                    } else {
                        tracing::warn!(server = %self.config.servers[p].name, clients = now.clients, "semi-sync enabled but not effective (no acknowledging replica, or commits acknowledged without one): a failover now could lose acknowledged writes and would be refused");
                    }
                }
                self.semi_sync = now;
            }
        }
        self.heartbeat_failing = primary.is_some() && !written;
        if self.heartbeat_failing {
            self.heartbeat_failures += 1;
        }
        for i in 0..self.srv.len() {
            self.srv[i].lag = (None, LagSource::None);
            let Some(rep) = self.srv[i]
                .probe
                .as_ref()
                .filter(|p| p.read_only)
                .and_then(|p| p.replication.clone())
            else {
                continue;
            };
            if let Some(c) = self.srv[i].sc.conn.as_mut() {
                match lag::measure(c, &rep, written, timeout).await {
                    Ok(l) => self.srv[i].lag = l,
                    Err(e) => {
                        tracing::debug!(server = %self.config.servers[i].name, error = %e, "lag probe failed")
                    }
                }
            }
        }
        stalled
    }

    /// One monitoring round: probe, fence, choose the primary, measure lag, act on a dead
    /// primary, rejoin stray servers, publish.
    pub(crate) async fn tick(&mut self) {
        self.probe_all().await;
        if let Some(k) = self.primary {
            if self.srv[k].probe.is_none()
                && self.srv[k].healthy
                && self.config.monitor.failover != FailoverMode::Off
            {
                self.confirm_quickly(k).await;
            }
        }
        if self.disabled.is_some() && self.generation > self.disabled_at {
            // An operator promoted a server meanwhile (`sluice failover`/`switchover`).
            tracing::info!(
                generation = self.generation,
                "a new generation appeared: automatic failover re-enabled"
            );
            self.disabled = None;
        }
        self.fence_stale().await;
        let mut primary = self.choose_primary();
        if primary.is_none() {
            primary = self.restore_restarted_primary().await;
        }
        self.srv.iter_mut().for_each(|w| w.returned = false);
        if primary != self.primary {
            match primary {
                Some(i) => {
                    tracing::info!(server = %self.name(i), address = %self.config.servers[i].address, generation = self.generation, "primary discovered")
                }
                None => tracing::warn!("no primary available"),
            }
        }
        self.primary = primary;
        let now = now_ms();
        self.hold = primary
            .and_then(|p| self.srv[p].probe.as_ref())
            .and_then(|p| p.generation.as_ref())
            .is_some_and(|g| g.switchover_until_ms > now);
        if let Some(p) = primary {
            if let Some(old) = self.known_primary.filter(|&k| k != p) {
                let new_gen = self.srv[p].probe.as_ref().map_or(0, Probe::generation);
                if new_gen > 0 && !self.srv[old].healthy {
                    // Another process (`sluice failover`, another instance) promoted a server
                    // while the old primary was down: cut what this instance still has open
                    // to it, as after its own failover.
                    self.srv[old].deposed += 1;
                }
            }
            self.known_primary = Some(p);
            if self.srv[p].probe.is_some() {
                // Sticky: one bad reading (the primary may have died between the probes of
                // this round) does not clear it.
                for i in 0..self.srv.len() {
                    if i == p {
                        continue;
                    }
                    let Some(x) = self.srv[i].probe.as_ref() else {
                        continue;
                    };
                    let receiving = x.replication.as_ref().is_some_and(|r| r.io_yes());
                    if receiving && self.link_silent(i).is_none() {
                        self.srv[i].io_ok = true;
                        self.srv[i].io_bad = 0;
                    } else {
                        self.srv[i].io_bad += 1;
                        if self.srv[i].io_bad >= 2 {
                            self.srv[i].io_ok = false;
                        }
                    }
                }
            }
            // With a primary, the state is "ok" unless automatic failover stays disabled.
            self.last_failover_error = None;
            self.state = match &self.disabled {
                Some(reason) => MonitorState::Failed {
                    reason: reason.clone(),
                },
                None => MonitorState::Ok,
            };
        }
        let stalled = self.measure(primary).await;
        if let Some(p) = primary.filter(|_| stalled) {
            // The heartbeat write timed out: ask the replicas now, as after a failed probe.
            if self.srv[p].healthy && self.config.monitor.failover != FailoverMode::Off {
                self.confirm_quickly(p).await;
            }
            if !self.srv[p].healthy {
                primary = None;
                self.primary = None;
                tracing::warn!("no primary available");
            }
        }
        match primary {
            None => self.on_no_primary().await,
            Some(p) => {
                self.rejoin_strays().await;
                self.manage_links(p).await;
            }
        }
        self.update_hello().await;
        self.publish();
    }

    /// No primary this round: decide whether the known primary is dead and what to do.
    async fn on_no_primary(&mut self) {
        let Some(k) = self.known_primary else {
            self.state = MonitorState::NoPrimary;
            return;
        };
        if self.srv[k].healthy {
            // Reachable but not writable (a switchover in progress, or an operator set
            // read_only): not a failure.
            self.state = MonitorState::NoPrimary;
            return;
        }
        if self.config.monitor.failover == FailoverMode::Off {
            self.state = MonitorState::NoPrimary;
            return;
        }
        match failover::assess(self, k) {
            failover::Assessment::UnreachableFromProxy(receiving) => {
                if self.state != MonitorState::PrimaryUnreachableFromProxy {
                    let names: Vec<&str> = receiving.iter().map(|&i| self.name(i)).collect();
                    tracing::error!(primary = %self.name(k), replicas_receiving = ?names, "primary unreachable from proxy: the replicas still receive from it, so it is not dead; no failover");
                }
                self.state = MonitorState::PrimaryUnreachableFromProxy;
            }
            failover::Assessment::Unconfirmed(why) => {
                if self.state != MonitorState::NoPrimary {
                    tracing::warn!(primary = %self.name(k), reason = %why, "primary down but not confirmed dead; no failover");
                }
                self.state = MonitorState::NoPrimary;
            }
            failover::Assessment::Confirmed(_) => {
                if self.config.monitor.failover == FailoverMode::Manual {
                    if self.state != MonitorState::PrimaryDead {
                        tracing::error!(primary = %self.name(k), "primary is dead (confirmed by the replicas); failover = manual: run `sluice failover`");
                    }
                    self.state = MonitorState::PrimaryDead;
                    return;
                }
                if let Some(reason) = self.disabled.clone() {
                    self.state = MonitorState::Failed { reason };
                    return;
                }
                if let Some(until_ms) = self.blocked_until() {
                    if !matches!(self.state, MonitorState::Blocked { .. }) {
                        tracing::error!(primary = %self.name(k), until_ms, "primary is dead but automatic failover is blocked (anti-flap, failover_block_s) until acknowledged");
                    }
                    self.state = MonitorState::Blocked { until_ms };
                    return;
                }
                if let Err(e) = self.failover(Some(k), None, true).await {
                    let e = e.to_string();
                    // Retried every round; said again whenever the reason changes.
                    if self.last_failover_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(primary = %self.name(k), reason = %e, "primary is dead; no failover this round (retrying)");
                        self.last_failover_error = Some(e);
                    }
                    if !matches!(
                        self.state,
                        MonitorState::Failed { .. } | MonitorState::Blocked { .. }
                    ) {
                        self.state = MonitorState::NoPrimary;
                    }
                }
            }
        }
    }

    /// When automatic failover is blocked by anti-flap, until when (ms since the epoch).
    pub(crate) fn blocked_until(&self) -> Option<u64> {
        let block = self.config.monitor.failover_block_s.saturating_mul(1000);
        if block == 0 {
            return None;
        }
        let row = self
            .newest_row()
            .filter(|r| r.kind == "failover" && !r.acknowledged)
            .map(|r| r.changed_at_ms);
        let last = row.max(self.last_failover_ms)?;
        let until = last + block;
        (now_ms() < until).then_some(until)
    }

    async fn update_hello(&mut self) {
        let Some(p) = self.primary else {
            self.hello = None;
            return;
        };
        if self.hello.as_ref().is_some_and(|(i, _)| *i == p) {
            return;
        }
        let s = &self.config.servers[p];
        let params = LoginParams {
            user: self.user.as_bytes(),
            secret: crate::config::Secret::Password(self.password.as_bytes()),
            database: None,
            capabilities: u64::from(u32::MAX),
            charset: 45,
            max_packet: self.config.proxy.max_packet_bytes.min(u64::from(u32::MAX)) as u32,
            connect_attrs: None,
        };
        let tls = crate::tls::for_server(self.backend_tls.as_ref(), s);
        let transport = backend::Transport {
            tls: tls.as_deref(),
            compress: false,
        };
        match backend::connect(&s.name, &s.address, params, self.timeout, transport).await {
            Ok((conn, _)) => {
                let h = ServerHello {
                    version: conn.handshake.server_version.clone(),
                    capabilities: conn.handshake.capabilities,
                    charset: conn.handshake.charset,
                };
                conn.quit().await;
                self.hello = Some((p, h));
            }
            Err(e) => {
                tracing::warn!(server = %s.name, error = %e, "cannot log in to the primary to read its handshake");
            }
        }
    }

    /// The view sessions route by.
    pub(crate) fn view(&self) -> ClusterView {
        let servers = self
            .config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = self.srv[i].probe.as_ref();
                let role = match p {
                    _ if !self.srv[i].healthy => Role::Unknown,
                    None => Role::Unknown,
                    Some(_) if Some(i) == self.primary => Role::Primary,
                    Some(p) if p.read_only => Role::Replica,
                    // Writable but not the primary: an unfenced conflict.
                    Some(_) => Role::Unknown,
                };
                crate::cluster::ServerState {
                    name: s.name.clone(),
                    address: s.address.clone(),
                    weight: s.weight,
                    role,
                    healthy: self.srv[i].healthy,
                    version: p.map(|p| p.version.clone()),
                    last_error: self.srv[i].error.clone(),
                    lag_ms: self.srv[i].lag.0,
                    lag_source: self.srv[i].lag.1,
                    gtid_pos: p.map(|p| p.current_pos.text.clone()).unwrap_or_default(),
                    generation: p.map_or(0, Probe::generation),
                    excluded: if self.srv[i].offline {
                        Some("offline (set by the admin port)".into())
                    } else {
                        self.srv[i].excluded.clone()
                    },
                    source: p
                        .and_then(|p| p.replication.as_ref())
                        .map(probe::Replication::source),
                    not_following: self.srv[i].repoint.as_ref().map(|r| {
                        format!(
                            "not following {} yet ({} attempts in {} ms): {}",
                            self.config.servers[r.to].name,
                            r.attempts,
                            r.since.elapsed().as_millis(),
                            r.why
                        )
                    }),
                    deposed: self.srv[i].deposed,
                }
            })
            .collect();
        ClusterView {
            servers,
            primary: self.primary,
            primary_hello: self
                .hello
                .as_ref()
                .filter(|(i, _)| Some(*i) == self.primary)
                .map(|(_, h)| h.clone()),
            generation: self.generation,
            hold: self.hold,
            state: self.state.clone(),
            semi_sync: crate::cluster::SemiSync {
                enabled: self.semi_sync.enabled,
                active: self.semi_sync.active,
                clients: self.semi_sync.clients,
            },
            idle_timeouts: self
                .primary
                .and_then(|i| self.srv[i].probe.as_ref())
                .and_then(|p| p.idle_timeouts),
            history: Arc::new(self.history.clone()),
            history_total: self.history_total,
            heartbeat_failures: self.heartbeat_failures,
        }
    }

    /// Publishes the view if it changed.
    pub(crate) fn publish(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let view = self.view();
        let old = tx.borrow().clone();
        if changed(&old, &view) {
            tx.send_replace(Arc::new(view));
        }
    }

    /// Publishes a state change at once (e.g. "switching": writes wait).
    pub(crate) fn publish_state(&mut self, state: MonitorState, primary: Option<usize>) {
        self.state = state;
        self.primary = primary;
        self.publish();
    }

    async fn handle(&mut self, cmd: Command) -> Result<String, MonitorError> {
        match cmd {
            Command::Acknowledge => self.acknowledge().await,
            Command::Switchover { to } => {
                let i = self.index_of(&to)?;
                self.switchover(i).await
            }
            Command::Failover { to } => {
                let target = to.as_deref().map(|n| self.index_of(n)).transpose()?;
                self.manual_failover(target).await
            }
            Command::Reconfigure(config) => self.reconfigure(config),
            Command::SetServer { name, online } => {
                let i = self.index_of(&name)?;
                if !online && self.primary == Some(i) {
                    return Err(format!(
                        "{name} is the primary: SWITCHOVER TO another server first"
                    )
                    .into());
                }
                self.srv[i].offline = !online;
                tracing::warn!(server = %name, online, "server state set by the admin port");
                Ok(if online {
                    format!("{name} is online")
                } else {
                    format!("{name} is offline: no new reads, never promoted; current statements finish")
                })
            }
        }
    }

    /// Applies a reloaded configuration (see [`Command::Reconfigure`]). Refused, with nothing
    /// changed, when it would remove the primary.
    fn reconfigure(&mut self, config: Arc<Config>) -> Result<String, MonitorError> {
        let old_n = self.srv.len();
        let n = config.servers.len();
        if n < old_n {
            return Err(
                "a reload may not shrink the server list (removed servers stay flagged)".into(),
            );
        }
        for i in 0..old_n {
            let removed = config.servers[i].removed && !self.config.servers[i].removed;
            let moved = config.servers[i].address != self.config.servers[i].address;
            if (removed || moved) && (self.primary == Some(i) || self.known_primary == Some(i)) {
                return Err(format!(
                    "server {} is the primary: switch over to another server before removing or moving it",
                    self.config.servers[i].name
                ).into());
            }
        }
        let mut done = Vec::new();
        for i in old_n..n {
            self.srv.push(Watched::new(crate::tls::for_server(
                self.backend_tls.as_ref(),
                &config.servers[i],
            )));
            done.push(format!("monitoring {}", config.servers[i].name));
        }
        for i in 0..old_n {
            if config.servers[i].removed && !self.config.servers[i].removed {
                self.srv[i].sc = ServerConn::default();
                self.srv[i].healthy = false;
                self.srv[i].probe = None;
                self.srv[i].error = None;
                self.srv[i].lag = (None, LagSource::None);
                self.srv[i].excluded = Some("removed from the configuration".into());
                done.push(format!(
                    "stopped monitoring {}",
                    self.config.servers[i].name
                ));
            }
        }
        let (user, password) = config
            .monitor
            .credentials(&config.users)
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .unwrap_or_default();
        let tls_changed = config.backend_tls != self.config.backend_tls;
        if tls_changed {
            self.backend_tls = crate::tls::backend_tls(&config).ok().flatten();
            self.hello = None;
            done.push("new [backend_tls]".into());
        }
        let server_tls_changed = config
            .servers
            .iter()
            .zip(&self.config.servers)
            .any(|(a, b)| a.tls != b.tls);
        if user != self.user || password != self.password || tls_changed || server_tls_changed {
            // New credentials or TLS: every probe connection logs in again.
            for (w, s) in self.srv.iter_mut().zip(&config.servers) {
                if !s.removed {
                    w.sc = ServerConn {
                        tls: crate::tls::for_server(self.backend_tls.as_ref(), s),
                        ..Default::default()
                    };
                }
            }
            self.user = user;
            self.password = password;
            done.push("new monitor credentials".into());
        }
        if config.monitor != self.config.monitor {
            done.push("new [monitor] settings".into());
        }
        self.timeout = Duration::from_millis(config.monitor.timeout_ms);
        self.config = config;
        Ok(done.join(", "))
    }

    pub fn index_of(&self, name: &str) -> Result<usize, MonitorError> {
        self.config
            .servers
            .iter()
            .position(|s| s.name == name && !s.removed)
            .ok_or_else(|| format!("no server named {name:?} in [[servers]]").into())
    }

    /// Lifts the anti-flap block (here and, through the generation row, in every instance)
    /// and re-enables automatic failover.
    pub async fn acknowledge(&mut self) -> Result<String, MonitorError> {
        self.last_failover_ms = None;
        self.disabled = None;
        if let Some(p) = self.primary {
            if let Some(c) = self.srv[p].sc.conn.as_mut() {
                probe::run_sql(
                    c,
                    self.timeout,
                    &["UPDATE sluice.cluster SET acknowledged = 1 WHERE id = 1"],
                )
                .await?;
            }
        }
        if matches!(
            self.state,
            MonitorState::Blocked { .. } | MonitorState::Failed { .. }
        ) {
            self.state = MonitorState::NoPrimary;
        }
        tracing::info!("failover acknowledged: automatic failover re-enabled");
        Ok("acknowledged: automatic failover re-enabled".into())
    }

    /// [`Monitor::acknowledge`] for a process that is not monitoring (the CLI).
    pub async fn acknowledge_now(&mut self) -> Result<String, MonitorError> {
        self.probe_all().await;
        self.primary = self.live_primary();
        if self.primary.is_none() {
            return Err("no live primary to record the acknowledgement on".into());
        }
        self.acknowledge().await
    }

    /// Closes every monitor connection (releasing locks).
    pub async fn close(&mut self) {
        for w in &mut self.srv {
            if let Some(c) = w.sc.conn.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
            }
        }
    }
}

fn changed(a: &ClusterView, b: &ClusterView) -> bool {
    a.primary != b.primary
        || a.primary_hello != b.primary_hello
        || a.generation != b.generation
        || a.hold != b.hold
        || a.state != b.state
        || a.semi_sync != b.semi_sync
        || a.idle_timeouts != b.idle_timeouts
        || a.heartbeat_failures != b.heartbeat_failures
        || a.history_total != b.history_total
        || a.history.len() != b.history.len()
        || a.history.last().map(|r| &r.detail) != b.history.last().map(|r| &r.detail)
        || a.servers.len() != b.servers.len()
        || a.servers.iter().zip(&b.servers).any(|(x, y)| {
            x.role != y.role
                || x.weight != y.weight
                || x.address != y.address
                || x.healthy != y.healthy
                || x.last_error != y.last_error
                || x.lag_ms != y.lag_ms
                || x.excluded != y.excluded
                || x.generation != y.generation
                || x.source != y.source
                || x.not_following.is_some() != y.not_following.is_some()
                || x.deposed != y.deposed
        })
}

/// Starts the monitor task; returns a handle for operator commands.
pub fn spawn(
    config: Arc<Config>,
    tx: ClusterTx,
    shutdown: watch::Receiver<bool>,
) -> (MonitorHandle, tokio::task::JoinHandle<()>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let task = tokio::spawn(run(config, tx, cmd_rx, shutdown));
    (MonitorHandle { tx: cmd_tx }, task)
}

/// Runs until `shutdown` flips to true.
async fn run(
    config: Arc<Config>,
    tx: ClusterTx,
    mut commands: mpsc::Receiver<(Command, Reply)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut m = Monitor::new(config, Some(tx));
    loop {
        // Re-read each round: a reload may change it.
        let interval = Duration::from_millis(m.config.monitor.interval_ms);
        // While writes wait for a switchover, look more often so the pause ends sooner.
        let fast = interval.min(Duration::from_millis(50));
        let started = Instant::now();
        m.tick().await;
        let period = if m.hold { fast } else { interval };
        let sleep = tokio::time::sleep(period.saturating_sub(started.elapsed()));
        tokio::select! {
            _ = sleep => {}
            Some((cmd, reply)) = commands.recv() => {
                let r = m.handle(cmd).await.map_err(|e| e.to_string());
                m.publish();
                let _ = reply.send(r);
            }
            _ = shutdown.changed() => break,
        }
    }
    m.close().await;
}
