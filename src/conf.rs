//! Directives: the command table, beside the set functions it names, and merging (in nginx's
//! own order: commands, setters, create/merge).

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cf_access_core::config;
use cf_access_core::policy::Policy;
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_int_t, ngx_parse_time, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE,
    NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_ERROR, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
    NGX_OK,
};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::keys::{self, Egress, KeyStore};

pub const DEFAULT_LEEWAY: u64 = 60;
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// The command table
// ---------------------------------------------------------------------------------------------

const ANY_LEVEL: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

type SetFn = extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// A directive of this module: location-level ones are set on `LocConf`, http-only ones on
/// `MainConf`.
const fn command(name: ngx_str_t, flags: u32, set: SetFn) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: flags as ngx_uint_t,
        set: Some(set),
        conf: if flags & NGX_HTTP_LOC_CONF != 0 {
            NGX_HTTP_LOC_CONF_OFFSET
        } else {
            NGX_HTTP_MAIN_CONF_OFFSET
        },
        offset: 0,
        post: ptr::null_mut(),
    }
}

pub static mut COMMANDS: [ngx_command_t; 15] = [
    command(ngx_string!("cf_access"), ANY_LEVEL | NGX_CONF_TAKE1, set_mode),
    command(ngx_string!("cf_access_team_domain"), ANY_LEVEL | NGX_CONF_TAKE1, set_team_domain),
    command(ngx_string!("cf_access_aud"), ANY_LEVEL | NGX_CONF_1MORE, set_audiences),
    command(ngx_string!("cf_access_certs_url"), ANY_LEVEL | NGX_CONF_TAKE1, set_certs_url),
    command(ngx_string!("cf_access_leeway"), ANY_LEVEL | NGX_CONF_TAKE1, set_leeway),
    command(ngx_string!("cf_access_require"), ANY_LEVEL | NGX_CONF_1MORE, set_require),
    command(ngx_string!("cf_access_identity"), ANY_LEVEL | NGX_CONF_TAKE1, set_identity),
    command(
        ngx_string!("cf_access_identity_failure"),
        ANY_LEVEL | NGX_CONF_TAKE1,
        set_identity_failure,
    ),
    command(ngx_string!("cf_access_refresh"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_refresh),
    command(
        ngx_string!("cf_access_cache_size"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_cache_size,
    ),
    command(
        ngx_string!("cf_access_keys_cache"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_keys_cache,
    ),
    command(ngx_string!("cf_access_proxy"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_proxy),
    command(
        ngx_string!("cf_access_trusted_certificate"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_trusted_certificate,
    ),
    command(
        ngx_string!("cf_access_metrics"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        crate::metrics::set_metrics,
    ),
    ngx_command_t::empty(),
];

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `http`-level settings and what the whole configuration uses.
#[derive(Default)]
pub struct MainConf {
    pub refresh: Option<Duration>,
    pub cache_size: Option<usize>,
    pub keys_cache: Option<PathBuf>,
    /// How certs URLs are reached (`cf_access_proxy`, `cf_access_trusted_certificate`).
    pub egress: Egress,
    /// Every key store some enabled location uses, each once.
    pub stores: Vec<Arc<KeyStore>>,
}

impl MainConf {
    pub fn refresh(&self) -> Duration {
        self.refresh.unwrap_or(DEFAULT_REFRESH)
    }

    pub fn cache_size(&self) -> usize {
        self.cache_size.unwrap_or(DEFAULT_CACHE_SIZE)
    }
}

/// `cf_access on | off | report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    /// Verify and report, never deny.
    Report,
}

impl Mode {
    /// `on`, `off` or `report`, in any case.
    pub fn parse(value: &[u8]) -> Option<Mode> {
        match value {
            v if v.eq_ignore_ascii_case(b"on") => Some(Mode::On),
            v if v.eq_ignore_ascii_case(b"off") => Some(Mode::Off),
            v if v.eq_ignore_ascii_case(b"report") => Some(Mode::Report),
            _ => None,
        }
    }
}

/// How a location's `cf_access` is set: a mode, or a value with variables (`cf_access
/// $cf_access_mode;`, e.g. from a `map`) that each request evaluates to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSetting {
    Fixed(Mode),
    Variable(*mut ngx_http_complex_value_t),
}

impl ModeSetting {
    /// Whether requests here may be checked: not a fixed `off`.
    pub fn may_check(self) -> bool {
        self != ModeSetting::Fixed(Mode::Off)
    }

    /// Whether requests here may be refused without a token: `on`, or a variable.
    pub fn may_enforce(self) -> bool {
        matches!(self, ModeSetting::Fixed(Mode::On) | ModeSetting::Variable(_))
    }
}

/// `cf_access_identity <uri> | off;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySetting {
    Off,
    /// The internal location get-identity is fetched through.
    Uri(String),
}

/// `cf_access_identity_failure deny | allow;`: what a request whose identity could not be
/// had gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityFailure {
    /// Refused (`identity_unavailable`).
    Deny,
    /// Let through without the identity variables (the `cf_access_require` rules still run).
    Allow,
}

/// Where a location fetches the identity, and what a failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConf {
    pub uri: String,
    pub failure: IdentityFailure,
}

/// One `cf_access_require` directive: its values, the status for a failure, where it is.
pub struct Require {
    pub values: Vec<*mut ngx_http_complex_value_t>,
    pub error: u16,
    pub at: String,
}

#[derive(Default)]
pub struct LocConf {
    pub mode: Option<ModeSetting>,
    /// Where `cf_access on` was written, for merge-time errors.
    pub mode_at: Option<String>,
    pub team_domain: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub certs_url: Option<String>,
    pub leeway: Option<u64>,
    /// The `cf_access_require` rules of the innermost level that has any.
    pub requires: Option<Rc<Vec<Require>>>,
    pub identity: Option<IdentitySetting>,
    pub identity_failure: Option<IdentityFailure>,
    /// Filled by merge when the location is `on` or `report`.
    pub verifier: Option<Rc<Verifier>>,
}

/// What an enabled location checks requests with (shared by the locations that inherit it
/// unchanged; used by the event loop's thread only).
pub struct Verifier {
    pub mode: ModeSetting,
    pub policy: Policy,
    pub store: Arc<KeyStore>,
    pub requires: Option<Rc<Vec<Require>>>,
    /// Set where user tokens' identities are fetched (`cf_access_identity`).
    pub identity: Option<IdentityConf>,
}

impl Verifier {
    /// Whether a verdict reached with `self` holds for `other` as it is (e.g. a server-level
    /// verdict for a location that inherited everything, or the location before an internal
    /// redirect), in the same mode: the same token check, identity and rules.
    pub fn same_check(&self, other: &Verifier) -> bool {
        self.same_token_check(other)
            && self.identity == other.identity
            && match (&self.requires, &other.requires) {
                (None, None) => true,
                (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Whether a token verified (or refused) with `self` is verified (or refused) with
    /// `other` too: the same claims policy (team, AUDs, leeway) and the same keys.
    pub fn same_token_check(&self, other: &Verifier) -> bool {
        self.policy == other.policy && Arc::ptr_eq(&self.store, &other.store)
    }
}

// ---------------------------------------------------------------------------------------------
// Set functions
// ---------------------------------------------------------------------------------------------

/// One directive being handled: nginx's `cf` and `cmd`, and its arguments.
struct Directive<'a> {
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    args: &'a [ngx_str_t],
}

impl Directive<'_> {
    /// # Safety
    /// `cf` and `cmd` must be what nginx passed to a directive handler.
    unsafe fn new(cf: *mut ngx_conf_t, cmd: *mut ngx_command_t) -> Self {
        // SAFETY: nginx fills cf->args with the directive name and its arguments, and
        // checks their number against the command's type before calling the handler.
        let all = unsafe { (*(*cf).args).as_slice::<ngx_str_t>() };
        Directive { cf, cmd, args: all.get(1..).unwrap_or(&[]) }
    }

    fn arg(&self) -> &ngx_str_t {
        &self.args[0]
    }

    /// `file:line` of the directive.
    fn at(&self) -> Option<String> {
        // SAFETY: conf_file is set while a configuration file is parsed.
        unsafe { (*self.cf).conf_file.as_ref() }.map(|f| format!("{}:{}", f.file.name, f.line))
    }

    /// `invalid value "x" in "name" directive`, as nginx's own setters say it.
    fn invalid(&self, value: &ngx_str_t, hint: &str) -> *mut c_char {
        // SAFETY: nginx passes the command being handled.
        let name = unsafe { &(*self.cmd).name };
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            self.cf,
            "invalid value \"{}\" in \"{}\" directive{}",
            value,
            name,
            hint
        );
        NGX_CONF_ERROR
    }

    /// `"name" directive <why>`, for failures that are not a bad value.
    fn fail(&self, why: &str) -> *mut c_char {
        // SAFETY: nginx passes the command being handled.
        let name = unsafe { &(*self.cmd).name };
        ngx_conf_log_error!(NGX_LOG_EMERG, self.cf, "\"{}\" directive {}", name, why);
        NGX_CONF_ERROR
    }

    /// Sets `slot` once: a second time is `"x" directive is duplicate`, a `None` value
    /// is an invalid value.
    fn store<T>(&self, slot: &mut Option<T>, value: Option<T>) -> *mut c_char {
        if slot.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        match value {
            Some(value) => {
                *slot = Some(value);
                NGX_CONF_OK
            }
            None => self.invalid(self.arg(), ""),
        }
    }

    /// The cycle's prefix (`conf`: its configuration prefix) joined with `path`.
    fn full_path(&self, path: &str, conf: bool) -> PathBuf {
        // SAFETY: cf->cycle is the cycle being configured.
        let cycle = unsafe { &*(*self.cf).cycle };
        let prefix = if conf { &cycle.conf_prefix } else { &cycle.prefix };
        PathBuf::from(prefix.to_string()).join(path)
    }
}

/// Defines a set function: `d` is the [`Directive`], `conf` this module's configuration of
/// the given type, the body returns nginx's answer. The unsafe prologue is written once here.
macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $conf:ty, |$d:ident, $c:ident| $body:block) => {
        $(#[$doc])*
        extern "C" fn $name(
            cf: *mut ngx_conf_t,
            cmd: *mut ngx_command_t,
            conf: *mut c_void,
        ) -> *mut c_char {
            // SAFETY: nginx calls this as the handler of a command of this module's table,
            // with its cf and cmd, and `conf` pointing at this module's configuration of the
            // level the command's `conf` offset names ($conf).
            let ($d, $c) = unsafe { (Directive::new(cf, cmd), &mut *conf.cast::<$conf>()) };
            $body
        }
    };
}

