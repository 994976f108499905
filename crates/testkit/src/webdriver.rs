//! A small blocking WebDriver client for headless Chromium (Debian's
//! `chromium` + `chromium-driver`), shared by every browser test: the
//! operator UI test (center), the LAN page test (router) and
//! `vpnnat-operator` inside the test VM.
//!
//! It starts chromedriver itself ([`Browser::start`]) or attaches to one
//! that already runs ([`Browser::attach`]: the host's, which `scripts/vm-test`
//! forwards into the test VM, so that Chromium runs at native speed rather
//! than under emulation) and talks W3C WebDriver over plain HTTP/1.1, one
//! connection per command. The pages under
//! test reload themselves every few seconds, and Chromium under emulation is
//! slow, so every element lookup is retried until `timeout` and a stale
//! element is looked up again instead of failing the step.
//!
//! Blocking on purpose: the in-VM tool has no runtime, and async tests call
//! it through `tokio::task::block_in_place`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum WebDriverError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WebDriver {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

pub type Result<T> = std::result::Result<T, WebDriverError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WebDriverError {
    let what = what.into();
    move |source| WebDriverError::Io { what, source }
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// chromedriver binary (inside `chroot` when given).
    pub chromedriver: PathBuf,
    /// Chromium binary (inside `chroot` when given); chromedriver's own
    /// choice when `None`.
    pub chromium: Option<PathBuf>,
    /// Run chromedriver (and so Chromium) chrooted into this directory.
    pub chroot: Option<PathBuf>,
    /// chromedriver's port on 127.0.0.1; a free one when `None`.
    pub port: Option<u16>,
    /// Chromium's profile directory; chromedriver's temporary one when `None`.
    pub profile: Option<PathBuf>,
    /// chromedriver's log file (inside `chroot` when given).
    pub log: Option<PathBuf>,
    /// How long to wait for any one thing (driver, element, text).
    pub timeout: Duration,
}

impl BrowserOptions {
    /// chromedriver from `VPNNAT_CHROMEDRIVER` or PATH and Chromium from the
    /// usual Debian places; `Err` says what is missing.
    pub fn from_host(timeout: Duration) -> std::result::Result<BrowserOptions, String> {
        let chromedriver = std::env::var("VPNNAT_CHROMEDRIVER")
            .ok()
            .map(PathBuf::from)
            .or_else(|| find_on_path("chromedriver"))
            .filter(|p| p.exists())
            .ok_or("no chromedriver (PATH or VPNNAT_CHROMEDRIVER)")?;
        let chromium = [Path::new("/usr/bin/chromium"), Path::new("/usr/bin/chromium-browser")]
            .into_iter()
            .find(|b| b.exists())
            .map(Path::to_path_buf)
            .or_else(|| find_on_path("chromium"))
            .ok_or("no chromium")?;
        Ok(BrowserOptions {
            chromedriver,
            chromium: Some(chromium),
            chroot: None,
            port: None,
            profile: None,
            log: None,
            timeout,
        })
    }

