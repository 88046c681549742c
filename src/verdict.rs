//! The per-request verdict: decided once by the core (`cf_access_core::decide`) in whichever
//! phase first needs it, recorded on the request (with its one log line if refused, and the
//! `cf_access_require` rules), read by every phase and variable after, and counted once in
//! the log phase. A main request keeps its own; a subrequest checked by this module keeps its
//! own too, and one that was not checked reads its main request's. The worker's
//! verified-token cache lives here too.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use cf_access_core::decide::{self, Check, Decision};
use cf_access_core::identity::{Lookup, Session};
use cf_access_core::{Status, TokenCache, Verified, VerifyError};
use ngx::core::Status as NgxStatus;
use ngx::ffi::{
    ngx_http_complex_value, ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t, ngx_str_t,
    NGX_LOG_INFO, NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Request};

use crate::conf::{IdentityFailure, Mode, ModeSetting, Verifier};
use crate::{pool, time, zone, Module};

/// One request's verdict under one location's settings, in the request's pool.
pub struct RequestCtx {
    /// `not_allowed` may replace `ok` after the `cf_access_require` rules ran.
    pub status: Cell<Status>,
    /// The verified token (shared with the worker's cache), also for `not_allowed`.
    pub verified: Option<Arc<Verified>>,
    /// What the verdict was reached with.
    pub verifier: Rc<Verifier>,
    /// The mode it was judged in (`on` or `report`; `cf_access`'s value for this request).
    pub mode: Mode,
    /// The status to deny with (403, or a `cf_access_require`'s `error=`).
    pub deny_with: Cell<u16>,
    /// Why the token itself was refused, before any `cf_access_require` rule ran.
    refused: Option<VerifyError>,
    /// The user's identity from get-identity (`cf_access_identity`), or where it is.
    pub identity: RefCell<Lookup>,
    /// Whether the verdict is final: the token's refusal logged, or the identity settled
    /// and the `cf_access_require` rules run.
    pub judged: Cell<bool>,
    /// The request the verdict belongs to: found again by it after an internal redirect,
    /// never by a subrequest (which shares the pool).
    owner: *const ngx_http_request_t,
}

impl RequestCtx {
    fn new(
        r: &Request,
        verifier: &Rc<Verifier>,
        mode: Mode,
        verified: Option<Arc<Verified>>,
        refused: Option<VerifyError>,
        identity: Lookup,
    ) -> RequestCtx {
        let status = refused.as_ref().map_or(Status::Ok, VerifyError::status);
        RequestCtx {
            status: status.into(),
            verified,
            verifier: verifier.clone(),
            mode,
            deny_with: 403.into(),
            refused,
            identity: identity.into(),
            judged: false.into(),
            owner: r.as_ref(),
        }
    }

    /// Stores a verdict on `r`: in its pool, in a cleanup entry of its own (which drops it
    /// with the pool, and by which [`RequestCtx::own`] finds it again after an internal
    /// redirect), and as the module's context.
    pub fn set(r: &Request, ctx: RequestCtx) -> Option<&RequestCtx> {
        let p = pool::keep(r.as_ref().pool, ctx, drop_ctx)?;
        r.set_module_ctx(p.cast(), Module::module());
        // SAFETY: just written; the pool outlives the request's use of it.
        Some(unsafe { &*p })
    }

