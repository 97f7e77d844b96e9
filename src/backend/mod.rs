//! Connections to the database servers: connect, log in with the client's credentials, and
//! expose the socket and its read buffer to the session that relays raw packets over it.
//!
//! `pool.rs` bounds the connections to each server and keeps idle ones for reuse.

mod connection;
mod error;
pub mod pool;

pub use connection::{connect, BackendConn, LoginParams};
pub use error::BackendError;
pub use pool::{PoolError, PoolLimits, ServerPool};
