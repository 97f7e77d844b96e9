//! The discovery loop: probes every server every `[monitor] interval_ms` (each probe bounded by
//! `[monitor] timeout_ms`) and publishes a new [`ClusterView`] when anything changed.
//!
//! A server is the primary when it answers with `read_only = OFF`. When several servers are
//! writable, none is chosen: routing writes to one of two writable servers is how split brain
//! starts, so Sluice refuses writes and logs the conflict instead.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::watch;

use crate::backend::{self, LoginParams};
use crate::cluster::{ClusterTx, ClusterView, Role, ServerHello};
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
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let old = tx.borrow().clone();
        let mut view = (*old).clone();
        for (i, s) in config.servers.iter().enumerate() {
            let probe = probe(&mut conns[i], &s.address, &user, &password, timeout).await;
            let st = &mut view.servers[i];
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
            x.role != y.role || x.healthy != y.healthy || x.last_error != y.last_error
        })
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
