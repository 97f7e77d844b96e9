//! The MySQL client/server wire protocol, as Sluice needs it: framing, the handshake and
//! authentication packets, OK/ERR/EOF, command packets, and a response tracker that finds the
//! end of any server response without decoding rows.
//!
//! This crate does no I/O and holds no policy: it turns bytes into packets and packets into
//! bytes. Every length read from the wire is checked against the buffer (and against a caller's
//! maximum, for framing) before anything is allocated.

pub mod auth_switch;
pub mod command;
pub mod compress;
pub mod eof;
pub mod err;
pub mod error;
pub mod flags;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod handshake_response;
pub mod lenenc;
pub mod ok;
pub mod query_attrs;
pub mod scramble;
pub mod ssl_request;
pub mod stmt;
pub mod tracker;

pub use error::ProtoError;
