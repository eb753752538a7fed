//! The BDAT half of the inbound session (RFC 3030 CHUNKING): `BDAT
//! <size> [LAST]` is followed by exactly `size` octets, taken as they are
//! (no dot-stuffing, no line-ending rewriting: 8-bit clean), appended to
//! the body of the open transaction; the chunk marked `LAST` ends the
//! message, which then goes to the end-of-data policy and the spool as a
//! DATA message does.
//!
//! A chunk is always read to its end, whatever its answer, so the stream
//! stays in step: a BDAT without MAIL or RCPT, over `max_message_size`
//! across chunks, or on a listener that demands TLS first, has its octets
//! read and dropped and only then gets its reply (503, 552 5.3.4, 530).
//! A refused chunk ends the transaction (RFC 3030 section 2: the client
//! must send no further chunk; those already pipelined are read and
//! refused with 503 for want of a MAIL).
//!
//! Owns: [`Chunk`] (the chunk being read) and the `ServerSession` methods
//! from the BDAT command to the end of its chunk. May call: the session's
//! reply and error helpers (`super`), the end-of-data policy phase.
//! Never: I/O, clocks.

use super::*;

/// Why a BDAT chunk is read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkRefusal {
    /// CHUNKING was not offered: `502 5.5.1`.
    NotOffered,
    /// `tls = required` and no STARTTLS yet: `530 5.7.0`.
    NeedTls,
    /// No MAIL: `503 5.5.1`.
    NoMail,
    /// MAIL but no RCPT was tried: `503 5.5.1`.
    NoRcpt,
    /// RCPTs were tried and every one refused: `554 5.5.1`.
    NoValidRcpt,
    /// The chunk takes the body over `max_message_size`: `552 5.3.4`.
    TooBig,
}

/// The BDAT chunk being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chunk {
    /// Octets announced by the BDAT command.
    pub(super) size: u64,
    /// Octets of it still to be read.
    pub(super) remaining: u64,
    /// The chunk is marked LAST: it ends the message.
    pub(super) last: bool,
    /// Set when the chunk is read only to be dropped.
    pub(super) refusal: Option<ChunkRefusal>,
}

impl Chunk {
    pub(super) const NONE: Chunk = Chunk {
        size: 0,
        remaining: 0,
        last: false,
        refusal: None,
    };
}

impl ServerSession {
    /// `BDAT size [LAST]`: decide the chunk's fate now, read its octets,
    /// answer at its end.
    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        let refusal = self.chunk_refusal(size);
        if refusal.is_none() && !self.bdat_open {
            // The first chunk of a message: a fresh body.
            self.data = DataState::FRESH;
            self.body.clear();
            self.body_bytes = 0;
            self.body_taken = false;
            self.head.clear();
            let expected = self.size_declared.unwrap_or(size);
            self.body
                .reserve(expected.min(BODY_RESERVE_BYTES_MAX as u64) as usize);
            self.bdat_open = true;
        }
        self.chunk = Chunk {
            size,
            remaining: size,
            last,
            refusal,
        };
        if size == 0 {
            self.end_of_chunk();
        } else {
            self.phase = Phase::Bdat;
        }
    }

    fn chunk_refusal(&self, size: u64) -> Option<ChunkRefusal> {
        if !self.params.capabilities.chunking {
            Some(ChunkRefusal::NotOffered)
        } else if self.params.tls_required && self.tls.is_none() {
            Some(ChunkRefusal::NeedTls)
        } else if !self.has_mail {
            Some(ChunkRefusal::NoMail)
        } else if self.rcpts.is_empty() && self.rcpt_attempted {
            Some(ChunkRefusal::NoValidRcpt)
        } else if self.rcpts.is_empty() {
            Some(ChunkRefusal::NoRcpt)
        } else if self.body_bytes.saturating_add(size) > self.message_bytes_limit {
            Some(ChunkRefusal::TooBig)
        } else {
            None
        }
    }

    /// Consume octets of the chunk being read from `rest`; at its end,
    /// answer it.
    pub(super) fn bdat_bytes(&mut self, rest: &[u8]) -> usize {
        assert!(self.chunk.remaining > 0 && !rest.is_empty());
        let take = (rest.len() as u64).min(self.chunk.remaining) as usize;
        if self.chunk.refusal.is_none() {
            self.body_bytes += take as u64;
            self.body.extend_from_slice(&rest[..take]);
        }
        self.chunk.remaining -= take as u64;
        if self.chunk.remaining == 0 {
            self.end_of_chunk();
        }
        take
    }

    /// The chunk was read: its reply, or the end-of-data policy phase
    /// after a LAST chunk.
    fn end_of_chunk(&mut self) {
        assert_eq!(self.chunk.remaining, 0);
        self.phase = Phase::Command;
        let Some(refusal) = self.chunk.refusal else {
            assert!(self.bdat_open);
            if self.chunk.last {
                self.await_policy(PolicyPhase::Data);
            } else {
                let size = self.chunk.size;
                self.reply(250, "2.0.0", format_args!("Ok: {size} octets received"));
            }
            return;
        };
        match refusal {
            ChunkRefusal::NotOffered => {
                self.reply(502, "5.5.1", format_args!("Error: command not implemented"));
            }
            ChunkRefusal::NeedTls => {
                self.reply(
                    530,
                    "5.7.0",
                    format_args!("Must issue a STARTTLS command first"),
                );
            }
            ChunkRefusal::NoMail => {
                self.reply(503, "5.5.1", format_args!("Error: need MAIL command"));
            }
            ChunkRefusal::NoRcpt => {
                self.reply(503, "5.5.1", format_args!("Error: need RCPT command"));
            }
            ChunkRefusal::NoValidRcpt => {
                self.reply(554, "5.5.1", format_args!("Error: no valid recipients"));
            }
            ChunkRefusal::TooBig => {
                self.reply(
                    552,
                    "5.3.4",
                    format_args!("Message size exceeds fixed maximum message size"),
                );
            }
        }
        // The transaction failed; chunks still in the pipeline find no
        // MAIL.
        self.reset_transaction();
        if refusal != ChunkRefusal::TooBig && refusal != ChunkRefusal::NeedTls {
            self.count_error();
        }
    }
}
