//! One connection to a server: the client side of the MySQL handshake, then raw access for the
//! session's relay.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_proto::auth_switch::{AuthSwitchRequest, AUTH_SWITCH_HEADER};
use sluice_proto::command::{ChangeUser, COM_QUIT};
use sluice_proto::err::{ErrPacket, ERR_HEADER};
use sluice_proto::flags::cap;
use sluice_proto::framing::{self, FrameError, Packet};
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::{native_token, NATIVE_PASSWORD_PLUGIN};
use sluice_proto::ssl_request::SslRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BackendError;
use crate::tls::{BackendTls, MaybeTls};

/// A connection to a server: plain TCP, or TLS with `[backend_tls]`.
pub type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// Capabilities Sluice always asks a backend for, whatever the client did.
const REQUIRED: u64 = cap::CLIENT_PROTOCOL_41
    | cap::CLIENT_SECURE_CONNECTION
    | cap::CLIENT_PLUGIN_AUTH
    | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | cap::CLIENT_LONG_PASSWORD
    | cap::CLIENT_TRANSACTIONS;

/// Capabilities never passed on to a backend: TLS and compression are per hop, and MariaDB's
/// extended capabilities are not advertised to clients.
const NEVER: u64 =
    cap::CLIENT_SSL | cap::CLIENT_COMPRESS | cap::CLIENT_ZSTD_COMPRESSION | !0xFFFF_FFFF;

/// Largest control packet (handshake, auth) accepted from a server.
const MAX_CONTROL_PACKET: usize = 64 << 10;

/// Who logs in, and with which session options (taken from the client's handshake).
#[derive(Debug, Clone, Copy)]
pub struct LoginParams<'a> {
    pub user: &'a [u8],
    pub password: &'a [u8],
    pub database: Option<&'a [u8]>,
    /// The client's capabilities; the backend gets the same, less what is per hop.
    pub capabilities: u64,
    pub charset: u8,
    pub max_packet: u32,
    pub connect_attrs: Option<&'a [u8]>,
}

/// A logged-in connection to a server.
#[derive(Debug)]
pub struct BackendConn {
    /// The server's configured name.
    pub server: String,
    pub stream: BackendStream,
    /// Bytes read from the server and not consumed yet.
    pub rbuf: BytesMut,
    pub handshake: HandshakeV10,
    /// Capabilities in effect on this connection.
    pub capabilities: u64,
    /// The scramble to use for the next COM_CHANGE_USER.
    scramble: Vec<u8>,
    /// The user this connection is logged in as.
    pub user: Vec<u8>,
    /// The connection's slot in its server's pool (released when the connection is dropped).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Rows of the last relayed response (result rows plus affected rows), for the digest.
    pub last_rows: u64,
}

/// Connects to `address` and logs in. Returns the connection and the server's final OK payload
/// (to forward to the client). The whole exchange is bounded by `timeout`.
pub async fn connect(
    server: &str,
    address: &str,
    params: LoginParams<'_>,
    timeout: Duration,
    tls: Option<&BackendTls>,
) -> Result<(BackendConn, Bytes), BackendError> {
    let ms = timeout.as_millis() as u64;
    tokio::time::timeout(timeout, connect_inner(server, address, params, tls))
        .await
        .map_err(|_| BackendError::Timeout(ms))?
}

async fn connect_inner(
    server: &str,
    address: &str,
    p: LoginParams<'_>,
    tls: Option<&BackendTls>,
) -> Result<(BackendConn, Bytes), BackendError> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(BackendError::Connect)?;
    stream.set_nodelay(true)?;
    let mut conn = BackendConn {
        server: server.to_string(),
        stream: MaybeTls::Plain(stream),
        rbuf: BytesMut::with_capacity(16 << 10),
        handshake: HandshakeV10::default(),
        capabilities: 0,
        last_rows: 0,
        scramble: Vec::new(),
        user: p.user.to_vec(),
        slot: None,
    };
    let hello = conn.read_packet().await?;
    if hello.payload.first() == Some(&ERR_HEADER) {
        return Err(BackendError::Refused(ErrPacket::parse(&hello.payload)?));
    }
    conn.handshake = HandshakeV10::parse(&hello.payload)?;
    let mut caps = negotiate(p.capabilities, conn.handshake.capabilities);
    if p.database.is_some() {
        caps |= cap::CLIENT_CONNECT_WITH_DB;
    } else {
        caps &= !cap::CLIENT_CONNECT_WITH_DB;
    }
    if p.connect_attrs.is_none() {
        caps &= !cap::CLIENT_CONNECT_ATTRS;
    }
    let mut seq = hello.last_seq.wrapping_add(1);
    if let Some(tls) = tls {
        // Never a silent fallback to plaintext: a server without TLS is an error.
        if conn.handshake.capabilities & cap::CLIENT_SSL == 0 {
            return Err(BackendError::Tls(format!(
                "{server} ({address}) does not offer TLS, and [backend_tls] requires it"
            )));
        }
        caps |= cap::CLIENT_SSL;
        let req = SslRequest {
            capabilities: caps,
            max_packet: p.max_packet,
            charset: p.charset,
        };
        conn.write_packet(seq, &req.encode()).await?;
        seq = seq.wrapping_add(1);
        let name = tls.name_for(address).map_err(BackendError::Tls)?;
        let MaybeTls::Plain(tcp) = std::mem::replace(&mut conn.stream, MaybeTls::Switching) else {
            return Err(BackendError::Tls("the connection is not plain TCP".into()));
        };
        let s =
            tls.connector.connect(name, tcp).await.map_err(|e| {
                BackendError::Tls(format!("TLS with {server} ({address}) failed: {e}"))
            })?;
        conn.stream = MaybeTls::Tls(Box::new(s));
    }
    conn.capabilities = caps;
    conn.scramble = conn.handshake.auth_data.clone();
    let resp = HandshakeResponse41 {
        capabilities: caps,
        max_packet: p.max_packet,
        charset: p.charset,
        username: p.user.to_vec(),
        auth_response: native_token(p.password, &conn.scramble),
        database: p.database.map(<[u8]>::to_vec),
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.to_vec()),
        connect_attrs: p.connect_attrs.map(<[u8]>::to_vec),
    };
    conn.write_packet(seq, &resp.encode()).await?;
    let ok = conn.finish_auth(p.password).await?;
    Ok((conn, ok))
}

