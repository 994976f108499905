//! Floods each of centerd's and gatewayd's listeners (operator UI, router
//! API, gatewayd API) on the loopback with idle and slow connections and
//! oversized requests, and checks that a legitimate client still gets its
//! answers, that the flood is refused or bounded, and that the server
//! closes the connections it held. Prints the figures
//! (`cargo test -p vpnnat-center --test limits -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_center::center::{Center, CenterSettings, GatewayEntry};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::http::{Limits, HEADER_TIMEOUT};
use vpnnat_center::password::PasswordHash;
use vpnnat_center::storage::Storage;
use vpnnat_center::ui::{self, UiSettings};
use vpnnat_datapath::RecordingDatapath;
use vpnnat_gatewayd::driver::PolicyDriver;
use vpnnat_gatewayd::{self as gateway, Gatewayd};
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword, SecretBytes};
use vpnnat_proto::paths;
use vpnnat_proto::types::{BoundedSet, GatewayName, IkeIdentity, UnicastAddr};
use vpnnat_testkit::flood::{self, Flood};

fn center() -> Arc<Center<HttpGateways, HttpRouters>> {
    let gw_key = GatewayApiKey::from_array([4; 32]);
    let mut st = Storage::open_in_memory().unwrap();
    st.init_pool(&"10.64.0.0/16".parse().unwrap()).unwrap();
    let settings = CenterSettings {
        factory_master_key: FactoryMasterKey::from_array([3; 32]),
        maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
        maintenance_password_hash: "x".into(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        gateways: vec![GatewayEntry {
            name: GatewayName::new("gw1").unwrap(),
            global_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 21)).unwrap(),
            ike_id: IkeIdentity::new("gw1.center.example").unwrap(),
            api_key: gw_key.clone(),
            slots: 4,
            next_hop: None,
        }],
        replay: ReplayConfig::default(),
        // Simulated routers run no IKE: answered without waiting for a tunnel.
        tunnel_up_timeout: Duration::ZERO,
        max_open_requests: vpnnat_center::center::DEFAULT_MAX_OPEN_REQUESTS,
        max_grant_lifetime_secs: vpnnat_center::limits::DEFAULT_MAX_LIFETIME_SECS,
        idle_timeout_secs: None,
    };
    let gws = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), "127.0.0.1:9".into(), gw_key)],
        Duration::from_secs(1),
    );
    Arc::new(Center::new(st, settings, gws, HttpRouters::new(8080, Duration::from_secs(1))).unwrap())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: limits\r\nConnection: close\r\n\r\n")
}

async fn flood_and_check(
    name: &str,
    target: std::net::SocketAddr,
    limits: Limits,
    legit: String,
    oversized_path: &str,
) {
    let f = Flood {
        target,
        legit,
        legit_status: 200,
        legit_count: 20,
        sources: 4,
        idle_per_source: 150,
        slow_per_source: 50,
        oversized: 20,
        oversized_path: oversized_path.to_owned(),
        wait_for_close: HEADER_TIMEOUT + Duration::from_secs(5),
    };
    let r = flood::run(&f).await;
    println!("flood {name}: {r}");
    // Every legitimate request answered, before and during the flood.
    assert_eq!(
        (r.legit_ok_before, r.legit_ok_during),
        (f.legit_count, f.legit_count),
        "{r}"
    );
    // At most the per-address cap held from each flood address.
    assert!(r.held <= usize::from(f.sources) * limits.max_per_source, "{r}");
    assert!(r.held <= limits.max_connections, "{r}");
    assert_eq!(r.held + r.refused, r.attempted, "{r}");
    assert_eq!(r.oversized_413, f.oversized, "{r}");
    // Idle and slow clients are let go by the header time-out.
    assert_eq!(r.closed_by_server, r.held, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_survives_a_flood_and_serves_the_legitimate_client() {
    let c = center();
    let ui_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ui_a, api_a, gw_a) = (
        ui_l.local_addr().unwrap(),
        api_l.local_addr().unwrap(),
        gw_l.local_addr().unwrap(),
    );
    let settings = UiSettings {
        operator_hashes: vec![PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: None,
        throttle: Default::default(),
        operator_networks: Vec::new(),
        hash_slots: vpnnat_center::ui::DEFAULT_HASH_SLOTS,
        account_iterations: 1000,
        totp_required_roles: Vec::new(),
        clock: vpnnat_center::ui::Clock::system(),
    };
    tokio::spawn(ui::run(ui_l, std::future::pending(), c.clone(), settings));
    tokio::spawn(vpnnat_center::api::run(api_l, std::future::pending(), c.clone()));
    let (tx, _rx) = unbounded_channel();
    let driver = PolicyDriver::new(
        RecordingDatapath::new(),
        Ipv4Addr::new(198, 51, 100, 21),
        vec!["172.16.0.0/24".parse().unwrap()],
        1000,
        tx,
    );
    let gwd = Arc::new(
        Gatewayd::new(
            GatewayName::new("gw1").unwrap(),
            GatewayApiKey::from_array([4; 32]),
            Box::new(driver),
        )
        .unwrap(),
    );
    tokio::spawn(gateway::run(gw_l, std::future::pending(), gwd));
    // One after the other: the figures of one listener are its own.
    flood_and_check("centerd operator UI", ui_a, Limits::UI, get("/login"), "/login").await;
    flood_and_check(
        "centerd router API",
        api_a,
        Limits::ROUTER_API,
        get("/healthz"),
        paths::center::INSTALL,
    )
    .await;
    flood_and_check(
        "gatewayd API",
        gw_a,
        Limits::GATEWAY_API,
        get("/healthz"),
        paths::gateway::STATE,
    )
    .await;
}
