//! Drop-in behaviour: what a client sees through Sluice is what it sees on a direct
//! connection (compared against a direct run, with a replica in the topology).

mod common;

use std::time::Duration;

use common::Harness;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use sluice_proto::flags::cap;

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

/// Connection ids as a driver uses them, through Sluice and directly: `CONNECTION_ID()` is the
/// id of the greeting; `KILL QUERY id` interrupts that connection's statement (and only it);
/// `KILL id` ends that connection; an unknown id gets 1094. Through Sluice, another user's
/// session gets 1095 (no privilege lets a Sluice user kill other users' sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_and_kill_behave_as_on_a_direct_connection() {
    let h = Harness::start(1).await;
    for (what, opts) in [("direct", h.direct_opts()), ("sluice", h.proxy_opts())] {
        let mut victim = Conn::new(opts.clone()).await.unwrap();
        let mut killer = Conn::new(opts.clone()).await.unwrap();
        let id = victim.id();
        let cid: Option<u64> = victim.query_first("SELECT CONNECTION_ID()").await.unwrap();
        assert_eq!(
            cid,
            Some(u64::from(id)),
            "{what}: CONNECTION_ID() is the greeting's id"
        );
        let named: Vec<mysql_async::Row> = victim.query("SELECT CONNECTION_ID()").await.unwrap();
        assert_eq!(
            named[0].columns_ref()[0].name_str(),
            "CONNECTION_ID()",
            "{what}: the column name"
        );
        let (cid2, two): (u64, u64) = victim
            .query_first("SELECT CONNECTION_ID() AS c, 1 + 1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cid2, two), (u64::from(id), 2), "{what}");

        // KILL QUERY interrupts the victim's running statement; the victim goes on.
        let sleeping = tokio::spawn(async move {
            let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(20)").await;
            (r.map_err(|e| kind(&e)), victim)
        });
        // Wait until the statement runs (seen in the server's process list).
        let direct = h.direct_opts();
        common::eventually("the victim's SLEEP runs", Duration::from_secs(10), || {
            let o = direct.clone();
            async move {
                let mut w = Conn::new(o).await.unwrap();
                let n: Option<u64> = w
                    .query_first(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(20)'",
                    )
                    .await
                    .unwrap();
                let _ = w.disconnect().await;
                n == Some(1)
            }
        })
        .await;
        killer
            .query_drop(format!("KILL QUERY {id}"))
            .await
            .unwrap_or_else(|e| panic!("{what}: KILL QUERY: {e}"));
        let (r, mut victim) = sleeping.await.unwrap();
        // MariaDB answers the interrupted statement with 1317 (measured directly).
        assert_eq!(
            r,
            Err("server error 1317".to_string()),
            "{what}: the interrupted statement"
        );
        let again: Option<i64> = victim.query_first("SELECT 7").await.unwrap();
        assert_eq!(
            again,
            Some(7),
            "{what}: the victim goes on after KILL QUERY"
        );
        // The killer is unharmed, and an unknown id is refused.
        let e = killer.query_drop("KILL 4000000000").await.unwrap_err();
        assert_eq!(kind(&e), "server error 1094", "{what}: unknown id");
        // KILL ends the victim's connection.
        killer.query_drop(format!("KILL {id}")).await.unwrap();
        let r = victim.query_first::<i64, _>("SELECT 1").await;
        assert!(r.is_err(), "{what}: the killed connection still answers");
        let one: Option<i64> = killer.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1), "{what}: the killer goes on");
    }
    // Through Sluice only: another user may not kill app's session (1095), and a session
    // that KILLs itself gets 1927.
    let mut app = h.proxy_conn().await;
    let mut other = Conn::new(h.opts(h.addr.port(), "other", "other-pw"))
        .await
        .unwrap();
    let e = other
        .query_drop(format!("KILL {}", app.id()))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "server error 1095");
    let _: Option<i64> = app.query_first("SELECT 1").await.unwrap();
    let e = other
        .query_drop(format!("KILL CONNECTION {}", other.id()))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "server error 1927");
    h.shutdown().await;
}

