//! Logging for centerd and gatewayd: the `log` facade through the project's
//! line ([`vpnnat_log`]: UTC RFC 3339 stamps with milliseconds, one line per
//! event, `terminal=ID acceptance=N` for events about a router or a
//! request). The level comes from `RUST_LOG`, else the configuration (`[log]
//! level`), else the binary's default; the format from `VPNNAT_LOG_FORMAT`,
//! else `[log] format`, else syslog-style (`<N>` priority first) under
//! systemd (`JOURNAL_STREAM` set), else plain. Messages never carry secrets
//! (keys and passwords are redacted types).

use serde::Deserialize;

pub use vpnnat_log::{check_filter, kv, priority, Format};

/// The `[log]` section of centerd's and gatewayd's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// `[log]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// An env_logger filter; `RUST_LOG` overrides it.
    pub level: Option<String>,
    /// `VPNNAT_LOG_FORMAT` overrides it.
    pub format: Option<Format>,
}

impl LogConfig {
    /// Checks `[log]`; the error names the key.
    pub fn from_raw(raw: Option<RawLog>) -> Result<LogConfig, (&'static str, String)> {
        let Some(raw) = raw else {
            return Ok(LogConfig::default());
        };
        if let Some(l) = &raw.level {
            check_filter(l).map_err(|e| ("log.level", e))?;
        }
        let format = raw
            .format
            .as_deref()
            .map(Format::parse)
            .transpose()
            .map_err(|e| ("log.format", e))?;
        Ok(LogConfig {
            level: raw.level,
            format,
        })
    }
}

/// Installs the logger once (later calls do nothing).
pub fn init(default_filter: &str, config: &LogConfig) {
    vpnnat_log::init(vpnnat_log::Settings {
        filter: vpnnat_log::resolve_filter(default_filter, config.level.as_deref()),
        format: vpnnat_log::resolve_format(config.format),
        stderr: true,
        sinks: Vec::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_section_is_checked() {
        assert_eq!(LogConfig::from_raw(None), Ok(LogConfig::default()));
        let ok = LogConfig::from_raw(Some(RawLog {
            level: Some("warn,vpnnat_center::dns=debug".into()),
            format: Some("syslog".into()),
        }));
        assert_eq!(
            ok,
            Ok(LogConfig {
                level: Some("warn,vpnnat_center::dns=debug".into()),
                format: Some(Format::Syslog)
            })
        );
        let bad_level = LogConfig::from_raw(Some(RawLog {
            level: Some("chatty".into()),
            format: None,
        }));
        assert_eq!(bad_level.map_err(|e| e.0), Err("log.level"));
        let bad_format = LogConfig::from_raw(Some(RawLog {
            level: None,
            format: Some("json".into()),
        }));
        assert_eq!(bad_format.map_err(|e| e.0), Err("log.format"));
    }
}
