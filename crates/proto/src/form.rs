//! `application/x-www-form-urlencoded` values, as the operator UI and the
//! router's LAN and maintenance pages receive them from a browser.

/// Decodes one form value: `+` is a space, `%XY` (two hex digits) a byte;
/// a `%` not followed by two hex digits stays as it is. Bytes that do not
/// form UTF-8 become U+FFFD, so the result is always valid text.
pub fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0usize;
    while let Some(&c) = s.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => match s.get(i.saturating_add(1)..i.saturating_add(3)).and_then(hex_byte) {
                Some(v) => {
                    out.push(v);
                    i = i.saturating_add(2);
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i = i.saturating_add(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Two hex digits and nothing else: `u8::from_str_radix` alone would also
/// take a sign ("%+f").
fn hex_byte(pair: &[u8]) -> Option<u8> {
    if !pair.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn plus_is_space_and_percent_escapes_are_bytes() {
        assert_eq!(decode(b"a+b%21%7e%7E"), "a b!~~");
        assert_eq!(decode("%E3%81%82".as_bytes()), "\u{3042}");
    }

    #[test]
    fn a_percent_without_two_hex_digits_stays() {
        assert_eq!(decode(b"a+b%21%zz%4"), "a b!%zz%4");
        assert_eq!(decode(b"%"), "%");
        assert_eq!(decode(b"%%41"), "%A");
    }

    #[test]
    fn a_sign_is_not_a_hex_digit() {
        assert_eq!(decode(b"%+f"), "% f");
        assert_eq!(decode(b"%-1"), "%-1");
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(decode(b"%ff%fe"), "\u{fffd}\u{fffd}");
    }
}
