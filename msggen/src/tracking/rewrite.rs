//! Engagement tracking in a rendered message: click links rewritten to
//! `<scheme>://<tracking_domain>/f/[<sublink>/]<token>`, the open pixel
//! `<scheme>://<tracking_domain>/q/<token>` inserted in the html part.
//! Owns: the tracking options, the HTML and text link scanners.
//! May call: `token` (signing).
//! Never: parse HTML into a tree, allocate per byte, trust the input: every
//! scan is bounded and malformed markup is copied through untouched.

use super::token::{Link, TokenKind, TrackingKey, TARGET_URL_BYTES_MAX};

/// Longest tag (`<a ...>`) the HTML scanner parses; longer ones are copied.
pub const TAG_BYTES_MAX: usize = 16 * 1024;
/// Most attributes in one tag the scanner parses.
pub const ATTRIBUTES_PER_TAG_MAX: usize = 64;
/// Most links tracked in one part; the rest are left as they are.
pub const LINKS_PER_PART_MAX: u32 = 1000;
/// Longest `[[...]]` attribute block after a text link.
pub const TEXT_MARKER_BYTES_MAX: usize = 1024;
/// Longest `data-msys-sublink` (letters, digits, `-`, `_`).
pub const SUBLINK_BYTES_MAX: usize = 64;
/// Longest link name kept (`data-msys-linkname`), in bytes.
pub const LINK_NAME_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The tracking options, Momentum's names (MOMENTUM.md 8 and 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingOptions {
    /// `open_tracking_enabled` (false).
    pub open_tracking_enabled: bool,
    /// `click_tracking_enabled` (false).
    pub click_tracking_enabled: bool,
    /// `open_tracking_scheme` (http).
    pub open_tracking_scheme: Scheme,
    /// `click_tracking_scheme` (http).
    pub click_tracking_scheme: Scheme,
    /// `tracking_domain` (`localhost:8080`): host[:port] of the tracking server.
    pub tracking_domain: String,
    /// `tracking_link_expiry` in seconds (31536000, one year).
    pub tracking_link_expiry: u64,
    /// `engagement_tracker { click_tracking_include_metadata }` (true).
    pub click_tracking_include_metadata: bool,
    /// `engagement_tracker { max_metadata_len }` (1000 bytes): longer
    /// metadata is left out of tokens.
    pub max_metadata_len: usize,
}

impl Default for TrackingOptions {
    fn default() -> Self {
        TrackingOptions {
            open_tracking_enabled: false,
            click_tracking_enabled: false,
            open_tracking_scheme: Scheme::Http,
            click_tracking_scheme: Scheme::Http,
            tracking_domain: "localhost:8080".to_string(),
            tracking_link_expiry: 31_536_000,
            click_tracking_include_metadata: true,
            max_metadata_len: 1000,
        }
    }
}

/// Longest `tracking_domain` (a host name and a port).
pub const TRACKING_DOMAIN_BYTES_MAX: usize = 255 + 6;

impl TrackingOptions {
    /// What is wrong with these options, for a config error
    /// (`file:line: ...`); the rewriters trust them after this.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.tracking_domain;
        let chars_ok = d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        if d.is_empty() || d.len() > TRACKING_DOMAIN_BYTES_MAX || !chars_ok {
            return Err(format!(
                "tracking_domain \"{d}\" must be a host name or address with an optional :port"
            ));
        }
        if self.max_metadata_len > super::token::METADATA_BYTES_MAX {
            return Err(format!(
                "max_metadata_len {} is over the ceiling of {} bytes",
                self.max_metadata_len,
                super::token::METADATA_BYTES_MAX
            ));
        }
        Ok(())
    }
}

/// Who a message is for: what every token of it carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageIds<'a> {
    pub transmission_id: &'a str,
    pub message_id: &'a str,
    pub recipient: &'a str,
    pub campaign_id: &'a str,
    /// Metadata as JSON text (recipient over transmission, merged by the caller).
    pub metadata: &'a str,
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    pub links_tracked: u32,
    /// http(s) links left alone: `data-msys-clicktrack="0"`, too long, or
    /// over `LINKS_PER_PART_MAX`.
    pub links_skipped: u32,
    pub open_pixel: bool,
    /// Metadata longer than `max_metadata_len` was left out.
    pub metadata_dropped: bool,
}

