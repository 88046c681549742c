//! `cf_access_metrics`: instance-wide counters (the same answer from every worker, kept by a
//! reload), key status per certs URL, readiness, and output a real Prometheus parser takes.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cf_access_dev::{mint, now, user_claims, Behavior, CertsServer, KeyPair};
use cf_access_testkit::site::{token_for, AUD, HDR, OTHER_AUD, TEAM};
use cf_access_testkit::{Nginx, Response};
use serde_json::Value;

const WORKERS: u32 = 4;

fn site(certs_url: &str, workers: u32) -> Nginx {
    Nginx::builder()
        .workers(workers)
        .file("p/index.html", "ok\n")
        .http(&format!(
            r#"
    cf_access_refresh 1s;
    server {{
        listen 127.0.0.1:{{PORT}};
        root {{PREFIX}}/html;
        location /p/ {{
            cf_access on;
            cf_access_team_domain {TEAM};
            cf_access_aud {AUD};
            cf_access_certs_url {certs_url};
        }}
        location = /metrics {{
            cf_access_metrics;
            add_header X-Pid $pid always;
            allow 127.0.0.1;
            deny all;
        }}
    }}
"#
        ))
        .start()
}

/// The Python with `prometheus_client` that scripts/test installs under target/tools/.
fn prometheus_python() -> PathBuf {
    let python =
        std::env::var_os("CF_ACCESS_PROM_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/prometheus/bin/python3")
        });
    assert!(
        python.exists(),
        "{} not found: run scripts/test (it installs prometheus_client), or set \
         CF_ACCESS_PROM_PYTHON to a python3 that has it",
        python.display()
    );
    python
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

