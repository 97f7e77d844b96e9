//! The integration-test harness: a real primary + replicas (GTID replication) started from the
//! installed MariaDB binaries by `sluice::sandbox` (the same code as `sluice sandbox`), and
//! Sluice in-process on port 0. Everything is torn down on drop, also when a test panics.
//! Missing prerequisites fail the test with the package to install; nothing is skipped.

#![allow(dead_code)]

pub mod certs;
pub mod fault;
pub mod hostile;
pub mod instance;
pub mod raw;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use sluice::config::Config;
use sluice::sandbox::{Topology, TopologySpec};
use sluice::server::{self, Running};

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-pw";

pub struct Harness {
    pub topo: Topology,
    pub proxy: Option<Running>,
    pub addr: SocketAddr,
    pub config: Arc<Config>,
}

/// Logs as `sluice` does (a session's lines in its span), at `SLUICE_LOG` (default `warn`).
pub fn init_tracing() {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = sluice::logging::SessionSpans::new(
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .finish(),
    )
    .try_init();
}

/// The default test topology spec: `replicas` replicas, users `app` and `other`.
pub fn spec(replicas: usize) -> TopologySpec {
    TopologySpec {
        replicas,
        users: vec![
            (USER.into(), PASSWORD.into()),
            ("other".into(), "other-pw".into()),
            ("nopw".into(), String::new()),
        ],
        ..TopologySpec::default()
    }
}

/// [`spec`] with semi-sync replication and the AFTER_SYNC wait point: a commit is
/// acknowledged to the client only once a replica has received it.
pub fn semisync_spec(replicas: usize) -> TopologySpec {
    let mut s = spec(replicas);
    s.extra_cnf = [
        "rpl_semi_sync_master_enabled = ON",
        "rpl_semi_sync_slave_enabled = ON",
        "rpl_semi_sync_master_wait_point = AFTER_SYNC",
        "rpl_semi_sync_master_wait_no_slave = OFF",
        "rpl_semi_sync_master_timeout = 10000",
    ]
    .map(String::from)
    .to_vec();
    s
}

/// The proxy config for a topology (listener on port 0).
pub fn config_for(topo: &Topology) -> Config {
    topo.proxy_config("127.0.0.1:0")
}

impl Harness {
    /// A topology with `replicas` replicas and Sluice in front, ready for clients.
    pub async fn start(replicas: usize) -> Harness {
        Self::start_with(replicas, |_| {}).await
    }

    /// Like [`Harness::start`], with a chance to adjust the proxy config.
    pub async fn start_with(replicas: usize, tweak: impl FnOnce(&mut Config)) -> Harness {
        Self::start_spec(spec(replicas), tweak).await
    }

    /// A topology from `spec` (e.g. with extra server settings) and Sluice in front.
    pub async fn start_spec(spec: TopologySpec, tweak: impl FnOnce(&mut Config)) -> Harness {
        init_tracing();
        let topo = Topology::start(spec)
            .await
            .unwrap_or_else(|e| panic!("cannot start the test topology: {e}"));
        let mut config = config_for(&topo);
        tweak(&mut config);
        let config = Arc::new(config);
        let proxy = server::start(config.clone()).await.expect("start sluice");
        assert!(
            proxy.wait_ready(Duration::from_secs(15)).await,
            "sluice did not discover the primary"
        );
        let addr = proxy.local_addr;
        Harness {
            topo,
            proxy: Some(proxy),
            addr,
            config,
        }
    }

    pub fn primary_addr(&self) -> String {
        self.topo.nodes[0].address()
    }

    pub fn opts(&self, port: u16, user: &str, password: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
    }

    /// mysql_async options for a connection through Sluice.
    pub fn proxy_opts(&self) -> OptsBuilder {
        self.opts(self.addr.port(), USER, PASSWORD)
    }

    /// mysql_async options for a direct connection to the primary.
    pub fn direct_opts(&self) -> OptsBuilder {
        self.opts(self.topo.nodes[0].port, USER, PASSWORD)
    }

    /// mysql_async options for Sluice's admin port (which the harness turns on) as `admin`.
    pub fn admin_opts(&self, password: &str) -> OptsBuilder {
        let addr = self
            .proxy
            .as_ref()
            .unwrap()
            .admin_addr
            .expect("admin port on");
        self.opts(addr.port(), "admin", password)
    }

