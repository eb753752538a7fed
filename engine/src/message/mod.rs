//! The life of a message on its home shard (the shard that received and
//! spooled it): admission against the live-set limit, spooling, the R
//! lines, splitting into queue entries, recording outcomes, bounces (a DSN
//! per message per batch of permanent failures), completion, and
//! requeueing what recovery found after a restart; delay DSNs (one per
//! message, once `delivery` reports it still deferred past
//! `delay_dsn_retry_interval`).
//!
//! Owns: the live set (message id → recipients not yet final), which live
//! messages had their delay DSN, message ids, the engine's notes and
//! completions in the spool, the injection of DSNs.
//! May call: the spool (appends; body reads of its own segments),
//! `queue` (entries, records), `mesh` (outcome types; the router, only to
//! send a DSN it injected to its queue owner), `bounce` (the DSN builder),
//! `log` (R lines), `env`. Never: queues of any shard, sockets.
//!
//! A DSN is a message like any other: spooled with the group commit, then
//! routed. The failures it reports are recorded (and the original perhaps
//! completed) only once the DSN is durable, so a crash in between replays
//! the failures (a duplicate DSN) rather than losing the bounce. A delay
//! DSN is recorded the same way: a `DelayDsnSent` note once it is durable,
//! so a restart does not send it again; a crash between the two sends a
//! second one (a warning twice, never none).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;

use ecelerity_spool::{BodyReader, BodyRef, FileBody, RecoveredMessage, Spool, SpoolError};

use crate::bounce::dsn::{
    self, FailedRecipient, Report, ORIGINAL_HEADERS_BYTES_MAX, RETURNED_MESSAGE_BYTES_MAX,
};
use crate::clock::now_unix_ms;
use crate::env::ShardEnv;
use crate::events::{Event, EventType};
use crate::log::{format_reception, Reception, RecordIds};
use crate::mesh::{Delay, Failure, Outcome, OutcomeKind, Router};
use crate::queue::record::{EnvelopeExtension, Note, SpooledEnvelope};
use crate::queue::{
    domain_of, BindingId, Bindings, MessageId, MessageRef, LIVE_MESSAGES_PER_SHARD_MAX,
};
use crate::smtp::params::{MessageParams, Ret};
use crate::stats::Counter;

/// The R-line protocol of a message this shard wrote itself (a DSN), as
/// Momentum names it.
pub const PROTOCOL_INTERNAL: &str = "internal";
/// Bytes of an original's body read for its DSN: enough for the header
/// block the DSN carries, never the whole of a large message.
pub const DSN_HEADER_READ_BYTES_MAX: usize = ORIGINAL_HEADERS_BYTES_MAX + 4;

/// Why a message could not be taken.
#[derive(Debug)]
pub enum RefusedBecause {
    /// The live set is at [`LIVE_MESSAGES_PER_SHARD_MAX`].
    LiveSetFull,
    /// The spool could not make it durable.
    Spool(SpoolError),
}

/// A message spooled by [`Messages::spool`].
pub struct Spooled {
    pub id: MessageId,
    pub body: BodyRef,
}

/// The messages this shard is home to.
pub struct Messages {
    env: Rc<ShardEnv>,
    bindings: Rc<Bindings>,
    pub spool: Spool,
    /// Reads the header blocks of this shard's spooled bodies for DSNs.
    headers: BodyReader,
    /// Messages spooled here and not yet final: id → recipients left.
    live: RefCell<HashMap<u64, u32>>,
    /// Live messages whose delay DSN is spooled or being written. Never
    /// holds an id that is not in `live` for longer than the DSN's write.
    delay_notified: RefCell<HashSet<u64>>,
    /// The live set reached its limit (warned once per episode).
    live_full: Cell<bool>,
    next_sequence: Cell<u64>,
    next_connection: Cell<u64>,
}

impl Messages {
    /// `max_recovered_id` is the largest id recovery saw: new ids start
    /// past it and past the clock, so ids never repeat.
    pub fn new(
        env: Rc<ShardEnv>,
        bindings: Rc<Bindings>,
        spool: Spool,
        headers: BodyReader,
        now_unix_ms: u64,
        max_recovered_id: u64,
    ) -> Messages {
        let now_secs = now_unix_ms / 1000;
        let first_sequence = ((now_secs << 20).max((max_recovered_id >> 8) + 1)) + 1;
        Messages {
            env,
            bindings,
            spool,
            headers,
            live: RefCell::new(HashMap::new()),
            delay_notified: RefCell::new(HashSet::new()),
            live_full: Cell::new(false),
            next_sequence: Cell::new(first_sequence),
            // Connection ids count from the middle of the same space so
            // they never read like a message id of the same moment.
            next_connection: Cell::new(first_sequence + (1 << 19)),
        }
    }

