//! The per-request verdict, shared by the main request and its subrequests.

use std::sync::Arc;

use cf_access_core::{Status, Verified};
use ngx::http::{HttpModule, Request};

use crate::Module;

pub struct RequestCtx {
    pub status: Status,
    /// The verified token, on success (shared with the worker's cache).
    pub verified: Option<Arc<Verified>>,
}

impl RequestCtx {
    /// Stores the verdict on `r` (allocated in its pool, dropped with it).
    pub fn set(r: &Request, status: Status, verified: Option<Arc<Verified>>) -> Option<()> {
        let ctx = r.pool().allocate(RequestCtx { status, verified });
        if ctx.is_null() {
            return None;
        }
        r.set_module_ctx(ctx.cast(), Module::module());
        Some(())
    }

    /// The verdict of `r`'s main request, if the access handler ran for it.
    pub fn get(r: &Request) -> Option<&RequestCtx> {
        // SAFETY: every request's `main` points at a live main request (itself, for one).
        let main = unsafe { Request::from_ngx_http_request(r.as_ref().main) };
        main.get_module_ctx::<RequestCtx>(Module::module())
    }
}
