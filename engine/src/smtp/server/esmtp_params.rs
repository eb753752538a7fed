//! The server session's part of SMTPUTF8 (RFC 6531) and DSN (RFC 3461):
//! which MAIL and RCPT parameters and UTF-8 paths a transaction may have,
//! and what it hands over with its message.
//!
//! Owns: the refusals (`555 5.5.4` for a parameter of an extension not
//! offered, `553 5.6.7` for a UTF-8 path without SMTPUTF8 on MAIL).
//! May call: `smtp::params`. Never: I/O.

use super::super::command::{CommandError, MailParams, RcptDsn};
use super::super::params::{parse_orcpt, MessageParams, RcptParams};
use super::ServerSession;

impl ServerSession {
    /// Refuses MAIL for a parameter of an extension not offered, or a
    /// UTF-8 reverse path without `SMTPUTF8`; true when it did.
    pub(super) fn mail_params_refused(
        &mut self,
        reverse_path: &str,
        params: &MailParams<'_>,
    ) -> bool {
        let capabilities = self.params.capabilities;
        let dsn = params.ret.is_some() || params.envid.is_some();
        if (params.smtputf8 && !capabilities.smtputf8) || (dsn && !capabilities.dsn) {
            self.command_error(CommandError::UnknownParameter);
            return true;
        }
        if !reverse_path.is_ascii() && !params.smtputf8 {
            self.refuse_utf8_path(reverse_path);
            return true;
        }
        false
    }

    /// Refuses RCPT for a DSN parameter without DSN offered, or a UTF-8
    /// forward path in a transaction without `SMTPUTF8`; otherwise keeps
    /// its parameters for `accept_rcpt`. True when it refused.
    pub(super) fn rcpt_params_refused(&mut self, forward_path: &str, params: RcptDsn<'_>) -> bool {
        if !params.is_empty() && !self.params.capabilities.dsn {
            self.command_error(CommandError::UnknownParameter);
            return true;
        }
        // Only inside a transaction: RCPT before MAIL gets its 503 from
        // `rcpt` whatever its path.
        if self.has_mail && !forward_path.is_ascii() && !self.message_params.smtputf8 {
            self.refuse_utf8_path(forward_path);
            return true;
        }
        self.rcpt_params = RcptParams {
            notify: params.notify,
            orcpt: params.orcpt.and_then(|o| parse_orcpt(o).ok()),
        };
        false
    }

    /// RFC 6531 section 3.7.4.1 (as Postfix words it): a UTF-8 address
    /// needs MAIL's SMTPUTF8.
    fn refuse_utf8_path(&mut self, path: &str) {
        self.reply(
            553,
            "5.6.7",
            format_args!("<{path}>: Must declare SMTPUTF8 to send unicode address"),
        );
        self.count_error();
    }

    /// The recipient just accepted (the last of `rcpts`) keeps the
    /// parameters its RCPT had. Nothing is allocated until a recipient has
    /// some (most mail has none); from then on the list covers every
    /// recipient up to the last with parameters.
    pub(super) fn keep_rcpt_params(&mut self) {
        let params = std::mem::take(&mut self.rcpt_params);
        let index = self.rcpts.len() - 1;
        if params.is_empty() && self.message_params.rcpts.is_empty() {
            return;
        }
        self.message_params
            .rcpts
            .resize_with(index, RcptParams::default);
        self.message_params.rcpts.push(params);
        debug_assert_eq!(self.message_params.rcpts.len(), self.rcpts.len());
    }

