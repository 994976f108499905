//! CREATE_CHILD_SA, both sides: CHILD SA and IKE SA rekeys (collisions
//! included) and the installation of the CHILD SAs they create.

use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec::{notify_type as nt, protocol_id, ExchangeType, KeyExchange, Notify, Payload};
use crate::crypto::{random_bytes, random_esp_spi, random_u64_nonzero, DhGroup, DhPrivate};
use crate::error::Error;
use crate::event::{ChildSa, Event, Mode, Output};
use crate::keys::{accept_esp, accept_ike, child_keymat, select_ike, skeyseed_rekey, IkeSaKeys, IkeSuite};

use super::{
    all_within, find_notify, first_error_notify, spi_bytes_u32, Child, ChildKeying, ChildRekey, Collision, Effects,
    IkeCollision, IkeRekey, IkeSa, Out, PendingKind, Queued, Result, SaState, NONCE_LEN,
};

impl IkeSa {
    /// Derives the keys of a CHILD SA, records it and emits `ChildSaUp`.
    /// `exchange_initiator`: whether we started the exchange creating it
    /// (KEYMAT's first half protects initiator -> responder traffic).
    pub(super) fn install_child(
        &mut self,
        child: Child,
        keying: ChildKeying<'_>,
        replaces: Option<(u32, u32)>,
        out: &mut Out,
    ) -> Result<()> {
        let ChildKeying {
            gir,
            ni,
            nr,
            exchange_initiator,
        } = keying;
        let mut child = child;
        let keys = self.keys()?;
        let (i2r, r2i) = child_keymat(&keys.sk_d, child.suite.encr, gir, ni, nr)?;
        let (outbound_key, inbound_key) = if exchange_initiator { (i2r, r2i) } else { (r2i, i2r) };
        // Make before break (RFC 7296 2.8): the responder of a rekey keeps
        // sending on the old pair until the initiator deletes it, since the
        // initiator may not have the new inbound SA installed yet.
        let outbound_deferred = replaces.is_some() && !exchange_initiator;
        child.outbound_waits_for = if outbound_deferred {
            replaces.map(|(i, _)| i)
        } else {
            None
        };
        out.push_back(Output::Event(Event::ChildSaUp(ChildSa {
            outbound_deferred,
            inbound_spi: child.inbound_spi,
            outbound_spi: child.outbound_spi,
            inbound_key,
            outbound_key,
            encr: child.suite.encr,
            mode: Mode::Tunnel,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            local: self.local,
            remote: self.remote,
            encap: self.nat.then_some((self.local.port(), self.remote.port())),
            replaces,
        })));
        child.installed = true;
        self.children.push(child);
        Ok(())
    }

    /// A fresh inbound ESP SPI (from the configured source, else random).
    pub(super) fn new_inbound_spi(&self, rng: &dyn SecureRandom) -> Result<u32> {
        match &self.cfg.spi_source {
            Some(src) => src
                .inbound_spi(self.local.ip(), self.remote.ip())
                .map_err(Error::SpiAllocation),
            None => Ok(random_esp_spi(rng)?),
        }
    }

