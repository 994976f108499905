//! The set of IKE SAs one endpoint holds, and input demultiplexing shared
//! by [`crate::Initiator`] and [`crate::Responder`].
//!
//! An endpoint holds more than one IKE SA only transiently: a half-open
//! one next to an established one (peer restarted), or an old one being
//! deleted after an IKE SA rekey.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ring::rand::SecureRandom;

use crate::error::Error;
use crate::event::{Output, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER};
use crate::session::{Effects, IkeSa, Out, Queued, Received, SaConfig, SaState};

/// Strips the non-ESP marker of datagrams received on port 4500.
/// `Ok(None)` is a NAT-T keepalive (nothing to do); ESP is not for us.
pub(crate) fn strip_marker(dst: SocketAddr, payload: &[u8]) -> Result<Option<&[u8]>, Error> {
    if dst.port() != NAT_T_PORT {
        return Ok(Some(payload));
    }
    if payload == [NAT_KEEPALIVE] {
        return Ok(None);
    }
    match (payload.get(..4), payload.get(4..)) {
        (Some(m), Some(rest)) if m == NON_ESP_MARKER => Ok(Some(rest)),
        _ => Err(Error::NotIke),
    }
}

#[derive(Debug, Default)]
pub(crate) struct SaTable {
    pub sas: Vec<IkeSa>,
    pub out: Out,
}

impl SaTable {
    /// Routes a parsed message to its SA.
    pub fn dispatch(&mut self, rx: &Received<'_>, rng: &dyn SecureRandom) -> Result<Effects, Error> {
        let Received { now, msg, .. } = *rx;
        let h = &msg.header;
        let sa = self.sas.iter_mut().find(|s| s.matches(h)).ok_or(Error::UnknownSa {
            spi_i: h.spi_i,
            spi_r: h.spi_r,
        })?;
        let r = sa.handle(rx, rng, &mut self.out);
        let fx = match r {
            Ok(mut fx) => {
                if let Some(mut new) = fx.new_sa.take() {
                    if let Some(from) = fx.adopt_children_from.take() {
                        if let Some(src) = self.sas.iter_mut().find(|s| s.spis() == from) {
                            new.adopt_children(src.surrender_children(now));
                        }
                    }
                    // Requests carried over from the old SA go out now.
                    let r = new.pump(now, rng, &mut self.out);
                    self.sas.push(new);
                    r?;
                }
                Ok(fx)
            }
            Err(e) => Err(e),
        };
        self.reap();
        fx
    }

    /// ESP-in-UDP of the CHILD SA with this inbound SPI came from `to`:
    /// its IKE SA follows (see `endpoint_api`'s `esp_moved`).
    pub fn esp_moved(&mut self, inbound_spi: u32, to: SocketAddr) -> Result<(), Error> {
        let sa = self
            .sas
            .iter_mut()
            .rev()
            .find(|s| s.state == SaState::Established && s.child_spis().iter().any(|(i, _)| *i == inbound_spi))
            .ok_or(Error::UnknownChild(inbound_spi))?;
        // Without UDP encapsulation there is no NAT mapping to follow (and
        // the kernel reports none).
        if sa.nat_detected() {
            sa.moved_to(to, &mut self.out);
        }
        Ok(())
    }

    /// Drops dead SAs.
    pub fn reap(&mut self) {
        self.sas.retain(|s| s.state != SaState::Dead);
    }

    pub fn poll_timers(&mut self, now: Instant) {
        for sa in &mut self.sas {
            sa.poll_timers(now, &mut self.out);
        }
        self.reap();
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.sas.iter().filter_map(IkeSa::next_timeout).min()
    }

    /// Runs an API operation on the newest established SA.
    pub fn op(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom) -> Result<(), Error> {
        let sa = self
            .sas
            .iter_mut()
            .rev()
            .find(|s| s.state == SaState::Established && !s.is_superseded())
            .ok_or(Error::NotEstablished)?;
        let r = sa.request(now, what, rng, &mut self.out);
        self.reap();
        r
    }

    pub fn current_ref(&self) -> Option<&IkeSa> {
        self.sas
            .iter()
            .rev()
            .find(|s| s.state == SaState::Established && !s.is_superseded())
    }

    /// Hands a new configuration to every SA.
    pub fn set_config(&mut self, cfg: &Arc<SaConfig>) {
        for sa in &mut self.sas {
            sa.set_config(cfg.clone());
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}
