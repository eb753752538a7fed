//! Momentum's `routes` end to end: a domain with a route reaches the
//! routed host, not its MX. Method: unbound serves MX records for every
//! domain pointing at 127.0.0.2 and an A record for relay.test on
//! 127.0.0.3; aiosmtpd sinks listen on 127.0.0.2 and 127.0.0.3 on
//! `remote_smtp_port`, and a third on 127.0.0.3 on another port. Each
//! domain's mail must arrive at exactly the sink its route names.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ecelerity_testkit::Unbound;
use ecelerity_tests::{
    free_port, parse_mainlog, send_file, Daemon, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT,
    READY_TIMEOUT,
};

/// A daemon without a gateway: MX routing through `nameserver` on
/// `smtp_port`, with `extra` appended at global scope.
fn start_daemon(dir: &Path, nameserver: &str, smtp_port: u16, extra: &str) -> Daemon {
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

fn send(daemon: &Daemon, dir: &Path, id: &str, rcpt: &str) {
    let bytes = format!(
        "From: s@sender.test\r\nTo: {rcpt}\r\nSubject: routes\r\nMessage-ID: <{id}>\r\n\r\n\
         body of {id}\r\n"
    );
    let file = dir.join(format!("{id}.eml"));
    fs::write(&file, bytes).unwrap();
    let code = send_file(daemon.smtp_port(), &file, "s@sender.test", &[rcpt]);
    assert_eq!(code, "250", "{rcpt}");
}

fn arrived_ids(sink: &Sink) -> Vec<String> {
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect();
    ids.sort();
    ids
}

/// Goal: `routes` sends a domain's mail to its routed host, by name or by
/// address and port, and `__mx__` after a dead routed host falls back to
/// the MX; a domain without routes still goes to its MX. Method: four
/// domains whose MX is the sink on 127.0.0.2; routed.test routes to
/// relay.test (127.0.0.3), ported.test to 127.0.0.3 on another port, and
/// fallback.test to a dead 127.0.0.4 first, then `__mx__`.
#[test]
fn routes_send_a_domain_to_its_routed_host_not_its_mx() {
    let dir = TempDir::new("routes");
    let smtp_port = free_port();
    let other_port = free_port();
    let mut records: Vec<String> = ["routed", "ported", "fallback", "plain"]
        .iter()
        .map(|d| format!("{d}.test. 60 IN MX 10 mx.{d}.test."))
        .collect();
    for d in ["routed", "ported", "fallback", "plain"] {
        records.push(format!("mx.{d}.test. 60 IN A 127.0.0.2"));
    }
    records.push("relay.test. 60 IN A 127.0.0.3".to_string());
    let unbound = Unbound::start(&dir.join("dns"), &records, READY_TIMEOUT).unwrap();
    let mx_sink = Sink::start_on(&dir.join("mx"), "127.0.0.2", smtp_port, &[]);
    let relay_sink = Sink::start_on(&dir.join("relay"), "127.0.0.3", smtp_port, &[]);
    let ported_sink = Sink::start_on(&dir.join("ported"), "127.0.0.3", other_port, &[]);
    let routes = format!(
        "domain \"routed.test\" {{ routes = ( \"relay.test\" ) }}\n\
         domain \"ported.test\" {{ routes = ( \"smtp://127.0.0.3?port={other_port}\" ) }}\n\
         domain \"fallback.test\" {{\n  \
           routes = ( \"smtp://127.0.0.4?pref=1\" \"__mx__\" )\n  connect_timeout = 2\n}}\n"
    );
    let daemon = start_daemon(dir.path(), &unbound.nameserver(), smtp_port, &routes);

    send(&daemon, dir.path(), "routed@routes.test", "a@routed.test");
    send(&daemon, dir.path(), "ported@routes.test", "a@ported.test");
    send(
        &daemon,
        dir.path(),
        "fallback@routes.test",
        "a@fallback.test",
    );
    send(&daemon, dir.path(), "plain@routes.test", "a@plain.test");

    relay_sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    ported_sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    mx_sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
    daemon.wait_for("four D lines", ARRIVAL_TIMEOUT, |lines| {
        parse_mainlog(lines)
            .iter()
            .filter(|l| l.kind() == "D")
            .count()
            == 4
    });
    // Give a stray copy a moment to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrived_ids(&relay_sink), ["<routed@routes.test>"]);
    assert_eq!(arrived_ids(&ported_sink), ["<ported@routes.test>"]);
    assert_eq!(
        arrived_ids(&mx_sink),
        ["<fallback@routes.test>", "<plain@routes.test>"],
        "only the domains without a live route reach the MX"
    );
    let lines = parse_mainlog(&daemon.mainlog_lines());
    let remote_of = |domain: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.kind() == "D" && l.field(5) == domain)
            .map(|l| l.field(11).to_string())
            .collect()
    };
    assert_eq!(remote_of("routed.test"), ["127.0.0.3"]);
    assert_eq!(remote_of("ported.test"), ["127.0.0.3"]);
    assert_eq!(remote_of("fallback.test"), ["127.0.0.2"]);
    assert_eq!(remote_of("plain.test"), ["127.0.0.2"]);
}
