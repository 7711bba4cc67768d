//! Prometheus metrics, in the text format, on a listener of their own (`--metrics-listen`).
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client): no global registry,
//! typed metric families, counters and gauges that are single atomics, and an encoder for the
//! text format, with no exporter runtime or background thread. Handles on the request path are
//! created once, up front (a route × status table, a histogram per processor and outcome), so
//! recording is an atomic add or one short uncontended lock — never a label lookup. Gauges that
//! describe state (backlog, pinned payments, breakers) are read when Prometheus scrapes.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::processor::Outcome;
use crate::processor::breaker::Phase;

/// The routes requests are counted by.
pub const ROUTES: [&str; 6] = ["post_payment", "get_payment", "payments_summary", "purge_payments", "health", "other"];
/// The statuses requests are counted by; anything else is `other`.
pub const STATUSES: [&str; 12] = ["200", "202", "400", "403", "404", "405", "409", "413", "422", "500", "503", "other"];
pub const OUTCOMES: [&str; 4] = ["recorded", "duplicate", "not_recorded", "unknown"];
pub const PHASES: [&str; 4] = ["closed", "open", "checking", "half_open"];

/// Latency buckets in seconds, from 50 µs to 10 s: the request path lives in the first few.
const LATENCY_BUCKETS_S: [f64; 18] =
    [0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Time the ledger's single writer spends on one command, 1 µs to 100 ms: a stall of the
/// writer (a table rehash, a page-fault storm) shows in the upper buckets.
const COMMAND_BUCKETS_S: [f64; 14] =
    [0.000001, 0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.02, 0.1];
/// Records per group commit.
const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 8192.0];

