//! One monitor connection per server, and what one probe of a server reads: `read_only`,
//! version, GTID positions, the replication status (MariaDB and MySQL column names), semi-sync
//! settings, and Sluice's own generation row. Every call is bounded by `[monitor] timeout_ms`
//! (mysql_async has no timeouts of its own).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Row;

use super::error::MonitorError;
use super::gtid::GtidPos;

/// The advisory lock a Sluice instance must hold on a majority of the servers to promote.
pub const LOCK_NAME: &str = "sluice.failover";

/// `sluice.cluster`: one row, replicated to every server, saying which failover generation the
/// cluster is in, and whether a switchover is about to pause writes.
pub const CLUSTER_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice.cluster (\
     id TINYINT UNSIGNED NOT NULL PRIMARY KEY, \
     generation BIGINT UNSIGNED NOT NULL, \
     primary_name VARCHAR(255) NOT NULL, \
     kind VARCHAR(16) NOT NULL, \
     changed_at_ms BIGINT UNSIGNED NOT NULL, \
     acknowledged TINYINT NOT NULL DEFAULT 0, \
     switchover_until_ms BIGINT UNSIGNED NOT NULL DEFAULT 0) ENGINE=InnoDB";
pub const HEARTBEAT_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice.heartbeat \
     (id INT UNSIGNED NOT NULL PRIMARY KEY, ts_ms BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB";

/// The server's flavour decides which statements and variables exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    MySql,
}

impl Flavor {
    /// The statements that make a server read-only (`true`) or writable (`false`).
    pub fn set_read_only(self, on: bool) -> &'static [&'static str] {
        match (self, on) {
            (Flavor::MariaDb, true) => &["SET GLOBAL read_only = ON"],
            (Flavor::MariaDb, false) => &["SET GLOBAL read_only = OFF"],
            (Flavor::MySql, true) => &["SET GLOBAL super_read_only = ON"],
            (Flavor::MySql, false) => &[
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
        }
    }
}

/// The monitor's connection to one server.
#[derive(Default)]
pub struct ServerConn {
    pub conn: Option<mysql_async::Conn>,
    pub flavor: Option<Flavor>,
    /// This connection holds [`LOCK_NAME`].
    pub locked: bool,
    /// `sluice.heartbeat` and `sluice.cluster` exist (checked on this connection).
    pub schema_ready: bool,
    /// `[backend_tls]`: the probe connects with TLS, verifying the server like the data path.
    pub tls: Option<std::sync::Arc<crate::tls::BackendTls>>,
}

/// Sluice's generation row as one server has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationRow {
    pub generation: u64,
    pub primary_name: String,
    pub kind: String,
    pub changed_at_ms: u64,
    pub acknowledged: bool,
    pub switchover_until_ms: u64,
}

/// `SHOW REPLICA STATUS`, reduced to what the monitor needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replication {
    /// `Yes`, `Connecting` or `No`.
    pub io_running: String,
    pub sql_running: bool,
    pub source_host: String,
    pub source_port: u16,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub seconds_behind: Option<u64>,
    /// Last GTID received (MariaDB `Gtid_IO_Pos`; MySQL `Retrieved_Gtid_Set`).
    pub io_pos: Option<GtidPos>,
    /// Where the IO thread has read the source's binlog to (`Master_Log_File:Read_Master_Log_Pos`):
    /// moves with every event received, also inside a long transaction.
    pub read_pos: String,
    /// Heartbeats received from the source since replication started (MariaDB
    /// `Slave_received_heartbeats`, from `SHOW ALL SLAVES STATUS`).
    pub heartbeats: Option<u64>,
    /// The heartbeat period the source was asked for (`Slave_heartbeat_period`), ms.
    pub heartbeat_period_ms: Option<u64>,
}

impl Replication {
    pub fn io_yes(&self) -> bool {
        self.io_running.eq_ignore_ascii_case("yes")
    }

    pub fn source(&self) -> String {
        format!("{}:{}", self.source_host, self.source_port)
    }
}

