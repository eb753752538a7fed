//! The resolver of one shard: MX, A and AAAA lookups for delivery, TLSA
//! (DANE) and TXT (MTA-STS) lookups, with a per-shard cache that keeps
//! each answer's AD bit.
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
//! try, and a TCP retry of a truncated UDP reply. Connections that miss
//! the cache on the same question at once share one query: the first
//! asks, the others wait for its answer.

pub mod cache;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
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
/// Most distinct questions in flight per shard that later askers may
/// wait on; past it an asker queries on its own.
pub const INFLIGHT_QUESTIONS_MAX: usize = 4096;
/// Where the system's nameservers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The record types delivery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Mx,
    A,
    Aaaa,
    /// TLSA records of `_25._tcp.<mx-host>` (DANE, RFC 7672).
    Tlsa,
    /// TXT records (`_mta-sts.<domain>`, RFC 8461).
    Txt,
}

/// One TLSA record (RFC 6698 section 2.1): certificate usage, selector,
/// matching type and the association data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
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
    /// TLSA records (never empty), in the order received.
    Tlsa(Vec<Tlsa>),
    /// TXT records (never empty): each record's strings joined, as
    /// RFC 8461 section 3.1 reads them, lossily as UTF-8.
    Txt(Vec<String>),
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

type Question = (String, RecordKind);
type Waiters = Vec<LocalSender<Result<(Answer, bool), DnsError>>>;

/// The resolver of one shard.
pub struct Resolver {
    cache: RefCell<Cache>,
    /// Questions being asked now, with whoever waits for their answer.
    /// At most `INFLIGHT_QUESTIONS_MAX` keys.
    inflight: RefCell<HashMap<Question, Waiters>>,
    /// Used when the configuration names no `nameservers`.
    system: Vec<SocketAddr>,
    /// What the console's `dns_cache stats` shows (single-writer cells on
    /// the shard's own thread: no atomics, no locks).
    counts: ResolverCounts,
}

/// Lookups of one shard's resolver since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResolverStats {
    /// Answers found in the cache.
    pub hits: u64,
    /// Answers not in the cache (each asked, or waited for a shared ask).
    pub misses: u64,
    /// Questions sent to nameservers (a shared ask counts once).
    pub queries: u64,
    /// Questions that got no answer (timeout, SERVFAIL, a bad reply).
    pub failures: u64,
    /// Of `queries`, the A questions.
    pub a_queries: u64,
    /// Of `queries`, the MX questions.
    pub mx_queries: u64,
    /// Questions sent and not answered yet.
    pub pending: u64,
}

#[derive(Default)]
struct ResolverCounts {
    hits: Cell<u64>,
    misses: Cell<u64>,
    queries: Cell<u64>,
    failures: Cell<u64>,
    a_queries: Cell<u64>,
    mx_queries: Cell<u64>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get().wrapping_add(1));
}

impl Resolver {
    pub fn new(system: Vec<SocketAddr>) -> Resolver {
        Resolver {
            cache: RefCell::new(Cache::new(CACHE_ENTRIES_MAX)),
            inflight: RefCell::new(HashMap::new()),
            system,
            counts: ResolverCounts::default(),
        }
    }

    /// Lookups since start, and the cache's entries (all, negative).
    pub fn stats(&self) -> (ResolverStats, usize, usize) {
        let c = &self.counts;
        let stats = ResolverStats {
            hits: c.hits.get(),
            misses: c.misses.get(),
            queries: c.queries.get(),
            failures: c.failures.get(),
            a_queries: c.a_queries.get(),
            mx_queries: c.mx_queries.get(),
            pending: self.inflight.borrow().len() as u64,
        };
        let cache = self.cache.borrow();
        (stats, cache.len(), cache.negative_len())
    }

