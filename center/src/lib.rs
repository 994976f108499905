//! `vpnnat-center`: the maintenance center (`centerd`) of PROTOCOL.md.
//! gatewayd is its own crate (`crates/gatewayd`); what both share lives in
//! `vpnnat-service` and is re-exported here ([`http`], [`metrics`],
//! [`logging`], [`secrets`]).
//!
//! - [`daemon`]: centerd's wiring: database, servers, reconcile and
//!   heartbeat loops, run until a shutdown future completes.
//! - [`admin`]: centerd's tool subcommands over the same database.
//! - [`storage`]: the databases (SQLite); the only code that touches SQL.
//! - [`center`]: the center's side of every exchange, over the storage and
//!   two command traits (gateways, routers); no HTTP in it.
//! - [`config`]: centerd's TOML configuration (raw -> validated).
//! - [`api`]: centerd's HTTP server for routers and gateway events.
//! - [`ui`]: the operator web UI.
//! - [`dns`]: the DNS zone of granted addresses.
//! - [`clients`]: centerd's HTTP command channels to gateways and routers.
//! - [`liveness`]: the gateway heartbeat's up/down state machine.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]
// Peer input must not panic the servers: no unchecked indexing or
// arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod accounts;
pub mod admin;
pub mod api;
pub mod center;
pub mod cli;
pub mod clients;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod end_reason;
pub(crate) mod event_order;
pub mod keygen;
pub mod limits;
pub(crate) mod liveness;
pub mod password;
pub mod routes;
pub mod storage;
pub mod ui;
pub mod work_lock;

#[cfg(test)]
mod gatewayd_tests;

// Shared with gatewayd (crates/gatewayd) through vpnnat-service.
pub use vpnnat_service::{http, logging, metrics, secrets};
