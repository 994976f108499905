//! Operator password hashes: the shared implementation in
//! `vpnnat_proto::password` (routerd hashes its maintenance password with
//! it too), re-exported under the path centerd's code and tests use.

pub use vpnnat_proto::password::*;
