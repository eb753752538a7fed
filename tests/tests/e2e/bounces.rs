//! Permanent failures end in a classified bouncelog line and a DSN to the
//! return path; a message with a null return path fails without one.
//! Method: the Python sink refuses recipients by local part
//! (`reject*` -> 550 5.1.1, `full*` -> 552 5.2.2); the daemon relays
//! everything, the DSN included, to that sink, so the DSN arrives there and
//! is read back with Python's email package (tests/py/dsn.py).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    complete_lines, free_port, poll_until, py_dir, python, Daemon, Sink, SinkMessage, SmtpClient,
    TempDir, TestConfig,
};

const WAIT: Duration = Duration::from_secs(30);
const FULL_RULE: &str = "full=552 5.2.2 mailbox full";

struct Bouncing {
    daemon: Daemon,
    sink: Sink,
    dir: TempDir,
}

fn start(label: &str) -> Bouncing {
    let dir = TempDir::new(label);
    let sink = Sink::start_with_args(&dir.join("sink"), free_port(), &["--rule", FULL_RULE]);
    let config = TestConfig::new(sink.port());
    let daemon = Daemon::start(dir.path(), &config.render());
    Bouncing { daemon, sink, dir }
}

/// Sends one message over SMTP and returns once it is queued.
fn send(port: u16, mail_from: &str, rcpts: &[&str], subject: &str) {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command(&format!("MAIL FROM:<{mail_from}>")).0, 250);
    for rcpt in rcpts {
        assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    }
    assert_eq!(client.command("DATA").0, 354);
    let body = format!(
        "From: <{mail_from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nhello\r\n.\r\n",
        rcpts[0]
    );
    client.write_raw(body.as_bytes());
    let (code, text) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{text}");
    client.command("QUIT");
}

/// Bouncelog B lines, split on unescaped '@' up to the raw reply.
fn bouncelog(dir: &Path) -> Vec<Vec<String>> {
    complete_lines(&dir.join("log/bouncelog.ec"))
        .iter()
        .map(|l| l.splitn(16, '@').map(str::to_string).collect())
        .collect()
}

fn wait_for_bounce_lines(dir: &Path, count: usize) -> Vec<Vec<String>> {
    poll_until(WAIT, || {
        let lines = bouncelog(dir);
        (lines.len() >= count).then_some(lines)
    })
    .unwrap_or_else(|| panic!("bouncelog has {:?}, wanted {count} lines", bouncelog(dir)))
}

/// dsn.py's facts about a stored message.
fn read_dsn(message: &SinkMessage) -> Vec<(String, String)> {
    let output = Command::new(python())
        .arg(py_dir().join("dsn.py"))
        .arg(&message.path)
        .output()
        .expect("run dsn.py");
    assert!(
        output.status.success(),
        "dsn.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn fact<'a>(facts: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    facts
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn permanent_failures_are_classified_logged_and_bounced_to_the_sender() {
    let mta = start("bounces");
    send(
        mta.daemon.smtp_port(),
        "sender@example.net",
        &[
            "reject-bob@example.com",
            "full-carol@example.com",
            "dave@example.com",
        ],
        "bounce-me",
    );
    // Two P lines for the refused recipients (a D for dave).
    let lines = mta.daemon.wait_for_kind("P", 2, WAIT);
    let failures: Vec<&String> = lines.iter().filter(|l| l.contains("@P@")).collect();
    assert!(failures
        .iter()
        .any(|l| l.ends_with("550 5.1.1 reject requested by recipient")));
    assert!(failures
        .iter()
        .any(|l| l.ends_with("552 5.2.2 mailbox full")));

    // Bouncelog: B lines classified 10 (invalid recipient) and 22 (mailbox full).
    let b = wait_for_bounce_lines(mta.dir.path(), 2);
    let mut codes: Vec<(String, String)> = b
        .iter()
        .map(|f| {
            assert_eq!(f[4], "B", "{f:?}");
            assert_eq!((f[7].as_str(), f[8].as_str()), ("sender", "example.net"));
            (f[5].clone(), f[12].clone())
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("full-carol".to_string(), "22".to_string()),
            ("reject-bob".to_string(), "10".to_string())
        ]
    );

    // The original reaches dave, and one DSN reaches the sender with <>.
    let messages = mta.sink.wait_for_messages(2, WAIT);
    // aiosmtpd stores the null reverse path as `<>`.
    let null_sender = |m: &&SinkMessage| m.mail_from.is_empty() || m.mail_from == "<>";
    let dsns: Vec<&SinkMessage> = messages.iter().filter(null_sender).collect();
    assert_eq!(dsns.len(), 1, "{messages:?}");
    let dsn = dsns[0];
    assert_eq!(dsn.rcpts, vec!["sender@example.net".to_string()]);
    let facts = read_dsn(dsn);
    assert_eq!(fact(&facts, "content-type"), ["multipart/report"]);
    assert_eq!(fact(&facts, "report-type"), ["delivery-status"]);
    assert_eq!(
        fact(&facts, "parts"),
        ["text/plain,message/delivery-status,text/rfc822-headers"]
    );
    assert_eq!(fact(&facts, "reporting-mta"), ["dns; mta.test"]);
    let mut recipients = fact(&facts, "recipient");
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "rfc822; full-carol@example.com\tfailed\t5.2.2\tsmtp; 552 5.2.2 mailbox full",
            "rfc822; reject-bob@example.com\tfailed\t5.1.1\tsmtp; 550 5.1.1 reject requested by recipient",
        ]
    );
    assert_eq!(fact(&facts, "original"), ["bounce-me"]);

    // The DSN was received as an internal message and delivered.
    let mainlog = mta.daemon.mainlog_lines();
    assert!(
        mainlog
            .iter()
            .any(|l| l.contains("@R@sender@example.net@@@unknown@")
                && l.ends_with("@internal@default@default")),
        "{mainlog:?}"
    );
}

