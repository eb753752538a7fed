//! STARTTLS end to end, both ways. Each test makes its own CA and
//! certificates with the openssl CLI, starts the daemon with them, and
//! talks to it with clients this project did not write (Python's smtplib
//! and ssl, swaks, openssl s_client) or has it deliver to aiosmtpd with a
//! TLS context (tests/py/sink.py), checking what arrived byte for byte.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, python, run, run_with_input, strip_leading_received, Daemon, Sink,
    TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

use crate::raw::Raw;

/// How long a deferred message is watched to be sure it never arrives.
const NEVER_ARRIVES_WAIT: Duration = Duration::from_secs(4);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A test CA and the certificates it issued, as PEM files in `dir`.
pub(crate) struct Pki {
    dir: PathBuf,
    pub(crate) ca: PathBuf,
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let output = run(
        Command::new("openssl").current_dir(dir).args(args),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ecelerity test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let ca = dir.join("ca.pem");
        Pki { dir, ca }
    }

    /// A certificate for `names` (`DNS:x` / `IP:y` items) signed by the
    /// CA: (certificate, key).
    pub(crate) fn issue(&self, label: &str, names: &str) -> (PathBuf, PathBuf) {
        let (key, csr, pem, ext) = (
            format!("{label}.key"),
            format!("{label}.csr"),
            format!("{label}.pem"),
            format!("{label}.ext"),
        );
        fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={names}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let subject = format!("/CN={label}");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(pem), self.dir.join(key))
    }
}

/// The test config with `listen` options inside the ESMTP Listen block and
/// `global` lines at global scope.
fn config_text(config: &TestConfig, listen: &str) -> String {
    let text = config.render();
    let plain = format!("Listen \"127.0.0.1:{}\" {{ }}", config.smtp_port);
    assert!(text.contains(&plain), "{text}");
    text.replace(
        &plain,
        &format!("Listen \"127.0.0.1:{}\" {{ {listen} }}", config.smtp_port),
    )
}

fn listen_tls(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "tls_certificate = \"{}\" tls_key = \"{}\" {extra}",
        cert.display(),
        key.display()
    )
}

/// A message with CRLF line endings and a unique Message-ID.
fn message(id: &str) -> Vec<u8> {
    format!(
        "From: a@client.test\r\nTo: b@sink.test\r\nSubject: tls {id}\r\n\
         Message-ID: <{id}@tls.test>\r\n\r\nover TLS, byte for byte\r\n.leading dot\r\n"
    )
    .into_bytes()
}

/// Sends `body` with Python's smtplib: EHLO, STARTTLS (verifying the
/// daemon's certificate against `ca` for 127.0.0.1), EHLO, MAIL, RCPT,
/// DATA. Returns the script's stdout (the TLS version and cipher).
fn smtplib_starttls(port: u16, ca: &Path, body: &Path) -> String {
    let script = r#"
import smtplib, ssl, sys
port, ca, body = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read()
context = ssl.create_default_context(cafile=ca)
with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
    s.ehlo("client.test")
    code, _ = s.starttls(context=context)
    assert code == 220, code
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), "STARTTLS offered again over TLS"
    s.sendmail("a@client.test", ["b@sink.test"], body)
    print(s.sock.version(), s.sock.cipher()[0])
