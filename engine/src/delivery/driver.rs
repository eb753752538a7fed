//! The I/O driver of one outbound SMTP connection: it moves bytes between
//! a [`Transport`] and the pure [`ClientSession`], feeds it queue entries
//! and hands each transaction's replies to [`settle`](super::settle).
//!
//! For a server without 8BITMIME it reads each body before the transaction
//! and hands an 8-bit one to the pure `smtp::downgrade`, which converts it
//! or says why it cannot be sent. A failure outside a transaction goes to
//! `settle::sweep` (the queue's entries take it, the destination is backed
//! off); the first Ready of a session ends a back-off (`pool::greeted`).
//!
//! Limits it applies: an address `limits` remembers as down is skipped, a
//! connect that fails or a 421 before the session is ready marks it down
//! for `host_failure_retry` (every domain then skips it); each transaction
//! takes a token of `outbound_throttle_messages` first (waiting for one);
//! [`TRANSIENT_STORM_TRANSACTIONS`] transactions in a row refused with 4xx
//! end the session and mark the address down too;
//! after `max_deliveries_per_connection` delivered messages the session
//! ends with QUIT and the queue opens a fresh connection for the rest.
//! An address at its `host` scope's `max_outbound_connections` is passed
//! over for the next; when no target could be tried for that reason, the
//! queue waits [`HOST_BUSY_WAIT_MS`] with nothing settled (no T line).
//!
//! Owns: the read buffer and the reused body buffers of a connection, the
//! per-stage timeouts. May call: `route`, `connect`, `pool`, `limits`, `settle`, the
//! queue of this connection (through [`Outbound`]), the spool's body
//! reader, `smtp::downgrade`. Never: protocol decisions (the client
//! session and `downgrade` make them).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel;

use super::disposition::{AttemptReply, ReplyClass};
use super::{connect, limits, pool, route, secure, settle, Outbound};
use crate::clock::{now_unix_ms, now_unix_us};
use crate::config::DeliveryOptions;
use crate::queue::{MessageRef, QueueId};
use ecelerity_spool::{BodyReader, BODY_READ_CHUNK_BYTES};

use crate::config::TlsMode;
use crate::smtp::body::{bdat_chunk, BodyEncoder};
use crate::smtp::client::StartTls;
use crate::smtp::client::{
    is_valid_ehlo_hostname, AbortReason, ClientAction, ClientSession, OutboundAuth, RcptOutcome,
    Stage, TransactionResult,
};
use crate::smtp::downgrade::{self, Unconvertible, DOWNGRADE_BODY_BYTES_MAX};
use crate::smtp::sasl::Mechanism;
use crate::tls::{self, Stream};
use crate::transport::{read_within, write_all_within};
use rustls::pki_types::ServerName;

/// Bytes read from a server socket at a time.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Body memory of one connection while it sends: a chunk read from the
/// spool and its encoding for the wire (at most twice its size, plus the
/// trailer), whatever the body's size; a body converted to 7-bit is held
/// whole on top (at most `DOWNGRADE_BODY_BYTES_MAX`, with its original).
pub const CONNECTION_BODY_BYTES_MAX: usize = 3 * BODY_READ_CHUNK_BYTES + 8;
/// Transactions in a row on one connection in which every recipient got a
/// 4xx: a storm from the receiver, not a message's problem. The session
/// ends and the address is remembered as down (`host_failure_retry`).
pub const TRANSIENT_STORM_TRANSACTIONS: u32 = 10;
/// How long a queue whose every target host is at its `host` scope's
/// `max_outbound_connections` waits before it tries again.
pub const HOST_BUSY_WAIT_MS: u64 = 100;

