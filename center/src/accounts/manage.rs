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
