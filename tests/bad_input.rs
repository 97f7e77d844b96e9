//! Bad input gets a clear error and harms nothing else: wrong credentials, malformed and
//! oversized packets, silent clients, dead backends.

mod common;

use std::time::{Duration, Instant};

use common::raw::RawConn;
use common::{Harness, PASSWORD, USER};
use mysql_async::prelude::*;
use sluice_proto::err::ErrPacket;
use sluice_proto::framing::FrameHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn server_error(e: mysql_async::Error) -> (u16, String, String) {
    match e {
        mysql_async::Error::Server(e) => (e.code, e.state, e.message),
        other => panic!("expected a server error, got {other}"),
    }
}

/// The server's id of the connection the session's statement runs on.
async fn thread_id(c: &mut mysql_async::Conn) -> u64 {
    let id: Option<u64> = c.query_first("SELECT @@pseudo_thread_id").await.unwrap();
    id.unwrap()
}

async fn still_serving(h: &Harness) {
    let mut c = h.proxy_conn().await;
    let v: Option<i64> = c.query_first("SELECT 40 + 2").await.unwrap();
    assert_eq!(v, Some(42));
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn wrong_password_and_unknown_user_never_reach_the_backend() {
    let h = Harness::start(0).await;
    let before = h.status_counter(0, "Connections").await;
    for (user, pw) in [(USER, "wrong"), ("ghost", "whatever"), (USER, "")] {
        let err = mysql_async::Conn::new(h.opts(h.addr.port(), user, pw))
            .await
            .unwrap_err();
        let (code, state, msg) = server_error(err);
        assert_eq!((code, state.as_str()), (1045, "28000"), "{msg}");
        let using = if pw.is_empty() { "NO" } else { "YES" };
        assert_eq!(
            msg,
            format!("Access denied for user '{user}'@'127.0.0.1' (using password: {using})")
        );
    }
    // Only the status query itself connected to the primary meanwhile.
    let after = h.status_counter(0, "Connections").await;
    assert_eq!(
        after,
        before + 1,
        "refused logins must not open backend connections"
    );
    // A user with an empty password logs in with no password.
    let mut c = mysql_async::Conn::new(h.opts(h.addr.port(), "nopw", ""))
        .await
        .unwrap();
    let who: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("nopw@%"));
    still_serving(&h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_handshake_and_commands() {
    let h = Harness::start(0).await;
    // Garbage instead of a handshake response.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 4, "greeting");
    s.write_all(&[5, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.len() > 4, "an ERR packet before closing");
    let err = ErrPacket::parse(&rest[4..]).unwrap();
    assert_eq!(err.code, 1043);

    // A truncated packet, then the client vanishes.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let _ = s.read(&mut buf).await.unwrap();
    s.write_all(&[100, 0, 0, 1, 1, 2, 3]).await.unwrap();
    drop(s);

    // After login: an empty command, then a command with a bad sequence id.
    let (mut c, ok) = RawConn::login(h.addr.port(), USER, PASSWORD, 0).await;
    assert_eq!(ok[0], 0);
    c.write(0, b"").await;
    let p = c.read_packet().await;
    assert_eq!(ErrPacket::parse(&p.payload).unwrap().code, 1835);
    assert!(
        c.try_read_packet().await.is_none(),
        "closed after a malformed packet"
    );

    let (mut c, _) = RawConn::login(h.addr.port(), USER, PASSWORD, 0).await;
    c.write(7, b"\x03SELECT 1").await;
    let p = c.read_packet().await;
    assert_eq!(ErrPacket::parse(&p.payload).unwrap().code, 1156);

    // A malformed COM_STMT_EXECUTE goes to the server, which answers with its own error;
    // the session stays usable.
    let (mut c, _) = RawConn::login(h.addr.port(), USER, PASSWORD, 0).await;
    let r = c.command(b"\x17\x01").await;
    assert_eq!(r[0].1[0], 0xFF, "server error for a truncated execute");
    let r = c.command(b"\x03SELECT 7").await;
    assert!(r.iter().any(|(_, p)| p == b"\x017"), "{r:?}");
    // Replication commands are refused by Sluice.
    let r = c.command(b"\x12\x00\x00\x00\x00").await;
    assert_eq!(ErrPacket::parse(&r[0].1).unwrap().code, 1047);

    still_serving(&h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let h = Harness::start_with(0, |c| c.proxy.max_packet_bytes = 1 << 20).await;
    let (mut c, _) = RawConn::login(h.addr.port(), USER, PASSWORD, 0).await;
    // Announce a 16 MiB command but send only the header: Sluice must answer at once, without
    // waiting for (or allocating) the claimed body.
    let hdr = FrameHeader {
        len: 0xFF_FFFF,
        seq: 0,
    }
    .encode();
    c.stream.write_all(&hdr).await.unwrap();
    c.stream.write_all(b"\x03SELECT '").await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), c.read_packet())
        .await
        .expect("answered");
    let e = ErrPacket::parse(&p.payload).unwrap();
    assert_eq!((e.code, &e.sql_state), (1153, b"08S01"));
    assert!(c.try_read_packet().await.is_none(), "connection closed");

    // A statement just over the limit through a real client.
    let mut m = h.proxy_conn().await;
    let big = format!("SELECT '{}'", "x".repeat(1 << 20));
    let err = m.query_drop(big).await.unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1153),
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {}
        e => panic!("{e}"),
    }
    still_serving(&h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let h = Harness::start_with(0, |c| c.proxy.handshake_timeout_ms = 400).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection must be closed by sluice");
    assert!(start.elapsed() >= Duration::from_millis(350));
    assert!(buf.len() > 4 && buf[4] == 10, "only the greeting was sent");
    // A client that trickles bytes is bound by the same absolute deadline.
    let start = Instant::now();
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut g = [0u8; 256];
    let _ = s.read(&mut g).await.unwrap();
    let mut closed = false;
    for _ in 0..40 {
        if s.write_all(&[0]).await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a trickling client must be cut off");
    assert!(start.elapsed() < Duration::from_secs(3));
    still_serving(&h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn backend_killed_mid_query_gives_2013_and_the_session_moves_to_a_new_connection() {
    let mut h = Harness::start(0).await;
    // KILL of the backend connection: the client sees an error for the statement, and the
    // session's next command uses a new backend connection.
    let mut c = h.proxy_conn().await;
    let id = thread_id(&mut c).await;
    let q = tokio::spawn(async move {
        let r = c.query_drop("SELECT SLEEP(20)").await;
        (r, c)
    });
    common::running_on(&h, 0, "SELECT SLEEP(20)").await;
    h.root_sql(0, &format!("KILL CONNECTION {id}")).await;
    let (r, mut c) = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .unwrap()
        .unwrap();
    let e = server_error(r.unwrap_err());
    assert!(matches!(e.0, 1927 | 2013), "{e:?}");
    // A killed connection looks like a dead server: the client was told, and its next
    // command runs on a new backend connection (the killed one is never reused).
    assert_ne!(
        thread_id(&mut c).await,
        id,
        "the killed backend connection was reused"
    );
    still_serving(&h).await;

    // The primary dies during a query: error 2013 from Sluice, promptly.
    let mut c = h.proxy_conn().await;
    let q = tokio::spawn(async move { c.query_drop("SELECT SLEEP(20)").await });
    common::running_on(&h, 0, "SELECT SLEEP(20)").await;
    h.topo.nodes[0].kill();
    let r = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .unwrap()
        .unwrap();
    let e = server_error(r.unwrap_err());
    assert_eq!(e.0, 2013, "{e:?}");
    assert!(e.2.contains("Lost connection"), "{e:?}");

    // Connecting now: a documented Sluice error, not a hang.
    let start = Instant::now();
    let err = mysql_async::Conn::new(h.proxy_opts()).await.unwrap_err();
    let e = server_error(err);
    assert!(matches!(e.0, 9001 | 9002), "{e:?}");
    assert!(e.2.starts_with("Sluice: "), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    h.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_closed_just_after_another_broke_is_not_handed_out() {
    // One session loop and no warm connections: the pool holds exactly the connections below.
    let h = Harness::start_with(0, |c| {
        c.proxy.worker_threads = 1;
        c.proxy.pool_min_idle = 0;
    })
    .await;
    let mut a = h.proxy_conn().await;
    let mut b = h.proxy_conn().await;
    // `a` holds connection X in a transaction; `b` reads on another, Y, which goes back idle.
    a.query_drop("BEGIN").await.unwrap();
    let x = thread_id(&mut a).await;
    let y = thread_id(&mut b).await;
    assert_ne!(x, y);
    // X breaks under `a`: the pool learns that a connection of this server broke.
    h.root_sql(0, &format!("KILL CONNECTION {x}")).await;
    let e = server_error(a.query_drop("SELECT 1").await.unwrap_err());
    assert!(matches!(e.0, 2013 | 9020), "{e:?}");
    // Then the server closes Y too, a moment after it was returned (as when a server dies
    // and its connections close one after another).
    h.root_sql(0, &format!("KILL CONNECTION {y}")).await;
    common::eventually("Y gone from the server", Duration::from_secs(5), || async {
        h.root_sql(
            0,
            &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {y}"),
        )
        .await
        .trim()
            == "0"
    })
    .await;
    // `b`'s next statement is not given the dead Y (it was returned less than the recheck
    // age ago, but before the break): it runs on a live connection.
    let y2 = thread_id(&mut b).await;
    assert_ne!(y2, y);
    still_serving(&h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn client_connection_limit_and_idle_timeout() {
    let h = Harness::start_with(0, |c| {
        c.proxy.max_client_connections = 2;
        c.proxy.client_idle_timeout_ms = 400;
    })
    .await;
    let a = h.proxy_conn().await;
    let mut b = h.proxy_conn().await;
    match mysql_async::Conn::new(h.proxy_opts()).await {
        Err(mysql_async::Error::Server(e)) => {
            // Sent in place of the greeting, without an SQL state, as MySQL does.
            assert_eq!((e.code, e.message.as_str()), (1040, "Too many connections"));
        }
        other => panic!("expected 1040, got {:?}", other.map(|_| ())),
    }
    a.disconnect().await.unwrap();
    // The freed place is taken as soon as the session has ended.
    common::eventually("a free client slot", Duration::from_secs(5), || {
        let opts = h.proxy_opts();
        async move {
            match mysql_async::Conn::new(opts).await {
                Ok(c) => {
                    let _ = c.disconnect().await;
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
    // A session silent for longer than client_idle_timeout_ms is closed.
    let v: Option<i64> = b.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    // A command after part of the limit: the session's idle timer fires before the limit
    // counted from this command, moves to it, and must still close the session then.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v: Option<i64> = b.query_first("SELECT 2").await.unwrap();
    assert_eq!(v, Some(2));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        b.query_drop("SELECT 1").await.is_err(),
        "the idle session was closed"
    );
    still_serving(&h).await;
    h.shutdown().await;
}
