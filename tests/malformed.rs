//! More than 10,000 generated malformed inputs against the client port and the admin port:
//! garbage before and after the handshake, truncated packets, lengths larger than what
//! follows, lenenc 0xFE with 2^64−1, wrong sequence ids, packets of exactly 0xFFFFFF bytes,
//! random command packets after a valid login. After each batch, an existing session and a new
//! one still answer `SELECT 1`, and no panic happened anywhere in the process (a panic hook
//! counts them: a panicking session task would otherwise die quietly).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::raw::{RawConn, CLIENT_CAPS};
use common::Harness;
use mysql_async::prelude::Queryable;
use sluice_proto::flags::cap;
use sluice_proto::framing;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::native_token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What the run must give back: client sessions (admin `SHOW SESSIONS`), server connections
/// in use and idle (`SHOW SERVERS`), and this process's open file descriptors (Sluice runs in
/// it).
#[derive(Debug, Clone, Copy)]
struct Resources {
    sessions: usize,
    in_use: usize,
    idle: usize,
    fds: usize,
}

impl Resources {
    async fn now(admin: &mut mysql_async::Conn) -> Resources {
        let sessions: Vec<mysql_async::Row> = admin.query("SHOW SESSIONS").await.unwrap();
        let servers: Vec<mysql_async::Row> = admin.query("SHOW SERVERS").await.unwrap();
        let col = |r: &mysql_async::Row, name: &str| -> usize {
            r.get_opt::<String, _>(name)
                .and_then(Result::ok)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Resources {
            sessions: sessions.len(),
            in_use: servers.iter().map(|r| col(r, "conn_in_use")).sum(),
            idle: servers.iter().map(|r| col(r, "conn_idle")).sum(),
            fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        }
    }
}

/// A small deterministic generator (xorshift), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Up to `max - 1` random bytes.
    fn some(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    framing::write_packet(&mut out, seq, payload);
    out.to_vec()
}

fn header(len: usize, seq: u8) -> Vec<u8> {
    vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]
}

/// A handshake response for `user`/`password` against `salt`, as bytes.
fn response(user: &str, password: &str, salt: &[u8], caps: u64) -> Vec<u8> {
    HandshakeResponse41 {
        capabilities: caps,
        max_packet: 1 << 24,
        charset: 45,
        username: user.as_bytes().to_vec(),
        auth_response: native_token(password.as_bytes(), salt),
        database: None,
        auth_plugin: Some(b"mysql_native_password".to_vec()),
        connect_attrs: None,
        zstd_level: None,
    }
    .encode()
}

/// One malformed handshake: what to send after the greeting.
fn bad_handshake(rng: &mut Rng, salt: &[u8], user: &str, password: &str) -> (usize, Vec<u8>) {
    let caps = CLIENT_CAPS | cap::CLIENT_CONNECT_ATTRS;
    let case = rng.below(9);
    let bytes = match case {
        // Random bytes, not even framed.
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        // A frame of random bytes.
        1 => {
            let n = rng.below(300);
            frame(1, &rng.bytes(n))
        }
        // A valid response cut short (the frame says the cut length) inside its required
        // part: capabilities, sizes, filler, user name, authentication data. (What follows
        // — plugin name, attributes — servers and Sluice treat as optional: a response cut
        // after the authentication data is a complete login.)
        2 => {
            let r = response(user, password, salt, caps);
            let required = 32 + user.len() + 1 + 1 + 20;
            let cut = rng.below(required);
            frame(1, &r[..cut])
        }
        // A header that claims more than follows.
        3 => {
            let r = response(user, password, salt, caps);
            let mut out = header(r.len() + 1 + rng.below(5000), 1);
            out.extend_from_slice(&r);
            out
        }
        // A header of 0xFFFFFF (a multi-frame packet) with a few bytes.
        4 => {
            let mut out = header(0xFF_FFFF, 1);
            out.extend(rng.bytes(100));
            out
        }
        // lenenc 0xFE with 2^64-1 as the auth-response length.
        5 => {
            let mut p = (caps as u32 | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA as u32)
                .to_le_bytes()
                .to_vec();
            p.extend_from_slice(&(1u32 << 24).to_le_bytes());
            p.push(45);
            p.extend_from_slice(&[0; 23]);
            p.extend_from_slice(b"app\0");
            p.push(0xFE);
            p.extend_from_slice(&[0xFF; 8]);
            p.extend(rng.some(20));
            frame(1, &p)
        }
        // A valid response with a wrong sequence id.
        6 => frame(
            [0u8, 2, 3, 200, 255][rng.below(5)],
            &response(user, password, salt, caps),
        ),
        // 32 random bytes with CLIENT_SSL (an SSLRequest while TLS is off), or random 32.
        7 => {
            let mut p = rng.bytes(32);
            if rng.below(2) == 0 {
                p[1] |= 0x08;
            }
            frame(1, &p)
        }
        // Connect attributes whose lenenc length lies (the encoded response ends with an
        // empty attribute block, length 0: replaced by 65,535 and fewer bytes).
        _ => {
            let mut r = response(user, password, salt, caps);
            assert_eq!(
                r.pop(),
                Some(0),
                "the response ends with an empty attribute block"
            );
            r.extend_from_slice(&[0xFC, 0xFF, 0xFF]);
            r.extend(rng.some(30));
            frame(1, &r)
        }
    };
    (case, bytes)
}