setter!(
    /// `cf_access on | off | report;`
    set_mode, LocConf, |d, conf| {
        let arg = d.arg();
        let mode = if arg.as_bytes().contains(&b'$') {
            match compile(d.cf, arg) {
                Some(cv) => ModeSetting::Variable(cv),
                None => return NGX_CONF_ERROR,
            }
        } else {
            match Mode::parse(arg.as_bytes()) {
                Some(mode) => ModeSetting::Fixed(mode),
                None => {
                    return d.invalid(arg, ", it must be \"on\", \"off\", \"report\" or a variable")
                }
            }
        };
        if conf.mode.is_none() {
            conf.mode_at = d.at();
        }
        d.store(&mut conf.mode, Some(mode))
    }
);

setter!(
    /// `cf_access_team_domain <team>.cloudflareaccess.com;`
    set_team_domain, LocConf, |d, conf| {
        d.store(&mut conf.team_domain, config::team_domain(d.arg().as_bytes()))
    }
);

setter!(
    /// `cf_access_aud <tag> [<tag> ...];`
    set_audiences, LocConf, |d, conf| {
        let mut tags = Vec::with_capacity(d.args.len());
        for arg in d.args {
            match config::plain_arg(arg.as_bytes()) {
                Some(tag) => tags.push(tag.to_string()),
                None => return d.invalid(arg, ""),
            }
        }
        d.store(&mut conf.audiences, Some(tags))
    }
);

