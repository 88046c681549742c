//! An HTTPS certs endpoint on loopback with a throwaway CA: the CA and the
//! server certificate are made by the `openssl` command-line tool
//! (`openssl req`/`x509`), the server is [`CertsServer`]'s, with TLS done
//! in-process by `rustls` (ring provider).

use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::server::{is_timeout, Conn, Wrap};
use crate::{certs_json, random_hex, Behavior, CertsServer, KeyPair};

/// Where the certs JSON is expected (every path gets the same answer).
const CERTS_PATH: &str = "cdn-cgi/access/certs";

/// Minimal `req` configuration, so the system's openssl.cnf (prompts,
/// default extensions) does not matter.
const REQ_CONFIG: &str = "\
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused
";

/// Extensions of the server certificate (a v3 end-entity certificate that
/// webpki accepts for `https://127.0.0.1`).
const SERVER_EXT: &str = "\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let path = base.join(format!(
                "cf-access-dev-tls-{}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                random_hex(4)
            ));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("TlsCertsServer: cannot create {}: {e}", path.display()),
            }
        }
        panic!("TlsCertsServer: cannot create a temp dir under {}", base.display());
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An HTTPS server on `127.0.0.1:0` with [`CertsServer`]'s behaviors
/// ([`Behavior`]: JSON, errors, hangs, slow or raw answers, redirects,
/// never-ending answers), its URL
/// `https://127.0.0.1:PORT/cdn-cgi/access/certs`, and a certificate for
/// `IP:127.0.0.1` issued by a CA made for this server alone (see
/// [`ca_pem_path`](Self::ca_pem_path)): clients trust it only when given
/// that CA.
///
/// TLS 1.2 and 1.3 (rustls, ring provider, no ALPN: HTTP/1.1). The
/// handshake happens in the connection's thread and, with the request head,
/// must be done within the same 5 s as for [`CertsServer`]; a failed
/// handshake just closes the connection and is not counted in
/// [`hits`](Self::hits). Answers end with `close_notify`, then the TCP
/// close.
///
/// The CA and certificate are made with the `openssl` command-line tool
/// (panics with a clear message without it) in a temporary directory.
/// Dropping the server stops it (promptly, even with connections stuck in a
/// handshake or in [`Behavior::Hang`]) and removes the directory.
pub struct TlsCertsServer {
    server: CertsServer,
    ca_pem: PathBuf,
    // Last, so it is removed after the server has stopped.
    dir: TempDir,
}

impl TlsCertsServer {
    /// Serves `Json(certs_json(keys))`. Panics on any failure.
    pub fn start(keys: &[&KeyPair]) -> TlsCertsServer {
        Self::start_with(Behavior::Json(certs_json(keys)))
    }

    /// Makes the CA and server certificate and starts serving `behavior`;
    /// returns once it accepts connections. Panics on any failure.
    #[allow(clippy::expect_used, reason = "a fixture: panics on a broken temp dir")]
    pub fn start_with(behavior: Behavior) -> TlsCertsServer {
        let dir = TempDir::new();
        let d = dir.0.clone();
        fs::write(d.join("req.cnf"), REQ_CONFIG).expect("write req.cnf");
        fs::write(d.join("server.ext"), SERVER_EXT).expect("write server.ext");

        #[rustfmt::skip]
        openssl(&d, &[
            "req", "-config", "req.cnf", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-days", "2", "-sha256", "-subj", "/CN=cf-access-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        ]);
        #[rustfmt::skip]
        openssl(&d, &[
            "req", "-config", "req.cnf", "-new", "-newkey", "rsa:2048", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr",
        ]);
        // Random positive serial (webpki doesn't care, browsers would).
        let serial = format!("0x1{}", random_hex(15));
        #[rustfmt::skip]
        openssl(&d, &[
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", &serial, "-days", "2", "-sha256",
            "-extfile", "server.ext", "-out", "server.pem",
        ]);

        let config = server_config(&d.join("server.pem"), &d.join("server.key"));
        let wrap: Wrap =
            Arc::new(move |tcp, deadline, stopping| handshake(&config, tcp, deadline, stopping));
        let server = CertsServer::start_wrapped(behavior, wrap)
            .unwrap_or_else(|e| panic!("TlsCertsServer: cannot listen on 127.0.0.1:0: {e}"));
        TlsCertsServer { server, ca_pem: d.join("ca.pem"), dir }
    }

