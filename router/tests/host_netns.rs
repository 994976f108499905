//! Host-kernel tests of the router's NAT/filter and policy programming and
//! of reconciliation after a crash at any point of a grant or a release.
//! Each test moves its own thread into a fresh network namespace (needs
//! root; vpnnat_testkit::netns says what happens without) and runs a
//! single-threaded runtime on it: the datapath's netlink sockets and the
//! `nft` processes it spawns must all live in that namespace, never the
//! host's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vpnnat_datapath::nft::NatTable;
use vpnnat_datapath::{plan, Datapath, DesiredState, KernelDatapath, PolicyId};
use vpnnat_proto::keys::{Psk, SecretBytes, SecretId2};
use vpnnat_proto::types::{ClaimantLevel, TerminalName, Urgency};
use vpnnat_router::config::Config;
use vpnnat_router::daemon::{Parts, Router};
use vpnnat_router::ike_responder::StaticResponder;
use vpnnat_router::logic::{desired_state, Identity};
use vpnnat_router::state::{Gateway, HostGrant, Installation, RequestRecord, RequestState, RouterState, StateStore};

fn config(dir: &Path) -> Arc<Config> {
    let text = format!(
        r#"
terminal_id = "router-1"
center_url = "http://127.0.0.1:9"
factory_secret = "{}"
state_dir = "{}"
dns = false
[wan]
interface = "eth0"
address = "198.51.100.101/24"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
"#,
        "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545",
        dir.display()
    );
    Arc::new(Config::parse(&text, Path::new("t.toml")).unwrap())
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("routerd-netns-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn installed() -> RouterState {
    RouterState {
        installation: Some(Installation {
            psk: Psk::from_array([3; 32]),
            secret_id2: SecretId2::from_array([2; 32]),
            maintenance_password_hash: vpnnat_proto::password::PasswordHash::create(
                "maintenance",
                1000,
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
            server_part_vpnnat: Ipv4Addr::new(10, 64, 0, 1),
            router_part_vpnnat: Ipv4Addr::new(10, 64, 0, 2),
        }),
        gateway: Some(Gateway {
            ip: Ipv4Addr::new(198, 51, 100, 21),
            ike_id: "gw1".into(),
            center_networks: vec!["172.16.0.0/24".parse().unwrap()],
            initiation: Default::default(),
        }),
        ..RouterState::default()
    }
}

fn with_grant(mut s: RouterState, name: &str, real: u8, vpnnat: u8) -> RouterState {
    s.hosts.insert(
        TerminalName::new(name).unwrap(),
        HostGrant {
            real: Ipv4Addr::new(192, 168, 1, real),
            vpnnat: Ipv4Addr::new(10, 64, 1, vpnnat),
            requests: BTreeSet::from([1]),
        },
    );
    // The open request that granted it (a host without one is settled
    // away at start: see `logic::settle`).
    let r = s.requests.entry(1).or_insert_with(|| RequestRecord {
        claimant_name: "A".into(),
        claimant_level: ClaimantLevel::General,
        urgency: Urgency::High,
        terminals: Vec::new(),
        accepted_at: 1,
        state: RequestState::Waiting,
        failure: None,
        ends_at: None,
        idle_timeout_secs: None,
        end_unsent: false,
    });
    r.terminals.push(TerminalName::new(name).unwrap());
    s
}

fn kernel() -> KernelDatapath {
    KernelDatapath::open(NatTable::default()).unwrap()
}

/// The kernel holds exactly `want` (mappings, center set, policies).
fn assert_kernel_is(dp: &mut KernelDatapath, want: &DesiredState) {
    let o = dp.observe().unwrap();
    let nat = o.nat.expect("NAT table present");
    assert!(nat.consistent);
    let w = want.nat.as_ref().unwrap();
    assert_eq!(nat.mappings, w.mappings);
    assert_eq!(nat.center, w.center);
    let have: BTreeSet<PolicyId> = o.policies.iter().map(|p| p.id).collect();
    let wanted: BTreeSet<PolicyId> = want.policies.iter().map(|p| p.id).collect();
    assert_eq!(have, wanted);
    for p in &o.policies {
        assert!(want.policies.contains(p), "policy differs: {p:?}");
    }
}

async fn restart(cfg: &Arc<Config>) -> Arc<Router> {
    Router::new(
        cfg.clone(),
        Parts {
            datapath: Box::new(kernel()),
            ike: Box::new(StaticResponder::default()),
            retry_initial: Duration::from_millis(10),
            health: vpnnat_router::health::HealthSettings::default(),
            center_source: None,
        },
    )
    .await
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn grants_program_nat_filter_and_policies() {
    vpnnat_testkit::fresh_netns_or_skip!();
    let dir = tmpdir("program");
    let cfg = config(&dir);
    let id = Identity::from_config(&cfg);
    let s = with_grant(with_grant(installed(), "pc1", 10, 10), "nas", 11, 11);
    StateStore::new(cfg.state_file()).save(&s).unwrap();
    let want = desired_state(&id, &s, vec![]);
    assert_eq!(want.policies.len(), 4 * 3);
    runtime().block_on(async {
        let r = restart(&cfg).await;
        assert_eq!(r.datapath_error().await, None);
    });
    let mut dp = kernel();
    assert_kernel_is(&mut dp, &want);
    // The ruleset as nft prints it: both maps, the granted set, the filter.
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", "vpnnat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.64.1.10 : 192.168.1.10"), "{text}");
    assert!(text.contains("192.168.1.11 : 10.64.1.11"), "{text}");
    assert!(text.contains("meta ipsec exists drop"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A crash ("kill -9") after the state file was written and after any
/// prefix of the kernel changes: the restart converges to the state file.
fn crash_at_every_point(tag: &str, before: RouterState, after: RouterState) {
    vpnnat_testkit::fresh_netns_or_skip!();
    let dir = tmpdir(tag);
    let cfg = config(&dir);
    let id = Identity::from_config(&cfg);
    let from = desired_state(&id, &before, vec![]);
    let to = desired_state(&id, &after, vec![]);
    let mut dp = kernel();
    dp.reconcile(&from).unwrap();
    let changes = plan(&to, &dp.observe().unwrap());
    assert!(!changes.is_empty());
    for k in 0..=changes.len() {
        // Back to `before`, then the crash: `after` saved, k changes applied.
        dp.reconcile(&from).unwrap();
        let partial = plan(&to, &dp.observe().unwrap());
        dp.apply(&partial[..k.min(partial.len())]).unwrap();
        StateStore::new(cfg.state_file()).save(&after).unwrap();
        runtime().block_on(async {
            let r = restart(&cfg).await;
            assert_eq!(r.datapath_error().await, None, "crash point {k}");
        });
        assert_kernel_is(&mut dp, &to);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn crash_during_a_grant_converges() {
    let before = with_grant(installed(), "pc1", 10, 10);
    let after = with_grant(before.clone(), "nas", 11, 11);
    crash_at_every_point("grant", before, after);
}

#[test]
fn crash_during_a_release_converges() {
    let after = with_grant(installed(), "pc1", 10, 10);
    let before = with_grant(after.clone(), "nas", 11, 11);
    crash_at_every_point("release", before, after);
}

#[test]
fn crash_during_vpn_end_converges() {
    let before = with_grant(with_grant(installed(), "pc1", 10, 10), "nas", 11, 11);
    let mut after = installed();
    after.gateway = None;
    crash_at_every_point("vpn-end", before, after);
}

#[test]
fn state_saved_before_the_crash_is_not_lost() {
    // Crash *before* the state file was written: the kernel keeps what the
    // old file says, nothing more (the center never got its answer either).
    vpnnat_testkit::fresh_netns_or_skip!();
    let dir = tmpdir("before-save");
    let cfg = config(&dir);
    let id = Identity::from_config(&cfg);
    let s = with_grant(installed(), "pc1", 10, 10);
    StateStore::new(cfg.state_file()).save(&s).unwrap();
    runtime().block_on(async {
        restart(&cfg).await;
    });
    let mut dp = kernel();
    assert_kernel_is(&mut dp, &desired_state(&id, &s, vec![]));
    let _ = std::fs::remove_dir_all(dir);
}

/// What `ip -j` says, as JSON.
fn ip_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("ip").arg("-j").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn boot_network_brings_up_links_addresses_and_the_default_route_twice() {
    vpnnat_testkit::fresh_netns_or_skip!();
    // A veth pair stands in for the two NICs (no dummy module needed).
    let st = std::process::Command::new("ip")
        .args(["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
        .status()
        .unwrap();
    assert!(st.success());
    let dir = tmpdir("boot-net");
    let text = format!(
        r#"
terminal_id = "router-1"
center_url = "http://127.0.0.1:9"
factory_secret = "{}"
state_dir = "{}"
[wan]
interface = "eth0"
address = "198.51.100.101/24"
gateway = "198.51.100.1"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
"#,
        "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545",
        dir.display()
    );
    let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
    // A restarted routerd finds it all in place: no error the second time.
    for _ in 0..2 {
        vpnnat_router::init::network(&cfg).unwrap();
    }
    for (dev, addr) in [("lo", "127.0.0.1"), ("eth0", "198.51.100.101"), ("eth1", "192.168.1.1")] {
        let v = ip_json(&["addr", "show", "dev", dev]);
        let flags = v[0]["flags"].as_array().unwrap();
        assert!(flags.iter().any(|f| f == "UP"), "{dev}: {v}");
        let addrs: Vec<&str> = v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| a["local"].as_str().unwrap())
            .collect();
        assert_eq!(addrs, [addr], "{dev}");
    }
    let eth1 = ip_json(&["addr", "show", "dev", "eth1"]);
    assert_eq!(eth1[0]["addr_info"][0]["prefixlen"], 24);
    let routes = ip_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "198.51.100.1", "{routes}");
    assert_eq!(routes[0]["dev"], "eth0");
    // A missing interface is an error that names it.
    let mut bad = cfg;
    bad.lan.name = "eth9".into();
    let e = vpnnat_router::init::network(&bad).unwrap_err();
    assert!(e.to_string().contains("eth9"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
