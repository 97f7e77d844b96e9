//! Client authentication plugins: caching_sha2_password (fast path, verified by Sluice) and
//! mysql_native_password, per user, with AuthSwitch when the client answers with another
//! plugin; through PyMySQL, mysql_async and a raw client that checks the bytes.

mod common;

use common::raw::CLIENT_CAPS;
use common::{python_with_pymysql, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::{ChangeUserOpts, Conn};
use sluice_proto::flags::cap;
use sluice_proto::framing::Packet;
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::sha2_token;

async fn pymysql_login(port: u16, user: &str, password: &str) -> String {
    let py = format!(
        "import pymysql\n\
         try:\n\
         \x20   c = pymysql.connect(host='127.0.0.1', port={port}, user='{user}', password='{password}')\n\
         \x20   cur = c.cursor(); cur.execute('SELECT CURRENT_USER()'); print('ok', cur.fetchone()[0])\n\
         except pymysql.err.MySQLError as e:\n\
         \x20   print('err', e.args[0])\n"
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn current_user(c: &mut Conn) -> String {
    c.query_first::<String, _>("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_through_an_auth_switch_and_change_user() {
    // `app` may use only caching_sha2_password; the greeting names mysql_native_password,
    // so clients are switched.
    let h = Harness::start_with(0, |c| {
        let app = c.users.iter_mut().find(|u| u.name == "app").unwrap();
        app.auth_plugins = vec!["caching_sha2_password".into()];
    })
    .await;
    let port = h.addr.port();
    assert!(pymysql_login(port, "app", "app-pw")
        .await
        .starts_with("ok app@"));
    assert_eq!(pymysql_login(port, "app", "wrong").await, "err 1045");
    let mut c = h.proxy_conn().await;
    assert!(current_user(&mut c).await.starts_with("app@"));
    // COM_CHANGE_USER from a native user to the sha2-only one and back.
    let mut o = Conn::new(h.opts(port, "other", "other-pw")).await.unwrap();
    o.change_user(
        ChangeUserOpts::default()
            .with_user(Some("app".into()))
            .with_pass(Some("app-pw".into())),
    )
    .await
    .expect("change_user to a caching_sha2_password user");
    assert!(current_user(&mut o).await.starts_with("app@"));
    let bad = o
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("nope".into())),
        )
        .await;
    assert!(bad.is_err());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_as_the_greeting_plugin() {
    let h = Harness::start_with(0, |c| {
        c.proxy.default_auth_plugin = "caching_sha2_password".into();
        let other = c.users.iter_mut().find(|u| u.name == "other").unwrap();
        other.auth_plugins = vec!["mysql_native_password".into()];
    })
    .await;
    let port = h.addr.port();
    // Clients answer the greeting with a caching_sha2_password token: no switch.
    assert!(pymysql_login(port, "app", "app-pw")
        .await
        .starts_with("ok app@"));
    let mut c = h.proxy_conn().await;
    assert!(current_user(&mut c).await.starts_with("app@"));
    // A native-only user answering with sha2 is switched to native.
    assert!(pymysql_login(port, "other", "other-pw")
        .await
        .starts_with("ok other@"));
    let mut o = Conn::new(h.opts(port, "other", "other-pw")).await.unwrap();
    assert!(current_user(&mut o).await.starts_with("other@"));
    // An empty password.
    assert!(pymysql_login(port, "nopw", "")
        .await
        .starts_with("ok nopw@"));

    // The bytes: greeting names caching_sha2_password; the right token gets 0x01 0x03, then
    // OK; a wrong one gets ERR 1045 and no fast-auth packet.
    for (password, good) in [("app-pw", true), ("bad", false)] {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let hello = read(&mut s, &mut buf).await;
        let g = HandshakeV10::parse(&hello.payload).unwrap();
        assert_eq!(g.auth_plugin, b"caching_sha2_password");
        let resp = HandshakeResponse41 {
            capabilities: CLIENT_CAPS & g.capabilities & 0xFFFF_FFFF | cap::CLIENT_PLUGIN_AUTH,
            max_packet: 1 << 24,
            charset: 45,
            username: b"app".to_vec(),
            auth_response: sha2_token(password.as_bytes(), &g.auth_data[..20]),
            database: None,
            auth_plugin: Some(b"caching_sha2_password".to_vec()),
            connect_attrs: None,
            zstd_level: None,
        };
        let mut out = bytes::BytesMut::new();
        sluice_proto::framing::write_packet(&mut out, 1, &resp.encode());
        tokio::io::AsyncWriteExt::write_all(&mut s, &out)
            .await
            .unwrap();
        let p = read(&mut s, &mut buf).await;
        if good {
            assert_eq!((p.last_seq, &p.payload[..]), (2, &[0x01, 0x03][..]));
            let ok = read(&mut s, &mut buf).await;
            assert_eq!((ok.last_seq, ok.payload[0]), (3, 0x00));
        } else {
            assert_eq!(p.payload[0], 0xFF);
            assert_eq!(u16::from_le_bytes([p.payload[1], p.payload[2]]), 1045);
        }
    }
    h.shutdown().await;
}

async fn read(s: &mut tokio::net::TcpStream, buf: &mut bytes::BytesMut) -> Packet {
    use sluice_proto::framing;
    loop {
        if let Ok(ext) = framing::check(buf, 1 << 24) {
            return framing::parse(buf, ext);
        }
        let n = tokio::io::AsyncReadExt::read_buf(s, buf).await.unwrap();
        assert!(n > 0, "closed");
    }
}

/// The user a backend connection runs as (`CURRENT_USER()`).
/// A Sluice whose users may use only caching_sha2_password and whose greeting names it — what
/// a MySQL 8.4 server with default accounts asks of a client; `tweak` adds to its config.
async fn sha2_only_server(tweak: impl FnOnce(&mut sluice::config::Config)) -> Harness {
    Harness::start_with(0, |c| {
        c.proxy.default_auth_plugin = "caching_sha2_password".into();
        for u in &mut c.users {
            u.auth_plugins = vec!["caching_sha2_password".into()];
        }
        tweak(c);
    })
    .await
}

/// Whether `name` passed a full authentication on `server` (it is in its caching_sha2 cache).
fn sha2_cached(server: &Harness, name: &str) -> bool {
    let u = server.config.find_user(name.as_bytes()).unwrap().clone();
    server
        .proxy
        .as_ref()
        .unwrap()
        .shared
        .sha2_cache
        .contains(&u)
}

async fn backend_user(conn: &mut sluice::backend::BackendConn) -> String {
    let row = conn
        .control_row(b"\x03SELECT CURRENT_USER()")
        .await
        .expect("query")
        .expect("a row");
    String::from_utf8(row[0].clone().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_logs_in_to_a_server_that_demands_caching_sha2() {
    use sluice::backend::{connect, BackendError, LoginParams, Transport};
    use sluice::config::Secret;
    use std::time::Duration;
    // The server: a Sluice whose users may use only caching_sha2_password and whose greeting
    // names it — what a MySQL 8.4 server with default accounts asks of a client (no MySQL
    // server runs on these machines). Sluice's backend login must follow its AuthSwitch and
    // the fast-path AuthMoreData — and, over TLS, the full authentication the server asks
    // for a user not yet in its cache.
    let dir = tempfile::tempdir().unwrap();
    let pki = common::certs::make(dir.path(), "sha2");
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let server = sha2_only_server(|c| {
        c.proxy.tls = Some(sluice::config::ProxyTlsConfig {
            cert,
            key,
            require: false,
        });
    })
    .await;
    let addr = server.addr.to_string();
    let cached = |name: &str| sha2_cached(&server, name);
    // Over TLS, `other` is not in the server's cache: full authentication, the password sent
    // inside TLS; then cached.
    let tls_config = sluice::config::Config {
        backend_tls: Some(sluice::config::BackendTlsConfig {
            ca: pki.ca.display().to_string(),
            cert: None,
            key: None,
            verify_server_name: true,
            server_name: None,
        }),
        ..Default::default()
    };
    let tls = sluice::tls::backend_tls(&tls_config).unwrap();
    assert!(!cached("other"));
    let (mut conn, _) = connect(
        "sha2",
        &addr,
        LoginParams {
            user: b"other",
            secret: Secret::Password(b"other-pw"),
            database: None,
            capabilities: u64::from(u32::MAX),
            charset: 45,
            max_packet: 1 << 24,
            connect_attrs: None,
        },
        Duration::from_secs(5),
        Transport {
            tls: tls.as_deref(),
            compress: false,
        },
    )
    .await
    .expect("full authentication over TLS");
    assert!(conn.is_tls());
    assert!(backend_user(&mut conn).await.starts_with("other@"));
    assert!(
        cached("other"),
        "the full authentication put the user in the cache"
    );
    // mysql_async does the same client side (full authentication over TLS, for `app`).
    assert!(!cached("app"));
    let ssl = mysql_async::SslOpts::default().with_root_certs(vec![pki.ca.clone().into()]);
    let mut c = Conn::new(
        server
            .opts(server.addr.port(), "app", "app-pw")
            .ssl_opts(Some(ssl)),
    )
    .await
    .expect("mysql_async: full authentication over TLS");
    assert!(current_user(&mut c).await.starts_with("app@"));
    c.disconnect().await.unwrap();
    assert!(cached("app"));
    let params = |user: &'static [u8], secret| LoginParams {
        user,
        secret,
        database: None,
        capabilities: u64::from(u32::MAX),
        charset: 45,
        max_packet: 1 << 24,
        connect_attrs: None,
    };
    let t = Duration::from_secs(5);
    let (mut conn, _) = connect(
        "sha2",
        &addr,
        params(b"app", Secret::Password(b"app-pw")),
        t,
        Transport::default(),
    )
    .await
    .expect("login through a caching_sha2 AuthSwitch");
    assert!(backend_user(&mut conn).await.starts_with("app@"));
    // COM_CHANGE_USER on that connection: switched to caching_sha2 again.
    let cu = sluice_proto::command::ChangeUser {
        username: b"other".to_vec(),
        auth_response: Vec::new(),
        database: Vec::new(),
        charset: Some(45),
        auth_plugin: None,
        connect_attrs: None,
    };
    conn.change_user(&cu, Secret::Password(b"other-pw"))
        .await
        .expect("change user through a caching_sha2 AuthSwitch");
    assert!(backend_user(&mut conn).await.starts_with("other@"));
    // A wrong password is the server's refusal, forwarded as is.
    match connect(
        "sha2",
        &addr,
        params(b"app", Secret::Password(b"nope")),
        t,
        Transport::default(),
    )
    .await
    {
        Err(BackendError::Refused(e)) => assert_eq!(e.code, 1045),
        r => panic!("wrong password: {:?}", r.map(|_| ())),
    }
    // An account read from the database has no password to make a caching_sha2 token from:
    // a clear error, not a wrong-password refusal.
    let stage1 = [7u8; 20];
    match connect(
        "sha2",
        &addr,
        params(b"app", Secret::Stage1(&stage1)),
        t,
        Transport::default(),
    )
    .await
    {
        Err(BackendError::AuthPlugin(p)) => assert!(p.contains("caching_sha2"), "{p}"),
        r => panic!("derived credential: {:?}", r.map(|_| ())),
    }

    // The whole data path: a Sluice in front of it (its monitor and sessions log in through
    // the same code), a client through both.
    let mut config = server.config.as_ref().clone();
    config.proxy.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.metrics.listen = "127.0.0.1:0".into();
    config.proxy.default_auth_plugin = "mysql_native_password".into();
    config.servers.truncate(1);
    config.servers[0].address = addr.clone();
    config.monitor.user = Some("app".into());
    config.monitor.password = Some("app-pw".into());
    for u in &mut config.users {
        u.auth_plugins.clear();
    }
    let front = sluice::server::start(std::sync::Arc::new(config))
        .await
        .expect("start the front Sluice");
    assert!(
        front.wait_ready(Duration::from_secs(15)).await,
        "the front Sluice's monitor did not log in through caching_sha2"
    );
    let mut c = Conn::new(server.opts(front.local_addr.port(), "app", "app-pw"))
        .await
        .expect("a client through both");
    assert!(current_user(&mut c).await.starts_with("app@"));
    c.query_drop("CREATE DATABASE IF NOT EXISTS chain")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    front.shutdown().await;
    server.shutdown().await;
}

/// caching_sha2_password's full authentication on a link without TLS: the RSA exchange, both
/// halves by real code — Sluice's backend login asks the server for its public key and sends
/// the password encrypted with it, against a Sluice whose client side has
/// `[proxy] rsa_private_key` (as a MySQL server for a user not yet in its cache); and
/// mysql_async does the same exchange with that Sluice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_full_authentication_without_tls_uses_the_servers_rsa_key() {
    use sluice::backend::{connect, BackendError, LoginParams, Transport};
    use sluice::config::Secret;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let key = common::certs::rsa_key(dir.path());
    let key_path = key.display().to_string();
    let server = sha2_only_server(|c| c.proxy.rsa_private_key = key_path).await;
    let addr = server.addr.to_string();
    let cached = |name: &str| sha2_cached(&server, name);
    let params = |user: &'static [u8], secret| LoginParams {
        user,
        secret,
        database: None,
        capabilities: u64::from(u32::MAX),
        charset: 45,
        max_packet: 1 << 24,
        connect_attrs: None,
    };
    let t = Duration::from_secs(5);
    // Not in the cache, plaintext: full authentication by the RSA exchange.
    assert!(!cached("other"));
    let (mut conn, _) = connect(
        "sha2",
        &addr,
        params(b"other", Secret::Password(b"other-pw")),
        t,
        Transport::default(),
    )
    .await
    .expect("full authentication with the server's RSA key");
    assert!(!conn.is_tls());
    assert!(backend_user(&mut conn).await.starts_with("other@"));
    assert!(
        cached("other"),
        "the login went through the full authentication"
    );
    // A wrong password is refused (by the scramble, before any RSA).
    match connect(
        "sha2",
        &addr,
        params(b"app", Secret::Password(b"not-app-pw")),
        t,
        Transport::default(),
    )
    .await
    {
        Err(BackendError::Refused(e)) => assert_eq!(e.code, 1045),
        other => panic!("a wrong password logged in: {:?}", other.map(|_| ())),
    }
    assert!(!cached("app"));
    // mysql_async, plaintext, `app` not cached: it asks for the public key, encrypts, logs in.
    let mut c = Conn::new(server.opts(server.addr.port(), "app", "app-pw"))
        .await
        .expect("mysql_async: full authentication with the RSA key");
    assert!(current_user(&mut c).await.starts_with("app@"));
    c.disconnect().await.unwrap();
    assert!(cached("app"));
    // A bad key file is a configuration error naming the key.
    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[proxy]\nrsa_private_key = \"bad.pem\"\n[[servers]]\nname = \"db1\"\naddress = \"127.0.0.1:1\"\n[[users]]\nname = \"a\"\npassword = \"b\"\n",
    )
    .unwrap();
    let err = sluice::config::Config::load(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("proxy.rsa_private_key") && err.contains("bad.pem"),
        "{err}"
    );
}
