//! A stand-in for Cloudflare Access's `GET /cdn-cgi/access/get-identity`: the identity of
//! the user whose application token is in the `CF_Authorization` cookie, with the user's SSO
//! groups. [`CertsServer`](crate::CertsServer) routes that path here; this file decides the
//! answer (verification, identity JSON, faults) and the server writes it.
//!
//! A token is accepted when it is RS256, signed by a key of the server's current key set
//! (matched by `kid`) and not expired (`exp` > now). The audience, issuer and `nbf` are not
//! checked: the stand-in does not know the team or the application.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::listener::lock;
use crate::server::{content_type_for, response};
use crate::Behavior;

/// The path answered, whatever the query string.
pub const IDENTITY_PATH: &str = "/cdn-cgi/access/get-identity";
/// The cookie carrying the application token.
pub const COOKIE_NAME: &str = "CF_Authorization";
/// The `email` of [`IdentityFault::OtherUser`] answers.
pub const OTHER_USER_EMAIL: &str = "someone-else@example.com";
/// The `user_uuid` of [`IdentityFault::OtherUser`] answers.
pub const OTHER_USER_UUID: &str = "00000000-0000-4000-8000-0000000000ff";

/// The fixed `account_id` of every identity.
const ACCOUNT_ID: &str = "699d98642c564d2e855e9661899b7252";
/// The fixed `idp.id` of every identity.
const IDP_ID: &str = "bbd0a3b7-0ff6-4c4b-a4f4-6a3e1a3e7e1c";

/// One SSO group, as get-identity lists it: `{"id","email","name"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub email: String,
    pub name: String,
}

impl Group {
    pub fn new(id: impl Into<String>, email: impl Into<String>, name: impl Into<String>) -> Group {
        Group { id: id.into(), email: email.into(), name: name.into() }
    }

    /// A group called `name`, its id and email derived from the name: `id` is the first 15
    /// hex chars of SHA-256(name) (stable, and as long as Cloudflare's), `email` is the
    /// lowercased name, every char but `a-z 0-9 . _ -` made a `-`, `@example.com`
    /// (`"Finance Team"` -> `finance-team@example.com`).
    pub fn named(name: &str) -> Group {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
        let mut id = crate::hex(digest.as_ref());
        id.truncate(15);
        let local: String = name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
            .collect();
        Group { id, email: format!("{local}@example.com"), name: name.to_string() }
    }

    fn to_json(&self) -> Value {
        json!({"id": self.id, "email": self.email, "name": self.name})
    }
}

/// How get-identity misbehaves (see [`IdentityConfig::fault`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityFault {
    /// That status with that body, whatever the token (`application/json` if the body looks
    /// like JSON, else `text/plain`).
    Status(u16, String),
    /// For a token it accepts: 200 with the identity JSON cut in half (a correct
    /// Content-Length for the bytes sent, but not JSON).
    InvalidJson,
    /// For a token it accepts: 200 with a valid identity of at least that many bytes, its
    /// `groups` padded with groups `pad-NNNNNN`.
    Oversize(usize),
    /// For a token it accepts: 200 with another user's identity: `email`
    /// [`OTHER_USER_EMAIL`], `user_uuid` [`OTHER_USER_UUID`] (groups as configured for the
    /// token's user).
    OtherUser,
    /// Read the request, never answer, whatever the token: the connection is held until
    /// the client closes it or the server is dropped.
    Hang,
    /// Read the request, then close the connection without answering, whatever the token.
    Close,
}

/// What get-identity answers: set with [`CertsServer::set_identity`](crate::CertsServer::set_identity),
/// it takes effect for the next request. Independent of the certs [`Behavior`]: a certs
/// fault leaves get-identity answering, and an identity fault leaves the certs answering.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityConfig {
    /// The `groups` of every user without an entry in `groups_by_email`.
    pub groups: Vec<Group>,
    /// Per-email groups (the token's `email`, compared ignoring ASCII case); replaces
    /// `groups` for that user.
    pub groups_by_email: BTreeMap<String, Vec<Group>>,
    /// Top-level fields added to (or replacing those of) every identity answered to a user
    /// or service token, e.g. `{"geo":{"country":"FR"},"custom":1}`.
    pub extra: Map<String, Value>,
    /// Top-level fields removed from every identity (after `extra`), e.g. `"groups"`.
    pub remove: Vec<String>,
    /// Wait this long before answering, whatever the answer (cut short, without an answer,
    /// if the server is dropped).
    pub delay_ms: u64,
    /// `None`: answer honestly.
    pub fault: Option<IdentityFault>,
}

