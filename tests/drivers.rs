//! The drivers applications use, each running one scenario (tests/drivers/scenario.*, and in
//! this file for sqlx, mysql_async and the `mariadb` CLI) against
//! MariaDB directly and through Sluice (a primary and two replicas, reads split), with the same
//! output expected from both: column types and metadata, JSON, DECIMAL, DATETIME(3), BLOB,
//! utf8mb4 text, insert ids, affected rows, prepared statements, LOAD DATA LOCAL (the Python
//! drivers, PHP mysqli, node mysql2), several result sets from one query, COM_CHANGE_USER
//! (a good and a wrong password; all but sqlx, which has none), six character sets (bytes and
//! column metadata, text and prepared), a rollback, a duplicate-key error, warnings, session
//! state, autocommit reads, and `KILL` with the id the driver got in its greeting. Each
//! scenario then runs again through a Sluice whose greeting is caching_sha2_password (full
//! authentication by RSA or inside TLS) and must print the same. Missing drivers fail the test
//! with the command that installs them (`.ci/run` installs them); nothing is skipped.

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
    // The character-set reads wait for the replicas; a wait that never saw the rows would
    // compare two empty reads.
    assert!(
        proxied
            .lines()
            .any(|l| l.eq_ignore_ascii_case("replicated true")),
        "{proxied}"
    );
    // The same scenario through a Sluice whose greeting names caching_sha2_password: the
    // driver's first login is a full authentication (RSA exchange, no TLS), the later ones the
    // fast path. MariaDB has no caching_sha2_password, so direct (native) is the reference.
    let (sha2, _key) = sha2_sluice(&h).await;
    let via_sha2 = run(program, args, sha2.local_addr.port(), "drv_sha2", env).await;
    assert_same_lines(
        &direct,
        &via_sha2,
        &format!("{program} {args:?} with caching_sha2"),
    );
    sha2.shutdown().await;
    h.shutdown().await;
}

fn assert_same_lines(direct: &str, other: &str, what: &str) {
    for (i, (d, p)) in direct.lines().zip(other.lines()).enumerate() {
        assert_eq!(
            p,
            d,
            "{what}: line {} differs (through Sluice vs direct)",
            i + 1
        );
    }
    assert_eq!(
        direct.lines().count(),
        other.lines().count(),
        "{what}: {other}"
    );
}

