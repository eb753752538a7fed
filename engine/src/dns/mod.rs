//! The resolver of one shard: MX, A and AAAA lookups for delivery, with a
//! per-shard cache.
//!
//! Owns: [`Resolver`] (the cache and the query loop), the answer types
//! ([`Answer`], [`Mx`], [`DnsError`]), [`system_nameservers`].
//! May call: hickory-proto (messages), glommio's UDP and TCP sockets,
//! [`cache`] and [`wire`]. Never: queues, routing decisions (that is
//! `delivery::route`, which takes these answers as data), a blocking call.
//!
//! Why hickory-proto over glommio sockets, not hickory-resolver inside
//! async-compat (../shared/CRATES.md names both): a lookup here is a UDP
//! datagram on the shard's own io_uring, with no tokio runtime, no helper
//! thread and no cross-thread wake per miss; the cache is ours, so its
//! limit and its clock are explicit and testable; and the dependency set
//! stays at one crate without its default features. What we give up is
//! hickory's DNSSEC validation: DANE will trust the AD bit of a validating
//! resolver on loopback, as Postfix does. The wire codec is hickory's
//! ([`wire`] only builds a query and reads a reply); the loop is: each
//! nameserver in turn, [`QUERY_ROUNDS`] rounds, [`QUERY_TIMEOUT`] per
//! try, and a TCP retry of a truncated UDP reply.

pub mod cache;
pub mod wire;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};

use crate::clock::now_unix_ms;
use cache::{Cache, CACHE_ENTRIES_MAX};
use wire::Parsed;

/// How long one try (one datagram, or one TCP exchange) waits for its
/// reply.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times the whole list of nameservers is tried.
pub const QUERY_ROUNDS: usize = 2;
/// Largest reply read over UDP (the EDNS payload we advertise).
pub const UDP_REPLY_BYTES_MAX: usize = 1232;
/// Largest reply read over TCP (the DNS message limit).
pub const TCP_REPLY_BYTES_MAX: usize = 65_535;
/// Most nameservers used, as in resolv.conf(5)'s MAXNS... doubled.
pub const NAMESERVERS_MAX: usize = 6;
/// Where the system's nameservers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The record types delivery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Mx,
    A,
    Aaaa,
}

/// One MX record. `exchange` is lower case without the final dot; the
/// root (a null MX, RFC 7505) is ".".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

/// What a nameserver said about a name, as delivery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// MX records (never empty), in the order received.
    Mx(Vec<Mx>),
    /// A or AAAA addresses (never empty), in the order received.
    Addresses(Vec<IpAddr>),
    /// The name exists but has no record of the type asked for.
    NoData,
    /// The name does not exist.
    NxDomain,
}

impl Answer {
    pub fn is_negative(&self) -> bool {
        matches!(self, Answer::NoData | Answer::NxDomain)
    }
}

/// Why a lookup has no answer. Every one is transient: the name may
/// resolve on the next try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("no nameserver answered within {}s", QUERY_TIMEOUT.as_secs())]
    Timeout,
    /// SERVFAIL, REFUSED and the like, with the nameserver.
    #[error("nameserver {server} answered {rcode}")]
    Server { server: SocketAddr, rcode: String },
    #[error("nameserver {server} unreachable: {why}")]
    Network { server: SocketAddr, why: String },
    #[error("bad reply from {server}: {why}")]
    BadReply { server: SocketAddr, why: String },
    #[error("not a valid domain name")]
    BadName,
    #[error("no nameserver configured (nameservers, {RESOLV_CONF})")]
    NoNameservers,
}

/// The nameservers in `text` (resolv.conf syntax: `nameserver ADDRESS`
/// lines), port 53, at most `NAMESERVERS_MAX`.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|address| {
            // A scoped IPv6 address (fe80::1%eth0) cannot be used as is.
            address.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(NAMESERVERS_MAX)
        .collect()
}

/// The system's nameservers from /etc/resolv.conf; 127.0.0.1:53 when it
/// lists none, as the C library does. Reads a file: call it before the
/// shard serves traffic.
pub fn system_nameservers() -> Vec<SocketAddr> {
    let listed = std::fs::read_to_string(RESOLV_CONF)
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default();
    if listed.is_empty() {
        return vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)];
    }
    listed
}

/// The resolver of one shard.
pub struct Resolver {
    cache: RefCell<Cache>,
    /// Used when the configuration names no `nameservers`.
    system: Vec<SocketAddr>,
}

impl Resolver {
    pub fn new(system: Vec<SocketAddr>) -> Resolver {
        Resolver {
            cache: RefCell::new(Cache::new(CACHE_ENTRIES_MAX)),
            system,
        }
    }

    /// Entries in the cache.
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    pub fn flush(&self) {
        self.cache.borrow_mut().clear();
    }

