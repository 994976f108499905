//! The whole center on loopback, every hop real HTTP: a router (driven by
//! the test) -> centerd's API -> centerd's HTTP gateway client -> gatewayd
//! (policy driver over the recording datapath) -> tunnel events pushed back
//! to centerd -> operator end -> gateway teardown. Only the router's
//! server part (reached through the tunnel) is absent: without a tunnel that
//! is up, centerd does not send to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_center::api::ApiSettings;
use vpnnat_center::center::{Center, CenterSettings, GatewayEntry};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::config::HttpEndpoint;
use vpnnat_center::gateway::driver::PolicyDriver;
use vpnnat_center::gateway::{self, Gatewayd};
use vpnnat_center::http::{call, call_with};
use vpnnat_center::storage::Storage;
use vpnnat_datapath::RecordingDatapath;
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword, SecretBytes, SecretId};
use vpnnat_proto::messages::{GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    BoundedSet, ClaimantLevel, ClaimantName, GatewayName, IkeIdentity, Phone, RequestContent, TerminalId, TerminalName,
    TerminalNames, UnicastAddr, Urgency,
};

const T: Duration = Duration::from_secs(5);

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_to_gateway_and_back_over_http() {
    let master = FactoryMasterKey::from_array([3; 32]);
    let gw_key = GatewayApiKey::from_array([4; 32]);
    let gw_name = GatewayName::new("gw1").unwrap();
    let (center_l, center_addr) = bind().await;
    let (gw_l, gw_addr) = bind().await;

    // gatewayd, pushing events to centerd.
    let (tx, rx) = unbounded_channel();
    let driver = PolicyDriver::new(
        RecordingDatapath::new(),
        Ipv4Addr::new(198, 51, 100, 21),
        vec!["172.16.0.0/24".parse().unwrap()],
        1000,
        tx,
    );
    let gwd = Arc::new(Gatewayd::new(gw_name.clone(), gw_key.clone(), Box::new(driver)).unwrap());
    tokio::spawn(gateway::run(gw_l, std::future::pending(), gwd.clone()));
    tokio::spawn(gateway::forward_events(
        rx,
        HttpEndpoint::parse(&format!("http://{center_addr}")).unwrap(),
        gw_name.clone(),
        gw_key.clone(),
        T,
    ));

    // centerd.
    let mut st = Storage::open_in_memory().unwrap();
    st.init_pool(&"10.64.0.0/16".parse().unwrap()).unwrap();
    let settings = CenterSettings {
        factory_master_key: master.clone(),
        maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
        maintenance_password_hash: "x".into(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        gateways: vec![GatewayEntry {
            name: gw_name.clone(),
            global_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 21)).unwrap(),
            ike_id: IkeIdentity::new("gw1.center.example").unwrap(),
            api_key: gw_key.clone(),
            slots: 4,
            next_hop: None,
        }],
        replay: ReplayConfig::default(),
        tunnel_up_timeout: Duration::from_millis(200),
    };
    let gws = HttpGateways::new(vec![(gw_name.clone(), gw_addr.clone(), gw_key.clone())], T);
    let center = Arc::new(Center::new(st, settings, gws, HttpRouters::new(8080, T)).unwrap());
    // Loopback stands in for a proxy: the router's address comes from
    // X-Forwarded-For (a loopback address cannot be a tunnel endpoint).
    let api = ApiSettings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
    };
    tokio::spawn(vpnnat_center::api::run_with(
        center_l,
        std::future::pending(),
        center.clone(),
        api,
    ));

    // The router.
    let rng = SystemRandom::new();
    let id = TerminalId::new("router-1").unwrap();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let sid = SecretId::derive(&master, &id).mac_key();
    let secrets = call(
        &center_addr,
        &id,
        &sid,
        &InstallRequest {
            reply_key: kp.public_key(),
        },
        T,
        &rng,
    )
    .await
    .unwrap()
    .open(kp, &id)
    .unwrap();
    let sid2 = secrets.secret_id2().clone();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let info = call(
        &center_addr,
        &id,
        &sid2.mac_key(),
        &GatewayAddressRequest {
            reply_key: kp.public_key(),
        },
        T,
        &rng,
    )
    .await
    .unwrap()
    .open(kp, &id)
    .unwrap();
    assert_eq!(info.gateway_ip.get(), Ipv4Addr::new(198, 51, 100, 21));

    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let details = MaintenanceDetails {
        claimant_name: ClaimantName::new("Hanako").unwrap(),
        terminal_names: TerminalNames::new(vec![TerminalName::new("pc1").unwrap()]).unwrap(),
        phone: Phone::new("0312345678").unwrap(),
        content: RequestContent::new("slow printer").unwrap(),
    };
    let req = MaintenanceRequest::new(
        &rng,
        &sid2,
        &id,
        kp.public_key(),
        ClaimantLevel::General,
        Urgency::Normal,
        &details,
    )
    .unwrap();
    let xff = [("x-forwarded-for", "192.0.2.1, 203.0.113.5")];
    let resp = call_with(&center_addr, &id, &sid2.mac_key(), &req, T, &rng, &xff)
        .await
        .unwrap();
    let grants = resp.open(kp, &id).unwrap();
    let pc1 = grants.as_slice()[0].vpnnat_addr;

    // gatewayd carries the router's tunnel with its three addresses.
    let state = gwd.state().unwrap();
    let t = &state.tunnels()[0];
    assert_eq!(t.terminal_id, id);
    assert_eq!(t.router_ip.get(), Ipv4Addr::new(203, 0, 113, 5));
    assert_eq!(t.slot, 0);
    let addrs: Vec<_> = t.addresses.iter().copied().collect();
    assert!(addrs.contains(&pc1) && addrs.contains(&secrets.server_part_vpnnat()));
    assert_eq!(addrs.len(), 3);

    // The "connecting" event went back to centerd (never "up": no IKE yet).
    let mut seen = false;
    for _ in 0..50 {
        let s = center.store().unwrap().slot_of("router-1").unwrap().unwrap();
        if s.tunnel_state == vpnnat_center::storage::TunnelState::Connecting {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "tunnel event delivered");

    // The gateway loses the tunnel behind centerd's back (as a restarted
    // gatewayd would, after its start-up reconcile wiped its policies):
    // centerd's reconciliation puts it back exactly.
    let before = gwd.state().unwrap();
    let other = HttpGateways::new(vec![(gw_name.clone(), gw_addr.clone(), gw_key.clone())], T);
    vpnnat_center::center::GatewayCommands::tear_down(&other, "gw1", &id)
        .await
        .unwrap();
    assert!(gwd.state().unwrap().tunnels().is_empty());
    let r = center
        .reconcile_gateway("gw1", vpnnat_center::http::unix_now())
        .await
        .unwrap();
    assert_eq!(r.set_up, vec!["router-1".to_string()]);
    assert_eq!(r.added, 3);
    assert_eq!(
        gwd.state().unwrap().tunnels()[0].addresses,
        before.tunnels()[0].addresses
    );

    // Operator ends the request: the gateway drops the tunnel; the pool gets pc1 back.
    let o = center
        .end(resp.acceptance_number.get(), vpnnat_center::http::unix_now())
        .await
        .unwrap();
    assert!(o.vpn_ended);
    assert_eq!(o.released, vec![("pc1".to_string(), pc1.get())]);
    assert!(gwd.state().unwrap().tunnels().is_empty());
    assert_eq!(center.store().unwrap().pool_usage().unwrap().allocated, 2);

    // A restarted gatewayd would be repaired by reconciliation; here it agrees.
    let r = center
        .reconcile_gateway("gw1", vpnnat_center::http::unix_now())
        .await
        .unwrap();
    assert!(r.set_up.is_empty() && r.torn_down.is_empty());
}
