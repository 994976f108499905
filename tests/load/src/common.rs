//! What both load modes share: arguments, the daemons' memory, the
//! operator's UI session (login, CSRF token, start/end clicks) and
//! centerd's own tool for the end-of-run checks.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// (VmRSS, VmHWM) in KiB.
pub fn rss_of(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// Resets the process's peak RSS (VmHWM) so each round reports its own.
pub fn reset_peak(pid: u32) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))
    {
        let _ = f.write_all(b"5");
    }
}

/// One HTTP/1.1 request on its own connection; (status, head, body).
pub async fn http(addr: &str, req: String) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "UI answer timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

pub async fn ui_login(ui: &str, password: &str) -> String {
    let body = format!("password={password}");
    let (status, head, _) = http(
        ui,
        format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap();
    head.lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("set-cookie: ")
                .and_then(|c| c.split(';').next().map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("operator login failed: HTTP {status}"))
}

/// The session's CSRF token, from the hidden field of the operator's page
/// (every state-changing form must carry it).
pub async fn ui_csrf(ui: &str, cookie: &str) -> String {
    let (status, _, body) = http(
        ui,
        format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    let marker = "name=\"csrf\" value=\"";
    let at = body
        .find(marker)
        .unwrap_or_else(|| panic!("no CSRF field on the operator's page (HTTP {status})"));
    let rest = &body[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The operator presses start or end on request `n`; Ok (with the UI's
/// message) if the UI says it was done.
pub async fn ui_action(ui: &str, session: &UiSession, n: u64, what: &str) -> Result<String, String> {
    let _click = session.inflight.acquire().await.map_err(|e| e.to_string())?;
    // An end needs a reason (issue 20, item 6).
    let body = if what == "end" {
        format!("csrf={}&reason=load+cycle", session.csrf)
    } else {
        format!("csrf={}", session.csrf)
    };
    let (status, head, _) = http(
        ui,
        format!(
            "POST /requests/{n}/{what} HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            session.cookie,
            body.len()
        ),
    )
    .await?;
    let loc = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .unwrap_or("")
        .replace("%20", " ")
        .replace('+', " ");
    let done = if what == "start" {
        format!("Request {n} started")
    } else {
        format!("Request {n} ended")
    };
    if (status == 303 || status == 302) && loc.contains(&done) && (what == "start" || loc.contains("VPN ended")) {
        return Ok(loc);
    }
    Err(format!("{what} {n}: HTTP {status} {loc}"))
}

/// The operator's logged-in session.
pub struct UiSession {
    pub cookie: String,
    pub csrf: String,
    /// The UI serves at most 64 connections per client address (one
    /// operator); the load's operator keeps 32 clicks in flight.
    pub inflight: Semaphore,
}

/// Per-round outcome counts.
#[derive(Default)]
pub struct Counters {
    pub errors: AtomicU64,
    pub cycles: AtomicU64,
}

pub fn run_tool(bin: &Path, config: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin.join("centerd"))
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "centerd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
