//! base64url without padding (RFC 4648 section 5), strict on decode.
//! Owns: the alphabet. Never: allocation beyond the caller's buffer.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Appends the base64url text of `bytes` to `out`.
pub(crate) fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len().div_ceil(3) * 4);
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = (a as u32) << 16;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
            ]);
        }
        [a, b] => {
            let n = (a as u32) << 16 | (b as u32) << 8;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
            ]);
        }
        _ => {}
    }
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

pub(crate) fn is_alphabet(c: u8) -> bool {
    value(c).is_some()
}

/// Appends the bytes `text` encodes to `out`. Refuses padding, other
/// characters, impossible lengths and non-zero trailing bits (so each byte
/// string has exactly one encoding).
pub(crate) fn decode(text: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    if text.len() % 4 == 1 {
        return Err(());
    }
    out.reserve(text.len() / 4 * 3 + 2);
    let mut chunks = text.chunks_exact(4);
    for c in &mut chunks {
        let mut n = 0u32;
        for &b in c {
            n = n << 6 | value(b).ok_or(())?;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return Ok(());
    }
    let mut n = 0u32;
    for &b in rest {
        n = n << 6 | value(b).ok_or(())?;
    }
    match rest.len() {
        2 => {
            if n & 0xF != 0 {
                return Err(());
            }
            out.push((n >> 4) as u8);
        }
        3 => {
            if n & 0x3 != 0 {
                return Err(());
            }
            out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
        }
        _ => unreachable!("length checked above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        let mut out = Vec::new();
        encode(b, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn dec(s: &str) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        decode(s.as_bytes(), &mut out).map(|_| out)
    }

    #[test]
    fn rfc4648_vectors_without_padding() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(enc(raw.as_bytes()), want);
            assert_eq!(dec(want).unwrap(), raw.as_bytes());
        }
        assert_eq!(enc(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn strict_decoding() {
        assert!(dec("Zg==").is_err());
        assert!(dec("Z").is_err());
        assert!(dec("Zh").is_err(), "non-zero trailing bits");
        assert!(dec("Zm9+").is_err());
        assert!(dec("Zm 9").is_err());
    }

    #[test]
    fn round_trips_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            assert_eq!(dec(&enc(&data[..n])).unwrap(), &data[..n]);
        }
    }
}
