//! Mapping install/remove benchmark: the library against per-call CLI tools.
//!
//! One "mapping" is what a grant costs the router: one DNAT/SNAT map element
//! pair (plus the granted-set element) and one XFRM policy pair (out + in).
//! It prints figures and asserts nothing about time.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use vpnnat_datapath::nft::{NatTable, Nft};
use vpnnat_datapath::xfrm::Xfrm;
use vpnnat_datapath::{Change, Datapath, Dir, Ipv4Cidr, KernelDatapath, Mapping, PolicyId, PolicySpec, REQID_BASE};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Population sizes.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Mappings done one at a time (library single ops and CLI calls) at
    /// each population size; the CLI is too slow to do all 100,000.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

const CENTER: &str = "203.0.113.0/24";
const GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);

fn mapping(i: usize) -> Mapping {
    // VPNNAT addresses from 10.0.0.1 up, real ones from 172.16.0.1 up.
    let i = i as u32 + 1;
    Mapping {
        vpnnat: Ipv4Addr::from(0x0a00_0000 + i),
        real: Ipv4Addr::from(0xac10_0000 + i),
    }
}

fn policies(m: &Mapping) -> [PolicySpec; 2] {
    let center: Ipv4Cidr = CENTER.parse().unwrap_or(Ipv4Cidr::host(Ipv4Addr::UNSPECIFIED));
    let host = Ipv4Cidr::host(m.vpnnat);
    [
        PolicySpec {
            id: PolicyId {
                src: host,
                dst: center,
                dir: Dir::Out,
            },
            priority: 1000,
            tmpl_src: ROUTER,
            tmpl_dst: GW,
            reqid: REQID_BASE + 1,
        },
        PolicySpec {
            id: PolicyId {
                src: center,
                dst: host,
                dir: Dir::In,
            },
            priority: 1000,
            tmpl_src: GW,
            tmpl_dst: ROUTER,
            reqid: REQID_BASE + 1,
        },
    ]
}

/// Time spent in the nft part and in the XFRM part of some changes.
#[derive(Default, Clone, Copy)]
struct Split {
    nft: Duration,
    xfrm: Duration,
}

impl Split {
    fn total(&self) -> Duration {
        self.nft + self.xfrm
    }
}

/// Installs mappings as the router does: NAT elements first, then policies.
fn install(dp: &mut KernelDatapath, ms: &[Mapping], split: &mut Split) -> Result<()> {
    let t = Instant::now();
    dp.apply(&[Change::AddMappings(ms.to_vec())])?;
    split.nft += t.elapsed();
    let t = Instant::now();
    let ps: Vec<Change> = ms.iter().flat_map(policies).map(Change::AddPolicy).collect();
    dp.apply(&ps)?;
    split.xfrm += t.elapsed();
    Ok(())
}

/// Removes mappings as the router does: policies first, then NAT elements.
fn remove(dp: &mut KernelDatapath, ms: &[Mapping], split: &mut Split) -> Result<()> {
    let t = Instant::now();
    let ps: Vec<Change> = ms.iter().flat_map(policies).map(|p| Change::DelPolicy(p.id)).collect();
    dp.apply(&ps)?;
    split.xfrm += t.elapsed();
    let t = Instant::now();
    dp.apply(&[Change::DelMappings(ms.to_vec())])?;
    split.nft += t.elapsed();
    Ok(())
}

/// True when this process runs in a named namespace (`ip netns add`), so the
/// benchmark cannot wipe the host's own IPsec state.
fn in_scratch_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .any(|m| m.dev() == me.dev() && m.ino() == me.ino())
}

fn run_cmd(program: &str, args: &[String]) -> Result<()> {
    let st = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    ensure!(st.success(), "{program} {} failed: {st}", args.join(" "));
    Ok(())
}

