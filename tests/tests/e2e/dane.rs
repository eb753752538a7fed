//! DANE (RFC 7672) end to end: a `test.` zone signed with
//! `ldns-signzone` and served by an authoritative unbound, a second
//! unbound validating it with the zone's DS as trust anchor (the
//! validating resolver on loopback whose AD bit the daemon trusts, as
//! Postfix's `smtp_tls_security_level = dane` does), and an unsigned
//! `insecure.` zone beside it. aiosmtpd sinks with and without STARTTLS
//! play the MX hosts; certificates are made by the test with openssl.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, run, send_file, strip_leading_received, ChildGuard, Daemon, Sink,
    TempDir, TestConfig, ARRIVAL_TIMEOUT, READY_TIMEOUT,
};

use crate::tls::Pki;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a deferred message is watched to be sure it never arrives.
const NEVER_ARRIVES_WAIT: Duration = Duration::from_secs(4);

/// A signed `test.` zone (and an unsigned `insecure.` one) behind a
/// validating resolver on 127.0.0.1:`port`. Both unbounds are killed on
/// drop.
pub(crate) struct SignedDns {
    pub(crate) port: u16,
    _auth: ChildGuard,
    _validator: ChildGuard,
}

fn command_ok(command: &mut Command) -> String {
    let output = run(command, COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn unbound(dir: &Path, conf: &Path, log: &Path) -> ChildGuard {
    let child = Command::new("/usr/sbin/unbound")
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(dir)
        .spawn()
        .expect("spawn unbound (tests/install-deps)");
    let guard = ChildGuard::new("unbound", child);
    let ready = poll_until(READY_TIMEOUT, || {
        let text = fs::read_to_string(log).unwrap_or_default();
        text.contains("start of service").then_some(())
    });
    assert!(ready.is_some(), "unbound {} did not start", conf.display());
    guard
}

fn server_conf(dir: &Path, name: &str, port: u16) -> String {
    format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  \
         do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{dir}\"\n  \
         pidfile: \"{dir}/{name}.pid\"\n  use-syslog: no\n  logfile: \"{dir}/{name}.log\"\n  \
         verbosity: 1\n  num-threads: 1\n  access-control: 127.0.0.0/8 allow\n  \
         local-zone: \"test.\" nodefault\n",
        dir = dir.display()
    )
}

impl SignedDns {
    /// Signs `signed` (zone-file lines under `test.`) with a fresh KSK and
    /// ZSK, serves it and `insecure` (lines under `insecure.`, unsigned),
    /// and starts the validating resolver.
    pub(crate) fn start(dir: &Path, signed: &[String], insecure: &[String]) -> SignedDns {
        fs::create_dir_all(dir).unwrap();
        let mut zone = String::from(
            "$ORIGIN test.\n$TTL 60\n@ 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 5\n\
             @ 3600 IN NS ns.test.\nns 60 IN A 127.0.0.1\n",
        );
        for line in signed {
            zone.push_str(line);
            zone.push('\n');
        }
        fs::write(dir.join("test.zone"), zone).unwrap();
        let keygen = |ksk: bool| {
            let mut command = Command::new("ldns-keygen");
            command.current_dir(dir).args(["-a", "ECDSAP256SHA256"]);
            if ksk {
                command.arg("-k");
            }
            command_ok(command.arg("test."))
        };
        let (ksk, zsk) = (keygen(true), keygen(false));
        command_ok(Command::new("ldns-signzone").current_dir(dir).args([
            "-n",
            "test.zone",
            &ksk,
            &zsk,
        ]));
        let ds = fs::read_to_string(dir.join(format!("{ksk}.ds"))).unwrap();
        // "test.\tIN\tDS\t<tag> 13 2 <digest>": the trust anchor without
        // the class.
        let fields: Vec<&str> = ds.split_whitespace().collect();
        assert_eq!(fields[2], "DS", "{ds}");
        let anchor = format!("test. DS {}", fields[3..].join(" "));

        let (auth_port, port) = (free_port(), free_port());
        let mut auth = server_conf(dir, "auth", auth_port);
        auth.push_str("  local-zone: \"insecure.\" static\n");
        auth.push_str(
            "  local-data: \"insecure. 3600 IN SOA ns.insecure. a.insecure. 1 3600 600 86400 5\"\n",
        );
        for line in insecure {
            auth.push_str(&format!("  local-data: \"{line}\"\n"));
        }
        auth.push_str(&format!(
            "auth-zone:\n  name: \"test.\"\n  zonefile: \"{}\"\n  for-downstream: yes\n  \
             for-upstream: no\nremote-control:\n  control-enable: no\n",
            dir.join("test.zone.signed").display()
        ));
        let auth_conf = dir.join("auth.conf");
        fs::write(&auth_conf, auth).unwrap();
        let auth_guard = unbound(dir, &auth_conf, &dir.join("auth.log"));

        let mut validator = server_conf(dir, "validator", port);
        validator.push_str(&format!(
            "  local-zone: \"insecure.\" nodefault\n  do-not-query-localhost: no\n  \
             module-config: \"validator iterator\"\n  trust-anchor: \"{anchor}\"\n\
             stub-zone:\n  name: \"test.\"\n  stub-addr: 127.0.0.1@{auth_port}\n\
             stub-zone:\n  name: \"insecure.\"\n  stub-addr: 127.0.0.1@{auth_port}\n\
             remote-control:\n  control-enable: no\n"
        ));
        let validator_conf = dir.join("validator.conf");
        fs::write(&validator_conf, validator).unwrap();
        let validator_guard = unbound(dir, &validator_conf, &dir.join("validator.log"));
        SignedDns {
            port,
            _auth: auth_guard,
            _validator: validator_guard,
        }
    }
}

/// Hex SHA-256 of a certificate's public key (TLSA selector 1, matching
/// type 1), by openssl.
fn spki_sha256(dir: &Path, cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER \
         | openssl dgst -sha256 -r | cut -d' ' -f1",
        cert.display()
    );
    command_ok(Command::new("sh").current_dir(dir).args(["-c", &script]))
}

