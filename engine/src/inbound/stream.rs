//! A large body streamed to the spool while its DATA is read, so a
//! session never holds a whole large message in memory.
//!
//! A body that ends within its first `STREAM_CHUNK_BYTES` stays in the
//! session's buffer and is spooled inline, as one record with one write
//! (most mail is a few KiB: that path is unchanged). Once a body fills
//! that much, the driver takes it from the session (`take_body`) and
//! starts a [`Streaming`]: the message gets its id now (`Messages::admit`),
//! its Received header and the bytes so far go to a body file of its own
//! in the shard's spool (`ecelerity_spool::BodyWriter`, page-cache writes,
//! not synced), and every further `STREAM_CHUNK_BYTES` follow as they
//! arrive. At end of data, once the policy let the message through, the
//! rest is written and [`Streaming::finish`] syncs the file; the caller
//! then commits the message record through the group commit, and only
//! after that sync does the client get 250. A transaction that ends any
//! other way (refused, reset, cut, timed out, the shard stopping) discards
//! the file; one a crash cuts short is removed by the next start.
//!
//! A spool error while streaming (disk full, live set full at the start)
//! does not end the DATA: the rest of the body is read and dropped, and
//! the client gets the error's reply (`452 4.3.1`, `451 4.3.0`) at end of
//! data, as RFC 5321 wants it.
//!
//! Memory per session while streaming: the body buffer (at most
//! `STREAM_CHUNK_BYTES` + one read), the read buffer and the header block
//! kept for the policy (`STREAMED_HEAD_BYTES_MAX`); see
//! `SESSION_BODY_BYTES_MAX`.
//!
//! Owns: the body writer of one transaction. May call: `message` (ids,
//! the spool's body writer), the session (its Received header). Never:
//! protocol decisions; the reply is the session's, from the outcome.

use ecelerity_spool::{BodyWriter, FileBody, SpoolError};

use super::signing::Signing;
use crate::clock::now_unix_ms;
use crate::message::Messages;
use crate::queue::{BindingId, MessageId};
use crate::smtp::server::{
    ServerSession, SpoolOutcome, BODY_RESERVE_BYTES_MAX, INPUT_BUFFER_BYTES_DEFAULT,
    STREAMED_HEAD_BYTES_MAX,
};

/// Bytes of body a session buffers before it streams them to the spool,
/// and so the largest body spooled inline (one record, one write).
pub const STREAM_CHUNK_BYTES: usize = 256 * 1024;
/// Body memory one session holds at most while reading a DATA: the
/// buffer of a chunk being filled (taken once the next read could take it
/// past a chunk; pipelined input held while a verdict was awaited, at most
/// `INPUT_BUFFER_BYTES_DEFAULT`, may add to it once) and the header block
/// kept for the policy. The driver's read buffer (`READ_BUFFER_BYTES`)
/// comes on top.
pub const SESSION_BODY_BYTES_MAX: usize =
    STREAM_CHUNK_BYTES + INPUT_BUFFER_BYTES_DEFAULT + STREAMED_HEAD_BYTES_MAX;

// The session reserves a chunk's worth from SIZE=, never more than a chunk.
const _: () = assert!(BODY_RESERVE_BYTES_MAX <= STREAM_CHUNK_BYTES);
const _: () = assert!(super::READ_BUFFER_BYTES < STREAM_CHUNK_BYTES);

/// Whether the body buffered in `session` should go to the spool now: the
/// next read could take it past a chunk.
pub fn chunk_due(session: &ServerSession) -> bool {
    assert!(session.body_buffered() <= SESSION_BODY_BYTES_MAX - STREAMED_HEAD_BYTES_MAX);
    session.reading_data()
        && session.body_buffered() + super::READ_BUFFER_BYTES > STREAM_CHUNK_BYTES
}

/// One body being streamed to the spool.
pub struct Streaming {
    id: MessageId,
    /// The binding the listener's `binding_header` picked (`start`).
    binding: BindingId,
    state: State,
    /// The DKIM signing of this message, when it is signed: every chunk
    /// is hashed as it is written, and the file's head left free for the
    /// signature.
    signing: Option<Signing>,
    /// The event fields of its X-MSYS-API header (`smtpapi`), if any.
    pub event_fields: Option<String>,
}

enum State {
    Writing(BodyWriter),
    /// The spool could not take it: the reply owed at end of data.
    Failed(SpoolOutcome),
}

