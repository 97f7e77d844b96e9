//! The drivers applications use, each running one scenario (tests/drivers/scenario.*) against
//! MariaDB directly and through Sluice (a primary and a replica, reads split), with the same
//! output expected from both: column types and metadata, JSON, DECIMAL, DATETIME(3), BLOB,
//! utf8mb4 text, insert ids, affected rows, prepared statements, a rollback, a duplicate-key
//! error, warnings, session state, autocommit reads, and `KILL` with the id the driver got
//! in its greeting. Missing drivers fail the test with the command that installs them
//! (`.ci/run` installs them); nothing is skipped.

mod common;

use std::path::PathBuf;

use common::Harness;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args… PORT DATABASE` and returns its output, which must end with `done`.
async fn run(
    program: &str,
    args: &[String],
    port: u16,
    db: &str,
    env: &[(&str, String)],
) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .arg(port.to_string())
        .arg(db)
        .envs(env.iter().map(|(k, v)| (*k, v.clone())))
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("done"),
        "{program} {args:?} against port {port} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The scenario directly and through Sluice: the same output, line by line.
async fn same_as_direct(program: &str, args: &[String], env: &[(&str, String)], install: &str) {
    let probe = tokio::process::Command::new(program)
        .args(&args[..args.len().min(1)])
        .arg("--version")
        .output()
        .await;
    assert!(probe.is_ok(), "{program} is missing: {install}");
    let h = Harness::start(1).await;
    let direct = run(program, args, h.topo.nodes[0].port, "drv_direct", env).await;
    let proxied = run(program, args, h.addr.port(), "drv_proxied", env).await;
    eprintln!("{program} {args:?} directly:\n{direct}");
    for (i, (d, p)) in direct.lines().zip(proxied.lines()).enumerate() {
        assert_eq!(
            p,
            d,
            "{program} {args:?}: line {} differs (through Sluice vs direct)",
            i + 1
        );
    }
    assert_eq!(direct.lines().count(), proxied.lines().count());
    assert!(direct.contains("victim killed"), "{direct}");
    h.shutdown().await;
}

fn python_driver(module: &str, install: &str) -> Vec<String> {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3 cannot import {module}: {install}");
    vec![
        root()
            .join("tests/drivers/scenario.py")
            .display()
            .to_string(),
        module.to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connector_python_sees_what_it_sees_directly() {
    let install = "`pip install mysql-connector-python`";
    let args = python_driver("mysql.connector", install);
    same_as_direct("python3", &args, &[], install).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysqlclient_sees_what_it_sees_directly() {
    let install = "`pip install mysqlclient` (needs libmariadb-dev, pkg-config and a C compiler)";
    let args = python_driver("MySQLdb", install);
    same_as_direct("python3", &args, &[], install).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_mysqli_and_pdo_see_what_they_see_directly() {
    let install = "`apt-get install php-cli php-mysql`";
    let ok = std::process::Command::new("php")
        .args([
            "-r",
            "exit(extension_loaded('mysqli') && extension_loaded('pdo_mysql') ? 0 : 1);",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "php with mysqli and pdo_mysql is missing: {install}");
    let args = vec![root()
        .join("tests/drivers/scenario.php")
        .display()
        .to_string()];
    same_as_direct("php", &args, &[], install).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mysql2_sees_what_it_sees_directly() {
    let install = "`npm install --prefix target/drivers mysql2@3.24.6` (Debian's nodejs and npm)";
    let modules = root().join("target/drivers/node_modules");
    assert!(
        modules.join("mysql2").is_dir(),
        "node mysql2 is missing: {install}"
    );
    let args = vec![root()
        .join("tests/drivers/scenario.js")
        .display()
        .to_string()];
    same_as_direct(
        "node",
        &args,
        &[("NODE_PATH", modules.display().to_string())],
        install,
    )
    .await;
}
