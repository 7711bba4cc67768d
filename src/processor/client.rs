//! The HTTP client for one upstream processor: pooled keep-alive HTTP/1.1 connections, a
//! timeout on every request, and the mapping of answers to [`Outcome`]s (SPEC §4).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Outcome;
use super::health::retry_after_s;
use crate::domain::time::Rounding;
use crate::domain::{Cents, CorrelationId, UtcMillis};

/// Idle keep-alive connections kept open per processor.
pub const POOL_IDLE_PER_HOST: usize = 512;
/// Idle connections are closed after this long.
pub const POOL_IDLE_TIMEOUT_MS: u64 = 60_000;
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
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            // Drain the answer so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(status)) => classify(status),
            // The request never left: nothing can have been recorded.
            Ok(Err(e)) if e.is_connect() => Outcome::NotRecorded,
            Ok(Err(_)) | Err(_) => Outcome::Unknown,
        }
    }

    /// `GET /payments/{id}`: what the processor recorded, if anything.
    pub async fn lookup(&self, id: CorrelationId) -> Lookup {
        let Some((status, body)) = self.get(&format!("/payments/{id}")).await else {
            return Lookup::Unavailable;
        };
        match status {
            StatusCode::OK => {
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
            StatusCode::NOT_FOUND => Lookup::NotFound,
            _ => Lookup::Unavailable,
        }
    }

    /// `GET /payments/service-health`.
    pub async fn health(&self) -> Health {
        let Some((status, body)) = self.get_with_headers("/payments/service-health").await else {
            return Health::Unavailable;
        };
        match status {
            (StatusCode::OK, _) => {
                #[derive(serde::Deserialize)]
                struct Report {
                    failing: bool,
                    #[serde(rename = "minResponseTime")]
                    min_response_time: u64,
                }
                serde_json::from_slice::<Report>(&body)
                    .map_or(Health::Unavailable, |r| Health::Report { failing: r.failing, min_response_ms: r.min_response_time })
            }
            (StatusCode::TOO_MANY_REQUESTS, retry_after_s) => Health::RateLimited { retry_after_s },
            _ => Health::Unavailable,
        }
    }

    async fn get(&self, path: &str) -> Option<(StatusCode, Bytes)> {
        self.get_with_headers(path).await.map(|((s, _), b)| (s, b))
    }

    /// A GET under the timeout; returns the status, the `Retry-After` seconds (clamped; see
    /// [`retry_after_s`]), and the body.
    async fn get_with_headers(&self, path: &str) -> Option<((StatusCode, u64), Bytes)> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.uri(path);
        let fut = async {
            let resp = self.client.request(req).await.ok()?;
            let status = resp.status();
            let retry_after = retry_after_s(resp.headers().get(RETRY_AFTER).map(HeaderValue::as_bytes));
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await.ok()?.to_bytes();
            Some(((status, retry_after), body))
        };
        tokio::time::timeout(self.timeout, fut).await.ok().flatten()
    }
}

/// Maps a processor's status code to what it proves (SPEC §4).
fn classify(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Recorded,
        422 => Outcome::Duplicate,
        // 500 is the processor's "failing, nothing recorded"; 429 is refused before work.
        500 | 429 => Outcome::NotRecorded,
        // 400/415/404: refused before recording; a defect on our side, which the caller logs.
        400..=499 => Outcome::NotRecorded,
        // 502/503/504 may come from a proxy that did forward the request.
        _ => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_what_they_prove() {
        assert_eq!(classify(StatusCode::OK), Outcome::Recorded);
        assert_eq!(classify(StatusCode::UNPROCESSABLE_ENTITY), Outcome::Duplicate);
        assert_eq!(classify(StatusCode::INTERNAL_SERVER_ERROR), Outcome::NotRecorded);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS), Outcome::NotRecorded);
        assert_eq!(classify(StatusCode::BAD_GATEWAY), Outcome::Unknown);
        assert_eq!(classify(StatusCode::GATEWAY_TIMEOUT), Outcome::Unknown);
    }
}
