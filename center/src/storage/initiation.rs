//! Each router's tunnel initiation mode as last decided (issue 17): read by
//! the maintenance request (which mode to command the gateway in), by
//! reconciliation, and shown to the operator with its reason.

use rusqlite::{params, OptionalExtension};
use vpnnat_proto::initiation::InitiationMode;

use super::{from_u64, to_u64, Result, Storage, StorageError};

/// One router's decided mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InitiationRow {
    pub terminal_id: String,
    /// `gateway` or `router`.
    pub mode: String,
    /// Why, in words (the decision's reason; no secrets).
    pub reason: String,
    /// The request's source address the center saw, if any.
    pub seen_ip: Option<String>,
    pub decided_at: u64,
}

impl InitiationRow {
    /// The mode as the protocol type (an unknown stored word reads as the
    /// seed's mode, which every gateway supports).
    pub fn mode(&self) -> InitiationMode {
        InitiationMode::parse(&self.mode).unwrap_or_default()
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, Option<String>, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn build(raw: (String, String, String, Option<String>, i64)) -> Result<InitiationRow> {
    let (terminal_id, mode, reason, seen_ip, at) = raw;
    Ok(InitiationRow {
        terminal_id,
        mode,
        reason,
        seen_ip,
        decided_at: to_u64(at)?,
    })
}

impl Storage {
    /// Records the mode decided for `terminal_id` (replacing the last one).
    pub fn set_initiation(
        &mut self,
        terminal_id: &str,
        mode: InitiationMode,
        reason: &str,
        seen_ip: Option<std::net::Ipv4Addr>,
        now: u64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO tunnel_initiation (terminal_id, mode, reason, seen_ip, decided_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (terminal_id) DO UPDATE SET
                    mode = excluded.mode, reason = excluded.reason,
                    seen_ip = excluded.seen_ip, decided_at = excluded.decided_at",
            )?
            .execute(params![
                terminal_id,
                mode.as_str(),
                reason,
                seen_ip.map(|i| i.to_string()),
                from_u64(now)
            ])?;
        Ok(())
    }

    /// The mode last decided for `terminal_id` (`None`: never decided, i.e.
    /// the router skipped exchange 3 or predates issue 17: the seed's mode).
    pub fn initiation_of(&self, terminal_id: &str) -> Result<Option<InitiationRow>> {
        self.conn
            .prepare_cached(
                "SELECT terminal_id, mode, reason, seen_ip, decided_at FROM tunnel_initiation WHERE terminal_id = ?1",
            )?
            .query_row([terminal_id], row)
            .optional()?
            .map(build)
            .transpose()
    }

    /// Every router's decided mode, by terminal ID.
    pub fn initiations(&self) -> Result<Vec<InitiationRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT terminal_id, mode, reason, seen_ip, decided_at FROM tunnel_initiation ORDER BY terminal_id",
        )?;
        let rows = st.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(build).collect::<Result<Vec<_>, StorageError>>()
    }
}
