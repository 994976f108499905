//! Terminals (1. installation notice) and their failures (2.).

use super::audit::{self, NewAudit};
use rusqlite::OptionalExtension;
use std::net::Ipv4Addr;

use rusqlite::params;

use super::pool::assign_or_reuse;
use super::{from_u64, i64_to_ip, ip_to_i64, to_u64, Result, Storage, ROUTER_PART_NAME, SERVER_PART_NAME};

/// A terminals row. Secrets are hex as stored; the caller parses them into
/// proto key types (which zeroize) right away.
#[derive(Clone, PartialEq, Eq)]
pub struct TerminalRow {
    pub terminal_id: String,
    pub psk_hex: String,
    pub secret_id2_hex: String,
    pub maintenance_password_hash: String,
    pub server_part_vpnnat: Ipv4Addr,
    pub router_part_vpnnat: Ipv4Addr,
    pub installed_at: u64,
    /// The router has used this installation's Secret(ID2) (issue 18).
    pub confirmed: bool,
    /// While unconfirmed: the Secret(ID2) the router held before, which a
    /// re-installation may prove instead (None: a first installation).
    pub previous_secret_id2_hex: Option<String>,
}

impl std::fmt::Debug for TerminalRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalRow")
            .field("terminal_id", &self.terminal_id)
            .field("server_part_vpnnat", &self.server_part_vpnnat)
            .field("router_part_vpnnat", &self.router_part_vpnnat)
            .field("installed_at", &self.installed_at)
            .finish_non_exhaustive()
    }
}

/// What an installation writes (secrets already hex).
#[derive(Clone)]
pub struct InstallRecord<'a> {
    pub terminal_id: &'a str,
    pub psk_hex: &'a str,
    pub secret_id2_hex: &'a str,
    pub maintenance_password_hash: &'a str,
    pub now: u64,
}

impl std::fmt::Debug for InstallRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallRecord")
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

/// A failures row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureRow {
    pub id: u64,
    pub terminal_id: String,
    pub code: String,
    pub detail: String,
    pub received_at: u64,
}

impl Storage {
    /// Creates or overwrites the terminals row and makes sure the router
    /// holds its two VPNNAT addresses (reused on reinstallation: they stay
    /// with the router). One transaction: either all of it or nothing.
    pub fn install_terminal(&mut self, rec: &InstallRecord<'_>) -> Result<TerminalRow> {
        self.install_terminal_from(rec, None)
    }

    /// [`Storage::install_terminal`] with its audit row (`install` by
    /// `router:ID` from `peer`) in the same transaction.
    pub fn install_terminal_from(&mut self, rec: &InstallRecord<'_>, peer: Option<&str>) -> Result<TerminalRow> {
        self.install_terminal_audited(rec, peer, "install", "", None)
    }

