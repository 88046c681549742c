//! One request's decision: headers in; the verdict, the verified token and whether the key
//! set should be refreshed out. The nginx handler only stores the result.

use std::sync::Arc;

use crate::cache::{verify_cached, TokenCache};
use crate::error::{Status, VerifyError};
use crate::extract;
use crate::jwks::KeySet;
use crate::policy::Policy;
use crate::verify::Verified;

/// What a location checks a token against.
pub struct Check<'a> {
    pub policy: &'a Policy,
    /// The current key set of the location's certs URL (`None`: none loaded yet).
    pub keys: Option<&'a KeySet>,
    /// Unix seconds.
    pub now: i64,
}

/// The verdict on one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub status: Status,
    /// The token, when it verified.
    pub verified: Option<Arc<Verified>>,
    /// Why it was refused (for the log line), when it was.
    pub error: Option<VerifyError>,
    /// The token names a `kid` the key set lacks: the keys may have been rotated.
    pub wants_refresh: bool,
}

impl Decision {
    fn refused(error: VerifyError) -> Decision {
        Decision {
            status: error.status(),
            wants_refresh: error == VerifyError::UnknownKid,
            verified: None,
            error: Some(error),
        }
    }
}

/// Finds the token in `headers` ((name, value) pairs in order) and verifies it, through this
/// worker's `cache`.
pub fn decide<'a, I>(headers: I, check: &Check<'_>, cache: &mut TokenCache) -> Decision
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let token = match extract::find_token(headers) {
        Ok(Some(token)) => token,
        Ok(None) => return Decision::refused(VerifyError::NoToken),
        Err(e) => return Decision::refused(e),
    };
    match verify_cached(token, check.keys, check.policy, check.now, cache) {
        Ok(verified) => Decision {
            status: Status::Ok,
            verified: Some(verified),
            error: None,
            wants_refresh: false,
        },
        Err(e) => Decision::refused(e),
    }
}

/// `cf_access_require`: every value must be non-empty and not `"0"`. Returns the index of
/// the first that is not.
pub fn first_unmet<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
    values.into_iter().position(|v| v.is_empty() || v == b"0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{keys, policy, set, token, NOW};

    fn run(headers: &[(&[u8], &[u8])], keys: Option<&KeySet>, cache: &mut TokenCache) -> Decision {
        let policy = policy();
        let check = Check { policy: &policy, keys, now: NOW };
        decide(headers.iter().copied(), &check, cache)
    }

    #[test]
    fn the_whole_decision() {
        let (k, other) = keys();
        let ks = set(&[k]);
        let mut cache = TokenCache::new(10);
        let good = token(k, |_| {});
        let d = run(&[(b"Cf-Access-Jwt-Assertion", good.as_bytes())], Some(&ks), &mut cache);
        assert_eq!(d.status, Status::Ok);
        assert_eq!(d.verified.unwrap().identity.email, "a@example.com");
        assert!(d.error.is_none() && !d.wants_refresh);

        let d = run(&[], Some(&ks), &mut cache);
        assert_eq!((d.status, d.error), (Status::NoToken, Some(VerifyError::NoToken)));

        let stranger = token(other, |_| {});
        let d = run(
            &[(b"Cookie", format!("CF_Authorization={stranger}").as_bytes())],
            Some(&ks),
            &mut cache,
        );
        assert_eq!(d.status, Status::UnknownKid);
        assert!(d.wants_refresh, "an unknown kid asks for a refresh");

        let d = run(&[(b"Cf-Access-Jwt-Assertion", good.as_bytes())], None, &mut cache);
        assert_eq!(d.status, Status::NoKeys);
        assert!(!d.wants_refresh);

        let two = format!("CF_Authorization={good}; CF_Authorization={stranger}");
        let d = run(&[(b"Cookie", two.as_bytes())], Some(&ks), &mut cache);
        assert_eq!(d.status, Status::Malformed);
    }

    #[test]
    fn require_values() {
        assert_eq!(first_unmet([&b"a"[..], b"1", b"yes"]), None);
        assert_eq!(first_unmet([&b"a"[..], b"0", b""]), Some(1));
        assert_eq!(first_unmet([&b""[..]]), Some(0));
        assert_eq!(first_unmet(std::iter::empty()), None);
        assert_eq!(first_unmet([&b"00"[..]]), None, "only exactly \"0\" is false");
    }
}