    /// The verdict `r` itself carries, if any. nginx clears the module contexts on an
    /// internal redirect (index files, `try_files`, `error_page`, named locations); the
    /// verdict is then found again among the pool's cleanup entries, as
    /// `ngx_http_realip_module` finds its context. (Without asking `r->internal` first: the
    /// bindings' bitfield accessors misread that part of the request on nginx 1.29 and
    /// later, whose new `port` field bindgen before 0.73 lays out wrongly; the walk is a few
    /// entries long.)
    pub fn own(r: &Request) -> Option<&RequestCtx> {
        if let Some(ctx) = r.get_module_ctx::<RequestCtx>(Module::module()) {
            return Some(ctx);
        }
        let owner: *const ngx_http_request_t = r.as_ref();
        // SAFETY: the request's pool is live; its cleanup list is nginx's, well formed.
        let mut cln = unsafe { (*r.as_ref().pool).cleanup };
        while !cln.is_null() {
            // SAFETY: a live entry of the list (entries are never freed before the pool).
            let entry = unsafe { &*cln };
            if entry.handler.is_some_and(|h| ptr::fn_addr_eq(h, drop_ctx as pool::CleanupFn)) {
                // SAFETY: entries with our handler hold a RequestCtx written by `set`.
                let ctx = unsafe { &*entry.data.cast::<RequestCtx>() };
                // The newest entry comes first: the verdict of the last location checked.
                if ctx.owner == owner {
                    r.set_module_ctx(entry.data, Module::module());
                    return Some(ctx);
                }
            }
            cln = entry.next;
        }
        None
    }

    /// `r`'s verdict, else (for a subrequest) its main request's.
    pub fn get(r: &Request) -> Option<&RequestCtx> {
        Self::own(r).or_else(|| {
            // SAFETY: every request's `main` points at a live main request (itself, for one).
            let main = unsafe { Request::from_ngx_http_request(r.as_ref().main) };
            Self::own(main)
        })
    }
}

/// Drops a verdict as its request's pool is destroyed.
unsafe extern "C" fn drop_ctx(data: *mut c_void) {
    // SAFETY: `data` holds the RequestCtx `RequestCtx::set` wrote; nginx calls this once.
    unsafe { ptr::drop_in_place(data.cast::<RequestCtx>()) };
}

thread_local! {
    /// This worker's verified-token cache (the event loop's thread only).
    static CACHE: RefCell<TokenCache> = RefCell::new(TokenCache::new(0));
}

/// Sizes this worker's cache (`cf_access_cache_size`); called from `init_process`.
pub fn init_cache(capacity: usize) {
    CACHE.with_borrow_mut(|c| *c = TokenCache::new(capacity));
}

/// What `cf_access` says for `r` in its current location.
pub enum Applies<'a> {
    /// `off`, or a value that evaluates to `off`: nothing to check.
    No,
    /// `on` or `report` (evaluated), with the location's settings.
    Yes(&'a Rc<Verifier>, Mode),
    /// A value with variables that evaluated to something else: a misconfiguration, which
    /// the handlers refuse with 500.
    Invalid,
}

/// The verifier of `r`'s location; `None` where `cf_access` is a fixed `off`.
#[inline]
pub fn verifier(r: &Request) -> Option<&Rc<Verifier>> {
    Module::location_conf(r)?.verifier.as_ref()
}

/// `cf_access`'s value for `r` under `verifier`: fixed, or its variables evaluated (`Err`:
/// what it evaluated to, when that is not a mode).
#[inline]
pub fn mode(r: &Request, verifier: &Verifier) -> Result<Mode, String> {
    match verifier.mode {
        ModeSetting::Fixed(mode) => Ok(mode),
        ModeSetting::Variable(cv) => {
            let value = complex_value(r, cv);
            Mode::parse(value.as_bytes()).ok_or_else(|| value.to_string())
        }
    }
}

/// `cf_access`'s value for `r`, evaluated where it has variables.
pub fn applies(r: &Request) -> Applies<'_> {
    let Some(verifier) = verifier(r) else {
        return Applies::No;
    };
    match mode(r, verifier) {
        Ok(Mode::Off) => Applies::No,
        Ok(mode) => Applies::Yes(verifier, mode),
        Err(_) => Applies::Invalid,
    }
}

/// The value of `cv` for `r`; empty when it cannot be evaluated.
fn complex_value(r: &Request, cv: *mut ngx_http_complex_value_t) -> ngx_str_t {
    let mut value = ngx_str_t::default();
    // SAFETY: `cv` was compiled at configuration time for this cycle; `r` is live.
    let rc = unsafe { ngx_http_complex_value(r.as_ref() as *const _ as *mut _, cv, &mut value) };
    if rc != NGX_OK as ngx_int_t {
        value = ngx_str_t::default();
    }
    value
}

