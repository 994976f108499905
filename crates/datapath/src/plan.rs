//! Desired vs observed kernel state -> the ordered list of changes that turns
//! one into the other. Pure: unit-tested without root.
//!
//! Ordering keeps traffic safe while the changes go in one by one:
//! 1. policies that must go are removed first (nothing more enters old SAs),
//! 2. then mappings that must go (a revoked host stops being reachable),
//! 3. then the NAT table is created or fixed and new mappings added,
//! 4. then new SAs, and only then the policies that use them,
//! 5. old SAs last, once no policy points at them.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Ipv4Cidr, Mapping, ObservedSa, PolicyId, PolicySpec, SaId, SaSpec};
use crate::nft::NatObserved;

/// The NAT table the router wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatDesired {
    pub center: BTreeSet<Ipv4Cidr>,
    pub mappings: BTreeSet<Mapping>,
}

/// What the project wants in the kernel of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub sas: Vec<SaSpec>,
    pub policies: Vec<PolicySpec>,
    /// `None`: the namespace has no VPNNAT table (e.g. a gateway).
    pub nat: Option<NatDesired>,
    /// SAs another component installed and answers for (gatewayd's IKE
    /// driver), known by id only: kept if present, never added. Re-adding
    /// a vanished one with its old key would restart its sequence numbers,
    /// and AES-GCM must never see an IV twice under one key.
    pub keep_sas: BTreeSet<SaId>,
}

/// What the kernel holds (only the project's own objects matter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedState {
    pub sas: Vec<ObservedSa>,
    pub policies: Vec<PolicySpec>,
    pub nat: Option<NatObserved>,
}

impl ObservedState {
    /// What the kernel listed, reduced to the project's own objects
    /// ([`ObservedSa::is_ours`], [`PolicySpec::is_ours`]).
    pub fn ours(sas: Vec<ObservedSa>, policies: Vec<PolicySpec>, nat: Option<NatObserved>) -> Self {
        Self {
            sas: sas.into_iter().filter(ObservedSa::is_ours).collect(),
            policies: policies.into_iter().filter(PolicySpec::is_ours).collect(),
            nat,
        }
    }
}

/// One kernel change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    DelPolicy(PolicyId),
    DelMappings(Vec<Mapping>),
    /// (Re)create the table atomically with its full content.
    CreateNat {
        center: Vec<Ipv4Cidr>,
        mappings: Vec<Mapping>,
    },
    SetCenter(Vec<Ipv4Cidr>),
    AddMappings(Vec<Mapping>),
    AddSa(SaSpec),
    AddPolicy(PolicySpec),
    UpdatePolicy(PolicySpec),
    DelSa(SaId),
    DestroyNat,
}

impl Change {
    /// A short human description (never includes key material).
    pub fn describe(&self) -> String {
        match self {
            Change::DelPolicy(id) => format!("delete {id}"),
            Change::DelMappings(m) => format!("delete {} mapping(s)", m.len()),
            Change::CreateNat { center, mappings } => {
                format!(
                    "create NAT table ({} center nets, {} mappings)",
                    center.len(),
                    mappings.len()
                )
            }
            Change::SetCenter(c) => format!("set {} center net(s)", c.len()),
            Change::AddMappings(m) => format!("add {} mapping(s)", m.len()),
            Change::AddSa(sa) => format!("add {}", sa.id()),
            Change::AddPolicy(p) => format!("add {}", p.id),
            Change::UpdatePolicy(p) => format!("update {}", p.id),
            Change::DelSa(id) => format!("delete {id}"),
            Change::DestroyNat => "destroy NAT table".to_string(),
        }
    }
}

