//! Why a client session ended.

use crate::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
    #[error("client packet of at least {0} bytes exceeds [proxy] max_packet_bytes")]
    TooLarge(usize),
    #[error("client sent a malformed packet: {0}")]
    Malformed(String),
    #[error("handshake not completed within {0} ms")]
    HandshakeTimeout(u64),
    #[error("authentication failed for user {0:?}")]
    AccessDenied(String),
    /// The user's `allow` list does not include the client address (the client was told
    /// "access denied", as for a wrong password).
    #[error("user {0:?} may not connect from this address")]
    AddressDenied(String),
    /// The password was right but the account may not log in now (locked, expired).
    #[error("user {0:?} refused: {1}")]
    AccountRefused(String, String),
    /// `[proxy.tls] require = true` and the client did not switch to TLS.
    #[error("plaintext login refused: [proxy.tls] require = true")]
    InsecureTransport,
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    #[error("backend protocol error: {0}")]
    BackendProtocol(String),
    #[error("backend connection lost: {0}")]
    BackendLost(String),
    /// The backend connection broke before any byte of the response reached the client:
    /// the client can be told with a clean ERR and the session can go on.
    #[error("backend connection lost before the response: {0}")]
    BackendGone(String),
    /// The backend connection broke between two packets of the response: the client holds
    /// only whole packets, so an ERR with sequence id `seq` ends the response cleanly and the
    /// session can go on.
    #[error("backend connection lost during the response: {detail}")]
    BackendCut { detail: String, seq: u8 },
    #[error("no primary available")]
    NoPrimary,
}

impl SessionError {
    /// Whether this is an ordinary end of a session rather than something to log as a warning.
    pub fn is_normal(&self) -> bool {
        matches!(self, SessionError::ClientClosed)
    }
}
