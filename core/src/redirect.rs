//! Where a redirect from the certs endpoint leads, and whether it may be followed.

use thiserror::Error;

use crate::config::split_http_url as split;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RedirectError {
    #[error("redirect from https to http refused")]
    Downgrade,
    #[error("redirect to an unsupported or invalid location")]
    Invalid,
}

/// The absolute URL a `Location` header sent in answer to `base` points at. Only http and
/// https are followed, and never from https to http.
pub fn target(base: &str, location: &str) -> Result<String, RedirectError> {
    let (scheme, authority, path) = split(base).ok_or(RedirectError::Invalid)?;
    let location = location.trim();
    if location.is_empty() || location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(RedirectError::Invalid);
    }
    let url = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.contains("://") {
        location.to_string()
    } else if location.contains(':') && !location.starts_with(['.', '?', '#']) {
        // Another scheme ("ftp:", "file:", "data:", ...).
        return Err(RedirectError::Invalid);
    } else {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    let (new_scheme, _, _) = split(&url).ok_or(RedirectError::Invalid)?;
    if scheme.eq_ignore_ascii_case("https") && new_scheme.eq_ignore_ascii_case("http") {
        return Err(RedirectError::Downgrade);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://team.cloudflareaccess.com/cdn-cgi/access/certs";

    #[test]
    fn resolves_every_form() {
        for (location, expected) in [
            ("https://other.example/certs", "https://other.example/certs"),
            ("//cdn.example/k", "https://cdn.example/k"),
            ("/v2/certs", "https://team.cloudflareaccess.com/v2/certs"),
            ("keys", "https://team.cloudflareaccess.com/cdn-cgi/access/keys"),
            ("?x=1", "https://team.cloudflareaccess.com/cdn-cgi/access/?x=1"),
        ] {
            assert_eq!(target(BASE, location).as_deref(), Ok(expected), "{location}");
        }
        assert_eq!(
            target("http://127.0.0.1:8080/a", "https://127.0.0.1:8443/b").as_deref(),
            Ok("https://127.0.0.1:8443/b")
        );
        assert_eq!(
            target("http://127.0.0.1:8080/a", "http://127.0.0.1:9/b").as_deref(),
            Ok("http://127.0.0.1:9/b")
        );
    }

    #[test]
    fn refuses_downgrades_and_other_schemes() {
        assert_eq!(
            target(BASE, "http://team.cloudflareaccess.com/certs"),
            Err(RedirectError::Downgrade)
        );
        assert_eq!(target(BASE, "HTTP://evil/certs"), Err(RedirectError::Downgrade));
        for bad in ["file:///etc/passwd", "ftp://x/y", "data:,{}", "", "/a b", "/a\r\nX: y"] {
            assert_eq!(target(BASE, bad), Err(RedirectError::Invalid), "{bad:?}");
        }
        assert_eq!(target("not a url", "/x"), Err(RedirectError::Invalid));
    }
}
