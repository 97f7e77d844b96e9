//! Command packets: what a client sends after authentication. The first payload byte names the
//! command; [`Command::parse`] borrows the rest without copying.

use crate::flags::cap;
use crate::lenenc::{put_lenenc_bytes, put_nul_terminated, Reader};
use crate::ProtoError;

pub const COM_SLEEP: u8 = 0x00;
pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_CREATE_DB: u8 = 0x05;
pub const COM_DROP_DB: u8 = 0x06;
pub const COM_REFRESH: u8 = 0x07;
pub const COM_SHUTDOWN: u8 = 0x08;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PROCESS_INFO: u8 = 0x0A;
pub const COM_CONNECT: u8 = 0x0B;
pub const COM_PROCESS_KILL: u8 = 0x0C;
pub const COM_DEBUG: u8 = 0x0D;
pub const COM_PING: u8 = 0x0E;
pub const COM_TIME: u8 = 0x0F;
pub const COM_DELAYED_INSERT: u8 = 0x10;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_BINLOG_DUMP: u8 = 0x12;
pub const COM_TABLE_DUMP: u8 = 0x13;
pub const COM_CONNECT_OUT: u8 = 0x14;
pub const COM_REGISTER_SLAVE: u8 = 0x15;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1A;
pub const COM_SET_OPTION: u8 = 0x1B;
pub const COM_STMT_FETCH: u8 = 0x1C;
pub const COM_DAEMON: u8 = 0x1D;
pub const COM_BINLOG_DUMP_GTID: u8 = 0x1E;
pub const COM_RESET_CONNECTION: u8 = 0x1F;
/// MariaDB only, and only with `MARIADB_CLIENT_STMT_BULK_OPERATIONS`.
pub const COM_STMT_BULK_EXECUTE: u8 = 0xFA;

/// `COM_STMT_EXECUTE` flag: open a read-only cursor.
pub const CURSOR_TYPE_READ_ONLY: u8 = 0x01;

