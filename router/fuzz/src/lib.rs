//! Fuzz harnesses for routerd's decoders of outside bytes. Each `pub fn`
//! is one cargo-fuzz target (`fuzz_targets/<name>.rs` calls it) and is
//! replayed over the checked-in corpus by `router/tests/fuzz_corpus.rs`.
//!
//! - [`lan_input`]: what a LAN device sends to the LAN page (urlencoded
//!   form, JSON API body, `Origin`/`Host`/`Content-Type` headers), the
//!   maintenance page's `Authorization: Basic` header and restart form, and
//!   the dnsmasq lease file (host names are chosen by LAN devices).
//! - [`router_config`]: `/etc/routerd.toml` -> validated [`Config`].
//! - [`center_exchange`]: the center's answers to installation, gateway
//!   address and maintenance requests, and the center's end / release / VPN
//!   end commands, through routerd's pure core (MAC, seal, JSON, checks).
//!
//! Assertions are the invariants: a panic is a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method};
use ring::rand::SystemRandom;
use vpnnat_proto::auth::{self, AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::keys::{MaintenancePassword, Psk, SecretBytes, SecretId, SecretId2};
use vpnnat_proto::messages::{
    EndCommand, GatewayAddressRequest, GatewayAddressResponse, GatewayInfo, InstallRequest, InstallResponse,
    InstallSecrets, MaintenanceRequest, MaintenanceResponse, ReleaseCommand, VpnEndCommand,
};
use vpnnat_proto::seal::{self, SealPurpose};
use vpnnat_proto::types::{
    AcceptanceNumber, BoundedSet, ClaimantLevel, ClaimantName, IkeIdentity, Phone, RequestContent, TerminalName,
    UnicastAddr, Urgency,
};
use vpnnat_proto::{Command, Outgoing};
use vpnnat_router::config::Config;
use vpnnat_router::http::{parse_form, Incoming1};
use vpnnat_router::logic::{self, CenterReply, CommandError, Identity, IncomingCommand, MaintenanceInput};
use vpnnat_router::resolve::{parse_leases, NoDns, Resolver};
use vpnnat_router::state::RouterState;
use vpnnat_router::web::{basic_password, cross_site, ApiRequest};

const NOW: u64 = 1_800_000_000;

/// Percent-encodes every byte but the unreserved ones (RFC 3986).
fn form_encode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Checks a request that validated: what the validated values say is
/// what the request said, and validating it again gives the same input.
fn check_validated(req: &ApiRequest, input: &MaintenanceInput) {
    assert_eq!(input.claimant_name.as_str(), req.claimant_name.trim());
    assert_eq!(input.phone.as_str(), req.phone.trim());
    assert!(!input.terminals.is_empty());
    let again = ApiRequest {
        claimant_name: input.claimant_name.as_str().to_owned(),
        claimant_level: req.claimant_level.clone(),
        urgency: req.urgency.clone(),
        phone: input.phone.as_str().to_owned(),
        content: input.content.as_str().to_owned(),
        terminals: input.terminals.iter().map(|t| t.as_str().to_owned()).collect(),
    };
    assert_eq!(again.to_input().as_ref(), Ok(input), "re-validation of {again:?}");
}

/// Byte 0 picks the input; the rest is the input.
pub fn lan_input(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 5 {
        0 => {
            // POST /request: urlencoded form. Decoding is a fixed point:
            // encoding the decoded pairs and decoding again gives them back.
            let pairs = parse_form(rest);
            assert_eq!(parse_form(encode_pairs(&pairs).as_bytes()), pairs);
            let req = ApiRequest::from_form(rest);
            if let Ok(input) = req.to_input() {
                check_validated(&req, &input);
            }
        }
        1 => {
            // POST /api/request: JSON.
            if let Ok(req) = serde_json::from_slice::<ApiRequest>(rest) {
                let back: ApiRequest = serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
                assert_eq!(back, req);
                if let Ok(input) = req.to_input() {
                    check_validated(&req, &input);
                }
            }
        }
        2 => {
            // Authorization: Basic on /maintenance. What it returns is the
            // password of the credentials, whatever the user name.
            let Ok(h) = std::str::from_utf8(rest) else { return };
            if let Some(p) = basic_password(h) {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(format!("maintenance:{p}"));
                assert_eq!(basic_password(&format!("Basic {b64}")).as_deref(), Some(p.as_str()));
            }
        }
        3 => {
            // The cross-site check of both pages: "path\norigin\nhost\ncontent-type".
            let mut parts = rest.splitn(4, |b| *b == b'\n');
            let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let mut headers = HeaderMap::new();
            for name in ["origin", "host", "content-type"] {
                if let Some(v) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
            let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let (origin, host, ctype) = (get("origin"), get("host"), get("content-type"));
            let req = Incoming1 {
                method: Method::POST,
                path,
                headers,
                body: Vec::new(),
                peer: SocketAddr::from(([192, 168, 1, 10], 40000)),
            };
            let refused = cross_site(&req).is_some();
            let same_origin = origin.is_none_or(|o| o == format!("http://{}", host.unwrap_or_default()));
            let json_ok = !req.path.starts_with("/api/") || ctype.is_some_and(|c| c.starts_with("application/json"));
            assert_eq!(refused, !(same_origin && json_ok), "{req:?}");
            let get_req = Incoming1 {
                method: Method::GET,
                ..req
            };
            assert!(cross_site(&get_req).is_none());
        }
        _ => {
            // dnsmasq's lease file: every lease is a line of the input.
            let Ok(text) = std::str::from_utf8(rest) else { return };
            for l in parse_leases(text) {
                assert!(l.hostname != "*" && !l.hostname.is_empty());
                assert!(text
                    .lines()
                    .any(|line| line.split_whitespace().nth(3) == Some(l.hostname.as_str())));
            }
        }
    }
}

/// The first run of 64 hex digits after `key` on the same line.
fn secret_in(text: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(key))?;
    let after = &line[line.find(key)?..];
    let mut run = String::new();
    for c in after.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            if run.len() == 64 {
                return Some(run);
            }
        } else {
            run.clear();
        }
    }
    None
}