/// Runs one connection for queue `id` until its queue is empty (after
/// `idle_timeout`), the server closes it, or the shard stops. A queue
/// without a route, whose host cannot be reached, or whose host fails the
/// session outside a transaction, has its active entries deferred and is
/// backed off.
pub(super) async fn run_connection(out: &Rc<Outbound>, id: QueueId) {
    let Some(options) = out.options(id) else {
        return;
    };
    let Some((binding, domain)) = out
        .queues
        .borrow()
        .get(id)
        .map(|q| (q.key.binding, q.key.domain.clone()))
    else {
        return;
    };
    let config = out.env.config.get();
    let spread = out.spread.get();
    out.spread.set(spread.wrapping_add(1));
    let targets = connect::resolve(
        &out.resolver,
        config.nameservers(),
        config.prohibited_hosts(),
        &domain,
        &route::plan(&options),
        spread,
    )
    .await;
    let targets = match targets {
        Ok(targets) => targets,
        Err(failure) if failure.permanent => {
            return settle::fail_active(out, id, &options, &failure.reply);
        }
        Err(failure) => {
            return settle::sweep(out, id, &options, &failure.reply, Stage::NotConnected, "");
        }
    };
    let plan = route::plan(&options);
    let targets = if options.dane || options.mta_sts {
        match secure::decide(out, config.nameservers(), &options, &domain, &plan, targets).await {
            Ok(targets) => targets,
            Err(failure) => {
                return settle::sweep(out, id, &options, &failure.reply, Stage::NotConnected, "");
            }
        }
    } else {
        targets
            .into_iter()
            .map(|target| (target, secure::HostTls::Default))
            .collect()
    };
    let ehlo = if is_valid_ehlo_hostname(&options.ehlo_hostname) {
        options.ehlo_hostname.as_str()
    } else {
        "localhost"
    };
    // The next address, then the next host, while a connection fails or
    // the host refuses us before the session is ready (RFC 5321 5.1).
    let from = connect::Source {
        binding: out.bindings.name(binding),
        address: options.bind_address,
    };
    let mut last = (String::new(), Stage::NotConnected, String::new());
    let mut busy = false;
    'targets: for (target, host_tls) in &targets {
        let remote_ip = target.address.to_string();
        let host_limit = config
            .host_max_outbound_connections(&target.host)
            .or_else(|| config.host_max_outbound_connections(&remote_ip));
        let _host_slot = match host_limit.map(|n| limits::HostSlot::take(target.address, n)) {
            Some(None) => {
                busy = true;
                continue;
            }
            Some(slot) => slot,
            None => None,
        };
        if let Some(until) =
            limits::host_down_until(SocketAddr::new(target.address, target.port), now_unix_ms())
        {
            let reply = host_down_reply(target, until);
            last = (reply, Stage::NotConnected, remote_ip);
            continue;
        }
        // ifavailable: a failed handshake is tried again in clear text
        // to the same host, once (tls_ifavailable_fallback); required:
        // never.
        let mut starttls = match host_tls {
            secure::HostTls::Default => starttls_of(options.tls),
            _ => StartTls::Required,
        };
        let ended = loop {
            let tls = match starttls {
                StartTls::Off => None,
                _ => match tls_client(out, &options, host_tls) {
                    Ok(client) => Some(TlsTarget {
                        client,
                        name: tls::client::server_name(&target.host, target.address),
                    }),
                    Err(e) => {
                        let reply = format!("451 4.7.5 ecelerity: outbound TLS settings: {e}");
                        tracing::error!("{domain}: {reply}");
                        last = (reply, Stage::NotConnected, remote_ip.clone());
                        continue 'targets;
                    }
                },
            };
            let stream = match connect::connect(target, from, options.connect_timeout).await {
                Ok(stream) => stream,
                Err(failure) => {
                    tracing::debug!("{domain}: {}", failure.reply);
                    if failure.host_at_fault {
                        mark_down(SocketAddr::new(target.address, target.port), &options);
                    }
                    last = (failure.reply, Stage::NotConnected, remote_ip.clone());
                    continue 'targets;
                }
            };
            let ended = Connection {
                out,
                queue: id,
                options: &options,
                remote_ip: &remote_ip,
                server: SocketAddr::new(target.address, target.port),
                delivered_messages: 0,
                generation: std::cell::Cell::new(out.env.config.generation()),
                transient_in_a_row: 0,
                stream: Stream::Plain(stream),
                tls,
                client: ClientSession::with_starttls(ehlo, starttls)
                    .with_auth(outbound_auth(&options))
                    .with_chunking(options.send_chunking),
                current: None,
                greeted: false,
                body: Vec::new(),
                body_loaded: false,
                body_sendable: false,
                converted: Vec::new(),
                wire: Vec::new(),
            }
            .run()
            .await;
            let handshake_failed = matches!(
                &ended,
                Ended::NotReady {
                    stage: Stage::TlsHandshake,
                    ..
                }
            );
            if handshake_failed
                && starttls == StartTls::Opportunistic
                && options.tls_ifavailable_fallback
                && !out.env.is_stopping()
            {
                if let Ended::NotReady { reply, .. } = &ended {
                    tracing::warn!(
                        "{domain}: {} ({remote_ip}): {reply}; delivering in clear text \
                         (tls = ifavailable, tls_ifavailable_fallback)",
                        target.host
                    );
                }
                starttls = StartTls::Off;
                continue;
            }
            break ended;
        };
        match ended {
            Ended::Done => return,
            Ended::NotReady { reply, stage } => {
                // 421: the host will not serve us now, whatever the domain.
                if reply.starts_with("421") {
                    mark_down(SocketAddr::new(target.address, target.port), &options);
                }
                let reply = reply + &host_tls.context(target, &domain);
                last = (reply, stage, remote_ip)
            }
        }
        if out.env.is_stopping() {
            break;
        }
    }
    if busy {
        // Not the messages' failure, nor the destination's: wait.
        return out.stall(id, now_unix_ms() + HOST_BUSY_WAIT_MS);
    }
    let (reply, stage, remote_ip) = last;
    settle::sweep(out, id, &options, &reply, stage, &remote_ip);
}

