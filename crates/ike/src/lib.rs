//! vpnnat-ike: IKEv2 (RFC 7296) with pre-shared keys, as a protocol core
//! that does no I/O.
//!
//! In the style of boringtun, the caller owns sockets, clocks and the
//! kernel: it passes datagrams, the current time and a random source in,
//! and gets datagrams to send and [`Event`]s (install/delete CHILD SAs,
//! tunnel up/down) out through `poll_output()`.
//!
//! - [`codec`]: total parser and encoder of IKEv2 messages.
//! - [`crypto`]: DH, PRF, AES-GCM, PSK authentication (all `ring`).
//! - [`keys`]: suites, proposal negotiation, key derivation, SK payload.
//! - [`session`]: one IKE SA's state machine, shared by both roles.
//! - [`initiator`] / [`responder`]: the gateway and router endpoints.
//! - [`timers`]: the retransmission schedule.
//!
//! # Driving an initiator and a responder against each other
//!
//! ```
//! use std::time::Instant;
//! use ring::rand::SystemRandom;
//! use vpnnat_ike::{
//!     Event, Identity, Initiator, InitiatorConfig, Output, Responder, ResponderConfig,
//!     SaConfig, Secret, TrafficSelector,
//! };
//!
//! let rng = SystemRandom::new();
//! let now = Instant::now();
//! let gw_addr = "203.0.113.1:500".parse().unwrap();
//! let rt_addr = "198.51.100.2:500".parse().unwrap();
//! let psk = Secret::from_slice(b"per-router pre-shared key");
//! let net = |s: &str, len| TrafficSelector::subnet(s.parse().unwrap(), len);
//!
//! // Gateway: TSi = center network, TSr = the router's granted VPNNAT /32.
//! let mut gw = Initiator::new(InitiatorConfig {
//!     local: gw_addr,
//!     peer: rt_addr,
//!     sa: SaConfig::new(psk.clone(), Identity::fqdn("gw1.example"),
//!                       vec![net("10.1.0.0", 16)], vec![net("100.64.0.5", 32)]),
//! });
//! // Router: accepts IKE only from the gateway, narrows to what it allows.
//! let mut rt = Responder::new(
//!     ResponderConfig::new(gw_addr.ip(), SaConfig::new(psk, Identity::key_id(b"router-17"),
//!                          vec![net("100.64.0.0", 24)], vec![net("10.0.0.0", 8)])),
//!     now, &rng)?;
//!
//! gw.connect(now, &rng)?;
//! let mut events = Vec::new();
//! loop {
//!     let mut idle = true;
//!     while let Some(o) = gw.poll_output() {
//!         match o {
//!             // A real driver writes d.payload from the socket bound to d.src.
//!             Output::Send(d) => { idle = false; rt.handle_datagram(now, d.src, d.dst, &d.payload, &rng)?; }
//!             Output::Event(e) => events.push(("gw", e)),
//!         }
//!     }
//!     while let Some(o) = rt.poll_output() {
//!         match o {
//!             Output::Send(d) => { idle = false; gw.handle_datagram(now, d.src, d.dst, &d.payload, &rng)?; }
//!             Output::Event(e) => events.push(("rt", e)),
//!         }
//!     }
//!     if idle { break; }
//! }
//! // Each side got ChildSaUp (program the kernel) and TunnelUp.
//! assert!(events.iter().any(|(who, e)| *who == "gw" && matches!(e, Event::ChildSaUp(c)
//!     if c.xfrm_name() == "rfc4106(gcm(aes))" && c.inbound_key.len() == 36)));
//! assert!(gw.is_established() && rt.is_established());
//! // Later: gw.rekey_child(..), gw.rekey_ike(..), gw.close(..), and
//! // gw.poll_timers(now) whenever gw.next_timeout() passes.
//! # Ok::<(), vpnnat_ike::Error>(())
//! ```

#![forbid(unsafe_code)]
// Nothing reachable from a received datagram may panic: no unchecked
// indexing or arithmetic anywhere in the crate (tests excepted).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

pub mod codec;
pub mod crypto;
mod endpoint;
pub mod error;
pub mod event;
pub mod initiator;
pub mod keys;
pub mod responder;
pub mod session;
mod table;
pub mod timers;

pub use codec::{Identity, TrafficSelector};
pub use crypto::Secret;
pub use error::Error;
pub use event::{ChildSa, Datagram, DownReason, Event, Mode, Output};
pub use initiator::{Initiator, InitiatorConfig};
pub use keys::{EncrAlg, EspSuite, IkeSuite};
pub use responder::{Responder, ResponderConfig};
pub use session::{PeerLookup, SaConfig, SaState, SpiSource};
pub use timers::RetransmitConfig;

#[cfg(test)]
mod tests;
