//! Read/write splitting against a real primary + 2 replicas. Where a statement ran is read from
//! the server itself (`@@server_id`: 1 = primary db1, 2 and 3 = replicas), never taken from
//! Sluice's word.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, Harness};
use mysql_async::prelude::*;
use mysql_async::Conn;

async fn server_id(c: &mut Conn, sql: &str) -> u32 {
    let v: Option<u32> = c
        .query_first(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    v.unwrap()
}

/// Waits until the monitor has measured both replicas within the default budget.
async fn replicas_ready(h: &Harness) {
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    eventually("replica lag measured", Duration::from_secs(10), || {
        let ok = rx.borrow_and_update().servers[1..]
            .iter()
            .all(|s| s.serves_reads_within(1000));
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_everything_else_to_the_primary() {
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    let mut c = h.proxy_conn().await;
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(server_id(&mut c, "SELECT @@server_id").await);
    }
    assert_eq!(
        seen,
        BTreeSet::from([2, 3]),
        "plain reads are spread over both replicas"
    );
    // SHOW is a read too.
    let (_, v): (String, u32) = c
        .query_first("SHOW VARIABLES LIKE 'server_id'")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(v, 1);

    // Locking reads and primary-only functions.
    c.query_drop(
        "CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY AUTO_INCREMENT, origin INT)",
    )
    .await
    .unwrap();
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id FROM DUAL FOR UPDATE").await,
        1
    );
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id FROM DUAL LOCK IN SHARE MODE").await,
        1
    );
    assert_eq!(
        server_id(&mut c, "/* sluice: route=primary */ SELECT @@server_id").await,
        1
    );
    // Writes run on the primary: the row records where it was written.
    c.query_drop("INSERT INTO r.t (origin) SELECT @@server_id")
        .await
        .unwrap();
    let (id, origin): (u64, u32) = c
        .query_first("SELECT LAST_INSERT_ID(), (SELECT origin FROM r.t)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, origin), (1, 1));

    // Transactions: every statement on the primary, until COMMIT.
    c.query_drop("BEGIN").await.unwrap();
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("COMMIT").await.unwrap();
    assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);
    // A read-only transaction runs on one replica, start to end.
    for _ in 0..3 {
        c.query_drop("START TRANSACTION READ ONLY").await.unwrap();
        let first = server_id(&mut c, "SELECT @@server_id").await;
        assert_ne!(first, 1);
        let stmt = c.prep("SELECT @@server_id + 0 * ?").await.unwrap();
        for _ in 0..4 {
            assert_eq!(
                server_id(&mut c, "SELECT @@server_id").await,
                first,
                "same replica for the whole transaction"
            );
            let v: Option<u32> = c.exec_first(&stmt, (1,)).await.unwrap();
            assert_eq!(v, Some(first));
        }
        match c.query_drop("INSERT INTO r.t (origin) VALUES (0)").await {
            // The replica refuses it as read-only (1290); the primary would say 1792.
            Err(mysql_async::Error::Server(e)) => {
                assert!(matches!(e.code, 1290 | 1792), "{}", e.message)
            }
            other => panic!("a write in a read-only transaction must fail: {other:?}"),
        }
        c.query_drop("COMMIT").await.unwrap();
        c.close(stmt).await.unwrap();
    }
    // autocommit=0: a SELECT opens a transaction, so it stays on the primary.
    c.query_drop("SET autocommit = 0").await.unwrap();
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("SET autocommit = 1").await.unwrap();
    assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);

    // Prepared statements: reads on replicas, inside a transaction on the primary.
    let stmt = c.prep("SELECT @@server_id + 0 * ?").await.unwrap();
    let mut seen = BTreeSet::new();
    for i in 0..10 {
        let v: Option<u32> = c.exec_first(&stmt, (i,)).await.unwrap();
        seen.insert(v.unwrap());
    }
    assert_eq!(
        seen,
        BTreeSet::from([2, 3]),
        "a prepared read runs on both replicas"
    );
    c.query_drop("BEGIN").await.unwrap();
    let v: Option<u32> = c.exec_first(&stmt, (1,)).await.unwrap();
    assert_eq!(v, Some(1));
    c.query_drop("COMMIT").await.unwrap();
    let ins = c
        .prep("INSERT INTO r.t (origin) VALUES (@@server_id + 0 * ?)")
        .await
        .unwrap();
    c.exec_drop(&ins, (5,)).await.unwrap();
    let origins: Vec<u32> = c
        .query("SELECT origin FROM r.t ORDER BY id FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(origins, vec![1, 1], "a prepared write runs on the primary");
    c.close(stmt).await.unwrap();
    c.close(ins).await.unwrap();

    // SHOW WARNINGS goes where the previous statement ran.
    let _: Option<i64> = c.query_first("SELECT CAST('7x' AS SIGNED)").await.unwrap();
    let warnings: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
    assert_eq!(
        warnings.len(),
        1,
        "the warning of the replica read is found"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_replayed_on_replicas() {
    let h = Harness::start(2).await;
    h.root_sql(0, "CREATE DATABASE db2").await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    replicas_ready(&h).await;
    let mut c = h.proxy_conn().await;
    // A replica connection may already exist before the state changes.
    assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("USE db2").await.unwrap();
    c.query_drop("SET NAMES latin1").await.unwrap();
    c.query_drop("SET time_zone = '+05:00'").await.unwrap();
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    for _ in 0..4 {
        let row: (u32, Option<String>, String, String, String) = c
            .query_first(
                "SELECT @@server_id, DATABASE(), @@character_set_client, @@time_zone, @@sql_mode",
            )
            .await
            .unwrap()
            .unwrap();
        assert_ne!(row.0, 1, "a read on a replica");
        assert_eq!(
            (
                row.1.as_deref(),
                row.2.as_str(),
                row.3.as_str(),
                row.4.as_str()
            ),
            (Some("db2"), "latin1", "+05:00", "ANSI_QUOTES")
        );
    }
    // COM_RESET_CONNECTION clears it everywhere, as on a direct connection (which keeps its
    // database).
    c.reset().await.unwrap();
    let row: (u32, Option<String>, String, String) = c
        .query_first("SELECT @@server_id, DATABASE(), @@time_zone, @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    let mut d = h.direct_conn().await;
    d.query_drop("USE db2").await.unwrap();
    d.query_drop("SET NAMES latin1").await.unwrap();
    d.query_drop("SET time_zone = '+05:00'").await.unwrap();
    d.reset().await.unwrap();
    let direct: (Option<String>, String, String) = d
        .query_first("SELECT DATABASE(), @@time_zone, @@character_set_client")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(row.0, 1);
    assert_eq!((row.1, row.2, row.3), direct);
    assert_ne!(direct.1, "+05:00");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_replayable_state_pins_the_session_to_the_primary() {
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    for setup in [
        "CREATE TEMPORARY TABLE tmp_x (a INT)",
        // A literal (`SET @v = 42`) is replayed on any connection; a computed value is not.
        "SET @v = NOW()",
        "SELECT @w := 1",
        "PREPARE s FROM 'SELECT 1'",
        "SELECT GET_LOCK('sluice-test', 1)",
        "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
    ] {
        let mut c = h.proxy_conn().await;
        c.query_drop("USE mysql").await.unwrap();
        assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);
        c.query_drop(setup).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                server_id(&mut c, "SELECT @@server_id").await,
                1,
                "after {setup}"
            );
        }
    }
    // The user variable is visible: it lives where the session runs.
    let mut c = h.proxy_conn().await;
    c.query_drop("SET @v = 42").await.unwrap();
    let v: Option<i64> = c.query_first("SELECT @v").await.unwrap();
    assert_eq!(v, Some(42));
    // Releasing the lock ends that pin.
    let mut c = h.proxy_conn().await;
    c.query_drop("SELECT GET_LOCK('sluice-test-2', 1)")
        .await
        .unwrap();
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("SELECT RELEASE_LOCK('sluice-test-2')")
        .await
        .unwrap();
    assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_lagging_replica_gets_no_reads() {
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    // Stop replication on db2 and write: db2 falls behind and must stop receiving reads.
    h.root_sql(1, "STOP SLAVE SQL_THREAD").await;
    h.root_sql(0, "CREATE DATABASE lagtest").await;
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    eventually("db2 excluded", Duration::from_secs(5), || {
        let v = rx.borrow_and_update().servers[1].lag_ms;
        async move { v.is_none() }
    })
    .await;
    let mut c = h.proxy_conn().await;
    for _ in 0..10 {
        assert_eq!(
            server_id(&mut c, "SELECT @@server_id").await,
            3,
            "only db3 serves reads"
        );
    }
    // Both stopped: reads fall back to the primary.
    h.root_sql(2, "STOP SLAVE SQL_THREAD").await;
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    eventually("db3 excluded", Duration::from_secs(5), || {
        let v = rx.borrow_and_update().servers[2].lag_ms;
        async move { v.is_none() }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    }
    // Restarted and caught up: reads return to the replicas.
    h.root_sql(1, "START SLAVE SQL_THREAD").await;
    h.root_sql(2, "START SLAVE SQL_THREAD").await;
    replicas_ready(&h).await;
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.insert(server_id(&mut c, "SELECT @@server_id").await);
    }
    assert_eq!(seen, BTreeSet::from([2, 3]));
    // A tight per-query budget: the heartbeat is written every 250 ms, so a 0 ms budget can
    // never be met and the read stays on the primary.
    assert_eq!(
        server_id(&mut c, "/* sluice: max_lag=0 */ SELECT @@server_id").await,
        1
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_replica_never_serves_reads() {
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    // db2 applies events 3 s late: its heartbeat stamp is always ≥ 3 s old.
    h.root_sql(
        1,
        "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 3; START SLAVE",
    )
    .await;
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    eventually("db2 measured as lagging", Duration::from_secs(10), || {
        let lag = rx.borrow_and_update().servers[1].lag_ms;
        async move { lag.is_some_and(|l| l > 1000) }
    })
    .await;
    let mut c = h.proxy_conn().await;
    c.query_drop("CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY AUTO_INCREMENT)")
        .await
        .unwrap();
    let mut served = BTreeSet::new();
    for _ in 0..1000 {
        c.query_drop("INSERT INTO d.t VALUES ()").await.unwrap();
        let id = server_id(&mut c, "SELECT @@server_id").await;
        assert_ne!(id, 2, "the delayed replica served a read");
        served.insert(id);
    }
    assert!(
        served.contains(&3),
        "the fresh replica still serves reads: {served:?}"
    );
    h.shutdown().await;
}

/// Both replicas apply events `delay_s` late; the budget is large enough to keep them in use.
async fn slow_replicas(ryw: sluice::config::ReadYourWrites, delay_s: u32) -> Harness {
    let h = Harness::start_with(2, |c| {
        c.routing.max_lag_ms = 60_000;
        c.routing.read_your_writes = ryw;
        c.routing.read_your_writes_timeout_ms = 5;
    })
    .await;
    replicas_ready(&h).await;
    h.root_sql(
        0,
        "CREATE DATABASE ryw; CREATE TABLE ryw.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)",
    )
    .await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    for node in [1, 2] {
        h.root_sql(
            node,
            &format!("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = {delay_s}; START SLAVE"),
        )
        .await;
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_with_lagging_replicas() {
    let h = slow_replicas(sluice::config::ReadYourWrites::Session, 2).await;
    let mut c = h.proxy_conn().await;
    for i in 0..1000 {
        c.query_drop(format!("INSERT INTO ryw.t (v) VALUES ({i})"))
            .await
            .unwrap();
        let id = c.last_insert_id().unwrap();
        let v: Option<i64> = c
            .query_first(format!("SELECT v FROM ryw.t WHERE id = {id}"))
            .await
            .unwrap();
        assert_eq!(
            v,
            Some(i),
            "iteration {i}: the session's own write is visible"
        );
    }
    // Once the replicas have applied the session's writes, its reads go to them again.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(server_id(&mut c, "SELECT @@server_id").await);
        if seen.iter().any(|&s| s != 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.iter().any(|&s| s != 1),
        "reads return to the replicas: {seen:?}"
    );
    // The same with explicit transactions, now that the replicas have every earlier write (an
    // older GTID still unapplied would send these reads to the primary anyway): the write's
    // GTID is read when the COMMIT gives the connection back.
    for i in 0..50 {
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(format!("INSERT INTO ryw.t (v) VALUES ({})", 5000 + i))
            .await
            .unwrap();
        let id = c.last_insert_id().unwrap();
        c.query_drop("COMMIT").await.unwrap();
        let v: Option<i64> = c
            .query_first(format!("SELECT v FROM ryw.t WHERE id = {id}"))
            .await
            .unwrap();
        assert_eq!(
            v,
            Some(5000 + i),
            "transaction {i}: the session's own committed write is visible"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_your_writes_lagging_replicas_serve_stale_reads() {
    // The control experiment for the test above: the same load with the check off does miss
    // its own writes, so the test above can fail.
    let h = slow_replicas(sluice::config::ReadYourWrites::Off, 2).await;
    let mut c = h.proxy_conn().await;
    let mut missing = 0;
    for i in 0..50 {
        c.query_drop(format!("INSERT INTO ryw.t (v) VALUES ({i})"))
            .await
            .unwrap();
        let id = c.last_insert_id().unwrap();
        let v: Option<i64> = c
            .query_first(format!("SELECT v FROM ryw.t WHERE id = {id}"))
            .await
            .unwrap();
        missing += usize::from(v.is_none());
    }
    assert!(
        missing > 40,
        "stale reads without read-your-writes: {missing} of 50"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_keeps_reads_on_fresh_replicas() {
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    let mut c = h.proxy_conn().await;
    c.query_drop("CREATE DATABASE f; CREATE TABLE f.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
        .await
        .unwrap();
    let mut on_replica = 0;
    for i in 0..100 {
        c.query_drop(format!("INSERT INTO f.t (v) VALUES ({i})"))
            .await
            .unwrap();
        let id = c.last_insert_id().unwrap();
        let (v, sid): (Option<i64>, u32) = c
            .query_first(format!(
                "SELECT (SELECT v FROM f.t WHERE id = {id}), @@server_id"
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, Some(i));
        on_replica += usize::from(sid != 1);
    }
    assert!(
        on_replica > 50,
        "reads after writes still reach fresh replicas: {on_replica} of 100"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_move_between_connections() {
    use common::raw::RawConn;
    use sluice_proto::command::*;
    let h = Harness::start(2).await;
    replicas_ready(&h).await;
    let (mut c, _) = RawConn::login(h.addr.port(), common::USER, common::PASSWORD, 0).await;
    let prep = c
        .command(&encode_simple(
            COM_STMT_PREPARE,
            b"SELECT ? + 0, @@server_id",
        ))
        .await;
    assert_eq!(prep[0].1[0], 0, "{prep:?}");
    let id = u32::from_le_bytes(prep[0].1[1..5].try_into().unwrap());
    assert_eq!(id, 1, "Sluice numbers the client's statements itself");
    // First execution binds the parameter type (LONGLONG); later ones do not resend it, as
    // drivers do. Executions rotate over the replicas, where Sluice prepares the statement
    // lazily and supplies the type itself.
    let exec = |v: i64, bind: bool| {
        let mut p = encode_stmt_execute(id, 0);
        p.push(0); // NULL bitmap
        p.push(u8::from(bind));
        if bind {
            p.extend_from_slice(&[0x08, 0x00]);
        }
        p.extend_from_slice(&v.to_le_bytes());
        p
    };
    let mut servers = BTreeSet::new();
    for i in 0..8i64 {
        let r = c.command(&exec(40 + i, i == 0)).await;
        assert_ne!(r[0].1[0], 0xFF, "execution {i} failed: {r:?}");
        // Binary row: 0x00, NULL bitmap, then the values; the first is ? + 0 as a LONGLONG.
        let row = r
            .iter()
            .find(|(_, p)| p[0] == 0 && p.len() > 10)
            .expect("a row");
        let v = i64::from_le_bytes(row.1[2..10].try_into().unwrap());
        assert_eq!(v, 40 + i);
        servers.insert(row.1[10..].to_vec());
    }
    assert!(servers.len() >= 2, "executions ran on both replicas");
    // Closing frees it everywhere; executing it afterwards is Sluice's own 1243.
    c.command(&encode_simple(COM_STMT_CLOSE, &id.to_le_bytes()))
        .await;
    let r = c.command(&exec(1, true)).await;
    let e = sluice_proto::err::ErrPacket::parse(&r[0].1).unwrap();
    assert_eq!(e.code, 1243);
    // The server statement stays in its connection's cache (shared by every session that
    // uses the connection, bounded by max_prepared_statements_per_connection): one session
    // executing one statement leaves at most one per replica.
    for node in 1..3 {
        let open = h.status_counter(node, "Prepared_stmt_count").await;
        assert!(open <= 1, "{open} statements open on replica {node}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_deny_route_and_require_replicas() {
    use std::io::Write as _;
    let mut rules = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    rules
        .write_all(
            br#"
[[rule]]
name = "no-drop"
match.user = ["app"]
match.regex = '^DROP TABLE'
action.deny = "not through the application login"

[[rule]]
name = "watch-truncate"
match.regex = '^TRUNCATE'
action.deny = "would be denied"
action.log_only = true

[[rule]]
name = "tagged-to-primary"
match.regex = 'AS ON_PRIMARY'
action.route = "primary"

[[rule]]
name = "strict-schema"
match.schema = ["strict"]
match.class = ["read"]
action.on_no_replica = "error"

[[rule]]
name = "u-needs-where"
match.regex = '^(UPDATE|DELETE)\b'
match.tables = ["u"]
match.without_where = true
action.deny = "add a WHERE"
"#,
        )
        .unwrap();
    let path = rules.path().display().to_string();
    let h = Harness::start_with(2, |c| c.routing.rules = vec![path.clone()]).await;
    replicas_ready(&h).await;
    let mut c = h.proxy_conn().await;
    c.query_drop(
        "CREATE DATABASE strict; CREATE TABLE strict.t (a INT); CREATE TABLE strict.u (a INT)",
    )
    .await
    .unwrap();
    // Denied, as a text query and as a prepared statement.
    for r in [
        c.query_drop("DROP TABLE strict.t").await,
        c.prep("DROP TABLE strict.t").await.map(|_| ()),
    ] {
        match r {
            Err(mysql_async::Error::Server(e)) => {
                assert_eq!((e.code, e.state.as_str()), (9010, "42000"));
                assert!(
                    e.message.contains("no-drop")
                        && e.message.contains("not through the application login"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }
    // log_only: it runs.
    c.query_drop("TRUNCATE TABLE strict.u").await.unwrap();
    // A DELETE without WHERE on the guarded table is denied; with one it runs.
    match c.query_drop("DELETE FROM strict.u").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9010);
            assert!(e.message.contains("u-needs-where"), "{}", e.message);
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    c.query_drop("DELETE FROM strict.u WHERE a = 1")
        .await
        .unwrap();
    // Routed by a regex over the normalized statement.
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id AS on_primary").await,
        1
    );
    assert_ne!(server_id(&mut c, "SELECT @@server_id").await, 1);
    // No replica within budget: an error in the strict schema, the primary elsewhere.
    h.root_sql(1, "STOP SLAVE SQL_THREAD").await;
    h.root_sql(2, "STOP SLAVE SQL_THREAD").await;
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    eventually("replicas excluded", Duration::from_secs(5), || {
        let none = rx.borrow_and_update().servers[1..]
            .iter()
            .all(|s| s.lag_ms.is_none());
        async move { none }
    })
    .await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("USE strict").await.unwrap();
    match c.query_drop("SELECT a FROM t").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 9011, "{}", e.message),
        other => panic!("expected 9011, got {other:?}"),
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heartbeat_privileges_lag_falls_back_to_seconds_behind_master() {
    let h = Harness::start(1).await;
    // A monitor login that may read but not write the heartbeat.
    h.root_sql(0, "CREATE USER 'mon_ro'@'%' IDENTIFIED BY 'ro-pw'; GRANT SELECT, SLAVE MONITOR ON *.* TO 'mon_ro'@'%'").await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let mut config = common::config_for(&h.topo);
    config.monitor.user = Some("mon_ro".into());
    config.monitor.password = Some("ro-pw".into());
    let proxy = sluice::server::start(std::sync::Arc::new(config))
        .await
        .unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(10)).await);
    let mut rx = proxy.cluster.clone();
    eventually(
        "lag from Seconds_Behind_Master",
        Duration::from_secs(10),
        || {
            let s = rx.borrow_and_update().servers[1].clone();
            async move {
                s.lag_source == sluice::cluster::LagSource::SecondsBehindMaster
                    && s.lag_ms == Some(0)
            }
        },
    )
    .await;
    let mut c =
        mysql_async::Conn::new(h.opts(proxy.local_addr.port(), common::USER, common::PASSWORD))
            .await
            .unwrap();
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id").await,
        2,
        "the replica serves reads on the fallback figure"
    );
    // Stopped replication: Seconds_Behind_Master is NULL, which means no reads.
    h.root_sql(1, "STOP SLAVE SQL_THREAD").await;
    eventually("replica excluded", Duration::from_secs(5), || {
        let lag = rx.borrow_and_update().servers[1].lag_ms;
        async move { lag.is_none() }
    })
    .await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    drop(c);
    proxy.shutdown().await;
    h.shutdown().await;
}

/// DESIGN.md's routing table, row by row, observed by the servers themselves: per-user
/// statement counts (`information_schema.USER_STATISTICS` with `userstat=ON`; replication and
/// the monitor run as other users) or `@@server_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_table_rows_are_observed_by_the_servers() {
    let h = Harness::start(2).await;
    h.root_sql(0, "CREATE DATABASE rt; CREATE TABLE rt.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT); CREATE SEQUENCE rt.s; CREATE PROCEDURE rt.p() INSERT INTO rt.t (v) VALUES (0); GRANT SELECT ON rt.* TO 'app'@'%' WITH GRANT OPTION").await;
    for node in 0..3 {
        h.root_sql(node, "SET GLOBAL userstat = 1").await;
    }
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    replicas_ready(&h).await;
    let csv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(csv.path(), "100,1\n101,2\n").unwrap();
    let opts = h
        .proxy_opts()
        .local_infile_handler(Some(mysql_async::WhiteListFsHandler::new(
            &[csv.path()][..],
        )));
    let mut c = mysql_async::Conn::new(opts).await.unwrap();
    // Row 1: writes, DDL, LOAD DATA, CALL, LOCK/UNLOCK, GRANT, XA, SET GLOBAL → primary.
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE rt.t FIELDS TERMINATED BY ','",
        csv.path().display()
    );
    let writes: Vec<(String, &str)> = vec![
        ("INSERT INTO rt.t (v) VALUES (1)".into(), "Com_insert"),
        ("UPDATE rt.t SET v = v + 1".into(), "Com_update"),
        (
            "REPLACE INTO rt.t (id, v) VALUES (1, 5)".into(),
            "Com_replace",
        ),
        ("DELETE FROM rt.t WHERE v = 99".into(), "Com_delete"),
        ("CREATE TABLE rt.u (a INT)".into(), "Com_create_table"),
        (load, "Com_load"),
        ("CALL rt.p()".into(), "Com_call_procedure"),
        ("LOCK TABLES rt.t READ".into(), "Com_lock_tables"),
        ("UNLOCK TABLES".into(), "Com_unlock_tables"),
        ("GRANT SELECT ON rt.* TO 'other'@'%'".into(), "Com_grant"),
        ("XA START 'x1'".into(), "Com_xa_start"),
        ("XA END 'x1'".into(), "Com_xa_end"),
        ("XA ROLLBACK 'x1'".into(), "Com_xa_rollback"),
        (
            "SET GLOBAL max_connect_errors = 10000".into(),
            "Com_set_option",
        ),
    ];
    for (sql, kind) in &writes {
        let before = app_statements(&h).await;
        c.query_drop(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let after = app_statements(&h).await;
        assert!(
            after[0] > before[0],
            "{sql} ({kind}): not run on the primary ({before:?} → {after:?})"
        );
        assert_eq!(&after[1..], &before[1..], "{sql}: ran on a replica");
    }
    // Row 3: locking reads and state functions → primary.
    for sql in [
        "SELECT @@server_id FROM rt.t WHERE id = 1 FOR UPDATE",
        "SELECT @@server_id FROM rt.t WHERE id = 1 LOCK IN SHARE MODE",
        "SELECT @@server_id + 0 * LAST_INSERT_ID()",
        "SELECT @@server_id + 0 * FOUND_ROWS()",
        "SELECT @@server_id + 0 * NEXTVAL(rt.s)",
        "SELECT @@server_id + 0 * IFNULL(RELEASE_LOCK('never-held'), 0)",
    ] {
        assert_eq!(server_id(&mut c, sql).await, 1, "{sql}");
    }
    // Row 2: reads (SELECT, SHOW, DESCRIBE) → replicas.
    assert_ne!(
        server_id(&mut c, "SELECT @@server_id FROM rt.t WHERE id = 1").await,
        1
    );
    // SHOW statements (DESCRIBE too) are not counted in USER_STATISTICS: the servers' general
    // logs tell where it ran.
    for node in 0..3 {
        h.root_sql(
            node,
            "SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1",
        )
        .await;
    }
    let _: Vec<mysql_async::Row> = c.query("DESCRIBE rt.t").await.unwrap();
    let mut ran = Vec::new();
    for node in 0..3 {
        let n = h
            .root_sql(
                node,
                "SELECT COUNT(*) FROM mysql.general_log WHERE argument = 'DESCRIBE rt.t'",
            )
            .await;
        ran.push(n.trim().parse::<u32>().unwrap());
        h.root_sql(node, "SET GLOBAL general_log = 0").await;
    }
    assert_eq!(ran[0], 0, "DESCRIBE did not run on the primary: {ran:?}");
    assert_eq!(ran[1] + ran[2], 1, "DESCRIBE ran on a replica: {ran:?}");
    // Row 6: COM_INIT_DB is replayed on replicas.
    {
        use common::raw::RawConn;
        use sluice_proto::command::*;
        let (mut raw, _) = RawConn::login(h.addr.port(), common::USER, common::PASSWORD, 0).await;
        let r = raw.command(&encode_simple(COM_INIT_DB, b"rt")).await;
        assert_eq!(r[0].1[0], 0, "{r:?}");
        let r = raw
            .command(&encode_simple(COM_QUERY, b"SELECT @@server_id, DATABASE()"))
            .await;
        let row = r
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.ends_with(b"\x02rt"))
            .expect("a row with the database");
        assert_ne!(&row[..2], b"\x011", "the read ran on a replica: {row:?}");
    }
    // Row 8: hints.
    assert_eq!(
        server_id(&mut c, "/* sluice: server=db3 */ SELECT @@server_id").await,
        3
    );
    assert_ne!(
        server_id(
            &mut c,
            "/* sluice: route=replica */ SELECT @@server_id + 0 * LAST_INSERT_ID()"
        )
        .await,
        1
    );
    h.shutdown().await;
}

/// Statements user `app` has run on each server.
async fn app_statements(h: &Harness) -> Vec<u64> {
    let mut out = Vec::new();
    for node in 0..3 {
        out.push(app_statements_on(h, node).await);
    }
    out
}

/// Statements user `app` has run on one server.
async fn app_statements_on(h: &Harness, node: usize) -> u64 {
    h.root_sql(node, "SELECT IFNULL(SUM(SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS), 0) FROM information_schema.USER_STATISTICS WHERE USER = 'app'")
        .await
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Read-your-writes costs nothing for a transaction that only reads: through Sluice the
/// primary runs exactly the statements it runs for a direct client (no read of the session's
/// GTID when a read-only transaction's connection goes back to the pool). A transaction that
/// wrote still has its GTID read: `read_your_writes_with_lagging_replicas`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_transaction_costs_the_primary_no_extra_statement() {
    let h = Harness::start(1).await;
    h.root_sql(0, "CREATE DATABASE ro; CREATE TABLE ro.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT); INSERT INTO ro.t (v) VALUES (1); GRANT ALL ON ro.* TO 'app'@'%'").await;
    h.root_sql(0, "SET GLOBAL userstat = 1").await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let mut counts = Vec::new();
    for (what, opts) in [("direct", h.direct_opts()), ("sluice", h.proxy_opts())] {
        let mut c = Conn::new(opts).await.unwrap();
        // Warm up: the login and the session's first statement.
        c.query_drop("SELECT 1").await.unwrap();
        let before = app_statements_on(&h, 0).await;
        for _ in 0..20 {
            c.query_drop("BEGIN").await.unwrap();
            let v: Option<i64> = c
                .query_first("SELECT v FROM ro.t WHERE id = 1")
                .await
                .unwrap();
            assert_eq!(v, Some(1));
            c.query_drop("COMMIT").await.unwrap();
        }
        let after = app_statements_on(&h, 0).await;
        counts.push((what, after - before));
    }
    assert_eq!(
        counts[1].1, counts[0].1,
        "statements on the primary for 20 read-only transactions: {counts:?}"
    );
    h.shutdown().await;
}
