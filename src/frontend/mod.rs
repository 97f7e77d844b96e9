//! The client side: the listener, the handshake and authentication, and the per-client session
//! loop that relays each command and its response as raw packets.

pub(crate) mod client;
mod error;
pub mod firewall;
mod gtid;
pub(crate) mod handshake;
mod kill;
mod lease;
mod listener;
pub mod registry;
mod relay;
mod routing;
mod session;
mod session_state;
mod statements;

pub use crate::state::{RoutingState, ServerSlot, Shared};
pub use error::SessionError;
pub use listener::serve;
