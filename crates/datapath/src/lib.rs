//! The kernel datapath of the VPNNAT system, and the only code in the
//! project that changes kernel state.
//!
//! Layers, from pure to effectful:
//! - [`model`]: what the project owns (SAs, policies, 1:1 mappings).
//! - [`plan`]: desired vs observed state -> ordered list of [`plan::Change`]s.
//! - [`xfrm::msg`], [`nft::ruleset`], [`nft::setelem`], [`route::msg`],
//!   [`rtnl::msg`]: pure message builders.
//! - [`apply`]: the [`apply::Datapath`] trait, with the kernel implementation
//!   and a recording fake for unit tests of router and center logic.
//! - [`netlink`], [`xfrm`], [`nft`], [`route`], [`rtnl`]: the thin I/O layer
//!   ([`rtnl`] is routerd's boot-time links/addresses/default route, small
//!   enough for the firmware; [`route`] is the general one).

// Hostile input (peer messages, kernel replies) must not panic the daemon:
// no unchecked indexing or arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod apply;
pub mod error;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod plan;
pub mod route;
pub mod rtnl;
pub mod sysctl;
pub mod xfrm;

pub use apply::{scope_to_endpoint, Datapath, EndpointDatapath, KernelDatapath, RecordingDatapath};
pub use error::DatapathError;
pub use model::*;
pub use plan::{plan, Change, DesiredState, ObservedState};
