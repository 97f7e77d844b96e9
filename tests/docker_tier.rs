//! The example tier in containers (docker/compose.yaml), end to end: docker/build.sh builds the
//! base image (debootstrap when no registry answers), sluice:local and sluice-tier:local;
//! compose starts HAProxy → 2 apps → 2 Sluice instances → primary + 2 replicas, and
//! Prometheus; docker/check_tier.py checks read-your-writes over HTTP and HTTPS, 200 requests
//! spread over both apps and both Sluice instances (their admin ports), a killed primary
//! container (writes resume, nothing acknowledged lost, the alert fires in Prometheus);
//! Sluice as PID 1 reloads on SIGHUP and exits 0 on SIGTERM (`docker stop`); `down -v` leaves
//! no container, volume or process. `promtool check config` checks the
//! shipped Prometheus config and alert rules. Needs a running Docker engine
//! (.ci/run starts one); without one this test fails and says so.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PROJECT: &str = "sluice-tier";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command with a deadline (killed when it passes).
fn run(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain both pipes on threads so that a chatty command never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn compose_cmd() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let base: Vec<&str> = if v2 {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    };
    let file = root().join("docker/compose.yaml");
    base.into_iter()
        .map(String::from)
        .chain([
            "-p".into(),
            PROJECT.into(),
            "-f".into(),
            file.display().to_string(),
        ])
        .collect()
}

fn compose(args: &[&str], limit: Duration) -> Output {
    let c = compose_cmd();
    run(Command::new(&c[0]).args(&c[1..]).args(args), limit)
}

/// Brings the tier down however the test ends.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = compose(
            &["down", "-v", "--remove-orphans"],
            Duration::from_secs(120),
        );
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Processes of the tier's programs (for the "nothing left behind" check).
fn tier_processes() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // By program name (a compiler or linker whose arguments name such files is not one).
        let mut args = cmd.split_whitespace();
        let program = args.next().unwrap_or_default();
        let program = program.rsplit('/').next().unwrap_or_default();
        let tier = ["mariadbd", "haproxy", "prometheus", "guestbook"].contains(&program)
            || (program == "sluice" && args.next() == Some("run"))
            || (program.starts_with("python") && cmd.contains("guestbook"));
        if tier {
            found.push((pid, cmd));
        }
    }
    found
}

#[test]
fn the_example_tier_serves_fails_over_and_cleans_up() {
    let info = Command::new("docker").args(["info"]).output();
    assert!(
        info.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine answers: install docker.io and start dockerd (.ci/run does both)"
    );
    let before: Vec<u32> = tier_processes().into_iter().map(|p| p.0).collect();
    // A tier left over from an interrupted run would hold the ports.
    let _ = compose(
        &["down", "-v", "--remove-orphans"],
        Duration::from_secs(120),
    );
    // The default build.sh: the image ships the profile-guided build (bench/pgo.py: an
    // instrumented build, its training on a sandbox, the final build, its BOLT layout).
    let build = run(
        Command::new("sh")
            .arg(root().join("docker/build.sh"))
            .env_remove("SLUICE_PGO"),
        Duration::from_secs(45 * 60),
    );
    assert!(
        build.status.success(),
        "docker/build.sh failed:\n{}",
        text(&build)
    );
    let version = run(
        Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "host",
            "sluice:local",
            "--version",
        ]),
        Duration::from_secs(120),
    );
    let v = text(&version);
    assert!(
        version.status.success() && v.contains("(profile-guided+bolt build)"),
        "the image's sluice --version: {v}"
    );
    // The shipped Prometheus config and alert rules, checked by promtool (in the tier image).
    let prom = root().join("docker/prometheus");
    let check = run(
        Command::new("docker")
            .args(["run", "--rm", "--network", "host", "-v"])
            .arg(format!("{}:/etc/prometheus:ro", prom.display()))
            .args([
                "sluice-tier:local",
                "promtool",
                "check",
                "config",
                "/etc/prometheus/prometheus.yml",
            ]),
        Duration::from_secs(120),
    );
    let out = text(&check);
    assert!(
        check.status.success() && out.contains("SUCCESS: 12 rules found"),
        "promtool check config (and its rule file):\n{out}"
    );
    let _down = Down;
    let up = compose(&["up", "-d"], Duration::from_secs(300));
    assert!(up.status.success(), "compose up failed:\n{}", text(&up));
    let check = run(
        Command::new("python3").arg(root().join("docker/check_tier.py")),
        Duration::from_secs(600),
    );
    let report = text(&check);
    eprintln!("{report}");
    if !check.status.success() {
        let logs = compose(&["logs", "--tail", "40"], Duration::from_secs(60));
        panic!(
            "the tier check failed:\n{report}\n--- logs ---\n{}",
            text(&logs)
        );
    }
    assert!(report.contains("PASS"), "{report}");
    // Sluice as PID 1 in its container: SIGHUP reloads, SIGTERM drains and exits 0.
    let logs = |name: &str| {
        text(&run(
            Command::new("docker").args(["logs", name]),
            Duration::from_secs(30),
        ))
    };
    let hup = run(
        Command::new("docker").args(["kill", "-s", "HUP", "sluice-tier-sluice1"]),
        Duration::from_secs(30),
    );
    assert!(hup.status.success(), "{}", text(&hup));
    let start = Instant::now();
    while !logs("sluice-tier-sluice1").contains("configuration reloaded") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "SIGHUP did not reload:\n{}",
            logs("sluice-tier-sluice1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = run(
        Command::new("docker").args(["stop", "-t", "30", "sluice-tier-sluice1"]),
        Duration::from_secs(60),
    );
    assert!(stop.status.success(), "{}", text(&stop));
    let code = run(
        Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            "sluice-tier-sluice1",
        ]),
        Duration::from_secs(30),
    );
    let log = logs("sluice-tier-sluice1");
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "SIGTERM as PID 1: exit status\n{log}"
    );
    assert!(log.contains("sluice stopped"), "{log}");
    let down = compose(
        &["down", "-v", "--remove-orphans"],
        Duration::from_secs(180),
    );
    assert!(
        down.status.success(),
        "compose down failed:\n{}",
        text(&down)
    );
    let label = format!("label=com.docker.compose.project={PROJECT}");
    for what in [
        &["ps", "-aq", "--filter"][..],
        &["volume", "ls", "-q", "--filter"],
    ] {
        let o = run(
            Command::new("docker").args(what).arg(&label),
            Duration::from_secs(30),
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "left behind after down -v ({what:?}): {}",
            text(&o)
        );
    }
    let left: Vec<(u32, String)> = tier_processes()
        .into_iter()
        .filter(|(pid, _)| !before.contains(pid))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
