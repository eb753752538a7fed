//! Bindings: a header assigns each message to a binding, and the binding's
//! `bind_address` and `ehlo_hostname` are what the receiver sees.
//! Method: the Python sink (aiosmtpd) on 127.0.0.1 records each
//! transaction's client address and EHLO name; the daemon relays
//! everything there through its gateway, from binding `mkt1`
//! (127.0.0.5), binding `tx1` of group `tx` (127.0.0.6), or `default`
//! (no bind_address: the kernel picks 127.0.0.1), as the `X-Binding`
//! header of each message says.

use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, strip_leading_received, Daemon, Sink, SinkMessage, SmtpClient, TempDir,
    TestConfig,
};

const WAIT: Duration = Duration::from_secs(30);

const BINDINGS: &str = r#"
ESMTP_Listener { binding_header = "X-Binding" }
binding "mkt1" { bind_address = "127.0.0.5" }
binding_group "tx" {
  ehlo_hostname = "tx.mta.test"
  binding "tx1" { bind_address = 127.0.0.6 }
}
"#;

struct Mta {
    daemon: Daemon,
    sink: Sink,
    _dir: TempDir,
}

fn start(label: &str, bindings: &str, sink_args: &[&str]) -> Mta {
    let dir = TempDir::new(label);
    let sink = Sink::start_with_args(&dir.join("sink"), free_port(), sink_args);
    let mut config = TestConfig::new(sink.port());
    config.extra = bindings.to_string();
    let daemon = Daemon::start(dir.path(), &config.render());
    Mta {
        daemon,
        sink,
        _dir: dir,
    }
}

/// A message whose Subject and Message-ID are `subject`, with `extra`
/// header lines (CRLF-terminated) among the others.
fn message(subject: &str, extra: &str) -> String {
    format!(
        "From: <sender@client.test>\r\nTo: <rcpt@dest.test>\r\n{extra}Subject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\nhello from {subject}\r\nX-Binding: body\r\n"
    )
}

/// `message(subject, extra)` with about 320 KiB more body: over the 256
/// KiB a session buffers, so it is streamed to a body file and its header
/// block goes there with the first chunk.
fn large_message(subject: &str, extra: &str) -> String {
    let line = format!("{}\r\n", "x".repeat(78));
    format!("{}{}", message(subject, extra), line.repeat(4 * 1024))
}

/// Sends `message` over SMTP and returns once it is queued.
fn send(port: u16, rcpt: &str, message: &str) {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    assert_eq!(client.command("DATA").0, 354);
    client.write_raw(format!("{message}.\r\n").as_bytes());
    let (code, text) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{text}");
    client.command("QUIT");
}

fn by_subject<'a>(messages: &'a [SinkMessage], subject: &str) -> &'a SinkMessage {
    let found = messages
        .iter()
        .find(|m| m.header("Subject").as_deref() == Some(subject));
    found.unwrap_or_else(|| panic!("no message `{subject}` at the sink: {messages:?}"))
}

/// The binding group and binding of the mainlog R line of the recipient
/// whose local part is `rcpt_local` (each message has one).
fn r_binding(daemon: &Daemon, rcpt_local: &str) -> (String, String) {
    let lines = daemon.mainlog();
    let r = lines
        .iter()
        .find(|l| l.kind() == "R" && l.field(5) == rcpt_local)
        .unwrap_or_else(|| panic!("no R line for {rcpt_local}: {lines:?}"));
    (r.field(12).to_string(), r.field(13).to_string())
}

