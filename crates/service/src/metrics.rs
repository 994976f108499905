//! Prometheus metrics of centerd (and, until it moves to its own crate,
//! gatewayd): command latency histograms and status counters on
//! `prometheus-client` (OpenMetrics text), the process collector
//! ([`process`]), the hand-written gauge writer gatewayd still uses, and a
//! strict parser of the text format that the tests (and anyone scripting
//! a scrape) use.
//!
//! routerd does not use this: it writes its few gauges by hand
//! (router/src/metrics.rs) because its binary has a 4 MB budget.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use thiserror::Error;

mod process;

pub use process::ProcessCollector;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A metric's labels: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The histograms' constructor (a fn pointer, so the family is `Clone`).
type NewHistogram = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Latency and outcome of every command a server handles, by command.
/// Cloning shares the counts (the families are reference-counted), which
/// is how they are registered in a scrape's registry.
#[derive(Debug)]
pub struct CommandMetrics {
    names: &'static [&'static str],
    latency: Family<Labels, Histogram, NewHistogram>,
    statuses: Family<Labels, Counter>,
}

/// The label of commands not in the list (unknown paths).
pub const OTHER: &str = "other";

impl CommandMetrics {
    /// `names`: every command label; each has a histogram from the start
    /// (zero observations are a value too).
    pub fn new(names: &'static [&'static str]) -> Self {
        let latency = Family::new_with_constructor(latency_histogram as NewHistogram);
        for n in names {
            let _ = latency.get_or_create(&vec![("command", (*n).to_owned())]);
        }
        CommandMetrics {
            names,
            latency,
            statuses: Family::default(),
        }
    }

    /// Records one handled command (`command` not in the list counts as
    /// [`OTHER`] for the status counter and has no histogram).
    pub fn observe(&self, command: &str, status: u16, took: Duration) {
        let known = self.names.iter().find(|n| **n == command);
        if let Some(n) = known {
            self.latency
                .get_or_create(&vec![("command", (*n).to_owned())])
                .observe(took.as_secs_f64());
        }
        let label = known.copied().unwrap_or(OTHER);
        self.statuses
            .get_or_create(&vec![("command", label.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// Registers `command_duration_seconds` (histogram by command) and
    /// `commands` (counter by command and HTTP status, `_total` in the
    /// text) in `registry` (whose prefix names the daemon).
    pub fn register(&self, registry: &mut Registry, what: &str) {
        registry.register(
            "command_duration_seconds",
            format!("Time to handle one {what} command, by command."),
            self.latency.clone(),
        );
        registry.register(
            "commands",
            format!("{what} commands handled, by command and HTTP status."),
            self.statuses.clone(),
        );
    }

    /// `<prefix>_command_duration_seconds` and `<prefix>_commands_total`
    /// appended to a hand-written exposition (gatewayd's, until it moves
    /// onto a registry of its own).
    pub fn render(&self, prefix: &str, what: &str, out: &mut String) {
        let mut registry = Registry::with_prefix(prefix);
        self.register(&mut registry, what);
        if encode_registry(out, &registry).is_err() {
            log::warn!("metrics: cannot encode the command metrics");
        }
    }
}

/// Escapes a label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes a metric family of gauges (or counters) by hand: HELP, TYPE,
/// then one sample per `(labels, value)`. gatewayd's; centerd registers
/// `prometheus-client` families instead.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// The content type of gatewayd's exposition (text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of centerd's exposition (`prometheus-client` writes
/// OpenMetrics text, ending in `# EOF`).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Bad { line: usize, reason: String },
}

fn valid_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text format strictly: `# HELP`/`# TYPE` lines (a TYPE at most
/// once per family, before its samples), samples `name{l="v",...} value`
/// with valid names, quoted and escaped label values, and a float value;
/// histograms' buckets must be cumulative and end with `+Inf` = `_count`.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i.saturating_add(1);
        let bad = |reason: &str| ParseError::Bad {
            line: n,
            reason: reason.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(bad("bad metric name in TYPE"));
                    }
                    // The 0.0.4 types and OpenMetrics' (info, stateset, ...).
                    if !matches!(
                        kind,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "untyped"
                            | "unknown"
                            | "info"
                            | "stateset"
                            | "gaugehistogram"
                    ) {
                        return Err(bad("unknown type"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(bad("TYPE given twice"));
                    }
                }
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("HELP"), _, _) => return Err(bad("bad HELP")),
                _ => {}
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => line.split_at(p),
            None => return Err(bad("no value")),
        };
        if !valid_name(name) {
            return Err(bad("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end: usize;
            loop {
                // label name
                let start = chars
                    .peek()
                    .map(|(p, _)| *p)
                    .ok_or_else(|| bad("unterminated labels"))?;
                if body.get(start..).is_some_and(|s| s.starts_with('}')) {
                    end = start.saturating_add(1);
                    break;
                }
                let eq = body
                    .get(start..)
                    .and_then(|s| s.find('='))
                    .ok_or_else(|| bad("label without ="))?;
                let lname = body.get(start..start.saturating_add(eq)).unwrap_or("");
                if !valid_name(lname) {
                    return Err(bad("bad label name"));
                }
                while chars.peek().is_some_and(|(p, _)| *p <= start.saturating_add(eq)) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("label value not quoted"));
                }
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => v.push(c),
                            _ => return Err(bad("bad escape")),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => v.push(c),
                        None => return Err(bad("unterminated label value")),
                    }
                }
                if labels.insert(lname.to_owned(), v).is_some() {
                    return Err(bad("label given twice"));
                }
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((p, '}')) => {
                        end = p.saturating_add(1);
                        break;
                    }
                    _ => return Err(bad("expected , or }")),
                }
            }
            body.get(end..).unwrap_or("")
        } else {
            rest
        };
        let mut parts = rest.split_whitespace();
        let value = parts.next().ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        if parts.next().is_some_and(|t| t.parse::<i64>().is_err()) || parts.next().is_some() {
            return Err(bad("trailing garbage"));
        }
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&out, &types)?;
    Ok(out)
}

