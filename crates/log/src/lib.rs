//! The log line shared by centerd, gatewayd and routerd (issue 9).
//!
//! Every event is one line, whatever the message holds (line breaks are
//! escaped), stamped in UTC with milliseconds (RFC 3339), so that lines of
//! several daemons on one machine sort and subtract in one clock (the
//! end-to-end benchmark splits its phases that way):
//!
//! ```text
//! plain:   2026-11-25T07:01:02.123Z INFO  vpnnat_center::center: terminal=home-1 acceptance=17 ...
//! syslog:  <6>2026-11-25T07:01:02.123Z INFO  vpnnat_center::center: terminal=home-1 acceptance=17 ...
//! ```
//!
//! The syslog form puts the RFC 5424 severity in front, as sd-daemon(3)
//! and syslog readers of a daemon's stderr expect; journald strips it and
//! keeps the rest. Events about a router carry `terminal=ID`, events about a
//! maintenance request also `acceptance=N` ([`kv`] writes the pair), so one
//! grep finds a request's whole story across the three daemons.
//!
//! The filter is env_logger's syntax (`info`, `warn,vpnnat_center::dns=debug`):
//! `RUST_LOG` wins over the configuration, which wins over the daemon's
//! default; the format is `VPNNAT_LOG_FORMAT` (`plain` or `syslog`), else the
//! configuration, else syslog under systemd (`JOURNAL_STREAM` set), else
//! plain.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::sync::{OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `STAMP LEVEL target: message`.
    Plain,
    /// `<PRI>STAMP LEVEL target: message`.
    Syslog,
}

impl Format {
    /// `"plain"` or `"syslog"`.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "plain" => Ok(Format::Plain),
            "syslog" => Ok(Format::Syslog),
            other => Err(format!("{other:?}: the format must be \"plain\" or \"syslog\"")),
        }
    }
}

/// The syslog priority of a level (RFC 5424 severities, facility 0: the
/// reader adds its own facility).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time (UTC; times before 1970 print as
/// the epoch).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A config parse error as "line L, column C (`key`): what", without the
/// quoted source line a TOML error's Display shows: that line may hold a
/// secret (a factory secret, the master key, an API key), and config
/// errors end up in logs (found by the config fuzz targets). `span` is the
/// error's byte range in `text`, `message` its message alone.
pub fn config_error_message(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    let at = span.map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count().saturating_add(1);
        let line_start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
        let column = before.len().saturating_sub(line_start).saturating_add(1);
        // The key of a bad value, if it looks like a key name (short, so
        // that a secret written where a key belongs is never shown).
        let key = text
            .get(line_start..)
            .and_then(|l| l.lines().next())
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| {
                (1..=32).contains(&k.len())
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            })
            .map(|k| format!(" (`{k}`)"))
            .unwrap_or_default();
        format!("line {line}, column {column}{key}: ")
    });
    format!("{}{}", at.unwrap_or_default(), message.trim_end())
}

/// One event's line (no trailing newline).
pub fn line(format: Format, t: SystemTime, level: log::Level, target: &str, message: &str) -> String {
    let msg = message.replace('\r', "\\r").replace('\n', "\\n");
    let stamp = rfc3339_millis(t);
    match format {
        Format::Plain => format!("{stamp} {level:<5} {target}: {msg}"),
        Format::Syslog => format!("<{}>{stamp} {level:<5} {target}: {msg}", priority(level)),
    }
}

/// The project's key=value convention for the subject of an event:
/// `terminal=ID`, and ` acceptance=N` when a request is concerned.
pub fn kv(terminal: &dyn std::fmt::Display, acceptance: Option<u64>) -> String {
    match acceptance {
        Some(n) => format!("terminal={terminal} acceptance={n}"),
        None => format!("terminal={terminal}"),
    }
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

/// The filter in force: `RUST_LOG` if set, else the configuration's, else
/// `default`.
pub fn resolve_filter(default: &str, config: Option<&str>) -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| config.map(str::to_owned))
        .unwrap_or_else(|| default.to_owned())
}

/// The format in force (see the module doc). An unknown
/// `VPNNAT_LOG_FORMAT` is ignored rather than fatal: logging must start.
pub fn resolve_format(config: Option<Format>) -> Format {
    if let Some(f) = std::env::var("VPNNAT_LOG_FORMAT")
        .ok()
        .and_then(|v| Format::parse(&v).ok())
    {
        return f;
    }
    if let Some(f) = config {
        return f;
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        Format::Syslog
    } else {
        Format::Plain
    }
}