/// `KILL` reached by the prepared-statement protocol (`KILL n` and `KILL ?`, connection and
/// query), and by `EXECUTE IMMEDIATE '…'`: through Sluice each names a Sluice session id
/// exactly as the text `KILL` does, and ends (or leaves alone) the same connections as it does
/// directly. Run with several sessions open, so that a KILL that reached the server as is would
/// end a server thread that is not the victim's. `PREPARE s FROM 'KILL n'` is refused through
/// Sluice (1235: it would not see the `EXECUTE s`), and kills nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_through_prepared_statements_behaves_as_on_a_direct_connection() {
    let h = Harness::start(1).await;
    let mut seen = Vec::new();
    let mut text_prepare = Vec::new();
    for (what, opts) in [("direct", h.direct_opts()), ("sluice", h.proxy_opts())] {
        let mut out = Vec::new();
        let mut killer = Conn::new(opts.clone()).await.unwrap();
        // Bystanders: sessions that each hold a server connection, none of which may be hit.
        let mut bystanders = Vec::new();
        for _ in 0..4 {
            let mut b = Conn::new(opts.clone()).await.unwrap();
            b.query_drop("SELECT 1").await.unwrap();
            bystanders.push(b);
        }
        let forms: [(&str, bool); 6] = [
            ("prepared KILL n", false),
            ("prepared KILL ?", true),
            ("prepared KILL CONNECTION ?", true),
            ("prepared KILL QUERY ? (idle victim)", true),
            ("EXECUTE IMMEDIATE 'KILL n'", false),
            ("EXECUTE IMMEDIATE /* c */ 'KILL n'", false),
        ];
        for (form, bound) in forms {
            let mut victim = Conn::new(opts.clone()).await.unwrap();
            let id = victim.id();
            let _: Option<i64> = victim.query_first("SELECT 1").await.unwrap();
            let stmt = match form {
                "prepared KILL n" => format!("KILL {id}"),
                "prepared KILL ?" => "KILL ?".to_string(),
                "prepared KILL CONNECTION ?" => "KILL CONNECTION ?".to_string(),
                "prepared KILL QUERY ? (idle victim)" => "KILL QUERY ?".to_string(),
                _ => String::new(),
            };
            let r = match form {
                "EXECUTE IMMEDIATE 'KILL n'" => killer
                    .query_drop(format!("EXECUTE IMMEDIATE 'KILL {id}'"))
                    .await
                    .map_err(|e| kind(&e)),
                "EXECUTE IMMEDIATE /* c */ 'KILL n'" => killer
                    .query_drop(format!("EXECUTE IMMEDIATE /* c */ 'KILL {id}'"))
                    .await
                    .map_err(|e| kind(&e)),
                _ if bound => killer
                    .exec_drop(stmt.as_str(), (id,))
                    .await
                    .map_err(|e| kind(&e)),
                _ => killer
                    .exec_drop(stmt.as_str(), ())
                    .await
                    .map_err(|e| kind(&e)),
            };
            let victim_after = victim
                .query_first::<i64, _>("SELECT 7")
                .await
                .map(|_| "answers")
                .unwrap_or("gone");
            out.push(format!("{form}: {r:?}, victim {victim_after}"));
        }
        // A text-protocol PREPARE of a KILL, then its EXECUTE.
        let mut victim = Conn::new(opts.clone()).await.unwrap();
        let id = victim.id();
        let prepared = killer
            .query_drop(format!("PREPARE s FROM 'KILL {id}'"))
            .await
            .map_err(|e| kind(&e));
        let executed = killer.query_drop("EXECUTE s").await.map_err(|e| kind(&e));
        let victim_after = victim.query_first::<i64, _>("SELECT 7").await.is_ok();
        text_prepare.push((prepared, executed, victim_after));
        // An unknown id, prepared.
        let r = killer
            .exec_drop("KILL ?", (4_000_000_000u64,))
            .await
            .map_err(|e| kind(&e));
        out.push(format!("prepared KILL of an unknown id: {r:?}"));
        let mut alive = Vec::new();
        for b in &mut bystanders {
            alive.push(b.query_first::<i64, _>("SELECT 1").await.is_ok());
        }
        out.push(format!("bystanders alive {alive:?}"));
        let one: Option<i64> = killer.query_first("SELECT 1").await.unwrap();
        out.push(format!("killer goes on {}", one == Some(1)));
        eprintln!("{what}:\n{}", out.join("\n"));
        seen.push(out);
    }
    assert_eq!(seen[1], seen[0], "through Sluice vs direct");
    assert_eq!(
        text_prepare[0],
        (Ok(()), Ok(()), false),
        "direct: PREPARE s FROM 'KILL n'; EXECUTE s"
    );
    assert_eq!(
        text_prepare[1],
        (
            Err("server error 1235".to_string()),
            Err("server error 1243".to_string()),
            true
        ),
        "through Sluice: the PREPARE is refused, so EXECUTE s finds no statement"
    );
    h.shutdown().await;
}

