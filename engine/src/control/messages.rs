//! Messages one by one: `showqueue` and `message details|retry|fail`.
//!
//! Owns: [`queued_messages`] (pure: one shard's queues in, its queued
//! messages out) and the renderers of these commands. May call: `queue`
//! (read-only). Never: I/O, the clock (the caller passes now).

use std::fmt::Write as _;

use super::{ControlReply, MessageAction, QueuedMessage};
use crate::queue::{Bindings, MessageId, MessageRef, Queue, Queues};

/// The entries `pick` accepts, active ones first (in queue order), then
/// delayed ones by due time; at most `limit`.
pub fn queued_messages(
    queues: &Queues,
    bindings: &Bindings,
    pick: impl Fn(&Queue, &MessageRef) -> bool,
    limit: usize,
) -> Vec<QueuedMessage> {
    let mut out = Vec::new();
    for q in queues.iter() {
        for e in q.active.iter().filter(|e| pick(q, e)) {
            if out.len() >= limit {
                return out;
            }
            out.push(row(q, bindings, e, None));
        }
    }
    let mut delayed: Vec<(u64, &Queue, &MessageRef)> = queues
        .delayed_entries()
        .filter_map(|(id, due, e)| {
            let q = queues.get(id)?;
            pick(q, e).then_some((due, q, e))
        })
        .collect();
    delayed.sort_by_key(|(due, _, e)| (*due, e.id));
    let room = limit.saturating_sub(out.len());
    out.extend(
        delayed
            .into_iter()
            .take(room)
            .map(|(due, q, e)| row(q, bindings, e, Some(due))),
    );
    out
}

fn row(q: &Queue, bindings: &Bindings, e: &MessageRef, due: Option<u64>) -> QueuedMessage {
    QueuedMessage {
        delayed: due.is_some(),
        binding: bindings.name(q.key.binding).to_string(),
        id: e.id,
        binding_group: bindings.group(q.key.binding).to_string(),
        domain: q.key.domain.to_string(),
        received_unix_ms: e.received_unix_ms,
        next_attempt_unix_ms: due.unwrap_or(0),
        attempts: e.attempts,
        mail_from: e.mail_from.to_string(),
        rcpts: e.rcpts.iter().map(|(_, r)| r.to_string()).collect(),
        size_bytes: e.body.len as u64,
        suspended: q.suspended,
    }
}

/// Every shard's messages, sorted: active before delayed, then by binding
/// and id.
fn gather(parts: &[ControlReply]) -> Vec<&QueuedMessage> {
    let mut all: Vec<&QueuedMessage> = parts
        .iter()
        .flat_map(|p| match p {
            ControlReply::Messages(rows) => rows.as_slice(),
            _ => &[],
        })
        .collect();
    all.sort();
    all
}

fn side(m: &QueuedMessage) -> &'static str {
    if m.delayed {
        "delayed"
    } else {
        "active"
    }
}

/// Momentum's `showqueue`: per message `[active/<binding>] <id> Created:
/// <epoch>`, then `  From: <s> To: <r>` per recipient; `limit` messages
/// after skipping `offset`.
pub fn render_showqueue(
    parts: &[ControlReply],
    domain: &str,
    limit: usize,
    offset: usize,
) -> String {
    let all = gather(parts);
    let mut out = String::new();
    for m in all.iter().skip(offset).take(limit) {
        let _ = writeln!(
            out,
            "[{}/{}] {} Created: {}{}",
            side(m),
            m.binding,
            m.id,
            m.received_unix_ms / 1000,
            if m.suspended { " (suspended)" } else { "" }
        );
        for rcpt in &m.rcpts {
            let _ = writeln!(out, "  From: {} To: {}", sender(&m.mail_from), rcpt);
        }
    }
    if all.is_empty() {
        let _ = writeln!(out, "No messages queued for {domain}.");
    }
    out
}

/// The null reverse path as Momentum writes it.
fn sender(mail_from: &str) -> &str {
    if mail_from.is_empty() {
        "<>"
    } else {
        mail_from
    }
}

