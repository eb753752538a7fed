//! Tracking tokens: what a click or open link carries, encrypted and
//! authenticated (ChaCha20-Poly1305, ring) and written as base64url.
//! Owns: the token layout, sealing and opening, expiry checks.
//! May call: `ring::{aead, hmac}`, `b64`.
//! Never: clocks (the caller passes `now`), randomness, the network.
//!
//! Layout (version 1): `version u8 | nonce [12] | sealed | tag [16]`, where
//! `sealed` is the ChaCha20-Poly1305 encryption (additional data: the
//! version byte) of
//! `kind u8 | flags u8 | expires_at u64 (unix s, big-endian)` and seven
//! fields, each `len u16 (big-endian) | bytes`: target_url, link_name,
//! transmission_id, message_id, recipient, campaign_id, metadata.
//! The nonce is synthetic: HMAC-SHA256(nonce key, plaintext)[..12], so
//! the same link always gives the same token and no randomness is needed
//! (SIV style). Both keys are derived from the operator's secret with
//! HMAC-SHA256.

use ring::{aead, hmac};

use super::b64;

pub const TOKEN_VERSION: u8 = 1;
/// Bytes of the Poly1305 tag that ends a token.
pub const TAG_BYTES: usize = 16;
/// Bytes of the (synthetic) nonce after the version byte.
pub const NONCE_BYTES: usize = 12;
/// Shortest key `TrackingKey::new` accepts.
pub const KEY_BYTES_MIN: usize = 16;
/// Longest target URL a click token carries (SparkPost: longer links fail).
pub const TARGET_URL_BYTES_MAX: usize = 4096;
/// Longest link name, ids, recipient and campaign in a token.
pub const FIELD_BYTES_MAX: usize = 1024;
/// Longest metadata (JSON text) in a token, whatever `max_metadata_len` says.
pub const METADATA_BYTES_MAX: usize = 16 * 1024;
/// Longest encoded token `decode` looks at.
pub const ENCODED_TOKEN_BYTES_MAX: usize = 40 * 1024;

/// kind, flags, expires_at: the start of the plaintext.
const HEADER_BYTES: usize = 2 + 8;
const _: () = assert!(TAG_BYTES == 16 && NONCE_BYTES == aead::NONCE_LEN);
const FIELD_COUNT: usize = 7;
const _: () = assert!(METADATA_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(
    ENCODED_TOKEN_BYTES_MAX / 4 * 3
        >= HEADER_BYTES
            + 2 * FIELD_COUNT
            + TARGET_URL_BYTES_MAX
            + 5 * FIELD_BYTES_MAX
            + METADATA_BYTES_MAX
            + TAG_BYTES
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenKind {
    /// A rewritten link: `/f/<token>`.
    #[default]
    Click,
    /// The open pixel: `/q/<token>`.
    Open,
}

/// The data of one token, borrowed (what `encode` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link<'a> {
    pub kind: TokenKind,
    /// Unix seconds after which the token is refused (`tracking_link_expiry`).
    pub expires_at: u64,
    /// `data-msys-unsubscribe="1"`: a click is a `link_unsubscribe`.
    pub unsubscribe: bool,
    /// Empty for open tokens.
    pub target_url: &'a str,
    /// `data-msys-linkname`; empty when the link has none.
    pub link_name: &'a str,
    pub transmission_id: &'a str,
    pub message_id: &'a str,
    /// The recipient address (`rcpt_to`).
    pub recipient: &'a str,
    pub campaign_id: &'a str,
    /// Metadata as JSON text; empty when not included.
    pub metadata: &'a str,
}

/// A decoded token (what `decode` returns).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Token {
    pub kind: TokenKind,
    pub expires_at: u64,
    pub unsubscribe: bool,
    pub target_url: String,
    pub link_name: String,
    pub transmission_id: String,
    pub message_id: String,
    pub recipient: String,
    pub campaign_id: String,
    pub metadata: String,
}

