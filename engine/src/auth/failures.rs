//! Failed AUTH attempts per client address, over every shard, without a
//! lock: a fixed table of 64-bit cells indexed by a hash of the address,
//! each holding the start of its window (unix seconds, high half) and the
//! failures counted in it (low half), updated by compare-and-swap (only on
//! a failure; a check is one load). Two addresses sharing a cell share its
//! count, so the limit can only bite early, never late. A window is fixed:
//! it starts at the first failure after the last one expired.
//!
//! Owns: `FAILURES`. May call: std. Never: clocks (callers pass the time).

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// Cells of the table: a power of two.
pub const FAILURE_CELLS: usize = 1 << 14;
const _: () = assert!(FAILURE_CELLS.is_power_of_two());

static FAILURES: [AtomicU64; FAILURE_CELLS] = [const { AtomicU64::new(0) }; FAILURE_CELLS];

/// The failures of `ip` in the window still open at `now_secs`.
pub fn failures(ip: IpAddr, now_secs: u64, window_secs: u64) -> u32 {
    current(FAILURES[cell(ip)].load(Acquire), now_secs, window_secs)
}

/// Counts one failure of `ip` at `now_secs`; returns the count now.
pub fn record_failure(ip: IpAddr, now_secs: u64, window_secs: u64) -> u32 {
    let updated = FAILURES[cell(ip)].fetch_update(AcqRel, Acquire, |packed| {
        Some(next(packed, now_secs, window_secs))
    });
    let before = updated.expect("the update always returns a value");
    current(next(before, now_secs, window_secs), now_secs, window_secs)
}

/// The count held in `packed` if its window is still open at `now_secs`.
fn current(packed: u64, now_secs: u64, window_secs: u64) -> u32 {
    let (start, count) = unpack(packed);
    if count == 0 || now_secs.saturating_sub(start) >= window_secs {
        0
    } else {
        count
    }
}

/// `packed` after one more failure at `now_secs`.
fn next(packed: u64, now_secs: u64, window_secs: u64) -> u64 {
    let (start, count) = unpack(packed);
    match current(packed, now_secs, window_secs) {
        0 => pack(now_secs, 1),
        _ => pack(start, count.saturating_add(1)),
    }
}

fn pack(start_secs: u64, count: u32) -> u64 {
    ((start_secs & 0xffff_ffff) << 32) | u64::from(count)
}

fn unpack(packed: u64) -> (u64, u32) {
    (packed >> 32, packed as u32)
}

/// FNV-1a of the address bytes (IPv4 as mapped IPv6), folded to a cell.
fn cell(ip: IpAddr) -> usize {
    let octets = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in octets {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) & (FAILURE_CELLS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_within_their_window_and_expire_with_it() {
        let ip: IpAddr = "192.0.2.201".parse().unwrap();
        let t = 1_700_000_000;
        assert_eq!(failures(ip, t, 60), 0);
        assert_eq!(record_failure(ip, t, 60), 1);
        assert_eq!(record_failure(ip, t + 10, 60), 2);
        assert_eq!(failures(ip, t + 59, 60), 2);
        assert_eq!(failures(ip, t + 60, 60), 0, "the window closed");
        assert_eq!(record_failure(ip, t + 61, 60), 1, "a new window");
        let other: IpAddr = "2001:db8::7".parse().unwrap();
        if cell(other) != cell(ip) {
            assert_eq!(failures(other, t + 61, 60), 0);
        }
    }

    #[test]
    fn packing_keeps_start_and_count() {
        assert_eq!(unpack(pack(1_700_000_000, 7)), (1_700_000_000, 7));
        assert_eq!(next(pack(100, u32::MAX), 101, 60), pack(100, u32::MAX));
    }
}