    fn next_message_id(&self) -> MessageId {
        let s = self.next_sequence.get();
        self.next_sequence.set(s + 1);
        MessageId::new(self.env.id, s)
    }

    /// Connection ids look like message ids but count separately.
    pub fn next_connection_id(&self) -> u64 {
        let c = self.next_connection.get();
        self.next_connection.set(c + 1);
        MessageId::new(self.env.id, c).0
    }

    pub fn live_count(&self) -> usize {
        self.live.borrow().len()
    }

    /// A new id for a message about to be spooled, or a refusal when the
    /// live set is full (then nothing is spooled: the client gets 451).
    pub fn admit(&self) -> Result<MessageId, RefusedBecause> {
        if self.live.borrow().len() >= LIVE_MESSAGES_PER_SHARD_MAX {
            if !self.live_full.replace(true) {
                tracing::warn!(
                    shard = self.env.id,
                    "{LIVE_MESSAGES_PER_SHARD_MAX} messages spooled and undelivered: new \
                     messages get 451 4.3.0 until deliveries catch up (is the \
                     destination down? see the console's summary)"
                );
            }
            return Err(RefusedBecause::LiveSetFull);
        }
        self.live_full.set(false);
        Ok(self.next_message_id())
    }

    /// Makes message `id` durable; it is live from then on. Resolves after
    /// the group commit that covers it.
    pub async fn spool(
        &self,
        id: MessageId,
        envelope: &SpooledEnvelope,
        body: &[u8],
    ) -> Result<Spooled, RefusedBecause> {
        let mut encoded =
            Vec::with_capacity(64 + envelope.rcpts.iter().map(|r| r.len() + 2).sum::<usize>());
        envelope.encode(&mut encoded);
        let body = self
            .spool
            .append_message(id.0, &encoded, body)
            .await
            .map_err(RefusedBecause::Spool)?;
        self.now_live(id, envelope);
        Ok(Spooled { id, body })
    }

    /// Makes message `id`, whose body was streamed to its own file and
    /// synced there (`inbound::stream`), durable; it is live from then on.
    /// Resolves after the group commit that covers its record. On an error
    /// the body file is removed: it never became a message.
    pub async fn spool_file(
        &self,
        id: MessageId,
        envelope: &SpooledEnvelope,
        body: &FileBody,
    ) -> Result<Spooled, RefusedBecause> {
        assert_eq!(id.0, body.id, "a body file belongs to its message");
        let mut encoded =
            Vec::with_capacity(64 + envelope.rcpts.iter().map(|r| r.len() + 2).sum::<usize>());
        envelope.encode(&mut encoded);
        let body = match self.spool.append_message_file(&encoded, body).await {
            Ok(body) => body,
            Err(e) => {
                self.spool.discard_body_file(id.0).await;
                return Err(RefusedBecause::Spool(e));
            }
        };
        self.now_live(id, envelope);
        Ok(Spooled { id, body })
    }

    /// A message just became durable: it joins the live set.
    fn now_live(&self, id: MessageId, envelope: &SpooledEnvelope) {
        let stats = self.env.stats();
        stats.add(Counter::MessagesReceived, 1);
        stats.add(Counter::LiveMessages, 1);
        self.live
            .borrow_mut()
            .insert(id.0, envelope.rcpts.len() as u32);
    }

    /// Writes the mainlog R lines of a spooled message, one per recipient.
    /// `peer_ip` is `None` for a message written here (a DSN).
    pub fn log_receptions(
        &self,
        id: MessageId,
        envelope: &SpooledEnvelope,
        size_bytes: u64,
        peer_ip: Option<IpAddr>,
        protocol: &str,
    ) {
        let message_id = id.to_string();
        let connection_id = MessageId(envelope.connection_id).to_string();
        let ids = RecordIds {
            unix_secs: envelope.received_unix_ms / 1000,
            message_id: &message_id,
            batch_id: &message_id,
            connection_id: &connection_id,
        };
        let binding = self.bindings.id(&envelope.binding);
        self.env.logs.mainlog(|buf| {
            for rcpt in &envelope.rcpts {
                let r = Reception {
                    rcpt,
                    mail_from: &envelope.mail_from,
                    peer_ip,
                    size_bytes,
                    protocol,
                    binding_group: self.bindings.group(binding),
                    binding: self.bindings.name(binding),
                };
                format_reception(buf, &ids, &r);
            }
        });
        if self.env.events.is_enabled() {
            self.log_injection_events(&message_id, envelope, size_bytes, peer_ip, protocol);
        }
    }

