//! The driver task: one per local address, serving every tunnel of it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::SystemRandom;
use tokio::sync::{mpsc, oneshot};
use vpnnat_datapath::{Encap, SaId, SaKey, SaSpec};
use vpnnat_ike::event::{IKE_PORT, NAT_T_PORT};
use vpnnat_ike::{
    ChildSa, DownReason, Event, Initiator, InitiatorConfig, Output, Responder, ResponderConfig, SaConfig, SpiSource,
};

use crate::drop_log::{DropLog, Sender};
use crate::kernel::{
    spawn_expire_thread, spawn_kernel_thread, with_shared, Expire, KernelNote, KernelOp, SaInstaller, SharedState,
    SpiAllocator,
};
use crate::net::{Ports, Sockets};
use crate::{Cmd, DriverConfig, DriverError, DriverEvent, DriverHandle, TunnelConfig};

mod dial_in;
mod rebind;
pub use dial_in::{DialInConfig, ReqidOf};

const MAX_DATAGRAM: usize = 65_535;

/// SPIs reserved in the kernel (larval SAs) and not installed yet, per peer.
type Larval = Arc<Mutex<HashMap<Ipv4Addr, BTreeSet<u32>>>>;

/// The core's [`SpiSource`] for one tunnel: the driver's allocator, with
/// the tunnel's reqid; remembers each reservation until it is installed or
/// released.
#[derive(Debug)]
struct TunnelSpis {
    alloc: Arc<dyn SpiAllocator>,
    reqid: u32,
    peer: Ipv4Addr,
    larval: Larval,
}

impl SpiSource for TunnelSpis {
    fn inbound_spi(&self, local: IpAddr, remote: IpAddr) -> Result<u32, String> {
        let (IpAddr::V4(local), IpAddr::V4(remote)) = (local, remote) else {
            return Err("IPv4 only".into());
        };
        let spi = self
            .alloc
            .alloc_spi(remote, local, self.reqid)
            .map_err(|e| e.to_string())?;
        if let Ok(mut l) = self.larval.lock() {
            l.entry(self.peer).or_default().insert(spi);
        }
        log::debug!("reserved inbound SPI {spi:#010x} {remote} -> {local}");
        Ok(spi)
    }
}

#[derive(Debug)]
enum Core {
    Init(Initiator),
    Resp(Box<Responder>),
}

impl Core {
    fn role(&self) -> &'static str {
        match self {
            Core::Init(_) => "initiator",
            Core::Resp(_) => "responder",
        }
    }
    fn handle(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        p: &[u8],
        rng: &SystemRandom,
    ) -> Result<(), vpnnat_ike::Error> {
        match self {
            Core::Init(c) => c.handle_datagram(now, src, dst, p, rng),
            Core::Resp(c) => c.handle_datagram(now, src, dst, p, rng),
        }
    }
    fn poll_timers(&mut self, now: Instant) {
        match self {
            Core::Init(c) => c.poll_timers(now),
            Core::Resp(c) => c.poll_timers(now),
        }
    }
    fn next_timeout(&self) -> Option<Instant> {
        match self {
            Core::Init(c) => c.next_timeout(),
            Core::Resp(c) => c.next_timeout(),
        }
    }
    fn poll_output(&mut self) -> Option<Output> {
        match self {
            Core::Init(c) => c.poll_output(),
            Core::Resp(c) => c.poll_output(),
        }
    }
    fn is_established(&self) -> bool {
        match self {
            Core::Init(c) => c.is_established(),
            Core::Resp(c) => c.is_established(),
        }
    }
    fn child_sas(&self) -> Vec<(u32, u32)> {
        match self {
            Core::Init(c) => c.child_sas(),
            Core::Resp(c) => c.child_sas(),
        }
    }
    fn set_ts(&mut self, l: Vec<vpnnat_ike::TrafficSelector>, r: Vec<vpnnat_ike::TrafficSelector>) {
        match self {
            Core::Init(c) => c.set_traffic_selectors(l, r),
            Core::Resp(c) => c.set_traffic_selectors(l, r),
        }
    }
    fn rekey_child(&mut self, now: Instant, spi: u32, rng: &SystemRandom) -> Result<(), vpnnat_ike::Error> {
        match self {
            Core::Init(c) => c.rekey_child(now, spi, rng),
            Core::Resp(c) => c.rekey_child(now, spi, rng),
        }
    }
    fn delete_child(&mut self, now: Instant, spi: u32, rng: &SystemRandom) -> Result<(), vpnnat_ike::Error> {
        match self {
            Core::Init(c) => c.delete_child(now, spi, rng),
            Core::Resp(c) => c.delete_child(now, spi, rng),
        }
    }
    fn rekey_ike(&mut self, now: Instant, rng: &SystemRandom) -> Result<(), vpnnat_ike::Error> {
        match self {
            Core::Init(c) => c.rekey_ike(now, rng),
            Core::Resp(c) => c.rekey_ike(now, rng),
        }
    }
    fn close(&mut self, now: Instant, rng: &SystemRandom) -> Result<(), vpnnat_ike::Error> {
        match self {
            Core::Init(c) => c.close(now, rng),
            Core::Resp(c) => c.close(now, rng),
        }
    }
}

