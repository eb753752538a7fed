//! Back-pressure from delivery to reception: when entries pile up in the
//! active queues (delivery is behind), replies to accepted messages are
//! delayed, then new transactions and connections are refused, instead of
//! queues growing without bound (Postfix's `in_flow_delay`, taken further).
//!
//! Owns: [`pressure`] (pure: the backlog and the limits in, what reception
//! does out) and [`Episodes`] (one paniclog line per change of level).
//! May call: nothing with I/O. Never: queues (the backlog is read from the
//! shards' published `active_queue` gauges, at most one tick old).

use std::cell::Cell;
use std::time::Duration;

/// The limits, from `backlog_slowdown_entries`, `backlog_refuse_entries`
/// and `in_flow_delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogLimits {
    pub slowdown_entries: u64,
    pub refuse_entries: u64,
    pub in_flow_delay_ms: u64,
}

/// What reception does at a given backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Delivery keeps up.
    None,
    /// Delay each reply to an accepted message by this much: 0 at
    /// `slowdown_entries`, rising linearly to `in_flow_delay_ms` at
    /// `refuse_entries`.
    Slow(Duration),
    /// Refuse new transactions (`452 4.3.1`) and connections (`421 4.3.2`).
    Refuse,
}

/// What reception does when `backlog` entries wait for delivery.
pub fn pressure(backlog: u64, limits: BacklogLimits) -> Pressure {
    if backlog >= limits.refuse_entries {
        return Pressure::Refuse;
    }
    if backlog <= limits.slowdown_entries {
        return Pressure::None;
    }
    let span = limits
        .refuse_entries
        .saturating_sub(limits.slowdown_entries)
        .max(1);
    let over = backlog - limits.slowdown_entries;
    let delay_ms = limits.in_flow_delay_ms.saturating_mul(over) / span;
    assert!(delay_ms <= limits.in_flow_delay_ms);
    Pressure::Slow(Duration::from_millis(delay_ms))
}

/// The reply to a MAIL FROM while reception refuses.
pub const REFUSE_MAIL_CODE: u16 = 452;
pub const REFUSE_MAIL_ENHANCED: &str = "4.3.1";
pub const REFUSE_MAIL_TEXT: &str =
    "Insufficient system resources: delivery is behind, try again later";
/// The reply to a connection while reception refuses.
pub const REFUSE_CONNECTION_REPLY: &[u8] = b"421 4.3.2 Delivery is behind, try again later\r\n";

/// Remembers the last level a shard reported, so the paniclog says when
/// reception starts or stops slowing or refusing, once each.
#[derive(Default)]
pub struct Episodes {
    level: Cell<u8>,
}

impl Episodes {
    /// Notes the pressure seen now; logs a change of level.
    pub fn observe(&self, shard: usize, backlog: u64, p: Pressure) {
        let level = match p {
            Pressure::None => 0,
            Pressure::Slow(_) => 1,
            Pressure::Refuse => 2,
        };
        let before = self.level.replace(level);
        if before == level {
            return;
        }
        match p {
            Pressure::None => tracing::info!(
                shard,
                "delivery caught up ({backlog} entries waiting): reception at full speed"
            ),
            Pressure::Slow(_) => tracing::warn!(
                shard,
                "{backlog} entries waiting for delivery (backlog_slowdown_entries): \
                 replies to accepted messages are delayed"
            ),
            Pressure::Refuse => tracing::warn!(
                shard,
                "{backlog} entries waiting for delivery (backlog_refuse_entries): new \
                 transactions get 452 4.3.1 and new connections 421 4.3.2"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BacklogLimits = BacklogLimits {
        slowdown_entries: 100,
        refuse_entries: 300,
        in_flow_delay_ms: 1000,
    };

    #[test]
    fn pressure_ramps_from_nothing_to_refusal() {
        assert_eq!(pressure(0, LIMITS), Pressure::None);
        assert_eq!(pressure(100, LIMITS), Pressure::None);
        assert_eq!(
            pressure(200, LIMITS),
            Pressure::Slow(Duration::from_millis(500))
        );
        assert_eq!(
            pressure(299, LIMITS),
            Pressure::Slow(Duration::from_millis(995))
        );
        assert_eq!(pressure(300, LIMITS), Pressure::Refuse);
        assert_eq!(pressure(u64::MAX, LIMITS), Pressure::Refuse);
    }

    #[test]
    fn refusal_below_the_slowdown_level_never_divides_by_zero() {
        let limits = BacklogLimits {
            slowdown_entries: 50,
            refuse_entries: 10,
            in_flow_delay_ms: 1000,
        };
        assert_eq!(pressure(9, limits), Pressure::None);
        assert_eq!(pressure(10, limits), Pressure::Refuse);
    }
}
