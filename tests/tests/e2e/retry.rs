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
