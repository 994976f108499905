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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod crypto;
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
pub use session::{SaConfig, SaState};
pub use timers::RetransmitConfig;