/// What an error of the spool means for the client.
fn outcome_of(err: &SpoolError) -> SpoolOutcome {
    match err {
        SpoolError::StorageFull => SpoolOutcome::StorageFull,
        _ => SpoolOutcome::TemporaryFailure,
    }
}

impl Streaming {
    /// Starts streaming the body of the message `session` is reading:
    /// takes an id for it and writes its Received header and `first` (the
    /// first chunk, the binding header already left out of it by the
    /// caller, which chose `binding` from it). `signing` (the first
    /// chunk already hashed) gets the head of the file for its signature.
    pub async fn start(
        messages: &Messages,
        session: &ServerSession,
        first: Vec<u8>,
        binding: BindingId,
        signing: Option<Signing>,
    ) -> Streaming {
        let id = match messages.admit() {
            Ok(id) => id,
            Err(_) => {
                return Streaming {
                    id: MessageId(0),
                    binding,
                    state: State::Failed(SpoolOutcome::TemporaryFailure),
                    signing: None,
                    event_fields: None,
                }
            }
        };
        let header =
            session.transaction_received_header(&id.to_string(), (now_unix_ms() / 1000) as i64);
        let mut streaming = match messages.spool.body_writer(id.0).await {
            Ok(mut writer) => {
                if let Some(signing) = &signing {
                    writer.reserve_head(signing.reserved);
                }
                Streaming {
                    id,
                    binding,
                    state: State::Writing(writer),
                    signing,
                    event_fields: None,
                }
            }
            Err(err) => {
                tracing::error!("spool: cannot create the body file of {id} ({err}); the client gets 452 or 451 at end of data");
                return Streaming {
                    id,
                    binding,
                    state: State::Failed(outcome_of(&err)),
                    signing: None,
                    event_fields: None,
                };
            }
        };
        streaming.write_raw(header.into_bytes()).await;
        streaming.write_raw(first).await;
        streaming
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The binding the message leaves from.
    pub fn binding(&self) -> BindingId {
        self.binding
    }

    /// Appends the next part of the body. After an error the rest is
    /// dropped and the file removed; the error is answered at end of data.
    pub async fn write(&mut self, chunk: Vec<u8>) {
        if let Some(signing) = &mut self.signing {
            signing.hash(&chunk);
        }
        self.write_raw(chunk).await;
    }

    /// Appends bytes the signature does not hash (the Received header, the
    /// first chunk it hashed already).
    async fn write_raw(&mut self, chunk: Vec<u8>) {
        let State::Writing(writer) = &mut self.state else {
            return;
        };
        if let Err(err) = writer.write(chunk).await {
            let (what, reply) = match err {
                SpoolError::StorageFull => ("spool full", "452 4.3.1"),
                _ => ("spool", "451 4.3.0"),
            };
            tracing::error!(
                "{what}: cannot write the body of {} ({err}); the client gets {reply} at \
                 end of data",
                self.id
            );
            self.fail(outcome_of(&err)).await;
        }
    }

    async fn fail(&mut self, outcome: SpoolOutcome) {
        if let State::Writing(writer) = std::mem::replace(&mut self.state, State::Failed(outcome)) {
            writer.discard().await;
        }
    }

    /// Writes the rest of the body and, when it is signed, the signature
    /// `sign` makes into the head left for it; then makes the file
    /// durable. Returns the body to commit, or the reply owed when the
    /// spool failed or the signature could not be made (the file is gone
    /// then).
    pub async fn finish(
        mut self,
        rest: Vec<u8>,
        sign: impl FnOnce(Signing) -> Option<Vec<u8>>,
    ) -> Result<FileBody, SpoolOutcome> {
        self.write(rest).await;
        if let Some(signing) = self.signing.take() {
            if let State::Writing(writer) = &mut self.state {
                // Without its signature the file has a hole: not a message.
                let filled = match sign(signing) {
                    Some(header) => writer.fill_head(header).await.map_err(|e| outcome_of(&e)),
                    None => Err(SpoolOutcome::TemporaryFailure),
                };
                if let Err(outcome) = filled {
                    tracing::error!("cannot complete the body of {}: 451 or 452", self.id);
                    self.fail(outcome).await;
                }
            }
        }
        match self.state {
            State::Failed(outcome) => Err(outcome),
            State::Writing(writer) => writer.finish().await.map_err(|err| {
                tracing::error!("spool: cannot sync the body of {}: {err}", self.id);
                outcome_of(&err)
            }),
        }
    }

    /// The transaction ended without a message: remove the file.
    pub async fn discard(self) {
        if let State::Writing(writer) = self.state {
            writer.discard().await;
        }
    }
}
