//! Backend connection pools with multiplexing: idle client sessions hold no server
//! connection, connections move between sessions with each session's state brought along,
//! never while they hold state, the number per server is bounded, waiting is bounded, and a
//! broken connection does not poison the pool.

mod common;

use std::time::{Duration, Instant};

use common::{app_connections, Harness};
use mysql_async::prelude::*;

async fn backend_id(c: &mut mysql_async::Conn) -> u64 {
    // In a transaction: the statements run on one server connection.
    c.query_drop("BEGIN").await.unwrap();
    let id: Option<u64> = c.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    id.unwrap()
}

/// A raw client's response: (sequence id, payload) per packet.
type Response = Vec<(u8, Vec<u8>)>;

/// A `COM_QUERY` packet.
fn query(sql: &str) -> Vec<u8> {
    [&[sluice_proto::command::COM_QUERY][..], sql.as_bytes()].concat()
}

/// The one text value of a one-row result: the row before the terminator, without its length
/// byte.
fn value(r: Response) -> String {
    assert_ne!(r[0].1[0], 0xFF, "{r:?}");
    String::from_utf8_lossy(&r[r.len() - 2].1[1..]).into_owned()
}

/// Whether the response is a syntax error (1064: a multi-statement query refused).
fn refused(r: &[(u8, Vec<u8>)]) -> bool {
    r[0].1[0] == 0xFF && r[0].1[1..3] == 1064u16.to_le_bytes()
}

/// Result sets in a response: its one-column counts (rows are longer).
fn results(r: &[(u8, Vec<u8>)]) -> usize {
    r.iter().filter(|(_, p)| p[..] == [1]).count()
}

/// Sluice over a primary alone, with one connection to it and a line that waits 20 s.
async fn one_connection() -> Harness {
    one_connection_waiting(20_000).await
}

/// Sluice over a primary alone, with one connection to it and a line that waits `ms`.
async fn one_connection_waiting(ms: u64) -> Harness {
    Harness::start_with(0, |c| {
        c.proxy.max_backend_connections = 1;
        c.proxy.pool_wait_ms = ms;
    })
    .await
}

/// Waits (bounded) until exactly `n` sessions wait in line for a primary connection.
async fn until_waiting(h: &Harness, n: usize, what: &str) {
    let shared = h.proxy.as_ref().unwrap().shared.clone();
    common::eventually(what, Duration::from_secs(10), || {
        let waiting = shared.routing().slots[0].pool.waiting();
        async move { waiting == n }
    })
    .await;
}

#[tokio::test]
async fn connections_are_reused_across_sessions_with_their_state_reset() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    let mut a = h.proxy_conn().await;
    let id = backend_id(&mut a).await;
    a.query_drop("SET SESSION time_zone = '+03:00'")
        .await
        .unwrap();
    // Two open sessions share the one connection, each with its own state.
    let mut b = h.proxy_conn().await;
    assert_eq!(backend_id(&mut b).await, id, "the connection is shared");
    let tz_b: Option<String> = b.query_first("SELECT @@time_zone").await.unwrap();
    assert_ne!(tz_b.as_deref(), Some("+03:00"), "a's state is not b's");
    let tz_a: Option<String> = a.query_first("SELECT @@time_zone").await.unwrap();
    assert_eq!(tz_a.as_deref(), Some("+03:00"), "a's state travels with a");
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();

    // Another user gets the same connection, logged in as itself.
    let mut o = mysql_async::Conn::new(h.opts(h.addr.port(), "other", "other-pw"))
        .await
        .unwrap();
    assert_eq!(backend_id(&mut o).await, id);
    let who: Option<String> = o.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("other@%"));
    // A session holding non-replayable state (a user lock) does not give its connection back.
    o.query_drop("SELECT GET_LOCK('pool-test', 1)")
        .await
        .unwrap();
    o.disconnect().await.unwrap();
    let mut d = h.proxy_conn().await;
    assert_ne!(
        backend_id(&mut d).await,
        id,
        "a connection that held a lock is not reused"
    );
    // The server releases the lock when it has processed the closed connection (a moment
    // after Sluice closed it: poll, bounded).
    let mut free = None;
    for _ in 0..100 {
        free = d
            .query_first("SELECT IS_FREE_LOCK('pool-test')")
            .await
            .unwrap();
        if free == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(free, Some(1), "and its lock was released when it closed");
    h.shutdown().await;
}