    /// [`Storage::install_terminal_from`] with the audit `action` and a
    /// `note` before the addresses (a re-installation says how it was
    /// authorised). A pending re-installation request is settled by it.
    pub fn install_terminal_audited(
        &mut self,
        rec: &InstallRecord<'_>,
        peer: Option<&str>,
        action: &str,
        note: &str,
        maintenance_password: Option<&str>,
    ) -> Result<TerminalRow> {
        let tx = self.tx()?;
        tx.prepare_cached("DELETE FROM reinstall_requests WHERE terminal_id = ?1")?
            .execute([rec.terminal_id])?;
        // What the router may still hold if this answer never reaches it:
        // the confirmed Secret(ID2), or the one before an unconfirmed one.
        let before: Option<(String, bool, Option<String>)> = tx
            .prepare_cached(
                "SELECT secret_id2_hex, confirmed, previous_secret_id2_hex FROM terminals WHERE terminal_id = ?1",
            )?
            .query_row([rec.terminal_id], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?))
            })
            .optional()?;
        let previous = match before {
            None => None,
            Some((sid2, true, _)) => Some(sid2),
            Some((_, false, prev)) => prev,
        };
        let (server, _) = assign_or_reuse(&tx, rec.terminal_id, SERVER_PART_NAME, rec.now)?;
        let (router, _) = assign_or_reuse(&tx, rec.terminal_id, ROUTER_PART_NAME, rec.now)?;
        tx.prepare_cached(
            "INSERT INTO terminals (terminal_id, psk_hex, secret_id2_hex, maintenance_password_hash,
                                    server_part_vpnnat, router_part_vpnnat, installed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (terminal_id) DO UPDATE SET
                psk_hex = excluded.psk_hex,
                secret_id2_hex = excluded.secret_id2_hex,
                maintenance_password_hash = excluded.maintenance_password_hash,
                server_part_vpnnat = excluded.server_part_vpnnat,
                router_part_vpnnat = excluded.router_part_vpnnat,
                installed_at = excluded.installed_at",
        )?
        .execute(params![
            rec.terminal_id,
            rec.psk_hex,
            rec.secret_id2_hex,
            rec.maintenance_password_hash,
            ip_to_i64(server),
            ip_to_i64(router),
            from_u64(rec.now)
        ])?;
        tx.prepare_cached(
            "UPDATE terminals SET maintenance_password = ?2, previous_secret_id2_hex = ?3, confirmed = 0
             WHERE terminal_id = ?1",
        )?
        .execute(params![rec.terminal_id, maintenance_password, previous])?;
        if let Some(peer) = peer {
            audit::insert_in(
                &tx,
                &NewAudit {
                    at: rec.now,
                    actor: &format!("router:{}", rec.terminal_id),
                    action,
                    terminal_id: Some(rec.terminal_id),
                    acceptance_number: None,
                    detail: &format!("{note}server part {server}, router part {router}"),
                    peer,
                },
            )?;
        }
        tx.commit()?;
        Ok(TerminalRow {
            terminal_id: rec.terminal_id.to_owned(),
            psk_hex: rec.psk_hex.to_owned(),
            secret_id2_hex: rec.secret_id2_hex.to_owned(),
            maintenance_password_hash: rec.maintenance_password_hash.to_owned(),
            server_part_vpnnat: server,
            router_part_vpnnat: router,
            installed_at: rec.now,
            confirmed: false,
            previous_secret_id2_hex: previous,
        })
    }

    /// The router used its installation's Secret(ID2): the previous one
    /// proves nothing any more.
    pub fn confirm_installation(&mut self, terminal_id: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE terminals SET confirmed = 1, previous_secret_id2_hex = NULL
                 WHERE terminal_id = ?1 AND confirmed = 0",
            )?
            .execute([terminal_id])?;
        Ok(())
    }

    pub fn terminal(&self, terminal_id: &str) -> Result<Option<TerminalRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT terminal_id, psk_hex, secret_id2_hex, maintenance_password_hash,
                    server_part_vpnnat, router_part_vpnnat, installed_at, confirmed, previous_secret_id2_hex
             FROM terminals WHERE terminal_id = ?1",
        )?;
        let row = st
            .query_row([terminal_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)? != 0,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .optional()?;
        row.map(|(id, psk, sid2, pw, s, rp, at, confirmed, prev)| {
            Ok(TerminalRow {
                terminal_id: id,
                psk_hex: psk,
                secret_id2_hex: sid2,
                maintenance_password_hash: pw,
                server_part_vpnnat: i64_to_ip(s)?,
                router_part_vpnnat: i64_to_ip(rp)?,
                installed_at: to_u64(at)?,
                confirmed,
                previous_secret_id2_hex: prev,
            })
        })
        .transpose()
    }

    /// The router's own maintenance password, for an authorised operator
    /// (the caller audits the reading). `None`: installed before routers
    /// had their own, so it has the shared configured one.
    pub fn maintenance_password(&self, terminal_id: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT maintenance_password FROM terminals WHERE terminal_id = ?1")?
            .query_row([terminal_id], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .ok_or_else(|| super::StorageError::NotFound {
                what: "installed router",
                key: terminal_id.to_owned(),
            })
    }

    pub fn count_terminals(&self) -> Result<u64> {
        to_u64(
            self.conn
                .prepare_cached("SELECT COUNT(*) FROM terminals")?
                .query_row([], |r| r.get(0))?,
        )
    }

    // -----------------------------------------------------------------
    // Failures (2.)
    // -----------------------------------------------------------------

    pub fn add_failure(&mut self, terminal_id: &str, code: &str, detail: &str, now: u64) -> Result<u64> {
        self.conn
            .prepare_cached("INSERT INTO failures (terminal_id, code, detail, received_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![terminal_id, code, detail, from_u64(now)])?;
        to_u64(self.conn.last_insert_rowid())
    }

    /// Newest first; `terminal_id` filters.
    pub fn failures(&self, terminal_id: Option<&str>, limit: u32) -> Result<Vec<FailureRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, terminal_id, code, detail, received_at FROM failures
             WHERE ?1 IS NULL OR terminal_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![terminal_id, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, t, c, d, at) = row?;
            out.push(FailureRow {
                id: to_u64(id)?,
                terminal_id: t,
                code: c,
                detail: d,
                received_at: to_u64(at)?,
            });
        }
        Ok(out)
    }
}
