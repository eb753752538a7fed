//! MTA-STS (RFC 8461) end to end: unbound serves the `test.` zone (MX,
//! `_mta-sts` TXT and `mta-sts.<domain>` records), an HTTPS policy server
//! (Python's http.server with ssl, tests/py/mta_sts_server.py) serves each
//! domain's policy on 127.0.8.43:443 with a certificate of a CA the test
//! makes, and aiosmtpd sinks with and without STARTTLS play the MX hosts.
//! Port 443 is the RFC's: the test runs as root (as CI does).

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, py_dir, python, send_file, strip_leading_received, ChildGuard, Daemon,
    Sink, TempDir, ARRIVAL_TIMEOUT, READY_TIMEOUT,
};

use crate::dane::{paniclog, start_daemon};
use crate::mx::Unbound;
use crate::tls::Pki;

/// The loopback address of the policy server (port 443, as the RFC says).
const POLICY_HOST: &str = "127.0.8.43";
/// How long a deferred message is watched to be sure it never arrives.
const NEVER_ARRIVES_WAIT: Duration = Duration::from_secs(4);

/// tests/py/mta_sts_server.py serving `dir/<domain>.txt`.
fn policy_server(dir: &Path, cert: &Path, key: &Path) -> ChildGuard {
    let log = fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(python())
        .arg(py_dir().join("mta_sts_server.py"))
        .args(["--host", POLICY_HOST, "--port", "443"])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn python3 mta_sts_server.py");
    let guard = ChildGuard::new("mta_sts_server.py", child);
    let up = poll_until(READY_TIMEOUT, || {
        TcpStream::connect((POLICY_HOST, 443)).ok().map(|_| ())
    });
    assert!(
        up.is_some(),
        "policy server not up: {}",
        fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    );
    guard
}

fn send(daemon: &Daemon, dir: &Path, id: &str, rcpt: &str) -> Vec<u8> {
    let bytes = format!(
        "From: s@sender.test\r\nTo: {rcpt}\r\nSubject: mta-sts\r\nMessage-ID: <{id}>\r\n\r\n\
         .leading dot\r\nbody of {id}\r\n"
    )
    .into_bytes();
    let file = dir.join(format!("{id}.eml"));
    fs::write(&file, &bytes).unwrap();
    assert_eq!(
        send_file(daemon.smtp_port(), &file, "s@sender.test", &[rcpt]),
        "250"
    );
    bytes
}

