//! Fault paths the contest never walks: processors that hang, breakers whose probe was
//! abandoned, journal repairs while requests are on the wire, restarts with the processor list
//! changed, purges with requests in flight, and a disk that stays full. Every test runs the
//! gateway in-process against simulators on loopback and compares books exactly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use paygate::domain::CorrelationId;
use paygate::journal::FaultSwitch;
use paygate::sim::SimConfig;
use tokio::net::TcpListener;

async fn health(http: &Http, gateway: &str) -> serde_json::Value {
    http.get_json(&format!("{gateway}/health"), &[]).await
}

async fn pinned(http: &Http, gateway: &str, processor: &str) -> u64 {
    health(http, gateway).await["processors"][processor]["pinned"].as_u64().expect("pinned count in /health")
}

async fn purge_sim(http: &Http, sim: &RunningSim) {
    let (status, _) = http.send(Method::POST, &format!("{}/admin/purge-payments", sim.url), &[("X-Rinha-Token", SIM_TOKEN)], "").await;
    assert_eq!(status, StatusCode::OK);
}

/// Where each id is recorded, by asking both simulators: (at default, at fallback).
async fn placements(http: &Http, default: &RunningSim, fallback: &RunningSim, ids: &[CorrelationId]) -> Vec<(bool, bool)> {
    let mut out = Vec::new();
    for id in ids {
        let at = |sim: &RunningSim| format!("{}/payments/{id}", sim.url);
        out.push((http.get(&at(default)).await.0 == StatusCode::OK, http.get(&at(fallback)).await.0 == StatusCode::OK));
    }
    out
}

