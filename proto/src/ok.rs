//! The OK packet, including its session-state block (`CLIENT_SESSION_TRACK`).

use crate::flags::{cap, status};
use crate::lenenc::{put_lenenc_bytes, put_lenenc_int, Reader};
use crate::ProtoError;

/// Header byte of an OK packet.
pub const OK_HEADER: u8 = 0x00;
/// Header byte of an OK packet that ends a result set under `CLIENT_DEPRECATE_EOF`.
pub const OK_EOF_HEADER: u8 = 0xFE;

/// Session-state change types inside an OK packet.
pub mod session_track {
    pub const SYSTEM_VARIABLES: u8 = 0;
    pub const SCHEMA: u8 = 1;
    pub const STATE_CHANGE: u8 = 2;
    pub const GTIDS: u8 = 3;
    pub const TRANSACTION_CHARACTERISTICS: u8 = 4;
    pub const TRANSACTION_STATE: u8 = 5;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkPacket {
    /// 0x00, or 0xFE when it ends a result set under `CLIENT_DEPRECATE_EOF`.
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: Vec<u8>,
    /// The raw session-state block (present when `SERVER_SESSION_STATE_CHANGED` is set and the
    /// client has `CLIENT_SESSION_TRACK`).
    pub session_state: Option<Vec<u8>>,
}

impl OkPacket {
    /// Parses an OK packet. `capabilities` are the negotiated ones (they decide whether the
    /// info string is length-encoded and whether a session-state block may follow).
    pub fn parse(payload: &[u8], capabilities: u64) -> Result<Self, ProtoError> {
        let mut r = Reader::new(payload);
        let header = r.u8("header")?;
        if header != OK_HEADER && header != OK_EOF_HEADER {
            return Err(ProtoError::Invalid("not an OK packet"));
        }
        let affected_rows = r.lenenc_int("affected rows")?;
        let last_insert_id = r.lenenc_int("last insert id")?;
        let status = r.u16("status flags")?;
        // Protocol 4.1 always has warnings; servers of this age are all 4.1.
        let warnings = r.u16("warnings")?;
        let mut ok = OkPacket {
            header,
            affected_rows,
            last_insert_id,
            status,
            warnings,
            ..Default::default()
        };
        if capabilities & cap::CLIENT_SESSION_TRACK != 0 {
            if !r.is_empty() {
                ok.info = r.lenenc_bytes("info")?.to_vec();
            }
            if status & status::SERVER_SESSION_STATE_CHANGED != 0 && !r.is_empty() {
                ok.session_state = Some(r.lenenc_bytes("session state")?.to_vec());
            }
        } else if !r.is_empty() {
            // The protocol documents "rest of packet" here, but MySQL and MariaDB servers send
            // a length-encoded string (and their client libraries read one). Accept both.
            let rest = r.clone().rest();
            ok.info = match r.lenenc_bytes("info") {
                Ok(info) if r.is_empty() => info.to_vec(),
                _ => rest.to_vec(),
            };
        }
        Ok(ok)
    }

    pub fn encode(&self, capabilities: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.info.len());
        out.push(self.header);
        put_lenenc_int(&mut out, self.affected_rows);
        put_lenenc_int(&mut out, self.last_insert_id);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        if capabilities & cap::CLIENT_SESSION_TRACK != 0 {
            if !self.info.is_empty() || self.session_state.is_some() {
                put_lenenc_bytes(&mut out, &self.info);
            }
            if let Some(state) = &self.session_state {
                put_lenenc_bytes(&mut out, state);
            }
        } else if !self.info.is_empty() {
            put_lenenc_bytes(&mut out, &self.info);
        }
        out
    }

    /// Iterates over the session-state entries as (type, data).
    pub fn session_state_entries(&self) -> SessionStateIter<'_> {
        SessionStateIter {
            r: Reader::new(self.session_state.as_deref().unwrap_or_default()),
        }
    }

    /// The value of a tracked system variable (e.g. `last_gtid`), if this OK carries it.
    pub fn system_variable(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.session_state_entries()
            .filter_map(Result::ok)
            .filter(|(t, _)| *t == session_track::SYSTEM_VARIABLES)
            .find_map(|(_, data)| {
                let mut r = Reader::new(data);
                let n = r.lenenc_bytes("name").ok()?;
                let v = r.lenenc_bytes("value").ok()?;
                (n == name).then(|| v.to_vec())
            })
    }
}

/// How an OK packet from a connection with `CLIENT_SESSION_TRACK` reads for a client without
/// it: the server then sends the same bytes except for a session-state change, which it
/// reports with `SERVER_SESSION_STATE_CHANGED` and a session-state block after the info
/// string (and the info string, even empty). See [`untracked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untracked {
    /// Where the status flags are (two bytes, little-endian): the flag is to be cleared there.
    pub status_at: usize,
    /// How many bytes of the payload the client gets: up to the warnings, and the info string
    /// when it is not empty.
    pub keep: usize,
}

impl Untracked {
    /// Clears `SERVER_SESSION_STATE_CHANGED` in `payload`, the OK packet this was read from
    /// (the bytes up to [`Untracked::keep`] are then what the client gets).
    pub fn clear_flag(&self, payload: &mut [u8]) {
        let at = self.status_at;
        let flags = u16::from_le_bytes([payload[at], payload[at + 1]])
            & !status::SERVER_SESSION_STATE_CHANGED;
        payload[at..at + 2].copy_from_slice(&flags.to_le_bytes());
    }
}

