use super::*;

#[test]
fn roles_parse_print_and_order() {
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!("root".parse::<Role>(), Err(AccountError::BadRole("root".into())));
    assert_eq!("Admin".parse::<Role>(), Err(AccountError::BadRole("Admin".into())));
    assert!(Role::Admin.may(Role::Operator) && Role::Admin.may(Role::Viewer));
    assert!(Role::Operator.may(Role::Operator) && !Role::Operator.may(Role::Admin));
    assert!(Role::Viewer.may(Role::Viewer) && !Role::Viewer.may(Role::Operator));
}

#[test]
fn names_are_checked() {
    for good in ["alice", "a", "bob.smith", "op_2", "night-shift", &"a".repeat(32)] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    for bad in ["", "Alice", "2bob", "-x", "a b", "a:b", "a#1", "ü", &"a".repeat(33)] {
        assert_eq!(check_name(bad), Err(AccountError::BadName(bad.into())), "{bad}");
    }
}

#[test]
fn passwords_have_a_minimum_length() {
    assert_eq!(check_password("123456789"), Err(AccountError::ShortPassword));
    assert_eq!(check_password("1234567890"), Ok(()));
    assert_eq!(actor_name("alice"), "operator:alice");
}

/// The first start: one admin account per configured shared password,
/// with that very hash; never again once there are accounts.
#[test]
fn shared_passwords_become_admin_accounts_once() {
    use crate::password::PasswordHash;
    use crate::storage::Storage;
    let rng = ring::rand::SystemRandom::new();
    let hashes = [
        PasswordHash::create("first shared", 1000, &rng).unwrap(),
        PasswordHash::create("second shared", 1000, &rng).unwrap(),
    ];
    let mut st = Storage::open_in_memory().unwrap();
    assert_eq!(manage::seed_admins(&mut st, &hashes, 7).unwrap(), ["admin", "admin2"]);
    let (row, stored) = st.operator_login("admin2").unwrap().unwrap();
    assert_eq!((row.role, row.created_at), (Role::Admin, 7));
    assert!(PasswordHash::parse(&stored).unwrap().verify("second shared"));
    // A restart (or a second centerd) seeds nothing: the accounts rule.
    st.set_operator_disabled("admin", true).unwrap();
    assert!(manage::seed_admins(&mut st, &hashes, 8).unwrap().is_empty());
    assert!(st.operators().unwrap()[0].disabled);
    let f = crate::storage::AuditFilter {
        action: Some("operator_add".into()),
        limit: 10,
        ..Default::default()
    };
    let rows = st.audit_log(&f).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r.actor == "centerd" && !r.detail.contains("shared")));
    // A database that has accounts already gets none.
    let mut other = Storage::open_in_memory().unwrap();
    other.add_operator("alice", "h", Role::Viewer, 1).unwrap();
    assert!(manage::seed_admins(&mut other, &hashes, 2).unwrap().is_empty());
    assert_eq!(other.operators().unwrap().len(), 1);
}