/// Hex SHA-256 of a whole certificate (TLSA selector 0, matching type 1).
fn cert_sha256(dir: &Path, cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1",
        cert.display()
    );
    command_ok(Command::new("sh").current_dir(dir).args(["-c", &script]))
}

fn message(id: &str, rcpt: &str) -> Vec<u8> {
    format!(
        "From: s@sender.test\r\nTo: {rcpt}\r\nSubject: dane\r\nMessage-ID: <{id}>\r\n\r\n\
         .leading dot\r\nbody of {id}\r\n"
    )
    .into_bytes()
}

fn send(daemon: &Daemon, dir: &Path, id: &str, rcpt: &str) -> Vec<u8> {
    let bytes = message(id, rcpt);
    let file = dir.join(format!("{id}.eml"));
    fs::write(&file, &bytes).unwrap();
    assert_eq!(
        send_file(daemon.smtp_port(), &file, "s@sender.test", &[rcpt]),
        "250",
        "{rcpt}"
    );
    bytes
}

/// A daemon without a gateway, asking `nameserver`, MX hosts on
/// `smtp_port`, with `extra` global options.
pub(crate) fn start_daemon(dir: &Path, nameserver: &str, smtp_port: u16, extra: &str) -> Daemon {
    fs::create_dir_all(dir).unwrap();
    let mut config = TestConfig::new(smtp_port);
    config.extra = format!(
        "nameservers = ( \"{nameserver}\" )\nremote_smtp_port = {smtp_port}\n\
         generate_bounces = false\n{extra}"
    );
    let text = config.render();
    let gateway = format!("gateway = \"127.0.0.1:{smtp_port}\"\n");
    assert!(text.contains(&gateway), "the test config sets a gateway");
    Daemon::start(dir, &text.replace(&gateway, ""))
}

pub(crate) fn paniclog(dir: &Path) -> String {
    fs::read_to_string(dir.join("log/paniclog.ec")).unwrap_or_default()
}

/// The body as the sink stored it for Message-ID `id`, without the
/// Received header the daemon added.
fn arrived(sink: &Sink, id: &str) -> Option<(Vec<u8>, String)> {
    sink.messages().into_iter().find_map(|m| {
        (m.header("Message-ID").as_deref() == Some(&format!("<{id}>")[..])).then(|| {
            let bytes = m.bytes();
            let body = strip_leading_received(&bytes).unwrap_or(&bytes).to_vec();
            (body, m.tls.clone())
        })
    })
}

fn sink_chain(pki: &Pki, cert: &Path) -> PathBuf {
    let chain = cert.with_extension("chain.pem");
    let mut text = fs::read_to_string(cert).unwrap();
    text.push_str(&fs::read_to_string(&pki.ca).unwrap());
    fs::write(&chain, text).unwrap();
    chain
}

