//! Engagement tracking (MOMENTUM.md 9): sealed tokens and link rewriting.
//! Owns: the token codec (`token`), the rewriters (`rewrite`), the URL
//! path shape (`parse_path`).
//! May call: `ring` (ChaCha20-Poly1305, HMAC-SHA256).
//! Never: I/O or clocks; the HTTP side (redirects, events) is the caller's.
//!
//! URLs: click `<scheme>://<tracking_domain>/f/<token>` (with
//! `data-msys-sublink="p"`: `/f/p/<token>`), open
//! `<scheme>://<tracking_domain>/q/<token>`; `<token>` is base64url.

mod b64;
mod rewrite;
mod token;

pub use rewrite::{
    MessageIds, RewriteStats, Scheme, Tracker, TrackingOptions, ATTRIBUTES_PER_TAG_MAX,
    LINKS_PER_PART_MAX, LINK_NAME_BYTES_MAX, SUBLINK_BYTES_MAX, TAG_BYTES_MAX,
    TEXT_MARKER_BYTES_MAX, TRACKING_DOMAIN_BYTES_MAX,
};
pub use token::{
    decode_any, Link, Token, TokenError, TokenKind, TrackingKey, ENCODED_TOKEN_BYTES_MAX,
    FIELD_BYTES_MAX, KEY_BYTES_MIN, METADATA_BYTES_MAX, NONCE_BYTES, TAG_BYTES,
    TARGET_URL_BYTES_MAX, TOKEN_VERSION,
};

/// The metadata a token carries, as JSON text appended to `out`: the
/// transmission's `metadata` object with the recipient's keys over it
/// (shallow). Nothing is written when both are missing or empty; a
/// non-object is ignored.
pub fn merged_metadata(
    recipient: Option<&serde_json::Value>,
    transmission: Option<&serde_json::Value>,
    out: &mut Vec<u8>,
) {
    let objects = [transmission, recipient].map(|v| v.and_then(|v| v.as_object()));
    let mut merged = serde_json::Map::new();
    for o in objects.into_iter().flatten() {
        for (k, v) in o {
            merged.insert(k.clone(), v.clone());
        }
    }
    if merged.is_empty() {
        return;
    }
    serde_json::to_writer(out, &merged).expect("a JSON map serialises");
}

/// A request path on the tracking domain, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackingPath<'a> {
    pub kind: TokenKind,
    /// `data-msys-sublink` of a click link.
    pub sublink: Option<&'a str>,
    /// Give this to `TrackingKey::decode`.
    pub token: &'a str,
}

/// Splits `/f/<token>`, `/f/<sublink>/<token>` or `/q/<token>` (the path
/// only, without `?query`). None for any other path.
pub fn parse_path(path: &str) -> Option<TrackingPath<'_>> {
    let (kind, rest) = if let Some(r) = path.strip_prefix("/f/") {
        (TokenKind::Click, r)
    } else if let Some(r) = path.strip_prefix("/q/") {
        (TokenKind::Open, r)
    } else {
        return None;
    };
    let (sublink, token) = match rest.split_once('/') {
        Some((s, t)) if kind == TokenKind::Click => (Some(s), t),
        Some(_) => return None,
        None => (None, rest),
    };
    let token_ok = !token.is_empty()
        && token.len() <= ENCODED_TOKEN_BYTES_MAX
        && token.bytes().all(b64::is_alphabet);
    let sublink_ok = sublink.is_none_or(|s| {
        !s.is_empty()
            && s.len() <= SUBLINK_BYTES_MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    (token_ok && sublink_ok).then_some(TrackingPath {
        kind,
        sublink,
        token,
    })
}

#[cfg(test)]
mod tests;
