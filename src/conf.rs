//! Directives, their set functions, and merging.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cf_access_core::policy::{normalize_team_domain, valid_team_domain, Policy};
use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_int_t, ngx_parse_time, ngx_str_t, NGX_ERROR, NGX_LOG_EMERG,
};
use ngx::ngx_conf_log_error;

use crate::keys::{self, Egress, KeyStore};

pub const DEFAULT_LEEWAY: u64 = 60;
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

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

#[derive(Default)]
pub struct LocConf {
    pub enabled: Option<bool>,
    /// Where `cf_access on` was written, for merge-time errors.
    pub enabled_at: Option<String>,
    pub team_domain: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub certs_url: Option<String>,
    pub leeway: Option<u64>,
    /// Filled by merge when the location is enabled.
    pub verifier: Option<Verifier>,
}

/// What an enabled location checks tokens with.
pub struct Verifier {
    pub policy: Policy,
    pub store: Arc<KeyStore>,
}

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
        Directive {
            cf,
            cmd,
            args: all.get(1..).unwrap_or(&[]),
        }
    }

    fn arg(&self) -> &ngx_str_t {
        &self.args[0]
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
}

/// # Safety
/// `conf` must be this module's `LocConf` as nginx passes it to a directive handler.
unsafe fn loc_conf<'a>(conf: *mut c_void) -> &'a mut LocConf {
    // SAFETY: see above.
    unsafe { &mut *conf.cast::<LocConf>() }
}

/// # Safety
/// `conf` must be this module's `MainConf` as nginx passes it to a directive handler.
unsafe fn main_conf<'a>(conf: *mut c_void) -> &'a mut MainConf {
    // SAFETY: see above.
    unsafe { &mut *conf.cast::<MainConf>() }
}

/// A printable argument without spaces or control bytes.
fn plain_arg(value: &ngx_str_t) -> Option<&str> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// `cf_access on | off;`
pub extern "C" fn set_enabled(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), loc_conf(conf)) };
    let value = match d.arg().as_bytes() {
        v if v.eq_ignore_ascii_case(b"on") => true,
        v if v.eq_ignore_ascii_case(b"off") => false,
        _ => return d.invalid(d.arg(), ", it must be \"on\" or \"off\""),
    };
    // SAFETY: conf_file is set while a configuration file is parsed.
    let at = unsafe { (*cf).conf_file.as_ref() }.map(|f| format!("{}:{}", f.file.name, f.line));
    if conf.enabled.is_none() {
        conf.enabled_at = at;
    }
    d.store(&mut conf.enabled, Some(value))
}

/// `cf_access_team_domain <team>.cloudflareaccess.com;`
pub extern "C" fn set_team_domain(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), loc_conf(conf)) };
    let domain = plain_arg(d.arg())
        .map(normalize_team_domain)
        .filter(|domain| valid_team_domain(domain))
        .map(str::to_ascii_lowercase);
    d.store(&mut conf.team_domain, domain)
}

/// `cf_access_aud <tag> [<tag> ...];`
pub extern "C" fn set_audiences(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), loc_conf(conf)) };
    if let Some(bad) = d.args.iter().find(|a| plain_arg(a).is_none()) {
        return d.invalid(bad, "");
    }
    let tags = d
        .args
        .iter()
        .filter_map(plain_arg)
        .map(String::from)
        .collect();
    d.store(&mut conf.audiences, Some(tags))
}

/// `cf_access_certs_url <url>;`
pub extern "C" fn set_certs_url(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), loc_conf(conf)) };
    let url = plain_arg(d.arg()).filter(|u| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && u.parse::<ureq::http::Uri>()
                .is_ok_and(|uri| uri.host().is_some_and(|h| !h.is_empty()))
    });
    d.store(&mut conf.certs_url, url.map(String::from))
}

/// Parses an nginx time value (`30s`, `1m`, `1h`) in seconds.
fn parse_seconds(value: &ngx_str_t) -> Option<u64> {
    let mut copy = *value;
    // SAFETY: ngx_parse_time only reads `len` bytes at `data`.
    let secs = unsafe { ngx_parse_time(&mut copy, 1) };
    (secs != NGX_ERROR as ngx_int_t && secs >= 0).then_some(secs as u64)
}

/// `cf_access_leeway <time>;`
pub extern "C" fn set_leeway(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), loc_conf(conf)) };
    d.store(&mut conf.leeway, parse_seconds(d.arg()))
}

