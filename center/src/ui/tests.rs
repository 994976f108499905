use super::*;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::center::tests::{center_with, TestCenter, TestRouter};
use crate::storage::RequestState;

pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) location: Option<String>,
    pub(super) cookie: Option<String>,
    content_type: Option<String>,
    pub(super) headers: hyper::HeaderMap,
    pub(super) body: String,
}

/// A request as the operator's browser sends it: POSTs with a session
/// carry the session's CSRF token as the page's forms do.
pub(super) async fn req(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Resp {
    let with_token;
    let form = match (method, cookie, form) {
        ("POST", Some(c), None) => {
            with_token = format!("{CSRF_FIELD}={}", csrf_token(c));
            Some(with_token.as_str())
        }
        _ => form,
    };
    send(addr, method, path, cookie, form, &[]).await
}

/// Exactly this request.
pub(super) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", "ui");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
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
    let content_type = h(hyper::header::CONTENT_TYPE);
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        location,
        cookie,
        content_type,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub(super) async fn start(c: Arc<TestCenter>) -> (SocketAddr, oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let settings = UiSettings {
        operator_hashes: vec![PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: Some("vpn.example".into()),
        throttle: Default::default(),
        operator_networks: Vec::new(),
        hash_slots: super::DEFAULT_HASH_SLOTS,
        account_iterations: 1000,
        totp_required_roles: Vec::new(),
        clock: Clock::system(),
    };
    // As `daemon::serve` does at start-up: the shared password becomes
    // the account `admin`.
    crate::accounts::manage::seed_admins(&mut c.store().unwrap(), &settings.operator_hashes, 0).unwrap();
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
    let end_form = format!("{CSRF_FIELD}={}&reason=done", csrf_token(&token));
    let r = req(
        addr,
        "POST",
        &format!("/requests/{n}/end"),
        Some(&token),
        Some(&end_form),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("ended"));
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, before - 1);
    let r = req(addr, "GET", "/api/state", Some(&token), None).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["requests"][0]["state"], "ended");
    assert_eq!(v["pool"]["allocated"], 2);
    // Issue 19, item 7: the list says who ended it.
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(
        r.body.contains(&format!("id=\"ended-by-{n}\">ended by operator:admin")),
        "{}",
        r.body
    );
    // Issue 17: each router's tunnel initiation mode and why (none decided here).
    assert_eq!(v["initiation"], serde_json::json!([]));

    // Ending again: a message, not a crash.
    let r = req(
        addr,
        "POST",
        &format!("/requests/{n}/end"),
        Some(&token),
        Some(&end_form),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("cannot"));

    // Logout invalidates the session.
    let r = req(addr, "POST", "/logout", Some(&token), None).await;
    assert_eq!(r.status, 303);
    assert_eq!(req(addr, "GET", "/", Some(&token), None).await.status, 303);
}

/// Issue 19, item 7: a request the site owner ended from the router shows
/// "ended by router:ID" in the operator's list and its audit row.
#[tokio::test]
async fn the_list_shows_a_request_the_site_owner_ended() {
    use vpnnat_proto::messages::SiteEndRequest;
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let out = router.sign(
        &SiteEndRequest {
            acceptance_number: vpnnat_proto::types::AcceptanceNumber::new(n).unwrap(),
        },
        crate::center::tests::NOW,
    );
    c.site_end(out.path, &out.headers, &out.body, crate::center::tests::NOW, None)
        .await
        .unwrap();
    let (addr, _stop) = start(c.clone()).await;
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
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(
        r.body
            .contains(&format!("id=\"ended-by-{n}\">ended by router:router-1")),
        "{}",
        r.body
    );
    let r = req(addr, "GET", "/audit?action=end", Some(&token), None).await;
    assert!(r.body.contains("router:router-1"), "{}", r.body);
}