/// A CHILD SA pair the driver put into the kernel.
#[derive(Debug)]
struct Child {
    outbound: SaId,
    inbound: SaId,
    /// The outbound SA waiting for `ChildSaOutbound` (make before break).
    pending_out: Option<Box<SaSpec>>,
}

#[derive(Debug)]
struct Tunnel {
    core: Core,
    reqid: u32,
    children: HashMap<u32, Child>,
    /// Forget the tunnel once it is down (after `disconnect`).
    forget_when_down: bool,
    next_ike_rekey: Option<Instant>,
    /// Went down while `forget_when_down`: removed after the drain.
    gone: bool,
    /// `connect` arrived while our DELETE was in flight: start afresh with
    /// this configuration once the old IKE SA is down.
    reconnect: Option<(InitiatorConfig, u32)>,
    /// The IKE SA went down and `reconnect` is set: restart after the drain.
    restart: bool,
    /// Our DELETE of the IKE SA is in flight (the core no longer counts
    /// the SA as established, but its SAs are still in the kernel).
    closing: bool,
}

/// What goes in front of a log line about `peer`'s tunnel: the owner's
/// label (e.g. `terminal=home-1`, the daemons' greppable convention) and a
/// space, or nothing for a peer without one.
struct Tag<'a>(Option<&'a String>);

impl std::fmt::Display for Tag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(l) if !l.is_empty() => write!(f, "{l} "),
            _ => Ok(()),
        }
    }
}

fn tag(labels: &HashMap<Ipv4Addr, String>, peer: Ipv4Addr) -> Tag<'_> {
    Tag(labels.get(&peer))
}

struct Driver {
    cfg: DriverConfig,
    socks: Sockets,
    rng: SystemRandom,
    tunnels: HashMap<Ipv4Addr, Tunnel>,
    /// `TunnelConfig::log_label` of each peer, for the log lines.
    labels: HashMap<Ipv4Addr, String>,
    kernel: std_mpsc::Sender<KernelOp>,
    events: mpsc::UnboundedSender<DriverEvent>,
    shared: SharedState,
    spis: Option<Arc<dyn SpiAllocator>>,
    larval: Larval,
    shutting_down: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    /// Routers that dial in, by identity (issue 17).
    listener: Option<dial_in::Listener>,
    /// Dropped datagrams, logged as one line per interval.
    drops: DropLog,
}

pub(crate) fn start(
    cfg: DriverConfig,
    installer: Box<dyn SaInstaller>,
    spis: Option<Arc<dyn SpiAllocator>>,
) -> Result<(DriverHandle, mpsc::UnboundedReceiver<DriverEvent>), DriverError> {
    let socks = Sockets::bind(cfg.local, cfg.ports)?;
    let local = socks.ike.local_addr().map_err(DriverError::Io)?;
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let shared = SharedState::default();
    let kernel = spawn_kernel_thread(installer, ev_tx.clone(), shared.clone()).map_err(DriverError::Io)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (exp_tx, exp_rx) = mpsc::unbounded_channel();
    if cfg.kernel_events {
        spawn_expire_thread(exp_tx)?;
    }
    let drops = DropLog::new(cfg.drop_log_interval);
    let d = Driver {
        cfg,
        socks,
        rng: SystemRandom::new(),
        tunnels: HashMap::new(),
        labels: HashMap::new(),
        kernel,
        events: ev_tx,
        shared: shared.clone(),
        spis,
        larval: Larval::default(),
        shutting_down: None,
        listener: None,
        drops,
    };
    tokio::spawn(d.run(cmd_rx, exp_rx));
    Ok((
        DriverHandle {
            tx: cmd_tx,
            local,
            shared,
        },
        ev_rx,
    ))
}

