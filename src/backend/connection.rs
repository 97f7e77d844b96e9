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
use sluice_proto::scramble::{
    CACHING_SHA2_PLUGIN, NATIVE_PASSWORD_PLUGIN, SHA2_FAST_AUTH_SUCCESS, SHA2_PERFORM_FULL_AUTH,
};
use sluice_proto::ssl_request::SslRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BackendError;
use crate::compress::MaybeCompressed;
use crate::config::Secret;
use crate::tls::{BackendTls, MaybeTls};

/// A connection to a server: plain TCP, or TLS with `[backend_tls]`; compressed after the
/// login with `[[servers]] compress`.
pub type BackendStream = MaybeCompressed<MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Capabilities Sluice always asks a backend for, whatever the client did.
const REQUIRED: u64 = cap::CLIENT_PROTOCOL_41
    | cap::CLIENT_SECURE_CONNECTION
    | cap::CLIENT_PLUGIN_AUTH
    | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | cap::CLIENT_LONG_PASSWORD
    | cap::CLIENT_TRANSACTIONS;

/// Capabilities never passed on to a backend: TLS and compression are per hop, and of
/// MariaDB's extended capabilities only extended metadata (it changes every result's
/// metadata: sessions are partitioned by it), progress reports (partitioned likewise),
/// metadata caching (partitioned likewise: see `relay::ServerMeta`) and bulk operations are
/// negotiated (see `frontend::handshake::OFFERED_EXT`).
const NEVER: u64 = cap::CLIENT_SSL
    | cap::CLIENT_COMPRESS
    | cap::CLIENT_ZSTD_COMPRESSION
    | (!0xFFFF_FFFF
        & !(cap::MARIADB_CLIENT_EXTENDED_METADATA
            | cap::MARIADB_CLIENT_STMT_BULK_OPERATIONS
            | cap::MARIADB_CLIENT_CACHE_METADATA
            | cap::MARIADB_CLIENT_PROGRESS));

/// Asked of every server that offers them, whatever the client asked: they change nothing in
/// the answers to other commands, so a connection with them serves every session, and the
/// sessions of drivers that ask for bulk operations (mysql_async, libmariadb) share pooled
/// connections with those that do not.
const ALWAYS_EXT: u64 = cap::MARIADB_CLIENT_STMT_BULK_OPERATIONS;

/// Asked of every server that offers it, whatever the client asked: session-state tracking.
/// Sluice learns from it what a statement it does not parse changed in the session (a
/// procedure's `SET time_zone`, `USE`), and on MySQL the GTID of each commit; for a client
/// that did not ask for it the relay takes the session-state block out of OK packets, which
/// are otherwise the same bytes (`relay::untrack_ok`). The pools are not split by it.
///
/// And the multi-statement option, which `COM_SET_OPTION` turns off and on: it is session state
/// like `time_zone` (`SessionVars::single_statements`), so the sessions of drivers that differ
/// only by it (PyMySQL and Connector/Python; PHP's mysqli and PDO) share connections.
///
/// And two capabilities that only allow the server to send more: local files (a session that
/// did not enable them has its `LOAD DATA LOCAL` refused by Sluice with the server's error, so
/// no file request reaches it) and the result set of a prepared `CALL`'s OUT parameters (the
/// relay leaves it out for a client that did not ask for it: `relay::out_parameters_at`).
/// Sessions of PyMySQL (with or without local files), Connector/Python and PHP's mysqlnd
/// therefore share connections (libmariadb's still differ by MariaDB's extended capabilities).
const ALWAYS: u64 = cap::CLIENT_SESSION_TRACK
    | cap::CLIENT_MULTI_STATEMENTS
    | cap::CLIENT_LOCAL_FILES
    | cap::CLIENT_PS_MULTI_RESULTS;

/// Largest control packet (handshake, auth) accepted from a server.
const MAX_CONTROL_PACKET: usize = 64 << 10;

/// Who logs in, and with which session options (taken from the client's handshake).
#[derive(Debug, Clone, Copy)]
pub struct LoginParams<'a> {
    pub user: &'a [u8],
    pub secret: Secret<'a>,
    pub database: Option<&'a [u8]>,
    /// The client's capabilities; the backend gets the same, less what is per hop.
    pub capabilities: u64,
    pub charset: u8,
    pub max_packet: u32,
    pub connect_attrs: Option<&'a [u8]>,
}

