//! Inbound SMTP on a shard: the accept loop and the I/O driver of one
//! session. The driver moves bytes between the socket and the pure
//! [`ServerSession`], spools each message it hands over, and answers it
//! only after the group commit that covers it. It makes no protocol
//! decision of its own.
//!
//! Owns: admission of connections (`server_max_inbound_connections` over
//! every shard, `max_inbound_connections_per_ip` through the process-wide
//! peer table), the clocks of a session (`idle_time` per read,
//! `inbound_command_timeout` per command line, `inbound_data_timeout` per
//! DATA), the read buffers, and the binding a message is assigned to by
//! the listener's `binding_header` ([`binding_header`]).
//! May call: the session, the shard's policy (whose verdicts it feeds
//! back to the session), `message` (admission and spooling), `mesh`
//! (routing entries to queue owners), `queue` (the binding table, the
//! spooled envelope), `env` (logs, counters, stop signal).
//! Never: protocol decisions (replies other than the connection-refusal
//! 421s are the session's); a lock on a per-message path (the peer table
//! takes one compare-and-swap at accept and one at close).
//!
//! Memory: an idle session holds `COMMAND_READ_BYTES` of read buffer; the
//! `READ_BUFFER_BYTES` buffer exists only while a DATA is being read. A
//! body larger than `stream::STREAM_CHUNK_BYTES` is streamed to the spool
//! as it arrives (`stream`), so a session holds at most
//! `stream::SESSION_BODY_BYTES_MAX` of body, whatever the message size.

pub mod backpressure;
pub mod binding_header;
pub mod proxy;
pub mod signing;
pub mod smtpapi;
pub mod stream;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::{Duration, Instant};

use ecelerity_policy::{
    Answer, ListenerRelayHosts, Phase, Policy, Rejection as PolicyRejection, RelayControl, Verdict,
    VerdictFuture,
};
use ecelerity_spool::SpoolError;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use glommio::sync::Gate;

use crate::auth::{failures, verify_off_shard};
use crate::clock::now_unix_ms;
use crate::config::{Config, ListenerConfig, TlsMode};
use crate::env::{ShardEnv, Stopping};
use crate::events::{self, EventType};
use crate::log::{self, format_rejection, Rejection};
use crate::mesh::Router;
use crate::message::{Messages, RefusedBecause};
use crate::queue::record::{EnvelopeExtension, SpooledEnvelope};
use crate::queue::{Bindings, MessageId};
use crate::smtp::capabilities::{AuthMechanisms, Capabilities};
use crate::smtp::sasl::Credentials;
use crate::smtp::server::{
    AuthOutcome, Envelope, Event, ServerLimits, ServerParams, ServerSession, SpoolOutcome,
};
use crate::stats::Counter;
use crate::tls::{self, server::ServerTls, Stream, TlsInfo};
use crate::transport::{read_within, write_all_within, Transport};
use backpressure::{pressure, BacklogLimits, Episodes, Pressure};
use binding_header::UnknownBindings;
use stream::Streaming;

/// Bytes read from a client socket at a time while a DATA is being read.
/// Allocated at the 354 and freed when the message is answered.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Bytes read at a time outside DATA: commands are short, and this is all
/// the read buffer an idle connection holds.
pub const COMMAND_READ_BYTES: usize = 1024;
/// Pause after an accept error (EMFILE and friends) before trying again.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// The R-line protocol of a message received over SMTP.
const PROTOCOL_ESMTP: &str = "esmtp";
/// The session's phase name while it reads a DATA (`phase_name()`).
const PHASE_DATA: &str = "data";

/// Buckets of [`PEERS`]: a power of two.
const PEER_BUCKETS: usize = 1 << 16;

/// Open inbound connections per client address, over every shard of the
/// process, without a lock: a fixed table of counters indexed by a hash of
/// the address, taken and given back with compare-and-swap (one per
/// connection, never per message). Two addresses that share a bucket share
/// its count, so the limit can only bite early, never late; with 65,536
/// buckets that needs many busy peers at once. Only addresses subject to
/// `max_inbound_connections_per_ip` are counted.
const _: () = assert!(PEER_BUCKETS.is_power_of_two());
static PEERS: [AtomicU32; PEER_BUCKETS] = [const { AtomicU32::new(0) }; PEER_BUCKETS];

/// One connection's place in [`PEERS`]; gives it back on drop.
struct PeerSlot {
    bucket: usize,
}

impl PeerSlot {
    /// Takes a place for `ip`, or `None` when its bucket already has `limit`.
    fn take(ip: IpAddr, limit: u32) -> Option<PeerSlot> {
        assert!(limit > 0, "0 means unlimited: such peers take no slot");
        let bucket = peer_bucket(ip);
        PEERS[bucket]
            .fetch_update(AcqRel, Acquire, |count| {
                (count < limit).then_some(count + 1)
            })
            .ok()
            .map(|_| PeerSlot { bucket })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let before = PEERS[self.bucket].fetch_sub(1, AcqRel);
        assert!(before > 0, "a peer slot is given back once");
    }
}

/// FNV-1a of the address bytes, folded to a bucket.
fn peer_bucket(ip: IpAddr) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let octets = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    for b in octets {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) & (PEER_BUCKETS - 1)
}

/// Why a connection is refused before its session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `server_max_inbound_connections` reached.
    ServerFull,
    /// `backlog_refuse_entries` reached: delivery is behind.
    Backlog,
    /// `max_inbound_connections_per_ip` reached for the peer.
    PeerFull,
}

impl Refusal {
    fn reply(self) -> &'static [u8] {
        match self {
            Refusal::ServerFull => b"421 4.3.2 Too many connections, try again later\r\n",
            Refusal::Backlog => backpressure::REFUSE_CONNECTION_REPLY,
            Refusal::PeerFull => {
                b"421 4.7.0 Too many connections from your address, try again later\r\n"
            }
        }
    }
}

