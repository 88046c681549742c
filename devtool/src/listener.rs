//! The accept loop the dev tool's loopback servers share (the certs endpoint, plain or TLS,
//! and the CONNECT proxy): one thread per connection, a bounded number at once, and a stop
//! that is prompt: every registered socket is shut down, which unblocks any read or write,
//! and every thread is joined.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server's stop flag and its live sockets (clones), to unblock them when it stops.
#[derive(Default)]
pub(crate) struct Conns {
    stop: AtomicBool,
    socks: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

impl Conns {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Registers a clone of `s` so that stopping shuts it down, until the registration is
    /// dropped. `None` if the server is stopping (the caller then just drops `s`). Checking
    /// the flag under the lock means the stop's sweep cannot miss a socket.
    pub(crate) fn register(&self, s: &TcpStream) -> Option<Registration<'_>> {
        let mut socks = lock(&self.socks);
        if self.stopping() {
            return None;
        }
        let clone = s.try_clone().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        socks.insert(id, clone);
        Some(Registration { conns: self, id })
    }

    /// Sockets registered now.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        lock(&self.socks).len()
    }

    fn stop(&self) {
        let socks = lock(&self.socks);
        self.stop.store(true, Ordering::SeqCst);
        for s in socks.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

pub(crate) struct Registration<'a> {
    conns: &'a Conns,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.conns.socks).remove(&self.id);
    }
}

/// What a server shares with its connection threads; its [`Conns`] among it.
pub(crate) trait Served: Send + Sync + 'static {
    fn conns(&self) -> &Conns;
}

/// A listening socket served by an accept thread. Dropping it stops the server: the accept
/// loop ends, every registered socket is shut down, and every thread is joined.
pub(crate) struct Listener<S: Served> {
    addr: SocketAddr,
    shared: Arc<S>,
    accept: Option<JoinHandle<()>>,
}

impl<S: Served> Listener<S> {
    /// Serves every connection accepted on `listener` with `serve`, in a thread of its own
    /// (`<name>-conn`; the accept thread is `<name>`), its socket registered while it runs;
    /// at most `max` at once, and more are closed on accept.
    pub(crate) fn start(
        listener: TcpListener,
        name: &str,
        max: usize,
        shared: Arc<S>,
        serve: impl Fn(TcpStream, &S) + Send + Sync + 'static,
    ) -> io::Result<Listener<S>> {
        let addr = listener.local_addr()?;
        let (s, conn_name) = (shared.clone(), format!("{name}-conn"));
        let accept = thread::Builder::new()
            .name(name.into())
            .spawn(move || accept_loop(listener, s, Arc::new(serve), conn_name, max))?;
        Ok(Listener { addr, shared, accept: Some(accept) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn shared(&self) -> &S {
        &self.shared
    }
}

impl<S: Served> Drop for Listener<S> {
    fn drop(&mut self) {
        self.shared.conns().stop();
        // Wake the accept loop, blocked in accept(2).
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, self.addr.port()))
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

type Serve<S> = Arc<dyn Fn(TcpStream, &S) + Send + Sync>;

fn accept_loop<S: Served>(
    listener: TcpListener,
    shared: Arc<S>,
    serve: Serve<S>,
    conn_name: String,
    max: usize,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for incoming in listener.incoming() {
        if shared.conns().stopping() {
            break;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        workers.retain(|h| !h.is_finished());
        if workers.len() >= max {
            continue; // drops (closes) the stream
        }
        let (s, serve) = (shared.clone(), serve.clone());
        let spawned = thread::Builder::new().name(conn_name.clone()).spawn(move || {
            let Some(_registered) = s.conns().register(&stream) else {
                return;
            };
            serve(stream, &s);
        });
        if let Ok(h) = spawned {
            workers.push(h);
        }
    }
    for h in workers {
        let _ = h.join();
    }
}
