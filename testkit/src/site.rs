//! The test site: one Cloudflare Access team and application, and tokens for them.
//!
//! Every test file uses these instead of its own copies; a test that needs a second
//! application uses [`OTHER_AUD`] (or its own value, if no other file needs it).

use cf_access_dev::{mint, now, user_claims, CertsServer, KeyPair};
use serde_json::Value;

use crate::Nginx;

/// The team domain (`cf_access_team_domain`).
pub const TEAM: &str = "team.cloudflareaccess.com";
/// The issuer of [`TEAM`]'s tokens (`iss`).
pub const ISS: &str = "https://team.cloudflareaccess.com";
/// The application's AUD tag (`cf_access_aud`).
pub const AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
/// Another application's AUD tag, for tokens that must not open [`AUD`]'s locations.
pub const OTHER_AUD: &str = "app-two";
/// The request header Cloudflare puts the token in.
pub const HDR: &str = "Cf-Access-Jwt-Assertion";
/// The cookie a browser carries the token in.
pub const COOKIE: &str = "CF_Authorization";
/// The user of [`token`] and [`claims`].
pub const EMAIL: &str = "alice@example.com";
/// Lifetime of the tokens made here, in seconds.
pub const TTL: i64 = 600;

/// A valid user token's claims for [`TEAM`] and [`AUD`]: [`EMAIL`], issued now, valid for
/// [`TTL`] seconds.
pub fn claims() -> Value {
    user_claims(TEAM, AUD, EMAIL, now(), TTL)
}

/// A valid user token for [`TEAM`] and [`AUD`] ([`claims`]) signed by `key`.
pub fn token(key: &KeyPair) -> String {
    mint(key, &claims())
}

/// A user token for [`TEAM`] and `aud` for `email`, issued now, valid for [`TTL`] seconds,
/// signed by `key`.
pub fn token_for(key: &KeyPair, aud: &str, email: &str) -> String {
    mint(key, &user_claims(TEAM, aud, email, now(), TTL))
}

/// A fresh key, a certs endpoint serving it, and `site` started against that endpoint: the
/// start of most stories.
pub fn start_site(site: impl FnOnce(&CertsServer) -> Nginx) -> (KeyPair, CertsServer, Nginx) {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = site(&certs);
    (key, certs, nginx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree_with_the_dev_tool() {
        assert_eq!(ISS, cf_access_dev::issuer(TEAM));
        let c = claims();
        assert_eq!(c["iss"], ISS);
        assert_eq!(c["email"], EMAIL);
        assert_eq!(c["aud"], serde_json::json!([AUD]));
        assert_ne!(AUD, OTHER_AUD);
    }
}
