//! `vpnnatctl`: drive the datapath library by hand — for operators debugging
//! a box, for the VM tests, and for the benchmark. Every kernel change goes
//! through the library (netlink and the nftables crate), never through `ip`.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

mod bench;

use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vpnnat_datapath::nft::{ElemOp, NatTable, Nft, NftElements};
use vpnnat_datapath::route::Route;
use vpnnat_datapath::xfrm::{Xfrm, XfrmEvents};
use vpnnat_datapath::{
    Datapath, DesiredState, Dir, Encap, Ipv4Cidr, KernelDatapath, Lifetime, Mapping, PolicyId, PolicySpec, SaId, SaKey,
    SaSpec, REQID_BASE,
};

#[derive(Parser, Debug)]
#[command(
    name = "vpnnatctl",
    version,
    about = "Inspect and program the VPNNAT kernel datapath (XFRM, nftables, routes)"
)]
struct Cli {
    /// Name of the project's nftables table.
    #[arg(long, global = true, default_value = "vpnnat")]
    table: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The 1:1 VPNNAT table (nftables).
    #[command(subcommand)]
    Nat(NatCmd),
    /// ESP tunnel-mode SAs.
    #[command(subcommand)]
    Sa(SaCmd),
    /// XFRM policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Bring a link up or down.
    Link {
        dev: String,
        #[arg(value_parser = ["up", "down"])]
        state: String,
    },
    /// Add or delete an IPv4 address: `addr add DEV A.B.C.D/LEN`.
    Addr {
        #[arg(value_parser = ["add", "del"])]
        op: String,
        dev: String,
        addr: String,
    },
    /// Add or delete a route: `route add CIDR [--via GW] [--dev DEV]`.
    Route {
        #[arg(value_parser = ["add", "del"])]
        op: String,
        dst: Ipv4Cidr,
        #[arg(long)]
        via: Option<Ipv4Addr>,
        #[arg(long)]
        dev: Option<String>,
    },
    /// Print kernel acquire/expire events as they come.
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Print the project's kernel objects as JSON-ish text.
    State,
    /// Remove every object the project owns in this namespace.
    Flush,
    /// Benchmark mapping install/remove: library vs per-call CLI.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum NatCmd {
    /// (Re)create the table, empty but for the center networks.
    Init {
        #[arg(long = "center")]
        center: Vec<Ipv4Cidr>,
    },
    /// Add mappings VPNNAT=REAL (one transaction).
    Add { mappings: Vec<Mapping> },
    /// Delete mappings VPNNAT=REAL (one transaction).
    Del { mappings: Vec<Mapping> },
    /// List mappings.
    List,
    /// Remove the table.
    Destroy,
}

