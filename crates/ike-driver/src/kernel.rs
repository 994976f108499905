//! The kernel side of the driver: SA installation on a dedicated thread
//! (netlink calls block) and the XFRM expire subscription.

use std::net::Ipv4Addr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::mpsc;
use vpnnat_datapath::xfrm::{Xfrm, XfrmEvent, XfrmEvents};
use vpnnat_datapath::{DatapathError, SaId, SaSpec};

use crate::DriverEvent;

/// What the driver needs from the kernel: adding and deleting ESP SAs.
/// Implemented by the datapath library's [`Xfrm`]; tests use
/// [`RecordingInstaller`].
pub trait SaInstaller: Send + 'static {
    /// Adds one SA.
    fn add_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError>;
    /// Deletes one SA.
    fn delete_sa(&mut self, id: SaId) -> Result<(), DatapathError>;
    /// Completes an SA whose SPI was reserved by a [`SpiAllocator`] (the
    /// kernel's larval SA becomes the real one). Default: `add_sa`.
    fn update_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        self.add_sa(sa)
    }
    /// Gives an installed SA a new UDP encapsulation (the peer's NAT
    /// moved; XFRM_MSG_UPDSA keeps keys, counters and replay state).
    /// Default: `update_sa`.
    fn move_encap(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        self.update_sa(sa)
    }
}

/// Reserves inbound SPIs (XFRM ALLOCSPI: a larval SA `src -> dst` with a
/// free SPI, completed later by [`SaInstaller::update_sa`] or removed by
/// `delete_sa`; the kernel drops unused ones after
/// `net.core.xfrm_acq_expires` seconds). Called from the driver task, so
/// it must be quick.
pub trait SpiAllocator: Send + Sync + std::fmt::Debug + 'static {
    /// A free SPI for an SA `src -> dst` with this reqid.
    fn alloc_spi(&self, src: Ipv4Addr, dst: Ipv4Addr, reqid: u32) -> Result<u32, DatapathError>;
}

/// [`SpiAllocator`] over its own XFRM netlink socket.
#[derive(Debug)]
pub struct KernelSpis(Mutex<Xfrm>);

impl KernelSpis {
    /// Opens the netlink socket (needs CAP_NET_ADMIN).
    pub fn open() -> Result<Self, DatapathError> {
        Ok(Self(Mutex::new(Xfrm::open()?)))
    }
}

/// SPIs the kernel hands out: above the range small test SPIs use.
const SPI_MIN: u32 = 0xc000_0000;
const SPI_MAX: u32 = 0xcfff_ffff;

impl SpiAllocator for KernelSpis {
    fn alloc_spi(&self, src: Ipv4Addr, dst: Ipv4Addr, reqid: u32) -> Result<u32, DatapathError> {
        let mut x = self.0.lock().map_err(|_| DatapathError::Socket {
            family: "xfrm",
            reason: std::io::Error::other("SPI allocator lock poisoned"),
        })?;
        x.alloc_spi(src, dst, reqid, SPI_MIN, SPI_MAX)
    }
}

/// A fake [`SpiAllocator`] for tests: consecutive SPIs from a start value,
/// each one remembered.
#[derive(Debug, Clone)]
pub struct CountingSpis {
    next: Arc<Mutex<u32>>,
    handed_out: Arc<Mutex<Vec<u32>>>,
}

impl CountingSpis {
    /// SPIs `first`, `first + 1`, ...
    pub fn new(first: u32) -> Self {
        Self {
            next: Arc::new(Mutex::new(first)),
            handed_out: Arc::default(),
        }
    }
    /// Every SPI handed out so far.
    pub fn handed_out(&self) -> Vec<u32> {
        self.handed_out.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl SpiAllocator for CountingSpis {
    fn alloc_spi(&self, _src: Ipv4Addr, _dst: Ipv4Addr, _reqid: u32) -> Result<u32, DatapathError> {
        let spi = {
            let mut n = self.next.lock().map_err(|_| DatapathError::Socket {
                family: "xfrm",
                reason: std::io::Error::other("lock poisoned"),
            })?;
            let spi = *n;
            *n = n.wrapping_add(1);
            spi
        };
        if let Ok(mut v) = self.handed_out.lock() {
            v.push(spi);
        }
        Ok(spi)
    }
}

impl SaInstaller for Xfrm {
    fn add_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        Xfrm::add_sa(self, sa)
    }
    fn update_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        Xfrm::update_sa(self, sa)
    }
    fn delete_sa(&mut self, id: SaId) -> Result<(), DatapathError> {
        Xfrm::delete_sa(self, id)
    }
    fn move_encap(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        Xfrm::update_sa(self, sa)
    }
}

