//! DKIM signing end to end: keys made by openssl at test time, their
//! public halves published in a test zone served by unbound on loopback,
//! messages relayed through the daemon (Momentum's `opendkim` stanza and
//! `opendkim_sign`) to a sink, and what arrived verified by Python's dkimpy
//! (an independent verifier) asking that unbound.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{
    free_port, python, send_file, Daemon, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT,
    CONFIG_FILE_NAME,
};

/// How long unbound may take to serve (loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a several-MiB message may take to arrive (debug build, Python sink).
const LARGE_ARRIVAL_TIMEOUT: Duration = Duration::from_secs(240);
/// The streamed message: well over one 256 KiB chunk.
const LARGE_BYTES: usize = 6 * 1024 * 1024;

/// dkimpy's verdict on each file named on the command line, one line
/// each: `<path> pass` or `<path> fail`. DNS questions go to the unbound
/// on 127.0.0.1:`argv[1]`.
const VERIFY_PY: &str = r#"
import sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
    except Exception:
        return None
    return b"".join(b"".join(r.strings) for r in answer)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        message = f.read()
    ok = dkim.verify(message, dnsfunc=dnsfunc)
    print(path, "pass" if ok else "fail")
"#;

/// Makes a key with openssl and returns the DKIM TXT record's `p=` value.
fn make_key(path: &Path, ed25519: bool) -> String {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut generate = Command::new("openssl");
    generate.arg("genpkey");
    if ed25519 {
        generate.args(["-algorithm", "ed25519"]);
    } else {
        generate.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    let out = generate.arg("-out").arg(path).output().expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(path)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    // RSA: the SubjectPublicKeyInfo; Ed25519 (RFC 8463): the bare 32 bytes.
    let der = if ed25519 {
        out.stdout[out.stdout.len() - 32..].to_vec()
    } else {
        out.stdout
    };
    base64(&der)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| acc << 8 | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A TXT record line for unbound, split into strings of at most 255 bytes.
fn txt_record(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect();
    format!("{name} 60 IN TXT {}", strings.join(" "))
}

struct Setup {
    daemon: Daemon,
    sink: Sink,
    _unbound: ecelerity_testkit::Unbound,
    unbound_port: u16,
    dir: TempDir,
}

/// Keys for rsa.test (selector rsa1, RSA 2048, base_domain for its
/// subdomains) and ed.test (selector ed1, Ed25519), published in unbound;
/// a daemon signing every message with them, relaying to a sink.
fn setup(label: &str) -> Setup {
    let dir = TempDir::new(label);
    let keys = dir.join("keys");
    let rsa = make_key(&keys.join("rsa.test/rsa1.key"), false);
    let ed = make_key(&keys.join("ed.test/ed1.key"), true);
    let records = vec![
        txt_record(
            "rsa1._domainkey.rsa.test.",
            &format!("v=DKIM1; k=rsa; p={rsa}"),
        ),
        txt_record(
            "ed1._domainkey.ed.test.",
            &format!("v=DKIM1; k=ed25519; p={ed}"),
        ),
    ];
    let unbound = ecelerity_testkit::Unbound::start(&dir.join("unbound"), &records, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.extra = format!(
        "opendkim_sign = true\n\
         domain \"nosign.test\" {{ opendkim_sign = false }}\n\
         opendkim \"opendkim1\" {{\n\
           header_canon = \"relaxed\"\n\
           body_canon = \"relaxed\"\n\
           headerlist = (\"from\", \"to\", \"subject\", \"date\", \"message-id\")\n\
           key = \"{}/%{{d}}/%{{s}}.key\"\n\
           dkim_domain \"rsa.test\" {{ selector = \"rsa1\" base_domain = \"rsa.test\" }}\n\
           dkim_domain \"ed.test\" {{ selector = \"ed1\" digest = \"ed25519-sha256\" header_canon = \"simple\" body_canon = \"simple\" }}\n\
         }}\n",
        keys.display()
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    Setup {
        daemon,
        sink,
        unbound_port: unbound.port(),
        _unbound: unbound,
        dir,
    }
}

impl Setup {
    fn send(&self, name: &str, message: &[u8]) {
        self.send_to(name, message, "r@example.com");
    }

    fn send_to(&self, name: &str, message: &[u8], rcpt: &str) {
        let path = self.dir.join(format!("{name}.eml"));
        fs::write(&path, message).unwrap();
        let code = send_file(self.daemon.smtp_port(), &path, "s@rsa.test", &[rcpt]);
        assert_eq!(code, "250", "{name}: {}", self.daemon.stderr_text());
        fs::remove_file(&path).unwrap();
    }

    /// dkimpy's verdict per file.
    fn verify(&self, files: &[PathBuf]) -> Vec<(PathBuf, bool)> {
        let script = self.dir.join("verify.py");
        fs::write(&script, VERIFY_PY).unwrap();
        let out = Command::new(python())
            .arg(&script)
            .arg(self.unbound_port.to_string())
            .args(files)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "verify.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .map(|l| {
                let (path, verdict) = l.rsplit_once(' ').unwrap();
                (PathBuf::from(path), verdict == "pass")
            })
            .collect()
    }
}

fn message(from: &str, id: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: r@example.com\r\nSubject: dkim {id}\r\n\
         Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <{id}@dkim.test>\r\n\r\n{body}"
    )
    .into_bytes()
}

fn find<'a>(
    arrived: &'a [ecelerity_tests::SinkMessage],
    id: &str,
) -> &'a ecelerity_tests::SinkMessage {
    let needle = format!("<{id}@dkim.test>");
    arrived
        .iter()
        .find(|m| {
            let bytes = m.bytes();
            bytes
                .windows(needle.len())
                .take(64 * 1024)
                .any(|w| w == needle.as_bytes())
        })
        .unwrap_or_else(|| panic!("{id} did not arrive"))
}

