//! Cluster mode (SPEC §6) on a real PostgreSQL: several `paygate serve` processes sharing one
//! database, with in-process processor simulators. What one instance accepts, every instance
//! knows; the summary from any instance is the cluster's; the processors' health endpoints are
//! called once per window by the whole cluster; a purge from one instance purges them all.

mod common;

use std::time::{Duration, Instant};

use common::pg::Pg;
use common::procs::{Proc, TempDir};
use common::{ADMIN_TOKEN, Http, RunningSim, audit, eventually, start_pair};
use hyper::{Method, StatusCode};
use paygate::domain::CorrelationId;

/// A lease short enough for tests to watch takeovers, well past a heartbeat's round trip.
const LEASE_MS: &str = "1500";

/// The database, the simulators and the instances of one test.
struct Cluster {
    pg: Pg,
    dir: TempDir,
    default: RunningSim,
    fallback: RunningSim,
    instances: Vec<Proc>,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let pg = Pg::start();
        let (default, fallback) = start_pair().await;
        let mut c = Cluster { pg, dir: TempDir::new("cluster"), default, fallback, instances: Vec::new() };
        for _ in 0..n {
            c.add_instance(&[]).await;
        }
        c
    }

    fn args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let data = self.dir.0.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-token",
            ADMIN_TOKEN,
            "--upstream-timeout-ms",
            "1000",
            "--lease-ms",
            LEASE_MS,
            "--drain-ms",
            "0",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["--processor".into(), format!("default={}", self.default.url)]);
        args.extend(["--processor".into(), format!("fallback={}", self.fallback.url)]);
        args.extend(["--database-url".into(), self.pg.url(), "--instance-id".into(), name.into()]);
        if !extra.contains(&"--metrics-listen") {
            args.extend(["--metrics-listen".into(), "off".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts one more instance and waits until its `/health` answers 200.
    async fn add_instance(&mut self, extra: &[&str]) -> String {
        let name = format!("gw{}", self.instances.len());
        let log = self.dir.0.join(format!("{name}.log"));
        let p = Proc::start(&self.args(&name, extra), "paygate listening on", &log);
        let url = p.url.clone();
        self.instances.push(p);
        wait_healthy(&url, &log).await;
        url
    }

    fn url(&self, i: usize) -> String {
        self.instances[i].url.clone()
    }

    fn sims(&self) -> [(&str, &RunningSim); 2] {
        [("default", &self.default), ("fallback", &self.fallback)]
    }
}

async fn wait_healthy(url: &str, log: &std::path::Path) {
    let http = Http::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((StatusCode::OK, _)) = tokio::time::timeout(Duration::from_secs(2), http.get(&format!("{url}/health"))).await {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became healthy; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn body(id: CorrelationId, amount: &str) -> String {
    format!(r#"{{"correlationId":"{id}","amount":{amount}}}"#)
}

async fn post(http: &Http, gateway: &str, id: CorrelationId, amount: &str) -> StatusCode {
    http.send(Method::POST, &format!("{gateway}/payments"), &[("content-type", "application/json")], body(id, amount)).await.0
}

/// Waits until the summary from every instance equals the processors' books.
async fn books_agree_everywhere(http: &Http, c: &Cluster) {
    for i in 0..c.instances.len() {
        let url = c.url(i);
        eventually(Duration::from_secs(15), "every instance's summary to match the processors' books", || async {
            audit(http, &url, &c.sims(), "").await.is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_set_of_books() {
    let c = Cluster::start(2).await;
    let http = Http::default();
    let (a, b) = (c.url(0), c.url(1));
    // Payments spread over both instances.
    let mut ids = Vec::new();
    for i in 0..100 {
        let id = CorrelationId::random();
        let at = if i % 2 == 0 { &a } else { &b };
        assert_eq!(post(&http, at, id, "19.90").await, StatusCode::ACCEPTED);
        ids.push(id);
    }
    // The same id on both instances at the same instant: one payment.
    for _ in 0..50 {
        let id = CorrelationId::random();
        let (x, y) = tokio::join!(post(&http, &a, id, "7.25"), post(&http, &b, id, "7.25"));
        assert_eq!((x, y), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
        ids.push(id);
    }
    // A repeat with another amount is refused by whichever instance answers.
    let id = ids[0];
    assert_eq!(post(&http, &b, id, "19.90").await, StatusCode::ACCEPTED);
    assert_eq!(post(&http, &a, id, "20.00").await, StatusCode::CONFLICT);
    assert_eq!(post(&http, &b, id, "20.00").await, StatusCode::CONFLICT);
    books_agree_everywhere(&http, &c).await;
    let (n_default, _) = http.sim_totals(&c.default, "").await;
    let (n_fallback, _) = http.sim_totals(&c.fallback, "").await;
    assert_eq!(n_default + n_fallback, ids.len() as u64, "each payment recorded once");
    // Either instance answers for any payment.
    for id in &ids[..10] {
        for url in [&a, &b] {
            let v = http.get_json(&format!("{url}/payments/{id}"), &[]).await;
            assert_eq!(v["status"], "processed", "{url}: {v}");
        }
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_call_each_health_endpoint_at_most_once_per_window() {
    let c = Cluster::start(3).await;
    let http = Http::default();
    // Payments flow meanwhile, so every instance's router is in use.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(13) {
        assert_eq!(post(&http, &c.url(i % 3), CorrelationId::random(), "1.00").await, StatusCode::ACCEPTED);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, sim) in c.sims() {
        let log = sim.sim.health_log();
        assert!(log.len() >= 2, "{name}: the cluster called the health endpoint {} times in 13 s", log.len());
        let refused: Vec<_> = log.iter().filter(|(_, wait)| wait.is_some()).collect();
        assert!(refused.is_empty(), "{name}: {} calls were refused with 429 (too close together)", refused.len());
        for pair in log.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap >= Duration::from_secs(5), "{name}: two health calls {gap:?} apart");
        }
    }
    books_agree_everywhere(&http, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_from_one_instance_purges_the_cluster() {
    let c = Cluster::start(2).await;
    let http = Http::default();
    let (a, b) = (c.url(0), c.url(1));
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = CorrelationId::random();
        assert_eq!(post(&http, if i % 2 == 0 { &a } else { &b }, id, "3.00").await, StatusCode::ACCEPTED);
        ids.push(id);
    }
    books_agree_everywhere(&http, &c).await;
    let (status, _) =
        http.send(Method::POST, &format!("{a}/purge-payments"), &[("x-admin-token", ADMIN_TOKEN)], String::new()).await;
    assert_eq!(status, StatusCode::OK);
    for url in [&a, &b] {
        let s = http.gateway_summary(url, "").await;
        assert_eq!(common::totals_of(&s, "default"), (0, 0), "{url}: {s}");
        assert_eq!(common::totals_of(&s, "fallback"), (0, 0), "{url}: {s}");
        let (status, _) = http.get(&format!("{url}/payments/{}", ids[1])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{url} still knows a purged payment");
    }
    // The purged ids are free again, on either instance, and the books start over.
    for (i, id) in ids.iter().take(10).enumerate() {
        assert_eq!(post(&http, if i % 2 == 0 { &b } else { &a }, *id, "5.00").await, StatusCode::ACCEPTED);
    }
    // The processors' own books still hold the first 40; only the new 10 are ours now.
    eventually(Duration::from_secs(15), "the ten new payments to be processed", || async {
        let s = http.gateway_summary(&a, "").await;
        common::totals_of(&s, "default").0 + common::totals_of(&s, "fallback").0 == 10
    })
    .await;
    let s = http.gateway_summary(&b, "").await;
    let total = common::totals_of(&s, "default").1 + common::totals_of(&s, "fallback").1;
    assert_eq!(total, 10 * 500, "{s}");
}

/// A free loopback port (bound and released: another process could take it, tests accept that).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_holds_only_the_payments_it_is_forwarding() {
    let mut c = Cluster::start(0).await;
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let url = c.add_instance(&["--metrics-listen", &metrics]).await;
    let http = Http::default();
    for _ in 0..300 {
        assert_eq!(post(&http, &url, CorrelationId::random(), "2.50").await, StatusCode::ACCEPTED);
    }
    books_agree_everywhere(&http, &c).await;
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    eventually(Duration::from_secs(10), "the instance to hold no settled payment", || async {
        let (_, text) = http.get(&format!("http://{metrics}/metrics")).await;
        let text = String::from_utf8_lossy(&text).to_string();
        gauge(&text, "paygate_ledger_hot_payments") == 0.0 && gauge(&text, "paygate_cluster_lease_held") == 1.0
    })
    .await;
    // Lookups of payments it no longer holds are the database's.
    let s = http.gateway_summary(&url, "").await;
    assert_eq!(common::totals_of(&s, "default").0 + common::totals_of(&s, "fallback").0, 300);
}
