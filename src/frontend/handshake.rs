//! Greets a client and authenticates it against `[[users]]` with `mysql_native_password`:
//! a random 20-byte salt, an AuthSwitch when the client proposes another plugin, and a
//! constant-time check of the token. Nothing reaches a backend before this succeeds.

use rand::Rng;
use sluice_proto::auth_switch::AuthSwitchRequest;
use sluice_proto::flags::{cap, status};
use sluice_proto::handshake::HandshakeV10;
use sluice_proto::handshake_response::HandshakeResponse41;
use sluice_proto::scramble::{native_hash, verify_native, NATIVE_PASSWORD_PLUGIN};
use sluice_proto::ssl_request::SslRequest;

use super::client::ClientConn;
use super::SessionError;
use crate::accounts::Found;
use crate::cluster::ServerHello;
use crate::config::UserConfig;
use crate::errors;

/// Capabilities Sluice can relay, as far as the primary has them (`CLIENT_SSL` is added when
/// `[proxy.tls]` is set, `CLIENT_COMPRESS` with `[proxy] compression`: both are per hop).
pub const SUPPORTED: u64 = cap::CLIENT_LONG_PASSWORD
    | cap::CLIENT_FOUND_ROWS
    | cap::CLIENT_LONG_FLAG
    | cap::CLIENT_CONNECT_WITH_DB
    | cap::CLIENT_NO_SCHEMA
    | cap::CLIENT_ODBC
    | cap::CLIENT_LOCAL_FILES
    | cap::CLIENT_IGNORE_SPACE
    | cap::CLIENT_PROTOCOL_41
    | cap::CLIENT_INTERACTIVE
    | cap::CLIENT_IGNORE_SIGPIPE
    | cap::CLIENT_TRANSACTIONS
    | cap::CLIENT_SECURE_CONNECTION
    | cap::CLIENT_MULTI_STATEMENTS
    | cap::CLIENT_MULTI_RESULTS
    | cap::CLIENT_PS_MULTI_RESULTS
    | cap::CLIENT_PLUGIN_AUTH
    | cap::CLIENT_CONNECT_ATTRS
    | cap::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | cap::CLIENT_SESSION_TRACK
    | cap::CLIENT_DEPRECATE_EOF
    | cap::CLIENT_REMEMBER_OPTIONS;

/// MariaDB extended capabilities offered to clients when the primary offers them:
/// extended column metadata (the `json`, `uuid`, … type names a driver maps types from) is
/// negotiated on every server connection the session uses and relayed as is; bulk
/// operations (`COM_STMT_BULK_EXECUTE`, routed as a write); progress reports (ERR-shaped
/// packets with code 0xFFFF in the middle of a long statement's response, relayed as they
/// come: the response tracker does not take them for the end); metadata caching
/// (`MARIADB_CLIENT_CACHE_METADATA`), which Sluice provides to the client itself (a statement
/// is prepared again on each connection a session uses, so a server's "metadata unchanged"
/// would describe another preparation): it leaves out an execution's column definitions when
/// they are the ones the client received last for that statement (`relay::Metadata`), and
/// asks the server for it too, keeping what each server connection last sent per statement
/// (`relay::ServerMeta`).
pub const OFFERED_EXT: u64 = cap::MARIADB_CLIENT_EXTENDED_METADATA
    | cap::MARIADB_CLIENT_STMT_BULK_OPERATIONS
    | cap::MARIADB_CLIENT_PROGRESS
    | cap::MARIADB_CLIENT_CACHE_METADATA;

/// Used before the primary's own handshake is known.
const DEFAULT_VERSION: &[u8] = b"5.5.5-10.11.0-Sluice";

/// A client that proved who it is.
pub struct Authenticated {
    pub user: UserConfig,
    pub response: HandshakeResponse41,
    /// Capabilities in effect between the client and Sluice.
    pub capabilities: u64,
    /// The salt the client will use for COM_CHANGE_USER.
    pub salt: Vec<u8>,
    /// Sequence id for Sluice's next packet to the client.
    pub next_seq: u8,
}

