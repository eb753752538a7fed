//! Delivery end to end: what a client sends arrives at the sink byte for
//! byte behind one added `Received:` header, and the mainlog records it.

use std::fs;
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, run, send_file, send_messages, strip_leading_received, swaks, Daemon,
    PostfixSink, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

use crate::common::{every_reception_delivered, Mta};

/// Longest body line in the sample: long, but under the 998-octet limit.
const LONG_LINE_BYTES: usize = 990;
/// Extra headers in the sample, so header handling is not a one-line case.
const SAMPLE_HEADER_COUNT: usize = 40;

/// A message with the shapes that break naive relays: dot-leading lines, a
/// line of a lone dot, folded headers, tabs, trailing spaces, empty lines,
/// a line that looks like an mbox "From " separator, and long lines.
/// CRLF throughout; ends with CRLF.
fn varied_message(message_id: &str) -> Vec<u8> {
    let mut text = String::new();
    text.push_str("From: Sender <sender@example.org>\r\n");
    text.push_str("To: a@example.com, b@example.com, c@example.com\r\n");
    text.push_str("Subject: byte for byte\r\n");
    text.push_str(&format!("Message-ID: {message_id}\r\n"));
    text.push_str("Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n");
    text.push_str("X-Folded: first part\r\n\tsecond part after a tab\r\n  third part\r\n");
    for n in 0..SAMPLE_HEADER_COUNT {
        text.push_str(&format!(
            "X-Header-{n:02}: value {n} with  two  spaces \r\n"
        ));
    }
    text.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n");
    text.push_str("\r\n");
    text.push_str(".a line starting with a dot\r\n");
    text.push_str("..two dots\r\n");
    text.push_str(".\r\n");
    text.push_str(". \r\n");
    text.push_str("\r\n\r\n");
    text.push_str("From the mbox separator's point of view\r\n");
    text.push_str(">From quoted\r\n");
    text.push_str("tab\there\tand trailing spaces   \r\n");
    text.push_str(&"x".repeat(LONG_LINE_BYTES));
    text.push_str("\r\n");
    text.push('.');
    text.push_str(&"y".repeat(LONG_LINE_BYTES - 1));
    text.push_str("\r\n");
    for n in 0..200 {
        text.push_str(&format!(
            "line {n:03} !\"#$&'()*+,-./:;<=>?[\\]^_`{{|}}~\r\n"
        ));
    }
    text.push_str("last line\r\n");
    text.into_bytes()
}

