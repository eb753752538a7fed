//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1
//! and 2) that a load balancer in front of a listener sends before the
//! SMTP conversation, naming the client it relays.
//!
//! Owns: [`parse`] (bytes in, a [`ProxyHeader`] or "need more" or an
//! error out) and the limits of a header: a v1 line is at most
//! [`V1_LINE_BYTES_MAX`] (107, the spec's), a v2 header's address and
//! TLV part at most [`V2_PAYLOAD_BYTES_MAX`].
//! May call: std only.
//! Never: I/O, clocks, deciding who may send a header (the listener's
//! `proxy_protocol_hosts`, in `inbound`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header line, CRLF included (proxy-protocol.txt 2.1).
pub const V1_LINE_BYTES_MAX: usize = 107;
/// The v2 signature, the first 12 bytes of a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version and command, family,
/// length.
pub const V2_FIXED_BYTES: usize = 16;
/// Most bytes a v2 header may carry after its fixed part (addresses and
/// TLVs). The spec allows 65,535; HAProxy sends at most a few hundred
/// (unique id, SSL details), so more is refused rather than buffered.
pub const V2_PAYLOAD_BYTES_MAX: usize = 1024;
/// Most bytes any header takes: the read buffer a driver needs.
pub const HEADER_BYTES_MAX: usize = V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX;
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client and the address it connected to, as the proxy saw
    /// them; `None` for v1 `UNKNOWN`, v2 `LOCAL` (a health check by the
    /// proxy itself) and v2 families other than TCP over IPv4/IPv6: the
    /// connection's own addresses stand then.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// Bytes the header took; what follows is the client's.
    pub header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than {V1_LINE_BYTES_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line")]
    V1Malformed,
    #[error("PROXY v2 version or command not known")]
    V2Version,
    #[error("PROXY v2 header longer than {V2_PAYLOAD_BYTES_MAX} bytes after its fixed part")]
    V2TooLong,
    #[error("PROXY v2 addresses shorter than their family needs")]
    V2Short,
}

/// Parses the header at the start of `bytes`: `Ok(None)` when more bytes
/// are needed (never once `bytes` holds HEADER_BYTES_MAX), an error when
/// `bytes` cannot be the start of a valid header.
pub fn parse(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let v2_prefix = bytes.len().min(V2_SIGNATURE.len());
    let v1_prefix = bytes.len().min(V1_PREFIX.len());
    if bytes.is_empty() {
        Ok(None)
    } else if bytes[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        parse_v2(bytes)
    } else if bytes[..v1_prefix] == V1_PREFIX[..v1_prefix] {
        parse_v1(bytes)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// `PROXY TCP4|TCP6 src dst sport dport\r\n` or `PROXY UNKNOWN ...\r\n`.
fn parse_v1(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let window = &bytes[..bytes.len().min(V1_LINE_BYTES_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_LINE_BYTES_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let header_bytes = lf + 1;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::V1Malformed)?;
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed)?;
    let mut words = text.split(' ');
    if words.next() != Some("PROXY") {
        return Err(ProxyError::V1Malformed);
    }
    let family = words.next().ok_or(ProxyError::V1Malformed)?;
    if family == "UNKNOWN" {
        // The rest of the line may be anything and is ignored.
        return Ok(Some(ProxyHeader {
            addresses: None,
            header_bytes,
        }));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1Malformed),
    };
    let fields: Vec<&str> = words.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::V1Malformed);
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        let ip = if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::V1Malformed)
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        // Decimal without a sign or leading zero (the spec's form).
        let plain = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        match text.parse::<u16>() {
            Ok(port) if plain => Ok(port),
            _ => Err(ProxyError::V1Malformed),
        }
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Some(ProxyHeader {
        addresses: Some((source, destination)),
        header_bytes,
    }))
}