"#;
    let output = run(
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(ca)
            .arg(body),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Goal: inbound STARTTLS works with independent clients and the message
/// arrives byte for byte, with the TLS protocol and cipher in its
/// Received header. Method: smtplib (verifying our certificate against
/// the test CA) and swaks `--tls` send through the daemon to the sink;
/// `openssl s_client -starttls smtp` reports TLS 1.3.
#[test]
fn inbound_starttls_with_smtplib_swaks_and_openssl() {
    let dir = TempDir::new("tls-inbound");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("mta.test", "DNS:mta.test,IP:127.0.0.1");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let daemon = Daemon::start(
        dir.path(),
        &config_text(&config, &listen_tls(&cert, &key, "")),
    );
    let port = daemon.smtp_port();

    let body = message("smtplib");
    let body_path = dir.join("smtplib.eml");
    fs::write(&body_path, &body).unwrap();
    let negotiated = smtplib_starttls(port, &pki.ca, &body_path);
    assert!(negotiated.starts_with("TLSv1.3 "), "{negotiated}");

    let swaks = run(
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args(["--from", "s@client.test", "--to", "b@sink.test", "--tls"])
            .args(["--header", "Subject: swaks over tls"])
            .stdin(std::process::Stdio::null()),
        COMMAND_TIMEOUT,
    );
    let swaks_out = String::from_utf8_lossy(&swaks.stdout);
    assert!(swaks.status.success(), "swaks: {swaks_out}");
    assert!(swaks_out.contains("TLS started"), "{swaks_out}");

    let s_client = run_with_input(
        Command::new("openssl").args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            pki.ca.to_str().unwrap(),
            "-verify_return_error",
            "-brief",
        ]),
        b"QUIT\r\n",
        COMMAND_TIMEOUT,
    );
    let s_client_text = format!(
        "{}{}",
        String::from_utf8_lossy(&s_client.stdout),
        String::from_utf8_lossy(&s_client.stderr)
    );
    assert!(
        s_client_text.contains("Protocol version: TLSv1.3"),
        "{s_client_text}"
    );
    assert!(
        s_client_text.contains("Verification: OK"),
        "{s_client_text}"
    );

    let messages = sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    let via_smtplib = messages
        .iter()
        .find(|m| m.mail_from == "a@client.test")
        .expect("the smtplib message arrived");
    let bytes = via_smtplib.bytes();
    assert_eq!(
        strip_leading_received(&bytes),
        Some(&body[..]),
        "byte for byte"
    );
    let received = String::from_utf8_lossy(&bytes);
    let cipher = negotiated.split_whitespace().nth(1).unwrap();
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(received.contains("(version=TLSv1.3 cipher="), "{received}");
    // Python names the suite as OpenSSL does (TLS_AES_256_GCM_SHA384),
    // rustls as the RFC's TLS13_ prefix does: the same suite.
    let suffix = cipher.trim_start_matches("TLS_");
    assert!(received.contains(suffix), "{cipher} in {received}");
    assert!(messages.iter().any(|m| m.mail_from == "s@client.test"));
}

/// Goal: `tls = required` refuses the transaction in clear text with
/// Momentum's 530, and plaintext pipelined behind STARTTLS is refused
/// (CVE-2011-0411), not run inside the TLS session. Method: a raw socket
/// (MAIL, RCPT, DATA get 530; "STARTTLS\r\nMAIL FROM:<a@b>\r\n" in one
/// write gets 554 and no 220), then smtplib with STARTTLS gets through.
#[test]
fn tls_required_and_the_starttls_injection_refusal() {
    let dir = TempDir::new("tls-required");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("mta.test", "DNS:mta.test,IP:127.0.0.1");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let listen = listen_tls(&cert, &key, "tls = \"required\"");
    let daemon = Daemon::start(dir.path(), &config_text(&config, &listen));
    let port = daemon.smtp_port();

    let mut raw = Raw::connect(port);
    assert_eq!(raw.reply().unwrap().0, 220);
    let (code, ehlo) = raw.command("EHLO client.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    for command in ["MAIL FROM:<a@client.test>", "RCPT TO:<b@sink.test>", "DATA"] {
        let (code, text) = raw.command(command);
        assert_eq!(code, 530, "{command}: {text}");
        assert!(
            text.contains("5.7.0 Must issue a STARTTLS command first"),
            "{text}"
        );
    }
    raw.send(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n").unwrap();
    let (code, text) = raw.reply().unwrap();
    assert_eq!(code, 554, "STARTTLS with input behind it: {text}");
    let (code, text) = raw.reply().unwrap();
    assert_eq!(code, 530, "the pipelined MAIL ran in clear text: {text}");
    assert_eq!(raw.command("QUIT").0, 221);

    let body = message("required");
    let body_path = dir.join("required.eml");
    fs::write(&body_path, &body).unwrap();
    smtplib_starttls(port, &pki.ca, &body_path);
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        strip_leading_received(&messages[0].bytes()),
        Some(&body[..])
    );
}