fn arrived(sink: &Sink, id: &str) -> Option<(Vec<u8>, String)> {
    sink.messages().into_iter().find_map(|m| {
        (m.header("Message-ID").as_deref() == Some(&format!("<{id}>")[..])).then(|| {
            let bytes = m.bytes();
            let body = strip_leading_received(&bytes).unwrap_or(&bytes).to_vec();
            (body, m.tls.clone())
        })
    })
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// Goal: with `mta_sts = true`, an `enforce` policy delivers over TLS to
/// an MX host it names (a `*.` pattern) whose certificate is valid for
/// the MX name; it defers, with a T line naming MTA-STS and nothing sent,
/// when no MX host matches, when the certificate does not name the MX
/// host, and when the server does not offer STARTTLS; a `testing` policy
/// delivers anyway (and logs); a policy announced but not served (404)
/// counts as none; a policy is fetched once and cached while its id
/// stays. Method: six domains in unbound, their policies over
/// HTTPS on 127.0.8.43:443 (checked against `mta_sts_ca`, the test's
/// CA), an aiosmtpd with STARTTLS on 127.0.0.4 and one without on
/// 127.0.0.6; the daemon has no `tls` option of its own.
#[test]
fn mta_sts_enforce_delivers_to_matching_mx_over_tls_and_defers_otherwise() {
    let dir = TempDir::new("mta-sts");
    let pki = Pki::new(dir.path());
    let domains = [
        "sts",
        "stsbad",
        "ststesting",
        "stsplain",
        "stswrongcert",
        "stsnone",
    ];
    let https_names: Vec<String> = domains
        .iter()
        .map(|d| format!("DNS:mta-sts.{d}.test"))
        .collect();
    let (https_cert, https_key) = pki.issue("mta-sts", &https_names.join(","));
    let (mx_cert, mx_key) = pki.issue(
        "mx",
        "DNS:mx.sts.test,DNS:mx.stsbad.test,DNS:mx.ststesting.test",
    );
    let policies = dir.join("policies");
    fs::create_dir_all(&policies).unwrap();
    for (domain, text) in [
        ("sts.test", policy("enforce", "*.sts.test")),
        ("stsbad.test", policy("enforce", "mx.elsewhere.test")),
        ("ststesting.test", policy("testing", "mx.elsewhere.test")),
        ("stsplain.test", policy("enforce", "mx.stsplain.test")),
        (
            "stswrongcert.test",
            policy("enforce", "mx.stswrongcert.test"),
        ),
    ] {
        fs::write(policies.join(format!("{domain}.txt")), text).unwrap();
    }
    let _server = policy_server(&policies, &https_cert, &https_key);

    let port = free_port();
    let tls_sink = Sink::start_on(
        &dir.join("tls-sink"),
        "127.0.0.4",
        port,
        &[
            "--tls-cert",
            mx_cert.to_str().unwrap(),
            "--tls-key",
            mx_key.to_str().unwrap(),
        ],
    );
    let plain_sink = Sink::start_on(&dir.join("plain-sink"), "127.0.0.6", port, &[]);
    let mut records = Vec::new();
    for domain in domains {
        let mx_ip = if domain == "stsplain" {
            "127.0.0.6"
        } else {
            "127.0.0.4"
        };
        records.push(format!("{domain}.test. 60 IN MX 10 mx.{domain}.test."));
        records.push(format!("mx.{domain}.test. 60 IN A {mx_ip}"));
        records.push(format!(
            "_mta-sts.{domain}.test. 60 IN TXT \"v=STSv1; id=20261203;\""
        ));
        records.push(format!("mta-sts.{domain}.test. 60 IN A {POLICY_HOST}"));
    }
    let unbound = Unbound::start(&dir.join("dns"), &records);
    let extra = format!("mta_sts = true\nmta_sts_ca = \"{}\"\n", pki.ca.display());
    let daemon = start_daemon(
        &dir.join("mta"),
        &format!("127.0.0.1:{}", unbound.port),
        port,
        &extra,
    );

    let enforced = send(&daemon, dir.path(), "enforce@sts", "r@sts.test");
    let testing = send(&daemon, dir.path(), "testing@sts", "r@ststesting.test");
    let unavailable = send(&daemon, dir.path(), "unavailable@sts", "r@stsnone.test");
    for (id, rcpt) in [
        ("nomatch@sts", "r@stsbad.test"),
        ("plain@sts", "r@stsplain.test"),
        ("wrongcert@sts", "r@stswrongcert.test"),
    ] {
        send(&daemon, dir.path(), id, rcpt);
    }

    let (got, tls) = poll_until(ARRIVAL_TIMEOUT, || arrived(&tls_sink, "enforce@sts"))
        .unwrap_or_else(|| panic!("never arrived; paniclog:\n{}", paniclog(daemon.dir())));
    assert_eq!(got, enforced, "byte for byte");
    assert!(tls.starts_with("TLSv1."), "enforce means TLS, not {tls:?}");
    let (got, _) = poll_until(ARRIVAL_TIMEOUT, || arrived(&tls_sink, "testing@sts"))
        .expect("testing mode delivers");
    assert_eq!(got, testing);
    // Announced but not served (404): as if no policy (RFC 8461 section
    // 5), so the domain's own options (tls = no) deliver it.
    let (got, tls) = poll_until(ARRIVAL_TIMEOUT, || arrived(&tls_sink, "unavailable@sts"))
        .expect("an unavailable policy does not hold mail");
    assert_eq!(got, unavailable);
    assert_eq!(tls, "-", "no policy: the domain's tls = no");

    // Each deferred domain is tried again every second: wait for two T
    // lines of each, so the second try used the cached policy.
    let t_lines = |lines: &[String], domain: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("@T@") && l.contains(&format!("@{domain}@")))
            .cloned()
            .collect()
    };
    let lines = daemon.wait_for(
        "two T lines per deferred domain",
        ARRIVAL_TIMEOUT,
        |lines| {
            ["stsbad.test", "stsplain.test", "stswrongcert.test"]
                .iter()
                .all(|d| t_lines(lines, d).len() >= 2)
        },
    );
    let nomatch = &t_lines(&lines, "stsbad.test")[0];
    assert!(
        nomatch.contains("MTA-STS policy (enforce) matches no MX host"),
        "{nomatch}"
    );
    let plain = &t_lines(&lines, "stsplain.test")[0];
    assert!(plain.contains("does not offer STARTTLS"), "{plain}");
    assert!(plain.contains("MTA-STS policy of stsplain.test"), "{plain}");
    let wrong = &t_lines(&lines, "stswrongcert.test")[0];
    assert!(wrong.contains("4.7.5"), "{wrong}");
    assert!(wrong.contains("name mismatch"), "{wrong}");
    std::thread::sleep(NEVER_ARRIVES_WAIT);
    for (sink, id) in [
        (&tls_sink, "nomatch@sts"),
        (&plain_sink, "plain@sts"),
        (&tls_sink, "wrongcert@sts"),
    ] {
        assert!(arrived(sink, id).is_none(), "{id} was sent");
    }
    assert!(plain_sink.messages().is_empty(), "nothing in clear text");

    let requests = fs::read_to_string(policies.join("requests.log")).unwrap();
    for domain in ["sts", "stsbad", "stsplain", "stswrongcert"] {
        let fetches = requests
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "mta-sts.{domain}.test /.well-known/mta-sts.txt 200"
                ))
            })
            .count();
        assert_eq!(
            fetches, 1,
            "{domain}: fetched once, then cached:\n{requests}"
        );
    }
    let log = paniclog(daemon.dir());
    assert!(
        log.contains("MTA-STS policy (testing) would refuse MX host mx.ststesting.test"),
        "{log}"
    );
    assert!(
        log.contains("stsnone.test: MTA-STS policy announced but unavailable")
            && log.contains("HTTP status \"HTTP/1.0 404 Not Found\""),
        "{log}"
    );
}
