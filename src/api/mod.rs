//! The gateway's HTTP API (SPEC §2): thin handlers that parse, ask the ledger, and answer.
//! No business rules live here.

pub mod error;
pub mod payment;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use self::error::ApiError;
use crate::dispatch::{SendGate, WorkQueue};
use crate::domain::money::write_cents;
use crate::domain::time::Rounding;
use crate::domain::{CorrelationId, UtcMillis};
use crate::http::{Body, BodyError, json, push_json_str, query_param, read_body};
use crate::ledger::{AcceptError, LedgerHandle, Status};
use crate::processor::ProcessorIdx;
use crate::processor::router::Router;

/// What the handlers share.
pub struct Api {
    pub ledger: LedgerHandle,
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
}

impl Api {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        self.route(req).await.unwrap_or_else(ApiError::into_response)
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
            BodyError::TimedOut => ApiError::BodyUnreadable,
        })?;
        let p = payment::parse(&body)?;
        match self.ledger.accept(p.id, p.cents).await.map_err(|_| ApiError::ShuttingDown)? {
            Ok(()) => Ok(json(StatusCode::ACCEPTED, &b"{\"status\":\"accepted\"}"[..])),
            Err(AcceptError::AmountMismatch) => Err(ApiError::AmountMismatch),
            Err(AcceptError::BacklogFull) => Err(ApiError::BacklogFull),
            Err(AcceptError::Unavailable) => Err(ApiError::JournalUnavailable),
        }
    }

    async fn get_payment(&self, id: &str) -> Result<Response<Body>, ApiError> {
        let id = CorrelationId::parse(id.as_bytes()).ok_or(ApiError::PaymentNotFound)?;
        let p = self.ledger.get(id).await.map_err(|_| ApiError::ShuttingDown)?.ok_or(ApiError::PaymentNotFound)?;
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
        let totals = self.ledger.summary(from, to).await.map_err(|_| ApiError::ShuttingDown)?;
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
        match (&self.admin_token, given) {
            (Some(want), Some(got)) if want.as_bytes() == got => {}
            _ => return Err(ApiError::Forbidden),
        }
        // Settle every request on the wire first, and send none until the purge is durable, so
        // that no payment of the purged books lands at a processor after we answer.
        let paused = self.sends.pause().await;
        let purged = self.ledger.purge().await.map_err(|_| ApiError::ShuttingDown)?;
        drop(paused);
        match purged {
            Ok(()) => {
                tracing::info!("all payments purged by admin request");
                Ok(json(StatusCode::OK, &b"{\"message\":\"all payments purged\"}"[..]))
            }
            Err(_) => Err(ApiError::JournalUnavailable),
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
        let j = &self.ledger.stats;
        out.extend_from_slice(
            format!(
                "}},\"workItems\":{},\"journal\":{{\"repairs\":{},\"rebuilds\":{},\"requeued\":{}}}}}",
                self.queue.live(),
                j.repairs.load(Ordering::Relaxed),
                j.rebuilds.load(Ordering::Relaxed),
                j.requeued.load(Ordering::Relaxed)
            )
            .as_bytes(),
        );
        out
    }
}
