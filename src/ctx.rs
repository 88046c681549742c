//! The per-request verdict, shared by the main request and its subrequests.

use cf_access_core::{Identity, Status};
use ngx::http::{HttpModule, Request};

use crate::Module;

pub struct RequestCtx {
    pub status: Status,
    pub identity: Identity,
}

impl RequestCtx {
    /// Stores the verdict on `r` (allocated in its pool, dropped with it).
    pub fn set(r: &Request, status: Status, identity: Identity) -> Option<()> {
        let ctx = r.pool().allocate(RequestCtx { status, identity });
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