/// A fresh salt: 20 bytes, none of them NUL (the handshake NUL-terminates it).
pub fn new_salt() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    (0..20).map(|_| rng.gen_range(1u8..=127)).collect()
}

/// The authentication methods Sluice verifies itself (it holds the users' passwords).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthPlugin {
    /// `mysql_native_password`.
    #[default]
    Native,
    /// `caching_sha2_password`, fast path (`0x01 0x03` before the OK); no RSA, no full
    /// authentication exchange: Sluice always knows the password, so a wrong token is a
    /// wrong password.
    CachingSha2,
}

impl AuthPlugin {
    pub const ALL: [AuthPlugin; 2] = [AuthPlugin::Native, AuthPlugin::CachingSha2];

    pub fn name(self) -> &'static [u8] {
        match self {
            AuthPlugin::Native => NATIVE_PASSWORD_PLUGIN,
            AuthPlugin::CachingSha2 => sluice_proto::scramble::CACHING_SHA2_PLUGIN,
        }
    }

    pub fn from_name(name: &[u8]) -> Option<AuthPlugin> {
        AuthPlugin::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Checks a token in time that does not depend on where it differs.
    pub fn verify(self, password: &[u8], salt: &[u8], token: &[u8]) -> bool {
        match self {
            AuthPlugin::Native => {
                let stored = (!password.is_empty()).then(|| native_hash(password));
                verify_native(stored.as_ref(), salt, token)
            }
            AuthPlugin::CachingSha2 => sluice_proto::scramble::verify_sha2(password, salt, token),
        }
    }
}

/// The plugins `user` may log in with, preferred first (an AuthSwitch asks for the first).
pub fn allowed_plugins(user: &UserConfig) -> Vec<AuthPlugin> {
    let listed: Vec<AuthPlugin> = user
        .auth_plugins
        .iter()
        .filter_map(|n| AuthPlugin::from_name(n.as_bytes()))
        .collect();
    if listed.is_empty() {
        AuthPlugin::ALL.to_vec()
    } else {
        listed
    }
}

/// Where a listener finds its users.
pub enum Users<'a> {
    /// A fixed list (the admin port).
    List(&'a [UserConfig]),
    /// `[[users]]` and/or the database's accounts, by `[auth] source`.
    Source {
        shared: &'a crate::state::Shared,
        config: &'a crate::config::Config,
    },
}

impl Users<'_> {
    /// Whether `user` logged in with caching_sha2_password's full authentication before
    /// (with this password); the admin port never asks for it.
    pub fn sha2_cached(&self, user: &UserConfig) -> bool {
        match self {
            Users::List(_) => true,
            Users::Source { shared, .. } => shared.sha2_cache.contains(user),
        }
    }

    pub fn sha2_remember(&self, user: &UserConfig) {
        if let Users::Source { shared, .. } = self {
            shared.sha2_cache.insert(user);
        }
    }

    pub async fn find(&self, name: &[u8], ip: std::net::IpAddr) -> Found {
        match self {
            Users::List(list) => list
                .iter()
                .find(|u| u.name.as_bytes() == name)
                .map_or(Found::Unknown, |u| Found::User(u.clone())),
            Users::Source { shared, config } => shared.find_user(config, name, ip).await,
        }
    }
}

/// Checks `token` for `user` with `plugin`. A database account (mysql_native_password only)
/// is checked against its stored hash, and on success keeps what logs in to the servers.
pub fn verify_user(user: &mut UserConfig, plugin: AuthPlugin, salt: &[u8], token: &[u8]) -> bool {
    match &mut user.db {
        None => plugin.verify(user.password.as_bytes(), salt, token),
        Some(_) if plugin != AuthPlugin::Native => false,
        Some(db) => match &db.stored {
            None => token.is_empty(),
            Some(stored) => match sluice_proto::scramble::native_stage1(stored, salt, token) {
                Some(stage1) => {
                    db.stage1 = Some(stage1);
                    true
                }
                None => false,
            },
        },
    }
}

