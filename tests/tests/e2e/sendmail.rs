//! `ec_sendmail`, sendmail-compatible local submission, run from a shell
//! pipeline (`printf ... | ec_sendmail ...`) against the real daemon,
//! which relays to the aiosmtpd sink: what arrives is compared byte for
//! byte, and the exit codes are sendmail's (sysexits.h).

use std::process::{Command, Output};

use ecelerity_tests::{bin, free_port, run, strip_leading_received, ARRIVAL_TIMEOUT, STOP_TIMEOUT};

use crate::common::Mta;

/// `sh -c "printf '<input>' | ec_sendmail <args>"` with the daemon's
/// config, plus `env`.
fn pipe(mta: &Mta, printf_format: &str, args: &str, env: &[(&str, String)]) -> Output {
    let script = format!(
        "printf '{printf_format}' | '{}' -C '{}' {args}",
        bin("ec_sendmail").display(),
        mta.daemon.config_path().display()
    );
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).current_dir(mta.dir.path());
    for (k, v) in env {
        command.env(k, v);
    }
    run(&mut command, STOP_TIMEOUT)
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Goal: `-t -i -f`: recipients from To, Cc and Bcc, Bcc removed, a lone
/// dot kept, a leading dot survives SMTP's dot-stuffing, bare LF becomes
/// CRLF. Method: one pipeline, then the sink's envelope and bytes.
#[test]
fn t_and_i_deliver_byte_for_byte_with_bcc_removed() {
    let mta = Mta::start("sendmail-t");
    let input = "From: Sender <sender@src.test>\\n\
                 To: \"Doe, Jo\" <jo@a.test>\\n\
                 Cc: kim@b.test (Kim)\\n\
                 Bcc: hidden@c.test\\n\
                 Subject: pipeline\\n\
                 Date: Thu, 03 Dec 2026 19:00:00 +0000\\n\
                 Message-ID: <sendmail-t@src.test>\\n\
                 \\n\
                 .leading dot\\n\
                 .\\n\
                 after the lone dot\\n";
    let output = pipe(&mta, input, "-t -i -f sender@src.test", &[]);
    assert_exit(&output, 0);
    // Three domains: the daemon delivers one copy per domain.
    let messages = mta.sink.wait_for_messages(3, ARRIVAL_TIMEOUT);
    let mut rcpts: Vec<String> = messages.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, vec!["hidden@c.test", "jo@a.test", "kim@b.test"]);
    let want = "From: Sender <sender@src.test>\r\n\
                To: \"Doe, Jo\" <jo@a.test>\r\n\
                Cc: kim@b.test (Kim)\r\n\
                Subject: pipeline\r\n\
                Date: Thu, 03 Dec 2026 19:00:00 +0000\r\n\
                Message-ID: <sendmail-t@src.test>\r\n\
                \r\n\
                .leading dot\r\n\
                .\r\n\
                after the lone dot\r\n";
    for m in &messages {
        assert_eq!(m.mail_from, "sender@src.test");
        let bytes = m.bytes();
        let content = strip_leading_received(&bytes).expect("the daemon's Received first");
        assert_eq!(String::from_utf8_lossy(content), want, "to {:?}", m.rcpts);
    }
}

/// Goal: recipients as arguments; without `-i` a lone dot ends the
/// message; a From header is added with `-F`. Method: as above.
#[test]
fn argument_recipients_and_a_lone_dot_ends_the_message() {
    let mta = Mta::start("sendmail-args");
    let output = pipe(
        &mta,
        "Subject: args\\nMessage-ID: <args@src.test>\\nDate: Thu, 03 Dec 2026 19:00:00 +0000\\n\\nline one\\n.\\nnever sent\\n",
        "-f me@src.test -F 'Me Myself' r1@d.test r2@d.test",
        &[],
    );
    assert_exit(&output, 0);
    let m = &mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT)[0];
    assert_eq!(m.mail_from, "me@src.test");
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, vec!["r1@d.test", "r2@d.test"]);
    let bytes = m.bytes();
    let content = strip_leading_received(&bytes).expect("the daemon's Received first");
    assert_eq!(
        String::from_utf8_lossy(content),
        "From: Me Myself <me@src.test>\r\nSubject: args\r\nMessage-ID: <args@src.test>\r\n\
         Date: Thu, 03 Dec 2026 19:00:00 +0000\r\n\r\nline one\r\n"
    );
}

/// Goal: sendmail's exit codes: 64 for bad usage or no recipient, 75 when
/// the daemon is down, and nothing is delivered. Method: three pipelines;
/// the third points `EC_SENDMAIL_SMTP` at a port nobody listens on.
#[test]
fn exit_codes_for_bad_usage_and_a_daemon_that_is_down() {
    let mta = Mta::start("sendmail-exit");
    assert_exit(&pipe(&mta, "Subject: x\\n\\nx\\n", "-q r@d.test", &[]), 64);
    assert_exit(
        &pipe(&mta, "Subject: x\\n\\nx\\n", "-f s@src.test", &[]),
        64,
    );
    let down = format!("127.0.0.1:{}", free_port());
    let output = pipe(
        &mta,
        "Subject: x\\n\\nx\\n",
        "-f s@src.test r@d.test",
        &[("EC_SENDMAIL_SMTP", down)],
    );
    assert_exit(&output, 75);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach the daemon"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the daemon itself is reachable: the same message goes through.
    assert_exit(
        &pipe(&mta, "Subject: x\\n\\nx\\n", "-f s@src.test r@d.test", &[]),
        0,
    );
    let messages = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages.len(), 1, "only the last pipeline delivers");
}
