//! Rolling restart: a second `sluice run` with the same config takes the listening sockets
//! over from the running one (src/takeover.rs) while clients keep connecting. Asserted: no
//! connection refused or failed and no statement failed for clients that connect, run a
//! statement and leave; a client in a loop of transactions never loses one it began (it may
//! be closed at a transaction boundary and reconnects, as docs/operations.md says); every
//! committed row is on the primary; the old process exits on its own and the new one serves.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::instance::{opts, Instance};
use common::{spec, PASSWORD, USER};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice::sandbox::Topology;

#[derive(Default)]
struct Counts {
    connects: AtomicUsize,
    connect_failures: AtomicUsize,
    statement_failures: AtomicUsize,
    txn_failures: AtomicUsize,
    boundary_closes: AtomicUsize,
    committed: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_over_without_refusing_a_connection() {
    common::init_tracing();
    let topo = Topology::start(spec(1)).await.expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let mut old = Instance::start(&topo, dir.path(), "rolling", "").await;
    let port = old.port;
    {
        let mut c = Conn::new(opts(port, USER, PASSWORD)).await.unwrap();
        c.query_drop(
            "CREATE DATABASE rolling; CREATE TABLE rolling.t (token VARCHAR(40) PRIMARY KEY)",
        )
        .await
        .unwrap();
        let _ = c.disconnect().await;
    }
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Clients that connect, run one statement and leave, a few milliseconds apart.
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                counts.connects.fetch_add(1, Ordering::Relaxed);
                match Conn::new(opts(port, USER, PASSWORD)).await {
                    Ok(mut c) => {
                        let token = format!("short-{w}-{n}");
                        match c
                            .exec_drop("INSERT INTO rolling.t VALUES (?)", (token,))
                            .await
                        {
                            Ok(()) => {
                                counts.committed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("statement failed: {e}");
                                counts.statement_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        let _ = c.disconnect().await;
                    }
                    Err(e) => {
                        eprintln!("connect failed: {e}");
                        counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    // A pooled client running transactions back to back on one connection.
    let txn = {
        let (counts, stop) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut c = Conn::new(opts(port, USER, PASSWORD)).await.unwrap();
            let mut n = 0u64;
            let mut tokens = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                if c.query_drop("BEGIN").await.is_err() {
                    // Closed at a transaction boundary by the draining process: reconnect.
                    counts.boundary_closes.fetch_add(1, Ordering::Relaxed);
                    c = Conn::new(opts(port, USER, PASSWORD))
                        .await
                        .expect("reconnect after a drain");
                    continue;
                }
                let token = format!("txn-{n}");
                let r = async {
                    c.exec_drop("INSERT INTO rolling.t VALUES (?)", (token.clone(),))
                        .await?;
                    c.query_drop("COMMIT").await
                }
                .await;
                match r {
                    Ok(()) => {
                        counts.committed.fetch_add(1, Ordering::Relaxed);
                        tokens.push(token);
                    }
                    Err(e) => {
                        eprintln!("transaction failed: {e}");
                        counts.txn_failures.fetch_add(1, Ordering::Relaxed);
                        c = Conn::new(opts(port, USER, PASSWORD)).await.unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = c.disconnect().await;
            tokens
        })
    };
    common::eventually("clients are running", Duration::from_secs(10), || {
        let c = counts.clone();
        async move { c.committed.load(Ordering::Relaxed) >= 50 }
    })
    .await;
    let log = dir.path().join("new.log");
    let mut new = old.start_again(&log);
    let status = old.exited(Duration::from_secs(60)).await;
    let new_alive = new.try_wait().unwrap().is_none();
    let before_stop = counts.connects.load(Ordering::Relaxed);
    // Go on a little against the new process alone.
    let after = counts.committed.load(Ordering::Relaxed);
    common::eventually("the new process serves", Duration::from_secs(10), || {
        let c = counts.clone();
        async move { c.committed.load(Ordering::Relaxed) >= after + 50 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let txn_tokens = txn.await.unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process did not exit cleanly after the takeover: {status:?}\nnew process log:\n{log_text}"
    );
    assert!(new_alive, "the new process exited:\n{log_text}");
    assert!(
        log_text.contains("took the listeners over"),
        "the new process did not take the listeners over:\n{log_text}"
    );
    let (cf, sf, tf) = (
        counts.connect_failures.load(Ordering::Relaxed),
        counts.statement_failures.load(Ordering::Relaxed),
        counts.txn_failures.load(Ordering::Relaxed),
    );
    eprintln!(
        "takeover: {} connections ({before_stop} before the old process exited), {} rows, {} boundary closes",
        counts.connects.load(Ordering::Relaxed),
        counts.committed.load(Ordering::Relaxed),
        counts.boundary_closes.load(Ordering::Relaxed)
    );
    assert_eq!(cf, 0, "connections refused or failed during the takeover");
    assert_eq!(sf, 0, "statements failed outside a transaction");
    assert_eq!(tf, 0, "transactions failed after BEGIN");
    // Every acknowledged row is on the primary.
    let mut direct = Conn::new(opts(topo.nodes[0].port, USER, PASSWORD))
        .await
        .unwrap();
    let rows: Vec<String> = direct.query("SELECT token FROM rolling.t").await.unwrap();
    let have: std::collections::HashSet<String> = rows.into_iter().collect();
    assert_eq!(
        have.len(),
        counts.committed.load(Ordering::Relaxed),
        "acknowledged rows and rows on the primary differ"
    );
    for t in &txn_tokens {
        assert!(have.contains(t), "committed {t} is missing");
    }
    let _ = new.kill().await;
}
