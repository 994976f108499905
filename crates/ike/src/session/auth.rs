//! IKE_AUTH, both sides: authentication and the first CHILD SA.

use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec::{notify_type as nt, Auth, ExchangeType, Notify, Payload, AUTH_METHOD_PSK};
use crate::crypto::{psk_auth, signed_octets, verify_psk_auth, DhGroup};
use crate::error::Error;
use crate::event::{DownReason, Event, Output};
use crate::keys::{accept_esp, esp_proposals, select_esp};

use super::{
    all_within, down_reason_for, find_notify, first_error_notify, narrow, spi_bytes_u32, Child, ChildKeying, Effects,
    IkeSa, Out, PendingKind, Queued, Result, SaState,
};

impl IkeSa {
    pub(super) fn send_auth(&mut self, now: Instant, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        let keys = self.keys()?;
        let id = self.cfg.local_id.clone();
        let signed = signed_octets(&self.msg1, &self.nr, keys.sk_pi.expose(), &id.body_bytes());
        let auth = psk_auth(self.cfg.psk.expose(), &signed);
        let inbound_spi = self.new_inbound_spi(rng)?;
        let mut payloads = vec![
            Payload::IdI(id),
            Payload::Auth(Auth {
                method: AUTH_METHOD_PSK,
                data: auth.expose().to_vec(),
            }),
            Payload::Notify(Notify::new(nt::INITIAL_CONTACT, Vec::new())),
            Payload::Sa(esp_proposals(&self.cfg.esp_suites, inbound_spi, None)),
            Payload::TsI(self.cfg.local_ts.clone()),
            Payload::TsR(self.cfg.remote_ts.clone()),
        ];
        if let Some(r) = &self.cfg.remote_id {
            payloads.insert(1, Payload::IdR(r.clone()));
        }
        self.state = SaState::AuthSent;
        self.send_request(
            now,
            ExchangeType::IkeAuth,
            &payloads,
            PendingKind::Auth { inbound_spi },
            out,
        )
    }

