//! Client-side TLS: real clients (`mysql_async` with rustls, PyMySQL, the `mariadb` CLI)
//! connect with TLS and verify Sluice's certificate against a test CA; `require = true`
//! refuses plaintext logins before reading credentials (raw socket test, and a
//! man-in-the-middle that strips `CLIENT_SSL` from the greeting); a renewed certificate is
//! picked up by RELOAD without dropping sessions.

mod common;

use std::path::Path;
use std::time::Duration;

use common::certs::{self, TestPki};
use common::raw::RawConn;
use common::{python_with_pymysql, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use sluice::config::ProxyTlsConfig;
use sluice_proto::flags::cap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_opts(h: &Harness, ca: &Path) -> OptsBuilder {
    h.proxy_opts().ssl_opts(Some(
        SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]),
    ))
}

fn with_tls(pki: &TestPki, require: bool) -> impl FnOnce(&mut sluice::config::Config) {
    let tls = ProxyTlsConfig {
        cert: pki.cert.display().to_string(),
        key: pki.key.display().to_string(),
        require,
    };
    move |c| c.proxy.tls = Some(tls)
}

/// The TLS column of SHOW SESSIONS for every session.
async fn session_tls(h: &Harness) -> Vec<Option<String>> {
    let rows: Vec<mysql_async::Row> = h.admin_conn().await.query("SHOW SESSIONS").await.unwrap();
    rows.into_iter()
        .map(|r| r.get::<Option<String>, _>("tls").flatten())
        .collect()
}

