//! Issue 18, item 5: Secret(ID) alone no longer takes over an installed
//! router. Each test fails on the code before the fix, where any notice
//! with a valid Secret(ID) MAC replaced the PSK and Secret(ID2).

use super::tests::{center_with, TestRouter, NOW};
use super::*;
use crate::storage::AuditFilter;

/// Every table but the nonces (each notice spends one) and the audit log
/// (which must gain the alert, and so its AUTOINCREMENT counter), as text.
fn tables(c: &tests::TestCenter) -> String {
    c.store()
        .unwrap()
        .dump(&["nonces", "audit", "sqlite_sequence"])
        .unwrap()
}

fn audit_actions(c: &tests::TestCenter) -> Vec<String> {
    let f = AuditFilter {
        terminal_id: Some("router-1".into()),
        limit: 100,
        ..Default::default()
    };
    let mut v: Vec<String> = c
        .store()
        .unwrap()
        .audit_log(&f)
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    v.reverse();
    v
}

/// The router uses its Secret(ID2) once (a failure notice), which
/// confirms the installation.
fn confirm(c: &tests::TestCenter, r: &TestRouter, now: u64) {
    let notice = FailureNotice {
        code: FailureCode::Other,
        detail: FailureDetail::new("test").unwrap(),
    };
    let out = r.sign(&notice, now);
    c.failure(out.path, &out.headers, &out.body, now).unwrap();
}

/// router-1 installed and in service (its installation confirmed).
fn installed() -> (tests::TestCenter, TestRouter, InstallSecrets) {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    confirm(&c, &r, NOW);
    (c, r, s)
}

use vpnnat_proto::messages::FailureNotice;
use vpnnat_proto::types::{FailureCode, FailureDetail};

use vpnnat_proto::messages::InstallSecrets;

#[test]
fn reinstall_with_only_secret_id_and_a_wrong_proof_is_refused_and_changes_nothing() {
    let (c, r, _) = installed();
    let before = tables(&c);
    let other = SecretId2::from_hex(&"5a".repeat(32)).unwrap();
    let (out, _) = r.install_request_proving(NOW + 1, Some(&other));
    let e = c.install(out.path, &out.headers, &out.body, NOW + 1).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallWrongProof), "{e}");
    assert_eq!(e.http_status(), 403);
    assert_eq!(tables(&c), before, "a refused re-installation changes no table");
    assert_eq!(audit_actions(&c), ["install", "failure", "reinstall_refused"]);
}

#[test]
fn reinstall_with_the_current_secret_id2_is_accepted() {
    let (c, mut r, s1) = installed();
    let s2 = r.install(&c);
    assert_ne!(s2.secret_id2().expose_secret(), s1.secret_id2().expose_secret());
    let row = c.store().unwrap().terminal("router-1").unwrap().unwrap();
    assert_eq!(row.secret_id2_hex, *s2.secret_id2().to_hex());
    confirm(&c, &r, NOW + 1);
    // The old Secret(ID2) proves nothing any more.
    let (out, _) = r.install_request_proving(NOW + 2, Some(s1.secret_id2()));
    let e = c.install(out.path, &out.headers, &out.body, NOW + 2).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallWrongProof), "{e}");
    assert_eq!(
        audit_actions(&c),
        ["install", "failure", "reinstall", "failure", "reinstall_refused"]
    );
}

#[test]
fn reinstall_without_proof_waits_for_an_operator_then_is_accepted() {
    let (c, mut r, s1) = installed();
    let before = c.store().unwrap().terminal("router-1").unwrap().unwrap();
    let (out, _) = r.install_request_proving(NOW + 1, None);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 1).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
    assert_eq!(e.http_status(), 423);
    assert!(e.public_text().contains("pending operator approval"));
    assert_eq!(c.store().unwrap().terminal("router-1").unwrap().unwrap(), before);
    let pending = c.store().unwrap().reinstall_requests().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].approved_by, None);
    // Retrying changes nothing until approved.
    let (out, _) = r.install_request_proving(NOW + 60, None);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 60).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
    assert_eq!(c.store().unwrap().terminal("router-1").unwrap().unwrap(), before);
    // Approving something that is not pending is refused.
    let op = Actor::new("operator#1", "172.16.0.5");
    assert!(c.approve_reinstall("router-2", &op, NOW + 70).is_err());
    c.approve_reinstall("router-1", &op, NOW + 70).unwrap();
    let (out, kp) = r.install_request_proving(NOW + 120, None);
    let s2 = r.finish_install(&c, out, kp, NOW + 120);
    assert_ne!(s2.secret_id2().expose_secret(), s1.secret_id2().expose_secret());
    assert!(
        c.store().unwrap().reinstall_requests().unwrap().is_empty(),
        "approval used up"
    );
    assert_eq!(
        audit_actions(&c),
        [
            "install",
            "failure",
            "reinstall_pending",
            "reinstall_pending",
            "reinstall_approve",
            "reinstall"
        ]
    );
    // Used up: the next unproven notice waits again.
    let (out, _) = r.install_request_proving(NOW + 130, None);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 130).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
}

