//! mysql_async through Sluice, compared with the same statements run directly on the primary:
//! rows, affected rows, last insert id, warnings, errors and status flags must all match.

mod common;

use common::Harness;
use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value};

/// Status flags of the last OK packet.
fn status(c: &Conn) -> u16 {
    c.last_ok_packet().map_or(0, |ok| ok.status_flags().bits())
}

#[derive(Debug, PartialEq)]
struct Observed {
    rows: Vec<Vec<Value>>,
    affected: u64,
    last_insert_id: Option<u64>,
    warnings: u16,
    status: u16,
}

async fn observe(c: &mut Conn, sql: &str) -> Result<Observed, (u16, String, String)> {
    match c.query::<Row, _>(sql).await {
        Ok(rows) => Ok(Observed {
            rows: rows.into_iter().map(Row::unwrap).collect(),
            affected: c.affected_rows(),
            last_insert_id: c.last_insert_id(),
            warnings: c.get_warnings(),
            status: status(c),
        }),
        Err(mysql_async::Error::Server(e)) => Err((e.code, e.state, e.message)),
        Err(e) => panic!("{sql}: {e}"),
    }
}

const SCRIPT: &[&str] = &[
    "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL, qty INT, UNIQUE KEY (name))",
    "INSERT INTO t (name, qty) VALUES ('apple', 3), ('pear', 5), ('plum', NULL)",
    "SELECT id, name, qty FROM t ORDER BY id",
    "INSERT IGNORE INTO t (name, qty) VALUES ('apple', 9)",
    "SHOW WARNINGS",
    "UPDATE t SET qty = qty + 1 WHERE qty IS NOT NULL",
    "SELECT * FROM no_such_table",
    "INSERT INTO t (name) VALUES (NULL)",
    "SELECT 1/0, CAST('x' AS SIGNED)",
    "BEGIN",
    "INSERT INTO t (name, qty) VALUES ('fig', 1)",
    "SELECT LAST_INSERT_ID(), @@in_transaction",
    "ROLLBACK",
    "SET autocommit = 0",
    "DELETE FROM t WHERE name = 'pear'",
    "COMMIT",
    "SET autocommit = 1",
    "SELECT COUNT(*), SUM(qty) FROM t",
    "SET NAMES latin1",
    "SELECT @@character_set_client, @@character_set_results",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "SELECT @@sql_mode",
    "DROP TABLE t",
];