/// `BackendConn::insert_id_seen` of a connection whose LAST_INSERT_ID() Sluice does not know
/// (never equal to a session's value: the next statement that reads it sets it first).
pub const INSERT_ID_UNKNOWN: u64 = u64::MAX;

/// A logged-in connection to a server.
#[derive(Debug)]
pub struct BackendConn {
    /// The server's configured name.
    pub server: String,
    stream: BackendStream,
    /// Bytes read from the server and not consumed yet.
    rbuf: BytesMut,
    pub handshake: HandshakeV10,
    /// Capabilities in effect on this connection.
    pub capabilities: u64,
    /// The scramble to use for the next COM_CHANGE_USER.
    scramble: Vec<u8>,
    /// The user this connection is logged in as.
    pub user: Vec<u8>,
    /// The connection's slot in its server's pool (released when the connection is dropped).
    pub slot: Option<super::pool::Slot>,
    /// Rows of the last relayed response (result rows plus affected rows), for the digest.
    pub last_rows: u64,
    /// Warnings and last insert id of the last relayed response's final OK/EOF.
    pub last_warnings: u16,
    /// The last OK of the last relayed response that reported a session-state change.
    pub session_state: Option<Vec<u8>>,
    pub last_insert_id: u64,
    /// This connection's LAST_INSERT_ID() as Sluice last read or set it (0 after login;
    /// `INSERT_ID_UNKNOWN` when a session left it changed without Sluice reading it).
    pub insert_id_seen: u64,
    /// A number unique among the connections of this process.
    pub id: u64,
    /// When it was opened (`clock::coarse_monotonic_ms`): `[proxy] pool_max_lifetime_ms`.
    pub opened_ms: u64,
    /// The session loop whose poller the socket is registered with (`loops::home()` where it
    /// was opened): the pool hands it preferably to sessions of that loop.
    pub home: u16,
    /// The character set (collation id) the connection logged in with.
    pub charset: u8,
    /// The session state this connection has (see `state.rs`).
    pub state: super::state::SessionVars,
    /// Statements prepared on this connection, by SQL text.
    pub stmts: super::stmt_cache::StmtCache,
    /// The pool's handle on this connection's socket (see [`Cuttable`]).
    pub(crate) cut: Option<CutGuard>,
}

/// The sockets of a pool's connections, duplicated, so that all of them can be shut down at
/// once from outside the sessions that hold them: when a primary is deposed, a statement
/// blocked on a hung server must end now (with an error to its client) rather than when the
/// server wakes up and commits it.
#[derive(Default)]
pub struct Cuttable {
    sockets: std::sync::Mutex<std::collections::HashMap<u64, socket2::Socket>>,
}

impl Cuttable {
    /// Registers `conn`'s socket (a duplicate descriptor, owned here).
    pub fn register(self: &std::sync::Arc<Self>, conn: &mut BackendConn) {
        let tcp = match conn.stream.get_ref() {
            MaybeTls::Plain(t) => t,
            MaybeTls::Tls(s) => s.get_ref().0,
            MaybeTls::Switching => return,
        };
        let Ok(dup) = socket2::SockRef::from(tcp).try_clone() else {
            return;
        };
        if let Ok(mut m) = self.sockets.lock() {
            m.insert(conn.id, dup);
            conn.cut = Some(CutGuard {
                registry: self.clone(),
                id: conn.id,
            });
        }
    }

    /// Shuts down every registered socket: reads and writes on them fail at once. Returns how
    /// many.
    pub fn cut_all(&self) -> usize {
        let Ok(m) = self.sockets.lock() else {
            return 0;
        };
        for s in m.values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        m.len()
    }
}

/// Removes a connection from its pool's [`Cuttable`] when the connection goes.
pub struct CutGuard {
    registry: std::sync::Arc<Cuttable>,
    id: u64,
}

impl std::fmt::Debug for CutGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CutGuard({})", self.id)
    }
}

impl Drop for CutGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.sockets.lock() {
            m.remove(&self.id);
        }
    }
}

/// How many statements one connection may keep prepared: `[proxy]
/// max_prepared_statements_per_connection`, lowered for all connections of a server when the
/// server answers 1461 (its `max_prepared_stmt_count`, shared with every other client, is
/// reached), so that the connections together stay under the server's limit.
pub struct StmtBudget<'a> {
    pub configured: usize,
    pub learned: &'a std::sync::atomic::AtomicUsize,
}

