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

pub mod webhook;

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::log::{open_append, LOG_BUFFER_BYTES_MAX};

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

/// The type of an event line ([`LINE_PREFIX`] then the name), or `None`
/// for a line that is not one.
pub fn line_type(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(LINE_PREFIX.as_bytes())?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
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
}
