//! `ec_ctl`: starting, querying and stopping the daemon as an operator does.

use std::process::{Command, Output};
use std::time::Duration;

use ecelerity_tests::{
    bin, free_port, poll_until, process_alive, run, swaks, PidFileGuard, Sink, TempDir, TestConfig,
    ARRIVAL_TIMEOUT, CONFIG_FILE_NAME,
};

/// How long `ec_ctl start` and `ec_ctl stop` may take.
const EC_CTL_TIMEOUT: Duration = Duration::from_secs(60);

fn ec_ctl(dir: &TempDir, action: &str) -> Output {
    run(
        Command::new(bin("ec_ctl"))
            .args(["--config", CONFIG_FILE_NAME, action])
            .current_dir(dir.path()),
        EC_CTL_TIMEOUT,
    )
}

fn text(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Goal: the operator life cycle works. Method: start, status (running,
/// exit 0, pid matches the pid file), a message goes through, stop (process
/// gone), status (not running, exit 3).
#[test]
fn ec_ctl_start_status_stop() {
    let dir = TempDir::new("ec-ctl");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    std::fs::write(dir.join(CONFIG_FILE_NAME), config.render()).unwrap();
    // The daemon is not our child: kill it through the pid file if a step fails.
    let pid_file = PidFileGuard {
        path: dir.join("ecelerity.pid"),
    };

    let start = ec_ctl(&dir, "start");
    assert!(start.status.success(), "start: {}", text(&start));

    let status = ec_ctl(&dir, "status");
    assert_eq!(status.status.code(), Some(0), "status: {}", text(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    let pid = pid_file.read_pid().expect("pid file after start");
    assert!(
        stdout.contains(&format!("ecelerity is running (pid {pid})")),
        "status: {}",
        text(&status)
    );
    assert!(process_alive(pid));

    let output = swaks(
        config.smtp_port,
        &[
            "--to",
            "ctl@example.com",
            "--from",
            "op@example.org",
            "--body",
            "via ec_ctl",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    sink.wait_for_messages(1, ARRIVAL_TIMEOUT);

    let stop = ec_ctl(&dir, "stop");
    assert!(stop.status.success(), "stop: {}", text(&stop));
    // `stop` returns once the process is gone; allow a moment for reaping
    // by init when the daemon was double-forked.
    let gone = poll_until(Duration::from_secs(5), || {
        (!process_alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "pid {pid} still alive after ec_ctl stop");

    let status = ec_ctl(&dir, "status");
    assert_eq!(
        status.status.code(),
        Some(3),
        "status after stop: {}",
        text(&status)
    );
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("ecelerity is not running"),
        "status after stop: {}",
        text(&status)
    );
}
