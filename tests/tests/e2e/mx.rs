//! MX routing end to end: a real DNS server (unbound, authoritative for a
//! local `test.` zone on a loopback port) tells the daemon where each
//! domain's mail goes; aiosmtpd sinks on 127.0.0.2 and 127.0.0.3 play the
//! MX hosts on `remote_smtp_port`. No gateway is set.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ecelerity_tests::{
    free_port, parse_mainlog, poll_until, py_dir, python, send_file, strip_leading_received,
    ChildGuard, Daemon, MainlogLine, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT, READY_TIMEOUT,
};

/// unbound (`ecelerity_testkit::Unbound`) serving `local-data` records on
/// 127.0.0.1:port, panicking if it does not come up. Names under `test.`
/// that are not listed are NXDOMAIN (with an SOA of minimum 5 s); names
/// outside `test.` are REFUSED.
pub(crate) struct Unbound {
    pub(crate) port: u16,
    _server: ecelerity_testkit::Unbound,
}

impl Unbound {
    pub(crate) fn start(dir: &Path, records: &[String]) -> Unbound {
        let server = ecelerity_testkit::Unbound::start(dir, records, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        Unbound {
            port: server.port(),
            _server: server,
        }
    }
}

/// A daemon with no gateway, asking `nameservers`, delivering MX hosts on
/// `smtp_port`.
pub(crate) fn start_daemon(dir: &Path, nameservers: &str, smtp_port: u16) -> Daemon {
    start_daemon_with(dir, nameservers, smtp_port, "")
}

/// As `start_daemon`, with `extra` global options.
fn start_daemon_with(dir: &Path, nameservers: &str, smtp_port: u16, extra: &str) -> Daemon {
    fs::create_dir_all(dir).unwrap();
    let mut config = TestConfig::new(smtp_port);
    // These tests are about routing: a failure's DSN (to sender.test, which
    // the test zones do not know) would add lines of its own.
    config.extra = format!(
        "nameservers = ( \"{nameservers}\" )\nremote_smtp_port = {smtp_port}\n\
         generate_bounces = false\n{extra}"
    );
    let text = config.render();
    let gateway = format!("gateway = \"127.0.0.1:{smtp_port}\"\n");
    assert!(text.contains(&gateway), "the test config sets a gateway");
    Daemon::start(dir, &text.replace(&gateway, ""))
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: s@sender.test\r\nTo: rcpt@x.test\r\nSubject: mx\r\nMessage-ID: <{id}>\r\n\r\n\
         .leading dot\r\nbody of {id}\r\n"
    )
    .into_bytes()
}

/// Sends one message to `rcpt`; asserts it was taken (250).
fn send(daemon: &Daemon, dir: &Path, id: &str, rcpt: &str) -> Vec<u8> {
    let bytes = message(id);
    let file = dir.join(format!("{id}.eml"));
    fs::write(&file, &bytes).unwrap();
    let code = send_file(daemon.smtp_port(), &file, "s@sender.test", &[rcpt]);
    assert_eq!(code, "250", "{rcpt}");
    bytes
}

/// The mainlog lines of `kind` for `domain`.
fn lines_for(daemon: &Daemon, kind: &str, domain: &str) -> Vec<MainlogLine> {
    parse_mainlog(&daemon.mainlog_lines())
        .into_iter()
        .filter(|l| l.kind() == kind && l.field(5) == domain)
        .collect()
}

/// Message-IDs that arrived at `sink`.
fn arrived_ids(sink: &Sink) -> Vec<String> {
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect();
    ids.sort();
    ids
}

