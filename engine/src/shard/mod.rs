//! Shards: one glommio `LocalExecutor` per core, pinned to it, each owning
//! its listeners (SO_REUSEPORT: the kernel spreads connections), its spool
//! directory `spoolbase/<shard>`, the queues of the domains that hash to
//! it, its counters and its log buffers.
//!
//! Owns: start-up and shutdown of the shards, the [`Shard`] context, the
//! cross-shard messages ([`ShardMsg`]) over glommio's channel mesh, and the
//! routing of spooled messages to queue owners and of outcomes back home.
//! May call: every engine module, the spool, the policy.
//! Never: another shard's state except through [`ShardMsg`]; a lock on a
//! per-message path.

mod inbound;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ecelerity_spool::{BodyReader, RecoveredMessage, Spool, SpoolOptions};
use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::sync::{Gate, Semaphore};
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::log::ShardLogs;
use crate::queue::record::{Note, SpooledEnvelope};
use crate::queue::{delivery_parts, domain_of, part_owner, MessageId, MessageRef, Queues};
pub use stats::{EngineStats, ShardStats};

/// Depth of each shard-to-shard channel. 1024 streams well; 64 churns on
/// park and wake (MEASURED.md).
pub const SHARD_CHANNEL_MESSAGES_MAX: usize = 1024;
/// Most shards (the message id keeps the home shard in 8 bits).
pub const SHARDS_MAX: usize = 256;
/// How often a shard checks the stop flag, refreshes its gauges and
/// promotes due entries of its delayed queue.
pub const TICK_MS: u64 = 100;
/// How often a ready shard checks whether it may start serving.
const SERVE_POLL_MS: u64 = 5;
/// Shares of the inbound task queue (sessions, spool writer) and of the
/// delivery queue: equal, so neither starves; what differs is latency.
const INBOUND_SHARES: usize = 1000;
const DELIVERY_SHARES: usize = 1000;
/// Preemption target of the inbound queue: how long it lets another queue
/// run before it gets the core back.
const INBOUND_LATENCY_MS: u64 = 1;
/// Most domains whose `delivery_shards` a shard remembers; the cache is
/// emptied when full.
const PARTS_CACHE_DOMAINS_MAX: usize = 65_536;
/// How long a stopping shard waits for open SMTP sessions to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
/// glommio's default registered I/O memory per executor; we use less when
/// the locked-memory limit would not fit 3 x this per shard.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 10 << 20;
/// Least registered I/O memory we ask for.
pub const IO_MEMORY_BYTES_MIN: usize = 256 << 10;

/// What crosses between shards: small, owned, batched where possible.
pub enum ShardMsg {
    /// Queue entries for domains the receiving shard owns.
    Enqueue(Vec<MessageRef>),
    /// Outcomes for messages whose home is the receiving shard.
    Outcome(Vec<Outcome>),
}

/// The outcome of some recipients of one message, sent to its home shard.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: MessageId,
    pub rcpts: Vec<u32>,
    pub kind: OutcomeKind,
}

#[derive(Debug, Clone, Copy)]
pub enum OutcomeKind {
    /// Delivered or failed permanently: nothing more to do for them.
    Done,
    /// Failed transiently; the queue owner will try again then.
    Retry {
        attempts: u32,
        next_attempt_unix_ms: u64,
    },
}

/// Most items waiting in the outbox for one peer before the shard that
/// fills it waits for the flush.
pub const OUTBOX_ITEMS_MAX: usize = 4096;

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

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The state of one shard. Lives on its executor (`!Send`); tasks hold an
/// `Rc<Shard>`. Never hold a `RefCell` borrow across an `.await`.
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub spool: Spool,
    /// Readers of every shard's spool folder, for bodies of queued messages.
    pub bodies: RefCell<Vec<BodyReader>>,
    pub queues: RefCell<Queues>,
    /// Messages spooled here and not yet final: id → recipients left.
    pub live: RefCell<HashMap<u64, u32>>,
    /// The live set reached `LIVE_MESSAGES_PER_SHARD_MAX` (warned once
    /// per episode).
    pub live_full: Cell<bool>,
    pub logs: ShardLogs,
    pub stats: Arc<EngineStats>,
    mesh: Senders<ShardMsg>,
    outbox: Outbox,
    next_sequence: Cell<u64>,
    next_connection: Cell<u64>,
    /// Closed when the shard starts stopping: every waiter wakes.
    pub stopping: Rc<Semaphore>,
    stop_started: Cell<bool>,
    /// Open inbound sessions; shutdown waits for them.
    pub sessions: Gate,
    pub hostname: String,
    /// The policy every inbound session of this shard asks at each phase
    /// (`inbound::shard_policy`).
    pub policy: Box<dyn ecelerity_policy::Policy>,
    /// Task queue of delivery connections (see `run_shard`).
    delivery_queue: glommio::TaskQueueHandle,
    /// `delivery_shards` of each domain seen, resolved (see `parts_of`).
    parts_cache: RefCell<HashMap<Box<str>, usize>>,
}

