//! DKIM signing (RFC 6376) with Momentum's `opendkim` stanza, through
//! mail-auth (ring).
//!
//! A message is signed once, after DATA and before it is spooled (where
//! Momentum signs: `core_final_validation`), when `opendkim_sign` is true
//! for its binding and one of its recipient domains. The signer is chosen
//! by the domain of the From header: the `dkim_domain` of that name, or of
//! a parent domain whose `base_domain` covers it (`Signers::pick`). The
//! DKIM-Signature goes on top of the message, above the Received header.
//!
//! The body is hashed as it arrives: [`BodySigner`] keeps the header block
//! and a running hash of the canonical body; `finish` signs. An inline
//! message is hashed at end of data from the buffer it is in; a streamed
//! one chunk by chunk as the chunks go to its body file, whose first bytes
//! are left free for the signature: its length is known once the header
//! block is (`BodySigner::header_len`, every variable part of it has a
//! fixed width), so the file never has to be read again or rewritten.
//!
//! Owns: the loaded keys ([`Signers`], loaded by a function so a reload
//! can call it again), the choice of signer, the signing arithmetic.
//! Pure but for `Signers::load`, which reads the key files.
//! May call: `config` (the stanza). Never: I/O of a session, the spool.

use std::collections::HashMap;

use mail_auth::common::crypto::{
    DkimKey, Ed25519Key, HashContext, HashImpl, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable, Writer};
use mail_auth::dkim::canonicalize::{BodyHasher, CanonicalHeaders};
use mail_auth::dkim::{Canonicalization, Signature};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{Canon, ConfigError, Digest, OpendkimConfig};

/// Largest key file read (a 4096-bit RSA key in PEM is about 3.3 KB).
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Bytes of an RSA-SHA256 signature with a 2048-bit key; keys of other
/// sizes sign with their own modulus length.
pub const RSA_2048_SIGNATURE_BYTES: usize = 256;
/// Bytes of an Ed25519 signature.
pub const ED25519_SIGNATURE_BYTES: usize = 64;
/// Bytes of a SHA-256 body hash.
const BODY_HASH_BYTES: usize = 32;

type Hash = <Sha256 as HashImpl>::Context;

/// One `dkim_domain` with its key loaded.
pub struct Signer {
    id: SignerId,
    /// The From domain it signs for (lowercase).
    pub name: String,
    /// Covers subdomains of `name` (its `base_domain` is `name` or a
    /// parent of it).
    covers_subdomains: bool,
    key: DkimKey,
    /// Bytes of a signature this key makes.
    signature_bytes: usize,
    /// d=, s=, a=, c=, the header list; the rest is filled per message.
    template: Signature,
}

/// Every signer of the `opendkim` stanza, by From domain. Read-only once
/// loaded: the shards share it.
pub struct Signers {
    signers: Vec<Signer>,
    by_name: HashMap<String, usize>,
}

fn canonicalization(canon: Canon) -> Canonicalization {
    match canon {
        Canon::Relaxed => Canonicalization::Relaxed,
        Canon::Simple => Canonicalization::Simple,
    }
}

/// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, RSA or Ed25519)
/// or PKCS#1 (`BEGIN RSA PRIVATE KEY`). Returns the key and the bytes of
/// its signatures.
pub fn read_key(pem: &[u8], digest: Digest) -> Result<(DkimKey, usize), String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM key ({e})"))?;
    match digest {
        Digest::RsaSha256 => {
            if let PrivateKeyDer::Pkcs8(p) = &der {
                if Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).is_ok() {
                    return Err(
                        "an Ed25519 key, but digest is rsa-sha256 (set digest = \"ed25519-sha256\")"
                            .into(),
                    );
                }
            }
            let key = RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| format!("not a usable RSA key ({e})"))?;
            let bytes = key.public_key().len();
            let modulus_bytes = rsa_modulus_bytes(&key.public_key()).unwrap_or(bytes);
            if modulus_bytes < 128 {
                return Err("RSA keys under 1024 bits are refused (RFC 8301)".into());
            }
            Ok((DkimKey::Rsa(key), modulus_bytes))
        }
        Digest::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(p) = der else {
                return Err("not a PKCS#8 Ed25519 key (openssl genpkey -algorithm ed25519)".into());
            };
            let key =
                Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).map_err(|e| {
                    format!("not an Ed25519 key ({e}); an RSA key needs digest = \"rsa-sha256\"")
                })?;
            Ok((DkimKey::Ed25519(key), ED25519_SIGNATURE_BYTES))
        }
    }
}

