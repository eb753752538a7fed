//! The sink: an SMTP server that accepts, counts and discards, optionally
//! answering each RCPT from a script (a percentage 5xx, a percentage 4xx)
//! and waiting a fixed delay before each 250 after DATA. It records the
//! end-to-end latency from the generator's X-Ecbench-Ts header to the end
//! of DATA here. Supports PIPELINING: replies are buffered until the input
//! buffer holds no complete command, then written in one go.
//! Owns: the listening sockets (one, or several sharing the counters: the
//! MX hosts of the mx scenario), one thread per connection, the counters.
//! May call: std::net, report, `ecelerity_testkit::Rng` (reply scripts).
//! Never: the MTA under test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{unix_ns, TIMESTAMP_DIGITS, TIMESTAMP_HEADER};
use ecelerity_testkit::Rng;

use crate::report::{latency_histogram, record_us, LatencySummary, SinkReport};

/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Longest command line accepted.
const COMMAND_LINE_BYTES_MAX: usize = 4096;
/// Stack of each connection thread.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;
/// A connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Header lines scanned for the timestamp before giving up on a message.
const HEADER_LINES_SCANNED_MAX: u32 = 64;

/// How the sink answers.
#[derive(Clone, Debug, Default)]
pub struct ReplyScript {
    /// Percent of recipients answered 550.
    pub reject_5xx_pct: f64,
    /// Percent of recipients answered 451.
    pub defer_4xx_pct: f64,
    /// Wait before the 250 that ends each transaction.
    pub delay: Duration,
}

struct Counters {
    connections: AtomicU64,
    messages: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    rcpt_5xx: AtomicU64,
    rcpt_4xx: AtomicU64,
    /// Nanoseconds after `epoch` of the last arrival.
    last_arrival_ns: AtomicU64,
    epoch: Mutex<Instant>,
    e2e: Mutex<Histogram<u64>>,
    stop: AtomicBool,
}

/// A running sink; stops accepting when dropped.
pub struct Sink {
    /// The first (often the only) listening address.
    pub addr: SocketAddr,
    /// Every listening address, `addr` first.
    pub addrs: Vec<SocketAddr>,
    counters: Arc<Counters>,
}

impl Sink {
    /// Listen on `addr` (port 0 picks one) and serve in background threads.
    pub fn start(addr: SocketAddr, script: ReplyScript) -> io::Result<Sink> {
        Sink::start_many(&[addr], script)
    }

    /// Listen on every address of `addrs` with one set of counters. Port 0
    /// in the first picks a free port; port 0 in the others means the
    /// port the first got (one port on several loopback addresses).
    pub fn start_many(addrs: &[SocketAddr], script: ReplyScript) -> io::Result<Sink> {
        assert!(!addrs.is_empty(), "a sink listens somewhere");
        let first = TcpListener::bind(addrs[0])?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for addr in &addrs[1..] {
            let mut addr = *addr;
            if addr.port() == 0 {
                addr.set_port(port);
            }
            listeners.push(TcpListener::bind(addr)?);
        }
        let bound: Vec<SocketAddr> = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        let counters = Arc::new(Counters {
            connections: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rcpt_5xx: AtomicU64::new(0),
            rcpt_4xx: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            epoch: Mutex::new(Instant::now()),
            e2e: Mutex::new(latency_histogram()),
            stop: AtomicBool::new(false),
        });
        for listener in listeners {
            accept_in_background(listener, Arc::clone(&counters), script.clone())?;
        }
        Ok(Sink {
            addr: bound[0],
            addrs: bound,
            counters,
        })
    }

