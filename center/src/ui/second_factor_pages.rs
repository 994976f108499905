//! The second factor's pages (issue 20, item 2): the code after the
//! password, the enrolment with its QR code (an SVG made in the server: no
//! script, no image from elsewhere), and the recovery codes, shown once.

use maud::{html, PreEscaped};

use super::pages::{message, page};
use super::CSRF_FIELD;

/// The code form after a right password.
pub(super) fn code(text: &str, csrf: &str) -> String {
    page(
        "vpnnat center: second factor",
        false,
        html! {
            h1 { "Maintenance center" }
            (message(Some(text)))
            p { "Enter the 6-digit code of your authenticator app, or one of your recovery codes." }
            form method="post" action="/login/code" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                label { "Code " input type="text" name="code" id="code" autocomplete="one-time-code" inputmode="numeric" autofocus; }
                " "
                button type="submit" id="verify" { "Verify" }
            }
            form method="post" action="/logout" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                button type="submit" { "Cancel" }
            }
        },
    )
}

/// What the enrolment page shows.
#[derive(Debug)]
pub(super) struct Enrolment<'a> {
    pub account: &'a str,
    /// The secret in base32, for typing into an app without a camera.
    pub secret: &'a str,
    pub uri: &'a str,
    /// The QR code of `uri` (an `<svg>` element).
    pub qr_svg: &'a str,
    /// Whether the account's role requires it (nothing else until done).
    pub required: bool,
}

pub(super) fn enrol(e: &Enrolment<'_>, text: &str, csrf: &str) -> String {
    page(
        "vpnnat center: two-factor enrolment",
        false,
        html! {
            h1 { "Two-factor login for " (e.account) }
            (message(Some(text)))
            @if e.required {
                p { "Your role logs in with a second factor. Set it up now to continue." }
            }
            p { "Scan this QR code with an authenticator app (any TOTP app), then enter the code it shows." }
            div id="qr" { (PreEscaped(e.qr_svg)) }
            p { "Or type the key: " code id="secret" { (e.secret) } }
            p { "URI: " code id="otpauth-uri" { (e.uri) } }
            form method="post" action="/totp/enrol" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                label { "Code " input type="text" name="code" id="code" autocomplete="one-time-code" inputmode="numeric" autofocus; }
                " "
                button type="submit" id="confirm" { "Confirm" }
            }
        },
    )
}

/// The recovery codes, once, after a confirmed enrolment.
pub(super) fn recovery_codes(account: &str, codes: &[&str]) -> String {
    page(
        "vpnnat center: recovery codes",
        false,
        html! {
            h1 { "Two-factor login enrolled for " (account) }
            p { "Your recovery codes. Each logs in once in place of a code, for the day your phone is lost. \
                 Store them now: they are not shown again." }
            ul id="recovery-codes" {
                @for c in codes {
                    li { code { (c) } }
                }
            }
            p { a href="/" id="continue" { "Continue" } }
        },
    )
}

/// An account enrolled already (a reset by an admin comes first), or a
/// session without an account.
pub(super) fn nothing_to_enrol(text: &str) -> String {
    page(
        "vpnnat center: two-factor enrolment",
        false,
        html! {
            h1 { "Two-factor login" }
            p id="message" { (text) }
            p { a href="/" { "Back" } }
        },
    )
}
