//! The local LAN page in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` + `chromedriver`), against the daemon with a fake
//! center and the in-memory datapath: a LAN user fills in the form and sees
//! the acceptance number and the state as the center reports it (the open
//! page follows the center's end command by itself); a device
//! that vanished between loading the page and sending it is a clear error
//! on the page, and nothing is half-installed.
//!
//! Needs `chromedriver` (PATH, or `VPNNAT_CHROMEDRIVER`) and chromium; without
//! them the test prints SKIPPED and passes, unless `VPNNAT_REQUIRE_BROWSER=1`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::unix_now;
use crate::shell_tests::{config, start_center, tmpdir, Running};

const T: Duration = Duration::from_secs(15);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_on_path(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

/// chromedriver and the browser, or why not.
fn browser() -> Result<(String, String), String> {
    let driver = std::env::var("VPNNAT_CHROMEDRIVER")
        .ok()
        .or_else(|| find_on_path("chromedriver"))
        .filter(|p| std::path::Path::new(p).exists())
        .ok_or("no chromedriver (PATH or VPNNAT_CHROMEDRIVER)")?;
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists())
        .map(str::to_owned)
        .or_else(|| find_on_path("chromium"))
        .ok_or("no chromium")?;
    Ok((driver, chromium))
}

struct Driver {
    child: Child,
    port: u16,
    session: String,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Close the browser through chromedriver even when the test failed
        // (killing chromedriver alone would orphan chromium).
        if !self.session.is_empty() {
            use std::io::{Read as _, Write as _};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session
                );
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

impl Driver {
    async fn start(driver: &str, chromium: &str, profile: std::path::PathBuf) -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Driver {
            child,
            port,
            session: String::new(),
            profile,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(start.elapsed() < T, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let user_data = format!("--user-data-dir={}", d.profile.display());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            user_data.as_str(),
        ];
        let v = wd(
            port,
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}
            }}})),
        )
        .await;
        d.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        d
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(self.port, method, &format!("/session/{}{path}", self.session), body).await
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    async fn wait_for(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(start.elapsed() < T, "{css} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let e = self.wait_for(css).await;
        let v = self.cmd("GET", &format!("/element/{e}/text"), None).await;
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the text of `css` is `want` (the page updates itself).
    async fn wait_text(&self, css: &str, want: &str) {
        let start = Instant::now();
        loop {
            let got = self.text(css).await;
            if got == want {
                return;
            }
            assert!(start.elapsed() < T, "{css} reads {got:?}, never {want:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        let e = self.wait_for(css).await;
        let v = self.cmd("GET", &format!("/element/{e}/attribute/{name}"), None).await;
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.wait_for(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })))
            .await;
    }

    /// Submits the form and waits for the result page (a new `#result`).
    async fn submit(&self) -> String {
        self.click("#send").await;
        self.text("#result").await
    }

    async fn fill(&self, name: &str, level: &str, terminal: &str, urgency: &str, phone: &str, content: &str) {
        self.type_into("#claimant_name", name).await;
        self.click(&format!("#claimant_level option[value={level}]")).await;
        self.click(&format!("input[name=terminal][value={terminal}]")).await;
        self.click(&format!("#urgency option[value={urgency}]")).await;
        self.type_into("#phone", phone).await;
        self.type_into("#content", content).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_user_asks_for_maintenance_in_chromium() {
    let (driver, chromium) = match browser() {
        Ok(b) => b,
        Err(why) => {
            if std::env::var("VPNNAT_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{why} and VPNNAT_REQUIRE_BROWSER=1");
            }
            eprintln!("SKIPPED: {why} (apt-get install chromium chromium-driver)");
            return;
        }
    };
    let dir = tmpdir("browser");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    // A DHCP client the page will offer (static hosts: pc1, printer).
    let lease_file = dir.join("leases");
    std::fs::write(
        &lease_file,
        format!("{} 02:00:00:00:00:33 192.168.1.33 laptop *\n", unix_now() + 3600),
    )
    .unwrap();
    let rt = Running::start(cfg).await;
    rt.wait_installed().await;
    let base = format!("http://{}/", rt.lan);

    let b = Driver::start(&driver, &chromium, dir.join("chromium-profile")).await;
    b.goto(&base).await;
    assert!(b.text("body").await.contains("installed"));
    // Every known host is offered: static table and lease.
    for h in ["pc1", "printer", "laptop"] {
        b.wait_for(&format!("input[name=terminal][value={h}]")).await;
    }
    assert!(b.find("#request-101").await.is_none());

    // The form, sent: acceptance number and state on the page.
    b.fill(
        "Hanako <Yamada>",
        "administrator",
        "pc1",
        "high",
        "+81 3 1234 5678",
        "the printer is offline",
    )
    .await;
    let result = b.submit().await;
    assert_eq!(result, "Request accepted: acceptance number 101 for pc1.");
    assert_eq!(b.attr("#result", "class").await, "ok");
    assert_eq!(b.text("#request-101 .state").await, "waiting");
    let row = b.text("#request-101").await;
    assert!(
        row.contains("Hanako <Yamada>") && row.contains("pc1"),
        "escaped, shown as text: {row}"
    );
    assert_eq!(rt.mappings().await, 3, "own two parts and pc1");
    {
        let c = center.0.lock().unwrap();
        assert_eq!(
            c.seen,
            [
                "/v1/router/install",
                "/v1/router/gateway-address",
                "/v1/router/maintenance"
            ]
        );
    }
    let st = rt.router.state().await;
    let r = &st.requests[&101];
    assert_eq!(r.claimant_level, vpnnat_proto::types::ClaimantLevel::Administrator);
    assert_eq!(r.urgency, vpnnat_proto::types::Urgency::High);

    // The center ends the maintenance: the open page follows by itself.
    let end = center.0.lock().unwrap().end(101);
    let (s, _, _) = rt.command(&end).await;
    assert_eq!(s, 200);
    b.wait_text("#request-101 .state", "ended").await;

    // The lease of "laptop" runs out between loading the page and sending
    // it: a clear error on the page, no request to the center, nothing
    // installed.
    b.goto(&base).await;
    b.fill("Taro", "general", "laptop", "low", "123-4567", "slow").await;
    std::fs::write(&lease_file, "").unwrap();
    let seen_before = center.0.lock().unwrap().seen.len();
    let result = b.submit().await;
    assert_eq!(
        result,
        "unknown extension terminal \"laptop\": not in the host table, the DHCP leases or DNS"
    );
    assert_eq!(b.attr("#result", "class").await, "err");
    assert_eq!(rt.mappings().await, 3, "nothing half-installed");
    assert_eq!(
        center.0.lock().unwrap().seen.len(),
        seen_before,
        "the center was not asked"
    );
    assert_eq!(rt.router.state().await.requests.len(), 1);
    assert!(
        b.find("input[name=terminal][value=laptop]").await.is_none(),
        "gone from the list"
    );
    drop(b);
    rt.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
