//! Kernel XFRM events (acquire, expire) for rekeying and cleanup, and
//! mapping events for NAT rebinding.

use std::net::{Ipv4Addr, SocketAddrV4};

use netlink_packet_xfrm::{XfrmAttrs, XfrmMessage, XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_MAPPING};
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
    /// ESP-in-UDP for the inbound SA `id` came from `new`, not from the
    /// encapsulation's `old` source: the peer's NAT moved (XFRM_MSG_MAPPING).
    /// The kernel sends it only after the packet decrypted and passed the
    /// replay window, once per such packet until the SA is updated.
    Mapping {
        id: SaId,
        reqid: u32,
        old: SocketAddrV4,
        new: SocketAddrV4,
    },
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
        nl.join(XFRMNLGRP_MAPPING).map_err(sock_err)?;
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
        XfrmMessage::Mapping(m) => {
            let m = &m.map;
            Some(XfrmEvent::Mapping {
                id: SaId {
                    dst: m.id.daddr.to_ipv4(),
                    spi: m.id.spi,
                },
                reqid: m.reqid,
                old: SocketAddrV4::new(m.old_saddr.to_ipv4(), m.old_sport),
                new: SocketAddrV4::new(m.new_saddr.to_ipv4(), m.new_sport),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    /// An XFRM_MSG_MAPPING as the kernel multicasts it (include/uapi/linux/
    /// xfrm.h, struct xfrm_user_mapping; built by xfrm_user.c's
    /// build_mapping): the inbound SA 198.51.100.21 spi 0xc0000123, reqid
    /// 0x56500001, whose peer 203.0.113.50 moved from port 4500 to 40777.
    const MAPPING: &str = concat!(
        // nlmsghdr: length 80, type 0x26 (XFRM_MSG_MAPPING), flags 0, seq 0, pid 0
        "50000000",
        "2600",
        "0000",
        "00000000",
        "00000000",
        // xfrm_usersa_id: daddr (16 bytes), spi (network order), family AF_INET, proto ESP, pad
        "c6336415000000000000000000000000",
        "c0000123",
        "0200",
        "32",
        "00",
        // reqid (host order)
        "01005056",
        // old_saddr, new_saddr (16 bytes each)
        "cb007132000000000000000000000000",
        "cb007132000000000000000000000000",
        // old_sport, new_sport (network order)
        "1194",
        "9f49",
    );

    #[test]
    fn a_kernel_mapping_message_is_a_mapping_event() {
        let bytes = hex::decode(MAPPING).unwrap();
        let msg = NetlinkMessage::<XfrmMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else {
            panic!("not an XFRM message: {msg:?}")
        };
        let peer = Ipv4Addr::new(203, 0, 113, 50);
        assert_eq!(
            event_of(&m),
            Some(XfrmEvent::Mapping {
                id: SaId {
                    dst: Ipv4Addr::new(198, 51, 100, 21),
                    spi: 0xc000_0123,
                },
                reqid: 0x5650_0001,
                old: SocketAddrV4::new(peer, 4500),
                new: SocketAddrV4::new(peer, 40777),
            })
        );
    }
}