#[tokio::test]
async fn many_sessions_share_a_bounded_pool_and_waiting_is_bounded() {
    let h = Harness::start_with(0, |c| {
        c.proxy.max_backend_connections = 2;
        c.proxy.pool_wait_ms = 300;
    })
    .await;
    // Twenty idle sessions: logged in, each ran a statement, none holds a connection.
    let mut sessions = Vec::new();
    for i in 0..20i64 {
        let mut c = h.proxy_conn().await;
        let v: Option<i64> = c.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(v, Some(i));
        sessions.push(c);
    }
    assert!(app_connections(&h, 0).await <= 2);
    // Two open transactions take both connections: a third session's statement waits
    // pool_wait_ms, then gets 9012 naming the server and the limit; the first two go on.
    let (mut a, mut b) = (sessions.pop().unwrap(), sessions.pop().unwrap());
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("SELECT 1").await.unwrap();
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop("SELECT 1").await.unwrap();
    let mut c = sessions.pop().unwrap();
    let start = Instant::now();
    match c.query_drop("SELECT 3").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9012, "{}", e.message);
            assert!(e.message.contains("db1"), "{}", e.message);
            assert!(e.message.contains('2'), "{}", e.message);
        }
        other => panic!("expected 9012, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    let v: Option<i64> = a.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    // A waiting session gets the connection a commit gives back.
    let waiter = tokio::spawn(async move {
        let v: Option<i64> = c.query_first("SELECT 4").await.unwrap();
        (c, v)
    });
    until_waiting(&h, 1, "c waits in line").await;
    a.query_drop("COMMIT").await.unwrap();
    let (c, v) = waiter.await.unwrap();
    assert_eq!(v, Some(4));
    // Both waits are counted (SHOW POOLS' waits_total), the one turned away too; the
    // histogram observes the wait that ended with a connection. Nobody waits now.
    let shared = h.proxy.as_ref().unwrap().shared.clone();
    let pool = &shared.routing().slots[0].pool;
    assert_eq!(pool.waits.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(pool.waiting(), 0);
    let hist = shared.metrics.pool_wait_seconds.snapshot();
    assert_eq!(hist.count, 1, "{hist:?}");
    assert!(hist.sum_seconds > 0.0, "{hist:?}");
    b.query_drop("COMMIT").await.unwrap();
    // Every session still works.
    for (i, mut s) in sessions.into_iter().chain([a, b, c]).enumerate() {
        let v: Option<i64> = s.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(v, Some(i as i64));
    }
    assert!(app_connections(&h, 0).await <= 2);
    h.shutdown().await;
}

#[tokio::test]
async fn a_connection_killed_while_leased_fails_one_statement_only() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 2).await;
    let mut a = h.proxy_conn().await;
    let mut other = h.proxy_conn().await;
    // a's statement is running on its leased connection when the server kills it.
    let sleeper = tokio::spawn(async move {
        let r = a.query_drop("SELECT SLEEP(5)").await;
        (a, r)
    });
    let find = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(5)%'";
    common::eventually("the sleep runs", Duration::from_secs(5), || async {
        !h.root_sql(0, find).await.trim().is_empty()
    })
    .await;
    let id = h.root_sql(0, find).await;
    h.root_sql(0, &format!("KILL {}", id.trim())).await;
    let (mut a, r) = sleeper.await.unwrap();
    match r {
        // The server's own "connection was killed" when it said so, else Sluice's 2013.
        Err(mysql_async::Error::Server(e)) => {
            assert!([1927, 2013].contains(&e.code), "{} {}", e.code, e.message)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // The session goes on, and neither it nor anyone else gets the dead connection.
    for i in 0..6i64 {
        let v: Option<i64> = a.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(v, Some(i));
        let v: Option<i64> = other.query_first(format!("SELECT {i}")).await.unwrap();
        assert_eq!(v, Some(i));
    }
    h.shutdown().await;
}

#[tokio::test]
async fn pool_min_idle_keeps_warm_connections_that_sessions_use() {
    let h = Harness::start_with(0, |c| {
        c.proxy.pool_min_idle = 3;
        c.proxy.max_backend_connections = 4;
    })
    .await;
    // No client yet: Sluice opens three connections (as the first user) by itself.
    common::eventually("3 warm connections", Duration::from_secs(10), || async {
        app_connections(&h, 0).await >= 3
    })
    .await;
    let before: std::collections::BTreeSet<String> = h
        .root_sql(
            0,
            "SELECT GROUP_CONCAT(ID ORDER BY ID) FROM information_schema.PROCESSLIST WHERE USER = 'app'",
        )
        .await
        .trim()
        .split(',')
        .map(str::to_string)
        .collect();
    // A session (mysql_async asks for the capabilities warm connections have) uses one of
    // them rather than opening its own, and the pool never exceeds its bound.
    let mut c = h.proxy_conn().await;
    let id = backend_id(&mut c).await;
    assert!(before.contains(&id.to_string()), "{id} in {before:?}");
    assert!(app_connections(&h, 0).await <= 4);
    h.shutdown().await;
}

/// A session of another user waiting in line is handed the connection a session of the first
/// user gives back: it runs as itself (the connection is re-authenticated), and the first
/// user's next statement runs as that user again.
#[tokio::test]
async fn a_connection_handed_to_a_waiting_session_of_another_user_is_logged_in_as_it() {
    let h = one_connection().await;
    let mut a = h.proxy_conn().await;
    let mut o = mysql_async::Conn::new(h.opts(h.addr.port(), "other", "other-pw"))
        .await
        .unwrap();
    let id = backend_id(&mut a).await;
    a.query_drop("BEGIN").await.unwrap();
    let who: Option<String> = a.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"));
    let waiter = tokio::spawn(async move {
        let who: Option<String> = o.query_first("SELECT CURRENT_USER()").await.unwrap();
        (o, who)
    });
    until_waiting(&h, 1, "o waits in line").await;
    a.query_drop("COMMIT").await.unwrap();
    let (mut o, who) = waiter.await.unwrap();
    assert_eq!(who.as_deref(), Some("other@%"), "o runs as itself");
    assert_eq!(backend_id(&mut o).await, id, "on the one connection");
    let who: Option<String> = a.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"), "and a as itself again");
    h.shutdown().await;
}

/// A session killed (admin `KILL SESSION`) while it waits in line leaves the line: it is no
/// longer counted as waiting, and the connection goes to the next in line, not to it.
#[tokio::test]
async fn a_session_killed_while_waiting_leaves_the_line() {
    let h = one_connection().await;
    let mut a = h.proxy_conn().await;
    let mut c = h.proxy_conn().await;
    let mut d = h.proxy_conn().await;
    let victim = c.id();
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("SELECT 1").await.unwrap();
    let killed = tokio::spawn(async move { c.query_drop("SELECT 3").await });
    until_waiting(&h, 1, "c waits in line").await;
    let second = tokio::spawn(async move {
        let v: Option<i64> = d.query_first("SELECT 4").await.unwrap();
        (d, v)
    });
    until_waiting(&h, 2, "c and d wait in line").await;
    h.admin_conn()
        .await
        .query_drop(format!("KILL SESSION {victim}"))
        .await
        .unwrap();
    assert!(
        killed.await.unwrap().is_err(),
        "the killed session's statement fails"
    );
    until_waiting(&h, 1, "only d waits").await;
    a.query_drop("COMMIT").await.unwrap();
    let (mut d, v) = second.await.unwrap();
    assert_eq!(v, Some(4));
    until_waiting(&h, 0, "nobody waits").await;
    let v: Option<i64> = d.query_first("SELECT 5").await.unwrap();
    assert_eq!(v, Some(5));
    h.shutdown().await;
}

/// The only connection is killed by the server while a transaction holds it and another
/// session waits in line: the waiting session gets the freed slot (a new connection) at once,
/// not error 9012 at the end of its `pool_wait_ms`.
#[tokio::test]
async fn a_waiting_session_gets_the_slot_of_a_connection_that_closed() {
    let h = one_connection().await;
    let mut a = h.proxy_conn().await;
    let mut c = h.proxy_conn().await;
    a.query_drop("BEGIN").await.unwrap();
    // The server's id of the connection a's transaction holds.
    let backend: Option<u64> = a.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    let backend = backend.unwrap();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let v = c.query_first::<i64, _>("SELECT 4").await;
        (c, v, start.elapsed())
    });
    until_waiting(&h, 1, "c waits in line").await;
    h.root_sql(0, &format!("KILL {backend}")).await;
    let (mut c, v, waited) = waiter.await.unwrap();
    assert_eq!(
        v.map_err(|e| e.to_string()).unwrap(),
        Some(4),
        "after {waited:?}"
    );
    // a's transaction died with its connection: error 9020 once, then it goes on.
    match a.query_drop("SELECT 1").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 9020, "{}", e.message),
        other => panic!("expected 9020, got {other:?}"),
    }
    let v: Option<i64> = a.query_first("SELECT 5").await.unwrap();
    assert_eq!(v, Some(5));
    let v: Option<i64> = c.query_first("SELECT 6").await.unwrap();
    assert_eq!(v, Some(6));
    h.shutdown().await;
}

