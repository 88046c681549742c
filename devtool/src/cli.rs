//! Hand-written argument parsing for the `cf-access-dev` binary.

use cf_access_dev::{Group, IdentityConfig, IdentityFault};
use serde_json::Value;

pub const USAGE: &str = "\
cf-access-dev: a local stand-in for Cloudflare Access (keys, certs and get-identity, tokens)

USAGE:
    cf-access-dev keygen --out FILE [--force]
    cf-access-dev jwks --key FILE [--key FILE...]
    cf-access-dev serve [--listen ADDR] --key FILE [--key FILE...] [--allow-non-loopback]
                        [--group NAME...] [--user-group EMAIL=NAME...]
                        [--identity-delay-ms N] [--identity-fault KIND]
    cf-access-dev mint --key FILE --team TEAM_DOMAIN --aud TAG [--aud TAG...]
                       [--email EMAIL | --service COMMON_NAME] [--ttl SECONDS]
                       [--nbf-offset SECONDS] [--claim NAME=VALUE...] [--no-claim NAME...]
                       [--count N [--first I] [--threads T]] [--out FILE]
    cf-access-dev help | --help | -h

COMMANDS:
    keygen   Write a new RSA-2048 private key (PKCS#8 PEM) to FILE, print its kid.
             Refuses to overwrite an existing FILE unless --force.
    jwks     Print the certs JSON Cloudflare serves at /cdn-cgi/access/certs:
             {\"keys\":[...],\"public_cert\":{...},\"public_certs\":[...]}.
             Keys keep the given order; the LAST --key is the current one.
    serve    Serve that JSON over HTTP at any path (default --listen 127.0.0.1:8787),
             print the URL (http://ADDR/cdn-cgi/access/certs), run until killed.
             The key files are re-read on every request, so replacing or adding a
             file rotates keys. Non-loopback addresses need --allow-non-loopback.
             It also answers GET /cdn-cgi/access/get-identity like Cloudflare: for
             the token in the CF_Authorization cookie, when it is RS256, signed by
             one of the --key files (by kid) and not expired, the identity JSON
             (email, user_uuid = the token's sub, the --group groups, fixed idp,
             geo, amr...; service tokens: service_token_status true, no groups);
             for any other token, or none, 401 {\"err\":\"invalid token\"}.
    mint     Print an RS256 application token signed by --key (header kid = its kid).
             A user token for --email (default user@example.com), or a service
             token for --service COMMON_NAME (e.g. 0123abcd.access).
             With --count N, N distinct tokens, one per line.

MINT OPTIONS:
    --team TEAM_DOMAIN   e.g. myteam.cloudflareaccess.com (https:// and a trailing /
                         are stripped); iss = https://TEAM_DOMAIN
    --aud TAG            application audience tag; repeat for several
    --ttl SECONDS        exp = now + SECONDS (default 3600; negative = expired)
    --nbf-offset SECONDS nbf = now + SECONDS (positive = not yet valid)
    --claim NAME=VALUE   set a claim; VALUE is parsed as JSON if it can be,
                         else taken as a string (--claim exp=0, --claim email=x@y)
    --no-claim NAME      remove a claim (e.g. --no-claim exp)
    --count N            mint N distinct tokens, one per line, in order, signed on
                         every CPU (RSA-2048 signing: ~1-2k tokens/s per core).
                         Token number i (I, I+1, ...) has the email LOCAL+i@DOMAIN
                         (user+1@example.com, ...; service tokens keep their
                         common_name) and, like every token, a random
                         identity_nonce and sub. Progress goes to stderr.
    --first I            number of the first token (default 1), to extend a pool
    --threads T          signing threads (default: the number of CPUs)
    --out FILE           write the token(s) to FILE (created or truncated) instead
                         of standard output

SERVE OPTIONS (get-identity):
    --group NAME         a group every user is in (repeatable); its id is the first 15
                         hex chars of SHA-256(NAME), its email NAME lowercased, other
                         chars than a-z 0-9 . _ - made -, @example.com
    --user-group EMAIL=NAME
                         a group of that user only (repeatable); a user with any
                         --user-group gets those groups instead of the --group ones
    --identity-delay-ms N
                         wait N ms before every get-identity answer
    --identity-fault KIND
                         misbehave on get-identity (the certs answer as usual):
                           status:N[:BODY]  status N, BODY (default {\"err\":\"injected\"})
                           invalid-json     200 with the identity cut in half
                           oversize[:BYTES] 200 with a valid identity of at least BYTES
                                            (default 1048576), groups padded
                           other-user       200 with another user's email and user_uuid
                           hang             never answer
                           close            close the connection without answering
                         (status, hang and close whatever the token; the others for
                         tokens it accepts, the rest still get their 401)

Options also accept the --name=value form. Exit codes: 0 ok, 1 error, 2 usage error.
";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_EMAIL: &str = "user@example.com";
pub const DEFAULT_TTL: i64 = 3600;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Version,
    Keygen { out: String, force: bool },
    Jwks { keys: Vec<String> },
    Serve { listen: String, keys: Vec<String>, allow_non_loopback: bool, identity: IdentityConfig },
    Mint(Mint),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    Email(String),
    Service(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mint {
    pub key: String,
    pub team: String,
    pub aud: Vec<String>,
    pub identity: Identity,
    pub ttl: i64,
    pub nbf_offset: Option<i64>,
    /// In command-line order; later ones win.
    pub claims: Vec<(String, Value)>,
    pub remove: Vec<String>,
    /// `--count`: that many numbered tokens; `None`: one token, unnumbered.
    pub batch: Option<Batch>,
    /// `--out`: where to write the token(s); `None`: standard output.
    pub out: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub count: u64,
    pub first: u64,
    /// `None`: one per CPU.
    pub threads: Option<usize>,
}

/// A usage error: print it with a hint to `--help`, exit 2.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Splits `--name=value` / `--name value` / `--flag` from the arguments
/// following the subcommand.
struct Opts<'a> {
    args: &'a [String],
    pos: usize,
}

impl<'a> Opts<'a> {
    /// Next (name, inline value) or None at the end.
    fn next_name(&mut self) -> Result<Option<(&'a str, Option<&'a str>)>, UsageError> {
        let Some(arg) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        if !arg.starts_with("--") && arg != "-h" {
            return err(format!("unexpected argument {arg:?}"));
        }
        Ok(Some(match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg.as_str(), None),
        }))
    }

    fn value(&mut self, name: &str, inline: Option<&'a str>) -> Result<&'a str, UsageError> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.args.get(self.pos) {
            Some(v) => {
                self.pos += 1;
                Ok(v)
            }
            None => err(format!("{name} needs a value")),
        }
    }
}

fn no_value(name: &str, inline: Option<&str>) -> Result<(), UsageError> {
    match inline {
        Some(_) => err(format!("{name} takes no value")),
        None => Ok(()),
    }
}

fn int(name: &str, v: &str) -> Result<i64, UsageError> {
    v.trim().parse().map_err(|_| UsageError(format!("{name}: not an integer: {v:?}")))
}

fn once(slot: &mut Option<String>, name: &str, v: &str) -> Result<(), UsageError> {
    if slot.is_some() {
        return err(format!("{name} given twice"));
    }
    *slot = Some(v.to_string());
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some(cmd) = args.first() else {
        return err("missing command");
    };
    let rest = &args[1..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let mut o = Opts { args: rest, pos: 0 };
    match cmd.as_str() {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "--version" | "-V" | "version" => Ok(Command::Version),
        "keygen" => {
            let (mut out, mut force) = (None, false);
            while let Some((name, inline)) = o.next_name()? {
                match name {
                    "--out" => once(&mut out, name, o.value(name, inline)?)?,
                    "--force" => {
                        no_value(name, inline)?;
                        force = true;
                    }
                    _ => return err(format!("keygen: unknown option {name}")),
                }
            }
            let out = out.ok_or_else(|| UsageError("keygen: --out FILE is required".into()))?;
            Ok(Command::Keygen { out, force })
        }
        "jwks" => {
            let mut keys = Vec::new();
            while let Some((name, inline)) = o.next_name()? {
                match name {
                    "--key" => keys.push(o.value(name, inline)?.to_string()),
                    _ => return err(format!("jwks: unknown option {name}")),
                }
            }
            if keys.is_empty() {
                return err("jwks: at least one --key FILE is required");
            }
            Ok(Command::Jwks { keys })
        }
        "serve" => {
            let (mut keys, mut listen, mut allow) = (Vec::new(), None, false);
            let (mut identity, mut delay, mut fault) = (IdentityConfig::new(), None, None);
            while let Some((name, inline)) = o.next_name()? {
                match name {
                    "--key" => keys.push(o.value(name, inline)?.to_string()),
                    "--listen" => once(&mut listen, name, o.value(name, inline)?)?,
                    "--allow-non-loopback" => {
                        no_value(name, inline)?;
                        allow = true;
                    }
                    "--group" => identity.groups.push(group(name, o.value(name, inline)?)?),
                    "--user-group" => {
                        let v = o.value(name, inline)?;
                        let Some((email, g)) = v.split_once('=') else {
                            return err(format!("--user-group wants EMAIL=NAME, got {v:?}"));
                        };
                        if email.trim().is_empty() {
                            return err(format!("--user-group: empty email in {v:?}"));
                        }
                        let g = group(name, g)?;
                        identity
                            .groups_by_email
                            .entry(email.trim().to_string())
                            .or_default()
                            .push(g);
                    }
                    "--identity-delay-ms" => once(&mut delay, name, o.value(name, inline)?)?,
                    "--identity-fault" => once(&mut fault, name, o.value(name, inline)?)?,
                    _ => return err(format!("serve: unknown option {name}")),
                }
            }
            if keys.is_empty() {
                return err("serve: at least one --key FILE is required");
            }
            if let Some(d) = delay {
                identity.delay_ms = d.trim().parse().map_err(|_| {
                    UsageError(format!("--identity-delay-ms: not a number of ms: {d:?}"))
                })?;
            }
            identity.fault = fault.map(|f| identity_fault(&f)).transpose()?;
            Ok(Command::Serve {
                listen: listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
                keys,
                allow_non_loopback: allow,
                identity,
            })
        }
        "mint" => parse_mint(&mut o).map(Command::Mint),
        other => err(format!("unknown command {other:?}")),
    }
}

/// The group `--group NAME` / `--user-group EMAIL=NAME` names.
fn group(option: &str, name: &str) -> Result<Group, UsageError> {
    let name = name.trim();
    if name.is_empty() {
        return err(format!("{option}: empty group name"));
    }
    Ok(Group::named(name))
}

/// The default body of `--identity-fault status:N`.
pub const FAULT_BODY: &str = r#"{"err":"injected"}"#;
/// The default size of `--identity-fault oversize`.
pub const OVERSIZE_BYTES: usize = 1 << 20;

/// `--identity-fault KIND`: `status:N[:BODY]`, `invalid-json`, `oversize[:BYTES]`,
/// `other-user`, `hang`, `close`.
pub fn identity_fault(kind: &str) -> Result<IdentityFault, UsageError> {
    let (word, arg) = match kind.split_once(':') {
        Some((w, a)) => (w, Some(a)),
        None => (kind, None),
    };
    let bad = || UsageError(format!("--identity-fault: unknown or malformed KIND {kind:?}"));
    match (word, arg) {
        ("status", Some(a)) => {
            let (code, body) = a.split_once(':').unwrap_or((a, FAULT_BODY));
            match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(IdentityFault::Status(c, body.into())),
                _ => err(format!("--identity-fault status:N: not a status 100-599: {code:?}")),
            }
        }
        ("oversize", None) => Ok(IdentityFault::Oversize(OVERSIZE_BYTES)),
        ("oversize", Some(a)) => match a.parse::<usize>() {
            Ok(n) if n > 0 => Ok(IdentityFault::Oversize(n)),
            _ => err(format!("--identity-fault oversize:BYTES: not a positive size: {a:?}")),
        },
        ("invalid-json", None) => Ok(IdentityFault::InvalidJson),
        ("other-user", None) => Ok(IdentityFault::OtherUser),
        ("hang", None) => Ok(IdentityFault::Hang),
        ("close", None) => Ok(IdentityFault::Close),
        _ => Err(bad()),
    }
}

fn parse_mint(o: &mut Opts<'_>) -> Result<Mint, UsageError> {
    let (mut key, mut team, mut email, mut service) = (None, None, None, None);
    let (mut ttl, mut nbf) = (None, None);
    let mut aud = Vec::new();
    let mut claims = Vec::new();
    let mut remove = Vec::new();
    let (mut count, mut first, mut threads, mut out) = (None, None, None, None);
    while let Some((name, inline)) = o.next_name()? {
        let v = o.value(name, inline);
        match name {
            "--key" => once(&mut key, name, v?)?,
            "--team" => once(&mut team, name, v?)?,
            "--aud" => aud.push(v?.to_string()),
            "--email" => once(&mut email, name, v?)?,
            "--service" => once(&mut service, name, v?)?,
            "--ttl" => once(&mut ttl, name, v?)?,
            "--nbf-offset" => once(&mut nbf, name, v?)?,
            "--claim" => {
                let v = v?;
                let Some((n, raw)) = v.split_once('=') else {
                    return err(format!("--claim wants NAME=VALUE, got {v:?}"));
                };
                if n.is_empty() {
                    return err(format!("--claim: empty claim name in {v:?}"));
                }
                let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
                claims.push((n.to_string(), value));
            }
            "--no-claim" => remove.push(v?.to_string()),
            "--count" => once(&mut count, name, v?)?,
            "--first" => once(&mut first, name, v?)?,
            "--threads" => once(&mut threads, name, v?)?,
            "--out" => once(&mut out, name, v?)?,
            _ => return err(format!("mint: unknown option {name}")),
        }
    }
    let key = key.ok_or_else(|| UsageError("mint: --key FILE is required".into()))?;
    let team = team.ok_or_else(|| UsageError("mint: --team TEAM_DOMAIN is required".into()))?;
    if cf_access_dev::normalize_team_domain(&team).is_empty() {
        return err("mint: --team is empty");
    }
    if aud.is_empty() {
        return err("mint: --aud TAG is required");
    }
    let identity = match (email, service) {
        (Some(_), Some(_)) => return err("mint: --email and --service are exclusive"),
        (Some(e), None) => Identity::Email(e),
        (None, Some(s)) => Identity::Service(s),
        (None, None) => Identity::Email(DEFAULT_EMAIL.to_string()),
    };
    let ttl = match ttl {
        Some(t) => int("--ttl", &t)?,
        None => DEFAULT_TTL,
    };
    let nbf_offset = nbf.map(|n| int("--nbf-offset", &n)).transpose()?;
    let batch = match count {
        None => {
            if first.is_some() || threads.is_some() {
                return err("mint: --first and --threads go with --count");
            }
            None
        }
        Some(c) => {
            let count = positive("--count", &c)?;
            let first = first.map_or(Ok(1), |f| positive("--first", &f))?;
            if first.checked_add(count).is_none() {
                return err("mint: --first + --count is too large");
            }
            let threads =
                threads.map(|t| positive("--threads", &t).map(|t| t as usize)).transpose()?;
            Some(Batch { count, first, threads })
        }
    };
    if out.as_deref() == Some("") {
        return err("mint: --out is empty");
    }
    Ok(Mint { key, team, aud, identity, ttl, nbf_offset, claims, remove, batch, out })
}

fn positive(name: &str, v: &str) -> Result<u64, UsageError> {
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => err(format!("{name}: not a positive integer: {v:?}")),
    }
}

/// The claims `mint` signs, at time `now`.
pub fn mint_claims(m: &Mint, now: i64) -> Value {
    let first = &m.aud[0];
    let mut claims = match &m.identity {
        Identity::Email(e) => cf_access_dev::user_claims(&m.team, first, e, now, m.ttl),
        Identity::Service(cn) => cf_access_dev::service_claims(&m.team, first, cn, now, m.ttl),
    };
    claims["aud"] = Value::from(m.aud.clone());
    if let Some(off) = m.nbf_offset {
        claims["nbf"] = Value::from(now + off);
    }
    // user_claims and service_claims build JSON objects.
    if let Some(obj) = claims.as_object_mut() {
        for (n, v) in &m.claims {
            obj.insert(n.clone(), v.clone());
        }
        for n in &m.remove {
            obj.remove(n);
        }
    }
    claims
}

/// The claims of token number `n` of a `--count` batch: [`mint_claims`] with `+n` added to
/// the local part of the email (`user+7@example.com`; an email without `@` gets `+7`
/// appended), so that a pool of tokens looks like that many users. Claims without an email
/// (service tokens) are left as they are: their random `identity_nonce` and `sub` already
/// tell them apart.
pub fn mint_claims_nth(m: &Mint, now: i64, n: u64) -> Value {
    let mut claims = mint_claims(m, now);
    if let Some(Value::String(email)) = claims.get("email") {
        let numbered = match email.rsplit_once('@') {
            Some((local, domain)) => format!("{local}+{n}@{domain}"),
            None => format!("{email}+{n}"),
        };
        claims["email"] = Value::String(numbered);
    }
    claims
}

/// Whether `listen` resolves only to loopback addresses.
pub fn is_loopback(addrs: &[std::net::SocketAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Result<Command, UsageError> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    #[test]
    fn help_and_errors() {
        assert_eq!(p("--help"), Ok(Command::Help));
        assert_eq!(p("help"), Ok(Command::Help));
        assert_eq!(p("mint -h"), Ok(Command::Help));
        assert_eq!(p("serve --key a --help"), Ok(Command::Help));
        assert!(p("").is_err());
        assert!(p("frobnicate").is_err());
        assert!(p("keygen").is_err());
        assert!(p("keygen --out").is_err());
        assert!(p("keygen --out a --bogus").is_err());
        assert!(p("keygen --out a stray").is_err());
        assert!(p("keygen --out a --out b").is_err());
        assert!(p("jwks").is_err());
        assert!(p("serve").is_err());
        assert!(p("serve --key a --allow-non-loopback=yes").is_err());
    }

    #[test]
    fn keygen_jwks_serve() {
        assert_eq!(
            p("keygen --out k.pem"),
            Ok(Command::Keygen { out: "k.pem".into(), force: false })
        );
        assert_eq!(
            p("keygen --out=k.pem --force"),
            Ok(Command::Keygen { out: "k.pem".into(), force: true })
        );
        assert_eq!(
            p("jwks --key a --key=b"),
            Ok(Command::Jwks { keys: vec!["a".into(), "b".into()] })
        );
        assert_eq!(
            p("serve --key a"),
            Ok(Command::Serve {
                listen: DEFAULT_LISTEN.into(),
                keys: vec!["a".into()],
                allow_non_loopback: false,
                identity: IdentityConfig::default(),
            })
        );
        assert_eq!(
            p("serve --listen 0.0.0.0:9 --allow-non-loopback --key a --key b"),
            Ok(Command::Serve {
                listen: "0.0.0.0:9".into(),
                keys: vec!["a".into(), "b".into()],
                allow_non_loopback: true,
                identity: IdentityConfig::default(),
            })
        );
    }

    /// The identity configuration of a `serve` command line.
    fn serve_identity(args: &str) -> Result<IdentityConfig, UsageError> {
        match p(&format!("serve --key k {args}"))? {
            Command::Serve { identity, .. } => Ok(identity),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn serve_identity_options() {
        let c = serve_identity(
            "--group Eng --group=FinanceTeam --user-group a@example.com=Ops \
             --user-group=a@example.com=Eng --identity-delay-ms 250",
        )
        .unwrap();
        assert_eq!(c.groups, vec![Group::named("Eng"), Group::named("FinanceTeam")]);
        assert_eq!(c.groups[1].email, "financeteam@example.com");
        assert_eq!(c.groups_of("a@example.com"), [Group::named("Ops"), Group::named("Eng")]);
        assert_eq!(c.groups_of("b@example.com"), c.groups.as_slice());
        assert_eq!((c.delay_ms, c.fault), (250, None));

        for (kind, fault) in [
            ("status:503", IdentityFault::Status(503, FAULT_BODY.into())),
            ("status:500:oops", IdentityFault::Status(500, "oops".into())),
            ("status:502:{\"a\":1}", IdentityFault::Status(502, r#"{"a":1}"#.into())),
            ("invalid-json", IdentityFault::InvalidJson),
            ("oversize", IdentityFault::Oversize(OVERSIZE_BYTES)),
            ("oversize:70000", IdentityFault::Oversize(70000)),
            ("other-user", IdentityFault::OtherUser),
            ("hang", IdentityFault::Hang),
            ("close", IdentityFault::Close),
        ] {
            assert_eq!(identity_fault(kind), Ok(fault.clone()), "{kind}");
            let c = serve_identity(&format!("--identity-fault={kind}")).unwrap();
            assert_eq!(c.fault, Some(fault), "{kind}");
        }
        for bad in [
            "--group",
            "--group=",
            "--user-group nobody",
            "--user-group =Eng",
            "--user-group a@b=",
            "--identity-delay-ms soon",
            "--identity-delay-ms -1",
            "--identity-delay-ms 1 --identity-delay-ms 2",
            "--identity-fault",
            "--identity-fault status",
            "--identity-fault status:",
            "--identity-fault status:99",
            "--identity-fault status:600",
            "--identity-fault oversize:0",
            "--identity-fault oversize:big",
            "--identity-fault hang:1",
            "--identity-fault teapot",
            "--identity-fault hang --identity-fault close",
        ] {
            assert!(serve_identity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mint_parsing() {
        let Ok(Command::Mint(m)) = p("mint --key k --team https://t.cloudflareaccess.com/ --aud A")
        else {
            panic!()
        };
        assert_eq!(m.identity, Identity::Email(DEFAULT_EMAIL.into()));
        assert_eq!(m.ttl, 3600);
        assert_eq!(m.nbf_offset, None);

        let Ok(Command::Mint(m)) =
            p("mint --key k --team t --aud A --aud B --service id.access --ttl -5 \
             --nbf-offset 30 --claim country=\"FR\" --claim exp=7 --claim x={\"a\":1} \
             --claim plain=hello --no-claim identity_nonce")
        else {
            panic!()
        };
        assert_eq!(m.identity, Identity::Service("id.access".into()));
        assert_eq!(m.ttl, -5);
        assert_eq!(m.nbf_offset, Some(30));
        let c = mint_claims(&m, 1000);
        assert_eq!(c["aud"], json!(["A", "B"]));
        assert_eq!(c["iss"], "https://t");
        assert_eq!(c["nbf"], 1030);
        assert_eq!(c["exp"], 7);
        assert_eq!(c["country"], "FR");
        assert_eq!(c["x"], json!({"a": 1}));
        assert_eq!(c["plain"], "hello");
        assert_eq!(c["common_name"], "id.access");
        assert!(c.get("identity_nonce").is_none());
        assert!(c.get("email").is_none());

        let Ok(Command::Mint(m)) = p("mint --key k --team t --aud A --email a@b --ttl 10") else {
            panic!()
        };
        let c = mint_claims(&m, 1000);
        assert_eq!(c["email"], "a@b");
        assert_eq!(c["exp"], 1010);
        assert_eq!(c["nbf"], 1000);

        assert!(p("mint --key k --team t").is_err());
        assert!(p("mint --key k --aud A").is_err());
        assert!(p("mint --team t --aud A").is_err());
        assert!(p("mint --key k --team t --aud A --email e --service s").is_err());
        assert!(p("mint --key k --team t --aud A --ttl soon").is_err());
        assert!(p("mint --key k --team t --aud A --claim noequals").is_err());
        assert!(p("mint --key k --team / --aud A").is_err());
    }

    #[test]
    fn mint_batch_parsing() {
        let Ok(Command::Mint(m)) = p("mint --key k --team t --aud A") else { panic!() };
        assert_eq!((m.batch, m.out), (None, None));

        let Ok(Command::Mint(m)) = p("mint --key k --team t --aud A --count 5 --out=t.txt") else {
            panic!()
        };
        assert_eq!(m.batch, Some(Batch { count: 5, first: 1, threads: None }));
        assert_eq!(m.out.as_deref(), Some("t.txt"));

        let Ok(Command::Mint(m)) =
            p("mint --key k --team t --aud A --count 2 --first 1001 --threads 3")
        else {
            panic!()
        };
        assert_eq!(m.batch, Some(Batch { count: 2, first: 1001, threads: Some(3) }));
        assert_eq!(mint_claims_nth(&m, 1000, 1001)["email"], "user+1001@example.com");
        // Service tokens have no email to number.
        let Ok(Command::Mint(m)) = p("mint --key k --team t --aud A --service s --count 2") else {
            panic!()
        };
        let c = mint_claims_nth(&m, 1000, 2);
        assert_eq!(c["common_name"], "s");
        assert!(c.get("email").is_none());
        // The number goes on the email the claims end up with.
        let Ok(Command::Mint(m)) = p("mint --key k --team t --aud A --claim email=bob --count 1")
        else {
            panic!()
        };
        assert_eq!(mint_claims_nth(&m, 1000, 9)["email"], "bob+9");

        for bad in [
            "--count 0",
            "--count -1",
            "--count many",
            "--count 1 --count 2",
            "--first 3",
            "--threads 2",
            "--count 1 --first 0",
            "--count 1 --threads 0",
            "--count 2 --first 18446744073709551615",
            "--out=",
        ] {
            assert!(p(&format!("mint --key k --team t --aud A {bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_check() {
        assert!(is_loopback(&["127.0.0.1:1".parse().unwrap()]));
        assert!(is_loopback(&["[::1]:1".parse().unwrap()]));
        assert!(!is_loopback(&["0.0.0.0:1".parse().unwrap()]));
        assert!(!is_loopback(&["192.168.1.1:1".parse().unwrap()]));
        assert!(!is_loopback(&[]));
    }
}
