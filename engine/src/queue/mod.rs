//! Outbound queues of a shard: an active and a delayed queue for every
//! domain whose key hashes to this shard (see [`queue_owner`]), plus the
//! engine's own spool payloads ([`record`]).
//!
//! Owns: queue entries ([`MessageRef`]), per-domain connection counts and
//! idle-connection wake-ups, the delayed heap ordered by due time.
//! May call: `config` (delivery options). Never: I/O (that is `delivery`
//! and `shard`), another shard's queues.

pub mod record;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use ecelerity_spool::BodyRef;

use crate::config::DeliveryOptions;

/// Most messages one shard keeps spooled and undelivered (its live set;
/// about 400 bytes of memory each, so 1.6 GB at the limit). Past it the
/// shard answers new messages with `451 4.3.0` until deliveries bring it
/// back under; what it already holds, and what other shards queue on it,
/// is never dropped.
pub const LIVE_MESSAGES_PER_SHARD_MAX: usize = 4_000_000;

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

/// Which shard owns the queue of `domain` (case-insensitive FNV-1a).
pub fn queue_owner(domain: &str, shard_count: usize) -> usize {
    assert!(shard_count > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes() {
        hash ^= b.to_ascii_lowercase() as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shard_count as u64) as usize
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

/// Which shard owns the part of `domain`'s queue that message `id` goes
/// to: the domain's home shard when it has one part, else one of `parts`
/// consecutive shards from there, picked by the message's sequence number
/// (so each message's recipients at that domain stay together).
pub fn part_owner(domain: &str, id: MessageId, parts: usize, shard_count: usize) -> usize {
    assert!(parts >= 1 && parts <= shard_count);
    let part = (id.sequence() % parts as u64) as usize;
    (queue_owner(domain, shard_count) + part) % shard_count
}

/// The domain part of an address, lower-cased; "" when there is none.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// One queue entry: the recipients of one message at one domain. Small and
/// `Send`: it is what crosses from the receiving shard to the queue owner.
/// The body stays in the home shard's spool segment.
#[derive(Debug, Clone)]
pub struct MessageRef {
    pub id: MessageId,
    pub body: BodyRef,
    pub mail_from: Box<str>,
    /// (index in the spooled envelope, address).
    pub rcpts: Vec<(u32, Box<str>)>,
    pub domain: Box<str>,
    pub received_unix_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the entry may be tried (0: now).
    pub next_attempt_unix_ms: u64,
    pub connection_id: u64,
    pub body_8bitmime: bool,
}

/// The queues of one domain on its owner shard.
pub struct DomainQueue {
    pub domain: Rc<str>,
    pub options: Rc<DeliveryOptions>,
    pub active: VecDeque<MessageRef>,
    /// Entries of this domain in the shard's delayed heap.
    pub delayed_count: usize,
    /// Open (or opening) outbound connections.
    pub connections: u32,
    /// Idle connections waiting for work; pushing work wakes one.
    pub idle: Vec<glommio::channels::local_channel::LocalSender<()>>,
    pub delivered: u64,
    pub failed: u64,
}

struct Delayed {
    due_unix_ms: u64,
    order: u64,
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
    domains: HashMap<Rc<str>, DomainQueue>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    order: u64,
}

impl Queues {
    pub fn domain_mut(&mut self, domain: &str) -> Option<&mut DomainQueue> {
        self.domains.get_mut(domain)
    }

    /// The queue of `domain`, created with `options()` on first use.
    pub fn domain_entry(
        &mut self,
        domain: &str,
        options: impl FnOnce() -> DeliveryOptions,
    ) -> &mut DomainQueue {
        if !self.domains.contains_key(domain) {
            let name: Rc<str> = Rc::from(domain);
            self.domains.insert(
                name.clone(),
                DomainQueue {
                    domain: name,
                    options: Rc::new(options()),
                    active: VecDeque::new(),
                    delayed_count: 0,
                    connections: 0,
                    idle: Vec::new(),
                    delivered: 0,
                    failed: 0,
                },
            );
        }
        self.domains.get_mut(domain).unwrap()
    }

    /// Puts `entry` in the delayed heap until `due_unix_ms`.
    pub fn push_delayed(&mut self, entry: MessageRef, due_unix_ms: u64) {
        if let Some(q) = self.domains.get_mut(&*entry.domain) {
            q.delayed_count += 1;
        }
        self.order += 1;
        self.delayed.push(Reverse(Delayed {
            due_unix_ms,
            order: self.order,
            entry,
        }));
    }

    /// Takes every delayed entry due at `now_unix_ms`, at most `limit`.
    pub fn pop_due(&mut self, now_unix_ms: u64, limit: usize) -> Vec<MessageRef> {
        let mut due = Vec::new();
        while due.len() < limit {
            match self.delayed.peek() {
                Some(Reverse(d)) if d.due_unix_ms <= now_unix_ms => {}
                _ => break,
            }
            let Reverse(d) = self.delayed.pop().unwrap();
            if let Some(q) = self.domains.get_mut(&*d.entry.domain) {
                assert!(q.delayed_count > 0);
                q.delayed_count -= 1;
            }
            due.push(d.entry);
        }
        due
    }

    /// When the earliest delayed entry is due.
    pub fn next_due_unix_ms(&self) -> Option<u64> {
        self.delayed.peek().map(|Reverse(d)| d.due_unix_ms)
    }

    pub fn active_count(&self) -> usize {
        self.domains.values().map(|q| q.active.len()).sum()
    }

    pub fn delayed_count(&self) -> usize {
        self.delayed.len()
    }

    pub fn domains(&self) -> impl Iterator<Item = &DomainQueue> {
        self.domains.values()
    }

    /// Forgets domains with nothing queued and no connection, so the map
    /// does not grow with every domain ever seen.
    pub fn prune(&mut self) {
        self.domains
            .retain(|_, q| !q.active.is_empty() || q.delayed_count > 0 || q.connections > 0);
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
    fn a_spread_domain_uses_exactly_its_parts() {
        let shards = 4;
        for parts in 1..=shards {
            let owners: std::collections::BTreeSet<usize> = (0..100u64)
                .map(|s| part_owner("example.com", MessageId::new(0, s), parts, shards))
                .collect();
            assert_eq!(owners.len(), parts);
        }
        assert_eq!(delivery_parts(0, 2), 2);
        assert_eq!(delivery_parts(1, 2), 1);
        assert_eq!(delivery_parts(9, 2), 2);
    }

    #[test]
    fn queue_owner_is_stable_and_case_insensitive() {
        for shards in 1..8 {
            let a = queue_owner("Example.COM", shards);
            assert_eq!(a, queue_owner("example.com", shards));
            assert!(a < shards);
        }
    }
}
