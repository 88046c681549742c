//! Processes, ports and waiting.

use std::fs;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

/// Whether `pid` is an existing process that is not a zombie (the module's own test).
pub use cf_access_core::zone::process_alive;

/// How often [`poll_until`] and [`wait_until`] ask.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Binds `127.0.0.1:0`, reads the port the kernel picked, and releases it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Two distinct free ports.
pub(crate) fn free_ports() -> (u16, u16) {
    let port = free_port();
    loop {
        let port2 = free_port();
        if port2 != port {
            return (port, port2);
        }
    }
}

/// Asks `cond` every `every` until it holds (true) or `timeout` has passed (false). `cond` is
/// asked at least once, and once more at the end.
pub(crate) fn poll_every(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(every.min(deadline - now));
    }
}

/// Asks `cond` every 50 ms until it holds (true) or `timeout` has passed (false).
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(timeout, POLL_EVERY, cond)
}

/// Asks `cond` every 50 ms until it holds; panics with `what` after `timeout`.
/// [`Nginx::wait_until`](crate::Nginx::wait_until) adds nginx's error log to the panic.
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(timeout, cond), "timed out after {timeout:?} waiting for: {what}");
}

/// Sends `signal` (`libc::SIGQUIT`, `libc::SIGKILL`, ...) to the process `pid` with
/// kill(2); whether it was sent. Never signals a process group (`pid` 0 is refused).
pub fn send_signal(pid: u32, signal: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes two integers and touches no memory of ours; a positive pid
        // addresses exactly one process.
        Ok(pid) if pid > 0 => unsafe { libc::kill(pid, signal) == 0 },
        _ => false,
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

/// All processes whose parent is `ppid`, from `/proc/*/stat`.
pub(crate) fn children_of(ppid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
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
pub(crate) fn kill_nginx_processes(pids: &[u32]) {
    for &pid in pids {
        if process_alive(pid) && is_nginx_process(pid) {
            send_signal(pid, libc::SIGKILL);
        }
    }
}

fn is_nginx_process(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.contains("nginx") || String::from_utf8_lossy(&cmdline).contains("nginx")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn polls_until_true_or_timeout() {
        let mut n = 0;
        assert!(poll_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        let started = Instant::now();
        assert!(!poll_until(Duration::from_millis(120), || false));
        assert!(started.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for: nothing")]
    fn wait_until_panics_with_what() {
        wait_until(Duration::from_millis(50), "nothing", || false);
    }

    #[test]
    fn signals_reach_one_process_only() {
        let mut child =
            Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(process_alive(pid));
        assert!(children_of(std::process::id()).contains(&pid));
        assert!(!send_signal(0, libc::SIGKILL), "pid 0 is a process group");
        assert!(send_signal(pid, libc::SIGKILL));
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!process_alive(pid));
    }
}
