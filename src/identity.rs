//! get-identity through a subrequest, and the worker's cache of its answers.
//!
//! Where `cf_access_identity` is set, a main request whose user token verified waits for
//! its identity before its `cf_access_require` rules run: from this worker's cache, or from
//! a subrequest to the operator's internal location (the `auth_request` way: the event loop
//! never blocks). Requests of the same session that arrive while that subrequest runs wait
//! for its answer instead of making their own (they are parked like `limit_req`'s delayed
//! requests, and woken by a posted write event). The answer is checked (`core::identity`)
//! and cached until the token's `exp`. The token reaches only that subrequest, through
//! `$cf_access_token`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::{mem, ptr};

use cf_access_core::identity::{Identity, IdentityCache, IdentityError, Lookup, Session};
use ngx::ffi::{
    ngx_event_t, ngx_http_block_reading, ngx_http_core_run_phases, ngx_http_post_subrequest_t,
    ngx_http_request_body_t, ngx_http_request_t, ngx_http_subrequest, ngx_http_test_reading,
    ngx_int_t, ngx_pcalloc, ngx_post_event, ngx_posted_events, NGX_ERROR,
    NGX_HTTP_SPECIAL_RESPONSE, NGX_HTTP_SUBREQUEST_IN_MEMORY, NGX_HTTP_SUBREQUEST_WAITED, NGX_OK,
};
use ngx::http::Request;

use crate::pool::{copy_str, drop_value, keep};
use crate::verdict::{self, RequestCtx};
use crate::{time, zone};

/// Sessions whose identity one worker keeps (each answer is at most the identity location's
/// `subrequest_output_buffer_size`).
pub const CACHE_SESSIONS: usize = 1024;

thread_local! {
    /// This worker's identities (the event loop's thread only).
    static CACHE: RefCell<IdentityCache> = RefCell::new(IdentityCache::new(CACHE_SESSIONS));
    /// The sessions a subrequest is fetching now, each with the requests waiting for it.
    static IN_FLIGHT: RefCell<HashMap<Session, Vec<Waiter>>> = RefCell::new(HashMap::new());
}

/// A request parked until another one's subrequest answers for its session. Valid while it
/// is listed: its pool's cleanup takes it off the list first.
#[derive(Clone, Copy)]
struct Waiter {
    r: *mut ngx_http_request_t,
    ctx: *const RequestCtx,
}

/// What a phase handler does after [`resolve`].
pub enum Progress {
    /// The identity is had, or is not to be had: the verdict is final.
    Done,
    /// The request waits for its own subrequest (nginx resumes it).
    Wait,
    /// The request waits for another request's subrequest: the handler [`park`]s it.
    Park,
}

/// Gets `ctx` its identity if it still wants one: from the cache, by waiting for a
/// subrequest in flight for the same session, or by starting one. Judges the verdict once
/// the identity is had (or cannot be).
///
/// `r` is the request nginx passed to the phase handler, as nginx's own pointer: starting a
/// subrequest writes it, which a pointer derived from a shared reference may not do.
///
/// # Safety
/// `r` is live, and no reference to it is in use while this runs.
pub unsafe fn resolve(r: *mut ngx_http_request_t, ctx: &RequestCtx) -> Progress {
    let wanted = match &*ctx.identity.borrow() {
        Lookup::Wanted(session) => Some(session.clone()),
        Lookup::Fetching(_) => return Progress::Wait,
        // Woken before the answer came (by a write event of its own): parked again.
        Lookup::Waiting(_) => return Progress::Park,
        _ => None,
    };
    if let Some(session) = wanted {
        match get(r, ctx, session) {
            Progress::Done => {}
            waiting => return waiting,
        }
    }
    // SAFETY: `r` is live (the caller's contract) and has a connection with a log. A
    // subrequest leaves its last action there ("sending to client"); the phases run without
    // one, as `ngx_http_handler` starts them, so the verdict's line says no "while ...".
    unsafe { (*(*(*r).connection).log).action = ptr::null_mut() };
    // SAFETY: `r` is live (the caller's contract); this reference is the only one in use.
    verdict::judge(unsafe { Request::from_ngx_http_request(r) }, ctx);
    Progress::Done
}

