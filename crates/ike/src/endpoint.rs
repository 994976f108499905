//! The API an [`Initiator`](crate::Initiator) and a
//! [`Responder`](crate::Responder) share: timers, output, the current IKE
//! SA, and the operations on it. Written once here and expanded into both
//! (each has a `cfg: Arc<SaConfig>` and a `table: SaTable`), so the two
//! roles keep inherent methods (callers import nothing) with one text and
//! one behaviour. The names inside resolve where the macro is expanded:
//! `initiator.rs` and `responder.rs` import them.

/// Expands to the shared methods inside `impl Initiator` / `impl Responder`.
macro_rules! endpoint_api {
    () => {
        /// Runs retransmissions, liveness checks and time-outs.
        pub fn poll_timers(&mut self, now: Instant) {
            self.table.poll_timers(now);
        }

        /// When [`Self::poll_timers`] should be called next.
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
            self.table
                .current_ref()
                .map(IkeSa::child_spis)
                .unwrap_or_default()
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

        /// Rekeys the IKE SA (we become the original initiator of the new one).
        pub fn rekey_ike(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
            self.op(now, Queued::RekeyIke, rng)
        }

        /// Deletes one CHILD SA.
        pub fn delete_child(&mut self, now: Instant, inbound_spi: u32, rng: &dyn SecureRandom) -> Result<(), Error> {
            self.op(now, Queued::DeleteChild(inbound_spi), rng)
        }

        /// The kernel saw ESP-in-UDP of the CHILD SA with this inbound SPI
        /// arrive from `to` (the port as the core sees it), not from where
        /// the peer was: an XFRM mapping event, which the kernel sends
        /// only for a packet that authenticated and passed the replay
        /// window. The peer's NAT moved it (RFC 7296 2.23, RFC 3948): IKE
        /// goes to `to` from now on and [`crate::Event::PeerMoved`] says which
        /// kernel SAs to move. Nothing happens if it is there already.
        pub fn esp_moved(&mut self, inbound_spi: u32, to: std::net::SocketAddr) -> Result<(), Error> {
            self.table.esp_moved(inbound_spi, to)
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
    };
}

pub(crate) use endpoint_api;
