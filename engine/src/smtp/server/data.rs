//! The DATA half of the inbound session: the scanner that reads a body
//! after `354` (dot-unstuffing, line limits, the smuggling defence), and
//! handing a complete message over for the end-of-data policy phase and
//! the spool.
//!
//! Owns: [`DataState`] (where the scanner stands in a line, why the
//! message will be refused) and the `ServerSession` methods from the DATA
//! command to `Event::Message`. May call: the session's reply and error
//! helpers (`super`). Never: I/O, clocks.

use super::*;

/// Where the DATA scanner stands within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataLine {
    /// At the first byte of a line.
    Start,
    /// The line began with a dot, which was dropped (RFC 5321 4.5.2).
    Dot,
    /// The line is `.<CR>` so far: LF ends the data.
    DotCr,
    /// Inside a line.
    Middle,
    /// A CR was seen; only LF may follow.
    Cr,
}

/// Why a message that is still being read will be refused at end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataRefusal {
    /// Over message_bytes_max: `552 5.3.4`, the reply RFC 1870 and
    /// RFC 5321 section 4.5.3.1.10 name for too much mail data.
    TooBig,
    /// A line over text_line_bytes_max. RFC 5321 section 4.3.2 lists the
    /// replies allowed after end of data (250, 451, 452, 552, 554, 450,
    /// 550); `500 Line too long` is not among them, so this is
    /// `554 5.6.0` (transaction failed, media error, RFC 3463).
    LineTooLong,
    /// A NUL byte: not text (RFC 5321 section 2.3.8). It cannot change
    /// where data ends, so unlike a bare CR or LF it is no smuggling risk:
    /// read to end of data and refuse the message with `554 5.6.0`, the
    /// session stays open.
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DataState {
    pub(super) line: DataLine,
    /// Bytes of the current line as transmitted, CRLF included.
    pub(super) line_bytes: usize,
    /// The first reason to refuse this message, if any. Once set, the body
    /// buffer is empty and stays empty.
    pub(super) refusal: Option<DataRefusal>,
}

impl DataState {
    pub(super) const FRESH: DataState = DataState {
        line: DataLine::Start,
        line_bytes: 0,
        refusal: None,
    };
}

impl ServerSession {
    pub(super) fn data(&mut self) {
        self.data_refused = !self.has_mail || self.rcpts.is_empty() || self.bdat_open;
        if self.refuse_without_tls() {
            self.data_refused = true;
            return;
        }
        if !self.has_mail {
            self.reply(503, "5.5.1", format_args!("Error: need MAIL command"));
            self.count_error();
            return;
        }
        if self.bdat_open {
            // RFC 3030 section 2: DATA and BDAT do not mix in one
            // transaction.
            self.reply(503, "5.5.1", format_args!("Error: DATA after BDAT"));
            self.count_error();
            return;
        }
        if self.rcpts.is_empty() {
            if self.rcpt_attempted {
                self.reply(554, "5.5.1", format_args!("Error: no valid recipients"));
            } else {
                self.reply(503, "5.5.1", format_args!("Error: need RCPT command"));
            }
            self.count_error();
            return;
        }
        self.reply(354, "", format_args!("End data with <CR><LF>.<CR><LF>"));
        self.phase = Phase::Data;
        self.data = DataState::FRESH;
        self.body.clear();
        self.body_bytes = 0;
        self.body_taken = false;
        self.head.clear();
        if let Some(size) = self.size_declared {
            let reserve = size.min(BODY_RESERVE_BYTES_MAX as u64) as usize;
            self.body.reserve(reserve);
        }
    }

