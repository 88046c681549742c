//! The optional on-disk copy of the last good key sets (`cf_access_keys_cache`), so that a
//! restart during a Cloudflare outage still serves.
//!
//! One JSON file maps each certs URL to the certs response it last returned. Writes are
//! atomic (a temporary file in the same directory, then rename); a file that cannot be
//! read or parsed is ignored by the caller with a warning.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a key cache file: {0}")]
    Format(String),
}

/// Encodes `(certs url, certs response body)` pairs. Bodies must be JSON (they parsed).
pub fn encode<'a>(sets: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let map: BTreeMap<&str, serde_json::Value> = sets
        .into_iter()
        .filter_map(|(url, body)| Some((url, serde_json::from_slice(body).ok()?)))
        .collect();
    serde_json::to_vec_pretty(&map).unwrap_or_default()
}

/// Decodes a key cache file into `certs url -> certs response body`.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PersistError> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| PersistError::Format(e.to_string()))?;
    Ok(map
        .into_iter()
        .map(|(url, v)| (url, v.to_string().into_bytes()))
        .collect())
}

/// Reads the cached certs response for `url`, if the file has one.
pub fn read(path: &Path, url: &str) -> Result<Option<Vec<u8>>, PersistError> {
    let bytes = fs::read(path)?;
    Ok(decode(&bytes)?.remove(url))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a
/// part of either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("cf-access-persist-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let body = br#"{"keys":[{"kid":"a"}],"public_cert":{"kid":"a","cert":"x"}}"#;
        write_atomic(&path, &encode([("https://t/certs", &body[..])])).unwrap();
        let back = read(&path, "https://t/certs").unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&back).unwrap(),
            serde_json::from_slice::<serde_json::Value>(body).unwrap()
        );
        assert!(read(&path, "https://other/certs").unwrap().is_none());
        fs::write(&path, b"{ truncated").unwrap();
        assert!(matches!(
            read(&path, "https://t/certs"),
            Err(PersistError::Format(_))
        ));
        assert!(matches!(
            read(&dir.join("missing"), "u"),
            Err(PersistError::Io(_))
        ));
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