/// Goal: a new certificate is served without a restart. Method: replace
/// the listener's certificate and key files with ones for another name;
/// within a few seconds `openssl s_client` sees the new subject.
#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let dir = TempDir::new("tls-reload");
    let pki = Pki::new(dir.path());
    let (old_cert, old_key) = pki.issue("old.mta.test", "DNS:old.mta.test");
    let (new_cert, new_key) = pki.issue("new.mta.test", "DNS:new.mta.test");
    let (cert, key) = (dir.join("served.pem"), dir.join("served.key"));
    fs::copy(&old_cert, &cert).unwrap();
    fs::copy(&old_key, &key).unwrap();
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let daemon = Daemon::start(
        dir.path(),
        &config_text(&config, &listen_tls(&cert, &key, "")),
    );
    let port = daemon.smtp_port();
    let subject = || {
        let out = run_with_input(
            Command::new("openssl").args([
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-brief",
            ]),
            b"QUIT\r\n",
            COMMAND_TIMEOUT,
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let before = subject();
    assert!(before.contains("old.mta.test"), "{before}");
    // Key first, then certificate: a check between the two keeps serving
    // the old pair (the new one does not load yet) and says so.
    fs::copy(&new_key, &key).unwrap();
    fs::copy(&new_cert, &cert).unwrap();
    let seen = poll_until(Duration::from_secs(30), || {
        let now = subject();
        now.contains("new.mta.test").then_some(now)
    });
    assert!(seen.is_some(), "the new certificate was never served");
}

/// A sink with TLS arguments, and a daemon delivering to it with
/// `outbound` options at global scope.
fn outbound(label: &str, sink_args: &[&str], outbound: &str) -> (TempDir, Sink, Daemon) {
    let dir = TempDir::new(label);
    let sink = Sink::start_with_args(&dir.join("sink"), free_port(), sink_args);
    let mut config = TestConfig::new(sink.port());
    config.extra = outbound.to_string();
    let daemon = Daemon::start(dir.path(), &config_text(&config, ""));
    (dir, sink, daemon)
}

/// Sends one message to the daemon in clear text with smtplib.
fn send_plain(port: u16, dir: &Path, id: &str) -> Vec<u8> {
    let body = message(id);
    let path = dir.join(format!("{id}.eml"));
    fs::write(&path, &body).unwrap();
    let code = ecelerity_tests::send_file(port, &path, "a@client.test", &["b@sink.test"]);
    assert_eq!(code, "250", "{id}");
    body
}

fn paniclog(dir: &Path) -> String {
    fs::read_to_string(dir.join("log/paniclog.ec")).unwrap_or_default()
}

/// Goal: `tls = ifavailable` delivers over TLS to a server that offers
/// it, and the server's certificate is verified (`tls_verify = host`,
/// `tls_ca` = the test CA) when asked. Method: aiosmtpd with a
/// tls_context and require_starttls; the sink records the TLS version.
#[test]
fn outbound_ifavailable_and_verified_tls_reach_an_aiosmtpd_over_tls() {
    let probe = TempDir::new("tls-pki-out");
    let pki = Pki::new(probe.path());
    let (cert, key) = pki.issue("sink.test", "DNS:sink.test,IP:127.0.0.1");
    let sink_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-starttls",
    ];
    let (dir, sink, daemon) = outbound("tls-out", &sink_args, "tls = \"ifavailable\"");
    let body = send_plain(daemon.smtp_port(), dir.path(), "ifavailable");
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages[0].tls, "TLSv1.3", "the sink saw a TLS session");
    assert_eq!(
        strip_leading_received(&messages[0].bytes()),
        Some(&body[..])
    );

    let verify = format!(
        "tls = \"required\"\ntls_verify = \"host\"\ntls_ca = \"{}\"",
        pki.ca.display()
    );
    let (dir, sink, daemon) = outbound("tls-out-verified", &sink_args, &verify);
    send_plain(daemon.smtp_port(), dir.path(), "verified");
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages[0].tls, "TLSv1.3");
    let log = paniclog(dir.path());
    assert!(
        log.contains("certificate verified (tls_verify = host)"),
        "{log}"
    );
}

