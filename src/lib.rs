//! Sluice: a MySQL-protocol proxy. Clients connect to it as to a MySQL server; it authenticates
//! them and relays their commands, as raw packets, to the right backend server.
//!
//! Layout (one folder per concern): `config/` loads and validates the configuration,
//! `frontend/` owns client connections, `backend/` owns server connections, `cluster/` is the
//! published view of the servers, `monitor/` keeps that view current, `admin/` is the MySQL-protocol admin port, `metrics/`
//! the Prometheus endpoint, `sandbox/` starts local
//! MariaDB topologies (for `sluice sandbox` and the tests), `state` is what the whole process
//! shares, `server` wires it all together, `reload` applies a changed configuration.

pub mod accounts;
pub mod admin;
pub mod backend;
pub mod build_info;
pub mod clock;
pub mod cluster;
pub mod compress;
pub mod config;
pub mod errors;
pub mod fasthash;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod lanes;
pub mod logging;
pub mod loops;
pub mod metrics;
pub mod monitor;
pub mod reload;
pub mod router;
pub mod rsa_auth;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod takeover;
pub mod tls;
