//! Outbound limits seen from the receiving side: an aiosmtpd sink
//! (`tests/py/limits_sink.py`) logs every connection it accepts, how many
//! were open at once, and when each message arrived; the tests read that
//! log. Momentum's options: `max_outbound_connections`,
//! `outbound_throttle_messages` (by reference: one bucket for every queue
//! inheriting the setting), `outbound_throttle_connections`,
//! `max_deliveries_per_connection`, and the host-level failure memory
//! (`host_failure_retry`: a dead host, a storm of 4xx replies).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ecelerity_tests::{
    file_tail, free_port, parse_mainlog, poll_until, py_dir, python, send_messages, swaks,
    ChildGuard, Daemon, TempDir, TestConfig, ARRIVAL_TIMEOUT, READY_TIMEOUT,
};

/// One line of the sink's events.txt.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    kind: String,
    unix_s: f64,
    connection: u32,
    /// Open connections after the event (`open`/`close` only).
    open_now: Option<u32>,
}

/// The counting sink as a child process.
struct LimitsSink {
    dir: PathBuf,
    port: u16,
    _child: ChildGuard,
}

impl LimitsSink {
    fn start(dir: &Path, data_delay_ms: u32) -> LimitsSink {
        LimitsSink::start_with(dir, data_delay_ms, "")
    }

    /// A sink that answers `rcpt_reply` to every RCPT TO (when not empty).
    fn start_with(dir: &Path, data_delay_ms: u32, rcpt_reply: &str) -> LimitsSink {
        fs::create_dir_all(dir).expect("sink dir");
        let port = free_port();
        let log = fs::File::create(dir.join("sink.log")).expect("sink log");
        let child = Command::new(python())
            .arg(py_dir().join("limits_sink.py"))
            .args(["--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args(["--data-delay-ms", &data_delay_ms.to_string()])
            .args(["--rcpt-reply", rcpt_reply])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn limits_sink.py (run tests/install-deps)");
        let sink = LimitsSink {
            dir: dir.to_path_buf(),
            port,
            _child: ChildGuard::new("limits_sink.py", child),
        };
        let ready = poll_until(READY_TIMEOUT, || dir.join("ready").exists().then_some(()));
        assert!(
            ready.is_some(),
            "limits_sink.py not ready:\n{}",
            file_tail(&dir.join("sink.log"))
        );
        sink
    }

    fn events(&self) -> Vec<Event> {
        let text = fs::read_to_string(self.dir.join("events.txt")).unwrap_or_default();
        text.lines()
            .filter(|line| line.ends_with(|c: char| c.is_ascii_digit()))
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                Some(Event {
                    kind: fields.first()?.to_string(),
                    unix_s: fields.get(1)?.parse().ok()?,
                    connection: fields.get(2)?.parse().ok()?,
                    open_now: fields.get(3).and_then(|n| n.parse().ok()),
                })
            })
            .collect()
    }

    fn messages(&self) -> Vec<Event> {
        let events = self.events();
        events.into_iter().filter(|e| e.kind == "message").collect()
    }

    /// Waits until `count` messages arrived; panics after `timeout`.
    fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<Event> {
        poll_until(timeout, || {
            let messages = self.messages();
            (messages.len() >= count).then_some(messages)
        })
        .unwrap_or_else(|| {
            panic!(
                "the sink has {} of {count} messages after {timeout:?}",
                self.messages().len()
            )
        })
    }
}

/// A daemon with `options` (global scope) relaying to `sink`.
fn start_daemon(dir: &TempDir, sink_port: u16, options: &str) -> Daemon {
    let mut config = TestConfig::new(sink_port);
    config.extra = options.to_string();
    Daemon::start(dir.path(), &config.render())
}