    /// `https://127.0.0.1:PORT/cdn-cgi/access/certs`
    pub fn url(&self) -> String {
        format!("https://{}/{CERTS_PATH}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The CA certificate (PEM file) that issued the server's certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// The contents of [`ca_pem_path`](Self::ca_pem_path).
    #[allow(clippy::expect_used, reason = "a fixture: panics on a broken temp dir")]
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(&self.ca_pem).expect("read ca.pem")
    }

    /// Takes effect for the next request.
    pub fn set(&self, b: Behavior) {
        self.server.set(b);
    }

    /// `set(Behavior::Json(certs_json(keys)))`.
    pub fn set_keys(&self, keys: &[&KeyPair]) {
        self.set(Behavior::Json(certs_json(keys)));
    }

    /// `set(Behavior::Json(body))`: `body` verbatim, as `application/json`.
    pub fn set_body(&self, body: &str) {
        self.set(Behavior::Json(body.to_string()));
    }

    /// Requests received so far (complete request heads after a successful
    /// handshake, whatever the answer).
    pub fn hits(&self) -> usize {
        self.server.hits()
    }

    /// The temporary directory holding the CA (`ca.pem`, `ca.key`) and the
    /// server key and certificate (`server.key`, `server.pem`); removed on
    /// drop.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// The rustls configuration serving `cert` (PEM, the leaf) with `key`, with
/// an explicit ring provider (the process-wide default is neither used nor
/// installed).
#[allow(clippy::expect_used, reason = "a fixture: panics on a broken temp dir")]
fn server_config(cert: &Path, key: &Path) -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("TlsCertsServer: reading {}: {e}", cert.display()));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("TlsCertsServer: reading {}: {e}", key.display()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TlsCertsServer: rustls protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap_or_else(|e| panic!("TlsCertsServer: rustls certificate/key: {e}"));
    Arc::new(config)
}

/// The TLS handshake on an accepted socket (which has a short read
/// timeout): `None` (closing the socket) if it fails, the client leaves, it
/// is not done by `deadline` or the server stops.
fn handshake(
    config: &Arc<ServerConfig>,
    tcp: TcpStream,
    deadline: Instant,
    stopping: &dyn Fn() -> bool,
) -> Option<Box<dyn Conn>> {
    let conn = ServerConnection::new(config.clone()).ok()?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if stopping() || Instant::now() >= deadline {
            return None;
        }
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            // TLS error (an alert was sent if possible), EOF, reset.
            Err(_) => return None,
        }
    }
    Some(Box::new(tls))
}

impl Conn for StreamOwned<ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush()?;
        self.sock.shutdown(Shutdown::Write)
    }
}

/// Runs `openssl args...` in `dir`; panics with its stderr if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "TlsCertsServer: `openssl {}` failed ({}):\n{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{}", spawn_error(&e)),
    }
}

