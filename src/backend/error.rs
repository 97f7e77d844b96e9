//! Errors talking to a backend server. Each says whether the connection may be kept.

use sluice_proto::err::ErrPacket;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the login; the packet is forwarded to the client as is.
    #[error("server refused: {0}")]
    Refused(ErrPacket),
    #[error(
        "the server asks for authentication plugin {0:?}, which Sluice cannot use for backends"
    )]
    AuthPlugin(String),
    /// `[backend_tls]`: the server offers no TLS, or its certificate does not verify.
    #[error("{0}")]
    Tls(String),
}

impl From<sluice_proto::ProtoError> for BackendError {
    fn from(e: sluice_proto::ProtoError) -> Self {
        BackendError::Protocol(e.to_string())
    }
}
