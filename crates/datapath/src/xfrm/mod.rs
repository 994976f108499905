//! XFRM (IPsec SAs and policies) over a netlink socket.

pub mod events;
pub mod msg;
pub mod policy_use;

use std::net::Ipv4Addr;

use netlink_packet_xfrm::XfrmMessage;
use netlink_sys::protocols::NETLINK_XFRM;

use crate::error::DatapathError;
use crate::model::{ObservedSa, PolicyId, PolicySpec, SaId, SaSpec};
use crate::netlink::{NlSocket, F_CHANGE, F_CREATE, F_GET};

pub use events::{XfrmEvent, XfrmEvents};
pub use policy_use::PolicyUse;

/// A handle on the XFRM tables of the current network namespace.
#[derive(Debug)]
pub struct Xfrm {
    nl: NlSocket,
}

fn err(op: &'static str, object: impl ToString) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |reason| DatapathError::Xfrm {
        op,
        object: object.to_string(),
        reason,
    }
}

impl Xfrm {
    pub fn open() -> Result<Self, DatapathError> {
        let nl = NlSocket::open(NETLINK_XFRM).map_err(|reason| DatapathError::Socket { family: "xfrm", reason })?;
        Ok(Self { nl })
    }

    /// Asks the kernel for a free SPI in `min..=max` (creates a larval SA
    /// that [`Xfrm::update_sa`] completes).
    pub fn alloc_spi(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        reqid: u32,
        min: u32,
        max: u32,
    ) -> Result<u32, DatapathError> {
        let what = format!("SPI for {src} -> {dst}");
        let answer = self
            .nl
            .query(msg::alloc_spi(src, dst, reqid, min, max), F_GET)
            .map_err(err("allocspi", &what))?;
        match answer {
            XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) => Ok(m.user_sa_info.id.spi),
            other => Err(err("allocspi", &what)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer type {}", other.message_type()),
            ))),
        }
    }

    /// Sets the IPv4 policy hash thresholds (see [`msg::set_hash_thresholds`]).
    pub fn set_hash_thresholds(&mut self, lbits: u8, rbits: u8) -> Result<(), DatapathError> {
        self.nl
            .request(msg::set_hash_thresholds(lbits, rbits), F_CHANGE)
            .map_err(err("set", "SPD hash thresholds"))
    }

    pub fn add_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        self.nl
            .request(msg::new_sa(sa, false), F_CREATE)
            .map_err(err("add", sa.id()))
    }

    pub fn update_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        self.nl
            .request(msg::new_sa(sa, true), F_CHANGE)
            .map_err(err("update", sa.id()))
    }

    pub fn delete_sa(&mut self, id: SaId) -> Result<(), DatapathError> {
        self.nl
            .request(msg::del_sa(id, None), F_CHANGE)
            .map_err(err("delete", id))
    }

    pub fn get_sa(&mut self, id: SaId) -> Result<ObservedSa, DatapathError> {
        let answer = self.nl.query(msg::get_sa(id), F_GET).map_err(err("get", id))?;
        match answer {
            XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) => msg::parse_sa(&m).ok_or_else(|| {
                err("get", id)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an IPv4 ESP SA",
                ))
            }),
            other => Err(err("get", id)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer type {}", other.message_type()),
            ))),
        }
    }

    /// All IPv4 ESP SAs of the namespace (the caller filters by reqid).
    pub fn list_sas(&mut self) -> Result<Vec<ObservedSa>, DatapathError> {
        let msgs = self.nl.dump(msg::dump_sa()).map_err(err("dump", "SA table"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) => msg::parse_sa(m),
                _ => None,
            })
            .collect())
    }

    /// Removes every ESP SA of the namespace (used by tests and `flush`).
    pub fn flush_sas(&mut self) -> Result<(), DatapathError> {
        self.nl
            .request(msg::flush_sa(), F_CHANGE)
            .map_err(err("flush", "SA table"))
    }

    pub fn add_policy(&mut self, p: &PolicySpec) -> Result<(), DatapathError> {
        self.nl
            .request(msg::new_policy(p, false), F_CREATE)
            .map_err(err("add", p.id))
    }

    pub fn update_policy(&mut self, p: &PolicySpec) -> Result<(), DatapathError> {
        self.nl
            .request(msg::new_policy(p, true), F_CHANGE)
            .map_err(err("update", p.id))
    }

    pub fn delete_policy(&mut self, id: &PolicyId) -> Result<(), DatapathError> {
        self.nl
            .request(msg::del_policy(id), F_CHANGE)
            .map_err(err("delete", id))
    }

    /// All IPv4 tunnel policies with one template (the caller filters by reqid).
    pub fn list_policies(&mut self) -> Result<Vec<PolicySpec>, DatapathError> {
        let msgs = self.nl.dump(msg::dump_policy()).map_err(err("dump", "policy table"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddPolicy(m) | XfrmMessage::UpdatePolicy(m) => msg::parse_policy(m),
                _ => None,
            })
            .collect())
    }

    /// When each of the namespace's IPv4 tunnel policies last carried a
    /// packet ([`policy_use`]; the caller filters by reqid).
    pub fn policy_uses(&mut self) -> Result<Vec<PolicyUse>, DatapathError> {
        let msgs = self.nl.dump(msg::dump_policy()).map_err(err("dump", "policy table"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddPolicy(m) | XfrmMessage::UpdatePolicy(m) => policy_use::parse_policy_use(m),
                _ => None,
            })
            .collect())
    }

    pub fn flush_policies(&mut self) -> Result<(), DatapathError> {
        self.nl
            .request(msg::flush_policy(), F_CHANGE)
            .map_err(err("flush", "policy table"))
    }

    /// Adds many policies in one pipelined batch. On failure, the error names
    /// the policy that failed; the ones before it were added.
    pub fn add_policies(&mut self, ps: &[PolicySpec]) -> Result<(), DatapathError> {
        self.nl
            .batch(ps.iter().map(|p| (msg::new_policy(p, false), F_CREATE)))
            .map(|_| ())
            .map_err(|e| {
                let obj = ps.get(e.index).map(|p| p.id.to_string()).unwrap_or_default();
                err("add", obj)(e.error)
            })
    }

    /// Deletes many policies in one pipelined batch.
    pub fn delete_policies(&mut self, ids: &[PolicyId]) -> Result<(), DatapathError> {
        self.nl
            .batch(ids.iter().map(|id| (msg::del_policy(id), F_CHANGE)))
            .map(|_| ())
            .map_err(|e| {
                let obj = ids.get(e.index).map(|p| p.to_string()).unwrap_or_default();
                err("delete", obj)(e.error)
            })
    }
}
