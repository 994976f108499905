//! Timers: retransmission, liveness, keepalives, half-open expiry.

use std::time::Instant;

use crate::codec::ExchangeType;
use crate::event::{Datagram, DownReason, Output, NAT_KEEPALIVE};
use crate::timers::Tick;

use super::{IkeSa, Out, PendingKind, SaState};

impl IkeSa {
    /// Retransmits, gives up, starts liveness checks, expires half-open SAs.
    pub(crate) fn poll_timers(&mut self, now: Instant, out: &mut Out) {
        if self.state == SaState::HalfOpen && now.saturating_duration_since(self.created) >= self.cfg.half_open_timeout
        {
            self.die(DownReason::Timeout, out);
            return;
        }
        // An old IKE SA whose Delete never came (the peer rekeyed and
        // vanished) must not linger forever.
        if let Some(at) = self.superseded_at {
            if self.pending.is_none() && now.saturating_duration_since(at) >= self.cfg.half_open_timeout {
                self.die(DownReason::Closed, out);
                return;
            }
        }
        if let Some(t) = self.keepalive_due() {
            if now >= t {
                out.push_back(Output::Send(Datagram {
                    src: self.local,
                    dst: self.remote,
                    payload: vec![NAT_KEEPALIVE],
                }));
                self.last_tx = now;
            }
        }
        if let Some(p) = self.pending.as_mut() {
            match p.timer.poll(now) {
                Tick::Idle => {}
                Tick::Retransmit => {
                    let mut d = p.datagram.clone();
                    // The peer moved meanwhile (RFC 7296 2.23): the same
                    // bytes, to where it is now. (Same local port only: the
                    // non-ESP marker depends on it.)
                    if d.src == self.local {
                        d.dst = self.remote;
                    }
                    out.push_back(Output::Send(d));
                    self.last_tx = now;
                }
                Tick::GiveUp => {
                    let reason = match self.state {
                        SaState::InitSent | SaState::AuthSent => DownReason::Timeout,
                        SaState::Deleting => DownReason::Closed,
                        _ => DownReason::PeerDead,
                    };
                    self.die(reason, out);
                }
            }
            return;
        }
        if self.state == SaState::Established && !self.superseded {
            if let Some(iv) = self.cfg.dpd_interval {
                if now.saturating_duration_since(self.last_rx) >= iv {
                    // A DPD needs no randomness: the IV is a counter.
                    if self
                        .send_request(now, ExchangeType::Informational, &[], PendingKind::Dpd, out)
                        .is_err()
                    {
                        self.die(DownReason::PeerDead, out);
                    }
                }
            }
        }
    }

    /// When the next NAT-T keepalive is due, if we send them.
    fn keepalive_due(&self) -> Option<Instant> {
        if !self.behind_nat || self.superseded || self.state != SaState::Established {
            return None;
        }
        self.cfg.nat_keepalive.and_then(|k| self.last_tx.checked_add(k))
    }

    /// The next instant at which [`IkeSa::poll_timers`] has work.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |c| c.min(x)));
            }
        };
        match self.state {
            SaState::Dead => return None,
            SaState::HalfOpen => consider(self.created.checked_add(self.cfg.half_open_timeout)),
            _ => {}
        }
        if self.pending.is_none() {
            consider(
                self.superseded_at
                    .and_then(|t| t.checked_add(self.cfg.half_open_timeout)),
            );
        }
        consider(self.keepalive_due());
        if let Some(p) = &self.pending {
            consider(Some(p.timer.deadline()));
        } else if self.state == SaState::Established && !self.superseded {
            consider(self.cfg.dpd_interval.and_then(|d| self.last_rx.checked_add(d)));
        }
        t
    }

    /// Marks the SA as replaced by a newer one from the same peer.
    pub(crate) fn replaced(&mut self, out: &mut Out) {
        self.die(DownReason::Replaced, out);
    }
}
