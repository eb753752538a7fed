//! The inbound SMTP session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! ENHANCEDSTATUSCODES and CHUNKING) as a pure state machine: bytes in, reply bytes and
//! [`Event`]s out. It never does I/O, reads no clock and starts no thread;
//! a shard's connection task drives it:
//!
//! ```text
//! session.start();
//! loop {
//!     handle session.next_event():
//!         Validate: ask the policy about session.validation(), then
//!                   validated(verdict) (log an Err to the paniclog);
//!         Message:  spool it, then spooled(outcome);
//!     write session.take_output() to the socket;
//!     if session.is_closed() { flush, close; break }
//!     if session.wants_input() { read at most input_capacity() bytes; input() }
//! }
//! ```
//!
//! Policy phases are events, like the spool: at connect, EHLO/HELO, MAIL,
//! RCPT and end of data the session emits [`Event::Validate`] and waits,
//! holding pipelined input, until [`ServerSession::validated`] brings the
//! verdict, so a policy may take as long as a DNS lookup or a scriptlet
//! needs while replies stay in order. The session keeps the connection's
//! [`ValidationContext`] and empties its message scope when a new
//! transaction starts (MAIL, RSET, a new greeting).
//!
//! Owns: the per-connection protocol state (greeting, transaction, DATA
//! transparency), the command-line and body buffers with their limits,
//! error counting, the order of replies under PIPELINING, the validation
//! context and the check of a policy's reply.
//! May call: [`super::command`] (parsing), [`super::capabilities`] (the
//! EHLO reply), [`super::received`] (the `Received:` header of a message
//! it received), [`super::sasl`] (AUTH responses, in [`auth`]), the data
//! types of `ecelerity_policy` (never a policy).
//! Never: sockets, the spool, clocks, other shards, logging, a policy
//! object. Relay decisions are the policy's, not ours.
//!
//! Layout: this file holds the session, its commands and replies;
//! [`data`] the DATA scanner and the hand-over of a message; [`bdat`]
//! BDAT chunks (RFC 3030), read by their size; [`verdicts`]
//! what a policy is shown and how its verdict is carried out; [`auth`] SMTP
//! AUTH.
//!
//! Smuggling defence: only `<CR><LF>.<CR><LF>` ends DATA, and a bare LF or
//! bare CR anywhere in DATA closes the session with `521` (Postfix's
//! `smtpd_forbid_bare_newline`), so no framing a downstream server might
//! read differently ever reaches the spool. A BDAT chunk is exactly its
//! announced octets, read to the end whatever its answer, so none of its
//! bytes is ever read as a command.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use ecelerity_policy::{
    Check, Connection, Phase as PolicyPhase, Rejection, ReplyError, Validation, ValidationContext,
    Verdict,
};

use super::capabilities::Capabilities;
use super::command::{parse_command, BodyType, Command, CommandError, MailParams};
use super::params::{MessageParams, RcptParams};
pub use super::received::{
    received_header, write_rfc5322_date, ReceivedFields, RFC5322_DATE_UNIX_SECS_MAX,
};
use super::TlsInfo;

mod auth;
mod bdat;
mod data;
mod esmtp_params;
mod verdicts;

use super::sasl::Credentials;
pub use auth::AuthOutcome;
use auth::AuthStep;
use bdat::Chunk;
use data::DataState;

/// Shortest command line any configuration may set, CRLF included
/// (RFC 5321 section 4.5.3.1.4).
pub const COMMAND_LINE_BYTES_MIN: usize = 512;
/// Default command-line limit, CRLF included: RFC 5321's 512 plus room for
/// ESMTP parameters.
pub const COMMAND_LINE_BYTES_DEFAULT: usize = 1000;
/// Default DATA line limit, CRLF included (RFC 5322: 998 + CRLF).
pub const TEXT_LINE_BYTES_DEFAULT: usize = 1000;
/// What `message_bytes_max = 0` ("unlimited", Momentum's default) means.
/// A large body is streamed to the spool as it arrives (the driver takes
/// it with `take_body`), so this bounds the disk one message may take and
/// keeps a body's length inside the spool's u32, not memory.
pub const MESSAGE_BYTES_CEILING: u64 = 256 * 1024 * 1024;
/// What `recipients_max = 0` ("unlimited") means.
pub const RECIPIENTS_CEILING: u32 = 10_000;
/// Bad commands tolerated before `421 4.7.0` (Postfix's
/// `smtpd_hard_error_limit` is 20; overload guidance says fewer).
pub const ERRORS_DEFAULT: u32 = 10;
/// Pipelined input held while a message waits for the spool.
pub const INPUT_BUFFER_BYTES_DEFAULT: usize = 64 * 1024;
/// Most body capacity reserved up front from a `SIZE=` declaration; a
/// client could lie, so the rest grows as bytes arrive. A body larger than
/// this is streamed to the spool by the driver (`take_body`), so it never
/// needs more.
pub const BODY_RESERVE_BYTES_MAX: usize = 256 * 1024;
/// Most of a streamed body's header block kept for the end-of-data policy
/// (the body itself has gone to the spool). Matches what a DSN quotes.
pub const STREAMED_HEAD_BYTES_MAX: usize = 64 * 1024;
/// A body buffer larger than this is dropped after its message rather than
/// kept for the next one, so one big message does not pin memory for the
/// life of the connection.
pub const BODY_RETAINED_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Per-session limits, named after the Momentum listener options they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest command line, CRLF included; at least
    /// COMMAND_LINE_BYTES_MIN. A longer line gets `500 5.5.2 Line too long`
    /// and is discarded up to its LF without being buffered.
    pub command_line_bytes_max: usize,
    /// Longest DATA line as transmitted (stuffing dot and CRLF included).
    /// A longer line makes the message fail after end of data.
    pub text_line_bytes_max: usize,
    /// `max_message_size` in bytes of unstuffed body; 0 means
    /// MESSAGE_BYTES_CEILING, as does anything above it.
    pub message_bytes_max: u64,
    /// `max_recipients_per_message`; 0 means RECIPIENTS_CEILING.
    pub recipients_max: u32,
    /// Bad commands tolerated; the one that reaches this count is
    /// answered, then `421 4.7.0` closes the session. At least 1.
    pub errors_max: u32,
    /// `max_receptions_per_connection`; 0 = unlimited. Once this many
    /// messages were received, MAIL gets `421 4.7.0` and the session closes.
    pub receptions_per_connection_max: u32,
    /// Pipelined input held while a message waits for the spool; at this
    /// level `wants_input()` turns false. At least 1.
    pub input_buffer_bytes_max: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            command_line_bytes_max: COMMAND_LINE_BYTES_DEFAULT,
            text_line_bytes_max: TEXT_LINE_BYTES_DEFAULT,
            message_bytes_max: 0,
            recipients_max: 0,
            errors_max: ERRORS_DEFAULT,
            receptions_per_connection_max: 0,
            input_buffer_bytes_max: INPUT_BUFFER_BYTES_DEFAULT,
        }
    }
}

/// What a session is told at accept.
#[derive(Debug, Clone)]
pub struct ServerParams {
    /// Our name in the banner, replies and Received headers.
    pub hostname: String,
    pub peer_ip: IpAddr,
    /// The configured `Listen` address the connection came in on; the
    /// policy keys listener options such as `relay_hosts` by it.
    pub listener: SocketAddr,
    pub limits: ServerLimits,
    /// The ESMTP extensions offered; built from the listener's
    /// configuration. Only extensions the session speaks may be on
    /// (`Capabilities::unsupported`).
    pub capabilities: Capabilities,
    /// Our version, for the banner and Received headers.
    pub version: &'static str,
    /// The listener's `tls = required`: MAIL, RCPT and DATA get `530
    /// 5.7.0` until STARTTLS (which `capabilities.starttls` must offer).
    pub tls_required: bool,
    /// `allow_plaintext_auth`: the mechanisms in `capabilities.auth` are
    /// offered without TLS too (otherwise only once TLS is active).
    pub auth_plaintext: bool,
}

/// One received message, handed over with [`Event::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The EHLO/HELO argument in force when the message was received.
    pub helo: String,
    /// True when the client greeted with EHLO.
    pub esmtp: bool,
    /// Reverse path without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// Accepted forward paths, in order, without angle brackets; the bare
    /// reserved mailbox is `postmaster` (no domain: it means this host).
    pub rcpts: Vec<String>,
    /// The client declared `BODY=8BITMIME`.
    pub body_8bitmime: bool,
    /// SMTPUTF8 and DSN parameters (`rcpts` by recipient index, empty
    /// when no RCPT had one).
    pub params: MessageParams,
    /// The message as received: CRLF line endings, dot-unstuffed, final
    /// CRLF kept, without the terminating `.<CR><LF>` and without a
    /// Received header. For a body streamed while it arrived
    /// (`ServerSession::take_body`), only the rest not taken.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A policy phase awaits its verdict: ask the policy about
    /// [`ServerSession::validation`], then call
    /// [`ServerSession::validated`]; the session reads no further
    /// commands until then.
    Validate(PolicyPhase),
    /// A message reached end of data and the policy let it through.
    /// Spool it, then call [`ServerSession::spooled`]; the session reads
    /// no further commands until then.
    Message(Envelope),
    /// STARTTLS was accepted (its `220` is in the output): write the
    /// output, run the TLS handshake, then call
    /// [`ServerSession::tls_started`], or close the connection if the
    /// handshake failed. No input is read until then.
    StartTls,
    /// A client gave credentials (AUTH): check them, then call
    /// [`ServerSession::authenticated`]; the session reads no further
    /// commands until then.
    Authenticate(Credentials),
    /// The session is over: write the pending output, then close.
    Close,
}

/// What became of the last [`Event::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolOutcome {
    /// Durably spooled: `250 2.0.0 Ok: queued as <id>`.
    Queued { queue_id: String },
    /// `451 4.3.0`: the client should retry.
    TemporaryFailure,
    /// `452 4.3.1 Insufficient system storage`.
    StorageFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading the body after `354`.
    Data,
    /// A message was handed over; input is held until `spooled()`.
    AwaitingSpool,
    /// A phase was handed to the policy; input is held until
    /// `validated()`. What is being validated is in `argument` (EHLO, MAIL,
    /// RCPT) or `body` (DATA).
    AwaitingPolicy(PolicyPhase),
    /// `220` to STARTTLS was given; the driver runs the handshake.
    AwaitingTls,
    /// Reading a SASL response line after a `334`.
    AuthResponse(AuthStep),
    /// Credentials were handed over; input is held until
    /// `authenticated()`.
    AwaitingAuth,
    /// Reading the octets of a BDAT chunk (RFC 3030); what is left of it
    /// is in `chunk`.
    Bdat,
    Closed,
}

/// A close asked for while a message awaited the spool. It is carried out
/// right after the spool outcome is answered, so the client still learns
/// whether its message was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeferredClose {
    Shutdown,
    Timeout,
    InputOverflow,
}

/// One inbound SMTP session. See the module comment for the driving loop.
pub struct ServerSession {
    params: ServerParams,
    /// What the policy sees. `ehlo_domain` is the accepted EHLO/HELO
    /// argument, empty until one was accepted.
    connection: Connection,
    /// What policies set for this connection and its current message.
    vctx: ValidationContext,
    /// The EHLO domain, reverse path or forward path awaiting the policy
    /// (Phase::AwaitingPolicy); reused for every command.
    argument: String,
    /// The greeting awaiting the policy is EHLO (not HELO).
    argument_esmtp: bool,
    /// message_bytes_max resolved against MESSAGE_BYTES_CEILING.
    message_bytes_limit: u64,
    /// recipients_max resolved against RECIPIENTS_CEILING.
    recipients_limit: u32,
    phase: Phase,
    started: bool,
    /// The accepted greeting was EHLO.
    esmtp: bool,
    /// A MAIL command was accepted and the transaction is open.
    has_mail: bool,
    /// Reverse path of the open transaction; empty when none or `<>`.
    mail_from: String,
    /// Accepted recipients; at most recipients_limit.
    rcpts: Vec<String>,
    /// Some RCPT was tried in this transaction (decides 503 against 554
    /// at DATA).
    rcpt_attempted: bool,
    body_8bitmime: bool,
    size_declared: Option<u64>,
    /// The partial command line, LF not yet seen. Always shorter than
    /// command_line_bytes_max; capacity set at accept and reused.
    line: Vec<u8>,
    /// The current command line is over the limit: drop bytes up to LF.
    discarding_line: bool,
    data: DataState,
    /// The body being received, less what `take_body` moved out; never
    /// longer than body_bytes.
    body: Vec<u8>,
    /// Body bytes of the message being read, taken or not; never above
    /// message_bytes_limit.
    body_bytes: u64,
    /// Part of this message's body was taken (streamed to the spool).
    body_taken: bool,
    /// The header block of a body that was taken, for the end-of-data
    /// policy; at most STREAMED_HEAD_BYTES_MAX, empty otherwise.
    head: Vec<u8>,
    /// Input that arrived while awaiting the spool or the policy; bytes
    /// before `pending_start` are processed. Non-empty only while
    /// awaiting; `pending.len() - pending_start` (the held bytes) never
    /// above input_buffer_bytes_max.
    pending: Vec<u8>,
    /// Start of the unprocessed part of `pending`, so resuming after each
    /// of many pipelined commands moves no bytes. Below `pending.len()`
    /// whenever `pending` is non-empty.
    pending_start: usize,
    /// Reply bytes not yet taken by the caller.
    output: Vec<u8>,
    /// At most a Validate or a Message, and a Close.
    events: VecDeque<Event>,
    /// Bad commands so far; reaching errors_max closes the session.
    errors: u32,
    messages_received: u32,
    deferred_close: Option<DeferredClose>,
    /// The line just executed was a refused DATA (503/554). Input after
    /// it in the same read is a synchronization error (RFC 2920 makes
    /// DATA the last command of a group): it would be a message body read
    /// as commands, so the session closes instead.
    data_refused: bool,
    /// Input follows the command line being executed in the same read
    /// (what STARTTLS must refuse: CVE-2011-0411).
    line_followed: bool,
    /// What the TLS handshake after STARTTLS negotiated; `None` in clear.
    tls: Option<TlsInfo>,
    /// SMTPUTF8 and DSN parameters of the open transaction (set by every
    /// MAIL; `rcpts` only once a RCPT had some:
    /// `keep_rcpt_params`).
    message_params: MessageParams,
    /// The DSN parameters of the RCPT awaiting the policy.
    rcpt_params: RcptParams,
    /// The user name of an AUTH exchange under way (LOGIN between its two
    /// responses, or awaiting `authenticated()`); empty otherwise.
    auth_pending_user: String,
    /// The BDAT chunk being read (Phase::Bdat) or last read.
    chunk: Chunk,
    /// A BDAT chunk of the open transaction was accepted: its body is
    /// being built from chunks (DATA and RCPT are refused until the
    /// transaction ends).
    bdat_open: bool,
}

