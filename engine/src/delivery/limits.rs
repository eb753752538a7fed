//! Limits that span shards: a queue is owned by one shard, but the whole
//! server's connection count, a throttle inherited by many queues and a
//! host serving many domains are not. Each is a fixed table of atomics
//! shared by every shard of the process, changed with compare-and-swap,
//! never a lock:
//!
//! - `server_max_outbound_connections`: one counter ([`ServerSlot`]),
//!   taken when a connection is opened and given back when it ends. Exact.
//! - `outbound_throttle_messages` / `outbound_throttle_connections`: one
//!   token bucket per throttle setting (`config::Throttle::bucket`, so a
//!   throttle set in a binding_group is one bucket for everything under
//!   it), kept as the theoretical arrival time of the generic cell rate
//!   algorithm ([`gcra`], pure) in one `AtomicU64` ([`take_token`]).
//!   Exact: one CAS per message or connection, and only where a throttle
//!   is set.
//! - `max_outbound_connections` of a `host` scope: open connections per
//!   address of that host, every domain and shard together
//!   ([`HostSlot`]): 65,536 counters indexed by a hash of the address.
//!   Two limited addresses that share a counter share its count, so the
//!   limit can only bite early, never late (as inbound's per-IP limit).
//! - Host-level failure memory (`host_failure_retry`): a server (address
//!   and port: a gateway on another port of the same host is another
//!   server) that refused or timed out a connection, or answered 421 before the
//!   session was ready, is skipped by every domain's connections until the
//!   time [`mark_host_down`] gave, then tried again. A table of 65,536
//!   words indexed by a hash of the address, each word the address's
//!   24-bit tag and the millisecond it comes back ([`pack_down`], pure). Two
//!   addresses that share a slot overwrite each other's memory: the one
//!   forgotten is tried early (as with no memory), never skipped wrongly.
//!
//! Owns: the four tables and their pure decisions. May call: `config`
//! (types). Never: I/O, clocks (callers pass the time), queues.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::config::{Rate, Throttle, THROTTLE_BUCKETS_MAX};

/// Open outbound connections of the process, over every shard.
static SERVER_CONNECTIONS: AtomicU32 = AtomicU32::new(0);

/// One open outbound connection's place under
/// `server_max_outbound_connections`; gives it back on drop.
#[derive(Debug)]
pub struct ServerSlot(());

impl ServerSlot {
    /// A place, or `None` when `limit` connections are open already.
    pub fn take(limit: u32) -> Option<ServerSlot> {
        assert!(limit > 0, "the option's range starts at 1");
        SERVER_CONNECTIONS
            .fetch_update(AcqRel, Acquire, |open| (open < limit).then_some(open + 1))
            .ok()
            .map(|_| ServerSlot(()))
    }
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        let before = SERVER_CONNECTIONS.fetch_sub(1, AcqRel);
        assert!(before > 0, "a server slot is given back once");
    }
}

/// One theoretical arrival time (µs since the epoch) per throttle setting.
static BUCKETS: [AtomicU64; THROTTLE_BUCKETS_MAX as usize] =
    [const { AtomicU64::new(0) }; THROTTLE_BUCKETS_MAX as usize];

/// The generic cell rate algorithm for a bucket of `rate.count` tokens
/// refilled at `rate`: given the bucket's theoretical arrival time
/// `tat_us` and `now_us`, `Ok(next_tat_us)` takes a token, `Err(at_us)`
/// says when the next one is free. A bucket left alone fills up to
/// `rate.count` (a burst); a late taker loses no tokens.
pub fn gcra(tat_us: u64, now_us: u64, rate: Rate) -> Result<u64, u64> {
    let interval_us = rate.interval_us();
    let burst_us = interval_us * (u64::from(rate.count) - 1);
    let tat_us = tat_us.max(now_us);
    if tat_us - now_us > burst_us {
        return Err(tat_us - burst_us);
    }
    Ok(tat_us + interval_us)
}

