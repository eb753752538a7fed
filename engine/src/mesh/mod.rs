//! Cross-shard traffic: what crosses ([`ShardMsg`]), who owns what (the
//! queue owner of an entry, the home of an outcome), and the outbox that
//! batches everything bound for one peer in a loop turn into one channel
//! message over glommio's channel mesh.
//!
//! Owns: [`Router`] (routing entries to queue owners and outcomes to home
//! shards, the per-peer outbox, the flush tasks, the `delivery_shards`
//! cache), the [`Inbox`] trait a shard implements to take what is routed
//! to itself, and the message types that cross.
//! May call: `queue` (keys and entries), `control` (the envelope type),
//! `config` through `env`. Never:
//! queues, the spool or sockets; it only carries.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use ecelerity_spool::BodyRef;
use glommio::channels::channel_mesh::Senders;

use crate::control;
use crate::env::ShardEnv;
use crate::queue::{delivery_parts, part_owner, BindingId, Bindings, MessageId, MessageRef};
use crate::smtp::params::MessageParams;

/// Depth of each shard-to-shard channel. 1024 streams well; 64 churns on
/// park and wake (MEASURED.md).
pub const SHARD_CHANNEL_MESSAGES_MAX: usize = 1024;
/// Most items waiting in the outbox for one peer before the shard that
/// fills it waits for the flush.
pub const OUTBOX_ITEMS_MAX: usize = 4096;
/// Most (binding, domain) keys whose `delivery_shards` a shard remembers;
/// the cache is emptied when full.
const PARTS_CACHE_KEYS_MAX: usize = 65_536;

/// What crosses between shards: small, owned, batched where possible.
pub enum ShardMsg {
    /// Queue entries for keys the receiving shard owns.
    Enqueue(Vec<MessageRef>),
    /// Outcomes for messages whose home is the receiving shard.
    Outcome(Vec<Outcome>),
    /// A control request (console, later HTTP) and where to answer.
    Control(control::Envelope),
    /// A step of a REST transmission's generation (`api::generate`).
    Generate(Box<crate::api::generate::GenerateJob>),
}

/// The outcome of some recipients of one message, sent to its home shard.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: MessageId,
    pub rcpts: Vec<u32>,
    pub kind: OutcomeKind,
}

#[derive(Debug, Clone)]
pub enum OutcomeKind {
    /// Delivered: nothing more to do for them.
    Delivered,
    /// Failed permanently: the reply that decided it, and what the home
    /// shard needs for the DSN (boxed: failures are rare, and the other
    /// kinds stay small).
    Failed(Box<Failure>),
    /// Failed transiently; the queue owner will try again then.
    Retry {
        attempts: u32,
        next_attempt_unix_ms: u64,
    },
    /// Still deferred `delay_dsn_retry_interval` after reception, with
    /// `generate_delay_dsn` on and a return path that is not null: what
    /// the home shard needs for a delay DSN. Sent beside the recipients'
    /// `Retry`, and changes nothing about them; the home shard sends one
    /// delay DSN per message and ignores the rest.
    Delayed(Box<Delay>),
    /// Delivered to a next hop that does not offer DSN, for a recipient
    /// with `NOTIFY=SUCCESS`: final like `Delivered`, and a success DSN
    /// (`Action: relayed`, RFC 3461 section 6.2) is due. The `Failure`
    /// carries what the DSN needs; its reply is the one that accepted.
    Relayed(Box<Failure>),
}

/// Recipients of one message still deferred past the delay DSN threshold.
#[derive(Debug, Clone)]
pub struct Delay {
    /// Each delayed recipient and the reply of its last attempt.
    pub rcpts: Vec<(Box<str>, Box<str>)>,
    /// The message's return path; never empty (no DSN to the null sender).
    pub mail_from: Box<str>,
    /// Where the original's body sits in its home shard's spool.
    pub body: BodyRef,
    pub received_unix_ms: u64,
    /// The message's binding: the delay DSN leaves through it, like a bounce.
    pub binding: BindingId,
    /// When the retries stop: `message_expiration` after reception.
    pub will_retry_until_unix_ms: u64,
    /// The message's DSN parameters (ENVID, ORCPT), if it has any.
    pub params: Option<Arc<MessageParams>>,
    /// Each delayed recipient's index, beside `rcpts`.
    pub rcpt_indexes: Vec<u32>,
}

