//! Large bodies end to end: streamed to the spool while DATA arrives and
//! from it while they are sent, they must arrive byte for byte, survive a
//! kill -9 once answered 250, and leave nothing behind when cut short.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ecelerity_tests::{poll_until, send_file, strip_leading_received, Rng, ARRIVAL_TIMEOUT};

use crate::common::Mta;

/// Sizes of the large messages sent, in bytes: just over one streamed
/// chunk (256 KiB, the inline limit), and two large ones that cross many
/// chunks, several spool segments' worth (64 MiB) included.
const LARGE_SIZES: [usize; 3] = [300 * 1024, 20 * 1024 * 1024, 66 * 1024 * 1024];
/// Time a large message may take to arrive at the sink (debug build,
/// Python sink, two cores shared with other builds).
const LARGE_ARRIVAL_TIMEOUT: Duration = Duration::from_secs(240);

/// A message of about `size` bytes with CRLF lines of every kind a
/// transparent relay must keep: 8-bit bytes (0x80-0xFF), lines that start
/// with one or two dots, a line that is only a dot, empty lines, long
/// lines up to 998 bytes. `label` goes into the Message-ID.
fn large_message(rng: &mut Rng, label: &str, size: usize) -> Vec<u8> {
    let mut message = format!(
        "From: <sender@send.test>\r\nTo: <rcpt@example.com>\r\nSubject: large {label}\r\n\
         Message-ID: <{label}@stream.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=latin1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    .into_bytes();
    let mut n = 0u64;
    while message.len() < size {
        n += 1;
        match n % 11 {
            0 => message.extend_from_slice(b".\r\n"),
            1 => message.extend_from_slice(b"..two dots\r\n"),
            2 => message.extend_from_slice(b"\r\n"),
            _ => {
                let len = rng.range(1, 998) as usize;
                let start = message.len();
                for _ in 0..len {
                    // Printable ASCII and 8-bit bytes; no CR, LF or NUL.
                    let byte = match rng.below(4) {
                        0 => rng.range(0x80, 0x100) as u8,
                        _ => rng.range(0x20, 0x7f) as u8,
                    };
                    message.push(byte);
                }
                if n % 5 == 0 {
                    message[start] = b'.';
                }
                message.extend_from_slice(b"\r\n");
            }
        }
    }
    message
}

/// Where two byte strings first differ, for a failure message that does
/// not print megabytes.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// `text` (CRLF lines) as sent after DATA: a dot doubled at each line start.
fn dot_stuffed(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 64);
    let mut at_line_start = true;
    for &byte in text {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    out
}

/// Body files (`*.body`) left in the daemon's spool.
fn body_files(spool: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for shard in fs::read_dir(spool).into_iter().flatten().flatten() {
        for entry in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "body") {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Goal: large bodies, streamed into the spool as they arrive and out of
/// it in chunks, reach a sink this project did not write byte for byte
/// (8-bit lines, dot lines and all), and their body files go once they
/// are delivered. Method: smtplib sends messages of 300 KiB, 20 MiB and
/// 66 MiB (over one 64 MiB segment) one after the other; aiosmtpd stores
/// each; each stored message, its leading Received header removed, must
/// equal what was sent; then the spool must hold no body file.
#[test]
fn large_bodies_arrive_byte_exact_and_their_files_go() {
    let mta = Mta::start("stream-exact");
    let mut rng = Rng::from_env_or_clock();
    let mut sent = Vec::new();
    for (n, &size) in LARGE_SIZES.iter().enumerate() {
        let label = format!("large-{n}-{size}");
        let message = large_message(&mut rng, &label, size);
        let path = mta.dir.join(format!("{label}.eml"));
        fs::write(&path, &message).expect("write message");
        let code = send_file(mta.port(), &path, "sender@send.test", &["rcpt@example.com"]);
        assert_eq!(code, "250", "{label}: {}", mta.daemon.stderr_text());
        fs::remove_file(&path).expect("remove message file");
        sent.push((label, message));
    }
    let arrived = mta
        .sink
        .wait_for_messages(sent.len(), LARGE_ARRIVAL_TIMEOUT);
    assert_eq!(arrived.len(), sent.len(), "each message exactly once");
    for (label, message) in &sent {
        let stored = arrived
            .iter()
            .map(|m| m.bytes())
            .find(|b| {
                let id = format!("Message-ID: <{label}@stream.test>");
                b.windows(id.len()).take(4096).any(|w| w == id.as_bytes())
            })
            .unwrap_or_else(|| panic!("{label} did not arrive"));
        let body = strip_leading_received(&stored).expect("our Received header first");
        assert_eq!(
            first_difference(body, message),
            None,
            "{label}: {} bytes arrived for {} sent",
            body.len(),
            message.len()
        );
    }
    let spool = mta.dir.join("spool");
    let gone = poll_until(ARRIVAL_TIMEOUT, || {
        body_files(&spool).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "body files left after delivery: {:?}",
        body_files(&spool)
    );
}

/// One raw SMTP connection, for cutting a DATA short at a chosen point.
struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut raw = Raw { stream, reader };
        assert!(raw.reply().starts_with("220"));
        raw
    }

    /// The final line of the next reply.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("reply line");
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }
}

/// Goal: a kill -9 while a large DATA is being read loses nothing that
/// was answered 250 and leaves no phantom: the cut message is never
/// delivered and its body file is removed at the next start. Method: a
/// 3 MiB message is accepted (250) while the sink is down; a second
/// connection sends 2 MiB of a DATA (streamed to a body file) and stops;
/// the daemon is killed with SIGKILL and restarted with the sink up; the
/// accepted message must arrive byte for byte, the cut one never, and no
/// body file may stay.
#[test]
fn kill9_during_a_large_data_keeps_the_accepted_and_drops_the_cut() {
    let mut mta = Mta::start("stream-kill9");
    mta.sink.stop();
    let mut rng = Rng::from_env_or_clock();
    let accepted = large_message(&mut rng, "accepted", 3 * 1024 * 1024);
    let path = mta.dir.join("accepted.eml");
    fs::write(&path, &accepted).expect("write message");
    let code = send_file(mta.port(), &path, "sender@send.test", &["rcpt@example.com"]);
    assert_eq!(code, "250");

    let cut = large_message(&mut rng, "cut", 8 * 1024 * 1024);
    let mut raw = Raw::connect(mta.port());
    assert!(raw.command("EHLO client.test").starts_with("250"));
    assert!(raw
        .command("MAIL FROM:<sender@send.test>")
        .starts_with("250"));
    assert!(raw.command("RCPT TO:<rcpt@example.com>").starts_with("250"));
    assert!(raw.command("DATA").starts_with("354"));
    raw.stream
        .write_all(&dot_stuffed(&cut[..2 * 1024 * 1024]))
        .expect("write part of the body");
    let spool = mta.dir.join("spool");
    let streaming = poll_until(Duration::from_secs(30), || {
        (body_files(&spool).len() >= 2).then_some(())
    });
    assert!(
        streaming.is_some(),
        "the cut body is streamed to a file of its own: {:?}",
        body_files(&spool)
    );
    mta.daemon.kill9();
    drop(raw);
    mta.sink.restart();
    mta.daemon.restart();

    let arrived = mta.sink.wait_for_messages(1, LARGE_ARRIVAL_TIMEOUT);
    let body = arrived[0].bytes();
    let body = strip_leading_received(&body).expect("our Received header first");
    assert_eq!(
        first_difference(body, &accepted),
        None,
        "the accepted message"
    );
    let gone = poll_until(ARRIVAL_TIMEOUT, || {
        body_files(&spool).is_empty().then_some(())
    });
    assert!(gone.is_some(), "left: {:?}", body_files(&spool));
    // Nothing more comes: the cut message was never a message.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mta.sink.messages().len(), 1, "no phantom from the cut DATA");
    let received = crate::common::message_ids_of_kind(&mta.daemon.mainlog_lines(), "R");
    assert_eq!(received.len(), 1, "one R line: {received:?}");
}
