//! Managing the accounts: what `centerd operator ...` and the UI's
//! accounts page both call. Every change is audited under the actor who
//! made it; the password is hashed here and never logged or audited.

use ring::rand::SecureRandom;
use thiserror::Error;

use super::{check_name, check_password, AccountError, Role};
use crate::center::Actor;
use crate::password::{PasswordError, PasswordHash};
use crate::storage::{NewAudit, OperatorRow, Storage, StorageError};

#[derive(Debug, Error)]
pub enum ManageError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Password(#[from] PasswordError),
}

impl ManageError {
    /// A mistake of the caller's (bad name, role or password, a duplicate
    /// or unknown account), not a failure of centerd's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ManageError::Account(_) | ManageError::Storage(StorageError::Exists { .. } | StorageError::NotFound { .. })
        )
    }
}

fn audit(st: &mut Storage, actor: &Actor, now: u64, action: &str, detail: &str) -> Result<(), ManageError> {
    st.append_audit(&NewAudit {
        at: now,
        actor: &actor.who,
        action,
        terminal_id: None,
        acceptance_number: None,
        detail,
        peer: &actor.peer,
    })?;
    Ok(())
}

/// What a new account needs.
#[derive(Debug)]
pub struct NewAccount<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub role: Role,
    /// PBKDF2 iterations of its hash.
    pub iterations: u32,
}

/// An account ready to be stored: name and password checked, password
/// hashed (done before the database is locked: PBKDF2 takes a while).
#[derive(Debug)]
pub struct Hashed {
    name: String,
    role: Role,
    hash: String,
}

/// Checks and hashes a new account.
pub fn prepare(new: &NewAccount<'_>, rng: &dyn SecureRandom) -> Result<Hashed, ManageError> {
    check_name(new.name)?;
    check_password(new.password)?;
    let hash = PasswordHash::create(new.password, new.iterations, rng)?;
    Ok(Hashed {
        name: new.name.to_owned(),
        role: new.role,
        hash: hash.to_string(),
    })
}

/// Adds a prepared account; an existing name is refused.
pub fn add(st: &mut Storage, new: &Hashed, actor: &Actor, now: u64) -> Result<(), ManageError> {
    st.add_operator(&new.name, &new.hash, new.role, now)?;
    audit(
        st,
        actor,
        now,
        "operator_add",
        &format!("operator {} added as {}", new.name, new.role),
    )
}

/// Every account, by name.
pub fn list(st: &Storage) -> Result<Vec<OperatorRow>, ManageError> {
    Ok(st.operators()?)
}

/// Disables (ending its sessions) or enables an account.
pub fn set_disabled(st: &mut Storage, name: &str, disabled: bool, actor: &Actor, now: u64) -> Result<(), ManageError> {
    check_name(name)?;
    st.set_operator_disabled(name, disabled)?;
    let (action, what) = if disabled {
        ("operator_disable", "disabled, its sessions ended")
    } else {
        ("operator_enable", "enabled")
    };
    audit(st, actor, now, action, &format!("operator {name} {what}"))
}

/// Changes an account's role.
pub fn set_role(st: &mut Storage, name: &str, role: Role, actor: &Actor, now: u64) -> Result<(), ManageError> {
    check_name(name)?;
    st.set_operator_role(name, role)?;
    audit(
        st,
        actor,
        now,
        "operator_role",
        &format!("operator {name} is now {role}"),
    )
}

/// Removes an account's second factor (an admin's recovery for a lost
/// phone), audited whether or not it had one; whether it had.
pub fn reset_totp(st: &mut Storage, name: &str, actor: &Actor, now: u64) -> Result<bool, ManageError> {
    check_name(name)?;
    let had = st.reset_totp(name)?;
    let what = if had {
        "second factor (TOTP and recovery codes) removed"
    } else {
        "second factor reset: there was none"
    };
    audit(st, actor, now, "totp_reset", &format!("operator {name}: {what}"))?;
    Ok(had)
}

/// The name of the account made from the first shared password, and the
/// one a login with an empty name means.
pub const FIRST_ADMIN: &str = "admin";

/// The name of the account made from `operators.password_hashes[i]`:
/// `admin`, `admin2`, `admin3`, ...
pub fn seeded_name(i: usize) -> String {
    match i {
        0 => FIRST_ADMIN.to_owned(),
        _ => format!("{FIRST_ADMIN}{}", i.saturating_add(1)),
    }
}

/// At start-up, on a database without accounts: one admin account per
/// configured shared password hash (the hash itself: the scheme is the
/// same), audited as made by centerd. Afterwards the accounts are the
/// truth and `operators.password_hashes` is not read again. The names
/// made (none when there were accounts already).
pub fn seed_admins(st: &mut Storage, hashes: &[PasswordHash], now: u64) -> Result<Vec<String>, StorageError> {
    let accounts: Vec<(String, String)> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (seeded_name(i), h.to_string()))
        .collect();
    if !st.seed_operators(&accounts, Role::Admin, now)? {
        return Ok(Vec::new());
    }
    let actor = Actor::centerd();
    for (i, (name, _)) in accounts.iter().enumerate() {
        st.append_audit(&NewAudit {
            at: now,
            actor: &actor.who,
            action: "operator_add",
            terminal_id: None,
            acceptance_number: None,
            detail: &format!("operator {name} added as admin from operators.password_hashes[{i}]"),
            peer: &actor.peer,
        })?;
    }
    Ok(accounts.into_iter().map(|(n, _)| n).collect())
}
