//! Connections to the database servers: connect, log in with the client's credentials, run
//! Sluice's own control statements, and expose the socket and its read buffer to the relay.
//!
//! `pool.rs` bounds the connections to each server, keeps idle ones for reuse and queues
//! waiting sessions; `state.rs` brings a leased connection to a session's state;
//! `stmt_cache.rs` bounds the statements prepared on each connection.

mod connection;
mod error;
pub mod pool;
pub mod state;
pub mod stmt_cache;

pub use connection::{
    connect, is_mysql_version, prepared_definitions, BackendConn, LoginParams, StmtBudget,
    Transport, INSERT_ID_UNKNOWN,
};
pub use error::BackendError;
pub use pool::{Acquired, PoolError, PoolLimits, ServerPool};
pub use state::{SessionVars, SyncError};