/// A decoded command. Borrowed fields point into the packet payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Quit,
    InitDb(&'a [u8]),
    Query(&'a [u8]),
    FieldList {
        table: &'a [u8],
        wildcard: &'a [u8],
    },
    Statistics,
    Ping,
    ChangeUser(ChangeUser),
    ResetConnection,
    SetOption(u16),
    StmtPrepare(&'a [u8]),
    StmtExecute {
        stmt_id: u32,
        flags: u8,
        rest: &'a [u8],
    },
    StmtSendLongData {
        stmt_id: u32,
        param: u16,
        data: &'a [u8],
    },
    StmtClose(u32),
    StmtReset(u32),
    StmtFetch {
        stmt_id: u32,
        rows: u32,
    },
    /// Any other command byte, with its body.
    Other(u8, &'a [u8]),
}

impl<'a> Command<'a> {
    /// Decodes a command payload. `capabilities` are the negotiated ones (COM_CHANGE_USER's
    /// layout depends on them).
    pub fn parse(payload: &'a [u8], capabilities: u64) -> Result<Self, ProtoError> {
        let (&code, body) = payload
            .split_first()
            .ok_or(ProtoError::Truncated("command byte"))?;
        let mut r = Reader::new(body);
        Ok(match code {
            COM_QUIT => Command::Quit,
            COM_INIT_DB => Command::InitDb(body),
            COM_QUERY => Command::Query(body),
            COM_FIELD_LIST => {
                let table = r.nul_terminated_or_rest();
                Command::FieldList {
                    table,
                    wildcard: r.rest(),
                }
            }
            COM_STATISTICS => Command::Statistics,
            COM_PING => Command::Ping,
            COM_CHANGE_USER => Command::ChangeUser(ChangeUser::parse(body, capabilities)?),
            COM_RESET_CONNECTION => Command::ResetConnection,
            COM_SET_OPTION => Command::SetOption(r.u16("option")?),
            COM_STMT_PREPARE => Command::StmtPrepare(body),
            COM_STMT_EXECUTE => {
                let stmt_id = r.u32("statement id")?;
                let flags = r.u8("flags")?;
                Command::StmtExecute {
                    stmt_id,
                    flags,
                    rest: r.rest(),
                }
            }
            COM_STMT_SEND_LONG_DATA => Command::StmtSendLongData {
                stmt_id: r.u32("statement id")?,
                param: r.u16("parameter id")?,
                data: r.rest(),
            },
            COM_STMT_CLOSE => Command::StmtClose(r.u32("statement id")?),
            COM_STMT_RESET => Command::StmtReset(r.u32("statement id")?),
            COM_STMT_FETCH => Command::StmtFetch {
                stmt_id: r.u32("statement id")?,
                rows: r.u32("rows")?,
            },
            other => Command::Other(other, body),
        })
    }

    /// Whether the server answers this command at all.
    pub fn expects_response(code: u8) -> bool {
        !matches!(code, COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA)
    }
}

/// Encodes a command with a plain body (COM_QUERY, COM_INIT_DB, COM_STMT_PREPARE, …).
pub fn encode_simple(code: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(code);
    out.extend_from_slice(body);
    out
}

/// `COM_STMT_EXECUTE` without parameters (tests and probes use it).
pub fn encode_stmt_execute(stmt_id: u32, flags: u8) -> Vec<u8> {
    let mut out = vec![COM_STMT_EXECUTE];
    out.extend_from_slice(&stmt_id.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&1u32.to_le_bytes());
    out
}

/// `COM_STMT_FETCH`.
pub fn encode_stmt_fetch(stmt_id: u32, rows: u32) -> Vec<u8> {
    let mut out = vec![COM_STMT_FETCH];
    out.extend_from_slice(&stmt_id.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out
}

/// `COM_CHANGE_USER`: log in again as another user on the same connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeUser {
    pub username: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Vec<u8>,
    pub charset: Option<u16>,
    pub auth_plugin: Option<Vec<u8>>,
    pub connect_attrs: Option<Vec<u8>>,
}

impl ChangeUser {
    /// Decodes the body (after the command byte).
    pub fn parse(body: &[u8], capabilities: u64) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let username = r.nul_terminated("user name")?.to_vec();
        let auth_response = if capabilities & cap::CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8("auth response length")?;
            r.bytes(usize::from(n), "auth response")?.to_vec()
        } else {
            r.nul_terminated("auth response")?.to_vec()
        };
        let database = r.nul_terminated_or_rest().to_vec();
        let mut cu = ChangeUser {
            username,
            auth_response,
            database,
            ..Default::default()
        };
        if r.remaining() >= 2 {
            cu.charset = Some(r.u16("charset")?);
        }
        if capabilities & cap::CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            cu.auth_plugin = Some(r.nul_terminated_or_rest().to_vec());
        }
        if capabilities & cap::CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            cu.connect_attrs = Some(r.lenenc_bytes("connection attributes")?.to_vec());
        }
        Ok(cu)
    }

    /// Encodes the whole command, command byte included.
    pub fn encode(&self, capabilities: u64) -> Vec<u8> {
        let mut out = vec![COM_CHANGE_USER];
        put_nul_terminated(&mut out, &self.username);
        if capabilities & cap::CLIENT_SECURE_CONNECTION != 0 {
            out.push(self.auth_response.len().min(255) as u8);
            out.extend_from_slice(&self.auth_response[..self.auth_response.len().min(255)]);
        } else {
            put_nul_terminated(&mut out, &self.auth_response);
        }
        put_nul_terminated(&mut out, &self.database);
        out.extend_from_slice(&self.charset.unwrap_or(45).to_le_bytes());
        if capabilities & cap::CLIENT_PLUGIN_AUTH != 0 {
            put_nul_terminated(&mut out, self.auth_plugin.as_deref().unwrap_or_default());
        }
        if capabilities & cap::CLIENT_CONNECT_ATTRS != 0 {
            put_lenenc_bytes(&mut out, self.connect_attrs.as_deref().unwrap_or_default());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_commands() {
        assert_eq!(
            Command::parse(b"\x03select 1", 0).unwrap(),
            Command::Query(b"select 1")
        );
        assert_eq!(
            Command::parse(b"\x02shop", 0).unwrap(),
            Command::InitDb(b"shop")
        );
        assert_eq!(Command::parse(b"\x0e", 0).unwrap(), Command::Ping);
        assert_eq!(Command::parse(b"\x01", 0).unwrap(), Command::Quit);
        assert_eq!(
            Command::parse(b"\x1f", 0).unwrap(),
            Command::ResetConnection
        );
        assert_eq!(
            Command::parse(b"\x1b\x01\x00", 0).unwrap(),
            Command::SetOption(1)
        );
        assert_eq!(
            Command::parse(b"\x04t1\x00%", 0).unwrap(),
            Command::FieldList {
                table: b"t1",
                wildcard: b"%"
            }
        );
        assert_eq!(
            Command::parse(&encode_stmt_execute(7, CURSOR_TYPE_READ_ONLY), 0).unwrap(),
            Command::StmtExecute {
                stmt_id: 7,
                flags: 1,
                rest: &[1, 0, 0, 0]
            }
        );
        assert_eq!(
            Command::parse(&encode_stmt_fetch(7, 100), 0).unwrap(),
            Command::StmtFetch {
                stmt_id: 7,
                rows: 100
            }
        );
        assert_eq!(
            Command::parse(b"\x19\x07\x00\x00\x00", 0).unwrap(),
            Command::StmtClose(7)
        );
        assert_eq!(
            Command::parse(b"\x18\x07\x00\x00\x00\x01\x00abc", 0).unwrap(),
            Command::StmtSendLongData {
                stmt_id: 7,
                param: 1,
                data: b"abc"
            }
        );
        assert!(Command::parse(b"", 0).is_err());
        assert!(Command::parse(b"\x19\x07", 0).is_err());
        assert_eq!(
            Command::parse(b"\x12xx", 0).unwrap(),
            Command::Other(COM_BINLOG_DUMP, b"xx")
        );
    }

    #[test]
    fn change_user_round_trip() {
        let caps = cap::CLIENT_PROTOCOL_41
            | cap::CLIENT_SECURE_CONNECTION
            | cap::CLIENT_PLUGIN_AUTH
            | cap::CLIENT_CONNECT_ATTRS;
        let cu = ChangeUser {
            username: b"other".to_vec(),
            auth_response: vec![9; 20],
            database: b"db".to_vec(),
            charset: Some(45),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            connect_attrs: Some(vec![]),
        };
        let enc = cu.encode(caps);
        match Command::parse(&enc, caps).unwrap() {
            Command::ChangeUser(got) => assert_eq!(got, cu),
            other => panic!("{other:?}"),
        }
    }
}
