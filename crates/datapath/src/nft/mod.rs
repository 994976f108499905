//! nftables through the `nftables` crate (the `nft` JSON API): each change is
//! one `nft -j -f -` transaction, all or nothing. The elements of a grant
//! or revoke go straight to the kernel instead ([`elements`]).

pub mod counters;
pub mod elements;
pub mod gateway;
pub mod guard;
pub mod ruleset;
pub mod setelem;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use serde_json::Value;

use crate::error::DatapathError;
use crate::model::{Ipv4Cidr, Mapping};
pub use counters::HostCounter;
pub use elements::NftElements;
pub use ruleset::{LanSide, NatTable};
pub use setelem::ElemOp;

/// The VPNNAT table as read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatObserved {
    pub center: BTreeSet<Ipv4Cidr>,
    /// Mappings present in the DNAT map.
    pub mappings: BTreeSet<Mapping>,
    /// False when the SNAT map or the granted set disagree with the DNAT map
    /// (never after a transaction of ours, but possible after manual edits).
    pub consistent: bool,
}

/// Applies transactions for one table with a given `nft` executable.
#[derive(Clone, Debug)]
pub struct Nft {
    pub table: NatTable,
    program: String,
}

fn nft_err(what: &str) -> impl FnOnce(NftablesError) -> DatapathError + '_ {
    move |e| DatapathError::Nft {
        what: what.to_string(),
        detail: match e {
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
            other => other.to_string(),
        },
    }
}

/// Runs `program -j -f -` with `payload` on its stdin; on failure, what
/// it said (stderr, else stdout, else its exit status).
fn run_nft(program: &str, payload: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(payload)
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let (stderr, stdout) = (said(&out.stderr), said(&out.stdout));
    Err(if !stderr.is_empty() {
        stderr
    } else if !stdout.is_empty() {
        stdout
    } else {
        format!("{program} failed ({}) without a message", out.status)
    })
}

/// The elements of the map or set `name` among a listing's objects;
/// `None` when there is no map or set of that name.
///
/// The listing is walked as plain JSON rather than decoded into the
/// `nftables` crate's schema: the schema's `Deserialize` impls (untagged
/// enums of every object and expression) were ~170 KB of routerd's
/// 4,000,000-byte budget (router/README.md), for four lists of addresses.
fn elems_of<'a>(objs: &'a [Value], name: &str) -> Option<&'a [Value]> {
    objs.iter().find_map(|o| {
        let s = o.get("map").or_else(|| o.get("set"))?;
        if s.get("name")?.as_str()? != name {
            return None;
        }
        // A set without elements has no `elem` key.
        Some(s.get("elem").and_then(Value::as_array).map_or(&[][..], Vec::as_slice))
    })
}

fn ip_of(e: &Value) -> Option<Ipv4Addr> {
    match e {
        Value::String(s) => s.parse().ok(),
        // An element with its counter (the granted set's): its value.
        Value::Object(o) => ip_of(o.get("elem")?.get("val")?),
        _ => None,
    }
}

fn pair_of(e: &Value) -> Option<(Ipv4Addr, Ipv4Addr)> {
    match e.as_array()?.as_slice() {
        [k, v] => Some((ip_of(k)?, ip_of(v)?)),
        _ => None,
    }
}

fn cidr_of(e: &Value) -> Option<Ipv4Cidr> {
    if let Some(p) = e.get("prefix") {
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return Ipv4Cidr::new(ip_of(p.get("addr")?)?, len).ok();
    }
    if let Some(r) = e.get("range") {
        // nft prints some prefixes as ranges; keep them when they are one.
        let [lo, hi] = r.as_array()?.as_slice() else {
            return None;
        };
        let (lo, hi) = (u32::from(ip_of(lo)?), u32::from(ip_of(hi)?));
        let size = hi.checked_sub(lo)?.checked_add(1)?;
        if size.is_power_of_two() && lo.checked_rem(size)? == 0 {
            let len = u8::try_from(32_u32.checked_sub(size.trailing_zeros())?).ok()?;
            return Ipv4Cidr::new(Ipv4Addr::from(lo), len).ok();
        }
        return None;
    }
    e.as_str()?.parse().ok()
}

impl Nft {
    pub fn new(table: NatTable) -> Self {
        Self::with_program(table, std::env::var("VPNNAT_NFT").unwrap_or_else(|_| "nft".to_string()))
    }

    /// With a given `nft` executable (`VPNNAT_NFT` or `nft` in [`Nft::new`]).
    pub fn with_program(table: NatTable, program: String) -> Self {
        Self { table, program }
    }

