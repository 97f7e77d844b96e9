//! A hostile (or broken) server: a relay in front of the real primary forges answers — a LOCAL
//! INFILE request in answer to a SELECT, a column count of 2^64−1, a wrong sequence id, a
//! packet cut short. The client gets an error, the backend connection is dropped, Sluice keeps
//! serving everyone else; and a prepared-statement flood is bounded per session.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::hostile::HostileRelay;
use common::python_with_pymysql;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_server_answers_never_reach_or_break_anyone_else() {
    common::init_tracing();
    let topo = sluice::sandbox::Topology::start(common::spec(0))
        .await
        .expect("topology");
    let relay = HostileRelay::start(topo.nodes[0].address()).await;
    let mut config = topo.proxy_config("127.0.0.1:0");
    config.servers[0].address = relay.addr.to_string();
    config.proxy.max_prepared_statements_per_session = 50;
    let proxy = sluice::server::start(Arc::new(config)).await.unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(15)).await);
    let port = proxy.local_addr.port();
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(common::USER))
        .pass(Some(common::PASSWORD))
        .prefer_socket(false);
    // A bystander session that must keep working throughout.
    let mut bystander = Conn::new(opts.clone()).await.unwrap();

    for (marker, expect) in [
        ("EVIL-INFILE", Some(9003u16)),
        ("EVIL-LENENC", Some(9003)),
        ("EVIL-SEQ", Some(9003)),
        ("EVIL-SHORT", None),
    ] {
        let mut victim = Conn::new(opts.clone()).await.unwrap();
        let r = victim.query_drop(format!("SELECT '{marker}'")).await;
        match (r, expect) {
            (Err(mysql_async::Error::Server(e)), Some(code)) => {
                assert_eq!(e.code, code, "{marker}: {e:?}");
                assert!(e.message.contains("malformed"), "{marker}: {}", e.message);
            }
            (Err(_), None) => {}
            (other, _) => panic!("{marker}: the forged answer was not refused: {other:?}"),
        }
        let one: Option<u64> = bystander.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1), "after {marker}");
        let mut fresh = Conn::new(opts.clone()).await.unwrap();
        let _: Option<u64> = fresh.query_first("SELECT 1").await.unwrap();
    }

    // A client that enabled local files (PyMySQL local_infile=True) still gets an error, and
    // its file is never asked for: the 0xFB request never reaches it.
    let py = format!(
        "import pymysql\n\
         c = pymysql.connect(host='127.0.0.1', port={port}, user='app', password='app-pw', local_infile=True)\n\
         try:\n    c.cursor().execute(\"SELECT 'EVIL-INFILE'\")\n    print('no error')\n\
         except pymysql.err.MySQLError as e:\n    print('err', e.args[0])\n"
    );
    let out = tokio::process::Command::new(python_with_pymysql())
        .args(["-c", &py])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "err 9003",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Prepared statements are bounded per session (here 50): the 51st gets 1461, the session
    // goes on, and closing one makes room.
    // (mysql_async's statement cache would close old statements itself.)
    let mut c = Conn::new(opts.clone().stmt_cache_size(0)).await.unwrap();
    let mut stmts = Vec::new();
    for i in 0..50 {
        stmts.push(c.prep(format!("SELECT {i} + ?")).await.unwrap());
    }
    match c.prep("SELECT 51 + ?").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1461, "{e:?}"),
        other => panic!("the 51st statement was prepared: {:?}", other.map(|_| ())),
    }
    let v: Option<i64> = c.exec_first(&stmts[7], (1,)).await.unwrap();
    assert_eq!(v, Some(8));
    c.close(stmts.pop().unwrap()).await.unwrap();
    c.prep("SELECT 52 + ?").await.expect("room after a close");

    let one: Option<u64> = bystander.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    proxy.shutdown().await;
    drop(relay);
    drop(topo);
}
