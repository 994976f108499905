//! Load benchmark of centerd on loopback: N simulated routers each do
//! installation, VPN gateway address request and maintenance request over
//! real HTTP (one TCP connection per command, as routers do), then the
//! operator ends every request (the end sequence with the three judgments).
//! Prints requests/s, p50/p99 latency per phase and the process RSS.
//!
//! The gateways and the routers' server parts are stand-ins that answer at
//! once (this measures centerd, its database and its crypto, not gatewayd),
//! and no tunnel ever comes up, so a maintenance request does not wait.
//!
//!     cargo run --release -p vpnnat-center --example bench_centerd -- --routers 10000 --concurrency 64

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vpnnat_center::api::{run_with, ApiSettings};
use vpnnat_center::center::{
    Center, CenterSettings, CommandError, GatewayCommands, GatewayEntry, RouterCommands, RouterTarget,
};
use vpnnat_center::http::call_with;
use vpnnat_center::storage::Storage;
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword, Psk, SecretBytes, SecretId};
use vpnnat_proto::messages::{
    GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest, StateReport,
};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    AcceptanceNumber, BoundedSet, ClaimantLevel, ClaimantName, GatewayName, IkeIdentity, Phone, RequestContent,
    TerminalId, TerminalName, TerminalNames, UnicastAddr, Urgency,
};

#[derive(Debug)]
struct InstantGateways;

impl GatewayCommands for InstantGateways {
    async fn probe(&self, _: &str) -> bool {
        true
    }
    async fn setup_tunnel(&self, _: &str, _: &TerminalId, _: Ipv4Addr, _: u16, _: &Psk) -> Result<(), CommandError> {
        Ok(())
    }
    async fn add_addresses(&self, _: &str, _: &TerminalId, _: &[Ipv4Addr]) -> Result<(), CommandError> {
        Ok(())
    }
    async fn remove_addresses(&self, _: &str, _: &TerminalId, _: &[Ipv4Addr]) -> Result<(), CommandError> {
        Ok(())
    }
    async fn tear_down(&self, _: &str, _: &TerminalId) -> Result<(), CommandError> {
        Ok(())
    }
    async fn restart_tunnel(&self, _: &str, _: &TerminalId) -> Result<(), CommandError> {
        Ok(())
    }
    async fn report(&self, _: &str) -> Result<StateReport, CommandError> {
        Ok(StateReport::new(vec![]).unwrap())
    }
}

#[derive(Debug)]
struct InstantRouters;

impl RouterCommands for InstantRouters {
    async fn end(&self, _: &RouterTarget, _: AcceptanceNumber) -> Result<(), CommandError> {
        Ok(())
    }
    async fn release(&self, _: &RouterTarget, _: &TerminalName) -> Result<(), CommandError> {
        Ok(())
    }
    async fn vpn_end(&self, _: &RouterTarget) -> Result<(), CommandError> {
        Ok(())
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of the whole process so far: with other jobs
/// on the machine, ops per CPU-second says more than ops per wall second.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers and timevals: all zeros is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable rusage for the whole call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn report(phase: &str, mut lat: Vec<Duration>, wall: Duration, cpu: Duration) {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{phase:<22} {:>6} ops  {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  cpu {:>5.3} ms/op",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3 / lat.len() as f64,
    );
}

struct Router {
    id: TerminalId,
    ip: String,
    sid2: Option<vpnnat_proto::keys::SecretId2>,
    acceptance: u64,
}