#[derive(Subcommand, Debug)]
enum SaCmd {
    /// Add an ESP tunnel-mode SA with rfc4106(gcm(aes)).
    Add {
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        dst: Ipv4Addr,
        /// SPI (decimal or 0x-hex).
        #[arg(long, value_parser = parse_u32)]
        spi: u32,
        #[arg(long, value_parser = parse_u32, default_value_t = REQID_BASE + 1)]
        reqid: u32,
        /// Key with 4-byte salt, hex: 40 (AES-128) or 72 (AES-256) digits.
        /// Read from the environment variable VPNNAT_SA_KEY if omitted, so
        /// that it need not appear in a process listing.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value_t = 64)]
        replay_window: u32,
        /// ESP-in-UDP: SPORT:DPORT.
        #[arg(long)]
        encap: Option<String>,
        #[arg(long)]
        soft_secs: Option<u64>,
        #[arg(long)]
        hard_secs: Option<u64>,
    },
    /// Delete an SA.
    Del {
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long, value_parser = parse_u32)]
        spi: u32,
    },
    /// Show an SA with its counters.
    Get {
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long, value_parser = parse_u32)]
        spi: u32,
    },
    /// List ESP SAs (all of them, with owner).
    List,
    /// Allocate a free SPI (creates a larval SA).
    Allocspi {
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long, value_parser = parse_u32, default_value_t = REQID_BASE + 1)]
        reqid: u32,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Add a tunnel policy with one ESP template.
    Add {
        #[arg(long)]
        dir: Dir,
        #[arg(long)]
        src: Ipv4Cidr,
        #[arg(long)]
        dst: Ipv4Cidr,
        #[arg(long)]
        tmpl_src: Ipv4Addr,
        #[arg(long)]
        tmpl_dst: Ipv4Addr,
        #[arg(long, value_parser = parse_u32, default_value_t = REQID_BASE + 1)]
        reqid: u32,
        #[arg(long, default_value_t = 1000)]
        priority: u32,
    },
    /// Delete a policy.
    Del {
        #[arg(long)]
        dir: Dir,
        #[arg(long)]
        src: Ipv4Cidr,
        #[arg(long)]
        dst: Ipv4Cidr,
    },
    /// List tunnel policies.
    List,
    /// Set the IPv4 policy hash thresholds (see the library docs).
    Hthresh { lbits: u8, rbits: u8 },
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn owner(reqid: u32) -> &'static str {
    if vpnnat_datapath::is_owned_reqid(reqid) {
        "vpnnat"
    } else {
        "foreign"
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpnnatctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let table = NatTable::named(&cli.table);
    match cli.cmd {
        Cmd::Nat(c) => nat(table, c),
        Cmd::Sa(c) => sa(c),
        Cmd::Policy(c) => policy(c),
        Cmd::Link { dev, state } => Ok(Route::open()?.set_up(&dev, state == "up")?),
        Cmd::Addr { op, dev, addr } => {
            let c: Ipv4Cidr = addr
                .split_once('/')
                .map(|(a, _)| a)
                .unwrap_or(&addr)
                .parse()
                .with_context(|| format!("address {addr}"))?;
            let len = match addr.split_once('/') {
                Some((_, l)) => l.parse().with_context(|| format!("prefix length in {addr}"))?,
                None => 32,
            };
            let mut r = Route::open()?;
            if op == "add" {
                r.add_address(&dev, c.addr(), len)?
            } else {
                r.del_address(&dev, c.addr(), len)?
            }
            Ok(())
        }
        Cmd::Route { op, dst, via, dev } => {
            let mut r = Route::open()?;
            if op == "add" {
                r.add_route(dst, via, dev.as_deref())?
            } else {
                r.del_route(dst, via, dev.as_deref())?
            }
            Ok(())
        }
        Cmd::Events { count } => {
            let mut ev = XfrmEvents::subscribe()?;
            let mut seen = 0;
            loop {
                for e in ev.recv()? {
                    println!("{e:?}");
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            }
        }
        Cmd::State => {
            let mut dp = KernelDatapath::open(table)?;
            let s = dp.observe()?;
            for sa in &s.sas {
                println!(
                    "sa {} src {} reqid {:#x} packets {} bytes {}",
                    sa.id, sa.src, sa.reqid, sa.counters.packets, sa.counters.bytes
                );
            }
            for p in &s.policies {
                println!("{} tmpl {} -> {} reqid {:#x}", p.id, p.tmpl_src, p.tmpl_dst, p.reqid);
            }
            if let Some(n) = &s.nat {
                for m in &n.mappings {
                    println!("mapping {m}");
                }
            }
            Ok(())
        }
        Cmd::Flush => {
            let mut dp = KernelDatapath::open(table)?;
            let changes = dp.reconcile(&DesiredState::default())?;
            for c in changes {
                println!("{}", c.describe());
            }
            Ok(())
        }
        Cmd::Bench(args) => bench::run(&args, table),
    }
}

/// Adds or deletes mapping elements as routerd does: a few in one netlink
/// batch, many through `nft`.
fn elements(table: &NatTable, nft: &Nft, op: ElemOp, mappings: &[Mapping]) -> Result<()> {
    if mappings.len() <= vpnnat_datapath::nft::elements::MAX_MAPPINGS {
        NftElements::open()?.apply(&table.name, op, mappings)?;
    } else if op == ElemOp::Add {
        nft.apply("add mappings", &table.add_mappings(mappings))?;
    } else {
        nft.apply("delete mappings", &table.remove_mappings(mappings))?;
    }
    Ok(())
}

fn nat(table: NatTable, c: NatCmd) -> Result<()> {
    let nft = Nft::new(table.clone());
    match c {
        NatCmd::Init { center } => nft.apply("create table", &table.create(&center, &[]))?,
        NatCmd::Add { mappings } => {
            if mappings.is_empty() {
                bail!("no mapping given (VPNNAT=REAL)");
            }
            elements(&table, &nft, ElemOp::Add, &mappings)?
        }
        NatCmd::Del { mappings } => {
            if mappings.is_empty() {
                bail!("no mapping given (VPNNAT=REAL)");
            }
            elements(&table, &nft, ElemOp::Delete, &mappings)?
        }
        NatCmd::List => match nft.observe()? {
            None => bail!("table ip {} does not exist", table.name),
            Some(o) => {
                for c in &o.center {
                    println!("center {c}");
                }
                for m in &o.mappings {
                    println!("{m}");
                }
                if !o.consistent {
                    bail!("maps and set disagree: run `nat init` or reconcile");
                }
            }
        },
        NatCmd::Destroy => nft.apply("destroy table", &table.destroy())?,
    }
    Ok(())
}

fn sa(c: SaCmd) -> Result<()> {
    let mut x = Xfrm::open()?;
    match c {
        SaCmd::Add {
            src,
            dst,
            spi,
            reqid,
            key,
            replay_window,
            encap,
            soft_secs,
            hard_secs,
        } => {
            let key = match key {
                Some(k) => k,
                None => std::env::var("VPNNAT_SA_KEY").context("no --key and no VPNNAT_SA_KEY")?,
            };
            let key = hex::decode(key.trim_start_matches("0x")).context("key is not hex")?;
            let encap = match encap {
                Some(e) => {
                    let (s, d) = e.split_once(':').context("--encap wants SPORT:DPORT")?;
                    Some(Encap {
                        sport: s.parse().context("encap source port")?,
                        dport: d.parse().context("encap destination port")?,
                    })
                }
                None => None,
            };
            x.add_sa(&SaSpec {
                src,
                dst,
                spi,
                reqid,
                key: SaKey::new(key)?,
                replay_window,
                encap,
                lifetime: Lifetime { soft_secs, hard_secs },
            })?;
        }
        SaCmd::Del { dst, spi } => x.delete_sa(SaId { dst, spi })?,
        SaCmd::Get { dst, spi } => {
            let s = x.get_sa(SaId { dst, spi })?;
            println!(
                "{} src {} reqid {:#x} packets {} bytes {} replay-errors {} integrity-failures {}",
                s.id,
                s.src,
                s.reqid,
                s.counters.packets,
                s.counters.bytes,
                s.counters.replay_errors,
                s.counters.integrity_failures
            );
        }
        SaCmd::List => {
            for s in x.list_sas()? {
                println!(
                    "{} src {} reqid {:#x} ({}) packets {} bytes {}{}",
                    s.id,
                    s.src,
                    s.reqid,
                    owner(s.reqid),
                    s.counters.packets,
                    s.counters.bytes,
                    s.encap
                        .map(|e| format!(" encap {}:{}", e.sport, e.dport))
                        .unwrap_or_default()
                );
            }
        }
        SaCmd::Allocspi { src, dst, reqid } => {
            let spi = x.alloc_spi(src, dst, reqid, 0x100, 0xffff_fff0)?;
            println!("{spi:#010x}");
        }
    }
    Ok(())
}

fn policy(c: PolicyCmd) -> Result<()> {
    let mut x = Xfrm::open()?;
    match c {
        PolicyCmd::Add {
            dir,
            src,
            dst,
            tmpl_src,
            tmpl_dst,
            reqid,
            priority,
        } => x.add_policy(&PolicySpec {
            id: PolicyId { src, dst, dir },
            priority,
            tmpl_src,
            tmpl_dst,
            reqid,
        })?,
        PolicyCmd::Del { dir, src, dst } => x.delete_policy(&PolicyId { src, dst, dir })?,
        PolicyCmd::List => {
            for p in x.list_policies()? {
                println!(
                    "{} tmpl {} -> {} reqid {:#x} ({}) priority {}",
                    p.id,
                    p.tmpl_src,
                    p.tmpl_dst,
                    p.reqid,
                    owner(p.reqid),
                    p.priority
                );
            }
        }
        PolicyCmd::Hthresh { lbits, rbits } => x.set_hash_thresholds(lbits, rbits)?,
    }
    Ok(())
}
