//! Prometheus metrics and health endpoints.
//!
//! The hot path touches only atomics (`state::Counters`) and two cached histogram handles;
//! everything else is copied into the `prometheus` registry when `/metrics` is scraped. The
//! HTTP endpoint (`http.rs`) serves `/metrics`, `/healthz` (the process is alive) and
//! `/readyz` (a primary is known and the client listener is up). Names are in `names.rs`;
//! docs/metrics.md describes each metric.

pub mod digest;
pub mod http;
pub mod names;
pub mod pins;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cluster::{ClusterView, Role};
use crate::router::{PinReason, StatementClass};
use crate::state::Shared;

/// Error codes counted one by one; any other code is counted as `other`.
pub const COUNTED_ERRORS: [u16; 22] = [
    1040, 1043, 1045, 1047, 1129, 1130, 1153, 1156, 1210, 1243, 1835, 2013, 9001, 9002, 9003, 9004,
    9010, 9011, 9012, 9020, 9021, 9040,
];

/// ERR packets Sluice sent to clients, by code.
#[derive(Default)]
pub struct ErrorCounts {
    counts: [AtomicU64; COUNTED_ERRORS.len() + 1],
}

impl ErrorCounts {
    pub fn record(&self, code: u16) {
        let i = COUNTED_ERRORS
            .iter()
            .position(|&c| c == code)
            .unwrap_or(COUNTED_ERRORS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.counts[i].load(Ordering::Relaxed)
    }
}

/// The registry and the metric handles.
/// The statement latency histograms, one per route: every statement observes one, so they are
/// written per thread (src/lanes.rs) and added up at a scrape ([`QueryCollector`]).
pub struct QueryHistograms {
    desc: prometheus::core::Desc,
    routes: [crate::lanes::LaneHistogram; 2],
}

impl QueryHistograms {
    fn new(bounds: [f64; crate::lanes::HIST_BOUNDS]) -> Self {
        QueryHistograms {
            desc: prometheus::core::Desc::new(
                names::QUERY_DURATION_SECONDS.to_string(),
                "Time from forwarding a command to the end of its response, by route".to_string(),
                vec!["route".to_string()],
                Default::default(),
            )
            .expect("valid metric"),
            routes: [
                crate::lanes::LaneHistogram::new(bounds),
                crate::lanes::LaneHistogram::new(bounds),
            ],
        }
    }

    /// One statement's latency; `route` 0 = primary, 1 = replica.
    #[inline]
    pub fn observe(&self, route: usize, took: std::time::Duration) {
        self.routes[route.min(1)].observe(took);
    }
}

/// Exposes [`QueryHistograms`] in the registry.
struct QueryCollector(Arc<QueryHistograms>);

impl prometheus::core::Collector for QueryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto;
        let metrics = ["primary", "replica"]
            .iter()
            .zip(&self.0.routes)
            .map(|(route, h)| {
                let mut label = proto::LabelPair::default();
                label.set_name("route".to_string());
                label.set_value(route.to_string());
                let mut m = proto::Metric::default();
                m.set_label(vec![label]);
                m.set_histogram(lane_histogram(h));
                m
            })
            .collect();
        vec![histogram_family(&self.0.desc, metrics)]
    }
}

/// A [`crate::lanes::LaneHistogram`] as Prometheus exposes it.
fn lane_histogram(h: &crate::lanes::LaneHistogram) -> prometheus::proto::Histogram {
    use prometheus::proto;
    let snap = h.snapshot();
    let mut hist = proto::Histogram::default();
    hist.set_sample_count(snap.count);
    hist.set_sample_sum(snap.sum_seconds);
    hist.set_bucket(
        snap.cumulative
            .iter()
            .map(|&(bound, n)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    hist
}

fn histogram_family(
    desc: &prometheus::core::Desc,
    metrics: Vec<prometheus::proto::Metric>,
) -> prometheus::proto::MetricFamily {
    let mut family = prometheus::proto::MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
    family.set_metric(metrics);
    family
}

/// `sluice_pool_wait_seconds`: under thousands of clients most leases wait, so it is written
/// per thread like the statement latencies.
pub struct PoolWaitHistogram {
    desc: prometheus::core::Desc,
    hist: crate::lanes::LaneHistogram,
}

impl PoolWaitHistogram {
    /// One wait in a pool's queue.
    #[inline]
    pub fn observe(&self, waited: std::time::Duration) {
        self.hist.observe(waited);
    }

    /// What it holds now.
    pub fn snapshot(&self) -> crate::lanes::HistSnapshot {
        self.hist.snapshot()
    }
}

/// Exposes [`PoolWaitHistogram`] in the registry.
struct PoolWaitCollector(Arc<PoolWaitHistogram>);

impl prometheus::core::Collector for PoolWaitCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut m = prometheus::proto::Metric::default();
        m.set_histogram(lane_histogram(&self.0.hist));
        vec![histogram_family(&self.0.desc, vec![m])]
    }
}

