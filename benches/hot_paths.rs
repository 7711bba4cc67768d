//! The gateway's hot paths, one criterion group each:
//!
//! - `parse_payment`: parse + validate the contest's `POST /payments` body (target < 300 ns),
//!   and the same body with spaces, which the exact-layout fast path leaves to serde_json.
//! - `ledger_apply`: one payment's Accepted, Intent and Processed events applied to a ledger
//!   state that already holds 100,000 payments.
//! - `summary_1m`: a payments-summary query over 1,000,000 processed payments (target < 50 µs).
//! - `request_loopback`: one `POST /payments` through a real loopback socket into an
//!   in-process gateway (journal on disk, fsync off and on), answered 202.
//!
//! Run with `just bench --bench hot_paths` (or `cargo bench --bench hot_paths`). Under
//! `cargo test --benches` each benchmark runs once on small fixtures, as a smoke test.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use paygate::api::payment;
use paygate::config::GatewayConfig;
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::ledger::summary::SummaryIndex;
use paygate::ledger::{Event, State};
use paygate::sim::{Sim, SimConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

// The binary's allocator, so that allocation costs match what the gateway pays.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONTEST_BODY: &[u8] = br#"{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":19.90}"#;
const SPACED_BODY: &[u8] = br#"{ "correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.90 }"#;
const PROCESSORS: [&str; 2] = ["default", "fallback"];
/// An arbitrary fixed epoch for fixtures (2025-07-15T00:00:00Z), so runs are comparable.
const T0: i64 = 1_752_537_600_000;

/// `cargo bench` passes `--bench`; `cargo test --benches` does not, and then each benchmark
/// runs once, so fixtures shrink to keep `cargo test --all-targets` quick.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn cents(v: u64) -> Cents {
    Cents::new(v).expect("positive amount")
}

/// Accepted, Intent and Processed for one payment: what the ledger applies over its life.
fn lifecycle(id: CorrelationId, amount: u64, accepted_at: i64, processor: u8, requested_at: i64) -> [Event; 3] {
    let requested_at = UtcMillis(requested_at);
    [
        Event::Accepted { id, cents: cents(amount), accepted_at: UtcMillis(accepted_at) },
        Event::Intent { id, processor, requested_at },
        Event::Processed { id, processor, requested_at },
    ]
}

fn apply_all(state: &mut State, events: &[Event]) {
    for e in events {
        state.apply(e).expect("fixture events apply");
    }
}

// ---------------------------------------------------------------------------------------------
// parse_payment

