//! The whole identity of a user: what Cloudflare's get-identity endpoint answers for the
//! user's token (its groups above all, which the token's `custom` claims may have lost to
//! the 4 KB cookie limit), checked against the token, rendered for the `$cf_access_groups*`
//! and `$cf_access_identity_*` variables, and cached per session.
//!
//! Nothing here fetches: nginx does (a subrequest to a location the operator writes); this
//! is what the answer means.

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::claim;
use crate::sanitize::header_safe_owned;
use crate::verify::Verified;

/// The largest answer taken (nginx's `subrequest_output_buffer_size` usually caps it lower).
pub const MAX_BODY: usize = 1024 * 1024;

/// Why a request has no identity.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The subrequest did not complete (nginx's reason: a timeout, a refused connection).
    #[error("get-identity failed: {0}")]
    Failed(String),
    #[error("get-identity answered http status {0}")]
    Status(u16),
    #[error("get-identity answered {0} bytes, more than {MAX_BODY}")]
    TooLarge(usize),
    #[error("get-identity answered invalid json: {0}")]
    Json(String),
    /// The answer names someone else: never used, whatever else it says.
    #[error("get-identity answered for another user (its {0} is not the token's)")]
    OtherUser(&'static str),
}

/// Who the answer must be about, and the session it is cached under: the verified user
/// token itself (shared with the request and the token cache, not copied: a cache hit
/// allocates nothing), two sessions being the same when their `key` is.
#[derive(Debug, Clone)]
pub struct Session {
    token: Arc<Verified>,
    /// The token's `exp` (unix seconds): the answer is not used after it.
    pub expires: i64,
}

impl Session {
    /// The session of a verified user token; `None` for a service token (no user, so no
    /// identity to fetch) or a token without the claims a session needs.
    pub fn of(verified: &Arc<Verified>) -> Option<Session> {
        let id = &verified.identity;
        if !id.common_name.is_empty() || id.email.is_empty() || id.sub.is_empty() {
            return None;
        }
        let expires = verified.claims.exp.filter(|e| e.is_finite())? as i64;
        Some(Session { token: Arc::clone(verified), expires })
    }

    /// `iss` (the team), `sub`, `identity_nonce`: a user's identity is never served for
    /// another token's session.
    fn key(&self) -> (&str, &str, &str) {
        let t = &*self.token;
        (t.claims.iss.as_deref().unwrap_or_default(), &t.identity.sub, &t.identity.identity_nonce)
    }

    fn email(&self) -> &str {
        &self.token.identity.email
    }

    fn sub(&self) -> &str {
        &self.token.identity.sub
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Session) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Session {}

impl Hash for Session {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// Where one request is with its identity.
#[derive(Debug, Clone, Default)]
pub enum Lookup {
    /// Nothing to fetch: no `cf_access_identity` here, a service token, a subrequest.
    #[default]
    NotWanted,
    /// To be had for this session; the `cf_access_require` rules wait for it.
    Wanted(Session),
    /// This request's subrequest is fetching it.
    Fetching(Session),
    /// Another request of this worker is fetching it, for the same session.
    Waiting(Session),
    /// Had, from an answer or the cache.
    Ready(Arc<Identity>),
    /// Could not be had.
    Unavailable(IdentityError),
}

impl Lookup {
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Lookup::Ready(identity) => Some(identity),
            _ => None,
        }
    }

    /// Still to be had (the request waits, its rules too).
    pub fn is_pending(&self) -> bool {
        matches!(self, Lookup::Wanted(_) | Lookup::Fetching(_) | Lookup::Waiting(_))
    }
}

/// A checked get-identity answer.
#[derive(Debug)]
pub struct Identity {
    fields: Map<String, Value>,
    /// The groups' `name`s, `id`s and `email`s, each a compact JSON array of strings.
    names: String,
    ids: String,
    emails: String,
}