/// A second Sluice in front of the harness's servers whose greeting names
/// caching_sha2_password, with an RSA key for full authentication without TLS and a
/// certificate for clients that switch to TLS (mysql-connector-python and sqlx do when it is
/// offered; they then send the password inside TLS).
async fn sha2_sluice(h: &Harness) -> (sluice::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = common::certs::rsa_key(dir.path());
    let pki = common::certs::make(dir.path(), "sha2");
    let mut config = (*h.config).clone();
    config.proxy.tls = Some(sluice::config::ProxyTlsConfig {
        cert: pki.cert.display().to_string(),
        key: pki.key.display().to_string(),
        require: false,
    });
    config.proxy.default_auth_plugin = "caching_sha2_password".into();
    config.proxy.rsa_private_key = key.display().to_string();
    let running = sluice::server::start(std::sync::Arc::new(config))
        .await
        .expect("start the caching_sha2 sluice");
    assert!(running.wait_ready(std::time::Duration::from_secs(15)).await);
    (running, dir)
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
async fn pymysql_sees_what_it_sees_directly() {
    // PyMySQL's RSA exchange for caching_sha2_password needs the cryptography package.
    let install = "`pip install pymysql cryptography`";
    let args = python_driver("pymysql, cryptography", install);
    let args = vec![args[0].clone(), "pymysql".to_string()];
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
async fn sqlx_scenario(port: u16, db: &str, ssl: sqlx::mysql::MySqlSslMode) -> Vec<String> {
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sqlx::{Connection, Executor, Row};
    let opts = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(common::USER)
        .password(common::PASSWORD)
        .ssl_mode(ssl)
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
    // Several result sets from one multi-statement query (text protocol).
    {
        use futures::StreamExt;
        let mut sets = Vec::new();
        let mut rows_in_set = Vec::new();
        let mut stream =
            c.fetch_many("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t");
        while let Some(item) = stream.next().await {
            match item.unwrap() {
                sqlx::Either::Left(done) => {
                    sets.push(format!("{rows_in_set:?} rows {}", done.rows_affected()));
                    rows_in_set.clear();
                }
                sqlx::Either::Right(row) => rows_in_set.push(
                    (0..row.len())
                        .map(|i| {
                            let v: Vec<u8> = row.try_get_unchecked(i).unwrap();
                            String::from_utf8_lossy(&v).into_owned()
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        out.push(format!("multi {sets:?}"));
    }
    // Character sets: the same stored text read by a client in each character set, text and
    // prepared (autocommit reads: a replica through Sluice); the bytes as they arrive and the
    // column types. sqlx has no COM_CHANGE_USER and no LOAD DATA LOCAL INFILE
    // (launchbadge/sqlx#1766).
    c.execute(
        "CREATE TABLE cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4); \
         INSERT INTO cs VALUES (1, '\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}'), \
         (2, 'caf\u{e9}'), (3, 'abc')",
    )
    .await
    .unwrap();
    for cs in ["cp1251", "koi8r", "cp866", "latin1", "utf8mb4", "binary"] {
        let mut k = sqlx::MySqlConnection::connect_with(&opts.clone().charset(cs).database(db))
            .await
            .unwrap_or_else(|e| panic!("connect with charset {cs}: {e}"));
        let show = |rows: &[sqlx::mysql::MySqlRow]| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    let s: Vec<u8> = r.try_get_unchecked(0).unwrap();
                    let types: Vec<String> = r
                        .columns()
                        .iter()
                        .map(|c| sqlx::TypeInfo::name(sqlx::Column::type_info(c)).to_string())
                        .collect();
                    format!("{} {types:?}", hex(&s))
                })
                .collect()
        };
        let text = k
            .fetch_all(
                "SELECT s, id, @@character_set_results, @@collation_connection FROM cs ORDER BY id",
            )
            .await
            .unwrap();
        let meta: Vec<u8> = text[0].try_get_unchecked(3).unwrap();
        out.push(format!(
            "{cs} text {:?} {}",
            show(&text),
            String::from_utf8_lossy(&meta)
        ));
        let prepared = sqlx::query("SELECT s, id FROM cs WHERE id > ? ORDER BY id")
            .bind(0)
            .fetch_all(&mut k)
            .await
            .unwrap();
        out.push(format!("{cs} prepared {:?}", show(&prepared)));
        k.close().await.unwrap();
    }
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_sees_what_it_sees_directly() {
    let h = Harness::start(2).await;
    use sqlx::mysql::MySqlSslMode;
    let direct = sqlx_scenario(h.topo.nodes[0].port, "sqlx_direct", MySqlSslMode::Preferred).await;
    let proxied = sqlx_scenario(h.addr.port(), "sqlx_proxied", MySqlSslMode::Preferred).await;
    eprintln!("sqlx directly:\n{}", direct.join("\n"));
    assert_eq!(proxied, direct, "sqlx: through Sluice vs direct");
    assert!(direct.contains(&"victim killed true".to_string()));
    let (sha2, _key) = sha2_sluice(&h).await;
    // sqlx 0.8 hashes the caching_sha2 scramble in the wrong order, so every login of it is a
    // full authentication (as against MySQL): inside TLS, and by the RSA exchange without.
    let port = sha2.local_addr.port();
    let via_tls = sqlx_scenario(port, "sqlx_sha2_tls", MySqlSslMode::Required).await;
    assert_eq!(
        via_tls, direct,
        "sqlx with caching_sha2 in TLS: through Sluice vs direct"
    );
    let via_rsa = sqlx_scenario(port, "sqlx_sha2_rsa", MySqlSslMode::Disabled).await;
    assert_eq!(
        via_rsa, direct,
        "sqlx with caching_sha2 and RSA: through Sluice vs direct"
    );
    sha2.shutdown().await;
    h.shutdown().await;
}

/// A column's metadata as mysql_async reads it: name, type, character set, flags, length and
/// decimals (what a driver decodes values by).
fn column_meta(c: &mysql_async::Column) -> String {
    format!(
        "{}:{:?}:{}:{:?}:{}:{}",
        c.name_str(),
        c.column_type(),
        c.character_set(),
        c.flags(),
        c.column_length(),
        c.decimals()
    )
}

/// Rows as mysql_async decodes them (bytes as hex), with their columns' metadata.
fn rows_and_columns(rows: &[mysql_async::Row]) -> String {
    let values: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.clone()
                .unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::Bytes(b) => hex(&b),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect();
    let cols: Vec<String> = rows
        .first()
        .map(|r| r.columns_ref().iter().map(column_meta).collect())
        .unwrap_or_default();
    format!("{values:?} {cols:?}")
}

/// The scenario with mysql_async (the driver Sluice's own tests use): text and binary
/// protocol with full column metadata, a batch insert (COM_STMT_BULK_EXECUTE once the server
/// offers bulk operations), LOAD DATA LOCAL, multi-results, warnings, COM_CHANGE_USER, six
/// character sets (SET NAMES: mysql_async has no handshake character set option) and KILL of
/// its own greeting id.
async fn mysql_async_scenario(port: u16, db: &str) -> Vec<String> {
    use mysql_async::prelude::*;
    use mysql_async::{ChangeUserOpts, Conn, Error, Row};
    let opts = common::instance::opts(port, common::USER, common::PASSWORD);
    let mut out = Vec::new();
    let mut c = Conn::new(opts.clone()).await.expect("connect");
    c.query_drop(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop(
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), \
         d DECIMAL(10,2), ts DATETIME(3), b BLOB, f DOUBLE)",
    )
    .await
    .unwrap();
    // A batch of prepared inserts (bulk execution where offered), then a text insert.
    c.exec_batch(
        "INSERT INTO t (j, name, d, ts, b, f) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            (
                Some(r#"{"a": 1}"#.to_string()),
                Some("h\u{e9}llo \u{2713}".to_string()),
                Some("12.34".to_string()),
                Some("2024-01-02 03:04:05.678".to_string()),
                Some(vec![0u8, 1, 255]),
                Some(1.5f64),
            ),
            (None, None, None, None, None, None),
        ],
    )
    .await
    .unwrap();
    c.query_drop("INSERT INTO t (name) VALUES ('third'), ('fourth')")
        .await
        .unwrap();
    out.push(format!(
        "insert id {:?} rows {} info {:?}",
        c.last_insert_id(),
        c.affected_rows(),
        c.info()
    ));
    let text: Vec<Row> = c
        .query("SELECT id, j, name, d, ts, b, f FROM t ORDER BY id")
        .await
        .unwrap();
    out.push(format!("text {}", rows_and_columns(&text)));
    let prepared: Vec<Row> = c
        .exec(
            "SELECT id, j, name, d, ts, b, f FROM t WHERE id > ? ORDER BY id",
            (0,),
        )
        .await
        .unwrap();
    out.push(format!("prepared {}", rows_and_columns(&prepared)));
    // LOAD DATA LOCAL: the driver streams what its handler returns.
    c.query_drop("CREATE TABLE ld (v VARCHAR(40))")
        .await
        .unwrap();
    let data: String = (0..1000).map(|i| format!("loaded {i}\n")).collect();
    c.set_infile_handler(async move {
        let chunk: std::io::Result<bytes::Bytes> = Ok(bytes::Bytes::from(data));
        Ok(Box::pin(futures::stream::iter(vec![chunk])) as mysql_async::InfileData)
    });
    c.query_drop("LOAD DATA LOCAL INFILE 'scenario.csv' INTO TABLE ld")
        .await
        .unwrap();
    out.push(format!(
        "load data rows {} info {:?}",
        c.affected_rows(),
        c.info()
    ));
    let loaded: Option<(u64, String, String)> = c
        .query_first("SELECT COUNT(*), MIN(v), MAX(v) FROM ld")
        .await
        .unwrap();
    out.push(format!("loaded {loaded:?}"));
    // A rolled back transaction, a duplicate key with its SQLSTATE, session state, warnings.
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop("INSERT INTO t (name) VALUES ('rolled back')")
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    let n: Option<u64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    out.push(format!("count after rollback {n:?}"));
    match c.exec_drop("INSERT INTO t (id) VALUES (?)", (1,)).await {
        Err(Error::Server(e)) => out.push(format!("duplicate key {} {}", e.code, e.state)),
        other => panic!("duplicate key: {other:?}"),
    }
    c.query_drop("SET time_zone = '+05:00'").await.unwrap();
    let s: Option<(String, u64)> = c
        .query_first("SELECT @@time_zone, LAST_INSERT_ID()")
        .await
        .unwrap();
    out.push(format!("session {s:?}"));
    let cast: Vec<Row> = c.query("SELECT CAST('abc' AS SIGNED)").await.unwrap();
    out.push(format!(
        "cast {} warnings {}",
        rows_and_columns(&cast),
        c.get_warnings()
    ));
    let warnings: Vec<Row> = c.query("SHOW WARNINGS").await.unwrap();
    out.push(format!("warnings {}", rows_and_columns(&warnings)));
    // Several result sets from one query.
    let mut sets = Vec::new();
    let mut r = c
        .query_iter("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t")
        .await
        .unwrap();
    for _ in 0..10 {
        let rows: Vec<Row> = r.collect().await.unwrap();
        sets.push(rows_and_columns(&rows));
        if r.is_empty() {
            break;
        }
    }
    drop(r);
    out.push(format!("multi {sets:?}"));
    // COM_CHANGE_USER to another account, then a wrong password.
    let mut m = Conn::new(opts.clone()).await.unwrap();
    m.change_user(
        ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some("other-pw".into()))
            .with_db_name(Some(db.into())),
    )
    .await
    .unwrap();
    let who: Option<(String, String, String)> = m
        .query_first("SELECT CURRENT_USER(), DATABASE(), @@time_zone")
        .await
        .unwrap();
    out.push(format!(
        "changed user {:?}",
        who.map(|(u, d, z)| (u, d == db, z))
    ));
    let bad = m
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some("other".into()))
                .with_pass(Some("wrong".into())),
        )
        .await;
    match bad {
        Err(Error::Server(e)) => out.push(format!("change user refused {}", e.code)),
        other => out.push(format!("change user with a wrong password: {other:?}")),
    }
    // Character sets (autocommit reads: the replicas through Sluice, once they have the rows;
    // wait, bounded, until four reads in a row see them).
    c.query_drop(
        "CREATE TABLE cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4); \
         INSERT INTO cs VALUES (1, '\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}'), \
         (2, 'caf\u{e9}'), (3, 'abc')",
    )
    .await
    .unwrap();
    let mut w = Conn::new(opts.clone()).await.unwrap();
    let mut seen = 0;
    for _ in 0..200 {
        // A replica that has not yet created the table answers 1146: not yet, like a short
        // count.
        let n: Option<u64> = match w.query_first(format!("SELECT COUNT(*) FROM {db}.cs")).await {
            Ok(n) => n,
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => None,
            Err(e) => panic!("waiting for the replicas: {e}"),
        };
        seen = if n == Some(3) { seen + 1 } else { 0 };
        if seen == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    out.push(format!("replicated {}", seen == 4));
    for cs in ["cp1251", "koi8r", "cp866", "latin1", "utf8mb4", "binary"] {
        w.query_drop(format!("SET NAMES {cs}")).await.unwrap();
        let text: Vec<Row> = w
            .query(format!(
                "SELECT s, id, @@character_set_results, @@collation_connection FROM {db}.cs ORDER BY id"
            ))
            .await
            .unwrap();
        out.push(format!("{cs} text {}", rows_and_columns(&text)));
        let prepared: Vec<Row> = w
            .exec(
                format!("SELECT s, id FROM {db}.cs WHERE id > ? ORDER BY id"),
                (0,),
            )
            .await
            .unwrap();
        out.push(format!("{cs} prepared {}", rows_and_columns(&prepared)));
    }
    // KILL with the id the driver got in the greeting: the victim's next statement fails.
    let mut victim = Conn::new(opts.clone()).await.unwrap();
    let vid = victim.id();
    let same: Option<u32> = victim.query_first("SELECT CONNECTION_ID()").await.unwrap();
    out.push(format!(
        "greeting id is CONNECTION_ID() {}",
        same == Some(vid)
    ));
    w.query_drop(format!("KILL {vid}")).await.unwrap();
    let gone = victim.query_drop("SELECT 1").await.is_err();
    out.push(format!("victim killed {gone}"));
    c.query_drop(format!("DROP DATABASE {db}")).await.unwrap();
    for k in [c, m, w] {
        let _ = k.disconnect().await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_sees_what_it_sees_directly() {
    let h = Harness::start(2).await;
    let direct = mysql_async_scenario(h.topo.nodes[0].port, "ma_direct").await;
    let proxied = mysql_async_scenario(h.addr.port(), "ma_proxied").await;
    eprintln!("mysql_async directly:\n{}", direct.join("\n"));
    assert_same_lines(
        &direct.join("\n"),
        &proxied.join("\n"),
        "mysql_async through Sluice",
    );
    assert!(direct.contains(&"victim killed true".to_string()));
    assert!(direct.contains(&"replicated true".to_string()));
    // Through the caching_sha2 Sluice: mysql_async's first login is a full authentication by
    // the RSA exchange (no TLS asked for), then the fast path.
    let (sha2, _key) = sha2_sluice(&h).await;
    let via_sha2 = mysql_async_scenario(sha2.local_addr.port(), "ma_sha2").await;
    assert_same_lines(
        &direct.join("\n"),
        &via_sha2.join("\n"),
        "mysql_async with caching_sha2",
    );
    sha2.shutdown().await;
    h.shutdown().await;
}

/// Bytes as printable text, every byte kept (non-ASCII escaped), so that two outputs compare
/// byte for byte.
fn escaped(b: &[u8]) -> String {
    b.iter()
        .flat_map(|c| std::ascii::escape_default(*c))
        .map(char::from)
        .collect()
}

/// The `mariadb` CLI logged in to `port`, its standard streams piped.
fn cli_command(port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(common::cli_binary());
    c.args(["--no-defaults", "--protocol=tcp", "-h127.0.0.1"])
        .arg(format!("-P{port}"))
        .arg(format!("-u{}", common::USER))
        .arg(format!("-p{}", common::PASSWORD))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Runs the `mariadb` CLI with `sql` on its standard input (batch mode, column metadata
/// printed for every result, errors do not stop it); its output and errors as lines.
async fn cli(port: u16, extra: &[&str], sql: &str) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = cli_command(port)
        .args([
            "--batch",
            "--raw",
            "--column-type-info",
            "--force",
            "--skip-reconnect",
            "--local-infile=1",
        ])
        .args(extra)
        .spawn()
        .expect("the mariadb CLI");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(sql.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    out.stdout
        .split(|b| *b == b'\n')
        .chain(out.stderr.split(|b| *b == b'\n').map(|l| l as &[u8]))
        .map(escaped)
        .collect()
}

/// A CLI session that reports its id (`CONNECTION_ID()`), is killed with it from another
/// connection, and is then given one more statement: what it prints after the kill.
async fn cli_killed(port: u16) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut child = cli_command(port)
        .args([
            "--batch",
            "--unbuffered",
            "--skip-reconnect",
            "--skip-column-names",
        ])
        .spawn()
        .expect("the mariadb CLI");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(b"SELECT CONNECTION_ID();\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stdout.read_line(&mut line),
    )
    .await
    .expect("the CLI answers")
    .unwrap();
    let id: u32 = line.trim().parse().expect("an id");
    let mut k =
        mysql_async::Conn::new(common::instance::opts(port, common::USER, common::PASSWORD))
            .await
            .unwrap();
    mysql_async::prelude::Queryable::query_drop(&mut k, format!("KILL {id}"))
        .await
        .unwrap();
    let _ = k.disconnect().await;
    stdin.write_all(b"SELECT 'after';\n").await.unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let mut lines = vec!["killed CLI session:".to_string()];
    lines.extend(
        rest.split(|b| *b == b'\n')
            .chain(out.stderr.split(|b| *b == b'\n'))
            .map(escaped),
    );
    lines
}

/// The scenario with the `mariadb` CLI (libmariadb): the same statements as the other
/// drivers, every result with the CLI's column metadata (type, collation, length, flags),
/// errors with their SQLSTATE, LOAD DATA LOCAL, a multi-statement query (one COM_QUERY under
/// a changed delimiter), text PREPARE/EXECUTE, six character sets (`--default-character-set`:
/// the handshake byte) read from a replica through Sluice, and KILL of the id the CLI's own
/// session got. The CLI has no command for COM_CHANGE_USER. `db` is the same name for every
/// run (the CLI prints it in the metadata); each run drops it at the end.
async fn cli_scenario(port: u16, db: &str, csv: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let setup = format!(
        "CREATE DATABASE {db} CHARACTER SET utf8mb4;
USE {db};
CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), d DECIMAL(10,2), ts DATETIME(3), b BLOB, f DOUBLE);
INSERT INTO t (j, name, d, ts, b, f) VALUES ('{{\"a\": 1}}', 'h\u{e9}llo \u{2713}', 12.34, '2024-01-02 03:04:05.678', 0x0001ff, 1.5), (NULL, NULL, NULL, NULL, NULL, NULL);
SELECT LAST_INSERT_ID(), ROW_COUNT();
SELECT id, j, name, d, ts, HEX(b), f FROM t ORDER BY id;
CREATE TABLE ld (v VARCHAR(40));
LOAD DATA LOCAL INFILE '{}' INTO TABLE ld;
SELECT ROW_COUNT();
SELECT COUNT(*), MIN(v), MAX(v) FROM ld;
START TRANSACTION;
INSERT INTO t (name) VALUES ('rolled back');
ROLLBACK;
SELECT COUNT(*) FROM t;
INSERT INTO t (id) VALUES (1);
SET time_zone = '+05:00';
SELECT @@time_zone, LAST_INSERT_ID();
SELECT CAST('abc' AS SIGNED);
SHOW WARNINGS;
SET @min = 1;
PREPARE p FROM 'SELECT id, name, d FROM t WHERE id > ? ORDER BY id';
EXECUTE p USING @min;
DEALLOCATE PREPARE p;
DELIMITER //
SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t //
DELIMITER ;
CREATE TABLE cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4);
INSERT INTO cs VALUES (1, '\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}'), (2, 'caf\u{e9}'), (3, 'abc');
",
        csv.display()
    );
    out.extend(cli(port, &["--default-character-set=utf8mb4"], &setup).await);
    // Autocommit reads go to the replicas through Sluice: wait (bounded) until four reads in a
    // row see the rows, as the other scenarios do.
    let mut seen = 0;
    for _ in 0..200 {
        let got = cli(
            port,
            &["--skip-column-type-info"],
            &format!("SELECT COUNT(*) FROM {db}.cs;"),
        )
        .await;
        seen = if got.iter().any(|l| l == "3") {
            seen + 1
        } else {
            0
        };
        if seen == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    out.push(format!("replicated {}", seen == 4));
    for cs in ["cp1251", "koi8r", "cp866", "latin1", "utf8mb4", "binary"] {
        out.push(format!("-- {cs}"));
        let sql = format!(
            "SELECT s, id, @@character_set_results, @@collation_connection FROM {db}.cs ORDER BY id;"
        );
        out.extend(cli(port, &[&format!("--default-character-set={cs}")], &sql).await);
    }
    out.extend(cli_killed(port).await);
    out.extend(cli(port, &[], &format!("DROP DATABASE {db};")).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_cli_sees_what_it_sees_directly() {
    let h = Harness::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("scenario.csv");
    let data: String = (0..1000).map(|i| format!("loaded {i}\n")).collect();
    std::fs::write(&csv, data).unwrap();
    let db = "drv_cli";
    let direct = cli_scenario(h.topo.nodes[0].port, db, &csv).await;
    eprintln!("the mariadb CLI directly:\n{}", direct.join("\n"));
    for want in [
        "replicated true",
        "1000",
        "ERROR 1062 (23000)",
        "ERROR 2013",
        "killed CLI session:",
    ] {
        assert!(
            direct.iter().any(|l| l.starts_with(want)),
            "{want}: {direct:?}"
        );
    }
    let proxied = cli_scenario(h.addr.port(), db, &csv).await;
    assert_same_lines(
        &direct.join("\n"),
        &proxied.join("\n"),
        "the mariadb CLI through Sluice",
    );
    let (sha2, _key) = sha2_sluice(&h).await;
    let via_sha2 = cli_scenario(sha2.local_addr.port(), db, &csv).await;
    assert_same_lines(
        &direct.join("\n"),
        &via_sha2.join("\n"),
        "the mariadb CLI with caching_sha2",
    );
    sha2.shutdown().await;
    h.shutdown().await;
}
