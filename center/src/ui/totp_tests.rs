//! Issue 20, item 2: the two-factor login over real HTTP, with codes
//! computed here at an injected time: password then code, the
//! half-logged-in session granting nothing, replay, recovery codes, the
//! enrolment a required role is sent to, and wrong codes meeting the
//! login brakes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::tests::{concrete, req};
use super::*;

use crate::accounts::manage::{self, NewAccount};
use crate::accounts::totp::{Secret, STEP_SECS};
use crate::center::tests::{center_with, TestCenter, TestRouter};
use crate::storage::AuditFilter;

/// Some time in 2033, mid-step.
const T0: u64 = 2_000_000_010;

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

struct Setup {
    c: Arc<TestCenter>,
    addr: SocketAddr,
    clock: Arc<AtomicU64>,
    n: u64,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn setup(required: Vec<Role>) -> Setup {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    let (n, _) = router.maintenance(&c, &["pc1"]).await.unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let clock = Arc::new(AtomicU64::new(T0));
    let settings = UiSettings {
        operator_hashes: vec![PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap()],
        session_ttl: Duration::from_secs(600),
        dns_domain: None,
        throttle: Default::default(),
        operator_networks: Vec::new(),
        hash_slots: DEFAULT_HASH_SLOTS,
        account_iterations: 1000,
        totp_required_roles: required,
        clock: Clock::manual(clock.clone()),
    };
    manage::seed_admins(&mut c.store().unwrap(), &settings.operator_hashes, 0).unwrap();
    for (name, role) in [("ada", Role::Admin), ("otto", Role::Operator)] {
        add(&c, name, role);
    }
    tokio::spawn(run(
        l,
        async {
            let _ = rx.await;
        },
        c.clone(),
        settings,
    ));
    Setup {
        c,
        addr,
        clock,
        n,
        _stop: stop,
    }
}

fn cookie_of(r: &tests::Resp) -> String {
    let set = r.cookie.clone().expect("a Set-Cookie");
    set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
}

/// The password step: (status, Location, cookie).
async fn password(addr: SocketAddr, name: &str) -> (u16, Option<String>, String) {
    let form = format!("name={name}&password={}", url_encode(&format!("{name} password")));
    let r = req(addr, "POST", "/login", None, Some(&form)).await;
    let cookie = cookie_of(&r);
    (r.status, r.location, cookie)
}

/// A POST of `code` to `path` with the session's CSRF token.
async fn post_code(addr: SocketAddr, path: &str, cookie: &str, code: &str) -> tests::Resp {
    let form = format!("{CSRF_FIELD}={}&code={}", csrf_token(cookie), url_encode(code));
    req(addr, "POST", path, Some(cookie), Some(&form)).await
}

fn audit(c: &TestCenter, action: &str) -> Vec<AuditRow> {
    c.store()
        .unwrap()
        .audit_log(&AuditFilter {
            action: Some(action.into()),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
}

/// Enrols `name` with `secret` straight in the database.
fn enrol(c: &TestCenter, name: &str, secret: &Secret) {
    let recovery: Vec<String> = ["aaaa-bbbb-cccc-dddd", "eeee-ffff-gggg-hhhh"]
        .iter()
        .map(|c| crate::accounts::recovery::hash(c))
        .collect();
    assert!(c
        .store()
        .unwrap()
        .enrol_totp(name, &secret.to_base32(), 0, &recovery, 1)
        .unwrap());
}

#[tokio::test]
async fn an_enrolled_account_needs_its_code_and_the_half_session_grants_nothing() {
    let s = setup(Vec::new()).await;
    let secret = Secret::generate(&SystemRandom::new()).unwrap();
    enrol(&s.c, "otto", &secret);

    let (status, location, half) = password(s.addr, "otto").await;
    assert_eq!((status, location.as_deref()), (303, Some("/login/code")));
    // Half logged in: every session route is refused, pages are sent to
    // the code page, the API and actions get 401, nothing changes.
    let before = s.c.store().unwrap().dump(&["audit_log", "sessions"]).unwrap();
    let mut refused = 0;
    for r in ROUTES
        .iter()
        .filter(|r| r.access == Access::Session && r.page != Page::Logout)
    {
        let got = req(s.addr, r.method, &concrete(r, s.n), Some(&half), None).await;
        let what = format!("{} {}: {}", r.method, r.path, got.body);
        if matches!(r.path, "/" | "/audit" | "/accounts") {
            assert_eq!(
                (got.status, got.location.as_deref()),
                (303, Some("/login/code")),
                "{what}"
            );
        } else {
            assert_eq!(got.status, 401, "{what}");
        }
        refused += 1;
    }
    // Paths outside the table say nothing either.
    for p in ["/admin", "/api/state/x"] {
        assert_eq!(req(s.addr, "GET", p, Some(&half), None).await.status, 401, "{p}");
    }
    assert_eq!(req(s.addr, "DELETE", "/api/state", Some(&half), None).await.status, 401);
    assert_eq!(s.c.store().unwrap().dump(&["audit_log", "sessions"]).unwrap(), before);
    let page = req(s.addr, "GET", "/login/code", Some(&half), None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"code\""), "{}", page.body);

    // A wrong code: 401, audited without the code; still half logged in.
    let right = secret.code_at(T0);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let r = post_code(s.addr, "/login/code", &half, &wrong).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Wrong code."));
    let failed = audit(&s.c, "login_failed_second_factor");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].actor, "operator:otto");
    assert!(!failed[0].detail.contains(&wrong) && failed[0].detail.contains("wrong code"));
    assert_eq!(req(s.addr, "GET", "/api/state", Some(&half), None).await.status, 401);