/// The modulus length of an RSA public key in PKCS#1 DER
/// (`SEQUENCE { INTEGER n, INTEGER e }`), leading zero left out.
fn rsa_modulus_bytes(der: &[u8]) -> Option<usize> {
    fn header(der: &[u8], tag: u8) -> Option<(usize, &[u8])> {
        let (&t, rest) = der.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        if first < 0x80 {
            return Some((first as usize, rest));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        Some((len, &rest[n..]))
    }
    let (_, seq) = header(der, 0x30)?;
    let (len, int) = header(seq, 0x02)?;
    let modulus = int.get(..len)?;
    let leading = modulus.iter().take_while(|b| **b == 0).count();
    Some(len - leading)
}

impl Signers {
    /// Loads the key of every `dkim_domain` (`%{d}` and `%{s}` expanded).
    /// Errors name the `key` line: the daemon does not start with them.
    pub fn load(config: &OpendkimConfig) -> Result<Signers, ConfigError> {
        let mut signers = Vec::with_capacity(config.domains.len());
        let mut by_name = HashMap::with_capacity(config.domains.len());
        for domain in &config.domains {
            let path = domain.key_path();
            let err = |what: String| {
                domain.key_at.error(format!(
                    "dkim_domain `{}`: key {}: {what}",
                    domain.name,
                    path.display()
                ))
            };
            let size = std::fs::metadata(&path)
                .map_err(|e| err(e.to_string()))?
                .len();
            if size > KEY_FILE_BYTES_MAX {
                return Err(err(format!("larger than {KEY_FILE_BYTES_MAX} bytes")));
            }
            let pem = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
            let (key, signature_bytes) = read_key(&pem, domain.digest).map_err(err)?;
            let template = Signature {
                v: 1,
                a: key.algorithm(),
                d: domain.signing_domain().to_string(),
                s: domain.selector.clone(),
                h: domain.headerlist.clone(),
                ch: canonicalization(domain.header_canon),
                cb: canonicalization(domain.body_canon),
                ..Signature::default()
            };
            by_name.insert(domain.name.clone(), signers.len());
            signers.push(Signer {
                id: SignerId(signers.len()),
                name: domain.name.clone(),
                covers_subdomains: domain
                    .base_domain
                    .as_deref()
                    .is_some_and(|base| crate::config::dkim_is_within(&domain.name, base)),
                key,
                signature_bytes,
                template,
            });
        }
        Ok(Signers { signers, by_name })
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    pub fn get(&self, id: SignerId) -> &Signer {
        &self.signers[id.0]
    }

    /// The signers of `config`'s `opendkim` stanza; None without one.
    pub fn for_config(config: &crate::config::Config) -> Result<Option<Signers>, ConfigError> {
        config.opendkim().map(Signers::load).transpose()
    }

    /// The signer for mail from `from_domain` (lowercase): its own
    /// `dkim_domain`, else that of the nearest parent whose `base_domain`
    /// covers subdomains.
    pub fn pick(&self, from_domain: &str) -> Option<&Signer> {
        if let Some(&i) = self.by_name.get(from_domain) {
            return Some(&self.signers[i]);
        }
        let mut rest = from_domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(&i) = self.by_name.get(rest) {
                let signer = &self.signers[i];
                if signer.covers_subdomains {
                    return Some(signer);
                }
            }
        }
        None
    }
}

/// Whether `opendkim_sign` asks for a message of `binding` to `rcpts` to
/// be signed: true for the binding and any recipient's domain. Only asked
/// when an `opendkim` stanza is configured.
pub fn wanted(config: &crate::config::Config, binding: &str, rcpts: &[String]) -> bool {
    rcpts.iter().any(|rcpt| {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        config.delivery(binding, domain).opendkim_sign
    })
}

/// The domain of the first From header in `header_block` (lowercase), or
/// None when there is no From or no domain in it.
pub fn from_domain(header_block: &[u8]) -> Option<String> {
    let (_, value) = Fields::new(header_block)
        .find(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"from"))?;
    let value = std::str::from_utf8(value).ok()?;
    // The address is in <> when there is a display name; else it is the
    // whole value (comments aside).
    let address = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value,
    };
    let at = address.rfind('@')?;
    let domain: String = address[at + 1..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '>' | ',' | ';' | '(' | ')'))
        .collect();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// The fields of a header block, top down, as mail-auth's canonicalization