fn cli_install(table: &str, m: &Mapping) -> Result<()> {
    let (v, r) = (m.vpnnat.to_string(), m.real.to_string());
    for (map, elem) in [
        ("dnat4", format!("{{ {v} : {r} }}")),
        ("snat4", format!("{{ {r} : {v} }}")),
        ("granted", format!("{{ {r} }}")),
    ] {
        run_cmd("nft", &["add", "element", "ip", table, map, &elem].map(String::from))?;
    }
    for p in policies(m) {
        let a = format!(
            "xfrm policy add src {} dst {} dir {} priority 1000 tmpl src {} dst {} proto esp reqid {} mode tunnel",
            p.id.src, p.id.dst, p.id.dir, p.tmpl_src, p.tmpl_dst, p.reqid
        );
        run_cmd("ip", &a.split(' ').map(String::from).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn cli_remove(table: &str, m: &Mapping) -> Result<()> {
    for p in policies(m) {
        let a = format!("xfrm policy del src {} dst {} dir {}", p.id.src, p.id.dst, p.id.dir);
        run_cmd("ip", &a.split(' ').map(String::from).collect::<Vec<_>>())?;
    }
    let (v, r) = (m.vpnnat.to_string(), m.real.to_string());
    for (map, elem) in [
        ("dnat4", format!("{{ {v} }}")),
        ("snat4", format!("{{ {r} }}")),
        ("granted", format!("{{ {r} }}")),
    ] {
        run_cmd("nft", &["delete", "element", "ip", table, map, &elem].map(String::from))?;
    }
    Ok(())
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

struct Row {
    n: usize,
    parts: [Split; 4],
    batch_add: f64,
    batch_del: f64,
    single_add: f64,
    single_del: f64,
    cli_add: f64,
    cli_del: f64,
}

fn check_population(dp: &mut KernelDatapath, mappings: usize) -> Result<()> {
    let o = dp.observe()?;
    let have = o.nat.as_ref().map(|n| n.mappings.len()).unwrap_or(0);
    ensure!(
        have == mappings,
        "expected {mappings} mappings in the kernel, found {have}"
    );
    ensure!(
        o.policies.len() == 2 * mappings,
        "expected {} policies in the kernel, found {}",
        2 * mappings,
        o.policies.len()
    );
    Ok(())
}

pub fn run(args: &BenchArgs, table: NatTable) -> Result<()> {
    if !in_scratch_namespace() {
        bail!("refusing to run outside a scratch network namespace (use `ip netns exec NAME vpnnatctl bench`)");
    }
    let mut dp = KernelDatapath::open(table.clone())?;
    let nft = Nft::new(table.clone());
    let center: Ipv4Cidr = CENTER.parse()?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        ensure!((1..1 << 20).contains(&n), "size {n} out of range 1..1048576");
        let sample = args.sample.min(n);
        eprintln!("bench: N = {n} (one-at-a-time sample {sample})");
        // Fresh table and policy database for each size.
        dp.reconcile(&Default::default())?;
        nft.apply("create table", &table.create(&[center], &[]))?;
        dp.xfrm.set_hash_thresholds(24, 24)?;
        let all: Vec<Mapping> = (0..n).map(mapping).collect();

        let mut parts = [Split::default(); 4];
        // 1. library, batched: all N in one apply.
        install(&mut dp, &all, &mut parts[0])?;
        let batch_add = per_op(parts[0].total(), n);
        check_population(&mut dp, n)?;
        remove(&mut dp, &all, &mut parts[1])?;
        let batch_del = per_op(parts[1].total(), n);
        check_population(&mut dp, 0)?;
        eprintln!("bench:   library batch  add {batch_add:.1} us/mapping, remove {batch_del:.1} us/mapping");

        // 2. library, one mapping per transaction, at population N.
        let (rest, tail) = all.split_at(n - sample);
        install(&mut dp, rest, &mut Split::default())?;
        for m in tail {
            install(&mut dp, std::slice::from_ref(m), &mut parts[2])?;
        }
        let single_add = per_op(parts[2].total(), sample);
        check_population(&mut dp, n)?;
        for m in tail {
            remove(&mut dp, std::slice::from_ref(m), &mut parts[3])?;
        }
        let single_del = per_op(parts[3].total(), sample);
        check_population(&mut dp, n - sample)?;
        eprintln!("bench:   library single add {single_add:.1} us/mapping, remove {single_del:.1} us/mapping");

        // 3. per-call CLI (nft add element x3, ip xfrm policy add x2), same population.
        let t = Instant::now();
        for (i, m) in tail.iter().enumerate() {
            cli_install(&table.name, m)?;
            if i % 200 == 199 {
                eprintln!("bench:   cli add {}/{sample}", i + 1);
            }
        }
        let cli_add = per_op(t.elapsed(), sample);
        check_population(&mut dp, n)?;
        let t = Instant::now();
        for m in tail {
            cli_remove(&table.name, m)?;
        }
        let cli_del = per_op(t.elapsed(), sample);
        check_population(&mut dp, n - sample)?;
        eprintln!("bench:   cli            add {cli_add:.1} us/mapping, remove {cli_del:.1} us/mapping");
        remove(&mut dp, rest, &mut Split::default())?;
        rows.push(Row {
            n,
            parts,
            batch_add,
            batch_del,
            single_add,
            single_del,
            cli_add,
            cli_del,
        });
    }
    dp.reconcile(&Default::default())?;
    let _ = Xfrm::open()?.set_hash_thresholds(32, 32);

    let mut r = String::new();
    writeln!(r, "# datapath benchmark: per-mapping cost (one NAT map element pair + granted-set element + one XFRM policy pair)")?;
    writeln!(r, "# microseconds per mapping; 'batch' = library, all N in one apply; 'single' = library, one transaction per mapping;")?;
    writeln!(r, "# 'cli' = nft add element x3 + ip xfrm policy add x2 per mapping; single and cli timed on the last {} mappings at population N", args.sample)?;
    writeln!(
        r,
        "{:>8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "N", "batch_add", "batch_del", "single_add", "single_del", "cli_add", "cli_del", "cli/batch", "cli/single"
    )?;
    for x in &rows {
        writeln!(
            r,
            "{:>8} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>9.0}x {:>9.1}x",
            x.n,
            x.batch_add,
            x.batch_del,
            x.single_add,
            x.single_del,
            x.cli_add,
            x.cli_del,
            (x.cli_add + x.cli_del) / (x.batch_add + x.batch_del),
            (x.cli_add + x.cli_del) / (x.single_add + x.single_del)
        )?;
    }
    writeln!(
        r,
        "# one grant (single) against the per-call CLI, add and remove apart:"
    )?;
    for x in &rows {
        writeln!(
            r,
            "{:>8} cli/single add {:.0}x, remove {:.0}x",
            x.n,
            x.cli_add / x.single_add,
            x.cli_del / x.single_del
        )?;
    }
    writeln!(r, "# where the library's time goes, us/mapping (nft part + xfrm part):")?;
    for x in &rows {
        let f = |i: usize, n: usize| {
            let p: &Split = &x.parts[i];
            format!("{:.1}+{:.1}", per_op(p.nft, n), per_op(p.xfrm, n))
        };
        let sample = args.sample.min(x.n);
        writeln!(
            r,
            "{:>8} batch_add {}  batch_del {}  single_add {}  single_del {}",
            x.n,
            f(0, x.n),
            f(1, x.n),
            f(2, sample),
            f(3, sample)
        )?;
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            writeln!(
                r,
                "per-mapping cost ratio N={} : N={}: batch add+remove {:.2} (add {:.2}, remove {:.2}), single add+remove {:.2} (add {:.2}, remove {:.2}), cli add {:.2}",
                last.n,
                first.n,
                (last.batch_add + last.batch_del) / (first.batch_add + first.batch_del),
                last.batch_add / first.batch_add,
                last.batch_del / first.batch_del,
                (last.single_add + last.single_del) / (first.single_add + first.single_del),
                last.single_add / first.single_add,
                last.single_del / first.single_del,
                last.cli_add / first.cli_add
            )?;
        }
    }
    print!("{r}");
    if let Some(p) = &args.out {
        std::fs::write(p, &r).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
