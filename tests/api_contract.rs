//! The gateway's HTTP contract (SPEC §2) over real loopback sockets: exact statuses and error
//! codes for bad input, summary windows, admin protection, and the health monitor's manners.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use paygate::domain::CorrelationId;
use paygate::sim::SimConfig;

async fn error_code(http: &Http, method: Method, url: &str, body: &str) -> (StatusCode, String) {
    let (status, bytes) = http.send(method, url, &[("content-type", "application/json")], body.to_string()).await;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if status.is_client_error() || status.is_server_error() {
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{url} {body}: error without message");
    }
    (status, v["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_exact_status_and_code_and_the_service_keeps_serving() {
    let (default, fallback) = start_pair().await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    let http = Http::default();
    let id = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";
    let pay = format!("{}/payments", gw.url);
    let huge = format!(r#"{{"correlationId":"{id}","amount":1,"pad":"{}"}}"#, "x".repeat(5_000));
    let cases: Vec<(Method, String, String, StatusCode, &str)> = vec![
        (Method::POST, pay.clone(), "{not json".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        (Method::POST, pay.clone(), "".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        (Method::POST, pay.clone(), "[1,2]".into(), StatusCode::BAD_REQUEST, "wrong_type"),
        (Method::POST, pay.clone(), format!(r#"{{"correlationId":"{id}","amount":"19.90"}}"#), StatusCode::BAD_REQUEST, "wrong_type"),
        (Method::POST, pay.clone(), r#"{"correlationId":42,"amount":1}"#.into(), StatusCode::BAD_REQUEST, "wrong_type"),
        (Method::POST, pay.clone(), r#"{"amount":1}"#.into(), StatusCode::BAD_REQUEST, "missing_field"),
        (Method::POST, pay.clone(), format!(r#"{{"correlationId":"{id}"}}"#), StatusCode::BAD_REQUEST, "missing_field"),
        (
            Method::POST,
            pay.clone(),
            r#"{"correlationId":"not-a-uuid","amount":1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_correlation_id",
        ),
        (
            Method::POST,
            pay.clone(),
            format!(r#"{{"correlationId":"{id}","amount":0}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            Method::POST,
            pay.clone(),
            format!(r#"{{"correlationId":"{id}","amount":-1}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            Method::POST,
            pay.clone(),
            format!(r#"{{"correlationId":"{id}","amount":1.001}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            Method::POST,
            pay.clone(),
            format!(r#"{{"correlationId":"{id}","amount":1e3}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            Method::POST,
            pay.clone(),
            format!(r#"{{"correlationId":"{id}","amount":10000000000000}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (Method::POST, pay.clone(), huge, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        (Method::GET, pay.clone(), "".into(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::DELETE, format!("{}/payments-summary", gw.url), "".into(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::GET, format!("{}/nope", gw.url), "".into(), StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, format!("{}/payments/{id}", gw.url), "".into(), StatusCode::NOT_FOUND, "payment_not_found"),
        (Method::POST, format!("{}/purge-payments", gw.url), "".into(), StatusCode::FORBIDDEN, "forbidden"),
    ];
    for (method, url, body, status, code) in cases {
        let got = error_code(&http, method.clone(), &url, &body).await;
        assert_eq!(got, (status, code.to_string()), "{method} {url} {body:.80}");
    }
    let (status, _) = http.send(Method::POST, &format!("{}/purge-payments", gw.url), &[("x-admin-token", "wrong")], "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Still serving, and none of the rejects left a trace.
    assert_eq!(http.pay(&gw.url, CorrelationId::parse(id.as_bytes()).unwrap(), "19.90").await, StatusCode::ACCEPTED);
    assert_eq!(http.get(&format!("{}/health", gw.url)).await.0, StatusCode::OK);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_with_the_admin_token_forgets_every_payment() {
    let (default, fallback) = start_pair().await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    let http = Http::default();
    let id = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, id, "3.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    let (status, _) = http.send(Method::POST, &format!("{}/purge-payments", gw.url), &[("X-Admin-Token", ADMIN_TOKEN)], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(http.get(&format!("{}/payments/{id}", gw.url)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "default"), (0, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_windows_are_inclusive_to_the_millisecond() {
    let (default, fallback) = start_pair().await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    let http = Http::default();
    let id = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, id, "12.34").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    eventually_books_agree(&http, &gw.url, &[("default", &default), ("fallback", &fallback)]).await;
    let p = http.get_json(&format!("{}/payments/{id}", gw.url), &[]).await;
    assert_eq!((p["status"].as_str(), p["processor"].as_str(), cents(&p["amount"])), (Some("processed"), Some("default"), 1234));
    let at =
        paygate::domain::UtcMillis::parse_rfc3339(p["requestedAt"].as_str().unwrap().as_bytes(), paygate::domain::time::Rounding::Floor)
            .unwrap();
    let ts = |ms: i64| paygate::domain::UtcMillis(at.0 + ms).to_string();
    let count = |q: String| {
        let (http, url) = (http.clone(), gw.url.clone());
        async move { totals_of(&http.gateway_summary(&url, &q).await, "default") }
    };
    assert_eq!(count(format!("?from={}&to={}", ts(0), ts(0))).await, (1, 1234));
    assert_eq!(count(format!("?from={}&to={}", ts(-1), ts(1))).await, (1, 1234));
    assert_eq!(count(format!("?from={}&to={}", ts(1), ts(5))).await, (0, 0));
    assert_eq!(count(format!("?from={}&to={}", ts(-5), ts(-1))).await, (0, 0));
    assert_eq!(count(format!("?from={}&to={}", ts(1), ts(-1))).await, (0, 0), "from > to is empty");
    assert_eq!(count(format!("?from={}", ts(0))).await, (1, 1234));
    assert_eq!(count(format!("?to={}", ts(0))).await, (1, 1234));
    assert_eq!(count(format!("?to={}", ts(-1))).await, (0, 0));
    assert_eq!(count(String::new()).await, (1, 1234));
    // The processor agrees on every one of those windows.
    for q in [format!("?from={}&to={}", ts(0), ts(0)), format!("?from={}&to={}", ts(1), ts(5))] {
        assert_eq!(audit(&http, &gw.url, &[("default", &default), ("fallback", &fallback)], &q).await, Vec::<String>::new());
    }
    for bad in ["?from=yesterday", "?to=2025-13-01T00:00:00Z", "?from=2025-07-15", "?from=2025-07-15T12:34:56.000Z&to=12"] {
        let got = error_code(&http, Method::GET, &format!("{}/payments-summary{bad}", gw.url), "").await;
        assert_eq!(got, (StatusCode::BAD_REQUEST, "invalid_timestamp".into()), "{bad}");
    }
    gw.stop().await;
}

/// Over 30 s the monitor may call each processor's health endpoint at most 7 times (one per
/// 5 s), and after a 429 it waits at least the `Retry-After` it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_monitor_respects_the_rate_limit_and_retry_after() {
    let default = start_sim(SimConfig::new(50_000)).await;
    // A stricter limit than our interval, so that the monitor does get 429s.
    let fallback = start_sim(SimConfig { rate_limit_seconds: 12, ..SimConfig::new(150_000) }).await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    gw.stop().await;
    assert!(default.sim.health_calls() <= 7, "default saw {} health calls", default.sim.health_calls());
    assert!(default.sim.health_calls() >= 5, "the monitor must actually poll");
    assert!(fallback.sim.health_calls() <= 7);
    let log = fallback.sim.health_log();
    let refused: Vec<_> = log.windows(2).filter_map(|w| w[0].1.map(|wait| (wait, w[1].0 - w[0].0))).collect();
    assert!(!refused.is_empty(), "expected at least one 429: {log:?}");
    for (told, waited) in refused {
        let told_secs = Duration::from_secs(told.as_nanos().div_ceil(1_000_000_000) as u64);
        assert!(waited >= told_secs, "called again after {waited:?} though told to wait {told_secs:?}");
    }
}