/// MariaDB's extended column metadata (`MARIADB_CLIENT_EXTENDED_METADATA`): a client that asks
/// for it gets the same column definitions through Sluice as directly — a JSON column carries
/// its `json` format name, which drivers use to type the value — in text results and in a
/// prepared statement's metadata, on a replica as on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_metadata_matches_a_direct_connection() {
    use common::raw::RawConn;
    use sluice_proto::flags::cap;
    let h = Harness::start(1).await;
    let mut c = h.proxy_conn().await;
    c.query_drop("CREATE DATABASE xm; CREATE TABLE xm.t (id INT PRIMARY KEY, j JSON, u INET6)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO xm.t VALUES (1, '{\"a\": 1}', '::1')")
        .await
        .unwrap();
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let ext = cap::MARIADB_CLIENT_EXTENDED_METADATA;
    let mut seen = Vec::new();
    for port in [h.topo.nodes[0].port, h.addr.port()] {
        let (mut raw, ok) = RawConn::login(port, common::USER, common::PASSWORD, ext).await;
        assert_eq!(ok.first(), Some(&0x00), "login: {ok:?}");
        assert_ne!(
            raw.caps & ext,
            0,
            "extended metadata was not negotiated on {port}"
        );
        let text = raw.command(b"\x03SELECT j, u FROM xm.t").await;
        let prepared = raw.command(b"\x16SELECT j, u FROM xm.t WHERE id = ?").await;
        // Column definitions: the packets after the column count (text), and after the
        // prepare OK and the parameter definition (prepared).
        let defs = |p: &[(u8, Vec<u8>)], from: usize| -> Vec<Vec<u8>> {
            p[from..from + 2].iter().map(|x| x.1.clone()).collect()
        };
        seen.push((defs(&text, 1), defs(&prepared, 2)));
    }
    let (direct, through) = (&seen[0], &seen[1]);
    let has = |d: &[u8], s: &[u8]| d.windows(s.len()).any(|w| w == s);
    assert!(
        has(&direct.0[0], b"json"),
        "direct: no json format name: {:?}",
        direct.0[0]
    );
    assert!(has(&direct.0[1], b"inet6"), "direct: no inet6 type name");
    assert_eq!(through.0, direct.0, "text result column definitions differ");
    assert_eq!(
        through.1, direct.1,
        "prepared statement column definitions differ"
    );
    h.shutdown().await;
}