    /// The cached answer for `name` and `kind` and the seconds it has
    /// left, without a query and without counting a hit (console
    /// `dns_cache lookup`).
    pub fn cached_answer(&self, name: &str, kind: RecordKind) -> Option<(Answer, u32)> {
        let name = name.trim_end_matches('.');
        self.cache.borrow().peek(name, kind, now_unix_ms())
    }

    /// Entries in the cache.
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Forgets every cached answer; returns how many there were.
    pub fn flush(&self) -> usize {
        let mut cache = self.cache.borrow_mut();
        let entries = cache.len();
        cache.clear();
        entries
    }

    /// The answer for `name` and `kind`, from the cache or from
    /// `configured` nameservers (the system's when empty).
    pub async fn lookup(
        &self,
        configured: &[SocketAddr],
        name: &str,
        kind: RecordKind,
    ) -> Result<Answer, DnsError> {
        self.lookup_authenticated(configured, name, kind)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`Resolver::lookup`], with whether the nameserver set the AD bit
    /// (a validating resolver found the answer authentic; every query
    /// asks for it, RFC 6840 section 5.7). DANE trusts it only from a
    /// resolver the operator trusts, on loopback, as Postfix does.
    pub async fn lookup_authenticated(
        &self,
        configured: &[SocketAddr],
        name: &str,
        kind: RecordKind,
    ) -> Result<(Answer, bool), DnsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(answer) = self
            .cache
            .borrow_mut()
            .get_authenticated(&name, kind, now_unix_ms())
        {
            bump(&self.counts.hits);
            return Ok(answer);
        }
        bump(&self.counts.misses);
        let question = (name, kind);
        let waiting = {
            let mut inflight = self.inflight.borrow_mut();
            match inflight.get_mut(&question) {
                Some(waiters) => {
                    let (tx, rx) = local_channel::new_bounded(1);
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    if inflight.len() < INFLIGHT_QUESTIONS_MAX {
                        inflight.insert(question.clone(), Vec::new());
                    }
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            if let Some(result) = rx.recv().await {
                return result;
            }
            // The asker went away (its connection was dropped): ask anew.
            return Box::pin(self.lookup_authenticated(configured, &question.0, kind)).await;
        }
        let servers = if configured.is_empty() {
            &self.system[..]
        } else {
            configured
        };
        let asking = Asking {
            resolver: self,
            question: &question,
        };
        bump(&self.counts.queries);
        match kind {
            RecordKind::A => bump(&self.counts.a_queries),
            RecordKind::Mx => bump(&self.counts.mx_queries),
            _ => {}
        }
        let result = query(servers, &question.0, kind).await;
        if result.is_err() {
            bump(&self.counts.failures);
        }
        if let Ok((answer, ttl, authenticated)) = &result {
            let now = now_unix_ms();
            self.cache.borrow_mut().put_authenticated(
                &question.0,
                kind,
                answer.clone(),
                *authenticated,
                *ttl,
                now,
            );
        }
        let result = result.map(|(answer, _, authenticated)| (answer, authenticated));
        let waiters = asking.done();
        for waiter in waiters {
            let _ = waiter.try_send(result.clone());
        }
        result
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
        if let Some(ips) = loopback_name(host) {
            return Ok(Answer::Addresses(ips));
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

/// `localhost` and names under `.localhost` are the loopback addresses,
/// never asked of a nameserver (RFC 6761 section 6.3), so a `gateway =
/// "localhost:2525"` works as an operator expects.
fn loopback_name(host: &str) -> Option<Vec<IpAddr>> {
    let name = host.trim_end_matches('.');
    let lower = name.to_ascii_lowercase();
    (lower == "localhost" || lower.ends_with(".localhost")).then(|| {
        vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]
    })
}

/// The first asker of a question. Dropped before `done` (its task was
/// cancelled), it forgets the question, so its waiters wake with nothing
/// and ask anew.
struct Asking<'a> {
    resolver: &'a Resolver,
    question: &'a Question,
}

impl Asking<'_> {
    /// The question is answered: its waiters, to be told.
    fn done(self) -> Waiters {
        let waiters = self.resolver.inflight.borrow_mut().remove(self.question);
        std::mem::forget(self);
        waiters.unwrap_or_default()
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.resolver.inflight.borrow_mut().remove(self.question);
    }
}

/// Asks `servers` in turn, `QUERY_ROUNDS` times, until one gives an
/// answer (a positive or a negative one). Returns the answer, its TTL and
/// the AD bit.
async fn query(
    servers: &[SocketAddr],
    name: &str,
    kind: RecordKind,
) -> Result<(Answer, u32, bool), DnsError> {
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
                Ok(Parsed::Answer(answer, ttl, ad)) => return Ok((answer, ttl, ad)),
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

    #[test]
    fn localhost_names_are_loopback_without_a_query() {
        for name in ["localhost", "LocalHost.", "mx.localhost"] {
            let ips = loopback_name(name).expect(name);
            assert!(ips.iter().all(|ip| ip.is_loopback()), "{name}");
        }
        assert_eq!(loopback_name("localhost.example.com"), None);
        assert_eq!(loopback_name("notlocalhost"), None);
    }

    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::rdata::MX;
    use hickory_proto::rr::{Name, RData, Record};

    /// Goal: a real query over glommio UDP gets its answer, concurrent
    /// askers of one question share one query, and the answer is cached.
    /// Method: a UDP server on the same executor counts queries and
    /// answers each with one MX record after 20 ms; five lookups of the
    /// same name run at once, then a sixth after they finish.
    #[test]
    fn concurrent_misses_share_one_query_and_the_answer_is_cached() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async {
                let server = Rc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                let address = server.local_addr().unwrap();
                let queries = Rc::new(Cell::new(0u32));
                let serving = glommio::spawn_local({
                    let (server, queries) = (server.clone(), queries.clone());
                    async move {
                        let mut buf = vec![0u8; 512];
                        loop {
                            let (n, peer) = server.recv_from(&mut buf).await.unwrap();
                            queries.set(queries.get() + 1);
                            let query = Message::from_vec(&buf[..n]).unwrap();
                            let mut reply = Message::response(query.metadata.id, OpCode::Query);
                            reply.add_queries(query.queries.clone());
                            reply.add_answer(Record::from_rdata(
                                Name::from_ascii("d.test.").unwrap(),
                                300,
                                RData::MX(MX::new(10, Name::from_ascii("mx.d.test.").unwrap())),
                            ));
                            glommio::timer::sleep(Duration::from_millis(20)).await;
                            server
                                .send_to(&reply.to_vec().unwrap(), peer)
                                .await
                                .unwrap();
                        }
                    }
                })
                .detach();
                let resolver = Rc::new(Resolver::new(vec![]));
                let expected = Answer::Mx(vec![Mx {
                    preference: 10,
                    exchange: "mx.d.test".into(),
                }]);
                let mut askers = Vec::new();
                for _ in 0..5 {
                    let resolver = resolver.clone();
                    askers.push(glommio::spawn_local(async move {
                        resolver.lookup(&[address], "D.test", RecordKind::Mx).await
                    }));
                }
                for asker in askers {
                    assert_eq!(asker.await, Ok(expected.clone()));
                }
                assert_eq!(queries.get(), 1, "one query for five askers");
                assert!(resolver.inflight.borrow().is_empty());
                let again = resolver.lookup(&[address], "d.test", RecordKind::Mx).await;
                assert_eq!(again, Ok(expected));
                assert_eq!(queries.get(), 1, "the second ask is a cache hit");
                assert_eq!(resolver.cached(), 1);
                // No nameserver at all is an error, not a hang.
                let none = Resolver::new(vec![]);
                assert_eq!(
                    none.lookup(&[], "x.test", RecordKind::A).await,
                    Err(DnsError::NoNameservers)
                );
                drop(serving);
            })
            .expect("executor starts")
            .join()
            .expect("test body ran");
    }

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