    /// Consume DATA bytes from `rest` until they are used up, end of data,
    /// or a close.
    pub(super) fn data_bytes(&mut self, rest: &[u8]) -> usize {
        let mut at = 0;
        while at < rest.len() {
            let byte = rest[at];
            match self.data.line {
                DataLine::Start => {
                    if byte == b'.' {
                        self.data.line = DataLine::Dot;
                        self.count_line_bytes(1);
                        at += 1;
                    } else {
                        self.data.line = DataLine::Middle;
                    }
                }
                DataLine::Dot => {
                    if byte == b'\r' {
                        self.data.line = DataLine::DotCr;
                        self.count_line_bytes(1);
                        at += 1;
                    } else {
                        // The stuffing dot stays dropped.
                        self.data.line = DataLine::Middle;
                    }
                }
                DataLine::DotCr => {
                    if byte == b'\n' {
                        self.end_of_data();
                        return at + 1;
                    }
                    self.refuse_bare("CR");
                    return rest.len();
                }
                DataLine::Middle => {
                    let run = rest[at..]
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n' || b == 0)
                        .unwrap_or(rest.len() - at);
                    if run > 0 {
                        self.count_line_bytes(run);
                        self.body_append(&rest[at..at + run]);
                        at += run;
                        continue;
                    }
                    match byte {
                        b'\r' => self.data.line = DataLine::Cr,
                        b'\n' => {
                            self.refuse_bare("LF");
                            return rest.len();
                        }
                        _ => {
                            assert_eq!(byte, 0);
                            self.refuse_data(DataRefusal::Nul);
                        }
                    }
                    self.count_line_bytes(1);
                    at += 1;
                }
                DataLine::Cr => {
                    if byte != b'\n' {
                        self.refuse_bare("CR");
                        return rest.len();
                    }
                    self.count_line_bytes(1);
                    self.body_append(b"\r\n");
                    self.data.line = DataLine::Start;
                    self.data.line_bytes = 0;
                    at += 1;
                }
            }
        }
        at
    }

    fn count_line_bytes(&mut self, bytes: usize) {
        self.data.line_bytes = self.data.line_bytes.saturating_add(bytes);
        if self.data.line_bytes > self.params.limits.text_line_bytes_max {
            self.refuse_data(DataRefusal::LineTooLong);
        }
    }

    fn body_append(&mut self, bytes: &[u8]) {
        if self.data.refusal.is_some() {
            return;
        }
        if self.body_bytes + bytes.len() as u64 > self.message_bytes_limit {
            self.refuse_data(DataRefusal::TooBig);
            return;
        }
        self.body_bytes += bytes.len() as u64;
        self.body.extend_from_slice(bytes);
    }

    /// Moves the body bytes received so far out of the session, for a body
    /// streamed to the spool while DATA is read; the next bytes go to a
    /// buffer of `capacity` bytes. The session goes on counting the bytes
    /// against the size limit, and keeps a copy of the header block (at
    /// most `STREAMED_HEAD_BYTES_MAX`) from the first call for the
    /// end-of-data policy. Empty once the message is refused: a refused
    /// message is not spooled.
    pub fn take_body(&mut self, capacity: usize) -> Vec<u8> {
        assert!(self.reading_data(), "a body is taken while DATA is read");
        if self.data.refusal.is_some() {
            return Vec::new();
        }
        if !self.body_taken {
            self.body_taken = true;
            let end = header_block_len(&self.body).min(STREAMED_HEAD_BYTES_MAX);
            self.head.clear();
            self.head.extend_from_slice(&self.body[..end]);
        }
        std::mem::replace(&mut self.body, Vec::with_capacity(capacity))
    }

    /// A body is being read and may still become a message: DATA is in
    /// progress, or its end awaits the policy, and nothing so far makes
    /// the session refuse it. While false, a body streamed to the spool
    /// for this transaction will never be spooled.
    pub fn receiving_body(&self) -> bool {
        let between_chunks = self.phase == Phase::Command && self.bdat_open;
        (between_chunks
            || matches!(
                self.phase,
                Phase::Data | Phase::Bdat | Phase::AwaitingPolicy(PolicyPhase::Data)
            ))
            && self.data.refusal.is_none()
    }

