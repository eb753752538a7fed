//! Applying the dispositions of one attempt: the mainlog lines (D, T, P),
//! the bouncelog lines (B, with Momentum's bounce classification), the
//! counters, the delayed queue for retries, and the outcomes reported
//! to the message's home shard (with the failing reply, for the DSN; and,
//! past `delay_dsn_retry_interval`, a delay report for the delay DSN).
//!
//! Owns: [`settle`], [`sweep`], [`fail_active`] and [`fail_entries`]. May call: `disposition` (the decision),
//! `pool` (back-off), `bounce` (classification), `log`, `stats`, the queue (through [`Outbound`]),
//! `mesh` (reports).
//! Never: deciding anything `disposition` decides.

use std::rc::Rc;

use super::disposition::{
    delay_dsn_until, dispose, AttemptReply, Disposition, History, ReplyClass,
};
use super::{pool, Outbound};
use crate::bounce::classify;
use crate::clock::now_unix_ms;
use crate::config::DeliveryOptions;
use crate::events::{Event, EventType};
use crate::log::{format_bounce, format_delivery, format_failure, Attempt, Bounce, RecordIds};
use crate::mesh::{Delay, Failure, Outcome, OutcomeKind};
use crate::queue::{MessageId, MessageRef, QueueId};
use crate::smtp::client::Stage;
use crate::smtp::params::Notify;
use crate::stats::Counter;

/// Most entries one failed connection attempt defers at once.
pub const SWEEP_ENTRIES_MAX: usize = 10_000;

/// Backs off the destination of queue `id` after a failure that is the
/// destination's, not a message's (no route, connection refused, greeting
/// or EHLO refused, timed out or cut, RSET refused), and defers the
/// queue's active entries: each recipient gets `reply` at `stage` as a
/// transient failure (a T line, an attempt towards `max_retries`). Active
/// entries past `SWEEP_ENTRIES_MAX` wait for the back-off to end without
/// an attempt counted.
pub(super) fn sweep(
    out: &Rc<Outbound>,
    id: QueueId,
    options: &Rc<DeliveryOptions>,
    reply: &str,
    stage: Stage,
    remote_ip: &str,
) {
    let entries: Vec<MessageRef> = {
        let mut queues = out.queues.borrow_mut();
        let Some(q) = queues.get_mut(id) else {
            return;
        };
        let until = pool::back_off(q, now_unix_ms());
        let n = q.active.len().min(SWEEP_ENTRIES_MAX);
        let entries = q.active.drain(..n).collect();
        let rest: Vec<MessageRef> = q.active.drain(..).collect();
        for entry in rest {
            queues.push_delayed(id, entry, until);
        }
        entries
    };
    settle_all(
        out,
        id,
        options,
        entries,
        reply,
        stage,
        remote_ip,
        ReplyClass::Transient,
    );
}

/// The route of queue `id` failed for good (NXDOMAIN, null MX, a domain
/// without any address): every active entry fails with `reply` (P lines
/// and bounces). No back-off: nothing is left to retry.
pub(super) fn fail_active(
    out: &Rc<Outbound>,
    id: QueueId,
    options: &Rc<DeliveryOptions>,
    reply: &str,
) {
    let entries: Vec<MessageRef> = match out.queues.borrow_mut().get_mut(id) {
        Some(q) => q.active.drain(..).collect(),
        None => return,
    };
    let stage = Stage::NotConnected;
    settle_all(
        out,
        id,
        options,
        entries,
        reply,
        stage,
        "",
        ReplyClass::Permanent,
    );
}

/// Fails every recipient of `entries` (taken from queue `id`) with
/// `reply`, now (the operator's `fail domain`).
pub(super) fn fail_entries(
    out: &Rc<Outbound>,
    id: QueueId,
    options: &Rc<DeliveryOptions>,
    entries: Vec<MessageRef>,
    reply: &str,
) {
    settle_all(
        out,
        id,
        options,
        entries,
        reply,
        Stage::NotConnected,
        "",
        ReplyClass::Permanent,
    );
}

