//! The ERR packets Sluice sends on its own behalf: standard MySQL codes where MySQL has one
//! (access denied, packet too large, …) and Sluice's own range, 9000–9099, for conditions only
//! a proxy has. docs/errors.md lists every one.

use sluice_proto::err::ErrPacket;

/// Too many client connections.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
/// Access denied (bad user or password).
pub const ER_ACCESS_DENIED: u16 = 1045;
/// Malformed handshake response.
pub const ER_HANDSHAKE_ERROR: u16 = 1043;
/// A packet larger than `[proxy] max_packet_bytes`.
pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
/// A packet with an unexpected sequence id.
pub const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
/// A command packet whose layout is broken.
pub const ER_MALFORMED_PACKET: u16 = 1835;
/// Parameters of an execution that do not fit its statement.
pub const ER_WRONG_ARGUMENTS: u16 = 1210;
/// A command byte Sluice does not forward (replication protocol, unknown).
pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
/// The server went away in the middle of a command (the client library's CR_SERVER_LOST code).
pub const CR_SERVER_LOST: u16 = 2013;

/// A user has `[[users]] max_connections` sessions open (MySQL's ER_TOO_MANY_USER_CONNECTIONS).
pub const ER_TOO_MANY_USER_CONNECTIONS: u16 = 1203;
/// The client address is not allowed by `[firewall]` (MySQL's ER_HOST_NOT_PRIVILEGED).
pub const ER_HOST_NOT_PRIVILEGED: u16 = 1130;
/// The client address is blocked after failed logins (MySQL's ER_HOST_IS_BLOCKED).
pub const ER_HOST_IS_BLOCKED: u16 = 1129;
/// A source address opened connections faster than `[firewall] connection_rate_per_source`.
pub const SLUICE_CONNECTION_RATE: u16 = 9040;

/// A plaintext login while `[proxy.tls] require = true` (MySQL's ER_SECURE_TRANSPORT_REQUIRED).
pub const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;

/// A session holds `[proxy] max_prepared_statements_per_session` statements (MySQL's
/// ER_MAX_PREPARED_STMT_COUNT_REACHED).
pub const ER_MAX_PREPARED_STMT_COUNT_REACHED: u16 = 1461;

/// `LOAD DATA LOCAL` from a client that did not enable local files: MariaDB 10.5+'s
/// ER_LOAD_INFILE_CAPABILITY_DISABLED, and MySQL 8's ER_CLIENT_LOCAL_FILES_DISABLED.
pub const ER_LOAD_INFILE_CAPABILITY_DISABLED: u16 = 4166;
pub const ER_CLIENT_LOCAL_FILES_DISABLED: u16 = 3948;

/// No writable primary is known (none discovered yet, or none reachable).
pub const SLUICE_NO_PRIMARY: u16 = 9001;
/// Connecting or logging in to a backend server failed.
pub const SLUICE_BACKEND_CONNECT: u16 = 9002;
/// A backend server sent something the protocol does not allow; the connection was dropped.
pub const SLUICE_BACKEND_PROTOCOL: u16 = 9003;
/// A routing rule denies the statement.
pub const SLUICE_DENIED_BY_RULE: u16 = 9010;
/// A rule requires a replica and none is within the lag budget.
pub const SLUICE_NO_REPLICA: u16 = 9011;
/// No connection slot to a server freed up within `[proxy] pool_wait_ms`.
pub const SLUICE_POOL_EXHAUSTED: u16 = 9012;
/// A backend asked for an authentication method Sluice cannot perform.
pub const SLUICE_BACKEND_AUTH_PLUGIN: u16 = 9004;
/// The primary was lost (failover) while the session had a transaction open on it.
pub const SLUICE_TRANSACTION_LOST: u16 = 9020;
/// The primary changed and the session held state that cannot move to the new one.
pub const SLUICE_SESSION_STATE_LOST: u16 = 9021;

/// No primary appeared within `[monitor] failover_hold_ms`.
pub fn no_primary_within(waited_ms: u64) -> ErrPacket {
    ErrPacket::new(
        SLUICE_NO_PRIMARY,
        b"HY000",
        format!(
            "Sluice: no primary server is available (waited {waited_ms} ms, [monitor] failover_hold_ms, for a failover or switchover to finish)"
        ),
    )
}