/// A series' labels other than `le`.
type SeriesKey = Vec<(String, String)>;

fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), ParseError> {
    let err = |reason: String| ParseError::Bad { line: 0, reason };
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        // Group buckets by their labels other than `le`.
        let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket) {
            let le = s.labels.get("le").ok_or_else(|| err(format!("{bucket} without le")))?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| err(format!("{bucket}: bad le {le}")))?
            };
            let key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        for (key, buckets) in &series {
            if !buckets
                .windows(2)
                .all(|w| matches!(w, [a, b] if a.0 < b.0 && a.1 <= b.1))
            {
                return Err(err(format!("{bucket}{key:?}: buckets not increasing")));
            }
            let Some(&(last_le, last)) = buckets.last() else {
                continue;
            };
            if last_le != f64::INFINITY {
                return Err(err(format!("{bucket}{key:?}: no +Inf bucket")));
            }
            let c = samples
                .iter()
                .find(|s| {
                    s.name == count
                        && s.labels.len() == key.len()
                        && key.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                })
                .ok_or_else(|| err(format!("{count}{key:?} missing")))?;
            if (c.value - last).abs() > f64::EPSILON {
                return Err(err(format!("{count}{key:?} differs from the +Inf bucket")));
            }
        }
    }
    Ok(())
}

/// The value of the sample `name` with exactly these labels.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_counters_render_and_parse() {
        let m = CommandMetrics::new(&["a", "b"]);
        m.observe("a", 200, Duration::from_micros(300));
        m.observe("a", 200, Duration::from_millis(30));
        m.observe("a", 401, Duration::from_secs(20));
        m.observe("zzz", 404, Duration::from_millis(1));
        let mut out = String::new();
        m.render("x", "test", &mut out);
        family(
            &mut out,
            "x_up",
            "gauge",
            "g",
            &[(vec![("gateway", "gw\"1".to_owned())], 3.0), (vec![], 1.0)],
        );
        let s = parse(&out).unwrap();
        let b = |le: &str| value(&s, "x_command_duration_seconds_bucket", &[("command", "a"), ("le", le)]);
        assert_eq!(b("0.0005"), Some(1.0));
        assert_eq!(b("0.025"), Some(1.0));
        assert_eq!(b("0.05"), Some(2.0));
        assert_eq!(b("10.0"), Some(2.0));
        assert_eq!(b("+Inf"), Some(3.0));
        assert_eq!(
            value(&s, "x_command_duration_seconds_count", &[("command", "b")]),
            Some(0.0)
        );
        assert_eq!(
            value(&s, "x_commands_total", &[("command", "a"), ("status", "401")]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "x_commands_total", &[("command", "other"), ("status", "404")]),
            Some(1.0)
        );
        assert_eq!(value(&s, "x_up", &[("gateway", "gw\"1")]), Some(3.0));
        assert_eq!(value(&s, "x_up", &[]), Some(1.0));
        let sum = value(&s, "x_command_duration_seconds_sum", &[("command", "a")]).unwrap();
        assert!((sum - 20.0303).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn parser_rejects_malformed_text() {
        for bad in [
            "1x 2",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x{a=\"1\",a=\"2\"} 2",
            "x two",
            "x 1 2 3",
            "x{a=\"\\q\"} 1",
            "# TYPE x gauge\n# TYPE x gauge",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("x 1 1700000000000\n").unwrap().len(), 1);
    }
}
