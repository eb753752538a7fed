//! The event log: one JSON object per line for each recipient outcome
//! (injection, delivery, delay, bounce) and each rejection
//! (policy_rejection), with SparkPost/Momentum webhook field names, in the
//! exact shape a webhook batch carries: `{"msys":{"message_event":{...}}}`.
//! The file is also the durable source webhooks are fed from (`webhook`).
//!
//! Owns: the event line format ([`format_event`], pure, unit-tested), the
//! per-shard writer [`EventLog`] (a buffer written with one `write(2)` per
//! flush to an O_APPEND file, like the mainlog: shards never take a lock
//! and lines never interleave), and event ids.
//! May call: std, `log` (opening a file), `config` (event type names).
//! Never: the spool, queues, the network (`webhook` has that).
//!
//! Order: a message's injection lines are flushed by the shard that took
//! it before the message is handed to delivery (`Messages::log_receptions`),
//! so they are in the file before any delivery, delay or bounce line of the
//! same message; later events of a recipient come from the one shard that
//! owns its queue, in order.

pub mod metrics;
pub mod webhook;

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::log::{open_append, LOG_BUFFER_BYTES_MAX};
use metrics::{bounce_category, Labels, Metric, MetricsQuery, MetricsRows, ShardMetrics};

/// What happened, by SparkPost's public `type` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Injection,
    Delivery,
    Delay,
    Bounce,
    PolicyRejection,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Injection => "injection",
            EventType::Delivery => "delivery",
            EventType::Delay => "delay",
            EventType::Bounce => "bounce",
            EventType::PolicyRejection => "policy_rejection",
        }
    }
}

/// An event id, rendered `<prefix><sequence, 9 digits at least>` without
/// an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId<'a> {
    /// Digits only ([`EventLog`]'s).
    pub prefix: &'a str,
    pub sequence: u64,
}

/// One event. Fields that do not apply are `None` and left out of the line.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub kind: EventType,
    /// Unique per event ([`EventLog::next_id`]).
    pub event_id: EventId<'a>,
    pub unix_secs: u64,
    /// Empty for a rejection (no message was taken).
    pub message_id: &'a str,
    pub rcpt_to: &'a str,
    pub msg_from: &'a str,
    pub binding: &'a str,
    pub binding_group: &'a str,
    pub msg_size: Option<u64>,
    /// Injection and rejection: the client's address; delivery, delay and
    /// bounce: the receiving server's (empty when none was reached).
    pub ip_address: Option<&'a str>,
    /// Attempts before this one.
    pub num_retries: Option<u32>,
    /// Milliseconds since reception.
    pub queue_time_ms: Option<u64>,
    /// The reply as received (or ours).
    pub raw_reason: Option<&'a str>,
    /// Momentum's bounce classification (`bounce::classify`).
    pub bounce_class: Option<u16>,
    /// `esmtp`, or `internal` for a message this MTA wrote.
    pub method: &'a str,
    /// A generated message's fields (`api::event_fields`: JSON members
    /// starting with a comma: transmission_id, campaign_id, rcpt_meta,
    /// rcpt_tags, recv_method), stored with the message.
    pub generation: Option<&'a str>,
}

