//! `SSLRequest`: a truncated handshake response asking to switch to TLS before credentials.

use crate::flags::cap;
use crate::lenenc::Reader;
use crate::ProtoError;

/// Length of an SSLRequest payload: exactly 32 bytes. A proxy must read no further before the
/// TLS handshake, or it would consume TLS bytes as MySQL packets.
pub const SSL_REQUEST_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest {
    pub capabilities: u64,
    pub max_packet: u32,
    pub charset: u8,
}

impl SslRequest {
    /// Whether a handshake-response payload is an SSLRequest.
    pub fn is_ssl_request(payload: &[u8]) -> bool {
        payload.len() == SSL_REQUEST_LEN
            && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as u64
                & cap::CLIENT_SSL
                != 0
    }

    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        if payload.len() != SSL_REQUEST_LEN {
            return Err(ProtoError::Invalid("SSLRequest must be 32 bytes"));
        }
        let mut r = Reader::new(payload);
        let mut capabilities = u64::from(r.u32("capabilities")?);
        if capabilities & cap::CLIENT_SSL == 0 {
            return Err(ProtoError::Invalid("SSLRequest without CLIENT_SSL"));
        }
        let max_packet = r.u32("max packet size")?;
        let charset = r.u8("charset")?;
        r.bytes(19, "reserved")?;
        let ext = r.u32("extended capabilities")?;
        if capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            capabilities |= u64::from(ext) << 32;
        }
        Ok(SslRequest {
            capabilities,
            max_packet,
            charset,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SSL_REQUEST_LEN);
        out.extend_from_slice(&(self.capabilities as u32).to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 19]);
        if self.capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            out.extend_from_slice(&((self.capabilities >> 32) as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&[0; 4]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = SslRequest {
            capabilities: cap::CLIENT_SSL | cap::CLIENT_PROTOCOL_41 | cap::CLIENT_LONG_PASSWORD,
            max_packet: 1 << 24,
            charset: 45,
        };
        let enc = s.encode();
        assert_eq!(enc.len(), SSL_REQUEST_LEN);
        assert!(SslRequest::is_ssl_request(&enc));
        assert_eq!(SslRequest::parse(&enc).unwrap(), s);
    }

    #[test]
    fn wrong_length_or_flag() {
        assert!(SslRequest::parse(&[0; 31]).is_err());
        assert!(SslRequest::parse(&[0; 32]).is_err());
        assert!(!SslRequest::is_ssl_request(&[0xFF; 33]));
    }
}
