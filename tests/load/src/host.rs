//! The host mode (issue 8, "Load"): N simulated routers do full
//! maintenance cycles concurrently against a real `centerd` process and
//! real `gatewayd` processes on loopback, for several rounds; the tool
//! prints cycles/s, errors and the daemons' peak RSS per round, then checks
//! that the VPNNAT pool and the gateway slots are all free again.
//!
//! One cycle of a router (the messages a real routerd sends, signed with its
//! factory secret and then its Secret(ID2); the center's answers verified
//! and opened with the router's reply key):
//!   (first round only) 1. installation notice -> secrets, own two addresses
//!   3. VPN gateway address request -> gateway address and IKE identity
//!   4. maintenance request for pc1 -> acceptance number and grant
//!   5. the operator starts it (operator UI, logged-in session)
//!   6.-8. the operator ends it (UI): judgments, release, VPN end
//!
//! What is real and what is not: centerd and gatewayd are the unchanged
//! binaries with their HTTP APIs, MACs, replay protection, SQLite database,
//! gateway commands (setup tunnel, add/remove addresses, tear down) and the
//! heartbeat. gatewayd runs with `datapath = "recording"` and `ike = false`:
//! on this host there is no ESP and the routers here have no IKE
//! responder, so no tunnel ever comes up (every tunnel stays "connecting";
//! its policies go to gatewayd's in-memory datapath, not the kernel).
//! Consequently the commands centerd sends *through a tunnel* to the router
//! (end, release, VPN end) are skipped, as centerd does for any router whose
//! tunnel is not up, and centerd's `tunnel_up_timeout_ms` is 0 so a request
//! is answered without waiting for a tunnel. The tunnel path itself is
//! measured by the tunnel mode in the VM ([`crate::tunnels`],
//! `scripts/bench-load.sh --vm`).
//!
//!     cargo build --release -p vpnnat-center -p vpnnat-gatewayd --bins && cargo build --release -p vpnnat-load
//!     target/release/vpnnat-load --routers 1000 --rounds 3
//!
//! Options: --routers N [1000] --rounds R [3] --gateways G [2]
//! --concurrency C [N: every router at once; the operator's UI clicks are
//! 32 at a time, below the UI's 64 connections per address] --bin-dir DIR
//! [the directory of this program: centerd, gatewayd]. Exit status 0 only
//! if there was no error and everything was free at the end.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use vpnnat_center::http::call_with;
use vpnnat_proto::keys::{FactoryMasterKey, SecretBytes, SecretId, SecretId2};
use vpnnat_proto::messages::{GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, Phone, RequestContent, TerminalId, TerminalName, TerminalNames, Urgency,
};

use crate::common::{arg, reset_peak, rss_of, run_tool, ui_action, ui_csrf, ui_login, Counters, UiSession};