fn dkim_header(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    assert!(
        text.starts_with("DKIM-Signature: "),
        "signature on top: {text}"
    );
    text
}

/// Goal: what the daemon signs verifies with an independent verifier
/// against keys published in DNS, RSA 2048 and Ed25519, relaxed and simple
/// canonicalization (headers and body), a subdomain signed by its
/// base_domain; a body changed after signing fails; a From domain without
/// a signer arrives unsigned, and so does one to a domain whose
/// opendkim_sign is false; signing_stats counts the four that were to be
/// signed. Method: five messages sent with smtplib, stored by the sink; dkimpy (dnspython asking the test's
/// unbound) verifies each stored file and a copy with one body byte
/// changed.
#[test]
fn signed_messages_verify_with_dkimpy_and_a_changed_body_fails() {
    let s = setup("dkim-verify");
    let body = "Hello,\r\n\r\n  spaced  line  \r\n.leading dot\r\n\r\n\r\n";
    s.send("rsa", &message("a@rsa.test", "rsa", body));
    s.send("ed", &message("b@ed.test", "ed", body));
    s.send("sub", &message("c@news.rsa.test", "sub", body));
    s.send("none", &message("d@other.test", "none", body));
    s.send_to("off", &message("e@rsa.test", "off", body), "r@nosign.test");
    let arrived = s.sink.wait_for_messages(5, ARRIVAL_TIMEOUT);
    assert_eq!(arrived.len(), 5, "each message once");
    let mut files = Vec::new();
    for (id, d, a) in [
        ("rsa", "rsa.test", "rsa-sha256"),
        ("ed", "ed.test", "ed25519-sha256"),
        ("sub", "rsa.test", "rsa-sha256"),
    ] {
        let stored = find(&arrived, id);
        let bytes = stored.bytes();
        let header = dkim_header(&bytes);
        assert!(header.contains(&format!(" d={d};")), "{id}: {header}");
        assert!(header.contains(&format!("a={a};")), "{id}: {header}");
        let copy = s.dir.join(format!("{id}.arrived.eml"));
        fs::write(&copy, &bytes).unwrap();
        // One body byte changed after signing.
        let mut changed = bytes.clone();
        let at = changed.len() - 10;
        changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
        let tampered = s.dir.join(format!("{id}.tampered.eml"));
        fs::write(&tampered, &changed).unwrap();
        files.push((copy, true));
        files.push((tampered, false));
    }
    for (id, why) in [
        ("none", "no signer for other.test"),
        ("off", "opendkim_sign = false for nosign.test"),
    ] {
        let unsigned = find(&arrived, id).bytes();
        assert!(
            !String::from_utf8_lossy(&unsigned).contains("DKIM-Signature"),
            "{why}: sent unsigned"
        );
    }
    let paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let verdicts = s.verify(&paths);
    assert_eq!(verdicts.len(), files.len());
    for ((path, want), (checked, got)) in files.iter().zip(&verdicts) {
        assert_eq!(path, checked);
        assert_eq!(got, want, "{}: dkimpy says {got}", path.display());
    }
    let stats = s.daemon.console("signing_stats");
    let text = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(text.contains("TotalMessagesProcessed: 4"), "{text}");
    assert!(text.contains("TotalMessagesSigned: 3"), "{text}");
    assert!(text.contains("FailedSigningAttempts: 1"), "{text}");
}

