//! The outbound SMTP client of one connection, as a pure state machine:
//! banner, EHLO (HELO when EHLO gets 5xx), transactions (MAIL, RCPT, DATA,
//! body; pipelined per RFC 2920 when offered), RSET after a transaction
//! that stopped midway, QUIT (also after a refused greeting, EHLO/HELO or
//! RSET, while the connection is still in step). Also DATA transparency
//! (`encode_body`, `BodyEncoder`).
//!
//! Owns: the protocol decisions of a delivery connection, the per-recipient
//! outcomes of each transaction, the commands waiting to be written.
//! May call: `super::reply`. Never: sockets, clocks, the spool, the queues.
//!
//! The driver (`delivery`) connects, then loops on [`ClientSession::poll`]:
//! it writes [`ClientSession::output`] on `Send`, streams the body through a
//! [`BodyEncoder`] on `SendBody`, reads with the stage's timeout on
//! `WaitForReply` and feeds what it reads to [`ClientSession::on_input`],
//! and reports a timeout or a lost connection with [`ClientSession::abort`].
//! Every recipient handed to `start_transaction` comes back in exactly one
//! `TransactionDone`, whatever the server or the network does.

pub use super::body::{encode_body, BodyEncoder, BODY_TRAILER_BYTES_MAX};
use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;
use std::io::Write as _;

use super::params::{MessageParams, RcptParams};
use super::reply::{EnhancedCode, Reply, ReplyError, ReplyParser};
use super::sasl::{self, Mechanism};

/// Most recipients in one transaction. RFC 5321 requires servers to take
/// 100; Momentum's `max_recipients_per_batch` defaults to 100 as well.
pub const TRANSACTION_RCPTS_MAX: usize = 1000;
/// Longest address put in a MAIL or RCPT command, brackets excluded. RFC
/// 5321 allows 256 for a path; the spool keeps up to 1024, and we do not
/// refuse what our own server accepted.
pub const ADDRESS_BYTES_MAX: usize = 1024;
/// Longest EHLO/HELO name.
pub const EHLO_HOSTNAME_BYTES_MAX: usize = 255;

const _: () = assert!(ADDRESS_BYTES_MAX >= 256);
const _: () = assert!(TRANSACTION_RCPTS_MAX >= 100);

mod ehlo;
mod stage;

pub use ehlo::Capabilities;
pub use stage::Stage;

/// The server broke the protocol; the connection is out of step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("malformed reply: {0}")]
    Reply(#[from] ReplyError),
    #[error("unexpected reply `{reply}` {stage}")]
    UnexpectedReply { reply: String, stage: Stage },
}

/// Why the driver gave up on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The stage's timeout expired.
    Timeout,
    /// The server closed the connection.
    PeerClosed,
    /// A read or write failed.
    Io,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortReason::Timeout => "timeout",
            AbortReason::PeerClosed => "connection closed by peer",
            AbortReason::Io => "connection error",
        })
    }
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// The server refused the banner, EHLO and HELO, or RSET.
    Rejected(Reply),
    Protocol(ClientError),
    Aborted(AbortReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stage the connection was in when it failed.
    pub stage: Stage,
    pub cause: FailureCause,
    /// The reply that says why, for logs: the server's refusal, or ours
    /// (`451 4.4.2` for a timeout or lost connection, `451 4.5.0` for a
    /// protocol error).
    pub reply: Reply,
}

impl Failure {
    fn new(stage: Stage, cause: FailureCause, reply: Reply) -> Failure {
        Failure {
            stage,
            cause,
            reply,
        }
    }

    /// True when the session failed outside any transaction: at the
    /// banner, EHLO or HELO, or at the RSET between two transactions. No
    /// recipient's outcome carries such a failure (a transaction that RSET
    /// preceded is deferred with it, but the fault is not the message's),
    /// so the entries waiting for this destination take it, and the
    /// destination is backed off: reconnecting at once would fail alike.
    pub fn is_outside_transaction(&self) -> bool {
        matches!(
            self.stage,
            Stage::ReadingBanner
                | Stage::DuringEhlo
                | Stage::AfterEhlo
                | Stage::DuringStarttls
                | Stage::AfterStarttls
                | Stage::TlsHandshake
                | Stage::DuringRset
                | Stage::AfterRset
        )
    }
}

/// Final outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took the message for this recipient: the final reply.
    Accepted(Reply),
    /// Try again later.
    Transient(Reply),
    /// Bounce.
    Permanent(Reply),
}

impl RcptOutcome {
    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Accepted(reply)
            | RcptOutcome::Transient(reply)
            | RcptOutcome::Permanent(reply) => reply,
        }
    }

    /// The outcome a reply means for a recipient still in play. A reply
    /// that is neither 2xx nor 5xx counts as transient.
    fn from_reply(reply: Reply) -> RcptOutcome {
        if reply.is_positive() {
            RcptOutcome::Accepted(reply)
        } else if reply.is_permanent() {
            RcptOutcome::Permanent(reply)
        } else {
            RcptOutcome::Transient(reply)
        }
    }
}

/// What became of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// One outcome per recipient, in the order given to `start_transaction`.
    pub rcpts: Vec<RcptOutcome>,
    /// For each recipient, the stage at which its outcome was decided
    /// (Momentum logs it in `T`/`P` lines): 4 for a RCPT rejection, 9 for
    /// the reply after the body.
    pub rcpt_stages: Vec<Stage>,
    /// Stage at which the transaction ended.
    pub stage: Stage,
    /// Encoded body bytes written, as reported to `body_sent`; 0 when the
    /// body was not sent.
    pub bytes_sent: u64,
}

/// Whether the session asks for STARTTLS (the `tls` option, read by the
/// driver): `Off`; `Opportunistic` when the server offers it, clear text
/// otherwise; `Required`, never a transaction in clear text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Off,
    Opportunistic,
    Required,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// STARTTLS got `220`: run the TLS handshake over the connection, then
    /// call `tls_started` (or `abort` when it failed).
    StartTls,
    /// Write all of `output()`, then call `output_sent()`.
    Send,
    /// Write the body through a `BodyEncoder` (or `encode_body`), then call
    /// `body_sent` with the encoded bytes written.
    SendBody,
    /// Read from the server with this stage's timeout and feed `on_input`.
    WaitForReply(Stage),
    /// Idle: call `start_transaction` or `quit`.
    Ready,
    /// A transaction ended; log and retire its recipients, then poll again.
    TransactionDone(TransactionResult),
    /// The session ended: QUIT was answered, or the server closed it with
    /// 421 or hung up while idle. Close the socket.
    Closed,
    /// The session cannot go on (QUIT, when the connection was still in
    /// step, has been sent and answered or given up on). Close the socket.
    Failed(Failure),
}

/// A reply the session waits for, in the order the commands were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Banner,
    Ehlo,
    Helo,
    StartTls,
    /// 334 to `AUTH LOGIN`: the user name goes next.
    AuthLoginUser,
    /// 334 after the user name: the password goes next.
    AuthLoginPassword,
    /// The result of AUTH (235 to go on).
    Auth,
    Rset,
    Mail,
    /// Index into the transaction's recipients.
    Rcpt(usize),
    Data,
    /// The reply after the body (or after a lone "." ending a DATA that
    /// should not have been accepted), or after the BDAT chunk marked LAST.
    Final,
    Quit,
    /// The reply to a BDAT chunk not marked LAST.
    Chunk,
}

impl Expect {
    /// Stage while this reply is awaited.
    fn stage(self) -> Stage {
        match self {
            Expect::Banner => Stage::ReadingBanner,
            Expect::Ehlo
            | Expect::Helo
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::Auth => Stage::DuringEhlo,
            Expect::StartTls => Stage::DuringStarttls,
            Expect::Rset => Stage::DuringRset,
            Expect::Mail => Stage::DuringMailFrom,
            Expect::Rcpt(_) => Stage::DuringRcptTo,
            Expect::Data => Stage::DuringData,
            Expect::Final | Expect::Chunk => Stage::ReadingConfirmation,
            Expect::Quit => Stage::Idle,
        }
    }

