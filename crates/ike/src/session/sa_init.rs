//! IKE_SA_INIT, both sides: the initiator's first request and its answer,
//! the responder's half-open SA, NAT detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec;
use crate::codec::{encode_message, notify_type as nt, ExchangeType, Header, KeyExchange, Notify, Payload};
use crate::crypto::{nat_detection_hash, random_bytes, random_u64_nonzero, DhGroup, DhPrivate};
use crate::error::Error;
use crate::event::{Datagram, Output, NAT_T_PORT};
use crate::keys::{accept_ike, ike_proposals, select_ike, skeyseed, IkeSaKeys};

use super::{
    down_reason_for, find_notify, first_error_notify, IkeSa, Out, PendingKind, Received, Result, SaConfig, SaState,
    NONCE_LEN,
};

/// NAT detection (RFC 7296 2.23): a NAT is between us if the hash of the
/// addresses we see differs from what the peer computed. Absent notifies
/// mean the peer does not do NAT-T: no NAT handling.
fn detect_nat(p: &[Payload], spi_i: u64, spi_r: u64, src: SocketAddr, dst: SocketAddr) -> NatState {
    let hashes = |ty: u16| -> Vec<&[u8]> {
        p.iter()
            .filter_map(|x| match x {
                Payload::Notify(n) if n.ty == ty => Some(n.data.as_slice()),
                _ => None,
            })
            .collect()
    };
    let srcs = hashes(nt::NAT_DETECTION_SOURCE_IP);
    let dsts = hashes(nt::NAT_DETECTION_DESTINATION_IP);
    if srcs.is_empty() || dsts.is_empty() {
        return NatState::default();
    }
    let peer_natted = !srcs.contains(&nat_detection_hash(spi_i, spi_r, src.ip(), src.port()).as_slice());
    let we_natted = !dsts.contains(&nat_detection_hash(spi_i, spi_r, dst.ip(), dst.port()).as_slice());
    NatState {
        any: peer_natted || we_natted,
        local: we_natted,
    }
}

/// Result of NAT detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NatState {
    /// Some NAT is in the path: use UDP encapsulation.
    any: bool,
    /// We are behind it: we keep its mapping alive.
    local: bool,
}