impl Identity {
    /// Parses get-identity's answer for `session`'s token: a JSON object whose `email` is
    /// the token's (ignoring ASCII case) and whose `user_uuid`, when present, is its `sub`.
    pub fn parse(body: &[u8], session: &Session) -> Result<Identity, IdentityError> {
        if body.len() > MAX_BODY {
            return Err(IdentityError::TooLarge(body.len()));
        }
        let fields = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(IdentityError::Json("not an object".into())),
            Err(e) => return Err(IdentityError::Json(e.to_string())),
        };
        let email = fields.get("email").and_then(Value::as_str).unwrap_or_default();
        if !email.eq_ignore_ascii_case(session.email()) {
            return Err(IdentityError::OtherUser("email"));
        }
        if fields.get("user_uuid").is_some_and(|u| u.as_str() != Some(session.sub())) {
            return Err(IdentityError::OtherUser("user_uuid"));
        }
        let groups = match fields.get("groups") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(groups)) => groups.as_slice(),
            Some(_) => return Err(IdentityError::Json("\"groups\" is not an array".into())),
        };
        let list = |field: &str| {
            let values: Vec<&str> = groups
                .iter()
                .filter_map(|g| match g {
                    Value::Object(g) => g.get(field).and_then(Value::as_str),
                    // Some identity providers list names only.
                    Value::String(name) if field == "name" => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            header_safe_owned(Value::from(values).to_string())
        };
        Ok(Identity { names: list("name"), ids: list("id"), emails: list("email"), fields })
    }

    /// The groups' names as a JSON array (`["Eng","Finance"]`): a `map` regex matches one
    /// exactly with its quotes (`~*"Eng"`).
    pub fn group_names(&self) -> &str {
        &self.names
    }

    pub fn group_ids(&self) -> &str {
        &self.ids
    }

    pub fn group_emails(&self) -> &str {
        &self.emails
    }

    /// A top-level field, rendered as the claim variables render claims.
    pub fn field(&self, name: &str) -> Option<String> {
        claim::lookup(&self.fields, false, name)
    }
}

/// A worker's identities, by session: bounded, and never past a token's `exp`.
pub struct IdentityCache {
    /// Each identity with the `exp` of the token it was fetched for.
    lru: Option<LruCache<Session, (Arc<Identity>, i64)>>,
}

impl IdentityCache {
    /// A cache of at most `capacity` sessions (0: none kept).
    pub fn new(capacity: usize) -> IdentityCache {
        IdentityCache { lru: NonZeroUsize::new(capacity).map(LruCache::new) }
    }

    /// `session`'s identity, if cached and its token has not expired at `now`.
    pub fn get(&mut self, session: &Session, now: i64) -> Option<Arc<Identity>> {
        let lru = self.lru.as_mut()?;
        match lru.get(session) {
            Some((identity, expires)) if now < *expires => Some(identity.clone()),
            Some(_) => {
                lru.pop(session);
                None
            }
            None => None,
        }
    }

    pub fn put(&mut self, session: &Session, identity: Arc<Identity>) {
        if let Some(lru) = self.lru.as_mut() {
            lru.put(session.clone(), (identity, session.expires));
        }
    }

    pub fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, LruCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{keys, policy, set, token, NOW, TEAM};

    /// The session of a user token for `email`, `sub` and `nonce`, valid until NOW + 100.
    fn session(email: &str, sub: &str, nonce: &str) -> Session {
        let (key, _) = keys();
        let token = token(key, |c| {
            c["email"] = email.into();
            c["sub"] = sub.into();
            c["identity_nonce"] = nonce.into();
            c["exp"] = (NOW + 100).into();
        });
        let verified = crate::verify(&token, Some(&set(&[key])), &policy(), NOW).unwrap();
        Session::of(&Arc::new(verified)).unwrap()
    }