/// Where lines go besides stderr (routerd's ring for its maintenance page,
/// tests capturing every line).
pub type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// What [`init`] installs.
pub struct Settings {
    /// An env_logger filter.
    pub filter: String,
    pub format: Format,
    /// Write lines to stderr (false: sinks only).
    pub stderr: bool,
    /// Each gets every line (plain format, whatever `format` says).
    pub sinks: Vec<Sink>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("filter", &self.filter)
            .field("format", &self.format)
            .field("stderr", &self.stderr)
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

/// What [`reconfigure`] can change once the logger runs.
struct Active {
    /// Used for its filter only; lines are ours.
    filter: env_logger::Logger,
    format: Format,
}

struct Logger {
    active: RwLock<Active>,
    stderr: bool,
    sinks: Vec<Sink>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        self.active.read().is_ok_and(|a| a.filter.enabled(m))
    }

    fn log(&self, record: &log::Record<'_>) {
        let format = match self.active.read() {
            Ok(a) if a.filter.matches(record) => a.format,
            _ => return,
        };
        let now = SystemTime::now();
        let msg = record.args().to_string();
        if self.stderr {
            let mut l = line(format, now, record.level(), record.target(), &msg);
            l.push('\n');
            // One write per line, so lines of several threads never mix.
            let _ = std::io::stderr().lock().write_all(l.as_bytes());
        }
        if !self.sinks.is_empty() {
            let l = line(Format::Plain, now, record.level(), record.target(), &msg);
            for s in &self.sinks {
                s(&l);
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the process's logger; false if one was installed already
/// (then nothing changes).
pub fn init(settings: Settings) -> bool {
    let filter = env_logger::Builder::new().parse_filters(&settings.filter).build();
    let max = filter.filter();
    let mut fresh = false;
    let logger = LOGGER.get_or_init(|| {
        fresh = true;
        Logger {
            active: RwLock::new(Active {
                filter,
                format: settings.format,
            }),
            stderr: settings.stderr,
            sinks: settings.sinks,
        }
    });
    if fresh && log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        true
    } else {
        false
    }
}

/// Changes the filter and format of the running logger (routerd installs
/// it before it has read its configuration, whose `[log]` then applies);
/// false if [`init`] has not run.
pub fn reconfigure(filter: &str, format: Format) -> bool {
    let Some(logger) = LOGGER.get() else {
        return false;
    };
    let filter = env_logger::Builder::new().parse_filters(filter).build();
    let max = filter.filter();
    match logger.active.write() {
        Ok(mut a) => {
            *a = Active { filter, format };
            log::set_max_level(max);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_590_062_123);
        assert_eq!(rfc3339_millis(t), "2026-11-25T07:01:02.123Z");
        // a leap day
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400) + Duration::from_micros(999_999);
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.999Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(rfc3339_millis(t), "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn lines_are_one_per_event_with_priority_in_syslog_form() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_590_062_123);
        assert_eq!(
            line(
                Format::Plain,
                t,
                log::Level::Info,
                "vpnnat_center::center",
                "terminal=home-1 x"
            ),
            "2026-11-25T07:01:02.123Z INFO  vpnnat_center::center: terminal=home-1 x"
        );
        assert_eq!(
            line(Format::Syslog, t, log::Level::Warn, "routerd", "a\nb\rc"),
            "<4>2026-11-25T07:01:02.123Z WARN  routerd: a\\nb\\rc"
        );
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Trace), 7);
    }

    #[test]
    fn subject_convention() {
        assert_eq!(kv(&"home-1", Some(17)), "terminal=home-1 acceptance=17");
        assert_eq!(kv(&"home-1", None), "terminal=home-1");
    }

    /// The only test that installs the process's logger.
    #[test]
    fn the_running_logger_filters_and_can_be_reconfigured() {
        use std::sync::Mutex;
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        assert!(
            !reconfigure("info", Format::Plain),
            "nothing to reconfigure before init"
        );
        assert!(init(Settings {
            filter: "info".into(),
            format: Format::Syslog,
            stderr: false,
            sinks: vec![Box::new(|l: &str| SEEN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(l.to_owned()))],
        }));
        log::info!(target: "t", "one");
        log::debug!(target: "t", "hidden");
        assert!(reconfigure("warn", Format::Plain));
        log::info!(target: "t", "dropped now");
        log::warn!(target: "t", "two");
        let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        // sinks get the plain line, whatever stderr's format
        assert!(
            seen[0].ends_with(" INFO  t: one") && seen[0].as_bytes()[23] == b'Z',
            "{}",
            seen[0]
        );
        assert!(seen[1].ends_with(" WARN  t: two"), "{}", seen[1]);
        assert!(!init(Settings {
            filter: "trace".into(),
            format: Format::Plain,
            stderr: false,
            sinks: Vec::new(),
        }));
    }

    #[test]
    fn filters_and_formats_are_checked() {
        assert!(check_filter("info").is_ok());
        assert!(check_filter("warn, vpnnat_center::dns=DEBUG").is_ok());
        assert!(check_filter("loud").is_err());
        assert!(check_filter("vpnnat_center=verbose").is_err());
        assert_eq!(Format::parse("syslog"), Ok(Format::Syslog));
        assert_eq!(Format::parse("plain"), Ok(Format::Plain));
        assert!(Format::parse("json").is_err());
    }
}
