//! What `cf_access_metrics` answers: the instance-wide counters and the state of every certs
//! URL, as Prometheus text (exposition format 0.0.4) or JSON, and readiness.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::zone::{Zone, ZoneError};
use crate::Status;

/// The state of one certs URL, read from the shared zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySource {
    pub url: String,
    /// Keys in the loaded set (0: none loaded).
    pub keys: u32,
    pub kids: Vec<String>,
    /// When the loaded set was fetched (unix seconds; 0: none).
    pub fetched_at: u64,
    /// When a fetch last succeeded (unix seconds; 0: never).
    pub last_success: u64,
    pub fetches_ok: u64,
    pub fetches_err: u64,
    /// The last fetch error ("" after a success).
    pub last_error: String,
    /// When the next scheduled refresh is due (unix seconds).
    pub next_refresh: u64,
}

impl KeySource {
    pub fn ready(&self) -> bool {
        self.keys > 0
    }
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `(status name, requests)` for every status.
    pub requests: Vec<(&'static str, u64)>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub identity: IdentityCounts,
    pub sources: Vec<KeySource>,
}

/// get-identity, instance-wide: subrequests made, answers from a worker's cache, and fetches
/// that left requests without an identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityCounts {
    pub fetches: u64,
    pub hits: u64,
    pub failures: u64,
}

impl Snapshot {
    /// Every certs URL in use has keys.
    pub fn ready(&self) -> bool {
        self.sources.iter().all(KeySource::ready)
    }
}

/// What a scrape asks for, from the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Prometheus,
    Json,
    /// `?ready`: 200 when ready, 503 otherwise.
    Ready,
}

impl Query {
    /// `format=json` → JSON, `ready` → readiness, anything else → Prometheus text.
    pub fn parse(args: &[u8]) -> Query {
        let mut query = Query::Prometheus;
        for arg in args.split(|b| *b == b'&') {
            match arg {
                b"format=json" => query = Query::Json,
                b"ready" | b"ready=" | b"ready=1" => return Query::Ready,
                _ => {}
            }
        }
        query
    }
}

/// Reads the zone: the counters, and for each `(slot, url)` in use the state of that URL.
/// `now_ms` (monotonic) and `now_unix` convert the zone's schedule to wall-clock time.
pub fn snapshot(
    zone: &Zone,
    sources: &[(usize, &str)],
    wait: Duration,
    now_ms: u64,
    now_unix: u64,
) -> Result<Snapshot, ZoneError> {
    let c = zone.counters();
    let requests = Status::ALL
        .iter()
        .map(|s| (s.as_str(), c.requests[s.index()].load(Ordering::Relaxed)))
        .collect();
    let mut out = Vec::with_capacity(sources.len());
    for &(slot, url) in sources {
        let g = zone.lock_within(slot, wait)?;
        let mut k = KeySource { url: url.to_string(), ..KeySource::default() };
        if g.url() == url {
            let st = g.state();
            if st.seq != 0 {
                k.keys = g.key_count();
                k.kids = crate::jwks::kids(g.body());
                k.fetched_at = st.fetched_at;
            }
            k.last_success = st.last_success;
            k.fetches_ok = st.fetches_ok;
            k.fetches_err = st.fetches_err;
            k.last_error = g.error().to_string();
            k.next_refresh = now_unix + st.next_due.saturating_sub(now_ms) / 1000;
        }
        out.push(k);
    }
    Ok(Snapshot {
        requests,
        cache_hits: c.cache_hits.load(Ordering::Relaxed),
        cache_misses: c.cache_misses.load(Ordering::Relaxed),
        identity: IdentityCounts {
            fetches: c.identity_fetches.load(Ordering::Relaxed),
            hits: c.identity_hits.load(Ordering::Relaxed),
            failures: c.identity_failures.load(Ordering::Relaxed),
        },
        sources: out,
    })
}