/// Goal: mail goes to a domain's MX hosts by preference, falls over to the
/// next one when the first is dead, and to the domain's A record without
/// MX, arriving byte for byte. Method: unbound serves one.test (one MX),
/// two.test (MX 10 on 127.0.0.2, MX 20 on 127.0.0.3), dead.test (MX 10 on
/// 127.0.0.4 where nothing listens, MX 20 on 127.0.0.3) and plain.test (an
/// A record only); a message to each must reach the right sink only.
#[test]
fn mail_reaches_mx_hosts_by_preference_and_falls_over() {
    let dir = TempDir::new("mx-routing");
    let smtp_port = free_port();
    let records = [
        "one.test. 60 IN MX 10 mx.one.test.",
        "mx.one.test. 60 IN A 127.0.0.2",
        "two.test. 60 IN MX 20 b.two.test.",
        "two.test. 60 IN MX 10 a.two.test.",
        "a.two.test. 60 IN A 127.0.0.2",
        "b.two.test. 60 IN A 127.0.0.3",
        "dead.test. 60 IN MX 10 down.dead.test.",
        "dead.test. 60 IN MX 20 up.dead.test.",
        "down.dead.test. 60 IN A 127.0.0.4",
        "up.dead.test. 60 IN A 127.0.0.3",
        "plain.test. 60 IN A 127.0.0.2",
    ]
    .map(String::from);
    let unbound = Unbound::start(dir.path(), &records);
    let sink2 = Sink::start_on(&dir.join("sink2"), "127.0.0.2", smtp_port, &[]);
    let sink3 = Sink::start_on(&dir.join("sink3"), "127.0.0.3", smtp_port, &[]);
    let daemon = start_daemon(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
    );

    let sent_one = send(&daemon, dir.path(), "one@mx.test", "a@one.test");
    send(&daemon, dir.path(), "two@mx.test", "a@two.test");
    send(&daemon, dir.path(), "dead@mx.test", "a@dead.test");
    send(&daemon, dir.path(), "plain@mx.test", "a@plain.test");

    sink2.wait_for_messages(3, ARRIVAL_TIMEOUT);
    sink3.wait_for_messages(1, ARRIVAL_TIMEOUT);
    // Give a stray second copy a moment to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        arrived_ids(&sink2),
        ["<one@mx.test>", "<plain@mx.test>", "<two@mx.test>"]
    );
    assert_eq!(arrived_ids(&sink3), ["<dead@mx.test>"]);

    let one = sink2
        .messages()
        .into_iter()
        .find(|m| m.header("Message-ID").as_deref() == Some("<one@mx.test>"))
        .unwrap();
    assert_eq!(one.rcpts, ["a@one.test"]);
    let bytes = one.bytes();
    assert_eq!(
        strip_leading_received(&bytes).expect("Received: first"),
        &sent_one[..],
        "arrives byte for byte behind Received:"
    );
    daemon.wait_for("four D lines", ARRIVAL_TIMEOUT, |_| {
        parse_mainlog(&daemon.mainlog_lines())
            .iter()
            .filter(|l| l.kind() == "D")
            .count()
            == 4
    });
    for domain in ["one.test", "two.test", "dead.test", "plain.test"] {
        let delivered = lines_for(&daemon, "D", domain);
        assert_eq!(delivered.len(), 1, "{domain}: one D line");
    }
    assert!(
        lines_for(&daemon, "T", "dead.test").is_empty(),
        "fall-over is not a retry"
    );
    assert!(lines_for(&daemon, "P", "dead.test").is_empty());
}

/// Goal: MX hosts of equal preference share the mail. Method: eq.test has
/// two MX 10 hosts (127.0.0.2 and 127.0.0.3); with `idle_timeout = 0`
/// every message takes a new connection, and connections take turns
/// starting with each host: four messages reach both sinks, none twice.
#[test]
fn equal_preferences_both_receive() {
    let dir = TempDir::new("mx-equal");
    let smtp_port = free_port();
    let records = [
        "eq.test. 60 IN MX 10 a.eq.test.",
        "eq.test. 60 IN MX 10 b.eq.test.",
        "a.eq.test. 60 IN A 127.0.0.2",
        "b.eq.test. 60 IN A 127.0.0.3",
    ]
    .map(String::from);
    let unbound = Unbound::start(dir.path(), &records);
    let sink2 = Sink::start_on(&dir.join("sink2"), "127.0.0.2", smtp_port, &[]);
    let sink3 = Sink::start_on(&dir.join("sink3"), "127.0.0.3", smtp_port, &[]);
    let daemon = start_daemon_with(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
        "idle_timeout = 0\n",
    );
    for n in 0..4 {
        send(&daemon, dir.path(), &format!("eq{n}@mx.test"), "a@eq.test");
        daemon.wait_for_kind("D", n + 1, ARRIVAL_TIMEOUT);
    }
    let (two, three) = (arrived_ids(&sink2), arrived_ids(&sink3));
    assert_eq!(two.len() + three.len(), 4, "{two:?} {three:?}");
    assert!(!two.is_empty() && !three.is_empty(), "{two:?} {three:?}");
}

