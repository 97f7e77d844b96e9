//! Wires the parts together: binds the listener, starts the monitor, serves clients, and shuts
//! everything down in order. No globals: tests start as many proxies as they like on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::{self, ClusterRx};
use crate::config::Config;
use crate::frontend;
use crate::monitor;
use crate::state::Shared;

/// A running proxy.
pub struct Running {
    /// Where the client listener is bound (useful with port 0).
    pub local_addr: SocketAddr,
    pub cluster: ClusterRx,
    /// Operator commands (switchover, failover, acknowledge) for this instance's monitor.
    pub monitor: monitor::MonitorHandle,
    /// Where the admin port listens (when `[admin] password` is set).
    pub admin_addr: Option<SocketAddr>,
    /// Where the metrics endpoint listens (unless `[metrics] listen = ""`).
    pub metrics_addr: Option<SocketAddr>,
    /// The state the sessions share (for reloads).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    monitor_task: JoinHandle<()>,
    sessions_done: mpsc::Receiver<()>,
    grace: Duration,
    /// Duplicates of the client, admin and metrics listeners, for a takeover.
    handover: [Option<std::os::fd::OwnedFd>; 3],
    /// The sessions' event loops (`[proxy] scheduler = "per-thread"`); they stop when this
    /// is dropped, after the sessions finished.
    loops: Option<Arc<crate::loops::SessionLoops>>,
}

/// Binds `[proxy] listen` (and the admin and metrics ports) and starts serving.
pub async fn start(config: Arc<Config>) -> std::io::Result<Running> {
    start_inheriting(config, crate::takeover::Listeners::default()).await
}

/// Like `start`, serving on listeners taken over from a running process where they match
/// the configured addresses (the others are bound anew, and unmatched ones closed).
pub async fn start_inheriting(
    config: Arc<Config>,
    inherited: crate::takeover::Listeners,
) -> std::io::Result<Running> {
    let matching = |l: Option<std::net::TcpListener>, want: &str| {
        let l = l?;
        let want: SocketAddr = want.parse().ok()?;
        if l.local_addr().ok()? == want {
            TcpListener::from_std(l).ok()
        } else {
            None
        }
    };
    let listener = match matching(inherited.client, &config.proxy.listen) {
        Some(l) => l,
        None => bind_clients(config.listen_addr(), config.proxy.listen_backlog).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("[proxy] listen {}: {e}", config.proxy.listen),
            )
        })?,
    };
    let admin = matching(inherited.admin, &config.admin.listen);
    let metrics = matching(inherited.metrics, &config.metrics.listen);
    start_on(config, listener, admin, metrics).await
}

/// The client listener, with `[proxy] listen_backlog` pending connections (the kernel caps it
/// at `net.core.somaxconn`): thousands of clients connecting at once (an application fleet
/// restarting) must not overflow the accept queue.
fn bind_clients(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn bind(what: &str, addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what} {addr}: {e}")))
}

/// Serves on an already bound client listener.
pub async fn start_with_listener(
    config: Arc<Config>,
    listener: TcpListener,
) -> std::io::Result<Running> {
    start_on(config, listener, None, None).await
}