/// The routerd config: parsing is deterministic and neither the config's
/// Debug form nor any error message shows the factory secret.
pub fn router_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/routerd.toml");
    let shown = match Config::parse(text, path) {
        Ok(c) => {
            let d = format!("{c:?}");
            let again = Config::parse(text, path).expect("a config that parsed parses again");
            assert_eq!(format!("{again:?}"), d);
            assert_eq!(c.path, path);
            assert!(c.lan.contains(c.lan.address));
            d
        }
        Err(e) => format!("{e} {e:?}"),
    };
    if let Some(secret) = secret_in(text, "factory_secret") {
        assert!(
            !shown.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()),
            "the factory secret is shown: {shown}"
        );
    }
}

/// The fixture's routerd config.
const FIXTURE_CONFIG: &str = r#"
terminal_id = "router-1"
center_url = "http://198.51.100.10:8080"
factory_secret = "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545"
state_dir = "/nonexistent/routerd-fuzz"
[wan]
interface = "eth0"
address = "198.51.100.101/24"
gateway = "198.51.100.1"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
[hosts]
pc1 = "192.168.1.10"
printer = "192.168.1.20"
"#;

/// A router configuration, its Secret(ID) and an installed state (with a
/// gateway), made once through the real installation exchange.
struct Fixture {
    config: Config,
    id: Identity,
    secret_id: SecretId,
    installed: RouterState,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let text = FIXTURE_CONFIG;
        let config = Config::parse(text, Path::new("fuzz.toml")).unwrap();
        let id = Identity::from_config(&config);
        let secret_id = SecretId::from_array([1; 32]);
        let rng = SystemRandom::new();
        let empty = RouterState::default();
        let p = logic::begin_install(&id, &secret_id, &empty, &rng, NOW).unwrap();
        let reply_key = serde_json::from_slice::<InstallRequest>(&p.outgoing.body)
            .unwrap()
            .reply_key;
        let secrets = InstallSecrets::new(
            Psk::from_array([3; 32]),
            SecretId2::from_array([2; 32]),
            MaintenancePassword::new("maintenance-pw").unwrap(),
            UnicastAddr::new(Ipv4Addr::new(100, 64, 0, 1)).unwrap(),
            UnicastAddr::new(Ipv4Addr::new(100, 64, 0, 2)).unwrap(),
        )
        .unwrap();
        let resp = secrets.seal(&rng, &id.terminal_id, &reply_key).unwrap();
        let reply =
            signed_reply::<InstallRequest>(&p.outgoing, &secret_id.mac_key(), serde_json::to_vec(&resp).unwrap());
        let installed = logic::finish_install(&id, &secret_id, &empty, p, &reply, &rng).unwrap();
        // Then the gateway address, as a router does before maintenance.
        let p = logic::begin_gateway(&id, &installed, &rng, NOW).unwrap();
        let reply_key = serde_json::from_slice::<GatewayAddressRequest>(&p.outgoing.body)
            .unwrap()
            .reply_key;
        let info = GatewayInfo {
            gateway_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 10)).unwrap(),
            gateway_ike_id: IkeIdentity::new("gw-a.center.example").unwrap(),
            center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
            initiation: Default::default(),
        };
        let resp = info.seal(&rng, &id.terminal_id, &reply_key).unwrap();
        let key = installed.installation.as_ref().unwrap().secret_id2.mac_key();
        let reply = signed_reply::<GatewayAddressRequest>(&p.outgoing, &key, serde_json::to_vec(&resp).unwrap());
        let installed = logic::finish_gateway(&id, &installed, p, &reply).unwrap();
        Fixture {
            config,
            id,
            secret_id,
            installed,
        }
    })
}

