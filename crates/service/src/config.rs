//! Configuration helpers both daemons use: the error type, TOML error
//! text, and the `http://host:port` endpoint.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// A gateway's HTTP API endpoint: `http://host:port` (center LAN, plain
/// HTTP: the commands are authenticated and the PSK inside is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// `host:port`, for connecting and for the Host header.
    pub authority: String,
}

impl HttpEndpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").ok_or("must start with http://")?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err("must be http://host:port with no path".into());
        }
        let (host, port) = authority.rsplit_once(':').ok_or("needs an explicit :port")?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("needs a host and a port 1-65535".into());
        }
        Ok(HttpEndpoint {
            authority: authority.to_owned(),
        })
    }
}

/// A TOML error as one line with the offending line and column.
pub fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    vpnnat_log::config_error_message(text, e.span(), e.message())
}
