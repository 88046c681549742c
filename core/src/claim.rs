//! Reading any claim of a verified token, for `$cf_access_claim_<name>` and
//! `$cf_access_custom_<name>`.

use serde_json::{Map, Value};

/// The value of claim `name` (of the `custom` object when `custom`) in a verified payload:
/// strings as they are, other JSON values as compact JSON; `None` when absent. nginx
/// lowercases variable names, so an exact match is tried first, then one ignoring ASCII
/// case. Control characters are replaced by spaces so the value is safe in a header.
pub fn lookup(payload: &str, custom: bool, name: &str) -> Option<String> {
    let root: Map<String, Value> = serde_json::from_str(payload).ok()?;
    let object = if custom {
        match root.get("custom")? {
            Value::Object(o) => o,
            _ => return None,
        }
    } else {
        &root
    };
    let value = object.get(name).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })?;
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = r#"{"email":"a@b","groups":["x","y"],"n":5,"Mixed":"m","bad":"a\r\nb",
        "custom":{"dept":"eng","ids":{"a":1}}}"#;

    #[test]
    fn claims() {
        assert_eq!(lookup(P, false, "email").as_deref(), Some("a@b"));
        assert_eq!(lookup(P, false, "groups").as_deref(), Some(r#"["x","y"]"#));
        assert_eq!(lookup(P, false, "n").as_deref(), Some("5"));
        assert_eq!(lookup(P, false, "mixed").as_deref(), Some("m"));
        assert_eq!(lookup(P, false, "bad").as_deref(), Some("a  b"));
        assert_eq!(lookup(P, false, "missing"), None);
        assert_eq!(lookup(P, true, "dept").as_deref(), Some("eng"));
        assert_eq!(lookup(P, true, "ids").as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(lookup(P, true, "email"), None);
        assert_eq!(lookup(r#"{"custom":"x"}"#, true, "a"), None);
    }
}
