//! The discovery loop: probes every server every `[monitor] interval_ms` (each probe bounded by
//! `[monitor] timeout_ms`) and publishes a new [`ClusterView`] when anything changed.
//!
//! Replication lag is measured, not guessed: on the primary the loop writes Sluice's own clock
//! (ms since the epoch) into `sluice.heartbeat`; on each replica it reads the replicated stamp
//! back, and lag = now − stamp. A replica whose replication threads are not both running, or
//! whose lag cannot be read, has no lag figure and receives no reads. When the heartbeat cannot
//! be written (or read), `Seconds_Behind_Master` is the fallback (NULL = unknown).
//!
//! A server is the primary when it answers with `read_only = OFF`. When several servers are
//! writable, none is chosen: routing writes to one of two writable servers is how split brain
//! starts, so Sluice refuses writes and logs the conflict instead.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::backend::{self, LoginParams};
use crate::cluster::{ClusterTx, ClusterView, LagSource, Role, ServerHello};
use crate::config::Config;

/// Runs until `shutdown` flips to true.
pub async fn run_discovery(
    config: Arc<Config>,
    tx: ClusterTx,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(config.monitor.interval_ms);
    let timeout = Duration::from_millis(config.monitor.timeout_ms);
    let (user, password) = config
        .monitor
        .credentials(&config.users)
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .unwrap_or_default();
    let mut conns: Vec<Option<mysql_async::Conn>> = config.servers.iter().map(|_| None).collect();
    let mut heartbeat_failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let old = tx.borrow().clone();
        let mut view = (*old).clone();
        let mut heartbeat_written = false;
        for (i, s) in config.servers.iter().enumerate() {
            let probe = probe(&mut conns[i], &s.address, &user, &password, timeout).await;
            let st = &mut view.servers[i];
            st.lag_ms = None;
            st.lag_source = LagSource::None;
            match probe {
                Ok((read_only, version)) => {
                    st.role = if read_only {
                        Role::Replica
                    } else {
                        Role::Primary
                    };
                    st.healthy = true;
                    st.version = Some(version);
                    st.last_error = None;
                    if let (false, Some(c)) = (read_only, conns[i].as_mut()) {
                        match write_heartbeat(c, timeout).await {
                            Ok(()) => heartbeat_written = true,
                            Err(e) if !heartbeat_failing => {
                                tracing::warn!(server = %s.name, error = %e, "cannot write the heartbeat; using Seconds_Behind_Master");
                            }
                            Err(_) => {}
                        }
                    }
                }
                Err(e) => {
                    if st.healthy || st.last_error.is_none() {
                        tracing::warn!(server = %s.name, error = %e, "server probe failed");
                    }
                    conns[i] = None;
                    st.role = Role::Unknown;
                    st.healthy = false;
                    st.last_error = Some(e);
                }
            }
        }
        heartbeat_failing = !heartbeat_written;
        for (i, st) in view.servers.iter_mut().enumerate() {
            if st.role != Role::Replica {
                continue;
            }
            if let Some(c) = conns[i].as_mut() {
                match measure_lag(c, heartbeat_written, timeout).await {
                    Ok((lag, source)) => {
                        st.lag_ms = lag;
                        st.lag_source = source;
                    }
                    Err(e) => {
                        st.lag_ms = None;
                        st.lag_source = LagSource::None;
                        tracing::debug!(server = %st.name, error = %e, "lag probe failed");
                    }
                }
            }
        }
        let writable: Vec<usize> = view
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == Role::Primary)
            .map(|(i, _)| i)
            .collect();
        let primary = match writable.as_slice() {
            [one] => Some(*one),
            [] => None,
            many => {
                if old.primary.is_some() || view.servers.iter().all(|s| s.last_error.is_none()) {
                    let names: Vec<&str> = many
                        .iter()
                        .map(|&i| view.servers[i].name.as_str())
                        .collect();
                    tracing::error!(servers = ?names, "several servers are writable (read_only=OFF); refusing to pick a primary");
                }
                None
            }
        };
        if primary != old.primary {
            view.primary_hello = None;
            match primary {
                Some(i) => {
                    tracing::info!(server = %view.servers[i].name, address = %view.servers[i].address, "primary discovered")
                }
                None => tracing::warn!("no primary available"),
            }
        }
        view.primary = primary;
        if let (Some(i), None) = (primary, &view.primary_hello) {
            view.primary_hello = hello(
                &config,
                &view.servers[i].name,
                &view.servers[i].address,
                &user,
                &password,
                timeout,
            )
            .await;
        }
        if changed(&old, &view) {
            tx.send_replace(Arc::new(view));
        }
    }
    for c in conns.into_iter().flatten() {
        let _ = c.disconnect().await;
    }
}