/// takes them: the name as written (before the colon), and the value from
/// after the colon to the end of the field, continuation lines and the
/// final CRLF included. A line without a colon is a name with an empty
/// value (it matches no header to sign).
pub struct Fields<'a> {
    block: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(block: &'a [u8]) -> Fields<'a> {
        Fields { block, at: 0 }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.block[self.at..];
        if rest.is_empty() || rest.starts_with(b"\r\n") {
            return None;
        }
        // The field ends at the first line end not followed by a space or tab.
        let mut end = 0;
        loop {
            match rest[end..].iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    end += nl + 1;
                    if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = rest.len();
                    break;
                }
            }
        }
        let field = &rest[..end];
        self.at += end;
        Some(match field.iter().position(|b| *b == b':') {
            Some(colon) => (&field[..colon], &field[colon + 1..]),
            None => (field, &[][..]),
        })
    }
}

/// Where the header block of `message` ends: the offset of the body (after
/// the empty line), or None when no empty line was seen yet.
pub fn body_offset(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr_crlfcrlf(message).map(|at| at + 4)
}

fn memchr_crlfcrlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The signature input: canonical headers, then the DKIM-Signature with
/// an empty b= (RFC 6376 3.7).
struct Signable<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// Counts bytes written: the length of a rendering without keeping it.
struct ByteCount(usize);

impl Writer for ByteCount {
    fn write(&mut self, buf: &[u8]) {
        self.0 += buf.len();
    }
}

/// Why a message was not signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// None of the headers to sign is in the message.
    NoHeaders,
    /// The key refused (ring's error).
    Crypto(String),
    /// The signature came out another length than reserved (a defect).
    LengthChanged { reserved: usize, made: usize },
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::NoHeaders => write!(f, "none of the headers to sign is present"),
            SignError::Crypto(e) => write!(f, "signing failed: {e}"),
            SignError::LengthChanged { reserved, made } => write!(
                f,
                "signature is {made} bytes, {reserved} were reserved for it"
            ),
        }
    }
}

/// Which signer of a [`Signers`] (`Signers::pick`): a message being
/// signed keeps this, not a reference, so it can wait across awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignerId(usize);

/// One message being signed: its header block, kept, and the running hash
/// of its canonical body. The signer is named again at the end.
pub struct BodySigner {
    signer: SignerId,
    header_block: Vec<u8>,
    body: BodyHasher<Hash>,
    /// t= (seconds since the epoch).
    time: u64,
}

impl Signer {
    /// Starts signing a message whose header block (without the empty
    /// line) is `header_block`, at `time` (t=, seconds since the epoch).
    pub fn start(&self, header_block: &[u8], time: u64) -> BodySigner {
        BodySigner {
            signer: self.id,
            header_block: header_block.to_vec(),
            body: BodyHasher::new(<Sha256 as HashImpl>::hasher(), self.template.cb, 0),
            time,
        }
    }

