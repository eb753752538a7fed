//! Outbound queues of a shard: an active queue for every (binding, domain)
//! key this shard owns (see [`key_owner`]) and one delayed heap ordered by
//! due time; plus the types that name messages and queue entries, and the
//! engine's own spool payloads ([`record`]).
//!
//! Owns: queue entries ([`MessageRef`]), queue keys ([`QueueKey`]) and the
//! interned [`QueueId`] a shard gives each queue it holds, per-queue
//! connection counts, idle-connection wake-ups and back-off state (set and
//! read by `delivery::pool`), the operator's suspended flag (set by
//! `delivery::operator`), the delayed heap.
//! May call: `config` (delivery options), `smtp::params` (the type of a
//! message's ESMTP parameters). Never: I/O (that is `delivery`),
//! another shard's queues.

pub mod record;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use ecelerity_spool::BodyRef;

use crate::config::{Config, DeliveryOptions, DEFAULT_BINDING};
use crate::smtp::params::MessageParams;

/// Most messages one shard keeps spooled and undelivered (its live set;
/// about 400 bytes of memory each, so 1.6 GB at the limit). Past it the
/// shard answers new messages with `451 4.3.0` until deliveries bring it
/// back under; what it already holds, and what other shards queue on it,
/// is never dropped.
pub const LIVE_MESSAGES_PER_SHARD_MAX: usize = 4_000_000;
/// Most bindings a configuration may name (a [`BindingId`] is a `u16`).
pub const BINDINGS_MAX: usize = 4096;

/// A message id: the low 8 bits name the shard that received and spooled
/// it (its "home"), the rest is that shard's sequence number, which starts
/// from the clock and from the largest id recovered, so ids never repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    pub fn new(home_shard: usize, sequence: u64) -> MessageId {
        assert!(home_shard < 256);
        MessageId(sequence << 8 | home_shard as u64)
    }
    pub fn home_shard(self) -> usize {
        (self.0 & 0xFF) as usize
    }
    pub fn sequence(self) -> u64 {
        self.0 >> 8
    }
}

/// Momentum-shaped: `SS/HH-MMMMM-LLLLLLLL` (shard, then the sequence in
/// three hex groups), e.g. `01/06-553A4-0000002A`.
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sequence();
        write!(
            f,
            "{:02X}/{:02X}-{:05X}-{:08X}",
            self.home_shard(),
            (s >> 52) & 0xFF,
            (s >> 32) & 0xF_FFFF,
            s & 0xFFFF_FFFF
        )
    }
}

/// Why a text is not a message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a message id (SS/HH-MMMMM-LLLLLLLL, as in the mainlog)")]
pub struct BadMessageId(pub String);

/// Reads the mainlog's form back (hex digits in either case).
impl std::str::FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(text: &str) -> Result<MessageId, BadMessageId> {
        let bad = || BadMessageId(text.to_string());
        let (shard, rest) = text.split_once('/').ok_or_else(bad)?;
        let mut groups = rest.splitn(3, '-');
        let mut field = |digits: usize, max: u64| -> Result<u64, BadMessageId> {
            let g = groups.next().ok_or_else(bad)?;
            if g.len() != digits {
                return Err(bad());
            }
            let value = u64::from_str_radix(g, 16).map_err(|_| bad())?;
            (value <= max).then_some(value).ok_or_else(bad)
        };
        // A sequence has 56 bits: 4 in the first group, 20, then 32.
        let (high, middle, low) = (field(2, 0xF)?, field(5, 0xF_FFFF)?, field(8, 0xFFFF_FFFF)?);
        if shard.len() != 2 {
            return Err(bad());
        }
        let shard = u8::from_str_radix(shard, 16).map_err(|_| bad())?;
        Ok(MessageId::new(
            shard as usize,
            high << 52 | middle << 32 | low,
        ))
    }
}

/// A binding, by its index in [`Bindings`]: the same on every shard, since
/// every shard builds the table from the same configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingId(pub u16);

/// The configured bindings by id, the default binding first (id 0).
#[derive(Debug, Clone)]
pub struct Bindings {
    names: Vec<Box<str>>,
    groups: Vec<Box<str>>,
}

