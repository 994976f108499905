//! [`IkeResponder`] over the real IKEv2 driver (`vpnnat-ike-driver`).
//!
//! routerd's seam is synchronous (`&mut self`, called under the router's
//! lock), the driver is async: requests go out with
//! [`DriverHandle::request_detached`] (a refusal is logged by the driver),
//! and the driver itself is started lazily on a spawned task the first time
//! settings name a local address; settings that arrive while it starts are
//! applied once it is ready. What to ask the driver for a change of
//! settings is the pure [`requests`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vpnnat_datapath::{Ipv4Cidr, SaSpec};
use vpnnat_ike::{Secret, TrafficSelector};
use vpnnat_ike_driver::{DriverConfig, DriverError, DriverEvent, DriverHandle, IkeDriver, Request, TunnelConfig};
use vpnnat_proto::keys::SecretBytes;

use crate::ike_responder::{IkeResponder, IkeStatus, ResponderSettings};

/// What the responder needs of a running driver; implemented by
/// [`DriverHandle`] and by a recorder in tests.
pub trait DriverSink: Send + 'static {
    /// Sends a request without waiting for its answer.
    fn request(&self, r: Request) -> Result<(), DriverError>;
    /// Whether the tunnel with `peer` is up.
    fn is_up(&self, peer: Ipv4Addr) -> bool;
    /// The SAs the driver holds in the kernel.
    fn installed_sas(&self) -> Vec<SaSpec>;
    /// Stops the driver (its tunnels are deleted), without waiting.
    fn stop(self);
}

impl DriverSink for DriverHandle {
    fn request(&self, r: Request) -> Result<(), DriverError> {
        self.request_detached(r)
    }

    fn is_up(&self, peer: Ipv4Addr) -> bool {
        DriverHandle::is_up(self, peer)
    }

    fn installed_sas(&self) -> Vec<SaSpec> {
        DriverHandle::installed_sas(self)
    }

    fn stop(self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { self.shutdown().await });
        }
    }
}

/// A pending driver start.
pub type StartFuture<S> = Pin<Box<dyn Future<Output = Result<S, DriverError>> + Send>>;
/// Starts a driver for a local address.
pub type Starter<S> = Box<dyn Fn(Ipv4Addr) -> StartFuture<S> + Send + Sync>;

/// The driver for `settings`' tunnel, as the driver's API wants it.
pub fn tunnel_config(s: &ResponderSettings) -> TunnelConfig {
    let ts = |v: &[Ipv4Cidr]| {
        v.iter()
            .map(|c| TrafficSelector::subnet(c.addr(), c.prefix_len()))
            .collect()
    };
    TunnelConfig {
        peer: s.peer,
        psk: Secret::from_slice(s.psk.expose_secret()),
        local_ts: ts(&s.local_ts),
        remote_ts: ts(&s.remote_ts),
        reqid: s.reqid,
        // The identity the center named for the gateway (issue 18, item
        // 12): a peer at the gateway's address that authenticates as
        // anything else fails the exchange (AUTHENTICATION_FAILED).
        remote_id: Some(gateway_identity(&s.peer_id)),
        log_label: format!("terminal={}", s.terminal_id),
    }
}

/// The IKE identity the gateway must authenticate as: the center's
/// `gateway_ike_id` read as gatewayd reads its `ike_id`
/// ([`vpnnat_ike::Identity::from_text`]).
pub fn gateway_identity(peer_id: &str) -> vpnnat_ike::Identity {
    vpnnat_ike::Identity::from_text(peer_id)
}

