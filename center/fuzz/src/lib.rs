//! Fuzz harnesses for centerd's and gatewayd's decoders of outside bytes.
//! Each `pub fn` is one cargo-fuzz target (`fuzz_targets/<name>.rs` calls
//! it) and is replayed over the checked-in corpus by
//! `center/tests/fuzz_corpus.rs`. Assertions are the invariants: a panic is
//! a finding.
//!
//! The protocol messages that centerd and gatewayd decode (router ->
//! center requests, center -> gateway commands and their answers) go
//! through `vpnnat_proto::{decode_request, decode_response}`: their targets
//! are in `crates/proto/fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyper::header::{HeaderValue, COOKIE};
use hyper::HeaderMap;
use vpnnat_center::api::{router_ip, ApiSettings};
use vpnnat_center::config::CenterdConfig;
use vpnnat_center::dns::{respond, Lookup, Transport, Zone, ZoneName};
use vpnnat_center::ui::{audit_filter, form_decode, form_field, session_cookie, url_encode};
use vpnnat_gatewayd::config::GatewaydConfig;
use vpnnat_service::escape::html as esc;

/// centerd's DNS server on arbitrary messages, as a UDP datagram and as
/// a TCP message: decoding and answering must never panic, and every
/// answer carries the query's ID, has QR set and, over UDP, fits in our
/// EDNS payload size (1232 bytes; 512 for a client without EDNS).
pub fn dns_message(data: &[u8]) {
    let Ok(zone) = Zone::new("vpn.center.example", 5) else {
        return;
    };
    let lookup = |n: ZoneName<'_>| match n {
        ZoneName::Grant { terminal_name, .. } if terminal_name.len() % 2 == 0 => {
            Lookup::Address(Ipv4Addr::new(10, 0, 0, 1))
        }
        ZoneName::Router { .. } => Lookup::Failed,
        _ => Lookup::NoSuchName,
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(a) = respond(data, &zone, transport, lookup) {
            if transport == Transport::Udp {
                assert!(a.len() <= 1232, "{}", a.len());
            }
            assert_eq!(a.get(..2), data.get(..2));
            assert_eq!(a.get(2).map(|f| f & 0x80), Some(0x80));
        }
    }
}

/// The `name=value` pairs of an urlencoded string, names and values
/// decoded (a model of the WHATWG parser: empty pieces skipped, a piece
/// without `=` is a name with an empty value).
fn pairs(s: &[u8]) -> Vec<(String, String)> {
    s.split(|b| *b == b'&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.iter().position(|b| *b == b'=') {
            Some(i) => (form_decode_bytes(&kv[..i]), form_decode_bytes(&kv[i + 1..])),
            None => (form_decode_bytes(kv), String::new()),
        })
        .collect()
}

/// An independent model of one value's decoding: `+` is a space, `%XY`
/// (two hex digits) a byte, anything else itself, then UTF-8 with U+FFFD
/// for what does not decode.
fn form_decode_bytes(s: &[u8]) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match (c, hex(s.get(i + 1)), hex(s.get(i + 2))) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the operator UI and the router API read from a request. Byte 0
/// picks the input:
/// 0 the login form body (`password=`), 1 `Cookie` headers (split on
/// '\n'), 2 the audit page's query string, 3 `X-Forwarded-For` from a
/// trusted proxy and from another peer, 4 text through the HTML escaper
/// (routerd's pages', `vpnnat_service::escape`; the UI's are maud
/// templates) and the redirect's URL encoder.
pub fn ui_input(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 5 {
        0 => {
            let got = form_field(rest, "password");
            let want = pairs(rest).into_iter().find(|(k, _)| k == "password").map(|(_, v)| v);
            assert_eq!(got, want);
            if let Some(v) = got {
                // What the UI encodes, it decodes to the same text.
                assert_eq!(form_decode(&url_encode(&v)), v);
                assert_eq!(form_decode_bytes(url_encode(&v).as_bytes()), v);
                let body = format!("user=x&password={}", url_encode(&v));
                assert_eq!(form_field(body.as_bytes(), "password").as_deref(), Some(v.as_str()));
            }
        }
        1 => {
            let mut h = HeaderMap::new();
            for line in rest.split(|b| *b == b'\n') {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    h.append(COOKIE, v);
                }
            }
            if let Some(tok) = session_cookie(&h) {
                let sent = h
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .any(|kv| kv.trim() == format!("vpnnat_session={tok}"));
                assert!(sent, "token {tok:?} is not a cookie of {h:?}");
            }
        }
        2 => {
            let Ok(q) = std::str::from_utf8(rest) else { return };
            let f = audit_filter(q, 500);
            let p = pairs(q.as_bytes());
            let first = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            if first("limit").is_none() {
                assert_eq!(f.limit, 500);
            }
            for v in [&f.actor, &f.action, &f.terminal_id].into_iter().flatten() {
                assert!(!v.is_empty());
            }
        }
        3 => {
            let s = ApiSettings {
                trusted_proxies: vec!["192.0.2.0/24".parse().unwrap()],
            };
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                h.insert("x-forwarded-for", v);
            }
            let peer = SocketAddr::from(([203, 0, 113, 9], 5000));
            // Only a trusted proxy may name another address.
            assert_eq!(router_ip(peer, &h, &s), Some(Ipv4Addr::new(203, 0, 113, 9)));
            let proxy = SocketAddr::from(([192, 0, 2, 1], 5000));
            if let Some(ip) = router_ip(proxy, &h, &s) {
                let xff = h.get("x-forwarded-for").and_then(|v| v.to_str().ok());
                match xff {
                    Some(v) => assert_eq!(v.rsplit(',').next().map(|l| l.trim().parse().ok()), Some(Some(ip))),
                    None => assert_eq!(ip, Ipv4Addr::new(192, 0, 2, 1)),
                }
            }
        }
        _ => {
            let s = String::from_utf8_lossy(rest);
            let e = esc(&s);
            assert!(!e.contains(['<', '>', '"', '\'']), "unescaped: {e}");
            let back = e
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&");
            assert_eq!(back, s);
            let u = url_encode(&s);
            assert!(u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
            assert_eq!(form_decode(&u), s);
        }
    }
}