impl Bindings {
    pub const DEFAULT: BindingId = BindingId(0);

    pub fn from_config(config: &Config) -> Bindings {
        let mut names: Vec<Box<str>> = vec![DEFAULT_BINDING.into()];
        let mut others: Vec<&str> = config
            .bindings()
            .filter(|b| *b != DEFAULT_BINDING)
            .collect();
        others.sort_unstable();
        names.extend(others.into_iter().map(Box::from));
        assert!(
            names.len() <= BINDINGS_MAX,
            "the configuration bounds bindings"
        );
        let groups = names
            .iter()
            .map(|b| config.binding_group_of(b).into())
            .collect();
        Bindings { names, groups }
    }

    /// The id of `name`; an unknown binding is the default binding (as
    /// Momentum falls back).
    pub fn id(&self, name: &str) -> BindingId {
        self.lookup(name).unwrap_or(Bindings::DEFAULT)
    }

    /// The id of `name`, if it is configured. A binary search: after the
    /// default binding, names are sorted.
    pub fn lookup(&self, name: &str) -> Option<BindingId> {
        if name == DEFAULT_BINDING {
            return Some(Bindings::DEFAULT);
        }
        let others = &self.names[1..];
        let index = others.binary_search_by(|b| (**b).cmp(name)).ok()?;
        Some(BindingId(index as u16 + 1))
    }

    pub fn name(&self, id: BindingId) -> &str {
        &self.names[id.0 as usize]
    }

    pub fn group(&self, id: BindingId) -> &str {
        &self.groups[id.0 as usize]
    }

    /// Every binding, the default first, then by name.
    pub fn iter(&self) -> impl Iterator<Item = (BindingId, &str)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| (BindingId(i as u16), &**name))
    }

    /// The id of `name` if it is configured (no fallback to the default).
    pub fn find(&self, name: &str) -> Option<BindingId> {
        self.iter().find(|(_, b)| *b == name).map(|(id, _)| id)
    }
}

/// What a queue is for: mail to `domain` leaving from `binding`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub binding: BindingId,
    pub domain: Rc<str>,
}