impl IdentityConfig {
    /// No groups, no delay, no fault: `IdentityConfig::default()`.
    pub fn new() -> IdentityConfig {
        IdentityConfig::default()
    }

    /// Sets the default groups.
    pub fn with_groups(mut self, groups: Vec<Group>) -> IdentityConfig {
        self.groups = groups;
        self
    }

    /// Sets the groups of the user with that email.
    pub fn with_groups_for(mut self, email: &str, groups: Vec<Group>) -> IdentityConfig {
        self.groups_by_email.insert(email.to_string(), groups);
        self
    }

    /// Adds the fields of `extra` (a JSON object; panics on anything else) to [`extra`](Self::extra).
    pub fn with_extra(mut self, extra: Value) -> IdentityConfig {
        match extra {
            Value::Object(m) => self.extra.extend(m),
            other => panic!("IdentityConfig::with_extra: not a JSON object: {other}"),
        }
        self
    }

    /// Adds `field` to [`remove`](Self::remove).
    pub fn without(mut self, field: &str) -> IdentityConfig {
        self.remove.push(field.to_string());
        self
    }

    pub fn with_delay_ms(mut self, delay_ms: u64) -> IdentityConfig {
        self.delay_ms = delay_ms;
        self
    }

    pub fn with_fault(mut self, fault: IdentityFault) -> IdentityConfig {
        self.fault = Some(fault);
        self
    }

    /// The groups of the user with that email.
    pub fn groups_of(&self, email: &str) -> &[Group] {
        if let Some(g) = self.groups_by_email.get(email) {
            return g;
        }
        self.groups_by_email
            .iter()
            .find(|(e, _)| e.eq_ignore_ascii_case(email))
            .map_or(&self.groups, |(_, g)| g)
    }
}

/// An RSA public key of the current key set.
#[derive(Clone)]
struct RsaKey {
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

/// The RSA keys of a certs JSON body (`{"keys":[{"kid","n","e",...}...]}`); `None` if the
/// body has no `keys` array (it is not a key set: the previous one stays current).
/// Entries that are not usable RSA keys are skipped.
fn keys_from_certs(body: &str) -> Option<Vec<RsaKey>> {
    let v: Value = serde_json::from_str(body).ok()?;
    let keys = v.get("keys")?.as_array()?;
    let b64 = |k: &Value, name: &str| {
        k.get(name).and_then(Value::as_str).and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
    };
    Some(
        keys.iter()
            .filter_map(|k| {
                let kid = k.get("kid")?.as_str()?.to_string();
                Some(RsaKey { kid, n: b64(k, "n")?, e: b64(k, "e")? })
            })
            .collect(),
    )
}

/// The claims of `token` if it is RS256, signed by one of `keys` (by `kid`) and not expired
/// at `now`; else why not (the `reason` of the 401).
fn verify(token: &str, keys: &[RsaKey], now: i64) -> Result<Map<String, Value>, &'static str> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return Err("malformed token");
    };
    let json_part = |part: &str| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(m) => Some(m),
            _ => None,
        }
    };
    let header = json_part(h).ok_or("malformed token")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("unsupported algorithm");
    }
    let kid = header.get("kid").and_then(Value::as_str).ok_or("no kid")?;
    let key = keys.iter().find(|k| k.kid == kid).ok_or("unknown key")?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| "malformed token")?;
    let public = aws_lc_rs::signature::RsaPublicKeyComponents { n: &key.n, e: &key.e };
    let signed = &token[..h.len() + 1 + p.len()];
    public
        .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig)
        .map_err(|_| "bad signature")?;
    let claims = json_part(p).ok_or("malformed token")?;
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if exp > now as f64 => Ok(claims),
        Some(_) => Err("expired"),
        None => Err("no exp"),
    }
}

/// The `CF_Authorization` cookie of a request head (the first one, in any `Cookie` header).
pub(crate) fn cookie(head: &str) -> Option<&str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("cookie") {
            return None;
        }
        value.split(';').find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == COOKIE_NAME).then(|| {
                let v = v.trim();
                v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
            })
        })
    })
}

/// Whether a request head asks for get-identity: a GET of [`IDENTITY_PATH`] (origin form or
/// absolute form), with or without a query string.
pub(crate) fn is_identity_request(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (Some("GET"), Some(target)) = (words.next(), words.next()) else {
        return false;
    };
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    path == IDENTITY_PATH
}

