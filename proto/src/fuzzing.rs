//! The bodies of the fuzz targets (`proto/fuzz/`), here so that the corpus kept in the
//! repository is replayed by ordinary tests (`proto/tests/fuzz_corpus.rs`) on stable Rust.
//! Each takes arbitrary bytes; none may panic, and the invariants asserted must hold.

use bytes::BytesMut;

use crate::command::ChangeUser;
use crate::flags::cap;
use crate::lenenc::Reader;
use crate::stmt::StmtExecute;
use crate::tracker::{Progress, ResponseKind, ResponseTracker};
use crate::{auth_switch, command, eof, err, framing, handshake, handshake_response, ok};

/// Capabilities picked by a byte of fuzz input (the bits that change how packets are read).
fn caps(b: u8) -> u64 {
    let mut c = cap::CLIENT_PROTOCOL_41;
    for (bit, flag) in [
        cap::CLIENT_SECURE_CONNECTION,
        cap::CLIENT_PLUGIN_AUTH,
        cap::CLIENT_CONNECT_ATTRS,
        cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        cap::CLIENT_SESSION_TRACK,
        cap::CLIENT_DEPRECATE_EOF,
        cap::CLIENT_CONNECT_WITH_DB,
        cap::CLIENT_PROTOCOL_41,
    ]
    .into_iter()
    .enumerate()
    {
        if b & (1 << bit) != 0 {
            c |= flag;
        } else if flag == cap::CLIENT_PROTOCOL_41 {
            c &= !flag;
        }
    }
    c
}

/// Every decoder, and framing: never more than the buffer holds.
pub fn decode(data: &[u8]) {
    let c = caps(data.first().copied().unwrap_or(0));
    let _ = handshake::HandshakeV10::parse(data);
    let _ = handshake_response::HandshakeResponse41::parse(data);
    let _ = crate::ssl_request::SslRequest::parse(data);
    let _ = auth_switch::AuthSwitchRequest::parse(data);
    let _ = auth_switch::AuthMoreData::parse(data);
    if let Ok(o) = ok::OkPacket::parse(data, c) {
        let _ = o.session_state_entries().count();
        let _ = o.system_variable(b"last_gtid");
    }
    let _ = err::ErrPacket::parse(data);
    let _ = eof::EofPacket::parse(data);
    let _ = command::Command::parse(data, c);
    let mut buf = BytesMut::from(data);
    while let Ok(ext) = framing::check(&buf, 1 << 20) {
        assert!(ext.wire_len <= buf.len());
        let p = framing::parse(&mut buf, ext);
        assert_eq!(p.payload.len(), ext.payload_len);
    }
}

const KINDS: [ResponseKind; 8] = [
    ResponseKind::None,
    ResponseKind::Simple,
    ResponseKind::Statistics,
    ResponseKind::Query,
    ResponseKind::Execute,
    ResponseKind::Prepare,
    ResponseKind::FieldList,
    ResponseKind::Fetch,
];

/// The response tracker fed packet sequences: it may reject, never panic, and never accept a
/// packet after the end. Input: a selector byte (kind, EOF mode), then packets as a length
/// byte and that many bytes (255 = "a 16 MiB packet" whose first bytes follow). Selector bits:
/// kind (0-2), `CLIENT_DEPRECATE_EOF` (3), cached metadata (4).
pub fn tracker(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let mut t = ResponseTracker::new(KINDS[usize::from(sel & 7)], sel & 8 != 0)
        .with_cache_metadata(sel & 16 != 0);
    while let Some((&n, tail)) = rest.split_first() {
        let take = usize::from(n).min(tail.len()).min(254);
        let (p, tail) = tail.split_at(take);
        rest = tail;
        let len = if n == 255 { 0xFF_FFFF } else { p.len() };
        match t.feed(len, p) {
            Ok(Progress::Done(_)) => {
                assert!(t.is_done());
                assert!(t.feed(p.len(), p).is_err());
                return;
            }
            Ok(Progress::LocalInfile) => t.local_infile_sent(),
            Ok(Progress::More) => {}
            Err(_) => return,
        }
    }
}

