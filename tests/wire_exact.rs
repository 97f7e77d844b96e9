//! Byte-level comparison: the same command script over a raw protocol connection, directly to
//! the primary and through Sluice. Every response packet (sequence id and payload) must be
//! identical — result sets, EOF/OK terminators, status flags, cursors, field lists, errors —
//! with and without `CLIENT_DEPRECATE_EOF`.

mod common;

use common::raw::RawConn;
use common::{Harness, PASSWORD, USER};
use sluice_proto::command::*;
use sluice_proto::flags::cap;
use sluice_proto::ok::OkPacket;

type Responses = Vec<(String, Vec<(u8, Vec<u8>)>)>;

fn query(sql: &str) -> Vec<u8> {
    encode_simple(COM_QUERY, sql.as_bytes())
}

/// An execution with one parameter of type `ty` (new types bound) and value `value`.
fn execute_one(stmt: u32, ty: u8, value: &[u8]) -> Vec<u8> {
    let mut p = encode_stmt_execute(stmt, 0);
    p.extend_from_slice(&[0x00, 0x01, ty, 0x00]);
    p.extend_from_slice(value);
    p
}

fn long_data(stmt: u32, data: &[u8]) -> Vec<u8> {
    let mut p = vec![COM_STMT_SEND_LONG_DATA];
    p.extend_from_slice(&stmt.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(data);
    p
}

/// Runs the script; returns each command's response packets.
async fn script(port: u16, caps: u64) -> Responses {
    let (mut c, ok) = RawConn::login(port, USER, PASSWORD, caps).await;
    assert_eq!(ok[0], 0, "login failed: {ok:?}");
    let mut out: Responses = Vec::new();
    // Statement ids are the server's (a reused server thread may continue its counter), so the
    // commands that use one take the id the last prepare returned, and ids are masked below.
    type Cmd = Box<dyn Fn(u32) -> Vec<u8>>;
    let cmds: Vec<(&str, Cmd)> = vec![
        (
            "drop",
            Box::new(move |_| query("DROP DATABASE IF EXISTS w")),
        ),
        ("create db", Box::new(move |_| query("CREATE DATABASE w"))),
        (
            "init db",
            Box::new(move |_| encode_simple(COM_INIT_DB, b"w")),
        ),
        (
            "init db missing",
            Box::new(move |_| encode_simple(COM_INIT_DB, b"missing_db")),
        ),
        (
            "create",
            Box::new(move |_| {
                query("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(10), n INT)")
            }),
        ),
        (
            "insert",
            Box::new(move |_| {
                query("INSERT INTO t (v, n) VALUES ('a', 1), ('b', NULL), ('c', 3), ('d', 4), ('e', 5)")
            }),
        ),
        (
            "select",
            Box::new(move |_| query("SELECT id, v, n, NULL, 1.5, 'x' FROM t ORDER BY id")),
        ),
        (
            "empty select",
            Box::new(move |_| query("SELECT * FROM t WHERE id < 0")),
        ),
        ("error", Box::new(move |_| query("SELECT nope FROM t"))),
        (
            "warning",
            Box::new(move |_| query("SELECT CAST('12abc' AS UNSIGNED)")),
        ),
        (
            "multi",
            Box::new(move |_| {
                query("SELECT 1; INSERT INTO t (v) VALUES ('f'); SELECT v FROM t WHERE id = 6; SELECT 2")
            }),
        ),
        (
            "multi error",
            Box::new(move |_| query("SELECT 1; SELECT nope; SELECT 3")),
        ),
        ("begin", Box::new(move |_| query("BEGIN"))),
        (
            "in trans select",
            Box::new(move |_| query("SELECT COUNT(*) FROM t")),
        ),
        ("commit", Box::new(move |_| query("COMMIT"))),
        (
            "field list",
            Box::new(move |_| encode_simple(COM_FIELD_LIST, b"t\0")),
        ),
        (
            "field list missing",
            Box::new(move |_| encode_simple(COM_FIELD_LIST, b"nothere\0")),
        ),
        (
            "prepare",
            Box::new(move |_| {
                encode_simple(
                    COM_STMT_PREPARE,
                    b"SELECT id, v FROM t WHERE id > 0 ORDER BY id",
                )
            }),
        ),
        ("execute", Box::new(move |id| encode_stmt_execute(id, 0))),
        // Unchanged definitions: a client with cached metadata gets none this time.
        (
            "execute again",
            Box::new(move |id| encode_stmt_execute(id, 0)),
        ),
        (
            "execute cursor",
            Box::new(move |id| encode_stmt_execute(id, CURSOR_TYPE_READ_ONLY)),
        ),
        ("fetch 2", Box::new(move |id| encode_stmt_fetch(id, 2))),
        ("fetch rest", Box::new(move |id| encode_stmt_fetch(id, 100))),
        (
            "reset stmt",
            Box::new(move |id| encode_simple(COM_STMT_RESET, &id.to_le_bytes())),
        ),
        (
            "prepare long data",
            Box::new(move |_| encode_simple(COM_STMT_PREPARE, b"SELECT CONCAT(?, '!')")),
        ),
        (
            "send long data 1",
            Box::new(move |id| long_data(id, b"hello ")),
        ),
        (
            "send long data 2",
            Box::new(move |id| long_data(id, b"world")),
        ),
        (
            "execute long data",
            // One parameter of type MYSQL_TYPE_STRING whose value came as long data.
            Box::new(move |id| {
                let mut p = encode_stmt_execute(id, 0);
                p.extend_from_slice(&[0x00, 0x01, 0xFE, 0x00]);
                p
            }),
        ),
        (
            "prepare params",
            Box::new(move |_| encode_simple(COM_STMT_PREPARE, b"UPDATE t SET n = ? WHERE v = ?")),
        ),
        (
            "prepare error",
            Box::new(move |_| encode_simple(COM_STMT_PREPARE, b"SELEKT 1")),
        ),
        (
            "close stmt",
            Box::new(move |id| encode_simple(COM_STMT_CLOSE, &id.to_le_bytes())),
        ),
        (
            "execute closed",
            Box::new(move |id| encode_stmt_execute(id, 0)),
        ),
        ("ping", Box::new(move |_| vec![COM_PING])),
        ("multi off", Box::new(move |_| vec![COM_SET_OPTION, 1, 0])),
        (
            "multi refused",
            Box::new(move |_| query("SELECT 1; SELECT 2")),
        ),
        ("multi on", Box::new(move |_| vec![COM_SET_OPTION, 0, 0])),
        (
            "call",
            Box::new(move |_| query("CREATE PROCEDURE pr() BEGIN SELECT 1; SELECT 2; END")),
        ),
        ("call run", Box::new(move |_| query("CALL pr()"))),
        // Definitions that change with the parameter types, and back.
        (
            "prepare typed",
            Box::new(move |_| encode_simple(COM_STMT_PREPARE, b"SELECT ? + 1 AS x, 'k' AS y")),
        ),
        (
            "execute int",
            Box::new(move |id| execute_one(id, 0x08, &5i64.to_le_bytes())),
        ),
        (
            "execute int again",
            Box::new(move |id| execute_one(id, 0x08, &6i64.to_le_bytes())),
        ),
        (
            "execute string",
            Box::new(move |id| execute_one(id, 0xFE, b"\x017")),
        ),
        (
            "execute int after string",
            Box::new(move |id| execute_one(id, 0x08, &8i64.to_le_bytes())),
        ),
        // Several result sets per execution (the client's copy is that of the last one).
        (
            "prepare call",
            Box::new(move |_| encode_simple(COM_STMT_PREPARE, b"CALL pr()")),
        ),
        (
            "execute call",
            Box::new(move |id| encode_stmt_execute(id, 0)),
        ),
        (
            "execute call again",
            Box::new(move |id| encode_stmt_execute(id, 0)),
        ),
        (
            "reset connection",
            Box::new(move |_| vec![COM_RESET_CONNECTION]),
        ),
        (
            "after reset",
            Box::new(move |_| query("SELECT DATABASE(), @@autocommit")),
        ),
        ("unknown command", Box::new(move |_| vec![0x20])),
        // Leave nothing behind, so that the second run starts from the same state.
        ("cleanup", Box::new(move |_| query("DROP DATABASE w"))),
    ];
    let mut id = 0u32;
    for (name, cmd) in cmds {
        let mut resp = c.command(&cmd(id)).await;
        if name.starts_with("prepare") && resp[0].1[0] == 0 {
            id = u32::from_le_bytes(resp[0].1[1..5].try_into().unwrap());
            resp[0].1[1..5].copy_from_slice(&[0xAA; 4]);
        }
        if name == "execute closed" {
            // The message names the statement id: compare the error code only (1243).
            assert_eq!(&resp[0].1[..3], &[0xFF, 0xDB, 0x04]);
            resp[0].1.truncate(3);
        }
        out.push((name.to_string(), resp));
    }
    // Statistics change between calls (uptime, query counts): compare the shape only.
    let stats = c.command(&[COM_STATISTICS]).await;
    assert_eq!(stats.len(), 1);
    assert!(
        stats[0].1.starts_with(b"Uptime: "),
        "{:?}",
        String::from_utf8_lossy(&stats[0].1)
    );
    out
}

async fn compare(caps: u64) {
    let h = Harness::start(2).await;
    let direct = script(h.topo.nodes[0].port, caps).await;
    let proxied = script(h.addr.port(), caps).await;
    assert_eq!(direct.len(), proxied.len());
    for ((name, a), (_, b)) in direct.iter().zip(&proxied) {
        assert_eq!(
            a, b,
            "response to {name:?} differs (left direct, right through sluice)"
        );
    }
    // The comparison covered real result sets: the select returned 5 rows.
    let select = &direct.iter().find(|(n, _)| n == "select").unwrap().1;
    let rows = select.len() - 1 - 6 - usize::from(caps & cap::CLIENT_DEPRECATE_EOF == 0) - 1;
    assert_eq!(rows, 5, "{select:?}");
    // Long data reached the server through Sluice.
    let ld = &proxied
        .iter()
        .find(|(n, _)| n == "execute long data")
        .unwrap()
        .1;
    assert!(
        ld.iter()
            .any(|(_, p)| p.windows(12).any(|w| w == b"hello world!")),
        "{ld:?}"
    );
    // The cursor fetch returned exactly the rows asked for.
    let fetch2 = &direct.iter().find(|(n, _)| n == "fetch 2").unwrap().1;
    assert_eq!(fetch2.len(), 3);
    h.shutdown().await;
}

#[tokio::test]
async fn identical_bytes_classic_eof() {
    compare(0).await;
}

#[tokio::test]
async fn identical_bytes_deprecate_eof_and_session_track() {
    compare(cap::CLIENT_DEPRECATE_EOF | cap::CLIENT_SESSION_TRACK).await;
}

/// `MARIADB_CLIENT_CACHE_METADATA` (libmariadb asks for it): Sluice negotiates it with the
/// client only, adds the "metadata follows" byte and leaves out an execution's definitions
/// the client already holds — byte for byte what the server does on a direct connection.
async fn compare_cached_metadata(caps: u64) {
    let caps = caps | cap::MARIADB_CLIENT_CACHE_METADATA;
    compare(caps).await;
    // The comparison covered definitions left out (the same as the prepare answer's, or as
    // the last execution's) and sent again (changed with the parameter types).
    let h = Harness::start(0).await;
    let direct = script(h.topo.nodes[0].port, caps).await;
    let flag = |name: &str| {
        let r = &direct.iter().find(|(n, _)| n == name).unwrap().1;
        (r[0].1.clone(), r.len())
    };
    assert_eq!(flag("execute").0, vec![2, 0]);
    assert_eq!(flag("execute again").0, vec![2, 0]);
    assert_eq!(flag("execute int").0, vec![2, 1]);
    assert_eq!(flag("execute int again").0, vec![2, 0]);
    assert_eq!(flag("execute string").0, vec![2, 1]);
    assert_eq!(flag("execute int after string").0, vec![2, 1]);
    assert!(flag("execute int").1 == flag("execute int again").1 + 2);
    h.shutdown().await;
}

#[tokio::test]
async fn identical_bytes_cached_metadata() {
    compare_cached_metadata(cap::CLIENT_DEPRECATE_EOF | cap::CLIENT_SESSION_TRACK).await;
}

#[tokio::test]
async fn identical_bytes_cached_metadata_classic_eof() {
    compare_cached_metadata(0).await;
}

/// Two clients with cached metadata share one server connection, which negotiated cached
/// metadata too: the server leaves out an execution's definitions when it sent the same ones
/// last for that statement — to whichever session executed it then. Each client must get
/// what a direct connection of its own gets: the definitions are put back (flag 1) for a
/// client that does not hold them, and left out (flag 0) only for one that does.
async fn shared_connection_cached_metadata(caps: u64) {
    let caps = caps | cap::MARIADB_CLIENT_CACHE_METADATA;
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    let sql: &[u8] = b"SELECT ? + 1 AS x, 'k' AS y";
    let string = |id| execute_one(id, 0xFE, b"\x017");
    let int = |id| execute_one(id, 0x08, &5i64.to_le_bytes());
    // (client, command): 0 = A, 1 = B; `None` prepares.
    type Cmd = (usize, Option<fn(u32) -> Vec<u8>>);
    let steps: [Cmd; 8] = [
        (0, None),
        (1, None),
        (0, Some(string)),
        // The server sent A these last: it leaves them out; B does not hold them.
        (1, Some(string)),
        (0, Some(string)),
        (1, Some(int)),
        // Left out by the server again (B's), and A holds the string's.
        (0, Some(int)),
        (0, Some(int)),
    ];
    let run = |port: u16| async move {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let (c, ok) = RawConn::login(port, USER, PASSWORD, caps).await;
            assert_eq!(ok[0], 0, "login failed: {ok:?}");
            conns.push(c);
        }
        let mut ids = [0u32; 2];
        let mut out = Vec::new();
        for (who, cmd) in steps {
            let c = &mut conns[who];
            let resp = match cmd {
                None => {
                    let mut r = c.command(&encode_simple(COM_STMT_PREPARE, sql)).await;
                    assert_eq!(r[0].1[0], 0, "{r:?}");
                    ids[who] = u32::from_le_bytes(r[0].1[1..5].try_into().unwrap());
                    r[0].1[1..5].copy_from_slice(&[0xAA; 4]);
                    r
                }
                Some(f) => c.command(&f(ids[who])).await,
            };
            out.push((who, resp));
        }
        out
    };
    let direct = run(h.topo.nodes[0].port).await;
    let proxied = run(h.addr.port()).await;
    for (i, (a, b)) in direct.iter().zip(&proxied).enumerate() {
        assert_eq!(a, b, "step {i} (left direct, right through sluice)");
    }
    let flags: Vec<u8> = direct[2..].iter().map(|(_, r)| r[0].1[1]).collect();
    assert_eq!(flags, [1, 1, 0, 1, 1, 0], "each client's own history");
    // What the server itself did on the shared connection: one statement (B's prepare
    // replaced A's) executed in the same order on one connection — the definitions were left
    // out at steps 4 and 7, where the clients needed them.
    let (mut c, _) = RawConn::login(h.topo.nodes[0].port, USER, PASSWORD, caps).await;
    let r = c.command(&encode_simple(COM_STMT_PREPARE, sql)).await;
    let id = u32::from_le_bytes(r[0].1[1..5].try_into().unwrap());
    let mut server = Vec::new();
    for (_, cmd) in &steps[2..] {
        server.push(c.command(&cmd.unwrap()(id)).await[0].1[1]);
    }
    assert_eq!(server, [1, 0, 0, 1, 0, 0]);
    h.shutdown().await;
}

