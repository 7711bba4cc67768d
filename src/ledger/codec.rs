//! The ledger's events as journal payloads: a tag byte and fixed little-endian fields.
//! Decoding checks lengths and tags, so a record that passed its CRC but is not one of ours
//! is reported rather than misread.

use super::state::Event;
use crate::domain::{Cents, CorrelationId, UtcMillis};

const ACCEPTED: u8 = 1;
const INTENT: u8 = 2;
const PROCESSED: u8 = 3;
const REJECTED: u8 = 4;
const PURGED: u8 = 5;

/// The longest payload an event encodes to (Accepted: 1 + 16 + 8 + 8).
pub const MAX_EVENT_BYTES: usize = 33;

pub fn encode(event: &Event, out: &mut Vec<u8>) {
    match *event {
        Event::Accepted { id, cents, accepted_at } => {
            out.push(ACCEPTED);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&cents.get().to_le_bytes());
            out.extend_from_slice(&accepted_at.0.to_le_bytes());
        }
        Event::Intent { id, processor, requested_at } | Event::Processed { id, processor, requested_at } => {
            out.push(if matches!(event, Event::Intent { .. }) { INTENT } else { PROCESSED });
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(processor);
            out.extend_from_slice(&requested_at.0.to_le_bytes());
        }
        Event::Rejected { id, processor } => {
            out.push(REJECTED);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.push(processor);
        }
        Event::Purged => out.push(PURGED),
    }
}

/// Why a payload is not an event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload is not a ledger event: {0}")]
pub struct DecodeError(pub &'static str);

pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
    let (&tag, rest) = payload.split_first().ok_or(DecodeError("empty"))?;
    let u128_at = |i: usize| u128::from_le_bytes(rest[i..i + 16].try_into().expect("length checked"));
    let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("length checked"));
    let want = match tag {
        ACCEPTED => 32,
        INTENT | PROCESSED => 25,
        REJECTED => 17,
        PURGED => 0,
        _ => return Err(DecodeError("unknown tag")),
    };
    if rest.len() != want {
        return Err(DecodeError("wrong length for its tag"));
    }
    Ok(match tag {
        ACCEPTED => Event::Accepted {
            id: CorrelationId(u128_at(0)),
            cents: Cents::new(u64_at(16)).ok_or(DecodeError("amount out of range"))?,
            accepted_at: UtcMillis(u64_at(24) as i64),
        },
        INTENT => Event::Intent { id: CorrelationId(u128_at(0)), processor: rest[16], requested_at: UtcMillis(u64_at(17) as i64) },
        PROCESSED => Event::Processed { id: CorrelationId(u128_at(0)), processor: rest[16], requested_at: UtcMillis(u64_at(17) as i64) },
        REJECTED => Event::Rejected { id: CorrelationId(u128_at(0)), processor: rest[16] },
        _ => Event::Purged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_event() -> impl Strategy<Value = Event> {
        let id = any::<u128>().prop_map(CorrelationId);
        let at = any::<i64>().prop_map(UtcMillis);
        prop_oneof![
            (id.clone(), 1..=crate::domain::money::MAX_CENTS, at.clone()).prop_map(|(id, c, accepted_at)| Event::Accepted {
                id,
                cents: Cents::new(c).unwrap(),
                accepted_at
            }),
            (id.clone(), any::<u8>(), at.clone()).prop_map(|(id, processor, requested_at)| Event::Intent { id, processor, requested_at }),
            (id.clone(), any::<u8>(), at).prop_map(|(id, processor, requested_at)| Event::Processed { id, processor, requested_at }),
            (id, any::<u8>()).prop_map(|(id, processor)| Event::Rejected { id, processor }),
            Just(Event::Purged),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(e in any_event()) {
            let mut out = Vec::new();
            encode(&e, &mut out);
            prop_assert!(out.len() <= MAX_EVENT_BYTES);
            prop_assert_eq!(decode(&out), Ok(e));
        }
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9]).is_err());
        assert!(decode(&[ACCEPTED, 1, 2]).is_err());
        assert!(decode(&[PURGED, 0]).is_err());
    }
}