const POOL: &str = "10.64.0.0/16";

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Daemons {
    children: Vec<(String, Child)>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemons {
    fn pid(&self, name: &str) -> u32 {
        self.children.iter().find(|(n, _)| n == name).unwrap().1.id()
    }
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

struct Router {
    id: TerminalId,
    xff: String,
    sid2: Option<SecretId2>,
}

/// Runs the host mode; exits 1 unless everything passed.
pub async fn run() {
    let n: usize = arg("--routers").unwrap_or(1000);
    let rounds: usize = arg("--rounds").unwrap_or(3);
    let gws: usize = arg("--gateways").unwrap_or(2);
    let conc: usize = arg("--concurrency").unwrap_or(n);
    let bin: PathBuf = arg("--bin-dir").unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().to_path_buf()
    });
    let dir = std::env::temp_dir().join(format!("vpnnat-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // ---- configuration: one centerd, `gws` gatewayd, all on loopback
    // random keys: the daemons refuse example and low-entropy ones
    let rng = SystemRandom::new();
    let random_hex = || {
        let mut b = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut b).unwrap();
        hex::encode(b)
    };
    let master_hex = random_hex();
    let master = FactoryMasterKey::from_hex(&master_hex).unwrap();
    let operator_password = "load-operator-password";
    let hash = {
        let mut c = Command::new(bin.join("centerd"))
            .args(["hash-password", "--iterations", "2000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build the binaries, or --bin-dir)",
                    bin.join("centerd").display()
                )
            });
        c.stdin.take().unwrap().write_all(operator_password.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    std::fs::write(dir.join("maintenance-password"), "load-maintenance-1\n").unwrap();
    let (api_port, ui_port) = (free_port(), free_port());
    let slots = n.div_ceil(gws);
    let mut center = format!(
        r#"[server]
router_listen = "127.0.0.1:{api_port}"
ui_listen = "127.0.0.1:{ui_port}"
trusted_proxies = ["127.0.0.0/8"]

[database]
path = "{db}"

[factory]
master_key = "{master_hex}"

[routers]
maintenance_password_file = "maintenance-password"
command_timeout_ms = 10000

[operators]
password_hashes = ["{hash}"]

[pool]
cidr = "{POOL}"

[center]
networks = ["172.16.0.0/24"]
tunnel_up_timeout_ms = 0
reconcile_interval_secs = 30
"#,
        db = dir.join("center.db").display()
    );
    let mut gw_cfgs = Vec::new();
    for g in 1..=gws {
        let port = free_port();
        let key = random_hex();
        center.push_str(&format!(
            r#"
[[gateways]]
name = "gw{g}"
api_url = "http://127.0.0.1:{port}"
global_ip = "198.51.100.{ip}"
ike_id = "gw{g}.center.example"
slots = {slots}
api_key = "{key}"
"#,
            ip = 20 + g
        ));
        let cfg = dir.join(format!("gw{g}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"name = "gw{g}"
listen = "127.0.0.1:{port}"
api_key = "{key}"
global_ip = "198.51.100.{ip}"
center_networks = ["172.16.0.0/24"]
center_url = "http://127.0.0.1:{api_port}"
datapath = "recording"
ike = false
"#,
                ip = 20 + g
            ),
        )
        .unwrap();
        gw_cfgs.push((format!("gw{g}"), cfg, port));
    }
    let center_cfg = dir.join("centerd.toml");
    std::fs::write(&center_cfg, &center).unwrap();
    // Files holding secrets are owner-only (the daemons warn otherwise).
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mut secret_files = vec![center_cfg.clone(), dir.join("maintenance-password")];
        secret_files.extend(gw_cfgs.iter().map(|(_, cfg, _)| cfg.clone()));
        for f in secret_files {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    // ---- start the daemons
    let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut d = Daemons { children: Vec::new() };
    for (name, cfg, _) in &gw_cfgs {
        let c = Command::new(bin.join("gatewayd"))
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .stdout(log(name))
            .stderr(log(name))
            .spawn()
            .unwrap();
        d.children.push((name.clone(), c));
    }
    let c = Command::new(bin.join("centerd"))
        .arg("--config")
        .arg(&center_cfg)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(log("centerd"))
        .stderr(log("centerd"))
        .spawn()
        .unwrap();
    d.children.push(("centerd".into(), c));
    for (_, _, port) in &gw_cfgs {
        wait_port(*port).await;
    }
    wait_port(api_port).await;
    wait_port(ui_port).await;
    let ui = format!("127.0.0.1:{ui_port}");
    let cookie = ui_login(&ui, operator_password).await;
    let csrf = ui_csrf(&ui, &cookie).await;
    let cookie = Arc::new(UiSession {
        cookie,
        csrf,
        inflight: Semaphore::new(32),
    });
    let names: Vec<String> = d.children.iter().map(|(n, _)| n.clone()).collect();
    println!(
        "load: {n} simulated routers x {rounds} rounds against centerd + {gws} gatewayd (recording datapath, no IKE), concurrency {conc}, {slots} slots per gateway, pool {POOL}; logs in {}",
        dir.display()
    );
    let rss_line = |d: &Daemons| {
        names
            .iter()
            .map(|nm| {
                let (rss, hwm) = rss_of(d.pid(nm));
                format!("{nm} {rss} KiB (peak {hwm})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("rss at start: {}", rss_line(&d));

    let routers: Vec<Arc<tokio::sync::Mutex<Router>>> = (0..n)
        .map(|i| {
            Arc::new(tokio::sync::Mutex::new(Router {
                id: TerminalId::new(format!("load-{i:05}")).unwrap(),
                xff: Ipv4Addr::from(0xcb00_0000u32 + u32::try_from(i).unwrap() + 1).to_string(),
                sid2: None,
            }))
        })
        .collect();
    let sem = Arc::new(Semaphore::new(conc));
    let api = format!("127.0.0.1:{api_port}");
    let mut all_errors = 0u64;
    let mut cycle_rates = Vec::new();
    let mut peaks = Vec::new();
    for round in 1..=rounds {
        for nm in &names {
            reset_peak(d.pid(nm));
        }
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for r in &routers {
            let (r, sem, api, ui, master, cookie, counters) = (
                r.clone(),
                sem.clone(),
                api.clone(),
                ui.clone(),
                master.clone(),
                cookie.clone(),
                counters.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let mut r = r.lock().await;
                match cycle(&mut r, &api, &ui, &cookie, &master).await {
                    Ok(()) => {
                        counters.cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("round {round}: {}: {e}", r.id);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let wall = start.elapsed();
        let cycles = counters.cycles.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        all_errors += errors;
        let rate = cycles as f64 / wall.as_secs_f64();
        cycle_rates.push(rate);
        let center_peak = rss_of(d.pid("centerd")).1;
        peaks.push(center_peak);
        println!(
            "round {round}: {cycles} cycles in {:.2} s = {rate:.1} cycles/s, {errors} errors; {}",
            wall.as_secs_f64(),
            rss_line(&d)
        );
    }

    // ---- everything back? (read from centerd's database with its own tool)
    let check = run_tool(&bin, &center_cfg, &["check-config"]);
    let pool = &check["pool"];
    let allocated = pool["allocated"].as_u64().unwrap();
    let gateways = run_tool(&bin, &center_cfg, &["gateways"]);
    let (mut used, mut total) = (0, 0);
    for g in gateways.as_array().unwrap() {
        used += g["used"].as_u64().unwrap();
        total += g["used"].as_u64().unwrap() + g["free"].as_u64().unwrap();
    }
    let open = run_tool(&bin, &center_cfg, &["list-requests", "--limit", "1000000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] != "ended")
        .count();
    // Each installed router keeps its own two addresses (server and router
    // part) for as long as it is installed: by design, not a leak.
    let own = 2 * n as u64;
    let size = pool["size"].as_u64().unwrap();
    println!(
        "after {rounds} rounds: pool {allocated} of {size} in use = the routers' own {own} (granted addresses in use: {}), {}% of the rest free; slots {used} of {total} in use ({}% free); {open} requests not ended",
        allocated.saturating_sub(own),
        if allocated == own { 100 } else { 0 },
        (total - used) * 100 / total.max(1)
    );
    let first = peaks.first().copied().unwrap_or(0);
    let last = peaks.last().copied().unwrap_or(0);
    println!(
        "centerd peak RSS per round (KiB): {peaks:?}; last/first {:.2}",
        last as f64 / first.max(1) as f64
    );
    let rates: Vec<String> = cycle_rates.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "load result: {n} routers x {rounds} rounds, {all_errors} errors, cycles/s per round [{}], centerd peak RSS {} KiB",
        rates.join(", "),
        peaks.iter().max().copied().unwrap_or(0)
    );
    let ok = all_errors == 0 && allocated == own && used == 0 && open == 0;
    drop(d);
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
        println!("load: OK");
    } else {
        println!("load: FAILED (logs kept in {})", dir.display());
        std::process::exit(1);
    }
}

/// One full cycle of one router (installation on its first cycle).
async fn cycle(
    r: &mut Router,
    api: &str,
    ui: &str,
    cookie: &UiSession,
    master: &FactoryMasterKey,
) -> Result<(), String> {
    let rng = SystemRandom::new();
    let t = Duration::from_secs(60);
    let xff = [("x-forwarded-for", r.xff.as_str())];
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: vpnnat_center::center::CommandError| format!("{what}: {err}")
    };
    if r.sid2.is_none() {
        let kp = ReplyKeyPair::generate(&rng).map_err(|e| e.to_string())?;
        let key = SecretId::derive(master, &r.id).mac_key();
        let resp = call_with(
            api,
            &r.id,
            &key,
            &InstallRequest {
                reply_key: kp.public_key(),
                proof: None,
            },
            t,
            &rng,
            &xff,
        )
        .await
        .map_err(e("installation"))?;
        let s = resp.open(kp, &r.id).map_err(|e| format!("installation answer: {e}"))?;
        r.sid2 = Some(s.secret_id2().clone());
    }
    let sid2 = r.sid2.clone().ok_or("not installed")?;
    let kp = ReplyKeyPair::generate(&rng).map_err(|e| e.to_string())?;
    let cmd = GatewayAddressRequest {
        reply_key: kp.public_key(),
        initiation: Default::default(),
        wan: None,
    };
    let resp = call_with(api, &r.id, &sid2.mac_key(), &cmd, t, &rng, &xff)
        .await
        .map_err(e("gateway address"))?;
    resp.open(kp, &r.id).map_err(|e| format!("gateway answer: {e}"))?;
    let kp = ReplyKeyPair::generate(&rng).map_err(|e| e.to_string())?;
    let details = MaintenanceDetails {
        claimant_name: ClaimantName::new("Load").map_err(|e| e.to_string())?,
        terminal_names: TerminalNames::new(vec![TerminalName::new("pc1").map_err(|e| e.to_string())?])
            .map_err(|e| e.to_string())?,
        phone: Phone::new("0312345678").map_err(|e| e.to_string())?,
        content: RequestContent::new("load test").map_err(|e| e.to_string())?,
    };
    let req = MaintenanceRequest::new(
        &rng,
        &sid2,
        &r.id,
        kp.public_key(),
        ClaimantLevel::General,
        Urgency::Normal,
        &details,
    )
    .map_err(|e| e.to_string())?;
    let resp = call_with(api, &r.id, &sid2.mac_key(), &req, t, &rng, &xff)
        .await
        .map_err(e("maintenance request"))?;
    let grants = resp.open(kp, &r.id).map_err(|e| format!("grant: {e}"))?;
    if grants.as_slice().len() != 1 {
        return Err(format!("{} grants for one terminal", grants.as_slice().len()));
    }
    let number = resp.acceptance_number.get();
    ui_action(ui, cookie, number, "start").await?;
    ui_action(ui, cookie, number, "end").await?;
    Ok(())
}
