//! Policy phases of a reception, after Momentum's validation phases
//! (`validate_connect`, `validate_ehlo`, `validate_mailfrom`,
//! `validate_rcptto`, `validate_data`).
//!
//! A policy is asked, not called from inside the protocol: the SMTP
//! session stops at each phase and emits an event; its I/O driver hands
//! the shard's policy a [`Validation`] (what the session saw) and the
//! session's [`ValidationContext`], and feeds the [`Verdict`] back. A
//! policy that can decide at once answers [`Answer::Now`] (no allocation);
//! one that must wait (a DNS lookup, a Lua scriptlet, a datasource)
//! answers [`Answer::Later`] with a future the driver awaits on the
//! shard's executor. Those futures are `!Send`: a shard never moves them.
//!
//! Momentum's words map onto these types: a callout's `VALIDATE_CONT` is
//! [`Verdict::Continue`], `vctx:set_code(code, text)` with `VALIDATE_DONE`
//! is [`Verdict::Reject`], `vctx:disconnect` is [`Verdict::Disconnect`],
//! `VALIDATE_AGAIN` (blocked, call again) is [`Answer::Later`], and
//! `vctx:get/set(VCTX_CONN | VCTX_MESS, key[, value])` is
//! [`ValidationContext`] with [`Scope`].
//!
//! Owns: the [`Policy`] trait and what it is given ([`Validation`],
//! [`Check`], [`Connection`]); re-exports the verdict types
//! ([`verdict`]), the validation context ([`vctx`]) and the built-in
//! relay control ([`relay`]).
//! May call: std only.
//! Never: the engine, the spool, the network. Lua scriptlets implement the
//! same trait in their own module.

pub mod relay;
pub mod vctx;
pub mod verdict;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

pub use relay::{local_delivery_domain, Cidr, CidrError, ListenerRelayHosts, RelayControl};
pub use vctx::{Scope, ValidationContext, VctxError};
pub use verdict::{Rejection, ReplyError, Verdict, REPLY_TEXT_BYTES_MAX};

/// The phases a policy is asked about, in the order of a reception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// A client connected; before the banner.
    Connect,
    /// EHLO or HELO, before its reply.
    Ehlo,
    /// MAIL FROM, after the session's own checks.
    MailFrom,
    /// RCPT TO, after the session's own checks (the bare `postmaster` is
    /// accepted without asking).
    RcptTo,
    /// End of data: the whole message is in, before it is spooled.
    Data,
}

impl Phase {
    /// Momentum's callout name for the phase (what a scriptlet defines).
    pub fn callout(self) -> &'static str {
        match self {
            Phase::Connect => "validate_connect",
            Phase::Ehlo => "validate_ehlo",
            Phase::MailFrom => "validate_mailfrom",
            Phase::RcptTo => "validate_rcptto",
            Phase::Data => "validate_data",
        }
    }
}

/// What a policy knows of the connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer_ip: IpAddr,
    /// The configured `Listen` address of the listener the connection came
    /// in on (it may be a wildcard such as `0.0.0.0:25`).
    pub listener: SocketAddr,
    /// The accepted EHLO/HELO argument, empty before one was accepted.
    pub ehlo_domain: String,
    /// The user the client authenticated as (SMTP AUTH), if it did.
    pub auth_user: Option<String>,
}

/// The phase being asked about, with its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check<'a> {
    Connect,
    /// `domain` is the argument of this EHLO (`esmtp`) or HELO; the
    /// connection's `ehlo_domain` is still the one accepted before.
    Ehlo {
        domain: &'a str,
        esmtp: bool,
    },
    /// `reverse_path` is without angle brackets; empty for `<>`.
    MailFrom {
        reverse_path: &'a str,
    },
    /// `forward_path` is without angle brackets.
    RcptTo {
        forward_path: &'a str,
    },
    /// The message as received: CRLF lines, dot-unstuffed, no Received
    /// header yet. A message large enough to be streamed to the spool
    /// while it arrived shows its header block only (through the blank
    /// line, at most 64 KiB): a policy reads headers, never a whole large
    /// body.
    Data {
        body: &'a [u8],
        /// The body went to the spool while it arrived: `body` is the
        /// header block only, and the policy cannot change the message.
        streamed: bool,
    },
}

