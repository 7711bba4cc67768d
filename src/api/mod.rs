//! The gateway's HTTP API (SPEC §2): thin handlers that parse, ask the ledger, and answer.
//! No business rules live here.

pub mod error;
pub mod payment;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use self::error::ApiError;
use crate::books::Books;
use crate::dispatch::{SendGate, WorkQueue};
use crate::domain::money::write_cents;
use crate::domain::time::Rounding;
use crate::domain::{CorrelationId, UtcMillis};
use crate::http::{Body, BodyError, json, push_json_str, query_param, read_body};
use crate::ledger::{AcceptError, Status};
use crate::processor::ProcessorIdx;
use crate::processor::router::Router;

/// What the handlers share.
pub struct Api {
    pub ledger: Books,
    /// Processor names, cheapest first, as the summary reports them.
    pub processor_names: Vec<String>,
    /// Every processor the ledger knows, configured or only in its history, by index.
    pub all_names: Vec<String>,
    pub admin_token: Option<String>,
    /// False once the gateway stops accepting payments (shutting down).
    pub accepting: AtomicBool,
    /// True from the shutdown signal on: `/health` answers 503 so that load balancers take
    /// the gateway out of rotation, while payments are still accepted until it stops.
    pub draining: AtomicBool,
    /// Breakers and pinned counts, for `/health`.
    pub router: Arc<Router>,
    /// Paused by a purge until no request of the purged books is on the wire.
    pub sends: Arc<SendGate>,
    /// Work items alive, for `/health`.
    pub queue: WorkQueue,
    /// Refused admin attempts are logged at most once per [`ADMIN_FAILURE_LOG_EVERY_MS`].
    pub admin_failures: std::sync::Mutex<crate::logs::LogLimiter>,
    /// Request counts and latency; `None` with `--metrics-listen off` (nothing is timed).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Header carrying a request id, echoed on server-side errors.
pub const REQUEST_ID: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-request-id");

/// Request ids made here: the process id and a counter, unique per process and cheap.
fn next_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How often a refused admin request may be logged.
pub const ADMIN_FAILURE_LOG_EVERY_MS: u64 = 10_000;

/// Compares a secret in time that depends only on the lengths, not on where the bytes differ,
/// so that the admin token cannot be guessed byte by byte from response times.
fn same_secret(want: &[u8], got: &[u8]) -> bool {
    let mut diff = (want.len() ^ got.len()) as u64;
    for i in 0..want.len().max(got.len()) {
        let (a, b) = (want.get(i).copied().unwrap_or(0), got.get(i).copied().unwrap_or(0));
        diff |= u64::from(a ^ b);
    }
    std::hint::black_box(diff) == 0
}

impl Api {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let Some(metrics) = self.metrics.clone() else {
            return self.answer(req).await;
        };
        let started = std::time::Instant::now();
        let route = crate::metrics::route_of(req.method(), req.uri().path());
        let resp = self.answer(req).await;
        metrics.request(route, resp.status().as_u16(), started.elapsed());
        resp
    }

