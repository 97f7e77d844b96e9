//! Watches the servers. In this release: role discovery — every `[monitor] interval_ms` each
//! server is asked for `@@read_only`; the one writable server is the primary. Lag, heartbeats and
//! failover build on this loop.

mod discovery;

pub use discovery::run_discovery;
