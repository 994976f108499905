//! The VPNNAT pool: free ranges and allocated addresses (see the
//! storage module's documentation for the layout).

use rusqlite::OptionalExtension;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection};
use vpnnat_proto::types::Ipv4Cidr;

use super::{from_u64, i64_to_ip, ip_to_i64, to_u64, Result, Storage, StorageError};

/// How full the pool is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub cidr: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub free_ranges: u64,
}

/// First and last usable host address of `cidr`: the network and broadcast
/// addresses are left out for prefixes shorter than /31 (they are not
/// unicast host addresses a router could map).
pub fn pool_bounds(cidr: &Ipv4Cidr) -> Option<(u32, u32)> {
    let base = u32::from(cidr.addr());
    let host_bits = 32u32.saturating_sub(u32::from(cidr.prefix_len()));
    let span = if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits).saturating_sub(1)
    };
    let last = base.saturating_add(span);
    if cidr.prefix_len() >= 31 {
        Some((base, last))
    } else {
        let (first, last) = (base.saturating_add(1), last.saturating_sub(1));
        (first <= last).then_some((first, last))
    }
}

fn lookup_addr(conn: &Connection, terminal_id: &str, terminal_name: &str) -> Result<Option<Ipv4Addr>> {
    let mut st =
        conn.prepare_cached("SELECT addr FROM pool_allocated WHERE terminal_id = ?1 AND terminal_name = ?2")?;
    st.query_row([terminal_id, terminal_name], |r| r.get::<_, i64>(0))
        .optional()?
        .map(i64_to_ip)
        .transpose()
}

