//! The router's recent log, kept in memory for the operator's maintenance
//! interface ([0180]): a bounded ring of the last [`CAPACITY`] lines, each
//! cut at [`MAX_LINE`] bytes, so it costs at most ~100 KiB however long
//! the router runs.
//!
//! [`install`] installs the project's logger ([`vpnnat_log`]) with the
//! ring as a sink: every line printed on stderr also lands in the ring.
//! Secrets are never logged by the daemon (the proto key types print as
//! `<redacted>`); as a second line of defence every run of 32 or more hex
//! digits (a PSK, Secret(ID), Secret(ID2) in hex) is masked on the way in.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Lines kept.
pub const CAPACITY: usize = 256;
/// Bytes kept of one line.
pub const MAX_LINE: usize = 400;

/// A bounded ring of log lines.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        LogRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends one line (masked and cut), dropping the oldest beyond the
    /// capacity.
    pub fn push(&self, line: &str) {
        let line = mask_hex_runs(line);
        let line = cut(&line, MAX_LINE);
        if let Ok(mut l) = self.lines.lock() {
            while l.len() >= self.capacity.max(1) {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// The lines, oldest first.
    pub fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's ring (what [`install`]'s logger fills).
pub fn global() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing::new(CAPACITY))
}

/// `line` with every run of 32+ hex digits replaced by `<hex redacted>`.
fn mask_hex_runs(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str("<hex redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in line.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// At most `max` bytes of `s`, on a character boundary, `…` marking a cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        // Stops at 0 at the latest: always a boundary.
        end = end.saturating_sub(1);
    }
    format!("{}…", &s[..end])
}

/// Installs the logger (the project's line, [`vpnnat_log`]: UTC RFC 3339
/// stamps with milliseconds, `terminal=ID acceptance=N` for events about a
/// request) on stderr and into [`global`]. The filter is `RUST_LOG`, else
/// `default_level`; the format `VPNNAT_LOG_FORMAT`, else syslog-style
/// (`<N>` priority first) when routerd is PID 1 (the image: stderr is the
/// console, read by whoever collects it) or under systemd, else plain. The
/// ring always gets the plain line. A second call does nothing.
pub fn install(default_level: &str, pid1: bool) {
    let config_format = pid1.then_some(vpnnat_log::Format::Syslog);
    vpnnat_log::init(vpnnat_log::Settings {
        filter: vpnnat_log::resolve_filter(default_level, None),
        format: vpnnat_log::resolve_format(config_format),
        stderr: true,
        sinks: vec![Box::new(|line: &str| global().push(line))],
    });
}

/// Applies the configuration's `[log]` once it is read (the logger runs
/// from the start, so that early failures are logged); `RUST_LOG` and
/// `VPNNAT_LOG_FORMAT` still win.
pub fn configure(level: Option<&str>, format: Option<vpnnat_log::Format>, pid1: bool) {
    let format = format.or(pid1.then_some(vpnnat_log::Format::Syslog));
    vpnnat_log::reconfigure(
        &vpnnat_log::resolve_filter("info", level),
        vpnnat_log::resolve_format(format),
    );
}

/// The same logger for the unit tests: the ring only (the harness does not
/// capture stderr written directly).
#[cfg(test)]
pub fn install_for_tests() {
    vpnnat_log::init(vpnnat_log::Settings {
        filter: "info".into(),
        format: vpnnat_log::Format::Plain,
        stderr: false,
        sinks: vec![Box::new(|line: &str| global().push(line))],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_keeps_the_newest() {
        let r = LogRing::new(3);
        for i in 0..10 {
            r.push(&format!("line {i}"));
        }
        assert_eq!(r.snapshot(), ["line 7", "line 8", "line 9"]);
    }

    #[test]
    fn long_lines_are_cut_and_hex_secrets_masked() {
        let r = LogRing::new(4);
        r.push(&"é".repeat(MAX_LINE));
        let l = &r.snapshot()[0];
        assert!(l.len() <= MAX_LINE + '…'.len_utf8() && l.ends_with('…'), "{}", l.len());
        r.push(&format!("psk {} end, id abc123", "ab".repeat(32)));
        assert_eq!(r.snapshot()[1], "psk <hex redacted> end, id abc123");
    }
}