/// Parses Prometheus text with prometheus_client: family name -> {type, samples}.
fn parse_prometheus(text: &str) -> Value {
    let mut child = Command::new(prometheus_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the output: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of `sample` with `labels` in a parsed family.
fn sample(families: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {families}"));
    samples
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no {sample}{labels:?} in {family}: {families}"))
}

/// Scrapes until every one of `workers` worker processes has answered; returns one answer
/// per worker.
fn scrape_every_worker(nginx: &Nginx, path: &str) -> Vec<(String, Response)> {
    let mut seen = BTreeSet::new();
    let mut answers = Vec::new();
    for _ in 0..2000 {
        let r = nginx.get(path, &[]);
        let pid = r.header("X-Pid").unwrap_or("").to_string();
        if seen.insert(pid.clone()) {
            answers.push((pid, r));
        }
        if seen.len() == WORKERS as usize {
            return answers;
        }
    }
    panic!("only {} workers answered: {seen:?}", seen.len());
}

#[test]
fn counts_are_instance_wide_and_survive_a_reload() {
    let key = KeyPair::generate();
    let certs = CertsServer::start_with_keys(&[&key]);
    let nginx = site(&certs.url(), WORKERS);
    let good = token_for(&key, AUD, "a@example.com");
    let expired = mint(&key, &user_claims(TEAM, AUD, "a@example.com", now() - 900, 600));
    let other_app = token_for(&key, OTHER_AUD, "a@example.com");
    let mut expected = vec![("ok", 20), ("no_token", 7), ("expired", 5), ("bad_audience", 3)];
    for (token, n) in [(good.as_str(), 20), ("", 7), (&expired, 5), (&other_app, 3)] {
        for _ in 0..n {
            let headers: &[(&str, &str)] = if token.is_empty() { &[] } else { &[(HDR, token)] };
            // `/p/` runs the access phase twice (the index file is an internal redirect),
            // and is still one request verified once; the others go straight to the file.
            let path = if n == 20 { "/p/" } else { "/p/index.html" };
            let _ = nginx.get(path, headers);
        }
    }

    let check = |nginx: &Nginx, expected: &[(&str, u32)], lookups: f64| {
        let answers = scrape_every_worker(nginx, "/metrics");
        let first = &answers[0].1.body;
        for (pid, r) in &answers {
            assert_eq!(r.status, 200);
            assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
            assert_eq!(&r.body, first, "worker {pid} answers differently");
        }
        let m = parse_prometheus(first);
        assert_eq!(m["cf_access_requests"]["type"], "counter");
        for (status, n) in expected {
            let got =
                sample(&m, "cf_access_requests", "cf_access_requests_total", &[("status", status)]);
            assert_eq!(got, f64::from(*n), "status {status}");
        }
        let hits = sample(&m, "cf_access_cache_hits", "cf_access_cache_hits_total", &[]);
        let misses = sample(&m, "cf_access_cache_misses", "cf_access_cache_misses_total", &[]);
        assert_eq!(hits + misses, lookups, "every cache lookup was counted once");
        // Refused tokens are never cached (8 misses); the good one misses once per worker
        // cache (4 workers, 4 more after the reload) and hits otherwise.
        assert!(
            (9.0..=8.0 + 2.0 * f64::from(WORKERS)).contains(&misses),
            "{hits} hits, {misses} misses"
        );
        let url = certs.url();
        assert_eq!(m["cf_access_keys"]["type"], "gauge");
        assert_eq!(sample(&m, "cf_access_keys", "cf_access_keys", &[("certs_url", &url)]), 1.0);
        assert_eq!(
            sample(&m, "cf_access_keys_ready", "cf_access_keys_ready", &[("certs_url", &url)]),
            1.0
        );
        assert_eq!(sample(&m, "cf_access_ready", "cf_access_ready", &[]), 1.0);
        assert!(
            sample(
                &m,
                "cf_access_keys_fetches",
                "cf_access_keys_fetches_total",
                &[("certs_url", &url), ("result", "ok")]
            ) >= 1.0
        );
        assert!(
            sample(
                &m,
                "cf_access_keys_last_success_timestamp_seconds",
                "cf_access_keys_last_success_timestamp_seconds",
                &[("certs_url", &url)]
            ) >= (now() - 60) as f64
        );
    };
    // One lookup per request with a token: 20 + 5 + 3.
    check(&nginx, &expected, 28.0);
    nginx.reload();
    // The old workers may still answer for a moment; wait for four new ones.
    thread_sleep_ms(500);
    check(&nginx, &expected, 28.0);
    // And counting goes on after the reload.
    let _ = nginx.get("/p/", &[(HDR, &good)]);
    expected[0].1 = 21;
    check(&nginx, &expected, 29.0);
    nginx.assert_clean(&[]);
}

fn thread_sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn readiness_follows_the_certs_endpoint_and_json_lists_the_kids() {
    let (k1, k2) = (KeyPair::generate(), KeyPair::generate());
    let certs = CertsServer::start(Behavior::Status(503, "down".into()));
    let nginx = site(&certs.url(), 1);
    let r = nginx.get("/metrics?ready", &[]);
    assert_eq!((r.status, r.body.as_str()), (503, "not ready\n"));
    let m = parse_prometheus(&nginx.get("/metrics", &[]).body);
    assert_eq!(sample(&m, "cf_access_ready", "cf_access_ready", &[]), 0.0);
    let url = certs.url();
    assert!(
        sample(
            &m,
            "cf_access_keys_fetches",
            "cf_access_keys_fetches_total",
            &[("certs_url", &url), ("result", "error")]
        ) >= 1.0
    );
    let j: Value = serde_json::from_str(&nginx.get("/metrics?format=json", &[]).body).unwrap();
    assert_eq!(j["ready"], false);
    assert_eq!(j["certs"][0]["last_error"], "http status 503");

    certs.set_keys(&[&k1, &k2]);
    nginx.wait_until(Duration::from_secs(10), "readiness", || {
        nginx.get("/metrics?ready", &[]).status == 200
    });
    let r = nginx.get("/metrics?format=json", &[]);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let j: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(j["ready"], true);
    let kids: BTreeSet<&str> =
        j["certs"][0]["kids"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(kids, BTreeSet::from([k1.kid(), k2.kid()]));
    assert_eq!(j["certs"][0]["keys"], 2);
    assert!(j["certs"][0]["last_error"].is_null());
    assert!(j["certs"][0]["next_refresh"].as_u64().unwrap() >= now() as u64);
    assert_eq!(nginx.request("POST", "/metrics", &[], Some(b"x")).status, 405);
    // HEAD: the headers of a GET, no body.
    let head = nginx.request("HEAD", "/metrics?ready", &[], None);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("Content-Length"), Some("6"));
}

#[test]
fn the_metrics_directive_belongs_in_a_location() {
    let (ok, out) = Nginx::builder()
        .http("server { listen 127.0.0.1:{PORT}; cf_access_metrics; }")
        .test_config();
    assert!(!ok && out.contains("\"cf_access_metrics\" directive is not allowed here"), "{out}");
}
