//! Real client programs through Sluice: the `mariadb` command-line client and PyMySQL
//! (including LOAD DATA LOCAL INFILE and a 20 MiB BLOB round trip).

mod common;

use std::io::Write as _;

use common::{cli, python_with_pymysql, Harness, PASSWORD, USER};

#[tokio::test]
async fn mariadb_cli_batch_output_matches_direct() {
    // Two replicas: reads right after writes go to a replica that has applied them
    // (read-your-writes), with output identical to the primary's — but for @@read_only, which
    // shows where the read ran.
    let h = Harness::start(2).await;
    let script = "CREATE DATABASE IF NOT EXISTS c; USE c; \
        DROP TABLE IF EXISTS t; CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(20)); \
        INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, NULL); \
        SELECT * FROM t ORDER BY id; SELECT COUNT(*) AS n FROM t; \
        SHOW COLUMNS FROM t; SELECT @@read_only, DATABASE(); \
        SELECT CAST('1x' AS SIGNED); SHOW WARNINGS; DROP DATABASE c;";
    let (ok_d, out_d, err_d) = cli(h.topo.nodes[0].port, &["--batch", "-e", script]).await;
    let (ok_p, out_p, err_p) = cli(h.addr.port(), &["--batch", "-e", script]).await;
    assert!(ok_d, "direct: {err_d}");
    assert!(ok_p, "through sluice: {err_p}");
    let routed = "@@read_only\tDATABASE()\n1\tc\n";
    assert!(out_p.contains(routed), "the read ran on a replica: {out_p}");
    assert_eq!(
        out_d,
        out_p.replace(routed, "@@read_only\tDATABASE()\n0\tc\n")
    );
    assert!(out_p.contains("1\tone\n2\ttwo\n3\tNULL\n"), "{out_p}");
    assert!(out_p.contains("n\n3\n"), "{out_p}");
    assert!(
        out_p.contains("Truncated incorrect INTEGER value"),
        "{out_p}"
    );

    // An error: same message and exit status as direct.
    let (ok_d, _, err_d) = cli(h.topo.nodes[0].port, &["-e", "SELECT * FROM mysql.nope"]).await;
    let (ok_p, _, err_p) = cli(h.addr.port(), &["-e", "SELECT * FROM mysql.nope"]).await;
    assert!(!ok_d && !ok_p);
    assert_eq!(err_d, err_p);
    assert!(err_p.contains("ERROR 1146 (42S02)"), "{err_p}");
    h.shutdown().await;
}

#[tokio::test]
async fn mariadb_cli_wrong_password() {
    let h = Harness::start(2).await;
    let out = tokio::process::Command::new(common::cli_binary())
        .args(["--no-defaults", "--protocol=tcp", "-h127.0.0.1"])
        .arg(format!("-P{}", h.addr.port()))
        .args(["-uapp", "-pnot-it", "-e", "SELECT 1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "ERROR 1045 (28000): Access denied for user 'app'@'127.0.0.1' (using password: YES)"
        ),
        "{err}"
    );
    h.shutdown().await;
}

const PY: &str = r#"
import os, sys, hashlib, pymysql
port = int(sys.argv[1]); path = sys.argv[2]
c = pymysql.connect(host='127.0.0.1', port=port, user=sys.argv[3], password=sys.argv[4],
                    local_infile=True, autocommit=True)
cur = c.cursor()
cur.execute("DROP DATABASE IF EXISTS py")
cur.execute("CREATE DATABASE py")
cur.execute("USE py")
cur.execute("CREATE TABLE li (id INT PRIMARY KEY, name VARCHAR(40))")
n = cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE li FIELDS TERMINATED BY ','", (path,))
print("loaded", n)
cur.execute("SELECT COUNT(*), MIN(id), MAX(id), SUM(id) FROM li")
print("stats", cur.fetchone())
cur.execute("CREATE TABLE b (id INT PRIMARY KEY, data LONGBLOB)")
blob = bytes((i * 7 + 3) % 256 for i in range(20 * 1024 * 1024))
cur.execute("INSERT INTO b VALUES (1, %s)", (blob,))
cur.execute("SELECT data FROM b WHERE id = 1")
back = cur.fetchone()[0]
print("blob", len(back), back == blob, hashlib.sha1(back).hexdigest() == hashlib.sha1(blob).hexdigest())
cur.execute("INSERT INTO li VALUES (1, 'dup')") if False else None
try:
    cur.execute("INSERT INTO li VALUES (1, 'dup')")
except pymysql.err.IntegrityError as e:
    print("error", e.args[0])
c.begin()
cur.execute("UPDATE li SET name = 'x' WHERE id < 10")
print("in_trans", bool(c.server_status & 1), cur.rowcount)
c.rollback()
print("after_rollback", bool(c.server_status & 1))
cur.execute("DROP DATABASE py")
"#;

#[tokio::test]
async fn pymysql_load_data_blob_errors_and_transactions() {
    let h = Harness::start_with(0, |c| c.proxy.max_packet_bytes = 64 << 20).await;
    let python = python_with_pymysql();
    let mut csv = tempfile::NamedTempFile::new().unwrap();
    for i in 1..=5000 {
        writeln!(csv, "{i},name {i}").unwrap();
    }
    csv.flush().unwrap();
    let run = |port: u16| {
        let child = tokio::process::Command::new(python)
            .args(["-c", PY])
            .arg(port.to_string())
            .arg(csv.path())
            .args([USER, PASSWORD])
            .output();
        async move {
            let out = child.await.unwrap();
            assert!(
                out.status.success(),
                "python failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let direct = run(h.topo.nodes[0].port).await;
    let proxied = run(h.addr.port()).await;
    assert_eq!(direct, proxied);
    assert!(proxied.contains("loaded 5000\n"), "{proxied}");
    assert!(
        proxied.contains("stats (5000, 1, 5000, Decimal('12502500'))"),
        "{proxied}"
    );
    assert!(proxied.contains("blob 20971520 True True\n"), "{proxied}");
    assert!(proxied.contains("error 1062\n"), "{proxied}");
    assert!(proxied.contains("in_trans True 9\n"), "{proxied}");
    assert!(proxied.contains("after_rollback False\n"), "{proxied}");
    h.shutdown().await;
}
