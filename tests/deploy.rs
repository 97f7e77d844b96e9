//! The deployment files are checked by the tools their platforms use: the systemd unit with
//! `systemd-analyze verify` and `security`, its `Type=notify` story against a real
//! `sluice run`, the Kubernetes manifests with `kubernetes-validate` (a pinned Kubernetes
//! version) and the shipped sluice.toml with `sluice check-config`, and the Grafana dashboard
//! and Prometheus alert rules against the metric names the code exports. (`promtool check
//! rules` runs in tests/docker_tier.rs, inside the tier image that has Prometheus.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const KUBERNETES: &str = "1.34.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sluice.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice run"));
    let dir = tempfile::tempdir().unwrap();
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let copy = dir.path().join("sluice.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sluice", BIN)).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&copy));
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sluice.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level <= 2.0, "the unit's exposure level is {level}:\n{out}");
    // A broken unit is caught (the check can fail).
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sluice", "/nonexistent/sluice"),
    )
    .unwrap();
    let (ok, _) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(
        !ok,
        "systemd-analyze verify accepted a unit whose binary is missing"
    );
}

/// `Type=notify`: READY=1 once serving, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on
/// SIGTERM, on the socket systemd names in NOTIFY_SOCKET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_tells_systemd_its_state() {
    let h = common::Harness::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = sluice::sandbox::node_free_port();
    let mut config = common::config_for(&h.topo);
    config.proxy.listen = format!("127.0.0.1:{port}");
    config.metrics.listen = "127.0.0.1:0".into();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, h.topo.config_toml(&config.proxy.listen)).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1"), "{first}");
    // Ready means serving: a client gets in at once.
    let mut c = mysql_async::Conn::new(h.opts(port, common::USER, common::PASSWORD))
        .await
        .expect("a client connects once READY=1 was sent");
    use mysql_async::prelude::Queryable as _;
    assert_eq!(c.query_first::<i64, _>("SELECT 1").await.unwrap(), Some(1));
    c.disconnect().await.unwrap();
    let pid = child.id().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().starts_with("READY=1"));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(next().starts_with("STOPPING=1"));
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    h.shutdown().await;
}

fn kustomization_resources(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l.trim_start_matches("  - ").trim().to_string())
        .collect()
}

fn validate(file: &Path) -> (bool, String) {
    run(Command::new("kubernetes-validate")
        .args(["--kubernetes-version", KUBERNETES, "--strict"])
        .arg(file))
}

#[test]
fn the_kubernetes_manifests_validate() {
    let dir = root().join("deploy/kubernetes");
    let resources = kustomization_resources(&dir);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml must list every manifest"
    );
    for f in &resources {
        let (ok, out) = validate(&dir.join(f));
        assert!(ok && out.contains("passed"), "{f}: {out}");
    }
    let all: String = resources
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    for needle in [
        "kind: Deployment",
        "replicas: 2",
        "podAntiAffinity",
        "preStop",
        "path: /healthz",
        "path: /readyz",
        "kind: PodDisruptionBudget",
        "kind: Secret",
        "port: 6032",
        "port: 6070",
    ] {
        assert!(all.contains(needle), "the manifests lack {needle}");
    }
    // A manifest with a wrong field is refused (the check can fail).
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    std::fs::write(&bad, deployment.replace("replicas: 2", "replicas: two")).unwrap();
    assert!(
        !validate(&bad).0,
        "kubernetes-validate accepted replicas: two"
    );
    std::fs::write(
        &bad,
        deployment.replace(
            "revisionHistoryLimit: 5",
            "revisionHistoryLimit: 5\n  replica: 2",
        ),
    )
    .unwrap();
    assert!(
        !validate(&bad).0,
        "kubernetes-validate accepted an unknown field"
    );
}

/// The sluice.toml in the ConfigMap is valid for this binary (with its secrets as files).
#[test]
fn the_kubernetes_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, toml) = run(Command::new("python3").args([
        "-c",
        "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['sluice.toml'])",
        root()
            .join("deploy/kubernetes/configmap.yaml")
            .to_str()
            .unwrap(),
    ]));
    assert!(ok, "{toml}");
    for s in [
        "app_password",
        "monitor_password",
        "repl_password",
        "admin_password",
    ] {
        std::fs::write(dir.path().join(s), "pw\n").unwrap();
    }
    let cfg = dir.path().join("sluice.toml");
    let secrets = format!("{}/", dir.path().display());
    std::fs::write(&cfg, toml.replace("/etc/sluice/secrets/", &secrets)).unwrap();
    let (ok, out) = run(Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg));
    assert!(ok, "{out}");
    assert!(out.contains("0.0.0.0:6033"), "{out}");
}

/// Every `sluice_…` name in a file, without the histogram suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"sluice_[a-z_]+").unwrap();
    let mut v: Vec<String> = re
        .find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported =
        metric_names(&std::fs::read_to_string(root().join("src/metrics/names.rs")).unwrap());
    assert!(exported.len() > 30, "{exported:?}");
    for file in [
        "docker/grafana-dashboard.json",
        "docker/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics Sluice does not export: {unknown:?}"
        );
    }
    // Every exported name is documented.
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|n| !docs.contains(n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}