/// Momentum's `message details`: one block per queue the message is in
/// (a message to several domains is in several), in Momentum's order of
/// fields; `now_unix_ms` says how far off the next attempt is.
pub fn render_message(parts: &[ControlReply], id: MessageId, now_unix_ms: u64) -> String {
    let all = gather(parts);
    if all.is_empty() {
        return not_queued(id);
    }
    let mut out = String::new();
    for (i, m) in all.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "Message: {}", m.id);
        let _ = writeln!(out, "Message Type: SMTP");
        let _ = writeln!(out, "Created: {}", m.received_unix_ms / 1000);
        let next = if m.delayed {
            let secs = m.next_attempt_unix_ms.saturating_sub(now_unix_ms) / 1000;
            format!("{} (in {secs} seconds)", m.next_attempt_unix_ms / 1000)
        } else {
            "now (active queue)".to_string()
        };
        let _ = writeln!(out, "Next Attempt: {next}");
        let _ = writeln!(out, "Retries: {}", m.attempts);
        let _ = writeln!(
            out,
            "Queue: {} {}/{} {}{}",
            side(m),
            m.binding_group,
            m.binding,
            m.domain,
            if m.suspended { " (suspended)" } else { "" }
        );
        let _ = writeln!(out, "Sender: {}", sender(&m.mail_from));
        for rcpt in &m.rcpts {
            let _ = writeln!(out, "Recipient: {rcpt}");
        }
        let _ = writeln!(out, "Size: {}", m.size_bytes);
    }
    out
}

fn not_queued(id: MessageId) -> String {
    format!(
        "Message {id} is not queued (delivered, failed, or inside a delivery attempt right now).\n"
    )
}

