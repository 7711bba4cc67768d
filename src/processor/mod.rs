//! Upstream processors: the pooled HTTP client, the circuit breaker, the health monitor and
//! the router that picks the cheapest processor that works.

pub mod breaker;
pub mod client;
pub mod health;
pub mod router;

/// Index of a processor in the configured list; 0 is the cheapest.
pub type ProcessorIdx = u8;

/// What became of one request to a processor. The payment state machine only learns of a
/// payment's fate through this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200: the processor recorded this request.
    Recorded,
    /// 422: the processor already had this correlation id.
    Duplicate,
    /// The processor answered and certainly did not record this request (4xx other than
    /// 409/422, 500, 501, or the connection was never made). See `client::classify`.
    NotRecorded,
    /// Timeout, reset after sending, or an answer that proves nothing (other 2xx, 3xx, 409,
    /// 502–504, other 5xx): it may be recorded, now or later; only a lookup tells.
    Unknown,
}
