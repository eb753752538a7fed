//! Webhooks: the event log, POSTed in batches to each configured endpoint
//! as a JSON array of `{"msys":{"message_event":{...}}}` objects (the
//! SparkPost shape), with `X-MessageSystems-Webhook-Token` when the
//! endpoint has an `auth_token`.
//!
//! The durable backlog is the event log itself: each endpoint has a cursor
//! (the log file's inode and a byte offset) persisted under
//! `spoolbase/webhooks/<name>.cursor` after every accepted batch. That
//! gives in-order, exactly-once delivery across receiver outages and
//! daemon restarts, and at-least-once across crashes (a batch accepted
//! just before a crash is sent again). An endpoint that lags more than its
//! `max_backlog_bytes` skips its oldest events (counted in
//! `webhook_bytes_skipped`). A failed POST (connection error, timeout,
//! non-2xx) is retried with a doubling back-off from
//! [`WEBHOOK_RETRY_MIN_MS`] to [`WEBHOOK_RETRY_MAX_MS`], and the endpoint
//! counts as failing (`summary`, the `webhook_endpoints_failing` gauge)
//! until a POST succeeds.
//!
//! Owns: [`Endpoint`] (plain data), the [`Registry`] of endpoints the REST
//! API made (`api::webhooks` fills it; the sender thread picks changes up
//! within one poll, no restart), the pure batch builder, request writer and
//! response status parser (unit-tested), and the sender thread.
//!
//! An endpoint from the REST API is named `api-<id>` here (its cursor is
//! `webhooks/api-<id>.cursor`); before each POST the sender checks it is
//! still in the registry, so a webhook deleted (or made inactive) gets
//! nothing from the moment the API answered.
//! May call: std, `config`, `stats`, `events` (line types). Never: shard
//! state, the spool, queues.
//!
//! Why a thread of its own with blocking std I/O rather than a task on a
//! shard: reading a log file, resolving a host name, connecting and
//! waiting on a slow receiver then never touch a shard's event loop, so a
//! stuck endpoint cannot delay reception or delivery; the thread sleeps
//! between polls. Why a hand-written HTTP/1.1 client rather than hyper:
//! the one request shape is a POST with `Content-Length` and
//! `Connection: close`, and the only thing read back is the status line;
//! that is 60 lines against an HTTP stack and an executor adapter.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use super::line_kind;
use crate::config::{parse_webhook_target, Config, WebhookConfig};
use crate::stats::{Counter, EngineStats};

/// How often the sender looks for new events when caught up.
pub const WEBHOOK_POLL_MS: u64 = 200;
/// First and largest pause after a failed POST (doubling in between).
pub const WEBHOOK_RETRY_MIN_MS: u64 = 1000;
pub const WEBHOOK_RETRY_MAX_MS: u64 = 60_000;
/// Connect, write and read timeout of one POST.
pub const WEBHOOK_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Event log bytes read per batch at most; a longer line is skipped.
pub const WEBHOOK_READ_BYTES_MAX: usize = 1024 * 1024;
/// Response bytes read while looking for the status line at most.
pub const WEBHOOK_RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// One webhook endpoint, as configured (or, later, created by the REST API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// Event type names sent to it.
    pub events: Vec<String>,
    pub auth_token: Option<String>,
    pub batch_size: usize,
    pub max_backlog_bytes: u64,
}

impl Endpoint {
    /// The endpoint a checked `webhook` stanza describes.
    pub fn from_config(w: &WebhookConfig) -> Endpoint {
        let target = w
            .target
            .as_deref()
            .expect("config refuses a webhook without target");
        let (host, port, path) = parse_webhook_target(target).expect("target checked by config");
        Endpoint {
            name: w.name.clone(),
            host,
            port,
            path,
            events: w.events.clone(),
            auth_token: w.auth_token.clone(),
            batch_size: w.batch_size.max(1) as usize,
            max_backlog_bytes: w.max_backlog_bytes,
        }
    }

    /// Whether the line's type, or its grouping (`track_event`...), is
    /// one this endpoint asked for.
    fn wants(&self, line: &[u8]) -> bool {
        line_kind(line).is_some_and(|(g, t)| self.events.iter().any(|e| e == t || e == g))
    }
}

