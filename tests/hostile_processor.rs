//! The gateway against a processor that misbehaves: a scripted fake on loopback answers
//! `POST /payments`, `GET /payments/{id}` and `GET /payments/service-health` with whatever a
//! test asks for (any status, headers and body, a body that drips, bytes that are not HTTP, a
//! closed connection, or nothing at all). The fake is processor `default`; a real simulator is
//! `fallback`. Every test checks observable behaviour only: where each payment ends up, that
//! the books agree, that the gateway keeps serving, and that nothing in it panicked.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use paygate::config::GatewayConfig;
use paygate::domain::CorrelationId;
use paygate::sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Each test case's limit for anything it waits for; generous, as the machine may be slow.
const WAIT_LIMIT: Duration = Duration::from_secs(15);
/// The gateway's time limit per upstream request in these tests.
const UPSTREAM_TIMEOUT_MS: u64 = 300;
/// How long a payment waits for a failing `default` before it may go to `fallback`.
const MAX_DEFER_MS: u64 = 200;
/// How often the gateway asks the fake's health endpoint (the CLI's 5 s floor does not apply
/// in-process), so that a hostile health answer is read at once.
const HEALTH_INTERVAL_MS: u64 = 50;
/// How long a held `POST /payments` waits for the rest of its batch before it is answered
/// anyway; below the upstream timeout so that the scripted answer, not a timeout, is what
/// the gateway sees.
const HOLD_MAX_MS: u64 = 200;
/// How long an unknown outcome is watched before the fake's lookup starts telling the truth:
/// several times `MAX_DEFER_MS` and several resolve rounds.
const PINNED_WATCH_MS: u64 = 800;
/// A body far beyond anything a processor legitimately answers.
const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Bytes in a dripping body, and the pause before each: 100 s in all, far past the timeout.
const DRIP_BYTES: usize = 1_000;
const DRIP_EVERY_MS: u64 = 100;
/// Largest request head the fake reads.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

const AMOUNT: &str = "12.34";
const AMOUNT_CENTS: u128 = 1234;

// ---------------------------------------------------------------------------------------------
// Panic watch. The gateway runs in-process, and tokio catches a panicking task, so a panic
// that would kill the release binary (panic = "abort") is invisible unless we look for it.

static GATEWAY_PANICKED: AtomicBool = AtomicBool::new(false);
static FIRST_GATEWAY_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs (once per test binary) a hook that flags any panic raised outside this test's own
/// code; a failing assertion in tests/ is a test failure, reported as such, not a crash.
fn watch_for_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|l| l.file().starts_with("tests/") || l.file().starts_with("tests\\"));
            if !in_tests {
                GATEWAY_PANICKED.store(true, Ordering::SeqCst);
                let mut first = FIRST_GATEWAY_PANIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert_with(|| info.to_string());
            }
            previous(info);
        }));
    });
}

fn assert_no_gateway_panic() {
    let first = FIRST_GATEWAY_PANIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(!GATEWAY_PANICKED.load(Ordering::SeqCst), "the gateway panicked: {first:?}");
}

// ---------------------------------------------------------------------------------------------
// The scripted fake processor: a raw TCP server, so that it can also send what is not HTTP.

