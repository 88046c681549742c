//! A loopback HTTP/1.1 server standing in for `/cdn-cgi/access/certs` (and, see
//! [`identity`](crate::identity), `/cdn-cgi/access/get-identity`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::identity::{self, IdentityConfig, IdentityState, Reply};
use crate::listener::{lock, Conns, Listener, Served};
use crate::{certs_json, KeyPair};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Granularity at which blocked connection threads notice a shutdown.
const TICK: Duration = Duration::from_millis(50);
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 512;

/// What the server does with the next request(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// 200, `application/json`, with Content-Length.
    Json(String),
    /// That status with that body (`application/json` if the body looks
    /// like JSON, else `text/plain`).
    Status(u16, String),
    /// Accept, read the request, never answer: the socket is held until the
    /// client closes it or the server is dropped.
    Hang,
    /// 200 JSON after `delay_ms`.
    Slow { body: String, delay_ms: u64 },
    /// These bytes verbatim, then close (truncated/huge/garbage answers).
    Raw(Vec<u8>),
    /// After `delay_ms` (cut short if the server is dropped), answers
    /// `status` (e.g. 301, 302, 307, 308) with `Location: <location>`,
    /// `Content-Length: 0`, `Connection: close`. `location` is written
    /// verbatim (it may be relative, or even malformed on purpose).
    /// See [`Behavior::redirect`] and [`CertsServer::redirect_chain`].
    Redirect { location: String, delay_ms: u64, status: u16 },
    /// Writes `head` (a response head, maybe part of a body), then one
    /// space every `every_ms` (at least 1 ms) until the client closes the
    /// connection or the server is dropped: an answer that never ends but is
    /// never idle either.
    Trickle { head: Vec<u8>, every_ms: u64 },
    /// These bytes verbatim (e.g. a head promising more body than follows),
    /// then nothing more: the connection is held open, as by
    /// [`Behavior::Hang`], until the client closes it or the server is
    /// dropped. An answer that stalls halfway.
    Stall(Vec<u8>),
    /// These bytes verbatim, then close, as soon as the client has sent
    /// anything at all, without waiting for a request head: a peer that
    /// does not speak the client's protocol (plain HTTP answering a TLS
    /// ClientHello). Counts as a hit when it answers. A connection whose
    /// first bytes start a `GET /cdn-cgi/access/get-identity` is the
    /// exception: it is read on and answered by the identity stand-in.
    Garbage(Vec<u8>),
}

impl Behavior {
    /// `Redirect { location, delay_ms: 0, status: 302 }`.
    pub fn redirect(location: impl Into<String>) -> Behavior {
        Behavior::Redirect { location: location.into(), delay_ms: 0, status: 302 }
    }
}

type Handler = Arc<dyn Fn() -> Behavior + Send + Sync>;

