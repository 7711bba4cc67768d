//! The HTTP client for one upstream processor: pooled keep-alive HTTP/1.1 connections, a
//! timeout on every request, and the mapping of answers to [`Outcome`]s (SPEC §4).
//!
//! Everything a processor sends is untrusted input. An answer is judged by its status as soon
//! as its head arrives; a body is read only up to [`MAX_ANSWER_BYTES`] and only within the
//! request's timeout, so a huge or dripping body can neither exhaust memory nor turn a clear
//! status into an unknown outcome. Anything the API does not define proves nothing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::Outcome;
use super::health::retry_after_s;
use crate::domain::time::Rounding;
use crate::domain::{Cents, CorrelationId, UtcMillis};

/// Idle keep-alive connections kept open per processor.
pub const POOL_IDLE_PER_HOST: usize = 512;
/// Idle connections are closed after this long: well below the servers' own idle timeouts
/// (paygate's simulator and common proxies close at 60 s or later), so that we never reuse a
/// connection the processor is closing at that moment — a request sent into that race ends
/// with an unknown outcome.
pub const POOL_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Largest processor answer we read; anything longer is not a processor answer.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What `GET /payments/service-health` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Report {
        failing: bool,
        min_response_ms: u64,
    },
    /// 429: rate-limited; ask again no sooner than this many seconds (the processor's
    /// `Retry-After`, clamped by [`super::health::retry_after_s`]).
    RateLimited {
        retry_after_s: u64,
    },
    /// Anything else: no news.
    Unavailable,
}

/// A processor's record of one payment (`GET /payments/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found { requested_at: UtcMillis },
    NotFound,
    Unavailable,
}

