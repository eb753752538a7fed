//! The load generator: N SMTP sessions on N threads, each sending messages
//! claimed from one shared counter until M are sent or the duration ends,
//! closed loop (as fast as replies come) or open loop (message i is due at
//! start + i / rate). Uses PIPELINING for the envelope when the server offers it.
//! Owns: client sockets, the message template, per-session histograms.
//! May call: std::net, report, `ecelerity_testkit::Rng` (size and
//! recipient draws).
//! Never: the MTA's files or processes.
//!
//! Blocking threads rather than an event loop: 500 sessions are 500 threads
//! with small stacks, which the kernel schedules well enough at these rates,
//! and each session's code reads top to bottom like the protocol.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use ecelerity_testkit::Rng;

use crate::report::{latency_histogram, record_us, Dist, LatencySummary, LoadReport};

/// Longest SMTP reply line we accept from a server.
const REPLY_LINE_BYTES_MAX: usize = 4096;
/// Read buffer per session.
const READ_BUFFER_BYTES: usize = 8192;
/// Stack of each session thread.
const SESSION_STACK_BYTES: usize = 256 * 1024;
/// Wait between connection attempts after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Body text line length, CRLF included.
const BODY_LINE_BYTES: usize = 78;
/// Open loop: a message that starts this much after its due time is "late".
const LATE_START_THRESHOLD: Duration = Duration::from_millis(1);
/// How often the progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Width of the zero-padded timestamp in the X-Ecbench-Ts header (ns since the epoch).
pub const TIMESTAMP_DIGITS: usize = 20;
/// Name of the header carrying the send timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Ecbench-Ts: ";

/// What to send, where, and how.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub sessions: usize,
    /// Stop after this many messages (claimed by sessions).
    pub messages: u64,
    /// Stop claiming new messages after this long, if set.
    pub duration: Option<Duration>,
    /// Message size in bytes (headers included, final "." excluded).
    pub size: Dist,
    pub recipients: Dist,
    /// Open loop rate in messages/s; None = closed loop.
    pub rate: Option<f64>,
    /// Close the connection after each message (like smtp-source without -d... inverted).
    pub new_connection_per_message: bool,
    pub io_timeout: Duration,
    pub rcpt_domain: String,
    /// 0 or 1: every recipient is in `rcpt_domain`. N > 1: message `id`
    /// goes to `d<id % N>.<rcpt_domain>` (many domains, the mx scenario).
    pub rcpt_domains: u64,
    pub progress: bool,
    pub label: String,
}

impl LoadSpec {
    pub fn new(target: SocketAddr) -> LoadSpec {
        LoadSpec {
            target,
            sessions: 50,
            messages: 10_000,
            duration: None,
            size: Dist::fixed(1024),
            recipients: Dist::fixed(1),
            rate: None,
            new_connection_per_message: false,
            io_timeout: Duration::from_secs(120),
            rcpt_domain: "sink.test".into(),
            rcpt_domains: 0,
            progress: true,
            label: String::new(),
        }
    }
}

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    recipients_accepted: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    late: AtomicU64,
    done: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, key: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(key.to_string()).or_insert(0) += 1;
    }
}

/// One message template: the whole text with fixed-width fields patched per message.
struct Template {
    text: Vec<u8>,
    id_at: usize,
    ts_at: usize,
}

impl Template {
    fn new(size: usize, session: usize) -> Template {
        let mut text = Vec::with_capacity(size + 8);
        text.extend_from_slice(
            b"From: <bench@ecbench.test>\r\nTo: <rcpt@sink.test>\r\nSubject: ecbench\r\n",
        );
        text.extend_from_slice(format!("Message-ID: <{session:05}.").as_bytes());
        let id_at = text.len();
        text.extend_from_slice(b"0000000000@ecbench.test>\r\n");
        text.extend_from_slice(TIMESTAMP_HEADER.as_bytes());
        let ts_at = text.len();
        text.extend_from_slice(&[b'0'; TIMESTAMP_DIGITS]);
        text.extend_from_slice(b"\r\n\r\n");
        let mut line = 0usize;
        while text.len() + 2 < size {
            let room = (size - text.len() - 2).min(BODY_LINE_BYTES - 2);
            let c = b'a' + (line % 26) as u8;
            text.extend(std::iter::repeat_n(c, room));
            text.extend_from_slice(b"\r\n");
            line += 1;
        }
        if !text.ends_with(b"\r\n") {
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b".\r\n");
        Template { text, id_at, ts_at }
    }

    fn patch(&mut self, id: u64, ts_ns: u128) {
        write_digits(&mut self.text[self.id_at..self.id_at + 10], id as u128);
        write_digits(
            &mut self.text[self.ts_at..self.ts_at + TIMESTAMP_DIGITS],
            ts_ns,
        );
    }

    /// Bytes of the message proper (without the final ".\r\n").
    fn message_bytes(&self) -> u64 {
        (self.text.len() - 3) as u64
    }
}

fn write_digits(out: &mut [u8], mut value: u128) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Why one exchange failed.
enum Failure {
    /// The server answered with this code; the session may go on.
    Reply(u16),
    /// The connection is unusable.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// A client connection with a small read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub pipelining: bool,
}

