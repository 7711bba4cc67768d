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

    /// `serve` flags for instance `name`; a flag in `extra` (as `--flag value` pairs) replaces
    /// the default of the same name.
    fn args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let data = self.dir.0.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut pairs: Vec<(String, String)> = [
            ("--listen", "127.0.0.1:0".to_string()),
            ("--metrics-listen", "off".into()),
            ("--data-dir", data.to_str().unwrap().into()),
            ("--admin-token", ADMIN_TOKEN.into()),
            ("--upstream-timeout-ms", "1000".into()),
            ("--lease-ms", LEASE_MS.into()),
            ("--drain-ms", "0".into()),
            ("--database-url", self.pg.url()),
            ("--instance-id", name.into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        for pair in extra.chunks(2) {
            pairs.retain(|(k, _)| k != pair[0]);
            pairs.push((pair[0].to_string(), pair[1].to_string()));
        }
        let mut args = vec!["serve".to_string()];
        args.extend(["--processor".into(), format!("default={}", self.default.url)]);
        args.extend(["--processor".into(), format!("fallback={}", self.fallback.url)]);
        for (k, v) in pairs {
            args.extend([k, v]);
        }
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
    // Exact for every window, from either instance.
    for _ in 0..20 {
        let (from, to) = (fastrand::u64(0..20_000), fastrand::u64(0..20_000));
        let window = common::window_ago(Duration::from_millis(from.max(to)), Duration::from_millis(from.min(to)));
        for url in [&a, &b] {
            let bad = audit(&http, url, &c.sims(), &window).await;
            assert!(bad.is_empty(), "{bad:?}");
        }
    }
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
    let (status, _) = http.send(Method::POST, &format!("{a}/purge-payments"), &[("x-admin-token", ADMIN_TOKEN)], String::new()).await;
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
    // An instance that starts after the purge owes it nothing: what it accepts while its first
    // heartbeats come and go (a slow processor keeps them in flight) is forwarded.
    http.set_delay(&c.default, 1_200).await;
    let mut c = c;
    let late = c.add_instance(&[]).await;
    for _ in 0..5 {
        assert_eq!(post(&http, &late, CorrelationId::random(), "1.00").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "the late instance's payments to be processed", || async {
        let s = http.gateway_summary(&late, "").await;
        common::totals_of(&s, "default").0 + common::totals_of(&s, "fallback").0 == 15
    })
    .await;
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
    // Routed at acceptance, each payment cost two writes: its row (with the intent in it) and
    // its outcome; a separate intent would make three.
    let (_, text) = http.get(&format!("http://{metrics}/metrics")).await;
    let text = String::from_utf8_lossy(&text).to_string();
    assert_eq!(gauge(&text, "paygate_cluster_commit_operations_sum"), 600.0, "writes for 300 payments");
    // Lookups of payments it no longer holds are the database's.
    let s = http.gateway_summary(&url, "").await;
    assert_eq!(common::totals_of(&s, "default").0 + common::totals_of(&s, "fallback").0, 300);
}

type RawClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Full<bytes::Bytes>>;

fn raw_client() -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

/// `POST` that reports connection errors and timeouts instead of panicking; answers the status
/// and whether it carried `Retry-After`.
async fn raw_post(client: &RawClient, url: &str, body: String) -> Result<(StatusCode, bool), String> {
    use http_body_util::BodyExt;
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (status, retry_after) = (resp.status(), resp.headers().contains_key("retry-after"));
    let _ = resp.into_body().collect().await;
    Ok((status, retry_after))
}

/// What a client loop saw for one payment it kept posting until it got an answer.
struct Posted {
    id: CorrelationId,
    accepted: bool,
}

/// Posts `n` payments from `tasks` concurrent clients spread over `urls`, each retried (same
/// id, same amount) on 503 or a connection error until it is accepted or `limit` passes.
/// Counts the 503s and whether any carried Retry-After.
async fn post_many(urls: &[String], n: usize, tasks: usize, limit: Duration) -> (Vec<Posted>, usize, bool) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (urls, next) = (urls.to_vec(), next.clone());
        joins.push(tokio::spawn(async move {
            let client = raw_client();
            let (mut out, mut refused, mut retry_after) = (Vec::new(), 0usize, false);
            let deadline = Instant::now() + limit;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let id = CorrelationId::random();
                let mut accepted = false;
                let mut attempt = t;
                while Instant::now() < deadline {
                    let url = format!("{}/payments", urls[attempt % urls.len()]);
                    attempt += 1;
                    match raw_post(&client, &url, body(id, "4.20")).await {
                        Ok((StatusCode::ACCEPTED, _)) => {
                            accepted = true;
                            break;
                        }
                        Ok((StatusCode::SERVICE_UNAVAILABLE, ra)) => {
                            refused += 1;
                            retry_after |= ra;
                        }
                        Ok((other, _)) => panic!("unexpected {other} for {id}"),
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                out.push(Posted { id, accepted });
            }
            (out, refused, retry_after)
        }));
    }
    let (mut all, mut refused, mut retry_after) = (Vec::new(), 0, false);
    for j in joins {
        let (o, r, ra) = j.await.unwrap();
        all.extend(o);
        refused += r;
        retry_after |= ra;
    }
    (all, refused, retry_after)
}

/// Every accepted payment is recorded by exactly one processor; returns how many were.
async fn each_recorded_once(http: &Http, c: &Cluster, posted: &[Posted]) -> usize {
    let mut bad = Vec::new();
    for p in posted.iter().filter(|p| p.accepted) {
        let mut at = 0;
        for (_, sim) in c.sims() {
            let (status, _) = http.get(&format!("{}/payments/{}", sim.url, p.id)).await;
            at += usize::from(status == StatusCode::OK);
        }
        if at != 1 {
            bad.push(format!("{} recorded by {at} processors", p.id));
        }
    }
    assert!(bad.is_empty(), "{} of {} accepted payments: {:?}", bad.len(), posted.len(), &bad[..bad.len().min(10)]);
    posted.iter().filter(|p| p.accepted).count()
}

/// A TCP proxy in front of PostgreSQL that cuts every connection through it on demand, the way a
/// network or a server crash does: a statement in flight may or may not have committed.
struct CuttingProxy {
    port: u16,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl CuttingProxy {
    async fn start(target: u16) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, rx) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    rx.borrow_and_update();
                    // Ends at the next cut (or when the proxy is dropped with its test).
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        CuttingProxy { port, cuts }
    }

    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_cut_mid_commit_neither_lose_nor_forward_twice() {
    let mut c = Cluster::start(0).await;
    let proxy = std::sync::Arc::new(CuttingProxy::start(c.pg.port()).await);
    let url = format!("postgres://postgres@127.0.0.1:{}/paygate", proxy.port);
    // A lease long enough that the cuts never cost one: this test is about unknown commits.
    let a = c.add_instance(&["--database-url", &url, "--lease-ms", "5000"]).await;
    let b = c.add_instance(&["--database-url", &url, "--lease-ms", "5000"]).await;
    let cutting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cutter = {
        let (cutting, proxy) = (cutting.clone(), proxy.clone());
        tokio::spawn(async move {
            let mut cuts = 0u32;
            while cutting.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(30 + fastrand::u64(0..120))).await;
                proxy.cut();
                cuts += 1;
            }
            cuts
        })
    };
    let (posted, refused, _) = post_many(&[a.clone(), b.clone()], 3_000, 16, Duration::from_secs(90)).await;
    cutting.store(false, std::sync::atomic::Ordering::Relaxed);
    let cuts = cutter.await.unwrap();
    assert!(posted.iter().all(|p| p.accepted), "every payment is accepted in the end");
    books_agree_everywhere(&Http::default(), &c).await;
    let http = Http::default();
    let recorded = each_recorded_once(&http, &c, &posted).await;
    let forwarded = c.default.sim.payment_requests() + c.fallback.sim.payment_requests();
    assert_eq!(forwarded, recorded as u64, "{cuts} cuts, {refused} refusals: a payment was forwarded twice");
    let logs: String = (0..2).map(|i| std::fs::read_to_string(c.dir.0.join(format!("gw{i}.log"))).unwrap()).collect();
    let unknown = logs.matches("commit outcome was unknown").count();
    eprintln!("{recorded} payments, {cuts} connection cuts, {refused} answers 503, {unknown} commits read back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_database_gets_503_with_retry_after_and_nothing_is_lost() {
    let c = Cluster::start(2).await;
    let http = Http::default();
    let urls = [c.url(0), c.url(1)];
    let (before, _, _) = post_many(&urls, 100, 4, Duration::from_secs(30)).await;
    c.pg.psql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();");
    for url in &urls {
        eventually(Duration::from_secs(15), "/health to answer 503 while the database refuses writes", || async {
            http.get(&format!("{url}/health")).await.0 == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
    }
    let (status, retry_after) =
        raw_post(&raw_client(), &format!("{}/payments", urls[0]), body(CorrelationId::random(), "1.00")).await.unwrap();
    assert_eq!((status, retry_after), (StatusCode::SERVICE_UNAVAILABLE, true));
    c.pg.psql("ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf();");
    for url in &urls {
        eventually(Duration::from_secs(20), "the instance to recover by itself", || async {
            http.get(&format!("{url}/health")).await.0 == StatusCode::OK
        })
        .await;
    }
    let (after, _, _) = post_many(&urls, 100, 4, Duration::from_secs(30)).await;
    books_agree_everywhere(&http, &c).await;
    let all: Vec<Posted> = before.into_iter().chain(after).collect();
    assert!(all.iter().all(|p| p.accepted));
    assert_eq!(each_recorded_once(&http, &c, &all).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acceptances_share_commits() {
    let c = Cluster::start(1).await;
    let commits = || c.pg.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'paygate'").parse::<u64>().unwrap();
    // Statistics reach pg_stat_database within a second of a transaction's end.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let before = commits();
    let (posted, _, _) = post_many(&[c.url(0)], 2_000, 64, Duration::from_secs(60)).await;
    assert!(posted.iter().all(|p| p.accepted));
    books_agree_everywhere(&Http::default(), &c).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let used = commits() - before;
    // One commit each would be 2 000 for the acceptances and as many for the outcomes; the
    // heartbeats, health reads and our own queries add a few per second.
    assert!(used < 2_000, "{used} commits for 2 000 payments: acceptances do not share commits");
    eprintln!("{used} commits for 2 000 payments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_apply_the_schema_once_and_a_newer_schema_stops_the_start() {
    let mut c = Cluster::start(0).await;
    // Three instances at the same instant on an empty database.
    let args: Vec<(Vec<String>, std::path::PathBuf)> =
        (0..3).map(|i| (c.args(&format!("gw{i}"), &[]), c.dir.0.join(format!("gw{i}.log")))).collect();
    let procs: Vec<Proc> = std::thread::scope(|s| {
        let handles: Vec<_> = args.iter().map(|(a, log)| s.spawn(move || Proc::start(a, "paygate listening on", log))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, (_, log)) in procs.iter().zip(&args) {
        wait_healthy(&p.url, log).await;
    }
    c.instances.extend(procs);
    assert_eq!(c.pg.psql("SELECT count(*), max(version) FROM paygate_migrations"), "1|1");
    let http = Http::default();
    for i in 0..3 {
        assert_eq!(post(&http, &c.url(i), CorrelationId::random(), "1.50").await, StatusCode::ACCEPTED);
    }
    // A database migrated by a newer paygate: this one refuses to start rather than guess.
    c.pg.psql("INSERT INTO paygate_migrations (version) VALUES (999)");
    let log = c.dir.0.join("old.log");
    let mut old = Proc::start(&c.args("old", &[]), "paygate listening on", &log);
    let status = old.wait_exit(Duration::from_secs(30)).expect("an instance on a newer schema must stop");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("newer than this binary"), "{text}");
}