async fn python(script: &str) -> String {
    let out = tokio::process::Command::new(python_with_pymysql())
        .args(["-c", script])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_with_tls_and_verify_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "one");
    let h = Harness::start_with(1, with_tls(&pki, false)).await;
    let port = h.addr.port();

    // mysql_async (rustls), verifying against the CA.
    let mut c = Conn::new(tls_opts(&h, &pki.ca)).await.expect("TLS login");
    let v: Option<u64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    let tls = session_tls(&h).await;
    assert_eq!(tls.len(), 1);
    let shown = tls[0].clone().expect("the session shows TLS");
    assert!(shown.starts_with("TLSv1_"), "{shown}");

    // Plaintext still allowed without `require`.
    let mut plain = h.proxy_conn().await;
    let _: Option<u64> = plain.query_first("SELECT 1").await.unwrap();
    assert!(session_tls(&h).await.contains(&None));

    // PyMySQL: its socket is a TLS socket with a cipher.
    let ca = pki.ca.display();
    let out = python(&format!(
        "import pymysql, ssl\n\
         c = pymysql.connect(host='127.0.0.1', port={port}, user='app', password='app-pw', ssl_ca='{ca}', ssl_verify_cert=True, ssl_verify_identity=True)\n\
         cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchone()[0])\n\
         print(isinstance(c._sock, ssl.SSLSocket), c._sock.cipher()[0], c._sock.version())\n"
    ))
    .await;
    assert!(out.starts_with("1\nTrue "), "{out}");
    assert!(out.contains("TLSv1."), "{out}");

    // The mariadb CLI verifying the server certificate; `\s` reports the cipher.
    let out = tokio::process::Command::new(common::cli_binary())
        .args(["--no-defaults", "--protocol=tcp", "-h127.0.0.1"])
        .arg(format!("-P{port}"))
        .args(["-uapp", "-papp-pw", "--ssl", "--ssl-verify-server-cert"])
        .arg(format!("--ssl-ca={ca}"))
        .args(["-e", "\\s"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Cipher in use is"), "{stdout}");

    // A client that trusts another CA refuses Sluice's certificate.
    let other = certs::make(dir.path(), "other");
    assert!(Conn::new(tls_opts(&h, &other.ca)).await.is_err());

    drop(c);
    drop(plain);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let one = certs::make(dir.path(), "one");
    let two = certs::make(dir.path(), "two");
    let topo = sluice::sandbox::Topology::start(common::spec(0))
        .await
        .expect("topology");
    std::fs::copy(&one.cert, dir.path().join("cert.pem")).unwrap();
    std::fs::copy(&one.key, dir.path().join("key.pem")).unwrap();
    let path = dir.path().join("sluice.toml");
    // `[proxy.tls]` right after the `[proxy]` keys (the first block).
    let text = topo
        .config_toml("127.0.0.1:0")
        .replace("[admin]\n", "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let (head, rest) = text.split_once("\n\n").unwrap();
    let text = format!(
        "{head}\n\n[proxy.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nrequire = true\n\n{rest}\n[metrics]\nlisten = \"\"\n"
    );
    std::fs::write(&path, &text).unwrap();
    let config = sluice::config::Config::load(&path).expect("valid config");
    let proxy = sluice::server::start(std::sync::Arc::new(config))
        .await
        .unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(15)).await);
    let opts = |ca: &Path| {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(proxy.local_addr.port())
            .user(Some("app"))
            .pass(Some("app-pw"))
            .prefer_socket(false)
            .ssl_opts(Some(
                SslOpts::default().with_root_certs(vec![ca.to_path_buf().into()]),
            ))
    };
    let mut old = Conn::new(opts(&one.ca))
        .await
        .expect("TLS with the first CA");
    assert!(Conn::new(opts(&two.ca)).await.is_err());

    std::fs::copy(&two.cert, dir.path().join("cert.pem")).unwrap();
    std::fs::copy(&two.key, dir.path().join("key.pem")).unwrap();
    let mut a = Conn::new(
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(proxy.admin_addr.unwrap().port())
            .user(Some("admin"))
            .pass(Some(sluice::sandbox::ADMIN_PASSWORD))
            .prefer_socket(false),
    )
    .await
    .unwrap();
    a.query_drop("RELOAD").await.expect("reload");
    let mut new = Conn::new(opts(&two.ca))
        .await
        .expect("TLS with the renewed certificate");
    assert!(Conn::new(opts(&one.ca)).await.is_err());
    let _: Option<u64> = new.query_first("SELECT 1").await.unwrap();
    let _: Option<u64> = old
        .query_first("SELECT 1")
        .await
        .expect("the old session lives on");

    // A broken key is refused whole; the renewed certificate stays in force.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    match a.query_drop("RELOAD").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9031);
            assert!(e.message.contains("key.pem"), "{}", e.message);
        }
        other => panic!("a broken key must be refused: {other:?}"),
    }
    Conn::new(opts(&two.ca))
        .await
        .expect("the certificate in force is unchanged");
    proxy.shutdown().await;
    drop(topo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_plaintext_before_reading_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "one");
    let h = Harness::start_with(0, with_tls(&pki, true)).await;
    let port = h.addr.port();

    // The greeting offers TLS; a plaintext response with the right password is refused with
    // 3159 and nothing else.
    let (c, reply) = RawConn::login(port, "app", "app-pw", 0).await;
    assert_ne!(c.handshake.capabilities & cap::CLIENT_SSL, 0);
    assert_eq!(reply[0], 0xFF);
    assert_eq!(u16::from_le_bytes([reply[1], reply[2]]), 3159, "{reply:?}");

    // Its body is not even parsed: garbage after the capability flags gets the same 3159
    // (a parsed response would have been 1043 "bad handshake").
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.unwrap();
    let mut greeting = vec![0u8; usize::from(head[0]) | usize::from(head[1]) << 8];
    s.read_exact(&mut greeting).await.unwrap();
    let caps = (cap::CLIENT_PROTOCOL_41 | cap::CLIENT_SECURE_CONNECTION) as u32;
    let mut body = caps.to_le_bytes().to_vec();
    body.extend_from_slice(&[0xA5; 60]);
    let mut pkt = vec![body.len() as u8, 0, 0, 1];
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u16::from_le_bytes([reply[5], reply[6]]), 3159, "{reply:?}");

    // A man in the middle strips CLIENT_SSL from the greeting: the client then logs in in
    // clear text — and Sluice refuses it, so no password crosses in the clear successfully.
    let mitm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_port = mitm.local_addr().unwrap().port();
    let target = h.addr;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = mitm.accept().await {
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                let mut head = [0u8; 4];
                server.read_exact(&mut head).await.unwrap();
                let len = usize::from(head[0]) | usize::from(head[1]) << 8;
                let mut g = vec![0u8; len];
                server.read_exact(&mut g).await.unwrap();
                // version string, then connection id (4), salt (8), filler (1), caps low (2).
                let at = g.iter().position(|&b| b == 0).unwrap() + 1 + 4 + 8 + 1;
                let low = u16::from_le_bytes([g[at], g[at + 1]]) & !(cap::CLIENT_SSL as u16);
                g[at..at + 2].copy_from_slice(&low.to_le_bytes());
                client.write_all(&head).await.unwrap();
                client.write_all(&g).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let mitm_opts = h.opts(mitm_port, "app", "app-pw");
    match Conn::new(mitm_opts).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 3159, "{e:?}"),
        other => panic!(
            "a stripped greeting let a plaintext login through: {:?}",
            other.map(|_| ())
        ),
    }
    let out = python(&format!(
        "import pymysql\n\
         try:\n    pymysql.connect(host='127.0.0.1', port={mitm_port}, user='app', password='app-pw')\n    print('logged in')\n\
         except pymysql.err.MySQLError as e:\n    print('err', e.args[0])\n"
    ))
    .await;
    assert_eq!(out.trim(), "err 3159");

    // With TLS, the same user logs in.
    let mut c = Conn::new(tls_opts(&h, &pki.ca)).await.expect("TLS login");
    let _: Option<u64> = c.query_first("SELECT 1").await.unwrap();
    h.shutdown().await;
}