    /// Routes the request; a server-side failure is logged with a request id (the client's
    /// `X-Request-Id`, or one made here), which the response carries back.
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let given_id = req.headers().get(REQUEST_ID).cloned();
        // Both clones share the request's buffers: nothing is allocated unless it is logged.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let mut resp = e.into_response();
                if resp.status().is_server_error() {
                    let id = given_id.unwrap_or_else(|| HeaderValue::from_str(&next_request_id()).expect("digits and a dash"));
                    tracing::warn!(request_id = ?id, %method, path = uri.path(), status = resp.status().as_u16(), "request refused");
                    resp.headers_mut().insert(REQUEST_ID, id);
                }
                resp
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::POST, "/payments") => self.post_payment(req).await,
            (_, "/payments") => Err(ApiError::MethodNotAllowed("POST")),
            (&Method::GET, "/payments-summary") => self.summary(req.uri().query().unwrap_or("")).await,
            (_, "/payments-summary") => Err(ApiError::MethodNotAllowed("GET")),
            (&Method::POST, "/purge-payments") => self.purge(&req).await,
            (_, "/purge-payments") => Err(ApiError::MethodNotAllowed("POST")),
            (&Method::GET, "/health") => Ok(self.health()),
            (_, "/health") => Err(ApiError::MethodNotAllowed("GET")),
            (&Method::GET, p) if p.starts_with("/payments/") => self.get_payment(&p["/payments/".len()..]).await,
            (_, p) if p.starts_with("/payments/") => Err(ApiError::MethodNotAllowed("GET")),
            _ => Err(ApiError::RouteNotFound),
        }
    }

    async fn post_payment(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        if !self.accepting.load(Ordering::Relaxed) {
            return Err(ApiError::ShuttingDown);
        }
        let body = read_body(req, payment::MAX_BODY_BYTES).await.map_err(|e| match e {
            BodyError::TooLarge(n) => ApiError::BodyTooLarge(n),
            BodyError::Io(_) => ApiError::BodyUnreadable,
            BodyError::TimedOut => ApiError::BodyTimeout,
        })?;
        let p = payment::parse(&body)?;
        match self.ledger.accept(p.id, p.cents).await.map_err(|_| ApiError::ShuttingDown)? {
            Ok(()) => Ok(json(StatusCode::ACCEPTED, &b"{\"status\":\"accepted\"}"[..])),
            Err(AcceptError::AmountMismatch) => Err(ApiError::AmountMismatch),
            Err(AcceptError::BacklogFull) => Err(ApiError::BacklogFull),
            Err(AcceptError::Unavailable | AcceptError::CheckHistory { .. }) => Err(ApiError::JournalUnavailable),
        }
    }

    async fn get_payment(&self, id: &str) -> Result<Response<Body>, ApiError> {
        let id = CorrelationId::parse(id.as_bytes()).ok_or(ApiError::PaymentNotFound)?;
        let p = self
            .ledger
            .get(id)
            .await
            .map_err(|_| ApiError::ShuttingDown)?
            .map_err(|e| {
                tracing::error!(error = %e, %id, "history read failed");
                ApiError::JournalUnavailable
            })?
            .ok_or(ApiError::PaymentNotFound)?;
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"{\"correlationId\":\"");
        id.write_to(&mut out);
        out.extend_from_slice(b"\",\"amount\":");
        p.cents.write_decimal(&mut out);
        match p.status {
            Status::Processed { processor, requested_at } => {
                out.extend_from_slice(b",\"status\":\"processed\",\"processor\":");
                push_json_str(&mut out, &self.all_names[usize::from(processor)]);
                out.extend_from_slice(b",\"requestedAt\":\"");
                requested_at.write_to(&mut out);
                out.extend_from_slice(b"\"}");
            }
            Status::Pending | Status::Sent { .. } => {
                out.extend_from_slice(b",\"status\":\"pending\",\"processor\":null,\"requestedAt\":null}");
            }
        }
        Ok(json(StatusCode::OK, out))
    }

    async fn summary(&self, query: &str) -> Result<Response<Body>, ApiError> {
        let bound = |name: &'static str, rounding| match query_param(query, name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => UtcMillis::parse_rfc3339(&v, rounding).map(Some).ok_or(ApiError::InvalidTimestamp(name)),
        };
        let from = bound("from", Rounding::Ceil)?;
        let to = bound("to", Rounding::Floor)?;
        let totals = self.ledger.summary(from, to).await.map_err(|_| ApiError::ShuttingDown)?.map_err(|e| {
            tracing::error!(error = %e, "summary read failed");
            ApiError::JournalUnavailable
        })?;
        let mut out = Vec::with_capacity(64 * totals.len() + 2);
        out.push(b'{');
        for (i, (name, t)) in self.processor_names.iter().zip(&totals).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(&mut out, name);
            out.extend_from_slice(format!(":{{\"totalRequests\":{},\"totalAmount\":", t.count).as_bytes());
            write_cents(t.cents, &mut out);
            out.push(b'}');
        }
        out.push(b'}');
        Ok(json(StatusCode::OK, out))
    }

    async fn purge(&self, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let given = req.headers().get("x-admin-token").map(|v| v.as_bytes());
        let allowed = match (&self.admin_token, given) {
            (Some(want), Some(got)) => same_secret(want.as_bytes(), got),
            _ => false,
        };
        if !allowed {
            // Never the token itself; at most one line per period, however hard it is tried.
            let suppressed = self.admin_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).allow();
            if let Some(suppressed) = suppressed {
                tracing::warn!(
                    configured = self.admin_token.is_some(),
                    header_present = given.is_some(),
                    suppressed,
                    "admin request refused: wrong or missing X-Admin-Token"
                );
            }
            return Err(ApiError::Forbidden);
        }
        // Settle every request on the wire first, and send none until the purge is durable, so
        // that no payment of the purged books lands at a processor after we answer.
        match self.ledger.purge(&self.sends).await.map_err(|_| ApiError::ShuttingDown)? {
            Ok(()) => {
                tracing::info!("all payments purged by admin request");
                Ok(json(StatusCode::OK, &b"{\"message\":\"all payments purged\"}"[..]))
            }
            Err(e) => {
                tracing::error!(error = %e, "purge failed");
                Err(ApiError::JournalUnavailable)
            }
        }
    }

    /// 200 or 503, with what an operator looks at first: breakers, pinned payments (outcome
    /// unknown, held by the resolvers), work items alive, and the journal's repair counters.
    fn health(&self) -> Response<Body> {
        if !self.ledger.is_healthy() {
            ApiError::JournalUnavailable.into_response()
        } else if !self.accepting.load(Ordering::Relaxed) || self.draining.load(Ordering::Relaxed) {
            ApiError::ShuttingDown.into_response()
        } else {
            json(StatusCode::OK, self.health_body())
        }
    }

    fn health_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"status\":\"ok\",\"processors\":{");
        for (i, u) in self.router.upstreams().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(&mut out, &u.name);
            let phase = self.router.phase(i as ProcessorIdx).as_str();
            let pinned = u.pinned.load(Ordering::Relaxed);
            out.extend_from_slice(format!(":{{\"breaker\":\"{phase}\",\"pinned\":{pinned}}}").as_bytes());
        }
        let tail = match &self.ledger {
            Books::Embedded(l) => format!(
                "}},\"workItems\":{},\"journal\":{{\"repairs\":{},\"rebuilds\":{},\"requeued\":{}}}}}",
                self.queue.live(),
                l.stats.repairs.load(Ordering::Relaxed),
                l.stats.rebuilds.load(Ordering::Relaxed),
                l.stats.requeued.load(Ordering::Relaxed)
            ),
            Books::Cluster(c) => {
                let mut instance = Vec::new();
                push_json_str(&mut instance, c.instance());
                format!(
                    "}},\"workItems\":{},\"cluster\":{{\"instance\":{},\"epoch\":{},\"takenOver\":{}}}}}",
                    self.queue.live(),
                    String::from_utf8_lossy(&instance),
                    c.epoch(),
                    c.takeovers()
                )
            }
        };
        out.extend_from_slice(tail.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal_in_length_and_every_byte() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"s3cret", b"s3cret!"));
        assert!(!same_secret(b"s3cret", b"S3cret"));
        assert!(!same_secret(b"s3cret", b""));
        assert!(same_secret(b"", b""));
    }
}
