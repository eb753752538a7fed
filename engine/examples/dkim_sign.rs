//! CPU per DKIM-signed message: signs the same message N times with an
//! RSA 2048 key and with an Ed25519 key (made by openssl in a temporary
//! directory), the way reception does (header block kept, body hashed,
//! signature made), and prints microseconds of this thread's CPU time per
//! message for each (CPU, not wall time: the machine may be shared).
//!
//! `cargo run --release -p ecelerity-engine --example dkim_sign -- [N] [BODY_BYTES]`
//! (default 2000 messages of 1 KiB). Numbers: docs/benchmarks.md.

use std::path::Path;
use std::process::Command;

/// This thread's CPU time in microseconds.
fn cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

use ecelerity_engine::config::Config;
use ecelerity_engine::dkim::Signers;

fn openssl(args: &[&str], out: &Path) {
    let ok = Command::new("openssl")
        .args(args)
        .arg("-out")
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl {args:?}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u32 = args.next().map_or(2000, |n| n.parse().expect("N"));
    let body_bytes: usize = args.next().map_or(1024, |n| n.parse().expect("BODY_BYTES"));
    let dir = std::env::temp_dir().join(format!("ecelerity-dkim-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rsa.test")).unwrap();
    std::fs::create_dir_all(dir.join("ed.test")).unwrap();
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        &dir.join("rsa.test/s.key"),
    );
    openssl(
        &["genpkey", "-algorithm", "ed25519"],
        &dir.join("ed.test/s.key"),
    );
    let text = format!(
        "opendkim \"bench\" {{\n key = \"{}/%{{d}}/%{{s}}.key\"\n selector = \"s\"\n\
         dkim_domain \"rsa.test\" {{ }}\n\
         dkim_domain \"ed.test\" {{ digest = \"ed25519-sha256\" }}\n}}\n",
        dir.display()
    );
    let config = Config::parse(&text, Path::new("bench.conf")).expect("config");
    let signers = Signers::load(config.opendkim().unwrap()).expect("keys");
    let mut body = String::new();
    while body.len() < body_bytes {
        body.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    for (name, domain) in [("RSA 2048", "rsa.test"), ("Ed25519", "ed.test")] {
        let message = format!(
            "From: a@{domain}\r\nTo: b@example.com\r\nSubject: bench\r\n\
             Date: Thu, 03 Dec 2026 19:00:00 +0000\r\nMessage-ID: <1@{domain}>\r\n\r\n{body}"
        );
        let signer = signers.pick(domain).unwrap();
        let start = cpu_us();
        let mut bytes = 0;
        for i in 0..count {
            bytes += signer
                .sign(message.as_bytes(), 1_796_000_000 + i as u64)
                .unwrap()
                .len();
        }
        let elapsed_us = cpu_us() - start;
        println!(
            "{name:>8}: {count} messages of {} bytes, {:.1} us per message ({} signature bytes each)",
            message.len(),
            elapsed_us / count as f64,
            bytes / count as usize
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
