//! TLS from Sluice to the servers: MariaDB configured with a certificate from a test CA
//! (rcgen), the application and monitor accounts altered to `REQUIRE SSL` so that nothing
//! works in clear text; a wrong CA, a wrong name, or a server without TLS fail closed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::certs::{self, TestPki};
use common::Harness;
use mysql_async::prelude::Queryable;
use sluice::backend::{connect, BackendError, LoginParams, Transport};
use sluice::config::BackendTlsConfig;

fn tls_spec(pki: &TestPki) -> sluice::sandbox::TopologySpec {
    let mut s = common::spec(1);
    s.extra_cnf = vec![
        format!("ssl_ca = {}", pki.ca.display()),
        format!("ssl_cert = {}", pki.cert.display()),
        format!("ssl_key = {}", pki.key.display()),
    ];
    s
}

fn backend_tls(ca: &Path, verify_name: bool, name: Option<&str>) -> BackendTlsConfig {
    BackendTlsConfig {
        ca: ca.display().to_string(),
        cert: None,
        key: None,
        verify_server_name: verify_name,
        server_name: name.map(str::to_string),
    }
}

fn params() -> LoginParams<'static> {
    common::app_login()
}

async fn try_connect(address: &str, cfg: BackendTlsConfig) -> Result<bool, BackendError> {
    let c = sluice::config::Config {
        backend_tls: Some(cfg),
        ..Default::default()
    };
    let tls = sluice::tls::backend_tls(&c).unwrap();
    let (conn, _) = connect(
        "db",
        address,
        params(),
        Duration::from_secs(5),
        Transport {
            tls: tls.as_deref(),
            compress: false,
        },
    )
    .await?;
    Ok(conn.is_tls())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_speaks_tls_to_the_servers_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = certs::make(dir.path(), "db");
    let other = certs::make(dir.path(), "other");
    let ca = pki.ca.clone();
    let h = Harness::start_spec(tls_spec(&pki), |c| {
        c.backend_tls = Some(backend_tls(&ca, true, None));
        // Accounts from the database too: read with the monitor login, over TLS.
        c.auth.source = sluice::config::AuthSource::Both;
        c.auth.lookup_interval_ms = 200;
    })
    .await;
    // From now on the accounts Sluice uses refuse plaintext logins.
    h.root_sql(
        0,
        "ALTER USER 'app'@'%' REQUIRE SSL; ALTER USER 'sluice_monitor'@'%' REQUIRE SSL",
    )
    .await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();

    // Through Sluice: reads (replica) and writes (primary) run on TLS connections.
    let mut c = h.proxy_conn().await;
    let cipher: Option<String> = c
        .query_first("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'")
        .await
        .unwrap();
    assert!(
        cipher.as_deref().is_some_and(|c| !c.is_empty()),
        "{cipher:?}"
    );
    c.query_drop("CREATE DATABASE IF NOT EXISTS btls")
        .await
        .unwrap();
    let on_primary: Option<String> = c
        .query_first("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher' FOR UPDATE")
        .await
        .unwrap();
    assert!(on_primary.is_some_and(|c| !c.is_empty()));
    // An account created now is read from the primary over TLS (the monitor login requires
    // it) and logs in through Sluice.
    h.root_sql(
        0,
        "CREATE USER 'tlsdb'@'%' IDENTIFIED BY 'tlsdb-pw' REQUIRE SSL; \
         GRANT SELECT ON *.* TO 'tlsdb'@'%'",
    )
    .await;
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    common::eventually(
        "the account read over TLS",
        Duration::from_secs(10),
        || async {
            let Ok(mut c) =
                mysql_async::Conn::new(h.opts(h.addr.port(), "tlsdb", "tlsdb-pw")).await
            else {
                return false;
            };
            let me: Option<String> = c.query_first("SELECT CURRENT_USER()").await.unwrap_or(None);
            me.as_deref() == Some("tlsdb@%")
        },
    )
    .await;
    // The monitor keeps probing over TLS (REQUIRE SSL): the servers stay healthy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = h.proxy.as_ref().unwrap().cluster.borrow().clone();
    assert!(view.servers.iter().all(|s| s.healthy), "{:?}", view.servers);

    // The data path directly: the right CA connects with TLS; a wrong CA, a wrong name and a
    // plaintext-only server fail with a clear error — never a plaintext fallback.
    let addr = h.primary_addr();
    assert!(try_connect(&addr, backend_tls(&pki.ca, true, None))
        .await
        .unwrap());
    match try_connect(&addr, backend_tls(&other.ca, true, None)).await {
        Err(BackendError::Tls(m)) => assert!(m.contains("UnknownIssuer"), "{m}"),
        r => panic!("a certificate from another CA was accepted: {r:?}"),
    }
    match try_connect(&addr, backend_tls(&pki.ca, true, Some("db.example"))).await {
        Err(BackendError::Tls(m)) => assert!(m.contains("not valid for name"), "{m}"),
        r => panic!("a certificate for another name was accepted: {r:?}"),
    }
    assert!(
        try_connect(&addr, backend_tls(&pki.ca, false, Some("db.example")))
            .await
            .unwrap(),
        "verify_server_name = false still verifies the chain and connects"
    );
    // A client certificate for accounts that require one (REQUIRE X509): without it the server
    // refuses the login; with [backend_tls] cert/key it succeeds.
    h.root_sql(
        0,
        "CREATE USER 'x509'@'%' IDENTIFIED BY 'x509-pw' REQUIRE X509; GRANT SELECT ON *.* TO 'x509'@'%'",
    )
    .await;
    let x509 = LoginParams {
        user: b"x509",
        secret: sluice::config::Secret::Password(b"x509-pw"),
        ..params()
    };
    let with_identity = |identity: bool| {
        let mut t = backend_tls(&pki.ca, true, None);
        if identity {
            t.cert = Some(pki.cert.display().to_string());
            t.key = Some(pki.key.display().to_string());
        }
        sluice::tls::backend_tls(&sluice::config::Config {
            backend_tls: Some(t),
            ..Default::default()
        })
        .unwrap()
    };
    let tls = with_identity(false);
    match connect("db", &addr, x509, Duration::from_secs(5), transport(&tls)).await {
        Err(BackendError::Refused(e)) => assert_eq!(e.code, 1045, "{e:?}"),
        r => panic!(
            "REQUIRE X509 without a client certificate: {:?}",
            r.map(|_| ())
        ),
    }
    let tls = with_identity(true);
    let (conn, _) = connect("db", &addr, x509, Duration::from_secs(5), transport(&tls))
        .await
        .expect("login with the client certificate");
    assert!(conn.is_tls());
    h.shutdown().await;

    let plain = sluice::sandbox::Topology::start(common::spec(0))
        .await
        .unwrap();
    match try_connect(&plain.nodes[0].address(), backend_tls(&pki.ca, true, None)).await {
        Err(BackendError::Tls(m)) => assert!(m.contains("does not offer TLS"), "{m}"),
        r => panic!("a server without TLS was used: {r:?}"),
    }
    // `tls = false` on a server: reached in clear text although [backend_tls] is set.
    let mut config = plain.proxy_config("127.0.0.1:0");
    config.backend_tls = Some(backend_tls(&pki.ca, true, None));
    config.servers[0].tls = Some(false);
    let proxy = sluice::server::start(std::sync::Arc::new(config))
        .await
        .unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(15)).await);
    let mut c = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(proxy.local_addr.port())
            .user(Some(common::USER))
            .pass(Some(common::PASSWORD))
            .prefer_socket(false),
    )
    .await
    .unwrap();
    let one: Option<u64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    drop(c);
    proxy.shutdown().await;
    drop(plain);
}

fn transport(tls: &Option<std::sync::Arc<sluice::tls::BackendTls>>) -> Transport<'_> {
    Transport {
        tls: tls.as_deref(),
        compress: false,
    }
}
