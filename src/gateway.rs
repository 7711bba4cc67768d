//! Wiring: builds the router, ledger, dispatch workers, health monitors and the HTTP API
//! from a [`GatewayConfig`], and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::Api;
use crate::books::Books;
use crate::cluster::ClusterConfig;
use crate::config::GatewayConfig;
use crate::dispatch::{SendGate, Shared, WorkQueue};
use crate::journal::{FileOptions, Journal};
use crate::ledger::persist;
use crate::ledger::{Done, Event, Ledger, LedgerLimits, Restore, State};
use crate::metrics::{JournalMetrics, Metrics};
use crate::processor::ProcessorIdx;
use crate::processor::client::ProcessorClient;
use crate::processor::router::Router;
use crate::sim::{Sim, SimConfig};
use crate::{dispatch, processor};

/// Fees of the built-in simulated processors, in parts per million (5 % and 15 %).
pub const BUILTIN_FEES_PPM: [(&str, u64); 2] = [("default", 50_000), ("fallback", 150_000)];

/// How much longer than the upstream timeout a half-open probe may stay out.
pub const PROBE_MARGIN_MS: u64 = 1_000;

/// Longest a stopping gateway waits for the ledger's last events to become durable.
pub const FINAL_FLUSH_MS: u64 = 5_000;

/// Serves the gateway on `listener` (and its metrics on `config.metrics_listen`, none when
/// that is `None`) until `shutdown` resolves, then drains: `/health` answers 503 at once,
/// payments are served for `config.drain`, then the listener closes, requests in flight
/// finish, dispatch stops and the ledger's last events are made durable.
pub async fn run(config: GatewayConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?),
        None => None,
    };
    run_with(config, listener, metrics_listener, shutdown).await
}