impl IkeSa {
    /// Starts a new IKE SA as original initiator.
    pub(crate) fn start_initiator(
        cfg: Arc<SaConfig>,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<Self> {
        let mut sa = Self::blank(cfg, true, local, remote, now);
        sa.spi_i = random_u64_nonzero(rng)?;
        sa.ni = random_bytes(rng, NONCE_LEN)?;
        sa.dh = Some(DhPrivate::generate(sa.suite.dh, rng)?);
        sa.send_init(now, out)?;
        Ok(sa)
    }

    fn init_payloads(&self) -> Result<Vec<Payload>> {
        let dh = self.dh.as_ref().ok_or(Error::NotEstablished)?;
        let mut p = Vec::new();
        if let Some(c) = &self.cookie {
            p.push(Payload::Notify(Notify::new(nt::COOKIE, c.clone())));
        }
        p.push(Payload::Sa(ike_proposals(&self.cfg.ike_suites, &[])));
        p.push(Payload::Ke(KeyExchange {
            group: dh.group().id(),
            data: dh.public().to_vec(),
        }));
        p.push(Payload::Nonce(self.ni.clone()));
        p.push(Payload::Notify(Notify::new(
            nt::NAT_DETECTION_SOURCE_IP,
            nat_detection_hash(self.spi_i, 0, self.local.ip(), self.local.port()),
        )));
        p.push(Payload::Notify(Notify::new(
            nt::NAT_DETECTION_DESTINATION_IP,
            nat_detection_hash(self.spi_i, 0, self.remote.ip(), self.remote.port()),
        )));
        Ok(p)
    }

    fn send_init(&mut self, now: Instant, out: &mut Out) -> Result<()> {
        let payloads = self.init_payloads()?;
        self.next_mid = 0;
        self.send_request(now, ExchangeType::IkeSaInit, &payloads, PendingKind::Init, out)?;
        if let Some(p) = &self.pending {
            self.msg1 = p.datagram.payload.clone();
        }
        Ok(())
    }

    pub(super) fn handle_init_response(
        &mut self,
        rx: &Received<'_>,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let Received {
            now,
            src,
            dst,
            raw,
            msg,
        } = *rx;
        let p = &msg.payloads;
        // IKE_SA_INIT responses are not authenticated; a malformed or
        // unacceptable one leaves the state alone and the retransmission
        // timer keeps running. Only an explicit error notify from the peer's
        // address (already checked) ends the attempt.
        if let Some(c) = find_notify(p, nt::COOKIE) {
            if c.data.is_empty() || c.data.len() > 64 {
                return Err(Error::InvalidPayload("COOKIE"));
            }
            self.cookie = Some(c.data.clone());
            return self.send_init(now, out);
        }
        if let Some(n) = find_notify(p, nt::INVALID_KE_PAYLOAD) {
            let want = n
                .data
                .get(..2)
                .map(|b| u16::from_be_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)]))
                .ok_or(Error::InvalidPayload("INVALID_KE_PAYLOAD"))?;
            let group = DhGroup::from_id(want)
                .filter(|g| self.cfg.ike_suites.iter().any(|s| s.dh == *g))
                .ok_or(Error::InvalidPayload("INVALID_KE_PAYLOAD group"))?;
            if self.dh.as_ref().map(DhPrivate::group) == Some(group) {
                return Err(Error::InvalidPayload("INVALID_KE_PAYLOAD for our own group"));
            }
            self.dh = Some(DhPrivate::generate(group, rng)?);
            return self.send_init(now, out);
        }
        if let Some(ty) = first_error_notify(p) {
            self.die(down_reason_for(ty), out);
            return Err(Error::PeerError(ty));
        }
        if msg.header.spi_r == 0 {
            return Err(Error::InvalidPayload("responder SPI 0"));
        }
        let sa = find_payload!(p, Sa, "SA")?;
        let (suite, _) = accept_ike(sa, &self.cfg.ike_suites).ok_or(Error::NoProposalChosen)?;
        let ke = find_payload!(p, Ke, "KE")?;
        let nr = find_payload!(p, Nonce, "Nonce")?;
        let our_group = self.dh.as_ref().map(DhPrivate::group);
        if Some(suite.dh) != our_group || ke.group != suite.dh.id() {
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        if ke.data.len() != suite.dh.public_len() {
            return Err(Error::InvalidPayload("KE length"));
        }
        let spi_r = msg.header.spi_r;
        let nat = detect_nat(p, self.spi_i, spi_r, src, dst);
        // Validation done; from here on the SA changes.
        let dh = self.dh.take().ok_or(Error::NotEstablished)?;
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed(&self.ni, nr, &gir);
        let keys = IkeSaKeys::derive(suite.encr, &seed, &self.ni, nr, self.spi_i, spi_r)?;
        self.spi_r = spi_r;
        self.suite = suite;
        self.keys = Some(keys);
        self.nr = nr.clone();
        self.msg2 = raw.to_vec();
        self.nat = nat.any;
        self.behind_nat = nat.local;
        self.last_rx = now;
        self.pending = None;
        if nat.any {
            self.local.set_port(NAT_T_PORT);
            self.remote.set_port(NAT_T_PORT);
        }
        self.send_auth(now, rng, out)
    }

    /// Answers an IKE_SA_INIT request, creating a half-open SA. On error
    /// nothing is created; an error notify may have been queued.
    pub(crate) fn respond_init(
        cfg: Arc<SaConfig>,
        rx: &Received<'_>,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<Self> {
        let Received {
            now,
            src,
            dst,
            raw,
            msg,
        } = *rx;
        let p = &msg.payloads;
        let h = &msg.header;
        let stateless = |ty: u16, data: Vec<u8>, out: &mut Out| -> Result<()> {
            let header = Header {
                spi_i: h.spi_i,
                spi_r: 0,
                next_payload: 0,
                exchange: ExchangeType::IkeSaInit,
                flags: codec::FLAG_RESPONSE,
                message_id: 0,
                length: 0,
            };
            let bytes = encode_message(&header, &[Payload::Notify(Notify::new(ty, data))])?;
            out.push_back(Output::Send(Datagram {
                src: dst,
                dst: src,
                payload: bytes,
            }));
            Ok(())
        };
        if h.spi_i == 0 || h.spi_r != 0 || h.message_id != 0 || h.is_response() || !h.from_initiator() {
            return Err(Error::InvalidPayload("IKE_SA_INIT header"));
        }
        let sa = find_payload!(p, Sa, "SA")?;
        let ke = find_payload!(p, Ke, "KE")?;
        let ni = find_payload!(p, Nonce, "Nonce")?;
        let Some((suite, prop)) = select_ike(sa, &cfg.ike_suites) else {
            stateless(nt::NO_PROPOSAL_CHOSEN, Vec::new(), out)?;
            return Err(Error::NoProposalChosen);
        };
        if ke.group != suite.dh.id() {
            stateless(nt::INVALID_KE_PAYLOAD, suite.dh.id().to_be_bytes().to_vec(), out)?;
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        let nat = detect_nat(p, h.spi_i, 0, src, dst);
        let mut sa = Self::blank(cfg, false, dst, src, now);
        sa.state = SaState::HalfOpen;
        sa.spi_i = h.spi_i;
        sa.spi_r = random_u64_nonzero(rng)?;
        sa.suite = suite;
        sa.nat = nat.any;
        sa.behind_nat = nat.local;
        sa.nr = random_bytes(rng, NONCE_LEN)?;
        sa.ni = ni.clone();
        let dh = DhPrivate::generate(suite.dh, rng)?;
        let our_public = dh.public().to_vec();
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed(&sa.ni, &sa.nr, &gir);
        sa.keys = Some(IkeSaKeys::derive(
            suite.encr, &seed, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r,
        )?);
        let payloads = vec![
            Payload::Sa(vec![suite.to_proposal(prop.num, Vec::new())]),
            Payload::Ke(KeyExchange {
                group: suite.dh.id(),
                data: our_public,
            }),
            Payload::Nonce(sa.nr.clone()),
            Payload::Notify(Notify::new(
                nt::NAT_DETECTION_SOURCE_IP,
                nat_detection_hash(sa.spi_i, sa.spi_r, dst.ip(), dst.port()),
            )),
            Payload::Notify(Notify::new(
                nt::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(sa.spi_i, sa.spi_r, src.ip(), src.port()),
            )),
        ];
        let bytes = encode_message(&sa.header(ExchangeType::IkeSaInit, true, 0), &payloads)?;
        let d = sa.wrap(bytes.clone());
        out.push_back(Output::Send(d.clone()));
        sa.msg1 = raw.to_vec();
        sa.msg2 = bytes;
        sa.last_response = Some((0, d));
        sa.expected_mid = 1;
        Ok(sa)
    }

    /// Resends the cached IKE_SA_INIT response (a retransmitted request).
    pub(crate) fn resend_last_response(&self, out: &mut Out) {
        if let Some((_, d)) = &self.last_response {
            out.push_back(Output::Send(d.clone()));
        }
    }
}