    /// Zero the counters and the histogram; arrival times count from now.
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.connections,
            &c.messages,
            &c.recipients,
            &c.bytes,
            &c.rcpt_5xx,
            &c.rcpt_4xx,
            &c.last_arrival_ns,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        *c.epoch.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        c.e2e.lock().unwrap_or_else(|e| e.into_inner()).reset();
    }

    pub fn recipients(&self) -> u64 {
        self.counters.recipients.load(Ordering::Relaxed)
    }

    pub fn messages(&self) -> u64 {
        self.counters.messages.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> SinkReport {
        let c = &self.counters;
        let e2e = c.e2e.lock().unwrap_or_else(|e| e.into_inner());
        SinkReport {
            connections: c.connections.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            recipients: c.recipients.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            rcpt_rejected_5xx: c.rcpt_5xx.load(Ordering::Relaxed),
            rcpt_deferred_4xx: c.rcpt_4xx.load(Ordering::Relaxed),
            last_arrival_s: c.last_arrival_ns.load(Ordering::Relaxed) as f64 / 1e9,
            end_to_end_latency: LatencySummary::from_histogram(&e2e),
        }
    }

    /// Wait until at least `recipients` recipients arrived, or `timeout`.
    pub fn wait_for_recipients(&self, recipients: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.recipients() < recipients {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// The accept loop of one listener, in a thread of its own; a thread per
/// connection.
fn accept_in_background(
    listener: TcpListener,
    shared: Arc<Counters>,
    script: ReplyScript,
) -> io::Result<()> {
    thread::Builder::new()
        .name("ecbench-sink-accept".into())
        .spawn(move || {
            let mut sequence = 0u64;
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                sequence += 1;
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                let script = script.clone();
                let seed = sequence;
                let _ = thread::Builder::new()
                    .name("ecbench-sink".into())
                    .stack_size(CONNECTION_STACK_BYTES)
                    .spawn(move || {
                        let _ = serve(stream, &shared, &script, seed);
                    });
            }
        })?;
    Ok(())
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
        // Wake each accept loop so it sees the flag.
        for addr in &self.addrs {
            let _ = TcpStream::connect_timeout(addr, Duration::from_millis(200));
        }
    }
}

#[derive(PartialEq)]
enum State {
    Command,
    /// Inside DATA: at the start of a line?, still in the header?, header lines seen.
    Data {
        line_start: bool,
        in_header: bool,
        header_lines: u32,
    },
}

fn serve(mut stream: TcpStream, c: &Counters, script: &ReplyScript, seed: u64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    out.extend_from_slice(b"220 ecbench-sink ESMTP\r\n");
    let mut state = State::Command;
    let mut have_mail = false;
    let mut rcpts_ok = 0u64;
    let mut message_bytes = 0u64;
    let mut timestamp_ns: Option<u128> = None;
    loop {
        // Process everything complete in the buffer.
        loop {
            match state {
                State::Command => {
                    let Some(i) = buf[start..end].iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    let line = &buf[start..start + i + 1];
                    start += i + 1;
                    let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
                    match &verb[..] {
                        b"EHLO" => out.extend_from_slice(
                            b"250-ecbench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n",
                        ),
                        b"HELO" => out.extend_from_slice(b"250 ecbench-sink\r\n"),
                        b"MAIL" => {
                            have_mail = true;
                            rcpts_ok = 0;
                            out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                        }
                        b"RCPT" if have_mail => {
                            let roll = rng.unit_f64() * 100.0;
                            if roll < script.reject_5xx_pct {
                                c.rcpt_5xx.fetch_add(1, Ordering::Relaxed);
                                out.extend_from_slice(b"550 5.1.1 rejected by script\r\n");
                            } else if roll < script.reject_5xx_pct + script.defer_4xx_pct {
                                c.rcpt_4xx.fetch_add(1, Ordering::Relaxed);
                                out.extend_from_slice(b"451 4.3.0 deferred by script\r\n");
                            } else {
                                rcpts_ok += 1;
                                out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                            }
                        }
                        b"DATA" if rcpts_ok > 0 => {
                            out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                            state = State::Data { line_start: true, in_header: true, header_lines: 0 };
                            message_bytes = 0;
                            timestamp_ns = None;
                        }
                        b"DATA" => out.extend_from_slice(b"554 5.5.1 No valid recipients\r\n"),
                        b"RSET" => {
                            have_mail = false;
                            rcpts_ok = 0;
                            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                        }
                        b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                        b"QUIT" => {
                            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                            stream.write_all(&out)?;
                            let _ = stream.shutdown(Shutdown::Both);
                            return Ok(());
                        }
                        _ => out.extend_from_slice(b"503 5.5.1 Bad sequence or unknown command\r\n"),
                    }
                }
                State::Data {
                    ref mut line_start,
                    ref mut in_header,
                    ref mut header_lines,
                } => {
                    if start == end {
                        break;
                    }
                    if *line_start {
                        let avail = &buf[start..end];
                        if avail[0] == b'.' {
                            if avail.len() < 3 {
                                break; // need more to decide
                            }
                            if &avail[..3] == b".\r\n" {
                                start += 3;
                                let now_ns = unix_ns();
                                if let Some(ts) = timestamp_ns {
                                    let us = now_ns.saturating_sub(ts) / 1_000;
                                    record_us(
                                        &mut c.e2e.lock().unwrap_or_else(|e| e.into_inner()),
                                        us as u64,
                                    );
                                }
                                state = State::Command;
                                have_mail = false;
                                if !script.delay.is_zero() {
                                    stream.write_all(&out)?;
                                    out.clear();
                                    thread::sleep(script.delay);
                                }
                                c.messages.fetch_add(1, Ordering::Relaxed);
                                c.recipients.fetch_add(rcpts_ok, Ordering::Relaxed);
                                c.bytes.fetch_add(message_bytes, Ordering::Relaxed);
                                let epoch = *c.epoch.lock().unwrap_or_else(|e| e.into_inner());
                                c.last_arrival_ns
                                    .store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                                out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                                continue;
                            }
                        }
                        if *in_header {
                            // Look at whole header lines only.
                            let Some(i) = avail.iter().position(|&b| b == b'\n') else {
                                if avail.len() >= COMMAND_LINE_BYTES_MAX {
                                    *in_header = false;
                                }
                                break;
                            };
                            let line = &avail[..i + 1];
                            *header_lines += 1;
                            if line == b"\r\n" || *header_lines > HEADER_LINES_SCANNED_MAX {
                                *in_header = false;
                            } else if let Some(rest) =
                                line.strip_prefix(TIMESTAMP_HEADER.as_bytes())
                            {
                                timestamp_ns = parse_timestamp(rest);
                            }
                            message_bytes += line.len() as u64;
                            start += i + 1;
                            continue;
                        }
                        *line_start = false;
                    }
                    match buf[start..end].iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            message_bytes += i as u64 + 1;
                            start += i + 1;
                            *line_start = true;
                        }
                        None => {
                            message_bytes += (end - start) as u64;
                            start = end;
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        // Make room and read more.
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            if state == State::Command {
                stream.write_all(b"500 5.5.2 Line too long\r\n")?;
                return Ok(());
            }
            // A partial data line longer than the buffer: count and drop it.
            end = 0;
        }
        let n = stream.read(&mut buf[end..])?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

fn parse_timestamp(rest: &[u8]) -> Option<u128> {
    let digits = rest.get(..TIMESTAMP_DIGITS)?;
    let mut v: u128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u128;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{run_load, LoadSpec};
    use crate::report::Dist;

    #[test]
    fn load_straight_into_the_sink_adds_up() {
        let sink = Sink::start("127.0.0.1:0".parse().unwrap(), ReplyScript::default()).unwrap();
        let mut spec = LoadSpec::new(sink.addr);
        spec.sessions = 4;
        spec.messages = 200;
        spec.recipients = Dist::fixed(3);
        spec.size = Dist::parse("1k:1,10k:1").unwrap();
        spec.progress = false;
        let report = run_load(&spec);
        assert_eq!(report.sent, 200);
        assert_eq!(report.accepted, 200);
        assert!(sink.wait_for_recipients(600, Duration::from_secs(10)));
        let s = sink.report();
        assert_eq!(s.messages, 200);
        assert_eq!(s.end_to_end_latency.count, 200);
        assert_eq!(s.bytes, report.bytes_accepted);
    }

    #[test]
    fn reply_script_rejects_and_defers_recipients() {
        let script = ReplyScript {
            reject_5xx_pct: 30.0,
            defer_4xx_pct: 20.0,
            delay: Duration::ZERO,
        };
        let sink = Sink::start("127.0.0.1:0".parse().unwrap(), script).unwrap();
        let mut spec = LoadSpec::new(sink.addr);
        spec.sessions = 2;
        spec.messages = 300;
        spec.recipients = Dist::fixed(2);
        spec.progress = false;
        let report = run_load(&spec);
        let s = sink.report();
        assert!(s.rcpt_rejected_5xx > 0 && s.rcpt_deferred_4xx > 0);
        assert_eq!(report.recipients_accepted, s.recipients);
        assert_eq!(report.accepted + report.failed, 300);
        assert!(report.errors.keys().any(|k| k.starts_with("rcpt 550")));
    }
}
