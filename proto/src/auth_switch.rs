//! Packets of the authentication exchange after the handshake response:
//! `AuthSwitchRequest` (server asks for another plugin, with new data) and `AuthMoreData`
//! (plugin-specific continuation, e.g. caching_sha2_password's fast-auth result).

use crate::lenenc::{put_nul_terminated, Reader};
use crate::ProtoError;

/// First byte of an AuthSwitchRequest.
pub const AUTH_SWITCH_HEADER: u8 = 0xFE;
/// First byte of an AuthMoreData packet.
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    pub plugin: Vec<u8>,
    /// Plugin data (for mysql_native_password, the new 20-byte scramble; a trailing NUL is
    /// stripped).
    pub data: Vec<u8>,
}

impl AuthSwitchRequest {
    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(payload);
        if r.u8("header")? != AUTH_SWITCH_HEADER {
            return Err(ProtoError::Invalid("not an AuthSwitchRequest"));
        }
        let plugin = r.nul_terminated("plugin name")?.to_vec();
        let rest = r.rest();
        let data = rest.strip_suffix(&[0]).unwrap_or(rest).to_vec();
        Ok(AuthSwitchRequest { plugin, data })
    }

    /// Encodes with a NUL after the data, as servers send it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.plugin.len() + self.data.len() + 3);
        out.push(AUTH_SWITCH_HEADER);
        put_nul_terminated(&mut out, &self.plugin);
        put_nul_terminated(&mut out, &self.data);
        out
    }
}

/// `AuthMoreData`: 0x01 then plugin-specific bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMoreData {
    pub data: Vec<u8>,
}

impl AuthMoreData {
    pub fn parse(payload: &[u8]) -> Result<Self, ProtoError> {
        match payload.split_first() {
            Some((&AUTH_MORE_DATA_HEADER, data)) => Ok(AuthMoreData {
                data: data.to_vec(),
            }),
            _ => Err(ProtoError::Invalid("not an AuthMoreData packet")),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 1);
        out.push(AUTH_MORE_DATA_HEADER);
        out.extend_from_slice(&self.data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_round_trip() {
        let a = AuthSwitchRequest {
            plugin: b"mysql_native_password".to_vec(),
            data: (0..20).collect(),
        };
        let enc = a.encode();
        assert_eq!(*enc.last().unwrap(), 0);
        assert_eq!(AuthSwitchRequest::parse(&enc).unwrap(), a);
        assert!(AuthSwitchRequest::parse(&[0xFE]).is_err());
        assert!(AuthSwitchRequest::parse(&[0x00, 0]).is_err());
    }

    #[test]
    fn more_data_round_trip() {
        let m = AuthMoreData { data: vec![3] };
        assert_eq!(m.encode(), vec![1, 3]);
        assert_eq!(AuthMoreData::parse(&[1, 3]).unwrap(), m);
        assert!(AuthMoreData::parse(&[]).is_err());
    }
}
