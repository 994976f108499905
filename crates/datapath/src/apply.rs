//! The apply step: [`Datapath`] turns [`Change`]s into kernel state.
//!
//! [`KernelDatapath`] is the real one; [`RecordingDatapath`] keeps state in
//! memory and records every change, for unit tests of router and center
//! logic that must not need root.

use std::collections::BTreeSet;

use log::debug;

use crate::error::DatapathError;
use crate::model::{ObservedSa, PolicyId, PolicySpec, SaCounters, SaId};
use crate::nft::{elements, ElemOp, HostCounter, NatObserved, NatTable, Nft, NftElements};
use crate::plan::{plan, Change, DesiredState, ObservedState};
use crate::xfrm::Xfrm;

/// Something that can read and change the project's kernel state.
pub trait Datapath {
    /// Reads the project's objects (SAs and policies in its reqid range, and
    /// its NAT table).
    fn observe(&mut self) -> Result<ObservedState, DatapathError>;

    /// Applies `changes` in order. Stops at the first failure; the error
    /// names the object. Changes before it stay applied (callers re-plan
    /// from a fresh observation, which is always safe).
    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError>;

    /// Brings the kernel to `desired` and returns what was changed.
    fn reconcile(&mut self, desired: &DesiredState) -> Result<Vec<Change>, DatapathError> {
        let observed = self.observe()?;
        let changes = plan(desired, &observed);
        for c in &changes {
            debug!("datapath: {}", c.describe());
        }
        self.apply(&changes)?;
        Ok(changes)
    }

    /// What the kernel counted through each granted host's mapping
    /// ([`crate::nft::counters`]); none where there is no NAT table.
    fn host_counters(&mut self) -> Result<Vec<HostCounter>, DatapathError> {
        Ok(Vec::new())
    }
}

/// The real kernel, in the network namespace the calling thread is in.
#[derive(Debug)]
pub struct KernelDatapath {
    pub xfrm: Xfrm,
    pub nft: Nft,
    /// Grants and revokes (mapping elements only) go here, in-process;
    /// the table itself through `nft`.
    pub elements: NftElements,
}

impl KernelDatapath {
    pub fn open(table: NatTable) -> Result<Self, DatapathError> {
        Ok(Self {
            xfrm: Xfrm::open()?,
            nft: Nft::new(table),
            elements: NftElements::open()?,
        })
    }

    /// Installs (or replaces) the home router's WAN guard for interface
    /// `wan` ([`crate::nft::guard`]): from the WAN only the tunnel, IKE,
    /// DHCP, ICMP and replies get in.
    pub fn guard_wan(&self, wan: &str) -> Result<(), DatapathError> {
        self.nft
            .apply("WAN guard", &crate::nft::guard::WanGuard::new(wan).create())
    }
}

