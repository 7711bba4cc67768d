//! Cluster mode (SPEC §6) under faults, end to end: real `paygate serve` processes with
//! `--database-url` on loopback sockets, a private PostgreSQL (tests/common/pg.rs), and the two
//! processor simulators in process. A client loop spreads fresh payments over the live
//! instances, retrying a payment elsewhere (same id, same amount) on a connection error, a
//! timeout or a `503`, while an instance is killed with SIGKILL, an instance is paused past its
//! lease with SIGSTOP, PostgreSQL is crashed and restarted, or the primary is crashed and its
//! synchronous standby promoted.
//!
//! Afterwards every payment the clients sent is audited against the processors' own records
//! (`GET /payments/{id}` on each simulator) and against the database: every `202` recorded by
//! exactly one processor, once, with its amount, and processed there in the books; nothing
//! recorded by both; nothing answered only `503` recorded or committed; the processors' books
//! hold nothing the clients did not send; every instance's summary equals the processors'.
//!
//! Timing is asserted only as generous upper bounds, each stated where it is defined.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use common::pg::Pg;
use common::procs::{Proc, TempDir};
use common::{ADMIN_TOKEN, RunningSim, SIM_TOKEN, cents, start_pair};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use paygate::domain::CorrelationId;
use tokio::time::Instant;

/// The lease tests/cluster.rs uses: short enough to watch takeovers, with an upstream timeout
/// below it.
const LEASE_MS: u64 = 1_500;
const UPSTREAM_TIMEOUT_MS: u64 = 1_000;
/// A payment waits this long for a failing default before it may go to the fallback.
const MAX_DEFER_MS: u64 = 1_000;
/// Slack on top of "the lease plus a second": a 2-core VM running PostgreSQL, two or three
/// gateways, the simulators and the clients at once stalls for hundreds of milliseconds at times.
const SLACK_MS: u64 = 3_000;
/// Survivors take a dead or paused instance's payments over within the lease plus a second
/// (plus [`SLACK_MS`]): 5.5 s.
const TAKEOVER_BOUND: Duration = Duration::from_millis(LEASE_MS + 1_000 + SLACK_MS);
/// A round whose default processor was failing just before the kill: payments deferred behind
/// it reach a processor only once the routers see it healthy again or the fallback takes them,
/// which has nothing to do with the takeover; they get this generous bound instead.
const FAILING_ROUND_RECORD_BOUND: Duration = Duration::from_secs(15);
/// After a fault ends (PostgreSQL back, standby promoted, instance woken) each instance must be
/// healthy and accept payments again within this (generous: a reconnect takes well under 5 s).
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);
/// A request to an instance that may be dead, paused or waiting on the database gives up after
/// this; its outcome is then unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(3_000);
/// A client retries one payment for this long before moving on to a fresh one.
const CLIENT_RETRY: Duration = Duration::from_millis(4_000);
/// Once the load stops, everything accepted must be settled in the books within this.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
const LOOKUP_WORKERS: usize = 16;

// ---------------------------------------------------------------------------------------------
// HTTP that reports transport failures instead of panicking: its peer may have just died.

#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

struct Reply {
    status: StatusCode,
    retry_after: bool,
    body: Bytes,
}

/// What `/health` said.
#[derive(Debug, Clone, Copy)]
struct Health {
    ok: bool,
    /// `cluster.epoch` (0 when the answer was a 503).
    epoch: i64,
    taken_over: u64,
}

