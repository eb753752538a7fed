//! Admission of outbound connections: whether a queue may open one more.
//!
//! Owns: [`may_open`], the one place connection limits are decided.
//! Today that is `max_outbound_connections` per queue, shared out between
//! the parts of a queue spread over shards (`delivery_shards`); per-host
//! limits, throttles and cached connections per destination come with
//! the delivery issue and belong here.
//! May call: `config`, `queue`. Never: I/O.

use crate::queue::{delivery_parts, Queue};

/// Whether `queue` may open another connection: it has more entries than
/// connections, and its share of `max_outbound_connections` (the limit
/// divided between its parts, at least 1) is not used up.
pub fn may_open(queue: &Queue, shard_count: usize) -> bool {
    if queue.active.len() <= queue.connections as usize {
        return false;
    }
    let parts = delivery_parts(queue.options.delivery_shards, shard_count) as u32;
    queue.connections < (queue.options.max_outbound_connections / parts).max(1)
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
        assert!(!may_open(q, 2), "nothing queued");
        for _ in 0..10 {
            q.active.push_back(entry());
        }
        assert!(may_open(q, 2));
        q.connections = 2;
        assert!(!may_open(q, 2), "4 connections shared by 2 parts");
        assert!(may_open(q, 1), "on one shard the queue has one part");
    }
}