impl Datapath for KernelDatapath {
    fn observe(&mut self) -> Result<ObservedState, DatapathError> {
        Ok(ObservedState::ours(
            self.xfrm.list_sas()?,
            self.xfrm.list_policies()?,
            self.nft.observe()?,
        ))
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError> {
        let t = self.nft.table.clone();
        let nft = &mut self.nft;
        let elems = &mut self.elements;
        // A grant or revoke (a few mappings) as one netlink batch; a whole
        // population (a reconcile) through `nft`, see elements::MAX_MAPPINGS.
        let small = |m: &[_]| m.len() <= elements::MAX_MAPPINGS;
        apply_changes(&mut self.xfrm, changes, |c| match c {
            Change::CreateNat { center, mappings } => nft.apply("create table", &t.create(center, mappings)),
            Change::SetCenter(center) => nft.apply("set center networks", &t.set_center(center)),
            Change::AddMappings(m) if small(m) => elems.apply(&t.name, ElemOp::Add, m),
            Change::DelMappings(m) if small(m) => elems.apply(&t.name, ElemOp::Delete, m),
            Change::AddMappings(m) => nft.apply("add mappings", &t.add_mappings(m)),
            Change::DelMappings(m) => nft.apply("delete mappings", &t.remove_mappings(m)),
            Change::DestroyNat => nft.apply("destroy table", &t.destroy()),
            _ => Ok(()),
        })
    }

    fn host_counters(&mut self) -> Result<Vec<HostCounter>, DatapathError> {
        self.elements.host_counters(&self.nft.table.name)
    }
}

/// Applies `changes` in order: XFRM ones on `xfrm` (runs of policy adds
/// or deletes in one pipelined batch), NAT ones through `nat`.
fn apply_changes(
    xfrm: &mut Xfrm,
    changes: &[Change],
    mut nat: impl FnMut(&Change) -> Result<(), DatapathError>,
) -> Result<(), DatapathError> {
    // What is left to apply; a run or one change comes off its front.
    let mut rest = changes;
    while let Some(c) = rest.first() {
        if let Change::AddPolicy(_) = c {
            let run: Vec<PolicySpec> = rest
                .iter()
                .map_while(|c| match c {
                    Change::AddPolicy(p) => Some(*p),
                    _ => None,
                })
                .collect();
            xfrm.add_policies(&run)?;
            rest = rest.get(run.len()..).unwrap_or_default();
            continue;
        }
        if let Change::DelPolicy(_) = c {
            let run: Vec<PolicyId> = rest
                .iter()
                .map_while(|c| match c {
                    Change::DelPolicy(p) => Some(*p),
                    _ => None,
                })
                .collect();
            xfrm.delete_policies(&run)?;
            rest = rest.get(run.len()..).unwrap_or_default();
            continue;
        }
        match c {
            Change::AddSa(sa) => xfrm.add_sa(sa)?,
            Change::DelSa(id) => xfrm.delete_sa(*id)?,
            Change::UpdatePolicy(p) => xfrm.update_policy(p)?,
            Change::AddPolicy(_) | Change::DelPolicy(_) => {}
            other => nat(other)?,
        }
        rest = rest.get(1..).unwrap_or_default();
    }
    Ok(())
}

/// Only the project's objects of one tunnel endpoint: the SAs from or to
/// `endpoint` and the policies whose template starts or ends there; no
/// NAT table. Pure, for [`EndpointDatapath`].
pub fn scope_to_endpoint(observed: ObservedState, endpoint: std::net::Ipv4Addr) -> ObservedState {
    ObservedState {
        sas: observed
            .sas
            .into_iter()
            .filter(|s| s.src == endpoint || s.id.dst == endpoint)
            .collect(),
        policies: observed
            .policies
            .into_iter()
            .filter(|p| p.tmpl_src == endpoint || p.tmpl_dst == endpoint)
            .collect(),
        nat: None,
    }
}

/// The XFRM SAs and policies of one tunnel endpoint address, and no NAT
/// table: what one of many simulated routers sharing a network namespace
/// owns (the tunnel load test, `tests/load`). Each sees and changes only
/// the objects of its own WAN address ([`scope_to_endpoint`]), so one
/// router's reconciliation never removes another's tunnel; NAT changes
/// are not applied (the simulated routers have no LAN behind them).
#[derive(Debug)]
pub struct EndpointDatapath {
    pub xfrm: Xfrm,
    pub endpoint: std::net::Ipv4Addr,
}

impl EndpointDatapath {
    pub fn open(endpoint: std::net::Ipv4Addr) -> Result<Self, DatapathError> {
        Ok(Self {
            xfrm: Xfrm::open()?,
            endpoint,
        })
    }
}

impl Datapath for EndpointDatapath {
    fn observe(&mut self) -> Result<ObservedState, DatapathError> {
        let all = ObservedState::ours(self.xfrm.list_sas()?, self.xfrm.list_policies()?, None);
        Ok(scope_to_endpoint(all, self.endpoint))
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError> {
        apply_changes(&mut self.xfrm, changes, |_| Ok(()))
    }

    fn reconcile(&mut self, desired: &DesiredState) -> Result<Vec<Change>, DatapathError> {
        let desired = DesiredState {
            nat: None,
            ..desired.clone()
        };
        let changes = plan(&desired, &self.observe()?);
        self.apply(&changes)?;
        Ok(changes)
    }
}

/// An in-memory datapath that records every change it is asked to apply.
/// It can be told to fail at a given change, to test recovery paths.
#[derive(Debug, Default)]
pub struct RecordingDatapath {
    pub state: ObservedState,
    /// Every change applied, in order.
    pub log: Vec<Change>,
    /// Fail the change with this index in `log` order (0-based, counted over
    /// the lifetime of the fake), without applying it.
    pub fail_at: Option<usize>,
    /// Traffic "through" a host's mapping, by real address, as a test
    /// sets it (shared, so the test keeps a handle while the daemon owns
    /// the fake): [`Datapath::host_counters`] reports it for each mapped
    /// host, 0 for the others, as the kernel counts from the grant on.
    pub traffic: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::Ipv4Addr, (u64, u64)>>>,
}

impl RecordingDatapath {
    pub fn new() -> Self {
        Self::default()
    }

