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

use crate::keys::{self, KeyStore};

pub const DEFAULT_LEEWAY: u64 = 60;
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_SIZE: usize = 10_000;

/// `http`-level settings and what the whole configuration uses.
#[derive(Default)]
pub struct MainConf {
    pub refresh: Option<Duration>,
    pub cache_size: Option<usize>,
    pub keys_cache: Option<PathBuf>,
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

/// The directive's arguments after its name.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: nginx fills cf->args with the directive name and its arguments.
    let all = unsafe { (*(*cf).args).as_slice::<ngx_str_t>() };
    all.get(1..).unwrap_or(&[])
}

fn directive(cmd: *mut ngx_command_t) -> String {
    // SAFETY: nginx passes the command being handled.
    unsafe { (*cmd).name.to_string() }
}

const IS_DUPLICATE: *mut c_char = c"is duplicate".as_ptr() as *mut c_char;

fn invalid(cf: *mut ngx_conf_t, cmd: *mut ngx_command_t, value: &ngx_str_t) -> *mut c_char {
    ngx_conf_log_error!(
        NGX_LOG_EMERG,
        cf,
        "invalid value \"{}\" in \"{}\" directive",
        value,
        directive(cmd)
    );
    NGX_CONF_ERROR
}

/// A printable argument without spaces or control bytes.
fn plain_arg(value: &ngx_str_t) -> Option<&str> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// `cf_access on | off;`
pub extern "C" fn set_enabled(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's LocConf for the current level; cf is nginx's.
    let (conf, args) = unsafe { (&mut *conf.cast::<LocConf>(), args(cf)) };
    if conf.enabled.is_some() {
        return IS_DUPLICATE;
    }
    conf.enabled = match args[0].as_bytes() {
        v if v.eq_ignore_ascii_case(b"on") => Some(true),
        v if v.eq_ignore_ascii_case(b"off") => Some(false),
        _ => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid value \"{}\" in \"cf_access\" directive, it must be \"on\" or \"off\"",
                args[0]
            );
            return NGX_CONF_ERROR;
        }
    };
    // SAFETY: conf_file is set while a configuration file is parsed.
    conf.enabled_at =
        unsafe { (*cf).conf_file.as_ref() }.map(|f| format!("{}:{}", f.file.name, f.line));
    NGX_CONF_OK
}

/// `cf_access_team_domain <team>.cloudflareaccess.com;`
pub extern "C" fn set_team_domain(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in set_enabled.
    let (conf, args) = unsafe { (&mut *conf.cast::<LocConf>(), args(cf)) };
    if conf.team_domain.is_some() {
        return IS_DUPLICATE;
    }
    match plain_arg(&args[0]).map(normalize_team_domain) {
        Some(domain) if valid_team_domain(domain) => {
            conf.team_domain = Some(domain.to_ascii_lowercase());
            NGX_CONF_OK
        }
        _ => invalid(cf, cmd, &args[0]),
    }
}

/// `cf_access_aud <tag> [<tag> ...];`
pub extern "C" fn set_audiences(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in set_enabled.
    let (conf, args) = unsafe { (&mut *conf.cast::<LocConf>(), args(cf)) };
    if conf.audiences.is_some() {
        return IS_DUPLICATE;
    }
    let mut tags = Vec::with_capacity(args.len());
    for arg in args {
        match plain_arg(arg) {
            Some(tag) => tags.push(tag.to_string()),
            None => return invalid(cf, cmd, arg),
        }
    }
    conf.audiences = Some(tags);
    NGX_CONF_OK
}

/// `cf_access_certs_url <url>;`
pub extern "C" fn set_certs_url(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in set_enabled.
    let (conf, args) = unsafe { (&mut *conf.cast::<LocConf>(), args(cf)) };
    if conf.certs_url.is_some() {
        return IS_DUPLICATE;
    }
    let url = plain_arg(&args[0]).filter(|u| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && u.parse::<ureq::http::Uri>()
                .is_ok_and(|uri| uri.host().is_some_and(|h| !h.is_empty()))
    });
    match url {
        Some(url) => {
            conf.certs_url = Some(url.to_string());
            NGX_CONF_OK
        }
        None => invalid(cf, cmd, &args[0]),
    }
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
    // SAFETY: as in set_enabled.
    let (conf, args) = unsafe { (&mut *conf.cast::<LocConf>(), args(cf)) };
    if conf.leeway.is_some() {
        return IS_DUPLICATE;
    }
    match parse_seconds(&args[0]) {
        Some(secs) => {
            conf.leeway = Some(secs);
            NGX_CONF_OK
        }
        None => invalid(cf, cmd, &args[0]),
    }
}

/// `cf_access_refresh <time>;` (http)
pub extern "C" fn set_refresh(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's MainConf; cf is nginx's.
    let (conf, args) = unsafe { (&mut *conf.cast::<MainConf>(), args(cf)) };
    if conf.refresh.is_some() {
        return IS_DUPLICATE;
    }
    match parse_seconds(&args[0]).filter(|s| *s > 0) {
        Some(secs) => {
            conf.refresh = Some(Duration::from_secs(secs));
            NGX_CONF_OK
        }
        None => invalid(cf, cmd, &args[0]),
    }
}

/// `cf_access_cache_size <number>;` (http)
pub extern "C" fn set_cache_size(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's MainConf; cf is nginx's.
    let (conf, args) = unsafe { (&mut *conf.cast::<MainConf>(), args(cf)) };
    if conf.cache_size.is_some() {
        return IS_DUPLICATE;
    }
    let size = args[0]
        .to_str()
        .ok()
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n <= 10_000_000);
    match size {
        Some(n) => {
            conf.cache_size = Some(n);
            NGX_CONF_OK
        }
        None => invalid(cf, cmd, &args[0]),
    }
}

/// `cf_access_keys_cache <path>;` (http)
pub extern "C" fn set_keys_cache(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is this module's MainConf; cf is nginx's.
    let (conf, args) = unsafe { (&mut *conf.cast::<MainConf>(), args(cf)) };
    if conf.keys_cache.is_some() {
        return IS_DUPLICATE;
    }
    let Some(path) = args[0].to_str().ok().filter(|p| !p.is_empty()) else {
        return invalid(cf, cmd, &args[0]);
    };
    // Relative paths are relative to the prefix, as for nginx's own paths.
    let path = PathBuf::from(path);
    conf.keys_cache = Some(if path.is_absolute() {
        path
    } else {
        // SAFETY: cf->cycle is the cycle being configured.
        let prefix = unsafe { (*(*cf).cycle).prefix };
        PathBuf::from(prefix.to_string()).join(path)
    });
    NGX_CONF_OK
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