/// How the fake answers one request. Every HTTP answer says `connection: close`, so that each
/// request gets a fresh connection and one answer cannot leak into the next.
#[derive(Clone)]
enum Answer {
    /// A complete answer with a `content-length`.
    Http { status: u16, headers: Vec<(&'static str, String)>, body: Vec<u8> },
    /// A head announcing `DRIP_BYTES`, then the body one byte per `DRIP_EVERY_MS`.
    Drip { status: u16 },
    /// These bytes, then close: not HTTP at all.
    Raw(Vec<u8>),
    /// Read the request, then close without a word.
    Close,
    /// Read the request and never answer.
    Hang,
    /// Lookups only: 200 with what the payment's first `POST` carried, or 404 if none came.
    Record,
}

fn status(code: u16) -> Answer {
    Answer::Http { status: code, headers: Vec::new(), body: Vec::new() }
}

fn with_body(code: u16, body: impl Into<Vec<u8>>) -> Answer {
    Answer::Http { status: code, headers: vec![("content-type", "application/json".into())], body: body.into() }
}

fn rate_limited(retry_after: &str) -> Answer {
    Answer::Http { status: 429, headers: vec![("retry-after", retry_after.into())], body: Vec::new() }
}

fn processed() -> Answer {
    with_body(200, r#"{"message":"payment processed successfully"}"#)
}

fn huge_body() -> Answer {
    with_body(200, vec![b'x'; HUGE_BODY_BYTES])
}

fn redirect() -> Answer {
    Answer::Http { status: 302, headers: vec![("location", "/elsewhere".into())], body: Vec::new() }
}

fn not_http() -> Answer {
    Answer::Raw(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x01\x02\r\n\r\n".to_vec())
}

/// One `POST /payments` the fake received: the raw texts of its fields.
#[derive(Clone, Debug)]
struct Post {
    id: String,
    amount: String,
    requested_at: String,
}

struct Script {
    pay: Answer,
    lookup: Answer,
    health: Answer,
    /// Answers no `POST` before this many distinct payments arrived (or `HOLD_MAX_MS` passed),
    /// so that a batch is routed to `default` before any outcome can open its breaker.
    hold_posts_until: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            pay: processed(),
            lookup: status(404),
            health: with_body(200, r#"{"failing":false,"minResponseTime":0}"#),
            hold_posts_until: 0,
        }
    }
}

#[derive(Default)]
struct FakeState {
    script: Mutex<Script>,
    posts: Mutex<Vec<Post>>,
    health_calls: AtomicU64,
    lookup_calls: AtomicU64,
    post_arrived: Notify,
}

struct Fake {
    url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fake {
    async fn start(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(FakeState { script: Mutex::new(script), ..FakeState::default() });
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((sock, _)) = listener.accept().await {
                    tokio::spawn(serve_one(sock, state.clone()));
                }
            }
        });
        Fake { url, state, server }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.state.script.lock().unwrap()
    }

    fn set_lookup(&self, answer: Answer) {
        self.script().lookup = answer;
    }

    fn posts(&self) -> Vec<Post> {
        self.state.posts.lock().unwrap().clone()
    }

    fn distinct_ids_posted(&self) -> usize {
        distinct_ids(&self.state.posts.lock().unwrap())
    }

    /// The requestedAt the gateway sent for `id`; every re-send must carry the same one.
    fn requested_at_of(&self, id: CorrelationId) -> String {
        let id = id.to_string();
        let sent: Vec<String> = self.posts().into_iter().filter(|p| p.id == id).map(|p| p.requested_at).collect();
        assert!(!sent.is_empty(), "{id} never reached the fake");
        assert!(sent.iter().all(|s| *s == sent[0]), "{id} re-sent with another requestedAt: {sent:?}");
        sent[0].clone()
    }

    fn lookup_calls(&self) -> u64 {
        self.state.lookup_calls.load(Ordering::SeqCst)
    }

    fn health_calls(&self) -> u64 {
        self.state.health_calls.load(Ordering::SeqCst)
    }
}

fn distinct_ids(posts: &[Post]) -> usize {
    posts.iter().map(|p| p.id.as_str()).collect::<std::collections::HashSet<_>>().len()
}

/// Reads one request (head and `content-length` body); None if the peer sent something else.
async fn read_request(sock: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_HEAD_BYTES {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?.to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.trim().parse::<usize>().ok())?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, body))
}

async fn serve_one(mut sock: TcpStream, state: Arc<FakeState>) {
    let Some((method, path, body)) = read_request(&mut sock).await else { return };
    let answer = match (method.as_str(), path.as_str()) {
        ("POST", "/payments") => {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("the gateway sends JSON");
            let post = Post {
                id: v["correlationId"].as_str().unwrap().to_string(),
                amount: v["amount"].to_string(),
                requested_at: v["requestedAt"].as_str().unwrap().to_string(),
            };
            state.posts.lock().unwrap().push(post);
            state.post_arrived.notify_waiters();
            hold(&state).await;
            state.script.lock().unwrap().pay.clone()
        }
        ("GET", "/payments/service-health") => {
            state.health_calls.fetch_add(1, Ordering::SeqCst);
            state.script.lock().unwrap().health.clone()
        }
        ("GET", p) if p.starts_with("/payments/") => {
            state.lookup_calls.fetch_add(1, Ordering::SeqCst);
            match state.script.lock().unwrap().lookup.clone() {
                Answer::Record => {
                    let id = &p["/payments/".len()..];
                    let posts = state.posts.lock().unwrap();
                    match posts.iter().find(|x| x.id == id) {
                        Some(x) => with_body(
                            200,
                            format!(r#"{{"correlationId":"{}","amount":{},"requestedAt":"{}"}}"#, x.id, x.amount, x.requested_at),
                        ),
                        None => status(404),
                    }
                }
                other => other,
            }
        }
        _ => status(404),
    };
    send(answer, sock).await;
}

/// Waits until `hold_posts_until` distinct payments have arrived, or `HOLD_MAX_MS`.
async fn hold(state: &FakeState) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HOLD_MAX_MS);
    loop {
        let arrived = state.post_arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let want = state.script.lock().unwrap().hold_posts_until;
        if distinct_ids(&state.posts.lock().unwrap()) >= want {
            return;
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            return;
        }
    }
}

