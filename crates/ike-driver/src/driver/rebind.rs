//! NAT rebinding (issue 17 item 4): the peer's NAT gave it a new public
//! port. The core decides that it moved (an authenticated IKE message, or
//! an XFRM mapping event the kernel sends only for ESP that authenticated
//! and passed the replay window); here the kernel SAs follow: each CHILD
//! SA's UDP encapsulation takes the new port (XFRM_MSG_UPDSA, which keeps
//! keys, sequence numbers and replay state), so the operator's traffic
//! goes on through the same SA pair.

use std::net::SocketAddr;

use super::{Child, Core, Driver};
use crate::kernel::{KernelOp, Mapping};
use crate::net::Ports;

/// The kernel operations that move `children`'s SAs from the peer at
/// `from` to `to` (a deferred outbound SA is changed in place, before it
/// is installed). Pure.
///
/// Only a new port is followed: an SA's destination address is part of
/// its identity in the kernel (UPDSA cannot change it) and the owner's
/// policies name it in their templates, so a peer that changed address is
/// left to its next IKE SA (DPD ends this one; the router dials in again).
pub(super) fn follow<'a>(
    children: impl Iterator<Item = &'a mut Child>,
    from: SocketAddr,
    to: SocketAddr,
    ports: Ports,
) -> Vec<KernelOp> {
    if from.ip() != to.ip() {
        log::warn!(
            "the peer moved from {from} to another address, {to}: its kernel SAs stay (only a new port is followed)"
        );
        return Vec::new();
    }
    let port = ports.to_wire(to.port());
    let mut ops = Vec::new();
    for c in children {
        ops.push(KernelOp::MovePeerPort {
            id: c.inbound,
            outbound: false,
            port,
        });
        match c.pending_out.as_mut() {
            Some(sa) => {
                if let Some(e) = sa.encap.as_mut() {
                    e.dport = port;
                }
            }
            None => ops.push(KernelOp::MovePeerPort {
                id: c.outbound,
                outbound: true,
                port,
            }),
        }
    }
    ops
}

impl Driver {
    /// The kernel saw ESP for one of our inbound SAs from a new source:
    /// the core of the SA's IKE SA decides (it reports `PeerMoved`).
    pub(super) async fn on_mapping(&mut self, m: Mapping) {
        let to = self.cfg.ports.addr_to_core(SocketAddr::V4(m.new));
        let found = self.tunnels.iter().find_map(|(peer, t)| {
            t.children
                .iter()
                .find(|(_, c)| c.inbound == m.inbound)
                .map(|(spi, _)| (*peer, *spi))
        });
        if let Some((peer, spi)) = found {
            if let Some(t) = self.tunnels.get_mut(&peer) {
                let r = match &mut t.core {
                    Core::Init(c) => c.esp_moved(spi, to),
                    Core::Resp(c) => c.esp_moved(spi, to),
                };
                if let Err(e) = r {
                    log::warn!("ESP of {} from {}: {e}", m.inbound, m.new);
                }
            }
            self.drain(peer).await;
            return;
        }
        self.dial_in_esp_moved(m, to).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vpnnat_datapath::{Encap, Lifetime, SaId, SaKey, SaSpec};

    fn id(spi: u32) -> SaId {
        SaId {
            dst: Ipv4Addr::new(198, 51, 100, 21),
            spi,
        }
    }

    fn child(pending: bool) -> Child {
        Child {
            inbound: id(0xc000_0001),
            outbound: id(0xc100_0001),
            pending_out: pending.then(|| {
                Box::new(SaSpec {
                    src: Ipv4Addr::new(198, 51, 100, 21),
                    dst: Ipv4Addr::new(203, 0, 113, 50),
                    spi: 0xc100_0001,
                    reqid: 1,
                    key: SaKey::new(vec![7; 20]).unwrap(),
                    replay_window: 64,
                    encap: Some(Encap {
                        sport: 4500,
                        dport: 40_001,
                    }),
                    lifetime: Lifetime::default(),
                })
            }),
        }
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(203, 0, 113, 50).into(), port)
    }

    fn moves(ops: &[KernelOp]) -> Vec<(u32, bool, u16)> {
        ops.iter()
            .filter_map(|o| match o {
                KernelOp::MovePeerPort { id, outbound, port } => Some((id.spi, *outbound, *port)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn both_sas_of_a_pair_take_the_new_port() {
        let mut c = child(false);
        let ops = follow([&mut c].into_iter(), at(40_001), at(40_777), Ports::default());
        assert_eq!(
            moves(&ops),
            vec![(0xc000_0001, false, 40_777), (0xc100_0001, true, 40_777)]
        );
    }

    #[test]
    fn a_deferred_outbound_sa_is_changed_before_it_is_installed() {
        let mut c = child(true);
        let ops = follow([&mut c].into_iter(), at(40_001), at(40_777), Ports::default());
        assert_eq!(moves(&ops), vec![(0xc000_0001, false, 40_777)]);
        let encap = c.pending_out.as_ref().and_then(|s| s.encap);
        assert_eq!(encap.map(|e| (e.sport, e.dport)), Some((4500, 40_777)));
    }

    #[test]
    fn the_core_port_of_a_test_driver_is_written_as_the_wire_port() {
        let ports = Ports {
            ike: 20_500,
            natt: 24_500,
        };
        let mut c = child(false);
        let ops = follow([&mut c].into_iter(), at(40_001), at(4500), ports);
        assert_eq!(
            moves(&ops),
            vec![(0xc000_0001, false, 24_500), (0xc100_0001, true, 24_500)]
        );
    }

    #[test]
    fn a_new_address_moves_no_sa() {
        let mut c = child(false);
        let elsewhere = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 9).into(), 40_001);
        assert!(follow([&mut c].into_iter(), at(40_001), elsewhere, Ports::default()).is_empty());
    }
}
