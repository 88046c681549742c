//! One bounded fetch of a certs URL: one overall deadline (redirects, proxy and body
//! included), at most [`MAX_REDIRECTS`] redirects and never from https to http, through the
//! configured proxy, trusting the configured CA bundle or the bundled web roots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cf_access_core::jwks::{JwksError, MAX_CERTS_BODY};
use cf_access_core::redirect::{self, RedirectError};
use cf_access_core::zone::BODY_CAP;
use cf_access_core::KeySet;
use thiserror::Error;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    time, Buffers, ConnectProxyConnector, ConnectionDetails, Connector, NextTimeout,
    RustlsConnector, TcpConnector, Transport,
};

/// A whole fetch, every redirect and the body included, ends within this.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(5);
/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

/// How certs URLs are reached (`cf_access_proxy`, `cf_access_trusted_certificate`); the same
/// in the master and in every worker (nginx clears the workers' environment, so nothing is
/// taken from `HTTPS_PROXY` and friends).
#[derive(Clone, Default)]
pub struct Egress {
    pub proxy: Option<ureq::Proxy>,
    /// CA certificates that replace the bundled web roots.
    pub roots: Option<Arc<Vec<Certificate<'static>>>>,
}

/// Which process fetches: the master must leave no thread running (none would survive its forks,
/// and one inside the resolver could hold libc's locks across them), so its DNS lookups use
/// no resolver thread of ureq's and are left to the system resolver's own timeouts. (Its
/// parallel first fetches run on scoped threads that end before the master goes on.)
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Worker,
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("{0}")]
    Transport(String),
    #[error("no complete answer within {} s", FETCH_DEADLINE.as_secs())]
    Deadline,
    #[error("http status {0}")]
    Status(u16),
    #[error("response larger than {MAX_CERTS_BODY} bytes")]
    TooLarge,
    #[error("key set of {0} bytes is larger than the shared zone's {BODY_CAP}")]
    TooLargeForZone(usize),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Resolves without a thread of ureq's (the master's lookups): the timeout is dropped.
#[derive(Debug, Default)]
struct InlineResolver(DefaultResolver);

impl Resolver for InlineResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let timeout = NextTimeout { after: time::Duration::NotHappening, reason: timeout.reason };
        self.0.resolve(uri, config, timeout)
    }
}

/// Wraps the socket (under TLS and the proxy tunnel) so that no read or write goes past the
/// fetch's deadline: ureq's own global timeout is checked between reads, and a peer that
/// trickles a byte now and then would keep a read going for as long as it likes.
#[derive(Debug)]
struct DeadlineConnector(Instant);

impl<In: Transport> Connector<In> for DeadlineConnector {
    type Out = DeadlineTransport<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| DeadlineTransport { inner, deadline: self.0 }))
    }
}

#[derive(Debug)]
struct DeadlineTransport<T> {
    inner: T,
    deadline: Instant,
}

impl<T: Transport> DeadlineTransport<T> {
    /// `timeout`, shortened to what is left before the deadline; an error once it passed.
    fn bound(&self, timeout: NextTimeout) -> Result<NextTimeout, ureq::Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ureq::Error::Timeout(ureq::Timeout::Global));
        }
        let after = match timeout.after {
            time::Duration::Exact(d) if d < left => timeout.after,
            _ => time::Duration::Exact(left),
        };
        Ok(NextTimeout { after, reason: timeout.reason })
    }
}

impl<T: Transport> Transport for DeadlineTransport<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = self.bound(timeout)?;
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = self.bound(timeout)?;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }
}

fn agent(egress: &Egress, role: Role, deadline: Instant) -> ureq::Agent {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let roots = match &egress.roots {
        Some(certs) => RootCerts::Specific(certs.clone()),
        None => RootCerts::WebPki,
    };
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(remaining))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(egress.proxy.clone())
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .max_idle_connections(0)
        .user_agent(concat!("ngx_http_cf_access/", env!("CARGO_PKG_VERSION")))
        .build();
    // ureq's default chain (a CONNECT proxy's tunnel or a direct socket, then TLS), with
    // the deadline around the socket.
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(DeadlineConnector(deadline))
            .chain(RustlsConnector::default());
    match role {
        Role::Worker => ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
        Role::Master => ureq::Agent::with_parts(config, connector, InlineResolver::default()),
    }
}

/// Fetches and parses the key set at `url`. Blocking, bounded by [`FETCH_DEADLINE`] (DNS in
/// the master aside, see [`Role`]).
pub fn fetch(url: &str, egress: &Egress, role: Role) -> Result<KeySet, FetchError> {
    let deadline = Instant::now() + FETCH_DEADLINE;
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(FetchError::Deadline);
        }
        let mut response =
            agent(egress, role, deadline).get(&url).call().map_err(transport_error)?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or(FetchError::Status(status))?;
            url = redirect::target(&url, location)?;
            continue;
        }
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let body =
            response.body_mut().with_config().limit(MAX_CERTS_BODY as u64).read_to_vec().map_err(
                |e| match e {
                    ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge,
                    e => transport_error(e),
                },
            )?;
        return Ok(KeySet::from_certs_json(&body)?);
    }
    Err(FetchError::TooManyRedirects)
}

fn transport_error(e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::Timeout(_) => FetchError::Deadline,
        e => FetchError::Transport(e.to_string()),
    }
}

/// Largest CA bundle read (Debian's whole ca-certificates bundle is about 220 KiB).
const MAX_ROOTS_FILE: u64 = 4 * 1024 * 1024;

/// The CA certificates of a PEM file (`cf_access_trusted_certificate`).
pub fn read_roots(path: &std::path::Path) -> Result<Vec<Certificate<'static>>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut pem = Vec::new();
    file.take(MAX_ROOTS_FILE + 1).read_to_end(&mut pem).map_err(|e| e.to_string())?;
    if pem.len() as u64 > MAX_ROOTS_FILE {
        return Err(format!("larger than {MAX_ROOTS_FILE} bytes"));
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificates in it".into());
    }
    Ok(certs)
}
