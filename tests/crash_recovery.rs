//! Crash recovery end to end (SPEC §3.1–3.3): real `paygate serve` and `paygate processor-sim`
//! processes on loopback, the gateway killed with SIGKILL at random moments under load and
//! restarted on the same data dir. No accepted payment may be lost, none recorded twice, none
//! refused yet recorded, and the gateway's books must equal the processors' afterwards.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use common::procs::{self, Proc, TempDir};
use common::{SIM_TOKEN, cents};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use paygate::domain::CorrelationId;
use tokio::time::Instant;

const CLIENTS: usize = 20;
/// Kills while the clients post; one more follows once they have stopped, with a backlog.
const KILLS_UNDER_LOAD: usize = 6;
/// A request to a gateway that may be dead or stalled gives up after this; its outcome is unknown.
const CLIENT_TIMEOUT_MS: u64 = 5_000;
/// A client retries one payment (same id, same amount) for this long before moving on.
const CLIENT_RETRY_MS: u64 = 3_000;
/// Bound on waiting for the restarted gateway to forward everything it accepted.
const DRAIN_LIMIT_MS: u64 = 60_000;
/// Waiting stops early when no payment got resolved for this long (a lost one never will).
const DRAIN_STALL_MS: u64 = 15_000;
const UPSTREAM_TIMEOUT_MS: u64 = 1_000;
const MAX_DEFER_MS: u64 = 1_000;
const LOOKUP_WORKERS: usize = 32;

/// The simulators and the current gateway; field order makes the gateway die before them.
struct Cluster {
    gateway: Option<Proc>,
    default: Proc,
    fallback: Proc,
    dir: TempDir,
    starts: usize,
    /// More flags for every gateway start.
    extra: &'static [&'static str],
}

impl Cluster {
    fn start(extra: &'static [&'static str]) -> Cluster {
        let dir = TempDir::new("crash");
        let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
        let mut cluster = Cluster { gateway: None, default, fallback, dir, starts: 0, extra };
        cluster.start_gateway();
        cluster
    }

    fn start_gateway(&mut self) -> String {
        assert!(self.gateway.is_none());
        let data = self.dir.0.join("data");
        let log = self.dir.0.join(format!("gateway-{}.log", self.starts));
        let gw = procs::start_gateway_with(&data, &self.default, &self.fallback, UPSTREAM_TIMEOUT_MS, MAX_DEFER_MS, self.extra, &log);
        self.starts += 1;
        let url = gw.url.clone();
        self.gateway = Some(gw);
        url
    }

    fn gateway_url(&self) -> &str {
        &self.gateway.as_ref().unwrap().url
    }
}

/// A client that reports transport errors and timeouts instead of panicking: the gateway it
/// talks to may have just been killed.
#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

impl Http {
    fn new() -> Http {
        Http(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    async fn try_send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: String) -> Result<(StatusCode, Bytes), String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        let exchange = async {
            let resp = self.0.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_millis(CLIENT_TIMEOUT_MS), exchange).await.unwrap_or_else(|_| Err("timed out".into()))
    }

