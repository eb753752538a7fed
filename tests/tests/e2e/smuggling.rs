//! SMTP smuggling and framing end to end, both directions: a table of
//! known vectors written by a raw client into a DATA, each followed by a
//! hidden second transaction; at the sink (aiosmtpd, which stores the
//! exact bytes it received) one transaction yields at most one message and
//! the hidden one never arrives on its own. Outbound, a body full of dots
//! and terminator look-alikes arrives byte-exact as one message, CRLF-clean.

use std::fs;
use std::thread;
use std::time::Duration;

use ecelerity_tests::{send_file, strip_leading_received, ARRIVAL_TIMEOUT};

use crate::common::Mta;
use crate::raw::Raw;

/// How long to let deliveries of anything smuggled show up.
const SETTLE: Duration = Duration::from_secs(4);

/// The hidden transaction appended after each vector.
fn smuggled(n: usize) -> String {
    format!(
        "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<smuggled{n}@victim.test>\r\nDATA\r\n\
         Subject: smuggled {n}\r\n\r\nsmuggled body\r\n.\r\n"
    )
}

/// (name, bytes written after the headers of the real message; the hidden
/// transaction and a proper "\r\n.\r\n" follow).
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let long_line = {
        let mut v = vec![b'x'; 5000];
        v.extend_from_slice(b"\r\n");
        v
    };
    vec![
        ("bare LF dot bare LF", b"body\n.\n".to_vec()),
        ("LF dot CRLF", b"body\n.\r\n".to_vec()),
        ("CR dot LF", b"body\r.\n".to_vec()),
        ("CRLF dot LF", b"body\r\n.\n".to_vec()),
        ("CRLF dot CR", b"body\r\n.\r".to_vec()),
        ("CR dot CRLF", b"body\r.\r\n".to_vec()),
        ("CR dot CR", b"body\r.\r".to_vec()),
        ("bare CR in a line", b"bo\rdy\r\n".to_vec()),
        ("bare LF in a line", b"bo\ndy\r\n".to_vec()),
        ("NUL in the body", b"bo\0dy\r\n".to_vec()),
        ("over-long line", long_line),
        ("stuffed dot line (legitimate)", b"body\r\n..\r\n".to_vec()),
    ]
}

