//! Size and memory benchmark of `routerd`:
//!
//!     RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile firmware \
//!         --target x86_64-unknown-linux-gnu -p vpnnat-router --bin routerd
//!     cargo run -p vpnnat-router --features fake-center --example bench -- \
//!         [--fake-datapath] [--cycles N] [--rounds N] [--warmup N] \
//!         target/x86_64-unknown-linux-gnu/firmware/routerd
//!
//! Prints the binary's size, then runs it against an in-process fake center
//! (real HTTP on loopback) and reports its RSS when idle and after each
//! round (default 2) of N grant/release cycles (maintenance request, end,
//! release), then the growth after the first `--warmup` rounds (default
//! 1): from the RSS after the last warm-up round to the RSS after the last
//! round (`scripts/bench-router-rss.sh`: 1 + 10 rounds of 1,000).
//! routerd logs at `info` (every cycle logs, so its in-memory log ring is
//! full, as on a busy router) to a file that is removed afterwards.
//! Without `--fake-datapath` it needs root: it moves itself into a new
//! network namespace first, so routerd programs that namespace's kernel
//! (nftables, XFRM policies) and nothing of the host.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_router::http;
use vpnnat_router::testing::{CenterSim, FakeCenter};
use vpnnat_service::clock::unix_now;

/// routerd, killed and reaped however the benchmark ends (an error too).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// `VmRSS` and its split: anonymous (heap, stacks) and file (the binary's
/// pages touched so far).
fn rss_kib(pid: u32) -> Result<Rss> {
    Ok(Rss {
        total: status_kib(pid, "VmRSS:")?,
        anon: status_kib(pid, "RssAnon:")?,
        file: status_kib(pid, "RssFile:")?,
    })
}

#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} KiB (anon {}, file {})", self.total, self.anon, self.file)
    }
}

/// `to` against `from` in percent.
fn growth(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) * 100.0 / from as f64
}

fn main() -> Result<()> {
    let mut fake = false;
    let mut cycles = 1000usize;
    let mut rounds = 2usize;
    let mut warmup = 1usize;
    let mut bin = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--fake-datapath" => fake = true,
            "--cycles" => cycles = args.next().context("--cycles N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--warmup" => warmup = args.next().context("--warmup N")?.parse()?,
            other => bin = Some(PathBuf::from(other)),
        }
    }
    let bin = bin.context("usage: bench [--fake-datapath] [--cycles N] [--rounds N] [--warmup N] PATH/TO/routerd")?;
    if warmup >= rounds {
        bail!("--warmup ({warmup}) must be below --rounds ({rounds})");
    }
    let size = std::fs::metadata(&bin)?.len();
    println!(
        "binary {}: {size} bytes ({:.2} MiB)",
        bin.display(),
        size as f64 / 1048576.0
    );

    if !fake {
        // SAFETY: unshare only changes this (still single) thread's network
        // namespace; every thread and process started later inherits it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "unshare(CLONE_NEWNET) (needs root): {}",
                std::io::Error::last_os_error()
            );
        }
        // lo up, and the WAN address on it so that the IKE responder binds
        // its ports as on the router.
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "198.51.100.101/24", "dev", "lo"],
        ] {
            let st = Command::new("ip").args(args).status()?;
            if !st.success() {
                bail!("ip {} failed", args.join(" "));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(bin, fake, cycles, rounds, warmup))
}