impl Token {
    pub fn as_link(&self) -> Link<'_> {
        Link {
            kind: self.kind,
            expires_at: self.expires_at,
            unsubscribe: self.unsubscribe,
            target_url: &self.target_url,
            link_name: &self.link_name,
            transmission_id: &self.transmission_id,
            message_id: &self.message_id,
            recipient: &self.recipient,
            campaign_id: &self.campaign_id,
            metadata: &self.metadata,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("tracking key shorter than {KEY_BYTES_MIN} bytes")]
    KeyTooShort,
    #[error("token field '{0}' too long")]
    FieldTooLong(&'static str),
    #[error("token longer than {ENCODED_TOKEN_BYTES_MAX} bytes")]
    TooLong,
    #[error("token malformed")]
    Malformed,
    #[error("token does not authenticate (forged, altered or another key)")]
    Forged,
    #[error("token version {0} not supported")]
    UnsupportedVersion(u8),
    /// Genuine but past `expires_at`; the token is given back so a caller
    /// may still redirect without reporting the event.
    #[error("token expired")]
    Expired(Box<Token>),
}

/// The keys tokens are sealed with, derived from one secret. `Send + Sync`;
/// share one.
pub struct TrackingKey {
    nonce_key: hmac::Key,
    aead_key: aead::LessSafeKey,
}

impl std::fmt::Debug for TrackingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackingKey(..)")
    }
}

impl TrackingKey {
    pub fn new(secret: &[u8]) -> Result<TrackingKey, TokenError> {
        if secret.len() < KEY_BYTES_MIN {
            return Err(TokenError::KeyTooShort);
        }
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let nonce_secret = hmac::sign(&master, b"ecelerity tracking token v1 nonce");
        let aead_secret = hmac::sign(&master, b"ecelerity tracking token v1 aead");
        let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, aead_secret.as_ref())
            .expect("a 32-byte key for ChaCha20-Poly1305");
        Ok(TrackingKey {
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_secret.as_ref()),
            aead_key: aead::LessSafeKey::new(unbound),
        })
    }

    /// Appends the token for `link` (base64url) to `out`.
    pub fn encode(&self, link: &Link<'_>, out: &mut Vec<u8>) -> Result<(), TokenError> {
        let mut scratch = Vec::new();
        self.encode_with(link, &mut scratch, out)
    }

    /// `encode` with a caller-owned scratch buffer (cleared first), so a
    /// loop over links allocates once.
    pub fn encode_with(
        &self,
        link: &Link<'_>,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), TokenError> {
        let fields: [(&'static str, &str, usize); FIELD_COUNT] = [
            ("target_url", link.target_url, TARGET_URL_BYTES_MAX),
            ("link_name", link.link_name, FIELD_BYTES_MAX),
            ("transmission_id", link.transmission_id, FIELD_BYTES_MAX),
            ("message_id", link.message_id, FIELD_BYTES_MAX),
            ("recipient", link.recipient, FIELD_BYTES_MAX),
            ("campaign_id", link.campaign_id, FIELD_BYTES_MAX),
            ("metadata", link.metadata, METADATA_BYTES_MAX),
        ];
        for (name, value, max) in fields {
            if value.len() > max {
                return Err(TokenError::FieldTooLong(name));
            }
        }
        const PLAIN_AT: usize = 1 + NONCE_BYTES;
        scratch.clear();
        scratch.push(TOKEN_VERSION);
        scratch.extend_from_slice(&[0; NONCE_BYTES]);
        scratch.push(match link.kind {
            TokenKind::Click => 0,
            TokenKind::Open => 1,
        });
        scratch.push(link.unsubscribe as u8);
        scratch.extend_from_slice(&link.expires_at.to_be_bytes());
        for (_, value, _) in fields {
            scratch.extend_from_slice(&(value.len() as u16).to_be_bytes());
            scratch.extend_from_slice(value.as_bytes());
        }
        let synthetic = hmac::sign(&self.nonce_key, &scratch[PLAIN_AT..]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&synthetic.as_ref()[..NONCE_BYTES]);
        scratch[1..PLAIN_AT].copy_from_slice(&nonce);
        let tag = self
            .aead_key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from([TOKEN_VERSION]),
                &mut scratch[PLAIN_AT..],
            )
            .expect("a token is far below ChaCha20-Poly1305's length limit");
        scratch.extend_from_slice(tag.as_ref());
        b64::encode(scratch, out);
        Ok(())
    }

    /// Checks and opens a token. `now` is unix seconds.
    pub fn decode(&self, text: &[u8], now: u64) -> Result<Token, TokenError> {
        if text.len() > ENCODED_TOKEN_BYTES_MAX {
            return Err(TokenError::TooLong);
        }
        let mut raw = Vec::new();
        b64::decode(text, &mut raw).map_err(|_| TokenError::Malformed)?;
        if raw.len() < 1 + NONCE_BYTES + HEADER_BYTES + 2 * FIELD_COUNT + TAG_BYTES {
            return Err(TokenError::Malformed);
        }
        if raw[0] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(raw[0]));
        }
        let (head, sealed) = raw.split_at_mut(1 + NONCE_BYTES);
        let nonce = aead::Nonce::try_assume_unique_for_key(&head[1..])
            .map_err(|_| TokenError::Malformed)?;
        let body: &[u8] = self
            .aead_key
            .open_in_place(nonce, aead::Aad::from([TOKEN_VERSION]), sealed)
            .map_err(|_| TokenError::Forged)?;
        // Authentic from here on, but parse defensively all the same.
        let kind = match body[0] {
            0 => TokenKind::Click,
            1 => TokenKind::Open,
            _ => return Err(TokenError::Malformed),
        };
        if body[1] > 1 {
            return Err(TokenError::Malformed);
        }
        let expires_at = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
        let mut rest = &body[HEADER_BYTES..];
        let mut next = || -> Result<String, TokenError> {
            let len_bytes = rest.get(..2).ok_or(TokenError::Malformed)?;
            let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
            let value = rest.get(2..2 + len).ok_or(TokenError::Malformed)?;
            let s = std::str::from_utf8(value).map_err(|_| TokenError::Malformed)?;
            rest = &rest[2 + len..];
            Ok(s.to_owned())
        };
        let token = Token {
            kind,
            expires_at,
            unsubscribe: body[1] == 1,
            target_url: next()?,
            link_name: next()?,
            transmission_id: next()?,
            message_id: next()?,
            recipient: next()?,
            campaign_id: next()?,
            metadata: next()?,
        };
        if !rest.is_empty() {
            return Err(TokenError::Malformed);
        }
        if now > token.expires_at {
            return Err(TokenError::Expired(Box::new(token)));
        }
        Ok(token)
    }
}

