//! The life of a message on its home shard (the shard that received and
//! spooled it): admission against the live-set limit, spooling, splitting
//! into queue entries, recording outcomes, completion, and requeueing what
//! recovery found after a restart.
//!
//! Owns: the live set (message id → recipients not yet final), message
//! ids, the engine's notes and completions in the spool.
//! May call: the spool, `queue` (entries, records), `mesh` (outcome types),
//! `env`. Never: queues of any shard (it returns entries; the caller
//! routes them), sockets.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use ecelerity_spool::{BodyRef, RecoveredMessage, Spool, SpoolError};

use crate::env::ShardEnv;
use crate::mesh::{Outcome, OutcomeKind};
use crate::queue::record::{Note, SpooledEnvelope};
use crate::queue::{domain_of, Bindings, MessageId, MessageRef, LIVE_MESSAGES_PER_SHARD_MAX};
use crate::stats::Counter;

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
    /// Messages spooled here and not yet final: id → recipients left.
    live: RefCell<HashMap<u64, u32>>,
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
        now_unix_ms: u64,
        max_recovered_id: u64,
    ) -> Messages {
        let now_secs = now_unix_ms / 1000;
        let first_sequence = ((now_secs << 20).max((max_recovered_id >> 8) + 1)) + 1;
        Messages {
            env,
            bindings,
            spool,
            live: RefCell::new(HashMap::new()),
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
        let stats = self.env.stats();
        stats.add(Counter::MessagesReceived, 1);
        stats.add(Counter::LiveMessages, 1);
        self.live
            .borrow_mut()
            .insert(id.0, envelope.rcpts.len() as u32);
        Ok(Spooled { id, body })
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
        let mut by_domain: Vec<MessageRef> = Vec::new();
        for (index, attempts, next_attempt_unix_ms) in pending {
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
                }),
            }
        }
        by_domain
    }

    /// Records an outcome for a message spooled here: a note for the
    /// recipients, and the message's completion once none is left. The
    /// spool write rides on the next group commit.
    pub fn on_outcome(&self, outcome: Outcome) {
        assert_eq!(
            outcome.id.home_shard(),
            self.env.id,
            "outcome sent to the wrong home shard"
        );
        let id = outcome.id.0;
        let note = match outcome.kind {
            OutcomeKind::Delivered | OutcomeKind::Failed { .. } => {
                let mut live = self.live.borrow_mut();
                let Some(left) = live.get_mut(&id) else {
                    return;
                };
                *left = left.saturating_sub(outcome.rcpts.len() as u32);
                if *left == 0 {
                    live.remove(&id);
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
