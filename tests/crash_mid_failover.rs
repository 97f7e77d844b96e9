//! Sluice killed in the middle of a failover (issue 14): `SLUICE_FAILPOINT` makes `sluice run`
//! abort — no cleanup, as `kill -9` — at two points of a failover. After the candidate became
//! writable but before the other replica was repointed, the restarted process (same config, no
//! failpoint) finishes the job on its own. After the new generation was written on the
//! still read-only candidate, the restarted process never saw the primary alive and cannot
//! confirm its death: it reports `no primary` and promotes nothing (docs/failover.md), and
//! the operator's `sluice failover` finishes it. Either way: exactly one writable server,
//! writes through Sluice again, every write acknowledged before the crash present (semi-sync,
//! unique tokens), and the other replica following the new primary.

mod common;

use std::time::{Duration, Instant};

use common::instance::{opts, Instance};
use common::{eventually, PASSWORD, USER};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice::sandbox::Topology;

/// `(writable, source port)` of a node, read over its socket; `None` when it does not answer.
async fn state(topo: &Topology, node: usize) -> Option<(bool, Option<u16>)> {
    let ro = topo.sql(node, "SELECT @@read_only").await.ok()?;
    let status = topo.sql_vertical(node, "SHOW SLAVE STATUS").await.ok()?;
    let port = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("Master_Port: "))
        .and_then(|p| p.trim().parse().ok());
    Some((ro.trim() == "0", port))
}

/// Prints the restarted process's log when the test fails.
struct ShowLogOnPanic(std::path::PathBuf);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("restarted Sluice's log:\n{log}");
        }
    }
}

/// How the failover is finished after the restart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// By the restarted process alone.
    Restart,
    /// The restarted process reports `no primary`; the operator runs `sluice failover`.
    Operator,
}

async fn crash_at(point: &str, finish: Finish) {
    let mut topo = Topology::start(common::semisync_spec(2))
        .await
        .expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let extra = "failover_block_s = 0\n";
    let mut a = Instance::start_env(
        &topo,
        dir.path(),
        "crash",
        extra,
        &[("SLUICE_FAILPOINT", point)],
    )
    .await;
    let mut c = Conn::new(opts(a.port, USER, PASSWORD)).await.unwrap();
    c.query_drop("CREATE DATABASE crash; CREATE TABLE crash.t (token VARCHAR(64) PRIMARY KEY)")
        .await
        .unwrap();
    // Acknowledged writes, each with a unique token.
    let mut acked = Vec::new();
    for i in 0..200 {
        let token = format!("{point}-before-{i}");
        c.exec_drop("INSERT INTO crash.t VALUES (?)", (&token,))
            .await
            .unwrap();
        acked.push(token);
    }
    drop(c);
    topo.nodes[0].kill();
    // The failover starts and the process aborts at the failpoint.
    let status = a
        .exited(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("{point}: the failover never reached the failpoint"));
    assert!(
        !status.success(),
        "{point}: aborted, not a clean exit ({status})"
    );
    let between = [state(&topo, 1).await, state(&topo, 2).await];
    eprintln!("{point}: Sluice aborted; the replicas now (writable, source port): {between:?}");

    // The same config again, without the failpoint: it finishes the failover.
    let log = dir.path().join("restart.log");
    let _b = a.start_again(&log);
    let started = Instant::now();
    let port = a.port;
    let _show = ShowLogOnPanic(log.clone());
    if finish == Finish::Operator {
        operator_finishes(&a, point).await;
    }
    eventually(
        &format!("{point}: writes through the restarted Sluice"),
        Duration::from_secs(60),
        || async move {
            let Ok(mut c) = Conn::new(opts(port, USER, PASSWORD)).await else {
                return false;
            };
            c.exec_drop(
                "INSERT INTO crash.t VALUES (?)",
                (format!("{point}-after"),),
            )
            .await
            .is_ok()
        },
    )
    .await;
    eprintln!(
        "{point}: writes back {:?} after the restart",
        started.elapsed()
    );
    // Exactly one writable server; the other follows it.
    let mut writable = Vec::new();
    for node in 1..=2 {
        if state(&topo, node).await.is_some_and(|s| s.0) {
            writable.push(node);
        }
    }
    assert_eq!(writable.len(), 1, "{point}: writable servers {writable:?}");
    let primary = writable[0];
    let other = 3 - primary;
    let primary_port = topo.nodes[primary].port;
    eventually(
        &format!("{point}: the other replica follows the new primary"),
        Duration::from_secs(30),
        || {
            let topo = &topo;
            async move {
                let Ok(s) = topo.sql_vertical(other, "SHOW SLAVE STATUS").await else {
                    return false;
                };
                s.contains(&format!("Master_Port: {primary_port}"))
                    && s.contains("Slave_IO_Running: Yes")
                    && s.contains("Slave_SQL_Running: Yes")
            }
        },
    )
    .await;
    // No acknowledged write lost, on the new primary and (once caught up) on the other.
    for node in [primary, other] {
        eventually(
            &format!("{point}: every acknowledged token on node {node}"),
            Duration::from_secs(30),
            || {
                let topo = &topo;
                let acked = &acked;
                async move {
                    let Ok(out) = topo.sql(node, "SELECT token FROM crash.t").await else {
                        return false;
                    };
                    let have: std::collections::HashSet<&str> =
                        out.lines().map(str::trim).collect();
                    acked.iter().all(|t| have.contains(t.as_str()))
                }
            },
        )
        .await;
    }
}

/// The restarted process reports `no primary` for a while and promotes nothing; then the
/// operator runs `sluice failover` with the same config.
async fn operator_finishes(a: &Instance, point: &str) {
    let admin = a.admin;
    eventually(
        &format!("{point}: the restarted Sluice answers on its admin port"),
        Duration::from_secs(20),
        || async move {
            Conn::new(opts(admin, "admin", sluice::sandbox::ADMIN_PASSWORD))
                .await
                .is_ok()
        },
    )
    .await;
    // Several monitor rounds: still no primary, nothing writable.
    for _ in 0..10 {
        assert_eq!(a.primary().await, None, "{point}: promoted on its own");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["failover", "--config"])
        .arg(&a.config)
        .output()
        .await
        .expect("run sluice failover");
    assert!(
        out.status.success(),
        "{point}: sluice failover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_promotion_before_the_repoint_the_restart_finishes_the_failover() {
    common::init_tracing();
    crash_at("failover:promoted", Finish::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_new_generation_is_written_the_operator_finishes_the_failover() {
    common::init_tracing();
    crash_at("failover:generation-written", Finish::Operator).await;
}