/// Computes the changes that bring `observed` to `desired`. Objects that
/// are not the project's ([`ObservedState::ours`]) are never touched.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Vec<Change> {
    let mut out = Vec::new();

    let want_pol: BTreeMap<PolicyId, &PolicySpec> = desired.policies.iter().map(|p| (p.id, p)).collect();
    let have_pol: BTreeMap<PolicyId, &PolicySpec> = observed
        .policies
        .iter()
        .filter(|p| p.is_ours())
        .map(|p| (p.id, p))
        .collect();
    let want_sa: BTreeMap<SaId, &SaSpec> = desired.sas.iter().map(|s| (s.id(), s)).collect();
    let have_sa: BTreeSet<SaId> = observed.sas.iter().filter(|s| s.is_ours()).map(|s| s.id).collect();

    // 1. policies that must go
    for id in have_pol.keys() {
        if !want_pol.contains_key(id) {
            out.push(Change::DelPolicy(*id));
        }
    }

    // 2 + 3. NAT
    match (&desired.nat, &observed.nat) {
        (None, Some(_)) => out.push(Change::DestroyNat),
        (None, None) => {}
        (Some(want), None) => out.push(Change::CreateNat {
            center: want.center.iter().copied().collect(),
            mappings: want.mappings.iter().copied().collect(),
        }),
        (Some(want), Some(have)) if !have.consistent => out.push(Change::CreateNat {
            center: want.center.iter().copied().collect(),
            mappings: want.mappings.iter().copied().collect(),
        }),
        (Some(want), Some(have)) => {
            let del: Vec<Mapping> = have.mappings.difference(&want.mappings).copied().collect();
            let add: Vec<Mapping> = want.mappings.difference(&have.mappings).copied().collect();
            if !del.is_empty() {
                out.push(Change::DelMappings(del));
            }
            if want.center != have.center {
                out.push(Change::SetCenter(want.center.iter().copied().collect()));
            }
            if !add.is_empty() {
                out.push(Change::AddMappings(add));
            }
        }
    }

    // 4. SAs, then policies that use them
    for (id, sa) in &want_sa {
        if !have_sa.contains(id) {
            out.push(Change::AddSa((*sa).clone()));
        }
    }
    for (id, p) in &want_pol {
        match have_pol.get(id) {
            None => out.push(Change::AddPolicy(**p)),
            Some(h) if h != p => out.push(Change::UpdatePolicy(**p)),
            Some(_) => {}
        }
    }

    // 5. old SAs
    for id in &have_sa {
        if !want_sa.contains_key(id) && !desired.keep_sas.contains(id) {
            out.push(Change::DelSa(*id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dir, Lifetime, SaCounters, SaKey, REQID_BASE};
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }
    fn pol(dst: &str, dir: Dir, reqid: u32) -> PolicySpec {
        PolicySpec {
            id: PolicyId {
                src: cidr("172.16.0.0/24"),
                dst: cidr(dst),
                dir,
            },
            priority: 1000,
            tmpl_src: ip("198.51.100.21"),
            tmpl_dst: ip("198.51.100.101"),
            reqid,
        }
    }
    fn sa(spi: u32) -> SaSpec {
        SaSpec {
            src: ip("198.51.100.21"),
            dst: ip("198.51.100.101"),
            spi,
            reqid: REQID_BASE + 1,
            key: SaKey::new(vec![9; 36]).unwrap(),
            replay_window: 32,
            encap: None,
            lifetime: Lifetime::default(),
        }
    }
    fn observed_sa(spec: &SaSpec) -> ObservedSa {
        ObservedSa {
            id: spec.id(),
            src: spec.src,
            reqid: spec.reqid,
            encap: None,
            counters: SaCounters::default(),
        }
    }
    fn m(v: &str, r: &str) -> Mapping {
        Mapping {
            vpnnat: ip(v),
            real: ip(r),
        }
    }

    #[test]
    fn empty_to_empty_is_nothing() {
        assert!(plan(&DesiredState::default(), &ObservedState::default()).is_empty());
    }

    #[test]
    fn fresh_install_orders_nat_sa_policy() {
        let desired = DesiredState {
            sas: vec![sa(0x100)],
            policies: vec![pol("10.64.0.5/32", Dir::Out, REQID_BASE + 1)],
            nat: Some(NatDesired {
                center: [cidr("172.16.0.0/24")].into(),
                mappings: [m("10.64.0.5", "192.168.1.10")].into(),
            }),
            ..Default::default()
        };
        let changes = plan(&desired, &ObservedState::default());
        assert!(matches!(changes[0], Change::CreateNat { .. }));
        assert!(matches!(changes[1], Change::AddSa(_)));
        assert!(matches!(changes[2], Change::AddPolicy(_)));
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn converged_state_plans_nothing() {
        let s = sa(0x100);
        let p = pol("10.64.0.5/32", Dir::Out, REQID_BASE + 1);
        let nat = NatDesired {
            center: [cidr("172.16.0.0/24")].into(),
            mappings: [m("10.64.0.5", "192.168.1.10")].into(),
        };
        let desired = DesiredState {
            sas: vec![s.clone()],
            policies: vec![p],
            nat: Some(nat.clone()),
            ..Default::default()
        };
        let observed = ObservedState {
            sas: vec![observed_sa(&s)],
            policies: vec![p],
            nat: Some(NatObserved {
                center: nat.center.clone(),
                mappings: nat.mappings.clone(),
                consistent: true,
            }),
        };
        assert_eq!(plan(&desired, &observed), vec![]);
    }

    #[test]
    fn revoke_removes_policy_before_mapping_and_only_the_diff() {
        let keep = m("10.64.0.5", "192.168.1.10");
        let drop = m("10.64.0.6", "192.168.1.11");
        let p_keep = pol("10.64.0.5/32", Dir::Out, REQID_BASE + 1);
        let p_drop = pol("10.64.0.6/32", Dir::Out, REQID_BASE + 1);
        let desired = DesiredState {
            sas: vec![],
            policies: vec![p_keep],
            nat: Some(NatDesired {
                center: BTreeSet::new(),
                mappings: [keep].into(),
            }),
            ..Default::default()
        };
        let observed = ObservedState {
            sas: vec![],
            policies: vec![p_keep, p_drop],
            nat: Some(NatObserved {
                center: BTreeSet::new(),
                mappings: [keep, drop].into(),
                consistent: true,
            }),
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![Change::DelPolicy(p_drop.id), Change::DelMappings(vec![drop])]
        );
    }

    #[test]
    fn foreign_objects_are_never_touched() {
        let mut foreign = pol("10.0.0.0/8", Dir::Out, 7);
        foreign.priority = 5;
        let observed = ObservedState {
            sas: vec![ObservedSa {
                reqid: 7,
                ..observed_sa(&sa(0x55))
            }],
            policies: vec![foreign],
            nat: None,
        };
        assert!(plan(&DesiredState::default(), &observed).is_empty());
    }

    #[test]
    fn changed_policy_is_updated_and_old_sa_deleted_last() {
        let old = sa(0x100);
        let new = sa(0x200);
        let mut p = pol("10.64.0.5/32", Dir::Out, REQID_BASE + 1);
        let observed = ObservedState {
            sas: vec![observed_sa(&old)],
            policies: vec![p],
            nat: None,
        };
        p.priority = 2000;
        let desired = DesiredState {
            sas: vec![new.clone()],
            policies: vec![p],
            nat: None,
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![Change::AddSa(new), Change::UpdatePolicy(p), Change::DelSa(old.id())]
        );
    }

    #[test]
    fn inconsistent_nat_is_rebuilt_whole() {
        let mp = m("10.64.0.5", "192.168.1.10");
        let desired = DesiredState {
            nat: Some(NatDesired {
                center: BTreeSet::new(),
                mappings: [mp].into(),
            }),
            ..Default::default()
        };
        let observed = ObservedState {
            nat: Some(NatObserved {
                center: BTreeSet::new(),
                mappings: [mp].into(),
                consistent: false,
            }),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![Change::CreateNat {
                center: vec![],
                mappings: vec![mp]
            }]
        );
    }

    #[test]
    fn unwanted_nat_table_is_destroyed_after_policies() {
        let p = pol("10.64.0.5/32", Dir::In, REQID_BASE + 2);
        let observed = ObservedState {
            policies: vec![p],
            nat: Some(NatObserved::default()),
            ..Default::default()
        };
        assert_eq!(
            plan(&DesiredState::default(), &observed),
            vec![Change::DelPolicy(p.id), Change::DestroyNat]
        );
    }

    #[test]
    fn center_change_is_its_own_step() {
        let desired = DesiredState {
            nat: Some(NatDesired {
                center: [cidr("172.16.0.0/24")].into(),
                mappings: BTreeSet::new(),
            }),
            ..Default::default()
        };
        let observed = ObservedState {
            nat: Some(NatObserved {
                consistent: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            plan(&desired, &observed),
            vec![Change::SetCenter(vec![cidr("172.16.0.0/24")])]
        );
    }

    #[test]
    fn kept_sas_stay_and_every_other_owned_one_goes() {
        // A gatewayd killed with live tunnels leaves its SAs in the kernel;
        // the next one keeps only those its IKE driver installed.
        let observed = |spis: &[u32]| ObservedState {
            sas: spis.iter().map(|s| observed_sa(&sa(*s))).collect(),
            ..Default::default()
        };
        let keeping = |spis: &[u32]| DesiredState {
            keep_sas: spis.iter().map(|s| sa(*s).id()).collect(),
            ..Default::default()
        };
        assert_eq!(
            plan(&keeping(&[2, 9]), &observed(&[1, 2, 3])),
            vec![Change::DelSa(sa(1).id()), Change::DelSa(sa(3).id())]
        );
        assert!(plan(&keeping(&[1]), &observed(&[1])).is_empty());
        assert!(plan(&keeping(&[1]), &observed(&[])).is_empty(), "never added");
    }

    #[test]
    fn larval_sas_are_not_ours() {
        let observed = ObservedState::ours(vec![observed_sa(&sa(0)), observed_sa(&sa(5))], vec![], None);
        assert_eq!(observed.sas, vec![observed_sa(&sa(5))]);
        assert!(plan(
            &DesiredState::default(),
            &ObservedState {
                sas: vec![observed_sa(&sa(0))],
                ..Default::default()
            }
        )
        .is_empty());
    }
}
