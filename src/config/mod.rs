//! Configuration: load (defaults → `sluice.toml` → `SLUICE_…` environment), validate, then
//! publish an immutable snapshot that the rest of the proxy shares behind an `Arc`.
//!
//! Unknown keys are errors, and every error names the file (or variable) and the key.

mod cidr;
mod error;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

pub use cidr::Cidr;
pub use error::ConfigError;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub servers: Vec<ServerConfig>,
    pub users: Vec<UserConfig>,
    pub monitor: MonitorConfig,
    pub routing: RoutingConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub firewall: FirewallConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    /// `[backend_tls]`: TLS from Sluice (data path and monitor) to every server; absent =
    /// plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTlsConfig>,
    /// The folder of the config file (relative rule paths start there). Not a key.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
    /// The file this configuration was loaded from (for RELOAD and SIGHUP). Not a key.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// `[backend_tls]`: how Sluice verifies the servers' certificates (and proves itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM CA certificate(s) the servers' certificates must chain to (required).
    pub ca: String,
    /// Client certificate and key, for servers that require one (`REQUIRE X509`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Check that the certificate names the server (the host part of its address, or
    /// `server_name`). On by default; turning it off still verifies the chain.
    #[serde(default = "yes")]
    pub verify_server_name: bool,
    /// The name to verify instead of each server's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// `[firewall]`: who may connect, how often, and what happens after failed logins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// Client addresses (CIDR or single address, IPv4/IPv6) allowed to connect; empty = all.
    pub allow: Vec<String>,
    /// Client addresses refused even when `allow` matches.
    pub deny: Vec<String>,
    /// New connections per second one source address may open (token bucket); 0 = no limit.
    pub connection_rate_per_source: u32,
    /// Connections a source may open at once above the rate (the bucket's size).
    pub connection_burst_per_source: u32,
    /// Interrupted or malformed handshakes in a row after which a source address is blocked
    /// (MySQL's `max_connect_errors`); 0 = never blocked. Wrong passwords do not count: they
    /// are throttled per user and address instead.
    pub max_connect_errors: u32,
    /// The old key (wrong passwords counted too): refused with a message naming the new one.
    #[serde(skip_serializing)]
    pub max_login_failures: Option<u32>,
    /// Wrong passwords for one user from one address get a growing delay before their 1045
    /// (from the 4th in a burst: 100 ms, doubling) up to this; 0 = no delay.
    pub login_throttle_max_ms: u64,
    /// How long a blocked address stays blocked (admin `FLUSH HOSTS` lifts every block).
    pub block_s: u64,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            connection_rate_per_source: 0,
            connection_burst_per_source: 20,
            max_connect_errors: 100,
            max_login_failures: None,
            login_throttle_max_ms: 1_000,
            block_s: 300,
        }
    }
}

/// `[admin]`: the MySQL-protocol admin port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub user: String,
    /// No default: without a password the admin port does not start.
    #[serde(deserialize_with = "opt_string_or_number", serialize_with = "mask_opt")]
    pub password: Option<String>,
    /// Read the password from this file instead (first line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Allow binding a non-loopback address although the admin port has no TLS yet.
    pub allow_remote_plaintext: bool,
    /// Keep per-statement statistics for `SHOW QUERY DIGEST`.
    pub query_digest: bool,
    /// Bound on distinct normalized statements kept; the rest count as `(other)`.
    pub query_digest_max_entries: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:6032".into(),
            user: "admin".into(),
            password: None,
            password_file: None,
            allow_remote_plaintext: false,
            query_digest: true,
            query_digest_max_entries: 5000,
        }
    }
}

/// `[metrics]`: Prometheus metrics and health endpoints (HTTP).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint; an empty string turns it off.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:6070".into(),
        }
    }
}

/// `[auth]`: where the accounts clients log in with come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `config`: `[[users]]` only. `database`: the primary's accounts (`mysql.global_priv`,
    /// or `mysql.user` on MySQL), read with the monitor login. `both`: `[[users]]` first.
    pub source: AuthSource,
    /// How often the accounts are read again.
    pub refresh_ms: u64,
    /// An unknown user name triggers a read at most this often (a name scan cannot flood
    /// the primary; until then an unknown name is refused).
    pub lookup_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            source: AuthSource::Config,
            refresh_ms: 5000,
            lookup_interval_ms: 1000,
        }
    }
}

/// `[auth] source`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthSource {
    #[default]
    Config,
    Database,
    Both,
}