/// `[proxy] pool_max_lifetime_ms`: a connection that reached its lifetime is closed with
/// `COM_QUIT` when its session gives it back (never while a transaction holds it) or when a
/// lease finds it idle past it, and the next statement runs on a new connection.
#[tokio::test]
async fn connections_are_replaced_after_their_lifetime() {
    let h = Harness::start_with(0, |c| {
        c.proxy.max_backend_connections = 1;
        c.proxy.pool_max_lifetime_ms = 1_000;
    })
    .await;
    let shared = h.proxy.as_ref().unwrap().shared.clone();
    let expired = || {
        shared.routing().slots[0]
            .pool
            .expired_total
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let gone = |id: u64| {
        let h = &h;
        async move {
            let n = h
                .root_sql(
                    0,
                    &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}"),
                )
                .await;
            n.trim() == "0"
        }
    };
    let aborted = h.status_counter(0, "Aborted_clients").await;
    let mut a = h.proxy_conn().await;
    a.query_drop("BEGIN").await.unwrap();
    let first: Option<u64> = a.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    let first = first.unwrap();
    // Past its lifetime inside a transaction: the transaction keeps it.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let still: Option<u64> = a.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    assert_eq!(still, Some(first), "a held connection is never replaced");
    assert_eq!(expired(), 0);
    a.query_drop("COMMIT").await.unwrap();
    // Given back: closed, and the next statement opens another.
    let second = backend_id(&mut a).await;
    assert_ne!(second, first, "replaced once it was given back");
    assert_eq!(expired(), 1);
    common::eventually(
        "the expired connection closes",
        Duration::from_secs(10),
        || gone(first),
    )
    .await;
    // Idle in the pool past its lifetime: not handed out again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let third = backend_id(&mut a).await;
    assert!(
        third != second && third != first,
        "{first} {second} {third}"
    );
    assert_eq!(expired(), 2);
    common::eventually("the second closes", Duration::from_secs(10), || {
        gone(second)
    })
    .await;
    // Both said goodbye: the server counted no aborted client.
    assert_eq!(h.status_counter(0, "Aborted_clients").await, aborted);
    // Seen by an operator.
    let mut admin = h.admin_conn().await;
    let pools = common::table(&mut admin, "SHOW POOLS").await;
    assert_eq!(
        pools[0].get("expired_total").cloned().flatten().as_deref(),
        Some("2")
    );
    a.disconnect().await.unwrap();
    h.shutdown().await;
}

