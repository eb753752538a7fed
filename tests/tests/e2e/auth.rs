//! SMTP AUTH in and out: swaks and Python smtplib authenticate with PLAIN
//! and LOGIN against a password file made by `ec_passwd`; relay is refused
//! without AUTH and allowed after it; wrong passwords get 535 and, past
//! `max_auth_failures_per_ip`, 421; the acctlog has Momentum's `auth:`
//! lines; AUTH is not offered in clear text unless the listener allows it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    bin, complete_lines, free_port, poll_until, py_dir, python, run, run_with_input, send_file,
    strip_leading_received, swaks, Daemon, Sink, SmtpClient, TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
const ACCTLOG: &str = "log/acctlog.ec";

/// A daemon that relays only for 10.0.0.0/8 (so loopback clients must
/// authenticate), with AUTH on its listener, delivering to a sink.
struct AuthMta {
    daemon: Daemon,
    sink: Sink,
    dir: TempDir,
}

/// `user:hash` from `ec_passwd` for `password`.
fn passwd_line(user: &str, password: &str) -> String {
    let output = run_with_input(
        Command::new(bin("ec_passwd")).arg(user),
        format!("{password}\n").as_bytes(),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "ec_passwd: {output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(
        line.starts_with(&format!("{user}:$argon2id$")),
        "ec_passwd printed {line:?}"
    );
    line
}

