//! Console status commands against a running daemon, through `ec_console`:
//! the full Momentum `summary`, `summary reset`, `pid`, `memory`,
//! `sysinfo`, `version`. Traffic comes from Python's smtplib
//! (tests/py/send.py) and is delivered to the aiosmtpd sink.

use ecelerity_tests::{poll_until, send_messages, summary_value, ARRIVAL_TIMEOUT};

use crate::common::Mta;

/// Messages sent before the first summary.
const FIRST_BATCH: usize = 5;
/// Messages sent after `summary reset`.
const SECOND_BATCH: usize = 2;

/// Every line Momentum's `summary` prints (MOMENTUM.md 5.2).
const MOMENTUM_SUMMARY_LABELS: [&str; 19] = [
    "Outbound Concurrency",
    "Inbound Concurrency",
    "Active Domains",
    "Active Queue Size",
    "Delayed Queue Size",
    "Destaged Queue Size",
    "Total Queue Size",
    "DNS A Queries",
    "DNS MX Queries",
    "Pending DNS Queries",
    "Query Rate",
    "Successfully Delivered Messages",
    "Failed Messages",
    "Rejected Messages",
    "Received Messages",
    "Delivery Rate",
    "Reception Rate",
    "Statistics Last Reset",
    "Uptime",
];

fn console_text(mta: &Mta, input: &str) -> String {
    let output = mta.daemon.console(input);
    assert!(
        output.status.success(),
        "ec_console {input:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The rate on a `Label: 1.25 messages/second` line.
fn rate(text: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        words.next()?.ends_with("/second").then_some(value)
    })
}

/// Polls `summary` until Received and Delivered both equal `n`.
fn summary_when_delivered(mta: &Mta, n: u64) -> String {
    let mut last = String::new();
    let settled = poll_until(ARRIVAL_TIMEOUT, || {
        last = console_text(mta, "summary\n");
        (summary_value(&last, "Received Messages") == Some(n)
            && summary_value(&last, "Successfully Delivered Messages") == Some(n))
        .then_some(())
    });
    assert!(settled.is_some(), "summary never showed {n}/{n}:\n{last}");
    last
}

/// Goal: `summary` prints every Momentum line with numbers that match the
/// traffic, and `summary reset` zeroes the counters (not the gauges).
/// Method: send 5 messages, check the summary; reset; check zeros and the
/// reset age; send 2 more and check they alone are counted.
#[test]
fn summary_has_every_momentum_line_and_reset_zeroes_counters() {
    let mta = Mta::start("console-ops-summary");
    let report = send_messages(
        mta.port(),
        &["--count", &FIRST_BATCH.to_string()],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(report.accepted().len(), FIRST_BATCH, "{}", report.stderr);
    mta.sink.wait_for_messages(FIRST_BATCH, ARRIVAL_TIMEOUT);
    let text = summary_when_delivered(&mta, FIRST_BATCH as u64);
    for label in MOMENTUM_SUMMARY_LABELS {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{label}: "))
                    || l.trim_start().starts_with(&format!("{label}:"))),
            "no `{label}` line:\n{text}"
        );
    }
    assert_eq!(summary_value(&text, "Failed Messages"), Some(0), "{text}");
    assert_eq!(summary_value(&text, "Rejected Messages"), Some(0), "{text}");
    // Every message went to the gateway by IP: no DNS question was asked.
    assert_eq!(summary_value(&text, "DNS MX Queries"), Some(0), "{text}");
    assert!(
        rate(&text, "Reception Rate").is_some_and(|r| r > 0.0),
        "{text}"
    );
    assert!(
        rate(&text, "Delivery Rate").is_some_and(|r| r > 0.0),
        "{text}"
    );
    assert_eq!(rate(&text, "Query Rate"), Some(0.0), "{text}");
    let uptime = summary_value(&text, "Uptime").expect("Uptime");
    let since = summary_value(&text, "Statistics Last Reset").expect("Last Reset");
    assert!(since <= uptime + 1, "{text}");

    let reply = console_text(&mta, "summary reset\n");
    assert!(reply.contains("reset"), "{reply}");
    let text = console_text(&mta, "summary\n");
    assert_eq!(summary_value(&text, "Received Messages"), Some(0), "{text}");
    assert_eq!(
        summary_value(&text, "Successfully Delivered Messages"),
        Some(0),
        "{text}"
    );
    assert_eq!(rate(&text, "Reception Rate"), Some(0.0), "{text}");
    let since = summary_value(&text, "Statistics Last Reset").expect("Last Reset");
    assert!(since <= 5, "reset {since} s ago?\n{text}");

    let report = send_messages(
        mta.port(),
        &["--count", &SECOND_BATCH.to_string()],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(report.accepted().len(), SECOND_BATCH, "{}", report.stderr);
    mta.sink
        .wait_for_messages(FIRST_BATCH + SECOND_BATCH, ARRIVAL_TIMEOUT);
    summary_when_delivered(&mta, SECOND_BATCH as u64);
}

