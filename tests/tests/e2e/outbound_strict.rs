//! Issue 4's outbound promise, end to end: whatever bytes sit in a spooled
//! body, what goes on the wire is dot-stuffed CRLF text that a strict
//! receiver parses as exactly one message, equal to the body with its line
//! ends made CRLF.
//!
//! The strict receiver is a private Postfix (3.7.10+) with
//! `smtpd_forbid_bare_newline = reject` and no exclusions, relaying to the
//! aiosmtpd sink, which stores the exact bytes it gets. The hostile bodies
//! are written straight into the daemon's spool with the real spool code
//! before the daemon starts (no SMTP reception could store most of them),
//! so this test, unlike the rest of the harness, links `ecelerity-spool`
//! and `ecelerity-engine` (for the envelope codec and message id layout).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ecelerity_engine::queue::record::SpooledEnvelope;
use ecelerity_engine::queue::MessageId;
use ecelerity_spool::{Spool, SpoolOptions};
use ecelerity_tests::{
    count_kinds, free_port, parse_mainlog, poll_until, strip_leading_received, Daemon,
    PostfixRelay, Sink, SmtpClient, TempDir, TestConfig,
};

/// How long all the spooled messages may take to reach the sink.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(25);
/// How long to keep watching the sink after the last expected arrival, for
/// a smuggled extra message.
const SETTLE: Duration = Duration::from_secs(2);
/// How long Postfix's log may lag behind the probe's refusal.
const PROBE_LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Memory glommio reserves for io_uring buffers in the writer executor.
const WRITER_IO_MEMORY_BYTES: usize = 1 << 20;
/// Envelope sender of every injected message.
const SENDER: &str = "sender@src.test";

/// The header section every case with headers starts with, its line ends
/// `eol`: From, To, Date and Message-ID present, so Postfix adds nothing
/// but its Received header.
fn headers(n: usize, eol: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>{eol}To: <{rcpt}>{eol}Date: Thu, 01 Jan 2026 00:00:00 +0000{eol}\
         Message-ID: {id}{eol}Subject: case {n}{eol}{eol}",
        rcpt = rcpt(n),
        id = message_id(n),
    )
    .into_bytes()
}

fn rcpt(n: usize) -> String {
    format!("case{n}@sink.test")
}

fn message_id(n: usize) -> String {
    format!("<outbound-strict-{n}@e2e.test>")
}

/// A hidden second transaction, with line ends `eol`.
fn smuggled(eol: &str) -> String {
    format!(
        "MAIL FROM:<x@evil>{eol}RCPT TO:<y@evil>{eol}DATA{eol}Subject: smuggled{eol}{eol}\
         evil body{eol}.{eol}"
    )
}

