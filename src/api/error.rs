//! The one place where errors become HTTP responses: status, `error` code and message.

use hyper::{Response, StatusCode};

use crate::http::{Body, json, push_json_str, with_retry_after};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_S: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("field `{0}` is required")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("{0}")]
    InvalidAmount(#[from] crate::domain::money::AmountError),
    #[error("correlationId must be a UUID in canonical 8-4-4-4-12 hex form")]
    InvalidCorrelationId,
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("request body did not arrive within the body timeout")]
    BodyTimeout,
    #[error("correlationId was already accepted with a different amount")]
    AmountMismatch,
    #[error("query parameter `{0}` must be an RFC 3339 timestamp such as 2025-07-15T12:34:56.000Z")]
    InvalidTimestamp(&'static str),
    #[error("admin endpoints need a matching X-Admin-Token header (and a token configured)")]
    Forbidden,
    #[error("no payment with this correlationId")]
    PaymentNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed here; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("too many payments are waiting to be forwarded; retry later")]
    BacklogFull,
    #[error("payments cannot be made durable right now; retry later")]
    JournalUnavailable,
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            MissingField(_) => (StatusCode::BAD_REQUEST, "missing_field"),
            WrongType { .. } => (StatusCode::BAD_REQUEST, "wrong_type"),
            InvalidAmount(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount"),
            InvalidCorrelationId => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_correlation_id"),
            BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            BodyUnreadable => (StatusCode::BAD_REQUEST, "body_unreadable"),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            AmountMismatch => (StatusCode::CONFLICT, "amount_mismatch"),
            InvalidTimestamp(_) => (StatusCode::BAD_REQUEST, "invalid_timestamp"),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            PaymentNotFound => (StatusCode::NOT_FOUND, "payment_not_found"),
            RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            BacklogFull => (StatusCode::SERVICE_UNAVAILABLE, "backlog_full"),
            JournalUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let mut body = Vec::with_capacity(96);
        body.extend_from_slice(b"{\"error\":\"");
        body.extend_from_slice(code.as_bytes());
        body.extend_from_slice(b"\",\"message\":");
        push_json_str(&mut body, &self.to_string());
        body.push(b'}');
        let mut resp = json(status, body);
        if let ApiError::MethodNotAllowed(allow) = self {
            resp.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allow));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp = with_retry_after(resp, RETRY_AFTER_S);
        }
        resp
    }
}
