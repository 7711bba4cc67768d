//! Text codecs of the simulator's wire values that the domain types do not cover: the fee rate
//! (parsed exactly into parts per million), exact decimal formatting of fees, and query-string
//! decoding for the admin summary. Pure functions, no I/O.

/// Parts per million in a whole (fee rate 1.0 = 100 %).
pub const PPM_PER_UNIT: u64 = 1_000_000;

/// Parses a fee rate written as a plain decimal (`0.05`, `0.15`, `1`) into parts per million,
/// exactly. More than six significant decimals or a rate above 1 is refused rather than rounded,
/// because the fee totals are audited to the last digit.
pub fn parse_fee_ppm(text: &str) -> Result<u64, String> {
    let bad = || format!("fee {text:?} must be a decimal between 0 and 1 with at most 6 decimals, like 0.05");
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return Err(bad()),
        None => (text, ""),
    };
    if int_part.is_empty() || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac_part = frac_part.trim_end_matches('0');
    if frac_part.len() > 6 {
        return Err(bad());
    }
    let int_part = int_part.trim_start_matches('0');
    if int_part.len() > 1 {
        return Err(bad());
    }
    let units = int_part.parse::<u64>().unwrap_or(0);
    let mut frac = 0u64;
    for i in 0..6 {
        frac = frac * 10 + frac_part.as_bytes().get(i).map_or(0, |&d| u64::from(d - b'0'));
    }
    let ppm = units * PPM_PER_UNIT + frac;
    if ppm > PPM_PER_UNIT {
        return Err(bad());
    }
    Ok(ppm)
}

/// Writes `value / 10^scale_digits` as an exact JSON number with at least two decimals and no
/// trailing zeros beyond them (`6.1725`, `0.05`, `12.30`).
pub fn write_scaled_decimal(value: u128, scale_digits: u32, out: &mut Vec<u8>) {
    use std::io::Write;
    let scale = 10u128.pow(scale_digits);
    let _ = write!(out, "{}.", value / scale);
    let frac = format!("{:0width$}", value % scale, width = scale_digits as usize);
    let kept = frac.trim_end_matches('0').len().max(2);
    out.extend_from_slice(&frac.as_bytes()[..kept.min(frac.len())]);
    // A scale below two digits still owes the caller two decimals.
    out.extend(std::iter::repeat_n(b'0', 2usize.saturating_sub(frac.len())));
}

/// Writes the total fee for `cents` at `fee_ppm`, exactly: cents × ppm is in units of 10^-8.
pub fn write_fee(cents: u128, fee_ppm: u64, out: &mut Vec<u8>) {
    write_scaled_decimal(cents * u128::from(fee_ppm), 8, out);
}

/// Writes a fee rate held in parts per million (`50000` → `0.05`).
pub fn write_fee_rate(fee_ppm: u64, out: &mut Vec<u8>) {
    write_scaled_decimal(u128::from(fee_ppm), 6, out);
}

/// Why a query string could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query parameter {0:?} has a malformed percent escape")]
    BadEscape(String),
    #[error("query parameter {0:?} is not UTF-8 once decoded")]
    NotUtf8(String),
    #[error("query parameter {0:?} is given more than once")]
    Repeated(String),
}

/// Finds `name` in a query string and percent-decodes its value. `+` is kept as is rather than
/// read as a space (that is form encoding, not RFC 3986), so an unencoded `+02:00` offset works.
/// A name given twice is an error: guessing which one the caller meant could widen a window.
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, QueryError> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err(QueryError::Repeated(name.to_owned()));
        }
        found = Some(percent_decode(value).map_err(|e| match e {
            DecodeError::Escape => QueryError::BadEscape(name.to_owned()),
            DecodeError::Utf8 => QueryError::NotUtf8(name.to_owned()),
        })?);
    }
    Ok(found)
}

enum DecodeError {
    Escape,
    Utf8,
}