/// `r`'s verdict under `verifier`: the one already reached with the same settings (also in
/// another location, before an internal redirect), the token's verdict from such a location
/// judged by this location's own rules, or a new one (decided, then recorded on `r`). `None`
/// only when the pool is exhausted.
pub fn verdict<'r>(r: &'r Request, verifier: &Rc<Verifier>, mode: Mode) -> Option<&'r RequestCtx> {
    if let Some(ctx) = RequestCtx::own(r) {
        // The same location's settings (the rewrite phase's verdict in the access phase, an
        // index file in the same location): no comparison needed.
        if ctx.mode == mode
            && (Rc::ptr_eq(&ctx.verifier, verifier) || ctx.verifier.same_check(verifier))
        {
            return Some(ctx);
        }
        if ctx.verifier.same_token_check(verifier) {
            crate::log_debug!(r, "verdict of the token reused after an internal redirect");
            return rejudge(r, ctx, verifier, mode);
        }
    }
    let decision = decide(r, verifier);
    record(r, verifier, mode, decision)
}

/// Deciding: the core's decision for `r`'s headers under `verifier`, against this process's
/// key set and the worker's token cache (whose lookups are counted).
fn decide(r: &Request, verifier: &Verifier) -> Decision {
    let store = &verifier.store;
    let snapshot = store.snapshot(zone::current());
    let check = Check {
        policy: &verifier.policy,
        keys: snapshot.as_deref().map(|s| &s.set),
        now: time::request_now(),
    };
    let headers = r.headers_in_iterator().map(|(name, value)| (name.as_bytes(), value.as_bytes()));
    let (decision, (hits, misses)) = CACHE.with_borrow_mut(|cache| {
        let decision = decide::decide(headers, &check, cache);
        (decision, cache.take_lookups())
    });
    count_lookups((hits, misses));
    crate::log_debug!(
        r,
        "{} for \"{}\" (token cache: {} hit, {} miss)",
        decision.status.as_str(),
        store.url,
        hits,
        misses
    );
    if decision.wants_refresh {
        store.unknown_kid(time::mono_ms());
    }
    if let Some(v) = &decision.verified {
        crate::log_debug!(r, "token verified (kid {})", v.kid);
    }
    decision
}

/// Recording: `decision` stored on `r`, its one log line if refused, then the
/// `cf_access_require` rules (which may read the `$cf_access_*` variables of this verdict).
fn record<'r>(
    r: &'r Request,
    verifier: &Rc<Verifier>,
    mode: Mode,
    decision: Decision,
) -> Option<&'r RequestCtx> {
    let identity = wanted(r, verifier, decision.verified.as_ref());
    let ctx = RequestCtx::new(r, verifier, mode, decision.verified, decision.error, identity);
    let ctx = RequestCtx::set(r, ctx)?;
    judge_once(r, ctx, false);
    Some(ctx)
}

/// Whether `r` is to get the identity of its verified token under `verifier`: a main
/// request, with a user token, where `cf_access_identity` is set.
fn wanted(r: &Request, verifier: &Verifier, verified: Option<&Arc<Verified>>) -> Lookup {
    match verified.and_then(Session::of) {
        Some(session) if verifier.identity.is_some() && r.is_main() => Lookup::Wanted(session),
        _ => Lookup::NotWanted,
    }
}

/// The token's verdict from `prev` (another location's, before an internal redirect, with
/// the same token check), recorded for `verifier`: this location's mode and rules apply,
/// the token is not verified again.
fn rejudge<'r>(
    r: &'r Request,
    prev: &RequestCtx,
    verifier: &Rc<Verifier>,
    mode: Mode,
) -> Option<&'r RequestCtx> {
    // An identity had (or not) under the same `cf_access_identity` settings is kept.
    let identity = match &*prev.identity.borrow() {
        settled @ (Lookup::Ready(_) | Lookup::Unavailable(_))
            if prev.verifier.identity == verifier.identity =>
        {
            settled.clone()
        }
        _ => wanted(r, verifier, prev.verified.as_ref()),
    };
    let ctx =
        RequestCtx::new(r, verifier, mode, prev.verified.clone(), prev.refused.clone(), identity);
    let ctx = RequestCtx::set(r, ctx)?;
    // The rules are this location's; a refusal already logged in the same mode is not
    // logged again (one line per refused request).
    let logged = prev.mode == mode && !matches!(prev.status.get(), Status::Ok | Status::NotAllowed);
    judge_once(r, ctx, logged);
    Some(ctx)
}

