//! The gateway side: the original initiator of the IKE SA toward one home
//! router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ring::rand::SecureRandom;

use crate::codec::{Message, TrafficSelector};
use crate::endpoint::endpoint_api;
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

    endpoint_api!();
}
