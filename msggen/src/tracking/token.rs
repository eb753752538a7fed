//! Tracking tokens: what a click or open link carries, signed with
//! HMAC-SHA256 (truncated to 128 bits) and written as base64url.
//! Owns: the token layout, signing and verification, expiry checks.
//! May call: `ring::hmac`, `b64`.
//! Never: clocks (the caller passes `now`), the network.
//!
//! Layout (version 1), all integers big-endian:
//! `version u8 | kind u8 | flags u8 | expires_at u64 (unix s) |`
//! then seven fields, each `len u16 | bytes`: target_url, link_name,
//! transmission_id, message_id, recipient, campaign_id, metadata;
//! then `tag [16]` = HMAC-SHA256(key, everything before)[..16].

use ring::hmac;

use super::b64;

pub const TOKEN_VERSION: u8 = 1;
/// Bytes of the HMAC-SHA256 tag kept in a token (128 bits).
pub const TAG_BYTES: usize = 16;
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

const HEADER_BYTES: usize = 3 + 8;
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
    #[error("token signature does not match (forged or altered)")]
    Forged,
    #[error("token version {0} not supported")]
    UnsupportedVersion(u8),
    /// Genuine but past `expires_at`; the token is given back so a caller
    /// may still redirect without reporting the event.
    #[error("token expired")]
    Expired(Box<Token>),
}

/// The HMAC key tokens are signed with. `Send + Sync`; share one.
pub struct TrackingKey {
    key: hmac::Key,
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
        Ok(TrackingKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
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
        scratch.clear();
        scratch.push(TOKEN_VERSION);
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
        let tag = hmac::sign(&self.key, scratch);
        scratch.extend_from_slice(&tag.as_ref()[..TAG_BYTES]);
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
        if raw.len() < HEADER_BYTES + 2 * FIELD_COUNT + TAG_BYTES {
            return Err(TokenError::Malformed);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_BYTES);
        let want = hmac::sign(&self.key, body);
        if !constant_time_eq(&want.as_ref()[..TAG_BYTES], tag) {
            return Err(TokenError::Forged);
        }
        // Signed by us from here on, but parse defensively all the same.
        if body[0] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(body[0]));
        }
        let kind = match body[1] {
            0 => TokenKind::Click,
            1 => TokenKind::Open,
            _ => return Err(TokenError::Malformed),
        };
        if body[2] > 1 {
            return Err(TokenError::Malformed);
        }
        let expires_at = u64::from_be_bytes(body[3..11].try_into().expect("8 bytes"));
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
            unsubscribe: body[2] == 1,
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
                    matches!(r, Err(TokenError::Forged | TokenError::Malformed)),
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
    fn another_key_is_refused() {
        let other = TrackingKey::new(b"another-key-0123456789").unwrap();
        assert_eq!(
            other.decode(&encoded(&sample()), 0),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn forged_structure_without_key_is_refused() {
        // A token built by hand with a made-up tag.
        let mut raw = vec![TOKEN_VERSION, 0, 0];
        raw.extend_from_slice(&u64::MAX.to_be_bytes());
        for _ in 0..FIELD_COUNT {
            raw.extend_from_slice(&[0, 0]);
        }
        raw.extend_from_slice(&[0u8; TAG_BYTES]);
        let mut text = Vec::new();
        b64::encode(&raw, &mut text);
        assert_eq!(key().decode(&text, 0), Err(TokenError::Forged));
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