/// `cf_access_refresh <time>;` (http)
pub extern "C" fn set_refresh(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), main_conf(conf)) };
    let interval = parse_seconds(d.arg())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    d.store(&mut conf.refresh, interval)
}

/// `cf_access_cache_size <number>;` (http)
pub extern "C" fn set_cache_size(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), main_conf(conf)) };
    let size = d
        .arg()
        .to_str()
        .ok()
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n <= 10_000_000);
    d.store(&mut conf.cache_size, size)
}

/// `cf_access_keys_cache <path>;` (http). A relative path is relative to the prefix, as
/// for nginx's own paths.
pub extern "C" fn set_keys_cache(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), main_conf(conf)) };
    // SAFETY: cf->cycle is the cycle being configured.
    let prefix = unsafe { (*(*cf).cycle).prefix.to_string() };
    let path = d
        .arg()
        .to_str()
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(prefix).join(p));
    d.store(&mut conf.keys_cache, path)
}

/// `cf_access_proxy <url>;` (http): an HTTP proxy reached with CONNECT.
pub extern "C" fn set_proxy(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), main_conf(conf)) };
    let proxy = plain_arg(d.arg())
        .filter(|p| p.starts_with("http://") || p.starts_with("https://"))
        .and_then(|p| ureq::Proxy::new(p).ok());
    d.store(&mut conf.egress.proxy, proxy)
}

/// `cf_access_trusted_certificate <file>;` (http): PEM CA certificates that replace the
/// bundled web roots. Read once, at configuration time, like nginx's own certificates.
pub extern "C" fn set_trusted_certificate(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: called by nginx as this module's directive handler.
    let (d, conf) = unsafe { (Directive::new(cf, cmd), main_conf(conf)) };
    if conf.egress.roots.is_some() {
        return d.store(&mut conf.egress.roots, None);
    }
    // SAFETY: cf->cycle is the cycle being configured.
    let prefix = unsafe { (*(*cf).cycle).conf_prefix.to_string() };
    let Some(path) = plain_arg(d.arg()).map(|p| PathBuf::from(&prefix).join(p)) else {
        return d.invalid(d.arg(), "");
    };
    match keys::fetch::read_roots(&path) {
        Ok(certs) => d.store(&mut conf.egress.roots, Some(Arc::new(certs))),
        Err(e) => d.fail(&format!("cannot use \"{}\": {e}", path.display())),
    }
}

/// Why an enabled location cannot work.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no \"cf_access_team_domain\" is defined for the \"cf_access\" directive{0}")]
    NoTeamDomain(String),
    #[error("no \"cf_access_aud\" is defined for the \"cf_access\" directive{0}")]
    NoAudience(String),
}

impl LocConf {
    /// Takes every unset value from `prev`; an enabled location gets its verifier, and its
    /// key store is registered in `main`.
    pub fn merge(&mut self, prev: &LocConf, main: &mut MainConf) -> Result<(), MergeError> {
        if self.enabled.is_none() {
            self.enabled = prev.enabled;
            self.enabled_at.clone_from(&prev.enabled_at);
        }
        inherit(&mut self.team_domain, &prev.team_domain);
        inherit(&mut self.audiences, &prev.audiences);
        inherit(&mut self.certs_url, &prev.certs_url);
        inherit(&mut self.leeway, &prev.leeway);

        if self.enabled != Some(true) {
            return Ok(());
        }
        let at = self
            .enabled_at
            .as_ref()
            .map(|at| format!(" in {at}"))
            .unwrap_or_default();
        let team = self
            .team_domain
            .as_deref()
            .ok_or_else(|| MergeError::NoTeamDomain(at.clone()))?;
        let audiences = self.audiences.clone().ok_or(MergeError::NoAudience(at))?;
        let url = self
            .certs_url
            .clone()
            .unwrap_or_else(|| format!("https://{team}/cdn-cgi/access/certs"));
        let store = keys::store_for(&url);
        if !main.stores.iter().any(|s| Arc::ptr_eq(s, &store)) {
            main.stores.push(store.clone());
        }
        self.verifier = Some(Verifier {
            policy: Policy::new(team, audiences, self.leeway.unwrap_or(DEFAULT_LEEWAY)),
            store,
        });
        Ok(())
    }
}

fn inherit<T: Clone>(value: &mut Option<T>, parent: &Option<T>) {
    if value.is_none() {
        value.clone_from(parent);
    }
}