    /// The answer for `name` and `kind`, from the cache or from
    /// `configured` nameservers (the system's when empty).
    pub async fn lookup(
        &self,
        configured: &[SocketAddr],
        name: &str,
        kind: RecordKind,
    ) -> Result<Answer, DnsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(answer) = self.cache.borrow_mut().get(&name, kind, now_unix_ms()) {
            return Ok(answer);
        }
        let servers = if configured.is_empty() {
            &self.system[..]
        } else {
            configured
        };
        let (answer, ttl) = query(servers, &name, kind).await?;
        self.cache
            .borrow_mut()
            .put(&name, kind, answer.clone(), ttl, now_unix_ms());
        Ok(answer)
    }

    /// The addresses of `host`: its A records, then its AAAA records. A
    /// literal IP needs no lookup. `NxDomain` or `NoData` when it has
    /// none; an error only if neither lookup gave an answer.
    pub async fn addresses(
        &self,
        configured: &[SocketAddr],
        host: &str,
    ) -> Result<Answer, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Answer::Addresses(vec![ip]));
        }
        let v4 = self.lookup(configured, host, RecordKind::A).await;
        if matches!(v4, Ok(Answer::NxDomain)) {
            return v4;
        }
        let v6 = self.lookup(configured, host, RecordKind::Aaaa).await;
        let mut found = Vec::new();
        for answer in [&v4, &v6] {
            if let Ok(Answer::Addresses(ips)) = answer {
                found.extend_from_slice(ips);
            }
        }
        match (v4, v6) {
            _ if !found.is_empty() => Ok(Answer::Addresses(found)),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(_), Ok(v6)) => Ok(v6),
        }
    }
}

/// Asks `servers` in turn, `QUERY_ROUNDS` times, until one gives an
/// answer (a positive or a negative one). Returns the answer and its TTL.
async fn query(
    servers: &[SocketAddr],
    name: &str,
    kind: RecordKind,
) -> Result<(Answer, u32), DnsError> {
    if servers.is_empty() {
        return Err(DnsError::NoNameservers);
    }
    let mut last = DnsError::Timeout;
    for _ in 0..QUERY_ROUNDS {
        for &server in servers.iter().take(NAMESERVERS_MAX) {
            let (id, request) = wire::build_query(name, kind)?;
            let reply = match exchange_udp(server, &request).await {
                Ok(reply) => reply,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let parsed = match wire::parse_reply(&reply, id, name, kind, server) {
                Ok(Parsed::Truncated) => exchange_tcp(server, &request)
                    .await
                    .and_then(|reply| wire::parse_reply(&reply, id, name, kind, server)),
                other => other,
            };
            match parsed {
                Ok(Parsed::Answer(answer, ttl)) => return Ok((answer, ttl)),
                Ok(Parsed::Truncated) => {
                    last = DnsError::BadReply {
                        server,
                        why: "truncated over TCP".into(),
                    }
                }
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

fn network(server: SocketAddr) -> impl Fn(std::io::Error) -> DnsError {
    move |e| DnsError::Network {
        server,
        why: e.to_string(),
    }
}

/// One datagram to `server` and its reply (a connected socket, so an
/// ICMP "port unreachable" fails at once instead of timing out).
async fn exchange_udp(server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, DnsError> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local).map_err(|e| network(server)(e.into()))?;
    socket
        .connect(server)
        .await
        .map_err(|e| network(server)(e.into()))?;
    socket
        .send(request)
        .await
        .map_err(|e| network(server)(e.into()))?;
    let mut buf = vec![0u8; UDP_REPLY_BYTES_MAX];
    let received =
        glommio::timer::timeout(QUERY_TIMEOUT, async { Ok(socket.recv(&mut buf).await) }).await;
    match received {
        Ok(Ok(n)) => {
            buf.truncate(n);
            Ok(buf)
        }
        Ok(Err(e)) => Err(network(server)(e.into())),
        Err(_) => Err(DnsError::Timeout),
    }
}

/// The same question over TCP (a truncated UDP reply), two-byte length
/// prefixes both ways (RFC 1035 4.2.2).
async fn exchange_tcp(server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, DnsError> {
    let exchanged = glommio::timer::timeout(QUERY_TIMEOUT, async {
        let io = async {
            let mut stream = TcpStream::connect(server).await?;
            let len = u16::try_from(request.len()).expect("a query fits a DNS message");
            let mut framed = Vec::with_capacity(2 + request.len());
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(request);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            assert!(len <= TCP_REPLY_BYTES_MAX);
            let mut reply = vec![0u8; len];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        Ok(io.await)
    })
    .await;
    match exchanged {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(network(server)(e)),
        Err(_) => Err(DnsError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_nameservers_on_port_53() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.1\n\
                    nameserver ::1\nnameserver fe80::1%eth0\nnameserver\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }
}