/// Goal: with `dane = true` and DNSSEC-validated MX and TLSA answers, a
/// server whose certificate matches a DANE-EE or a DANE-TA record gets
/// the message over TLS; a mismatching record, or a server that does not
/// offer STARTTLS, defers with a T line naming DANE and nothing is sent
/// in clear; the same mismatching record in an unsigned zone is ignored
/// (no AD bit: the domain's normal `tls` policy, here clear text).
/// Method: a signed `test.` zone and an unsigned `insecure.` zone behind a
/// validating unbound; aiosmtpd with STARTTLS on 127.0.0.2 (certificate
/// chain of a test CA, names mx.ee.test and mx.ta.test), aiosmtpd
/// without TLS on 127.0.0.3; the daemon has `dane = true` and no `tls`.
#[test]
fn dane_delivers_to_matching_tlsa_and_defers_otherwise() {
    let dir = TempDir::new("dane");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("mx.dane", "DNS:mx.ee.test,DNS:mx.ta.test,DNS:mx.badee.test");
    let chain = sink_chain(&pki, &cert);
    let port = free_port();
    let tls_sink = Sink::start_on(
        &dir.join("tls-sink"),
        "127.0.0.2",
        port,
        &[
            "--tls-cert",
            chain.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let plain_sink = Sink::start_on(&dir.join("plain-sink"), "127.0.0.3", port, &[]);
    let spki = spki_sha256(dir.path(), &cert);
    let ca = cert_sha256(dir.path(), &pki.ca);
    let wrong = "00".repeat(32);
    let records = |domain: &str, ip: &str, tlsa: &str| {
        vec![
            format!("{domain}. 60 IN MX 10 mx.{domain}."),
            format!("mx.{domain}. 60 IN A {ip}"),
            format!("_{port}._tcp.mx.{domain}. 60 IN TLSA {tlsa}"),
        ]
    };
    let mut signed = Vec::new();
    signed.extend(records("ee.test", "127.0.0.2", &format!("3 1 1 {spki}")));
    signed.extend(records("ta.test", "127.0.0.2", &format!("2 0 1 {ca}")));
    signed.extend(records(
        "badee.test",
        "127.0.0.2",
        &format!("3 1 1 {wrong}"),
    ));
    signed.extend(records("notls.test", "127.0.0.3", &format!("3 1 1 {spki}")));
    let insecure = records("mail.insecure", "127.0.0.3", &format!("3 1 1 {wrong}"));
    let dns = SignedDns::start(&dir.join("dns"), &signed, &insecure);
    let daemon = start_daemon(
        &dir.join("mta"),
        &format!("127.0.0.1:{}", dns.port),
        port,
        "dane = true\n",
    );

    let ee = send(&daemon, dir.path(), "ee@dane", "r@ee.test");
    let ta = send(&daemon, dir.path(), "ta@dane", "r@ta.test");
    send(&daemon, dir.path(), "badee@dane", "r@badee.test");
    send(&daemon, dir.path(), "notls@dane", "r@notls.test");
    let unsigned = send(&daemon, dir.path(), "insecure@dane", "r@mail.insecure");

    for (id, body) in [("ee@dane", &ee), ("ta@dane", &ta)] {
        let (got, tls) = poll_until(ARRIVAL_TIMEOUT, || arrived(&tls_sink, id))
            .unwrap_or_else(|| panic!("{id} never arrived; paniclog:\n{}", paniclog(daemon.dir())));
        assert_eq!(&got, body, "{id} byte for byte");
        assert!(tls.starts_with("TLSv1."), "{id} over TLS, not {tls:?}");
    }
    let (got, tls) = poll_until(ARRIVAL_TIMEOUT, || arrived(&plain_sink, "insecure@dane"))
        .expect("the unsigned domain's message arrives");
    assert_eq!(got, unsigned);
    assert_eq!(
        tls, "-",
        "no DANE without DNSSEC: the normal policy (tls = no)"
    );

    let lines = daemon.wait_for("T lines naming DANE", ARRIVAL_TIMEOUT, |lines| {
        ["badee.test", "notls.test"].iter().all(|domain| {
            lines
                .iter()
                .any(|l| l.contains("@T@") && l.contains(domain) && l.contains("DANE"))
        })
    });
    let badee = lines
        .iter()
        .find(|l| l.contains("@T@") && l.contains("badee.test"))
        .unwrap();
    assert!(badee.contains("4.7.5"), "{badee}");
    assert!(badee.contains("no TLSA record matches"), "{badee}");
    let notls = lines
        .iter()
        .find(|l| l.contains("@T@") && l.contains("notls.test"))
        .unwrap();
    assert!(notls.contains("does not offer STARTTLS"), "{notls}");
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    assert!(
        arrived(&tls_sink, "badee@dane").is_none(),
        "mismatch never sent"
    );
    assert!(
        arrived(&plain_sink, "notls@dane").is_none(),
        "never in clear"
    );
    // The console shows the cached TLSA records, asked for by type.
    let console = daemon.console(&format!("dns_cache lookup _{port}._tcp.mx.ee.test TLSA\n"));
    let shown = String::from_utf8_lossy(&console.stdout);
    assert!(
        shown.contains("TLSA") && shown.contains(&format!("3 1 1 {spki}")),
        "{shown}"
    );
    let log = paniclog(daemon.dir());
    assert!(log.contains("verified by DANE-EE (dane)"), "{log}");
    assert!(log.contains("verified by DANE-TA (dane)"), "{log}");
}