/// Everything one probe read.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub read_only: bool,
    pub version: String,
    pub server_id: u64,
    /// MariaDB `gtid_current_pos`, MySQL `gtid_executed`.
    pub current_pos: GtidPos,
    /// Applied by replication (MariaDB `gtid_slave_pos`; MySQL `gtid_executed`).
    pub applied_pos: GtidPos,
    pub binlog_pos: GtidPos,
    pub replication: Option<Replication>,
    pub generation: Option<GenerationRow>,
    pub semi_sync_master: bool,
    pub semi_sync_slave: bool,
    /// The server's defaults for sessions: `wait_timeout`, `interactive_timeout` (seconds).
    pub idle_timeouts: Option<(u64, u64)>,
}

impl Probe {
    /// The most advanced position this server holds (received or applied).
    pub fn received_pos(&self) -> GtidPos {
        let base = self.applied_pos.max(&self.binlog_pos);
        match self.replication.as_ref().and_then(|r| r.io_pos.as_ref()) {
            Some(io) => base.max(io),
            None => base,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.as_ref().map_or(0, |g| g.generation)
    }
}

/// mysql_async's TLS options for `[backend_tls]`: the same verification as the data path.
pub fn ssl_opts(t: &crate::tls::BackendTls) -> mysql_async::SslOpts {
    let mut o = mysql_async::SslOpts::default()
        .with_root_certs(vec![t.ca.clone().into()])
        .with_danger_skip_domain_validation(!t.verify_server_name);
    if let Some((cert, key)) = &t.identity {
        o = o.with_client_identity(Some(mysql_async::ClientIdentity::new(
            cert.clone().into(),
            key.clone().into(),
        )));
    }
    if let Some(name) = &t.server_name {
        o = o.with_danger_tls_hostname_override(Some(name.clone()));
    }
    o
}

/// Runs `fut` within `timeout`.
pub async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, MonitorError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(MonitorError::Timeout {
            what: what.to_string(),
            after: timeout,
        }),
    }
}

fn text(row: &Row, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        row.get_opt::<Option<String>, _>(*n)
            .and_then(Result::ok)
            .flatten()
    })
}

fn at(row: &Row, i: usize) -> Option<String> {
    row.get_opt::<Option<String>, _>(i)
        .and_then(Result::ok)
        .flatten()
}

