//! Chaos: real `paygate serve` and `paygate processor-sim` processes on loopback, load that
//! keeps coming, and the cheaper processor frozen with SIGSTOP for longer than the upstream
//! timeout — it accepts connections and never answers, the worst way to fail. Payments
//! accepted after its breaker opened must reach the other processor within the defer deadline
//! (plus a second); after SIGCONT every payment is recorded by exactly one processor and the
//! gateway's books equal both processors'.

mod common;

use std::time::Duration;

use common::Http;
use common::procs::{self, TempDir};
use hyper::StatusCode;
use paygate::domain::time::Rounding;
use paygate::domain::{CorrelationId, UtcMillis};
use tokio::time::Instant;

const UPSTREAM_TIMEOUT_MS: u64 = 500;
const MAX_DEFER_MS: u64 = 500;
/// One payment per this many ms (100 per second), open model: sends do not wait for answers.
const SEND_EVERY_MS: u64 = 10;
const LOAD_MS: u64 = 6_000;
const STOP_AT_MS: u64 = 1_000;
/// Several upstream timeouts.
const STOPPED_MS: u64 = 3_000;
/// Allowed beyond the defer deadline for a payment to reach the other processor.
const SLACK_MS: i64 = 1_000;

async fn recorded_at(http: &Http, sim: &str, id: CorrelationId) -> Option<UtcMillis> {
    let (status, body) = http.get(&format!("{sim}/payments/{id}")).await;
    match status {
        StatusCode::OK => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            UtcMillis::parse_rfc3339(v["requestedAt"].as_str().unwrap().as_bytes(), Rounding::Floor)
        }
        StatusCode::NOT_FOUND => None,
        s => panic!("{sim}/payments/{id}: {s}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_frozen_with_sigstop_delays_only_the_payments_pinned_to_it() {
    let dir = TempDir::new("chaos");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    let log = dir.0.join("gateway.log");
    let gateway = procs::start_gateway(&dir.0.join("data"), &default, &fallback, UPSTREAM_TIMEOUT_MS, MAX_DEFER_MS, &log);
    let http = Http::default();
    let started = Instant::now();

    let load = tokio::spawn({
        let (http, url) = (http.clone(), gateway.url.clone());
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(SEND_EVERY_MS));
            let mut sends = Vec::new();
            for _ in 0..LOAD_MS / SEND_EVERY_MS {
                ticker.tick().await;
                let (http, url) = (http.clone(), url.clone());
                sends.push(tokio::spawn(async move {
                    let id = CorrelationId::random();
                    let at = UtcMillis::now();
                    (id, at, http.pay(&url, id, "19.90").await)
                }));
            }
            let mut out = Vec::new();
            for s in sends {
                out.push(s.await.unwrap());
            }
            out
        }
    });

    tokio::time::sleep_until(started + Duration::from_millis(STOP_AT_MS)).await;
    default.signal("STOP");
    let resume = started + Duration::from_millis(STOP_AT_MS + STOPPED_MS);
    let mut opened_at = None;
    while Instant::now() < resume {
        let h = http.get_json(&format!("{}/health", gateway.url), &[]).await;
        if opened_at.is_none() && h["processors"]["default"]["breaker"] != "closed" {
            opened_at = Some(UtcMillis::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    default.signal("CONT");
    let resumed_at = UtcMillis::now();
    let opened_at = opened_at.expect("default's breaker never opened while it was frozen");

    let sent = load.await.unwrap();
    for (id, _, status) in &sent {
        assert_eq!(*status, StatusCode::ACCEPTED, "{id}");
    }
    let total = sent.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = http.gateway_summary(&gateway.url, "").await;
        let done = common::totals_of(&g, "default").0 + common::totals_of(&g, "fallback").0;
        if done == total {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {total} payments processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut checked = 0;
    for (id, at, _) in &sent {
        let at_default = recorded_at(&http, &default.url, *id).await;
        let at_fallback = recorded_at(&http, &fallback.url, *id).await;
        assert!(at_default.is_some() != at_fallback.is_some(), "{id}: default {at_default:?}, fallback {at_fallback:?}");
        // Accepted while default was known to hang, early enough that it could not have come
        // back before the deadline: it goes to fallback, in time.
        if *at >= opened_at && at.0 + (MAX_DEFER_MS as i64) + 500 < resumed_at.0 {
            let requested = at_fallback.unwrap_or_else(|| panic!("{id} accepted at {at} after the breaker opened went to default"));
            assert!(requested.0 - at.0 <= MAX_DEFER_MS as i64 + SLACK_MS, "{id} accepted at {at} reached fallback only at {requested}");
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} payments fell in the frozen window");

    let g = http.gateway_summary(&gateway.url, "").await;
    assert_eq!(common::totals_of(&g, "default"), http.sim_totals_at(&default.url, "").await);
    assert_eq!(common::totals_of(&g, "fallback"), http.sim_totals_at(&fallback.url, "").await);
    drop(gateway);
}
