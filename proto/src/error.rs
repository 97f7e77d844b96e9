//! The error type for decoding packets.

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The packet ended before a field was complete.
    #[error("malformed packet: truncated while reading {0}")]
    Truncated(&'static str),
    /// A field held a value the protocol does not allow.
    #[error("malformed packet: {0}")]
    Invalid(&'static str),
}