/// The user a lookup found, and the error to send instead of the OK once its password is
/// verified (a locked or expired account, as the server checks them after the password).
pub fn found_user(
    found: Found,
    name: &[u8],
) -> (Option<UserConfig>, Option<sluice_proto::err::ErrPacket>) {
    match found {
        Found::User(u) => (Some(u), None),
        Found::Locked(u) => (Some(u), Some(errors::account_locked())),
        Found::Expired(u) => (Some(u), Some(errors::password_expired())),
        Found::Unsupported { account, plugin } => {
            tracing::warn!(
                user = %String::from_utf8_lossy(name),
                %account,
                %plugin,
                "login refused: Sluice cannot verify this account's authentication plugin (only mysql_native_password accounts can be read from the database)"
            );
            (None, None)
        }
        Found::Unknown => (None, None),
    }
}

/// How a listener authenticates.
#[derive(Default, Clone)]
pub struct AuthOptions {
    /// Apply each user's `allow` list to the client's address.
    pub check_address: bool,
    /// Offer TLS (`CLIENT_SSL`) with this acceptor.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Refuse a client that does not switch to TLS, before reading its credentials.
    pub require_tls: bool,
    /// The plugin named in the greeting (`[proxy] default_auth_plugin`).
    pub greeting_plugin: AuthPlugin,
    /// Offer `CLIENT_COMPRESS` (the caller then compresses after the login's OK).
    pub compression: bool,
    /// `[proxy] query_attributes`: when `CLIENT_QUERY_ATTRIBUTES` is offered.
    pub query_attributes: crate::config::QueryAttributes,
    /// `[proxy] rsa_private_key`: caching_sha2_password's full authentication on plaintext
    /// links by the RSA exchange.
    pub rsa: Option<std::sync::Arc<crate::rsa_auth::ServerKey>>,
}

/// Sends `payload` with sequence id `seq` during the login and reads the client's answer,
/// which must carry `seq + 1` (else 1156 and the login ends, as the server does).
async fn ask(
    client: &mut ClientConn,
    seq: u8,
    payload: &[u8],
    what: &str,
) -> Result<sluice_proto::framing::Packet, SessionError> {
    client.write_packet(seq, payload).await?;
    let reply = client.read_packet().await?;
    if reply.seq != seq.wrapping_add(1) {
        let at = reply.last_seq.wrapping_add(1);
        client.send_err(at, &errors::out_of_order()).await?;
        return Err(SessionError::Malformed(format!(
            "{what} answer with sequence id {} instead of {}",
            reply.seq,
            seq.wrapping_add(1)
        )));
    }
    Ok(reply)
}

