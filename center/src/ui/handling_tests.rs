//! Issue 20, item 6, over real HTTP: an end needs a valid reason, which
//! is stored, listed and audited; admins drain and undrain gateways from
//! the panel (the role table refuses the others: `access_tests`); the
//! JSON state shows each request's time limits.

use super::tests::{req, start};
use super::*;

use crate::center::tests::{center_with, TestRouter};
use crate::storage::RequestState;

/// The shared-password admin's session token.
async fn login(addr: SocketAddr) -> String {
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.cookie.unwrap();
    set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

/// POSTs `form` (plus the session's CSRF token) to `path`.
async fn post(addr: SocketAddr, token: &str, path: &str, form: &str) -> super::tests::Resp {
    let body = format!("{CSRF_FIELD}={}&{form}", csrf_token(token));
    req(addr, "POST", path, Some(token), Some(&body)).await
}

#[tokio::test]
async fn an_end_needs_a_valid_reason_which_is_stored_listed_and_audited() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;

    // The dashboard's end button opens the form; the form asks for the
    // reason and does not reload itself.
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    assert!(page.contains(&format!("action=\"/requests/{n}/end\"")), "{page}");
    let form = req(addr, "GET", &format!("/requests/{n}/end"), Some(&token), None).await;
    assert_eq!(form.status, 200);
    for want in [
        "id=\"reason\"",
        "name=\"reason\"",
        "required",
        "maxlength=\"200\"",
        "id=\"end-confirm\"",
    ] {
        assert!(form.body.contains(want), "{want}: {}", form.body);
    }
    assert!(!form.body.contains("http-equiv=\"refresh\""));
    assert_eq!(
        req(addr, "GET", "/requests/999/end", Some(&token), None).await.status,
        404
    );

    // Refused: none, blank, a control character, too long. Each goes back
    // to the form with why; the request stays open, nothing is audited.
    let long = "x".repeat(201);
    let refused = [
        ("", "a reason is required"),
        ("reason=", "a reason is required"),
        ("reason=+++", "a reason is required"),
        ("reason=done%0Aforged+line", "control characters"),
        ("reason=done%1B%5B31m", "control characters"),
        (&*format!("reason={long}"), "longer than 200 characters (201)"),
    ];
    for (form, why) in refused {
        let r = post(addr, &token, &format!("/requests/{n}/end"), form).await;
        assert_eq!(r.status, 303, "{form}");
        let to = r.location.unwrap();
        assert!(to.starts_with(&format!("/requests/{n}/end?msg=")), "{form}: {to}");
        let msg = form_decode(to.split_once("msg=").unwrap().1);
        assert!(msg.contains(why), "{form}: {msg}");
        // The form shows the message.
        let page = req(addr, "GET", &to, Some(&token), None).await.body;
        assert!(page.contains(&url_decode_html(&msg)), "{page}");
    }
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!((row.state, row.end_reason), (RequestState::Waiting, None));
    let ends = c.store().unwrap().audit_log(&audit_filter("action=end", 10)).unwrap();
    assert!(ends.is_empty(), "{ends:?}");

    // A right one (trimmed; 200 characters of any script are fine).
    let r = post(
        addr,
        &token,
        &format!("/requests/{n}/end"),
        "reason=++PLC+firmware+updated%2C+customer+confirmed++",
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("ended"));
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.state, RequestState::Ended);
    assert_eq!(
        row.end_reason.as_deref(),
        Some("PLC firmware updated, customer confirmed")
    );
    // Listed with who ended it, in the page and the JSON.
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    assert!(
        page.contains(&format!(
            "id=\"end-reason-{n}\">reason: PLC firmware updated, customer confirmed"
        )),
        "{page}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&req(addr, "GET", "/api/state", Some(&token), None).await.body).unwrap();
    assert_eq!(
        v["requests"][0]["end_reason"],
        "PLC firmware updated, customer confirmed"
    );
    assert_eq!(v["requests"][0]["ended_by"], "operator:admin");
    // Audited with the state change, by name.
    let ends = c.store().unwrap().audit_log(&audit_filter("action=end", 10)).unwrap();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].actor, "operator:admin");
    assert_eq!(
        ends[0].detail,
        "request ended: PLC firmware updated, customer confirmed"
    );

    // An ended request's form says so and offers no field.
    let form = req(addr, "GET", &format!("/requests/{n}/end"), Some(&token), None).await;
    assert!(form.body.contains("has ended already"), "{}", form.body);
    assert!(!form.body.contains("id=\"reason\""));
}