/// The inbound side of one shard: what its sessions need, nothing more.
pub struct Inbound {
    pub env: Rc<ShardEnv>,
    pub messages: Rc<Messages>,
    pub router: Rc<Router>,
    pub bindings: Rc<Bindings>,
    /// The policy every session of this shard asks at each phase
    /// ([`shard_policy`]).
    /// Replaced by a reload (listeners' `relay_hosts` may change); a
    /// session holds the one it asked until it answers.
    pub policy: std::cell::RefCell<Rc<dyn Policy>>,
    /// Open sessions; shutdown waits for them.
    pub sessions: Gate,
    /// The last back-pressure level reported in the paniclog.
    pub episodes: Episodes,
    /// Messages whose `binding_header` named no binding.
    pub unknown_bindings: UnknownBindings,
    /// The `opendkim` stanza's signers (keys), when one is configured:
    /// loaded once at start, shared read-only by the shards.
    pub dkim: Option<std::sync::Arc<crate::dkim::Signers>>,
    /// The shard's Lua scripts (`scriptlet` stanza), asked after the relay
    /// control; a reload swaps their state.
    pub scriptlets: Rc<crate::scriptlet::Scriptlets>,
}

impl Inbound {
    /// What reception does now, from the entries waiting in every shard's
    /// active queues (gauges published each tick: no lock, no message).
    fn pressure(&self) -> Pressure {
        let (slowdown_entries, refuse_entries, in_flow_delay_ms) = self.env.config.get().backlog();
        let backlog = self.env.stats.total(Counter::ActiveQueue);
        let p = pressure(
            backlog,
            BacklogLimits {
                slowdown_entries,
                refuse_entries,
                in_flow_delay_ms,
            },
        );
        self.episodes.observe(self.env.id, backlog, p);
        p
    }
}

/// The policy of a shard: the built-in relay control, holding the
/// `relay_hosts` of every enabled ESMTP listener; a session is judged by
/// the listener it came in on (`ServerParams::listener`).
pub fn shard_policy(
    config: &Config,
    scriptlets: &Rc<crate::scriptlet::Scriptlets>,
) -> Rc<dyn Policy> {
    let listeners = config
        .esmtp_listeners()
        .iter()
        .filter(|l| l.enabled)
        .map(|l| ListenerRelayHosts {
            listener: l.address,
            relay_hosts: l.relay_hosts.clone(),
        })
        .collect();
    let relay = RelayControl {
        listeners,
        local_domains: Vec::new(),
    };
    Rc::new(crate::scriptlet::ScriptletPolicy {
        relay,
        scriptlets: scriptlets.clone(),
    })
}

/// The STARTTLS side of a listener on this shard: `None` when it has no
/// `tls_certificate`/`tls_key` or says `tls = no`. The files are read now
/// (before privileges are dropped), so a listener whose certificate does
/// not load keeps the daemon from starting; the error names the listener.
pub fn listener_tls(listener: &ListenerConfig) -> Result<Option<Rc<ServerTls>>, String> {
    let name = listener.address;
    match (&listener.tls_certificate, &listener.tls_key, listener.tls) {
        (Some(_), None, _) | (None, Some(_), _) => Err(format!(
            "ESMTP Listen {name}: tls_certificate and tls_key go together"
        )),
        (None, None, TlsMode::Required) => Err(format!(
            "ESMTP Listen {name}: tls = required needs tls_certificate and tls_key"
        )),
        (None, None, _) | (_, _, TlsMode::No) => Ok(None),
        (Some(certificate), Some(key), _) => ServerTls::new(certificate, key)
            .map(|tls| Some(Rc::new(tls)))
            .map_err(|e| format!("ESMTP Listen {name}: TLS certificate or key: {e}")),
    }
}

/// A listener's options as a reload leaves them: the accept loop reads
/// them for every new connection.
pub type LiveListener = Rc<std::cell::RefCell<Rc<ListenerConfig>>>;

pub async fn accept_loop(
    shard: Rc<Inbound>,
    listener: TcpListener,
    live: LiveListener,
    tls: Option<Rc<ServerTls>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    shard = shard.env.id,
                    "accept on {} failed: {e}",
                    live.borrow().address
                );
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        // Read per connection: a reload changes both (a session keeps the
        // listener options it started with).
        let config = live.borrow().clone();
        let server_max = u64::from(shard.env.config.get().server_max_inbound_connections());
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let open: u64 = shard.env.stats.total(Counter::InboundConnections);
        let per_ip = config.max_inbound_connections_per_ip;
        // A proxy's connections are counted by the client its PROXY
        // header names (`serve`), not by the proxy's address.
        let exempt = per_ip == 0
            || config.relay_hosts.iter().any(|c| c.contains(peer.ip()))
            || proxied(&config, peer.ip());
        let slot = if exempt {
            None
        } else {
            PeerSlot::take(peer.ip(), per_ip)
        };
        let refusal = if open >= server_max {
            Some(Refusal::ServerFull)
        } else if shard.pressure() == Pressure::Refuse {
            Some(Refusal::Backlog)
        } else if !exempt && slot.is_none() {
            Some(Refusal::PeerFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(slot);
            refuse(&shard, stream, peer, refusal).await;
            continue;
        }
        shard.env.stats().add(Counter::InboundConnections, 1);
        shard.env.stats().add(Counter::InboundConnectionsTotal, 1);
        let (shard2, config2, tls2) = (shard.clone(), config.clone(), tls.clone());
        let spawned = shard.sessions.spawn(async move {
            let _slot = slot;
            if let Err(e) = serve(&shard2, stream, &config2, tls2.as_deref()).await {
                tracing::debug!(shard = shard2.env.id, "session ended: {e}");
            }
            shard2.env.stats().sub(Counter::InboundConnections, 1);
        });
        match spawned {
            Ok(task) => task.detach(),
            Err(_) => {
                // The gate is closed: the shard is stopping.
                shard.env.stats().sub(Counter::InboundConnections, 1);
                return;
            }
        };
    }
}