/// `session`'s identity for `ctx`: `Done` when had now (the cache) or not to be had.
fn get(r: *mut ngx_http_request_t, ctx: &RequestCtx, session: Session) -> Progress {
    if let Some(identity) = CACHE.with_borrow_mut(|c| c.get(&session, time::request_now())) {
        zone::count(1, |c| &c.identity_hits);
        ctx.identity.replace(Lookup::Ready(identity));
        return Progress::Done;
    }
    let in_flight = IN_FLIGHT.with_borrow(|f| f.contains_key(&session));
    let (lookup, progress) = if in_flight {
        match join(r, ctx, &session) {
            Ok(()) => (Lookup::Waiting(session), Progress::Park),
            Err(why) => (Lookup::Unavailable(IdentityError::Failed(why.into())), Progress::Done),
        }
    } else {
        match start(r, ctx, &session) {
            Ok(()) => {
                zone::count(1, |c| &c.identity_fetches);
                IN_FLIGHT.with_borrow_mut(|f| f.insert(session.clone(), Vec::new()));
                (Lookup::Fetching(session), Progress::Wait)
            }
            Err(why) => {
                zone::count(1, |c| &c.identity_failures);
                (Lookup::Unavailable(IdentityError::Failed(why.into())), Progress::Done)
            }
        }
    };
    ctx.identity.replace(lookup);
    progress
}

/// Lists `r` as waiting for `session`'s subrequest; its pool's cleanup unlists it.
fn join(
    r: *mut ngx_http_request_t,
    ctx: &RequestCtx,
    session: &Session,
) -> Result<(), &'static str> {
    let entry = Listed { session: session.clone(), ctx };
    // SAFETY: `r` is live (see `resolve`).
    keep(unsafe { (*r).pool }, entry, drop_value::<Listed>).ok_or("out of memory")?;
    let waiter = Waiter { r, ctx };
    IN_FLIGHT.with_borrow_mut(|f| f.entry(session.clone()).or_default().push(waiter));
    Ok(())
}

/// A waiter's entry in its own pool: dropped with it, which unlists the waiter.
struct Listed {
    session: Session,
    ctx: *const RequestCtx,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let _ = IN_FLIGHT.try_with(|f| {
            if let Some(waiters) = f.borrow_mut().get_mut(&self.session) {
                waiters.retain(|w| !ptr::eq(w.ctx, self.ctx));
            }
        });
    }
}

/// Parks `r` (as `limit_req` parks a delayed request): a client that goes away ends it, a
/// posted write event resumes it.
///
/// # Safety
/// `r` is the live request nginx passed to the phase handler calling this, which holds no
/// reference to it any more (this writes the request: through nginx's own pointer, never
/// one derived from a shared reference, which the optimizer may take as unchanging).
pub unsafe fn park(r: *mut ngx_http_request_t) {
    // SAFETY: see above; these are the handlers nginx calls for the request's events.
    unsafe {
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(resume);
    }
}

/// A parked request's write event: its phases run again (the handler that parked it finds
/// the identity, or that it cannot be had).
unsafe extern "C" fn resume(r: *mut ngx_http_request_t) {
    // SAFETY: nginx passes the live request whose write event fired.
    unsafe {
        (*r).read_event_handler = Some(ngx_http_block_reading);
        (*r).write_event_handler = Some(ngx_http_core_run_phases);
        ngx_http_core_run_phases(r);
    }
}

/// Resumes a parked request at the next turn of the event loop.
///
/// # Safety
/// `r` must be live (a listed waiter is).
unsafe fn wake(r: *mut ngx_http_request_t) {
    // SAFETY: a live request has a connection and its write event; posting only links the
    // event into nginx's queue (once), and closing the connection unlinks it.
    unsafe {
        let wev: *mut ngx_event_t = (*(*r).connection).write;
        ngx_post_event(wev, ptr::addr_of_mut!(ngx_posted_events));
    }
}

