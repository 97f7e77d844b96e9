//! Soak: mixed read/write load through two Sluice processes (`sluice run`, as deployed) while
//! the cluster goes through failovers, switchovers, reloads and replica restarts. At the end:
//! every acknowledged write is on the final primary, no two servers were ever writable at the
//! same probe, and each Sluice process's RSS, open file descriptors, sessions and pool
//! connections are back within 5 % of their baseline.
//!
//! `SLUICE_SOAK_SECS` sets the length (default 120 s, the CI version; `bench/soak.sh` runs 1800 s).
//! The events cycle through failover → switchover → reload → replica restart, spaced so that a
//! failover comes at least every 5 minutes.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::instance::{opts, Instance};
use common::{PASSWORD, USER};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice::sandbox::Topology;

#[derive(Default)]
struct Tally {
    acked: Vec<(u64, u64)>,
    write_errors: usize,
    reads: usize,
    read_errors: usize,
}

async fn writer(port: u16, w: u64, stop: Arc<AtomicBool>, out: Arc<Mutex<Tally>>) {
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            match Conn::new(opts(port, USER, PASSWORD)).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    out.lock().unwrap().write_errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        n += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            c.exec_drop("INSERT INTO soak.acked (w, n) VALUES (?, ?)", (w, n)),
        )
        .await;
        let mut o = out.lock().unwrap();
        match r {
            Ok(Ok(())) => o.acked.push((w, n)),
            Ok(Err(mysql_async::Error::Server(_))) => o.write_errors += 1,
            _ => {
                o.write_errors += 1;
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.disconnect().await;
    }
}

