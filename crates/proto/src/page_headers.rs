//! The security headers of every HTML page, both sides (issue 18, item 9):
//! the router's LAN page and maintenance page, the center's operator UI.
//!
//! - `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: no page may
//!   be framed (a framed maintenance page's Reboot button could be
//!   clickjacked while the browser holds Basic credentials).
//! - `X-Content-Type-Options: nosniff`: a body is what its type says.
//! - `Content-Security-Policy`: nothing loads but the page's own inline
//!   style sheet and scripts, named by their SHA-256 (so an injected
//!   `<script>` or `style` attribute would not run), requests to the same
//!   origin (`fetch`, forms), no `<base>`, no plugins.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// `'sha256-…'`: the CSP source that allows one inline `<style>` or
/// `<script>` whose content is exactly `inline`.
pub fn csp_hash(inline: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, inline.as_bytes());
    format!("'sha256-{}'", STANDARD.encode(d.as_ref()))
}

/// The policy for pages whose only inline content is `styles` and
/// `scripts` (element contents, exactly as served).
pub fn content_security_policy(styles: &[&str], scripts: &[&str]) -> String {
    let list = |xs: &[&str]| {
        if xs.is_empty() {
            "'none'".to_owned()
        } else {
            xs.iter().map(|x| csp_hash(x)).collect::<Vec<_>>().join(" ")
        }
    };
    format!(
        "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; img-src 'self'; \
form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        list(styles),
        list(scripts)
    )
}

/// The three headers (name, value) of an HTML page under `csp`.
pub fn html_headers(csp: &str) -> [(&'static str, String); 3] {
    [
        ("x-frame-options", "DENY".to_owned()),
        ("x-content-type-options", "nosniff".to_owned()),
        ("content-security-policy", csp.to_owned()),
    ]
}

/// The contents of every `<tag>…</tag>` element in `html` (for tests: the
/// policy must name each inline style and script the page really has).
pub fn inline_elements<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some((_, after)) = rest.split_once(open.as_str()) {
        let Some((inner, next)) = after.split_once(close.as_str()) else {
            break;
        };
        out.push(inner);
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_the_csp_form_of_sha256() {
        // `echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            csp_hash("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }

    #[test]
    fn policy_names_each_inline_part_and_forbids_framing() {
        let p = content_security_policy(&["b{}"], &[]);
        assert!(p.contains(&format!("style-src {};", csp_hash("b{}"))), "{p}");
        assert!(p.contains("script-src 'none';"), "{p}");
        assert!(
            p.starts_with("default-src 'none';") && p.ends_with("frame-ancestors 'none'"),
            "{p}"
        );
        let page = "<style>b{}</style><script>x()</script><p>t</p><script>y()</script>";
        assert_eq!(inline_elements(page, "script"), ["x()", "y()"]);
        assert_eq!(inline_elements(page, "style"), ["b{}"]);
    }
}
