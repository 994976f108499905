//! Gateways and slots (3.): the configured gateways, their liveness, and
//! which router holds which slot with which tunnel state.

use rusqlite::OptionalExtension;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection};

use super::{from_u64, to_u64, Result, Storage, StorageError};

/// Tunnel state of a gateway slot as the gateway last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    Up,
    Connecting,
    Down,
}

impl TunnelState {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Up => "up",
            TunnelState::Connecting => "connecting",
            TunnelState::Down => "down",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "up" => Ok(TunnelState::Up),
            "connecting" => Ok(TunnelState::Connecting),
            "down" => Ok(TunnelState::Down),
            other => Err(StorageError::Corrupt(format!("tunnel state {other:?}"))),
        }
    }
}

/// A gateway as configured (synchronised into the database at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    pub name: String,
    pub global_ip: Ipv4Addr,
    pub slots: u16,
}

/// A gateway slot held by a router.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotRow {
    pub gateway: String,
    pub slot: u16,
    pub terminal_id: Option<String>,
    pub tunnel_state: TunnelState,
    pub changed_at: u64,
}

/// Used and free slots of one gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayUsage {
    pub name: String,
    pub global_ip: String,
    pub draining: bool,
    pub used: u64,
    pub free: u64,
    pub up: u64,
    /// Whether the gateway answers centerd's heartbeat.
    pub alive: bool,
    /// When `alive` last changed (Unix ms; 0: never).
    pub alive_changed_ms: u64,
}

/// A router whose tunnel was on a gateway that went down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostTunnel {
    pub terminal_id: String,
    pub slot: u16,
    /// Its requests that were not ended (waiting or in progress).
    pub open_requests: Vec<u64>,
}

fn slot_row_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, u16, Option<String>, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn slot_row((gateway, slot, terminal_id, state, at): (String, u16, Option<String>, String, i64)) -> Result<SlotRow> {
    Ok(SlotRow {
        gateway,
        slot,
        terminal_id,
        tunnel_state: TunnelState::parse(&state)?,
        changed_at: to_u64(at)?,
    })
}

pub(super) fn slot_of_in(conn: &Connection, terminal_id: &str) -> Result<Option<SlotRow>> {
    let mut st = conn.prepare_cached(
        "SELECT gateway, slot, terminal_id, tunnel_state, changed_at FROM gateway_slots WHERE terminal_id = ?1",
    )?;
    st.query_row([terminal_id], slot_row_raw)
        .optional()?
        .map(slot_row)
        .transpose()
}

fn claim_slot_in(tx: &Connection, gateway: &str, slot: u16, terminal_id: &str, now: u64) -> Result<bool> {
    if let Some(held) = slot_of_in(tx, terminal_id)? {
        if held.gateway == gateway && held.slot == slot {
            return Ok(true);
        }
    }
    tx.prepare_cached(
        "UPDATE gateway_slots SET terminal_id = NULL, tunnel_state = 'down', changed_at = ?2 WHERE terminal_id = ?1",
    )?
    .execute(params![terminal_id, from_u64(now)])?;
    let n = tx
        .prepare_cached(
            "UPDATE gateway_slots SET terminal_id = ?3, tunnel_state = 'down', changed_at = ?4
         WHERE gateway = ?1 AND slot = ?2 AND terminal_id IS NULL",
        )?
        .execute(params![gateway, slot, terminal_id, from_u64(now)])?;
    Ok(n == 1)
}

/// The router's slot on `gateway` if it holds one there, else the lowest
/// free slot of `gateway` claimed for it (through the partial index).
pub(super) fn claim_first_free_in(tx: &Connection, gateway: &str, terminal_id: &str, now: u64) -> Result<Option<u16>> {
    if let Some(held) = slot_of_in(tx, terminal_id)? {
        if held.gateway == gateway {
            return Ok(Some(held.slot));
        }
    }
    let free: Option<u16> = tx
        .prepare_cached(
            // INDEXED BY: left alone, the planner prefers the UNIQUE index
            // on terminal_id (IS NULL matches every free slot of every
            // gateway) and sorts; the partial index answers in O(log n).
            "SELECT slot FROM gateway_slots INDEXED BY gateway_slots_free
             WHERE gateway = ?1 AND terminal_id IS NULL ORDER BY slot LIMIT 1",
        )?
        .query_row([gateway], |r| r.get(0))
        .optional()?;
    let Some(slot) = free else {
        return Ok(None);
    };
    Ok(claim_slot_in(tx, gateway, slot, terminal_id, now)?.then_some(slot))
}