/// Goal: with `tls_verify = host`, a certificate for another name fails
/// the delivery (deferred, never sent). Method: the sink's certificate
/// names only wrong.test; the daemon connects to 127.0.0.1.
#[test]
fn outbound_tls_verify_host_defers_a_certificate_for_another_name() {
    let probe = TempDir::new("tls-pki-wrong");
    let pki = Pki::new(probe.path());
    let (cert, key) = pki.issue("wrong.test", "DNS:wrong.test");
    let sink_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let verify = format!(
        "tls = \"required\"\ntls_verify = \"host\"\ntls_ca = \"{}\"",
        pki.ca.display()
    );
    let (dir, sink, daemon) = outbound("tls-out-wrong", &sink_args, &verify);
    send_plain(daemon.smtp_port(), dir.path(), "wrongname");
    let lines = daemon.wait_for("a T line for the name mismatch", ARRIVAL_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains("@T@") && l.contains("4.7.5"))
    });
    assert!(
        !lines.iter().any(|l| l.contains("@D@")),
        "delivered despite the wrong name: {lines:?}"
    );
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    assert!(
        sink.messages().is_empty(),
        "sent to a server with the wrong name"
    );
    let _ = dir;
}

/// Goal: `tls = required` never sends in clear text to a server without
/// STARTTLS: the message is deferred. Method: a plain aiosmtpd sink.
#[test]
fn outbound_tls_required_defers_when_the_server_has_no_starttls() {
    let (dir, sink, daemon) = outbound("tls-out-required", &[], "tls = \"required\"");
    send_plain(daemon.smtp_port(), dir.path(), "required");
    let lines = daemon.wait_for("a T line", ARRIVAL_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|l| l.contains("@T@") && l.contains("tls = required"))
    });
    assert!(!lines.iter().any(|l| l.contains("@D@")), "{lines:?}");
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    assert!(
        sink.messages().is_empty(),
        "a required-TLS message went in clear text"
    );
}

/// Goal: `tls = ifavailable` falls back to clear text, to the same host,
/// when the handshake fails, and says so. Method: a sink that answers
/// STARTTLS with 220 and then garbage; the message arrives in clear text
/// byte for byte and the paniclog names the fallback.
#[test]
fn outbound_ifavailable_falls_back_to_clear_text_after_a_broken_handshake() {
    let probe = TempDir::new("tls-pki-broken");
    let pki = Pki::new(probe.path());
    let (cert, key) = pki.issue("sink.test", "DNS:sink.test,IP:127.0.0.1");
    let sink_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--broken-starttls",
    ];
    let (dir, sink, daemon) = outbound("tls-out-broken", &sink_args, "tls = \"ifavailable\"");
    let body = send_plain(daemon.smtp_port(), dir.path(), "fallback");
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages[0].tls, "-", "delivered in clear text");
    assert_eq!(
        strip_leading_received(&messages[0].bytes()),
        Some(&body[..])
    );
    let log = paniclog(dir.path());
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("delivering in clear text"), "{log}");
}

