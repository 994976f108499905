//! Host-kernel test of gatewayd's policy driver: the test thread moves into
//! a fresh network namespace and the real XFRM policy database is checked
//! as tunnels and addresses come and go. Needs root (like
//! crates/datapath/tests/host_netns.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;

use tokio::sync::mpsc::unbounded_channel;
use vpnnat_datapath::nft::NatTable;
use vpnnat_datapath::xfrm::Xfrm;
use vpnnat_datapath::{Dir, Ipv4Cidr, KernelDatapath, PolicyId, PolicySpec, REQID_BASE};
use vpnnat_gatewayd::driver::{PolicyDriver, TunnelDriver, TunnelSpec};
use vpnnat_proto::keys::{Psk, SecretBytes};
use vpnnat_proto::types::TerminalId;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn owned(x: &mut Xfrm) -> Vec<PolicySpec> {
    x.list_policies()
        .unwrap()
        .into_iter()
        .filter(PolicySpec::is_ours)
        .collect()
}

#[test]
fn kernel_policies_appear_and_disappear() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let center: Ipv4Cidr = "172.16.0.0/24".parse().unwrap();
    let mut x = Xfrm::open().unwrap();
    // Leftovers of an earlier run (ours) and another daemon's policy.
    let leftover = PolicySpec {
        id: PolicyId {
            src: center,
            dst: Ipv4Cidr::host(ip("10.64.7.7")),
            dir: Dir::Out,
        },
        priority: 1000,
        tmpl_src: ip("198.51.100.11"),
        tmpl_dst: ip("203.0.113.99"),
        reqid: REQID_BASE + 9,
    };
    let foreign = PolicySpec {
        id: PolicyId {
            src: center,
            dst: Ipv4Cidr::host(ip("10.99.0.1")),
            dir: Dir::Out,
        },
        reqid: 42,
        ..leftover
    };
    x.add_policy(&leftover).unwrap();
    x.add_policy(&foreign).unwrap();

    let (tx, mut rx) = unbounded_channel();
    let dp = KernelDatapath::open(NatTable::default()).unwrap();
    let mut d = PolicyDriver::new(dp, ip("198.51.100.11"), vec![center], 1000, tx);
    d.reconcile().unwrap();
    assert!(owned(&mut x).is_empty(), "leftover removed");
    assert_eq!(x.list_policies().unwrap().len(), 1, "another daemon's policy untouched");

    let r1 = TerminalId::new("router-1").unwrap();
    d.setup(TunnelSpec {
        terminal_id: r1.clone(),
        slot: 5,
        router_ip: ip("203.0.113.5"),
        psk: Psk::from_array([1; 32]),
    })
    .unwrap();
    assert!(rx.try_recv().is_ok());
    d.add_addresses(&r1, &[ip("10.64.0.1"), ip("10.64.0.2")]).unwrap();
    let p = owned(&mut x);
    assert_eq!(p.len(), 6, "{p:?}");
    assert!(p.iter().all(|p| p.reqid == REQID_BASE + 5));
    let out = p
        .iter()
        .find(|p| p.id.dir == Dir::Out && p.id.dst == Ipv4Cidr::host(ip("10.64.0.1")))
        .unwrap();
    assert_eq!((out.tmpl_src, out.tmpl_dst), (ip("198.51.100.11"), ip("203.0.113.5")));
    assert!(p
        .iter()
        .any(|p| p.id.dir == Dir::Fwd && p.id.src == Ipv4Cidr::host(ip("10.64.0.2")) && p.id.dst == center));

    d.remove_addresses(&r1, &[ip("10.64.0.2")]).unwrap();
    assert_eq!(owned(&mut x).len(), 3);
    d.teardown(&r1).unwrap();
    assert!(owned(&mut x).is_empty(), "nothing of the tunnel remains");
    assert_eq!(x.list_policies().unwrap(), vec![foreign]);
}
