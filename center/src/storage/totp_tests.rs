//! The second factor's rows on a real SQLite file, and migration 10 on a
//! version-9 database.

use super::super::MIGRATIONS;
use super::*;
use crate::accounts::Role;

struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_db(tag: &str) -> (TempDb, Storage) {
    let dir = std::env::temp_dir().join(format!("vpnnat-totp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = Storage::open(&dir.join("center.db")).unwrap();
    (TempDb(dir), s)
}

#[test]
fn an_enrolment_its_steps_and_recovery_codes_survive_a_reopen() {
    let (dir, mut s) = file_db("enrol");
    s.add_operator("ada", "hash", Role::Admin, 1).unwrap();
    assert_eq!(s.operator_totp("ada").unwrap(), None);
    let codes = vec!["h1".to_owned(), "h2".to_owned()];
    assert!(s.enrol_totp("ada", "SECRETB32", 100, &codes, 5).unwrap());
    // Enrolled once: a second enrolment needs a reset first.
    assert!(!s.enrol_totp("ada", "OTHER", 200, &codes, 6).unwrap());
    drop(s);
    let mut s = Storage::open(&dir.0.join("center.db")).unwrap();
    let row = s.operator_totp("ada").unwrap().unwrap();
    assert_eq!((row.secret.as_str(), row.last_step), ("SECRETB32", Some(100)));
    assert!(!format!("{row:?}").contains("SECRET"), "the secret stays out of Debug");
    // Steps only move forward.
    assert!(!s.use_totp_step("ada", 100).unwrap());
    assert!(!s.use_totp_step("ada", 99).unwrap());
    assert!(s.use_totp_step("ada", 101).unwrap());
    assert!(!s.use_totp_step("ada", 101).unwrap());
    // Recovery codes: once each.
    assert_eq!(s.recovery_codes_left("ada").unwrap(), 2);
    assert!(s.use_recovery_code("ada", "h1", 7).unwrap());
    assert!(!s.use_recovery_code("ada", "h1", 8).unwrap());
    assert!(!s.use_recovery_code("ada", "nope", 8).unwrap());
    assert_eq!(s.recovery_codes_left("ada").unwrap(), 1);
    // The reset removes both; an unknown account is an error.
    assert!(s.reset_totp("ada").unwrap());
    assert!(!s.reset_totp("ada").unwrap());
    assert_eq!(s.operator_totp("ada").unwrap(), None);
    assert_eq!(s.recovery_codes_left("ada").unwrap(), 0);
    assert_eq!(s.reset_totp("nobody").unwrap_err().to_string(), "no operator nobody");
}

#[test]
fn a_staged_session_carries_its_stage_and_pending_secret() {
    let (_dir, mut s) = file_db("stage");
    s.add_operator("otto", "hash", Role::Operator, 1).unwrap();
    s.add_staged_session("t1", 100, "operator:otto", "otto", SessionStage::Enrol)
        .unwrap();
    s.add_account_session("t2", 100, "operator:otto", "otto").unwrap();
    assert_eq!(s.session_owner("t1", 50).unwrap().unwrap().stage, SessionStage::Enrol);
    assert_eq!(s.session_owner("t2", 50).unwrap().unwrap().stage, SessionStage::Full);
    assert_eq!(s.pending_totp("t1").unwrap(), None);
    s.set_pending_totp("t1", "PENDING").unwrap();
    assert_eq!(
        s.pending_totp("t1").unwrap().as_deref().map(String::as_str),
        Some("PENDING")
    );
}

/// Migration 10 on a version-9 database with a live session: it stays,
/// fully logged in (it logged in before a second factor existed).
#[test]
fn migration_10_keeps_live_sessions_full() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for sql in &MIGRATIONS[..9] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 9).unwrap();
    conn.execute(
        "INSERT INTO operators (name, password_hash, role, created_at) VALUES ('ada', 'h', 'admin', 1)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO sessions (token_hash, expires_at, operator, account) VALUES ('t', 100, 'operator:ada', 'ada')",
        [],
    )
    .unwrap();
    let s = Storage::init(conn, false).unwrap();
    assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    let owner = s.session_owner("t", 50).unwrap().unwrap();
    assert_eq!(owner.stage, SessionStage::Full);
    assert_eq!(s.operator_totp("ada").unwrap(), None);
}
