//! `cf-access-dev`: keygen / jwks / serve / mint. See `cf-access-dev --help`.

mod cli;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cf_access_dev::{certs_json, mint, now, Behavior, CertsServer, IdentityConfig, KeyPair};
use cli::{Batch, Command, Mint, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cf-access-dev: {e}\nRun `cf-access-dev --help` for usage.");
            return ExitCode::from(2);
        }
    };
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("cf-access-dev: {e}\nRun `cf-access-dev --help` for usage.");
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("cf-access-dev: {e}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Error(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Error(s)
    }
}

fn load_key(path: &str) -> Result<KeyPair, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    KeyPair::from_pkcs8_pem(&pem).map_err(|e| format!("{path}: {e}"))
}

fn load_certs_json(paths: &[String]) -> Result<String, String> {
    let keys = paths.iter().map(|p| load_key(p)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&KeyPair> = keys.iter().collect();
    Ok(certs_json(&refs))
}

fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Help => print!("{USAGE}"),
        Command::Version => println!("cf-access-dev {}", env!("CARGO_PKG_VERSION")),
        Command::Keygen { out, force } => {
            let key = KeyPair::generate();
            write_private(&out, key.to_pkcs8_pem().as_bytes(), force)
                .map_err(|e| format!("{out}: {e}"))?;
            println!("{}", key.kid());
        }
        Command::Jwks { keys } => println!("{}", load_certs_json(&keys)?),
        Command::Serve { listen, keys, allow_non_loopback, identity } => {
            serve(&listen, keys, allow_non_loopback, identity)?
        }
        Command::Mint(m) => {
            let key = load_key(&m.key)?;
            mint_to(&key, &m, now())?;
        }
    }
    Ok(())
}

/// `mint`: one token, or a `--count` batch, to `--out` or standard output.
fn mint_to(key: &KeyPair, m: &Mint, now: i64) -> Result<(), String> {
    let (sink, name): (Box<dyn Write>, &str) = match &m.out {
        Some(path) => {
            (Box::new(std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?), path)
        }
        None => (Box::new(std::io::stdout().lock()), "standard output"),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let written = match &m.batch {
        None => writeln!(out, "{}", mint(key, &cli::mint_claims(m, now))),
        Some(batch) => {
            let mut progress = Progress::new(batch.count);
            let r =
                mint_batch(key, m, batch, now, BATCH_CHUNK, &mut out, &mut |n| progress.update(n));
            progress.finish();
            r
        }
    };
    written.and_then(|()| out.flush()).map_err(|e| format!("writing to {name}: {e}"))
}

/// Tokens a signing thread mints at a time.
const BATCH_CHUNK: u64 = 256;

/// Mints the batch's tokens on `batch.threads` threads (default: one per CPU), `chunk` at a
/// time, and writes them to `out` in order (token `batch.first` first), one per line.
/// `progress` is told how many were written so far.
fn mint_batch(
    key: &KeyPair,
    m: &Mint,
    batch: &Batch,
    now: i64,
    chunk: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let chunks = batch.count.div_ceil(chunk);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = batch.threads.unwrap_or(cpus).clamp(1, chunks as usize);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        // Bounded: the signers stay at most a few chunks ahead of the writer.
        let (tx, rx) = mpsc::sync_channel::<(u64, String)>(threads * 2);
        for _ in 0..threads {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    return;
                }
                let lo = c * chunk;
                let hi = (lo + chunk).min(batch.count);
                let mut text = String::new();
                for i in lo..hi {
                    text += &mint(key, &cli::mint_claims_nth(m, now, batch.first + i));
                    text.push('\n');
                }
                // The writer has given up (an error): stop.
                if tx.send((c, text)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // Chunks arrive in any order; write them in order.
        let mut pending = BTreeMap::new();
        let (mut want, mut written) = (0, 0);
        for (c, text) in rx {
            pending.insert(c, text);
            while let Some(text) = pending.remove(&want) {
                // Returning drops `rx`: the signers' next send fails and they stop.
                out.write_all(text.as_bytes())?;
                written = (written + chunk).min(batch.count);
                progress(written);
                want += 1;
            }
        }
        Ok(())
    })
}