/// The endpoints the REST API made, with a generation that moves on every
/// change. Locked only by the API (a change) and the sender thread (once
/// per poll and before each POST): never on a shard's mail path.
pub struct Registry {
    generation: AtomicU64,
    endpoints: Mutex<Vec<Endpoint>>,
}

/// The process's registry.
pub static REGISTRY: Registry = Registry {
    generation: AtomicU64::new(0),
    endpoints: Mutex::new(Vec::new()),
};

/// The prefix of a REST API endpoint's name in the sender.
pub const API_ENDPOINT_PREFIX: &str = "api-";

impl Registry {
    /// Replaces the list (the active webhooks, named `api-<id>`).
    pub fn replace(&self, endpoints: Vec<Endpoint>) {
        assert!(endpoints
            .iter()
            .all(|e| e.name.starts_with(API_ENDPOINT_PREFIX)));
        *self.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = endpoints;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Vec<Endpoint> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn contains(&self, name: &str) -> bool {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e.name == name)
    }
}

/// What [`take_batch`] found in a chunk of the event log.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    /// A JSON array of the wanted lines, or empty when there were none.
    pub body: Vec<u8>,
    pub events: usize,
    /// Bytes of whole lines looked at: where the cursor goes once the batch
    /// is accepted.
    pub consumed: usize,
}