    /// One `injection` event per recipient, flushed at once: the lines are
    /// in the event log before the message goes to delivery, so no
    /// delivery, delay or bounce event of it can come first.
    fn log_injection_events(
        &self,
        message_id: &str,
        envelope: &SpooledEnvelope,
        size_bytes: u64,
        peer_ip: Option<IpAddr>,
        protocol: &str,
    ) {
        let binding = self.bindings.id(&envelope.binding);
        let ip = peer_ip.map(|ip| ip.to_string());
        let generation = envelope
            .extension(crate::api::TAG_EVENT_FIELDS)
            .and_then(|v| std::str::from_utf8(v).ok());
        let events = &self.env.events;
        {
            for rcpt in &envelope.rcpts {
                let event_id = events.next_id();
                let e = Event {
                    kind: EventType::Injection,
                    event_id,
                    unix_secs: envelope.received_unix_ms / 1000,
                    message_id,
                    rcpt_to: rcpt,
                    msg_from: &envelope.mail_from,
                    binding: self.bindings.name(binding),
                    binding_group: self.bindings.group(binding),
                    msg_size: Some(size_bytes),
                    ip_address: ip.as_deref(),
                    num_retries: None,
                    queue_time_ms: None,
                    raw_reason: None,
                    bounce_class: None,
                    method: protocol,
                    generation,
                };
                events.record(&e);
            }
        }
        events.flush();
    }

    /// Splits a spooled message into queue entries, one per (binding,
    /// domain), for the recipients given as (index, attempts, next attempt).
    pub fn entries_for(
        &self,
        id: MessageId,
        body: BodyRef,
        envelope: &SpooledEnvelope,
        pending: impl Iterator<Item = (u32, u32, u64)>,
    ) -> Vec<MessageRef> {
        let binding = self.bindings.id(&envelope.binding);
        let params = message_params(envelope);
        let mut by_domain: Vec<MessageRef> = Vec::new();
        let (event_fields, not_before) = crate::api::generated_parts(envelope);
        for (index, attempts, next_attempt_unix_ms) in pending {
            // A transmission's start_time holds its first attempt back.
            let next_attempt_unix_ms = if attempts == 0 {
                next_attempt_unix_ms.max(not_before)
            } else {
                next_attempt_unix_ms
            };
            let rcpt = &envelope.rcpts[index as usize];
            let domain = domain_of(rcpt);
            let existing = by_domain.iter_mut().find(|e| {
                *e.domain == *domain
                    && e.attempts == attempts
                    && e.next_attempt_unix_ms == next_attempt_unix_ms
            });
            match existing {
                Some(e) => e.rcpts.push((index, rcpt.as_str().into())),
                None => by_domain.push(MessageRef {
                    id,
                    body,
                    mail_from: envelope.mail_from.as_str().into(),
                    rcpts: vec![(index, rcpt.as_str().into())],
                    binding,
                    domain: domain.into(),
                    received_unix_ms: envelope.received_unix_ms,
                    attempts,
                    next_attempt_unix_ms,
                    connection_id: envelope.connection_id,
                    body_8bitmime: envelope.body_8bitmime,
                    params: params.clone(),
                    event_fields: event_fields.clone(),
                }),
            }
        }
        by_domain
    }

    /// Records a batch of outcomes for messages spooled here. Permanent
    /// failures that call for a DSN (`generate_bounces`, and a return path
    /// that is not null) are grouped per message: one DSN each, spooled and
    /// routed through `router`, and only then recorded. The rest is
    /// recorded at once.
    pub fn on_outcomes(self: &Rc<Self>, outcomes: Vec<Outcome>, router: &Rc<Router>) {
        for outcome in &outcomes {
            assert_eq!(
                outcome.id.home_shard(),
                self.env.id,
                "outcome sent to the wrong home shard"
            );
        }
        let (outcomes, delays) = split_delays(outcomes);
        for (id, delay) in delays {
            self.notify_delay(id, delay, router);
        }
        let (now, bouncing) = split_bounces(outcomes);
        for outcome in now {
            self.on_outcome(outcome);
        }
        for (id, failed) in bouncing {
            let (messages, router) = (self.clone(), router.clone());
            glommio::spawn_local(async move { messages.bounce(id, failed, &router).await })
                .detach();
        }
    }

