//! What becomes of one recipient after one attempt: a pure function of the
//! entry's history, the reply, the options and the clock.
//!
//! Owns: [`dispose`] and the [`Disposition`] it returns (delivered, failed
//! with the reply that decided it, or retry at a time). Retry limits and
//! expiry (`max_retries`, `message_expiration`) are decided here, nowhere
//! else; so is whether a retried message is due a delay DSN
//! ([`delay_dsn_until`]).
//! May call: `config` (the options' back-off arithmetic). Never: I/O,
//! queues, logs.

use crate::config::DeliveryOptions;

/// How the remote host (or the route) answered for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Accepted,
    Transient,
    Permanent,
}

/// One recipient's reply on one attempt: its class, the text, and the
/// stage (Momentum's connection stage code) it came at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReply {
    pub class: ReplyClass,
    pub text: String,
    pub stage: u8,
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    /// Failed for good: the reply says why (the remote 5xx, or ours when
    /// retries or time ran out).
    Failed {
        reply: String,
    },
    /// Try again at this time; `attempts` counts the attempt just made.
    Retry {
        attempts: u32,
        at_unix_ms: u64,
    },
}

/// What an entry has been through before this attempt.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// Attempts before this one.
    pub attempts: u32,
    pub received_unix_ms: u64,
}

/// Decides one recipient. A transient reply past `max_retries` or
/// `message_expiration` fails for good with `554 5.4.7`.
pub fn dispose(
    history: History,
    reply: &AttemptReply,
    options: &DeliveryOptions,
    now_unix_ms: u64,
) -> Disposition {
    match reply.class {
        ReplyClass::Accepted => Disposition::Delivered,
        ReplyClass::Permanent => Disposition::Failed {
            reply: reply.text.clone(),
        },
        ReplyClass::Transient => {
            let attempts = history.attempts + 1;
            let age_ms = now_unix_ms.saturating_sub(history.received_unix_ms);
            if age_ms >= options.message_expiration.as_millis() as u64 {
                Disposition::Failed {
                    reply: format!(
                        "554 5.4.7 [internal] exceeded max time without delivery (last: {})",
                        reply.text
                    ),
                }
            } else if options.retries_exhausted(attempts) {
                Disposition::Failed {
                    reply: format!(
                        "554 5.4.7 [internal] exceeded max retries (last: {})",
                        reply.text
                    ),
                }
            } else {
                Disposition::Retry {
                    attempts,
                    at_unix_ms: now_unix_ms + options.retry_delay(attempts).as_millis() as u64,
                }
            }
        }
    }
}

/// Whether recipients just deferred are due a delay DSN: `generate_delay_dsn`
/// is on, the return path is not null (never a DSN about a DSN) and the
/// message is at least `delay_dsn_retry_interval` old. Then the time until
/// which it will be retried (reception + `message_expiration`), for the
/// DSN's Will-Retry-Until. The home shard makes it once per message.
pub fn delay_dsn_until(
    history: History,
    mail_from: &str,
    options: &DeliveryOptions,
    now_unix_ms: u64,
) -> Option<u64> {
    if !options.generate_delay_dsn || mail_from.is_empty() {
        return None;
    }
    let age_ms = now_unix_ms.saturating_sub(history.received_unix_ms);
    if age_ms < options.delay_dsn_retry_interval.as_millis() as u64 {
        return None;
    }
    let expiration_ms = options.message_expiration.as_millis() as u64;
    Some(history.received_unix_ms.saturating_add(expiration_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_BINDING};

    fn options(text: &str) -> DeliveryOptions {
        Config::parse(text, std::path::Path::new("t.conf"))
            .unwrap()
            .delivery(DEFAULT_BINDING, "example.com")
    }

    fn reply(class: ReplyClass) -> AttemptReply {
        AttemptReply {
            class,
            text: "451 4.3.0 try later".into(),
            stage: 0,
        }
    }

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn accepted_and_permanent_are_final_whatever_the_history() {
        let o = options("");
        let h = History {
            attempts: 0,
            received_unix_ms: 0,
        };
        assert_eq!(
            dispose(h, &reply(ReplyClass::Accepted), &o, 1),
            Disposition::Delivered
        );
        assert_eq!(
            dispose(h, &reply(ReplyClass::Permanent), &o, 1),
            Disposition::Failed {
                reply: "451 4.3.0 try later".into()
            }
        );
    }

    #[test]
    fn a_transient_reply_retries_with_back_off_until_max_retries() {
        let o = options("retry_interval = 60\nmax_retry_interval = 600\nmax_retries = 3\n");
        let now = 10 * HOUR_MS;
        let h = |attempts| History {
            attempts,
            received_unix_ms: now - 1000,
        };
        assert_eq!(
            dispose(h(0), &reply(ReplyClass::Transient), &o, now),
            Disposition::Retry {
                attempts: 1,
                at_unix_ms: now + o.retry_delay(1).as_millis() as u64
            }
        );
        let Disposition::Retry { at_unix_ms, .. } =
            dispose(h(1), &reply(ReplyClass::Transient), &o, now)
        else {
            panic!("second attempt retries");
        };
        assert!(at_unix_ms > now + 60_000, "the delay grows");
        match dispose(h(3), &reply(ReplyClass::Transient), &o, now) {
            Disposition::Failed { reply } => {
                assert!(reply.starts_with("554 5.4.7 [internal] exceeded max retries"));
                assert!(reply.ends_with("(last: 451 4.3.0 try later)"));
            }
            other => panic!("retries ran out: {other:?}"),
        }
    }

    #[test]
    fn a_delay_dsn_is_due_past_the_interval_with_a_return_path_and_the_option_on() {
        let on = options(
            "generate_delay_dsn = true\ndelay_dsn_retry_interval = 600\nmessage_expiration = 3600\n",
        );
        let h = History {
            attempts: 2,
            received_unix_ms: HOUR_MS,
        };
        let ten_minutes = HOUR_MS + 600_000;
        assert_eq!(
            delay_dsn_until(h, "s@example.net", &on, ten_minutes),
            Some(2 * HOUR_MS),
            "due at the interval, retried until reception + message_expiration"
        );
        assert_eq!(
            delay_dsn_until(h, "s@example.net", &on, ten_minutes - 1),
            None
        );
        assert_eq!(
            delay_dsn_until(h, "", &on, ten_minutes),
            None,
            "never to the null sender (a DSN)"
        );
        let off = options("delay_dsn_retry_interval = 600\n");
        assert_eq!(
            delay_dsn_until(h, "s@example.net", &off, ten_minutes),
            None,
            "generate_delay_dsn is off by default"
        );
    }

    #[test]
    fn an_expired_message_fails_on_its_next_transient_reply() {
        let o = options("message_expiration = 3600\n");
        let h = History {
            attempts: 0,
            received_unix_ms: 0,
        };
        match dispose(h, &reply(ReplyClass::Transient), &o, HOUR_MS) {
            Disposition::Failed { reply } => {
                assert!(reply.contains("exceeded max time without delivery"))
            }
            other => panic!("expired: {other:?}"),
        }
        assert!(matches!(
            dispose(h, &reply(ReplyClass::Transient), &o, HOUR_MS - 1),
            Disposition::Retry { .. }
        ));
    }
}