    /// Stage once this reply has been read.
    fn stage_after(self) -> Stage {
        match self {
            Expect::Banner => Stage::ReadingBanner,
            Expect::Ehlo
            | Expect::Helo
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::Auth => Stage::AfterEhlo,
            Expect::StartTls => Stage::AfterStarttls,
            Expect::Rset => Stage::AfterRset,
            Expect::Mail => Stage::AfterMailFrom,
            Expect::Rcpt(_) => Stage::AfterRcptTo,
            Expect::Data | Expect::Chunk => Stage::AfterData,
            Expect::Final | Expect::Quit => Stage::Idle,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Banner, EHLO, HELO, STARTTLS.
    Greeting,
    /// STARTTLS got 220: the driver runs the handshake.
    Handshake,
    Ready,
    /// Commands of a transaction written or waiting for replies.
    Transaction,
    /// 354 received; the driver is writing the body.
    Body,
    Quitting,
    Closed,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RcptState {
    /// RCPT not yet written (only without PIPELINING).
    Unsent,
    /// RCPT written, reply not yet read.
    Sent,
    /// RCPT got 2xx; the outcome waits for DATA and the body.
    Accepted,
    Final(RcptOutcome, Stage),
}

#[derive(Debug)]
struct Transaction {
    mail_from: String,
    rcpts: Vec<String>,
    states: Vec<RcptState>,
    /// MAIL parameters, starting with a space, e.g. " SIZE=123 BODY=8BITMIME".
    mail_parameters: String,
    /// Per recipient, its RCPT parameters (DSN passed on), starting with
    /// a space, or empty; empty when none has any.
    rcpt_parameters: Vec<String>,
    /// MAIL got 2xx: the server holds a transaction until RSET or the reply
    /// after the body.
    mail_accepted: bool,
    /// The reply after the body (or after a lone ".") was read.
    final_read: bool,
    bytes_sent: u64,
    /// Stage of the last reply that decided an outcome.
    stage: Stage,
    /// The body goes with BDAT (`send_chunking` and CHUNKING offered):
    /// no DATA; once the RCPT replies are in, the body.
    bdat: bool,
    /// The BDAT body was handed to the driver.
    body_started: bool,
}

impl Transaction {
    /// `RCPT TO:<..>` of recipient `index`, with its parameters.
    fn write_rcpt(&self, output: &mut Vec<u8>, index: usize) {
        let parameters = self.rcpt_parameters.get(index).map_or("", String::as_str);
        let _ = write!(output, "RCPT TO:<{}>{parameters}\r\n", self.rcpts[index]);
    }

    fn any_accepted(&self) -> bool {
        self.states.contains(&RcptState::Accepted)
    }

    /// Gives every recipient not yet final the outcome of `reply`.
    fn decide_open(&mut self, reply: &Reply, stage: Stage) {
        for state in &mut self.states {
            if !matches!(state, RcptState::Final(..)) {
                *state = RcptState::Final(RcptOutcome::from_reply(reply.clone()), stage);
                self.stage = stage;
            }
        }
    }

    /// Every recipient not yet final becomes transient with `reply`.
    fn defer_all_open(&mut self, reply: &Reply, stage: Stage) {
        for state in &mut self.states {
            if !matches!(state, RcptState::Final(..)) {
                *state = RcptState::Final(RcptOutcome::Transient(reply.clone()), stage);
                self.stage = stage;
            }
        }
    }

    fn into_result(self) -> TransactionResult {
        let mut rcpts = Vec::with_capacity(self.states.len());
        let mut rcpt_stages = Vec::with_capacity(self.states.len());
        for state in self.states {
            let RcptState::Final(outcome, stage) = state else {
                panic!("transaction ended with a recipient still open: {state:?}");
            };
            rcpts.push(outcome);
            rcpt_stages.push(stage);
        }
        TransactionResult {
            rcpts,
            rcpt_stages,
            stage: self.stage,
            bytes_sent: self.bytes_sent,
        }
    }
}

/// One outbound SMTP connection. Created once TCP is connected (a failed
/// connect is logged by the driver with `Stage::NotConnected`).
#[derive(Debug)]
pub struct ClientSession {
    ehlo_hostname: String,
    parser: ReplyParser,
    /// Commands to write. Reused for the whole connection.
    output: Vec<u8>,
    /// Replies owed by the server, oldest first. At most
    /// TRANSACTION_RCPTS_MAX + 4 entries (RSET, MAIL, RCPTs, DATA, final).
    awaiting: VecDeque<Expect>,
    phase: Phase,
    /// Stage when no reply is awaited.
    stage_idle: Stage,
    /// From EHLO; `Some(default)` after HELO; `None` before either.
    capabilities: Option<Capabilities>,
    transaction: Option<Transaction>,
    /// A finished transaction not yet handed to the driver.
    finished: Option<TransactionResult>,
    /// The server may still hold a transaction: write RSET before the next.
    rset_needed: bool,
    /// The failure to report once the QUIT sent after a refusal is
    /// answered (or the connection goes).
    failure_after_quit: Option<Failure>,
    starttls: StartTls,
    /// The handshake after STARTTLS succeeded.
    tls_active: bool,
    /// Credentials to send with AUTH when the server offers it.
    auth: Option<OutboundAuth>,
    /// `send_chunking`: bodies go with BDAT when CHUNKING is offered.
    chunking: bool,
}

/// Momentum's `outbound_smtp_auth_*` options for one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundAuth {
    pub user: String,
    pub password: String,
    /// `outbound_smtp_auth_type`; `None`: PLAIN when offered, else LOGIN.
    pub mechanism: Option<Mechanism>,
    /// `outbound_smtp_auth_allow_plaintext`: credentials may go over a
    /// connection without TLS.
    pub allow_plaintext: bool,
}

impl fmt::Debug for OutboundAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundAuth")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// `ehlo_hostname` comes from configuration, which must have checked it
    /// with `is_valid_ehlo_hostname`.
    pub fn new(ehlo_hostname: &str) -> ClientSession {
        ClientSession::with_starttls(ehlo_hostname, StartTls::Off)
    }

    /// As `new`, asking for STARTTLS as `starttls` says.
    pub fn with_starttls(ehlo_hostname: &str, starttls: StartTls) -> ClientSession {
        assert!(
            is_valid_ehlo_hostname(ehlo_hostname),
            "bad EHLO name {ehlo_hostname:?}"
        );
        let mut awaiting = VecDeque::with_capacity(8);
        awaiting.push_back(Expect::Banner);
        ClientSession {
            ehlo_hostname: ehlo_hostname.to_string(),
            parser: ReplyParser::new(),
            output: Vec::with_capacity(1024),
            awaiting,
            phase: Phase::Greeting,
            stage_idle: Stage::ReadingBanner,
            capabilities: None,
            transaction: None,
            finished: None,
            rset_needed: false,
            failure_after_quit: None,
            starttls,
            tls_active: false,
            auth: None,
            chunking: false,
        }
    }

    /// Send bodies with BDAT (RFC 3030) to a server that offers CHUNKING
    /// (`send_chunking`).
    pub fn with_chunking(mut self, chunking: bool) -> ClientSession {
        self.chunking = chunking;
        self
    }

    /// The body of the transaction under way goes with BDAT: on
    /// `SendBody`, the driver writes it as BDAT chunks, the last one
    /// marked LAST, as it is (no dot-stuffing), then calls `bdat_sent`.
    pub fn body_uses_bdat(&self) -> bool {
        self.transaction.as_ref().is_some_and(|t| t.bdat)
    }

    /// Authenticate with `auth` after EHLO when the server offers AUTH.
    pub fn with_auth(mut self, auth: Option<OutboundAuth>) -> ClientSession {
        self.auth = auth;
        self
    }

    /// The TLS handshake after STARTTLS succeeded: EHLO again (RFC 3207
    /// section 4.2: what the server offered in clear text is forgotten).
    pub fn tls_started(&mut self) {
        assert_eq!(
            self.phase,
            Phase::Handshake,
            "tls_started answers ClientAction::StartTls"
        );
        self.tls_active = true;
        self.capabilities = None;
        self.phase = Phase::Greeting;
        self.write_greeting(b"EHLO ", Expect::Ehlo);
    }

    /// The TLS handshake after STARTTLS failed (`why`: the TLS error, a
    /// refused certificate): the connection is of no more use. The failure
    /// is at stage 17 (TLS handshake), outside any transaction, so the
    /// driver may try again in clear text where `tls = ifavailable`.
    pub fn tls_failed(&mut self, why: &str) {
        assert_eq!(
            self.phase,
            Phase::Handshake,
            "tls_failed answers ClientAction::StartTls"
        );
        let text = format!("ecelerity: TLS handshake failed: {why}");
        let reply = refusal_text(451, EnhancedCode::new(4, 7, 5), text);
        let failure = Failure::new(
            Stage::TlsHandshake,
            FailureCause::Aborted(AbortReason::Io),
            reply,
        );
        self.end(Phase::Failed(failure));
    }

    /// The handshake after STARTTLS succeeded.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn stage(&self) -> Stage {
        match &self.phase {
            Phase::Body => Stage::SendingBody,
            Phase::Failed(failure) => failure.stage,
            _ => self
                .awaiting
                .front()
                .map_or(self.stage_idle, |expect| expect.stage()),
        }
    }

    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// Bytes the driver must write when `poll` says `Send`.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// All of `output()` was written.
    pub fn output_sent(&mut self) {
        self.output.clear();
    }

    /// Reply bytes held while waiting for the rest of a line.
    pub fn buffered_bytes(&self) -> usize {
        self.parser.buffered_bytes()
    }

    pub fn poll(&mut self) -> ClientAction {
        if let Some(result) = self.finished.take() {
            return ClientAction::TransactionDone(result);
        }
        match &self.phase {
            Phase::Closed => return ClientAction::Closed,
            Phase::Failed(failure) => return ClientAction::Failed(failure.clone()),
            _ => {}
        }
        if !self.output.is_empty() {
            return ClientAction::Send;
        }
        match self.phase {
            Phase::Ready => ClientAction::Ready,
            Phase::Body => ClientAction::SendBody,
            Phase::Handshake => ClientAction::StartTls,
            _ => {
                assert!(
                    !self.awaiting.is_empty(),
                    "{:?} with nothing to wait for",
                    self.phase
                );
                ClientAction::WaitForReply(self.stage())
            }
        }
    }

