//! The whole center on loopback, every hop real HTTP: a router (driven by
//! the test) -> centerd's API -> centerd's HTTP gateway client -> gatewayd
//! (policy driver over the recording datapath) -> tunnel events pushed back
//! to centerd -> operator end -> gateway teardown. Only the router's
//! server part (reached through the tunnel) is absent: without a tunnel that
//! is up, centerd does not send to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Stack, T};
use std::net::Ipv4Addr;
use std::time::Duration;

use ring::rand::SystemRandom;
use vpnnat_center::clients::HttpGateways;
use vpnnat_center::http::call_with;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{MaintenanceDetails, MaintenanceRequest};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, Phone, RequestContent, TerminalId, TerminalName, TerminalNames, Urgency,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_to_gateway_and_back_over_http() {
    let stack = Stack::start().await;

    // The router.
    let rng = SystemRandom::new();
    let id = TerminalId::new("router-1").unwrap();
    let (secrets, _) = stack.install(&id, &rng).await;
    let sid2 = secrets.secret_id2().clone();
    let Stack {
        center,
        center_addr,
        gw_addr,
        gw_key,
        gw_name,
        gwd,
        ..
    } = stack;

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
