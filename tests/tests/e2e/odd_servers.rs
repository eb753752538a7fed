//! Outbound delivery against receivers that misbehave on purpose
//! (`tests/py/odd_server.py`): a greeting that refuses, a 5 KB reply
//! after the body, no 8BITMIME for an 8-bit body. Issue 14's first
//! findings, each as its own test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, py_dir, python, send_file, ChildGuard, Daemon, TempDir, TestConfig,
    ARRIVAL_TIMEOUT, READY_TIMEOUT,
};

/// How long a refused message may take to fail for good: 3 attempts with
/// retry_interval 1 s and max_retry_interval 2 s, plus the tick.
const REFUSED_FAIL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections allowed for a message that fails after 3 attempts: one
/// per attempt, and a little slack for timing.
const REFUSED_CONNECTIONS_MAX: u64 = 6;
/// How long to watch for more connections (or copies) after the outcome.
const QUIET_PERIOD: Duration = Duration::from_secs(3);
/// The over-long reply after the final dot, in bytes (RFC 5321: 512).
const LONG_REPLY_BYTES: usize = 5000;

/// `odd_server.py` as a child process, with its counts and messages.
struct OddServer {
    dir: PathBuf,
    port: u16,
    _child: ChildGuard,
}

impl OddServer {
    fn start(dir: &Path, args: &[&str]) -> OddServer {
        fs::create_dir_all(dir).expect("create odd server dir");
        let port = free_port();
        let log = fs::File::create(dir.with_extension("log")).expect("odd server log");
        let child = Command::new(python())
            .arg(py_dir().join("odd_server.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn python3 odd_server.py");
        let guard = ChildGuard::new("odd_server.py", child);
        let ready = poll_until(READY_TIMEOUT, || dir.join("ready").exists().then_some(()));
        assert!(ready.is_some(), "odd_server.py not ready on port {port}");
        OddServer {
            dir: dir.to_path_buf(),
            port,
            _child: guard,
        }
    }

    fn count(&self, name: &str) -> u64 {
        let text = fs::read_to_string(self.dir.join("counts.txt")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)
            .expect("read odd server dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| fs::read(p).expect("read eml"))
            .collect()
    }
}

fn write_message(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("message.eml");
    fs::write(&path, bytes).expect("write message");
    path
}

/// Goal: a receiver that refuses its greeting gets no reconnect storm, and
/// the message fails in time. Method: greeting 554 (then 421); one
/// message; `max_retries = 2`. Expect a T line per attempt carrying the
/// server's reply and stage 12 (reading banner), then a P line, no more
/// than a handful of connections, none after the P, and QUIT on every
/// connection refused with 554 (none after 421: the server is closing).
#[test]
fn a_refused_greeting_backs_off_logs_t_lines_quits_and_fails_at_max_retries() {
    for (greeting, quits) in [("554 5.7.1 go away", true), ("421 4.3.2 busy", false)] {
        let dir = TempDir::new("refused-greeting");
        let server = OddServer::start(&dir.join("odd"), &["--greeting", greeting]);
        let mut config = TestConfig::new(server.port);
        config.extra.push_str("max_retries = 2\n");
        // The DSN would go to the same server: bounces.rs tests DSNs.
        config.extra.push_str("generate_bounces = false\n");
        let daemon = Daemon::start(dir.path(), &config.render());
        let message = write_message(
            dir.path(),
            b"Subject: refused\r\nMessage-ID: <refused@test>\r\n\r\nhello\r\n",
        );
        let code = send_file(
            daemon.smtp_port(),
            &message,
            "s@src.test",
            &["r@example.com"],
        );
        assert_eq!(code, "250", "{greeting}");

        let lines = poll_until(REFUSED_FAIL_TIMEOUT, || {
            let lines = daemon.mainlog();
            lines.iter().any(|l| l.kind() == "P").then_some(lines)
        })
        .unwrap_or_else(|| panic!("{greeting}: no P line: {:?}", daemon.mainlog_lines()));
        let transient: Vec<_> = lines.iter().filter(|l| l.kind() == "T").collect();
        assert_eq!(transient.len(), 2, "{greeting}: {lines:?}");
        for t in &transient {
            assert_eq!(t.field(9), "12", "stage: reading banner: {t:?}");
            assert_eq!(t.field(13), greeting, "{t:?}");
        }
        let permanent = lines.iter().find(|l| l.kind() == "P").unwrap();
        assert!(
            permanent.field(13).contains("exceeded max retries")
                && permanent.field(13).contains(greeting),
            "{permanent:?}"
        );
        let connections = server.count("connections");
        thread::sleep(QUIET_PERIOD);
        assert_eq!(
            server.count("connections"),
            connections,
            "{greeting}: no connection once the queue is empty"
        );
        assert!(
            (3..=REFUSED_CONNECTIONS_MAX).contains(&connections),
            "{greeting}: {connections} connections for 3 attempts"
        );
        if quits {
            assert_eq!(server.count("quits"), connections, "QUIT after each 554");
        } else {
            assert_eq!(server.count("quits"), 0, "no QUIT after 421");
        }
    }
}

/// Goal: a receiver that never greets is given up on at the banner
/// timeout and backed off like a refusal. Method: a server that accepts
/// and says nothing; `ehlo_timeout = 1`, `max_retries = 1`. Expect a T
/// line `451 4.4.2 ... timeout reading banner` at stage 12, then a P, one
/// connection per attempt, and no QUIT (after a timeout we just close).
#[test]
fn a_silent_greeting_times_out_into_a_t_line_without_quit() {
    let dir = TempDir::new("silent-greeting");
    let server = OddServer::start(&dir.join("odd"), &["--silent"]);
    let mut config = TestConfig::new(server.port);
    config.extra.push_str("max_retries = 1\nehlo_timeout = 1\n");
    let daemon = Daemon::start(dir.path(), &config.render());
    let message = write_message(dir.path(), b"Subject: silent\r\n\r\nhello\r\n");
    let code = send_file(
        daemon.smtp_port(),
        &message,
        "s@src.test",
        &["r@example.com"],
    );
    assert_eq!(code, "250");
    let lines = poll_until(REFUSED_FAIL_TIMEOUT, || {
        let lines = daemon.mainlog();
        lines.iter().any(|l| l.kind() == "P").then_some(lines)
    })
    .unwrap_or_else(|| panic!("no P line: {:?}", daemon.mainlog_lines()));
    let transient: Vec<_> = lines.iter().filter(|l| l.kind() == "T").collect();
    assert_eq!(transient.len(), 1, "{lines:?}");
    assert_eq!(transient[0].field(9), "12");
    assert_eq!(
        transient[0].field(13),
        "451 4.4.2 ecelerity: timeout reading banner"
    );
    let connections = server.count("connections");
    assert!((2..=4).contains(&connections), "{connections} connections");
    assert_eq!(server.count("quits"), 0);
}

/// Goal: an over-long reply after the final dot still means "accepted".
/// Method: the server answers the dot with a 5 KB 250 line. Expect one
/// copy at the server, one D line and no T or P, even after a while.
#[test]
fn a_5_kb_reply_after_the_body_is_one_delivery() {
    let dir = TempDir::new("long-reply");
    let bytes = LONG_REPLY_BYTES.to_string();
    let server = OddServer::start(&dir.join("odd"), &["--final-reply-bytes", &bytes]);
    let daemon = Daemon::start(dir.path(), &TestConfig::new(server.port).render());
    let message = write_message(
        dir.path(),
        b"Subject: long reply\r\nMessage-ID: <long-reply@test>\r\n\r\nhello\r\n",
    );
    let code = send_file(
        daemon.smtp_port(),
        &message,
        "s@src.test",
        &["r@example.com"],
    );
    assert_eq!(code, "250");
    daemon.wait_for_kind("D", 1, ARRIVAL_TIMEOUT);
    thread::sleep(QUIET_PERIOD);
    let lines = daemon.mainlog();
    let kinds: Vec<&str> = lines.iter().map(|l| l.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "D").count(), 1, "{lines:?}");
    assert!(!kinds.contains(&"T") && !kinds.contains(&"P"), "{lines:?}");
    assert_eq!(server.messages().len(), 1, "exactly one copy");
}

/// Decodes quoted-printable (RFC 2045 6.7) with CRLF hard line breaks.
fn decode_quoted_printable(encoded: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).expect("hex digit") as u8;
    let mut out = Vec::new();
    let mut i = 0;
    while i < encoded.len() {
        match encoded[i] {
            b'=' if encoded[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' => {
                out.push(hex(encoded[i + 1]) << 4 | hex(encoded[i + 2]));
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn header_section(message: &[u8]) -> (&[u8], &[u8]) {
    let at = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    (&message[..at + 2], &message[at + 4..])
}

/// Goal: an 8-bit body to a server without 8BITMIME is converted, never
/// sent raw (RFC 6152). Method: a text/plain UTF-8 body with a long line,
/// trailing white space, '=' and a leading dot, to a server whose EHLO
/// leaves 8BITMIME out. Expect what arrives to be 7-bit, with
/// `Content-Transfer-Encoding: quoted-printable` (once), `MIME-Version`,
/// the Content-Type kept, no BODY=8BITMIME, lines within 78 bytes, and a
/// body that decodes to the original bytes.
#[test]
fn an_8bit_body_to_a_server_without_8bitmime_arrives_as_quoted_printable() {
    let dir = TempDir::new("downgrade");
    let server = OddServer::start(&dir.join("odd"), &["--no-8bitmime"]);
    let daemon = Daemon::start(dir.path(), &TestConfig::new(server.port).render());
    let body = format!(
        "Gr\u{fc}\u{df}e aus K\u{f6}ln = 100 \u{20ac}\r\n.a line that starts with a dot \r\n{}\r\n\
         tab at the end\t\r\n\r\nlast line\r\n",
        "\u{e9}t\u{e9} ".repeat(40)
    );
    let mut message = b"Subject: eight bit\r\nMessage-ID: <downgrade@test>\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        .to_vec();
    message.extend_from_slice(body.as_bytes());
    let file = write_message(dir.path(), &message);
    let code = send_file(daemon.smtp_port(), &file, "s@src.test", &["r@example.com"]);
    assert_eq!(code, "250");
    daemon.wait_for_kind("D", 1, ARRIVAL_TIMEOUT);

    let arrived = server.messages();
    assert_eq!(arrived.len(), 1);
    let arrived = &arrived[0];
    assert!(arrived.is_ascii(), "8-bit bytes went out raw");
    assert_eq!(server.count("mail_from_8bitmime"), 0);
    let (headers, encoded) = header_section(arrived);
    let headers = String::from_utf8_lossy(headers).to_ascii_lowercase();
    assert_eq!(
        headers.matches("content-transfer-encoding:").count(),
        1,
        "{headers}"
    );
    assert!(
        headers.contains("content-transfer-encoding: quoted-printable\r\n"),
        "{headers}"
    );
    assert!(headers.contains("mime-version: 1.0\r\n"), "{headers}");
    assert!(
        headers.contains("content-type: text/plain; charset=utf-8\r\n"),
        "{headers}"
    );
    assert!(headers.contains("subject: eight bit\r\n"), "{headers}");
    for line in encoded.split(|b| *b == b'\n') {
        assert!(line.len() <= 77, "a line of {} bytes", line.len());
    }
    assert_eq!(
        String::from_utf8(decode_quoted_printable(encoded)).unwrap(),
        body
    );
}

/// Goal: what cannot be converted safely is bounced, not sent raw.
/// Method: a raw UTF-8 Subject (8-bit header text) to a server without
/// 8BITMIME. Expect a P line `554 5.6.3`, no T line, nothing arrived.
#[test]
fn an_8bit_header_to_a_server_without_8bitmime_fails_with_554_5_6_3() {
    let dir = TempDir::new("downgrade-refused");
    let server = OddServer::start(&dir.join("odd"), &["--no-8bitmime"]);
    let mut config = TestConfig::new(server.port);
    // The DSN would go to the same server: bounces.rs tests DSNs.
    config.extra.push_str("generate_bounces = false\n");
    let daemon = Daemon::start(dir.path(), &config.render());
    let message =
        "Subject: Gr\u{fc}\u{df}e\r\nMessage-ID: <refused-8bit@test>\r\n\r\nK\u{f6}ln\r\n";
    let file = write_message(dir.path(), message.as_bytes());
    let code = send_file(daemon.smtp_port(), &file, "s@src.test", &["r@example.com"]);
    assert_eq!(code, "250");
    let lines = daemon.wait_for_kind("P", 1, ARRIVAL_TIMEOUT);
    let lines = ecelerity_tests::parse_mainlog(&lines);
    let permanent = lines.iter().find(|l| l.kind() == "P").unwrap();
    assert!(
        permanent.field(13).starts_with("554 5.6.3 ")
            && permanent.field(13).contains("8-bit header"),
        "{permanent:?}"
    );
    assert!(!lines.iter().any(|l| l.kind() == "T"), "{lines:?}");
    assert!(server.messages().is_empty(), "nothing sent raw");
    assert_eq!(server.count("messages"), 0);
}
