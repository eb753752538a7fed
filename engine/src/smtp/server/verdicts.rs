//! The policy half of the inbound session: what a policy is shown at each
//! phase ([`ServerSession::validation`]), and how its verdict is carried
//! out ([`ServerSession::validated`]): continue, a checked rejection, or
//! `451 4.3.0` for a reply that is not well-formed.
//!
//! Owns: the `ServerSession` methods between an `Event::Validate` and the
//! resumed session. May call: the session's reply helpers (`super`),
//! `ecelerity_policy` data types. Never: a policy object, I/O.

use super::*;

impl ServerSession {
    /// What the policy is asked about (after [`Event::Validate`]), and the
    /// validation context it may read and write. Both borrow the session
    /// until the verdict is in.
    pub fn validation(&mut self) -> (Validation<'_>, &mut ValidationContext) {
        let Phase::AwaitingPolicy(phase) = self.phase else {
            panic!("validation() follows an Event::Validate");
        };
        let check = match phase {
            PolicyPhase::Connect => Check::Connect,
            PolicyPhase::Ehlo => Check::Ehlo {
                domain: &self.argument,
                esmtp: self.argument_esmtp,
            },
            PolicyPhase::MailFrom => Check::MailFrom {
                reverse_path: &self.argument,
            },
            PolicyPhase::RcptTo => Check::RcptTo {
                forward_path: &self.argument,
            },
            PolicyPhase::Data if self.body_taken => Check::Data {
                body: &self.head,
                streamed: true,
            },
            PolicyPhase::Data => Check::Data {
                body: &self.body,
                streamed: false,
            },
        };
        let validation = Validation {
            connection: &self.connection,
            mail_from: &self.mail_from,
            rcpts: &self.rcpts,
            check,
        };
        (validation, &mut self.vctx)
    }

    /// Answer the last [`Event::Validate`] with the policy's verdict, then
    /// go on with the held pipelined input. A reply the policy got wrong
    /// ([`Rejection::check`]) is answered with `451 4.3.0` (`421 4.3.0`
    /// and close at connect) and returned as the error, for the caller's
    /// paniclog. After a close (shutdown while the policy was deciding)
    /// the verdict is ignored.
    #[must_use = "a policy's bad reply belongs in the paniclog"]
    pub fn validated(&mut self, verdict: Verdict) -> Result<(), ReplyError> {
        let phase = match self.phase {
            Phase::AwaitingPolicy(phase) => phase,
            Phase::Closed => return Ok(()),
            other => panic!("validated() answers an Event::Validate, not {other:?}"),
        };
        self.phase = Phase::Command;
        let (rejection, disconnect) = match verdict {
            Verdict::Continue => {
                self.proceed(phase);
                self.resume();
                return Ok(());
            }
            Verdict::Reject(rejection) => (rejection, false),
            Verdict::Disconnect(rejection) => (rejection, true),
        };
        let result = rejection.check();
        if result.is_ok() {
            self.refuse(phase, &rejection);
            if disconnect {
                self.close();
            }
        } else {
            self.policy_failed(phase);
        }
        self.resume();
        result
    }

    /// The policy could not decide (it timed out or failed): answer the
    /// last [`Event::Validate`] with `451 4.3.0` (`421 4.3.0` and close
    /// at connect), then go on. Ignored after a close.
    pub fn validation_failed(&mut self) {
        let phase = match self.phase {
            Phase::AwaitingPolicy(phase) => phase,
            Phase::Closed => return,
            other => panic!("validation_failed() answers an Event::Validate, not {other:?}"),
        };
        self.phase = Phase::Command;
        self.policy_failed(phase);
        self.resume();
    }

    /// Hand `phase` to the policy and hold input until `validated()`.
    pub(super) fn await_policy(&mut self, phase: PolicyPhase) {
        self.phase = Phase::AwaitingPolicy(phase);
        self.events.push_back(Event::Validate(phase));
    }

    /// Carry out a `Continue` verdict.
    pub(super) fn proceed(&mut self, phase: PolicyPhase) {
        match phase {
            PolicyPhase::Connect => {
                let host = &self.params.hostname;
                let version = self.params.version;
                let _ = write!(self.output, "220 {host} ESMTP ecelerity {version}\r\n");
            }
            PolicyPhase::Ehlo => self.accept_greeting(),
            PolicyPhase::MailFrom => self.accept_mail(),
            PolicyPhase::RcptTo => self.accept_rcpt(),
            PolicyPhase::Data => self.accept_message(),
        }
    }

    /// Carry out a refusal with a checked reply. The reply names what it
    /// refuses: our host at connect, the address or domain otherwise.
    pub(super) fn refuse(&mut self, phase: PolicyPhase, rejection: &Rejection) {
        match phase {
            PolicyPhase::Connect => {
                let code = if rejection.code < 500 { 421 } else { 554 };
                let host = self.params.hostname.clone();
                self.reply_rejection(code, rejection, Some(format_args!("{host}")));
                self.close();
            }
            PolicyPhase::Ehlo | PolicyPhase::MailFrom | PolicyPhase::RcptTo => {
                let argument = std::mem::take(&mut self.argument);
                self.reply_rejection(
                    rejection.code,
                    rejection,
                    Some(format_args!("<{argument}>:")),
                );
                self.argument = argument;
                if phase == PolicyPhase::MailFrom {
                    self.body_8bitmime = false;
                    self.size_declared = None;
                }
            }
            PolicyPhase::Data => {
                self.reply_rejection(rejection.code, rejection, None);
                self.reset_transaction();
            }
        }
    }

    /// The policy gave no usable verdict: a temporary failure the client
    /// may retry, `421 4.3.0` and close at connect.
    pub(super) fn policy_failed(&mut self, phase: PolicyPhase) {
        const TEXT: &str = "Error: internal policy error, try again later";
        match phase {
            PolicyPhase::Connect => {
                let host = self.params.hostname.clone();
                self.reply(421, "4.3.0", format_args!("{host} {TEXT}"));
                self.close();
            }
            PolicyPhase::Ehlo | PolicyPhase::RcptTo => {
                self.reply(451, "4.3.0", format_args!("{TEXT}"));
            }
            PolicyPhase::MailFrom => {
                self.body_8bitmime = false;
                self.size_declared = None;
                self.reply(451, "4.3.0", format_args!("{TEXT}"));
            }
            PolicyPhase::Data => {
                self.reply(451, "4.3.0", format_args!("{TEXT}"));
                self.reset_transaction();
            }
        }
    }
}
