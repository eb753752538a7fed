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

    /// The open transaction's parameters for its message; `rcpts` left
    /// empty when no recipient had one (most mail).
    pub(super) fn take_message_params(&mut self) -> MessageParams {
        let mut params = std::mem::take(&mut self.message_params);
        if params.rcpts.iter().all(RcptParams::is_empty) {
            params.rcpts = Vec::new();
        }
        params
    }
}