/// Answers a connection we will not serve with a 421, logs it to the
/// rejectlog and closes it. The reply fits an empty socket buffer, so
/// the write does not wait on the client.
async fn refuse(shard: &Inbound, mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
    let reply = refusal.reply();
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let connection_id = MessageId(shard.messages.next_connection_id()).to_string();
    let text = String::from_utf8_lossy(reply.strip_suffix(b"\r\n").unwrap_or(reply));
    log_rejection(
        shard,
        &Rejection {
            remote: &peer.to_string(),
            local: &local,
            connection_id: &connection_id,
            phase: "connect",
            code: 421,
            ehlo: "",
            mail_from: "",
            text: &text,
        },
    );
    tracing::debug!(shard = shard.env.id, "refused {peer}: {refusal:?}");
    let _ = stream.write_all(reply).await;
    let _ = stream.close().await;
}

/// What a session's connection looks like, for the logs.
struct Conn {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
}

/// The session's two deadlines: a command line must be complete within
/// `inbound_command_timeout` of our last reply, a DATA within
/// `inbound_data_timeout` of its 354. Reads wait at most `idle_time` on
/// top, whichever ends first. While a message awaits the spool nothing
/// is read, so no clock runs against the client.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    command: Duration,
    data: Duration,
    /// When the current phase (command line or DATA) started.
    since: Instant,
    in_data: bool,
}

impl Deadlines {
    fn new(listener: &ListenerConfig, now: Instant) -> Deadlines {
        Deadlines {
            command: listener.inbound_command_timeout,
            data: listener.inbound_data_timeout,
            since: now,
            in_data: false,
        }
    }

    /// Called before each read: a change between command and DATA phase
    /// restarts the clock, and so does a reply in the command phase (the
    /// next command line starts counting from it).
    fn observe(&mut self, in_data: bool, replied: bool, now: Instant) {
        if in_data != self.in_data || (replied && !in_data) {
            self.since = now;
        }
        self.in_data = in_data;
    }

    fn deadline(&self) -> Instant {
        self.since
            + if self.in_data {
                self.data
            } else {
                self.command
            }
    }
}

/// How long a write of replies may take: a client that does not read its
/// replies cannot park the session in a write.
fn write_limit(listener: &ListenerConfig) -> Duration {
    listener.inbound_command_timeout.max(Duration::from_secs(1))
}

/// Serves one accepted TCP connection: the socket-specific set-up, then
/// the session over it as a [`Transport`].
async fn serve(
    shard: &Rc<Inbound>,
    mut stream: TcpStream,
    listener: &ListenerConfig,
    tls: Option<&ServerTls>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        id: shard.messages.next_connection_id(),
        peer: stream.peer_addr()?,
        local: stream.local_addr()?,
    };
    let mut early = Vec::new();
    let mut _slot = None;
    if proxied(listener, conn.peer.ip()) {
        let limit = listener.proxy_protocol_timeout;
        let header = match proxy::read_header(&mut stream, limit).await {
            Ok(header) => header,
            Err(e) => {
                // No banner, no reply: whatever sent this is no proxy we
                // know how to trust.
                tracing::info!(
                    shard = shard.env.id,
                    "{}: no valid PROXY header ({e}); connection dropped",
                    conn.peer
                );
                let _ = stream.close().await;
                return Ok(());
            }
        };
        if let Some(client) = header.client {
            tracing::debug!(shard = shard.env.id, "{}: PROXY for {client}", conn.peer);
            conn.peer = client;
        }
        early = header.early;
        let per_ip = listener.max_inbound_connections_per_ip;
        let exempt = per_ip == 0
            || listener
                .relay_hosts
                .iter()
                .any(|c| c.contains(conn.peer.ip()));
        if !exempt {
            _slot = PeerSlot::take(conn.peer.ip(), per_ip);
            if _slot.is_none() {
                refuse(shard, stream, conn.peer, Refusal::PeerFull).await;
                return Ok(());
            }
        }
    }
    drive(shard, &conn, Stream::Plain(stream), listener, tls, &early).await
}

/// Connections from `ip` to `listener` open with a PROXY header.
fn proxied(listener: &ListenerConfig, ip: IpAddr) -> bool {
    listener.proxy_protocol_hosts.iter().any(|c| c.contains(ip))
}

/// The I/O driver of one server session over its connection, in clear
/// text or TLS after STARTTLS (one `tls::Stream`, the same code): reads,
/// writes and timeouts here, every decision in the session. A body still
/// streaming when the session ends, however it ends, is discarded.
async fn drive(
    shard: &Rc<Inbound>,
    conn: &Conn,
    stream: Stream,
    listener: &ListenerConfig,
    tls: Option<&ServerTls>,
    early: &[u8],
) -> std::io::Result<()> {
    let mut streaming = None;
    let result = drive_session(shard, conn, stream, listener, tls, early, &mut streaming).await;
    if let Some(body) = streaming.take() {
        body.discard().await;
    }
    result
}