/// Rewrites the parts of one message for one recipient.
pub struct Tracker<'a> {
    pub key: &'a TrackingKey,
    pub options: &'a TrackingOptions,
    pub ids: MessageIds<'a>,
    /// Unix seconds now; tokens expire `tracking_link_expiry` later.
    pub now: u64,
}

/// The `data-msys-*` attributes of one link.
#[derive(Debug, Default)]
struct LinkAttrs {
    skip: bool,
    unsubscribe: bool,
    name: String,
    sublink: Option<String>,
}

impl Tracker<'_> {
    fn metadata(&self) -> (&str, bool) {
        let m = self.ids.metadata;
        if !self.options.click_tracking_include_metadata {
            return ("", false);
        }
        if m.len() > self.options.max_metadata_len {
            return ("", true);
        }
        (m, false)
    }

    fn link<'l>(&'l self, kind: TokenKind, target: &'l str, attrs: &'l LinkAttrs) -> Link<'l> {
        Link {
            kind,
            expires_at: self.now.saturating_add(self.options.tracking_link_expiry),
            unsubscribe: attrs.unsubscribe,
            target_url: target,
            link_name: &attrs.name,
            transmission_id: self.ids.transmission_id,
            message_id: self.ids.message_id,
            recipient: self.ids.recipient,
            campaign_id: self.ids.campaign_id,
            metadata: self.metadata().0,
        }
    }

    /// Appends the click URL for `target` to `out`; false (and nothing
    /// written) when the link cannot be tracked.
    fn click_url(
        &self,
        target: &str,
        attrs: &LinkAttrs,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        let o = self.options;
        let mark = out.len();
        out.extend_from_slice(o.click_tracking_scheme.as_str().as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(o.tracking_domain.as_bytes());
        out.extend_from_slice(b"/f/");
        if let Some(s) = &attrs.sublink {
            out.extend_from_slice(s.as_bytes());
            out.push(b'/');
        }
        let link = self.link(TokenKind::Click, target, attrs);
        if self.key.encode_with(&link, scratch, out).is_err() {
            out.truncate(mark);
            return false;
        }
        true
    }

    /// Appends the open-pixel URL to `out`; false (and nothing written)
    /// when the ids are too long for a token.
    pub fn open_url(&self, out: &mut Vec<u8>) -> bool {
        let o = self.options;
        let mark = out.len();
        out.extend_from_slice(o.open_tracking_scheme.as_str().as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(o.tracking_domain.as_bytes());
        out.extend_from_slice(b"/q/");
        let attrs = LinkAttrs::default();
        let link = self.link(TokenKind::Open, "", &attrs);
        let mut scratch = Vec::new();
        if self.key.encode_with(&link, &mut scratch, out).is_err() {
            out.truncate(mark);
            return false;
        }
        true
    }

    /// Rewrites an html part: `<a href="http(s)://...">` links (when
    /// `click_tracking_enabled`) and the open pixel before the last
    /// `</body>` or at the end (when `open_tracking_enabled`). Appends to `out`.
    pub fn rewrite_html(&self, html: &[u8], out: &mut Vec<u8>) -> RewriteStats {
        let mut stats = RewriteStats {
            metadata_dropped: self.metadata().1,
            ..RewriteStats::default()
        };
        let mut scratch = Vec::new();
        if !self.options.open_tracking_enabled {
            self.html_links(html, &mut stats, &mut scratch, out);
            return stats;
        }
        let at = rfind_ci(html, b"</body").unwrap_or(html.len());
        self.html_links(&html[..at], &mut stats, &mut scratch, out);
        let mark = out.len();
        out.extend_from_slice(b"<img border=\"0\" width=\"1\" height=\"1\" alt=\"\" src=\"");
        if self.open_url(out) {
            out.extend_from_slice(b"\">");
            stats.open_pixel = true;
        } else {
            out.truncate(mark);
        }
        self.html_links(&html[at..], &mut stats, &mut scratch, out);
        stats
    }

    fn html_links(
        &self,
        html: &[u8],
        stats: &mut RewriteStats,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        if !self.options.click_tracking_enabled {
            out.extend_from_slice(html);
            return;
        }
        let mut copied = 0;
        let mut i = 0;
        let mut target = String::new();
        let mut tag_attrs = Vec::new();
        while let Some(off) = memchr(b'<', &html[i..]) {
            let lt = i + off;
            i = lt + 1;
            let rest = &html[lt..];
            if rest.starts_with(b"<!--") {
                match find(&rest[4..], b"-->") {
                    Some(end) => i = lt + 4 + end + 3,
                    None => break,
                }
                continue;
            }
            if let Some(name) = raw_text_element(rest) {
                // Skip script/style contents: no links there.
                match find_closing(&html[i..], name) {
                    Some(end) => i += end,
                    None => break,
                }
                continue;
            }
            let name_len = rest[1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if name_len == 0 {
                continue;
            }
            // Parse every tag, so a quoted '<a' inside another is not a link.
            let Some(tag_end) = parse_attributes(html, lt + 1 + name_len, b">", &mut tag_attrs)
            else {
                continue;
            };
            i = tag_end;
            if !(name_len == 1 && rest[1].eq_ignore_ascii_case(&b'a')) {
                continue;
            }
            let Some(href) = tag_attrs.iter().find(|a| a.name_is(html, b"href")) else {
                continue;
            };
            let Some(value) = href.value.clone() else {
                continue;
            };
            decode_entities(&html[value.clone()], &mut target);
            let url = target.trim_matches(|c: char| c.is_ascii_whitespace());
            if !is_http_url(url) {
                continue;
            }
            let attrs = link_attrs(html, &tag_attrs);
            if attrs.skip
                || url.len() > TARGET_URL_BYTES_MAX
                || stats.links_tracked >= LINKS_PER_PART_MAX
            {
                stats.links_skipped += 1;
                continue;
            }
            out.extend_from_slice(&html[copied..href.value_span.start]);
            out.push(b'"');
            if self.click_url(url, &attrs, scratch, out) {
                stats.links_tracked += 1;
                out.push(b'"');
                copied = href.value_span.end;
            } else {
                out.pop();
                copied = href.value_span.start;
                stats.links_skipped += 1;
            }
        }
        out.extend_from_slice(&html[copied..]);
    }

    /// Rewrites a text part: bare `http://` and `https://` URLs (when
    /// `click_tracking_enabled`). A `[[data-msys-...]]` block right after a
    /// URL sets its attributes and is removed. Appends to `out`.
    pub fn rewrite_text(&self, text: &[u8], out: &mut Vec<u8>) -> RewriteStats {
        let mut stats = RewriteStats {
            metadata_dropped: self.metadata().1,
            ..RewriteStats::default()
        };
        if !self.options.click_tracking_enabled {
            out.extend_from_slice(text);
            return stats;
        }
        let mut scratch = Vec::new();
        let mut marker_attrs = Vec::new();
        let mut copied = 0;
        let mut i = 0;
        while let Some(start) = find_url_start(text, i) {
            let end = url_end(text, start);
            i = end.max(start + 1);
            let mut url_stop = end;
            let mut marker: Option<usize> = None;
            if text[end..].starts_with(b"[[") {
                marker = parse_attributes(
                    &text[..text.len().min(end + TEXT_MARKER_BYTES_MAX)],
                    end + 2,
                    b"]]",
                    &mut marker_attrs,
                );
            } else {
                url_stop = trim_trailing_punctuation(text, start, end);
                i = url_stop.max(start + 1);
            }
            let url = std::str::from_utf8(&text[start..url_stop]).ok();
            let attrs = match marker {
                Some(_) => link_attrs(text, &marker_attrs),
                None => LinkAttrs::default(),
            };
            let Some(url) = url.filter(|u| is_http_url(u)) else {
                continue;
            };
            out.extend_from_slice(&text[copied..start]);
            copied = start;
            let tracked = !attrs.skip
                && url.len() <= TARGET_URL_BYTES_MAX
                && stats.links_tracked < LINKS_PER_PART_MAX
                && self.click_url(url, &attrs, &mut scratch, out);
            if tracked {
                stats.links_tracked += 1;
                copied = url_stop;
            } else {
                stats.links_skipped += 1;
            }
            if let Some(marker_end) = marker {
                out.extend_from_slice(&text[copied..url_stop]);
                copied = marker_end;
                i = marker_end;
            }
        }
        out.extend_from_slice(&text[copied..]);
        stats
    }
}

/// One parsed attribute: byte ranges into the scanned buffer.
#[derive(Debug, Clone)]
struct Attr {
    name: std::ops::Range<usize>,
    /// The value without quotes (None for a bare attribute).
    value: Option<std::ops::Range<usize>>,
    /// The value with its quotes (empty at the name's end when bare).
    value_span: std::ops::Range<usize>,
}

impl Attr {
    fn name_is(&self, buf: &[u8], want: &[u8]) -> bool {
        buf[self.name.clone()].eq_ignore_ascii_case(want)
    }
}

/// Parses `name[=value]` attributes from `from` up to `terminator` (`>` for
/// a tag, `]]` for a text marker) into `attrs` (cleared first). The offset
/// just past the terminator; None when malformed or over the limits.
fn parse_attributes(
    buf: &[u8],
    from: usize,
    terminator: &[u8],
    attrs: &mut Vec<Attr>,
) -> Option<usize> {
    let limit = buf.len().min(from.saturating_add(TAG_BYTES_MAX));
    attrs.clear();
    let mut i = from;
    loop {
        while i < limit && (buf[i].is_ascii_whitespace() || buf[i] == b'/') {
            i += 1;
        }
        if i >= limit {
            return None;
        }
        if buf[i..limit].starts_with(terminator) {
            return Some(i + terminator.len());
        }
        if attrs.len() >= ATTRIBUTES_PER_TAG_MAX {
            return None;
        }
        let name_start = i;
        while i < limit
            && !buf[i].is_ascii_whitespace()
            && !matches!(buf[i], b'=' | b'/' | b'<' | b'"' | b'\'')
            && !buf[i..limit].starts_with(terminator)
        {
            i += 1;
        }
        if i == name_start {
            return None;
        }
        let name = name_start..i;
        let mut j = i;
        while j < limit && buf[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= limit || buf[j] != b'=' {
            attrs.push(Attr {
                name,
                value: None,
                value_span: i..i,
            });
            continue;
        }
        j += 1;
        while j < limit && buf[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= limit {
            return None;
        }
        let (value, span_end) = if buf[j] == b'"' || buf[j] == b'\'' {
            let q = buf[j];
            let close = j + 1 + memchr(q, &buf[j + 1..limit])?;
            (j + 1..close, close + 1)
        } else {
            let mut k = j;
            while k < limit
                && !buf[k].is_ascii_whitespace()
                && !buf[k..limit].starts_with(terminator)
            {
                k += 1;
            }
            (j..k, k)
        };
        attrs.push(Attr {
            name,
            value: Some(value),
            value_span: j..span_end,
        });
        i = span_end;
    }
}

fn link_attrs(buf: &[u8], attrs: &[Attr]) -> LinkAttrs {
    let mut out = LinkAttrs::default();
    let value = |a: &Attr| a.value.clone().map_or(&b""[..], |v| &buf[v]);
    for a in attrs {
        if a.name_is(buf, b"data-msys-clicktrack") {
            out.skip = value(a).trim_ascii() == b"0";
        } else if a.name_is(buf, b"data-msys-unsubscribe") {
            out.unsubscribe = value(a).trim_ascii() == b"1";
        } else if a.name_is(buf, b"data-msys-linkname") {
            decode_entities(value(a), &mut out.name);
            let mut cut = out.name.len().min(LINK_NAME_BYTES_MAX);
            while !out.name.is_char_boundary(cut) {
                cut -= 1;
            }
            out.name.truncate(cut);
        } else if a.name_is(buf, b"data-msys-sublink") {
            let v = value(a).trim_ascii();
            let ok = !v.is_empty()
                && v.len() <= SUBLINK_BYTES_MAX
                && v.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            out.sublink = ok.then(|| String::from_utf8_lossy(v).into_owned());
        }
    }
    out
}

fn is_http_url(url: &str) -> bool {
    let b = url.as_bytes();
    let rest = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        &b[7..]
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        &b[8..]
    } else {
        return false;
    };
    // A host, and nothing that would break out of a quoted attribute.
    !rest.is_empty() && rest[0] != b'/' && !url.bytes().any(|c| c.is_ascii_control() || c == b'"')
}

/// Decodes the few entities that appear in URLs and names (`&amp;` and
/// friends, numeric ones); others are kept as written.
fn decode_entities(raw: &[u8], out: &mut String) {
    out.clear();
    let text = String::from_utf8_lossy(raw);
    let mut rest = &*text;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if entity.starts_with("#x") || entity.starts_with("#X") => {
                u32::from_str_radix(&entity[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if entity.starts_with('#') => entity[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

/// `<script` / `<style` (case-insensitive, then a space or `>`): the element
/// whose text holds no markup.
fn raw_text_element(tag: &[u8]) -> Option<&'static [u8]> {
    for name in [&b"script"[..], b"style"] {
        let n = name.len();
        if tag.len() > n + 1
            && tag[1..=n].eq_ignore_ascii_case(name)
            && (tag[n + 1].is_ascii_whitespace() || tag[n + 1] == b'>')
        {
            return Some(name);
        }
    }
    None
}

/// Offset just past `</name` in `hay`, case-insensitive.
fn find_closing(hay: &[u8], name: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = find(&hay[i..], b"</") {
        let at = i + off + 2;
        if hay.len() >= at + name.len() && hay[at..at + name.len()].eq_ignore_ascii_case(name) {
            return Some(at + name.len());
        }
        i = at;
    }
    None
}

fn find_url_start(text: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 7 <= text.len() {
        let off = text[i..]
            .iter()
            .position(|b| b.eq_ignore_ascii_case(&b'h'))?;
        let at = i + off;
        let tail = &text[at..];
        let is_url = (tail.len() > 7 && tail[..7].eq_ignore_ascii_case(b"http://"))
            || (tail.len() > 8 && tail[..8].eq_ignore_ascii_case(b"https://"));
        let boundary = at == 0 || !(text[at - 1].is_ascii_alphanumeric() || text[at - 1] == b'/');
        if is_url && boundary {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

fn url_end(text: &[u8], start: usize) -> usize {
    let limit = text.len().min(start + TARGET_URL_BYTES_MAX + 1);
    let mut i = start;
    while i < limit {
        let b = text[i];
        if b.is_ascii_whitespace()
            || b.is_ascii_control()
            || matches!(b, b'<' | b'>' | b'"')
            || text[i..].starts_with(b"[[")
        {
            return i;
        }
        i += 1;
    }
    // Too long: run to the real end so the caller skips all of it.
    let mut j = limit;
    while j < text.len() && !text[j].is_ascii_whitespace() {
        j += 1;
    }
    j
}

/// Drops sentence punctuation after a URL; a `)` only when unbalanced.
fn trim_trailing_punctuation(text: &[u8], start: usize, mut end: usize) -> usize {
    while end > start {
        let b = text[end - 1];
        let drop = match b {
            b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\'' => true,
            b')' => {
                let s = &text[start..end];
                s.iter().filter(|&&c| c == b')').count() > s.iter().filter(|&&c| c == b'(').count()
            }
            _ => false,
        };
        if !drop {
            break;
        }
        end -= 1;
    }
    end
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    crate::template::find_bytes(hay, needle)
}

fn rfind_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}
