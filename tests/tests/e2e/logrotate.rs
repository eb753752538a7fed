//! Log rotation as logrotate (or Momentum's ec_rotate) does it: rename the
//! files, then `reopen logs` on the console or SIGUSR1. Lines written
//! before the reopen are in the renamed files, lines after it in new files
//! at the configured paths; none lost, none twice. Also the mainlog `M`
//! heartbeat.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ecelerity_tests::{
    complete_lines, free_port, parse_mainlog, poll_until, send_py, swaks, Background, Daemon, Sink,
    TempDir, TestConfig, ARRIVAL_TIMEOUT,
};

/// Messages the client sends across the rotation.
const MESSAGES: usize = 400;
const CLIENT_THREADS: usize = 4;
/// The heartbeat period the test configures (seconds).
const HEARTBEAT_S: u64 = 1;
const ALL_LOGGED_TIMEOUT: Duration = Duration::from_secs(120);

/// How many R and D lines each (MTA) message id has over `files`.
fn kinds_per_message(files: &[&Path]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for file in files {
        for line in parse_mainlog(&complete_lines(file)) {
            if matches!(line.kind(), "R" | "D") {
                let key = (line.message_id().to_string(), line.kind().to_string());
                *counts.entry(key).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Goal: `reopen logs` after a rename loses and doubles no line. Method:
/// 4 smtplib connections send 400 messages; once some are logged the
/// mainlog and paniclog are renamed to `.1` and the console says `reopen
/// logs`; later SIGUSR1 after a second rename to `.2`. Over the three
/// mainlog files every accepted message has exactly one R and one D line;
/// the renamed files stop growing and the new mainlog gets lines; the new
/// paniclog exists; `M` heartbeat lines appear every second.
#[test]
fn reopen_logs_after_a_rename_loses_and_doubles_nothing() {
    let dir = TempDir::new("logrotate");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let text = config.render();
    let logger = "bouncelog = \"log/bouncelog.ec\"";
    assert!(text.contains(logger), "{text}");
    let text = text.replace(
        logger,
        &format!("{logger} heartbeat = {HEARTBEAT_S} acctlog = \"log/acctlog.ec\""),
    );
    let daemon = Daemon::start(dir.path(), &text);
    let log = |name: &str| dir.join("log").join(name);
    assert!(log("acctlog.ec").exists(), "the acctlog was not created");

    let mut client = send_py(daemon.smtp_port());
    client.args([
        "--count",
        &MESSAGES.to_string(),
        "--threads",
        &CLIENT_THREADS.to_string(),
        "--prefix",
        "rotate",
        "--deadline",
        "120",
    ]);
    let mut background = Background::spawn("rotate", client, dir.path());
    daemon.wait_for_kind("D", 20, ARRIVAL_TIMEOUT);

    std::fs::rename(log("mainlog.ec"), log("mainlog.ec.1")).unwrap();
    std::fs::rename(log("paniclog.ec"), log("paniclog.ec.1")).unwrap();
    let still_sending = background.try_wait().is_none();
    let output = daemon.console("reopen logs\n");
    let reply = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(reply.trim_end(), "Logs reopened", "{reply}");
    assert!(
        still_sending,
        "the client finished before the rotation: send more"
    );
    let rotated_size = std::fs::metadata(log("mainlog.ec.1")).unwrap().len();
    assert!(log("paniclog.ec").exists(), "no new paniclog after reopen");

    let report = background.wait_report(ALL_LOGGED_TIMEOUT);
    let accepted = report.accepted().len();
    assert_eq!(accepted, MESSAGES, "{}", report.stderr);

    // Second rotation by signal, with one more message after it.
    let wait_all_logged = |files: &[&Path], messages: usize| {
        poll_until(ALL_LOGGED_TIMEOUT, || {
            let counts = kinds_per_message(files);
            // R and D lines come from different shards' log buffers: a
            // message's D may be on disk before its R.
            let d = counts.keys().filter(|(_, k)| k == "D").count();
            let r = counts.keys().filter(|(_, k)| k == "R").count();
            (d >= messages && r >= messages).then_some(counts)
        })
        .unwrap_or_else(|| panic!("not every message has its R and D lines: {files:?}"))
    };
    wait_all_logged(&[&log("mainlog.ec.1"), &log("mainlog.ec")], MESSAGES);
    std::fs::rename(log("mainlog.ec"), log("mainlog.ec.2")).unwrap();
    let pid = daemon.pid().expect("daemon pid") as libc::pid_t;
    // SAFETY: kill sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert!(
        poll_until(ARRIVAL_TIMEOUT, || log("mainlog.ec").exists().then_some(())).is_some(),
        "SIGUSR1 did not reopen the mainlog"
    );
    let second_size = std::fs::metadata(log("mainlog.ec.2")).unwrap().len();
    let output = swaks(
        daemon.smtp_port(),
        &["--to", "last@example.com", "--from", "ops@example.org"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let files = [
        &*log("mainlog.ec.1"),
        &*log("mainlog.ec.2"),
        &*log("mainlog.ec"),
    ];
    let counts = wait_all_logged(&files, MESSAGES + 1);
    let received = counts.keys().filter(|(_, k)| k == "R").count();
    assert_eq!(received, MESSAGES + 1, "R lines of distinct messages");
    for (key, n) in &counts {
        assert_eq!(*n, 1, "{key:?} logged {n} times");
    }
    for (id, kind) in counts.keys() {
        let other = if kind == "R" { "D" } else { "R" };
        assert!(
            counts.contains_key(&(id.clone(), other.to_string())),
            "{id} has no {other}"
        );
    }
    assert_eq!(
        std::fs::metadata(log("mainlog.ec.1")).unwrap().len(),
        rotated_size,
        "the first renamed mainlog grew after `reopen logs`"
    );
    assert_eq!(
        std::fs::metadata(log("mainlog.ec.2")).unwrap().len(),
        second_size,
        "the second renamed mainlog grew after SIGUSR1"
    );
    let newest = parse_mainlog(&complete_lines(&log("mainlog.ec")));
    assert!(
        newest.iter().any(|l| l.kind() == "D"),
        "the new mainlog has no delivery"
    );

    // The heartbeat: `ts@@@@M` at least every few seconds.
    let heartbeats = |path: &Path| {
        complete_lines(path)
            .into_iter()
            .filter(|l| {
                let f: Vec<&str> = l.split('@').collect();
                f.len() == 5 && f[1..4].iter().all(|x| x.is_empty()) && f[4] == "M"
            })
            .count()
    };
    assert!(
        poll_until(Duration::from_secs(20), || (heartbeats(&log("mainlog.ec"))
            >= 2)
            .then_some(()))
        .is_some(),
        "no M heartbeat lines in the mainlog"
    );
    assert!(complete_lines(&log("paniclog.ec"))
        .iter()
        .any(|l| l.contains("logs reopened")));
}