impl Shard {
    pub fn my_stats(&self) -> &ShardStats {
        &self.stats.shards[self.id]
    }

    pub fn is_stopping(&self) -> bool {
        self.stop_started.get()
    }

    pub fn next_message_id(&self) -> MessageId {
        let s = self.next_sequence.get();
        self.next_sequence.set(s + 1);
        MessageId::new(self.id, s)
    }

    /// Connection ids look like message ids but count separately.
    pub fn next_connection_id(&self) -> u64 {
        let c = self.next_connection.get();
        self.next_connection.set(c + 1);
        MessageId::new(self.id, c).0
    }

    /// Hands queue entries to their owners: this shard's queues directly,
    /// other shards through the outbox (one batch per owner per loop turn).
    pub async fn route(self: &Rc<Self>, entries: Vec<MessageRef>) {
        for e in entries {
            let owner = self.entry_owner(&e);
            if owner == self.id {
                self.enqueue(e);
            } else {
                self.outbox.enqueue.borrow_mut()[owner].push(e);
                self.schedule_flush(owner).await;
            }
        }
    }

    /// Reports outcomes to the home shard of each message.
    pub async fn report(self: &Rc<Self>, outcomes: Vec<Outcome>) {
        for o in outcomes {
            let home = o.id.home_shard();
            if home == self.id {
                self.on_outcome(o);
            } else {
                self.outbox.outcomes.borrow_mut()[home].push(o);
                self.schedule_flush(home).await;
            }
        }
    }

    /// The shard that owns the queue (part) an entry belongs in.
    pub fn entry_owner(&self, entry: &MessageRef) -> usize {
        let parts = self.parts_of(&entry.domain);
        part_owner(&entry.domain, entry.id, parts, self.count)
    }

    /// Over how many shards `domain`'s queue is spread (`delivery_shards`),
    /// from a per-shard cache so routing does not walk the configuration
    /// per message.
    fn parts_of(&self, domain: &str) -> usize {
        if let Some(&parts) = self.parts_cache.borrow().get(domain) {
            return parts;
        }
        let parts = delivery_parts(
            self.config.delivery("default", domain).delivery_shards,
            self.count,
        );
        let mut cache = self.parts_cache.borrow_mut();
        if cache.len() >= PARTS_CACHE_DOMAINS_MAX {
            cache.clear();
        }
        cache.insert(domain.into(), parts);
        parts
    }