async fn send(answer: Answer, mut sock: TcpStream) {
    let head = |status: u16, length: usize, headers: &[(&str, String)]| {
        let mut h = format!("HTTP/1.1 {status} Fake\r\ncontent-length: {length}\r\nconnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    match answer {
        Answer::Http { status, headers, body } => {
            // The gateway may hang up part-way through a huge body; that is its right.
            if sock.write_all(&head(status, body.len(), &headers)).await.is_ok() {
                let _ = sock.write_all(&body).await;
            }
        }
        Answer::Drip { status } => {
            if sock.write_all(&head(status, DRIP_BYTES, &[])).await.is_err() {
                return;
            }
            for _ in 0..DRIP_BYTES {
                tokio::time::sleep(Duration::from_millis(DRIP_EVERY_MS)).await;
                if sock.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }
        Answer::Raw(bytes) => {
            let _ = sock.write_all(&bytes).await;
        }
        Answer::Close | Answer::Record => {}
        Answer::Hang => std::future::pending::<()>().await,
    }
    let _ = sock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers over the gateway.

/// A gateway with the fake as `default` and the simulator as `fallback`, with short limits.
fn hostile_config(fake: &Fake, fallback: &RunningSim) -> GatewayConfig {
    let mut config = gateway_config(&[("fallback", fallback)]);
    config.processors.insert(0, ("default".into(), fake.url.clone()));
    config.upstream_timeout = Duration::from_millis(UPSTREAM_TIMEOUT_MS);
    config.max_defer = Duration::from_millis(MAX_DEFER_MS);
    config.health_interval = Duration::from_millis(HEALTH_INTERVAL_MS);
    config
}

/// Posts `n` new payments at once, so that they reach the router together.
async fn pay_batch(http: &Http, gateway: &str, n: usize) -> Vec<CorrelationId> {
    let ids: Vec<_> = (0..n).map(|_| CorrelationId::random()).collect();
    let sends: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (http, url) = (http.clone(), gateway.to_string());
            tokio::spawn(async move { http.pay(&url, id, AMOUNT).await })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), StatusCode::ACCEPTED);
    }
    ids
}

async fn payment_view(http: &Http, gateway: &str, id: CorrelationId) -> serde_json::Value {
    http.get_json(&format!("{gateway}/payments/{id}"), &[]).await
}

async fn assert_still_serving(http: &Http, gateway: &str) {
    assert_eq!(http.get(&format!("{gateway}/health")).await.0, StatusCode::OK);
}

/// Waits until every payment is processed, then checks each was processed by `default` at the
/// requestedAt the fake holds, that `fallback` never saw any, and that all books agree.
async fn assert_all_on_default(http: &Http, gw: &RunningGateway, fake: &Fake, fallback: &RunningSim, ids: &[CorrelationId]) {
    for &id in ids {
        eventually(WAIT_LIMIT, &format!("{id} processed"), || async { payment_view(http, &gw.url, id).await["status"] == "processed" })
            .await;
        let v = payment_view(http, &gw.url, id).await;
        assert_eq!(v["processor"], "default", "{v}");
        assert_eq!(v["requestedAt"].as_str().unwrap(), fake.requested_at_of(id), "{v}");
    }
    let n = ids.len() as u64;
    assert_eq!(fake.distinct_ids_posted() as u64, n);
    assert_eq!(fallback.sim.payment_count(), 0, "fallback must never see these payments");
    let g = http.gateway_summary(&gw.url, "").await;
    assert_eq!(totals_of(&g, "default"), (n, u128::from(n) * AMOUNT_CENTS));
    assert_eq!(totals_of(&g, "fallback"), (0, 0));
    assert_eq!(audit(http, &gw.url, &[("fallback", fallback)], "").await, Vec::<String>::new());
}

fn labelled(cases: Vec<(impl Into<String>, Answer)>) -> Vec<(String, Answer)> {
    cases.into_iter().map(|(label, answer)| (label.into(), answer)).collect()
}