/// [`run`] with the metrics listener already bound (tests bind port 0 and scrape it).
pub async fn run_with(
    config: GatewayConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    if config.processors.is_empty() {
        return Err("no processors configured".into());
    }
    let configured: Vec<String> = config.processors.iter().map(|(n, _)| n.clone()).collect();
    let metrics = metrics_listener.is_some().then(|| Arc::new(Metrics::new(&configured)));
    let upstreams =
        config.processors.iter().map(|(name, url)| (name.clone(), ProcessorClient::new(url, config.upstream_timeout))).collect();
    // A probe is a real request: it ends within the upstream timeout plus the time its intent
    // takes to become durable; past this it counts as failed.
    let probe_timeout = config.upstream_timeout + Duration::from_millis(PROBE_MARGIN_MS);
    let router = Arc::new(Router::new(upstreams, config.max_defer, probe_timeout));
    let (queue, queue_rx) = WorkQueue::new(metrics.clone());
    let sends = Arc::new(SendGate::default());
    let (ledger, background, history, all_names) = match &config.database_url {
        Some(url) => {
            let instance_id = config.instance_id.clone().unwrap_or_else(|| default_instance_id(&listener));
            let cluster = ClusterConfig {
                database_url: url.clone(),
                instance_id,
                lease: config.lease,
                health_interval: config.health_interval,
                // A resolver's attempt holds the send gate for up to three upstream requests.
                purge_timeout: config.lease + config.upstream_timeout * 3 + Duration::from_millis(PROBE_MARGIN_MS),
            };
            let (handle, tasks) = crate::cluster::start(
                cluster,
                configured.clone(),
                queue.clone(),
                router.clone(),
                config.route_at_accept,
                config.pending_max,
                sends.clone(),
                metrics.clone(),
            )
            .await?;
            (Books::Cluster(handle), tasks, None, configured.clone())
        }
        None => {
            let (journal, state, restore, opened) = open_journal(&config, metrics.as_ref().map(|m| m.journal.clone())).await?;
            let all_names = state.names().to_vec();
            let limits = LedgerLimits { pending_max: config.pending_max, hot_max: config.hot_max, hot_window: config.hot_window };
            let route_at_accept = config.route_at_accept.then(|| router.clone());
            let history = opened.history.clone();
            let (ledger, ledger_task) = Ledger::spawn(
                state,
                journal,
                queue.clone(),
                limits,
                restore,
                metrics.clone(),
                route_at_accept,
                opened.history,
                opened.filter,
            );
            (Books::Embedded(ledger), vec![ledger_task], Some(history), all_names)
        }
    };
    let shared = Arc::new(Shared {
        router: router.clone(),
        ledger: ledger.clone(),
        sends: sends.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
    });
    let workers = dispatch::spawn(config.dispatch_workers, queue_rx, shared);
    // In a cluster, one instance at a time calls each health endpoint (`cluster::health`).
    let mut monitors =
        if ledger.cluster().is_some() { Vec::new() } else { processor::health::spawn(router.clone(), config.health_interval) };
    monitors.extend((0..router.upstreams().len()).map(|idx| {
        let router = router.clone();
        tokio::spawn(async move { router.probe_forever(idx as ProcessorIdx).await })
    }));
    let api = Arc::new(Api {
        ledger,
        processor_names: config.processors.iter().map(|(n, _)| n.clone()).collect(),
        all_names,
        admin_token: config.admin_token.clone(),
        accepting: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        router,
        sends,
        queue,
        admin_failures: std::sync::Mutex::new(crate::logs::LogLimiter::new(Duration::from_millis(crate::api::ADMIN_FAILURE_LOG_EVERY_MS))),
        metrics: metrics.clone(),
    });
    if let (Some(m), Some(l)) = (metrics.clone(), metrics_listener) {
        tracing::info!(metrics = %l.local_addr().map_err(|e| e.to_string())?, "serving Prometheus metrics at /metrics");
        monitors.push(tokio::spawn(serve_metrics(l, m, api.clone())));
    }
    let runtime = tokio::runtime::Handle::current();
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        processors = ?config.processors,
        max_defer_ms = config.max_defer.as_millis() as u64,
        fsync = config.fsync,
        // Which scheduler `--runtime` chose, and its workers (1 for `current_thread`).
        runtime = ?runtime.runtime_flavor(),
        worker_threads = runtime.metrics().num_workers(),
        "paygate serving"
    );
    let handler_api = api.clone();
    let drain_api = api.clone();
    let drain = config.drain;
    let stop_accepting = async move {
        shutdown.await;
        // Out of rotation first: load balancers see 503 on /health while payments still go on.
        drain_api.draining.store(true, Ordering::Relaxed);
        tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down: /health answers 503, payments are served until the drain ends");
        tokio::time::sleep(drain).await;
        tracing::info!("drain over: no new connections; finishing the requests in flight");
    };
    let open_connections = Arc::<std::sync::atomic::AtomicUsize>::default();
    if let Some(m) = &metrics {
        m.watch_connections(open_connections.clone());
    }
    let handle = move |req| handler_api.clone().handle(req);
    crate::http::serve_with_limits(listener, handle, stop_accepting, config.server_limits(), open_connections).await;
    api.accepting.store(false, Ordering::Relaxed);
    // Intents are journaled before a request is sent, so stopping dispatch mid-send only
    // leaves outcomes unknown, which the next start resolves on the same processor.
    for t in monitors.iter().chain(&workers) {
        t.abort();
    }
    for t in workers {
        let _ = t.await;
    }
    // Every 202 is durable already; the barrier makes the outcomes dispatch reported durable
    // too, so the next start has fewer payments to resolve again.
    match tokio::time::timeout(Duration::from_millis(FINAL_FLUSH_MS), api.ledger.flush()).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final flush failed; the next start resolves what it lost"),
        Ok(Err(_)) | Err(_) => tracing::warn!("final flush did not finish; the next start resolves what it lost"),
    }
    for t in background {
        t.abort();
    }
    if let Some(c) = api.ledger.cluster() {
        c.release().await;
    }
    if let Some(history) = history {
        tokio::task::spawn_blocking(move || history.close()).await.map_err(|e| e.to_string())?;
    }
    tracing::info!("paygate stopped");
    Ok(())
}

/// This instance's name in a cluster when `--instance-id` is not given: hostname and port.
fn default_instance_id(listener: &TcpListener) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "paygate".into());
    let port = listener.local_addr().map_or(0, |a| a.port());
    format!("{host}:{port}")
}