async fn drive_session(
    shard: &Rc<Inbound>,
    conn: &Conn,
    mut stream: Stream,
    listener: &ListenerConfig,
    tls: Option<&ServerTls>,
    early: &[u8],
    streaming: &mut Option<Streaming>,
) -> std::io::Result<()> {
    let limits = ServerLimits {
        text_line_bytes_max: listener.max_line_length_bytes as usize,
        message_bytes_max: listener.max_message_size_bytes,
        recipients_max: listener.max_recipients_per_message,
        receptions_per_connection_max: listener.max_receptions_per_connection,
        ..ServerLimits::default()
    };
    let params = ServerParams {
        hostname: shard.env.config.get().hostname().to_string(),
        peer_ip: conn.peer.ip(),
        listener: listener.address,
        limits,
        // PIPELINING, SIZE (max_message_size, through the limits),
        // 8BITMIME, ENHANCEDSTATUSCODES; STARTTLS with a certificate.
        capabilities: Capabilities {
            starttls: tls.is_some(),
            auth: AuthMechanisms {
                plain: listener.enable_authentication,
                login: listener.enable_authentication,
            },
            smtputf8: listener.enable_smtputf8,
            dsn: listener.enable_dsn,
            chunking: listener.enable_chunking,
            ..Capabilities::default()
        },
        version: crate::VERSION,
        tls_required: tls.is_some() && listener.tls == TlsMode::Required,
        auth_plaintext: listener.allow_plaintext_auth,
    };
    let mut session = ServerSession::new(params);
    session.start();
    if !early.is_empty() {
        // Sent behind a PROXY header in its packet: a client that talks
        // before the banner, held like any pipelined input.
        assert!(early.len() <= session.input_capacity());
        session.input(early);
    }
    let idle_time = listener.idle_time.max(Duration::from_secs(1));
    let write_limit = write_limit(listener);
    let mut deadlines = Deadlines::new(listener, Instant::now());
    let mut output = Vec::new();
    let mut command_input = [0u8; COMMAND_READ_BYTES];
    let mut data_input: Vec<u8> = Vec::new();
    let mut stop_seen = false;
    loop {
        // Policy phases first: one the policy decides at once costs no
        // write, so the replies to a pipelined group leave together.
        let mut event = session.next_event();
        let mut replied = false;
        while let Some(Event::Validate(_)) = event {
            replied |= validate(
                shard,
                conn,
                listener,
                &mut stream,
                &mut session,
                &mut output,
            )
            .await?;
            event = session.next_event();
        }
        session.take_output(&mut output);
        if !output.is_empty() {
            replied = true;
            log_rejections(shard, conn, &session, &output);
            write_all_within(&mut stream, &output, write_limit).await?;
            output.clear();
        }
        if session.is_closed() {
            break;
        }
        if let Some(event) = event {
            match event {
                Event::Validate(_) => unreachable!("answered above"),
                Event::Message(envelope) => {
                    let accepting = Instant::now();
                    let (outcome, body) = match streaming.take() {
                        Some(body) => {
                            let chosen = scriptlet_binding(shard, conn, &session);
                            let outcome =
                                receive_streamed(shard, conn, body, envelope, chosen).await;
                            (outcome, None)
                        }
                        None => {
                            let (outcome, body) =
                                receive(shard, conn, listener, &session, envelope).await;
                            (outcome, Some(body))
                        }
                    };
                    if matches!(outcome, SpoolOutcome::Queued { .. }) {
                        let took = accepting.elapsed();
                        shard.env.latency.borrow_mut().record_accept(took);
                    }
                    session.spooled(outcome);
                    if let Some(body) = body {
                        session.recycle_body(body);
                    }
                    continue;
                }
                Event::StartTls => {
                    let tls = tls.expect("STARTTLS is offered only with a certificate");
                    match start_tls(&mut stream, tls).await {
                        Ok(info) => {
                            tracing::debug!(
                                shard = shard.env.id,
                                "{}: STARTTLS, {} {}",
                                conn.peer,
                                info.protocol,
                                info.cipher
                            );
                            session.tls_started(info);
                        }
                        Err(e) => {
                            tracing::info!(
                                shard = shard.env.id,
                                "{}: TLS handshake after STARTTLS failed: {e}",
                                conn.peer
                            );
                            break;
                        }
                    }
                    continue;
                }
                Event::Authenticate(credentials) => {
                    let outcome = authenticate(shard, conn, listener, credentials).await;
                    session.authenticated(outcome);
                    continue;
                }
                Event::Close => {
                    session.take_output(&mut output);
                    write_all_within(&mut stream, &output, write_limit).await?;
                    break;
                }
            }
        }
        if streaming.is_some() && !session.receiving_body() {
            // The transaction ended without a message (refused, reset,
            // closed): its streamed body is not one.
            if let Some(body) = streaming.take() {
                body.discard().await;
            }
        }
        if !stop_seen && shard.env.is_stopping() {
            stop_seen = true;
            session.shutdown();
            continue;
        }
        if !session.wants_input() {
            // Nothing to read until the session drains; it only asks for
            // less input while a message waits for the spool, which the
            // event above handles, so this is a stuck session.
            tracing::warn!(
                shard = shard.env.id,
                "session from {} stopped asking for input; closing",
                conn.peer
            );
            break;
        }
        let now = Instant::now();
        let in_data = session.phase_name() == PHASE_DATA;
        deadlines.observe(in_data, replied, now);
        let left = deadlines.deadline().saturating_duration_since(now);
        if left.is_zero() {
            tracing::info!(
                shard = shard.env.id,
                "{} missed the {} deadline: 421 4.4.2",
                conn.peer,
                session.phase_name()
            );
            session.idle_timeout();
            continue;
        }
        let read_limit = idle_time.min(left);
        if in_data && data_input.is_empty() {
            data_input = vec![0u8; READ_BUFFER_BYTES];
        } else if !in_data && !data_input.is_empty() {
            data_input = Vec::new();
        }
        let buffer: &mut [u8] = if in_data {
            &mut data_input
        } else {
            &mut command_input
        };
        let capacity = session.input_capacity().min(buffer.len());
        let read = futures_lite::future::or(
            async { Some(read_within(&mut stream, &mut buffer[..capacity], read_limit).await) },
            async {
                if stop_seen {
                    std::future::pending::<()>().await;
                }
                shard.env.stopping.wait().await;
                None
            },
        )
        .await;
        match read {
            None => continue, // stopping: handled at the top of the loop
            Some(Ok(0)) => break,
            Some(Ok(n)) => {
                shard.env.stats().add(Counter::BytesReceived, n as u64);
                session.input(&buffer[..n]);
                if stream::chunk_due(&session) {
                    let chunk = session.take_body(stream::STREAM_CHUNK_BYTES);
                    match streaming.as_mut() {
                        Some(body) => body.write(chunk).await,
                        None => {
                            *streaming =
                                Some(start_streaming(shard, listener, &session, chunk).await)
                        }
                    }
                }
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                let what = if Instant::now() >= deadlines.deadline() {
                    "deadline"
                } else {
                    "idle_time"
                };
                tracing::info!(
                    shard = shard.env.id,
                    "{} timed out ({what}, {}): 421 4.4.2",
                    conn.peer,
                    session.phase_name()
                );
                session.idle_timeout();
            }
            Some(Err(e)) => return Err(e),
        }
    }
    let _ = stream.close().await;
    Ok(())
}