/// For an OK packet (`payload`, header 0x00 or 0xFE) that reports a session-state change: what
/// of it a client without `CLIENT_SESSION_TRACK` gets (a server would have sent it no
/// session-state block, no flag, and no empty info string). `Ok(None)`: no change reported,
/// the packet is the same for both.
pub fn untracked(payload: &[u8]) -> Result<Option<Untracked>, ProtoError> {
    let mut r = Reader::new(payload);
    let header = r.u8("header")?;
    if header != OK_HEADER && header != OK_EOF_HEADER {
        return Err(ProtoError::Invalid("not an OK packet"));
    }
    r.lenenc_int("affected rows")?;
    r.lenenc_int("last insert id")?;
    let status_at = payload.len() - r.remaining();
    if r.u16("status flags")? & status::SERVER_SESSION_STATE_CHANGED == 0 {
        return Ok(None);
    }
    r.u16("warnings")?;
    let warnings_end = payload.len() - r.remaining();
    let keep = if r.is_empty() || r.lenenc_bytes("info")?.is_empty() {
        warnings_end
    } else {
        payload.len() - r.remaining()
    };
    Ok(Some(Untracked { status_at, keep }))
}

/// `payload` as a client without `CLIENT_SESSION_TRACK` gets it (see [`untracked`]).
pub fn without_session_state(payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let Some(u) = untracked(payload)? else {
        return Ok(payload.to_vec());
    };
    let mut out = payload[..u.keep].to_vec();
    u.clear_flag(&mut out);
    Ok(out)
}

/// Iterator over the entries of a session-state block.
pub struct SessionStateIter<'a> {
    r: Reader<'a>,
}

impl<'a> Iterator for SessionStateIter<'a> {
    type Item = Result<(u8, &'a [u8]), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.r.is_empty() {
            return None;
        }
        let item = self
            .r
            .u8("session state type")
            .and_then(|t| Ok((t, self.r.lenenc_bytes("session state data")?)));
        if item.is_err() {
            // Stop after the first error.
            self.r.rest();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OK after an INSERT with `session_track_system_variables='last_gtid'`, as recorded in
    /// shared/notes (MariaDB 10.11.19).
    const OK_WITH_GTID: &[u8] =
        b"\x00\x01\x01\x02\x40\x00\x00\x00\x15\x00\x13\x09last_gtid\x080-1-2107";

    #[test]
    fn parses_session_track_gtid() {
        let caps = cap::CLIENT_PROTOCOL_41 | cap::CLIENT_SESSION_TRACK;
        let ok = OkPacket::parse(OK_WITH_GTID, caps).unwrap();
        assert_eq!(ok.affected_rows, 1);
        assert_eq!(ok.last_insert_id, 1);
        assert_eq!(
            ok.status,
            status::SERVER_STATUS_AUTOCOMMIT | status::SERVER_SESSION_STATE_CHANGED
        );
        assert_eq!(
            ok.system_variable(b"last_gtid").as_deref(),
            Some(&b"0-1-2107"[..])
        );
        assert_eq!(ok.encode(caps), OK_WITH_GTID);
    }

    #[test]
    fn plain_ok_round_trip() {
        let ok = OkPacket {
            header: 0,
            affected_rows: 300,
            last_insert_id: 70000,
            status: 3,
            warnings: 2,
            info: b"Rows matched: 1  Changed: 1  Warnings: 0".to_vec(),
            session_state: None,
        };
        let caps = cap::CLIENT_PROTOCOL_41;
        assert_eq!(OkPacket::parse(&ok.encode(caps), caps).unwrap(), ok);
    }

    #[test]
    fn a_client_without_session_tracking_gets_no_state() {
        // `SET time_zone` (no info), an UPDATE's info with a state change, and no change.
        let tz = b"\x00\x00\x00\x02\x40\x00\x00\x00\x13\x00\x11\x09time_zone\x06+05:00";
        assert_eq!(
            without_session_state(tz).unwrap(),
            b"\x00\x00\x00\x02\x00\x00\x00"
        );
        let info = b"Rows matched: 1  Changed: 1  Warnings: 0";
        let mut upd = b"\x00\x01\x00\x22\x40\x01\x00".to_vec();
        upd.push(info.len() as u8);
        upd.extend_from_slice(info);
        upd.extend_from_slice(b"\x05\x01\x03\x02db");
        let mut want = b"\x00\x01\x00\x22\x00\x01\x00".to_vec();
        want.push(info.len() as u8);
        want.extend_from_slice(info);
        assert_eq!(without_session_state(&upd).unwrap(), want);
        // The untracked form is what the tracked form reads as, less the block.
        let caps = cap::CLIENT_PROTOCOL_41;
        let back = OkPacket::parse(&want, caps).unwrap();
        assert_eq!((back.info.as_slice(), back.warnings), (&info[..], 1));
        assert_eq!(untracked(&want).unwrap(), None);
        assert_eq!(without_session_state(&want).unwrap(), want);
        // As the last packet of a result (CLIENT_DEPRECATE_EOF).
        assert_eq!(
            without_session_state(b"\xfe\x00\x00\x02\x40\x00\x00\x00\x05\x01\x03\x02db").unwrap(),
            b"\xfe\x00\x00\x02\x00\x00\x00"
        );
        assert!(untracked(b"\x00\x00\x00\x02\x40\x00").is_err());
        assert!(untracked(b"\xff\x00").is_err());
    }

    #[test]
    fn truncated_is_error() {
        assert!(OkPacket::parse(&[0x00, 0x01], 0).is_err());
        assert!(OkPacket::parse(&[0x00, 0xFC, 1], 0).is_err());
        assert!(OkPacket::parse(&[0x01, 0, 0, 0, 0, 0, 0], 0).is_err());
    }
}