    pub(super) fn handle_auth_response(
        &mut self,
        payloads: &[Payload],
        inbound_spi: u32,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let has_auth = payloads.iter().any(|p| matches!(p, Payload::Auth(_)));
        if !has_auth {
            // AUTHENTICATION_FAILED and friends: the IKE SA did not come up.
            let ty = first_error_notify(payloads).unwrap_or(nt::AUTHENTICATION_FAILED);
            self.die(down_reason_for(ty), out);
            return Err(Error::PeerError(ty));
        }
        let idr = find_payload!(payloads, IdR, "IDr")?;
        let auth = find_payload!(payloads, Auth, "AUTH")?;
        let keys = self.keys()?;
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == idr);
        let signed = signed_octets(&self.msg2, &self.ni, keys.sk_pr.expose(), &idr.body_bytes());
        let auth_ok =
            auth.method == AUTH_METHOD_PSK && verify_psk_auth(self.cfg.psk.expose(), &signed, &auth.data).is_ok();
        if !id_ok || !auth_ok {
            // The message decrypted under keys only the DH peer has, so this
            // is a genuine peer we cannot trust: tell it in a separate
            // INFORMATIONAL, sent once (RFC 7296 2.21.2), and give up.
            let notify = [Payload::Notify(Notify::new(nt::AUTHENTICATION_FAILED, Vec::new()))];
            if let Ok(bytes) = self.seal(ExchangeType::Informational, false, self.next_mid, &notify) {
                out.push_back(Output::Send(self.wrap(bytes)));
            }
            self.die(DownReason::AuthenticationFailed, out);
            return Err(if id_ok {
                Error::AuthenticationFailed
            } else {
                Error::IdentityMismatch
            });
        }
        self.state = SaState::Established;
        self.last_rx = now;
        if let Some(ty) = first_error_notify(payloads) {
            // IKE SA up, CHILD SA refused: useless for us, close it.
            self.report_down(down_reason_for(ty), out);
            self.start(now, Queued::DeleteIke, rng, out)?;
            return Err(Error::PeerError(ty));
        }
        let child = (|| {
            let sa = find_payload!(payloads, Sa, "SA")?;
            let (suite, outbound_spi) = accept_esp(sa, &self.cfg.esp_suites, None).ok_or(Error::NoProposalChosen)?;
            let tsi = find_payload!(payloads, TsI, "TSi")?;
            let tsr = find_payload!(payloads, TsR, "TSr")?;
            if !all_within(tsi, &self.cfg.local_ts) || !all_within(tsr, &self.cfg.remote_ts) {
                return Err(Error::TsUnacceptable);
            }
            Ok(Child {
                inbound_spi,
                outbound_spi,
                suite,
                local_ts: tsi.clone(),
                remote_ts: tsr.clone(),
                outbound_waits_for: None,
                installed: true,
            })
        })();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.report_down(DownReason::NoProposalChosen, out);
                self.start(now, Queued::DeleteIke, rng, out)?;
                return Err(e);
            }
        };
        let ni = self.ni.clone();
        let nr = self.nr.clone();
        let keying = ChildKeying {
            gir: None,
            ni: &ni,
            nr: &nr,
            exchange_initiator: true,
        };
        self.install_child(child, keying, None, out)?;
        out.push_back(Output::Event(Event::TunnelUp {
            ike_spis: self.spis(),
            local: self.local,
            remote: self.remote,
            nat: self.nat,
        }));
        self.forget_init_material();
        Ok(())
    }

    fn forget_init_material(&mut self) {
        self.msg1 = Vec::new();
        self.msg2 = Vec::new();
        self.dh = None;
        self.cookie = None;
    }

    pub(super) fn handle_auth_request(
        &mut self,
        mid: u32,
        payloads: &[Payload],
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let idi = find_payload!(payloads, IdI, "IDi")?;
        let auth = find_payload!(payloads, Auth, "AUTH")?;
        if let Some(lookup) = self.cfg.peer_lookup.clone() {
            // A gateway routers dial into: who this is decides the PSK,
            // the traffic selectors and everything else of this SA. An
            // unknown identity gets the same answer as a wrong PSK, so a
            // prober learns nothing about which identities exist.
            match lookup.config_for(idi) {
                Some(cfg) if cfg.peer_lookup.is_none() => self.set_config(cfg),
                _ => {
                    let notify = [Payload::Notify(Notify::new(nt::AUTHENTICATION_FAILED, Vec::new()))];
                    self.send_response(ExchangeType::IkeAuth, mid, &notify, out)?;
                    self.state = SaState::Dead;
                    self.down_reported = true;
                    return Err(Error::UnknownIdentity);
                }
            }
        }
        let keys = self.keys()?;
        let signed = signed_octets(&self.msg1, &self.nr, keys.sk_pi.expose(), &idi.body_bytes());
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == idi);
        let auth_ok =
            auth.method == AUTH_METHOD_PSK && verify_psk_auth(self.cfg.psk.expose(), &signed, &auth.data).is_ok();
        if !id_ok || !auth_ok {
            let notify = [Payload::Notify(Notify::new(nt::AUTHENTICATION_FAILED, Vec::new()))];
            self.send_response(ExchangeType::IkeAuth, mid, &notify, out)?;
            self.state = SaState::Dead;
            self.down_reported = true;
            return Err(if id_ok {
                Error::AuthenticationFailed
            } else {
                Error::IdentityMismatch
            });
        }
        let id = self.cfg.local_id.clone();
        let signed = signed_octets(&self.msg2, &self.ni, keys.sk_pr.expose(), &id.body_bytes());
        let our_auth = psk_auth(self.cfg.psk.expose(), &signed);
        let mut resp = vec![
            Payload::IdR(id),
            Payload::Auth(Auth {
                method: AUTH_METHOD_PSK,
                data: our_auth.expose().to_vec(),
            }),
        ];
        fx.initial_contact = find_notify(payloads, nt::INITIAL_CONTACT).is_some();
        self.state = SaState::Established;
        let child = self.negotiate_child(payloads, None, rng);
        let ni = self.ni.clone();
        let nr = self.nr.clone();
        let mut result = Ok(());
        match child {
            Ok((child, prop_num)) => {
                resp.push(Payload::Sa(vec![child.suite.to_proposal(
                    prop_num,
                    child.inbound_spi,
                    None,
                )]));
                resp.push(Payload::TsI(child.remote_ts.clone()));
                resp.push(Payload::TsR(child.local_ts.clone()));
                // Install before answering, so the initiator's first ESP
                // packets find the inbound SA.
                let keying = ChildKeying {
                    gir: None,
                    ni: &ni,
                    nr: &nr,
                    exchange_initiator: false,
                };
                self.install_child(child, keying, None, out)?;
                out.push_back(Output::Event(Event::TunnelUp {
                    ike_spis: self.spis(),
                    local: self.local,
                    remote: self.remote,
                    nat: self.nat,
                }));
            }
            Err((ty, e)) => {
                resp.push(Payload::Notify(Notify::new(ty, Vec::new())));
                result = Err(e);
            }
        }
        self.send_response(ExchangeType::IkeAuth, mid, &resp, out)?;
        self.forget_init_material();
        result
    }

    /// Picks an ESP proposal and narrows the traffic selectors of a request
    /// (IKE_AUTH or CREATE_CHILD_SA). Returns the child (with a fresh
    /// inbound SPI) and the proposal number, or the notify to answer with.
    pub(super) fn negotiate_child(
        &self,
        payloads: &[Payload],
        pfs: Option<DhGroup>,
        rng: &dyn SecureRandom,
    ) -> std::result::Result<(Child, u8), (u16, Error)> {
        let sa = find_payload!(payloads, Sa, "SA").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let tsi = find_payload!(payloads, TsI, "TSi").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let tsr = find_payload!(payloads, TsR, "TSr").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let (suite, prop) =
            select_esp(sa, &self.cfg.esp_suites, pfs).ok_or((nt::NO_PROPOSAL_CHOSEN, Error::NoProposalChosen))?;
        let outbound_spi = spi_bytes_u32(&prop.spi).ok_or((nt::INVALID_SYNTAX, Error::InvalidPayload("ESP SPI")))?;
        let remote_ts = narrow(tsi, &self.cfg.remote_ts);
        let local_ts = narrow(tsr, &self.cfg.local_ts);
        if remote_ts.is_empty() || local_ts.is_empty() {
            return Err((nt::TS_UNACCEPTABLE, Error::TsUnacceptable));
        }
        let inbound_spi = self.new_inbound_spi(rng).map_err(|e| (nt::TEMPORARY_FAILURE, e))?;
        Ok((
            Child {
                inbound_spi,
                outbound_spi,
                suite,
                local_ts,
                remote_ts,
                outbound_waits_for: None,
                installed: true,
            },
            prop.num,
        ))
    }
}