    pub(super) fn handle_create_child(
        &mut self,
        now: Instant,
        mid: u32,
        payloads: &[Payload],
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        if self.state == SaState::Deleting {
            // Closing this IKE SA: nothing new on it (RFC 7296 2.25).
            self.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(nt::TEMPORARY_FAILURE, Vec::new()))],
                out,
            )?;
            return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
        }
        let is_ike = payloads
            .iter()
            .any(|p| matches!(p, Payload::Sa(props) if props.iter().any(|x| x.protocol == protocol_id::IKE)));
        if is_ike {
            let crossed = self.ike_rekey_in_flight();
            if !crossed && self.busy_with_ike() {
                // We are closing it: refuse; the peer may retry later.
                self.send_response(
                    ExchangeType::CreateChildSa,
                    mid,
                    &[Payload::Notify(Notify::new(nt::TEMPORARY_FAILURE, Vec::new()))],
                    out,
                )?;
                return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
            }
            // Both sides rekeying: answer as usual, the nonces pick the
            // survivor when ours completes (RFC 7296 2.25.2).
            return self.respond_rekey_ike(now, mid, payloads, rng, out, fx);
        }
        let reply_error = |sa: &mut Self, ty: u16, out: &mut Out| {
            sa.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(ty, Vec::new()))],
                out,
            )
        };
        let Some(rekey) = find_notify(payloads, nt::REKEY_SA) else {
            // One CHILD SA per tunnel is all VPNNAT needs.
            reply_error(self, nt::NO_ADDITIONAL_SAS, out)?;
            return Err(Error::PeerError(nt::NO_ADDITIONAL_SAS));
        };
        let old = spi_bytes_u32(&rekey.spi)
            .and_then(|spi| self.children.iter().find(|c| c.outbound_spi == spi))
            .cloned();
        let Some(old) = old else {
            reply_error(self, nt::CHILD_SA_NOT_FOUND, out)?;
            return Err(Error::UnknownChild(spi_bytes_u32(&rekey.spi).unwrap_or(0)));
        };
        // Both sides rekeying the same pair: answer as usual and let the
        // nonces pick the survivor when ours completes (RFC 7296 2.25.1).
        let crossed = matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::RekeyChild(r)) if r.old_inbound == old.inbound_spi
        );
        if !crossed && self.busy_with_child(old.inbound_spi) {
            // We are deleting it: refuse; the peer may retry later.
            reply_error(self, nt::TEMPORARY_FAILURE, out)?;
            return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
        }
        let ni = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let ke = payloads.iter().find_map(|p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        });
        let pfs = match ke {
            None => None,
            Some(k) => match DhGroup::from_id(k.group) {
                Some(g) if self.cfg.ike_suites.iter().any(|s| s.dh == g) => Some(g),
                _ => {
                    let want = self.suite.dh.id().to_be_bytes().to_vec();
                    self.send_response(
                        ExchangeType::CreateChildSa,
                        mid,
                        &[Payload::Notify(Notify::new(nt::INVALID_KE_PAYLOAD, want))],
                        out,
                    )?;
                    return Err(Error::InvalidKe {
                        got: k.group,
                        want: self.suite.dh.id(),
                    });
                }
            },
        };
        let (child, num) = match self.negotiate_child(payloads, pfs, rng) {
            Ok(c) => c,
            Err((ty, e)) => {
                reply_error(self, ty, out)?;
                return Err(e);
            }
        };
        // The selectors are negotiated afresh (narrowed to the current
        // configuration), so a rekey is also how a changed set of VPNNAT
        // addresses takes effect.
        let nr = random_bytes(rng, NONCE_LEN)?;
        let mut resp = vec![
            Payload::Sa(vec![child.suite.to_proposal(num, child.inbound_spi, pfs)]),
            Payload::Nonce(nr.clone()),
        ];
        let gir = match (pfs, ke) {
            (Some(g), Some(k)) => {
                let dh = DhPrivate::generate(g, rng)?;
                resp.push(Payload::Ke(KeyExchange {
                    group: g.id(),
                    data: dh.public().to_vec(),
                }));
                Some(dh.agree(&k.data)?)
            }
            _ => None,
        };
        resp.push(Payload::TsI(child.remote_ts.clone()));
        resp.push(Payload::TsR(child.local_ts.clone()));
        // The peer rekeyed it first: our own queued rekey of it is moot.
        self.queue.retain(|q| *q != Queued::RekeyChild(old.inbound_spi));
        if crossed {
            self.rekey_collision = Some(Collision {
                old: old.inbound_spi,
                peer_ni: ni.clone(),
                our_nr: nr.clone(),
                peer_child: child.inbound_spi,
            });
        }
        let keying = ChildKeying {
            gir: gir.as_ref(),
            ni: &ni,
            nr: &nr,
            exchange_initiator: false,
        };
        self.install_child(child, keying, Some((old.inbound_spi, old.outbound_spi)), out)?;
        self.send_response(ExchangeType::CreateChildSa, mid, &resp, out)
    }

    fn respond_rekey_ike(
        &mut self,
        now: Instant,
        mid: u32,
        payloads: &[Payload],
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        // Both sides rekeying the IKE SA at once (RFC 7296 2.25.2).
        let crossed = self.ike_rekey_in_flight();
        let sa = find_payload!(payloads, Sa, "SA")?;
        let ni = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let ke = find_payload!(payloads, Ke, "KE")?;
        let notify = |sa: &mut Self, ty: u16, data: Vec<u8>, out: &mut Out| {
            sa.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(ty, data))],
                out,
            )
        };
        let Some((suite, prop)) = select_ike(sa, &self.cfg.ike_suites) else {
            notify(self, nt::NO_PROPOSAL_CHOSEN, Vec::new(), out)?;
            return Err(Error::NoProposalChosen);
        };
        let Some(new_spi_i) = prop
            .spi
            .as_slice()
            .try_into()
            .ok()
            .map(u64::from_be_bytes)
            .filter(|s| *s != 0)
        else {
            notify(self, nt::INVALID_SYNTAX, Vec::new(), out)?;
            return Err(Error::InvalidPayload("IKE rekey SPI"));
        };
        if ke.group != suite.dh.id() {
            notify(self, nt::INVALID_KE_PAYLOAD, suite.dh.id().to_be_bytes().to_vec(), out)?;
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        let new_spi_r = random_u64_nonzero(rng)?;
        let nr = random_bytes(rng, NONCE_LEN)?;
        let dh = DhPrivate::generate(suite.dh, rng)?;
        let public = dh.public().to_vec();
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed_rekey(&self.keys()?.sk_d, &gir, &ni, &nr);
        let keys = IkeSaKeys::derive(suite.encr, &seed, &ni, &nr, new_spi_i, new_spi_r)?;
        let resp = vec![
            Payload::Sa(vec![suite.to_proposal(prop.num, new_spi_r.to_be_bytes().to_vec())]),
            Payload::Nonce(nr.clone()),
            Payload::Ke(KeyExchange {
                group: suite.dh.id(),
                data: public,
            }),
        ];
        self.send_response(ExchangeType::CreateChildSa, mid, &resp, out)?;
        let new = self.successor(now, false, new_spi_i, new_spi_r, suite, keys);
        if crossed {
            self.ike_collision = Some(IkeCollision {
                peer_ni: ni.clone(),
                our_nr: nr,
                theirs: new.spis(),
            });
        }
        out.push_back(Output::Event(Event::IkeSaRekeyed {
            old: self.spis(),
            new: new.spis(),
        }));
        fx.new_sa = Some(new);
        Ok(())
    }

    /// The IKE SA replacing this one after a rekey; CHILD SAs move over.
    fn successor(
        &mut self,
        now: Instant,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        suite: IkeSuite,
        keys: IkeSaKeys,
    ) -> Self {
        let mut new = Self::blank(self.cfg.clone(), initiator, self.local, self.remote, now);
        new.state = SaState::Established;
        new.spi_i = spi_i;
        new.spi_r = spi_r;
        new.suite = suite;
        new.keys = Some(keys);
        new.nat = self.nat;
        new.behind_nat = self.behind_nat;
        new.children = std::mem::take(&mut self.children);
        self.superseded = true;
        self.superseded_at = Some(now);
        new
    }

    fn finish_rekey_child_inner(
        &mut self,
        payloads: &[Payload],
        rekey: ChildRekey,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let ChildRekey {
            old_inbound,
            new_inbound,
            ni,
            dh,
        } = rekey;
        let ni = ni.as_slice();
        if let Some(ty) = first_error_notify(payloads) {
            return Err(Error::PeerError(ty));
        }
        let Some(old) = self.children.iter().find(|c| c.inbound_spi == old_inbound).cloned() else {
            return Err(Error::UnknownChild(old_inbound));
        };
        let pfs = dh.as_ref().map(DhPrivate::group);
        let sa = find_payload!(payloads, Sa, "SA")?;
        let (suite, outbound_spi) = accept_esp(sa, &[old.suite], pfs).ok_or(Error::NoProposalChosen)?;
        let nr = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let gir = match dh {
            Some(dh) => {
                let ke = find_payload!(payloads, Ke, "KE")?;
                if Some(ke.group) != pfs.map(DhGroup::id) {
                    return Err(Error::InvalidKe {
                        got: ke.group,
                        want: dh.group().id(),
                    });
                }
                Some(dh.agree(&ke.data)?)
            }
            None => None,
        };
        let tsi = find_payload!(payloads, TsI, "TSi")?;
        let tsr = find_payload!(payloads, TsR, "TSr")?;
        if !all_within(tsi, &self.cfg.local_ts) || !all_within(tsr, &self.cfg.remote_ts) {
            return Err(Error::TsUnacceptable);
        }
        let child = Child {
            inbound_spi: new_inbound,
            outbound_spi,
            suite,
            local_ts: tsi.clone(),
            remote_ts: tsr.clone(),
            outbound_waits_for: None,
            installed: false,
        };
        if let Some(c) = self.rekey_collision.take().filter(|c| c.old == old_inbound) {
            // RFC 7296 2.8.1: the pair made by the exchange holding the
            // lowest of the four nonces is redundant and is closed by the
            // side that initiated that exchange; the other initiator closes
            // the old pair. Both sides reach the same verdict.
            let ours = std::cmp::min(ni, nr.as_slice());
            let theirs = std::cmp::min(c.peer_ni.as_slice(), c.our_nr.as_slice());
            if ours < theirs {
                // Ours lost: never installed, deleted by us.
                self.children.push(child);
                return self.start(now, Queued::DeleteChild(new_inbound), rng, out);
            }
            // Theirs lost: the peer deletes it, so never switch to it.
            if let Some(p) = self.children.iter_mut().find(|x| x.inbound_spi == c.peer_child) {
                p.outbound_waits_for = None;
            }
        }
        let keying = ChildKeying {
            gir: gir.as_ref(),
            ni,
            nr: &nr,
            exchange_initiator: true,
        };
        self.install_child(child, keying, Some((old.inbound_spi, old.outbound_spi)), out)?;
        // The old pair goes once the new one is in place (RFC 7296 2.8).
        self.start(now, Queued::DeleteChild(old_inbound), rng, out)
    }

    fn finish_rekey_ike_inner(
        &mut self,
        payloads: &[Payload],
        rekey: IkeRekey,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let IkeRekey { new_spi_i, ni, dh } = rekey;
        let ni = ni.as_slice();
        if let Some(ty) = first_error_notify(payloads) {
            return Err(Error::PeerError(ty));
        }
        let sa = find_payload!(payloads, Sa, "SA")?;
        let (suite, spi) = accept_ike(sa, &[self.suite]).ok_or(Error::NoProposalChosen)?;
        let new_spi_r = <[u8; 8]>::try_from(spi.as_slice())
            .map(u64::from_be_bytes)
            .ok()
            .filter(|s| *s != 0)
            .ok_or(Error::InvalidPayload("IKE rekey SPI"))?;
        let nr = find_payload!(payloads, Nonce, "Nonce")?;
        let ke = find_payload!(payloads, Ke, "KE")?;
        let dh = dh.ok_or(Error::NotEstablished)?;
        if ke.group != dh.group().id() {
            return Err(Error::InvalidKe {
                got: ke.group,
                want: dh.group().id(),
            });
        }
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed_rekey(&self.keys()?.sk_d, &gir, ni, nr);
        let keys = IkeSaKeys::derive(suite.encr, &seed, ni, nr, new_spi_i, new_spi_r)?;
        let mut new = self.successor(now, true, new_spi_i, new_spi_r, suite, keys);
        if let Some(c) = self.ike_collision.take() {
            // RFC 7296 2.8.1: the IKE SA made by the exchange holding the
            // lowest of the four nonces is redundant; its initiator deletes
            // it, the other initiator deletes the old SA.
            let ours = std::cmp::min(ni, nr.as_slice());
            let theirs = std::cmp::min(c.peer_ni.as_slice(), c.our_nr.as_slice());
            if ours < theirs {
                // Ours lost: it never carries anything and goes silently;
                // the CHILD SAs stay on the peer's new SA.
                new.superseded = true;
                new.superseded_at = Some(now);
                new.start(now, Queued::DeleteIke, rng, out)?;
                fx.new_sa = Some(new);
                return Ok(());
            }
            // Ours won: it takes the CHILD SAs over from the peer's new SA,
            // which the peer deletes.
            fx.adopt_children_from = Some(c.theirs);
        }
        out.push_back(Output::Event(Event::IkeSaRekeyed {
            old: self.spis(),
            new: new.spis(),
        }));
        // Work queued on the old SA moves to the new one; the old SA itself
        // is deleted (RFC 7296 2.18).
        new.queue = std::mem::take(&mut self.queue);
        new.queue.retain(|q| *q != Queued::DeleteIke && *q != Queued::RekeyIke);
        fx.new_sa = Some(new);
        self.start(now, Queued::DeleteIke, rng, out)
    }

    /// Completes our CHILD SA rekey; a failure is reported as an event too,
    /// since the driver that asked for it is not the caller here.
    pub(super) fn finish_rekey_child(
        &mut self,
        payloads: &[Payload],
        rekey: ChildRekey,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let old_inbound = rekey.old_inbound;
        let r = self.finish_rekey_child_inner(payloads, rekey, now, rng, out);
        if let Err(e) = &r {
            out.push_back(Output::Event(Event::RekeyFailed {
                child: Some(old_inbound),
                error: e.clone(),
            }));
        }
        r
    }

    /// Completes our IKE SA rekey, reporting failures as events.
    pub(super) fn finish_rekey_ike(
        &mut self,
        payloads: &[Payload],
        rekey: IkeRekey,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let r = self.finish_rekey_ike_inner(payloads, rekey, now, rng, out, fx);
        if let Err(e) = &r {
            out.push_back(Output::Event(Event::RekeyFailed {
                child: None,
                error: e.clone(),
            }));
        }
        r
    }
}
