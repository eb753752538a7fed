//! Transient failures and retries: mail taken while the next hop is down
//! is kept and delivered once it comes back.

use std::collections::BTreeSet;
use std::time::Duration;

use ecelerity_tests::{
    free_port, send_messages, Daemon, MessageIdTally, Sink, TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

use crate::common::every_reception_delivered;

/// Messages sent while the gateway is down.
const QUEUED_MESSAGES: usize = 20;
/// How long all queued messages may take to arrive once the sink is up.
/// retry_interval is 1 s and max_retry_interval 2 s, so this is generous.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Goal: a dead gateway delays mail but loses none. Method: with no sink
/// listening, send 20 messages (all 250), see T lines in the mainlog, start
/// the sink, and wait until every accepted Message-ID has arrived.
#[test]
fn gateway_down_then_up_delivers_everything() {
    let dir = TempDir::new("gateway-down");
    let sink_port = free_port();
    let config = TestConfig::new(sink_port);
    let daemon = Daemon::start(dir.path(), &config.render());

    let count = QUEUED_MESSAGES.to_string();
    let report = send_messages(
        daemon.smtp_port(),
        &["--count", &count, "--threads", "2", "--prefix", "down"],
        ARRIVAL_TIMEOUT,
    );
    let accepted: BTreeSet<String> = report.accepted().into_iter().collect();
    assert_eq!(
        accepted.len(),
        QUEUED_MESSAGES,
        "all get 250: {}",
        report.stderr
    );

    let lines = daemon.wait_for_kind("T", 1, ARRIVAL_TIMEOUT);
    let transient = ecelerity_tests::parse_mainlog(&lines)
        .into_iter()
        .find(|l| l.kind() == "T")
        .unwrap();
    assert_eq!(
        transient.field(5),
        "example.com",
        "T line: {:?}",
        transient.fields
    );
    assert_eq!(
        transient.field(6),
        "0",
        "nothing sent when the connect fails: {:?}",
        transient.fields
    );

    let sink = Sink::start(&dir.join("sink"), sink_port);
    let mut tally = MessageIdTally::default();
    let all_arrived = ecelerity_tests::poll_until(DRAIN_TIMEOUT, || {
        tally.update(&sink);
        accepted
            .iter()
            .all(|id| tally.counts.contains_key(id))
            .then_some(())
    });
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !tally.counts.contains_key(*id))
        .collect();
    assert!(
        all_arrived.is_some(),
        "missing after {DRAIN_TIMEOUT:?}: {missing:?}"
    );
    daemon.wait_for(
        "a D line for every R line",
        ARRIVAL_TIMEOUT,
        every_reception_delivered,
    );
    let retried = daemon
        .mainlog()
        .into_iter()
        .filter(|l| l.kind() == "D" && l.field(9) != "0")
        .count();
    assert!(
        retried > 0,
        "deliveries after a failure count their retries"
    );
}

/// Messages spooled on three shards before the shard count changes.
const RESHARD_MESSAGES: usize = 30;

