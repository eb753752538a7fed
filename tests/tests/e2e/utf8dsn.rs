//! SMTPUTF8 (RFC 6531) and DSN (RFC 3461) in and out. Method: Python's
//! smtplib (tests/py/esmtp_send.py) sends with the parameters; the daemon
//! relays to the aiosmtpd sink, which records every MAIL and RCPT line as
//! written (commands.txt) and offers SMTPUTF8 unless `--no-smtputf8`, DSN
//! with `--dsn`. DSNs come back to the same sink and are read with Python's
//! email package (tests/py/dsn_fields.py).

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ecelerity_tests::{
    free_port, parse_mainlog, poll_until, py_dir, python, strip_leading_received, Daemon, Sink,
    SinkMessage, SmtpClient, TempDir, TestConfig,
};

const WAIT: Duration = Duration::from_secs(30);
/// How long a test waits to be sure that a DSN is not coming.
const QUIET: Duration = Duration::from_secs(2);

const UTF8_FROM: &str = "j\u{f6}rg@b\u{fc}cher.example";
const UTF8_TO: &str = "\u{7528}\u{6237}@\u{4f8b}\u{5b50}.test";

struct Relay {
    daemon: Daemon,
    sink: Sink,
    dir: TempDir,
}

fn start(label: &str, sink_args: &[&str], extra: &str) -> Relay {
    let dir = TempDir::new(label);
    let sink = Sink::start_with_args(&dir.join("sink"), free_port(), sink_args);
    let mut config = TestConfig::new(sink.port());
    config.extra = extra.to_string();
    let daemon = Daemon::start(dir.path(), &config.render());
    Relay { daemon, sink, dir }
}

/// Runs esmtp_send.py; returns its (verb, code, text) lines.
fn send(
    relay: &Relay,
    from: &str,
    mail_options: &[&str],
    to: &[&str],
    message: &[u8],
) -> Vec<(String, u16, String)> {
    let file = relay.dir.join(format!("message-{}.eml", free_port()));
    std::fs::write(&file, message).expect("write message");
    let mut command = Command::new(python());
    command
        .arg(py_dir().join("esmtp_send.py"))
        .arg("--port")
        .arg(relay.daemon.smtp_port().to_string())
        .arg("--from")
        .arg(from)
        .arg("--file")
        .arg(&file);
    for option in mail_options {
        command.arg(format!("--mail-option={option}"));
    }
    for rcpt in to {
        command.arg(format!("--to={rcpt}"));
    }
    let output = command.output().expect("run esmtp_send.py");
    assert!(
        output.status.success(),
        "esmtp_send.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            let verb = fields.next()?.to_string();
            let code = fields.next()?.parse().ok()?;
            Some((verb, code, fields.next().unwrap_or("").to_string()))
        })
        .collect()
}

fn codes(replies: &[(String, u16, String)]) -> Vec<(String, u16)> {
    replies.iter().map(|(v, c, _)| (v.clone(), *c)).collect()
}

