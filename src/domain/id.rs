//! Correlation ids: canonical 8-4-4-4-12 hex UUIDs (either case), held as a u128.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CorrelationId(pub u128);

/// Byte offsets of the dashes in the canonical form.
const DASHES: [usize; 4] = [8, 13, 18, 23];

impl CorrelationId {
    /// Parses the canonical 36-character form; any other shape is `None`.
    pub fn parse(text: &[u8]) -> Option<CorrelationId> {
        if text.len() != 36 {
            return None;
        }
        let mut v: u128 = 0;
        for (i, &b) in text.iter().enumerate() {
            if DASHES.contains(&i) {
                if b != b'-' {
                    return None;
                }
                continue;
            }
            let nibble = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            v = (v << 4) | u128::from(nibble);
        }
        Some(CorrelationId(v))
    }

    /// A fresh random (version 4) id, for load generators and tests.
    pub fn random() -> CorrelationId {
        let v = fastrand::u128(..);
        let v = (v & !(0xF << 76)) | (0x4 << 76); // version 4
        let v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
        CorrelationId(v)
    }

    /// Writes the canonical lower-case form (36 bytes).
    pub fn write_to(self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut nib = 0;
        for i in 0..36 {
            if DASHES.contains(&i) {
                out.push(b'-');
            } else {
                out.push(HEX[((self.0 >> (124 - 4 * nib)) & 0xF) as usize]);
                nib += 1;
            }
        }
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(36);
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).expect("hex is ascii"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_either_case() {
        let a = CorrelationId::parse(b"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3").unwrap();
        let b = CorrelationId::parse(b"4A7901B8-7D26-4D9D-AA19-4DC1C7CF60B3").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3");
    }

    #[test]
    fn rejects_other_shapes() {
        for s in [
            "",
            "4a7901b87d264d9daa194dc1c7cf60b3",
            "{4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3}",
            "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60bg",
            "4a7901b8-7d264-d9d-aa19-4dc1c7cf60b3",
            "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b33",
        ] {
            assert_eq!(CorrelationId::parse(s.as_bytes()), None, "{s}");
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(v: u128) {
            let id = CorrelationId(v);
            prop_assert_eq!(CorrelationId::parse(id.to_string().as_bytes()), Some(id));
        }
    }
}
