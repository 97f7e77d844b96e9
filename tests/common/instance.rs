//! Sluice as a separate `sluice run` process (as deployed), for tests that measure the
//! process itself: its RSS and file descriptors, apart from the test's own clients.

use std::process::Stdio;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use sluice::sandbox::{node_free_port, Topology, ADMIN_PASSWORD};

use super::{PASSWORD, USER};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

pub struct Instance {
    child: tokio::process::Child,
    pub port: u16,
    pub admin: u16,
    pub config: std::path::PathBuf,
}

impl Instance {
    /// Starts `sluice run` for `topo` with its own ports; `extra` is appended to the config
    /// file (after the `[monitor]` section, whose keys it may add to).
    pub async fn start(
        topo: &Topology,
        dir: &std::path::Path,
        name: &str,
        extra: &str,
    ) -> Instance {
        Self::start_env(topo, dir, name, extra, &[]).await
    }

    /// [`Instance::start`] with extra environment variables (e.g. `SLUICE_FAILPOINT`).
    pub async fn start_env(
        topo: &Topology,
        dir: &std::path::Path,
        name: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Instance {
        // The ports are free when chosen, but another test's server or client may take one
        // before this process binds it: a start that fails with "in use" is retried with new
        // ports (bounded); any other failure shows the process's log.
        let config = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        for attempt in 1..=3 {
            let (port, admin, metrics) = (node_free_port(), node_free_port(), node_free_port());
            let text = topo.config_toml(&format!("127.0.0.1:{port}")).replace(
                "[admin]\n",
                &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
            ) + extra
                + &format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n");
            std::fs::write(&config, text).unwrap();
            let child = tokio::process::Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .expect("start sluice run");
            let mut i = Instance {
                child,
                port,
                admin,
                config: config.clone(),
            };
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if Conn::new(opts(port, USER, PASSWORD)).await.is_ok() {
                    return i;
                }
                if let Ok(Some(status)) = i.child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("in use") && attempt < 3 {
                        break;
                    }
                    panic!("sluice run exited ({status}) before accepting clients:\n{text}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if i.child.try_wait().ok().flatten().is_none() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("sluice run did not accept clients within 30 s; its log:\n{text}");
            }
        }
        panic!("sluice run found no free ports in 3 attempts");
    }

    /// A second `sluice run` with the same config file (a rolling restart), its log kept.
    pub fn start_again(&self, log: &std::path::Path) -> tokio::process::Child {
        tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice run")
    }

    /// Waits (bounded) for the process to exit on its own.
    pub async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub async fn admin(&self) -> Conn {
        Conn::new(opts(self.admin, "admin", ADMIN_PASSWORD))
            .await
            .expect("admin login")
    }

    /// The primary's name as this instance sees it.
    pub async fn primary(&self) -> Option<String> {
        let mut a = self.admin().await;
        let rows: Vec<mysql_async::Row> = a
            .query("SELECT * FROM servers WHERE role = 'primary'")
            .await
            .unwrap_or_default();
        let _ = a.disconnect().await;
        rows.first()
            .and_then(|r| r.get_opt::<String, _>("name"))
            .and_then(Result::ok)
    }

    pub async fn resources(&self) -> Resources {
        let mut a = self.admin().await;
        let sessions: Vec<mysql_async::Row> = a.query("SHOW SESSIONS").await.unwrap();
        let servers: Vec<mysql_async::Row> = a.query("SHOW SERVERS").await.unwrap();
        let _ = a.disconnect().await;
        let col = |r: &mysql_async::Row, n: &str| -> usize {
            r.get_opt::<String, _>(n)
                .and_then(Result::ok)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let pid = self.pid();
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0);
        Resources {
            rss_kib,
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
            sessions: sessions.len(),
            pool: servers
                .iter()
                .map(|r| col(r, "conn_in_use") + col(r, "conn_idle"))
                .sum(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Resources {
    pub rss_kib: usize,
    pub fds: usize,
    pub sessions: usize,
    pub pool: usize,
}

impl Resources {
    /// Within 5 % of `base` (and a small absolute slack for tiny counts).
    pub fn within(&self, base: &Resources) -> bool {
        let ok = |now: usize, then: usize, slack: usize| now <= then + (then / 20).max(slack);
        ok(self.rss_kib, base.rss_kib, 1024)
            && ok(self.fds, base.fds, 2)
            && self.sessions <= base.sessions
            && ok(self.pool, base.pool, 2)
    }
}

pub fn opts(port: u16, user: &str, pw: &str) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(pw))
        .prefer_socket(false)
}
