//! When each router's tunnel last carried a packet (issue 19, item 8: the
//! idle timeout), as its gateway's state report says (migration 8). The
//! value only grows: a tunnel set up again (its policies new, their stamps
//! 0) does not make an earlier packet unsaid; idleness counts from the
//! later of a request's reception and this (`crate::limits::idle_due`).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{from_u64, to_u64, Result, Storage};

impl Storage {
    /// Records the gateway's word on these tunnels (terminal ID, last use;
    /// 0: none yet), in one transaction.
    pub fn record_tunnel_traffic(&mut self, seen: &[(String, u64)]) -> Result<()> {
        let tx = self.tx()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO tunnel_traffic (terminal_id, last_use) VALUES (?1, ?2)
                 ON CONFLICT (terminal_id) DO UPDATE SET last_use = MAX(last_use, excluded.last_use)",
            )?;
            for (terminal_id, last_use) in seen {
                st.execute(params![terminal_id, from_u64(*last_use)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The last traffic of the tunnels that count for the idle timeout
    /// (see [`known_in`]).
    pub fn known_tunnel_traffic(&self) -> Result<BTreeMap<String, u64>> {
        known_in(&self.conn, None)
    }

    /// Every tunnel's recorded last traffic (the operator's view: shown
    /// whether its gateway answers now or not).
    pub fn all_tunnel_traffic(&self) -> Result<BTreeMap<String, u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT terminal_id, last_use FROM tunnel_traffic")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (t, last) = row?;
            out.insert(t, to_u64(last)?);
        }
        Ok(out)
    }

    /// What the gateway last said of `terminal_id`'s tunnel (None: nothing),
    /// for the operator's view.
    pub fn tunnel_traffic(&self, terminal_id: &str) -> Result<Option<u64>> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT last_use FROM tunnel_traffic WHERE terminal_id = ?1")?
            .query_row(params![terminal_id], |r| r.get(0))
            .optional()?;
        v.map(to_u64).transpose()
    }
}

/// Terminal ID -> last use of the tunnels whose traffic is known now: a
/// row exists and the router holds a slot on a gateway that answers (a
/// gateway marked down reports nothing, and its last word may be old: no
/// evidence of idleness). `only`: just that router's.
pub(super) fn known_in(conn: &Connection, only: Option<&str>) -> Result<BTreeMap<String, u64>> {
    let mut st = conn.prepare_cached(
        "SELECT t.terminal_id, t.last_use FROM tunnel_traffic t
           JOIN gateway_slots s ON s.terminal_id = t.terminal_id
           JOIN gateways g ON g.name = s.gateway
         WHERE g.alive = 1 AND (?1 IS NULL OR t.terminal_id = ?1)",
    )?;
    let rows = st.query_map(params![only], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (t, last) = row?;
        out.insert(t, to_u64(last)?);
    }
    Ok(out)
}
