//! systemd's `Type=notify` protocol, with the test as systemd: it binds the
//! unix datagram socket, starts the real daemon with `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC` set, and reads what arrives.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use ecelerity_testkit::ecelerity_command;
use ecelerity_tests::{
    bin, free_port, smtp_banner_ok, ChildGuard, Sink, TempDir, TestConfig, CONFIG_FILE_NAME,
    READY_TIMEOUT, STOP_TIMEOUT,
};

/// The watchdog period the test asks for (the daemon pings every half).
const WATCHDOG_USEC: u64 = 1_000_000;
/// Pings the test waits for.
const WATCHDOG_PINGS: usize = 3;

/// The next datagram, or `None` by `deadline`.
fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Goal: READY=1 once the daemon serves, WATCHDOG=1 repeatedly while it
/// runs, STOPPING=1 at a graceful stop. Method: act as systemd; check the
/// ESMTP listener answers 220 as soon as READY=1 arrives, count pings over
/// a few periods, then SIGTERM and wait for STOPPING=1 and a clean exit.
#[test]
fn notify_ready_watchdog_and_stopping() {
    let dir = TempDir::new("systemd-notify");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let smtp_port = config.smtp_port;
    std::fs::write(dir.join(CONFIG_FILE_NAME), config.render()).unwrap();
    let notify_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();

    let child = ecelerity_command(&bin("ecelerity"), dir.path(), CONFIG_FILE_NAME.as_ref())
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .stdout(std::fs::File::create(dir.join("daemon.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("daemon.stderr")).unwrap())
        .spawn()
        .expect("spawn ecelerity");
    let mut daemon = ChildGuard::new("ecelerity", child);
    let stderr = || std::fs::read_to_string(dir.join("daemon.stderr")).unwrap_or_default();

    let deadline = Instant::now() + READY_TIMEOUT;
    let first = next_message(&socket, deadline)
        .unwrap_or_else(|| panic!("no notification within {READY_TIMEOUT:?}:\n{}", stderr()));
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "the first notification is not READY=1: {first:?}"
    );
    let pid = daemon.pid().unwrap();
    assert!(
        first.lines().any(|l| l == format!("MAINPID={pid}")),
        "{first:?}"
    );
    assert!(
        smtp_banner_ok(smtp_port),
        "READY=1 came before the listener answers 220"
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let mut pings = 0;
    while pings < WATCHDOG_PINGS {
        let message = next_message(&socket, deadline).unwrap_or_else(|| {
            panic!(
                "{pings} of {WATCHDOG_PINGS} WATCHDOG=1 in 30 s:\n{}",
                stderr()
            )
        });
        assert_eq!(message, "WATCHDOG=1", "unexpected notification");
        pings += 1;
    }
    // Three pings at a 500 ms pace take at least a second: pings are paced,
    // not sent on every loop.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{WATCHDOG_PINGS} pings in {:?}",
        started.elapsed()
    );

    daemon.signal(libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut stopping = false;
    while let Some(message) = next_message(&socket, deadline) {
        if message == "STOPPING=1" {
            stopping = true;
            break;
        }
        assert_eq!(message, "WATCHDOG=1", "unexpected notification");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM:\n{}", stderr());
    let status = daemon
        .wait_timeout(STOP_TIMEOUT)
        .expect("daemon did not exit");
    assert!(status.success(), "exit {status}:\n{}", stderr());
}
