//! The operator UI in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` + `chromium-driver`): log in, see a maintenance
//! request appear (the page reloads itself), press start and end, watch the
//! state change and the address come back to the pool.
//!
//! Needs `chromedriver` on PATH (or `VPNNAT_CHROMEDRIVER`); without it the
//! test says SKIPPED and passes, unless `VPNNAT_REQUIRE_BROWSER=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_center::api::{run_with, ApiSettings};
use vpnnat_center::center::{Center, CenterSettings, GatewayEntry};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::config::HttpEndpoint;
use vpnnat_center::gateway::driver::PolicyDriver;
use vpnnat_center::gateway::{self, Gatewayd};
use vpnnat_center::http::{call, call_with};
use vpnnat_center::password::PasswordHash;
use vpnnat_center::storage::Storage;
use vpnnat_center::ui::{self, UiSettings};
use vpnnat_datapath::RecordingDatapath;
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword, SecretBytes, SecretId};
use vpnnat_proto::messages::{InstallRequest, MaintenanceDetails, MaintenanceRequest};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    BoundedSet, ClaimantLevel, ClaimantName, GatewayName, IkeIdentity, Phone, RequestContent, TerminalId, TerminalName,
    TerminalNames, UnicastAddr, Urgency,
};

const T: Duration = Duration::from_secs(10);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromedriver() -> Option<String> {
    if let Ok(p) = std::env::var("VPNNAT_CHROMEDRIVER") {
        return Some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| format!("{d}/chromedriver"))
        .find(|p| std::path::Path::new(p).exists())
}

