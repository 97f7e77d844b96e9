//! Golden packets captured from MariaDB 10.11.19 by `golden/capture.py` (an independent Python
//! client): every packet kind decodes, re-encodes to the same bytes where sluice-proto encodes
//! it, and every captured response is tracked to its exact last packet.

use sluice_proto::auth_switch::AuthSwitchRequest;
use sluice_proto::eof::EofPacket;
use sluice_proto::err::ErrPacket;
use sluice_proto::flags::{cap, status};
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::ok::OkPacket;
use sluice_proto::tracker::{Outcome, Progress, ResponseKind, ResponseTracker};

fn load(name: &str) -> Vec<(u8, Vec<u8>)> {
    let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(|l| {
            let (seq, hex) = l.split_once(' ').expect("seq hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (seq.parse().unwrap(), bytes)
        })
        .collect()
}

/// Feeds a captured response; asserts it ends exactly at its last packet and returns how.
fn track(name: &str, kind: ResponseKind, deprecate_eof: bool) -> Outcome {
    let packets = load(name);
    let mut t = ResponseTracker::new(kind, deprecate_eof);
    for (i, (_, p)) in packets.iter().enumerate() {
        let progress = t
            .feed(p.len(), p)
            .unwrap_or_else(|e| panic!("{name} packet {i}: {e}"));
        let last = i == packets.len() - 1;
        match progress {
            Progress::Done(o) => {
                assert!(last, "{name}: response ended early at packet {i}");
                return o;
            }
            Progress::More => assert!(!last, "{name}: response not finished at its last packet"),
            Progress::LocalInfile => panic!("{name}: unexpected LOCAL INFILE"),
        }
    }
    unreachable!()
}

const SESSION_CAPS: u64 = cap::CLIENT_PROTOCOL_41 | cap::CLIENT_SESSION_TRACK;

#[test]
fn handshake_v10() {
    let p = &load("handshake")[0];
    assert_eq!(p.0, 0);
    let h = HandshakeV10::parse(&p.1).unwrap();
    assert!(
        h.server_version.starts_with(b"5.5.5-10.11"),
        "{:?}",
        String::from_utf8_lossy(&h.server_version)
    );
    assert_eq!(h.auth_data.len(), 20);
    assert_eq!(h.auth_plugin, b"mysql_native_password");
    assert_eq!(h.status, status::SERVER_STATUS_AUTOCOMMIT);
    // MariaDB clears CLIENT_MYSQL and sends extended capabilities.
    assert_eq!(h.capabilities & cap::CLIENT_LONG_PASSWORD, 0);
    assert_ne!(h.capabilities >> 32, 0);
    assert_ne!(h.capabilities & cap::CLIENT_DEPRECATE_EOF, 0);
    assert_eq!(h.encode(), p.1, "re-encodes byte for byte");
}

#[test]
fn ok_packets() {
    for name in [
        "login_ok",
        "ping_ok",
        "query_ok_begin",
        "query_ok_commit",
        "query_ok_insert",
    ] {
        let p = &load(name)[0].1;
        let ok = OkPacket::parse(p, cap::CLIENT_PROTOCOL_41).unwrap();
        assert_eq!(ok.encode(cap::CLIENT_PROTOCOL_41), *p, "{name}");
    }
    let begin = OkPacket::parse(&load("query_ok_begin")[0].1, 0).unwrap();
    assert_ne!(begin.status & status::SERVER_STATUS_IN_TRANS, 0);
    let insert = OkPacket::parse(&load("query_ok_insert")[0].1, 0).unwrap();
    assert_eq!(insert.affected_rows, 3);
    assert_eq!(
        String::from_utf8_lossy(&insert.info),
        "Records: 3  Duplicates: 0  Warnings: 0"
    );
}

#[test]
fn ok_with_session_state_gtid() {
    let p = &load("ok_session_track_gtid")[0].1;
    let ok = OkPacket::parse(p, SESSION_CAPS).unwrap();
    assert_ne!(ok.status & status::SERVER_SESSION_STATE_CHANGED, 0);
    let gtid = ok.system_variable(b"last_gtid").expect("last_gtid");
    assert!(
        gtid.starts_with(b"0-1-"),
        "{:?}",
        String::from_utf8_lossy(&gtid)
    );
    assert_eq!(ok.encode(SESSION_CAPS), *p);
}

#[test]
fn err_packets() {
    let denied = load("err_access_denied");
    let e = ErrPacket::parse(&denied[0].1).unwrap();
    assert_eq!((e.code, &e.sql_state), (1045, b"28000"));
    assert!(String::from_utf8_lossy(&e.message).starts_with("Access denied for user 'app'@"));
    assert_eq!(e.encode(), denied[0].1);
    let q = load("query_error");
    let e = ErrPacket::parse(&q[0].1).unwrap();
    assert_eq!(e.code, 1146);
    assert_eq!(e.encode(), q[0].1);
}

#[test]
fn auth_switch_request() {
    let pk = load("auth_switch");
    let sw = AuthSwitchRequest::parse(&pk[0].1).unwrap();
    assert_eq!(sw.plugin, b"mysql_native_password");
    assert_eq!(sw.data.len(), 20);
    assert_eq!(sw.encode(), pk[0].1);
    // After the switch the login succeeded with the native token for the new salt.
    assert_eq!(pk[1].1[0], 0x00);
    assert_eq!(pk[1].0, pk[0].0 + 2);
}

#[test]
fn eof_packets() {
    let rs = load("query_resultset_classic");
    let eofs: Vec<_> = rs.iter().filter(|(_, p)| EofPacket::is_eof(p)).collect();
    assert_eq!(eofs.len(), 2);
    for (_, p) in eofs {
        let e = EofPacket::parse(p).unwrap();
        assert_eq!(e.encode().to_vec(), *p);
    }
    let opt = EofPacket::parse(&load("set_option_eof")[0].1).unwrap();
    assert_eq!(opt.status, status::SERVER_STATUS_AUTOCOMMIT);
}

#[test]
fn tracker_on_real_responses() {
    let ac = status::SERVER_STATUS_AUTOCOMMIT;
    let done = |s| Outcome {
        status: Some(s),
        error: false,
    };
    // Index-usage hints vary with the plan; compare the session-state flags only.
    let track = |name: &str, kind, dep| {
        let mut o = track(name, kind, dep);
        o.status = o.status.map(|s| {
            s & !(status::SERVER_QUERY_NO_INDEX_USED | status::SERVER_QUERY_NO_GOOD_INDEX_USED)
        });
        o
    };
    assert_eq!(
        track("query_resultset_classic", ResponseKind::Query, false),
        done(ac)
    );
    assert_eq!(
        track("query_resultset_deprecate", ResponseKind::Query, true)
            .status
            .map(|s| s & 0xFF),
        Some(ac)
    );
    assert_eq!(
        track("query_multi_classic", ResponseKind::Query, false),
        done(ac)
    );
    assert_eq!(
        track("query_multi_deprecate", ResponseKind::Query, true)
            .status
            .map(|s| s & 0xFF),
        Some(ac)
    );
    assert_eq!(
        track("query_error", ResponseKind::Query, false),
        Outcome {
            status: None,
            error: true
        }
    );
    assert_eq!(
        track("field_list_classic", ResponseKind::FieldList, false),
        done(ac)
    );
    assert!(!track("field_list_deprecate", ResponseKind::FieldList, true).error);
    assert_eq!(
        track("prepare_classic", ResponseKind::Prepare, false),
        done(ac)
    );
    assert!(!track("prepare_deprecate", ResponseKind::Prepare, true).error);
    let cursor = status::SERVER_STATUS_CURSOR_EXISTS;
    assert_eq!(
        track("execute_cursor_classic", ResponseKind::Execute, false),
        done(ac | cursor)
    );
    assert_eq!(
        track("execute_cursor_deprecate", ResponseKind::Execute, true),
        done(ac | cursor)
    );
    assert_eq!(
        track("fetch_classic", ResponseKind::Fetch, false),
        done(ac | cursor)
    );
    let last = track("fetch_last_classic", ResponseKind::Fetch, false);
    assert_ne!(
        last.status.unwrap() & status::SERVER_STATUS_LAST_ROW_SENT,
        0
    );
    assert_eq!(
        track("statistics", ResponseKind::Statistics, false),
        Outcome {
            status: None,
            error: false
        }
    );
    assert_eq!(
        track("set_option_eof", ResponseKind::Simple, false),
        done(ac)
    );
    assert_eq!(track("ping_ok", ResponseKind::Simple, false), done(ac));
}

#[test]
fn local_infile_request_then_ok() {
    let pk = load("local_infile");
    let mut t = ResponseTracker::new(ResponseKind::Query, false);
    assert_eq!(
        t.feed(pk[0].1.len(), &pk[0].1).unwrap(),
        Progress::LocalInfile
    );
    assert_eq!(&pk[0].1[1..], b"golden.csv");
    t.local_infile_sent();
    match t.feed(pk[1].1.len(), &pk[1].1).unwrap() {
        Progress::Done(o) => assert!(!o.error),
        other => panic!("{other:?}"),
    }
    let ok = OkPacket::parse(&pk[1].1, 0).unwrap();
    assert_eq!(ok.affected_rows, 2);
    // The server's OK continues the sequence after the client's data and empty packet.
    assert_eq!(pk[1].0, pk[0].0 + 3);
}
