//! The processor simulator's HTTP API (SPEC §4), exercised over real loopback sockets against
//! an in-process `Sim`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use paygate::sim::{Sim, SimConfig};
use tokio::net::{TcpListener, TcpStream};

const ID: &str = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";
const AT: &str = "2025-07-15T12:34:56.000Z";
const TOKEN: &str = "123";

async fn start(cfg: SimConfig) -> (Sim, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(cfg);
    tokio::spawn(sim.clone().serve(listener, std::future::pending()));
    (sim, addr)
}

async fn start_default() -> (Sim, SocketAddr) {
    start(SimConfig::new(50_000)).await
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", "sim");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Sends one request on a fresh connection and reads the whole answer.
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(request(method, path, headers, body)).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body: String::from_utf8(body.to_vec()).unwrap() }
}

fn payment_body(id: &str, amount: &str, at: &str) -> String {
    format!(r#"{{"correlationId":"{id}","amount":{amount},"requestedAt":"{at}"}}"#)
}

async fn pay(addr: SocketAddr, id: &str, amount: &str, at: &str) -> Reply {
    send(addr, "POST", "/payments", &[("content-type", "application/json")], &payment_body(id, amount, at)).await
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    send(addr, method, path, &[("x-rinha-token", TOKEN), ("content-type", "application/json")], body).await
}

async fn summary(addr: SocketAddr, query: &str) -> Reply {
    admin(addr, "GET", &format!("/admin/payments-summary{query}"), "").await
}

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

const PROCESSED: &str = r#"{"message":"payment processed successfully"}"#;
const EMPTY_SUMMARY: &str = r#"{"totalAmount":0.00,"totalRequests":0,"totalFee":0.00,"feePerTransaction":0.05}"#;

#[tokio::test]
async fn payment_is_recorded_and_readable_by_id() {
    let (sim, addr) = start_default().await;
    let r = pay(addr, ID, "19.90", AT).await;
    assert_eq!((r.status, r.body.as_str()), (200, PROCESSED));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(sim.payment_count(), 1);

    let r = send(addr, "GET", &format!("/payments/{}", ID.to_uppercase()), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, format!(r#"{{"correlationId":"{ID}","amount":19.90,"requestedAt":"{AT}"}}"#));
}

#[tokio::test]
async fn requested_at_is_normalised_to_utc_milliseconds() {
    let (_sim, addr) = start_default().await;
    assert_eq!(pay(addr, ID, "0.3", "2025-07-15T14:34:56.7+02:00").await.status, 200);
    let r = send(addr, "GET", &format!("/payments/{ID}"), &[], "").await;
    assert_eq!(r.body, format!(r#"{{"correlationId":"{ID}","amount":0.30,"requestedAt":"2025-07-15T12:34:56.700Z"}}"#));
}

#[tokio::test]
async fn unknown_payment_is_404() {
    let (_sim, addr) = start_default().await;
    assert_eq!(send(addr, "GET", &format!("/payments/{ID}"), &[], "").await.status, 404);
    assert_eq!(send(addr, "GET", "/payments/not-a-uuid", &[], "").await.status, 404);
}

#[tokio::test]
async fn duplicate_payment_is_422() {
    let (sim, addr) = start_default().await;
    assert_eq!(pay(addr, ID, "19.90", AT).await.status, 200);
    let r = pay(addr, ID, "5.00", "2025-07-15T12:35:00.000Z").await;
    assert_eq!(r.status, 422);
    assert_eq!(sim.payment_count(), 1);
    // The first recording stands.
    let r = send(addr, "GET", &format!("/payments/{ID}"), &[], "").await;
    assert_eq!(r.body, format!(r#"{{"correlationId":"{ID}","amount":19.90,"requestedAt":"{AT}"}}"#));
}

#[tokio::test]
async fn concurrent_identical_payments_are_recorded_once() {
    let (sim, addr) = start_default().await;
    // A delay makes the requests overlap inside the processor, not just on the wire.
    assert_eq!(admin(addr, "PUT", "/admin/configurations/delay", r#"{"delay":50}"#).await.status, 200);
    let tasks: Vec<_> = (0..20).map(|_| tokio::spawn(async move { pay(addr, ID, "19.90", AT).await.status })).collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    let mut want = vec![422; 19];
    want.insert(0, 200);
    assert_eq!(statuses, want);
    assert_eq!(sim.payment_count(), 1);
}

#[tokio::test]
async fn failing_processor_answers_500_and_records_nothing() {
    let (sim, addr) = start_default().await;
    let r = admin(addr, "PUT", "/admin/configurations/failure", r#"{"failure":true}"#).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"config":"failure","was":false,"is":true}"#));

    assert_eq!(pay(addr, ID, "19.90", AT).await.status, 500);
    assert_eq!(sim.payment_count(), 0);
    assert_eq!(send(addr, "GET", &format!("/payments/{ID}"), &[], "").await.status, 404);
    assert_eq!(summary(addr, "").await.body, EMPTY_SUMMARY);

    let r = admin(addr, "PUT", "/admin/configurations/failure", r#"{"failure":false}"#).await;
    assert_eq!(r.body, r#"{"config":"failure","was":true,"is":false}"#);
    assert_eq!(pay(addr, ID, "19.90", AT).await.status, 200);
}

#[tokio::test]
async fn initial_failure_mode_comes_from_config() {
    let (sim, addr) = start(SimConfig { failing: true, ..SimConfig::new(50_000) }).await;
    assert_eq!(pay(addr, ID, "19.90", AT).await.status, 500);
    assert_eq!(sim.payment_count(), 0);
}

#[tokio::test]
async fn delay_is_applied_before_answering() {
    let (_sim, addr) = start(SimConfig { rate_limit_seconds: 0, ..SimConfig::new(50_000) }).await;
    let r = admin(addr, "PUT", "/admin/configurations/delay", r#"{"delay":200}"#).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"config":"delay","was":0,"is":200}"#));
    let r = send(addr, "GET", "/payments/service-health", &[], "").await;
    assert_eq!(r.body, r#"{"failing":false,"minResponseTime":200}"#);

    let started = Instant::now();
    assert_eq!(pay(addr, ID, "19.90", AT).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200), "answered after {:?}", started.elapsed());
}

#[tokio::test]
async fn payment_is_recorded_even_if_the_caller_disconnects_during_the_delay() {
    let (sim, addr) = start_default().await;
    admin(addr, "PUT", "/admin/configurations/delay", r#"{"delay":300}"#).await;

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let req = request("POST", "/payments", &[("content-type", "application/json")], &payment_body(ID, "19.90", AT));
    // Driving the connection inside the timeout means giving up also closes the socket.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), async move {
        tokio::select! {
            r = tx.send_request(req) => r.map(|_| ()),
            r = conn => r,
        }
    })
    .await;
    assert!(gave_up.is_err(), "the processor answered before its delay: {gave_up:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.payment_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = send(addr, "GET", &format!("/payments/{ID}"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(summary(addr, "").await.body, r#"{"totalAmount":19.90,"totalRequests":1,"totalFee":0.995,"feePerTransaction":0.05}"#);
}

#[tokio::test]
async fn payment_without_json_content_type_is_415() {
    let (sim, addr) = start_default().await;
    let body = payment_body(ID, "19.90", AT);
    assert_eq!(send(addr, "POST", "/payments", &[], &body).await.status, 415);
    assert_eq!(send(addr, "POST", "/payments", &[("content-type", "text/plain")], &body).await.status, 415);
    assert_eq!(sim.payment_count(), 0);
    let ct = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(send(addr, "POST", "/payments", &ct, &body).await.status, 200);
}

#[tokio::test]
async fn malformed_payment_is_400() {
    let (sim, addr) = start_default().await;
    for body in [
        String::from("{"),
        String::from("null"),
        format!(r#"{{"amount":19.90,"requestedAt":"{AT}"}}"#),
        format!(r#"{{"correlationId":"{ID}","requestedAt":"{AT}"}}"#),
        format!(r#"{{"correlationId":"{ID}","amount":19.90}}"#),
        payment_body("not-a-uuid", "19.90", AT),
        payment_body(ID, "\"19.90\"", AT),
        payment_body(ID, "-1", AT),
        payment_body(ID, "1.001", AT),
        payment_body(ID, "19.90", "2025-02-30T00:00:00Z"),
    ] {
        let r = send(addr, "POST", "/payments", &[("content-type", "application/json")], &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.body.starts_with(r#"{"error":"bad_request","message":"#), "{}", r.body);
    }
    assert_eq!(sim.payment_count(), 0);
}

#[tokio::test]
async fn oversized_payment_body_is_413() {
    let (sim, addr) = start_default().await;
    let body = format!(r#"{{"correlationId":"{ID}","amount":19.90,"requestedAt":"{AT}","pad":"{}"}}"#, "x".repeat(5000));
    let r = send(addr, "POST", "/payments", &[("content-type", "application/json")], &body).await;
    assert_eq!(r.status, 413);
    assert_eq!(sim.payment_count(), 0);
}

#[tokio::test]
async fn payments_beyond_800_in_progress_plus_500_queued_are_429() {
    let (sim, addr) = start_default().await;
    admin(addr, "PUT", "/admin/configurations/delay", r#"{"delay":60000}"#).await;
    for n in 0..1300 {
        tokio::spawn(async move { pay(addr, &id(n), "1.00", AT).await });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.payments_in_flight() < 1300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.payments_in_flight(), 1300);
    let r = pay(addr, &id(5000), "1.00", AT).await;
    assert_eq!(r.status, 429);
    assert_eq!(sim.payments_in_flight(), 1300);
    assert_eq!(sim.payment_count(), 0);
}

#[tokio::test]
async fn health_reports_mode_and_is_rate_limited_with_retry_after() {
    // An hour-long window makes Retry-After exact however slow the machine is.
    let (sim, addr) = start(SimConfig { rate_limit_seconds: 3600, ..SimConfig::new(50_000) }).await;
    let r = send(addr, "GET", "/payments/service-health", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"failing":false,"minResponseTime":0}"#));
    for _ in 0..2 {
        let r = send(addr, "GET", "/payments/service-health", &[], "").await;
        assert_eq!(r.status, 429);
        assert_eq!(r.headers["retry-after"], "3600");
    }
    assert_eq!(sim.health_calls(), 3);
}

#[tokio::test]
async fn health_is_allowed_again_once_the_window_has_passed() {
    let (sim, addr) = start(SimConfig { rate_limit_seconds: 1, delay_ms: 30, failing: true, ..SimConfig::new(50_000) }).await;
    assert_eq!(send(addr, "GET", "/payments/service-health", &[], "").await.status, 200);
    let r = send(addr, "GET", "/payments/service-health", &[], "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(addr, "GET", "/payments/service-health", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"failing":true,"minResponseTime":30}"#));
    assert_eq!(sim.health_calls(), 3);
}

#[tokio::test]
async fn admin_without_the_right_token_is_401() {
    let (sim, addr) = start_default().await;
    let calls = [
        ("GET", "/admin/payments-summary", ""),
        ("PUT", "/admin/configurations/token", r#"{"token":"x"}"#),
        ("PUT", "/admin/configurations/delay", r#"{"delay":100}"#),
        ("PUT", "/admin/configurations/failure", r#"{"failure":true}"#),
        ("POST", "/admin/purge-payments", ""),
    ];
    for (method, path, body) in calls {
        let ct = ("content-type", "application/json");
        assert_eq!(send(addr, method, path, &[ct], body).await.status, 401, "{method} {path} without token");
        let wrong = [ct, ("x-rinha-token", "1234")];
        assert_eq!(send(addr, method, path, &wrong, body).await.status, 401, "{method} {path} wrong token");
    }
    // Nothing changed.
    assert_eq!(sim.set_delay_ms(0), 0);
    assert!(!sim.set_failing(false));
    assert_eq!(summary(addr, "").await.status, 200);
}

#[tokio::test]
async fn token_change_takes_effect_at_once() {
    let (_sim, addr) = start_default().await;
    let r = admin(addr, "PUT", "/admin/configurations/token", r#"{"token":"s3cret"}"#).await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(summary(addr, "").await.status, 401);
    let r = send(addr, "GET", "/admin/payments-summary", &[("x-rinha-token", "s3cret")], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, EMPTY_SUMMARY));
}

#[tokio::test]
async fn bad_admin_bodies_are_400() {
    let (sim, addr) = start_default().await;
    for (path, body) in [
        ("/admin/configurations/token", r#"{"token":""}"#),
        ("/admin/configurations/token", r#"{"token":1}"#),
        ("/admin/configurations/token", r#"{}"#),
        ("/admin/configurations/delay", r#"{"delay":-1}"#),
        ("/admin/configurations/delay", r#"{"delay":"100"}"#),
        ("/admin/configurations/delay", r#"{"delay":1.5}"#),
        ("/admin/configurations/delay", r#"{"delay":60001}"#),
        ("/admin/configurations/failure", r#"{"failure":"yes"}"#),
        ("/admin/configurations/failure", "not json"),
    ] {
        assert_eq!(admin(addr, "PUT", path, body).await.status, 400, "{path} {body}");
    }
    assert_eq!(sim.set_delay_ms(0), 0);
    assert!(!sim.set_failing(false));
    assert_eq!(summary(addr, "").await.status, 200);
}

/// Five payments around the window [12:00:00.000, 12:00:01.000]: one millisecond before, on
/// each bound, inside, and one millisecond after.
async fn record_around_window(addr: SocketAddr) {
    for (n, amount, at) in [
        (1, "1000.00", "2025-07-15T11:59:59.999Z"),
        (2, "1.00", "2025-07-15T12:00:00.000Z"),
        (3, "2.50", "2025-07-15T12:00:00.500Z"),
        (4, "19.90", "2025-07-15T12:00:01.000Z"),
        (5, "3000.00", "2025-07-15T12:00:01.001Z"),
    ] {
        assert_eq!(pay(addr, &id(n), amount, at).await.status, 200);
    }
}

#[tokio::test]
async fn summary_bounds_are_inclusive_to_the_millisecond() {
    let (_sim, addr) = start_default().await;
    record_around_window(addr).await;
    let inside = r#"{"totalAmount":23.40,"totalRequests":3,"totalFee":1.17,"feePerTransaction":0.05}"#;
    let r = summary(addr, "?from=2025-07-15T12:00:00.000Z&to=2025-07-15T12:00:01.000Z").await;
    assert_eq!((r.status, r.body.as_str()), (200, inside));
    // Percent-encoded, with an offset, and with sub-millisecond digits that round inwards.
    let r = summary(addr, "?from=2025-07-15T14%3A00%3A00.000%2B02%3A00&to=2025-07-15T12:00:01.0009Z").await;
    assert_eq!(r.body, inside);
    let r = summary(addr, "?from=2025-07-15T11:59:59.9990001Z&to=2025-07-15T12:00:01.000Z").await;
    assert_eq!(r.body, inside);
    // Widening either bound by one millisecond takes in the neighbour.
    let r = summary(addr, "?from=2025-07-15T11:59:59.999Z&to=2025-07-15T12:00:01.001Z").await;
    assert_eq!(r.body, r#"{"totalAmount":4023.40,"totalRequests":5,"totalFee":201.17,"feePerTransaction":0.05}"#);
    // A single instant, and an empty (reversed) window.
    let r = summary(addr, "?from=2025-07-15T12:00:00.500Z&to=2025-07-15T12:00:00.500Z").await;
    assert_eq!(r.body, r#"{"totalAmount":2.50,"totalRequests":1,"totalFee":0.125,"feePerTransaction":0.05}"#);
    let r = summary(addr, "?from=2025-07-15T12:00:01.000Z&to=2025-07-15T12:00:00.000Z").await;
    assert_eq!(r.body, EMPTY_SUMMARY);
}

#[tokio::test]
async fn summary_with_a_missing_bound_counts_all_payments() {
    let (_sim, addr) = start_default().await;
    record_around_window(addr).await;
    let all = r#"{"totalAmount":4023.40,"totalRequests":5,"totalFee":201.17,"feePerTransaction":0.05}"#;
    for query in ["", "?from=2025-07-15T12:00:00.000Z", "?to=2025-07-15T12:00:00.000Z", "?other=1"] {
        assert_eq!(summary(addr, query).await.body, all, "{query}");
    }
}

#[tokio::test]
async fn summary_fee_uses_the_configured_rate_exactly() {
    let (_sim, addr) = start(SimConfig::new(150_000)).await;
    for n in 0..3 {
        assert_eq!(pay(addr, &id(n), "19.90", AT).await.status, 200);
    }
    let r = summary(addr, "").await;
    assert_eq!(r.body, r#"{"totalAmount":59.70,"totalRequests":3,"totalFee":8.955,"feePerTransaction":0.15}"#);
}

#[tokio::test]
async fn summary_with_a_malformed_bound_is_400() {
    let (_sim, addr) = start_default().await;
    for query in ["?from=yesterday&to=2025-07-15T12:00:00.000Z", "?from=2025-07-15T12:00:00.000Z&to=", "?to=%3", "?to=a&to=b"] {
        assert_eq!(summary(addr, query).await.status, 400, "{query}");
    }
}

#[tokio::test]
async fn purge_removes_all_payments() {
    let (sim, addr) = start_default().await;
    record_around_window(addr).await;
    let r = admin(addr, "POST", "/admin/purge-payments", "").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"message":"All payments purged."}"#));
    assert_eq!(sim.payment_count(), 0);
    assert_eq!(summary(addr, "").await.body, EMPTY_SUMMARY);
    assert_eq!(send(addr, "GET", &format!("/payments/{}", id(2)), &[], "").await.status, 404);
    // A purged id is new again.
    assert_eq!(pay(addr, &id(2), "1.00", AT).await.status, 200);
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let (_sim, addr) = start_default().await;
    assert_eq!(send(addr, "GET", "/nope", &[], "").await.status, 404);
    assert_eq!(send(addr, "GET", "/payments/a/b", &[], "").await.status, 404);
    for (method, path, allow) in [
        ("GET", "/payments", "POST"),
        ("POST", "/payments/service-health", "GET"),
        ("DELETE", "/payments/4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "GET"),
        ("GET", "/admin/purge-payments", "POST"),
        ("POST", "/admin/configurations/delay", "PUT"),
    ] {
        let r = send(addr, method, path, &[], "").await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
}
