//! A loopback HTTP forward proxy that only tunnels (`CONNECT`), and only to
//! loopback targets: for testing that a client goes through a proxy without
//! ever letting it reach the network.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::listener::{lock, Conns, Listener, Served};
use crate::server::{finish, is_timeout, reason};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Granularity at which blocked threads notice a shutdown.
const TICK: Duration = Duration::from_millis(50);
/// Client connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// Connecting to a (loopback) target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    /// CONNECTs that were tunneled.
    connects: AtomicUsize,
    /// Connection attempts to targets (to check refusals never dial).
    dials: AtomicUsize,
    /// The request target of every CONNECT received, refused or not.
    targets: Mutex<Vec<String>>,
    /// Every live socket, clients' and targets'.
    conns: Conns,
}

impl Served for Shared {
    fn conns(&self) -> &Conns {
        &self.conns
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.conns.stopping()
    }
}

/// An HTTP forward proxy on `127.0.0.1:0` that supports `CONNECT host:port`
/// only, to loopback targets only (`127.0.0.0/8`, `::1`, or the literal
/// name `localhost`, which is taken as `127.0.0.1` without any lookup):
///
/// * other IPs and host names get `403` without any connection attempt
///   (names are never resolved);
/// * a malformed target gets `400`, an unreachable one `502`;
/// * any other method (including absolute-form `GET http://...`) gets `405`.
///
/// A tunnel relays bytes both ways (a half-close is passed on) until both
/// sides have closed, or either resets. Bytes the client sends right after
/// its CONNECT head are forwarded too. Dropping the proxy shuts every
/// socket down and joins every thread promptly.
pub struct ConnectProxy {
    listener: Listener<Shared>,
}

impl ConnectProxy {
    /// Starts on `127.0.0.1:0`. Panics if it cannot bind.
    #[allow(clippy::expect_used, reason = "a fixture: panics if it cannot start")]
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind 127.0.0.1:0");
        let listener = Listener::start(
            listener,
            "cf-access-dev-proxy",
            MAX_CONNECTIONS,
            Arc::new(Shared::default()),
            handle,
        )
        .expect("start the proxy's accept thread");
        ConnectProxy { listener }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// CONNECTs tunneled so far (target reached, `200` sent).
    pub fn connects(&self) -> usize {
        self.listener.shared().connects.load(Ordering::SeqCst)
    }

    /// The `host:port` of every CONNECT received so far, in order, as the
    /// client wrote it, including refused and failed ones.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.listener.shared().targets).clone()
    }
}

/// Reads up to and including `\r\n\r\n`: `(head, bytes after it)`.
/// `Ok(None)` if the client went away, took too long, or the proxy is
/// stopping; `Err` on an oversized head.
fn read_head(stream: &mut TcpStream, shared: &Shared) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if shared.stopping() || Instant::now() >= deadline {
            return Ok(None);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = head.split_off(from + i + 4);
                    return Ok(Some((head, rest)));
                }
                if head.len() > MAX_HEAD {
                    return Err(io::Error::other("request head too large"));
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Answers `code` with a short text body and closes.
fn refuse(mut client: TcpStream, code: u16, extra_headers: &str, why: &str) {
    let body = format!("{code} {}: {why}\n", reason(code));
    let out = format!(
        "HTTP/1.1 {code} {}\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    );
    if client.write_all(out.as_bytes()).is_ok() {
        let _ = finish(client);
    }
}

/// `host:port` (`[v6]:port` for IPv6) to a loopback address, or the status
/// to refuse with: 400 for a malformed target, 403 for anything but
/// loopback (host names other than `localhost` are never resolved).
fn parse_target(target: &str) -> Result<SocketAddr, (u16, &'static str)> {
    const MALFORMED: (u16, &str) = (400, "CONNECT target must be host:port");
    const REFUSED: (u16, &str) = (403, "only loopback targets are allowed");
    let (host, port) = match target.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or(MALFORMED)?,
        None => target.rsplit_once(':').ok_or(MALFORMED)?,
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MALFORMED);
    }
    let port: u16 = port.parse().map_err(|_| MALFORMED)?;
    if port == 0 {
        return Err(MALFORMED);
    }
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse::<IpAddr>().map_err(|_| REFUSED)?.to_canonical()
    };
    if !ip.is_loopback() {
        return Err(REFUSED);
    }
    Ok(SocketAddr::new(ip, port))
}