fn start(label: &str, listener_options: &str) -> AuthMta {
    let dir = TempDir::new(label);
    std::fs::write(dir.join("passwd"), passwd_line(USER, PASSWORD)).unwrap();
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.relay_hosts = vec!["10.0.0.0/8".to_string()];
    config.extra = format!(
        "ESMTP_Listener {{\n  enable_authentication = true\n  auth_password_file = \"passwd\"\n  \
         auth_failure_delay_ms = 0\n  {listener_options}\n}}\n\
         ec_logger \"ec_logger\" {{ acctlog = \"{ACCTLOG}\" }}\n"
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    AuthMta { daemon, sink, dir }
}

fn acctlog(dir: &Path) -> Vec<String> {
    complete_lines(&dir.join(ACCTLOG))
}

/// The acctlog lines for `user` with result `ok` ("1" or "0"), once there
/// are at least `count` (acctlog writes are immediate, but the test
/// tolerates a slow machine).
fn wait_acctlog(dir: &Path, user: &str, ok: &str, count: usize) -> Vec<String> {
    let matching = || {
        acctlog(dir)
            .into_iter()
            .filter(|l| l.ends_with(&format!("@{user}@{ok}")))
            .collect::<Vec<_>>()
    };
    poll_until(ARRIVAL_TIMEOUT, || {
        let lines = matching();
        (lines.len() >= count).then_some(lines)
    })
    .unwrap_or_else(|| panic!("acctlog has {:?}", acctlog(dir)))
}

fn auth_send(port: u16, password: &str, mech: &str, message: &Path, to: &str) -> String {
    let output = run(
        Command::new(python())
            .arg(py_dir().join("auth_send.py"))
            .args(["--port", &port.to_string(), "--user", USER])
            .args(["--password", password, "--mech", mech])
            .args(["--from", "app@client.test", "--to", to])
            .arg("--message")
            .arg(message),
        ARRIVAL_TIMEOUT,
    );
    assert!(output.status.success(), "auth_send.py: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Goal: swaks and smtplib log in with PLAIN and LOGIN and then relay; the
/// messages arrive byte for byte and the acctlog says who. Method: four
/// authenticated sends to a domain the daemon would not relay for the
/// client's address; each arrives, the smtplib ones compared byte for byte
/// after our Received header; four `@alice@1` acctlog lines with the
/// listener endpoint and the client's ip:port.
#[test]
fn swaks_and_smtplib_authenticate_with_plain_and_login_and_then_relay() {
    let mta = start("auth-ok", "allow_plaintext_auth = true");
    let port = mta.daemon.smtp_port();
    for mech in ["PLAIN", "LOGIN"] {
        let output = swaks(
            port,
            &[
                "--auth",
                mech,
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
                "--from",
                "app@client.test",
                "--to",
                "bob@far.example",
                "--body",
                "swaks body",
            ],
        );
        let transcript = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "swaks {mech}:\n{transcript}");
        assert!(transcript.contains("235 2.7.0"), "{transcript}");
        assert!(transcript.contains("AUTH PLAIN LOGIN"), "{transcript}");
    }
    let mut sent = Vec::new();
    for (index, mech) in ["PLAIN", "LOGIN"].iter().enumerate() {
        let body = format!(
            "From: app@client.test\r\nTo: carol@far.example\r\nSubject: smtplib {mech}\r\n\
             Message-ID: <auth-{index}@client.test>\r\n\r\nline one\r\n.dot line\r\n"
        );
        let file = mta.dir.join(format!("message-{index}.eml"));
        std::fs::write(&file, &body).unwrap();
        assert_eq!(
            auth_send(port, PASSWORD, mech, &file, "carol@far.example"),
            "sent"
        );
        sent.push(body);
    }
    let arrived = mta.sink.wait_for_messages(4, ARRIVAL_TIMEOUT);
    assert_eq!(arrived.len(), 4);
    for body in &sent {
        let found = arrived.iter().any(|m| {
            strip_leading_received(&m.bytes()).is_some_and(|rest| rest == body.as_bytes())
        });
        assert!(found, "not delivered byte for byte: {body:?}");
    }
    let lines = wait_acctlog(mta.dir.path(), USER, "1", 4);
    let listen = format!("@N@127.0.0.1:{port}@127.0.0.1:");
    assert!(
        lines.iter().all(|l| l.contains(&listen)),
        "acctlog lines: {lines:?}"
    );
    assert!(acctlog(mta.dir.path()).iter().all(|l| l.ends_with("@1")));
}

/// Goal: without AUTH no relay; a wrong password is 535 5.7.8 and changes
/// nothing. Method: swaks without AUTH gets 550 5.7.1 at RCPT; swaks and
/// smtplib with a wrong password get 535 5.7.8 (swaks exits 28); an
/// unknown user too; nothing arrives; the acctlog has the failures.
#[test]
fn relay_is_refused_without_auth_and_a_wrong_password_gets_535() {
    let mta = start(
        "auth-refused",
        "allow_plaintext_auth = true\n  max_auth_failures_per_ip = 100",
    );
    let port = mta.daemon.smtp_port();
    let output = swaks(
        port,
        &["--from", "app@client.test", "--to", "bob@far.example"],
    );
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(24), "swaks:\n{transcript}");
    assert!(transcript.contains("550 5.7.1"), "{transcript}");

    let output = swaks(
        port,
        &[
            "--auth",
            "LOGIN",
            "--auth-user",
            USER,
            "--auth-password",
            "wrong",
            "--from",
            "app@client.test",
            "--to",
            "bob@far.example",
        ],
    );
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(28), "swaks:\n{transcript}");
    assert!(transcript.contains("535 5.7.8"), "{transcript}");

    let file = mta.dir.join("message.eml");
    std::fs::write(&file, "Subject: x\r\n\r\nbody\r\n").unwrap();
    let answer = auth_send(port, "wrong", "PLAIN", &file, "bob@far.example");
    assert!(answer.starts_with("auth 535 5.7.8"), "{answer}");

    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    // PLAIN for mallory / correct horse battery: no such user.
    let (code, text) = client.command("AUTH PLAIN AG1hbGxvcnkAY29ycmVjdCBob3JzZSBiYXR0ZXJ5");
    assert_eq!(code, 535, "{text}");
    let (code, text) = client.command("AUTH PLAIN !!!");
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("501 5.5.2"), "{text}");
    assert_eq!(client.command("QUIT").0, 221);

    wait_acctlog(mta.dir.path(), USER, "0", 2);
    wait_acctlog(mta.dir.path(), "mallory", "0", 1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        mta.sink.messages().is_empty(),
        "mail was relayed without AUTH"
    );
}

