//! SMTP AUTH (RFC 4954) in the server session: the AUTH command, the 334
//! exchange of PLAIN and LOGIN, and the answer once the driver has checked
//! the credentials ([`Event::Authenticate`], [`ServerSession::authenticated`]).
//!
//! Owns: when AUTH is offered and accepted (a listener's mechanisms, only
//! under TLS unless `allow_plaintext_auth`), its replies, the identity of
//! an authenticated session (`Connection::auth_user`, which relay control
//! reads). May call: [`crate::smtp::sasl`]. Never: password files, clocks,
//! the failure table (the driver consults them and brings an
//! [`AuthOutcome`]).
//!
//! Without TLS and without `allow_plaintext_auth`, AUTH is left out of the
//! EHLO reply and the command is answered `503 5.5.1 Error: authentication
//! not enabled`, as Postfix does with `smtpd_tls_auth_only = yes`.

use std::io::Write as _;

use super::{Event, Phase, ServerSession};
use crate::smtp::capabilities::AuthMechanisms;
use crate::smtp::sasl::{
    credential_text, decode_response, parse_plain, Credentials, Mechanism, SaslError,
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE,
};

/// Which SASL response the session reads next (after a `334`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// The PLAIN message, after an empty challenge.
    Plain,
    /// The LOGIN user name.
    LoginUser,
    /// The LOGIN password; the user name is in `auth_pending_user`.
    LoginPassword,
}

/// What the driver found for the credentials of an [`Event::Authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// `235 2.7.0`: the session is authenticated as the user.
    Accepted,
    /// `535 5.7.8`: wrong user or password.
    Refused,
    /// The peer failed too often lately: `421 4.7.0` and close, without
    /// the credentials having been checked.
    TooManyFailures,
    /// The credentials could not be checked (no password file): `454 4.7.0`.
    Unavailable,
}

impl ServerSession {
    /// The user this session authenticated as, if it did.
    pub fn auth_user(&self) -> Option<&str> {
        self.connection.auth_user.as_deref()
    }

    /// The user name of the credentials being checked (Event::Authenticate
    /// not yet answered), for the acctlog.
    pub fn auth_pending_user(&self) -> &str {
        &self.auth_pending_user
    }

    /// The mechanisms offered now: the listener's, when TLS protects the
    /// session or the listener allows AUTH in clear text.
    pub(super) fn auth_offered(&self) -> AuthMechanisms {
        if self.tls_active() || self.params.auth_plaintext {
            self.params.capabilities.auth
        } else {
            AuthMechanisms::default()
        }
    }

    /// `AUTH mechanism [initial-response]`.
    pub(super) fn auth(&mut self, mechanism: &str, initial_response: Option<&str>) {
        if self.refuse_without_tls() {
            return;
        }
        let offered = self.auth_offered();
        let refusal = if offered.is_empty() {
            Some("Error: authentication not enabled")
        } else if !self.esmtp {
            Some("Error: send EHLO first")
        } else if self.connection.auth_user.is_some() {
            Some("Error: already authenticated")
        } else if self.has_mail {
            Some("Error: MAIL transaction in progress")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.reply(503, "5.5.1", format_args!("{text}"));
            self.count_error();
            return;
        }
        let mechanism = Mechanism::parse(mechanism).filter(|m| match m {
            Mechanism::Plain => offered.plain,
            Mechanism::Login => offered.login,
        });
        let Some(mechanism) = mechanism else {
            self.reply(
                504,
                "5.5.4",
                format_args!("Unsupported authentication mechanism"),
            );
            self.count_error();
            return;
        };
        match (mechanism, initial_response) {
            (Mechanism::Plain, None) => self.challenge(AuthStep::Plain, ""),
            (Mechanism::Login, None) => {
                self.challenge(AuthStep::LoginUser, LOGIN_USERNAME_CHALLENGE)
            }
            (Mechanism::Plain, Some(response)) => self.auth_response(AuthStep::Plain, response),
            (Mechanism::Login, Some(response)) => self.auth_response(AuthStep::LoginUser, response),
        }
    }

    /// `334 <challenge>`, then the next line is a response for `step`.
    fn challenge(&mut self, step: AuthStep, challenge: &str) {
        let _ = write!(self.output, "334 {challenge}\r\n");
        self.phase = Phase::AuthResponse(step);
    }

    /// One SASL response line (CRLF stripped) for `step`.
    pub(super) fn auth_response(&mut self, step: AuthStep, line: &str) {
        self.phase = Phase::Command;
        let decoded = match decode_response(line) {
            Ok(decoded) => decoded,
            Err(error) => return self.sasl_error(error),
        };
        match step {
            AuthStep::Plain => match parse_plain(&decoded) {
                Ok(credentials) => self.hand_over(credentials),
                Err(error) => self.sasl_error(error),
            },
            AuthStep::LoginUser => match credential_text(&decoded) {
                Ok(user) => {
                    self.auth_pending_user = user;
                    self.challenge(AuthStep::LoginPassword, LOGIN_PASSWORD_CHALLENGE);
                }
                Err(error) => self.sasl_error(error),
            },
            AuthStep::LoginPassword => match credential_text(&decoded) {
                Ok(password) => {
                    let user = std::mem::take(&mut self.auth_pending_user);
                    self.hand_over(Credentials { user, password });
                }
                Err(error) => self.sasl_error(error),
            },
        }
    }

    /// A response line that was too long: the exchange ends with the
    /// line-length reply already written.
    pub(super) fn auth_abandoned(&mut self) {
        self.phase = Phase::Command;
        self.auth_pending_user.clear();
    }

    fn sasl_error(&mut self, error: SaslError) {
        self.auth_pending_user.clear();
        let (code, enhanced) = error.reply();
        self.reply(code, enhanced, format_args!("{error}"));
        if error == SaslError::Malformed {
            self.count_error();
        }
    }

    /// The credentials go to the driver; input is held until
    /// `authenticated()`.
    fn hand_over(&mut self, credentials: Credentials) {
        self.auth_pending_user.clear();
        self.auth_pending_user.push_str(&credentials.user);
        self.phase = Phase::AwaitingAuth;
        self.events.push_back(Event::Authenticate(credentials));
    }

    /// Answer the last [`Event::Authenticate`], then go on with held input.
    pub fn authenticated(&mut self, outcome: AuthOutcome) {
        if self.phase == Phase::Closed {
            return;
        }
        assert_eq!(
            self.phase,
            Phase::AwaitingAuth,
            "authenticated() answers an Event::Authenticate"
        );
        self.phase = Phase::Command;
        let user = std::mem::take(&mut self.auth_pending_user);
        match outcome {
            AuthOutcome::Accepted => {
                assert!(!user.is_empty());
                self.connection.auth_user = Some(user);
                self.reply(235, "2.7.0", format_args!("Authentication successful"));
            }
            AuthOutcome::Refused => {
                self.reply(535, "5.7.8", format_args!("Error: authentication failed"));
                self.count_error();
            }
            AuthOutcome::TooManyFailures => {
                let host = self.params.hostname.clone();
                self.reply(
                    421,
                    "4.7.0",
                    format_args!("{host} Error: too many failed authentications, try again later"),
                );
                self.close();
            }
            AuthOutcome::Unavailable => {
                self.reply(
                    454,
                    "4.7.0",
                    format_args!("Temporary authentication failure"),
                );
            }
        }
        self.resume();
    }
}