/// Progress of a long batch on stderr, every 5 s (nothing for a batch done sooner).
struct Progress {
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
    printed: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let now = Instant::now();
        Progress { total, done: 0, start: now, last: now, printed: false }
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        if self.last.elapsed() >= Duration::from_secs(5) && done < self.total {
            self.last = Instant::now();
            self.printed = true;
            let el = self.start.elapsed().as_secs_f64();
            let rate = done as f64 / el;
            eprintln!(
                "cf-access-dev: minted {done}/{} tokens ({rate:.0}/s, {:.0} s left)",
                self.total,
                (self.total - done) as f64 / rate.max(1.0)
            );
        }
    }

    fn finish(&self) {
        if self.printed {
            let el = self.start.elapsed().as_secs_f64();
            eprintln!(
                "cf-access-dev: minted {} tokens in {el:.0} s ({:.0}/s)",
                self.done,
                self.done as f64 / el
            );
        }
    }
}

/// Writes a private key file: refuses to overwrite unless `force`, mode 0600 on unix.
fn write_private(path: &str, data: &[u8], force: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Serves the certs (and get-identity, as `identity` says) until killed.
fn serve(
    listen: &str,
    keys: Vec<String>,
    allow_non_loopback: bool,
    identity: IdentityConfig,
) -> Result<(), Failure> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("--listen {listen:?}: {e}")))?
        .collect();
    let Some(&addr) = addrs.first() else {
        return Err(Failure::Usage(format!("--listen {listen:?}: no address")));
    };
    if !allow_non_loopback && !cli::is_loopback(&addrs) {
        return Err(Failure::Usage(format!(
            "--listen {listen}: {} is not a loopback address; pass --allow-non-loopback to serve it anyway",
            addr.ip()
        )));
    }
    // Fail fast on unreadable keys; afterwards errors become HTTP 500s.
    load_certs_json(&keys)?;
    let server = CertsServer::start_dynamic(addr, move || match load_certs_json(&keys) {
        Ok(json) => Behavior::Json(json),
        Err(e) => {
            eprintln!("cf-access-dev: {e}");
            let body = serde_json::json!({ "error": e }).to_string();
            Behavior::Status(500, body)
        }
    })
    .map_err(|e| format!("listen on {addr}: {e}"))?;
    server.set_identity(identity);
    println!("{}", server.url());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    use serde_json::Value;

    /// A `mint --count` command line, parsed: the options and the batch.
    fn parse_batch(line: &str) -> (cli::Mint, cli::Batch) {
        let args: Vec<String> = line.split(' ').map(String::from).collect();
        let Ok(Command::Mint(m)) = cli::parse(&args) else { panic!("not a mint command: {line}") };
        let batch = m.batch.clone().expect("--count");
        (m, batch)
    }

    #[test]
    fn batch_is_ordered_distinct_and_valid() {
        let key = KeyPair::generate();
        let (m, batch) =
            parse_batch("mint --key k --team t.example --aud A --count 7 --first 10 --threads 3");
        let mut out = Vec::new();
        let mut seen = Vec::new();
        // Chunks of 2 on 3 threads: the writer must reorder them.
        mint_batch(&key, &m, &batch, now(), 2, &mut out, &mut |n| seen.push(n)).unwrap();
        assert_eq!(seen, [2, 4, 6, 7]);
        let text = String::from_utf8(out).unwrap();
        let tokens: Vec<&str> = text.lines().collect();
        assert_eq!(tokens.len(), 7);
        assert!(text.ends_with('\n'));
        let dk = DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["A"]);
        v.set_issuer(&["https://t.example"]);
        for (i, t) in tokens.iter().enumerate() {
            let got = decode::<Value>(t, &dk, &v).unwrap();
            assert_eq!(got.claims["email"], format!("user+{}@example.com", 10 + i));
        }
        let mut distinct = tokens.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 7);
    }

    #[test]
    fn batch_stops_on_a_write_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let key = KeyPair::generate();
        let (m, batch) = parse_batch("mint --key k --team t --aud A --count 50 --threads 2");
        let r = mint_batch(&key, &m, &batch, now(), 1, &mut Full, &mut |_| {});
        assert_eq!(r.unwrap_err().to_string(), "disk full");
    }
}