    const ANSWER: &str = r#"{"email":"Ann@Example.com","user_uuid":"u-1","name":"Ann",
        "idp":{"id":"x","type":"okta"},"bad":"a\r\nb",
        "groups":[{"id":"02fk","email":"finance@example.com","name":"Finance"},
                  {"id":"04k6","email":"eng@example.com","name":"Eng \"core\""},"Plain",7]}"#;

    #[test]
    fn an_answer_for_the_tokens_user_gives_its_groups_and_fields() {
        let s = session("ann@example.com", "u-1", "n1");
        let id = Identity::parse(ANSWER.as_bytes(), &s).unwrap();
        assert_eq!(id.group_names(), r#"["Finance","Eng \"core\"","Plain"]"#);
        assert_eq!(id.group_ids(), r#"["02fk","04k6"]"#);
        assert_eq!(id.group_emails(), r#"["finance@example.com","eng@example.com"]"#);
        assert_eq!(id.field("name").as_deref(), Some("Ann"));
        assert_eq!(id.field("idp").as_deref(), Some(r#"{"id":"x","type":"okta"}"#));
        assert_eq!(id.field("bad").as_deref(), Some("a  b"));
        assert_eq!(id.field("missing"), None);
        let none = Identity::parse(br#"{"email":"ann@example.com"}"#, &s).unwrap();
        assert_eq!((none.group_names(), none.group_ids()), ("[]", "[]"));
    }

    #[test]
    fn an_answer_for_someone_else_or_not_an_identity_is_refused() {
        let s = session("ann@example.com", "u-1", "n1");
        let other = session("bob@example.com", "u-1", "n1");
        assert_eq!(
            Identity::parse(ANSWER.as_bytes(), &other).unwrap_err(),
            IdentityError::OtherUser("email")
        );
        let wrong_sub = br#"{"email":"ann@example.com","user_uuid":"u-2"}"#;
        assert_eq!(
            Identity::parse(wrong_sub, &s).unwrap_err(),
            IdentityError::OtherUser("user_uuid")
        );
        assert_eq!(
            Identity::parse(br#"{"user_uuid":"u-1"}"#, &s).unwrap_err(),
            IdentityError::OtherUser("email")
        );
        for bad in [&b"{\"email\":"[..], b"[]", b"", b"\"x\""] {
            assert!(matches!(Identity::parse(bad, &s), Err(IdentityError::Json(_))), "{bad:?}");
        }
        let groups = br#"{"email":"ann@example.com","groups":"Eng"}"#;
        assert!(matches!(Identity::parse(groups, &s), Err(IdentityError::Json(_))));
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(Identity::parse(&big, &s).unwrap_err(), IdentityError::TooLarge(MAX_BODY + 1));
        assert_eq!(
            IdentityError::OtherUser("email").to_string(),
            "get-identity answered for another user (its email is not the token's)"
        );
    }

    #[test]
    fn user_tokens_have_a_session_service_tokens_none() {
        let (key, _) = keys();
        let keys = set(&[key]);
        let user =
            Arc::new(crate::verify(&token(key, |_| {}), Some(&keys), &policy(), NOW).unwrap());
        let s = Session::of(&user).unwrap();
        assert_eq!((s.email(), s.expires), ("a@example.com", NOW + 600));
        let iss = format!("https://{TEAM}");
        assert_eq!(
            s.key(),
            (iss.as_str(), user.identity.sub.as_str(), user.identity.identity_nonce.as_str())
        );
        let claims = cf_access_dev::service_claims(TEAM, "aud", "ab.access", NOW, 600);
        let service = cf_access_dev::mint(key, &claims);
        let service = Arc::new(crate::verify(&service, Some(&keys), &policy(), NOW).unwrap());
        assert!(Session::of(&service).is_none());
    }

    #[test]
    fn the_cache_is_per_session_bounded_and_ends_with_the_token() {
        let mut cache = IdentityCache::new(2);
        let ann = session("ann@example.com", "u-1", "n1");
        let id = Arc::new(Identity::parse(ANSWER.as_bytes(), &ann).unwrap());
        cache.put(&ann, id.clone());
        assert!(cache.get(&ann, NOW + 99).is_some_and(|c| Arc::ptr_eq(&c, &id)));
        // Another nonce (a new login) or another user: not this identity.
        assert!(cache.get(&session("ann@example.com", "u-1", "n2"), NOW).is_none());
        assert!(cache.get(&session("ann@example.com", "u-9", "n1"), NOW).is_none());
        // Never past the token's exp, and forgotten then.
        assert!(cache.get(&ann, NOW + 100).is_none());
        assert!(cache.is_empty());
        for n in ["a", "b", "c"] {
            cache.put(&session("ann@example.com", "u-1", n), id.clone());
        }
        assert_eq!(cache.len(), 2);
        let mut off = IdentityCache::new(0);
        off.put(&ann, id);
        assert!(off.get(&ann, NOW).is_none());
    }
}
