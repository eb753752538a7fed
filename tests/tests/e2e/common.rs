//! Set-ups shared by the end-to-end tests: a sink plus a daemon delivering
//! to it, each in the test's own directory.

use ecelerity_tests::{free_port, Daemon, Sink, TempDir, TestConfig};

/// A daemon relaying everything to a running Python sink. Fields drop in
/// order: the daemon and sink are killed before the directory goes.
pub struct Mta {
    pub daemon: Daemon,
    pub sink: Sink,
    pub dir: TempDir,
}

impl Mta {
    /// Sink up, then the daemon with the default test config.
    pub fn start(label: &str) -> Mta {
        Mta::start_with(label, |_| {})
    }

    /// As `start`, letting the caller adjust the config first.
    pub fn start_with(label: &str, adjust: impl FnOnce(&mut TestConfig)) -> Mta {
        let dir = TempDir::new(label);
        let sink = Sink::start(&dir.join("sink"), free_port());
        let mut config = TestConfig::new(sink.port());
        adjust(&mut config);
        let daemon = Daemon::start(dir.path(), &config.render());
        Mta { daemon, sink, dir }
    }

    pub fn port(&self) -> u16 {
        self.daemon.smtp_port()
    }
}

/// Message-IDs of every mainlog line of `kind`.
pub fn message_ids_of_kind(lines: &[String], kind: &str) -> Vec<String> {
    ecelerity_tests::parse_mainlog(lines)
        .into_iter()
        .filter(|l| l.kind() == kind)
        .map(|l| l.message_id().to_string())
        .collect()
}

/// True when every message received (R) has been delivered (D).
pub fn every_reception_delivered(lines: &[String]) -> bool {
    let delivered = message_ids_of_kind(lines, "D");
    let received = message_ids_of_kind(lines, "R");
    !received.is_empty() && received.iter().all(|id| delivered.contains(id))
}
