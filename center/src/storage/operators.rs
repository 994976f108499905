//! Named operator accounts (issue 20, item 1) and the account of a
//! session. Names and roles are checked by `crate::accounts` before they
//! get here; the table's CHECK constraints refuse anything else anyway.

use rusqlite::{params, OptionalExtension as _};

use super::{from_u64, to_u64, Result, Storage, StorageError};
use crate::accounts::Role;

/// One account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorRow {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: u64,
    /// Whether it has enrolled a second factor (issue 20, item 2).
    pub second_factor: bool,
}

/// Who holds a live session: the label its audit rows carry, and for a
/// named account its current role and whether it is disabled (None: a
/// shared-password session, or an account since deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    pub label: String,
    pub account: Option<String>,
    /// The account's role and disabled flag, if the account exists.
    pub state: Option<(Role, bool)>,
    /// How far its login got (issue 20, item 2).
    pub stage: super::SessionStage,
}

fn role_of(s: String) -> Result<Role> {
    s.parse()
        .map_err(|_| StorageError::Corrupt(format!("operator role {s:?}")))
}

fn not_found(name: &str) -> StorageError {
    StorageError::NotFound {
        what: "operator",
        key: name.to_owned(),
    }
}

impl Storage {
    /// Adds an account; an existing name is [`StorageError::Exists`].
    pub fn add_operator(&mut self, name: &str, password_hash: &str, role: Role, now: u64) -> Result<()> {
        let tx = self.tx()?;
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM operators WHERE name = ?1)")?
            .query_row([name], |r| r.get(0))?;
        if exists {
            return Err(StorageError::Exists {
                what: "operator",
                key: name.to_owned(),
            });
        }
        tx.prepare_cached(
            "INSERT INTO operators (name, password_hash, role, disabled, created_at) VALUES (?1, ?2, ?3, 0, ?4)",
        )?
        .execute(params![name, password_hash, role.as_str(), from_u64(now)])?;
        tx.commit()?;
        Ok(())
    }

    /// Adds `accounts` (name, hash) with `role` if there is no account
    /// at all yet, in one transaction (two centerds starting at once seed
    /// once); whether it did.
    pub fn seed_operators(&mut self, accounts: &[(String, String)], role: Role, now: u64) -> Result<bool> {
        let tx = self.tx()?;
        let any: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM operators)")?
            .query_row([], |r| r.get(0))?;
        if any || accounts.is_empty() {
            return Ok(false);
        }
        for (name, hash) in accounts {
            tx.prepare_cached(
                "INSERT INTO operators (name, password_hash, role, disabled, created_at) VALUES (?1, ?2, ?3, 0, ?4)",
            )?
            .execute(params![name, hash, role.as_str(), from_u64(now)])?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every account, by name.
    pub fn operators(&self) -> Result<Vec<OperatorRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, role, disabled, created_at, \
             EXISTS (SELECT 1 FROM operator_totp t WHERE t.name = operators.name) FROM operators ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, role, disabled, at, second_factor)| {
                Ok(OperatorRow {
                    name,
                    role: role_of(role)?,
                    disabled,
                    created_at: to_u64(at)?,
                    second_factor,
                })
            })
            .collect()
    }

    /// An account and its password hash (the login's check).
    pub fn operator_login(&self, name: &str) -> Result<Option<(OperatorRow, String)>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT role, disabled, created_at, password_hash, \
                 EXISTS (SELECT 1 FROM operator_totp t WHERE t.name = operators.name) FROM operators WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })
            .optional()?;
        row.map(|(role, disabled, at, hash, second_factor)| {
            Ok((
                OperatorRow {
                    name: name.to_owned(),
                    role: role_of(role)?,
                    disabled,
                    created_at: to_u64(at)?,
                    second_factor,
                },
                hash,
            ))
        })
        .transpose()
    }

    /// Disables or enables an account. Disabling also ends its sessions
    /// (and a session that slipped past is refused anyway: the UI reads
    /// the flag at every request).
    pub fn set_operator_disabled(&mut self, name: &str, disabled: bool) -> Result<()> {
        let tx = self.tx()?;
        let n = tx
            .prepare_cached("UPDATE operators SET disabled = ?2 WHERE name = ?1")?
            .execute(params![name, disabled])?;
        if n == 0 {
            return Err(not_found(name));
        }
        if disabled {
            tx.prepare_cached("DELETE FROM sessions WHERE account = ?1")?
                .execute([name])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Changes an account's role (its live sessions get it at their next
    /// request).
    pub fn set_operator_role(&mut self, name: &str, role: Role) -> Result<()> {
        let n = self
            .conn
            .prepare_cached("UPDATE operators SET role = ?2 WHERE name = ?1")?
            .execute(params![name, role.as_str()])?;
        if n == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// A session of a named account (`label`: its audit actor).
    pub fn add_account_session(&mut self, token_hash: &str, expires_at: u64, label: &str, account: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO sessions (token_hash, expires_at, operator, account) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![token_hash, from_u64(expires_at), label, account])?;
        Ok(())
    }

    /// Who holds a live session, if it is one.
    pub fn session_owner(&self, token_hash: &str, now: u64) -> Result<Option<SessionOwner>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT s.operator, s.account, o.role, o.disabled, s.stage FROM sessions s
                 LEFT JOIN operators o ON o.name = s.account
                 WHERE s.token_hash = ?1 AND s.expires_at >= ?2",
            )?
            .query_row(params![token_hash, from_u64(now)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<bool>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        let Some((label, account, role, disabled, stage)) = row else {
            return Ok(None);
        };
        let state = match (role, disabled) {
            (Some(role), Some(d)) => Some((role_of(role)?, d)),
            _ => None,
        };
        Ok(Some(SessionOwner {
            label,
            account,
            state,
            stage: super::SessionStage::parse(&stage)?,
        }))
    }
}

#[cfg(test)]
impl Storage {
    /// Sets the disabled flag and nothing else (the sessions stay): the
    /// UI's per-request check on its own.
    pub fn disable_operator_only_for_tests(&mut self, name: &str) {
        self.conn
            .execute("UPDATE operators SET disabled = 1 WHERE name = ?1", [name])
            .unwrap();
    }
}