impl AuthSource {
    pub fn uses_database(self) -> bool {
        self != AuthSource::Config
    }

    pub fn uses_config(self) -> bool {
        self != AuthSource::Database
    }
}

/// `[log]`: how log lines are written (the level is `SLUICE_LOG`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line, for log pipelines);
    /// `SLUICE_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[routing]`: where statements go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// A read goes to a replica only if its measured lag is at most this (ms). 0 keeps every
    /// read on the primary.
    pub max_lag_ms: u64,
    /// `session`: after a write, the session's reads go to a replica only once it has applied
    /// that write (else to the primary). `off`: no such check.
    pub read_your_writes: ReadYourWrites,
    /// How long a read waits for a replica to apply the session's last write before it runs
    /// on the primary instead.
    pub read_your_writes_timeout_ms: u64,
    /// Rule files, evaluated in order (paths relative to the config file's folder).
    pub rules: Vec<String>,
}

/// `[routing] read_your_writes`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    Off,
    Session,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_lag_ms: 1000,
            read_your_writes: ReadYourWrites::Session,
            read_your_writes_timeout_ms: 100,
            rules: Vec::new(),
        }
    }
}

/// `[proxy]`: the client-facing listener and per-session limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address the client listener binds.
    pub listen: String,
    /// Connections the kernel queues before Sluice accepts them (capped by
    /// `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Threads that run the client sessions; 0 (default) = one per CPU this process may use.
    /// Read at start only.
    pub worker_threads: u32,
    /// `per-thread` (default): each of those threads runs its own event loop, and a session
    /// stays on one; `work-stealing`: one multi-thread runtime runs everything. Read at start
    /// only.
    pub scheduler: Scheduler,
    /// Largest packet (command or response row) accepted, in bytes. Larger client packets get
    /// error 1153 and the connection is closed.
    pub max_packet_bytes: u64,
    /// Absolute deadline for a client to finish the handshake and authentication.
    pub handshake_timeout_ms: u64,
    /// Deadline for connecting and authenticating to a backend server.
    pub connect_timeout_ms: u64,
    /// On SIGTERM/Ctrl-C, how long sessions may take to finish their current command.
    pub shutdown_grace_ms: u64,
    /// Most connections Sluice opens to one server (in use + idle).
    pub max_backend_connections: u32,
    /// Idle connections kept per server for reuse by later sessions.
    pub pool_max_idle: u32,
    /// Idle connections kept open per server at all times (logged in as the first
    /// `[[users]]` entry), so that a burst of sessions finds warm connections.
    pub pool_min_idle: u32,
    /// How long a session waits for a free connection slot before error 9012.
    pub pool_wait_ms: u64,
    /// Idle connections older than this are closed instead of reused.
    pub pool_idle_timeout_ms: u64,
    /// A server connection that has been open this long is closed (with `COM_QUIT`) when its
    /// session gives it back, instead of being pooled again, or when a lease finds it idle
    /// past it; each connection's limit is 90 to
    /// 100 % of this value, so that connections opened together are not all replaced at once.
    /// Never while a session holds it. 0 = no limit.
    pub pool_max_lifetime_ms: u64,
    /// Client sessions open at once; more are refused with error 1040 before the handshake.
    pub max_client_connections: u32,
    /// A client session with no command for this long is closed (0 = never).
    pub client_idle_timeout_ms: u64,
    /// Prepared statements one session may hold open (error 1461 beyond).
    pub max_prepared_statements_per_session: u32,
    /// `transaction` (default): a session holds a server connection only while a statement
    /// runs, a transaction is open or a pin needs it; `session`: one primary connection for
    /// the session's whole life.
    pub multiplexing: Multiplexing,
    /// After a statement that left warnings, changed rows or used `SQL_CALC_FOUND_ROWS`, the
    /// connection is kept until the next command, at most this long, so that
    /// `SHOW WARNINGS`, `ROW_COUNT()` and `FOUND_ROWS()` read it.
    pub multiplexing_hold_ms: u64,
    /// Statements prepared on one server connection (shared by the sessions that use it);
    /// the least recently used is closed beyond this.
    pub max_prepared_statements_per_connection: u32,
    /// The plugin the greeting names: `mysql_native_password` or `caching_sha2_password`
    /// (clients answer with its token; others are switched per user).
    pub default_auth_plugin: String,
    /// Unix socket through which a new `sluice run` takes the listening sockets over from
    /// the running one (rolling restart without a refused connection): empty (default) = a
    /// path derived from `listen` in `$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR` or the
    /// temporary folder; `"off"` = none.
    pub takeover_socket: String,
    /// MySQL query attributes (`CLIENT_QUERY_ATTRIBUTES`): `relay` (default) offers them when
    /// the primary does, and relays them to the servers that negotiated them; `accept` offers
    /// them whatever the servers (relayed where negotiated, dropped for servers without them,
    /// as MariaDB); `off` never offers them.
    pub query_attributes: QueryAttributes,
    /// Offer clients the compressed protocol (`CLIENT_COMPRESS`, zlib). Sluice inflates and
    /// deflates it itself (it must read the commands), which costs CPU: `false` stops offering
    /// it (clients that ask then talk uncompressed).
    pub compression: bool,
    /// PEM RSA private key (relative to the config file's folder) for caching_sha2_password's
    /// full authentication on links without TLS: with it, a client whose user is not yet in
    /// Sluice's cache proves its password by the RSA exchange, as on MySQL (clients may ask for
    /// the public key). Empty (default): such clients keep the fast path.
    pub rsa_private_key: String,
    /// `[proxy.tls]`: TLS for clients; absent = plaintext only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProxyTlsConfig>,
}