fn v4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a.ip() {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, mut expires: mpsc::UnboundedReceiver<KernelNote>) {
        let mut buf_ike = vec![0u8; MAX_DATAGRAM];
        let mut buf_natt = vec![0u8; MAX_DATAGRAM];
        log::info!(
            "IKE driver on {} (ports {}/{})",
            self.cfg.local,
            self.cfg.ports.ike,
            self.cfg.ports.natt
        );
        loop {
            let deadline = self.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = self.socks.ike.recv_from(&mut buf_ike) => match r {
                    Ok((n, src)) => {
                        let payload = buf_ike.get(..n).unwrap_or_default().to_vec();
                        self.on_datagram(src, IKE_PORT, &payload).await;
                    }
                    Err(e) => log::warn!("receiving on the IKE socket: {e}"),
                },
                r = self.socks.natt.recv_from(&mut buf_natt) => match r {
                    Ok((n, src)) => {
                        let payload = buf_natt.get(..n).unwrap_or_default().to_vec();
                        self.on_datagram(src, NAT_T_PORT, &payload).await;
                    }
                    Err(e) => log::warn!("receiving on the NAT-T socket: {e}"),
                },
                c = cmds.recv() => match c {
                    Some(c) => self.on_cmd(c).await,
                    None => {
                        // Every handle is gone: stop like a shutdown.
                        if self.shutting_down.is_none() {
                            self.begin_shutdown(Vec::new()).await;
                        }
                    }
                },
                Some(e) = expires.recv() => match e {
                    KernelNote::Expire(e) => self.on_expire(e).await,
                    KernelNote::Mapping(m) => self.on_mapping(m).await,
                },
                () = sleep => self.on_timers().await,
            }
            if let Some((until, _)) = &self.shutting_down {
                let idle = self
                    .tunnels
                    .values()
                    .all(|t| t.children.is_empty() && !t.core.is_established())
                    && self.listener.as_ref().is_none_or(|l| l.idle());
                if idle || Instant::now() >= *until {
                    self.finish_shutdown().await;
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.shutting_down.as_ref().map(|(u, _)| *u);
        if let Some(x) = self.drops.next_deadline() {
            d = Some(d.map_or(x, |d| d.min(x)));
        }
        if let Some(x) = self.listener.as_ref().and_then(|l| l.next_timeout()) {
            d = Some(d.map_or(x, |d| d.min(x)));
        }
        for t in self.tunnels.values() {
            for x in [t.core.next_timeout(), t.next_ike_rekey].into_iter().flatten() {
                d = Some(d.map_or(x, |d| d.min(x)));
            }
        }
        d
    }

    fn local_core(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.cfg.local, port))
    }

    async fn on_datagram(&mut self, src_wire: SocketAddr, local_port: u16, payload: &[u8]) {
        let now = Instant::now();
        let src = self.cfg.ports.addr_to_core(src_wire);
        let dst = self.local_core(local_port);
        let Some(peer) = v4(src) else { return };
        if !self.tunnels.contains_key(&peer) && self.listener.is_some() {
            self.on_dial_in(src_wire, src, dst, payload).await;
            return;
        }
        if !self.tunnels.contains_key(&peer) {
            self.dropped(now, Sender::Unknown, "not a configured peer", "", src_wire);
            self.rejected(DriverEvent::Rejected {
                from: src.ip(),
                error: vpnnat_ike::Error::PeerNotAllowed(src.ip()).to_string(),
            });
            return;
        }
        let reserved_before = self.larval_of(peer);
        let Some(t) = self.tunnels.get_mut(&peer) else { return };
        if let Err(e) = t.core.handle(now, src, dst, payload, &self.rng) {
            // SPIs reserved while handling a datagram that was rejected.
            let fresh: Vec<u32> = self.larval_of(peer).difference(&reserved_before).copied().collect();
            self.release_larval(peer, Some(&fresh));
            if e == vpnnat_ike::Error::NotIke {
                self.dropped(now, Sender::Unknown, "non-IKE on the NAT-T port", "", src_wire);
            } else {
                self.dropped(now, Sender::Peer, "rejected", crate::drop_log::kind(&e), src_wire);
                self.rejected(DriverEvent::Rejected {
                    from: src.ip(),
                    error: e.to_string(),
                });
            }
        }
        self.drain(peer).await;
    }

    /// Counts a dropped datagram; writes the summary line when one is due.
    fn dropped(&mut self, now: Instant, sender: Sender, what: &'static str, kind: &'static str, from: SocketAddr) {
        if let Some(line) = self.drops.record(now, sender, what, kind, from) {
            log::log!(line.level, "{line}");
        }
    }

    /// Sends a rejection event to the owner if the interval's allowance
    /// has room (right after [`Driver::dropped`] counted the drop); else it
    /// is only counted in the summary line.
    fn rejected(&mut self, ev: DriverEvent) {
        if self.drops.event() {
            let _ = self.events.send(ev);
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(line) = self.drops.poll(now) {
            log::log!(line.level, "{line}");
        }
        let peers: Vec<Ipv4Addr> = self.tunnels.keys().copied().collect();
        for peer in peers {
            let Some(t) = self.tunnels.get_mut(&peer) else { continue };
            if t.core.next_timeout().is_some_and(|d| d <= now) {
                t.core.poll_timers(now);
            }
            if t.next_ike_rekey.is_some_and(|d| d <= now) {
                t.next_ike_rekey = self.cfg.ike_rekey_interval.map(|i| now + i);
                if let Err(e) = t.core.rekey_ike(now, &self.rng) {
                    log::warn!("{}IKE SA rekey with {peer}: {e}", tag(&self.labels, peer));
                }
            }
            self.drain(peer).await;
        }
        self.listener_timers().await;
    }

    async fn on_expire(&mut self, e: Expire) {
        if self.listener_expire(&e).await {
            return;
        }
        let now = Instant::now();
        let found = self.tunnels.iter_mut().find_map(|(peer, t)| {
            t.children
                .iter()
                .find(|(_, c)| c.inbound == e.id || c.outbound == e.id)
                .map(|(spi, _)| (*peer, *spi))
        });
        let Some((peer, spi)) = found else { return };
        let Some(t) = self.tunnels.get_mut(&peer) else { return };
        let r = if e.hard {
            log::info!(
                "{}{} hard-expired: deleting the CHILD SA with {peer}",
                tag(&self.labels, peer),
                e.id
            );
            t.core.delete_child(now, spi, &self.rng)
        } else {
            log::info!(
                "{}{} soft-expired: rekeying the CHILD SA with {peer}",
                tag(&self.labels, peer),
                e.id
            );
            t.core.rekey_child(now, spi, &self.rng)
        };
        if let Err(err) = r {
            log::warn!("acting on the expire of {}: {err}", e.id);
        }
        self.drain(peer).await;
    }

    fn sa_config(&self, t: &TunnelConfig) -> SaConfig {
        let mut sa = SaConfig::new(
            t.psk.clone(),
            self.cfg.identity.clone(),
            t.local_ts.clone(),
            t.remote_ts.clone(),
        );
        sa.remote_id = t.remote_id.clone();
        sa.dpd_interval = self.cfg.dpd_interval;
        sa.spi_source = self.spis.as_ref().map(|alloc| {
            Arc::new(TunnelSpis {
                alloc: alloc.clone(),
                reqid: t.reqid,
                peer: t.peer,
                larval: self.larval.clone(),
            }) as Arc<dyn SpiSource>
        });
        sa
    }

    async fn on_cmd(&mut self, c: Cmd) {
        let now = Instant::now();
        match c {
            Cmd::Connect(t, reply) => {
                let peer = t.peer;
                let r = self.connect(now, t);
                let _ = reply.send(r);
                self.drain(peer).await;
            }
            Cmd::Accept(t, reply) => {
                let r = self.accept(now, t);
                let _ = reply.send(r);
            }
            Cmd::Disconnect(peer, reply) => {
                let r = match self.tunnels.get_mut(&peer) {
                    None => Err(DriverError::UnknownPeer(peer)),
                    Some(t) => {
                        t.forget_when_down = true;
                        t.reconnect = None;
                        if t.closing {
                            // The DELETE is in flight: its end forgets it.
                            Ok(())
                        } else if t.core.is_established() {
                            let r = t.core.close(now, &self.rng).map_err(DriverError::from);
                            t.closing = r.is_ok();
                            r
                        } else {
                            // Nothing up (or only half-open): forget it now.
                            self.remove_tunnel(peer, None);
                            Ok(())
                        }
                    }
                };
                let _ = reply.send(r);
                self.drain(peer).await;
            }
            Cmd::Restart(t, reply) => {
                let peer = t.peer;
                let r = self.restart(now, t);
                let _ = reply.send(r);
                self.drain(peer).await;
            }
            Cmd::SetTs(peer, l, r, reply) => {
                let res = self.with_tunnel(peer, |t, rng| {
                    t.core.set_ts(l, r);
                    for (inb, _) in t.core.child_sas() {
                        t.core.rekey_child(now, inb, rng)?;
                    }
                    Ok(())
                });
                let _ = reply.send(res);
                self.drain(peer).await;
            }
            Cmd::RekeyChild(peer, reply) => {
                let res = self.with_tunnel(peer, |t, rng| {
                    for (inb, _) in t.core.child_sas() {
                        t.core.rekey_child(now, inb, rng)?;
                    }
                    Ok(())
                });
                let _ = reply.send(res);
                self.drain(peer).await;
            }
            Cmd::RekeyIke(peer, reply) => {
                let res = self.with_tunnel(peer, |t, rng| Ok(t.core.rekey_ike(now, rng)?));
                let _ = reply.send(res);
                self.drain(peer).await;
            }
            Cmd::Listen(c, reply) => {
                let _ = reply.send(self.listen(now, c));
            }
            Cmd::Refresh(id, reply) => {
                let r = self.refresh(&id).await;
                let _ = reply.send(r);
            }
            Cmd::HangUp(id, reply) => {
                let r = self.hang_up(&id).await;
                let _ = reply.send(r);
            }
            Cmd::Expired(e) => self.on_expire(e).await,
            Cmd::Mapped(m) => self.on_mapping(m).await,
            Cmd::Shutdown(done) => match &mut self.shutting_down {
                Some((_, waiters)) => waiters.push(done),
                None => self.begin_shutdown(vec![done]).await,
            },
        }
    }

    fn with_tunnel(
        &mut self,
        peer: Ipv4Addr,
        f: impl FnOnce(&mut Tunnel, &SystemRandom) -> Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        let t = self.tunnels.get_mut(&peer).ok_or(DriverError::UnknownPeer(peer))?;
        f(t, &self.rng)
    }

    fn connect(&mut self, now: Instant, t: TunnelConfig) -> Result<(), DriverError> {
        let peer = t.peer;
        self.labels.insert(peer, t.log_label.clone());
        let sa = self.sa_config(&t);
        sa.validate()?;
        let icfg = self.initiator_config(peer, sa);
        match self.tunnels.get_mut(&peer) {
            Some(existing) => {
                let Core::Init(init) = &mut existing.core else {
                    return Err(DriverError::WrongRole(peer, existing.core.role()));
                };
                if existing.closing {
                    // Our DELETE is in flight (disconnect, then connect
                    // again): a new IKE SA once the old one is down.
                    existing.forget_when_down = false;
                    existing.reconnect = Some((icfg, t.reqid));
                    log::info!(
                        "{}reconnecting to {peer} once the closing IKE SA is down",
                        tag(&self.labels, peer)
                    );
                    return Ok(());
                }
                existing.forget_when_down = false;
                if !init.is_established() {
                    // Not up: take the new settings for the next attempt.
                    *init = Initiator::new(icfg);
                    existing.reqid = t.reqid;
                }
                Ok(init.connect(now, &self.rng)?)
            }
            None => {
                let mut init = Initiator::new(icfg);
                init.connect(now, &self.rng)?;
                self.tunnels.insert(
                    peer,
                    Tunnel {
                        core: Core::Init(init),
                        reqid: t.reqid,
                        children: HashMap::new(),
                        forget_when_down: false,
                        next_ike_rekey: None,
                        gone: false,
                        reconnect: None,
                        restart: false,
                        closing: false,
                    },
                );
                log::info!(
                    "{}initiating IKE with {peer} (reqid {:#x})",
                    tag(&self.labels, peer),
                    t.reqid
                );
                Ok(())
            }
        }
    }

    /// [`DriverHandle::restart`]: forget the tunnel (its SAs leave the
    /// kernel, no DELETE is sent), then connect afresh.
    fn restart(&mut self, now: Instant, t: TunnelConfig) -> Result<(), DriverError> {
        let peer = t.peer;
        if let Some(existing) = self.tunnels.get(&peer) {
            if let Core::Resp(_) = existing.core {
                return Err(DriverError::WrongRole(peer, existing.core.role()));
            }
            // Validated before anything is dropped: a bad configuration
            // must not cost the peer the tunnel it has.
            self.sa_config(&t).validate()?;
            log::info!(
                "{}{peer} lost its IKE state: dropping our IKE SA without DELETE, starting afresh",
                tag(&self.labels, peer)
            );
            self.remove_tunnel(peer, Some(DownReason::Restarted));
        }
        self.connect(now, t)
    }

    fn initiator_config(&self, peer: Ipv4Addr, sa: SaConfig) -> InitiatorConfig {
        InitiatorConfig {
            local: self.local_core(IKE_PORT),
            peer: SocketAddr::V4(SocketAddrV4::new(peer, IKE_PORT)),
            sa,
        }
    }

    fn accept(&mut self, now: Instant, t: TunnelConfig) -> Result<(), DriverError> {
        let peer = t.peer;
        self.labels.insert(peer, t.log_label.clone());
        let sa = self.sa_config(&t);
        sa.validate()?;
        match self.tunnels.get_mut(&peer) {
            Some(existing) => {
                let Core::Resp(resp) = &mut existing.core else {
                    return Err(DriverError::WrongRole(peer, existing.core.role()));
                };
                existing.forget_when_down = false;
                if resp.is_established() {
                    resp.set_traffic_selectors(t.local_ts, t.remote_ts);
                } else {
                    **resp = Responder::new(ResponderConfig::new(IpAddr::V4(peer), sa), now, &self.rng)?;
                    existing.reqid = t.reqid;
                }
                Ok(())
            }
            None => {
                let resp = Responder::new(ResponderConfig::new(IpAddr::V4(peer), sa), now, &self.rng)?;
                self.tunnels.insert(
                    peer,
                    Tunnel {
                        core: Core::Resp(Box::new(resp)),
                        reqid: t.reqid,
                        children: HashMap::new(),
                        forget_when_down: false,
                        next_ike_rekey: None,
                        gone: false,
                        reconnect: None,
                        restart: false,
                        closing: false,
                    },
                );
                log::info!(
                    "{}accepting IKE from {peer} (reqid {:#x})",
                    tag(&self.labels, peer),
                    t.reqid
                );
                Ok(())
            }
        }
    }

    async fn begin_shutdown(&mut self, waiters: Vec<oneshot::Sender<()>>) {
        let now = Instant::now();
        self.shutting_down = Some((now + self.cfg.shutdown_grace, waiters));
        self.close_listener(now);
        self.drain_listener().await;
        let peers: Vec<Ipv4Addr> = self.tunnels.keys().copied().collect();
        for peer in peers {
            if let Some(t) = self.tunnels.get_mut(&peer) {
                t.forget_when_down = true;
                t.reconnect = None;
                if t.core.is_established() {
                    match t.core.close(now, &self.rng) {
                        Ok(()) => t.closing = true,
                        Err(e) => log::warn!("{}closing the tunnel with {peer}: {e}", tag(&self.labels, peer)),
                    }
                }
            }
            self.drain(peer).await;
        }
    }

    /// Removes what is left in the kernel and answers the shutdown callers
    /// once the kernel thread has done it.
    async fn finish_shutdown(&mut self) {
        let peers: Vec<Ipv4Addr> = self.tunnels.keys().copied().collect();
        for peer in peers {
            self.remove_tunnel(peer, Some(DownReason::Closed));
        }
        self.remove_listener();
        let (tx, rx) = oneshot::channel();
        self.kernel_op(KernelOp::Barrier(tx));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        if let Some((_, waiters)) = self.shutting_down.take() {
            for w in waiters {
                let _ = w.send(());
            }
        }
        log::info!("IKE driver on {} stopped", self.cfg.local);
    }

    /// Deletes the tunnel's SAs from the kernel and forgets it.
    fn remove_tunnel(&mut self, peer: Ipv4Addr, report: Option<DownReason>) {
        let Some(t) = self.tunnels.remove(&peer) else { return };
        with_shared(&self.shared, |s| {
            s.ike.remove(&peer);
        });
        self.release_larval(peer, None);
        let had_sas = !t.children.is_empty();
        for (_, c) in t.children {
            self.kernel_op(KernelOp::Delete(c.inbound));
            if c.pending_out.is_none() {
                self.kernel_op(KernelOp::Delete(c.outbound));
            }
        }
        if let (Some(reason), true) = (report, had_sas) {
            self.kernel_op(KernelOp::Notify(DriverEvent::TunnelDown { peer, reason }));
        }
    }

    fn larval_of(&self, peer: Ipv4Addr) -> BTreeSet<u32> {
        self.larval
            .lock()
            .ok()
            .and_then(|l| l.get(&peer).cloned())
            .unwrap_or_default()
    }

    /// Deletes reserved, never installed SPIs of `peer` (`only` these, or
    /// all of them).
    fn release_larval(&self, peer: Ipv4Addr, only: Option<&[u32]>) {
        let gone: Vec<u32> = match self.larval.lock() {
            Ok(mut l) => match (l.get_mut(&peer), only) {
                (None, _) => Vec::new(),
                (Some(set), None) => std::mem::take(set).into_iter().collect(),
                (Some(set), Some(these)) => these.iter().filter(|s| set.remove(s)).copied().collect(),
            },
            Err(_) => Vec::new(),
        };
        for spi in gone {
            log::debug!(
                "{}releasing unused inbound SPI {spi:#010x} from {peer}",
                tag(&self.labels, peer)
            );
            self.kernel_op(KernelOp::Delete(SaId {
                dst: self.cfg.local,
                spi,
            }));
        }
    }

    /// Whether this inbound SPI was reserved (then it is installed by
    /// completing the larval SA).
    fn take_larval(&self, peer: Ipv4Addr, spi: u32) -> bool {
        self.larval
            .lock()
            .is_ok_and(|mut l| l.get_mut(&peer).is_some_and(|s| s.remove(&spi)))
    }

    fn kernel_op(&self, op: KernelOp) {
        if self.kernel.send(op).is_err() {
            log::error!("the XFRM thread has stopped");
        }
    }

    /// Sends what the core of `peer` produced and acts on its events.
    async fn drain(&mut self, peer: Ipv4Addr) {
        loop {
            let Some(t) = self.tunnels.get_mut(&peer) else { return };
            let Some(out) = t.core.poll_output() else {
                if t.gone {
                    self.tunnels.remove(&peer);
                    return;
                }
                if std::mem::take(&mut t.restart) {
                    if let Some((icfg, reqid)) = t.reconnect.take() {
                        let mut init = Initiator::new(icfg);
                        match init.connect(Instant::now(), &self.rng) {
                            Ok(()) => {
                                log::info!(
                                    "{}initiating IKE with {peer} again (reqid {reqid:#x})",
                                    tag(&self.labels, peer)
                                );
                                t.core = Core::Init(init);
                                t.reqid = reqid;
                                continue;
                            }
                            Err(e) => log::warn!("{}reconnecting to {peer}: {e}", tag(&self.labels, peer)),
                        }
                    }
                }
                return;
            };
            match out {
                Output::Send(d) => self.send(d).await,
                Output::Event(ev) => self.on_event(peer, ev),
            }
        }
    }

    async fn send(&self, d: vpnnat_ike::Datagram) {
        let sock = if d.src.port() == NAT_T_PORT {
            &self.socks.natt
        } else {
            &self.socks.ike
        };
        let dst = self.cfg.ports.addr_to_wire(d.dst);
        if let Err(e) = sock.send_to(&d.payload, dst).await {
            log::warn!("sending IKE to {dst}: {e}");
        }
    }

    /// Puts a CHILD SA pair into the kernel (the outbound one later if the
    /// core defers it) with `reqid`; what was installed.
    fn install_child(&mut self, reqid: u32, c: &ChildSa) -> Option<Child> {
        let (Some(local), Some(remote)) = (v4(c.local), v4(c.remote)) else {
            log::error!("CHILD SA {:#010x}: not IPv4", c.inbound_spi);
            return None;
        };
        let ports: Ports = self.cfg.ports;
        let out_encap = c.encap.map(|(s, d)| Encap {
            sport: ports.to_wire(s),
            dport: ports.to_wire(d),
        });
        let in_encap = out_encap.map(|e| Encap {
            sport: e.dport,
            dport: e.sport,
        });
        let inbound = self.sa_spec(reqid, remote, local, c.inbound_spi, c.inbound_key.expose(), in_encap)?;
        let outbound = self.sa_spec(reqid, local, remote, c.outbound_spi, c.outbound_key.expose(), out_encap)?;
        let child = Child {
            inbound: inbound.id(),
            outbound: outbound.id(),
            pending_out: None,
        };
        self.kernel_op(KernelOp::Add(Box::new(inbound)));
        if c.outbound_deferred {
            Some(Child {
                pending_out: Some(Box::new(outbound)),
                ..child
            })
        } else {
            self.kernel_op(KernelOp::Add(Box::new(outbound)));
            Some(child)
        }
    }

    fn sa_spec(
        &self,
        reqid: u32,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        spi: u32,
        key: &[u8],
        encap: Option<Encap>,
    ) -> Option<SaSpec> {
        let key = match SaKey::new(key.to_vec()) {
            Ok(k) => k,
            Err(e) => {
                log::error!("CHILD SA {spi:#010x}: {e}");
                return None;
            }
        };
        Some(SaSpec {
            src,
            dst,
            spi,
            reqid,
            key,
            replay_window: self.cfg.replay_window,
            encap,
            lifetime: self.cfg.child_lifetime,
        })
    }

    fn child_up(&mut self, peer: Ipv4Addr, c: &ChildSa) {
        let Some(reqid) = self.tunnels.get(&peer).map(|t| t.reqid) else {
            return;
        };
        let (Some(local), Some(remote)) = (v4(c.local), v4(c.remote)) else {
            log::error!("{}CHILD SA with {peer}: not IPv4", tag(&self.labels, peer));
            return;
        };
        let ports: Ports = self.cfg.ports;
        // The core's (sport, dport) is the outbound direction.
        let out_encap = c.encap.map(|(s, d)| Encap {
            sport: ports.to_wire(s),
            dport: ports.to_wire(d),
        });
        let in_encap = out_encap.map(|e| Encap {
            sport: e.dport,
            dport: e.sport,
        });
        let (Some(inbound), Some(outbound)) = (
            self.sa_spec(reqid, remote, local, c.inbound_spi, c.inbound_key.expose(), in_encap),
            self.sa_spec(reqid, local, remote, c.outbound_spi, c.outbound_key.expose(), out_encap),
        ) else {
            return;
        };
        let child = Child {
            inbound: inbound.id(),
            outbound: outbound.id(),
            pending_out: None,
        };
        if self.take_larval(peer, c.inbound_spi) {
            self.kernel_op(KernelOp::Update(Box::new(inbound)));
        } else {
            self.kernel_op(KernelOp::Add(Box::new(inbound)));
        }
        let child = if c.outbound_deferred {
            Child {
                pending_out: Some(Box::new(outbound)),
                ..child
            }
        } else {
            self.kernel_op(KernelOp::Add(Box::new(outbound)));
            child
        };
        if let Some(t) = self.tunnels.get_mut(&peer) {
            t.children.insert(c.inbound_spi, child);
        }
        self.kernel_op(KernelOp::Notify(DriverEvent::ChildSaInstalled {
            peer,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
        }));
    }

    fn on_event(&mut self, peer: Ipv4Addr, ev: Event) {
        match ev {
            Event::ChildSaUp(c) => {
                log::info!(
                    "{}CHILD SA with {peer}: in {:#010x} out {:#010x} {} encap {:?}{}",
                    tag(&self.labels, peer),
                    c.inbound_spi,
                    c.outbound_spi,
                    c.xfrm_name(),
                    c.encap,
                    if c.replaces.is_some() { " (rekey)" } else { "" }
                );
                self.child_up(peer, &c);
            }
            Event::ChildSaOutbound { inbound_spi, .. } => {
                let pending = self
                    .tunnels
                    .get_mut(&peer)
                    .and_then(|t| t.children.get_mut(&inbound_spi))
                    .and_then(|c| c.pending_out.take());
                if let Some(sa) = pending {
                    self.kernel_op(KernelOp::Add(sa));
                }
            }
            Event::ChildSaDown {
                inbound_spi,
                outbound_spi,
            } => {
                let child = self
                    .tunnels
                    .get_mut(&peer)
                    .and_then(|t| t.children.remove(&inbound_spi));
                if let Some(c) = child {
                    self.kernel_op(KernelOp::Delete(c.inbound));
                    if c.pending_out.is_none() {
                        self.kernel_op(KernelOp::Delete(c.outbound));
                    }
                    self.kernel_op(KernelOp::Notify(DriverEvent::ChildSaRemoved {
                        peer,
                        inbound_spi,
                        outbound_spi,
                    }));
                }
            }
            Event::TunnelUp { nat, ike_spis, .. } => {
                log::info!(
                    "{}tunnel with {peer} up (IKE SA {:016x}/{:016x}{})",
                    tag(&self.labels, peer),
                    ike_spis.0,
                    ike_spis.1,
                    if nat { ", NAT: ESP-in-UDP" } else { "" }
                );
                if let Some(t) = self.tunnels.get_mut(&peer) {
                    if matches!(t.core, Core::Init(_)) {
                        t.next_ike_rekey = self.cfg.ike_rekey_interval.map(|i| Instant::now() + i);
                    }
                }
                with_shared(&self.shared, |s| {
                    s.ike.insert(peer, ike_spis);
                });
                self.kernel_op(KernelOp::Notify(DriverEvent::TunnelUp { peer, nat }));
            }
            Event::IkeSaRekeyed { old, new } => {
                log::info!(
                    "{}IKE SA with {peer} rekeyed: {:016x} -> {:016x}",
                    tag(&self.labels, peer),
                    old.0,
                    new.0
                );
                with_shared(&self.shared, |s| {
                    s.ike.insert(peer, new);
                });
                if let Some(t) = self.tunnels.get_mut(&peer) {
                    if matches!(t.core, Core::Init(_)) {
                        t.next_ike_rekey = self.cfg.ike_rekey_interval.map(|i| Instant::now() + i);
                    }
                }
            }
            Event::RekeyFailed { child, error } => {
                log::warn!("{}rekey with {peer} failed: {error}", tag(&self.labels, peer));
                // The failed exchange's reserved SPI is not used (only one
                // CHILD SA per tunnel: no other reservation is pending).
                self.release_larval(peer, None);
                self.kernel_op(KernelOp::Notify(DriverEvent::RekeyFailed { peer, child }));
            }
            Event::PeerMoved { from, to, children, .. } => {
                log::info!("{}{peer}'s NAT moved it: {from} -> {to}", tag(&self.labels, peer));
                if let Some(t) = self.tunnels.get_mut(&peer) {
                    let moved = t
                        .children
                        .iter_mut()
                        .filter(|(spi, _)| children.iter().any(|(i, _)| i == *spi))
                        .map(|(_, c)| c);
                    let ops = rebind::follow(moved, from, to, self.cfg.ports);
                    for op in ops {
                        self.kernel_op(op);
                    }
                }
            }
            Event::TunnelDown { reason, ike_spis } => {
                log::info!(
                    "{}tunnel with {peer} down ({reason:?}, IKE SA {:016x}/{:016x})",
                    tag(&self.labels, peer),
                    ike_spis.0,
                    ike_spis.1
                );
                // An IKE SA the peer already replaced by a newer one (e.g. a
                // restarted gateway initiating afresh) takes nothing with it:
                // the peer's CHILD SAs now belong to the newer IKE SA, and
                // the tunnel is up.
                let mut stale = false;
                with_shared(&self.shared, |s| {
                    stale = s.ike.get(&peer).is_some_and(|cur| *cur != ike_spis);
                });
                if stale {
                    log::info!(
                        "{}tunnel with {peer} stays up: the IKE SA that went down was already replaced",
                        tag(&self.labels, peer)
                    );
                    return;
                }
                with_shared(&self.shared, |s| {
                    if s.ike.get(&peer) == Some(&ike_spis) {
                        s.ike.remove(&peer);
                    }
                });
                let (forget, left) = match self.tunnels.get_mut(&peer) {
                    Some(t) => {
                        t.next_ike_rekey = None;
                        // The core reports CHILD SAs down first; anything
                        // left over is removed here all the same.
                        let left: Vec<Child> = t.children.drain().map(|(_, c)| c).collect();
                        (t.forget_when_down && !t.core.is_established(), left)
                    }
                    None => (false, Vec::new()),
                };
                for c in left {
                    self.kernel_op(KernelOp::Delete(c.inbound));
                    if c.pending_out.is_none() {
                        self.kernel_op(KernelOp::Delete(c.outbound));
                    }
                }
                self.release_larval(peer, None);
                if let Some(t) = self.tunnels.get_mut(&peer) {
                    t.closing = false;
                    if forget {
                        t.gone = true;
                    } else if t.reconnect.is_some() && !t.core.is_established() {
                        t.restart = true;
                    }
                }
                self.kernel_op(KernelOp::Notify(DriverEvent::TunnelDown { peer, reason }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_about_a_tunnel_start_with_its_owners_label() {
        let mut labels = HashMap::new();
        let home = Ipv4Addr::new(198, 51, 100, 101);
        let bare = Ipv4Addr::new(198, 51, 100, 102);
        labels.insert(home, "terminal=home-1".to_owned());
        labels.insert(bare, String::new());
        let line = |peer: Ipv4Addr| format!("{}tunnel with {peer} up", tag(&labels, peer));
        assert_eq!(line(home), "terminal=home-1 tunnel with 198.51.100.101 up");
        assert_eq!(line(bare), "tunnel with 198.51.100.102 up");
        assert_eq!(line(Ipv4Addr::new(192, 0, 2, 1)), "tunnel with 192.0.2.1 up");
    }
}