type Labels2 = [(&'static str, String); 2];
type Labels1 = [(&'static str, String); 1];

/// Every metric paygate exports.
pub struct Metrics {
    registry: Registry,
    /// `[route][status]` counters and a latency histogram per route.
    requests: Vec<Vec<Counter>>,
    request_seconds: Vec<Histogram>,
    pub accepted: Counter,
    processed: Vec<Counter>,
    rejected: Vec<Counter>,
    /// `[processor][outcome]`.
    upstream_seconds: Vec<Vec<Histogram>>,
    pub pending: Gauge,
    pub oldest_pending_seconds: Gauge<f64, AtomicU64>,
    pinned: Vec<Gauge>,
    breaker: Vec<Vec<Gauge>>,
    pub work_items: Gauge,
    pub open_connections: Gauge,
    /// The HTTP server's count of open connections, read at each scrape.
    connections: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    pub journal: JournalMetrics,
    ledger_command_seconds: Histogram,
    /// The longest command since start, in nanoseconds.
    ledger_command_max_ns: Gauge,
    /// Payments in the ledger's memory, and what its table holds before it must grow.
    pub hot_payments: Gauge,
    pub hot_capacity: Gauge,
    /// Memory of the ledger's id filter and of the history's page cache.
    pub filter_bytes: Gauge,
    pub history_cache_bytes: Gauge,
    pub cluster: ClusterMetrics,
}

/// What cluster mode records (zero in embedded mode).
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    pub commit_ops: Histogram,
    pub commit_seconds: Histogram,
    pub sessions: Gauge,
    pub lease_held: Gauge,
    pub takeovers: Counter,
}

/// What the journal writer records, on its own thread.
#[derive(Clone, Debug)]
pub struct JournalMetrics {
    pub commit_records: Histogram,
    pub fsync_seconds: Histogram,
    pub bytes_written: Counter,
    pub write_failures: Counter,
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

impl Metrics {
    /// Metrics for these processors (by index, cheapest first).
    pub fn new(processors: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("paygate");
        let requests_family = Family::<Labels2, Counter>::default();
        let request_seconds_family = Family::<Labels1, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let requests = ROUTES
            .iter()
            .map(|r| {
                STATUSES
                    .iter()
                    .map(|s| requests_family.get_or_create(&[("route", r.to_string()), ("status", s.to_string())]).clone())
                    .collect()
            })
            .collect();
        let request_seconds = ROUTES.iter().map(|r| request_seconds_family.get_or_create(&[("route", r.to_string())]).clone()).collect();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests_family);
        registry.register("http_request_duration_seconds", "Time from request head to response, by route", request_seconds_family);

        let accepted = Counter::default();
        registry.register("payments_accepted", "Payments accepted and made durable (each id once)", accepted.clone());
        let per_processor = |name: &str, help: &str, registry: &mut Registry| {
            let family = Family::<Labels1, Counter>::default();
            let handles = processors.iter().map(|p| family.get_or_create(&[("processor", p.clone())]).clone()).collect();
            registry.register(name, help, family);
            handles
        };
        let processed = per_processor("payments_processed", "Payments a processor confirmed it recorded", &mut registry);
        let rejected =
            per_processor("payments_rejected", "Requests a processor answered without recording (payment routed again)", &mut registry);

        let upstream_family = Family::<Labels2, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let upstream_seconds = processors
            .iter()
            .map(|p| {
                OUTCOMES
                    .iter()
                    .map(|o| upstream_family.get_or_create(&[("processor", p.clone()), ("outcome", o.to_string())]).clone())
                    .collect()
            })
            .collect();
        registry.register("upstream_request_duration_seconds", "POST /payments to a processor, by processor and outcome", upstream_family);

        let pending = Gauge::default();
        registry.register("payments_pending", "Accepted payments not yet processed (the backlog)", pending.clone());
        let oldest_pending_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_pending_payment_age_seconds",
            "Age of the oldest accepted payment not yet processed",
            oldest_pending_seconds.clone(),
        );
        let pinned_family = Family::<Labels1, Gauge>::default();
        let pinned = processors.iter().map(|p| pinned_family.get_or_create(&[("processor", p.clone())]).clone()).collect();
        registry.register("payments_pinned", "Payments whose outcome at a processor is unknown, held by its resolver", pinned_family);
        let breaker_family = Family::<Labels2, Gauge>::default();
        let breaker = processors
            .iter()
            .map(|p| {
                PHASES.iter().map(|s| breaker_family.get_or_create(&[("processor", p.clone()), ("state", s.to_string())]).clone()).collect()
            })
            .collect();
        registry.register("breaker_state", "1 for the state each processor's circuit breaker is in, 0 for the others", breaker_family);
        let work_items = Gauge::default();
        registry.register("dispatch_work_items", "Work items queued, being forwarded or being resolved", work_items.clone());
        let open_connections = Gauge::default();
        registry.register("http_open_connections", "Client connections open now", open_connections.clone());

        let journal = JournalMetrics {
            commit_records: Histogram::new(BATCH_BUCKETS),
            fsync_seconds: latency(),
            bytes_written: Counter::default(),
            write_failures: Counter::default(),
        };
        registry.register("journal_group_commit_records", "Records written by one group commit", journal.commit_records.clone());
        registry.register("journal_fdatasync_duration_seconds", "Duration of one fdatasync of the journal", journal.fsync_seconds.clone());
        registry.register("journal_written_bytes", "Bytes written to journal segments", journal.bytes_written.clone());
        registry.register("journal_write_failures", "Journal writes or syncs that failed", journal.write_failures.clone());

        let ledger_command_seconds = Histogram::new(COMMAND_BUCKETS_S);
        registry.register(
            "ledger_command_duration_seconds",
            "Time the ledger's single writer spent on one command",
            ledger_command_seconds.clone(),
        );
        let ledger_command_max_ns = Gauge::default();
        registry.register("ledger_command_max_nanoseconds", "The ledger's longest command since start", ledger_command_max_ns.clone());
        let hot_payments = Gauge::default();
        registry.register(
            "ledger_hot_payments",
            "Payments the ledger holds in memory (pending and recently settled)",
            hot_payments.clone(),
        );
        let filter_bytes = Gauge::default();
        registry.register("ledger_filter_bytes", "Memory of the filter of ids in the history", filter_bytes.clone());
        let history_cache_bytes = Gauge::default();
        registry.register("history_cache_bytes", "Bytes in the history database's own page cache", history_cache_bytes.clone());
        let hot_capacity = Gauge::default();
        registry.register(
            "ledger_hot_capacity",
            "Payments the ledger's table holds before it must grow (sized at start)",
            hot_capacity.clone(),
        );

        let cluster = ClusterMetrics {
            commit_ops: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS_S),
            sessions: Gauge::default(),
            lease_held: Gauge::default(),
            takeovers: Counter::default(),
        };
        registry.register(
            "cluster_commit_operations",
            "Acceptances, intents and outcomes written by one statement (one commit) in cluster mode",
            cluster.commit_ops.clone(),
        );
        registry.register(
            "cluster_commit_duration_seconds",
            "Time of one batch statement, sent to answered",
            cluster.commit_seconds.clone(),
        );
        registry.register("cluster_db_sessions", "Database connections open now", cluster.sessions.clone());
        registry.register("cluster_lease_held", "1 while this instance holds a live lease", cluster.lease_held.clone());
        registry.register("cluster_takeovers", "Payments taken over from instances whose lease expired", cluster.takeovers.clone());

        Metrics {
            cluster,
            ledger_command_seconds,
            ledger_command_max_ns,
            hot_payments,
            hot_capacity,
            filter_bytes,
            history_cache_bytes,
            registry,
            requests,
            request_seconds,
            accepted,
            processed,
            rejected,
            upstream_seconds,
            pending,
            oldest_pending_seconds,
            pinned,
            breaker,
            work_items,
            open_connections,
            connections: std::sync::OnceLock::new(),
            journal,
        }
    }

    /// Counts one answered request and its latency.
    pub fn request(&self, route: usize, status: u16, elapsed: Duration) {
        let status = match status {
            200 => 0,
            202 => 1,
            400 => 2,
            403 => 3,
            404 => 4,
            405 => 5,
            409 => 6,
            413 => 7,
            422 => 8,
            500 => 9,
            503 => 10,
            _ => 11,
        };
        self.requests[route][status].inc();
        self.request_seconds[route].observe(elapsed.as_secs_f64());
    }

    /// One ledger command took `elapsed`.
    pub fn ledger_command(&self, elapsed: Duration) {
        self.ledger_command_seconds.observe(elapsed.as_secs_f64());
        let ns = elapsed.as_nanos() as i64;
        if ns > self.ledger_command_max_ns.get() {
            self.ledger_command_max_ns.set(ns);
        }
    }

    pub fn settled(&self, processor: usize, processed: bool) {
        let counters = if processed { &self.processed } else { &self.rejected };
        if let Some(c) = counters.get(processor) {
            c.inc();
        }
    }

    pub fn upstream(&self, processor: usize, outcome: Outcome, elapsed: Duration) {
        let o = match outcome {
            Outcome::Recorded => 0,
            Outcome::Duplicate => 1,
            Outcome::NotRecorded => 2,
            Outcome::Unknown => 3,
        };
        self.upstream_seconds[processor][o].observe(elapsed.as_secs_f64());
    }

    pub fn set_pinned(&self, processor: usize, pinned: usize) {
        self.pinned[processor].set(pinned as i64);
    }

    pub fn set_breaker(&self, processor: usize, phase: Phase) {
        for (i, g) in self.breaker[processor].iter().enumerate() {
            g.set(i64::from(PHASES[i] == phase.as_str()));
        }
    }

    /// Reports the server's open-connection count from now on.
    pub fn watch_connections(&self, open: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let _ = self.connections.set(open);
    }

    pub fn refresh_connections(&self) {
        if let Some(open) = self.connections.get() {
            self.open_connections.set(open.load(std::sync::atomic::Ordering::Relaxed) as i64);
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The route label of a request, from its method and path.
pub fn route_of(method: &hyper::Method, path: &str) -> usize {
    match (method, path) {
        (&hyper::Method::POST, "/payments") => 0,
        (&hyper::Method::GET, p) if p.starts_with("/payments/") => 1,
        (&hyper::Method::GET, "/payments-summary") => 2,
        (&hyper::Method::POST, "/purge-payments") => 3,
        (&hyper::Method::GET, "/health") => 4,
        _ => 5,
    }
}
