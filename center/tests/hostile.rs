//! Hostile requests against every endpoint of centerd and gatewayd: the
//! router API (router -> center, and gatewayd's events), gatewayd's API
//! (center -> gateway) and the operator UI. Each kind — tampered, replayed,
//! stale, oversized, malformed — must be refused with a clear status, change
//! nothing (a full dump of the database and gatewayd's state, compared
//! before and after) and leave no secret in the logs (every log record of
//! the process is captured and searched). Prints the table of rejected
//! inputs by kind and endpoint
//! (`cargo test -p vpnnat-center --test hostile -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_center::api::ApiSettings;
use vpnnat_center::center::{Center, CenterSettings, GatewayEntry};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::http::{call_with, unix_now};
use vpnnat_center::password::PasswordHash;
use vpnnat_center::storage::Storage;
use vpnnat_center::ui::{self, UiSettings};
use vpnnat_datapath::RecordingDatapath;
use vpnnat_gatewayd::driver::PolicyDriver;
use vpnnat_gatewayd::{self as gateway, Gatewayd};
use vpnnat_proto::auth::{sign_request, Direction, ReplayConfig};
use vpnnat_proto::keys::{
    FactoryMasterKey, GatewayApiKey, MacKey, MaintenancePassword, SecretBytes, SecretId, SecretId2,
};
use vpnnat_proto::messages::{
    FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest, ReportState,
};
use vpnnat_proto::reinstall::ReinstallProof;
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    BoundedSet, ClaimantLevel, ClaimantName, FailureCode, FailureDetail, GatewayName, IkeIdentity, Phone,
    RequestContent, TerminalId, TerminalName, TerminalNames, UnicastAddr, Urgency,
};
use vpnnat_proto::{encode_request, paths, Outgoing};

const T: Duration = Duration::from_secs(5);
const MAINT_PW: &str = "maint-pass-hostile-1";
const OPERATOR_PW: &str = "operator pass hostile";
const XFF: (&str, &str) = ("x-forwarded-for", "203.0.113.5");