impl Storage {
    /// Makes the gateway tables match the configuration: gateways in
    /// configuration order (the "head" of the scan), slots 0..n. Slots above
    /// a reduced count are removed only while unused; a gateway that left
    /// the configuration is marked draining until its tunnels are gone.
    pub fn sync_gateways(&mut self, gateways: &[GatewaySpec]) -> Result<()> {
        let tx = self.tx()?;
        tx.prepare_cached("UPDATE gateways SET draining = 1, position = position + 1000000")?
            .execute([])?;
        for (pos, g) in gateways.iter().enumerate() {
            tx.prepare_cached(
                "INSERT INTO gateways (name, position, global_ip, draining) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position,
                    global_ip = excluded.global_ip, draining = 0",
            )?
            .execute(params![
                g.name,
                i64::try_from(pos).unwrap_or(i64::MAX),
                g.global_ip.to_string()
            ])?;
            for slot in 0..g.slots {
                tx.prepare_cached("INSERT OR IGNORE INTO gateway_slots (gateway, slot) VALUES (?1, ?2)")?
                    .execute(params![g.name, slot])?;
            }
            tx.prepare_cached("DELETE FROM gateway_slots WHERE gateway = ?1 AND slot >= ?2 AND terminal_id IS NULL")?
                .execute(params![g.name, g.slots])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a gateway draining (no new tunnels) or not.
    pub fn set_draining(&mut self, gateway: &str, draining: bool) -> Result<()> {
        let n = self
            .conn
            .prepare_cached("UPDATE gateways SET draining = ?2 WHERE name = ?1")?
            .execute(params![gateway, draining])?;
        if n == 0 {
            return Err(StorageError::NotFound {
                what: "gateway",
                key: gateway.to_owned(),
            });
        }
        Ok(())
    }

    /// [`Storage::set_draining`] by `actor` from `peer` (the UI's drain
    /// and undrain buttons, `centerd drain-gateway`): the change and its
    /// audit row (`drain` or `undrain`, "gateway NAME") commit together.
    pub fn set_draining_by(&mut self, gateway: &str, draining: bool, now: u64, actor: &str, peer: &str) -> Result<()> {
        let tx = self.tx()?;
        let n = tx
            .prepare_cached("UPDATE gateways SET draining = ?2 WHERE name = ?1")?
            .execute(params![gateway, draining])?;
        if n == 0 {
            return Err(StorageError::NotFound {
                what: "gateway",
                key: gateway.to_owned(),
            });
        }
        super::audit::insert_in(
            &tx,
            &super::audit::NewAudit {
                at: now,
                actor,
                action: if draining { "drain" } else { "undrain" },
                terminal_id: None,
                acceptance_number: None,
                detail: &format!("gateway {gateway}"),
                peer,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether the gateway answers centerd's heartbeat (an unknown name
    /// is not alive).
    pub fn gateway_alive(&self, gateway: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT alive FROM gateways WHERE name = ?1")?
            .query_row([gateway], |r| r.get::<_, bool>(0))
            .optional()?
            .unwrap_or(false))
    }

    /// Marks a gateway down after it stopped answering: no new slots go to
    /// it, the tunnels of the slots it holds are recorded down, and every
    /// router among them with an open request gets a `gateway_lost`
    /// failure row (the operator's view) naming those requests; one
    /// transaction. The slots stay held: the routers are bound to this
    /// gateway's address and identity, so their tunnels come back when it
    /// does (reconciliation), or the operator ends the requests. `None`
    /// if it was down already.
    pub fn mark_gateway_down(&mut self, gateway: &str, now: u64, now_ms: u64) -> Result<Option<Vec<LostTunnel>>> {
        let tx = self.tx()?;
        let n = tx
            .prepare_cached("UPDATE gateways SET alive = 0, alive_changed_ms = ?2 WHERE name = ?1 AND alive = 1")?
            .execute(params![gateway, from_u64(now_ms)])?;
        if n == 0 {
            return Ok(None);
        }
        let held: Vec<(String, u16)> = {
            let mut st = tx.prepare_cached(
                "SELECT terminal_id, slot FROM gateway_slots
                 WHERE gateway = ?1 AND terminal_id IS NOT NULL ORDER BY slot",
            )?;
            let rows = st.query_map([gateway], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.prepare_cached(
            "UPDATE gateway_slots SET tunnel_state = 'down', changed_at = ?2
             WHERE gateway = ?1 AND terminal_id IS NOT NULL AND tunnel_state != 'down'",
        )?
        .execute(params![gateway, from_u64(now)])?;
        let mut lost = Vec::with_capacity(held.len());
        for (terminal_id, slot) in held {
            let open: Vec<u64> = {
                let mut st = tx.prepare_cached(
                    "SELECT acceptance_number FROM requests
                     WHERE terminal_id = ?1 AND state != 'ended' ORDER BY acceptance_number",
                )?;
                let rows = st.query_map([&terminal_id], |r| r.get::<_, i64>(0))?;
                rows.map(|n| to_u64(n?)).collect::<Result<_>>()?
            };
            if !open.is_empty() {
                let numbers: Vec<String> = open.iter().map(u64::to_string).collect();
                tx.prepare_cached(
                    "INSERT INTO failures (terminal_id, code, detail, received_at) VALUES (?1, 'gateway_lost', ?2, ?3)",
                )?
                .execute(params![
                    terminal_id,
                    format!(
                        "gateway {gateway} stopped answering; tunnel down; open request(s) {}",
                        numbers.join(", ")
                    ),
                    from_u64(now)
                ])?;
            }
            lost.push(LostTunnel {
                terminal_id,
                slot,
                open_requests: open,
            });
        }
        tx.commit()?;
        Ok(Some(lost))
    }

    /// Marks a gateway alive again; false if it was alive already.
    pub fn mark_gateway_up(&mut self, gateway: &str, now_ms: u64) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached("UPDATE gateways SET alive = 1, alive_changed_ms = ?2 WHERE name = ?1 AND alive = 0")?
            .execute(params![gateway, from_u64(now_ms)])?;
        Ok(n > 0)
    }

    /// The slot a router holds, if any.
    pub fn slot_of(&self, terminal_id: &str) -> Result<Option<SlotRow>> {
        slot_of_in(&self.conn, terminal_id)
    }

    /// The first free slot scanning from the head (gateway order, then slot
    /// number), skipping `skip` gateways, draining ones and ones that are down.
    pub fn first_free_slot(&self, skip: &[String]) -> Result<Option<(String, u16)>> {
        // Per gateway (few), the lowest free slot from the partial index of
        // free slots: O(gateways x log slots), not a scan of every slot.
        let mut st = self.conn.prepare_cached(
            "SELECT g.name, (SELECT s.slot FROM gateway_slots s INDEXED BY gateway_slots_free
                             WHERE s.gateway = g.name AND s.terminal_id IS NULL
                             ORDER BY s.slot LIMIT 1) AS free
             FROM gateways g
             WHERE g.draining = 0 AND g.alive = 1 AND g.name NOT IN (SELECT value FROM json_each(?1)) AND free IS NOT NULL
             ORDER BY g.position LIMIT 1",
        )?;
        let skip_json = serde_json::to_string(skip).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(st
            .query_row([skip_json], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u16>(1)?)))
            .optional()?)
    }

    /// Writes the terminal ID into a slot if it is still free (another
    /// centerd may have taken it since [`Storage::first_free_slot`]); any
    /// slot the router held before is freed in the same transaction.
    /// Returns false if the slot was taken meanwhile.
    pub fn claim_slot(&mut self, gateway: &str, slot: u16, terminal_id: &str, now: u64) -> Result<bool> {
        let tx = self.tx()?;
        let ok = claim_slot_in(&tx, gateway, slot, terminal_id, now)?;
        if ok {
            tx.commit()?;
        }
        Ok(ok)
    }

    /// Claims the lowest free slot of `gateway` for the router in one
    /// transaction (freeing any slot it held elsewhere). None if the
    /// gateway has no free slot (left).
    pub fn claim_slot_on(&mut self, gateway: &str, terminal_id: &str, now: u64) -> Result<Option<u16>> {
        let tx = self.tx()?;
        let Some(slot) = claim_first_free_in(&tx, gateway, terminal_id, now)? else {
            return Ok(None);
        };
        tx.commit()?;
        Ok(Some(slot))
    }

    /// Marks the router's slot unused (VPN end).
    pub fn free_slot(&mut self, terminal_id: &str, now: u64) -> Result<Option<SlotRow>> {
        let tx = self.tx()?;
        let before = slot_of_in(&tx, terminal_id)?;
        tx.prepare_cached(
            "UPDATE gateway_slots SET terminal_id = NULL, tunnel_state = 'down', changed_at = ?2
             WHERE terminal_id = ?1",
        )?
        .execute(params![terminal_id, from_u64(now)])?;
        tx.commit()?;
        Ok(before)
    }

    /// Records a tunnel state a gateway reported; only for the router that
    /// holds that slot (a late event about a slot since reused is ignored).
    /// Returns whether anything matched.
    pub fn set_tunnel_state(
        &mut self,
        gateway: &str,
        slot: u16,
        terminal_id: &str,
        state: TunnelState,
        now: u64,
    ) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE gateway_slots SET tunnel_state = ?4, changed_at = ?5
             WHERE gateway = ?1 AND slot = ?2 AND terminal_id = ?3",
            )?
            .execute(params![gateway, slot, terminal_id, state.as_str(), from_u64(now)])?;
        Ok(n > 0)
    }

