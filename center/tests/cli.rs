//! `centerd`'s tool subcommands, run as the built binary against a database
//! in a temporary directory (the file a running centerd would share):
//! exit codes (0 done, 1 failed, 2 usage/configuration), `--json` output,
//! and what each command changes, including its audit log rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use vpnnat_center::storage::{AuditFilter, GatewaySpec, InstallRecord, NewRequest, Storage};

const EXAMPLE: &str = include_str!("../../buildroot-overlay/center/etc/centerd.toml");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example configuration with the database, listeners and the
/// maintenance password file moved into a fresh directory; the gateways'
/// APIs point at a closed port (the tools must cope with that).
fn setup(tag: &str) -> (Dir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vpnnat-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("vpnnat")).unwrap();
    std::fs::write(dir.join("vpnnat/maintenance-password"), "maint-pass-1\n").unwrap();
    // The example's placeholders, filled as the image's first boot does.
    let rng = ring::rand::SystemRandom::new();
    let mut keys = std::collections::BTreeMap::new();
    let filled =
        vpnnat_center::keygen::fill(&[EXAMPLE], &mut keys, || vpnnat_center::keygen::gen_secret(&rng)).unwrap();
    let cfg = filled[0]
        .replace(
            "/var/lib/vpnnat/center.db",
            &dir.join("center.db").display().to_string(),
        )
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("172.16.0.10:8443", "127.0.0.2:0")
        .replace("http://172.16.0.21:9000", "http://127.0.0.1:1")
        .replace("http://172.16.0.22:9000", "http://127.0.0.1:1")
        .replace("command_timeout_ms = 5000", "command_timeout_ms = 500");
    let path = dir.join("centerd.toml");
    std::fs::write(&path, cfg).unwrap();
    (Dir(dir), path)
}