/// Takes one token of `throttle` at `now_us`: `Ok` when it may go (always,
/// without a rate), `Err(at_us)` when the next token is free.
pub fn take_token(throttle: &Throttle, now_us: u64) -> Result<(), u64> {
    let Some(rate) = throttle.rate else {
        return Ok(());
    };
    assert!(throttle.bucket < THROTTLE_BUCKETS_MAX);
    let bucket = &BUCKETS[throttle.bucket as usize];
    let mut refused = 0;
    let taken = bucket.fetch_update(AcqRel, Acquire, |tat_us| match gcra(tat_us, now_us, rate) {
        Ok(next) => Some(next),
        Err(at_us) => {
            refused = at_us;
            None
        }
    });
    taken.map(|_| ()).map_err(|_| refused)
}

/// When the next token of `throttle` is free, if not at `now_us`; takes
/// nothing (a look for whether another connection would have work).
pub fn token_wait(throttle: &Throttle, now_us: u64) -> Option<u64> {
    let rate = throttle.rate?;
    assert!(throttle.bucket < THROTTLE_BUCKETS_MAX);
    let tat_us = BUCKETS[throttle.bucket as usize].load(Acquire);
    gcra(tat_us, now_us, rate).err()
}

/// Slots of the host memory: a power of two.
const HOST_SLOTS: usize = 1 << 16;
const _: () = assert!(HOST_SLOTS.is_power_of_two());
/// Per slot: `pack_down(tag, until)`, 0 when empty.
static HOSTS_DOWN: [AtomicU64; HOST_SLOTS] = [const { AtomicU64::new(0) }; HOST_SLOTS];

