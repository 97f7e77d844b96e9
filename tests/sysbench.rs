//! sysbench `oltp_read_write` through Sluice, with server-side prepared statements
//! (`--db-ps-mode=auto`) and without (`disable`): no errors (other than the InnoDB deadlocks
//! the server itself reports, which sysbench retries), and the same final row counts as
//! the same run made directly against the primary.

mod common;

use common::{Harness, PASSWORD, USER};
use mysql_async::prelude::*;

fn sysbench() -> &'static str {
    let ok = std::process::Command::new("sysbench")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "sysbench is missing: install the Debian package `sysbench`"
    );
    "sysbench"
}

async fn run_sysbench(port: u16, db: &str, ps_mode: &str, action: &str) -> String {
    run_sysbench_threads(port, db, ps_mode, action, 4).await
}

async fn run_sysbench_threads(
    port: u16,
    db: &str,
    ps_mode: &str,
    action: &str,
    threads: u32,
) -> String {
    let out = tokio::process::Command::new(sysbench())
        .arg("oltp_read_write")
        .args(["--db-driver=mysql", "--mysql-host=127.0.0.1"])
        .arg(format!("--mysql-port={port}"))
        .arg(format!("--mysql-user={USER}"))
        .arg(format!("--mysql-password={PASSWORD}"))
        .arg(format!("--mysql-db={db}"))
        .args([
            "--tables=4",
            "--table-size=10000",
            "--time=10",
            "--report-interval=0",
        ])
        .arg(format!("--threads={threads}"))
        .arg(format!("--db-ps-mode={ps_mode}"))
        .arg(action)
        .output()
        .await
        .expect("run sysbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "sysbench {action} on port {port} failed:\n{text}"
    );
    text
}

/// The number after `label` on its line, e.g. `transactions:  1234  (123.4 per sec.)`.
fn figure(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in sysbench output:\n{text}"))
}

async fn compare(ps_mode: &str) {
    compare_with(ps_mode, 4, None).await
}

/// Runs the same workload directly and through Sluice (`threads` client threads, Sluice's
/// pools bounded to `max_backend` connections per server).
async fn compare_with(ps_mode: &str, threads: u32, max_backend: Option<u32>) {
    let h = Harness::start_with(1, |c| {
        if let Some(m) = max_backend {
            c.proxy.max_backend_connections = m;
        }
    })
    .await;
    let mut counts = Vec::new();
    for (port, db) in [
        (h.topo.nodes[0].port, "sb_direct"),
        (h.addr.port(), "sb_proxy"),
    ] {
        h.root_sql(0, &format!("CREATE DATABASE {db}")).await;
        run_sysbench(port, db, ps_mode, "prepare").await;
        let deadlocks_before = h.status_counter(0, "Innodb_deadlocks").await;
        // Through Sluice with bounded pools: sample the application's server connections on
        // the primary while the run lasts.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = (max_backend.is_some() && port == h.addr.port()).then(|| {
            let (stop, primary) = (stop.clone(), h.topo.nodes[0].port);
            tokio::spawn(async move {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(primary)
                    .user(Some(USER))
                    .pass(Some(PASSWORD))
                    .prefer_socket(false);
                let mut c = mysql_async::Conn::new(opts).await.unwrap();
                let mut peak = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n: Option<usize> = c
                        .query_first("SELECT COUNT(*) - 1 FROM information_schema.PROCESSLIST WHERE USER = 'app'")
                        .await
                        .unwrap();
                    peak = peak.max(n.unwrap_or(0));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                peak
            })
        });
        let out = run_sysbench_threads(port, db, ps_mode, "run", threads).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadlocks = h.status_counter(0, "Innodb_deadlocks").await - deadlocks_before;
        assert!(figure(&out, "transactions:") > 0, "{out}");
        // sysbench retries InnoDB deadlocks (1213) and counts them as "ignored errors". Those are
        // the server's own, equally likely directly; every other error is a failure.
        assert_eq!(
            figure(&out, "ignored errors:"),
            deadlocks,
            "errors other than InnoDB deadlocks:\n{out}"
        );
        assert_eq!(figure(&out, "reconnects:"), 0, "{out}");
        let n = h
            .root_sql(0, &format!("SELECT (SELECT COUNT(*) FROM {db}.sbtest1), (SELECT COUNT(*) FROM {db}.sbtest2), (SELECT COUNT(*) FROM {db}.sbtest3), (SELECT COUNT(*) FROM {db}.sbtest4)"))
            .await;
        counts.push(n.trim().to_string());
        if let (Some(m), Some(peak)) = (max_backend, peak) {
            let peak = peak.await.unwrap();
            assert!(
                peak > 0 && peak <= m as usize,
                "{peak} server connections at most"
            );
        }
    }
    assert_eq!(
        counts[0], counts[1],
        "row counts after the run (direct vs through sluice)"
    );
    assert_eq!(counts[1], "10000\t10000\t10000\t10000");
    h.shutdown().await;
}

#[tokio::test]
async fn oltp_read_write_prepared_statements() {
    compare("auto").await;
}

/// 64 client threads over 8 server connections per server (multiplexing): no errors but the
/// server's own deadlocks, the same rows as directly, and never more than 8 connections.
#[tokio::test]
async fn oltp_read_write_64_threads_over_8_connections() {
    compare_with("auto", 64, Some(8)).await;
}

#[tokio::test]
async fn oltp_read_write_text_protocol() {
    compare("disable").await;
}

#[tokio::test]
async fn oltp_read_only_prepared_reads_reach_the_replicas() {
    let h = Harness::start(1).await;
    h.root_sql(0, "CREATE DATABASE sb").await;
    run_sysbench(h.topo.nodes[0].port, "sb", "auto", "prepare").await;
    h.topo
        .wait_replicas_caught_up(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let before = h.status_counter(1, "Com_stmt_execute").await;
    let out = tokio::process::Command::new(sysbench())
        .arg("oltp_read_only")
        .args(["--db-driver=mysql", "--mysql-host=127.0.0.1"])
        .arg(format!("--mysql-port={}", h.addr.port()))
        .arg(format!("--mysql-user={USER}"))
        .arg(format!("--mysql-password={PASSWORD}"))
        .args([
            "--mysql-db=sb",
            "--tables=4",
            "--table-size=10000",
            "--threads=4",
            "--time=5",
        ])
        .args([
            "--db-ps-mode=auto",
            "--skip_trx=on",
            "--report-interval=0",
            "run",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(figure(&text, "ignored errors:"), 0, "{text}");
    let queries = figure(&text, "queries:");
    let on_replica = h.status_counter(1, "Com_stmt_execute").await - before;
    assert!(
        on_replica * 2 > queries,
        "most prepared reads ran on the replica: {on_replica} of {queries}"
    );
    h.shutdown().await;
}
