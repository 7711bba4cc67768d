//! The simulator's HTTP surface (SPEC §4): routing, request parsing, the payment and admin
//! operations, and the one place where simulator errors become HTTP responses.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::codec::{self, QueryError};
use super::store::{Insert, Recorded};
use super::{Sim, check_delay, check_token};
use crate::domain::time::Rounding;
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::http::{Body, BodyError, empty, json, push_json_str, read_body, with_retry_after};

/// Largest request body accepted, in bytes; a payment is about 120.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// The upstream's capacity: 800 payments processed concurrently plus 500 queued. Beyond it a
/// payment is answered 429 at once and not recorded.
pub const MAX_PAYMENTS_IN_FLIGHT: usize = 800 + 500;
/// Header carrying the admin token (the contest's name).
const TOKEN_HEADER: &str = "x-rinha-token";

const PROCESSED_BODY: &[u8] = br#"{"message":"payment processed successfully"}"#;
const PURGED_BODY: &[u8] = br#"{"message":"All payments purged."}"#;

/// Everything that ends a request with something other than its success response.
#[derive(Debug, thiserror::Error)]
enum SimError {
    #[error("no such route")]
    NoRoute,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many payments in progress")]
    Overloaded,
    #[error("missing or wrong X-Rinha-Token")]
    Unauthorized,
    #[error("payment {0} was already processed")]
    Duplicate(CorrelationId),
    #[error("the payment processor is in failure mode")]
    Failing,
    #[error("the health endpoint allows one call every few seconds")]
    RateLimited { retry_after_secs: u64 },
    #[error("the simulator holds its maximum number of payments")]
    StorageFull,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<QueryError> for SimError {
    fn from(e: QueryError) -> Self {
        SimError::BadRequest(e.to_string())
    }
}

impl SimError {
    fn into_response(self) -> Response<Body> {
        let (status, code) = match &self {
            SimError::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            SimError::PaymentNotFound => (StatusCode::NOT_FOUND, "payment_not_found"),
            SimError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            SimError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            SimError::Body(BodyError::TooLarge(_)) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            SimError::Body(BodyError::Io(_) | BodyError::TimedOut) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            SimError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            SimError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            SimError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            SimError::Duplicate(_) => (StatusCode::UNPROCESSABLE_ENTITY, "duplicate"),
            SimError::Failing => (StatusCode::INTERNAL_SERVER_ERROR, "failure_mode"),
            SimError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            SimError::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            SimError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut body = Vec::with_capacity(96);
        body.extend_from_slice(b"{\"error\":");
        push_json_str(&mut body, code);
        body.extend_from_slice(b",\"message\":");
        push_json_str(&mut body, &self.to_string());
        body.push(b'}');
        let mut resp = json(status, body);
        match self {
            SimError::RateLimited { retry_after_secs } => resp = with_retry_after(resp, retry_after_secs),
            SimError::MethodNotAllowed(allow) => {
                resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

type Reply = Result<Response<Body>, SimError>;

/// Serves one request.
pub(super) async fn handle(sim: Sim, req: Request<Incoming>) -> Response<Body> {
    route(sim, req).await.unwrap_or_else(SimError::into_response)
}

async fn route(sim: Sim, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    let allowed = match path {
        "/payments" | "/admin/purge-payments" => (Method::POST, "POST"),
        "/payments/service-health" | "/admin/payments-summary" => (Method::GET, "GET"),
        "/admin/configurations/token" | "/admin/configurations/delay" | "/admin/configurations/failure" => (Method::PUT, "PUT"),
        p if p.strip_prefix("/payments/").is_some_and(|id| !id.is_empty() && !id.contains('/')) => (Method::GET, "GET"),
        _ => return Err(SimError::NoRoute),
    };
    if *req.method() != allowed.0 {
        return Err(SimError::MethodNotAllowed(allowed.1));
    }
    if path.starts_with("/admin/") {
        check_admin_token(&sim, req.headers())?;
    }
    match path {
        "/payments" => post_payment(sim, req).await,
        "/payments/service-health" => service_health(&sim),
        "/admin/payments-summary" => payments_summary(&sim, req.uri().query().unwrap_or("")),
        "/admin/configurations/token" => put_token(&sim, req).await,
        "/admin/configurations/delay" => put_delay(&sim, req).await,
        "/admin/configurations/failure" => put_failure(&sim, req).await,
        "/admin/purge-payments" => {
            sim.shared.store.purge();
            Ok(json(StatusCode::OK, Bytes::from_static(PURGED_BODY)))
        }
        p => get_payment(&sim, &p["/payments/".len()..]),
    }
}

// ---- payments ----------------------------------------------------------------------------

/// A payment as the caller sent it.
struct Payment {
    id: CorrelationId,
    recorded: Recorded,
}

/// Holds one of the [`MAX_PAYMENTS_IN_FLIGHT`] places until processing ends.
struct InFlight(Sim);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.shared.payments_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit_payment(sim: &Sim) -> Result<InFlight, SimError> {
    let before = sim.shared.payments_in_flight.fetch_add(1, Ordering::Relaxed);
    // Built first so that the refusal path gives the place back through the same Drop.
    let place = InFlight(sim.clone());
    if before >= MAX_PAYMENTS_IN_FLIGHT {
        return Err(SimError::Overloaded);
    }
    Ok(place)
}

async fn post_payment(sim: Sim, req: Request<Incoming>) -> Reply {
    sim.count_payment_request();
    require_json(req.headers())?;
    let place = admit_payment(&sim)?;
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let payment = parse_payment(&body)?;
    // hyper drops this future when the caller hangs up, but a processor records a payment
    // whose caller left during the delay (SPEC §4), so the processing runs in its own task.
    tokio::spawn(process_payment(sim, payment, place)).await.map_err(|e| SimError::Internal(format!("payment task failed: {e}")))?
}

async fn process_payment(sim: Sim, payment: Payment, _place: InFlight) -> Reply {
    let delay_ms = sim.shared.delay_ms.load(Ordering::Relaxed);
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    // Read after the delay: the mode in force when the processor decides is what counts.
    if sim.shared.failing.load(Ordering::Relaxed) {
        return Err(SimError::Failing);
    }
    match sim.shared.store.insert(payment.id, payment.recorded) {
        Insert::Recorded => Ok(json(StatusCode::OK, Bytes::from_static(PROCESSED_BODY))),
        Insert::Duplicate => Err(SimError::Duplicate(payment.id)),
        Insert::Full => Err(SimError::StorageFull),
    }
}

/// `application/json`, in any case, with or without parameters such as `charset`.
fn require_json(headers: &HeaderMap) -> Result<(), SimError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
    if is_json { Ok(()) } else { Err(SimError::UnsupportedMediaType) }
}

#[derive(Deserialize)]
struct PaymentBody<'a> {
    #[serde(rename = "correlationId", borrow)]
    correlation_id: Cow<'a, str>,
    /// Kept as raw text so the amount is parsed exactly, never through a float.
    #[serde(borrow)]
    amount: &'a RawValue,
    #[serde(rename = "requestedAt", borrow)]
    requested_at: Cow<'a, str>,
}

fn parse_payment(body: &[u8]) -> Result<Payment, SimError> {
    let p: PaymentBody = serde_json::from_slice(body).map_err(|e| SimError::BadRequest(format!("malformed payment: {e}")))?;
    let id =
        CorrelationId::parse(p.correlation_id.as_bytes()).ok_or_else(|| SimError::BadRequest("correlationId must be a UUID".to_owned()))?;
    let amount = Cents::parse_json_number(p.amount.get().as_bytes()).map_err(|e| SimError::BadRequest(format!("amount: {e}")))?;
    let requested_at = UtcMillis::parse_rfc3339(p.requested_at.as_bytes(), Rounding::Floor)
        .ok_or_else(|| SimError::BadRequest("requestedAt must be an RFC 3339 timestamp".to_owned()))?;
    Ok(Payment { id, recorded: Recorded { amount, requested_at } })
}

fn get_payment(sim: &Sim, id: &str) -> Reply {
    // An id that is not a UUID cannot have been recorded, so it is simply not found.
    let id = CorrelationId::parse(id.as_bytes()).ok_or(SimError::PaymentNotFound)?;
    let p = sim.shared.store.get(id).ok_or(SimError::PaymentNotFound)?;
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"correlationId\":\"");
    id.write_to(&mut body);
    body.extend_from_slice(b"\",\"amount\":");
    p.amount.write_decimal(&mut body);
    body.extend_from_slice(b",\"requestedAt\":\"");
    p.requested_at.write_to(&mut body);
    body.extend_from_slice(b"\"}");
    Ok(json(StatusCode::OK, body))
}

fn service_health(sim: &Sim) -> Reply {
    if let Err(wait) = sim.admit_health_call() {
        let retry_after_secs = u64::try_from(wait.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX).max(1);
        return Err(SimError::RateLimited { retry_after_secs });
    }
    let body = format!(
        "{{\"failing\":{},\"minResponseTime\":{}}}",
        sim.shared.failing.load(Ordering::Relaxed),
        sim.shared.delay_ms.load(Ordering::Relaxed)
    );
    Ok(json(StatusCode::OK, body))
}

// ---- admin -------------------------------------------------------------------------------

fn check_admin_token(sim: &Sim, headers: &HeaderMap) -> Result<(), SimError> {
    let token = sim.token();
    match headers.get(TOKEN_HEADER) {
        Some(v) if v.as_bytes() == token.as_bytes() => Ok(()),
        _ => Err(SimError::Unauthorized),
    }
}

fn payments_summary(sim: &Sim, query: &str) -> Reply {
    let bound = |name: &str, rounding: Rounding| -> Result<Option<UtcMillis>, SimError> {
        match codec::query_param(query, name)? {
            None => Ok(None),
            Some(text) => UtcMillis::parse_rfc3339(text.as_bytes(), rounding)
                .map(Some)
                .ok_or_else(|| SimError::BadRequest(format!("{name} must be an RFC 3339 timestamp"))),
        }
    };
    // Both bounds are inclusive: round the lower one up and the upper one down so that
    // sub-millisecond digits never admit an instant outside the window written.
    let from = bound("from", Rounding::Ceil)?;
    let to = bound("to", Rounding::Floor)?;
    let totals = sim.shared.store.totals(from.zip(to));
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"totalAmount\":");
    crate::domain::money::write_cents(totals.cents, &mut body);
    body.extend_from_slice(format!(",\"totalRequests\":{},\"totalFee\":", totals.requests).as_bytes());
    codec::write_fee(totals.cents, sim.shared.fee_ppm, &mut body);
    body.extend_from_slice(b",\"feePerTransaction\":");
    codec::write_fee_rate(sim.shared.fee_ppm, &mut body);
    body.push(b'}');
    Ok(json(StatusCode::OK, body))
}

fn read_json<'de, T: Deserialize<'de>>(body: &'de Bytes) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|e| SimError::BadRequest(format!("malformed body: {e}")))
}

async fn put_token(sim: &Sim, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct TokenBody<'a> {
        #[serde(borrow)]
        token: Cow<'a, str>,
    }
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let TokenBody { token } = read_json(&body)?;
    check_token(&token).map_err(SimError::BadRequest)?;
    sim.set_token(&token);
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn put_delay(sim: &Sim, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct DelayBody {
        delay: u64,
    }
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let DelayBody { delay } = read_json(&body)?;
    check_delay(delay).map_err(SimError::BadRequest)?;
    let was = sim.set_delay_ms(delay);
    Ok(json(StatusCode::OK, format!("{{\"config\":\"delay\",\"was\":{was},\"is\":{delay}}}")))
}

async fn put_failure(sim: &Sim, req: Request<Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct FailureBody {
        failure: bool,
    }
    let body = read_body(req, MAX_BODY_BYTES).await?;
    let FailureBody { failure } = read_json(&body)?;
    let was = sim.set_failing(failure);
    Ok(json(StatusCode::OK, format!("{{\"config\":\"failure\",\"was\":{was},\"is\":{failure}}}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> bool {
        matches!(parse_payment(body.as_bytes()), Err(SimError::BadRequest(_)))
    }

    #[test]
    fn parses_a_contest_payment() {
        let p = parse_payment(
            br#"{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":19.90,"requestedAt":"2025-07-15T12:34:56.000Z","extra":1}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(p.id.to_string(), "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3");
        assert_eq!(p.recorded.amount.get(), 1990);
        assert_eq!(p.recorded.requested_at, UtcMillis(1_752_582_896_000));
    }

    #[test]
    fn refuses_malformed_payments() {
        let id = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";
        let at = "2025-07-15T12:34:56.000Z";
        for body in [
            String::new(),
            "{".into(),
            "[]".into(),
            format!(r#"{{"amount":19.90,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":19.90}}"#),
            format!(r#"{{"correlationId":"nope","amount":19.90,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":1,"amount":19.90,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":"19.90","requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":0,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":1.001,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":null,"requestedAt":"{at}"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":19.90,"requestedAt":"yesterday"}}"#),
            format!(r#"{{"correlationId":"{id}","amount":19.90,"requestedAt":"{at}"}} x"#),
        ] {
            assert!(bad(&body), "{body}");
        }
    }

    #[test]
    fn json_content_type_may_carry_parameters() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        for (v, ok) in
            [("application/json", true), ("Application/JSON; charset=utf-8", true), ("text/plain", false), ("application/jsonx", false)]
        {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(require_json(&h).is_ok(), ok, "{v}");
        }
    }
}
