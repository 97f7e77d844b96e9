//! Local MariaDB (or MySQL) topologies: a primary and N replicas with GTID replication, started
//! from the installed server binaries in a directory of their own, on free loopback ports.
//!
//! `sluice sandbox` and the integration tests use this same code. Servers are stopped by the
//! pid of the process that was started (never by name: other servers run on the machine), and
//! a [`Topology`] stops its servers when dropped, also when a test panics.

mod binaries;
mod node;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use binaries::Binaries;
pub use node::{free_port as node_free_port, Node};

/// What to start.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    pub replicas: usize,
    /// Application users `(name, password)`, created on the primary (and replicated).
    pub users: Vec<(String, String)>,
    /// The monitor's login.
    pub monitor: (String, String),
    /// Where to put the servers; `None` = a temporary directory removed on drop.
    pub dir: Option<PathBuf>,
    /// Extra `my.cnf` lines for every server (e.g. `max_allowed_packet = 64M`).
    pub extra_cnf: Vec<String>,
}

impl Default for TopologySpec {
    fn default() -> Self {
        TopologySpec {
            replicas: 2,
            users: vec![("app".into(), "app".into())],
            monitor: ("sluice_monitor".into(), "sluice-monitor-pw".into()),
            dir: None,
            extra_cnf: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} not found (looked for {names} in PATH, /usr/sbin, /usr/local/sbin): install the Debian package `{package}`")]
    Missing {
        what: &'static str,
        names: String,
        package: &'static str,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("server {name} failed to start: {detail}")]
    Start { name: String, detail: String },
    #[error("SQL on {name} failed: {detail}")]
    Sql { name: String, detail: String },
    #[error("replication on {name} did not catch up: {detail}")]
    Replication { name: String, detail: String },
}

/// A running primary + replicas. `nodes[0]` starts as the primary.
pub struct Topology {
    pub nodes: Vec<Node>,
    pub spec: TopologySpec,
    pub bins: Binaries,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// The sandbox's admin password (user `admin`).
pub const ADMIN_PASSWORD: &str = "admin-pw";

/// The replication login the replicas use.
pub const REPL_USER: &str = "sluice_repl";
const REPL_PASSWORD: &str = "sluice-repl-pw";

impl Topology {
    /// Starts the servers, creates the users on the primary, starts replication and waits until
    /// every replica has applied the primary's binlog.
    pub async fn start(spec: TopologySpec) -> Result<Topology, SandboxError> {
        let bins = Binaries::find()?;
        let (root, tmp) = match &spec.dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| SandboxError::Io(d.display().to_string(), e))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("sluice-topology-")
                    .tempdir()
                    .map_err(|e| SandboxError::Io("temporary directory".into(), e))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let template = bins.template_datadir().await?;
        let mut topo = Topology {
            nodes: Vec::new(),
            spec: spec.clone(),
            bins,
            root,
            _tmp: tmp,
        };
        for i in 0..=spec.replicas {
            let name = format!("db{}", i + 1);
            let node = Node::create(
                &topo.root,
                &name,
                i as u32 + 1,
                i > 0,
                &template,
                &spec.extra_cnf,
            )?;
            topo.nodes.push(node);
        }
        // Start all servers concurrently; each waits for its own port.
        let bins = topo.bins.clone();
        let starts = topo.nodes.iter_mut().map(|n| n.start(&bins));
        for r in futures::future::join_all(starts).await {
            r?;
        }
        topo.setup_primary().await?;
        for i in 1..topo.nodes.len() {
            topo.replicate_from(i, 0).await?;
        }
        topo.wait_replicas_caught_up(Duration::from_secs(30))
            .await?;
        Ok(topo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A Sluice configuration for this topology: its servers, users and monitor login, the
    /// client listener on `listen`, everything else at its default.
    pub fn proxy_config(&self, listen: &str) -> crate::config::Config {
        use crate::config::{Config, MonitorConfig, ProxyConfig, ServerConfig, UserConfig};
        let ephemeral = listen.ends_with(":0");
        Config {
            proxy: ProxyConfig {
                listen: listen.to_string(),
                ..ProxyConfig::default()
            },
            servers: self
                .nodes
                .iter()
                .map(|n| ServerConfig {
                    name: n.name.clone(),
                    address: n.address(),
                    weight: 1,
                    no_promote: false,
                    priority: 0,
                    tls: None,
                    compress: false,
                    removed: false,
                })
                .collect(),
            users: self
                .spec
                .users
                .iter()
                .map(|(u, p)| UserConfig::new(u, p))
                .collect(),
            monitor: MonitorConfig {
                user: Some(self.spec.monitor.0.clone()),
                password: Some(self.spec.monitor.1.clone()),
                replication_user: Some(REPL_USER.to_string()),
                replication_password: Some(REPL_PASSWORD.to_string()),
                // Throwaway servers: Sluice may set the replicas' heartbeat period.
                manage_heartbeat_period: true,
                ..MonitorConfig::default()
            },
            routing: Default::default(),
            // The sandbox's admin login (a throwaway password, printed by `sluice sandbox`).
            // A listener on port 0 (tests) gets the admin and metrics ports on port 0 too.
            admin: crate::config::AdminConfig {
                listen: if ephemeral {
                    "127.0.0.1:0".into()
                } else {
                    crate::config::AdminConfig::default().listen
                },
                password: Some(ADMIN_PASSWORD.into()),
                ..Default::default()
            },
            metrics: crate::config::MetricsConfig {
                listen: if ephemeral {
                    "127.0.0.1:0".into()
                } else {
                    crate::config::MetricsConfig::default().listen
                },
            },
            firewall: Default::default(),
            log: Default::default(),
            auth: Default::default(),
            backend_tls: None,
            base_dir: std::path::PathBuf::from("."),
            source: None,
        }
    }

    /// [`Topology::proxy_config`] as a TOML file, with the sandbox's real (throwaway)
    /// passwords, for the CLI (`sluice switchover --config …`).
    pub fn config_toml(&self, listen: &str) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = format!("[proxy]\nlisten = {}\n\n", q(listen));
        for n in &self.nodes {
            t.push_str(&format!(
                "[[servers]]\nname = {}\naddress = {}\n\n",
                q(&n.name),
                q(&n.address())
            ));
        }
        for (u, p) in &self.spec.users {
            t.push_str(&format!(
                "[[users]]\nname = {}\npassword = {}\n\n",
                q(u),
                q(p)
            ));
        }
        let (mu, mp) = &self.spec.monitor;
        t.push_str(&format!(
            "[admin]\nuser = \"admin\"\npassword = {}\n\n",
            q(ADMIN_PASSWORD)
        ));
        t.push_str(&format!(
            "[monitor]\nuser = {}\npassword = {}\nreplication_user = {}\nreplication_password = {}\nmanage_heartbeat_period = true\n",
            q(mu),
            q(mp),
            q(REPL_USER),
            q(REPL_PASSWORD)
        ));
        t
    }

    /// Runs SQL as root over the node's socket; returns the output (tab-separated, no headers).
    pub async fn sql(&self, node: usize, sql: &str) -> Result<String, SandboxError> {
        self.nodes[node].sql(&self.bins, sql).await
    }

    /// Like [`Topology::sql`], with column names: one `name: value` line per column.
    pub async fn sql_vertical(&self, node: usize, sql: &str) -> Result<String, SandboxError> {
        self.nodes[node].sql_vertical(&self.bins, sql).await
    }

    async fn setup_primary(&self) -> Result<(), SandboxError> {
        let mut sql = format!(
            "CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}';\
             GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%';"
        );
        let (mu, mp) = &self.spec.monitor;
        sql.push_str(&format!(
            "CREATE USER '{mu}'@'%' IDENTIFIED BY '{mp}';GRANT ALL PRIVILEGES ON *.* TO '{mu}'@'%';"
        ));
        for (u, p) in &self.spec.users {
            sql.push_str(&format!(
                "CREATE USER '{u}'@'%' IDENTIFIED BY '{p}';\
                 GRANT ALL PRIVILEGES ON *.* TO '{u}'@'%';"
            ));
            if self.bins.is_mariadb {
                // GRANT ALL includes READ_ONLY ADMIN in 10.11, which lets writes through
                // read_only=ON on a replica.
                sql.push_str(&format!("REVOKE READ_ONLY ADMIN ON *.* FROM '{u}'@'%';"));
            }
        }
        self.sql(0, &sql).await.map(|_| ())
    }

    /// Points node `replica` at node `primary` by GTID and starts replication.
    pub async fn replicate_from(&self, replica: usize, primary: usize) -> Result<(), SandboxError> {
        let p = &self.nodes[primary];
        let sql = format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
             MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=0.25; \
             START SLAVE;",
            p.port
        );
        self.sql(replica, &sql).await.map(|_| ())
    }

    /// Waits (bounded) until every replica has applied the primary's current GTID position.
    pub async fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<(), SandboxError> {
        let pos = self.sql(0, "SELECT @@gtid_binlog_pos").await?;
        let pos = pos.trim();
        for i in 1..self.nodes.len() {
            let out = self
                .sql(
                    i,
                    &format!("SELECT MASTER_GTID_WAIT('{pos}', {})", timeout.as_secs()),
                )
                .await?;
            if out.trim() != "0" {
                let status = self
                    .sql(i, "SHOW SLAVE STATUS\\G")
                    .await
                    .unwrap_or_default();
                return Err(SandboxError::Replication {
                    name: self.nodes[i].name.clone(),
                    detail: format!(
                        "MASTER_GTID_WAIT('{pos}') returned {}; {status}",
                        out.trim()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Stops every server (SIGTERM, then SIGKILL after a bound).
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop_all();
    }
}