    /// Makes sure a flush task will carry the outbox of `peer`, and holds
    /// the caller while that outbox is over [`OUTBOX_ITEMS_MAX`] (the peer
    /// is not keeping up: back-pressure reaches the SMTP client).
    async fn schedule_flush(self: &Rc<Self>, peer: usize) {
        if !self.outbox.scheduled[peer].replace(true) {
            let shard = self.clone();
            glommio::spawn_local(async move { shard.flush_outbox(peer).await }).detach();
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
                        shard = self.id,
                        "shard {peer} is gone; its batch waits for the next start"
                    );
                }
            }
        }
    }

    /// Puts one entry this shard owns in its domain's queue and makes sure
    /// a connection will take it.
    pub fn enqueue(self: &Rc<Self>, entry: MessageRef) {
        assert_eq!(
            self.entry_owner(&entry),
            self.id,
            "queue entry routed to the wrong shard"
        );
        let now = now_unix_ms();
        let domain = entry.domain.clone();
        let mut queues = self.queues.borrow_mut();
        let config = &self.config;
        queues.domain_entry(&domain, || config.delivery("default", &domain));
        if entry.next_attempt_unix_ms > now {
            let due = entry.next_attempt_unix_ms;
            queues.push_delayed(entry, due);
            return;
        }
        queues.domain_mut(&domain).unwrap().active.push_back(entry);
        drop(queues);
        self.kick(&domain);
    }

    /// Wakes an idle connection of `domain`, or opens a new one when there
    /// is more work than connections and the limit allows.
    pub fn kick(self: &Rc<Self>, domain: &str) {
        let mut queues = self.queues.borrow_mut();
        let Some(q) = queues.domain_mut(domain) else {
            return;
        };
        while let Some(waiter) = q.idle.pop() {
            if waiter.try_send(()).is_ok() {
                return;
            }
        }
        if self.is_stopping() || q.active.len() <= q.connections as usize {
            return;
        }
        // A domain spread over several shards shares its connection limit
        // out between the parts, so the total stays within it.
        let parts = delivery_parts(q.options.delivery_shards, self.count) as u32;
        if q.connections >= (q.options.max_outbound_connections / parts).max(1) {
            return;
        }
        q.connections += 1;
        let domain = q.domain.clone();
        drop(queues);
        ShardStats::add(&self.my_stats().outbound_connections, 1);
        let shard = self.clone();
        let connection = glommio::spawn_local_into(
            async move {
                crate::delivery::run_connection(shard.clone(), domain.clone()).await;
                ShardStats::sub(&shard.my_stats().outbound_connections, 1);
                let mut queues = shard.queues.borrow_mut();
                let more = match queues.domain_mut(&domain) {
                    Some(q) => {
                        q.connections -= 1;
                        !q.active.is_empty()
                    }
                    None => false,
                };
                drop(queues);
                if more {
                    shard.kick(&domain);
                }
            },
            self.delivery_queue,
        );
        match connection {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(shard = self.id, "cannot start a delivery connection: {e}"),
        }
    }

    /// Records an outcome for a message spooled here: a note for the
    /// recipients, and the message's completion once none is left.
    fn on_outcome(self: &Rc<Self>, outcome: Outcome) {
        assert_eq!(
            outcome.id.home_shard(),
            self.id,
            "outcome sent to the wrong home shard"
        );
        let id = outcome.id.0;
        let note = match outcome.kind {
            OutcomeKind::Done => {
                let mut live = self.live.borrow_mut();
                let Some(left) = live.get_mut(&id) else {
                    return;
                };
                *left = left.saturating_sub(outcome.rcpts.len() as u32);
                if *left == 0 {
                    live.remove(&id);
                    ShardStats::sub(&self.my_stats().live_messages, 1);
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
                Err(ecelerity_spool::SpoolError::Closed) => {
                    tracing::debug!(
                        "spool closed: the outcome of {} is replayed after restart",
                        MessageId(id)
                    )
                }
                Err(e) => {
                    tracing::error!("spool: cannot record the outcome of {}: {e}", MessageId(id))
                }
            }
        })
        .detach();
    }

    fn on_message(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Enqueue(entries) => {
                for e in entries {
                    self.enqueue(e);
                }
            }
            ShardMsg::Outcome(outcomes) => {
                for o in outcomes {
                    self.on_outcome(o);
                }
            }
        }
    }

    /// Splits a spooled message into queue entries, one per domain, for
    /// the recipients not yet done.
    pub fn entries_for(
        &self,
        id: MessageId,
        body: ecelerity_spool::BodyRef,
        envelope: &SpooledEnvelope,
        pending: impl Iterator<Item = (u32, u32, u64)>,
    ) -> Vec<MessageRef> {
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

    /// Queues again what recovery found: each live message's recipients
    /// that have no final outcome, with their retry schedule.
    async fn requeue_recovered(self: &Rc<Self>, messages: Vec<RecoveredMessage>) {
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
            let pending: Vec<(u32, u32, u64)> = (0..n)
                .filter(|&i| !done[i])
                .map(|i| (i as u32, schedule[i].0, schedule[i].1))
                .collect();
            let id = MessageId(m.id);
            if pending.is_empty() {
                // Every recipient is final but the completion was lost.
                let _ = self.spool.complete(m.id).await;
                continue;
            }
            self.live.borrow_mut().insert(m.id, pending.len() as u32);
            entries.extend(self.entries_for(id, m.body, &envelope, pending.into_iter()));
        }
        ShardStats::set(
            &self.my_stats().live_messages,
            self.live.borrow().len() as u64,
        );
        self.route(entries).await;
    }

    /// Refreshes the gauges the console shows.
    fn refresh_gauges(&self) {
        let s = self.my_stats();
        let queues = self.queues.borrow();
        ShardStats::set(&s.active_queue, queues.active_count() as u64);
        ShardStats::set(&s.delayed_queue, queues.delayed_count() as u64);
        let spool = self.spool.stats();
        ShardStats::set(&s.spool_segments, spool.segments as u64);
        ShardStats::set(&s.spool_syncs, spool.syncs);
    }

    /// Moves due delayed entries to their active queues.
    fn promote_due(self: &Rc<Self>) {
        let due = self.queues.borrow_mut().pop_due(now_unix_ms(), 100_000);
        let mut domains: Vec<Box<str>> = Vec::new();
        {
            let mut queues = self.queues.borrow_mut();
            for e in due {
                if !domains.contains(&e.domain) {
                    domains.push(e.domain.clone());
                }
                if let Some(q) = queues.domain_mut(&e.domain) {
                    q.active.push_back(e);
                }
            }
        }
        for d in domains {
            self.kick(&d);
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: {what}: {source}")]
    Io {
        shard: usize,
        what: String,
        source: io::Error,
    },
    #[error("shard {shard}: {what}")]
    Other { shard: usize, what: String },
}

/// A running engine: the shard threads and the flag that stops them.
pub struct Engine {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<EngineStats>,
    pub shard_count: usize,
    pub io_memory_bytes: usize,
}

impl Engine {
    /// Asks every shard to stop gracefully: stop accepting, let open
    /// sessions finish (up to [`SHUTDOWN_GRACE_MS`]), sync the spool, exit.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every shard thread to end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Shard count to run: the configured one, or one per available CPU, and
/// never fewer than the spool needs. Each shard owns `spoolbase/<shard>`,
/// and its messages can only be recovered by a shard of that number: with
/// `shards = 0` the count grows to cover every folder that still holds
/// segments (a spool moved to a smaller machine keeps working); a
/// configured count that would strand a folder is an error, never a loss.
pub fn shard_count(config: &Config) -> Result<usize, StartError> {
    let needed = spooled_shard_folders(config.spoolbase());
    match config.shards() {
        0 => {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            Ok(cpus.max(needed).clamp(1, SHARDS_MAX))
        }
        n if n < needed => Err(StartError::Other {
            shard: needed - 1,
            what: format!(
                "{} holds spooled messages but shards = {n}: set shards to at least {needed} \
                 (or 0) so that they are delivered",
                config.spoolbase().join((needed - 1).to_string()).display()
            ),
        }),
        n => Ok(n.clamp(1, SHARDS_MAX)),
    }
}

/// One more than the highest `spoolbase/<n>` folder that holds a segment
/// file (0 when none does).
fn spooled_shard_folders(spoolbase: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(spoolbase) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n: usize = e.file_name().to_str()?.parse().ok()?;
            let has_segment = std::fs::read_dir(e.path())
                .ok()?
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".seg"));
            (has_segment && n < SHARDS_MAX).then_some(n + 1)
        })
        .max()
        .unwrap_or(0)
}