async fn processed_count(http: &Http, gateway: &str) -> u64 {
    let g = http.gateway_summary(gateway, "").await;
    totals_of(&g, "default").0 + totals_of(&g, "fallback").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_pinned_payments_than_dispatch_workers_do_not_stop_forwarding() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    // Default takes every request and never answers in time, nor records: a hang.
    http.set_delay(&default, 1_000).await;
    http.set_failing(&default, true).await;
    let mut config = gateway_config(&sims);
    config.dispatch_workers = 4;
    config.upstream_timeout = Duration::from_millis(200);
    config.max_defer = Duration::from_millis(500);
    let gw = start_gateway(config).await;

    let mut ids = Vec::new();
    let post = async |n: usize, ids: &mut Vec<CorrelationId>| {
        for _ in 0..n {
            let id = CorrelationId::random();
            assert_eq!(http.pay(&gw.url, id, "3.00").await, StatusCode::ACCEPTED);
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Until more payments are pinned to the hanging processor than there are workers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pinned(&http, &gw.url, "default").await <= 8 {
        assert!(tokio::time::Instant::now() < deadline, "payments never got pinned");
        post(4, &mut ids).await;
    }
    // Every payment not pinned still reaches fallback while default hangs.
    post(20, &mut ids).await;
    eventually(Duration::from_secs(20), "every unpinned payment forwarded to fallback", || async {
        processed_count(&http, &gw.url).await + pinned(&http, &gw.url, "default").await == ids.len() as u64
    })
    .await;
    assert_eq!(http.sim_totals(&default, "").await.0, 0);

    // Default heals: the resolver records each pinned payment there, once.
    http.set_failing(&default, false).await;
    http.set_delay(&default, 0).await;
    eventually(Duration::from_secs(30), "all resolved", || async { processed_count(&http, &gw.url).await == ids.len() as u64 }).await;
    for (i, (at_default, at_fallback)) in placements(&http, &default, &fallback, &ids).await.into_iter().enumerate() {
        assert!(at_default != at_fallback, "payment {} recorded at default: {at_default}, at fallback: {at_fallback}", ids[i]);
    }
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(health(&http, &gw.url).await["workItems"], 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_probe_does_not_leave_a_breaker_half_open() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    http.set_failing(&default, true).await;
    http.set_failing(&fallback, true).await;
    let gw = start_gateway(gateway_config(&sims)).await;
    for _ in 0..20 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "1.00").await, StatusCode::ACCEPTED);
    }
    // Let the breakers open and probes come and go, then purge what is waiting.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (status, _) = http.send(Method::POST, &format!("{}/purge-payments", gw.url), &[("X-Admin-Token", ADMIN_TOKEN)], "").await;
    assert_eq!(status, StatusCode::OK);
    http.set_failing(&default, false).await;
    http.set_failing(&fallback, false).await;
    let fresh: Vec<_> = (0..5).map(|_| CorrelationId::random()).collect();
    for id in &fresh {
        assert_eq!(http.pay(&gw.url, *id, "2.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "new payments forwarded after the purge", || async { processed_count(&http, &gw.url).await == 5 })
        .await;
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_repair_while_sends_are_on_the_wire_never_charges_twice() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    // Default answers 500 after 2 s; fallback records after 1.5 s.
    http.set_delay(&default, 2_000).await;
    http.set_failing(&default, true).await;
    http.set_delay(&fallback, 1_500).await;
    let mut config = gateway_config(&sims);
    let faults = Arc::new(FaultSwitch::default());
    config.faults = Some(faults.clone());
    config.max_defer = Duration::ZERO;
    let gw = start_gateway(config).await;
    let t0 = tokio::time::Instant::now();
    let ids: Vec<_> = (0..10).map(|_| CorrelationId::random()).collect();
    for id in &ids {
        assert_eq!(http.pay(&gw.url, *id, "7.00").await, StatusCode::ACCEPTED);
    }
    // While their requests to default are on the wire, the disk fails once and is repaired:
    // the ledger rebuilds its state from disk, where these payments are sent to default.
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.set(true);
    assert_eq!(http.pay(&gw.url, CorrelationId::random(), "1.00").await, StatusCode::SERVICE_UNAVAILABLE);
    faults.set(false);
    // Any command makes the ledger look at the journal (the gateway also notices on its own).
    let _ = http.get(&format!("{}/payments/{}", gw.url, ids[0])).await;
    eventually(Duration::from_secs(10), "journal repaired", || async {
        let (status, body) = http.get(&format!("{}/health", gw.url)).await;
        status == StatusCode::OK && serde_json::from_slice::<serde_json::Value>(&body).unwrap()["journal"]["rebuilds"] == 1
    })
    .await;
    // Default's 500s arrive at about 2 s and the payments move to fallback (which records
    // them at about 3.5 s); default heals just after, so any stale re-send to it that is still
    // on the wire would be recorded there too.
    tokio::time::sleep_until(t0 + Duration::from_millis(2_200)).await;
    http.set_failing(&default, false).await;
    http.set_delay(&default, 0).await;
    eventually(Duration::from_secs(30), "all processed", || async { processed_count(&http, &gw.url).await == 10 }).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for (i, (at_default, at_fallback)) in placements(&http, &default, &fallback, &ids).await.into_iter().enumerate() {
        assert!(at_default != at_fallback, "payment {} recorded at default: {at_default}, at fallback: {at_fallback}", ids[i]);
    }
    assert_eq!(default.sim.payment_count() + fallback.sim.payment_count(), 10);
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_the_processors_in_another_order_keeps_each_ones_books() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    config.max_defer = Duration::ZERO;
    let gw = start_gateway(config.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(CorrelationId::random());
        assert_eq!(http.pay(&gw.url, *ids.last().unwrap(), "4.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "at default", || async { default.sim.payment_count() == 6 }).await;
    http.set_failing(&default, true).await;
    for _ in 0..4 {
        ids.push(CorrelationId::random());
        assert_eq!(http.pay(&gw.url, *ids.last().unwrap(), "5.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "at fallback", || async { fallback.sim.payment_count() == 4 }).await;
    gw.stop_keeping_data().await;

    config.processors.reverse();
    let gw = start_gateway(config).await;
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "default"), (6, 6 * 400));
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "fallback"), (4, 4 * 500));
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    let v = http.get_json(&format!("{}/payments/{}", gw.url, ids[0]), &[]).await;
    assert_eq!(v["processor"], "default");
    let v = http.get_json(&format!("{}/payments/{}", gw.url, ids[9]), &[]).await;
    assert_eq!(v["processor"], "fallback");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_without_a_processor_that_holds_unresolved_payments_is_refused() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    http.set_delay(&default, 2_000).await;
    http.set_failing(&default, true).await;
    let mut config = gateway_config(&sims);
    config.upstream_timeout = Duration::from_millis(200);
    config.max_defer = Duration::from_secs(60);
    let gw = start_gateway(config.clone()).await;
    for _ in 0..3 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "4.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "three pinned", || async { pinned(&http, &gw.url, "default").await == 3 }).await;
    gw.stop_keeping_data().await;

    let mut without = config.clone();
    without.processors.retain(|(n, _)| n == "fallback");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = paygate::gateway::run(without, listener, std::future::ready(())).await.expect_err("must refuse to start");
    assert!(err.contains("`default`") && err.contains("3 payments"), "{err}");

    // With it back, they are resolved there once it heals.
    http.set_failing(&default, false).await;
    http.set_delay(&default, 0).await;
    let gw = start_gateway(config).await;
    eventually(Duration::from_secs(20), "resolved", || async { processed_count(&http, &gw.url).await == 3 }).await;
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_answers_only_after_requests_on_the_wire_have_landed() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    http.set_delay(&default, 800).await;
    let gw = start_gateway(gateway_config(&sims)).await;
    for _ in 0..10 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "6.00").await, StatusCode::ACCEPTED);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The operator's order (README): purge the gateway first, then the processors.
    let (status, _) = http.send(Method::POST, &format!("{}/purge-payments", gw.url), &[("X-Admin-Token", ADMIN_TOKEN)], "").await;
    assert_eq!(status, StatusCode::OK);
    purge_sim(&http, &default).await;
    purge_sim(&http, &fallback).await;
    // Longer than the processor's delay: anything still on the wire would have landed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!((default.sim.payment_count(), fallback.sim.payment_count()), (0, 0));
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_stays_full_neither_rebuilds_per_payment_nor_duplicates_work() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    let faults = Arc::new(FaultSwitch::default());
    config.faults = Some(faults.clone());
    let gw = start_gateway(config).await;
    // Five payments wait for processors that fail.
    http.set_failing(&default, true).await;
    http.set_failing(&fallback, true).await;
    let pending: Vec<_> = (0..5).map(|_| CorrelationId::random()).collect();
    for id in &pending {
        assert_eq!(http.pay(&gw.url, *id, "8.00").await, StatusCode::ACCEPTED);
    }
    faults.set_full(true);
    for _ in 0..40 {
        let status = http.pay(&gw.url, CorrelationId::random(), "1.00").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http.get(&format!("{}/health", gw.url)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    faults.set_full(false);
    eventually(Duration::from_secs(10), "resumes by itself", || async {
        http.get(&format!("{}/health", gw.url)).await.0 == StatusCode::OK
    })
    .await;
    let h = health(&http, &gw.url).await;
    assert_eq!(h["journal"]["rebuilds"], 1, "{h}");
    assert_eq!(h["journal"]["requeued"], 0, "{h}");
    assert_eq!(h["workItems"], 5, "{h}");
    assert!(h["journal"]["repairs"].as_u64().unwrap() <= 4, "one repair per second at most: {h}");

    http.set_failing(&default, false).await;
    http.set_failing(&fallback, false).await;
    let later = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, later, "9.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(20), "all processed", || async { processed_count(&http, &gw.url).await == 6 }).await;
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(default.sim.payment_count() + fallback.sim.payment_count(), 6);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_simulator_pair_is_still_consistent_with_a_slow_fallback() {
    // Guards the resolver's everyday path: timeouts at fallback resolve where they landed.
    let default = start_sim(SimConfig::new(50_000)).await;
    let fallback = start_sim(SimConfig::new(150_000)).await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    http.set_failing(&default, true).await;
    http.set_delay(&fallback, 400).await;
    let mut config = gateway_config(&sims);
    config.upstream_timeout = Duration::from_millis(200);
    config.max_defer = Duration::ZERO;
    let gw = start_gateway(config).await;
    for _ in 0..10 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "2.50").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "resolved at fallback", || async { processed_count(&http, &gw.url).await == 10 }).await;
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(fallback.sim.payment_count(), 10);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_payment_carries_a_request_id_for_the_logs() {
    use http_body_util::Full;
    let (default, fallback) = start_pair().await;
    let mut config = gateway_config(&[("default", &default), ("fallback", &fallback)]);
    let faults = Arc::new(FaultSwitch::default());
    config.faults = Some(faults.clone());
    let gw = start_gateway(config).await;
    let http = Http::default();
    assert_eq!(http.pay(&gw.url, CorrelationId::random(), "1.00").await, StatusCode::ACCEPTED);
    faults.set(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<bytes::Bytes>>(hyper_util::client::legacy::connect::HttpConnector::new());
    let post = |request_id: Option<&'static str>| {
        let mut req = hyper::Request::post(format!("{}/payments", gw.url));
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let body = format!(r#"{{"correlationId":"{}","amount":1.00}}"#, CorrelationId::random());
        client.request(req.body(Full::new(bytes::Bytes::from(body))).unwrap())
    };
    let resp = post(Some("client-chosen-7")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-7");
    let resp = post(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!resp.headers()["x-request-id"].is_empty());
    faults.set(false);
    gw.stop().await;
}
