//! Wiring: builds the router, ledger, dispatch workers, health monitors and the HTTP API
//! from a [`GatewayConfig`], and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::api::Api;
use crate::config::GatewayConfig;
use crate::journal::Journal;
use crate::ledger::{Ledger, LedgerLimits, State};
use crate::processor::client::ProcessorClient;
use crate::processor::router::Router;
use crate::sim::{Sim, SimConfig};
use crate::{dispatch, processor};

/// Fees of the built-in simulated processors, in parts per million (5 % and 15 %).
pub const BUILTIN_FEES_PPM: [(&str, u64); 2] = [("default", 50_000), ("fallback", 150_000)];

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn run(config: GatewayConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    if config.processors.is_empty() {
        return Err("no processors configured".into());
    }
    let upstreams =
        config.processors.iter().map(|(name, url)| (name.clone(), ProcessorClient::new(url, config.upstream_timeout))).collect();
    let router = Arc::new(Router::new(upstreams, config.max_defer));
    let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
    let state = State::new(config.processors.len());
    let limits = LedgerLimits { pending_max: config.pending_max };
    let (ledger, ledger_task) = Ledger::spawn(state, Journal::in_memory(), dispatch_tx, limits);
    let workers = dispatch::spawn(config.dispatch_workers, dispatch_rx, router.clone(), ledger.clone());
    let monitors = processor::health::spawn(router.clone(), config.health_interval);
    let api = Arc::new(Api {
        ledger,
        processor_names: config.processors.iter().map(|(n, _)| n.clone()).collect(),
        admin_token: config.admin_token.clone(),
        accepting: AtomicBool::new(true),
    });
    tracing::info!(
        listen = %listener.local_addr().map_err(|e| e.to_string())?,
        processors = ?config.processors,
        max_defer_ms = config.max_defer.as_millis() as u64,
        "paygate serving"
    );
    let handler_api = api.clone();
    crate::http::serve(listener, move |req| handler_api.clone().handle(req), shutdown).await;
    api.accepting.store(false, Ordering::Relaxed);
    for t in monitors.iter().chain(&workers) {
        t.abort();
    }
    ledger_task.abort();
    tracing::info!("paygate stopped");
    Ok(())
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