/// For the first bytes of a connection: `Some(true)` if they start a GET of
/// [`IDENTITY_PATH`] (origin form), `Some(false)` if they cannot, `None` if more bytes are
/// needed to tell.
pub(crate) fn starts_identity_request(first: &[u8]) -> Option<bool> {
    let prefix = format!("GET {IDENTITY_PATH}");
    let prefix = prefix.as_bytes();
    if first.len() <= prefix.len() {
        return if prefix.starts_with(first) { None } else { Some(false) };
    }
    Some(first.starts_with(prefix) && matches!(first[prefix.len()], b' ' | b'?' | b'#'))
}

/// What to do with a get-identity request.
pub(crate) enum Reply {
    Bytes(Vec<u8>),
    Hang,
    Close,
}

/// The server's get-identity state: its configuration, the key set tokens are verified
/// with, and the request counters.
#[derive(Default)]
pub(crate) struct IdentityState {
    config: Mutex<IdentityConfig>,
    keys: Mutex<Vec<RsaKey>>,
    hits: AtomicUsize,
    hits_by_email: Mutex<HashMap<String, usize>>,
}

impl IdentityState {
    pub(crate) fn set_config(&self, config: IdentityConfig) {
        *lock(&self.config) = config;
    }

    pub(crate) fn config(&self) -> IdentityConfig {
        lock(&self.config).clone()
    }

    /// If `b` serves a certs JSON body with a `keys` array, that becomes the key set.
    pub(crate) fn learn_keys(&self, b: &Behavior) {
        let body = match b {
            Behavior::Json(body) | Behavior::Slow { body, .. } => body,
            _ => return,
        };
        if let Some(keys) = keys_from_certs(body) {
            *lock(&self.keys) = keys;
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn hits_for(&self, email: &str) -> usize {
        lock(&self.hits_by_email).get(email).copied().unwrap_or(0)
    }

    /// Counts the request (`head`, complete) and decides its answer at time `now`: how long
    /// to wait first, and what to send.
    pub(crate) fn plan(&self, head: &[u8], now: i64) -> (Duration, Reply) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let config = self.config();
        let keys = lock(&self.keys).clone();
        let head = String::from_utf8_lossy(head);
        let claims = cookie(&head).ok_or("no CF_Authorization cookie").and_then(|t| {
            if t.is_empty() {
                return Err("no CF_Authorization cookie");
            }
            verify(t, &keys, now)
        });
        if let Some(email) = claims.as_ref().ok().and_then(|c| c.get("email")?.as_str()) {
            if !email.is_empty() {
                *lock(&self.hits_by_email).entry(email.to_string()).or_default() += 1;
            }
        }
        let reply = match (&config.fault, claims) {
            (Some(IdentityFault::Status(code, body)), _) => {
                Reply::Bytes(response(*code, content_type_for(body), body))
            }
            (Some(IdentityFault::Hang), _) => Reply::Hang,
            (Some(IdentityFault::Close), _) => Reply::Close,
            (_, Err(why)) => {
                let body = json!({"err": "invalid token", "reason": why}).to_string();
                Reply::Bytes(response(401, "application/json", &body))
            }
            (fault, Ok(claims)) => {
                let body = answer_body(&config, fault.as_ref(), &claims, now);
                Reply::Bytes(response(200, "application/json", &body))
            }
        };
        (Duration::from_millis(config.delay_ms), reply)
    }
}

/// The body answered for a verified token, `fault` applied.
fn answer_body(
    config: &IdentityConfig,
    fault: Option<&IdentityFault>,
    claims: &Map<String, Value>,
    now: i64,
) -> String {
    let mut id = identity(config, claims, now);
    match fault {
        Some(IdentityFault::OtherUser) => {
            id.insert("email".into(), OTHER_USER_EMAIL.into());
            id.insert("name".into(), "someone-else".into());
            let sub = claims.get("sub").and_then(Value::as_str);
            let uuid = if sub == Some(OTHER_USER_UUID) {
                "00000000-0000-4000-8000-0000000000fe"
            } else {
                OTHER_USER_UUID
            };
            id.insert("user_uuid".into(), uuid.into());
            Value::Object(id).to_string()
        }
        Some(IdentityFault::Oversize(min)) => pad(id, *min),
        Some(IdentityFault::InvalidJson) => {
            let mut body = Value::Object(id).to_string();
            let mut cut = body.len() / 2;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body
        }
        _ => Value::Object(id).to_string(),
    }
}

/// `id` serialized, at least `min` bytes long: padding groups appended to `groups`.
fn pad(mut id: Map<String, Value>, min: usize) -> String {
    let mut n = 0usize;
    loop {
        let body = Value::Object(id.clone()).to_string();
        if body.len() >= min {
            return body;
        }
        // Every padding group serializes to about the same size: add enough at once.
        let one = |n: usize| {
            Group::new(format!("pad-{n:06}"), format!("pad-{n:06}@example.com"), "Padding")
                .to_json()
        };
        let each = one(0).to_string().len() + 1;
        let more = (min - body.len()).div_ceil(each).max(1);
        let groups = id.entry("groups").or_insert_with(|| Value::Array(Vec::new()));
        if !groups.is_array() {
            *groups = Value::Array(Vec::new());
        }
        if let Value::Array(list) = groups {
            list.extend((n..n + more).map(one));
        }
        n += more;
    }
}

/// The identity of a verified token's user (or service token), before any fault.
fn identity(config: &IdentityConfig, claims: &Map<String, Value>, now: i64) -> Map<String, Value> {
    let s = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let (email, sub, common_name) = (s("email"), s("sub"), s("common_name"));
    let service = email.is_empty() && !common_name.is_empty();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{sub}\n{email}\n{common_name}").as_bytes(),
    );
    let id_hex = crate::hex(&digest.as_ref()[..16]);
    let name = if service { common_name } else { email.split('@').next().unwrap_or_default() };
    let groups: Vec<Value> = if service {
        Vec::new()
    } else {
        config.groups_of(email).iter().map(Group::to_json).collect()
    };
    let country = match claims.get("country") {
        Some(Value::String(c)) => c.clone(),
        _ => "US".to_string(),
    };
    let mut id = json!({
        "id": id_hex,
        "name": name,
        "email": email,
        "user_uuid": sub,
        "account_id": ACCOUNT_ID,
        "iat": claims.get("iat").cloned().unwrap_or(Value::from(now)),
        "ip": "127.0.0.1",
        "amr": if service { json!([]) } else { json!(["pwd"]) },
        "idp": {"id": IDP_ID, "type": "okta"},
        "geo": {"country": country},
        "groups": groups,
        "devicePosture": {},
        "is_warp": false,
        "is_gateway": false,
        "service_token_status": service,
        "version": 2,
    });
    if service {
        id["common_name"] = Value::from(common_name);
        id["service_token_id"] = Value::from(common_name.trim_end_matches(".access"));
    }
    let Value::Object(mut id) = id else { unreachable!("json! of an object is an object") };
    for (k, v) in &config.extra {
        id.insert(k.clone(), v.clone());
    }
    for k in &config.remove {
        id.remove(k);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{mint, now, service_claims, user_claims, CertsServer, KeyPair};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::OnceLock;
    use std::time::Instant;

    const TEAM: &str = "team.cloudflareaccess.com";

    fn keys() -> &'static [KeyPair; 2] {
        static KEYS: OnceLock<[KeyPair; 2]> = OnceLock::new();
        KEYS.get_or_init(|| [KeyPair::generate(), KeyPair::generate()])
    }