/// Runs one case per label concurrently (each on its own fake, simulator and gateway) and
/// reports every failing case by its label, so that one run shows the whole table.
async fn run_cases<F, Fut>(cases: Vec<(String, Answer)>, case: F)
where
    F: Fn(String, Answer) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let running: Vec<_> = cases.into_iter().map(|(label, answer)| (label.clone(), tokio::spawn(case(label, answer)))).collect();
    let mut failed = Vec::new();
    for (label, task) in running {
        if let Err(e) = task.await {
            let e = e.into_panic();
            let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            failed.push(format!("{label}: {}", why.unwrap_or_default()));
        }
    }
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    assert_no_gateway_panic();
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_health_answers_neither_crash_the_gateway_nor_stop_payments() {
    watch_for_panics();
    let cases = vec![
        ("429 Retry-After u64::MAX", rate_limited("18446744073709551615")),
        ("429 Retry-After past u64", rate_limited("99999999999999999999999")),
        ("429 Retry-After -5", rate_limited("-5")),
        ("429 Retry-After soon", rate_limited("soon")),
        ("429 Retry-After HTTP date", rate_limited("Wed, 21 Oct 2015 07:28:00 GMT")),
        ("429 Retry-After empty", rate_limited("")),
        ("429 without Retry-After", status(429)),
        ("200 minResponseTime -1", with_body(200, r#"{"failing":false,"minResponseTime":-1}"#)),
        ("200 minResponseTime u64::MAX", with_body(200, r#"{"failing":false,"minResponseTime":18446744073709551615}"#)),
        ("200 minResponseTime 1e308", with_body(200, r#"{"failing":false,"minResponseTime":1e308}"#)),
        ("200 not JSON", with_body(200, "<html>ok</html>")),
        ("200 huge", huge_body()),
        ("not HTTP", not_http()),
    ];
    for (label, health) in cases {
        let fake = Fake::start(Script { health, ..Script::default() }).await;
        let fallback = start_sim(SimConfig::new(150_000)).await;
        let gw = start_gateway(hostile_config(&fake, &fallback)).await;
        let http = Http::default();
        eventually(WAIT_LIMIT, &format!("{label}: health asked"), || async { fake.health_calls() >= 1 }).await;
        // Give the monitor time to act on the answer (and ask again when it may).
        tokio::time::sleep(Duration::from_millis(4 * HEALTH_INTERVAL_MS)).await;
        assert!(!GATEWAY_PANICKED.load(Ordering::SeqCst), "{label}: the gateway panicked: {:?}", FIRST_GATEWAY_PANIC.lock().unwrap());
        assert_still_serving(&http, &gw.url).await;
        let ids = pay_batch(&http, &gw.url, 1).await;
        assert_all_on_default(&http, &gw, &fake, &fallback, &ids).await;
        gw.stop().await;
    }
    assert_no_gateway_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_that_prove_nothing_was_recorded_send_payments_to_fallback_exactly_once() {
    watch_for_panics();
    let cases = [400, 404, 415, 429, 500, 501].into_iter().map(|code| (format!("status {code}"), status(code))).collect();
    run_cases(labelled(cases), |label, pay| async move {
        const PAYMENTS: usize = 3;
        let fake = Fake::start(Script { pay, ..Script::default() }).await;
        let fallback = start_sim(SimConfig::new(150_000)).await;
        let gw = start_gateway(hostile_config(&fake, &fallback)).await;
        let http = Http::default();
        // One at a time: a lone payment's own retries must not keep taking `default`'s probe
        // slot (its health endpoint says healthy all along) and never reach `fallback`.
        for _ in 0..PAYMENTS {
            let id = pay_batch(&http, &gw.url, 1).await[0];
            eventually(WAIT_LIMIT, &format!("{label}: {id} processed"), || async {
                payment_view(&http, &gw.url, id).await["status"] == "processed"
            })
            .await;
            assert_eq!(payment_view(&http, &gw.url, id).await["processor"], "fallback", "{label}");
        }
        let n = PAYMENTS as u64;
        assert_eq!(fallback.sim.payment_count(), n, "{label}");
        assert_eq!(fallback.sim.payment_requests(), n, "{label}: each sent to fallback once");
        assert_eq!(http.sim_totals(&fallback, "").await, (n, u128::from(n) * AMOUNT_CENTS), "{label}");
        let g = http.gateway_summary(&gw.url, "").await;
        assert_eq!(totals_of(&g, "default"), (0, 0), "{label}");
        assert_eq!(audit(&http, &gw.url, &[("fallback", &fallback)], "").await, Vec::<String>::new(), "{label}");
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_prove_nothing_keep_payments_on_default_until_a_lookup_finds_them() {
    watch_for_panics();
    let mut cases: Vec<_> =
        [201, 302, 409, 502, 503, 504, 507, 999].into_iter().map(|code| (format!("status {code}"), status(code))).collect();
    cases.push(("302 with Location".into(), redirect()));
    cases.push(("not HTTP".into(), not_http()));
    cases.push(("closed without an answer".into(), Answer::Close));
    cases.push(("no answer within the timeout".into(), Answer::Hang));
    run_cases(labelled(cases), |label, pay| async move {
        const PAYMENTS: usize = 3;
        let fake = Fake::start(Script { pay, hold_posts_until: PAYMENTS, ..Script::default() }).await;
        let fallback = start_sim(SimConfig::new(150_000)).await;
        let gw = start_gateway(hostile_config(&fake, &fallback)).await;
        let http = Http::default();
        let ids = pay_batch(&http, &gw.url, PAYMENTS).await;
        eventually(WAIT_LIMIT, &format!("{label}: all at default"), || async { fake.distinct_ids_posted() == PAYMENTS }).await;
        // While the fake keeps answering this way, nothing proves where they stand.
        tokio::time::sleep(Duration::from_millis(PINNED_WATCH_MS)).await;
        for &id in &ids {
            assert_eq!(payment_view(&http, &gw.url, id).await["status"], "pending", "{label}");
        }
        assert_eq!(fallback.sim.payment_count(), 0, "{label}: went to fallback");
        assert_still_serving(&http, &gw.url).await;
        // Now the fake's records show them: that settles them, on default.
        fake.set_lookup(Answer::Record);
        assert_all_on_default(&http, &gw, &fake, &fallback, &ids).await;
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_counts_as_recorded_whatever_its_body() {
    watch_for_panics();
    let cases: Vec<(&str, Answer)> = vec![
        ("200 with a 10 MiB body", huge_body()),
        ("200 whose body drips past the timeout", Answer::Drip { status: 200 }),
        ("200 with a body that is not JSON", with_body(200, "<html><body>OK</body></html>")),
        ("200 with no body", status(200)),
    ];
    run_cases(labelled(cases), |_label, pay| async move {
        const PAYMENTS: usize = 3;
        let fake = Fake::start(Script { pay, ..Script::default() }).await;
        let fallback = start_sim(SimConfig::new(150_000)).await;
        let gw = start_gateway(hostile_config(&fake, &fallback)).await;
        let http = Http::default();
        let ids = pay_batch(&http, &gw.url, PAYMENTS).await;
        assert_all_on_default(&http, &gw, &fake, &fallback, &ids).await;
        assert_still_serving(&http, &gw.url).await;
        gw.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lookup_answers_keep_a_pinned_payment_pending_and_the_gateway_serving() {
    watch_for_panics();
    let cases: Vec<(&str, Answer)> = vec![
        ("not HTTP", not_http()),
        ("200 with a 10 MiB body", huge_body()),
        ("200 whose body drips past the timeout", Answer::Drip { status: 200 }),
        ("200 not JSON", with_body(200, "<html>found</html>")),
        ("200 without requestedAt", with_body(200, r#"{"correlationId":"x","amount":12.34}"#)),
        ("200 with a bad requestedAt", with_body(200, r#"{"requestedAt":"yesterday"}"#)),
        ("302", redirect()),
        ("500", status(500)),
        ("no answer", Answer::Hang),
    ];
    run_cases(labelled(cases), |label, lookup| async move {
        let fake = Fake::start(Script { pay: status(502), lookup, ..Script::default() }).await;
        let fallback = start_sim(SimConfig::new(150_000)).await;
        let gw = start_gateway(hostile_config(&fake, &fallback)).await;
        let http = Http::default();
        let ids = pay_batch(&http, &gw.url, 1).await;
        // A second lookup means the gateway has acted on the answer to the first.
        eventually(WAIT_LIMIT, &format!("{label}: looked up twice"), || async { fake.lookup_calls() >= 2 }).await;
        assert_still_serving(&http, &gw.url).await;
        assert_eq!(payment_view(&http, &gw.url, ids[0]).await["status"], "pending", "{label}");
        assert_eq!(fallback.sim.payment_count(), 0, "{label}: went to fallback");
        fake.set_lookup(Answer::Record);
        assert_all_on_default(&http, &gw, &fake, &fallback, &ids).await;
        gw.stop().await;
    })
    .await;
}