setter!(
    /// `cf_access_certs_url <url>;`
    set_certs_url, LocConf, |d, conf| {
        let url = config::certs_url(d.arg().as_bytes()).map(String::from);
        if url.as_deref().is_some_and(config::plaintext_remote) {
            ngx_conf_log_error!(
                NGX_LOG_WARN,
                d.cf,
                "\"cf_access_certs_url\" \"{}\" fetches the keys without TLS: anyone on the \
                 path can replace them and mint tokens; use https (http is for loopback)",
                d.arg()
            );
        }
        d.store(&mut conf.certs_url, url)
    }
);

/// Parses an nginx time value (`30s`, `1m`, `1h`) in seconds.
fn parse_seconds(value: &ngx_str_t) -> Option<u64> {
    let mut copy = *value;
    // SAFETY: ngx_parse_time only reads `len` bytes at `data`.
    let secs = unsafe { ngx_parse_time(&mut copy, 1) };
    (secs != NGX_ERROR as ngx_int_t && secs >= 0).then_some(secs as u64)
}

setter!(
    /// `cf_access_leeway <time>;`
    set_leeway, LocConf, |d, conf| {
        d.store(&mut conf.leeway, parse_seconds(d.arg()))
    }
);

setter!(
    /// `cf_access_require <value> ... [error=401|403];` (may repeat on a level).
    set_require, LocConf, |d, conf| {
        let (error, values) = match d.args.split_last() {
            Some((last, rest)) if last.as_bytes().starts_with(b"error=") => {
                match config::require_error(last.as_bytes()) {
                    Some(code) => (code, rest),
                    None => return d.invalid(last, ", it must be \"error=401\" or \"error=403\""),
                }
            }
            _ => (403, d.args),
        };
        if values.is_empty() {
            return d.fail("needs at least one value");
        }
        let mut compiled = Vec::with_capacity(values.len());
        for value in values {
            match compile(d.cf, value) {
                Some(cv) => compiled.push(cv),
                None => return NGX_CONF_ERROR,
            }
        }
        let require = Require {
            values: compiled,
            error,
            at: d.at().unwrap_or_default(),
        };
        match conf.requires.as_mut().and_then(Rc::get_mut) {
            Some(list) => list.push(require),
            None => conf.requires = Some(Rc::new(vec![require])),
        }
        NGX_CONF_OK
    }
);