fn centerd(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_centerd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "alice")
        .env_remove("SUDO_USER")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn json(o: &Output) -> Value {
    assert_eq!(code(o), 0, "stderr: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// A router with one request naming `pc1`, written through the library as
/// centerd would.
/// A router, its slot and one waiting request received now.
fn seed(db: &Path) -> u64 {
    seed_received_at(db, vpnnat_center::http::unix_now())
}

/// As [`seed`], the request received at `now` (a running centerd's expiry
/// loop ends a request received more than the maximum lifetime ago).
fn seed_received_at(db: &Path, now: u64) -> u64 {
    let mut st = Storage::open(db).unwrap();
    // What `centerd run` does at start with the configured gateways.
    st.sync_gateways(&[
        GatewaySpec {
            name: "gw1".into(),
            global_ip: Ipv4Addr::new(198, 51, 100, 21),
            slots: 4,
        },
        GatewaySpec {
            name: "gw2".into(),
            global_ip: Ipv4Addr::new(198, 51, 100, 22),
            slots: 4,
        },
    ])
    .unwrap();
    st.install_terminal(&InstallRecord {
        terminal_id: "router-7",
        psk_hex: &"11".repeat(32),
        secret_id2_hex: &"22".repeat(32),
        maintenance_password_hash: "x",
        now: 100,
    })
    .unwrap();
    // Issue 17: as a gateway address request from behind a NAT decides.
    st.set_initiation(
        "router-7",
        vpnnat_proto::initiation::InitiationMode::Router,
        "behind NAT: request from 203.0.113.7, router's WAN address 192.0.2.2",
        Some(Ipv4Addr::new(203, 0, 113, 7)),
        100,
    )
    .unwrap();
    let names = vec!["pc1".to_owned()];
    let (n, _) = st
        .create_request(
            &NewRequest {
                terminal_id: "router-7",
                router_ip: Ipv4Addr::new(203, 0, 113, 7),
                claimant_name: "Carol",
                claimant_level: "general",
                phone: "0312345678",
                urgency: "high",
                content: "printer",
                terminal_names: &names,
                now,
                max_open: None,
                expires_at: None,
            },
            Some("gw1"),
        )
        .unwrap();
    n
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let (dir, cfg) = setup("usage");
    let o = centerd(&cfg, &["no-such-command"]);
    assert_eq!(code(&o), 2);
    let o = centerd(&cfg, &["end-request", "not-a-number"]);
    assert_eq!(code(&o), 2);
    let o = centerd(&cfg, &["--help"]);
    assert_eq!(code(&o), 0);
    let help = String::from_utf8_lossy(&o.stdout);
    for sub in [
        "list-requests",
        "show-router",
        "end-request",
        "drain-gateway",
        "undrain-gateway",
        "approve-reinstall",
        "check-config",
        "audit",
        "operator",
    ] {
        assert!(help.contains(sub), "{sub} missing from --help");
    }
    assert!(help.contains("Exit status"));
    // A missing file, an unknown key, a bad value: configuration errors.
    let o = centerd(&dir.0.join("nope.toml"), &["check-config"]);
    assert_eq!(code(&o), 2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n[extra]\nkey = 1\n")).unwrap();
    assert_eq!(code(&centerd(&cfg, &["check-config"])), 2);
    std::fs::write(&cfg, text.replace("cidr = \"10.64.0.0/16\"", "cidr = \"10.64.0.0/33\"")).unwrap();
    let o = centerd(&cfg, &["check-config"]);
    assert_eq!(code(&o), 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pool"),
        "the error names the key"
    );
}

#[test]
fn gen_secret_and_fill_secrets_make_the_example_acceptable() {
    let dir = std::env::temp_dir().join(format!("vpnnat-cli-fill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("vpnnat")).unwrap();
    let dir = Dir(dir);
    // gen-secret needs no configuration
    let nowhere = dir.0.join("nope.toml");
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let o = centerd(&nowhere, &["gen-secret"]);
            assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap().trim_end().to_owned()
        })
        .collect();
    assert_ne!(keys[0], keys[1]);
    for k in &keys {
        assert!(k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
        vpnnat_proto::strength::key_from_config::<vpnnat_proto::keys::FactoryMasterKey>(k).unwrap();
    }
    // the example as shipped (placeholders), on loopback: refused
    let cfg = dir.0.join("centerd.toml");
    let pw = dir.0.join("vpnnat/maintenance-password");
    std::fs::write(
        &cfg,
        EXAMPLE
            .replace(
                "/var/lib/vpnnat/center.db",
                &dir.0.join("center.db").display().to_string(),
            )
            .replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("172.16.0.10:8443", "127.0.0.2:0"),
    )
    .unwrap();
    std::fs::write(
        &pw,
        include_str!("../../buildroot-overlay/center/etc/vpnnat/maintenance-password"),
    )
    .unwrap();
    let o = centerd(&cfg, &["check-config"]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("factory.master_key") && err.contains("centerd gen-secret"),
        "{err}"
    );
    // filled (as the image's first boot does): accepted
    let o = centerd(&nowhere, &["fill-secrets", cfg.to_str().unwrap(), pw.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "gw1\ngw2\nmaintenance-password\nmaster\n"
    );
    let o = centerd(&cfg, &["check-config"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.0.join("center.db").exists(), "check-config creates nothing");
}

#[test]
fn check_config_creates_nothing_and_reports_json() {
    let (dir, cfg) = setup("check");
    let v = json(&centerd(&cfg, &["--json", "check-config"]));
    assert_eq!(v["pool"]["cidr"], "10.64.0.0/16");
    assert_eq!(v["gateways"], serde_json::json!(["gw1", "gw2"]));
    assert!(
        !dir.0.join("center.db").exists(),
        "check-config must not create the database"
    );
    // A database holding another pool does not fit this configuration.
    let mut st = Storage::open(&dir.0.join("center.db")).unwrap();
    st.init_pool(&"10.65.0.0/16".parse().unwrap()).unwrap();
    drop(st);
    assert_eq!(code(&centerd(&cfg, &["check-config"])), 2);
}

#[test]
fn list_show_drain_end_and_audit() {
    let (dir, cfg) = setup("tools");
    // Creates and migrates the database, as `centerd run` would.
    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(v, serde_json::json!([]));
    let n = seed(&dir.0.join("center.db"));

    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(v[0]["acceptance_number"], n);
    assert_eq!(v[0]["state"], "waiting");
    assert_eq!(v[0]["grants"][0]["terminal_name"], "pc1");
    let v = json(&centerd(&cfg, &["--json", "list-requests", "--state", "ended"]));
    assert_eq!(v, serde_json::json!([]));
    let v = json(&centerd(&cfg, &["--json", "list-requests", "--terminal", "router-7"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
    let o = centerd(&cfg, &["list-requests"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("router-7"));

    let v = json(&centerd(&cfg, &["--json", "show-router", "router-7"]));
    assert_eq!(v["terminal_id"], "router-7");
    assert_eq!(v["slot"]["gateway"], "gw1");
    assert_eq!(v["initiation"]["mode"], "router");
    assert!(v["initiation"]["reason"].as_str().unwrap().starts_with("behind NAT"));
    assert_eq!(v["requests"][0]["acceptance_number"], n);
    let shown = serde_json::to_string(&v).unwrap();
    assert!(
        !shown.contains(&"11".repeat(32)) && !shown.contains(&"22".repeat(32)),
        "no secrets"
    );
    let o = centerd(&cfg, &["show-router", "router-404"]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("router-404"));

    // Drain and undrain.
    let v = json(&centerd(&cfg, &["--json", "drain-gateway", "gw2"]));
    assert_eq!(v, serde_json::json!({"gateway": "gw2", "draining": true}));
    let usage = Storage::open(&dir.0.join("center.db"))
        .unwrap()
        .gateway_usage()
        .unwrap();
    assert!(usage.iter().any(|g| g.name == "gw2" && g.draining));
    json(&centerd(&cfg, &["--json", "undrain-gateway", "gw2"]));
    let usage = Storage::open(&dir.0.join("center.db"))
        .unwrap()
        .gateway_usage()
        .unwrap();
    assert!(usage.iter().all(|g| !g.draining));
    assert_eq!(code(&centerd(&cfg, &["drain-gateway", "gw9"])), 1);

    // A reason that the UI would refuse is a usage error: nothing ends.
    for bad in ["   ", "two\nlines", &"x".repeat(201)] {
        let o = centerd(&cfg, &["end-request", &n.to_string(), "--reason", bad]);
        assert_eq!(code(&o), 2, "{bad:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--reason"), "{o:?}");
    }
    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(v[0]["state"], "waiting");

    // End: the gateways do not answer, the center's state is freed anyway.
    // The reason (issue 20, item 6) is stored, listed and audited.
    let v = json(&centerd(
        &cfg,
        &[
            "--json",
            "end-request",
            &n.to_string(),
            "--reason",
            " customer called: fixed ",
        ],
    ));
    assert_eq!(v["acceptance_number"], n);
    assert_eq!(v["vpn_ended"], true);
    assert_eq!(v["released"][0][0], "pc1");
    assert!(!v["warnings"].as_array().unwrap().is_empty());
    let v = json(&centerd(&cfg, &["--json", "list-requests", "--state", "ended"]));
    assert_eq!(v[0]["acceptance_number"], n);
    assert_eq!(v[0]["end_reason"], "customer called: fixed");
    assert_eq!(v[0]["ended_by"], "cli:alice");
    // Ending twice fails.
    assert_eq!(code(&centerd(&cfg, &["end-request", &n.to_string()])), 1);
    assert_eq!(code(&centerd(&cfg, &["end-request", "999"])), 1);

    // The audit log names the CLI user.
    let st = Storage::open(&dir.0.join("center.db")).unwrap();
    let rows = st
        .audit_log(&AuditFilter {
            actor: Some("cli:alice".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .unwrap();
    let actions: Vec<&str> = rows.iter().rev().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["drain", "undrain", "end", "release", "vpn_end"]);
    let end = rows.iter().find(|r| r.action == "end").unwrap();
    assert_eq!(end.detail, "request ended: customer called: fixed");
    let v = json(&centerd(&cfg, &["--json", "audit", "--action", "grant"]));
    assert_eq!(v[0]["actor"], "router:router-7");
    let o = centerd(&cfg, &["audit", "--actor", "cli:alice"]);
    assert_eq!(code(&o), 0);
    let csv = String::from_utf8_lossy(&o.stdout);
    assert!(csv.starts_with("id,at,actor"));
    assert_eq!(csv.lines().count(), 6);
}

/// A free TCP or UDP port on 127.0.0.1 (bound, then released).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `centerd run` with the example configuration (DNS on): the UI's
/// /metrics and /audit.csv, DNS, and the tools on its live database.
#[test]
fn tools_against_a_running_centerd() {
    let (dir, cfg) = setup("running");
    let (api, ui, dns) = (free_port(false), free_port(false), free_port(true));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{api}"), 1)
        .replace("127.0.0.2:0", &format!("127.0.0.1:{ui}"))
        .replace("172.16.0.10:53", &format!("127.0.0.1:{dns}"))
        .replace("reconcile_interval_secs = 30", "reconcile_interval_secs = 0");
    std::fs::write(&cfg, text).unwrap();
    let _server = Running(
        Command::new(env!("CARGO_BIN_EXE_centerd"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = None;
    for _ in 0..100 {
        up = http_get(ui, "/healthz");
        if up.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(up.map(|u| u.0), Some(200), "centerd did not come up");
    // Its memory holds keys: no core dump (issue 18, item 13).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", _server.0.id())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    assert_eq!(http_get(api, "/healthz").map(|u| u.0), Some(200));
    let n = seed(&dir.0.join("center.db"));

    // Metrics see what the tools and the seed wrote to the shared file.
    let (status, body) = http_get(ui, "/metrics").unwrap();
    assert_eq!(status, 200);
    let m = vpnnat_center::metrics::parse(&body).unwrap();
    assert_eq!(
        vpnnat_center::metrics::value(&m, "vpnnat_center_requests", &[("state", "waiting")]),
        Some(1.0)
    );
    // The audit export needs a session.
    assert_eq!(http_get(ui, "/audit.csv").map(|u| u.0), Some(401));
    // The first start made the shared password the account `admin`.
    let ops = json(&centerd(&cfg, &["--json", "operator", "list"]));
    assert_eq!(
        (ops[0]["name"].as_str(), ops[0]["role"].as_str()),
        (Some("admin"), Some("admin"))
    );
    assert_eq!(ops.as_array().unwrap().len(), 1);

    // DNS answers from the live database (a byte-level query).
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in "pc1.router-7.vpn.center.example".split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, ("127.0.0.1", dns)).unwrap();
    let mut buf = [0u8; 512];
    let len = sock.recv(&mut buf).unwrap();
    let a = &buf[..len];
    assert_eq!((&a[..2], a[3] & 0x0f, a[7]), (&[0xab, 0xcd][..], 0, 1), "{a:?}");
    let shown = json(&centerd(&cfg, &["--json", "list-requests"]));
    let addr = shown[0]["grants"][0]["vpnnat"].as_str().unwrap().to_owned();
    let got: Vec<String> = a[len - 4..].iter().map(|b| b.to_string()).collect();
    assert_eq!(got.join("."), addr);

    // The tools work on the running centerd's database.
    let v = json(&centerd(&cfg, &["--json", "end-request", &n.to_string()]));
    assert_eq!(v["vpn_ended"], true);
    let (_, body) = http_get(ui, "/metrics").unwrap();
    let m = vpnnat_center::metrics::parse(&body).unwrap();
    assert_eq!(
        vpnnat_center::metrics::value(&m, "vpnnat_center_requests", &[("state", "ended")]),
        Some(1.0)
    );
    sock.send_to(&q, ("127.0.0.1", dns)).unwrap();
    let len = sock.recv(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 3, "NXDOMAIN once the grant ended ({len} bytes)");
}

#[test]
fn secrets_files_readable_by_others_are_reported_loudly() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, cfg) = setup("modes");
    let pw = dir.0.join("vpnnat/maintenance-password");
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(&cfg, 0o644);
    mode(&pw, 0o640);
    let o = centerd(&cfg, &["check-config"]);
    assert_eq!(code(&o), 0);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for (p, m) in [(&cfg, "0644"), (&pw, "0640")] {
        assert!(
            err.contains(&format!("mode {m}")) && err.contains(&format!("chmod 600 {}", p.display())),
            "{err}"
        );
    }
    assert!(!err.contains("maint-pass-1"), "the secret itself is never printed");
    mode(&cfg, 0o600);
    mode(&pw, 0o600);
    let o = centerd(&cfg, &["check-config"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("SECURITY"));
}

/// Issue 18, item 5: a re-installation without proof waits in the
/// database until `approve-reinstall`; the approval is audited.
#[test]
fn reinstalls_and_approve_reinstall() {
    let (dir, cfg) = setup("reinstall");
    json(&centerd(&cfg, &["--json", "list-requests"]));
    let db = dir.0.join("center.db");
    seed(&db);
    assert_eq!(json(&centerd(&cfg, &["--json", "reinstalls"])), serde_json::json!([]));
    // Nothing pending: refused.
    assert_eq!(code(&centerd(&cfg, &["approve-reinstall", "router-7"])), 1);
    Storage::open(&db)
        .unwrap()
        .record_reinstall_pending("router-7", 300, "203.0.113.9")
        .unwrap();
    let v = json(&centerd(&cfg, &["--json", "reinstalls"]));
    assert_eq!(v[0]["terminal_id"], "router-7");
    assert_eq!(v[0]["approved_by"], Value::Null);
    let v = json(&centerd(&cfg, &["--json", "approve-reinstall", "router-7"]));
    assert_eq!(v, serde_json::json!({"terminal_id": "router-7", "approved": true}));
    let v = json(&centerd(&cfg, &["--json", "reinstalls"]));
    assert!(v[0]["approved_by"].as_str().unwrap().starts_with("cli:"));
    let rows = Storage::open(&db)
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("reinstall_approve".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].terminal_id.as_deref(), Some("router-7"));
}

/// Issue 18, item 3: `maintenance-password` prints a router's own password
/// (the shared one for a router installed before), audited; an unknown
/// router is an error.
#[test]
fn maintenance_password_is_printed_and_audited() {
    let (dir, cfg) = setup("maintpw");
    json(&centerd(&cfg, &["--json", "list-requests"]));
    let db = dir.0.join("center.db");
    seed(&db);
    // router-7 was installed without its own password: the shared one.
    let shared = std::fs::read_to_string(dir.0.join("vpnnat/maintenance-password")).unwrap();
    let o = centerd(&cfg, &["maintenance-password", "router-7"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), shared.trim());
    Storage::open(&db)
        .unwrap()
        .install_terminal_audited(
            &InstallRecord {
                terminal_id: "router-8",
                psk_hex: &"13".repeat(32),
                secret_id2_hex: &"24".repeat(32),
                maintenance_password_hash: "",
                now: 300,
            },
            None,
            "install",
            "",
            Some("own-password-of-router-8"),
        )
        .unwrap();
    let o = centerd(&cfg, &["maintenance-password", "router-8"]);
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), "own-password-of-router-8");
    assert_eq!(code(&centerd(&cfg, &["maintenance-password", "router-9"])), 1);
    let rows = Storage::open(&db)
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("show_maintenance_password".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.actor.starts_with("cli:")));
}

/// Issue 19, item 8: `limit-request` shortens a request's time (audited,
/// with who set it), refuses more than `[center] max_grant_lifetime_secs`
/// with a clear error, and list-requests/show-router show when it ends.
#[test]
fn limit_request_shortens_refuses_above_the_maximum_and_the_listings_show_the_end() {
    let (dir, cfg) = setup("limit");
    json(&centerd(&cfg, &["--json", "list-requests"]));
    // Received long ago: its maximum lifetime has passed.
    let old = seed_received_at(&dir.0.join("center.db"), 200);
    // A fresh request, received now with the default maximum of 4 h.
    let now = vpnnat_center::http::unix_now();
    let names = vec!["nas".to_owned()];
    let (n, _) = Storage::open(&dir.0.join("center.db"))
        .unwrap()
        .create_request(
            &NewRequest {
                terminal_id: "router-7",
                router_ip: Ipv4Addr::new(203, 0, 113, 7),
                claimant_name: "Dave",
                claimant_level: "general",
                phone: "0312345678",
                urgency: "normal",
                content: "nas",
                terminal_names: &names,
                now,
                max_open: None,
                expires_at: Some(now + 4 * 3600),
            },
            None,
        )
        .unwrap();

    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(
        (v[0]["acceptance_number"].as_u64(), v[0]["ends_at"].as_u64()),
        (Some(n), Some(now + 4 * 3600))
    );
    let o = centerd(&cfg, &["list-requests"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(" left)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Above the maximum: exit 1, a clear error, nothing changed.
    let o = centerd(&cfg, &["limit-request", &n.to_string(), "--minutes", "241"]);
    assert_eq!(code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot be raised above the configured maximum")
            && err.contains("max_grant_lifetime_secs = 14400"),
        "{err}"
    );
    // The old request was received long ago: its maximum has passed.
    assert_eq!(
        code(&centerd(&cfg, &["limit-request", &old.to_string(), "--minutes", "1"])),
        1
    );

    let v = json(&centerd(
        &cfg,
        &["--json", "limit-request", &n.to_string(), "--minutes", "30"],
    ));
    assert_eq!(v["acceptance_number"], n);
    assert!(v["limit_set_by"].as_str().unwrap().starts_with("cli:"), "{v}");
    let ends = v["ends_at"].as_u64().unwrap();
    assert_eq!(v["expires_at"].as_u64(), Some(ends));
    assert!(ends < now + 4 * 3600);
    let v = json(&centerd(&cfg, &["--json", "show-router", "router-7"]));
    let shown = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["acceptance_number"] == n)
        .unwrap()
        .clone();
    assert_eq!(shown["ends_at"].as_u64(), Some(ends));
    let v = json(&centerd(&cfg, &["--json", "audit", "--action", "limit"]));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["acceptance_number"], n);
    // An unknown request: exit 1.
    assert_eq!(code(&centerd(&cfg, &["limit-request", "999", "--minutes", "5"])), 1);
}

/// Issue 19, item 8, the idle timeout: list-requests and show-router show
/// `[center] idle_timeout_secs`, the tunnel's last traffic as the gateway
/// reported it and when the request ends if the tunnel stays quiet.
#[test]
fn the_listings_show_the_idle_limit_and_the_tunnels_last_traffic() {
    let (dir, cfg) = setup("idle");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let idle_cfg = text.replace("# idle_timeout_secs = 1800", "idle_timeout_secs = 1800");
    assert_ne!(idle_cfg, text, "the example documents the key");
    std::fs::write(&cfg, idle_cfg).unwrap();
    json(&centerd(&cfg, &["--json", "list-requests"]));
    let db = dir.0.join("center.db");
    // The router (and an older request of its own).
    seed_received_at(&db, 200);
    let now = vpnnat_center::http::unix_now();
    let names = vec!["nas".to_owned()];
    let (n, _) = Storage::open(&db)
        .unwrap()
        .create_request(
            &NewRequest {
                terminal_id: "router-7",
                router_ip: Ipv4Addr::new(203, 0, 113, 7),
                claimant_name: "Dave",
                claimant_level: "general",
                phone: "0312345678",
                urgency: "normal",
                content: "nas",
                terminal_names: &names,
                now,
                max_open: None,
                expires_at: Some(now + 4 * 3600),
            },
            None,
        )
        .unwrap();
    let shown = |v: &serde_json::Value| {
        (
            v["idle_timeout_secs"].as_u64(),
            v["last_traffic_at"].as_u64(),
            v["idle_ends_at"].as_u64(),
        )
    };
    // The gateway has said nothing yet: the limit, no traffic, no end.
    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(shown(&v[0]), (Some(1800), None, None), "{v}");
    // Its word: a packet 5 minutes after the reception.
    Storage::open(&db)
        .unwrap()
        .record_tunnel_traffic(&[("router-7".to_owned(), now + 300)])
        .unwrap();
    let v = json(&centerd(&cfg, &["--json", "list-requests"]));
    assert_eq!(v[0]["acceptance_number"], n);
    assert_eq!(shown(&v[0]), (Some(1800), Some(now + 300), Some(now + 300 + 1800)));
    let v = json(&centerd(&cfg, &["--json", "show-router", "router-7"]));
    let mine = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["acceptance_number"] == n)
        .unwrap()
        .clone();
    assert_eq!(
        shown(&mine),
        (Some(1800), Some(now + 300), Some(now + 300 + 1800)),
        "{v}"
    );
}

/// `centerd` with `input` on standard input.
fn centerd_stdin(config: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_centerd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "alice")
        .env_remove("SUDO_USER")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Issue 20, item 1: `centerd operator add|list|disable|enable|set-role`:
/// the password from stdin or a file (never argv), clear errors with exit
/// 2 for a bad name, role or password and 1 for a duplicate or unknown
/// account, every change audited under the user, the hash usable by the
/// UI's login check.
#[test]
fn operator_accounts_from_the_command_line() {
    let (dir, cfg) = setup("operators");
    let fast = ["--iterations", "1000"];
    let add = |name: &str, role: &str, input: &str| {
        let mut args = vec!["operator", "add", name, "--role", role];
        args.extend(fast);
        centerd_stdin(&cfg, &args, input)
    };
    let o = add("ada", "admin", "ada's long password\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "operator ada: added as admin"
    );
    // From a file: its first line.
    let pw = dir.0.join("otto-password");
    std::fs::write(&pw, "otto's long password\nignored\n").unwrap();
    let mut args = vec![
        "--json",
        "operator",
        "add",
        "otto",
        "--role",
        "operator",
        "--password-file",
    ];
    let pw_s = pw.display().to_string();
    args.push(&pw_s);
    args.extend(fast);
    let v = json(&centerd(&cfg, &args));
    assert_eq!(v["operator"], "otto");
    // Refused, saying why.
    for (name, role, input, want_code, why) in [
        (
            "ada",
            "viewer",
            "another long password\n",
            1,
            "operator ada exists already",
        ),
        (
            "Bad Name",
            "viewer",
            "another long password\n",
            2,
            "operator name \"Bad Name\"",
        ),
        (
            "vera",
            "root",
            "another long password\n",
            2,
            "role \"root\": one of admin, operator, viewer",
        ),
        ("vera", "viewer", "short\n", 2, "shorter than 10 characters"),
        ("vera", "viewer", "", 1, "empty password"),
    ] {
        let o = add(name, role, input);
        assert_eq!(code(&o), want_code, "{name} {role}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{name} {role}: {}", stderr(&o));
        assert!(!stderr(&o).contains("long password"), "the password is never printed");
    }
    let missing = centerd(
        &cfg,
        &[
            "operator",
            "add",
            "vera",
            "--role",
            "viewer",
            "--password-file",
            "/nonexistent",
        ],
    );
    assert_eq!(code(&missing), 1);
    assert!(stderr(&missing).contains("/nonexistent"), "{}", stderr(&missing));
    // No password on the command line: clap has no such argument.
    let o = centerd(
        &cfg,
        &["operator", "add", "vera", "--role", "viewer", "--password", "x"],
    );
    assert_eq!(code(&o), 2);

    assert_eq!(code(&centerd(&cfg, &["operator", "set-role", "otto", "viewer"])), 0);
    assert_eq!(code(&centerd(&cfg, &["operator", "disable", "otto"])), 0);
    let v = json(&centerd(&cfg, &["--json", "operator", "list"]));
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(
        (v[1]["name"].as_str(), v[1]["role"].as_str(), v[1]["disabled"].as_bool()),
        (Some("otto"), Some("viewer"), Some(true))
    );
    let text = centerd(&cfg, &["operator", "list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("ada admin active") && text.contains("otto viewer disabled"),
        "{text}"
    );
    assert_eq!(code(&centerd(&cfg, &["operator", "enable", "otto"])), 0);
    for args in [
        &["operator", "disable", "nobody"][..],
        &["operator", "enable", "nobody"],
        &["operator", "set-role", "nobody", "admin"],
    ] {
        let o = centerd(&cfg, args);
        assert_eq!(code(&o), 1, "{args:?}");
        assert!(stderr(&o).contains("no operator nobody"), "{}", stderr(&o));
    }
    assert_eq!(code(&centerd(&cfg, &["operator", "set-role", "otto", "boss"])), 2);

    // The stored hash is the UI's scheme; the audit names the user.
    let db = dir.0.join("center.db");
    let st = Storage::open(&db).unwrap();
    let (_, hash) = st.operator_login("otto").unwrap().unwrap();
    let hash = vpnnat_center::password::PasswordHash::parse(&hash).unwrap();
    assert!(hash.verify("otto's long password") && !hash.verify("ignored"));
    let rows = st
        .audit_log(&AuditFilter {
            actor: Some("cli:alice".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "operator_enable",
            "operator_disable",
            "operator_role",
            "operator_add",
            "operator_add"
        ]
    );
    assert!(rows.iter().all(|r| !r.detail.contains("long password")));
}

/// Issue 20, item 2: `centerd operator totp-reset NAME` removes an
/// account's second factor (its TOTP and recovery codes), audited under
/// the user; an unknown account is exit 1.
#[test]
fn operator_totp_reset_from_the_command_line() {
    let (dir, cfg) = setup("totp-reset");
    let o = centerd_stdin(
        &cfg,
        &["operator", "add", "ada", "--role", "admin", "--iterations", "1000"],
        "ada's long password\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let db = dir.0.join("center.db");
    {
        let mut st = Storage::open(&db).unwrap();
        assert!(st
            .enrol_totp("ada", "MZXW6YTBOI", 1, &["h1".to_owned(), "h2".to_owned()], 5)
            .unwrap());
    }
    let v = json(&centerd(&cfg, &["--json", "operator", "list"]));
    assert_eq!(v[0]["second_factor"], true);
    let list = centerd(&cfg, &["operator", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).trim().ends_with(" 2fa"));
    let o = centerd(&cfg, &["operator", "totp-reset", "ada"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "operator ada: second factor removed (TOTP and recovery codes)"
    );
    let st = Storage::open(&db).unwrap();
    assert_eq!(st.operator_totp("ada").unwrap(), None);
    assert_eq!(st.recovery_codes_left("ada").unwrap(), 0);
    drop(st);
    let v = json(&centerd(&cfg, &["--json", "operator", "list"]));
    assert_eq!(v[0]["second_factor"], false);
    let v = json(&centerd(&cfg, &["--json", "operator", "totp-reset", "ada"]));
    assert_eq!(v["done"], "had no second factor");
    let o = centerd(&cfg, &["operator", "totp-reset", "nobody"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no operator nobody"), "{}", stderr(&o));
    let rows = Storage::open(&db)
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("totp_reset".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.actor == "cli:alice"), "{rows:?}");
    assert!(rows.iter().all(|r| !r.detail.contains("MZXW6YTBOI")));
    assert!(rows[1]
        .detail
        .contains("operator ada: second factor (TOTP and recovery codes) removed"));
}