    /// A user token signed by `key`: (token, claims).
    fn user(key: &KeyPair, email: &str, ttl: i64) -> (String, Value) {
        let claims = user_claims(TEAM, "aud", email, now(), ttl);
        (mint(key, &claims), claims)
    }

    /// Sends `GET path` with these `Cookie` header lines, reads to EOF:
    /// (status, head, body); status 0 if nothing came back.
    fn get(addr: SocketAddr, path: &str, cookies: &[&str]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for c in cookies {
            req += &format!("Cookie: {c}\r\n");
        }
        s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, head.to_string(), body.to_string())
    }

    /// get-identity with `CF_Authorization=token`: (status, body as JSON, or Null).
    fn identity_of(srv: &CertsServer, token: &str) -> (u16, Value) {
        let (code, _, body) = get(srv.addr(), IDENTITY_PATH, &[&format!("{COOKIE_NAME}={token}")]);
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn groups(names: &[&str]) -> Vec<Group> {
        names.iter().map(|n| Group::named(n)).collect()
    }

    fn group_names(id: &Value) -> Vec<&str> {
        id["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn user_token_gets_its_identity_and_groups() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        assert!(srv.identity_url().ends_with("/cdn-cgi/access/get-identity"));
        srv.set_identity(IdentityConfig::new().with_groups(vec![
            Group::new("02fk6b3p3majl10", "finance@example.com", "FinanceTeam"),
            Group::named("Eng"),
        ]));
        let (token, claims) = user(&keys()[0], "alice@example.com", 600);
        let (code, id) = identity_of(&srv, &token);
        assert_eq!(code, 200, "{id}");
        assert_eq!(id["email"], "alice@example.com");
        assert_eq!(id["user_uuid"], claims["sub"]);
        assert_eq!(id["name"], "alice");
        assert_eq!(id["iat"], claims["iat"]);
        assert_eq!(
            id["groups"],
            json!([
                {"id": "02fk6b3p3majl10", "email": "finance@example.com", "name": "FinanceTeam"},
                {"id": Group::named("Eng").id, "email": "eng@example.com", "name": "Eng"},
            ])
        );
        assert_eq!(id["idp"]["type"], "okta");
        assert_eq!(id["geo"], json!({"country": "US"}));
        assert_eq!(id["amr"], json!(["pwd"]));
        assert_eq!(id["ip"], "127.0.0.1");
        assert_eq!((id["is_warp"].clone(), id["is_gateway"].clone()), (json!(false), json!(false)));
        assert_eq!(id["service_token_status"], false);
        assert_eq!(id["version"], 2);
        assert_eq!(id["devicePosture"], json!({}));
        assert_eq!(id["account_id"].as_str().unwrap().len(), 32);
        assert_eq!(id["id"].as_str().unwrap().len(), 32);

        // A query string, and the certs path, unchanged.
        let path = format!("{IDENTITY_PATH}?x=1");
        let (code, head, _) = get(srv.addr(), &path, &[&format!("{COOKIE_NAME}={token}")]);
        assert_eq!(code, 200);
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let (code, _, body) = get(srv.addr(), "/cdn-cgi/access/certs", &[]);
        assert_eq!((code, body), (200, crate::certs_json(&[&keys()[0]])));
        assert_eq!(srv.hits(), 1, "get-identity is not a certs hit");
        assert_eq!(srv.identity_hits(), 2);
        assert_eq!(srv.identity_hits_for("alice@example.com"), 2);
        assert_eq!(srv.identity_hits_for("bob@example.com"), 0);
        // Not a GET, or a longer path: the certs behavior.
        let (code, _, body) = get(srv.addr(), &format!("{IDENTITY_PATH}x"), &[]);
        assert_eq!((code, body), (200, crate::certs_json(&[&keys()[0]])));
        assert_eq!((srv.hits(), srv.identity_hits()), (2, 2));
    }

    #[test]
    fn per_email_groups() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        let config = IdentityConfig::new()
            .with_groups(groups(&["Everyone"]))
            .with_groups_for("alice@example.com", groups(&["Finance", "Eng"]))
            .with_groups_for("nobody@example.com", vec![]);
        assert_eq!(config.groups_of("ALICE@example.com").len(), 2);
        srv.set_identity(config);
        let (alice, _) = user(&keys()[0], "alice@example.com", 600);
        let (bob, _) = user(&keys()[0], "bob@example.com", 600);
        let (nobody, _) = user(&keys()[0], "nobody@example.com", 600);
        assert_eq!(group_names(&identity_of(&srv, &alice).1), ["Finance", "Eng"]);
        assert_eq!(group_names(&identity_of(&srv, &bob).1), ["Everyone"]);
        assert!(group_names(&identity_of(&srv, &nobody).1).is_empty());
        // Changed while running.
        srv.set_identity(srv.identity().with_groups_for("bob@example.com", groups(&["Ops"])));
        assert_eq!(group_names(&identity_of(&srv, &bob).1), ["Ops"]);
        assert_eq!(srv.identity_hits_for("bob@example.com"), 2);
    }

    #[test]
    fn tokens_it_cannot_verify_get_401() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        let (other_key, _) = user(&keys()[1], "a@example.com", 600);
        let (expired, _) = user(&keys()[0], "a@example.com", -10);
        let claims = user_claims(TEAM, "aud", "a@example.com", now(), 600);
        let hs256 = crate::sign_hs256(
            &keys()[0].public_key_der(),
            &json!({"alg": "HS256", "kid": keys()[0].kid()}).to_string(),
            &claims.to_string(),
        );
        let ps256 = crate::sign_raw(
            &keys()[0],
            "PS256",
            &json!({"alg": "PS256", "kid": keys()[0].kid()}).to_string(),
            &claims.to_string(),
        );
        let mut no_exp = claims.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let no_exp = mint(&keys()[0], &no_exp);
        let (good, _) = user(&keys()[0], "a@example.com", 600);
        let tampered = format!("{}x", &good[..good.len() - 1]);
        for bad in [&other_key, &expired, &hs256, &ps256, &no_exp, &tampered, "", "a.b", "a.b.c"] {
            let (code, body) = identity_of(&srv, bad);
            assert_eq!(code, 401, "{bad}");
            assert_eq!(body["err"], "invalid token");
        }
        // No cookie, or another cookie only.
        for cookies in [&[][..], &["session=1"][..]] {
            let (code, head, body) = get(srv.addr(), IDENTITY_PATH, cookies);
            assert_eq!(code, 401);
            assert!(head.contains("Content-Type: application/json"), "{head}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["err"], "invalid token");
        }
        assert_eq!(srv.identity_hits(), 11);
        assert_eq!(srv.identity_hits_for("a@example.com"), 0);
        assert_eq!(identity_of(&srv, &good).0, 200);
        assert_eq!(srv.identity_hits_for("a@example.com"), 1);
        assert_eq!(srv.hits(), 0);
    }

    #[test]
    fn cookie_among_other_cookies() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        let (token, _) = user(&keys()[0], "c@example.com", 600);
        let tok = format!("{COOKIE_NAME}={token}");
        for cookies in [
            vec![format!("a=1; {tok}; b=2")],
            vec![format!("a=1;{tok}")],
            vec!["a=1; b=2".to_string(), format!("x=y; {tok}")],
            vec![format!("a=1; {COOKIE_NAME}=\"{token}\"")],
        ] {
            let refs: Vec<&str> = cookies.iter().map(String::as_str).collect();
            let (code, _, body) = get(srv.addr(), IDENTITY_PATH, &refs);
            assert_eq!(code, 200, "{cookies:?}");
            assert!(body.contains("c@example.com"));
        }
        // A cookie whose name merely contains ours does not count.
        let (code, _, _) = get(srv.addr(), IDENTITY_PATH, &[&format!("X{tok}")]);
        assert_eq!(code, 401);
    }

    #[test]
    fn cookie_parsing() {
        let head =
            "GET / HTTP/1.1\r\nHost: x\r\ncookie:a=b ;  CF_Authorization = t.o.k ; c=d\r\n\r\n";
        assert_eq!(cookie(head), Some("t.o.k"));
        assert_eq!(cookie("GET / HTTP/1.1\r\nCF_Authorization: x\r\n\r\n"), None);
        assert_eq!(cookie("GET / HTTP/1.1\r\nCookie: cf_authorization=x\r\n\r\n"), None);
        assert_eq!(cookie("GET /?CF_Authorization=x HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn request_matching() {
        let yes = |line: &str| is_identity_request(format!("{line}\r\n\r\n").as_bytes());
        assert!(yes("GET /cdn-cgi/access/get-identity HTTP/1.1"));
        assert!(yes("GET /cdn-cgi/access/get-identity?a=b HTTP/1.0"));
        assert!(yes("GET http://127.0.0.1:1/cdn-cgi/access/get-identity HTTP/1.1"));
        assert!(!yes("POST /cdn-cgi/access/get-identity HTTP/1.1"));
        assert!(!yes("GET /cdn-cgi/access/get-identity/x HTTP/1.1"));
        assert!(!yes("GET /cdn-cgi/access/certs HTTP/1.1"));
        assert!(!yes("GET / HTTP/1.1"));
        assert!(!yes(""));

        assert_eq!(starts_identity_request(b""), None);
        assert_eq!(starts_identity_request(b"GET /cdn"), None);
        assert_eq!(starts_identity_request(b"GET /cdn-cgi/access/get-identity"), None);
        assert_eq!(starts_identity_request(b"GET /cdn-cgi/access/get-identity?"), Some(true));
        assert_eq!(starts_identity_request(b"GET /cdn-cgi/access/get-identity H"), Some(true));
        assert_eq!(starts_identity_request(b"GET /cdn-cgi/access/get-identityx"), Some(false));
        assert_eq!(starts_identity_request(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(starts_identity_request(&[0x16, 0x03, 0x01]), Some(false));
    }

    #[test]
    fn group_named() {
        let g = Group::named("Finance Team");
        assert_eq!(g.email, "finance-team@example.com");
        assert_eq!(g.name, "Finance Team");
        assert_eq!(g.id.len(), 15);
        assert!(g.id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(g, Group::named("Finance Team"));
        assert_ne!(g.id, Group::named("Eng").id);
    }

    #[test]
    fn the_key_set_follows_the_certs_served() {
        let [k0, k1] = keys();
        let srv = CertsServer::start_with_keys(&[k0]);
        let ((t0, _), (t1, _)) = (user(k0, "a@example.com", 600), user(k1, "a@example.com", 600));
        assert_eq!((identity_of(&srv, &t0).0, identity_of(&srv, &t1).0), (200, 401));
        srv.set_keys(&[k0, k1]);
        assert_eq!((identity_of(&srv, &t0).0, identity_of(&srv, &t1).0), (200, 200));
        srv.set_keys(&[k1]);
        assert_eq!((identity_of(&srv, &t0).0, identity_of(&srv, &t1).0), (401, 200));
        // A certs fault, or a body without a key set, keeps the keys.
        srv.set(Behavior::Status(503, "down".into()));
        assert_eq!(identity_of(&srv, &t1).0, 200);
        srv.set(Behavior::Json("{}".into()));
        assert_eq!(identity_of(&srv, &t1).0, 200);
        srv.set(Behavior::Json(r#"{"keys":[]}"#.into()));
        assert_eq!(identity_of(&srv, &t1).0, 401);
        // A dynamic handler's keys.
        let json = crate::certs_json(&[k1]);
        let dynamic = CertsServer::start_dynamic("127.0.0.1:0".parse().unwrap(), move || {
            Behavior::Json(json.clone())
        })
        .unwrap();
        assert_eq!((identity_of(&dynamic, &t0).0, identity_of(&dynamic, &t1).0), (401, 200));
    }

    #[test]
    fn certs_faults_leave_identity_answering_and_back() {
        let k0 = &keys()[0];
        let (token, _) = user(k0, "a@example.com", 600);
        let srv = CertsServer::start_with_keys(&[k0]);
        // A hanging certs endpoint: get-identity still answers.
        srv.set(Behavior::Hang);
        assert_eq!(identity_of(&srv, &token).0, 200);
        // Garbage for everything else, but get-identity is recognized and answered.
        let garbage = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec();
        srv.set(Behavior::Garbage(garbage));
        assert_eq!(identity_of(&srv, &token).0, 200);
        assert_eq!(get(srv.addr(), "/cdn-cgi/access/certs", &[]).0, 400);
        // An identity fault leaves the certs answering.
        srv.set_keys(&[k0]);
        srv.set_identity(IdentityConfig::new().with_fault(IdentityFault::Status(500, "x".into())));
        assert_eq!(get(srv.addr(), "/cdn-cgi/access/certs", &[]).0, 200);
        assert_eq!(identity_of(&srv, &token).0, 500);
        assert_eq!((srv.hits(), srv.identity_hits()), (2, 3));
    }

    #[test]
    fn extra_and_removed_fields() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        srv.set_identity(
            IdentityConfig::new()
                .with_extra(json!({"geo": {"country": "FR"}, "custom": [1, 2], "version": 3}))
                .without("amr"),
        );
        let (token, _) = user(&keys()[0], "a@example.com", 600);
        let (code, id) = identity_of(&srv, &token);
        assert_eq!(code, 200);
        assert_eq!(id["geo"], json!({"country": "FR"}));
        assert_eq!(id["custom"], json!([1, 2]));
        assert_eq!(id["version"], 3);
        assert!(id.get("amr").is_none());
        assert_eq!(id["email"], "a@example.com");
    }

    #[test]
    fn service_token_has_status_and_no_groups() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        srv.set_identity(IdentityConfig::new().with_groups(groups(&["Everyone"])));
        let claims = service_claims(TEAM, "aud", "0123abcd.access", now(), 600);
        let (code, id) = identity_of(&srv, &mint(&keys()[0], &claims));
        assert_eq!(code, 200);
        assert_eq!(id["service_token_status"], true);
        assert_eq!(id["groups"], json!([]));
        assert_eq!(id["email"], "");
        assert_eq!(id["user_uuid"], "");
        assert_eq!(id["common_name"], "0123abcd.access");
        assert_eq!(id["service_token_id"], "0123abcd");
        assert_eq!(srv.identity_hits(), 1);
    }

    #[test]
    fn status_invalid_json_oversize_and_other_user_faults() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        let (token, claims) = user(&keys()[0], "a@example.com", 600);
        let set = |f: IdentityFault| srv.set_identity(IdentityConfig::new().with_fault(f));

        set(IdentityFault::Status(503, r#"{"err":"busy"}"#.into()));
        assert_eq!(identity_of(&srv, &token), (503, json!({"err": "busy"})));
        // Whatever the token.
        let (code, head, body) = get(srv.addr(), IDENTITY_PATH, &[]);
        assert_eq!((code, body.as_str()), (503, r#"{"err":"busy"}"#));
        assert!(head.contains("Content-Type: application/json"), "{head}");
        set(IdentityFault::Status(200, "not json".into()));
        let (code, head, body) = get(srv.addr(), IDENTITY_PATH, &[]);
        assert_eq!((code, body.as_str()), (200, "not json"));
        assert!(head.contains("text/plain"), "{head}");

        set(IdentityFault::InvalidJson);
        let cookie = format!("{COOKIE_NAME}={token}");
        let (code, head, body) = get(srv.addr(), IDENTITY_PATH, &[&cookie]);
        assert_eq!(code, 200);
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.starts_with('{') && body.len() > 50, "{body}");
        assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
        // An unverifiable token still gets its 401.
        assert_eq!(identity_of(&srv, "x.y.z").0, 401);

        for min in [10, 5_000, 100_000] {
            srv.set_identity(
                IdentityConfig::new()
                    .with_groups(groups(&["Eng"]))
                    .with_fault(IdentityFault::Oversize(min)),
            );
            let (code, _, body) = get(srv.addr(), IDENTITY_PATH, &[&cookie]);
            assert_eq!(code, 200);
            assert!(body.len() >= min, "{} < {min}", body.len());
            assert!(body.len() < min + 1000, "{} >> {min}", body.len());
            let id: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(id["email"], "a@example.com");
            let names = group_names(&id);
            assert_eq!(names[0], "Eng");
            assert!(id["groups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["id"].is_string() && g["email"].is_string() && g["name"].is_string()));
        }

        set(IdentityFault::OtherUser);
        let (code, id) = identity_of(&srv, &token);
        assert_eq!(code, 200);
        assert_eq!(id["email"], OTHER_USER_EMAIL);
        assert_eq!(id["user_uuid"], OTHER_USER_UUID);
        assert_ne!(id["user_uuid"], claims["sub"]);
        // Counted for the token's user.
        assert_eq!(srv.identity_hits_for("a@example.com"), 6);
        assert_eq!(srv.identity_hits_for(OTHER_USER_EMAIL), 0);
    }

    #[test]
    fn close_fault_closes_without_an_answer() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        srv.set_identity(IdentityConfig::new().with_fault(IdentityFault::Close));
        let (token, _) = user(&keys()[0], "a@example.com", 600);
        assert_eq!(get(srv.addr(), IDENTITY_PATH, &[&format!("{COOKIE_NAME}={token}")]).0, 0);
        let (code, head, body) = get(srv.addr(), IDENTITY_PATH, &[]);
        assert_eq!((code, head.as_str(), body.as_str()), (0, "", ""));
        assert_eq!(srv.identity_hits(), 2);
        assert_eq!(srv.identity_hits_for("a@example.com"), 1);
    }

    /// Sends a get-identity request with `token`, waits (up to 5 s) until the server has it.
    fn send_and_wait(srv: &CertsServer, token: &str) -> TcpStream {
        let before = srv.identity_hits();
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        write!(s, "GET {IDENTITY_PATH} HTTP/1.1\r\nCookie: {COOKIE_NAME}={token}\r\n\r\n").unwrap();
        let t = Instant::now();
        while srv.identity_hits() == before && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(srv.identity_hits(), before + 1);
        s
    }

    /// Drops `srv` (promptly), then expects `s` closed without an answer.
    fn drop_and_expect_closed(srv: CertsServer, mut s: TcpStream) {
        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn hang_fault_holds_until_dropped() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        srv.set_identity(IdentityConfig::new().with_fault(IdentityFault::Hang));
        let (token, _) = user(&keys()[0], "a@example.com", 600);
        let mut s = send_and_wait(&srv, &token);
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).expect_err("no answer");
        assert!(crate::server::is_timeout(&err), "{err}");
        // The certs still answer meanwhile.
        assert_eq!(get(srv.addr(), "/cdn-cgi/access/certs", &[]).0, 200);
        drop_and_expect_closed(srv, s);
    }

    #[test]
    fn delay_delays_and_does_not_block_drop() {
        let srv = CertsServer::start_with_keys(&[&keys()[0]]);
        srv.set_identity(IdentityConfig::new().with_delay_ms(200));
        let (token, _) = user(&keys()[0], "a@example.com", 600);
        let t = Instant::now();
        assert_eq!(identity_of(&srv, &token).0, 200);
        assert!(t.elapsed() >= Duration::from_millis(200), "{:?}", t.elapsed());
        // The 401 waits too; the certs do not.
        let t = Instant::now();
        assert_eq!(identity_of(&srv, "x").0, 401);
        assert!(t.elapsed() >= Duration::from_millis(200), "{:?}", t.elapsed());
        let t = Instant::now();
        assert_eq!(get(srv.addr(), "/cdn-cgi/access/certs", &[]).0, 200);
        assert!(t.elapsed() < Duration::from_millis(200), "{:?}", t.elapsed());

        srv.set_identity(IdentityConfig::new().with_delay_ms(60_000));
        let s = send_and_wait(&srv, &token);
        drop_and_expect_closed(srv, s);
    }
}
