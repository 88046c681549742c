//! One rule for values that may end up in a header or a log line: control characters (CR,
//! LF, NUL, ...) become spaces, so a value can never split a header.

use std::borrow::Cow;

/// `value` with every control character replaced by a space (borrowed when there is none).
pub fn header_safe(value: &str) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        Cow::Owned(value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    } else {
        Cow::Borrowed(value)
    }
}

/// [`header_safe`] for an owned value.
pub fn header_safe_owned(value: String) -> String {
    match header_safe(&value) {
        Cow::Borrowed(_) => value,
        Cow::Owned(clean) => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_spaces() {
        assert!(matches!(header_safe("plain"), Cow::Borrowed("plain")));
        assert_eq!(header_safe("a\r\nb\0c\u{7f}"), "a  b c ");
        assert_eq!(header_safe_owned("x\ty".into()), "x y");
    }
}
