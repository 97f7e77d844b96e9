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
use tokio::io::AsyncReadExt;

/// Connects from `source` and returns the first packet's payload (greeting or ERR), or `None`
/// when the connection closed without one.
async fn first_packet(source: &str, to: SocketAddr) -> Option<Vec<u8>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an answer within 5 s")
        .ok()?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    assert_eq!(head[3], 0, "the first packet has sequence id 0");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_block_an_address_and_rates_are_limited() {
    let h = Harness::start_with(0, |c| {
        c.firewall.max_login_failures = 3;
        c.firewall.block_s = 600;
        c.firewall.connection_rate_per_source = 1;
        c.firewall.connection_burst_per_source = 8;
    })
    .await;
    let port = h.addr.port();
    // Three wrong passwords from 127.0.0.2, then even the right one is refused (1129) —
    // before any credential is read.
    let got = py_logins(port, "127.0.0.2", "app", &["x", "y", "z", "app-pw"]).await;
    assert_eq!(got, ["err 1045", "err 1045", "err 1045", "err 1129"]);
    let p = first_packet("127.0.0.2", h.addr).await.expect("an ERR");
    assert_eq!(err_code(&p), Some(1129));
    works(&h).await;
    let admin_port = h.proxy.as_ref().unwrap().admin_addr.unwrap().port();
    let mut a = Conn::new(h.opts(admin_port, "admin", sluice::sandbox::ADMIN_PASSWORD))
        .await
        .unwrap();
    let blocked: Vec<(String, u64, u64)> = a.query("SHOW BLOCKED HOSTS").await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].0, "127.0.0.2");
    assert_eq!(blocked[0].2, 3);
    a.query_drop("FLUSH HOSTS").await.unwrap();
    let got = py_logins(port, "127.0.0.2", "app", &["app-pw"]).await;
    assert_eq!(got, ["ok"], "FLUSH HOSTS lifts the block");

    // A successful login resets the count: 2 failures, a success, 2 failures: not blocked.
    let got = py_logins(
        port,
        "127.0.0.4",
        "app",
        &["x", "x", "app-pw", "x", "x", "app-pw"],
    )
    .await;
    assert_eq!(got[5], "ok", "{got:?}");

    // 1 new connection per second with a burst of 8: a quick ninth from 127.0.0.3 is refused
    // with 9040 (127.0.0.2 and .4 spent theirs above; 127.0.0.1 is unaffected).
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