async fn start_on(
    config: Arc<Config>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    metrics: Option<TcpListener>,
) -> std::io::Result<Running> {
    let admin_listener = match (&config.admin.password, admin) {
        (Some(_), Some(l)) => Some(l),
        (Some(_), None) => Some(bind("[admin] listen", &config.admin.listen).await?),
        (None, _) => {
            tracing::warn!("the admin port is off: set [admin] password to enable it (there is no default password)");
            None
        }
    };
    let metrics_listener = match (config.metrics.listen.as_str(), metrics) {
        ("", _) => None,
        (_, Some(l)) => Some(l),
        (addr, None) => Some(bind("[metrics] listen", addr).await?),
    };
    let dup = |l: Option<&TcpListener>| l.and_then(|l| crate::takeover::dup(l).ok());
    let handover = [
        dup(Some(&listener)),
        dup(admin_listener.as_ref()),
        dup(metrics_listener.as_ref()),
    ];
    let local_addr = listener.local_addr()?;
    let rules = crate::router::rules::load(&config.routing.rules, &config.base_dir)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tls = crate::tls::client_acceptor(&config).map_err(std::io::Error::other)?;
    let backend_tls = crate::tls::backend_tls(&config).map_err(std::io::Error::other)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_rx_admin = shutdown_rx.clone();
    let shutdown_rx_metrics = shutdown_rx.clone();
    let (cluster_tx, cluster_rx) = cluster::channel(&config.servers);
    let (monitor_handle, monitor) = monitor::spawn(config.clone(), cluster_tx, shutdown_rx.clone());
    let shared = Arc::new(Shared::new(
        config.clone(),
        rules,
        tls,
        cluster_rx.clone(),
        shutdown_rx,
    ));
    for (slot, s) in shared.routing().slots.iter().zip(&config.servers) {
        slot.pool
            .set_transport(crate::tls::for_server(backend_tls.as_ref(), s), s.compress);
    }
    let (done_tx, done_rx) = mpsc::channel(1);
    let mut admin_addr = None;
    if let Some(l) = admin_listener {
        admin_addr = l.local_addr().ok();
        let ctx = Arc::new(crate::admin::AdminCtx::new(
            shared.clone(),
            monitor_handle.clone(),
        ));
        tokio::spawn(crate::admin::serve(l, ctx, shutdown_rx_admin));
        tracing::info!(listen = ?admin_addr, "admin port is listening");
    }
    let mut metrics_addr = None;
    if let Some(l) = metrics_listener {
        metrics_addr = l.local_addr().ok();
        tokio::spawn(crate::metrics::http::serve(
            l,
            shared.clone(),
            shutdown_rx_metrics,
        ));
        tracing::info!(listen = ?metrics_addr, "metrics endpoint is listening");
    }
    let loops = match config.proxy.scheduler {
        crate::config::Scheduler::PerThread => Some(Arc::new(crate::loops::SessionLoops::start(
            crate::loops::count(config.proxy.worker_threads),
        )?)),
        crate::config::Scheduler::WorkStealing => None,
    };
    if let Some(l) = &loops {
        shared.metrics.worker_threads.set(l.len() as i64);
    }
    tokio::spawn(crate::state::keep_pools_warm(
        shared.clone(),
        shared.shutdown.clone(),
        loops.clone(),
    ));
    tokio::spawn(crate::state::refresh_accounts(
        shared.clone(),
        shared.shutdown.clone(),
    ));
    tokio::spawn(crate::state::cut_deposed(
        shared.clone(),
        shared.shutdown.clone(),
    ));
    tokio::spawn(return_freed_memory(shared.shutdown.clone()));
    let listener = tokio::spawn(frontend::serve(
        listener,
        shared.clone(),
        done_tx,
        loops.clone(),
    ));
    tracing::info!(listen = %local_addr, "sluice is listening");
    Ok(Running {
        local_addr,
        cluster: cluster_rx,
        monitor: monitor_handle,
        admin_addr,
        metrics_addr,
        shared,
        shutdown: shutdown_tx,
        listener,
        monitor_task: monitor,
        sessions_done: done_rx,
        grace: Duration::from_millis(config.proxy.shutdown_grace_ms),
        handover,
        loops,
    })
}

impl Running {
    /// Fresh duplicates of the listeners, for the takeover thread.
    fn handover_fds(&self) -> std::io::Result<[Option<std::os::fd::OwnedFd>; 3]> {
        let d = |f: &Option<std::os::fd::OwnedFd>| f.as_ref().map(|f| f.try_clone()).transpose();
        Ok([
            d(&self.handover[0])?,
            d(&self.handover[1])?,
            d(&self.handover[2])?,
        ])
    }

    /// Waits until a primary is known and its handshake was read, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.cluster.clone();
        tokio::time::timeout(timeout, async {
            loop {
                {
                    let v = rx.borrow_and_update();
                    if v.primary.is_some() && v.primary_hello.is_some() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.cluster.borrow().primary.is_some()
    }

    /// Stops accepting, lets sessions finish their current command (up to
    /// `[proxy] shutdown_grace_ms`), then stops the monitor.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.shared.sessions.drain_all();
        let _ = self.listener.await;
        // A reload may have changed it.
        self.grace = Duration::from_millis(self.shared.config().proxy.shutdown_grace_ms);
        let drained = tokio::time::timeout(self.grace, self.sessions_done.recv()).await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "sessions still busy after the grace period; closing them"
            );
        }
        let _ = self.monitor_task.await;
        // Sessions still running after the grace period end with their loops.
        drop(self.loops.take());
        tracing::info!("sluice stopped");
    }
}