/// Registered I/O memory per executor that fits the locked-memory limit:
/// glommio registers `io_memory` three times per executor, and as any user
/// but root all of it must fit `ulimit -l`. Returns (bytes, limit_bytes).
pub fn io_memory_bytes(shards: usize) -> (usize, Option<u64>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return (IO_MEMORY_BYTES_DEFAULT, None);
    }
    let per_shard = (limit.rlim_cur as usize) / (3 * shards.max(1));
    let bytes =
        (per_shard / (64 << 10) * (64 << 10)).clamp(IO_MEMORY_BYTES_MIN, IO_MEMORY_BYTES_DEFAULT);
    (bytes, Some(limit.rlim_cur))
}

/// Starts every shard and returns once all of them serve (or with the
/// first error). Each shard recovers its spool and binds its sockets, then
/// waits; `before_serving` runs once all are ready (the daemon drops its
/// privileges there), and only then do the shards accept connections.
pub fn start(
    config: Arc<Config>,
    before_serving: impl FnOnce() -> Result<(), String>,
) -> Result<Engine, StartError> {
    let count = shard_count(&config)?;
    let (io_memory, memlock) = io_memory_bytes(count);
    let stats = EngineStats::new(count);
    let stop = Arc::new(AtomicBool::new(false));
    let serving = Arc::new(AtomicBool::new(false));
    let consoles = crate::console::bind(&config).map_err(|e| StartError::Other {
        shard: 0,
        what: format!("cannot open the control socket: {e}"),
    })?;
    let mesh = MeshBuilder::<ShardMsg, _>::full(count, SHARD_CHANNEL_MESSAGES_MAX);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let mut threads = Vec::with_capacity(count);
    for id in 0..count {
        let (config, stats, stop, serving, mesh, ready) = (
            config.clone(),
            stats.clone(),
            stop.clone(),
            serving.clone(),
            mesh.clone(),
            ready_tx.clone(),
        );
        let builder = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("shard{id}"))
            .io_memory(io_memory);
        let handle = builder
            .spawn(move || async move {
                run_shard(ShardSetup {
                    id,
                    count,
                    config,
                    stats,
                    stop,
                    serving,
                    mesh,
                    ready,
                })
                .await;
            })
            .map_err(|e| StartError::Other {
                shard: id,
                what: format!("cannot start its executor: {e}"),
            })?;
        threads.push(handle);
    }
    drop(ready_tx);
    tracing::info!(
        "starting {count} shard(s), glommio io_memory {} KiB per shard ({})",
        io_memory >> 10,
        match memlock {
            None => "no locked-memory limit".to_string(),
            Some(l) => format!("locked-memory limit {} KiB", l >> 10),
        }
    );
    let engine = Engine {
        threads,
        stop: stop.clone(),
        stats,
        shard_count: count,
        io_memory_bytes: io_memory,
    };
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                engine.join();
                return Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::SeqCst);
                engine.join();
                return Err(StartError::Other {
                    shard: 0,
                    what: "a shard ended during start-up".into(),
                });
            }
        }
    }
    if let Err(what) = before_serving() {
        stop.store(true, Ordering::SeqCst);
        engine.join();
        return Err(StartError::Other { shard: 0, what });
    }
    serving.store(true, Ordering::SeqCst);
    crate::console::serve(consoles, engine.stats.clone(), config, stop);
    Ok(engine)
}