impl Conn {
    /// Connect, read the greeting, send EHLO; fails on any non-2xx.
    pub fn open(target: SocketAddr, timeout: Duration) -> io::Result<Result<Conn, u16>> {
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut conn = Conn {
            stream,
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
            pipelining: false,
        };
        let (code, _) = conn.read_reply()?;
        if code != 220 {
            return Ok(Err(code));
        }
        conn.stream.write_all(b"EHLO ecbench.test\r\n")?;
        let (code, pipelining) = conn.read_reply()?;
        if code != 250 {
            return Ok(Err(code));
        }
        conn.pipelining = pipelining;
        Ok(Ok(conn))
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Read one (possibly multi-line) reply: its code, and whether any line
    /// says PIPELINING (for EHLO).
    pub fn read_reply(&mut self) -> io::Result<(u16, bool)> {
        let mut pipelining = false;
        loop {
            let line_end = loop {
                if let Some(i) = self.buf[self.start..self.end]
                    .iter()
                    .position(|&b| b == b'\n')
                {
                    break self.start + i + 1;
                }
                if self.end - self.start >= REPLY_LINE_BYTES_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "reply line too long",
                    ));
                }
                self.fill()?;
            };
            let line = &self.buf[self.start..line_end];
            self.start = line_end;
            if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed reply line",
                ));
            }
            let code = (line[0] - b'0') as u16 * 100
                + (line[1] - b'0') as u16 * 10
                + (line[2] - b'0') as u16;
            if line.len() >= 14 && line[4..14].eq_ignore_ascii_case(b"PIPELINING") {
                pipelining = true;
            }
            if line[3] != b'-' {
                return Ok((code, pipelining));
            }
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn quit(mut self) {
        if self.write_all(b"QUIT\r\n").is_ok() {
            let _ = self.read_reply();
        }
    }
}

/// Send one message on an open connection. Returns the accept latency
/// (end of DATA to the 250) and the number of recipients accepted.
fn send_one(
    conn: &mut Conn,
    envelope: &mut Vec<u8>,
    template: &[u8],
    recipients: u64,
    rcpt_domain: &str,
    id: u64,
    shared: &Shared,
) -> Result<(Duration, u64), Failure> {
    envelope.clear();
    envelope.extend_from_slice(b"MAIL FROM:<bench@ecbench.test>\r\n");
    let mut replies = Vec::with_capacity(recipients as usize + 2);
    let mut rcpt_ok = 0u64;
    if conn.pipelining {
        for r in 0..recipients {
            let _ = write!(
                envelope,
                "RCPT TO:<u{}-{r}@{rcpt_domain}>\r\n",
                id % 100_000
            );
        }
        envelope.extend_from_slice(b"DATA\r\n");
        conn.write_all(envelope)?;
        for _ in 0..recipients + 2 {
            replies.push(conn.read_reply()?.0);
        }
    } else {
        conn.write_all(envelope)?;
        replies.push(conn.read_reply()?.0);
        for r in 0..recipients {
            envelope.clear();
            let _ = write!(
                envelope,
                "RCPT TO:<u{}-{r}@{rcpt_domain}>\r\n",
                id % 100_000
            );
            conn.write_all(envelope)?;
            replies.push(conn.read_reply()?.0);
        }
        conn.write_all(b"DATA\r\n")?;
        replies.push(conn.read_reply()?.0);
    }
    for &code in &replies[1..replies.len() - 1] {
        if code / 100 == 2 {
            rcpt_ok += 1;
        } else {
            shared.error(&format!("rcpt {code}"));
        }
    }
    let data_code = *replies.last().expect("at least MAIL and DATA replies");
    if replies[0] / 100 != 2 || data_code != 354 {
        let code = if replies[0] / 100 != 2 {
            replies[0]
        } else {
            data_code
        };
        conn.write_all(b"RSET\r\n")?;
        conn.read_reply()?;
        return Err(Failure::Reply(code));
    }
    conn.write_all(template)?;
    let data_end = Instant::now();
    shared.sent.fetch_add(1, Ordering::Relaxed);
    let (code, _) = conn.read_reply()?;
    let latency = data_end.elapsed();
    if code / 100 != 2 {
        return Err(Failure::Reply(code));
    }
    Ok((latency, rcpt_ok))
}