/// Character sets: a client logging in with cp1251, koi8r, cp866, latin1, utf8mb4 or binary
/// (the handshake's collation byte), or switching with `SET NAMES`, gets byte-identical
/// answers through Sluice and directly — column definitions (character set ids) and row
/// bytes — for text queries and for prepared statements (prepared and executed on a replica
/// through Sluice), and on connections taken from the pool after other sessions used them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn character_sets_give_identical_bytes_text_and_prepared() {
    use common::raw::RawConn;
    let h = Harness::start(1).await;
    let mut c = h.proxy_conn().await;
    c.query_drop(
        "CREATE DATABASE cs; CREATE TABLE cs.t (id INT PRIMARY KEY, s VARCHAR(40) CHARACTER SET utf8mb4)",
    )
    .await
    .unwrap();
    c.query_drop("INSERT INTO cs.t VALUES (1, 'Привет, мир'), (2, 'café Zürich'), (3, 'plain')")
        .await
        .unwrap();
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    // (name, collation id): the handshake byte clients send.
    let charsets = [
        ("cp1251", 51u8),
        ("koi8r", 7),
        ("cp866", 36),
        ("latin1", 8),
        ("utf8mb4", 45),
        ("binary", 63),
    ];
    /// How the character set is chosen.
    #[derive(Clone, Copy, Debug)]
    enum How {
        Handshake,
        SetNames,
        ChangeUser,
    }
    async fn script(port: u16, name: &str, id: u8, how: How) -> Vec<Vec<(u8, Vec<u8>)>> {
        let charset = if matches!(how, How::Handshake) {
            id
        } else {
            45
        };
        let (mut raw, ok) =
            RawConn::login_charset(port, common::USER, common::PASSWORD, charset).await;
        assert_eq!(
            ok.first(),
            Some(&0x00),
            "login with charset {charset}: {ok:?}"
        );
        let mut out = Vec::new();
        match how {
            How::Handshake => {}
            How::SetNames => {
                out.push(
                    raw.command(format!("\x03SET NAMES {name}").as_bytes())
                        .await,
                );
            }
            How::ChangeUser => {
                let cu = sluice_proto::command::ChangeUser {
                    username: common::USER.as_bytes().to_vec(),
                    auth_response: sluice_proto::scramble::native_token(
                        common::PASSWORD.as_bytes(),
                        &raw.handshake.auth_data,
                    ),
                    database: Vec::new(),
                    charset: Some(u16::from(id)),
                    auth_plugin: Some(b"mysql_native_password".to_vec()),
                    connect_attrs: None,
                };
                let answer = raw.command(&cu.encode(raw.caps)).await;
                let (seq, last) = answer.last().cloned().expect("an answer");
                // MariaDB scrambles anew for a change of user (an AuthSwitch); the exchange
                // is not compared (salts differ), only that it ends in OK.
                let last = if last[0] == 0xFE {
                    let salt = last[last.iter().position(|&b| b == 0).unwrap() + 1..].to_vec();
                    let salt = salt.strip_suffix(&[0]).unwrap_or(&salt).to_vec();
                    let token =
                        sluice_proto::scramble::native_token(common::PASSWORD.as_bytes(), &salt);
                    raw.write(seq.wrapping_add(1), &token).await;
                    raw.read_packet().await.payload.to_vec()
                } else {
                    last
                };
                assert_eq!(last.first(), Some(&0x00), "change user: {last:?}");
            }
        }
        out.push(raw.command(b"\x03SELECT id, s FROM cs.t ORDER BY id").await);
        let prep = raw
            .command(b"\x16SELECT s, CHAR_LENGTH(s) FROM cs.t WHERE id > 0 ORDER BY id")
            .await;
        let id = prep[0].1[1..5].to_vec();
        // The prepare answer without the statement id (Sluice numbers its own).
        let mut p0 = prep[0].1.clone();
        p0[1..5].fill(0);
        out.push(
            std::iter::once((prep[0].0, p0))
                .chain(prep[1..].iter().cloned())
                .collect(),
        );
        for _ in 0..3 {
            let mut exec = vec![0x17];
            exec.extend_from_slice(&id);
            exec.extend_from_slice(&[0, 1, 0, 0, 0]);
            out.push(raw.command(&exec).await);
        }
        out
    }
    let mut checked = 0;
    for (name, id) in charsets {
        for how in [How::Handshake, How::SetNames, How::ChangeUser] {
            let direct = script(h.topo.nodes[0].port, name, id, how).await;
            let through = script(h.addr.port(), name, id, how).await;
            assert_eq!(
                through, direct,
                "{name} ({how:?}): through Sluice vs direct"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
    h.shutdown().await;
}

/// `COM_STMT_BULK_EXECUTE` (MariaDB batch inserts, `MARIADB_CLIENT_STMT_BULK_OPERATIONS`):
/// three rows in one command insert the same rows, with the same answer, through Sluice
/// (on the primary) and directly; without parameter types Sluice refuses it (1210).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_execute_inserts_as_directly() {
    use common::raw::RawConn;
    use sluice_proto::flags::cap;
    let h = Harness::start(1).await;
    let mut c = h.proxy_conn().await;
    c.query_drop("CREATE DATABASE bulk; CREATE TABLE bulk.t (k VARCHAR(20) PRIMARY KEY, n INT)")
        .await
        .unwrap();
    let bulk_caps = cap::MARIADB_CLIENT_STMT_BULK_OPERATIONS;
    // One bulk command: types (VARCHAR, LONG), then per row: indicator 0 + value, twice.
    let bulk = |stmt: &[u8], prefix: &str, flags: u16| {
        let mut p = vec![0xFA];
        p.extend_from_slice(stmt);
        p.extend_from_slice(&flags.to_le_bytes());
        if flags & 128 != 0 {
            p.extend_from_slice(&[15, 0, 3, 0]);
        }
        for i in 0..3i32 {
            let k = format!("{prefix}-{i}");
            p.push(0);
            p.push(k.len() as u8);
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(&(i * 10).to_le_bytes());
        }
        p
    };
    let mut answers = Vec::new();
    for (prefix, port) in [("direct", h.topo.nodes[0].port), ("sluice", h.addr.port())] {
        let (mut raw, ok) = RawConn::login(port, common::USER, common::PASSWORD, bulk_caps).await;
        assert_eq!(ok.first(), Some(&0x00), "{prefix}: login");
        assert_ne!(
            raw.caps & bulk_caps,
            0,
            "{prefix}: bulk operations not negotiated"
        );
        let prep = raw
            .command(b"\x16INSERT INTO bulk.t (k, n) VALUES (?, ?)")
            .await;
        assert_eq!(prep[0].1[0], 0, "{prefix}: prepare: {prep:?}");
        let stmt = prep[0].1[1..5].to_vec();
        let answer = raw.command(&bulk(&stmt, prefix, 128)).await;
        answers.push(answer[0].1.clone());
        if prefix == "sluice" {
            // Without types after a typed bulk (what drivers send for the next batch): the
            // types are added again for the server.
            let again = raw.command(&bulk(&stmt, "again", 0)).await;
            assert_eq!(again[0].1[0], 0, "{again:?}");
            // A statement never executed with types: refused, and the session goes on.
            let fresh = raw
                .command(b"\x16INSERT INTO bulk.t (k, n) VALUES (?, ?)")
                .await;
            let fresh_id = fresh[0].1[1..5].to_vec();
            let refused = raw.command(&bulk(&fresh_id, "untyped", 0)).await;
            assert_eq!(refused[0].1[0], 0xFF, "without types: {refused:?}");
            assert_eq!(u16::from_le_bytes([refused[0].1[1], refused[0].1[2]]), 1210);
            let short = raw
                .command(&[0xFA, fresh_id[0], fresh_id[1], fresh_id[2], fresh_id[3]])
                .await;
            assert_eq!(short[0].1[0], 0xFF, "a truncated bulk: {short:?}");
        }
    }
    // OK packets: header, affected rows 3, insert id 0, then status and warnings.
    assert_eq!(answers[0][0], 0x00, "direct: {:?}", answers[0]);
    assert_eq!(answers[0][1], 3, "direct: 3 rows");
    assert_eq!(answers[1][..2], answers[0][..2], "through Sluice vs direct");
    let rows: Vec<(String, i32)> = c
        .query("SELECT k, n FROM bulk.t ORDER BY k FOR UPDATE")
        .await
        .unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "again-0", "again-1", "again-2", "direct-0", "direct-1", "direct-2", "sluice-0",
            "sluice-1", "sluice-2"
        ]
    );
    assert_eq!(rows[7].1, 10);
    // mysql_async's exec_batch uses COM_STMT_BULK_EXECUTE when it is offered: 2,000 rows in
    // batches through Sluice and directly give the same rows.
    for (name, opts) in [("d", h.direct_opts()), ("s", h.proxy_opts())] {
        let mut conn = Conn::new(opts).await.unwrap();
        let rows: Vec<(String, i32)> = (0..2000).map(|i| (format!("{name}{i:05}"), i)).collect();
        conn.exec_batch("INSERT INTO bulk.t (k, n) VALUES (?, ?)", rows)
            .await
            .unwrap_or_else(|e| panic!("{name}: exec_batch: {e}"));
        let (count, sum): (u64, i64) = conn
            .query_first(format!(
                "SELECT COUNT(*), SUM(n) FROM bulk.t WHERE k LIKE '{name}0%' OR k LIKE '{name}1%' FOR UPDATE"
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((count, sum), (2000, 1_999_000), "{name}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_default_wait_timeout_applies_as_directly() {
    use common::raw::RawConn;
    // The servers' defaults: 2 s for ordinary clients, 60 s for interactive ones.
    let mut spec = common::spec(1);
    spec.extra_cnf = vec!["wait_timeout = 2".into(), "interactive_timeout = 60".into()];
    let h = Harness::start_spec(spec, |_| {}).await;
    let idle = Duration::from_millis(3500);
    let direct = after_idle(h.direct_opts(), "SET @x = 1", idle).await;
    let proxied = after_idle(h.proxy_opts(), "SET @x = 1", idle).await;
    eprintln!("server wait_timeout = 2: direct {direct:?}, through Sluice {proxied:?}");
    assert!(direct.is_err(), "direct: the idle connection survived");
    assert_eq!(proxied, direct, "through Sluice vs direct");
    // An interactive client (CLIENT_INTERACTIVE) gets interactive_timeout instead: it stays.
    for port in [h.topo.nodes[0].port, h.addr.port()] {
        let (mut c, ok) = RawConn::login(
            port,
            common::USER,
            common::PASSWORD,
            cap::CLIENT_INTERACTIVE,
        )
        .await;
        assert_eq!(ok.first(), Some(&0x00), "login on {port}");
        tokio::time::sleep(idle).await;
        c.write(0, b"\x03SELECT 1").await;
        let answer = c.try_read_packet().await;
        assert!(
            answer.is_some_and(|p| p.payload.first() == Some(&0x01)),
            "an interactive client idle for {idle:?} on port {port} was cut"
        );
    }
    // A session's own SET still wins over the server's default.
    let proxied = after_idle(h.proxy_opts(), "SET wait_timeout = 10", idle).await;
    assert_eq!(proxied, Ok(()));
    h.shutdown().await;
}

/// Runs `sql` on a raw connection and returns the answer's packets as (sequence id, first
/// byte, is a progress report), up to the OK or ERR that ends it.
async fn progress_script(port: u16, sql: &str) -> Vec<(u8, u8, bool)> {
    use common::raw::RawConn;
    let (mut c, ok) = RawConn::login(
        port,
        common::USER,
        common::PASSWORD,
        cap::MARIADB_CLIENT_PROGRESS,
    )
    .await;
    assert_eq!(ok.first(), Some(&0x00));
    assert!(
        c.caps & cap::MARIADB_CLIENT_PROGRESS != 0,
        "progress reports offered on port {port}"
    );
    c.write(0, b"\x03SET SESSION progress_report_time = 1")
        .await;
    assert_eq!(c.read_packet().await.payload.first(), Some(&0x00));
    let mut q = vec![0x03];
    q.extend_from_slice(sql.as_bytes());
    c.write(0, &q).await;
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let p = c.read_packet().await;
        let progress = p.payload.len() >= 3 && p.payload[..3] == [0xFF, 0xFF, 0xFF];
        seen.push((p.seq, p.payload[0], progress));
        if !progress && matches!(p.payload[0], 0x00 | 0xFF) {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_reach_the_client_as_directly() {
    let h = Harness::start(1).await;
    let mut d = h.direct_conn().await;
    d.query_drop("CREATE DATABASE pr").await.unwrap();
    d.query_drop("CREATE TABLE pr.t (id INT PRIMARY KEY, v VARCHAR(200))")
        .await
        .unwrap();
    d.query_drop("INSERT INTO pr.t SELECT seq, REPEAT('x', 150) FROM pr.seq_1_to_600000")
        .await
        .unwrap();
    // A table copy long enough for reports every second, directly and through Sluice.
    let alter = "ALTER TABLE pr.t FORCE, ALGORITHM = COPY";
    let direct = progress_script(h.topo.nodes[0].port, alter).await;
    let proxied = progress_script(h.addr.port(), alter).await;
    let reports = |v: &[(u8, u8, bool)]| v.iter().filter(|p| p.2).count();
    eprintln!(
        "progress reports: direct {} of {} packets, through Sluice {} of {}",
        reports(&direct),
        direct.len(),
        reports(&proxied),
        proxied.len()
    );
    assert!(
        reports(&direct) >= 1,
        "the server sent no report: {direct:?}"
    );
    assert!(
        reports(&proxied) >= 1,
        "no report reached the client: {proxied:?}"
    );
    // Both end with the OK, with sequence ids that count on through the reports.
    for v in [&direct, &proxied] {
        assert_eq!(v.last().map(|p| (p.1, p.2)), Some((0x00, false)), "{v:?}");
        for (i, p) in v.iter().enumerate() {
            assert_eq!(p.0 as usize, i + 1, "sequence ids: {v:?}");
        }
    }
    h.shutdown().await;
}