    /// Sends the delay DSN of message `id` unless it had one or is no
    /// longer live: at most one per message.
    fn notify_delay(self: &Rc<Self>, id: MessageId, delay: Delay, router: &Rc<Router>) {
        if !self.live.borrow().contains_key(&id.0) {
            return;
        }
        if !self.delay_notified.borrow_mut().insert(id.0) {
            return;
        }
        let (messages, router) = (self.clone(), router.clone());
        glommio::spawn_local(async move { messages.send_delay_dsn(id, delay, &router).await })
            .detach();
    }

    /// Writes, spools and routes the delay DSN of message `id`, then notes
    /// in the spool that it was sent. If it cannot be spooled, the next
    /// report of the message's delay tries again.
    async fn send_delay_dsn(&self, id: MessageId, delay: Delay, router: &Rc<Router>) {
        let params = delay.params.as_deref();
        let recipients: Vec<FailedRecipient<'_>> = delay
            .rcpts
            .iter()
            .zip(&delay.rcpt_indexes)
            .map(|((rcpt, reply), index)| FailedRecipient {
                rcpt,
                reply,
                original: original_recipient(params, *index),
                relayed: false,
            })
            .collect();
        let report = Report::Delayed {
            will_retry_until_unix_secs: (delay.will_retry_until_unix_ms / 1000) as i64,
        };
        let original = Original {
            id,
            body: delay.body,
            mail_from: &delay.mail_from,
            received_unix_ms: delay.received_unix_ms,
            binding: delay.binding,
            params,
        };
        let entries = match self.inject_report(&original, report, &recipients).await {
            Ok(entries) => entries,
            Err(e) => {
                self.delay_notified.borrow_mut().remove(&id.0);
                if !matches!(e, RefusedBecause::Spool(SpoolError::Closed)) {
                    tracing::error!(
                        "spool: cannot spool the delay DSN of {id} ({e:?}); it is tried \
                         again at the message's next deferral"
                    );
                }
                return;
            }
        };
        drop(recipients);
        if self.live.borrow().contains_key(&id.0) {
            let mut buf = Vec::with_capacity(32);
            Note::DelayDsnSent.encode(&mut buf);
            if let Err(e) = self.spool.append_note(id.0, &buf).await {
                tracing::debug!(
                    "spool: delay DSN of {id} not noted ({e}); a restart may repeat it"
                );
            }
        }
        router.route(entries).await;
    }