/// The connection to the primary broke while the statement ran: it may or may not have been
/// applied (a COMMIT may have landed).
pub fn lost_in_flight(server: &str, detail: &str) -> ErrPacket {
    ErrPacket::new(
        CR_SERVER_LOST,
        b"HY000",
        format!(
            "Lost connection to backend server {server} during query ({detail}); the statement may or may not have been applied; the session continues"
        ),
    )
}

pub fn transaction_lost(detail: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_TRANSACTION_LOST,
        b"40001",
        format!(
            "Sluice: the connection to the primary was lost ({detail}); the open transaction was rolled back. Retry the transaction"
        ),
    )
}

pub fn session_state_lost(reasons: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_SESSION_STATE_LOST,
        b"08S01",
        format!(
            "Sluice: the primary changed and this session's state ({reasons}) exists only on the old one; the connection is closed, reconnect"
        ),
    )
}

/// MariaDB's `ER_ACCOUNT_HAS_BEEN_LOCKED`.
pub fn account_locked() -> ErrPacket {
    ErrPacket::new(4151, b"HY000", "Access denied, this account is locked")
}

/// `ER_MUST_CHANGE_PASSWORD_LOGIN`: Sluice does not offer the expired-password sandbox.
pub fn password_expired() -> ErrPacket {
    ErrPacket::new(
        1862,
        b"HY000",
        "Your password has expired. To log in you must change it using a client that supports expired passwords.",
    )
}

pub fn access_denied(user: &[u8], host: &str, using_password: bool) -> ErrPacket {
    ErrPacket::new(
        ER_ACCESS_DENIED,
        b"28000",
        format!(
            "Access denied for user '{}'@'{}' (using password: {})",
            String::from_utf8_lossy(user),
            host,
            if using_password { "YES" } else { "NO" }
        ),
    )
}

pub fn packet_too_large() -> ErrPacket {
    ErrPacket::new(
        ER_NET_PACKET_TOO_LARGE,
        b"08S01",
        "Got a packet bigger than 'max_allowed_packet' bytes",
    )
}

pub fn out_of_order() -> ErrPacket {
    ErrPacket::new(
        ER_NET_PACKETS_OUT_OF_ORDER,
        b"08S01",
        "Got packets out of order",
    )
}

/// A command whose layout is broken (MySQL's ER_MALFORMED_PACKET); `what` says which part,
/// empty for none.
pub fn malformed_packet(what: &str) -> ErrPacket {
    let message = if what.is_empty() {
        "Malformed communication packet".to_string()
    } else {
        format!("Malformed communication packet ({what})")
    };
    ErrPacket::new(ER_MALFORMED_PACKET, b"08S01", message)
}

/// An execution whose parameters do not fit the statement (MySQL's ER_WRONG_ARGUMENTS):
/// `command` is `mysqld_stmt_execute` or `mysqld_stmt_bulk_execute`.
pub fn incorrect_arguments(command: &str, detail: &str) -> ErrPacket {
    ErrPacket::new(
        ER_WRONG_ARGUMENTS,
        b"HY000",
        format!("Incorrect arguments to {command} ({detail})"),
    )
}

pub fn bad_handshake() -> ErrPacket {
    ErrPacket::new(ER_HANDSHAKE_ERROR, b"08S01", "Bad handshake")
}

pub fn unknown_command(code: u8) -> ErrPacket {
    ErrPacket::new(
        ER_UNKNOWN_COM_ERROR,
        b"08S01",
        format!("Unknown command (0x{code:02x}): not supported through Sluice"),
    )
}

pub fn server_lost(detail: &str) -> ErrPacket {
    ErrPacket::new(
        CR_SERVER_LOST,
        b"HY000",
        format!("Lost connection to backend server during query ({detail})"),
    )
}

pub fn no_primary() -> ErrPacket {
    ErrPacket::new(
        SLUICE_NO_PRIMARY,
        b"HY000",
        "Sluice: no primary server is available (none has read_only=OFF and answers the monitor)",
    )
}

pub fn backend_connect(server: &str, detail: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_BACKEND_CONNECT,
        b"08S01",
        format!("Sluice: cannot connect to backend server {server}: {detail}"),
    )
}

