//! Wiring: builds the router, ledger, dispatch workers, health monitors and the HTTP API
//! from a [`GatewayConfig`], and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::Api;
use crate::config::GatewayConfig;
use crate::dispatch::{SendGate, Shared, WorkQueue};
use crate::journal::{FileOptions, Journal};
use crate::ledger::persist;
use crate::ledger::{Done, Event, Ledger, LedgerLimits, Restore, State};
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

/// Serves the gateway on `listener` until `shutdown` resolves, then drains: `/health` answers
/// 503 at once, payments are served for `config.drain`, then the listener closes, requests in
/// flight finish, dispatch stops and the ledger's last events are made durable.
pub async fn run(config: GatewayConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    if config.processors.is_empty() {
        return Err("no processors configured".into());
    }
    let upstreams =
        config.processors.iter().map(|(name, url)| (name.clone(), ProcessorClient::new(url, config.upstream_timeout))).collect();
    // A probe is a real request: it ends within the upstream timeout plus the time its intent
    // takes to become durable; past this it counts as failed.
    let probe_timeout = config.upstream_timeout + Duration::from_millis(PROBE_MARGIN_MS);
    let router = Arc::new(Router::new(upstreams, config.max_defer, probe_timeout));
    let (queue, queue_rx) = WorkQueue::new();
    let (journal, state, restore) = open_journal(&config).await?;
    let all_names = state.names().to_vec();
    let limits = LedgerLimits { pending_max: config.pending_max };
    let (ledger, ledger_task) = Ledger::spawn(state, journal, queue.clone(), limits, restore);
    let sends = Arc::new(SendGate::default());
    let shared = Arc::new(Shared { router: router.clone(), ledger: ledger.clone(), sends: sends.clone(), queue: queue.clone() });
    let workers = dispatch::spawn(config.dispatch_workers, queue_rx, shared);
    let mut monitors = processor::health::spawn(router.clone(), config.health_interval);
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
    });
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        processors = ?config.processors,
        max_defer_ms = config.max_defer.as_millis() as u64,
        fsync = config.fsync,
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
    crate::http::serve_with_limits(listener, move |req| handler_api.clone().handle(req), stop_accepting, config.server_limits()).await;
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
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final journal flush failed; the next start resolves what it lost"),
        Ok(Err(_)) | Err(_) => tracing::warn!("final journal flush did not finish; the next start resolves what it lost"),
    }
    ledger_task.abort();
    tracing::info!("paygate stopped");
    Ok(())
}

/// Recovers the ledger's state from the data directory and opens the journal after it.
/// Refuses to start when a processor that is no longer configured still holds payments whose
/// outcome there is unknown: only that processor can say whether it recorded them.
async fn open_journal(config: &GatewayConfig) -> Result<(Journal<Event, Done>, State, Restore), String> {
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
    let state = recovered.state;
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
    tracing::info!(
        data_dir = %dir.display(),
        payments = state.len(),
        unfinished = state.unfinished(),
        replayed_records = recovered.replayed,
        ms = started.elapsed().as_millis() as u64,
        "ledger recovered from the journal"
    );
    let dir_lock = Arc::new(Mutex::new(()));
    let rotated = persist::spawn_compactor(dir.clone(), configured.clone(), dir_lock.clone()).map_err(|e| e.to_string())?;
    let options = FileOptions {
        dir: dir.clone(),
        fsync: config.fsync,
        segment_max_bytes: config.segment_max_bytes,
        prealloc_bytes: config.prealloc_bytes,
        faults: config.faults.clone(),
        rotated: Some(rotated),
        dir_lock: dir_lock.clone(),
        segment_header: persist::segment_header(state.names()),
    };
    let journal = Journal::open(options, recovered.next_seq).map_err(|e| format!("cannot open the journal in {}: {e}", dir.display()))?;
    let restore: Restore = Arc::new(move || persist::reload(&dir, &configured, &dir_lock).map_err(|e| e.to_string()));
    Ok((journal, state, restore))
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