fn percent_decode(text: &str) -> Result<String, DecodeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let hi = bytes.get(i + 1).copied().and_then(hex).ok_or(DecodeError::Escape)?;
            let lo = bytes.get(i + 2).copied().and_then(hex).ok_or(DecodeError::Escape)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fee(cents: u128, ppm: u64) -> String {
        let mut out = Vec::new();
        write_fee(cents, ppm, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn rate(ppm: u64) -> String {
        let mut out = Vec::new();
        write_fee_rate(ppm, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_fee_rates_exactly() {
        assert_eq!(parse_fee_ppm("0.05"), Ok(50_000));
        assert_eq!(parse_fee_ppm("0.15"), Ok(150_000));
        assert_eq!(parse_fee_ppm("0.050000000"), Ok(50_000));
        assert_eq!(parse_fee_ppm("0.000001"), Ok(1));
        assert_eq!(parse_fee_ppm("0"), Ok(0));
        assert_eq!(parse_fee_ppm("1"), Ok(PPM_PER_UNIT));
        assert_eq!(parse_fee_ppm("1.0"), Ok(PPM_PER_UNIT));
        assert_eq!(parse_fee_ppm("00.5"), Ok(500_000));
    }

    #[test]
    fn refuses_fee_rates_it_cannot_hold_exactly() {
        for s in ["", ".", "0.", ".5", "-0.05", "+0.05", "0.0000001", "1.01", "2", "10", "5%", "0,05", "1e-2", " 0.05"] {
            assert!(parse_fee_ppm(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn writes_fees_as_exact_decimals() {
        assert_eq!(fee(12_345, 50_000), "6.1725");
        assert_eq!(fee(1_990, 50_000), "0.995");
        assert_eq!(fee(2_000, 50_000), "1.00");
        assert_eq!(fee(0, 50_000), "0.00");
        assert_eq!(fee(1, 1), "0.00000001");
        assert_eq!(fee(1_990 * 3, 150_000), "8.955");
    }

    #[test]
    fn writes_fee_rates() {
        assert_eq!(rate(50_000), "0.05");
        assert_eq!(rate(150_000), "0.15");
        assert_eq!(rate(100_000), "0.10");
        assert_eq!(rate(1), "0.000001");
        assert_eq!(rate(PPM_PER_UNIT), "1.00");
        assert_eq!(rate(0), "0.00");
    }

    #[test]
    fn writes_at_least_two_decimals_at_small_scales() {
        let mut out = Vec::new();
        write_scaled_decimal(123, 1, &mut out);
        assert_eq!(out, b"12.30");
        out.clear();
        write_scaled_decimal(7, 0, &mut out);
        assert_eq!(out, b"7.00");
    }

    #[test]
    fn decodes_query_values() {
        let q = "from=2025-07-15T12%3A34%3A56.000Z&to=2025-07-15T14:34:56.000%2B02:00";
        assert_eq!(query_param(q, "from"), Ok(Some("2025-07-15T12:34:56.000Z".into())));
        assert_eq!(query_param(q, "to"), Ok(Some("2025-07-15T14:34:56.000+02:00".into())));
        assert_eq!(query_param(q, "other"), Ok(None));
        assert_eq!(query_param("to=a+b", "to"), Ok(Some("a+b".into())));
        assert_eq!(query_param("to", "to"), Ok(Some(String::new())));
        assert_eq!(query_param("", "to"), Ok(None));
    }

    #[test]
    fn refuses_bad_query_values() {
        assert_eq!(query_param("to=%3", "to"), Err(QueryError::BadEscape("to".into())));
        assert_eq!(query_param("to=%zz", "to"), Err(QueryError::BadEscape("to".into())));
        assert_eq!(query_param("to=%ff", "to"), Err(QueryError::NotUtf8("to".into())));
        assert_eq!(query_param("to=a&to=b", "to"), Err(QueryError::Repeated("to".into())));
    }

    proptest! {
        #[test]
        fn fee_text_matches_integer_model(cents in 0u64..100_000_000_000_000, ppm in 0u64..=PPM_PER_UNIT) {
            let text = fee(u128::from(cents), ppm);
            let (int, frac) = text.split_once('.').unwrap();
            prop_assert!(frac.len() >= 2 && frac.len() <= 8);
            prop_assert!(frac.len() == 2 || !frac.ends_with('0'));
            let scaled = int.parse::<u128>().unwrap() * 100_000_000
                + format!("{frac:0<8}").parse::<u128>().unwrap();
            prop_assert_eq!(scaled, u128::from(cents) * u128::from(ppm));
        }

        #[test]
        fn fee_rate_round_trips(ppm in 0u64..=PPM_PER_UNIT) {
            prop_assert_eq!(parse_fee_ppm(&rate(ppm)), Ok(ppm));
        }
    }
}
