//! What the engine stores in the spool's opaque fields: the envelope of a
//! message and the notes that record per-recipient progress.
//!
//! Owns: a small versioned binary codec for [`SpooledEnvelope`] and [`Note`].
//! Spool records are hostile input on the way back in (a disk can lie): the
//! decoder checks every length against a named limit and never panics.
//! May call: std, and `config` for the name of the default binding.
//! Never: I/O.
//!
//! Envelope versions: 1 had no binding (its messages belong to the default
//! binding); 2 adds the binding name after the 8BITMIME flag; 3 adds a
//! list of tagged extension fields after the recipients. All decode.
//!
//! Extension tags (a `u16` each; unknown tags are kept as they are):
//! 1-15 ESMTP parameters (SMTPUTF8, DSN), 16-31 message generation
//! (X-MSYS-API, REST transmissions), 32-47 policy (Lua context). Each
//! feature names its tags as constants in its own module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::DEFAULT_BINDING;

/// Format version of an encoded envelope; bump on any layout change.
const ENVELOPE_VERSION: u8 = 3;
/// The first version, without a binding.
const ENVELOPE_VERSION_NO_BINDING: u8 = 1;
/// The second version: a binding, no extension fields.
const ENVELOPE_VERSION_NO_EXTENSIONS: u8 = 2;
/// Most extension fields one envelope may carry.
pub const EXTENSIONS_MAX: usize = 64;
/// Most bytes of all extension values of one envelope together.
pub const EXTENSION_BYTES_MAX: usize = 1024 * 1024;
/// Longest address stored (RFC 5321 allows 256 for a path).
pub const ADDRESS_BYTES_MAX: usize = 1024;
/// Most recipients one spooled message may carry.
pub const RECIPIENTS_MAX: usize = 100_000;

/// The envelope of one received message, as spooled beside its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEnvelope {
    pub received_unix_ms: u64,
    pub peer_ip: IpAddr,
    /// Inbound connection id, for the logs.
    pub connection_id: u64,
    pub body_8bitmime: bool,
    /// The binding the message leaves from (Momentum's binding; the default
    /// binding until policy assigns others).
    pub binding: String,
    /// Reverse path without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// Forward paths, in the order the client gave them. A recipient is
    /// named by its index in this list everywhere else.
    pub rcpts: Vec<String>,
    /// Tagged fields later features store with the message (see the
    /// module comment for the tag ranges); at most [`EXTENSIONS_MAX`], one
    /// per tag, [`EXTENSION_BYTES_MAX`] bytes of values together.
    pub extensions: Vec<EnvelopeExtension>,
}

/// One tagged extension field of a [`SpooledEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeExtension {
    pub tag: u16,
    pub value: Vec<u8>,
}

/// Progress of some recipients of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// These recipients reached a final outcome (delivered or failed).
    Done { rcpts: Vec<u32> },
    /// These recipients failed transiently `attempts` times and wait until
    /// `next_attempt_unix_ms`.
    Retry {
        rcpts: Vec<u32>,
        attempts: u32,
        next_attempt_unix_ms: u64,
    },
    /// The message's delay DSN is spooled: after a restart it is not sent
    /// again.
    DelayDsnSent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("field too long or too many items")]
    Limit,
    #[error("bad field value")]
    Value,
}