/// Connects, takes the greeting, sends one malformed handshake, closes its side and expects
/// Sluice to close within the handshake deadline (an ERR, or nothing, may come first).
async fn one_bad_handshake(port: u16, rng: &mut Rng, user: &str, password: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.expect("a greeting");
    let len = usize::from(head[0]) | usize::from(head[1]) << 8;
    let mut g = vec![0u8; len];
    s.read_exact(&mut g).await.unwrap();
    let hello = sluice_proto::handshake::HandshakeV10::parse(&g).expect("greeting parses");
    let (case, bytes) = bad_handshake(rng, &hello.auth_data, user, password);
    let _ = s.write_all(&bytes).await;
    let _ = s.shutdown().await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("Sluice closed a malformed handshake within its deadline")
        .ok();
    // Whatever came back refuses the login: nothing, an ERR, or a request to switch the
    // authentication method (which this client never answers) — never an OK.
    if rest.len() >= 5 {
        assert!(
            matches!(rest[4], 0xFF | 0xFE),
            "malformed handshake (case {case}: {:02x?}) answered with something other than an ERR: {:02x?}",
            &bytes[..bytes.len().min(200)],
            &rest[..rest.len().min(40)]
        );
    }
}

/// A random command packet from a set that cannot harm the test servers (no SHUTDOWN, KILL,
/// DEBUG), malformed in random ways.
fn bad_command(rng: &mut Rng) -> Vec<u8> {
    const CODES: [u8; 16] = [
        0x02, 0x03, 0x04, 0x0E, 0x11, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x7F,
        0xEE,
    ];
    let code = CODES[rng.below(CODES.len())];
    let mut p = vec![code];
    match code {
        // Executions of statement 1 (`SELECT ?`, prepared at login) with random parameters.
        0x17 | 0x18 | 0x1C if rng.below(2) == 0 => {
            p.extend_from_slice(&1u32.to_le_bytes());
            p.extend(rng.some(40));
        }
        // A query of random bytes with a quote, so that it is never a statement.
        0x03 => {
            p.extend_from_slice(b"SELECT '");
            p.extend(rng.some(100));
        }
        _ => p.extend(rng.some(60)),
    }
    p
}

/// Logs in on the raw protocol and prepares statement 1 (`SELECT ?`).
async fn raw_session(port: u16, user: &str, password: &str, prepare: bool) -> RawConn {
    let (mut c, ok) = RawConn::login(port, user, password, 0).await;
    assert_eq!(ok[0], 0, "login: {ok:?}");
    if prepare {
        let r = c.command(b"\x16SELECT ?").await;
        assert_eq!(r[0].1[0], 0, "prepare: {r:?}");
    }
    c
}

/// Sends a marker query and reads until its answer: true when the session still works,
/// false when Sluice closed it (allowed after a malformed command).
async fn sync(c: &mut RawConn, marker: u32) -> bool {
    sync_first(c, marker).await.0
}

/// [`sync`], also returning the first packet that came back after the malformed command
/// (before the marker's answer), if any.
async fn sync_first(c: &mut RawConn, marker: u32) -> (bool, Option<Vec<u8>>) {
    let q = format!("\x03SELECT {marker}");
    let mut out = BytesMut::new();
    framing::write_packet(&mut out, 0, q.as_bytes());
    if c.stream.write_all(&out).await.is_err() {
        return (false, None);
    }
    let needle = marker.to_string();
    let mut first: Option<Vec<u8>> = None;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let Some(p) = c.try_read_packet().await else {
                return false;
            };
            if p.payload.len() > needle.len()
                && p.payload[1..] == *needle.as_bytes()
                && usize::from(p.payload[0]) == needle.len()
            {
                // The row; then the end of the result.
                return c.try_read_packet().await.is_some();
            }
            if first.is_none() {
                first = Some(p.payload.to_vec());
            }
        }
    })
    .await
    .expect("Sluice answered or closed within 10 s");
    (found, first)
}