/// The server side of the handshake after STARTTLS's `220`, within
/// `tls::HANDSHAKE_TIMEOUT_MS`, with the listener's current certificate.
/// On success the connection is TLS from now on.
async fn start_tls(stream: &mut Stream, tls: &ServerTls) -> std::io::Result<TlsInfo> {
    let Some(tcp) = stream.take_plain() else {
        return Err(std::io::Error::other("STARTTLS on a TLS connection"));
    };
    let acceptor = futures_rustls::TlsAcceptor::from(tls.config(Instant::now()));
    let limit = Duration::from_millis(tls::HANDSHAKE_TIMEOUT_MS);
    let accepted = glommio::timer::timeout(limit, async { Ok(acceptor.accept(tcp).await) }).await;
    match accepted {
        Ok(Ok(tls_stream)) => {
            let info = tls::info_of(tls_stream.get_ref().1);
            *stream = Stream::Server(Box::new(tls_stream));
            Ok(info)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Checks AUTH credentials for the session: refused unchecked when the
/// peer failed `max_auth_failures_per_ip` times within
/// `auth_failure_window`; otherwise the argon2 check runs on the blocking
/// pool, the result goes to the acctlog, and a failure is counted and
/// answered `auth_failure_delay_ms` later. The session makes the reply.
async fn authenticate(
    shard: &Inbound,
    conn: &Conn,
    listener: &ListenerConfig,
    credentials: Credentials,
) -> AuthOutcome {
    let window_secs = listener.auth_failure_window.as_secs();
    let ip = conn.peer.ip();
    let log = |ok: bool| {
        let outcome = if ok {
            log::AuthOutcome::Success
        } else {
            log::AuthOutcome::Failure
        };
        shard.env.logs.acctlog(|buf| {
            log::format_acct_auth(
                buf,
                now_unix_ms() / 1000,
                &listener.address.to_string(),
                &conn.peer.to_string(),
                &credentials.user,
                outcome,
            )
        })
    };
    if failures::failures(ip, now_unix_ms() / 1000, window_secs)
        >= listener.max_auth_failures_per_ip
    {
        log(false);
        return AuthOutcome::TooManyFailures;
    }
    let config = shard.env.config.get();
    let file = listener
        .auth_password_file
        .as_deref()
        .and_then(|path| config.password_file(path));
    let Some(file) = file else {
        tracing::warn!(
            shard = shard.env.id,
            "AUTH on {} but no password file was read for it",
            listener.address
        );
        return AuthOutcome::Unavailable;
    };
    let hash = file.hash_of(&credentials.user).map(str::to_string);
    drop(config);
    let ok = verify_off_shard(hash, credentials.password.clone()).await;
    log(ok);
    if ok {
        return AuthOutcome::Accepted;
    }
    failures::record_failure(ip, now_unix_ms() / 1000, window_secs);
    glommio::timer::sleep(Duration::from_millis(listener.auth_failure_delay_ms)).await;
    AuthOutcome::Refused
}

/// Asks the shard's policy about the phase the session awaits and feeds the
/// verdict back. A policy that answers at once costs nothing more; one
/// that must wait first gets the replies owed so far written (true is
/// returned then), and has `inbound_command_timeout` to decide, after
/// which the session answers `451 4.3.0`. A stopping shard cancels the
/// wait and the session closes with `421 4.3.2`.
async fn validate<S: Transport>(
    shard: &Inbound,
    conn: &Conn,
    listener: &ListenerConfig,
    stream: &mut S,
    session: &mut ServerSession,
    output: &mut Vec<u8>,
) -> std::io::Result<bool> {
    session.take_output(output);
    let phase = session
        .awaiting_policy()
        .expect("an Event::Validate was taken");
    if phase == Phase::MailFrom && shard.pressure() == Pressure::Refuse {
        // Delivery is behind: no new transaction until it catches up. The
        // policy is not asked; the session answers this like its verdict.
        let refusal = PolicyRejection::new(
            backpressure::REFUSE_MAIL_CODE,
            backpressure::REFUSE_MAIL_ENHANCED,
            backpressure::REFUSE_MAIL_TEXT,
        );
        session
            .validated(Verdict::Reject(refusal))
            .expect("the back-pressure reply is well-formed");
        return Ok(false);
    }
    if phase == Phase::Data {
        if let Some(text) = smtpapi::refusal(&session.validation().0.check) {
            // Momentum's smtpapi refuses a bad X-MSYS-API before the policy.
            let refusal = PolicyRejection::new(550, "5.6.0", text);
            session
                .validated(Verdict::Reject(refusal))
                .expect("the X-MSYS-API reply is well-formed");
            return Ok(false);
        }
    }
    let timeout = listener.inbound_command_timeout.max(Duration::from_secs(1));
    let (validation, vctx) = session.validation();
    let mut wrote = false;
    let policy = shard.policy.borrow().clone();
    let waited = match policy.validate(validation, vctx) {
        Answer::Now(verdict) => Waited::Verdict(verdict),
        Answer::Later(mut verdict) => match futures_lite::future::poll_once(&mut verdict).await {
            // Decided without waiting (a script that did not sleep or look
            // anything up): pipelined replies still leave together.
            Some(verdict) => Waited::Verdict(verdict),
            None => {
                if !output.is_empty() {
                    write_all_within(stream, output, write_limit(listener)).await?;
                    wrote = true;
                }
                await_verdict(verdict, timeout, &shard.env.stopping).await
            }
        },
    };
    if wrote {
        log_rejections(shard, conn, session, output);
        output.clear();
    }
    match waited {
        Waited::Verdict(verdict) => {
            if let Err(e) = session.validated(verdict) {
                tracing::error!(
                    shard = shard.env.id,
                    "policy answered {} for {} with a bad reply: {e}; the client got \
                     451 4.3.0 (fix the policy's reply)",
                    phase.callout(),
                    conn.peer
                );
            }
        }
        Waited::TimedOut => {
            tracing::warn!(
                shard = shard.env.id,
                "policy did not answer {} for {} within {timeout:?}: 451 4.3.0 (is a \
                 lookup it needs slow?)",
                phase.callout(),
                conn.peer
            );
            session.validation_failed();
        }
        Waited::Stopping => session.shutdown(),
    }
    Ok(wrote)
}

/// How the wait for a policy's later verdict ended.
enum Waited {
    Verdict(Verdict),
    TimedOut,
    Stopping,
}

/// Awaits a later verdict for at most `timeout`, and no longer than the
/// shard runs (`stopping` is closed when it starts to stop).
async fn await_verdict(
    mut verdict: VerdictFuture<'_>,
    timeout: Duration,
    stopping: &Stopping,
) -> Waited {
    // Most later verdicts (a script that did not wait) are ready at their
    // first poll: those need no timer armed and disarmed.
    if let Some(ready) = futures_lite::future::poll_once(&mut verdict).await {
        return Waited::Verdict(ready);
    }
    let verdict = async { Waited::Verdict(verdict.await) };
    let timer = async {
        glommio::timer::sleep(timeout).await;
        Waited::TimedOut
    };
    let stop = async {
        stopping.wait().await;
        Waited::Stopping
    };
    futures_lite::future::or(verdict, futures_lite::future::or(timer, stop)).await
}

/// Spools one message and routes its recipients; the reply waits for it.
async fn receive(
    shard: &Rc<Inbound>,
    conn: &Conn,
    listener: &ListenerConfig,
    session: &ServerSession,
    mut envelope: Envelope,
) -> (SpoolOutcome, Vec<u8>) {
    let id = match shard.messages.admit() {
        Ok(id) => id,
        Err(_) => {
            return (
                SpoolOutcome::TemporaryFailure,
                std::mem::take(&mut envelope.body),
            )
        }
    };
    let queue_id = id.to_string();
    let now_ms = now_unix_ms();
    let header = session.received_header(&envelope, &queue_id, (now_ms / 1000) as i64);
    let received = std::mem::take(&mut envelope.body);
    let received = crate::scriptlet::edited_message(session.vctx(), received);
    let binding_header = listener.binding_header.as_deref();
    let mut assigned = binding_header::assign(&shard.bindings, binding_header, &received);
    if let Some(chosen) = crate::scriptlet::chosen_binding(session.vctx(), &shard.bindings) {
        assigned.binding = chosen;
    }
    if let (Some(header), Some(name)) = (binding_header, &assigned.unknown) {
        let id = shard.env.id;
        shard.unknown_bindings.note(id, header, name, &queue_id);
    }
    let mut body = Vec::with_capacity(header.len() + received.len());
    body.extend_from_slice(header.as_bytes());
    // X-MSYS-API (checked at DATA) goes with the binding header's fields.
    let api = smtpapi::find(&received).unwrap_or_default();
    let fields = smtpapi::with_fields(&assigned.fields, &api.fields);
    binding_header::append_without(&mut body, &received, &fields);
    let binding = shard.bindings.name(assigned.binding);
    let message = &body[header.len()..];
    if let Some(dkim) =
        signing::sign_inline(shard, binding, &envelope.rcpts, message, now_ms / 1000)
    {
        // On top, above the Received header (one move of the message).
        body.splice(0..0, dkim);
    }
    let spooled = SpooledEnvelope {
        received_unix_ms: now_ms,
        peer_ip: conn.peer.ip(),
        connection_id: conn.id,
        body_8bitmime: envelope.body_8bitmime,
        binding: shard.bindings.name(assigned.binding).to_string(),
        mail_from: envelope.mail_from,
        rcpts: envelope.rcpts,
        extensions: esmtp_extensions(&envelope.params),
    };
    let mut spooled = spooled;
    if let Some(api) = &api.api {
        let fields = smtpapi::event_fields(api, id.0);
        spooled.set_extension(crate::api::TAG_EVENT_FIELDS, fields.into_bytes());
    }
    let spooled_ref = match shard.messages.spool(id, &spooled, &body).await {
        Ok(r) => r,
        Err(e) => return (refused(shard, conn, e), received),
    };
    let size_bytes = body.len() as u64;
    let peer_ip = Some(conn.peer.ip());
    shard
        .messages
        .log_receptions(id, &spooled, size_bytes, peer_ip, PROTOCOL_ESMTP);
    let entries = shard.messages.entries_for(
        id,
        spooled_ref.body,
        &spooled,
        (0..spooled.rcpts.len() as u32).map(|i| (i, 0, 0)),
    );
    shard.router.route(entries).await;
    if let Pressure::Slow(delay) = shard.pressure() {
        // The message is safe; its reply waits so the client slows down.
        glommio::timer::sleep(delay).await;
    }
    (SpoolOutcome::Queued { queue_id }, received)
}

/// The binding a script chose for a streamed message; its edits of the
/// text cannot apply (the body is on disk already) and are reported.
fn scriptlet_binding(
    shard: &Inbound,
    conn: &Conn,
    session: &ServerSession,
) -> Option<crate::queue::BindingId> {
    if crate::scriptlet::edits_text(session.vctx()) {
        tracing::warn!(
            shard = shard.env.id,
            "{}: a scriptlet edited a message streamed to the spool (over 256 KiB); \
             its header and body edits are not applied",
            conn.peer
        );
    }
    crate::scriptlet::chosen_binding(session.vctx(), &shard.bindings)
}

/// Starts streaming a body whose first `chunk` (the header block with it,
/// unless that is longer than a chunk) just filled: the listener's
/// `binding_header` picks the binding and its fields are left out of what
/// goes to the body file, as `receive` does for an inline message. A
/// header block longer than the first chunk is looked at in that chunk
/// only.
async fn start_streaming(
    shard: &Rc<Inbound>,
    listener: &ListenerConfig,
    session: &ServerSession,
    chunk: Vec<u8>,
) -> Streaming {
    let binding_header = listener.binding_header.as_deref();
    let assigned = binding_header::assign(&shard.bindings, binding_header, &chunk);
    // X-MSYS-API (checked at DATA) goes with the binding header's fields.
    let api = smtpapi::find(&chunk).unwrap_or_default();
    let fields = smtpapi::with_fields(&assigned.fields, &api.fields);
    let first = if fields.is_empty() {
        chunk
    } else {
        let mut first = Vec::with_capacity(chunk.len());
        binding_header::append_without(&mut first, &chunk, &fields);
        first
    };
    let binding = shard.bindings.name(assigned.binding);
    let now_secs = now_unix_ms() / 1000;
    let dkim = signing::start_streamed(shard, binding, session.rcpts(), &first, now_secs);
    let mut streaming =
        Streaming::start(&shard.messages, session, first, assigned.binding, dkim).await;
    if let Some(api) = &api.api {
        streaming.event_fields = Some(smtpapi::event_fields(api, streaming.id().0));
    }
    if let (Some(header), Some(name)) = (binding_header, &assigned.unknown) {
        let queue_id = streaming.id().to_string();
        shard
            .unknown_bindings
            .note(shard.env.id, header, name, &queue_id);
    }
    streaming
}

/// Commits one message whose body was streamed to the spool while it
/// arrived (`stream`) and routes its recipients; the reply waits for it.
async fn receive_streamed(
    shard: &Rc<Inbound>,
    conn: &Conn,
    body: Streaming,
    envelope: Envelope,
    chosen: Option<crate::queue::BindingId>,
) -> SpoolOutcome {
    let id = body.id();
    let binding = chosen.unwrap_or(body.binding());
    let mut body = body;
    let event_fields = body.event_fields.take();
    let sign = |dkim| signing::finish_streamed(shard, dkim);
    let file_body = match body.finish(envelope.body, sign).await {
        Ok(file_body) => file_body,
        Err(outcome) => return outcome,
    };
    let now_ms = now_unix_ms();
    let spooled = SpooledEnvelope {
        received_unix_ms: now_ms,
        peer_ip: conn.peer.ip(),
        connection_id: conn.id,
        body_8bitmime: envelope.body_8bitmime,
        binding: shard.bindings.name(binding).to_string(),
        mail_from: envelope.mail_from,
        rcpts: envelope.rcpts,
        extensions: esmtp_extensions(&envelope.params),
    };
    let mut spooled = spooled;
    if let Some(fields) = event_fields {
        spooled.set_extension(crate::api::TAG_EVENT_FIELDS, fields.into_bytes());
    }
    let spooled_ref = match shard.messages.spool_file(id, &spooled, &file_body).await {
        Ok(r) => r,
        Err(e) => return refused(shard, conn, e),
    };
    shard.messages.log_receptions(
        id,
        &spooled,
        file_body.len,
        Some(conn.peer.ip()),
        PROTOCOL_ESMTP,
    );
    let entries = shard.messages.entries_for(
        id,
        spooled_ref.body,
        &spooled,
        (0..spooled.rcpts.len() as u32).map(|i| (i, 0, 0)),
    );
    shard.router.route(entries).await;
    if let Pressure::Slow(delay) = shard.pressure() {
        glommio::timer::sleep(delay).await;
    }
    SpoolOutcome::Queued {
        queue_id: id.to_string(),
    }
}

/// The reply for a message the spool did not take, with its paniclog line.
fn refused(shard: &Inbound, conn: &Conn, why: RefusedBecause) -> SpoolOutcome {
    match why {
        RefusedBecause::Spool(SpoolError::StorageFull) => {
            tracing::error!(
                shard = shard.env.id,
                "spool full: message from {} refused with 452 4.3.1",
                conn.peer
            );
            SpoolOutcome::StorageFull
        }
        e => {
            tracing::error!(
                shard = shard.env.id,
                "spool write failed: {e:?}: message from {} refused with 451 4.3.0",
                conn.peer
            );
            SpoolOutcome::TemporaryFailure
        }
    }
}

/// Writes a rejectlog line for each final 4xx/5xx reply line the session
/// is about to send (the replies are the session's decisions; this only
/// records them).
fn log_rejections(shard: &Inbound, conn: &Conn, session: &ServerSession, output: &[u8]) {
    for line in output.split(|&b| b == b'\n') {
        if line.len() < 4 || !(line[0] == b'4' || line[0] == b'5') || line[3] != b' ' {
            continue;
        }
        let Ok(code) = std::str::from_utf8(&line[..3])
            .unwrap_or("0")
            .parse::<u16>()
        else {
            continue;
        };
        let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        log_rejection(
            shard,
            &Rejection {
                remote: &conn.peer.to_string(),
                local: &conn.local.to_string(),
                connection_id: &MessageId(conn.id).to_string(),
                phase: session.phase_name(),
                code,
                ehlo: session.helo(),
                mail_from: session.mail_from(),
                text: &text,
            },
        );
    }
}

/// Counts a rejection and writes its rejectlog line.
fn log_rejection(shard: &Inbound, rejection: &Rejection<'_>) {
    shard.env.stats().add(Counter::Rejections, 1);
    let unix_secs = now_unix_ms() / 1000;
    shard
        .env
        .logs
        .rejectlog(|buf| format_rejection(buf, unix_secs, rejection));
    let events = &shard.env.events;
    {
        let ip = rejection
            .remote
            .rsplit_once(':')
            .map_or(rejection.remote, |(ip, _)| ip);
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let event_id = events.next_id();
        {
            let e = events::Event {
                kind: EventType::PolicyRejection,
                event_id,
                unix_secs,
                message_id: "",
                rcpt_to: "",
                msg_from: rejection.mail_from,
                binding: "",
                binding_group: "",
                msg_size: None,
                ip_address: Some(ip),
                num_retries: None,
                queue_time_ms: None,
                raw_reason: Some(rejection.text),
                bounce_class: None,
                method: "esmtp",
                generation: None,
            };
            events.record(&e);
        }
    }
}

/// The envelope extension fields of a message's SMTPUTF8 and DSN
/// parameters (`smtp::params`).
fn esmtp_extensions(params: &crate::smtp::params::MessageParams) -> Vec<EnvelopeExtension> {
    params
        .to_extensions()
        .into_iter()
        .map(|(tag, value)| EnvelopeExtension { tag, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(command_s: u64, data_s: u64) -> ListenerConfig {
        let text = format!(
            "inbound_command_timeout = {command_s}\ninbound_data_timeout = {data_s}\n\
             ESMTP_Listener {{ Listen \"127.0.0.1:2525\" {{ }} }}\n"
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("test.conf"))
            .expect("test config parses");
        config.esmtp_listeners()[0].clone()
    }

    #[test]
    fn a_dripping_command_keeps_the_deadline_of_the_last_reply() {
        let start = Instant::now();
        let mut d = Deadlines::new(&listener(10, 100), start);
        // Bytes arrive (no reply) for a while: the deadline does not move.
        for s in 1..9 {
            d.observe(false, false, start + Duration::from_secs(s));
            assert_eq!(d.deadline(), start + Duration::from_secs(10));
        }
        // A reply restarts the clock for the next command line.
        d.observe(false, true, start + Duration::from_secs(9));
        assert_eq!(d.deadline(), start + Duration::from_secs(19));
    }

    #[test]
    fn data_has_its_own_deadline_from_the_354() {
        let start = Instant::now();
        let mut d = Deadlines::new(&listener(10, 100), start);
        d.observe(true, true, start + Duration::from_secs(5));
        assert_eq!(d.deadline(), start + Duration::from_secs(105));
        // Body bytes do not move it.
        d.observe(true, false, start + Duration::from_secs(50));
        assert_eq!(d.deadline(), start + Duration::from_secs(105));
        // The message is answered: back to the command clock.
        d.observe(false, true, start + Duration::from_secs(60));
        assert_eq!(d.deadline(), start + Duration::from_secs(70));
    }

    /// Goal: a verdict that comes later is awaited, one that never comes
    /// times out, and a stopping shard ends the wait. Method: three waits
    /// on a glommio executor with futures that answer, never answer, and
    /// never answer while the stop semaphore is closed.
    #[test]
    fn a_later_verdict_is_awaited_timed_out_or_cut_by_a_stop() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(|| async {
                let stopping = Stopping::default();
                let minute = Duration::from_secs(60);
                let soon = Box::pin(async {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    Verdict::Continue
                });
                let waited = await_verdict(soon, minute, &stopping).await;
                assert!(matches!(waited, Waited::Verdict(Verdict::Continue)));
                let never = Box::pin(std::future::pending());
                let started = Instant::now();
                let waited = await_verdict(never, Duration::from_millis(30), &stopping).await;
                assert!(matches!(waited, Waited::TimedOut));
                assert!(started.elapsed() >= Duration::from_millis(30));
                stopping.start();
                let never = Box::pin(std::future::pending());
                let waited = await_verdict(never, minute, &stopping).await;
                assert!(matches!(waited, Waited::Stopping));
            })
            .expect("executor starts")
            .join()
            .expect("test body ran");
    }

    #[test]
    fn peer_slots_cap_one_address_and_come_back_on_drop() {
        // An address from the documentation range no other test uses.
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let other: IpAddr = "192.0.2.78".parse().unwrap();
        assert_ne!(
            peer_bucket(ip),
            peer_bucket(other),
            "the test needs two buckets"
        );
        let a = PeerSlot::take(ip, 2).expect("first");
        let b = PeerSlot::take(ip, 2).expect("second");
        assert!(PeerSlot::take(ip, 2).is_none(), "third is over the limit");
        let c = PeerSlot::take(other, 2).expect("another address is counted apart");
        drop(a);
        let d = PeerSlot::take(ip, 2).expect("a closed connection gives its slot back");
        drop((b, c, d));
        assert_eq!(
            PEERS[peer_bucket(ip)].load(Acquire),
            0,
            "every slot came back"
        );
        assert_eq!(PEERS[peer_bucket(other)].load(Acquire), 0);
    }
}