impl Check<'_> {
    pub fn phase(&self) -> Phase {
        match self {
            Check::Connect => Phase::Connect,
            Check::Ehlo { .. } => Phase::Ehlo,
            Check::MailFrom { .. } => Phase::MailFrom,
            Check::RcptTo { .. } => Phase::RcptTo,
            Check::Data { .. } => Phase::Data,
        }
    }
}

/// Everything a policy is shown for one phase. Borrowed from the session
/// for as long as the policy takes to answer.
#[derive(Debug, Clone, Copy)]
pub struct Validation<'a> {
    pub connection: &'a Connection,
    /// Reverse path of the open transaction; empty before MAIL was
    /// accepted and for `<>`.
    pub mail_from: &'a str,
    /// Recipients accepted so far in the open transaction, in order.
    pub rcpts: &'a [String],
    pub check: Check<'a>,
}

/// A verdict still to come. It may borrow the policy, the validation and
/// the context; the session waits (holding pipelined input) until it
/// resolves.
pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + 'a>>;

/// A policy's answer to one phase.
pub enum Answer<'a> {
    /// Decided at once.
    Now(Verdict),
    /// Decided when the future resolves.
    Later(VerdictFuture<'a>),
}

impl<'a> Answer<'a> {
    pub const CONTINUE: Answer<'a> = Answer::Now(Verdict::Continue);

    pub fn later(future: impl Future<Output = Verdict> + 'a) -> Self {
        Answer::Later(Box::pin(future))
    }
}

/// A policy: one instance per shard, asked about every phase of every
/// session the shard serves. It may read and write the session's
/// validation context. A reply it gives is checked by the session
/// ([`Rejection::check`]); a bad one becomes `451 4.3.0`.
pub trait Policy {
    fn validate<'a>(
        &'a self,
        validation: Validation<'a>,
        vctx: &'a mut ValidationContext,
    ) -> Answer<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::future::poll_fn;
    use std::task::{Context, Poll, Waker};

    /// Goal: a policy can await between being asked and answering, and
    /// write the validation context while it does. Method: a policy whose
    /// future waits until a flag is set, polled by hand.
    #[test]
    fn a_later_answer_resolves_when_its_future_does_and_may_write_the_context() {
        struct Waiting {
            ready: Cell<bool>,
        }
        impl Policy for Waiting {
            fn validate<'a>(
                &'a self,
                validation: Validation<'a>,
                vctx: &'a mut ValidationContext,
            ) -> Answer<'a> {
                Answer::later(async move {
                    poll_fn(|_| {
                        if self.ready.get() {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                    let phase = validation.check.phase().callout();
                    vctx.set(Scope::Message, "asked", phase).unwrap();
                    Verdict::Reject(Rejection::new(450, "4.7.1", "later"))
                })
            }
        }
        let policy = Waiting {
            ready: Cell::new(false),
        };
        let connection = Connection {
            peer_ip: "192.0.2.1".parse().unwrap(),
            listener: "0.0.0.0:25".parse().unwrap(),
            ehlo_domain: String::new(),
            auth_user: None,
        };
        let mut vctx = ValidationContext::new();
        let validation = Validation {
            connection: &connection,
            mail_from: "",
            rcpts: &[],
            check: Check::MailFrom {
                reverse_path: "a@c.test",
            },
        };
        let Answer::Later(mut future) = policy.validate(validation, &mut vctx) else {
            panic!("the policy waits");
        };
        let mut cx = Context::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        policy.ready.set(true);
        let Poll::Ready(verdict) = future.as_mut().poll(&mut cx) else {
            panic!("ready now");
        };
        drop(future);
        assert!(matches!(verdict, Verdict::Reject(r) if r.code == 450));
        assert_eq!(vctx.get(Scope::Message, "asked"), Some("validate_mailfrom"));
    }
}
