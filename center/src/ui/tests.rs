use super::*;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::center::tests::{center_with, TestCenter, TestRouter};

struct Resp {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

async fn req(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Resp {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", "ui");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("other=1; {COOKIE_NAME}={c}"));
    }
    if form.is_some() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let body = Bytes::from(form.unwrap_or("").to_owned());
    let resp = tx.send_request(b.body(Full::new(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let h = |n| {
        resp.headers()
            .get(n)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = h(LOCATION);
    let cookie = h(SET_COOKIE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        location,
        cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn start(c: Arc<TestCenter>) -> (SocketAddr, oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let settings = UiSettings {
        operator_hashes: vec![PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: Some("vpn.example".into()),
    };
    tokio::spawn(run(
        l,
        async {
            let _ = rx.await;
        },
        c,
        settings,
    ));
    (addr, tx)
}

#[tokio::test]
async fn login_list_start_end_logout() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, grants) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;

    // Not logged in.
    let r = req(addr, "GET", "/", None, None).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/login")));
    assert_eq!(req(addr, "GET", "/api/state", None, None).await.status, 401);
    assert_eq!(
        req(addr, "POST", &format!("/requests/{n}/start"), None, None)
            .await
            .status,
        401
    );
    assert_eq!(req(addr, "GET", "/", Some("forged"), None).await.status, 303);
    let r = req(addr, "GET", "/login", None, None).await;
    assert!(r.body.contains("name=\"password\""));

    // Wrong, then right password.
    let r = req(addr, "POST", "/login", None, Some("password=nope")).await;
    assert_eq!(r.status, 401);
    assert!(r.cookie.is_none());
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    assert_eq!(r.status, 303);
    let set = r.cookie.unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    let token = set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();

    // The list: figure 29 columns, the request waiting with start and end.
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert_eq!(r.status, 200);
    for col in [
        "Acceptance number",
        "Terminal ID",
        "Global IP",
        "Claimant",
        "Level",
        "Phone",
        "Urgency",
        "Content",
        "Received",
        "VPNNAT address",
        "Table name",
        "State",
    ] {
        assert!(r.body.contains(&format!("<th>{col}</th>")), "{col}");
    }
    assert!(r.body.contains(&format!("id=\"start-{n}\"")));
    assert!(r.body.contains(&grants[0].vpnnat_addr.to_string()));
    assert!(r.body.contains("http-equiv=\"refresh\""));
    assert!(r.body.contains("waiting"));

    // Start, then end: the address goes back to the pool.
    let r = req(addr, "POST", &format!("/requests/{n}/start"), Some(&token), None).await;
    assert_eq!(r.status, 303);
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("in progress"));
    assert!(!r.body.contains(&format!("id=\"start-{n}\"")));
    let before = c.store().unwrap().pool_usage().unwrap().allocated;
    let r = req(addr, "POST", &format!("/requests/{n}/end"), Some(&token), None).await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("ended"));
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, before - 1);
    let r = req(addr, "GET", "/api/state", Some(&token), None).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["requests"][0]["state"], "ended");
    assert_eq!(v["pool"]["allocated"], 2);

    // Ending again: a message, not a crash.
    let r = req(addr, "POST", &format!("/requests/{n}/end"), Some(&token), None).await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("cannot"));

    // Logout invalidates the session.
    let r = req(addr, "POST", "/logout", Some(&token), None).await;
    assert_eq!(r.status, 303);
    assert_eq!(req(addr, "GET", "/", Some(&token), None).await.status, 303);
}

#[test]
fn escaping_and_forms() {
    assert_eq!(esc("<script>\"x\"&'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;");
    assert_eq!(form_decode("a+b%21%zz%4"), "a b!%zz%4");
    assert_eq!(form_field(b"x=1&password=p%26q", "password").as_deref(), Some("p&q"));
    assert_eq!(url_encode("a b/é"), "a%20b%2F%C3%A9");
    assert_eq!(fmt_time(0), "1970-01-01 00:00:00Z");
    assert_eq!(fmt_time(1_800_000_000), "2027-01-15 08:00:00Z");
    assert_eq!(fmt_time(951_782_400), "2000-02-29 00:00:00Z");
}

#[tokio::test]
async fn audit_log_page_and_exports() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, grants) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;

    // Exports need a session.
    assert_eq!(req(addr, "GET", "/audit", None, None).await.status, 401);
    assert_eq!(req(addr, "GET", "/audit.csv", None, None).await.status, 401);
    assert_eq!(req(addr, "GET", "/audit.jsonl", None, None).await.status, 401);

    assert_eq!(
        req(addr, "POST", "/login", None, Some("password=wrong+one"))
            .await
            .status,
        401
    );
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    let token = r
        .cookie
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();