    /// Builds the DSN reporting `recipients` of `original` and injects it
    /// (see [`Messages::inject`]), addressed to the original's return path
    /// from the null sender. The original's header block is read from this
    /// shard's spool; the DSN goes without it when it cannot be read.
    async fn inject_report(
        &self,
        original: &Original<'_>,
        report: Report,
        recipients: &[FailedRecipient<'_>],
    ) -> Result<Vec<MessageRef>, RefusedBecause> {
        let id = original.id;
        assert!(!original.mail_from.is_empty(), "no DSN to the null sender");
        let mut headers_read = Vec::new();
        // RET=FULL on a failure DSN returns the whole message when it is
        // small enough, else (and otherwise) its headers (RFC 3461 4.3).
        let return_full = report == Report::Failed
            && original.params.is_some_and(|p| p.ret == Some(Ret::Full))
            && original.body.len as usize <= RETURNED_MESSAGE_BYTES_MAX;
        let read_max = if return_full {
            RETURNED_MESSAGE_BYTES_MAX
        } else {
            DSN_HEADER_READ_BYTES_MAX
        };
        let head = BodyRef {
            len: original.body.len.min(read_max as u32),
            ..original.body
        };
        if let Err(e) = self.headers.read(&head, &mut headers_read).await {
            tracing::error!(
                "spool: cannot read the headers of {id} for its DSN ({e}); the DSN goes \
                 without them"
            );
            headers_read.clear();
        }
        let now = now_unix_ms();
        let dsn_id = self.next_message_id();
        let reporting_mta = self.env.config.get().hostname().to_string();
        let original_id = id.to_string();
        let dsn_name = dsn_id.to_string();
        let headers = dsn::original_headers(&headers_read);
        let returned_message = (return_full && headers_read.len() == original.body.len as usize)
            .then_some(headers_read.as_slice());
        let body = dsn::build(&dsn::Dsn {
            reporting_mta: &reporting_mta,
            return_path: original.mail_from,
            original_id: &original_id,
            dsn_id: &dsn_name,
            arrival_unix_secs: (original.received_unix_ms / 1000) as i64,
            now_unix_secs: (now / 1000) as i64,
            failed: recipients,
            report,
            original_headers: headers,
            envid: original.params.and_then(|p| p.envid.as_deref()),
            returned_message,
        });
        let envelope = SpooledEnvelope {
            received_unix_ms: now,
            // Written here: the loopback address stands for "this host".
            peer_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            connection_id: self.next_connection_id(),
            body_8bitmime: returned_message
                .unwrap_or(headers)
                .iter()
                .any(|&b| b >= 0x80),
            // Momentum sends a bounce through the binding of the message
            // that bounced.
            binding: self.bindings.name(original.binding).to_string(),
            mail_from: String::new(),
            rcpts: vec![original.mail_from.to_string()],
            // To a UTF-8 return path the DSN needs SMTPUTF8 itself.
            extensions: dsn_extensions(original.mail_from),
        };
        self.inject(dsn_id, &envelope, &body).await
    }

    /// Writes, spools and routes the DSN for `failed` (permanent failures
    /// of message `id`, each with a DSN due), then records the failures.
    /// When the DSN cannot be spooled the failures stay unrecorded: the
    /// recipients stay live and, after a restart, are tried (and bounced)
    /// again.
    async fn bounce(&self, id: MessageId, failed: Vec<Outcome>, router: &Rc<Router>) {
        let failures: Vec<(&Failure, bool)> = failed
            .iter()
            .filter_map(|o| match &o.kind {
                OutcomeKind::Failed(f) => Some((&**f, false)),
                OutcomeKind::Relayed(f) => Some((&**f, true)),
                _ => None,
            })
            .collect();
        let first = failures[0].0;
        let recipients: Vec<FailedRecipient<'_>> = failures
            .iter()
            .map(|(f, relayed)| FailedRecipient {
                rcpt: &f.rcpt,
                reply: &f.reply,
                original: original_recipient(f.params.as_deref(), f.rcpt_index),
                relayed: *relayed,
            })
            .collect();
        let report = if failures.iter().all(|(_, relayed)| *relayed) {
            Report::Relayed
        } else {
            Report::Failed
        };
        let original = Original {
            id,
            body: first.body,
            mail_from: &first.mail_from,
            received_unix_ms: first.received_unix_ms,
            binding: first.binding,
            params: first.params.as_deref(),
        };
        let injected = self.inject_report(&original, report, &recipients).await;
        drop(recipients);
        let entries = match injected {
            Ok(entries) => entries,
            // A closed spool is the normal end of a shutdown.
            Err(RefusedBecause::Spool(SpoolError::Closed)) => {
                tracing::debug!("spool closed: the failures of {id} are replayed after restart");
                return;
            }
            Err(e) => {
                tracing::error!(
                    "spool: cannot spool the DSN of {id} ({e:?}); its failed recipients \
                     stay live and are tried again after a restart"
                );
                return;
            }
        };
        for outcome in failed {
            self.on_outcome(outcome);
        }
        router.route(entries).await;
    }

    /// Spools a message this shard wrote (a DSN) under `id`, writes its R
    /// lines and returns its queue entries. It is not held to the live-set
    /// limit: refusing it would lose the bounce, and it replaces failures
    /// that leave the live set.
    pub async fn inject(
        &self,
        id: MessageId,
        envelope: &SpooledEnvelope,
        body: &[u8],
    ) -> Result<Vec<MessageRef>, RefusedBecause> {
        let spooled = self.spool(id, envelope, body).await?;
        self.log_receptions(id, envelope, body.len() as u64, None, PROTOCOL_INTERNAL);
        let pending = (0..envelope.rcpts.len() as u32).map(|i| (i, 0, 0));
        Ok(self.entries_for(id, spooled.body, envelope, pending))
    }

    /// Takes back message `id`, spooled here and not yet handed to
    /// delivery (a transmission whose other messages could not be
    /// spooled): it leaves the live set and is completed in the spool.
    pub async fn withdraw(&self, id: MessageId) -> Result<(), SpoolError> {
        assert_eq!(id.home_shard(), self.env.id, "withdrawn by its home shard");
        if self.live.borrow_mut().remove(&id.0).is_some() {
            self.env.stats().sub(Counter::LiveMessages, 1);
        }
        self.spool.complete(id.0).await
    }

    /// Records an outcome for a message spooled here: a note for the
    /// recipients, and the message's completion once none is left. The
    /// spool write rides on the next group commit.
    fn on_outcome(&self, outcome: Outcome) {
        let id = outcome.id.0;
        let note = match outcome.kind {
            OutcomeKind::Delivered | OutcomeKind::Failed { .. } | OutcomeKind::Relayed(_) => {
                let mut live = self.live.borrow_mut();
                let Some(left) = live.get_mut(&id) else {
                    return;
                };
                *left = left.saturating_sub(outcome.rcpts.len() as u32);
                if *left == 0 {
                    live.remove(&id);
                    self.delay_notified.borrow_mut().remove(&id);
                    self.env.stats().sub(Counter::LiveMessages, 1);
                    None
                } else {
                    Some(Note::Done {
                        rcpts: outcome.rcpts,
                    })
                }
            }
            OutcomeKind::Retry {
                attempts,
                next_attempt_unix_ms,
            } => Some(Note::Retry {
                rcpts: outcome.rcpts,
                attempts,
                next_attempt_unix_ms,
            }),
            // `on_outcomes` takes these out; they change no recipient.
            OutcomeKind::Delayed(_) => return,
        };
        let spool = self.spool.clone();
        glommio::spawn_local(async move {
            let result = match note {
                Some(note) => {
                    let mut buf = Vec::with_capacity(32);
                    note.encode(&mut buf);
                    spool.append_note(id, &buf).await
                }
                None => spool.complete(id).await,
            };
            // On error the message stays live on disk: after a restart it
            // is delivered again (a duplicate, never a loss). A closed
            // spool is the normal end of a shutdown, not worth an error.
            match result {
                Ok(()) => {}
                Err(SpoolError::Closed) => tracing::debug!(
                    "spool closed: the outcome of {} is replayed after restart",
                    MessageId(id)
                ),
                Err(e) => {
                    tracing::error!("spool: cannot record the outcome of {}: {e}", MessageId(id))
                }
            }
        })
        .detach();
    }

    /// Takes back what recovery found: each live message's recipients that
    /// have no final outcome, with their retry schedule, as queue entries
    /// for the caller to route. Messages whose every recipient is final
    /// (their completion was lost) are completed now.
    pub async fn recover(&self, messages: Vec<RecoveredMessage>) -> Vec<MessageRef> {
        let mut entries = Vec::new();
        for m in messages {
            let envelope = match SpooledEnvelope::decode(&m.envelope) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(
                        "spool: message {} has an unreadable envelope ({e}); left in the spool",
                        MessageId(m.id)
                    );
                    continue;
                }
            };
            let pending = pending_recipients(&envelope, &m);
            if pending.is_empty() {
                let _ = self.spool.complete(m.id).await;
                continue;
            }
            self.live.borrow_mut().insert(m.id, pending.len() as u32);
            if delay_dsn_sent(&m) {
                self.delay_notified.borrow_mut().insert(m.id);
            }
            entries.extend(self.entries_for(
                MessageId(m.id),
                m.body,
                &envelope,
                pending.into_iter(),
            ));
        }
        self.env
            .stats()
            .set(Counter::LiveMessages, self.live.borrow().len() as u64);
        entries
    }
}