/// The TLS configuration of a target: DANE's records, an enforced
/// MTA-STS policy (`tls_verify = host` against `mta_sts_ca`), or the
/// queue's options.
fn tls_client(
    out: &Outbound,
    options: &DeliveryOptions,
    host_tls: &secure::HostTls,
) -> Result<tls::client::Client, tls::TlsFileError> {
    match host_tls {
        secure::HostTls::Default => out.tls.client(options),
        secure::HostTls::Dane(records) => out.tls.dane_client(options, records),
        secure::HostTls::Sts => {
            let enforced = DeliveryOptions {
                tls_verify: crate::config::TlsVerify::Host,
                tls_ca: options.mta_sts_ca.clone(),
                ..options.clone()
            };
            out.tls.client(&enforced)
        }
    }
}

/// What the session asks of STARTTLS under the `tls` option.
fn starttls_of(mode: TlsMode) -> StartTls {
    match mode {
        TlsMode::No => StartTls::Off,
        TlsMode::IfAvailable => StartTls::Opportunistic,
        TlsMode::Required => StartTls::Required,
    }
}

/// Remembers `address` as down for `host_failure_retry`, for every domain.
fn mark_down(server: SocketAddr, options: &DeliveryOptions) {
    let retry_ms = options.host_failure_retry.as_millis() as u64;
    limits::mark_host_down(server, now_unix_ms().saturating_add(retry_ms));
}

/// Why a target remembered as down was not tried.
fn host_down_reply(target: &route::Target, until_unix_ms: u64) -> String {
    let seconds = until_unix_ms.saturating_sub(now_unix_ms()).div_ceil(1000);
    format!(
        "451 4.4.1 {} ({}) failed recently and is skipped for another {seconds} s \
         (host_failure_retry)",
        target.host, target.address
    )
}

/// How a connection ended.
enum Ended {
    /// Its work is done, or its failure settled.
    Done,
    /// The host failed or refused us before the session was ready
    /// (greeting, EHLO): the next target may be tried.
    NotReady { reply: String, stage: Stage },
}

/// The TLS side of a connection that may issue STARTTLS.
struct TlsTarget {
    client: tls::client::Client,
    /// What the server's certificate is checked against.
    name: ServerName<'static>,
}

