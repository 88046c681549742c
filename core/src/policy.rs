//! The claims rules a verified token must also meet.

use serde::Deserialize;

use crate::error::VerifyError;

/// The payload claims the module reads. Unknown claims are ignored; a known claim of the
/// wrong JSON type, or a duplicate one, makes the token malformed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub iat: Option<f64>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub identity_nonce: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
}

/// `aud` is a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            Audience::One(a) => wanted.iter().any(|w| w == a),
            Audience::Many(list) => list.iter().any(|a| wanted.iter().any(|w| w == a)),
        }
    }
}

/// What one location requires of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `https://<team domain>`, compared exactly with `iss`.
    pub issuer: String,
    /// The application AUD tags; `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// Clock-skew tolerance in seconds for `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

impl Policy {
    /// Builds the policy for a team domain given as `team.cloudflareaccess.com`, optionally
    /// with `https://` and a trailing `/`.
    pub fn new(team_domain: &str, audiences: Vec<String>, leeway: u64) -> Policy {
        Policy {
            issuer: format!("https://{}", normalize_team_domain(team_domain)),
            audiences,
            leeway,
        }
    }

    /// Checks the claims at time `now` (unix seconds).
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(), VerifyError> {
        let now = now as f64;
        let leeway = self.leeway as f64;
        let exp = claims.exp.ok_or(VerifyError::Malformed("no exp claim"))?;
        if now - leeway >= exp {
            return Err(VerifyError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(VerifyError::NotYetValid("nbf"));
        }
        if claims.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(VerifyError::NotYetValid("iat"));
        }
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(VerifyError::BadIssuer);
        }
        if !claims.aud.as_ref().is_some_and(|aud| aud.contains_any(&self.audiences)) {
            return Err(VerifyError::BadAudience);
        }
        if claims.type_.as_deref().is_some_and(|t| t != "app") {
            return Err(VerifyError::NotAppToken);
        }
        Ok(())
    }
}

/// `https://team.cloudflareaccess.com/` -> `team.cloudflareaccess.com`.
pub fn normalize_team_domain(domain: &str) -> &str {
    let d = domain.strip_prefix("https://").unwrap_or(domain);
    d.strip_suffix('/').unwrap_or(d)
}

/// Is `domain` (already normalized) a plausible host name? Letters, digits, `-` and `.`,
/// at least one dot, no empty labels.
pub fn valid_team_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn policy() -> Policy {
        Policy::new("https://team.cloudflareaccess.com/", vec!["aud1".into(), "aud2".into()], 60)
    }

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "exp": NOW + 300, "iat": NOW, "nbf": NOW,
            "iss": "https://team.cloudflareaccess.com",
            "aud": ["aud1"], "type": "app", "email": "a@b.c", "sub": "s"
        })
    }

    fn check(mut patch: impl FnMut(&mut serde_json::Value)) -> Result<(), VerifyError> {
        let mut v = good();
        patch(&mut v);
        policy().check(&serde_json::from_value(v).unwrap(), NOW)
    }

    #[test]
    fn good_token_passes() {
        assert_eq!(check(|_| {}), Ok(()));
    }

    #[test]
    fn time_claims_with_leeway() {
        assert_eq!(check(|v| v["exp"] = (NOW - 1).into()), Ok(()), "within leeway");
        assert_eq!(check(|v| v["exp"] = (NOW - 60).into()), Err(VerifyError::Expired));
        assert_eq!(check(|v| v["exp"] = (NOW - 3600).into()), Err(VerifyError::Expired));
        assert_eq!(
            check(|v| {
                v.as_object_mut().unwrap().remove("exp");
            }),
            Err(VerifyError::Malformed("no exp claim"))
        );
        assert_eq!(check(|v| v["nbf"] = (NOW + 60).into()), Ok(()));
        assert_eq!(check(|v| v["nbf"] = (NOW + 61).into()), Err(VerifyError::NotYetValid("nbf")));
        assert_eq!(check(|v| v["iat"] = (NOW + 61).into()), Err(VerifyError::NotYetValid("iat")));
        assert_eq!(
            check(|v| {
                v.as_object_mut().unwrap().remove("nbf");
                v.as_object_mut().unwrap().remove("iat");
            }),
            Ok(())
        );
    }

    #[test]
    fn zero_leeway_is_strict() {
        let mut p = policy();
        p.leeway = 0;
        let mut v = good();
        v["exp"] = NOW.into();
        assert_eq!(p.check(&serde_json::from_value(v).unwrap(), NOW), Err(VerifyError::Expired));
    }

    #[test]
    fn issuer_and_audience() {
        assert_eq!(
            check(|v| v["iss"] = "https://other.cloudflareaccess.com".into()),
            Err(VerifyError::BadIssuer)
        );
        assert_eq!(
            check(|v| v["iss"] = "https://team.cloudflareaccess.com/".into()),
            Err(VerifyError::BadIssuer)
        );
        assert_eq!(check(|v| v["aud"] = "aud2".into()), Ok(()), "aud as a string");
        assert_eq!(check(|v| v["aud"] = serde_json::json!(["x", "aud2"])), Ok(()));
        assert_eq!(check(|v| v["aud"] = serde_json::json!(["x"])), Err(VerifyError::BadAudience));
        assert_eq!(check(|v| v["aud"] = serde_json::json!([])), Err(VerifyError::BadAudience));
        assert_eq!(
            check(|v| {
                v.as_object_mut().unwrap().remove("aud");
            }),
            Err(VerifyError::BadAudience)
        );
        assert_eq!(check(|v| v["type"] = "org".into()), Err(VerifyError::NotAppToken));
        assert_eq!(
            check(|v| {
                v.as_object_mut().unwrap().remove("type");
            }),
            Ok(())
        );
    }

    #[test]
    fn wrong_json_types_do_not_parse() {
        assert!(serde_json::from_str::<Claims>(r#"{"exp":"1"}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"aud":5}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"aud":[5]}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"exp":1,"exp":2}"#).is_err());
        assert!(crate::token::from_json_object::<Claims>(b"[1, 2]").is_none());
        assert!(crate::token::from_json_object::<Claims>(b" {}").is_some());
        assert_eq!(claims(r#"{"exp":1.5}"#).exp, Some(1.5));
    }

    #[test]
    fn team_domains() {
        assert_eq!(
            normalize_team_domain("https://t.cloudflareaccess.com/"),
            "t.cloudflareaccess.com"
        );
        assert_eq!(normalize_team_domain("t.cloudflareaccess.com"), "t.cloudflareaccess.com");
        assert!(valid_team_domain("t.cloudflareaccess.com"));
        assert!(valid_team_domain("t.fed.cloudflareaccess.com"));
        for bad in ["", "t", "t..com", "-t.com", "t/x.com", "http://t.com", "t.com:443", "t com.x"]
        {
            assert!(!valid_team_domain(bad), "{bad}");
        }
    }
}
