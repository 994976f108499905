//! The accounts page (issue 20, item 1): admins list, add, disable,
//! enable and re-role operator accounts. The handlers only parse the form
//! and call `crate::accounts::manage`, as `centerd operator ...` does.

use maud::html;

use super::pages::{message, page};
use super::{form_field, html, redirect, text, unix_now, url_encode, Body, Page, Ui, CSRF_FIELD};
use crate::accounts::manage::{self, NewAccount};
use crate::accounts::Role;
use crate::center::{Actor, GatewayCommands, RouterCommands};
use crate::storage::OperatorRow;
use hyper::Response;

/// The page's HTML. Element ids are what the tests find things by.
fn render(rows: &[OperatorRow], csrf: &str, you: &str, msg: Option<&str>) -> String {
    let hidden = html! { input type="hidden" name=(CSRF_FIELD) value=(csrf); };
    page(
        "vpnnat center: accounts",
        false,
        html! {
            h1 { "Operator accounts" }
            p { a href="/" { "Back" } " (logged in as " (you) ")" }
            (message(msg))
            table id="accounts" {
                tr { th { "Name" } th { "Role" } th { "State" } th { "Second factor" } th { "Created" } th { "" } }
                @for r in rows {
                    tr id={ "account-" (r.name) } {
                        td { (r.name) }
                        td { (r.role) }
                        td { @if r.disabled { "disabled" } @else { "active" } }
                        td class="second-factor" { @if r.second_factor { "TOTP" } @else { "none" } }
                        td { (super::fmt_time(r.created_at)) }
                        td {
                            form method="post" action="/accounts/role" class="inline" {
                                (hidden)
                                input type="hidden" name="name" value=(r.name);
                                select name="role" {
                                    @for role in Role::ALL {
                                        option value=(role) selected[role == r.role] { (role) }
                                    }
                                }
                                button id={ "role-" (r.name) } { "Set role" }
                            }
                            " "
                            @let (action, label) = if r.disabled { ("/accounts/enable", "Enable") } else { ("/accounts/disable", "Disable") };
                            form method="post" action=(action) class="inline" {
                                (hidden)
                                input type="hidden" name="name" value=(r.name);
                                button id={ (label.to_lowercase()) "-" (r.name) } { (label) }
                            }
                        }
                    }
                }
            }
            h2 { "Add an account" }
            form method="post" action="/accounts/add" id="account-add" {
                (hidden)
                label { "Name " input type="text" name="name" id="new-name"; }
                " "
                label { "Password " input type="password" name="password" id="new-password" autocomplete="new-password"; }
                " "
                select name="role" id="new-role" {
                    @for role in Role::ALL {
                        option value=(role) selected[role == Role::Operator] { (role) }
                    }
                }
                " "
                button id="add-account" { "Add" }
            }
        },
    )
}

fn back(msg: &str) -> Response<Body> {
    redirect(&format!("/accounts?msg={}", url_encode(msg)))
}

impl<G: GatewayCommands + 'static, R: RouterCommands + 'static> Ui<G, R> {
    pub(super) fn accounts_page(&self, query: &str, csrf: &str, actor: &Actor) -> Response<Body> {
        let rows = match self.center.reads() {
            Ok(st) => manage::list(&st).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => return text(500, format!("cannot read the database: {e}")),
        };
        let msg = form_field(query.as_bytes(), "msg");
        html(200, render(&rows, csrf, &actor.who, msg.as_deref()))
    }

    /// One POST of the accounts page.
    pub(super) fn account_action(&self, page: Page, body: &[u8], actor: &Actor) -> Response<Body> {
        let name = form_field(body, "name").unwrap_or_default().trim().to_owned();
        let role = form_field(body, "role").unwrap_or_default();
        // A new account's password is hashed before the database is
        // locked (PBKDF2 takes a while; rare enough to run here).
        let prepared = (page == Page::AccountAdd).then(|| {
            let password = zeroize::Zeroizing::new(form_field(body, "password").unwrap_or_default());
            role.parse::<Role>().map_err(Into::into).and_then(|role| {
                let new = NewAccount {
                    name: &name,
                    password: &password,
                    role,
                    iterations: self.settings.account_iterations,
                };
                manage::prepare(&new, &self.rng)
            })
        });
        let mut st = match self.center.store() {
            Ok(s) => s,
            Err(e) => return text(500, format!("cannot open the database: {e}")),
        };
        let now = unix_now();
        let done = match (page, prepared) {
            (Page::AccountAdd, Some(prepared)) => prepared.and_then(|new| {
                manage::add(&mut st, &new, actor, now).map(|()| format!("Account {name} added as {role}."))
            }),
            (Page::AccountDisable, _) => manage::set_disabled(&mut st, &name, true, actor, now)
                .map(|()| format!("Account {name} disabled; its sessions are ended.")),
            (Page::AccountEnable, _) => {
                manage::set_disabled(&mut st, &name, false, actor, now).map(|()| format!("Account {name} enabled."))
            }
            (Page::AccountRole, _) => role.parse::<Role>().map_err(Into::into).and_then(|role| {
                manage::set_role(&mut st, &name, role, actor, now).map(|()| format!("Account {name} is now {role}."))
            }),
            _ => return text(404, "no such action"),
        };
        drop(st);
        match done {
            Ok(m) => back(&m),
            Err(e) if e.is_usage() => back(&e.to_string()),
            Err(e) => text(500, e.to_string()),
        }
    }
}