/// `[proxy.tls]`: the certificate clients see, and whether plaintext logins are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// PEM certificate chain (leaf first), relative to the config file's folder.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Refuse clients that do not switch to TLS (error 3159), before reading any credential.
    #[serde(default)]
    pub require: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6033".into(),
            listen_backlog: 4096,
            worker_threads: 0,
            scheduler: Scheduler::PerThread,
            max_packet_bytes: 64 << 20,
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            shutdown_grace_ms: 10_000,
            max_backend_connections: 64,
            pool_max_idle: 64,
            pool_min_idle: 0,
            pool_wait_ms: 2_000,
            pool_idle_timeout_ms: 60_000,
            pool_max_lifetime_ms: 3_600_000,
            max_client_connections: 10_000,
            client_idle_timeout_ms: 28_800_000,
            default_auth_plugin: "mysql_native_password".into(),
            multiplexing: Multiplexing::Transaction,
            multiplexing_hold_ms: 250,
            max_prepared_statements_per_connection: 128,
            max_prepared_statements_per_session: 1024,
            takeover_socket: String::new(),
            compression: true,
            query_attributes: QueryAttributes::Relay,
            rsa_private_key: String::new(),
            tls: None,
        }
    }
}

/// `[proxy] scheduler`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    PerThread,
    WorkStealing,
}

/// `[proxy] multiplexing`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Multiplexing {
    Transaction,
    Session,
}

/// `[proxy] query_attributes`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueryAttributes {
    #[default]
    Relay,
    Accept,
    Off,
}

/// `[[servers]]`: one database server. Its role is discovered, not configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Share of reads relative to the other replicas (0 = never serves reads).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Never promote this server to primary (failover and switchover skip it).
    #[serde(default)]
    pub no_promote: bool,
    /// Among equally advanced failover candidates, the higher priority is promoted.
    #[serde(default)]
    pub priority: i32,
    /// `false`: this server is reached in clear text even when `[backend_tls]` is set (e.g. a
    /// server on the same host); `true`: it must be TLS (an error without `[backend_tls]`);
    /// unset: as `[backend_tls]` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Talk to this server with the compressed protocol (zlib) when it offers it: less traffic
    /// on a slow or metered link, more CPU on both ends. Per hop: clients compress or not as
    /// they ask.
    #[serde(default)]
    pub compress: bool,
    /// Not a key: set on a server a reload removed (its index stays taken so that indices in
    /// the cluster view never change meaning).
    #[serde(skip)]
    pub removed: bool,
}

fn default_weight() -> u32 {
    1
}

/// `[[users]]`: a client login. The same credentials log in to the servers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "string_or_number",
        serialize_with = "mask"
    )]
    pub password: String,
    /// Read the password from this file (first line; relative to the config file's folder)
    /// instead of writing it in the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Client addresses this user may connect from (CIDR); empty = any allowed by
    /// `[firewall]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Sessions this user may have open at once; 0 = no limit (error 1203 beyond it).
    #[serde(default)]
    pub max_connections: u32,
    /// Authentication plugins this user may use, preferred first (`mysql_native_password`,
    /// `caching_sha2_password`); empty = both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_plugins: Vec<String>,
    /// Set for an account read from the database (`[auth] source`): not a key.
    #[serde(skip)]
    pub db: Option<DbCredential>,
}