/// Settles every recipient of `entries` with one `reply` of `class`, in a
/// task of its own.
#[allow(clippy::too_many_arguments)]
fn settle_all(
    out: &Rc<Outbound>,
    id: QueueId,
    options: &Rc<DeliveryOptions>,
    entries: Vec<MessageRef>,
    reply: &str,
    stage: Stage,
    remote_ip: &str,
    class: ReplyClass,
) {
    let (out, options, reply, remote_ip) = (
        out.clone(),
        options.clone(),
        reply.to_string(),
        remote_ip.to_string(),
    );
    glommio::spawn_local(async move {
        for entry in entries {
            let replies = entry
                .rcpts
                .iter()
                .map(|_| AttemptReply {
                    class,
                    text: reply.clone(),
                    stage: stage.code(),
                })
                .collect();
            settle(&out, id, &options, entry, replies, 0, &remote_ip, false).await;
        }
    })
    .detach();
}

/// Decides and records each recipient's outcome of one attempt: logs it,
/// counts it, puts retries in the delayed queue, and reports to the
/// message's home shard. `dsn_passed_on`: the server offered DSN, so the
/// recipients' NOTIFY went with them and success is its to report.
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle(
    out: &Rc<Outbound>,
    id: QueueId,
    options: &DeliveryOptions,
    entry: MessageRef,
    replies: Vec<AttemptReply>,
    bytes_sent: u64,
    remote_ip: &str,
    dsn_passed_on: bool,
) {
    assert_eq!(replies.len(), entry.rcpts.len());
    let now = now_unix_ms();
    let history = History {
        attempts: entry.attempts,
        received_unix_ms: entry.received_unix_ms,
    };
    let dispositions: Vec<Disposition> = replies
        .iter()
        .map(|r| dispose(history, r, options, now))
        .collect();
    log_attempt(
        out,
        &entry,
        &replies,
        &dispositions,
        bytes_sent,
        remote_ip,
        now,
    );

    let mut delivered = Vec::new();
    let mut reports = Vec::new();
    let params = entry.params.as_deref();
    let wants = |index: u32, kind: Notify| params.is_none_or(|p| p.wants(index, kind));
    let mut retry: Vec<u32> = Vec::new();
    // Filled only when a delay DSN is due: most retries need no copies.
    let delay_until = delay_dsn_until(history, &entry.mail_from, options, now);
    let mut retry_replies: Vec<(Box<str>, Box<str>)> = Vec::new();
    let mut retry_indexes: Vec<u32> = Vec::new();
    let mut retry_at = None;
    for (((index, rcpt), reply), disposition) in entry.rcpts.iter().zip(&replies).zip(dispositions)
    {
        match disposition {
            Disposition::Delivered
                if !dsn_passed_on && params.is_some_and(|p| p.wants(*index, Notify::SUCCESS)) =>
            {
                delivered.push(*index);
                reports.push(Outcome {
                    id: entry.id,
                    rcpts: vec![*index],
                    kind: OutcomeKind::Relayed(Box::new(Failure {
                        reply: reply.text.as_str().into(),
                        stage: reply.stage,
                        rcpt: rcpt.clone(),
                        mail_from: entry.mail_from.clone(),
                        body: entry.body,
                        received_unix_ms: entry.received_unix_ms,
                        generate_bounce: true,
                        binding: entry.binding,
                        params: entry.params.clone(),
                        rcpt_index: *index,
                    })),
                });
            }
            Disposition::Delivered => delivered.push(*index),
            Disposition::Failed { reply: text } => reports.push(Outcome {
                id: entry.id,
                rcpts: vec![*index],
                kind: OutcomeKind::Failed(Box::new(Failure {
                    reply: text.into(),
                    stage: reply.stage,
                    rcpt: rcpt.clone(),
                    mail_from: entry.mail_from.clone(),
                    body: entry.body,
                    received_unix_ms: entry.received_unix_ms,
                    // NOTIFY without FAILURE (or NEVER): no DSN.
                    generate_bounce: options.generate_bounces && wants(*index, Notify::FAILURE),
                    binding: entry.binding,
                    params: entry.params.clone(),
                    rcpt_index: *index,
                })),
            }),
            Disposition::Retry {
                attempts,
                at_unix_ms,
            } => {
                retry.push(*index);
                if delay_until.is_some() && wants(*index, Notify::DELAY) {
                    retry_replies.push((rcpt.clone(), reply.text.as_str().into()));
                    retry_indexes.push(*index);
                }
                retry_at = Some((attempts, at_unix_ms));
            }
        }
    }
    let stats = out.env.stats();
    let failed = reports.len() as u64;
    stats.add(Counter::Delivered, delivered.len() as u64);
    let age_ms = now_unix_ms().saturating_sub(entry.received_unix_ms);
    out.env
        .latency
        .borrow_mut()
        .record_delivery(age_ms, delivered.len() as u64);
    stats.add(Counter::Failed, failed);
    stats.add(Counter::TransientFailures, retry.len() as u64);
    if let Some(q) = out.queues.borrow_mut().get_mut(id) {
        q.delivered += delivered.len() as u64;
        q.failed += failed;
    }
    // Relayed ones were counted as delivered and reported on their own.
    delivered.retain(|index| {
        !reports
            .iter()
            .any(|o| matches!(o.kind, OutcomeKind::Relayed(_)) && o.rcpts == [*index])
    });
    if !delivered.is_empty() {
        reports.push(Outcome {
            id: entry.id,
            rcpts: delivered,
            kind: OutcomeKind::Delivered,
        });
    }
    // A delay DSN only for recipients whose NOTIFY asks for one.
    if let (Some(until), false) = (delay_until, retry_replies.is_empty()) {
        reports.push(Outcome {
            id: entry.id,
            rcpts: retry.clone(),
            kind: OutcomeKind::Delayed(Box::new(Delay {
                rcpts: retry_replies,
                mail_from: entry.mail_from.clone(),
                body: entry.body,
                received_unix_ms: entry.received_unix_ms,
                binding: entry.binding,
                will_retry_until_unix_ms: until,
                params: entry.params.clone(),
                rcpt_indexes: retry_indexes,
            })),
        });
    }
    if let Some((attempts, next_attempt_unix_ms)) = retry_at {
        reports.push(Outcome {
            id: entry.id,
            rcpts: retry.clone(),
            kind: OutcomeKind::Retry {
                attempts,
                next_attempt_unix_ms,
            },
        });
        let mut again = entry;
        again.rcpts.retain(|(i, _)| retry.contains(i));
        again.attempts = attempts;
        again.next_attempt_unix_ms = next_attempt_unix_ms;
        out.queues
            .borrow_mut()
            .push_delayed(id, again, next_attempt_unix_ms);
    }
    out.router.report(reports).await;
}