impl StmtBudget<'_> {
    pub fn capacity(&self) -> usize {
        self.configured
            .min(self.learned.load(std::sync::atomic::Ordering::Relaxed))
            .max(1)
    }

    /// The server refused a prepare while this connection held `held` statements.
    pub fn shrink(&self, held: usize) {
        let to = (held * 3 / 4).max(4);
        self.learned
            .fetch_min(to, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(per_connection = to, "the server's max_prepared_stmt_count was reached: keeping fewer statements prepared per connection");
    }
}

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How a connection reaches its server.
#[derive(Clone, Copy, Default)]
pub struct Transport<'a> {
    /// `[backend_tls]`, when this server is reached over TLS.
    pub tls: Option<&'a BackendTls>,
    /// `[[servers]] compress`: the compressed protocol after the login, when the server offers
    /// it.
    pub compress: bool,
}

/// Connects to `address` and logs in. Returns the connection and the server's final OK payload
/// (to forward to the client). The whole exchange is bounded by `timeout`.
pub async fn connect(
    server: &str,
    address: &str,
    params: LoginParams<'_>,
    timeout: Duration,
    transport: Transport<'_>,
) -> Result<(BackendConn, Bytes), BackendError> {
    let ms = timeout.as_millis() as u64;
    tokio::time::timeout(timeout, connect_inner(server, address, params, transport))
        .await
        .map_err(|_| BackendError::Timeout(ms))?
}

async fn connect_inner(
    server: &str,
    address: &str,
    p: LoginParams<'_>,
    transport: Transport<'_>,
) -> Result<(BackendConn, Bytes), BackendError> {
    let tls = transport.tls;
    let stream = TcpStream::connect(address)
        .await
        .map_err(BackendError::Connect)?;
    stream.set_nodelay(true)?;
    let mut conn = BackendConn {
        server: server.to_string(),
        stream: MaybeCompressed::new(MaybeTls::Plain(stream)),
        rbuf: BytesMut::with_capacity(16 << 10),
        handshake: HandshakeV10::default(),
        capabilities: 0,
        last_rows: 0,
        last_warnings: 0,
        session_state: None,
        last_insert_id: 0,
        insert_id_seen: 0,
        id: NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        opened_ms: crate::clock::coarse_monotonic_ms(),
        home: crate::loops::home(),
        charset: p.charset,
        state: super::state::SessionVars {
            db: p.database.map(<[u8]>::to_vec),
            sets: Vec::new(),
            single_statements: false,
        },
        stmts: Default::default(),
        scramble: Vec::new(),
        user: p.user.to_vec(),
        slot: None,
        cut: None,
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
    let compress = transport.compress && conn.handshake.capabilities & cap::CLIENT_COMPRESS != 0;
    if compress {
        caps |= cap::CLIENT_COMPRESS;
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
        let MaybeTls::Plain(tcp) = std::mem::replace(conn.stream.get_mut(), MaybeTls::Switching)
        else {
            return Err(BackendError::Tls("the connection is not plain TCP".into()));
        };
        let s =
            tls.connector.connect(name, tcp).await.map_err(|e| {
                BackendError::Tls(format!("TLS with {server} ({address}) failed: {e}"))
            })?;
        *conn.stream.get_mut() = MaybeTls::Tls(Box::new(s));
    }
    conn.capabilities = caps;
    conn.state.single_statements = caps & cap::CLIENT_MULTI_STATEMENTS == 0;
    conn.scramble = conn.handshake.auth_data.clone();
    let resp = HandshakeResponse41 {
        capabilities: caps,
        max_packet: p.max_packet,
        charset: p.charset,
        username: p.user.to_vec(),
        auth_response: p.secret.native_token(&conn.scramble),
        database: p.database.map(<[u8]>::to_vec),
        auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.to_vec()),
        connect_attrs: p.connect_attrs.map(<[u8]>::to_vec),
        zstd_level: None,
    };
    conn.write_packet(seq, &resp.encode()).await?;
    let ok = conn.finish_auth(p.secret).await?;
    if compress {
        conn.stream
            .enable(
                sluice_proto::compress::MAX_FRAME,
                crate::compress::Peer::Server,
            )
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
    }
    if conn.is_mysql() && caps & cap::CLIENT_SESSION_TRACK != 0 {
        // Read-your-writes learns each commit's GTID from its OK packet (MySQL has no
        // @@last_gtid; src/frontend/gtid.rs). Without it, the global set is used instead.
        let r = conn
            .control(
                b"\x03SET SESSION session_track_gtids = OWN_GTID",
                sluice_proto::tracker::ResponseKind::Query,
            )
            .await?;
        if let Err(e) = r {
            tracing::debug!(server = %conn.server, error = %String::from_utf8_lossy(&e.message), "session_track_gtids not set");
        }
    }
    Ok((conn, ok))
}

