//! Smoke tests of the nginx test harness itself (no module loaded).

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use cf_access_testkit::{free_port, parse_response, process_alive, send_signal, wait_until, Nginx};

fn static_site() -> Nginx {
    Nginx::builder()
        .without_module()
        .file("index.html", "hello from nginx\n")
        .file("sub/dir/page.txt", "nested page")
        .http(
            r#"
            server {
                listen 127.0.0.1:{PORT};
                server_name localhost;
                root {PREFIX}/html;
                location / { }
                location = /hdr { add_header X-Test "yes"; return 200 "port2={PORT2}"; }
            }
            "#,
        )
        .start()
}

#[test]
fn serves_static_file_without_module() {
    let nginx = static_site();
    assert!(nginx.port() > 0);
    assert!(nginx.prefix().join("html/index.html").is_file());

    let resp = nginx.get("/index.html", &[]);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "hello from nginx\n");
    assert_eq!(resp.header("content-length"), Some("17"));
    assert!(resp.header("SERVER").unwrap_or_default().starts_with("nginx"));

    let resp = nginx.get("/sub/dir/page.txt", &[("X-Whatever", "1")]);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "nested page");

    let resp = nginx.get("/missing", &[]);
    assert_eq!(resp.status, 404);

    let resp = nginx.get("/hdr", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-test"), Some("yes"));
    assert_eq!(resp.body, format!("port2={}", nginx.port2()));

    assert!(nginx.wait_for_log("start worker process", Duration::from_secs(5)));
    assert_eq!(nginx.worker_pids().len(), 1);
    nginx.stop();
}

#[test]
fn reload_replaces_workers() {
    let nginx = Nginx::builder()
        .without_module()
        .workers(2)
        .file("index.html", "v1")
        .http("server { listen 127.0.0.1:{PORT}; root {PREFIX}/html; }")
        .start();
    let before = nginx.worker_pids();
    assert_eq!(before.len(), 2, "{before:?}");
    nginx.reload();
    assert!(nginx.wait_for_log("reconfiguring", Duration::from_secs(5)));
    let resp = nginx.get("/index.html", &[]);
    assert_eq!((resp.status, resp.body.as_str()), (200, "v1"));
    // Old workers finish gracefully; eventually only new ones remain.
    nginx.wait_until(
        Duration::from_secs(5),
        &format!("two new workers replacing {before:?}"),
        || {
            let now = nginx.worker_pids();
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        },
    );
}

#[test]
fn config_error_is_reported() {
    let (ok, text) = Nginx::builder()
        .without_module()
        .http("server { listen 127.0.0.1:{PORT}; no_such_directive on; }")
        .test_config();
    assert!(!ok, "nginx -t accepted a bad config:\n{text}");
    assert!(text.contains("emerg"), "{text}");
    assert!(text.contains("no_such_directive"), "{text}");

    let (ok, text) =
        Nginx::builder().without_module().http("server { listen 127.0.0.1:{PORT}; }").test_config();
    assert!(ok, "nginx -t rejected a good config:\n{text}");
}

#[test]
fn processes_and_prefix_are_gone_after_drop() {
    let nginx = static_site();
    let master = nginx.pid();
    let workers = nginx.worker_pids();
    let prefix = nginx.prefix().to_path_buf();
    assert!(master > 0);
    assert!(!workers.is_empty());
    assert!(Path::new(&format!("/proc/{master}")).exists());
    for &pid in &workers {
        assert!(process_alive(pid), "worker {pid} not running");
    }
    drop(nginx);

    // The master is our child and has been reaped; its workers were reaped by it.
    let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists() || !process_alive(pid);
    wait_until(Duration::from_secs(2), "the nginx processes to be gone after drop", || {
        gone(master) && workers.iter().all(|&p| gone(p))
    });
    assert!(!Path::new(&format!("/proc/{master}")).exists());
    assert!(!prefix.exists(), "prefix {} not removed", prefix.display());
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let a = free_port();
    assert!(a > 0);
    std::net::TcpListener::bind(("127.0.0.1", a)).expect("free port is bindable");
}

#[test]
fn parses_chunked_responses() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    let resp = parse_response(raw, false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello world");
    assert_eq!(resp.header("x-a"), Some("b"));

    let raw = b"HTTP/1.1 302 Found\r\nContent-Length: 3\r\nLocation: /x\r\n\r\nabcdef";
    let resp = parse_response(raw, false).unwrap();
    assert_eq!(resp.status, 302);
    assert_eq!(resp.body, "abc");
    assert_eq!(resp.header("LOCATION"), Some("/x"));
}

#[test]
fn quit_is_graceful_and_checks_the_log() {
    let nginx = static_site();
    let master = nginx.pid();
    let workers = nginx.worker_pids();
    let took = nginx.quit();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!process_alive(master), "master {master} outlived quit()");
    for pid in workers {
        assert!(!process_alive(pid), "worker {pid} outlived quit()");
    }
}

#[test]
fn log_since_reads_what_was_logged_after_an_offset() {
    let nginx = static_site();
    let start = nginx.log_len();
    assert!(start > 0, "nginx logged its start");
    assert_eq!(nginx.log_since(0), nginx.error_log());
    assert_eq!(nginx.get("/missing", &[]).status, 404);
    nginx.wait_until(Duration::from_secs(2), "the 404 to be logged", || {
        nginx.log_since(start).contains("No such file or directory")
    });
    assert!(!nginx.log_since(start).contains("start worker process"));
    assert_eq!(nginx.log_since(usize::MAX), "");
    nginx.assert_clean(&[]);
}

#[test]
fn assert_clean_refuses_a_killed_worker_unless_allowed() {
    let nginx = static_site();
    nginx.assert_clean(&[]);
    let worker = nginx.worker_pids()[0];
    assert!(send_signal(worker, libc::SIGKILL));
    nginx.wait_until(Duration::from_secs(5), "the master to notice", || {
        nginx.error_log().contains("exited on signal 9")
    });
    nginx.assert_clean(&["exited on signal 9"]);
    let refused = std::panic::catch_unwind(AssertUnwindSafe(|| nginx.assert_clean(&[])));
    assert!(refused.is_err(), "a killed worker passed assert_clean");
}
