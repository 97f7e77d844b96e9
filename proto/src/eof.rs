//! The EOF packet (before `CLIENT_DEPRECATE_EOF`): ends column definitions and rows.

use crate::lenenc::Reader;
use crate::ProtoError;

/// Header byte of an EOF packet.
pub const EOF_HEADER: u8 = 0xFE;
/// An EOF packet is shorter than this; a longer 0xFE packet is something else (an OK with
/// 0xFE header, or a row whose first value is very long).
pub const EOF_MAX_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

impl EofPacket {
    /// Whether `payload` is an EOF packet.
    pub fn is_eof(payload: &[u8]) -> bool {
        payload.first() == Some(&EOF_HEADER) && payload.len() < EOF_MAX_LEN
    }

    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        if !Self::is_eof(payload) {
            return Err(ProtoError::Invalid("not an EOF packet"));
        }
        let mut r = Reader::new(&payload[1..]);
        Ok(EofPacket {
            warnings: r.u16("warnings")?,
            status: r.u16("status flags")?,
        })
    }

    pub fn encode(&self) -> [u8; 5] {
        let w = self.warnings.to_le_bytes();
        let s = self.status.to_le_bytes();
        [EOF_HEADER, w[0], w[1], s[0], s[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = EofPacket {
            warnings: 1,
            status: 0x22,
        };
        assert_eq!(EofPacket::parse(&e.encode()).unwrap(), e);
        assert!(EofPacket::parse(&[0xFE, 0]).is_err());
        assert!(!EofPacket::is_eof(&[0xFE; 9]));
    }
}
