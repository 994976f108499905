//! The kernel side of the driver: SA installation on a dedicated thread
//! (netlink calls block) and the XFRM expire subscription.

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
}

impl SaInstaller for Xfrm {
    fn add_sa(&mut self, sa: &SaSpec) -> Result<(), DatapathError> {
        Xfrm::add_sa(self, sa)
    }
    fn delete_sa(&mut self, id: SaId) -> Result<(), DatapathError> {
        Xfrm::delete_sa(self, id)
    }
}

/// One recorded call of a [`RecordingInstaller`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaOp {
    /// `add_sa`.
    Add(SaSpec),
    /// `delete_sa`.
    Delete(SaId),
}

/// A fake [`SaInstaller`] that records every call (for tests of the driver
/// and of its users).
#[derive(Debug, Clone, Default)]
pub struct RecordingInstaller {
    ops: Arc<Mutex<Vec<SaOp>>>,
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

    /// The SAs added and not deleted since, in order of addition.
    pub fn installed(&self) -> Vec<SaSpec> {
        let mut sas: Vec<SaSpec> = Vec::new();
        for op in self.ops() {
            match op {
                SaOp::Add(s) => sas.push(s),
                SaOp::Delete(id) => sas.retain(|s| s.id() != id),
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
}

/// Work for the kernel thread, executed strictly in order.
#[derive(Debug)]
pub(crate) enum KernelOp {
    Add(Box<SaSpec>),
    Delete(SaId),
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
}

pub(crate) type SharedState = Arc<Mutex<Shared>>;

fn with_shared(s: &SharedState, f: impl FnOnce(&mut Shared)) {
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
                KernelOp::Add(sa) => match installer.add_sa(&sa) {
                    Ok(()) => {
                        log::debug!("installed SA {} (reqid {:#x}, encap {:?})", sa.id(), sa.reqid, sa.encap);
                        with_shared(&shared, |s| s.sas.push(*sa));
                    }
                    Err(e) => {
                        log::error!("installing SA {}: {e}", sa.id());
                        let _ = events.send(DriverEvent::KernelError {
                            sa: sa.id(),
                            error: e.to_string(),
                        });
                    }
                },
                KernelOp::Delete(id) => {
                    match installer.delete_sa(id) {
                        Ok(()) => log::debug!("deleted SA {id}"),
                        Err(e) => log::warn!("deleting SA {id}: {e}"),
                    }
                    with_shared(&shared, |s| s.sas.retain(|x| x.id() != id));
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

/// Subscribes to XFRM expire events and forwards them from a dedicated
/// thread (the netlink receive blocks).
pub(crate) fn spawn_expire_thread(tx: mpsc::UnboundedSender<Expire>) -> Result<(), crate::DriverError> {
    let mut sub = XfrmEvents::subscribe().map_err(crate::DriverError::Kernel)?;
    thread::Builder::new()
        .name("ike-xfrm-events".into())
        .spawn(move || loop {
            match sub.recv() {
                Ok(evs) => {
                    for ev in evs {
                        if let XfrmEvent::Expire { id, hard, .. } = ev {
                            if tx.send(Expire { id, hard }).is_err() {
                                return;
                            }
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