/// What Sluice knows of a database account's password: never the password itself.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct DbCredential {
    /// The stored `SHA1(SHA1(password))`; `None` = no password.
    pub stored: Option<[u8; 20]>,
    /// `SHA1(password)`, learnt from the client's token once it was verified: what Sluice
    /// logs in to the servers with for this session. Memory only.
    pub stage1: Option<[u8; 20]>,
}

impl std::fmt::Debug for DbCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbCredential(..)")
    }
}

/// What Sluice logs in to a server with, for one user.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// The password (from `[[users]]`).
    Password(&'a [u8]),
    /// `SHA1(password)` of a database account (mysql_native_password only).
    Stage1(&'a [u8; 20]),
    /// A database account without a password.
    Empty,
}

impl std::fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret<'_> {
    /// The caching_sha2_password token for a server's salt; `None` when only the password
    /// itself can make one (a database account's derived credential cannot).
    pub fn sha2_token(&self, salt: &[u8]) -> Option<Vec<u8>> {
        match self {
            Secret::Password(p) => Some(sluice_proto::scramble::sha2_token(p, salt)),
            Secret::Stage1(_) => None,
            Secret::Empty => Some(Vec::new()),
        }
    }

    /// The password, for caching_sha2_password's full authentication over TLS.
    pub fn password(&self) -> Option<&[u8]> {
        match self {
            Secret::Password(p) => Some(p),
            Secret::Stage1(_) => None,
            Secret::Empty => Some(b""),
        }
    }

    /// The mysql_native_password token for a server's salt.
    pub fn native_token(&self, salt: &[u8]) -> Vec<u8> {
        match self {
            Secret::Password(p) => sluice_proto::scramble::native_token(p, salt),
            Secret::Stage1(s) => sluice_proto::scramble::native_token_from_stage1(s, salt),
            Secret::Empty => Vec::new(),
        }
    }
}

impl UserConfig {
    pub fn new(name: &str, password: &str) -> Self {
        UserConfig {
            name: name.into(),
            password: password.into(),
            password_file: None,
            allow: Vec::new(),
            max_connections: 0,
            auth_plugins: Vec::new(),
            db: None,
        }
    }

    /// What logs in to the servers as this user.
    pub fn secret(&self) -> Secret<'_> {
        match &self.db {
            None => Secret::Password(self.password.as_bytes()),
            Some(DbCredential {
                stage1: Some(s), ..
            }) => Secret::Stage1(s),
            Some(_) => Secret::Empty,
        }
    }
}

/// `[monitor]`: the connection that probes the servers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Monitor login; when unset, the first `[[users]]` entry is used.
    pub user: Option<String>,
    #[serde(deserialize_with = "opt_string_or_number", serialize_with = "mask_opt")]
    pub password: Option<String>,
    /// Read the password from this file instead (first line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// How often each server is probed.
    pub interval_ms: u64,
    /// Deadline for one probe (connect and query).
    pub timeout_ms: u64,
    /// Consecutive failed probes before a server counts as down.
    pub down_after: u32,
    /// Consecutive successful probes before a down server counts as up again.
    pub up_after: u32,
    /// `auto`: promote a replica when the primary is confirmed dead. `manual`: detect and
    /// report only (`sluice failover` promotes). `off`: no failure detection.
    pub failover: FailoverMode,
    /// How long a write waits for a primary (during a failover or switchover) before it fails
    /// with error 9001.
    pub failover_hold_ms: u64,
    /// After an automatic failover, automatic failover is blocked this long (anti-flap) unless
    /// an operator acknowledges it. 0 = never blocked.
    pub failover_block_s: u64,
    /// How long a candidate may take to apply its relay log before promotion.
    pub drain_timeout_ms: u64,
    /// An old primary (or a replica left pointing at a dead primary) that comes back is made
    /// a replica of the current primary when its GTID history allows it.
    pub auto_rejoin: bool,
    /// The login replicas use to replicate (`CHANGE MASTER TO MASTER_USER=…`). When unset,
    /// repointed replicas keep the credentials they had, and rejoining an old primary fails.
    pub replication_user: Option<String>,
    #[serde(deserialize_with = "opt_string_or_number", serialize_with = "mask_opt")]
    pub replication_password: Option<String>,
    /// Read `replication_password` from this file (first line) instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_password_file: Option<String>,
    /// The replication heartbeat period Sluice asks for (`MASTER_HEARTBEAT_PERIOD`) when it
    /// points a replica at a primary: a replica that receives neither an event nor a
    /// heartbeat for 4 periods has lost its primary, whatever its IO thread says.
    pub replication_heartbeat_ms: u64,
    /// At start-up (and when a replica's period differs), set `replication_heartbeat_ms` on
    /// replicas that use another period (`STOP SLAVE; CHANGE MASTER TO
    /// MASTER_HEARTBEAT_PERIOD = …; START SLAVE`, a pause of milliseconds) and, on semi-sync
    /// replicas, `rpl_semi_sync_slave_kill_conn_timeout = 1`. Off: replicas keep their
    /// settings until a failover repoints them.
    pub manage_heartbeat_period: bool,
}