/// Connections the pool closes on its own — beyond `pool_max_idle`, idle past
/// `pool_idle_timeout_ms` — say goodbye (`COM_QUIT`): the server counts no aborted client
/// (`Aborted_clients`, and MariaDB's "Aborted connection" notes in its log).
#[tokio::test]
async fn connections_the_pool_closes_say_goodbye() {
    let h = Harness::start_with(0, |c| {
        c.proxy.pool_max_idle = 1;
        c.proxy.pool_idle_timeout_ms = 300;
    })
    .await;
    let aborted = h.status_counter(0, "Aborted_clients").await;
    let mut a = h.proxy_conn().await;
    let mut b = h.proxy_conn().await;
    // Two connections at once; both come back, one more than the pool keeps idle.
    a.query_drop("BEGIN").await.unwrap();
    b.query_drop("BEGIN").await.unwrap();
    let ia: Option<u64> = a.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    let ib: Option<u64> = b.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    assert_ne!(ia, ib);
    a.query_drop("COMMIT").await.unwrap();
    b.query_drop("COMMIT").await.unwrap();
    common::eventually(
        "one connection is closed",
        Duration::from_secs(10),
        || async { app_connections(&h, 0).await == 1 },
    )
    .await;
    // The one kept idle outlives pool_idle_timeout_ms: the next lease closes it and opens
    // another.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ic = backend_id(&mut a).await;
    assert!(Some(ic) != ia && Some(ic) != ib, "{ia:?} {ib:?} {ic}");
    common::eventually(
        "the idle one is closed",
        Duration::from_secs(10),
        || async { app_connections(&h, 0).await == 1 },
    )
    .await;
    assert_eq!(h.status_counter(0, "Aborted_clients").await, aborted);
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn sessions_that_differ_by_the_multi_statement_option_share_a_connection() {
    // One server connection; a wait short enough that a pinned session shows as error 9012.
    let h = one_connection_waiting(3_000).await;
    // Bounded: a response that never comes fails the test in a minute.
    tokio::time::timeout(Duration::from_secs(60), share_one_connection(&h))
        .await
        .expect("the sessions were answered within a minute");
    h.shutdown().await;
}

/// [`sessions_that_differ_by_the_multi_statement_option_share_a_connection`] without its set-up.
async fn share_one_connection(h: &Harness) {
    use common::raw::{RawConn, CLIENT_CAPS};
    use sluice_proto::command::{COM_RESET_CONNECTION, COM_SET_OPTION};
    use sluice_proto::flags::cap;
    let port = h.addr.port();
    // As PyMySQL and PHP's mysqli log in (no multi-statements, no session tracking), and as
    // libmariadb does (both).
    let single_caps = CLIENT_CAPS & !cap::CLIENT_MULTI_STATEMENTS;
    let (mut single, ok) =
        RawConn::login_caps(port, common::USER, common::PASSWORD, single_caps).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    let multi_caps = CLIENT_CAPS | cap::CLIENT_SESSION_TRACK;
    let (mut multi, ok) =
        RawConn::login_caps(port, common::USER, common::PASSWORD, multi_caps).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    let thread = |r: Vec<(u8, Vec<u8>)>| -> Vec<u8> {
        let row = &r[r.len() - 2].1;
        row[1..].to_vec()
    };
    let two = query("SELECT 1; SELECT 2");
    let id = query("SELECT @@pseudo_thread_id");
    let first = thread(multi.command(&id).await);
    // Reading the counter is a connection too.
    let connections = h.status_counter(0, "Connections").await;
    let own = h.status_counter(0, "Connections").await - connections;
    let connections = connections + own;
    for round in 0..4 {
        let r = single.command(&two).await;
        assert!(
            refused(&r),
            "round {round}: refused as on a direct connection: {r:?}"
        );
        let r = multi.command(&two).await;
        assert_eq!(results(&r), 2, "round {round}: {r:?}");
        assert_eq!(
            thread(single.command(&id).await),
            first,
            "round {round}: the one connection"
        );
        assert_eq!(
            thread(multi.command(&id).await),
            first,
            "round {round}: the one connection"
        );
    }
    // COM_SET_OPTION: the option follows the session, which is not pinned by it (the other
    // session gets the one connection meanwhile).
    let r = multi.command(&[COM_SET_OPTION, 1, 0]).await;
    assert_eq!(r[0].1[0], 0xFE, "an EOF: {r:?}");
    assert!(refused(&single.command(&two).await));
    let r = multi.command(&two).await;
    assert!(refused(&r), "the option is off for this session: {r:?}");
    let r = single.command(&query("SELECT 1")).await;
    assert_ne!(r[0].1[0], 0xFF, "the other session is served: {r:?}");
    let r = multi.command(&[COM_SET_OPTION, 0, 0]).await;
    assert_eq!(r[0].1[0], 0xFE, "{r:?}");
    let r = multi.command(&two).await;
    assert_eq!(results(&r), 2, "on again: {r:?}");
    assert_eq!(thread(single.command(&id).await), first);
    // COM_RESET_CONNECTION and COM_CHANGE_USER leave the option as it was, through Sluice as
    // on a direct connection.
    let (mut direct, _) = RawConn::login_caps(
        h.topo.nodes[0].port,
        common::USER,
        common::PASSWORD,
        multi_caps,
    )
    .await;
    let mut outcomes = Vec::new();
    for c in [&mut direct, &mut multi] {
        let r = c.command(&[COM_SET_OPTION, 1, 0]).await;
        assert_eq!(r[0].1[0], 0xFE, "{r:?}");
        let r = c.command(&[COM_RESET_CONNECTION]).await;
        assert_eq!(r[0].1[0], 0, "{r:?}");
        outcomes.push(refused(&c.command(&two).await));
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "as a direct connection: {outcomes:?}"
    );
    let r = multi.command(&[COM_SET_OPTION, 0, 0]).await;
    assert_eq!(r[0].1[0], 0xFE, "{r:?}");
    // No connection was opened for the other kind of session: it was never re-opened or
    // re-authenticated.
    // (The direct connection is the one more.)
    assert_eq!(
        h.status_counter(0, "Connections").await,
        connections + own + 1
    );
}

#[tokio::test]
async fn options_changed_in_a_replica_transaction_follow_the_session_and_do_not_leak() {
    // One connection per server: what session `a` leaves on the replica's connection is
    // what session `b` gets next, unless Sluice brings it back to `b`'s state.
    let h = Harness::start_with(1, |c| {
        c.proxy.max_backend_connections = 1;
        c.proxy.pool_wait_ms = 10_000;
    })
    .await;
    tokio::time::timeout(Duration::from_secs(60), replica_transaction_options(&h))
        .await
        .expect("the sessions were answered within a minute");
    h.shutdown().await;
}

/// [`options_changed_in_a_replica_transaction_follow_the_session_and_do_not_leak`] without
/// its set-up.
async fn replica_transaction_options(h: &Harness) {
    use common::raw::{RawConn, CLIENT_CAPS};
    use sluice_proto::command::{COM_INIT_DB, COM_SET_OPTION};
    use sluice_proto::flags::cap;
    let port = h.addr.port();
    let caps = CLIENT_CAPS | cap::CLIENT_SESSION_TRACK;
    let (mut a, ok) = RawConn::login_caps(port, common::USER, common::PASSWORD, caps).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    let (mut b, ok) = RawConn::login_caps(port, common::USER, common::PASSWORD, caps).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    // From a table: the read moves even after an error, whose warnings a statement without
    // one would keep readable (and so run where they are).
    let at = "SELECT CONCAT(@@server_id, ':', IFNULL(DATABASE(), '-')) \
              FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'information_schema'";
    let where_ = query(at);
    let on_primary = query(&format!("/* sluice: route=primary */ {at}"));
    let two = query("SELECT 1; SELECT 2");
    // The replica is caught up before the transaction starts (a read there answers).
    let mut on_replica = false;
    for _ in 0..200 {
        if value(b.command(&where_).await) == "2:-" {
            on_replica = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(on_replica, "reads did not reach the replica in 10 s");
    let r = a.command(&query("START TRANSACTION READ ONLY")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_eq!(value(a.command(&where_).await), "2:-");
    // Inside the transaction, on the replica's connection: the option off, another database.
    let r = a.command(&[COM_SET_OPTION, 1, 0]).await;
    assert_eq!(r[0].1[0], 0xFE, "an EOF: {r:?}");
    assert!(
        refused(&a.command(&two).await),
        "off inside the transaction"
    );
    let r = a.command(&[&[COM_INIT_DB][..], b"mysql"].concat()).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_eq!(value(a.command(&where_).await), "2:mysql");
    let r = a.command(&query("COMMIT")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    // The other session gets its own state back on the replica's connection, in a read-only
    // transaction of its own too ...
    assert_eq!(value(b.command(&where_).await), "2:-");
    let r = b.command(&query("START TRANSACTION READ ONLY")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_eq!(value(b.command(&where_).await), "2:-");
    assert_eq!(
        results(&b.command(&two).await),
        2,
        "on for the other session"
    );
    let r = b.command(&query("COMMIT")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_eq!(value(b.command(&on_primary).await), "1:-");
    // ... and the first session's state is brought to the primary's connection as well.
    assert_eq!(value(a.command(&on_primary).await), "1:mysql");
    assert!(refused(&a.command(&two).await), "off on the primary");
    assert_eq!(value(a.command(&where_).await), "2:mysql");
    assert_eq!(
        results(&b.command(&two).await),
        2,
        "on for the other session"
    );
    assert!(
        refused(&a.command(&two).await),
        "and still off for this one"
    );
}

#[tokio::test]
async fn a_character_set_variable_one_session_set_is_undone_to_the_next_sessions_login() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        let vars = "SELECT CONCAT_WS(',', @@character_set_client, @@character_set_connection, \
                    @@collation_connection, IFNULL(@@character_set_results, 'NULL'))";
        // As a direct connection of the same login has them.
        let mut direct = h.direct_conn().await;
        let login: Option<String> = direct.query_first(vars).await.unwrap();
        let mut a = h.proxy_conn().await;
        let mut b = h.proxy_conn().await;
        let first: Option<String> = b.query_first(vars).await.unwrap();
        assert_eq!(first, login, "as logged in");
        for set in [
            "SET character_set_results = NULL",
            "SET character_set_client = latin1",
            "SET character_set_connection = latin1",
            "SET collation_connection = latin1_bin",
        ] {
            direct.query_drop(set).await.unwrap();
            let want: Option<String> = direct.query_first(vars).await.unwrap();
            a.query_drop(set).await.unwrap();
            let theirs: Option<String> = a.query_first(vars).await.unwrap();
            assert_eq!(theirs, want, "{set}: as on a direct connection");
            assert_ne!(theirs, login, "{set} changed a's session");
            // b's statement runs on the connection a just used.
            let got: Option<String> = b.query_first(vars).await.unwrap();
            assert_eq!(
                got, login,
                "after a's {set}, b has its login's character set"
            );
            let again: Option<String> = a.query_first(vars).await.unwrap();
            assert_eq!(again, want, "{set}: a's state travels with a");
            direct.disconnect().await.unwrap();
            direct = h.direct_conn().await;
            a.disconnect().await.unwrap();
            a = h.proxy_conn().await;
        }
    })
    .await
    .expect("answered within a minute");
    h.shutdown().await;
}

#[tokio::test]
async fn sessions_of_different_login_character_sets_share_a_connection() {
    let h = one_connection_waiting(10_000).await;
    tokio::time::timeout(Duration::from_secs(60), share_across_charsets(&h))
        .await
        .expect("the sessions were answered within a minute");
    h.shutdown().await;
}

/// How many COM_CHANGE_USER the primary has logged (its general log).
async fn change_users(h: &Harness) -> u64 {
    let out = h
        .root_sql(
            0,
            "SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Change user'",
        )
        .await;
    out.trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
}

/// [`sessions_of_different_login_character_sets_share_a_connection`] without its set-up.
async fn share_across_charsets(h: &Harness) {
    h.root_sql(
        0,
        "SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1",
    )
    .await;
    use common::raw::RawConn;
    use sluice_proto::command::COM_RESET_CONNECTION;
    let vars = query(
        "SELECT CONCAT_WS(',', @@character_set_client, @@character_set_connection, \
         @@collation_connection, @@character_set_results)",
    );
    let thread = query("SELECT @@pseudo_thread_id");
    // (collation id, as drivers send it): mysql_async and PyMySQL (45), node mysql2 and sqlx
    // (224), latin1 (8: PHP's mysqlnd by default), binary (63); cp1251 (51) is not among the
    // ids every server knows.
    let ids = [45u8, 224, 8, 63, 51];
    let mut direct = Vec::new();
    for id in ids {
        let (mut c, ok) =
            RawConn::login_charset(h.topo.nodes[0].port, common::USER, common::PASSWORD, id).await;
        assert_eq!(ok[0], 0, "{ok:?}");
        direct.push(value(c.command(&vars).await));
    }
    let mut sessions = Vec::new();
    for id in ids {
        let (c, ok) =
            RawConn::login_charset(h.addr.port(), common::USER, common::PASSWORD, id).await;
        assert_eq!(ok[0], 0, "{ok:?}");
        sessions.push(c);
    }
    let first = value(sessions[0].command(&thread).await);
    let change_user = change_users(h).await;
    let connections = h.status_counter(0, "Connections").await;
    let own = h.status_counter(0, "Connections").await - connections;
    let connections = connections + own;
    for round in 0..3 {
        for (n, s) in sessions.iter_mut().enumerate().take(4) {
            assert_eq!(
                value(s.command(&vars).await),
                direct[n],
                "round {round}: login charset {} as on a direct connection",
                ids[n]
            );
            assert_eq!(value(s.command(&thread).await), first, "the one connection");
        }
    }
    // No connection was opened or re-authenticated for them (the counter is read once more).
    assert_eq!(h.status_counter(0, "Connections").await, connections + own);
    assert_eq!(change_users(h).await, change_user, "no re-authentication");
    // COM_RESET_CONNECTION gives a session its login's character set back, although the
    // connection logged in with another one.
    let s = &mut sessions[1];
    let r = s.command(&query("SET NAMES latin1")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_ne!(value(s.command(&vars).await), direct[1]);
    // Another session of the same login on that connection: its character set is set again
    // (`character_set_client` by the default collation: 224 there is error 1115).
    let (mut e, ok) =
        RawConn::login_charset(h.addr.port(), common::USER, common::PASSWORD, 224).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    assert_eq!(value(e.command(&vars).await), direct[1], "after SET NAMES");
    let s = &mut sessions[1];
    let r = s.command(&[COM_RESET_CONNECTION]).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    assert_eq!(value(s.command(&vars).await), direct[1], "after a reset");
    // An id not every server knows keeps connections of its own: the one connection is
    // re-authenticated for it (COM_CHANGE_USER with its character set), and back.
    let change_user = change_users(h).await;
    let s = &mut sessions[4];
    assert_eq!(value(s.command(&vars).await), direct[4]);
    assert_eq!(change_users(h).await, change_user + 1);
    assert_eq!(value(sessions[2].command(&vars).await), direct[2]);
    assert_eq!(change_users(h).await, change_user + 2);
    // latin1_german1_ci (5), not a character set's default collation and not among the
    // shared ids: after one session's SET NAMES, the next session of that login gets it back.
    let (mut d5, _) =
        RawConn::login_charset(h.topo.nodes[0].port, common::USER, common::PASSWORD, 5).await;
    let want = value(d5.command(&vars).await);
    let (mut f, ok) =
        RawConn::login_charset(h.addr.port(), common::USER, common::PASSWORD, 5).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    let r = f.command(&query("SET NAMES utf8mb4")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    let (mut g, ok) =
        RawConn::login_charset(h.addr.port(), common::USER, common::PASSWORD, 5).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    assert_eq!(
        value(g.command(&vars).await),
        want,
        "latin1_german1_ci again"
    );
}

#[tokio::test]
async fn a_string_variable_set_before_set_names_keeps_its_value_on_another_connection() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        // The client's bytes for 'é' in utf8mb4 (its login), then latin1 for what follows.
        let script = ["SET @v = 'caf\u{e9}'", "SET NAMES latin1", "SET @w = 'x'"];
        let read = "SELECT HEX(@v), CHARSET(@v), HEX(@w), CHARSET(@w)";
        let mut direct = h.direct_conn().await;
        for s in script {
            direct.query_drop(s).await.unwrap();
        }
        let want: Option<(String, String, String, String)> =
            direct.query_first(read).await.unwrap();
        let mut a = h.proxy_conn().await;
        let mut b = h.proxy_conn().await;
        for s in script {
            a.query_drop(s).await.unwrap();
        }
        // b takes the one connection; a's state is brought back to it after.
        b.query_drop("SET @other = 1").await.unwrap();
        let got: Option<(String, String, String, String)> = a.query_first(read).await.unwrap();
        assert_eq!(got, want, "as on a direct connection");
        // A session of the login's character set sets a string where the connection was
        // left in latin1 by another session.
        let mut c = h.proxy_conn().await;
        c.query_drop("SET @n = 'Jos\u{e9}'").await.unwrap();
        let read = "SELECT HEX(@n), CHARSET(@n)";
        let mut direct = h.direct_conn().await;
        direct.query_drop("SET @n = 'Jos\u{e9}'").await.unwrap();
        let want: Option<(String, String)> = direct.query_first(read).await.unwrap();
        for round in 0..2 {
            a.query_drop("SET @w = 'y'").await.unwrap();
            let got: Option<(String, String)> = c.query_first(read).await.unwrap();
            assert_eq!(got, want, "round {round}: as on a direct connection");
        }
    })
    .await
    .expect("answered within a minute");
    h.shutdown().await;
}

#[tokio::test]
async fn a_variable_set_to_null_keeps_its_type_on_another_connection() {
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        let script = [
            "SET @v = 5",
            "SET @v = NULL",
            "SET @s = 'x'",
            "SET @s = NULL",
        ];
        let types = |rows: Vec<mysql_async::Row>| -> Vec<String> {
            rows[0]
                .columns_ref()
                .iter()
                .map(|c| format!("{:?} {}", c.column_type(), c.column_length()))
                .collect()
        };
        let read = "SELECT @v, @s";
        let mut direct = h.direct_conn().await;
        for s in script {
            direct.query_drop(s).await.unwrap();
        }
        let want = types(direct.query(read).await.unwrap());
        let mut a = h.proxy_conn().await;
        // Another user: the one connection is re-authenticated for it, which clears its
        // variables, and again for a, whose state is then replayed on a clean session.
        let mut b = mysql_async::Conn::new(h.opts(h.addr.port(), "other", "other-pw"))
            .await
            .unwrap();
        for s in script {
            a.query_drop(s).await.unwrap();
        }
        b.query_drop("SET @other = 1").await.unwrap();
        assert_eq!(types(a.query(read).await.unwrap()), want, "as directly");
    })
    .await
    .expect("answered within a minute");
    h.shutdown().await;
}

/// Responses to a script, by command name: (sequence id, payload) per packet.
type Script = Vec<(String, Response)>;

/// Prepared `CALL`s with OUT parameters (whose result only a client with
/// `CLIENT_PS_MULTI_RESULTS` gets), a procedure's own results, and, for a client without
/// local files, `LOAD DATA LOCAL` (refused); statement ids masked.
async fn calls_and_local_files(c: &mut common::raw::RawConn) -> Script {
    use sluice_proto::command::{encode_simple, encode_stmt_execute, COM_STMT_PREPARE};
    use sluice_proto::flags::cap;
    let prepare = |sql: &str| encode_simple(COM_STMT_PREPARE, sql.as_bytes());
    let mut out = Vec::new();
    // CALL caps.outs(20, NULL, 5): three LONGLONG parameters, the second NULL.
    let mut run = |name: &str, r: Vec<(u8, Vec<u8>)>| {
        out.push((name.to_string(), r));
    };
    let r = c.command(&prepare("CALL caps.outs(?, ?, ?)")).await;
    assert_eq!(r[0].1[0], 0, "{r:?}");
    let id = u32::from_le_bytes(r[0].1[1..5].try_into().unwrap());
    let mut exec = encode_stmt_execute(id, 0);
    exec.extend_from_slice(&[0x02, 0x01, 0x08, 0x00, 0x08, 0x00, 0x08, 0x00]);
    exec.extend_from_slice(&20i64.to_le_bytes());
    exec.extend_from_slice(&5i64.to_le_bytes());
    for n in 0..2 {
        run(&format!("execute outs {n}"), c.command(&exec).await);
    }
    let r = c.command(&prepare("CALL caps.only_out(?)")).await;
    let id = u32::from_le_bytes(r[0].1[1..5].try_into().unwrap());
    let mut exec = encode_stmt_execute(id, 0);
    exec.extend_from_slice(&[0x01, 0x01, 0x08, 0x00]);
    run("execute only_out", c.command(&exec).await);
    let r = c.command(&prepare("CALL caps.sets()")).await;
    let id = u32::from_le_bytes(r[0].1[1..5].try_into().unwrap());
    run("execute sets", c.command(&encode_stmt_execute(id, 0)).await);
    run(
        "text call",
        c.command(&query("CALL caps.outs(3, @b, @c)")).await,
    );
    run("out values", c.command(&query("SELECT @b, @c")).await);
    if c.caps & cap::CLIENT_LOCAL_FILES == 0 {
        for sql in [
            "LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE caps.t",
            "load /* c */ xml low_priority local infile 'x' into table caps.t",
        ] {
            run(sql, c.command(&query(sql)).await);
        }
        run(
            "after load",
            c.command(&query("SELECT COUNT(*) FROM caps.t")).await,
        );
    }
    out
}

/// Sessions that differ only by `CLIENT_LOCAL_FILES` and `CLIENT_PS_MULTI_RESULTS` (PyMySQL
/// and Connector/Python ask for neither, PHP's mysqlnd and PyMySQL with `local_infile` for
/// local files, libmariadb for both — though it also asks for MariaDB's extended capabilities,
/// which keep its sessions apart) share one server connection without
/// re-authenticating it, and each gets what a direct connection gives it byte for byte: the
/// OUT parameters' result only when it asked for it, and `LOAD DATA LOCAL` refused with the
/// server's error when it did not enable local files.
#[tokio::test]
async fn sessions_that_differ_by_local_files_and_out_parameters_share_a_connection() {
    let h = one_connection_waiting(10_000).await;
    tokio::time::timeout(Duration::from_secs(60), share_across_capabilities(&h))
        .await
        .expect("the sessions were answered within a minute");
    h.shutdown().await;
}

/// [`sessions_that_differ_by_local_files_and_out_parameters_share_a_connection`] without its
/// set-up.
async fn share_across_capabilities(h: &Harness) {
    use common::raw::{RawConn, CLIENT_CAPS};
    use sluice_proto::command::COM_QUERY;
    use sluice_proto::flags::cap;
    h.root_sql(
        0,
        "SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1; \
         CREATE DATABASE caps; CREATE TABLE caps.t (a INT)",
    )
    .await;
    let (mut root, ok) =
        RawConn::login(h.topo.nodes[0].port, common::USER, common::PASSWORD, 0).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    for sql in [
        "CREATE PROCEDURE caps.outs(IN a INT, OUT b INT, INOUT c INT) \
         BEGIN SELECT a AS shown; SET b = a * 2, c = c + 1; END",
        "CREATE PROCEDURE caps.only_out(OUT b VARCHAR(10)) SET b = 'seven'",
        "CREATE PROCEDURE caps.sets() BEGIN SELECT 1 AS one; SELECT 2 AS two, 'x' AS x; END",
    ] {
        let r = root
            .command(&[&[COM_QUERY][..], sql.as_bytes()].concat())
            .await;
        assert_eq!(r[0].1[0], 0, "{sql}: {r:?}");
    }
    let both = CLIENT_CAPS;
    let neither = CLIENT_CAPS & !(cap::CLIENT_LOCAL_FILES | cap::CLIENT_PS_MULTI_RESULTS);
    let files = CLIENT_CAPS & !cap::CLIENT_PS_MULTI_RESULTS;
    let kinds = [neither, both, files, neither | cap::CLIENT_DEPRECATE_EOF];
    let mut direct = Vec::new();
    for caps in kinds {
        let (mut c, ok) =
            RawConn::login_caps(h.topo.nodes[0].port, common::USER, common::PASSWORD, caps).await;
        assert_eq!(ok[0], 0, "{ok:?}");
        direct.push(calls_and_local_files(&mut c).await);
    }
    // The comparison covers the OUT parameters: left out for a client without
    // CLIENT_PS_MULTI_RESULTS (one result and the OK), there for one with it (two and the OK).
    let results = |s: &Script| {
        let r = &s.iter().find(|(n, _)| n == "execute outs 0").unwrap().1;
        r.iter()
            .filter(|(_, p)| p.len() == 1 && p[0] < 0xFB)
            .count()
    };
    assert_eq!(results(&direct[0]), 1, "{:?}", direct[0]);
    assert_eq!(results(&direct[1]), 2, "{:?}", direct[1]);
    let thread = [&[COM_QUERY][..], b"SELECT @@pseudo_thread_id"].concat();
    let mut sessions = Vec::new();
    for caps in kinds {
        let (c, ok) =
            RawConn::login_caps(h.addr.port(), common::USER, common::PASSWORD, caps).await;
        assert_eq!(ok[0], 0, "{ok:?}");
        sessions.push(c);
    }
    // The first three share the connection; the fourth (CLIENT_DEPRECATE_EOF changes every
    // result's end) has one of its own: the one allowed is closed and opened anew for it.
    let first = sessions[1].command(&thread).await;
    let change_user = change_users(h).await;
    let connections = h.status_counter(0, "Connections").await;
    let own = h.status_counter(0, "Connections").await - connections;
    let connections = connections + own;
    for round in 0..2 {
        for n in [0, 1, 2, 1, 0] {
            let got = calls_and_local_files(&mut sessions[n]).await;
            assert_eq!(direct[n].len(), got.len());
            for ((name, a), (_, b)) in direct[n].iter().zip(&got) {
                assert_eq!(
                    a, b,
                    "round {round}, session {n}: {name:?} differs (left direct, right through sluice)"
                );
            }
            assert_eq!(
                sessions[n].command(&thread).await,
                first,
                "the one connection"
            );
        }
    }
    assert_eq!(h.status_counter(0, "Connections").await, connections + own);
    assert_eq!(change_users(h).await, change_user, "no re-authentication");
    let got = calls_and_local_files(&mut sessions[3]).await;
    for ((name, a), (_, b)) in direct[3].iter().zip(&got) {
        assert_eq!(a, b, "{name:?} differs (left direct, right through sluice)");
    }
    assert_ne!(sessions[3].command(&thread).await, first);
}
