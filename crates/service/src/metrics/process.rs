//! The standard `process_*` metrics of the Prometheus client libraries
//! (CPU seconds, resident and virtual memory, open and maximum file
//! descriptors, start time), read from `/proc` at each scrape. Parsing is
//! pure (text in, numbers out); [`ProcessCollector`] reads the files.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Clock ticks per second of the times in `/proc/<pid>/stat`: USER_HZ,
/// which the kernel fixes at 100 for user space on every architecture we
/// build for (x86_64, aarch64), whatever its internal HZ.
const USER_HZ: f64 = 100.0;

/// What one scrape reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// `/proc/self/stat`: (utime + stime, starttime) in clock ticks. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
    // rest: field 3 (state) onwards; utime is field 14, stime 15,
    // starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n.checked_sub(3)?)?.parse::<u64>().ok();
    Some((field(14)?.checked_add(field(15)?)?, field(22)?))
}

/// A `Key:   N kB` line of `/proc/self/status`, in bytes.
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    let mut parts = line.split(':').nth(1)?.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
pub fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`None` when
/// unlimited).
pub fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads this process's figures; `None` when `/proc` is not there.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let (cpu_ticks, start_ticks) = parse_stat(&stat)?;
        let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        #[allow(clippy::cast_precision_loss)] // tick counts far below 2^53
        Some(ProcessStats {
            cpu_seconds: cpu_ticks as f64 / USER_HZ,
            resident_bytes: status_kb(&status, "VmRSS")?,
            virtual_bytes: status_kb(&status, "VmSize")?,
            open_fds: u64::try_from(open_fds).unwrap_or(u64::MAX),
            max_fds,
            start_time_seconds: boot as f64 + start_ticks as f64 / USER_HZ,
        })
    }
}

/// Registered once in a registry without a prefix: the `process_*`
/// families, read at each encoding.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

fn gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> Result<(), fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m)?;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            as_i64(p.resident_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            as_i64(p.virtual_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            as_i64(p.open_fds),
        )?;
        if let Some(max) = p.max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                as_i64(max),
            )?;
        }
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files() {
        // A command name with a space and a parenthesis; utime 250, stime
        // 50, starttime 12345.
        let stat = "4242 (cent rd) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 12345 10000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 12345)));
        assert_eq!(parse_stat("4242 (centerd) S 1"), None);
        let status = "Name:\tcenterd\nVmSize:\t  20480 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(status_kb(status, "VmSize"), Some(20480 * 1024));
        assert_eq!(status_kb(status, "Threads"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1765000000\nprocesses 9\n"),
            Some(1_765_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files            unlimited            unlimited            files\n"),
            None
        );
    }

    /// This test process's own figures are plausible: it has started
    /// (after boot, before now), holds open files and resident memory.
    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds > 1_600_000_000.0 && p.start_time_seconds <= now + 1.0);
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.cpu_seconds >= 0.0);
    }
}
