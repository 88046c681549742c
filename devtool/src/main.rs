//! `cf-access-dev`: keygen / jwks / serve / mint. See `cf-access-dev --help`.

mod cli;

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use cf_access_dev::{certs_json, mint, now, Behavior, CertsServer, KeyPair};
use cli::{Command, USAGE};

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
    let keys = paths
        .iter()
        .map(|p| load_key(p))
        .collect::<Result<Vec<_>, _>>()?;
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
        Command::Serve {
            listen,
            keys,
            allow_non_loopback,
        } => serve(&listen, keys, allow_non_loopback)?,
        Command::Mint(m) => {
            let key = load_key(&m.key)?;
            println!("{}", mint(&key, &cli::mint_claims(&m, now())));
        }
    }
    Ok(())
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

fn serve(listen: &str, keys: Vec<String>, allow_non_loopback: bool) -> Result<(), Failure> {
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
    println!("{}", server.url());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