/// FNV-1a over the binding id and the domain (case-insensitive).
fn key_hash(binding: BindingId, domain: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in binding.0.to_le_bytes().into_iter().chain(domain.bytes()) {
        hash ^= b.to_ascii_lowercase() as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Which shard owns the queue of (`binding`, `domain`).
pub fn key_owner(binding: BindingId, domain: &str, shard_count: usize) -> usize {
    assert!(shard_count > 0);
    (key_hash(binding, domain) % shard_count as u64) as usize
}

/// How many shards the queue of a domain is spread over, for a
/// `delivery_shards` setting (0 = every shard) on `shard_count` shards.
pub fn delivery_parts(delivery_shards: u32, shard_count: usize) -> usize {
    assert!(shard_count > 0);
    match delivery_shards as usize {
        0 => shard_count,
        n => n.min(shard_count),
    }
}

/// Which shard owns the part of a queue that message `id` goes to: the
/// key's owner when the queue has one part, else one of `parts`
/// consecutive shards from there, picked by the message's sequence number
/// (so each message's recipients at that domain stay together).
pub fn part_owner(
    binding: BindingId,
    domain: &str,
    id: MessageId,
    parts: usize,
    shard_count: usize,
) -> usize {
    assert!(parts >= 1 && parts <= shard_count);
    let part = (id.sequence() % parts as u64) as usize;
    (key_owner(binding, domain, shard_count) + part) % shard_count
}

/// The domain part of an address, lower-cased; "" when there is none.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// One queue entry: the recipients of one message at one domain, from one
/// binding. Small and `Send`: it is what crosses from the receiving shard
/// to the queue owner. The body stays in the home shard's spool segment.
#[derive(Debug, Clone)]
pub struct MessageRef {
    pub id: MessageId,
    pub body: BodyRef,
    pub mail_from: Box<str>,
    /// (index in the spooled envelope, address).
    pub rcpts: Vec<(u32, Box<str>)>,
    pub binding: BindingId,
    pub domain: Box<str>,
    pub received_unix_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the entry may be tried (0: now).
    pub next_attempt_unix_ms: u64,
    pub connection_id: u64,
    pub body_8bitmime: bool,
    /// SMTPUTF8 and DSN parameters (`smtp::params`, from the envelope's
    /// extension fields); `None` for a message without any (most mail),
    /// shared by the message's entries.
    pub params: Option<Arc<MessageParams>>,
    /// The event fields of a generated message (REST or X-MSYS-API;
    /// `api::event_fields`), shared by its entries.
    pub event_fields: Option<std::sync::Arc<str>>,
}

/// A queue this shard holds, by slot: stable while the queue exists (a
/// queue with entries or connections is never pruned, so connections and
/// delayed entries may keep its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(u32);

/// One (binding, domain) queue on its owner shard.
pub struct Queue {
    pub key: QueueKey,
    /// Options resolved for the key, and the configuration generation they
    /// came from (a reload makes them stale: see [`Queues::refresh_options`]).
    pub options: Rc<DeliveryOptions>,
    pub options_generation: u64,
    pub active: VecDeque<MessageRef>,
    /// Entries of this queue in the shard's delayed heap.
    pub delayed_count: usize,
    /// Open (or opening) outbound connections.
    pub connections: u32,
    /// Idle connections waiting for work; pushing work wakes one.
    pub idle: Vec<glommio::channels::local_channel::LocalSender<()>>,
    pub delivered: u64,
    pub failed: u64,
    /// No connection is opened to this queue's destination before this
    /// time (0: none pending); its entries wait in the delayed heap until
    /// then. Set by `delivery::pool::back_off`.
    pub not_before_unix_ms: u64,
    /// Back-offs since the destination last greeted us properly.
    pub backoffs_in_a_row: u32,
    /// The operator suspended this queue (console `suspend`): it keeps
    /// its entries, opens no connection and hands none out until resumed.
    pub suspended: bool,
}

impl Queue {
    /// Nothing queued, no connection, and no back-off to remember.
    fn is_idle(&self, now_unix_ms: u64) -> bool {
        self.active.is_empty()
            && self.delayed_count == 0
            && self.connections == 0
            && self.not_before_unix_ms <= now_unix_ms
    }
}

struct Delayed {
    due_unix_ms: u64,
    order: u64,
    queue: QueueId,
    entry: MessageRef,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due_unix_ms, self.order) == (other.due_unix_ms, other.order)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_unix_ms, self.order).cmp(&(other.due_unix_ms, other.order))
    }
}

/// All queues a shard owns.
#[derive(Default)]
pub struct Queues {
    slots: Vec<Option<Queue>>,
    free: Vec<u32>,
    /// Domain → the queues of that domain, one per binding that uses it.
    by_domain: HashMap<Rc<str>, Vec<(BindingId, QueueId)>>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    order: u64,
}

impl Queues {
    pub fn find(&self, binding: BindingId, domain: &str) -> Option<QueueId> {
        self.by_domain
            .get(domain)?
            .iter()
            .find(|(b, _)| *b == binding)
            .map(|(_, id)| *id)
    }