/// The original message a DSN reports on.
struct Original<'a> {
    id: MessageId,
    body: BodyRef,
    /// Its return path: the DSN's recipient. Never empty.
    mail_from: &'a str,
    received_unix_ms: u64,
    /// Its binding: the DSN leaves through it.
    binding: BindingId,
    /// Its SMTPUTF8 and DSN parameters (ENVID, RET), if it has any.
    params: Option<&'a MessageParams>,
}

/// Takes the delay reports out of a batch of outcomes, merged per message
/// (in order of first appearance): the recipients of every report of a
/// message in the batch go into its one delay DSN.
/// A message's SMTPUTF8 and DSN parameters from its envelope's extension
/// fields, shared by its queue entries; `None` when it has none.
fn message_params(envelope: &SpooledEnvelope) -> Option<Arc<MessageParams>> {
    let params = MessageParams::from_extensions(|tag| envelope.extension(tag));
    (!params.is_empty()).then(|| Arc::new(params))
}

/// A recipient's `ORCPT`, for `Original-Recipient`.
fn original_recipient(params: Option<&MessageParams>, index: u32) -> Option<(&str, &str)> {
    let (addr_type, address) = params?.rcpt(index)?.orcpt.as_ref()?;
    Some((addr_type.as_str(), address.as_str()))
}