/// The MAIL and RCPT lines the sink saw, as written.
fn commands(sink_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(sink_dir.join("commands.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// dsn_fields.py's facts: (kind, fields...).
fn dsn_fields(message: &SinkMessage) -> Vec<Vec<String>> {
    let output = Command::new(python())
        .arg(py_dir().join("dsn_fields.py"))
        .arg(&message.path)
        .output()
        .expect("run dsn_fields.py");
    assert!(
        output.status.success(),
        "dsn_fields.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn fact(facts: &[Vec<String>], key: &[&str]) -> Option<String> {
    facts
        .iter()
        .find(|f| f.len() == key.len() + 1 && f.iter().zip(key).all(|(a, b)| a == b))
        .map(|f| f[key.len()].clone())
}

fn rcpt_field(facts: &[Vec<String>], group: usize, name: &str) -> Option<String> {
    fact(facts, &["rcpt", &group.to_string(), name])
}

fn wait_messages(sink: &Sink, count: usize) -> Vec<SinkMessage> {
    sink.wait_for_messages(count, WAIT)
}

/// Messages whose envelope sender is the null sender: DSNs.
fn dsns(sink: &Sink) -> Vec<SinkMessage> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from == "<>")
        .collect()
}

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@client.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e aus dem Test.\r\nbody-marker\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// Goal: a UTF-8 sender and recipient go through, byte for byte, with
/// SMTPUTF8 on the MAIL the next hop sees, UTF8ESMTP in our Received
/// header, and mainlog lines that still parse. Method: smtplib with
/// `SMTPUTF8`, aiosmtpd with SMTPUTF8 on.
#[test]
fn utf8_addresses_relay_with_smtputf8_byte_for_byte() {
    let relay = start("utf8-relay", &[], "");
    let body = message(UTF8_FROM, UTF8_TO, "gr\u{fc}\u{df}e \u{4f60}\u{597d}");
    let replies = send(&relay, UTF8_FROM, &["SMTPUTF8"], &[UTF8_TO], &body);
    assert!(
        replies
            .iter()
            .any(|(v, _, t)| v == "EHLO" && t.contains("SMTPUTF8")),
        "{replies:?}"
    );
    assert_eq!(
        codes(&replies)[1..],
        [
            ("MAIL".into(), 250),
            ("RCPT".into(), 250),
            ("DATA".into(), 250)
        ]
    );
    let got = wait_messages(&relay.sink, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, UTF8_FROM);
    assert_eq!(got[0].rcpts, [UTF8_TO]);
    let bytes = got[0].bytes();
    let received = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
    assert!(received.contains(" with UTF8ESMTP id "), "{received}");
    assert_eq!(
        strip_leading_received(&bytes).expect("our Received header"),
        &body[..]
    );
    let seen = commands(relay.sink.dir());
    let mail = seen
        .iter()
        .find(|l| l.starts_with("MAIL\t"))
        .expect("a MAIL line");
    assert!(
        mail.starts_with(&format!("MAIL\tFROM:<{UTF8_FROM}>")),
        "{mail}"
    );
    assert!(mail.contains(" SMTPUTF8"), "{mail}");
    assert!(seen.contains(&format!("RCPT\tTO:<{UTF8_TO}>")), "{seen:?}");
    let lines = relay
        .daemon
        .wait_for_kind("D", 1, WAIT)
        .into_iter()
        .collect::<Vec<_>>();
    let parsed = parse_mainlog(&lines);
    let d = parsed.iter().find(|l| l.kind() == "D").expect("a D line");
    let r = parse_mainlog(&relay.daemon.mainlog_lines())
        .into_iter()
        .find(|l| l.kind() == "R")
        .expect("an R line");
    assert_eq!(r.message_id(), d.message_id());
    assert_eq!(
        (r.field(5), r.field(6)),
        ("\u{7528}\u{6237}", "\u{4f8b}\u{5b50}.test")
    );
    assert_eq!(
        (r.field(7), r.field(8)),
        ("j\u{f6}rg", "b\u{fc}cher.example")
    );
}

/// Goal: RFC 6531 section 3.7.4.1 and RFC 3461 syntax at the door.
/// Method: raw commands: a UTF-8 address without SMTPUTF8, bad DSN
/// values, and the parameters of extensions a listener does not offer.
#[test]
fn utf8_without_smtputf8_and_bad_dsn_parameters_are_refused() {
    let relay = start("utf8-refused", &[], "");
    let mut client = SmtpClient::connect(relay.daemon.smtp_port());
    let (code, ehlo) = client.command("EHLO client.test");
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("250-SMTPUTF8") || ehlo.contains("250 SMTPUTF8"),
        "{ehlo}"
    );
    assert!(ehlo.contains("DSN"), "{ehlo}");
    let (code, text) = client.command(&format!("MAIL FROM:<{UTF8_FROM}>"));
    assert_eq!(code, 553, "{text}");
    assert!(text.starts_with("553 5.6.7 "), "{text}");
    assert_eq!(client.command("MAIL FROM:<a@client.test>").0, 250);
    let (code, text) = client.command(&format!("RCPT TO:<{UTF8_TO}>"));
    assert!(text.starts_with("553 5.6.7 "), "{code} {text}");
    for bad in [
        "RCPT TO:<b@x.test> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<b@x.test> NOTIFY=SOMETIMES",
        "RCPT TO:<b@x.test> ORCPT=b@x.test",
        "RCPT TO:<b@x.test> ORCPT=rfc822;b+4x",
    ] {
        let (code, text) = client.command(bad);
        assert!(text.starts_with("501 5.5.4 "), "{bad}: {code} {text}");
    }
    assert_eq!(
        client
            .command("RCPT TO:<b@x.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40x.test")
            .0,
        250
    );
    assert_eq!(client.command("RSET").0, 250);
    let (_, text) = client.command("MAIL FROM:<a@client.test> RET=BODY");
    assert!(text.starts_with("501 5.5.4 "), "{text}");
    let (_, text) = client.command("MAIL FROM:<a@client.test> ENVID=a+zz");
    assert!(text.starts_with("501 5.5.4 "), "{text}");
    client.command("QUIT");

    // A listener with both turned off.
    let off = start(
        "utf8-off",
        &[],
        "ESMTP_Listener { enable_smtputf8 = false\n enable_dsn = false }\n",
    );
    let mut client = SmtpClient::connect(off.daemon.smtp_port());
    let (_, ehlo) = client.command("EHLO client.test");
    assert!(
        !ehlo.contains("SMTPUTF8") && !ehlo.contains("DSN"),
        "{ehlo}"
    );
    let (_, text) = client.command(&format!("MAIL FROM:<{UTF8_FROM}> SMTPUTF8"));
    assert!(text.starts_with("555 5.5.4 "), "{text}");
    let (_, text) = client.command("MAIL FROM:<a@client.test> RET=HDRS");
    assert!(text.starts_with("555 5.5.4 "), "{text}");
    assert_eq!(client.command("MAIL FROM:<a@client.test>").0, 250);
    let (_, text) = client.command("RCPT TO:<b@x.test> NOTIFY=NEVER");
    assert!(text.starts_with("555 5.5.4 "), "{text}");
    client.command("QUIT");
}

/// Goal: a message that needs SMTPUTF8 never goes to a server without
/// it: the recipient fails for good (P line, 5.6.7) and the sender gets a
/// DSN. Method: aiosmtpd with `--no-smtputf8`; an ASCII sender (so the
/// DSN itself can reach the same sink) and a UTF-8 recipient.
#[test]
fn a_peer_without_smtputf8_gets_nothing_and_the_sender_a_dsn() {
    let relay = start("utf8-nopeer", &["--no-smtputf8"], "");
    let from = "sender@client.test";
    let body = message(from, UTF8_TO, "needs utf8");
    let replies = send(&relay, from, &["SMTPUTF8"], &[UTF8_TO], &body);
    assert_eq!(codes(&replies).last(), Some(&("DATA".into(), 250)));
    let lines = relay.daemon.wait_for_kind("P", 1, WAIT);
    let p = parse_mainlog(&lines)
        .into_iter()
        .find(|l| l.kind() == "P")
        .expect("a P line");
    assert!(p.fields.last().unwrap().contains("5.6.7"), "{p:?}");
    let got = wait_messages(&relay.sink, 1);
    assert_eq!(got.len(), 1, "only the DSN arrives");
    assert_eq!(got[0].mail_from, "<>");
    assert_eq!(got[0].rcpts, [from]);
    let facts = dsn_fields(&got[0]);
    assert_eq!(rcpt_field(&facts, 0, "Action").as_deref(), Some("failed"));
    assert_eq!(rcpt_field(&facts, 0, "Status").as_deref(), Some("5.6.7"));
    // RFC 6533: a UTF-8 address in a 7-bit report.
    assert_eq!(
        rcpt_field(&facts, 0, "Final-Recipient").as_deref(),
        Some("utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.test")
    );
    assert!(
        !commands(relay.sink.dir())
            .iter()
            .any(|l| l.contains('\u{7528}')),
        "the UTF-8 recipient was never sent"
    );
}

/// Goal: NOTIFY decides which failures are reported, and the DSN carries
/// ENVID, ORCPT and only the headers under RET=HDRS. Method: one message,
/// two refused recipients: `reject-never` with NOTIFY=NEVER and
/// `reject-told` with NOTIFY=FAILURE and an ORCPT; exactly one DSN, for
/// the second, is expected.
#[test]
fn notify_never_is_not_told_and_the_dsn_has_envid_orcpt_and_headers_only() {
    let relay = start("dsn-failure", &[], "");
    let from = "sender@client.test";
    let body = message(from, "reject-told@x.test", "dsn hdrs");
    let replies = send(
        &relay,
        from,
        &["RET=HDRS", "ENVID=QQ314159+2Bx"],
        &[
            "reject-never@x.test NOTIFY=NEVER",
            "reject-told@x.test NOTIFY=FAILURE ORCPT=rfc822;told+40original.test",
        ],
        &body,
    );
    assert_eq!(codes(&replies).last(), Some(&("DATA".into(), 250)));
    relay.daemon.wait_for_kind("P", 2, WAIT);
    let got = wait_messages(&relay.sink, 1);
    thread::sleep(QUIET);
    let dsns = dsns(&relay.sink);
    assert_eq!(dsns.len(), 1, "one DSN: {dsns:?}");
    let facts = dsn_fields(&dsns[0]);
    assert_eq!(
        fact(&facts, &["parts"]).as_deref(),
        Some("text/plain,message/delivery-status,text/rfc822-headers")
    );
    assert_eq!(
        fact(&facts, &["message", "Original-Envelope-Id"]).as_deref(),
        Some("QQ314159+x")
    );
    assert_eq!(rcpt_field(&facts, 1, "Action"), None, "one recipient group");
    assert_eq!(
        rcpt_field(&facts, 0, "Final-Recipient").as_deref(),
        Some("rfc822; reject-told@x.test")
    );
    assert_eq!(
        rcpt_field(&facts, 0, "Original-Recipient").as_deref(),
        Some("rfc822; told@original.test")
    );
    let returned = fact(&facts, &["returned"]).expect("a returned part");
    assert!(returned.contains("Subject: dsn hdrs"), "{returned}");
    assert!(
        !returned.contains("body-marker"),
        "headers only: {returned}"
    );
    assert_eq!(got.len(), 1);
}

/// Goal: RET=FULL returns the whole message (message/rfc822).
#[test]
fn ret_full_returns_the_whole_message() {
    let relay = start("dsn-full", &[], "");
    let from = "sender@client.test";
    let body = message(from, "reject-me@x.test", "dsn full");
    send(&relay, from, &["RET=FULL"], &["reject-me@x.test"], &body);
    let got = wait_messages(&relay.sink, 1);
    let facts = dsn_fields(&got[0]);
    assert_eq!(
        fact(&facts, &["parts"]).as_deref(),
        Some("text/plain,message/delivery-status,message/rfc822")
    );
    let returned = fact(&facts, &["returned"]).expect("a returned part");
    assert!(returned.contains("Subject: dsn full"), "{returned}");
    let body = fact(&facts, &["returned-body"]).expect("a returned body");
    assert!(body.contains("body-marker"), "{body}");
    assert_eq!(fact(&facts, &["message", "Original-Envelope-Id"]), None);
}

/// Goal: NOTIFY=SUCCESS to a next hop without DSN gives a success DSN
/// saying `relayed`; to a next hop with DSN, the parameters go on (RET and
/// ENVID on MAIL, NOTIFY and ORCPT on RCPT, xtext-encoded) and we send no
/// DSN of our own.
#[test]
fn notify_success_is_relayed_or_passed_on() {
    let relay = start("dsn-success", &[], "");
    let from = "sender@client.test";
    let body = message(from, "ok@x.test", "dsn success");
    send(
        &relay,
        from,
        &["ENVID=env-1"],
        &["ok@x.test NOTIFY=SUCCESS,FAILURE"],
        &body,
    );
    let got = wait_messages(&relay.sink, 2);
    let dsns = dsns(&relay.sink);
    assert_eq!(dsns.len(), 1, "{got:?}");
    let facts = dsn_fields(&dsns[0]);
    assert_eq!(rcpt_field(&facts, 0, "Action").as_deref(), Some("relayed"));
    assert_eq!(rcpt_field(&facts, 0, "Status").as_deref(), Some("2.0.0"));
    assert_eq!(
        fact(&facts, &["message", "Original-Envelope-Id"]).as_deref(),
        Some("env-1")
    );
    assert!(fact(&facts, &["subject"]).unwrap().contains("Relay"));

    let passing = start("dsn-passed-on", &["--dsn"], "");
    send(
        &passing,
        from,
        &["RET=HDRS", "ENVID=a+2Bb"],
        &["ok@x.test NOTIFY=SUCCESS,DELAY ORCPT=rfc822;o+2Bk@x.test"],
        &body,
    );
    wait_messages(&passing.sink, 1);
    passing.daemon.wait_for_kind("D", 1, WAIT);
    thread::sleep(QUIET);
    assert_eq!(passing.sink.messages().len(), 1, "no DSN of ours");
    let seen = commands(passing.sink.dir());
    assert!(
        seen.iter()
            .any(|l| l.starts_with("MAIL\tFROM:<sender@client.test>")
                && l.ends_with(" RET=HDRS ENVID=a+2Bb")),
        "{seen:?}"
    );
    assert!(
        seen.contains(
            &"RCPT\tTO:<ok@x.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;o+2Bk@x.test".into()
        ),
        "{seen:?}"
    );
}

/// Goal: a DSN to a UTF-8 return path goes as SMTPUTF8 itself.
#[test]
fn a_dsn_to_a_utf8_sender_goes_with_smtputf8() {
    let relay = start("utf8-dsn", &[], "");
    let body = message(UTF8_FROM, "reject-u@x.test", "utf8 bounce");
    send(
        &relay,
        UTF8_FROM,
        &["SMTPUTF8"],
        &["reject-u@x.test"],
        &body,
    );
    let got = wait_messages(&relay.sink, 1);
    assert_eq!(got[0].mail_from, "<>");
    assert_eq!(got[0].rcpts, [UTF8_FROM]);
    let seen = commands(relay.sink.dir());
    assert!(
        seen.iter().any(|l| l == "MAIL\tFROM:<> SMTPUTF8"
            || (l.starts_with("MAIL\tFROM:<>") && l.contains("SMTPUTF8"))),
        "{seen:?}"
    );
    let facts = dsn_fields(&got[0]);
    assert_eq!(
        fact(&facts, &["to"]).as_deref(),
        Some(format!("<{UTF8_FROM}>").as_str())
    );
    assert!(poll_until(WAIT, || relay
        .daemon
        .mainlog()
        .iter()
        .any(|l| l.kind() == "D")
        .then_some(()))
    .is_some());
}

/// Goal: the parameters are spooled with the message: after a `kill -9`
/// and a restart, the DSN still honours NOTIFY, ENVID and ORCPT, and the
/// UTF-8 recipient still goes with SMTPUTF8. Method: the sink is down
/// while the messages are received (they are deferred), the daemon is
/// killed, both come back.
#[test]
fn parameters_survive_a_kill_and_a_restart() {
    let mut relay = start("dsn-restart", &[], "");
    relay.sink.stop();
    let from = "sender@client.test";
    let body = message(from, "reject-later@x.test", "dsn restart");
    send(
        &relay,
        from,
        &["ENVID=restart-1", "SMTPUTF8"],
        &[
            "reject-quiet@x.test NOTIFY=NEVER",
            "reject-later@x.test NOTIFY=FAILURE ORCPT=rfc822;later+40original.test",
            UTF8_TO,
        ],
        &body,
    );
    relay.daemon.wait_for_kind("T", 1, WAIT);
    relay.daemon.kill9();
    relay.sink.restart();
    relay.daemon.restart();
    // The UTF-8 recipient's copy and one DSN.
    let got = wait_messages(&relay.sink, 2);
    thread::sleep(QUIET);
    let dsns = dsns(&relay.sink);
    assert_eq!(dsns.len(), 1, "{got:?}");
    let facts = dsn_fields(&dsns[0]);
    assert_eq!(
        fact(&facts, &["message", "Original-Envelope-Id"]).as_deref(),
        Some("restart-1")
    );
    assert_eq!(
        rcpt_field(&facts, 0, "Original-Recipient").as_deref(),
        Some("rfc822; later@original.test")
    );
    assert_eq!(rcpt_field(&facts, 1, "Action"), None, "NEVER is not told");
    let copy = relay
        .sink
        .messages()
        .into_iter()
        .find(|m| m.rcpts == [UTF8_TO])
        .expect("the UTF-8 recipient's copy");
    assert_eq!(copy.mail_from, from);
    assert!(
        commands(relay.sink.dir())
            .iter()
            .any(|l| l.starts_with("MAIL\tFROM:<sender@client.test>") && l.contains("SMTPUTF8")),
        "flagged after the restart"
    );
}