pub fn backend_auth_plugin(server: &str, plugin: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_BACKEND_AUTH_PLUGIN,
        b"08S01",
        format!("Sluice: backend server {server} asks for authentication plugin {plugin:?}, which Sluice cannot answer (it speaks mysql_native_password, and caching_sha2_password with the password it holds)"),
    )
}

pub fn backend_protocol(server: &str, detail: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_BACKEND_PROTOCOL,
        b"08S01",
        format!("Sluice: backend server {server} sent a malformed response ({detail}); its connection was closed"),
    )
}

pub fn denied_by_rule(rule: &str, message: &str) -> ErrPacket {
    ErrPacket::new(
        SLUICE_DENIED_BY_RULE,
        b"42000",
        format!("Sluice: statement denied by rule {rule:?}: {message}"),
    )
}

pub fn no_replica(rule: &str, budget_ms: u64) -> ErrPacket {
    ErrPacket::new(
        SLUICE_NO_REPLICA,
        b"HY000",
        format!("Sluice: no replica within the lag budget of {budget_ms} ms (rule {rule:?} forbids falling back to the primary)"),
    )
}

pub fn pool_exhausted(server: &str, max: usize, waited_ms: u64) -> ErrPacket {
    ErrPacket::new(
        SLUICE_POOL_EXHAUSTED,
        b"08004",
        format!("Sluice: backend server {server} has no free connection (all {max} of [proxy] max_backend_connections in use after waiting {waited_ms} ms)"),
    )
}

pub fn too_many_connections() -> ErrPacket {
    ErrPacket::new(ER_CON_COUNT_ERROR, b"08004", "Too many connections")
}

pub fn host_not_allowed(ip: &str) -> ErrPacket {
    ErrPacket::new(
        ER_HOST_NOT_PRIVILEGED,
        b"HY000",
        format!("Host '{ip}' is not allowed to connect to this Sluice server"),
    )
}

pub fn host_blocked(ip: &str, remaining_s: u64) -> ErrPacket {
    ErrPacket::new(
        ER_HOST_IS_BLOCKED,
        b"HY000",
        format!(
            "Host '{ip}' is blocked because of many connection errors for {remaining_s} more seconds; unblock with 'FLUSH HOSTS' on the Sluice admin port"
        ),
    )
}

pub fn connection_rate(ip: &str, per_s: u32) -> ErrPacket {
    ErrPacket::new(
        SLUICE_CONNECTION_RATE,
        b"08004",
        format!(
            "Sluice: too many new connections from '{ip}' ([firewall] connection_rate_per_source = {per_s} per second); try again later"
        ),
    )
}

pub fn too_many_user_connections(user: &str) -> ErrPacket {
    ErrPacket::new(
        ER_TOO_MANY_USER_CONNECTIONS,
        b"42000",
        format!("User {user} already has more than 'max_user_connections' active connections"),
    )
}

pub fn insecure_transport() -> ErrPacket {
    ErrPacket::new(
        ER_SECURE_TRANSPORT_REQUIRED,
        b"HY000",
        "Connections using insecure transport are prohibited while [proxy.tls] require = true",
    )
}

/// What the server answers a `LOAD DATA LOCAL` from a client without `CLIENT_LOCAL_FILES`
/// (Sluice's server connections enable local files for every session, so Sluice answers it).
pub fn local_infile_disabled(mysql: bool) -> ErrPacket {
    if mysql {
        ErrPacket::new(
            ER_CLIENT_LOCAL_FILES_DISABLED,
            b"42000",
            "Loading local data is disabled; this must be enabled on both the client and server side",
        )
    } else {
        ErrPacket::new(
            ER_LOAD_INFILE_CAPABILITY_DISABLED,
            b"HY000",
            "The used command is not allowed because the MariaDB server or client has disabled the local infile capability",
        )
    }
}

pub fn too_many_prepared_statements(max: u32) -> ErrPacket {
    ErrPacket::new(
        ER_MAX_PREPARED_STMT_COUNT_REACHED,
        b"42000",
        format!(
            "Can't create more than max_prepared_stmt_count statements (current value: {max}, [proxy] max_prepared_statements_per_session); close some first"
        ),
    )
}