/// Takes whole lines from `chunk` (a partial last line stays for later)
/// until `endpoint.batch_size` wanted ones are in the batch.
pub fn take_batch(endpoint: &Endpoint, chunk: &[u8]) -> Batch {
    let mut batch = Batch {
        body: Vec::new(),
        events: 0,
        consumed: 0,
    };
    while batch.events < endpoint.batch_size {
        let rest = &chunk[batch.consumed..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &rest[..end];
        batch.consumed += end + 1;
        if !endpoint.wants(line) {
            continue;
        }
        batch.body.push(if batch.events == 0 { b'[' } else { b',' });
        batch.body.extend_from_slice(line);
        batch.events += 1;
    }
    if batch.events > 0 {
        batch.body.push(b']');
    }
    batch
}

/// The bytes of a POST of `body` to `endpoint`.
pub fn build_request(endpoint: &Endpoint, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: ecelerity/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        endpoint.path,
        endpoint.host,
        endpoint.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(token) = &endpoint.auth_token {
        // Config allows printable ASCII only: no header can be smuggled.
        assert!(token.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        head.push_str("X-MessageSystems-Webhook-Token: ");
        head.push_str(token);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// The status code of an HTTP/1.x response once its status line is in
/// `head`; `Ok(None)` while it is not complete.
pub fn parse_status(head: &[u8]) -> Result<Option<u16>, &'static str> {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = &head[..end];
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or("not an HTTP/1.x status line")?;
    match rest {
        [a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            Ok(Some(code))
        }
        _ => Err("no status code"),
    }
}

/// The pause after `failures` consecutive failed POSTs.
pub fn backoff_ms(failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(16);
    (WEBHOOK_RETRY_MIN_MS << shift).min(WEBHOOK_RETRY_MAX_MS)
}

/// Sends one POST and returns the response status.
fn post(endpoint: &Endpoint, body: &[u8]) -> io::Result<u16> {
    let timeout = Duration::from_millis(WEBHOOK_REQUEST_TIMEOUT_MS);
    let addrs = (endpoint.host.as_str(), endpoint.port).to_socket_addrs()?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&build_request(endpoint, body))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        match parse_status(&head) {
            Ok(Some(code)) => return Ok(code),
            Ok(None) if head.len() < WEBHOOK_RESPONSE_HEAD_BYTES_MAX => {}
            Ok(None) => return Err(io::Error::other("status line too long")),
            Err(e) => return Err(io::Error::other(e)),
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("connection closed before a status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// Where an endpoint is in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub inode: u64,
    pub offset: u64,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut words = text.split_ascii_whitespace();
        let inode = words.next()?.parse().ok()?;
        let offset = words.next()?.parse().ok()?;
        Some(Cursor { inode, offset })
    }

    pub fn render(&self) -> String {
        format!("{} {}\n", self.inode, self.offset)
    }
}

/// One endpoint's sending state.
struct Sender {
    endpoint: Endpoint,
    cursor_path: PathBuf,
    cursor: Cursor,
    failures: u32,
    next_try: Instant,
    /// Read buffer, [`WEBHOOK_READ_BYTES_MAX`] bytes, kept between passes.
    chunk: Vec<u8>,
    /// Made by the REST API (in [`REGISTRY`]).
    from_api: bool,
}

impl Sender {
    fn save_cursor(&self) {
        let tmp = self.cursor_path.with_extension("cursor.tmp");
        let saved = std::fs::write(&tmp, self.cursor.render())
            .and_then(|()| std::fs::rename(&tmp, &self.cursor_path));
        if let Err(e) = saved {
            tracing::error!(
                "webhook {}: cannot save {}: {e}",
                self.endpoint.name,
                self.cursor_path.display()
            );
        }
    }
}

/// What one pass over an endpoint did.
#[derive(Debug, Default)]
struct Pass {
    sent: u64,
    skipped_bytes: u64,
    failed: bool,
    backlog_bytes: u64,
}

/// Sends what `sender` has not sent yet from `log`, batch after batch,
/// until it is caught up, a POST fails or `stop` is set.
fn pass(sender: &mut Sender, log: &Path, stop: &AtomicBool) -> Pass {
    let out = Pass::default();
    let Ok(file) = File::open(log) else {
        return out;
    };
    let Ok(meta) = file.metadata() else {
        return out;
    };
    if meta.ino() != sender.cursor.inode || meta.len() < sender.cursor.offset {
        // A new file (rotated, or the first run): start at its beginning.
        sender.cursor = Cursor {
            inode: meta.ino(),
            offset: 0,
        };
        sender.save_cursor();
    }
    let mut chunk = std::mem::take(&mut sender.chunk);
    chunk.resize(WEBHOOK_READ_BYTES_MAX, 0);
    let out = send_batches(sender, &file, &mut chunk, stop, out);
    sender.chunk = chunk;
    out
}

/// The batches of one [`pass`], read from `file` through `chunk`.
fn send_batches(
    sender: &mut Sender,
    file: &File,
    chunk: &mut [u8],
    stop: &AtomicBool,
    mut out: Pass,
) -> Pass {
    while !stop.load(Ordering::SeqCst) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let endpoint = &sender.endpoint;
        let mut align = false;
        if len.saturating_sub(sender.cursor.offset) > endpoint.max_backlog_bytes {
            let to = len - endpoint.max_backlog_bytes;
            out.skipped_bytes += to - sender.cursor.offset;
            sender.cursor.offset = to;
            align = true;
        }
        out.backlog_bytes = len.saturating_sub(sender.cursor.offset);
        let n = match file.read_at(chunk, sender.cursor.offset) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("webhook {}: cannot read the eventlog: {e}", endpoint.name);
                return out;
            }
        };
        let mut data = &chunk[..n];
        if align {
            // Skipped into the middle of a line: resume at the next one.
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                return out;
            };
            out.skipped_bytes += end as u64 + 1;
            sender.cursor.offset += end as u64 + 1;
            data = &data[end + 1..];
        }
        let batch = take_batch(endpoint, data);
        if batch.consumed == 0 {
            if data.len() == WEBHOOK_READ_BYTES_MAX {
                // One line longer than a read: not an event of ours.
                out.skipped_bytes += data.len() as u64;
                sender.cursor.offset += data.len() as u64;
                continue;
            }
            if align {
                sender.save_cursor();
            }
            return out;
        }
        if batch.events > 0 {
            if sender.from_api && !REGISTRY.contains(&endpoint.name) {
                // Deleted or made inactive since the last poll.
                return out;
            }
            match post(endpoint, &batch.body) {
                Ok(code) if (200..300).contains(&code) => out.sent += batch.events as u64,
                Ok(code) => {
                    tracing::warn!("webhook {}: POST answered {code}", endpoint.name);
                    out.failed = true;
                    return out;
                }
                Err(e) => {
                    tracing::warn!("webhook {}: POST failed: {e}", endpoint.name);
                    out.failed = true;
                    return out;
                }
            }
        }
        sender.cursor.offset += batch.consumed as u64;
        out.backlog_bytes = len.saturating_sub(sender.cursor.offset);
        sender.save_cursor();
    }
    out
}

