//! `vpnnat-center`: the maintenance center (`centerd`) and the VPN gateway
//! agent (`gatewayd`) of PROTOCOL.md.
//!
//! - [`storage`]: the databases (SQLite); the only code that touches SQL.
//! - [`center`]: the center's side of every exchange, over the storage and
//!   two command traits (gateways, routers); no HTTP in it.
//! - [`config`]: centerd's TOML configuration (raw -> validated).
//! - [`http`]: small hyper helpers (server loop, authenticated client).
//! - [`api`]: centerd's HTTP server for routers and gateway events.
//! - [`ui`]: the operator web UI.
//! - [`clients`]: centerd's HTTP command channels to gateways and routers.
//! - [`liveness`]: the gateway heartbeat's up/down state machine.
//! - [`gateway`]: gatewayd: config, the `TunnelDriver` seam, HTTP API.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]
// Peer input must not panic the servers: no unchecked indexing or
// arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod api;
pub mod admin;
pub mod center;
pub mod cli;
pub mod clients;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod event_order;
pub mod gateway;
pub mod http;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod password;
pub mod routes;
pub mod secrets;
pub mod storage;
pub mod ui;