#[test]
fn forms_and_times() {
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
    let end_form = format!("{CSRF_FIELD}={}&reason=done", csrf_token(&token));
    req(
        addr,
        "POST",
        &format!("/requests/{n}/end"),
        Some(&token),
        Some(&end_form),
    )
    .await;
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
        // The UI's start: the shared password becomes the account `admin`.
        ("operator_add", "centerd"),
        ("login_failed", "operator?"),
        ("login", "operator:admin"),
        ("start", "operator:admin"),
        ("end", "operator:admin"),
        ("release", "operator:admin"),
        ("vpn_end", "operator:admin"),
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
    let r = req(addr, "GET", "/audit?actor=operator%3Aadmin", Some(&token), None).await;
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
        ("logout", "operator:admin")
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
    // OpenMetrics text from prometheus-client: its content type, `# EOF`
    // last, the build and the process families.
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert_eq!(
        v("vpnnat_center_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    let rss = v("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6, "{rss}");
    assert!(v("process_open_fds", &[]).unwrap() >= 3.0);
    assert!(v("process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    assert!(v("process_start_time_seconds", &[]).unwrap() > 1.6e9);
}

/// A forged POST: what is wrong, its form, its extra headers.
type ForgedPost<'a> = (&'a str, Option<String>, Vec<(&'a str, &'a str)>);

/// Logs in; the session token.
async fn login(addr: SocketAddr) -> String {
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.cookie.unwrap();
    set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

/// The concrete path of a route (`{n}` -> an existing request number).
pub(super) fn concrete(r: &UiRoute, n: u64) -> String {
    r.path.replace("{n}", &n.to_string())
}

#[tokio::test]
async fn every_route_needs_a_session_except_the_public_ones() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let before = c.store().unwrap().dump(&[]).unwrap();

    // The public set is exactly these; everything else is the table's.
    let public: Vec<(&str, &str)> = ROUTES
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        public,
        [
            ("GET", "/login"),
            ("POST", "/login"),
            ("GET", "/healthz"),
            ("GET", "/metrics")
        ]
    );
    let mut refused = 0;
    for r in ROUTES.iter().filter(|r| r.access != Access::Public) {
        let path = concrete(r, n);
        // No cookie, a forged one, an expired-looking one.
        for cookie in [None, Some("forged"), Some(&"00".repeat(32)[..])] {
            let got = send(addr, r.method, &path, cookie, None, &[]).await;
            match (r.method, r.path) {
                ("GET", "/" | "/login/code" | "/totp/enrol") => {
                    assert_eq!((got.status, got.location.as_deref()), (303, Some("/login")), "{path}")
                }
                _ => assert_eq!(got.status, 401, "{} {path} {cookie:?}: {}", r.method, got.body),
            }
            refused += 1;
        }
    }
    // Paths outside the table say nothing either.
    for p in ["/admin", "/requests/1/delete", "/api/state/../state", "/%2e%2e/"] {
        assert_eq!(send(addr, "GET", p, None, None, &[]).await.status, 401, "{p}");
        assert_eq!(send(addr, "POST", p, None, None, &[]).await.status, 401, "{p}");
    }
    assert_eq!(c.store().unwrap().dump(&[]).unwrap(), before, "no state change");
    // And with a session, each of them answers.
    let token = login(addr).await;
    for r in ROUTES.iter().filter(|r| r.access == Access::Session && !r.is_post()) {
        let got = req(addr, r.method, &concrete(r, n), Some(&token), None).await;
        assert_eq!(got.status, 200, "{} {}", r.method, r.path);
    }
    println!(
        "ui access: {} routes ({} public), {refused} requests without a valid session refused",
        ROUTES.len(),
        public.len()
    );
}

#[tokio::test]
async fn cross_site_posts_are_refused_and_change_nothing() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let other = login(addr).await;
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    let good = csrf_token(&token);
    assert!(
        page.contains(&format!("name=\"csrf\" value=\"{good}\"")),
        "the forms carry the token"
    );
    let before = c.store().unwrap().dump(&[]).unwrap();
    let mut wrong = good.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let good_form = format!("csrf={good}");
    let cases: Vec<ForgedPost> = vec![
        ("no token", None, vec![]),
        ("empty token", Some("csrf=".into()), vec![]),
        ("wrong token (1 char)", Some(format!("csrf={wrong}")), vec![]),
        (
            "another session's token",
            Some(format!("csrf={}", csrf_token(&other))),
            vec![],
        ),
        (
            "Origin of another site",
            Some(good_form.clone()),
            vec![("origin", "http://evil.example")],
        ),
        ("Origin null", Some(good_form.clone()), vec![("origin", "null")]),
        (
            "Sec-Fetch-Site cross-site",
            Some(good_form.clone()),
            vec![("sec-fetch-site", "cross-site")],
        ),
        (
            "Sec-Fetch-Site same-site",
            Some(good_form.clone()),
            vec![("sec-fetch-site", "same-site")],
        ),
    ];
    for path in [
        format!("/requests/{n}/start"),
        format!("/requests/{n}/end"),
        "/logout".to_owned(),
    ] {
        for (what, form, headers) in &cases {
            let r = send(
                addr,
                "POST",
                &path,
                Some(&token),
                Some(form.as_deref().unwrap_or("")),
                headers,
            )
            .await;
            assert_eq!(r.status, 403, "{path} {what}: {}", r.body);
            assert!(r.body.contains("refused") || r.body.contains("CSRF"), "{}", r.body);
        }
    }
    // A cross-site login (login CSRF) is refused before the password counts.
    let r = send(
        addr,
        "POST",
        "/login",
        None,
        Some("password=operator+pass"),
        &[("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.cookie.is_none());
    assert_eq!(c.store().unwrap().dump(&[]).unwrap(), before, "no state change");
    // The same-origin form with the right token works (and the session
    // is still valid: the refused logouts did not end it).
    let r = send(
        addr,
        "POST",
        &format!("/requests/{n}/start"),
        Some(&token),
        Some(&good_form),
        &[("origin", "http://ui"), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        c.store().unwrap().request(n).unwrap().unwrap().state,
        RequestState::InProgress
    );
    println!(
        "ui csrf: {} cross-site/forged POSTs refused (403), state unchanged",
        cases.len() * 3 + 1
    );
}

#[tokio::test]
async fn wrong_passwords_lock_the_source_out_with_a_clear_message_and_an_audit_row() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let (addr, _stop) = start(c.clone()).await;
    let limit = ThrottleConfig::default().per_source;
    for i in 1..=limit {
        let r = req(addr, "POST", "/login", None, Some("password=guess")).await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    // Now even the right password is refused, with the reason and when.
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.cookie.is_none());
    assert!(
        r.body
            .contains("too many wrong passwords from this address; try again in"),
        "{}",
        r.body
    );
    let rows = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .unwrap();
    let count = |a: &str| rows.iter().filter(|r| r.action == a).count();
    assert_eq!(count("login_failed"), usize::try_from(limit).unwrap());
    assert_eq!(count("login_locked"), 1);
    assert_eq!(count("login_throttled"), 1);
    assert_eq!(count("login"), 0);
    for r in &rows {
        assert!(!r.detail.contains("operator pass") && !r.detail.contains("guess"));
    }
    println!("ui login throttle: {limit} wrong passwords -> source locked out, right password then refused with 429");
}

/// Every HTML page of the UI (login, failed login, dashboard, audit log)
/// forbids framing and sniffing, and its content policy names exactly the
/// inline style sheet the page has (issue 18, item 9).
#[tokio::test]
async fn every_html_page_carries_the_framing_and_content_policy_headers() {
    use vpnnat_proto::page_headers::{csp_hash, inline_elements};
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let (addr, _stop) = start(Arc::new(c)).await;
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
    let mut pages = vec![
        ("login form", req(addr, "GET", "/login", None, None).await),
        (
            "failed login",
            req(addr, "POST", "/login", None, Some("password=nope")).await,
        ),
    ];
    for path in ["/", "/audit"] {
        pages.push((path, req(addr, "GET", path, Some(&token), None).await));
    }
    for (what, r) in pages {
        assert!(
            r.content_type.as_deref().is_some_and(|c| c.starts_with("text/html")),
            "{what}"
        );
        let get = |n: &str| {
            r.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(get("x-frame-options"), "DENY", "{what}");
        assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
        let csp = get("content-security-policy");
        assert!(
            csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{what}: {csp}"
        );
        // One script may run: the dashboard's copy buttons (issue 20,
        // item 6), by its hash.
        assert!(
            csp.contains(&format!("script-src {};", csp_hash(pages::COPY_SCRIPT))),
            "{what}: {csp}"
        );
        let styles = inline_elements(&r.body, "style");
        assert!(!styles.is_empty(), "{what}");
        for s in styles {
            assert!(csp.contains(&csp_hash(s)), "{what}: its style sheet is not in {csp}");
        }
        for s in inline_elements(&r.body, "script") {
            assert_eq!(s, pages::COPY_SCRIPT, "{what}: the only script");
        }
        assert!(!r.body.contains(" style=") && !r.body.contains(" onclick="), "{what}");
    }
}

/// Issue 18, item 5: a pending re-installation shows on the dashboard with
/// an approve button; pressing it approves (audited with the operator),
/// and the router's next notice without proof is accepted.
#[tokio::test]
async fn operator_approves_a_pending_reinstallation() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    // In service: it used its Secret(ID2), which confirms the installation.
    router.maintenance(&c, &["pc1"]).await.unwrap();
    let now = unix_now();
    let (out, _) = router.install_request_proving(now, None);
    let e = c.install(out.path, &out.headers, &out.body, now).unwrap_err();
    assert_eq!(e.http_status(), 423);
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("id=\"approve-reinstall-router-1\""), "{}", r.body);
    // The form carries the CSRF token and the terminal ID.
    let form = format!("{CSRF_FIELD}={}&terminal_id=router-1", csrf_token(&token));
    let r = req(addr, "POST", "/reinstalls/approve", Some(&token), Some(&form)).await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("approved"));
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(!r.body.contains("id=\"approve-reinstall-router-1\""));
    let rows = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("reinstall_approve".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].actor, "operator:admin");
    let (out, kp) = router.install_request_proving(now + 1, None);
    router.finish_install(&c, out, kp, now + 1);
    // Nothing pending any more: approving again is refused with a message.
    let r = req(addr, "POST", "/reinstalls/approve", Some(&token), Some(&form)).await;
    assert_eq!(r.status, 303);
    assert!(!r.location.unwrap().contains("approved"));
}

