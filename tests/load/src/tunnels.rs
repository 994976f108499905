//! The tunnel mode (`--tunnels`, in the test VM): N simulated routers do
//! full maintenance cycles through real IKE and real ESP tunnels against
//! the real `centerd` and `gatewayd` processes that
//! `tests/vm/load-tunnels.sh` started in their namespaces.
//!
//! Each simulated router is routerd's own core and daemon
//! ([`vpnnat_router::daemon::Router`]: the exchanges of `router::logic`, the
//! state store, the reply keys, the replay guard) with:
//! - its own WAN address (`--first-address` + i, added by the script in
//!   this "homes" namespace); its connections to the center leave from it
//!   (`Parts::center_source`), since the center knows a router by the
//!   address it connects from;
//! - a real IKE responder (`vpnnat-ike-driver`, one driver per router
//!   bound to that address, kernel XFRM SAs);
//! - its tunnel policies installed with the datapath library's XFRM API
//!   ([`vpnnat_datapath::EndpointDatapath`]: only its own endpoint's SAs
//!   and policies, so one router's reconciliation never touches another's;
//!   no NAT table);
//! - its server part: the server-part VPNNAT address on `--vpnnat-dev`
//!   and routerd's center port ([`vpnnat_router::web::CenterPort`])
//!   listening on it, so the center's end, release and VPN end arrive
//!   through the ESP tunnel and are verified and answered by routerd's
//!   code.
//!
//! Simulated, plainly: there is no routerd process per router, no LAN and
//! no LAN host, and no nftables NAT (the VPNNAT addresses of the server
//! part is local instead of mapped).
//!
//! One cycle: (first round) installation notice; gateway address request;
//! maintenance request for pc1, answered by centerd once gatewayd has
//! brought the tunnel up (IKE with this router's responder, SAs and
//! policies on both ends); the router's IKE must then be established; the
//! operator starts and ends the request in the UI; centerd's end, release
//! and VPN end must have reached the router (request ended, host released,
//! gateway dropped). A round ends when every cycle is done and no SA or
//! policy is left in this namespace nor in any gateway's (`--gateway-ns`).
//! A router whose cycle failed is retired (its error counted, its kernel
//! leftovers removed, no further cycles: [`retire`]).
//!
//! Options: --routers N [1000] --rounds R [3] --concurrency C [N]
//! --center-url URL --ui ADDR:PORT --password-file F --master-key-file F
//! --center-config F --bin-dir DIR [/usr/bin] --first-address A
//! [198.18.0.1] --wan-dev DEV [eth0] --vpnnat-dev DEV [lo] --state-dir DIR
//! --command-port P [8080] --pids name=PID,... --gateway-ns ns,...
//! --teardown-secs S [120].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use vpnnat_datapath::route::Route;
use vpnnat_datapath::EndpointDatapath;
use vpnnat_ike_driver::{DriverConfig, IkeDriver};
use vpnnat_proto::keys::{FactoryMasterKey, SecretBytes, SecretId};
use vpnnat_proto::types::{ClaimantLevel, ClaimantName, Phone, RequestContent, TerminalId, TerminalName, Urgency};
use vpnnat_router::config::Config;
use vpnnat_router::daemon::{Parts, Router};
use vpnnat_router::driver_responder::IkeDriverResponder;
use vpnnat_router::health::HealthSettings;
use vpnnat_router::logic::MaintenanceInput;
use vpnnat_router::state::RequestState;
use vpnnat_router::web::CenterPort;

use crate::common::{arg, reset_peak, rss_of, run_tool, ui_action, ui_csrf, ui_login, Counters, UiSession};

/// One simulated router.
struct Sim {
    router: Arc<Router>,
    /// The server part listens (set up after the installation).
    serving: tokio::sync::Mutex<bool>,
    /// A cycle of this router failed: it does no more cycles (see
    /// [`retire`]).
    retired: std::sync::atomic::AtomicBool,
}

/// Takes a router whose cycle failed out of the run. Whatever the failure
/// left in its kernel state (a grant the center has ended, its policies)
/// would stay in its own home in reality; here all routers share one
/// namespace, so its policy for a VPNNAT address the center has freed and
/// grants to another router would make that router's policy add fail
/// ("File exists") and its cycle fail too. So its SAs and policies go, and
/// it does no further cycles; the error is counted all the same.
async fn retire(sim: &Sim) {
    sim.retired.store(true, Ordering::Relaxed);
    let r = sim
        .router
        .with_datapath(|dp| dp.reconcile(&vpnnat_datapath::DesiredState::default()))
        .await;
    if let Err(e) = r {
        eprintln!("retiring terminal={}: {e}", sim.router.cfg.terminal_id);
    }
}