impl SpooledEnvelope {
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.rcpts.len() <= RECIPIENTS_MAX);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.received_unix_ms.to_le_bytes());
        match self.peer_ip {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.push(self.body_8bitmime as u8);
        put_str(out, &self.binding);
        put_str(out, &self.mail_from);
        out.extend_from_slice(&(self.rcpts.len() as u32).to_le_bytes());
        for rcpt in &self.rcpts {
            put_str(out, rcpt);
        }
        assert!(self.extensions.len() <= EXTENSIONS_MAX);
        assert!(self.extension_bytes() <= EXTENSION_BYTES_MAX);
        out.extend_from_slice(&(self.extensions.len() as u16).to_le_bytes());
        for ext in &self.extensions {
            out.extend_from_slice(&ext.tag.to_le_bytes());
            out.extend_from_slice(&(ext.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&ext.value);
        }
    }

    /// The value stored under `tag`, if any.
    pub fn extension(&self, tag: u16) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| e.value.as_slice())
    }

    /// Stores `value` under `tag`, replacing an earlier value.
    pub fn set_extension(&mut self, tag: u16, value: Vec<u8>) {
        match self.extensions.iter_mut().find(|e| e.tag == tag) {
            Some(e) => e.value = value,
            None => self.extensions.push(EnvelopeExtension { tag, value }),
        }
    }

    fn extension_bytes(&self) -> usize {
        self.extensions.iter().map(|e| e.value.len()).sum()
    }

    pub fn decode(bytes: &[u8]) -> Result<SpooledEnvelope, RecordError> {
        let mut r = Reader { bytes };
        let version = r.u8()?;
        if !matches!(
            version,
            ENVELOPE_VERSION | ENVELOPE_VERSION_NO_EXTENSIONS | ENVELOPE_VERSION_NO_BINDING
        ) {
            return Err(RecordError::Version(version));
        }
        let received_unix_ms = r.u64()?;
        let peer_ip = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).unwrap())),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).unwrap())),
            _ => return Err(RecordError::Value),
        };
        let connection_id = r.u64()?;
        let body_8bitmime = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(RecordError::Value),
        };
        let binding = if version == ENVELOPE_VERSION_NO_BINDING {
            DEFAULT_BINDING.to_string()
        } else {
            r.str()?
        };
        let mail_from = r.str()?;
        let count = r.u32()? as usize;
        if count > RECIPIENTS_MAX {
            return Err(RecordError::Limit);
        }
        let mut rcpts = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            rcpts.push(r.str()?);
        }
        let extensions = if version == ENVELOPE_VERSION {
            r.extensions()?
        } else {
            Vec::new()
        };
        if !r.bytes.is_empty() {
            return Err(RecordError::Value);
        }
        Ok(SpooledEnvelope {
            received_unix_ms,
            peer_ip,
            connection_id,
            body_8bitmime,
            binding,
            mail_from,
            rcpts,
            extensions,
        })
    }
}