/// One recorded call of a [`RecordingInstaller`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaOp {
    /// `add_sa`.
    Add(SaSpec),
    /// `delete_sa`.
    Delete(SaId),
    /// `move_encap`: the SA with this id now has this encapsulation.
    Moved(SaSpec),
}

/// A fake [`SaInstaller`] that records every call (for tests of the driver
/// and of its users).
#[derive(Debug, Clone, Default)]
pub struct RecordingInstaller {
    ops: Arc<Mutex<Vec<SaOp>>>,
    updated: Arc<Mutex<Vec<SaId>>>,
}

impl RecordingInstaller {
    /// A new, empty recorder (clones share the record).
    pub fn new() -> Self {
        Self::default()
    }

    /// All calls so far, in order.
    pub fn ops(&self) -> Vec<SaOp> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The SAs that were installed with `update_sa` (their SPI came from
    /// an [`SpiAllocator`]); `ops` lists them as `Add`.
    pub fn updated(&self) -> Vec<SaId> {
        self.updated.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The SAs added and not deleted since, in order of addition.
    pub fn installed(&self) -> Vec<SaSpec> {
        let mut sas: Vec<SaSpec> = Vec::new();
        for op in self.ops() {
            match op {
                SaOp::Add(s) => sas.push(s),
                SaOp::Delete(id) => sas.retain(|s| s.id() != id),
                SaOp::Moved(m) => {
                    for s in sas.iter_mut().filter(|s| s.id() == m.id()) {
                        *s = m.clone();
                    }
                }
            }
        }
        sas
    }
}

impl SaInstaller for RecordingInstaller {
    fn add_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        if let Ok(mut o) = self.ops.lock() {
            o.push(SaOp::Add(sa.clone()));
        }
        Ok(())
    }
    fn delete_sa(&mut self, id: SaId) -> Result<(), DatapathError> {
        if let Ok(mut o) = self.ops.lock() {
            o.push(SaOp::Delete(id));
        }
        Ok(())
    }
    fn update_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        if let Ok(mut u) = self.updated.lock() {
            u.push(sa.id());
        }
        self.add_sa(sa)
    }
    fn move_encap(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        if let Ok(mut o) = self.ops.lock() {
            o.push(SaOp::Moved(sa.clone()));
        }
        Ok(())
    }
}

/// Work for the kernel thread, executed strictly in order.
#[derive(Debug)]
pub(crate) enum KernelOp {
    Add(Box<SaSpec>),
    /// Complete a larval SA (SPI from ALLOCSPI).
    Update(Box<SaSpec>),
    Delete(SaId),
    /// The peer's NAT moved it to this UDP port: the installed SA with
    /// this id takes it as its encapsulation's peer side (outbound:
    /// destination port; inbound: source port).
    MovePeerPort {
        id: SaId,
        outbound: bool,
        port: u16,
    },
    /// Pass an event to the owner once everything before it was done (so
    /// `TunnelUp` is reported only after the SAs are in the kernel).
    Notify(DriverEvent),
    /// Answer once everything before was done.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What the kernel thread has done, readable without waiting (for owners
/// whose reconciliation must keep the driver's SAs, and status pages).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// SAs in the kernel (added successfully, not deleted since).
    pub sas: Vec<SaSpec>,
    /// Peers whose tunnel is up.
    pub up: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// SPIs (initiator's, responder's) of each peer's current IKE SA
    /// (kept by the driver task).
    pub ike: std::collections::BTreeMap<std::net::Ipv4Addr, (u64, u64)>,
}

pub(crate) type SharedState = Arc<Mutex<Shared>>;

pub(crate) fn with_shared(s: &SharedState, f: impl FnOnce(&mut Shared)) {
    if let Ok(mut g) = s.lock() {
        f(&mut g);
    }
}

