//! Full exchanges through encode -> decode -> respond -> open, and the
//! validation rules of each message.

use super::*;
use crate::auth::{MemoryNonceStore, ReplayConfig, ReplayGuard};
use crate::decode::{decode_request, decode_response, encode_request, encode_response, Verified};
use crate::keys::{GatewayApiKey, MacKey, SecretId};
use ring::rand::SystemRandom;
use std::net::Ipv4Addr;

const NOW: u64 = 1_800_000_000;

fn tid() -> TerminalId {
    TerminalId::new("router-1").unwrap()
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> UnicastAddr {
    UnicastAddr::new(Ipv4Addr::new(a, b, c, d)).unwrap()
}

fn guard() -> ReplayGuard<MemoryNonceStore> {
    ReplayGuard::new(MemoryNonceStore::new(100), ReplayConfig::default())
}

/// Sends `cmd` from `principal` with `key`, decodes it on the other side,
/// answers with `answer(verified)`, and returns the decoded answer.
fn exchange<C: Command>(
    cmd: &C,
    principal: &C::Principal,
    key: &MacKey,
    answer: impl FnOnce(&Verified<C>) -> C::Response,
) -> (Verified<C>, C::Response) {
    let rng = SystemRandom::new();
    let out = encode_request(cmd, principal, key, NOW, &rng).unwrap();
    let mut g = guard();
    let v: Verified<C> = decode_request(&mut g, out.path, &out.headers, &out.body, NOW + 1, |_, _| {
        Some(key.clone())
    })
    .unwrap();
    let resp = answer(&v);
    let wire = encode_response(&v, &resp, key, NOW + 1, &rng).unwrap();
    let back = decode_response::<C>(&out, key, &wire.headers, &wire.body).unwrap();
    (v, back)
}

fn secrets() -> InstallSecrets {
    InstallSecrets::new(
        Psk::from_array([1; 32]),
        SecretId2::from_array([2; 32]),
        MaintenancePassword::new("maint-pass-123").unwrap(),
        ip(10, 64, 0, 1),
        ip(10, 64, 0, 2),
    )
    .unwrap()
}

#[test]
fn install_exchange() {
    let rng = SystemRandom::new();
    let master = crate::keys::FactoryMasterKey::from_array([9; 32]);
    let sid = SecretId::derive(&master, &tid());
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let req = InstallRequest {
        reply_key: kp.public_key(),
        proof: None,
    };
    let (v, resp) = exchange(&req, &tid(), &sid.mac_key(), |v| {
        secrets()
            .seal(&SystemRandom::new(), v.principal(), &v.command().reply_key)
            .unwrap()
    });
    assert_eq!(v.command(), &req);
    let got = resp.open(kp, &tid()).unwrap();
    assert_eq!(got.psk().expose_secret(), &[1; 32]);
    assert_eq!(got.secret_id2().expose_secret(), &[2; 32]);
    assert_eq!(got.maintenance_password().expose_secret(), "maint-pass-123");
    assert_eq!(got.server_part_vpnnat(), ip(10, 64, 0, 1));
    assert_eq!(got.router_part_vpnnat(), ip(10, 64, 0, 2));
    // Nothing secret in the wire body or in Debug output.
    let body = serde_json::to_string(&resp).unwrap();
    assert!(!body.contains("maint-pass"));
    assert!(!format!("{got:?}").contains("maint-pass"));
}

#[test]
fn install_response_for_another_router_does_not_open() {
    let rng = SystemRandom::new();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let resp = secrets()
        .seal(&rng, &TerminalId::new("router-2").unwrap(), &kp.public_key())
        .unwrap();
    assert_eq!(resp.open(kp, &tid()).unwrap_err(), ProtoError::BadMac);
}

#[test]
fn install_secrets_rules() {
    let same = InstallSecrets::new(
        Psk::from_array([1; 32]),
        SecretId2::from_array([2; 32]),
        MaintenancePassword::new("maint-pass-123").unwrap(),
        ip(10, 64, 0, 1),
        ip(10, 64, 0, 1),
    );
    assert!(same.is_err());
    let same_key = InstallSecrets::new(
        Psk::from_array([1; 32]),
        SecretId2::from_array([1; 32]),
        MaintenancePassword::new("maint-pass-123").unwrap(),
        ip(10, 64, 0, 1),
        ip(10, 64, 0, 2),
    );
    assert!(same_key.is_err());
    // A sealed payload with an extra field or a short key is refused.
    let json = |extra: &str, psk: &str| {
        format!(
            r#"{{"psk":"{psk}","secret_id2":"{}","maintenance_password":"maint-pass-123","server_part_vpnnat":"10.64.0.1","router_part_vpnnat":"10.64.0.2"{extra}}}"#,
            crate::b64::encode(&[2; 32])
        )
    };
    let good_psk = crate::b64::encode(&[1; 32]);
    assert!(serde_json::from_str::<InstallSecrets>(&json("", &good_psk)).is_ok());
    assert!(serde_json::from_str::<InstallSecrets>(&json(r#","x":1"#, &good_psk)).is_err());
    let short = crate::b64::encode(&[1; 31]);
    assert!(serde_json::from_str::<InstallSecrets>(&json("", &short)).is_err());
}

#[test]
fn failure_exchange() {
    let key = SecretId2::from_array([2; 32]).mac_key();
    let n = FailureNotice {
        code: FailureCode::ServerPart,
        detail: FailureDetail::new("httpd not answering").unwrap(),
    };
    let (v, ack) = exchange(&n, &tid(), &key, |_| Ack {});
    assert_eq!(v.command(), &n);
    assert_eq!(ack, Ack {});
    let wire = serde_json::to_string(&n).unwrap();
    assert_eq!(wire, r#"{"code":"server_part","detail":"httpd not answering"}"#);
}

fn gateway_info() -> GatewayInfo {
    GatewayInfo {
        gateway_ip: ip(198, 51, 100, 10),
        gateway_ike_id: IkeIdentity::new("gw-a.center.example").unwrap(),
        center_networks: BoundedSet::new(vec!["10.64.0.0/16".parse().unwrap(), "172.30.0.0/24".parse().unwrap()])
            .unwrap(),
        initiation: InitiationMode::Gateway,
    }
}

#[test]
fn gateway_address_exchange() {
    let rng = SystemRandom::new();
    let key = SecretId2::from_array([2; 32]).mac_key();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let req = GatewayAddressRequest {
        reply_key: kp.public_key(),
        initiation: InitiationPreference::Auto,
        wan: None,
    };
    let (_, resp) = exchange(&req, &tid(), &key, |v| {
        gateway_info()
            .seal(&SystemRandom::new(), v.principal(), &v.command().reply_key)
            .unwrap()
    });
    assert_eq!(resp.open(kp, &tid()).unwrap(), gateway_info());
    let body = serde_json::to_string(&resp).unwrap();
    assert!(!body.contains("198.51.100.10"), "gateway address is sealed");
}

#[test]
fn tunnel_lost_exchange() {
    let key = SecretId2::from_array([2; 32]).mac_key();
    for answer in [TunnelRebuild::Up, TunnelRebuild::Connecting, TunnelRebuild::NotDue] {
        let (_, resp) = exchange(&TunnelLostNotice {}, &tid(), &key, |_| TunnelLostAnswer {
            tunnel: answer,
        });
        assert_eq!(resp.tunnel, answer);
    }
    assert_eq!(
        serde_json::to_string(&TunnelLostAnswer {
            tunnel: TunnelRebuild::NotDue
        })
        .unwrap(),
        r#"{"tunnel":"not_due"}"#
    );
    assert!(serde_json::from_str::<TunnelLostAnswer>(r#"{"tunnel":"maybe"}"#).is_err());
    assert!(serde_json::from_str::<TunnelLostNotice>(r#"{"why":"restart"}"#).is_err());
}

#[test]
fn site_end_exchange() {
    let key = SecretId2::from_array([2; 32]).mac_key();
    let req = SiteEndRequest {
        acceptance_number: AcceptanceNumber::new(42).unwrap(),
    };
    for outcome in [SiteEndOutcome::Ended, SiteEndOutcome::AlreadyEnded] {
        let (v, resp) = exchange(&req, &tid(), &key, |_| SiteEndAnswer { outcome });
        assert_eq!(v.command().acceptance_number.get(), 42);
        assert_eq!(resp.outcome, outcome);
    }
    assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"acceptance_number":42}"#);
    assert_eq!(
        serde_json::to_string(&SiteEndAnswer {
            outcome: SiteEndOutcome::AlreadyEnded
        })
        .unwrap(),
        r#"{"outcome":"already_ended"}"#
    );
    // Malformed: no number, number 0, a negative or non-number, extra
    // fields, an unknown outcome.
    for bad in [
        "{}",
        r#"{"acceptance_number":0}"#,
        r#"{"acceptance_number":-1}"#,
        r#"{"acceptance_number":"42"}"#,
        r#"{"acceptance_number":42,"terminal_id":"other"}"#,
    ] {
        assert!(serde_json::from_str::<SiteEndRequest>(bad).is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<SiteEndAnswer>(r#"{"outcome":"maybe"}"#).is_err());
}

#[test]
fn request_states_exchange() {
    let key = SecretId2::from_array([2; 32]).mac_key();
    let n = |v: u64| AcceptanceNumber::new(v).unwrap();
    let req = RequestStatesQuery {
        open: BoundedSet::new(vec![n(7), n(42)]).unwrap(),
    };
    let (v, resp) = exchange(&req, &tid(), &key, |q| RequestStatesAnswer {
        ended: BoundedSet::new(q.command().open.iter().copied().filter(|a| a.get() == 42).collect()).unwrap(),
    });
    assert_eq!(v.command(), &req);
    assert_eq!(resp.ended.as_slice(), &[n(42)]);
    assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"open":[7,42]}"#);
    assert_eq!(
        serde_json::to_string(&RequestStatesAnswer {
            ended: BoundedSet::new(vec![]).unwrap()
        })
        .unwrap(),
        r#"{"ended":[]}"#
    );
    // Malformed: nothing asked, a zero, a repeat, too many, extra fields.
    let many: Vec<String> = (1..=MAX_REQUEST_STATES as u64 + 1).map(|i| i.to_string()).collect();
    for bad in [
        "{}".to_string(),
        r#"{"open":[]}"#.to_string(),
        r#"{"open":[0]}"#.to_string(),
        r#"{"open":[5,5]}"#.to_string(),
        format!(r#"{{"open":[{}]}}"#, many.join(",")),
        r#"{"open":[5],"ended":[5]}"#.to_string(),
    ] {
        assert!(serde_json::from_str::<RequestStatesQuery>(&bad).is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<RequestStatesAnswer>(r#"{"ended":[3,3]}"#).is_err());
    assert!(serde_json::from_str::<RequestStatesAnswer>(r#"{"ended":"all"}"#).is_err());
}

#[test]
fn gateway_address_exchange_in_router_mode() {
    let rng = SystemRandom::new();
    let key = SecretId2::from_array([2; 32]).mac_key();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let wan = WanAddress::Ipv4(Ipv4Addr::new(192, 0, 2, 2));
    let req = GatewayAddressRequest {
        reply_key: kp.public_key(),
        initiation: InitiationPreference::Router,
        wan: Some(wan),
    };
    let (v, resp) = exchange(&req, &tid(), &key, |v| {
        GatewayInfo {
            initiation: InitiationMode::Router,
            ..gateway_info()
        }
        .seal(&SystemRandom::new(), v.principal(), &v.command().reply_key)
        .unwrap()
    });
    assert_eq!(v.command().wan, Some(wan));
    assert_eq!(v.command().initiation, InitiationPreference::Router);
    assert_eq!(resp.open(kp, &tid()).unwrap().initiation, InitiationMode::Router);
}

/// Routers and centers from before issue 17 keep working: their messages
/// decode with the seed's meaning, and answers in the seed's mode carry
/// nothing they would refuse (every message denies unknown fields).
#[test]
fn initiation_fields_are_optional_on_the_wire() {
    let old_info = r#"{"gateway_ip":"198.51.100.10","gateway_ike_id":"gw-a.center.example","center_networks":["10.64.0.0/16","172.30.0.0/24"]}"#;
    let info: GatewayInfo = serde_json::from_str(old_info).unwrap();
    assert_eq!(info, gateway_info());
    assert_eq!(serde_json::to_string(&gateway_info()).unwrap(), old_info);
    let router = GatewayInfo {
        initiation: InitiationMode::Router,
        ..gateway_info()
    };
    let wire = serde_json::to_string(&router).unwrap();
    assert!(wire.ends_with(r#","initiation":"router"}"#), "{wire}");
    assert_eq!(serde_json::from_str::<GatewayInfo>(&wire).unwrap(), router);

    let rng = SystemRandom::new();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let bare = GatewayAddressRequest {
        reply_key: kp.public_key(),
        initiation: InitiationPreference::Auto,
        wan: None,
    };
    let wire = serde_json::to_string(&bare).unwrap();
    assert!(!wire.contains("initiation") && !wire.contains("wan"), "{wire}");
    let full = GatewayAddressRequest {
        initiation: InitiationPreference::Gateway,
        wan: Some(WanAddress::NoIpv4),
        ..bare.clone()
    };
    let wire = serde_json::to_string(&full).unwrap();
    assert!(wire.contains(r#""initiation":"gateway","wan":"no_ipv4""#), "{wire}");
    assert_eq!(serde_json::from_str::<GatewayAddressRequest>(&wire).unwrap(), full);
    let wrong = wire.replace("no_ipv4", "none");
    assert!(serde_json::from_str::<GatewayAddressRequest>(&wrong).is_err());
}

#[test]
fn gateway_info_rules() {
    let j = r#"{"gateway_ip":"198.51.100.10","gateway_ike_id":"gw","center_networks":[]}"#;
    assert!(serde_json::from_str::<GatewayInfo>(j).is_err());
    let j = r#"{"gateway_ip":"0.0.0.0","gateway_ike_id":"gw","center_networks":["10.0.0.0/8"]}"#;
    assert!(serde_json::from_str::<GatewayInfo>(j).is_err());
    let j = r#"{"gateway_ip":"198.51.100.10","gateway_ike_id":"g w","center_networks":["10.0.0.0/8"]}"#;
    assert!(serde_json::from_str::<GatewayInfo>(j).is_err());
    let j = r#"{"gateway_ip":"198.51.100.10","gateway_ike_id":"gw","center_networks":["10.0.0.0/8"]}"#;
    assert!(serde_json::from_str::<GatewayInfo>(j).is_ok());
}

fn details(names: &[&str]) -> MaintenanceDetails {
    MaintenanceDetails {
        claimant_name: ClaimantName::new("Hanako Suzuki").unwrap(),
        terminal_names: TerminalNames::new(names.iter().map(|n| TerminalName::new(*n).unwrap()).collect()).unwrap(),
        phone: Phone::new("+81 3-1234-5678").unwrap(),
        content: RequestContent::new("printer offline\nplease check").unwrap(),
    }
}

#[test]
fn maintenance_exchange() {
    let rng = SystemRandom::new();
    let sid2 = SecretId2::from_array([2; 32]);
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let req = MaintenanceRequest::new(
        &rng,
        &sid2,
        &tid(),
        kp.public_key(),
        ClaimantLevel::General,
        Urgency::High,
        &details(&["pc1", "printer"]),
    )
    .unwrap();
    let wire = serde_json::to_string(&req).unwrap();
    assert!(!wire.contains("Hanako") && !wire.contains("printer"));
    let grants = Grants::new(vec![
        Grant {
            terminal_name: TerminalName::new("pc1").unwrap(),
            vpnnat_addr: ip(10, 64, 1, 1),
        },
        Grant {
            terminal_name: TerminalName::new("printer").unwrap(),
            vpnnat_addr: ip(10, 64, 1, 2),
        },
    ])
    .unwrap();
    let (v, resp) = exchange(&req, &tid(), &sid2.mac_key(), |v| {
        let d = v.command().open_details(&sid2, v.principal()).unwrap();
        assert_eq!(d, details(&["pc1", "printer"]));
        grants
            .seal(
                &SystemRandom::new(),
                v.principal(),
                &v.command().reply_key,
                AcceptanceNumber::new(42).unwrap(),
            )
            .unwrap()
    });
    assert_eq!(v.command().urgency, Urgency::High);
    assert_eq!(resp.acceptance_number.get(), 42);
    assert_eq!(resp.open(kp, &tid()).unwrap(), grants);
    // Details do not open for another router or with another secret.
    assert!(req.open_details(&sid2, &TerminalId::new("router-2").unwrap()).is_err());
    assert!(req.open_details(&SecretId2::from_array([3; 32]), &tid()).is_err());
}

#[test]
fn maintenance_answer_carries_ends_at_only_to_routers_that_ask_and_old_forms_still_parse() {
    let rng = SystemRandom::new();
    let sid2 = SecretId2::from_array([2; 32]);
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let new_req = |kp: &ReplyKeyPair| {
        MaintenanceRequest::new(
            &rng,
            &sid2,
            &tid(),
            kp.public_key(),
            ClaimantLevel::General,
            Urgency::Normal,
            &details(&["pc1"]),
        )
        .unwrap()
    };
    let req = new_req(&kp);
    assert!(req.wants_ends_at);
    let wire = serde_json::to_value(&req).unwrap();
    assert_eq!(wire["wants_ends_at"], serde_json::json!(true));
    // A router from before the field sends none: it parses as "does not ask".
    let old = req.clone().without_ends_at();
    let old_wire = serde_json::to_value(&old).unwrap();
    assert!(old_wire.get("wants_ends_at").is_none());
    assert!(
        !serde_json::from_value::<MaintenanceRequest>(old_wire)
            .unwrap()
            .wants_ends_at
    );

    let grants = Grants::new(vec![Grant {
        terminal_name: TerminalName::new("pc1").unwrap(),
        vpnnat_addr: ip(10, 64, 1, 1),
    }])
    .unwrap();
    let n = AcceptanceNumber::new(9).unwrap();
    let told = grants
        .seal(&rng, &tid(), &req.reply_key, n)
        .unwrap()
        .with_ends_at(Some(1_800_014_400));
    let wire = serde_json::to_value(&told).unwrap();
    assert_eq!(wire["ends_at"], serde_json::json!(1_800_014_400u64));
    let back: MaintenanceResponse = serde_json::from_value(wire).unwrap();
    assert_eq!(back.ends_at, Some(1_800_014_400));
    assert_eq!(back, told);
    // Without it the answer is byte-for-byte the old form (old routers
    // refuse unknown fields), and parses as "no limit shown".
    let plain = grants.seal(&rng, &tid(), &req.reply_key, n).unwrap();
    let wire = serde_json::to_value(&plain).unwrap();
    assert!(wire.get("ends_at").is_none());
    assert_eq!(
        serde_json::from_value::<MaintenanceResponse>(wire).unwrap().ends_at,
        None
    );
    assert!(serde_json::from_value::<MaintenanceResponse>(serde_json::json!({
        "acceptance_number": 9, "sealed": serde_json::to_value(&plain.sealed).unwrap(), "ends_at": "soon"
    }))
    .is_err());
}

/// Issue 19, item 8: the answer tells the router the center's idle limit
/// when the router asks (`wants_idle_timeout`); a router that knows
/// `ends_at` only sends no such flag and gets no such field (it refuses
/// unknown fields); absent parses as "not told".
#[test]
fn maintenance_answer_carries_the_idle_limit_only_to_routers_that_ask_and_old_forms_still_parse() {
    let rng = SystemRandom::new();
    let sid2 = SecretId2::from_array([2; 32]);
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let req = MaintenanceRequest::new(
        &rng,
        &sid2,
        &tid(),
        kp.public_key(),
        ClaimantLevel::General,
        Urgency::Normal,
        &details(&["pc1"]),
    )
    .unwrap();
    assert!(req.wants_idle_timeout && req.wants_ends_at);
    let wire = serde_json::to_value(&req).unwrap();
    assert_eq!(wire["wants_idle_timeout"], serde_json::json!(true));
    assert_eq!(serde_json::from_value::<MaintenanceRequest>(wire).unwrap(), req);
    // A router that knows `ends_at` only: no flag on the wire, parses as
    // "does not ask"; a router from before both asks for neither.
    let ends_only = req.clone().without_idle_timeout();
    let ends_wire = serde_json::to_value(&ends_only).unwrap();
    assert!(ends_wire.get("wants_idle_timeout").is_none());
    assert_eq!(ends_wire["wants_ends_at"], serde_json::json!(true));
    assert!(
        !serde_json::from_value::<MaintenanceRequest>(ends_wire)
            .unwrap()
            .wants_idle_timeout
    );
    let oldest = serde_json::to_value(req.clone().without_ends_at()).unwrap();
    assert!(oldest.get("wants_idle_timeout").is_none() && oldest.get("wants_ends_at").is_none());

    let grants = Grants::new(vec![Grant {
        terminal_name: TerminalName::new("pc1").unwrap(),
        vpnnat_addr: ip(10, 64, 1, 1),
    }])
    .unwrap();
    let n = AcceptanceNumber::new(9).unwrap();
    let told = grants
        .seal(&rng, &tid(), &req.reply_key, n)
        .unwrap()
        .with_ends_at(Some(1_800_014_400))
        .with_idle_timeout(Some(1_800));
    let wire = serde_json::to_value(&told).unwrap();
    assert_eq!(wire["idle_timeout_secs"], serde_json::json!(1_800u64));
    let back: MaintenanceResponse = serde_json::from_value(wire).unwrap();
    assert_eq!(back.idle_timeout_secs, Some(1_800));
    assert_eq!(back, told);
    assert_eq!(back.open(kp, &tid()).unwrap(), grants);
    // Not told: no key at all (the form routers that know `ends_at` only
    // parse), and it parses back as "not told".
    let ends_only = grants
        .seal(&rng, &tid(), &req.reply_key, n)
        .unwrap()
        .with_ends_at(Some(1_800_014_400))
        .with_idle_timeout(None);
    let wire = serde_json::to_value(&ends_only).unwrap();
    assert!(wire.get("idle_timeout_secs").is_none());
    assert_eq!(
        serde_json::from_value::<MaintenanceResponse>(wire.clone())
            .unwrap()
            .idle_timeout_secs,
        None
    );
    let mut bad = wire;
    bad["idle_timeout_secs"] = serde_json::json!("half an hour");
    assert!(serde_json::from_value::<MaintenanceResponse>(bad).is_err());
}

#[test]
fn maintenance_details_rules() {
    let base = serde_json::to_value(details(&["pc1"])).unwrap();
    let mut v = base.clone();
    v["terminal_names"] = serde_json::json!([]);
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    let mut v = base.clone();
    v["terminal_names"] = serde_json::json!((0..17).map(|i| format!("pc{i}")).collect::<Vec<_>>());
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    let mut v = base.clone();
    v["terminal_names"] = serde_json::json!(["bad name"]);
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    let mut v = base.clone();
    v["phone"] = serde_json::json!("call me");
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    let mut v = base.clone();
    v["content"] = serde_json::json!("x".repeat(4097));
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    let mut v = base.clone();
    v["claimant_level"] = serde_json::json!("administrator");
    assert!(serde_json::from_value::<MaintenanceDetails>(v).is_err());
    assert!(serde_json::from_value::<MaintenanceDetails>(base).is_ok());
    let req = r#"{"reply_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","claimant_level":"root","urgency":"high","details":{"nonce":"AAAAAAAAAAAAAAAA","ciphertext":""}}"#;
    assert!(serde_json::from_str::<MaintenanceRequest>(req).is_err());
    let ok = req.replace("root", "administrator");
    assert!(serde_json::from_str::<MaintenanceRequest>(&ok).is_ok());
}

#[test]
fn grants_rules() {
    let g = |n: &str, a: u8| Grant {
        terminal_name: TerminalName::new(n).unwrap(),
        vpnnat_addr: ip(10, 64, 0, a),
    };
    assert!(Grants::new(vec![]).is_err());
    assert!(Grants::new(vec![g("a", 1), g("a", 2)]).is_err());
    assert!(Grants::new(vec![g("a", 1), g("b", 1)]).is_err());
    assert!(Grants::new(vec![g("a", 1), g("b", 2)]).is_ok());
    assert!(serde_json::from_str::<Grants>(
        r#"[{"terminal_name":"a","vpnnat_addr":"10.64.0.1"},{"terminal_name":"b","vpnnat_addr":"10.64.0.1"}]"#
    )
    .is_err());
}

#[test]
fn center_to_router_commands() {
    let key = SecretId2::from_array([2; 32]).mac_key();
    let end = EndCommand {
        acceptance_number: AcceptanceNumber::new(7).unwrap(),
    };
    assert_eq!(exchange(&end, &tid(), &key, |_| Ack {}).0.command(), &end);
    let rel = ReleaseCommand {
        terminal_name: TerminalName::new("pc1").unwrap(),
    };
    assert_eq!(exchange(&rel, &tid(), &key, |_| Ack {}).0.command(), &rel);
    let vpn_end = VpnEndCommand {};
    assert_eq!(exchange(&vpn_end, &tid(), &key, |_| Ack {}).0.command(), &vpn_end);
    assert!(serde_json::from_str::<EndCommand>(r#"{"acceptance_number":0}"#).is_err());
    assert!(serde_json::from_str::<VpnEndCommand>(r#"{"all":true}"#).is_err());
    assert!(serde_json::from_str::<ReleaseCommand>(r#"{"terminal_name":"../etc"}"#).is_err());
}

#[test]
fn gateway_setup_tunnel_carries_psk_encrypted() {
    let rng = SystemRandom::new();
    let gw = GatewayName::new("gw-a").unwrap();
    let api = GatewayApiKey::from_array([5; 32]);
    let fk = FieldKey::for_gateway(&api, &gw).unwrap();
    let psk = Psk::from_array([0x42; 32]);
    let cmd = SetupTunnel::new(&rng, &fk, tid(), ip(203, 0, 113, 5), 3, &psk).unwrap();
    let (v, ack) = exchange(&cmd, &gw, &api.mac_key(), |_| Ack {});
    assert_eq!(ack, Ack {});
    let got = v.command().open_psk(&fk).unwrap();
    assert_eq!(got.expose_secret(), psk.expose_secret());
    // Bound to the terminal: moving the blob to another tunnel fails.
    let mut moved = cmd.clone();
    moved.terminal_id = TerminalId::new("router-2").unwrap();
    assert_eq!(moved.open_psk(&fk).unwrap_err(), ProtoError::BadMac);
    // Another gateway cannot read it.
    let other = FieldKey::for_gateway(&api, &GatewayName::new("gw-b").unwrap()).unwrap();
    assert!(cmd.open_psk(&other).is_err());
    // The seed's mode is not written (older gateways deny unknown fields);
    // router mode is, and round-trips.
    assert!(!serde_json::to_string(&cmd).unwrap().contains("initiation"));
    let dial_in = SetupTunnel {
        initiation: InitiationMode::Router,
        ..cmd
    };
    let wire = serde_json::to_string(&dial_in).unwrap();
    assert!(wire.contains(r#""initiation":"router""#), "{wire}");
    assert_eq!(serde_json::from_str::<SetupTunnel>(&wire).unwrap(), dial_in);
}

#[test]
fn gateway_address_commands_and_state() {
    let gw = GatewayName::new("gw-a").unwrap();
    let key = GatewayApiKey::from_array([5; 32]).mac_key();
    let addrs = AddressSet::new(vec![ip(10, 64, 1, 1), ip(10, 64, 1, 2)]).unwrap();
    let add = AddAddresses {
        terminal_id: tid(),
        addresses: addrs.clone(),
    };
    assert_eq!(exchange(&add, &gw, &key, |_| Ack {}).0.command(), &add);
    let rm = RemoveAddresses {
        terminal_id: tid(),
        addresses: addrs.clone(),
    };
    assert_eq!(exchange(&rm, &gw, &key, |_| Ack {}).0.command(), &rm);
    assert!(AddressSet::new(vec![]).is_err());
    assert!(AddressSet::new(vec![ip(10, 64, 1, 1), ip(10, 64, 1, 1)]).is_err());

    let state = StateReport::new(vec![TunnelState {
        terminal_id: tid(),
        slot: 0,
        router_ip: ip(203, 0, 113, 5),
        status: TunnelStatus::Up,
        addresses: BoundedSet::new(vec![ip(10, 64, 1, 1)]).unwrap(),
        last_use: Some(1_796_677_931),
    }])
    .unwrap();
    let (_, got) = exchange(&ReportState {}, &gw, &key, |_| state.clone());
    assert_eq!(got, state);
    let t = state.tunnels()[0].clone();
    assert!(StateReport::new(vec![t.clone(), t.clone()]).is_err());
    let mut t2 = t.clone();
    t2.terminal_id = TerminalId::new("router-2").unwrap();
    assert!(StateReport::new(vec![t.clone(), t2.clone()]).is_err(), "same slot");
    t2.slot = 1;
    assert!(StateReport::new(vec![t, t2]).is_ok());
    assert!(serde_json::from_str::<StateReport>(r#"{"tunnels":[],"x":0}"#).is_err());
    assert!(serde_json::from_str::<StateReport>(r#"{"tunnels":[]}"#).is_ok());
}

#[test]
fn state_report_carries_the_event_order() {
    let r = StateReport::new(vec![]).unwrap().with_seq(42);
    let j = serde_json::to_string(&r).unwrap();
    assert_eq!(j, r#"{"tunnels":[],"seq":42}"#);
    assert_eq!(serde_json::from_str::<StateReport>(&j).unwrap().seq(), 42);
    assert_eq!(
        serde_json::from_str::<StateReport>(r#"{"tunnels":[]}"#).unwrap().seq(),
        0
    );
    assert!(serde_json::from_str::<StateReport>(r#"{"tunnels":[],"seq":-1}"#).is_err());
}

#[test]
fn a_tunnels_last_use_is_optional_and_left_out_when_unknown() {
    let t = |last_use| TunnelState {
        terminal_id: TerminalId::new("router-1").unwrap(),
        slot: 3,
        router_ip: UnicastAddr::new(std::net::Ipv4Addr::new(203, 0, 113, 5)).unwrap(),
        status: TunnelStatus::Up,
        addresses: BoundedSet::new(vec![]).unwrap(),
        last_use,
    };
    let j = serde_json::to_string(&t(Some(0))).unwrap();
    assert!(j.ends_with(r#","last_use":0}"#), "{j}");
    assert_eq!(serde_json::from_str::<TunnelState>(&j).unwrap(), t(Some(0)));
    // Unknown: left out (what a gateway from before sends too).
    let j = serde_json::to_string(&t(None)).unwrap();
    assert!(!j.contains("last_use"), "{j}");
    // A gateway from before: no field, unknown.
    assert_eq!(serde_json::from_str::<TunnelState>(&j).unwrap().last_use, None);
    assert!(serde_json::from_str::<TunnelState>(&j.replace("}", r#","last_use":-1}"#)).is_err());
}

#[test]
fn tunnel_event_from_gateway() {
    let gw = GatewayName::new("gw-a").unwrap();
    let key = GatewayApiKey::from_array([5; 32]).mac_key();
    let ev = TunnelEvent {
        terminal_id: tid(),
        slot: 2,
        status: TunnelStatus::Up,
        detail: FailureDetail::new("").unwrap(),
        seq: 0,
    };
    assert_eq!(exchange(&ev, &gw, &key, |_| Ack {}).0.command(), &ev);
    assert_eq!(
        serde_json::to_string(&ev).unwrap(),
        r#"{"terminal_id":"router-1","slot":2,"status":"up","detail":"","seq":0}"#
    );
    // A gateway that does not number its events: seq 0 (unordered).
    let old: TunnelEvent =
        serde_json::from_str(r#"{"terminal_id":"router-1","slot":2,"status":"up","detail":""}"#).unwrap();
    assert_eq!(old, ev);
    assert!(serde_json::from_str::<TunnelEvent>(
        r#"{"terminal_id":"router-1","slot":2,"status":"sideways","detail":""}"#
    )
    .is_err());
}

#[test]
fn every_command_has_a_distinct_listed_path() {
    let cmds = [
        InstallRequest::PATH,
        FailureNotice::PATH,
        GatewayAddressRequest::PATH,
        MaintenanceRequest::PATH,
        TunnelLostNotice::PATH,
        SiteEndRequest::PATH,
        RequestStatesQuery::PATH,
        EndCommand::PATH,
        ReleaseCommand::PATH,
        VpnEndCommand::PATH,
        SetupTunnel::PATH,
        AddAddresses::PATH,
        RemoveAddresses::PATH,
        TearDown::PATH,
        RestartTunnel::PATH,
        ReportState::PATH,
        TunnelEvent::PATH,
    ];
    let set: std::collections::HashSet<_> = cmds.iter().collect();
    assert_eq!(set.len(), cmds.len());
    for p in cmds {
        assert!(paths::ALL.contains(&p), "{p}");
    }
    assert_eq!(cmds.len(), paths::ALL.len());
}
