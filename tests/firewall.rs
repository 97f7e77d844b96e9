//! The firewall against real clients from two loopback source addresses (127.0.0.1 and
//! 127.0.0.2..4): address lists, per-user address lists and session limits, blocking after
//! failed logins, per-source connection rates. Each refusal carries its documented error code
//! and leaves other clients working.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{python_with_pymysql, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connects from `source` and reads the first packet's payload (`None` when the connection
/// closed without one), keeping the socket.
async fn first_packet_on(source: &str, to: SocketAddr) -> (tokio::net::TcpStream, Option<Vec<u8>>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let mut head = [0u8; 4];
    let got = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an answer within 5 s");
    if got.is_err() {
        return (s, None);
    }
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    assert_eq!(head[3], 0, "the first packet has sequence id 0");
    let mut body = vec![0u8; len];
    let body = s.read_exact(&mut body).await.ok().map(|_| body);
    (s, body)
}

/// Connects from `source` and returns the first packet's payload (greeting or ERR), or `None`
/// when the connection closed without one.
async fn first_packet(source: &str, to: SocketAddr) -> Option<Vec<u8>> {
    let (mut s, body) = first_packet_on(source, to).await;
    let body = body?;
    if body[0] == 0xFF {
        // Refused: nothing follows, the connection closes.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "bytes after a refusal");
    }
    Some(body)
}

fn err_code(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xFF)).then(|| u16::from_le_bytes([p[1], p[2]]))
}

/// Logs in with PyMySQL from `source`; returns "ok" or "err CODE" per attempt.
async fn py_logins(port: u16, source: &str, user: &str, passwords: &[&str]) -> Vec<String> {
    let list = passwords
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let py = format!(
        "import pymysql\n\
         for pw in [{list}]:\n\
         \x20   try:\n\
         \x20       c = pymysql.connect(host='127.0.0.1', port={port}, user='{user}', password=pw, bind_address='{source}', connect_timeout=5)\n\
         \x20       c.cursor().execute('SELECT 1')\n\
         \x20       c.close()\n\
         \x20       print('ok')\n\
         \x20   except pymysql.err.MySQLError as e:\n\
         \x20       print('err', e.args[0])\n"
    );
    let out = tokio::process::Command::new(python_with_pymysql())
        .args(["-c", &py])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

async fn works(h: &Harness) {
    let mut c = h.proxy_conn().await;
    let one: Option<u64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists_and_per_user_rules() {
    let h = Harness::start_with(0, |c| {
        c.firewall.allow = vec!["127.0.0.0/8".into()];
        c.firewall.deny = vec!["127.0.0.2".into()];
        let other = c.users.iter_mut().find(|u| u.name == "other").unwrap();
        other.allow = vec!["127.0.0.1/32".into()];
        other.max_connections = 2;
    })
    .await;
    // Denied before any greeting: only an ERR 1130, then the connection closes.
    let p = first_packet("127.0.0.2", h.addr).await.expect("an ERR");
    assert_eq!(err_code(&p), Some(1130), "{p:?}");
    assert!(String::from_utf8_lossy(&p).contains("127.0.0.2"));
    // Another address in `allow` gets the greeting.
    let p = first_packet("127.0.0.3", h.addr).await.expect("a greeting");
    assert_eq!(p[0], 10, "protocol version 10 greeting");
    works(&h).await;

    // Per user: `other` may come only from 127.0.0.1; from 127.0.0.3 it looks like a bad
    // password (1045), while `app` logs in from there.
    let got = py_logins(h.addr.port(), "127.0.0.3", "other", &["other-pw"]).await;
    assert_eq!(got, ["err 1045"]);
    let got = py_logins(h.addr.port(), "127.0.0.3", "app", &["app-pw"]).await;
    assert_eq!(got, ["ok"]);

    // `other` may hold 2 sessions: the third gets 1203; others are unaffected; a slot frees
    // when a session ends.
    let other = h.opts(h.addr.port(), "other", "other-pw");
    let a = Conn::new(other.clone()).await.unwrap();
    let mut b = Conn::new(other.clone()).await.unwrap();
    match Conn::new(other.clone()).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1203, "{e:?}");
            assert_eq!(e.state, "42000");
        }
        r => panic!("a third session was allowed: {:?}", r.map(|_| ())),
    }
    works(&h).await;
    let _: Option<u64> = b.query_first("SELECT 1").await.unwrap();
    a.disconnect().await.unwrap();
    let mut c = None;
    for _ in 0..50 {
        if let Ok(conn) = Conn::new(other.clone()).await {
            c = Some(conn);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.is_some(), "the freed slot was not given back");
    h.shutdown().await;
}

