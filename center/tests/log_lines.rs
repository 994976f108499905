//! Issue 9's log rules, checked on a whole request's life with every line
//! captured: a router installs, asks for a gateway, sends a failure
//! notice, asks for maintenance (centerd -> gatewayd over HTTP, tunnel
//! event back), the operator starts and ends the request. Every line must
//! carry the project's stamp (UTC, milliseconds), every line about the
//! router `terminal=ID`, every line about the request `terminal=ID
//! acceptance=N`, and no line any secret (factory master key, Secret(ID),
//! Secret(ID2), PSK, gateway API key, maintenance password), in hex either
//! case. Its own test binary: the logger is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
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
use vpnnat_proto::messages::{
    FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest,
};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    BoundedSet, ClaimantLevel, ClaimantName, FailureCode, FailureDetail, GatewayName, IkeIdentity, Phone,
    RequestContent, TerminalId, TerminalName, TerminalNames, UnicastAddr, Urgency,
};

const T: Duration = Duration::from_secs(5);

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

/// `2026-11-25T07:01:02.123Z ` at the start.
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 25
        && b[..24].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
        && b[24] == b' '
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_lines_carry_terminal_and_acceptance_and_no_secret() {
    // The daemons' logger (vpnnat_log, as centerd and gatewayd install it),
    // every line captured; info is the daemons' default level.
    assert!(vpnnat_log::init(vpnnat_log::Settings {
        filter: "info".into(),
        format: vpnnat_log::Format::Plain,
        stderr: false,
        sinks: vec![Box::new(|l: &str| LINES.lock().unwrap().push(l.to_owned()))],
    }));

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
    let id = TerminalId::new("home-7").unwrap();
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

    // A failure notice (the router's own event, no request yet).
    let notice = FailureNotice {
        code: FailureCode::Wan,
        detail: FailureDetail::new("disk full").unwrap(),
    };
    call(&center_addr, &id, &sid2.mac_key(), &notice, T, &rng)
        .await
        .unwrap();

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

    let number = resp.acceptance_number.get();
    let _ = grants;

    // The operator starts and ends it (the gateway drops the tunnel).
    center.start(number, vpnnat_center::http::unix_now()).unwrap();
    let o = center.end(number, vpnnat_center::http::unix_now()).await.unwrap();
    assert!(o.vpn_ended);
    // gatewayd's "torn down" event reaches centerd asynchronously.
    for _ in 0..100 {
        // (centerd already freed the slot: "does not hold; ignored")
        if lines()
            .iter()
            .any(|l| l.contains("is down") || l.contains("does not hold"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let lines = lines();
    let all = lines.join("\n");
    assert!(lines.iter().all(|l| stamped(l)), "every line stamped:\n{all}");

    // (a) the router's and the request's lines
    let tid = "terminal=home-7";
    let subject = format!("terminal=home-7 acceptance={number}");
    for l in &lines {
        if l.contains("home-7") {
            assert!(l.contains(tid), "a line about the router without {tid}: {l}");
        }
        if l.contains(tid) && l.to_ascii_lowercase().contains("request") {
            assert!(l.contains(&subject), "a line about the request without {subject}: {l}");
        }
        assert!(!l.contains(&format!("request {number}")), "old style: {l}");
    }
    // the request's story, each step once at least: centerd's and
    // gatewayd's lines
    for step in [
        "maintenance request stored",
        "gateway gw1 commanded",
        "maintenance request accepted",
        "request started by",
        "request ended",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(&subject) && l.contains(step)),
            "no line \"{subject} ... {step}\":\n{all}"
        );
    }
    for step in [
        "installed:",
        "failure notice",
        "VPN gateway gw1",
        "tunnel (203.0.113.5) slot 0: connecting",
        "torn down",
        "gateway gw1: ",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(tid) && l.contains(step)),
            "no line \"{tid} ... {step}\":\n{all}"
        );
    }

    // (b) no secret, in any form the code could print it
    let row = center.store().unwrap().terminal("home-7").unwrap().unwrap();
    let mut secrets = vec![
        master.to_hex().to_string(),
        SecretId::derive(&master, &id).to_hex().to_string(),
        sid2.to_hex().to_string(),
        row.psk_hex.clone(),
        row.secret_id2_hex.clone(),
        gw_key.to_hex().to_string(),
        "maint-pass-1".to_string(),
    ];
    let upper: Vec<String> = secrets.iter().map(|s| s.to_ascii_uppercase()).collect();
    secrets.extend(upper);
    for s in &secrets {
        // a quarter of a key is already too much
        let probe = &s[..s.len().min(16)];
        assert!(!all.contains(probe), "a secret ({}...) in the log:\n{all}", &s[..4]);
    }
}
