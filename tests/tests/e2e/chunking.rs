//! CHUNKING (RFC 3030) end to end. In: messages sent with BDAT by
//! tests/py/bdat_send.py (Python's smtplib does the connection, commands
//! and reply parsing; no packaged client sends BDAT, see the script) must
//! arrive at the sink byte for byte, 8-bit data and a body over the
//! streaming threshold included; the size limit holds across chunks and
//! the chunk's octets are read all the same. Out: with `send_chunking`
//! the body goes with BDAT to a real Postfix smtpd (CHUNKING since 3.4;
//! Postfix's own client never sends BDAT), whose log counts the BDAT
//! commands it got, and arrives byte for byte behind it at the sink.

use std::fs;
use std::path::Path;
use std::process::Command;

use ecelerity_tests::{
    free_port, poll_until, py_dir, python, run, strip_leading_received, Daemon, PostfixRelay, Sink,
    TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

use crate::common::Mta;

/// Sends `body` with BDAT chunks of `chunk_bytes`; returns the reply lines
/// after RCPT and whether the script succeeded.
fn bdat_send(
    port: u16,
    dir: &Path,
    body: &[u8],
    chunk_bytes: usize,
    flags: &[&str],
) -> Vec<String> {
    let file = dir.join(format!("bdat-{chunk_bytes}-{}.eml", body.len()));
    fs::write(&file, body).unwrap();
    let output = run(
        Command::new(python())
            .arg(py_dir().join("bdat_send.py"))
            .arg(port.to_string())
            .arg("sender@send.test")
            .arg("rcpt@example.com")
            .arg(&file)
            .arg(chunk_bytes.to_string())
            .args(flags),
        ARRIVAL_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bdat_send.py: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// What DATA transparency makes of a body on the way out to a server
/// without CHUNKING (smtp::body): a bare CR or LF becomes CRLF, and the
/// last line gets its CRLF.
fn as_sent_by_data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|r| &r[..3]).collect()
}

#[test]
fn bdat_in_with_8bit_and_bare_line_ends_arrives_as_sent() {
    let mta = Mta::start("bdat-in");
    let body: &[u8] = b"From: <sender@send.test>\r\nTo: <rcpt@example.com>\r\n\
        Subject: bdat 8-bit\r\nMessage-ID: <bdat-8bit@send.test>\r\n\r\n\
        8-bit: \xe9\xff\xfe\x80\r\n.\r\n..two dots\r\nQUIT\r\nBDAT 5\r\n\
        bare LF\nbare CR\rCR CR LF\r\r\nend without a line end";
    let replies = bdat_send(mta.port(), mta.dir.path(), body, 17, &[]);
    let chunks = body.len().div_ceil(17);
    assert_eq!(replies.len(), chunks, "{replies:?}");
    assert!(
        replies[..chunks - 1]
            .iter()
            .all(|r| r == "250 2.0.0 Ok: 17 octets received"),
        "{replies:?}"
    );
    assert!(
        replies[chunks - 1].starts_with("250 2.0.0 Ok: queued as "),
        "{replies:?}"
    );
    let messages = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    let got = messages[0].bytes();
    let got = strip_leading_received(&got).expect("our Received header first");
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&as_sent_by_data(body))
    );
    assert_eq!(got, as_sent_by_data(body));
    assert_eq!(messages[0].rcpts, ["rcpt@example.com"]);
}

#[test]
fn pipelined_bdat_chunks_make_one_message() {
    let mta = Mta::start("bdat-pipelined");
    let body: &[u8] = b"Subject: pipelined\r\nMessage-ID: <bdat-pipe@send.test>\r\n\r\n\
        MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<hidden@victim.test>\r\nBDAT 3\r\nabc\r\n\
        \xc3\xa9t\xc3\xa9\r\n";
    let replies = bdat_send(mta.port(), mta.dir.path(), body, 10, &["--pipeline"]);
    let chunks = body.len().div_ceil(10);
    assert_eq!(replies.len(), chunks + 2, "{replies:?}");
    assert_eq!(replies[..2], ["250 2.1.0 Ok", "250 2.1.5 Ok"]);
    assert!(replies[2..chunks + 1]
        .iter()
        .all(|r| r.starts_with("250 2.0.0 Ok: 10 octets")));
    assert!(replies[chunks + 1].contains("queued as"), "{replies:?}");
    let messages = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(mta.sink.messages().len(), 1, "one message, nothing hidden");
    let got = messages[0].bytes();
    assert_eq!(strip_leading_received(&got), Some(body));
}