/// The column definitions of a prepare answer (`packets`: the prepare-OK, the parameter
/// definitions, the column definitions, and without `CLIENT_DEPRECATE_EOF` an EOF after each
/// non-empty list) as an execution's answer frames them: sequence ids from 2. `None` when it
/// has no column.
pub fn prepared_definitions(packets: &[Bytes], deprecate_eof: bool) -> Option<Box<[u8]>> {
    let ok = packets.first()?;
    let columns = usize::from(u16::from_le_bytes([*ok.get(5)?, *ok.get(6)?]));
    let params = usize::from(u16::from_le_bytes([*ok.get(7)?, *ok.get(8)?]));
    if columns == 0 {
        return None;
    }
    let eof = usize::from(params > 0 && !deprecate_eof);
    let defs = packets.get(1 + params + eof..1 + params + eof + columns)?;
    let mut out = BytesMut::with_capacity(defs.iter().map(|d| d.len() + 4).sum());
    for (i, p) in defs.iter().enumerate() {
        sluice_proto::framing::write_packet(&mut out, 2u8.wrapping_add(i as u8), p);
    }
    Some(out.to_vec().into_boxed_slice())
}

/// The capabilities a login with the client's `client_caps` gets from a server advertising
/// `server_caps` (before the per-login CONNECT_WITH_DB / CONNECT_ATTRS adjustments).
pub(super) fn negotiate(client_caps: u64, server_caps: u64) -> u64 {
    // MariaDB's extended capabilities count only when the server cleared CLIENT_MYSQL
    // (`CLIENT_LONG_PASSWORD`), and the login then clears it too so that the server reads them.
    let ext = if server_caps & cap::CLIENT_LONG_PASSWORD == 0 {
        (client_caps | ALWAYS_EXT) & server_caps & !0xFFFF_FFFF & !NEVER
    } else {
        0
    };
    let server_caps = server_caps & 0xFFFF_FFFF;
    let caps = ((client_caps | ALWAYS) & server_caps & !NEVER) | REQUIRED;
    let caps = caps & (server_caps | cap::CLIENT_LONG_PASSWORD);
    if ext != 0 {
        (caps & !cap::CLIENT_LONG_PASSWORD) | ext
    } else {
        caps
    }
}

/// Capability bits that only matter during the login itself.
/// (`CLIENT_SSL` and `CLIENT_COMPRESS` are per hop: set as the server's configuration says,
/// whatever the client asked.)
pub(super) const LOGIN_ONLY: u64 = cap::CLIENT_CONNECT_WITH_DB
    | cap::CLIENT_CONNECT_ATTRS
    | cap::CLIENT_SSL
    | cap::CLIENT_COMPRESS;

/// Whether a server greeting's version names MySQL rather than MariaDB (see
/// [`BackendConn::is_mysql`]).
pub fn is_mysql_version(v: &[u8]) -> bool {
    !(v.starts_with(b"5.5.5-") || v.windows(7).any(|w| w == b"MariaDB"))
}