    /// Signs a whole message in memory (header block, empty line, body):
    /// returns the DKIM-Signature header to put on top of it.
    pub fn sign(&self, message: &[u8], time: u64) -> Result<Vec<u8>, SignError> {
        let (headers, body) = match body_offset(message) {
            Some(at) => (&message[..at - 2], &message[at..]),
            None => (message, &[][..]),
        };
        let mut signing = self.start(headers, time);
        signing.body(body);
        signing.finish(self)
    }
}

impl BodySigner {
    pub fn signer(&self) -> SignerId {
        self.signer
    }

    /// Hashes the next part of the body.
    pub fn body(&mut self, chunk: &[u8]) {
        self.body.write(chunk);
    }

    /// The signature with everything but the hashes, and the headers it
    /// covers (RFC 6376 5.4.2: found bottom up; names absent from the
    /// message are signed as absent, after the present ones).
    fn signature<'h>(&'h self, signer: &Signer) -> (Signature, Vec<(&'h [u8], &'h [u8])>) {
        assert_eq!(
            signer.id, self.signer,
            "signed by the signer it started with"
        );
        signature_for(signer, &self.header_block, self.time)
    }
}

/// See `BodySigner::signature`.
fn signature_for<'h>(
    signer: &Signer,
    header_block: &'h [u8],
    time: u64,
) -> (Signature, Vec<(&'h [u8], &'h [u8])>) {
    {
        let template = &signer.template;
        let mut headers = Vec::with_capacity(template.h.len());
        let mut found = vec![false; template.h.len()];
        let mut signed = Vec::with_capacity(template.h.len());
        for (name, value) in Fields::new(header_block) {
            if let Some(pos) = template
                .h
                .iter()
                .position(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            {
                headers.push((name, value));
                found[pos] = true;
                signed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        signed.reverse();
        for (h, found) in template.h.iter().zip(found) {
            if !found {
                signed.push(h.clone());
            }
        }
        let mut signature = template.clone();
        signature.h = signed;
        signature.t = time;
        (signature, headers)
    }
}

impl BodySigner {
    /// The exact length of the DKIM-Signature header `finish` will make,
    /// known before the body is: every part of it that depends on the body
    /// or the key (bh=, b=) has a fixed width.
    pub fn header_len(&self, signer: &Signer) -> usize {
        let (mut signature, _) = self.signature(signer);
        signature.bh = vec![0; BODY_HASH_BYTES];
        signature.b = vec![0; signer.signature_bytes];
        let mut counter = ByteCount(0);
        signature.write_header(&mut counter);
        counter.0
    }

    /// Whether the header block holds any header to sign (else `finish`
    /// fails with `NoHeaders`).
    pub fn has_headers(&self, signer: &Signer) -> bool {
        !self.signature(signer).1.is_empty()
    }

    /// Signs with `signer` (the one it started with): the DKIM-Signature
    /// header (folded, ending in CRLF).
    pub fn finish(self, signer: &Signer) -> Result<Vec<u8>, SignError> {
        assert_eq!(
            signer.id, self.signer,
            "signed by the signer it started with"
        );
        let BodySigner {
            header_block,
            body,
            time,
            ..
        } = self;
        let (hash, _) = body.finish();
        let (mut signature, headers) = signature_for(signer, &header_block, time);
        if headers.is_empty() {
            return Err(SignError::NoHeaders);
        }
        signature.bh = hash.complete().as_ref().to_vec();
        signature.b = signer
            .key
            .sign(Signable {
                headers: signature.ch.canonical_headers(headers),
                signature: &signature,
            })
            .map_err(|e| SignError::Crypto(e.to_string()))?;
        assert_eq!(signature.bh.len(), BODY_HASH_BYTES);
        let mut out = Vec::with_capacity(512);
        signature.write_header(&mut out);
        Ok(out)
    }

    /// `finish`, the result checked to be `reserved` bytes long.
    pub fn finish_exact(self, signer: &Signer, reserved: usize) -> Result<Vec<u8>, SignError> {
        let header = self.finish(signer)?;
        if header.len() != reserved {
            return Err(SignError::LengthChanged {
                reserved,
                made: header.len(),
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests;
