//! A flood against one HTTP listener, from the loopback: many idle and
//! slow ("slowloris") connections and oversized requests from a few flood
//! addresses (127.0.0.x), while a legitimate client on 127.0.0.1 keeps
//! asking. Reports what the server refused, held and closed, the legitimate
//! client's latency with and without the flood, and the process's memory
//! (the server under test runs in the same process). Figures only: the
//! caller decides what must hold.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What to flood and how hard.
#[derive(Debug, Clone)]
pub struct Flood {
    pub target: SocketAddr,
    /// The legitimate request (a whole HTTP/1.1 request with
    /// `Connection: close`) and the status it must get.
    pub legit: String,
    pub legit_status: u16,
    pub legit_count: usize,
    /// Flood source addresses 127.0.0.2.. (the legitimate client is 127.0.0.1).
    pub sources: u8,
    /// Idle connections per source (connect, send nothing).
    pub idle_per_source: usize,
    /// Slow connections per source (a request head a byte at a time).
    pub slow_per_source: usize,
    /// Requests with a body above any limit (from their own source), to a
    /// path that takes a body.
    pub oversized: usize,
    pub oversized_path: String,
    /// How long to wait for the server to close held connections.
    pub wait_for_close: Duration,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub attempted: usize,
    /// Connections the server answered with 503 or closed at once.
    pub refused: usize,
    /// Connections the server kept open.
    pub held: usize,
    /// Oversized requests answered 413.
    pub oversized_413: usize,
    pub legit_ok_before: usize,
    pub legit_ok_during: usize,
    pub legit_count: usize,
    pub median_before: Duration,
    pub median_during: Duration,
    /// Held connections the server closed within `wait_for_close`, and how
    /// long after the flood started the last of them was closed.
    pub closed_by_server: usize,
    pub all_closed_after: Option<Duration>,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} flood connections: {} refused at once, {} held; {} oversized -> 413; \
             legit {}/{} ok before (median {:?}), {}/{} ok during the flood (median {:?}); \
             held connections closed by the server: {}/{}{}; RSS {} KiB -> peak {} KiB",
            self.attempted,
            self.refused,
            self.held,
            self.oversized_413,
            self.legit_ok_before,
            self.legit_count,
            self.median_before,
            self.legit_ok_during,
            self.legit_count,
            self.median_during,
            self.closed_by_server,
            self.held,
            self.all_closed_after
                .map(|d| format!(" (all after {:.1} s)", d.as_secs_f64()))
                .unwrap_or_default(),
            self.rss_before_kib,
            self.rss_peak_kib,
        )
    }
}

/// This process's resident memory in KiB (0 if unknown).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn source(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// The status of one whole exchange, or None.
async fn exchange(from: Option<IpAddr>, to: SocketAddr, request: &[u8]) -> Option<u16> {
    let work = async {
        let mut s = match from {
            Some(f) => connect_from(f, to).await.ok()?,
            None => TcpStream::connect(to).await.ok()?,
        };
        // A refused request may be answered (413, 503) before it is sent
        // in full; a failed write is fine then.
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let head = String::from_utf8_lossy(buf.get(..buf.len().min(12))?);
        head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(20), work).await.ok()?
}

async fn legit_round(f: &Flood) -> (usize, Duration) {
    let mut took = Vec::with_capacity(f.legit_count);
    let mut ok = 0;
    for _ in 0..f.legit_count {
        let t = Instant::now();
        if exchange(None, f.target, f.legit.as_bytes()).await == Some(f.legit_status) {
            ok += 1;
        }
        took.push(t.elapsed());
    }
    took.sort();
    (ok, took.get(took.len() / 2).copied().unwrap_or_default())
}

/// Whether the server closed (or refused) the connection within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 503 or a 408: the server answers and closes.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Runs the flood; see the module documentation.
pub async fn run(f: &Flood) -> Report {
    let mut r = Report {
        legit_count: f.legit_count,
        rss_before_kib: rss_kib(),
        ..Report::default()
    };
    (r.legit_ok_before, r.median_before) = legit_round(f).await;
    let started = Instant::now();
    let mut conns = Vec::new();
    for src in 0..f.sources {
        let from = source(src.saturating_add(2));
        for i in 0..f.idle_per_source.saturating_add(f.slow_per_source) {
            r.attempted += 1;
            let Ok(mut s) = connect_from(from, f.target).await else {
                r.refused += 1;
                continue;
            };
            if i < f.slow_per_source {
                // The start of a head, never finished.
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: flood\r\nX-Slow: ").await;
            }
            conns.push(s);
        }
    }
    // Oversized bodies, announced and not: from their own address.
    let big_from = source(f.sources.saturating_add(2));
    let target = f.target;
    let mut oversized = tokio::task::JoinSet::new();
    for i in 0..f.oversized {
        let req = if i % 2 == 0 {
            format!(
                "POST {} HTTP/1.1\r\nHost: flood\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                f.oversized_path,
                1u64 << 30
            )
            .into_bytes()
        } else {
            let mut v = format!(
                "POST {} HTTP/1.1\r\nHost: flood\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                f.oversized_path
            )
            .into_bytes();
            for _ in 0..64 {
                v.extend_from_slice(b"8000\r\n");
                v.extend(std::iter::repeat_n(b'x', 0x8000));
                v.extend_from_slice(b"\r\n");
            }
            v
        };
        oversized.spawn(async move { exchange(Some(big_from), target, &req).await });
    }
    // Which flood connections the server refused at once (503 + close).
    let mut checks = tokio::task::JoinSet::new();
    for mut s in conns {
        checks.spawn(async move { (closed_within(&mut s, Duration::from_millis(200)).await, s) });
    }
    let mut held = Vec::new();
    while let Some(Ok((closed, s))) = checks.join_next().await {
        if closed {
            r.refused += 1;
        } else {
            held.push(s);
        }
    }
    r.held = held.len();
    r.rss_peak_kib = r.rss_peak_kib.max(rss_kib());
    (r.legit_ok_during, r.median_during) = legit_round(f).await;
    r.rss_peak_kib = r.rss_peak_kib.max(rss_kib());
    while let Some(status) = oversized.join_next().await {
        if status.ok().flatten() == Some(413) {
            r.oversized_413 += 1;
        }
    }
    // Does the server let go of idle and slow clients by itself?
    let wait = f.wait_for_close;
    let mut waits = tokio::task::JoinSet::new();
    for mut s in held {
        waits.spawn(async move { closed_within(&mut s, wait).await.then(Instant::now) });
    }
    let mut last: Option<Instant> = None;
    while let Some(done) = waits.join_next().await {
        if let Ok(Some(at)) = done {
            r.closed_by_server += 1;
            last = Some(last.map_or(at, |l| l.max(at)));
        }
    }
    if r.closed_by_server == r.held {
        r.all_closed_after = last.map(|l| l.saturating_duration_since(started));
    }
    r
}
