//! Connections to the database servers: connect, log in with the client's credentials, and
//! expose the socket and its read buffer to the session that relays raw packets over it.
//!
//! In this release every client session owns one backend connection to the primary; pools come
//! with read/write splitting.

mod connection;
mod error;

pub use connection::{connect, BackendConn, LoginParams};
pub use error::BackendError;