/// Goal: TLS settings that do not add up stop the daemon before it
/// listens, naming the file and the Listen line; a key file that is no
/// key stops it too, naming the listener. Method: `tls = required`
/// without a certificate; then a certificate with a bogus key file.
#[test]
fn listener_tls_settings_that_do_not_add_up_refuse_to_start() {
    let dir = TempDir::new("tls-bad-config");
    let config = TestConfig::new(1);
    let text = config_text(&config, "tls = \"required\"");
    let line = text
        .lines()
        .position(|l| l.contains("tls = \"required\""))
        .expect("the Listen line")
        + 1;
    let mut daemon = Daemon::spawn(dir.path(), &text);
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("must exit");
    let stderr = daemon.stderr_text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let location = format!("{}:{line}:", ecelerity_tests::CONFIG_FILE_NAME);
    assert!(stderr.contains(&location), "no {location} in {stderr}");
    assert!(
        stderr.contains("tls = required needs tls_certificate"),
        "{stderr}"
    );

    let dir = TempDir::new("tls-bad-key");
    let pki = Pki::new(dir.path());
    let (cert, _) = pki.issue("mta.test", "DNS:mta.test");
    let bogus = dir.join("bogus.key");
    fs::write(&bogus, "not a key\n").unwrap();
    let text = config_text(&config, &listen_tls(&cert, &bogus, ""));
    let mut daemon = Daemon::spawn(dir.path(), &text);
    let status = daemon
        .wait_exit(Duration::from_secs(60))
        .expect("must exit");
    let stderr = daemon.stderr_text();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("bogus.key"), "{stderr}");
}

/// Goal: the client certificate of the outbound scopes is offered.
/// Method: a sink that demands a client certificate from the test CA;
/// with `tls_certificate`/`tls_key` set the message arrives over TLS,
/// without them (tls = required) it is deferred and never arrives.
#[test]
fn outbound_client_certificate_is_offered_to_a_server_that_demands_one() {
    let probe = TempDir::new("tls-pki-client");
    let pki = Pki::new(probe.path());
    let (cert, key) = pki.issue("sink.test", "DNS:sink.test,IP:127.0.0.1");
    let (client_cert, client_key) = pki.issue("mta.test", "DNS:mta.test");
    let sink_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        pki.ca.to_str().unwrap(),
    ];
    let with_cert = format!(
        "tls = \"required\"\ntls_certificate = \"{}\"\ntls_key = \"{}\"",
        client_cert.display(),
        client_key.display()
    );
    let (dir, sink, daemon) = outbound("tls-out-client", &sink_args, &with_cert);
    let body = send_plain(daemon.smtp_port(), dir.path(), "clientcert");
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages[0].tls, "TLSv1.3");
    assert_eq!(
        strip_leading_received(&messages[0].bytes()),
        Some(&body[..])
    );

    let (dir, sink, daemon) = outbound("tls-out-noclient", &sink_args, "tls = \"required\"");
    send_plain(daemon.smtp_port(), dir.path(), "noclientcert");
    // TLS 1.3: the client's handshake is done before the server checks
    // its certificate, so the refusal (an alert) ends the EHLO after it:
    // deferred all the same.
    daemon.wait_for(
        "a T line after the refused certificate",
        ARRIVAL_TIMEOUT,
        |lines| lines.iter().any(|l| l.contains("@T@")),
    );
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    assert!(
        sink.messages().is_empty(),
        "delivered without a client certificate"
    );
}