/// Issue 18, item 3: an operator is shown a router's own maintenance
/// password on demand (POST with the CSRF token, not cached), audited.
#[tokio::test]
async fn operator_is_shown_a_routers_own_maintenance_password_audited() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    let pw = router.install(&c).maintenance_password().clone();
    router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("id=\"show-password-router-1\""), "{}", r.body);
    assert!(!r.body.contains(pw.expose_secret()), "not on the dashboard");
    let form = format!("{CSRF_FIELD}={}&terminal_id=router-1", csrf_token(&token));
    let r = req(addr, "POST", "/routers/maintenance-password", Some(&token), Some(&form)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains(pw.expose_secret()));
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    // Without the CSRF token: refused, nothing shown.
    let r = req(
        addr,
        "POST",
        "/routers/maintenance-password",
        Some(&token),
        Some("terminal_id=router-1"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains(pw.expose_secret()));
    let rows = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("show_maintenance_password".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].actor, "operator:admin");
}

/// Issue 19, item 8: every live request shows when it ends; the operator
/// sets a shorter limit from its row (audited, with who set it), and a
/// limit above the configured maximum is refused with a clear message.
#[tokio::test]
async fn operator_sees_each_requests_end_sets_a_shorter_limit_and_cannot_exceed_the_maximum() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let max = c.settings().max_grant_lifetime_secs;
    let end = crate::center::tests::NOW + max;

    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("<th>Ends (time left)</th>"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("id=\"ends-{n}\">{} (", crate::limits::utc_hhmm(end))),
        "{}",
        r.body
    );
    // One button per offered limit shorter than what is left.
    assert!(r.body.contains(&format!("id=\"limit-{n}-30\"")), "{}", r.body);

    let limit = |minutes: &str| format!("{CSRF_FIELD}={}&minutes={minutes}", csrf_token(&token));
    // Above the maximum: refused, nothing changed.
    let r = req(
        addr,
        "POST",
        &format!("/requests/{n}/limit"),
        Some(&token),
        Some(&limit("1000000")),
    )
    .await;
    assert_eq!(r.status, 303);
    let msg = form_decode(r.location.unwrap().trim_start_matches("/?msg="));
    assert!(msg.contains("cannot be raised above the configured maximum"), "{msg}");
    assert_eq!(c.store().unwrap().request(n).unwrap().unwrap().expires_at, Some(end));
    let r = req(
        addr,
        "POST",
        &format!("/requests/{n}/limit"),
        Some(&token),
        Some(&limit("soon")),
    )
    .await;
    assert!(form_decode(&r.location.unwrap()).contains("whole number of minutes"));

    // Shorter: taken, shown with who set it, audited.
    let r = req(
        addr,
        "POST",
        &format!("/requests/{n}/limit"),
        Some(&token),
        Some(&limit("30")),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(form_decode(&r.location.unwrap()).contains("now ends at"));
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.limit_set_by.as_deref(), Some("operator:admin"));
    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(r.body.contains("limit set by operator:admin"), "{}", r.body);
    let rows = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some("limit".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((rows.len(), rows[0].actor.as_str()), (1, "operator:admin"));
}