/// Runs until `signal` resolves, then shuts down gracefully. SIGHUP reloads the config.
pub async fn run(
    config: Arc<Config>,
    signal: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let path = crate::takeover::socket_path(&config.proxy.takeover_socket, config.listen_addr());
    let inherited = match path.clone() {
        Some(p) => tokio::task::spawn_blocking(move || crate::takeover::request(&p))
            .await
            .map_err(std::io::Error::other)?
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the running process did not hand its listeners over; binding them anew");
                None
            }),
        None => None,
    };
    let (listeners, handing) = match inherited {
        Some(mut i) => (std::mem::take(&mut i.listeners), Some(i)),
        None => (crate::takeover::Listeners::default(), None),
    };
    let running = start_inheriting(config, listeners).await?;
    if let Some(h) = handing {
        // The old process stops accepting once this one can route writes (or after a bound,
        // so that an upgrade during an outage of the primary still completes).
        running.wait_ready(Duration::from_secs(10)).await;
        match h.ready() {
            Ok(()) => {
                tracing::info!("took the listeners over from the running process, which now drains")
            }
            Err(e) => tracing::warn!(error = %e, "could not tell the previous process to drain"),
        }
    }
    let (taken_tx, mut taken_rx) = tokio::sync::oneshot::channel();
    let mut owned_path = None;
    if let Some(p) = path {
        match crate::takeover::bind(&p) {
            Ok(ul) => {
                owned_path = inode(&p).map(|ino| (p.clone(), ino));
                let fds = running.handover_fds()?;
                // A plain thread: it blocks in accept() and must not hold the runtime open.
                std::thread::spawn(move || {
                    let _ = taken_tx.send(crate::takeover::serve_one(&ul, &fds));
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "no takeover socket: a restart will have to rebind the ports")
            }
        }
    }
    sd_notify("READY=1\nSTATUS=serving");
    let shared = running.shared.clone();
    let monitor = running.monitor.clone();
    tokio::pin!(signal);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut taken = false;
    let mut watching = true;
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(()) = hup.recv() => {
                sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
                let _ = crate::reload::reload(&shared, &monitor).await;
                sd_notify("READY=1\nSTATUS=serving");
            }
            r = &mut taken_rx, if watching => {
                watching = false;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!("a new process took the listeners over; draining");
                        taken = true;
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "the takeover socket failed; a restart will have to rebind the ports"),
                    // No takeover socket.
                    Err(_) => {}
                }
            }
        }
    }
    // The path belongs to the new process after a takeover; otherwise it is removed, unless
    // another process replaced it meanwhile.
    if let Some((p, ino)) = owned_path {
        if !taken && inode(&p) == Some(ino) {
            let _ = std::fs::remove_file(&p);
        }
    }
    tracing::info!("shutting down");
    sd_notify("STOPPING=1\nSTATUS=draining sessions");
    running.shutdown().await;
    Ok(())
}

/// Tells systemd (`Type=notify`) about the service's state through `$NOTIFY_SOCKET`; nothing
/// when not started by systemd. Best effort: a failure is logged at debug level.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "sd_notify: no socket");
            return;
        }
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let r = match bytes.strip_prefix(b"@") {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Every 10 s, hands the memory freed since to the operating system (glibc's `malloc_trim`).
/// Without it, the allocator keeps the pages of sessions that have ended in its per-thread
/// arenas: after a storm of 60,000 logins the heap was back to 1.5 MiB (heaptrack: nothing
/// leaked that grows with logins) but the resident size stayed 3 MiB above its baseline.
/// A trim of a heap this size takes microseconds.
async fn return_freed_memory(shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = crate::state::Ticker::new(std::time::Duration::from_secs(10), shutdown);
    while ticker.next().await {
        trim_heap();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only returns free pages of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// CLOCK_MONOTONIC in microseconds (systemd wants it with RELOADING=1).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn inode(p: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(p).ok().map(|m| m.ino())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
