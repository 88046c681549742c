//! Reading any claim of a verified token, for `$cf_access_claim_<name>` and
//! `$cf_access_custom_<name>`.

use serde_json::{Map, Value};

use crate::sanitize::{header_safe, header_safe_owned};

/// The claims of a verified payload as a JSON object (parsed once per verified token, see
/// `Verified::claims_map`); an empty map for anything else.
pub fn parse(payload: &str) -> Map<String, Value> {
    serde_json::from_str(payload).unwrap_or_default()
}

/// The value of claim `name` (of the `custom` object when `custom`) in a verified payload's
/// claims: strings as they are, other JSON values as compact JSON; `None` when absent. nginx
/// lowercases variable names, so an exact match is tried first, then one ignoring ASCII
/// case. Control characters are replaced by spaces so the value is safe in a header.
pub fn lookup(root: &Map<String, Value>, custom: bool, name: &str) -> Option<String> {
    let object = if custom {
        match root.get("custom")? {
            Value::Object(o) => o,
            _ => return None,
        }
    } else {
        root
    };
    let value = object
        .get(name)
        .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))?;
    Some(match value {
        Value::String(s) => header_safe(s).into_owned(),
        other => header_safe_owned(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"email":"a@b","groups":["x","y"],"n":5,"Mixed":"m","bad":"a\r\nb",
        "custom":{"dept":"eng","ids":{"a":1}}}"#;

    #[test]
    fn claims() {
        let claims = parse(PAYLOAD);
        let p = &claims;
        assert_eq!(lookup(p, false, "email").as_deref(), Some("a@b"));
        assert_eq!(lookup(p, false, "groups").as_deref(), Some(r#"["x","y"]"#));
        assert_eq!(lookup(p, false, "n").as_deref(), Some("5"));
        assert_eq!(lookup(p, false, "mixed").as_deref(), Some("m"));
        assert_eq!(lookup(p, false, "bad").as_deref(), Some("a  b"));
        assert_eq!(lookup(p, false, "missing"), None);
        assert_eq!(lookup(p, true, "dept").as_deref(), Some("eng"));
        assert_eq!(lookup(p, true, "ids").as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(lookup(p, true, "email"), None);
        assert_eq!(lookup(&parse(r#"{"custom":"x"}"#), true, "a"), None);
        assert!(parse("[1]").is_empty());
    }
}