    // The right code: a full session under a new token; the half one is gone.
    let r = post_code(s.addr, "/login/code", &half, &right).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/")), "{}", r.body);
    let full = cookie_of(&r);
    assert_ne!(full, half);
    assert_eq!(req(s.addr, "GET", "/", Some(&full), None).await.status, 200);
    assert_eq!(req(s.addr, "GET", "/api/state", Some(&full), None).await.status, 200);
    let r = req(s.addr, "GET", "/", Some(&half), None).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/login")));
    let logins = audit(&s.c, "login");
    assert!(logins[0].detail.contains("second factor: TOTP"), "{logins:?}");

    // The same code again (same step): refused, even through a new password.
    let (_, _, half2) = password(s.addr, "otto").await;
    let r = post_code(s.addr, "/login/code", &half2, &right).await;
    assert_eq!(r.status, 401);
    assert!(audit(&s.c, "login_failed_second_factor")[0]
        .detail
        .contains("already used"));
    // One step later, the next code: fine.
    s.clock.fetch_add(STEP_SECS, Ordering::SeqCst);
    let r = post_code(s.addr, "/login/code", &half2, &secret.code_at(T0 + STEP_SECS)).await;
    assert_eq!(r.status, 303);
    // Two steps behind the clock: outside the window.
    let (_, _, half3) = password(s.addr, "otto").await;
    s.clock.fetch_add(3 * STEP_SECS, Ordering::SeqCst);
    let r = post_code(s.addr, "/login/code", &half3, &secret.code_at(T0 + 2 * STEP_SECS)).await;
    assert_eq!(r.status, 401);

    // A recovery code logs in once.
    let r = post_code(s.addr, "/login/code", &half3, "AAAA-BBBB-CCCC-DDDD").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (_, _, half4) = password(s.addr, "otto").await;
    let r = post_code(s.addr, "/login/code", &half4, "aaaa-bbbb-cccc-dddd").await;
    assert_eq!(r.status, 401);
    assert_eq!(s.c.store().unwrap().recovery_codes_left("otto").unwrap(), 1);
    // An account without a second factor logs in with its password alone.
    let (status, location, _) = password(s.addr, "ada").await;
    assert_eq!((status, location.as_deref()), (303, Some("/")));
    println!("ui totp: {refused} session routes refused to a half-logged-in session; code, replay, window and recovery code checked");
}

