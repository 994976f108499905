//! Pending re-installations (issue 18, item 5): a router that lost its
//! state asks to be installed again without proving its Secret(ID2); the
//! request waits here until an authorised operator approves it. Every
//! attempt, every approval is in the audit log, from which the rate limit
//! counts too (append-only, so an attacker cannot reset it).

use rusqlite::{params, OptionalExtension};

use super::audit::{self, NewAudit};
use super::{from_u64, to_u64, Result, Storage, StorageError};

/// Audit actions of re-installation attempts that lacked a valid proof
/// (the ones the rate limit counts).
pub const UNPROVEN_ACTIONS: [&str; 2] = ["reinstall_pending", "reinstall_refused"];

/// A pending re-installation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReinstallRow {
    pub terminal_id: String,
    pub requested_at: u64,
    pub peer: String,
    pub approved_by: Option<String>,
    pub approved_at: Option<u64>,
}

impl Storage {
    pub fn reinstall_request(&self, terminal_id: &str) -> Result<Option<ReinstallRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT terminal_id, requested_at, peer, approved_by, approved_at
             FROM reinstall_requests WHERE terminal_id = ?1",
        )?;
        let row = st
            .query_row([terminal_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()?;
        row.map(|(t, at, peer, by, ok_at)| {
            Ok(ReinstallRow {
                terminal_id: t,
                requested_at: to_u64(at)?,
                peer,
                approved_by: by,
                approved_at: ok_at.map(to_u64).transpose()?,
            })
        })
        .transpose()
    }

    /// Every pending re-installation, oldest first (the operator's list).
    pub fn reinstall_requests(&self) -> Result<Vec<ReinstallRow>> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached("SELECT terminal_id FROM reinstall_requests ORDER BY requested_at, terminal_id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for t in ids {
            out.extend(self.reinstall_request(&t)?);
        }
        Ok(out)
    }

    /// Re-installation attempts without a valid proof for `terminal_id` at
    /// or after `since`.
    pub fn unproven_reinstall_attempts(&self, terminal_id: &str, since: u64) -> Result<u32> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM audit WHERE terminal_id = ?1 AND at >= ?2 AND action IN (?3, ?4)")?
            .query_row(
                params![terminal_id, from_u64(since), UNPROVEN_ACTIONS[0], UNPROVEN_ACTIONS[1]],
                |r| r.get(0),
            )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Records (or refreshes) the pending request and its audit alert in
    /// one transaction. A refresh keeps an approval already given.
    pub fn record_reinstall_pending(&mut self, terminal_id: &str, now: u64, peer: &str) -> Result<()> {
        let tx = self.tx()?;
        tx.prepare_cached(
            "INSERT INTO reinstall_requests (terminal_id, requested_at, peer) VALUES (?1, ?2, ?3)
             ON CONFLICT (terminal_id) DO UPDATE SET requested_at = excluded.requested_at, peer = excluded.peer",
        )?
        .execute(params![terminal_id, from_u64(now), peer])?;
        audit::insert_in(
            &tx,
            &NewAudit {
                at: now,
                actor: &format!("router:{terminal_id}"),
                action: UNPROVEN_ACTIONS[0],
                terminal_id: Some(terminal_id),
                acceptance_number: None,
                detail: "ALERT: re-installation without proof of Secret(ID2); waiting for an operator's approval",
                peer,
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// An operator approves the pending re-installation of `terminal_id`
    /// (audited in the same transaction). No pending request: `NotFound`.
    pub fn approve_reinstall(&mut self, terminal_id: &str, operator: &str, now: u64, peer: &str) -> Result<()> {
        let tx = self.tx()?;
        let n = tx
            .prepare_cached("UPDATE reinstall_requests SET approved_by = ?2, approved_at = ?3 WHERE terminal_id = ?1")?
            .execute(params![terminal_id, operator, from_u64(now)])?;
        if n == 0 {
            return Err(StorageError::NotFound {
                what: "pending re-installation of",
                key: terminal_id.to_owned(),
            });
        }
        audit::insert_in(
            &tx,
            &NewAudit {
                at: now,
                actor: operator,
                action: "reinstall_approve",
                terminal_id: Some(terminal_id),
                acceptance_number: None,
                detail: "re-installation without proof approved",
                peer,
            },
        )?;
        tx.commit()?;
        Ok(())
    }
}
