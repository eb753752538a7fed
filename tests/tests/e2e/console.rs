//! The operator console over the control socket: `ec_console` in batch mode
//! (commands on stdin) against a running daemon.

use std::time::Duration;

use ecelerity_tests::{poll_until, send_messages, summary_value, ARRIVAL_TIMEOUT};

use crate::common::Mta;

/// Messages sent before reading the summary.
const SUMMARY_MESSAGES: usize = 7;

/// Goal: `summary` counts what went through. Method: deliver N messages,
/// then read `summary` until Received and Successfully Delivered both say N
/// (counters may trail the mainlog by a moment).
#[test]
fn console_summary_counts_received_and_delivered_messages() {
    let mta = Mta::start("console-summary");
    let count = SUMMARY_MESSAGES.to_string();
    let report = send_messages(
        mta.port(),
        &["--count", &count, "--threads", "2"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        report.accepted().len(),
        SUMMARY_MESSAGES,
        "{}",
        report.stderr
    );
    mta.sink
        .wait_for_messages(SUMMARY_MESSAGES, ARRIVAL_TIMEOUT);
    mta.daemon
        .wait_for_kind("D", SUMMARY_MESSAGES, ARRIVAL_TIMEOUT);

    let mut last = String::new();
    let settled = poll_until(ARRIVAL_TIMEOUT, || {
        let output = mta.daemon.console("summary\n");
        assert!(
            output.status.success(),
            "ec_console: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let received = summary_value(&last, "Received Messages");
        let delivered = summary_value(&last, "Successfully Delivered Messages");
        let want = Some(SUMMARY_MESSAGES as u64);
        (received == want && delivered == want).then_some(())
    });
    assert!(
        settled.is_some(),
        "summary never showed {SUMMARY_MESSAGES}/{SUMMARY_MESSAGES}:\n{last}"
    );
    assert!(last.contains("Summary Statistics"), "{last}");
    for label in ["Failed Messages", "Total Queue Size", "Inbound Concurrency"] {
        assert!(
            summary_value(&last, label).is_some(),
            "no numeric `{label}` in:\n{last}"
        );
    }
    assert_eq!(summary_value(&last, "Failed Messages"), Some(0), "{last}");
    assert!(
        last.lines().any(|l| l.trim_start().starts_with("Uptime:")),
        "no Uptime line:\n{last}"
    );
}

/// Goal: an unknown command is answered and the session goes on.
/// Method: `bogus` then `version` in one batch session.
#[test]
fn console_unknown_command_reports_error_and_session_continues() {
    let mta = Mta::start("console-unknown");
    let output = mta.daemon.console("bogus\nversion\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ec_console exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let unknown = stdout
        .lines()
        .position(|l| l.trim_start().starts_with("Unknown command"));
    let version = stdout
        .lines()
        .position(|l| l.trim_start().starts_with("ecelerity "));
    assert!(unknown.is_some(), "no `Unknown command` line:\n{stdout}");
    assert!(
        version.is_some(),
        "no version line after the error:\n{stdout}"
    );
    assert!(unknown < version, "replies out of order:\n{stdout}");
}

/// Goal: console `shutdown` stops the daemon gracefully.
/// Method: send `shutdown`, then wait for a clean exit.
#[test]
fn console_shutdown_stops_the_daemon_cleanly() {
    let mut mta = Mta::start("console-shutdown");
    let _ = mta.daemon.console("shutdown\n");
    let status = mta
        .daemon
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("daemon still running after console shutdown"));
    assert!(
        status.success(),
        "exit status {status}: {}",
        mta.daemon.stderr_text()
    );
}

/// Messages left queued for `mailq`.
const MAILQ_MESSAGES: usize = 5;

/// Goal: `mailq` shows each queue as every shard holds it (a control
/// request that travels to every shard and back). Method: with the gateway
/// down, queue N one-recipient messages to example.com; `mailq` must show
/// one `default/default example.com` row whose AQ + DQ is N, and a domain
/// filter that matches nothing must show the header alone.
#[test]
fn console_mailq_shows_every_queue_with_its_sizes() {
    let dir = ecelerity_tests::TempDir::new("console-mailq");
    // Nothing listens on the gateway port: every attempt is deferred.
    let config = ecelerity_tests::TestConfig::new(ecelerity_tests::free_port());
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    let count = MAILQ_MESSAGES.to_string();
    let report = send_messages(daemon.smtp_port(), &["--count", &count], ARRIVAL_TIMEOUT);
    assert_eq!(report.accepted().len(), MAILQ_MESSAGES, "{}", report.stderr);

    let mut last = String::new();
    let shown = poll_until(ARRIVAL_TIMEOUT, || {
        let output = daemon.console("mailq\n");
        assert!(output.status.success());
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        let row: Vec<&str> = last
            .lines()
            .find(|l| l.contains(" example.com "))?
            .split_whitespace()
            .collect();
        let queued: u64 = row[2].parse::<u64>().ok()? + row[3].parse::<u64>().ok()?;
        (row[0] == "default/default" && queued == MAILQ_MESSAGES as u64).then_some(())
    });
    assert!(
        shown.is_some(),
        "mailq never showed {MAILQ_MESSAGES} queued:\n{last}"
    );
    assert!(last.starts_with("Group/Binding"), "{last}");

    let output = daemon.console("mailq -d nothing.example\n");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), 1, "only the header:\n{text}");
    let output = daemon.console("mailq -l x\n");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("Usage: mailq"), "{text}");
}

