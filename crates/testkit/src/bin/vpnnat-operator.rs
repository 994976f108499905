//! `vpnnat-operator`: the maintenance operator's steps in the center's web
//! UI, done in a real headless Chromium through chromedriver (WebDriver).
//! The end-to-end scenario in the test VM uses it so that at least one
//! request is started and ended the way a person would: log in, find the
//! request's row, press the button, watch the state change.
//!
//! It starts chromedriver itself (optionally inside a chroot that carries
//! Chromium, see scripts/vm/browser-root.sh), talks WebDriver over plain
//! HTTP/1.1 on 127.0.0.1, and prints one `ok   - ...` / `FAIL - ...` line
//! per step, so a shell scenario can count them. Exit status 0 when every
//! step passed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// chromedriver's log (inside the chroot when there is one).
const CHROMEDRIVER_LOG: &str = "/tmp/vpnnat-chromedriver.log";

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[derive(Parser, Debug)]
#[command(
    name = "vpnnat-operator",
    version,
    about = "The operator's steps in the center's web UI, in headless Chromium via chromedriver"
)]
struct Cli {
    /// Base URL of the operator UI, e.g. http://172.16.0.10:8443
    #[arg(long)]
    ui: String,
    /// Read the operator password from this file (first line).
    #[arg(long)]
    password_file: PathBuf,
    /// chromedriver binary (inside --chroot when given).
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    chromedriver: String,
    /// Chromium binary (inside --chroot when given).
    #[arg(long, default_value = "/usr/lib/chromium/chromium")]
    chromium: String,
    /// Run chromedriver (and so Chromium) chrooted into this directory.
    #[arg(long)]
    chroot: Option<PathBuf>,
    /// TCP port for chromedriver on 127.0.0.1.
    #[arg(long, default_value_t = 9515)]
    port: u16,
    /// How long to wait for any one thing (page, element, state).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Log in (a wrong password first must be refused), check the request
    /// list shows, log out.
    Login,
    /// Log in and press "start" on request N; wait for "in progress".
    Start {
        acceptance_number: u64,
        /// Then, in the same browser session, wait until this file exists
        /// and press "end" on request N (Chromium starts slowly under
        /// emulation: one session for both steps).
        #[arg(long)]
        end_when: Option<PathBuf>,
    },
    /// Log in and press "end" on request N; wait for "ended".
    End { acceptance_number: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("FAIL - browser: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let password = std::fs::read_to_string(&cli.password_file)
        .with_context(|| format!("reading {}", cli.password_file.display()))?;
    let password = password.lines().next().unwrap_or_default().to_owned();
    let timeout = Duration::from_secs(cli.timeout_secs);
    let started = Instant::now();
    let b = Browser::start(cli, timeout)?;
    println!(
        "# browser: chromium session up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut report = Report::default();
    let base = cli.ui.trim_end_matches('/');
    b.goto(&format!("{base}/"))?;
    match &cli.step {
        Step::Login => {
            b.type_into("#password", "not the password")?;
            b.click("#login")?;
            let msg = b.text("#message")?;
            report.check("UI refuses a wrong operator password", msg == "Wrong password.", &msg);
            login(&b, &password, &mut report)?;
            b.click("#logout")?;
            let back = b.wait_for("#login").is_ok();
            report.check("UI logs the operator out", back, "no login form after logout");
        }
        Step::Start {
            acceptance_number: n,
            end_when,
        } => {
            login(&b, &password, &mut report)?;
            let row = format!("#request-{n}");
            b.wait_for(&row)?;
            let state = b.text(&format!("{row} .state"))?;
            report.check(&format!("UI shows request {n} as waiting"), state == "waiting", &state);
            b.click(&format!("#start-{n}"))?;
            let got = b.wait_text(&format!("{row} .state"), "in progress");
            report.check(
                &format!("UI start button puts request {n} in progress"),
                got.is_ok(),
                &format!("{got:?}"),
            );
            if let Some(go) = end_when {
                // Flushed so that a caller waiting for the start line sees it.
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                while !go.exists() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                end(&b, *n, &mut report)?;
            }
        }
        Step::End { acceptance_number: n } => {
            login(&b, &password, &mut report)?;
            end(&b, *n, &mut report)?;
        }
    }
    drop(b);
    Ok(report.failed == 0)
}

fn end(b: &Browser, n: u64, report: &mut Report) -> Result<()> {
    let row = format!("#request-{n}");
    b.click(&format!("#end-{n}"))?;
    let got = b.wait_text(&format!("{row} .state"), "ended");
    report.check(
        &format!("UI end button ends request {n}"),
        got.is_ok(),
        &format!("{got:?}"),
    );
    let msg = b.text("#message").unwrap_or_default();
    println!("# browser: UI message after end: {msg}");
    Ok(())
}

fn login(b: &Browser, password: &str, report: &mut Report) -> Result<()> {
    b.type_into("#password", password)?;
    b.click("#login")?;
    let ok = b.wait_for("#requests").is_ok();
    report.check("UI logs the operator in", ok, "no request list after login");
    if !ok {
        bail!("login failed");
    }
    Ok(())
}

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            println!("ok   - {name}");
        } else {
            self.failed += 1;
            println!("FAIL - {name}");
            println!("       | {detail}");
        }
    }
}