    // The UI shows the grant's DNS name next to its address while live.
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("pc1.router-1.vpn.example"), "{}", r.body);
    assert!(r.body.contains("href=\"/audit\""));

    req(addr, "POST", &format!("/requests/{n}/start"), Some(&token), None).await;
    req(addr, "POST", &format!("/requests/{n}/end"), Some(&token), None).await;
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(!r.body.contains("pc1.router-1.vpn.example"));

    let r = req(addr, "GET", "/audit.jsonl", Some(&token), None).await;
    assert_eq!(r.status, 200);
    let rows: Vec<serde_json::Value> = r.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(String, String)> = rows
        .iter()
        .rev()
        .map(|v| {
            (
                v["action"].as_str().unwrap().to_owned(),
                v["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("install", "router:router-1"),
        ("grant", "router:router-1"),
        ("login_failed", "operator?"),
        ("login", "operator#1"),
        ("start", "operator#1"),
        ("end", "operator#1"),
        ("release", "operator#1"),
        ("vpn_end", "operator#1"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want);
    let grant = rows.iter().find(|v| v["action"] == "grant").unwrap();
    assert_eq!(grant["acceptance_number"], n);
    assert!(grant["detail"]
        .as_str()
        .unwrap()
        .contains(&grants[0].vpnnat_addr.to_string()));
    for v in &rows {
        assert!(!v["peer"].as_str().unwrap().is_empty());
    }
    // Never a secret: neither password nor the session token.
    for secret in ["operator pass", "operator+pass", "wrong one", token.as_str()] {
        assert!(!r.body.contains(secret), "{secret}");
    }

    // Filters, and the CSV with the same rows.
    let r = req(
        addr,
        "GET",
        "/audit.csv?action=release&terminal=router-1",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines[0], AuditRow::CSV_HEADER);
    assert_eq!(lines.len(), 2, "{}", r.body);
    assert!(lines[1].contains(",release,router-1,") && lines[1].contains(&grants[0].vpnnat_addr.to_string()));
    let r = req(addr, "GET", "/audit?actor=operator%231", Some(&token), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.matches("class=\"audit-row\"").count(), 5, "{}", r.body);

    // Logout is recorded too.
    req(addr, "POST", "/logout", Some(&token), None).await;
    let all = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(
        (all[0].action.as_str(), all[0].actor.as_str()),
        ("logout", "operator#1")
    );
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    use crate::metrics::{parse, value};
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2, 3]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1", "pc2"]).await.unwrap();
    let mut r2 = TestRouter::new("router-2");
    r2.install(&c);
    let (n2, _) = r2.maintenance(&c, &["pc1"]).await.unwrap();
    c.start(n2, 1).unwrap();
    c.end(n, 2).await.unwrap();
    c.command_metrics()
        .observe("maintenance", 200, Duration::from_millis(3));
    let (addr, _stop) = start(c.clone()).await;
    // No session needed (a scraper cannot log in).
    let r = req(addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    let s = parse(&r.body).unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(v("vpnnat_center_requests", &[("state", "waiting")]), Some(0.0));
    assert_eq!(v("vpnnat_center_requests", &[("state", "in_progress")]), Some(1.0));
    assert_eq!(v("vpnnat_center_requests", &[("state", "ended")]), Some(1.0));
    let used = c.store().unwrap().pool_usage().unwrap();
    assert_eq!(
        v("vpnnat_center_pool_addresses", &[("state", "used")]),
        Some(used.allocated as f64)
    );
    assert_eq!(
        v("vpnnat_center_pool_addresses", &[("state", "free")]),
        Some(used.free as f64)
    );
    let usage = c.store().unwrap().gateway_usage().unwrap();
    let total_used: f64 = usage
        .iter()
        .map(|g| {
            v(
                "vpnnat_center_gateway_slots",
                &[("gateway", &g.name), ("state", "used")],
            )
            .unwrap()
        })
        .sum();
    assert_eq!(total_used, 1.0, "router-2 still holds its slot");
    for g in &usage {
        assert_eq!(
            v(
                "vpnnat_center_gateway_slots",
                &[("gateway", &g.name), ("state", "free")]
            ),
            Some(g.free as f64)
        );
        assert_eq!(
            v("vpnnat_center_tunnels_up", &[("gateway", &g.name)]),
            Some(g.up as f64)
        );
        assert_eq!(v("vpnnat_center_gateway_draining", &[("gateway", &g.name)]), Some(0.0));
    }
    assert_eq!(
        v(
            "vpnnat_center_command_duration_seconds_bucket",
            &[("command", "maintenance"), ("le", "0.005")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "vpnnat_center_commands_total",
            &[("command", "maintenance"), ("status", "200")]
        ),
        Some(1.0)
    );
}