/// Serves one client (its socket is registered by the accept loop).
fn handle(mut client: TcpStream, shared: &Shared) {
    if client.set_read_timeout(Some(TICK)).is_err() || client.set_write_timeout(Some(TICK)).is_err()
    {
        return;
    }
    let _ = client.set_nodelay(true);

    let (head, early) = match read_head(&mut client, shared) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(_) => return refuse(client, 431, "", "request head too large"),
    };
    let head = String::from_utf8_lossy(&head);
    let line = head.split("\r\n").next().unwrap_or("");
    let parts: Vec<&str> = line.split_ascii_whitespace().collect();
    let [method, target, version] = parts[..] else {
        return refuse(client, 400, "", "malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return refuse(client, 400, "", "HTTP/1.x only");
    }
    if method != "CONNECT" {
        return refuse(client, 405, "Allow: CONNECT\r\n", "this proxy only supports CONNECT");
    }
    lock(&shared.targets).push(target.to_string());
    let addr = match parse_target(target) {
        Ok(a) => a,
        Err((code, why)) => return refuse(client, code, "", why),
    };

    shared.dials.fetch_add(1, Ordering::SeqCst);
    let upstream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return refuse(client, 502, "", &format!("cannot connect to {addr}: {e}")),
    };
    let Some(_upstream_reg) = shared.conns.register(&upstream) else {
        return;
    };
    if upstream.set_read_timeout(Some(TICK)).is_err()
        || upstream.set_write_timeout(Some(TICK)).is_err()
    {
        return;
    }
    let _ = upstream.set_nodelay(true);

    // Counted before answering, so a client that got the 200 sees it.
    shared.connects.fetch_add(1, Ordering::SeqCst);
    if write_all(&client, b"HTTP/1.1 200 Connection established\r\n\r\n", shared).is_err()
        || write_all(&upstream, &early, shared).is_err()
    {
        shutdown_both(&client, &upstream);
        return;
    }

    thread::scope(|scope| {
        let down = thread::Builder::new()
            .name("cf-access-dev-proxy-pump".into())
            .spawn_scoped(scope, || pump(&upstream, &client, shared));
        if down.is_err() {
            shutdown_both(&client, &upstream);
            return;
        }
        pump(&client, &upstream, shared);
        // The scope joins `down`.
    });
}

