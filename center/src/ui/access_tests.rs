//! Issue 20, item 1: every route of the UI against every role, in the
//! server; disabled accounts and changed roles take effect at the
//! session's next request; the accounts page; audit rows name the account.

use super::tests::{concrete, req, send, start};
use super::*;

use crate::accounts::manage::{self, NewAccount};
use crate::center::tests::{center_with, TestCenter, TestRouter};

/// Adds an account straight through the domain (as `centerd operator add`).
fn add(c: &TestCenter, name: &str, role: Role) {
    let new = NewAccount {
        name,
        password: &format!("{name} password"),
        role,
        iterations: 1000,
    };
    let h = manage::prepare(&new, &SystemRandom::new()).unwrap();
    manage::add(&mut c.store().unwrap(), &h, &Actor::new("cli:test", "local"), 1).unwrap();
}

/// Logs in by name; the session token.
async fn login_as(addr: SocketAddr, name: &str) -> String {
    let form = format!("name={name}&password={}", url_encode(&format!("{name} password")));
    let r = req(addr, "POST", "/login", None, Some(&form)).await;
    assert_eq!(r.status, 303, "{name}: {}", r.body);
    let set = r.cookie.unwrap();
    set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

/// The shared password of the configuration, no name: the account
/// `admin` made from it at the start.
async fn login_shared(addr: SocketAddr) -> String {
    let r = req(addr, "POST", "/login", None, Some("password=operator+pass")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.cookie.unwrap();
    set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

async fn setup() -> (Arc<TestCenter>, SocketAddr, tokio::sync::oneshot::Sender<()>, u64) {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    // First the start (the shared password becomes `admin`), then the CLI.
    let (addr, stop) = start(c.clone()).await;
    for (name, role) in [("ada", Role::Admin), ("otto", Role::Operator), ("vera", Role::Viewer)] {
        add(&c, name, role);
    }
    (c, addr, stop, n)
}

#[tokio::test]
async fn every_route_against_every_role() {
    let (c, addr, _stop, n) = setup().await;
    // Each route's least role, as the issue sets them.
    let needs: Vec<(&str, &str, Role)> = ROUTES
        .iter()
        .filter(|r| r.access == Access::Session)
        .map(|r| (r.method, r.path, r.role))
        .collect();
    assert_eq!(
        needs,
        [
            ("GET", "/", Role::Viewer),
            ("GET", "/api/state", Role::Viewer),
            ("GET", "/audit", Role::Viewer),
            ("GET", "/audit.csv", Role::Viewer),
            ("GET", "/audit.jsonl", Role::Viewer),
            ("POST", "/logout", Role::Viewer),
            ("POST", "/requests/{n}/start", Role::Operator),
            ("GET", "/requests/{n}/end", Role::Operator),
            ("POST", "/requests/{n}/end", Role::Operator),
            ("POST", "/requests/{n}/limit", Role::Operator),
            ("POST", "/reinstalls/approve", Role::Admin),
            ("POST", "/routers/maintenance-password", Role::Operator),
            ("POST", "/gateways/drain", Role::Admin),
            ("POST", "/gateways/undrain", Role::Admin),
            ("GET", "/accounts", Role::Admin),
            ("POST", "/accounts/add", Role::Admin),
            ("POST", "/accounts/disable", Role::Admin),
            ("POST", "/accounts/enable", Role::Admin),
            ("POST", "/accounts/role", Role::Admin),
        ]
    );
    // A viewer may POST nothing but its own logout.
    assert!(ROUTES
        .iter()
        .filter(|r| r.access == Access::Session && r.is_post() && r.page != Page::Logout)
        .all(|r| r.role > Role::Viewer));
    let (mut allowed, mut refused) = (0, 0);
    // `None`: a login with the shared password and no name (`admin`).
    for who in [
        Some(("vera", Role::Viewer)),
        Some(("otto", Role::Operator)),
        Some(("ada", Role::Admin)),
        None,
    ] {
        for r in ROUTES.iter().filter(|r| r.access == Access::Session) {
            // A fresh session per route: logout ends one.
            let (token, role) = match who {
                Some((name, role)) => (login_as(addr, name).await, role),
                None => (login_shared(addr).await, Role::Admin),
            };
            let before = c.store().unwrap().dump(&[]).unwrap();
            let got = req(addr, r.method, &concrete(r, n), Some(&token), None).await;
            let what = format!("{who:?} {} {}: {}", r.method, r.path, got.body);
            if role.may(r.role) {
                let want = if r.is_post() { 303 } else { 200 };
                assert_eq!(got.status, want, "{what}");
                allowed += 1;
            } else {
                assert_eq!(got.status, 403, "{what}");
                assert!(got.body.contains(&format!("needs {}", r.role)), "{what}");
                assert_eq!(c.store().unwrap().dump(&[]).unwrap(), before, "no state change: {what}");
                refused += 1;
            }
        }
    }
    // A refused POST is refused before its form is read, with or without
    // a CSRF token; a viewer's GET of an admin page too.
    let vera = login_as(addr, "vera").await;
    let got = send(addr, "POST", &format!("/requests/{n}/start"), Some(&vera), None, &[]).await;
    assert_eq!(got.status, 403);
    println!("ui roles: {allowed} route x role requests answered, {refused} refused with 403");
}

#[tokio::test]
async fn a_disabled_accounts_live_session_is_refused_at_its_next_request() {
    let (c, addr, _stop, _n) = setup().await;
    let otto = login_as(addr, "otto").await;
    assert_eq!(req(addr, "GET", "/", Some(&otto), None).await.status, 200);
    // The admin disables it in the UI.
    let ada = login_as(addr, "ada").await;
    let r = req(
        addr,
        "POST",
        "/accounts/disable",
        Some(&ada),
        Some(&format!("{CSRF_FIELD}={}&name=otto", csrf_token(&ada))),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("disabled"));
    let r = req(addr, "GET", "/", Some(&otto), None).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/login")));
    assert_eq!(req(addr, "GET", "/api/state", Some(&otto), None).await.status, 401);
    // Logging in again: the right password, but disabled.
    let r = req(addr, "POST", "/login", None, Some("name=otto&password=otto+password")).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("This account is disabled."), "{}", r.body);
    assert!(r.cookie.is_none());
    // Enabled again, it logs in; the rows name who did what.
    let r = req(
        addr,
        "POST",
        "/accounts/enable",
        Some(&ada),
        Some(&format!("{CSRF_FIELD}={}&name=otto", csrf_token(&ada))),
    )
    .await;
    assert_eq!(r.status, 303);
    login_as(addr, "otto").await;
    let rows = c.store().unwrap().audit_log(&audit_filter("", 100)).unwrap();
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.action.starts_with("operator_") || r.action.starts_with("login"))
        .map(|r| (r.action.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("login", "operator:otto"),
            ("operator_enable", "operator:ada"),
            ("login_refused", "operator:otto"),
            ("operator_disable", "operator:ada"),
            ("login", "operator:ada"),
            ("login", "operator:otto"),
            ("operator_add", "cli:test"),
            ("operator_add", "cli:test"),
            ("operator_add", "cli:test"),
            ("operator_add", "centerd"),
        ]
    );
}

#[tokio::test]
async fn a_session_is_refused_when_only_the_flag_says_disabled() {
    // The per-request check on its own (without the sessions that
    // disabling deletes): a session made, then the account disabled by a
    // writer that left the session in place.
    let (c, addr, _stop, _n) = setup().await;
    let otto = login_as(addr, "otto").await;
    c.store().unwrap().disable_operator_only_for_tests("otto");
    let r = req(addr, "GET", "/", Some(&otto), None).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/login")));
}

#[tokio::test]
async fn roles_change_at_the_next_request_and_actions_are_audited_by_name() {
    let (c, addr, _stop, n) = setup().await;
    let vera = login_as(addr, "vera").await;
    assert_eq!(
        req(addr, "POST", &format!("/requests/{n}/start"), Some(&vera), None)
            .await
            .status,
        403
    );
    // The page offers a viewer no buttons, and says who is looking.
    let page = req(addr, "GET", "/", Some(&vera), None).await.body;
    assert!(page.contains("operator:vera (viewer)"), "{page}");
    for id in [
        format!("start-{n}"),
        format!("end-{n}"),
        format!("limit-{n}-15"),
        "accounts-link".into(),
    ] {
        assert!(!page.contains(&format!("id=\"{id}\"")), "{id}");
    }
    let ada = login_as(addr, "ada").await;
    let r = req(
        addr,
        "POST",
        "/accounts/role",
        Some(&ada),
        Some(&format!("{CSRF_FIELD}={}&name=vera&role=operator", csrf_token(&ada))),
    )
    .await;
    assert_eq!(r.status, 303);
    let page = req(addr, "GET", "/", Some(&vera), None).await.body;
    assert!(page.contains(&format!("id=\"start-{n}\"")), "{page}");
    let r = req(addr, "POST", &format!("/requests/{n}/start"), Some(&vera), None).await;
    assert_eq!(r.status, 303);
    assert!(r.location.unwrap().contains("started"));
    let rows = c.store().unwrap().audit_log(&audit_filter("action=start", 10)).unwrap();
    assert_eq!((rows.len(), rows[0].actor.as_str()), (1, "operator:vera"));
    // An unknown name and a wrong password look the same; a name that is
    // no account (maybe a password in the wrong field) is not recorded.
    for form in [
        "name=my+secret+typed+here&password=x",
        "name=vera&password=wrong+password",
    ] {
        let r = req(addr, "POST", "/login", None, Some(form)).await;
        assert_eq!(r.status, 401, "{form}");
        assert!(r.body.contains("Wrong name or password."), "{}", r.body);
    }
    let failed: Vec<String> = c
        .store()
        .unwrap()
        .audit_log(&audit_filter("action=login_failed", 10))
        .unwrap()
        .into_iter()
        .map(|r| r.detail)
        .collect();
    assert_eq!(
        failed,
        [
            "wrong password for operator:vera",
            "unknown operator name (not recorded)"
        ]
    );
}

#[tokio::test]
async fn admins_manage_accounts_in_the_page() {
    let (c, addr, _stop, _n) = setup().await;
    let ada = login_as(addr, "ada").await;
    let csrf = csrf_token(&ada);
    let page = req(addr, "GET", "/accounts", Some(&ada), None).await;
    assert_eq!(page.status, 200);
    for id in [
        "account-ada",
        "account-otto",
        "account-vera",
        "account-add",
        "disable-otto",
        "role-vera",
    ] {
        assert!(page.body.contains(&format!("id=\"{id}\"")), "{id}: {}", page.body);
    }
    let post = |form: String| {
        let ada = ada.clone();
        async move { req(addr, "POST", "/accounts/add", Some(&ada), Some(&form)).await }
    };
    // Added; then refused: a duplicate, a bad name, a bad role, a short
    // password: each said on the page, nothing stored.
    let r = post(format!(
        "{CSRF_FIELD}={csrf}&name=nina&password=nina+password&role=viewer"
    ))
    .await;
    assert!(r.location.unwrap().contains("nina%20added%20as%20viewer"));
    for (form, why) in [
        ("name=nina&password=nina+password&role=viewer", "exists already"),
        ("name=Nina&password=nina+password&role=viewer", "operator name"),
        (
            "name=nora&password=nora+password&role=root",
            "one of admin, operator, viewer",
        ),
        ("name=nora&password=short&role=viewer", "shorter than 10"),
    ] {
        let r = post(format!("{CSRF_FIELD}={csrf}&{form}")).await;
        assert_eq!(r.status, 303);
        let to = r.location.unwrap();
        let msg = form_decode(to.split_once("msg=").unwrap().1);
        assert!(msg.contains(why), "{form}: {msg}");
    }
    let names: Vec<String> = c
        .store()
        .unwrap()
        .operators()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["ada", "admin", "nina", "otto", "vera"]);
    let nina = login_as(addr, "nina").await;
    assert_eq!(req(addr, "GET", "/accounts", Some(&nina), None).await.status, 403);
    // The password is in no audit row.
    let rows = c.store().unwrap().audit_log(&audit_filter("", 100)).unwrap();
    assert!(rows.iter().all(|r| !r.detail.contains("nina password")), "{rows:?}");
}
