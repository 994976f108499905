//! `vpnnat-service`: what the center's two daemons, centerd and gatewayd,
//! share and nothing else (each daemon's own logic lives in its crate).
//!
//! - [`http`]: the hyper server loop with connection limits, body and
//!   header extraction, and the authenticated client for one command.
//! - [`metrics`]: Prometheus text exposition and its strict parser.
//! - [`logging`]: the `[log]` section and the logger both daemons install.
//! - [`config`]: configuration errors, TOML error text, HTTP endpoints.
//! - [`cli`]: command-line parsing with the daemons' exit statuses.
//! - [`secrets`]: the owner-only check of files that hold secrets.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]
// Peer input must not panic the servers: no unchecked indexing or
// arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod cli;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod secrets;
