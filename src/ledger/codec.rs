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
/// The first record of every segment: the processor names its events' indices refer to.
const PROCESSORS: u8 = 6;

/// Longest processor name the journal stores, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

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

/// Encodes the table of processor names that the events after it index into: a count, then
/// each name as a length byte and its UTF-8 bytes.
pub fn encode_processors(names: &[String], out: &mut Vec<u8>) {
    assert!(names.len() <= usize::from(u8::MAX), "at most 255 processors");
    out.push(PROCESSORS);
    out.push(names.len() as u8);
    for n in names {
        assert!(n.len() <= MAX_NAME_BYTES, "processor name too long");
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
}

/// A journal payload: an event, or a segment's table of processor names.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Event(Event),
    Processors(Vec<String>),
}

pub fn decode_record(payload: &[u8]) -> Result<Decoded, DecodeError> {
    if payload.first() != Some(&PROCESSORS) {
        return decode(payload).map(Decoded::Event);
    }
    let bad = DecodeError("malformed processor table");
    let (&count, mut rest) = payload[1..].split_first().ok_or(bad.clone())?;
    let mut names = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (&len, tail) = rest.split_first().ok_or(bad.clone())?;
        let (name, tail) = tail.split_at_checked(usize::from(len)).ok_or(bad.clone())?;
        names.push(std::str::from_utf8(name).map_err(|_| bad.clone())?.to_string());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(Decoded::Processors(names))
}

/// Why a payload is not an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    fn processor_tables_round_trip_and_malformed_ones_are_refused() {
        let names = vec!["default".to_string(), "fallback".to_string(), "ünïcode".to_string()];
        let mut out = Vec::new();
        encode_processors(&names, &mut out);
        assert_eq!(decode_record(&out), Ok(Decoded::Processors(names)));
        assert!(decode_record(&out[..out.len() - 1]).is_err());
        assert!(decode_record(&[PROCESSORS, 1, 3, b'a']).is_err());
        assert!(decode(&out).is_err(), "a table is not an event");
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9]).is_err());
        assert!(decode(&[ACCEPTED, 1, 2]).is_err());
        assert!(decode(&[PURGED, 0]).is_err());
    }
}