/// Starts the sender thread when an `eventlog` is configured (the
/// `webhook` stanzas need one; REST API webhooks may come at any time).
/// Its counters live in shard 0's block: this thread is their only writer.
pub fn start(config: &Config, stats: Arc<EngineStats>, stop: Arc<AtomicBool>) -> io::Result<()> {
    let Some(log) = config.logs().eventlog.clone() else {
        return Ok(());
    };
    let dir = config.spoolbase().join("webhooks");
    std::fs::create_dir_all(&dir)?;
    let mut senders: Vec<Sender> = config
        .webhooks()
        .iter()
        .map(|w| new_sender(Endpoint::from_config(w), &dir, &log, false))
        .collect();
    for sender in &senders {
        sender.save_cursor();
    }
    stats.shards[0].set(Counter::WebhookEndpoints, senders.len() as u64);
    std::thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || run(&mut senders, &dir, &log, &stats, &stop))?;
    Ok(())
}

/// The cursor file of endpoint `name` under `dir`.
pub fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.cursor"))
}

/// A sender for `endpoint`, from its saved cursor; a new endpoint starts
/// at the end of the log: it gets the events from now on, as a new
/// SparkPost webhook does.
fn new_sender(endpoint: Endpoint, dir: &Path, log: &Path, from_api: bool) -> Sender {
    let cursor_path = cursor_path(dir, &endpoint.name);
    let cursor = std::fs::read_to_string(&cursor_path)
        .ok()
        .and_then(|t| Cursor::parse(&t))
        .unwrap_or_else(|| end_of(log));
    Sender {
        endpoint,
        cursor_path,
        cursor,
        failures: 0,
        next_try: Instant::now(),
        chunk: Vec::new(),
        from_api,
    }
}

/// Writes the cursor of a new REST API endpoint at the end of the log now,
/// so it gets every event written after its creation was answered.
pub fn start_cursor_at_end(dir: &Path, log: &Path, name: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = cursor_path(dir, name);
    let tmp = path.with_extension("cursor.tmp");
    std::fs::write(&tmp, end_of(log).render())?;
    std::fs::rename(&tmp, &path)
}

/// Brings the REST API's senders in line with [`REGISTRY`]: new ones
/// added, removed ones dropped with their cursor files, changed ones
/// (target, events, token) updated in place.
fn reconcile(senders: &mut Vec<Sender>, dir: &Path, log: &Path) {
    let wanted = REGISTRY.snapshot();
    senders.retain(|s| {
        let keep = !s.from_api || wanted.iter().any(|w| w.name == s.endpoint.name);
        if !keep {
            let _ = std::fs::remove_file(&s.cursor_path);
        }
        keep
    });
    for w in wanted {
        match senders.iter_mut().find(|s| s.endpoint.name == w.name) {
            Some(s) => s.endpoint = w,
            None => senders.push(new_sender(w, dir, log, true)),
        }
    }
}

/// The cursor at the end of the file at `path` (the default cursor when
/// there is none yet: its first file is read from the start).
fn end_of(path: &Path) -> Cursor {
    std::fs::metadata(path)
        .map(|m| Cursor {
            inode: m.ino(),
            offset: m.len(),
        })
        .unwrap_or_default()
}