    /// For peers that must be up: any transport error fails the test.
    async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: String) -> (StatusCode, Bytes) {
        self.try_send(method, url, headers, body).await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    async fn json(&self, url: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let (status, body) = self.send(Method::GET, url, headers, String::new()).await;
        assert_eq!(status, StatusCode::OK, "{url}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    async fn sim_admin(&self, sim: &str, what: &str, body: String) {
        let headers = [("X-Rinha-Token", SIM_TOKEN), ("content-type", "application/json")];
        let (status, text) = self.send(Method::PUT, &format!("{sim}/admin/configurations/{what}"), &headers, body).await;
        assert_eq!(status, StatusCode::OK, "{sim} {what}: {}", String::from_utf8_lossy(&text));
    }

    async fn set_delay(&self, sim: &str, ms: u64) {
        self.sim_admin(sim, "delay", format!(r#"{{"delay":{ms}}}"#)).await;
    }

    async fn set_failing(&self, sim: &str, failing: bool) {
        self.sim_admin(sim, "failure", format!(r#"{{"failure":{failing}}}"#)).await;
    }

    /// A simulator's own books as (count, cents).
    async fn sim_totals(&self, sim: &str) -> (u64, u128) {
        let v = self.json(&format!("{sim}/admin/payments-summary"), &[("X-Rinha-Token", SIM_TOKEN)]).await;
        (v["totalRequests"].as_u64().unwrap(), cents(&v["totalAmount"]))
    }

    /// The amount a simulator recorded for `id`, if it did.
    async fn sim_payment(&self, sim: &str, id: CorrelationId) -> Option<u128> {
        let (status, body) = self.send(Method::GET, &format!("{sim}/payments/{id}"), &[], String::new()).await;
        match status {
            StatusCode::OK => Some(cents(&serde_json::from_slice::<serde_json::Value>(&body).unwrap()["amount"])),
            StatusCode::NOT_FOUND => None,
            s => panic!("{sim}/payments/{id}: {s} {}", String::from_utf8_lossy(&body)),
        }
    }

    async fn gateway_payment(&self, gateway: &str, id: CorrelationId) -> GatewayView {
        let (status, body) = self.send(Method::GET, &format!("{gateway}/payments/{id}"), &[], String::new()).await;
        match status {
            StatusCode::NOT_FOUND => GatewayView::Unknown,
            StatusCode::OK => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                match v["status"].as_str() {
                    Some("pending") => GatewayView::Pending,
                    Some("processed") => GatewayView::Processed(v["processor"].as_str().unwrap().to_string()),
                    _ => panic!("{gateway}/payments/{id}: {v}"),
                }
            }
            s => panic!("{gateway}/payments/{id}: {s} {}", String::from_utf8_lossy(&body)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GatewayView {
    Unknown,
    Pending,
    Processed(String),
}

/// What one client learned about one payment over all its attempts.
#[derive(Clone, Debug)]
struct Sent {
    id: CorrelationId,
    cents: u128,
    /// Some attempt got `202`: the payment must be processed exactly once.
    accepted: bool,
    /// Some attempt got no answer (connection refused or reset, timed out); unless another
    /// attempt got `202`, the payment may or may not be accepted.
    cut_off: bool,
    /// The last non-2xx status an attempt got.
    refused: Option<StatusCode>,
}

impl Sent {
    /// Never accepted and never in doubt: must never reach a processor.
    fn surely_refused(&self) -> bool {
        !self.accepted && !self.cut_off
    }
}

/// Posts payments with fresh ids until `stop`, each to whatever gateway is current then.
async fn client(http: Http, gateway: Arc<RwLock<String>>, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let cents = fastrand::u128(1..=99_999);
        let mut p = Sent { id: CorrelationId::random(), cents, accepted: false, cut_off: false, refused: None };
        let body = format!(r#"{{"correlationId":"{}","amount":{}.{:02}}}"#, p.id, cents / 100, cents % 100);
        let give_up = Instant::now() + Duration::from_millis(CLIENT_RETRY_MS);
        loop {
            let url = format!("{}/payments", gateway.read().unwrap());
            // Retried as is: a cut-off attempt half the time (the other half is abandoned, left
            // in doubt), and a 503 always. Any other answer is final.
            let retry = match http.try_send(Method::POST, &url, &[("content-type", "application/json")], body.clone()).await {
                Ok((StatusCode::ACCEPTED, _)) => {
                    p.accepted = true;
                    false
                }
                Ok((status, _)) => {
                    p.refused = Some(status);
                    status == StatusCode::SERVICE_UNAVAILABLE
                }
                Err(_) => {
                    p.cut_off = true;
                    fastrand::bool()
                }
            };
            if !retry || Instant::now() > give_up || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(20..100))).await;
        }
        sent.push(p);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(2..12))).await;
    }
    sent
}

fn first_few(ids: &[String]) -> String {
    let shown: Vec<_> = ids.iter().take(3).cloned().collect();
    format!("{}{}", shown.join("; "), if ids.len() > 3 { "; ..." } else { "" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_at_random_moments_loses_and_duplicates_nothing() {
    kill_at_random_moments(&[]).await;
}

/// The same, while every settled payment leaves memory as soon as the history holds it, and
/// journal segments are small enough to rotate and be compacted (leaving out what the
/// history holds) many times between kills: the kills land in evictions, history commits and
/// compactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_while_payments_are_evicted_to_the_history_loses_and_duplicates_nothing() {
    kill_at_random_moments(&["--hot-max", "0", "--journal-segment-kib", "16"]).await;
}

async fn kill_at_random_moments(extra: &'static [&'static str]) {
    let mut cluster = tokio::task::spawn_blocking(move || Cluster::start(extra)).await.unwrap();
    let (default, fallback) = (cluster.default.url.clone(), cluster.fallback.url.clone());
    let http = Http::new();
    let gateway = Arc::new(RwLock::new(cluster.gateway_url().to_string()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(http.clone(), gateway.clone(), stop.clone()))).collect();

    let mut kills = 0;
    let mut kill_and_restart = async |mut cluster: Cluster| -> Cluster {
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.gateway.take().unwrap().kill();
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..200)));
            cluster.start_gateway();
            cluster
        })
        .await
        .unwrap();
        kills += 1;
        *gateway.write().unwrap() = cluster.gateway_url().to_string();
        cluster
    };

    for round in 0..KILLS_UNDER_LOAD {
        // Rotate through: default slow (requests in flight at the kill), healthy, default failing
        // (payments deferred, some moving to fallback after max-defer).
        match round % 3 {
            0 => {
                http.set_failing(&default, false).await;
                http.set_delay(&default, fastrand::u64(300..=800)).await;
            }
            1 => {
                http.set_failing(&default, false).await;
                http.set_delay(&default, 0).await;
            }
            _ => {
                http.set_delay(&default, fastrand::u64(0..=300)).await;
                http.set_failing(&default, true).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..=1_500))).await;
        cluster = kill_and_restart(cluster).await;
    }
    // One last kill with no traffic but a backlog, queued behind a slow default.
    http.set_failing(&default, false).await;
    http.set_delay(&default, fastrand::u64(300..=800)).await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(300..=800))).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.extend(c.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(50..=300))).await;
    cluster = kill_and_restart(cluster).await;

    http.set_delay(&default, 0).await;
    http.set_failing(&default, false).await;
    http.set_delay(&fallback, 0).await;
    http.set_failing(&fallback, false).await;
    let gw = cluster.gateway_url().to_string();

    // Lag 0: every payment the gateway knows of is processed, and every accepted one is known.
    let mut unresolved: Vec<Sent> = sent.iter().filter(|p| !p.surely_refused()).cloned().collect();
    let deadline = Instant::now() + Duration::from_millis(DRAIN_LIMIT_MS);
    let mut last_progress = Instant::now();
    loop {
        let views = {
            let (http, gw) = (http.clone(), gw.clone());
            common::lookup_all(&unresolved, LOOKUP_WORKERS, move |p: Sent| {
                let (http, gw) = (http.clone(), gw.clone());
                async move { (p.clone(), http.gateway_payment(&gw, p.id).await) }
            })
            .await
        };
        let before = unresolved.len();
        unresolved = views
            .into_iter()
            .filter(|(p, v)| match v {
                GatewayView::Processed(_) => false,
                GatewayView::Unknown => p.accepted,
                GatewayView::Pending => true,
            })
            .map(|(p, _)| p)
            .collect();
        if unresolved.is_empty() {
            break;
        }
        if unresolved.len() < before {
            last_progress = Instant::now();
        }
        if Instant::now() > deadline || last_progress.elapsed() > Duration::from_millis(DRAIN_STALL_MS) {
            eprintln!("crash-recovery: gave up waiting for lag 0 with {} payments unresolved", unresolved.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Longer than any simulator delay: a request still sleeping in a simulator lands first.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let looked_up = {
        let (http, gw, default, fallback) = (http.clone(), gw.clone(), default.clone(), fallback.clone());
        common::lookup_all(&sent, LOOKUP_WORKERS, move |p: Sent| {
            let (http, gw, default, fallback) = (http.clone(), gw.clone(), default.clone(), fallback.clone());
            async move {
                let d = http.sim_payment(&default, p.id).await;
                let f = http.sim_payment(&fallback, p.id).await;
                let g = http.gateway_payment(&gw, p.id).await;
                (p, d, f, g)
            }
        })
        .await
    };

    let mut lost = Vec::new();
    let mut twice = Vec::new();
    let mut wrong_amount = Vec::new();
    let mut wrong_processor = Vec::new();
    let mut refused_but_recorded = Vec::new();
    let mut held: HashMap<&str, (u64, u128)> = HashMap::from([("default", (0, 0)), ("fallback", (0, 0))]);
    let (mut in_doubt, mut in_doubt_recorded) = (0, 0);
    for (p, on_default, on_fallback, view) in &looked_up {
        let recorded: Vec<(&str, u128)> =
            [("default", on_default), ("fallback", on_fallback)].into_iter().filter_map(|(n, c)| c.map(|c| (n, c))).collect();
        for (name, c) in &recorded {
            let h = held.get_mut(name).unwrap();
            h.0 += 1;
            h.1 += c;
            if *c != p.cents {
                wrong_amount.push(format!("{} on {name}: {c} cents, posted {}", p.id, p.cents));
            }
        }
        if recorded.len() > 1 {
            twice.push(format!("{} on both processors", p.id));
        }
        if p.accepted {
            match recorded.as_slice() {
                [] => lost.push(format!("{} (gateway says {view:?})", p.id)),
                [(name, _)] if *view != GatewayView::Processed(name.to_string()) => {
                    wrong_processor.push(format!("{} recorded by {name}, gateway says {view:?}", p.id))
                }
                _ => {}
            }
        } else if p.cut_off {
            in_doubt += 1;
            in_doubt_recorded += usize::from(!recorded.is_empty());
        } else if !recorded.is_empty() {
            refused_but_recorded.push(format!("{} answered {:?}, recorded by {}", p.id, p.refused, recorded[0].0));
        }
    }

    let summary = http.json(&format!("{gw}/payments-summary"), &[]).await;
    let mut books = Vec::new();
    for (name, url) in [("default", &default), ("fallback", &fallback)] {
        let theirs = http.sim_totals(url).await;
        let ours = (summary[name]["totalRequests"].as_u64().unwrap(), cents(&summary[name]["totalAmount"]));
        if theirs != held[name] {
            books.push(format!("{name} holds {theirs:?} (count, cents) but {:?} among the ids sent: a duplicate or a stray", held[name]));
        }
        if ours != theirs {
            books.push(format!("{name}: gateway summary {ours:?} vs processor {theirs:?}"));
        }
    }

    let accepted = sent.iter().filter(|p| p.accepted).count();
    let refused = sent.iter().filter(|p| p.surely_refused()).count();
    let cut_off = sent.iter().filter(|p| p.cut_off).count();
    println!(
        "crash-recovery: kills={kills} sent={} accepted={accepted} default={} fallback={} cut_off={cut_off} \
         in_doubt={in_doubt} (recorded {in_doubt_recorded}) refused={refused} lost={} twice={}",
        sent.len(),
        held["default"].0,
        held["fallback"].0,
        lost.len(),
        twice.len(),
    );

    let mut failures = Vec::new();
    for (what, list) in [
        ("accepted payments lost (202 then recorded by no processor)", &lost),
        ("payments recorded by both processors", &twice),
        ("payments recorded with another amount", &wrong_amount),
        ("accepted payments whose gateway status disagrees with the processor", &wrong_processor),
        ("payments answered non-2xx (never in doubt) yet recorded", &refused_but_recorded),
        ("books that disagree", &books),
    ] {
        if !list.is_empty() {
            failures.push(format!("{} {what}: {}", list.len(), first_few(list)));
        }
    }
    assert!(kills >= 5);
    assert!(accepted > 0, "no payment was accepted at all");
    assert!(failures.is_empty(), "after {kills} kill -9s, of {accepted} accepted payments:\n  {}", failures.join("\n  "));
    drop(cluster);
}
