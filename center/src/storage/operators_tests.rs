//! The accounts table on a real SQLite file (issue 20, item 1).

use super::*;
use crate::accounts::Role;

struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_db(tag: &str) -> (TempDb, Storage) {
    let dir = std::env::temp_dir().join(format!("vpnnat-operators-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = Storage::open(&dir.join("center.db")).unwrap();
    (TempDb(dir), s)
}

#[test]
fn accounts_are_added_listed_and_refused_twice() {
    let (dir, mut s) = file_db("add");
    s.add_operator("otto", "hash-o", Role::Operator, 20).unwrap();
    s.add_operator("ada", "hash-a", Role::Admin, 10).unwrap();
    let e = s.add_operator("otto", "other", Role::Viewer, 30).unwrap_err();
    assert!(
        matches!(e, StorageError::Exists { what: "operator", ref key } if key == "otto"),
        "{e}"
    );
    assert_eq!(e.to_string(), "operator otto exists already");
    // The table refuses a role the code would not write.
    assert!(s
        .conn
        .execute(
            "INSERT INTO operators (name, password_hash, role, created_at) VALUES ('x', 'h', 'root', 1)",
            [],
        )
        .is_err());
    drop(s);
    // Another connection (another centerd) sees them, in name order.
    let s = Storage::open(&dir.0.join("center.db")).unwrap();
    let rows = s.operators().unwrap();
    assert_eq!(
        rows,
        [
            OperatorRow {
                name: "ada".into(),
                role: Role::Admin,
                disabled: false,
                created_at: 10,
                second_factor: false,
            },
            OperatorRow {
                name: "otto".into(),
                role: Role::Operator,
                disabled: false,
                created_at: 20,
                second_factor: false,
            },
        ]
    );
    let (row, hash) = s.operator_login("otto").unwrap().unwrap();
    assert_eq!((row.role, hash.as_str()), (Role::Operator, "hash-o"));
    assert_eq!(s.operator_login("nobody").unwrap(), None);
}

#[test]
fn sessions_carry_the_account_its_role_and_its_flag() {
    let (_dir, mut s) = file_db("sessions");
    s.add_operator("otto", "h", Role::Operator, 1).unwrap();
    s.add_account_session("t1", 100, "operator:otto", "otto").unwrap();
    s.add_operator_session("t2", 100, "operator#1").unwrap();
    let owner = s.session_owner("t1", 50).unwrap().unwrap();
    assert_eq!(
        owner,
        SessionOwner {
            label: "operator:otto".into(),
            account: Some("otto".into()),
            state: Some((Role::Operator, false)),
            stage: SessionStage::Full,
        }
    );
    // A shared-password session has no account.
    let shared = s.session_owner("t2", 50).unwrap().unwrap();
    assert_eq!((shared.account, shared.state), (None, None));
    // Expired: none.
    assert_eq!(s.session_owner("t1", 101).unwrap(), None);
    // The role is the account's, now.
    s.set_operator_role("otto", Role::Viewer).unwrap();
    assert_eq!(
        s.session_owner("t1", 50).unwrap().unwrap().state,
        Some((Role::Viewer, false))
    );
    // The flag alone shows (the UI refuses it) ...
    s.disable_operator_only_for_tests("otto");
    assert_eq!(
        s.session_owner("t1", 50).unwrap().unwrap().state,
        Some((Role::Viewer, true))
    );
    // ... and disabling ends the account's sessions, not others'.
    s.set_operator_disabled("otto", true).unwrap();
    assert_eq!(s.session_owner("t1", 50).unwrap(), None);
    assert!(s.session_owner("t2", 50).unwrap().is_some());
    s.set_operator_disabled("otto", false).unwrap();
    assert!(!s.operators().unwrap()[0].disabled);
    for e in [
        s.set_operator_disabled("nobody", true).unwrap_err(),
        s.set_operator_role("nobody", Role::Admin).unwrap_err(),
    ] {
        assert_eq!(e.to_string(), "no operator nobody");
    }
}

/// Migration 9 on a version-8 database with a live session: the session
/// stays, as a shared-password one.
#[test]
fn migration_9_keeps_live_sessions_as_shared_password_ones() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for sql in &MIGRATIONS[..8] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 8).unwrap();
    conn.execute(
        "INSERT INTO sessions (token_hash, expires_at, operator) VALUES ('t', 100, 'operator#2')",
        [],
    )
    .unwrap();
    let s = Storage::init(conn, false).unwrap();
    assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    let owner = s.session_owner("t", 50).unwrap().unwrap();
    assert_eq!(
        (owner.label.as_str(), owner.account, owner.state),
        ("operator#2", None, None)
    );
    assert!(s.operators().unwrap().is_empty());
}
