//! Outbound delivery: the I/O driver of one SMTP client connection from a
//! queue owner's shard to the domain's gateway.
//!
//! Owns: connecting (with `connect_timeout`), moving bytes between the
//! socket and the pure [`ClientSession`], reading bodies from the spool,
//! picking the next queue entry, and settling each recipient's outcome
//! (mainlog D/T/P, retry schedule, report to the message's home shard).
//! May call: `queue`, `shard` (routing, reports), `smtp::client`, `log`,
//! the spool's body reader. Never: protocol decisions (the client session
//! makes them).
//!
//! Routing today is the `gateway` option only (MX routing, bindings and
//! throttles come with the delivery work); a domain without a gateway is
//! deferred with a transient failure so nothing is lost.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;

use crate::config::{DeliveryOptions, Gateway};
use crate::log::{format_delivery, format_failure, Attempt, RecordIds};
use crate::queue::{MessageId, MessageRef};
use crate::shard::{now_unix_ms, Outcome, OutcomeKind, Shard, ShardStats};
use crate::smtp::client::{
    encode_body, is_valid_ehlo_hostname, AbortReason, ClientAction, ClientSession, RcptOutcome,
    Stage, TransactionResult,
};

/// Bytes read from a server socket at a time.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Most entries one failed connection attempt defers at once.
pub const SWEEP_ENTRIES_MAX: usize = 10_000;

/// How one recipient ended on one attempt.
enum Settle {
    Delivered,
    Transient,
    Permanent,
}