/// The domain of an address (after the last `@`), or empty.
fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// The 3-digit reply code a reason starts with, or empty.
fn error_code(reason: &str) -> &str {
    match reason.as_bytes() {
        [a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => &reason[..3],
        _ => "",
    }
}

/// Appends `text` as a JSON string (quotes included).
pub fn push_json_string(buf: &mut Vec<u8>, text: &str) {
    buf.push(b'"');
    for c in text.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\t' => buf.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(Fmt(buf), "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

/// `fmt::Write` into a byte buffer, so numbers format without a String.
struct Fmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes `,"name":"value"`.
fn field(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.push(b',');
    push_json_string(buf, name);
    buf.push(b':');
    push_json_string(buf, value);
}

/// Writes `,"name":"<number>"` (every value is a string, as in Momentum's
/// samples).
fn number(buf: &mut Vec<u8>, name: &str, value: u64) {
    let _ = write!(Fmt(buf), ",\"{name}\":\"{value}\"");
}

/// The start of every line, through the type: what `webhook` filters on.
pub const LINE_PREFIX: &str = "{\"msys\":{\"message_event\":{\"type\":\"";

/// One event line: `{"msys":{"message_event":{"type":"delivery",...}}}\n`.
pub fn format_event(buf: &mut Vec<u8>, e: &Event<'_>) {
    buf.extend_from_slice(LINE_PREFIX.as_bytes());
    buf.extend_from_slice(e.kind.name().as_bytes());
    buf.push(b'"');
    let _ = write!(
        Fmt(buf),
        ",\"event_id\":\"{}{:09}\"",
        e.event_id.prefix,
        e.event_id.sequence
    );
    number(buf, "timestamp", e.unix_secs);
    if !e.message_id.is_empty() {
        field(buf, "message_id", e.message_id);
        if e.generation.is_none() {
            field(buf, "transmission_id", e.message_id);
        }
    }
    if !e.rcpt_to.is_empty() {
        field(buf, "rcpt_to", e.rcpt_to);
        let start = buf.len();
        field(buf, "routing_domain", domain_of(e.rcpt_to));
        // Lower case in place (names and escapes are lower case already).
        buf[start..].make_ascii_lowercase();
    }
    field(buf, "msg_from", e.msg_from);
    if !e.binding.is_empty() {
        field(buf, "binding", e.binding);
        field(buf, "binding_group", e.binding_group);
    }
    let method = match e.kind {
        EventType::Injection | EventType::PolicyRejection => "recv_method",
        _ => "delv_method",
    };
    // A generated message's fields carry its recv_method.
    if e.generation.is_none() || method == "delv_method" {
        field(buf, method, e.method);
    }
    if let Some(size) = e.msg_size {
        number(buf, "msg_size", size);
    }
    if let Some(ip) = e.ip_address {
        field(buf, "ip_address", ip);
    }
    if let Some(n) = e.num_retries {
        number(buf, "num_retries", u64::from(n));
    }
    if let Some(ms) = e.queue_time_ms {
        number(buf, "queue_time", ms);
    }
    if let Some(class) = e.bounce_class {
        number(buf, "bounce_class", u64::from(class));
    }
    if let Some(reason) = e.raw_reason {
        field(buf, "error_code", error_code(reason));
        field(buf, "reason", reason);
        field(buf, "raw_reason", reason);
    }
    if let Some(fields) = e.generation {
        debug_assert!(fields.is_empty() || fields.starts_with(','));
        buf.extend_from_slice(fields.as_bytes());
    }
    buf.extend_from_slice(b"}}}\n");
}

/// The grouping (`message_event`, `track_event`) and type of an event line
/// (`{"msys":{"<grouping>":{"type":"<type>"`), or `None` for a line that
/// is not one.
pub fn line_kind(line: &[u8]) -> Option<(&str, &str)> {
    let rest = line.strip_prefix(b"{\"msys\":{\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let grouping = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end..].strip_prefix(b"\":{\"type\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some((grouping, std::str::from_utf8(&rest[..end]).ok()?))
}

/// The type of an event line, or `None` for a line that is not one.
pub fn line_type(line: &[u8]) -> Option<&str> {
    line_kind(line).map(|(_, t)| t)
}

/// An engagement event: a tracked link followed or the open pixel
/// fetched (SparkPost's `track_event` grouping).
#[derive(Debug, Clone, Copy)]
pub struct TrackEvent<'a> {
    /// `open` or `click`.
    pub kind: &'a str,
    pub event_id: EventId<'a>,
    pub unix_secs: u64,
    pub message_id: &'a str,
    pub transmission_id: &'a str,
    pub campaign_id: &'a str,
    pub rcpt_to: &'a str,
    /// A JSON object (the token's metadata), or empty.
    pub rcpt_meta: &'a str,
    pub user_agent: &'a str,
    pub accept_language: &'a str,
    /// The client's address.
    pub ip_address: &'a str,
    /// Clicks only (empty for opens).
    pub target_link_url: &'a str,
    pub target_link_name: &'a str,
}

/// The start of a track event line, before its type.
pub const TRACK_LINE_PREFIX: &str = "{\"msys\":{\"track_event\":{\"type\":\"";

/// One track event line:
/// `{"msys":{"track_event":{"type":"click",...}}}\n`.
pub fn format_track_event(buf: &mut Vec<u8>, e: &TrackEvent<'_>) {
    debug_assert!(matches!(e.kind, "open" | "click"));
    buf.extend_from_slice(TRACK_LINE_PREFIX.as_bytes());
    buf.extend_from_slice(e.kind.as_bytes());
    buf.push(b'"');
    let _ = write!(
        Fmt(buf),
        ",\"event_id\":\"{}{:09}\"",
        e.event_id.prefix,
        e.event_id.sequence
    );
    number(buf, "timestamp", e.unix_secs);
    field(buf, "message_id", e.message_id);
    field(buf, "transmission_id", e.transmission_id);
    if !e.campaign_id.is_empty() {
        field(buf, "campaign_id", e.campaign_id);
    }
    field(buf, "rcpt_to", e.rcpt_to);
    let start = buf.len();
    field(buf, "routing_domain", domain_of(e.rcpt_to));
    buf[start..].make_ascii_lowercase();
    buf.extend_from_slice(b",\"rcpt_meta\":");
    if e.rcpt_meta.is_empty() {
        buf.extend_from_slice(b"{}");
    } else {
        debug_assert!(e.rcpt_meta.starts_with('{'));
        buf.extend_from_slice(e.rcpt_meta.as_bytes());
    }
    field(buf, "user_agent", e.user_agent);
    if !e.accept_language.is_empty() {
        field(buf, "accept_language", e.accept_language);
    }
    field(buf, "ip_address", e.ip_address);
    if e.kind == "click" {
        field(buf, "target_link_url", e.target_link_url);
        if !e.target_link_name.is_empty() {
            field(buf, "target_link_name", e.target_link_name);
        }
    }
    buf.extend_from_slice(b"}}}\n");
}

/// The value of string member `name` in a generated message's event
/// fields (`,"campaign_id":"spring",...`), or empty.
pub fn generation_member<'a>(fields: &'a str, name: &str) -> std::borrow::Cow<'a, str> {
    let needle = format!(",\"{name}\":\"");
    let Some(at) = fields.find(&needle) else {
        return "".into();
    };
    let start = at + needle.len();
    let bytes = fields.as_bytes();
    let mut i = start;
    let mut escaped = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                escaped = true;
                i += 1;
            }
            b'"' => break,
            _ => {}
        }
        i += 1;
    }
    let raw = &fields[start..i.min(fields.len())];
    if !escaped {
        return raw.into();
    }
    serde_json::from_str::<String>(&fields[start - 1..(i + 1).min(fields.len())])
        .map(Into::into)
        .unwrap_or_default()
}

