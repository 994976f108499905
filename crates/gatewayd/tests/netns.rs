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

/// Issue 19, item 8: the driver reports each tunnel's last traffic from
/// the kernel's stamps on its policies. lo plays both sides (the center
/// host 172.16.0.10, the routers' VPNNAT addresses) with policy checks
/// turned on (the kernel skips them on lo by default); a plain packet
/// from router-1's address matches its tunnel's `in` policy (the host has
/// no ESP: the kernel stamps the policy, then drops the packet).
#[test]
fn each_tunnels_last_traffic_comes_from_its_policies_in_the_kernel() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let sh = |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success());
    sh(&["link", "set", "lo", "up"]);
    for a in ["172.16.0.10/24", "10.64.0.1/32", "10.64.0.2/32"] {
        sh(&["addr", "add", a, "dev", "lo"]);
    }
    for key in ["disable_policy", "disable_xfrm"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/lo/{key}"), "0").unwrap();
    }
    let center: Ipv4Cidr = "172.16.0.0/24".parse().unwrap();
    let (tx, _rx) = unbounded_channel();
    let dp = KernelDatapath::open(NatTable::default()).unwrap();
    let mut d = PolicyDriver::new(dp, ip("198.51.100.11"), vec![center], 1000, tx);
    for (n, slot, router, addr) in [(1, 5, "203.0.113.5", "10.64.0.1"), (2, 6, "203.0.113.6", "10.64.0.2")] {
        let id = TerminalId::new(format!("router-{n}")).unwrap();
        d.setup(TunnelSpec {
            terminal_id: id.clone(),
            slot,
            router_ip: ip(router),
            psk: Psk::from_array([1; 32]),
        })
        .unwrap();
        d.add_addresses(&id, &[ip(addr)]).unwrap();
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let s = std::net::UdpSocket::bind((ip("10.64.0.1"), 0)).unwrap();
    s.send_to(b"x", (ip("172.16.0.10"), 9)).unwrap();
    let m = d.last_use().unwrap();
    assert_eq!(m.len(), 2, "{m:?}");
    // The kernel stamps with its coarse clock (a tick behind at most).
    assert!(m[&5] + 1 >= before, "router-1's tunnel carried the packet: {m:?}");
    assert_eq!(m[&6], 0, "router-2's tunnel carried nothing: {m:?}");
}