/// Connects from `source`, reads the greeting and answers it with a packet that is not a
/// handshake response: a malformed handshake (one of MySQL's "connect errors").
async fn malformed_handshake(source: &str, to: SocketAddr) {
    let (mut s, body) = first_packet_on(source, to).await;
    let body = body.expect("a greeting");
    assert_ne!(body.first(), Some(&0xFF), "refused before the handshake");
    // A 2-byte payload where a HandshakeResponse41 belongs.
    s.write_all(&[2, 0, 0, 1, 0x01, 0x02]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
}

/// Wrong passwords never block an address (they are throttled per user and address);
/// malformed or interrupted handshakes do, after `max_connect_errors` in a row, as in MySQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_throttled_and_broken_handshakes_block() {
    let h = Harness::start_with(0, |c| {
        c.firewall.max_connect_errors = 3;
        c.firewall.block_s = 600;
        c.firewall.login_throttle_max_ms = 200;
    })
    .await;
    let port = h.addr.port();
    // Twelve wrong passwords for `app` from 127.0.0.2: each gets 1045, and the right one
    // then gets in — and so does another user from the same address.
    let mut tries: Vec<&str> = vec!["wrong"; 12];
    tries.push("app-pw");
    let got = py_logins(port, "127.0.0.2", "app", &tries).await;
    let mut want = vec!["err 1045".to_string(); 12];
    want.push("ok".into());
    assert_eq!(got, want);
    let got = py_logins(port, "127.0.0.2", "other", &["other-pw"]).await;
    assert_eq!(got, ["ok"], "another user from the same address");
    // The answers from the fourth on were delayed: counted, and the address is not blocked.
    let metrics = h.proxy.as_ref().unwrap().metrics_addr.unwrap();
    let body = sluice::metrics::http::get(&metrics.to_string(), "/metrics", Duration::from_secs(3))
        .unwrap()
        .1;
    let throttled: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("sluice_login_throttled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throttle counter in:\n{body}"));
    assert_eq!(throttled, 9, "wrong passwords 4..=12 were throttled");
    let admin_port = h.proxy.as_ref().unwrap().admin_addr.unwrap().port();
    let mut a = Conn::new(h.opts(admin_port, "admin", sluice::sandbox::ADMIN_PASSWORD))
        .await
        .unwrap();
    let blocked: Vec<(String, u64, u64)> = a.query("SHOW BLOCKED HOSTS").await.unwrap();
    assert!(blocked.is_empty(), "{blocked:?}");

    // Three malformed handshakes from 127.0.0.2: then even a good login is refused (1129),
    // before any credential is read.
    for _ in 0..3 {
        malformed_handshake("127.0.0.2", h.addr).await;
    }
    let p = first_packet("127.0.0.2", h.addr).await.expect("an ERR");
    assert_eq!(err_code(&p), Some(1129));
    let got = py_logins(port, "127.0.0.2", "app", &["app-pw"]).await;
    assert_eq!(got, ["err 1129"]);
    works(&h).await;
    let blocked: Vec<(String, u64, u64)> = a.query("SHOW BLOCKED HOSTS").await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].0, "127.0.0.2");
    assert_eq!(blocked[0].2, 3);
    a.query_drop("FLUSH HOSTS").await.unwrap();
    let got = py_logins(port, "127.0.0.2", "app", &["app-pw"]).await;
    assert_eq!(got, ["ok"], "FLUSH HOSTS lifts the block");

    // A successful login resets the count: 2 errors, a success, 2 errors: not blocked.
    for _ in 0..2 {
        malformed_handshake("127.0.0.4", h.addr).await;
    }
    assert_eq!(
        py_logins(port, "127.0.0.4", "app", &["app-pw"]).await,
        ["ok"]
    );
    for _ in 0..2 {
        malformed_handshake("127.0.0.4", h.addr).await;
    }
    assert_eq!(
        py_logins(port, "127.0.0.4", "app", &["app-pw"]).await,
        ["ok"]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_source_are_rate_limited() {
    let h = Harness::start_with(0, |c| {
        c.firewall.connection_rate_per_source = 1;
        c.firewall.connection_burst_per_source = 8;
    })
    .await;
    // 1 new connection per second with a burst of 8: a quick ninth from 127.0.0.3 is refused
    // with 9040 (127.0.0.1 is unaffected).
    let mut codes = Vec::new();
    for _ in 0..9 {
        let p = first_packet("127.0.0.3", h.addr).await.expect("a packet");
        codes.push(err_code(&p));
    }
    assert_eq!(codes[..8], [None; 8], "{codes:?}");
    assert_eq!(codes[8], Some(9040), "{codes:?}");
    works(&h).await;
    h.shutdown().await;
}
