//! Record framing: `[len u16 LE][!len u16 LE][crc32c u32 LE][payload]`, the CRC over the
//! payload. Reading a segment tells a torn tail (an interrupted last write, which is cut) from
//! damage in the middle (which stops recovery with the file and offset).
//!
//! Why the length is stored twice, inverted: with a plain `u32` length, a flipped bit that
//! makes the length point past the end of the file is indistinguishable from a torn write,
//! and recovery would silently drop every record after it. A torn write leaves a prefix of
//! what it wrote and zeros (the segment's preallocated space) after it, never other data, so
//! a header whose two copies disagree with data after it is always damage.

/// Bytes before each payload.
pub const HEADER_BYTES: usize = 8;
/// No payload is longer; a larger length is damage, never a torn write.
pub const MAX_PAYLOAD_BYTES: usize = 1024;

pub fn append(payload_writer: impl FnOnce(&mut Vec<u8>), out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    payload_writer(out);
    let payload = &out[start + HEADER_BYTES..];
    assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES, "payload of {} bytes", payload.len());
    let len = payload.len() as u16;
    let crc = crc32c::crc32c(payload).to_le_bytes();
    out[start..start + 2].copy_from_slice(&len.to_le_bytes());
    out[start + 2..start + 4].copy_from_slice(&(!len).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc);
}

/// How a scan of a segment's bytes ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Every byte belongs to a complete, valid record.
    Clean,
    /// The records end at `offset` and only zeros follow: the writer's preallocated space.
    Padded { offset: usize },
    /// The bytes from `offset` on are an incomplete last record: an interrupted write.
    TornTail { offset: usize, reason: &'static str },
    /// The record at `offset` is damaged and more data follows it.
    Corrupt { offset: usize, reason: &'static str },
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Calls `each(offset, payload)` for every complete record in order and says how the bytes
/// ended.
///
/// A record that fails its checks is a torn tail when nothing but zeros follows the part of
/// it that an interrupted write could have left: an interrupted write keeps a prefix of what
/// it wrote, and the segment is zero-filled ahead of the writer. So a bad header is torn only
/// when everything after the header is zero, and a bad payload only when everything after the
/// payload is; a damaged record with data after it is corruption.
pub fn scan<E>(bytes: &[u8], mut each: impl FnMut(usize, &[u8]) -> Result<(), E>) -> Result<Scan, E> {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if zeros(rest) {
            return Ok(Scan::Padded { offset });
        }
        let verdict = |reason, ends_at: usize| {
            if ends_at >= bytes.len() || zeros(&bytes[ends_at..]) {
                Scan::TornTail { offset, reason }
            } else {
                Scan::Corrupt { offset, reason }
            }
        };
        if rest.len() < HEADER_BYTES {
            return Ok(Scan::TornTail { offset, reason: "partial header" });
        }
        let len = u16::from_le_bytes([rest[0], rest[1]]);
        let check = u16::from_le_bytes([rest[2], rest[3]]);
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let len = usize::from(len);
        if check != !(len as u16) || len == 0 || len > MAX_PAYLOAD_BYTES {
            return Ok(verdict("impossible record length", offset + HEADER_BYTES));
        }
        let end = offset + HEADER_BYTES + len;
        if end > bytes.len() {
            return Ok(Scan::TornTail { offset, reason: "partial payload" });
        }
        let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
        if crc32c::crc32c(payload) != crc {
            return Ok(verdict("checksum mismatch", end));
        }
        each(offset, payload)?;
        offset = end;
    }
    Ok(Scan::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            append(|o| o.extend_from_slice(p), &mut out);
        }
        out
    }

    fn collect(bytes: &[u8]) -> (Vec<Vec<u8>>, Scan) {
        let mut got = Vec::new();
        let scan = scan::<()>(bytes, |_, p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        (got, scan)
    }

    #[test]
    fn every_truncation_inside_the_last_record_keeps_the_ones_before() {
        let bytes = framed(&[b"first", b"second", b"third!"]);
        let last_start = bytes.len() - (HEADER_BYTES + 6);
        for cut in last_start..bytes.len() {
            let (got, scan) = collect(&bytes[..cut]);
            assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()], "cut at {cut}");
            let want = if cut == last_start { Scan::Clean } else { Scan::TornTail { offset: last_start, reason: scan_reason(&scan) } };
            assert_eq!(scan, want, "cut at {cut}");
        }
    }

    fn scan_reason(s: &Scan) -> &'static str {
        match s {
            Scan::TornTail { reason, .. } | Scan::Corrupt { reason, .. } => reason,
            Scan::Clean | Scan::Padded { .. } => "",
        }
    }

    /// Flips each byte of the second of three records ("first", "second", "third", then
    /// `padding` zeros): every flip must read as corruption at the second record.
    fn every_flip_in_the_second_record_is_corruption(padding: usize) {
        let mut bytes = framed(&[b"first", b"second", b"third"]);
        bytes.resize(bytes.len() + padding, 0);
        let second = HEADER_BYTES + 5;
        for i in second..second + HEADER_BYTES + 6 {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            let (got, scan) = collect(&damaged);
            assert_eq!(got, vec![b"first".to_vec()], "flip at {i}, padding {padding}");
            assert!(matches!(scan, Scan::Corrupt { offset, .. } if offset == second), "flip at {i}, padding {padding}: {scan:?}");
        }
    }

    #[test]
    fn a_flipped_byte_in_an_early_record_is_corruption_at_its_offset() {
        every_flip_in_the_second_record_is_corruption(0);
        let mut bytes = framed(&[b"first", b"second", b"third"]);
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(collect(&bytes).1, Scan::TornTail { .. }));
    }

    #[test]
    fn zeros_after_the_last_record_are_padding() {
        let mut bytes = framed(&[b"first"]);
        bytes.extend_from_slice(&[0; 100]);
        let (got, scan) = collect(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(scan, Scan::Padded { offset: 13 });
    }

    #[test]
    fn an_interrupted_write_into_padding_is_a_torn_tail() {
        let bytes = framed(&[b"first", b"second", b"third!"]);
        let last_start = bytes.len() - (HEADER_BYTES + 6);
        for cut in last_start + 1..bytes.len() {
            let mut padded = bytes[..cut].to_vec();
            padded.resize(bytes.len() + 4096, 0);
            let (got, scan) = collect(&padded);
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(matches!(scan, Scan::TornTail { offset, .. } if offset == last_start), "cut at {cut}: {scan:?}");
        }
    }

    #[test]
    fn a_damaged_record_before_padding_with_data_after_it_is_corruption() {
        every_flip_in_the_second_record_is_corruption(4096);
    }
}