/// The counters an event adds to.
fn increments(e: &Event<'_>, out: &mut Vec<(Metric, u64)>) {
    let first = e.num_retries.unwrap_or(0) == 0;
    match e.kind {
        EventType::Injection => {
            out.extend([(Metric::Injected, 1), (Metric::Targeted, 1)]);
        }
        EventType::PolicyRejection => out.extend([
            (Metric::PolicyRejection, 1),
            (Metric::Rejected, 1),
            (Metric::Targeted, 1),
        ]),
        EventType::Delivery => {
            let (when, time) = if first {
                (Metric::DeliveredFirst, Metric::DeliveryTimeFirst)
            } else {
                (Metric::DeliveredSubsequent, Metric::DeliveryTimeSubsequent)
            };
            out.extend([
                (Metric::Delivered, 1),
                (Metric::Accepted, 1),
                (Metric::Sent, 1),
                (when, 1),
                (time, e.queue_time_ms.unwrap_or(0)),
                (Metric::MsgVolume, e.msg_size.unwrap_or(0)),
            ]);
        }
        EventType::Delay => {
            out.push((Metric::Delayed, 1));
            if first {
                out.push((Metric::DelayedFirst, 1));
            }
        }
        EventType::Bounce => {
            let class = e.bounce_class.unwrap_or(1);
            out.extend([
                (Metric::Bounce, 1),
                (Metric::InbandBounce, 1),
                (bounce_category(class), 1),
            ]);
            if e.ip_address.is_some_and(|ip| !ip.is_empty()) {
                out.push((Metric::Sent, 1));
            }
        }
    }
}

/// Permission bits of a new event log (as the mainlog's).
const EVENTLOG_MODE: u32 = 0o644;

/// A shard's event log writer; does nothing when no `eventlog` is set.
pub struct EventLog {
    path: Option<PathBuf>,
    /// Open whenever `path` is set (a failed reopen keeps the old file).
    file: RefCell<Option<File>>,
    buf: RefCell<Vec<u8>>,
    /// Event ids: `<daemon start ms><shard, 3 digits><sequence>`.
    id_prefix: String,
    sequence: Cell<u64>,
    /// This shard's `count_*` counters (kept whether or not the file is).
    metrics: RefCell<ShardMetrics>,
}

