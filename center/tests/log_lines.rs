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

mod common;

use common::{Stack, T};
use std::sync::Mutex;
use std::time::Duration;

use ring::rand::SystemRandom;
use vpnnat_center::http::{call, call_with};
use vpnnat_proto::keys::{SecretBytes, SecretId};
use vpnnat_proto::messages::{FailureNotice, MaintenanceDetails, MaintenanceRequest};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, FailureCode, FailureDetail, Phone, RequestContent, TerminalId, TerminalName,
    TerminalNames, Urgency,
};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
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

    let stack = Stack::start().await;

    // The router.
    let rng = SystemRandom::new();
    let id = TerminalId::new("home-7").unwrap();
    let (secrets, _) = stack.install(&id, &rng).await;
    let sid2 = secrets.secret_id2().clone();
    let Stack {
        center,
        center_addr,
        gw_key,
        master,
        ..
    } = stack;

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
