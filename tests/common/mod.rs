//! Test harness: runs a real nginx binary on 127.0.0.1 with ephemeral ports and a temporary
//! prefix, talks HTTP/1.1 to it with a tiny std-only client, and always cleans up.
//!
//! * nginx binary: `$CF_ACCESS_NGINX`, else `$NGX_CF_ACCESS_NGINX_BUILD_DIR/nginx` (set at
//!   compile time by build.rs), else the newest `target/<profile>/build/nginx-sys-*/out/objs/nginx`.
//! * module: `$CF_ACCESS_MODULE`, else `target/<profile>/libngx_http_cf_access_module.so`
//!   next to the test executable's `deps/` directory.
//!
//! Configuration placeholders (in `http()` and `main()` text): `{PORT}`, `{PORT2}`, `{PREFIX}`.
#![allow(dead_code)]

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `start()` waits for nginx to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful quit may take before the processes are killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `reload()` waits for the new workers (or a configuration error).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Socket timeouts of the HTTP client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at starting nginx when its ports turn out to be taken.
const PORT_ATTEMPTS: usize = 4;

const MODULE_FILE: &str = "libngx_http_cf_access_module.so";

static PREFIX_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Binds `127.0.0.1:0`, reads the port the kernel picked, and releases it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Two distinct free ports.
fn free_ports() -> (u16, u16) {
    let port = free_port();
    loop {
        let port2 = free_port();
        if port2 != port {
            return (port, port2);
        }
    }
}

/// A unique, freshly created temporary prefix with `conf/`, `logs/` and `html/`.
fn make_prefix() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::SeqCst);
    let prefix = std::env::temp_dir().join(format!(
        "cf-access-nginx-{}-{}-{}",
        std::process::id(),
        n,
        nanos
    ));
    for sub in ["conf", "logs", "html"] {
        fs::create_dir_all(prefix.join(sub))
            .unwrap_or_else(|e| panic!("create {}: {e}", prefix.join(sub).display()));
    }
    prefix
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (e.g. "QUIT", "HUP", "KILL") to `pid` with the `kill` utility.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    let arg = format!("-{signal}");
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    let pid_s = pid.to_string();
    match run("kill", &[&arg, &pid_s]) {
        Ok(ok) => ok,
        // No kill(1) binary: fall back to the shell builtin.
        Err(_) => run("sh", &["-c", &format!("kill {arg} {pid}")]).unwrap_or(false),
    }
}

/// `(ppid, state)` of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether `pid` is an existing process that is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((_, state)) if state != 'Z' && state != 'X')
}

/// All processes whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if matches!(proc_stat(pid), Some((parent, _)) if parent == ppid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs those of `pids` that are still alive and still nginx processes (pid reuse).
fn kill_nginx_processes(pids: &[u32]) {
    for &pid in pids {
        if process_alive(pid) && is_nginx_process(pid) {
            send_signal(pid, "KILL");
        }
    }
}