/// Goal: by default AUTH needs TLS: not offered and refused in clear text
/// (Postfix's smtpd_tls_auth_only). Method: a listener with AUTH but
/// without allow_plaintext_auth: EHLO lists no AUTH, AUTH gets 503 5.5.1,
/// swaks --auth fails without sending credentials.
#[test]
fn auth_is_not_offered_or_accepted_in_clear_text_by_default() {
    let mta = start("auth-clear", "");
    let port = mta.daemon.smtp_port();
    let mut client = SmtpClient::connect(port);
    let (code, ehlo) = client.command("EHLO client.test");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let (code, text) = client.command("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2UgYmF0dGVyeQ==");
    assert_eq!(code, 503, "{text}");
    assert!(text.starts_with("503 5.5.1"), "{text}");
    assert_eq!(client.command("QUIT").0, 221);
    let output = swaks(
        port,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--from",
            "app@client.test",
            "--to",
            "bob@far.example",
        ],
    );
    assert!(!output.status.success());
    assert!(
        acctlog(mta.dir.path()).is_empty(),
        "no credentials were checked"
    );
}

/// Goal: guessing is cut off per peer address. Method: max 3 failures;
/// three wrong passwords get 535 (over two connections), then even the
/// right password gets 421 4.7.0 and the connection is closed.
#[test]
fn failed_attempts_are_rate_limited_per_peer() {
    let mta = start(
        "auth-ratelimit",
        "allow_plaintext_auth = true\n  max_auth_failures_per_ip = 3",
    );
    let port = mta.daemon.smtp_port();
    // alice / wrong
    let wrong = "AUTH PLAIN AGFsaWNlAHdyb25n";
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    for _ in 0..2 {
        assert_eq!(client.command(wrong).0, 535);
    }
    assert_eq!(client.command("QUIT").0, 221);
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command(wrong).0, 535);
    let (code, text) = client.command("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2UgYmF0dGVyeQ==");
    assert_eq!(code, 421, "{text}");
    assert!(text.starts_with("421 4.7.0"), "{text}");
    assert!(client.closed_by_server());
    assert_eq!(wait_acctlog(mta.dir.path(), USER, "0", 4).len(), 4);
    assert!(wait_acctlog(mta.dir.path(), USER, "1", 0).is_empty());
}

/// Goal: a bad password file keeps the daemon from starting, naming the
/// file and line. Method: validate_config on a config whose password file
/// has a plain-text password on line 2.
#[test]
fn a_bad_password_file_is_a_config_error_with_file_and_line() {
    let dir = TempDir::new("auth-badfile");
    let good = passwd_line(USER, PASSWORD);
    std::fs::write(dir.join("passwd"), format!("{good}bob:plaintext\n")).unwrap();
    let mut config = TestConfig::new(free_port());
    config.extra = "ESMTP_Listener { enable_authentication = true \
                    auth_password_file = \"passwd\" }\n"
        .into();
    let conf = dir.join("ecelerity.conf");
    std::fs::write(&conf, config.render()).unwrap();
    let output = run(
        Command::new(bin("validate_config"))
            .arg(&conf)
            .current_dir(dir.path()),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("passwd:2: "), "{stderr}");
    assert!(stderr.contains("argon2"), "{stderr}");
}

/// A daemon relaying for loopback to an aiosmtpd sink that requires AUTH
/// as relay/pw; `extra` goes at global scope.
fn start_outbound(label: &str, extra: &str) -> (Daemon, Sink, TempDir) {
    let dir = TempDir::new(label);
    let sink = Sink::start_with_args(
        &dir.join("sink"),
        free_port(),
        &["--auth", "relay:s3cret pw"],
    );
    let mut config = TestConfig::new(sink.port());
    config.extra = extra.to_string();
    let daemon = Daemon::start(dir.path(), &config.render());
    (daemon, sink, dir)
}

