//! `paygate loadgen` against tiny in-process hyper servers on loopback: what it sends, how it
//! counts, and the JSON it reports. Counts only, never timings: the machine running the tests
//! decides the latencies.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paygate::domain::{Cents, CorrelationId};
use paygate::loadgen::{Config, Growth, LoadgenError, SweepConfig, run_once, run_sweep};
use tokio::net::TcpListener;

/// How the test server answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `202` to everything.
    Accept,
    /// `503` to every third request (the 3rd, 6th, ...), `202` to the others.
    RefuseEveryThird,
    /// `202` with `Connection: close`: every exchange needs a new connection.
    AcceptAndClose,
    /// Never answers.
    Stall,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    bodies: Mutex<Vec<Bytes>>,
    content_types: Mutex<HashSet<String>>,
    paths: Mutex<HashSet<String>>,
}

async fn start(mode: Mode) -> (Arc<Seen>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&server_seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(Arc::clone(&seen), mode, req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (seen, url)
}

async fn answer(seen: Arc<Seen>, mode: Mode, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let content_type = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    seen.content_types.lock().unwrap().insert(content_type);
    seen.paths.lock().unwrap().insert(format!("{} {}", req.method(), req.uri()));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    seen.bodies.lock().unwrap().push(body);
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"accepted\"}")));
    match mode {
        Mode::Stall => std::future::pending().await,
        Mode::RefuseEveryThird if n % 3 == 2 => {
            seen.refused.fetch_add(1, Ordering::SeqCst);
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(response);
        }
        Mode::AcceptAndClose => {
            response.headers_mut().insert("connection", "close".parse().unwrap());
        }
        _ => {}
    }
    seen.accepted.fetch_add(1, Ordering::SeqCst);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// `rate_per_s` for `duration_s` with no warm-up, so the server sees exactly what is measured.