/// A permanent failure of one recipient, with what its home shard needs to
/// write a DSN. It travels with the failure so that the live set need not
/// keep every message's envelope for the few that fail.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The reply that decided it (remote, or our `554 5.4.7` on expiry).
    pub reply: Box<str>,
    /// Momentum's connection stage code the reply came at.
    pub stage: u8,
    pub rcpt: Box<str>,
    /// The message's return path; empty for the null sender (no DSN then).
    pub mail_from: Box<str>,
    /// Where the original's body sits in its home shard's spool (its
    /// header block goes into the DSN).
    pub body: BodyRef,
    pub received_unix_ms: u64,
    /// `generate_bounces` of the recipient's (binding, domain).
    pub generate_bounce: bool,
    /// The binding the message left from: its DSN leaves from it too.
    pub binding: BindingId,
    /// The message's SMTPUTF8 and DSN parameters (RET, ENVID, ORCPT), if
    /// it has any.
    pub params: Option<Arc<MessageParams>>,
    /// The recipient's index in the message's envelope.
    pub rcpt_index: u32,
}

impl OutcomeKind {
    /// Delivered or failed: the recipient needs no more work.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            OutcomeKind::Delivered | OutcomeKind::Failed(_) | OutcomeKind::Relayed(_)
        )
    }
}

/// What a shard takes from the mesh (and from itself).
pub trait Inbox {
    fn on_entries(&self, entries: Vec<MessageRef>);
    fn on_outcomes(&self, outcomes: Vec<Outcome>);
    fn on_control(&self, envelope: control::Envelope);
    fn on_generate(&self, job: Box<crate::api::generate::GenerateJob>);
}

/// What a shard has to send to each peer, gathered over a loop turn so
/// that one channel message carries many entries.
struct Outbox {
    enqueue: RefCell<Vec<Vec<MessageRef>>>,
    outcomes: RefCell<Vec<Vec<Outcome>>>,
    /// A flush task is on its way for this peer.
    scheduled: Vec<Cell<bool>>,
}

impl Outbox {
    fn new(count: usize) -> Outbox {
        Outbox {
            enqueue: RefCell::new((0..count).map(|_| Vec::new()).collect()),
            outcomes: RefCell::new((0..count).map(|_| Vec::new()).collect()),
            scheduled: (0..count).map(|_| Cell::new(false)).collect(),
        }
    }

    fn len(&self, peer: usize) -> usize {
        self.enqueue.borrow()[peer].len() + self.outcomes.borrow()[peer].len()
    }
}

/// Routes entries and outcomes to the shard that owns them: this shard's
/// [`Inbox`] directly, others through the outbox.
pub struct Router {
    env: Rc<ShardEnv>,
    bindings: Rc<Bindings>,
    mesh: Senders<ShardMsg>,
    outbox: Outbox,
    inbox: RefCell<Option<Weak<dyn Inbox>>>,
    /// `delivery_shards` of each key seen, resolved, and the configuration
    /// generation it was resolved for.
    parts_cache: RefCell<HashMap<(BindingId, Box<str>), usize>>,
    parts_generation: Cell<u64>,
}

impl Router {
    pub fn new(env: Rc<ShardEnv>, bindings: Rc<Bindings>, mesh: Senders<ShardMsg>) -> Router {
        let count = env.count;
        Router {
            env,
            bindings,
            mesh,
            outbox: Outbox::new(count),
            inbox: RefCell::new(None),
            parts_cache: RefCell::new(HashMap::new()),
            parts_generation: Cell::new(0),
        }
    }

    /// Where what is routed to this shard itself goes.
    pub fn set_inbox(&self, inbox: Weak<dyn Inbox>) {
        *self.inbox.borrow_mut() = Some(inbox);
    }

    fn local(&self) -> Option<Rc<dyn Inbox>> {
        self.inbox.borrow().as_ref()?.upgrade()
    }

    /// Hands queue entries to their owners.
    pub async fn route(self: &Rc<Self>, entries: Vec<MessageRef>) {
        let mut mine = Vec::new();
        for e in entries {
            let owner = self.entry_owner(&e);
            if owner == self.env.id {
                mine.push(e);
            } else {
                self.outbox.enqueue.borrow_mut()[owner].push(e);
                self.schedule_flush(owner).await;
            }
        }
        if !mine.is_empty() {
            if let Some(inbox) = self.local() {
                inbox.on_entries(mine);
            }
        }
    }

    /// Reports outcomes to the home shard of each message.
    pub async fn report(self: &Rc<Self>, outcomes: Vec<Outcome>) {
        let mut mine = Vec::new();
        for o in outcomes {
            let home = o.id.home_shard();
            if home == self.env.id {
                mine.push(o);
            } else {
                self.outbox.outcomes.borrow_mut()[home].push(o);
                self.schedule_flush(home).await;
            }
        }
        if !mine.is_empty() {
            if let Some(inbox) = self.local() {
                inbox.on_outcomes(mine);
            }
        }
    }