/// maud escapes what the page shows: the message as it appears there.
fn url_decode_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test]
async fn admins_drain_and_undrain_a_gateway_from_the_panel() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2, 2]);
    let c = Arc::new(c);
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let draining = |name: &str| {
        c.store()
            .unwrap()
            .gateway_usage()
            .unwrap()
            .into_iter()
            .find(|g| g.name == name)
            .unwrap()
            .draining
    };
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    assert!(page.contains("id=\"drain-gw1\""), "{page}");
    assert!(!page.contains("id=\"undrain-gw1\""));

    let r = post(addr, &token, "/gateways/drain", "name=gw1").await;
    assert_eq!(r.status, 303);
    let msg = form_decode(r.location.unwrap().split_once("msg=").unwrap().1);
    assert!(msg.contains("gw1 is draining"), "{msg}");
    assert!(draining("gw1"));
    assert!(!draining("gw2"));
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    assert!(page.contains("id=\"undrain-gw1\""), "{page}");

    let r = post(addr, &token, "/gateways/undrain", "name=gw1").await;
    assert_eq!(r.status, 303);
    assert!(!draining("gw1"));

    // An unknown gateway: a message, nothing changed, nothing audited.
    let r = post(addr, &token, "/gateways/drain", "name=gw9").await;
    let msg = form_decode(r.location.unwrap().split_once("msg=").unwrap().1);
    assert!(msg.contains("no gateway gw9"), "{msg}");

    let rows = c.store().unwrap().audit_log(&audit_filter("", 100)).unwrap();
    let seen: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r.action.ends_with("drain"))
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.detail.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("undrain", "operator:admin", "gateway gw1"),
            ("drain", "operator:admin", "gateway gw1"),
        ]
    );
}

#[tokio::test]
async fn the_json_state_shows_each_requests_time_limits() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&req(addr, "GET", "/api/state", Some(&token), None).await.body).unwrap();
    let want = crate::limits::effective_end(row.received_at, row.expires_at, c.settings().max_grant_lifetime_secs);
    assert_eq!(v["requests"][0]["acceptance_number"], n);
    assert_eq!(v["requests"][0]["ends_at"], want);
}

#[tokio::test]
async fn live_grants_have_copy_buttons_and_a_shorter_limit_shows_the_maximum() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, grants) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let (addr, _stop) = start(c.clone()).await;
    let token = login(addr).await;
    let a = grants[0].vpnnat_addr.to_string();
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    // Hidden until the script runs: without it the text is just text.
    assert!(
        page.contains(&format!(
            "<button class=\"copy\" type=\"button\" id=\"copy-addr-{n}-pc1\" data-copy=\"{a}\" hidden"
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "id=\"copy-dns-{n}-pc1\" data-copy=\"pc1.router-1.vpn.example\" hidden"
        )),
        "{page}"
    );
    assert!(page.contains(pages::COPY_SCRIPT));
    // No shorter limit yet: no separate maximum.
    assert!(!page.contains(&format!("id=\"max-end-{n}\"")));
    let r = post(addr, &token, &format!("/requests/{n}/limit"), "minutes=15").await;
    assert_eq!(r.status, 303);
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    let cap = row.received_at + c.settings().max_grant_lifetime_secs;
    assert!(
        page.contains(&format!(
            "id=\"max-end-{n}\">max lifetime ends {}",
            crate::limits::utc_hhmm(cap)
        )),
        "{page}"
    );
    // Ended: no buttons.
    post(addr, &token, &format!("/requests/{n}/end"), "reason=done").await;
    let page = req(addr, "GET", "/", Some(&token), None).await.body;
    assert!(!page.contains(&format!("id=\"copy-addr-{n}-pc1\"")));
}
