//! The per-request verdict: decided once (in whichever phase first needs it), read by every
//! phase after. A main request keeps its own; a subrequest checked by this module keeps its
//! own too, and one that was not checked reads its main request's.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use cf_access_core::{Status, Verified};
use ngx::http::{HttpModule, Request};

use crate::conf::Verifier;
use crate::Module;

pub struct RequestCtx {
    /// `not_allowed` may replace `ok` after the `cf_access_require` rules ran.
    pub status: Cell<Status>,
    /// The verified token (shared with the worker's cache), also for `not_allowed`.
    pub verified: Option<Arc<Verified>>,
    /// What the verdict was reached with.
    pub verifier: Rc<Verifier>,
    /// The status to deny with (403, or a `cf_access_require`'s `error=`).
    pub deny_with: Cell<u16>,
}

impl RequestCtx {
    /// Stores a verdict on `r` (allocated in its pool, dropped with it).
    pub fn set(r: &Request, ctx: RequestCtx) -> Option<&RequestCtx> {
        let p = r.pool().allocate(ctx);
        if p.is_null() {
            return None;
        }
        r.set_module_ctx(p.cast(), Module::module());
        // SAFETY: just allocated in the request's pool, which outlives the request's use.
        Some(unsafe { &*p })
    }

    /// The verdict `r` itself carries, if any.
    pub fn own(r: &Request) -> Option<&RequestCtx> {
        r.get_module_ctx::<RequestCtx>(Module::module())
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