impl ServerSession {
    /// A session for an accepted connection. Limits come from a validated
    /// configuration, so impossible ones are programmer errors.
    pub fn new(params: ServerParams) -> Self {
        let limits = &params.limits;
        assert!(limits.command_line_bytes_max >= COMMAND_LINE_BYTES_MIN);
        assert!(
            limits.text_line_bytes_max >= 3,
            "a text line holds at least .CRLF"
        );
        assert!(limits.errors_max >= 1);
        assert!(limits.input_buffer_bytes_max >= 1);
        assert!(!params.hostname.is_empty());
        assert!(
            !params.tls_required || params.capabilities.starttls,
            "tls = required needs STARTTLS offered"
        );
        let message_bytes_limit = match limits.message_bytes_max {
            0 => MESSAGE_BYTES_CEILING,
            n => n.min(MESSAGE_BYTES_CEILING),
        };
        let recipients_limit = match limits.recipients_max {
            0 => RECIPIENTS_CEILING,
            n => n.min(RECIPIENTS_CEILING),
        };
        let line = Vec::with_capacity(limits.command_line_bytes_max);
        let connection = Connection {
            peer_ip: params.peer_ip,
            listener: params.listener,
            ehlo_domain: String::new(),
            auth_user: None,
        };
        ServerSession {
            params,
            connection,
            vctx: ValidationContext::new(),
            argument: String::new(),
            argument_esmtp: false,
            message_bytes_limit,
            recipients_limit,
            phase: Phase::Command,
            started: false,
            esmtp: false,
            has_mail: false,
            mail_from: String::new(),
            rcpts: Vec::new(),
            rcpt_attempted: false,
            body_8bitmime: false,
            size_declared: None,
            line,
            discarding_line: false,
            data: DataState::FRESH,
            body: Vec::new(),
            body_bytes: 0,
            body_taken: false,
            head: Vec::new(),
            pending: Vec::new(),
            pending_start: 0,
            output: Vec::with_capacity(512),
            events: VecDeque::with_capacity(2),
            errors: 0,
            messages_received: 0,
            deferred_close: None,
            data_refused: false,
            line_followed: false,
            tls: None,
            message_params: MessageParams::default(),
            rcpt_params: RcptParams::default(),
            auth_pending_user: String::new(),
            chunk: Chunk::NONE,
            bdat_open: false,
        }
    }

    /// Ask the policy about the connection ([`Event::Validate`]); the
    /// banner follows its verdict. A refusal at connect closes the session
    /// (a 5xx becomes `554` and a 4xx `421`; RFC 5321 section 3.1 would
    /// let us wait for QUIT; we close at once, as the lead design asks, to
    /// spend nothing on a peer we refuse).
    pub fn start(&mut self) {
        assert!(!self.started, "start() is called once");
        self.started = true;
        self.await_policy(PolicyPhase::Connect);
    }

    /// Feed bytes as they arrive, in any split. Processes as far as it can;
    /// input that arrives while a message awaits the spool is held (at most
    /// `input_capacity()` bytes may be passed; more closes the session with
    /// `421 4.7.0` once the message is answered). Input after close is
    /// ignored.
    pub fn input(&mut self, bytes: &[u8]) {
        assert!(self.started, "start() comes before input()");
        if self.phase == Phase::Closed || bytes.is_empty() {
            return;
        }
        if self.is_waiting() {
            self.hold(bytes);
            return;
        }
        assert!(self.pending.is_empty());
        let consumed = self.process(bytes);
        if consumed < bytes.len() && self.is_waiting() {
            self.hold(&bytes[consumed..]);
        }
        self.check_invariants();
    }

    /// Append pending reply bytes to `into` and forget them.
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        into.extend_from_slice(&self.output);
        self.output.clear();
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Answer the last [`Event::Message`], then carry out a deferred close
    /// or go on with the held pipelined input.
    pub fn spooled(&mut self, outcome: SpoolOutcome) {
        assert_eq!(
            self.phase,
            Phase::AwaitingSpool,
            "spooled() answers an Event::Message"
        );
        match outcome {
            SpoolOutcome::Queued { queue_id } => {
                assert!(!queue_id.is_empty() && queue_id.bytes().all(|b| b.is_ascii_graphic()));
                self.reply(250, "2.0.0", format_args!("Ok: queued as {queue_id}"));
            }
            SpoolOutcome::TemporaryFailure => {
                self.reply(451, "4.3.0", format_args!("Error: queue file write error"));
            }
            SpoolOutcome::StorageFull => {
                self.reply(452, "4.3.1", format_args!("Insufficient system storage"));
            }
        }
        self.phase = Phase::Command;
        self.resume();
    }

