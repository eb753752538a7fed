//! Admission of outbound connections: whether a queue may open one more.
//!
//! Owns: [`may_open`], the one place connection limits are decided, and
//! the back-off of a destination ([`back_off`], [`greeted`], [`held_until`]).
//! Today the limit is `max_outbound_connections` per queue, shared out
//! between the parts of a queue spread over shards (`delivery_shards`);
//! per-host limits, throttles and cached connections per destination come
//! with the delivery issue and belong here.
//!
//! Back-off: a failure that is the destination's, not a message's (no
//! route, connection refused, greeting or EHLO refused or timed out, RSET
//! refused), sets the queue's `not_before_unix_ms` to now plus
//! `retry_delay(n)` for the n-th such failure in a row (at least
//! [`BACKOFF_MS_MIN`]). Until then `may_open` admits no connection and the
//! queue's entries wait in the delayed heap; failures of other connections
//! in the same back-off do not lengthen it; a proper greeting ends it.
//! May call: `config`, `queue`. Never: I/O, clocks (the caller passes now).

use crate::queue::{delivery_parts, Queue};

/// Shortest back-off of a destination, whatever `retry_interval` says, so
/// a zero interval cannot turn into a reconnect loop.
pub const BACKOFF_MS_MIN: u64 = 1_000;

/// Whether `queue` may open another connection at `now_unix_ms`: it is
/// not backed off, it has more entries than connections, and its share of
/// `max_outbound_connections` (the limit divided between its parts, at
/// least 1) is not used up.
pub fn may_open(queue: &Queue, shard_count: usize, now_unix_ms: u64) -> bool {
    if held_until(queue, now_unix_ms).is_some() {
        return false;
    }
    if queue.active.len() <= queue.connections as usize {
        return false;
    }
    let parts = delivery_parts(queue.options.delivery_shards, shard_count) as u32;
    queue.connections < (queue.options.max_outbound_connections / parts).max(1)
}

/// When the back-off of `queue` ends, if it is backed off at `now_unix_ms`.
pub fn held_until(queue: &Queue, now_unix_ms: u64) -> Option<u64> {
    (queue.not_before_unix_ms > now_unix_ms).then_some(queue.not_before_unix_ms)
}

/// The destination of `queue` failed outside any transaction: backs it
/// off (unless a back-off is already running) and returns when it ends.
pub fn back_off(queue: &mut Queue, now_unix_ms: u64) -> u64 {
    if let Some(until) = held_until(queue, now_unix_ms) {
        return until;
    }
    queue.backoffs_in_a_row = queue.backoffs_in_a_row.saturating_add(1);
    let delay_ms = queue
        .options
        .retry_delay(queue.backoffs_in_a_row)
        .as_millis() as u64;
    queue.not_before_unix_ms = now_unix_ms.saturating_add(delay_ms.max(BACKOFF_MS_MIN));
    queue.not_before_unix_ms
}

/// A session of `queue` got through its greeting: the destination works,
/// the back-off (if any) ends.
pub fn greeted(queue: &mut Queue) {
    queue.backoffs_in_a_row = 0;
    queue.not_before_unix_ms = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryOptions;
    use crate::queue::{Bindings, MessageId, MessageRef, Queues};
    use ecelerity_spool::BodyRef;

    fn entry() -> MessageRef {
        MessageRef {
            id: MessageId::new(0, 1),
            body: BodyRef {
                segment: 1,
                offset: 0,
                len: 1,
            },
            mail_from: "".into(),
            rcpts: vec![(0, "a@x.example".into())],
            binding: Bindings::DEFAULT,
            domain: "x.example".into(),
            received_unix_ms: 0,
            attempts: 0,
            next_attempt_unix_ms: 0,
            connection_id: 0,
            body_8bitmime: false,
            params: None,
            event_fields: None,
        }
    }

    #[test]
    fn a_queue_opens_up_to_its_share_of_the_limit() {
        let mut queues = Queues::default();
        let id = queues.find_or_create(Bindings::DEFAULT, "x.example", 1, || {
            let mut o = DeliveryOptions::builtin("h");
            o.max_outbound_connections = 4;
            o.delivery_shards = 2;
            o
        });
        let q = queues.get_mut(id).unwrap();
        assert!(!may_open(q, 2, 0), "nothing queued");
        for _ in 0..10 {
            q.active.push_back(entry());
        }
        assert!(may_open(q, 2, 0));
        q.connections = 2;
        assert!(!may_open(q, 2, 0), "4 connections shared by 2 parts");
        assert!(may_open(q, 1, 0), "on one shard the queue has one part");
    }

    #[test]
    fn a_failing_destination_is_backed_off_longer_each_time_until_it_greets() {
        let mut queues = Queues::default();
        let id = queues.find_or_create(Bindings::DEFAULT, "x.example", 1, || {
            let mut o = DeliveryOptions::builtin("h");
            o.retry_interval = std::time::Duration::from_secs(10);
            o.max_retry_interval = std::time::Duration::from_secs(25);
            o
        });
        let q = queues.get_mut(id).unwrap();
        q.active.push_back(entry());
        let now = 1_000_000;
        assert_eq!(held_until(q, now), None);
        assert_eq!(back_off(q, now), now + 10_000);
        assert!(!may_open(q, 1, now), "no connection while backed off");
        assert!(!may_open(q, 1, now + 9_999));
        assert_eq!(held_until(q, now + 5_000), Some(now + 10_000));
        // Other connections failing in the same back-off do not lengthen it.
        assert_eq!(back_off(q, now + 5_000), now + 10_000);
        assert!(may_open(q, 1, now + 10_000), "the back-off is over");
        // The next failure in a row doubles it, up to max_retry_interval.
        let later = now + 10_000;
        assert_eq!(back_off(q, later), later + 20_000);
        assert_eq!(back_off(q, later + 20_000), later + 20_000 + 25_000);
        greeted(q);
        assert!(may_open(q, 1, later + 20_001));
        assert_eq!(back_off(q, later + 50_000), later + 50_000 + 10_000);
    }

    #[test]
    fn a_zero_retry_interval_still_backs_off_a_little() {
        let mut queues = Queues::default();
        let id = queues.find_or_create(Bindings::DEFAULT, "x.example", 1, || {
            let mut o = DeliveryOptions::builtin("h");
            o.retry_interval = std::time::Duration::ZERO;
            o
        });
        let q = queues.get_mut(id).unwrap();
        assert_eq!(back_off(q, 5), 5 + BACKOFF_MS_MIN);
    }
}