setter!(
    /// `cf_access_identity <uri> | off;`: the internal location that answers get-identity.
    set_identity, LocConf, |d, conf| {
        let setting = match d.arg().as_bytes() {
            b"off" => IdentitySetting::Off,
            arg => match config::identity_uri(arg) {
                Some(uri) => IdentitySetting::Uri(uri.to_string()),
                None => return d.invalid(d.arg(), ", it must be a URI (\"/...\") or \"off\""),
            },
        };
        d.store(&mut conf.identity, Some(setting))
    }
);

setter!(
    /// `cf_access_identity_failure deny | allow;`
    set_identity_failure, LocConf, |d, conf| {
        let failure = match d.arg().as_bytes() {
            b"deny" => IdentityFailure::Deny,
            b"allow" => IdentityFailure::Allow,
            _ => return d.invalid(d.arg(), ", it must be \"deny\" or \"allow\""),
        };
        d.store(&mut conf.identity_failure, Some(failure))
    }
);

/// Compiles `value` (which may hold variables) into a complex value in the cycle's pool;
/// nginx logs what is wrong with it.
fn compile(cf: *mut ngx_conf_t, value: &ngx_str_t) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: cf is the configuration being parsed; its pool lives as long as the cycle.
    let cv = unsafe {
        ngx::ffi::ngx_pcalloc((*cf).pool, std::mem::size_of::<ngx_http_complex_value_t>())
    }
    .cast::<ngx_http_complex_value_t>();
    if cv.is_null() {
        return None;
    }
    let mut value = *value;
    // SAFETY: all-zero is the documented initial state of ngx_http_compile_complex_value_t.
    let mut ccv: ngx_http_compile_complex_value_t = unsafe { std::mem::zeroed() };
    ccv.cf = cf;
    ccv.value = &mut value;
    ccv.complex_value = cv;
    // SAFETY: ccv is filled as nginx's own directives fill it; `value`'s bytes are in the
    // configuration's buffers, which nginx copies as needed.
    let rc = unsafe { ngx_http_compile_complex_value(&mut ccv) };
    (rc == NGX_OK as ngx_int_t).then_some(cv)
}

setter!(
    /// `cf_access_refresh <time>;` (http)
    set_refresh, MainConf, |d, conf| {
        let interval = parse_seconds(d.arg())
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        d.store(&mut conf.refresh, interval)
    }
);

setter!(
    /// `cf_access_cache_size <number>;` (http)
    set_cache_size, MainConf, |d, conf| {
        d.store(&mut conf.cache_size, config::cache_size(d.arg().as_bytes()))
    }
);

