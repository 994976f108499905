//! `vpnnat-service`: what the daemons share and nothing else (each daemon's
//! own logic lives in its crate).
//!
//! - [`server`]: the one accept loop on plain hyper (connection gate,
//!   header time-out, drain on shutdown) that all three daemons' HTTP
//!   servers run on; routerd links only this part (without the default
//!   `center` feature) for its size budget.
//! - [`body`]: a request's body, bounded in size and time (413, 408).
//! - [`client`]: the one HTTP client (a request over a fresh connection,
//!   bounded in time and size; a signed command with its headers).
//! - [`clock`]: Unix seconds, as the protocol reads the clock.
//! - [`escape`]: HTML escaping for routerd's `format!` pages.
//!
//! With the `center` feature (default), what centerd and gatewayd share:
//! - [`http`]: axum on the accept loop, body and header extraction, and
//!   [`http::call`]: one command through [`client`], signed and its
//!   answer verified.
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

pub mod body;
#[cfg(feature = "center")]
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod escape;
#[cfg(feature = "center")]
pub mod http;
pub mod logging;
#[cfg(feature = "center")]
pub mod metrics;
pub mod secrets;
pub mod server;
