//! Host-kernel tests (no ESP needed): each test moves its own thread into a
//! fresh network namespace and drives the real kernel's nftables, XFRM
//! policy database and rtnetlink through the library. Needs root: skipped
//! without it, failed instead under VPNNAT_REQUIRE_ROOT=1 (vpnnat_testkit::netns).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use vpnnat_datapath::nft::{NatTable, Nft};
use vpnnat_datapath::plan::NatDesired;
use vpnnat_datapath::route::Route;
use vpnnat_datapath::xfrm::Xfrm;
use vpnnat_datapath::{
    Change, Datapath, DatapathError, DesiredState, Dir, Ipv4Cidr, KernelDatapath, Mapping, PolicyId, PolicySpec,
    REQID_BASE,
};

fn m(i: u32) -> Mapping {
    Mapping {
        vpnnat: Ipv4Addr::from(0x0a40_0000 + i),
        real: Ipv4Addr::from(0xc0a8_0100 + i),
    }
}

fn center() -> Ipv4Cidr {
    "172.16.0.0/24".parse().unwrap()
}

fn policy(vpnnat: Ipv4Addr, dir: Dir, reqid: u32) -> PolicySpec {
    let (src, dst) = match dir {
        Dir::Out => (Ipv4Cidr::host(vpnnat), center()),
        _ => (center(), Ipv4Cidr::host(vpnnat)),
    };
    PolicySpec {
        id: PolicyId { src, dst, dir },
        priority: 1000,
        tmpl_src: Ipv4Addr::new(198, 51, 100, 21),
        tmpl_dst: Ipv4Addr::new(198, 51, 100, 101),
        reqid,
    }
}

fn ruleset_is_empty() -> bool {
    let rs = nftables::helper::get_current_ruleset().unwrap();
    rs.objects.iter().all(|o| {
        matches!(
            o,
            nftables::schema::NfObject::ListObject(nftables::schema::NfListObject::MetainfoObject(_))
        )
    })
}

#[test]
fn nat_table_elements_round_trip_and_leave_nothing() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let t = NatTable::default();
    let nft = Nft::new(t.clone());
    assert_eq!(nft.observe().unwrap(), None);
    nft.apply("create", &t.create(&[center()], &[m(1)])).unwrap();
    nft.apply("add", &t.add_mappings(&[m(2), m(3)])).unwrap();
    let o = nft.observe().unwrap().unwrap();
    assert!(o.consistent);
    assert_eq!(o.mappings, BTreeSet::from([m(1), m(2), m(3)]));
    assert_eq!(o.center, BTreeSet::from([center()]));

    nft.apply("remove", &t.remove_mappings(&[m(2)])).unwrap();
    assert_eq!(nft.observe().unwrap().unwrap().mappings, BTreeSet::from([m(1), m(3)]));

    // Re-creating replaces atomically, whatever was there.
    nft.apply("create", &t.create(&[], &[m(7)])).unwrap();
    let o = nft.observe().unwrap().unwrap();
    assert_eq!(o.mappings, BTreeSet::from([m(7)]));
    assert!(o.center.is_empty());

    nft.apply("destroy", &t.destroy()).unwrap();
    nft.apply("destroy twice", &t.destroy()).unwrap();
    assert!(ruleset_is_empty());
}

#[test]
fn failed_nat_transaction_changes_nothing() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let t = NatTable::default();
    let nft = Nft::new(t.clone());
    nft.apply("create", &t.create(&[center()], &[m(1)])).unwrap();
    // m(1) exists, m(9) does not: the whole transaction must fail.
    let err = nft.apply("remove", &t.remove_mappings(&[m(1), m(9)])).unwrap_err();
    assert!(matches!(err, DatapathError::Nft { .. }), "{err}");
    assert!(err.to_string().contains("remove"), "{err}");
    assert_eq!(nft.observe().unwrap().unwrap().mappings, BTreeSet::from([m(1)]));
    // Same key with another value is refused too.
    let clash = Mapping {
        vpnnat: m(1).vpnnat,
        real: Ipv4Addr::new(192, 168, 1, 200),
    };
    assert!(nft.apply("add", &t.add_mappings(&[clash])).is_err());
    assert_eq!(nft.observe().unwrap().unwrap().mappings, BTreeSet::from([m(1)]));
}

#[test]
fn xfrm_policies_batch_add_list_delete() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let mut x = Xfrm::open().unwrap();
    x.set_hash_thresholds(24, 24).unwrap();
    let ps: Vec<PolicySpec> = (1..=500)
        .flat_map(|i| {
            [
                policy(m(i).vpnnat, Dir::Out, REQID_BASE + 3),
                policy(m(i).vpnnat, Dir::In, REQID_BASE + 3),
            ]
        })
        .collect();
    x.add_policies(&ps).unwrap();
    let listed: BTreeSet<PolicyId> = x.list_policies().unwrap().iter().map(|p| p.id).collect();
    assert_eq!(listed, ps.iter().map(|p| p.id).collect());
    let got = x
        .list_policies()
        .unwrap()
        .into_iter()
        .find(|p| p.id == ps[0].id)
        .unwrap();
    assert_eq!(got, ps[0]);

    // Adding one that exists names it in the error.
    let err = x.add_policies(&ps[10..11]).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert!(err.to_string().contains("10.64.0.6/32"), "{err}");

    let ids: Vec<PolicyId> = ps.iter().map(|p| p.id).collect();
    x.delete_policies(&ids).unwrap();
    assert!(x.list_policies().unwrap().is_empty());
    let err = x.delete_policy(&ids[0]).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
}