#[tokio::test]
async fn a_required_role_enrols_after_its_password_and_nothing_else() {
    let s = setup(vec![Role::Admin]).await;
    // The operator's role does not require it: straight in.
    let (_, location, _) = password(s.addr, "otto").await;
    assert_eq!(location.as_deref(), Some("/"));

    let (status, location, half) = password(s.addr, "ada").await;
    assert_eq!((status, location.as_deref()), (303, Some("/totp/enrol")));
    let r = req(s.addr, "GET", "/", Some(&half), None).await;
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/totp/enrol")));
    assert_eq!(
        req(s.addr, "POST", "/accounts/add", Some(&half), None).await.status,
        401
    );
    // The code page is not this stage's.
    let r = req(s.addr, "GET", "/login/code", Some(&half), None).await;
    assert_eq!(r.location.as_deref(), Some("/totp/enrol"));

    let page = req(s.addr, "GET", "/totp/enrol", Some(&half), None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<svg") && !page.body.contains("<?xml"),
        "an inline SVG QR code"
    );
    let secret_text = page
        .body
        .split("id=\"secret\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap()
        .to_owned();
    assert_eq!(secret_text.len(), 32, "20 bytes in base32: {secret_text}");
    assert!(page.body.contains(&format!(
        "otpauth://totp/vpnnat%20center:ada?secret={secret_text}&amp;issuer="
    )));
    // A reload offers the same secret (the app may have scanned it).
    let again = req(s.addr, "GET", "/totp/enrol", Some(&half), None).await;
    assert!(again.body.contains(&secret_text));
    let secret = Secret::from_base32(&secret_text).unwrap();

    // A wrong code stores nothing.
    let r = post_code(s.addr, "/totp/enrol", &half, "000000").await;
    let r = if secret.code_at(T0) == "000000" {
        post_code(s.addr, "/totp/enrol", &half, "111111").await
    } else {
        r
    };
    assert_eq!(r.status, 401);
    assert_eq!(s.c.store().unwrap().operator_totp("ada").unwrap(), None);

    // The current code enrols: recovery codes once, a full session.
    let r = post_code(s.addr, "/totp/enrol", &half, &secret.code_at(T0)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let codes: Vec<String> = r
        .body
        .split("<li><code>")
        .skip(1)
        .map(|t| t.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{}", r.body);
    let full = cookie_of(&r);
    let accounts = req(s.addr, "GET", "/accounts", Some(&full), None).await;
    assert_eq!(accounts.status, 200);
    assert!(
        accounts.body.contains("<td class=\"second-factor\">TOTP</td>"),
        "{}",
        accounts.body
    );
    let stored = s.c.store().unwrap().operator_totp("ada").unwrap().unwrap();
    assert_eq!(stored.secret.as_str(), secret_text);
    assert_eq!(stored.last_step, Some(T0 / STEP_SECS), "the confirming code is used up");
    let rows = audit(&s.c, "totp_enrol");
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].detail.contains(&secret_text));
    // The enrolment page now has nothing to offer.
    let r = req(s.addr, "GET", "/totp/enrol", Some(&full), None).await;
    assert!(r.body.contains("second factor already") && !r.body.contains("<svg"));

    // From now on: password, then code (the confirming step is spent).
    let (_, location, half) = password(s.addr, "ada").await;
    assert_eq!(location.as_deref(), Some("/login/code"));
    assert_eq!(
        post_code(s.addr, "/login/code", &half, &secret.code_at(T0))
            .await
            .status,
        401
    );
    let r = post_code(s.addr, "/login/code", &half, &codes[3]).await;
    assert_eq!(r.status, 303);

    // An admin's reset: the next login enrols afresh (its role requires it).
    manage::reset_totp(&mut s.c.store().unwrap(), "ada", &Actor::new("cli:test", "local"), 5).unwrap();
    let (_, location, _) = password(s.addr, "ada").await;
    assert_eq!(location.as_deref(), Some("/totp/enrol"));
    println!("ui totp enrolment: QR code and secret shown, confirmed with a computed code, 10 recovery codes");
}

#[tokio::test]
async fn wrong_codes_meet_the_login_brakes() {
    let s = setup(Vec::new()).await;
    let secret = Secret::generate(&SystemRandom::new()).unwrap();
    enrol(&s.c, "otto", &secret);
    let right = secret.code_at(T0);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 500_000) % 1_000_000);
    let (_, _, half) = password(s.addr, "otto").await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(post_code(s.addr, "/login/code", &half, &wrong).await.status);
    }
    // 5 attempts per address (ThrottleConfig::default), the password
    // among them (the login has not succeeded yet), then waits.
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429, 429, 429]);
    let r = post_code(s.addr, "/login/code", &half, &right).await;
    assert_eq!(r.status, 429, "even the right code waits");
    assert!(r.headers.contains_key(hyper::header::RETRY_AFTER));
    assert_eq!(audit(&s.c, "login_locked").len(), 1);
    // And the password step is braked too: the same counter.
    let form = "name=otto&password=otto+password";
    assert_eq!(req(s.addr, "POST", "/login", None, Some(form)).await.status, 429);
}

/// Someone who knows the password cannot wipe the count of their wrong
/// codes by typing the password again: a login counts as failed until its
/// last factor is right.
#[tokio::test]
async fn the_right_password_does_not_reset_the_count_of_wrong_codes() {
    let s = setup(Vec::new()).await;
    let secret = Secret::generate(&SystemRandom::new()).unwrap();
    enrol(&s.c, "otto", &secret);
    let right = secret.code_at(T0);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 500_000) % 1_000_000);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _, half) = password(s.addr, "otto").await;
        assert_eq!(status, 303);
        statuses.push(post_code(s.addr, "/login/code", &half, &wrong).await.status);
    }
    // Password, code, password, code, password: the fifth attempt of the
    // address; the code after it waits.
    assert_eq!(statuses, [401, 401, 429]);
    // A complete login clears the count (as a right password did before).
    let s = setup(Vec::new()).await;
    enrol(&s.c, "otto", &secret);
    for _ in 0..4 {
        let (_, _, half) = password(s.addr, "otto").await;
        let code = secret.code_at(s.clock.load(Ordering::SeqCst));
        assert_eq!(post_code(s.addr, "/login/code", &half, &code).await.status, 303);
        s.clock.fetch_add(STEP_SECS, Ordering::SeqCst);
    }
}
