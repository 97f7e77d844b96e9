//! The drivers applications use, each running one scenario (tests/drivers/scenario.*) against
//! MariaDB directly and through Sluice (a primary and two replicas, reads split), with the same
//! output expected from both: column types and metadata, JSON, DECIMAL, DATETIME(3), BLOB,
//! utf8mb4 text, insert ids, affected rows, prepared statements, LOAD DATA LOCAL (the Python
//! drivers), a rollback, a duplicate-key error, warnings, session state, autocommit reads, and `KILL` with the id the driver got
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
    let h = Harness::start(2).await;
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
    node_mysql2(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_mysql2_compressed_sees_what_it_sees_directly() {
    node_mysql2(true).await;
}

async fn node_mysql2(compress: bool) {
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
    let env = [
        ("NODE_PATH", modules.display().to_string()),
        (
            "SCENARIO_COMPRESS",
            if compress { "1" } else { "0" }.to_string(),
        ),
    ];
    same_as_direct("node", &args, &env, install).await;
}

/// The scenario with sqlx (prepared statements for every query with arguments, a pool of
/// connections, transactions), printed as lines.
async fn sqlx_scenario(port: u16, db: &str) -> Vec<String> {
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sqlx::{Connection, Executor, Row};
    let opts = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(common::USER)
        .password(common::PASSWORD)
        .charset("utf8mb4");
    let mut out = Vec::new();
    let mut c = sqlx::MySqlConnection::connect_with(&opts)
        .await
        .expect("connect");
    c.execute(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4").as_str())
        .await
        .unwrap();
    c.execute(format!("USE {db}").as_str()).await.unwrap();
    c.execute(
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), \
         d DECIMAL(10,2), b BLOB, f DOUBLE)",
    )
    .await
    .unwrap();
    let r = sqlx::query("INSERT INTO t (j, name, d, b, f) VALUES (?, ?, ?, ?, ?)")
        .bind(r#"{"a": 1}"#)
        .bind("h\u{e9}llo \u{2713}")
        .bind("12.34")
        .bind(vec![0u8, 1, 255])
        .bind(1.5f64)
        .execute(&mut c)
        .await
        .unwrap();
    out.push(format!(
        "insert id {} rows {}",
        r.last_insert_id(),
        r.rows_affected()
    ));
    let r = sqlx::query("INSERT INTO t (name) VALUES (NULL), ('third')")
        .execute(&mut c)
        .await
        .unwrap();
    out.push(format!(
        "insert id {} rows {}",
        r.last_insert_id(),
        r.rows_affected()
    ));
    let rows = sqlx::query(
        "SELECT id, CAST(j AS CHAR) AS j, name, CAST(d AS CHAR) AS d, b, f FROM t \
         WHERE id >= ? ORDER BY id",
    )
    .bind(1)
    .fetch_all(&mut c)
    .await
    .unwrap();
    for r in &rows {
        out.push(format!(
            "row {} {:?} {:?} {:?} {:?} {:?}",
            r.get::<i32, _>("id"),
            r.get::<Option<String>, _>("j"),
            r.get::<Option<String>, _>("name"),
            r.get::<Option<String>, _>("d"),
            r.get::<Option<Vec<u8>>, _>("b"),
            r.get::<Option<f64>, _>("f"),
        ));
    }
    let cols: Vec<String> = rows[0]
        .columns()
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                sqlx::Column::name(c),
                sqlx::TypeInfo::name(sqlx::Column::type_info(c))
            )
        })
        .collect();
    out.push(format!("columns {cols:?}"));
    let mut tx = c.begin().await.unwrap();
    sqlx::query("INSERT INTO t (name) VALUES ('rolled back')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(&mut c)
        .await
        .unwrap();
    out.push(format!("count after rollback {n}"));
    match sqlx::query("INSERT INTO t (id) VALUES (?)")
        .bind(1)
        .execute(&mut c)
        .await
    {
        Err(sqlx::Error::Database(e)) => out.push(format!("duplicate key {:?}", e.code())),
        other => panic!("duplicate key: {other:?}"),
    }
    // A pool: reads in autocommit (on the replica through Sluice), concurrently.
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.clone().database(db))
        .await
        .unwrap();
    let reads = (0..20).map(|i| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) + ? FROM t")
                .bind(i64::from(i))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    });
    let sums: Vec<i64> = futures::future::join_all(reads).await;
    out.push(format!("pool reads {sums:?}"));
    // KILL by the id the connection reports: its next statement fails.
    let mut victim = sqlx::MySqlConnection::connect_with(&opts).await.unwrap();
    let vid: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut victim)
        .await
        .unwrap();
    c.execute(format!("KILL {vid}").as_str()).await.unwrap();
    let gone = sqlx::query("SELECT 1").execute(&mut victim).await.is_err();
    out.push(format!("victim killed {gone}"));
    pool.close().await;
    c.execute(format!("DROP DATABASE {db}").as_str())
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_sees_what_it_sees_directly() {
    let h = Harness::start(2).await;
    let direct = sqlx_scenario(h.topo.nodes[0].port, "sqlx_direct").await;
    let proxied = sqlx_scenario(h.addr.port(), "sqlx_proxied").await;
    eprintln!("sqlx directly:\n{}", direct.join("\n"));
    assert_eq!(proxied, direct, "sqlx: through Sluice vs direct");
    assert!(direct.contains(&"victim killed true".to_string()));
    h.shutdown().await;
}