#[tokio::main]
async fn main() {
    let n = arg("--routers", 10_000);
    let conc = arg("--concurrency", 64);
    let dir = std::env::temp_dir().join(format!("vpnnat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("center.db");

    let master = FactoryMasterKey::from_array([3; 32]);
    let mut st = Storage::open(&db).unwrap();
    st.init_pool(&"10.0.0.0/8".parse().unwrap()).unwrap();
    let slots_per_gw: u16 = 1000;
    let gws = n.div_ceil(usize::from(slots_per_gw)).max(1);
    let settings = CenterSettings {
        factory_master_key: master.clone(),
        maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
        maintenance_password_hash: "x".into(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        gateways: (0..gws)
            .map(|i| GatewayEntry {
                name: GatewayName::new(format!("gw{i}")).unwrap(),
                global_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 1 + i as u8)).unwrap(),
                ike_id: IkeIdentity::new(format!("gw{i}.example")).unwrap(),
                api_key: GatewayApiKey::from_array([4; 32]),
                slots: slots_per_gw,
                next_hop: None,
            })
            .collect(),
        replay: ReplayConfig::default(),
        tunnel_up_timeout: Duration::ZERO,
        max_open_requests: vpnnat_center::center::DEFAULT_MAX_OPEN_REQUESTS,
        max_grant_lifetime_secs: vpnnat_center::limits::DEFAULT_MAX_LIFETIME_SECS,
        idle_timeout_secs: None,
    };
    // As centerd: a second connection for reads (`--reader 0`: one
    // connection for everything, to compare).
    let mut center = Center::new(st, settings, InstantGateways, InstantRouters).unwrap();
    if arg("--reader", 1) == 1 {
        center = center.with_reader(Storage::open(&db).unwrap());
    }
    let center = Arc::new(center);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let api = ApiSettings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
    };
    tokio::spawn(run_with(l, std::future::pending(), center.clone(), api));

    println!(
        "centerd benchmark: {n} routers, concurrency {conc}, {gws} gateways x {slots_per_gw} slots, pool 10.0.0.0/8, database {}",
        db.display()
    );
    println!("rss at start: {} KiB", rss_kib());

    let routers: Vec<Arc<tokio::sync::Mutex<Router>>> = (0..n)
        .map(|i| {
            Arc::new(tokio::sync::Mutex::new(Router {
                id: TerminalId::new(format!("router-{i:05}")).unwrap(),
                ip: Ipv4Addr::from(0xcb00_0000u32 + i as u32 + 1).to_string(),
                sid2: None,
                acceptance: 0,
            }))
        })
        .collect();
    let sem = Arc::new(Semaphore::new(conc));
    let mut total_ops = 0usize;
    let all = Instant::now();

    for phase in [
        "installation",
        "gateway address",
        "maintenance request",
        "end (operator)",
    ] {
        let start = Instant::now();
        let cpu0 = cpu_time();
        let mut tasks = Vec::with_capacity(n);
        for r in &routers {
            let r = r.clone();
            let sem = sem.clone();
            let addr = addr.clone();
            let master = master.clone();
            let center = center.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let rng = SystemRandom::new();
                let mut r = r.lock().await;
                let t = Duration::from_secs(10);
                let xff = [("x-forwarded-for", r.ip.clone())];
                let xff: Vec<(&str, &str)> = xff.iter().map(|(a, b)| (*a, b.as_str())).collect();
                let t0 = Instant::now();
                match phase {
                    "installation" => {
                        let kp = ReplyKeyPair::generate(&rng).unwrap();
                        let key = SecretId::derive(&master, &r.id).mac_key();
                        let resp = call_with(
                            &addr,
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
                        .unwrap();
                        let s = resp.open(kp, &r.id).unwrap();
                        r.sid2 = Some(s.secret_id2().clone());
                    }
                    "gateway address" => {
                        let kp = ReplyKeyPair::generate(&rng).unwrap();
                        let key = r.sid2.as_ref().unwrap().mac_key();
                        let cmd = GatewayAddressRequest {
                            reply_key: kp.public_key(),
                            initiation: Default::default(),
                            wan: None,
                        };
                        let resp = call_with(&addr, &r.id, &key, &cmd, t, &rng, &xff).await.unwrap();
                        resp.open(kp, &r.id).unwrap();
                    }
                    "maintenance request" => {
                        let kp = ReplyKeyPair::generate(&rng).unwrap();
                        let sid2 = r.sid2.clone().unwrap();
                        let details = MaintenanceDetails {
                            claimant_name: ClaimantName::new("Bench").unwrap(),
                            terminal_names: TerminalNames::new(vec![TerminalName::new("pc1").unwrap()]).unwrap(),
                            phone: Phone::new("0312345678").unwrap(),
                            content: RequestContent::new("benchmark").unwrap(),
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
                        .unwrap();
                        let resp = call_with(&addr, &r.id, &sid2.mac_key(), &req, t, &rng, &xff)
                            .await
                            .unwrap();
                        resp.open(kp, &r.id).unwrap();
                        r.acceptance = resp.acceptance_number.get();
                    }
                    _ => {
                        let o = center.end(r.acceptance, vpnnat_center::http::unix_now()).await.unwrap();
                        assert!(o.vpn_ended);
                    }
                }
                t0.elapsed()
            }));
        }
        let mut lat = Vec::with_capacity(n);
        for t in tasks {
            lat.push(t.await.unwrap());
        }
        total_ops += lat.len();
        report(phase, lat, start.elapsed(), cpu_time().saturating_sub(cpu0));
    }
    let wall = all.elapsed();
    let cpu = cpu_time();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "all phases             {total_ops:>6} ops  {:>8.0} ops/s overall  rss {} KiB  cpu {:.3} ms/op ({:.0} ops per CPU-second; {:.0}% of {cores} cores used)",
        total_ops as f64 / wall.as_secs_f64(),
        rss_kib(),
        cpu.as_secs_f64() * 1e3 / total_ops as f64,
        total_ops as f64 / cpu.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0 / cores as f64,
    );
    let usage = center.store().unwrap().pool_usage().unwrap();
    println!(
        "pool after: {} allocated (the routers' own two addresses each), {} free ranges",
        usage.allocated, usage.free_ranges
    );
    center.store().unwrap().check_pool().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