fn run(senders: &mut Vec<Sender>, dir: &Path, log: &Path, stats: &EngineStats, stop: &AtomicBool) {
    let counters = &stats.shards[0];
    let mut seen = u64::MAX;
    while !stop.load(Ordering::SeqCst) {
        let generation = REGISTRY.generation();
        if generation != seen {
            seen = generation;
            reconcile(senders, dir, log);
            counters.set(Counter::WebhookEndpoints, senders.len() as u64);
        }
        let now = Instant::now();
        let mut backlog = 0;
        for sender in senders.iter_mut() {
            if sender.next_try > now {
                continue;
            }
            let done = pass(sender, log, stop);
            counters.add(Counter::WebhookEventsSent, done.sent);
            counters.add(Counter::WebhookBytesSkipped, done.skipped_bytes);
            backlog += done.backlog_bytes;
            if done.failed {
                sender.failures += 1;
                counters.add(Counter::WebhookPostFailures, 1);
                let pause = backoff_ms(sender.failures);
                sender.next_try = Instant::now() + Duration::from_millis(pause);
            } else {
                sender.failures = 0;
            }
        }
        let failing = senders.iter().filter(|s| s.failures > 0).count();
        counters.set(Counter::WebhookEndpointsFailing, failing as u64);
        counters.set(Counter::WebhookBacklogBytes, backlog);
        std::thread::sleep(Duration::from_millis(WEBHOOK_POLL_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{format_event, Event, EventType};

    fn endpoint(events: &[&str], batch_size: usize) -> Endpoint {
        Endpoint {
            name: "hook".into(),
            host: "127.0.0.1".into(),
            port: 8080,
            path: "/events?x=1".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            auth_token: Some("s3cret".into()),
            batch_size,
            max_backlog_bytes: 1 << 20,
        }
    }

    fn line(kind: EventType, id: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let e = Event {
            kind,
            event_id: crate::events::EventId {
                prefix: "",
                sequence: id,
            },
            unix_secs: 1,
            message_id: "m",
            rcpt_to: "a@b",
            msg_from: "c@d",
            binding: "default",
            binding_group: "default",
            msg_size: None,
            ip_address: None,
            num_retries: None,
            queue_time_ms: None,
            raw_reason: None,
            bounce_class: None,
            method: "esmtp",
            generation: None,
        };
        format_event(&mut buf, &e);
        buf
    }

    #[test]
    fn batch_takes_wanted_whole_lines_up_to_the_size() {
        let mut log = Vec::new();
        log.extend(line(EventType::Injection, 1));
        log.extend(line(EventType::Delivery, 2));
        log.extend(line(EventType::Delivery, 3));
        let first_three = log.len();
        log.extend(line(EventType::Delivery, 4));
        let partial = b"{\"msys\":{\"message_event\":{\"type\":\"deliv";
        log.extend_from_slice(partial);
        let ep = endpoint(&["delivery"], 2);
        let b = take_batch(&ep, &log);
        assert_eq!(b.events, 2);
        assert_eq!(
            b.consumed, first_three,
            "stops after the second wanted line"
        );
        let text = String::from_utf8(b.body).unwrap();
        assert!(text.starts_with("[{\"msys\""), "{text}");
        assert!(text.ends_with("}}}]"), "{text}");
        assert!(text.contains("\"event_id\":\"000000002\""));
        assert!(text.contains("\"event_id\":\"000000003\""));
        assert!(!text.contains("injection") && !text.contains('\n'));
        let rest = take_batch(&ep, &log[first_three..]);
        assert_eq!(rest.events, 1);
        assert_eq!(rest.consumed, line(EventType::Delivery, 4).len());
        let none = take_batch(&endpoint(&["bounce"], 10), &log);
        assert_eq!((none.events, none.body.len()), (0, 0));
        assert_eq!(
            none.consumed,
            log.len() - partial.len(),
            "skips unwanted whole lines"
        );
    }

    #[test]
    fn request_is_a_post_with_length_and_token() {
        let req = build_request(&endpoint(&["delivery"], 1), b"[1]");
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /events?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("\r\nContent-Length: 3\r\n"));
        assert!(text.contains("\r\nX-MessageSystems-Webhook-Token: s3cret\r\n"));
        assert!(text.ends_with("\r\n\r\n[1]"));
        let mut ep = endpoint(&["delivery"], 1);
        ep.auth_token = None;
        let text = String::from_utf8(build_request(&ep, b"[]")).unwrap();
        assert!(!text.contains("Token"));
    }

    #[test]
    fn status_line_parses_once_complete() {
        assert_eq!(parse_status(b"HTTP/1.1 20"), Ok(None));
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Ok(Some(204)));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Busy\r\nX: y\r\n"),
            Ok(Some(503))
        );
        assert!(parse_status(b"SMTP 220 hi\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_ms(1), WEBHOOK_RETRY_MIN_MS);
        assert_eq!(backoff_ms(2), 2 * WEBHOOK_RETRY_MIN_MS);
        assert_eq!(backoff_ms(40), WEBHOOK_RETRY_MAX_MS);
    }

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = Cursor {
            inode: 42,
            offset: 1234,
        };
        assert_eq!(Cursor::parse(&c.render()), Some(c));
        assert_eq!(Cursor::parse("x 1"), None);
        assert_eq!(Cursor::parse(""), None);
    }
}
