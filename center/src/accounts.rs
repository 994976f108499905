//! Named operator accounts and their roles (issue 20, item 1): who may log
//! in to the operator UI and what each may do there. The accounts live in
//! centerd's database (`crate::storage`, table `operators`), their
//! passwords as the PBKDF2 hashes of [`crate::password`]; the UI checks
//! every route against the session's role in the server ([`Role::may`]),
//! and `centerd operator ...` manages them ([`manage`]).
//!
//! The first start on a database without accounts makes the shared
//! password hashes of `operators.password_hashes` admin accounts (`admin`,
//! `admin2`, ...: [`manage::seed_admins`]); a login with an empty name
//! means `admin`, so the scripts that log in with the password alone keep
//! working.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub mod manage;
pub mod recovery;
pub mod totp;

/// Shortest password an account may be given.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest account name.
pub const MAX_NAME_LEN: usize = 32;

/// Why an account name, role or password is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccountError {
    #[error("operator name {0:?}: 1 to 32 characters of a-z, 0-9, '.', '_' and '-', starting with a letter")]
    BadName(String),
    #[error("role {0:?}: one of admin, operator, viewer")]
    BadRole(String),
    #[error("the password is shorter than {MIN_PASSWORD_LEN} characters")]
    ShortPassword,
}

/// What an account may do. Ordered: each role may what the ones below may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// Also starts, ends and limits requests and reads a router's
    /// maintenance password (the maintenance work itself).
    Operator,
    /// Everything: also the accounts and the approval of re-installations.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may use something that needs `needed`.
    pub fn may(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccountError::BadRole(s.to_owned()))
    }
}

/// Checks an account name: lower-case letters, digits, `.`, `_`, `-`,
/// starting with a letter (it appears in audit rows as `operator:NAME`,
/// in URLs' forms and in CSV exports: nothing to quote or confuse).
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadName(name.to_owned()))
    }
}

/// Checks a new password's length (in characters).
pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::ShortPassword);
    }
    Ok(())
}

/// The audit actor of a named account.
pub fn actor_name(name: &str) -> String {
    format!("operator:{name}")
}

#[cfg(test)]
mod tests;
