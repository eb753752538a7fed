//! Deterministic fuzz loops on stable Rust for the four parsers that read
//! bytes from outside: the SMTP server session (command parser and state
//! machine), the ecelerity.conf parser, the spool record decoders, and the
//! outbound reply parser; plus the outbound DATA encoder checked against
//! our own strict receiver.
//!
//! Each target runs `ECELERITY_FUZZ_CASES` cases (default
//! `FUZZ_CASES_DEFAULT`, small enough for CI) from a fixed seed, so a
//! failure names the case that repeats it. Long run:
//! `ECELERITY_FUZZ_CASES=1000000 cargo test --release -p ecelerity-engine --test fuzz`.
//! `ECELERITY_FUZZ_SEED` shifts every target to another sequence.
//!
//! Owns: nothing but these loops. May call: public parsing APIs of the
//! engine and the spool, `ecelerity_testkit::Rng`. Never: sockets, files other than none, clocks.

use std::path::Path;

use ecelerity_engine::config::Config;
use ecelerity_engine::queue::record::SpooledEnvelope;
use ecelerity_engine::smtp::capabilities::Capabilities;
use ecelerity_engine::smtp::client::encode_body;
use ecelerity_engine::smtp::reply::ReplyParser;
use ecelerity_engine::smtp::server::{
    Event, ServerLimits, ServerParams, ServerSession, SpoolOutcome,
};
use ecelerity_policy::{Answer, ListenerRelayHosts, Policy, Rejection, RelayControl, Verdict};
use ecelerity_spool::record::{decode, encode, Record};
use ecelerity_testkit::Rng;

/// Cases per target when `ECELERITY_FUZZ_CASES` is unset.
const FUZZ_CASES_DEFAULT: u64 = 2_000;
/// Longest random input of one case, in bytes.
const INPUT_BYTES_MAX: usize = 4096;

