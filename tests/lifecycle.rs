//! The `sluice` binary: `check-config`, `run` with role discovery, SIGTERM handling.

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use common::{config_for, Harness, PASSWORD, USER};
use mysql_async::prelude::*;
use sluice::sandbox::Topology;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// The config of a topology as TOML, with the servers listed in the given order.
fn toml_for(topo: &Topology, order: &[usize], listen: &str) -> String {
    let mut c = config_for(topo);
    c.proxy.listen = listen.to_string();
    c.servers = order.iter().map(|&i| c.servers[i].clone()).collect();
    let mut t = format!(
        "[proxy]\nlisten = \"{}\"\nshutdown_grace_ms = 5000\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        c.proxy.listen
    );
    for s in &c.servers {
        t += &format!(
            "[[servers]]\nname = \"{}\"\naddress = \"{}\"\n",
            s.name, s.address
        );
    }
    for (u, p) in &topo.spec.users {
        t += &format!("[[users]]\nname = \"{u}\"\npassword = \"{p}\"\n");
    }
    t += &format!(
        "[monitor]\nuser = \"{}\"\npassword = \"{}\"\ninterval_ms = 100\n",
        topo.spec.monitor.0, topo.spec.monitor.1
    );
    t
}

#[test]
fn check_config_masks_passwords_and_names_bad_keys() {
    let good = write_config(
        "[proxy]\nlisten = \"127.0.0.1:7001\"\n[[servers]]\nname = \"db1\"\naddress = \"127.0.0.1:3307\"\n\
         [[users]]\nname = \"app\"\npassword = \"s3cret-value\"\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(good.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen = \"127.0.0.1:7001\""), "{stdout}");
    assert!(
        stdout.contains("handshake_timeout_ms = 5000"),
        "defaults are shown: {stdout}"
    );
    assert!(!stdout.contains("s3cret-value"), "{stdout}");
    assert!(stdout.contains("********"), "{stdout}");

    let bad = write_config("[proxy]\nlisten = \"127.0.0.1:7001\"\nmax_conections = 5\n");
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(bad.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("max_conections"), "{stderr}");
    assert!(
        stderr.contains(&bad.path().display().to_string()),
        "{stderr}"
    );

    // A bad rule file stops the start-up, naming the file, the rule and the key.
    let mut rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    rules
        .write_all(b"[[rule]]\nname = \"broken\"\nmatch.regex = \"(\"\n")
        .unwrap();
    let with_rules = write_config(&format!(
        "[[servers]]\nname = \"db1\"\naddress = \"127.0.0.1:3307\"\n[[users]]\nname = \"app\"\npassword = \"x\"\n[routing]\nrules = [{:?}]\n",
        rules.path().display().to_string()
    ));
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(with_rules.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&rules.path().display().to_string())
            && stderr.contains("rule \"broken\"")
            && stderr.contains("match.regex"),
        "{stderr}"
    );

    // An environment override is applied, and a bad one is reported with its variable.
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(good.path())
        .env("SLUICE_PROXY__HANDSHAKE_TIMEOUT_MS", "1234")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("handshake_timeout_ms = 1234"));
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(good.path())
        .env("SLUICE_PROXY__HANDSHAKE_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("proxy.handshake_timeout_ms"), "{stderr}");
    assert!(stderr.contains("SLUICE_"), "{stderr}");
}