/// A subrequest's record, in the leader's pool.
pub struct Fetch {
    session: Session,
    /// The verdict that started it (same pool).
    leader: *const RequestCtx,
    /// Its answer has been taken (nginx may call the post handler more than once).
    done: Cell<bool>,
}

impl Drop for Fetch {
    /// A leader gone before its answer (its client closed the connection): the waiters
    /// are woken to try again, one of them starting a new subrequest.
    fn drop(&mut self) {
        if self.done.get() {
            return;
        }
        let waiters = IN_FLIGHT.try_with(|f| f.borrow_mut().remove(&self.session));
        for w in waiters.ok().flatten().unwrap_or_default() {
            // SAFETY: listed waiters are live (their cleanup unlists them).
            unsafe {
                (*w.ctx).identity.replace(Lookup::Wanted(self.session.clone()));
                wake(w.r);
            }
        }
    }
}

/// The identity subrequest `r` is, if it is one: the record of its fetch.
pub fn fetch_of(r: &Request) -> Option<&Fetch> {
    let ps = r.as_ref().post_subrequest;
    if ps.is_null() {
        return None;
    }
    // SAFETY: a non-null post_subrequest is nginx's, set by whoever made the subrequest.
    let ps = unsafe { &*ps };
    let ours = ps.handler.is_some_and(|h| ptr::fn_addr_eq(h, fetched as PostFn));
    // SAFETY: our subrequests carry a Fetch (in the pool they share with their leader).
    ours.then(|| unsafe { &*ps.data.cast::<Fetch>() })
}

impl Fetch {
    /// The leader's token, for `$cf_access_token`.
    pub fn token(&self) -> Option<&str> {
        // SAFETY: the leader's verdict lives in the pool this subrequest shares.
        let leader = unsafe { &*self.leader };
        leader.verified.as_ref().map(|v| &**v.token())
    }
}

type PostFn = unsafe extern "C" fn(*mut ngx_http_request_t, *mut c_void, ngx_int_t) -> ngx_int_t;

/// Starts the subrequest to `ctx`'s `cf_access_identity` location.
fn start(
    r: *mut ngx_http_request_t,
    ctx: &RequestCtx,
    session: &Session,
) -> Result<(), &'static str> {
    let conf = ctx.verifier.identity.as_ref().ok_or("not configured")?;
    // SAFETY: `r` is live (see `resolve`).
    let pool = unsafe { (*r).pool };
    let fetch = Fetch { session: session.clone(), leader: ctx, done: Cell::new(false) };
    let fetch = keep(pool, fetch, drop_value::<Fetch>).ok_or("out of memory")?;
    let uri = copy_str(pool, &conf.uri).ok_or("out of memory")?;
    // SAFETY: the pool is live; nginx returns null or zeroed memory of that size.
    let ps = unsafe { ngx_pcalloc(pool, mem::size_of::<ngx_http_post_subrequest_t>()) }
        .cast::<ngx_http_post_subrequest_t>();
    if ps.is_null() {
        return Err("out of memory");
    }
    let mut sr: *mut ngx_http_request_t = ptr::null_mut();
    let mut uri = uri;
    // SAFETY: `r` is a live main request in a phase handler; `uri` and `ps` live in its pool
    // (which the subrequest shares), `ps` names our handler and the fetch record.
    let rc = unsafe {
        (*ps).handler = Some(fetched);
        (*ps).data = fetch.cast();
        ngx_http_subrequest(
            r,
            &mut uri,
            ptr::null_mut(),
            &mut sr,
            ps,
            (NGX_HTTP_SUBREQUEST_IN_MEMORY | NGX_HTTP_SUBREQUEST_WAITED) as _,
        )
    };
    if rc != NGX_OK as ngx_int_t || sr.is_null() {
        // SAFETY: the record is ours; no subrequest will answer it.
        unsafe { (*fetch).done.set(true) };
        return Err("cannot start the subrequest");
    }
    // A request body of its own, empty (as auth_request gives its subrequests), so that the
    // client's is never read or sent for it.
    // SAFETY: as above; `sr` was just created.
    unsafe {
        let body = ngx_pcalloc(pool, mem::size_of::<ngx_http_request_body_t>());
        if !body.is_null() {
            (*sr).request_body = body.cast();
        }
    }
    Ok(())
}