#[test]
fn a_large_bdat_message_is_streamed_and_arrives_byte_for_byte() {
    let mta = Mta::start("bdat-large");
    let mut body = b"From: <sender@send.test>\r\nSubject: large bdat\r\n\
        Message-ID: <bdat-large@send.test>\r\n\r\n"
        .to_vec();
    let mut n = 0u32;
    while body.len() < 300 * 1024 {
        n += 1;
        body.extend_from_slice(format!("line {n} \u{e9}t\u{e9} ").as_bytes());
        body.extend_from_slice(&[0x80 + (n % 0x7f) as u8, b'\r', b'\n']);
        if n.is_multiple_of(7) {
            body.extend_from_slice(b".\r\n");
        }
    }
    // Chunks larger than the 256 KiB inline limit's read buffer, then an
    // empty LAST.
    let replies = bdat_send(mta.port(), mta.dir.path(), &body, 100_000, &["--zero-last"]);
    assert_eq!(codes(&replies), ["250", "250", "250", "250", "250"]);
    assert!(replies[4].contains("queued as"), "{replies:?}");
    let messages = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    let got = messages[0].bytes();
    assert!(
        strip_leading_received(&got) == Some(&body[..]),
        "the large body differs ({} bytes arrived, {} sent)",
        got.len(),
        body.len()
    );
}

#[test]
fn bdat_over_max_message_size_gets_552_after_its_octets() {
    let mta = Mta::start_with("bdat-limit", |config| {
        config.extra.push_str("max_message_size = 5000\n");
    });
    let body = vec![b'x'; 8000];
    let replies = bdat_send(mta.port(), mta.dir.path(), &body, 3000, &["--noop"]);
    assert_eq!(
        replies,
        [
            "250 2.0.0 Ok: 3000 octets received",
            "552 5.3.4 Message size exceeds fixed maximum message size",
            // Pipelined after the failure: read, and refused for want of
            // a transaction.
            "503 5.5.1 Error: need MAIL command",
            // The octets were all read: the session is in step.
            "250 2.0.0 Ok",
        ]
    );
    assert!(mta.sink.messages().is_empty());
}

#[test]
fn send_chunking_delivers_with_bdat_to_postfix_byte_for_byte() {
    if !PostfixRelay::available() {
        eprintln!("skipped: Postfix is not installed (tests/install-deps)");
        return;
    }
    let dir = TempDir::new("bdat-out");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let postfix = PostfixRelay::start(&dir.join("postfix"), free_port(), sink.port());
    let mut config = TestConfig::new(postfix.port());
    config.extra.push_str("send_chunking = true\n");
    let daemon = Daemon::start(dir.path(), &config.render());

    // A small message with 8-bit text and dot lines, and one over the
    // spool's 256 KiB read chunk, so it leaves in two BDAT chunks.
    let small: &[u8] = b"From: <sender@send.test>\r\nTo: <rcpt@example.com>\r\n\
        Date: Thu, 03 Dec 2026 00:00:00 +0000\r\nMessage-ID: <bdat-out-small@send.test>\r\n\
        Subject: bdat out\r\n\r\n\xe9t\xe9 8-bit\r\n.\r\n..two\r\nlast line\r\n";
    let mut large = b"From: <sender@send.test>\r\nTo: <rcpt@example.com>\r\n\
        Date: Thu, 03 Dec 2026 00:00:00 +0000\r\nMessage-ID: <bdat-out-large@send.test>\r\n\
        Subject: bdat out large\r\n\r\n"
        .to_vec();
    let mut n = 0u32;
    while large.len() < 400 * 1024 {
        n += 1;
        large.extend_from_slice(format!("line {n} \u{e9}\r\n").as_bytes());
    }
    for body in [small, &large[..]] {
        let replies = bdat_send(daemon.smtp_port(), dir.path(), body, 64 * 1024, &[]);
        assert!(replies.last().unwrap().contains("queued as"), "{replies:?}");
    }
    let messages = sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    for body in [small, &large[..]] {
        let id = String::from_utf8_lossy(
            &body[body.windows(11).position(|w| w == b"Message-ID:").unwrap()..],
        )
        .lines()
        .next()
        .unwrap()
        .to_string();
        let arrived = messages
            .iter()
            .map(|m| m.bytes())
            .find(|bytes| String::from_utf8_lossy(bytes).contains(&id))
            .unwrap_or_else(|| panic!("{id} did not arrive"));
        // Postfix's Received header, then ours, then the body as sent.
        let behind_postfix = strip_leading_received(&arrived).expect("Postfix's Received");
        let behind_us = strip_leading_received(behind_postfix).expect("our Received");
        assert!(behind_us == body, "{id}: the body changed on the way");
    }
    // Postfix counts the commands of each session: one BDAT for the small
    // message, two for the large one, no DATA.
    let count = |line: &str, command: &str| -> u32 {
        line.split(' ')
            .find_map(|field| field.strip_prefix(command)?.parse().ok())
            .unwrap_or(0)
    };
    let counted = poll_until(ARRIVAL_TIMEOUT, || {
        let log = postfix.maillog_text();
        let disconnects: Vec<String> = log
            .lines()
            .filter(|l| l.contains("disconnect from") && l.contains(" mail="))
            .map(str::to_owned)
            .collect();
        let mails: u32 = disconnects.iter().map(|l| count(l, "mail=")).sum();
        (mails >= 2).then_some(disconnects)
    })
    .unwrap_or_else(|| panic!("the sessions did not end:\n{}", postfix.maillog_text()));
    let bdats: u32 = counted.iter().map(|l| count(l, "bdat=")).sum();
    let datas: u32 = counted.iter().map(|l| count(l, "data=")).sum();
    assert_eq!((bdats, datas), (3, 0), "{counted:?}");
}
