//! Backend connection pools: connections are reused across client sessions (reset by
//! COM_CHANGE_USER), never while they hold state, and the number per server is bounded.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use mysql_async::prelude::*;

async fn backend_id(c: &mut mysql_async::Conn) -> u64 {
    // In a transaction: the statement runs on the session's primary connection.
    c.query_drop("BEGIN").await.unwrap();
    let id: Option<u64> = c.query_first("SELECT CONNECTION_ID()").await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    id.unwrap()
}

#[tokio::test]
async fn connections_are_reused_across_sessions_with_their_state_reset() {
    let h = Harness::start(0).await;
    let mut a = h.proxy_conn().await;
    let id = backend_id(&mut a).await;
    a.query_drop("SET SESSION time_zone = '+03:00'")
        .await
        .unwrap();
    a.disconnect().await.unwrap();

    let mut b = h.proxy_conn().await;
    assert_eq!(
        backend_id(&mut b).await,
        id,
        "the idle connection is reused"
    );
    let tz: Option<String> = b.query_first("SELECT @@time_zone").await.unwrap();
    assert_ne!(
        tz.as_deref(),
        Some("+03:00"),
        "the previous session's state is gone"
    );
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
async fn the_number_of_backend_connections_is_bounded() {
    let h = Harness::start_with(0, |c| {
        c.proxy.max_backend_connections = 2;
        c.proxy.pool_wait_ms = 300;
    })
    .await;
    let mut a = h.proxy_conn().await;
    let b = h.proxy_conn().await;
    let start = Instant::now();
    match mysql_async::Conn::new(h.proxy_opts()).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9012, "{}", e.message);
            assert!(e.message.contains("db1"), "{}", e.message);
        }
        other => panic!("expected 9012, got {:?}", other.map(|_| ())),
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "waited {:?}",
        start.elapsed()
    );
    // The first two keep working; once one leaves, a new session gets its connection.
    let v: Option<i64> = a.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    b.disconnect().await.unwrap();
    let mut c = h.proxy_conn().await;
    let v: Option<i64> = c.query_first("SELECT 2").await.unwrap();
    assert_eq!(v, Some(2));
    h.shutdown().await;
}