    fn step(&mut self, c: &Change) -> Result<(), DatapathError> {
        if self.fail_at == Some(self.log.len()) {
            return Err(DatapathError::Nft {
                what: c.describe(),
                detail: "injected failure".to_string(),
            });
        }
        let exists = |what: &str| DatapathError::Xfrm {
            op: "add",
            object: what.to_string(),
            reason: std::io::Error::from_raw_os_error(libc::EEXIST),
        };
        let missing = |op: &'static str, what: &str| DatapathError::Xfrm {
            op,
            object: what.to_string(),
            reason: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let s = &mut self.state;
        match c {
            Change::AddSa(sa) => {
                if s.sas.iter().any(|o| o.id == sa.id()) {
                    return Err(exists(&sa.id().to_string()));
                }
                s.sas.push(ObservedSa {
                    id: sa.id(),
                    src: sa.src,
                    reqid: sa.reqid,
                    encap: sa.encap,
                    counters: SaCounters::default(),
                });
            }
            Change::DelSa(id) => {
                let before = s.sas.len();
                s.sas.retain(|o| o.id != *id);
                if s.sas.len() == before {
                    return Err(missing("delete", &id.to_string()));
                }
            }
            Change::AddPolicy(p) => {
                if s.policies.iter().any(|o| o.id == p.id) {
                    return Err(exists(&p.id.to_string()));
                }
                s.policies.push(*p);
            }
            Change::UpdatePolicy(p) => {
                s.policies.retain(|o| o.id != p.id);
                s.policies.push(*p);
            }
            Change::DelPolicy(id) => {
                let before = s.policies.len();
                s.policies.retain(|o| o.id != *id);
                if s.policies.len() == before {
                    return Err(missing("delete", &id.to_string()));
                }
            }
            Change::CreateNat { center, mappings } => {
                s.nat = Some(NatObserved {
                    center: center.iter().copied().collect(),
                    mappings: mappings.iter().copied().collect(),
                    consistent: true,
                });
            }
            Change::DestroyNat => s.nat = None,
            Change::SetCenter(center) => {
                let nat = s.nat.as_mut().ok_or_else(|| missing("set", "NAT table"))?;
                nat.center = center.iter().copied().collect();
            }
            Change::AddMappings(m) => {
                let nat = s.nat.as_mut().ok_or_else(|| missing("add", "NAT table"))?;
                let new: BTreeSet<_> = m.iter().copied().collect();
                // nft refuses a transaction that re-adds a key with another value.
                if nat
                    .mappings
                    .iter()
                    .any(|o| m.iter().any(|n| n.vpnnat == o.vpnnat && n.real != o.real))
                {
                    return Err(DatapathError::Nft {
                        what: c.describe(),
                        detail: "Could not process rule: File exists".to_string(),
                    });
                }
                nat.mappings.extend(new);
            }
            Change::DelMappings(m) => {
                let nat = s.nat.as_mut().ok_or_else(|| missing("delete", "NAT table"))?;
                if m.iter().any(|x| !nat.mappings.contains(x)) {
                    return Err(DatapathError::Nft {
                        what: c.describe(),
                        detail: "Could not process rule: No such file or directory".to_string(),
                    });
                }
                for x in m {
                    nat.mappings.remove(x);
                }
            }
        }
        self.log.push(c.clone());
        Ok(())
    }

    /// Sets SA counters as if traffic had passed (for tests of monitoring).
    pub fn set_counters(&mut self, id: SaId, counters: SaCounters) {
        if let Some(sa) = self.state.sas.iter_mut().find(|s| s.id == id) {
            sa.counters = counters;
        }
    }
}

impl Datapath for RecordingDatapath {
    fn observe(&mut self) -> Result<ObservedState, DatapathError> {
        Ok(self.state.clone())
    }