    /// Feeds bytes read from the server. An error means the server broke
    /// the protocol; the session has then failed (see `poll`).
    pub fn on_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if matches!(self.phase, Phase::Closed | Phase::Failed(_)) {
            return Ok(());
        }
        self.parser.feed(bytes);
        loop {
            let reply = match self.parser.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(()),
                Err(error) => return Err(self.fail_protocol(ClientError::Reply(error))),
            };
            self.on_reply(reply)?;
            if matches!(self.phase, Phase::Closed | Phase::Failed(_)) {
                return Ok(());
            }
            if self.phase == Phase::Handshake {
                // Bytes after the 220 to STARTTLS would be clear text read
                // as if it came over TLS (the server side of
                // CVE-2011-0411): the handshake is not even tried.
                if self.parser.buffered_bytes() > 0 {
                    self.tls_failed("the server sent more after its 220 to STARTTLS");
                }
                return Ok(());
            }
        }
    }

    /// Starts a transaction; only after `poll` returned `Ready`. Addresses
    /// are without angle brackets, `mail_from` empty for the null sender.
    /// `body_len` is the unencoded body size, announced with SIZE= when
    /// offered; BODY=8BITMIME is sent when `body_8bit` and offered. When
    /// it is not offered, the driver converts an 8-bit body first
    /// (`super::downgrade`) or calls `refuse_body` instead.
    /// A recipient this client cannot send (bad syntax, SMTPUTF8 needed and
    /// not offered, message over the server's SIZE) gets a permanent
    /// outcome without any traffic.
    pub fn start_transaction(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body_len: u64,
        body_8bit: bool,
    ) {
        self.start_transaction_with(mail_from, rcpts, body_len, body_8bit, &[]);
    }

    /// [`ClientSession::start_transaction`] for a message with SMTPUTF8 or
    /// DSN parameters: `params` is empty or has one entry per recipient
    /// (the message's, and the recipient's own). A message flagged
    /// SMTPUTF8 goes with it on MAIL, and to a server that does not offer
    /// it not at all (`550 5.6.7` for each recipient: RFC 6531 section
    /// 3.2 never lets it go unflagged). DSN parameters are passed on when
    /// the server offers DSN (RFC 3461 section 4), left off otherwise.
    pub fn start_transaction_with(
        &mut self,
        mail_from: &str,
        rcpts: &[&str],
        body_len: u64,
        body_8bit: bool,
        params: &[(Option<&MessageParams>, Option<&RcptParams>)],
    ) {
        assert!(params.is_empty() || params.len() == rcpts.len());
        let message = params.first().and_then(|(m, _)| *m);
        assert_eq!(
            self.phase,
            Phase::Ready,
            "start_transaction while not Ready"
        );
        assert!(self.finished.is_none() && self.transaction.is_none());
        assert!(!rcpts.is_empty() && rcpts.len() <= TRANSACTION_RCPTS_MAX);
        let capabilities = self.capabilities.clone().unwrap_or_default();

        let mut transaction = Transaction {
            mail_from: mail_from.to_string(),
            rcpts: rcpts.iter().map(|rcpt| rcpt.to_string()).collect(),
            states: vec![RcptState::Unsent; rcpts.len()],
            mail_parameters: String::new(),
            rcpt_parameters: Vec::new(),
            mail_accepted: false,
            final_read: false,
            bytes_sent: 0,
            stage: Stage::Idle,
            bdat: self.chunking && capabilities.chunking,
            body_started: false,
        };

        let flagged_utf8 = message.is_some_and(|m| m.smtputf8);
        let sender_refusal = if !is_valid_address(mail_from) {
            Some(refusal(
                501,
                EnhancedCode::new(5, 1, 7),
                "bad sender address syntax",
            ))
        } else if !mail_from.is_ascii() && !capabilities.smtputf8 {
            Some(refusal(
                553,
                EnhancedCode::new(5, 6, 7),
                "sender needs SMTPUTF8, not offered",
            ))
        } else if flagged_utf8 && !capabilities.smtputf8 {
            Some(refusal(
                550,
                EnhancedCode::new(5, 6, 7),
                "SMTPUTF8 is required, but was not offered by the host",
            ))
        } else if matches!(capabilities.size_max, Some(max) if max > 0 && body_len > max) {
            Some(refusal(
                552,
                EnhancedCode::new(5, 3, 4),
                "message exceeds the server's SIZE",
            ))
        } else {
            None
        };
        if let Some(reply) = sender_refusal {
            transaction.decide_open(&reply, Stage::Idle);
        }
        for (state, rcpt) in transaction.states.iter_mut().zip(rcpts) {
            if *state != RcptState::Unsent {
                continue;
            }
            let reply = if rcpt.is_empty() || !is_valid_address(rcpt) {
                refusal(
                    501,
                    EnhancedCode::new(5, 1, 3),
                    "bad recipient address syntax",
                )
            } else if !rcpt.is_ascii() && !capabilities.smtputf8 {
                refusal(
                    553,
                    EnhancedCode::new(5, 6, 7),
                    "recipient needs SMTPUTF8, not offered",
                )
            } else {
                continue;
            };
            *state = RcptState::Final(RcptOutcome::Permanent(reply), Stage::Idle);
        }
        if !transaction.states.contains(&RcptState::Unsent) {
            self.finished = Some(transaction.into_result());
            return;
        }

        if capabilities.size_max.is_some() {
            let _ = write!(transaction.mail_parameters, " SIZE={body_len}");
        }
        if body_8bit && capabilities.eightbitmime {
            transaction.mail_parameters.push_str(" BODY=8BITMIME");
        }
        let needs_utf8 = !mail_from.is_ascii() || rcpts.iter().any(|rcpt| !rcpt.is_ascii());
        if (needs_utf8 || flagged_utf8) && capabilities.smtputf8 {
            transaction.mail_parameters.push_str(" SMTPUTF8");
        }
        if capabilities.dsn {
            if let Some(message) = message {
                message.write_mail_params(&mut transaction.mail_parameters);
            }
            if params.iter().any(|(_, rcpt)| rcpt.is_some()) {
                transaction.rcpt_parameters = params
                    .iter()
                    .map(|(_, rcpt)| {
                        let mut text = String::new();
                        if let Some(rcpt) = rcpt {
                            rcpt.write_rcpt_params(&mut text);
                        }
                        text
                    })
                    .collect();
            }
        }
        self.transaction = Some(transaction);
        self.phase = Phase::Transaction;

        if self.rset_needed {
            self.rset_needed = false;
            self.output.extend_from_slice(b"RSET\r\n");
            self.awaiting.push_back(Expect::Rset);
            if !capabilities.pipelining {
                return;
            }
        }
        self.write_mail();
    }

    /// Ends a transaction before any traffic because its body cannot go to
    /// this server (8-bit, no 8BITMIME, and no safe conversion: see
    /// `super::downgrade`): each of `rcpt_count` recipients fails for good
    /// with `554 5.6.3` and `why`. Only after `poll` returned `Ready`; the
    /// result comes back in `TransactionDone`.
    pub fn refuse_body(&mut self, rcpt_count: usize, why: &str) {
        assert_eq!(self.phase, Phase::Ready, "refuse_body while not Ready");
        assert!(self.finished.is_none() && self.transaction.is_none());
        assert!(rcpt_count > 0 && rcpt_count <= TRANSACTION_RCPTS_MAX);
        let reply = refusal(554, EnhancedCode::new(5, 6, 3), why);
        self.finished = Some(TransactionResult {
            rcpts: vec![RcptOutcome::Permanent(reply); rcpt_count],
            rcpt_stages: vec![Stage::Idle; rcpt_count],
            stage: Stage::Idle,
            bytes_sent: 0,
        });
    }

    /// The body was written: `encoded_bytes` is what the encoder produced,
    /// terminating "." included.
    pub fn body_sent(&mut self, encoded_bytes: u64) {
        assert_eq!(self.phase, Phase::Body, "body_sent without SendBody");
        let transaction = self
            .transaction
            .as_mut()
            .expect("a body belongs to a transaction");
        assert!(!transaction.bdat, "a BDAT body ends with bdat_sent");
        transaction.bytes_sent = encoded_bytes;
        self.phase = Phase::Transaction;
        self.awaiting.push_back(Expect::Final);
    }

    /// The body was written as `chunks` BDAT commands with their octets,
    /// the last marked LAST; `bytes` is what was written, command lines
    /// included. Each chunk's reply is read in turn; the one to LAST
    /// decides the recipients still in play.
    pub fn bdat_sent(&mut self, chunks: u32, bytes: u64) {
        assert_eq!(self.phase, Phase::Body, "bdat_sent without SendBody");
        assert!(chunks >= 1, "a BDAT body has a LAST chunk");
        let transaction = self
            .transaction
            .as_mut()
            .expect("a body belongs to a transaction");
        assert!(transaction.bdat, "a DATA body ends with body_sent");
        transaction.bytes_sent = bytes;
        self.phase = Phase::Transaction;
        for _ in 1..chunks {
            self.awaiting.push_back(Expect::Chunk);
        }
        self.awaiting.push_back(Expect::Final);
    }

    /// Ends the session politely; only when `Ready` (a session that has
    /// already ended ignores it).
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Closed | Phase::Failed(_) | Phase::Quitting => return,
            Phase::Ready => {}
            _ => panic!("quit in phase {:?}", self.phase),
        }
        assert!(self.awaiting.is_empty());
        self.output.extend_from_slice(b"QUIT\r\n");
        self.awaiting.push_back(Expect::Quit);
        self.phase = Phase::Quitting;
    }

    /// The driver gave up on the connection (timeout, EOF, I/O error).
    /// Open recipients become transient; the session ends.
    pub fn abort(&mut self, reason: AbortReason) {
        let stage = self.stage();
        match self.phase {
            Phase::Closed | Phase::Failed(_) => return,
            // Nothing is lost when an idle or quitting connection goes.
            Phase::Ready | Phase::Quitting => {
                self.end_quitting();
                return;
            }
            Phase::Greeting | Phase::Transaction | Phase::Body => {}
            Phase::Handshake => {
                self.tls_failed(&reason.to_string());
                return;
            }
        }
        let text = format!("ecelerity: {reason} {stage}");
        let reply = refusal_text(451, EnhancedCode::new(4, 4, 2), text);
        self.defer_transaction(&reply, stage);
        self.end(Phase::Failed(Failure::new(
            stage,
            FailureCause::Aborted(reason),
            reply,
        )));
    }

    fn on_reply(&mut self, reply: Reply) -> Result<(), ClientError> {
        let Some(expect) = self.awaiting.pop_front() else {
            if reply.code == 421 && self.phase == Phase::Ready {
                // A server about to drop an idle connection says so first.
                self.end(Phase::Closed);
                return Ok(());
            }
            return Err(self.fail_unexpected(&reply, self.stage()));
        };
        let stage = expect.stage();
        self.stage_idle = expect.stage_after();
        if reply.code == 421 && expect != Expect::Quit {
            // The server is closing the connection (RFC 5321 3.8): no QUIT.
            self.defer_transaction(&reply, stage);
            if matches!(
                expect,
                Expect::Banner
                    | Expect::Ehlo
                    | Expect::Helo
                    | Expect::StartTls
                    | Expect::Rset
                    | Expect::AuthLoginUser
                    | Expect::AuthLoginPassword
                    | Expect::Auth
            ) {
                self.end(Phase::Failed(Failure::new(
                    stage,
                    FailureCause::Rejected(reply.clone()),
                    reply,
                )));
            } else {
                self.end(Phase::Closed);
            }
            return Ok(());
        }
        match expect {
            Expect::Banner => self.on_banner(reply, stage),
            Expect::Ehlo => self.on_ehlo(reply, stage),
            Expect::Helo => self.on_helo(reply, stage),
            Expect::StartTls => self.on_starttls(reply, stage),
            Expect::AuthLoginUser | Expect::AuthLoginPassword | Expect::Auth => {
                self.on_auth(expect, reply, stage)
            }
            Expect::Quit => {
                self.end_quitting();
                Ok(())
            }
            Expect::Rset => self.on_rset(reply, stage),
            Expect::Mail => self.on_mail(reply, stage),
            Expect::Rcpt(index) => self.on_rcpt(index, reply, stage),
            Expect::Data => self.on_data(reply, stage),
            Expect::Chunk => self.on_chunk(reply, stage),
            Expect::Final => self.on_final(reply, stage),
        }?;
        if self.phase == Phase::Transaction && self.awaiting.is_empty() {
            let transaction = self.transaction.as_mut().expect("a transaction");
            if transaction.bdat && !transaction.body_started && transaction.any_accepted() {
                // Every RCPT was answered and one accepted: the BDAT body.
                transaction.body_started = true;
                self.phase = Phase::Body;
            } else {
                self.finish_transaction();
            }
        }
        Ok(())
    }

    /// A BDAT chunk before LAST: 250 goes on; a refusal decides the
    /// recipients still in play (RFC 3030 section 2: the transaction
    /// failed; the replies to chunks already sent are read and ignored).
    fn on_chunk(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_intermediate() {
            return Err(self.fail_unexpected(&reply, stage));
        }
        let transaction = self
            .transaction
            .as_mut()
            .expect("a chunk belongs to a transaction");
        if !reply.is_positive() && transaction.any_accepted() {
            transaction.decide_open(&reply, stage);
        }
        Ok(())
    }

    fn on_banner(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_positive() {
            self.write_greeting(b"EHLO ", Expect::Ehlo);
            Ok(())
        } else if reply.is_intermediate() {
            Err(self.fail_unexpected(&reply, stage))
        } else {
            self.refused(reply, stage);
            Ok(())
        }
    }

    fn on_ehlo(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_positive() {
            let capabilities = Capabilities::from_ehlo(&reply);
            let wanted = self.starttls != StartTls::Off && !self.tls_active;
            let offered = capabilities.starttls;
            let auth_offered = capabilities.auth_plain || capabilities.auth_login;
            self.capabilities = Some(capabilities);
            if wanted && offered {
                self.output.extend_from_slice(b"STARTTLS\r\n");
                self.awaiting.push_back(Expect::StartTls);
            } else if wanted && self.starttls == StartTls::Required {
                self.refused(
                    tls_required_refusal("the server does not offer STARTTLS"),
                    stage,
                );
            } else if auth_offered && self.auth.is_some() {
                self.start_auth(stage);
            } else {
                self.phase = Phase::Ready;
            }
            Ok(())
        } else if reply.is_permanent() {
            // An old server that does not know EHLO (RFC 5321 3.2).
            self.write_greeting(b"HELO ", Expect::Helo);
            Ok(())
        } else if reply.is_intermediate() {
            Err(self.fail_unexpected(&reply, stage))
        } else {
            self.refused(reply, stage);
            Ok(())
        }
    }

    /// After EHLO, with credentials and a server offering AUTH: the first
    /// AUTH command, or a failure (`454 4.7.0`, retried) when the
    /// credentials may not go in clear text or no mechanism fits.
    fn start_auth(&mut self, stage: Stage) {
        let auth = self.auth.as_ref().expect("start_auth with credentials");
        let capabilities = self.capabilities.as_ref().expect("after EHLO");
        if !self.tls_active() && !auth.allow_plaintext {
            let why = "credentials not sent over a connection without TLS \
                       (outbound_smtp_auth_allow_plaintext)";
            return self.refused(refusal(454, EnhancedCode::new(4, 7, 0), why), stage);
        }
        let offered = |m: Mechanism| match m {
            Mechanism::Plain => capabilities.auth_plain,
            Mechanism::Login => capabilities.auth_login,
        };
        let mechanism = match auth.mechanism {
            Some(m) => Some(m).filter(|m| offered(*m)),
            None => [Mechanism::Plain, Mechanism::Login]
                .into_iter()
                .find(|m| offered(*m)),
        };
        let Some(mechanism) = mechanism else {
            let why = "the server offers no AUTH mechanism outbound_smtp_auth_type allows";
            return self.refused(refusal(454, EnhancedCode::new(4, 7, 0), why), stage);
        };
        let command = match mechanism {
            Mechanism::Plain => {
                self.awaiting.push_back(Expect::Auth);
                format!(
                    "AUTH PLAIN {}\r\n",
                    sasl::encode_plain(&auth.user, &auth.password)
                )
            }
            Mechanism::Login => {
                self.awaiting.push_back(Expect::AuthLoginUser);
                "AUTH LOGIN\r\n".to_string()
            }
        };
        self.output.extend_from_slice(command.as_bytes());
    }

    /// A reply in the AUTH exchange. A refusal fails the session with a
    /// transient reply whatever its code: wrong credentials are the
    /// operator's to fix, the mail waits rather than bounces.
    fn on_auth(&mut self, expect: Expect, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        let auth = self
            .auth
            .as_ref()
            .expect("an AUTH exchange has credentials");
        match expect {
            Expect::AuthLoginUser | Expect::AuthLoginPassword if reply.code == 334 => {
                let (next, text) = if expect == Expect::AuthLoginUser {
                    (Expect::AuthLoginPassword, &auth.user)
                } else {
                    (Expect::Auth, &auth.password)
                };
                let line = format!("{}\r\n", sasl::encode(text));
                self.output.extend_from_slice(line.as_bytes());
                self.awaiting.push_back(next);
                Ok(())
            }
            Expect::Auth if reply.is_positive() => {
                self.phase = Phase::Ready;
                Ok(())
            }
            _ if reply.is_positive() || reply.is_intermediate() => {
                Err(self.fail_unexpected(&reply, stage))
            }
            _ => {
                let text = format!("ecelerity: AUTH refused: {}", reply.text());
                let reply = refusal_text(454, EnhancedCode::new(4, 7, 0), text);
                self.refused(reply, stage);
                Ok(())
            }
        }
    }

    fn on_helo(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_positive() {
            self.capabilities = Some(Capabilities::default());
            if self.starttls == StartTls::Required && !self.tls_active {
                self.refused(
                    tls_required_refusal("the server does not speak ESMTP"),
                    stage,
                );
            } else {
                self.phase = Phase::Ready;
            }
            Ok(())
        } else if reply.is_intermediate() {
            Err(self.fail_unexpected(&reply, stage))
        } else {
            self.refused(reply, stage);
            Ok(())
        }
    }

    /// 220: the driver runs the handshake. Anything else: clear text
    /// goes on when TLS is opportunistic; with `Required` the session
    /// ends (QUIT) and the destination is deferred.
    fn on_starttls(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.code == 220 {
            self.phase = Phase::Handshake;
            Ok(())
        } else if reply.is_intermediate() || reply.is_positive() {
            Err(self.fail_unexpected(&reply, stage))
        } else if self.starttls == StartTls::Required {
            let why = format!("the server refused STARTTLS: {}", reply.text());
            self.refused(tls_required_refusal(&why), stage);
            Ok(())
        } else {
            self.phase = Phase::Ready;
            Ok(())
        }
    }

    fn on_rset(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_intermediate() {
            return Err(self.fail_unexpected(&reply, stage));
        }
        if !reply.is_positive() {
            // RSET may not fail (RFC 5321 4.1.1.5): the connection is of
            // no more use. The transaction it preceded is deferred.
            self.defer_transaction(&reply, stage);
            self.refused(reply, stage);
            return Ok(());
        }
        if !self.pipelining() {
            self.write_mail();
        }
        Ok(())
    }

    fn on_mail(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_intermediate() {
            return Err(self.fail_unexpected(&reply, stage));
        }
        let pipelining = self.pipelining();
        let transaction = self
            .transaction
            .as_mut()
            .expect("MAIL belongs to a transaction");
        if reply.is_positive() {
            transaction.mail_accepted = true;
            if !pipelining {
                self.write_next_rcpt_or_data();
            }
        } else {
            // With PIPELINING the RCPT and DATA replies still come (503s);
            // they are read and ignored, as every recipient is now final.
            transaction.decide_open(&reply, stage);
        }
        Ok(())
    }

    fn on_rcpt(&mut self, index: usize, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        let pipelining = self.pipelining();
        let transaction = self
            .transaction
            .as_mut()
            .expect("RCPT belongs to a transaction");
        if transaction.states[index] == RcptState::Sent {
            if reply.is_intermediate() {
                return Err(self.fail_unexpected(&reply, stage));
            }
            transaction.states[index] = if reply.is_positive() {
                RcptState::Accepted
            } else {
                transaction.stage = stage;
                RcptState::Final(RcptOutcome::from_reply(reply), stage)
            };
        }
        if !pipelining {
            self.write_next_rcpt_or_data();
        }
        Ok(())
    }

    fn on_data(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        let transaction = self
            .transaction
            .as_mut()
            .expect("DATA belongs to a transaction");
        if reply.is_intermediate() {
            if transaction.any_accepted() {
                self.phase = Phase::Body;
            } else {
                // DATA accepted with no recipient in play: end it at once
                // with an empty message the server must refuse or drop
                // (RFC 2920 3.1). Its reply is read and ignored.
                self.output.extend_from_slice(b".\r\n");
                self.awaiting.push_back(Expect::Final);
            }
            Ok(())
        } else if reply.is_positive() {
            Err(self.fail_unexpected(&reply, stage))
        } else {
            transaction.decide_open(&reply, stage);
            Ok(())
        }
    }

    fn on_final(&mut self, reply: Reply, stage: Stage) -> Result<(), ClientError> {
        if reply.is_intermediate() {
            return Err(self.fail_unexpected(&reply, stage));
        }
        let transaction = self
            .transaction
            .as_mut()
            .expect("a final reply belongs to a transaction");
        transaction.final_read = true;
        if transaction.any_accepted() {
            transaction.decide_open(&reply, stage);
        }
        Ok(())
    }

    fn pipelining(&self) -> bool {
        self.capabilities
            .as_ref()
            .is_some_and(|capabilities| capabilities.pipelining)
    }

    fn write_greeting(&mut self, verb: &[u8], expect: Expect) {
        self.output.extend_from_slice(verb);
        self.output.extend_from_slice(self.ehlo_hostname.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.awaiting.push_back(expect);
    }

    /// Writes MAIL; with PIPELINING also every RCPT and DATA.
    fn write_mail(&mut self) {
        let pipelining = self.pipelining();
        let transaction = self
            .transaction
            .as_mut()
            .expect("MAIL belongs to a transaction");
        let _ = write!(
            self.output,
            "MAIL FROM:<{}>{}\r\n",
            transaction.mail_from, transaction.mail_parameters
        );
        self.awaiting.push_back(Expect::Mail);
        if !pipelining {
            return;
        }
        for index in 0..transaction.states.len() {
            if transaction.states[index] == RcptState::Unsent {
                transaction.write_rcpt(&mut self.output, index);
                transaction.states[index] = RcptState::Sent;
                self.awaiting.push_back(Expect::Rcpt(index));
            }
        }
        if !transaction.bdat {
            self.output.extend_from_slice(b"DATA\r\n");
            self.awaiting.push_back(Expect::Data);
        }
    }

    /// Without PIPELINING: the next RCPT, else DATA when a recipient was
    /// accepted, else nothing (the transaction ends, RSET follows).
    fn write_next_rcpt_or_data(&mut self) {
        let transaction = self
            .transaction
            .as_mut()
            .expect("RCPT belongs to a transaction");
        if let Some(index) = transaction
            .states
            .iter()
            .position(|state| *state == RcptState::Unsent)
        {
            transaction.write_rcpt(&mut self.output, index);
            transaction.states[index] = RcptState::Sent;
            self.awaiting.push_back(Expect::Rcpt(index));
        } else if transaction.any_accepted() && !transaction.bdat {
            self.output.extend_from_slice(b"DATA\r\n");
            self.awaiting.push_back(Expect::Data);
        }
    }

    fn finish_transaction(&mut self) {
        let transaction = self.transaction.take().expect("a transaction to finish");
        self.rset_needed = transaction.mail_accepted && !transaction.final_read;
        self.finished = Some(transaction.into_result());
        self.phase = Phase::Ready;
        self.stage_idle = Stage::Idle;
    }

    /// Every open recipient of the current transaction becomes transient
    /// and the result is queued for the driver.
    fn defer_transaction(&mut self, reply: &Reply, stage: Stage) {
        if let Some(mut transaction) = self.transaction.take() {
            transaction.defer_all_open(reply, stage);
            self.finished = Some(transaction.into_result());
        }
    }

    /// The server refused the banner, EHLO and HELO, or RSET: the session
    /// fails. While the connection is in step (no other reply owed) QUIT
    /// is sent first, as RFC 5321 3.1 and 4.1.1.10 ask, and the failure is
    /// reported once it is answered; otherwise the socket is just closed.
    fn refused(&mut self, reply: Reply, stage: Stage) {
        let failure = Failure::new(stage, FailureCause::Rejected(reply.clone()), reply);
        if !self.awaiting.is_empty() || self.transaction.is_some() {
            self.end(Phase::Failed(failure));
            return;
        }
        self.output.clear();
        self.output.extend_from_slice(b"QUIT\r\n");
        self.awaiting.push_back(Expect::Quit);
        self.phase = Phase::Quitting;
        self.failure_after_quit = Some(failure);
    }

    /// The QUIT exchange is over (answered, or the connection went): the
    /// session is closed, or failed when QUIT followed a refusal.
    fn end_quitting(&mut self) {
        match self.failure_after_quit.take() {
            Some(failure) => self.end(Phase::Failed(failure)),
            None => self.end(Phase::Closed),
        }
    }

    /// Enters a terminal phase: nothing more is written or awaited.
    fn end(&mut self, phase: Phase) {
        assert!(matches!(phase, Phase::Closed | Phase::Failed(_)));
        assert!(
            self.transaction.is_none(),
            "ending with a transaction still open"
        );
        self.phase = phase;
        self.awaiting.clear();
        self.output.clear();
    }

    fn fail_unexpected(&mut self, reply: &Reply, stage: Stage) -> ClientError {
        let mut text = reply.text();
        truncate_on_char_boundary(&mut text, UNEXPECTED_REPLY_QUOTE_BYTES_MAX);
        self.fail_protocol_at(ClientError::UnexpectedReply { reply: text, stage }, stage)
    }

    fn fail_protocol(&mut self, error: ClientError) -> ClientError {
        let stage = self.stage();
        self.fail_protocol_at(error, stage)
    }

    fn fail_protocol_at(&mut self, error: ClientError, stage: Stage) -> ClientError {
        let text = format!("ecelerity: protocol error {stage}: {error}");
        let reply = refusal_text(451, EnhancedCode::new(4, 5, 0), text);
        self.defer_transaction(&reply, stage);
        self.end(Phase::Failed(Failure::new(
            stage,
            FailureCause::Protocol(error.clone()),
            reply,
        )));
        error
    }
}

