//! The PROXY protocol through a real HAProxy (`send-proxy` for v1,
//! `send-proxy-v2` for v2): the listener trusts headers only from its
//! `proxy_protocol_hosts` (here 127.0.0.4, HAProxy's source address), and
//! then the client HAProxy names is the peer for relay control, the
//! mainlog, the Received header and `max_inbound_connections_per_ip`.
//! Clients are swaks, bound to their own loopback addresses: 127.0.0.5
//! may relay, 127.0.0.6 and 127.0.0.7 may not, and neither may the
//! proxy's own address. A header from an address that is
//! not a configured proxy (a second HAProxy backend sourcing 127.0.0.3) is
//! refused, and a configured proxy that sends no header is dropped.

use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ecelerity_testkit::wait_for_greeting;
use ecelerity_tests::{
    free_port, poll_until, swaks, ChildGuard, Daemon, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

use crate::raw::Raw;

const PROXY_SOURCE: &str = "127.0.0.4";
const OUTSIDER_PROXY_SOURCE: &str = "127.0.0.3";
const RELAY_CLIENT: &str = "127.0.0.5";
const OTHER_CLIENT: &str = "127.0.0.6";
const THIRD_CLIENT: &str = "127.0.0.7";

/// HAProxy in the foreground with three TCP frontends to the daemon: v1
/// and v2 from the trusted source, v1 from an untrusted one.
struct Haproxy {
    _child: ChildGuard,
    v1: u16,
    v2: u16,
    outsider: u16,
}

impl Haproxy {
    fn start(dir: &Path, smtp_port: u16) -> Haproxy {
        let (v1, v2, outsider) = (free_port(), free_port(), free_port());
        let config = format!(
            "global\n  maxconn 200\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  \
             timeout server 120s\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend mta_v1\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend mta_v2\n\
             frontend outsider\n  bind 127.0.0.1:{outsider}\n  default_backend mta_outsider\n\
             backend mta_v1\n  server mta 127.0.0.1:{smtp_port} send-proxy source {PROXY_SOURCE}\n\
             backend mta_v2\n  server mta 127.0.0.1:{smtp_port} send-proxy-v2 source {PROXY_SOURCE}\n\
             backend mta_outsider\n  server mta 127.0.0.1:{smtp_port} send-proxy \
             source {OUTSIDER_PROXY_SOURCE}\n"
        );
        let config_path = dir.join("haproxy.cfg");
        fs::write(&config_path, config).unwrap();
        let log_path = dir.join("haproxy.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn haproxy (run tests/install-deps)");
        let mut child = ChildGuard::new("haproxy", child);
        for port in [v1, v2] {
            wait_for_greeting(
                "haproxy",
                port,
                Some(&mut child),
                &log_path,
                ARRIVAL_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        Haproxy {
            _child: child,
            v1,
            v2,
            outsider,
        }
    }
}

/// swaks from `source` to `port`, one message to rcpt@example.com.
fn swaks_from(source: &str, port: u16, label: &str) -> (bool, String) {
    let output = swaks(
        port,
        &[
            "--local-interface",
            source,
            "--from",
            "sender@send.test",
            "--to",
            "rcpt@example.com",
            "--header",
            &format!("Subject: {label}"),
            "--header",
            &format!("Message-ID: <{label}@proxy.test>"),
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn proxy_v1_and_v2_from_haproxy_give_the_real_client_address() {
    let dir = TempDir::new("proxy");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.relay_hosts = vec![format!("{RELAY_CLIENT}/32")];
    let text = config.render();
    let plain = format!("Listen \"127.0.0.1:{}\" {{ }}", config.smtp_port);
    assert!(text.contains(&plain), "{text}");
    let text = text.replace(
        &plain,
        &format!(
            "Listen \"127.0.0.1:{}\" {{ proxy_protocol_hosts = ( \"{PROXY_SOURCE}/32\" ) \
             proxy_protocol_timeout = 1 max_inbound_connections_per_ip = 1 }}",
            config.smtp_port
        ),
    );
    let daemon = Daemon::start(dir.path(), &text);
    let haproxy = Haproxy::start(dir.path(), daemon.smtp_port());

    // Relayed for the client HAProxy names, over v1 and v2.
    for (port, label) in [(haproxy.v1, "via-v1"), (haproxy.v2, "via-v2")] {
        let (ok, out) = swaks_from(RELAY_CLIENT, port, label);
        assert!(ok, "{label}: {out}");
    }
    let messages = sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    for message in &messages {
        let received = message.header("Received").expect("a Received header");
        assert!(
            received.contains(&format!("[{RELAY_CLIENT}]")),
            "{received}"
        );
        assert!(!received.contains(PROXY_SOURCE), "{received}");
    }
    let lines = daemon.wait_for("two receptions", ARRIVAL_TIMEOUT, |lines| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("@{RELAY_CLIENT}@")))
            .count()
            >= 2
    });
    assert!(!lines.iter().any(|l| l.contains(PROXY_SOURCE)), "{lines:?}");

    // Another client through the same proxy is judged on its own address.
    let (ok, out) = swaks_from(OTHER_CLIENT, haproxy.v2, "denied-v2");
    assert!(!ok, "{out}");
    assert!(
        out.contains("550 5.7.1 <rcpt@example.com>: relaying denied"),
        "{out}"
    );
    let logged = poll_until(ARRIVAL_TIMEOUT, || {
        let rejectlog = fs::read_to_string(dir.join("log/rejectlog.ec")).unwrap_or_default();
        rejectlog
            .contains(&format!("R=\"{OTHER_CLIENT}:"))
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "the rejectlog does not name {OTHER_CLIENT}"
    );

    // Connections are counted per real client, not per proxy: with
    // max_inbound_connections_per_ip = 1, a second connection of
    // 127.0.0.6 through the proxy is refused while 127.0.0.7 still gets in.
    let mut held = Raw::connect_from(OTHER_CLIENT.parse().unwrap(), haproxy.v1);
    assert_eq!(held.reply().map(|r| r.0), Some(220));
    let (ok, out) = swaks_from(OTHER_CLIENT, haproxy.v2, "second-connection");
    assert!(!ok, "{out}");
    assert!(
        out.contains("421 4.7.0 Too many connections from your address"),
        "{out}"
    );
    let (_, out) = swaks_from(THIRD_CLIENT, haproxy.v2, "third-client");
    assert!(out.contains("<-  220 mta.test"), "{out}");
    drop(held);

    // A PROXY header from an address that is not a configured proxy is
    // not obeyed: it is a bad command, the session answers 500 to it, and
    // swaks (reading that 500 as the EHLO reply) gives up.
    let (ok, out) = swaks_from(RELAY_CLIENT, haproxy.outsider, "outsider");
    assert!(!ok, "{out}");
    assert!(out.contains("500 5.5.1"), "{out}");

    // A configured proxy that sends no header gets no banner and is
    // dropped once proxy_protocol_timeout passes.
    let source: Ipv4Addr = PROXY_SOURCE.parse().unwrap();
    let mut silent = Raw::connect_from(source, daemon.smtp_port());
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = silent.stream.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "a banner without a PROXY header: {:?}",
        read.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Nothing but the two relayed messages arrived.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 2);
}