impl EventLog {
    pub fn open(path: Option<&Path>, shard: usize, start_unix_ms: u64) -> io::Result<EventLog> {
        let file = match path {
            Some(path) => Some(open_append(path, EVENTLOG_MODE)?),
            None => None,
        };
        Ok(EventLog {
            path: path.map(Path::to_path_buf),
            file: RefCell::new(file),
            buf: RefCell::new(Vec::new()),
            id_prefix: format!("{start_unix_ms}{shard:03}"),
            sequence: Cell::new(0),
            metrics: RefCell::new(ShardMetrics::new()),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Flushes, then opens the path again (after logrotate renamed the
    /// file: `reopen logs`). On failure the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        self.flush();
        let file = open_append(path, EVENTLOG_MODE)?;
        *self.file.borrow_mut() = Some(file);
        Ok(())
    }

    /// A new event id, unique across shards and restarts (one start per
    /// millisecond at most).
    pub fn next_id(&self) -> EventId<'_> {
        let n = self.sequence.get() + 1;
        self.sequence.set(n);
        EventId {
            prefix: &self.id_prefix,
            sequence: n,
        }
    }

    /// Formats events with `f` (when enabled); flushes if the buffer is
    /// full.
    pub fn write(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if !self.is_enabled() {
            return;
        }
        let full = {
            let mut buf = self.buf.borrow_mut();
            f(&mut buf);
            buf.len() >= LOG_BUFFER_BYTES_MAX
        };
        if full {
            self.flush();
        }
    }

    /// Counts `e` in the metrics and writes its line (when enabled).
    pub fn record(&self, e: &Event<'_>) {
        let mut inc = Vec::with_capacity(8);
        increments(e, &mut inc);
        let campaign = e
            .generation
            .map(|g| generation_member(g, "campaign_id"))
            .unwrap_or_default();
        let template = e
            .generation
            .map(|g| generation_member(g, "template_id"))
            .unwrap_or_default();
        let labels = Labels {
            domain: domain_of(e.rcpt_to),
            campaign: &campaign,
            template: &template,
            binding: e.binding,
            binding_group: e.binding_group,
        };
        self.metrics.borrow_mut().count(e.unix_secs, &labels, &inc);
        self.write(|buf| format_event(buf, e));
    }

    /// Counts an open or click (`count_rendered`, `count_clicked` and
    /// their unique forms) and writes its line (when enabled).
    pub fn record_track(&self, e: &TrackEvent<'_>) {
        {
            let unique = metrics::first_time(e.message_id, e.rcpt_to, e.kind);
            let confirmed = metrics::first_time(e.message_id, e.rcpt_to, "confirmed");
            let mut m = self.metrics.borrow_mut();
            let mut inc = Vec::with_capacity(4);
            if e.kind == "open" {
                inc.push((Metric::Rendered, 1));
                if unique {
                    inc.push((Metric::UniqueRendered, 1));
                }
            } else {
                inc.extend([(Metric::Clicked, 1), (Metric::RawClicked, 1)]);
                if unique {
                    inc.push((Metric::UniqueClicked, 1));
                }
            }
            if confirmed {
                inc.push((Metric::UniqueConfirmedOpened, 1));
            }
            let labels = Labels {
                domain: domain_of(e.rcpt_to),
                campaign: e.campaign_id,
                ..Labels::default()
            };
            m.count(e.unix_secs, &labels, &inc);
        }
        self.write(|buf| format_track_event(buf, e));
    }

    /// This shard's sums for a metrics request.
    pub fn metrics_query(&self, q: &MetricsQuery) -> MetricsRows {
        self.metrics.borrow().query(q)
    }

    /// Writes the buffer out with one write. A failed write is reported
    /// and the lines are dropped: events never hold up mail.
    pub fn flush(&self) {
        let file = self.file.borrow();
        let Some(mut file) = file.as_ref() else {
            return;
        };
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        if let Err(e) = file.write_all(&buf) {
            tracing::error!(
                "cannot write the eventlog: {e}; {} bytes of events dropped",
                buf.len()
            );
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Event<'static> {
        Event {
            kind: EventType::Delivery,
            event_id: EventId {
                prefix: "1700000000000000",
                sequence: 1,
            },
            unix_secs: 1700000000,
            message_id: "00/00-01234-0A1B2C3D",
            rcpt_to: "Bob@Example.COM",
            msg_from: "news@example.net",
            binding: "default",
            binding_group: "default",
            msg_size: Some(2048),
            ip_address: Some("192.0.2.25"),
            num_retries: Some(1),
            queue_time_ms: Some(3120),
            raw_reason: None,
            bounce_class: None,
            method: "esmtp",
            generation: None,
        }
    }

    #[test]
    fn delivery_line_has_sparkposts_shape_and_names() {
        let mut buf = Vec::new();
        format_event(&mut buf, &delivery());
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"msys\":{\"message_event\":{\"type\":\"delivery\",\
             \"event_id\":\"1700000000000000000000001\",\"timestamp\":\"1700000000\",\
             \"message_id\":\"00/00-01234-0A1B2C3D\",\"transmission_id\":\"00/00-01234-0A1B2C3D\",\
             \"rcpt_to\":\"Bob@Example.COM\",\"routing_domain\":\"example.com\",\
             \"msg_from\":\"news@example.net\",\"binding\":\"default\",\"binding_group\":\"default\",\
             \"delv_method\":\"esmtp\",\"msg_size\":\"2048\",\"ip_address\":\"192.0.2.25\",\
             \"num_retries\":\"1\",\"queue_time\":\"3120\"}}}\n"
        );
    }

    #[test]
    fn bounce_line_carries_class_code_and_reasons_escaped() {
        let mut e = delivery();
        e.kind = EventType::Bounce;
        e.bounce_class = Some(10);
        e.raw_reason = Some("550 5.1.1 \"bob\"\\ unknown\r\n\x01");
        let mut buf = Vec::new();
        format_event(&mut buf, &e);
        let line = String::from_utf8(buf).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(",\"bounce_class\":\"10\",\"error_code\":\"550\",\"reason\":\"550 5.1.1 \\\"bob\\\"\\\\ unknown\\r\\n\\u0001\""), "{line}");
        assert_eq!(line_type(line.as_bytes()), Some("bounce"));
    }

    #[test]
    fn rejection_without_message_leaves_message_fields_out() {
        let e = Event {
            kind: EventType::PolicyRejection,
            message_id: "",
            rcpt_to: "",
            binding: "",
            msg_size: None,
            num_retries: None,
            queue_time_ms: None,
            ip_address: Some("10.0.0.5"),
            raw_reason: Some("550 5.7.1 relaying denied"),
            ..delivery()
        };
        let mut buf = Vec::new();
        format_event(&mut buf, &e);
        let line = String::from_utf8(buf).unwrap();
        assert!(
            !line.contains("message_id") && !line.contains("rcpt_to"),
            "{line}"
        );
        assert!(line.contains("\"recv_method\":\"esmtp\""), "{line}");
        assert!(line.contains("\"error_code\":\"550\""), "{line}");
        assert_eq!(line_type(line.as_bytes()), Some("policy_rejection"));
        assert_eq!(line_type(b"{\"other\":1}"), None);
    }

    #[test]
    fn writes_reach_the_file_on_flush_and_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("ec-eventlog-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let log = EventLog::open(Some(&path), 0, 1).unwrap();
        let write = |id| {
            log.write(|buf| {
                let e = Event {
                    event_id: log.next_id(),
                    message_id: id,
                    ..delivery()
                };
                format_event(buf, &e);
            })
        };
        write("m1");
        assert_eq!(std::fs::read(&path).unwrap().len(), 0, "buffered");
        log.flush();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.contains("\"message_id\":\"m1\"") && first.ends_with("}}}\n"));
        std::fs::rename(&path, dir.join("events.jsonl.1")).unwrap();
        write("m2");
        log.reopen().unwrap();
        write("m3");
        log.flush();
        let rotated = std::fs::read_to_string(dir.join("events.jsonl.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            rotated.contains("\"m2\"") && !rotated.contains("\"m3\""),
            "{rotated}"
        );
        assert!(new.contains("\"m3\"") && new.lines().count() == 1, "{new}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_generated_messages_fields_replace_the_default_transmission_id() {
        let fields = ",\"transmission_id\":\"42\",\"campaign_id\":\"c\",\"rcpt_meta\":{},\"rcpt_tags\":[],\"recv_method\":\"rest\"";
        for kind in [EventType::Injection, EventType::Delivery] {
            let e = Event {
                kind,
                generation: Some(fields),
                method: if kind == EventType::Injection {
                    "rest"
                } else {
                    "esmtp"
                },
                ..delivery()
            };
            let mut buf = Vec::new();
            format_event(&mut buf, &e);
            let line = String::from_utf8(buf).unwrap();
            assert_eq!(line.matches("transmission_id").count(), 1, "{line}");
            assert_eq!(line.matches("recv_method").count(), 1, "{line}");
            assert!(line.ends_with(&format!("{fields}}}}}}}\n")), "{line}");
            assert_eq!(
                kind == EventType::Delivery,
                line.contains("\"delv_method\":\"esmtp\""),
                "{line}"
            );
        }
    }

    #[test]
    fn event_ids_are_unique_and_ordered_per_shard() {
        let log = EventLog::open(None, 7, 1700000000123).unwrap();
        assert!(!log.is_enabled());
        let mut buf = Vec::new();
        for _ in 0..2 {
            let e = Event {
                event_id: log.next_id(),
                ..delivery()
            };
            format_event(&mut buf, &e);
        }
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("\"event_id\":\"1700000000123007000000001\""));
        assert!(text.contains("\"event_id\":\"1700000000123007000000002\""));
    }