/// A 200 answer to `request` whose MAC is valid for `body`.
fn signed_reply<C: Command>(request: &Outgoing, key: &vpnnat_proto::keys::MacKey, body: Vec<u8>) -> CenterReply {
    let request_mac = auth::Tag::from_hex(&request.headers.mac).unwrap();
    let headers = auth::sign_response(
        key,
        C::DIRECTION,
        &request.headers.principal,
        C::PATH,
        &request_mac,
        &body,
        NOW,
        &SystemRandom::new(),
    )
    .unwrap();
    CenterReply {
        status: 200,
        headers: Some(headers),
        body,
    }
}

/// Without a valid MAC: "status\nprincipal\ntimestamp\nnonce\nmac\nbody".
fn raw_reply(data: &[u8]) -> CenterReply {
    let mut parts = data.splitn(6, |b| *b == b'\n');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let status = next().trim().parse().unwrap_or(200);
    let headers = AuthHeaders {
        principal: next(),
        timestamp: next(),
        nonce: next(),
        mac: next(),
    };
    CenterReply {
        status,
        headers: Some(headers),
        body: parts.next().unwrap_or_default().to_vec(),
    }
}

/// How the fuzzed bytes become the center's answer (mode byte bits 2-3).
enum Shape {
    /// Headers and body as given: no valid MAC.
    Raw,
    /// The body as given, with a valid MAC: reaches the JSON parser.
    Signed,
    /// The bytes sealed to the reply key, in a validly signed answer:
    /// reaches the parser of the sealed payload.
    Sealed,
}

fn reply_for<C: Command>(
    shape: &Shape,
    request: &Outgoing,
    key: &vpnnat_proto::keys::MacKey,
    data: &[u8],
    wrap: impl FnOnce(seal::SealedBox) -> Vec<u8>,
    purpose: SealPurpose,
) -> Option<CenterReply> {
    match shape {
        Shape::Raw => Some(raw_reply(data)),
        Shape::Signed => Some(signed_reply::<C>(request, key, data.to_vec())),
        Shape::Sealed => {
            let reply_key = serde_json::from_slice::<serde_json::Value>(&request.body).ok()?;
            let reply_key = serde_json::from_value(reply_key.get("reply_key")?.clone()).ok()?;
            let tid = fixture().id.terminal_id.clone();
            let sealed = seal::seal(&SystemRandom::new(), &reply_key, &tid, purpose, data).ok()?;
            Some(signed_reply::<C>(request, key, wrap(sealed)))
        }
    }
}