fn config(url: &str, rate_per_s: u64, duration_s: f64) -> Config {
    let mut cfg = Config::new(url).unwrap();
    cfg.rate_per_s = rate_per_s;
    cfg.duration = Duration::from_secs_f64(duration_s);
    cfg.warmup = Duration::ZERO;
    cfg.connections = 8;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payment_is_sent_once_with_a_distinct_id() {
    let (seen, url) = start(Mode::Accept).await;
    let report = run_once(&config(&url, 200, 1.0)).await.unwrap();

    assert_eq!(report.sent, 200);
    assert_eq!(report.ok, 200);
    assert_eq!(report.error_count(), 0);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 200);
    let bodies = seen.bodies.lock().unwrap();
    let mut ids = HashSet::new();
    for body in bodies.iter() {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        let text = json["correlationId"].as_str().unwrap();
        let id = CorrelationId::parse(text.as_bytes()).expect("canonical UUID");
        assert_eq!(body.as_ref(), format!(r#"{{"correlationId":"{id}","amount":19.90}}"#).as_bytes());
        assert!(ids.insert(id), "correlationId {id} sent twice");
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(*seen.content_types.lock().unwrap(), HashSet::from(["application/json".to_owned()]));
    assert_eq!(*seen.paths.lock().unwrap(), HashSet::from(["POST /payments".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_status_and_match_the_server() {
    let (seen, url) = start(Mode::RefuseEveryThird).await;
    let report = run_once(&config(&url, 200, 1.0)).await.unwrap();

    assert_eq!(report.sent, report.ok + report.error_count());
    assert_eq!(report.ok, seen.accepted.load(Ordering::SeqCst));
    assert_eq!(report.errors["503"], seen.refused.load(Ordering::SeqCst));
    assert_eq!((report.ok, report.errors["503"]), (134, 66));
    assert_eq!((report.errors["transport"], report.errors["timeout"], report.errors["dropped"]), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_reaches_the_server_but_not_the_report() {
    let (seen, url) = start(Mode::Accept).await;
    let mut cfg = config(&url, 200, 0.5);
    cfg.warmup = Duration::from_secs_f64(0.25);
    let report = run_once(&cfg).await.unwrap();

    assert_eq!((report.sent, report.ok), (100, 100));
    assert_eq!(seen.requests.load(Ordering::SeqCst), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_amount_is_sent_as_written() {
    let (seen, url) = start(Mode::Accept).await;
    let mut cfg = config(&url, 100, 0.1);
    cfg.amount = Cents::parse_json_number(b"0.5").unwrap();
    let report = run_once(&cfg).await.unwrap();

    assert_eq!(report.ok, 10);
    for body in seen.bodies.lock().unwrap().iter() {
        assert!(body.ends_with(br#","amount":0.50}"#), "{body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closes_are_reopened_without_errors() {
    let (seen, url) = start(Mode::AcceptAndClose).await;
    let mut cfg = config(&url, 200, 0.5);
    cfg.connections = 2;
    let report = run_once(&cfg).await.unwrap();

    assert_eq!((report.sent, report.ok, report.error_count()), (100, 100, 0));
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 100);
    // Every exchange used up its own connection; prefilled ones may have gone unused.
    assert!((100..=100 + 2).contains(&report.connects), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_gives_timeouts_and_drops_not_an_unbounded_queue() {
    let (seen, url) = start(Mode::Stall).await;
    let mut cfg = config(&url, 200, 0.5);
    cfg.connections = 2;
    cfg.timeout = Duration::from_millis(200);
    cfg.max_backlog = Some(10);
    let report = run_once(&cfg).await.unwrap();

    assert_eq!(report.sent, 100);
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors["timeout"] + report.errors["dropped"], 100);
    // Nothing can leave the backlog before the first timeout, 40 requests in.
    assert!(report.errors["dropped"] > 0, "{report}");
    assert!(seen.requests.load(Ordering::SeqCst) <= report.errors["timeout"]);
    assert_eq!(report.latency_ms.max, 0.0, "no response, no latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_fails_before_any_load() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = run_once(&config(&url, 100, 0.1)).await.unwrap_err();
    assert!(matches!(err, LoadgenError::Unreachable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_is_refused() {
    let mut cfg = config("http://127.0.0.1:9", 0, 1.0);
    assert!(matches!(run_once(&cfg).await, Err(LoadgenError::InvalidOption(_))));
    cfg.rate_per_s = 10;
    cfg.connections = 0;
    assert!(matches!(run_once(&cfg).await, Err(LoadgenError::InvalidOption(_))));
    assert!(matches!(Config::new("https://127.0.0.1:9"), Err(LoadgenError::InvalidOption(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_json_has_the_documented_keys() {
    let (_seen, url) = start(Mode::RefuseEveryThird).await;
    let report = run_once(&config(&url, 100, 0.3)).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();

    for key in ["rate", "duration_s", "sent", "ok", "errors", "latency_ms", "achieved_rate"] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["rate"], 100);
    assert_eq!(json["duration_s"], 0.3);
    assert_eq!(json["sent"], 30);
    assert_eq!(json["ok"], 20);
    assert_eq!(json["errors"], serde_json::json!({"503": 10, "transport": 0, "timeout": 0, "dropped": 0}));
    for key in ["p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
        assert!(json["latency_ms"][key].is_f64(), "latency_ms.{key} in {json}");
    }
    assert!(json["achieved_rate"].is_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_runs_every_step_up_to_the_max_rate() {
    let (seen, url) = start(Mode::Accept).await;
    let sweep = SweepConfig { start_per_s: 100, growth: Growth::Step(100), max_per_s: 300, p99_bound_ms: 60_000.0 };
    let mut printed = 0;
    let report = run_sweep(&config(&url, 1, 0.2), &sweep, |_| printed += 1).await.unwrap();

    assert_eq!(printed, 3);
    let rates: Vec<u64> = report.sweep.iter().map(|s| s.rate).collect();
    assert_eq!(rates, [100, 200, 300]);
    assert_eq!(report.best_rate_within_bound, Some(300));
    assert_eq!(seen.requests.load(Ordering::SeqCst), 20 + 40 + 60);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["best_rate_within_bound"], 300);
    assert_eq!(json["p99_bound_ms"], 60_000.0);
    assert_eq!(json["stopped_because"], "max_rate_reached");
    assert_eq!(json["sweep"].as_array().unwrap().len(), 3);
    assert_eq!(json["sweep"][2]["sent"], 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_stops_at_the_first_step_with_errors() {
    let (_seen, url) = start(Mode::RefuseEveryThird).await;
    let sweep = SweepConfig { start_per_s: 100, growth: Growth::Factor(2.0), max_per_s: 10_000, p99_bound_ms: 60_000.0 };
    let report = run_sweep(&config(&url, 1, 0.2), &sweep, |_| {}).await.unwrap();

    assert_eq!(report.sweep.len(), 1);
    assert_eq!(report.best_rate_within_bound, None);
    assert_eq!(report.stopped_because, "errors");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["best_rate_within_bound"].is_null());
}
