//! Shared test harness: in-process simulators and gateways on loopback port 0, a small HTTP
//! client, and exact summary comparison.
#![allow(dead_code)]

pub mod pg;
pub mod procs;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use paygate::config::GatewayConfig;
use paygate::domain::{CorrelationId, UtcMillis};
use paygate::sim::{Sim, SimConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const SIM_TOKEN: &str = "123";
pub const ADMIN_TOKEN: &str = "test-admin";

pub struct RunningSim {
    pub sim: Sim,
    pub url: String,
    _stop: oneshot::Sender<()>,
}

pub async fn start_sim(config: SimConfig) -> RunningSim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sim = Sim::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    RunningSim { sim, url, _stop: stop }
}

/// The contest's pair: default 5 %, fallback 15 %.
pub async fn start_pair() -> (RunningSim, RunningSim) {
    (start_sim(SimConfig::new(50_000)).await, start_sim(SimConfig::new(150_000)).await)
}

pub struct RunningGateway {
    pub url: String,
    pub data_dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningGateway {
    /// Stops the gateway and removes its data directory.
    pub async fn stop(self) {
        let dir = self.data_dir.clone();
        self.stop_keeping_data().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    pub async fn stop_keeping_data(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("paygate-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Gateway configuration over the given simulators, with its journal in a fresh temp dir.
pub fn gateway_config(sims: &[(&str, &RunningSim)]) -> GatewayConfig {
    let mut c = GatewayConfig::with_processors(sims.iter().map(|(n, s)| (n.to_string(), s.url.clone())).collect());
    c.admin_token = Some(ADMIN_TOKEN.into());
    c.data_dir = temp_dir("data");
    c
}

pub async fn start_gateway(config: GatewayConfig) -> RunningGateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let data_dir = config.data_dir.clone();
    let task = tokio::spawn(paygate::gateway::run(config, listener, async move {
        let _ = stopped.await;
    }));
    RunningGateway { url, data_dir, stop: Some(stop), task }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http { client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()) }
    }
}

impl Http {
    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        let mut req = Request::new(Full::new(body.into()));
        *req.method_mut() = method;
        *req.uri_mut() = url.parse().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    pub async fn get(&self, url: &str) -> (StatusCode, Bytes) {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn get_json(&self, url: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let (status, body) = self.send(Method::GET, url, headers, Bytes::new()).await;
        assert_eq!(status, StatusCode::OK, "{url}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Posts a payment to the gateway.
    pub async fn pay(&self, gateway: &str, id: CorrelationId, amount: &str) -> StatusCode {
        let body = format!(r#"{{"correlationId":"{id}","amount":{amount}}}"#);
        self.send(Method::POST, &format!("{gateway}/payments"), &[("content-type", "application/json")], body).await.0
    }

    pub async fn sim_admin(&self, sim: &RunningSim, what: &str, body: String) {
        let (status, text) = self
            .send(
                Method::PUT,
                &format!("{}/admin/configurations/{what}", sim.url),
                &[("X-Rinha-Token", SIM_TOKEN), ("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&text));
    }

    pub async fn set_delay(&self, sim: &RunningSim, ms: u64) {
        self.sim_admin(sim, "delay", format!(r#"{{"delay":{ms}}}"#)).await;
    }

    pub async fn set_failing(&self, sim: &RunningSim, failing: bool) {
        self.sim_admin(sim, "failure", format!(r#"{{"failure":{failing}}}"#)).await;
    }

    /// The gateway's summary for one processor as (count, cents).
    pub async fn gateway_summary(&self, gateway: &str, window: &str) -> serde_json::Value {
        self.get_json(&format!("{gateway}/payments-summary{window}"), &[]).await
    }

    /// A simulator's own books as (count, cents).
    pub async fn sim_totals(&self, sim: &RunningSim, window: &str) -> (u64, u128) {
        self.sim_totals_at(&sim.url, window).await
    }

    /// The books of the simulator at `url` (in-process or a process of its own).
    pub async fn sim_totals_at(&self, url: &str, window: &str) -> (u64, u128) {
        let v = self.get_json(&format!("{url}/admin/payments-summary{window}"), &[("X-Rinha-Token", SIM_TOKEN)]).await;
        (v["totalRequests"].as_u64().unwrap(), cents(&v["totalAmount"]))
    }
}

/// Exact cents of a JSON number with at most two decimals.
pub fn cents(v: &serde_json::Value) -> u128 {
    let text = v.to_string();
    let (int, frac) = text.split_once('.').unwrap_or((&text, "0"));
    let frac = format!("{frac:0<2}");
    assert!(frac.len() == 2, "amount {text} has more than 2 decimals");
    int.parse::<u128>().unwrap() * 100 + frac.parse::<u128>().unwrap()
}

pub fn totals_of(summary: &serde_json::Value, processor: &str) -> (u64, u128) {
    (summary[processor]["totalRequests"].as_u64().unwrap(), cents(&summary[processor]["totalAmount"]))
}

/// `?from=..&to=..` for the window [now - from_ago, now - to_ago].
pub fn window_ago(from_ago: Duration, to_ago: Duration) -> String {
    let now = UtcMillis::now().0;
    let from = UtcMillis(now - from_ago.as_millis() as i64);
    let to = UtcMillis(now - to_ago.as_millis() as i64);
    format!("?from={from}&to={to}")
}

/// Compares gateway and simulators over one window; returns the mismatches found.
pub async fn audit(http: &Http, gateway: &str, sims: &[(&str, &RunningSim)], window: &str) -> Vec<String> {
    let g = http.gateway_summary(gateway, window).await;
    let mut bad = Vec::new();
    for (name, sim) in sims {
        let ours = totals_of(&g, name);
        let theirs = http.sim_totals(sim, window).await;
        if ours != theirs {
            bad.push(format!("{name} {window}: gateway {ours:?} vs processor {theirs:?}"));
        }
    }
    bad
}

/// Waits until the gateway's summary equals every processor's own books. A processor records
/// a payment before its answer reaches the gateway, so a test that saw a processor's count
/// reach N waits for this before it reads the gateway's state.
pub async fn eventually_books_agree(http: &Http, gateway: &str, sims: &[(&str, &RunningSim)]) {
    eventually(Duration::from_secs(10), "the gateway's books to match the processors'", || async {
        audit(http, gateway, sims, "").await.is_empty()
    })
    .await;
}

/// Polls until `done` holds, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `f` over `items` with `workers` concurrent tasks, keeping the order (the audits of the
/// kill and shutdown tests look thousands of payments up at the processors).
pub async fn lookup_all<T, R, F, Fut>(items: &[T], workers: usize, f: F) -> Vec<R>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let chunk = items.len().div_ceil(workers.max(1)).max(1);
    let tasks: Vec<_> = items
        .chunks(chunk)
        .map(|c| {
            let (c, f) = (c.to_vec(), f.clone());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(c.len());
                for item in c {
                    out.push(f(item).await);
                }
                out
            })
        })
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}
