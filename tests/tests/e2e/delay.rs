//! Delay DSNs (`generate_delay_dsn`): a message still deferred
//! `delay_dsn_retry_interval` after reception gets one RFC 3464 report with
//! Action: delayed to its return path, once, even across a restart.
//! Method: an aiosmtpd sink answers `451` for recipients starting `slow`
//! and takes the rest; the sender's domain (sender.test) has a gateway to
//! a second sink, where the delay DSN must arrive; retries run every 1-2 s
//! and the threshold is 3 s. The DSN is read with Python's email package
//! (tests/py/dsn.py).

use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    free_port, py_dir, python, Daemon, Sink, SinkMessage, SmtpClient, TempDir, TestConfig,
};

const WAIT: Duration = Duration::from_secs(60);
const SLOW_RULE: &str = "slow=451 4.2.0 try again later";

fn send(port: u16, mail_from: &str, rcpts: &[&str], subject: &str) {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command(&format!("MAIL FROM:<{mail_from}>")).0, 250);
    for rcpt in rcpts {
        assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    }
    assert_eq!(client.command("DATA").0, 354);
    let body = format!(
        "From: <{mail_from}>\r\nTo: <{}>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\nhello\r\n.\r\n",
        rcpts[0]
    );
    client.write_raw(body.as_bytes());
    let (code, text) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{text}");
    client.command("QUIT");
}

/// dsn.py's facts about a stored message, as (key, value).
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

fn facts<'a>(facts: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    facts
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// T lines for the recipient `rcpt_domain` so far.
fn deferrals(daemon: &Daemon) -> usize {
    daemon
        .mainlog()
        .iter()
        .filter(|l| l.kind() == "T" && l.field(5) == "example.com")
        .count()
}

/// Goal: one delay DSN per message, to the sender's domain, parsed as a
/// multipart/report that says delayed for the deferred recipient only; none
/// again after more retries or a restart. Method: one message to a
/// deferred and an accepted recipient; wait for the DSN, then for more
/// deferrals, restart the daemon on the same spool, wait for more
/// deferrals, and count what reached the sender's sink.
#[test]
fn a_message_deferred_past_the_threshold_gets_exactly_one_delay_dsn() {
    let dir = TempDir::new("delay-dsn");
    let rcpt_sink = Sink::start_with_args(&dir.join("rcpt"), free_port(), &["--rule", SLOW_RULE]);
    let sender_sink = Sink::start(&dir.join("sender"), free_port());
    let mut config = TestConfig::new(rcpt_sink.port());
    config.extra = format!(
        "generate_delay_dsn = true\ndelay_dsn_retry_interval = 3\nmessage_expiration = 600\n\
         domain \"sender.test\" {{ gateway = \"127.0.0.1:{}\" }}\n",
        sender_sink.port()
    );
    let mut daemon = Daemon::start(dir.path(), &config.render());
    send(
        daemon.smtp_port(),
        "news@sender.test",
        &["slow-bob@example.com", "alice@example.com"],
        "delay-me",
    );

    let arrived = sender_sink.wait_for_messages(1, WAIT);
    let dsn = &arrived[0];
    assert_eq!(dsn.mail_from, "<>", "a DSN comes from the null sender");
    assert_eq!(dsn.rcpts, ["news@sender.test"]);
    let f = read_dsn(dsn);
    assert_eq!(facts(&f, "content-type"), ["multipart/report"]);
    assert_eq!(facts(&f, "report-type"), ["delivery-status"]);
    assert_eq!(
        facts(&f, "parts"),
        ["text/plain,message/delivery-status,text/rfc822-headers"]
    );
    assert_eq!(
        facts(&f, "recipient"),
        ["rfc822; slow-bob@example.com\tdelayed\t4.2.0\tsmtp; 451 4.2.0 try again later"],
        "names the deferred recipient only"
    );
    assert_eq!(facts(&f, "will-retry-until").len(), 1);
    assert_eq!(facts(&f, "original"), ["delay-me"]);
    assert_eq!(
        rcpt_sink
            .messages()
            .iter()
            .filter(|m| m.rcpts == ["alice@example.com"])
            .count(),
        1,
        "the accepted recipient was delivered"
    );

    // More deferrals, then a restart: no second delay DSN.
    let seen = deferrals(&daemon);
    daemon.wait_for("three more deferrals", WAIT, |_| {
        deferrals(&daemon) >= seen + 3
    });
    daemon.stop();
    daemon.restart();
    let seen = deferrals(&daemon);
    daemon.wait_for("three deferrals after the restart", WAIT, |_| {
        deferrals(&daemon) >= seen + 3
    });
    assert_eq!(
        sender_sink.messages().len(),
        1,
        "exactly one delay DSN, across retries and a restart"
    );
}