    /// Runs one transaction: the crate's [`Nftables`] or its JSON.
    pub fn apply<B: serde::Serialize + ?Sized>(&self, what: &str, batch: &B) -> Result<(), DatapathError> {
        // Not the crate's `apply_ruleset_with_args`: it leaves nft's stderr
        // to ours, so a refused transaction came back with an empty
        // reason. Here the reason is part of the error.
        let json = serde_json::to_value(batch).map_err(|e| DatapathError::Nft {
            what: what.to_string(),
            detail: format!("encoding the transaction: {e}"),
        })?;
        if json
            .get("nftables")
            .and_then(|v| v.as_array())
            .is_some_and(Vec::is_empty)
        {
            return Ok(());
        }
        let payload = json.to_string().into_bytes();
        run_nft(&self.program, &payload).map_err(|detail| DatapathError::Nft {
            what: what.to_string(),
            detail,
        })
    }

    /// The whole table in one `nft list table`: one snapshot, so a change
    /// by someone else lands either before or after it, never between the
    /// reads of two of its maps (which would make a table that is
    /// consistent at every moment look inconsistent, and be rebuilt).
    fn list_table(&self) -> Result<Option<Vec<Value>>, DatapathError> {
        let args = ["list", "table", "ip", &self.table.name];
        let raw = match helper::get_current_ruleset_raw(Some(&self.program), args) {
            Ok(raw) => raw,
            Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file or directory") => {
                return Ok(None);
            }
            Err(e) => return Err(nft_err("list")(e)),
        };
        // Only the sets and maps are read: the rules never change anyway
        // (and the `nftables` crate could not even decode every rule
        // expression nft prints, our own `tcp option maxseg` among them).
        let invalid = |e: serde_json::Error| nft_err("list")(NftablesError::NftInvalidJson(e));
        let doc: Value = serde_json::from_str(&raw).map_err(invalid)?;
        match doc {
            Value::Object(mut o) => match o.remove("nftables") {
                Some(Value::Array(objs)) => Ok(Some(objs)),
                _ => Err(DatapathError::Nft {
                    what: "list".to_string(),
                    detail: "nft's listing has no \"nftables\" array".to_string(),
                }),
            },
            _ => Err(DatapathError::Nft {
                what: "list".to_string(),
                detail: "nft's listing is not a JSON object".to_string(),
            }),
        }
    }

    /// Reads the table; `None` when it (or its DNAT map) does not exist.
    pub fn observe(&self) -> Result<Option<NatObserved>, DatapathError> {
        let Some(table) = self.list_table()? else {
            return Ok(None);
        };
        let Some(dnat) = elems_of(&table, ruleset::DNAT_MAP) else {
            return Ok(None);
        };
        let snat = elems_of(&table, ruleset::SNAT_MAP).unwrap_or_default();
        let granted = elems_of(&table, ruleset::GRANTED_SET).unwrap_or_default();
        let center = elems_of(&table, ruleset::CENTER_SET).unwrap_or_default();
        let mappings: BTreeSet<Mapping> = dnat
            .iter()
            .filter_map(pair_of)
            .map(|(vpnnat, real)| Mapping { vpnnat, real })
            .collect();
        let snat: BTreeSet<Mapping> = snat
            .iter()
            .filter_map(pair_of)
            .map(|(real, vpnnat)| Mapping { vpnnat, real })
            .collect();
        let granted: BTreeSet<Ipv4Addr> = granted.iter().filter_map(ip_of).collect();
        let consistent = snat == mappings && granted == mappings.iter().map(|m| m.real).collect();
        let center = center.iter().filter_map(cidr_of).collect();
        Ok(Some(NatObserved {
            center,
            mappings,
            consistent,
        }))
    }
}