/// Goal: `pid`, `memory`, `sysinfo` and `version` answer with true facts.
/// Method: compare `pid` with the child's pid, and read /proc ourselves to
/// check `memory` is in the right range.
#[test]
fn pid_memory_sysinfo_and_version_tell_the_truth() {
    let mta = Mta::start("console-ops-pid");
    let pid = mta.daemon.pid().expect("daemon pid");
    let text = console_text(&mta, "pid\n");
    assert_eq!(text.trim(), pid.to_string(), "{text}");

    let text = console_text(&mta, "memory\n");
    let rss = summary_value(&text, "Resident Memory").expect("Resident Memory");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ours: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(rss > 1 << 20, "RSS {rss} bytes?\n{text}");
    assert!(
        rss / 4 < ours * 1024 && ours * 1024 / 4 < rss,
        "console says {rss} bytes, /proc says {ours} kB"
    );

    let text = console_text(&mta, "sysinfo\n");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(summary_value(&text, "CPUs"), Some(cpus), "{text}");
    assert!(text.contains("Load Average:"), "{text}");
    assert!(
        summary_value(&text, "Total Memory").is_some_and(|m| m > 0),
        "{text}"
    );

    let text = console_text(&mta, "version\n");
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("ecelerity "), "{text}");
    assert!(text.contains("Product type:"), "{text}");
}

/// `ec_console ADDRESS` with `input` on stdin.
fn tcp_console(address: &str, input: &str) -> std::process::Output {
    ecelerity_tests::run_with_input(
        std::process::Command::new(ecelerity_tests::bin("ec_console")).arg(address),
        input.as_bytes(),
        ecelerity_tests::STOP_TIMEOUT,
    )
}

/// Goal: a TCP Control_Listener serves the console to the peers its
/// `Peer` rules allow (the most specific netblock decides) and refuses the
/// others with one clear line, then closes. Method: two TCP listens next
/// to the Unix socket: one whose Listen-level `Peer "127.0.0.1"` allows us
/// although the listener-level `Peer "127.0.0.0/8"` does not, one that
/// inherits only the refusal; `ec_console` against both, and a raw
/// connection to the refusing one. The allowing Listen's `timeout = 1`
/// closes an idle session.
#[test]
fn tcp_console_follows_peer_rules() {
    let (open_port, shut_port) = (ecelerity_tests::free_port(), ecelerity_tests::free_port());
    let mta = Mta::start_with("console-ops-tcp", |c| {
        c.extra.push_str(&format!(
            "Control_Listener {{\n  Peer \"127.0.0.0/8\" {{ Enable = false }}\n  \
             Listen \"127.0.0.1:{open_port}\" {{\n    timeout = 1\n    \
             Peer \"127.0.0.1\" {{ Enable = true }}\n  }}\n  \
             Listen \"127.0.0.1:{shut_port}\" {{ }}\n}}\n"
        ));
    });
    let open = format!("127.0.0.1:{open_port}");
    let output = tcp_console(&open, "pid\nsummary\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ec_console {open}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid = mta.daemon.pid().unwrap().to_string();
    assert_eq!(stdout.lines().next(), Some(pid.as_str()), "{stdout}");
    assert!(stdout.contains("Summary Statistics"), "{stdout}");
    // Batch mode with the command as arguments, too.
    let output = std::process::Command::new(ecelerity_tests::bin("ec_console"))
        .args([open.as_str(), "version"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ecelerity "));
    // The Unix socket is not subject to Peer rules.
    assert!(console_text(&mta, "pid\n").contains(&pid));

    let shut = format!("127.0.0.1:{shut_port}");
    let output = tcp_console(&shut, "summary\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Access denied: 127.0.0.1"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing served");

    use std::io::Read;
    let mut raw = std::net::TcpStream::connect(&shut).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut said = String::new();
    raw.read_to_string(&mut said)
        .expect("closed after the refusal");
    assert_eq!(
        said,
        "Access denied: 127.0.0.1 may not use this console (Control_Listener Peer rules)\n"
    );

    // An idle session on the allowing Listen is closed after its timeout.
    let mut idle = std::net::TcpStream::connect(&open).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let began = std::time::Instant::now();
    let mut said = String::new();
    idle.read_to_string(&mut said)
        .expect("the daemon closes an idle console");
    assert!(said.is_empty(), "{said}");
    assert!(
        began.elapsed() >= std::time::Duration::from_millis(900),
        "closed after {:?}, before the timeout",
        began.elapsed()
    );
}
