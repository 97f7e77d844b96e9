//! The server's initial handshake (protocol version 10).

use crate::flags::cap;
use crate::lenenc::{put_nul_terminated, Reader};
use crate::ProtoError;

/// `Protocol::HandshakeV10`, the first packet a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeV10 {
    pub server_version: Vec<u8>,
    pub connection_id: u32,
    /// The scramble (salt), normally 20 bytes, without the trailing NUL.
    pub auth_data: Vec<u8>,
    /// Standard capabilities in the low 32 bits, MariaDB extended ones in the high 32 bits.
    pub capabilities: u64,
    pub charset: u8,
    pub status: u16,
    pub auth_plugin: Vec<u8>,
}

impl HandshakeV10 {
    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(payload);
        match r.u8("protocol version")? {
            10 => {}
            0xFF => {
                return Err(ProtoError::Invalid(
                    "server sent an error instead of a handshake",
                ))
            }
            _ => return Err(ProtoError::Invalid("unsupported protocol version")),
        }
        let server_version = r.nul_terminated("server version")?.to_vec();
        let connection_id = r.u32("connection id")?;
        let mut auth_data = r.bytes(8, "auth data")?.to_vec();
        r.u8("filler")?;
        let cap_low = u64::from(r.u16("capabilities")?);
        let mut h = HandshakeV10 {
            server_version,
            connection_id,
            auth_data: Vec::new(),
            capabilities: cap_low,
            charset: 0,
            status: 0,
            auth_plugin: Vec::new(),
        };
        if r.is_empty() {
            h.auth_data = auth_data;
            return Ok(h);
        }
        h.charset = r.u8("charset")?;
        h.status = r.u16("status")?;
        let cap_high = u64::from(r.u16("capabilities")?);
        h.capabilities |= cap_high << 16;
        let auth_len = r.u8("auth data length")?;
        r.bytes(6, "reserved")?;
        let ext = r.u32("extended capabilities")?;
        if h.capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            h.capabilities |= u64::from(ext) << 32;
        }
        if h.capabilities & cap::CLIENT_SECURE_CONNECTION != 0 {
            let n = (usize::from(auth_len).saturating_sub(8)).max(13);
            let part2 = r.bytes(n.min(r.remaining()), "auth data part 2")?;
            // The second part ends with a NUL that is not part of the scramble.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            auth_data.extend_from_slice(part2);
        }
        h.auth_data = auth_data;
        if h.capabilities & cap::CLIENT_PLUGIN_AUTH != 0 {
            h.auth_plugin = r.nul_terminated_or_rest().to_vec();
        }
        Ok(h)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.push(10);
        put_nul_terminated(&mut out, &self.server_version);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        let (part1, part2) = self.auth_data.split_at(self.auth_data.len().min(8));
        out.extend_from_slice(part1);
        out.resize(out.len() + (8 - part1.len()), 0);
        out.push(0);
        out.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        if self.capabilities & cap::CLIENT_PLUGIN_AUTH != 0 {
            out.push((self.auth_data.len() + 1) as u8);
        } else {
            out.push(0);
        }
        out.extend_from_slice(&[0; 6]);
        if self.capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            out.extend_from_slice(&((self.capabilities >> 32) as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&[0; 4]);
        }
        if self.capabilities & cap::CLIENT_SECURE_CONNECTION != 0 {
            out.extend_from_slice(part2);
            // Pad to at least 12 bytes, then the NUL.
            out.resize(out.len() + 12usize.saturating_sub(part2.len()), 0);
            out.push(0);
        }
        if self.capabilities & cap::CLIENT_PLUGIN_AUTH != 0 {
            put_nul_terminated(&mut out, &self.auth_plugin);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mysql_style() {
        let h = HandshakeV10 {
            server_version: b"8.0.36".to_vec(),
            connection_id: 42,
            auth_data: (1..=20).collect(),
            capabilities: cap::CLIENT_LONG_PASSWORD
                | cap::CLIENT_PROTOCOL_41
                | cap::CLIENT_SECURE_CONNECTION
                | cap::CLIENT_PLUGIN_AUTH
                | cap::CLIENT_DEPRECATE_EOF,
            charset: 255,
            status: 2,
            auth_plugin: b"caching_sha2_password".to_vec(),
        };
        assert_eq!(HandshakeV10::parse(&h.encode()).unwrap(), h);
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let full = HandshakeV10 {
            server_version: b"5.5.5-10.11.19-MariaDB".to_vec(),
            connection_id: 9,
            auth_data: vec![7; 20],
            capabilities: 0xFFFF_F7FE | (0x1D << 32),
            charset: 45,
            status: 2,
            auth_plugin: b"mysql_native_password".to_vec(),
        }
        .encode();
        for n in 0..full.len() - 1 {
            // Must never panic; most prefixes are errors.
            let _ = HandshakeV10::parse(&full[..n]);
        }
        assert!(HandshakeV10::parse(&[]).is_err());
        assert!(HandshakeV10::parse(&[9]).is_err());
    }
}
