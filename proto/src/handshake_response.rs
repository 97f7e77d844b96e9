//! The client's reply to the handshake (`HandshakeResponse41`).

use crate::flags::cap;
use crate::lenenc::{put_lenenc_bytes, put_nul_terminated, Reader};
use crate::ProtoError;

/// `Protocol::HandshakeResponse41`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse41 {
    /// Standard capabilities in the low 32 bits, MariaDB extended ones in the high 32 bits.
    pub capabilities: u64,
    pub max_packet: u32,
    pub charset: u8,
    pub username: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub auth_plugin: Option<Vec<u8>>,
    /// The connection attributes block, without its length prefix, kept as sent.
    pub connect_attrs: Option<Vec<u8>>,
    /// The zstd compression level (`CLIENT_ZSTD_COMPRESSION_ALGORITHM`), after the attributes.
    pub zstd_level: Option<u8>,
}

impl HandshakeResponse41 {
    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(payload);
        let mut caps = u64::from(r.u32("capabilities")?);
        if caps & cap::CLIENT_PROTOCOL_41 == 0 {
            return Err(ProtoError::Invalid("client does not speak protocol 4.1"));
        }
        let max_packet = r.u32("max packet size")?;
        let charset = r.u8("charset")?;
        r.bytes(19, "reserved")?;
        let ext = r.u32("extended capabilities")?;
        if caps & cap::CLIENT_LONG_PASSWORD == 0 {
            caps |= u64::from(ext) << 32;
        }
        let username = r.nul_terminated("user name")?.to_vec();
        let auth_response = if caps & cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes("auth response")?.to_vec()
        } else if caps & cap::CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8("auth response length")?;
            r.bytes(usize::from(n), "auth response")?.to_vec()
        } else {
            r.nul_terminated("auth response")?.to_vec()
        };
        let mut resp = HandshakeResponse41 {
            capabilities: caps,
            max_packet,
            charset,
            username,
            auth_response,
            ..Default::default()
        };
        if caps & cap::CLIENT_CONNECT_WITH_DB != 0 && !r.is_empty() {
            resp.database = Some(r.nul_terminated_or_rest().to_vec());
        }
        if caps & cap::CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            resp.auth_plugin = Some(r.nul_terminated_or_rest().to_vec());
        }
        if caps & cap::CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            resp.connect_attrs = Some(r.lenenc_bytes("connection attributes")?.to_vec());
        }
        if caps & cap::CLIENT_ZSTD_COMPRESSION != 0 && !r.is_empty() {
            resp.zstd_level = Some(r.u8("zstd compression level")?);
        }
        Ok(resp)
    }

    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities;
        let mut out = Vec::with_capacity(128 + self.connect_attrs.as_ref().map_or(0, Vec::len));
        out.extend_from_slice(&(caps as u32).to_le_bytes());
        out.extend_from_slice(&self.max_packet.to_le_bytes());
        out.push(self.charset);
        out.extend_from_slice(&[0; 19]);
        if caps & cap::CLIENT_LONG_PASSWORD == 0 {
            out.extend_from_slice(&((caps >> 32) as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&[0; 4]);
        }
        put_nul_terminated(&mut out, &self.username);
        if caps & cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if caps & cap::CLIENT_SECURE_CONNECTION != 0 {
            out.push(self.auth_response.len().min(255) as u8);
            out.extend_from_slice(&self.auth_response[..self.auth_response.len().min(255)]);
        } else {
            put_nul_terminated(&mut out, &self.auth_response);
        }
        if caps & cap::CLIENT_CONNECT_WITH_DB != 0 {
            put_nul_terminated(&mut out, self.database.as_deref().unwrap_or_default());
        }
        if caps & cap::CLIENT_PLUGIN_AUTH != 0 {
            put_nul_terminated(&mut out, self.auth_plugin.as_deref().unwrap_or_default());
        }
        if caps & cap::CLIENT_CONNECT_ATTRS != 0 {
            put_lenenc_bytes(&mut out, self.connect_attrs.as_deref().unwrap_or_default());
        }
        if let Some(level) = self
            .zstd_level
            .filter(|_| caps & cap::CLIENT_ZSTD_COMPRESSION != 0)
        {
            out.push(level);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_fields() {
        let r = HandshakeResponse41 {
            capabilities: cap::CLIENT_PROTOCOL_41
                | cap::CLIENT_SECURE_CONNECTION
                | cap::CLIENT_PLUGIN_AUTH
                | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                | cap::CLIENT_CONNECT_WITH_DB
                | cap::CLIENT_CONNECT_ATTRS
                | cap::CLIENT_ZSTD_COMPRESSION
                | cap::MARIADB_CLIENT_PROGRESS,
            max_packet: 1 << 24,
            charset: 45,
            username: b"app".to_vec(),
            auth_response: vec![7; 20],
            database: Some(b"shop".to_vec()),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            connect_attrs: Some(vec![4, b'_', b'p', b'i', b'd', 2, b'4', b'2']),
            zstd_level: Some(7),
        };
        assert_eq!(HandshakeResponse41::parse(&r.encode()).unwrap(), r);
    }

    #[test]
    fn old_style_auth_response() {
        let r = HandshakeResponse41 {
            capabilities: cap::CLIENT_PROTOCOL_41
                | cap::CLIENT_LONG_PASSWORD
                | cap::CLIENT_SECURE_CONNECTION,
            max_packet: 0,
            charset: 8,
            username: b"root".to_vec(),
            auth_response: vec![],
            ..Default::default()
        };
        assert_eq!(HandshakeResponse41::parse(&r.encode()).unwrap(), r);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(HandshakeResponse41::parse(&[]).is_err());
        assert!(HandshakeResponse41::parse(&[0xFF; 31]).is_err());
        let mut p = vec![0x00, 0x02, 0, 0]; // PROTOCOL_41 only
        p.extend_from_slice(&[0; 28]);
        p.extend_from_slice(b"user"); // no NUL
        assert!(HandshakeResponse41::parse(&p).is_err());
    }
}
