//! The bounded hot set over real sockets: settled payments leave the ledger's memory once the
//! history holds them, and every answer about them stays what it was — a repeated `POST`
//! with the same amount is `202` and never forwarded again, another amount `409`, `GET` and
//! the summary unchanged — also after a restart on that history. The ledger's table never
//! grows past the capacity it was given at start.

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;
use paygate::config::GatewayConfig;
use paygate::domain::CorrelationId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A gateway with a metrics listener, so tests can read the hot set's size.
struct Gw {
    url: String,
    metrics: String,
    data_dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Gw {
    async fn start(config: GatewayConfig) -> Gw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = format!("http://{}/metrics", metrics_listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(paygate::gateway::run_with(config, listener, Some(metrics_listener), async move {
            let _ = stopped.await;
        }));
        Gw { url, metrics, data_dir, stop: Some(stop), task }
    }

    /// Stops the gateway, keeping its data directory (for a restart on it).
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    /// Stops the gateway and removes its data directory.
    async fn finish(self) {
        let dir = self.data_dir.clone();
        self.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The value of an unlabelled gauge.
    async fn gauge(&self, http: &Http, name: &str) -> f64 {
        let (status, body) = http.get(&self.metrics).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let line = text.lines().find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    async fn wait_hot(&self, http: &Http, want: f64) {
        eventually(Duration::from_secs(15), &format!("{want} payments in memory"), || async {
            self.gauge(http, "paygate_ledger_hot_payments").await == want
        })
        .await;
    }
}

/// Evicts every settled payment as soon as the history holds it.
fn evicting_config(sims: &[(&str, &RunningSim)]) -> GatewayConfig {
    let mut config = gateway_config(sims);
    config.hot_max = 0;
    config
}

async fn payment(http: &Http, url: &str, id: CorrelationId) -> serde_json::Value {
    http.get_json(&format!("{url}/payments/{id}"), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_payment_is_answered_as_before_and_never_forwarded_again() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let config = evicting_config(&sims);
    let gw = Gw::start(config.clone()).await;
    let ids: Vec<CorrelationId> = (0..50).map(|_| CorrelationId::random()).collect();
    for id in &ids {
        assert_eq!(http.pay(&gw.url, *id, "19.90").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "50 processed", || async { default.sim.payment_count() == 50 }).await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    let before: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(payment(&http, &gw.url, *id).await);
        }
        v
    };
    gw.wait_hot(&http, 0.0).await;
    let forwarded = default.sim.payment_requests() + fallback.sim.payment_requests();

    for (id, was) in ids.iter().zip(&before) {
        assert_eq!(http.pay(&gw.url, *id, "19.90").await, StatusCode::ACCEPTED, "same id and amount after eviction");
        assert_eq!(http.pay(&gw.url, *id, "19.91").await, StatusCode::CONFLICT, "another amount after eviction");
        assert_eq!(&payment(&http, &gw.url, *id).await, was, "GET after eviction");
    }
    let unknown = CorrelationId::random();
    assert_eq!(http.get(&format!("{}/payments/{unknown}", gw.url)).await.0, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(default.sim.payment_requests() + fallback.sim.payment_requests(), forwarded, "nothing was forwarded again");
    assert_eq!(audit(&http, &gw.url, &sims, "").await, Vec::<String>::new());
    assert_eq!(audit(&http, &gw.url, &sims, &window_ago(Duration::from_secs(60), Duration::ZERO)).await, Vec::<String>::new());
    assert_eq!(gw.gauge(&http, "paygate_ledger_hot_payments").await, 0.0, "repeats bring nothing back into memory");

    // A restart on that history: the same answers, from disk.
    gw.stop().await;
    let gw = Gw::start(config).await;
    eventually(Duration::from_secs(10), "restarted", || async { http.get(&format!("{}/health", gw.url)).await.0 == StatusCode::OK }).await;
    assert_eq!(gw.gauge(&http, "paygate_ledger_hot_payments").await, 0.0, "nothing settled is loaded into memory");
    for (id, was) in ids.iter().zip(&before) {
        assert_eq!(&payment(&http, &gw.url, *id).await, was, "GET after restart");
        assert_eq!(http.pay(&gw.url, *id, "19.90").await, StatusCode::ACCEPTED);
        assert_eq!(http.pay(&gw.url, *id, "1.00").await, StatusCode::CONFLICT);
    }
    // New payments after the restart join the same books.
    for _ in 0..10 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "2.50").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "60 processed", || async { default.sim.payment_count() == 60 }).await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(default.sim.payment_requests() + fallback.sim.payment_requests(), forwarded + 10);
    gw.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hot_table_never_grows_past_its_start_up_capacity() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    config.pending_max = 64;
    config.hot_max = 32;
    let gw = Gw::start(config).await;
    let capacity = gw.gauge(&http, "paygate_ledger_hot_capacity").await;
    assert!(capacity >= 96.0, "sized for pending_max + hot_max at start: {capacity}");
    // Twenty times what the table holds, in bursts that fill the pending limit.
    let total = 2_000u64;
    let mut accepted = 0u64;
    while accepted < total {
        let burst: Vec<_> = (0..40)
            .map(|_| {
                let http = http.clone();
                let url = gw.url.clone();
                tokio::spawn(async move { http.pay(&url, CorrelationId::random(), "1.00").await })
            })
            .collect();
        for b in burst {
            match b.await.unwrap() {
                StatusCode::ACCEPTED => accepted += 1,
                StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("unexpected {other}"),
            }
        }
        let hot = gw.gauge(&http, "paygate_ledger_hot_payments").await;
        assert!(hot <= 96.0, "the hot set stays within pending_max + hot_max: {hot}");
        assert_eq!(gw.gauge(&http, "paygate_ledger_hot_capacity").await, capacity, "the table never grew");
    }
    eventually(Duration::from_secs(20), "all processed", || async {
        default.sim.payment_count() + fallback.sim.payment_count() >= accepted
    })
    .await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    gw.wait_hot(&http, 32.0).await;
    assert_eq!(gw.gauge(&http, "paygate_ledger_hot_capacity").await, capacity);
    gw.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settled_payments_leave_memory_after_the_hot_window() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    config.hot_window = Duration::from_millis(300);
    let gw = Gw::start(config).await;
    for _ in 0..20 {
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), "3.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(10), "20 processed", || async { default.sim.payment_count() == 20 }).await;
    // Well below --hot-max, they leave by age (the idle ledger checks every second).
    gw.wait_hot(&http, 0.0).await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    gw.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_clears_the_history_too() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let config = evicting_config(&sims);
    let gw = Gw::start(config.clone()).await;
    let old = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, old, "7.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    gw.wait_hot(&http, 0.0).await;
    let (status, _) =
        http.send(hyper::Method::POST, &format!("{}/purge-payments", gw.url), &[("X-Admin-Token", ADMIN_TOKEN)], bytes::Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let summary = http.gateway_summary(&gw.url, "").await;
    assert_eq!(totals_of(&summary, "default"), (0, 0));
    assert_eq!(http.get(&format!("{}/payments/{old}", gw.url)).await.0, StatusCode::NOT_FOUND);
    // The purged id is new again, with any amount.
    assert_eq!(http.pay(&gw.url, old, "8.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed again", || async {
        totals_of(&http.gateway_summary(&gw.url, "").await, "default") == (1, 800)
    })
    .await;
    // And the purge holds across a restart.
    gw.stop().await;
    let gw = Gw::start(config).await;
    eventually(Duration::from_secs(10), "restarted", || async { http.get(&format!("{}/health", gw.url)).await.0 == StatusCode::OK }).await;
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "default"), (1, 800));
    gw.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_summary_is_exact_over_random_windows_spanning_evicted_and_hot_payments() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let http = Http::default();
    let mut config = gateway_config(&sims);
    // The newest 40 stay in memory, the rest leave it: windows cross that boundary.
    config.hot_max = 40;
    config.max_defer = Duration::ZERO;
    let gw = Gw::start(config).await;
    let started = paygate::domain::UtcMillis::now().0;
    let mut rng = fastrand::Rng::with_seed(15);
    for i in 0..200u64 {
        let amount = format!("{}.{:02}", rng.u64(1..500), rng.u64(0..100));
        assert_eq!(http.pay(&gw.url, CorrelationId::random(), &amount).await, StatusCode::ACCEPTED);
        // Some go to fallback while default fails for a moment; payments spread over seconds.
        if i == 120 {
            http.set_failing(&default, true).await;
        }
        if i == 150 {
            http.set_failing(&default, false).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..25))).await;
    }
    eventually(Duration::from_secs(20), "200 processed", || async { default.sim.payment_count() + fallback.sim.payment_count() == 200 })
        .await;
    eventually_books_agree(&http, &gw.url, &sims).await;
    gw.wait_hot(&http, 40.0).await;
    let ended = paygate::domain::UtcMillis::now().0;
    let at = |ms: i64| paygate::domain::UtcMillis(ms).to_string();
    for _ in 0..150 {
        let (a, b) = (rng.i64(started - 500..=ended + 500), rng.i64(started - 500..=ended + 500));
        // Some windows end exactly on a second's edge, or hold one millisecond.
        let (from, to) = match rng.u8(..4) {
            0 => (a.min(b), a.min(b)),
            1 => (a.min(b) / 1000 * 1000, a.max(b) / 1000 * 1000 + 999),
            _ => (a.min(b), a.max(b)),
        };
        let window = format!("?from={}&to={}", at(from), at(to));
        assert_eq!(audit(&http, &gw.url, &sims, &window).await, Vec::<String>::new(), "window {window}");
    }
    gw.finish().await;
}