/// A DSN's envelope extensions: SMTPUTF8 when its recipient (the
/// original's return path) is a UTF-8 address.
fn dsn_extensions(return_path: &str) -> Vec<EnvelopeExtension> {
    if return_path.is_ascii() {
        return Vec::new();
    }
    let params = MessageParams {
        smtputf8: true,
        ..MessageParams::default()
    };
    params
        .to_extensions()
        .into_iter()
        .map(|(tag, value)| EnvelopeExtension { tag, value })
        .collect()
}

fn split_delays(outcomes: Vec<Outcome>) -> (Vec<Outcome>, Vec<(MessageId, Delay)>) {
    if !outcomes
        .iter()
        .any(|o| matches!(o.kind, OutcomeKind::Delayed(_)))
    {
        return (outcomes, Vec::new());
    }
    let mut rest = Vec::with_capacity(outcomes.len());
    let mut delays: Vec<(MessageId, Delay)> = Vec::new();
    for outcome in outcomes {
        let OutcomeKind::Delayed(delay) = outcome.kind else {
            rest.push(outcome);
            continue;
        };
        match delays.iter_mut().find(|(id, _)| *id == outcome.id) {
            Some((_, merged)) => {
                merged.rcpts.extend(delay.rcpts);
                merged.rcpt_indexes.extend(delay.rcpt_indexes);
            }
            None => delays.push((outcome.id, *delay)),
        }
    }
    (rest, delays)
}

/// Whether a recovered message's delay DSN was spooled before the restart.
fn delay_dsn_sent(m: &RecoveredMessage) -> bool {
    m.notes
        .iter()
        .any(|note| matches!(Note::decode(note), Ok(Note::DelayDsnSent)))
}

/// Splits a batch of outcomes into those recorded at once and, per message
/// (in order of first appearance), the permanent failures that call for a
/// DSN: `generate_bounce` set and a return path that is not null (never a
/// bounce of a bounce; the P and B lines are all that is written then).
fn split_bounces(outcomes: Vec<Outcome>) -> (Vec<Outcome>, Vec<(MessageId, Vec<Outcome>)>) {
    let mut now = Vec::with_capacity(outcomes.len());
    let mut bouncing: Vec<(MessageId, Vec<Outcome>)> = Vec::new();
    let mut group_of: HashMap<u64, usize> = HashMap::new();
    for outcome in outcomes {
        let due = match &outcome.kind {
            OutcomeKind::Failed(f) if f.generate_bounce && f.mail_from.is_empty() => {
                tracing::debug!("{}: no DSN for {} (null return path)", outcome.id, f.rcpt);
                false
            }
            OutcomeKind::Failed(f) => f.generate_bounce,
            // A success DSN: never to the null sender either.
            OutcomeKind::Relayed(f) => !f.mail_from.is_empty(),
            _ => false,
        };
        if !due {
            now.push(outcome);
            continue;
        }
        match group_of.get(&outcome.id.0) {
            Some(&at) => bouncing[at].1.push(outcome),
            None => {
                group_of.insert(outcome.id.0, bouncing.len());
                bouncing.push((outcome.id, vec![outcome]));
            }
        }
    }
    (now, bouncing)
}