/// A label value, escaped as the exposition format wants (`\\`, `\"`, `\n`).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A per-certs-URL series: name, type, help, value.
type Gauge = (&'static str, &'static str, &'static str, fn(&KeySource) -> u64);

/// The Prometheus text exposition format (`text/plain; version=0.0.4`).
pub fn prometheus(s: &Snapshot) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "cf_access_requests_total",
        "counter",
        "Requests checked, by verdict ($cf_access_status).",
    );
    for (status, n) in &s.requests {
        let _ = writeln!(out, "cf_access_requests_total{{status=\"{status}\"}} {n}");
    }
    family(
        &mut out,
        "cf_access_cache_hits_total",
        "counter",
        "Tokens found in a worker's verified-token cache.",
    );
    let _ = writeln!(out, "cf_access_cache_hits_total {}", s.cache_hits);
    family(
        &mut out,
        "cf_access_cache_misses_total",
        "counter",
        "Tokens looked up in a worker's verified-token cache and not found.",
    );
    let _ = writeln!(out, "cf_access_cache_misses_total {}", s.cache_misses);
    let identity = [
        ("cf_access_identity_fetches_total", "get-identity subrequests made.", s.identity.fetches),
        (
            "cf_access_identity_cache_hits_total",
            "Identities found in a worker's get-identity cache.",
            s.identity.hits,
        ),
        (
            "cf_access_identity_failures_total",
            "get-identity subrequests that gave no usable identity.",
            s.identity.failures,
        ),
    ];
    for (name, help, n) in identity {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }

    let per_source: [Gauge; 3] = [
        ("cf_access_keys", "gauge", "Keys in the loaded key set.", |k| u64::from(k.keys)),
        (
            "cf_access_keys_last_success_timestamp_seconds",
            "gauge",
            "When a fetch of the certs URL last succeeded (0: never).",
            |k| k.last_success,
        ),
        ("cf_access_keys_ready", "gauge", "1 when a key set is loaded for the certs URL.", |k| {
            u64::from(k.ready())
        }),
    ];
    for (name, kind, help, value) in per_source {
        family(&mut out, name, kind, help);
        for k in &s.sources {
            let _ = writeln!(out, "{name}{{certs_url=\"{}\"}} {}", label(&k.url), value(k));
        }
    }
    family(
        &mut out,
        "cf_access_keys_fetches_total",
        "counter",
        "Fetches of the certs URL, by result.",
    );
    for k in &s.sources {
        let url = label(&k.url);
        for (result, n) in [("ok", k.fetches_ok), ("error", k.fetches_err)] {
            let _ = writeln!(
                out,
                "cf_access_keys_fetches_total{{certs_url=\"{url}\",result=\"{result}\"}} {n}"
            );
        }
    }
    family(&mut out, "cf_access_ready", "gauge", "1 when every certs URL in use has a key set.");
    let _ = writeln!(out, "cf_access_ready {}", u8::from(s.ready()));
    out
}

