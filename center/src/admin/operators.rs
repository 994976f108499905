//! `centerd operator add|list|disable|enable|set-role|totp-reset`: the operator
//! accounts from the command line (the first admin account is made here,
//! or in the UI by a holder of a shared password). The logic is
//! `crate::accounts::manage`, shared with the UI's accounts page.

use std::io::Read;

use super::{cli_actor, AdminError, Report};
use crate::accounts::manage::{self, ManageError, NewAccount};
use crate::accounts::{AccountError, Role};
use crate::cli::OperatorCmd;
use crate::config::CenterdConfig;
use crate::daemon::open_store;
use crate::http::unix_now;

fn role(s: &str) -> Result<Role, AdminError> {
    s.parse::<Role>()
        .map_err(|e: AccountError| AdminError::Accounts(ManageError::Account(e)))
}

/// The first line of the password source, without its line end.
fn read_password(
    password_file: Option<&std::path::Path>,
    stdin: &mut impl Read,
) -> Result<zeroize::Zeroizing<String>, AdminError> {
    let mut s = zeroize::Zeroizing::new(String::new());
    match password_file {
        Some(p) => {
            let mut f = std::fs::File::open(p).map_err(|source| AdminError::PasswordFile {
                path: p.display().to_string(),
                source,
            })?;
            f.read_to_string(&mut s).map_err(|source| AdminError::PasswordFile {
                path: p.display().to_string(),
                source,
            })?;
        }
        None => {
            stdin.read_to_string(&mut s).map_err(AdminError::Stdin)?;
        }
    }
    let line = zeroize::Zeroizing::new(s.lines().next().unwrap_or_default().to_owned());
    if line.is_empty() {
        return Err(AdminError::EmptyPassword);
    }
    Ok(line)
}

/// Runs one `centerd operator` subcommand; the password (for `add`) comes
/// from `--password-file` or `stdin`.
pub fn operator(cfg: &CenterdConfig, cmd: &OperatorCmd, stdin: &mut impl Read) -> Result<Report, AdminError> {
    let actor = cli_actor();
    let now = unix_now();
    let done = |what: String, name: &str| {
        Report::new(&serde_json::json!({"operator": name, "done": what}), || {
            format!("operator {name}: {what}")
        })
    };
    match cmd {
        OperatorCmd::Add {
            name,
            role: r,
            password_file,
            iterations,
        } => {
            let role = role(r)?;
            crate::accounts::check_name(name).map_err(ManageError::from)?;
            let password = read_password(password_file.as_deref(), stdin)?;
            let new = NewAccount {
                name,
                password: &password,
                role,
                iterations: *iterations,
            };
            let prepared = manage::prepare(&new, &ring::rand::SystemRandom::new())?;
            manage::add(&mut open_store(cfg)?, &prepared, &actor, now)?;
            done(format!("added as {role}"), name)
        }
        OperatorCmd::List => {
            let rows = manage::list(&open_store(cfg)?)?;
            Report::new(&rows, || {
                let mut s = String::new();
                for r in &rows {
                    s.push_str(&format!(
                        "{} {} {} created {}{}\n",
                        r.name,
                        r.role,
                        if r.disabled { "disabled" } else { "active" },
                        crate::ui::fmt_time(r.created_at),
                        if r.second_factor { " 2fa" } else { "" }
                    ));
                }
                s
            })
        }
        OperatorCmd::Disable { name } => {
            manage::set_disabled(&mut open_store(cfg)?, name, true, &actor, now)?;
            done("disabled, its sessions ended".into(), name)
        }
        OperatorCmd::Enable { name } => {
            manage::set_disabled(&mut open_store(cfg)?, name, false, &actor, now)?;
            done("enabled".into(), name)
        }
        OperatorCmd::SetRole { name, role: r } => {
            let role = role(r)?;
            manage::set_role(&mut open_store(cfg)?, name, role, &actor, now)?;
            done(format!("role {role}"), name)
        }
        OperatorCmd::TotpReset { name } => {
            let had = manage::reset_totp(&mut open_store(cfg)?, name, &actor, now)?;
            done(
                if had {
                    "second factor removed (TOTP and recovery codes)".into()
                } else {
                    "had no second factor".into()
                },
                name,
            )
        }
    }
}