/// Byte 0: bits 0-1 the exchange (installation, gateway address,
/// maintenance, center command), bits 2-3 the [`Shape`] of the answer.
/// Invariants: the core is pure (the old state is untouched, errors leave
/// nothing behind), an accepted answer gives a state that holds what it
/// said, and a raw (unsigned) answer is never accepted.
pub fn center_exchange(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let rng = SystemRandom::new();
    let shape = match (sel >> 2) & 3 {
        0 => Shape::Raw,
        1 => Shape::Signed,
        _ => Shape::Sealed,
    };
    let before = format!("{:?}", f.installed);
    match sel & 3 {
        0 => {
            let p = logic::begin_install(&f.id, &f.secret_id, &f.installed, &rng, NOW).unwrap();
            let Some(reply) = reply_for::<InstallRequest>(
                &shape,
                &p.outgoing,
                &f.secret_id.mac_key(),
                rest,
                |sealed| serde_json::to_vec(&InstallResponse { sealed }).unwrap(),
                SealPurpose::InstallResponse,
            ) else {
                return;
            };
            let r = logic::finish_install(&f.id, &f.secret_id, &f.installed, p, &reply, &rng);
            if let Ok(next) = r {
                assert!(!matches!(shape, Shape::Raw), "unsigned answer accepted");
                let inst = next.installation.as_ref().expect("installed");
                assert_ne!(inst.server_part_vpnnat, inst.router_part_vpnnat);
            }
        }
        1 => {
            let p = logic::begin_gateway(&f.id, &f.installed, &rng, NOW).unwrap();
            let key = f.installed.installation.as_ref().unwrap().secret_id2.mac_key();
            let Some(reply) = reply_for::<GatewayAddressRequest>(
                &shape,
                &p.outgoing,
                &key,
                rest,
                |sealed| serde_json::to_vec(&GatewayAddressResponse { sealed }).unwrap(),
                SealPurpose::GatewayAddressResponse,
            ) else {
                return;
            };
            if let Ok(next) = logic::finish_gateway(&f.id, &f.installed, p, &reply) {
                assert!(!matches!(shape, Shape::Raw), "unsigned answer accepted");
                let gw = next.gateway.as_ref().expect("gateway recorded");
                assert!(!gw.center_networks.is_empty());
            }
        }
        2 => {
            let input = MaintenanceInput {
                claimant_name: ClaimantName::new("Hanako").unwrap(),
                claimant_level: ClaimantLevel::General,
                urgency: Urgency::High,
                phone: Phone::new("+81 3 1234 5678").unwrap(),
                content: RequestContent::new("fuzz").unwrap(),
                terminals: vec![TerminalName::new("pc1").unwrap(), TerminalName::new("printer").unwrap()],
                for_failure: None,
            };
            let resolver = Resolver {
                statics: &f.config.hosts,
                leases: Vec::new(),
                now: NOW,
                dns: NoDns,
                lan: &f.config.lan,
                router_part: f.config.router_part_address,
            };
            let p = logic::begin_maintenance(&f.id, &f.installed, &input, &resolver, &rng, NOW).unwrap();
            let key = f.installed.installation.as_ref().unwrap().secret_id2.mac_key();
            // The acceptance number rides outside the sealed box: take it
            // from the first 8 bytes in the sealed shape.
            let (number, sealed_part) = match rest.split_at_checked(8) {
                Some((n, s)) => (u64::from_le_bytes(n.try_into().unwrap()), s),
                None => (1, rest),
            };
            let Some(reply) = reply_for::<MaintenanceRequest>(
                &shape,
                &p.outgoing,
                &key,
                if matches!(shape, Shape::Sealed) {
                    sealed_part
                } else {
                    rest
                },
                |sealed| {
                    let acceptance_number = AcceptanceNumber::new(number)
                        .or_else(|_| AcceptanceNumber::new(1))
                        .unwrap();
                    serde_json::to_vec(&MaintenanceResponse {
                        acceptance_number,
                        sealed,
                        // Half the inputs carry an end time (issue 19, item 8).
                        ends_at: (number % 2 == 0).then_some(number),
                        // A third an idle limit.
                        idle_timeout_secs: (number % 3 == 0).then_some(number),
                    })
                    .unwrap()
                },
                SealPurpose::MaintenanceResponse,
            ) else {
                return;
            };
            if let Ok((next, accepted)) = logic::finish_maintenance(&f.id, &f.installed, p, &reply, &resolver, NOW) {
                assert!(!matches!(shape, Shape::Raw), "unsigned answer accepted");
                for (name, real, vpnnat) in &accepted.grants {
                    let h = next.hosts.get(name).expect("granted host in the table");
                    assert_eq!((h.real, h.vpnnat), (*real, *vpnnat));
                    assert_eq!(
                        f.config.hosts.get(name),
                        Some(real),
                        "granted a name that was not asked for"
                    );
                }
                assert!(next.request(accepted.acceptance_number).is_some());
            }
        }
        _ => center_command(&shape, rest),
    }
    assert_eq!(format!("{:?}", f.installed), before);
}

