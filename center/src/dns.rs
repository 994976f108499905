//! centerd's DNS answers (issue 9): a small authoritative zone so the
//! operator reaches `HOSTNAME.TERMINALID.<domain>` instead of a VPNNAT
//! address while a grant is live.

/// The name of a grant: `HOSTNAME.TERMINALID.<domain>` (lower case; DNS
/// names compare case-insensitively).
pub fn name_of(terminal_name: &str, terminal_id: &str, domain: &str) -> String {
    format!(
        "{}.{}.{}",
        terminal_name.to_ascii_lowercase(),
        terminal_id.to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}