/// The capabilities a login with the client's `client_caps` gets from a server advertising
/// `server_caps` (before the per-login CONNECT_WITH_DB / CONNECT_ATTRS adjustments).
pub(super) fn negotiate(client_caps: u64, server_caps: u64) -> u64 {
    let server_caps = server_caps & 0xFFFF_FFFF;
    let caps = (client_caps & server_caps & !NEVER) | REQUIRED;
    caps & (server_caps | cap::CLIENT_LONG_PASSWORD)
}

/// Capability bits that only matter during the login itself.
/// (`CLIENT_SSL` is per hop: set on TLS connections whatever the client asked.)
pub(super) const LOGIN_ONLY: u64 =
    cap::CLIENT_CONNECT_WITH_DB | cap::CLIENT_CONNECT_ATTRS | cap::CLIENT_SSL;

impl BackendConn {
    /// Reads one whole packet (control exchanges only; the relay streams instead).
    pub async fn read_packet(&mut self) -> Result<Packet, BackendError> {
        loop {
            match framing::check(&self.rbuf, MAX_CONTROL_PACKET) {
                Ok(ext) => return Ok(framing::parse(&mut self.rbuf, ext)),
                Err(FrameError::Incomplete) => {}
                Err(e @ FrameError::TooLarge { .. }) => {
                    return Err(BackendError::Protocol(e.to_string()))
                }
            }
            self.rbuf.reserve(8 << 10);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(BackendError::Closed);
            }
        }
    }

    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> Result<(), BackendError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        framing::write_packet(&mut out, seq, payload);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads the answer to a login or change-user, answering mysql_native_password auth
    /// switches. Returns the OK payload.
    async fn finish_auth(&mut self, password: &[u8]) -> Result<Bytes, BackendError> {
        // A server switches plugins at most once per login; a loop is a hostile server.
        for _ in 0..3 {
            let p = self.read_packet().await?;
            match p.payload.first() {
                Some(0x00) => return Ok(p.payload),
                Some(&ERR_HEADER) => {
                    return Err(BackendError::Refused(ErrPacket::parse(&p.payload)?))
                }
                Some(&AUTH_SWITCH_HEADER) => {
                    let sw = AuthSwitchRequest::parse(&p.payload)?;
                    if sw.plugin != NATIVE_PASSWORD_PLUGIN {
                        return Err(BackendError::AuthPlugin(
                            String::from_utf8_lossy(&sw.plugin).into_owned(),
                        ));
                    }
                    self.scramble = sw.data;
                    let token = native_token(password, &self.scramble);
                    self.write_packet(p.last_seq.wrapping_add(1), &token)
                        .await?;
                }
                _ => {
                    return Err(BackendError::Protocol(
                        "unexpected packet during authentication".into(),
                    ))
                }
            }
        }
        Err(BackendError::Protocol(
            "too many authentication rounds".into(),
        ))
    }

    /// COM_CHANGE_USER on this connection, with the session options of `cu` and the password
    /// Sluice holds for the new user. Returns the server's OK payload.
    pub async fn change_user(
        &mut self,
        cu: &ChangeUser,
        password: &[u8],
    ) -> Result<Bytes, BackendError> {
        let req = ChangeUser {
            username: cu.username.clone(),
            auth_response: native_token(password, &self.scramble),
            database: cu.database.clone(),
            charset: cu.charset,
            auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.to_vec()),
            connect_attrs: cu.connect_attrs.clone(),
        };
        let payload = req.encode(self.capabilities);
        self.write_packet(0, &payload).await?;
        let ok = self.finish_auth(password).await?;
        self.user = cu.username.clone();
        Ok(ok)
    }

    /// Says goodbye politely (best effort).
    pub async fn quit(mut self) {
        let _ = self.write_packet(0, &[COM_QUIT]).await;
        let _ = self.stream.shutdown().await;
    }

    /// Whether the server closed the connection (or sent something) while it sat idle; a
    /// cheap non-blocking look at the socket.
    pub fn looks_closed(&self) -> bool {
        use futures::FutureExt;
        let mut b = [0u8; 1];
        match &self.stream {
            MaybeTls::Plain(t) => t.peek(&mut b).now_or_never().is_some(),
            // TLS records (a session ticket) may legitimately arrive; only EOF counts.
            MaybeTls::Tls(t) => matches!(
                t.get_ref().0.peek(&mut b).now_or_never(),
                Some(Ok(0) | Err(_))
            ),
            MaybeTls::Switching => true,
        }
    }

    /// Whether CLIENT_DEPRECATE_EOF is in effect.
    pub fn deprecate_eof(&self) -> bool {
        self.capabilities & cap::CLIENT_DEPRECATE_EOF != 0
    }
}
