use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::config::Config;

/// A fresh key made by openssl in a directory of its own.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("ecelerity-dkim-unit-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(dir.join("example.com")).unwrap();
        let rsa = dir.join("example.com/rsa.key");
        let ed = dir.join("example.com/ed.key");
        let ok = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ok = Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&ed)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        Keys { dir }
    }

    fn signers(&self, extra: &str) -> Result<Signers, ConfigError> {
        let text = format!(
            "opendkim \"o\" {{\n\
             key = \"{}/%{{d}}/%{{s}}.key\"\n\
             base_domain = \"example.com\"\n\
             dkim_domain \"example.com\" {{ selector = \"rsa\" }}\n\
             dkim_domain \"ed.example.com\" {{ selector = \"ed\" digest = \"ed25519-sha256\" }}\n\
             {extra}\n}}\n",
            self.dir.display()
        );
        let config = Config::parse(&text, Path::new("t.conf")).unwrap();
        Signers::load(config.opendkim().unwrap())
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MESSAGE: &[u8] = b"From: \"A. Sender\" <a@Mail.Example.COM>\r\n\
To: b@example.org\r\n\
Subject: hello\r\n\
Date: Thu, 03 Dec 2026 19:00:00 +0000\r\n\
\r\n\
line one\r\n\
\r\n\
line  three \r\n\r\n\r\n";

#[test]
fn chunked_and_whole_signatures_are_the_same_and_as_long_as_reserved() {
    let keys = Keys::new("chunks");
    let signers = keys.signers("").unwrap();
    for from in ["example.com", "ed.example.com"] {
        let signer = signers.pick(from).unwrap();
        let whole = signer.sign(MESSAGE, 1_796_000_000).unwrap();
        let at = body_offset(MESSAGE).unwrap();
        let mut signing = signer.start(&MESSAGE[..at - 2], 1_796_000_000);
        let reserved = signing.header_len(signer);
        for chunk in MESSAGE[at..].chunks(3) {
            signing.body(chunk);
        }
        let chunked = signing.finish_exact(signer, reserved).unwrap();
        assert_eq!(whole, chunked, "{from}");
        let text = String::from_utf8(whole).unwrap();
        assert!(text.starts_with("DKIM-Signature: v=1; a="), "{text}");
        assert!(text.ends_with(";\r\n"), "{text}");
        assert!(text.contains("d=example.com"), "{text}");
        assert!(text.contains("h=Date:Subject:To:From:"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
    }
}

#[test]
fn the_reserved_length_holds_for_any_body_and_time() {
    let keys = Keys::new("length");
    let signers = keys.signers("").unwrap();
    let mut rng = ecelerity_testkit::Rng::new(7);
    for round in 0..200u64 {
        let signer = signers
            .pick(if round % 2 == 0 {
                "example.com"
            } else {
                "ed.example.com"
            })
            .unwrap();
        let time = 1_000_000_000 + rng.below(8_000_000_000);
        let mut headers = b"From: a@example.com\r\nSubject: s".to_vec();
        headers.extend(std::iter::repeat_n(b'x', rng.below(300) as usize));
        headers.extend_from_slice(b"\r\n");
        let mut signing = signer.start(&headers, time);
        let reserved = signing.header_len(signer);
        let body: Vec<u8> = (0..rng.below(5000))
            .map(|_| b"ab \r\n"[rng.below(5) as usize])
            .collect();
        signing.body(&body);
        signing.finish_exact(signer, reserved).unwrap();
    }
}

#[test]
fn the_signer_is_picked_by_the_from_domain_and_base_domain() {
    let keys = Keys::new("pick");
    let signers = keys.signers("").unwrap();
    assert_eq!(signers.pick("example.com").unwrap().name, "example.com");
    assert_eq!(
        signers.pick("ed.example.com").unwrap().name,
        "ed.example.com"
    );
    // base_domain example.com: its subdomains sign with it.
    assert_eq!(
        signers.pick("news.example.com").unwrap().name,
        "example.com"
    );
    assert_eq!(
        signers.pick("x.ed.example.com").unwrap().name,
        "ed.example.com"
    );
    assert!(signers.pick("example.org").is_none());
    assert!(signers.pick("badexample.com").is_none());
}

#[test]
fn the_from_domain_is_read_from_the_header() {
    let cases: [(&[u8], Option<&str>); 6] = [
        (b"From: a@Example.COM\r\n", Some("example.com")),
        (
            b"Subject: x\r\nfrom: \"B <x@y>\" <b@c.org> (comment)\r\n",
            Some("c.org"),
        ),
        (b"From: <a@b.net.>\r\n", Some("b.net")),
        (b"From: a@b.org (A)\r\n", Some("b.org")),
        (b"From: undisclosed\r\n", None),
        (b"Subject: no from\r\n", None),
    ];
    for (headers, want) in cases {
        assert_eq!(
            from_domain(headers).as_deref(),
            want,
            "{}",
            String::from_utf8_lossy(headers)
        );
    }
}

#[test]
fn a_missing_or_wrong_key_is_a_config_error_on_the_key_line() {
    let keys = Keys::new("errors");
    let missing = keys
        .signers("dkim_domain \"x.org\" { selector = \"nope\" }")
        .err()
        .unwrap();
    assert_eq!(missing.line, 2, "{missing}");
    assert!(missing.to_string().contains("x.org/nope.key"), "{missing}");
    let text = format!(
        "opendkim \"o\" {{\ndkim_domain \"example.com\" {{ selector = \"ed\"\nkey = \"{}/%{{d}}/%{{s}}.key\" }}\n}}\n",
        keys.dir.display()
    );
    let config = Config::parse(&text, Path::new("t.conf")).unwrap();
    let wrong = Signers::load(config.opendkim().unwrap()).err().unwrap();
    assert_eq!(wrong.line, 3, "{wrong}");
    assert!(wrong.to_string().contains("Ed25519"), "{wrong}");
}

#[test]
fn a_message_without_signed_headers_is_not_signed() {
    let keys = Keys::new("noheaders");
    let signers = keys.signers("").unwrap();
    let signer = signers.pick("example.com").unwrap();
    assert_eq!(
        signer.sign(b"X-Other: 1\r\n\r\nbody\r\n", 1).unwrap_err(),
        SignError::NoHeaders
    );
}