    pub fn get(&self, id: QueueId) -> Option<&Queue> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: QueueId) -> Option<&mut Queue> {
        self.slots.get_mut(id.0 as usize)?.as_mut()
    }

    /// The queue of (`binding`, `domain`), created with `options()` (and
    /// the configuration `generation` they came from) on first use.
    pub fn find_or_create(
        &mut self,
        binding: BindingId,
        domain: &str,
        generation: u64,
        options: impl FnOnce() -> DeliveryOptions,
    ) -> QueueId {
        if let Some(id) = self.find(binding, domain) {
            return id;
        }
        let name: Rc<str> = match self.by_domain.get_key_value(domain) {
            Some((name, _)) => name.clone(),
            None => Rc::from(domain),
        };
        let queue = Queue {
            key: QueueKey {
                binding,
                domain: name.clone(),
            },
            options: Rc::new(options()),
            options_generation: generation,
            active: VecDeque::new(),
            delayed_count: 0,
            connections: 0,
            idle: Vec::new(),
            delivered: 0,
            failed: 0,
            not_before_unix_ms: 0,
            backoffs_in_a_row: 0,
            suspended: false,
        };
        let id = match self.free.pop() {
            Some(slot) => {
                assert!(self.slots[slot as usize].is_none());
                self.slots[slot as usize] = Some(queue);
                QueueId(slot)
            }
            None => {
                self.slots.push(Some(queue));
                QueueId((self.slots.len() - 1) as u32)
            }
        };
        self.by_domain.entry(name).or_default().push((binding, id));
        id
    }

    /// Replaces the options of `id` when they came from an older
    /// configuration generation; returns the current options.
    pub fn refresh_options(
        &mut self,
        id: QueueId,
        generation: u64,
        options: impl FnOnce(&QueueKey) -> DeliveryOptions,
    ) -> Option<Rc<DeliveryOptions>> {
        let q = self.get_mut(id)?;
        if q.options_generation != generation {
            q.options = Rc::new(options(&q.key));
            q.options_generation = generation;
        }
        Some(q.options.clone())
    }

    /// Puts `entry` of queue `id` in the delayed heap until `due_unix_ms`.
    pub fn push_delayed(&mut self, id: QueueId, entry: MessageRef, due_unix_ms: u64) {
        let q = self
            .get_mut(id)
            .expect("a delayed entry belongs to a queue");
        q.delayed_count += 1;
        self.order += 1;
        self.delayed.push(Reverse(Delayed {
            due_unix_ms,
            order: self.order,
            queue: id,
            entry,
        }));
    }

    /// Takes every delayed entry due at `now_unix_ms`, at most `limit`.
    pub fn pop_due(&mut self, now_unix_ms: u64, limit: usize) -> Vec<(QueueId, MessageRef)> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.delayed.peek() {
                Some(Reverse(d)) if d.due_unix_ms <= now_unix_ms => {}
                _ => break,
            }
            let Reverse(d) = self.delayed.pop().unwrap();
            let q = self
                .get_mut(d.queue)
                .expect("a queue with delayed entries stays");
            assert!(q.delayed_count > 0);
            q.delayed_count -= 1;
            due.push((d.queue, d.entry));
        }
        due
    }

    /// The queues whose key `pick` accepts.
    pub fn ids_where(&self, mut pick: impl FnMut(&QueueKey) -> bool) -> Vec<QueueId> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let q = q.as_ref()?;
                pick(&q.key).then_some(QueueId(i as u32))
            })
            .collect()
    }

    /// Takes every delayed entry of the queues `ids`, whenever due (the
    /// heap is rebuilt: this serves an operator's command, not a message).
    pub fn take_delayed(&mut self, ids: &[QueueId]) -> Vec<(QueueId, MessageRef)> {
        if ids.is_empty() {
            return Vec::new();
        }
        self.take_delayed_where(|id, _| ids.contains(&id))
    }

    /// Takes every delayed entry that `pick` accepts, whenever due (the
    /// heap is rebuilt: an operator's command, not a message's path).
    pub fn take_delayed_where(
        &mut self,
        mut pick: impl FnMut(QueueId, &MessageRef) -> bool,
    ) -> Vec<(QueueId, MessageRef)> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_vec()
            .into_iter()
            .partition(|Reverse(d)| pick(d.queue, &d.entry));
        self.delayed = BinaryHeap::from(kept);
        let mut out = Vec::with_capacity(taken.len());
        for Reverse(d) in taken {
            let q = self
                .get_mut(d.queue)
                .expect("a queue with delayed entries stays");
            assert!(q.delayed_count > 0);
            q.delayed_count -= 1;
            out.push((d.queue, d.entry));
        }
        out
    }

    /// Every delayed entry with its queue and due time, in no order.
    pub fn delayed_entries(&self) -> impl Iterator<Item = (QueueId, u64, &MessageRef)> {
        self.delayed
            .iter()
            .map(|Reverse(d)| (d.queue, d.due_unix_ms, &d.entry))
    }

    /// When the earliest delayed entry is due.
    pub fn next_due_unix_ms(&self) -> Option<u64> {
        self.delayed.peek().map(|Reverse(d)| d.due_unix_ms)
    }

    pub fn active_count(&self) -> usize {
        self.iter().map(|q| q.active.len()).sum()
    }

    pub fn delayed_count(&self) -> usize {
        self.delayed.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.slots.iter().flatten()
    }

    /// Forgets queues with nothing queued, no connection and no back-off
    /// still running, so the table does not grow with every domain ever
    /// seen; their slots are reused.
    pub fn prune(&mut self, now_unix_ms: u64) {
        for slot in 0..self.slots.len() {
            let idle = self.slots[slot]
                .as_ref()
                .is_some_and(|q| q.is_idle(now_unix_ms));
            if !idle {
                continue;
            }
            let q = self.slots[slot].take().unwrap();
            let id = QueueId(slot as u32);
            if let Some(list) = self.by_domain.get_mut(&*q.key.domain) {
                list.retain(|(_, i)| *i != id);
                if list.is_empty() {
                    self.by_domain.remove(&*q.key.domain);
                }
            }
            self.free.push(slot as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_keeps_shard_and_sequence_and_formats_like_momentum() {
        let id = MessageId::new(1, (1_700_000_000u64 << 20) | 42);
        assert_eq!(id.home_shard(), 1);
        assert_eq!(id.sequence() & 0xFFFFF, 42);
        let text = id.to_string();
        assert_eq!(text.len(), "01/06-553A4-0000002A".len());
        assert!(text.starts_with("01/"));
    }

    #[test]
    fn a_message_id_reads_back_from_its_mainlog_form() {
        for (shard, sequence) in [
            (0, 0),
            (1, (1_700_000_000u64 << 20) | 42),
            (255, (1 << 56) - 1),
        ] {
            let id = MessageId::new(shard, sequence);
            assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
            assert_eq!(id.to_string().to_lowercase().parse::<MessageId>(), Ok(id));
        }
        for bad in [
            "",
            "01/06-553A4",
            "1/06-553A4-0000002A",
            "01/06-553A4-0000002A-1",
            "01/G6-553A4-0000002A",
            "01/16-553A4-0000002A",
            "01-06-553A4-0000002A",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spread_domain_uses_exactly_its_parts() {
        let shards = 4;
        for parts in 1..=shards {
            let owners: std::collections::BTreeSet<usize> = (0..100u64)
                .map(|s| {
                    part_owner(
                        Bindings::DEFAULT,
                        "example.com",
                        MessageId::new(0, s),
                        parts,
                        shards,
                    )
                })
                .collect();
            assert_eq!(owners.len(), parts);
        }
        assert_eq!(delivery_parts(0, 2), 2);
        assert_eq!(delivery_parts(1, 2), 1);
        assert_eq!(delivery_parts(9, 2), 2);
    }

    #[test]
    fn bindings_are_found_by_exact_name_and_unknown_ones_are_the_default() {
        let config = Config::parse(
            "binding zz { }\nbinding_group g { binding a1 { } binding M { } }",
            std::path::Path::new("t.conf"),
        )
        .unwrap();
        let bindings = Bindings::from_config(&config);
        for name in ["default", "M", "a1", "zz"] {
            let id = bindings.lookup(name).expect(name);
            assert_eq!(bindings.name(id), name);
            assert_eq!(bindings.id(name), id);
        }
        assert_eq!(bindings.lookup("default"), Some(Bindings::DEFAULT));
        assert_eq!(bindings.group(bindings.id("a1")), "g");
        for unknown in ["m", "a", "zzz", ""] {
            assert_eq!(bindings.lookup(unknown), None, "{unknown}");
            assert_eq!(bindings.id(unknown), Bindings::DEFAULT);
        }
    }

    #[test]
    fn key_owner_is_stable_case_insensitive_and_depends_on_the_binding() {
        for shards in 1..8 {
            let a = key_owner(Bindings::DEFAULT, "Example.COM", shards);
            assert_eq!(a, key_owner(Bindings::DEFAULT, "example.com", shards));
            assert!(a < shards);
        }
        let spread: std::collections::BTreeSet<usize> = (0..64u16)
            .map(|b| key_owner(BindingId(b), "example.com", 8))
            .collect();
        assert!(
            spread.len() > 1,
            "bindings of one domain spread over shards"
        );
    }

    fn entry(domain: &str) -> MessageRef {
        MessageRef {
            id: MessageId::new(0, 1),
            body: BodyRef {
                segment: 1,
                offset: 0,
                len: 10,
            },
            mail_from: "a@b".into(),
            rcpts: vec![(0, format!("x@{domain}").into())],
            binding: Bindings::DEFAULT,
            domain: domain.into(),
            received_unix_ms: 0,
            attempts: 0,
            next_attempt_unix_ms: 0,
            connection_id: 0,
            body_8bitmime: false,
            params: None,
            event_fields: None,
        }
    }

    fn options() -> DeliveryOptions {
        DeliveryOptions::builtin("test.example")
    }

    #[test]
    fn one_queue_per_binding_and_domain_and_slots_come_back_after_prune() {
        let mut queues = Queues::default();
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let b = queues.find_or_create(BindingId(1), "a.example", 1, options);
        assert_ne!(a, b);
        assert_eq!(
            queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options),
            a
        );
        queues
            .get_mut(a)
            .unwrap()
            .active
            .push_back(entry("a.example"));
        queues.get_mut(b).unwrap().not_before_unix_ms = 500;
        queues.prune(499);
        assert!(queues.get(a).is_some(), "a queue with entries stays");
        assert!(queues.get(b).is_some(), "a backed-off queue stays");
        queues.prune(500);
        assert!(queues.get(b).is_none(), "an idle queue goes");
        let c = queues.find_or_create(Bindings::DEFAULT, "c.example", 1, options);
        assert_eq!(c, b, "the freed slot is reused");
        assert_eq!(queues.get(c).unwrap().key.domain.as_ref(), "c.example");
        assert_eq!(queues.find(BindingId(1), "a.example"), None);
    }

    #[test]
    fn delayed_entries_come_due_in_order_and_keep_their_queue() {
        let mut queues = Queues::default();
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        queues.push_delayed(a, entry("a.example"), 200);
        queues.push_delayed(a, entry("a.example"), 100);
        assert_eq!(queues.next_due_unix_ms(), Some(100));
        queues.prune(0);
        assert!(queues.get(a).is_some(), "delayed entries keep the queue");
        assert!(queues.pop_due(99, 10).is_empty());
        assert_eq!(queues.pop_due(150, 10).len(), 1);
        assert_eq!(queues.get(a).unwrap().delayed_count, 1);
        let due = queues.pop_due(1000, 10);
        assert_eq!(due[0].0, a);
        assert_eq!(queues.delayed_count(), 0);
    }

    #[test]
    fn take_delayed_takes_only_the_named_queues_and_keeps_the_heap_in_order() {
        let mut queues = Queues::default();
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let b = queues.find_or_create(Bindings::DEFAULT, "b.example", 1, options);
        queues.push_delayed(a, entry("a.example"), 30);
        queues.push_delayed(b, entry("b.example"), 20);
        queues.push_delayed(a, entry("a.example"), 10);
        queues.push_delayed(b, entry("b.example"), 5);
        let ids = queues.ids_where(|k| &*k.domain == "a.example");
        assert_eq!(ids, vec![a]);
        let taken = queues.take_delayed(&ids);
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|(id, _)| *id == a));
        assert_eq!(queues.get(a).unwrap().delayed_count, 0);
        assert_eq!(queues.get(b).unwrap().delayed_count, 2);
        assert_eq!(queues.next_due_unix_ms(), Some(5));
        assert_eq!(queues.pop_due(100, 10).len(), 2);
        assert!(queues.take_delayed(&[]).is_empty());
    }

    #[test]
    fn options_are_refreshed_only_for_a_new_generation() {
        let mut queues = Queues::default();
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let first = queues
            .refresh_options(a, 1, |_| panic!("same generation"))
            .unwrap();
        let second = queues
            .refresh_options(a, 2, |key| {
                assert_eq!(&*key.domain, "a.example");
                let mut o = options();
                o.max_outbound_connections = 7;
                o
            })
            .unwrap();
        assert_ne!(first.max_outbound_connections, 7);
        assert_eq!(second.max_outbound_connections, 7);
    }
}