fn cases() -> u64 {
    std::env::var("ECELERITY_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FUZZ_CASES_DEFAULT)
}

fn seed() -> u64 {
    std::env::var("ECELERITY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The generator of one case: deterministic per (seed, target, case).
fn rng_for_case(target: u64, case: u64) -> Rng {
    Rng::new(
        (seed() ^ target.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(case.wrapping_mul(0xD1B5_4A32_D192_ED03)),
    )
}

/// Fragments joined at random, then a few bytes overwritten with ones
/// parsers care about.
fn splice(rng: &mut Rng, fragments: &[&[u8]], pieces: usize, specials: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.index(pieces + 1) {
        out.extend_from_slice(fragments[rng.index(fragments.len())]);
        if out.len() > INPUT_BYTES_MAX {
            break;
        }
    }
    for _ in 0..rng.index(5) {
        if out.is_empty() {
            break;
        }
        let at = rng.index(out.len());
        out[at] = if rng.index(4) == 0 {
            rng.byte()
        } else {
            specials[rng.index(specials.len())]
        };
    }
    out
}

fn report(target: &str, cases: u64) {
    eprintln!("fuzz {target}: {cases} cases, seed {}", seed());
}

const LISTENER: &str = "127.0.0.1:25";

fn server(limits: ServerLimits) -> ServerSession {
    let params = ServerParams {
        hostname: "mx.test".into(),
        peer_ip: "127.0.0.1".parse().unwrap(),
        listener: LISTENER.parse().unwrap(),
        limits,
        capabilities: Capabilities::default(),
        version: "fuzz",
        tls_required: false,
        auth_plaintext: false,
    };
    let mut session = ServerSession::new(params);
    session.start();
    session
}

fn relay_control() -> RelayControl {
    RelayControl {
        listeners: vec![ListenerRelayHosts {
            listener: LISTENER.parse().unwrap(),
            relay_hosts: vec!["127.0.0.0/8".parse().unwrap()],
        }],
        local_domains: vec!["local.test".into()],
    }
}

/// The verdict of `policy` on what the session awaits; relay control
/// answers at once.
fn verdict(policy: &RelayControl, session: &mut ServerSession) -> Verdict {
    let (validation, vctx) = session.validation();
    let verdict = match policy.validate(validation, vctx) {
        Answer::Now(verdict) => verdict,
        Answer::Later(_) => unreachable!("relay control answers at once"),
    };
    verdict
}

/// One well-formed transaction from greeting to end of data.
const WHOLE_TRANSACTION: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\n\
    RCPT TO:<b@x.test>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n";

const SMTP_FRAGMENTS: &[&[u8]] = &[
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"MAIL FROM:<a@c.test>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"MAIL FROM:<a@c.test> SIZE=99999999999999999999\r\n",
    b"RCPT TO:<b@x.test>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<@r.test:b@x.test>\r\n",
    b"RCPT TO:<b%c@x.test>\r\n",
    b"RCPT TO:<\"b@c\"@x.test>\r\n",
    b"RCPT TO:<b@[127.0.0.1]>\r\n",
    b"DATA\r\n",
    b"BDAT 10 LAST\r\n",
    b"text line\r\n",
    b"..stuffed\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"\0",
    b"\r",
    b"\n",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    b"\xff\xfe",
];

/// Checks every message body the session hands over: CRLF-clean, no NUL.
fn check_body(case: u64, body: &[u8]) {
    for (i, &b) in body.iter().enumerate() {
        assert_ne!(b, 0, "case {case}: NUL in a spooled body");
        if b == b'\n' {
            assert!(i > 0 && body[i - 1] == b'\r', "case {case}: bare LF");
        }
        if b == b'\r' {
            assert_eq!(body.get(i + 1), Some(&b'\n'), "case {case}: bare CR");
        }
    }
}

/// Goal: no input in any split panics the server session; held input
/// stays bounded; replies are well-formed lines; bodies are CRLF-clean.
/// Policy verdicts come at random moments (pipelined input is held
/// meanwhile), and now and then carry a malformed reply, which must give
/// an error back and never a panic.
#[test]
fn fuzz_smtp_server_session() {
    let n = cases();
    let limits = ServerLimits {
        command_line_bytes_max: 512,
        text_line_bytes_max: 200,
        message_bytes_max: 4000,
        recipients_max: 3,
        errors_max: 30,
        receptions_per_connection_max: 5,
        input_buffer_bytes_max: 512,
    };
    let bound = limits.input_buffer_bytes_max + limits.command_line_bytes_max;
    let specials = [b'\r', b'\n', b'.', 0, b' ', b':', b'<', b'>', 0xff];
    let policy = relay_control();
    let mut messages = 0u64;
    for case in 0..n {
        let mut rng = rng_for_case(1, case);
        let mut session = server(limits.clone());
        // A quarter of the cases open with a whole transaction, so that
        // verdicts and spool outcomes are exercised past end of data too.
        let mut input = if rng.index(4) == 0 {
            WHOLE_TRANSACTION.to_vec()
        } else {
            Vec::new()
        };
        input.extend(splice(&mut rng, SMTP_FRAGMENTS, 80, &specials));
        let (mut at, mut out) = (0, Vec::new());
        while !session.is_closed() {
            while let Some(event) = session.next_event() {
                if let Event::Message(envelope) = event {
                    messages += 1;
                    check_body(case, &envelope.body);
                }
            }
            if session.awaiting_policy().is_some() && (at >= input.len() || rng.index(3) != 0) {
                let verdict = match rng.index(16) {
                    0 => Verdict::Reject(Rejection::new(rng.index(700) as u16, "5.7.1", "x")),
                    1 => Verdict::Reject(Rejection::new(550, "5.7.1\r\n250 ok", "x")),
                    2 => Verdict::Disconnect(Rejection::new(421, "4.3.2", "bye\r\n")),
                    _ => verdict(&policy, &mut session),
                };
                let check = match &verdict {
                    Verdict::Continue => Ok(()),
                    Verdict::Reject(r) | Verdict::Disconnect(r) => r.check(),
                };
                assert_eq!(
                    session.validated(verdict).is_err(),
                    check.is_err(),
                    "case {case}"
                );
            } else if session.awaiting_spool() {
                let outcome = match rng.index(4) {
                    0 => SpoolOutcome::StorageFull,
                    1 => SpoolOutcome::TemporaryFailure,
                    _ => SpoolOutcome::Queued {
                        queue_id: "Q1".into(),
                    },
                };
                session.spooled(outcome);
            } else if at < input.len() && session.wants_input() {
                let most = session.input_capacity().min(input.len() - at);
                let take = 1 + rng.index(most);
                session.input(&input[at..at + take]);
                at += take;
            } else if rng.index(2) == 0 {
                session.idle_timeout();
            } else {
                break;
            }
            assert!(session.buffered_bytes() <= bound, "case {case}");
            session.take_output(&mut out);
        }
        session.take_output(&mut out);
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.ends_with(b"\r"), "case {case}: {line:?}");
            assert!(line.len() >= 5, "case {case}: {line:?}");
            assert!(line[..3].iter().all(u8::is_ascii_digit), "case {case}");
            assert!(line[3] == b' ' || line[3] == b'-', "case {case}");
        }
    }
    report("smtp server session", n);
    assert!(n < 200 || messages > 0, "no case reached end of data");
}

/// Goal: whatever body bytes are spooled (bare CR, bare LF, lone dots,
/// "\r\n.\r\n" inside, NUL-free or not), the outbound encoder puts exactly
/// one message on the wire, and our strict receiver reads back the body
/// with only its line endings normalised.
#[test]
fn fuzz_outbound_data_encoding_round_trips_through_a_strict_receiver() {
    let n = cases();
    let fragments: &[&[u8]] = &[
        b"a",
        b".",
        b"..",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r",
        b"MAIL FROM:<evil@x>\r\n",
        b"text ",
        b".\r\n",
    ];
    for case in 0..n {
        let mut rng = rng_for_case(2, case);
        let mut body = splice(&mut rng, fragments, 40, b".\r\n");
        body.retain(|&b| b != 0);
        let mut wire =
            b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n".to_vec();
        encode_body(&body, &mut wire);
        wire.extend_from_slice(b"QUIT\r\n");
        let mut session = server(ServerLimits {
            text_line_bytes_max: 1 << 20,
            ..ServerLimits::default()
        });
        let policy = relay_control();
        let mut received = Vec::new();
        let mut at = 0;
        while !session.is_closed() {
            while let Some(event) = session.next_event() {
                if let Event::Message(envelope) = event {
                    received.push(envelope.body);
                }
            }
            if session.awaiting_policy().is_some() {
                let verdict = verdict(&policy, &mut session);
                session
                    .validated(verdict)
                    .expect("relay control replies are well formed");
            } else if session.awaiting_spool() {
                session.spooled(SpoolOutcome::Queued {
                    queue_id: "Q1".into(),
                });
            } else if at < wire.len() {
                let take = (1 + rng.index(64))
                    .min(wire.len() - at)
                    .min(session.input_capacity());
                session.input(&wire[at..at + take]);
                at += take;
            } else {
                break;
            }
        }
        let mut replies = Vec::new();
        session.take_output(&mut replies);
        let text = String::from_utf8_lossy(&replies);
        assert_eq!(received.len(), 1, "case {case}: {body:?} gave {text}");
        assert!(!text.contains("bare <"), "case {case}: {text}");
        assert_eq!(received[0], normalised(&body), "case {case}: {body:?}");
    }
    report("outbound DATA encoding", n);
}

/// A body with every CR, LF and CRLF as CRLF, and a final CRLF when it
/// does not end in one (what the encoder promises).
fn normalised(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Goal: no byte sequence in any split panics the reply parser, reply
/// text carries no control character but HTAB (RFC 5321 textstring), and its
/// buffer stays bounded while the caller drains replies.
#[test]
fn fuzz_outbound_reply_parser() {
    let n = cases();
    let fragments: &[&[u8]] = &[
        b"250 ok\r\n",
        b"250-first\r\n",
        b"250 2.0.0 done\r\n",
        b"354 go\r\n",
        b"421 4.4.2 bye\r\n",
        b"550 5.1.1 <a@b> no\r\n",
        b"2",
        b"5",
        b"0",
        b"-",
        b" ",
        b"\r\n",
        b"\n",
        b"999 x\r\n",
        b"25",
        b"0 ",
        b"4.7.0 ",
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    let mut replies = 0u64;
    for case in 0..n {
        let mut rng = rng_for_case(3, case);
        let input = splice(&mut rng, fragments, 200, &[b'\r', b'\n', b'-', b' ', 0]);
        let mut parser = ReplyParser::new();
        let mut at = 0;
        while at < input.len() {
            let take = (1 + rng.index(100)).min(input.len() - at);
            parser.feed(&input[at..at + take]);
            at += take;
            while let Ok(Some(reply)) = parser.next_reply() {
                replies += 1;
                assert!((200..=599).contains(&reply.code), "case {case}");
                assert!(!reply.lines.is_empty(), "case {case}");
                assert!(
                    reply
                        .lines
                        .iter()
                        .all(|l| !l.bytes().any(|b| b.is_ascii_control() && b != b'\t')),
                    "case {case}: {:?}",
                    reply.lines
                );
            }
            assert!(
                parser.buffered_bytes() <= INPUT_BYTES_MAX * 2,
                "case {case}"
            );
        }
    }
    report("outbound reply parser", n);
    assert!(n < 200 || replies > 0);
}

/// Goal: no file text makes the config parser panic; what it accepts
/// dumps to text that parses to an equal config.
#[test]
fn fuzz_config_parser() {
    let n = cases();
    let fragments: &[&[u8]] = &[
        b"spoolbase = \"s\"\n",
        b"shards = 2\n",
        b"relay_hosts = ( \"10.0.0.0/8\" ::1 )\n",
        b"ESMTP_Listener {",
        b" Listen \"127.0.0.1:25\" {",
        b"}",
        b"}\n",
        b"{",
        b"(",
        b")",
        b"idle_time = 30\n",
        b"max_message_size = 0\n",
        b"inbound_data_timeout = 9\n",
        b"max_inbound_connections_per_ip = 3\n",
        b"domain \"x.test\" { max_retries = auto }\n",
        b"binding_group \"g\" { binding \"b\" { bind_address = 192.0.2.1 } }\n",
        b"gateway = \"[::1]:25\"\n",
        b"# comment\n",
        b"/* c */",
        b"\"",
        b"'",
        b"=",
        b"\\",
        b"include \"/nonexistent\"\n",
        b"Control_Listener { Listen \"c.sock\" { File_Mode = 0600 } }\n",
        b"99999999999999999999999",
        b"-1",
        b"\n",
    ];
    let mut accepted = 0u64;
    for case in 0..n {
        let mut rng = rng_for_case(4, case);
        let input = splice(
            &mut rng,
            fragments,
            30,
            &[b'{', b'}', b'"', b'\n', b'=', b'#', 0xc3],
        );
        let text = String::from_utf8_lossy(&input);
        if let Ok(config) = Config::parse(&text, Path::new("fuzz.conf")) {
            accepted += 1;
            let dumped = config.dump();
            let again = Config::parse(&dumped, Path::new("fuzz.conf"))
                .unwrap_or_else(|e| panic!("case {case}: dump does not parse: {e}\n{dumped}"));
            assert_eq!(again.dump(), dumped, "case {case}");
        }
    }
    report("config parser", n);
    assert!(n < 200 || accepted > 0, "no case parsed");
}

/// Goal: no bytes make the spool record decoder or the envelope decoder
/// panic; a damaged valid record is refused or decodes within its buffer.
#[test]
fn fuzz_spool_record_decoders() {
    let n = cases();
    let mut decoded = 0u64;
    for case in 0..n {
        let mut rng = rng_for_case(5, case);
        let envelope = SpooledEnvelope {
            received_unix_ms: rng.next_u64(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            connection_id: rng.next_u64(),
            body_8bitmime: rng.index(2) == 0,
            binding: ecelerity_engine::config::DEFAULT_BINDING.into(),
            mail_from: "a@c.test".into(),
            rcpts: (0..rng.index(4)).map(|i| format!("r{i}@x.test")).collect(),
            extensions: Vec::new(),
        };
        let mut env_bytes = Vec::new();
        envelope.encode(&mut env_bytes);
        let body: Vec<u8> = (0..rng.index(300)).map(|_| rng.byte()).collect();
        let record = match rng.index(3) {
            0 => Record::Message {
                id: rng.next_u64(),
                envelope: &env_bytes,
                body: &body,
            },
            1 => Record::Note {
                id: rng.next_u64(),
                data: &body,
            },
            _ => Record::Complete { id: rng.next_u64() },
        };
        let mut buf = Vec::new();
        encode(&record, &mut buf);
        let (clean, used) = decode(&buf).expect("a fresh record decodes");
        assert_eq!((clean, used), (record, buf.len()), "case {case}");
        // Damage: flips, truncation, garbage tail, or pure garbage.
        match rng.index(4) {
            0 => {
                for _ in 0..1 + rng.index(4) {
                    let at = rng.index(buf.len());
                    buf[at] ^= 1 << rng.index(8);
                }
            }
            1 => buf.truncate(rng.index(buf.len())),
            2 => buf.extend((0..rng.index(64)).map(|_| rng.byte())),
            _ => {
                let len = rng.index(INPUT_BYTES_MAX);
                buf = (0..len).map(|_| rng.byte()).collect();
            }
        }
        if let Ok((_, used)) = decode(&buf) {
            decoded += 1;
            assert!(used <= buf.len(), "case {case}");
        }
        let mut garbage = env_bytes.clone();
        if !garbage.is_empty() {
            let at = rng.index(garbage.len());
            garbage[at] = rng.byte();
            garbage.truncate(rng.index(garbage.len() + 1));
        }
        let _ = SpooledEnvelope::decode(&garbage);
        assert_eq!(
            SpooledEnvelope::decode(&env_bytes).as_ref().ok(),
            Some(&envelope),
            "case {case}"
        );
    }
    report("spool record decoders", n);
    assert!(n < 200 || decoded > 0);
}
