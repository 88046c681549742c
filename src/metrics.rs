//! `cf_access_metrics`: a content handler, like `stub_status`, answering with the instance's
//! counters and key status (Prometheus text, `?format=json`, or `?ready`). What it shows is
//! read from the shared zone and rendered by the core (`cf_access_core::metrics`).

use std::ffi::{c_char, c_void};
use std::time::Duration;

use cf_access_core::metrics::{self, Query};
use ngx::core::{Buffer, Status as NgxStatus, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_chain_t, ngx_command_t, ngx_conf_t, ngx_http_request_t, ngx_int_t, ngx_str_t,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED,
};
use ngx::http::{
    HTTPStatus, HttpModuleLocationConf, HttpModuleMainConf, Method, NgxHttpCoreModule, Request,
};
use ngx::ngx_string;

use crate::time::{mono_ms, unix_now};
use crate::{zone, Module};

/// How long a scrape waits for a zone slot (a refresher holds it for a copy's time).
const LOCK_WAIT: Duration = Duration::from_millis(50);

/// `cf_access_metrics;` (location): this location answers with the metrics.
pub extern "C" fn set_metrics(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, inside a location.
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) else {
        return NGX_CONF_ERROR;
    };
    clcf.handler = Some(metrics_handler);
    NGX_CONF_OK
}

/// The body and status of one scrape.
fn answer(r: &Request) -> Option<(HTTPStatus, ngx_str_t, String)> {
    let main = Module::main_conf(r)?;
    let args = r.as_ref().args.as_bytes();
    let snapshot = match zone::current() {
        Some(zone) => {
            let sources: Vec<(usize, &str)> =
                main.stores.iter().filter_map(|s| Some((s.slot()?, s.url.as_str()))).collect();
            metrics::snapshot(&zone, &sources, LOCK_WAIT, mono_ms(), unix_now()).ok()?
        }
        // No location uses cf_access: nothing to count, nothing to wait for.
        None => metrics::Snapshot::default(),
    };
    let text = ngx_string!("text/plain; charset=utf-8");
    Some(match Query::parse(args) {
        Query::Prometheus => (
            HTTPStatus::OK,
            ngx_string!("text/plain; version=0.0.4; charset=utf-8"),
            metrics::prometheus(&snapshot),
        ),
        Query::Json => (HTTPStatus::OK, ngx_string!("application/json"), metrics::json(&snapshot)),
        Query::Ready if snapshot.ready() => (HTTPStatus::OK, text, "ready\n".into()),
        Query::Ready => (HTTPStatus::SERVICE_UNAVAILABLE, text, "not ready\n".into()),
    })
}

/// # Safety
/// Called by nginx in the content phase with a valid request.
unsafe extern "C" fn metrics_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    let r = unsafe { Request::from_ngx_http_request(r) };
    if r.method() != Method::GET && r.method() != Method::HEAD {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    let rc = r.discard_request_body();
    if rc != NgxStatus::NGX_OK {
        return rc.into();
    }
    let Some((status, content_type, body)) = answer(r) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    r.set_status(status);
    // The content type points at a static string.
    let out = &mut r.as_mut().headers_out;
    out.content_type_len = content_type.len;
    out.content_type = content_type;
    out.content_type_lowcase = std::ptr::null_mut();
    r.set_content_length_n(body.len());
    let rc = r.send_header();
    // HEAD, not `r->header_only`: the bindings misread that bitfield on nginx 1.29 and later
    // (see `RequestCtx::own`); the only statuses here are 200 and 503, which have a body.
    let head = r.method() == Method::HEAD;
    if rc == NgxStatus::NGX_ERROR || rc.0 > NgxStatus::NGX_OK.0 || head {
        return rc.into();
    }
    let Some(mut buf) = r.pool().create_buffer_from_str(&body) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    buf.set_last_buf(r.is_main());
    buf.set_last_in_chain(true);
    let mut out = ngx_chain_t { buf: buf.as_ngx_buf_mut(), next: std::ptr::null_mut() };
    r.output_filter(&mut out).into()
}
