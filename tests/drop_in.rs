//! Drop-in behaviour: what a client sees through Sluice is what it sees on a direct
//! connection (compared against a direct run, with a replica in the topology).

mod common;

use std::time::Duration;

use common::Harness;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// What a statement's failure looks like to the client, coarsely: a server error code, or
/// the connection gone.
fn kind(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("server error {}", s.code),
        mysql_async::Error::Io(_) => "connection lost".into(),
        mysql_async::Error::Driver(d) => format!("driver: {d}"),
        other => format!("other: {other}"),
    }
}

/// Sets `wait_timeout` with `set`, stays idle for `idle`, then runs `SELECT 1`.
async fn after_idle(opts: OptsBuilder, set: &str, idle: Duration) -> Result<(), String> {
    let mut c = Conn::new(opts).await.map_err(|e| e.to_string())?;
    c.query_drop(set).await.map_err(|e| e.to_string())?;
    // The idle time is the scenario itself, not a wait for a condition.
    tokio::time::sleep(idle).await;
    match c.query_first::<i64, _>("SELECT 1").await {
        Ok(_) => Ok(()),
        Err(e) => Err(kind(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_wait_timeout_closes_an_idle_client_as_the_server_does() {
    let h = Harness::start(1).await;
    let idle = Duration::from_millis(2500);
    for set in [
        "SET wait_timeout = 1",
        "SET SESSION wait_timeout=1",
        "SET @@session.wait_timeout = 1",
    ] {
        let direct = after_idle(h.direct_opts(), set, idle).await;
        let proxied = after_idle(h.proxy_opts(), set, idle).await;
        eprintln!("{set}: direct {direct:?}, through Sluice {proxied:?}");
        assert!(
            direct.is_err(),
            "direct: the idle connection survived ({set})"
        );
        assert_eq!(proxied, direct, "{set}: through Sluice vs direct");
    }
    // A timeout longer than the idle time: both go on.
    let direct = after_idle(h.direct_opts(), "SET wait_timeout = 10", idle).await;
    let proxied = after_idle(h.proxy_opts(), "SET wait_timeout = 10", idle).await;
    assert_eq!(direct, Ok(()));
    assert_eq!(proxied, Ok(()));
    // The session's value, not the connection's: a later session without the SET is not cut.
    let proxied = after_idle(h.proxy_opts(), "SET @x = 1", idle).await;
    assert_eq!(proxied, Ok(()), "a session that did not set wait_timeout");
    h.shutdown().await;
}
