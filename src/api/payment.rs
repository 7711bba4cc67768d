//! Parsing and validation of a `POST /payments` body into domain types. Money is read from
//! the JSON number's own text, never through a float.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::domain::money::AmountError;
use crate::domain::{Cents, CorrelationId};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "correlationId", borrow, default, deserialize_with = "present")]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    amount: Option<&'a RawValue>,
}

/// A field that is present, even as `null`, is `Some`: null is a wrong type, not a missing field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A validated payment request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewPayment {
    pub id: CorrelationId,
    pub cents: Cents,
}

pub fn parse(body: &[u8]) -> Result<NewPayment, ApiError> {
    #[cfg(feature = "json-fast-path")]
    if let Some(p) = parse_exact(body) {
        return Ok(p);
    }
    #[cfg(feature = "simd-json")]
    if let Some(p) = parse_simd(body) {
        return Ok(p);
    }
    parse_full(body)
}

/// simd-json's tape (feature `simd-json`, off by default; perf.md measures it). The tape keeps
/// a number only as an `i64`, `u64` or `f64`, never as its text, so the amount is the shortest
/// text that reads back as the same `f64`, parsed exactly. That is exact for every amount a
/// client means (`19.90` is 1990 cents), but it also takes spellings the exact parser refuses:
/// exponents (`1.99e1`) and digits past an `f64`'s precision (`19.9000000000000001`). Invalid
/// bodies and anything it does not accept go to [`parse_full`], for its exact error.
#[cfg(feature = "simd-json")]
fn parse_simd(body: &[u8]) -> Option<NewPayment> {
    use simd_json::prelude::*;
    use std::io::Write;
    // simd-json parses in place.
    let mut input = body.to_vec();
    let tape = simd_json::to_tape(&mut input).ok()?;
    let value = tape.as_value();
    let id = CorrelationId::parse(value.get_str("correlationId")?.as_bytes())?;
    let amount = value.get("amount")?.cast_f64()?;
    let mut text = [0u8; 32];
    // `Display` for f64 is the shortest round-trip text, never an exponent; too long to be an
    // amount when it does not fit.
    let len = {
        let mut out = &mut text[..];
        write!(out, "{amount}").ok()?;
        32 - out.len()
    };
    Some(NewPayment { id, cents: Cents::parse_json_number(&text[..len]).ok()? })
}

