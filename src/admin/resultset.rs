//! A small text result-set writer for the admin port: column definitions (all `VARCHAR`),
//! rows of text or NULL, and the end marker in the client's EOF mode.

use bytes::BytesMut;
use sluice_proto::flags::{cap, status};
use sluice_proto::framing;
use sluice_proto::lenenc::{put_lenenc_bytes, put_lenenc_int};

/// A table to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub fn new(columns: &[&str]) -> Self {
        ResultSet {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Option<String>>) {
        self.rows.push(row);
    }

    /// Encodes the whole response as packets starting at sequence id `seq`.
    pub fn encode(&self, seq: u8, capabilities: u64) -> BytesMut {
        let deprecate_eof = capabilities & cap::CLIENT_DEPRECATE_EOF != 0;
        let mut out = BytesMut::new();
        let mut seq = seq;
        let mut put = |out: &mut BytesMut, payload: &[u8]| {
            framing::write_packet(out, seq, payload);
            seq = seq.wrapping_add(1);
        };
        let mut p = Vec::new();
        put_lenenc_int(&mut p, self.columns.len() as u64);
        put(&mut out, &p);
        for c in &self.columns {
            let mut p = Vec::with_capacity(32 + c.len() * 2);
            put_lenenc_bytes(&mut p, b"def");
            put_lenenc_bytes(&mut p, b"");
            put_lenenc_bytes(&mut p, b"");
            put_lenenc_bytes(&mut p, b"");
            put_lenenc_bytes(&mut p, c.as_bytes());
            put_lenenc_bytes(&mut p, c.as_bytes());
            p.push(0x0c);
            p.extend_from_slice(&33u16.to_le_bytes()); // utf8_general_ci
            p.extend_from_slice(&(1024u32 * 3).to_le_bytes());
            p.push(0xFD); // VAR_STRING
            p.extend_from_slice(&0u16.to_le_bytes());
            p.push(0);
            p.extend_from_slice(&[0, 0]);
            put(&mut out, &p);
        }
        let eof = |header_ok: bool| {
            let mut p = vec![0xFE];
            if header_ok {
                // OK packet with the EOF header: affected rows, insert id, status, warnings.
                p.extend_from_slice(&[0, 0]);
                p.extend_from_slice(&status::SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
                p.extend_from_slice(&0u16.to_le_bytes());
            } else {
                p.extend_from_slice(&0u16.to_le_bytes());
                p.extend_from_slice(&status::SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
            }
            p
        };
        if !deprecate_eof {
            put(&mut out, &eof(false));
        }
        for row in &self.rows {
            let mut p = Vec::new();
            for v in row {
                match v {
                    Some(s) => put_lenenc_bytes(&mut p, s.as_bytes()),
                    None => p.push(0xFB),
                }
            }
            put(&mut out, &p);
        }
        put(&mut out, &eof(deprecate_eof));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};

    /// The response tracker (which follows real servers' responses) finds the end exactly.
    #[test]
    fn the_tracker_reads_it_to_the_end() {
        let mut rs = ResultSet::new(&["a", "b"]);
        rs.push(vec![Some("1".into()), None]);
        rs.push(vec![Some("x".repeat(300)), Some(String::new())]);
        for deprecate in [false, true] {
            let caps = if deprecate {
                cap::CLIENT_DEPRECATE_EOF
            } else {
                0
            };
            let mut buf = rs.encode(1, caps);
            let mut t = ResponseTracker::new(ResponseKind::Query, deprecate);
            let mut done = false;
            while let Ok(ext) = framing::check(&buf, 1 << 20) {
                let p = framing::parse(&mut buf, ext);
                assert!(!done, "bytes after the end");
                match t.feed(p.payload.len(), &p.payload).unwrap() {
                    Progress::Done(o) => {
                        assert!(!o.error);
                        done = true;
                    }
                    Progress::More => {}
                    Progress::LocalInfile => panic!(),
                }
            }
            assert!(done && buf.is_empty());
        }
    }
}