/// Goal: a host that refuses us at its greeting (421) is skipped for the
/// next MX in the same attempt. Method: busy.test has MX 10 on 127.0.0.2,
/// where `tests/py/odd_server.py` greets with `421 4.3.2 busy`, and MX 20
/// on 127.0.0.3, a sink; the message arrives at the sink, the odd server
/// saw a connection, and there is no T line.
#[test]
fn a_refused_greeting_moves_on_to_the_next_mx() {
    let dir = TempDir::new("mx-greeting");
    let smtp_port = free_port();
    let records = [
        "busy.test. 60 IN MX 10 a.busy.test.",
        "busy.test. 60 IN MX 20 b.busy.test.",
        "a.busy.test. 60 IN A 127.0.0.2",
        "b.busy.test. 60 IN A 127.0.0.3",
    ]
    .map(String::from);
    let unbound = Unbound::start(dir.path(), &records);
    let odd_dir = dir.join("odd");
    fs::create_dir_all(&odd_dir).unwrap();
    let odd = Command::new(python())
        .arg(py_dir().join("odd_server.py"))
        .args(["--host", "127.0.0.2", "--port", &smtp_port.to_string()])
        .arg("--dir")
        .arg(&odd_dir)
        .args(["--greeting", "421 4.3.2 busy"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn odd_server.py");
    let _odd = ChildGuard::new("odd_server.py", odd);
    let ready = poll_until(READY_TIMEOUT, || {
        odd_dir.join("ready").exists().then_some(())
    });
    assert!(ready.is_some(), "odd_server.py not ready");
    let sink3 = Sink::start_on(&dir.join("sink3"), "127.0.0.3", smtp_port, &[]);
    let daemon = start_daemon(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
    );
    send(&daemon, dir.path(), "busy@mx.test", "a@busy.test");
    sink3.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(arrived_ids(&sink3), ["<busy@mx.test>"]);
    let counts = fs::read_to_string(odd_dir.join("counts.txt")).unwrap_or_default();
    assert!(
        counts
            .lines()
            .any(|l| l.starts_with("connections ") && l != "connections 0"),
        "the first MX was tried: {counts:?}"
    );
    // The mainlog is flushed once per tick: wait for the D line.
    daemon.wait_for("the D line", ARRIVAL_TIMEOUT, |_| {
        lines_for(&daemon, "D", "busy.test").len() == 1
    });
    assert!(lines_for(&daemon, "T", "busy.test").is_empty());
}

/// Goal: an answer too big for a datagram is fetched again over TCP.
/// Method: big.test has 40 MX records with long names (about 3 KB,
/// beyond the 1232-byte EDNS payload we advertise, so unbound sets TC)
/// and the best one on 127.0.0.2; the message arrives there only if the
/// TCP retry worked.
#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let dir = TempDir::new("mx-tcp");
    let smtp_port = free_port();
    let mut records = vec![
        "big.test. 60 IN MX 10 mx.big.test.".to_string(),
        "mx.big.test. 60 IN A 127.0.0.2".to_string(),
    ];
    for n in 0..40 {
        records.push(format!(
            "big.test. 60 IN MX 20 spare-{n:02}-{}.big.test.",
            "x".repeat(50)
        ));
    }
    let unbound = Unbound::start(dir.path(), &records);
    let sink2 = Sink::start_on(&dir.join("sink2"), "127.0.0.2", smtp_port, &[]);
    let daemon = start_daemon(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
    );
    send(&daemon, dir.path(), "big@mx.test", "a@big.test");
    sink2.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(arrived_ids(&sink2), ["<big@mx.test>"]);
    daemon.wait_for("the D line", ARRIVAL_TIMEOUT, |_| {
        lines_for(&daemon, "D", "big.test").len() == 1
    });
    assert!(lines_for(&daemon, "T", "big.test").is_empty());
}

/// Goal: a domain that says it takes no mail (null MX, RFC 7505) and one
/// that does not exist fail at once, with a reply that says why. Method:
/// send to null.test (`MX 0 .`) and nx.test (NXDOMAIN); expect one P line
/// each with the 556 5.1.10 / 550 5.1.2 reply, and nothing delivered.
#[test]
fn null_mx_and_nxdomain_fail_permanently() {
    let dir = TempDir::new("mx-permanent");
    let smtp_port = free_port();
    let records = ["null.test. 60 IN MX 0 .".to_string()];
    let unbound = Unbound::start(dir.path(), &records);
    let daemon = start_daemon(
        dir.path(),
        &format!("127.0.0.1:{}", unbound.port),
        smtp_port,
    );
    send(&daemon, dir.path(), "null@mx.test", "a@null.test");
    send(&daemon, dir.path(), "nx@mx.test", "a@nx.test");
    daemon.wait_for_kind("P", 2, ARRIVAL_TIMEOUT);

    let null = lines_for(&daemon, "P", "null.test");
    assert_eq!(null.len(), 1);
    let reply = null[0].fields.last().unwrap();
    assert!(
        reply.starts_with("556 5.1.10 null.test accepts no mail (null MX"),
        "{reply}"
    );
    let nx = lines_for(&daemon, "P", "nx.test");
    assert_eq!(nx.len(), 1);
    let reply = nx[0].fields.last().unwrap();
    assert!(
        reply.starts_with("550 5.1.2 nx.test: domain does not exist"),
        "{reply}"
    );
    let kinds: Vec<String> = parse_mainlog(&daemon.mainlog_lines())
        .iter()
        .map(|l| l.kind().to_string())
        .collect();
    assert!(!kinds.iter().any(|k| k == "D" || k == "T"), "{kinds:?}");
}

/// Goal: a DNS failure is transient: the message is kept and retried.
/// Method: a nameserver that refuses (unbound answers REFUSED outside
/// `test.`), and a daemon whose only nameserver port is closed; each
/// message gets T lines with a 451 4.4.3 reply, at least twice (a retry,
/// retry_interval 1 s), and no P line.
#[test]
fn a_failing_or_unreachable_nameserver_defers_and_retries() {
    let dir = TempDir::new("mx-transient");
    let unbound = Unbound::start(dir.path(), &[]);
    let refusing = start_daemon(
        &dir.join("refusing"),
        &format!("127.0.0.1:{}", unbound.port),
        free_port(),
    );
    let closed_port = free_port();
    let unreachable = start_daemon(
        &dir.join("unreachable"),
        &format!("127.0.0.1:{closed_port}"),
        free_port(),
    );
    for (daemon, domain) in [(&refusing, "refused.example"), (&unreachable, "any.test")] {
        send(
            daemon,
            dir.path(),
            &format!("t@{domain}"),
            &format!("a@{domain}"),
        );
    }
    for (daemon, domain, cause) in [
        (&refusing, "refused.example", "REFUSED"),
        (&unreachable, "any.test", "unreachable"),
    ] {
        daemon.wait_for(
            &format!("two T lines for {domain}"),
            ARRIVAL_TIMEOUT,
            |_| lines_for(daemon, "T", domain).len() >= 2,
        );
        for line in lines_for(daemon, "T", domain) {
            let reply = line.fields.last().unwrap();
            assert!(
                reply.starts_with(&format!("451 4.4.3 cannot resolve MX of {domain}: ")),
                "{reply}"
            );
            assert!(reply.contains(cause), "{reply}");
        }
        assert!(lines_for(daemon, "P", domain).is_empty());
    }
}
