//! A real nginx on 127.0.0.1: built from a configuration, started, reloaded, quit, checked.
//!
//! * nginx binary: `$CF_ACCESS_NGINX`, else `$NGX_CF_ACCESS_NGINX_BUILD_DIR/nginx` (the
//!   module crate's build script sets it, and `cargo test` passes it on to the test binaries),
//!   else the newest `target/<profile>/build/nginx-sys-*/out/objs/nginx`.
//! * module: `$CF_ACCESS_MODULE`, else `target/<profile>/libngx_http_cf_access_module.so`
//!   next to the test executable's `deps/` directory.
//!
//! Configuration placeholders (in `http()` and `main()` text): `{PORT}`, `{PORT2}`, `{PREFIX}`.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::{http_request, Response};
use crate::process::{
    children_of, free_ports, kill_nginx_processes, poll_every, poll_until, process_alive,
    send_signal,
};

/// How long `start()` waits for nginx to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful quit may take before the processes are killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Nginx::quit`] waits for the processes to go before it gives up on them.
const QUIT_WAIT: Duration = Duration::from_secs(10);
/// How long `reload()` waits for the new workers (or a configuration error).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at starting nginx when its ports turn out to be taken.
const PORT_ATTEMPTS: usize = 4;

const MODULE_FILE: &str = "libngx_http_cf_access_module.so";

/// What [`Nginx::assert_clean`] refuses in the error log: a crashed process or an internal
/// error. (On nginx's stderr, a Rust `panicked`.)
pub const CRASH_MARKERS: &[&str] = &["exited on signal", "[alert]", "[crit]", "[emerg]"];
/// What [`Nginx::assert_clean`] refuses on nginx's stderr.
const STDERR_MARKER: &str = "panicked";