fn spawn_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        format!(
            "TlsCertsServer needs the `openssl` command-line tool on PATH \
             (Debian/Ubuntu: apt-get install openssl): {e}"
        )
    } else {
        format!("TlsCertsServer: cannot run `openssl`: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use serde_json::Value;
    use std::io::Read;
    use std::process::{Child, Output};
    use std::thread;
    use std::time::Duration;

    fn curl(args: &[&str]) -> Option<Output> {
        match Command::new("curl")
            .args(["--noproxy", "*", "--max-time", "10", "-s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => Some(o),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("running curl: {e}"),
        }
    }

    fn served_kids(srv: &TlsCertsServer) -> Option<Vec<String>> {
        let ca = srv.ca_pem_path().to_str().unwrap();
        let out = curl(&["--cacert", ca, &srv.url()])?;
        assert!(
            out.status.success(),
            "curl --cacert failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON body");
        Some(
            doc["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect(),
        )
    }

    type Client = StreamOwned<ClientConnection, TcpStream>;

    /// A rustls client (ring provider) trusting only `srv`'s CA.
    fn tls_connect(srv: &TlsCertsServer) -> Client {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(srv.ca_pem_path()).unwrap()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(srv.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        StreamOwned::new(conn, tcp)
    }

    /// Sends a GET over TLS, reads up to the server's `close_notify`,
    /// returns (head, body).
    fn tls_get(srv: &TlsCertsServer) -> (String, String) {
        let mut s = tls_connect(srv);
        s.write_all(b"GET /cdn-cgi/access/certs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        (head.to_string(), body.to_string())
    }

    /// Waits (up to 5 s) until `srv` has seen `n` requests.
    fn wait_hits(srv: &TlsCertsServer, n: usize) {
        let t = Instant::now();
        while srv.hits() < n && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(srv.hits(), n);
    }

    /// After the server is gone: EOF or an error, not a read timeout.
    fn assert_closed(s: &mut impl Read) {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    assert!(!is_timeout(&e), "connection still open: {e}");
                    return;
                }
            }
        }
    }

    /// Waits up to `limit` for `child` to exit.
    fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child still running after {limit:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn serves_certs_over_https_with_its_own_ca() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        let srv = TlsCertsServer::start(&[&a]);
        let addr = srv.addr();
        assert!(addr.ip().is_loopback());
        assert_eq!(srv.url(), format!("https://127.0.0.1:{}/cdn-cgi/access/certs", addr.port()));
        assert!(srv.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(srv.ca_pem_path().starts_with(srv.dir()));

        // The leaf chains to the CA under strict X.509 rules, as a TLS server.
        let out = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
            .arg(srv.ca_pem_path())
            .arg(srv.dir().join("server.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

        match served_kids(&srv) {
            None => eprintln!("curl not found: curl checks skipped"),
            Some(kids) => {
                assert_eq!(kids, [a.kid()]);
                // Without the CA the certificate is not trusted
                // (curl exit 60: peer certificate cannot be authenticated).
                let out = curl(&[&srv.url()]).unwrap();
                assert!(!out.status.success());
                assert_eq!(out.status.code(), Some(60), "{out:?}");
                assert!(out.stdout.is_empty());

                srv.set_keys(&[&a, &b]);
                assert_eq!(served_kids(&srv).unwrap(), [a.kid(), b.kid()]);
                srv.set_body(r#"{"keys":[]}"#);
                assert_eq!(served_kids(&srv).unwrap(), Vec::<String>::new());
                // The untrusted attempt never got to a request.
                assert_eq!(srv.hits(), 3);
            }
        }

        let (head, body) = tls_get(&srv);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: application/json\r\n"));
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert!(doc["keys"].is_array());

        let dir = srv.dir().to_path_buf();
        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!dir.exists());
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn behaviors_over_tls() {
        let srv = TlsCertsServer::start_with(Behavior::Status(503, "down".into()));
        let (head, body) = tls_get(&srv);
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert_eq!(body, "down");

        srv.set(Behavior::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ke".to_vec()));
        let (head, body) = tls_get(&srv);
        assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 100");
        assert_eq!(body, "{\"ke");

        srv.set(Behavior::Slow { body: "{}".into(), delay_ms: 100 });
        let t = Instant::now();
        assert_eq!(tls_get(&srv).1, "{}");
        assert!(t.elapsed() >= Duration::from_millis(100));

        srv.set(Behavior::Redirect { location: "/next".into(), delay_ms: 0, status: 307 });
        let (head, body) = tls_get(&srv);
        assert!(head.starts_with("HTTP/1.1 307 "), "{head}");
        assert!(head.contains("\r\nLocation: /next\r\n"), "{head}");
        assert_eq!(body, "");
        assert_eq!(srv.hits(), 4);

        // Trickle: head, then spaces until the server is dropped.
        let trickle_head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{";
        srv.set(Behavior::Trickle { head: trickle_head.to_vec(), every_ms: 10 });
        let mut s = tls_connect(&srv);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < trickle_head.len() + 3 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..trickle_head.len()], trickle_head);
        assert!(got[trickle_head.len()..].iter().all(|&b| b == b' '));
        assert_eq!(srv.hits(), 5);
        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_closed(&mut s);
    }

    #[test]
    fn redirect_from_https_to_http() {
        let target = CertsServer::start(Behavior::Json(r#"{"keys":[]}"#.into()));
        let srv = TlsCertsServer::start_with(Behavior::redirect(target.url()));
        assert!(target.url().starts_with("http://127.0.0.1:"));
        let (head, _) = tls_get(&srv);
        assert!(head.starts_with("HTTP/1.1 302 Found\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nLocation: {}\r\n", target.url())), "{head}");
        let ca = srv.ca_pem_path().to_str().unwrap();
        match curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--cacert",
            ca,
            &srv.url(),
        ]) {
            None => eprintln!("curl not found: curl checks skipped"),
            Some(out) => {
                assert!(out.status.success(), "{out:?}");
                assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("302 {}", target.url()));
                assert_eq!(srv.hits(), 2);
            }
        }
        // Not followed by anyone here.
        assert_eq!(target.hits(), 0);
    }

    #[test]
    fn failed_and_stalled_handshakes() {
        let srv = TlsCertsServer::start_with(Behavior::Json("{}".into()));
        // Plain HTTP to the TLS port: the handshake fails, the connection
        // is closed (maybe after an alert), nothing is counted.
        {
            let mut s = TcpStream::connect(srv.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            assert!(!out.starts_with(b"HTTP"), "{out:?}");
        }
        // A client that never starts the handshake does not block others.
        let mut stalled = TcpStream::connect(srv.addr()).unwrap();
        assert_eq!(tls_get(&srv).1, "{}");
        assert_eq!(srv.hits(), 1);

        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        stalled.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_closed(&mut stalled);
    }

    #[test]
    fn hang_does_not_block_drop() {
        let srv = TlsCertsServer::start_with(Behavior::Hang);
        let mut s = tls_connect(&srv);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        wait_hits(&srv, 1);
        // No answer arrives.
        s.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).unwrap_err();
        assert!(is_timeout(&err), "{err}");

        let ca = srv.ca_pem_path().to_str().unwrap().to_string();
        let curl_child = match Command::new("curl")
            .args(["--noproxy", "*", "--max-time", "30", "-s", "--cacert", &ca])
            .arg(srv.url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => Some(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("running curl: {e}"),
        };
        if curl_child.is_some() {
            wait_hits(&srv, 2);
        }

        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        s.sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_closed(&mut s);
        if let Some(mut child) = curl_child {
            let status = wait_child(&mut child, Duration::from_secs(5));
            assert!(!status.success(), "{status:?}");
        }
    }
}