/// The requests that take a driver configured with `old` to `new` (both
/// for the same local address).
///
/// A new peer, PSK or reqid needs the old tunnel deleted first (the driver
/// keeps a live tunnel's PSK on `accept`); new traffic selectors alone are
/// an `accept` (for a tunnel not up yet) plus, when they grow, a CHILD SA
/// rekey so a live tunnel uses them now (a shrink waits for the gateway's).
pub fn requests(old: Option<&ResponderSettings>, new: Option<&ResponderSettings>) -> Vec<Request> {
    if old.is_some_and(|o| o.dial_out) || new.is_some_and(|n| n.dial_out) {
        return crate::dial_out::requests(old, new);
    }
    match (old, new) {
        (None, None) => Vec::new(),
        (Some(o), None) => vec![Request::Disconnect(o.peer)],
        (None, Some(n)) => vec![Request::Accept(tunnel_config(n))],
        (Some(o), Some(n)) => {
            if o.peer != n.peer
                || o.peer_id != n.peer_id
                || o.psk.expose_secret() != n.psk.expose_secret()
                || o.reqid != n.reqid
            {
                vec![Request::Disconnect(o.peer), Request::Accept(tunnel_config(n))]
            } else if o.local_ts != n.local_ts || o.remote_ts != n.remote_ts {
                let t = tunnel_config(n);
                let (l, r) = (t.local_ts.clone(), t.remote_ts.clone());
                // Only a grant needs our rekey now (the gateway's rekey came
                // before the router knew the new address, so it was narrowed
                // to the old set). A release is narrowed by the gateway's own
                // rekey when the center removes the address there; ours at
                // the same moment would collide with it (TEMPORARY_FAILURE,
                // CHILD_SA_NOT_FOUND) and cost the commands that follow
                // through the tunnel their answers. Until then the NAT table
                // already refuses the released address.
                let grows = n.local_ts.iter().any(|c| !o.local_ts.contains(c)) || o.remote_ts != n.remote_ts;
                if grows {
                    vec![Request::Accept(t), Request::SetTrafficSelectors(n.peer, l, r)]
                } else {
                    vec![Request::Accept(t)]
                }
            } else {
                // local is not the driver's business here (another local
                // address means another driver).
                Vec::new()
            }
        }
    }
}

#[derive(Debug)]
enum Drv<S> {
    Absent,
    Starting(Ipv4Addr),
    Ready(Ipv4Addr, S),
    Failed(String),
}

#[derive(Debug)]
struct Shared<S> {
    drv: Drv<S>,
    /// The last settings given to `configure`.
    desired: Option<ResponderSettings>,
    /// What the running driver was asked for.
    applied: Option<ResponderSettings>,
    /// Bumped by every start: a start that finishes after a newer one began
    /// is discarded.
    generation: u64,
    /// After a failed start, no new attempt before this (back-off from
    /// [`RETRY_FIRST`] doubling to [`RETRY_MAX`]): every state change calls
    /// `configure`, and a driver that cannot bind must not be restarted
    /// for each of them.
    retry_at: Option<tokio::time::Instant>,
    retry_delay: Duration,
}

/// First delay before a failed driver start is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// The IKE responder of routerd on the real driver.
pub struct IkeDriverResponder<S: DriverSink = DriverHandle> {
    shared: Arc<Mutex<Shared<S>>>,
    start: Starter<S>,
}

impl<S: DriverSink> std::fmt::Debug for IkeDriverResponder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeDriverResponder").finish_non_exhaustive()
    }
}

impl IkeDriverResponder<crate::dial_out::DialOutSink> {
    /// On the kernel: ports 500/4500, XFRM SAs (needs root). Driver events
    /// are logged; a tunnel the router dialed that went down on its own is
    /// dialed again (issue 17). The router presents `terminal_id`'s
    /// identity in both modes.
    pub fn kernel(terminal_id: &vpnnat_proto::types::TerminalId) -> Self {
        let identity = crate::dial_out::identity(terminal_id);
        Self::with_starter(Box::new(move |local| {
            let identity = identity.clone();
            Box::pin(async move {
                let mut cfg = DriverConfig::new(local);
                cfg.identity = identity;
                let (drv, mut events) = IkeDriver::start_kernel(cfg).await?;
                let sink = crate::dial_out::DialOutSink {
                    drv,
                    wanted: Arc::default(),
                };
                let watcher = sink.clone();
                tokio::spawn(async move {
                    while let Some(ev) = events.recv().await {
                        log_event(&ev);
                        crate::dial_out::redial_on(&ev, &watcher);
                    }
                });
                Ok(sink)
            })
        }))
    }
}

fn log_event(ev: &DriverEvent) {
    match ev {
        DriverEvent::TunnelUp { peer, nat } => log::info!("IKE: tunnel with {peer} up (NAT: {nat})"),
        DriverEvent::TunnelDown { peer, reason } => log::info!("IKE: tunnel with {peer} down: {reason:?}"),
        DriverEvent::Rejected { from, error } if *error == vpnnat_ike::Error::IdentityMismatch.to_string() => {
            log::warn!(
                "IKE: {from} did not authenticate as the gateway identity the center named: exchange refused ({error})"
            )
        }
        DriverEvent::Rejected { from, error } => log::debug!("IKE: rejected a datagram from {from}: {error}"),
        DriverEvent::KernelError { sa, error } => log::warn!("IKE: the kernel refused {sa:?}: {error}"),
        DriverEvent::RekeyFailed { peer, child } => log::warn!("IKE: rekey with {peer} failed ({child:?})"),
        other => log::debug!("IKE: {other:?}"),
    }
}