/// Runs one connection for `domain` until its queue is empty (after
/// `idle_timeout`), the server closes it, or the shard stops.
pub async fn run_connection(shard: Rc<Shard>, domain: Rc<str>) {
    let Some(options) = shard
        .queues
        .borrow_mut()
        .domain_mut(&domain)
        .map(|q| q.options.clone())
    else {
        return;
    };
    let Some(gateway) = options.gateway.clone() else {
        sweep(
            &shard,
            &domain,
            &options,
            "451 4.4.0 no route: set a gateway for this domain (MX routing is not supported yet)",
            "",
        );
        return;
    };
    let address = match resolve(&gateway) {
        Ok(a) => a,
        Err(e) => {
            sweep(
                &shard,
                &domain,
                &options,
                &format!("451 4.4.3 cannot resolve gateway {gateway}: {e}"),
                "",
            );
            return;
        }
    };
    let stream = match TcpStream::connect_timeout(
        address,
        options.connect_timeout.max(Duration::from_millis(1)),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            sweep(
                &shard,
                &domain,
                &options,
                &format!("451 4.4.1 connection to {address} failed: {e}"),
                "",
            );
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let remote_ip = address.ip().to_string();
    let ehlo = if is_valid_ehlo_hostname(&options.ehlo_hostname) {
        options.ehlo_hostname.as_str()
    } else {
        "localhost"
    };
    Connection {
        shard: &shard,
        domain: &domain,
        options: &options,
        remote_ip: &remote_ip,
        stream,
        client: ClientSession::new(ehlo),
        current: None,
        body: Vec::new(),
        wire: Vec::new(),
    }
    .run()
    .await;
}

fn resolve(gateway: &Gateway) -> std::io::Result<SocketAddr> {
    (gateway.host.as_str(), gateway.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

struct Connection<'a> {
    shard: &'a Rc<Shard>,
    domain: &'a Rc<str>,
    options: &'a Rc<DeliveryOptions>,
    remote_ip: &'a str,
    stream: TcpStream,
    client: ClientSession,
    /// The entry of the transaction in flight.
    current: Option<MessageRef>,
    /// Reused buffers: the body as spooled, and as encoded for the wire.
    body: Vec<u8>,
    wire: Vec<u8>,
}

impl Connection<'_> {
    async fn run(mut self) {
        let mut input = vec![0u8; READ_BUFFER_BYTES];
        loop {
            match self.client.poll() {
                ClientAction::Send => {
                    let result = self.stream.write_all(self.client.output()).await;
                    self.client.output_sent();
                    if result.is_err() {
                        self.client.abort(AbortReason::Io);
                    }
                }
                ClientAction::SendBody => self.send_body().await,
                ClientAction::WaitForReply(stage) => {
                    let _ = self.stream.set_read_timeout(Some(self.timeout(stage)));
                    match self.stream.read(&mut input).await {
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
                ClientAction::Ready => match self.next_entry().await {
                    Some(entry) => {
                        let rcpts: Vec<&str> = entry.rcpts.iter().map(|(_, r)| &**r).collect();
                        self.client.start_transaction(
                            &entry.mail_from,
                            &rcpts,
                            entry.body.len as u64,
                            entry.body_8bitmime,
                        );
                        self.current = Some(entry);
                    }
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
                        domain = &**self.domain,
                        "connection to {} failed at {}: {:?}",
                        self.remote_ip,
                        failure.stage,
                        failure.cause
                    );
                    break;
                }
            }
        }
        let _ = self.stream.close().await;
    }

    fn timeout(&self, stage: Stage) -> Duration {
        let o = self.options;
        let t = match stage {
            Stage::DuringMailFrom | Stage::AfterMailFrom => o.mailfrom_timeout,
            Stage::DuringRcptTo | Stage::AfterRcptTo => o.rcptto_timeout,
            Stage::DuringData | Stage::AfterData => o.data_timeout,
            Stage::SendingBody | Stage::ReadingConfirmation => o.body_timeout,
            _ => o.ehlo_timeout,
        };
        t.max(Duration::from_millis(1))
    }

    async fn send_body(&mut self) {
        let entry = self
            .current
            .as_ref()
            .expect("a body is sent within a transaction");
        let home = entry.id.home_shard();
        let reader = self.shard.bodies.borrow()[home].clone();
        let read = reader.read(&entry.body, &mut self.body).await;
        if let Err(e) = read {
            tracing::error!("spool: cannot read the body of {}: {e}", entry.id);
            self.client.abort(AbortReason::Io);
            return;
        }
        self.wire.clear();
        encode_body(&self.body, &mut self.wire);
        match self.stream.write_all(&self.wire).await {
            Ok(()) => self.client.body_sent(self.wire.len() as u64),
            Err(_) => self.client.abort(AbortReason::Io),
        }
    }

    /// The next entry of this domain's active queue, split to at most
    /// `max_recipients_per_batch` recipients; waits up to `idle_timeout`
    /// for one when the queue is empty.
    async fn next_entry(&mut self) -> Option<MessageRef> {
        loop {
            if self.shard.is_stopping() {
                return None;
            }
            if let Some(entry) = self.pop_active() {
                return Some(entry);
            }
            let (tx, rx) = local_channel::new_bounded(1);
            match self.shard.queues.borrow_mut().domain_mut(self.domain) {
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
        let mut queues = self.shard.queues.borrow_mut();
        let q = queues.domain_mut(self.domain)?;
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
        let outcomes: Vec<(Settle, String, u8)> = result
            .rcpts
            .iter()
            .zip(&result.rcpt_stages)
            .map(|(o, stage)| {
                let kind = match o {
                    RcptOutcome::Accepted(_) => Settle::Delivered,
                    RcptOutcome::Transient(_) => Settle::Transient,
                    RcptOutcome::Permanent(_) => Settle::Permanent,
                };
                (kind, o.reply().text(), stage.code())
            })
            .collect();
        settle(
            self.shard,
            self.options,
            entry,
            outcomes,
            result.bytes_sent,
            self.remote_ip,
        )
        .await;
    }
}

/// Defers every entry in the active queue of `domain` after a failure that
/// concerns the whole route (no gateway, connection refused).
fn sweep(
    shard: &Rc<Shard>,
    domain: &Rc<str>,
    options: &Rc<DeliveryOptions>,
    reason: &str,
    remote_ip: &str,
) {
    let entries: Vec<MessageRef> = {
        let mut queues = shard.queues.borrow_mut();
        let Some(q) = queues.domain_mut(domain) else {
            return;
        };
        let n = q.active.len().min(SWEEP_ENTRIES_MAX);
        q.active.drain(..n).collect()
    };
    let (shard, options, reason, remote_ip) = (
        shard.clone(),
        options.clone(),
        reason.to_string(),
        remote_ip.to_string(),
    );
    glommio::spawn_local(async move {
        for entry in entries {
            let outcomes = entry
                .rcpts
                .iter()
                .map(|_| {
                    (
                        Settle::Transient,
                        reason.clone(),
                        Stage::NotConnected.code(),
                    )
                })
                .collect();
            settle(&shard, &options, entry, outcomes, 0, &remote_ip).await;
        }
    })
    .detach();
}

/// Logs each recipient's outcome, schedules the retries, and reports to
/// the message's home shard. A transient failure past `max_retries` or
/// `message_expiration` becomes permanent.
async fn settle(
    shard: &Rc<Shard>,
    options: &DeliveryOptions,
    entry: MessageRef,
    outcomes: Vec<(Settle, String, u8)>,
    bytes_sent: u64,
    remote_ip: &str,
) {
    assert_eq!(outcomes.len(), entry.rcpts.len());
    let now = now_unix_ms();
    let age_ms = now.saturating_sub(entry.received_unix_ms);
    let expired = age_ms >= options.message_expiration.as_millis() as u64;
    let exhausted = options.retries_exhausted(entry.attempts + 1);
    let message_id = entry.id.to_string();
    let connection_id = MessageId(entry.connection_id).to_string();
    let ids = RecordIds {
        unix_secs: now / 1000,
        message_id: &message_id,
        batch_id: &message_id,
        connection_id: &connection_id,
    };
    let mut done = Vec::new();
    let mut retry = Vec::new();
    let (mut delivered, mut failed, mut transient) = (0u64, 0u64, 0u64);
    shard.logs.mainlog(|buf| {
        for ((index, _rcpt), (kind, reply, stage)) in entry.rcpts.iter().zip(outcomes) {
            let mut attempt = Attempt {
                domain: &entry.domain,
                bytes: bytes_sent,
                binding_group: "default",
                binding: "default",
                stage,
                retries: entry.attempts,
                secs_since_reception: age_ms as f64 / 1000.0,
                remote_ip,
                error: &reply,
            };
            match kind {
                Settle::Delivered => {
                    attempt.bytes = entry.body.len as u64;
                    format_delivery(buf, &ids, &attempt);
                    delivered += 1;
                    done.push(*index);
                }
                Settle::Permanent => {
                    format_failure(buf, &ids, true, &attempt);
                    failed += 1;
                    done.push(*index);
                }
                Settle::Transient if expired || exhausted => {
                    let why = if expired {
                        format!("554 5.4.7 [internal] exceeded max time without delivery (last: {reply})")
                    } else {
                        format!("554 5.4.7 [internal] exceeded max retries (last: {reply})")
                    };
                    attempt.error = &why;
                    format_failure(buf, &ids, true, &attempt);
                    failed += 1;
                    done.push(*index);
                }
                Settle::Transient => {
                    format_failure(buf, &ids, false, &attempt);
                    transient += 1;
                    retry.push(*index);
                }
            }
        }
    });
    let stats = shard.my_stats();
    ShardStats::add(&stats.delivered, delivered);
    ShardStats::add(&stats.failed, failed);
    ShardStats::add(&stats.transient_failures, transient);
    if let Some(q) = shard.queues.borrow_mut().domain_mut(&entry.domain) {
        q.delivered += delivered;
        q.failed += failed;
    }
    let mut reports = Vec::with_capacity(2);
    if !done.is_empty() {
        reports.push(Outcome {
            id: entry.id,
            rcpts: done,
            kind: OutcomeKind::Done,
        });
    }
    if !retry.is_empty() {
        let attempts = entry.attempts + 1;
        let next_attempt_unix_ms = now + options.retry_delay(attempts).as_millis() as u64;
        reports.push(Outcome {
            id: entry.id,
            rcpts: retry.clone(),
            kind: OutcomeKind::Retry {
                attempts,
                next_attempt_unix_ms,
            },
        });
        let mut again = entry;
        again.rcpts.retain(|(i, _)| retry.contains(i));
        again.attempts = attempts;
        again.next_attempt_unix_ms = next_attempt_unix_ms;
        shard
            .queues
            .borrow_mut()
            .push_delayed(again, next_attempt_unix_ms);
    }
    shard.report(reports).await;
}