/// Recovers the ledger's state from the data directory, moves its processed payments into the
/// history, and opens the journal after it. Refuses to start when a processor that is no
/// longer configured still holds payments whose outcome there is unknown: only that processor
/// can say whether it recorded them.
async fn open_journal(
    config: &GatewayConfig,
    metrics: Option<JournalMetrics>,
) -> Result<(Journal<Event, Done>, State, Restore, crate::history::Opened), String> {
    let configured: Vec<String> = config.processors.iter().map(|(n, _)| n.clone()).collect();
    let dir = config.data_dir.clone();
    let started = std::time::Instant::now();
    let recovered = tokio::task::spawn_blocking({
        let (dir, names) = (dir.clone(), configured.clone());
        move || persist::recover(&dir, &names)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let mut state = recovered.state;
    for (idx, name) in state.names().iter().enumerate().skip(configured.len()) {
        let unresolved = state.unresolved_at(idx as ProcessorIdx);
        if unresolved > 0 {
            return Err(format!(
                "processor `{name}` is not configured but holds {unresolved} payments whose outcome there is unknown; \
                 start with --processor {name}=URL until they are resolved"
            ));
        }
        tracing::warn!(processor = %name, "processor known from the journal is not configured; its history is kept but not reported");
    }
    let replayed_payments = state.len();
    let opened = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || crate::history::History::open(&dir, &mut state).map(|o| (o, state))
    })
    .await
    .map_err(|e| e.to_string())??;
    let (opened, state) = opened;
    tracing::info!(
        data_dir = %dir.display(),
        payments = replayed_payments,
        unfinished = state.unfinished(),
        history_payments = opened.len,
        moved_to_history = opened.absorbed,
        replayed_records = recovered.replayed,
        ms = started.elapsed().as_millis() as u64,
        "ledger recovered from the journal"
    );
    let dir_lock = Arc::new(Mutex::new(()));
    // Past this point a failure must release the history for the next start.
    let fail = |e: String, opened: &crate::history::Opened| {
        opened.history.close();
        e
    };
    let rotated = persist::spawn_compactor(dir.clone(), configured.clone(), dir_lock.clone(), Some(opened.history.clone()))
        .map_err(|e| fail(e.to_string(), &opened))?;
    // Fold what recovery replayed (already moved into the history) into a snapshot now, in
    // the background, rather than at the next rotation: otherwise every restart would replay,
    // and move again, the same segments.
    let _ = rotated.send(recovered.next_seq);
    let options = FileOptions {
        dir: dir.clone(),
        fsync: config.fsync,
        segment_max_bytes: config.segment_max_bytes,
        prealloc_bytes: config.prealloc_bytes,
        faults: config.faults.clone(),
        rotated: Some(rotated),
        dir_lock: dir_lock.clone(),
        segment_header: persist::segment_header(state.names()),
        metrics,
    };
    let journal = Journal::open(options, recovered.next_seq)
        .map_err(|e| fail(format!("cannot open the journal in {}: {e}", dir.display()), &opened))?;
    let restore: Restore = Arc::new(move || persist::reload(&dir, &configured, &dir_lock).map_err(|e| e.to_string()));
    Ok((journal, state, restore, opened))
}

/// Serves `GET /metrics` on its own listener: refreshes the gauges that describe state (backlog,
/// oldest pending payment, pinned payments, breakers, work items), then encodes everything.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, api: Arc<Api>) {
    let handle = move |req: hyper::Request<hyper::body::Incoming>| {
        let (metrics, api) = (metrics.clone(), api.clone());
        async move {
            if req.uri().path() != "/metrics" {
                return crate::api::error::ApiError::RouteNotFound.into_response();
            }
            if let Ok(b) = api.ledger.backlog().await {
                metrics.pending.set(b.pending as i64);
                let age_ms = b.oldest_accepted_at.map_or(0, |at| (crate::domain::UtcMillis::now().0 - at.0).max(0));
                metrics.oldest_pending_seconds.set(age_ms as f64 / 1_000.0);
                metrics.hot_payments.set(b.hot as i64);
                metrics.hot_capacity.set(b.hot_capacity as i64);
                metrics.filter_bytes.set(b.filter_bytes as i64);
                if let Some(l) = api.ledger.embedded() {
                    metrics.history_cache_bytes.set(l.history_cache_bytes() as i64);
                }
                if let Some(c) = api.ledger.cluster() {
                    metrics.cluster.sessions.set(c.sessions());
                    metrics.cluster.lease_held.set(i64::from(c.lease_held()));
                }
            }
            for (i, u) in api.router.upstreams().iter().enumerate() {
                metrics.set_pinned(i, u.pinned.load(Ordering::Relaxed));
                metrics.set_breaker(i, api.router.phase(i as ProcessorIdx));
            }
            metrics.work_items.set(api.queue.live() as i64);
            metrics.refresh_connections();
            let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(metrics.encode())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
    };
    crate::http::serve(listener, handle, std::future::pending()).await;
}

/// Starts the two built-in simulated processors on loopback ports, for a first run with no
/// configuration. They live as long as the runtime.
pub async fn start_builtin_processors() -> Result<Vec<(String, String)>, String> {
    let mut processors = Vec::new();
    for (name, fee_ppm) in BUILTIN_FEES_PPM {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind built-in processor: {e}"))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        let sim = Sim::new(SimConfig::new(fee_ppm));
        tokio::spawn(sim.serve(listener, std::future::pending()));
        tracing::warn!(%name, %addr, fee_ppm, "no --processor configured: started a built-in simulated processor");
        processors.push((name.to_string(), format!("http://{addr}")));
    }
    Ok(processors)
}