fn session(index: usize, spec: &LoadSpec, shared: &Shared, start: Instant) -> Histogram<u64> {
    let mut histogram = latency_histogram();
    let mut templates: Vec<Template> = spec
        .size
        .values()
        .iter()
        .map(|&s| Template::new(s as usize, index))
        .collect();
    let mut rng = Rng::new(index as u64 + 1);
    let mut envelope = Vec::with_capacity(256);
    // The recipient domain of the current message, reused.
    let mut domain = String::with_capacity(spec.rcpt_domain.len() + 16);
    let mut conn: Option<Conn> = None;
    let deadline = spec.duration.map(|d| start + d);
    loop {
        if shared.done.load(Ordering::Relaxed) {
            break;
        }
        let id = shared.next.fetch_add(1, Ordering::Relaxed);
        if id >= spec.messages || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(rate) = spec.rate {
            let due = start + Duration::from_secs_f64(id as f64 / rate);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            } else if now - due > LATE_START_THRESHOLD {
                shared.late.fetch_add(1, Ordering::Relaxed);
            }
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::open(spec.target, spec.io_timeout) {
                Ok(Ok(c)) => c,
                Ok(Err(code)) => {
                    shared.error(&format!("greeting/ehlo {code}"));
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
                Err(e) => {
                    shared.error(&format!("connect {:?}", e.kind()));
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            },
        };
        let mut c = c;
        let t = &mut templates[spec.size.pick_index(rng.next_u64())];
        let recipients = spec.recipients.choices[spec.recipients.pick_index(rng.next_u64())]
            .0
            .max(1);
        t.patch(id, unix_ns());
        let bytes = t.message_bytes();
        domain.clear();
        if spec.rcpt_domains > 1 {
            let _ = write!(domain, "d{}.", id % spec.rcpt_domains);
        }
        domain.push_str(&spec.rcpt_domain);
        match send_one(
            &mut c,
            &mut envelope,
            &t.text,
            recipients,
            &domain,
            id,
            shared,
        ) {
            Ok((latency, rcpt_ok)) => {
                record_us(&mut histogram, latency.as_micros() as u64);
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared
                    .recipients_accepted
                    .fetch_add(rcpt_ok, Ordering::Relaxed);
                shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                conn = Some(c);
            }
            Err(Failure::Reply(code)) => {
                shared.error(&code.to_string());
                shared.failed.fetch_add(1, Ordering::Relaxed);
                conn = if code == 421 { None } else { Some(c) };
            }
            Err(Failure::Io(e)) => {
                let kind = match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".to_string(),
                    k => format!("io {k:?}"),
                };
                shared.error(&kind);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if spec.new_connection_per_message {
            if let Some(c) = conn.take() {
                c.quit();
            }
        }
    }
    if let Some(c) = conn {
        c.quit();
    }
    histogram
}

/// Run the load described by `spec` to completion and report.
pub fn run_load(spec: &LoadSpec) -> LoadReport {
    assert!(spec.sessions > 0, "at least one session");
    let shared = Arc::new(Shared::default());
    let spec_arc = Arc::new(spec.clone());
    let start = Instant::now();
    let mut handles = Vec::with_capacity(spec.sessions);
    for index in 0..spec.sessions {
        let shared = Arc::clone(&shared);
        let spec = Arc::clone(&spec_arc);
        let handle = thread::Builder::new()
            .name(format!("ecbench-s{index}"))
            .stack_size(SESSION_STACK_BYTES)
            .spawn(move || session(index, &spec, &shared, start))
            .expect("spawn session thread");
        handles.push(handle);
    }
    let progress = spec.progress.then(|| {
        let shared = Arc::clone(&shared);
        let label = spec.label.clone();
        thread::spawn(move || {
            let mut last = (Instant::now(), 0u64);
            while !shared.done.load(Ordering::Relaxed) {
                thread::sleep(PROGRESS_INTERVAL);
                let accepted = shared.accepted.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (accepted - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, accepted);
                let errors: u64 = shared.errors.lock().map(|e| e.values().sum()).unwrap_or(0);
                eprintln!(
                    "ecbench {label}: {:>6.1}s accepted {accepted} ({rate:.0} msgs/s) errors {errors}",
                    (now - start).as_secs_f64()
                );
            }
        })
    });
    let mut histogram = latency_histogram();
    for handle in handles {
        if let Ok(h) = handle.join() {
            let _ = histogram.add(&h);
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    shared.done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    LoadReport {
        target: spec.target.to_string(),
        sessions: spec.sessions,
        size_bytes: spec.size.to_string(),
        recipients: spec.recipients.to_string(),
        rate_per_s: spec.rate,
        new_connection_per_message: spec.new_connection_per_message,
        elapsed_s: elapsed,
        sent: shared.sent.load(Ordering::Relaxed),
        accepted,
        recipients_accepted: shared.recipients_accepted.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        bytes_accepted: bytes,
        msgs_per_s: accepted as f64 / elapsed,
        mb_per_s: bytes as f64 / elapsed / 1e6,
        late_starts: shared.late.load(Ordering::Relaxed),
        accept_latency: LatencySummary::from_histogram(&histogram),
        errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_the_asked_size_and_a_patchable_timestamp() {
        for size in [300usize, 1024, 10 * 1024, 100 * 1024] {
            let mut t = Template::new(size, 3);
            assert_eq!(t.message_bytes() as usize, size, "size {size}");
            assert!(t.text.ends_with(b"\r\n.\r\n"));
            t.patch(42, 1_700_000_000_123_456_789);
            let text = String::from_utf8(t.text.clone()).unwrap();
            assert!(text.contains("X-Ecbench-Ts: 01700000000123456789\r\n"));
            assert!(text.contains("<00003.0000000042@ecbench.test>"));
            assert!(text.lines().all(|l| l.len() <= 1000));
        }
    }
}