/// Makes `ctx`'s verdict final once its identity is settled (see `identity::resolve`).
pub fn judge(r: &Request, ctx: &RequestCtx) {
    judge_once(r, ctx, false);
}

/// A recorded verdict made final, once: the token's refusal logged, or, once the identity is
/// settled, `identity_unavailable` (under `cf_access_identity_failure deny`) or the
/// `cf_access_require` rules. `logged`: the refusal was logged already (not again).
fn judge_once(r: &Request, ctx: &RequestCtx, logged: bool) {
    if ctx.judged.get() || ctx.identity.borrow().is_pending() {
        return;
    }
    ctx.judged.set(true);
    if let Some(e) = &ctx.refused {
        if !logged {
            log_denial(r, ctx.mode, e.status(), &e.to_string());
        }
        return;
    }
    if let Lookup::Unavailable(e) = &*ctx.identity.borrow() {
        let failure = ctx.verifier.identity.as_ref().map(|c| c.failure);
        if failure == Some(IdentityFailure::Allow) {
            if !logged {
                crate::log_error!(
                    NGX_LOG_INFO,
                    r.log(),
                    "identity unavailable, let through without it: {}",
                    e
                );
            }
        } else {
            ctx.status.set(Status::IdentityUnavailable);
            if !logged {
                log_denial(r, ctx.mode, Status::IdentityUnavailable, &e.to_string());
            }
            return;
        }
    }
    check_requires(r, ctx, &ctx.verifier);
}

/// The `cf_access_require` rules, once the token verified (their values may read the
/// `$cf_access_*` variables, which see this verdict).
fn check_requires(r: &Request, ctx: &RequestCtx, verifier: &Verifier) {
    let Some(requires) = &verifier.requires else {
        return;
    };
    for require in requires.iter() {
        let values: Vec<ngx_str_t> =
            require.values.iter().map(|&cv| complex_value(r, cv)).collect();
        if decide::first_unmet(values.iter().map(|v| v.as_bytes())).is_some() {
            ctx.status.set(Status::NotAllowed);
            ctx.deny_with.set(require.error);
            let why = format!("\"cf_access_require\" in {} is not met", require.at);
            log_denial(r, ctx.mode, Status::NotAllowed, &why);
            return;
        }
    }
}

/// The one line a refused request gets (`info`).
fn log_denial(r: &Request, mode: Mode, status: Status, why: &str) {
    let would = if mode == Mode::Report { "report: " } else { "" };
    let verb = if mode == Mode::Report { "would be denied" } else { "denied" };
    crate::log_error!(
        NGX_LOG_INFO,
        r.log(),
        "{}access {} ({}): {}",
        would,
        verb,
        status.as_str(),
        why
    );
}

/// Counts a request's final verdict, instance-wide. Lock-free.
fn count_verdict(status: Status) {
    zone::count(1, |c| &c.requests[status.index()]);
}

/// Counts verified-token cache lookups, instance-wide. Lock-free.
fn count_lookups((hits, misses): (u64, u64)) {
    zone::count(hits, |c| &c.cache_hits);
    zone::count(misses, |c| &c.cache_misses);
}

/// The log phase: counts the main request's final verdict once, whatever internal redirects
/// (an index file, `try_files`, `error_page`) made the access phase run before.
///
/// # Safety
/// Called by nginx in the log phase with a valid request.
pub unsafe extern "C" fn log_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    // With `log_subrequest on` subrequests are logged too; their verdict is the main's.
    if let Some(ctx) = RequestCtx::get(r).filter(|_| r.is_main()) {
        count_verdict(ctx.status.get());
    }
    NgxStatus::NGX_OK.into()
}
