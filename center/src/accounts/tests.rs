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
