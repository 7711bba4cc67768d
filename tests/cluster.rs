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
            "--metrics-listen",
            "off",
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