    /// The caller's idle timer fired: `421 4.4.2` and close. The timer
    /// should not run while a message awaits the spool; if it fires anyway,
    /// the close waits for `spooled()` like [`ServerSession::shutdown`].
    /// While the policy decides, nothing was taken, so the close is at once.
    pub fn idle_timeout(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingSpool => {
                self.deferred_close.get_or_insert(DeferredClose::Timeout);
            }
            Phase::Command
            | Phase::Data
            | Phase::Bdat
            | Phase::AwaitingPolicy(_)
            | Phase::AwaitingTls
            | Phase::AuthResponse(_)
            | Phase::AwaitingAuth => {
                self.reply_timeout();
                self.close();
            }
        }
    }

    /// The shard is stopping: `421 4.3.2` and close. If a message awaits
    /// the spool, the session stops taking input (`wants_input()` turns
    /// false) and the 421 follows the spool outcome in `spooled()`, so a
    /// client never loses the answer for a message we may have taken. A
    /// message still being read (DATA) or before the policy is abandoned:
    /// the client saw no 250 and will send it again.
    pub fn shutdown(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingSpool => {
                self.deferred_close.get_or_insert(DeferredClose::Shutdown);
            }
            Phase::Command
            | Phase::Data
            | Phase::Bdat
            | Phase::AwaitingPolicy(_)
            | Phase::AwaitingTls
            | Phase::AuthResponse(_)
            | Phase::AwaitingAuth => {
                self.reply_shutdown();
                self.close();
            }
        }
    }

    /// True after QUIT, a 421, a 521 or a refused connect: write the
    /// output, then close the socket.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn awaiting_spool(&self) -> bool {
        self.phase == Phase::AwaitingSpool
    }

    /// The phase awaiting the policy's verdict, if one does.
    pub fn awaiting_policy(&self) -> Option<PolicyPhase> {
        match self.phase {
            Phase::AwaitingPolicy(phase) => Some(phase),
            _ => None,
        }
    }

    /// The validation context, for phases the driver runs after the
    /// session's (spooling).
    pub fn vctx(&self) -> &ValidationContext {
        &self.vctx
    }

    pub fn vctx_mut(&mut self) -> &mut ValidationContext {
        &mut self.vctx
    }

    /// The caller should read from the socket.
    pub fn wants_input(&self) -> bool {
        self.input_capacity() > 0
    }

    /// Most bytes the next `input()` may carry. Unlimited input is
    /// processed as it comes, but whatever follows an end of data is held,
    /// so the caller reads at most this much per call.
    pub fn input_capacity(&self) -> usize {
        if self.phase == Phase::Closed || self.deferred_close.is_some() {
            return 0;
        }
        self.params
            .limits
            .input_buffer_bytes_max
            .saturating_sub(self.held_bytes())
    }

    /// Input bytes held by the session (held pipelined input and the
    /// partial command line). Never above input_buffer_bytes_max +
    /// command_line_bytes_max. Body bytes are bounded separately by the
    /// message size limit.
    pub fn buffered_bytes(&self) -> usize {
        self.held_bytes() + self.line.len()
    }

    /// Pipelined input held and not yet processed.
    fn held_bytes(&self) -> usize {
        self.pending.len() - self.pending_start
    }

    fn is_waiting(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitingSpool
                | Phase::AwaitingPolicy(_)
                | Phase::AwaitingTls
                | Phase::AwaitingAuth
        )
    }

    /// Messages handed over with Event::Message in this session.
    pub fn messages_received(&self) -> u32 {
        self.messages_received
    }

    pub fn peer_ip(&self) -> IpAddr {
        self.params.peer_ip
    }

    /// The accepted EHLO/HELO argument, empty before one.
    pub fn helo(&self) -> &str {
        &self.connection.ehlo_domain
    }

    pub fn params(&self) -> &ServerParams {
        &self.params
    }

    /// Give a spooled message's body back so its buffer is reused for the
    /// next message (optional; saves an allocation per message).
    pub fn recycle_body(&mut self, mut body: Vec<u8>) {
        if self.body.capacity() == 0 && body.capacity() <= BODY_RETAINED_BYTES_MAX {
            body.clear();
            self.body = body;
        }
    }

    /// The Received header for `envelope`, received by this session.
    /// Where the session stands, in the words of Momentum's rejectlog
    /// `P="..."` field.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Data | Phase::Bdat => "data",
            Phase::AwaitingSpool => "spool",
            Phase::AwaitingPolicy(phase) => phase.callout(),
            Phase::AwaitingTls => "starttls",
            Phase::AuthResponse(_) | Phase::AwaitingAuth => "auth",
            Phase::Closed => "closed",
            Phase::Command if self.connection.ehlo_domain.is_empty() => "awaiting ehlo",
            Phase::Command if !self.has_mail => "awaiting mailfrom",
            Phase::Command if self.rcpts.is_empty() => "awaiting rcptto",
            Phase::Command => "awaiting data",
        }
    }

    /// The accepted recipients of the open transaction.
    pub fn rcpts(&self) -> &[String] {
        &self.rcpts
    }

    /// The reverse path of the open transaction ("" when none or `<>`).
    pub fn mail_from(&self) -> &str {
        &self.mail_from
    }

    /// The Received header of the message whose DATA is being read, for a
    /// body streamed to the spool before it is complete.
    pub fn transaction_received_header(&self, queue_id: &str, unix_secs: i64) -> String {
        let helo = &self.connection.ehlo_domain;
        let utf8 = self.message_params.smtputf8;
        self.received_for(helo, self.esmtp, utf8, &self.rcpts, queue_id, unix_secs)
    }

    pub fn received_header(&self, envelope: &Envelope, queue_id: &str, unix_secs: i64) -> String {
        let (helo, esmtp) = (&envelope.helo, envelope.esmtp);
        let utf8 = envelope.params.smtputf8;
        self.received_for(helo, esmtp, utf8, &envelope.rcpts, queue_id, unix_secs)
    }

    /// Our Received header for a message from `helo` to `rcpts` (the
    /// recipient is named only when there is one).
    fn received_for(
        &self,
        helo: &str,
        esmtp: bool,
        smtputf8: bool,
        rcpts: &[String],
        queue_id: &str,
        unix_secs: i64,
    ) -> String {
        received_header(&ReceivedFields {
            helo,
            peer_ip: self.params.peer_ip,
            hostname: &self.params.hostname,
            version: self.params.version,
            esmtp,
            tls: self.tls.as_ref(),
            queue_id,
            recipient: match rcpts {
                [only] => Some(only),
                _ => None,
            },
            unix_secs,
            smtputf8,
            authenticated: self.connection.auth_user.is_some(),
        })
    }

    fn check_invariants(&self) {
        let limits = &self.params.limits;
        assert!(self.line.len() < limits.command_line_bytes_max);
        assert!(self.held_bytes() <= limits.input_buffer_bytes_max);
        assert!(self.pending.is_empty() || (self.is_waiting() && self.held_bytes() > 0));
        assert!(self.body.len() as u64 <= self.body_bytes);
        assert!(self.body_bytes <= self.message_bytes_limit);
        assert!(self.head.len() <= STREAMED_HEAD_BYTES_MAX);
        assert!(self.rcpts.len() <= self.recipients_limit as usize);
        assert!(self.events.len() <= 2);
    }

    /// Keep input that arrived while awaiting the spool or the policy.
    fn hold(&mut self, bytes: &[u8]) {
        if self.deferred_close.is_some() {
            return;
        }
        if self.held_bytes() + bytes.len() > self.params.limits.input_buffer_bytes_max {
            // The caller passed more than input_capacity(). Dropping bytes
            // would desynchronise the stream, so answer what is awaited,
            // then close.
            self.deferred_close = Some(DeferredClose::InputOverflow);
            return;
        }
        if self.pending_start > 0 {
            // Once per read, not per command.
            self.pending.drain(..self.pending_start);
            self.pending_start = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// After an answer (spool outcome or verdict): carry out a deferred
    /// close, or go on with the held input, unless the session waits
    /// again (the verdict on a message hands it to the spool) or closed.
    fn resume(&mut self) {
        if self.phase == Phase::Closed || self.is_waiting() {
            self.check_invariants();
            return;
        }
        if let Some(deferred) = self.deferred_close.take() {
            match deferred {
                DeferredClose::Shutdown => self.reply_shutdown(),
                DeferredClose::Timeout => self.reply_timeout(),
                DeferredClose::InputOverflow => {
                    let host = self.params.hostname.clone();
                    self.reply(
                        421,
                        "4.7.0",
                        format_args!("{host} Error: too much pipelined input"),
                    );
                }
            }
            self.close();
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let consumed = self.process(&pending[self.pending_start..]);
        self.pending_start += consumed;
        if self.phase == Phase::Closed {
            // close() dropped the buffers; keep it so.
            self.pending_start = 0;
            return;
        }
        if !self.is_waiting() || self.pending_start == pending.len() {
            pending.clear();
            self.pending_start = 0;
        }
        self.pending = pending;
        self.check_invariants();
    }

    /// Run the state machine over `bytes` until they are used up, the
    /// session waits for the spool or the policy, or it closed. Returns
    /// the number of bytes consumed.
    fn process(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            let consumed = match self.phase {
                Phase::Command | Phase::AuthResponse(_) => self.command_bytes(&bytes[at..]),
                Phase::Data => self.data_bytes(&bytes[at..]),
                Phase::Bdat => self.bdat_bytes(&bytes[at..]),
                Phase::AwaitingSpool
                | Phase::AwaitingPolicy(_)
                | Phase::AwaitingTls
                | Phase::AwaitingAuth
                | Phase::Closed => break,
            };
            assert!(consumed > 0 && consumed <= bytes.len() - at);
            at += consumed;
        }
        at
    }

    /// Consume up to one command line's worth of `rest` (through its LF)
    /// and execute the line if it is complete.
    fn command_bytes(&mut self, rest: &[u8]) -> usize {
        let line_max = self.params.limits.command_line_bytes_max;
        match rest.iter().position(|&b| b == b'\n') {
            None => {
                // The LF is still to come, so the line would reach
                // line_len + rest + 1 bytes.
                if !self.discarding_line {
                    if self.line.len() + rest.len() >= line_max {
                        self.discarding_line = true;
                        self.line.clear();
                    } else {
                        self.line.extend_from_slice(rest);
                    }
                }
                rest.len()
            }
            Some(lf) => {
                if self.discarding_line || self.line.len() + lf + 1 > line_max {
                    self.discarding_line = false;
                    self.line.clear();
                    self.reply(500, "5.5.2", format_args!("Error: line too long"));
                    if matches!(self.phase, Phase::AuthResponse(_)) {
                        self.auth_abandoned();
                    }
                    self.count_error();
                } else {
                    self.line.extend_from_slice(&rest[..lf]);
                    self.line_followed = rest.len() > lf + 1;
                    self.execute_line();
                    self.line_followed = false;
                    if std::mem::take(&mut self.data_refused) && rest.len() > lf + 1 {
                        self.refuse_unsynchronized_data();
                    }
                }
                lf + 1
            }
        }
    }

    fn execute_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if let Phase::AuthResponse(step) = self.phase {
            // Not a command: a SASL response (base64, or `*`).
            let text = std::str::from_utf8(&line).unwrap_or("\u{0}");
            self.auth_response(step, text);
            line.clear();
            self.line = line;
            return;
        }
        match parse_command(&line) {
            Ok(command) => self.execute(command),
            Err(error) => self.command_error(error),
        }
        line.clear();
        self.line = line;
    }

    fn execute(&mut self, command: Command<'_>) {
        match command {
            Command::Ehlo { domain } => self.greet(domain, true),
            Command::Helo { domain } => self.greet(domain, false),
            Command::Mail {
                reverse_path,
                params,
            } => self.mail(reverse_path, params),
            Command::Rcpt {
                forward_path,
                params,
            } => {
                if self.rcpt_params_refused(forward_path, params) {
                    return;
                }
                self.rcpt(forward_path, false)
            }
            Command::RcptPostmaster => {
                self.rcpt_params = RcptParams::default();
                self.rcpt("postmaster", true)
            }
            Command::Data => self.data(),
            Command::Rset => {
                self.reset_transaction();
                self.vctx.reset_message();
                self.reply(250, "2.0.0", format_args!("Ok"));
            }
            Command::Noop => self.reply(250, "2.0.0", format_args!("Ok")),
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Command::Quit => {
                self.reply(221, "2.0.0", format_args!("Bye"));
                self.close();
            }
            // RFC 5321 section 3.5.3: 252 when we will not verify. RFC 3463
            // has no X.5.2 meaning for success, so 2.0.0 (as Postfix).
            Command::Vrfy => self.reply(
                252,
                "2.0.0",
                format_args!("Cannot VRFY user, but will accept message and attempt delivery"),
            ),
            Command::Help => self.reply(
                214,
                "2.0.0",
                format_args!("Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"),
            ),
            Command::NotImplemented => {
                self.reply(502, "5.5.1", format_args!("Error: command not implemented"));
                self.count_error();
            }
            Command::Bdat { size, last } => self.bdat(size, last),
        }
    }

    fn greet(&mut self, domain: &str, esmtp: bool) {
        self.argument.clear();
        self.argument.push_str(domain);
        self.argument_esmtp = esmtp;
        self.await_policy(PolicyPhase::Ehlo);
    }

    /// The policy let the greeting in `argument` through.
    fn accept_greeting(&mut self) {
        // RFC 5321 section 4.1.4: a new greeting resets the transaction.
        self.reset_transaction();
        self.vctx.reset_message();
        let esmtp = self.argument_esmtp;
        self.esmtp = esmtp;
        std::mem::swap(&mut self.connection.ehlo_domain, &mut self.argument);
        let host = &self.params.hostname;
        // RFC 2034 section 3: no enhanced codes on the EHLO/HELO reply.
        if esmtp {
            let mut capabilities = self.params.capabilities;
            capabilities.auth = self.auth_offered();
            capabilities.write_ehlo_reply(
                &mut self.output,
                host,
                self.params.peer_ip,
                self.message_bytes_limit,
            );
        } else {
            let _ = write!(self.output, "250 {host}\r\n");
        }
    }

    fn mail(&mut self, reverse_path: &str, params: MailParams<'_>) {
        if self.refuse_without_tls() {
            return;
        }
        if self.connection.ehlo_domain.is_empty() {
            self.reply(503, "5.5.1", format_args!("Error: send HELO/EHLO first"));
            self.count_error();
            return;
        }
        if self.has_mail {
            self.reply(503, "5.5.1", format_args!("Error: nested MAIL command"));
            self.count_error();
            return;
        }
        let receptions_max = self.params.limits.receptions_per_connection_max;
        if receptions_max != 0 && self.messages_received >= receptions_max {
            let host = self.params.hostname.clone();
            self.reply(
                421,
                "4.7.0",
                format_args!("{host} Error: too many messages in one session"),
            );
            self.close();
            return;
        }
        let capabilities = self.params.capabilities;
        if (params.size_bytes.is_some() && !capabilities.size)
            || (params.body.is_some() && !capabilities.eight_bit_mime)
            || (params.auth && self.auth_offered().is_empty())
        {
            // RFC 5321 section 4.1.1.11: a parameter of an extension we
            // did not offer.
            self.command_error(CommandError::UnknownParameter);
            return;
        }
        if self.mail_params_refused(reverse_path, &params) {
            return;
        }
        if params
            .size_bytes
            .is_some_and(|size| size > self.message_bytes_limit)
        {
            self.reply(
                552,
                "5.3.4",
                format_args!("Message size exceeds fixed maximum message size"),
            );
            return;
        }
        // A new transaction: what the last message set is gone.
        self.vctx.reset_message();
        self.argument.clear();
        self.argument.push_str(reverse_path);
        self.body_8bitmime = params.body == Some(BodyType::EightBitMime);
        self.size_declared = params.size_bytes;
        self.message_params = MessageParams {
            smtputf8: params.smtputf8,
            ret: params.ret,
            envid: params
                .envid
                .and_then(|e| super::params::parse_envid(e).ok()),
            rcpts: Vec::new(),
        };
        self.await_policy(PolicyPhase::MailFrom);
    }

    /// The policy let the reverse path in `argument` through.
    fn accept_mail(&mut self) {
        self.has_mail = true;
        self.mail_from.clear();
        self.mail_from.push_str(&self.argument);
        self.reply(250, "2.1.0", format_args!("Ok"));
    }

    /// `postmaster` is the bare reserved mailbox, which RFC 5321 section
    /// 4.5.1 says every server accepts; it skips the relay policy.
    fn rcpt(&mut self, forward_path: &str, postmaster: bool) {
        if self.refuse_without_tls() {
            return;
        }
        if !self.has_mail {
            self.reply(503, "5.5.1", format_args!("Error: need MAIL command"));
            self.count_error();
            return;
        }
        if self.bdat_open {
            self.reply(503, "5.5.1", format_args!("Error: RCPT after BDAT"));
            self.count_error();
            return;
        }
        self.rcpt_attempted = true;
        if self.rcpts.len() >= self.recipients_limit as usize {
            self.reply(452, "4.5.3", format_args!("Error: too many recipients"));
            return;
        }
        self.argument.clear();
        self.argument.push_str(forward_path);
        if postmaster {
            self.accept_rcpt();
        } else {
            self.await_policy(PolicyPhase::RcptTo);
        }
    }

    /// The policy let the forward path in `argument` through.
    fn accept_rcpt(&mut self) {
        self.rcpts.push(self.argument.clone());
        self.keep_rcpt_params();
        self.reply(250, "2.1.5", format_args!("Ok"));
    }

    /// The listener demands TLS and this session has none: `530 5.7.0`
    /// (MAIL, RCPT, DATA; AUTH too once it exists). Not counted as an
    /// error: the client may still issue STARTTLS.
    pub fn refuse_without_tls(&mut self) -> bool {
        if !self.params.tls_required || self.tls.is_some() {
            return false;
        }
        self.reply(
            530,
            "5.7.0",
            format_args!("Must issue a STARTTLS command first"),
        );
        true
    }

    /// STARTTLS (RFC 3207): refused when not offered, once TLS is on, or
    /// when more input follows it in the same read, which would be clear
    /// text an attacker put in front of the TLS session (CVE-2011-0411;
    /// Momentum's `starttls_injection_policy = reject`): the client gets
    /// `554 5.5.1`, TLS does not start, and what followed is read as the
    /// clear-text commands it is.
    fn starttls(&mut self) {
        if !self.params.capabilities.starttls && self.tls.is_none() {
            self.reply(502, "5.5.1", format_args!("Error: command not implemented"));
            self.count_error();
            return;
        }
        if self.tls.is_some() {
            self.reply(554, "5.5.1", format_args!("Error: TLS already active"));
            self.count_error();
            return;
        }
        if self.line_followed || self.held_bytes() > 0 {
            self.reply(
                554,
                "5.5.1",
                format_args!("Error: command pipelined after STARTTLS"),
            );
            self.count_error();
            return;
        }
        self.reply(220, "2.0.0", format_args!("Ready to start TLS"));
        self.phase = Phase::AwaitingTls;
        self.events.push_back(Event::StartTls);
    }

    /// The handshake after STARTTLS succeeded: the session starts over
    /// (RFC 3207 section 4.2: the greeting, the transaction and the
    /// message scope are forgotten; the client must EHLO again) and
    /// STARTTLS is no longer offered.
    pub fn tls_started(&mut self, info: TlsInfo) {
        assert_eq!(
            self.phase,
            Phase::AwaitingTls,
            "tls_started answers Event::StartTls"
        );
        assert!(
            self.pending.is_empty(),
            "nothing is read during a handshake"
        );
        self.reset_transaction();
        self.vctx.reset_message();
        self.connection.ehlo_domain.clear();
        self.esmtp = false;
        self.params.capabilities.starttls = false;
        self.tls = Some(info);
        self.phase = Phase::Command;
    }

    /// TLS is on (STARTTLS and its handshake are done).
    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    /// What TLS negotiated, for the Received header and the logs.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    fn reset_transaction(&mut self) {
        self.has_mail = false;
        self.mail_from.clear();
        self.rcpts.clear();
        self.rcpt_attempted = false;
        self.message_params = MessageParams::default();
        self.body_8bitmime = false;
        self.size_declared = None;
        self.data = DataState::FRESH;
        self.body.clear();
        if self.body.capacity() > BODY_RETAINED_BYTES_MAX {
            self.body = Vec::new();
        }
        self.body_bytes = 0;
        self.body_taken = false;
        self.head = Vec::new();
        self.bdat_open = false;
    }

    fn command_error(&mut self, error: CommandError) {
        let (code, enhanced) = error.reply();
        self.reply(code, enhanced, format_args!("{error}"));
        self.count_error();
    }

    /// Count a bad command (syntax, sequence, unknown or unimplemented
    /// verb, overlong line, DATA without valid recipients). Policy
    /// rejections do not count: they are answers, not client faults.
    fn count_error(&mut self) {
        self.errors = self.errors.saturating_add(1);
        if self.errors >= self.params.limits.errors_max && self.phase != Phase::Closed {
            let host = self.params.hostname.clone();
            self.reply(421, "4.7.0", format_args!("{host} Error: too many errors"));
            self.close();
        }
    }

    fn reply_shutdown(&mut self) {
        let host = self.params.hostname.clone();
        self.reply(421, "4.3.2", format_args!("{host} Service shutting down"));
    }

    fn reply_timeout(&mut self) {
        let host = self.params.hostname.clone();
        self.reply(421, "4.4.2", format_args!("{host} Error: timeout exceeded"));
    }

    /// Without ENHANCEDSTATUSCODES offered, replies carry no enhanced
    /// code (RFC 2034 section 3).
    fn reply(&mut self, code: u16, enhanced: &str, text: fmt::Arguments<'_>) {
        assert!((200..600).contains(&code));
        if enhanced.is_empty() || !self.params.capabilities.enhanced_status_codes {
            let _ = write!(self.output, "{code} {text}\r\n");
        } else {
            let _ = write!(self.output, "{code} {enhanced} {text}\r\n");
        }
    }

    /// A policy's checked reply, with `prefix` (the address it is about,
    /// or our host name) before its text. The text may come from a
    /// scriptlet, so control characters become spaces and other non-ASCII
    /// characters `?`: a CR or LF in it must not forge a second reply. A 421
    /// closes the session, as RFC 5321 requires.
    fn reply_rejection(
        &mut self,
        code: u16,
        rejection: &Rejection,
        prefix: Option<fmt::Arguments<'_>>,
    ) {
        debug_assert_eq!(rejection.check(), Ok(()));
        let _ = write!(self.output, "{code} ");
        if self.params.capabilities.enhanced_status_codes {
            let _ = write!(self.output, "{} ", rejection.enhanced);
        }
        if let Some(prefix) = prefix {
            let _ = write!(self.output, "{prefix} ");
        }
        for c in rejection.text.chars() {
            let byte = match c {
                c if c.is_ascii_control() => b' ',
                c if c.is_ascii() => c as u8,
                _ => b'?',
            };
            self.output.push(byte);
        }
        self.output.extend_from_slice(b"\r\n");
        if code == 421 {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        // A verdict still asked for is moot now.
        self.events.retain(|e| !matches!(e, Event::Validate(_)));
        self.events.push_back(Event::Close);
        self.pending = Vec::new();
        self.pending_start = 0;
        self.line = Vec::new();
        self.body = Vec::new();
        self.head = Vec::new();
        self.rcpts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecelerity_policy::{Answer, ListenerRelayHosts, Policy, RelayControl, Scope};
    use ecelerity_testkit::Rng;
    use std::ops::{Deref, DerefMut};

    const HOST: &str = "mx.test";
    const LISTENER: &str = "192.0.2.10:25";

    /// A policy that refuses what it is told to, for each phase, at once.
    #[derive(Default)]
    struct ScriptedPolicy {
        connect: Option<Rejection>,
        ehlo: Option<Rejection>,
        mailfrom: Option<Rejection>,
        /// Recipients containing this text are refused with 550 5.1.1.
        rcpt_refused: Option<&'static str>,
        data: Option<Rejection>,
    }

    impl ScriptedPolicy {
        fn verdict(&self, check: Check<'_>) -> Verdict {
            let refuse =
                |r: &Option<Rejection>| r.clone().map_or(Verdict::Continue, Verdict::Reject);
            match check {
                Check::Connect => refuse(&self.connect),
                Check::Ehlo { .. } => refuse(&self.ehlo),
                Check::MailFrom { .. } => refuse(&self.mailfrom),
                Check::RcptTo { forward_path } => match self.rcpt_refused {
                    Some(text) if forward_path.contains(text) => {
                        Verdict::Reject(Rejection::new(550, "5.1.1", "no such user"))
                    }
                    _ => Verdict::Continue,
                },
                Check::Data { .. } => refuse(&self.data),
            }
        }
    }

    impl Policy for ScriptedPolicy {
        fn validate<'a>(
            &'a self,
            validation: Validation<'a>,
            _vctx: &'a mut ValidationContext,
        ) -> Answer<'a> {
            Answer::Now(self.verdict(validation.check))
        }
    }

    /// A session with the driver's part played: every Event::Validate is
    /// answered by `policy` as soon as it appears (awaiting a Later
    /// answer), as the shard's I/O driver does. Methods that feed the
    /// session shadow the session's; everything else derefs to it.
    struct Driven {
        session: ServerSession,
        policy: Box<dyn Policy>,
        /// Bad replies the session reported from `validated()`.
        reply_errors: Vec<ReplyError>,
    }

    impl Driven {
        fn new(params: ServerParams, policy: impl Policy + 'static) -> Driven {
            Driven {
                session: ServerSession::new(params),
                policy: Box::new(policy),
                reply_errors: Vec::new(),
            }
        }

        fn settle(&mut self) {
            while let Some(Event::Validate(phase)) = self.session.events.front().cloned() {
                self.session.events.pop_front();
                assert_eq!(self.session.awaiting_policy(), Some(phase));
                let (validation, vctx) = self.session.validation();
                let verdict = match self.policy.validate(validation, vctx) {
                    Answer::Now(verdict) => verdict,
                    Answer::Later(future) => futures_lite::future::block_on(future),
                };
                if let Err(e) = self.session.validated(verdict) {
                    self.reply_errors.push(e);
                }
            }
        }

        fn start(&mut self) {
            self.session.start();
            self.settle();
        }

        fn input(&mut self, bytes: &[u8]) {
            self.session.input(bytes);
            self.settle();
        }

        fn spooled(&mut self, outcome: SpoolOutcome) {
            self.session.spooled(outcome);
            self.settle();
        }

        fn next_event(&mut self) -> Option<Event> {
            self.settle();
            self.session.next_event()
        }
    }

    impl Deref for Driven {
        type Target = ServerSession;
        fn deref(&self) -> &ServerSession {
            &self.session
        }
    }

    impl DerefMut for Driven {
        fn deref_mut(&mut self) -> &mut ServerSession {
            &mut self.session
        }
    }

    fn params(limits: ServerLimits) -> ServerParams {
        ServerParams {
            hostname: HOST.into(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            listener: LISTENER.parse().unwrap(),
            limits,
            capabilities: Capabilities::default(),
            version: "0.1.0",
            tls_required: false,
            auth_plaintext: false,
        }
    }

    /// A started session with its banner already taken.
    fn open_with(limits: ServerLimits, policy: impl Policy + 'static) -> Driven {
        let mut session = Driven::new(params(limits), policy);
        session.start();
        let mut banner = Vec::new();
        session.take_output(&mut banner);
        assert!(banner.starts_with(b"220 "));
        session
    }

    fn open() -> Driven {
        open_with(ServerLimits::default(), ScriptedPolicy::default())
    }

    /// Feed `bytes` in one call and return the reply lines (without CRLF).
    fn send(session: &mut Driven, bytes: &[u8]) -> Vec<String> {
        session.input(bytes);
        take_lines(session)
    }

    fn take_lines(session: &mut ServerSession) -> Vec<String> {
        let mut out = Vec::new();
        session.take_output(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n").map(str::to_owned).collect()
    }

    fn codes(lines: &[String]) -> Vec<u16> {
        lines.iter().map(|l| l[..3].parse().unwrap()).collect()
    }

    fn message(session: &mut Driven) -> Envelope {
        match session.next_event() {
            Some(Event::Message(envelope)) => envelope,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn queued(id: &str) -> SpoolOutcome {
        SpoolOutcome::Queued {
            queue_id: id.into(),
        }
    }

    const TRANSACTION: &[u8] = b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n\
        RCPT TO:<b@example.com>\r\nDATA\r\n";

    #[test]
    fn banner_names_host_and_version() {
        let mut session = Driven::new(params(ServerLimits::default()), ScriptedPolicy::default());
        session.start();
        assert_eq!(
            take_lines(&mut session),
            ["220 mx.test ESMTP ecelerity 0.1.0"]
        );
        assert!(session.wants_input());
    }

    #[test]
    fn connect_refused_by_policy_gets_554_and_closes() {
        let policy = ScriptedPolicy {
            connect: Some(Rejection::new(550, "5.7.1", "go away")),
            ..Default::default()
        };
        let mut session = Driven::new(params(ServerLimits::default()), policy);
        session.start();
        assert_eq!(take_lines(&mut session), ["554 5.7.1 mx.test go away"]);
        assert!(session.is_closed());
        assert_eq!(session.next_event(), Some(Event::Close));
        assert!(!session.wants_input());
    }

    #[test]
    fn ehlo_advertises_extensions_and_helo_gets_one_line() {
        let mut session = open();
        assert_eq!(
            send(&mut session, b"EHLO client.test\r\n"),
            [
                "250-mx.test says EHLO to 192.0.2.1",
                "250-PIPELINING",
                &format!("250-SIZE {MESSAGE_BYTES_CEILING}"),
                "250-8BITMIME",
                "250 ENHANCEDSTATUSCODES",
            ]
        );
        assert_eq!(session.helo(), "client.test");
        assert_eq!(send(&mut session, b"helo other.test\r\n"), ["250 mx.test"]);
        assert_eq!(session.helo(), "other.test");
    }

    #[test]
    fn greeting_without_argument_gets_501() {
        let mut session = open();
        assert_eq!(
            send(&mut session, b"EHLO\r\n"),
            ["501 5.5.4 Syntax: EHLO hostname"]
        );
        assert_eq!(
            send(&mut session, b"HELO \r\n"),
            ["501 5.5.4 Syntax: HELO hostname"]
        );
        assert_eq!(session.helo(), "");
    }

    #[test]
    fn greeting_refused_by_policy_leaves_no_helo() {
        let policy = ScriptedPolicy {
            ehlo: Some(Rejection::new(550, "5.7.1", "bad\r\n250 forged")),
            ..Default::default()
        };
        let mut session = open_with(ServerLimits::default(), policy);
        let lines = send(&mut session, b"EHLO x.test\r\n");
        // The CRLF inside the policy text cannot forge a second reply.
        assert_eq!(lines, ["550 5.7.1 <x.test>: bad  250 forged"]);
        assert_eq!(
            send(&mut session, b"MAIL FROM:<>\r\n")[0],
            "503 5.5.1 Error: send HELO/EHLO first"
        );
    }

    #[test]
    fn mail_before_greeting_and_nested_mail_get_503() {
        let mut session = open();
        assert_eq!(
            codes(&send(&mut session, b"MAIL FROM:<a@b.test>\r\n")),
            [503]
        );
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            codes(&send(&mut session, b"MAIL FROM:<a@b.test>\r\n")),
            [250]
        );
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@b.test>\r\n"),
            ["503 5.5.1 Error: nested MAIL command"]
        );
    }

    #[test]
    fn mail_parameters_are_checked() {
        let limits = ServerLimits {
            message_bytes_max: 1000,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, b"EHLO c.test\r\n");
        let lines = send(
            &mut session,
            b"MAIL FROM:<a@b.test> SIZE=1001\r\nMAIL FROM:<a@b.test> FOO=BAR\r\n\
              MAIL FROM:<a@b.test> SIZE=abc\r\nMAIL FROM:a@b.test\r\nMAIL FROM:<a@@b>\r\n\
              MAIL FROM:<> SIZE=1000 BODY=8BITMIME\r\n",
        );
        assert_eq!(
            lines,
            [
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "555 5.5.4 Error: unsupported parameter",
                "501 5.5.4 Error: bad parameter syntax",
                "501 5.5.4 Syntax: MAIL FROM:<address>",
                "501 5.1.7 Bad sender address syntax",
                "250 2.1.0 Ok",
            ]
        );
    }

    #[test]
    fn rcpt_before_mail_gets_503_and_leaves_the_session_usable() {
        let mut session = open();
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"RCPT TO:<b@example.com>\r\n"),
            ["503 5.5.1 Error: need MAIL command"]
        );
        let lines = send(
            &mut session,
            b"MAIL FROM:<a@c.test>\r\nRCPT TO:<b@example.com>\r\n",
        );
        assert_eq!(codes(&lines), [250, 250]);
    }

    #[test]
    fn rcpt_syntax_errors_get_501() {
        let mut session = open();
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<>\r\n");
        let lines = send(
            &mut session,
            b"RCPT TO:b@example.com\r\nRCPT TO:<b@>\r\nRCPT\r\n",
        );
        assert_eq!(
            lines,
            [
                "501 5.5.4 Syntax: RCPT TO:<address>",
                "501 5.1.3 Bad recipient address syntax",
                "501 5.5.4 Syntax: RCPT TO:<address>",
            ]
        );
    }

    #[test]
    fn relay_is_denied_to_peers_outside_relay_hosts() {
        let policy = RelayControl {
            listeners: vec![ListenerRelayHosts {
                listener: LISTENER.parse().unwrap(),
                relay_hosts: vec!["127.0.0.0/8".parse().unwrap()],
            }],
            local_domains: vec!["mx.test".into()],
        };
        let mut session = open_with(ServerLimits::default(), policy.clone());
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            send(&mut session, b"RCPT TO:<b@example.com>\r\n"),
            ["550 5.7.1 <b@example.com>: relaying denied"]
        );
        assert_eq!(
            codes(&send(&mut session, b"RCPT TO:<b@mx.test>\r\n")),
            [250]
        );

        let mut params = params(ServerLimits::default());
        params.peer_ip = "127.0.0.1".parse().unwrap();
        let mut trusted = Driven::new(params, policy);
        trusted.start();
        take_lines(&mut trusted);
        send(&mut trusted, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            codes(&send(&mut trusted, b"RCPT TO:<b@example.com>\r\n")),
            [250]
        );
    }

    /// Goal: a policy may answer a phase long after it was asked; the
    /// session meanwhile holds pipelined commands, shows the policy what
    /// it awaits, and answers everything in order. Method: drive a bare
    /// session by hand, answering each Event::Validate only after more
    /// input came.
    #[test]
    fn a_policy_that_answers_later_holds_pipelined_commands_and_keeps_reply_order() {
        let mut session = ServerSession::new(params(ServerLimits::default()));
        session.start();
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::Connect))
        );
        session.input(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            take_lines(&mut session),
            Vec::<String>::new(),
            "no banner yet"
        );
        session.validated(Verdict::Continue).unwrap();
        assert_eq!(
            take_lines(&mut session),
            ["220 mx.test ESMTP ecelerity 0.1.0"]
        );
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::Ehlo))
        );
        assert_eq!(
            session.validation().0.check,
            Check::Ehlo {
                domain: "c.test",
                esmtp: true
            }
        );
        session.validated(Verdict::Continue).unwrap();
        assert_eq!(codes(&take_lines(&mut session)), [250; 5]);
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::MailFrom))
        );
        session.validated(Verdict::Continue).unwrap();
        assert_eq!(take_lines(&mut session), ["250 2.1.0 Ok"]);

        session.input(b"RCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n");
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::RcptTo))
        );
        // Input while the policy decides is held, not read as commands.
        session.input(b"hello\r\n.\r\nQUIT\r\n");
        assert_eq!(take_lines(&mut session), Vec::<String>::new());
        assert_eq!(session.phase_name(), "validate_rcptto");
        assert!(session.buffered_bytes() > 20);
        let (validation, _) = session.validation();
        assert_eq!(validation.mail_from, "a@c.test");
        assert_eq!(
            validation.check,
            Check::RcptTo {
                forward_path: "b@x.test"
            }
        );
        let greylisted = Rejection::new(450, "4.2.0", "greylisted");
        session.validated(Verdict::Reject(greylisted)).unwrap();
        assert_eq!(
            take_lines(&mut session),
            ["450 4.2.0 <b@x.test>: greylisted"]
        );
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::RcptTo))
        );
        session.validated(Verdict::Continue).unwrap();
        assert_eq!(
            take_lines(&mut session),
            ["250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        );
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::Data))
        );
        let (validation, _) = session.validation();
        assert_eq!(validation.rcpts, ["c@x.test"]);
        assert_eq!(
            validation.check,
            Check::Data {
                body: b"hello\r\n",
                streamed: false
            }
        );
        session.validated(Verdict::Continue).unwrap();
        match session.next_event() {
            Some(Event::Message(envelope)) => assert_eq!(envelope.rcpts, ["c@x.test"]),
            other => panic!("expected the message, got {other:?}"),
        }
        session.spooled(queued("Q1"));
        assert_eq!(
            take_lines(&mut session),
            ["250 2.0.0 Ok: queued as Q1", "221 2.0.0 Bye"]
        );
        assert!(session.is_closed());
    }

    #[test]
    fn a_message_refused_at_end_of_data_is_not_handed_over() {
        let policy = ScriptedPolicy {
            data: Some(Rejection::new(550, "5.7.1", "looks like spam")),
            ..Default::default()
        };
        let mut session = open_with(ServerLimits::default(), policy);
        send(&mut session, TRANSACTION);
        assert_eq!(
            send(&mut session, b"spam\r\n.\r\nNOOP\r\n"),
            ["550 5.7.1 looks like spam", "250 2.0.0 Ok"]
        );
        assert_eq!(session.next_event(), None);
        assert_eq!(session.messages_received(), 0);
        assert_eq!(codes(&send(&mut session, b"RCPT TO:<b@x.test>\r\n")), [503]);
    }

    /// A policy that keeps notes in the validation context: the EHLO
    /// domain in the connection scope; at MAIL, whether the message scope
    /// was empty, then the reverse path in it.
    struct NotingPolicy;

    impl Policy for NotingPolicy {
        fn validate<'a>(
            &'a self,
            validation: Validation<'a>,
            vctx: &'a mut ValidationContext,
        ) -> Answer<'a> {
            match validation.check {
                Check::Ehlo { domain, .. } => vctx.set(Scope::Connection, "ehlo", domain).unwrap(),
                Check::MailFrom { reverse_path } => {
                    let seen = if vctx.is_empty(Scope::Message) {
                        "empty"
                    } else {
                        "stale"
                    };
                    vctx.set(Scope::Connection, "message_scope_at_mail", seen)
                        .unwrap();
                    vctx.set(Scope::Message, "from", reverse_path).unwrap();
                }
                _ => {}
            }
            Answer::CONTINUE
        }
    }

    #[test]
    fn message_scope_ends_with_its_transaction_and_the_connection_scope_stays() {
        let mut session = open_with(ServerLimits::default(), NotingPolicy);
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        assert_eq!(session.vctx().get(Scope::Message, "from"), Some("a@c.test"));
        send(&mut session, b"RSET\r\n");
        assert_eq!(session.vctx().get(Scope::Message, "from"), None);
        assert_eq!(
            session.vctx().get(Scope::Connection, "ehlo"),
            Some("c.test")
        );
        send(
            &mut session,
            b"MAIL FROM:<b@c.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nhi\r\n.\r\n",
        );
        message(&mut session);
        // Still readable while the message is spooled ...
        assert_eq!(session.vctx().get(Scope::Message, "from"), Some("b@c.test"));
        session.spooled(queued("Q"));
        // ... and gone when the next transaction starts.
        send(&mut session, b"MAIL FROM:<c@c.test>\r\n");
        let vctx = session.vctx();
        assert_eq!(
            vctx.get(Scope::Connection, "message_scope_at_mail"),
            Some("empty")
        );
        assert_eq!(vctx.get(Scope::Message, "from"), Some("c@c.test"));
        // A new greeting ends the transaction and its scope too.
        send(&mut session, b"EHLO d.test\r\n");
        assert!(session.vctx().is_empty(Scope::Message));
        assert_eq!(
            session.vctx().get(Scope::Connection, "ehlo"),
            Some("d.test")
        );
    }

    /// A policy that answers RCPT with the reply the local part names.
    struct OddReplies;

    impl Policy for OddReplies {
        fn validate<'a>(
            &'a self,
            validation: Validation<'a>,
            _vctx: &'a mut ValidationContext,
        ) -> Answer<'a> {
            let Check::RcptTo { forward_path } = validation.check else {
                return Answer::CONTINUE;
            };
            let local = forward_path.split('@').next().unwrap_or("");
            let verdict = match local {
                "success" => Verdict::Reject(Rejection::new(250, "2.0.0", "fine")),
                "class" => Verdict::Reject(Rejection::new(550, "4.7.1", "mismatch")),
                "short" => Verdict::Reject(Rejection::new(550, "5.7", "short")),
                "bye" => Verdict::Disconnect(Rejection::new(550, "5.7.1", "go away")),
                "later" => {
                    // A verdict that takes a turn of the executor.
                    return Answer::later(async {
                        futures_lite::future::yield_now().await;
                        Verdict::Reject(Rejection::new(450, "4.7.1", "try again\u{e9}"))
                    });
                }
                _ => Verdict::Continue,
            };
            Answer::Now(verdict)
        }
    }

    #[test]
    fn a_bad_reply_from_a_policy_gets_451_4_3_0_and_an_error_never_a_panic() {
        let mut session = open_with(ServerLimits::default(), OddReplies);
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        let lines = send(
            &mut session,
            b"RCPT TO:<success@x.test>\r\nRCPT TO:<class@x.test>\r\nRCPT TO:<short@x.test>\r\n\
              RCPT TO:<later@x.test>\r\nRCPT TO:<fine@x.test>\r\n",
        );
        let failed = "451 4.3.0 Error: internal policy error, try again later";
        assert_eq!(
            lines,
            [
                failed,
                failed,
                failed,
                "450 4.7.1 <later@x.test>: try again?",
                "250 2.1.5 Ok"
            ]
        );
        let errors: Vec<String> = session.reply_errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3);
        assert!(errors[0].contains("250 is not a 4xx or 5xx"), "{errors:?}");
        assert!(
            errors[1].contains("`4.7.1` is of another class"),
            "{errors:?}"
        );
        assert!(errors[2].contains("`5.7` is not"), "{errors:?}");
        // The session is usable still; a disconnect refuses and closes.
        assert_eq!(
            send(&mut session, b"RCPT TO:<bye@x.test>\r\nNOOP\r\n"),
            ["550 5.7.1 <bye@x.test>: go away"]
        );
        assert!(session.is_closed());

        // At connect, a bad reply closes with 421 4.3.0.
        let policy = ScriptedPolicy {
            connect: Some(Rejection::new(200, "2.0.0", "hi")),
            ..Default::default()
        };
        let mut session = Driven::new(params(ServerLimits::default()), policy);
        session.start();
        assert_eq!(
            take_lines(&mut session),
            ["421 4.3.0 mx.test Error: internal policy error, try again later"]
        );
        assert!(session.is_closed());
        assert_eq!(
            session.reply_errors,
            [ReplyError::CodeNotFailure { code: 200 }]
        );
    }

    #[test]
    fn no_verdict_or_a_shutdown_while_the_policy_decides_is_answered_at_once() {
        let mut session = ServerSession::new(params(ServerLimits::default()));
        session.start();
        session.next_event();
        session.validated(Verdict::Continue).unwrap();
        session.input(b"HELO c.test\r\n");
        session.next_event();
        session.validated(Verdict::Continue).unwrap();
        take_lines(&mut session);
        // The policy gave no verdict in time: 451, and no transaction.
        session.input(b"MAIL FROM:<a@c.test> SIZE=10\r\nRCPT TO:<b@x.test>\r\n");
        assert_eq!(
            session.next_event(),
            Some(Event::Validate(PolicyPhase::MailFrom))
        );
        session.validation_failed();
        assert_eq!(
            take_lines(&mut session),
            [
                "451 4.3.0 Error: internal policy error, try again later",
                "503 5.5.1 Error: need MAIL command"
            ]
        );
        // The shard stops while the policy decides: 421 at once, and the
        // verdict that comes after changes nothing.
        session.input(b"MAIL FROM:<a@c.test>\r\n");
        session.shutdown();
        assert_eq!(
            take_lines(&mut session),
            ["421 4.3.2 mx.test Service shutting down"]
        );
        assert_eq!(
            session.next_event(),
            Some(Event::Close),
            "the moot Validate is gone"
        );
        assert_eq!(session.validated(Verdict::Continue), Ok(()));
        assert_eq!(take_lines(&mut session), Vec::<String>::new());
    }

    #[test]
    fn extensions_not_offered_are_neither_advertised_nor_accepted() {
        let mut params = params(ServerLimits::default());
        params.capabilities = Capabilities {
            size: false,
            eight_bit_mime: false,
            enhanced_status_codes: false,
            ..Capabilities::default()
        };
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        assert_eq!(
            send(&mut session, b"EHLO c.test\r\n"),
            ["250-mx.test says EHLO to 192.0.2.1", "250 PIPELINING"]
        );
        assert_eq!(
            send(
                &mut session,
                b"MAIL FROM:<a@c.test> SIZE=10\r\nMAIL FROM:<a@c.test> BODY=8BITMIME\r\n\
                  MAIL FROM:<a@c.test>\r\n"
            ),
            [
                "555 Error: unsupported parameter",
                "555 Error: unsupported parameter",
                "250 Ok"
            ]
        );
    }

    fn tls_session(required: bool) -> Driven {
        let mut params = params(ServerLimits::default());
        params.capabilities.starttls = true;
        params.tls_required = required;
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        session
    }

    fn tls13() -> TlsInfo {
        TlsInfo {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        }
    }

    #[test]
    fn starttls_is_offered_answered_and_starts_the_session_over() {
        let mut session = tls_session(false);
        let ehlo = send(&mut session, b"EHLO c.test\r\n");
        assert!(ehlo.contains(&"250 STARTTLS".to_string()), "{ehlo:?}");
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@c.test>\r\n"),
            ["250 2.1.0 Ok"]
        );
        assert_eq!(
            send(&mut session, b"STARTTLS\r\n"),
            ["220 2.0.0 Ready to start TLS"]
        );
        assert_eq!(session.next_event(), Some(Event::StartTls));
        assert_eq!(session.phase_name(), "starttls");
        assert!(!session.tls_active());
        session.tls_started(tls13());
        assert!(session.tls_active());
        // RFC 3207 4.2: greeting and transaction are forgotten.
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@c.test>\r\n"),
            ["503 5.5.1 Error: send HELO/EHLO first"]
        );
        let ehlo = send(&mut session, b"EHLO c.test\r\n");
        assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
        assert_eq!(
            send(&mut session, b"STARTTLS\r\n"),
            ["554 5.5.1 Error: TLS already active"]
        );
        let (_, header) = {
            let envelope = Envelope {
                helo: "c.test".into(),
                esmtp: true,
                mail_from: String::new(),
                rcpts: vec!["b@x.test".into()],
                body_8bitmime: false,
                params: MessageParams::default(),
                body: Vec::new(),
            };
            ((), session.received_header(&envelope, "0A1B", 0))
        };
        assert!(
            header.contains("with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)"),
            "{header}"
        );
    }

    #[test]
    fn tls_required_refuses_mail_rcpt_and_data_until_starttls() {
        let mut session = tls_session(true);
        send(&mut session, b"EHLO c.test\r\n");
        let refused = "530 5.7.0 Must issue a STARTTLS command first";
        assert_eq!(
            send(
                &mut session,
                b"MAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
            ),
            [refused, refused, refused]
        );
        assert_eq!(send(&mut session, b"NOOP\r\n"), ["250 2.0.0 Ok"]);
        send(&mut session, b"STARTTLS\r\n");
        assert_eq!(session.next_event(), Some(Event::StartTls));
        session.tls_started(tls13());
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@c.test>\r\n"),
            ["250 2.1.0 Ok"]
        );
    }

    #[test]
    fn plaintext_pipelined_behind_starttls_is_refused_and_read_as_clear_text() {
        // CVE-2011-0411: what follows STARTTLS in the same read must not
        // run inside the TLS session; TLS does not start at all.
        let mut session = tls_session(false);
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"STARTTLS\r\nMAIL FROM:<a@c.test>\r\n"),
            [
                "554 5.5.1 Error: command pipelined after STARTTLS",
                "250 2.1.0 Ok"
            ]
        );
        assert_eq!(session.next_event(), None);
        assert!(!session.tls_active());
    }

    #[test]
    fn starttls_without_a_certificate_is_not_implemented() {
        let mut session = open();
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"STARTTLS\r\n"),
            ["502 5.5.1 Error: command not implemented"]
        );
    }

    #[test]
    fn bare_postmaster_is_accepted_even_where_relay_is_denied() {
        let mut session = open_with(ServerLimits::default(), RelayControl::default());
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            send(&mut session, b"RCPT TO:<Postmaster>\r\n"),
            ["250 2.1.5 Ok"]
        );
        send(&mut session, b"DATA\r\nHi\r\n.\r\n");
        assert_eq!(message(&mut session).rcpts, ["postmaster"]);
    }

    #[test]
    fn too_many_recipients_get_452_and_the_accepted_ones_stand() {
        let limits = ServerLimits {
            recipients_max: 2,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n");
        let lines = send(
            &mut session,
            b"RCPT TO:<1@x.test>\r\nRCPT TO:<2@x.test>\r\nRCPT TO:<3@x.test>\r\n",
        );
        assert_eq!(lines[2], "452 4.5.3 Error: too many recipients");
        send(&mut session, b"DATA\r\n.\r\n");
        assert_eq!(message(&mut session).rcpts, ["1@x.test", "2@x.test"]);
    }

    #[test]
    fn a_body_pipelined_after_a_refused_data_closes_instead_of_running_as_commands() {
        let policy = ScriptedPolicy {
            rcpt_refused: Some("bad"),
            ..Default::default()
        };
        let mut session = open_with(ServerLimits::default(), policy);
        send(&mut session, b"EHLO c.test\r\n");
        let lines = send(
            &mut session,
            b"MAIL FROM:<a@c.test>\r\nRCPT TO:<bad@x.test>\r\nDATA\r\n\
              MAIL FROM:<evil@c.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\n\
              smuggled\r\n.\r\n",
        );
        assert_eq!(codes(&lines), [250, 550, 554, 554], "{lines:?}");
        assert!(lines[3].contains("synchronization"), "{lines:?}");
        assert!(session.is_closed());
        assert!(
            !std::iter::from_fn(|| session.next_event()).any(|e| matches!(e, Event::Message(_))),
            "no message may come out of the body"
        );
    }

    #[test]
    fn data_needs_mail_and_a_valid_recipient() {
        let policy = ScriptedPolicy {
            rcpt_refused: Some("bad"),
            ..Default::default()
        };
        let mut session = open_with(ServerLimits::default(), policy);
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"DATA\r\n"),
            ["503 5.5.1 Error: need MAIL command"]
        );
        send(&mut session, b"MAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            send(&mut session, b"DATA\r\n"),
            ["503 5.5.1 Error: need RCPT command"]
        );
        assert_eq!(
            send(&mut session, b"RCPT TO:<bad@x.test>\r\n"),
            ["550 5.1.1 <bad@x.test>: no such user"]
        );
        assert_eq!(
            send(&mut session, b"DATA\r\n"),
            ["554 5.5.1 Error: no valid recipients"]
        );
        assert!(!session.is_closed());
    }

    #[test]
    fn mail_refused_by_policy_opens_no_transaction() {
        let policy = ScriptedPolicy {
            mailfrom: Some(Rejection::new(451, "4.7.1", "try later")),
            ..Default::default()
        };
        let mut session = open_with(ServerLimits::default(), policy);
        send(&mut session, b"EHLO c.test\r\n");
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@c.test>\r\n"),
            ["451 4.7.1 <a@c.test>: try later"]
        );
        assert_eq!(codes(&send(&mut session, b"RCPT TO:<b@x.test>\r\n")), [503]);
    }

    #[test]
    fn a_transaction_yields_the_envelope_and_the_queue_id() {
        let mut session = open();
        let lines = send(&mut session, b"EHLO c.test\r\nMAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n");
        assert_eq!(lines.last().unwrap(), "354 End data with <CR><LF>.<CR><LF>");
        assert_eq!(
            send(&mut session, b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
            Vec::<String>::new()
        );
        assert!(session.awaiting_spool());
        let envelope = message(&mut session);
        assert_eq!(
            envelope,
            Envelope {
                helo: "c.test".into(),
                esmtp: true,
                mail_from: String::new(),
                rcpts: vec!["b@x.test".into(), "c@x.test".into()],
                body_8bitmime: true,
                params: MessageParams::default(),
                body: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
            }
        );
        assert_eq!(session.messages_received(), 1);
        session.spooled(queued("0A1B"));
        assert_eq!(take_lines(&mut session), ["250 2.0.0 Ok: queued as 0A1B"]);
        // The transaction is over: a new one starts with MAIL.
        assert_eq!(
            codes(&send(
                &mut session,
                b"RCPT TO:<b@x.test>\r\nMAIL FROM:<a@c.test>\r\n"
            )),
            [503, 250]
        );
    }

    #[test]
    fn spool_failures_get_451_and_452() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\n");
        message(&mut session);
        session.spooled(SpoolOutcome::TemporaryFailure);
        assert_eq!(
            take_lines(&mut session),
            ["451 4.3.0 Error: queue file write error"]
        );
        send(&mut session, &TRANSACTION[18..]);
        send(&mut session, b".\r\n");
        message(&mut session);
        session.spooled(SpoolOutcome::StorageFull);
        assert_eq!(
            take_lines(&mut session),
            ["452 4.3.1 Insufficient system storage"]
        );
    }

    #[test]
    fn pipelined_transaction_in_one_packet_replies_in_order() {
        let mut session = open();
        let mut packet = TRANSACTION.to_vec();
        packet.extend_from_slice(b"Hello\r\n.\r\nQUIT\r\n");
        assert_eq!(
            codes(&send(&mut session, &packet)),
            [250, 250, 250, 250, 250, 250, 250, 354]
        );
        assert!(session.awaiting_spool());
        assert!(session.buffered_bytes() > 0, "QUIT is held");
        assert_eq!(message(&mut session).body, b"Hello\r\n");
        assert_eq!(session.next_event(), None);
        session.spooled(queued("Q1"));
        assert_eq!(
            take_lines(&mut session),
            ["250 2.0.0 Ok: queued as Q1", "221 2.0.0 Bye"]
        );
        assert_eq!(session.next_event(), Some(Event::Close));
        assert!(session.is_closed());
    }

    #[test]
    fn byte_at_a_time_input_gives_the_same_replies_as_one_packet() {
        let mut packet = TRANSACTION.to_vec();
        packet.extend_from_slice(b"a\r\n..b\r\n.\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nc\r\n.\r\nQUIT\r\n");
        let run = |chunk: usize| {
            let mut session = open();
            let mut out = Vec::new();
            let mut bodies = Vec::new();
            for piece in packet.chunks(chunk) {
                session.input(piece);
                while let Some(event) = session.next_event() {
                    if let Event::Message(envelope) = event {
                        bodies.push(envelope.body);
                        session.spooled(queued("Q"));
                    }
                }
            }
            session.take_output(&mut out);
            (out, bodies, session.is_closed())
        };
        let whole = run(packet.len());
        assert_eq!(whole.1, [b"a\r\n.b\r\n".to_vec(), b"c\r\n".to_vec()]);
        assert!(whole.2);
        for chunk in [1, 2, 3, 7] {
            assert_eq!(run(chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn dot_stuffed_lines_are_unstuffed() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        send(&mut session, b"..\r\n...x\r\n.y\r\n a.\r\n\r\n.\r\n");
        assert_eq!(message(&mut session).body, b".\r\n..x\r\ny\r\n a.\r\n\r\n");
    }

    #[test]
    fn empty_message_has_an_empty_body() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\n");
        assert_eq!(message(&mut session).body, b"");
    }

    #[test]
    fn bare_lf_in_data_is_refused_and_closes() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        let lines = send(&mut session, b"line\nMAIL FROM:<x@y.test>\r\n");
        assert_eq!(lines, ["521 5.5.2 mx.test Error: bare <LF> received"]);
        assert_eq!(session.next_event(), Some(Event::Close));
        assert!(session.is_closed());
        assert_eq!(send(&mut session, b"QUIT\r\n"), Vec::<String>::new());
    }

    #[test]
    fn bare_cr_in_data_is_refused_and_closes() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        assert_eq!(
            send(&mut session, b"a\rb\r\n.\r\n"),
            ["521 5.5.2 mx.test Error: bare <CR> received"]
        );
        assert_eq!(session.next_event(), Some(Event::Close));
    }

    #[test]
    fn smuggling_terminators_never_end_data_or_yield_a_second_message() {
        for smuggle in [
            &b"\n.\n"[..],
            b"\r.\n",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n.\rX",
        ] {
            let mut session = open();
            send(&mut session, TRANSACTION);
            let mut body = b"first".to_vec();
            body.extend_from_slice(smuggle);
            body.extend_from_slice(
                b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@x.test>\r\nDATA\r\nevil\r\n.\r\n",
            );
            for byte in body.chunks(1) {
                session.input(byte);
            }
            let lines = take_lines(&mut session);
            assert_eq!(codes(&lines), [521], "{smuggle:?}");
            assert_eq!(session.next_event(), Some(Event::Close), "{smuggle:?}");
            assert_eq!(session.next_event(), None);
        }
    }

    #[test]
    fn nul_in_data_refuses_the_message_and_keeps_the_session() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        let lines = send(&mut session, b"a\0b\r\n.\r\nNOOP\r\n");
        assert_eq!(
            lines,
            [
                "554 5.6.0 Error: message contains NUL characters",
                "250 2.0.0 Ok"
            ]
        );
        assert_eq!(session.next_event(), None);
    }

    #[test]
    fn overlong_text_line_refuses_the_message_after_end_of_data() {
        let limits = ServerLimits {
            text_line_bytes_max: 10,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, TRANSACTION);
        // Eight bytes plus CRLF fit; a stuffed line counts its dot.
        send(&mut session, b"12345678\r\n..345678\r\n.\r\n");
        assert_eq!(message(&mut session).body, b"12345678\r\n.345678\r\n");
        session.spooled(queued("Q"));
        take_lines(&mut session);
        send(&mut session, &TRANSACTION[18..]);
        let lines = send(&mut session, b"123456789\r\nok\r\n.\r\n");
        assert_eq!(
            lines,
            ["554 5.6.0 Error: message line longer than 10 bytes"]
        );
        assert_eq!(session.next_event(), None);
        assert!(!session.is_closed());
    }

    /// A policy that keeps the body it is shown at end of data.
    #[derive(Default)]
    struct BodyRecorder {
        seen: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    }

    impl Policy for BodyRecorder {
        fn validate<'a>(
            &'a self,
            validation: Validation<'a>,
            _vctx: &'a mut ValidationContext,
        ) -> Answer<'a> {
            if let Check::Data { body, .. } = validation.check {
                *self.seen.borrow_mut() = body.to_vec();
            }
            Answer::Now(Verdict::Continue)
        }
    }

    /// A DATA text with a header block, dot-stuffed lines and 8-bit bytes,
    /// and the body it stands for.
    fn large_data(rng: &mut Rng, lines: usize) -> (Vec<u8>, Vec<u8>) {
        let head = b"Subject: big\r\nX-Long: 1\r\n\r\n".to_vec();
        let (mut wire, mut body) = (head.clone(), head);
        for n in 0..lines {
            let mut line: Vec<u8> = (0..rng.below(200))
                .map(|_| rng.range(0x20, 0xff) as u8)
                .collect();
            if n % 7 == 0 {
                line.insert(0, b'.');
            }
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(&line);
            wire.extend_from_slice(b"\r\n");
            body.extend_from_slice(&line);
            body.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        (wire, body)
    }

    /// Goal: a body taken from the session while DATA is read (streamed to
    /// the spool) loses no byte and gains none, the size limit counts the
    /// bytes taken, and the end-of-data policy sees the header block, not
    /// the body. Method: the same DATA fed in random splits, the driver's
    /// part played by taking the body whenever more than 4 KiB is
    /// buffered; the parts taken and the envelope's rest must equal the
    /// body an untouched session hands over.
    #[test]
    fn a_body_taken_while_it_arrives_reassembles_exactly_and_the_policy_sees_its_head() {
        let mut rng = Rng::new(0x5eed_0009);
        for _ in 0..20 {
            let (wire, expected) = large_data(&mut rng, 300);
            let policy = BodyRecorder::default();
            let seen = policy.seen.clone();
            let mut session = open_with(ServerLimits::default(), policy);
            send(&mut session, TRANSACTION);
            let mut taken = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let end = (at + 1 + rng.index(9000)).min(wire.len());
                session.input(&wire[at..end]);
                at = end;
                if session.reading_data() && session.body_buffered() > 4096 {
                    assert!(session.receiving_body());
                    taken.extend_from_slice(&session.take_body(8192));
                }
            }
            assert!(taken.len() > expected.len() / 2, "most of it was taken");
            assert_eq!(
                session.body_bytes(),
                0,
                "reset once the message is handed over"
            );
            taken.extend_from_slice(&message(&mut session).body);
            assert_eq!(taken, expected);
            assert_eq!(*seen.borrow(), b"Subject: big\r\nX-Long: 1\r\n\r\n");
            assert!(!session.receiving_body());
        }
    }

    #[test]
    fn bytes_taken_count_against_the_size_limit() {
        let limits = ServerLimits {
            message_bytes_max: 1000,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, TRANSACTION);
        for _ in 0..12 {
            session.input(&[b'x'; 98]);
            session.input(b"\r\n");
            let _ = session.take_body(128);
        }
        assert!(session.body_refused());
        assert!(
            !session.receiving_body(),
            "a refused body is not worth keeping"
        );
        assert!(session.take_body(128).is_empty());
        assert_eq!(
            send(&mut session, b".\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size"]
        );
        assert_eq!(session.next_event(), None);
    }

    #[test]
    fn the_header_block_is_found_or_the_whole_body_taken() {
        assert_eq!(data::header_block_len(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"), 14);
        assert_eq!(data::header_block_len(b"\r\nbody only\r\n"), 2);
        assert_eq!(data::header_block_len(b"A: 1\r\nno end"), 12);
        assert_eq!(data::header_block_len(b""), 0);
    }

    #[test]
    fn body_over_limit_gets_552_and_is_not_buffered() {
        let limits = ServerLimits {
            message_bytes_max: 100,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, TRANSACTION);
        let line = [b'x'; 48];
        for _ in 0..100 {
            session.input(&line);
            session.input(b"\r\n");
            assert!(session.body.len() <= 100);
        }
        assert!(
            session.body.is_empty(),
            "nothing is kept once over the limit"
        );
        assert_eq!(
            send(&mut session, b".\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size"]
        );
        assert_eq!(session.next_event(), None);
        // Exactly at the limit is fine.
        send(&mut session, &TRANSACTION[18..]);
        send(&mut session, &[b'y'; 98]);
        send(&mut session, b"\r\n.\r\n");
        assert_eq!(message(&mut session).body.len(), 100);
    }

    #[test]
    fn too_many_errors_get_421_and_close() {
        let limits = ServerLimits {
            errors_max: 3,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        let lines = send(
            &mut session,
            b"FOO\r\nRCPT TO:<a@b.test>\r\nBAR\r\nNOOP\r\n",
        );
        assert_eq!(
            lines,
            [
                "500 5.5.1 Error: command not recognized",
                "503 5.5.1 Error: need MAIL command",
                "500 5.5.1 Error: command not recognized",
                "421 4.7.0 mx.test Error: too many errors",
            ]
        );
        assert!(session.is_closed());
        assert_eq!(session.next_event(), Some(Event::Close));
    }

    #[test]
    fn overlong_command_line_gets_500_and_the_session_stays_usable() {
        let mut session = open();
        let long = vec![b'A'; COMMAND_LINE_BYTES_DEFAULT * 5];
        for piece in long.chunks(100) {
            session.input(piece);
            assert!(session.buffered_bytes() < COMMAND_LINE_BYTES_DEFAULT);
        }
        assert_eq!(
            send(&mut session, b"\r\nNOOP\r\n"),
            ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]
        );
        // The limit counts CRLF: 998 bytes + CRLF fit, 999 do not.
        let mut fits = b"NOOP ".to_vec();
        fits.resize(COMMAND_LINE_BYTES_DEFAULT - 2, b'x');
        fits.extend_from_slice(b"\r\n");
        assert_eq!(codes(&send(&mut session, &fits)), [250]);
        fits.insert(5, b'x');
        assert_eq!(codes(&send(&mut session, &fits)), [500]);
    }

    #[test]
    fn commands_are_case_insensitive_and_a_bare_lf_ends_a_command_line() {
        let mut session = open();
        let lines = send(
            &mut session,
            b"ehlo c.test\nmail from:<a@c.test>\nrcpt to:<b@x.test>\r\nnoop\n",
        );
        assert_eq!(codes(&lines), [250, 250, 250, 250, 250, 250, 250, 250]);
    }

    #[test]
    fn simple_commands_get_their_replies() {
        let mut session = open();
        let lines = send(
            &mut session,
            b"NOOP\r\nVRFY someone\r\nVRFY\r\nHELP\r\nEXPN list\r\nXYZZY\r\n\r\nRSET x\r\nRSET\r\n",
        );
        assert_eq!(
            lines,
            [
                "250 2.0.0 Ok",
                "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                "501 5.5.4 Syntax: VRFY address",
                "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
                "502 5.5.1 Error: command not implemented",
                "500 5.5.1 Error: command not recognized",
                "500 5.5.1 Error: command not recognized",
                "501 5.5.4 Syntax: RSET",
                "250 2.0.0 Ok",
            ]
        );
    }

    #[test]
    fn rset_and_ehlo_end_the_transaction() {
        let mut session = open();
        send(
            &mut session,
            b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test>\r\n",
        );
        assert_eq!(codes(&send(&mut session, b"RSET\r\nDATA\r\n")), [250, 503]);
        send(&mut session, b"MAIL FROM:<a@c.test>\r\n");
        assert_eq!(
            codes(&send(
                &mut session,
                b"EHLO c.test\r\nRCPT TO:<b@x.test>\r\n"
            ))[5],
            503
        );
    }

    #[test]
    fn quit_gets_221_and_closes() {
        let mut session = open();
        assert_eq!(send(&mut session, b"QUIT\r\nNOOP\r\n"), ["221 2.0.0 Bye"]);
        assert!(session.is_closed());
        assert_eq!(session.next_event(), Some(Event::Close));
        assert_eq!(session.buffered_bytes(), 0);
    }

    #[test]
    fn receptions_per_connection_limit_gets_421_at_mail() {
        let limits = ServerLimits {
            receptions_per_connection_max: 1,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\n");
        message(&mut session);
        session.spooled(queued("Q"));
        take_lines(&mut session);
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@c.test>\r\n"),
            ["421 4.7.0 mx.test Error: too many messages in one session"]
        );
        assert!(session.is_closed());
    }

    #[test]
    fn idle_timeout_gets_421_4_4_2_and_closes() {
        let mut session = open();
        session.idle_timeout();
        assert_eq!(
            take_lines(&mut session),
            ["421 4.4.2 mx.test Error: timeout exceeded"]
        );
        assert_eq!(session.next_event(), Some(Event::Close));
    }

    #[test]
    fn shutdown_while_awaiting_spool_answers_the_message_first() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\nNOOP\r\n");
        message(&mut session);
        session.shutdown();
        assert!(!session.is_closed());
        assert!(!session.wants_input());
        assert_eq!(take_lines(&mut session), Vec::<String>::new());
        session.spooled(queued("Q9"));
        assert_eq!(
            take_lines(&mut session),
            [
                "250 2.0.0 Ok: queued as Q9",
                "421 4.3.2 mx.test Service shutting down"
            ]
        );
        assert!(session.is_closed());
        assert_eq!(session.next_event(), Some(Event::Close));
    }

    #[test]
    fn shutdown_in_command_phase_closes_at_once() {
        let mut session = open();
        session.shutdown();
        assert_eq!(
            take_lines(&mut session),
            ["421 4.3.2 mx.test Service shutting down"]
        );
        assert!(session.is_closed());
    }

    #[test]
    fn input_held_while_awaiting_spool_is_bounded() {
        let limits = ServerLimits {
            input_buffer_bytes_max: 64,
            ..Default::default()
        };
        let mut session = open_with(limits, ScriptedPolicy::default());
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\n");
        message(&mut session);
        assert_eq!(session.input_capacity(), 64);
        session.input(&[b'N'; 60]);
        assert_eq!(session.input_capacity(), 4);
        assert!(session.wants_input());
        session.input(b"\r\n\r\n");
        assert!(!session.wants_input());
        // A caller that ignores input_capacity() gets its message answered,
        // then 421.
        session.input(b"X");
        assert_eq!(session.buffered_bytes(), 64);
        session.spooled(queued("Q"));
        assert_eq!(
            take_lines(&mut session),
            [
                "250 2.0.0 Ok: queued as Q",
                "421 4.7.0 mx.test Error: too much pipelined input"
            ]
        );
        assert!(session.is_closed());
    }

    #[test]
    fn received_header_of_a_single_recipient_message_names_it() {
        let mut session = open();
        send(&mut session, TRANSACTION);
        send(&mut session, b".\r\n");
        let envelope = message(&mut session);
        let header = session.received_header(&envelope, "Q", 0);
        assert!(header.contains("for <b@example.com>;"), "{header}");
    }

    /// Goal: no input, split or call order panics the session, its held
    /// input stays within input_buffer_bytes_max + command_line_bytes_max,
    /// every reply is a well-formed line, and every message body is
    /// CRLF-clean. Method: build transcripts from SMTP fragments, mutate
    /// some bytes, feed them in random splits (respecting
    /// input_capacity()), answer messages at random moments, and now and
    /// then time out or shut down.
    #[test]
    fn fuzzed_transcripts_never_panic_and_stay_within_bounds() {
        const FRAGMENTS: [&[u8]; 24] = [
            b"EHLO c.test\r\n",
            b"HELO c.test\r\n",
            b"MAIL FROM:<a@c.test>\r\n",
            b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
            b"MAIL FROM:<a@c.test> SIZE=999999999\r\n",
            b"RCPT TO:<b@x.test>\r\n",
            b"RCPT TO:<postmaster>\r\n",
            b"RCPT TO:<bad@x.test>\r\n",
            b"DATA\r\n",
            b"line of text\r\n",
            b"..stuffed\r\n",
            b".\r\n",
            b"\r\n.\r\n",
            b"\n.\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"QUIT\r\n",
            b"VRFY x\r\n",
            b"\0",
            b"\r",
            b"\n",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            b"MAIL FROM:<\"q>\"@c.test>\r\n",
            b"RCPT TO:<@r.test:b@x.test> X=Y\r\n",
        ];
        const RUNS: u64 = 3000;
        fn check_event(run: u64, event: Event, messages: &mut u32) {
            if let Event::Message(envelope) = event {
                *messages += 1;
                assert!(envelope.body.len() <= 2000);
                let text = &envelope.body;
                for (i, &b) in text.iter().enumerate() {
                    assert_ne!(b, 0, "run {run}");
                    if b == b'\n' {
                        assert!(i > 0 && text[i - 1] == b'\r', "run {run}");
                    }
                    if b == b'\r' {
                        assert_eq!(text.get(i + 1), Some(&b'\n'), "run {run}");
                    }
                }
            }
        }
        let limits = ServerLimits {
            command_line_bytes_max: 512,
            text_line_bytes_max: 100,
            message_bytes_max: 2000,
            recipients_max: 3,
            errors_max: 40,
            receptions_per_connection_max: 5,
            input_buffer_bytes_max: 256,
        };
        let bound = limits.input_buffer_bytes_max + limits.command_line_bytes_max;
        // Coverage: the runs must reach the interesting states.
        let (mut messages, mut bare_closes, mut held_max) = (0u32, 0u32, 0usize);
        for run in 0..RUNS {
            let mut rng =
                Rng::new(0x9e37_79b9_7f4a_7c15 ^ (run + 1).wrapping_mul(0x1234_5678_9abc_def1));
            let policy = ScriptedPolicy {
                rcpt_refused: Some("bad"),
                ..Default::default()
            };
            let mut session = ServerSession::new(params(limits.clone()));
            session.start();
            let mut transcript = Vec::new();
            if rng.index(8) != 0 {
                transcript.extend_from_slice(b"EHLO c.test\r\n");
            }
            for _ in 0..rng.index(60) {
                if rng.index(3) == 0 {
                    // A whole transaction, so runs reach end of data.
                    transcript.extend_from_slice(&TRANSACTION[18..]);
                    for _ in 0..rng.index(5) {
                        transcript.extend_from_slice(FRAGMENTS[9 + rng.index(2)]);
                    }
                    transcript.extend_from_slice(b".\r\n");
                    continue;
                }
                let fragment = FRAGMENTS[rng.index(FRAGMENTS.len())];
                let repeat = if rng.index(20) == 0 {
                    1 + rng.index(40)
                } else {
                    1
                };
                for _ in 0..repeat {
                    transcript.extend_from_slice(fragment);
                }
            }
            for _ in 0..rng.index(4) {
                if !transcript.is_empty() {
                    let at = rng.index(transcript.len());
                    transcript[at] = [b'\r', b'\n', b'.', 0, b' ', 0xff][rng.index(6)];
                }
            }
            // One run in ten has a policy that misbehaves now and then.
            let unruly = rng.index(10) == 0;
            let mut out = Vec::new();
            let mut at = 0;
            let mut steps = 0;
            while !session.is_closed() && steps < 10_000 {
                steps += 1;
                match rng.index(50) {
                    0 => session.idle_timeout(),
                    1 => session.shutdown(),
                    _ => {}
                }
                while let Some(event) = session.next_event() {
                    check_event(run, event, &mut messages);
                }
                // Verdicts mostly come at once, sometimes after more
                // input arrived (held).
                while session.awaiting_policy().is_some()
                    && (at >= transcript.len() || rng.index(4) != 0)
                {
                    // Mostly the scripted verdict; now and then a refusal,
                    // a malformed reply or no verdict at all.
                    let (validation, _vctx) = session.validation();
                    let verdict = match rng.index(if unruly { 20 } else { 1000 }) {
                        0 => Verdict::Reject(Rejection::new(450, "4.7.1", "later\r\n")),
                        1 => Verdict::Reject(Rejection::new(250, "2.0.0", "bad")),
                        2 => Verdict::Disconnect(Rejection::new(550, "5.7.1", "go")),
                        3 => Verdict::Reject(Rejection::new(550, "5.7.1", "caf\u{e9}")),
                        _ => policy.verdict(validation.check),
                    };
                    if unruly && rng.index(20) == 0 {
                        session.validation_failed();
                    } else {
                        let bad = matches!(&verdict, Verdict::Reject(r) if r.code == 250);
                        assert_eq!(session.validated(verdict).is_err(), bad, "run {run}");
                    }
                    while let Some(event) = session.next_event() {
                        check_event(run, event, &mut messages);
                    }
                }
                if session.awaiting_spool() && (at >= transcript.len() || rng.index(3) == 0) {
                    let outcome = match rng.index(3) {
                        0 => SpoolOutcome::TemporaryFailure,
                        1 => SpoolOutcome::StorageFull,
                        _ => queued("Q"),
                    };
                    session.spooled(outcome);
                } else if at < transcript.len() && session.wants_input() {
                    let most = session.input_capacity().min(transcript.len() - at);
                    let take = 1 + rng.index(most.min(300));
                    session.input(&transcript[at..at + take]);
                    at += take;
                } else if !session.awaiting_spool() && session.awaiting_policy().is_none() {
                    break;
                }
                assert!(session.buffered_bytes() <= bound, "run {run}");
                held_max = held_max.max(session.buffered_bytes());
                session.take_output(&mut out);
            }
            session.take_output(&mut out);
            let text = String::from_utf8(out).expect("replies are ASCII");
            bare_closes += u32::from(text.contains(" Error: bare <"));
            assert!(text.is_empty() || text.ends_with("\r\n"), "run {run}");
            for line in text.split_terminator("\r\n") {
                let bytes = line.as_bytes();
                assert!(bytes.len() >= 4, "run {run}: {line:?}");
                assert!(
                    bytes[..3].iter().all(u8::is_ascii_digit),
                    "run {run}: {line:?}"
                );
                assert!(bytes[3] == b' ' || bytes[3] == b'-', "run {run}: {line:?}");
                assert!(
                    bytes.iter().all(|b| !b.is_ascii_control()),
                    "run {run}: {line:?}"
                );
            }
        }
        eprintln!("fuzz: {messages} messages, {bare_closes} bare closes, held up to {held_max}");
        assert!(messages > 1000 && bare_closes > 50 && held_max > 256);
    }

    /// A session on a listener with AUTH PLAIN and LOGIN, in clear text
    /// when `plaintext`, greeted with EHLO (its reply returned).
    fn open_auth(plaintext: bool) -> (Driven, Vec<String>) {
        let mut params = params(ServerLimits::default());
        params.capabilities.auth = crate::smtp::capabilities::AuthMechanisms {
            plain: true,
            login: true,
        };
        params.auth_plaintext = plaintext;
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        let ehlo = send(&mut session, b"EHLO client.test\r\n");
        (session, ehlo)
    }

    fn credentials(session: &mut Driven) -> Credentials {
        match session.next_event() {
            Some(Event::Authenticate(credentials)) => credentials,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn auth_is_neither_offered_nor_accepted_in_clear_text_by_default() {
        let (mut session, ehlo) = open_auth(false);
        assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
        assert_eq!(
            send(&mut session, b"AUTH PLAIN AGFsaWNlAHB3\r\n"),
            ["503 5.5.1 Error: authentication not enabled"]
        );
        assert_eq!(session.next_event(), None);
        assert!(!session.tls_active());
    }

    #[test]
    fn auth_plain_with_an_initial_response_authenticates_the_session() {
        let (mut session, ehlo) = open_auth(true);
        assert!(
            ehlo.contains(&"250 AUTH PLAIN LOGIN".to_string()),
            "{ehlo:?}"
        );
        // Pipelined MAIL waits for the answer.
        assert_eq!(
            send(
                &mut session,
                b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<a@client.test>\r\n"
            ),
            Vec::<String>::new()
        );
        let given = credentials(&mut session);
        assert_eq!(
            (given.user.as_str(), given.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(session.phase_name(), "auth");
        assert_eq!(session.auth_pending_user(), "alice");
        session.authenticated(AuthOutcome::Accepted);
        // The held MAIL now goes to the policy, as the driver would see.
        session.settle();
        assert_eq!(
            take_lines(&mut session),
            ["235 2.7.0 Authentication successful", "250 2.1.0 Ok"]
        );
        assert_eq!(session.auth_user(), Some("alice"));
        assert_eq!(
            send(&mut session, b"RSET\r\nAUTH LOGIN\r\n"),
            ["250 2.0.0 Ok", "503 5.5.1 Error: already authenticated"]
        );
    }

    #[test]
    fn auth_login_asks_user_then_password_and_a_refusal_is_535() {
        let (mut session, _) = open_auth(true);
        assert_eq!(send(&mut session, b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"]);
        assert_eq!(send(&mut session, b"Ym9i\r\n"), ["334 UGFzc3dvcmQ6"]);
        assert_eq!(send(&mut session, b"d3Jvbmc=\r\n"), Vec::<String>::new());
        let given = credentials(&mut session);
        assert_eq!(
            (given.user.as_str(), given.password.as_str()),
            ("bob", "wrong")
        );
        session.authenticated(AuthOutcome::Refused);
        assert_eq!(
            take_lines(&mut session),
            ["535 5.7.8 Error: authentication failed"]
        );
        assert_eq!(session.auth_user(), None);
        // LOGIN with the user name as initial response, then PLAIN after a 334.
        assert_eq!(
            send(&mut session, b"AUTH LOGIN Ym9i\r\n"),
            ["334 UGFzc3dvcmQ6"]
        );
        assert_eq!(
            send(&mut session, b"*\r\n"),
            ["501 5.7.0 Authentication aborted"]
        );
        assert_eq!(send(&mut session, b"AUTH PLAIN\r\n"), ["334 "]);
        assert_eq!(
            send(&mut session, b"AGJvYgBwdw==\r\n"),
            Vec::<String>::new()
        );
        assert_eq!(credentials(&mut session).user, "bob");
        session.authenticated(AuthOutcome::Unavailable);
        assert_eq!(
            take_lines(&mut session),
            ["454 4.7.0 Temporary authentication failure"]
        );
    }

    #[test]
    fn malformed_auth_gets_its_reply_and_too_many_failures_close() {
        let (mut session, _) = open_auth(true);
        assert_eq!(
            send(&mut session, b"AUTH PLAIN !!notbase64\r\n"),
            ["501 5.5.2 Error: malformed authentication response"]
        );
        assert_eq!(
            send(&mut session, b"AUTH PLAIN YWxpY2U=\r\n"),
            ["501 5.5.2 Error: malformed authentication response"],
            "no NUL separators"
        );
        assert_eq!(
            send(&mut session, b"AUTH CRAM-MD5\r\n"),
            ["504 5.5.4 Unsupported authentication mechanism"]
        );
        assert_eq!(
            send(&mut session, b"AUTH\r\n"),
            ["501 5.5.4 Syntax: AUTH mechanism [initial-response]"]
        );
        assert_eq!(
            send(
                &mut session,
                b"MAIL FROM:<a@client.test>\r\nAUTH PLAIN AGEAYg==\r\n"
            ),
            [
                "250 2.1.0 Ok",
                "503 5.5.1 Error: MAIL transaction in progress"
            ]
        );
        assert_eq!(
            send(&mut session, b"RSET\r\nAUTH PLAIN AGEAYg==\r\n"),
            ["250 2.0.0 Ok"]
        );
        credentials(&mut session);
        session.authenticated(AuthOutcome::TooManyFailures);
        let lines = take_lines(&mut session);
        assert_eq!(
            lines,
            ["421 4.7.0 mx.test Error: too many failed authentications, try again later"]
        );
        assert!(session.is_closed());
    }

    #[test]
    fn auth_needs_ehlo_and_mail_auth_parameter_needs_auth_offered() {
        let mut params = params(ServerLimits::default());
        params.capabilities.auth.plain = true;
        params.auth_plaintext = true;
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        assert_eq!(send(&mut session, b"HELO client.test\r\n"), ["250 mx.test"]);
        assert_eq!(
            send(&mut session, b"AUTH PLAIN AGEAYg==\r\n"),
            ["503 5.5.1 Error: send EHLO first"]
        );
        assert_eq!(
            send(&mut session, b"MAIL FROM:<a@client.test> AUTH=<>\r\n"),
            ["250 2.1.0 Ok"]
        );
        let mut plain = open();
        send(&mut plain, b"EHLO client.test\r\n");
        assert_eq!(
            send(&mut plain, b"MAIL FROM:<a@client.test> AUTH=<>\r\n"),
            ["555 5.5.4 Error: unsupported parameter"]
        );
    }

    /// A session offering CHUNKING, greeted and with MAIL and one RCPT
    /// accepted.
    fn open_bdat(limits: ServerLimits) -> Driven {
        let mut params = params(limits);
        params.capabilities.chunking = true;
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        let ehlo = send(&mut session, b"EHLO client.test\r\n");
        assert!(ehlo.contains(&"250 CHUNKING".to_string()), "{ehlo:?}");
        assert_eq!(
            send(
                &mut session,
                b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n"
            ),
            ["250 2.1.0 Ok", "250 2.1.5 Ok"]
        );
        session
    }

    #[test]
    fn bdat_chunks_make_one_message_byte_for_byte() {
        let mut session = open_bdat(ServerLimits::default());
        // Bare CR, bare LF, a dot line, NUL and 8-bit bytes stay as sent.
        let first: &[u8] = b"Subject: x\r\n\r\n.\r\nbare\nCR\rend";
        let second: &[u8] = b"\xff\x00\xe9\r\n.\r\n";
        let mut transcript = format!("BDAT {}\r\n", first.len()).into_bytes();
        transcript.extend_from_slice(first);
        transcript.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
        transcript.extend_from_slice(second);
        transcript.extend_from_slice(b"NOOP\r\n");
        assert_eq!(
            send(&mut session, &transcript),
            [format!("250 2.0.0 Ok: {} octets received", first.len())]
        );
        let envelope = message(&mut session);
        assert_eq!(envelope.body, [first, second].concat());
        assert_eq!(envelope.rcpts, ["b@example.com"]);
        session.spooled(queued("Q1"));
        assert_eq!(
            take_lines(&mut session),
            ["250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"]
        );
    }

    #[test]
    fn bdat_reads_its_chunk_in_any_split() {
        let body = b"From: a\r\n\r\nBDAT 5\r\nQUIT\r\n";
        let mut transcript = format!("BDAT {} LAST\r\n", body.len()).into_bytes();
        transcript.extend_from_slice(body);
        for split in 1..transcript.len() {
            let mut session = open_bdat(ServerLimits::default());
            session.input(&transcript[..split]);
            session.input(&transcript[split..]);
            assert_eq!(take_lines(&mut session), Vec::<String>::new());
            assert_eq!(message(&mut session).body, body);
            assert!(!session.is_closed(), "QUIT inside a chunk is data");
        }
    }

    #[test]
    fn bdat_zero_last_ends_the_message_and_an_empty_message_is_fine() {
        let mut session = open_bdat(ServerLimits::default());
        assert_eq!(
            send(&mut session, b"BDAT 3\r\nabcBDAT 0 LAST\r\n"),
            ["250 2.0.0 Ok: 3 octets received"]
        );
        assert_eq!(message(&mut session).body, b"abc");
        session.spooled(queued("Q1"));
        take_lines(&mut session);
        send(
            &mut session,
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n",
        );
        assert_eq!(send(&mut session, b"BDAT 0 LAST\r\n"), Vec::<String>::new());
        assert!(message(&mut session).body.is_empty());
    }

    #[test]
    fn bdat_without_mail_or_rcpt_is_read_then_refused() {
        let mut params = params(ServerLimits::default());
        params.capabilities.chunking = true;
        let mut session = Driven::new(params, ScriptedPolicy::default());
        session.start();
        take_lines(&mut session);
        send(&mut session, b"EHLO client.test\r\n");
        // The chunk holds what looks like commands: it is data all the same.
        assert_eq!(
            send(&mut session, b"BDAT 6\r\nQUIT\r\nNOOP\r\n"),
            ["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
        );
        assert_eq!(
            send(
                &mut session,
                b"MAIL FROM:<a@client.test>\r\nBDAT 2 LAST\r\nxy"
            ),
            ["250 2.1.0 Ok", "503 5.5.1 Error: need RCPT command"]
        );
        // The failed chunk ended the transaction.
        assert_eq!(
            send(&mut session, b"RCPT TO:<b@example.com>\r\n"),
            ["503 5.5.1 Error: need MAIL command"]
        );
        assert_eq!(session.next_event(), None);
        assert!(!session.is_closed());
    }

    #[test]
    fn bdat_over_the_size_limit_across_chunks_gets_552_after_its_bytes() {
        let limits = ServerLimits {
            message_bytes_max: 10,
            ..ServerLimits::default()
        };
        let mut session = open_bdat(limits);
        assert_eq!(
            send(
                &mut session,
                b"BDAT 6\r\n123456BDAT 6\r\n789012BDAT 1 LAST\r\nzNOOP\r\n"
            ),
            [
                "250 2.0.0 Ok: 6 octets received",
                "552 5.3.4 Message size exceeds fixed maximum message size",
                "503 5.5.1 Error: need MAIL command",
                "250 2.0.0 Ok"
            ]
        );
        assert_eq!(session.next_event(), None);
        assert!(!session.receiving_body());
        // Exactly at the limit is fine.
        send(
            &mut session,
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n",
        );
        send(&mut session, b"BDAT 10 LAST\r\n0123456789");
        assert_eq!(message(&mut session).body, b"0123456789");
    }

    #[test]
    fn data_and_rcpt_after_bdat_get_503_and_rset_drops_the_chunks() {
        let mut session = open_bdat(ServerLimits::default());
        assert_eq!(
            send(&mut session, b"BDAT 2\r\nab"),
            ["250 2.0.0 Ok: 2 octets received"]
        );
        assert!(session.receiving_body() && session.reading_data());
        assert_eq!(
            send(&mut session, b"RCPT TO:<c@example.com>\r\n"),
            ["503 5.5.1 Error: RCPT after BDAT"]
        );
        assert_eq!(
            send(&mut session, b"DATA\r\n"),
            ["503 5.5.1 Error: DATA after BDAT"]
        );
        assert_eq!(send(&mut session, b"RSET\r\n"), ["250 2.0.0 Ok"]);
        assert!(!session.receiving_body());
        send(
            &mut session,
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\n",
        );
        assert_eq!(
            send(&mut session, b"BDAT 2 LAST\r\ncd"),
            Vec::<String>::new()
        );
        assert_eq!(message(&mut session).body, b"cd", "the RSET dropped ab");
    }

    #[test]
    fn bdat_is_not_implemented_unless_offered_and_its_bytes_are_skipped() {
        let mut session = open();
        send(&mut session, b"EHLO client.test\r\n");
        assert_eq!(
            send(&mut session, b"BDAT 6\r\nQUIT\r\nBDAT x\r\n"),
            [
                "502 5.5.1 Error: command not implemented",
                "501 5.5.4 Syntax: BDAT count [LAST]"
            ]
        );
        assert!(!session.is_closed());
    }

    #[test]
    fn a_large_bdat_body_can_be_taken_in_parts_and_the_policy_sees_its_head() {
        let mut session = open_bdat(ServerLimits::default());
        let head = b"Subject: big\r\n\r\n";
        let mut body = head.to_vec();
        body.resize(100_000, b'x');
        let mut taken = Vec::new();
        session.input(format!("BDAT {}\r\n", body.len()).as_bytes());
        for part in body.chunks(30_000) {
            assert!(session.reading_data());
            session.input(part);
            taken.extend(session.take_body(1024));
        }
        assert!(session.body_taken());
        assert_eq!(session.body_bytes(), 100_000);
        take_lines(&mut session);
        session.input(b"BDAT 3 LAST\r\nend");
        let envelope = message(&mut session);
        taken.extend(envelope.body);
        body.extend_from_slice(b"end");
        assert_eq!(taken, body);
    }

    /// Random BDAT transcripts in random splits: every message handed
    /// over is exactly the concatenation of its accepted chunks, the
    /// session never holds more than its bounds, replies stay well-formed.
    #[test]
    fn fuzzed_bdat_transcripts_deliver_exactly_the_chunks() {
        const RUNS: u64 = 1000;
        let limits = ServerLimits {
            message_bytes_max: 300,
            errors_max: 1000,
            input_buffer_bytes_max: 256,
            ..ServerLimits::default()
        };
        let (mut messages, mut refused) = (0u32, 0u32);
        for run in 0..RUNS {
            let mut rng = Rng::new(0x5eed ^ (run + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut params = params(limits.clone());
            params.capabilities.chunking = true;
            let mut session = Driven::new(params, ScriptedPolicy::default());
            session.start();
            let mut transcript = b"EHLO c.test\r\n".to_vec();
            let mut expected: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1 + rng.index(4) {
                transcript.extend_from_slice(b"MAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test>\r\n");
                let mut body = Vec::new();
                let chunks = 1 + rng.index(4);
                for i in 0..chunks {
                    let len = rng.index(120);
                    let chunk: Vec<u8> = (0..len).map(|_| rng.index(256) as u8).collect();
                    let last = if i + 1 == chunks { " LAST" } else { "" };
                    transcript.extend_from_slice(format!("BDAT {len}{last}\r\n").as_bytes());
                    transcript.extend_from_slice(&chunk);
                    body.extend_from_slice(&chunk);
                }
                if body.len() <= 300 {
                    expected.push(body);
                }
            }
            transcript.extend_from_slice(b"QUIT\r\n");
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut out = Vec::new();
            let mut at = 0;
            while !session.is_closed() {
                while let Some(event) = session.next_event() {
                    if let Event::Message(envelope) = event {
                        got.push(envelope.body);
                    }
                }
                if session.awaiting_spool() {
                    session.spooled(queued("Q"));
                    continue;
                }
                if at >= transcript.len() {
                    break;
                }
                let most = session.input_capacity().min(transcript.len() - at);
                assert!(most > 0, "run {run}");
                let take = 1 + rng.index(most.min(200));
                session.input(&transcript[at..at + take]);
                at += take;
                assert!(
                    session.buffered_bytes()
                        <= limits.input_buffer_bytes_max + limits.command_line_bytes_max
                );
                session.take_output(&mut out);
            }
            session.take_output(&mut out);
            assert!(session.is_closed(), "run {run}: QUIT was read as a command");
            let text = String::from_utf8(out).expect("replies are ASCII");
            refused += text.matches("552 5.3.4").count() as u32;
            assert!(text.ends_with("221 2.0.0 Bye\r\n"), "run {run}: {text}");
            assert_eq!(got, expected, "run {run}");
            messages += got.len() as u32;
        }
        assert!(messages > 1000 && refused > 50, "{messages} {refused}");
    }
}