/// The length-encoded readers driven by the input itself: each step a selector byte, then
/// the reader works on the rest. Reads never go past the end, and a value written back with
/// `put_lenenc_int` reads back equal.
pub fn lenenc(data: &[u8]) {
    let mut r = Reader::new(data);
    while let Some(op) = r.peek() {
        let _ = r.u8("op");
        let before = r.remaining();
        let ok = match op % 8 {
            0 => r.lenenc_int("int").map(|v| {
                let mut out = Vec::new();
                crate::lenenc::put_lenenc_int(&mut out, v);
                assert_eq!(Reader::new(&out).lenenc_int("again").unwrap(), v);
                assert_eq!(out.len(), crate::lenenc::lenenc_int_len(v));
            }),
            1 => r.lenenc_bytes("bytes").map(|b| assert!(b.len() <= before)),
            2 => r.nul_terminated("string").map(drop),
            3 => r.u16("u16").map(drop),
            4 => r.u24("u24").map(drop),
            5 => r.u64("u64").map(drop),
            6 => {
                let n = usize::from(op >> 3);
                r.bytes(n, "bytes").map(|b| assert_eq!(b.len(), n))
            }
            _ => {
                let _ = r.nul_terminated_or_rest();
                Ok(())
            }
        };
        assert!(r.remaining() <= before);
        if ok.is_err() {
            return;
        }
    }
}

/// HandshakeResponse41: a parsed response re-encodes to bytes that parse to the same value
/// (an optional trailing field that is absent and one that is present but empty are the same
/// thing on the wire).
pub fn handshake_response(data: &[u8]) {
    fn canonical(
        mut h: handshake_response::HandshakeResponse41,
    ) -> handshake_response::HandshakeResponse41 {
        for f in [&mut h.database, &mut h.auth_plugin, &mut h.connect_attrs] {
            if f.as_ref().is_some_and(Vec::is_empty) {
                *f = None;
            }
        }
        h
    }
    if let Ok(h) = handshake_response::HandshakeResponse41::parse(data) {
        let again = handshake_response::HandshakeResponse41::parse(&h.encode())
            .expect("a re-encoded response parses");
        assert_eq!(
            canonical(again),
            canonical(h),
            "re-encoding changed the response"
        );
    }
}

/// COM_CHANGE_USER body under capabilities chosen by the first byte; a parsed value
/// re-encodes and parses to the same value.
pub fn change_user(data: &[u8]) {
    let Some((&c, body)) = data.split_first() else {
        return;
    };
    let c = caps(c) | cap::CLIENT_SECURE_CONNECTION;
    if let Ok(cu) = ChangeUser::parse(body, c) {
        let bytes = cu.encode(c);
        if cu.auth_response.len() <= 255 && !cu.database.contains(&0) {
            let again = ChangeUser::parse(&bytes[1..], c);
            assert!(again.is_ok(), "re-encoded COM_CHANGE_USER does not parse");
        }
    }
}

/// COM_STMT_EXECUTE body for a parameter count given by the first two bytes: parsing and
/// value checking never read past the packet.
pub fn stmt_execute(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let params = u16::from_le_bytes([data[0], data[1]]) % 512;
    let body = &data[2..];
    if let Ok(e) = StmtExecute::parse(body, params) {
        if let Some(t) = e.types {
            assert_eq!(t.len(), 2 * usize::from(params));
            let _ = e.check_values(t);
        }
        assert!(e.null_bitmap.len() <= body.len());
        let _ = e.check_values(&body[..body.len().min(2 * usize::from(params))]);
    }
}

/// Runs the named target (for corpus replay).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "decode" => decode(data),
        "tracker" => tracker(data),
        "lenenc" => lenenc(data),
        "handshake_response" => handshake_response(data),
        "change_user" => change_user(data),
        "stmt_execute" => stmt_execute(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The targets, by name.
pub const TARGETS: [&str; 6] = [
    "decode",
    "tracker",
    "lenenc",
    "handshake_response",
    "change_user",
    "stmt_execute",
];