/// Why a session with `tls = required` goes no further: transient, so the
/// destination is deferred and the message never goes in clear text.
fn tls_required_refusal(why: &str) -> Reply {
    refusal(
        451,
        EnhancedCode::new(4, 7, 5),
        &format!("TLS required (tls = required) but {why}"),
    )
}

/// Most bytes of an unexpected reply quoted in `ClientError`.
const UNEXPECTED_REPLY_QUOTE_BYTES_MAX: usize = 128;

fn truncate_on_char_boundary(text: &mut String, bytes_max: usize) {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn refusal(code: u16, enhanced: EnhancedCode, why: &str) -> Reply {
    refusal_text(code, enhanced, format!("ecelerity: {why}"))
}

fn refusal_text(code: u16, enhanced: EnhancedCode, text: String) -> Reply {
    Reply::synthetic(code, enhanced, text)
}

/// True when `name` can follow EHLO: a domain or address literal without
/// spaces or control characters.
pub fn is_valid_ehlo_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= EHLO_HOSTNAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_graphic())
}

/// True when `address` can go between angle brackets in MAIL or RCPT
/// without changing the command: no control characters (no CR or LF to
/// smuggle a command), no brackets, within ADDRESS_BYTES_MAX. Empty is the
/// null sender.
fn is_valid_address(address: &str) -> bool {
    address.len() <= ADDRESS_BYTES_MAX
        && address
            .bytes()
            .all(|b| b >= 0x20 && b != 0x7f && b != b'<' && b != b'>')
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecelerity_testkit::Rng;
    use ClientAction::{Closed, Ready, Send, SendBody, TransactionDone, WaitForReply};

    const EHLO_PIPELINING: &str = "250-mx.example.net greets you\r\n250-PIPELINING\r\n\
        250-SIZE 100000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
    const EHLO_PLAIN: &str = "250-mx.example.net\r\n250 SIZE\r\n";

    /// The bytes `poll` asks to send, marked as written.
    fn sent(session: &mut ClientSession) -> String {
        assert_eq!(session.poll(), Send);
        let output = String::from_utf8(session.output().to_vec()).unwrap();
        session.output_sent();
        output
    }

    const EHLO_STARTTLS: &str = "250-mx.example.net\r\n250-PIPELINING\r\n250 STARTTLS\r\n";

    /// A session asking for STARTTLS `mode`, through banner and EHLO.
    fn tls_greeted(mode: StartTls, ehlo: &str) -> ClientSession {
        let mut session = ClientSession::with_starttls("client.example.com", mode);
        reply(&mut session, "220 mx.example.net ESMTP\r\n");
        assert_eq!(sent(&mut session), "EHLO client.example.com\r\n");
        reply(&mut session, ehlo);
        session
    }

    #[test]
    fn starttls_when_offered_then_ehlo_again_over_tls() {
        let mut session = tls_greeted(StartTls::Opportunistic, EHLO_STARTTLS);
        assert_eq!(sent(&mut session), "STARTTLS\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringStarttls));
        reply(&mut session, "220 2.0.0 go ahead\r\n");
        assert_eq!(session.poll(), ClientAction::StartTls);
        session.tls_started();
        assert!(session.tls_active());
        assert_eq!(sent(&mut session), "EHLO client.example.com\r\n");
        // Over TLS the server still offers STARTTLS: not asked twice.
        reply(&mut session, EHLO_STARTTLS);
        assert_eq!(session.poll(), Ready);
    }

    #[test]
    fn opportunistic_tls_goes_on_in_clear_text_when_not_offered_or_refused() {
        let mut session = tls_greeted(StartTls::Opportunistic, EHLO_PLAIN);
        assert_eq!(session.poll(), Ready);
        let mut session = tls_greeted(StartTls::Opportunistic, EHLO_STARTTLS);
        assert_eq!(sent(&mut session), "STARTTLS\r\n");
        reply(&mut session, "454 4.7.0 TLS not available\r\n");
        assert_eq!(session.poll(), Ready);
        assert!(!session.tls_active());
    }

    #[test]
    fn required_tls_never_reaches_a_transaction_in_clear_text() {
        for (ehlo, starttls_reply) in [
            (EHLO_PLAIN, None),
            (EHLO_STARTTLS, Some("454 4.7.0 no\r\n")),
        ] {
            let mut session = tls_greeted(StartTls::Required, ehlo);
            if let Some(text) = starttls_reply {
                assert_eq!(sent(&mut session), "STARTTLS\r\n");
                reply(&mut session, text);
            }
            assert_eq!(sent(&mut session), "QUIT\r\n");
            reply(&mut session, "221 bye\r\n");
            let ClientAction::Failed(failure) = session.poll() else {
                panic!("a required TLS session fails");
            };
            assert!(failure.is_outside_transaction());
            assert_eq!(failure.reply.code, 451, "{:?}", failure.reply);
            assert!(
                failure.reply.text().contains("tls = required"),
                "{:?}",
                failure.reply
            );
        }
    }

    #[test]
    fn bytes_after_the_220_to_starttls_fail_the_handshake_unread() {
        let mut session = tls_greeted(StartTls::Opportunistic, EHLO_STARTTLS);
        sent(&mut session);
        session
            .on_input(b"220 go ahead\r\n250 injected\r\n")
            .expect("not a protocol error: a TLS failure");
        let ClientAction::Failed(failure) = session.poll() else {
            panic!("the handshake is not tried");
        };
        assert_eq!(failure.stage, Stage::TlsHandshake);
        assert!(failure.reply.text().contains("more after its 220"));
    }

    #[test]
    fn a_failed_handshake_fails_the_session_at_stage_17() {
        let mut session = tls_greeted(StartTls::Opportunistic, EHLO_STARTTLS);
        sent(&mut session);
        reply(&mut session, "220 go ahead\r\n");
        assert_eq!(session.poll(), ClientAction::StartTls);
        session.tls_failed("invalid peer certificate: UnknownIssuer");
        let ClientAction::Failed(failure) = session.poll() else {
            panic!("the session fails");
        };
        assert_eq!(failure.stage, Stage::TlsHandshake);
        assert_eq!(failure.stage.code(), 17);
        assert!(failure.is_outside_transaction());
        assert!(failure.reply.text().contains("UnknownIssuer"));
    }

    /// Feeds server bytes one at a time, as the harshest split.
    fn reply(session: &mut ClientSession, text: &str) {
        for byte in text.as_bytes() {
            session.on_input(std::slice::from_ref(byte)).unwrap();
        }
    }

    fn connected(ehlo_reply: &str) -> ClientSession {
        let mut session = ClientSession::new("client.example.com");
        assert_eq!(session.stage(), Stage::ReadingBanner);
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingBanner));
        reply(&mut session, "220 mx.example.net ESMTP\r\n");
        assert_eq!(sent(&mut session), "EHLO client.example.com\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringEhlo));
        reply(&mut session, ehlo_reply);
        assert_eq!(session.poll(), Ready);
        session
    }

    fn send_body(session: &mut ClientSession, body: &[u8]) -> u64 {
        assert_eq!(session.poll(), SendBody);
        assert_eq!(session.stage(), Stage::SendingBody);
        let mut encoded = Vec::new();
        encode_body(body, &mut encoded);
        session.body_sent(encoded.len() as u64);
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingConfirmation));
        encoded.len() as u64
    }

    fn done(session: &mut ClientSession) -> TransactionResult {
        match session.poll() {
            TransactionDone(result) => result,
            other => panic!("expected TransactionDone, got {other:?}"),
        }
    }

    /// Each outcome as a letter (A accepted, T transient, P permanent) and
    /// its reply code.
    fn outcomes(result: &TransactionResult) -> Vec<(char, u16)> {
        let letter = |outcome: &RcptOutcome| match outcome {
            RcptOutcome::Accepted(_) => 'A',
            RcptOutcome::Transient(_) => 'T',
            RcptOutcome::Permanent(_) => 'P',
        };
        result
            .rcpts
            .iter()
            .map(|outcome| (letter(outcome), outcome.reply().code))
            .collect()
    }

    fn auth_session(mechanism: Option<Mechanism>, allow_plaintext: bool) -> ClientSession {
        let mut session = ClientSession::new("client.example.com").with_auth(Some(OutboundAuth {
            user: "relay".into(),
            password: "pw".into(),
            mechanism,
            allow_plaintext,
        }));
        reply(&mut session, "220 mx.example.net ESMTP\r\n");
        assert_eq!(sent(&mut session), "EHLO client.example.com\r\n");
        session
    }

    fn failure(session: &mut ClientSession) -> Failure {
        match session.poll() {
            ClientAction::Failed(failure) => failure,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn auth_plain_is_sent_after_ehlo_when_offered_then_the_session_is_ready() {
        let mut session = auth_session(None, true);
        reply(&mut session, "250-mx\r\n250 AUTH LOGIN PLAIN\r\n");
        assert_eq!(sent(&mut session), "AUTH PLAIN AHJlbGF5AHB3\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringEhlo));
        reply(&mut session, "235 2.7.0 ok\r\n");
        assert_eq!(session.poll(), Ready);
        // Without AUTH offered, no credentials are sent.
        let mut session = auth_session(None, true);
        reply(&mut session, EHLO_PIPELINING);
        assert_eq!(session.poll(), Ready);
    }

    #[test]
    fn auth_login_answers_both_challenges_and_a_refusal_is_transient() {
        let mut session = auth_session(Some(Mechanism::Login), true);
        reply(&mut session, "250-mx\r\n250 AUTH PLAIN LOGIN\r\n");
        assert_eq!(sent(&mut session), "AUTH LOGIN\r\n");
        reply(&mut session, "334 VXNlcm5hbWU6\r\n");
        assert_eq!(sent(&mut session), "cmVsYXk=\r\n");
        reply(&mut session, "334 UGFzc3dvcmQ6\r\n");
        assert_eq!(sent(&mut session), "cHc=\r\n");
        reply(&mut session, "535 5.7.8 bad credentials\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        reply(&mut session, "221 bye\r\n");
        let failure = failure(&mut session);
        assert_eq!(failure.reply.code, 454);
        assert!(
            failure.reply.text().contains("535 5.7.8"),
            "{:?}",
            failure.reply
        );
        assert!(failure.is_outside_transaction());
    }

    #[test]
    fn credentials_never_go_in_clear_text_unless_allowed() {
        let mut session = auth_session(None, false);
        reply(&mut session, "250-mx\r\n250 AUTH PLAIN\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        reply(&mut session, "221 bye\r\n");
        let refused = failure(&mut session);
        assert_eq!(refused.reply.code, 454);
        assert!(refused.reply.text().contains("without TLS"));
        // A mechanism the server does not offer: no AUTH either.
        let mut session = auth_session(Some(Mechanism::Login), true);
        reply(&mut session, "250-mx\r\n250 AUTH PLAIN\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        // A server closing during AUTH fails the session (not a clean close).
        let mut session = auth_session(None, true);
        reply(&mut session, "250-mx\r\n250 AUTH PLAIN\r\n");
        sent(&mut session);
        reply(&mut session, "421 4.3.2 going away\r\n");
        assert_eq!(failure(&mut session).reply.code, 421);
    }

    #[test]
    fn capabilities_are_read_from_ehlo_keywords_in_any_case() {
        let mut parser = ReplyParser::new();
        parser.feed(
            b"250-mx greets client\r\n250-pipelining\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n\
              250-SMTPUTF8\r\n250-EnhancedStatusCodes\r\n250-STARTTLS\r\n250-CHUNKING\r\n\
              250 AUTH PLAIN LOGIN\r\n",
        );
        let capabilities = Capabilities::from_ehlo(&parser.next_reply().unwrap().unwrap());
        assert_eq!(
            capabilities,
            Capabilities {
                pipelining: true,
                size_max: Some(52_428_800),
                eightbitmime: true,
                smtputf8: true,
                enhancedstatuscodes: true,
                starttls: true,
                chunking: true,
                auth_plain: true,
                auth_login: true,
                dsn: false,
            }
        );
        parser.feed(b"250-mx\r\n250 AUTH=LOGIN\r\n");
        let old = Capabilities::from_ehlo(&parser.next_reply().unwrap().unwrap());
        assert!(old.auth_login && !old.auth_plain);
    }

    #[test]
    fn capabilities_ignore_the_greeting_line_and_bad_size_values() {
        let mut parser = ReplyParser::new();
        parser.feed(b"250-PIPELINING\r\n250-SIZE lots\r\n250 \r\n");
        let capabilities = Capabilities::from_ehlo(&parser.next_reply().unwrap().unwrap());
        assert!(!capabilities.pipelining);
        assert_eq!(capabilities.size_max, Some(0));
        parser.feed(b"250 mx\r\n");
        let bare = Capabilities::from_ehlo(&parser.next_reply().unwrap().unwrap());
        assert_eq!(bare, Capabilities::default());
    }

    #[test]
    fn stage_codes_match_momentum() {
        assert_eq!(Stage::NotConnected.code(), 0);
        assert_eq!(Stage::DuringRcptTo.code(), 4);
        assert_eq!(Stage::ReadingConfirmation.code(), 9);
        assert_eq!(Stage::ReadingBanner.code(), 12);
        assert_eq!(Stage::AfterRset.code(), 14);
        assert_eq!(Stage::Unknown.code(), 22);
        assert_eq!(Stage::DuringMailFrom.to_string(), "during MAIL FROM");
    }

    #[test]
    fn pipelined_transaction_writes_one_batch_and_matches_replies_in_order() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction(
            "from@example.com",
            &["a@x.net", "b@x.net", "c@x.net"],
            1234,
            true,
        );
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<from@example.com> SIZE=1234 BODY=8BITMIME\r\nRCPT TO:<a@x.net>\r\n\
             RCPT TO:<b@x.net>\r\nRCPT TO:<c@x.net>\r\nDATA\r\n"
        );
        assert_eq!(session.poll(), WaitForReply(Stage::DuringMailFrom));
        reply(&mut session, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringRcptTo));
        reply(
            &mut session,
            "550 5.1.1 no such user\r\n450 4.2.1 try later\r\n",
        );
        assert_eq!(session.poll(), WaitForReply(Stage::DuringData));
        reply(&mut session, "354 go ahead\r\n");
        let bytes = send_body(&mut session, b"Subject: hi\r\n\r\nbody\r\n");
        reply(&mut session, "250 2.0.0 queued as 1234\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('A', 250), ('P', 550), ('T', 450)]);
        assert_eq!(result.rcpts[0].reply().text(), "250 2.0.0 queued as 1234");
        assert_eq!(
            result.rcpt_stages,
            vec![
                Stage::ReadingConfirmation,
                Stage::DuringRcptTo,
                Stage::DuringRcptTo
            ]
        );
        assert_eq!(result.stage, Stage::ReadingConfirmation);
        assert_eq!(result.bytes_sent, bytes);
        assert_eq!(session.poll(), Ready);
        assert_eq!(session.stage(), Stage::Idle);
        // Nothing went wrong midway, so no RSET before the next one.
        session.start_transaction("", &["d@x.net"], 10, false);
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<> SIZE=10\r\nRCPT TO:<d@x.net>\r\nDATA\r\n"
        );
    }

    const EHLO_CHUNKING: &str = "250-mx.example.net\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
        250 CHUNKING\r\n";

    /// Through banner and EHLO with `send_chunking` on.
    fn chunking_connected(ehlo: &str) -> ClientSession {
        let mut session = ClientSession::new("client.example.com").with_chunking(true);
        reply(&mut session, "220 mx.example.net ESMTP\r\n");
        assert_eq!(sent(&mut session), "EHLO client.example.com\r\n");
        reply(&mut session, ehlo);
        assert_eq!(session.poll(), Ready);
        session
    }

    #[test]
    fn bdat_replaces_data_when_chunking_is_offered_and_wanted() {
        let mut session = chunking_connected(EHLO_CHUNKING);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, true);
        assert!(session.body_uses_bdat());
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<f@example.com> BODY=8BITMIME\r\nRCPT TO:<a@x.net>\r\n\
             RCPT TO:<b@x.net>\r\n"
        );
        reply(&mut session, "250 ok\r\n250 ok\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringRcptTo));
        reply(&mut session, "550 no\r\n");
        // Every RCPT answered, one accepted: the body, with no DATA.
        assert_eq!(session.poll(), SendBody);
        assert_eq!(session.stage(), Stage::SendingBody);
        session.bdat_sent(3, 1000);
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingConfirmation));
        reply(&mut session, "250 2.0.0 chunk\r\n250 2.0.0 chunk\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingConfirmation));
        reply(&mut session, "250 2.0.0 queued as B1\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('A', 250), ('P', 550)]);
        assert_eq!(result.rcpts[0].reply().text(), "250 2.0.0 queued as B1");
        assert_eq!(result.bytes_sent, 1000);
        assert_eq!(session.poll(), Ready);
        // Without CHUNKING offered, or not wanted, DATA as before.
        let mut plain = chunking_connected(EHLO_PIPELINING);
        plain.start_transaction("", &["d@x.net"], 10, false);
        assert!(!plain.body_uses_bdat());
        assert!(sent(&mut plain).ends_with("DATA\r\n"));
        let mut unwanted = connected(EHLO_CHUNKING);
        unwanted.start_transaction("", &["d@x.net"], 10, false);
        assert!(!unwanted.body_uses_bdat());
        assert!(sent(&mut unwanted).ends_with("DATA\r\n"));
    }

    #[test]
    fn a_refused_bdat_chunk_decides_the_transaction_and_later_replies_are_read() {
        let mut session = chunking_connected(EHLO_CHUNKING);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n250 ok\r\n");
        assert_eq!(session.poll(), SendBody);
        session.bdat_sent(3, 999);
        reply(
            &mut session,
            "552 5.3.4 too big\r\n503 5.5.1 no transaction\r\n",
        );
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingConfirmation));
        reply(&mut session, "503 5.5.1 no transaction\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 552)]);
        // The LAST chunk's reply was read: in step, no RSET needed.
        assert_eq!(session.poll(), Ready);
        session.start_transaction("", &["b@x.net"], 1, false);
        assert!(sent(&mut session).starts_with("MAIL FROM:<>"));
    }

    #[test]
    fn bdat_without_pipelining_waits_for_each_rcpt_and_skips_the_body_when_none_is_accepted() {
        let mut session = chunking_connected("250-mx\r\n250 CHUNKING\r\n");
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        assert_eq!(sent(&mut session), "MAIL FROM:<f@example.com>\r\n");
        reply(&mut session, "250 ok\r\n");
        assert_eq!(sent(&mut session), "RCPT TO:<a@x.net>\r\n");
        reply(&mut session, "550 no\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('P', 550)]);
        // MAIL was accepted and no body followed: RSET first.
        assert_eq!(session.poll(), Ready);
        session.start_transaction("", &["b@x.net"], 1, false);
        assert_eq!(sent(&mut session), "RSET\r\n");
    }

    #[test]
    fn non_pipelined_transaction_writes_one_command_per_reply() {
        let mut session = connected(EHLO_PLAIN);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 99, true);
        // 8BITMIME not offered: the body goes without BODY=.
        assert_eq!(sent(&mut session), "MAIL FROM:<f@example.com> SIZE=99\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringMailFrom));
        reply(&mut session, "250 ok\r\n");
        assert_eq!(session.stage(), Stage::DuringRcptTo);
        assert_eq!(sent(&mut session), "RCPT TO:<a@x.net>\r\n");
        reply(&mut session, "550 no\r\n");
        assert_eq!(sent(&mut session), "RCPT TO:<b@x.net>\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringRcptTo));
        reply(&mut session, "250 ok\r\n");
        assert_eq!(sent(&mut session), "DATA\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringData));
        reply(&mut session, "354 go\r\n");
        send_body(&mut session, b"x");
        reply(&mut session, "250 done\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('P', 550), ('A', 250)]);
        assert_eq!(session.poll(), Ready);
    }

    #[test]
    fn all_rcpts_rejected_with_pipelining_reads_the_data_refusal_and_stays_in_step() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
        sent(&mut session);
        reply(
            &mut session,
            "250 ok\r\n550 5.1.1 no\r\n551 5.1.6 moved\r\n",
        );
        assert_eq!(session.poll(), WaitForReply(Stage::DuringData));
        reply(&mut session, "554 5.5.1 no valid recipients\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 550), ('P', 551)]);
        assert_eq!(result.stage, Stage::DuringRcptTo);
        assert_eq!(result.bytes_sent, 0);
        assert_eq!(session.poll(), Ready);
        // The server still holds MAIL: RSET leads the next batch, and its
        // reply is matched first.
        session.start_transaction("f@example.com", &["c@x.net"], 10, false);
        assert_eq!(
            sent(&mut session),
            "RSET\r\nMAIL FROM:<f@example.com> SIZE=10\r\nRCPT TO:<c@x.net>\r\nDATA\r\n"
        );
        assert_eq!(session.poll(), WaitForReply(Stage::DuringRset));
        reply(&mut session, "250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        send_body(&mut session, b"hello\r\n");
        reply(&mut session, "250 queued\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('A', 250)]);
    }

    #[test]
    fn data_accepted_with_no_rcpts_in_play_is_ended_by_a_lone_dot() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n550 no\r\n354 go anyway\r\n");
        assert_eq!(sent(&mut session), ".\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::ReadingConfirmation));
        reply(&mut session, "554 no recipients\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('P', 550)]);
        // The transaction ended with the final reply: no RSET needed.
        session.start_transaction("f@example.com", &["b@x.net"], 10, false);
        assert!(sent(&mut session).starts_with("MAIL FROM:"));
    }

    #[test]
    fn mail_rejected_gives_every_rcpt_its_reply_with_pipelining() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
        sent(&mut session);
        reply(
            &mut session,
            "451 4.7.1 greylisted\r\n503 5.5.1 need MAIL\r\n250 odd but ignored\r\n",
        );
        assert_eq!(session.poll(), WaitForReply(Stage::DuringData));
        reply(&mut session, "503 5.5.1 need RCPT\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('T', 451), ('T', 451)]);
        assert_eq!(result.rcpt_stages, vec![Stage::DuringMailFrom; 2]);
        assert_eq!(result.stage, Stage::DuringMailFrom);
        // MAIL never took hold: no RSET.
        session.start_transaction("f@example.com", &["b@x.net"], 10, false);
        assert!(sent(&mut session).starts_with("MAIL FROM:"));
    }

    #[test]
    fn mail_rejected_without_pipelining_sends_no_rcpt() {
        let mut session = connected(EHLO_PLAIN);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "553 5.1.8 bad sender\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('P', 553), ('P', 553)]);
        assert_eq!(session.poll(), Ready);
        session.quit();
        assert_eq!(sent(&mut session), "QUIT\r\n");
        reply(&mut session, "221 bye\r\n");
        assert_eq!(session.poll(), Closed);
    }

    #[test]
    fn reply_421_mid_transaction_defers_open_rcpts_and_closes() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction(
            "f@example.com",
            &["a@x.net", "b@x.net", "c@x.net"],
            10,
            false,
        );
        sent(&mut session);
        reply(
            &mut session,
            "250 ok\r\n550 no\r\n421 4.3.2 shutting down\r\n",
        );
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 550), ('T', 421), ('T', 421)]);
        assert_eq!(result.rcpt_stages[1], Stage::DuringRcptTo);
        assert_eq!(session.poll(), Closed);
        // Whatever follows is ignored.
        session.on_input(b"250 ok\r\n").unwrap();
        assert_eq!(session.poll(), Closed);
    }

    #[test]
    fn reply_421_after_the_body_defers_the_accepted_rcpts() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n250 ok\r\n354 go\r\n");
        send_body(&mut session, b"x\r\n");
        reply(&mut session, "421 4.4.2 timeout\r\n");
        assert_eq!(outcomes(&done(&mut session)), vec![('T', 421)]);
        assert_eq!(session.poll(), Closed);
    }

    #[test]
    fn unsolicited_421_on_an_idle_connection_closes_it() {
        let mut session = connected(EHLO_PLAIN);
        reply(&mut session, "421 4.4.2 idle too long\r\n");
        assert_eq!(session.poll(), Closed);
    }

    #[test]
    fn final_4xx_and_5xx_after_the_body_apply_to_accepted_rcpts_only() {
        for (final_reply, letter, code) in [
            ("452 4.3.1 full\r\n", 'T', 452),
            ("554 5.7.1 spam\r\n", 'P', 554),
        ] {
            let mut session = connected(EHLO_PIPELINING);
            session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
            sent(&mut session);
            reply(&mut session, "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
            send_body(&mut session, b"spam?");
            reply(&mut session, final_reply);
            let result = done(&mut session);
            assert_eq!(outcomes(&result), vec![(letter, code), ('P', 550)]);
            assert_eq!(result.rcpt_stages[0], Stage::ReadingConfirmation);
            // The final reply ends the transaction: no RSET.
            session.start_transaction("f@example.com", &["c@x.net"], 10, false);
            assert!(sent(&mut session).starts_with("MAIL FROM:"));
        }
    }

    #[test]
    fn data_refused_applies_to_accepted_rcpts_and_rset_precedes_the_next_transaction() {
        let mut session = connected(EHLO_PLAIN);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n");
        sent(&mut session);
        reply(&mut session, "250 ok\r\n");
        assert_eq!(sent(&mut session), "DATA\r\n");
        reply(&mut session, "451 4.3.0 try later\r\n");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('T', 451)]);
        assert_eq!(result.stage, Stage::DuringData);
        session.start_transaction("f@example.com", &["b@x.net"], 10, false);
        assert_eq!(sent(&mut session), "RSET\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringRset));
        reply(&mut session, "250 flushed\r\n");
        assert_eq!(session.stage(), Stage::DuringMailFrom);
        assert_eq!(sent(&mut session), "MAIL FROM:<f@example.com> SIZE=10\r\n");
    }

    #[test]
    fn two_transactions_share_one_connection_then_quit() {
        let mut session = connected(EHLO_PIPELINING);
        for round in 0..2 {
            session.start_transaction("f@example.com", &["a@x.net"], 10, false);
            sent(&mut session);
            reply(&mut session, "250 ok\r\n250 ok\r\n354 go\r\n");
            send_body(&mut session, format!("message {round}\n").as_bytes());
            reply(&mut session, "250 queued\r\n");
            assert_eq!(outcomes(&done(&mut session)), vec![('A', 250)]);
            assert_eq!(session.poll(), Ready);
        }
        session.quit();
        assert_eq!(sent(&mut session), "QUIT\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::Idle));
        reply(&mut session, "221 2.0.0 bye\r\n");
        assert_eq!(session.poll(), Closed);
    }

    #[test]
    fn ehlo_5xx_falls_back_to_helo_without_extensions() {
        let mut session = ClientSession::new("client.example.com");
        reply(&mut session, "220 old.example.net SMTP\r\n");
        sent(&mut session);
        reply(&mut session, "500 what is EHLO\r\n");
        assert_eq!(sent(&mut session), "HELO client.example.com\r\n");
        assert_eq!(session.poll(), WaitForReply(Stage::DuringEhlo));
        reply(&mut session, "250 old.example.net\r\n");
        assert_eq!(session.poll(), Ready);
        assert_eq!(session.capabilities(), Some(&Capabilities::default()));
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, true);
        assert_eq!(sent(&mut session), "MAIL FROM:<f@example.com>\r\n");
    }

    #[test]
    fn refused_greetings_send_quit_then_fail_with_the_reply() {
        for (script, stage, quit) in [
            (&["554 5.7.1 go away\r\n"][..], Stage::ReadingBanner, true),
            // 421: the server is closing the connection; no QUIT.
            (&["421 busy\r\n"][..], Stage::ReadingBanner, false),
            (
                &["220 hi\r\n", "451 later\r\n"][..],
                Stage::DuringEhlo,
                true,
            ),
            (&["220 hi\r\n", "421 bye\r\n"][..], Stage::DuringEhlo, false),
            (
                &["220 hi\r\n", "502 no\r\n", "550 no\r\n"][..],
                Stage::DuringEhlo,
                true,
            ),
        ] {
            let mut session = ClientSession::new("client.example.com");
            let mut written = String::new();
            for line in script {
                reply(&mut session, line);
                if session.poll() == Send {
                    written = sent(&mut session);
                }
            }
            if quit {
                assert_eq!(written, "QUIT\r\n", "{script:?}");
                assert_eq!(session.poll(), WaitForReply(Stage::Idle));
                reply(&mut session, "221 bye\r\n");
            } else {
                assert!(!written.starts_with("QUIT"), "{script:?}");
            }
            let ClientAction::Failed(failure) = session.poll() else {
                panic!("{script:?}")
            };
            assert_eq!(failure.stage, stage);
            assert!(failure.is_outside_transaction());
            let FailureCause::Rejected(refusal) = &failure.cause else {
                panic!("{failure:?}")
            };
            assert_eq!(refusal, &failure.reply);
            assert_eq!(&failure.reply.text(), script.last().unwrap().trim_end());
        }
    }

    #[test]
    fn a_refused_banner_fails_even_when_quit_gets_no_answer() {
        let mut session = ClientSession::new("client.example.com");
        reply(&mut session, "554 no\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.abort(AbortReason::PeerClosed);
        let ClientAction::Failed(failure) = session.poll() else {
            panic!()
        };
        assert_eq!(failure.reply.text(), "554 no");
        assert_eq!(failure.stage, Stage::ReadingBanner);
    }

    #[test]
    fn a_greeting_timeout_or_hang_up_fails_outside_any_transaction_without_quit() {
        for (reason, text) in [
            (
                AbortReason::Timeout,
                "451 4.4.2 ecelerity: timeout reading banner",
            ),
            (
                AbortReason::PeerClosed,
                "451 4.4.2 ecelerity: connection closed by peer reading banner",
            ),
        ] {
            let mut session = ClientSession::new("client.example.com");
            session.abort(reason);
            let ClientAction::Failed(failure) = session.poll() else {
                panic!()
            };
            assert!(failure.is_outside_transaction());
            assert_eq!(failure.cause, FailureCause::Aborted(reason));
            assert_eq!(failure.reply.text(), text);
            assert!(session.output().is_empty());
        }
        // During EHLO too.
        let mut session = ClientSession::new("client.example.com");
        reply(&mut session, "220 hi\r\n");
        sent(&mut session);
        session.abort(AbortReason::Timeout);
        let ClientAction::Failed(failure) = session.poll() else {
            panic!()
        };
        assert_eq!(failure.stage, Stage::DuringEhlo);
        assert!(failure.is_outside_transaction());
        // A failure inside a transaction is the transaction's.
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        session.abort(AbortReason::Timeout);
        done(&mut session);
        let ClientAction::Failed(failure) = session.poll() else {
            panic!()
        };
        assert!(!failure.is_outside_transaction());
    }

    #[test]
    fn a_refused_rset_defers_its_transaction_and_quits_only_when_in_step() {
        for (ehlo, quit) in [(EHLO_PLAIN, true), (EHLO_PIPELINING, false)] {
            let mut session = connected(ehlo);
            session.start_transaction("f@example.com", &["a@x.net"], 10, false);
            sent(&mut session);
            // MAIL taken, RCPT refused: the server holds a transaction.
            reply(&mut session, "250 ok\r\n");
            if session.poll() == Send {
                sent(&mut session);
            }
            reply(&mut session, "550 no\r\n");
            if ehlo == EHLO_PIPELINING {
                reply(&mut session, "503 no rcpt\r\n");
            }
            done(&mut session);
            session.start_transaction("f@example.com", &["b@x.net"], 10, false);
            assert!(sent(&mut session).starts_with("RSET\r\n"));
            reply(&mut session, "554 5.5.1 what\r\n");
            let result = done(&mut session);
            assert_eq!(outcomes(&result), vec![('T', 554)]);
            assert_eq!(result.stage, Stage::DuringRset);
            if quit {
                assert_eq!(sent(&mut session), "QUIT\r\n");
                reply(&mut session, "221 bye\r\n");
            }
            let ClientAction::Failed(failure) = session.poll() else {
                panic!()
            };
            assert_eq!(failure.stage, Stage::DuringRset);
            assert!(failure.is_outside_transaction());
        }
    }

    #[test]
    fn garbage_from_the_server_defers_open_rcpts_and_fails_the_session() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n550 no\r\n");
        let error = session
            .on_input(b"HTTP/1.1 400 Bad Request\r\n")
            .unwrap_err();
        assert!(matches!(
            error,
            ClientError::Reply(ReplyError::BadCode { .. })
        ));
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 550), ('T', 451)]);
        assert_eq!(
            result.rcpts[1].reply().enhanced,
            Some(EnhancedCode::new(4, 5, 0))
        );
        let ClientAction::Failed(failure) = session.poll() else {
            panic!()
        };
        assert_eq!(failure.stage, Stage::DuringRcptTo);
        assert_eq!(failure.cause, FailureCause::Protocol(error));
    }

    #[test]
    fn a_reply_nobody_asked_for_is_a_protocol_error() {
        let mut session = connected(EHLO_PIPELINING);
        let error = session.on_input(b"250 surprise\r\n").unwrap_err();
        assert!(matches!(error, ClientError::UnexpectedReply { .. }));
        assert!(matches!(session.poll(), ClientAction::Failed(_)));

        // 250 to DATA would mean "delivered" without a body: refuse it.
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net"], 10, false);
        sent(&mut session);
        let error = session
            .on_input(b"250 ok\r\n250 ok\r\n250 ok\r\n")
            .unwrap_err();
        assert_eq!(
            error,
            ClientError::UnexpectedReply {
                reply: "250 ok".into(),
                stage: Stage::DuringData
            }
        );
        assert_eq!(outcomes(&done(&mut session)), vec![('T', 451)]);
    }

    #[test]
    fn abort_during_the_body_defers_the_accepted_rcpts() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net", "b@x.net"], 10, false);
        sent(&mut session);
        reply(&mut session, "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(session.poll(), SendBody);
        session.abort(AbortReason::Io);
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('T', 451), ('P', 550)]);
        assert_eq!(result.rcpt_stages[0], Stage::SendingBody);
        assert_eq!(
            result.rcpts[0].reply().text(),
            "451 4.4.2 ecelerity: connection error sending body"
        );
        let ClientAction::Failed(failure) = session.poll() else {
            panic!()
        };
        assert_eq!(failure.cause, FailureCause::Aborted(AbortReason::Io));
        // An idle connection that goes away loses nothing.
        let mut idle = connected(EHLO_PLAIN);
        idle.abort(AbortReason::PeerClosed);
        assert_eq!(idle.poll(), Closed);
    }

    #[test]
    fn a_refused_body_fails_every_rcpt_with_554_5_6_3_without_traffic() {
        let mut session = connected(EHLO_PLAIN);
        session.refuse_body(2, "8-bit header text");
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 554), ('P', 554)]);
        assert_eq!(
            result.rcpts[0].reply().text(),
            "554 5.6.3 ecelerity: 8-bit header text"
        );
        assert_eq!(session.poll(), Ready);
        session.quit();
        assert_eq!(sent(&mut session), "QUIT\r\n");
    }

    #[test]
    fn unsafe_addresses_are_refused_without_any_traffic() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction(
            "f@example.com\r\nRCPT TO:<evil@x.net>",
            &["a@x.net"],
            10,
            false,
        );
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 501)]);
        assert_eq!(session.poll(), Ready);

        session.start_transaction(
            "f@example.com",
            &["a@x.net>\r\nDATA", "", "ü@x.net", "b@x.net"],
            10,
            false,
        );
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<f@example.com> SIZE=10\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        reply(&mut session, "250 ok\r\n250 ok\r\n354 go\r\n");
        send_body(&mut session, b"x");
        reply(&mut session, "250 ok\r\n");
        assert_eq!(
            outcomes(&done(&mut session)),
            vec![('P', 501), ('P', 501), ('P', 553), ('A', 250)]
        );
    }

    #[test]
    fn a_body_over_the_servers_size_is_refused_without_any_traffic() {
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction("f@example.com", &["a@x.net"], 100_001, false);
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 552)]);
        assert_eq!(
            result.rcpts[0].reply().enhanced,
            Some(EnhancedCode::new(5, 3, 4))
        );
        assert_eq!(session.poll(), Ready);
    }

    /// Undoes DATA transparency as a strict receiver would, after the
    /// CRLF that ends the DATA command. Panics on a bare CR or LF.
    fn unstuff(encoded: &[u8]) -> Vec<u8> {
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(encoded);
        for (i, &byte) in stream.iter().enumerate() {
            match byte {
                b'\r' => assert_eq!(stream.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => assert_eq!(stream[i - 1], b'\r', "bare LF at {i}"),
                _ => {}
            }
        }
        let terminator = b"\r\n.\r\n";
        let first = stream
            .windows(5)
            .position(|window| window == terminator)
            .expect("terminated");
        assert_eq!(
            first + 5,
            stream.len(),
            "the message ends at its only terminator"
        );
        let mut body = Vec::new();
        for line in stream[2..first + 2].split_inclusive(|&b| b == b'\n') {
            body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        body
    }

    /// The input with every line ending as CRLF and a final CRLF added.
    fn normalised(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    if body.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b'\n' => out.extend_from_slice(b"\r\n"),
                byte => out.push(byte),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn check_round_trip(body: &[u8]) -> Vec<u8> {
        let mut encoded = Vec::new();
        encode_body(body, &mut encoded);
        assert_eq!(
            unstuff(&encoded),
            normalised(body),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        // Any split through the streaming encoder gives the same bytes.
        for split in 1..=body.len().min(9) {
            let mut encoder = BodyEncoder::new();
            let mut streamed = Vec::new();
            for chunk in body.chunks(split) {
                encoder.encode_chunk(chunk, &mut streamed);
            }
            encoder.finish(&mut streamed);
            assert_eq!(streamed, encoded, "split {split}");
        }
        encoded
    }

    #[test]
    fn smuggling_shaped_bodies_encode_to_exactly_one_message() {
        assert_eq!(check_round_trip(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(check_round_trip(b"a\r.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(check_round_trip(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(check_round_trip(b"..x"), b"...x\r\n.\r\n");
        assert_eq!(
            check_round_trip(b"no final line end"),
            b"no final line end\r\n.\r\n"
        );
        assert_eq!(check_round_trip(b""), b".\r\n");
        assert_eq!(
            check_round_trip(b"a\r\n\r\n.\r\n\r\n"),
            b"a\r\n\r\n..\r\n\r\n.\r\n"
        );
        for body in [
            &b"\r\r\n.\n\r.\r\r"[..],
            b"\n",
            b"\r",
            b".",
            b"x.\r\n.x",
            b"a\n\r.\n\r\n.",
        ] {
            check_round_trip(body);
        }
    }

    #[test]
    fn encode_body_reserves_exactly_once() {
        let body = b"line\n.dot\rend".repeat(100);
        let mut encoded = Vec::new();
        encode_body(&body, &mut encoded);
        assert!(encoded.capacity() - encoded.len() <= BODY_TRAILER_BYTES_MAX);
        assert_eq!(BodyEncoder::new().encoded_len(b"a\n.b"), b"a\r\n..b".len());
    }

    /// Goal: random bodies round-trip through DATA transparency.
    /// Method: seeded bodies drawn mostly from CR, LF and '.'.
    #[test]
    fn random_bodies_round_trip_through_encoding() {
        const RUNS: usize = 2000;
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        for _ in 0..RUNS {
            let length = rng.next_u64() as usize % 24;
            let body: Vec<u8> = (0..length)
                .map(|_| b"\r\n.ab"[rng.next_u64() as usize % 5])
                .collect();
            check_round_trip(&body);
        }
    }

    /// Goal: no server input makes the session panic, lose a recipient or
    /// buffer without bound.
    /// Method: a seeded `Rng` plays a server that answers with plausible
    /// replies, garbage, 421s and timeouts, in random splits, while the
    /// driver follows `poll`. Every started transaction must come back
    /// with one outcome per recipient.
    #[test]
    fn random_server_input_never_panics_and_every_rcpt_gets_an_outcome() {
        const RUNS: usize = 1000;
        const STEPS_MAX: usize = 200;
        /// Well-formed replies, weighted towards success so runs get deep.
        const REPLIES: &[&str] = &[
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 2.1.5 ok\r\n",
            "250-a\r\n250 PIPELINING\r\n",
            "250-a\r\n250 PIPELINING\r\n",
            "354 go\r\n",
            "354 go\r\n",
            "354 go\r\n",
            "220 hi\r\n",
            "451 4.3.0 later\r\n",
            "550 5.1.1 no\r\n",
            "503 bad sequence\r\n",
            "221 bye\r\n",
            "421 bye\r\n",
        ];
        /// Broken pieces, sent only by chaotic runs.
        const FRAGMENTS: &[&str] = &[
            "\r\n",
            "250-",
            "x",
            "354",
            "999 odd\r\n",
            "250 ok\r\n250 ok\r\n",
        ];
        let mut rng = Rng::new(0x853c_49e6_748f_ea9b);
        let (mut bodies_sent, mut accepted, mut closed) = (0, 0, 0);
        for _ in 0..RUNS {
            // One in three runs is well-formed; the others break the
            // protocol once in 30 or once in 6 replies.
            let chaos = [0, 30, 6][rng.next_u64() as usize % 3];
            let mut session = ClientSession::new("client.example.com");
            let mut open_rcpts = 0usize;
            let mut transactions = 0;

            for _ in 0..STEPS_MAX {
                match session.poll() {
                    Send => session.output_sent(),
                    ClientAction::StartTls => unreachable!("STARTTLS is never asked for"),
                    SendBody => {
                        bodies_sent += 1;
                        session.body_sent(rng.next_u64() % 1000);
                    }
                    Ready if transactions < 6 && !rng.next_u64().is_multiple_of(4) => {
                        let rcpts = ["a@x.net", "b@x.net", "c\r\n@x.net", "d@x.net"];
                        let count = rng.next_u64() as usize % rcpts.len() + 1;
                        session.start_transaction("f@example.com", &rcpts[..count], 10, true);
                        open_rcpts = count;
                        transactions += 1;
                    }
                    Ready => session.quit(),
                    TransactionDone(result) => {
                        assert_eq!(result.rcpts.len(), open_rcpts);
                        assert_eq!(result.rcpt_stages.len(), open_rcpts);
                        accepted += outcomes(&result)
                            .iter()
                            .filter(|(letter, _)| *letter == 'A')
                            .count();
                        open_rcpts = 0;
                    }
                    Closed => {
                        closed += 1;
                        break;
                    }
                    ClientAction::Failed(_) => break,
                    WaitForReply(stage) => {
                        if rng.next_u64().is_multiple_of(50) {
                            session.abort(AbortReason::Timeout);
                            continue;
                        }
                        let mut input = Vec::new();
                        for _ in 0..1 + usize::from(rng.next_u64().is_multiple_of(8)) {
                            if chaos != 0 && rng.next_u64().is_multiple_of(chaos) {
                                if rng.next_u64().is_multiple_of(2) {
                                    input.extend(
                                        (0..rng.next_u64() % 64).map(|_| rng.next_u64() as u8),
                                    );
                                } else {
                                    let fragment =
                                        FRAGMENTS[rng.next_u64() as usize % FRAGMENTS.len()];
                                    input.extend_from_slice(fragment.as_bytes());
                                }
                            } else if !rng.next_u64().is_multiple_of(4) {
                                // Mostly the reply a willing server gives.
                                input.extend_from_slice(match stage {
                                    Stage::ReadingBanner => b"220 hi\r\n",
                                    Stage::DuringEhlo if rng.next_u64().is_multiple_of(3) => {
                                        b"250 mx\r\n"
                                    }
                                    Stage::DuringEhlo => b"250-mx\r\n250 PIPELINING\r\n",
                                    Stage::DuringData => b"354 go\r\n",
                                    _ => b"250 ok\r\n",
                                });
                            } else {
                                let reply = REPLIES[rng.next_u64() as usize % REPLIES.len()];
                                input.extend_from_slice(reply.as_bytes());
                            }
                        }
                        let mut rest = &input[..];
                        while !rest.is_empty() {
                            let take = (rng.next_u64() as usize % 16 + 1).min(rest.len());
                            let _ = session.on_input(&rest[..take]);
                            rest = &rest[take..];
                            assert!(
                                session.buffered_bytes() < crate::smtp::reply::REPLY_LINE_BYTES_MAX
                            );
                        }
                    }
                }
            }
            // A session cut off mid-run still accounts for every recipient.
            session.abort(AbortReason::Timeout);
            if let TransactionDone(result) = session.poll() {
                assert_eq!(result.rcpts.len(), open_rcpts);
                open_rcpts = 0;
            }
            assert_eq!(open_rcpts, 0, "recipients lost");
            assert!(session.awaiting.len() <= TRANSACTION_RCPTS_MAX + 4);
        }
        // The script must reach deep states, or it proves little.
        assert!(
            bodies_sent > 100 && accepted > 100 && closed > 100,
            "{bodies_sent} {accepted} {closed}"
        );
    }

    /// Goal: SMTPUTF8 and DSN parameters go on only to a server that
    /// offers them, and a message flagged SMTPUTF8 never goes to one that
    /// does not. Method: the same transaction against three EHLO replies.
    #[test]
    fn smtputf8_and_dsn_parameters_go_only_where_offered() {
        use crate::smtp::params::{parse_notify, MessageParams, RcptParams, Ret};
        let message = MessageParams {
            smtputf8: true,
            ret: Some(Ret::Full),
            envid: Some("e 1".into()),
            rcpts: Vec::new(),
        };
        let rcpt = RcptParams {
            notify: Some(parse_notify("SUCCESS").unwrap()),
            orcpt: Some(("rfc822".into(), "a+b@x.net".into())),
        };
        let params = [(Some(&message), Some(&rcpt)), (Some(&message), None)];
        let both = "250-mx.example.net\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250 DSN\r\n";
        let mut session = connected(both);
        session.start_transaction_with(
            "f@example.com",
            &["a@x.net", "b@x.net"],
            10,
            false,
            &params,
        );
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<f@example.com> SMTPUTF8 RET=FULL ENVID=e+201\r\n\
             RCPT TO:<a@x.net> NOTIFY=SUCCESS ORCPT=rfc822;a+2Bb@x.net\r\n\
             RCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        let utf8_only = "250-mx.example.net\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n";
        let mut session = connected(utf8_only);
        session.start_transaction_with(
            "f@example.com",
            &["a@x.net", "b@x.net"],
            10,
            false,
            &params,
        );
        assert_eq!(
            sent(&mut session),
            "MAIL FROM:<f@example.com> SMTPUTF8\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        let mut session = connected(EHLO_PIPELINING);
        session.start_transaction_with(
            "f@example.com",
            &["a@x.net", "b@x.net"],
            10,
            false,
            &params,
        );
        let result = done(&mut session);
        assert_eq!(outcomes(&result), vec![('P', 550), ('P', 550)]);
        assert!(result.rcpts[0].reply().text().starts_with("550 5.6.7 "));
        assert_eq!(session.poll(), Ready);
    }
}
