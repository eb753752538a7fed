//! SIGHUP as Momentum operators send it: a configuration reload. The
//! daemon says so in the paniclog, and keeps accepting and delivering.
//! (reload.rs checks what a reload changes.)

use std::time::Duration;

use ecelerity_tests::{file_tail, poll_until, swaks, ARRIVAL_TIMEOUT};

use crate::common::{every_reception_delivered, Mta};

/// Where TestConfig puts the paniclog, relative to the test directory.
const PANICLOG_RELATIVE: &str = "log/paniclog.ec";
/// What the daemon writes for each SIGHUP's reload.
const RELOADED_TEXT: &str = "config reload: Reconfigured from";
/// SIGHUPs sent: more than one shows the first did not change how the next
/// is handled.
const SIGHUPS: usize = 2;
/// How long the paniclog line may take to appear (the signal loop wakes
/// every 200 ms).
const LOG_TIMEOUT: Duration = Duration::from_secs(20);

/// Goal: SIGHUP reloads without stopping or disturbing the daemon. Method:
/// send SIGHUP twice to a running daemon; each reload is logged in the
/// paniclog;
/// the daemon still runs, relays a message to the sink with R and D in
/// the mainlog, and still stops cleanly on SIGTERM.
#[test]
fn sighup_reloads_and_mail_still_flows() {
    let mut mta = Mta::start("sighup");
    let pid = mta.daemon.pid().expect("daemon pid") as libc::pid_t;
    let paniclog = mta.dir.join(PANICLOG_RELATIVE);
    for sent in 1..=SIGHUPS {
        // SAFETY: kill sends a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        let logged = poll_until(LOG_TIMEOUT, || {
            let text = std::fs::read_to_string(&paniclog).unwrap_or_default();
            (text.matches(RELOADED_TEXT).count() >= sent).then_some(())
        });
        assert!(
            logged.is_some(),
            "SIGHUP {sent} not logged as a reload; paniclog:\n{}\nstderr:\n{}",
            file_tail(&paniclog),
            mta.daemon.stderr_text()
        );
    }
    assert!(
        mta.daemon.is_running(),
        "SIGHUP stopped the daemon; stderr:\n{}",
        mta.daemon.stderr_text()
    );

    let output = swaks(
        mta.port(),
        &[
            "--to",
            "after-hup@example.com",
            "--from",
            "ops@example.org",
            "--body",
            "sent after SIGHUP",
        ],
    );
    assert!(
        output.status.success(),
        "swaks failed after SIGHUP:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let arrived = mta.sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
    assert_eq!(arrived[0].rcpts, vec!["after-hup@example.com"]);
    mta.daemon.wait_for(
        "R then D after SIGHUP",
        ARRIVAL_TIMEOUT,
        every_reception_delivered,
    );
    mta.daemon.stop();
}
