//! `config reload` (console) and SIGHUP while clients send: the new
//! gateway and listeners take effect, nothing accepted is lost or
//! delivered twice, and a broken file keeps the running configuration.

use std::net::TcpStream;
use std::time::Duration;

use ecelerity_tests::{
    free_port, poll_until, send_messages, send_py, swaks, Background, Daemon, Sink, TempDir,
    TestConfig, ARRIVAL_TIMEOUT,
};

/// Messages the background client sends across the reload.
const MESSAGES_ACROSS_RELOAD: usize = 600;
/// Its connections.
const CLIENT_THREADS: usize = 4;
/// Messages sent once the reload is done; all must reach the new gateway.
const MESSAGES_AFTER_RELOAD: usize = 20;
/// Options of the reloaded file: a new outbound limit and a message size
/// limit that the running listener P1 applies from its next connection.
const RELOADED_OPTIONS: &str = "max_outbound_connections = 7\nmax_message_size = 100000\n";
/// A message over that size limit.
const BIG_MESSAGE_BYTES: &str = "200000";
/// How long every accepted message may take to arrive.
const ALL_ARRIVED_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a removed listener may take to refuse connections.
const LISTENER_GONE_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon's config with `gateway_port` and ESMTP listeners on `ports`
/// (the first is the test config's own).
fn config_text(base: &TestConfig, gateway_port: u16, ports: &[u16], extra: &str) -> String {
    let mut config = base.clone();
    config.gateway_port = gateway_port;
    config.extra = extra.to_string();
    let text = config.render();
    let single = format!(
        "ESMTP_Listener {{ Listen \"127.0.0.1:{}\" {{ }} }}",
        base.smtp_port
    );
    assert!(text.contains(&single), "{text}");
    let listens: Vec<String> = ports
        .iter()
        .map(|p| format!("Listen \"127.0.0.1:{p}\" {{ }}"))
        .collect();
    text.replace(
        &single,
        &format!("ESMTP_Listener {{ {} }}", listens.join(" ")),
    )
}