impl Http {
    fn new() -> Http {
        Http(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    async fn try_send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: String, limit: Duration) -> Result<Reply, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        let exchange = async {
            let resp = self.0.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            let retry_after = resp.headers().contains_key(hyper::header::RETRY_AFTER);
            let body = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
            Ok(Reply { status, retry_after, body })
        };
        tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| Err("timed out".into()))
    }

    /// For peers that must be up: a transport error fails the test.
    async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: String) -> Reply {
        self.try_send(method, url, headers, body, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    async fn json(&self, url: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let r = self.send(Method::GET, url, headers, String::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).unwrap()
    }

    async fn pay(&self, gateway: &str, id: CorrelationId, cents: u128, limit: Duration) -> Result<Reply, String> {
        let body = format!(r#"{{"correlationId":"{id}","amount":{}.{:02}}}"#, cents / 100, cents % 100);
        self.try_send(Method::POST, &format!("{gateway}/payments"), &[("content-type", "application/json")], body, limit).await
    }

    async fn health(&self, gateway: &str) -> Result<Health, String> {
        let r = self.try_send(Method::GET, &format!("{gateway}/health"), &[], String::new(), Duration::from_secs(2)).await?;
        if r.status != StatusCode::OK {
            return Ok(Health { ok: false, epoch: 0, taken_over: 0 });
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let cluster = &v["cluster"];
        Ok(Health {
            ok: true,
            epoch: cluster["epoch"].as_i64().ok_or_else(|| format!("no cluster.epoch in {v}"))?,
            taken_over: cluster["takenOver"].as_u64().ok_or_else(|| format!("no cluster.takenOver in {v}"))?,
        })
    }

    /// `/health` of an instance that must answer 200 now.
    async fn healthy(&self, gateway: &str) -> Health {
        let h = self.health(gateway).await.unwrap_or_else(|e| panic!("{gateway}/health: {e}"));
        assert!(h.ok, "{gateway}/health is not 200");
        h
    }

    async fn sim_admin(&self, sim: &str, what: &str, body: String) {
        let headers = [("X-Rinha-Token", SIM_TOKEN), ("content-type", "application/json")];
        let r = self.send(Method::PUT, &format!("{sim}/admin/configurations/{what}"), &headers, body).await;
        assert_eq!(r.status, StatusCode::OK, "{sim} {what}: {}", String::from_utf8_lossy(&r.body));
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
        let r = self.send(Method::GET, &format!("{sim}/payments/{id}"), &[], String::new()).await;
        match r.status {
            StatusCode::OK => Some(cents(&serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["amount"])),
            StatusCode::NOT_FOUND => None,
            s => panic!("{sim}/payments/{id}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: database (and standby), simulators, instances.

struct Instance {
    name: String,
    url: String,
    log: PathBuf,
    /// `None` once killed.
    proc: Option<Proc>,
}

/// Field order is drop order: the instances die first, then the simulators, then PostgreSQL;
/// the temp dir (instance logs) goes last and is kept when the test fails.
struct Cluster {
    instances: Vec<Instance>,
    default: RunningSim,
    fallback: RunningSim,
    pg: Pg,
    standby: Option<Pg>,
    /// The standby was promoted: it holds the books now.
    promoted: bool,
    database_url: String,
    dir: TempDir,
}

impl Cluster {
    /// PostgreSQL (with a synchronous standby and a two-host URL that follows a failover, if
    /// asked), the simulators and `n` healthy instances.
    async fn start(n: usize, with_standby: bool) -> Cluster {
        let (pg, standby, database_url) = tokio::task::block_in_place(|| {
            let pg = Pg::start();
            if with_standby {
                let standby = pg.start_standby();
                let url = format!(
                    "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/paygate?target_session_attrs=read-write",
                    pg.port(),
                    standby.port()
                );
                (pg, Some(standby), url)
            } else {
                let url = pg.url();
                (pg, None, url)
            }
        });
        let (default, fallback) = start_pair().await;
        let mut c = Cluster {
            instances: Vec::new(),
            default,
            fallback,
            pg,
            standby,
            promoted: false,
            database_url,
            dir: TempDir::new("cluster-faults"),
        };
        for _ in 0..n {
            c.add_instance().await;
        }
        c
    }

    /// Starts instance `gw<N>` (a new `--instance-id` each time) and waits until it is healthy.
    async fn add_instance(&mut self) -> usize {
        let name = format!("gw{}", self.instances.len());
        let data = self.dir.0.join(&name);
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
            &UPSTREAM_TIMEOUT_MS.to_string(),
            "--max-defer-ms",
            &MAX_DEFER_MS.to_string(),
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--drain-ms",
            "0",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["--processor".into(), format!("default={}", self.default.url)]);
        args.extend(["--processor".into(), format!("fallback={}", self.fallback.url)]);
        args.extend(["--database-url".into(), self.database_url.clone(), "--instance-id".into(), name.clone()]);
        let log = self.dir.0.join(format!("{name}.log"));
        let proc = tokio::task::block_in_place(|| Proc::start(&args, "paygate listening on", &log));
        let url = proc.url.clone();
        self.instances.push(Instance { name, url: url.clone(), log: log.clone(), proc: Some(proc) });
        wait_healthy(&url, &log).await;
        self.instances.len() - 1
    }

    fn url(&self, i: usize) -> String {
        self.instances[i].url.clone()
    }

    fn live(&self) -> Vec<usize> {
        (0..self.instances.len()).filter(|&i| self.instances[i].proc.is_some()).collect()
    }

    fn live_urls(&self) -> Vec<String> {
        self.live().into_iter().map(|i| self.url(i)).collect()
    }

    /// kill -9, and reap.
    fn kill(&mut self, i: usize) {
        let p = self.instances[i].proc.take().expect("killing a live instance");
        tokio::task::block_in_place(|| p.kill());
    }

    fn proc(&self, i: usize) -> &Proc {
        self.instances[i].proc.as_ref().expect("a live instance")
    }

    /// The server holding the books now.
    fn db(&self) -> &Pg {
        if self.promoted { self.standby.as_ref().unwrap() } else { &self.pg }
    }

    fn sql(&self, query: &str) -> String {
        tokio::task::block_in_place(|| self.db().psql(query))
    }

    fn count(&self, query: &str) -> u64 {
        let out = self.sql(query);
        out.parse().unwrap_or_else(|_| panic!("`{query}` answered {out:?}"))
    }

    /// What the books still hold under `epoch`: its lease row and its unsettled payments.
    fn held_by_epoch(&self, epoch: i64) -> u64 {
        self.count(&format!(
            "SELECT (SELECT count(*) FROM paygate_leases WHERE epoch = {epoch})
                  + (SELECT count(*) FROM paygate_payments WHERE epoch = {epoch} AND status < 2)"
        ))
    }

    fn sims(&self) -> [(&'static str, String); 2] {
        [("default", self.default.url.clone()), ("fallback", self.fallback.url.clone())]
    }

    /// The last lines of an instance's log, for failure messages.
    fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.instances[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!("last lines of {}:\n{}", self.instances[i].log.display(), all[all.len().saturating_sub(lines)..].join("\n"))
    }
}

async fn wait_healthy(url: &str, log: &std::path::Path) {
    let http = Http::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(h) = http.health(url).await
            && h.ok
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became healthy; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `done` every `every` until it holds; its time from `since`, or `None` after `limit`.
async fn poll_until<F, Fut>(since: Instant, limit: Duration, every: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if done().await {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The client loop.

/// What the clients learned about one payment over all its attempts.
#[derive(Clone, Debug)]
struct Sent {
    id: CorrelationId,
    cents: u128,
    /// Some attempt got `202`: the payment must be processed exactly once.
    accepted: bool,
    /// Some attempt got no answer (refused or reset connection, timeout): unless another
    /// attempt got `202`, it may or may not be accepted.
    cut_off: bool,
    /// An answer other than 202 and 503 (a fresh id with a valid amount has no other).
    unexpected: Option<String>,
}

impl Sent {
    fn new(cents: u128) -> Sent {
        Sent { id: CorrelationId::random(), cents, accepted: false, cut_off: false, unexpected: None }
    }

    /// Never accepted and never in doubt (only 503s): must reach neither a processor nor the books.
    fn surely_refused(&self) -> bool {
        !self.accepted && !self.cut_off
    }

    fn note(&mut self, r: &Result<Reply, String>, stats: &Stats) {
        match r {
            Ok(r) if r.status == StatusCode::ACCEPTED => {
                self.accepted = true;
                stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => {
                stats.unavailable.fetch_add(1, Ordering::Relaxed);
                if r.retry_after {
                    stats.unavailable_with_retry_after.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => self.unexpected = Some(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
            Err(_) => {
                self.cut_off = true;
                stats.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    unavailable: AtomicU64,
    unavailable_with_retry_after: AtomicU64,
    cut_off: AtomicU64,
}

impl Stats {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Clients posting fresh payments to the live instances until stopped.
struct Load {
    live: Arc<RwLock<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// Every `202` the clients got: id and when.
    acks: Arc<Mutex<Vec<(CorrelationId, Instant)>>>,
    stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
}

impl Load {
    fn start(http: &Http, live: Vec<String>, clients: usize) -> Load {
        let mut load = Load {
            live: Arc::new(RwLock::new(live)),
            stop: Arc::new(AtomicBool::new(false)),
            acks: Default::default(),
            stats: Default::default(),
            tasks: Vec::new(),
        };
        for _ in 0..clients {
            let (http, live, stop, acks, stats) =
                (http.clone(), load.live.clone(), load.stop.clone(), load.acks.clone(), load.stats.clone());
            load.tasks.push(tokio::spawn(client(http, live, stop, acks, stats)));
        }
        load
    }

    fn remove(&self, url: &str) {
        self.live.write().unwrap().retain(|u| u != url);
    }

    fn add(&self, url: String) {
        self.live.write().unwrap().push(url);
    }

    /// Payments acknowledged (202) before `t`.
    fn acked_before(&self, t: Instant) -> Vec<CorrelationId> {
        self.acks.lock().unwrap().iter().filter(|(_, at)| *at < t).map(|(id, _)| *id).collect()
    }

    fn accepted(&self) -> u64 {
        Stats::get(&self.stats.accepted)
    }

    async fn finish(self) -> (Vec<Sent>, Arc<Stats>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for t in self.tasks {
            sent.extend(t.await.unwrap());
        }
        (sent, self.stats)
    }
}

/// A random live instance, another than `last` when there is one.
fn pick(live: &RwLock<Vec<String>>, last: Option<&str>) -> Option<String> {
    let live = live.read().unwrap();
    let others: Vec<&String> = live.iter().filter(|u| Some(u.as_str()) != last).collect();
    if !others.is_empty() {
        return Some(others[fastrand::usize(..others.len())].clone());
    }
    live.first().cloned()
}

async fn client(
    http: Http,
    live: Arc<RwLock<Vec<String>>>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(CorrelationId, Instant)>>>,
    stats: Arc<Stats>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut p = Sent::new(fastrand::u128(1..=99_999));
        let give_up = Instant::now() + CLIENT_RETRY;
        let mut last: Option<String> = None;
        loop {
            let Some(url) = pick(&live, last.as_deref()) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if Instant::now() > give_up || stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            };
            let r = http.pay(&url, p.id, p.cents, CLIENT_TIMEOUT).await;
            p.note(&r, &stats);
            if p.accepted {
                acks.lock().unwrap().push((p.id, Instant::now()));
            }
            // Retried elsewhere on no answer or a 503; anything else is final.
            let retry = match &r {
                Ok(r) => r.status == StatusCode::SERVICE_UNAVAILABLE,
                Err(_) => true,
            };
            last = Some(url);
            if !retry || Instant::now() > give_up || stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(20..100))).await;
        }
        sent.push(p);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(10..30))).await;
    }
    sent
}

/// Posts one fresh payment to `gateway`, once.
async fn post_once(http: &Http, gateway: &str, stats: &Stats, limit: Duration) -> (Sent, Result<Reply, String>) {
    let mut p = Sent::new(fastrand::u128(1..=99_999));
    let r = http.pay(gateway, p.id, p.cents, limit).await;
    p.note(&r, stats);
    (p, r)
}

/// Posts one fresh payment to `gateway` (the same id again on a 503 or no answer) until it is
/// accepted; `None` for the time if it was not within `limit`.
async fn post_until_accepted(http: &Http, gateway: &str, stats: &Stats, limit: Duration) -> (Sent, Option<Duration>) {
    let mut p = Sent::new(fastrand::u128(1..=99_999));
    let started = Instant::now();
    loop {
        let r = http.pay(gateway, p.id, p.cents, CLIENT_TIMEOUT).await;
        p.note(&r, stats);
        if p.accepted {
            return (p, Some(started.elapsed()));
        }
        if p.unexpected.is_some() || started.elapsed() > limit {
            return (p, None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The audit.

/// Of `ids`, those that no processor has recorded yet.
async fn unrecorded(http: &Http, c: &Cluster, ids: &[CorrelationId]) -> Vec<CorrelationId> {
    let (d, f) = (c.default.url.clone(), c.fallback.url.clone());
    let http = http.clone();
    let found = common::lookup_all(ids, LOOKUP_WORKERS, move |id: CorrelationId| {
        let (http, d, f) = (http.clone(), d.clone(), f.clone());
        async move {
            let recorded = http.sim_payment(&d, id).await.is_some() || http.sim_payment(&f, id).await.is_some();
            (id, recorded)
        }
    })
    .await;
    found.into_iter().filter(|(_, r)| !*r).map(|(id, _)| id).collect()
}

fn first_few(items: &[String]) -> String {
    let shown: Vec<_> = items.iter().take(4).cloned().collect();
    format!("{}{}", shown.join("; "), if items.len() > 4 { "; ..." } else { "" })
}

/// Waits until the books hold no unsettled payment (nothing is on its way to a processor any
/// more), then audits every payment in `sent` against the processors and the database.
/// Returns what is wrong, one line per kind of defect.
async fn settle_and_audit(http: &Http, c: &Cluster, sent: &[Sent]) -> Vec<String> {
    let mut failures = Vec::new();
    let started = Instant::now();
    let settled = poll_until(started, SETTLE_LIMIT, Duration::from_millis(200), || async {
        c.count("SELECT count(*) FROM paygate_payments WHERE status < 2") == 0
    })
    .await;
    if settled.is_none() {
        let left = c.sql("SELECT id, status, processor, owner, epoch FROM paygate_payments WHERE status < 2 LIMIT 5");
        let leases = c.sql("SELECT epoch, owner, expires_at > now() FROM paygate_leases");
        failures.push(format!(
            "payments still unsettled in the books {SETTLE_LIMIT:?} after the load stopped, e.g. (id|status|processor|owner|epoch):\n{left}\n  leases (epoch|owner|live): {leases}"
        ));
    }
    // Longer than any simulator delay left: a request still sleeping in a simulator lands first.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let mut books: HashMap<u128, (i64, String, u128)> = HashMap::new();
    for line in c.sql("SELECT id, status, coalesce(processor, '-'), cents FROM paygate_payments").lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let id = CorrelationId::parse(cols[0].as_bytes()).unwrap_or_else(|| panic!("bad id in {line}"));
        books.insert(id.0, (cols[1].parse().unwrap(), cols[2].to_string(), cols[3].parse().unwrap()));
    }

    let looked_up = {
        let [(_, d), (_, f)] = c.sims();
        let http = http.clone();
        common::lookup_all(sent, LOOKUP_WORKERS, move |p: Sent| {
            let (http, d, f) = (http.clone(), d.clone(), f.clone());
            async move {
                let on_default = http.sim_payment(&d, p.id).await;
                let on_fallback = http.sim_payment(&f, p.id).await;
                (p, on_default, on_fallback)
            }
        })
        .await
    };

    let (mut lost, mut twice, mut wrong_amount, mut books_disagree, mut not_in_books) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut refused_but_recorded, mut refused_but_committed, mut unexpected) = (vec![], vec![], vec![]);
    let mut held: HashMap<&str, (u64, u128)> = HashMap::from([("default", (0, 0)), ("fallback", (0, 0))]);
    let (mut in_doubt, mut in_doubt_recorded) = (0, 0);
    for (p, on_default, on_fallback) in &looked_up {
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
        if let Some(u) = &p.unexpected {
            unexpected.push(format!("{}: {u}", p.id));
        }
        let row = books.get(&p.id.0);
        if p.accepted {
            match (recorded.as_slice(), row) {
                ([], _) => lost.push(format!("{} (books: {row:?})", p.id)),
                (_, None) => not_in_books.push(format!("{} recorded by {}", p.id, recorded[0].0)),
                ([(name, _)], Some((status, processor, c))) if *status != 2 || processor != name || *c != p.cents => {
                    books_disagree.push(format!("{} recorded by {name}, books say status {status} at {processor}, {c} cents", p.id))
                }
                _ => {}
            }
        } else if p.cut_off {
            in_doubt += 1;
            in_doubt_recorded += usize::from(!recorded.is_empty());
        } else {
            if !recorded.is_empty() {
                refused_but_recorded.push(format!("{} answered only 503, recorded by {}", p.id, recorded[0].0));
            }
            if let Some(r) = row {
                refused_but_committed.push(format!("{} answered only 503, in the books as {r:?}", p.id));
            }
        }
    }

    let mut disagree = Vec::new();
    for (name, url) in c.sims() {
        let theirs = http.sim_totals(&url).await;
        if theirs != held[name] {
            disagree
                .push(format!("{name} holds {theirs:?} (count, cents) but {:?} among the ids sent: a duplicate or a stray", held[name]));
        }
    }
    for url in c.live_urls() {
        let since = Instant::now();
        let mut last = String::new();
        let agreed = loop {
            let summary = http.json(&format!("{url}/payments-summary"), &[]).await;
            last.clear();
            for (name, sim) in c.sims() {
                let ours = (summary[name]["totalRequests"].as_u64().unwrap(), cents(&summary[name]["totalAmount"]));
                let theirs = http.sim_totals(&sim).await;
                if ours != theirs {
                    last.push_str(&format!("{name}: summary {ours:?} vs processor {theirs:?}; "));
                }
            }
            if last.is_empty() {
                break Some(since.elapsed());
            }
            if since.elapsed() > Duration::from_secs(10) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if agreed.is_none() {
            disagree.push(format!("{url}: {last}"));
        }
    }

    let accepted = sent.iter().filter(|p| p.accepted).count();
    println!(
        "audit: sent={} accepted={accepted} default={} fallback={} in_doubt={in_doubt} (recorded {in_doubt_recorded}) \
         refused={} lost={} twice={}",
        sent.len(),
        held["default"].0,
        held["fallback"].0,
        sent.iter().filter(|p| p.surely_refused()).count(),
        lost.len(),
        twice.len(),
    );
    for (what, list) in [
        ("accepted payments lost (202, then recorded by no processor)", &lost),
        ("payments recorded by both processors", &twice),
        ("payments recorded with another amount", &wrong_amount),
        ("accepted payments recorded by a processor but missing from the books", &not_in_books),
        ("accepted payments whose row in the books disagrees with the processor", &books_disagree),
        ("payments answered only 503 yet recorded by a processor", &refused_but_recorded),
        ("payments answered only 503 yet committed to the books", &refused_but_committed),
        ("answers other than 202 or 503 to a fresh payment", &unexpected),
        ("books that disagree", &disagree),
    ] {
        if !list.is_empty() {
            failures.push(format!("{} {what}: {}", list.len(), first_few(list)));
        }
    }
    if accepted == 0 {
        failures.push("no payment was accepted at all".into());
    }
    failures
}

fn check(failures: Vec<String>, what: &str) {
    assert!(failures.is_empty(), "{what}:\n  {}", failures.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// kill -9 of one of three instances at a random moment under load, four times; each victim is
/// replaced by a new instance with a new `--instance-id` (gw3, gw4, ...), started only once
/// the survivors have taken over, so that the takeover measured is the survivors'.
///
/// Per kill: the dead epoch's lease row is gone and it holds no unsettled payment any more
/// (the survivors took them over) within [`TAKEOVER_BOUND`] (lease + 1 s + 3 s slack) of the
/// kill; every payment acknowledged before the kill is recorded by a processor within the same
/// bound (within [`FAILING_ROUND_RECORD_BOUND`] in the round whose default processor was failing
/// just before the kill). Over all rounds the survivors' `/health` `cluster.takenOver` grew.
/// At the end, the full audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_nine_of_an_instance_under_load_repeatedly() {
    const KILLS: usize = 4;
    let mut c = Cluster::start(3, false).await;
    let http = Http::new();
    let (default, fallback) = (c.default.url.clone(), c.fallback.url.clone());
    let load = Load::start(&http, c.live_urls(), 8);
    let mut failures = Vec::new();
    let mut recorded: HashSet<CorrelationId> = HashSet::new();
    let mut taken_over = 0;
    for round in 0..KILLS {
        // Round 0 and 3: default slow (sends on the wire at the kill); 1: fast; 2: default
        // failing (payments deferred, some sent and failing) until just after the kill.
        let failing = round == 2;
        match round {
            0 | 3 => http.set_delay(&default, fastrand::u64(300..=700)).await,
            1 => http.set_delay(&default, 0).await,
            _ => {
                http.set_delay(&default, fastrand::u64(0..=200)).await;
                http.set_failing(&default, true).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(700..=1_500))).await;

        let live = c.live();
        let victim = live[fastrand::usize(..live.len())];
        let survivors: Vec<usize> = live.iter().copied().filter(|&i| i != victim).collect();
        let victim_url = c.url(victim);
        let epoch = http.healthy(&victim_url).await.epoch;
        let mut before = Vec::new();
        for &s in &survivors {
            before.push(http.healthy(&c.url(s)).await.taken_over);
        }
        let killed_at = Instant::now();
        c.kill(victim);
        load.remove(&victim_url);
        if failing {
            http.set_failing(&default, false).await;
            http.set_delay(&default, 0).await;
        }
        let held_at_kill = c.count(&format!("SELECT count(*) FROM paygate_payments WHERE epoch = {epoch} AND status < 2"));

        // The survivors take the dead epoch's payments over.
        let took = poll_until(killed_at, TAKEOVER_BOUND + Duration::from_secs(10), Duration::from_millis(50), || async {
            c.held_by_epoch(epoch) == 0
        })
        .await;
        match took {
            Some(t) if t <= TAKEOVER_BOUND => {}
            _ => failures.push(format!(
                "round {round}: {} (epoch {epoch}, {held_at_kill} unsettled at the kill) not taken over within {TAKEOVER_BOUND:?}: took {took:?}",
                c.instances[victim].name
            )),
        }

        // Everything acknowledged before the kill reaches a processor.
        let bound = if failing { FAILING_ROUND_RECORD_BOUND } else { TAKEOVER_BOUND };
        let mut waiting: Vec<CorrelationId> = load.acked_before(killed_at).into_iter().filter(|id| !recorded.contains(id)).collect();
        let acked = waiting.len();
        let all_recorded = loop {
            waiting = unrecorded(&http, &c, &waiting).await;
            if waiting.is_empty() {
                break Some(killed_at.elapsed());
            }
            if killed_at.elapsed() > bound + Duration::from_secs(10) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        recorded.extend(load.acked_before(killed_at).into_iter().filter(|id| !waiting.contains(id)));
        match all_recorded {
            Some(t) if t <= bound => {}
            _ => failures.push(format!(
                "round {round}: of {acked} payments acknowledged before {} was killed, {} not recorded by any processor within {bound:?} (took {all_recorded:?}), e.g. {:?}",
                c.instances[victim].name,
                waiting.len(),
                waiting.iter().take(3).map(|id| id.to_string()).collect::<Vec<_>>()
            )),
        }

        let mut delta = 0;
        for (k, &s) in survivors.iter().enumerate() {
            delta += http.healthy(&c.url(s)).await.taken_over - before[k];
        }
        taken_over += delta;
        println!(
            "round {round}: killed {} (epoch {epoch}) holding {held_at_kill} unsettled; taken over after {took:?} ({delta} payments by the survivors); \
             {acked} acknowledged before the kill all recorded after {all_recorded:?}",
            c.instances[victim].name
        );

        let replacement = c.add_instance().await;
        load.add(c.url(replacement));
    }

    http.set_delay(&default, 0).await;
    http.set_failing(&default, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, stats) = load.finish().await;
    http.set_delay(&fallback, 0).await;
    println!(
        "load: 202={} 503={} (with Retry-After {}) cut_off={}",
        Stats::get(&stats.accepted),
        Stats::get(&stats.unavailable),
        Stats::get(&stats.unavailable_with_retry_after),
        Stats::get(&stats.cut_off)
    );
    if taken_over == 0 {
        failures.push("the survivors' /health never counted a taken-over payment over all kills".into());
    }
    failures.extend(settle_and_audit(&http, &c, &sent).await);
    check(failures, &format!("after {KILLS} kill -9s under load"));
}

/// An instance (gw0) holds payments sent to a slow default processor (800 ms, below the 1 s
/// upstream timeout) and is SIGSTOPped with them on the wire, for the lease plus 2 s; from the
/// stop until 1.5 s after the wake-up the default fails (so the paused requests are refused,
/// and the fallback gets payments deferred past the deadline: a payment sent to both would show). The other
/// instance (gw1) takes them over within [`TAKEOVER_BOUND`] (the paused epoch's lease row gone
/// and no unsettled payment left under it; gw1's `takenOver` grew). Payments posted to the
/// paused instance meanwhile are answered only once it wakes. After SIGCONT, gw0's `/health`
/// says 200 with a new, higher epoch (it was fenced and registered again) and it accepts
/// payments again, within [`RECOVERY_LIMIT`]. Then the full audit: nothing recorded twice,
/// everything acknowledged recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_past_the_lease_then_sigcont_records_nothing_twice() {
    let c = Cluster::start(2, false).await;
    let http = Http::new();
    let (a, b) = (c.url(0), c.url(1));
    let default = c.default.url.clone();
    let mut failures = Vec::new();
    http.set_delay(&default, 800).await;
    let load = Load::start(&http, vec![a.clone(), b.clone()], 6);
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let epoch_a = http.healthy(&a).await.epoch;
    let taken_by_b = http.healthy(&b).await.taken_over;
    // A burst straight to gw0: its sends to the slow default are on the wire when it stops.
    let mut extra: Vec<Sent> = Vec::new();
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let (http, a, stats) = (http.clone(), a.clone(), load.stats.clone());
            tokio::spawn(async move { post_once(&http, &a, &stats, CLIENT_TIMEOUT).await.0 })
        })
        .collect();
    for t in burst {
        extra.push(t.await.unwrap());
    }
    let burst_accepted = extra.iter().filter(|p| p.accepted).count();
    assert!(burst_accepted > 0, "gw0 accepted none of the burst");
    tokio::time::sleep(Duration::from_millis(100)).await;

    c.proc(0).signal("STOP");
    let stopped_at = Instant::now();
    // From now on the default fails (it decides after its delay, so gw0's requests on the wire
    // are refused too): gw1 must keep what it takes over pinned to the default, and the woken
    // gw0, told "not recorded", must not send those payments anywhere else.
    http.set_failing(&default, true).await;
    // gw0 is frozen: what the books hold under its epoch is what it holds.
    let sent_held = c.count(&format!("SELECT count(*) FROM paygate_payments WHERE epoch = {epoch_a} AND status = 1"));
    let pending_held = c.count(&format!("SELECT count(*) FROM paygate_payments WHERE epoch = {epoch_a} AND status = 0"));
    let in_flight = c.default.sim.payments_in_flight();
    assert!(sent_held > 0, "gw0 was stopped with no payment sent and unsettled (in flight at the default: {in_flight})");

    // Posted to the paused instance: answered (or cut off) only once it wakes.
    let to_paused: Vec<_> = (0..5)
        .map(|_| {
            let (http, a, stats) = (http.clone(), a.clone(), load.stats.clone());
            tokio::spawn(async move { post_once(&http, &a, &stats, Duration::from_secs(30)).await })
        })
        .collect();

    let took = poll_until(stopped_at, TAKEOVER_BOUND + Duration::from_secs(10), Duration::from_millis(50), || async {
        c.held_by_epoch(epoch_a) == 0
    })
    .await;
    if took.is_none_or(|t| t > TAKEOVER_BOUND) {
        failures.push(format!("gw1 did not take the paused gw0's payments over within {TAKEOVER_BOUND:?}: took {took:?}"));
    }
    let taken_now = http.healthy(&b).await.taken_over;
    if taken_now <= taken_by_b {
        failures.push(format!("gw1's takenOver stayed at {taken_by_b} while gw0 was paused"));
    }
    // Paused well past its lease.
    let wake_at = stopped_at + Duration::from_millis(LEASE_MS + 2_000);
    tokio::time::sleep_until(wake_at).await;
    let paused_for = stopped_at.elapsed();
    c.proc(0).signal("CONT");
    let woke_at = Instant::now();

    // gw0 learns its lease is gone, registers anew and serves again.
    let mut last: Option<Health>;
    let new_epoch = loop {
        last = http.health(&a).await.ok();
        if last.is_some_and(|h| h.ok && h.epoch > epoch_a) {
            break Some(woke_at.elapsed());
        }
        if woke_at.elapsed() > RECOVERY_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if new_epoch.is_none() {
        failures.push(format!("gw0's /health never said a new epoch after SIGCONT (last: {last:?}); {}", c.log_tail(0, 20)));
    }
    let (p, served) = post_until_accepted(&http, &a, &load.stats, RECOVERY_LIMIT).await;
    extra.push(p);
    if served.is_none() {
        failures.push(format!("gw0 accepted no payment within {RECOVERY_LIMIT:?} after SIGCONT; {}", c.log_tail(0, 20)));
    }
    let mut paused_answers = Vec::new();
    for t in to_paused {
        let (p, r) = t.await.unwrap();
        paused_answers.push(match &r {
            Ok(r) => r.status.as_u16().to_string(),
            Err(e) => e.clone(),
        });
        extra.push(p);
    }
    println!(
        "sigstop: gw0 (epoch {epoch_a}) paused for {paused_for:?} holding {sent_held} sent + {pending_held} pending \
         ({in_flight} in flight at the default); taken over after {took:?} (gw1 takenOver {taken_by_b} -> {taken_now}); \
         new epoch {:?} after {new_epoch:?}; serving again after {served:?}; posted while paused: {paused_answers:?}",
        last.map(|h| h.epoch)
    );

    // The default heals a while after gw0 woke: the payments pinned to it get recorded there;
    // meanwhile the fallback took what waited past the defer deadline.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    http.set_failing(&default, false).await;
    http.set_delay(&default, 0).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (mut sent, _) = load.finish().await;
    sent.extend(extra);
    failures.extend(settle_and_audit(&http, &c, &sent).await);
    check(failures, "after a SIGSTOP past the lease and a SIGCONT");
}

/// PostgreSQL crashed (`pg_ctl stop -m immediate`) under load and started again, twice, each
/// time down for at least the lease plus a second. During each outage: every instance's
/// `/health` turns 503 (within 10 s of the crash) and a payment posted to each is refused with
/// 503 and a `Retry-After`. After each restart every instance is healthy and accepts payments
/// again by itself within [`RECOVERY_LIMIT`], and the load gets 202s again. Every 503 the
/// clients got carried a `Retry-After`. Then the full audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_nothing_and_recovers() {
    const OUTAGES: usize = 2;
    let mut c = Cluster::start(2, false).await;
    let http = Http::new();
    let urls = c.live_urls();
    let load = Load::start(&http, urls.clone(), 6);
    let mut failures = Vec::new();
    let mut extra = Vec::new();
    for outage in 0..OUTAGES {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..=2_000))).await;
        let unavailable_before = Stats::get(&load.stats.unavailable);
        tokio::task::block_in_place(|| c.pg.kill());
        let down_at = Instant::now();

        let mut unhealthy_after = Vec::new();
        for url in &urls {
            let t = poll_until(down_at, Duration::from_secs(10), Duration::from_millis(50), || async {
                http.health(url).await.is_ok_and(|h| !h.ok)
            })
            .await;
            if t.is_none() {
                failures.push(format!("outage {outage}: {url}/health never said 503 while PostgreSQL was down"));
            }
            unhealthy_after.push(t);
        }
        // /health says 503: a payment is refused at once, and told when to come back.
        for url in &urls {
            let (p, r) = post_once(&http, url, &load.stats, CLIENT_TIMEOUT).await;
            match &r {
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE && r.retry_after => {}
                Ok(r) => failures.push(format!(
                    "outage {outage}: {url} answered {} (Retry-After: {}) to a payment while PostgreSQL was down: {}",
                    r.status,
                    r.retry_after,
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) => failures.push(format!("outage {outage}: {url} gave no answer to a payment while PostgreSQL was down: {e}")),
            }
            extra.push(p);
        }
        // Down past the lease: the instances lose their leases too.
        tokio::time::sleep_until(down_at + Duration::from_millis(LEASE_MS + 1_000)).await;
        tokio::task::block_in_place(|| c.pg.start_again());
        let up_at = Instant::now();
        let down_for = up_at - down_at;
        let unavailable_during = Stats::get(&load.stats.unavailable) - unavailable_before;

        let mut recovered = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let healthy =
                poll_until(up_at, RECOVERY_LIMIT, Duration::from_millis(100), || async { http.health(url).await.is_ok_and(|h| h.ok) })
                    .await;
            if healthy.is_none() {
                failures.push(format!(
                    "outage {outage}: {url} not healthy within {RECOVERY_LIMIT:?} of PostgreSQL's restart; {}",
                    c.log_tail(i, 20)
                ));
            }
            let (p, served) = post_until_accepted(&http, url, &load.stats, RECOVERY_LIMIT).await;
            if served.is_none() {
                failures.push(format!(
                    "outage {outage}: {url} accepted nothing within {RECOVERY_LIMIT:?} of PostgreSQL's restart; {}",
                    c.log_tail(i, 20)
                ));
            }
            extra.push(p);
            recovered.push((healthy, served.map(|_| up_at.elapsed())));
        }
        let accepted_at_recovery = load.accepted();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let accepted_since = load.accepted() - accepted_at_recovery;
        if accepted_since == 0 {
            failures.push(format!("outage {outage}: the clients got no 202 in the second after the instances recovered"));
        }
        println!(
            "outage {outage}: down {down_for:?}; /health 503 after {unhealthy_after:?}; clients got {unavailable_during} 503s; \
             after the restart (healthy, accepting) = {recovered:?}; {accepted_since} 202s in the next second"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut sent, stats) = load.finish().await;
    sent.extend(extra);
    let (n503, with) = (Stats::get(&stats.unavailable), Stats::get(&stats.unavailable_with_retry_after));
    println!("load: 202={} 503={n503} (with Retry-After {with}) cut_off={}", Stats::get(&stats.accepted), Stats::get(&stats.cut_off));
    if n503 == 0 || with != n503 {
        failures.push(format!("{n503} answers 503, {with} of them with Retry-After: every 503 must carry one, and there must be some"));
    }
    failures.extend(settle_and_audit(&http, &c, &sent).await);
    check(failures, &format!("after {OUTAGES} PostgreSQL crashes under load"));
}

/// A primary with a synchronous standby; the instances' URL names both hosts with
/// `target_session_attrs=read-write`. Under load the primary is crashed (immediate) and the
/// standby promoted: every instance reconnects to it by itself and is healthy and accepting
/// within [`RECOVERY_LIMIT`] of the promotion, and the load gets 202s again. Every payment
/// acknowledged, before or after, is recorded exactly once and is in the promoted server's
/// books, processed there (the full audit reads the promoted server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_promotion_loses_no_acknowledged_payment() {
    let mut c = Cluster::start(2, true).await;
    let http = Http::new();
    let urls = c.live_urls();
    let load = Load::start(&http, urls.clone(), 6);
    let mut failures = Vec::new();
    let mut extra = Vec::new();
    // Some payments in flight at the crash: slow default.
    http.set_delay(&c.default.url, 300).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let accepted_before = load.accepted();
    assert!(accepted_before > 0, "no payment accepted before the crash");

    tokio::task::block_in_place(|| c.pg.kill());
    let crashed_at = Instant::now();
    // Sometimes promoted within the lease, sometimes past it (the instances then lose their
    // leases and take their own payments over on the promoted server).
    let gap = Duration::from_millis(fastrand::u64(0..=2_500));
    tokio::time::sleep(gap).await;
    tokio::task::block_in_place(|| c.standby.as_ref().unwrap().promote());
    c.promoted = true;
    let promoted_at = Instant::now();

    let mut recovered = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let healthy =
            poll_until(promoted_at, RECOVERY_LIMIT, Duration::from_millis(100), || async { http.health(url).await.is_ok_and(|h| h.ok) })
                .await;
        if healthy.is_none() {
            failures.push(format!("{url} not healthy within {RECOVERY_LIMIT:?} of the promotion; {}", c.log_tail(i, 20)));
        }
        let (p, served) = post_until_accepted(&http, url, &load.stats, RECOVERY_LIMIT).await;
        if served.is_none() {
            failures.push(format!("{url} accepted nothing within {RECOVERY_LIMIT:?} of the promotion; {}", c.log_tail(i, 20)));
        }
        extra.push(p);
        recovered.push((healthy, served.map(|_| promoted_at.elapsed())));
    }
    let accepted_at_recovery = load.accepted();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let accepted_since = load.accepted() - accepted_at_recovery;
    if accepted_since == 0 {
        failures.push("the clients got no 202 in the 1.5 s after the instances recovered".into());
    }
    println!(
        "promotion: {accepted_before} accepted before the crash; promoted {:?} after it (gap {gap:?}); after the promotion (healthy, accepting) = {recovered:?}; \
         {accepted_since} 202s in the next 1.5 s; the clients got {} 503s",
        promoted_at - crashed_at,
        Stats::get(&load.stats.unavailable)
    );
    http.set_delay(&c.default.url, 0).await;
    let (mut sent, _) = load.finish().await;
    sent.extend(extra);
    failures.extend(settle_and_audit(&http, &c, &sent).await);
    check(failures, "after the primary's crash and the standby's promotion");
}
