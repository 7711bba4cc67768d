//! Graceful shutdown with real processes: on SIGTERM `paygate serve` answers 503 on `/health`
//! at once while it keeps accepting payments for the drain period, then stops accepting,
//! finishes the requests in flight and exits 0; every payment it answered 202 is forwarded
//! exactly once after a restart. A second signal exits at once. Also: `--log-format json`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::procs::{self, Proc, TempDir};
use common::{Http, SIM_TOKEN, cents};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use paygate::domain::CorrelationId;
use tokio::net::TcpStream;
use tokio::time::Instant;

const CLIENTS: usize = 20;
/// The drain the gateway under test runs with.
const DRAIN_MS: &str = "1000";
/// Load before the signal, so that connections are busy when it comes.
const LOAD_BEFORE_SIGNAL_MS: u64 = 500;
/// Bounds on what should take far less; they only keep a broken gateway from hanging a test.
const EXIT_LIMIT_MS: u64 = 20_000;
const HEALTH_LIMIT_MS: u64 = 5_000;
const FORWARD_LIMIT_MS: u64 = 60_000;
const LOOKUP_WORKERS: usize = 16;

/// One payment a client posted, and what came back.
#[derive(Clone, Debug)]
struct Sent {
    id: CorrelationId,
    cents: u64,
    sent_at: Instant,
    /// The status, or the transport error (no answer).
    answer: Result<u16, String>,
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Posts fresh payments over one kept-alive connection (a new one when the server closes it)
/// until the gateway refuses connections or `stop` is set.
async fn client(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut s = match sender.take() {
            Some(s) => s,
            None => match connect(addr).await {
                Some(s) => s,
                // The listener is closed: the gateway has stopped accepting.
                None => break,
            },
        };
        // Closed by the server between requests (a graceful close): nothing was sent on it.
        if s.ready().await.is_err() {
            continue;
        }
        let id = CorrelationId::random();
        let cents = 100 + (n as u64 * 7_919 + sent.len() as u64) % 10_000;
        let body = format!(r#"{{"correlationId":"{id}","amount":{}.{:02}}}"#, cents / 100, cents % 100);
        let req = Request::post("/payments")
            .header("host", "paygate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let sent_at = Instant::now();
        let answer = match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.into_body().collect().await {
                    Ok(_) => {
                        sender = Some(s);
                        Ok(status)
                    }
                    Err(e) => Err(format!("answer {status} cut: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        sent.push(Sent { id, cents, sent_at, answer });
    }
    sent
}

/// `GET path` on a fresh connection: the status, or `None` when the gateway does not answer.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "paygate").body(Empty::<Bytes>::new()).unwrap();
    Some(sender.send_request(req).await.ok()?.status().as_u16())
}

/// Polls `/health` until it answers 503; returns when it first did.
async fn health_turns_503(addr: SocketAddr) -> Instant {
    let deadline = Instant::now() + Duration::from_millis(HEALTH_LIMIT_MS);
    loop {
        match get_status(addr, "/health").await {
            Some(503) => return Instant::now(),
            Some(200) => {}
            other => panic!("/health answered {other:?} before it answered 503"),
        }
        assert!(Instant::now() < deadline, "/health still 200 {HEALTH_LIMIT_MS} ms after the signal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A simulator's record of `id`: its amount in cents, or `None`.
async fn sim_has(http: &Http, sim: &str, id: CorrelationId) -> Option<u128> {
    let (status, body) = http.get(&format!("{sim}/payments/{id}")).await;
    match status.as_u16() {
        200 => Some(cents(&serde_json::from_slice::<serde_json::Value>(&body).unwrap()["amount"])),
        404 => None,
        s => panic!("{sim}/payments/{id}: {s}"),
    }
}

/// The whole books of a simulator as (count, cents).
async fn sim_books(http: &Http, sim: &str) -> (u64, u128) {
    let v = http.get_json(&format!("{sim}/admin/payments-summary"), &[("X-Rinha-Token", SIM_TOKEN)]).await;
    (v["totalRequests"].as_u64().unwrap(), cents(&v["totalAmount"]))
}

async fn gateway_books(http: &Http, gateway: &str) -> [(u64, u128); 2] {
    let v = http.get_json(&format!("{gateway}/payments-summary"), &[]).await;
    ["default", "fallback"].map(|p| (v[p]["totalRequests"].as_u64().unwrap(), cents(&v[p]["totalAmount"])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_finishes_in_flight_requests_exits_0_and_loses_nothing() {
    let dir = TempDir::new("shutdown");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    let data = dir.0.join("data");
    let args = procs::gateway_args(&data, &default, &fallback, &[]);
    let ready = "paygate listening on";
    let mut gateway = Proc::start_with_env(&args, &[("PAYGATE_DRAIN_MS", DRAIN_MS)], ready, &dir.0.join("gateway-0.log"));
    let addr = addr_of(&gateway.url);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS).map(|n| tokio::spawn(client(addr, n, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(LOAD_BEFORE_SIGNAL_MS)).await;
    let signalled_at = Instant::now();
    gateway.signal("TERM");
    let health_503_at = health_turns_503(addr).await;
    let (gateway, status) = tokio::task::spawn_blocking(move || {
        let status = gateway.wait_exit(Duration::from_millis(EXIT_LIMIT_MS));
        (gateway, status)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.extend(c.await.unwrap());
    }
    let log = std::fs::read_to_string(dir.0.join("gateway-0.log")).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit status {status:?}; log:\n{log}");
    drop(gateway);

    let before: Vec<&Sent> = sent.iter().filter(|s| s.sent_at < signalled_at).collect();
    assert!(
        before.iter().all(|s| s.answer == Ok(202)),
        "a payment before the signal was not accepted: {:?}",
        before.iter().find(|s| s.answer != Ok(202))
    );
    let during_drain = sent.iter().filter(|s| s.sent_at > health_503_at && s.answer == Ok(202)).count();
    assert!(during_drain > 0, "no payment was accepted while /health answered 503");
    let odd: Vec<&Sent> = sent.iter().filter(|s| matches!(s.answer, Ok(status) if status != 202 && status != 503)).collect();
    assert!(odd.is_empty(), "answers other than 202 and 503: {odd:?}");
    let accepted: Vec<Sent> = sent.iter().filter(|s| s.answer == Ok(202)).cloned().collect();
    let unanswered: Vec<Sent> = sent.iter().filter(|s| s.answer.is_err()).cloned().collect();

    // Same data dir: whatever was accepted and not yet forwarded goes out now.
    let gateway = Proc::start(&args, ready, &dir.0.join("gateway-1.log"));
    let http = Http::default();
    // A request that got no answer must be one the gateway never took in: had it read the
    // request, it would have finished it before closing the connection.
    let cut: Vec<CorrelationId> = common::lookup_all(&unanswered, LOOKUP_WORKERS, {
        let (http, url) = (http.clone(), gateway.url.clone());
        move |s: Sent| {
            let (http, url) = (http.clone(), url.clone());
            async move { (http.get(&format!("{url}/payments/{}", s.id)).await.0.as_u16() != 404).then_some(s.id) }
        }
    })
    .await
    .into_iter()
    .flatten()
    .collect();
    assert!(cut.is_empty(), "{} payments were taken in but their answer was cut, e.g. {}", cut.len(), cut[0]);

    let want_count = accepted.len() as u64;
    let want_cents: u128 = accepted.iter().map(|s| u128::from(s.cents)).sum();
    let deadline = Instant::now() + Duration::from_millis(FORWARD_LIMIT_MS);
    loop {
        let g = gateway_books(&http, &gateway.url).await;
        let sims = [sim_books(&http, &default.url).await, sim_books(&http, &fallback.url).await];
        let total = (g[0].0 + g[1].0, g[0].1 + g[1].1);
        if g == sims && total == (want_count, want_cents) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {FORWARD_LIMIT_MS} ms: gateway {g:?}, simulators {sims:?}, accepted {want_count} for {want_cents} cents"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = common::lookup_all(&accepted, LOOKUP_WORKERS, {
        let (http, d, f) = (http.clone(), default.url.clone(), fallback.url.clone());
        move |s: Sent| {
            let (http, d, f) = (http.clone(), d.clone(), f.clone());
            async move { (s.id, u128::from(s.cents), [sim_has(&http, &d, s.id).await, sim_has(&http, &f, s.id).await]) }
        }
    })
    .await;
    for (id, cents, at) in recorded {
        let holders: Vec<u128> = at.into_iter().flatten().collect();
        assert_eq!(holders, vec![cents], "payment {id} ({cents} cents) must be recorded by exactly one processor");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_during_the_drain_exits_at_once_with_143() {
    let dir = TempDir::new("shutdown-twice");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    let args = procs::gateway_args(&dir.0.join("data"), &default, &fallback, &[]);
    // A drain far longer than the wait below: only the second signal can end it in time.
    let mut gateway = Proc::start_with_env(&args, &[("PAYGATE_DRAIN_MS", "60000")], "paygate listening on", &dir.0.join("gateway.log"));
    gateway.signal("TERM");
    health_turns_503(addr_of(&gateway.url)).await;
    gateway.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(Duration::from_millis(EXIT_LIMIT_MS))).await.unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(143), "exit status {status:?}");
}

#[tokio::test]
async fn json_log_format_writes_one_object_per_line() {
    let dir = TempDir::new("json-logs");
    let args =
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.0.join("data").to_str().unwrap(), "--log-format", "json"].map(String::from);
    let log = dir.0.join("gateway.log");
    let _gateway = Proc::start(&args, "paygate listening on", &log);
    common::eventually(Duration::from_millis(HEALTH_LIMIT_MS), "the `paygate serving` log line", || async {
        std::fs::read_to_string(&log).unwrap().contains("paygate serving")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let mut messages = Vec::new();
    // Every line but the listening line on stdout is one JSON object.
    for line in text.lines().filter(|l| !l.starts_with("paygate listening on ") && !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        messages.push(v);
    }
    let limit = messages.iter().find(|v| v["message"] == "open-files limit").expect("the open-files limit is logged");
    assert!(limit["soft"].is_u64() && limit["hard"].is_u64(), "{limit}");
    let conns = messages.iter().find(|v| v["message"] == "client connection limit").expect("the connection limit is logged");
    assert!(conns["max_connections"].as_u64().is_some_and(|n| n > 0), "{conns}");
    assert!(messages.iter().any(|v| v["message"] == "paygate serving" && v["level"] == "INFO"));
}