/// Every log record of this process.
static LOG: Mutex<String> = Mutex::new(String::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut l) = LOG.lock() {
            l.push_str(&format!("{} {} {}\n", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

struct Resp {
    status: u16,
    body: String,
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "hostile");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tx.send_request(b.body(Full::new(Bytes::from(body))).unwrap()).await;
    let Ok(resp) = resp else {
        // The server answered (413) and closed before the body was sent.
        return Resp {
            status: 413,
            body: "connection closed by the server".into(),
        };
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Resp {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn send_signed(addr: SocketAddr, out: &Outgoing, extra: &[(&str, &str)]) -> Resp {
    let mut h: Vec<(&str, &str)> = out.headers.pairs().to_vec();
    h.push(("content-type", "application/json"));
    h.extend_from_slice(extra);
    send(addr, "POST", out.path, &h, out.body.clone()).await
}

/// `out` with one hex digit of its MAC changed.
fn tampered_mac(out: &Outgoing) -> Outgoing {
    let mut o = out.clone();
    let mut mac = o.headers.mac.clone().into_bytes();
    mac[0] = if mac[0] == b'0' { b'1' } else { b'0' };
    o.headers.mac = String::from_utf8(mac).unwrap();
    o
}

/// `out` with one byte of its body changed (MAC left as it was).
fn tampered_body(out: &Outgoing) -> Outgoing {
    let mut o = out.clone();
    let i = o.body.len() / 2;
    o.body[i] ^= 0x01;
    o
}

/// Headers signed over arbitrary bytes, as `encode_request` would for a
/// command.
#[allow(clippy::too_many_arguments)]
fn signed_raw(
    key: &MacKey,
    dir: Direction,
    principal: &str,
    path: &'static str,
    body: &[u8],
    now: u64,
    rng: &SystemRandom,
) -> Outgoing {
    Outgoing {
        path,
        headers: sign_request(key, dir, principal, path, body, now, rng).unwrap(),
        body: body.to_vec(),
    }
}

/// A hostile request: its kind, itself, extra headers.
type Case<'a> = (&'static str, Outgoing, Vec<(&'a str, &'a str)>);

#[derive(Default)]
struct Table(BTreeMap<(&'static str, &'static str), usize>);

impl Table {
    fn add(&mut self, endpoint: &'static str, kind: &'static str) {
        *self.0.entry((endpoint, kind)).or_default() += 1;
    }
}

const KINDS: [&str; 8] = [
    "tampered",
    "replayed",
    "stale",
    "oversized",
    "malformed",
    "over limit",
    "take-over",
    "forbidden",
];

/// A DNS query: `id`, one question for `name` of `qtype`, opcode 0, RD.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0]);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// The answer's rcode (low 4 bits of the flags), after checking that it
/// is a response to `id`.
fn dns_rcode(answer: &[u8], id: u16) -> u8 {
    assert!(answer.len() >= 12, "a DNS header");
    assert_eq!(u16::from_be_bytes([answer[0], answer[1]]), id);
    assert_eq!(answer[2] & 0x80, 0x80, "QR set");
    answer[3] & 0x0f
}

/// One UDP exchange: the answer, or None within `wait`.
async fn dns_udp(from: &tokio::net::UdpSocket, server: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    from.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(wait, from.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

/// One TCP exchange (length-prefixed): the answer, or None when the
/// server closes without one.
async fn dns_tcp(server: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut framed = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len))
        .await
        .unwrap()
        .ok()?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m).await.unwrap();
    Some(m)
}

const RCODE_FORMERR: u8 = 1;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// Issue 18 item 11: hostile queries to centerd's DNS server (UDP and
/// TCP): malformed and oversized messages get FORMERR or, when not even a
/// header, no answer; zone transfers and dynamic updates are refused; a
/// flooding source is dropped past its limit while a legitimate query
/// from another source is still answered.
async fn dns_cases<G, R>(center: Arc<Center<G, R>>, table: &mut Table)
where
    G: vpnnat_center::center::GatewayCommands + 'static,
    R: vpnnat_center::center::RouterCommands + 'static,
{
    use vpnnat_center::dns::{self, rate::RateConfig, DnsListeners, Zone};
    const DOMAIN: &str = "vpn.center.example";
    let listeners = DnsListeners::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = listeners.udp.local_addr().unwrap();
    let limits = RateConfig {
        per_sec: 5,
        burst: 20,
        ..RateConfig::default()
    };
    tokio::spawn(dns::serve(
        listeners,
        std::future::pending(),
        center,
        Zone::new(DOMAIN, 60).unwrap(),
        limits,
    ));
    let wait = Duration::from_millis(500);
    let me = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let legit = dns_query(0x0101, DOMAIN, 6);
    assert_eq!(
        dns_udp(&me, server, &legit, Duration::from_secs(2))
            .await
            .map(|a| dns_rcode(&a, 0x0101)),
        Some(0),
        "control: a good query (the zone's SOA) is answered (NOERROR)"
    );
    // Malformed: FORMERR with the query's ID; not even a header, or a
    // response posing as a query: no answer (nothing to reflect).
    let mut two_questions = dns_query(0x0202, DOMAIN, 6);
    two_questions[5] = 2;
    let mut pointer_loop = dns_query(0x0202, DOMAIN, 1);
    pointer_loop[12] = 0xc0;
    pointer_loop[13] = 12;
    let mut cut = legit.clone();
    cut[..2].copy_from_slice(&0x0202u16.to_be_bytes());
    cut.truncate(cut.len() - 3);
    let long_label = dns_query(0x0202, &format!("{}.{DOMAIN}", "x".repeat(64)), 1);
    for (what, q) in [
        ("two questions", two_questions),
        ("a compression pointer to itself", pointer_loop),
        ("a cut question", cut),
        ("a 64-byte label", long_label),
    ] {
        let a = dns_udp(&me, server, &q, wait)
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(dns_rcode(&a, 0x0202), RCODE_FORMERR, "{what}");
        table.add("centerd DNS", "malformed");
    }
    let mut response = legit.clone();
    response[2] |= 0x80;
    for (what, q) in [("four bytes", vec![0x12, 0x34, 0, 0]), ("a response", response)] {
        assert_eq!(dns_udp(&me, server, &q, wait).await, None, "{what}: no answer");
        table.add("centerd DNS", "malformed");
    }
    let garbage: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
    if let Some(a) = dns_tcp(server, &garbage).await {
        // Its opcode bits say 9: NOTIMP (FORMERR had they said 0).
        assert!(
            [RCODE_FORMERR, RCODE_NOTIMP].contains(&(a[3] & 0x0f)),
            "junk over TCP: {a:?}"
        );
    }
    table.add("centerd DNS", "malformed");
    // Oversized: a 5,000-byte datagram and a 60,000-byte TCP message.
    let mut big = legit.clone();
    big[..2].copy_from_slice(&0x0303u16.to_be_bytes());
    big.resize(5000, 0);
    let a = dns_udp(&me, server, &big, wait)
        .await
        .expect("an answer to the oversized datagram");
    assert_eq!(dns_rcode(&a, 0x0303), RCODE_FORMERR, "oversized datagram");
    table.add("centerd DNS", "oversized");
    big.resize(60_000, 0);
    let a = dns_tcp(server, &big)
        .await
        .expect("an answer to the oversized TCP message");
    assert_eq!(dns_rcode(&a, 0x0303), RCODE_FORMERR, "oversized TCP message");
    table.add("centerd DNS", "oversized");
    // Forbidden: zone transfers (AXFR over TCP, IXFR over UDP; the zone
    // would list every live grant) and dynamic updates.
    let a = dns_tcp(server, &dns_query(0x0404, DOMAIN, 252))
        .await
        .expect("AXFR answered");
    assert_eq!(dns_rcode(&a, 0x0404), RCODE_REFUSED, "AXFR");
    table.add("centerd DNS", "forbidden");
    let a = dns_udp(&me, server, &dns_query(0x0404, DOMAIN, 251), wait)
        .await
        .expect("IXFR answered");
    assert_eq!(dns_rcode(&a, 0x0404), RCODE_REFUSED, "IXFR");
    table.add("centerd DNS", "forbidden");
    let mut update = dns_query(0x0404, DOMAIN, 6);
    update[2] = 0x28; // opcode 5, UPDATE
    let a = dns_udp(&me, server, &update, wait).await.expect("UPDATE answered");
    assert_eq!(dns_rcode(&a, 0x0404), RCODE_NOTIMP, "UPDATE");
    table.add("centerd DNS", "forbidden");
    // Over limit: one source sends 200 queries at once; past its burst
    // (20) and rate (5/s) they are dropped unanswered. Then another source
    // is still answered.
    let flooder = Arc::new(tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap());
    let t0 = std::time::Instant::now();
    for i in 0..200u16 {
        flooder.send_to(&dns_query(i, DOMAIN, 1), server).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut answered = 0u64;
    let mut buf = [0u8; 1500];
    while let Ok(Ok(_)) = tokio::time::timeout(wait, flooder.recv_from(&mut buf)).await {
        answered += 1;
    }
    let allowed = 20 + (t0.elapsed().as_secs_f64() * 5.0).ceil() as u64 + 1;
    assert!(
        (20..=allowed).contains(&answered),
        "flood: {answered} of 200 answered, {allowed} allowed"
    );
    for _ in answered..200 {
        table.add("centerd DNS", "over limit");
    }
    assert_eq!(
        dns_udp(&me, server, &legit, Duration::from_secs(2))
            .await
            .map(|a| dns_rcode(&a, 0x0101)),
        Some(0),
        "another source is still answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_change_nothing_and_leak_no_secret() {
    log::set_boxed_logger(Box::new(Capture)).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let rng = SystemRandom::new();
    let master = FactoryMasterKey::from_array([0x5a; 32]);
    let gw_key = GatewayApiKey::from_array([0xa5; 32]);
    let gw_name = GatewayName::new("gw1").unwrap();
    let center_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ui_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (center_a, gw_a, ui_a) = (
        center_l.local_addr().unwrap(),
        gw_l.local_addr().unwrap(),
        ui_l.local_addr().unwrap(),
    );

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
        vpnnat_center::config::HttpEndpoint::parse(&format!("http://{center_a}")).unwrap(),
        gw_name.clone(),
        gw_key.clone(),
        T,
    ));
    let mut st = Storage::open_in_memory().unwrap();
    st.init_pool(&"10.64.0.0/16".parse().unwrap()).unwrap();
    let settings = CenterSettings {
        factory_master_key: master.clone(),
        maintenance_password: MaintenancePassword::new(MAINT_PW).unwrap(),
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
        // Simulated routers run no IKE: answered without waiting for a tunnel.
        tunnel_up_timeout: Duration::ZERO,
        // one open request per router: the legitimate one below fills it
        max_open_requests: 1,
        max_grant_lifetime_secs: vpnnat_center::limits::DEFAULT_MAX_LIFETIME_SECS,
        idle_timeout_secs: None,
    };
    let gws = HttpGateways::new(vec![(gw_name.clone(), gw_a.to_string(), gw_key.clone())], T);
    let center = Arc::new(Center::new(st, settings, gws, HttpRouters::new(8080, T)).unwrap());
    tokio::spawn(vpnnat_center::api::run_with(
        center_l,
        std::future::pending(),
        center.clone(),
        ApiSettings {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        },
    ));
    let ui_settings = UiSettings {
        operator_hashes: vec![PasswordHash::create(OPERATOR_PW, 1000, &rng).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: None,
        throttle: Default::default(),
        operator_networks: Vec::new(),
        hash_slots: vpnnat_center::ui::DEFAULT_HASH_SLOTS,
        account_iterations: 1000,
        totp_required_roles: Vec::new(),
        clock: vpnnat_center::ui::Clock::system(),
    };
    vpnnat_center::accounts::manage::seed_admins(&mut center.store().unwrap(), &ui_settings.operator_hashes, 0)
        .unwrap();
    tokio::spawn(ui::run(ui_l, std::future::pending(), center.clone(), ui_settings));

    // A router installs, asks for its gateway and for maintenance.
    let id = TerminalId::new("router-1").unwrap();
    let sid = SecretId::derive(&master, &id);
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let secrets = call_with(
        &center_a.to_string(),
        &id,
        &sid.mac_key(),
        &InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        },
        T,
        &rng,
        &[XFF],
    )
    .await
    .unwrap()
    .open(kp, &id)
    .unwrap();
    let sid2 = secrets.secret_id2().clone();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    call_with(
        &center_a.to_string(),
        &id,
        &sid2.mac_key(),
        &GatewayAddressRequest {
            reply_key: kp.public_key(),
            initiation: Default::default(),
            wan: None,
        },
        T,
        &rng,
        &[XFF],
    )
    .await
    .unwrap();
    let maintenance = |rng: &SystemRandom| {
        let kp = ReplyKeyPair::generate(rng).unwrap();
        let details = MaintenanceDetails {
            claimant_name: ClaimantName::new("Hanako").unwrap(),
            terminal_names: TerminalNames::new(vec![TerminalName::new("pc1").unwrap()]).unwrap(),
            phone: Phone::new("0312345678").unwrap(),
            content: RequestContent::new("slow printer").unwrap(),
        };
        MaintenanceRequest::new(
            rng,
            &sid2,
            &id,
            kp.public_key(),
            ClaimantLevel::General,
            Urgency::Normal,
            &details,
        )
        .unwrap()
    };
    let legit_maint = encode_request(&maintenance(&rng), &id, &sid2.mac_key(), unix_now(), &rng).unwrap();
    let r = send_signed(center_a, &legit_maint, &[XFF]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let notice = FailureNotice {
        code: FailureCode::Ipsec,
        detail: FailureDetail::new("charon died").unwrap(),
    };
    let legit_failure = encode_request(&notice, &id, &sid2.mac_key(), unix_now(), &rng).unwrap();
    assert_eq!(send_signed(center_a, &legit_failure, &[XFF]).await.status, 200);
    let legit_state = encode_request(&ReportState {}, &gw_name, &gw_key.mac_key(), unix_now(), &rng).unwrap();
    assert_eq!(send_signed(gw_a, &legit_state, &[]).await.status, 200);
    // An operator session (for the UI cases).
    let r = send(
        ui_a,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("password={}", OPERATOR_PW.replace(' ', "+")).into_bytes(),
    )
    .await;
    assert_eq!(r.status, 303);
    // (The session cookie is not exposed by `send`; log in through the
    // store instead, as the UI does, for a token the test knows.)
    let token = "d1e5ec7e".repeat(8);
    let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()));
    center
        .store()
        .unwrap()
        .add_operator_session(&hash, unix_now() + 600, "operator#1")
        .unwrap();
    let n = center.store().unwrap().list_requests(10).unwrap()[0].acceptance_number;

    // The state every refusal must leave alone.
    let snapshot = || {
        (
            center.store().unwrap().dump(&[]).unwrap(),
            format!("{:?}", gwd.state().unwrap()),
        )
    };
    let before = snapshot();
    let mut table = Table::default();
    let stale = unix_now() - 3600;

    // Router -> center: every endpoint.
    let router_paths: [(&'static str, bool); 6] = [
        (paths::center::INSTALL, true),
        (paths::center::FAILURE, false),
        (paths::center::GATEWAY_ADDRESS, false),
        (paths::center::MAINTENANCE, false),
        (paths::center::TUNNEL_LOST, false),
        (paths::center::SITE_END, false),
    ];
    for (path, with_sid) in router_paths {
        let key = if with_sid { sid.mac_key() } else { sid2.mac_key() };
        let body = legit_failure.body.clone();
        let fresh = signed_raw(
            &key,
            Direction::RouterToCenter,
            "router-1",
            path,
            &body,
            unix_now(),
            &rng,
        );
        let cases: Vec<Case> = vec![
            ("tampered", tampered_mac(&fresh), vec![XFF]),
            ("tampered", tampered_body(&fresh), vec![XFF]),
            (
                "stale",
                signed_raw(&key, Direction::RouterToCenter, "router-1", path, &body, stale, &rng),
                vec![XFF],
            ),
            (
                "stale",
                signed_raw(
                    &key,
                    Direction::RouterToCenter,
                    "router-1",
                    path,
                    &body,
                    unix_now() + 3600,
                    &rng,
                ),
                vec![XFF],
            ),
            (
                "oversized",
                signed_raw(
                    &key,
                    Direction::RouterToCenter,
                    "router-1",
                    path,
                    &vec![b' '; 1 << 20],
                    unix_now(),
                    &rng,
                ),
                vec![XFF],
            ),
            (
                "malformed",
                signed_raw(
                    &key,
                    Direction::RouterToCenter,
                    "router-1",
                    path,
                    b"{\"not\": json",
                    unix_now(),
                    &rng,
                ),
                vec![XFF],
            ),
            (
                "malformed",
                signed_raw(&key, Direction::RouterToCenter, "router-1", path, b"", unix_now(), &rng),
                vec![XFF],
            ),
            (
                // Another router's name with this one's key.
                "tampered",
                signed_raw(
                    &key,
                    Direction::RouterToCenter,
                    "router-2",
                    path,
                    &body,
                    unix_now(),
                    &rng,
                ),
                vec![XFF],
            ),
        ];
        for (kind, out, extra) in cases {
            let r = send_signed(center_a, &out, &extra).await;
            assert!((400..500).contains(&r.status), "{path} {kind}: {} {}", r.status, r.body);
            assert!(!r.body.is_empty(), "{path} {kind}: a clear status text");
            table.add("router API", kind);
        }
        // No or garbled authentication headers.
        for headers in [
            vec![XFF],
            vec![
                XFF,
                ("x-vpnnat-principal", "router-1"),
                ("x-vpnnat-timestamp", "yesterday"),
                ("x-vpnnat-nonce", "zz"),
                ("x-vpnnat-mac", "not-hex"),
            ],
        ] {
            let r = send(center_a, "POST", path, &headers, body.clone()).await;
            assert!((400..500).contains(&r.status), "{path}: {} {}", r.status, r.body);
            table.add("router API", "malformed");
        }
    }
    // Replays of accepted requests.
    for out in [&legit_maint, &legit_failure] {
        let r = send_signed(center_a, out, &[XFF]).await;
        assert!(
            (400..500).contains(&r.status),
            "replay {}: {} {}",
            out.path,
            r.status,
            r.body
        );
        table.add("router API", "replayed");
    }
    assert_eq!(snapshot(), before, "router API: no state change");

    // Over the per-router cap on open requests (issue 18 item 10): fresh,
    // correctly signed requests are refused with 429 and store nothing but
    // their nonces (which keep them from being replayed).
    let without_nonces = || center.store().unwrap().dump(&["nonces"]).unwrap();
    let before_cap = without_nonces();
    for _ in 0..2 {
        let out = encode_request(&maintenance(&rng), &id, &sid2.mac_key(), unix_now(), &rng).unwrap();
        let r = send_signed(center_a, &out, &[XFF]).await;
        assert_eq!(r.status, 429, "over the cap: {}", r.body);
        assert!(r.body.contains("too many open maintenance requests"), "{}", r.body);
        table.add("router API", "over limit");
    }
    assert_eq!(without_nonces(), before_cap, "over the cap: no state change");
    assert_eq!(snapshot().1, before.1, "over the cap: the gateway untouched");
    let before = snapshot();

    // A take-over with the factory secret (issue 18 item 5): fresh,
    // correctly Secret(ID)-signed re-installations of the installed router
    // without a valid proof of its Secret(ID2). A wrong proof changes no
    // table but the nonces and the audit log (its alert); no proof leaves
    // only the request pending for an operator.
    let tables = |skip: &[&str]| center.store().unwrap().dump(skip).unwrap();
    let quiet = ["nonces", "audit", "sqlite_sequence"];
    let pending_too = ["nonces", "audit", "sqlite_sequence", "reinstall_requests"];
    let (before_quiet, before_pending) = (tables(&quiet), tables(&pending_too));
    let takeover = |proof_key: Option<SecretId2>| {
        let rk = ReplyKeyPair::generate(&rng).unwrap().public_key();
        let req = InstallRequest {
            reply_key: rk,
            proof: proof_key.map(|k| ReinstallProof::compute(&k, &id, &rk)),
        };
        encode_request(&req, &id, &sid.mac_key(), unix_now(), &rng).unwrap()
    };
    let r = send_signed(center_a, &takeover(Some(SecretId2::from_array([0x5a; 32]))), &[XFF]).await;
    assert_eq!(r.status, 403, "wrong proof: {}", r.body);
    table.add("router API", "take-over");
    assert_eq!(tables(&quiet), before_quiet, "wrong proof: no state change");
    let r = send_signed(center_a, &takeover(None), &[XFF]).await;
    assert_eq!(r.status, 423, "no proof: {}", r.body);
    assert!(r.body.contains("pending operator approval"), "{}", r.body);
    table.add("router API", "take-over");
    assert_eq!(
        tables(&pending_too),
        before_pending,
        "no proof: nothing but the pending request"
    );
    assert_eq!(snapshot().1, before.1, "take-over: the gateway untouched");
    let before = snapshot();

    // gatewayd -> centerd events (the router API's gateway endpoint).
    let ev_body = br#"{"terminal_id":"router-1","slot":0,"state":"up"}"#;
    let ev = |now: u64| {
        signed_raw(
            &gw_key.mac_key(),
            Direction::GatewayToCenter,
            "gw1",
            paths::center::GATEWAY_EVENT,
            ev_body,
            now,
            &rng,
        )
    };
    let fresh = ev(unix_now());
    for (kind, out) in [
        ("tampered", tampered_mac(&fresh)),
        ("tampered", tampered_body(&fresh)),
        ("stale", ev(stale)),
        (
            "oversized",
            signed_raw(
                &gw_key.mac_key(),
                Direction::GatewayToCenter,
                "gw1",
                paths::center::GATEWAY_EVENT,
                &vec![b' '; 1 << 20],
                unix_now(),
                &rng,
            ),
        ),
        (
            "malformed",
            signed_raw(
                &gw_key.mac_key(),
                Direction::GatewayToCenter,
                "gw1",
                paths::center::GATEWAY_EVENT,
                b"[1,2,",
                unix_now(),
                &rng,
            ),
        ),
    ] {
        let r = send_signed(center_a, &out, &[]).await;
        assert!((400..500).contains(&r.status), "event {kind}: {} {}", r.status, r.body);
        table.add("gateway events", kind);
    }
    assert_eq!(snapshot(), before, "gateway events: no state change");

    // centerd -> gatewayd: every endpoint.
    for path in [
        paths::gateway::SETUP_TUNNEL,
        paths::gateway::ADD_ADDRESSES,
        paths::gateway::REMOVE_ADDRESSES,
        paths::gateway::TEAR_DOWN,
        paths::gateway::RESTART_TUNNEL,
        paths::gateway::STATE,
    ] {
        let k = gw_key.mac_key();
        let body = br#"{"terminal_id":"router-1"}"#;
        let fresh = signed_raw(&k, Direction::CenterToGateway, "gw1", path, body, unix_now(), &rng);
        for (kind, out) in [
            ("tampered", tampered_mac(&fresh)),
            ("tampered", tampered_body(&fresh)),
            (
                "tampered",
                signed_raw(&k, Direction::CenterToGateway, "gw2", path, body, unix_now(), &rng),
            ),
            (
                "stale",
                signed_raw(&k, Direction::CenterToGateway, "gw1", path, body, stale, &rng),
            ),
            (
                "oversized",
                signed_raw(
                    &k,
                    Direction::CenterToGateway,
                    "gw1",
                    path,
                    &vec![b' '; 1 << 20],
                    unix_now(),
                    &rng,
                ),
            ),
            (
                "malformed",
                signed_raw(&k, Direction::CenterToGateway, "gw1", path, b"{]", unix_now(), &rng),
            ),
        ] {
            let r = send_signed(gw_a, &out, &[]).await;
            assert!((400..500).contains(&r.status), "{path} {kind}: {} {}", r.status, r.body);
            table.add("gateway API", kind);
        }
        let r = send(gw_a, "POST", path, &[], body.to_vec()).await;
        assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        table.add("gateway API", "malformed");
    }
    let r = send_signed(gw_a, &legit_state, &[]).await;
    assert!(
        (400..500).contains(&r.status),
        "gateway replay: {} {}",
        r.status,
        r.body
    );
    table.add("gateway API", "replayed");
    assert_eq!(snapshot(), before, "gateway API: no state change");

    // Operator UI.
    let cookie = |t: &str| format!("vpnnat_session={t}");
    let mut forged = token.clone().into_bytes();
    forged[0] = b'e';
    let forged = String::from_utf8(forged).unwrap();
    let expired = "e1".repeat(32);
    center
        .store()
        .unwrap()
        .add_operator_session(
            &hex::encode(ring::digest::digest(&ring::digest::SHA256, expired.as_bytes())),
            unix_now() - 1,
            "operator#1",
        )
        .unwrap();
    let logged_out = "10".repeat(32);
    let before = snapshot();
    let start = format!("/requests/{n}/start");
    let end = format!("/requests/{n}/end");
    let good_csrf = {
        let page = send(ui_a, "GET", "/", &[("cookie", &cookie(&token))], vec![])
            .await
            .body;
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 64].to_owned()
    };
    let form = |csrf: &str| format!("csrf={csrf}").into_bytes();
    let ui_cases: Vec<(&'static str, &str, String, String, Vec<u8>)> = vec![
        ("tampered", "POST", start.clone(), cookie(&forged), form(&good_csrf)),
        (
            "tampered",
            "POST",
            end.clone(),
            cookie(&token),
            form(&format!("{}0", &good_csrf[..63])),
        ),
        ("tampered", "GET", "/api/state".into(), cookie(&forged), vec![]),
        ("replayed", "POST", end.clone(), cookie(&logged_out), form(&good_csrf)),
        ("replayed", "GET", "/api/state".into(), cookie(&logged_out), vec![]),
        ("stale", "POST", end.clone(), cookie(&expired), form(&good_csrf)),
        ("stale", "GET", "/audit.csv".into(), cookie(&expired), vec![]),
        ("oversized", "POST", "/login".into(), String::new(), vec![b'a'; 1 << 20]),
        ("oversized", "POST", end.clone(), cookie(&token), vec![b'a'; 1 << 20]),
        (
            "malformed",
            "POST",
            start.clone(),
            cookie(&token),
            b"\xff\xfe%%%".to_vec(),
        ),
        ("malformed", "GET", "/api/state".into(), "vpnnat_session".into(), vec![]),
        (
            "malformed",
            "POST",
            "/requests/x/start".into(),
            cookie(&token),
            form(&good_csrf),
        ),
        (
            "malformed",
            "POST",
            format!("/requests/{n}/explode"),
            cookie(&token),
            form(&good_csrf),
        ),
    ];
    for (kind, method, path, c, body) in ui_cases {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if !c.is_empty() {
            h.push(("cookie", c.as_str()));
        }
        let r = send(ui_a, method, &path, &h, body).await;
        assert!(
            (400..500).contains(&r.status),
            "UI {kind} {method} {path}: {} {}",
            r.status,
            r.body
        );
        assert!(!r.body.is_empty());
        table.add("operator UI", kind);
    }
    assert_eq!(snapshot(), before, "operator UI: no state change");

    dns_cases(center.clone(), &mut table).await;
    assert_eq!(snapshot(), before, "centerd DNS: no state change");

    // Nothing secret in any log record.
    let log = LOG.lock().unwrap().clone();
    assert!(log.contains("WARN"), "the logger captured the refusals");
    let secrets = [
        hex::encode(master.expose_secret()),
        hex::encode(gw_key.expose_secret()),
        hex::encode(sid.expose_secret()),
        hex::encode(sid2.expose_secret()),
        MAINT_PW.to_owned(),
        OPERATOR_PW.to_owned(),
        OPERATOR_PW.replace(' ', "+"),
        token.clone(),
        forged.clone(),
        good_csrf.clone(),
    ];
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret reached the log");
    }

    // The table.
    let endpoints = [
        "router API",
        "gateway events",
        "gateway API",
        "operator UI",
        "centerd DNS",
    ];
    println!(
        "{:<16} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "rejected", KINDS[0], KINDS[1], KINDS[2], KINDS[3], KINDS[4], KINDS[5], KINDS[6], KINDS[7]
    );
    for e in endpoints {
        let c = |k: &str| {
            table
                .0
                .get(&(e, KINDS.iter().find(|x| **x == k).unwrap()))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{e:<16} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            c("tampered"),
            c("replayed"),
            c("stale"),
            c("oversized"),
            c("malformed"),
            c("over limit"),
            c("take-over"),
            c("forbidden")
        );
    }
    let total = |k: &str| {
        table
            .0
            .iter()
            .filter(|((_, kk), _)| *kk == k)
            .map(|(_, v)| v)
            .sum::<usize>()
    };
    println!(
        "rejected: tampered {}, replayed {}, stale {}, oversized {}, malformed {}, over limit {}, take-over {}, forbidden {} (no state change, {} log lines without a secret)",
        total("tampered"),
        total("replayed"),
        total("stale"),
        total("oversized"),
        total("malformed"),
        total("over limit"),
        total("take-over"),
        total("forbidden"),
        log.lines().count()
    );
}