fn changed(a: &ClusterView, b: &ClusterView) -> bool {
    a.primary != b.primary
        || a.primary_hello != b.primary_hello
        || a.servers.iter().zip(&b.servers).any(|(x, y)| {
            x.role != y.role
                || x.healthy != y.healthy
                || x.last_error != y.last_error
                || x.lag_ms != y.lag_ms
        })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes Sluice's clock into the heartbeat row on the primary (creating it on first use).
async fn write_heartbeat(c: &mut mysql_async::Conn, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let r = c
            .exec_drop(
                "REPLACE INTO sluice.heartbeat (id, ts_ms) VALUES (1, ?)",
                (now_ms(),),
            )
            .await;
        if let Err(mysql_async::Error::Server(e)) = &r {
            // 1049 unknown database, 1146 unknown table: create them once.
            if e.code == 1049 || e.code == 1146 {
                c.query_drop(
                    "CREATE DATABASE IF NOT EXISTS sluice; \
                     CREATE TABLE IF NOT EXISTS sluice.heartbeat \
                     (id INT UNSIGNED NOT NULL PRIMARY KEY, ts_ms BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB",
                )
                .await?;
                return c
                    .exec_drop(
                        "REPLACE INTO sluice.heartbeat (id, ts_ms) VALUES (1, ?)",
                        (now_ms(),),
                    )
                    .await;
            }
        }
        r
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("heartbeat write timed out".into()),
    }
}

/// A replica's lag: the heartbeat when it is being written, else Seconds_Behind_Master; `None`
/// when replication is not running or the figure is NULL.
async fn measure_lag(
    c: &mut mysql_async::Conn,
    heartbeat_written: bool,
    timeout: Duration,
) -> Result<(Option<u64>, LagSource), String> {
    let fut = async {
        let status: Option<mysql_async::Row> = c.query_first("SHOW SLAVE STATUS").await?;
        let Some(row) = status else {
            // Not replicating at all.
            return Ok((None, LagSource::None));
        };
        let text = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| {
                row.get_opt::<Option<String>, _>(*n)
                    .and_then(Result::ok)
                    .flatten()
            })
        };
        let io = text(&["Slave_IO_Running", "Replica_IO_Running"]);
        let sql = text(&["Slave_SQL_Running", "Replica_SQL_Running"]);
        if io.as_deref() != Some("Yes") || sql.as_deref() != Some("Yes") {
            return Ok((None, LagSource::None));
        }
        if heartbeat_written {
            let stamp: Result<Option<u64>, _> = c
                .query_first("SELECT ts_ms FROM sluice.heartbeat WHERE id = 1")
                .await;
            if let Ok(Some(ts)) = stamp {
                return Ok((Some(now_ms().saturating_sub(ts)), LagSource::Heartbeat));
            }
        }
        let sbm = text(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|s| s.parse::<u64>().ok());
        Ok((sbm.map(|s| s * 1000), LagSource::SecondsBehindMaster))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e: mysql_async::Error| e.to_string()),
        Err(_) => Err("lag probe timed out".into()),
    }
}

/// `SELECT @@read_only, @@version` on one server, connecting first when needed.
async fn probe(
    conn: &mut Option<mysql_async::Conn>,
    address: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<(bool, String), String> {
    let fut = async {
        if conn.is_none() {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| "bad address".to_string())?;
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host.to_string())
                .tcp_port(port.parse().map_err(|_| "bad port".to_string())?)
                .user(Some(user.to_string()))
                .pass(Some(password.to_string()))
                .prefer_socket(false);
            *conn = Some(
                mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let c = conn.as_mut().expect("connected above");
        let row: Option<(i64, String)> = c
            .query_first("SELECT @@read_only, @@version")
            .await
            .map_err(|e| e.to_string())?;
        let (ro, version) = row.ok_or_else(|| "empty probe result".to_string())?;
        Ok((ro != 0, version))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {} ms", timeout.as_millis())),
    }
}

/// Logs in to the primary with Sluice's own client code to learn its handshake.
async fn hello(
    config: &Config,
    name: &str,
    address: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Option<ServerHello> {
    let params = LoginParams {
        user: user.as_bytes(),
        password: password.as_bytes(),
        database: None,
        capabilities: u64::from(u32::MAX),
        charset: 45,
        max_packet: config.proxy.max_packet_bytes.min(u64::from(u32::MAX)) as u32,
        connect_attrs: None,
    };
    match backend::connect(name, address, params, timeout).await {
        Ok((conn, _)) => {
            let h = ServerHello {
                version: conn.handshake.server_version.clone(),
                capabilities: conn.handshake.capabilities,
                charset: conn.handshake.charset,
            };
            conn.quit().await;
            Some(h)
        }
        Err(e) => {
            tracing::warn!(server = %name, error = %e, "cannot log in to the primary to read its handshake");
            None
        }
    }
}