    /// A connection to Sluice's admin port, logged in with the sandbox's admin password.
    pub async fn admin_conn(&self) -> Conn {
        Conn::new(self.admin_opts(sluice::sandbox::ADMIN_PASSWORD))
            .await
            .expect("admin login")
    }

    pub async fn proxy_conn(&self) -> Conn {
        Conn::new(self.proxy_opts())
            .await
            .expect("connect through sluice")
    }

    pub async fn direct_conn(&self) -> Conn {
        Conn::new(self.direct_opts())
            .await
            .expect("connect to the primary")
    }

    /// Root SQL on a node (over its socket).
    pub async fn root_sql(&self, node: usize, sql: &str) -> String {
        self.topo
            .sql(node, sql)
            .await
            .unwrap_or_else(|e| panic!("root SQL {sql:?}: {e}"))
    }

    /// A global status counter of a node.
    pub async fn status_counter(&self, node: usize, name: &str) -> u64 {
        let out = self
            .root_sql(node, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .await;
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("status {name}: {out:?}"))
    }

    pub async fn shutdown(mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

/// The `mariadb` (or `mysql`) command-line client.
pub fn cli_binary() -> PathBuf {
    [
        "/usr/bin/mariadb",
        "/usr/bin/mysql",
        "/usr/local/bin/mariadb",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect(
        "the mariadb command-line client is missing: install the Debian package `mariadb-client`",
    )
}

/// Runs the CLI in batch mode against `port` and returns (exit ok, stdout, stderr).
/// Async, so that the in-process proxy keeps running while the client waits.
pub async fn cli(port: u16, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(cli_binary())
        .arg("--no-defaults")
        .arg("--protocol=tcp")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg(format!("-u{USER}"))
        .arg(format!("-p{PASSWORD}"))
        .args(args)
        .output()
        .await
        .expect("run the mariadb client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Python 3 with PyMySQL, or a failure naming the package.
pub fn python_with_pymysql() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import pymysql"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "python3 with PyMySQL is missing: `pip install pymysql` (or the Debian package python3-pymysql)");
    "python3"
}

/// A bound on waiting for something in a test.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Waits (up to 10 s) until a statement starting with `prefix` runs on `node` (seen in its
/// process list), instead of sleeping and hoping it started.
pub async fn running_on(h: &Harness, node: usize, prefix: &str) {
    let q = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '{}%' AND COMMAND = 'Query'",
        prefix.replace('\'', "''")
    );
    eventually(
        &format!("{prefix:?} running on node {node}"),
        Duration::from_secs(10),
        || {
            let q = q.clone();
            async move { h.root_sql(node, &q).await.trim() != "0" }
        },
    )
    .await;
}

/// Rows of a query as maps column → value (for admin-port tables).
pub async fn table(
    c: &mut Conn,
    sql: &str,
) -> Vec<std::collections::HashMap<String, Option<String>>> {
    let rows: Vec<Row> = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .map(|r| {
            let cols: Vec<String> = r
                .columns_ref()
                .iter()
                .map(|c| c.name_str().into_owned())
                .collect();
            cols.into_iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        name,
                        r.get_opt::<Option<String>, _>(i)
                            .and_then(Result::ok)
                            .flatten(),
                    )
                })
                .collect()
        })
        .collect()
}

/// Server connections the application users (`app`, `other`) hold on node `node`.
pub async fn app_connections(h: &Harness, node: usize) -> usize {
    h.root_sql(
        node,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ('app', 'other')",
    )
    .await
    .trim()
    .parse()
    .unwrap()
}

/// A login as the harness's `app` user for Sluice's own backend client (`sluice::backend::
/// connect`), asking for every capability of the 4-byte field: a raw client for tests at the
/// protocol level.
pub fn app_login() -> sluice::backend::LoginParams<'static> {
    sluice::backend::LoginParams {
        user: b"app",
        secret: sluice::config::Secret::Password(b"app-pw"),
        database: None,
        capabilities: u64::from(u32::MAX),
        charset: 45,
        max_packet: 1 << 24,
        connect_attrs: None,
    }
}

/// A plain HTTP/1.0 GET of `path` on `addr` (the metrics port); the whole response, headers
/// included, as text.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
