//! routerd, the home router daemon of the VPNNAT system (PROTOCOL.md): the
//! router side of every exchange with the maintenance center, the local web
//! page for LAN users, the server part that takes the center's commands
//! through the tunnel, durable state, and (on the image) init duties.
//!
//! Layers: [`config`], [`state`] and [`resolve`] are data; [`logic`] is the
//! pure protocol logic (no I/O); [`ike_responder`] is the seam to the IKE
//! responder ([`driver_responder`] its implementation on the real driver);
//! [`http`], [`daemon`] and [`init`] are the I/O shell.

// Hostile input (peer messages, kernel replies) must not panic the daemon:
// no unchecked indexing or arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dial_out;
pub mod driver_responder;
pub mod health;
pub mod http;
pub mod ike_responder;
pub mod init;
pub mod lan_host;
pub mod live;
pub mod logic;
pub mod logring;
pub mod resolve;
pub mod secret;
pub mod state;
#[cfg(any(test, feature = "fake-center"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod view;
pub mod web;
