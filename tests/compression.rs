//! The compressed protocol (`CLIENT_COMPRESS`): terminated by Sluice on the client side, and
//! per `[[servers]] compress` on the server side. What a compressed client sees must be what
//! an uncompressed one sees and what it sees directly; a frame that lies about its size, or
//! inflates past `max_packet_bytes`, is refused without the allocation it asks for.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::raw::RawConn;
use common::{cli, eventually, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::{Compression, Conn, OptsBuilder, Row};
use sluice_proto::compress::{self, Algorithm, FrameHead, HEADER_LEN};
use sluice_proto::flags::cap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A reproducible pseudo-random byte string (compresses badly, unlike repeated text).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Everything a client sees of a workload: result rows (as text), affected rows and last
/// insert ids, and errors.
async fn workload(opts: OptsBuilder, tag: &str) -> Vec<String> {
    let mut c = Conn::new(opts).await.expect("connect");
    let mut seen = Vec::new();
    // A transaction: everything on the primary, so direct and proxied runs see the same rows.
    c.query_drop("START TRANSACTION").await.unwrap();
    let big = noise(3 << 20, 7);
    let text = "compressible ".repeat(200_000);
    c.exec_drop(
        "INSERT INTO zc.t (tag, body, note) VALUES (?, ?, ?)",
        (tag, &big, &text),
    )
    .await
    .unwrap();
    seen.push(format!("affected {}", c.affected_rows()));
    let rows: Vec<(Vec<u8>, String)> = c
        .exec(
            "SELECT body, note FROM zc.t WHERE tag = ? ORDER BY id",
            (tag,),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    seen.push(format!("body equal {}", rows[0].0 == big));
    seen.push(format!("note len {}", rows[0].1.len()));
    // A big text-protocol result: many small rows (many packets per frame).
    let many: Vec<Row> = c
        .query("SELECT seq, CONCAT('row-', seq, REPEAT('x', seq % 300)) FROM zc.seq_1_to_20000")
        .await
        .unwrap();
    let digest: u64 = many
        .iter()
        .map(|r| {
            let s: String = r.get(1).unwrap();
            s.len() as u64
        })
        .sum();
    seen.push(format!("rows {} bytes {digest}", many.len()));
    // An error in the middle, and the session goes on.
    match c.query_drop("SELECT * FROM zc.no_such_table").await {
        Err(mysql_async::Error::Server(e)) => seen.push(format!("error {}", e.code)),
        other => panic!("expected a server error: {other:?}"),
    }
    let md5: String = c
        .query_first("SELECT MD5(GROUP_CONCAT(body ORDER BY id)) FROM zc.t WHERE tag = 'seed'")
        .await
        .unwrap()
        .unwrap();
    seen.push(format!("seed md5 {md5}"));
    c.query_drop("ROLLBACK").await.unwrap();
    c.disconnect().await.unwrap();
    seen
}

/// Waits until a read through Sluice (on the replica) counts `want`.
async fn replica_has(h: &Harness, count: &'static str, want: i64) {
    eventually(count, Duration::from_secs(30), || {
        let opts = h.proxy_opts();
        async move {
            let Ok(mut c) = Conn::new(opts).await else {
                return false;
            };
            let n: Option<i64> = c.query_first(count).await.unwrap_or(None);
            n == Some(want)
        }
    })
    .await;
}

/// The server's `Compression` status for the connection a statement of this session runs on.
async fn server_side_compression(c: &mut Conn) -> String {
    let row: Option<(String, String)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Compression'")
        .await
        .unwrap();
    row.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_clients_see_what_uncompressed_and_direct_clients_see() {
    // Compressed to the replica, uncompressed to the primary: both hops in one topology.
    let h = Harness::start_with(1, |c| {
        c.servers[1].compress = true;
    })
    .await;
    let mut d = h.direct_conn().await;
    d.query_drop("CREATE DATABASE zc").await.unwrap();
    d.query_drop(
        "CREATE TABLE zc.t (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(40), \
         body LONGBLOB, note LONGTEXT)",
    )
    .await
    .unwrap();
    d.exec_drop(
        "INSERT INTO zc.t (tag, body, note) VALUES ('seed', ?, 'a'), ('seed', ?, 'b')",
        (noise(100_000, 1), noise(200_000, 2)),
    )
    .await
    .unwrap();

    let zipped = || h.proxy_opts().compression(Some(Compression::fast()));
    let direct = workload(h.direct_opts(), "direct").await;
    let plain = workload(h.proxy_opts(), "plain").await;
    let compressed = workload(zipped(), "compressed").await;
    let direct_compressed = workload(
        h.direct_opts().compression(Some(Compression::fast())),
        "direct-compressed",
    )
    .await;
    assert_eq!(plain, direct, "uncompressed through Sluice vs direct");
    assert_eq!(compressed, direct, "compressed through Sluice vs direct");
    assert_eq!(direct_compressed, direct);

    // The server hop follows `[[servers]] compress`, whatever the client does: reads outside
    // a transaction go to the (compressed) replica, a transaction to the (plain) primary.
    let mut c = Conn::new(zipped()).await.unwrap();
    let mut p = h.proxy_conn().await;
    replica_has(&h, "SELECT COUNT(*) FROM zc.t WHERE tag = 'seed'", 2).await;
    for conn in [&mut c, &mut p] {
        assert_eq!(server_side_compression(conn).await, "ON", "replica hop");
        let md5: String = conn
            .query_first("SELECT MD5(GROUP_CONCAT(body ORDER BY id)) FROM zc.t WHERE tag = 'seed'")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(md5, direct.last().unwrap().trim_start_matches("seed md5 "));
        conn.query_drop("START TRANSACTION").await.unwrap();
        assert_eq!(server_side_compression(conn).await, "OFF", "primary hop");
        conn.query_drop("COMMIT").await.unwrap();
    }

    // The mariadb CLI with --compress: a LOAD DATA LOCAL of 200,000 lines and a big result,
    // byte for byte the same as uncompressed and direct.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.csv");
    let mut csv = String::new();
    for i in 0..200_000u32 {
        csv.push_str(&format!("{i},line {i} {}\n", "y".repeat((i % 97) as usize)));
    }
    std::fs::write(&file, &csv).unwrap();
    d.query_drop("CREATE TABLE zc.ld (k INT PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE zc.ld FIELDS TERMINATED BY ','; \
         SELECT COUNT(*), MD5(GROUP_CONCAT(v ORDER BY k SEPARATOR '|')) FROM zc.ld",
        file.display()
    );
    let mut loaded = Vec::new();
    for (port, flags) in [
        (h.topo.nodes[0].port, &["--local-infile=1"][..]),
        (h.addr.port(), &["--local-infile=1", "--compress"][..]),
    ] {
        d.query_drop("TRUNCATE zc.ld").await.unwrap();
        let mut args = flags.to_vec();
        args.extend(["-N", "-e", "SET SESSION group_concat_max_len = 1 << 30"]);
        let (ok, _, err) = cli(port, &args).await;
        assert!(ok, "{err}");
        let mut args = flags.to_vec();
        let script = format!("SET SESSION group_concat_max_len = 1 << 30; {load}");
        args.extend(["-N", "-e", &script]);
        let (ok, out, err) = cli(port, &args).await;
        assert!(ok, "LOAD DATA LOCAL via port {port} {flags:?}: {err}");
        loaded.push(out);
    }
    assert!(loaded[0].starts_with("200000\t"), "{:?}", loaded[0]);
    assert_eq!(loaded[1], loaded[0], "LOAD DATA LOCAL compressed vs direct");
    // Reads go to the replica: wait until it has the rows.
    replica_has(&h, "SELECT COUNT(*) FROM zc.ld", 200_000).await;
    let query = "SELECT k, v FROM zc.ld ORDER BY k";
    let (ok, direct_out, _) = cli(h.topo.nodes[0].port, &["-N", "-e", query]).await;
    assert!(ok);
    let (ok, zipped_out, err) = cli(h.addr.port(), &["-N", "--compress", "-e", query]).await;
    assert!(ok, "{err}");
    assert_eq!(direct_out.len(), zipped_out.len());
    assert!(direct_out == zipped_out, "CLI result compressed vs direct");
    h.shutdown().await;
}

/// Logs in with `CLIENT_COMPRESS`; from then on the stream is framed.
async fn compressed_login(port: u16) -> RawConn {
    compressed_login_with(port, cap::CLIENT_COMPRESS).await
}

/// Logs in asking for `flag` (`CLIENT_COMPRESS` or `CLIENT_ZSTD_COMPRESSION`).
async fn compressed_login_with(port: u16, flag: u64) -> RawConn {
    let (c, ok) = RawConn::login(port, common::USER, common::PASSWORD, flag).await;
    assert_eq!(ok.first(), Some(&0x00), "login: {ok:?}");
    assert!(c.caps & flag != 0, "{flag:#x} offered");
    c
}

/// One frame holding `payload` (deflated), with `claim` as the stated inflated length.
fn frame(payload: &[u8], seq: u8, claim: usize) -> Vec<u8> {
    frame_with(Algorithm::Zlib, payload, seq, claim)
}

/// [`frame`] with either algorithm.
fn frame_with(a: Algorithm, payload: &[u8], seq: u8, claim: usize) -> Vec<u8> {
    let mut z = compress::Deflater::new(a, 6);
    let mut out = BytesMut::new();
    // Compress through the library's framing, then restate the claimed length.
    compress::deflate_frame(&mut z, payload, seq, &mut out);
    let head = FrameHead::peek(&out).unwrap();
    if head.plain_len == 0 {
        // Short payloads go stored; their claim is the length itself.
        assert_eq!(
            claim,
            payload.len(),
            "a stored frame cannot lie about its length"
        );
        return out.to_vec();
    }
    out[4..7].copy_from_slice(&(claim as u32).to_le_bytes()[..3]);
    out.to_vec()
}

/// Reads what Sluice sends until it closes, inflated; `None` if it did not close in time.
async fn read_until_closed(c: &mut RawConn) -> Option<Vec<u8>> {
    read_until_closed_with(c, Algorithm::Zlib).await
}

/// [`read_until_closed`] with either algorithm.
async fn read_until_closed_with(c: &mut RawConn, a: Algorithm) -> Option<Vec<u8>> {
    let mut wire = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match c.stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => wire.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()?;
    let mut plain = BytesMut::new();
    let mut z = compress::Inflater::new(a).unwrap();
    let mut at = 0;
    while let Some(h) = FrameHead::peek(&wire[at..]) {
        let body = &wire[at + HEADER_LEN..at + HEADER_LEN + h.len];
        compress::inflate(&mut z, &h, body, &mut plain).expect("Sluice's own frames inflate");
        at += HEADER_LEN + h.len;
    }
    Some(plain.to_vec())
}

/// The error code of the first ERR packet in a plain packet stream.
fn err_code(plain: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 4 <= plain.len() {
        let len = usize::from(plain[at])
            | usize::from(plain[at + 1]) << 8
            | usize::from(plain[at + 2]) << 16;
        let p = plain.get(at + 4..at + 4 + len)?;
        if p.first() == Some(&0xFF) {
            return Some(u16::from_le_bytes([p[1], p[2]]));
        }
        at += 4 + len;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_corrupt_and_oversized_frames_are_refused_and_others_go_on() {
    let h = Harness::start_with(0, |c| {
        c.proxy.max_packet_bytes = 1 << 20;
    })
    .await;
    let port = h.addr.port();
    // A bystander session that must not notice anything.
    let mut bystander = Conn::new(h.proxy_opts().compression(Some(Compression::fast())))
        .await
        .unwrap();
    let clients = || {
        h.proxy
            .as_ref()
            .unwrap()
            .shared
            .clients
            .load(Ordering::SeqCst)
    };
    let baseline = clients();

    // A well-formed compressed query works on the raw client.
    let mut c = compressed_login(port).await;
    let mut query = vec![0, 0, 0, 0, 0x03];
    query.extend_from_slice(format!("SELECT '{}'", "z".repeat(200)).as_bytes());
    let len = query.len() - 4;
    query[..3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
    c.stream
        .write_all(&frame(&query, 0, query.len()))
        .await
        .unwrap();
    c.stream
        .write_all(&frame(&[1, 0, 0, 0, 0x01], 1, 5)[..])
        .await
        .ok();
    let answer = read_until_closed(&mut c).await.expect("COM_QUIT closes");
    assert!(
        answer.windows(200).any(|w| w == "z".repeat(200).as_bytes()),
        "the compressed query's result"
    );

    // 1. A zip bomb: a query followed by 16 MiB of zeros (which deflate to ~16 KiB), in a
    //    frame that claims only the query's length. Refused after one byte past the claim:
    //    the connection is closed and the query is not run (neither cut to the claim nor
    //    inflated whole).
    let mut c = compressed_login(port).await;
    let marker = "bomb-marker-".repeat(8);
    let mut bomb = vec![0, 0, 0, 0, 0x03];
    bomb.extend_from_slice(format!("SELECT '{marker}'").as_bytes());
    let len = bomb.len() - 4;
    bomb[..3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
    let claim = bomb.len();
    bomb.resize(compress::MAX_FRAME, 0);
    c.stream.write_all(&frame(&bomb, 0, claim)).await.unwrap();
    let reply = read_until_closed(&mut c)
        .await
        .expect("a frame that inflates past its claim closes the session");
    assert!(
        !reply.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the lying frame's query ran"
    );

    // 2. A frame whose claim exceeds max_packet_bytes: 1153 on its header, nothing inflated.
    let mut c = compressed_login(port).await;
    let mut head = vec![0u8; HEADER_LEN];
    head[..3].copy_from_slice(&100u32.to_le_bytes()[..3]);
    head[4..7].copy_from_slice(&(8u32 << 20).to_le_bytes()[..3]);
    c.stream.write_all(&head).await.unwrap();
    let reply = read_until_closed(&mut c).await.expect("closed");
    assert_eq!(err_code(&reply), Some(1153), "{reply:?}");

    // 3. A packet over max_packet_bytes sent in many honest frames: 1153 as uncompressed.
    let mut c = compressed_login(port).await;
    let mut big = vec![0u8; 4];
    let body = 2usize << 20;
    big[..3].copy_from_slice(&(body as u32).to_le_bytes()[..3]);
    big.push(0x03);
    big.extend(std::iter::repeat_n(b'a', body - 1));
    for (i, chunk) in big.chunks(60_000).enumerate() {
        if c.stream
            .write_all(&frame(chunk, i as u8, chunk.len()))
            .await
            .is_err()
        {
            break;
        }
    }
    let reply = read_until_closed(&mut c).await.expect("closed");
    assert_eq!(err_code(&reply), Some(1153), "{reply:?}");

    // 4. Not zlib at all.
    let mut c = compressed_login(port).await;
    let mut junk = vec![40, 0, 0, 0, 64, 0, 0];
    junk.extend_from_slice(&[0x5a; 40]);
    c.stream.write_all(&junk).await.unwrap();
    assert!(read_until_closed(&mut c).await.is_some(), "corrupt frame");

    // 5. A frame cut short, then the client waits: the session does not hang on it forever
    //    (the idle timeout is the server's), but the bystander is unaffected meanwhile.
    let v: Option<String> = bystander.query_first("SELECT 'still here'").await.unwrap();
    assert_eq!(v.as_deref(), Some("still here"));

    // The refused sessions are gone.
    eventually(
        "sessions back to the baseline",
        Duration::from_secs(10),
        || {
            let n = clients();
            async move { n == baseline }
        },
    )
    .await;
    bystander.disconnect().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_clients_are_served_and_zstd_bombs_refused() {
    // No MariaDB client speaks zstd (MySQL 8.0.18+ clients do): a raw client asks for
    // CLIENT_ZSTD_COMPRESSION_ALGORITHM (level 3, after the connection attributes).
    let h = Harness::start_with(0, |c| {
        c.proxy.max_packet_bytes = 1 << 20;
    })
    .await;
    let port = h.addr.port();
    let zstd = Algorithm::Zstd(3);
    let mut c = compressed_login_with(port, cap::CLIENT_ZSTD_COMPRESSION).await;
    assert_eq!(c.caps & cap::CLIENT_COMPRESS, 0, "only zstd was asked for");
    let marker = "zstd-".repeat(60);
    let mut query = vec![0, 0, 0, 0, 0x03];
    query.extend_from_slice(format!("SELECT '{marker}', REPEAT('r', 100000)").as_bytes());
    let len = query.len() - 4;
    query[..3].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
    c.stream
        .write_all(&frame_with(zstd, &query, 0, query.len()))
        .await
        .unwrap();
    c.stream
        .write_all(&frame_with(zstd, &[1, 0, 0, 0, 0x01], 1, 5))
        .await
        .unwrap();
    let answer = read_until_closed_with(&mut c, zstd)
        .await
        .expect("COM_QUIT closes");
    assert!(
        answer.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the zstd query's result"
    );
    assert!(
        answer
            .windows(100_000)
            .any(|w| w.iter().all(|&b| b == b'r')),
        "a 100 kB value in zstd frames"
    );
    // A zstd bomb: a query plus 16 MiB of zeros claiming only the query's length.
    let mut c = compressed_login_with(port, cap::CLIENT_ZSTD_COMPRESSION).await;
    let mut bomb = query.clone();
    let claim = bomb.len();
    bomb.resize(compress::MAX_FRAME, 0);
    c.stream
        .write_all(&frame_with(zstd, &bomb, 0, claim))
        .await
        .unwrap();
    let reply = read_until_closed_with(&mut c, zstd)
        .await
        .expect("a frame that inflates past its claim closes the session");
    assert!(
        !reply.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the lying frame's query ran"
    );
    // A claim over max_packet_bytes: 1153 from the header.
    let mut c = compressed_login_with(port, cap::CLIENT_ZSTD_COMPRESSION).await;
    let mut head = vec![0u8; HEADER_LEN];
    head[..3].copy_from_slice(&100u32.to_le_bytes()[..3]);
    head[4..7].copy_from_slice(&(8u32 << 20).to_le_bytes()[..3]);
    c.stream.write_all(&head).await.unwrap();
    let reply = read_until_closed_with(&mut c, zstd).await.expect("closed");
    assert_eq!(err_code(&reply), Some(1153), "{reply:?}");
    // Not zstd at all.
    let mut c = compressed_login_with(port, cap::CLIENT_ZSTD_COMPRESSION).await;
    let mut junk = vec![40, 0, 0, 0, 64, 0, 0];
    junk.extend_from_slice(&[0x5a; 40]);
    c.stream.write_all(&junk).await.unwrap();
    assert!(read_until_closed_with(&mut c, zstd).await.is_some());
    h.shutdown().await;
}