/// The same as JSON, with per certs URL also the kids, the fetch time, the last error and
/// when the next refresh is due.
pub fn json(s: &Snapshot) -> String {
    let requests: serde_json::Map<String, serde_json::Value> =
        s.requests.iter().map(|(status, n)| (status.to_string(), json!(n))).collect();
    let sources: Vec<serde_json::Value> = s
        .sources
        .iter()
        .map(|k| {
            json!({
                "certs_url": k.url,
                "ready": k.ready(),
                "keys": k.keys,
                "kids": k.kids,
                "fetched_at": k.fetched_at,
                "last_success": k.last_success,
                "fetches": {"ok": k.fetches_ok, "error": k.fetches_err},
                "last_error": (!k.last_error.is_empty()).then_some(&k.last_error),
                "next_refresh": k.next_refresh,
            })
        })
        .collect();
    let mut text = json!({
        "ready": s.ready(),
        "requests": requests,
        "cache": {"hits": s.cache_hits, "misses": s.cache_misses},
        "identity": {
            "fetches": s.identity.fetches,
            "hits": s.identity.hits,
            "failures": s.identity.failures,
        },
        "certs": sources,
    })
    .to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            requests: vec![("ok", 3), ("no_token", 1)],
            cache_hits: 2,
            cache_misses: 1,
            identity: IdentityCounts { fetches: 4, hits: 9, failures: 1 },
            sources: vec![
                KeySource {
                    url: "https://t.cloudflareaccess.com/cdn-cgi/access/certs".into(),
                    keys: 2,
                    kids: vec!["a".into(), "b".into()],
                    fetched_at: 100,
                    last_success: 100,
                    fetches_ok: 1,
                    next_refresh: 3700,
                    ..KeySource::default()
                },
                KeySource {
                    url: "http://x/\"odd\"\\\n".into(),
                    fetches_err: 4,
                    last_error: "http status 503".into(),
                    ..KeySource::default()
                },
            ],
        }
    }

    #[test]
    fn prometheus_text() {
        let text = prometheus(&sample());
        for line in [
            "# TYPE cf_access_requests_total counter",
            "cf_access_requests_total{status=\"ok\"} 3",
            "cf_access_cache_hits_total 2",
            "cf_access_identity_fetches_total 4",
            "cf_access_identity_cache_hits_total 9",
            "# TYPE cf_access_identity_failures_total counter",
            "cf_access_identity_failures_total 1",
            "# TYPE cf_access_keys gauge",
            "cf_access_keys{certs_url=\"https://t.cloudflareaccess.com/cdn-cgi/access/certs\"} 2",
            "cf_access_keys_fetches_total{certs_url=\"http://x/\\\"odd\\\"\\\\\\n\",result=\"error\"} 4",
            "cf_access_keys_ready{certs_url=\"http://x/\\\"odd\\\"\\\\\\n\"} 0",
            "cf_access_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn queries() {
        assert_eq!(Query::parse(b""), Query::Prometheus);
        assert_eq!(Query::parse(b"format=json"), Query::Json);
        assert_eq!(Query::parse(b"x=1&format=json"), Query::Json);
        assert_eq!(Query::parse(b"ready"), Query::Ready);
        assert_eq!(Query::parse(b"format=json&ready"), Query::Ready);
        assert_eq!(Query::parse(b"format=yaml"), Query::Prometheus);
    }

    #[test]
    fn snapshot_reads_the_zone() {
        let mut mem = vec![0u64; Zone::SIZE.div_ceil(8)];
        // SAFETY: zeroed, aligned, outlives the zone's use here.
        let zone = unsafe { Zone::attach(mem.as_mut_ptr().cast(), mem.len() * 8) }.unwrap();
        zone.init(0);
        let url = "https://t/certs";
        let slot = zone.assign(&[url]).unwrap()[0];
        {
            let mut g = zone.lock(slot).unwrap();
            let body = br#"{"keys":[{"kid":"k1"},{"kid":"k2"}]}"#;
            g.set_body(body, 2, zone.next_seq()).unwrap();
            g.state_mut().fetched_at = 1000;
            g.state_mut().last_success = 1000;
            g.state_mut().fetches_ok = 1;
            g.state_mut().next_due = 50_000;
        }
        zone.counters().requests[Status::Expired.index()].fetch_add(2, Ordering::Relaxed);
        zone.counters().cache_hits.fetch_add(5, Ordering::Relaxed);
        zone.counters().identity_failures.fetch_add(3, Ordering::Relaxed);
        let s = snapshot(&zone, &[(slot, url)], Duration::from_millis(10), 20_000, 1030).unwrap();
        assert!(s.ready());
        assert_eq!(s.requests.len(), Status::ALL.len());
        assert!(s.requests.contains(&("expired", 2)));
        assert_eq!(s.cache_hits, 5);
        assert_eq!(s.identity, IdentityCounts { failures: 3, ..IdentityCounts::default() });
        let k = &s.sources[0];
        assert_eq!((k.keys, k.kids.clone()), (2, vec!["k1".into(), "k2".into()]));
        assert_eq!(k.next_refresh, 1060);
        // A URL whose slot holds another URL (a newer configuration) is not ready.
        let s = snapshot(&zone, &[(slot, "https://other/certs")], Duration::ZERO, 0, 0).unwrap();
        assert!(!s.ready());
    }

    #[test]
    fn json_and_readiness() {
        let mut s = sample();
        let v: serde_json::Value = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["certs"][0]["kids"], json!(["a", "b"]));
        assert_eq!(v["certs"][1]["last_error"], "http status 503");
        assert_eq!(v["certs"][0]["last_error"], serde_json::Value::Null);
        assert_eq!(v["requests"]["ok"], 3);
        assert_eq!(v["identity"], json!({"fetches": 4, "hits": 9, "failures": 1}));
        s.sources.pop();
        assert!(s.ready());
        s.sources.clear();
        assert!(s.ready(), "nothing in use, nothing missing");
    }
}