struct Settings {
    ui: String,
    vpnnat_dev: String,
    command_port: u16,
}

fn list(name: &str) -> Vec<String> {
    arg::<String>(name)
        .map(|s| s.split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn required<T: std::str::FromStr>(name: &str) -> T {
    arg(name).unwrap_or_else(|| panic!("{name} is required in --tunnels mode"))
}

/// SAs and policies in namespace `ns` (`None`: this one), as `ip xfrm`
/// lists them.
fn xfrm_left(ns: Option<&str>) -> (usize, usize) {
    let count = |what: &str| {
        let mut c = Command::new("ip");
        if let Some(ns) = ns {
            c.args(["-n", ns]);
        }
        let out = c.args(["xfrm", what]).output().expect("running ip xfrm");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("src "))
            .count()
    };
    (count("state"), count("policy"))
}

/// The routerd configuration of simulated router `i`.
fn router_config(
    i: usize,
    wan: Ipv4Addr,
    master: &FactoryMasterKey,
    center_url: &str,
    dir: &std::path::Path,
) -> Config {
    let id = TerminalId::new(format!("load-{i:05}")).unwrap();
    let secret = hex::encode(SecretId::derive(master, &id).expose_secret());
    let state = dir.join(format!("r{i}"));
    std::fs::create_dir_all(&state).unwrap();
    let wan_dev: String = arg("--wan-dev").unwrap_or_else(|| "eth0".into());
    let text = format!(
        r#"terminal_id = "{id}"
center_url = "{center_url}"
factory_secret = "{secret}"
state_dir = "{state}"
lease_file = "{state}/leases"
dns = false
center_timeout_secs = 600
retry_max_secs = 5

[wan]
interface = "{wan_dev}"
address = "{wan}/32"

[lan]
interface = "br0"
address = "192.168.1.1/24"

[hosts]
pc1 = "192.168.1.10"
"#,
        state = state.display()
    );
    Config::parse(&text, &state.join("routerd.toml")).unwrap()
}

async fn start_router(cfg: Config, wan: Ipv4Addr) -> Arc<Router> {
    // One driver per router, bound to its WAN address. No kernel expire
    // subscription: the run is far shorter than the SA lifetimes, and one
    // subscriber per router would copy every XFRM event N times.
    let ike = IkeDriverResponder::with_starter(Box::new(|local| {
        Box::pin(async move {
            let mut c = DriverConfig::new(local);
            c.kernel_events = false;
            let (drv, mut events) = IkeDriver::start_kernel(c).await?;
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            Ok(drv)
        })
    }));
    Router::new(
        Arc::new(cfg),
        Parts {
            datapath: Box::new(EndpointDatapath::open(wan).unwrap()),
            ike: Box::new(ike),
            retry_initial: Duration::from_secs(1),
            health: HealthSettings::default(),
            center_source: Some(wan),
        },
    )
    .await
    .unwrap()
}

/// After the installation: the server-part VPNNAT address here and
/// routerd's center port on it.
async fn serve(sim: &Sim, s: &Settings) -> Result<(), String> {
    let mut serving = sim.serving.lock().await;
    if *serving {
        return Ok(());
    }
    let addr = sim
        .router
        .state()
        .await
        .installation
        .map(|i| i.server_part_vpnnat)
        .ok_or("not installed")?;
    Route::open()
        .and_then(|mut r| r.add_address(&s.vpnnat_dev, addr, 32))
        .map_err(|e| format!("server part address {addr}: {e}"))?;
    let listener = tokio::net::TcpListener::bind((addr, s.command_port))
        .await
        .map_err(|e| format!("server part listener on {addr}: {e}"))?;
    tokio::spawn(vpnnat_router::http::serve(
        listener,
        Arc::new(CenterPort::new(sim.router.clone())),
        std::future::pending::<()>(),
    ));
    *serving = true;
    Ok(())
}

async fn cycle(sim: &Sim, s: &Settings, session: &UiSession, input: &MaintenanceInput) -> Result<(), String> {
    if sim.router.state().await.installation.is_none() {
        sim.router.install().await.map_err(|e| format!("installation: {e}"))?;
    }
    serve(sim, s).await?;
    // Gateway address (exchange 3), then the request; centerd answers once
    // gatewayd reports the tunnel up.
    let acc = sim
        .router
        .maintenance(input.clone())
        .await
        .map_err(|e| format!("maintenance request: {e}"))?;
    let n = acc.acceptance_number.get();
    let ike = sim.router.status().await.ike;
    if ike != "established" {
        return Err(format!("request {n}: granted but the router's IKE is {ike}"));
    }
    ui_action(&s.ui, session, n, "start").await?;
    let said = ui_action(&s.ui, session, n, "end").await?;
    // The end, the release and the VPN end came through the tunnel.
    let st = sim.router.state().await;
    let ended = st.requests.get(&n).map(|r| r.state) == Some(RequestState::Ended);
    if !ended || !st.hosts.is_empty() || st.gateway.is_some() {
        return Err(format!(
            "request {n}: the center's commands did not all reach the router (ended {ended}, {} host(s) still granted, gateway {}); the UI said: {}",
            st.hosts.len(),
            if st.gateway.is_some() { "kept" } else { "dropped" },
            said.trim()
        ));
    }
    Ok(())
}

/// Runs the tunnel mode; exits 1 unless everything passed.
pub async fn run() {
    let n: usize = arg("--routers").unwrap_or(1000);
    let rounds: usize = arg("--rounds").unwrap_or(3);
    let conc: usize = arg("--concurrency").unwrap_or(n);
    let center_url: String = required("--center-url");
    let center_cfg: PathBuf = required("--center-config");
    let bin: PathBuf = arg("--bin-dir").unwrap_or_else(|| "/usr/bin".into());
    let first: Ipv4Addr = arg("--first-address").unwrap_or(Ipv4Addr::new(198, 18, 0, 1));
    let dir: PathBuf = required("--state-dir");
    let teardown = Duration::from_secs(arg("--teardown-secs").unwrap_or(120));
    let read = |f: &str| {
        let p: PathBuf = required(f);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_owned()
    };
    let master = FactoryMasterKey::from_hex(&read("--master-key-file")).unwrap();
    let password = read("--password-file");
    let s = Arc::new(Settings {
        ui: required("--ui"),
        vpnnat_dev: arg("--vpnnat-dev").unwrap_or_else(|| "lo".into()),
        command_port: arg("--command-port").unwrap_or(8080),
    });
    let pids: Vec<(String, u32)> = list("--pids")
        .iter()
        .filter_map(|p| {
            p.split_once('=')
                .and_then(|(n, pid)| Some((n.to_owned(), pid.parse().ok()?)))
        })
        .collect();
    let gateway_ns = list("--gateway-ns");
    let own_pid = std::process::id();

    let t0 = Instant::now();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let wan = Ipv4Addr::from(u32::from(first) + u32::try_from(i).unwrap());
        let cfg = router_config(i, wan, &master, &center_url, &dir);
        sims.push(Arc::new(Sim {
            router: start_router(cfg, wan).await,
            serving: tokio::sync::Mutex::new(false),
            retired: std::sync::atomic::AtomicBool::new(false),
        }));
    }
    println!(
        "load (tunnels): {n} simulated routers (routerd core, own WAN address, real IKE responder and XFRM) x {rounds} rounds, concurrency {conc}, against centerd {center_url} and gatewayd in {:?}; started in {:.1} s",
        gateway_ns,
        t0.elapsed().as_secs_f64()
    );
    let cookie = ui_login(&s.ui, &password).await;
    let csrf = ui_csrf(&s.ui, &cookie).await;
    let session = Arc::new(UiSession {
        cookie,
        csrf,
        inflight: Semaphore::new(32),
    });
    let input = Arc::new(MaintenanceInput {
        claimant_name: ClaimantName::new("Load").unwrap(),
        claimant_level: ClaimantLevel::General,
        urgency: Urgency::Normal,
        phone: Phone::new("0312345678").unwrap(),
        content: RequestContent::new("load test").unwrap(),
        terminals: vec![TerminalName::new("pc1").unwrap()],
        for_failure: None,
    });
    let mem_line = || {
        pids.iter()
            .map(|(nm, pid)| (nm.as_str(), *pid))
            .chain([("load tool", own_pid)])
            .map(|(nm, pid)| {
                let (rss, hwm) = rss_of(pid);
                format!("{nm} {rss} KiB (peak {hwm})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("rss at start: {}", mem_line());

    let sem = Arc::new(Semaphore::new(conc));
    let mut all_errors = 0u64;
    let mut rates = Vec::new();
    let mut peaks: Vec<Vec<u64>> = Vec::new();
    let mut leftovers = 0usize;
    for round in 1..=rounds {
        for (_, pid) in &pids {
            reset_peak(*pid);
        }
        reset_peak(own_pid);
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for sim in sims.iter().filter(|s| !s.retired.load(Ordering::Relaxed)) {
            let (sim, sem, s, session, input, counters) = (
                sim.clone(),
                sem.clone(),
                s.clone(),
                session.clone(),
                input.clone(),
                counters.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                match cycle(&sim, &s, &session, &input).await {
                    Ok(()) => {
                        counters.cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("round {round}: terminal={}: {e}", sim.router.cfg.terminal_id);
                        }
                        retire(&sim).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let cycles_done = start.elapsed();
        // The round is over when every tunnel is gone on both ends.
        let namespaces: Vec<Option<&str>> = std::iter::once(None)
            .chain(gateway_ns.iter().map(|g| Some(g.as_str())))
            .collect();
        let left = loop {
            let left: Vec<(usize, usize)> = namespaces.iter().map(|ns| xfrm_left(*ns)).collect();
            if left.iter().all(|l| *l == (0, 0)) || start.elapsed() > cycles_done + teardown {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let wall = start.elapsed();
        let left_total: usize = left.iter().map(|(a, b)| a + b).sum();
        leftovers = left_total;
        let cycles = counters.cycles.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        all_errors += errors;
        let rate = cycles as f64 / wall.as_secs_f64();
        rates.push(rate);
        peaks.push(
            pids.iter()
                .map(|(_, pid)| *pid)
                .chain([own_pid])
                .map(|p| rss_of(p).1)
                .collect(),
        );
        let retired = sims.iter().filter(|s| s.retired.load(Ordering::Relaxed)).count();
        let left_text: Vec<String> = namespaces
            .iter()
            .zip(&left)
            .map(|(ns, (sa, pol))| format!("{} {sa} SA/{pol} policies", ns.unwrap_or("homes")))
            .collect();
        println!(
            "round {round}: {cycles} cycles in {:.2} s (last cycle done at {:.2} s, tunnels gone {:.2} s later) = {rate:.1} cycles/s, {errors} errors ({retired} routers retired so far); left: {}; {}",
            wall.as_secs_f64(),
            cycles_done.as_secs_f64(),
            (wall - cycles_done).as_secs_f64(),
            left_text.join(", "),
            mem_line()
        );
    }

    // ---- everything back? (centerd's database, read with its own tool)
    let check = run_tool(&bin, &center_cfg, &["check-config"]);
    let pool = &check["pool"];
    let allocated = pool["allocated"].as_u64().unwrap();
    let size = pool["size"].as_u64().unwrap();
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
    // Each installed router keeps its own two addresses while installed.
    let own = 2 * n as u64;
    println!(
        "after {rounds} rounds: pool {allocated} of {size} in use = the routers' own {own} (granted addresses in use: {}), {}% of the rest free; slots {used} of {total} in use ({}% free); {open} requests not ended; {leftovers} SAs/policies left",
        allocated.saturating_sub(own),
        if allocated == own { 100 } else { 0 },
        (total - used) * 100 / total.max(1)
    );
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).chain(["load tool"]).collect();
    for (k, nm) in names.iter().enumerate() {
        let series: Vec<u64> = peaks.iter().map(|p| p[k]).collect();
        let (first, last) = (
            series.first().copied().unwrap_or(0),
            series.last().copied().unwrap_or(0),
        );
        println!(
            "{nm} peak RSS per round (KiB): {series:?}; last/first {:.2}",
            last as f64 / first.max(1) as f64
        );
    }
    let rates: Vec<String> = rates.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "load (tunnels) result: {n} routers x {rounds} rounds, {all_errors} errors, cycles/s per round [{}]",
        rates.join(", ")
    );
    if all_errors == 0 && allocated == own && used == 0 && open == 0 && leftovers == 0 {
        println!("load (tunnels): OK");
    } else {
        println!("load (tunnels): FAILED");
        std::process::exit(1);
    }
}