fn console_text(daemon: &Daemon, command: &str) -> String {
    let output = daemon.console(&format!("{command}\n"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn refuses(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// Goal: a reload changes options and listeners without losing or
/// doubling mail. Method: 4 smtplib connections send 600 messages to
/// listener P1 while the console reloads a file that moves the gateway from
/// sink A to sink B, removes listener P2, adds P3 and changes
/// max_outbound_connections and max_message_size. `config eval` shows the new values; P2
/// refuses, P3 accepts (swaks), messages sent after the reload all reach
/// B, P1 refuses a message over the new size limit, every accepted message
/// arrives exactly once over A and B. Then a
/// file with a bad value on line 2: `Reconfigure failed` with
/// `ecelerity.conf:2:`, and the running configuration (gateway B, P3)
/// stays in effect.
#[test]
fn console_reload_while_sending_applies_everything_and_loses_nothing() {
    let dir = TempDir::new("reload");
    let sink_a = Sink::start(&dir.join("sink-a"), free_port());
    let sink_b = Sink::start(&dir.join("sink-b"), free_port());
    let base = TestConfig::new(sink_a.port());
    let (p1, p2, p3) = (base.smtp_port, free_port(), free_port());
    let daemon = Daemon::start(
        dir.path(),
        &config_text(
            &base,
            sink_a.port(),
            &[p1, p2],
            "max_outbound_connections = 20\n",
        ),
    );
    assert_eq!(
        console_text(&daemon, "config eval max_outbound_connections"),
        "max_outbound_connections = 20\n"
    );
    assert!(
        !refuses(p2),
        "listener P2 is not accepting before the reload"
    );

    let mut client = send_py(p1);
    client.args([
        "--count",
        &MESSAGES_ACROSS_RELOAD.to_string(),
        "--threads",
        &CLIENT_THREADS.to_string(),
        "--prefix",
        "across",
        "--deadline",
        "120",
    ]);
    let mut background = Background::spawn("across", client, dir.path());
    sink_a.wait_for_messages(10, ARRIVAL_TIMEOUT);

    std::fs::write(
        daemon.config_path(),
        config_text(&base, sink_b.port(), &[p1, p3], RELOADED_OPTIONS),
    )
    .unwrap();
    let still_sending = background.try_wait().is_none();
    let reply = console_text(&daemon, "config reload");
    assert!(
        still_sending,
        "the client finished before the reload: send more"
    );
    assert!(reply.starts_with("Reconfigured from"), "{reply}");
    assert!(!reply.contains("Error"), "{reply}");
    assert!(!reply.contains("Restart needed"), "{reply}");
    assert_eq!(
        console_text(&daemon, "config eval max_outbound_connections"),
        "max_outbound_connections = 7\n"
    );
    assert_eq!(
        console_text(&daemon, "config eval domain example.com gateway"),
        format!("gateway = \"127.0.0.1:{}\"\n", sink_b.port())
    );
    let shown = console_text(&daemon, "config show");
    assert!(
        shown.contains(&format!("Listen \"127.0.0.1:{p3}\" {{"))
            && !shown.contains(&format!("Listen \"127.0.0.1:{p2}\" {{")),
        "{shown}"
    );
    assert!(
        poll_until(LISTENER_GONE_TIMEOUT, || refuses(p2).then_some(())).is_some(),
        "the removed listener P2 still accepts connections"
    );

    let report = background.wait_report(ALL_ARRIVED_TIMEOUT);
    let accepted_across = report.accepted();
    assert_eq!(
        accepted_across.len(),
        MESSAGES_ACROSS_RELOAD,
        "the client got other replies than 250 across the reload: {:?}\n{}",
        report
            .results
            .iter()
            .filter(|(_, c)| c != "250")
            .collect::<Vec<_>>(),
        report.stderr
    );
    let after = send_messages(
        p3,
        &[
            "--count",
            &MESSAGES_AFTER_RELOAD.to_string(),
            "--prefix",
            "after",
            "--deadline",
            "60",
        ],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        after.accepted().len(),
        MESSAGES_AFTER_RELOAD,
        "{}",
        after.stderr
    );

    let big = send_messages(
        p1,
        &[
            "--min-size",
            BIG_MESSAGE_BYTES,
            "--max-size",
            BIG_MESSAGE_BYTES,
            "--prefix",
            "big",
            "--deadline",
            "60",
        ],
        ARRIVAL_TIMEOUT,
    );
    assert!(
        big.results.len() == 1 && big.results[0].1.starts_with('5'),
        "P1 did not apply the reloaded max_message_size: {:?} {}",
        big.results,
        big.stderr
    );

    let wanted = MESSAGES_ACROSS_RELOAD + MESSAGES_AFTER_RELOAD;
    let all_arrived = poll_until(ALL_ARRIVED_TIMEOUT, || {
        let mut counts = sink_a.message_id_counts();
        for (id, n) in sink_b.message_id_counts() {
            *counts.entry(id).or_insert(0) += n;
        }
        (counts.values().sum::<usize>() >= wanted).then_some(counts)
    });
    let counts = all_arrived.unwrap_or_else(|| {
        panic!(
            "not every accepted message arrived: A {} B {}",
            sink_a.messages().len(),
            sink_b.messages().len()
        )
    });
    for id in accepted_across.iter().chain(after.accepted().iter()) {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} arrived {:?} times",
            counts.get(id)
        );
    }
    assert_eq!(counts.len(), wanted, "unexpected messages: {counts:?}");
    let at_b = sink_b.message_id_counts();
    for id in after.accepted() {
        assert!(
            at_b.contains_key(&id),
            "{id} sent after the reload did not reach the new gateway"
        );
    }

    // A broken file: nothing changes.
    let mut broken = config_text(&base, sink_a.port(), &[p1, p2], "");
    broken.insert_str(
        broken.find('\n').unwrap() + 1,
        "max_outbound_connections = lots\n",
    );
    std::fs::write(daemon.config_path(), broken).unwrap();
    let reply = console_text(&daemon, "config reload");
    assert!(reply.starts_with("Reconfigure failed\n"), "{reply}");
    assert!(reply.contains("ecelerity.conf:2:"), "{reply}");
    assert_eq!(
        console_text(&daemon, "config eval max_outbound_connections"),
        "max_outbound_connections = 7\n"
    );
    let output = swaks(
        p3,
        &["--to", "still@example.com", "--from", "ops@example.org"],
    );
    assert!(
        output.status.success(),
        "P3 stopped accepting after a failed reload:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        poll_until(ARRIVAL_TIMEOUT, || sink_b
            .messages()
            .iter()
            .any(|m| m.rcpts == ["still@example.com"])
            .then_some(()))
        .is_some(),
        "the message after the failed reload did not reach gateway B"
    );
    assert!(refuses(p2), "a failed reload brought listener P2 back");
}

/// Goal: SIGHUP is a reload, restart-only options are reported and kept,
/// a broken file is refused with `file:line`. Method: change the gateway
/// and `spoolbase` in the file, send SIGHUP; the paniclog names spoolbase
/// as needing a restart, `config eval` shows the old spoolbase, and a
/// message sent next reaches the new gateway. Then a file with an unknown
/// option on line 1 and SIGHUP: the paniclog has `ecelerity.conf:1:` and
/// the daemon still delivers to the new gateway.
#[test]
fn sighup_reloads_and_keeps_restart_only_options() {
    let dir = TempDir::new("reload-hup");
    let sink_a = Sink::start(&dir.join("sink-a"), free_port());
    let sink_b = Sink::start(&dir.join("sink-b"), free_port());
    let base = TestConfig::new(sink_a.port());
    let p1 = base.smtp_port;
    let daemon = Daemon::start(dir.path(), &config_text(&base, sink_a.port(), &[p1], ""));
    let new_text = config_text(&base, sink_b.port(), &[p1], "")
        .replace("spoolbase = \"spool\"", "spoolbase = \"elsewhere\"");
    std::fs::write(daemon.config_path(), new_text).unwrap();
    let pid = daemon.pid().expect("daemon pid") as libc::pid_t;
    // SAFETY: kill sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let paniclog = dir.join("log/paniclog.ec");
    let logged = poll_until(ARRIVAL_TIMEOUT, || {
        let text = std::fs::read_to_string(&paniclog).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("config reload: Reconfigured"))
            .map(str::to_string)
    })
    .expect("SIGHUP's reload is not in the paniclog");
    assert!(
        logged.contains("Restart needed to change: spoolbase"),
        "{logged}"
    );
    assert_eq!(
        console_text(&daemon, "config eval spoolbase"),
        "spoolbase = \"spool\"\n"
    );
    let output = swaks(
        p1,
        &["--to", "after-hup@example.com", "--from", "ops@example.org"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let arrived = sink_b.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(arrived[0].rcpts, vec!["after-hup@example.com"]);
    assert!(sink_a.messages().is_empty());

    let broken = format!(
        "no_such_option = 1\n{}",
        config_text(&base, sink_a.port(), &[p1], "")
    );
    std::fs::write(daemon.config_path(), broken).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let refused = poll_until(ARRIVAL_TIMEOUT, || {
        let text = std::fs::read_to_string(&paniclog).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("config reload:") && l.contains("ecelerity.conf:1:"))
            .map(str::to_string)
    });
    assert!(
        refused.is_some(),
        "the broken file's error is not in the paniclog:\n{}",
        ecelerity_tests::file_tail(&paniclog)
    );
    let output = swaks(
        p1,
        &["--to", "after-bad@example.com", "--from", "ops@example.org"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let arrived = sink_b.wait_for_messages(2, ARRIVAL_TIMEOUT);
    assert!(arrived.iter().any(|m| m.rcpts == ["after-bad@example.com"]));
    assert!(sink_a.messages().is_empty());
}