    /// Sends a control envelope to `peer` (or takes it here).
    pub async fn control(&self, peer: usize, envelope: control::Envelope) {
        if peer == self.env.id {
            if let Some(inbox) = self.local() {
                inbox.on_control(envelope);
            }
        } else if self
            .mesh
            .send_to(peer, ShardMsg::Control(envelope))
            .await
            .is_err()
        {
            tracing::warn!(
                shard = self.env.id,
                "shard {peer} is gone; control request dropped"
            );
        }
    }

    /// Sends a transmission's step to shard `peer` (never this shard).
    /// A gone peer drops it: the asker times out and takes its share back.
    pub async fn generate(&self, peer: usize, job: crate::api::generate::GenerateJob) {
        assert_ne!(peer, self.env.id, "a shard spools its own share itself");
        if self
            .mesh
            .send_to(peer, ShardMsg::Generate(Box::new(job)))
            .await
            .is_err()
        {
            tracing::warn!(
                shard = self.env.id,
                "shard {peer} is gone; generation step dropped"
            );
        }
    }

    /// The shard that owns the queue (part) an entry belongs in.
    pub fn entry_owner(&self, entry: &MessageRef) -> usize {
        let parts = self.parts_of(entry.binding, &entry.domain);
        part_owner(
            entry.binding,
            &entry.domain,
            entry.id,
            parts,
            self.env.count,
        )
    }

    /// Over how many shards a queue is spread (`delivery_shards`), from a
    /// per-shard cache so routing does not walk the configuration per
    /// message.
    fn parts_of(&self, binding: BindingId, domain: &str) -> usize {
        let generation = self.env.config.generation();
        if self.parts_generation.replace(generation) != generation {
            self.parts_cache.borrow_mut().clear();
        }
        let key = (binding, Box::<str>::from(domain));
        if let Some(&parts) = self.parts_cache.borrow().get(&key) {
            return parts;
        }
        let options = self
            .env
            .config
            .get()
            .delivery(self.bindings.name(binding), domain);
        let parts = delivery_parts(options.delivery_shards, self.env.count);
        let mut cache = self.parts_cache.borrow_mut();
        if cache.len() >= PARTS_CACHE_KEYS_MAX {
            cache.clear();
        }
        cache.insert(key, parts);
        parts
    }

    /// Makes sure a flush task will carry the outbox of `peer`, and holds
    /// the caller while that outbox is over [`OUTBOX_ITEMS_MAX`] (the peer
    /// is not keeping up: back-pressure reaches the SMTP client).
    async fn schedule_flush(self: &Rc<Self>, peer: usize) {
        if !self.outbox.scheduled[peer].replace(true) {
            let router = self.clone();
            glommio::spawn_local(async move { router.flush_outbox(peer).await }).detach();
        }
        while self.outbox.len(peer) > OUTBOX_ITEMS_MAX && self.outbox.scheduled[peer].get() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sends everything queued for `peer`, in batches, until the outbox
    /// stays empty. It first yields once, so that every task that runs in
    /// this loop turn adds to the same batch. A stopped peer drops its
    /// batch: what it concerned is still spooled and comes back at the next
    /// start (queued again, or delivered again: a duplicate, never a loss).
    async fn flush_outbox(self: Rc<Self>, peer: usize) {
        glommio::executor().yield_now().await;
        loop {
            let entries = std::mem::take(&mut self.outbox.enqueue.borrow_mut()[peer]);
            let outcomes = std::mem::take(&mut self.outbox.outcomes.borrow_mut()[peer]);
            if entries.is_empty() && outcomes.is_empty() {
                self.outbox.scheduled[peer].set(false);
                return;
            }
            for msg in [
                (!entries.is_empty()).then_some(ShardMsg::Enqueue(entries)),
                (!outcomes.is_empty()).then_some(ShardMsg::Outcome(outcomes)),
            ]
            .into_iter()
            .flatten()
            {
                if self.mesh.send_to(peer, msg).await.is_err() {
                    tracing::warn!(
                        shard = self.env.id,
                        "shard {peer} is gone; its batch waits for the next start"
                    );
                }
            }
        }
    }
}

/// Hands what arrives from the mesh to `inbox`.
pub fn dispatch(inbox: &dyn Inbox, msg: ShardMsg) {
    match msg {
        ShardMsg::Enqueue(entries) => inbox.on_entries(entries),
        ShardMsg::Outcome(outcomes) => inbox.on_outcomes(outcomes),
        ShardMsg::Control(envelope) => inbox.on_control(envelope),
        ShardMsg::Generate(job) => inbox.on_generate(job),
    }
}