pub struct Metrics {
    registry: Registry,
    /// Latency of commands, by route (0 = primary, 1 = replica).
    /// `sluice_query_duration_seconds{route}` (0 primary, 1 replica), written per thread.
    pub query_seconds: Arc<QueryHistograms>,
    /// Time sessions waited in a pool's queue for a server connection.
    pub pool_wait_seconds: Arc<PoolWaitHistogram>,
    sessions_pinned: IntGaugeVec,
    /// `sluice_worker_threads`: the threads that run sessions (set at start).
    pub worker_threads: IntGauge,
    multiplexing_ratio: prometheus::Gauge,
    sessions_holding: IntGauge,
    pub errors: std::sync::Arc<ErrorCounts>,
    client_connections: IntGauge,
    connections_total: IntCounter,
    rejected: IntCounterVec,
    idle_timeouts: IntCounter,
    killed: IntCounter,
    query_attributes: IntCounter,
    queries: IntCounterVec,
    reads: IntCounterVec,
    fallbacks: IntCounterVec,
    pins: IntCounterVec,
    invalid_hints: IntCounter,
    rule_matches: IntCounterVec,
    backend: IntGaugeVec,
    expired: IntCounterVec,
    outstanding: IntGaugeVec,
    server_up: IntGaugeVec,
    server_role: IntGaugeVec,
    excluded: IntGaugeVec,
    not_following: IntGaugeVec,
    lag: GaugeVec,
    primary_known: IntGauge,
    generation: IntGauge,
    failovers: IntCounterVec,
    failover_seconds: HistogramVec,
    failovers_seen: Mutex<usize>,
    semi_sync: IntGauge,
    heartbeat_failures: IntCounter,
    errors_total: IntCounterVec,
    reloads: IntCounterVec,
    admin_commands: IntCounterVec,
    login_throttled: IntCounter,
    account_loads: IntCounterVec,
    accounts: IntGauge,
    lag_budget: prometheus::Gauge,
    cert_expiry: GaugeVec,
    /// The served certificate's expiry, cached by (file, modification time).
    cert_cache: Mutex<Option<(std::path::PathBuf, std::time::SystemTime, Option<i64>)>>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Brings a counter up to a cumulative value read from an atomic.
fn sync(c: &IntCounter, v: u64) {
    let cur = c.get();
    if v > cur {
        c.inc_by(v - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        use names::*;
        let r = Registry::new();
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let query_seconds = Arc::new(QueryHistograms::new(buckets));
        r.register(Box::new(QueryCollector(query_seconds.clone())))
            .expect("unique metric");
        let lag = GaugeVec::new(
            Opts::new(
                REPLICA_LAG_SECONDS,
                "Measured replication lag of each replica (absent when unknown)",
            ),
            &["server"],
        )
        .expect("valid metric");
        r.register(Box::new(lag.clone())).expect("unique metric");
        let failover_seconds = HistogramVec::new(
            HistogramOpts::new(
                FAILOVER_DURATION_SECONDS,
                "From the decision to fail over (or switch over) to the new primary taking writes",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(failover_seconds.clone()))
            .expect("unique metric");
        let pool_wait = Arc::new(PoolWaitHistogram {
            desc: prometheus::core::Desc::new(
                POOL_WAIT_SECONDS.to_string(),
                "Time a session waited in a pool's queue for a server connection".to_string(),
                vec![],
                Default::default(),
            )
            .expect("valid metric"),
            hist: crate::lanes::LaneHistogram::new(buckets),
        });
        r.register(Box::new(PoolWaitCollector(pool_wait.clone())))
            .expect("unique metric");
        let ratio = prometheus::Gauge::new(
            MULTIPLEXING_RATIO,
            "Client sessions per open server connection (all servers)",
        )
        .expect("valid metric");
        r.register(Box::new(ratio.clone())).expect("unique metric");
        // The threads that run sessions (`[proxy] worker_threads`), fixed for the process's
        // life: the runtime's workers here; the server sets it to its session loops.
        let worker_threads = gauge(
            &r,
            WORKER_THREADS,
            "Threads that run client sessions ([proxy] worker_threads)",
        );
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            worker_threads.set(h.metrics().num_workers() as i64);
        }
        // Which build runs (a plain one where the profile-guided build was meant to ship
        // shows here): always 1, the labels say it.
        gauge_vec(
            &r,
            BUILD_INFO,
            "The running binary: its version and kind of build (profile-guided, release, debug)",
            &["version", "build"],
        )
        .with_label_values(&[crate::build_info::VERSION, crate::build_info::kind()])
        .set(1);
        Metrics {
            query_seconds,
            pool_wait_seconds: pool_wait,
            sessions_pinned: gauge_vec(
                &r,
                SESSIONS_PINNED,
                "Sessions pinned to a server connection now, by reason",
                &["reason"],
            ),
            worker_threads,
            multiplexing_ratio: ratio,
            sessions_holding: gauge(
                &r,
                SESSIONS_HOLDING,
                "Client sessions holding at least one server connection now",
            ),
            errors: Default::default(),
            client_connections: gauge(&r, CLIENT_CONNECTIONS, "Client sessions open now"),
            connections_total: counter(&r, CLIENT_CONNECTIONS_TOTAL, "Client connections accepted"),
            rejected: counter_vec(
                &r,
                CLIENT_CONNECTIONS_REJECTED_TOTAL,
                "Client connections refused, by reason",
                &["reason"],
            ),
            idle_timeouts: counter(
                &r,
                CLIENT_IDLE_TIMEOUTS_TOTAL,
                "Sessions closed after client_idle_timeout_ms without a command",
            ),
            killed: counter(&r, SESSIONS_KILLED_TOTAL, "Sessions ended by KILL SESSION"),
            query_attributes: counter(
                &r,
                QUERY_ATTRIBUTES_TOTAL,
                "Client commands that carried MySQL query attributes",
            ),
            queries: counter_vec(
                &r,
                QUERIES_TOTAL,
                "Commands answered, by route and statement class",
                &["route", "class"],
            ),
            reads: counter_vec(
                &r,
                READS_ROUTED_TOTAL,
                "Reads (class read), by where they ran",
                &["target"],
            ),
            fallbacks: counter_vec(
                &r,
                ROUTING_FALLBACKS_TOTAL,
                "Reads sent to the primary instead of a replica, by reason",
                &["reason"],
            ),
            pins: counter_vec(
                &r,
                PINS_TOTAL,
                "Statements that pinned a session to the primary, by reason",
                &["reason"],
            ),
            invalid_hints: counter(&r, INVALID_HINTS_TOTAL, "Sluice hints ignored as invalid"),
            rule_matches: counter_vec(
                &r,
                RULE_MATCHES_TOTAL,
                "Statements matched by each routing rule",
                &["rule"],
            ),
            backend: gauge_vec(
                &r,
                BACKEND_CONNECTIONS,
                "Backend connections per server, by state",
                &["server", "state"],
            ),
            expired: counter_vec(
                &r,
                BACKEND_CONNECTIONS_EXPIRED_TOTAL,
                "Server connections closed because they reached [proxy] pool_max_lifetime_ms (on their return to the pool, or found idle past it)",
                &["server"],
            ),
            outstanding: gauge_vec(
                &r,
                BACKEND_OUTSTANDING,
                "Reads in flight per server",
                &["server"],
            ),
            server_up: gauge_vec(
                &r,
                SERVER_UP,
                "1 when the monitor counts the server as healthy",
                &["server"],
            ),
            server_role: gauge_vec(
                &r,
                SERVER_ROLE,
                "1 for the server's current role (primary, replica, unknown)",
                &["server", "role"],
            ),
            excluded: gauge_vec(
                &r,
                SERVER_EXCLUDED,
                "1 when the server is kept out of routing (diverged, fenced, offline)",
                &["server"],
            ),
            not_following: gauge_vec(
                &r,
                SERVER_NOT_FOLLOWING,
                "1 while a replica that a failover or switchover pointed at the new primary does not follow it yet (retried every round)",
                &["server"],
            ),
            lag,
            primary_known: gauge(&r, PRIMARY_KNOWN, "1 when a writable primary is known"),
            generation: gauge(&r, GENERATION, "The newest failover generation seen"),
            failovers: {
                let c = counter_vec(
                    &r,
                    FAILOVERS_TOTAL,
                    "Failovers and switchovers this instance ran, by kind and outcome",
                    &["kind", "outcome"],
                );
                // Present at 0 from the start, so that `increase()` sees the first one.
                for kind in ["failover", "switchover"] {
                    for outcome in ["success", "failure"] {
                        c.with_label_values(&[kind, outcome]);
                    }
                }
                c
            },
            failover_seconds,
            failovers_seen: Mutex::new(0),
            semi_sync: gauge(
                &r,
                SEMI_SYNC_ACTIVE,
                "1 when semi-synchronous replication is effective on the primary",
            ),
            heartbeat_failures: counter(
                &r,
                HEARTBEAT_WRITE_FAILURES_TOTAL,
                "Monitor rounds in which the heartbeat could not be written on the primary",
            ),
            errors_total: counter_vec(
                &r,
                ERRORS_TOTAL,
                "ERR packets Sluice itself sent to clients, by error code",
                &["code"],
            ),
            reloads: counter_vec(
                &r,
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP, admin RELOAD), by outcome",
                &["outcome"],
            ),
            admin_commands: counter_vec(
                &r,
                ADMIN_COMMANDS_TOTAL,
                "Admin port statements, by command (unknown ones as `unknown`)",
                &["command"],
            ),
            login_throttled: counter(
                &r,
                LOGIN_THROTTLED_TOTAL,
                "Wrong-password answers delayed by the per-user, per-address throttle",
            ),
            account_loads: counter_vec(
                &r,
                "sluice_auth_account_loads_total",
                "Reads of the database's accounts ([auth] source), by outcome",
                &["outcome"],
            ),
            accounts: gauge(
                &r,
                "sluice_auth_accounts",
                "Accounts read from the database and in force",
            ),
            lag_budget: {
                let g = prometheus::Gauge::new(
                    LAG_BUDGET_SECONDS,
                    "[routing] max_lag_ms: a replica lagging more gets no reads",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            cert_expiry: {
                let g = GaugeVec::new(
                    Opts::new(
                        TLS_CERT_EXPIRY,
                        "Expiry (not after, Unix seconds) of the certificate Sluice presents to clients ([proxy.tls] cert)",
                    ),
                    &["certificate"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            cert_cache: Mutex::new(None),
            registry: r,
        }
    }

    /// Counts the failover records made since the last scrape, even once the history (the
    /// last 100) is full: `history_total` says how many were ever made.
    fn count_failovers(&self, view: &ClusterView) {
        let Ok(mut seen) = self.failovers_seen.lock() else {
            return;
        };
        let new = (view.history_total as usize).saturating_sub(*seen);
        let skip = view.history.len().saturating_sub(new);
        for rec in view.history.iter().skip(skip) {
            let outcome = if rec.ok { "success" } else { "failure" };
            self.failovers.with_label_values(&[rec.kind, outcome]).inc();
            if rec.ok {
                self.failover_seconds
                    .with_label_values(&[rec.kind])
                    .observe(rec.duration_ms as f64 / 1000.0);
            }
        }
        *seen = view.history_total as usize;
    }

    /// Counts one admin statement.
    pub fn admin_command(&self, name: &str) {
        self.admin_commands.with_label_values(&[name]).inc();
    }

    /// The client certificate's expiry, read again only when the file changed.
    fn client_cert_expiry(&self, config: &crate::config::Config) -> Option<i64> {
        let tls = config.proxy.tls.as_ref()?;
        let path = config.base_dir.join(&tls.cert);
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let mut cache = self.cert_cache.lock().ok()?;
        if let Some((p, t, v)) = cache.as_ref() {
            if *p == path && *t == mtime {
                return *v;
            }
        }
        let v = crate::tls::load_certs(&path)
            .ok()
            .and_then(|c| c.first().and_then(|c| crate::tls::not_after(c)));
        *cache = Some((path, mtime, v));
        v
    }

    /// Copies the process's counters and the cluster view into the registry and renders the
    /// text exposition format.
    pub fn render(&self, shared: &Shared) -> String {
        let c = &shared.counters;
        let view: ClusterView = (**shared.cluster.borrow()).clone();
        self.client_connections
            .set(shared.clients.load(Ordering::Relaxed) as i64);
        sync(
            &self.connections_total,
            c.connections_total.load(Ordering::Relaxed),
        );
        sync(
            &self.rejected.with_label_values(&["max_client_connections"]),
            c.rejected_too_many.load(Ordering::Relaxed),
        );
        for (i, reason) in crate::frontend::firewall::Refusal::REASONS
            .iter()
            .enumerate()
        {
            sync(
                &self.rejected.with_label_values(&[reason]),
                shared.firewall.refused[i].load(Ordering::Relaxed),
            );
        }
        sync(&self.idle_timeouts, c.idle_timeouts.load(Ordering::Relaxed));
        sync(&self.killed, c.sessions_killed.load(Ordering::Relaxed));
        sync(
            &self.query_attributes,
            c.query_attributes.load(Ordering::Relaxed),
        );
        for (r, route) in ["primary", "replica"].iter().enumerate() {
            for class in StatementClass::ALL {
                let v = c.queries[r][class.index()].load(Ordering::Relaxed);
                if v > 0 {
                    sync(&self.queries.with_label_values(&[route, class.as_str()]), v);
                }
            }
        }
        sync(
            &self.reads.with_label_values(&["replica"]),
            c.replica_reads.load(Ordering::Relaxed),
        );
        sync(
            &self.reads.with_label_values(&["primary"]),
            c.primary_reads.load(Ordering::Relaxed),
        );
        sync(
            &self.fallbacks.with_label_values(&["read_your_writes"]),
            c.ryw_fallbacks.load(Ordering::Relaxed),
        );
        let mut pinned = [0i64; PinReason::COUNT];
        let mut holding = 0i64;
        let mut sessions = 0usize;
        for s in shared.sessions.list() {
            sessions += 1;
            let pins = s.pins.load(Ordering::Relaxed);
            for (i, p) in PinReason::ALL.iter().enumerate() {
                if pins & p.bit() != 0 {
                    pinned[i] += 1;
                }
            }
            if s.held.load(Ordering::Relaxed) > 0 {
                holding += 1;
            }
        }
        self.sessions_holding.set(holding);
        for (i, p) in PinReason::ALL.iter().enumerate() {
            sync(
                &self.pins.with_label_values(&[p.as_str()]),
                c.pins[i].load(Ordering::Relaxed),
            );
            self.sessions_pinned
                .with_label_values(&[p.as_str()])
                .set(pinned[i]);
        }
        let open: usize = shared
            .routing()
            .slots
            .iter()
            .map(|s| {
                let (a, b) = s.pool.counts();
                a + b
            })
            .sum();
        self.multiplexing_ratio.set(if open == 0 {
            0.0
        } else {
            sessions as f64 / open as f64
        });
        sync(&self.invalid_hints, c.invalid_hints.load(Ordering::Relaxed));
        let routing = shared.routing();
        for (rule, hits) in routing.rules.iter().zip(&routing.rule_hits) {
            sync(
                &self.rule_matches.with_label_values(&[&rule.name]),
                hits.load(Ordering::Relaxed),
            );
        }
        for (i, s) in view.servers.iter().enumerate() {
            if routing.config.servers.get(i).is_some_and(|c| c.removed) {
                // Removed by a reload: its series go away (a server re-added under the same
                // name at a new index sets them again below).
                let n = s.name.as_str();
                for state in ["in_use", "idle", "waiting"] {
                    let _ = self.backend.remove_label_values(&[n, state]);
                }
                for role in [Role::Primary, Role::Replica, Role::Unknown] {
                    let _ = self.server_role.remove_label_values(&[n, role.as_str()]);
                }
                let _ = self.outstanding.remove_label_values(&[n]);
                let _ = self.expired.remove_label_values(&[n]);
                let _ = self.server_up.remove_label_values(&[n]);
                let _ = self.excluded.remove_label_values(&[n]);
                let _ = self.not_following.remove_label_values(&[n]);
                let _ = self.lag.remove_label_values(&[n]);
                continue;
            }
            let slot = routing.slot(i);
            if let Some(pool) = slot.map(|s| &s.pool) {
                let (in_use, idle) = pool.counts();
                self.backend
                    .with_label_values(&[&s.name, "in_use"])
                    .set(in_use as i64);
                self.backend
                    .with_label_values(&[&s.name, "idle"])
                    .set(idle as i64);
                self.backend
                    .with_label_values(&[&s.name, "waiting"])
                    .set(pool.waiting() as i64);
                sync(
                    &self.expired.with_label_values(&[&s.name]),
                    pool.expired_total.load(Ordering::Relaxed),
                );
            }
            if let Some(slot) = slot {
                self.outstanding
                    .with_label_values(&[&s.name])
                    .set(i64::from(slot.outstanding.load(Ordering::Relaxed)));
            }
            self.server_up
                .with_label_values(&[&s.name])
                .set(i64::from(s.healthy));
            for role in [Role::Primary, Role::Replica, Role::Unknown] {
                self.server_role
                    .with_label_values(&[&s.name, role.as_str()])
                    .set(i64::from(s.role == role));
            }
            self.excluded
                .with_label_values(&[&s.name])
                .set(i64::from(s.excluded.is_some()));
            self.not_following
                .with_label_values(&[&s.name])
                .set(i64::from(s.not_following.is_some()));
            match (s.role, s.lag_ms) {
                (Role::Replica, Some(ms)) => {
                    self.lag
                        .with_label_values(&[&s.name])
                        .set(ms as f64 / 1000.0);
                }
                _ => {
                    let _ = self.lag.remove_label_values(&[&s.name]);
                }
            }
        }
        self.primary_known
            .set(i64::from(view.writable_primary().is_some()));
        self.generation.set(view.generation as i64);
        self.semi_sync
            .set(i64::from(view.semi_sync.enabled && view.semi_sync.active));
        sync(&self.heartbeat_failures, view.heartbeat_failures);
        self.count_failovers(&view);
        for (i, code) in COUNTED_ERRORS.iter().enumerate() {
            let v = self.errors.get(i);
            if v > 0 {
                sync(
                    &self.errors_total.with_label_values(&[&code.to_string()]),
                    v,
                );
            }
        }
        let other = self.errors.get(COUNTED_ERRORS.len());
        if other > 0 {
            sync(&self.errors_total.with_label_values(&["other"]), other);
        }
        sync(
            &self.reloads.with_label_values(&["success"]),
            shared.reloads_ok.load(Ordering::Relaxed),
        );
        sync(
            &self.reloads.with_label_values(&["failure"]),
            shared.reloads_failed.load(Ordering::Relaxed),
        );
        sync(
            &self.login_throttled,
            shared.firewall.throttled.load(Ordering::Relaxed),
        );
        let loads = shared.accounts.loads.load(Ordering::Relaxed);
        let failed = shared.accounts.load_errors.load(Ordering::Relaxed);
        sync(
            &self.account_loads.with_label_values(&["success"]),
            loads.saturating_sub(failed),
        );
        sync(&self.account_loads.with_label_values(&["failure"]), failed);
        self.accounts
            .set(shared.accounts.count.load(Ordering::Relaxed) as i64);
        let config = shared.config();
        self.lag_budget
            .set(config.routing.max_lag_ms as f64 / 1000.0);
        match self.client_cert_expiry(&config) {
            Some(t) => self
                .cert_expiry
                .with_label_values(&["client_listener"])
                .set(t as f64),
            None => {
                let _ = self.cert_expiry.remove_label_values(&["client_listener"]);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::FailoverRecord;

    fn record(n: u64) -> FailoverRecord {
        FailoverRecord {
            kind: "switchover",
            from: "db1".into(),
            to: Some("db2".into()),
            generation: n,
            started_ms: 0,
            duration_ms: 100,
            ok: true,
            detail: String::new(),
        }
    }

    #[test]
    fn failover_counters_keep_moving_after_the_history_is_full() {
        let m = Metrics::new();
        let count = || {
            m.failovers
                .with_label_values(&["switchover", "success"])
                .get()
        };
        let mut view = ClusterView::default();
        let mut history = Vec::new();
        for n in 1..=250u64 {
            history.push(record(n));
            if history.len() > 100 {
                history.remove(0);
            }
            view.history = std::sync::Arc::new(history.clone());
            view.history_total = n;
            // A scrape every 7 records, as a slow scraper would see them.
            if n % 7 == 0 || n == 250 {
                m.count_failovers(&view);
            }
        }
        assert_eq!(count(), 250);
        // Nothing new: nothing counted again.
        m.count_failovers(&view);
        assert_eq!(count(), 250);
    }
}