struct Driver {
    child: Child,
    port: u16,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Close the browser through chromedriver even when the test failed
        // (killing chromedriver alone would orphan chromium): a blocking
        // DELETE, since Drop cannot await.
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
    async fn start(bin: &str) -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Driver {
            child,
            port,
            session: String::new(),
        };
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            assert!(start.elapsed() < T, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ];
        args.push("--window-size=1400,1000");
        let mut opts = json!({ "args": args });
        for b in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
            if std::path::Path::new(b).exists() {
                opts["binary"] = json!(b);
                break;
            }
        }
        let v = wd(
            port,
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts}}})),
        )
        .await;
        d.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
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

    /// Waits (through the page's own reloads) until `css` exists.
    async fn wait_for(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(start.elapsed() < T, "{css} never appeared");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let e = self.wait_for(css).await;
        let v = self.cmd("GET", &format!("/element/{e}/text"), None).await;
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the text of `css` is `want` (the page reloads itself).
    async fn wait_text(&self, css: &str, want: &str) {
        let start = Instant::now();
        loop {
            if self.text(css).await == want {
                return;
            }
            assert!(start.elapsed() < T, "{css} never read {want:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_logs_in_starts_and_ends_a_request_in_chromium() {
    let Some(bin) = chromedriver() else {
        if std::env::var("VPNNAT_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("chromedriver not found and VPNNAT_REQUIRE_BROWSER=1");
        }
        eprintln!("SKIPPED: no chromedriver on PATH (apt-get install chromium chromium-driver)");
        return;
    };

    // gatewayd (recording datapath) and centerd (API + UI), all on loopback.
    let master = FactoryMasterKey::from_array([3; 32]);
    let gw_key = GatewayApiKey::from_array([4; 32]);
    let gw_name = GatewayName::new("gw1").unwrap();
    let bind = || async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    };
    let (api_l, api_addr) = bind().await;
    let (ui_l, ui_addr) = bind().await;
    let (gw_l, gw_addr) = bind().await;
    let (tx, rx) = unbounded_channel();
    let driver = PolicyDriver::new(
        RecordingDatapath::new(),
        Ipv4Addr::new(198, 51, 100, 21),
        vec!["172.16.0.0/24".parse().unwrap()],
        1000,
        tx,
    );
    let gwd = Arc::new(Gatewayd::new(gw_name.clone(), gw_key.clone(), Box::new(driver)).unwrap());
    tokio::spawn(gateway::run(gw_l, std::future::pending(), gwd));
    tokio::spawn(gateway::forward_events(
        rx,
        HttpEndpoint::parse(&format!("http://{api_addr}")).unwrap(),
        gw_name.clone(),
        gw_key.clone(),
        T,
    ));
    let mut st = Storage::open_in_memory().unwrap();
    st.init_pool(&"10.64.0.0/16".parse().unwrap()).unwrap();
    let settings = CenterSettings {
        factory_master_key: master.clone(),
        maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
        maintenance_password_hash: "x".into(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        gateways: vec![GatewayEntry {
            name: gw_name.clone(),
            global_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 21)).unwrap(),
            ike_id: IkeIdentity::new("gw1.center.example").unwrap(),
            api_key: gw_key.clone(),
            slots: 4,
            next_hop: None,
        }],
        replay: ReplayConfig::default(),
        tunnel_up_timeout: Duration::from_millis(100),
    };
    let gws = HttpGateways::new(vec![(gw_name.clone(), gw_addr, gw_key)], T);
    let center = Arc::new(Center::new(st, settings, gws, HttpRouters::new(8080, T)).unwrap());
    let api = ApiSettings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
    };
    tokio::spawn(run_with(api_l, std::future::pending(), center.clone(), api));
    let ui_settings = UiSettings {
        operator_hashes: vec![PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: None,
        throttle: Default::default(),
    };
    tokio::spawn(ui::run(ui_l, std::future::pending(), center.clone(), ui_settings));

    // The router installs.
    let rng = SystemRandom::new();
    let id = TerminalId::new("router-1").unwrap();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let sid = SecretId::derive(&master, &id).mac_key();
    let secrets = call(
        &api_addr,
        &id,
        &sid,
        &InstallRequest {
            reply_key: kp.public_key(),
        },
        T,
        &rng,
    )
    .await
    .unwrap()
    .open(kp, &id)
    .unwrap();
    let sid2 = secrets.secret_id2().clone();

    // The operator logs in; the list is empty.
    let b = Driver::start(&bin).await;
    let base = format!("http://{ui_addr}");
    b.goto(&format!("{base}/")).await;
    b.type_into("#password", "wrong").await;
    b.click("#login").await;
    assert_eq!(b.text("#message").await, "Wrong password.");
    b.type_into("#password", "operator pass").await;
    b.click("#login").await;
    b.wait_for("#requests").await;
    assert!(b.find("#request-1").await.is_none());
    assert_eq!(b.text("#pool-allocated").await, "2");

    // A maintenance request arrives and appears without a manual reload.
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let details = MaintenanceDetails {
        claimant_name: ClaimantName::new("Hanako <b>").unwrap(),
        terminal_names: TerminalNames::new(vec![TerminalName::new("pc1").unwrap()]).unwrap(),
        phone: Phone::new("0312345678").unwrap(),
        content: RequestContent::new("printer offline").unwrap(),
    };
    let req = MaintenanceRequest::new(
        &rng,
        &sid2,
        &id,
        kp.public_key(),
        ClaimantLevel::General,
        Urgency::High,
        &details,
    )
    .unwrap();
    let xff = [("x-forwarded-for", "203.0.113.5")];
    let resp = call_with(&api_addr, &id, &sid2.mac_key(), &req, T, &rng, &xff)
        .await
        .unwrap();
    let n = resp.acceptance_number.get();
    let row = format!("#request-{n}");
    b.wait_for(&row).await;
    assert_eq!(b.text(&format!("{row} .state")).await, "waiting");
    let text = b.text(&row).await;
    assert!(text.contains("Hanako <b>"), "escaped, shown as text: {text}");
    assert!(
        text.contains("203.0.113.5") && text.contains("pc1 = 10.64.0.3"),
        "{text}"
    );
    assert_eq!(b.text("#pool-allocated").await, "3");

    // Start, then end: the state follows, the address goes back to the pool.
    b.click(&format!("#start-{n}")).await;
    b.wait_text(&format!("{row} .state"), "in progress").await;
    b.click(&format!("#end-{n}")).await;
    b.wait_text(&format!("{row} .state"), "ended").await;
    assert!(b.text("#message").await.contains("1 address(es) released"));
    b.wait_text("#pool-allocated", "2").await;
}