impl<S: DriverSink> IkeDriverResponder<S> {
    /// With this way of starting a driver (a fake in tests).
    pub fn with_starter(start: Starter<S>) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                drv: Drv::Absent,
                desired: None,
                applied: None,
                generation: 0,
                retry_at: None,
                retry_delay: Duration::ZERO,
            })),
            start,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<S>> {
        // The state stays consistent even if a holder panicked: every
        // update is a plain assignment.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_start(&self, sh: &mut Shared<S>, local: Ipv4Addr) {
        sh.generation = sh.generation.wrapping_add(1);
        sh.applied = None;
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt,
            Err(_) => {
                sh.drv = Drv::Failed("no async runtime to start the IKE driver in".into());
                return;
            }
        };
        sh.drv = Drv::Starting(local);
        let generation = sh.generation;
        let fut = (self.start)(local);
        let shared = Arc::clone(&self.shared);
        rt.spawn(async move {
            let res = fut.await;
            let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            if sh.generation != generation {
                if let Ok(drv) = res {
                    drv.stop();
                }
                return;
            }
            match res {
                Ok(drv) => {
                    log::info!("IKE driver listening on {local}");
                    sh.retry_at = None;
                    sh.retry_delay = Duration::ZERO;
                    let desired = sh.desired.clone();
                    send(&drv, requests(None, desired.as_ref()));
                    sh.applied = desired;
                    sh.drv = Drv::Ready(local, drv);
                }
                Err(e) => {
                    sh.retry_delay = sh.retry_delay.saturating_mul(2).clamp(RETRY_FIRST, RETRY_MAX);
                    // At most RETRY_MAX ahead, which cannot overflow; were it
                    // to, retrying at once beats never retrying.
                    let now = tokio::time::Instant::now();
                    sh.retry_at = Some(now.checked_add(sh.retry_delay).unwrap_or(now));
                    log::warn!(
                        "IKE driver on {local} not started: {e}; next attempt in {} s",
                        sh.retry_delay.as_secs()
                    );
                    sh.drv = Drv::Failed(e.to_string());
                }
            }
        });
    }
}

fn send<S: DriverSink>(drv: &S, reqs: Vec<Request>) {
    for r in reqs {
        if let Err(e) = drv.request(r) {
            log::warn!("IKE driver request not sent: {e}");
        }
    }
}

impl<S: DriverSink> IkeResponder for IkeDriverResponder<S> {
    fn configure(&mut self, settings: Option<ResponderSettings>) {
        let mut guard = self.lock();
        let sh = &mut *guard;
        sh.desired = settings;
        let Some(local) = sh.desired.as_ref().map(|s| s.local) else {
            if let Drv::Ready(_, drv) = &sh.drv {
                send(drv, requests(sh.applied.as_ref(), None));
                sh.applied = None;
            }
            return;
        };
        let restart = match &sh.drv {
            Drv::Absent => true,
            Drv::Failed(_) => sh.retry_at.is_none_or(|t| tokio::time::Instant::now() >= t),
            Drv::Starting(l) | Drv::Ready(l, _) => *l != local,
        };
        if restart {
            if let Drv::Ready(_, old) = std::mem::replace(&mut sh.drv, Drv::Absent) {
                old.stop();
            }
            self.spawn_start(sh, local);
            return;
        }
        if let Drv::Ready(_, drv) = &sh.drv {
            send(drv, requests(sh.applied.as_ref(), sh.desired.as_ref()));
            sh.applied = sh.desired.clone();
        }
    }

    fn status(&self) -> IkeStatus {
        let sh = self.lock();
        let Some(s) = &sh.desired else {
            return IkeStatus::Unconfigured;
        };
        match &sh.drv {
            Drv::Failed(why) => IkeStatus::Failed(why.clone()),
            Drv::Ready(_, drv) if drv.is_up(s.peer) => IkeStatus::Established,
            _ => IkeStatus::Listening,
        }
    }

    fn installed_sas(&self) -> Vec<SaSpec> {
        match &self.lock().drv {
            Drv::Ready(_, drv) => drv.installed_sas(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