async fn reader(port: u16, stop: Arc<AtomicBool>, out: Arc<Mutex<Tally>>) {
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            conn = Conn::new(opts(port, USER, PASSWORD)).await.ok();
            if conn.is_none() {
                out.lock().unwrap().read_errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c = conn.as_mut().expect("connected");
        let r: Result<Option<u64>, _> = c.query_first("SELECT COUNT(*) FROM soak.acked").await;
        let broken = matches!(&r, Err(e) if !matches!(e, mysql_async::Error::Server(_)));
        {
            let mut o = out.lock().unwrap();
            match r {
                Ok(_) => o.reads += 1,
                Err(_) => o.read_errors += 1,
            }
        }
        if broken {
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Failover,
    Switchover,
    Reload,
    ReplicaRestart,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_instances_through_failovers_switchovers_reloads_and_restarts() {
    common::init_tracing();
    let secs: u64 = std::env::var("SLUICE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let s = common::semisync_spec(2);
    let mut topo = Topology::start(s).await.expect("topology");
    let dir = tempfile::tempdir().unwrap();
    // Anti-flap would block every failover after the first one.
    let extra = "failover_block_s = 0\n";
    let a = Instance::start(&topo, dir.path(), "a", extra).await;
    let b = Instance::start(&topo, dir.path(), "b", extra).await;
    let mut c = Conn::new(opts(a.port, USER, PASSWORD)).await.unwrap();
    c.query_drop(
        "CREATE DATABASE soak; CREATE TABLE soak.acked (id BIGINT AUTO_INCREMENT PRIMARY KEY, w INT, n BIGINT)",
    )
    .await
    .unwrap();
    c.disconnect().await.unwrap();

    // Baseline: both instances warmed up by a short load, then idle.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let start_load = |stop: &Arc<AtomicBool>, tally: &Arc<Mutex<Tally>>, first_w: u64| {
        let mut t = Vec::new();
        for (k, port) in [a.port, b.port, a.port, b.port].into_iter().enumerate() {
            t.push(tokio::spawn(writer(
                port,
                first_w + k as u64,
                stop.clone(),
                tally.clone(),
            )));
        }
        for port in [a.port, b.port] {
            t.push(tokio::spawn(reader(port, stop.clone(), tally.clone())));
        }
        t
    };
    let warm_stop = Arc::new(AtomicBool::new(false));
    let warm = start_load(&warm_stop, &tally, 100);
    tokio::time::sleep(Duration::from_secs(5)).await;
    warm_stop.store(true, Ordering::SeqCst);
    for t in warm {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = [a.resources().await, b.resources().await];

    // The watchdog: every 200 ms, how many servers are writable at once.
    let violations = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let ports: Vec<u16> = topo.nodes.iter().map(|n| n.port).collect();
    let watchdog = {
        let (stop, violations, probes) = (stop.clone(), violations.clone(), probes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let mut writable = 0;
                for &p in &ports {
                    let o = opts(p, "sluice_monitor", "sluice-monitor-pw");
                    if let Ok(Ok(mut c)) =
                        tokio::time::timeout(Duration::from_millis(500), Conn::new(o)).await
                    {
                        let ro: Option<u8> =
                            c.query_first("SELECT @@read_only").await.ok().flatten();
                        writable += usize::from(ro == Some(0));
                        let _ = c.disconnect().await;
                    }
                }
                probes.fetch_add(1, Ordering::SeqCst);
                if writable > 1 {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    tasks.extend(start_load(&stop, &tally, 0));
    let cycles = (secs / 300).max(1);
    let events: Vec<Event> = (0..cycles)
        .flat_map(|_| {
            [
                Event::Failover,
                Event::Switchover,
                Event::Reload,
                Event::ReplicaRestart,
            ]
        })
        .collect();
    let gap = Duration::from_secs(secs) / (events.len() as u32 + 1);
    let began = Instant::now();
    let mut log = Vec::new();
    for (k, ev) in events.iter().enumerate() {
        let at = gap * (k as u32 + 1);
        tokio::time::sleep(at.saturating_sub(began.elapsed())).await;
        let primary = a.primary().await.expect("a primary before each event");
        let p = topo
            .nodes
            .iter()
            .position(|n| n.name == primary)
            .expect("known node");
        let t = Instant::now();
        match ev {
            Event::Failover => {
                topo.nodes[p].kill();
                for i in [&a, &b] {
                    common::eventually("a new primary", Duration::from_secs(30), || async {
                        i.primary().await.is_some_and(|n| n != primary)
                    })
                    .await;
                }
                // The old primary comes back (read-only, as a production config says for any
                // server that may not be the primary) and rejoins as a replica. Restarted as a
                // semi-sync replica (`init-rpl-role = SLAVE`), MariaDB truncates from its binlog
                // the transactions no replica acknowledged (its crash left them there): without
                // that its history diverges and it cannot follow (docs/failover.md).
                topo.nodes[p].replica = true;
                if !topo.nodes[p]
                    .extra_cnf
                    .iter()
                    .any(|l| l.starts_with("init-rpl-role"))
                {
                    topo.nodes[p].extra_cnf.push("init-rpl-role = SLAVE".into());
                }
                let bins = topo.bins.clone();
                topo.nodes[p]
                    .start(&bins)
                    .await
                    .expect("restart the old primary");
            }
            Event::Switchover => {
                let to = topo.nodes[(p + 1) % 3].name.clone();
                // The target must be a replica that follows (after a failover, the restarted
                // old primary has had a whole event interval to rejoin).
                common::eventually(
                    &format!("{to} to follow the primary"),
                    Duration::from_secs(30),
                    || {
                        let a = &a;
                        let to = to.clone();
                        async move {
                            let mut adm = a.admin().await;
                            let rows: Vec<mysql_async::Row> = adm
                                .query(format!("SELECT * FROM servers WHERE name = '{to}'"))
                                .await
                                .unwrap_or_default();
                            let _ = adm.disconnect().await;
                            rows.first().is_some_and(|r| {
                                let col = |n: &str| {
                                    r.get_opt::<Option<String>, _>(n)
                                        .and_then(Result::ok)
                                        .flatten()
                                };
                                col("role").as_deref() == Some("replica")
                                    && col("excluded").is_none()
                                    && col("not_following").is_none()
                                    && col("healthy").as_deref() == Some("yes")
                            })
                        }
                    },
                )
                .await;
                let mut adm = a.admin().await;
                adm.query_drop(format!("SWITCHOVER TO {to}"))
                    .await
                    .expect("switchover");
                let _ = adm.disconnect().await;
            }
            Event::Reload => {
                for i in [&a, &b] {
                    let text = std::fs::read_to_string(&i.config).unwrap();
                    std::fs::write(&i.config, text).unwrap();
                    let _ = tokio::process::Command::new("kill")
                        .args(["-HUP", &i.pid().to_string()])
                        .status()
                        .await;
                }
            }
            Event::ReplicaRestart => {
                let r = (p + 2) % 3;
                topo.nodes[r].kill();
                topo.nodes[r].replica = true;
                let bins = topo.bins.clone();
                topo.nodes[r].start(&bins).await.expect("restart a replica");
                // The sandbox's servers do not start replication on their own
                // (skip-slave-start); an operator's restart script would.
                topo.sql(r, "START SLAVE").await.expect("start replication");
            }
        }
        let line = format!(
            "{:>6.1} s {ev:?}: {} ms",
            began.elapsed().as_secs_f64(),
            t.elapsed().as_millis()
        );
        eprintln!("soak: {line}");
        log.push(line);
    }
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(began.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    watchdog.await.unwrap();

    // Every acknowledged write is on the final primary (and every server follows it).
    let primary = a.primary().await.expect("a primary at the end");
    assert_eq!(b.primary().await.as_deref(), Some(primary.as_str()));
    let p = topo.nodes.iter().position(|n| n.name == primary).unwrap();
    // The others apply everything the final primary has (they all follow it again).
    let pos = topo.sql(p, "SELECT @@gtid_binlog_pos").await.unwrap();
    for n in (0..3).filter(|&n| n != p) {
        let r = topo
            .sql(n, &format!("SELECT MASTER_GTID_WAIT('{}', 60)", pos.trim()))
            .await
            .unwrap();
        if r.trim() != "0" {
            panic!(
                "db{} did not catch up with the final primary db{} ({}): {}\nevents: {log:?}",
                n + 1,
                p + 1,
                pos.trim(),
                topo.sql_vertical(n, "SHOW ALL SLAVES STATUS")
                    .await
                    .unwrap_or_default()
            );
        }
    }
    let rows: HashSet<(u64, u64)> = topo
        .sql(p, "SELECT w, n FROM soak.acked")
        .await
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (w, n) = l.trim().split_once('\t')?;
            Some((w.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let lost: Vec<_> = t.acked.iter().filter(|k| !rows.contains(k)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "two writable servers at one probe"
    );

    // Resources back to their baseline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let now = loop {
        let now = [a.resources().await, b.resources().await];
        if now[0].within(&base[0]) && now[1].within(&base[1]) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not back within 5 % of the baseline: before {base:?}, after {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let report = format!(
        "soak {secs} s, two sluice processes: {} writes acknowledged, 0 lost; {} write errors and {} read errors around the events; {} reads; {} watchdog probes, 0 with two writable servers\n{}\nbaseline {base:?}\nafter    {now:?}\n",
        t.acked.len(),
        t.write_errors,
        t.read_errors,
        t.reads,
        probes.load(Ordering::SeqCst),
        log.join("\n")
    );
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak.txt"),
        &report,
    );
    eprintln!("{report}");
}
