//! Requests we start (DPD, delete, rekeys), queued one at a time.

use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec::{notify_type as nt, protocol_id, Delete, ExchangeType, KeyExchange, Notify, Payload};
use crate::crypto::{random_bytes, random_u64_nonzero, DhPrivate};
use crate::error::Error;
use crate::keys::{esp_proposals, ike_proposals};

use super::{ChildRekey, IkeRekey, IkeSa, Out, PendingKind, Queued, Result, SaState, NONCE_LEN};

impl IkeSa {
    /// Queues a request and sends it when the window allows.
    pub(crate) fn start(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        if self.state == SaState::Deleting && what != Queued::DeleteIke {
            // Closing (e.g. a rekey answered after our close): the IKE
            // SA's DELETE takes every CHILD SA with it; just let it go out.
            return self.pump(now, rng, out);
        }
        if !matches!(self.state, SaState::Established) {
            return Err(Error::NotEstablished);
        }
        if !self.queue.contains(&what) {
            // Deleting a replaced CHILD SA must not wait behind other work
            // (an IKE rekey would otherwise carry the stale pair over).
            if matches!(what, Queued::DeleteChild(_)) {
                self.queue.push_front(what);
            } else {
                self.queue.push_back(what);
            }
        }
        if what == Queued::DeleteIke {
            self.state = SaState::Deleting;
        }
        self.pump(now, rng, out)
    }

    /// Sends the next queued request if none is outstanding.
    pub(crate) fn pump(&mut self, now: Instant, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        while self.pending.is_none() && matches!(self.state, SaState::Established | SaState::Deleting) {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            // Once deleting, only the delete itself goes out.
            if self.state == SaState::Deleting && next != Queued::DeleteIke {
                continue;
            }
            match next {
                Queued::Dpd => {
                    self.send_request(now, ExchangeType::Informational, &[], PendingKind::Dpd, out)?;
                }
                Queued::DeleteIke => {
                    let d = Payload::Delete(Delete {
                        protocol: protocol_id::IKE,
                        spi_size: 0,
                        spis: Vec::new(),
                    });
                    self.send_request(now, ExchangeType::Informational, &[d], PendingKind::DeleteIke, out)?;
                }
                Queued::DeleteChild(spi) => {
                    if !self.children.iter().any(|c| c.inbound_spi == spi) {
                        continue;
                    }
                    let d = Payload::Delete(Delete {
                        protocol: protocol_id::ESP,
                        spi_size: 4,
                        spis: vec![spi.to_be_bytes().to_vec()],
                    });
                    self.send_request(
                        now,
                        ExchangeType::Informational,
                        &[d],
                        PendingKind::DeleteChild { inbound_spi: spi },
                        out,
                    )?;
                }
                Queued::RekeyChild(spi) => {
                    let Some(child) = self.children.iter().find(|c| c.inbound_spi == spi).cloned() else {
                        continue;
                    };
                    let new_inbound = self.new_inbound_spi(rng)?;
                    let ni = random_bytes(rng, NONCE_LEN)?;
                    let pfs = self.cfg.child_pfs.then_some(self.suite.dh);
                    let mut p = vec![
                        Payload::Notify(Notify {
                            protocol: protocol_id::ESP,
                            spi: spi.to_be_bytes().to_vec(),
                            ty: nt::REKEY_SA,
                            data: Vec::new(),
                        }),
                        Payload::Sa(esp_proposals(&[child.suite], new_inbound, pfs)),
                        Payload::Nonce(ni.clone()),
                    ];
                    let dh = match pfs {
                        Some(g) => {
                            let dh = DhPrivate::generate(g, rng)?;
                            p.push(Payload::Ke(KeyExchange {
                                group: g.id(),
                                data: dh.public().to_vec(),
                            }));
                            Some(dh)
                        }
                        None => None,
                    };
                    // Propose the current configuration, not the old child's
                    // selectors: the peer narrows it again.
                    p.push(Payload::TsI(self.cfg.local_ts.clone()));
                    p.push(Payload::TsR(self.cfg.remote_ts.clone()));
                    let kind = PendingKind::RekeyChild(ChildRekey {
                        old_inbound: spi,
                        new_inbound,
                        ni,
                        dh,
                    });
                    self.send_request(now, ExchangeType::CreateChildSa, &p, kind, out)?;
                }
                Queued::RekeyIke => {
                    let new_spi_i = random_u64_nonzero(rng)?;
                    let ni = random_bytes(rng, NONCE_LEN)?;
                    let dh = DhPrivate::generate(self.suite.dh, rng)?;
                    let p = vec![
                        Payload::Sa(ike_proposals(&[self.suite], &new_spi_i.to_be_bytes())),
                        Payload::Nonce(ni.clone()),
                        Payload::Ke(KeyExchange {
                            group: self.suite.dh.id(),
                            data: dh.public().to_vec(),
                        }),
                    ];
                    let kind = PendingKind::RekeyIke(IkeRekey {
                        new_spi_i,
                        ni,
                        dh: Some(dh),
                    });
                    self.send_request(now, ExchangeType::CreateChildSa, &p, kind, out)?;
                }
            }
        }
        Ok(())
    }

    /// Whether we are deleting the CHILD SA with this inbound SPI ourselves
    /// (an exchange collision answered with TEMPORARY_FAILURE, RFC 7296
    /// 2.25).
    pub(super) fn busy_with_child(&self, inbound_spi: u32) -> bool {
        let pending = matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::DeleteChild { inbound_spi: s }) if *s == inbound_spi
        );
        pending || self.queue.contains(&Queued::DeleteChild(inbound_spi))
    }

    /// Whether we are rekeying or deleting this IKE SA ourselves.
    pub(super) fn busy_with_ike(&self) -> bool {
        matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::RekeyIke(_) | PendingKind::DeleteIke)
        ) || self.state == SaState::Deleting
    }

    /// Whether our IKE SA rekey is outstanding (a peer's rekey crosses it).
    pub(super) fn ike_rekey_in_flight(&self) -> bool {
        matches!(self.pending.as_ref().map(|p| &p.kind), Some(PendingKind::RekeyIke(_)))
    }

    /// API: queue an operation on an established SA.
    pub(crate) fn request(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        if let Queued::DeleteChild(spi) | Queued::RekeyChild(spi) = what {
            if !self.children.iter().any(|c| c.inbound_spi == spi) {
                return Err(Error::UnknownChild(spi));
            }
        }
        self.start(now, what, rng, out)
    }
}
