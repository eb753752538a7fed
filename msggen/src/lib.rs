//! ecelerity message generation core: the template language and
//! engagement-tracking links (issue 13 items 3 and 5). Pure: bytes and JSON
//! in, bytes out; no I/O, no clock (callers pass `now`), no engine types.
//! Owns: template compile/render, tracking tokens, link rewriting.
//! May call: `serde_json` (data), `ring` (ChaCha20-Poly1305, HMAC-SHA256).
//! Never: the network, files, the spool, global state.
//!
//! # Templates (`template`)
//!
//! ```
//! use ecelerity_msggen::template::{Context, Scope, Template};
//! let t = Template::compile("Hi {{name or 'there'}}{{if vip}}, VIP{{end}}!").unwrap();
//! let rcpt = serde_json::json!({"name": "Ann & Bo", "vip": true});
//! let scope = Scope { layers: &[&rcpt], address_email: "ann@example.com", ..Default::default() };
//! let mut out = Vec::new();
//! t.render(&scope, Context::Html, &mut out).unwrap();
//! assert_eq!(out, b"Hi Ann &amp; Bo, VIP!");
//! ```
//!
//! - `Template::compile(&str)` (or `compile_with(&str, &Limits)`) once per
//!   template version; errors carry line and column. A `Template` is
//!   `Send + Sync`: share one `Arc<Template>` across shards.
//! - `Template::render(&Scope, Context, &mut Vec<u8>)` per recipient and
//!   part: `Context::Html` escapes `{{x}}`, `Context::Text` does not;
//!   `{{{x}}}` is raw in both. On error the buffer is left as it was.
//! - `Scope::layers` are the substitution data, highest precedence first
//!   (recipient substitution_data, recipient metadata, transmission
//!   substitution_data, transmission metadata; `template::layers(rcpt, tx)`
//!   picks them out of SparkPost-shaped JSON); the other fields are the
//!   reserved variables.
//!
//! # Tracking (`tracking`)
//!
//! - `TrackingKey::new(secret)`; `Token` is the data a link carries;
//!   `TrackingKey::encode(&Link, &mut Vec<u8>)` appends an encrypted and
//!   authenticated base64url token, `TrackingKey::decode(&[u8], now)`
//!   refuses forged, altered and expired ones and gives the `Token` back.
//! - `Tracker` (options + ids + key) rewrites one message's parts:
//!   `rewrite_html` (click links in `<a href>`, open pixel before
//!   `</body>`) and `rewrite_text` (bare URLs).
//! - `merged_metadata(rcpt, tx, &mut out)` is the metadata JSON a token
//!   carries (recipient keys over transmission keys).
//! - `parse_path("/f/<token>")` splits a request path on the tracking
//!   domain into the kind, the sublink and the token.
//!
//! # Content (`content`)
//!
//! - `Content::compile(&ContentSource)` compiles a template version's
//!   subject, from, reply_to, headers, text and html together (errors name
//!   the part: `html: line 2, column 3: ...`).
//! - `Content::render(&Scope, Option<&Tracker>, &mut Rendered)` renders all
//!   parts for one recipient into reusable buffers, applies tracking to
//!   text and html, and turns CR/LF from the data into spaces in header
//!   parts.
//!
//! docs/templates.md describes the language and the URL format.

pub mod content;
pub mod template;
pub mod tracking;