/// Goal: a body streamed to the spool while it arrives (several MiB, over
/// many 256 KiB chunks) is hashed on the way and its signature verifies;
/// the rest of the message arrives as sent. Method: a 6 MiB message from
/// rsa.test through smtplib; dkimpy verifies what the sink stored, and
/// what follows the DKIM-Signature and Received headers equals what was
/// sent.
#[test]
fn a_large_streamed_body_is_signed_on_the_way_and_verifies() {
    let s = setup("dkim-large");
    let mut body = String::with_capacity(LARGE_BYTES + 100);
    let mut n = 0u64;
    while body.len() < LARGE_BYTES {
        n += 1;
        body.push_str(&format!(
            "line {n} {}\r\n",
            "abcdefghij ".repeat((n % 50) as usize)
        ));
        if n % 7 == 0 {
            body.push_str("\r\n");
        }
    }
    let sent = message("big@rsa.test", "large", &body);
    s.send("large", &sent);
    let arrived = s.sink.wait_for_messages(1, LARGE_ARRIVAL_TIMEOUT);
    let stored = find(&arrived, "large").bytes();
    let header = dkim_header(&stored);
    assert!(header.contains(" d=rsa.test;"), "{header}");
    // DKIM-Signature, then Received, then the message as sent.
    let received = stored
        .windows(11)
        .position(|w| w == b"\r\nReceived:")
        .expect("a Received header after the signature")
        + 2;
    let after =
        ecelerity_tests::strip_leading_received(&stored[received..]).expect("our Received header");
    assert!(
        after == &sent[..],
        "the message after our headers is as sent"
    );
    let copy = s.dir.join("large.arrived.eml");
    fs::write(&copy, &stored).unwrap();
    let verdicts = s.verify(&[copy]);
    assert!(verdicts[0].1, "dkimpy verifies the streamed message");
}

/// Goal: a key the `opendkim` stanza names but that cannot be used stops
/// the start as a configuration error, naming the file and the `key`
/// line, and nothing listens. Method: a config whose dkim_domain's key
/// file does not exist, then one whose Ed25519 key is declared rsa-sha256;
/// the daemon must exit 1 with `ecelerity.conf:LINE: opendkim:` on stderr.
#[test]
fn an_unusable_key_stops_the_start_with_its_line() {
    let dir = TempDir::new("dkim-badkey");
    let keys = dir.join("keys");
    make_key(&keys.join("ed.test/ed1.key"), true);
    for (dkim_domain, what) in [
        (
            "dkim_domain \"rsa.test\" { selector = \"missing\" }",
            "rsa.test/missing.key",
        ),
        ("dkim_domain \"ed.test\" { selector = \"ed1\" }", "Ed25519"),
    ] {
        let mut config = TestConfig::new(free_port());
        config.extra = format!(
            "opendkim_sign = true\nopendkim \"o\" {{\nkey = \"{}/%{{d}}/%{{s}}.key\"\n{dkim_domain}\n}}\n",
            keys.display()
        );
        let text = config.render();
        let key_line = text
            .lines()
            .position(|l| l.starts_with("key = "))
            .expect("the key line")
            + 1;
        let mut daemon = Daemon::spawn(dir.path(), &text);
        let status = daemon
            .wait_exit(Duration::from_secs(30))
            .expect("the daemon exits");
        let stderr = daemon.stderr_text();
        assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
        let location = format!("{CONFIG_FILE_NAME}:{key_line}: opendkim: ");
        assert!(
            stderr.contains(&location),
            "want `{location}` in:\n{stderr}"
        );
        assert!(stderr.contains(what), "want `{what}` in:\n{stderr}");
    }
}