impl BackendConn {
    /// Whether the server is MySQL rather than MariaDB: GTIDs and their functions differ.
    /// MariaDB's greeting names it, or starts with `5.5.5-` (MariaDB 10+, and Sluice's own
    /// greeting when it has not seen a server yet).
    pub fn is_mysql(&self) -> bool {
        is_mysql_version(&self.handshake.server_version)
    }

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
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads the answer to a login or change-user, answering auth switches to
    /// mysql_native_password and caching_sha2_password (fast path; the full authentication
    /// over TLS, where the password may be sent). Returns the OK payload.
    async fn finish_auth(&mut self, secret: Secret<'_>) -> Result<Bytes, BackendError> {
        // A server switches plugins at most once per login and asks for more data at most
        // twice; more rounds are a hostile server.
        let mut sha2 = false;
        for _ in 0..4 {
            let p = self.read_packet().await?;
            let next = p.last_seq.wrapping_add(1);
            match p.payload.first() {
                Some(0x00) => return Ok(p.payload),
                Some(&ERR_HEADER) => {
                    return Err(BackendError::Refused(ErrPacket::parse(&p.payload)?))
                }
                Some(&AUTH_SWITCH_HEADER) => {
                    let sw = AuthSwitchRequest::parse(&p.payload)?;
                    // The scramble may end with a NUL (as in the greeting).
                    let mut salt = sw.data;
                    if salt.len() > 20 && salt.last() == Some(&0) {
                        salt.pop();
                    }
                    self.scramble = salt;
                    let token = if sw.plugin == NATIVE_PASSWORD_PLUGIN {
                        sha2 = false;
                        secret.native_token(&self.scramble)
                    } else if sw.plugin == CACHING_SHA2_PLUGIN {
                        sha2 = true;
                        secret.sha2_token(&self.scramble).ok_or_else(|| {
                            BackendError::AuthPlugin(
                                "caching_sha2_password (for an account read from the database, Sluice holds no password)".into(),
                            )
                        })?
                    } else {
                        return Err(BackendError::AuthPlugin(
                            String::from_utf8_lossy(&sw.plugin).into_owned(),
                        ));
                    };
                    self.write_packet(next, &token).await?;
                }
                Some(0x01) if sha2 && p.payload[..] == SHA2_FAST_AUTH_SUCCESS => {}
                Some(0x01) if sha2 && p.payload[..] == SHA2_PERFORM_FULL_AUTH => {
                    let Some(pw) = secret.password() else {
                        return Err(BackendError::AuthPlugin(
                            "caching_sha2_password full authentication (for an account read from the database, Sluice holds no password)".into(),
                        ));
                    };
                    if self.is_tls() {
                        // The password in clear, which only an encrypted link may carry.
                        let mut out = pw.to_vec();
                        out.push(0);
                        self.write_packet(next, &out).await?;
                    } else {
                        // On plaintext: ask for the server's RSA public key and send the
                        // password encrypted with it (src/rsa_auth.rs).
                        self.write_packet(next, &[crate::rsa_auth::REQUEST_PUBLIC_KEY])
                            .await?;
                        let k = self.read_packet().await?;
                        let pem = match k.payload.split_first() {
                            Some((0x01, pem)) => pem,
                            Some((&ERR_HEADER, _)) => {
                                return Err(BackendError::Refused(ErrPacket::parse(&k.payload)?))
                            }
                            _ => {
                                return Err(BackendError::Protocol(
                                    "no public key in answer to caching_sha2_password's request"
                                        .into(),
                                ))
                            }
                        };
                        let blob = crate::rsa_auth::encrypt_password(pem, pw, &self.scramble)
                            .map_err(BackendError::AuthPlugin)?;
                        self.write_packet(k.last_seq.wrapping_add(1), &blob).await?;
                    }
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
        secret: Secret<'_>,
    ) -> Result<Bytes, BackendError> {
        let req = ChangeUser {
            username: cu.username.clone(),
            auth_response: secret.native_token(&self.scramble),
            database: cu.database.clone(),
            charset: cu.charset,
            auth_plugin: Some(NATIVE_PASSWORD_PLUGIN.to_vec()),
            connect_attrs: cu.connect_attrs.clone(),
        };
        let payload = req.encode(self.capabilities);
        self.write_packet(0, &payload).await?;
        let ok = self.finish_auth(secret).await?;
        self.user = cu.username.clone();
        // The server dropped the session: variables, statements, temporary tables.
        self.state = super::state::SessionVars {
            db: (!cu.database.is_empty()).then(|| cu.database.clone()),
            sets: Vec::new(),
            // The server keeps the option (it is the connection's, not the session's).
            single_statements: self.state.single_statements,
        };
        if let Some(cs) = cu.charset {
            self.charset = cs as u8;
        }
        self.stmts.clear_forgotten();
        self.insert_id_seen = 0;
        Ok(ok)
    }

    /// Logs in again as the same user with no default database (COM_CHANGE_USER): the
    /// server forgets every session state of this connection.
    pub async fn relogin(&mut self, secret: Secret<'_>) -> Result<(), BackendError> {
        let cu = ChangeUser {
            username: self.user.clone(),
            auth_response: Vec::new(),
            database: Vec::new(),
            charset: Some(u16::from(self.charset)),
            auth_plugin: None,
            connect_attrs: None,
        };
        self.change_user(&cu, secret).await.map(|_| ())
    }

    /// Runs a command whose whole answer Sluice reads (state changes, prepares, lookups).
    /// Returns the first packet of the answer, or the server's error (the connection stays
    /// usable); `Err` when the connection broke or misbehaved.
    pub async fn control(
        &mut self,
        payload: &[u8],
        kind: sluice_proto::tracker::ResponseKind,
    ) -> Result<Result<Vec<u8>, ErrPacket>, BackendError> {
        self.control_value(payload, kind)
            .await
            .map(|r| r.map(|(first, _)| first))
    }

    /// Like [`BackendConn::control`]; also returns the first column of the first row (text
    /// protocol; `None` for NULL or no row).
    pub async fn control_value(
        &mut self,
        payload: &[u8],
        kind: sluice_proto::tracker::ResponseKind,
    ) -> Result<Result<(Vec<u8>, Option<Vec<u8>>), ErrPacket>, BackendError> {
        self.control_inner(payload, kind).await.map(|r| {
            r.map(|(first, row)| (first, row.and_then(|r| r.into_iter().next().flatten())))
        })
    }

    /// Runs a text query and returns its first row (`None`: no row or an error).
    pub async fn control_row(
        &mut self,
        payload: &[u8],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, BackendError> {
        self.control_inner(payload, sluice_proto::tracker::ResponseKind::Query)
            .await
            .map(|r| r.ok().and_then(|(_, row)| row))
    }

    async fn control_inner(
        &mut self,
        payload: &[u8],
        kind: sluice_proto::tracker::ResponseKind,
    ) -> Result<Result<(Vec<u8>, Option<Vec<Option<Vec<u8>>>>), ErrPacket>, BackendError> {
        use sluice_proto::tracker::{Progress, ResponseTracker};
        if self.query_attributes() && payload.first() == Some(&sluice_proto::command::COM_QUERY) {
            // Negotiated query attributes: Sluice's own statements carry none.
            let mut p = Vec::with_capacity(payload.len() + 2);
            p.push(sluice_proto::command::COM_QUERY);
            sluice_proto::query_attrs::join_query(&Default::default(), &payload[1..], &mut p);
            self.write_packet(0, &p).await?;
        } else {
            self.write_packet(0, payload).await?;
        }
        let mut t = ResponseTracker::new(kind, self.deprecate_eof())
            .with_cache_metadata(self.cache_metadata());
        let mut first = None;
        let mut index = 0usize;
        let mut columns = 0u64;
        let mut row = None;
        loop {
            let p = self.read_packet().await?;
            if first.is_none() {
                if p.payload.first() == Some(&ERR_HEADER) {
                    return Ok(Err(ErrPacket::parse(&p.payload)?));
                }
                if kind == sluice_proto::tracker::ResponseKind::Query
                    && p.payload.first() != Some(&0)
                {
                    columns = sluice_proto::lenenc::Reader::new(&p.payload)
                        .lenenc_int("column count")
                        .unwrap_or(0);
                }
                first = Some(p.payload.to_vec());
            }
            // The first row follows the count, the column definitions and (classic) their EOF.
            let first_row = 1 + columns as usize + usize::from(!self.deprecate_eof());
            if columns > 0 && index == first_row && p.payload.first() != Some(&0xFE) {
                let mut r = sluice_proto::lenenc::Reader::new(&p.payload);
                let mut values = Vec::with_capacity(columns as usize);
                for _ in 0..columns {
                    values.push(match r.peek() {
                        Some(0xFB) => {
                            let _ = r.u8("null");
                            None
                        }
                        _ => r.lenenc_bytes("value").ok().map(<[u8]>::to_vec),
                    });
                }
                row = Some(values);
            }
            index += 1;
            let progress = t
                .feed(p.payload.len(), &p.payload)
                .map_err(|e| BackendError::Protocol(e.to_string()))?;
            match progress {
                Progress::Done(_) => return Ok(Ok((first.unwrap_or_default(), row))),
                Progress::More => {}
                Progress::LocalInfile => {
                    return Err(BackendError::Protocol(
                        "unexpected LOCAL INFILE request".into(),
                    ))
                }
            }
        }
    }

    /// The server's id for `sql` on this connection, preparing it when needed (the least
    /// recently used statement is closed when the cache is full). `Ok(Err)` is the server's
    /// refusal. See [`StmtBudget`] for the server's `max_prepared_stmt_count`.
    pub async fn prepared(
        &mut self,
        sql: &std::sync::Arc<[u8]>,
        budget: &StmtBudget<'_>,
    ) -> Result<Result<u32, ErrPacket>, BackendError> {
        if let Some(id) = self.stmts.get(sql) {
            return Ok(Ok(id));
        }
        self.prepare_for_client(sql, budget)
            .await
            .map(|r| r.map(|(id, _, _)| id))
    }

    /// [`Self::prepared`] for a session that keeps a [`Memo`] per statement: found through
    /// the memo when it still holds (no hashing of the text), the memo renewed otherwise.
    pub async fn prepared_memo(
        &mut self,
        sql: &std::sync::Arc<[u8]>,
        memo: &mut Option<super::stmt_cache::Memo>,
        budget: &StmtBudget<'_>,
    ) -> Result<Result<u32, ErrPacket>, BackendError> {
        if let Some(id) = self.stmts.get_memo(self.id, sql, memo) {
            return Ok(Ok(id));
        }
        let r = self.prepare_for_client(sql, budget).await?;
        if r.is_ok() {
            // Memo of the new statement (a lookup, once per preparation).
            self.stmts.get_memo(self.id, sql, memo);
        }
        Ok(r.map(|(id, _, _)| id))
    }

    /// Prepares `sql` for a client's COM_STMT_PREPARE and returns the server's whole answer
    /// (prepare-OK, parameter and column definitions) to relay, with the server's id and the
    /// parameter count. When the server's `max_prepared_stmt_count` is reached, the least
    /// recently used statement of this connection is closed and the prepare retried once, so
    /// the client does not see an error other sessions caused. The statement joins the
    /// connection's cache (an older copy of the same text is closed).
    pub async fn prepare_for_client(
        &mut self,
        sql: &std::sync::Arc<[u8]>,
        budget: &StmtBudget<'_>,
    ) -> Result<Result<(u32, u16, Vec<Bytes>), ErrPacket>, BackendError> {
        use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(sluice_proto::command::COM_STMT_PREPARE);
        p.extend_from_slice(sql);
        if let Some(old) = self.stmts.remove(sql) {
            self.close_statement(old).await?;
        }
        for attempt in 0..4 {
            while self.stmts.len() >= budget.capacity() {
                self.close_lru().await?;
            }
            self.write_packet(0, &p).await?;
            let mut t = ResponseTracker::new(ResponseKind::Prepare, self.deprecate_eof());
            let mut packets = Vec::new();
            loop {
                let pk = self.read_packet().await?;
                if packets.is_empty() && pk.payload.first() == Some(&ERR_HEADER) {
                    let e = ErrPacket::parse(&pk.payload)?;
                    if e.code == 1461 && attempt < 3 && !self.stmts.is_empty() {
                        // The server is full: every connection of this server keeps fewer
                        // from now on, and this one makes room now.
                        budget.shrink(self.stmts.len());
                        self.close_lru().await?;
                        break;
                    }
                    return Ok(Err(e));
                }
                let progress = t
                    .feed(pk.payload.len(), &pk.payload)
                    .map_err(|e| BackendError::Protocol(e.to_string()))?;
                packets.push(pk.payload);
                match progress {
                    Progress::More => {}
                    Progress::Done(_) => {
                        let first = &packets[0];
                        if first.len() < 9 {
                            return Err(BackendError::Protocol("short prepare answer".into()));
                        }
                        let id = u32::from_le_bytes([first[1], first[2], first[3], first[4]]);
                        let params = u16::from_le_bytes([first[7], first[8]]);
                        // A copy of its own: the cache is read by the sessions of every
                        // core, and the session's text has its reference count written on
                        // each execution (one cache line would bounce between cores).
                        // With cached metadata the server leaves the definitions out of
                        // the next execution: they are kept from here.
                        let meta = if self.cache_metadata() {
                            prepared_definitions(&packets, self.deprecate_eof())
                        } else {
                            None
                        };
                        self.stmts.insert(std::sync::Arc::from(&sql[..]), id, meta);
                        self.trim_metadata(1).await?;
                        return Ok(Ok((id, params, packets)));
                    }
                    Progress::LocalInfile => {
                        return Err(BackendError::Protocol("unexpected LOCAL INFILE".into()))
                    }
                }
            }
        }
        Err(BackendError::Protocol(
            "the server kept refusing the prepare (max_prepared_stmt_count)".into(),
        ))
    }

    /// Closes statements, least recently used first, while the column definitions kept for
    /// them exceed their budget (see [`super::stmt_cache::MAX_METADATA_BYTES`]), keeping at
    /// least `keep` of them.
    pub async fn trim_metadata(&mut self, keep: usize) -> Result<(), BackendError> {
        while self.stmts.metadata_over_budget() && self.stmts.len() > keep {
            self.close_lru().await?;
        }
        Ok(())
    }

    async fn close_lru(&mut self) -> Result<(), BackendError> {
        if let Some(id) = self.stmts.pop_lru() {
            self.close_statement(id).await?;
        }
        Ok(())
    }

    /// COM_STMT_CLOSE (the server sends no answer).
    pub async fn close_statement(&mut self, id: u32) -> Result<(), BackendError> {
        let mut p = [sluice_proto::command::COM_STMT_CLOSE, 0, 0, 0, 0];
        p[1..5].copy_from_slice(&id.to_le_bytes());
        self.write_packet(0, &p).await
    }

    /// Says goodbye politely (best effort).
    pub async fn quit(mut self) {
        let _ = self.write_packet(0, &[COM_QUIT]).await;
        let _ = self.stream.shutdown().await;
    }

    /// Whether the server closed the connection (or sent something) while it sat idle: one
    /// non-blocking `recv(MSG_PEEK)` on the socket. It asks the kernel, not the runtime's
    /// cached readiness, which is only refreshed when the loop that owns the socket polls
    /// (a connection of another loop, or a close that arrived after this loop's last poll).
    pub fn looks_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let (fd, tls) = match self.stream.get_ref() {
            MaybeTls::Plain(t) => (t.as_raw_fd(), false),
            MaybeTls::Tls(t) => (t.get_ref().0.as_raw_fd(), true),
            MaybeTls::Switching => return true,
        };
        let mut b = [0u8; 1];
        // SAFETY: `fd` is an open socket owned by `self.stream` for the whole call, and the
        // buffer is valid for the one byte asked for.
        let n = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true, // EOF: the server closed it
            // Bytes while idle: an error the server sent before closing (KILL, timeout). A
            // TLS record (a session ticket) may legitimately arrive: only EOF counts there.
            n if n > 0 => !tls,
            _ => {
                let e = std::io::Error::last_os_error().kind();
                !matches!(
                    e,
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                )
            }
        }
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.get_ref().is_tls()
    }

    /// The socket and its read buffer, for the relay, and the column definitions the server
    /// last sent for the statement `memo` names (with cached metadata).
    pub fn relay_parts(
        &mut self,
        memo: Option<super::stmt_cache::Memo>,
    ) -> (&mut BackendStream, &mut BytesMut, Option<&[u8]>) {
        (
            &mut self.stream,
            &mut self.rbuf,
            self.stmts.metadata(self.id, memo),
        )
    }

    /// Whether `MARIADB_CLIENT_CACHE_METADATA` was negotiated: every column count carries a
    /// "metadata follows" byte, and an execution whose column definitions the server sent
    /// last for its statement leaves them out.
    pub fn cache_metadata(&self) -> bool {
        self.capabilities & cap::MARIADB_CLIENT_CACHE_METADATA != 0
    }

    /// Writes bytes as they are (a client's command, already framed).
    /// Whether MySQL query attributes were negotiated: every `COM_QUERY` and
    /// `COM_STMT_EXECUTE` then has their layout (`sluice_proto::query_attrs`).
    pub fn query_attributes(&self) -> bool {
        self.capabilities & cap::CLIENT_QUERY_ATTRIBUTES != 0
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        // Frames the bytes when compressed (nothing to do on a plain socket).
        self.stream.flush().await?;
        Ok(())
    }

    /// Whether bytes the server sent are waiting unread (the connection is then not in a
    /// known state between commands).
    pub fn has_unread(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Resolves when the server closes the connection or speaks while no command is
    /// outstanding (a connection a session holds between commands). Cancel-safe: anything read
    /// stays in the buffer.
    pub async fn idle_event(&mut self) -> String {
        if !self.rbuf.is_empty() {
            return "server sent data with no command outstanding".into();
        }
        // A plain, uncompressed connection (the common case) waits for readiness alone: the
        // wait is set up between every two statements of a transaction, and a read through
        // the stream layers costs about twice as much. Readiness may be spurious; the read
        // below then waits on.
        if let (false, MaybeTls::Plain(tcp)) = (self.stream.is_compressed(), self.stream.get_ref())
        {
            if let Err(e) = std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await {
                return e.to_string();
            }
        }
        self.rbuf.reserve(1024);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => "server closed the connection".into(),
            Ok(_) => "server sent data with no command outstanding".into(),
            Err(e) => e.to_string(),
        }
    }

    /// Whether CLIENT_DEPRECATE_EOF is in effect.
    pub fn deprecate_eof(&self) -> bool {
        self.capabilities & cap::CLIENT_DEPRECATE_EOF != 0
    }
}