#[tokio::test]
async fn shared_connection_cached_metadata_deprecate_eof() {
    shared_connection_cached_metadata(cap::CLIENT_DEPRECATE_EOF).await;
}

#[tokio::test]
async fn shared_connection_cached_metadata_classic_eof() {
    shared_connection_cached_metadata(0).await;
}

/// The column definitions a connection keeps for its statements are bounded
/// (`stmt_cache::MAX_METADATA_BYTES`, 256 KiB): beyond it the connection closes statements,
/// least recently used first, and an execution of a closed one prepares it again. The client
/// sees exactly what a direct connection shows it.
#[tokio::test]
async fn kept_column_definitions_are_bounded_per_connection() {
    let caps = cap::MARIADB_CLIENT_CACHE_METADATA | cap::CLIENT_DEPRECATE_EOF;
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    // Twenty statements of 180 columns with 60-character names: 15.5 KB of definitions each
    // (under the 16 KiB a session keeps per statement), 310 KB in all.
    let wide = |k: usize| -> Vec<u8> {
        let cols: Vec<String> = (0..180)
            .map(|i| format!("{k} AS c{i:0>4}_{}", "x".repeat(54)))
            .collect();
        format!("SELECT {}", cols.join(", ")).into_bytes()
    };
    let run = |port: u16, keep: bool| async move {
        let (mut c, ok) = RawConn::login(port, USER, PASSWORD, caps).await;
        assert_eq!(ok[0], 0, "login failed: {ok:?}");
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for k in 0..20 {
            let mut r = c.command(&encode_simple(COM_STMT_PREPARE, &wide(k))).await;
            assert_eq!(r[0].1[0], 0, "{:?}", &r[0]);
            ids.push(u32::from_le_bytes(r[0].1[1..5].try_into().unwrap()));
            r[0].1[1..5].copy_from_slice(&[0xAA; 4]);
            out.push(r);
        }
        for _ in 0..2 {
            for id in &ids {
                out.push(c.command(&encode_stmt_execute(*id, 0)).await);
            }
        }
        (out, keep.then_some(c))
    };
    // Through Sluice first, its client kept open while the server's count is read (a direct
    // client's statements would be counted until the server noticed its disconnect).
    let (proxied, client) = run(h.addr.port(), true).await;
    let count = prepared_count(h.topo.nodes[0].port).await;
    let (direct, _) = run(h.topo.nodes[0].port, false).await;
    assert_eq!(direct.len(), proxied.len());
    for (i, (a, b)) in direct.iter().zip(&proxied).enumerate() {
        assert!(
            a == b,
            "step {i} differs (direct {} packets, sluice {})",
            a.len(),
            b.len()
        );
    }
    // Every execution left the definitions out, as the client holds them from its prepare.
    assert!(direct[20..].iter().all(|r| r[0].1 == [180, 0]));
    // The server held fewer statements than the client did: Sluice closed some.
    assert!(
        (1..20).contains(&count),
        "{count} statements prepared on the server"
    );
    drop(client);
    h.shutdown().await;
}

