//! Host-kernel test of centerd's host routes: the test thread moves into a
//! fresh network namespace. Needs root (like
//! crates/datapath/tests/host_netns.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;

use vpnnat_center::routes::{KernelRoutes, RouteProgrammer};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// centerd's host routes toward the gateways, in a fresh namespace with a
/// veth pair as the center LAN (created with iproute2, checked with
/// `ip route`).
#[test]
fn host_routes_appear_and_disappear() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let ip_cmd = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ip_cmd(&["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"]);
    ip_cmd(&["link", "set", "lan1", "up"]);
    ip_cmd(&["link", "set", "lan0", "up"]);
    ip_cmd(&["addr", "add", "172.16.0.10/24", "dev", "lan0"]);
    let r = KernelRoutes::open().unwrap();
    let a = [ip("10.64.0.1"), ip("10.64.0.2")];
    r.add(&a, ip("172.16.0.21")).unwrap();
    r.add(&a[..1], ip("172.16.0.21")).unwrap(); // idempotent
    let shown = ip_cmd(&["-4", "route", "show"]);
    assert!(shown.contains("10.64.0.1 via 172.16.0.21 dev lan0"), "{shown}");
    assert!(shown.contains("10.64.0.2 via 172.16.0.21 dev lan0"), "{shown}");
    // Moving to another gateway replaces the route.
    r.add(&a[..1], ip("172.16.0.22")).unwrap();
    assert!(ip_cmd(&["-4", "route", "show"]).contains("10.64.0.1 via 172.16.0.22"));
    r.del(&a[..1], ip("172.16.0.21")).unwrap(); // deleted by its real next hop
                                                // A fresh programmer (centerd restarted) re-adds an existing route.
    let r = KernelRoutes::open().unwrap();
    r.add(&a[1..], ip("172.16.0.21")).unwrap();
    r.del(&a[1..], ip("172.16.0.21")).unwrap();
    r.del(&a[1..], ip("172.16.0.21")).unwrap(); // absent: fine
    let shown = ip_cmd(&["-4", "route", "show"]);
    assert!(!shown.contains("10.64.0."), "{shown}");
}
