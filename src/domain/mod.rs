//! Domain types that cannot hold an invalid value: money in integer cents, correlation ids as
//! u128, UTC instants in milliseconds. Parsed once at the edge; no I/O, no async here.

pub mod id;
pub mod money;
pub mod time;

pub use id::CorrelationId;
pub use money::Cents;
pub use time::UtcMillis;
