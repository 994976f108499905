//! The gateway side: the original initiator of the IKE SA toward one home
//! router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec::{Message, TrafficSelector};
use crate::error::Error;
use crate::event::Output;
use crate::session::{IkeSa, Queued, Received, SaConfig};
use crate::table::{strip_marker, SaTable};

/// Configuration of an [`Initiator`].
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// Our address on port 500 (its IP is also used for NAT detection).
    pub local: SocketAddr,
    /// The router's address, port 500.
    pub peer: SocketAddr,
    /// PSK, identities, suites and traffic selectors: `local_ts` is TSi
    /// (center networks), `remote_ts` is TSr (the router's VPNNAT /32s).
    pub sa: SaConfig,
}

/// IKEv2 initiator for one tunnel. Does no I/O: feed it datagrams and
/// timer ticks, drain [`Initiator::poll_output`].
#[derive(Debug)]
pub struct Initiator {
    cfg: Arc<SaConfig>,
    local: SocketAddr,
    peer: SocketAddr,
    pub(crate) table: SaTable,
}

impl Initiator {
    /// Creates an idle initiator; call [`Initiator::connect`] to start.
    pub fn new(config: InitiatorConfig) -> Self {
        Self {
            cfg: Arc::new(config.sa),
            local: config.local,
            peer: config.peer,
            table: SaTable::default(),
        }
    }

    /// Starts IKE_SA_INIT unless an IKE SA is up or being set up.
    pub fn connect(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.cfg.validate()?;
        if self.table.sas.iter().any(|s| !s.is_superseded()) {
            return Ok(());
        }
        let sa = IkeSa::start_initiator(self.cfg.clone(), self.local, self.peer, now, rng, &mut self.table.out)?;
        self.table.sas.push(sa);
        Ok(())
    }

    /// Processes one received UDP datagram (`payload` is the UDP payload as
    /// received, with the non-ESP marker if `dst` is port 4500).
    ///
    /// On `Err` the input was rejected; state is unchanged except where the
    /// error says the peer ended the attempt (then a `TunnelDown` event is
    /// queued). Outputs may be queued in either case.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<(), Error> {
        let Some(ike) = strip_marker(dst, payload)? else {
            return Ok(()); // NAT-T keepalive
        };
        if src.ip() != self.peer.ip() {
            return Err(Error::PeerNotAllowed(src.ip()));
        }
        let msg = Message::parse(ike)?;
        let rx = Received {
            now,
            src,
            dst,
            raw: ike,
            msg: &msg,
        };
        self.table.dispatch(&rx, rng).map(|_| ())
    }

    /// Runs retransmissions, liveness checks and time-outs.
    pub fn poll_timers(&mut self, now: Instant) {
        self.table.poll_timers(now);
    }

    /// When [`Initiator::poll_timers`] should be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.table.next_timeout()
    }

    /// Next datagram to send or event to act on, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.table.poll_output()
    }

    /// Whether an IKE SA is established.
    pub fn is_established(&self) -> bool {
        self.table.current_ref().is_some()
    }

    /// SPIs of the current IKE SA.
    pub fn ike_spis(&self) -> Option<(u64, u64)> {
        self.table.current_ref().map(IkeSa::spis)
    }

    /// `(inbound, outbound)` SPIs of the current CHILD SAs.
    pub fn child_sas(&self) -> Vec<(u32, u32)> {
        self.table.current_ref().map(IkeSa::child_spis).unwrap_or_default()
    }

    /// Changes the traffic selectors (e.g. after a VPNNAT address was
    /// granted or released). Existing CHILD SAs keep theirs; the change
    /// takes effect with the next [`Self::rekey_child`], which negotiates
    /// the selectors afresh.
    pub fn set_traffic_selectors(&mut self, local_ts: Vec<TrafficSelector>, remote_ts: Vec<TrafficSelector>) {
        let mut c = (*self.cfg).clone();
        c.local_ts = local_ts;
        c.remote_ts = remote_ts;
        self.cfg = Arc::new(c);
        self.table.set_config(&self.cfg);
    }

    /// The current configuration.
    pub fn config(&self) -> &SaConfig {
        &self.cfg
    }

    /// Rekeys the CHILD SA with this inbound SPI (e.g. on a kernel soft
    /// expire).
    pub fn rekey_child(&mut self, now: Instant, inbound_spi: u32, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.op(now, Queued::RekeyChild(inbound_spi), rng)
    }

    /// Rekeys the IKE SA.
    pub fn rekey_ike(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.op(now, Queued::RekeyIke, rng)
    }

    /// Deletes one CHILD SA.
    pub fn delete_child(&mut self, now: Instant, inbound_spi: u32, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.op(now, Queued::DeleteChild(inbound_spi), rng)
    }

    /// Sends a liveness check now.
    pub fn check_liveness(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.op(now, Queued::Dpd, rng)
    }

    /// Deletes the IKE SA and its CHILD SAs.
    pub fn close(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.op(now, Queued::DeleteIke, rng)
    }

    fn op(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom) -> Result<(), Error> {
        self.table.op(now, what, rng)
    }
}