#[test]
fn reconcile_in_kernel_converges_and_spares_foreign_policies() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let mut dp = KernelDatapath::open(NatTable::default()).unwrap();
    // A policy of some other IKE daemon on the same box.
    let foreign = policy(Ipv4Addr::new(10, 99, 0, 1), Dir::Out, 42);
    dp.xfrm.add_policy(&foreign).unwrap();

    let desired = |n: u32| DesiredState {
        sas: vec![],
        policies: (1..=n)
            .flat_map(|i| {
                [
                    policy(m(i).vpnnat, Dir::Out, REQID_BASE + 1),
                    policy(m(i).vpnnat, Dir::In, REQID_BASE + 1),
                ]
            })
            .collect(),
        nat: Some(NatDesired {
            center: [center()].into(),
            mappings: (1..=n).map(m).collect(),
        }),
        ..Default::default()
    };
    let first = dp.reconcile(&desired(5)).unwrap();
    assert_eq!(first.len(), 1 + 10);
    assert!(
        dp.reconcile(&desired(5)).unwrap().is_empty(),
        "second reconcile must be a no-op"
    );

    let shrink = dp.reconcile(&desired(2)).unwrap();
    assert_eq!(shrink.iter().filter(|c| matches!(c, Change::DelPolicy(_))).count(), 6);
    assert!(shrink.contains(&Change::DelMappings(vec![m(3), m(4), m(5)])));
    let o = dp.observe().unwrap();
    assert_eq!(o.policies.len(), 4);
    assert_eq!(o.nat.unwrap().mappings.len(), 2);

    dp.reconcile(&DesiredState::default()).unwrap();
    let o = dp.observe().unwrap();
    assert!(o.policies.is_empty() && o.nat.is_none());
    assert!(ruleset_is_empty());
    // The foreign policy is still there.
    assert_eq!(dp.xfrm.list_policies().unwrap(), vec![foreign]);
}

#[test]
fn rtnetlink_link_address_route() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let mut r = Route::open().unwrap();
    assert!(!r.link("lo").unwrap().up);
    r.set_up("lo", true).unwrap();
    assert!(r.link("lo").unwrap().up);
    r.add_address("lo", Ipv4Addr::new(10, 9, 8, 7), 24).unwrap();
    let err = r.add_address("lo", Ipv4Addr::new(10, 9, 8, 7), 24).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    r.add_route("10.64.0.0/16".parse().unwrap(), Some(Ipv4Addr::new(10, 9, 8, 1)), None)
        .unwrap();
    r.del_route("10.64.0.0/16".parse().unwrap(), Some(Ipv4Addr::new(10, 9, 8, 1)), None)
        .unwrap();
    r.del_address("lo", Ipv4Addr::new(10, 9, 8, 7), 24).unwrap();
    let err = r.link("nosuchdev0").unwrap_err();
    assert!(err.to_string().contains("nosuchdev0"), "{err}");
    // Unknown device named in the error; nothing is half-done.
    let err = r.add_address("nosuchdev0", Ipv4Addr::new(10, 1, 1, 1), 24).unwrap_err();
    assert!(matches!(err, DatapathError::Route { .. }), "{err}");
}

/// Whether a TCP connect to `addr` succeeds within 300 ms.
fn connects(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok()
}

#[test]
fn wan_guard_drops_new_connections_from_the_wan_and_goes_cleanly() {
    use vpnnat_datapath::nft::guard::WanGuard;
    vpnnat_testkit::fresh_netns_or_skip!();
    // lo plays the WAN: a connection to a local listener arrives on it.
    std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    assert!(connects(addr), "no guard: the listener answers");
    let nft = Nft::new(NatTable::default());
    let g = WanGuard::new("lo");
    nft.apply("guard", &g.create()).unwrap();
    assert!(!connects(addr), "guarded: a new connection from the WAN is dropped");
    // Re-creating is atomic and idempotent; a guard on another interface
    // leaves this one alone.
    nft.apply("guard again", &g.create()).unwrap();
    assert!(!connects(addr));
    nft.apply("other wan", &WanGuard::new("wan9").create()).unwrap();
    assert!(connects(addr));
    nft.apply("destroy", &g.destroy()).unwrap();
    nft.apply("destroy twice", &g.destroy()).unwrap();
    assert!(ruleset_is_empty());
}