/// The recipients of a recovered message without a final outcome, as
/// (index, attempts, next attempt), from its notes.
fn pending_recipients(envelope: &SpooledEnvelope, m: &RecoveredMessage) -> Vec<(u32, u32, u64)> {
    let n = envelope.rcpts.len();
    let mut done = vec![false; n];
    let mut schedule = vec![(0u32, 0u64); n];
    for note in &m.notes {
        match Note::decode(note) {
            Ok(Note::Done { rcpts }) => rcpts
                .iter()
                .filter(|&&i| (i as usize) < n)
                .for_each(|&i| done[i as usize] = true),
            Ok(Note::Retry {
                rcpts,
                attempts,
                next_attempt_unix_ms,
            }) => {
                for &i in rcpts.iter().filter(|&&i| (i as usize) < n) {
                    schedule[i as usize] = (attempts, next_attempt_unix_ms);
                }
            }
            Ok(Note::DelayDsnSent) => {}
            Err(e) => tracing::warn!(
                "spool: unreadable note for {} ignored: {e}",
                MessageId(m.id)
            ),
        }
    }
    (0..n)
        .filter(|&i| !done[i])
        .map(|i| (i as u32, schedule[i].0, schedule[i].1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(id: MessageId, index: u32, mail_from: &str, generate_bounce: bool) -> Outcome {
        Outcome {
            id,
            rcpts: vec![index],
            kind: OutcomeKind::Failed(Box::new(Failure {
                reply: "550 5.1.1 user unknown".into(),
                stage: 4,
                rcpt: format!("r{index}@example.com").into(),
                mail_from: mail_from.into(),
                body: BodyRef {
                    segment: 1,
                    offset: 0,
                    len: 10,
                },
                received_unix_ms: 0,
                generate_bounce,
                binding: Bindings::DEFAULT,
                params: None,
                rcpt_index: index,
            })),
        }
    }

    /// Goal: one DSN per message per batch, none for a null return path or
    /// where generate_bounces is off. Method: a batch mixing deliveries
    /// and failures of three messages, split.
    #[test]
    fn failures_group_per_message_and_skip_null_senders_and_disabled_bounces() {
        let (a, b, c) = (
            MessageId::new(0, 1),
            MessageId::new(0, 2),
            MessageId::new(0, 3),
        );
        let batch = vec![
            failed(a, 0, "s@example.net", true),
            Outcome {
                id: a,
                rcpts: vec![1],
                kind: OutcomeKind::Delivered,
            },
            failed(b, 0, "", true),
            failed(c, 0, "s@example.net", false),
            failed(a, 2, "s@example.net", true),
        ];
        let (now, bouncing) = split_bounces(batch);
        assert_eq!(bouncing.len(), 1);
        assert_eq!(bouncing[0].0, a);
        let rcpts: Vec<u32> = bouncing[0].1.iter().map(|o| o.rcpts[0]).collect();
        assert_eq!(rcpts, [0, 2]);
        let ids: Vec<MessageId> = now.iter().map(|o| o.id).collect();
        assert_eq!(ids, [a, b, c], "recorded at once, in order");
    }

    fn delayed(id: MessageId, index: u32) -> Outcome {
        Outcome {
            id,
            rcpts: vec![index],
            kind: OutcomeKind::Delayed(Box::new(Delay {
                rcpts: vec![(
                    format!("r{index}@example.com").into(),
                    "451 4.2.0 later".into(),
                )],
                mail_from: "s@example.net".into(),
                body: BodyRef {
                    segment: 1,
                    offset: 0,
                    len: 10,
                },
                received_unix_ms: 0,
                binding: Bindings::DEFAULT,
                will_retry_until_unix_ms: 86_400_000,
                params: None,
                rcpt_indexes: vec![index],
            })),
        }
    }

    /// Goal: one delay DSN per message per batch, naming every delayed
    /// recipient the batch reports, and the recipients' other outcomes
    /// untouched. Method: a batch with two delay reports of one message
    /// (two domains), one of another, and a retry, split.
    #[test]
    fn delay_reports_merge_per_message_and_leave_other_outcomes_alone() {
        let (a, b) = (MessageId::new(0, 1), MessageId::new(0, 2));
        let retry = Outcome {
            id: a,
            rcpts: vec![0],
            kind: OutcomeKind::Retry {
                attempts: 2,
                next_attempt_unix_ms: 5,
            },
        };
        let batch = vec![delayed(a, 0), retry, delayed(b, 0), delayed(a, 1)];
        let (rest, delays) = split_delays(batch);
        assert_eq!(rest.len(), 1);
        assert!(matches!(
            rest[0].kind,
            OutcomeKind::Retry { attempts: 2, .. }
        ));
        assert_eq!(delays.len(), 2);
        assert_eq!(delays[0].0, a);
        let rcpts: Vec<&str> = delays[0].1.rcpts.iter().map(|(r, _)| &**r).collect();
        assert_eq!(rcpts, ["r0@example.com", "r1@example.com"]);
        assert_eq!(delays[1].0, b);
        assert!(!OutcomeKind::Delayed(delays[1].1.clone().into()).is_final());
    }
}