/// The first run of 64 hex digits after `key` on the same line, if it
/// occurs only once in `text` (a copy elsewhere, e.g. as a key name, may
/// be echoed legitimately).
fn secret_in(text: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(key))?;
    let after = &line[line.find(key)?..];
    let mut run = String::new();
    for c in after.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            if run.len() == 64 {
                return (text.matches(run.as_str()).count() == 1).then_some(run);
            }
        } else {
            run.clear();
        }
    }
    None
}

const MAINTENANCE_PASSWORD: &str = "maint-pass-1";

/// A directory holding the maintenance password file that centerd's
/// config names (relative paths resolve against it).
fn config_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("vpnnat-fuzz-center-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("maint.txt"), format!("{MAINTENANCE_PASSWORD}\n")).unwrap();
        d
    })
}

/// centerd's (byte 0 even) or gatewayd's (odd) TOML config: parsing is
/// deterministic, and neither the config's Debug form nor an error message
/// shows the factory master key, a gateway API key or the maintenance
/// password.
pub fn center_config(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let origin = Path::new("/etc/vpnnat/fuzz.toml");
    let shown = if sel % 2 == 0 {
        match CenterdConfig::parse(text, origin, config_dir()) {
            Ok(c) => {
                let d = format!("{c:?}");
                let again = CenterdConfig::parse(text, origin, config_dir()).expect("parses again");
                assert_eq!(format!("{again:?}"), d);
                assert_ne!(c.router_listen, c.ui_listen);
                assert_eq!(c.settings.maintenance_password.expose_secret(), MAINTENANCE_PASSWORD);
                d
            }
            Err(e) => format!("{e} {e:?}"),
        }
    } else {
        match GatewaydConfig::parse(text, origin) {
            Ok(c) => {
                let d = format!("{c:?}");
                let again = GatewaydConfig::parse(text, origin).expect("parses again");
                assert_eq!(format!("{again:?}"), d);
                d
            }
            Err(e) => format!("{e} {e:?}"),
        }
    };
    let shown = shown.to_ascii_lowercase();
    for key in ["master_key", "api_key"] {
        if let Some(secret) = secret_in(text, key) {
            assert!(!shown.contains(&secret.to_ascii_lowercase()), "{key} is shown: {shown}");
        }
    }
    if !text.contains(MAINTENANCE_PASSWORD) {
        assert!(
            !shown.contains(MAINTENANCE_PASSWORD),
            "the maintenance password is shown: {shown}"
        );
    }
}

/// Seed inputs: `(target, name, bytes)`. `center/tests/fuzz_corpus.rs`
/// runs them through the harnesses and, with `VPNNAT_WRITE_FUZZ_SEEDS=1`,
/// writes them to `corpus/<target>/`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let with = |sel: u8, body: &str| [&[sel][..], body.as_bytes()].concat();
    // The configs the images install, and the unit tests' examples.
    let centerd = include_str!("../../../buildroot-overlay/center/etc/centerd.toml");
    let gatewayd = include_str!("../../../buildroot-overlay/center/etc/gatewayd.toml");
    let example = r#"
[server]
router_listen = "127.0.0.1:8080"
ui_listen = "127.0.0.1:8081"
trusted_proxies = ["192.0.2.0/24"]
[database]
path = "center.db"
[factory]
master_key = "ca5297291ca2041dd165ad8b1046bc9b11b80238db9f1660f5814ea0431bb9cc"
[routers]
maintenance_password_file = "maint.txt"
[operators]
password_hashes = ["pbkdf2-sha256$1000$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000"]
[pool]
cidr = "10.64.0.0/16"
[center]
networks = ["172.16.0.0/24"]
[dns]
listen = "127.0.0.1:5353"
zone = "vpn.center.example"
[[gateways]]
name = "gw1"
api_url = "http://172.16.0.11:9000"
global_ip = "198.51.100.11"
ike_id = "gw1.center.example"
slots = 4
api_key = "cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f"
"#;
    let gw_example = r#"
name = "gw1"
listen = "127.0.0.1:9000"
api_key = "cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f"
global_ip = "198.51.100.11"
center_networks = ["172.16.0.0/24"]
center_url = "http://127.0.0.1:8080"
datapath = "recording"
ike = true
"#;
    vec![
        ("center_config", "seed-centerd-image".into(), with(0, centerd)),
        ("center_config", "seed-gatewayd-image".into(), with(1, gatewayd)),
        ("center_config", "seed-centerd-example".into(), with(0, example)),
        ("center_config", "seed-gatewayd-example".into(), with(1, gw_example)),
        (
            "ui_input",
            "seed-login".into(),
            with(0, "password=s%C3%A9cret+word&x=1"),
        ),
        (
            "ui_input",
            "seed-cookie".into(),
            with(1, "theme=dark; vpnnat_session=0123abcd\nother=1"),
        ),
        (
            "ui_input",
            "seed-audit-query".into(),
            with(
                2,
                "actor=operator%231&action=login&terminal=router-1&number=7&since=1&until=2&limit=50",
            ),
        ),
        ("ui_input", "seed-xff".into(), with(3, "198.51.100.7, 192.0.2.1")),
        ("ui_input", "seed-escape".into(), with(4, "<a href=\"x\">'&'</a> é")),
    ]
}
