//! MySQL query attributes (`CLIENT_QUERY_ATTRIBUTES`) end to end. No MySQL server runs on
//! these machines and MariaDB servers do not offer the capability, so both halves run against
//! real code in a chain: an inner Sluice with `[proxy] query_attributes = "accept"` in front of
//! MariaDB offers them and takes them off every command; an outer
//! Sluice in front of the inner one (the default, `relay`) offers them because its primary
//! does, and relays them on server connections that negotiated them — with its own statements
//! (session state, LAST_INSERT_ID, …) carrying the empty attribute prefix. mysql-connector-python
//! (pure Python, which sends attributes with text and prepared statements) runs one scenario
//! directly against MariaDB (capability not offered: the driver drops its attributes), through
//! the inner Sluice and through both; the results must be the same, and each Sluice counts the
//! commands that carried attributes (`sluice_query_attributes_commands_total`).

mod common;

use std::sync::atomic::Ordering;

use common::Harness;

async fn scenario(port: u16, db: &str, token: &str) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/drivers/query_attributes.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, &port.to_string(), db, token])
        .output()
        .await
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("done"),
        "query attributes scenario against port {port} failed (`pip install mysql-connector-python`):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The results, without the `negotiated` line.
fn results(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| !l.starts_with("negotiated"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_attributes_are_taken_off_and_relayed_like_a_server_takes_them() {
    // No replica behind the inner Sluice: the outer one's monitor reads `@@read_only` through it
    // and must get the primary's answer.
    let h = Harness::start_with(0, |c| {
        c.proxy.query_attributes = sluice::config::QueryAttributes::Accept;
    })
    .await;
    let mut config = h.config.as_ref().clone();
    config.proxy.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.metrics.listen = "127.0.0.1:0".into();
    config.proxy.query_attributes = sluice::config::QueryAttributes::Relay;
    config.servers.truncate(1);
    config.servers[0].address = h.addr.to_string();
    config.monitor.user = Some("app".into());
    config.monitor.password = Some("app-pw".into());
    let outer = sluice::server::start(std::sync::Arc::new(config))
        .await
        .expect("start the outer Sluice");
    assert!(
        outer.wait_ready(std::time::Duration::from_secs(15)).await,
        "the outer Sluice did not see the inner one as a primary"
    );
    let inner = h.proxy.as_ref().unwrap();
    let counted =
        |r: &sluice::server::Running| r.shared.counters.query_attributes.load(Ordering::Relaxed);

    let direct = scenario(h.topo.nodes[0].port, "qa_direct", "direct-1").await;
    let (i0, o0) = (counted(inner), counted(&outer));
    let via_inner = scenario(h.addr.port(), "qa_inner", "inner-1").await;
    let (i1, o1) = (counted(inner), counted(&outer));
    let via_both = scenario(outer.local_addr.port(), "qa_outer", "outer-1").await;
    let (i2, o2) = (counted(inner), counted(&outer));
    eprintln!(
        "directly:\n{direct}\nthrough the inner Sluice:\n{via_inner}\nthrough both:\n{via_both}"
    );

    // MariaDB does not offer the capability; both Sluices do.
    assert!(direct.contains("negotiated False"), "{direct}");
    assert!(via_inner.contains("negotiated True"), "{via_inner}");
    assert!(via_both.contains("negotiated True"), "{via_both}");
    // Same results everywhere (attributes change no result).
    assert_eq!(results(&via_inner), results(&direct));
    assert_eq!(results(&via_both), results(&direct));
    assert!(direct.contains("rows of this run [(1,), (2,)]"), "{direct}");
    // Nine commands of the scenario carry attributes: four text statements and four
    // executions of the script, and the `SELECT @@session.sql_mode` the driver runs itself
    // before the first statement with parameters (with the attributes already set). The
    // inner Sluice saw them from the driver, then from the outer one, which relayed them: its
    // own statements carry none.
    assert_eq!(
        i1 - i0,
        9,
        "commands with attributes seen by the inner Sluice"
    );
    assert_eq!(o1, o0);
    assert_eq!(
        o2 - o1,
        9,
        "commands with attributes seen by the outer Sluice"
    );
    assert_eq!(
        i2 - i1,
        9,
        "commands with attributes the outer Sluice relayed to the inner one"
    );

    // Bad input from a client that negotiated attributes: a query whose attribute block lies
    // about its count, and an execution whose parameter count is below the statement's. Each
    // gets its error and the session goes on.
    use sluice::backend::{connect, Transport};
    let (mut raw, _) = connect(
        "inner",
        &h.addr.to_string(),
        common::app_login(),
        std::time::Duration::from_secs(5),
        Transport::default(),
    )
    .await
    .expect("a raw client with query attributes");
    assert!(raw.query_attributes());
    let err_code = |p: &[u8]| (p.first() == Some(&0xFF)).then(|| u16::from_le_bytes([p[1], p[2]]));
    // 5 attributes announced, one (truncated) present.
    raw.write_packet(0, b"\x03\x05\x01\x00\x01\xfe\x00\x01")
        .await
        .unwrap();
    let reply = raw.read_packet().await.unwrap();
    assert_eq!(err_code(&reply.payload), Some(1835), "{:?}", reply.payload);
    let row = raw.control_row(b"\x03SELECT 40 + 2").await.unwrap();
    assert_eq!(row, Some(vec![Some(b"42".to_vec())]));
    // A statement with two parameters, executed with a parameter count of 1.
    raw.write_packet(0, b"\x16SELECT ? + ?").await.unwrap();
    let prep = raw.read_packet().await.unwrap();
    assert_eq!(prep.payload[0], 0, "{:?}", prep.payload);
    let id = [
        prep.payload[1],
        prep.payload[2],
        prep.payload[3],
        prep.payload[4],
    ];
    // The parameter and column definitions that follow (each list ends with an EOF unless
    // CLIENT_DEPRECATE_EOF was negotiated).
    let columns = u16::from_le_bytes([prep.payload[5], prep.payload[6]]);
    let ps = u16::from_le_bytes([prep.payload[7], prep.payload[8]]);
    assert_eq!(ps, 2);
    let eof = u16::from(raw.capabilities & sluice_proto::flags::cap::CLIENT_DEPRECATE_EOF == 0);
    for _ in 0..ps + eof + columns + if columns > 0 { eof } else { 0 } {
        tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_packet())
            .await
            .expect("a definition packet")
            .unwrap();
    }
    // id, flags, iteration count, parameter count 1 (lenenc), NULL bitmap, bound, one
    // LONGLONG type with an empty name, its value.
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, 1, 0x08, 0, 0]);
    exec.extend_from_slice(&5u64.to_le_bytes());
    raw.write_packet(0, &exec).await.unwrap();
    let reply = raw.read_packet().await.unwrap();
    assert_eq!(err_code(&reply.payload), Some(1210), "{:?}", reply.payload);
    let row = raw.control_row(b"\x03SELECT 'still here'").await.unwrap();
    assert_eq!(row, Some(vec![Some(b"still here".to_vec())]));

    outer.shutdown().await;
    h.shutdown().await;
}
