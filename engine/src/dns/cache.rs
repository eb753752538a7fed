//! The per-shard DNS cache: answers by (name, record type) until their TTL
//! runs out, negative answers (NXDOMAIN, no data) included.
//!
//! Owns: [`Cache`] and its limits. Pure: the caller passes the time, so a
//! test can move the clock. May call: nothing with I/O. Never: the network,
//! clocks.

use std::collections::{BTreeSet, HashMap};

use super::{Answer, RecordKind};

/// Most answers one shard's cache holds. When full, expired answers go
/// first, then the ones that would expire soonest.
pub const CACHE_ENTRIES_MAX: usize = 10_000;
/// Longest a positive answer is kept, whatever its TTL says (one day).
pub const TTL_SECONDS_MAX: u32 = 86_400;
/// Longest a negative answer is kept, whatever the SOA says (RFC 2308
/// allows up to three hours; an hour lets a fixed zone recover sooner).
pub const NEGATIVE_TTL_SECONDS_MAX: u32 = 3_600;
/// TTL of a negative answer that came without an SOA record.
pub const NEGATIVE_TTL_SECONDS_DEFAULT: u32 = 60;

type Key = (String, RecordKind);

struct Entry {
    answer: Answer,
    /// The nameserver set the AD bit: a validating resolver found the
    /// answer authentic (DNSSEC).
    authenticated: bool,
    expires_unix_ms: u64,
}

