//! Kernel XFRM events (acquire, expire) for rekeying and cleanup.

use std::net::Ipv4Addr;

use netlink_packet_xfrm::{XfrmAttrs, XfrmMessage, XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE};
use netlink_sys::protocols::NETLINK_XFRM;

use crate::error::DatapathError;
use crate::model::{Ipv4Cidr, SaId};
use crate::netlink::NlSocket;

/// An event the IKE daemon acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XfrmEvent {
    /// Outbound traffic matched a policy with no SA: negotiate one.
    /// `src`/`dst` are the policy's selector (not the packet's), so the IKE
    /// daemon can find the tunnel it belongs to.
    Acquire {
        src: Ipv4Cidr,
        dst: Ipv4Cidr,
        tmpl_dst: Ipv4Addr,
        reqid: u32,
    },
    /// An SA reached its soft (rekey now) or hard (gone) lifetime.
    Expire { id: SaId, reqid: u32, hard: bool },
}

/// A subscription to the XFRM acquire and expire multicast groups.
#[derive(Debug)]
pub struct XfrmEvents {
    nl: NlSocket,
}

impl XfrmEvents {
    pub fn subscribe() -> Result<Self, DatapathError> {
        let sock_err = |reason| DatapathError::Socket { family: "xfrm", reason };
        let mut nl = NlSocket::open(NETLINK_XFRM).map_err(sock_err)?;
        // Group numbers are 1-based bit positions for add_membership.
        nl.join(XFRMNLGRP_ACQUIRE).map_err(sock_err)?;
        nl.join(XFRMNLGRP_EXPIRE).map_err(sock_err)?;
        Ok(Self { nl })
    }

    /// Blocks until the kernel reports events, and returns them.
    pub fn recv(&mut self) -> Result<Vec<XfrmEvent>, DatapathError> {
        let msgs = self
            .nl
            .recv_events::<XfrmMessage>()
            .map_err(|reason| DatapathError::Socket { family: "xfrm", reason })?;
        Ok(msgs.iter().filter_map(event_of).collect())
    }
}

/// Translates a kernel message into an event; pure, for tests.
pub fn event_of(m: &XfrmMessage) -> Option<XfrmEvent> {
    match m {
        XfrmMessage::Acquire(msg) => {
            let a = &msg.acquire;
            // The reqid is the one of the policy's template, sent as an attribute.
            let reqid = msg
                .nlas
                .iter()
                .find_map(|n| match n {
                    XfrmAttrs::Template(t) => t.first().map(|t| t.reqid),
                    _ => None,
                })
                .unwrap_or(0);
            Some(XfrmEvent::Acquire {
                src: Ipv4Cidr::new(a.policy.selector.saddr.to_ipv4(), a.policy.selector.prefixlen_s).ok()?,
                dst: Ipv4Cidr::new(a.policy.selector.daddr.to_ipv4(), a.policy.selector.prefixlen_d).ok()?,
                tmpl_dst: a.id.daddr.to_ipv4(),
                reqid,
            })
        }
        XfrmMessage::Expire(e) => {
            let s = &e.expire.state;
            Some(XfrmEvent::Expire {
                id: SaId {
                    dst: s.id.daddr.to_ipv4(),
                    spi: s.id.spi,
                },
                reqid: s.reqid,
                hard: e.expire.hard != 0,
            })
        }
        _ => None,
    }
}