/// Goal: each message leaves from the binding its header names, the
/// header never reaches the receiver, and an unknown or missing name
/// means `default`.
/// Method: four messages (mkt1, tx1, none, an unknown name) through one
/// daemon; the sink's record of each says where it came from and with
/// which EHLO; the stored bytes, less our Received header, are the sent
/// ones without the X-Binding line; the R lines name the binding; the
/// paniclog names the unknown one.
#[test]
fn the_binding_header_picks_the_source_address_and_is_removed() {
    let mta = start("bindings", BINDINGS, &[]);
    let port = mta.daemon.smtp_port();
    let cases = [
        ("via-mkt1", "X-Binding: mkt1\r\n", "127.0.0.5", "mta.test"),
        (
            "via-tx1",
            "x-binding:\r\n tx1\r\n",
            "127.0.0.6",
            "tx.mta.test",
        ),
        ("via-default", "", "127.0.0.1", "mta.test"),
        (
            "via-unknown",
            "X-Binding: nonesuch\r\n",
            "127.0.0.1",
            "mta.test",
        ),
    ];
    for (subject, header, _, _) in cases {
        send(
            port,
            &format!("{subject}@dest.test"),
            &message(subject, header),
        );
    }
    // A streamed message: the binding header is found and left out on its
    // first chunk.
    let large = "via-tx1-large";
    send(
        port,
        &format!("{large}@dest.test"),
        &large_message(large, "X-Binding: tx1\r\n"),
    );
    let messages = mta.sink.wait_for_messages(cases.len() + 1, WAIT);
    let arrived = by_subject(&messages, large);
    assert_eq!(
        (arrived.peer.as_str(), arrived.ehlo.as_str()),
        ("127.0.0.6", "tx.mta.test"),
        "{large}"
    );
    let bytes = arrived.bytes();
    let content = strip_leading_received(&bytes).expect("our Received header first");
    assert!(
        content == large_message(large, "").as_bytes(),
        "{large}: the sink must get the streamed message less its X-Binding field"
    );
    for (subject, _, peer, ehlo) in cases {
        let arrived = by_subject(&messages, subject);
        assert_eq!(
            (arrived.peer.as_str(), arrived.ehlo.as_str()),
            (peer, ehlo),
            "{subject}"
        );
        let bytes = arrived.bytes();
        let content = strip_leading_received(&bytes).expect("our Received header first");
        assert_eq!(
            String::from_utf8_lossy(content),
            message(subject, ""),
            "{subject}: the sink must get the message less its X-Binding field"
        );
    }

    // Each shard flushes its mainlog every tick: wait for every R line.
    mta.daemon.wait_for_kind("R", cases.len() + 1, WAIT);
    let expected = [
        ("via-tx1-large", "tx", "tx1"),
        ("via-mkt1", "default", "mkt1"),
        ("via-tx1", "tx", "tx1"),
        ("via-default", "default", "default"),
        ("via-unknown", "default", "default"),
    ];
    for (local, group, binding) in expected {
        let (g, b) = r_binding(&mta.daemon, local);
        assert_eq!((g.as_str(), b.as_str()), (group, binding), "{local}");
    }
    let paniclog = mta.daemon.dir().join("log/paniclog.ec");
    let said = poll_until(WAIT, || {
        let text = std::fs::read_to_string(&paniclog).unwrap_or_default();
        text.contains("X-Binding names binding `nonesuch`, which is not configured")
            .then_some(())
    });
    assert!(
        said.is_some(),
        "paniclog:\n{}",
        std::fs::read_to_string(&paniclog).unwrap_or_default()
    );
}

/// Goal: a bounce leaves from the binding of the message that bounced.
/// Method: a message of binding mkt1 to a recipient the sink refuses
/// with 550; the DSN arrives at the sink (the gateway takes everything)
/// from 127.0.0.5, and its R line names mkt1.
#[test]
fn a_dsn_leaves_from_the_binding_of_the_bounced_message() {
    let mta = start("bindings-dsn", BINDINGS, &[]);
    let port = mta.daemon.smtp_port();
    send(
        port,
        "reject-me@dest.test",
        &message("bounce-mkt1", "X-Binding: mkt1\r\n"),
    );
    let messages = mta.sink.wait_for_messages(1, WAIT);
    let dsn = &messages[0];
    assert!(
        dsn.mail_from.is_empty() || dsn.mail_from == "<>",
        "{messages:?}"
    );
    assert_eq!(dsn.rcpts, ["sender@client.test"]);
    assert_eq!(dsn.peer, "127.0.0.5");
    // The DSN's R line: received internally, on binding mkt1.
    mta.daemon
        .wait_for("the DSN's R line on mkt1", WAIT, |lines| {
            lines
                .iter()
                .any(|l| l.contains("@R@sender@client.test@@@unknown@"))
        });
    let lines = mta.daemon.mainlog_lines();
    let dsn_r = lines
        .iter()
        .find(|l| l.contains("@R@sender@client.test@@@unknown@"))
        .expect("waited for above");
    assert!(dsn_r.ends_with("@internal@default@mkt1"), "{dsn_r}");
}

/// Goal: a bind_address that is not this host's is the binding's
/// transient failure, said plainly, and costs no message.
/// Method: binding `gone` binds 192.0.2.99 (TEST-NET-1, on no host); its
/// message gets a T line naming the address and the binding, the daemon
/// keeps running, and a message of `default` still goes through.
#[test]
fn a_bind_address_not_on_the_host_is_a_transient_failure_with_a_clear_t_line() {
    let gone = r#"
ESMTP_Listener { binding_header = "X-Binding" }
binding "gone" { bind_address = "192.0.2.99" }
"#;
    let mut mta = start("bindings-gone", gone, &[]);
    let port = mta.daemon.smtp_port();
    send(
        port,
        "stuck@dest.test",
        &message("via-gone", "X-Binding: gone\r\n"),
    );
    let lines = mta.daemon.wait_for_kind("T", 1, WAIT);
    let t = lines.iter().find(|l| l.contains("@T@")).expect("a T line");
    assert!(
        t.contains("@default@gone@")
            && t.contains("451 4.4.1 cannot bind source address 192.0.2.99 of binding gone"),
        "{t}"
    );
    send(port, "fine@dest.test", &message("via-default", ""));
    let messages = mta.sink.wait_for_messages(1, WAIT);
    assert_eq!(by_subject(&messages, "via-default").peer, "127.0.0.1");
    assert!(mta.daemon.is_running());
    let mainlog = mta.daemon.mainlog();
    assert!(
        !mainlog.iter().any(|l| l.kind() == "P"
            || (l.kind() == "D" && l.field(5) == "dest.test" && l.field(8) == "gone")),
        "the message of `gone` must wait, not fail or leave: {mainlog:?}"
    );
}