#[derive(Clone, Debug)]
pub struct ProcessorClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8001`.
    base: String,
    timeout: Duration,
}

impl ProcessorClient {
    pub fn new(base: &str, timeout: Duration) -> ProcessorClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .build(connector);
        ProcessorClient { client, base: base.trim_end_matches('/').to_string(), timeout }
    }

    fn uri(&self, path: &str) -> Uri {
        format!("{}{}", self.base, path).parse().expect("validated base URL")
    }

    /// `POST /payments`. Sends the identical body for the same arguments, which is what the
    /// unknown-outcome rule relies on.
    pub async fn pay(&self, id: CorrelationId, cents: Cents, requested_at: UtcMillis) -> Outcome {
        let mut body = Vec::with_capacity(112);
        body.extend_from_slice(b"{\"correlationId\":\"");
        id.write_to(&mut body);
        body.extend_from_slice(b"\",\"amount\":");
        cents.write_decimal(&mut body);
        body.extend_from_slice(b",\"requestedAt\":\"");
        requested_at.write_to(&mut body);
        body.extend_from_slice(b"\"}");
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri("/payments");
        req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let started = Instant::now();
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            // The request never left: nothing can have been recorded.
            Ok(Err(e)) if e.is_connect() => return Outcome::NotRecorded,
            // Not HTTP, closed after the request was written, or no head in time: the
            // processor may have recorded it.
            Ok(Err(_)) | Err(_) => return Outcome::Unknown,
        };
        // The status is the whole answer, and it is known now: a body that is huge, slow or
        // broken must not turn a clear answer into an unknown one.
        let outcome = classify(resp.status());
        let _ = self.read_body(resp.into_body(), started).await;
        outcome
    }

    /// The `requestedAt` the processor holds for `id`, when a lookup can read one.
    pub async fn recorded_at(&self, id: CorrelationId) -> Option<UtcMillis> {
        match self.lookup(id).await {
            Lookup::Found { requested_at } => Some(requested_at),
            Lookup::NotFound | Lookup::Unavailable => None,
        }
    }

    /// `GET /payments/{id}`: what the processor recorded, if anything. Only a record we can
    /// read proves it was recorded, and when.
    pub async fn lookup(&self, id: CorrelationId) -> Lookup {
        let Some((status, _, body)) = self.get(&format!("/payments/{id}")).await else {
            return Lookup::Unavailable;
        };
        match (status, body) {
            (StatusCode::OK, Some(body)) => {
                #[derive(serde::Deserialize)]
                struct Record<'a> {
                    #[serde(rename = "requestedAt", borrow)]
                    requested_at: &'a str,
                }
                serde_json::from_slice::<Record>(&body)
                    .ok()
                    .and_then(|r| UtcMillis::parse_rfc3339(r.requested_at.as_bytes(), Rounding::Floor))
                    .map_or(Lookup::Unavailable, |requested_at| Lookup::Found { requested_at })
            }
            (StatusCode::NOT_FOUND, _) => Lookup::NotFound,
            _ => Lookup::Unavailable,
        }
    }

    /// `GET /payments/service-health`. A report must be exactly the documented shape (a
    /// negative or fractional `minResponseTime` is not); a 429's `Retry-After` is clamped.
    pub async fn health(&self) -> Health {
        let Some((status, headers, body)) = self.get("/payments/service-health").await else {
            return Health::Unavailable;
        };
        match (status, body) {
            (StatusCode::OK, Some(body)) => {
                #[derive(serde::Deserialize)]
                struct Report {
                    failing: bool,
                    #[serde(rename = "minResponseTime")]
                    min_response_time: u64,
                }
                serde_json::from_slice::<Report>(&body)
                    .map_or(Health::Unavailable, |r| Health::Report { failing: r.failing, min_response_ms: r.min_response_time })
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => {
                Health::RateLimited { retry_after_s: retry_after_s(headers.get(RETRY_AFTER).map(HeaderValue::as_bytes)) }
            }
            _ => Health::Unavailable,
        }
    }

    /// A GET under the timeout: the status and headers as soon as the head arrives, and the
    /// body as [`ProcessorClient::read_body`] reads it. None when no head came in time.
    async fn get(&self, path: &str) -> Option<(StatusCode, HeaderMap, Option<Bytes>)> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.uri(path);
        let started = Instant::now();
        let resp = tokio::time::timeout(self.timeout, self.client.request(req)).await.ok()?.ok()?;
        let (parts, body) = resp.into_parts();
        Some((parts.status, parts.headers, self.read_body(body, started).await))
    }

    /// Reads an answer's body, at most [`MAX_ANSWER_BYTES`] and within what is left of the
    /// timeout that began at `started`. Reading it to the end lets the connection go back to
    /// the pool; None when it is too long, too slow or broken, which only costs the connection
    /// (dropping an unfinished body closes it).
    async fn read_body(&self, body: Incoming, started: Instant) -> Option<Bytes> {
        let left = self.timeout.saturating_sub(started.elapsed());
        let collected = tokio::time::timeout(left, Limited::new(body, MAX_ANSWER_BYTES).collect()).await.ok()?.ok()?;
        Some(collected.to_bytes())
    }
}

/// Maps a processor's status code to what it proves (SPEC §4). Only the answers the API
/// defines, and refusals that come before any processing, prove anything; everything else is
/// unknown, and a lookup on the same processor settles it.
fn classify(status: StatusCode) -> Outcome {
    match status.as_u16() {
        // SPEC: recorded, and answered 200.
        200 => Outcome::Recorded,
        // SPEC: the processor already holds this correlationId.
        422 => Outcome::Duplicate,
        // Not the processor's answer (a 1xx is not even final); a lookup proves it either way.
        100..=199 | 201..=299 => Outcome::Unknown,
        // We do not follow redirects; the lookup decides.
        300..=399 => Outcome::Unknown,
        // Some processors say "already have it" this way.
        409 => Outcome::Unknown,
        // 400, 401, 403, 404, 405, 408, 413, 415, 429, ...: refused before any processing.
        400..=499 => Outcome::NotRecorded,
        // SPEC: the failure mode records nothing; 501: the processor cannot take payments.
        500 | 501 => Outcome::NotRecorded,
        // 502, 503, 504: a proxy may have forwarded the request.
        502..=504 => Outcome::Unknown,
        // 507 and the rest: a failure the API does not define; it may have stored part of it.
        505..=599 => Outcome::Unknown,
        // Not an HTTP status at all.
        _ => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_what_it_proves() {
        let from = |code: u16| classify(StatusCode::from_u16(code).expect("valid status"));
        let rows: &[(&[u16], Outcome)] = &[
            (&[200], Outcome::Recorded),
            (&[422], Outcome::Duplicate),
            (&[100, 103, 199], Outcome::Unknown),
            (&[201, 202, 204, 206, 299], Outcome::Unknown),
            (&[300, 301, 302, 304, 307, 308, 399], Outcome::Unknown),
            (&[409], Outcome::Unknown),
            (&[400, 401, 403, 404, 405, 408, 410, 413, 415, 421, 423, 429, 451, 499], Outcome::NotRecorded),
            (&[500, 501], Outcome::NotRecorded),
            (&[502, 503, 504], Outcome::Unknown),
            (&[505, 507, 508, 511, 599], Outcome::Unknown),
            (&[600, 700, 999], Outcome::Unknown),
        ];
        for (codes, want) in rows {
            for &code in *codes {
                assert_eq!(from(code), *want, "{code}");
            }
        }
        // Every code hyper can represent lands in exactly one row above or in "other 4xx".
        for code in 100..=999u16 {
            let got = from(code);
            let want = match code {
                200 => Outcome::Recorded,
                422 => Outcome::Duplicate,
                400..=499 if code != 409 => Outcome::NotRecorded,
                500 | 501 => Outcome::NotRecorded,
                _ => Outcome::Unknown,
            };
            assert_eq!(got, want, "{code}");
        }
    }
}