/// The binary header: signature, `0x2?` (version 2, command LOCAL or
/// PROXY), family and protocol, payload length, addresses, TLVs (skipped).
fn parse_v2(bytes: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    if bytes.len() < V2_FIXED_BYTES {
        return Ok(None);
    }
    let version_command = bytes[12];
    let family = bytes[13];
    let length = u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        _ => return Err(ProxyError::V2Version),
    };
    if length > V2_PAYLOAD_BYTES_MAX {
        return Err(ProxyError::V2TooLong);
    }
    let header_bytes = V2_FIXED_BYTES + length;
    if bytes.len() < header_bytes {
        return Ok(None);
    }
    let payload = &bytes[V2_FIXED_BYTES..header_bytes];
    if local {
        return Ok(Some(ProxyHeader {
            addresses: None,
            header_bytes,
        }));
    }
    let addresses = match family {
        // TCP over IPv4: 4 + 4 + 2 + 2.
        0x11 => {
            let a: &[u8; 12] = payload
                .get(..12)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2Short)?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            Some((
                SocketAddr::new(src.into(), u16::from_be_bytes([a[8], a[9]])),
                SocketAddr::new(dst.into(), u16::from_be_bytes([a[10], a[11]])),
            ))
        }
        // TCP over IPv6: 16 + 16 + 2 + 2.
        0x21 => {
            let a: &[u8; 36] = payload
                .get(..36)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2Short)?;
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).expect("16 bytes"));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&a[16..32]).expect("16 bytes"));
            Some((
                SocketAddr::new(src.into(), u16::from_be_bytes([a[32], a[33]])),
                SocketAddr::new(dst.into(), u16::from_be_bytes([a[34], a[35]])),
            ))
        }
        // UNSPEC, UDP, unix sockets: the connection's own addresses.
        _ => None,
    };
    Ok(Some(ProxyHeader {
        addresses,
        header_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecelerity_testkit::Rng;

    fn v1(line: &str) -> Result<Option<ProxyHeader>, ProxyError> {
        parse(line.as_bytes())
    }

    fn addrs(src: &str, dst: &str) -> Option<(SocketAddr, SocketAddr)> {
        Some((src.parse().unwrap(), dst.parse().unwrap()))
    }

    fn v2_tcp4(command: u8, tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(command);
        h.push(0x11);
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1]);
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&25u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n";
        assert_eq!(
            v1(line),
            Ok(Some(ProxyHeader {
                addresses: addrs("192.0.2.7:40000", "127.0.0.1:25"),
                header_bytes: line.find('\n').unwrap() + 1,
            }))
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::7 ::1 65535 0\r\n")
                .unwrap()
                .unwrap()
                .addresses,
            addrs("[2001:db8::7]:65535", "[::1]:0")
        );
        assert_eq!(
            v1("PROXY UNKNOWN ffff::1 whatever\r\n").unwrap().unwrap(),
            ProxyHeader {
                addresses: None,
                header_bytes: 32
            }
        );
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap().unwrap().header_bytes, 15);
    }

    #[test]
    fn v1_needs_its_whole_line_and_refuses_what_is_wrong() {
        assert_eq!(v1(""), Ok(None));
        assert_eq!(v1("PRO"), Ok(None));
        assert_eq!(v1("PROXY TCP4 192.0.2.7 127.0.0.1 4"), Ok(None));
        for bad in [
            "EHLO x\r\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25 9\r\n",
            "PROXY TCP4 ::1 127.0.0.1 40000 25\r\n",
            "PROXY TCP6 192.0.2.7 ::1 40000 25\r\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 65536 25\r\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 +1 25\r\n",
            "PROXY TCP4 192.0.2.7 127.0.0.1 025 25\r\n",
            "PROXY TCP4  192.0.2.7 127.0.0.1 1 25\r\n",
            "PROXY UDP4 192.0.2.7 127.0.0.1 1 25\r\n",
            "proxy TCP4 192.0.2.7 127.0.0.1 1 25\r\n",
        ] {
            assert!(v1(bad).is_err(), "{bad:?}");
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(200));
        assert_eq!(v1(&long), Err(ProxyError::V1TooLong));
        // 107 bytes exactly is the longest accepted.
        let just = format!("PROXY UNKNOWN {}\r\n", "x".repeat(107 - 16));
        assert_eq!(just.len(), V1_LINE_BYTES_MAX);
        assert_eq!(v1(&just).unwrap().unwrap().header_bytes, 107);
    }

    #[test]
    fn v2_proxy_local_tcp6_and_tlvs() {
        let header = v2_tcp4(0x21, &[]);
        let mut input = header.clone();
        input.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(
            parse(&input),
            Ok(Some(ProxyHeader {
                addresses: addrs("192.0.2.7:40000", "127.0.0.1:25"),
                header_bytes: 28,
            }))
        );
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(None), "cut at {cut}");
        }
        // TLVs are skipped; LOCAL keeps the connection's addresses.
        let with_tlv = v2_tcp4(0x21, &[0x05, 0x00, 0x02, b'i', b'd']);
        assert_eq!(parse(&with_tlv).unwrap().unwrap().header_bytes, 33);
        assert_eq!(parse(&v2_tcp4(0x20, &[])).unwrap().unwrap().addresses, None);
        let mut v6 = V2_SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let mut src = [0u8; 16];
        src[0] = 0x20;
        src[1] = 0x01;
        src[15] = 7;
        v6.extend_from_slice(&src);
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x9c, 0x40, 0, 25]);
        assert_eq!(
            parse(&v6).unwrap().unwrap().addresses,
            addrs("[2001::7]:40000", "[::1]:25")
        );
        // UNSPEC: no addresses.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(parse(&unspec).unwrap().unwrap().addresses, None);
    }

    #[test]
    fn v2_refuses_other_versions_short_addresses_and_long_payloads() {
        let mut bad_version = v2_tcp4(0x21, &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyError::V2Version));
        let mut bad_command = v2_tcp4(0x21, &[]);
        bad_command[12] = 0x22;
        assert_eq!(parse(&bad_command), Err(ProxyError::V2Version));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse(&short), Err(ProxyError::V2Short));
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0x04, 0x01]);
        assert_eq!(parse(&long), Err(ProxyError::V2TooLong));
        let mut not_sig = V2_SIGNATURE.to_vec();
        not_sig[5] = b'X';
        assert_eq!(parse(&not_sig), Err(ProxyError::NotProxy));
    }

    /// Random and mutated headers in every prefix: never a panic, a
    /// complete header never claims more bytes than it was given or than
    /// HEADER_BYTES_MAX, and "need more" never outlasts HEADER_BYTES_MAX.
    #[test]
    fn fuzzed_headers_never_panic_and_stay_within_bounds() {
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_tcp4(0x21, &[1, 0, 3, b'h', b'2', b'x']),
            v2_tcp4(0x20, &[]),
        ];
        let mut rng = Rng::new(0x9e37_79b9);
        let (mut complete, mut errors) = (0u32, 0u32);
        for run in 0..20_000u32 {
            let mut input = seeds[rng.index(seeds.len())].clone();
            for _ in 0..rng.index(4) {
                let at = rng.index(input.len());
                input[at] = rng.index(256) as u8;
            }
            if rng.index(4) == 0 {
                input.extend((0..rng.index(1200)).map(|_| rng.index(256) as u8));
            }
            for end in 0..=input.len() {
                match parse(&input[..end]) {
                    Ok(Some(header)) => {
                        assert!(header.header_bytes <= end, "run {run}");
                        assert!(header.header_bytes <= HEADER_BYTES_MAX, "run {run}");
                        complete += 1;
                        break;
                    }
                    Ok(None) => assert!(end < HEADER_BYTES_MAX, "run {run}"),
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
        }
        assert!(complete > 5000 && errors > 1000, "{complete} {errors}");
    }
}