/// Sends `count` generated messages to `to` over `threads` connections;
/// asserts each got 250.
fn send(port: u16, count: usize, threads: usize, to: &str, prefix: &str) {
    let count_arg = count.to_string();
    let threads_arg = threads.to_string();
    let report = send_messages(
        port,
        &[
            "--count",
            &count_arg,
            "--threads",
            &threads_arg,
            "--to",
            to,
            "--prefix",
            prefix,
            "--min-size",
            "300",
            "--max-size",
            "600",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(
        report.accepted().len(),
        count,
        "every message gets 250: {}",
        report.stderr
    );
}

/// Goal: `max_outbound_connections = 3` is never exceeded, even when the
/// queue is long enough for more. Method: the sink takes 300 ms per DATA,
/// 40 messages arrive over 8 client connections (two shards receive
/// them), and the sink's own count of open connections never passes 3,
/// while reaching it (so the limit, not a lack of work, held it there).
#[test]
fn limits_max_outbound_connections_caps_concurrent_connections_at_the_sink() {
    let dir = TempDir::new("limits-conns");
    let sink = LimitsSink::start(&dir.join("sink"), 300);
    let daemon = start_daemon(&dir, sink.port, "max_outbound_connections = 3\n");
    send(daemon.smtp_port(), 40, 8, "rcpt@conns.test", "conns");
    sink.wait_for_messages(40, ARRIVAL_TIMEOUT);
    let peak = sink
        .events()
        .iter()
        .filter_map(|e| e.open_now)
        .max()
        .unwrap_or(0);
    assert_eq!(peak, 3, "the most connections open at once");
}

/// Goal: `outbound_throttle_messages = "50/1"` delivers 50 messages per
/// second, within 10 %, over 10 s; and a throttle set globally is one
/// bucket shared by every queue that inherits it (Momentum's by-reference
/// throttles), across shards. Method: 360 messages, each to two domains
/// (two queues, each on the shard its name hashes to: 720 deliveries); the
/// sink stamps each arrival. After the first second (a full bucket lets
/// its 50 go at once), the arrivals in the next 10 s must number
/// 500 +- 50: two unshared buckets would let about 1000 through.
#[test]
fn limits_outbound_throttle_messages_paces_all_queues_sharing_it() {
    const WINDOW_S: f64 = 10.0;
    const RATE_PER_S: f64 = 50.0;
    let dir = TempDir::new("limits-throttle");
    let sink = LimitsSink::start(&dir.join("sink"), 0);
    let daemon = start_daemon(&dir, sink.port, "outbound_throttle_messages = \"50/1\"\n");
    send(
        daemon.smtp_port(),
        360,
        4,
        "one@first.test,two@second.test",
        "paced",
    );
    let messages = sink.wait_for_messages(720, Duration::from_secs(60));
    let mut arrivals: Vec<f64> = messages.iter().map(|e| e.unix_s).collect();
    arrivals.sort_by(f64::total_cmp);
    let from = arrivals[0] + 1.0;
    let to = from + WINDOW_S;
    assert!(
        *arrivals.last().unwrap() >= to,
        "the run must outlast the window"
    );
    let in_window = arrivals.iter().filter(|t| (from..to).contains(*t)).count();
    let rate = in_window as f64 / WINDOW_S;
    eprintln!("e2e: {in_window} deliveries in {WINDOW_S} s: {rate:.1}/s (throttle 50/1)");
    assert!(
        (rate - RATE_PER_S).abs() <= RATE_PER_S * 0.1,
        "delivered {rate:.1}/s, throttle 50/s"
    );
}

/// Goal: `max_deliveries_per_connection = N` ends each connection after N
/// messages (QUIT, then a new connection for the rest): M messages take
/// ceil(M/N) connections. Method: one connection at a time
/// (`max_outbound_connections = 1`), 10 messages sent one after another
/// with N = 4; the sink sees 3 connections carrying 4, 4 and 2.
#[test]
fn limits_max_deliveries_per_connection_reconnects_after_n_messages() {
    const MESSAGES: usize = 10;
    const PER_CONNECTION: usize = 4;
    let dir = TempDir::new("limits-per-conn");
    let sink = LimitsSink::start(&dir.join("sink"), 0);
    let daemon = start_daemon(
        &dir,
        sink.port,
        "max_outbound_connections = 1\nmax_deliveries_per_connection = 4\nidle_timeout = 1\n",
    );
    send(daemon.smtp_port(), MESSAGES, 1, "rcpt@per-conn.test", "per");
    sink.wait_for_messages(MESSAGES, ARRIVAL_TIMEOUT);
    // Every connection closed: the last one after idle_timeout.
    let closed = poll_until(Duration::from_secs(20), || {
        let events = sink.events();
        let opened = events.iter().filter(|e| e.kind == "open").count();
        let closed = events.iter().filter(|e| e.kind == "close").count();
        (opened == closed).then_some(events)
    })
    .expect("connections left open");
    let connections: Vec<u32> = closed
        .iter()
        .filter(|e| e.kind == "open")
        .map(|e| e.connection)
        .collect();
    let carried: Vec<usize> = connections
        .iter()
        .map(|c| {
            closed
                .iter()
                .filter(|e| e.kind == "message" && e.connection == *c)
                .count()
        })
        .collect();
    assert_eq!(
        connections.len(),
        MESSAGES.div_ceil(PER_CONNECTION),
        "connections carrying {carried:?}"
    );
    assert_eq!(carried, vec![4, 4, 2]);
}

/// Goal: a host that refused a connection is skipped, for
/// `host_failure_retry`, by every domain that uses it (not only the one
/// whose connection failed), and tried again after. Method: the gateway
/// port has no listener; a message to `first.test` fails to connect (T
/// line: connection refused); one to `second.test` right after is not
/// tried (T line: skipped, host_failure_retry); then a sink starts on that
/// port and both arrive once the memory has lapsed.
#[test]
fn limits_a_dead_host_is_skipped_by_every_domain_then_retried() {
    let dir = TempDir::new("limits-dead-host");
    let port = free_port();
    let mut config = TestConfig::new(port);
    config.host_failure_retry_s = 6;
    let daemon = Daemon::start(dir.path(), &config.render());
    let smtp = daemon.smtp_port();
    let first = swaks(smtp, &["--to", "rcpt@first.test", "--from", "s@send.test"]);
    assert!(first.status.success(), "swaks to first.test");
    let t_lines = |domain: &str| {
        let lines = daemon.mainlog_lines();
        parse_mainlog(&lines)
            .into_iter()
            .filter(|l| l.kind() == "T" && l.field(5) == domain)
            .map(|l| l.field(13).to_string())
            .collect::<Vec<String>>()
    };
    let refused = poll_until(ARRIVAL_TIMEOUT, || t_lines("first.test").first().cloned())
        .expect("a T line for first.test");
    assert!(refused.contains("failed"), "first.test: {refused}");
    let second = swaks(smtp, &["--to", "rcpt@second.test", "--from", "s@send.test"]);
    assert!(second.status.success(), "swaks to second.test");
    let skipped = poll_until(ARRIVAL_TIMEOUT, || t_lines("second.test").first().cloned())
        .expect("a T line for second.test");
    assert!(
        skipped.contains("skipped") && skipped.contains("host_failure_retry"),
        "second.test was not kept off the dead host: {skipped}"
    );
    let sink = ecelerity_tests::Sink::start(&dir.join("sink"), port);
    sink.wait_for_messages(2, ARRIVAL_TIMEOUT);
}

/// Goal: `max_outbound_connections` in a `host` scope caps the connections
/// to that host's address over every domain (and the shards their queues
/// live on), and a queue that finds the host full waits without a T line.
/// Method: two domains (two queues, 32 connections each allowed) share
/// the one gateway host, limited to 2; the sink takes 300 ms per DATA;
/// 30 messages each to both domains. The sink never sees a third
/// connection, sees two, and the mainlog has a D for all 60 and no T.
#[test]
fn limits_a_host_scope_caps_connections_over_every_domain() {
    let dir = TempDir::new("limits-host");
    let sink = LimitsSink::start(&dir.join("sink"), 300);
    let daemon = start_daemon(
        &dir,
        sink.port,
        "host \"127.0.0.1\" { max_outbound_connections = 2 }\n",
    );
    send(
        daemon.smtp_port(),
        30,
        6,
        "one@first.test,two@second.test",
        "host",
    );
    sink.wait_for_messages(60, ARRIVAL_TIMEOUT);
    let peak = sink
        .events()
        .iter()
        .filter_map(|e| e.open_now)
        .max()
        .unwrap_or(0);
    assert_eq!(peak, 2, "the most connections open at once to the host");
    let lines = daemon.wait_for_kind("D", 60, ARRIVAL_TIMEOUT);
    let kinds = ecelerity_tests::count_kinds(&lines);
    assert_eq!(
        kinds.get("T"),
        None,
        "waiting for the host is no failure: {kinds:?}"
    );
}

/// Goal: `outbound_throttle_connections = "2/1"` opens 2 connections per
/// second (after a burst of 2), and every message still arrives. Method:
/// `max_deliveries_per_connection = 1`, so each of 24 messages needs a
/// connection of its own (about 11 s of work at 2/s); the sink stamps each
/// connection it accepts. In the 5 s after the first, the bucket allows
/// 1 (the burst's second) + 10; a stalled queue is retried at the 100 ms
/// tick, so 8..=13 is the tolerance (without the throttle, all 24 would
/// open within a second or so).
#[test]
fn limits_outbound_throttle_connections_paces_connection_openings() {
    const MESSAGES: usize = 24;
    const WINDOW_S: f64 = 5.0;
    let dir = TempDir::new("limits-throttle-conns");
    let sink = LimitsSink::start(&dir.join("sink"), 0);
    let daemon = start_daemon(
        &dir,
        sink.port,
        "outbound_throttle_connections = \"2/1\"\nmax_deliveries_per_connection = 1\n",
    );
    send(
        daemon.smtp_port(),
        MESSAGES,
        4,
        "rcpt@conn-paced.test",
        "cpaced",
    );
    sink.wait_for_messages(MESSAGES, Duration::from_secs(90));
    let events = sink.events();
    let mut opens: Vec<f64> = events
        .iter()
        .filter(|e| e.kind == "open")
        .map(|e| e.unix_s)
        .collect();
    opens.sort_by(f64::total_cmp);
    for open in events.iter().filter(|e| e.kind == "open") {
        let carried = events
            .iter()
            .filter(|e| e.kind == "message" && e.connection == open.connection)
            .count();
        assert!(
            carried <= 1,
            "connection {} carried {carried} messages",
            open.connection
        );
    }
    let first = opens[0];
    let last = *opens.last().unwrap();
    assert!(
        last >= first + WINDOW_S,
        "the openings must outlast the window: {:.2} s",
        last - first
    );
    let in_window = opens
        .iter()
        .filter(|t| **t > first && **t <= first + WINDOW_S)
        .count();
    eprintln!(
        "e2e: {in_window} connections opened in the {WINDOW_S} s after the first, {} in {:.2} s",
        opens.len(),
        last - first
    );
    assert!(
        (8..=13).contains(&in_window),
        "{in_window} connections opened in {WINDOW_S} s, throttle 2/s"
    );
}

/// Goal: a receiver answering 4xx to everything is backed off after
/// `TRANSIENT_STORM_TRANSACTIONS` (10) all-4xx transactions in a row on
/// one connection: no connection to it for `host_failure_retry`, the
/// messages meanwhile get T lines saying it is skipped, a domain on
/// another server is not held up, and the server is tried again after.
/// Method: storm.test goes (one connection at a time) to a sink that
/// answers 451 to every RCPT; 12 messages to it. Once the sink has seen a
/// connection with 10 refusals close, 3 messages to calm.test (its own
/// gateway, a second sink) must arrive within the 5 s window; the storm
/// sink sees no connection for at least 4 of its 5 s, then one again.
#[test]
fn limits_a_4xx_storm_backs_off_that_server_only() {
    const RETRY_S: f64 = 5.0;
    const STORM: usize = 10;
    let dir = TempDir::new("limits-storm");
    let storm = LimitsSink::start_with(&dir.join("storm"), 0, "451 4.7.1 storm: try later");
    let calm = LimitsSink::start(&dir.join("calm"), 0);
    let mut config = TestConfig::new(storm.port);
    config.host_failure_retry_s = RETRY_S as u32;
    config.extra = format!(
        "domain \"storm.test\" {{ max_outbound_connections = 1 }}\n\
         domain \"calm.test\" {{ gateway = \"127.0.0.1:{}\" }}\n",
        calm.port
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    send(daemon.smtp_port(), 12, 2, "rcpt@storm.test", "storm");
    // The connection that took the storm, and when it closed.
    let (storm_connection, storm_end) = poll_until(Duration::from_secs(60), || {
        let events = storm.events();
        let connection = events
            .iter()
            .filter(|e| e.kind == "open")
            .map(|e| e.connection)
            .find(|c| {
                events
                    .iter()
                    .filter(|e| e.kind == "refuse" && e.connection == *c)
                    .count()
                    >= STORM
            })?;
        let closed = events
            .iter()
            .find(|e| e.kind == "close" && e.connection == connection)?;
        Some((connection, closed.unix_s))
    })
    .unwrap_or_else(|| panic!("no connection took {STORM} refusals: {:?}", storm.events()));
    // The other server still gets its mail meanwhile.
    send(daemon.smtp_port(), 3, 1, "rcpt@calm.test", "calm");
    let calm_arrivals = calm.wait_for_messages(3, Duration::from_secs(30));
    let calm_last = calm_arrivals
        .iter()
        .map(|e| e.unix_s)
        .fold(f64::MIN, f64::max);
    assert!(
        calm_last < storm_end + RETRY_S,
        "calm.test arrived {:.2} s after the storm, not within the {RETRY_S} s back-off",
        calm_last - storm_end
    );
    // T lines: storm.test's retries skip the server.
    let skipped = poll_until(Duration::from_secs(30), || {
        let lines = daemon.mainlog_lines();
        parse_mainlog(&lines)
            .into_iter()
            .filter(|l| l.kind() == "T" && l.field(5) == "storm.test")
            .map(|l| l.field(13).to_string())
            .find(|reply| reply.contains("skipped") && reply.contains("host_failure_retry"))
    });
    assert!(
        skipped.is_some(),
        "no T line for storm.test says it is skipped (host_failure_retry)"
    );
    // The storm server is tried again, but not before most of the window.
    let next_open = poll_until(Duration::from_secs(30), || {
        storm
            .events()
            .iter()
            .find(|e| e.kind == "open" && e.connection > storm_connection)
            .map(|e| e.unix_s)
    })
    .expect("the storm server is never tried again");
    let gap = next_open - storm_end;
    eprintln!("e2e: after the storm the server was tried again {gap:.2} s later");
    assert!(
        gap >= RETRY_S * 0.8,
        "a new connection {gap:.2} s after the storm, host_failure_retry {RETRY_S} s"
    );
}