/// (name, whole spooled body, 8BITMIME). Bodies with headers get them from
/// `headers(n, ..)`; the empty body and the lone dot have none and are
/// matched at the sink by their recipient only.
fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let with = |n: usize, eol: &str, rest: &[u8]| {
        let mut body = headers(n, eol);
        body.extend_from_slice(rest);
        body
    };
    let mut cases: Vec<(&'static str, Vec<u8>, bool)> = Vec::new();
    let mut add = |name: &'static str, build: &dyn Fn(usize) -> Vec<u8>, eight_bit: bool| {
        let n = cases.len();
        cases.push((name, build(n), eight_bit));
    };
    add(
        "bare LF everywhere",
        &|n| with(n, "\n", b"line one\nline two\n"),
        false,
    );
    add(
        "bare CR everywhere",
        &|n| with(n, "\r", b"line one\rline two\r"),
        false,
    );
    add(
        "LF dot LF mid-body",
        &|n| with(n, "\r\n", b"before\n.\nafter\r\n"),
        false,
    );
    add(
        "CR dot CRLF mid-body",
        &|n| with(n, "\r\n", b"before\r.\r\nafter\r\n"),
        false,
    );
    add(
        "CRLF dot LF mid-body",
        &|n| with(n, "\r\n", b"before\r\n.\nafter\r\n"),
        false,
    );
    add(
        "CRLF dot CR mid-body",
        &|n| with(n, "\r\n", b"before\r\n.\rafter\r\n"),
        false,
    );
    add(
        "a lone dot line",
        &|n| with(n, "\r\n", b"before\r\n.\r\nafter\r\n"),
        false,
    );
    add(
        "lines starting with dots",
        &|n| with(n, "\r\n", b"..two\r\n...three\r\n..\r\n.x\r\n"),
        false,
    );
    add(
        "no final CRLF",
        &|n| with(n, "\r\n", b"the last line has no end"),
        false,
    );
    add(
        "ends in a dot without CRLF",
        &|n| with(n, "\r\n", b"before\r\n."),
        false,
    );
    add(
        "ends in CRLF dot CR",
        &|n| with(n, "\r\n", b"before\r\n.\r"),
        false,
    );
    add("empty body", &|_| Vec::new(), false);
    add("only a dot line", &|_| b".\r\n".to_vec(), false);
    add(
        "smuggled transaction, CRLF",
        &|n| {
            with(
                n,
                "\r\n",
                format!("hi\r\n.\r\n{}", smuggled("\r\n")).as_bytes(),
            )
        },
        false,
    );
    add(
        "smuggled transaction, bare LF",
        &|n| with(n, "\r\n", format!("hi\n.\n{}", smuggled("\n")).as_bytes()),
        false,
    );
    add(
        "smuggled transaction, CR dot CR",
        &|n| with(n, "\r\n", format!("hi\r.\r{}", smuggled("\r")).as_bytes()),
        false,
    );
    add(
        "smuggled transaction, mixed ends",
        &|n| {
            with(
                n,
                "\r\n",
                b"hi\r\n.\nMAIL FROM:<x@evil>\r\nRCPT TO:<y@evil>\nDATA\r\n\r\nevil\n.\r\n",
            )
        },
        false,
    );
    add(
        "CR CR LF and LF CR",
        &|n| with(n, "\r\n", b"a\r\r\nb\n\rc\r\n"),
        false,
    );
    add(
        "dot after a bare CR",
        &|n| with(n, "\r\n", b"x\r.y\r\n"),
        false,
    );
    add(
        "NUL bytes",
        &|n| with(n, "\r\n", b"a\0b\r\n\0\r\n.\0\r\n"),
        false,
    );
    add(
        "8-bit bytes",
        &|n| with(n, "\r\n", b"caf\xc3\xa9 \xff\xfe\x80\r\n.\xe9\r\n"),
        true,
    );
    cases
}