/// The subrequest's end: its answer checked, cached, given to its leader and to every request
/// that waited for it. nginx then finishes the subrequest with the code returned: `rc`, but
/// `NGX_OK` for an error of the subrequest's own output (an answer larger than
/// `subrequest_output_buffer_size`): nginx marks the client's connection failed for any
/// output filter's error and would close it, though an in-memory subrequest never writes to
/// the client. That failure is the identity's, decided like any other; a connection that
/// really failed fails again at its next write.
unsafe extern "C" fn fetched(
    sr: *mut ngx_http_request_t,
    data: *mut c_void,
    rc: ngx_int_t,
) -> ngx_int_t {
    // SAFETY: `data` is the Fetch `start` put in the pool the subrequest shares.
    let fetch = unsafe { &*data.cast::<Fetch>() };
    if fetch.done.replace(true) {
        return rc;
    }
    // SAFETY: nginx passes the live subrequest.
    let sr = unsafe { &*sr };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| answer(sr, rc, &fetch.session)))
        .unwrap_or_else(|_| Err(IdentityError::Failed("reading the answer panicked".into())));
    let lookup = match outcome {
        Ok(identity) => {
            CACHE.with_borrow_mut(|c| c.put(&fetch.session, identity.clone()));
            Lookup::Ready(identity)
        }
        Err(e) => {
            zone::count(1, |c| &c.identity_failures);
            Lookup::Unavailable(e)
        }
    };
    // SAFETY: the leader's verdict lives in the shared pool.
    unsafe { (*fetch.leader).identity.replace(lookup.clone()) };
    let waiters = IN_FLIGHT.with_borrow_mut(|f| f.remove(&fetch.session)).unwrap_or_default();
    for w in waiters {
        // SAFETY: listed waiters are live (their cleanup unlists them).
        unsafe {
            (*w.ctx).identity.replace(lookup.clone());
            wake(w.r);
        }
    }
    if rc == NGX_ERROR as ngx_int_t {
        // SAFETY: the subrequest's connection is the client's, live; see above.
        unsafe { (*sr.connection).set_error(0) };
        return NGX_OK as ngx_int_t;
    }
    rc
}

/// What the subrequest's end means: its in-memory answer, checked for the session's user.
fn answer(
    sr: &ngx_http_request_t,
    rc: ngx_int_t,
    session: &Session,
) -> Result<Arc<Identity>, IdentityError> {
    if rc == NGX_ERROR as ngx_int_t {
        // nginx logged why (e.g. "too big subrequest response").
        return Err(IdentityError::Failed("the subrequest failed".into()));
    }
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return Err(IdentityError::Failed(format!("the subrequest ended with status {rc}")));
    }
    let status = sr.headers_out.status;
    if status != 200 {
        return Err(IdentityError::Status(u16::try_from(status).unwrap_or(u16::MAX)));
    }
    let body: &[u8] = if sr.out.is_null() {
        &[]
    } else {
        // SAFETY: an in-memory subrequest's output is one buffer in its pool (nginx's
        // postpone filter), `pos..last` its bytes.
        unsafe {
            let b = (*sr.out).buf;
            if b.is_null() || (*b).pos.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts((*b).pos, (*b).last.offset_from((*b).pos) as usize)
            }
        }
    };
    Identity::parse(body, session).map(Arc::new)
}