/// `[monitor] failover`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    Auto,
    Manual,
    Off,
}

impl FailoverMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Auto => "auto",
            FailoverMode::Manual => "manual",
            FailoverMode::Off => "off",
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            user: None,
            password: None,
            password_file: None,
            interval_ms: 250,
            timeout_ms: 1_000,
            down_after: 3,
            up_after: 2,
            failover: FailoverMode::Auto,
            failover_hold_ms: 5_000,
            failover_block_s: 3_600,
            drain_timeout_ms: 10_000,
            auto_rejoin: true,
            replication_user: None,
            replication_password: None,
            replication_password_file: None,
            replication_heartbeat_ms: 250,
            manage_heartbeat_period: false,
        }
    }
}

impl MonitorConfig {
    /// The credentials the monitor logs in with.
    pub fn credentials<'a>(&'a self, users: &'a [UserConfig]) -> Option<(&'a str, &'a str)> {
        match (&self.user, &self.password) {
            (Some(u), p) => Some((u.as_str(), p.as_deref().unwrap_or(""))),
            (None, _) => users
                .first()
                .map(|u| (u.name.as_str(), u.password.as_str())),
        }
    }
}

impl Config {
    /// Loads `path` (which must exist) over the defaults, then `SLUICE_SECTION__KEY`
    /// environment variables, and validates the result.
    /// `[proxy] rsa_private_key`, read (`None` when not set).
    pub fn rsa_key(&self) -> Result<Option<std::sync::Arc<crate::rsa_auth::ServerKey>>, String> {
        if self.proxy.rsa_private_key.is_empty() {
            return Ok(None);
        }
        crate::rsa_auth::ServerKey::load(&self.base_dir.join(&self.proxy.rsa_private_key))
            .map(|k| Some(std::sync::Arc::new(k)))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_path_buf()));
        }
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file_exact(path))
            .merge(
                Env::prefixed("SLUICE_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            );
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::from_figment(path, e))?;
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(
                || std::path::PathBuf::from("."),
                std::path::Path::to_path_buf,
            );
        config.source = Some(path.to_path_buf());
        config.read_secret_files(path)?;
        config.validate(path)?;
        crate::router::rules::load(&config.routing.rules, &config.base_dir)
            .map_err(|e| ConfigError::Rules(e.to_string()))?;
        // Certificates and keys are read now, for every command: an operator command
        // (switchover, failover) with an unreadable CA must stop, never reach the servers in
        // clear text with the monitor's and replication credentials.
        crate::tls::backend_tls(&config).map_err(|msg| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: "backend_tls".into(),
            msg,
        })?;
        crate::tls::client_acceptor(&config).map_err(|msg| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: "proxy.tls".into(),
            msg,
        })?;
        config.rsa_key().map_err(|msg| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: "proxy.rsa_private_key".into(),
            msg,
        })?;
        Ok(config)
    }

    /// Fills passwords given as `password_file` (first line of the file, relative to the
    /// config file's folder). Setting both `password` and `password_file` is an error.
    fn read_secret_files(&mut self, file: &Path) -> Result<(), ConfigError> {
        let base = self.base_dir.clone();
        let read = |key: String, name: &str, inline_set: bool| -> Result<String, ConfigError> {
            let bad = |msg: String| ConfigError::Invalid {
                file: file.to_path_buf(),
                key: key.clone(),
                msg,
            };
            if inline_set {
                return Err(bad("set either password or password_file, not both".into()));
            }
            let p = base.join(name);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| bad(format!("cannot read {}: {e}", p.display())))?;
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                return Err(bad(format!("{} is empty", p.display())));
            }
            Ok(line)
        };
        for (i, u) in self.users.iter_mut().enumerate() {
            if let Some(f) = &u.password_file {
                u.password = read(
                    format!("users[{i}].password_file"),
                    f,
                    !u.password.is_empty(),
                )?;
            }
        }
        if let Some(f) = &self.monitor.password_file {
            self.monitor.password = Some(read(
                "monitor.password_file".into(),
                f,
                self.monitor.password.is_some(),
            )?);
        }
        if let Some(f) = &self.monitor.replication_password_file {
            self.monitor.replication_password = Some(read(
                "monitor.replication_password_file".into(),
                f,
                self.monitor.replication_password.is_some(),
            )?);
        }
        if let Some(f) = &self.admin.password_file {
            self.admin.password = Some(read(
                "admin.password_file".into(),
                f,
                self.admin.password.is_some(),
            )?);
        }
        Ok(())
    }

    /// Checks what serde cannot: addresses parse, names are unique, limits are sane.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: String, msg: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key,
            msg,
        };
        let cidrs = |key: String, list: &[String]| -> Result<(), ConfigError> {
            for (i, c) in list.iter().enumerate() {
                if Cidr::parse(c).is_none() {
                    return Err(bad(
                        format!("{key}[{i}]"),
                        format!("expected an address or CIDR range such as 10.0.0.0/8 or fd00::/8, found {c:?}"),
                    ));
                }
            }
            Ok(())
        };
        if self.firewall.max_login_failures.is_some() {
            return Err(bad(
                "firewall.max_login_failures".into(),
                "renamed to max_connect_errors, which counts only interrupted or malformed handshakes (wrong passwords are throttled per user and address instead, never blocked): see docs/security.md".into(),
            ));
        }
        cidrs("firewall.allow".into(), &self.firewall.allow)?;
        cidrs("firewall.deny".into(), &self.firewall.deny)?;
        for (i, sv) in self.servers.iter().enumerate() {
            if sv.tls == Some(true) && self.backend_tls.is_none() {
                return Err(bad(
                    format!("servers[{i}].tls"),
                    "true needs a [backend_tls] section (its ca)".into(),
                ));
            }
        }
        if let Some(t) = &self.backend_tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err(bad(
                    "backend_tls.cert".into(),
                    "set both cert and key, or neither".into(),
                ));
            }
        }
        const PLUGINS: [&str; 2] = ["mysql_native_password", "caching_sha2_password"];
        for (i, u) in self.users.iter().enumerate() {
            cidrs(format!("users[{i}].allow"), &u.allow)?;
            for (j, p) in u.auth_plugins.iter().enumerate() {
                if !PLUGINS.contains(&p.as_str()) {
                    return Err(bad(
                        format!("users[{i}].auth_plugins[{j}]"),
                        format!("expected one of {PLUGINS:?}, found {p:?}"),
                    ));
                }
            }
        }
        if !PLUGINS.contains(&self.proxy.default_auth_plugin.as_str()) {
            return Err(bad(
                "proxy.default_auth_plugin".into(),
                format!(
                    "expected one of {PLUGINS:?}, found {:?}",
                    self.proxy.default_auth_plugin
                ),
            ));
        }
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "proxy.listen".into(),
                format!(
                    "expected an IP address and port such as 127.0.0.1:6033, found {:?}",
                    self.proxy.listen
                ),
            ));
        }
        if self.proxy.pool_min_idle > self.proxy.pool_max_idle
            || self.proxy.pool_min_idle > self.proxy.max_backend_connections
        {
            return Err(bad(
                "proxy.pool_min_idle".into(),
                format!(
                    "expected at most pool_max_idle ({}) and max_backend_connections ({}), found {}",
                    self.proxy.pool_max_idle,
                    self.proxy.max_backend_connections,
                    self.proxy.pool_min_idle
                ),
            ));
        }
        if self.proxy.worker_threads > 1024 {
            return Err(bad(
                "proxy.worker_threads".into(),
                format!(
                    "expected 0 (one per CPU) to 1024, found {}",
                    self.proxy.worker_threads
                ),
            ));
        }
        if !(1..=65535).contains(&self.proxy.listen_backlog) {
            return Err(bad(
                "proxy.listen_backlog".into(),
                format!("expected 1 to 65535, found {}", self.proxy.listen_backlog),
            ));
        }
        if !(1024..=(1 << 30)).contains(&self.proxy.max_packet_bytes) {
            return Err(bad(
                "proxy.max_packet_bytes".into(),
                format!(
                    "expected 1024 to 1073741824 bytes, found {}",
                    self.proxy.max_packet_bytes
                ),
            ));
        }
        for (key, v) in [
            (
                "proxy.handshake_timeout_ms",
                self.proxy.handshake_timeout_ms,
            ),
            ("proxy.connect_timeout_ms", self.proxy.connect_timeout_ms),
            ("proxy.pool_wait_ms", self.proxy.pool_wait_ms),
            (
                "proxy.pool_idle_timeout_ms",
                self.proxy.pool_idle_timeout_ms,
            ),
            (
                "proxy.max_backend_connections",
                u64::from(self.proxy.max_backend_connections),
            ),
            ("monitor.interval_ms", self.monitor.interval_ms),
            ("monitor.timeout_ms", self.monitor.timeout_ms),
            ("monitor.down_after", u64::from(self.monitor.down_after)),
            ("monitor.up_after", u64::from(self.monitor.up_after)),
            ("monitor.drain_timeout_ms", self.monitor.drain_timeout_ms),
            (
                "monitor.replication_heartbeat_ms",
                self.monitor.replication_heartbeat_ms,
            ),
        ] {
            if v == 0 {
                return Err(bad(
                    key.into(),
                    if key.ends_with("_ms") {
                        "expected a positive number of milliseconds, found 0".into()
                    } else {
                        "expected a positive number, found 0".into()
                    },
                ));
            }
        }
        match self.admin.listen.parse::<SocketAddr>() {
            Err(_) => {
                return Err(bad(
                    "admin.listen".into(),
                    format!(
                        "expected an IP address and port such as 127.0.0.1:6032, found {:?}",
                        self.admin.listen
                    ),
                ))
            }
            Ok(a) if !a.ip().is_loopback() && !self.admin.allow_remote_plaintext => {
                return Err(bad(
                    "admin.listen".into(),
                    format!(
                        "{a} is not a loopback address and the admin port has no TLS yet: \
                         passwords and commands would cross the network in clear text \
                         (set admin.allow_remote_plaintext = true to accept that)"
                    ),
                ))
            }
            Ok(_) => {}
        }
        if self.admin.password.as_deref() == Some("") {
            return Err(bad(
                "admin.password".into(),
                "an empty admin password is not allowed (leave the key out to keep the admin port off)"
                    .into(),
            ));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen".into(),
                format!(
                    "expected an IP address and port such as 127.0.0.1:6070 (or \"\" for off), found {:?}",
                    self.metrics.listen
                ),
            ));
        }
        if self.servers.is_empty() {
            return Err(bad(
                "servers".into(),
                "expected at least one [[servers]] entry".into(),
            ));
        }
        if self.servers.len() > crate::router::route::MAX_SERVERS {
            return Err(bad(
                "servers".into(),
                format!(
                    "at most {} [[servers]] entries are supported",
                    crate::router::route::MAX_SERVERS
                ),
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() {
                return Err(bad(
                    format!("servers[{i}].name"),
                    "expected a non-empty name".into(),
                ));
            }
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return Err(bad(
                    format!("servers[{i}].name"),
                    format!("duplicate server name {:?}", s.name),
                ));
            }
            if s.weight > 1000 {
                return Err(bad(
                    format!("servers[{i}].weight"),
                    format!("expected 0 to 1000, found {}", s.weight),
                ));
            }
            if !valid_host_port(&s.address) {
                return Err(bad(
                    format!("servers[{i}].address"),
                    format!(
                        "expected host:port such as 127.0.0.1:3306, found {:?}",
                        s.address
                    ),
                ));
            }
        }
        if self.users.is_empty() && !self.auth.source.uses_database() {
            return Err(bad(
                "users".into(),
                "expected at least one [[users]] entry (or [auth] source = \"database\")".into(),
            ));
        }
        if self.auth.source.uses_database() && self.monitor.user.is_none() && self.users.is_empty()
        {
            return Err(bad(
                "monitor.user".into(),
                "[auth] source = \"database\" without [[users]] needs a monitor login (it reads the accounts)".into(),
            ));
        }
        if self.auth.refresh_ms < 100 {
            return Err(bad(
                "auth.refresh_ms".into(),
                format!("expected at least 100, found {}", self.auth.refresh_ms),
            ));
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() || u.name.len() > 80 {
                return Err(bad(
                    format!("users[{i}].name"),
                    "expected a name of 1 to 80 bytes".into(),
                ));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err(bad(
                    format!("users[{i}].name"),
                    format!("duplicate user {:?}", u.name),
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, passwords masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.proxy
            .listen
            .parse()
            .expect("validated by Config::validate")
    }

    pub fn find_user(&self, name: &[u8]) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name.as_bytes() == name)
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// The default config file name.
pub fn default_path() -> PathBuf {
    PathBuf::from("sluice.toml")
}

/// Passwords may look numeric in a file or an environment variable (figment parses env values);
/// accept numbers and keep them as text.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Int(i64),
        UInt(u64),
        Float(f64),
        Bool(bool),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::Int(i) => i.to_string(),
        S::UInt(u) => u.to_string(),
        S::Float(f) => f.to_string(),
        S::Bool(b) => b.to_string(),
    })
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "string_or_number")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// The mask used wherever a secret would be shown.
pub const MASK: &str = "********";