    /// Used/free/up slots of every gateway, in scan order.
    pub fn gateway_usage(&self) -> Result<Vec<GatewayUsage>> {
        let mut st = self.conn.prepare_cached(
            "SELECT g.name, g.global_ip, g.draining,
                    COUNT(s.terminal_id),
                    SUM(CASE WHEN s.slot IS NOT NULL AND s.terminal_id IS NULL THEN 1 ELSE 0 END),
                    SUM(CASE WHEN s.tunnel_state = 'up' AND s.terminal_id IS NOT NULL THEN 1 ELSE 0 END),
                    g.alive, g.alive_changed_ms
             FROM gateways g LEFT JOIN gateway_slots s ON s.gateway = g.name
             GROUP BY g.name ORDER BY g.position",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ),
                (r.get::<_, bool>(6)?, r.get::<_, i64>(7)?),
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ((name, ip, draining, used, free, up), (alive, alive_changed)) = row?;
            out.push(GatewayUsage {
                name,
                global_ip: ip,
                draining,
                used: to_u64(used)?,
                free: to_u64(free.unwrap_or(0))?,
                up: to_u64(up.unwrap_or(0))?,
                alive,
                alive_changed_ms: to_u64(alive_changed)?,
            });
        }
        Ok(out)
    }

    /// Every held slot of one gateway (for reconciliation and the UI).
    pub fn slots_of_gateway(&self, gateway: &str) -> Result<Vec<SlotRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT gateway, slot, terminal_id, tunnel_state, changed_at FROM gateway_slots
             WHERE gateway = ?1 AND terminal_id IS NOT NULL ORDER BY slot",
        )?;
        let rows = st.query_map([gateway], slot_row_raw)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(slot_row(row?)?);
        }
        Ok(out)
    }
}