/// The thread that owns the [`SaInstaller`].
pub(crate) fn spawn_kernel_thread(
    mut installer: Box<dyn SaInstaller>,
    events: mpsc::UnboundedSender<DriverEvent>,
    shared: SharedState,
) -> std::io::Result<std_mpsc::Sender<KernelOp>> {
    let (tx, rx) = std_mpsc::channel::<KernelOp>();
    thread::Builder::new().name("ike-xfrm".into()).spawn(move || {
        while let Ok(op) = rx.recv() {
            match op {
                op @ (KernelOp::Add(_) | KernelOp::Update(_)) => {
                    let (sa, r) = match op {
                        KernelOp::Update(sa) => {
                            let r = installer.update_sa(&sa);
                            (sa, r)
                        }
                        KernelOp::Add(sa) => {
                            let r = installer.add_sa(&sa);
                            (sa, r)
                        }
                        _ => continue,
                    };
                    match r {
                        Ok(()) => {
                            log::debug!("installed SA {} (reqid {:#x}, encap {:?})", sa.id(), sa.reqid, sa.encap);
                            with_shared(&shared, |s| s.sas.push(*sa));
                            // One SA of the pair in the kernel, the other not yet.
                            vpnnat_crashpoint::hit("ike.after_sa_install");
                        }
                        Err(e) => {
                            log::error!("installing SA {}: {e}", sa.id());
                            let _ = events.send(DriverEvent::KernelError {
                                sa: sa.id(),
                                error: e.to_string(),
                            });
                        }
                    }
                }
                KernelOp::Delete(id) => {
                    match installer.delete_sa(id) {
                        Ok(()) => log::debug!("deleted SA {id}"),
                        Err(e) => log::warn!("deleting SA {id}: {e}"),
                    }
                    with_shared(&shared, |s| s.sas.retain(|x| x.id() != id));
                }
                KernelOp::MovePeerPort { id, outbound, port } => {
                    let mut spec = None;
                    with_shared(&shared, |s| spec = s.sas.iter().find(|x| x.id() == id).cloned());
                    let Some(mut sa) = spec else {
                        log::warn!("moving SA {id}: not installed");
                        continue;
                    };
                    let Some(e) = sa.encap.as_mut() else {
                        log::warn!("moving SA {id}: no UDP encapsulation");
                        continue;
                    };
                    if outbound {
                        e.dport = port;
                    } else {
                        e.sport = port;
                    }
                    match installer.move_encap(&sa) {
                        Ok(()) => {
                            log::info!("SA {id} follows the peer's NAT: encap {:?}", sa.encap);
                            with_shared(&shared, |s| {
                                for x in s.sas.iter_mut().filter(|x| x.id() == id) {
                                    x.encap = sa.encap;
                                }
                            });
                        }
                        Err(e) => {
                            log::error!("moving SA {id} to the peer's new port: {e}");
                            let _ = events.send(DriverEvent::KernelError {
                                sa: id,
                                error: e.to_string(),
                            });
                        }
                    }
                }
                KernelOp::Notify(ev) => {
                    match &ev {
                        DriverEvent::TunnelUp { peer, .. } => with_shared(&shared, |s| {
                            s.up.insert(*peer);
                        }),
                        DriverEvent::TunnelDown { peer, .. } => with_shared(&shared, |s| {
                            s.up.remove(peer);
                        }),
                        _ => {}
                    }
                    let _ = events.send(ev);
                }
                KernelOp::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    })?;
    Ok(tx)
}

/// A kernel SA lifetime event, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expire {
    /// The SA.
    pub id: SaId,
    /// Hard (the SA is gone) or soft (rekey now).
    pub hard: bool,
}

/// An XFRM mapping event, as the driver sees it: ESP-in-UDP for our
/// inbound SA `inbound` came from `new` (the peer's NAT moved it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Our inbound SA.
    pub inbound: SaId,
    /// Where the peer's ESP comes from now (on the wire).
    pub new: std::net::SocketAddrV4,
}

/// What the event thread passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelNote {
    Expire(Expire),
    Mapping(Mapping),
}

/// Subscribes to XFRM expire and mapping events and forwards them from a
/// dedicated thread (the netlink receive blocks).
pub(crate) fn spawn_expire_thread(tx: mpsc::UnboundedSender<KernelNote>) -> Result<(), crate::DriverError> {
    let mut sub = XfrmEvents::subscribe().map_err(crate::DriverError::Kernel)?;
    thread::Builder::new()
        .name("ike-xfrm-events".into())
        .spawn(move || loop {
            match sub.recv() {
                Ok(evs) => {
                    for ev in evs {
                        let note = match ev {
                            XfrmEvent::Expire { id, hard, .. } => KernelNote::Expire(Expire { id, hard }),
                            XfrmEvent::Mapping { id, new, .. } => KernelNote::Mapping(Mapping { inbound: id, new }),
                            XfrmEvent::Acquire { .. } => continue,
                        };
                        if tx.send(note).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    log::error!("XFRM event subscription: {e}");
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        })
        .map_err(crate::DriverError::Io)?;
    Ok(())
}
