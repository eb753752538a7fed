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
use crate::smtp::client::{
    encode_body, is_valid_ehlo_hostname, AbortReason, ClientAction, ClientSession, RcptOutcome,
    Stage, TransactionResult,
};
use crate::smtp::downgrade::{self, Unconvertible};
use crate::transport::{read_within, write_all_within, Transport};

/// Bytes read from a server socket at a time.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

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
    for target in &targets {
        let remote_ip = target.address.to_string();
        let stream = match connect::connect(target, from, options.connect_timeout).await {
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

    /// Starts the transaction of `entry`. Without 8BITMIME its body is read
    /// first: 7-bit goes as it is, 8-bit converted, or the transaction is
    /// refused when it cannot be (a spool read error is left for
    /// `send_body` to meet again, inside the transaction, as transient).
    async fn start(&mut self, entry: MessageRef) {
        let eightbitmime = self
            .client
            .capabilities()
            .is_some_and(|capabilities| capabilities.eightbitmime);
        self.current = Some(entry);
        self.body_loaded = false;
        let mut body_len = self.current.as_ref().unwrap().body.len as u64;
        if !eightbitmime {
            match self.load_body(false).await {
                Ok(()) => body_len = self.body.len() as u64,
                Err(LoadError::Read) => {}
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

    /// Reads the current entry's body into `body`; converts an 8-bit one
    /// to 7-bit unless `eightbitmime` (the server takes it as it is).
    async fn load_body(&mut self, eightbitmime: bool) -> Result<(), LoadError> {
        let entry = self
            .current
            .as_ref()
            .expect("a body belongs to a transaction");
        let home = entry.id.home_shard();
        // Clones share the reader's file cache; no borrow across the read.
        let reader = self.out.bodies.borrow()[home].clone();
        let read = reader.read(&entry.body, &mut self.body).await;
        if let Err(e) = read {
            tracing::error!("spool: cannot read the body of {}: {e}", entry.id);
            return Err(LoadError::Read);
        }
        if !eightbitmime && downgrade::has_8bit(&self.body) {
            downgrade::downgrade(&self.body, &mut self.converted)
                .map_err(LoadError::Unconvertible)?;
            std::mem::swap(&mut self.body, &mut self.converted);
        }
        self.body_loaded = true;
        Ok(())
    }

    async fn send_body(&mut self) {
        if !self.body_loaded {
            let eightbitmime = self
                .client
                .capabilities()
                .is_some_and(|capabilities| capabilities.eightbitmime);
            if self.load_body(eightbitmime).await.is_err() {
                self.client.abort(AbortReason::Io);
                return;
            }
        }
        self.body_loaded = false;
        self.wire.clear();
        encode_body(&self.body, &mut self.wire);
        let limit = self.options.body_timeout;
        match write_all_within(&mut self.stream, &self.wire, limit).await {
            Ok(()) => self.client.body_sent(self.wire.len() as u64),
            Err(_) => self.client.abort(AbortReason::Io),
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
