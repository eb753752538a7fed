//! Reading the PROXY protocol header of a connection from one of a
//! listener's `proxy_protocol_hosts`, before its session starts: the
//! header's client address then stands for the peer's everywhere (relay
//! control, connection limits, logs, the Received header).
//!
//! Owns: the reads of the header, bounded by `proxy_protocol_timeout` for
//! the whole header and by `smtp::proxy::HEADER_BYTES_MAX` in bytes.
//! May call: `smtp::proxy` (the parse), `transport` (timed reads).
//! Never: deciding who must send a header (`inbound` asks the listener),
//! replying to the client (a connection without a valid header is
//! dropped without a word).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use crate::smtp::proxy::{self, HEADER_BYTES_MAX};
use crate::transport::read_within;

/// What a proxy said.
#[derive(Debug)]
pub struct Proxied {
    /// The client the proxy relays; `None` when the header names none
    /// (a health check, `UNKNOWN`): the connection's own address stands.
    pub client: Option<SocketAddr>,
    /// Bytes read after the header (a client that spoke before the
    /// banner); at most HEADER_BYTES_MAX.
    pub early: Vec<u8>,
}

/// Reads one PROXY v1 or v2 header within `limit`. An error for a
/// timeout, a close, or bytes that are no valid header.
pub async fn read_header(stream: &mut TcpStream, limit: Duration) -> std::io::Result<Proxied> {
    let deadline = Instant::now() + limit;
    let mut buffer = vec![0u8; HEADER_BYTES_MAX];
    let mut filled = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "PROXY header timed out",
            ));
        }
        let n = read_within(stream, &mut buffer[filled..], left).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a complete PROXY header",
            ));
        }
        filled += n;
        match proxy::parse(&buffer[..filled]) {
            Ok(Some(header)) => {
                buffer.truncate(filled);
                buffer.drain(..header.header_bytes);
                return Ok(Proxied {
                    client: header.addresses.map(|(source, _)| source),
                    early: buffer,
                });
            }
            Ok(None) => {
                // parse() decides before the buffer is full.
                assert!(filled < HEADER_BYTES_MAX);
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            }
        }
    }
}
