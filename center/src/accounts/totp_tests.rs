//! RFC 6238 appendix B (the SHA-1 rows), the window, replay and base32.

use super::*;

/// RFC 6238's SHA-1 seed: the ASCII of "12345678901234567890".
fn rfc_secret() -> Secret {
    Secret::from_bytes(b"12345678901234567890")
}

/// Appendix B, SHA-1 column: (time, 8-digit TOTP). Our codes are the last
/// 6 digits (the same truncation modulo 10^6).
const VECTORS: [(u64, &str); 6] = [
    (59, "94287082"),
    (1_111_111_109, "07081804"),
    (1_111_111_111, "14050471"),
    (1_234_567_890, "89005924"),
    (2_000_000_000, "69279037"),
    (20_000_000_000, "65353130"),
];

#[test]
fn rfc_6238_appendix_b_sha1_vectors() {
    let s = rfc_secret();
    for (t, eight) in VECTORS {
        assert_eq!(s.code_at(t), eight[2..], "T = {t}");
        assert_eq!(s.verify(&eight[2..], t, None), Ok(step_of(t)), "T = {t}");
    }
}

#[test]
fn one_step_of_drift_either_way_and_no_more() {
    let s = rfc_secret();
    let t = 1_234_567_890;
    let code = s.code_at(t);
    // The code of step k is accepted from step k-1 to k+1.
    assert_eq!(s.verify(&code, t - STEP_SECS, None), Ok(step_of(t)));
    assert_eq!(s.verify(&code, t + STEP_SECS, None), Ok(step_of(t)));
    assert_eq!(s.verify(&code, t - 2 * STEP_SECS, None), Err(CodeError::Wrong));
    assert_eq!(s.verify(&code, t + 2 * STEP_SECS, None), Err(CodeError::Wrong));
    // Step edges: second 0 and second 29 of a step are the same step.
    let start = step_of(t) * STEP_SECS;
    assert_eq!(s.code_at(start), s.code_at(start + STEP_SECS - 1));
    assert_ne!(s.code_at(start), s.code_at(start + STEP_SECS));
    // Time 0: no step before it (no underflow).
    assert_eq!(s.verify(&s.code_at(0), 0, None), Ok(0));
}

#[test]
fn a_used_step_and_earlier_ones_are_refused() {
    let s = rfc_secret();
    let t = 2_000_000_000;
    let code = s.code_at(t);
    let step = s.verify(&code, t, None).unwrap();
    assert_eq!(s.verify(&code, t, Some(step)), Err(CodeError::Replayed));
    assert_eq!(s.verify(&code, t + 10, Some(step)), Err(CodeError::Replayed));
    // The previous step's code, still in the window, is older: refused too.
    let prev = s.code_at(t - STEP_SECS);
    assert_eq!(s.verify(&prev, t, Some(step)), Err(CodeError::Replayed));
    // The next step's code is fine.
    let next = s.code_at(t + STEP_SECS);
    assert_eq!(s.verify(&next, t + STEP_SECS, Some(step)), Ok(step + 1));
}

#[test]
fn malformed_codes_are_refused_without_computing() {
    let s = rfc_secret();
    for bad in ["", "12345", "1234567", "12a456", "+12345", "１２３４５６"] {
        assert_eq!(s.verify(bad, 59, None), Err(CodeError::Malformed), "{bad:?}");
    }
    // Spaces around are what a paste brings: accepted.
    assert_eq!(s.verify(" 287082 ", 59, None), Ok(1));
    assert_eq!(s.verify("287083", 59, None), Err(CodeError::Wrong));
}

#[test]
fn base32_round_trips_and_matches_rfc_4648() {
    // RFC 4648 section 10 (without padding).
    for (plain, enc) in [
        ("", ""),
        ("f", "MY"),
        ("fo", "MZXQ"),
        ("foo", "MZXW6"),
        ("foob", "MZXW6YQ"),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI"),
    ] {
        assert_eq!(base32_encode(plain.as_bytes()), enc);
        assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        assert_eq!(base32_decode(&enc.to_lowercase()).unwrap(), plain.as_bytes());
    }
    assert_eq!(base32_decode("MZXW6YQ="), Some(b"foob".to_vec()));
    assert_eq!(base32_decode("MZ1W"), None);
    let s = Secret::generate(&ring::rand::SystemRandom::new()).unwrap();
    let text = s.to_base32();
    assert_eq!(text.len(), 32);
    assert_eq!(Secret::from_base32(&text), Some(s.clone()));
    assert_eq!(format!("{s:?}"), "Secret(..)");
}

#[test]
fn the_otpauth_uri_names_issuer_account_and_parameters() {
    let s = Secret::from_bytes(b"foobar");
    assert_eq!(
        s.uri("vpnnat center", "ada").as_str(),
        "otpauth://totp/vpnnat%20center:ada?secret=MZXW6YTBOI&issuer=vpnnat%20center&algorithm=SHA1&digits=6&period=30"
    );
}
