//! The ERR packet.

use crate::lenenc::Reader;
use crate::ProtoError;

/// Header byte of an ERR packet.
pub const ERR_HEADER: u8 = 0xFF;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// Five characters, e.g. `28000`; `HY000` when the server sent none (pre-4.1 style, or
    /// errors sent before the handshake finished).
    pub sql_state: [u8; 5],
    pub message: Vec<u8>,
}

impl ErrPacket {
    pub fn new(code: u16, sql_state: &[u8; 5], message: impl Into<Vec<u8>>) -> Self {
        ErrPacket {
            code,
            sql_state: *sql_state,
            message: message.into(),
        }
    }

    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(payload);
        if r.u8("header")? != ERR_HEADER {
            return Err(ProtoError::Invalid("not an ERR packet"));
        }
        let code = r.u16("error code")?;
        let mut sql_state = *b"HY000";
        if r.peek() == Some(b'#') {
            r.u8("marker")?;
            sql_state.copy_from_slice(r.bytes(5, "sql state")?);
        }
        Ok(ErrPacket {
            code,
            sql_state,
            message: r.rest().to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(ERR_HEADER);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.push(b'#');
        out.extend_from_slice(&self.sql_state);
        out.extend_from_slice(&self.message);
        out
    }
}

impl ErrPacket {
    /// The form used before the handshake (e.g. "Too many connections" in place of the
    /// greeting): no SQL-state marker, since no capabilities were negotiated yet.
    pub fn encode_pre_handshake(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.message.len());
        out.push(ERR_HEADER);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&self.message);
        out
    }
}

impl std::fmt::Display for ErrPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code,
            String::from_utf8_lossy(&self.sql_state),
            String::from_utf8_lossy(&self.message)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = ErrPacket::new(
            1045,
            b"28000",
            "Access denied for user 'x'@'127.0.0.1' (using password: YES)",
        );
        assert_eq!(ErrPacket::parse(&e.encode()).unwrap(), e);
    }

    #[test]
    fn without_sql_state_marker() {
        let e = ErrPacket::parse(b"\xff\x10\x04Too many connections").unwrap();
        assert_eq!(e.code, 1040);
        assert_eq!(&e.sql_state, b"HY000");
        assert_eq!(e.message, b"Too many connections");
    }

    #[test]
    fn pre_handshake_form() {
        let e = ErrPacket::new(1040, b"08004", "Too many connections");
        assert_eq!(
            e.encode_pre_handshake(),
            b"\xff\x10\x04Too many connections"
        );
        assert_eq!(
            ErrPacket::parse(&e.encode_pre_handshake()).unwrap().message,
            b"Too many connections"
        );
    }

    #[test]
    fn truncated() {
        assert!(ErrPacket::parse(&[0xFF, 1]).is_err());
        assert!(ErrPacket::parse(b"\xff\x01\x00#42").is_err());
    }
}