/// A connection being served: a TCP stream, or a protocol on top of one
/// (TLS, see [`TlsCertsServer`](crate::TlsCertsServer)).
pub(crate) trait Conn: Read + Write {
    /// The underlying socket (for timeouts and options).
    fn tcp(&self) -> &TcpStream;
    /// Ends what the server sends (TLS: `close_notify` first) but keeps
    /// reading possible.
    fn close_write(&mut self) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Turns an accepted socket into the connection to serve (e.g. does a TLS
/// handshake), in the connection's thread, giving up at `deadline` or when
/// `stopping()` says so: `None` closes the socket. The socket already has a
/// short read timeout ([`TICK`]) and a write timeout.
pub(crate) type Wrap =
    Arc<dyn Fn(TcpStream, Instant, &dyn Fn() -> bool) -> Option<Box<dyn Conn>> + Send + Sync>;

enum Source {
    Fixed(Behavior),
    Dynamic(Handler),
}

struct Shared {
    source: Mutex<Source>,
    hits: AtomicUsize,
    /// `/cdn-cgi/access/get-identity`: its configuration, key set and counters.
    identity: IdentityState,
    /// How each accepted socket is turned into a connection (TLS), if it is.
    wrap: Option<Wrap>,
    conns: Conns,
}

impl Served for Shared {
    fn conns(&self) -> &Conns {
        &self.conns
    }
}

impl Shared {
    fn behavior(&self) -> Behavior {
        let handler = match &*lock(&self.source) {
            Source::Fixed(b) => return b.clone(),
            Source::Dynamic(h) => h.clone(),
        };
        handler()
    }

    fn stopping(&self) -> bool {
        self.conns.stopping()
    }
}

/// A loopback HTTP/1.1 server answering every path (and method) with the
/// current [`Behavior`], one thread per connection, `Connection: close`.
/// Dropping it stops the accept loop and every connection thread promptly.
///
/// The exception is `GET /cdn-cgi/access/get-identity` (any query string):
/// Cloudflare's get-identity, answered as set with
/// [`set_identity`](Self::set_identity) ([`IdentityConfig`]), whatever the
/// [`Behavior`]. Tokens are verified with the key set most recently served
/// as certs JSON with a `keys` array (a [`Behavior::Json`] or
/// [`Behavior::Slow`] body, given at start, to [`set`](Self::set), or
/// returned by the dynamic handler): setting a fault keeps the keys.
pub struct CertsServer {
    listener: Listener<Shared>,
}

impl CertsServer {
    /// Starts on `127.0.0.1:0`. Panics if it cannot bind.
    #[allow(clippy::expect_used, reason = "a fixture: panics if it cannot start")]
    pub fn start(initial: Behavior) -> CertsServer {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Source::Fixed(initial), None)
            .expect("bind 127.0.0.1:0")
    }

    /// Starts on `127.0.0.1:0` serving `Json(certs_json(keys))`.
    pub fn start_with_keys(keys: &[&KeyPair]) -> CertsServer {
        Self::start(Behavior::Json(certs_json(keys)))
    }

    /// Starts on `listen`, asking `handler` for the behavior of each request
    /// (the CLI's `serve` uses it to re-read key files per request).
    /// [`CertsServer::set`] replaces the handler with a fixed behavior.
    pub fn start_dynamic(
        listen: SocketAddr,
        handler: impl Fn() -> Behavior + Send + Sync + 'static,
    ) -> io::Result<CertsServer> {
        Self::start_on(listen, Source::Dynamic(Arc::new(handler)), None)
    }

    /// Starts on `127.0.0.1:0` with `initial`, serving each accepted
    /// connection through `wrap` (the TLS server).
    pub(crate) fn start_wrapped(initial: Behavior, wrap: Wrap) -> io::Result<CertsServer> {
        Self::start_on(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Source::Fixed(initial),
            Some(wrap),
        )
    }

    fn start_on(listen: SocketAddr, source: Source, wrap: Option<Wrap>) -> io::Result<CertsServer> {
        let identity = IdentityState::default();
        if let Source::Fixed(b) = &source {
            identity.learn_keys(b);
        }
        let shared = Arc::new(Shared {
            source: Mutex::new(source),
            hits: AtomicUsize::new(0),
            identity,
            wrap,
            conns: Conns::default(),
        });
        let listener = Listener::start(
            TcpListener::bind(listen)?,
            "cf-access-dev",
            MAX_CONNECTIONS,
            shared,
            |stream, shared| {
                let _ = serve(stream, shared);
            },
        )?;
        Ok(CertsServer { listener })
    }

    fn shared(&self) -> &Shared {
        self.listener.shared()
    }

    /// `http://127.0.0.1:PORT/cdn-cgi/access/certs`
    pub fn url(&self) -> String {
        format!("http://{}/cdn-cgi/access/certs", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// Takes effect for the next request.
    pub fn set(&self, b: Behavior) {
        self.shared().identity.learn_keys(&b);
        *lock(&self.shared().source) = Source::Fixed(b);
    }

    /// `set(Behavior::Json(certs_json(keys)))`.
    pub fn set_keys(&self, keys: &[&KeyPair]) {
        self.set(Behavior::Json(certs_json(keys)));
    }

    /// Requests received so far (complete request heads, whatever the answer;
    /// for [`Behavior::Garbage`], connections that sent anything), except
    /// get-identity requests (see [`identity_hits`](Self::identity_hits)).
    pub fn hits(&self) -> usize {
        self.shared().hits.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/cdn-cgi/access/get-identity`
    pub fn identity_url(&self) -> String {
        format!("http://{}{}", self.addr(), identity::IDENTITY_PATH)
    }

    /// What get-identity answers from the next request on.
    pub fn set_identity(&self, config: IdentityConfig) {
        self.shared().identity.set_config(config);
    }

    /// The current get-identity configuration (to change one field of it).
    pub fn identity(&self) -> IdentityConfig {
        self.shared().identity.config()
    }

    /// get-identity requests received so far (complete request heads,
    /// whatever the answer).
    pub fn identity_hits(&self) -> usize {
        self.shared().identity.hits()
    }

    /// get-identity requests received so far whose `CF_Authorization` token
    /// verified and has this `email` (exactly), whatever the answer.
    pub fn identity_hits_for(&self, email: &str) -> usize {
        self.shared().identity.hits_for(email)
    }

    /// Starts on `127.0.0.1:0` answering every request with
    /// `Redirect { location, delay_ms: 0, status }`.
    pub fn redirect_to(location: impl Into<String>, status: u16) -> CertsServer {
        CertsServer::start(Behavior::Redirect { location: location.into(), delay_ms: 0, status })
    }

    /// A chain of `hops` redirecting servers ending at `target`:
    /// `chain[0]` redirects to `chain[1].url()`, ..., and the last one to
    /// `target` (any URL, e.g. another server's `url()`). Start the client
    /// at `chain[0].url()`; `hops == 0` gives an empty chain. Keep the
    /// vector alive while it is used. For a loop, [`set`](Self::set) the
    /// target server to redirect back to `chain[0].url()`.
    pub fn redirect_chain(hops: usize, target: &str, status: u16) -> Vec<CertsServer> {
        let mut chain: Vec<CertsServer> = Vec::with_capacity(hops);
        let mut next = target.to_string();
        for _ in 0..hops {
            let srv = CertsServer::redirect_to(next, status);
            next = srv.url();
            chain.push(srv);
        }
        chain.reverse();
        chain
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Appends what the client sends next to `head`. `false` if the client
/// went away, took until `deadline`, or the server is stopping.
fn read_more(
    stream: &mut dyn Conn,
    shared: &Shared,
    deadline: Instant,
    head: &mut Vec<u8>,
) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        if shared.stopping() || Instant::now() >= deadline {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                return true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
}

/// Reads on from `head` (what has arrived so far) up to and including
/// `\r\n\r\n`. `Ok(None)` if the client went away, took until `deadline`,
/// or the server is stopping; `Err` on an oversized head.
fn read_head(
    stream: &mut dyn Conn,
    shared: &Shared,
    deadline: Instant,
    mut head: Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    let mut from = 0;
    loop {
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        from = head.len().saturating_sub(3);
        if !read_more(stream, shared, deadline, &mut head) {
            return Ok(None);
        }
    }
}

pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub(crate) fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

pub(crate) fn content_type_for(body: &str) -> &'static str {
    match body.trim_start().as_bytes().first() {
        Some(b'{') | Some(b'[') => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// Sleeps `d`, waking early (returning false) if the server stops.
fn sleep_unless_stopped(d: Duration, shared: &Shared) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stopping() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        thread::sleep(TICK.min(end - now));
    }
}

/// Serves one accepted connection, through `wrap` if given. The request
/// head (and the `wrap` step before it) must arrive within [`HEAD_TIMEOUT`].
fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    match &shared.wrap {
        None => handle(&mut { stream }, shared, deadline),
        Some(wrap) => match wrap(stream, deadline, &|| shared.stopping()) {
            Some(mut conn) => handle(&mut *conn, shared, deadline),
            None => Ok(()),
        },
    }
}

/// Serves one request. The behavior is chosen when the client's first bytes
/// arrive: [`Behavior::Garbage`] answers them at once, every other behavior
/// waits for the complete request head.
fn handle(stream: &mut dyn Conn, shared: &Shared, deadline: Instant) -> io::Result<()> {
    let mut first = Vec::new();
    if !read_more(stream, shared, deadline, &mut first) {
        return Ok(());
    }
    let behavior = shared.behavior();
    if let Behavior::Garbage(bytes) = &behavior {
        if !identity_ahead(stream, shared, deadline, &mut first) {
            shared.hits.fetch_add(1, Ordering::SeqCst);
            stream.write_all(bytes)?;
            stream.flush()?;
            return close(stream);
        }
    }
    let head = match read_head(stream, shared, deadline, first) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(()),
        Err(_) => {
            let _ = stream.write_all(&response(431, "text/plain", "request head too large\n"));
            return close(stream);
        }
    };
    if identity::is_identity_request(&head) {
        return answer_identity(stream, shared, &head, &behavior);
    }
    shared.hits.fetch_add(1, Ordering::SeqCst);

    let out = match behavior {
        Behavior::Json(body) => response(200, "application/json", &body),
        Behavior::Status(code, body) => response(code, content_type_for(&body), &body),
        Behavior::Slow { body, delay_ms } => {
            if !sleep_unless_stopped(Duration::from_millis(delay_ms), shared) {
                return Ok(());
            }
            response(200, "application/json", &body)
        }
        // Garbage was answered above, before the request head.
        Behavior::Raw(bytes) | Behavior::Garbage(bytes) => bytes,
        Behavior::Hang => {
            hold(stream, shared);
            return Ok(());
        }
        Behavior::Redirect { location, delay_ms, status } => {
            if !sleep_unless_stopped(Duration::from_millis(delay_ms), shared) {
                return Ok(());
            }
            format!(
                "HTTP/1.1 {status} {}\r\nLocation: {location}\r\nContent-Length: 0\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                reason(status)
            )
            .into_bytes()
        }
        Behavior::Trickle { head, every_ms } => {
            stream.write_all(&head)?;
            stream.flush()?;
            trickle(stream, shared, Duration::from_millis(every_ms.max(1)));
            return Ok(());
        }
        Behavior::Stall(bytes) => {
            stream.write_all(&bytes)?;
            stream.flush()?;
            hold(stream, shared);
            return Ok(());
        }
    };
    stream.write_all(&out)?;
    stream.flush()?;
    close(stream)
}

/// Whether the connection starting with `first` asks for get-identity,
/// reading on (into `first`) until that can be told. `false` if the client
/// went away, took until `deadline`, or the server is stopping first.
fn identity_ahead(
    stream: &mut dyn Conn,
    shared: &Shared,
    deadline: Instant,
    first: &mut Vec<u8>,
) -> bool {
    loop {
        match identity::starts_identity_request(first) {
            Some(yes) => return yes,
            None if !read_more(stream, shared, deadline, first) => return false,
            None => {}
        }
    }
}

/// Answers a get-identity request (its complete `head`); `behavior` is the
/// certs behavior of the moment (a dynamic handler's answer brings its keys).
fn answer_identity(
    stream: &mut dyn Conn,
    shared: &Shared,
    head: &[u8],
    behavior: &Behavior,
) -> io::Result<()> {
    shared.identity.learn_keys(behavior);
    let (delay, reply) = shared.identity.plan(head, crate::now());
    if !sleep_unless_stopped(delay, shared) {
        return Ok(());
    }
    match reply {
        Reply::Bytes(out) => {
            stream.write_all(&out)?;
            stream.flush()?;
            close(stream)
        }
        Reply::Hang => {
            hold(stream, shared);
            Ok(())
        }
        Reply::Close => close(stream),
    }
}

/// Keeps the connection open without answering until the client closes it
/// or the server stops.
fn hold(stream: &mut dyn Conn, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stopping() {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Writes a space every `every` until the client closes the connection
/// (or resets it) or the server stops. Reads in between, to notice a close
/// even before a write fails.
fn trickle(stream: &mut dyn Conn, shared: &Shared, every: Duration) {
    let mut buf = [0u8; 4096];
    let mut due = Instant::now() + every;
    while !shared.stopping() {
        let now = Instant::now();
        if now >= due {
            if stream.write_all(b" ").and_then(|()| stream.flush()).is_err() {
                return;
            }
            due += every;
            if due < now {
                // Fell behind (a slow write): don't burst to catch up.
                due = now + every;
            }
            continue;
        }
        // A zero read timeout is an error: wait at least 1 ms.
        let wait = (due - now).min(TICK).max(Duration::from_millis(1));
        if stream.tcp().set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Half-closes, then briefly drains what the client still sends so the
/// close doesn't turn into a RST that could destroy the response in flight.
pub(crate) fn finish(mut stream: impl Conn) -> io::Result<()> {
    close(&mut stream)
}

/// [`finish`] for a borrowed connection.
fn close(stream: &mut dyn Conn) -> io::Result<()> {
    stream.close_write()?;
    let end = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal client: sends a GET, reads to EOF, returns (status, body).
    fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if !head.contains("Content-Length: 100") {
            // Everything but the Raw test below.
            assert!(head.contains("Connection: close"), "{head}");
        }
        Ok((code, body.to_string()))
    }

    #[test]
    fn serves_json_and_changes_behavior() {
        let srv = CertsServer::start(Behavior::Json(r#"{"keys":[]}"#.into()));
        assert!(srv.url().starts_with("http://127.0.0.1:"));
        assert!(srv.url().ends_with("/cdn-cgi/access/certs"));
        assert_eq!(
            get(srv.addr(), "/cdn-cgi/access/certs").unwrap(),
            (200, r#"{"keys":[]}"#.into())
        );
        assert_eq!(get(srv.addr(), "/anything").unwrap().0, 200);
        srv.set(Behavior::Status(503, "down".into()));
        assert_eq!(get(srv.addr(), "/").unwrap(), (503, "down".into()));
        srv.set(Behavior::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ke".to_vec()));
        assert_eq!(get(srv.addr(), "/").unwrap(), (200, "{\"ke".into()));
        srv.set(Behavior::Slow { body: "{}".into(), delay_ms: 100 });
        let t = Instant::now();
        assert_eq!(get(srv.addr(), "/").unwrap(), (200, "{}".into()));
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(srv.hits(), 5);
    }

    #[test]
    fn concurrent_and_sequential_connections() {
        let srv = CertsServer::start(Behavior::Json("{}".into()));
        for _ in 0..20 {
            assert_eq!(get(srv.addr(), "/").unwrap().0, 200);
        }
        let addr = srv.addr();
        let threads: Vec<_> =
            (0..16).map(|_| thread::spawn(move || get(addr, "/x").unwrap().0)).collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 200);
        }
        assert_eq!(srv.hits(), 36);
    }

    #[test]
    fn client_errors_do_not_count_or_break() {
        let srv = CertsServer::start(Behavior::Json("{}".into()));
        // Connect and leave without a request; send garbage then close.
        drop(TcpStream::connect(srv.addr()).unwrap());
        {
            let mut s = TcpStream::connect(srv.addr()).unwrap();
            let _ = s.write_all(b"GET / HTT");
        }
        // Oversized head gets a 431.
        {
            let mut s = TcpStream::connect(srv.addr()).unwrap();
            let big = vec![b'a'; MAX_HEAD + 10];
            let _ = s.write_all(&big);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
        }
        assert_eq!(get(srv.addr(), "/").unwrap().0, 200);
        assert_eq!(srv.hits(), 1);
    }

    #[test]
    fn hang_does_not_block_drop() {
        let srv = CertsServer::start(Behavior::Hang);
        let addr = srv.addr();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            clients.push(s);
        }
        // Wait until the requests have been read.
        let t = Instant::now();
        while srv.hits() < 3 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(srv.hits(), 3);
        // No answer arrives.
        clients[0].set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 16];
        assert!(clients[0].read(&mut buf).is_err());

        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The held sockets are closed by the server.
        clients[1].set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert!(matches!(clients[1].read(&mut buf), Ok(0) | Err(_)));
    }

    /// Sends one request, waits (up to 5 s) until the server has it, then drops the server:
    /// the client's socket and how long the drop took.
    fn drop_while_serving(srv: CertsServer) -> (TcpStream, Duration) {
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let t = Instant::now();
        while srv.hits() < 1 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        drop(srv);
        (s, t.elapsed())
    }

    #[test]
    fn slow_does_not_block_drop() {
        let srv = CertsServer::start(Behavior::Slow { body: "{}".into(), delay_ms: 60_000 });
        let (_s, took) = drop_while_serving(srv);
        assert!(took < Duration::from_secs(2));
    }

    /// Sends a GET, reads to EOF, returns (head, body).
    fn get_raw(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        (head.to_string(), body.to_string())
    }

    /// `http://HOST:PORT/PATH` -> (addr, `/PATH`).
    fn split_url(url: &str) -> (SocketAddr, String) {
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        (authority.parse().unwrap(), format!("/{path}"))
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn redirect_answers_status_and_location() {
        let srv = CertsServer::start(Behavior::Redirect {
            location: "http://127.0.0.1:9/next?x=1".into(),
            delay_ms: 0,
            status: 307,
        });
        let (head, body) = get_raw(srv.addr(), "/cdn-cgi/access/certs");
        assert!(head.starts_with("HTTP/1.1 307 Temporary Redirect\r\n"), "{head}");
        assert_eq!(header(&head, "Location"), Some("http://127.0.0.1:9/next?x=1"));
        assert_eq!(header(&head, "Content-Length"), Some("0"));
        assert_eq!(header(&head, "Connection"), Some("close"));
        assert_eq!(body, "");

        srv.set(Behavior::Redirect { location: "/relative".into(), delay_ms: 150, status: 301 });
        let t = Instant::now();
        let (head, _) = get_raw(srv.addr(), "/");
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{head}");
        assert_eq!(header(&head, "Location"), Some("/relative"));

        srv.set(Behavior::redirect("http://127.0.0.1:9/"));
        let (head, _) = get_raw(srv.addr(), "/");
        assert!(head.starts_with("HTTP/1.1 302 Found\r\n"), "{head}");
        assert_eq!(srv.hits(), 3);
        assert_eq!(
            Behavior::redirect("x"),
            Behavior::Redirect { location: "x".into(), delay_ms: 0, status: 302 }
        );
    }

    #[test]
    fn redirect_chain_leads_to_target() {
        let target = CertsServer::start(Behavior::Json(r#"{"keys":[]}"#.into()));
        let chain = CertsServer::redirect_chain(3, &target.url(), 308);
        assert_eq!(chain.len(), 3);
        assert!(CertsServer::redirect_chain(0, &target.url(), 302).is_empty());
        let mut url = chain[0].url();
        for _ in 0..3 {
            let (addr, path) = split_url(&url);
            let (head, _) = get_raw(addr, &path);
            assert!(head.starts_with("HTTP/1.1 308 "), "{head}");
            url = header(&head, "Location").unwrap().to_string();
        }
        assert_eq!(url, target.url());
        let (addr, path) = split_url(&url);
        let (head, body) = get_raw(addr, &path);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, r#"{"keys":[]}"#);
        for srv in &chain {
            assert_eq!(srv.hits(), 1);
        }
        assert_eq!(target.hits(), 1);
    }

    #[test]
    fn redirect_delay_does_not_block_drop() {
        let srv = CertsServer::start(Behavior::Redirect {
            location: "/".into(),
            delay_ms: 60_000,
            status: 302,
        });
        let (mut s, took) = drop_while_serving(srv);
        assert!(took < Duration::from_secs(2), "{took:?}");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    const TRICKLE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{";

    /// Connects, sends a GET, reads the trickle head plus `spaces` spaces.
    fn trickle_client(addr: SocketAddr, spaces: usize) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let want = TRICKLE_HEAD.len() + spaces;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < want {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..TRICKLE_HEAD.len()], TRICKLE_HEAD);
        assert!(got[TRICKLE_HEAD.len()..].iter().all(|&b| b == b' '));
        s
    }

    #[test]
    fn trickle_is_stopped_promptly_by_drop() {
        let srv =
            CertsServer::start(Behavior::Trickle { head: TRICKLE_HEAD.to_vec(), every_ms: 20 });
        let t = Instant::now();
        let mut s = trickle_client(srv.addr(), 3);
        // Three spaces 20 ms apart: at least ~40 ms.
        assert!(t.elapsed() >= Duration::from_millis(40), "{:?}", t.elapsed());

        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Whatever spaces were in flight, then EOF (or a reset), not a timeout.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => assert!(buf[..n].iter().all(|&b| b == b' ')),
                Err(e) => {
                    assert!(!is_timeout(&e), "connection still open after drop: {e}");
                    break;
                }
            }
        }
    }

    #[test]
    fn trickle_ends_when_the_client_closes() {
        let srv =
            CertsServer::start(Behavior::Trickle { head: TRICKLE_HEAD.to_vec(), every_ms: 5 });
        let s = trickle_client(srv.addr(), 2);
        assert_eq!(srv.shared().conns.live(), 1);
        drop(s);
        let t = Instant::now();
        while srv.shared().conns.live() > 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "trickle still running");
            thread::sleep(Duration::from_millis(5));
        }
        // Still serving.
        let _s = trickle_client(srv.addr(), 1);
    }

    #[test]
    fn stall_writes_its_bytes_then_holds_the_connection() {
        let stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n{\"keys\":[{".to_vec();
        let srv = CertsServer::start(Behavior::Stall(stalled.clone()));
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = vec![0u8; stalled.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, stalled);
        assert_eq!(srv.hits(), 1);
        // Nothing more, and no close.
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).expect_err("the connection is held open");
        assert!(is_timeout(&err), "{err}");

        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn garbage_answers_the_first_bytes_without_a_request_head() {
        let answer =
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
        let srv = CertsServer::start(Behavior::Garbage(answer.clone()));
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The start of a TLS ClientHello: never a complete HTTP head.
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert_eq!(out, answer);
        assert_eq!(srv.hits(), 1);
        // A connection that sends nothing gets nothing and is not counted.
        drop(TcpStream::connect(srv.addr()).unwrap());
        assert_eq!(get(srv.addr(), "/").unwrap().0, 400);
        assert_eq!(srv.hits(), 2);
    }

    #[test]
    fn dynamic_handler_and_keys() {
        let counter = Arc::new(AtomicUsize::new(0));
        let c = counter.clone();
        let srv = CertsServer::start_dynamic("127.0.0.1:0".parse().unwrap(), move || {
            Behavior::Json(format!("{}", c.fetch_add(1, Ordering::SeqCst)))
        })
        .unwrap();
        assert_eq!(get(srv.addr(), "/").unwrap().1, "0");
        assert_eq!(get(srv.addr(), "/").unwrap().1, "1");
        srv.set(Behavior::Json("fixed".into()));
        assert_eq!(get(srv.addr(), "/").unwrap().1, "fixed");
        assert_eq!(counter.load(Ordering::SeqCst), 2);
    }
}