impl ServerConn {
    /// Connects when needed (bounded) and returns the connection.
    pub async fn connect(
        &mut self,
        address: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<&mut mysql_async::Conn, MonitorError> {
        if self.conn.is_none() {
            self.locked = false;
            self.schema_ready = false;
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| "bad address".to_string())?;
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host.to_string())
                .tcp_port(port.parse().map_err(|_| "bad port".to_string())?)
                .user(Some(user.to_string()))
                .pass(Some(password.to_string()))
                .prefer_socket(false)
                // A lock held by a monitor that vanished without closing its socket is
                // released when the server drops the idle connection.
                .setup(vec!["SET SESSION wait_timeout = 30".to_string()])
                .ssl_opts(self.tls.as_deref().map(ssl_opts));
            let mut c = bounded(timeout, "connect", mysql_async::Conn::new(opts)).await?;
            let version: Option<String> =
                bounded(timeout, "version query", c.query_first("SELECT @@version")).await?;
            let flavor = if version.unwrap_or_default().contains("MariaDB") {
                Flavor::MariaDb
            } else {
                Flavor::MySql
            };
            self.flavor = Some(flavor);
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Drops the connection (and with it any lock it held).
    pub fn reset(&mut self) {
        self.conn = None;
        self.locked = false;
        self.schema_ready = false;
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor.unwrap_or(Flavor::MariaDb)
    }

    /// Reads the server's state. On error the connection is dropped.
    pub async fn probe(
        &mut self,
        address: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Probe, MonitorError> {
        let r = self.probe_inner(address, user, password, timeout).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn probe_inner(
        &mut self,
        address: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Probe, MonitorError> {
        self.connect(address, user, password, timeout).await?;
        let flavor = self.flavor();
        let c = self.conn.as_mut().expect("connected");
        let vars = match flavor {
            Flavor::MariaDb => {
                "SELECT @@read_only, @@version, @@server_id, @@gtid_current_pos, \
                 @@gtid_slave_pos, @@gtid_binlog_pos, @@rpl_semi_sync_master_enabled, \
                 @@rpl_semi_sync_slave_enabled, @@global.wait_timeout, \
                 @@global.interactive_timeout"
            }
            Flavor::MySql => {
                "SELECT @@read_only OR @@super_read_only, @@version, @@server_id, \
                 @@gtid_executed, @@gtid_executed, @@gtid_executed, 0, 0, \
                 @@global.wait_timeout, @@global.interactive_timeout"
            }
        };
        let row: Option<Row> = bounded(timeout, "probe", c.query_first(vars)).await?;
        let row = row.ok_or("empty probe result")?;
        let pos = |i| GtidPos::parse(&at(&row, i).unwrap_or_default()).unwrap_or_default();
        let mut p = Probe {
            read_only: at(&row, 0).is_some_and(|v| v != "0"),
            version: at(&row, 1).unwrap_or_default(),
            server_id: at(&row, 2).and_then(|v| v.parse().ok()).unwrap_or(0),
            current_pos: pos(3),
            applied_pos: pos(4),
            binlog_pos: pos(5),
            semi_sync_master: at(&row, 6).is_some_and(|v| v == "1"),
            semi_sync_slave: at(&row, 7).is_some_and(|v| v == "1"),
            idle_timeouts: at(&row, 8)
                .and_then(|w| w.parse().ok())
                .zip(at(&row, 9).and_then(|i| i.parse().ok())),
            ..Probe::default()
        };
        p.replication = replication_status(c, flavor, timeout).await?;
        p.generation = read_generation(c, timeout).await?;
        Ok(p)
    }
}

/// `SHOW REPLICA STATUS` (or `SHOW SLAVE STATUS` on servers without it); `None` when the
/// server is not configured as a replica.
pub async fn replication_status(
    c: &mut mysql_async::Conn,
    flavor: Flavor,
    timeout: Duration,
) -> Result<Option<Replication>, MonitorError> {
    // MariaDB's SHOW ALL SLAVES STATUS adds the heartbeat counter and period; it lists every
    // named connection: Sluice uses the default one (empty name).
    let row: Option<Row> = match flavor {
        Flavor::MariaDb => {
            let rows: Vec<Row> = bounded(
                timeout,
                "replication status",
                c.query::<Row, _>("SHOW ALL SLAVES STATUS"),
            )
            .await?;
            rows.into_iter()
                .find(|r| text(r, &["Connection_name"]).unwrap_or_default().is_empty())
        }
        Flavor::MySql => match bounded(
            timeout,
            "replication status",
            c.query_first::<Row, _>("SHOW REPLICA STATUS"),
        )
        .await
        {
            Ok(r) => r,
            Err(e) if e.server_code() == Some(1064) => {
                bounded(
                    timeout,
                    "replication status",
                    c.query_first("SHOW SLAVE STATUS"),
                )
                .await?
            }
            Err(e) => return Err(e),
        },
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let num = |names: &[&str]| text(&row, names).and_then(|v| v.parse::<u64>().ok());
    let io_pos = match flavor {
        Flavor::MariaDb => text(&row, &["Gtid_IO_Pos"]),
        Flavor::MySql => text(&row, &["Retrieved_Gtid_Set"]),
    }
    .and_then(|t| GtidPos::parse(&t));
    let r = Replication {
        io_running: text(&row, &["Slave_IO_Running", "Replica_IO_Running"]).unwrap_or_default(),
        sql_running: text(&row, &["Slave_SQL_Running", "Replica_SQL_Running"])
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        source_host: text(&row, &["Master_Host", "Source_Host"]).unwrap_or_default(),
        source_port: num(&["Master_Port", "Source_Port"]).unwrap_or(0) as u16,
        last_io_errno: num(&["Last_IO_Errno"]).unwrap_or(0) as u32,
        last_io_error: text(&row, &["Last_IO_Error"]).unwrap_or_default(),
        last_sql_errno: num(&["Last_SQL_Errno"]).unwrap_or(0) as u32,
        last_sql_error: text(&row, &["Last_SQL_Error"]).unwrap_or_default(),
        seconds_behind: num(&["Seconds_Behind_Master", "Seconds_Behind_Source"]),
        io_pos,
        read_pos: format!(
            "{}:{}",
            text(&row, &["Master_Log_File", "Source_Log_File"]).unwrap_or_default(),
            text(&row, &["Read_Master_Log_Pos", "Read_Source_Log_Pos"]).unwrap_or_default()
        ),
        heartbeats: num(&["Slave_received_heartbeats"]),
        heartbeat_period_ms: text(&row, &["Slave_heartbeat_period"])
            .and_then(|v| v.parse::<f64>().ok())
            .map(|s| (s * 1000.0).round() as u64),
    };
    // A server whose replication was reset reports an empty host.
    if r.source_host.is_empty() {
        return Ok(None);
    }
    Ok(Some(r))
}

/// Sluice's generation row on this server; `None` when it has none yet.
pub async fn read_generation(
    c: &mut mysql_async::Conn,
    timeout: Duration,
) -> Result<Option<GenerationRow>, MonitorError> {
    let q = "SELECT generation, primary_name, kind, changed_at_ms, acknowledged, \
             switchover_until_ms FROM sluice.cluster WHERE id = 1";
    let r: Result<Option<Row>, mysql_async::Error> =
        match tokio::time::timeout(timeout, c.query_first(q)).await {
            Ok(r) => r,
            Err(_) => return Err("generation query timed out".into()),
        };
    match r {
        Ok(Some(row)) => {
            let n = |i| at(&row, i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Ok(Some(GenerationRow {
                generation: n(0),
                primary_name: at(&row, 1).unwrap_or_default(),
                kind: at(&row, 2).unwrap_or_default(),
                changed_at_ms: n(3),
                acknowledged: n(4) != 0,
                switchover_until_ms: n(5),
            }))
        }
        Ok(None) => Ok(None),
        // No `sluice` schema (1049) or table (1146) yet.
        Err(mysql_async::Error::Server(s)) if matches!(s.code, 1049 | 1146) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Runs statements one by one on a monitor connection, each bounded.
pub async fn run_sql(
    c: &mut mysql_async::Conn,
    timeout: Duration,
    statements: &[&str],
) -> Result<(), MonitorError> {
    for s in statements {
        bounded(timeout, s, c.query_drop(*s))
            .await
            .map_err(|e| MonitorError::Statement {
                statement: s.to_string(),
                source: Box::new(e),
            })?;
    }
    Ok(())
}

/// A single text value (first column of the first row).
pub async fn query_value(
    c: &mut mysql_async::Conn,
    timeout: Duration,
    sql: &str,
) -> Result<Option<String>, MonitorError> {
    let row: Option<Row> = bounded(timeout, sql, c.query_first(sql)).await?;
    Ok(row.and_then(|r| at(&r, 0)))
}

/// `Rpl_semi_sync_master_status`, `…_clients` and `…_no_tx` (commits acknowledged to the
/// client without any replica's acknowledgement).
pub async fn semi_sync_status(
    c: &mut mysql_async::Conn,
    timeout: Duration,
) -> Result<(bool, u32, u64), MonitorError> {
    let rows: Vec<(String, String)> = bounded(
        timeout,
        "semi-sync status",
        c.query(
            "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME IN ('RPL_SEMI_SYNC_MASTER_STATUS', \
             'RPL_SEMI_SYNC_MASTER_CLIENTS', 'RPL_SEMI_SYNC_MASTER_NO_TX')",
        ),
    )
    .await?;
    let mut out = (false, 0u32, 0u64);
    for (name, value) in rows {
        match name.to_ascii_uppercase().as_str() {
            "RPL_SEMI_SYNC_MASTER_STATUS" => out.0 = value.eq_ignore_ascii_case("ON"),
            "RPL_SEMI_SYNC_MASTER_CLIENTS" => out.1 = value.parse().unwrap_or(0),
            "RPL_SEMI_SYNC_MASTER_NO_TX" => out.2 = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(out)
}

/// Creates Sluice's schema on the primary if missing.
pub async fn ensure_schema(sc: &mut ServerConn, timeout: Duration) -> Result<(), MonitorError> {
    if sc.schema_ready {
        return Ok(());
    }
    let c = sc.conn.as_mut().ok_or("not connected")?;
    run_sql(
        c,
        timeout,
        &[
            "CREATE DATABASE IF NOT EXISTS sluice",
            HEARTBEAT_TABLE_DDL,
            CLUSTER_TABLE_DDL,
        ],
    )
    .await?;
    sc.schema_ready = true;
    Ok(())
}

/// Escapes a value for a single-quoted SQL string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