fn shutdown_both(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Writes all of `buf`, retrying write timeouts until the proxy stops.
fn write_all(mut to: &TcpStream, mut buf: &[u8], shared: &Shared) -> io::Result<()> {
    while !buf.is_empty() {
        if shared.stopping() {
            return Err(io::Error::other("proxy stopping"));
        }
        match to.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), either
/// side fails (then shuts both down) or the proxy stops.
fn pump(mut from: &TcpStream, to: &TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stopping() {
            shutdown_both(from, to);
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if write_all(to, &buf[..n], shared).is_err() {
                    shutdown_both(from, to);
                    return;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                shutdown_both(from, to);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{certs_json, Behavior, CertsServer};

    /// Reads up to the end of a response head; returns it and what followed.
    fn read_response_head(s: &mut TcpStream) -> (String, Vec<u8>) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = got.split_off(i + 4);
                return (String::from_utf8(got).unwrap(), rest);
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "EOF before the end of the head: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    }

    fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    const ESTABLISHED: &str = "HTTP/1.1 200 Connection established\r\n\r\n";

    #[test]
    fn tunnels_to_a_loopback_certs_server() {
        let json = certs_json(&[]);
        let certs = CertsServer::start(Behavior::Json(json.clone()));
        let proxy = ConnectProxy::start();
        assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
        assert!(proxy.url().starts_with("http://127.0.0.1:"));
        let target = certs.addr().to_string();

        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let (head, rest) = read_response_head(&mut s);
        assert_eq!(head, ESTABLISHED);
        assert!(rest.is_empty());
        assert_eq!(proxy.connects(), 1);
        assert_eq!(proxy.targets(), [target.as_str()]);

        write!(s, "GET /cdn-cgi/access/certs HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let answer = read_all(&mut s);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{json}")), "{answer}");
        assert_eq!(certs.hits(), 1);
        drop(s);

        // Bytes sent right behind the CONNECT head go through too; and
        // `localhost` is taken as 127.0.0.1.
        let target2 = format!("localhost:{}", certs.addr().port());
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        write!(s, "CONNECT {target2} HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let answer = read_all(&mut s);
        assert!(answer.starts_with(ESTABLISHED), "{answer}");
        assert!(answer[ESTABLISHED.len()..].starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with(&json));
        assert_eq!(proxy.connects(), 2);
        assert_eq!(proxy.targets(), [target, target2]);
        drop(s);

        // Finished tunnels release their sockets.
        let t = Instant::now();
        while proxy.listener.shared().conns.live() > 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "tunnel still open");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn other_methods_get_405() {
        let proxy = ConnectProxy::start();
        for req in [
            "GET /cdn-cgi/access/certs HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
            "connect 127.0.0.1:1 HTTP/1.1\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let (head, _) = read_response_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{head}");
            assert!(head.contains("\r\nAllow: CONNECT\r\n"), "{head}");
            assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
            read_all(&mut s); // then the proxy closes
        }
        assert_eq!(proxy.connects(), 0);
        assert!(proxy.targets().is_empty());
        assert_eq!(proxy.listener.shared().dials.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn non_loopback_targets_are_refused_without_dialing() {
        let proxy = ConnectProxy::start();
        let cases = [
            ("10.0.0.1:443", 403),
            ("example.com:443", 403),
            ("[2001:db8::1]:443", 403),
            ("[::ffff:10.0.0.1]:443", 403),
            ("0.0.0.0:443", 403),
            ("127.0.0.1", 400),
            ("127.0.0.1:0", 400),
            ("127.0.0.1:99999", 400),
            (":443", 400),
        ];
        for (target, code) in cases {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            let t = Instant::now();
            write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
            let (head, _) = read_response_head(&mut s);
            assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{target}: {head}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
        assert_eq!(proxy.listener.shared().dials.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.connects(), 0);
        let targets: Vec<&str> = cases.iter().map(|c| c.0).collect();
        assert_eq!(proxy.targets(), targets);
        // A malformed request line is a 400 too, and no CONNECT.
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(b"CONNECT\r\n\r\n").unwrap();
        assert!(read_response_head(&mut s).0.starts_with("HTTP/1.1 400 "));
        assert_eq!(proxy.targets().len(), cases.len());
    }

    #[test]
    fn unreachable_loopback_target_is_502() {
        // A port that was free a moment ago.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = ConnectProxy::start();
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        write!(s, "CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").unwrap();
        let (head, _) = read_response_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
        assert_eq!(proxy.connects(), 0);
        assert_eq!(proxy.listener.shared().dials.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn drop_closes_open_tunnels_promptly() {
        let certs = CertsServer::start(Behavior::Hang);
        let proxy = ConnectProxy::start();
        let mut tunnels = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            write!(s, "CONNECT {} HTTP/1.1\r\n\r\n", certs.addr()).unwrap();
            assert_eq!(read_response_head(&mut s).0, ESTABLISHED);
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            tunnels.push(s);
        }
        // Also a client that never finishes its head.
        let mut idle = TcpStream::connect(proxy.addr()).unwrap();
        idle.write_all(b"CONN").unwrap();
        let t = Instant::now();
        while certs.hits() < 3 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(certs.hits(), 3);

        let t = Instant::now();
        drop(proxy);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let mut buf = [0u8; 16];
        for s in tunnels.iter_mut().chain([&mut idle]) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e) => assert!(!is_timeout(&e), "still open: {e}"),
                Ok(n) => panic!("unexpected {n} bytes"),
            }
        }
    }

    #[test]
    fn client_misbehaviour_does_not_break_the_proxy() {
        let certs = CertsServer::start(Behavior::Json("{}".into()));
        let proxy = ConnectProxy::start();
        drop(TcpStream::connect(proxy.addr()).unwrap());
        {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            let _ = s.write_all(b"CONNECT 127.0.0.1:1 HT");
        }
        {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            let _ = s.write_all(&vec![b'a'; MAX_HEAD + 10]);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "));
        }
        {
            // Binary garbage with a head terminator.
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            s.write_all(b"\xff\xfe \x00 \x80\r\n\r\n").unwrap();
            assert!(read_response_head(&mut s).0.starts_with("HTTP/1.1 "));
        }
        {
            // A client that resets its tunnel right away.
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            write!(s, "CONNECT {} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", certs.addr()).unwrap();
        }
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        write!(s, "CONNECT {} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", certs.addr()).unwrap();
        let answer = read_all(&mut s);
        assert!(answer.starts_with(ESTABLISHED), "{answer}");
        assert!(answer.ends_with("\r\n\r\n{}"), "{answer}");
    }
}