/// The server's count of prepared statements (all connections).
async fn prepared_count(port: u16) -> u32 {
    let (mut c, _) = RawConn::login(port, USER, PASSWORD, 0).await;
    let r = c
        .command(&query(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'PREPARED_STMT_COUNT'",
        ))
        .await;
    let row = &r[r.len() - 2].1;
    std::str::from_utf8(&row[1..]).unwrap().parse().unwrap()
}

#[tokio::test]
async fn session_track_gtid_reaches_the_client() {
    let h = Harness::start(0).await;
    let caps = cap::CLIENT_DEPRECATE_EOF | cap::CLIENT_SESSION_TRACK;
    let (mut c, _) = RawConn::login(h.addr.port(), USER, PASSWORD, caps).await;
    for sql in [
        "SET SESSION session_track_system_variables = 'last_gtid'",
        "CREATE DATABASE g",
        "CREATE TABLE g.t (id INT PRIMARY KEY)",
    ] {
        let r = c.command(&query(sql)).await;
        assert_eq!(r[0].1[0], 0, "{sql}: {:?}", r);
    }
    // The monitor's heartbeat writes advance the binary log too: the INSERT's GTID is the one
    // between the positions read just before and just after it (comparing with the position
    // after alone raced with a heartbeat under load).
    let seq_of = |g: &str| -> (String, u64) {
        let (prefix, n) = g.trim().rsplit_once('-').expect("D-S-N");
        (prefix.to_string(), n.parse().expect("a sequence number"))
    };
    let before = seq_of(&h.root_sql(0, "SELECT @@gtid_binlog_pos").await);
    let r = c.command(&query("INSERT INTO g.t VALUES (1)")).await;
    let ok = OkPacket::parse(&r[0].1, c.caps).unwrap();
    let gtid = ok
        .system_variable(b"last_gtid")
        .expect("last_gtid tracked in the OK packet");
    let after = seq_of(&h.root_sql(0, "SELECT @@gtid_binlog_pos").await);
    let got = seq_of(&String::from_utf8_lossy(&gtid));
    assert_eq!(got.0, after.0, "domain and server of {gtid:?}");
    assert!(
        before.1 < got.1 && got.1 <= after.1,
        "last_gtid {gtid:?} is not the INSERT's: binlog went from {before:?} to {after:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn load_data_local_infile_raw() {
    let h = Harness::start(0).await;
    let mut outcomes = Vec::new();
    for port in [h.topo.nodes[0].port, h.addr.port()] {
        let (mut c, _) = RawConn::login(port, USER, PASSWORD, cap::CLIENT_DEPRECATE_EOF).await;
        c.command(&query("DROP DATABASE IF EXISTS li; CREATE DATABASE li; CREATE TABLE li.t (a INT, b VARCHAR(20))")).await;
        // Drain the remaining results of the multi-statement.
        c.write(
            0,
            &query("LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE li.t FIELDS TERMINATED BY ','"),
        )
        .await;
        let req = c.read_packet().await;
        assert_eq!(req.payload[0], 0xFB, "LOCAL INFILE request");
        assert_eq!(&req.payload[1..], b"rows.csv");
        let mut seq = req.seq.wrapping_add(1);
        let data: String = (0..3000).map(|i| format!("{i},row {i}\n")).collect();
        for chunk in data.as_bytes().chunks(10_000) {
            c.write(seq, chunk).await;
            seq = seq.wrapping_add(1);
        }
        c.write(seq, b"").await;
        let ok = c.read_packet().await;
        assert_eq!(ok.seq, seq.wrapping_add(1));
        let okp = OkPacket::parse(&ok.payload, c.caps).unwrap();
        let count = c.command(&query("SELECT COUNT(*), SUM(a) FROM li.t")).await;
        outcomes.push((ok.payload.to_vec(), okp.affected_rows, count));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[1].1, 3000);
    h.shutdown().await;
}

/// A client that vanishes in the middle of a `LOAD DATA LOCAL` (its file half sent, no final
/// empty packet): directly, the server abandons the statement and keeps none of the rows sent
/// so far; through Sluice the same — Sluice must not end the transfer on the client's behalf —
/// and the server connection, left mid-transfer, is not pooled: with one server connection
/// allowed, the next session works.
#[tokio::test]
async fn a_client_gone_in_the_middle_of_load_data_local_commits_nothing() {
    use std::time::Duration;
    let h = Harness::start_with(0, |c| c.proxy.max_backend_connections = 1).await;
    h.root_sql(0, "DROP DATABASE IF EXISTS lv").await;
    h.root_sql(0, "CREATE DATABASE lv").await;
    h.root_sql(0, "CREATE TABLE lv.t (a INT PRIMARY KEY, b VARCHAR(20))")
        .await;
    let mut kept = Vec::new();
    for (i, port) in [h.topo.nodes[0].port, h.addr.port()]
        .into_iter()
        .enumerate()
    {
        let (mut c, _) = RawConn::login(port, USER, PASSWORD, cap::CLIENT_DEPRECATE_EOF).await;
        c.write(
            0,
            &query("LOAD DATA LOCAL INFILE 'half.csv' INTO TABLE lv.t FIELDS TERMINATED BY ','"),
        )
        .await;
        let req = c.read_packet().await;
        assert_eq!(req.payload[0], 0xFB, "LOCAL INFILE request");
        // Unique keys per run: rows of the direct run cannot stand for the proxied one's.
        let base = i * 100_000;
        let data: String = (base..base + 3000)
            .map(|n| format!("{n},row {n}\n"))
            .collect();
        let mut seq = req.seq.wrapping_add(1);
        for chunk in data.as_bytes().chunks(10_000) {
            c.write(seq, chunk).await;
            seq = seq.wrapping_add(1);
        }
        drop(c);
        common::eventually(
            "the abandoned LOAD DATA to end on the server",
            Duration::from_secs(20),
            || async {
                h.root_sql(
                    0,
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'LOAD DATA%'",
                )
                .await
                .trim()
                    == "0"
            },
        )
        .await;
        let n = h
            .root_sql(
                0,
                &format!(
                    "SELECT COUNT(*) FROM lv.t WHERE a >= {base} AND a < {}",
                    base + 3000
                ),
            )
            .await;
        kept.push(n.trim().to_string());
    }
    assert_eq!(kept, ["0", "0"], "rows kept (direct, through Sluice)");
    // The one server connection was not handed on mid-transfer: a new session works.
    let mut c = h.proxy_conn().await;
    let one: Option<u32> = mysql_async::prelude::Queryable::query_first(&mut c, "SELECT 1")
        .await
        .expect("a session after the abandoned transfer");
    assert_eq!(one, Some(1));
    drop(c);
    h.shutdown().await;
}
