//! Capability flags (what each side of a connection supports) and server status flags (the
//! state a response leaves the session in).

/// Capability flags, as sent in the handshake and the handshake response.
///
/// The low 32 bits are the standard MySQL flags; MariaDB's extended capabilities travel in a
/// separate 4-byte field and are kept in the high 32 bits of the `u64` values used here.
pub mod cap {
    /// Also named `CLIENT_MYSQL` by MariaDB: when a server clears it, it speaks MariaDB's
    /// extended capabilities.
    pub const CLIENT_LONG_PASSWORD: u64 = 1;
    pub const CLIENT_FOUND_ROWS: u64 = 1 << 1;
    pub const CLIENT_LONG_FLAG: u64 = 1 << 2;
    pub const CLIENT_CONNECT_WITH_DB: u64 = 1 << 3;
    pub const CLIENT_NO_SCHEMA: u64 = 1 << 4;
    pub const CLIENT_COMPRESS: u64 = 1 << 5;
    pub const CLIENT_ODBC: u64 = 1 << 6;
    pub const CLIENT_LOCAL_FILES: u64 = 1 << 7;
    pub const CLIENT_IGNORE_SPACE: u64 = 1 << 8;
    pub const CLIENT_PROTOCOL_41: u64 = 1 << 9;
    pub const CLIENT_INTERACTIVE: u64 = 1 << 10;
    pub const CLIENT_SSL: u64 = 1 << 11;
    pub const CLIENT_IGNORE_SIGPIPE: u64 = 1 << 12;
    pub const CLIENT_TRANSACTIONS: u64 = 1 << 13;
    pub const CLIENT_RESERVED: u64 = 1 << 14;
    pub const CLIENT_SECURE_CONNECTION: u64 = 1 << 15;
    pub const CLIENT_MULTI_STATEMENTS: u64 = 1 << 16;
    pub const CLIENT_MULTI_RESULTS: u64 = 1 << 17;
    pub const CLIENT_PS_MULTI_RESULTS: u64 = 1 << 18;
    pub const CLIENT_PLUGIN_AUTH: u64 = 1 << 19;
    pub const CLIENT_CONNECT_ATTRS: u64 = 1 << 20;
    pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u64 = 1 << 21;
    pub const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: u64 = 1 << 22;
    pub const CLIENT_SESSION_TRACK: u64 = 1 << 23;
    pub const CLIENT_DEPRECATE_EOF: u64 = 1 << 24;
    pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const CLIENT_ZSTD_COMPRESSION: u64 = 1 << 26;
    pub const CLIENT_QUERY_ATTRIBUTES: u64 = 1 << 27;
    pub const CLIENT_SSL_VERIFY_SERVER_CERT: u64 = 1 << 30;
    pub const CLIENT_REMEMBER_OPTIONS: u64 = 1 << 31;
    /// MariaDB extended: progress reports (ERR 0xFFFF packets mid-statement).
    pub const MARIADB_CLIENT_PROGRESS: u64 = 1 << 32;
    /// MariaDB extended: COM_STMT_BULK_EXECUTE.
    pub const MARIADB_CLIENT_STMT_BULK_OPERATIONS: u64 = 1 << 34;
    /// MariaDB extended: extended column type information.
    pub const MARIADB_CLIENT_EXTENDED_METADATA: u64 = 1 << 35;
    /// MariaDB extended: prepared-statement metadata may be skipped when unchanged.
    pub const MARIADB_CLIENT_CACHE_METADATA: u64 = 1 << 36;
}

/// Server status flags, carried by OK and EOF packets (and the handshake).
pub mod status {
    pub const SERVER_STATUS_IN_TRANS: u16 = 1;
    pub const SERVER_STATUS_AUTOCOMMIT: u16 = 1 << 1;
    pub const SERVER_MORE_RESULTS_EXISTS: u16 = 1 << 3;
    pub const SERVER_QUERY_NO_GOOD_INDEX_USED: u16 = 1 << 4;
    pub const SERVER_QUERY_NO_INDEX_USED: u16 = 1 << 5;
    pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 1 << 6;
    pub const SERVER_STATUS_LAST_ROW_SENT: u16 = 1 << 7;
    pub const SERVER_STATUS_DB_DROPPED: u16 = 1 << 8;
    pub const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 1 << 9;
    pub const SERVER_STATUS_METADATA_CHANGED: u16 = 1 << 10;
    pub const SERVER_QUERY_WAS_SLOW: u16 = 1 << 11;
    pub const SERVER_PS_OUT_PARAMS: u16 = 1 << 12;
    pub const SERVER_STATUS_IN_TRANS_READONLY: u16 = 1 << 13;
    pub const SERVER_SESSION_STATE_CHANGED: u16 = 1 << 14;
}
