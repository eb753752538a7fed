//! Back-pressure from delivery to reception: with delivery stuck, the
//! daemon first delays its replies, then refuses new transactions with
//! `452 4.3.1`, and loses nothing it accepted.

use std::net::TcpListener;
use std::time::Duration;

use ecelerity_tests::{parse_mainlog, poll_until, send_messages, Daemon, TempDir, TestConfig};

/// Messages offered first: more than `backlog_slowdown_entries`, fewer
/// than `backlog_refuse_entries`.
const FIRST: usize = 5;
/// Messages offered then; far more than `backlog_refuse_entries`.
const OFFERED: usize = 40;
const SLOWDOWN_ENTRIES: u64 = 3;
const REFUSE_ENTRIES: u64 = 10;

/// Goal: reception slows, then refuses, when delivery falls behind.
/// Method: the gateway is a socket that accepts TCP but never greets, and
/// `max_outbound_connections = 1`, so every message stays in the active
/// queue. Offer 5 messages (all 250), wait for the gauges, then 40 more:
/// the paniclog says replies are delayed, then MAIL FROM gets `452
/// 4.3.1`; every message that got 250 has its reception (R) line.
#[test]
fn a_stuck_delivery_slows_then_refuses_reception_and_loses_nothing() {
    let dir = TempDir::new("backpressure");
    // Accepts the TCP handshake (the kernel's listen queue) and never reads
    // or writes: the outbound connection waits for a greeting that never
    // comes.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let gateway_port = black_hole.local_addr().unwrap().port();
    let mut config = TestConfig::new(gateway_port);
    config.extra = format!(
        "backlog_slowdown_entries = {SLOWDOWN_ENTRIES}\n\
         backlog_refuse_entries = {REFUSE_ENTRIES}\n\
         in_flow_delay_ms = 100\n\
         max_outbound_connections = 1\n"
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    // Phase 1: a backlog between the two limits. The gauges the daemon
    // reads are published every 100 ms tick, so wait a few ticks.
    let first = send_messages(
        daemon.smtp_port(),
        &[
            "--count",
            &FIRST.to_string(),
            "--threads",
            "1",
            "--prefix",
            "bp1",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(first.accepted().len(), FIRST, "{:?}", first.results);
    std::thread::sleep(Duration::from_millis(500));
    // Phase 2: slowed replies, then refusals.
    let count = OFFERED.to_string();
    let report = send_messages(
        daemon.smtp_port(),
        &["--count", &count, "--threads", "1", "--prefix", "bp2"],
        Duration::from_secs(120),
    );
    let mut accepted = first.accepted();
    accepted.extend(report.accepted());
    let refused: Vec<&(String, String)> = report
        .results
        .iter()
        .filter(|(_, code)| code == "452")
        .collect();
    assert!(
        !refused.is_empty(),
        "past backlog_refuse_entries MAIL FROM gets 452: {:?}",
        report.results
    );
    assert_eq!(
        report.accepted().len() + refused.len(),
        OFFERED,
        "every attempt got 250 or 452: {:?}",
        report.results
    );
    let stderr = poll_until(Duration::from_secs(5), || {
        let text = daemon.stderr_text();
        text.contains("new transactions get 452 4.3.1")
            .then_some(text)
    })
    .expect("the paniclog says reception refuses");
    assert!(
        stderr.contains("replies to accepted messages are delayed"),
        "{stderr}"
    );
    // Nothing accepted is lost: each 250 has its R line (the reply waits
    // for the spool, and the mainlog is flushed within a tick).
    let received = poll_until(Duration::from_secs(5), || {
        let r = parse_mainlog(&daemon.mainlog_lines())
            .into_iter()
            .filter(|l| l.kind() == "R")
            .count();
        (r == accepted.len()).then_some(r)
    });
    assert_eq!(received, Some(accepted.len()), "an R line per 250");
    drop(black_hole);
}