struct Connection<'a> {
    out: &'a Rc<Outbound>,
    queue: QueueId,
    options: &'a Rc<DeliveryOptions>,
    remote_ip: &'a str,
    /// The server connected to (for the host memory).
    server: SocketAddr,
    /// Transactions of this connection with at least one recipient
    /// accepted; at `max_deliveries_per_connection` the session ends.
    delivered_messages: u32,
    /// Transactions in a row in which every recipient got a 4xx.
    transient_in_a_row: u32,
    /// The configuration generation `options` were last checked against.
    generation: std::cell::Cell<u64>,
    stream: Stream,
    /// Set when the session may issue STARTTLS.
    tls: Option<TlsTarget>,
    client: ClientSession,
    /// The entry of the transaction in flight.
    current: Option<MessageRef>,
    /// The session has been Ready once (the destination greeted us).
    greeted: bool,
    /// Reused buffers: the body as spooled (or converted to 7-bit), and as
    /// encoded for the wire; `converted` is the conversion's scratch.
    body: Vec<u8>,
    /// `body` holds the body of the transaction in flight.
    body_loaded: bool,
    /// The body of the transaction in flight may go as the spool holds it
    /// (or is loaded, converted): the server offers 8BITMIME, or the body
    /// was found 7-bit.
    body_sendable: bool,
    converted: Vec<u8>,
    wire: Vec<u8>,
}

/// Why a body could not be made ready to send.
enum LoadError {
    /// The spool read failed.
    Read,
    /// 8-bit, the server lacks 8BITMIME, and it cannot be converted.
    Unconvertible(Unconvertible),
}

