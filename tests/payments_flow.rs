//! End-to-end behaviour of the payment path over real loopback sockets: simulators and the
//! gateway run in-process on ephemeral ports.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use paygate::domain::CorrelationId;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_payments_from_fifty_clients_are_processed_once_by_default() {
    let (default, fallback) = start_pair().await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    let http = Http::default();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (http, url) = (http.clone(), gw.url.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..20 {
                assert_eq!(http.pay(&url, CorrelationId::random(), "19.90").await, StatusCode::ACCEPTED);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    eventually(Duration::from_secs(20), "all payments processed", || async { default.sim.payment_count() == 1000 }).await;
    eventually_books_agree(&http, &gw.url, &[("default", &default), ("fallback", &fallback)]).await;
    let g = http.gateway_summary(&gw.url, "").await;
    assert_eq!(totals_of(&g, "default"), (1000, 1000 * 1990));
    assert_eq!(totals_of(&g, "fallback"), (0, 0));
    assert_eq!(http.sim_totals(&default, "").await, (1000, 1000 * 1990));
    assert_eq!(http.sim_totals(&fallback, "").await, (0, 0));
    assert_eq!(default.sim.payment_requests(), 1000, "each payment forwarded exactly once");
    gw.stop().await;
}

/// SPEC §5 with 2 s stages instead of 10 s: same order of delays and failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_contest_scenario_stays_consistent_and_pays_no_fallback_fee() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let gw = start_gateway(gateway_config(&sims)).await;
    let http = Http::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let stage = Duration::from_millis(2_000);
    let rate_per_s = 250u64;

    let load = {
        let (http, url, accepted) = (http.clone(), gw.url.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_s));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + stage * 6;
            let mut inflight = Vec::new();
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
                inflight.push(tokio::spawn(async move {
                    if http.pay(&url, CorrelationId::random(), "19.90").await == StatusCode::ACCEPTED {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in inflight {
                t.await.unwrap();
            }
        })
    };
    let auditor = {
        let (http, url) = (http.clone(), gw.url.clone());
        let sims_urls: Vec<_> = sims.iter().map(|(n, s)| (n.to_string(), s.url.clone())).collect();
        tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut audits = 0;
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                let window = window_ago(Duration::from_millis(3_000), Duration::from_millis(500));
                let g = http.gateway_summary(&url, &window).await;
                for (name, sim_url) in &sims_urls {
                    let v = http.get_json(&format!("{sim_url}/admin/payments-summary{window}"), &[("X-Rinha-Token", SIM_TOKEN)]).await;
                    let theirs = (v["totalRequests"].as_u64().unwrap(), cents(&v["totalAmount"]));
                    if totals_of(&g, name) != theirs {
                        bad.push(format!("{name} {window}: gateway {:?} processor {theirs:?}", totals_of(&g, name)));
                    }
                }
                audits += 1;
            }
            (audits, bad)
        })
    };

    tokio::time::sleep(stage).await;
    http.set_delay(&default, 100).await;
    tokio::time::sleep(stage).await;
    http.set_failing(&default, true).await;
    tokio::time::sleep(stage).await;
    http.set_delay(&default, 2_000).await;
    http.set_delay(&fallback, 1_000).await;
    http.set_failing(&fallback, true).await;
    tokio::time::sleep(stage).await;
    for s in [&default, &fallback] {
        http.set_delay(s, 20).await;
        http.set_failing(s, false).await;
    }
    tokio::time::sleep(stage).await;
    http.set_delay(&default, 0).await;
    http.set_delay(&fallback, 5_000).await;

    load.await.unwrap();
    let (audits, inconsistencies) = auditor.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "lag 0", || async { totals_of(&http.gateway_summary(&gw.url, "").await, "default").0 == accepted })
        .await;
    let g = http.gateway_summary(&gw.url, "").await;
    let processed_default = totals_of(&g, "default");
    let processed_fallback = totals_of(&g, "fallback");
    println!(
        "compressed contest: accepted={accepted} processed default={} fallback={} audits={audits} inconsistencies={} lag={}",
        processed_default.0,
        processed_fallback.0,
        inconsistencies.len(),
        accepted - processed_default.0 - processed_fallback.0
    );
    assert!(accepted >= 200 * 12, "load generator fell short: {accepted}");
    assert_eq!(inconsistencies, Vec::<String>::new());
    assert_eq!(processed_fallback, (0, 0), "no payment may pay the fallback fee");
    assert_eq!(processed_default, (accepted, u128::from(accepted) * 1990));
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(default.sim.payment_count(), accepted);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_failing_past_max_defer_sends_payments_to_fallback_once() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let mut config = gateway_config(&sims);
    config.max_defer = Duration::from_millis(300);
    let http = Http::default();
    http.set_failing(&default, true).await;
    let gw = start_gateway(config).await;
    for _ in 0..100 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "10.01").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "all on fallback", || async { fallback.sim.payment_count() == 100 }).await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    assert_eq!(default.sim.payment_count(), 0);
    assert_eq!(http.sim_totals(&fallback, "").await, (100, 100 * 1001));
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "fallback"), (100, 100 * 1001));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_out_payments_are_recorded_once_where_they_really_landed() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let mut config = gateway_config(&sims);
    config.upstream_timeout = Duration::from_millis(1_000);
    config.max_defer = Duration::from_millis(2_000);
    let http = Http::default();
    http.set_delay(&default, 3_000).await;
    let gw = start_gateway(config).await;
    let ids: Vec<_> = (0..20).map(|_| CorrelationId::random()).collect();
    for id in &ids {
        assert_eq!(http.pay(&gw.url, *id, "5.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(40), "all resolved", || async {
        let g = http.gateway_summary(&gw.url, "").await;
        totals_of(&g, "default").0 + totals_of(&g, "fallback").0 == 20
    })
    .await;
    // Let any request still sleeping inside the slow processor finish before counting.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(default.sim.payment_count() + fallback.sim.payment_count(), 20);
    for id in &ids {
        let v = http.get_json(&format!("{}/payments/{id}", gw.url), &[]).await;
        assert_eq!(v["status"], "processed");
        let (ours, other) = if v["processor"] == "default" { (&default, &fallback) } else { (&fallback, &default) };
        let (status, body) = http.get(&format!("{}/payments/{id}", ours.url)).await;
        assert_eq!(status, StatusCode::OK, "{id} not on the processor the gateway names");
        let recorded: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(recorded["requestedAt"], v["requestedAt"], "{id}");
        assert_eq!(http.get(&format!("{}/payments/{id}", other.url)).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert!(default.sim.payment_count() > 0, "some timed-out payments must have landed on default");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_id_same_amount_is_accepted_twice_and_forwarded_once() {
    let (default, fallback) = start_pair().await;
    let gw = start_gateway(gateway_config(&[("default", &default), ("fallback", &fallback)])).await;
    let http = Http::default();
    let id = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, id, "19.90").await, StatusCode::ACCEPTED);
    assert_eq!(http.pay(&gw.url, id, "19.90").await, StatusCode::ACCEPTED);
    assert_eq!(http.pay(&gw.url, id, "19.9").await, StatusCode::ACCEPTED, "same amount, other spelling");
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    assert_eq!(http.pay(&gw.url, id, "19.90").await, StatusCode::ACCEPTED);
    assert_eq!(http.pay(&gw.url, id, "19.91").await, StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(default.sim.payment_requests(), 1);
    assert_eq!(fallback.sim.payment_requests(), 0);
    gw.stop().await;
}