/// Reuses the address of (terminal, name) or takes the lowest free one.
/// Returns the address and whether it was newly assigned.
pub(super) fn assign_or_reuse(
    tx: &Connection,
    terminal_id: &str,
    terminal_name: &str,
    now: u64,
) -> Result<(Ipv4Addr, bool)> {
    if let Some(a) = lookup_addr(tx, terminal_id, terminal_name)? {
        return Ok((a, false));
    }
    let range: Option<(i64, i64)> = tx
        .prepare_cached("SELECT start, end FROM pool_free ORDER BY start LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((start, end)) = range else {
        let cidr: String = tx
            .prepare_cached("SELECT cidr FROM pool_meta WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or_else(|| "(not configured)".into());
        return Err(StorageError::PoolExhausted { pool: cidr });
    };
    if start == end {
        tx.prepare_cached("DELETE FROM pool_free WHERE start = ?1")?
            .execute([start])?;
    } else {
        tx.prepare_cached("UPDATE pool_free SET start = ?1 + 1 WHERE start = ?1")?
            .execute([start])?;
    }
    // The primary key makes a double grant abort the transaction.
    tx.prepare_cached(
        "INSERT INTO pool_allocated (addr, terminal_id, terminal_name, assigned_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![start, terminal_id, terminal_name, from_u64(now)])?;
    Ok((i64_to_ip(start)?, true))
}

/// Frees the address of (terminal, name) back into the free ranges,
/// merging with its neighbours.
pub(super) fn release_in(tx: &Connection, terminal_id: &str, terminal_name: &str) -> Result<Option<Ipv4Addr>> {
    let Some(addr) = lookup_addr(tx, terminal_id, terminal_name)? else {
        return Ok(None);
    };
    let a = ip_to_i64(addr);
    tx.prepare_cached("DELETE FROM pool_allocated WHERE addr = ?1")?
        .execute([a])?;
    let pred: Option<(i64, i64)> = tx
        .prepare_cached("SELECT start, end FROM pool_free WHERE start < ?1 ORDER BY start DESC LIMIT 1")?
        .query_row([a], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let succ: Option<i64> = tx
        .prepare_cached("SELECT end FROM pool_free WHERE start = ?1")?
        .query_row([a.saturating_add(1)], |r| r.get(0))
        .optional()?;
    if let Some((_, pend)) = pred {
        if pend >= a {
            return Err(StorageError::Corrupt(format!("address {addr} was allocated and free")));
        }
    }
    match (pred.filter(|(_, e)| e.saturating_add(1) == a), succ) {
        (Some((pstart, _)), Some(send)) => {
            tx.prepare_cached("DELETE FROM pool_free WHERE start = ?1")?
                .execute([a.saturating_add(1)])?;
            tx.prepare_cached("UPDATE pool_free SET end = ?2 WHERE start = ?1")?
                .execute([pstart, send])?;
        }
        (Some((pstart, _)), None) => {
            tx.prepare_cached("UPDATE pool_free SET end = ?2 WHERE start = ?1")?
                .execute([pstart, a])?;
        }
        (None, Some(_)) => {
            tx.prepare_cached("UPDATE pool_free SET start = ?1 WHERE start = ?2")?
                .execute([a, a.saturating_add(1)])?;
        }
        (None, None) => {
            tx.prepare_cached("INSERT INTO pool_free (start, end) VALUES (?1, ?1)")?
                .execute([a])?;
        }
    }
    Ok(Some(addr))
}

impl Storage {
    /// Initialises the pool on first use, or checks that the configured pool
    /// is the one in the database.
    pub fn init_pool(&mut self, cidr: &Ipv4Cidr) -> Result<()> {
        let (first, last) = pool_bounds(cidr).ok_or_else(|| StorageError::PoolEmpty(cidr.to_string()))?;
        let tx = self.tx()?;
        let stored: Option<String> = tx
            .prepare_cached("SELECT cidr FROM pool_meta WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        match stored {
            Some(s) if s == cidr.to_string() => {}
            Some(s) => {
                return Err(StorageError::PoolMismatch {
                    stored: s,
                    configured: cidr.to_string(),
                })
            }
            None => {
                let size = i64::from(last).saturating_sub(i64::from(first)).saturating_add(1);
                tx.prepare_cached("INSERT INTO pool_meta (id, cidr, first, last, size) VALUES (1, ?1, ?2, ?3, ?4)")?
                    .execute(params![cidr.to_string(), i64::from(first), i64::from(last), size])?;
                tx.prepare_cached("INSERT INTO pool_free (start, end) VALUES (?1, ?2)")?
                    .execute(params![i64::from(first), i64::from(last)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Pool usage for the operator UI.
    pub fn pool_usage(&self) -> Result<PoolUsage> {
        let (cidr, size): (String, i64) = self
            .conn
            .prepare_cached("SELECT cidr, size FROM pool_meta WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or(StorageError::NotFound {
                what: "pool",
                key: "configured".into(),
            })?;
        let allocated: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM pool_allocated")?
            .query_row([], |r| r.get(0))?;
        let free_ranges: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM pool_free")?
            .query_row([], |r| r.get(0))?;
        let (size, allocated) = (to_u64(size)?, to_u64(allocated)?);
        Ok(PoolUsage {
            cidr,
            size,
            allocated,
            free: size.saturating_sub(allocated),
            free_ranges: to_u64(free_ranges)?,
        })
    }

    /// The address held by (terminal, name), if any.
    pub fn address_of(&self, terminal_id: &str, terminal_name: &str) -> Result<Option<Ipv4Addr>> {
        lookup_addr(&self.conn, terminal_id, terminal_name)
    }

    /// Every (name, address) a terminal holds.
    pub fn addresses_of_terminal(&self, terminal_id: &str) -> Result<Vec<(String, Ipv4Addr)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT terminal_name, addr FROM pool_allocated WHERE terminal_id = ?1 ORDER BY addr")?;
        let rows = st.query_map([terminal_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (n, a) = row?;
            out.push((n, i64_to_ip(a)?));
        }
        Ok(out)
    }

    /// Assigns one address to (terminal, name) in its own transaction
    /// (tests and tools; the exchanges use the bigger transactions below).
    pub fn assign_address(&mut self, terminal_id: &str, terminal_name: &str, now: u64) -> Result<Ipv4Addr> {
        let tx = self.tx()?;
        let (a, _) = assign_or_reuse(&tx, terminal_id, terminal_name, now)?;
        tx.commit()?;
        Ok(a)
    }

    /// Releases the address of (terminal, name), if it holds one.
    pub fn release_address(&mut self, terminal_id: &str, terminal_name: &str) -> Result<Option<Ipv4Addr>> {
        let tx = self.tx()?;
        let r = release_in(&tx, terminal_id, terminal_name)?;
        tx.commit()?;
        Ok(r)
    }

    /// Checks the pool's invariants (tests, `check-config`): no free range
    /// overlaps another or an allocated address, and free + allocated = size.
    pub fn check_pool(&self) -> Result<()> {
        let usage = self.pool_usage()?;
        let free_total: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(end - start + 1), 0) FROM pool_free")?
            .query_row([], |r| r.get(0))?;
        if to_u64(free_total)?.saturating_add(usage.allocated) != usage.size {
            return Err(StorageError::Corrupt(format!(
                "free {free_total} + allocated {} != size {}",
                usage.allocated, usage.size
            )));
        }
        let overlaps: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM pool_allocated a JOIN pool_free f
               ON f.start = (SELECT MAX(start) FROM pool_free WHERE start <= a.addr) AND a.addr <= f.end",
            )?
            .query_row([], |r| r.get(0))?;
        if overlaps != 0 {
            return Err(StorageError::Corrupt(format!(
                "{overlaps} allocated addresses are also free"
            )));
        }
        Ok(())
    }
}