    #[test]
    fn a_track_event_line_has_its_grouping_and_fields() {
        let e = TrackEvent {
            kind: "click",
            event_id: EventId {
                prefix: "1",
                sequence: 2,
            },
            unix_secs: 1700000000,
            message_id: "m1",
            transmission_id: "42",
            campaign_id: "spring",
            rcpt_to: "Bob@Example.COM",
            rcpt_meta: "{\"k\":\"v\"}",
            user_agent: "Mozilla/5.0 \"x\"",
            accept_language: "",
            ip_address: "127.0.0.1",
            target_link_url: "https://example.com/a?b=1",
            target_link_name: "buy",
        };
        let mut buf = Vec::new();
        format_track_event(&mut buf, &e);
        let line = String::from_utf8(buf).unwrap();
        assert_eq!(
            line,
            "{\"msys\":{\"track_event\":{\"type\":\"click\",\"event_id\":\"1000000002\",\
             \"timestamp\":\"1700000000\",\"message_id\":\"m1\",\"transmission_id\":\"42\",\
             \"campaign_id\":\"spring\",\"rcpt_to\":\"Bob@Example.COM\",\"routing_domain\":\"example.com\",\
             \"rcpt_meta\":{\"k\":\"v\"},\"user_agent\":\"Mozilla/5.0 \\\"x\\\"\",\
             \"ip_address\":\"127.0.0.1\",\"target_link_url\":\"https://example.com/a?b=1\",\
             \"target_link_name\":\"buy\"}}}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msys"]["track_event"]["rcpt_meta"]["k"], "v");
        assert_eq!(line_kind(line.as_bytes()), Some(("track_event", "click")));
        let open = TrackEvent {
            kind: "open",
            rcpt_meta: "",
            ..e
        };
        let mut buf = Vec::new();
        format_track_event(&mut buf, &open);
        let line = String::from_utf8(buf).unwrap();
        assert!(line.contains("\"rcpt_meta\":{}") && !line.contains("target_link"));
    }

    #[test]
    fn generation_members_are_read_and_unescaped() {
        let f = ",\"transmission_id\":\"42\",\"campaign_id\":\"a \\\"b\\\"\",\"template_id\":\"t\"";
        assert_eq!(generation_member(f, "campaign_id"), "a \"b\"");
        assert_eq!(generation_member(f, "template_id"), "t");
        assert_eq!(generation_member(f, "nothing"), "");
    }

    #[test]
    fn recorded_events_are_counted_without_an_eventlog() {
        let log = EventLog::open(None, 0, 1).unwrap();
        let e = Event {
            kind: EventType::Bounce,
            bounce_class: Some(10),
            generation: Some(",\"campaign_id\":\"c\""),
            ..delivery()
        };
        log.record(&e);
        log.record(&Event {
            kind: EventType::Delivery,
            ..e
        });
        let q = MetricsQuery {
            from_min: 0,
            to_min: u32::MAX,
            group_by: Some(metrics::Dimension::Campaign),
            filters: [vec!["EXAMPLE.com".into()], vec![], vec![], vec![], vec![]],
            metrics: vec![
                Metric::Bounce,
                Metric::HardBounce,
                Metric::Delivered,
                Metric::Sent,
            ],
        };
        assert_eq!(log.metrics_query(&q), vec![("c".into(), vec![1, 1, 1, 2])]);
    }
}