fn mask<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    // Defaults (an empty password) are still masked: absence of a secret is also a secret.
    let _ = v;
    s.serialize_str(MASK)
}

fn mask_opt<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(MASK),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:7000"
[[servers]]
name = "db1"
address = "127.0.0.1:3306"
[[users]]
name = "app"
password = "secret"
"#;

    #[test]
    fn loads_with_defaults() {
        let f = write(GOOD);
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:7000");
        assert_eq!(c.proxy.handshake_timeout_ms, 5000);
        assert_eq!(c.monitor.credentials(&c.users), Some(("app", "secret")));
        let shown = c.to_masked_toml();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(MASK));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let f = write(&GOOD.replace("listen =", "lisen = \"x\"\nlisten ="));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        assert!(e.contains(&f.path().display().to_string()), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let f = write(&format!("{GOOD}\n[monitor]\ninterval_ms = \"fast\"\n"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("monitor.interval_ms"), "{e}");
    }

    #[test]
    fn firewall_addresses_are_checked() {
        let f = write(&format!(
            "{GOOD}allow = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n[firewall]\ndeny = [\"::1\"]\n"
        ));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("users[0].allow[1]"), "{e}");
        let f = write(&format!("{GOOD}[firewall]\nallow = [\"everyone\"]\n"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("firewall.allow[0]"), "{e}");
        let f = write(&format!(
            "{GOOD}max_connections = 5\n[firewall]\nallow = [\"127.0.0.0/8\", \"fd00::/8\"]\nmax_login_failures = 0\n"
        ));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(
            e.contains("firewall.max_login_failures") && e.contains("max_connect_errors"),
            "{e}"
        );
        let f = write(&format!(
            "{GOOD}max_connections = 5\n[firewall]\nallow = [\"127.0.0.0/8\", \"fd00::/8\"]\nmax_connect_errors = 0\n"
        ));
        let c = Config::load(f.path()).unwrap();
        assert_eq!(c.users[0].max_connections, 5);
        assert_eq!(c.firewall.max_connect_errors, 0);
    }

    #[test]
    fn passwords_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.pw"), "s3cret-from-file\n").unwrap();
        std::fs::write(dir.path().join("admin.pw"), "adm1n\n").unwrap();
        let body = GOOD.replace("password = \"secret\"", "password_file = \"app.pw\"")
            + "[admin]\npassword_file = \"admin.pw\"\n";
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, &body).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.users[0].password, "s3cret-from-file");
        assert_eq!(c.admin.password.as_deref(), Some("adm1n"));
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("s3cret") && !shown.contains("adm1n"),
            "{shown}"
        );
        // Both, or a missing file: the key is named.
        std::fs::write(
            &path,
            body.replace(
                "password_file = \"app.pw\"",
                "password = \"x\"\npassword_file = \"app.pw\"",
            ),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("users[0].password_file") && e.contains("not both"),
            "{e}"
        );
        std::fs::write(&path, body.replace("app.pw", "nope.pw")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("users[0].password_file") && e.contains("nope.pw"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_key() {
        let f = write(&GOOD.replace("127.0.0.1:3306", "nohostport"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("servers[0].address"), "{e}");
        assert!(e.contains("host:port"), "{e}");
        let f = write(&GOOD.replace("127.0.0.1:7000", "localhost"));
        let e = Config::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("proxy.listen"), "{e}");
    }

    #[test]
    fn numeric_password_is_text() {
        let f = write(&GOOD.replace("\"secret\"", "1234"));
        assert_eq!(Config::load(f.path()).unwrap().users[0].password, "1234");
    }

    #[test]
    fn missing_file() {
        let e = Config::load(Path::new("/nonexistent/sluice.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/sluice.toml"), "{e}");
    }
}
