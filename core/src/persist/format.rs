//! What the key cache file holds: each certs URL's last certs response and when it was
//! fetched, as JSON (`{"<url>": {"fetched_at": N, "certs": <certs json>}, ...}`).

use std::collections::BTreeMap;

/// One saved key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// When the set was fetched from the certs endpoint (unix seconds; 0 if unknown).
    pub fetched_at: u64,
    /// The certs response body (JSON bytes).
    pub body: Vec<u8>,
}

/// Encodes url -> Saved as the file's JSON: `{"<url>": {"fetched_at": N, "certs": <body
/// json>}, ...}`. Bodies that are not valid JSON are skipped.
pub fn encode<'a>(sets: impl IntoIterator<Item = (&'a str, &'a Saved)>) -> Vec<u8> {
    let map: BTreeMap<&str, serde_json::Value> = sets
        .into_iter()
        .filter_map(|(url, saved)| {
            let certs: serde_json::Value = serde_json::from_slice(&saved.body).ok()?;
            Some((url, serde_json::json!({ "fetched_at": saved.fetched_at, "certs": certs })))
        })
        .collect();
    serde_json::to_vec_pretty(&map).unwrap_or_default()
}

/// Decodes the file's JSON, or says why it is not a key cache file. Also accepts the old
/// format where the value is the certs json itself (then `fetched_at` = 0): an object value
/// with a `"certs"` member is the new format, otherwise old.
pub(super) fn decode_map(bytes: &[u8]) -> Result<BTreeMap<String, Saved>, String> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    map.into_iter()
        .map(|(url, value)| {
            let saved = decode_entry(value).map_err(|e| format!("{url:?}: {e}"))?;
            Ok((url, saved))
        })
        .collect()
}

/// One value of the file: `{"fetched_at": N, "certs": ...}`, or (old format) the certs json.
fn decode_entry(value: serde_json::Value) -> Result<Saved, &'static str> {
    match value {
        serde_json::Value::Object(mut obj) if obj.contains_key("certs") => {
            let fetched_at = match obj.get("fetched_at") {
                None | Some(serde_json::Value::Null) => 0,
                Some(v) => v.as_u64().ok_or("\"fetched_at\" is not a non-negative integer")?,
            };
            let certs = obj.remove("certs").unwrap_or_default();
            Ok(Saved { fetched_at, body: certs.to_string().into_bytes() })
        }
        old => Ok(Saved { fetched_at: 0, body: old.to_string().into_bytes() }),
    }
}