/// Goal: AUTH is offered only once STARTTLS protects the session (Postfix's
/// `smtpd_tls_auth_only`), and a client that authenticated over TLS may
/// relay. Method: a listener with a certificate and `enable_authentication`
/// (no `allow_plaintext_auth`) that relays only for 10.0.0.0/8; swaks
/// without TLS cannot authenticate and its message never arrives; swaks
/// with `--tls --auth PLAIN` relays it to the sink.
#[test]
fn auth_after_starttls_relays_and_auth_in_clear_text_is_refused() {
    let dir = TempDir::new("tls-auth");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("mta.test", "DNS:mta.test,IP:127.0.0.1");
    let passwd = run_with_input(
        Command::new(ecelerity_tests::bin("ec_passwd")).arg("alice"),
        b"sesame tls\n",
        COMMAND_TIMEOUT,
    );
    assert!(passwd.status.success(), "ec_passwd: {passwd:?}");
    fs::write(dir.join("passwd"), &passwd.stdout).unwrap();
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.relay_hosts = vec!["10.0.0.0/8".to_string()];
    let listen = listen_tls(
        &cert,
        &key,
        "enable_authentication = true auth_password_file = \"passwd\"",
    );
    let daemon = Daemon::start(dir.path(), &config_text(&config, &listen));
    let port = daemon.smtp_port().to_string();
    let swaks = |tls: bool, subject: &str| {
        let mut command = Command::new("swaks");
        command
            .args(["--server", "127.0.0.1", "--port", &port])
            .args(["--from", "app@client.test", "--to", "b@sink.test"])
            .args(["--auth", "PLAIN", "--auth-user", "alice"])
            .args(["--auth-password", "sesame tls"])
            .args(["--header", &format!("Subject: {subject}")])
            .stdin(std::process::Stdio::null());
        if tls {
            command.arg("--tls");
        }
        run(&mut command, COMMAND_TIMEOUT)
    };
    let clear = swaks(false, "in clear text");
    let clear_out = String::from_utf8_lossy(&clear.stdout).into_owned();
    assert!(
        !clear.status.success(),
        "AUTH worked in clear text: {clear_out}"
    );
    assert!(!clear_out.contains("250-AUTH"), "{clear_out}");
    let secure = swaks(true, "after starttls");
    let secure_out = String::from_utf8_lossy(&secure.stdout).into_owned();
    assert!(secure.status.success(), "swaks --tls --auth: {secure_out}");
    assert!(secure_out.contains("235 2.7.0"), "{secure_out}");
    let arrived = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(arrived.len(), 1);
    let body = String::from_utf8_lossy(&arrived[0].bytes()).into_owned();
    assert!(body.contains("Subject: after starttls"), "{body}");
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    assert_eq!(sink.messages().len(), 1, "the clear-text message arrived");
}

/// Goal: outbound AUTH goes over the STARTTLS session without
/// `outbound_smtp_auth_allow_plaintext`. Method: aiosmtpd demands STARTTLS
/// and AUTH; the daemon has `tls = required` and credentials; the message
/// arrives byte for byte over TLS 1.3 and the sink recorded a successful
/// PLAIN login with those credentials.
#[test]
fn outbound_auth_goes_over_starttls() {
    let probe = TempDir::new("tls-pki-auth");
    let pki = Pki::new(probe.path());
    let (cert, key) = pki.issue("sink.test", "DNS:sink.test,IP:127.0.0.1");
    let sink_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-starttls",
        "--auth",
        "relay-user:relay secret",
    ];
    let outbound_options = "tls = \"required\"\n\
                            outbound_smtp_auth_user = \"relay-user\"\n\
                            outbound_smtp_auth_pass = \"relay secret\"";
    let (dir, sink, daemon) = outbound("tls-out-auth", &sink_args, outbound_options);
    let body = send_plain(daemon.smtp_port(), dir.path(), "auth-over-tls");
    let messages = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(messages[0].tls, "TLSv1.3", "the sink saw a TLS session");
    assert_eq!(
        strip_leading_received(&messages[0].bytes()),
        Some(&body[..])
    );
    let auth = fs::read_to_string(dir.join("sink").join("auth.txt")).unwrap_or_default();
    assert_eq!(
        auth.trim_end(),
        "PLAIN\trelay-user\trelay secret\tok",
        "{auth}"
    );
}