/// Where nftables transactions go: the kernel ([`Nft`]) or a recorder
/// ([`RecordingNft`]), so a daemon's table logic runs the same in tests.
pub trait NftApply: Send {
    fn apply_nft(&mut self, what: &str, batch: &Nftables<'_>) -> Result<(), DatapathError>;
}

impl NftApply for Nft {
    fn apply_nft(&mut self, what: &str, batch: &Nftables<'_>) -> Result<(), DatapathError> {
        self.apply(what, batch)
    }
}

/// Records every transaction (as its JSON) instead of applying it; can be
/// told to fail, to test recovery paths.
#[derive(Clone, Debug, Default)]
pub struct RecordingNft {
    /// Every transaction applied, in order, with what it was for.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    /// Fail every transaction while set.
    pub fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NftApply for RecordingNft {
    fn apply_nft(&mut self, what: &str, batch: &Nftables<'_>) -> Result<(), DatapathError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DatapathError::Nft {
                what: what.to_string(),
                detail: "injected failure".to_string(),
            });
        }
        if batch.objects.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_value(batch).map_err(|e| DatapathError::Nft {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        if let Ok(mut l) = self.log.lock() {
            l.push((what.to_string(), json));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft -j list table ip vpnnat` printed for a router's table
    /// with one grant (shortened to the objects that matter; the rule
    /// shows an expression the `nftables` crate cannot decode).
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
{"table": {"family": "ip", "name": "vpnnat", "handle": 1}},
{"map": {"family": "ip", "name": "dnat4", "table": "vpnnat", "type": "ipv4_addr", "handle": 1, "map": "ipv4_addr", "elem": [["10.64.0.7", "192.168.1.10"]]}},
{"map": {"family": "ip", "name": "snat4", "table": "vpnnat", "type": "ipv4_addr", "handle": 2, "map": "ipv4_addr", "elem": [["192.168.1.10", "10.64.0.7"]]}},
{"set": {"family": "ip", "name": "granted", "table": "vpnnat", "type": "ipv4_addr", "handle": 3, "elem": [{"elem": {"val": "192.168.1.10", "counter": {"packets": 3, "bytes": 180}}}]}},
{"set": {"family": "ip", "name": "center", "table": "vpnnat", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "172.16.0.0", "len": 24}}]}},
{"chain": {"family": "ip", "table": "vpnnat", "name": "forward", "handle": 5, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
{"rule": {"family": "ip", "table": "vpnnat", "chain": "forward", "handle": 9, "expr": [{"an expression": "no crate knows"}]}}]}"#;

    /// A stand-in `nft` that appends its arguments to `calls` and prints
    /// `LISTING`.
    fn fake_nft(dir: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let listing = dir.join("listing.json");
        std::fs::write(&listing, LISTING).unwrap();
        let prog = dir.join("nft");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\ncat {listing}\n",
            calls = dir.join("calls").display(),
            listing = listing.display()
        );
        std::fs::write(&prog, script).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        prog.display().to_string()
    }

    #[test]
    fn elements_are_read_from_plain_json_in_every_form_nft_prints() {
        let objs: Vec<Value> = serde_json::from_str(
            r#"[{"set": {"name": "center", "elem": [{"range": ["10.64.0.0", "10.64.0.255"]},
                {"range": ["10.65.0.1", "10.65.0.3"]}, "172.16.1.0/24", {"prefix": {"addr": "10.8.0.0", "len": 16}}]}},
               {"set": {"name": "granted"}},
               {"map": {"name": "dnat4", "elem": [[{"elem": {"val": "10.64.0.7", "counter": {"packets": 1, "bytes": 60}}}, "192.168.1.10"], ["x", "192.168.1.11"]]}}]"#,
        )
        .unwrap();
        let center: BTreeSet<Ipv4Cidr> = elems_of(&objs, "center").unwrap().iter().filter_map(cidr_of).collect();
        // A range that is no prefix is not one.
        assert_eq!(
            center,
            ["10.64.0.0/24", "172.16.1.0/24", "10.8.0.0/16"]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect()
        );
        // A set without elements has none; an absent one is None.
        assert_eq!(elems_of(&objs, "granted"), Some(&[][..]));
        assert_eq!(elems_of(&objs, "snat4"), None);
        let pairs: Vec<_> = elems_of(&objs, "dnat4").unwrap().iter().filter_map(pair_of).collect();
        assert_eq!(pairs, [(Ipv4Addr::new(10, 64, 0, 7), Ipv4Addr::new(192, 168, 1, 10))]);
    }

    #[test]
    fn the_table_is_read_in_one_listing() {
        // Several reads (one per map and set) could straddle someone
        // else's change to the table: a table consistent at every moment
        // then read as inconsistent and was rebuilt, repairing a fault the
        // failure watch was meant to see (the e2e run of CI stop 27).
        let dir = std::env::temp_dir().join(format!("vpnnat-nft-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nft = Nft::with_program(NatTable::named("vpnnat"), fake_nft(&dir));
        let o = nft.observe().unwrap().unwrap();
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(calls, "-j list table ip vpnnat\n");
        let m = Mapping {
            vpnnat: Ipv4Addr::new(10, 64, 0, 7),
            real: Ipv4Addr::new(192, 168, 1, 10),
        };
        assert_eq!(
            o,
            NatObserved {
                center: BTreeSet::from(["172.16.0.0/24".parse().unwrap()]),
                mappings: BTreeSet::from([m]),
                consistent: true,
            }
        );
    }
}