async fn check_alive(h: &Harness, existing: &mut mysql_async::Conn, what: &str) {
    let v: Option<u64> = existing.query_first("SELECT 1").await.unwrap_or_else(|e| {
        panic!("an existing session broke after {what}: {e}");
    });
    assert_eq!(v, Some(1));
    let mut fresh = h.proxy_conn().await;
    let v: Option<u64> = fresh.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a panic happened during {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_inputs_on_both_ports() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    // Malformed handshakes count as failed logins; this suite sends thousands from one
    // address, so blocking is off here (tests/firewall.rs covers it).
    let h = Harness::start_with(0, |c| {
        c.firewall.max_connect_errors = 0;
        c.proxy.handshake_timeout_ms = 2_000;
    })
    .await;
    let port = h.addr.port();
    let admin_port = h.proxy.as_ref().unwrap().admin_addr.unwrap().port();
    let admin_pw = sluice::sandbox::ADMIN_PASSWORD;
    let mut existing = h.proxy_conn().await;
    let mut admin = mysql_async::Conn::new(h.opts(admin_port, "admin", admin_pw))
        .await
        .unwrap();
    let baseline = Resources::now(&mut admin).await;
    let mut rng = Rng(0x5EED_CAFE_F00D_D00D);
    let mut cases = 0usize;

    // 1. Client port, before authentication: 6,000 handshakes, 8 at a time.
    for batch in 0..12 {
        let mut tasks = Vec::new();
        for k in 0..8 {
            let mut r = Rng(rng.next() | 1);
            tasks.push(tokio::spawn(async move {
                for _ in 0..(500 / 8 + usize::from(k < 500 % 8)) {
                    one_bad_handshake(port, &mut r, "app", "app-pw").await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        cases += 500;
        check_alive(&h, &mut existing, &format!("handshake batch {batch}")).await;
    }

    // 2. Client port, after a valid login: 3,000 random command packets (some with wrong
    // sequence ids), each followed by a marker query.
    let mut c = raw_session(port, "app", "app-pw", true).await;
    let mut closed = 0;
    for i in 0..3_000u32 {
        let cmd = bad_command(&mut rng);
        let seq = if rng.below(20) == 0 {
            1 + rng.below(5) as u8
        } else {
            0
        };
        let _ = c.stream.write_all(&frame(seq, &cmd)).await;
        cases += 1;
        let (alive, reply) = sync_first(&mut c, 900_000 + i).await;
        // A command no server knows is answered with an error (1047), never ignored.
        if seq == 0 && matches!(cmd[0], 0x7F | 0xEE) && alive {
            let r = reply.unwrap_or_default();
            assert!(
                r.first() == Some(&0xFF) && r.get(1..3) == Some(&1047u16.to_le_bytes()[..]),
                "command 0x{:02x} answered with {:02x?}",
                cmd[0],
                &r[..r.len().min(20)]
            );
        }
        if !alive {
            closed += 1;
            c = raw_session(port, "app", "app-pw", true).await;
        }
        if i % 500 == 499 {
            check_alive(&h, &mut existing, &format!("command batch {i}")).await;
        }
    }
    // Packets of exactly 0xFFFFFF bytes: a 16 MiB query in two frames (its continuation
    // empty), and one left unfinished.
    for _ in 0..3 {
        let mut c = raw_session(port, "app", "app-pw", false).await;
        let mut p = vec![0x03];
        p.extend_from_slice(b"SELECT '");
        p.resize(0xFF_FFFF, b'a');
        let mut out = header(0xFF_FFFF, 0);
        out.extend_from_slice(&p);
        out.extend_from_slice(&header(0, 1));
        c.stream.write_all(&out).await.unwrap();
        let _ = sync(&mut c, 777).await;
        cases += 1;
    }
    let mut c2 = raw_session(port, "app", "app-pw", false).await;
    let mut out = header(0xFF_FFFF, 0);
    out.extend(vec![b'x'; 1000]);
    c2.stream.write_all(&out).await.unwrap();
    drop(c2);
    cases += 1;
    check_alive(&h, &mut existing, "0xFFFFFF packets").await;

    // 3. Admin port, before authentication: 1,000 handshakes.
    for _ in 0..1_000 {
        one_bad_handshake(admin_port, &mut rng, "admin", admin_pw).await;
        cases += 1;
    }
    // 4. Admin port, after login: 1,000 random statements and commands.
    let mut a = raw_session(admin_port, "admin", admin_pw, false).await;
    for i in 0..1_000u32 {
        let cmd = if rng.below(2) == 0 {
            let mut q = vec![0x03];
            let n = rng.below(80);
            q.extend(rng.bytes(n));
            q
        } else {
            bad_command(&mut rng)
        };
        let _ = a.stream.write_all(&frame(0, &cmd)).await;
        cases += 1;
        if !sync(&mut a, 4_000 + i).await {
            a = raw_session(admin_port, "admin", admin_pw, false).await;
        }
    }
    check_alive(&h, &mut existing, "the admin port suite").await;
    let servers: Vec<mysql_async::Row> = admin.query("SHOW SERVERS").await.unwrap();
    assert_eq!(servers.len(), 1);
    // Everything the run opened is gone again: sessions, server connections in use, and the
    // process's file descriptors (beyond idle pooled connections).
    drop(c);
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = Resources::now(&mut admin).await;
        let back = now.sessions == baseline.sessions
            && now.in_use == 0
            && now.fds <= baseline.fds + now.idle.saturating_sub(baseline.idle) + 4;
        if back {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back to the baseline {baseline:?} after the run: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(cases >= 10_000, "{cases} cases");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    eprintln!("{cases} malformed cases; {closed} client sessions closed by Sluice on the way");
    drop(existing);
    h.shutdown().await;
}