async fn run(bin: PathBuf, fake: bool, cycles: usize, rounds: usize, warmup: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("routerd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let center_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let center_addr = center_l.local_addr()?;
    let (web, server) = (free_port()?, free_port()?);
    let secret = "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545";
    let cfg = dir.join("routerd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"terminal_id = "router-1"
center_url = "http://{center_addr}"
factory_secret = "{secret}"
state_dir = "{d}/state"
lease_file = "{d}/leases"
dns = false
[wan]
interface = "eth0"
address = "198.51.100.101/24"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
[web_ui]
listen = "127.0.0.1:{web}"
[server_part]
listen = "127.0.0.1:{server}"
[hosts]
pc1 = "192.168.1.10"
"#,
            d = dir.display()
        ),
    )?;
    // Owner-only, as routerd asks of a file with its factory secret (else
    // it logs an error at start).
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut fc = FakeCenter::new("router-1", vpnnat_proto::keys::SecretId::from_hex(secret)?);
    fc.now = unix_now();
    let sim = Arc::new(CenterSim(Mutex::new(fc)));
    tokio::spawn(http::serve(center_l, sim.clone(), std::future::pending()));

    let mut cmd = Command::new(&bin);
    cmd.args(["-c", cfg.to_str().context("path")?, "run"]);
    if fake {
        cmd.arg("--fake-datapath");
    }
    let log = std::fs::File::create(dir.join("routerd.log"))?;
    let mut child = Reap(cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn()?);
    let pid = child.0.id();
    let lan = format!("127.0.0.1:{web}");
    let srv = format!("127.0.0.1:{server}");
    let t = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        if let Ok((200, _, b)) = http::request(&lan, Method::GET, "/api/status", &[], None, t).await {
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            if v["installed"] == true {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("routerd did not install");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("datapath: {}", if fake { "in-memory" } else { "kernel (own netns)" });
    let idle = rss_kib(pid)?;
    println!("RSS idle after installation: {idle}");
    let mut after = Vec::with_capacity(rounds);
    let body = br#"{"claimant_name":"Bench","claimant_level":"general","urgency":"low","phone":"123","content":"x","terminals":["pc1"]}"#;
    for round in 1..=rounds {
        let t0 = Instant::now();
        for _ in 0..cycles {
            let (s, _, b) = http::request(&lan, Method::POST, "/api/request", &[], Some(body.to_vec()), t).await?;
            if s != 200 {
                bail!("request: {s} {}", String::from_utf8_lossy(&b));
            }
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            let n = v["acceptance_number"].as_u64().context("acceptance number")?;
            let (end, rel) = {
                let mut c = sim.0.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                // Signed 119 s in the past (inside the ±120 s window): the
                // router forgets each nonce 2-3 s later, so its bounded nonce
                // store (1,024 per window) does not fill at this rate, which
                // is far above any real center's.
                c.now = unix_now().saturating_sub(119);
                let cmds = (c.end(n), c.release("pc1"));
                c.now = unix_now();
                cmds
            };
            for o in [end, rel] {
                let (s, _, b) = http::request(&srv, Method::POST, o.path, &o.headers.pairs(), Some(o.body), t).await?;
                if s != 200 {
                    bail!("{}: {s} {}", o.path, String::from_utf8_lossy(&b));
                }
            }
        }
        let el = t0.elapsed();
        let rss = rss_kib(pid)?;
        after.push(rss);
        println!(
            "RSS after round {round} ({cycles} grant/release cycles, {:.2} ms per cycle): {rss}",
            el.as_secs_f64() * 1000.0 / cycles as f64,
        );
    }
    // Warm-up 0: from the idle figure.
    let from = match warmup.checked_sub(1) {
        Some(i) => after.get(i).copied(),
        None => Some(idle),
    };
    if let (Some(from), Some(to)) = (from, after.last()) {
        println!(
            "RSS growth over the {} cycles after warm-up (round {warmup} -> {rounds}): {:+.1} % ({:+} KiB; anon {:+.1} %, file {:+.1} %)",
            cycles * (rounds - warmup),
            growth(from.total, to.total),
            to.total as i64 - from.total as i64,
            growth(from.anon, to.anon),
            growth(from.file, to.file),
        );
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.0.wait();
    let text = std::fs::read_to_string(dir.join("routerd.log")).unwrap_or_default();
    println!("routerd logged {} lines", text.lines().count());
    for l in text.lines().filter(|l| l.contains("ERROR")).take(5) {
        println!("  {l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