    fn host_counters(&mut self) -> Result<Vec<HostCounter>, DatapathError> {
        let traffic = self.traffic.lock().map(|t| t.clone()).unwrap_or_default();
        let Some(nat) = &self.state.nat else {
            return Ok(Vec::new());
        };
        Ok(nat
            .mappings
            .iter()
            .map(|m| {
                let (packets, bytes) = traffic.get(&m.real).copied().unwrap_or_default();
                HostCounter {
                    real: m.real,
                    packets,
                    bytes,
                }
            })
            .collect())
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError> {
        for c in changes {
            self.step(c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dir, Ipv4Cidr, Lifetime, Mapping, SaKey, SaSpec, REQID_BASE};
    use crate::plan::NatDesired;

    fn desired(n: u8) -> DesiredState {
        let maps: BTreeSet<Mapping> = (0..n)
            .map(|i| Mapping {
                vpnnat: [10, 64, 0, i].into(),
                real: [192, 168, 1, 10 + i].into(),
            })
            .collect();
        DesiredState {
            sas: vec![SaSpec {
                src: [198, 51, 100, 21].into(),
                dst: [198, 51, 100, 101].into(),
                spi: 0x1000,
                reqid: REQID_BASE,
                key: SaKey::new(vec![1; 20]).unwrap(),
                replay_window: 64,
                encap: None,
                lifetime: Lifetime::default(),
            }],
            policies: maps
                .iter()
                .map(|m| PolicySpec {
                    id: PolicyId {
                        src: Ipv4Cidr::host(m.vpnnat),
                        dst: "172.16.0.0/24".parse().unwrap(),
                        dir: Dir::Out,
                    },
                    priority: 100,
                    tmpl_src: [198, 51, 100, 101].into(),
                    tmpl_dst: [198, 51, 100, 21].into(),
                    reqid: REQID_BASE,
                })
                .collect(),
            nat: Some(NatDesired {
                center: ["172.16.0.0/24".parse().unwrap()].into(),
                mappings: maps,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_scope_keeps_only_that_endpoints_tunnel() {
        // Two routers' tunnels in one namespace: each sees only its own.
        let mine = desired(2);
        let mut other = desired(1);
        let b: std::net::Ipv4Addr = [198, 18, 0, 2].into();
        other.sas[0].dst = b;
        other.sas[0].spi = 0x2000;
        other.policies[0].tmpl_src = b;
        // VPNNAT addresses are center-unique: B's policy has its own.
        other.policies[0].id.src = Ipv4Cidr::host([10, 64, 1, 0].into());
        if let Some(n) = other.nat.as_mut() {
            n.mappings = BTreeSet::new();
        }
        let observed = |d: &DesiredState| -> ObservedState {
            let mut dp = RecordingDatapath::new();
            dp.reconcile(d).unwrap();
            dp.state
        };
        let (m, o) = (observed(&mine), observed(&other));
        let both = ObservedState {
            sas: m.sas.iter().chain(&o.sas).cloned().collect(),
            policies: m.policies.iter().chain(&o.policies).cloned().collect(),
            nat: m.nat.clone(),
        };
        let a = scope_to_endpoint(both.clone(), [198, 51, 100, 101].into());
        assert_eq!((a.sas, a.policies, a.nat), (m.sas.clone(), m.policies.clone(), None));
        let scoped_b = scope_to_endpoint(both.clone(), b);
        assert_eq!((scoped_b.sas, scoped_b.policies), (o.sas.clone(), o.policies.clone()));
        // Planned against its own scope, router A's wish to drop its
        // tunnel touches nothing of B's.
        let gone = plan(
            &DesiredState::default(),
            &scope_to_endpoint(both, [198, 51, 100, 101].into()),
        );
        assert_eq!(gone.len(), 2 + 1, "{gone:?}");
        assert!(gone.iter().all(|c| match c {
            Change::DelSa(id) => id.dst != b,
            Change::DelPolicy(p) => m.policies.iter().any(|x| x.id == *p),
            _ => false,
        }));
    }

    #[test]
    fn reconcile_converges_and_is_idempotent() {
        let mut dp = RecordingDatapath::new();
        let first = dp.reconcile(&desired(3)).unwrap();
        assert_eq!(first.len(), 1 + 1 + 3);
        assert!(dp.reconcile(&desired(3)).unwrap().is_empty());
        let shrink = dp.reconcile(&desired(1)).unwrap();
        assert_eq!(shrink.len(), 2 + 1, "{shrink:?}");
        assert_eq!(dp.state.policies.len(), 1);
        let gone = dp.reconcile(&DesiredState::default()).unwrap();
        assert!(gone.contains(&Change::DestroyNat));
        assert_eq!(dp.state, ObservedState::default());
    }

    #[test]
    fn failure_midway_then_reconcile_recovers() {
        let mut dp = RecordingDatapath {
            fail_at: Some(1),
            ..Default::default()
        };
        let err = dp.reconcile(&desired(2)).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(dp.log.len(), 1);
        dp.fail_at = None;
        dp.reconcile(&desired(2)).unwrap();
        assert!(dp.reconcile(&desired(2)).unwrap().is_empty());
    }

    #[test]
    fn fake_rejects_what_the_kernel_rejects() {
        let mut dp = RecordingDatapath::new();
        let d = desired(1);
        dp.apply(&[Change::AddPolicy(d.policies[0])]).unwrap();
        let e = dp.apply(&[Change::AddPolicy(d.policies[0])]).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let e = dp.apply(&[Change::AddMappings(vec![])]).unwrap_err();
        assert!(e.to_string().contains("NAT table"), "{e}");
    }
}
