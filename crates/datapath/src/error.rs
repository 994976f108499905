//! Typed errors that say which kernel object failed and why.

use std::io;

use thiserror::Error;

use crate::model::ModelError;

#[derive(Debug, Error)]
pub enum DatapathError {
    /// A netlink request about one XFRM object failed.
    #[error("xfrm {op} of {object} failed: {reason}")]
    Xfrm {
        op: &'static str,
        object: String,
        reason: io::Error,
    },
    /// An nftables transaction failed; nothing of it was applied.
    #[error("nftables transaction ({what}) failed: {detail}")]
    Nft { what: String, detail: String },
    /// An nf_tables element batch was refused; the kernel applied none of
    /// it. `elem` names the element the kernel refused (as nft prints it),
    /// or the whole change when the kernel refused the batch.
    #[error("nftables {op} of {elem} failed (nothing of the transaction applied): {reason}")]
    NftElement {
        op: &'static str,
        elem: String,
        reason: io::Error,
    },
    /// An rtnetlink request about a link, address or route failed.
    #[error("rtnetlink {op} of {object} failed: {reason}")]
    Route {
        op: &'static str,
        object: String,
        reason: io::Error,
    },
    /// Opening a netlink socket failed (e.g. not root, or no such family).
    #[error("cannot open {family} netlink socket: {reason}")]
    Socket { family: &'static str, reason: io::Error },
    /// Reading or writing a setting under /proc/sys failed.
    #[error("setting {key} failed: {reason}")]
    Sysctl { key: String, reason: io::Error },
    /// Input that the kernel would never accept.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl DatapathError {
    /// The errno of a kernel refusal, if there is one (e.g. EEXIST, ENOENT).
    pub fn errno(&self) -> Option<i32> {
        match self {
            DatapathError::Xfrm { reason, .. }
            | DatapathError::Route { reason, .. }
            | DatapathError::NftElement { reason, .. } => reason.raw_os_error(),
            _ => None,
        }
    }
}
