//! The pieces that the end-to-end tests (`tests/`, crate `ecelerity-tests`),
//! the benchmark tool (`bench/`, `ecbench`) and the crates' own test modules
//! share, so that each exists once:
//!
//! * `rng`: `Rng`, one small seeded generator (SplitMix64) for every seeded
//!   test, fuzz loop and load script.
//! * `process`: `ChildGuard` (a child killed and reaped on drop, alone or
//!   with its process group), `PidFileGuard`, `process_alive`, `run` and
//!   `run_with_input` (a command with a timeout), `poll_until`.
//! * `net`: `free_port`, the `220` banner probe and the readiness wait that
//!   every launcher uses.
//! * `files`: `file_tail` (the end of a log for a failure message) and
//!   `complete_lines` (a log's finished lines).
//! * `ecelerity`: where the built binaries are, the daemon's command line
//!   and `EcelerityConfig`, the config renderer for a relay on loopback.
//! * `postfix`: `Postfix`, a private Postfix instance relaying to a port.
//! * `postgres`: `Postgres`, a private PostgreSQL server on a Unix socket
//!   in a temp dir.
//! * `unbound`: `Unbound`, a private unbound serving fixed `test.` records
//!   on a loopback port.
//!
//! Owns: child processes it is handed or starts, the files of a private
//! Postfix instance under the directory it is given.
//! May call: std, libc (signals, euid), the Postfix binaries and unbound
//! under /usr/sbin, PostgreSQL's tools (as user postgres when root), `chown`.
//! Never: the engine or the spool (both take this crate as a
//! dev-dependency for `Rng`, so depending on them would be a cycle); the
//! system's own Postfix instance; the network beyond 127.0.0.1. Not
//! published; nothing in a shipped binary links it.

pub mod ecelerity;
pub mod files;
pub mod net;
pub mod postfix;
pub mod postgres;
pub mod process;
pub mod rng;
pub mod unbound;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use ecelerity::{
    bin_dir, ecelerity_command, EcelerityConfig, CONFIG_FILE_NAME, MAINLOG_RELATIVE,
};
pub use files::{complete_lines, file_tail, LOG_TAIL_BYTES_MAX};
pub use net::{free_port, smtp_banner_ok, wait_for_greeting};
pub use postfix::{Postfix, PostfixConfig, POSTFIX_BIN};
pub use postgres::Postgres;
pub use process::{
    poll_every, poll_until, process_alive, run, run_with_input, ChildGuard, PidFileGuard, Stopped,
    POLL_INTERVAL,
};
pub use rng::Rng;
pub use unbound::{Unbound, UNBOUND_BIN};

/// What a launcher could not do. Tests turn it into a panic; `ecbench`
/// reports it and skips the peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} exited ({status}) before it greeted on port {port}; {}:\n{tail}", .log.display())]
    ExitedEarly {
        what: String,
        port: u16,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} did not greet on port {port} within {timeout:?}; {}:\n{tail}", .log.display())]
    NotReady {
        what: String,
        port: u16,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("postfix is not installed ({POSTFIX_BIN} missing; tests/install-deps installs it)")]
    PostfixMissing,
    #[error("`postfix start` failed ({status}):\n{output}\nmaillog:\n{maillog}")]
    PostfixStart {
        status: ExitStatus,
        output: String,
        maillog: String,
    },
    #[error("postfix wrote no {} within {timeout:?}; maillog:\n{maillog}", .pid_file.display())]
    PostfixNoPid {
        pid_file: PathBuf,
        timeout: Duration,
        maillog: String,
    },
}

impl Error {
    /// An I/O error with what was being done (and on which path).
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