impl Note {
    pub fn encode(&self, out: &mut Vec<u8>) {
        const NONE: &Vec<u32> = &Vec::new();
        let (kind, rcpts, attempts, next) = match self {
            Note::Done { rcpts } => (1u8, rcpts, 0, 0),
            Note::Retry {
                rcpts,
                attempts,
                next_attempt_unix_ms,
            } => (2u8, rcpts, *attempts, *next_attempt_unix_ms),
            Note::DelayDsnSent => (3u8, NONE, 0, 0),
        };
        assert!(rcpts.len() <= RECIPIENTS_MAX);
        out.push(kind);
        out.extend_from_slice(&attempts.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
        for index in rcpts {
            out.extend_from_slice(&index.to_le_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Note, RecordError> {
        let mut r = Reader { bytes };
        let kind = r.u8()?;
        let attempts = r.u32()?;
        let next_attempt_unix_ms = r.u64()?;
        let count = r.u32()? as usize;
        if count > RECIPIENTS_MAX {
            return Err(RecordError::Limit);
        }
        let mut rcpts = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            rcpts.push(r.u32()?);
        }
        if !r.bytes.is_empty() {
            return Err(RecordError::Value);
        }
        match kind {
            1 => Ok(Note::Done { rcpts }),
            2 => Ok(Note::Retry {
                rcpts,
                attempts,
                next_attempt_unix_ms,
            }),
            3 if rcpts.is_empty() => Ok(Note::DelayDsnSent),
            _ => Err(RecordError::Value),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= ADDRESS_BYTES_MAX,
        "addresses are bounded by the SMTP session"
    );
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn extensions(&mut self) -> Result<Vec<EnvelopeExtension>, RecordError> {
        let count = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        if count > EXTENSIONS_MAX {
            return Err(RecordError::Limit);
        }
        let mut extensions: Vec<EnvelopeExtension> = Vec::with_capacity(count);
        let mut total_bytes = 0usize;
        for _ in 0..count {
            let tag = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
            let len = self.u32()? as usize;
            total_bytes = total_bytes.saturating_add(len);
            if total_bytes > EXTENSION_BYTES_MAX {
                return Err(RecordError::Limit);
            }
            if extensions.iter().any(|e| e.tag == tag) {
                return Err(RecordError::Value);
            }
            let value = self.take(len)?.to_vec();
            extensions.push(EnvelopeExtension { tag, value });
        }
        Ok(extensions)
    }
    fn str(&mut self) -> Result<String, RecordError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        if len > ADDRESS_BYTES_MAX {
            return Err(RecordError::Limit);
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| RecordError::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SpooledEnvelope {
        SpooledEnvelope {
            received_unix_ms: 1_700_000_000_123,
            peer_ip: "127.0.0.1".parse().unwrap(),
            connection_id: 42,
            body_8bitmime: true,
            binding: DEFAULT_BINDING.into(),
            mail_from: "news@example.net".into(),
            rcpts: vec!["a@example.com".into(), "b@example.org".into()],
            extensions: vec![EnvelopeExtension {
                tag: 1,
                value: b"x".to_vec(),
            }],
        }
    }

    #[test]
    fn envelope_and_notes_round_trip() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        assert_eq!(SpooledEnvelope::decode(&buf).unwrap(), sample());
        for note in [
            Note::Done { rcpts: vec![0, 1] },
            Note::Retry {
                rcpts: vec![1],
                attempts: 3,
                next_attempt_unix_ms: 99,
            },
            Note::DelayDsnSent,
        ] {
            let mut buf = Vec::new();
            note.encode(&mut buf);
            assert_eq!(Note::decode(&buf).unwrap(), note);
        }
    }

    #[test]
    fn a_version_1_envelope_belongs_to_the_default_binding() {
        let mut v2 = sample();
        v2.binding = "mta1".into();
        v2.extensions.clear();
        let mut buf = Vec::new();
        v2.encode(&mut buf);
        assert_eq!(SpooledEnvelope::decode(&buf).unwrap().binding, "mta1");
        // Version 2 wrote no extension count.
        buf.truncate(buf.len() - 2);
        let mut as_v2 = buf.clone();
        as_v2[0] = ENVELOPE_VERSION_NO_EXTENSIONS;
        assert_eq!(SpooledEnvelope::decode(&as_v2).unwrap(), v2);
        // The same envelope as version 1 wrote it: no binding field.
        let mut v1 = vec![ENVELOPE_VERSION_NO_BINDING];
        v1.extend_from_slice(&buf[1..1 + 8 + 1 + 4 + 8 + 1]);
        let binding_field = 2 + "mta1".len();
        v1.extend_from_slice(&buf[1 + 8 + 1 + 4 + 8 + 1 + binding_field..]);
        let old = SpooledEnvelope::decode(&v1).expect("version 1 still decodes");
        assert_eq!(old.binding, DEFAULT_BINDING);
        assert_eq!(old.mail_from, v2.mail_from);
        assert_eq!(old.rcpts, v2.rcpts);
    }

    #[test]
    fn extensions_are_one_per_tag_and_bounded() {
        let mut env = sample();
        env.set_extension(1, b"y".to_vec());
        env.set_extension(16, b"{}".to_vec());
        assert_eq!(env.extension(1), Some(&b"y"[..]));
        assert_eq!(env.extensions.len(), 2);
        let mut buf = Vec::new();
        env.encode(&mut buf);
        assert_eq!(SpooledEnvelope::decode(&buf).unwrap(), env);
        // The same tag twice is refused on the way back in.
        env.extensions.push(EnvelopeExtension {
            tag: 16,
            value: Vec::new(),
        });
        let mut buf = Vec::new();
        env.encode(&mut buf);
        assert_eq!(SpooledEnvelope::decode(&buf), Err(RecordError::Value));
    }

    #[test]
    fn every_truncation_and_bit_flip_decodes_or_errors_without_panic() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        for len in 0..buf.len() {
            assert!(SpooledEnvelope::decode(&buf[..len]).is_err());
        }
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let _ = SpooledEnvelope::decode(&flipped);
        }
    }
}