/// Goal: changing `shards` never strands spooled mail. Each shard owns
/// `spoolbase/<shard>`; a count too small for the folders that still hold
/// segments must refuse to start (not start and ignore them), and `shards
/// = 0` must grow to cover them. Method: spool 30 messages on 3 shards with
/// the gateway down, stop; restart with `shards = 1` (expect exit with the
/// reason), then with `shards = 0` on this 2-CPU machine with the sink up:
/// every message arrives.
#[test]
fn a_smaller_shard_count_never_strands_spooled_mail() {
    let dir = TempDir::new("reshard");
    let sink_port = free_port();
    let mut config = TestConfig::new(sink_port);
    config.shards = 3;
    let mut daemon = Daemon::start(dir.path(), &config.render());
    let count = RESHARD_MESSAGES.to_string();
    let report = send_messages(
        daemon.smtp_port(),
        &["--count", &count, "--threads", "12", "--prefix", "reshard"],
        ARRIVAL_TIMEOUT,
    );
    let accepted: BTreeSet<String> = report.accepted().into_iter().collect();
    assert_eq!(accepted.len(), RESHARD_MESSAGES, "{}", report.stderr);
    daemon.stop();
    let spooled_shards: Vec<usize> = (0..3)
        .filter(|s| {
            std::fs::read_dir(dir.join("spool").join(s.to_string()))
                .map(|d| {
                    d.flatten()
                        .any(|f| f.file_name().to_string_lossy().ends_with(".seg"))
                })
                .unwrap_or(false)
        })
        .collect();
    let highest = *spooled_shards.last().expect("something was spooled");
    // 12 connections spread by SO_REUSEPORT: all on shard 0 has odds of
    // (1/3)^12; the refusal below needs a folder above 0.
    assert!(
        highest >= 1,
        "all mail landed on shard 0: {spooled_shards:?}"
    );

    config.shards = 1;
    let mut refused = Daemon::spawn(dir.path(), &config.render());
    if highest >= 1 {
        let status = refused
            .wait_exit(ARRIVAL_TIMEOUT)
            .expect("a stranding count must not start");
        assert!(!status.success());
        let stderr = refused.stderr_text();
        assert!(stderr.contains("holds spooled messages"), "{stderr}");
    }
    drop(refused);

    config.shards = 0;
    let sink = Sink::start(&dir.join("sink"), sink_port);
    let _daemon = Daemon::start(dir.path(), &config.render());
    let mut tally = MessageIdTally::default();
    let lost = tally.wait_for_all(&sink, &accepted, DRAIN_TIMEOUT, Duration::from_millis(200));
    assert!(lost.is_empty(), "stranded after resharding: {lost:?}");
}

/// Goal: each recipient gets its own outcome, and a transient failure stops
/// at `max_retries`. Method: one message to three recipients of one
/// domain; the sink accepts `ok`, refuses `reject` with 550 and defers
/// `tempfail` with 451 at RCPT. With `max_retries = 2` the mainlog must
/// show one D (ok), one P carrying the 550 (reject), two T and then a P
/// that says the retries ran out (tempfail), and the sink must hold one
/// copy, for `ok` only; the console counts 1 delivered and 2 failed.
#[test]
fn each_recipient_gets_its_outcome_and_retries_stop_at_max_retries() {
    let dir = TempDir::new("outcomes");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.extra.push_str("max_retries = 2\n");
    // The DSNs would go to the same sink: bounces.rs tests DSNs.
    config.extra.push_str("generate_bounces = false\n");
    let daemon = Daemon::start(dir.path(), &config.render());
    let out = ecelerity_tests::swaks(
        daemon.smtp_port(),
        &[
            "--from",
            "sender@example.net",
            "--to",
            "ok@example.com,reject@example.com,tempfail@example.com",
            "--header",
            "Message-ID: <outcomes@test>",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let done = ecelerity_tests::poll_until(DRAIN_TIMEOUT, || {
        let lines = daemon.mainlog();
        (lines.iter().filter(|l| l.kind() == "P").count() == 2).then_some(lines)
    })
    .expect("two permanent failures in time");
    let of = |kind: &str| done.iter().filter(|l| l.kind() == kind).collect::<Vec<_>>();
    assert_eq!(of("D").len(), 1, "one delivery: {done:?}");
    let transient = of("T");
    assert_eq!(
        transient.len(),
        2,
        "two transient failures before giving up: {done:?}"
    );
    assert!(
        transient.iter().all(|l| l.field(13).starts_with("451")),
        "{transient:?}"
    );
    let permanent: Vec<String> = of("P").iter().map(|l| l.field(13).to_string()).collect();
    assert!(
        permanent.iter().any(|e| e.starts_with("550")),
        "{permanent:?}"
    );
    assert!(
        permanent
            .iter()
            .any(|e| e.contains("exceeded max retries") && e.contains("451")),
        "{permanent:?}"
    );
    let arrived = sink.messages();
    assert_eq!(arrived.len(), 1, "only `ok` got a copy");
    assert_eq!(arrived[0].rcpts, vec!["ok@example.com".to_string()]);
    let summary = String::from_utf8_lossy(&daemon.console("summary\n").stdout).into_owned();
    assert_eq!(
        ecelerity_tests::summary_value(&summary, "Successfully Delivered Messages"),
        Some(1),
        "{summary}"
    );
    assert_eq!(
        ecelerity_tests::summary_value(&summary, "Failed Messages"),
        Some(2),
        "{summary}"
    );
}