    /// The open transaction's parameters for its message; `rcpts` empty
    /// when no recipient had any (most mail).
    pub(super) fn take_message_params(&mut self) -> MessageParams {
        let mut params = std::mem::take(&mut self.message_params);
        if params.rcpts.iter().all(RcptParams::is_empty) {
            params.rcpts = Vec::new();
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use ecelerity_policy::Verdict;

    use super::super::{Event, ServerLimits, ServerParams, SpoolOutcome};
    use super::*;
    use crate::smtp::capabilities::Capabilities;
    use crate::smtp::params::{Notify, Ret};

    /// A session offering SMTPUTF8 and DSN (as `on` says), banner taken,
    /// whose policy lets everything through.
    fn session(on: bool) -> ServerSession {
        let mut session = ServerSession::new(ServerParams {
            hostname: "mx.test".into(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            listener: "192.0.2.10:25".parse().unwrap(),
            limits: ServerLimits::default(),
            capabilities: Capabilities {
                smtputf8: on,
                dsn: on,
                ..Capabilities::default()
            },
            version: "0.1.0",
            tls_required: false,
            auth_plaintext: false,
        });
        session.start();
        send(&mut session, "");
        session
    }

    /// Feeds `text`, lets every policy phase through, returns the replies
    /// and the message handed over, if any.
    fn exchange(
        session: &mut ServerSession,
        text: &str,
    ) -> (Vec<String>, Option<super::super::Envelope>) {
        session.input(text.as_bytes());
        let mut envelope = None;
        loop {
            match session.next_event() {
                Some(Event::Validate(_)) => session.validated(Verdict::Continue).unwrap(),
                Some(Event::Message(e)) => {
                    envelope = Some(e);
                    session.spooled(SpoolOutcome::Queued {
                        queue_id: "0A1B".into(),
                    });
                }
                _ => break,
            }
        }
        let mut out = Vec::new();
        session.take_output(&mut out);
        let text = String::from_utf8(out).unwrap();
        (
            text.split_terminator("\r\n").map(str::to_owned).collect(),
            envelope,
        )
    }

    fn send(session: &mut ServerSession, text: &str) -> Vec<String> {
        exchange(session, text).0
    }

    #[test]
    fn ehlo_offers_smtputf8_and_dsn_when_on() {
        let mut s = session(true);
        let ehlo = send(&mut s, "EHLO c.test\r\n");
        assert!(ehlo.contains(&"250-SMTPUTF8".to_string()), "{ehlo:?}");
        assert_eq!(ehlo.last().unwrap(), "250 DSN");
        let mut off = session(false);
        let ehlo = send(&mut off, "EHLO c.test\r\n");
        assert!(!ehlo
            .iter()
            .any(|l| l.contains("SMTPUTF8") || l.contains("DSN")));
        assert_eq!(
            send(
                &mut off,
                "MAIL FROM:<a@c.test> SMTPUTF8\r\nMAIL FROM:<a@c.test> RET=FULL\r\n\
                 MAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test> NOTIFY=NEVER\r\n"
            ),
            [
                "555 5.5.4 Error: unsupported parameter",
                "555 5.5.4 Error: unsupported parameter",
                "250 2.1.0 Ok",
                "555 5.5.4 Error: unsupported parameter",
            ]
        );
    }

    #[test]
    fn a_utf8_path_needs_smtputf8_on_mail() {
        let mut s = session(true);
        send(&mut s, "EHLO c.test\r\n");
        assert_eq!(
            send(&mut s, "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.test>\r\n"),
            ["553 5.6.7 <j\u{f6}rg@b\u{fc}cher.test>: Must declare SMTPUTF8 to send unicode address"]
        );
        assert_eq!(
            send(
                &mut s,
                "MAIL FROM:<a@c.test>\r\nRCPT TO:<\u{e9}@x.test>\r\nRSET\r\n"
            ),
            [
                "250 2.1.0 Ok",
                "553 5.6.7 <\u{e9}@x.test>: Must declare SMTPUTF8 to send unicode address",
                "250 2.0.0 Ok"
            ]
        );
        let (replies, envelope) = exchange(
            &mut s,
            "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.test> SMTPUTF8\r\nRCPT TO:<\u{e9}@x.test>\r\n\
             DATA\r\nSubject: gr\u{fc}\u{df}e\r\n\r\nhi\r\n.\r\n",
        );
        assert_eq!(
            replies[..3],
            [
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>"
            ]
        );
        let envelope = envelope.expect("a message");
        assert!(envelope.params.smtputf8);
        assert_eq!(envelope.rcpts, ["\u{e9}@x.test"]);
        let received = s.received_header(&envelope, "0A1B", 0);
        assert!(received.contains("with UTF8ESMTP id 0A1B"), "{received}");
    }

    #[test]
    fn dsn_parameters_go_with_the_message_by_recipient_index() {
        let mut s = session(true);
        send(&mut s, "EHLO c.test\r\n");
        let (_, envelope) = exchange(
            &mut s,
            "MAIL FROM:<a@c.test> RET=HDRS ENVID=e+2B1\r\nRCPT TO:<b@x.test>\r\n\
             RCPT TO:<c@x.test> NOTIFY=NEVER ORCPT=rfc822;c+40y.test\r\n\
             DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
        );
        let params = envelope.expect("a message").params;
        assert_eq!(params.ret, Some(Ret::Hdrs));
        assert_eq!(params.envid.as_deref(), Some("e+1"));
        assert_eq!(params.rcpts.len(), 2, "the first recipient padded");
        assert!(params.rcpts[0].is_empty());
        assert_eq!(params.rcpts[1].notify, Some(Notify::NEVER));
        assert_eq!(
            params.rcpts[1].orcpt,
            Some(("rfc822".to_string(), "c@y.test".to_string()))
        );
        // The next transaction starts without them.
        let (_, envelope) = exchange(
            &mut s,
            "MAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nSubject: y\r\n\r\nhi\r\n.\r\n",
        );
        assert!(envelope.expect("a message").params.is_empty());
    }
}