/// One mainlog line per recipient (`D`, `T` or `P`), and a bouncelog `B`
/// line per permanently failed one.
fn log_attempt(
    out: &Outbound,
    entry: &MessageRef,
    replies: &[AttemptReply],
    dispositions: &[Disposition],
    bytes_sent: u64,
    remote_ip: &str,
    now: u64,
) {
    let message_id = entry.id.to_string();
    let connection_id = MessageId(entry.connection_id).to_string();
    let ids = RecordIds {
        unix_secs: now / 1000,
        message_id: &message_id,
        batch_id: &message_id,
        connection_id: &connection_id,
    };
    let age_ms = now.saturating_sub(entry.received_unix_ms);
    out.env.logs.mainlog(|buf| {
        for (reply, disposition) in replies.iter().zip(dispositions) {
            let mut attempt = Attempt {
                domain: &entry.domain,
                bytes: bytes_sent,
                binding_group: out.bindings.group(entry.binding),
                binding: out.bindings.name(entry.binding),
                stage: reply.stage,
                retries: entry.attempts,
                secs_since_reception: age_ms as f64 / 1000.0,
                remote_ip,
                error: &reply.text,
            };
            match disposition {
                Disposition::Delivered => {
                    attempt.bytes = entry.body.len as u64;
                    format_delivery(buf, &ids, &attempt);
                }
                Disposition::Failed { reply: why } => {
                    attempt.error = why;
                    format_failure(buf, &ids, true, &attempt);
                }
                Disposition::Retry { .. } => format_failure(buf, &ids, false, &attempt),
            }
        }
    });
    let failed = entry.rcpts.iter().zip(replies).zip(dispositions);
    for (((_, rcpt), reply), disposition) in failed {
        let Disposition::Failed { reply: why } = disposition else {
            continue;
        };
        out.env.logs.bouncelog(|buf| {
            let bounce = Bounce {
                rcpt,
                mail_from: &entry.mail_from,
                binding_group: out.bindings.group(entry.binding),
                binding: out.bindings.name(entry.binding),
                stage: reply.stage,
                bounce_code: classify(why),
                size_bytes: entry.body.len as u64,
                remote_ip,
                raw_reply: why,
            };
            format_bounce(buf, &ids, &bounce);
        });
    }
    tell_scriptlets(out, entry, replies, dispositions, remote_ip, &message_id);
    if out.env.events.is_enabled() {
        let (unix_secs, queue_time_ms) = (now / 1000, age_ms);
        let attempt = AttemptFacts {
            message_id: &message_id,
            unix_secs,
            queue_time_ms,
            remote_ip,
        };
        log_attempt_events(out, entry, replies, dispositions, &attempt);
    }
}

