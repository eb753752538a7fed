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
//! Owns: the read buffer and the reused body buffers of a connection, the
//! per-stage timeouts. May call: `route`, `connect`, `pool`, `settle`, the
//! queue of this connection (through [`Outbound`]), the spool's body
//! reader, `smtp::downgrade`. Never: protocol decisions (the client
//! session and `downgrade` make them).

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel;

use super::disposition::{AttemptReply, ReplyClass};
use super::{connect, pool, route, settle, Outbound};
use crate::config::DeliveryOptions;
use crate::queue::{MessageRef, QueueId};
use ecelerity_spool::{BodyReader, BODY_READ_CHUNK_BYTES};

use crate::smtp::body::BodyEncoder;
use crate::smtp::client::{
    is_valid_ehlo_hostname, AbortReason, ClientAction, ClientSession, RcptOutcome, Stage,
    TransactionResult,
};
use crate::smtp::downgrade::{self, Unconvertible, DOWNGRADE_BODY_BYTES_MAX};
use crate::transport::{read_within, write_all_within, Transport};

/// Bytes read from a server socket at a time.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Body memory of one connection while it sends: a chunk read from the
/// spool and its encoding for the wire (at most twice its size, plus the
/// trailer), whatever the body's size; a body converted to 7-bit is held
/// whole on top (at most `DOWNGRADE_BODY_BYTES_MAX`, with its original).
pub const CONNECTION_BODY_BYTES_MAX: usize = 3 * BODY_READ_CHUNK_BYTES + 8;

/// Runs one connection for queue `id` until its queue is empty (after
/// `idle_timeout`), the server closes it, or the shard stops. A queue
/// without a route, whose host cannot be reached, or whose host fails the
/// session outside a transaction, has its active entries deferred and is
/// backed off.
pub(super) async fn run_connection(out: &Rc<Outbound>, id: QueueId) {
    let Some(options) = out.options(id) else {
        return;
    };
    let Some(domain) = out.queues.borrow().get(id).map(|q| q.key.domain.clone()) else {
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
    let ehlo = if is_valid_ehlo_hostname(&options.ehlo_hostname) {
        options.ehlo_hostname.as_str()
    } else {
        "localhost"
    };
    // The next address, then the next host, while a connection fails or
    // the host refuses us before the session is ready (RFC 5321 5.1).
    let mut last = (String::new(), Stage::NotConnected, String::new());
    for target in &targets {
        let remote_ip = target.address.to_string();
        let stream = match connect::connect(target, options.connect_timeout).await {
            Ok(stream) => stream,
            Err(reply) => {
                tracing::debug!("{domain}: {reply}");
                last = (reply, Stage::NotConnected, remote_ip);
                continue;
            }
        };
        let ended = Connection {
            out,
            queue: id,
            options: &options,
            remote_ip: &remote_ip,
            stream,
            client: ClientSession::new(ehlo),
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
        match ended {
            Ended::Done => return,
            Ended::NotReady { reply, stage } => last = (reply, stage, remote_ip),
        }
        if out.env.is_stopping() {
            break;
        }
    }
    let (reply, stage, remote_ip) = last;
    settle::sweep(out, id, &options, &reply, stage, &remote_ip);
}

/// How a connection ended.
enum Ended {
    /// Its work is done, or its failure settled.
    Done,
    /// The host failed or refused us before the session was ready
    /// (greeting, EHLO): the next target may be tried.
    NotReady { reply: String, stage: Stage },
}

struct Connection<'a, S: Transport> {
    out: &'a Rc<Outbound>,
    queue: QueueId,
    options: &'a Rc<DeliveryOptions>,
    remote_ip: &'a str,
    stream: S,
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

impl<S: Transport> Connection<'_, S> {
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
                    if let Some(q) = self.out.queues.borrow_mut().get_mut(self.queue) {
                        pool::greeted(q);
                    }
                }
                ClientAction::Ready => match self.next_entry().await {
                    Some(entry) => self.start(entry).await,
                    None => self.client.quit(),
                },
                ClientAction::TransactionDone(result) => {
                    let entry = self.current.take().expect("a transaction was in flight");
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
        self.client.start_transaction(
            &entry.mail_from,
            &rcpts,
            body_len,
            entry.body_8bitmime && eightbitmime,
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
        while at < self.body.len() {
            let end = (at + BODY_READ_CHUNK_BYTES).min(self.body.len());
            self.wire.clear();
            encoder.encode_chunk(&self.body[at..end], &mut self.wire);
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            sent += self.wire.len() as u64;
            at = end;
        }
        self.wire.clear();
        encoder.finish(&mut self.wire);
        write_all_within(&mut self.stream, &self.wire, limit)
            .await
            .map_err(|_| ())?;
        Ok(sent + self.wire.len() as u64)
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
            } else {
                encoder.finish(&mut self.wire);
            }
            assert!(self.body.len() + self.wire.len() <= CONNECTION_BODY_BYTES_MAX);
            write_all_within(&mut self.stream, &self.wire, limit)
                .await
                .map_err(|_| ())?;
            sent += self.wire.len() as u64;
            if !more {
                return Ok(sent);
            }
        }
    }

    /// The next entry of this connection's queue, split to at most
    /// `max_recipients_per_batch` recipients; waits up to `idle_timeout`
    /// for one when the queue is empty.
    async fn next_entry(&mut self) -> Option<MessageRef> {
        loop {
            if self.out.env.is_stopping() {
                return None;
            }
            if let Some(entry) = self.pop_active() {
                return Some(entry);
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

    fn pop_active(&mut self) -> Option<MessageRef> {
        let batch_max = self.options.max_recipients_per_batch.max(1) as usize;
        let mut queues = self.out.queues.borrow_mut();
        let q = queues.get_mut(self.queue)?;
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
        settle::settle(
            self.out,
            self.queue,
            self.options,
            entry,
            replies,
            result.bytes_sent,
            self.remote_ip,
        )
        .await;
    }
}