#[test]
fn an_approval_expires() {
    let (c, r, _) = installed();
    let (out, _) = r.install_request_proving(NOW + 1, None);
    c.install(out.path, &out.headers, &out.body, NOW + 1).unwrap_err();
    c.approve_reinstall("router-1", &Actor::new("operator#1", "local"), NOW + 2)
        .unwrap();
    let late = NOW + 3 + installation::REINSTALL_APPROVAL_TTL_SECS;
    let (out, _) = r.install_request_proving(late, None);
    let e = c.install(out.path, &out.headers, &out.body, late).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
}

#[test]
fn unproven_reinstall_attempts_are_rate_limited_per_router_with_an_alert_each() {
    let (c, mut r, _) = installed();
    let limit = installation::REINSTALL_LIMIT;
    for i in 0..u64::from(limit) {
        let (out, _) = r.install_request_proving(NOW + 1 + i, None);
        let e = c.install(out.path, &out.headers, &out.body, NOW + 1 + i).unwrap_err();
        assert!(matches!(e, CenterError::ReinstallPending), "{e}");
    }
    let before = c.store().unwrap().dump(&["nonces"]).unwrap();
    let (out, _) = r.install_request_proving(NOW + 100, None);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 100).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallRateLimited), "{e}");
    assert_eq!(e.http_status(), 429);
    assert_eq!(
        c.store().unwrap().dump(&["nonces"]).unwrap(),
        before,
        "a flood grows nothing"
    );
    let alerts = audit_actions(&c).iter().filter(|a| *a == "reinstall_pending").count();
    assert_eq!(alerts, limit as usize);
    // Another router is not affected; the router holding its Secret(ID2)
    // is never kept out by the flood.
    let mut other = TestRouter::new("router-2");
    other.install(&c);
    other.install(&c);
    r.install(&c);
    // After the window, unproven attempts are heard again.
    let later = NOW + 101 + installation::REINSTALL_WINDOW_SECS;
    let (out, _) = r.install_request_proving(later, None);
    let e = c.install(out.path, &out.headers, &out.body, later).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
}

/// An answer the router never saved (lost, or routerd crashed before
/// saving it: crash points center.install.after_commit and
/// router.install.after_reply) must not lock the router out: until the
/// router uses the new Secret(ID2), the one it held before still proves,
/// and a first installation needs nothing.
#[test]
fn an_installation_the_router_never_received_can_be_repeated() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let r = TestRouter::new("router-1");
    // First installation, answer lost: the router retries without proof.
    let (out, _) = r.install_request_proving(NOW, None);
    c.install(out.path, &out.headers, &out.body, NOW).unwrap();
    let mut r = TestRouter::new("router-1");
    let s1 = r.install(&c);
    confirm(&c, &r, NOW + 1);
    // Re-installation, answer lost: the router still holds s1.
    let (out, _) = r.install_request_proving(NOW + 2, Some(s1.secret_id2()));
    c.install(out.path, &out.headers, &out.body, NOW + 2).unwrap();
    let (out, kp) = r.install_request_proving(NOW + 3, Some(s1.secret_id2()));
    let s2 = r.finish_install(&c, out, kp, NOW + 3);
    // Without any proof it is not a first installation any more.
    let (out, _) = r.install_request_proving(NOW + 4, None);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 4).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallPending), "{e}");
    // Once the router used s2, s1 proves nothing.
    confirm(&c, &r, NOW + 5);
    let (out, _) = r.install_request_proving(NOW + 6, Some(s1.secret_id2()));
    let e = c.install(out.path, &out.headers, &out.body, NOW + 6).unwrap_err();
    assert!(matches!(e, CenterError::ReinstallWrongProof), "{e}");
    let (out, kp) = r.install_request_proving(NOW + 7, Some(s2.secret_id2()));
    r.finish_install(&c, out, kp, NOW + 7);
}