/// The scripts' delivery callouts (`log_delivery`, `log_transfail`,
/// `log_permfail`), one outcome per recipient, when a script has them.
fn tell_scriptlets(
    out: &Outbound,
    entry: &MessageRef,
    replies: &[AttemptReply],
    dispositions: &[Disposition],
    remote_ip: &str,
    message_id: &str,
) {
    use crate::scriptlet::{Outcome, OutcomeKind};
    let scriptlets = out.scriptlets.borrow();
    let Some(scriptlets) = scriptlets.as_ref().filter(|s| s.wants_outcomes()) else {
        return;
    };
    let each = entry.rcpts.iter().zip(replies).zip(dispositions);
    let outcomes = each
        .map(|(((_, rcpt), reply), disposition)| {
            let (kind, why) = match disposition {
                Disposition::Delivered => (OutcomeKind::Delivered, ""),
                Disposition::Failed { reply: why } => (OutcomeKind::Permanent, why.as_ref()),
                Disposition::Retry { .. } => (OutcomeKind::Transient, reply.text.as_ref()),
            };
            Outcome {
                kind,
                message_id: message_id.to_string(),
                mail_from: entry.mail_from.to_string(),
                rcpt: rcpt.to_string(),
                domain: entry.domain.to_string(),
                binding: out.bindings.name(entry.binding).to_string(),
                binding_group: out.bindings.group(entry.binding).to_string(),
                reply: why.to_string(),
                remote_ip: remote_ip.to_string(),
                retries: entry.attempts,
            }
        })
        .collect();
    scriptlets.outcomes(outcomes);
}

/// What every event of one attempt shares.
struct AttemptFacts<'a> {
    message_id: &'a str,
    unix_secs: u64,
    queue_time_ms: u64,
    remote_ip: &'a str,
}

/// One `delivery`, `delay` or `bounce` event per recipient of an attempt.
fn log_attempt_events(
    out: &Outbound,
    entry: &MessageRef,
    replies: &[AttemptReply],
    dispositions: &[Disposition],
    facts: &AttemptFacts<'_>,
) {
    let events = &out.env.events;
    {
        let each = entry.rcpts.iter().zip(replies).zip(dispositions);
        for (((_, rcpt), reply), disposition) in each {
            let (kind, reason, class) = match disposition {
                Disposition::Delivered => (EventType::Delivery, None, None),
                Disposition::Retry { .. } => (EventType::Delay, Some(reply.text.as_str()), None),
                Disposition::Failed { reply: why } => {
                    (EventType::Bounce, Some(why.as_str()), Some(classify(why)))
                }
            };
            let event_id = events.next_id();
            let e = Event {
                kind,
                event_id,
                unix_secs: facts.unix_secs,
                message_id: facts.message_id,
                rcpt_to: rcpt,
                msg_from: &entry.mail_from,
                binding: out.bindings.name(entry.binding),
                binding_group: out.bindings.group(entry.binding),
                msg_size: Some(entry.body.len as u64),
                ip_address: Some(facts.remote_ip),
                num_retries: Some(entry.attempts),
                queue_time_ms: Some(facts.queue_time_ms),
                raw_reason: reason,
                bounce_class: class,
                method: "esmtp",
                generation: entry.event_fields.as_deref(),
            };
            events.record(&e);
        }
    }
}