struct Browser {
    child: Child,
    port: u16,
    session: String,
    timeout: Duration,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Close Chromium through chromedriver (killing chromedriver alone
        // would orphan the browser), then stop chromedriver.
        if !self.session.is_empty() {
            let _ = wd(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(cli: &Cli, timeout: Duration) -> Result<Browser> {
        let mut cmd = match &cli.chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&cli.chromedriver);
                c
            }
            None => Command::new(&cli.chromedriver),
        };
        // Chromium writes its profile, crash reports and font cache under
        // $HOME: a tmpfs, since the browser root is read-only.
        let child = cmd
            .arg(format!("--port={}", cli.port))
            .arg(format!("--log-path={CHROMEDRIVER_LOG}"))
            .env("HOME", "/tmp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", cli.chromedriver))?;
        let mut b = Browser {
            child,
            port: cli.port,
            session: String::new(),
            timeout,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", cli.port)).is_err() {
            if start.elapsed() > timeout {
                bail!("chromedriver did not listen on 127.0.0.1:{}", cli.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let opts = json!({
            "binary": cli.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                "--user-data-dir=/tmp/vpnnat-operator-profile",
            ],
        });
        let v = wd(
            cli.port,
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts}}})),
        )
        .map_err(|e| {
            let log_file = match &cli.chroot {
                Some(root) => root.join(CHROMEDRIVER_LOG.trim_start_matches('/')),
                None => PathBuf::from(CHROMEDRIVER_LOG),
            };
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!(
                "chromedriver log ({}):\n{}",
                log_file.display(),
                tail.join("\n")
            ))
        })?;
        b.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver gave no session: {v}"))?
            .to_owned();
        Ok(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        wd(self.port, method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    fn find(&self, css: &str) -> Result<Option<String>> {
        let body = json!({"using": "css selector", "value": css});
        let (status, v) = wd_raw(
            self.port,
            "POST",
            &format!("/session/{}/element", self.session),
            Some(body),
        )?;
        match status {
            200 => Ok(v["value"][ELEMENT].as_str().map(str::to_owned)),
            // "no such element": not there (yet)
            404 => Ok(None),
            _ => bail!("WebDriver find {css}: {status} {v}"),
        }
    }

    /// Waits (through the page's own reloads) until `css` exists.
    fn wait_for(&self, css: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find(css)? {
                return Ok(e);
            }
            if start.elapsed() > self.timeout {
                bail!("{css} never appeared");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn text(&self, css: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            let e = self.wait_for(css)?;
            let path = format!("/session/{}/element/{e}/text", self.session);
            let (status, v) = wd_raw(self.port, "GET", &path, None)?;
            if status == 200 {
                return Ok(v["value"].as_str().unwrap_or_default().to_owned());
            }
            let stale = v["value"]["error"].as_str() == Some("stale element reference");
            if !stale || start.elapsed() > self.timeout {
                bail!("WebDriver text of {css}: {status} {v}");
            }
        }
    }

    /// Waits until the text of `css` is `want` (the page reloads itself;
    /// an element that went stale in a reload is looked up again).
    fn wait_text(&self, css: &str, want: &str) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(t) = self.text(css) {
                if t == want {
                    return Ok(());
                }
                last = t;
            }
            if start.elapsed() > self.timeout {
                bail!("{css} reads {last:?}, never {want:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Presses the button `css`. Found and clicked inside the page in one
    /// step: the UI reloads itself every few seconds and, with Chromium
    /// slowed down by emulation, a reload between a WebDriver "find" and
    /// "click" leaves a stale element.
    fn click(&self, css: &str) -> Result<()> {
        let start = Instant::now();
        let script = "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;";
        loop {
            let path = format!("/session/{}/execute/sync", self.session);
            let (status, v) = wd_raw(self.port, "POST", &path, Some(json!({"script": script, "args": [css]})))?;
            if status == 200 && v["value"] == json!(true) {
                return Ok(());
            }
            if start.elapsed() > self.timeout {
                bail!("could not press {css}: {status} {v}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn type_into(&self, css: &str, text: &str) -> Result<()> {
        self.on_element(css, "value", json!({ "text": text }))
    }

    /// Finds `css` and sends it `action`; the UI reloads itself every few
    /// seconds, so an element can go stale between the two: find it again.
    fn on_element(&self, css: &str, action: &str, body: Value) -> Result<()> {
        let start = Instant::now();
        loop {
            let e = self.wait_for(css)?;
            let path = format!("/session/{}/element/{e}/{action}", self.session);
            let (status, v) = wd_raw(self.port, "POST", &path, Some(body.clone()))?;
            if status == 200 {
                return Ok(());
            }
            let stale = v["value"]["error"].as_str() == Some("stale element reference");
            if !stale || start.elapsed() > self.timeout {
                bail!("WebDriver {action} on {css}: {status} {v}");
            }
        }
    }
}

/// One WebDriver command; anything but 200 is an error.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let (status, v) = wd_raw(port, method, path, body)?;
    if status != 200 {
        bail!("WebDriver {method} {path}: {status} {v}");
    }
    Ok(v)
}

/// One WebDriver command over HTTP/1.1 (one connection each; chromedriver
/// answers with Content-Length): the status code and the JSON answer.
fn wd_raw(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connecting to chromedriver")?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut len: Option<usize> = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    let mut buf = Vec::new();
    match len {
        Some(n) => {
            buf.resize(n, 0);
            r.read_exact(&mut buf)?;
        }
        None => {
            r.read_to_end(&mut buf)?;
        }
    }
    let v: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("chromedriver sent no status line: {status:?}"))?;
    Ok((code, v))
}
