//! GTIDs for read-your-writes, per server flavour.
//!
//! MariaDB: the session's last GTID is `@@last_gtid` (`0-1-42`), a replica waits with
//! `MASTER_GTID_WAIT`. MySQL has no `@@last_gtid`: Sluice turns on
//! `session_track_gtids = OWN_GTID` on its MySQL connections (`backend::connect`) and reads the GTID of each
//! committed transaction from the OK packet's session-state block (`SESSION_TRACK_GTIDS`);
//! when it has none (the tracking was reset, or the connection went back to the pool first) it
//! falls back to `@@global.gtid_executed`, a superset that includes the session's writes. A
//! replica waits with `WAIT_FOR_EXECUTED_GTID_SET`.
//!
//! The MySQL half is written from MySQL's protocol documentation and unit-tested on packets
//! built to that layout; it has not run against a MySQL server (none on these machines).

/// The statement that reads the session's last GTID (or a superset of it) on the primary.
pub fn read_last(mysql: bool, held: bool) -> &'static [u8] {
    match (mysql, held) {
        (true, _) => b"\x03SELECT @@global.gtid_executed",
        (false, true) => b"\x03SELECT @@last_gtid",
        (false, false) => b"\x03SELECT @@global.gtid_binlog_pos",
    }
}

/// [`read_last`] with `LAST_INSERT_ID()` before it (one round trip when a connection goes back).
pub fn read_insert_id_and_last(mysql: bool) -> &'static [u8] {
    if mysql {
        b"\x03SELECT LAST_INSERT_ID(), @@global.gtid_executed"
    } else {
        b"\x03SELECT LAST_INSERT_ID(), @@last_gtid"
    }
}

/// A GTID position or set as the server printed it, checked to contain only what GTIDs are
/// made of (it is quoted into a statement) and with MySQL's line breaks removed; `None` when
/// empty or not a GTID text.
pub fn clean(text: &[u8], mysql: bool) -> Option<String> {
    let ok = |b: u8| {
        b.is_ascii_digit()
            || b == b'-'
            || b == b','
            || (mysql && (b.is_ascii_hexdigit() || b == b':' || b == b'\n' || b == b'\r'))
    };
    if text.is_empty() || !text.iter().all(|&b| ok(b)) {
        return None;
    }
    let s: String = text
        .iter()
        .filter(|&&b| b != b'\n' && b != b'\r')
        .map(|&b| char::from(b))
        .collect();
    (!s.is_empty()).then_some(s)
}

/// The statement a replica runs to wait (at most `timeout_s`) until it applied `gtid`; it
/// answers `0` when it has.
pub fn wait_on_replica(mysql: bool, gtid: &str, timeout_s: f64) -> String {
    if mysql {
        format!("\u{3}SELECT WAIT_FOR_EXECUTED_GTID_SET('{gtid}', {timeout_s})")
    } else {
        format!("\u{3}SELECT MASTER_GTID_WAIT('{gtid}', {timeout_s})")
    }
}

/// The GTID set an OK packet reports for the transaction it committed (MySQL with
/// `session_track_gtids = OWN_GTID`): a `SESSION_TRACK_GTIDS` entry holding an encoding byte
/// (0: text) and the set as a length-encoded string.
pub fn own_gtid(ok: &[u8], caps: u64) -> Option<String> {
    use sluice_proto::ok::{session_track, OkPacket};
    let ok = OkPacket::parse(ok, caps).ok()?;
    let found = ok
        .session_state_entries()
        .filter_map(Result::ok)
        .find(|(kind, _)| *kind == session_track::GTIDS)?;
    let (&encoding, rest) = found.1.split_first()?;
    if encoding != 0 {
        return None;
    }
    let mut r = sluice_proto::lenenc::Reader::new(rest);
    let set = r.lenenc_bytes("gtids").ok()?;
    clean(set, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::flags::{cap, status};

    /// An OK packet as MySQL sends it after a commit with OWN_GTID tracking: the
    /// session-state block with one `SESSION_TRACK_GTIDS` entry (type 3, length, encoding 0,
    /// length-encoded set).
    fn ok_with_gtids(set: &[u8]) -> Vec<u8> {
        let mut entry = vec![0u8, set.len() as u8];
        entry.extend_from_slice(set);
        let mut block = vec![3u8, entry.len() as u8];
        block.extend_from_slice(&entry);
        let ok = sluice_proto::ok::OkPacket {
            header: 0,
            affected_rows: 1,
            last_insert_id: 0,
            status: status::SERVER_STATUS_AUTOCOMMIT | status::SERVER_SESSION_STATE_CHANGED,
            warnings: 0,
            info: Vec::new(),
            session_state: Some(block),
        };
        ok.encode(CAPS)
    }

    const CAPS: u64 =
        cap::CLIENT_PROTOCOL_41 | cap::CLIENT_SESSION_TRACK | cap::CLIENT_TRANSACTIONS;

    #[test]
    fn the_gtid_of_a_commit_is_read_from_the_ok_packet() {
        let set = b"3e11fa47-71ca-11e1-9e33-c80aa9429562:23";
        let ok = ok_with_gtids(set);
        assert_eq!(
            own_gtid(&ok, CAPS).as_deref(),
            Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:23")
        );
        // The bytes of that packet, as MySQL's documentation lays them out.
        assert_eq!(ok[0], 0x00);
        assert!(ok.windows(set.len()).any(|w| w == set));
        // No tracking block, or another entry only: nothing.
        let plain = sluice_proto::ok::OkPacket {
            header: 0,
            affected_rows: 1,
            last_insert_id: 0,
            status: status::SERVER_STATUS_AUTOCOMMIT,
            warnings: 0,
            info: Vec::new(),
            session_state: None,
        }
        .encode(CAPS);
        assert_eq!(own_gtid(&plain, CAPS), None);
        // A set with a quote in it is refused (it is quoted into a statement).
        assert_eq!(own_gtid(&ok_with_gtids(b"abc'; DROP"), CAPS), None);
    }

    #[test]
    fn gtid_texts_per_flavour() {
        assert_eq!(clean(b"0-1-42", false).as_deref(), Some("0-1-42"));
        assert_eq!(
            clean(b"0-1-42,1-2-7", false).as_deref(),
            Some("0-1-42,1-2-7")
        );
        assert_eq!(clean(b"", false), None);
        // MySQL's sets: UUIDs, colons, and a line break after each comma in gtid_executed.
        let executed =
            b"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3";
        assert_eq!(
            clean(executed, true).as_deref(),
            Some(
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3"
            )
        );
        // A MySQL set is not a MariaDB position.
        assert_eq!(clean(executed, false), None);
        assert_eq!(clean(b"1' OR '1", true), None);
        assert_eq!(
            wait_on_replica(true, "u:1-5", 1.5),
            "\u{3}SELECT WAIT_FOR_EXECUTED_GTID_SET('u:1-5', 1.5)"
        );
        assert_eq!(
            wait_on_replica(false, "0-1-42", 2.0),
            "\u{3}SELECT MASTER_GTID_WAIT('0-1-42', 2)"
        );
        assert_eq!(read_last(false, true), b"\x03SELECT @@last_gtid");
        assert_eq!(read_last(true, true), b"\x03SELECT @@global.gtid_executed");
    }
}
