//! Why a maintenance request was ended (issue 20, item 6): the operator
//! gives a reason with every end in the UI and its form API; it is stored
//! with the request, shown in the request list and written in the `end`
//! audit row. Pure: a typed value in, a validated reason or a message out.
//!
//! Rules: surrounding white space is trimmed; what is left must be 1 to
//! [`MAX_CHARS`] characters (Unicode scalar values, not bytes: a name in
//! any script counts the same); no control characters at all (a line
//! break or an escape sequence would forge lines in the CSV/JSONL exports
//! and the logs, a NUL cuts C readers' strings).

use std::fmt;

/// The longest reason, in characters.
pub const MAX_CHARS: usize = 200;

/// A validated end reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndReason(String);

impl EndReason {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a typed reason was refused; the message is shown to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("a reason is required to end a request")]
    Missing,
    #[error("the reason is longer than {MAX_CHARS} characters ({0})")]
    TooLong(usize),
    #[error("the reason must not contain control characters (line breaks, tabs, escapes)")]
    ControlCharacter,
}

/// Validates a reason as typed (see the module's rules).
pub fn parse(raw: &str) -> Result<EndReason, ReasonError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(ReasonError::Missing);
    }
    if t.chars().any(char::is_control) {
        return Err(ReasonError::ControlCharacter);
    }
    let n = t.chars().count();
    if n > MAX_CHARS {
        return Err(ReasonError::TooLong(n));
    }
    Ok(EndReason(t.to_owned()))
}

/// The `end` audit row's detail: says a request ended, and why when a
/// reason was given (the CLI may end without one).
pub fn audit_detail(reason: Option<&EndReason>) -> String {
    match reason {
        Some(r) => format!("request ended: {r}"),
        None => "request ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_and_kept() {
        assert_eq!(
            parse("  PLC fixed, customer confirmed \n").unwrap().as_str(),
            "PLC fixed, customer confirmed"
        );
        assert_eq!(parse("x").unwrap().as_str(), "x");
    }

    #[test]
    fn empty_or_blank_is_missing() {
        for raw in ["", "   ", "\t\n "] {
            assert_eq!(parse(raw), Err(ReasonError::Missing), "{raw:?}");
        }
    }

    #[test]
    fn the_length_counts_characters_not_bytes() {
        let max = "é".repeat(MAX_CHARS);
        assert_eq!(parse(&max).unwrap().as_str().chars().count(), MAX_CHARS);
        assert_eq!(parse(&format!("{max}e")), Err(ReasonError::TooLong(MAX_CHARS + 1)));
        // Trimmed first: blanks around a full-length reason are fine.
        assert!(parse(&format!("  {max}  ")).is_ok());
    }

    #[test]
    fn control_characters_inside_are_refused() {
        for raw in ["a\nb", "a\rb", "a\tb", "a\u{1b}[31mb", "a\0b", "a\u{7f}b", "a\u{85}b"] {
            assert_eq!(parse(raw), Err(ReasonError::ControlCharacter), "{raw:?}");
        }
        assert!(ReasonError::ControlCharacter.to_string().contains("control characters"));
    }

    #[test]
    fn the_audit_detail_names_the_reason() {
        let r = parse("done").unwrap();
        assert_eq!(audit_detail(Some(&r)), "request ended: done");
        assert_eq!(audit_detail(None), "request ended");
    }
}