#[tokio::test]
async fn text_protocol_matches_direct() {
    // No replica: this compares with the primary statement by statement, including reads
    // right after writes (read-your-writes is not implemented yet).
    let h = Harness::start(2).await;
    // The same script on the same database name, first directly, then through Sluice.
    let mut results = Vec::new();
    for mut c in [h.direct_conn().await, h.proxy_conn().await] {
        c.query_drop("DROP DATABASE IF EXISTS d; CREATE DATABASE d; USE d")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for sql in SCRIPT {
            seen.push(observe(&mut c, sql).await);
        }
        results.push(seen);
    }
    for (i, sql) in SCRIPT.iter().enumerate() {
        assert_eq!(
            results[0][i], results[1][i],
            "statement {sql:?} differs (left direct, right through sluice)"
        );
    }
    let mut proxied = h.proxy_conn().await;
    proxied.query_drop("USE d").await.unwrap();
    // Spot-check that the assertions above saw real results, not two empty ones.
    let r = observe(&mut proxied, "SELECT 'x', 42").await.unwrap();
    assert_eq!(
        r.rows,
        vec![vec![
            Value::Bytes(b"x".to_vec()),
            Value::Bytes(b"42".to_vec())
        ]]
    );
    let e = observe(&mut proxied, "SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(e.0, 1146);
    assert_eq!(e.1, "42S02");
    assert!(e.2.contains("no_such_table"), "{}", e.2);
    // The in-transaction flag reaches the client.
    proxied.query_drop("BEGIN").await.unwrap();
    assert_ne!(
        status(&proxied) & 1,
        0,
        "SERVER_STATUS_IN_TRANS after BEGIN"
    );
    proxied.query_drop("COMMIT").await.unwrap();
    assert_eq!(status(&proxied) & 1, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn binary_protocol_and_multi_statements() {
    let h = Harness::start(1).await;
    let mut c = h.proxy_conn().await;
    c.query_drop("CREATE DATABASE ps; USE ps; CREATE TABLE k (id INT PRIMARY KEY, v VARCHAR(50), d DOUBLE, ts DATETIME(6), b BLOB)")
        .await
        .unwrap();
    let stmt = c
        .prep("INSERT INTO k VALUES (?, ?, ?, ?, ?)")
        .await
        .unwrap();
    for i in 1..=50i64 {
        c.exec_drop(
            &stmt,
            (
                i,
                format!("value {i}"),
                i as f64 / 3.0,
                "2026-11-25 10:11:12.123456",
                vec![i as u8; i as usize],
            ),
        )
        .await
        .unwrap();
        assert_eq!(c.affected_rows(), 1);
    }
    let rows: Vec<(i64, String, f64, String, Vec<u8>)> = c
        .exec(
            "SELECT id, v, d, CAST(ts AS CHAR), b FROM k WHERE id > ? ORDER BY id",
            (40,),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0].0, 41);
    assert_eq!(rows[0].1, "value 41");
    assert!((rows[0].2 - 41.0 / 3.0).abs() < 1e-9);
    assert_eq!(rows[0].3, "2026-11-25 10:11:12.123456");
    assert_eq!(rows[9].4, vec![50u8; 50]);
    // A failing prepared statement returns the server's error.
    let err = c.prep("SELECT nope FROM k").await.unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!((e.code, e.state.as_str()), (1054, "42S22")),
        e => panic!("{e}"),
    }
    c.close(stmt).await.unwrap();

    // Multi-statement text query with several result sets.
    let mut result = c
        .query_iter("SELECT 1 AS a; SELECT 2 AS b, 3 AS c; UPDATE k SET v = 'x' WHERE id <= 5; SELECT COUNT(*) FROM k")
        .await
        .unwrap();
    let mut sets = Vec::new();
    loop {
        let rows: Vec<Row> = result.collect().await.unwrap();
        sets.push((
            rows.into_iter().map(Row::unwrap).collect::<Vec<_>>(),
            result.affected_rows(),
        ));
        if result.is_empty() {
            break;
        }
    }
    drop(result);
    assert_eq!(sets.len(), 4, "{sets:?}");
    assert_eq!(sets[0].0, vec![vec![Value::Bytes(b"1".to_vec())]]);
    assert_eq!(
        sets[1].0,
        vec![vec![
            Value::Bytes(b"2".to_vec()),
            Value::Bytes(b"3".to_vec())
        ]]
    );
    assert_eq!(sets[2].1, 5);
    assert_eq!(sets[3].0, vec![vec![Value::Bytes(b"50".to_vec())]]);

    // Stored procedure with several results through the binary protocol.
    c.query_drop("CREATE PROCEDURE p(IN n INT) BEGIN SELECT n; SELECT n * 2; END")
        .await
        .unwrap();
    let r: Vec<i64> = c.exec("CALL p(?)", (21,)).await.unwrap();
    assert_eq!(r, vec![21]);
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(
        one,
        Some(1),
        "the session is usable after a multi-result CALL"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn large_blob_round_trip() {
    let h = Harness::start_with(0, |c| c.proxy.max_packet_bytes = 64 << 20).await;
    let mut c = h.proxy_conn().await;
    c.query_drop(
        "CREATE DATABASE big; USE big; CREATE TABLE b (id INT PRIMARY KEY, data LONGBLOB)",
    )
    .await
    .unwrap();
    let blob: Vec<u8> = (0..(20usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    c.exec_drop("INSERT INTO b VALUES (1, ?)", (blob.clone(),))
        .await
        .unwrap();
    let back: Option<Vec<u8>> = c
        .exec_first("SELECT data FROM b WHERE id = ?", (1,))
        .await
        .unwrap();
    assert!(
        back.as_ref() == Some(&blob),
        "binary round trip of 20 MiB differs"
    );
    let back: Option<Vec<u8>> = c
        .query_first("SELECT data FROM b WHERE id = 1")
        .await
        .unwrap();
    assert!(
        back.as_ref() == Some(&blob),
        "text round trip of 20 MiB differs"
    );
    let len: Option<i64> = c.query_first("SELECT LENGTH(data) FROM b").await.unwrap();
    assert_eq!(len, Some(20 << 20));
    h.shutdown().await;
}

#[tokio::test]
async fn change_user_and_reset_connection() {
    let h = Harness::start(2).await;
    let mut c = h.proxy_conn().await;
    c.query_drop("SET @v = 5").await.unwrap();
    let who: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"));
    // COM_RESET_CONNECTION clears user variables.
    c.reset().await.unwrap();
    let v: Option<Option<i64>> = c.query_first("SELECT @v").await.unwrap();
    assert_eq!(v, Some(None));
    // COM_CHANGE_USER to another configured user.
    let opts = mysql_async::ChangeUserOpts::default()
        .with_user(Some("other".into()))
        .with_pass(Some("other-pw".into()));
    c.change_user(opts).await.unwrap();
    let who: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("other@%"));
    // A wrong password in COM_CHANGE_USER is refused by Sluice.
    let bad = mysql_async::ChangeUserOpts::default()
        .with_user(Some("app".into()))
        .with_pass(Some("wrong".into()));
    match c.change_user(bad).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045),
        other => panic!("expected access denied, got {other:?}"),
    }
    h.shutdown().await;
}
