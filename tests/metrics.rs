//! Prometheus metrics: after a short load through a gateway whose default processor fails for
//! a moment, `/metrics` on the metrics listener parses as the text exposition format and shows
//! every metric, non-zero where traffic flowed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use paygate::domain::CorrelationId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// Parses the text exposition format strictly enough to catch a malformed line: `# HELP`,
/// `# TYPE`, `# UNIT` and `# EOF` comments, and samples whose name is a metric name, whose
/// labels are `key="value"` pairs, and whose value is a float. Every sample's family must have
/// been typed before it.
fn parse(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    assert_eq!(text.lines().last(), Some("# EOF"), "exposition must end with # EOF");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            if kind == "EOF" {
                continue;
            }
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "bad comment: {line}");
            let name = parts.next().unwrap_or_else(|| panic!("no name: {line}"));
            assert!(name_ok(name), "bad name: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "unknown", "info", "stateset", "gaugehistogram"].contains(&t),
                    "{line}"
                );
                typed.push(name.to_string());
            }
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"))),
            None => (head, ""),
        };
        assert!(name_ok(name), "bad sample name: {line}");
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label {pair}: {line}"));
                assert!(name_ok(k) && !v.contains('\n'), "bad label: {line}");
            }
        }
        assert!(typed.iter().any(|t| name.starts_with(t.as_str())), "sample before its TYPE: {line}");
        samples.push(Sample { name: name.to_string(), labels: labels.to_string(), value });
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_and_show_every_series_after_a_short_load() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    config.max_defer = Duration::ZERO;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", metrics_listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let gw = tokio::spawn(paygate::gateway::run_with(config.clone(), listener, Some(metrics_listener), async move {
        let _ = stopped.await;
    }));

    for _ in 0..20 {
        assert_eq!(http.pay(&url, CorrelationId::random(), "19.90").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "processed at default", || async { default.sim.payment_count() == 20 }).await;
    http.set_failing(&default, true).await;
    for _ in 0..10 {
        assert_eq!(http.pay(&url, CorrelationId::random(), "5.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "processed at fallback", || async { fallback.sim.payment_count() == 10 }).await;
    eventually_books_agree(&http, &url, &sims).await;
    assert_eq!(http.get(&format!("{url}/payments-summary")).await.0, StatusCode::OK);
    assert_eq!(http.get(&format!("{url}/health")).await.0, StatusCode::OK);
    assert_eq!(http.get(&format!("{url}/nowhere")).await.0, StatusCode::NOT_FOUND);

    let (status, body) = http.get(&metrics_url).await;
    assert_eq!(status, StatusCode::OK);
    let samples = parse(std::str::from_utf8(&body).unwrap());
    let mut by_name: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in &samples {
        by_name.entry(s.name.as_str()).or_default().push(s);
    }
    let value = |name: &str, labels: &str| {
        by_name
            .get(name)
            .and_then(|v| v.iter().find(|s| s.labels.contains(labels)))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{}", String::from_utf8_lossy(&body)))
    };
    assert_eq!(value("paygate_http_requests_total", r#"route="post_payment",status="202""#), 30.0);
    assert_eq!(value("paygate_http_requests_total", r#"route="other",status="404""#), 1.0);
    assert_eq!(value("paygate_http_request_duration_seconds_count", r#"route="post_payment""#), 30.0);
    assert_eq!(value("paygate_payments_accepted_total", ""), 30.0);
    assert_eq!(value("paygate_payments_processed_total", r#"processor="default""#), 20.0);
    assert_eq!(value("paygate_payments_processed_total", r#"processor="fallback""#), 10.0);
    assert!(value("paygate_payments_rejected_total", r#"processor="default""#) >= 1.0);
    assert_eq!(value("paygate_upstream_request_duration_seconds_count", r#"processor="default",outcome="recorded""#), 20.0);
    assert!(value("paygate_upstream_request_duration_seconds_count", r#"processor="default",outcome="not_recorded""#) >= 1.0);
    assert_eq!(value("paygate_payments_pending", ""), 0.0);
    assert_eq!(value("paygate_oldest_pending_payment_age_seconds", ""), 0.0);
    assert_eq!(value("paygate_payments_pinned", r#"processor="default""#), 0.0);
    assert_eq!(value("paygate_breaker_state", r#"processor="fallback",state="closed""#), 1.0);
    assert_eq!(value("paygate_breaker_state", r#"processor="default",state="closed""#), 0.0);
    assert_eq!(value("paygate_dispatch_work_items", ""), 0.0);
    assert!(value("paygate_journal_group_commit_records_count", "") >= 1.0);
    assert!(value("paygate_journal_fdatasync_duration_seconds_count", "") >= 1.0);
    assert!(value("paygate_journal_written_bytes_total", "") > 0.0);
    assert_eq!(value("paygate_journal_write_failures_total", ""), 0.0);
    assert!(value("paygate_http_open_connections", "") >= 1.0, "the test client keeps its connection open");

    let _ = stop.send(());
    gw.await.unwrap().unwrap();
    std::fs::remove_dir_all(&config.data_dir).unwrap();
}
