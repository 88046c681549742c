//! Checks of directive arguments that need no nginx: the nginx side only reports them.

use crate::policy::{normalize_team_domain, valid_team_domain};

/// Largest `cf_access_cache_size`.
pub const MAX_CACHE_SIZE: usize = 10_000_000;

/// A printable argument without spaces or control bytes.
pub fn plain_arg(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?;
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// A `cf_access_identity` URI: a plain path (no variables, query or fragment), which the
/// module requests as a subrequest.
pub fn identity_uri(value: &[u8]) -> Option<&str> {
    plain_arg(value).filter(|uri| uri.starts_with('/') && !uri.contains(['$', '?', '#']))
}

/// Splits `scheme://authority/path` (scheme `http` or `https`, any case) into its parts;
/// the path is "" or starts with `/`, `?` or `#`.
pub fn split_http_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = host_of(authority)?;
    if host.is_empty() || url.bytes().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    Some((scheme, authority, path))
}

/// The host of a URL's authority (`user@host:port`, `[v6]:port`), brackets removed.
fn host_of(authority: &str) -> Option<&str> {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h),
        None => Some(host.split(':').next().unwrap_or("")),
    }
}

/// Whether a certs URL fetches keys in plaintext from another machine: `http://` to a host
/// that is not a loopback address (`localhost`, 127.0.0.0/8, `::1`). Anyone on the path
/// could then replace the keys and mint tokens; `nginx -t` warns (loopback is for tests and
/// a local relay).
pub fn plaintext_remote(url: &str) -> bool {
    let Some((scheme, authority, _)) = split_http_url(url) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let Some(host) = host_of(authority) else {
        return true;
    };
    let host = host.trim_end_matches('.');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// `cf_access_certs_url`: an http(s) URL with a host.
pub fn certs_url(value: &[u8]) -> Option<&str> {
    plain_arg(value).filter(|u| split_http_url(u).is_some())
}

/// `cf_access_proxy`: an `http://` or `https://` proxy URL with a host.
pub fn proxy_url(value: &[u8]) -> Option<&str> {
    certs_url(value)
}

/// `cf_access_team_domain`: normalized and lowercased, or `None` when not a host name.
pub fn team_domain(value: &[u8]) -> Option<String> {
    let domain = normalize_team_domain(plain_arg(value)?);
    valid_team_domain(domain).then(|| domain.to_ascii_lowercase())
}

/// The certs URL of a team: `https://<team>/cdn-cgi/access/certs`.
pub fn default_certs_url(team_domain: &str) -> String {
    format!("https://{team_domain}/cdn-cgi/access/certs")
}

/// `cf_access_cache_size`: digits only, at most [`MAX_CACHE_SIZE`].
pub fn cache_size(value: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(value).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<usize>().ok().filter(|n| *n <= MAX_CACHE_SIZE)
}

/// The `error=` parameter of `cf_access_require`: 401 or 403.
pub fn require_error(value: &[u8]) -> Option<u16> {
    match value {
        b"error=401" => Some(401),
        b"error=403" => Some(403),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_uris_are_plain_paths() {
        assert_eq!(super::identity_uri(b"/_cf_identity"), Some("/_cf_identity"));
        for bad in [&b"_cf"[..], b"/a?b=1", b"/$x", b"/a#b", b"", b"/a b", b"http://x/"] {
            assert_eq!(super::identity_uri(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plaintext_certs_urls_from_other_hosts_are_flagged() {
        for url in [
            "http://certs.example.com/cdn-cgi/access/certs",
            "HTTP://10.0.0.5:8080/certs",
            "http://user@team.cloudflareaccess.com/certs",
            "http://[2001:db8::1]/certs",
            "http://127.0.0.1.example.com/certs",
        ] {
            assert!(plaintext_remote(url), "{url}");
        }
        for url in [
            "https://certs.example.com/cdn-cgi/access/certs",
            "http://127.0.0.1:1234/certs",
            "http://127.9.8.7/certs",
            "http://localhost:8080/certs",
            "http://LOCALHOST./certs",
            "http://[::1]:8080/certs",
            "not a url",
        ] {
            assert!(!plaintext_remote(url), "{url}");
        }
    }

    use super::*;

    #[test]
    fn plain_args() {
        assert_eq!(plain_arg(b"abc"), Some("abc"));
        for bad in [&b""[..], b"a b", b"a\tb", b"\xff", b"a\x00"] {
            assert_eq!(plain_arg(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        for good in [
            "https://team.cloudflareaccess.com/cdn-cgi/access/certs",
            "http://127.0.0.1:8080/certs",
            "HTTPS://[::1]:8443/c",
            "http://host",
            "http://user@host:1/x?y",
        ] {
            assert_eq!(certs_url(good.as_bytes()), Some(good), "{good}");
        }
        for bad in
            ["ftp://x/y", "https://", "https:///path", "host/path", "http://:80/", "http://[::1/"]
        {
            assert_eq!(certs_url(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(proxy_url(b"http://proxy:3128"), Some("http://proxy:3128"));
        assert_eq!(proxy_url(b"socks5://proxy:1080"), None);
        assert_eq!(
            default_certs_url("t.cloudflareaccess.com"),
            "https://t.cloudflareaccess.com/cdn-cgi/access/certs"
        );
    }

    #[test]
    fn team_domains() {
        assert_eq!(
            team_domain(b"https://Team.CloudflareAccess.com/").as_deref(),
            Some("team.cloudflareaccess.com")
        );
        assert_eq!(team_domain(b"localhost"), None);
        assert_eq!(team_domain(b"bad domain"), None);
    }

    #[test]
    fn cache_sizes_and_require_errors() {
        assert_eq!(cache_size(b"0"), Some(0));
        assert_eq!(cache_size(b"10000000"), Some(MAX_CACHE_SIZE));
        for bad in [&b"10000001"[..], b"-1", b"1k", b"", b"+5"] {
            assert_eq!(cache_size(bad), None);
        }
        assert_eq!(require_error(b"error=401"), Some(401));
        assert_eq!(require_error(b"error=403"), Some(403));
        assert_eq!(require_error(b"error=500"), None);
    }
}
