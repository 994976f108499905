//! The second factor's rows (issue 20, item 2): each enrolled account's
//! TOTP secret and last accepted step, its recovery codes (hashed, single
//! use), and the stage of a half-logged-in session. The secret is a
//! credential: read only by the login's check, never listed.

use rusqlite::{params, OptionalExtension as _};

use super::{from_u64, to_u64, Result, Storage, StorageError};

/// How far a session got through the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStage {
    /// Logged in: the account's role decides the rest.
    Full,
    /// The password was right; the TOTP (or a recovery) code is next.
    Code,
    /// The password was right, but the account's role needs a second
    /// factor it has not enrolled yet: enrolment is all it may do.
    Enrol,
}

impl SessionStage {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStage::Full => "full",
            SessionStage::Code => "code",
            SessionStage::Enrol => "enrol",
        }
    }

    pub(super) fn parse(s: &str) -> Result<SessionStage> {
        match s {
            "full" => Ok(SessionStage::Full),
            "code" => Ok(SessionStage::Code),
            "enrol" => Ok(SessionStage::Enrol),
            _ => Err(StorageError::Corrupt(format!("session stage {s:?}"))),
        }
    }
}

/// An account's enrolment: the secret (base32) and the last step a code
/// was accepted for.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpRow {
    pub secret: zeroize::Zeroizing<String>,
    pub last_step: Option<u64>,
}

impl std::fmt::Debug for TotpRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRow")
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// A session at `stage` of the login of `account` (`label`: its audit
    /// actor; `pending`: the secret on offer for an enrolment).
    pub fn add_staged_session(
        &mut self,
        token_hash: &str,
        expires_at: u64,
        label: &str,
        account: &str,
        stage: SessionStage,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (token_hash, expires_at, operator, account, stage) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                token_hash,
                from_u64(expires_at),
                label,
                account,
                stage.as_str()
            ])?;
        Ok(())
    }

    /// The secret on offer to a session's enrolment, if one was made.
    pub fn pending_totp(&self, token_hash: &str) -> Result<Option<zeroize::Zeroizing<String>>> {
        let s: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT pending_totp FROM sessions WHERE token_hash = ?1")?
            .query_row([token_hash], |r| r.get(0))
            .optional()?;
        Ok(s.flatten().map(zeroize::Zeroizing::new))
    }

    /// Offers `secret` to the session's enrolment (kept until it is
    /// confirmed or the session ends).
    pub fn set_pending_totp(&mut self, token_hash: &str, secret: &str) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE sessions SET pending_totp = ?2 WHERE token_hash = ?1")?
            .execute(params![token_hash, secret])?;
        Ok(())
    }

    /// The enrolment of `name`, if any.
    pub fn operator_totp(&self, name: &str) -> Result<Option<TotpRow>> {
        let row = self
            .conn
            .prepare_cached("SELECT secret, last_step FROM operator_totp WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))
            .optional()?;
        row.map(|(secret, last)| {
            Ok(TotpRow {
                secret: zeroize::Zeroizing::new(secret),
                last_step: last.map(to_u64).transpose()?,
            })
        })
        .transpose()
    }

    /// Stores a confirmed enrolment with its recovery codes' hashes, the
    /// confirming code's step already used. False (nothing stored) if the
    /// account is enrolled already: a reset comes first.
    pub fn enrol_totp(&mut self, name: &str, secret: &str, step: u64, recovery: &[String], now: u64) -> Result<bool> {
        let tx = self.tx()?;
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM operator_totp WHERE name = ?1)")?
            .query_row([name], |r| r.get(0))?;
        if exists {
            return Ok(false);
        }
        tx.prepare_cached("INSERT INTO operator_totp (name, secret, last_step, enrolled_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![name, secret, from_u64(step), from_u64(now)])?;
        tx.prepare_cached("DELETE FROM operator_recovery WHERE name = ?1")?
            .execute([name])?;
        for h in recovery {
            tx.prepare_cached("INSERT INTO operator_recovery (name, code_hash) VALUES (?1, ?2)")?
                .execute(params![name, h])?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Records `step` as used by `name` if it is later than the last one:
    /// false if it is not (a replay, perhaps through another centerd
    /// sharing the database: the condition is in the UPDATE itself).
    pub fn use_totp_step(&mut self, name: &str, step: u64) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE operator_totp SET last_step = ?2 WHERE name = ?1 AND (last_step IS NULL OR last_step < ?2)",
            )?
            .execute(params![name, from_u64(step)])?;
        Ok(n == 1)
    }

    /// Uses up the recovery code of hash `code_hash`: false if `name` has
    /// no such unused code.
    pub fn use_recovery_code(&mut self, name: &str, code_hash: &str, now: u64) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE operator_recovery SET used_at = ?3 WHERE name = ?1 AND code_hash = ?2 AND used_at IS NULL",
            )?
            .execute(params![name, code_hash, from_u64(now)])?;
        Ok(n == 1)
    }

    /// Unused recovery codes of `name`.
    pub fn recovery_codes_left(&self, name: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM operator_recovery WHERE name = ?1 AND used_at IS NULL")?
            .query_row([name], |r| r.get(0))?;
        to_u64(n)
    }

    /// Removes the enrolment and recovery codes of `name` (an admin's
    /// recovery for a lost phone); whether it had one. An unknown account
    /// is [`StorageError::NotFound`].
    pub fn reset_totp(&mut self, name: &str) -> Result<bool> {
        let tx = self.tx()?;
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM operators WHERE name = ?1)")?
            .query_row([name], |r| r.get(0))?;
        if !exists {
            return Err(StorageError::NotFound {
                what: "operator",
                key: name.to_owned(),
            });
        }
        let n = tx
            .prepare_cached("DELETE FROM operator_totp WHERE name = ?1")?
            .execute([name])?;
        tx.prepare_cached("DELETE FROM operator_recovery WHERE name = ?1")?
            .execute([name])?;
        tx.commit()?;
        Ok(n > 0)
    }
}

#[cfg(test)]
#[path = "totp_tests.rs"]
mod tests;