    /// DATA is being read, or a BDAT chunk, or a BDAT transaction awaits
    /// its next chunk: `take_body` may be called.
    pub fn reading_data(&self) -> bool {
        match self.phase {
            Phase::Data | Phase::Bdat => true,
            Phase::Command => self.bdat_open,
            _ => false,
        }
    }

    /// Body bytes received and not taken yet (`take_body`).
    pub fn body_buffered(&self) -> usize {
        self.body.len()
    }

    /// Some of this message's body was taken (`take_body`): what the
    /// policy sees at end of data is its header block, and the envelope's
    /// `body` is the rest.
    pub fn body_taken(&self) -> bool {
        self.body_taken
    }

    /// Unstuffed body bytes of the message being read, taken or not.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The body of this message will be refused at end of data (too big,
    /// a line too long, a NUL): nothing of it needs to be kept.
    pub fn body_refused(&self) -> bool {
        self.data.refusal.is_some()
    }

    /// Remember the first reason to refuse the message and stop buffering
    /// its body.
    fn refuse_data(&mut self, refusal: DataRefusal) {
        if self.data.refusal.is_none() {
            self.data.refusal = Some(refusal);
            self.body.clear();
            self.head.clear();
        }
    }

    /// Bytes followed a refused DATA in the same read: the client sent its
    /// message without waiting for the reply, and reading that message as
    /// commands could run a transaction hidden in its body. Close.
    pub(super) fn refuse_unsynchronized_data(&mut self) {
        let host = self.params.hostname.clone();
        self.reply(
            554,
            "5.5.0",
            format_args!("{host} Error: SMTP synchronization error: input after a refused DATA"),
        );
        self.reset_transaction();
        self.close();
    }

    /// A bare CR or LF in DATA: close at once, so nothing after it is read
    /// as a command or a second message.
    fn refuse_bare(&mut self, what: &str) {
        let host = self.params.hostname.clone();
        self.reply(
            521,
            "5.5.2",
            format_args!("{host} Error: bare <{what}> received"),
        );
        self.reset_transaction();
        self.close();
    }

    fn end_of_data(&mut self) {
        match self.data.refusal {
            Some(DataRefusal::TooBig) => {
                self.reply(
                    552,
                    "5.3.4",
                    format_args!("Message size exceeds fixed maximum message size"),
                );
            }
            Some(DataRefusal::LineTooLong) => {
                let max = self.params.limits.text_line_bytes_max;
                self.reply(
                    554,
                    "5.6.0",
                    format_args!("Error: message line longer than {max} bytes"),
                );
            }
            Some(DataRefusal::Nul) => {
                self.reply(
                    554,
                    "5.6.0",
                    format_args!("Error: message contains NUL characters"),
                );
            }
            None => {
                self.await_policy(PolicyPhase::Data);
                return;
            }
        }
        self.reset_transaction();
        self.phase = Phase::Command;
    }

    /// The policy let the message through: hand it over for spooling.
    /// A body taken in part (`take_body`) hands over its rest.
    pub(super) fn accept_message(&mut self) {
        let envelope = Envelope {
            helo: self.connection.ehlo_domain.clone(),
            esmtp: self.esmtp,
            mail_from: std::mem::take(&mut self.mail_from),
            rcpts: std::mem::take(&mut self.rcpts),
            body_8bitmime: self.body_8bitmime,
            params: self.take_message_params(),
            body: std::mem::take(&mut self.body),
        };
        self.events.push_back(Event::Message(envelope));
        self.messages_received = self.messages_received.saturating_add(1);
        // The message scope of the context stays until the next
        // transaction starts, so the spooling phases can read it.
        self.reset_transaction();
        self.phase = Phase::AwaitingSpool;
    }
}

/// Bytes of the header block at the start of `body`, the blank line that
/// ends it included; the whole body when no blank line is found.
pub(super) fn header_block_len(body: &[u8]) -> usize {
    if body.starts_with(b"\r\n") {
        return 2;
    }
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |at| at + 4)
}