/// Reads the layout the contest's clients send, `{"correlationId":"<uuid>","amount":<number>}`
/// with nothing else in it, without a JSON parser. Any other body (other key order, spaces,
/// escapes, more fields) or any invalid value gives `None`, and [`parse_full`] decides — so a
/// body is accepted, with the same values, exactly when the full parser would accept it.
#[cfg_attr(not(feature = "json-fast-path"), allow(dead_code))]
fn parse_exact(body: &[u8]) -> Option<NewPayment> {
    let rest = body.strip_prefix(br#"{"correlationId":""#)?;
    let (id, rest) = rest.split_at_checked(36)?;
    let amount = rest.strip_prefix(br#"","amount":"#)?.strip_suffix(b"}")?;
    Some(NewPayment { id: CorrelationId::parse(id)?, cents: Cents::parse_json_number(amount).ok()? })
}

/// The general parser: any valid JSON object, with the exact error for anything else.
fn parse_full(body: &[u8]) -> Result<NewPayment, ApiError> {
    // serde would read a struct from an array too; only an object is a payment.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        return Err(ApiError::WrongType { field: "body", expected: "a JSON object" });
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::WrongType { field: "body", expected: "a JSON object" },
        _ => ApiError::MalformedJson(e.to_string()),
    })?;
    let id = parsed.correlation_id.ok_or(ApiError::MissingField("correlationId"))?.get().as_bytes();
    let amount = parsed.amount.ok_or(ApiError::MissingField("amount"))?.get().as_bytes();
    // A UUID inside a JSON string never needs escapes, so the raw text is the value.
    let id = match id {
        [b'"', inner @ .., b'"'] => CorrelationId::parse(inner).ok_or(ApiError::InvalidCorrelationId)?,
        _ => return Err(ApiError::WrongType { field: "correlationId", expected: "a string" }),
    };
    let cents = Cents::parse_json_number(amount).map_err(|e| match e {
        AmountError::NotANumber => ApiError::WrongType { field: "amount", expected: "a number" },
        e => ApiError::InvalidAmount(e),
    })?;
    Ok(NewPayment { id, cents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values and near-misses for each part of the exact layout.
    fn id_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u128>().prop_map(|v| CorrelationId(v).to_string()),
            any::<u128>().prop_map(|v| CorrelationId(v).to_string().to_uppercase()),
            "[0-9a-fA-F\\\\\"g -]{34,38}",
        ]
    }

    fn amount_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u64..100_000_000_000_000, 0u32..3).prop_map(|(c, d)| match d {
                0 => (c / 100).to_string(),
                1 => format!("{}.{}", c / 100, (c % 100) / 10),
                _ => format!("{}.{:02}", c / 100, c % 100),
            }),
            "-?[0-9]{0,14}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{0,2})?",
            "[0-9. +-]{1,6}|\"19.90\"|null|true|\\{\\}",
        ]
    }

    proptest! {
        /// Whatever the fast path accepts, the full parser accepts with the same values; and it
        /// refuses no body of its exact layout that the full parser accepts.
        #[test]
        fn the_exact_layout_agrees_with_the_full_parser(id in id_text(), amount in amount_text(), tail in "\\}|\\} |,\"x\":1\\}") {
            let body = format!(r#"{{"correlationId":"{id}","amount":{amount}{tail}"#);
            let full = parse_full(body.as_bytes());
            match parse_exact(body.as_bytes()) {
                Some(p) => prop_assert!(matches!(full, Ok(q) if q == p), "fast path read {} as {:?}, full parser: {:?}", body, p, full),
                // Spaces and extra fields are outside the exact layout: the full parser's case.
                None => prop_assert!(full.is_err() || tail != "}" || amount.contains(' '), "fast path refused {} which parses as {:?}", body, full),
            }
        }
    }

    #[cfg(feature = "simd-json")]
    proptest! {
        /// For every amount a client means (a plain decimal with at most two decimals), the
        /// simd-json path reads what the full parser reads, in either key order.
        #[test]
        fn simd_json_agrees_with_the_full_parser_on_plain_amounts(id in any::<u128>(), cents in 1u64..100_000_000_000_000, decimals in 0u32..3, swap: bool) {
            let amount = match decimals {
                0 => (cents / 100 + 1).to_string(),
                1 => format!("{}.{}", cents / 100, (cents % 100) / 10),
                _ => format!("{}.{:02}", cents / 100, cents % 100),
            };
            let id = CorrelationId(id);
            let body = if swap {
                format!(r#"{{ "amount": {amount}, "correlationId": "{id}" }}"#)
            } else {
                format!(r#"{{"correlationId":"{id}","amount":{amount}}}"#)
            };
            prop_assert_eq!(parse_simd(body.as_bytes()), parse_full(body.as_bytes()).ok(), "{}", body);
        }
    }

    fn code(body: &str) -> String {
        match parse(body.as_bytes()) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{e:?}").split(['(', ' ', '{']).next().unwrap().to_string(),
        }
    }

    #[test]
    fn accepts_the_contest_body() {
        let p = parse(br#"{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":19.90}"#).unwrap();
        assert_eq!(p.cents.get(), 1990);
        assert_eq!(p.id.to_string(), "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3");
    }

    #[test]
    fn ignores_unknown_fields_of_any_shape() {
        let b = r#"{"x":{"y":[1,"}"]},"amount":1,"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","z":null}"#;
        assert_eq!(code(b), "ok");
    }

    #[test]
    fn maps_each_bad_input_to_its_error() {
        let id = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3";
        let cases = [
            ("{", "MalformedJson"),
            ("", "MalformedJson"),
            ("[]", "WrongType"),
            ("42", "WrongType"),
            (r#"{"amount":1}"#, "MissingField"),
            (&format!(r#"{{"correlationId":"{id}"}}"#), "MissingField"),
            (&format!(r#"{{"correlationId":"{id}","amount":"1.00"}}"#), "WrongType"),
            (&format!(r#"{{"correlationId":"{id}","amount":null}}"#), "WrongType"),
            (r#"{"correlationId":7,"amount":1}"#, "WrongType"),
            (r#"{"correlationId":"nope","amount":1}"#, "InvalidCorrelationId"),
            (&format!(r#"{{"correlationId":"{id}","amount":0}}"#), "InvalidAmount"),
            (&format!(r#"{{"correlationId":"{id}","amount":-1}}"#), "InvalidAmount"),
            (&format!(r#"{{"correlationId":"{id}","amount":1.001}}"#), "InvalidAmount"),
            // simd-json's tape loses the number's spelling (see `parse_simd`): 1e3 is 1000.00.
            (&format!(r#"{{"correlationId":"{id}","amount":1e3}}"#), if cfg!(feature = "simd-json") { "ok" } else { "InvalidAmount" }),
            (&format!(r#"{{"correlationId":"{id}","amount":10000000000000}}"#), "InvalidAmount"),
        ];
        for (body, want) in cases {
            assert_eq!(code(body), want, "{body}");
        }
    }
}