fn sink_auth_log(sink: &Sink) -> Vec<String> {
    complete_lines(&sink.dir().join("auth.txt"))
}

/// Goal: outbound AUTH to a smarthost that requires it, per domain, and
/// the message arrives byte for byte. Method: the aiosmtpd sink refuses
/// MAIL without AUTH; one message to a domain with default settings (PLAIN)
/// and one to a domain with outbound_smtp_auth_type = LOGIN; both arrive
/// unchanged after our Received header, and the sink recorded a good PLAIN
/// and a good LOGIN with our credentials.
#[test]
fn outbound_auth_to_a_smarthost_delivers_byte_for_byte() {
    let (daemon, sink, dir) = start_outbound(
        "auth-out",
        "outbound_smtp_auth_user = \"relay\"\n\
         outbound_smtp_auth_pass = \"s3cret pw\"\n\
         outbound_smtp_auth_allow_plaintext = true\n\
         domain \"login.example\" { outbound_smtp_auth_type = \"LOGIN\" }\n",
    );
    let mut sent = Vec::new();
    for (index, to) in ["bob@plain.example", "bob@login.example"]
        .iter()
        .enumerate()
    {
        let body = format!(
            "From: app@client.test\r\nTo: {to}\r\nSubject: outbound {index}\r\n\
             Message-ID: <out-{index}@client.test>\r\n\r\nhello {to}\r\n..leading dot\r\n"
        );
        let file = dir.join(format!("out-{index}.eml"));
        std::fs::write(&file, &body).unwrap();
        // smtplib sends the file's bytes as they are (swaks adds a CRLF).
        let code = send_file(daemon.smtp_port(), &file, "app@client.test", &[to]);
        assert_eq!(code, "250");
        sent.push(body);
    }
    let arrived = sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    assert_eq!(arrived.len(), 2, "mainlog: {:?}", daemon.mainlog_lines());
    for body in &sent {
        let found = arrived.iter().any(|m| {
            strip_leading_received(&m.bytes()).is_some_and(|rest| rest == body.as_bytes())
        });
        assert!(
            found,
            "not delivered byte for byte: {body:?}\narrived: {:?}",
            arrived
                .iter()
                .map(|m| String::from_utf8_lossy(&m.bytes()).into_owned())
                .collect::<Vec<_>>()
        );
    }
    let attempts = sink_auth_log(&sink);
    assert!(
        attempts.contains(&"PLAIN\trelay\ts3cret pw\tok".to_string()),
        "{attempts:?}"
    );
    assert!(
        attempts.contains(&"LOGIN\trelay\ts3cret pw\tok".to_string()),
        "{attempts:?}"
    );
    assert!(attempts.iter().all(|a| a.ends_with("\tok")), "{attempts:?}");
}

/// Goal: credentials never go over a connection without TLS unless
/// allowed. Method: credentials set without outbound_smtp_auth_allow_plaintext:
/// the message gets a T line saying why (454 4.7.0), the sink saw no AUTH
/// attempt and received nothing.
#[test]
fn outbound_credentials_are_not_sent_in_clear_text_by_default() {
    let (daemon, sink, _dir) = start_outbound(
        "auth-out-clear",
        "outbound_smtp_auth_user = \"relay\"\noutbound_smtp_auth_pass = \"s3cret pw\"\n",
    );
    let output = swaks(
        daemon.smtp_port(),
        &["--from", "app@client.test", "--to", "bob@plain.example"],
    );
    assert!(output.status.success(), "{output:?}");
    let lines = daemon.wait_for_kind("T", 1, ARRIVAL_TIMEOUT);
    let deferral = lines.iter().find(|l| l.contains("@T@")).expect("a T line");
    assert!(
        deferral.contains("@454 4.7.0 ") && deferral.contains("without TLS"),
        "{lines:?}"
    );
    assert!(sink_auth_log(&sink).is_empty(), "credentials were sent");
    assert!(sink.messages().is_empty());
}