    /// The options of a test that needs the browser: `Ok(None)` means
    /// "skip" (said on stderr), unless `VPNNAT_REQUIRE_BROWSER=1`, when a
    /// missing browser is an error.
    pub fn for_test(timeout: Duration) -> std::result::Result<Option<BrowserOptions>, String> {
        match BrowserOptions::from_host(timeout) {
            Ok(o) => Ok(Some(o)),
            Err(why) if std::env::var("VPNNAT_REQUIRE_BROWSER").as_deref() == Ok("1") => {
                Err(format!("{why} and VPNNAT_REQUIRE_BROWSER=1"))
            }
            Err(why) => {
                eprintln!("SKIPPED: {why} (apt-get install chromium chromium-driver)");
                Ok(None)
            }
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// A chromedriver process with one Chromium session. Dropping it closes the
/// browser through chromedriver (killing chromedriver alone would orphan
/// Chromium), then stops chromedriver.
#[derive(Debug)]
pub struct Browser {
    /// The chromedriver we started; `None` when attached to a running one.
    child: Option<Child>,
    driver: SocketAddr,
    session: String,
    timeout: Duration,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = wd(self.driver, "DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session.
    pub fn start(o: &BrowserOptions) -> Result<Browser> {
        let port = match o.port {
            Some(p) => p,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(io("picking a port for chromedriver"))?,
        };
        let mut cmd = match &o.chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&o.chromedriver);
                c
            }
            None => Command::new(&o.chromedriver),
        };
        cmd.arg(format!("--port={port}"));
        if let Some(log) = &o.log {
            cmd.arg(format!("--log-path={}", log.display()));
        }
        if o.chroot.is_some() {
            // Chromium writes its profile, crash reports and font cache
            // under $HOME: a tmpfs, since the browser root is read-only.
            cmd.env("HOME", "/tmp");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(format!("starting {}", o.chromedriver.display())))?;
        let mut b = Browser {
            child: Some(child),
            driver: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            timeout: o.timeout,
        };
        let start = Instant::now();
        while TcpStream::connect(b.driver).is_err() {
            if start.elapsed() > o.timeout {
                return Err(WebDriverError::Timeout(format!(
                    "chromedriver did not listen on 127.0.0.1:{port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        b.open_session(o, start)?;
        Ok(b)
    }

    /// Opens a headless Chromium session on a chromedriver that already
    /// runs at `driver` (`o.chromedriver`, `o.chroot` and `o.port` are not
    /// used; `o.chromium` is a path on the driver's machine).
    pub fn attach(driver: SocketAddr, o: &BrowserOptions) -> Result<Browser> {
        let mut b = Browser {
            child: None,
            driver,
            session: String::new(),
            timeout: o.timeout,
        };
        b.open_session(o, Instant::now())?;
        Ok(b)
    }

    /// Creates the WebDriver session (retried while chromedriver says
    /// "session not created" and `start + o.timeout` is not reached).
    fn open_session(&mut self, o: &BrowserOptions, start: Instant) -> Result<()> {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1400,1000".to_owned(),
        ];
        if let Some(p) = &o.profile {
            args.push(format!("--user-data-dir={}", p.display()));
        }
        let mut opts = json!({ "args": args });
        if let Some(c) = &o.chromium {
            opts["binary"] = json!(c);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts}}});
        // Chromium's first start reads its ~500 MB from a cold disk; under
        // emulation on a loaded host that can outlast chromedriver's own
        // wait ("session not created ... chrome not reachable"). A second
        // start finds the files in the page cache: retry a few times
        // within the caller's timeout.
        let mut attempt = 1;
        let created = loop {
            match wd(self.driver, "POST", "/session", Some(caps.clone())) {
                Err(WebDriverError::Protocol(m))
                    if m.contains("session not created") && attempt < 3 && start.elapsed() < o.timeout =>
                {
                    eprintln!(
                        "# browser: session not created on attempt {attempt} ({:.1} s), retrying",
                        start.elapsed().as_secs_f64()
                    );
                    attempt += 1;
                }
                other => break other,
            }
        };
        let v = created.map_err(|e| match &o.log {
            Some(log) => {
                let file = match &o.chroot {
                    Some(root) => root.join(log.strip_prefix("/").unwrap_or(log)),
                    None => log.clone(),
                };
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                WebDriverError::Protocol(format!(
                    "{e}; chromedriver log ({}):\n{}",
                    file.display(),
                    tail.join("\n")
                ))
            }
            None => e,
        })?;
        self.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError::Protocol(format!("chromedriver gave no session: {v}")))?
            .to_owned();
        Ok(())
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        wd(self.driver, "POST", &self.path("/url"), Some(json!({ "url": url })))?;
        Ok(())
    }

    /// The element `css` if it is there now.
    pub fn find(&self, css: &str) -> Result<Option<String>> {
        let body = json!({"using": "css selector", "value": css});
        match wd_raw(self.driver, "POST", &self.path("/element"), Some(body))? {
            (200, v) => Ok(v["value"][ELEMENT].as_str().map(str::to_owned)),
            // "no such element": not there (yet)
            (404, _) => Ok(None),
            (status, v) => Err(WebDriverError::Protocol(format!("find {css}: {status} {v}"))),
        }
    }

    /// Waits (through the page's own reloads) until `css` exists.
    pub fn wait_for(&self, css: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find(css)? {
                return Ok(e);
            }
            if start.elapsed() > self.timeout {
                return Err(WebDriverError::Timeout(format!("{css} never appeared")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GETs `what` (e.g. "text", "attribute/class") of `css`, looking the
    /// element up again when a reload made it stale.
    fn element_get(&self, css: &str, what: &str) -> Result<Value> {
        let start = Instant::now();
        loop {
            let e = self.wait_for(css)?;
            let (status, v) = wd_raw(self.driver, "GET", &self.path(&format!("/element/{e}/{what}")), None)?;
            if status == 200 {
                return Ok(v["value"].clone());
            }
            if !is_stale(&v) || start.elapsed() > self.timeout {
                return Err(WebDriverError::Protocol(format!("{what} of {css}: {status} {v}")));
            }
        }
    }

    /// The visible text of `css` (waits for it to exist).
    pub fn text(&self, css: &str) -> Result<String> {
        Ok(self.element_get(css, "text")?.as_str().unwrap_or_default().to_owned())
    }

    /// The attribute `name` of `css` (waits for it to exist).
    pub fn attr(&self, css: &str, name: &str) -> Result<String> {
        Ok(self
            .element_get(css, &format!("attribute/{name}"))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits until the text of `css` is `want`. Each look finds the element
    /// and reads its text inside the page in one script call (as
    /// [`Browser::press`] does): with the page reloading itself every few
    /// seconds and Chromium slowed down by emulation, a WebDriver "find"
    /// then "get text" pair kept landing on a page mid-reload and read ""
    /// for minutes although the page showed `want` in between.
    pub fn wait_text(&self, css: &str, want: &str) -> Result<()> {
        let start = Instant::now();
        let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;";
        let mut last = String::new();
        loop {
            let body = json!({"script": script, "args": [css]});
            let (status, v) = wd_raw(self.driver, "POST", &self.path("/execute/sync"), Some(body))?;
            if status == 200 {
                if let Some(t) = v["value"].as_str() {
                    if t == want {
                        return Ok(());
                    }
                    t.clone_into(&mut last);
                }
            }
            if start.elapsed() > self.timeout {
                return Err(WebDriverError::Timeout(format!("{css} reads {last:?}, never {want:?}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `script` in the page (a function body; `return` gives its
    /// value) and returns what it returned.
    pub fn script(&self, script: &str) -> Result<Value> {
        let body = json!({"script": script, "args": []});
        let v = wd(self.driver, "POST", &self.path("/execute/sync"), Some(body))?;
        Ok(v["value"].clone())
    }

    /// A PNG of the viewport, base64-encoded as WebDriver returns it.
    pub fn screenshot_base64(&self) -> Result<String> {
        let v = wd(self.driver, "GET", &self.path("/screenshot"), None)?;
        v["value"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| WebDriverError::Protocol(format!("screenshot: no image in {v}")))
    }

    /// Clicks `css` as a user would (WebDriver element click: selects an
    /// `<option>`, ticks a box, presses a button).
    pub fn click(&self, css: &str) -> Result<()> {
        self.on_element(css, "click", json!({}))
    }

    /// Presses the button `css`, found and clicked inside the page in one
    /// step: on a page that reloads itself, with Chromium slowed down by
    /// emulation, a reload between a WebDriver "find" and "click" can leave
    /// a stale element more often than a retry can catch.
    pub fn press(&self, css: &str) -> Result<()> {
        let start = Instant::now();
        let script = "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;";
        loop {
            let body = json!({"script": script, "args": [css]});
            let (status, v) = wd_raw(self.driver, "POST", &self.path("/execute/sync"), Some(body))?;
            if status == 200 && v["value"] == json!(true) {
                return Ok(());
            }
            if start.elapsed() > self.timeout {
                return Err(WebDriverError::Timeout(format!("could not press {css}: {status} {v}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `text` into the field `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        self.on_element(css, "value", json!({ "text": text }))
    }

    /// Finds `css` and sends it `action`; an element that went stale in a
    /// reload between the two is looked up again.
    fn on_element(&self, css: &str, action: &str, body: Value) -> Result<()> {
        let start = Instant::now();
        loop {
            let e = self.wait_for(css)?;
            let path = self.path(&format!("/element/{e}/{action}"));
            let (status, v) = wd_raw(self.driver, "POST", &path, Some(body.clone()))?;
            if status == 200 {
                return Ok(());
            }
            if !is_stale(&v) || start.elapsed() > self.timeout {
                return Err(WebDriverError::Protocol(format!("{action} on {css}: {status} {v}")));
            }
        }
    }
}

fn is_stale(v: &Value) -> bool {
    v["value"]["error"].as_str() == Some("stale element reference")
}

/// One WebDriver command; anything but 200 is an error.
fn wd(driver: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    match wd_raw(driver, method, path, body)? {
        (200, v) => Ok(v),
        (status, v) => Err(WebDriverError::Protocol(format!("{method} {path}: {status} {v}"))),
    }
}

/// One WebDriver command over HTTP/1.1 (one connection each; chromedriver
/// answers with Content-Length): the status code and the JSON answer.
fn wd_raw(driver: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(driver).map_err(io(format!("connecting to chromedriver at {driver}")))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(io(format!("chromedriver socket to {driver}")))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // Host: localhost whatever address we dialled. chromedriver refuses any
    // other Host (403, its guard against DNS rebinding), and a driver
    // reached through a forward (the host's, from inside the test VM) is
    // still a local one to itself.
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        driver.port(),
        body.len()
    )
    .map_err(io(format!("writing to chromedriver at {driver}")))?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)
        .map_err(io(format!("reading the answer of chromedriver at {driver}")))?;
    let mut len: Option<usize> = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)
            .map_err(io(format!("reading the answer of chromedriver at {driver}")))?
            == 0
        {
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
            r.read_exact(&mut buf)
                .map_err(io(format!("reading the answer of chromedriver at {driver}")))?;
        }
        None => {
            r.read_to_end(&mut buf)
                .map_err(io(format!("reading the answer of chromedriver at {driver}")))?;
        }
    }
    let v: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| WebDriverError::Protocol(format!("chromedriver sent no status line: {status:?}")))?;
    Ok((code, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chromedriver_that_does_not_listen_times_out_with_a_clear_error() {
        let o = BrowserOptions {
            chromedriver: PathBuf::from("/bin/sleep"),
            chromium: None,
            chroot: None,
            port: None,
            profile: None,
            log: None,
            timeout: Duration::from_millis(300),
        };
        // `sleep --port=N` exits at once with a usage error: never listens.
        match Browser::start(&o) {
            Err(WebDriverError::Timeout(m)) => assert!(m.contains("did not listen"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a browser from /bin/sleep"),
        }
    }

    #[test]
    fn attaching_to_an_address_without_a_chromedriver_names_the_address() {
        // A port that was free a moment ago: nothing should listen there,
        // but another test may take it meanwhile (seen once in a full
        // suite: the connect got through and the write failed), so every
        // step's error names the address.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let o = BrowserOptions {
            chromedriver: PathBuf::from("/nonexistent"),
            chromium: None,
            chroot: None,
            port: None,
            profile: None,
            log: None,
            timeout: Duration::from_millis(300),
        };
        match Browser::attach(addr, &o) {
            Err(WebDriverError::Io { what, .. }) => assert!(what.contains(&addr.to_string()), "{what}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a session without a chromedriver"),
        }
    }
}
