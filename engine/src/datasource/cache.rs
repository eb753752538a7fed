//! A shard's result cache for one datasource: at most `capacity` entries,
//! each served for `life` after it was filled; when full, the oldest entry
//! goes first (Momentum's `cache_size`, `cache_life`).
//!
//! Keys are the SQL text and the bound parameters, encoded to bytes with
//! type tags and lengths (so `'1'` and `1` differ). Entries are `Rc<Rows>`:
//! a hit hands out the shared rows without copying them.
//!
//! Owns: the map and the insertion order. May call: std. Never: drivers.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Params, Rows, Value};

/// The cache key of `sql` with `params`.
pub fn key(sql: &str, params: &Params) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + 16 * params.len() + 8);
    put_bytes(&mut out, sql.as_bytes());
    match params {
        Params::Positional(values) => {
            out.push(b'P');
            for v in values {
                put_value(&mut out, v);
            }
        }
        Params::Named(pairs) => {
            out.push(b'N');
            for (name, v) in pairs {
                put_bytes(&mut out, name.as_bytes());
                put_value(&mut out, v);
            }
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Real(f) => {
            out.push(2);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Text(s) => {
            out.push(3);
            put_bytes(out, s.as_bytes());
        }
        Value::Blob(b) => {
            out.push(4);
            put_bytes(out, b);
        }
        Value::Bool(b) => out.push(if *b { 6 } else { 5 }),
    }
}

struct Entry {
    rows: Rc<Rows>,
    filled: Instant,
    /// Matches the `order` record of this filling (older records of a
    /// refilled key are skipped on eviction).
    seq: u64,
}

pub struct ResultCache {
    capacity: usize,
    life: Duration,
    entries: HashMap<Vec<u8>, Entry>,
    order: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
}

impl ResultCache {
    pub fn new(capacity: usize, life: Duration) -> ResultCache {
        ResultCache {
            capacity,
            life,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rows cached under `key` if filled less than `life` ago; an
    /// expired entry is dropped.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Rc<Rows>> {
        let entry = self.entries.get(key)?;
        if now.saturating_duration_since(entry.filled) < self.life {
            return Some(entry.rows.clone());
        }
        self.entries.remove(key);
        None
    }

    /// Caches `rows` under `key`, dropping the oldest entries beyond
    /// `capacity`.
    pub fn insert(&mut self, key: Vec<u8>, rows: Rc<Rows>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        self.entries.insert(
            key,
            Entry {
                rows,
                filled: now,
                seq,
            },
        );
        while self.entries.len() > self.capacity {
            let Some((seq, key)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&key);
            }
        }
        // Records of refilled or expired keys pile up in `order`; trim
        // them so it stays within twice the capacity.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(seq, key)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
        debug_assert!(self.entries.len() <= self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: i64) -> Rc<Rows> {
        Rc::new(Rows {
            columns: vec!["n".into()],
            rows: vec![vec![Value::Integer(n)]],
        })
    }

    #[test]
    fn keys_tell_types_and_names_apart() {
        let a = key("q", &Params::Positional(vec![Value::Integer(1)]));
        let b = key("q", &Params::Positional(vec![Value::Text("1".into())]));
        let c = key("q", &Params::Named(vec![("a".into(), Value::Integer(1))]));
        let d = key("q1", &Params::none());
        assert!(a != b && a != c && b != c && d != key("q", &Params::none()));
    }

    #[test]
    fn entries_expire_and_the_oldest_go_first() {
        let t0 = Instant::now();
        let mut cache = ResultCache::new(2, Duration::from_secs(10));
        cache.insert(b"a".to_vec(), rows(1), t0);
        cache.insert(b"b".to_vec(), rows(2), t0);
        cache.insert(b"a".to_vec(), rows(3), t0); // refill: a is now newest
        cache.insert(b"c".to_vec(), rows(4), t0); // evicts b
        assert!(cache.get(b"b", t0).is_none());
        assert_eq!(cache.get(b"a", t0).unwrap().rows[0][0], Value::Integer(3));
        assert_eq!(cache.len(), 2);
        let later = t0 + Duration::from_secs(10);
        assert!(cache.get(b"c", later).is_none());
        assert_eq!(cache.len(), 1);
        for i in 0..100u8 {
            cache.insert(vec![i], rows(i as i64), t0);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.order.len() <= 4);
    }
}
