//! Dispatch of a received message to its exchange: responses to our
//! outstanding request, requests from the peer.

use std::net::SocketAddr;

use ring::rand::SecureRandom;

use crate::codec::ExchangeType;
use crate::error::Error;
use crate::event::{Datagram, DownReason, NAT_T_PORT};
use crate::timers::Retransmitter;

use super::{Effects, IkeSa, Out, Pending, PendingKind, Received, Result, SaState};

fn pending_restore(message_id: u32, datagram: Datagram, timer: Retransmitter, inbound_spi: u32) -> Pending {
    Pending {
        message_id,
        datagram,
        timer,
        kind: PendingKind::Auth { inbound_spi },
    }
}

impl IkeSa {
    /// Handles a message for this SA. `rx.raw` is the IKE message without the
    /// non-ESP marker.
    pub(crate) fn handle(&mut self, rx: &Received<'_>, rng: &dyn SecureRandom, out: &mut Out) -> Result<Effects> {
        let Received { now, msg, .. } = *rx;
        // A message from the original initiator carries the I flag.
        if msg.header.from_initiator() == self.initiator {
            return Err(Error::BadFlags);
        }
        if self.state == SaState::Dead {
            return Err(Error::UnknownSa {
                spi_i: msg.header.spi_i,
                spi_r: msg.header.spi_r,
            });
        }
        let mut fx = Effects::default();
        if msg.header.is_response() {
            self.handle_response(rx, rng, out, &mut fx)?;
        } else {
            self.handle_request(rx, rng, out, &mut fx)?;
            self.last_tx = now;
        }
        self.pump(now, rng, out)?;
        Ok(fx)
    }

    fn handle_response(
        &mut self,
        rx: &Received<'_>,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let Received {
            now,
            src,
            dst,
            raw,
            msg,
        } = *rx;
        let expected = self.pending.as_ref().map(|p| p.message_id);
        if expected != Some(msg.header.message_id) {
            return Err(Error::UnexpectedMessageId {
                expected: expected.unwrap_or(self.next_mid),
                got: msg.header.message_id,
            });
        }
        let exchange_ok = match self.pending.as_ref().map(|p| &p.kind) {
            Some(PendingKind::Init) => msg.header.exchange == ExchangeType::IkeSaInit,
            Some(PendingKind::Auth { .. }) => msg.header.exchange == ExchangeType::IkeAuth,
            Some(PendingKind::RekeyChild(_) | PendingKind::RekeyIke(_)) => {
                msg.header.exchange == ExchangeType::CreateChildSa
            }
            Some(_) => msg.header.exchange == ExchangeType::Informational,
            None => false,
        };
        if !exchange_ok {
            return Err(Error::UnexpectedExchange {
                exchange: msg.header.exchange,
                what: "response",
                state: self.state.name(),
            });
        }
        if matches!(self.pending.as_ref().map(|p| &p.kind), Some(PendingKind::Init)) {
            return self.handle_init_response(rx, rng, out);
        }
        let payloads = self.open(raw, msg)?;
        let Some(pending) = self.pending.take() else {
            return Err(Error::NotEstablished);
        };
        self.last_rx = now;
        self.follow_nat(src, dst, out);
        match pending.kind {
            PendingKind::Init => Ok(()),
            PendingKind::Auth { inbound_spi } => {
                let r = self.handle_auth_response(&payloads, inbound_spi, now, rng, out);
                if r.is_err() && self.state == SaState::AuthSent {
                    // Not decided yet (malformed but authentic answer): keep
                    // waiting for a proper one.
                    self.pending = Some(pending_restore(
                        pending.message_id,
                        pending.datagram,
                        pending.timer,
                        inbound_spi,
                    ));
                }
                r
            }
            PendingKind::Dpd => Ok(()),
            PendingKind::DeleteChild { inbound_spi } => {
                self.remove_child(inbound_spi, out);
                Ok(())
            }
            PendingKind::DeleteIke => {
                self.die(DownReason::Closed, out);
                Ok(())
            }
            PendingKind::RekeyChild(rekey) => self.finish_rekey_child(&payloads, rekey, now, rng, out),
            PendingKind::RekeyIke(rekey) => self.finish_rekey_ike(&payloads, rekey, now, rng, out, fx),
        }
    }

    /// After an authenticated message on port 4500, follow the peer's NAT
    /// mapping (RFC 7296 2.23). Called only once the message verified and
    /// was not a retransmission: a forged or replayed datagram from a new
    /// address never gets here.
    fn follow_nat(&mut self, src: SocketAddr, dst: SocketAddr, out: &mut Out) {
        if dst.port() == NAT_T_PORT {
            self.local = dst;
            self.moved_to(src, out);
        }
    }

    fn handle_request(
        &mut self,
        rx: &Received<'_>,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let Received {
            now,
            src,
            dst,
            raw,
            msg,
        } = *rx;
        let mid = msg.header.message_id;
        let is_retransmit =
            matches!(&self.last_response, Some((m, _)) if *m == mid) && mid.wrapping_add(1) == self.expected_mid;
        if mid != self.expected_mid && !is_retransmit {
            return Err(Error::UnexpectedMessageId {
                expected: self.expected_mid,
                got: mid,
            });
        }
        if msg.header.exchange == ExchangeType::IkeSaInit {
            return Err(Error::UnexpectedExchange {
                exchange: msg.header.exchange,
                what: "request",
                state: self.state.name(),
            });
        }
        let payloads = self.open(raw, msg)?;
        if is_retransmit {
            // Authentic copy of a request we answered: same answer again.
            self.resend_last_response(out);
            return Ok(());
        }
        match (self.state, msg.header.exchange) {
            (SaState::HalfOpen, ExchangeType::IkeAuth) => {
                self.last_rx = now;
                self.follow_nat(src, dst, out);
                self.handle_auth_request(mid, &payloads, rng, out, fx)
            }
            (SaState::Established | SaState::Deleting, ExchangeType::Informational) => {
                self.last_rx = now;
                self.follow_nat(src, dst, out);
                self.handle_informational(mid, &payloads, out)
            }
            (SaState::Established | SaState::Deleting, ExchangeType::CreateChildSa) => {
                self.last_rx = now;
                self.follow_nat(src, dst, out);
                self.handle_create_child(now, mid, &payloads, rng, out, fx)
            }
            (state, exchange) => Err(Error::UnexpectedExchange {
                exchange,
                what: "request",
                state: state.name(),
            }),
        }
    }
}
