//! Inbound policy seen from a client: relay control and SMTP hygiene.

use ecelerity_tests::{send_messages, swaks, SmtpClient, ARRIVAL_TIMEOUT};

use crate::common::Mta;

/// Goal: the default refuses to relay for clients outside relay_hosts.
/// Method: relay only for 10.0.0.0/8; a client on 127.0.0.1 must get
/// `550 5.7.1` at RCPT TO from swaks, smtplib and a raw session, and
/// nothing may be received.
#[test]
fn relay_denied_outside_relay_hosts() {
    let mta = Mta::start_with("relay-denied", |config| {
        config.relay_hosts = vec!["10.0.0.0/8".to_string()];
    });

    let output = swaks(
        mta.port(),
        &[
            "--to",
            "victim@example.com",
            "--from",
            "spammer@example.org",
            "--body",
            "no",
        ],
    );
    let transcript = String::from_utf8_lossy(&output.stdout);
    // swaks exits 24 when no recipient was accepted.
    assert_eq!(output.status.code(), Some(24), "swaks:\n{transcript}");
    assert!(transcript.contains("550 5.7.1"), "swaks:\n{transcript}");

    let report = send_messages(
        mta.port(),
        &["--count", "1", "--to", "v@example.com"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(report.results.len(), 1, "{}", report.stderr);
    assert_eq!(report.results[0].1, "550");

    let mut client = SmtpClient::connect(mta.port());
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<spammer@example.org>").0, 250);
    let (code, text) = client.command("RCPT TO:<victim@example.com>");
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("550 5.7.1"), "{text}");
    // The session stays usable after a refused recipient.
    assert_eq!(client.command("RSET").0, 250);
    assert_eq!(client.command("QUIT").0, 221);

    assert!(
        mta.daemon.mainlog().iter().all(|l| l.kind() != "R"),
        "a refused message was received: {:?}",
        mta.daemon.mainlog_lines()
    );
    assert!(mta.sink.messages().is_empty());
}

/// Goal: a bare LF in DATA is refused, not passed on (SMTP smuggling).
/// Method: a raw session sends a body with a bare LF; the daemon must reply
/// `521 5.5.2 ... bare <LF> ...`, close the connection, and deliver nothing.
#[test]
fn bare_lf_in_data_is_refused_and_connection_closed() {
    let mta = Mta::start("bare-lf");
    let mut client = SmtpClient::connect(mta.port());
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(client.command("RCPT TO:<b@example.com>").0, 250);
    assert_eq!(client.command("DATA").0, 354);
    client.write_raw(b"Subject: smuggle\r\n\r\nfirst\nsecond\r\n.\r\n");
    let (code, text) = client.read_reply().expect("a reply to the bare LF");
    assert_eq!(code, 521, "{text}");
    assert!(text.starts_with("521 5.5.2"), "{text}");
    assert!(text.contains("bare <LF>"), "{text}");
    assert!(client.closed_by_server(), "connection still open after 521");

    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        mta.sink.messages().is_empty(),
        "a bare-LF message was delivered"
    );
    assert!(mta.daemon.mainlog().iter().all(|l| l.kind() != "R"));
}