/// Greets the client and checks its credentials against `users`. A refused login waits
/// `refusal_delay(user)` before its 1045 (the wrong-password throttle).
pub async fn authenticate(
    client: &mut ClientConn,
    users: &Users<'_>,
    connection_id: u32,
    hello: Option<&ServerHello>,
    opts: &AuthOptions,
    refusal_delay: &(dyn Fn(&str) -> std::time::Duration + Sync),
) -> Result<Authenticated, SessionError> {
    let check_address = opts.check_address;
    let salt = new_salt();
    let server_caps = hello.map_or(u64::from(u32::MAX), |h| h.capabilities & 0xFFFF_FFFF);
    let mut offered = SUPPORTED & (server_caps | cap::CLIENT_LONG_PASSWORD);
    // A MariaDB primary (CLIENT_MYSQL cleared) with extended capabilities: offer the ones
    // Sluice relays, signalled the same way.
    let ext = hello.map_or(0, |h| {
        if h.capabilities & cap::CLIENT_LONG_PASSWORD == 0 {
            h.capabilities & OFFERED_EXT
        } else {
            0
        }
    });
    if ext != 0 {
        offered = (offered & !cap::CLIENT_LONG_PASSWORD) | ext;
    }
    if opts.tls.is_some() {
        offered |= cap::CLIENT_SSL;
    }
    // MySQL query attributes: Sluice takes them off each command and puts them back for the
    // server connections that negotiated them (src/frontend/session.rs, `attributes`).
    let primary_attrs = hello.is_some_and(|h| h.capabilities & cap::CLIENT_QUERY_ATTRIBUTES != 0);
    match opts.query_attributes {
        crate::config::QueryAttributes::Relay if primary_attrs => {
            offered |= cap::CLIENT_QUERY_ATTRIBUTES
        }
        crate::config::QueryAttributes::Accept => offered |= cap::CLIENT_QUERY_ATTRIBUTES,
        _ => {}
    }
    // Terminated by Sluice, whatever the servers offer.
    if opts.compression {
        offered |= cap::CLIENT_COMPRESS | cap::CLIENT_ZSTD_COMPRESSION;
    }
    let greeting = HandshakeV10 {
        server_version: hello.map_or(DEFAULT_VERSION.to_vec(), |h| h.version.clone()),
        connection_id,
        auth_data: salt.clone(),
        capabilities: offered,
        charset: hello.map_or(45, |h| h.charset),
        status: status::SERVER_STATUS_AUTOCOMMIT,
        auth_plugin: opts.greeting_plugin.name().to_vec(),
    };
    client.write_packet(0, &greeting.encode()).await?;

    // Not a byte past the first packet: after an SSLRequest comes the TLS handshake.
    let mut pkt = client.read_packet_exact().await?;
    let mut seq = pkt.last_seq.wrapping_add(1);
    // The answer to the greeting (sequence 0) is 1; anything else is refused, as the server
    // does (1156), before a byte of it is believed.
    let mut want = 1u8;
    if SslRequest::is_ssl_request(&pkt.payload) {
        let Some(acceptor) = &opts.tls else {
            let e = sluice_proto::err::ErrPacket::new(
                errors::ER_HANDSHAKE_ERROR,
                b"08S01",
                "Sluice: TLS is not enabled on this listener",
            );
            client.send_err(seq, &e).await?;
            return Err(SessionError::Malformed(
                "SSLRequest while TLS is off".into(),
            ));
        };
        if pkt.seq != want {
            client.send_err(seq, &errors::out_of_order()).await?;
            return Err(SessionError::Malformed(format!(
                "SSLRequest with sequence id {} instead of {want}",
                pkt.seq
            )));
        }
        client.start_tls(acceptor).await?;
        pkt = client.read_packet().await?;
        seq = pkt.last_seq.wrapping_add(1);
        want = 2;
    } else if opts.require_tls {
        // Refused on the first four bytes (capability flags): the credentials that follow
        // are never parsed, let alone checked or sent anywhere.
        client.send_err(seq, &errors::insecure_transport()).await?;
        return Err(SessionError::InsecureTransport);
    }
    if pkt.seq != want {
        client.send_err(seq, &errors::out_of_order()).await?;
        return Err(SessionError::Malformed(format!(
            "handshake response with sequence id {} instead of {want}",
            pkt.seq
        )));
    }
    let response = match HandshakeResponse41::parse(&pkt.payload) {
        Ok(r) => r,
        Err(e) => {
            client.send_err(seq, &errors::bad_handshake()).await?;
            return Err(SessionError::Malformed(e.to_string()));
        }
    };
    let capabilities = response.capabilities & offered;

    let (mut user, refusal) = found_user(
        users.find(&response.username, client.peer.ip()).await,
        &response.username,
    );
    // The client answered the greeting with this plugin's token (pre-4.1 style clients
    // without CLIENT_PLUGIN_AUTH always use mysql_native_password).
    let answered = if capabilities & cap::CLIENT_PLUGIN_AUTH != 0 {
        match response.auth_plugin.as_deref() {
            Some(name) => AuthPlugin::from_name(name),
            None => Some(opts.greeting_plugin),
        }
    } else {
        Some(AuthPlugin::Native)
    };
    // An unknown user is offered every plugin, so that the exchange does not tell whether
    // the name exists.
    let allowed = user
        .as_ref()
        .map_or(AuthPlugin::ALL.to_vec(), allowed_plugins);
    let mut token = response.auth_response.clone();
    let plugin = match answered {
        Some(p) if allowed.contains(&p) => p,
        _ => {
            let to = allowed[0];
            let sw = AuthSwitchRequest {
                plugin: to.name().to_vec(),
                data: salt.clone(),
            };
            let reply = ask(client, seq, &sw.encode(), "auth switch").await?;
            seq = reply.last_seq.wrapping_add(1);
            token = reply.payload.to_vec();
            to
        }
    };
    let address_ok = !user
        .as_ref()
        .is_some_and(|u| check_address && !super::firewall::user_admits(u, client.peer.ip()));
    // Checked whatever the address: the answer takes the same time either way.
    let verified = user
        .as_mut()
        .is_some_and(|u| verify_user(u, plugin, &salt, &token));
    let mut ok = verified && address_ok;
    let tls = client.stream.get_ref().tls_info().is_some();
    // caching_sha2_password: as MySQL does, a full authentication for a user not in the cache
    // and for a scramble that does not verify (a client that computes it differently — sqlx
    // 0.8 hashes the nonce first — or a stale cache), when the link can carry the password:
    // TLS, or Sluice's RSA key (`[proxy] rsa_private_key`). Without either, a plaintext link
    // keeps the fast path alone: Sluice holds the password, so a good scramble proves it.
    // Unknown names and refused addresses are asked too, so that the exchange does not tell
    // them apart from a wrong password.
    let sha2_full = plugin == AuthPlugin::CachingSha2
        && !token.is_empty()
        && (tls || opts.rsa.is_some())
        && !user.as_ref().is_some_and(|u| u.db.is_some())
        && (!verified || user.as_ref().is_some_and(|u| !users.sha2_cached(u)));
    if sha2_full {
        let full = sluice_proto::scramble::SHA2_PERFORM_FULL_AUTH;
        let mut reply = ask(client, seq, &full, "full authentication").await?;
        seq = reply.last_seq.wrapping_add(1);
        let clear = match &opts.rsa {
            Some(key) if !tls => {
                if reply.payload[..] == [crate::rsa_auth::REQUEST_PUBLIC_KEY] {
                    let mut msg = Vec::with_capacity(1 + key.public_pem.len());
                    msg.push(0x01);
                    msg.extend_from_slice(&key.public_pem);
                    reply = ask(client, seq, &msg, "public key").await?;
                    seq = reply.last_seq.wrapping_add(1);
                }
                key.decrypt_password(&reply.payload, &salt)
            }
            _ => Some(
                reply
                    .payload
                    .strip_suffix(&[0])
                    .unwrap_or(&reply.payload)
                    .to_vec(),
            ),
        };
        ok = address_ok
            && user.as_ref().is_some_and(|u| {
                clear.is_some_and(|c| {
                    sluice_proto::scramble::constant_time_eq(&c, u.password.as_bytes())
                })
            });
        if ok {
            users.sha2_remember(user.as_ref().expect("checked above"));
        }
    }
    if let (true, Some(e)) = (ok, &refusal) {
        client.send_err(seq, e).await?;
        let name = String::from_utf8_lossy(&response.username).into_owned();
        return Err(SessionError::AccountRefused(
            name,
            String::from_utf8_lossy(&e.message).into_owned(),
        ));
    }
    if ok && !sha2_full && plugin == AuthPlugin::CachingSha2 && !token.is_empty() {
        client
            .write_packet(seq, &sluice_proto::scramble::SHA2_FAST_AUTH_SUCCESS)
            .await?;
        seq = seq.wrapping_add(1);
    }
    match (ok, user) {
        (true, Some(u)) => Ok(Authenticated {
            user: u,
            response,
            capabilities,
            salt,
            next_seq: seq,
        }),
        _ => {
            let host = client.peer.ip().to_string();
            let delay = refusal_delay(&String::from_utf8_lossy(&response.username));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            client
                .send_err(
                    seq,
                    &errors::access_denied(&response.username, &host, !token.is_empty()),
                )
                .await?;
            let name = String::from_utf8_lossy(&response.username).into_owned();
            Err(if address_ok {
                SessionError::AccessDenied(name)
            } else {
                SessionError::AddressDenied(name)
            })
        }
    }
}
