//! `application/x-www-form-urlencoded` bodies and query strings, as the
//! operator UI and the router's LAN and maintenance pages receive them
//! from a browser: the WHATWG URL standard's parser (`form_urlencoded`),
//! so `+` is a space, `%XY` a byte, a `%` without two hex digits stays as
//! it is, a pair without `=` has an empty value, and bytes that do not
//! form UTF-8 become U+FFFD.

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Every `name=value` pair, decoded, in order (repeated names keep every
/// value).
pub fn pairs(input: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(input).into_owned().collect()
}

/// The first value of `name` (compared after decoding).
pub fn first(input: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(input)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Decodes one value that is already split out of its pair (as
/// [`pairs`] decodes each).
pub fn decode(value: &[u8]) -> String {
    let spaced: Vec<u8> = value.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    percent_decode(&spaced).decode_utf8_lossy().into_owned()
}

/// What [`encode`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes all but the unreserved characters (a redirect's
/// `?msg=`); [`decode`] and [`pairs`] give the text back.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn pairs_and_first_decode_names_and_values() {
        let body = b"name=Taro+Yamada&t=pc1&&t=nas&c=a%26b%3D%E3%81%82&bad=%zz&empty=&bare&p%61ss=x";
        let p = pairs(body);
        let want: Vec<(String, String)> = [
            ("name", "Taro Yamada"),
            ("t", "pc1"),
            ("t", "nas"),
            ("c", "a&b=\u{3042}"),
            ("bad", "%zz"),
            ("empty", ""),
            ("bare", ""),
            ("pass", "x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(p, want);
        assert_eq!(first(body, "t").as_deref(), Some("pc1"));
        assert_eq!(first(body, "pass").as_deref(), Some("x"));
        assert_eq!(first(body, "nothing"), None);
    }

    #[test]
    fn encode_leaves_only_unreserved_characters() {
        assert_eq!(encode("a b/é-_.~&="), "a%20b%2F%C3%A9-_.~%26%3D");
        for text in ["a b&c=d+e%f", "\u{3042}\n\"<>", ""] {
            assert_eq!(decode(encode(text).as_bytes()), text);
            assert_eq!(
                first(format!("x=1&v={}", encode(text)).as_bytes(), "v").as_deref(),
                Some(text)
            );
        }
    }
}