/// The answer to `message retry` (Momentum's `Message requeued for
/// delivery`) or `message fail`.
pub fn render_message_changed(
    parts: &[ControlReply],
    id: MessageId,
    action: MessageAction,
) -> String {
    let n: u64 = parts
        .iter()
        .map(|p| match p {
            ControlReply::Requeued(n) | ControlReply::Failed(n) => *n,
            _ => 0,
        })
        .sum();
    match action {
        _ if n == 0 => not_queued(id),
        MessageAction::Retry => "Message requeued for delivery\n".to_string(),
        MessageAction::Fail { .. } => format!("Message {id} purged, {n} recipients failed.\n"),
        MessageAction::Details => unreachable!("details are rendered by render_message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryOptions;
    use crate::queue::BindingId;
    use ecelerity_spool::BodyRef;

    fn entry(id: MessageId, domain: &str, rcpts: &[&str]) -> MessageRef {
        MessageRef {
            id,
            body: BodyRef {
                segment: 1,
                offset: 0,
                len: 321,
            },
            mail_from: "s@sender.example".into(),
            rcpts: rcpts
                .iter()
                .enumerate()
                .map(|(i, r)| (i as u32, (*r).into()))
                .collect(),
            binding: BindingId(0),
            domain: domain.into(),
            received_unix_ms: 1_700_000_000_000,
            attempts: 2,
            next_attempt_unix_ms: 0,
            connection_id: 0,
            body_8bitmime: false,
            params: None,
            event_fields: None,
        }
    }

    fn bindings() -> Bindings {
        let config = crate::config::Config::parse("", std::path::Path::new("t.conf")).unwrap();
        Bindings::from_config(&config)
    }

    #[test]
    fn queued_messages_lists_active_then_delayed_by_due_time_up_to_the_limit() {
        let bindings = bindings();
        let mut queues = Queues::default();
        let options = || DeliveryOptions::builtin("h");
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let b = queues.find_or_create(Bindings::DEFAULT, "b.example", 1, options);
        let (m1, m2, m3) = (
            MessageId::new(0, 1),
            MessageId::new(1, 2),
            MessageId::new(0, 3),
        );
        queues.push_delayed(a, entry(m1, "a.example", &["x@a.example"]), 900);
        queues.push_delayed(a, entry(m2, "a.example", &["y@a.example"]), 500);
        queues
            .get_mut(a)
            .unwrap()
            .active
            .push_back(entry(m3, "a.example", &["z@a.example"]));
        queues.push_delayed(b, entry(m1, "b.example", &["x@b.example"]), 100);
        let rows = queued_messages(&queues, &bindings, |q, _| &*q.key.domain == "a.example", 10);
        let ids: Vec<(bool, MessageId, u64)> = rows
            .iter()
            .map(|r| (r.delayed, r.id, r.next_attempt_unix_ms))
            .collect();
        assert_eq!(ids, vec![(false, m3, 0), (true, m2, 500), (true, m1, 900)]);
        assert_eq!(rows[1].rcpts, vec!["y@a.example".to_string()]);
        assert_eq!(rows[1].size_bytes, 321);
        assert_eq!(queued_messages(&queues, &bindings, |_, _| true, 2).len(), 2);
        let of_m1 = queued_messages(&queues, &bindings, |_, e| e.id == m1, 10);
        assert_eq!(of_m1.len(), 2, "one entry per domain of the message");
    }

    fn queued(id: MessageId, delayed: bool, rcpts: &[&str]) -> QueuedMessage {
        QueuedMessage {
            delayed,
            binding: "default".into(),
            id,
            binding_group: "default".into(),
            domain: "a.example".into(),
            received_unix_ms: 1_700_000_000_123,
            next_attempt_unix_ms: if delayed { 1_700_000_060_000 } else { 0 },
            attempts: 1,
            mail_from: "".into(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            size_bytes: 99,
            suspended: false,
        }
    }

    #[test]
    fn showqueue_is_momentums_listing_with_limit_and_offset_over_every_shard() {
        let (m1, m2) = (MessageId::new(0, 1), MessageId::new(1, 2));
        let parts = vec![
            ControlReply::Messages(vec![queued(m2, true, &["b@a.example"])]),
            ControlReply::Messages(vec![queued(m1, false, &["a@a.example", "c@a.example"])]),
        ];
        let text = render_showqueue(&parts, "a.example", 10, 0);
        assert_eq!(
            text,
            format!(
                "[active/default] {m1} Created: 1700000000\n  From: <> To: a@a.example\n  From: <> To: c@a.example\n\
                 [delayed/default] {m2} Created: 1700000000\n  From: <> To: b@a.example\n"
            )
        );
        let second = render_showqueue(&parts, "a.example", 1, 1);
        assert!(
            second.starts_with(&format!("[delayed/default] {m2}")),
            "{second}"
        );
        assert_eq!(second.lines().count(), 2);
        assert_eq!(
            render_showqueue(&[ControlReply::Messages(vec![])], "a.example", 10, 0),
            "No messages queued for a.example.\n"
        );
    }

    #[test]
    fn message_details_show_every_queue_of_the_message_in_momentums_fields() {
        let id = MessageId::new(1, 7);
        let parts = vec![ControlReply::Messages(vec![queued(
            id,
            true,
            &["b@a.example"],
        )])];
        let text = render_message(&parts, id, 1_700_000_000_000);
        let labels: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            labels,
            [
                "Message",
                "Message Type",
                "Created",
                "Next Attempt",
                "Retries",
                "Queue",
                "Sender",
                "Recipient",
                "Size"
            ]
        );
        assert!(
            text.contains("Next Attempt: 1700000060 (in 60 seconds)\n"),
            "{text}"
        );
        assert!(
            text.contains("Queue: delayed default/default a.example\n"),
            "{text}"
        );
        assert!(text.contains("Sender: <>\n"), "{text}");
        assert!(render_message(&[], id, 0).contains("is not queued"));
    }

    #[test]
    fn retry_and_fail_answer_in_momentums_words_or_say_not_queued() {
        let id = MessageId::new(0, 9);
        let parts = [ControlReply::Requeued(1), ControlReply::Requeued(0)];
        assert_eq!(
            render_message_changed(&parts, id, MessageAction::Retry),
            "Message requeued for delivery\n"
        );
        let parts = [ControlReply::Failed(2), ControlReply::Failed(1)];
        assert_eq!(
            render_message_changed(&parts, id, MessageAction::Fail { quiet: false }),
            format!("Message {id} purged, 3 recipients failed.\n")
        );
        let none = [ControlReply::Requeued(0)];
        assert!(render_message_changed(&none, id, MessageAction::Retry).contains("is not queued"));
    }
}
