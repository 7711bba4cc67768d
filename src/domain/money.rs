//! Exact money: integer cents parsed from a JSON number's text. Binary floating point never
//! touches an amount.

use std::fmt;

/// Largest accepted amount, 999 999 999 999.99, in cents (SPEC §2).
pub const MAX_CENTS: u64 = 99_999_999_999_999;

/// A positive amount of money in cents, at most [`MAX_CENTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(u64);

/// Why an amount's text is not an acceptable amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a JSON number at all (the caller maps this to 400).
    #[error("amount is not a JSON number")]
    NotANumber,
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount must have at most 2 decimal places")]
    TooManyDecimals,
    #[error("amount must be at most 999999999999.99")]
    TooLarge,
    #[error("amount must be written as a plain decimal, without an exponent")]
    Exponent,
}

impl Cents {
    /// Wraps a cent count; `None` when it is zero or above [`MAX_CENTS`].
    pub fn new(cents: u64) -> Option<Cents> {
        (cents > 0 && cents <= MAX_CENTS).then_some(Cents(cents))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// Parses the text of a JSON number (RFC 8259 grammar) into cents, exactly.
    ///
    /// `19.9`, `19.90` and `19.900` are all 1990 cents: trailing zeros past the second decimal
    /// carry no value, so only significant third decimals are rejected.
    pub fn parse_json_number(text: &[u8]) -> Result<Cents, AmountError> {
        let (negative, rest) = match text.first() {
            Some(b'-') => (true, &text[1..]),
            _ => (false, text),
        };
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if int_len == 0 || (int_len > 1 && rest[0] == b'0') {
            return Err(AmountError::NotANumber);
        }
        let (int_part, mut rest) = rest.split_at(int_len);
        let mut frac_part: &[u8] = &[];
        if let Some(b'.') = rest.first() {
            let n = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return Err(AmountError::NotANumber);
            }
            frac_part = &rest[1..1 + n];
            rest = &rest[1 + n..];
        }
        if let Some(b'e' | b'E') = rest.first() {
            let exp = &rest[1..];
            let exp = exp.strip_prefix(b"+").or_else(|| exp.strip_prefix(b"-")).unwrap_or(exp);
            if exp.is_empty() || !exp.iter().all(u8::is_ascii_digit) {
                return Err(AmountError::NotANumber);
            }
            return Err(AmountError::Exponent);
        }
        if !rest.is_empty() {
            return Err(AmountError::NotANumber);
        }
        let significant_frac = frac_part.len() - frac_part.iter().rev().take_while(|&&b| b == b'0').count();
        if significant_frac > 2 {
            return Err(AmountError::TooManyDecimals);
        }
        let all_zero = int_part.iter().chain(frac_part).all(|&b| b == b'0');
        if negative || all_zero {
            return Err(AmountError::NotPositive);
        }
        // More than 12 integer digits is above the maximum whatever the fraction.
        if int_part.len() > 12 {
            return Err(AmountError::TooLarge);
        }
        let mut cents: u64 = 0;
        for &d in int_part {
            cents = cents * 10 + u64::from(d - b'0');
        }
        for i in 0..2 {
            let d = frac_part.get(i).map_or(0, |&d| u64::from(d - b'0'));
            cents = cents * 10 + d;
        }
        Cents::new(cents).ok_or(AmountError::TooLarge)
    }

    /// Writes the amount as a JSON number with exactly two decimals (`19.90`).
    pub fn write_decimal(self, out: &mut Vec<u8>) {
        write_cents(u128::from(self.0), out);
    }
}

/// Writes any non-negative cent total (sums may exceed [`MAX_CENTS`]) with two decimals.
pub fn write_cents(cents: u128, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{}.{:02}", cents / 100, cents % 100);
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<u64, AmountError> {
        Cents::parse_json_number(s.as_bytes()).map(Cents::get)
    }

    #[test]
    fn parses_exact_cents() {
        assert_eq!(p("19.90"), Ok(1990));
        assert_eq!(p("19.9"), Ok(1990));
        assert_eq!(p("19.900"), Ok(1990));
        assert_eq!(p("0.01"), Ok(1));
        assert_eq!(p("0.3"), Ok(30));
        assert_eq!(p("1"), Ok(100));
        assert_eq!(p("999999999999.99"), Ok(MAX_CENTS));
    }

    #[test]
    fn rejects_semantic_errors() {
        assert_eq!(p("0"), Err(AmountError::NotPositive));
        assert_eq!(p("0.00"), Err(AmountError::NotPositive));
        assert_eq!(p("-0"), Err(AmountError::NotPositive));
        assert_eq!(p("-1"), Err(AmountError::NotPositive));
        assert_eq!(p("1.001"), Err(AmountError::TooManyDecimals));
        assert_eq!(p("1e3"), Err(AmountError::Exponent));
        assert_eq!(p("1.5E+2"), Err(AmountError::Exponent));
        assert_eq!(p("10000000000000"), Err(AmountError::TooLarge));
        assert_eq!(p("1000000000000.00"), Err(AmountError::TooLarge));
    }

    #[test]
    fn rejects_non_numbers() {
        for s in ["", "-", "01", "1.", ".5", "1e", "abc", "\"1\"", "1.2.3", "+1", "1 "] {
            assert_eq!(p(s), Err(AmountError::NotANumber), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(c in 1u64..=MAX_CENTS) {
            let cents = Cents::new(c).unwrap();
            let mut out = Vec::new();
            cents.write_decimal(&mut out);
            prop_assert_eq!(Cents::parse_json_number(&out), Ok(cents));
            prop_assert_eq!(String::from_utf8(out).unwrap(), cents.to_string());
        }

        #[test]
        fn parse_matches_integer_model(int in 0u64..1_000_000_000_000, frac in 0u64..100, pad in 0usize..4) {
            let text = format!("{int}.{frac:02}{}", "0".repeat(pad));
            let want = int * 100 + frac;
            let got = p(&text);
            if want == 0 { prop_assert_eq!(got, Err(AmountError::NotPositive)); }
            else { prop_assert_eq!(got, Ok(want)); }
        }
    }
}