fn parse_payment(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_payment");
    g.throughput(Throughput::Bytes(CONTEST_BODY.len() as u64));
    g.bench_function("contest_body", |b| b.iter(|| payment::parse(black_box(CONTEST_BODY)).expect("valid body")));
    // The same payment with spaces: never the exact layout, always the full JSON parser.
    g.bench_function("spaced_body", |b| b.iter(|| payment::parse(black_box(SPACED_BODY)).expect("valid body")));
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// ledger_apply

/// Payments already in the state before the measured ones.
const PREFILL: usize = 100_000;
/// Measured payments applied to one copy of the pre-filled state. Small enough that the
/// state's hash table does not grow during a chunk (100k + 10k stays under the 114,688
/// entries a 131,072-bucket table holds), so every chunk sees the same table.
const APPLY_CHUNK: usize = 10_000;

fn ledger_apply(c: &mut Criterion) {
    let prefill = if full_run() { PREFILL } else { 1_000 };
    let mut base = State::new(&PROCESSORS);
    let mut rng = fastrand::Rng::with_seed(1);
    for i in 0..prefill as i64 {
        apply_all(&mut base, &lifecycle(CorrelationId(rng.u128(..)), 1990, T0 + i, (i % 2) as u8, T0 + i + 1));
    }
    let start_at = T0 + prefill as i64 + 10;

    let mut g = c.benchmark_group("ledger_apply");
    // Three events per iteration: criterion's elem/s is events per second.
    g.throughput(Throughput::Elements(3));
    g.bench_function(BenchmarkId::new("accepted_intent_processed", format!("{prefill}_prefilled")), |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(APPLY_CHUNK);
                left -= n;
                // Untimed: a fresh copy of the pre-filled state and fresh ids.
                let mut state = base.clone();
                let events: Vec<[Event; 3]> = (0..n as i64)
                    .map(|i| lifecycle(CorrelationId(rng.u128(..)), 1990, start_at + i, (i % 2) as u8, start_at + i + 1))
                    .collect();
                let started = Instant::now();
                for payment in &events {
                    for e in payment {
                        // An event that does not apply would be a defect: the ledger panics too.
                        if state.apply(black_box(e)).is_err() {
                            unreachable!("fresh ids always apply");
                        }
                    }
                }
                measured += started.elapsed();
                black_box(&state);
                drop(state);
            }
            measured
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// summary_1m

/// A state with `payments` processed payments spread over `span_ms` of `requestedAt`
/// milliseconds: in order, except 1 % that arrive up to 5 s late (retries, slow processors).
fn summary_fixture(payments: usize, span_ms: i64) -> Summaries {
    let mut rng = fastrand::Rng::with_seed(2);
    let mut state = Summaries(vec![SummaryIndex::new(); PROCESSORS.len()]);
    for i in 0..payments as i64 {
        let mut at = T0 + i * span_ms / payments as i64;
        if rng.u8(..100) == 0 {
            at = (at - rng.i64(1..=5_000)).max(T0);
        }
        let processor = usize::from(rng.u8(..10) == 0); // 90 % default, 10 % fallback
        state.0[processor].add(UtcMillis(at), paygate::domain::Cents::new(rng.u64(1..=100_000)).unwrap());
    }
    state
}

/// One summary index per processor, as the history keeps them.
struct Summaries(Vec<SummaryIndex>);

impl Summaries {
    fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Vec<paygate::ledger::Totals> {
        self.0.iter().map(|s| s.range(from, to)).collect()
    }
}

fn summary_1m(c: &mut Criterion) {
    let payments = if full_run() { 1_000_000 } else { 10_000 };
    let mut g = c.benchmark_group("summary_1m");
    // 60 s: the contest's shape (many payments per millisecond). 1,000 s: one payment per
    // millisecond, the most buckets a million payments can make in practice.
    for (label, span_ms) in [("60s", 60_000i64), ("1000s", 1_000_000)] {
        let state = summary_fixture(payments, span_ms);
        let totals = state.summary(None, None);
        assert_eq!(totals.iter().map(|t| t.count).sum::<u64>(), payments as u64);
        let mut rng = fastrand::Rng::with_seed(3);
        let windows: Vec<(UtcMillis, UtcMillis)> = (0..4096)
            .map(|_| {
                let (a, b) = (rng.i64(T0 - 1_000..=T0 + span_ms + 1_000), rng.i64(T0 - 1_000..=T0 + span_ms + 1_000));
                (UtcMillis(a.min(b)), UtcMillis(a.max(b)))
            })
            .collect();
        let mut next = 0usize;
        g.bench_function(BenchmarkId::new("random_window", label), |b| {
            b.iter(|| {
                let (from, to) = windows[next % windows.len()];
                next = next.wrapping_add(1);
                state.summary(Some(black_box(from)), Some(black_box(to)))
            })
        });
        g.bench_function(BenchmarkId::new("full_range_unbounded", label), |b| b.iter(|| state.summary(black_box(None), black_box(None))));
        let (first, last) = (UtcMillis(T0 - 5_000), UtcMillis(T0 + span_ms));
        g.bench_function(BenchmarkId::new("full_range_bounded", label), |b| {
            b.iter(|| state.summary(Some(black_box(first)), Some(black_box(last))))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// request_loopback

/// An in-process gateway over two in-process simulated processors, on loopback port 0.
struct Stack {
    addr: std::net::SocketAddr,
    data_dir: PathBuf,
    stops: Vec<oneshot::Sender<()>>,
    gateway: tokio::task::JoinHandle<Result<(), String>>,
}

fn unique_temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("paygate-bench-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

async fn start_sim(fee_ppm: u64, stops: &mut Vec<oneshot::Sender<()>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    let url = format!("http://{}", listener.local_addr().expect("sim addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(Sim::new(SimConfig::new(fee_ppm)).serve(listener, async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    url
}

async fn start_stack(fsync: bool) -> Stack {
    let mut stops = Vec::new();
    let default = start_sim(50_000, &mut stops).await;
    let fallback = start_sim(150_000, &mut stops).await;
    let mut config = GatewayConfig::with_processors(vec![("default".into(), default), ("fallback".into(), fallback)]);
    config.data_dir = unique_temp_dir(if fsync { "loopback-fsync-on" } else { "loopback-fsync-off" });
    config.fsync = fsync;
    let data_dir = config.data_dir.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = listener.local_addr().expect("gateway addr");
    let (stop, stopped) = oneshot::channel::<()>();
    stops.push(stop);
    let gateway = tokio::spawn(paygate::gateway::run(config, listener, async move {
        let _ = stopped.await;
    }));
    Stack { addr, data_dir, stops, gateway }
}

impl Stack {
    async fn stop(self) {
        for s in self.stops.into_iter().rev() {
            let _ = s.send(());
        }
        match self.gateway.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("gateway stopped with an error: {e}"),
            Err(e) => eprintln!("gateway task failed: {e}"),
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A keep-alive HTTP/1.1 connection to `addr` (hyper's low-level client, no pool).
async fn connect(addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    // The listener is bound before the gateway starts, so this connects at once; the first
    // request waits until the gateway has recovered its (empty) journal and serves.
    let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("client connection: {e}");
        }
    });
    sender
}

/// The JSON body of a payment with a fresh random id, 19.90.
fn payment_body() -> Bytes {
    let mut body = Vec::with_capacity(80);
    body.extend_from_slice(br#"{"correlationId":""#);
    CorrelationId::random().write_to(&mut body);
    body.extend_from_slice(br#"","amount":19.90}"#);
    Bytes::from(body)
}

async fn post_payment(sender: &mut SendRequest<Full<Bytes>>, host: &str, body: Bytes) -> StatusCode {
    sender.ready().await.expect("connection ready");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/payments")
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    // Read the whole answer so that the connection is ready for the next request.
    let _ = resp.into_body().collect().await.expect("body");
    status
}

fn request_loopback(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let mut g = c.benchmark_group("request_loopback");
    g.throughput(Throughput::Elements(1));
    if full_run() {
        g.measurement_time(Duration::from_secs(8));
    }
    for fsync in [false, true] {
        let stack = rt.block_on(start_stack(fsync));
        let host = stack.addr.to_string();
        let mut sender = rt.block_on(connect(stack.addr));
        // One request first, so the gateway is up and the connection is warm.
        assert_eq!(rt.block_on(post_payment(&mut sender, &host, payment_body())), StatusCode::ACCEPTED);
        let name = if fsync { "post_payment_202_fsync_on" } else { "post_payment_202_fsync_off" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let status = rt.block_on(post_payment(&mut sender, &host, payment_body()));
                assert_eq!(status, StatusCode::ACCEPTED);
            })
        });
        drop(sender);
        rt.block_on(stack.stop());
    }
    g.finish();
}

fn config() -> Criterion {
    if full_run() {
        Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4))
    } else {
        Criterion::default()
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse_payment, ledger_apply, summary_1m, request_loopback
}
criterion_main!(benches);