/// Goal: the daemon changes nothing but adding `Received:` at the top, and
/// keeps the recipients of one message in one transaction.
/// Method: send a varied message to three recipients with smtplib; at the
/// sink, strip the first `Received:` header and compare the rest exactly.
#[test]
fn smtplib_message_arrives_byte_for_byte() {
    let mta = Mta::start("bytes-smtplib");
    let message = varied_message("<bytes-smtplib@e2e.test>");
    let file = mta.dir.join("message.eml");
    fs::write(&file, &message).unwrap();
    let rcpts = ["a@example.com", "b@example.com", "c@example.com"];
    let code = send_file(mta.port(), &file, "sender@example.org", &rcpts);
    assert_eq!(code, "250");

    let arrived = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    let bytes = arrived[0].bytes();
    let rest = strip_leading_received(&bytes).unwrap_or_else(|| {
        panic!(
            "no Received: header first:\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert!(
        rest == message.as_slice(),
        "content changed in transit;\nsent:\n{}\narrived:\n{}",
        String::from_utf8_lossy(&message),
        String::from_utf8_lossy(rest)
    );
    assert_eq!(arrived[0].mail_from, "sender@example.org");
    let mut got: Vec<String> = arrived[0].rcpts.clone();
    got.sort();
    assert_eq!(got, rcpts, "all recipients in one transaction");

    // Nothing else arrives (no second transaction for the same recipients).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mta.sink.messages().len(), 1);
}

/// Goal: the same holds for a second, independent client implementation.
/// Method: swaks sends the file (which swaks ends with CRLF itself); the
/// sink gets it behind one `Received:` header.
#[test]
fn swaks_message_arrives_byte_for_byte() {
    let mta = Mta::start("bytes-swaks");
    let message = varied_message("<bytes-swaks@e2e.test>");
    let file = mta.dir.join("message.eml");
    // swaks appends CRLF "." CRLF to the data, so the file has no final CRLF.
    fs::write(&file, &message[..message.len() - 2]).unwrap();
    let data_arg = format!("@{}", file.display());
    let output = swaks(
        mta.port(),
        &[
            "--to",
            "x@example.com",
            "--from",
            "y@example.org",
            "--data",
            &data_arg,
        ],
    );
    assert!(
        output.status.success(),
        "swaks failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let arrived = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    let bytes = arrived[0].bytes();
    let rest = strip_leading_received(&bytes).expect("Received: header first");
    assert!(
        rest == message.as_slice(),
        "content changed in transit;\narrived:\n{}",
        String::from_utf8_lossy(rest)
    );
    assert_eq!(arrived[0].rcpts, vec!["x@example.com"]);
}

/// Goal: the byte-for-byte tests expect the right thing. Method: send the
/// sample with smtplib and swaks straight to the sink (no daemon) and check
/// it arrives exactly as the tests above expect it behind the daemon.
#[test]
fn sample_message_reaches_a_bare_sink_unchanged_from_both_clients() {
    let dir = TempDir::new("bytes-bare-sink");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let message = varied_message("<bytes-bare@e2e.test>");
    let file = dir.join("message.eml");
    fs::write(&file, &message).unwrap();
    assert_eq!(
        send_file(sink.port(), &file, "s@example.org", &["a@example.com"]),
        "250"
    );
    fs::write(&file, &message[..message.len() - 2]).unwrap();
    let data_arg = format!("@{}", file.display());
    let output = swaks(sink.port(), &["--to", "x@example.com", "--data", &data_arg]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let arrived = sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    assert!(arrived[0].bytes() == message, "smtplib changed the sample");
    assert!(arrived[1].bytes() == message, "swaks changed the sample");
}

/// Goal: the mainlog records each reception and delivery in Momentum's
/// layout. Method: one message to two recipients, then read the R and D
/// lines field by field.
#[test]
fn mainlog_has_reception_and_delivery_lines() {
    let mta = Mta::start("mainlog");
    let output = swaks(
        mta.port(),
        &[
            "--to",
            "alice@example.com,bob@example.com",
            "--from",
            "news@example.net",
            "--body",
            "mainlog test",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lines = mta.daemon.wait_for(
        "two R lines and a D line for each",
        ARRIVAL_TIMEOUT,
        |lines| {
            ecelerity_tests::count_kinds(lines)
                .get("R")
                .copied()
                .unwrap_or(0)
                >= 2
                && every_reception_delivered(lines)
        },
    );
    let parsed = ecelerity_tests::parse_mainlog(&lines);
    let receptions: Vec<_> = parsed.iter().filter(|l| l.kind() == "R").collect();
    assert_eq!(receptions.len(), 2, "one R line per recipient:\n{lines:#?}");
    let mut rcpts: Vec<String> = receptions
        .iter()
        .map(|r| format!("{}@{}", r.field(5), r.field(6)))
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, ["alice@example.com", "bob@example.com"]);
    for r in &receptions {
        assert_eq!(r.fields.len(), 14, "R layout: {:?}", r.fields);
        assert!(
            r.field(0).parse::<f64>().is_ok(),
            "timestamp: {:?}",
            r.fields
        );
        assert!(!r.message_id().is_empty());
        assert_eq!(r.field(7), "news");
        assert_eq!(r.field(8), "example.net");
        assert_eq!(r.field(9), "127.0.0.1");
        assert!(
            r.field(10).parse::<u64>().unwrap_or(0) > 0,
            "size: {:?}",
            r.fields
        );
        assert_eq!(r.field(11), "esmtp");
        assert_eq!(r.field(12), "default");
        assert_eq!(r.field(13), "default");
    }
    let deliveries: Vec<_> = parsed.iter().filter(|l| l.kind() == "D").collect();
    assert!(!deliveries.is_empty());
    for d in &deliveries {
        assert_eq!(d.fields.len(), 12, "D layout: {:?}", d.fields);
        assert_eq!(d.field(5), "example.com");
        assert!(
            d.field(6).parse::<u64>().unwrap_or(0) > 0,
            "size: {:?}",
            d.fields
        );
        assert_eq!(d.field(7), "default");
        assert_eq!(d.field(8), "default");
        assert_eq!(d.field(9), "0", "first attempt: {:?}", d.fields);
        assert!(
            d.field(10).parse::<f64>().is_ok(),
            "seconds: {:?}",
            d.fields
        );
        assert_eq!(d.field(11), "127.0.0.1");
    }
    assert!(!parsed.iter().any(|l| l.kind() == "T" || l.kind() == "P"));
}

/// Goal: a burst from Postfix's load generator passes through to Postfix's
/// sink with nothing lost. Method: smtp-source sends 200 messages over 4
/// sessions; smtp-sink dumps each transaction; count dumps and D lines.
#[test]
fn smtp_source_burst_reaches_postfix_smtp_sink() {
    const MESSAGES: usize = 200;
    let dir = TempDir::new("smtp-source");
    let sink = PostfixSink::start(&dir.join("dump"), free_port());
    let config = TestConfig::new(sink.port());
    let daemon = Daemon::start(dir.path(), &config.render());
    let output = run(
        Command::new("/usr/sbin/smtp-source")
            .args(["-m", &MESSAGES.to_string(), "-s", "4", "-l", "2048"])
            .args(["-f", "load@example.org", "-t", "sink@example.com"])
            .arg(format!("127.0.0.1:{}", daemon.smtp_port())),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dumps = poll_until(Duration::from_secs(120), || {
        let dumps = sink.dumps();
        (dumps.len() >= MESSAGES).then_some(dumps)
    })
    .unwrap_or_else(|| panic!("only {} of {MESSAGES} arrived", sink.dumps().len()));
    assert_eq!(dumps.len(), MESSAGES);
    daemon.wait_for_kind("D", MESSAGES, ARRIVAL_TIMEOUT);
}

/// Messages sent to the spread domain.
const SPREAD_MESSAGES: usize = 40;

/// Goal: `delivery_shards = 0` spreads one domain's queue over every shard,
/// and every message still arrives once. Method: two shards, all mail to
/// one domain; when all has arrived, the console's per-shard rows must
/// show deliveries on both shards (with the default, one shard owns the
/// domain and delivers everything).
#[test]
fn a_domain_spread_over_both_shards_is_delivered_by_both() {
    let mta = Mta::start_with("spread", |c| {
        c.shards = 2;
        c.extra.push_str("delivery_shards = 0\n");
    });
    let count = SPREAD_MESSAGES.to_string();
    let report = send_messages(
        mta.port(),
        &["--count", &count, "--threads", "4"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        report.accepted().len(),
        SPREAD_MESSAGES,
        "{}",
        report.stderr
    );
    mta.sink.wait_for_messages(SPREAD_MESSAGES, ARRIVAL_TIMEOUT);
    mta.daemon
        .wait_for_kind("D", SPREAD_MESSAGES, ARRIVAL_TIMEOUT);
    assert_eq!(
        mta.sink.messages().len(),
        SPREAD_MESSAGES,
        "each message once"
    );
    let mut last = String::new();
    let both = poll_until(ARRIVAL_TIMEOUT, || {
        let output = mta.daemon.console("summary\n");
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let delivered: Vec<u64> = last
            .lines()
            .skip_while(|l| !l.starts_with("Per shard:"))
            .skip(2)
            .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
            .collect();
        (delivered.len() == 2
            && delivered.iter().all(|&d| d > 0)
            && delivered.iter().sum::<u64>() == SPREAD_MESSAGES as u64)
            .then_some(())
    });
    assert!(both.is_some(), "both shards should deliver:\n{last}");
}
