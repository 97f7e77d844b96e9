//! Multiplexing (`[proxy] multiplexing = "transaction"`, the default) against a primary and two
//! replicas: many sessions over few server connections, each session's state exact on every
//! statement, statements that read the previous statement's outcome answered as on a direct
//! connection, pins counted and ended, prepared statements never exhausting the server.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{app_connections, table, Harness};
use mysql_async::prelude::*;
use mysql_async::Conn;

async fn replicas_ready(h: &Harness) {
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    let mut rx = h.proxy.as_ref().unwrap().cluster.clone();
    common::eventually("replicas measured", Duration::from_secs(10), || {
        let v = rx.borrow_and_update().clone();
        async move { v.servers.iter().skip(1).all(|s| s.lag_ms.is_some()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_idle_clients_share_a_few_connections() {
    // The defaults: 64 connections per server at most.
    let h = Harness::start(1).await;
    replicas_ready(&h).await;
    let mut clients = Vec::new();
    for i in 0..600u32 {
        let mut c = h.proxy_conn().await;
        if i % 50 == 0 {
            // Some read (replica), some write (primary).
            let _: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
            c.query_drop("DO 1").await.unwrap();
        }
        clients.push(c);
    }
    // Client 601 gets in and works at once.
    let mut last = h.proxy_conn().await;
    let v: Option<i64> = last.query_first("SELECT 601").await.unwrap();
    assert_eq!(v, Some(601));
    let (p, r) = (app_connections(&h, 0).await, app_connections(&h, 1).await);
    assert!(
        p <= 64 && r <= 64,
        "server connections: primary {p}, replica {r}"
    );
    assert!(p + r < 20, "idle sessions hold no connection: {p} + {r}");
    let mut a = h.admin_conn().await;
    let pools = table(&mut a, "SHOW POOLS").await;
    assert!(pools.iter().all(|p| p["waiting"].as_deref() == Some("0")));
    for c in clients {
        c.disconnect().await.unwrap();
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sessions_keep_their_own_state() {
    let h = Harness::start_with(2, |c| c.proxy.max_backend_connections = 4).await;
    let mut setup = h.direct_conn().await;
    for i in 0..50 {
        setup
            .query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS st{i}; CREATE TABLE st{i}.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"
            ))
            .await
            .unwrap();
    }
    replicas_ready(&h).await;
    let modes = [
        "ANSI_QUOTES",
        "NO_ZERO_DATE",
        "PIPES_AS_CONCAT",
        "IGNORE_SPACE",
        "",
    ];
    let mut tasks = Vec::new();
    for i in 0..50i64 {
        let mut c = h.proxy_conn().await;
        tasks.push(tokio::spawn(async move {
            // Whole hours: MariaDB 10.11 caches offset time zones by a key that collides for
            // some minute offsets (after `SET time_zone = '+06:13'` on any connection of the
            // server, `SET time_zone = '+08:29'` reads back '+06:13', directly too).
            let tz = format!("{:+03}:00", (i % 25) - 12);
            let mode = modes[i as usize % modes.len()];
            c.query_drop(format!("USE st{i}")).await.unwrap();
            c.query_drop(format!("SET time_zone = '{tz}'"))
                .await
                .unwrap();
            c.query_drop(format!("SET SESSION sql_mode = '{mode}'"))
                .await
                .unwrap();
            c.query_drop(format!("SET @mine = {i}")).await.unwrap();
            for round in 0..15i64 {
                if round % 5 == 4 {
                    c.query_drop(format!("INSERT INTO t (v) VALUES ({i})"))
                        .await
                        .unwrap();
                }
                let row: (Option<String>, String, String, Option<i64>) = c
                    .query_first("SELECT DATABASE(), @@time_zone, @@sql_mode, @mine")
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    row,
                    (
                        Some(format!("st{i}")),
                        tz.clone(),
                        mode.to_string(),
                        Some(i)
                    ),
                    "session {i}, round {round}"
                );
            }
            let n: Option<i64> = c
                .query_first(format!("SELECT COUNT(*) FROM st{i}.t WHERE v = {i}"))
                .await
                .unwrap();
            assert_eq!(n, Some(3));
            c
        }));
    }
    for t in tasks {
        t.await.unwrap().disconnect().await.unwrap();
    }
    setup.disconnect().await.unwrap();
    // (A connection Sluice closed may stay listed for a moment: poll, bounded.)
    for node in 0..3 {
        common::eventually(
            "at most 4 server connections",
            Duration::from_secs(5),
            || async { app_connections(&h, node).await <= 4 },
        )
        .await;
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_statements_answer_as_on_a_direct_connection() {
    let h = Harness::start_with(2, |c| c.proxy.max_backend_connections = 3).await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE dep; CREATE TABLE dep.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT, s VARCHAR(3))")
        .await
        .unwrap();
    replicas_ready(&h).await;
    let mut tasks = Vec::new();
    for i in 0..20i64 {
        let mut c = mysql_async::Conn::new(h.proxy_opts().db_name(Some("dep")))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for round in 0..5i64 {
                // LAST_INSERT_ID() / @@identity: the id this session's insert got.
                c.query_drop(format!("INSERT INTO t (v) VALUES ({i})"))
                    .await
                    .unwrap();
                let id = c.last_insert_id().unwrap() as i64;
                let got: (i64, i64) = c
                    .query_first("SELECT LAST_INSERT_ID(), @@identity")
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(got, (id, id), "session {i} round {round}");
                // ROW_COUNT(): rows the previous statement changed.
                c.query_drop(format!(
                    "UPDATE t SET v = v + 100 WHERE v = {i} OR v = {}",
                    i + 100
                ))
                .await
                .unwrap();
                let changed = c.affected_rows() as i64;
                let rc: Option<i64> = c.query_first("SELECT ROW_COUNT()").await.unwrap();
                assert_eq!(rc, Some(changed));
                c.query_drop(format!("UPDATE t SET v = {i} WHERE v = {} ", i + 100))
                    .await
                    .unwrap();
                // SHOW WARNINGS / @@warning_count: this session's warnings only.
                c.query_drop("SELECT 1/0, 2/0").await.unwrap();
                let w: Option<i64> = c.query_first("SELECT @@warning_count").await.unwrap();
                assert_eq!(w, Some(2));
                c.query_drop("SELECT 1/0").await.unwrap();
                let warnings: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
                assert_eq!(warnings.len(), 1, "{warnings:?}");
                assert_eq!(warnings[0].1, 1365);
                // A statement that uses no table leaves the warnings readable (as directly);
                // one that does clears them, and no other session's warnings show.
                c.query_drop("SELECT 1").await.unwrap();
                let warnings: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
                assert_eq!(warnings.len(), 1, "{warnings:?}");
                let _: Option<i64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
                let warnings: Vec<(String, u32, String)> = c.query("SHOW WARNINGS").await.unwrap();
                assert!(warnings.is_empty(), "{warnings:?}");
                // FOUND_ROWS() after SQL_CALC_FOUND_ROWS.
                let _: Vec<i64> = c
                    .query(format!(
                        "SELECT SQL_CALC_FOUND_ROWS id FROM t WHERE v = {i} LIMIT 1"
                    ))
                    .await
                    .unwrap();
                let found: Option<i64> = c.query_first("SELECT FOUND_ROWS()").await.unwrap();
                assert_eq!(found, Some(round + 1));
            }
            // SELECT … INTO @var, then @var: pins the session (last, so that few
            // connections are not all pinned while other sessions still run).
            c.query_drop(format!("SELECT COUNT(*) INTO @n FROM t WHERE v = {i}"))
                .await
                .unwrap();
            let n: Option<i64> = c.query_first("SELECT @n").await.unwrap();
            assert_eq!(n, Some(5));
            c.disconnect().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    h.shutdown().await;
}

/// `SELECT LAST_INSERT_ID(), ROW_COUNT()` right after an insert (found by the `mariadb` CLI's
/// scenario: Sluice read the connection's LAST_INSERT_ID() first, which reset ROW_COUNT() to
/// -1). On a connection whose LAST_INSERT_ID() was the session's when the insert ran, nothing
/// runs in between: both are as directly, for generated and explicit ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_insert_id_and_row_count_in_one_statement_after_an_insert() {
    let h = Harness::start_with(1, |c| c.proxy.max_backend_connections = 1).await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop(
            "CREATE DATABASE lr; CREATE TABLE lr.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        )
        .await
        .unwrap();
    async fn run(c: &mut mysql_async::Conn, base: i64) -> Vec<(i64, i64)> {
        let steps = [
            format!("INSERT INTO lr.t (v) VALUES ({base})"),
            format!("INSERT INTO lr.t (v) VALUES ({base}), ({base})"),
            // An explicit id: LAST_INSERT_ID() keeps the last generated one.
            format!("INSERT INTO lr.t (id, v) VALUES ({}, {base})", base * 10),
            format!("UPDATE lr.t SET v = v + 1 WHERE v = {base}"),
            format!("INSERT INTO lr.t (v) VALUES ({base})"),
        ];
        let mut out = Vec::new();
        for s in &steps {
            c.query_drop(s.as_str()).await.unwrap();
            let got: (i64, i64) = c
                .query_first("SELECT LAST_INSERT_ID(), ROW_COUNT()")
                .await
                .unwrap()
                .unwrap();
            out.push(got);
        }
        out
    }
    let mut direct = h.direct_conn().await;
    let want = run(&mut direct, 1000).await;
    let mut proxied = mysql_async::Conn::new(h.proxy_opts()).await.unwrap();
    let got = run(&mut proxied, 2000).await;
    // Ids differ between the runs (the same table); the shape must not: the explicit id keeps
    // the previous generated id, the insert after it gets the explicit id + 1, and the counts
    // are equal.
    let shape = |v: &[(i64, i64)], base: i64| -> Vec<(i64, i64)> {
        v.iter()
            .map(|(id, rc)| {
                let rel = if *id > base * 10 - 1 {
                    id - base * 10 + 100
                } else {
                    id - v[0].0
                };
                (rel, *rc)
            })
            .collect()
    };
    assert_eq!(
        shape(&got, 2000),
        shape(&want, 1000),
        "through Sluice {got:?}, directly {want:?}"
    );
    assert_eq!(
        shape(&want, 1000),
        vec![(0, 1), (1, 2), (1, 1), (1, 4), (101, 1)]
    );
    h.shutdown().await;
}

/// A session that inserts and leaves at once (its connection still held) must not hand its
/// LAST_INSERT_ID() to the next session on that connection: a new session reads 0, as on a
/// new direct connection, and an explicit-id insert leaves it at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_sessions_insert_id_does_not_reach_the_next_session() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE lv; CREATE TABLE lv.t (id INT AUTO_INCREMENT PRIMARY KEY) AUTO_INCREMENT = 500")
        .await
        .unwrap();
    for round in 0..3 {
        let mut a = mysql_async::Conn::new(h.proxy_opts()).await.unwrap();
        a.query_drop("INSERT INTO lv.t VALUES (NULL)")
            .await
            .unwrap();
        assert!(a.last_insert_id().unwrap() >= 500);
        a.disconnect().await.unwrap();
        let mut b = mysql_async::Conn::new(h.proxy_opts()).await.unwrap();
        let got: Option<u64> = b.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
        assert_eq!(
            got,
            Some(0),
            "round {round}: a new session read another's LAST_INSERT_ID()"
        );
        b.query_drop(format!("INSERT INTO lv.t VALUES ({})", 100 + round))
            .await
            .unwrap();
        let got: (u64, i64) = b
            .query_first("SELECT LAST_INSERT_ID(), ROW_COUNT()")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.0, 0, "round {round}: after an explicit id");
        b.disconnect().await.unwrap();
    }
    h.shutdown().await;
}

/// A hold (the connection kept after a statement that changed rows, for `ROW_COUNT()`) ends
/// after `multiplexing_hold_ms` although the session sends nothing more: with one server
/// connection, another session's write gets it then, long before its `pool_wait_ms` runs out.
/// (Were the hold kept until the holder's next command, that write would get 9012.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ends_after_multiplexing_hold_ms_without_another_command() {
    let h = Harness::start_with(0, |c| {
        c.proxy.multiplexing_hold_ms = 100;
        c.proxy.max_backend_connections = 1;
        c.proxy.pool_wait_ms = 30_000;
    })
    .await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE he; CREATE TABLE he.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut a = Conn::new(h.proxy_opts().db_name(Some("he"))).await.unwrap();
    let mut b = Conn::new(h.proxy_opts().db_name(Some("he"))).await.unwrap();
    a.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    assert_eq!(a.affected_rows(), 1);
    // `a` stays silent (and connected) from here on.
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        b.query_drop("INSERT INTO t VALUES (2)"),
    )
    .await
    .expect("b's write waited for a's next command")
    .expect("b's write ran once a's hold ended");
    eprintln!(
        "b's write waited {:?} for the held connection",
        started.elapsed()
    );
    let n: Option<i64> = setup
        .query_first("SELECT COUNT(*) FROM he.t")
        .await
        .unwrap();
    assert_eq!(n, Some(2));
    // The holder goes on normally (its next statement leases again).
    let got: Option<i64> = a.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(got, Some(2));
    drop((a, b));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_insert_id_survives_a_change_of_connection() {
    // A hold of 0 ms gives the connection back at once: the next statement runs elsewhere.
    let h = Harness::start_with(0, |c| {
        c.proxy.multiplexing_hold_ms = 0;
        c.proxy.max_backend_connections = 2;
    })
    .await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE li; CREATE TABLE li.t (id INT AUTO_INCREMENT PRIMARY KEY) AUTO_INCREMENT = 1000")
        .await
        .unwrap();
    let mut a = mysql_async::Conn::new(h.proxy_opts().db_name(Some("li")))
        .await
        .unwrap();
    let mut b = mysql_async::Conn::new(h.proxy_opts().db_name(Some("li")))
        .await
        .unwrap();
    a.query_drop("INSERT INTO t VALUES (NULL)").await.unwrap();
    let id_a = a.last_insert_id().unwrap() as i64;
    // b inserts on the connection a used; a's value must not change.
    for _ in 0..3 {
        b.query_drop("INSERT INTO t VALUES (NULL)").await.unwrap();
    }
    let id_b = b.last_insert_id().unwrap() as i64;
    let got: Option<i64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(got, Some(id_a));
    // An explicit id does not change LAST_INSERT_ID() (the OK packet reports it anyway),
    // whether the connection it runs on last served b (its LAST_INSERT_ID() is b's), a fresh
    // connection (0) or a's own: interleaved, both sessions land on each kind.
    let mut id_b = id_b;
    for k in 0..6 {
        // Below the auto-increment counter, so b's next ids stay unique and increasing.
        a.query_drop(format!("INSERT INTO t VALUES ({})", 1 + k))
            .await
            .unwrap();
        let got: Option<i64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
        assert_eq!(got, Some(id_a), "round {k}");
        let got: Option<i64> = b.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
        assert_eq!(got, Some(id_b), "round {k}");
        b.query_drop("INSERT INTO t VALUES (NULL)").await.unwrap();
        id_b = b.last_insert_id().unwrap() as i64;
    }
    // A fresh session has 0, whatever its connection did before.
    let mut c = h.proxy_conn().await;
    let got: Option<i64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(got, Some(0));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pin_is_counted_shown_and_ended() {
    let h = Harness::start(1).await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE pins; CREATE TABLE pins.t (a INT)")
        .await
        .unwrap();
    replicas_ready(&h).await;
    let mut adm = h.admin_conn().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "temp_table",
            "CREATE TEMPORARY TABLE tmp (a INT)",
            "DROP TEMPORARY TABLE tmp",
        ),
        (
            "get_lock",
            "SELECT GET_LOCK('pin-test', 1)",
            "SELECT RELEASE_LOCK('pin-test')",
        ),
        ("lock_tables", "LOCK TABLES t READ", "UNLOCK TABLES"),
        (
            "lock_tables",
            "FLUSH TABLES WITH READ LOCK",
            "UNLOCK TABLES",
        ),
        ("handler", "HANDLER t OPEN", "HANDLER t CLOSE"),
        ("xa", "XA START 'x1'", "XA END 'x1'; XA ROLLBACK 'x1'"),
        (
            "next_transaction",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "BEGIN; SELECT 1; COMMIT",
        ),
        ("user_variable", "SELECT @pinned := 1", ""),
        (
            "session_variable",
            "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
            "",
        ),
        ("text_prepare", "PREPARE s FROM 'SELECT 1'", ""),
    ];
    for (reason, start, end) in cases {
        let mut c = mysql_async::Conn::new(h.proxy_opts().db_name(Some("pins")))
            .await
            .unwrap();
        c.query_drop(*start).await.unwrap();
        let mine = |rows: &[HashMap<String, Option<String>>]| {
            rows.iter()
                .filter(|r| r["pinned"].as_deref().is_some_and(|p| p.contains(reason)))
                .count()
        };
        // The session publishes its state just after answering: poll (bounded).
        let mut sessions = Vec::new();
        for _ in 0..50 {
            sessions = table(&mut adm, "SHOW SESSIONS").await;
            if mine(&sessions) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(mine(&sessions), 1, "{reason} after {start}: {sessions:?}");
        let row = sessions
            .iter()
            .find(|r| r["pinned"].as_deref().is_some_and(|p| p.contains(reason)))
            .unwrap();
        assert!(row["pinned_by"].is_some() && row["pinned_s"].is_some());
        assert_eq!(row["held"].as_deref(), Some("1"));
        // Every statement now runs on the pinned connection (the primary); the next
        // transaction's characteristics are used by the next statement, so it is not probed.
        for _ in 0..if *reason == "next_transaction" { 0 } else { 3 } {
            let sid: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
            assert_eq!(sid, Some(1), "{reason}");
        }
        if end.is_empty() {
            // Only COM_RESET_CONNECTION ends it.
            c.reset().await.unwrap();
        } else {
            for stmt in end.split("; ") {
                c.query_drop(stmt).await.unwrap();
            }
        }
        // The session publishes its state just after answering: poll (bounded).
        let mut sessions = Vec::new();
        for _ in 0..50 {
            sessions = table(&mut adm, "SHOW SESSIONS").await;
            if sessions.iter().all(|r| r["pinned"].is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            sessions.iter().all(|r| r["pinned"].is_none()),
            "{reason} ended by {end:?}: {sessions:?}"
        );
        // The session reads from the replica again.
        let sid: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
        assert_ne!(sid, Some(1), "{reason} ended");
        c.disconnect().await.unwrap();
    }
    let pins = table(&mut adm, "SHOW PINS").await;
    for (reason, _, _) in cases {
        assert!(
            pins.iter().any(|p| p["reason"].as_deref() == Some(reason)
                && p["users"].as_deref().is_some_and(|u| u.starts_with("app:"))),
            "{reason} in SHOW PINS: {pins:?}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_never_exhaust_the_server() {
    let h = Harness::start_with(1, |c| c.proxy.max_backend_connections = 8).await;
    for node in 0..2 {
        h.root_sql(node, "SET GLOBAL max_prepared_stmt_count = 500")
            .await;
    }
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE ps; CREATE TABLE ps.t (id INT PRIMARY KEY, v INT); INSERT INTO ps.t SELECT seq, seq * 2 FROM ps.seq_1_to_100")
        .await
        .unwrap();
    replicas_ready(&h).await;
    let mut tasks = Vec::new();
    for s in 0..200i64 {
        let opts = h.proxy_opts().db_name(Some("ps"));
        tasks.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            // Five statements per session, three of them unique to it (600 distinct in all).
            for k in 0..5i64 {
                let sql = if k < 2 {
                    format!("SELECT v + {k} FROM t WHERE id = ?")
                } else {
                    format!("SELECT v + {k} + {s} FROM t WHERE id = ?")
                };
                let stmt = c.prep(&sql).await.unwrap();
                for id in [1 + s % 100, 1 + (s + k) % 100] {
                    let v: Option<i64> = c.exec_first(&stmt, (id,)).await.unwrap();
                    let extra = if k < 2 { k } else { k + s };
                    assert_eq!(v, Some(id * 2 + extra), "session {s} statement {k}");
                }
            }
            c.disconnect().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for node in 0..2 {
        let open = h.status_counter(node, "Prepared_stmt_count").await;
        assert!(open <= 500, "{open} statements open on node {node}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changed_inside_a_procedure_is_learned_from_session_tracking() {
    use sluice_proto::flags::{cap, status};
    // A procedure changes the time zone: Sluice does not parse it; the server's OK packet says
    // so (time_zone is tracked by default). Sluice's server connections track session state
    // whatever the client asked: for a client without CLIENT_SESSION_TRACK (PyMySQL,
    // mysql_async, mysqlnd, Connector/Python) the state block is taken out of the OK, which is
    // then the bytes a direct connection gets.
    let h = Harness::start(2).await;
    let mut setup = h.direct_conn().await;
    setup
        .query_drop("CREATE DATABASE proc; CREATE PROCEDURE proc.setz() SET time_zone = '+03:00'")
        .await
        .unwrap();
    replicas_ready(&h).await;
    let query = |sql: &str| {
        let mut p = vec![sluice_proto::command::COM_QUERY];
        p.extend_from_slice(sql.as_bytes());
        p
    };
    for caps in [
        cap::CLIENT_SESSION_TRACK | cap::CLIENT_DEPRECATE_EOF,
        cap::CLIENT_DEPRECATE_EOF,
        0,
    ] {
        let tracked = caps & cap::CLIENT_SESSION_TRACK != 0;
        let (mut c, ok) =
            common::raw::RawConn::login(h.addr.port(), common::USER, common::PASSWORD, caps).await;
        assert_eq!(ok[0], 0);
        let r = c.command(&query("CALL proc.setz()")).await;
        assert_eq!(r[0].1[0], 0, "{r:?}");
        let changed =
            u16::from_le_bytes([r[0].1[3], r[0].1[4]]) & status::SERVER_SESSION_STATE_CHANGED != 0;
        assert_eq!(changed, tracked, "caps {caps:#x}: {r:?}");
        if !tracked {
            let (mut d, _) = common::raw::RawConn::login(
                h.topo.nodes[0].port,
                common::USER,
                common::PASSWORD,
                caps,
            )
            .await;
            let direct = d.command(&query("CALL proc.setz()")).await;
            assert_eq!(r, direct, "caps {caps:#x}: the OK a direct connection gets");
        }
        // Other sessions keep using the connections meanwhile.
        let mut other = h.proxy_conn().await;
        let mut servers = std::collections::BTreeSet::new();
        for _ in 0..8 {
            for _ in 0..2 {
                let r = c.command(&query("SELECT @@time_zone, @@server_id")).await;
                let row = &r[r.len() - 2].1;
                assert!(
                    row.windows(6).any(|w| w == b"+03:00"),
                    "caps {caps:#x}: {r:?}"
                );
                servers.insert(row[row.len() - 1]);
            }
            let theirs: Option<String> = other.query_first("SELECT @@time_zone").await.unwrap();
            assert_ne!(theirs.as_deref(), Some("+03:00"));
        }
        assert_eq!(
            servers,
            [b'2', b'3'].into(),
            "the reads ran on both replicas"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_reads_like_an_ok_packet_changes_no_session_state() {
    use sluice_proto::command::{COM_QUERY, COM_STMT_EXECUTE, COM_STMT_PREPARE};
    use sluice_proto::flags::cap;
    // A binary-protocol row always starts with 0x00, as an OK packet does. This one, read as an
    // OK, says "session state changed: the schema is now `xyz`": the BIGINT's bytes are
    // insert id 0, status 0x4002, no warnings, no info, a 6-byte state block starting with
    // type 1 (schema), and the string column completes it (length 4, then `\x03xyz`). Only
    // OK packets may change what Sluice knows of the session (a client with session tracking,
    // so that Sluice's server connections track too).
    let h = Harness::start(2).await;
    let mut setup = h.direct_conn().await;
    setup.query_drop("CREATE DATABASE rowok").await.unwrap();
    replicas_ready(&h).await;
    let caps = cap::CLIENT_SESSION_TRACK | cap::CLIENT_DEPRECATE_EOF;
    let (mut c, _) =
        common::raw::RawConn::login(h.addr.port(), common::USER, common::PASSWORD, caps).await;
    let with = |code: u8, body: &[u8]| {
        let mut p = vec![code];
        p.extend_from_slice(body);
        p
    };
    let r = c.command(&with(COM_QUERY, b"USE rowok")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    let sql = b"SELECT 73746443902386688, CONCAT(CHAR(3), 'xyz')";
    let r = c.command(&with(COM_STMT_PREPARE, sql)).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    let id = &r[0].1[1..5];
    // Statement id, no cursor, one iteration, no parameters.
    let r = c
        .command(&with(COM_STMT_EXECUTE, &[id, &[0, 1, 0, 0, 0]].concat()))
        .await;
    let row = &r[3].1;
    assert_eq!(row[..2], [0, 0], "{r:?}");
    assert_eq!(row[2..10], 73_746_443_902_386_688i64.to_le_bytes(), "{r:?}");
    assert_eq!(row[10..], *b"\x04\x03xyz", "{r:?}");
    let mut servers = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = c
            .command(&with(COM_QUERY, b"SELECT DATABASE(), @@server_id"))
            .await;
        assert_ne!(
            r[0].1[0], 0xFF,
            "the session's database is still rowok: {r:?}"
        );
        let row = &r[3].1;
        assert_eq!(row[..6], *b"\x05rowok", "{r:?}");
        servers.insert(row[row.len() - 1]);
    }
    assert!(servers.len() >= 2, "reads on several servers: {servers:?}");
    h.shutdown().await;
}

/// The backend connection a transaction runs on.
async fn in_txn(c: &mut Conn) -> u64 {
    c.query_drop("BEGIN").await.unwrap();
    let id: Option<u64> = c.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    id.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_primary_connection_per_session() {
    let h = Harness::start_with(1, |c| {
        c.proxy.multiplexing = sluice::config::Multiplexing::Session;
    })
    .await;
    replicas_ready(&h).await;
    let mut a = h.proxy_conn().await;
    let mut b = h.proxy_conn().await;
    let id_a = in_txn(&mut a).await;
    for _ in 0..3 {
        let _ = in_txn(&mut b).await;
        // Reads still go to the replica…
        let sid: Option<u32> = a.query_first("SELECT @@server_id").await.unwrap();
        assert_ne!(sid, Some(1));
        // …and a's primary connection stays a's.
        assert_eq!(in_txn(&mut a).await, id_a);
    }
    // Both idle sessions hold their primary connection.
    let mut adm = h.admin_conn().await;
    let sessions = table(&mut adm, "SHOW SESSIONS").await;
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions.iter().all(|r| r["held"].as_deref() == Some("1")),
        "{sessions:?}"
    );
    h.shutdown().await;
}

/// A session's next lease takes back the connection it gave back last when that one is idle
/// and in the session's state (not the one another session gave back after it): its buffers
/// are still in the cache of the core the session runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_back_its_own_connection_when_it_is_idle() {
    let h = Harness::start(1).await;
    replicas_ready(&h).await;
    let mut a = h.proxy_conn().await;
    let mut b = h.proxy_conn().await;
    a.query_drop("BEGIN").await.unwrap();
    let x: Option<u64> = a.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    // a holds x: b gets another connection, and gives it back.
    let y = in_txn(&mut b).await;
    assert_ne!(x, Some(y));
    // x is given back after y: the last one returned, which a plain LIFO pool hands out next.
    a.query_drop("COMMIT").await.unwrap();
    for _ in 0..3 {
        assert_eq!(in_txn(&mut b).await, y, "b runs on its own connection");
        assert_eq!(
            Some(in_txn(&mut a).await),
            x,
            "a runs on its own connection"
        );
    }
    h.shutdown().await;
}

/// Two sessions share one server connection (and so one server statement) and bind different
/// parameter types: an execution without types (what libmariadb sends after the first) must
/// run with the types its own session bound last, whichever session bound the server
/// statement last. Sluice sends the types only when the server statement has others bound;
/// every answer equals the direct one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_binding_different_types_to_one_server_statement() {
    use common::raw::RawConn;
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    const LONGLONG: u8 = 8;
    const STRING: u8 = 254;
    // COM_STMT_EXECUTE of one parameter, with its type or without (new-params-bound 0).
    let exec = |stmt: &[u8], typed: bool, ty: u8, value: &[u8]| {
        let mut p = vec![0x17];
        p.extend_from_slice(stmt);
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        if typed {
            p.extend_from_slice(&[1, ty, 0]);
        } else {
            p.push(0);
        }
        p.extend_from_slice(value);
        p
    };
    let long = |n: i64| n.to_le_bytes().to_vec();
    let string = |s: &str| {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    // (session, typed, value): A binds LONGLONG, B binds STRING, then both go on untyped.
    let steps: Vec<(usize, bool, u8, Vec<u8>)> = vec![
        (0, true, LONGLONG, long(7)),
        (1, true, STRING, string("x")),
        (0, false, LONGLONG, long(70)),
        (0, false, LONGLONG, long(71)),
        (1, false, STRING, string("y")),
        (1, false, STRING, string("z")),
        (0, false, LONGLONG, long(72)),
        (0, true, LONGLONG, long(73)),
        (1, false, STRING, string("w")),
        (0, false, LONGLONG, long(74)),
    ];
    let mut answers = Vec::new();
    for port in [h.topo.nodes[0].port, h.addr.port()] {
        let mut sessions = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (mut raw, ok) = RawConn::login(port, common::USER, common::PASSWORD, 0).await;
            assert_eq!(ok[0], 0x00, "login");
            let prep = raw.command(b"\x16SELECT CONCAT('v=', ?)").await;
            assert_eq!(prep[0].1[0], 0, "prepare: {prep:?}");
            ids.push(prep[0].1[1..5].to_vec());
            sessions.push(raw);
        }
        let mut got = Vec::new();
        for (s, typed, ty, value) in &steps {
            let answer = sessions[*s]
                .command(&exec(&ids[*s], *typed, *ty, value))
                .await;
            got.push(answer);
        }
        answers.push(got);
    }
    let (direct, through) = (&answers[0], &answers[1]);
    for (i, (d, t)) in direct.iter().zip(through).enumerate() {
        assert_eq!(
            t, d,
            "step {i} ({:?}): through Sluice vs direct",
            steps[i].0
        );
    }
    // The values themselves: the last packet before the end is the row; its text ends the row.
    let rows: Vec<String> = through
        .iter()
        .map(|a| {
            let row = &a[a.len() - 2].1;
            String::from_utf8_lossy(&row[3..]).into_owned()
        })
        .collect();
    assert_eq!(
        rows,
        ["v=7", "v=x", "v=70", "v=71", "v=y", "v=z", "v=72", "v=73", "v=w", "v=74"]
    );
    h.shutdown().await;
}