setter!(
    /// `cf_access_keys_cache <path>;` (http). A relative path is relative to the prefix, as
    /// for nginx's own paths.
    set_keys_cache, MainConf, |d, conf| {
        let path = config::plain_arg(d.arg().as_bytes()).map(|p| d.full_path(p, false));
        d.store(&mut conf.keys_cache, path)
    }
);

setter!(
    /// `cf_access_proxy <url>;` (http): an HTTP proxy reached with CONNECT.
    set_proxy, MainConf, |d, conf| {
        let proxy = config::proxy_url(d.arg().as_bytes()).and_then(|p| ureq::Proxy::new(p).ok());
        d.store(&mut conf.egress.proxy, proxy)
    }
);

setter!(
    /// `cf_access_trusted_certificate <file>;` (http): PEM CA certificates that replace the
    /// bundled web roots. Read once, at configuration time, like nginx's own certificates.
    set_trusted_certificate, MainConf, |d, conf| {
        if conf.egress.roots.is_some() {
            return d.store(&mut conf.egress.roots, None);
        }
        let Some(path) = config::plain_arg(d.arg().as_bytes()).map(|p| d.full_path(p, true))
        else {
            return d.invalid(d.arg(), "");
        };
        match keys::fetch::read_roots(&path) {
            Ok(certs) => d.store(&mut conf.egress.roots, Some(Arc::new(certs))),
            Err(e) => d.fail(&format!("cannot use \"{}\": {e}", path.display())),
        }
    }
);

// ---------------------------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------------------------

/// Why an enabled location cannot work.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no \"cf_access_team_domain\" is defined for the \"cf_access\" directive{0}")]
    NoTeamDomain(String),
    #[error("no \"cf_access_aud\" is defined for the \"cf_access\" directive{0}")]
    NoAudience(String),
}

impl LocConf {
    /// Takes every unset value from `prev`; an enabled location gets its verifier (the
    /// parent's own when nothing differs), and its key store is registered in `main`.
    pub fn merge(&mut self, prev: &LocConf, main: &mut MainConf) -> Result<(), MergeError> {
        if self.mode.is_none() {
            self.mode = prev.mode;
            self.mode_at.clone_from(&prev.mode_at);
        }
        inherit(&mut self.team_domain, &prev.team_domain);
        inherit(&mut self.audiences, &prev.audiences);
        inherit(&mut self.certs_url, &prev.certs_url);
        inherit(&mut self.leeway, &prev.leeway);
        inherit(&mut self.requires, &prev.requires);
        inherit(&mut self.identity, &prev.identity);
        inherit(&mut self.identity_failure, &prev.identity_failure);

        let mode = self.mode.unwrap_or(ModeSetting::Fixed(Mode::Off));
        if !mode.may_check() {
            return Ok(());
        }
        let at = self.mode_at.as_ref().map(|at| format!(" in {at}")).unwrap_or_default();
        let team =
            self.team_domain.as_deref().ok_or_else(|| MergeError::NoTeamDomain(at.clone()))?;
        let audiences = self.audiences.clone().ok_or(MergeError::NoAudience(at))?;
        let url = self.certs_url.clone().unwrap_or_else(|| config::default_certs_url(team));
        let store = keys::store_for(&url);
        if !main.stores.iter().any(|s| Arc::ptr_eq(s, &store)) {
            main.stores.push(store.clone());
        }
        let verifier = Verifier {
            mode,
            policy: Policy::new(team, audiences, self.leeway.unwrap_or(DEFAULT_LEEWAY)),
            store,
            requires: self.requires.clone(),
            identity: match &self.identity {
                Some(IdentitySetting::Uri(uri)) => Some(IdentityConf {
                    uri: uri.clone(),
                    failure: self.identity_failure.unwrap_or(IdentityFailure::Deny),
                }),
                _ => None,
            },
        };
        self.verifier = match &prev.verifier {
            Some(parent) if parent.mode == mode && parent.same_check(&verifier) => {
                Some(parent.clone())
            }
            _ => Some(Rc::new(verifier)),
        };
        Ok(())
    }
}

fn inherit<T: Clone>(value: &mut Option<T>, parent: &Option<T>) {
    if value.is_none() {
        value.clone_from(parent);
    }
}
