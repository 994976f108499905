//! Host routes on the center's router so the operator's network reaches
//! every VPNNAT address through the gateway that carries its router's
//! tunnel, with any number of gateways and no manual routes: centerd adds
//! `VPNNAT/32 via <gateway's center-LAN address>` when it routes an address
//! into a tunnel, and deletes it when the address is released or the VPN
//! ends. (The operator's own route for the whole pool points at the host
//! centerd runs on.) Through the datapath library's rtnetlink layer.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use vpnnat_datapath::route::Route;
use vpnnat_datapath::{DatapathError, Ipv4Cidr};

/// Adds and removes host routes. Idempotent: adding a present route or
/// deleting an absent one is not an error.
pub trait RouteProgrammer: Send + Sync + std::fmt::Debug {
    fn add(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError>;
    fn del(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError>;
}

/// The kernel of the namespace centerd runs in.
#[derive(Debug)]
pub struct KernelRoutes {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    route: Route,
    /// Next hop of each route this process added: a route re-pointed to
    /// another gateway is deleted by its old next hop first (rtnetlink
    /// deletes need it, and the datapath cannot list routes).
    via: HashMap<Ipv4Addr, Ipv4Addr>,
}

impl KernelRoutes {
    pub fn open() -> Result<Self, DatapathError> {
        Ok(KernelRoutes {
            inner: Mutex::new(Inner {
                route: Route::open()?,
                via: HashMap::new(),
            }),
        })
    }
}

fn errno_is(e: &DatapathError, code: i32) -> bool {
    e.errno() == Some(code)
}

use libc::{EEXIST, ENOENT, ESRCH};

impl RouteProgrammer for KernelRoutes {
    fn add(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError> {
        let Ok(mut g) = self.inner.lock() else {
            return Ok(());
        };
        let inner = &mut *g;
        for a in addrs {
            let dst = Ipv4Cidr::host(*a);
            match inner.route.add_route(dst, Some(via), None) {
                Ok(()) => {}
                // Already there (re-added by reconciliation, or via another
                // gateway): replace it so it points at the right one.
                Err(e) if errno_is(&e, EEXIST) => {
                    if inner.via.get(a) == Some(&via) {
                        continue;
                    }
                    let old = inner.via.get(a).copied().unwrap_or(via);
                    let _ = inner.route.del_route(dst, Some(old), None);
                    match inner.route.add_route(dst, Some(via), None) {
                        Ok(()) => {}
                        Err(e) if errno_is(&e, EEXIST) && old == via => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            inner.via.insert(*a, via);
        }
        Ok(())
    }

    fn del(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError> {
        let Ok(mut g) = self.inner.lock() else {
            return Ok(());
        };
        let inner = &mut *g;
        for a in addrs {
            let hop = inner.via.remove(a).unwrap_or(via);
            match inner.route.del_route(Ipv4Cidr::host(*a), Some(hop), None) {
                Ok(()) => {}
                Err(e) if errno_is(&e, ENOENT) || errno_is(&e, ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Records calls (tests).
#[derive(Debug, Default)]
pub struct RecordingRoutes {
    pub log: Mutex<Vec<String>>,
}

impl RouteProgrammer for RecordingRoutes {
    fn add(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError> {
        if let Ok(mut l) = self.log.lock() {
            l.extend(addrs.iter().map(|a| format!("add {a}/32 via {via}")));
        }
        Ok(())
    }

    fn del(&self, addrs: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), DatapathError> {
        if let Ok(mut l) = self.log.lock() {
            l.extend(addrs.iter().map(|a| format!("del {a}/32 via {via}")));
        }
        Ok(())
    }
}
