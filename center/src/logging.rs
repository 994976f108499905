//! Logging for centerd and gatewayd: the `log` facade through env_logger,
//! the level from `RUST_LOG`, else the configuration (`[log] level`), else
//! the binary's default. Under systemd (`JOURNAL_STREAM` set) or with
//! `VPNNAT_LOG_FORMAT=syslog`, each event is one line `<N>target: message`
//! with the syslog priority N in front (sd-daemon(3): journald and syslog
//! read it and add their own timestamp); otherwise env_logger's usual line.
//! Messages never carry secrets (keys and passwords are redacted types).

use std::io::Write as _;

/// The syslog priority of a level (RFC 5424 severities).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// One syslog-style line: `<N>target: message`, line breaks inside the
/// message escaped so that one event stays one line.
pub fn syslog_line(level: log::Level, target: &str, message: &str) -> String {
    let msg = message.replace('\r', "\\r").replace('\n', "\\n");
    format!("<{}>{target}: {msg}", priority(level))
}

/// Whether lines go out syslog-style (see the module doc).
pub fn syslog_style() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var("VPNNAT_LOG_FORMAT").is_ok_and(|v| v == "syslog")
}

/// Checks an env_logger filter (`info`, `warn,vpnnat_center::dns=debug`):
/// each comma-separated item is a level or `module=level`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for item in filter.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let level = item.rsplit_once('=').map_or(item, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{item:?}: the level must be one of {}", LEVELS.join(", ")));
        }
    }
    Ok(())
}

/// Installs the logger once (later calls do nothing).
pub fn init(default_filter: &str, config_filter: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| config_filter.map(str::to_owned))
        .unwrap_or_else(|| default_filter.to_owned());
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter);
    if syslog_style() {
        b.format(|buf, rec| {
            writeln!(
                buf,
                "{}",
                syslog_line(rec.level(), rec.target(), &rec.args().to_string())
            )
        });
    }
    let _ = b.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_lines_and_filters() {
        assert_eq!(
            syslog_line(log::Level::Warn, "vpnnat_center::center", "request 7: x\ny"),
            "<4>vpnnat_center::center: request 7: x\\ny"
        );
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Trace), 7);
        assert!(check_filter("info").is_ok());
        assert!(check_filter("warn, vpnnat_center::dns=DEBUG").is_ok());
        assert!(check_filter("loud").is_err());
        assert!(check_filter("vpnnat_center=verbose").is_err());
    }
}