#[test]
fn a_failed_message_with_a_null_return_path_is_not_bounced() {
    let mta = start("bounces-null");
    send(
        mta.daemon.smtp_port(),
        "",
        &["reject-erin@example.com"],
        "no-bounce",
    );
    mta.daemon.wait_for_kind("P", 1, WAIT);
    let b = wait_for_bounce_lines(mta.dir.path(), 1);
    assert_eq!(b[0][12], "10");
    // A second message is delivered; a DSN of the first would have been
    // spooled as its failure settled, so it would be there by now too.
    send(
        mta.daemon.smtp_port(),
        "sender@example.net",
        &["frank@example.com"],
        "after",
    );
    let messages = mta.sink.wait_for_messages(1, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let messages_later = mta.sink.messages();
    assert_eq!(messages_later.len(), 1, "{messages_later:?}");
    assert_eq!(messages[0].rcpts, vec!["frank@example.com".to_string()]);
    let mainlog = mta.daemon.mainlog_lines();
    assert!(
        !mainlog.iter().any(|l| l.contains("@internal@")),
        "{mainlog:?}"
    );
}

/// Goal: a recipient that runs out of retries is a timeout bounce.
/// Method: the sink defers `tempfail*` with 451; with `max_retries = 1`
/// the second attempt fails it with our `554 5.4.7`: a B line with code 24
/// and a DSN whose status is 5.4.7.
#[test]
fn a_recipient_out_of_retries_bounces_as_a_timeout() {
    let dir = TempDir::new("bounces-expiry");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.extra.push_str("max_retries = 1\n");
    let daemon = Daemon::start(dir.path(), &config.render());
    send(
        daemon.smtp_port(),
        "sender@example.net",
        &["tempfail-gil@example.com"],
        "expire-me",
    );
    let b = wait_for_bounce_lines(dir.path(), 1);
    assert_eq!(
        (b[0][5].as_str(), b[0][12].as_str()),
        ("tempfail-gil", "24")
    );
    assert!(
        b[0][15].starts_with("554 5.4.7 [internal] exceeded max retries"),
        "{b:?}"
    );
    let messages = sink.wait_for_messages(1, WAIT);
    let facts = read_dsn(&messages[0]);
    let recipients = fact(&facts, "recipient");
    assert_eq!(recipients.len(), 1, "{facts:?}");
    assert!(
        recipients[0]
            .starts_with("rfc822; tempfail-gil@example.com\tfailed\t5.4.7\tsmtp; 554 5.4.7"),
        "{recipients:?}"
    );
}