fn is_nginx_process(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.contains("nginx") || String::from_utf8_lossy(&cmdline).contains("nginx")
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// Configures and starts an [`Nginx`].
#[derive(Debug, Clone)]
pub struct NginxBuilder {
    http: String,
    main: String,
    workers: u32,
    with_module: bool,
    files: Vec<(String, String)>,
}

impl NginxBuilder {
    fn new() -> Self {
        NginxBuilder {
            http: String::new(),
            main: String::new(),
            workers: 1,
            with_module: true,
            files: Vec::new(),
        }
    }

    /// Text placed inside `http { }` (may use `{PORT}`, `{PORT2}`, `{PREFIX}`). Appends.
    pub fn http(mut self, conf: &str) -> Self {
        self.http.push_str(conf);
        self.http.push('\n');
        self
    }

    /// Extra text at the main (top) level, after `load_module`. Appends.
    pub fn main(mut self, conf: &str) -> Self {
        self.main.push_str(conf);
        self.main.push('\n');
        self
    }

    /// Number of worker processes (default 1).
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// Do not emit `load_module`.
    pub fn without_module(mut self) -> Self {
        self.with_module = false;
        self
    }

    /// A file created as `PREFIX/html/<rel_path>` before nginx starts (parents created).
    /// Its contents are written verbatim (no placeholder substitution).
    pub fn file(mut self, rel_path: &str, contents: &str) -> Self {
        self.files
            .push((rel_path.to_string(), contents.to_string()));
        self
    }

    /// One server whose location `/p/` (serving `html/p/index.html`) needs a token for
    /// `team`/`aud`, with keys from `certs_url`, and reports `$cf_access_status` in the
    /// `X-Status` header. `http_extra` goes before the server, `location_extra` into `/p/`.
    pub fn protected_site(
        self,
        (team, aud, certs_url): (&str, &str, &str),
        http_extra: &str,
        location_extra: &str,
    ) -> Self {
        self.file("p/index.html", "ok\n").http(&format!(
            r#"
    {http_extra}
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        location /p/ {{
            cf_access on;
            cf_access_team_domain {team};
            cf_access_aud {aud};
            cf_access_certs_url {certs_url};
            add_header X-Status $cf_access_status always;
            {location_extra}
        }}
    }}
"#
        ))
    }

    fn substitute(text: &str, prefix: &Path, port: u16, port2: u16) -> String {
        text.replace("{PORT}", &port.to_string())
            .replace("{PORT2}", &port2.to_string())
            .replace("{PREFIX}", &prefix.display().to_string())
    }

    fn render(&self, prefix: &Path, port: u16, port2: u16) -> String {
        let p = prefix.display();
        let mut conf = String::new();
        if self.with_module {
            let module = Nginx::module_path();
            assert!(
                module.exists(),
                "nginx module not found at {} (build it with `cargo build`, or set CF_ACCESS_MODULE)",
                module.display()
            );
            conf.push_str(&format!("load_module {};\n", module.display()));
        }
        conf.push_str(&Self::substitute(&self.main, prefix, port, port2));
        conf.push_str(&format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes {workers};\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log {p}/logs/access.log;\n\
             client_body_temp_path {p}/client_body_temp;\n\
             proxy_temp_path {p}/proxy_temp;\n\
             fastcgi_temp_path {p}/fastcgi_temp;\n\
             uwsgi_temp_path {p}/uwsgi_temp;\n\
             scgi_temp_path {p}/scgi_temp;\n",
            workers = self.workers,
        ));
        conf.push_str(&Self::substitute(&self.http, prefix, port, port2));
        conf.push_str("}\n");
        conf
    }

    /// Writes the files and the configuration for the given ports into `prefix`.
    fn prepare(&self, prefix: &Path, port: u16, port2: u16) -> PathBuf {
        let html = prefix.join("html");
        for (rel, contents) in &self.files {
            let path = html.join(rel.trim_start_matches('/'));
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
            }
            fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let conf_path = prefix.join("conf").join("nginx.conf");
        fs::write(&conf_path, self.render(prefix, port, port2))
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        conf_path
    }

    /// Runs `nginx -t` on the configuration; returns (success, stdout+stderr+error log).
    /// The temporary prefix is removed afterwards.
    pub fn test_config(self) -> (bool, String) {
        let prefix = make_prefix();
        let (port, port2) = free_ports();
        let conf_path = self.prepare(&prefix, port, port2);
        let error_log = prefix.join("logs").join("error.log");
        let binary = Nginx::nginx_binary();
        let output = Nginx::command(&prefix, &conf_path)
            .arg("-t")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text.push_str(&read_lossy(&error_log));
        if std::thread::panicking() {
            eprintln!("keeping nginx test prefix {}", prefix.display());
        } else {
            let _ = fs::remove_dir_all(&prefix);
        }
        (output.status.success(), text)
    }

    /// Starts nginx and waits until it accepts connections on `{PORT}`.
    ///
    /// Panics (showing the error log and nginx's stderr) if it does not come up within 10 s.
    /// If the ports turn out to be taken ("Address already in use") it retries with new ports.
    pub fn start(self) -> Nginx {
        let prefix = make_prefix();
        let binary = Nginx::nginx_binary();
        assert!(
            binary.exists(),
            "nginx binary not found at {} (run `cargo build`, or set CF_ACCESS_NGINX)",
            binary.display()
        );
        let logs = prefix.join("logs");
        let error_log = logs.join("error.log");
        let stderr_path = logs.join("nginx.stderr");
        let stdout_path = logs.join("nginx.stdout");

        for attempt in 1..=PORT_ATTEMPTS {
            let (port, port2) = free_ports();
            let conf_path = self.prepare(&prefix, port, port2);
            let _ = fs::remove_file(&error_log);
            let _ = fs::remove_file(prefix.join("nginx.pid"));
            let stderr = fs::File::create(&stderr_path).expect("create nginx stderr file");
            let stdout = fs::File::create(&stdout_path).expect("create nginx stdout file");
            let child = Nginx::command(&prefix, &conf_path)
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
            // From here on, Drop cleans up (also when we panic below).
            let mut nginx = Nginx {
                child: Some(child),
                prefix: prefix.clone(),
                conf_path,
                error_log_path: error_log.clone(),
                stderr_path: stderr_path.clone(),
                port,
                port2,
                workers: self.workers,
                owns_prefix: true,
            };
            match nginx.wait_ready() {
                Ok(()) => return nginx,
                Err(reason) => {
                    let log = nginx.error_log();
                    let stderr = read_lossy(&stderr_path);
                    let in_use = log.contains("Address already in use")
                        || stderr.contains("Address already in use");
                    if in_use && attempt < PORT_ATTEMPTS {
                        eprintln!(
                            "nginx: ports {port}/{port2} in use, retrying ({attempt}/{PORT_ATTEMPTS})"
                        );
                        // The prefix is reused for the next attempt.
                        nginx.owns_prefix = false;
                        drop(nginx);
                        continue;
                    }
                    panic!(
                        "nginx failed to start: {reason}\n\
                         prefix: {}\n\
                         --- nginx.conf ---\n{}\n\
                         --- error log ---\n{log}\n\
                         --- stderr ---\n{stderr}",
                        prefix.display(),
                        read_lossy(&nginx.conf_path),
                    );
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }
}

// ---------------------------------------------------------------------------------------------
// Running nginx
// ---------------------------------------------------------------------------------------------

/// A running nginx (master + workers) in the foreground (`daemon off`), spawned as a child.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    prefix: PathBuf,
    conf_path: PathBuf,
    error_log_path: PathBuf,
    stderr_path: PathBuf,
    port: u16,
    port2: u16,
    workers: u32,
    /// False for a failed start attempt whose prefix is reused by the next attempt.
    owns_prefix: bool,
}

impl Nginx {
    pub fn builder() -> NginxBuilder {
        NginxBuilder::new()
    }

    /// `nginx -p PREFIX -c CONF -e PREFIX/logs/error.log` with the binary under test: a
    /// packaged nginx's compiled-in paths are never used. Add `-t`, `-s ...` as needed.
    pub fn command(prefix: &Path, conf: &Path) -> Command {
        let mut cmd = Command::new(Nginx::nginx_binary());
        cmd.arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(prefix.join("logs").join("error.log"))
            .stdin(Stdio::null());
        cmd
    }

    /// `$CF_ACCESS_NGINX`, else the vendored build's `objs/nginx`.
    pub fn nginx_binary() -> PathBuf {
        if let Some(path) = std::env::var_os("CF_ACCESS_NGINX").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        if let Some(dir) = option_env!("NGX_CF_ACCESS_NGINX_BUILD_DIR") {
            let path = Path::new(dir).join("nginx");
            if path.exists() {
                return path;
            }
        }
        // Fallback: the newest target/<profile>/build/nginx-sys-*/out/objs/nginx.
        let mut best: Option<(SystemTime, PathBuf)> = None;
        if let Some(profile_dir) = profile_dir() {
            if let Ok(entries) = fs::read_dir(profile_dir.join("build")) {
                for entry in entries.flatten() {
                    if !entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with("nginx-sys-")
                    {
                        continue;
                    }
                    let path = entry.path().join("out/objs/nginx");
                    if let Ok(mtime) = fs::metadata(&path).and_then(|m| m.modified()) {
                        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
                            best = Some((mtime, path));
                        }
                    }
                }
            }
        }
        match best {
            Some((_, path)) => path,
            None => match option_env!("NGX_CF_ACCESS_NGINX_BUILD_DIR") {
                Some(dir) => Path::new(dir).join("nginx"),
                None => PathBuf::from("nginx"),
            },
        }
    }

    /// `$CF_ACCESS_MODULE`, else `target/<profile>/libngx_http_cf_access_module.so`.
    pub fn module_path() -> PathBuf {
        if let Some(path) = std::env::var_os("CF_ACCESS_MODULE").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        match profile_dir() {
            Some(dir) => dir.join(MODULE_FILE),
            None => PathBuf::from(MODULE_FILE),
        }
    }

    /// The main listen port (`{PORT}`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A second free port (`{PORT2}`), e.g. for a backend/JWKS server inside the same nginx.
    pub fn port2(&self) -> u16 {
        self.port2
    }

    /// The temporary prefix (`{PREFIX}`).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The generated `nginx.conf` (may be rewritten before [`Nginx::reload`]).
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `GET path` over HTTP/1.1 to 127.0.0.1:port with `Connection: close`.
    /// Panics on connection/I/O errors (5 s timeouts, never hangs).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, None)
    }

    /// Any request to 127.0.0.1:port (see [`http_request`]).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        http_request(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on port {}: {e}", self.port))
    }

    /// Full text of the error log so far.
    pub fn error_log(&self) -> String {
        read_lossy(&self.error_log_path)
    }

    /// nginx's stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Polls the error log until it contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.error_log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP to the master (`nginx -s reload`), then waits (up to 5 s) until the master
    /// has either started its new worker processes or logged a configuration error
    /// (`[emerg]`) — in the latter case the old workers keep running.
    pub fn reload(&self) {
        let before = fs::metadata(&self.error_log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        assert!(
            send_signal(self.pid(), "HUP"),
            "failed to send SIGHUP to nginx master {}",
            self.pid()
        );
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let wanted = self.workers.max(1) as usize;
        while Instant::now() < deadline {
            let log = fs::read(&self.error_log_path).unwrap_or_default();
            let new = String::from_utf8_lossy(log.get(before..).unwrap_or_default());
            if new.contains("[emerg]") || new.matches("start worker process").count() >= wanted {
                // Give the new workers a moment to enter their event loop.
                thread::sleep(Duration::from_millis(100));
                return;
            }
            thread::sleep(Duration::from_millis(25));
        }
        eprintln!("nginx reload: no new workers or error within {RELOAD_TIMEOUT:?}");
    }

    /// Graceful quit (SIGQUIT), bounded wait, then kill; removes the prefix.
    pub fn stop(self) {
        drop(self)
    }

    /// Children of the master (workers; also cache helpers if configured), from `/proc/*/stat`.
    /// After a reload this includes old workers that are still shutting down.
    pub fn worker_pids(&self) -> Vec<u32> {
        match &self.child {
            Some(child) => children_of(child.id())
                .into_iter()
                .filter(|&pid| process_alive(pid))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Waits until nginx accepts connections on `{PORT}` (and has written its pid file).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let pid_file = self.prefix.join("nginx.pid");
        let master = self.pid();
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(format!("nginx exited early ({status})")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("waiting for nginx: {e}")),
                }
            }
            // The pid file is written only after the listening sockets were opened, so a
            // foreign listener on our port cannot pass for nginx.
            let pid_written = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(master);
            if pid_written && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not accepting on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Best effort: wait (briefly) for the workers to be forked.
        let wanted = self.workers.max(1) as usize;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.worker_pids().len() < wanted && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the master and any leftover children. Idempotent.
    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let master = child.id();
        let mut known: Vec<u32> = children_of(master);
        if matches!(child.try_wait(), Ok(None)) {
            send_signal(master, "QUIT");
            let deadline = Instant::now() + QUIT_TIMEOUT;
            loop {
                for pid in children_of(master) {
                    if !known.contains(&pid) {
                        known.push(pid);
                    }
                }
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => {}
                }
                if Instant::now() >= deadline {
                    eprintln!("nginx master {master} did not quit in time; killing it");
                    // Workers first, so that a still-responsive master reaps them.
                    kill_nginx_processes(&known);
                    let grace = Instant::now() + Duration::from_millis(500);
                    while matches!(child.try_wait(), Ok(None)) && Instant::now() < grace {
                        thread::sleep(Duration::from_millis(20));
                    }
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.wait();
        // Workers orphaned by a killed master get re-parented; kill them by their known pids.
        kill_nginx_processes(&known);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.shutdown();
        if !self.owns_prefix {
            return;
        }
        if std::thread::panicking() {
            eprintln!("keeping nginx test prefix {}", self.prefix.display());
        } else {
            let _ = fs::remove_dir_all(&self.prefix);
        }
    }
}

/// `target/<profile>/`, derived from the test executable (`target/<profile>/deps/<test>`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().map(Path::to_path_buf)
    } else {
        Some(deps.to_path_buf())
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers named `name` (case-insensitive), e.g. `Set-Cookie`.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` with `Connection: close`; reads to EOF.
/// A `Host` header is added unless `headers` has one; `Content-Length` is added for a body.
/// Connect/read/write timeouts are 5 s each, and the whole exchange is bounded as well.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;

    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    stream
        .write_all(&bytes)
        .map_err(|e| format!("write: {e}"))?;
    stream.flush().map_err(|e| format!("flush: {e}"))?;

    let deadline = Instant::now() + 2 * IO_TIMEOUT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after a complete response still counts as a response.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => return Err(format!("read: {e} (after {} bytes)", raw.len())),
        }
        if Instant::now() >= deadline {
            return Err(format!("response not complete within {:?}", 2 * IO_TIMEOUT));
        }
    }
    parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

/// Parses a complete HTTP/1.x response (status line, headers, body).
pub fn parse_response(raw: &[u8], head_request: bool) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no end of headers in response: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(format!("bad status line: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut response = Response {
        status,
        headers,
        body: String::new(),
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body: Vec<u8> = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = response
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(format!(
                "body truncated: Content-Length {len}, got {} bytes",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    response.body = String::from_utf8_lossy(&body).into_owned();
    Ok(response)
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: missing chunk size line")?;
        let size_line = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("chunked body: bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (if any) are ignored.
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunked body: truncated chunk".to_string());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