/// Opens a token with the first of `keys` it authenticates under (the
/// current key first, then keys being retired), so the secret can be
/// rotated without breaking links already sent. `Forged` when none fits.
pub fn decode_any(keys: &[TrackingKey], text: &[u8], now: u64) -> Result<Token, TokenError> {
    let mut last = TokenError::Forged;
    for k in keys {
        match k.decode(text, now) {
            Err(TokenError::Forged) => continue,
            other @ Ok(_) => return other,
            Err(e) => last = e,
        }
        break;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TrackingKey {
        TrackingKey::new(b"0123456789abcdef-test-key").unwrap()
    }

    fn sample() -> Link<'static> {
        Link {
            kind: TokenKind::Click,
            expires_at: 2_000_000_000,
            unsubscribe: true,
            target_url: "https://example.com/a?b=c&d=é",
            link_name: "Buy now",
            transmission_id: "11668787484950529",
            message_id: "00000bb3545c0100a205",
            recipient: "wilma@flintstone.com",
            campaign_id: "spring",
            metadata: "{\"k\":\"v\"}",
        }
    }

    fn encoded(link: &Link<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        key().encode(link, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let t = encoded(&sample());
        assert!(t.iter().all(|&b| b64::is_alphabet(b)));
        let back = key().decode(&t, 1_000).unwrap();
        assert_eq!(back.as_link(), sample());
        let open = Link {
            kind: TokenKind::Open,
            target_url: "",
            unsubscribe: false,
            ..sample()
        };
        assert_eq!(key().decode(&encoded(&open), 0).unwrap().as_link(), open);
        let empty = Link::default();
        assert_eq!(key().decode(&encoded(&empty), 0).unwrap().as_link(), empty);
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let t = encoded(&sample());
        for i in 0..t.len() {
            for replacement in [b'A', b'z', b'-'] {
                if t[i] == replacement {
                    continue;
                }
                let mut bad = t.clone();
                bad[i] = replacement;
                let r = key().decode(&bad, 0);
                assert!(
                    matches!(
                        r,
                        Err(TokenError::Forged
                            | TokenError::Malformed
                            | TokenError::UnsupportedVersion(_))
                    ),
                    "byte {i}: {r:?}"
                );
            }
        }
        // Truncated and extended.
        assert!(key().decode(&t[..t.len() - 1], 0).is_err());
        assert!(key().decode(&t[..t.len() - 4], 0).is_err());
        let mut longer = t.clone();
        longer.extend_from_slice(b"AAAA");
        assert!(key().decode(&longer, 0).is_err());
    }

    #[test]
    fn contents_are_not_readable_and_tokens_are_deterministic() {
        let t = encoded(&sample());
        let mut raw = Vec::new();
        b64::decode(&t, &mut raw).unwrap();
        for secret in [
            &b"wilma@flintstone.com"[..],
            b"spring",
            b"example.com",
            b"tier",
        ] {
            assert!(!raw.windows(secret.len()).any(|w| w == secret));
        }
        assert_eq!(encoded(&sample()), t, "same link, same token");
        let other = Link {
            recipient: "fred@flintstone.com",
            ..sample()
        };
        let t2 = encoded(&other);
        assert_ne!(t2, t);
        assert_ne!(
            t2[..20],
            t[..20],
            "a different nonce for different contents"
        );
    }

    #[test]
    fn rotation_tries_every_key() {
        let old = key();
        let new = TrackingKey::new(b"the-new-key-0123456789").unwrap();
        let stranger = TrackingKey::new(b"nobody-s-key-0123456789").unwrap();
        let t = encoded(&sample());
        let keys = [new, old];
        assert_eq!(decode_any(&keys, &t, 0).unwrap().as_link(), sample());
        assert_eq!(decode_any(&[stranger], &t, 0), Err(TokenError::Forged));
        assert_eq!(decode_any(&[], &t, 0), Err(TokenError::Forged));
        assert_eq!(decode_any(&keys, b"!", 0), Err(TokenError::Malformed));
        assert!(matches!(
            decode_any(&keys, &t, u64::MAX),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn another_key_is_refused() {
        let other = TrackingKey::new(b"another-key-0123456789").unwrap();
        assert_eq!(
            other.decode(&encoded(&sample()), 0),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn forged_structure_without_key_is_refused() {
        // A token built by hand: right shape, made-up nonce, body and tag.
        let mut raw = vec![TOKEN_VERSION];
        raw.extend_from_slice(&[7u8; NONCE_BYTES]);
        raw.extend_from_slice(&[0u8; HEADER_BYTES + 2 * FIELD_COUNT + TAG_BYTES]);
        let mut text = Vec::new();
        b64::encode(&raw, &mut text);
        assert_eq!(key().decode(&text, 0), Err(TokenError::Forged));
        raw[0] = 2;
        text.clear();
        b64::encode(&raw, &mut text);
        assert_eq!(
            key().decode(&text, 0),
            Err(TokenError::UnsupportedVersion(2))
        );
        assert_eq!(key().decode(b"", 0), Err(TokenError::Malformed));
        assert_eq!(key().decode(b"!!!!", 0), Err(TokenError::Malformed));
        let huge = vec![b'A'; ENCODED_TOKEN_BYTES_MAX + 1];
        assert_eq!(key().decode(&huge, 0), Err(TokenError::TooLong));
    }

    #[test]
    fn expiry() {
        let t = encoded(&sample());
        assert!(key().decode(&t, 2_000_000_000).is_ok());
        match key().decode(&t, 2_000_000_001) {
            Err(TokenError::Expired(tok)) => assert_eq!(tok.as_link(), sample()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits() {
        assert_eq!(
            TrackingKey::new(b"short").unwrap_err(),
            TokenError::KeyTooShort
        );
        let long = "x".repeat(TARGET_URL_BYTES_MAX + 1);
        let link = Link {
            target_url: &long,
            ..sample()
        };
        assert_eq!(
            key().encode(&link, &mut Vec::new()),
            Err(TokenError::FieldTooLong("target_url"))
        );
        let name = "n".repeat(FIELD_BYTES_MAX + 1);
        let link = Link {
            link_name: &name,
            ..sample()
        };
        assert_eq!(
            key().encode(&link, &mut Vec::new()),
            Err(TokenError::FieldTooLong("link_name"))
        );
        // The largest token decodes.
        let url = "u".repeat(TARGET_URL_BYTES_MAX);
        let f = "f".repeat(FIELD_BYTES_MAX);
        let meta = "m".repeat(METADATA_BYTES_MAX);
        let big = Link {
            kind: TokenKind::Click,
            expires_at: 1,
            unsubscribe: false,
            target_url: &url,
            link_name: &f,
            transmission_id: &f,
            message_id: &f,
            recipient: &f,
            campaign_id: &f,
            metadata: &meta,
        };
        assert_eq!(key().decode(&encoded(&big), 0).unwrap().as_link(), big);
    }
}