/// `sluice run --config cfg` (killed when dropped), logging at `log` (the default when
/// `None`), stderr to `stderr`.
fn run_sluice(cfg: &std::path::Path, log: Option<&str>, stderr: Stdio) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    if let Some(level) = log {
        cmd.env("SLUICE_LOG", level);
    }
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_discovers_the_primary_and_stops_gracefully_on_sigterm() {
    let h = Harness::start(2).await;
    // List the replicas first: the role must be discovered, not taken from the order.
    let port = sluice::sandbox::node_free_port();
    let text = toml_for(&h.topo, &[2, 1, 0], &format!("127.0.0.1:{port}"));
    let cfg = write_config(&text);
    let mut child = run_sluice(cfg.path(), Some("debug"), Stdio::piped());
    let opts = h.opts(port, USER, PASSWORD);
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = mysql_async::Conn::new(opts.clone()).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = conn.expect("sluice run accepts clients");
    // Inside a transaction the statement runs on the primary (plain reads go to replicas).
    c.query_drop("BEGIN").await.unwrap();
    let id: Option<(u32, i64)> = c
        .query_first("SELECT @@server_id, @@read_only")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        id,
        Some((1, 0)),
        "traffic goes to the writable server (db1, server_id 1)"
    );

    // SIGHUP re-reads the file: a 0 ms lag budget keeps even plain reads on the primary.
    assert!(!text.contains("[routing]"));
    std::fs::write(cfg.path(), format!("{text}[routing]\nmax_lag_ms = 0\n")).unwrap();
    let pid = child.id().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    let mut on_primary = false;
    for _ in 0..50 {
        let sid: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
        if sid == Some(1) {
            // Stays there: the budget changed, not luck.
            for _ in 0..20 {
                let again: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
                assert_eq!(again, Some(1));
            }
            on_primary = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        on_primary,
        "SIGHUP did not apply the new [routing] max_lag_ms"
    );

    // A command in flight when SIGTERM arrives completes; then the process exits 0.
    let q = tokio::spawn(async move {
        let r: Option<i64> = c.query_first("SELECT SLEEP(1.5) + 7").await.unwrap();
        (r, c)
    });
    // Wait until it runs on the primary (where the 0 ms budget sends it), not a fixed time.
    common::running_on(&h, 0, "SELECT SLEEP(1.5)").await;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let (r, mut c) = q.await.unwrap();
    assert_eq!(r, Some(7), "the in-flight query finished");
    // A client that goes on at once is still served (it is not quiet yet)...
    let next: Option<i64> = c.query_first("SELECT 8").await.unwrap();
    assert_eq!(next, Some(8));
    // ...and once quiet, its session is closed at the boundary and the process exits
    // without waiting for the grace period.
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        c.query_drop("SELECT 1").await.is_err(),
        "the session is closed after the drain"
    );
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        !log.contains("still busy after the grace period"),
        "the quiet session was not closed at its boundary:\n{log}"
    );
    assert!(
        log.contains("primary discovered") && log.contains("db1"),
        "{log}"
    );
    assert!(log.contains("configuration reloaded"), "{log}");
    // Each session logs in its own span, with the client's address and user.
    assert!(log.contains("session{id="), "{log}");
    assert!(log.contains(&format!("user={USER}")), "{log}");
    assert!(
        mysql_async::Conn::new(opts).await.is_err(),
        "no longer listening"
    );
    h.shutdown().await;
}

/// `[log] format = "json"`: every line `sluice run` writes is one JSON object, with the
/// session span's fields; `sluice health` answers from `/readyz` and `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_the_health_command() {
    let h = Harness::start(1).await;
    let port = sluice::sandbox::node_free_port();
    let metrics = sluice::sandbox::node_free_port();
    let text = toml_for(&h.topo, &[0, 1], &format!("127.0.0.1:{port}")).replace(
        "[metrics]\nlisten = \"127.0.0.1:0\"",
        &format!("[metrics]\nlisten = \"0.0.0.0:{metrics}\"\n[log]\nformat = \"json\""),
    );
    let cfg = write_config(&text);
    let health = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["health", "--config"])
            .arg(cfg.path())
            .args(extra)
            .output()
            .unwrap()
    };
    // Nothing runs yet: not healthy, and the answer says why.
    let out = health(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/readyz"));
    let mut child = run_sluice(cfg.path(), None, Stdio::piped());
    let opts = h.opts(port, USER, PASSWORD);
    common::eventually("ready", Duration::from_secs(20), || async {
        health(&[]).status.success()
    })
    .await;
    let out = health(&[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ready: primary db1"),
        "{out:?}"
    );
    assert!(health(&["--live"]).status.success());
    let mut c = mysql_async::Conn::new(opts).await.unwrap();
    let _: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    // A wrong password makes a line inside the session span.
    let bad = mysql_async::Conn::new(h.opts(port, USER, "wrong")).await;
    assert!(bad.is_err());
    c.disconnect().await.unwrap();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|v| v["message"] == "primary discovered"
            && v["level"] == "INFO"
            && v["timestamp"].is_string()),
        "{log}"
    );
    assert!(
        lines.iter().any(|v| v["span"]["name"] == "session"
            && v["span"]["id"].is_u64()
            && v["span"]["client"].is_string()
            && v["user"] == USER),
        "no line carries the session span's fields:\n{log}"
    );
    // Stopped: not healthy any more.
    assert_eq!(health(&["--live"]).status.code(), Some(1));
    h.shutdown().await;
}

