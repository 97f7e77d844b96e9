//! One server of a topology: its directory, config file, port and process.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::binaries::{copy_dir, Binaries};
use super::SandboxError;

pub struct Node {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub server_id: u32,
    pub replica: bool,
    child: Option<Child>,
    /// Extra my.cnf lines (a restart rewrites the file with them).
    pub extra_cnf: Vec<String>,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Node {
    pub(super) fn create(
        root: &Path,
        name: &str,
        server_id: u32,
        replica: bool,
        template: &Path,
        extra_cnf: &[String],
    ) -> Result<Node, SandboxError> {
        let dir = root.join(name);
        let io = |e| SandboxError::Io(dir.display().to_string(), e);
        std::fs::create_dir_all(dir.join("tmp")).map_err(io)?;
        if !dir.join("data").exists() {
            copy_dir(template, &dir.join("data"))?;
        }
        Ok(Node {
            name: name.to_string(),
            port: 0,
            dir,
            server_id,
            replica,
            child: None,
            extra_cnf: extra_cnf.to_vec(),
        })
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn write_cnf(&self) -> Result<PathBuf, SandboxError> {
        let d = self.dir.display();
        let mut cnf = format!(
            "[mysqld]\n\
             user = root\n\
             datadir = {d}/data\n\
             tmpdir = {d}/tmp\n\
             socket = {d}/mysqld.sock\n\
             pid-file = {d}/mysqld.pid\n\
             log-error = {d}/error.log\n\
             port = {port}\n\
             bind-address = 127.0.0.1\n\
             server-id = {id}\n\
             log-bin = mysql-bin\n\
             binlog-format = ROW\n\
             gtid-strict-mode = ON\n\
             log-slave-updates = ON\n\
             skip-name-resolve\n\
             max-allowed-packet = 64M\n\
             innodb-buffer-pool-size = 64M\n\
             innodb-log-file-size = 8M\n\
             innodb-flush-log-at-trx-commit = 2\n\
             sync-binlog = 0\n\
             performance-schema = OFF\n\
             local-infile = ON\n\
             max-connections = 500\n\
             skip-slave-start\n",
            port = self.port,
            id = self.server_id,
        );
        if self.replica {
            cnf.push_str("read-only = ON\n");
        }
        for l in &self.extra_cnf {
            cnf.push_str(l);
            cnf.push('\n');
        }
        let path = self.dir.join("my.cnf");
        let mut f = std::fs::File::create(&path)
            .map_err(|e| SandboxError::Io(path.display().to_string(), e))?;
        f.write_all(cnf.as_bytes())
            .map_err(|e| SandboxError::Io(path.display().to_string(), e))?;
        Ok(path)
    }

    /// Starts the server on a free port and waits (up to 60 s) until it accepts connections.
    /// Retries with another port if the one picked was taken meanwhile.
    pub async fn start(&mut self, bins: &Binaries) -> Result<(), SandboxError> {
        let mut last = String::new();
        for _attempt in 0..3 {
            if self.port == 0 || !last.is_empty() {
                self.port = free_port();
            }
            let cnf = self.write_cnf()?;
            let _ = std::fs::remove_file(self.socket());
            let log_len = std::fs::metadata(self.dir.join("error.log")).map_or(0, |m| m.len());
            let mut cmd = std::process::Command::new(&bins.server);
            cmd.arg(format!("--defaults-file={}", cnf.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: a Ctrl-C in the terminal reaches Sluice, which then
                // stops the servers in order.
                .process_group(0);
            // If this process dies without stopping its servers (a test killed by a timeout,
            // `kill -9` of the sandbox), the kernel sends them SIGTERM.
            // SAFETY: prctl is async-signal-safe and touches only the child being set up.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .map_err(|e| SandboxError::Io(bins.server.display().to_string(), e))?;
            self.child = Some(child);
            match self.wait_up(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(detail) => {
                    self.stop();
                    let log =
                        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                    let tail: String = log
                        .get(log_len as usize..)
                        .unwrap_or("")
                        .lines()
                        .rev()
                        .take(8)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    last = format!("{detail}\n{tail}");
                    if !(tail.contains("Address already in use")
                        || tail.contains("Do you already have another"))
                    {
                        break;
                    }
                }
            }
        }
        Err(SandboxError::Start {
            name: self.name.clone(),
            detail: last,
        })
    }

    async fn wait_up(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("server exited with {st}"));
            }
            if self.socket().exists()
                && tokio::net::TcpStream::connect(self.address()).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "not accepting connections after {} s",
            limit.as_secs()
        ))
    }

    /// Runs SQL as root over the socket with the command-line client.
    pub async fn sql(&self, bins: &Binaries, sql: &str) -> Result<String, SandboxError> {
        self.sql_args(bins, &["-N", "-B"], sql).await
    }

    /// Like [`Node::sql`], one `name: value` line per column (vertical output).
    pub async fn sql_vertical(&self, bins: &Binaries, sql: &str) -> Result<String, SandboxError> {
        self.sql_args(bins, &["-E"], sql).await
    }

    async fn sql_args(
        &self,
        bins: &Binaries,
        args: &[&str],
        sql: &str,
    ) -> Result<String, SandboxError> {
        let out = tokio::process::Command::new(&bins.client)
            .arg("--no-defaults")
            .arg("--protocol=socket")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("-uroot")
            .args(args)
            .args(["-e", sql])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| SandboxError::Io(bins.client.display().to_string(), e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(SandboxError::Sql {
                name: self.name.clone(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Stops the server: SIGTERM, wait up to 20 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on the pid of a child we started and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    /// `kill -STOP`: the server hangs with its sockets open (a stalled disk, a black hole).
    /// Returns once every thread of the server is stopped (at most 2 s): from then on it
    /// answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
        let Some(pid) = self.pid() else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|dir| {
                    dir.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat"))
                            .ok()
                            .and_then(|st| {
                                // "pid (comm) S ...": the state follows the last ')'.
                                let rest = &st[st.rfind(')')? + 1..];
                                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
                            })
                            .unwrap_or(true)
                    })
                })
                .unwrap_or(true);
            if stopped {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// `kill -CONT` after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
