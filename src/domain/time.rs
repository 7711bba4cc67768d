//! UTC instants in milliseconds since the Unix epoch, with RFC 3339 parsing and the contest's
//! formatting (`2025-07-15T12:34:56.000Z`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcMillis(pub i64);

/// How to bring a timestamp with sub-millisecond digits onto the millisecond grid. An inclusive
/// lower bound rounds up and an inclusive upper bound rounds down, so that neither admits an
/// instant outside the window the caller wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Floor,
    Ceil,
}

impl UtcMillis {
    pub fn now() -> UtcMillis {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
        UtcMillis(d.as_millis() as i64)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; a missing offset is read as UTC.
    /// `t`/`z` and a space for `T` are accepted as RFC 3339 allows.
    pub fn parse_rfc3339(text: &[u8], rounding: Rounding) -> Option<UtcMillis> {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let s = text.get(r)?;
            s.iter().all(u8::is_ascii_digit).then(|| s.iter().fold(0i64, |a, &d| a * 10 + i64::from(d - b'0')))
        };
        if text.len() < 19 || text[4] != b'-' || text[7] != b'-' || text[13] != b':' || text[16] != b':' {
            return None;
        }
        if !matches!(text[10], b'T' | b't' | b' ') {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        let mut below_milli = false;
        if text.get(i) == Some(&b'.') {
            let digits = text[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            for k in 0..3 {
                millis = millis * 10 + text.get(i + 1 + k).filter(|b| b.is_ascii_digit()).map_or(0, |&d| i64::from(d - b'0'));
            }
            below_milli = text[i + 1..i + 1 + digits].iter().skip(3).any(|&d| d != b'0');
            i += 1 + digits;
        }
        let offset_minutes = match text.get(i) {
            None => 0,
            Some(b'Z' | b'z') if text.len() == i + 1 => 0,
            Some(&sign @ (b'+' | b'-')) if text.len() == i + 6 && text[i + 3] == b':' => {
                let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if h > 23 || m > 59 {
                    return None;
                }
                let off = h * 60 + m;
                if sign == b'+' { off } else { -off }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        let mut ms = secs * 1_000 + millis;
        if below_milli && rounding == Rounding::Ceil {
            ms += 1;
        }
        Some(UtcMillis(ms))
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes).
    pub fn write_to(self, out: &mut Vec<u8>) {
        use std::io::Write;
        let ms = self.0.rem_euclid(1_000);
        let secs = self.0.div_euclid(1_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3_600, sod % 3_600 / 60, sod % 60);
    }
}

impl fmt::Display for UtcMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(24);
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).expect("ascii"))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Option<i64> {
        UtcMillis::parse_rfc3339(s.as_bytes(), Rounding::Floor).map(|t| t.0)
    }

    #[test]
    fn parses_contest_format() {
        assert_eq!(p("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(p("2025-07-15T12:34:56.000Z"), Some(1_752_582_896_000));
        assert_eq!(p("2025-07-15T12:34:56.789Z"), Some(1_752_582_896_789));
        assert_eq!(p("2025-07-15T12:34:56Z"), Some(1_752_582_896_000));
        assert_eq!(p("2025-07-15T12:34:56.7Z"), Some(1_752_582_896_700));
        assert_eq!(p("2025-07-15T14:34:56.000+02:00"), Some(1_752_582_896_000));
        assert_eq!(p("2025-07-15T12:34:56"), Some(1_752_582_896_000));
    }

    #[test]
    fn rounds_sub_millisecond_digits_by_bound() {
        let t = b"2025-07-15T12:34:56.0005Z";
        assert_eq!(UtcMillis::parse_rfc3339(t, Rounding::Floor), Some(UtcMillis(1_752_582_896_000)));
        assert_eq!(UtcMillis::parse_rfc3339(t, Rounding::Ceil), Some(UtcMillis(1_752_582_896_001)));
        let exact = b"2025-07-15T12:34:56.000000Z";
        assert_eq!(UtcMillis::parse_rfc3339(exact, Rounding::Ceil), Some(UtcMillis(1_752_582_896_000)));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-07-15",
            "2025-07-15T25:00:00Z",
            "2025-07-15T12:34:56.Z",
            "2025-07-15T12:34:56ZZ",
            "2025-07-15T12:34:56+0200",
        ] {
            assert_eq!(p(s), None, "{s}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let t = UtcMillis(ms);
            prop_assert_eq!(UtcMillis::parse_rfc3339(t.to_string().as_bytes(), Rounding::Floor), Some(t));
        }
    }
}