/// What a shard's executor starts with.
struct ShardSetup {
    id: usize,
    count: usize,
    config: Arc<Config>,
    stats: Arc<EngineStats>,
    /// Set to stop every shard (signal, console `shutdown`, failed start).
    stop: Arc<AtomicBool>,
    /// Set once every shard is ready and the daemon may serve.
    serving: Arc<AtomicBool>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    ready: mpsc::Sender<Result<(), StartError>>,
}

/// Body of one shard's executor.
async fn run_shard(setup: ShardSetup) {
    let ShardSetup {
        id,
        count,
        config,
        stats,
        stop,
        serving,
        mesh,
        ready,
    } = setup;
    // Join the mesh first: it only needs every shard to reach this point,
    // and a shard that fails later must not leave the others waiting here.
    let (senders, mut receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(_) => {
            let _ = ready.send(Err(StartError::Other {
                shard: id,
                what: "cannot join the shard mesh".into(),
            }));
            return;
        }
    };
    let io_err = |what: String| {
        move |source: io::Error| StartError::Io {
            shard: id,
            what,
            source,
        }
    };

    let spool_dir = config.spoolbase().join(id.to_string());
    // Two task queues (Seastar's scheduling groups): reception and the
    // spool's group commit, where a client waits for each step, run in a
    // latency-sensitive queue; delivery runs in its own queue, so a burst
    // of outbound work on the shard that owns a busy domain cannot hold a
    // waiting 250 back for a whole time slice.
    let inbound_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(INBOUND_SHARES),
        glommio::Latency::Matters(Duration::from_millis(INBOUND_LATENCY_MS)),
        "inbound",
    );
    let delivery_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(DELIVERY_SHARES),
        glommio::Latency::NotImportant,
        "delivery",
    );
    let opened = glommio::spawn_local_into(
        {
            let spool_dir = spool_dir.clone();
            async move { Spool::open(&spool_dir, SpoolOptions::default()).await }
        },
        inbound_queue,
    );
    let opened = match opened {
        Ok(task) => task.await,
        Err(e) => {
            let _ = ready.send(Err(StartError::Other {
                shard: id,
                what: format!("cannot start the spool task: {e}"),
            }));
            return;
        }
    };
    let (spool, recovery) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(StartError::Other {
                shard: id,
                what: format!("cannot open the spool {}: {e}", spool_dir.display()),
            }));
            return;
        }
    };
    for cut in &recovery.truncated {
        tracing::warn!(
            shard = id,
            "spool: segment {:016x} cut at offset {}: {}",
            cut.segment,
            cut.offset,
            cut.reason
        );
    }
    let logs = match ShardLogs::open(&config.logs().mainlog, &config.logs().rejectlog) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(io_err("cannot open the mainlog or rejectlog".into())(
                e,
            )));
            return;
        }
    };
    let mut listeners = Vec::new();
    for l in config.esmtp_listeners().iter().filter(|l| l.enabled) {
        match glommio::net::TcpListener::bind(l.address) {
            Ok(sock) => listeners.push((sock, Rc::new(l.clone()))),
            Err(e) => {
                let _ = ready.send(Err(StartError::Other {
                    shard: id,
                    what: format!("cannot listen on {}: {e}", l.address),
                }));
                return;
            }
        }
    }
    let now_secs = now_unix_ms() / 1000;
    let first_sequence = ((now_secs << 20).max((recovery.max_id >> 8) + 1)) + 1;
    let spool_dirs: Vec<PathBuf> = (0..count)
        .map(|s| config.spoolbase().join(s.to_string()))
        .collect();
    let shard = Rc::new(Shard {
        id,
        count,
        hostname: config.hostname().to_string(),
        policy: inbound::shard_policy(&config),
        config: config.clone(),
        spool,
        bodies: RefCell::new(spool_dirs.into_iter().map(BodyReader::new).collect()),
        queues: RefCell::new(Queues::default()),
        live: RefCell::new(HashMap::new()),
        live_full: Cell::new(false),
        logs,
        stats: stats.clone(),
        mesh: senders,
        outbox: Outbox::new(count),
        next_sequence: Cell::new(first_sequence),
        // Connection ids count from the middle of the same space so they
        // never read like a message id of the same moment.
        next_connection: Cell::new(first_sequence + (1 << 19)),
        stopping: Rc::new(Semaphore::new(0)),
        stop_started: Cell::new(false),
        sessions: Gate::new(),
        delivery_queue,
        parts_cache: RefCell::new(HashMap::new()),
    });

    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.on_message(msg);
            }
        })
        .detach();
    }
    let recovered = recovery.messages.len();
    shard.requeue_recovered(recovery.messages).await;
    if recovered > 0 {
        // Recovery held every live envelope at once; hand that memory back
        // so a restarted daemon with a large queue costs what a live one
        // does (glibc keeps freed heap otherwise).
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
    }
    if recovered > 0 {
        tracing::info!(
            shard = id,
            "spool: recovered {recovered} live message(s) from {} segment(s)",
            recovery.segments_read
        );
    }

    let _ = ready.send(Ok(()));
    // Serve only once every shard is ready and the daemon has dropped its
    // privileges: not a byte is read from the network before that.
    while !serving.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(SERVE_POLL_MS)).await;
    }
    let mut accept_tasks = Vec::new();
    for (sock, listener) in listeners {
        match glommio::spawn_local_into(
            inbound::accept_loop(shard.clone(), sock, listener),
            inbound_queue,
        ) {
            Ok(task) => accept_tasks.push(task),
            Err(e) => tracing::error!(shard = id, "cannot start an accept loop: {e}"),
        }
    }

    // The shard's clock: stop flag, gauges, delayed queue, log flush.
    let mut ticks: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        shard.promote_due();
        shard.refresh_gauges();
        shard.logs.flush();
        ticks += 1;
        if ticks.is_multiple_of(600) {
            shard.queues.borrow_mut().prune();
        }
    }

    // Graceful stop: no new connections, open sessions finish or get 421.
    for t in accept_tasks {
        t.cancel().await;
    }
    shard.stop_started.set(true);
    shard.stopping.close();
    let _ = glommio::timer::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        let _ = shard.sessions.close().await;
        Ok(())
    })
    .await;
    if let Err(e) = shard.spool.close().await {
        tracing::error!(shard = id, "spool: final sync failed: {e}");
    }
    shard.logs.flush();
    tracing::info!(shard = id, "stopped");
}