/// Messages queued for the queue commands.
const QUEUE_COMMAND_MESSAGES: usize = 4;
/// A retry interval long enough that deferred entries sit in the delayed
/// queue for the whole test (seconds).
const LONG_RETRY_INTERVAL_S: u32 = 3600;

/// Goal: `delayed`, `flush domain` and `fail domain quiet` act on every
/// shard's queues. Method: with the gateway down and a long retry
/// interval, queue N messages to example.com; `delayed` must show
/// example.com with `D: N`; `flush domain example.com` must requeue N;
/// `fail domain quiet example.com` (repeated while an entry may be inside
/// a connection attempt) must purge N in all, the mainlog must get N P
/// lines with the operator's reply, and `mailq` must show no queue left.
#[test]
fn console_delayed_flush_and_fail_domain_act_on_every_shard() {
    let dir = ecelerity_tests::TempDir::new("console-queue-commands");
    // Nothing listens on the gateway port: every attempt is deferred.
    let mut config = ecelerity_tests::TestConfig::new(ecelerity_tests::free_port());
    config.retry_interval_s = LONG_RETRY_INTERVAL_S;
    config.max_retry_interval_s = LONG_RETRY_INTERVAL_S;
    let daemon = ecelerity_tests::Daemon::start(dir.path(), &config.render());
    let count = QUEUE_COMMAND_MESSAGES.to_string();
    let report = send_messages(daemon.smtp_port(), &["--count", &count], ARRIVAL_TIMEOUT);
    assert_eq!(
        report.accepted().len(),
        QUEUE_COMMAND_MESSAGES,
        "{}",
        report.stderr
    );

    let console = |command: &str| {
        let output = daemon.console(command);
        assert!(
            output.status.success(),
            "ec_console: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut last = String::new();
    let want = format!("D: {QUEUE_COMMAND_MESSAGES}  S: 0");
    let shown = poll_until(ARRIVAL_TIMEOUT, || {
        last = console("delayed\n");
        last.lines()
            .any(|l| l.starts_with("Domain: example.com  C: ") && l.ends_with(&want))
            .then_some(())
    });
    assert!(shown.is_some(), "delayed never showed {want}:\n{last}");
    assert!(last.lines().any(|l| l.starts_with("Total:")), "{last}");

    let flushed = console("flush domain example.com\n");
    assert!(
        flushed.contains(&format!(
            "example.com flushed.  {QUEUE_COMMAND_MESSAGES} messages requeued."
        )),
        "{flushed}"
    );

    let mut purged = 0;
    let all = poll_until(ARRIVAL_TIMEOUT, || {
        last = console("fail domain quiet example.com\n");
        let line = last
            .lines()
            .find(|l| l.starts_with("example.com purged, "))?;
        purged += line
            .trim_start_matches("example.com purged, ")
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()?;
        (purged >= QUEUE_COMMAND_MESSAGES).then_some(())
    });
    assert!(
        all.is_some(),
        "purged {purged} in all; last answer:\n{last}"
    );
    assert_eq!(purged, QUEUE_COMMAND_MESSAGES, "{last}");

    let lines = daemon.wait_for_kind("P", QUEUE_COMMAND_MESSAGES, ARRIVAL_TIMEOUT);
    let by_operator = lines
        .iter()
        .filter(|l| l.contains("failed by the operator"))
        .count();
    assert_eq!(by_operator, QUEUE_COMMAND_MESSAGES, "{}", lines.join("\n"));
    let mailq = console("mailq\n");
    assert_eq!(mailq.lines().count(), 1, "only the header:\n{mailq}");
}