/// Every CR is followed by LF and every LF preceded by CR.
fn crlf_clean(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

/// Goal: no framing trick turns one DATA into two messages. Method: for
/// each vector a fresh connection sends MAIL, RCPT to `vN@sink.test`, DATA,
/// then in one write the vector, a hidden transaction to
/// `smuggledN@victim.test`, a proper end of data and QUIT. Then: at most
/// one message for `vN`, none for `smuggledN`, every delivered message
/// CRLF-clean, and the daemon still serves.
#[test]
fn smuggling_vectors_never_yield_a_second_message() {
    let mta = Mta::start("smuggling");
    let port = mta.port();
    let mut outcomes = Vec::new();
    for (n, (name, vector)) in vectors().into_iter().enumerate() {
        let mut c = Raw::connect(port);
        assert_eq!(c.reply().unwrap().0, 220);
        assert_eq!(c.command("EHLO c.test").0, 250);
        assert_eq!(c.command("MAIL FROM:<s@c.test>").0, 250);
        assert_eq!(c.command(&format!("RCPT TO:<v{n}@sink.test>")).0, 250);
        assert_eq!(c.command("DATA").0, 354);
        let mut payload =
            format!("Subject: vector {n}\r\nMessage-ID: <v{n}@e2e.test>\r\n\r\n").into_bytes();
        payload.extend_from_slice(&vector);
        payload.extend_from_slice(smuggled(n).as_bytes());
        payload.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let _ = c.send(&payload);
        let replies = c.replies_until_close(Duration::from_secs(20));
        eprintln!("e2e: vector {n} ({name}): {replies:?}");
        outcomes.push((n, name, replies));
    }
    // Pipelined DATA after a refused RCPT: the body must not run as commands.
    let n = outcomes.len();
    let mut c = Raw::connect(port);
    assert_eq!(c.reply().unwrap().0, 220);
    assert_eq!(c.command("EHLO c.test").0, 250);
    let mut payload = b"MAIL FROM:<s@c.test>\r\nRCPT TO:<>\r\nDATA\r\n".to_vec();
    payload.extend_from_slice(smuggled(n).as_bytes());
    payload.extend_from_slice(b"QUIT\r\n");
    let _ = c.send(&payload);
    let replies = c.replies_until_close(Duration::from_secs(20));
    eprintln!("e2e: vector {n} (pipelined DATA after a refused RCPT): {replies:?}");
    assert!(
        replies.iter().all(|(code, _)| *code != 354),
        "the body after a refused DATA ran as commands: {replies:?}"
    );
    // BDAT (CHUNKING is offered): the chunk is data however much it looks
    // like commands, including a hidden transaction with bare LFs; the
    // size says where it ends, and the session reads every octet of it.
    let m = n + 1;
    let mut c = Raw::connect(port);
    assert_eq!(c.reply().unwrap().0, 220);
    assert_eq!(c.command("EHLO c.test").0, 250);
    let chunk = format!(
        "Subject: bdat {m}\r\n\r\nbody\n.\n{}",
        smuggled(m).replace("\r\n", "\n")
    );
    let mut payload = format!("MAIL FROM:<s@c.test>\r\nRCPT TO:<v{m}@sink.test>\r\n").into_bytes();
    payload.extend_from_slice(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes());
    payload.extend_from_slice(b"QUIT\r\n");
    let _ = c.send(&payload);
    let bdat = c.replies_until_close(Duration::from_secs(20));
    eprintln!("e2e: vector {m} (BDAT with a hidden transaction): {bdat:?}");
    let codes: Vec<u16> = bdat.iter().map(|(code, _)| *code).collect();
    assert_eq!(codes, [250, 250, 250, 221], "{bdat:?}");

    // The daemon still serves, and one clean message goes through.
    let mut c = Raw::connect(port);
    assert_eq!(c.reply().unwrap().0, 220);
    thread::sleep(SETTLE);
    let messages = mta.sink.messages();
    for message in &messages {
        let bytes = message.bytes();
        assert!(
            crlf_clean(&bytes),
            "not CRLF-clean at the sink: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        for rcpt in &message.rcpts {
            assert!(
                !rcpt.starts_with("smuggled"),
                "a smuggled transaction was delivered: {rcpt}"
            );
        }
    }
    for i in 0..=m {
        let count = messages
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r == &format!("v{i}@sink.test")))
            .count();
        assert!(count <= 1, "vector {i} yielded {count} messages");
    }
    // The legitimate stuffed-dot vector is delivered, with the hidden
    // transaction as plain body text.
    let legit = outcomes
        .iter()
        .find(|(_, name, _)| name.contains("legitimate"))
        .unwrap()
        .0;
    let delivered = messages
        .iter()
        .find(|m| m.rcpts.iter().any(|r| r == &format!("v{legit}@sink.test")))
        .expect("the stuffed-dot message arrived");
    let body = String::from_utf8_lossy(&delivered.bytes()).into_owned();
    assert!(
        body.contains("body\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n"),
        "{body}"
    );
}

/// Goal: whatever the spooled body holds, what goes out is one correctly
/// dot-stuffed CRLF message: aiosmtpd (a strict, exact-bytes sink) stores
/// exactly what was received, dots and terminator look-alikes included.
#[test]
fn outbound_dot_stuffing_delivers_tricky_bodies_byte_exact() {
    let mta = Mta::start("outbound-framing");
    let body = b"Subject: dots\r\nMessage-ID: <dots@e2e.test>\r\n\r\n\
        .\r\n..\r\n...leading dots\r\n. \r\n.\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n\
        RCPT TO:<smuggled@victim.test>\r\nDATA\r\n.x\r\nend\r\n";
    let file = mta.dir.join("dots.eml");
    fs::write(&file, body).unwrap();
    assert_eq!(
        send_file(mta.port(), &file, "s@c.test", &["r@sink.test"]),
        "250"
    );
    let stored = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(mta.sink.messages().len(), 1, "one message, not two");
    let bytes = stored[0].bytes();
    assert!(crlf_clean(&bytes));
    assert_eq!(
        strip_leading_received(&bytes).expect("Received: first"),
        &body[..]
    );
}