/// FNV-1a's multiplier.
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a of the address bytes (IPv4 as mapped IPv6).
fn address_hash(ip: IpAddr) -> u64 {
    let octets = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in octets {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Bits of a slot's word that hold the time; the tag has the rest.
const DOWN_TIME_BITS: u32 = 40;
const DOWN_TIME_MASK: u64 = (1 << DOWN_TIME_BITS) - 1;
/// The times in the slots count milliseconds from here (2020-01-01), so
/// 40 bits last until 2054.
const DOWN_EPOCH_UNIX_MS: u64 = 1_577_836_800_000;

/// The slot of `ip` and its 24-bit tag (high bits of the hash the slot
/// index does not use).
fn host_slot(ip: IpAddr) -> (usize, u32) {
    let hash = address_hash(ip);
    (
        (hash as usize) & (HOST_SLOTS - 1),
        (hash >> DOWN_TIME_BITS) as u32,
    )
}

/// A slot's word: the address's 24-bit tag, and the millisecond the host
/// is tried again.
pub fn pack_down(tag: u32, until_unix_ms: u64) -> u64 {
    assert!(tag < 1 << (64 - DOWN_TIME_BITS));
    let until = until_unix_ms
        .saturating_sub(DOWN_EPOCH_UNIX_MS)
        .min(DOWN_TIME_MASK);
    (u64::from(tag) << DOWN_TIME_BITS) | until
}

/// When the host of `tag` is tried again, if `word` says it is down at
/// `now_unix_ms`.
pub fn down_until(word: u64, tag: u32, now_unix_ms: u64) -> Option<u64> {
    let until_ms = (word & DOWN_TIME_MASK) + DOWN_EPOCH_UNIX_MS;
    let same = (word >> DOWN_TIME_BITS) as u32 == tag;
    (word != 0 && same && until_ms > now_unix_ms).then_some(until_ms)
}

/// Open connections per address of a limited host (by slot).
static HOST_CONNECTIONS: [AtomicU32; HOST_SLOTS] = [const { AtomicU32::new(0) }; HOST_SLOTS];

/// One open connection's place under its host's
/// `max_outbound_connections`; gives it back on drop.
#[derive(Debug)]
pub struct HostSlot {
    slot: usize,
}

impl HostSlot {
    /// A place for a connection to `ip`, or `None` when `limit` are open.
    pub fn take(ip: IpAddr, limit: u32) -> Option<HostSlot> {
        let (slot, _) = host_slot(ip);
        HOST_CONNECTIONS[slot]
            .fetch_update(AcqRel, Acquire, |open| (open < limit).then_some(open + 1))
            .ok()
            .map(|_| HostSlot { slot })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let before = HOST_CONNECTIONS[self.slot].fetch_sub(1, AcqRel);
        assert!(before > 0, "a host slot is given back once");
    }
}

/// The memory's slot and tag of a server: its address and port, so a
/// dead gateway on one port of a host never hides a live one on another.
fn down_slot(server: SocketAddr) -> (usize, u32) {
    let hash = address_hash(server.ip()) ^ u64::from(server.port()).wrapping_mul(FNV_PRIME);
    let hash = hash.wrapping_mul(FNV_PRIME);
    (
        (hash as usize) & (HOST_SLOTS - 1),
        (hash >> DOWN_TIME_BITS) as u32,
    )
}

/// Remembers that `server` failed: every domain's connections skip it
/// until `until_unix_ms`.
pub fn mark_host_down(server: SocketAddr, until_unix_ms: u64) {
    let (slot, tag) = down_slot(server);
    HOSTS_DOWN[slot].store(pack_down(tag, until_unix_ms), Release);
}

/// When `server` is tried again, if it is remembered as down at
/// `now_unix_ms`.
pub fn host_down_until(server: SocketAddr, now_unix_ms: u64) -> Option<u64> {
    let (slot, tag) = down_slot(server);
    down_until(HOSTS_DOWN[slot].load(Acquire), tag, now_unix_ms)
}

/// `server` greeted us: forget that it was down (unless its slot now
/// holds another server).
pub fn host_up(server: SocketAddr) {
    let (slot, tag) = down_slot(server);
    let word = HOSTS_DOWN[slot].load(Acquire);
    if word != 0 && (word >> DOWN_TIME_BITS) as u32 == tag {
        let _ = HOSTS_DOWN[slot].compare_exchange(word, 0, AcqRel, Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, per_seconds: u32) -> Rate {
        Rate { count, per_seconds }
    }

    /// Takes tokens at `times_us` from one bucket; the times that got one.
    fn admitted(r: Rate, times_us: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut tat = 0;
        let mut out = Vec::new();
        for now in times_us {
            if let Ok(next) = gcra(tat, now, r) {
                tat = next;
                out.push(now);
            }
        }
        out
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_one_token_per_interval() {
        let r = rate(50, 1);
        let start = 1_000_000_000;
        // 100 takers at once: the burst of 50.
        assert_eq!(admitted(r, std::iter::repeat_n(start, 100)).len(), 50);
        // The 51st waits one interval (20 ms).
        let mut tat = 0;
        for _ in 0..50 {
            tat = gcra(tat, start, r).unwrap();
        }
        assert_eq!(gcra(tat, start, r), Err(start + 20_000));
        assert_eq!(gcra(tat, start + 20_000, r), Ok(tat + 20_000));
    }

    #[test]
    fn over_ten_seconds_the_rate_is_kept_after_the_burst() {
        // Goal: "50/1" delivers 50 per second in the long run, whoever asks
        // and how often. Method: ask every millisecond for 11 s; after the
        // first second's burst, each later second admits 50.
        let r = rate(50, 1);
        let start = 5_000_000_000u64;
        let times = (0..11_000u64).map(|ms| start + ms * 1000);
        let got = admitted(r, times);
        for second in 1..11u64 {
            let from = start + second * 1_000_000;
            let n = got
                .iter()
                .filter(|t| (from..from + 1_000_000).contains(*t))
                .count();
            assert_eq!(n, 50, "second {second}");
        }
    }

    #[test]
    fn a_late_taker_loses_no_tokens_up_to_the_burst() {
        let r = rate(10, 1);
        let start = 7_000_000_000u64;
        let mut tat = 0;
        for _ in 0..10 {
            tat = gcra(tat, start, r).unwrap();
        }
        // Half a second later, five tokens have come back, no more.
        let later = start + 500_000;
        let mut n = 0;
        while let Ok(next) = gcra(tat, later, r) {
            tat = next;
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn one_per_minute_admits_one_then_waits_a_minute() {
        let r = rate(1, 60);
        let now = 9_000_000_000u64;
        let tat = gcra(0, now, r).unwrap();
        assert_eq!(gcra(tat, now + 1, r), Err(now + 60_000_000));
    }

    #[test]
    fn a_throttle_setting_is_one_bucket_for_all_that_share_it() {
        // Two queues inheriting the same setting (same bucket) share its
        // tokens; another setting (bucket) counts apart.
        let shared = Throttle {
            rate: Some(rate(2, 1)),
            bucket: THROTTLE_BUCKETS_MAX - 1,
        };
        let other = Throttle {
            bucket: THROTTLE_BUCKETS_MAX - 2,
            ..shared
        };
        let now = 11_000_000_000u64;
        assert_eq!(take_token(&shared, now), Ok(()));
        assert_eq!(take_token(&shared, now), Ok(()));
        assert_eq!(take_token(&shared, now), Err(now + 500_000));
        assert_eq!(take_token(&other, now), Ok(()));
        assert_eq!(take_token(&Throttle::UNLIMITED, now), Ok(()));
        assert_eq!(
            token_wait(&shared, now),
            Some(now + 500_000),
            "a look takes nothing"
        );
        assert_eq!(token_wait(&shared, now + 500_000), None);
        assert_eq!(take_token(&shared, now + 500_000), Ok(()));
    }

    #[test]
    fn server_slots_cap_open_connections_and_come_back_on_drop() {
        // Other tests of this process may hold slots; count from here.
        let open = SERVER_CONNECTIONS.load(Acquire);
        let a = ServerSlot::take(open + 2).expect("first");
        let b = ServerSlot::take(open + 2).expect("second");
        assert!(ServerSlot::take(open + 2).is_none(), "third is over");
        drop(a);
        let c = ServerSlot::take(open + 2).expect("a closed connection gives its slot back");
        drop((b, c));
    }

    #[test]
    fn host_slots_cap_connections_per_address_and_come_back_on_drop() {
        let ip: IpAddr = "192.0.2.211".parse().unwrap();
        let other: IpAddr = "192.0.2.212".parse().unwrap();
        assert_ne!(
            host_slot(ip).0,
            host_slot(other).0,
            "the test needs two slots"
        );
        let a = HostSlot::take(ip, 2).expect("first");
        let b = HostSlot::take(ip, 2).expect("second");
        assert!(HostSlot::take(ip, 2).is_none(), "third is over the limit");
        let c = HostSlot::take(other, 2).expect("another address counts apart");
        drop(a);
        let d = HostSlot::take(ip, 2).expect("a closed connection gives its place back");
        drop((b, c, d));
        assert_eq!(HOST_CONNECTIONS[host_slot(ip).0].load(Acquire), 0);
    }

    #[test]
    fn the_down_word_holds_the_tag_and_the_millisecond_of_return() {
        let word = pack_down(0xad_beef, 1_700_000_000_001);
        assert_eq!(
            down_until(word, 0xad_beef, 1_700_000_000_000),
            Some(1_700_000_000_001)
        );
        assert_eq!(down_until(word, 0xad_beef, 1_700_000_000_001), None, "back");
        assert_eq!(
            down_until(word, 0xed_beef, 0),
            None,
            "another address's slot"
        );
        assert_eq!(down_until(0, 0, 0), None, "empty");
        let year_2050 = 2_524_608_000_000;
        assert_eq!(down_until(pack_down(1, year_2050), 1, 0), Some(year_2050));
    }

    #[test]
    fn a_dead_host_is_skipped_for_every_domain_until_its_time_or_a_greeting() {
        // Addresses from the documentation range no other test uses.
        let dead: SocketAddr = "192.0.2.201:25".parse().unwrap();
        let alive: SocketAddr = "192.0.2.202:25".parse().unwrap();
        let other_port: SocketAddr = "192.0.2.201:2525".parse().unwrap();
        let now = 1_800_000_000_000u64;
        mark_host_down(dead, now + 120_000);
        assert_eq!(host_down_until(dead, now), Some(now + 120_000));
        assert_eq!(host_down_until(dead, now + 119_999), Some(now + 120_000));
        assert_eq!(host_down_until(dead, now + 120_000), None, "retried then");
        assert_eq!(host_down_until(alive, now), None);
        assert_eq!(host_down_until(other_port, now), None, "a port of its own");
        host_up(dead);
        assert_eq!(host_down_until(dead, now), None, "a greeting clears it");
    }
}
