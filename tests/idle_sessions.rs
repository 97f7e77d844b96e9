//! Idle client sessions are cheap: sessions that logged in and ran a statement, then stay
//! idle, hold no server connection and add at most 16 KiB each to Sluice's resident size (the
//! bound multiplexing promises: 100,000 sessions in under 1.6 GiB). Sluice runs as its own
//! process (`sluice run`, the test build), so its resident size is its own; the sessions come
//! from 8 loopback source addresses. `bench/multiplex.py --phases idle` measures the same
//! with 15,000 sessions on the release build.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::instance::Instance;
use common::raw::RawConn;
use common::{spec, PASSWORD, USER};
use mysql_async::prelude::Queryable;
use sluice::sandbox::Topology;

/// The most resident memory one idle session may add.
const MAX_KIB_PER_SESSION: usize = 16;

/// Opens `n` sessions (32 at a time) that each log in and run `SELECT 1`; returns them open.
async fn open_idle(port: u16, n: usize) -> Vec<RawConn> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32u8)
        .map(|k| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    let src = Ipv4Addr::new(127, 0, 0, 2 + k % 8);
                    let (mut c, reply) = RawConn::login_from(src, port, USER, PASSWORD)
                        .await
                        .expect("connect");
                    assert_eq!(reply.first(), Some(&0), "login: {reply:02x?}");
                    let answer = c.command(b"\x03SELECT 1").await;
                    assert_ne!(answer[0].1.first(), Some(&0xFF), "{answer:02x?}");
                    mine.push(c);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hold_no_server_connection_and_little_memory() {
    common::init_tracing();
    let n: usize = std::env::var("SLUICE_IDLE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let topo = Topology::start(spec(0)).await.expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Instance::start_env(
        &topo,
        dir.path(),
        "idle",
        "",
        &[("SLUICE_PROXY__MAX_BACKEND_CONNECTIONS", "8")],
    )
    .await;
    // Warm-up: the pool, the session registry and the allocator's arenas grow once.
    let warm = open_idle(sluice.port, 300).await;
    drop(warm);
    common::eventually(
        "the warm-up sessions end",
        Duration::from_secs(30),
        || async { sluice.resources().await.sessions == 0 },
    )
    .await;
    let base = sluice.resources().await;

    let open = open_idle(sluice.port, n).await;
    let mut with = sluice.resources().await;
    for _ in 0..50 {
        if with.sessions >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        with = sluice.resources().await;
    }
    assert_eq!(with.sessions, n, "every session is open: {with:?}");
    // Idle sessions hold no server connection: none is in use (the pool's idle ones are
    // held by no session).
    let mut admin = sluice.admin().await;
    let servers: Vec<mysql_async::Row> = admin.query("SHOW SERVERS").await.unwrap();
    let _ = admin.disconnect().await;
    let in_use: usize = servers
        .iter()
        .map(|r| {
            r.get_opt::<String, _>("conn_in_use")
                .and_then(Result::ok)
                .and_then(|v| v.parse::<usize>().ok())
                .expect("SHOW SERVERS has conn_in_use")
        })
        .sum();
    assert_eq!(in_use, 0, "idle sessions hold no connection: {with:?}");
    let per_session_kib = with.rss_kib.saturating_sub(base.rss_kib) as f64 / n as f64;
    eprintln!(
        "{n} idle sessions: Sluice RSS {} KiB before, {} KiB with them: {per_session_kib:.1} KiB per session; server connections {}",
        base.rss_kib, with.rss_kib, with.pool
    );
    assert!(
        per_session_kib <= MAX_KIB_PER_SESSION as f64,
        "{per_session_kib:.1} KiB per idle session (bound {MAX_KIB_PER_SESSION} KiB): before {base:?}, with {with:?}"
    );
    // Every session still answers.
    for mut c in open.into_iter().step_by(97) {
        let answer = c.command(b"\x03SELECT 2").await;
        assert_ne!(answer[0].1.first(), Some(&0xFF), "{answer:02x?}");
    }
}
