//! vpnnat-ike: IKEv2 (RFC 7296) with pre-shared keys, as a protocol core
//! that does no I/O.
//!
//! In the style of boringtun, the caller owns sockets, clocks and the
//! kernel: it passes datagrams, the current time and a random source in,
//! and gets datagrams to send and [`Event`]s (install/delete CHILD SAs,
//! tunnel up/down) out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod crypto;
pub mod keys;