/// A center command to the router: byte 0 picks end / release / VPN end.
fn center_command(shape: &Shape, data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let rng = SystemRandom::new();
    let key = f.installed.installation.as_ref().unwrap().secret_id2.mac_key();
    let path = match which % 3 {
        0 => EndCommand::PATH,
        1 => ReleaseCommand::PATH,
        _ => VpnEndCommand::PATH,
    };
    let (headers, body) = match shape {
        Shape::Raw => {
            let r = raw_reply(rest);
            (r.headers.unwrap(), r.body)
        }
        _ => {
            // A validly signed command with the fuzzed body.
            let direction = EndCommand::DIRECTION;
            let h = auth::sign_request(&key, direction, f.id.terminal_id.as_str(), path, rest, NOW, &rng).unwrap();
            (h, rest.to_vec())
        }
    };
    let mut guard = ReplayGuard::new(MemoryNonceStore::new(16), ReplayConfig::default());
    let cmd = IncomingCommand {
        path,
        headers: &headers,
        body: &body,
    };
    match logic::handle_center_command(&f.id, &f.installed, &mut guard, cmd, NOW, &rng) {
        Ok(out) => {
            assert!(!matches!(shape, Shape::Raw), "unsigned command accepted");
            assert_eq!(guard.store().len(), 1);
            assert_eq!(out.response.path, path);
        }
        // A command that did not verify leaves no nonce behind; one that
        // verified but names an unknown request or host keeps its nonce
        // (it must not be replayable either).
        Err(CommandError::Proto(e)) => assert!(guard.store().is_empty(), "nonce recorded for {e:?}"),
        Err(e) => {
            assert!(!matches!(shape, Shape::Raw), "unsigned command verified: {e:?}");
            assert_eq!(guard.store().len(), 1);
        }
    }
}