/// The body as it must arrive: every CR, LF and CRLF made one CRLF, and a
/// final CRLF added to a non-empty body that lacks one.
fn normalised(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
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
            byte => out.push(byte),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What the sink must store for a spooled `body` once Received headers are
/// removed: the normalised body, behind the empty line Postfix's cleanup
/// inserts when a message opens with a line that is not a header (so the
/// lone dot arrives as "\r\n.\r\n"; an empty message stays empty).
fn arrival_expected(body: &[u8]) -> Vec<u8> {
    let body = normalised(body);
    let first_line = &body[..body.windows(2).position(|w| w == b"\r\n").unwrap_or(0)];
    let is_header = first_line
        .iter()
        .position(|&b| b == b':')
        .is_some_and(|colon| {
            colon > 0 && first_line[..colon].iter().all(|&b| b.is_ascii_graphic())
        });
    if body.is_empty() || is_header {
        return body;
    }
    let mut out = b"\r\n".to_vec();
    out.extend_from_slice(&body);
    out
}

/// The message with every leading Received header removed.
fn without_received(mut message: &[u8]) -> &[u8] {
    while let Some(rest) = strip_leading_received(message) {
        message = rest;
    }
    message
}

/// The spool id of case `n` (home shard 0; sequence 0 is avoided).
fn spool_id(n: usize) -> MessageId {
    MessageId::new(0, n as u64 + 1)
}

/// Append every case to the spool in `dir` with the real spool code, as
/// shard 0 would have after a reception, and close it.
fn write_spool(dir: &Path, cases: &[(&'static str, Vec<u8>, bool)]) {
    let dir = dir.to_path_buf();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let records: Vec<(u64, Vec<u8>, Vec<u8>)> = cases
        .iter()
        .enumerate()
        .map(|(n, (_, body, eight_bit))| {
            let envelope = SpooledEnvelope {
                received_unix_ms: now_ms,
                peer_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                connection_id: n as u64,
                body_8bitmime: *eight_bit,
                binding: ecelerity_engine::config::DEFAULT_BINDING.to_string(),
                mail_from: SENDER.to_string(),
                rcpts: vec![rcpt(n)],
                extensions: Vec::new(),
            };
            let mut encoded = Vec::new();
            envelope.encode(&mut encoded);
            (spool_id(n).0, encoded, body.clone())
        })
        .collect();
    glommio::LocalExecutorBuilder::default()
        .io_memory(WRITER_IO_MEMORY_BYTES)
        .spawn(move || async move {
            let (spool, recovery) = Spool::open(&dir, SpoolOptions::default())
                .await
                .expect("open spool");
            assert!(recovery.messages.is_empty(), "a fresh spool is empty");
            for (id, envelope, body) in &records {
                spool
                    .append_message(*id, envelope, body)
                    .await
                    .expect("append message");
            }
            spool.close().await.expect("close spool");
        })
        .expect("spawn spool writer executor")
        .join()
        .expect("spool writer executor");
}

/// Prove the relay is strict before trusting it: a DATA with a bare LF
/// from 127.0.0.1 is refused. Returns the length of Postfix's log after
/// the probe, so later checks read only what the daemon caused.
fn probe_strictness(postfix: &PostfixRelay) -> usize {
    let mut client = SmtpClient::connect(postfix.port());
    assert_eq!(client.command("EHLO probe.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<probe@src.test>").0, 250);
    assert_eq!(client.command("RCPT TO:<probe@sink.test>").0, 250);
    assert_eq!(client.command("DATA").0, 354);
    client.write_raw(b"Subject: probe\r\n\r\nbare\nLF\r\n.\r\n");
    let reply = client.read_reply();
    assert!(
        matches!(reply, Some((code, _)) if code >= 500),
        "Postfix accepted a bare LF, so it is not the strict receiver this test needs: {reply:?}"
    );
    drop(client);
    let logged = poll_until(PROBE_LOG_TIMEOUT, || {
        let text = postfix.maillog_text();
        text.contains("bare <LF>").then_some(text.len())
    });
    logged.unwrap_or_else(|| {
        panic!(
            "Postfix refused the probe but logged no bare <LF>:\n{}",
            postfix.maillog_text()
        )
    })
}

/// Goal: a strict receiver sees exactly one well-formed message per spooled
/// body, whatever the body holds. Method: write bodies with bare CR and LF,
/// dot lines in every line-end spelling, a smuggled second transaction,
/// no final CRLF, NUL and 8-bit bytes, an empty body and a lone dot into
/// shard 0's spool; start Postfix (bare LF rejected, for every client) as
/// the daemon's gateway, relaying to the sink; start the daemon, which
/// recovers and delivers them (a bare-LF probe first proves Postfix strict).
/// Then: one mainlog D line per message and no
/// T or P; Postfix logged no bare-LF complaint and relayed each message
/// once; the sink got exactly one message per case, none with an `evil`
/// envelope, each equal (after the Received headers) to the body with its
/// line ends made CRLF (see `arrival_expected` for Postfix's one addition).
#[test]
fn outbound_strict_receiver_sees_each_hostile_spooled_body_as_one_clean_message() {
    if !PostfixRelay::available() {
        eprintln!("e2e: SKIPPED outbound_strict: Postfix is not installed (tests/install-deps)");
        return;
    }
    let cases = cases();
    let dir = TempDir::new("outbound-strict");
    let mut config = TestConfig::new(0);
    config.shards = 1;
    write_spool(&dir.join("spool/0"), &cases);

    let sink = Sink::start(&dir.join("sink"), free_port());
    let postfix = PostfixRelay::start(&dir.join("postfix"), free_port(), sink.port());
    let maillog_before = probe_strictness(&postfix);
    config.gateway_port = postfix.port();
    let daemon = Daemon::start(dir.path(), &config.render());

    let lines = daemon.wait_for("a D line per spooled message", DELIVERY_TIMEOUT, |lines| {
        let kinds = count_kinds(lines);
        kinds.get("D").copied().unwrap_or(0) + kinds.get("P").copied().unwrap_or(0) >= cases.len()
    });
    let arrivals = sink.wait_for_messages(cases.len(), DELIVERY_TIMEOUT);
    thread::sleep(SETTLE);

    // The daemon: every message delivered once, nothing refused or deferred.
    let lines = {
        let later = daemon.mainlog_lines();
        if later.len() >= lines.len() {
            later
        } else {
            lines
        }
    };
    let kinds = count_kinds(&lines);
    assert_eq!(
        (kinds.get("P"), kinds.get("T")),
        (None, None),
        "Postfix refused or deferred a message; mainlog:\n{}",
        lines.join("\n")
    );
    let delivered: Vec<String> = parse_mainlog(&lines)
        .iter()
        .filter(|l| l.kind() == "D")
        .map(|l| l.message_id().to_string())
        .collect();
    let expected: BTreeSet<String> = (0..cases.len()).map(|n| spool_id(n).to_string()).collect();
    assert_eq!(delivered.len(), cases.len(), "D lines: {delivered:?}");
    assert_eq!(
        delivered.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "each spooled message is delivered exactly once"
    );

    // Postfix: no bare newline seen, one relay per message.
    let maillog = postfix
        .maillog_text()
        .get(maillog_before..)
        .unwrap_or("")
        .to_string();
    assert!(
        !maillog.to_ascii_lowercase().contains("bare <lf>"),
        "Postfix saw a bare LF:\n{maillog}"
    );
    let relayed = maillog.matches("status=sent").count();
    assert_eq!(
        relayed,
        cases.len(),
        "Postfix relayed {relayed} messages:\n{maillog}"
    );

    // The sink: exactly the injected messages, each once and intact.
    let arrivals = {
        let later = sink.messages();
        assert_eq!(
            later.len(),
            cases.len(),
            "arrivals at the sink: {:?}",
            later.iter().map(|m| &m.rcpts).collect::<Vec<_>>()
        );
        drop(arrivals);
        later
    };
    for message in &arrivals {
        assert_eq!(message.mail_from, SENDER, "unexpected sender: {message:?}");
        assert!(
            message.rcpts.iter().all(|r| !r.contains("evil")),
            "a smuggled transaction arrived: {message:?}"
        );
    }
    for (n, (name, body, _)) in cases.iter().enumerate() {
        let matching: Vec<_> = arrivals
            .iter()
            .filter(|m| m.rcpts == vec![rcpt(n)])
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "case {n} ({name}): arrivals {matching:?}"
        );
        let bytes = matching[0].bytes();
        if body.starts_with(b"From:") {
            assert_eq!(
                matching[0].header("Message-ID").as_deref(),
                Some(message_id(n).as_str()),
                "case {n} ({name})"
            );
        }
        let got = without_received(&bytes);
        let want = arrival_expected(body);
        assert!(
            got == want.as_slice(),
            "case {n} ({name}): body altered on the way\n  spooled: {:?}\n  wanted:  {:?}\n  got:     {:?}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(got)
        );
    }
}