/// The operator commands load `[backend_tls]` like `sluice run`: an unreadable CA stops them
/// before any server is contacted (never a plaintext fallback with the credentials).
#[test]
fn operator_commands_refuse_an_unreadable_backend_ca() {
    let text = "[[servers]]\nname = \"db1\"\naddress = \"127.0.0.1:9\"\n\
                [[users]]\nname = \"app\"\npassword = \"x\"\n\
                [monitor]\nuser = \"mon\"\npassword = \"m\"\n\
                [backend_tls]\nca = \"/nonexistent/ca.pem\"\n";
    let cfg = write_config(text);
    for args in [
        &["switchover", "--to", "db1"][..],
        &["failover"],
        &["acknowledge"],
        &["check-config"],
    ] {
        let out = std::process::Command::new(BIN)
            .arg(args[0])
            .arg("--config")
            .arg(cfg.path())
            .args(&args[1..])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("backend_tls") && stderr.contains("/nonexistent/ca.pem"),
            "{args:?}: {stderr}"
        );
    }
}

/// The process's threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with(prefix))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `[proxy] worker_threads` sets the threads that run sessions (shown by
/// `sluice_worker_threads`); 0 means one per CPU, as tokio's default. With the default
/// `scheduler = "per-thread"` they are session loops (threads `sluice-loop-N`); with
/// `"work-stealing"` they are the workers of one tokio runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_runtime_threads() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (configured, scheduler, expected) in [
        (Some(3), None, 3),
        (Some(1), None, 1),
        (None, None, cpus),
        (Some(3), Some("work-stealing"), 3),
        (Some(2), Some("per-thread"), 2),
    ] {
        let mut threads = configured.map_or(String::new(), |n| format!("worker_threads = {n}\n"));
        if let Some(s) = scheduler {
            threads.push_str(&format!("scheduler = \"{s}\"\n"));
        }
        let mut shown = None;
        let mut build = None;
        let mut loops = None;
        let mut workers = None;
        // Ports are free when chosen but another test may take one first: a start that
        // exits is retried on new ports (bounded). The server's name tells this process's
        // metrics from another's.
        'attempts: for _ in 0..3 {
            let port = sluice::sandbox::node_free_port();
            let metrics = sluice::sandbox::node_free_port();
            let name = format!("probe{port}");
            // No server needs to answer for the process to run and export its metrics.
            let text = format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{threads}[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
                 [[servers]]\nname = \"{name}\"\naddress = \"127.0.0.1:1\"\n\
                 [[users]]\nname = \"app\"\npassword = \"app\"\n"
            );
            let cfg = write_config(&text);
            let mut child = run_sluice(cfg.path(), None, Stdio::null());
            for _ in 0..100 {
                if let Ok(body) =
                    common::http_get(([127, 0, 0, 1], metrics).into(), "/metrics").await
                {
                    if body.contains(&format!("server=\"{name}\"")) {
                        shown = body
                            .lines()
                            .find_map(|l| l.strip_prefix("sluice_worker_threads "))
                            .map(|v| v.trim().parse::<usize>().unwrap());
                        build = body
                            .lines()
                            .find(|l| l.starts_with("sluice_build_info{"))
                            .map(str::to_owned);
                        let pid = child.id().unwrap();
                        loops = Some(threads_named(pid, "sluice-loop-"));
                        workers = Some(threads_named(pid, "tokio-rt-worker"));
                        child.kill().await.unwrap();
                        break 'attempts;
                    }
                }
                if child.try_wait().unwrap().is_some() {
                    continue 'attempts;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            child.kill().await.unwrap();
        }
        assert_eq!(
            shown,
            Some(expected),
            "worker_threads = {configured:?}, scheduler {scheduler:?}"
        );
        // Which build runs, always shown: `build` is what this test's binary was built as.
        let build = build.expect("sluice_build_info is exported");
        for label in [
            format!("build=\"{}\"", sluice::build_info::kind()),
            format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(build.contains(&label), "{label} missing: {build}");
        }
        assert!(build.ends_with("} 1"), "{build}");
        if scheduler == Some("work-stealing") {
            assert_eq!(loops, Some(0));
            assert!(workers >= Some(expected), "{workers:?} runtime workers");
        } else {
            assert_eq!(loops, Some(expected), "session loops");
        }
    }
    // A scheduler that does not exist, or threads out of range: refused, naming the key.
    for (setting, key) in [
        ("scheduler = \"fastest\"", "scheduler"),
        ("worker_threads = 5000", "proxy.worker_threads"),
    ] {
        let cfg = write_config(&format!(
            "[proxy]\n{setting}\n[[servers]]\nname = \"db1\"\naddress = \"127.0.0.1:1\"\n"
        ));
        let out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(cfg.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{setting}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{err}");
    }
}

/// `sluice --version` names the kind of build (the shipped image has the profile-guided one).
#[test]
fn the_version_says_which_build_runs() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!(
            "sluice {} ({} build)",
            env!("CARGO_PKG_VERSION"),
            sluice::build_info::kind()
        )
    );
}