impl Connection<'_> {
    /// The client side of the handshake after STARTTLS's 220, within
    /// `tls::HANDSHAKE_TIMEOUT_MS`. Logs (paniclog, info) what was
    /// negotiated and whether the certificate verified, whatever
    /// `tls_verify` demanded.
    async fn start_tls(&mut self) -> Result<(), String> {
        let Some(target) = self.tls.as_ref() else {
            return Err("STARTTLS without a TLS configuration".into());
        };
        let Some(tcp) = self.stream.take_plain() else {
            return Err("STARTTLS on a TLS connection".into());
        };
        let connector = futures_rustls::TlsConnector::from(target.client.config.clone());
        let limit = Duration::from_millis(tls::HANDSHAKE_TIMEOUT_MS);
        let name = target.name.clone();
        let connected =
            glommio::timer::timeout(limit, async { Ok(connector.connect(name, tcp).await) }).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        };
        let connection = stream.get_ref().1;
        let info = tls::info_of(connection);
        let verified = match connection.peer_certificates() {
            Some([end_entity, intermediates @ ..]) => target.client.verifier.check(
                end_entity,
                intermediates,
                &target.name,
                rustls::pki_types::UnixTime::now(),
            ),
            _ => tls::client::Verified::No("no certificate".into()),
        };
        tracing::info!(
            "TLS to {} ({}): {} {}, certificate {verified} ({})",
            target.name.to_str(),
            self.remote_ip,
            info.protocol,
            info.cipher,
            target.client.verifier.policy()
        );
        self.stream = Stream::Client(Box::new(stream));
        Ok(())
    }

    async fn run(mut self) -> Ended {
        let mut input = vec![0u8; READ_BUFFER_BYTES];
        let mut ended = Ended::Done;
        loop {
            match self.client.poll() {
                ClientAction::Send => {
                    let limit = self.timeout(self.client.stage());
                    let result =
                        write_all_within(&mut self.stream, self.client.output(), limit).await;
                    self.client.output_sent();
                    if result.is_err() {
                        self.client.abort(AbortReason::Io);
                    }
                }
                ClientAction::SendBody => self.send_body().await,
                ClientAction::StartTls => match self.start_tls().await {
                    Ok(()) => self.client.tls_started(),
                    Err(why) => self.client.tls_failed(&why),
                },
                ClientAction::WaitForReply(stage) => {
                    let limit = self.timeout(stage);
                    match read_within(&mut self.stream, &mut input, limit).await {
                        Ok(0) => self.client.abort(AbortReason::PeerClosed),
                        Ok(n) => {
                            // A protocol error surfaces through poll() as a
                            // failure; nothing more to do here.
                            let _ = self.client.on_input(&input[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            self.client.abort(AbortReason::Timeout)
                        }
                        Err(_) => self.client.abort(AbortReason::Io),
                    }
                }
                ClientAction::Ready if !self.greeted => {
                    self.greeted = true;
                    limits::host_up(self.server);
                    if let Some(q) = self.out.queues.borrow_mut().get_mut(self.queue) {
                        pool::greeted(q);
                    }
                }
                ClientAction::Ready if self.deliveries_used_up() => self.client.quit(),
                ClientAction::Ready if self.transient_in_a_row >= TRANSIENT_STORM_TRANSACTIONS => {
                    tracing::debug!("{}: a storm of 4xx replies, backing off", self.remote_ip);
                    mark_down(self.server, self.options);
                    self.client.quit();
                }
                ClientAction::Ready => match self.next_entry().await {
                    Some(entry) => self.start(entry).await,
                    None => self.client.quit(),
                },
                ClientAction::TransactionDone(result) => {
                    let entry = self.current.take().expect("a transaction was in flight");
                    self.count_transaction(&result);
                    self.settle_transaction(entry, result).await;
                }
                ClientAction::Closed => break,
                ClientAction::Failed(failure) => {
                    assert!(
                        self.current.is_none(),
                        "every recipient comes back in TransactionDone"
                    );
                    tracing::debug!(
                        "connection to {} failed at {}: {:?}",
                        self.remote_ip,
                        failure.stage,
                        failure.cause
                    );
                    if failure.is_outside_transaction() && !self.greeted {
                        ended = Ended::NotReady {
                            reply: failure.reply.text(),
                            stage: failure.stage,
                        };
                    } else if failure.is_outside_transaction() {
                        settle::sweep(
                            self.out,
                            self.queue,
                            self.options,
                            &failure.reply.text(),
                            failure.stage,
                            self.remote_ip,
                        );
                    }
                    break;
                }
            }
        }
        let _ = futures_lite::AsyncWriteExt::close(&mut self.stream).await;
        ended
    }

    /// Counts a finished transaction towards `max_deliveries_per_connection`
    /// (any recipient accepted) or a storm of 4xx (every one deferred).
    fn count_transaction(&mut self, result: &TransactionResult) {
        let rcpts = &result.rcpts;
        if rcpts.iter().any(|o| matches!(o, RcptOutcome::Accepted(_))) {
            self.delivered_messages += 1;
        }
        let deferred = |o: &RcptOutcome| matches!(o, RcptOutcome::Transient(_));
        if !rcpts.is_empty() && rcpts.iter().all(deferred) {
            self.transient_in_a_row += 1;
        } else {
            self.transient_in_a_row = 0;
        }
    }

    /// Whether this connection has delivered its
    /// `max_deliveries_per_connection` (0: unlimited).
    /// A reload changed this queue's options (its route, gateway, limits):
    /// the session ends between two transactions, and the queue's next
    /// connection is made with the new options. Compared once per reload.
    fn options_reloaded(&self) -> bool {
        let now = self.out.env.config.generation();
        if now == self.generation.get() {
            return false;
        }
        self.generation.set(now);
        self.out
            .options(self.queue)
            .is_some_and(|fresh| *fresh != **self.options)
    }

    fn deliveries_used_up(&self) -> bool {
        let max = self.options.max_deliveries_per_connection;
        max > 0 && self.delivered_messages >= max
    }

    fn timeout(&self, stage: Stage) -> Duration {
        let o = self.options;
        match stage {
            Stage::DuringMailFrom | Stage::AfterMailFrom => o.mailfrom_timeout,
            Stage::DuringRcptTo | Stage::AfterRcptTo => o.rcptto_timeout,
            Stage::DuringData | Stage::AfterData => o.data_timeout,
            Stage::SendingBody | Stage::ReadingConfirmation => o.body_timeout,
            _ => o.ehlo_timeout,
        }
    }

    /// Starts the transaction of `entry`. Without 8BITMIME its body is
    /// checked first (`check_7bit`): 7-bit goes as it is, 8-bit converted,
    /// or the transaction is refused when it cannot be (a spool read error
    /// is left for `send_body` to meet, inside the transaction, as
    /// transient).
    async fn start(&mut self, entry: MessageRef) {
        let eightbitmime = self
            .client
            .capabilities()
            .is_some_and(|capabilities| capabilities.eightbitmime);
        self.current = Some(entry);
        self.body_loaded = false;
        self.body_sendable = eightbitmime;
        let mut body_len = self.current.as_ref().unwrap().body.len as u64;
        if !eightbitmime {
            match self.check_7bit().await {
                Ok(()) if self.body_loaded => body_len = self.body.len() as u64,
                Ok(()) | Err(LoadError::Read) => {}
                Err(LoadError::Unconvertible(why)) => {
                    let entry = self.current.as_ref().unwrap();
                    let why = why.to_string();
                    return self.client.refuse_body(entry.rcpts.len(), &why);
                }
            }
        }
        let entry = self.current.as_ref().unwrap();
        let rcpts: Vec<&str> = entry.rcpts.iter().map(|(_, r)| &**r).collect();
        // SMTPUTF8 and DSN parameters, per recipient (none for most mail).
        let params: Vec<_> = match entry.params.as_deref() {
            Some(message) => entry
                .rcpts
                .iter()
                .map(|(index, _)| (Some(message), message.rcpt(*index)))
                .collect(),
            None => Vec::new(),
        };
        self.client.start_transaction_with(
            &entry.mail_from,
            &rcpts,
            body_len,
            entry.body_8bitmime && eightbitmime,
            &params,
        );
    }

    /// The body reader of the current entry's home shard (clones share the
    /// reader's file cache; no borrow is held across a read).
    fn reader(&self) -> BodyReader {
        let entry = self
            .current
            .as_ref()
            .expect("a body belongs to a transaction");
        self.out.bodies.borrow()[entry.id.home_shard()].clone()
    }

    /// For a server without 8BITMIME: a 7-bit body is marked sendable as
    /// it is (a large one is scanned in chunks, never held whole); an 8-bit
    /// one of at most `DOWNGRADE_BODY_BYTES_MAX` is read and converted
    /// into `body`; a larger 8-bit one is unconvertible.
    async fn check_7bit(&mut self) -> Result<(), LoadError> {
        let entry = self
            .current
            .as_ref()
            .expect("a body belongs to a transaction");
        let body_ref = entry.body;
        let id = entry.id;
        if body_ref.len as usize > BODY_READ_CHUNK_BYTES {
            let reader = self.reader();
            let scanned = async {
                let mut chunks = reader.chunks(&body_ref).await?;
                while chunks.next(&mut self.body, BODY_READ_CHUNK_BYTES).await? {
                    if downgrade::has_8bit(&self.body) {
                        return Ok(true);
                    }
                }
                Ok::<bool, std::io::Error>(false)
            }
            .await;
            match scanned {
                Ok(false) => {
                    self.body_sendable = true;
                    return Ok(());
                }
                Ok(true) if body_ref.len as usize > DOWNGRADE_BODY_BYTES_MAX => {
                    return Err(LoadError::Unconvertible(Unconvertible::TooLarge));
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::error!("spool: cannot read the body of {id}: {e}");
                    return Err(LoadError::Read);
                }
            }
        }
        let reader = self.reader();
        if let Err(e) = reader.read(&body_ref, &mut self.body).await {
            tracing::error!("spool: cannot read the body of {id}: {e}");
            return Err(LoadError::Read);
        }
        if downgrade::has_8bit(&self.body) {
            downgrade::downgrade(&self.body, &mut self.converted)
                .map_err(LoadError::Unconvertible)?;
            std::mem::swap(&mut self.body, &mut self.converted);
        }
        self.body_loaded = true;
        self.body_sendable = true;
        Ok(())
    }

    /// Sends the body: the one in `body` when it was loaded (converted),
    /// else straight from the spool in chunks of `BODY_READ_CHUNK_BYTES`,
    /// each encoded for the wire (`BodyEncoder`) and written before the
    /// next is read, so a connection holds one chunk and its encoding
    /// whatever the body's size. Any failure aborts the transaction before
    /// the final dot: the server discards what it got.
    async fn send_body(&mut self) {
        if !self.body_sendable {
            // The check before MAIL could not read the body: transient.
            self.client.abort(AbortReason::Io);
            return;
        }
        if self.client.body_uses_bdat() {
            let sent = if self.body_loaded {
                self.body_loaded = false;
                self.send_loaded_bdat().await
            } else {
                self.stream_bdat().await
            };
            match sent {
                Ok((chunks, bytes)) => self.client.bdat_sent(chunks, bytes),
                Err(()) => self.client.abort(AbortReason::Io),
            }
            return;
        }
        let sent = if self.body_loaded {
            self.body_loaded = false;
            self.send_loaded_body().await
        } else {
            self.stream_body().await
        };
        match sent {
            Ok(bytes) => self.client.body_sent(bytes),
            Err(()) => self.client.abort(AbortReason::Io),
        }
    }

    /// Encodes and writes `body` (loaded, converted) chunk by chunk.
    async fn send_loaded_body(&mut self) -> Result<u64, ()> {
        let limit = self.options.body_timeout;
        let mut encoder = BodyEncoder::new();
        let mut sent = 0;
        let mut at = 0;
        loop {
            let end = (at + BODY_READ_CHUNK_BYTES).min(self.body.len());
            self.wire.clear();
            encoder.encode_chunk(&self.body[at..end], &mut self.wire);
            // The final dot rides the last chunk's write.
            let last = end == self.body.len();
            if last {
                encoder.finish(&mut self.wire);
            }
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            sent += self.wire.len() as u64;
            if last {
                return Ok(sent);
            }
            at = end;
        }
    }

    /// Writes `body` (loaded, converted) as BDAT chunks of at most
    /// `BODY_READ_CHUNK_BYTES`, the last marked LAST. Returns the chunks
    /// and the bytes written.
    async fn send_loaded_bdat(&mut self) -> Result<(u32, u64), ()> {
        let limit = self.options.body_timeout;
        let (mut chunks, mut sent, mut at) = (0u32, 0u64, 0usize);
        loop {
            let end = (at + BODY_READ_CHUNK_BYTES).min(self.body.len());
            let last = end == self.body.len();
            self.wire.clear();
            bdat_chunk(&self.body[at..end], last, &mut self.wire);
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            chunks += 1;
            sent += self.wire.len() as u64;
            at = end;
            if last {
                return Ok((chunks, sent));
            }
        }
    }

    /// Reads the body from the spool chunk by chunk and writes each as a
    /// BDAT chunk as it is (no encoding: a body that came in with bare
    /// line ends leaves with them), the one that completes the body's
    /// spooled length marked LAST (`BDAT 0 LAST` for an empty body). A
    /// connection holds one chunk and its framing at a time.
    async fn stream_bdat(&mut self) -> Result<(u32, u64), ()> {
        let entry = self
            .current
            .as_ref()
            .expect("a body belongs to a transaction");
        let (body_ref, id) = (entry.body, entry.id);
        let reader = self.reader();
        let limit = self.options.body_timeout;
        let mut reading = reader.chunks(&body_ref).await.map_err(|e| {
            tracing::error!("spool: cannot read the body of {id}: {e}");
        })?;
        let (mut chunks, mut sent) = (0u32, 0u64);
        loop {
            let more = reading
                .next(&mut self.body, BODY_READ_CHUNK_BYTES)
                .await
                .map_err(|e| tracing::error!("spool: cannot read the body of {id}: {e}"))?;
            let last = !more || reading.remaining() == 0;
            self.wire.clear();
            bdat_chunk(&self.body, last, &mut self.wire);
            assert!(self.body.len() + self.wire.len() <= CONNECTION_BODY_BYTES_MAX);
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            chunks += 1;
            sent += self.wire.len() as u64;
            if last {
                return Ok((chunks, sent));
            }
        }
    }

    /// Reads the body from the spool chunk by chunk, encoding and writing
    /// each (`body_timeout` per write, so a large body is not held to the
    /// time of one).
    async fn stream_body(&mut self) -> Result<u64, ()> {
        let entry = self
            .current
            .as_ref()
            .expect("a body belongs to a transaction");
        let (body_ref, id) = (entry.body, entry.id);
        let reader = self.reader();
        let limit = self.options.body_timeout;
        let mut chunks = reader.chunks(&body_ref).await.map_err(|e| {
            tracing::error!("spool: cannot read the body of {id}: {e}");
        })?;
        let mut encoder = BodyEncoder::new();
        let mut sent = 0;
        loop {
            let more = chunks
                .next(&mut self.body, BODY_READ_CHUNK_BYTES)
                .await
                .map_err(|e| tracing::error!("spool: cannot read the body of {id}: {e}"))?;
            self.wire.clear();
            if more {
                encoder.encode_chunk(&self.body, &mut self.wire);
            }
            // The final dot rides the last chunk's write: one send for a
            // body that fits one chunk, not two.
            let last = !more || chunks.remaining() == 0;
            if last {
                encoder.finish(&mut self.wire);
            }
            assert!(self.body.len() + self.wire.len() <= CONNECTION_BODY_BYTES_MAX);
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            sent += self.wire.len() as u64;
            if last {
                return Ok(sent);
            }
        }
    }

    /// The next entry of this connection's queue, split to at most
    /// `max_recipients_per_batch` recipients, once `outbound_throttle_messages`
    /// lets it go (waiting for a token); waits up to `idle_timeout` for one
    /// when the queue is empty.
    async fn next_entry(&mut self) -> Option<MessageRef> {
        loop {
            // Also after waiting idle: a reload may have come meanwhile.
            if self.out.env.is_stopping() || self.options_reloaded() {
                return None;
            }
            if self.has_active() {
                let throttle = &self.options.outbound_throttle_messages;
                match limits::take_token(throttle, now_unix_us()) {
                    // No await since has_active: the entry is still there.
                    Ok(()) => return self.pop_active(),
                    Err(at_us) => {
                        let wait_us = at_us.saturating_sub(now_unix_us());
                        glommio::timer::sleep(Duration::from_micros(wait_us)).await;
                        continue;
                    }
                }
            }
            let (tx, rx) = local_channel::new_bounded(1);
            match self.out.queues.borrow_mut().get_mut(self.queue) {
                Some(q) => q.idle.push(tx),
                None => return None,
            }
            let woken = glommio::timer::timeout(
                self.options.idle_timeout.max(Duration::from_millis(1)),
                async { Ok(rx.recv().await) },
            )
            .await;
            if !matches!(woken, Ok(Some(()))) {
                return None;
            }
        }
    }

    fn has_active(&self) -> bool {
        let queues = self.out.queues.borrow();
        queues.get(self.queue).is_some_and(|q| !q.active.is_empty())
    }

    fn pop_active(&mut self) -> Option<MessageRef> {
        let batch_max = self.options.max_recipients_per_batch.max(1) as usize;
        let mut queues = self.out.queues.borrow_mut();
        let q = queues.get_mut(self.queue)?;
        if q.suspended {
            return None;
        }
        let mut entry = q.active.pop_front()?;
        if entry.rcpts.len() > batch_max {
            let rest = entry.rcpts.split_off(batch_max);
            let mut tail = entry.clone();
            tail.rcpts = rest;
            q.active.push_front(tail);
        }
        Some(entry)
    }

    async fn settle_transaction(&mut self, entry: MessageRef, result: TransactionResult) {
        let replies: Vec<AttemptReply> = result
            .rcpts
            .iter()
            .zip(&result.rcpt_stages)
            .map(|(o, stage)| AttemptReply {
                class: match o {
                    RcptOutcome::Accepted(_) => ReplyClass::Accepted,
                    RcptOutcome::Transient(_) => ReplyClass::Transient,
                    RcptOutcome::Permanent(_) => ReplyClass::Permanent,
                },
                text: o.reply().text(),
                stage: stage.code(),
            })
            .collect();
        let dsn_passed_on = self.client.capabilities().is_some_and(|c| c.dsn);
        settle::settle(
            self.out,
            self.queue,
            self.options,
            entry,
            replies,
            result.bytes_sent,
            self.remote_ip,
            dsn_passed_on,
        )
        .await;
    }
}

/// The `outbound_smtp_auth_*` credentials of `options`, when both the user
/// and the password are set.
fn outbound_auth(options: &DeliveryOptions) -> Option<OutboundAuth> {
    let user = options.outbound_smtp_auth_user.as_ref()?;
    let password = options.outbound_smtp_auth_pass.as_ref()?;
    Some(OutboundAuth {
        user: user.clone(),
        password: password.clone(),
        mechanism: options
            .outbound_smtp_auth_type
            .as_deref()
            .and_then(Mechanism::parse),
        allow_plaintext: options.outbound_smtp_auth_allow_plaintext,
    })
}