/// Seed inputs made of real messages and files: `(target, name, bytes)`.
/// `router/tests/fuzz_corpus.rs` runs them through the harnesses and, with
/// `VPNNAT_WRITE_FUZZ_SEEDS=1`, writes them to `corpus/<target>/`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use vpnnat_proto::messages::{Grant, Grants};
    use vpnnat_proto::seal::ReplyKeyPair;

    let with = |sel: u8, body: &[u8]| [&[sel][..], body].concat();
    let rng = SystemRandom::new();
    let tid = fixture().id.terminal_id.clone();
    // The plaintexts the center seals, as the router opens them.
    let secrets = InstallSecrets::new(
        Psk::from_array([4; 32]),
        SecretId2::from_array([5; 32]),
        MaintenancePassword::new("another-maintenance-pw").unwrap(),
        UnicastAddr::new(Ipv4Addr::new(100, 64, 0, 3)).unwrap(),
        UnicastAddr::new(Ipv4Addr::new(100, 64, 0, 4)).unwrap(),
    )
    .unwrap();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let install = secrets.seal(&rng, &tid, &kp.public_key()).unwrap();
    let install_json = serde_json::to_vec(&install).unwrap();
    let install_plain = kp
        .open(&tid, SealPurpose::InstallResponse, &install.sealed)
        .unwrap()
        .to_vec();
    let info = GatewayInfo {
        gateway_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 10)).unwrap(),
        gateway_ike_id: IkeIdentity::new("gw-a.center.example").unwrap(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        initiation: Default::default(),
    };
    let grants = Grants::new(vec![Grant {
        terminal_name: TerminalName::new("pc1").unwrap(),
        vpnnat_addr: UnicastAddr::new(Ipv4Addr::new(100, 64, 0, 10)).unwrap(),
    }])
    .unwrap();
    let maintenance = [&7u64.to_le_bytes()[..], &serde_json::to_vec(&grants).unwrap()].concat();
    let raw = b"200\nrouter-1\n1800000000\n00112233445566778899aabbccddeeff\n00\n{}";
    let form = b"claimant_name=Hanako+Yamada&claimant_level=general&urgency=high&phone=%2B81+3+1234+5678\
&content=The+printer+is+offline.%0D%0ASince+today&terminal=pc1&terminal=printer";
    let api = br#"{"claimant_name":"Hanako Yamada","claimant_level":"administrator","urgency":"emergency","phone":"+81 3 1234 5678","content":"Printer","terminals":["pc1"]}"#;
    let leases = b"1800000000 aa:bb:cc:dd:ee:ff 192.168.1.30 laptop 01:aa:bb:cc:dd:ee:ff\n\
0 11:22:33:44:55:66 192.168.1.31 * *\n";
    let config_text = format!(
        "{}[button]\nclaimant_name = \"Hanako Yamada\"\nclaimant_level = \"general\"\nurgency = \"high\"\n\
phone = \"+81 3 1234 5678\"\ncontent = \"The router reported a failure.\"\nterminals = [\"pc1\"]\n\
[[helper]]\nname = \"dnsmasq\"\ncommand = [\"/usr/sbin/dnsmasq\", \"-k\"]\n",
        FIXTURE_CONFIG
    );
    vec![
        ("lan_input", "seed-form".into(), with(0, form)),
        ("lan_input", "seed-api".into(), with(1, api)),
        (
            "lan_input",
            "seed-basic".into(),
            with(2, b"Basic bWFpbnRlbmFuY2U6c2VjcmV0LXB3"),
        ),
        (
            "lan_input",
            "seed-origin".into(),
            with(3, b"/api/request\nhttp://192.168.1.1\n192.168.1.1\napplication/json"),
        ),
        ("lan_input", "seed-leases".into(), with(4, leases)),
        (
            "router_config",
            "seed-image".into(),
            include_bytes!("../../../buildroot-overlay/router/etc/routerd.toml").to_vec(),
        ),
        ("router_config", "seed-sample".into(), config_text.into_bytes()),
        ("center_exchange", "seed-install-raw".into(), with(0x00, raw)),
        (
            "center_exchange",
            "seed-install-signed".into(),
            with(0x04, &install_json),
        ),
        (
            "center_exchange",
            "seed-install-sealed".into(),
            with(0x08, &install_plain),
        ),
        (
            "center_exchange",
            "seed-gateway-sealed".into(),
            with(0x09, &serde_json::to_vec(&info).unwrap()),
        ),
        (
            "center_exchange",
            "seed-maintenance-sealed".into(),
            with(0x0a, &maintenance),
        ),
        (
            "center_exchange",
            "seed-end".into(),
            with(0x07, b"\x00{\"acceptance_number\":1}"),
        ),
        (
            "center_exchange",
            "seed-release".into(),
            with(0x07, b"\x01{\"terminal_name\":\"pc1\"}"),
        ),
        ("center_exchange", "seed-vpn-end".into(), with(0x07, b"\x02{}")),
        (
            "center_exchange",
            "seed-command-raw".into(),
            with(0x03, &[&[0u8][..], raw].concat()),
        ),
    ]
}