static PREFIX_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique, freshly created temporary prefix with `conf/`, `logs/` and `html/`.
fn make_prefix() -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
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
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The lines of `log` with a [`CRASH_MARKERS`] entry that contain none of `allowed`, and
/// stderr if it shows a Rust panic.
fn crash_lines(log: &str, stderr: &str, allowed: &[&str]) -> Vec<String> {
    let mut bad: Vec<String> = log
        .lines()
        .filter(|line| CRASH_MARKERS.iter().any(|m| line.contains(m)))
        .filter(|line| !allowed.iter().any(|a| line.contains(a)))
        .map(str::to_string)
        .collect();
    if stderr.contains(STDERR_MARKER) {
        bad.push(format!("a Rust panic on nginx's stderr:\n{stderr}"));
    }
    bad
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
        self.files.push((rel_path.to_string(), contents.to_string()));
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
/// Dropping it quits nginx (SIGQUIT, bounded, then SIGKILL) and removes its prefix (kept,
/// with a message, when the test is panicking).
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

    /// `$CF_ACCESS_NGINX`, else the vendored build's `objs/nginx` (see the module docs).
    pub fn nginx_binary() -> PathBuf {
        if let Some(path) = std::env::var_os("CF_ACCESS_NGINX").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        // build.rs's `cargo::rustc-env`, which cargo also sets when it runs the tests.
        let build_dir = std::env::var_os("NGX_CF_ACCESS_NGINX_BUILD_DIR").filter(|d| !d.is_empty());
        if let Some(dir) = &build_dir {
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
                    if !entry.file_name().to_string_lossy().starts_with("nginx-sys-") {
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
        match (best, build_dir) {
            (Some((_, path)), _) => path,
            (None, Some(dir)) => Path::new(&dir).join("nginx"),
            (None, None) => PathBuf::from("nginx"),
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

    /// The error log's length in bytes now: an offset for [`Nginx::log_since`].
    pub fn log_len(&self) -> usize {
        fs::metadata(&self.error_log_path).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// The error log from byte `offset` (from [`Nginx::log_len`]) on.
    pub fn log_since(&self, offset: usize) -> String {
        let bytes = fs::read(&self.error_log_path).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset..).unwrap_or_default()).into_owned()
    }

    /// nginx's stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Polls the error log until it contains `needle`; whether it did within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        poll_until(timeout, || self.error_log().contains(needle))
    }

    /// [`wait_until`](crate::wait_until), with the error log in the panic message.
    pub fn wait_until(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        assert!(
            poll_until(timeout, cond),
            "timed out after {timeout:?} waiting for: {what}\n--- error log ---\n{}",
            self.error_log()
        );
    }

    /// Asserts that nothing crashed and nothing went wrong inside: no error-log line with a
    /// [`CRASH_MARKERS`] entry (`exited on signal`, `[alert]`, `[crit]`, `[emerg]`) unless it
    /// contains one of `allowed` (what the test caused on purpose, e.g. `exited on signal 9`
    /// after it killed a worker), and no Rust panic on nginx's stderr.
    pub fn assert_clean(&self, allowed: &[&str]) {
        let (log, stderr) = (self.error_log(), self.stderr());
        let bad = crash_lines(&log, &stderr, allowed);
        assert!(
            bad.is_empty(),
            "nginx is not clean:\n{}\n--- error log ---\n{log}\n--- stderr ---\n{stderr}",
            bad.join("\n")
        );
    }

    /// Graceful quit: SIGQUIT to the master, then waits (up to 10 s) until the master and
    /// every worker are gone, and checks the whole error log, shutdown included, with
    /// [`Nginx::assert_clean`]. Asserts that the quit took less than 5 s; returns how long
    /// it took.
    pub fn quit(mut self) -> Duration {
        let master = self.pid();
        let workers = self.worker_pids();
        let started = Instant::now();
        assert!(
            send_signal(master, libc::SIGQUIT),
            "could not send SIGQUIT to nginx master {master}"
        );
        let child = self.child.as_mut().expect("a started nginx has a master");
        poll_every(QUIT_WAIT, Duration::from_millis(10), || {
            matches!(child.try_wait(), Ok(Some(_)) | Err(_))
                && !workers.iter().any(|&w| process_alive(w))
        });
        let took = started.elapsed();
        self.assert_clean(&[]);
        assert!(
            took < QUIT_TIMEOUT,
            "graceful quit took {took:?}\n--- error log ---\n{}",
            self.error_log()
        );
        took
    }

    /// Sends SIGHUP to the master (`nginx -s reload`), then waits (up to 5 s) until the master
    /// has either started its new worker processes or logged a configuration error
    /// (`[emerg]`) — in the latter case the old workers keep running.
    pub fn reload(&self) {
        let before = self.log_len();
        assert!(
            send_signal(self.pid(), libc::SIGHUP),
            "failed to send SIGHUP to nginx master {}",
            self.pid()
        );
        let wanted = self.workers.max(1) as usize;
        let done = poll_every(RELOAD_TIMEOUT, Duration::from_millis(25), || {
            let new = self.log_since(before);
            new.contains("[emerg]") || new.matches("start worker process").count() >= wanted
        });
        if done {
            // Give the new workers a moment to enter their event loop.
            thread::sleep(Duration::from_millis(100));
        } else {
            eprintln!("nginx reload: no new workers or error within {RELOAD_TIMEOUT:?}");
        }
    }

    /// Quits (SIGQUIT, bounded wait, then kill) without checks; removes the prefix.
    pub fn stop(self) {
        drop(self)
    }

    /// Children of the master (workers; also cache helpers if configured), from `/proc/*/stat`.
    /// After a reload this includes old workers that are still shutting down.
    pub fn worker_pids(&self) -> Vec<u32> {
        match &self.child {
            Some(child) => {
                children_of(child.id()).into_iter().filter(|&pid| process_alive(pid)).collect()
            }
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
            let pid_written =
                fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok())
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
        poll_every(Duration::from_secs(2), Duration::from_millis(20), || {
            self.worker_pids().len() >= wanted
        });
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
            send_signal(master, libc::SIGQUIT);
            let quit = poll_every(QUIT_TIMEOUT, Duration::from_millis(20), || {
                for pid in children_of(master) {
                    if !known.contains(&pid) {
                        known.push(pid);
                    }
                }
                !matches!(child.try_wait(), Ok(None))
            });
            if !quit {
                eprintln!("nginx master {master} did not quit in time; killing it");
                // Workers first, so that a still-responsive master reaps them.
                kill_nginx_processes(&known);
                poll_every(Duration::from_millis(500), Duration::from_millis(20), || {
                    !matches!(child.try_wait(), Ok(None))
                });
                let _ = child.kill();
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

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2025/01/01 00:00:00 [notice] 1#1: start worker process 2\n\
        2025/01/01 00:00:01 [alert] 1#1: worker process 2 exited on signal 9\n\
        2025/01/01 00:00:02 [warn] 3#3: cf_access: fetching keys failed\n";

    #[test]
    fn crash_lines_use_one_marker_list_and_the_allowed_lines() {
        assert_eq!(
            crash_lines(LOG, "", &[]),
            ["2025/01/01 00:00:01 [alert] 1#1: worker process 2 exited on signal 9"]
        );
        assert!(crash_lines(LOG, "", &["exited on signal 9"]).is_empty());
        assert_eq!(crash_lines(LOG, "", &["exited on signal 11"]).len(), 1);
        for marker in CRASH_MARKERS {
            let line = format!("x {marker} y");
            assert_eq!(crash_lines(&line, "", &[]), vec![line]);
        }
        assert!(crash_lines("[error] [info] [warn]", "", &[]).is_empty());
        let panic = "thread '<unnamed>' panicked at src/lib.rs:1:1";
        assert_eq!(crash_lines("", panic, &[]).len(), 1);
        assert_eq!(crash_lines("", panic, &[panic]).len(), 1, "a panic is never allowed");
    }
}