/// Answers by (lower-case name, kind), with their expiry.
pub struct Cache {
    entries: HashMap<Key, Entry>,
    /// The same keys ordered by expiry, to evict the soonest first. Holds
    /// exactly one item per entry of `entries`.
    by_expiry: BTreeSet<(u64, Key)>,
    /// Never above `CACHE_ENTRIES_MAX`.
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        assert!(capacity > 0 && capacity <= CACHE_ENTRIES_MAX);
        Cache {
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries holding a negative answer (NXDOMAIN, no data).
    pub fn negative_len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.answer.is_negative())
            .count()
    }

    /// The answer for `name` and `kind` and its whole seconds left, if
    /// cached and not expired at `now_unix_ms`; changes nothing.
    pub fn peek(&self, name: &str, kind: RecordKind, now_unix_ms: u64) -> Option<(Answer, u32)> {
        let key = (name.to_ascii_lowercase(), kind);
        let entry = self.entries.get(&key)?;
        let left_ms = entry.expires_unix_ms.checked_sub(now_unix_ms)?;
        if left_ms == 0 {
            return None;
        }
        Some((entry.answer.clone(), (left_ms / 1000) as u32))
    }

    /// The answer for `name` and `kind` if one is cached and has not
    /// expired at `now_unix_ms`.
    pub fn get(&mut self, name: &str, kind: RecordKind, now_unix_ms: u64) -> Option<Answer> {
        self.get_authenticated(name, kind, now_unix_ms)
            .map(|(answer, _)| answer)
    }

    /// [`Cache::get`], with whether the answer came with the AD bit.
    pub fn get_authenticated(
        &mut self,
        name: &str,
        kind: RecordKind,
        now_unix_ms: u64,
    ) -> Option<(Answer, bool)> {
        let key = (name.to_ascii_lowercase(), kind);
        let entry = self.entries.get(&key)?;
        if entry.expires_unix_ms > now_unix_ms {
            return Some((entry.answer.clone(), entry.authenticated));
        }
        let expires = entry.expires_unix_ms;
        self.entries.remove(&key);
        self.by_expiry.remove(&(expires, key));
        None
    }

    /// Keeps `answer` for `ttl_seconds` (capped: `TTL_SECONDS_MAX`, or
    /// `NEGATIVE_TTL_SECONDS_MAX` for a negative answer). A TTL of 0 is
    /// not cached, as RFC 1035 says.
    pub fn put(
        &mut self,
        name: &str,
        kind: RecordKind,
        answer: Answer,
        ttl_seconds: u32,
        now_unix_ms: u64,
    ) {
        self.put_authenticated(name, kind, answer, false, ttl_seconds, now_unix_ms)
    }

    /// [`Cache::put`] of an answer that came with (`authenticated`) or
    /// without the AD bit.
    pub fn put_authenticated(
        &mut self,
        name: &str,
        kind: RecordKind,
        answer: Answer,
        authenticated: bool,
        ttl_seconds: u32,
        now_unix_ms: u64,
    ) {
        let cap = if answer.is_negative() {
            NEGATIVE_TTL_SECONDS_MAX
        } else {
            TTL_SECONDS_MAX
        };
        let ttl = ttl_seconds.min(cap);
        let key = (name.to_ascii_lowercase(), kind);
        if let Some(old) = self.entries.remove(&key) {
            self.by_expiry.remove(&(old.expires_unix_ms, key.clone()));
        }
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.evict(now_unix_ms);
        }
        let expires_unix_ms = now_unix_ms.saturating_add(u64::from(ttl) * 1000);
        self.by_expiry.insert((expires_unix_ms, key.clone()));
        self.entries.insert(
            key,
            Entry {
                answer,
                authenticated,
                expires_unix_ms,
            },
        );
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
        assert!(self.entries.len() <= self.capacity);
    }

    /// Forgets everything (console `dns_cache flush`, a reload that
    /// changes the nameservers).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_expiry.clear();
    }

    /// Makes room for one entry: drops every expired one, or else the one
    /// expiring soonest.
    fn evict(&mut self, now_unix_ms: u64) {
        while let Some(first) = self.by_expiry.first() {
            let expired = first.0 <= now_unix_ms;
            if !expired && self.entries.len() < self.capacity {
                break;
            }
            let (_, key) = self.by_expiry.pop_first().expect("not empty");
            self.entries.remove(&key);
            if !expired {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Mx;

    fn mx(host: &str) -> Answer {
        Answer::Mx(vec![Mx {
            preference: 10,
            exchange: host.into(),
        }])
    }

    #[test]
    fn an_answer_lives_until_its_ttl_and_names_ignore_case() {
        let mut cache = Cache::new(10);
        cache.put("Example.COM", RecordKind::Mx, mx("a.test"), 30, 1_000);
        assert_eq!(
            cache.get("example.com", RecordKind::Mx, 30_999),
            Some(mx("a.test"))
        );
        assert_eq!(cache.get("example.com", RecordKind::A, 2_000), None);
        assert_eq!(cache.get("example.com", RecordKind::Mx, 31_000), None);
        assert!(cache.is_empty(), "an expired answer is dropped when met");
    }

    #[test]
    fn peek_tells_the_seconds_left_and_changes_nothing() {
        let mut cache = Cache::new(10);
        cache.put("a.test", RecordKind::Mx, mx("x"), 30, 1_000);
        cache.put("nx.test", RecordKind::Mx, Answer::NxDomain, 30, 1_000);
        assert_eq!(
            cache.peek("A.test", RecordKind::Mx, 11_500),
            Some((mx("x"), 19))
        );
        assert_eq!(cache.peek("a.test", RecordKind::A, 11_500), None);
        assert_eq!(cache.peek("a.test", RecordKind::Mx, 31_000), None);
        assert_eq!(cache.len(), 2, "an expired answer is left for get to drop");
        assert_eq!(cache.negative_len(), 1);
    }

    #[test]
    fn negative_answers_are_cached_with_their_own_cap() {
        let mut cache = Cache::new(10);
        cache.put("nx.test", RecordKind::Mx, Answer::NxDomain, 86_400, 0);
        cache.put("nodata.test", RecordKind::Aaaa, Answer::NoData, 5, 0);
        let cap_ms = u64::from(NEGATIVE_TTL_SECONDS_MAX) * 1000;
        assert_eq!(
            cache.get("nx.test", RecordKind::Mx, cap_ms - 1),
            Some(Answer::NxDomain)
        );
        assert_eq!(cache.get("nx.test", RecordKind::Mx, cap_ms), None);
        assert_eq!(
            cache.get("nodata.test", RecordKind::Aaaa, 4_999),
            Some(Answer::NoData)
        );
        assert_eq!(cache.get("nodata.test", RecordKind::Aaaa, 5_000), None);
    }

    #[test]
    fn positive_ttls_are_capped_and_zero_is_not_cached() {
        let mut cache = Cache::new(10);
        cache.put("a.test", RecordKind::Mx, mx("x"), u32::MAX, 0);
        let cap_ms = u64::from(TTL_SECONDS_MAX) * 1000;
        assert!(cache.get("a.test", RecordKind::Mx, cap_ms - 1).is_some());
        assert!(cache.get("a.test", RecordKind::Mx, cap_ms).is_none());
        cache.put("b.test", RecordKind::Mx, mx("x"), 0, 0);
        assert!(cache.get("b.test", RecordKind::Mx, 0).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_expired_answers_then_the_soonest_to_expire() {
        let mut cache = Cache::new(3);
        cache.put("a", RecordKind::A, mx("a"), 10, 0);
        cache.put("b", RecordKind::A, mx("b"), 100, 0);
        cache.put("c", RecordKind::A, mx("c"), 50, 0);
        // At 20 s `a` has expired: it makes the room.
        cache.put("d", RecordKind::A, mx("d"), 100, 20_000);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("b", RecordKind::A, 20_000).is_some());
        assert!(cache.get("c", RecordKind::A, 20_000).is_some());
        // Nothing expired: `c` (soonest) goes.
        cache.put("e", RecordKind::A, mx("e"), 100, 21_000);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("c", RecordKind::A, 21_000).is_none());
        assert!(cache.get("b", RecordKind::A, 21_000).is_some());
        assert!(cache.get("e", RecordKind::A, 21_000).is_some());
        // Replacing an entry does not count twice.
        cache.put("e", RecordKind::A, mx("e2"), 100, 21_000);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("e", RecordKind::A, 21_000), Some(mx("e2")));
    }
}
