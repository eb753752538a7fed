//! DKIM signing at reception, between the session and `dkim`: whether a
//! message is signed (`opendkim_sign`, an `opendkim` stanza, a signer for
//! its From domain), the counters of `signing_stats`, and the time spent.
//! An inline message is signed whole at end of data; a streamed one is
//! hashed chunk by chunk as `stream` writes it (a [`Signing`]), its
//! signature written at end of data into the head of its body file that
//! was left free for it.
//!
//! A message that should be signed but cannot be (no signer for its From
//! domain, no header to sign) is spooled unsigned and counted as a failed
//! attempt; so is one whose key fails, inline. A streamed message whose
//! signature cannot be made at the end gets `451 4.3.0` (its file has a
//! hole for the signature), which only a defect can cause.
//!
//! Owns: the decision and the counting. May call: `dkim`, `config`,
//! `stats`. Never: I/O.

use std::time::Instant;

use super::Inbound;
use crate::dkim::{body_offset, from_domain, wanted, BodySigner, SignerId, Signers};
use crate::smtp::server::STREAMED_HEAD_BYTES_MAX;
use crate::stats::Counter;

/// A streamed message being signed: the signer state and the bytes left
/// free for its signature at the head of the body file.
pub struct Signing {
    pub signer: BodySigner,
    pub id: SignerId,
    /// Bytes of the DKIM-Signature header to come.
    pub reserved: usize,
    /// Time spent hashing so far.
    micros: u64,
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// The signer for a message of `binding` to `rcpts` whose header block is
/// `headers`, when one should sign it; counts the attempt (and its
/// failure when there is no signer).
fn choose<'s>(
    shard: &'s Inbound,
    binding: &str,
    rcpts: &[String],
    headers: Option<&[u8]>,
) -> Option<&'s crate::dkim::Signer> {
    let signers: &Signers = shard.dkim.as_deref()?;
    if !wanted(&shard.env.config.get(), binding, rcpts) {
        return None;
    }
    let stats = shard.env.stats();
    stats.add(Counter::DkimMessagesProcessed, 1);
    let signer = headers
        .and_then(from_domain)
        .and_then(|domain| signers.pick(&domain));
    if signer.is_none() {
        stats.add(Counter::DkimSigningFailures, 1);
    }
    signer
}

/// The DKIM-Signature header for an inline `message` (header block, empty
/// line, body), or None when it is not signed.
pub fn sign_inline(
    shard: &Inbound,
    binding: &str,
    rcpts: &[String],
    message: &[u8],
    now_secs: u64,
) -> Option<Vec<u8>> {
    let headers = body_offset(message).map_or(message, |at| &message[..at - 2]);
    let signer = choose(shard, binding, rcpts, Some(headers))?;
    let start = Instant::now();
    let signed = signer.sign(message, now_secs);
    let stats = shard.env.stats();
    stats.add(Counter::DkimSigningMicros, micros_since(start));
    match signed {
        Ok(header) => {
            stats.add(Counter::DkimMessagesSigned, 1);
            Some(header)
        }
        Err(e) => {
            stats.add(Counter::DkimSigningFailures, 1);
            // Counted in signing_stats; not logged per message.
            tracing::debug!(shard = shard.env.id, "dkim: message not signed: {e}");
            None
        }
    }
}

/// Starts signing a streamed message whose first chunk is `first` (header
/// block and the start of the body): its body part is hashed at once. None
/// when it is not signed (also when its header block does not end within
/// `STREAMED_HEAD_BYTES_MAX`, counted as a failure).
pub fn start_streamed(
    shard: &Inbound,
    binding: &str,
    rcpts: &[String],
    first: &[u8],
    now_secs: u64,
) -> Option<Signing> {
    let at = body_offset(first).filter(|at| *at <= STREAMED_HEAD_BYTES_MAX);
    let headers = at.map(|at| &first[..at - 2]);
    let signer = choose(shard, binding, rcpts, headers)?;
    let at = at.expect("a signer is chosen from a header block");
    let start = Instant::now();
    let mut signing = signer.start(&first[..at - 2], now_secs);
    let stats = shard.env.stats();
    if !signing.has_headers(signer) {
        stats.add(Counter::DkimSigningFailures, 1);
        tracing::debug!(
            shard = shard.env.id,
            "dkim: message not signed: no header to sign"
        );
        return None;
    }
    signing.body(&first[at..]);
    let reserved = signing.header_len(signer);
    Some(Signing {
        id: signing.signer(),
        signer: signing,
        reserved,
        micros: micros_since(start),
    })
}

impl Signing {
    /// Hashes the next chunk of the body (its time is counted at the end).
    pub fn hash(&mut self, chunk: &[u8]) {
        let start = Instant::now();
        self.signer.body(chunk);
        self.micros += micros_since(start);
    }
}

/// The signature of a streamed message whose body was all hashed, exactly
/// `signing.reserved` bytes long; None (counted, logged) if it cannot be.
pub fn finish_streamed(shard: &Inbound, signing: Signing) -> Option<Vec<u8>> {
    let signers = shard
        .dkim
        .as_deref()
        .expect("a signing started with signers");
    let start = Instant::now();
    let (reserved, hashing) = (signing.reserved, signing.micros);
    let made = signing
        .signer
        .finish_exact(signers.get(signing.id), reserved);
    let stats = shard.env.stats();
    stats.add(Counter::DkimSigningMicros, hashing + micros_since(start));
    match made {
        Ok(header) => {
            stats.add(Counter::DkimMessagesSigned, 1);
            Some(header)
        }
        Err(e) => {
            stats.add(Counter::DkimSigningFailures, 1);
            tracing::error!(
                shard = shard.env.id,
                "dkim: streamed message not signed: {e}; 451"
            );
            None
        }
    }
}