/// Issue 19, item 8, the idle timeout: with `[center] idle_timeout_secs`,
/// each live request's row shows the limit, its tunnel's last traffic as
/// the gateway reported it and when it ends if the tunnel stays quiet.
#[tokio::test]
async fn operator_sees_the_idle_limit_and_the_tunnels_last_traffic() {
    use crate::center::tests::{center_with_settings, settings, NOW};
    let mut s = settings(&[2]);
    s.idle_timeout_secs = Some(1800);
    let (c, _g, _r) = center_with_settings("10.64.0.0/24", s);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;

    let r = req(addr, "GET", "/", Some(&token), None).await;
    assert!(
        r.body
            .contains(&format!("id=\"idle-{n}\">idle limit 30 min: traffic unknown")),
        "{}",
        r.body
    );
    c.store()
        .unwrap()
        .record_tunnel_traffic(&[("router-1".to_owned(), 0)])
        .unwrap();
    let r = req(addr, "GET", "/", Some(&token), None).await;
    let end = crate::limits::utc_hhmm(NOW + 1800);
    assert!(
        r.body.contains(&format!("no traffic yet, ends {end} if quiet")),
        "{}",
        r.body
    );
    c.store()
        .unwrap()
        .record_tunnel_traffic(&[("router-1".to_owned(), NOW + 600)])
        .unwrap();
    let r = req(addr, "GET", "/", Some(&token), None).await;
    let (last, end) = (crate::limits::utc_hhmm(NOW + 600), crate::limits::utc_hhmm(NOW + 2400));
    assert!(
        r.body.contains(&format!("last traffic {last}, ends {end} if quiet")),
        "{}",
        r.body
    );
}
