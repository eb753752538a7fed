//! Loopback ports and readiness: a port that was free a moment ago, the
//! probe that reads an SMTP greeting, and the wait every launcher does
//! between spawning a server and using it.
//! Owns: the short-lived probe connections it opens.
//! May call: std::net on 127.0.0.1, `process::ChildGuard` (to notice an
//! early exit), `files::file_tail` (to quote the log).
//! Never: an address other than 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::files::file_tail;
use crate::process::ChildGuard;
use crate::Error;

/// Connect and read timeout of one banner probe.
const BANNER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between probes while a server starts. Start-up times are
/// measured (`ecbench scenario queue`), so this is also their resolution.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Lowest port handed out by [`free_port`].
pub const TEST_PORT_MIN: u16 = 20_000;
/// Where the kernel's ephemeral range starts when
/// /proc/sys/net/ipv4/ip_local_port_range cannot be read (Linux default).
const EPHEMERAL_PORT_MIN_DEFAULT: u16 = 32_768;
/// Ports tried before giving up.
const FREE_PORT_TRIES_MAX: u32 = 4_096;

/// The first port of the kernel's ephemeral range.
fn ephemeral_port_min() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p: &u16| p > TEST_PORT_MIN + 1_000)
        .unwrap_or(EPHEMERAL_PORT_MIN_DEFAULT)
}

/// Folder under the temporary directory where `free_port` reserves the
/// ports it hands out, one empty file per port, across processes.
const PORT_RESERVATION_DIR: &str = "ecelerity-test-ports";
/// How long a reservation keeps a port from every other process: longer
/// than any test takes from picking a port to binding it.
const PORT_RESERVATION_TTL: Duration = Duration::from_secs(300);

/// Reserves `port` for this process: false when another process reserved
/// it less than PORT_RESERVATION_TTL ago. Where no reservation can be
/// written (no temporary directory), every port counts as reserved by us.
fn reserve_port(port: u16) -> bool {
    use std::fs::{self, OpenOptions};
    let dir = std::env::temp_dir().join(PORT_RESERVATION_DIR);
    let _ = fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let create = || OpenOptions::new().write(true).create_new(true).open(&path);
    match create() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let stale = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= PORT_RESERVATION_TTL);
            // A stale reservation is taken over: removed, then created
            // anew, so of two processes taking it over one wins.
            stale && fs::remove_file(&path).is_ok() && create().is_ok()
        }
        Err(_) => true,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read,
/// closed) and that no other test process was handed in the last
/// PORT_RESERVATION_TTL (nextest runs every test in a process of its own:
/// without the reservation two of them could pick the same port before
/// either bound it), below the kernel's ephemeral range. A test often picks a port
/// for a sink it starts later (a gateway that comes up after a while):
/// a port from the ephemeral range could meanwhile become the source port
/// of one of the many outbound connections of the suite's daemons, and
/// the sink could not bind it. Ports below the range are never handed out
/// as source ports. Each process starts at its own place in the range and
/// walks it, so parallel test processes rarely meet. Panics when no port
/// in the range can be bound.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let top = ephemeral_port_min();
    let span = u32::from(top - TEST_PORT_MIN);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..FREE_PORT_TRIES_MAX {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        // A stride coprime with most spans spreads one process's ports.
        let offset = seed.wrapping_add(step.wrapping_mul(7_919)) % span;
        let port = TEST_PORT_MIN + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && reserve_port(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {TEST_PORT_MIN}..{top}");
}

/// Connect to 127.0.0.1:`port` once and read the greeting's first line.
/// Returns true when it starts with "220". Sends QUIT so the server sees a
/// clean session.
pub fn smtp_banner_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, BANNER_READ_TIMEOUT) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(BANNER_READ_TIMEOUT));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    let ok = matches!(reader.read_line(&mut line), Ok(n) if n > 0) && line.starts_with("220");
    let _ = (&stream).write_all(b"QUIT\r\n");
    let _ = stream.shutdown(Shutdown::Write);
    ok
}

/// Wait until 127.0.0.1:`port` greets with 220; returns how long that took.
/// Fails early when `child` (the server, if it is our child) exits, and at
/// `timeout`; either error quotes the tail of `log`. `what` names the
/// server in the error.
pub fn wait_for_greeting(
    what: &str,
    port: u16,
    mut child: Option<&mut ChildGuard>,
    log: &Path,
    timeout: Duration,
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        if smtp_banner_ok(port) {
            return Ok(started.elapsed());
        }
        if let Some(status) = child.as_deref_mut().and_then(ChildGuard::try_wait) {
            return Err(Error::ExitedEarly {
                what: what.to_string(),
                port,
                status,
                log: log.to_path_buf(),
                tail: file_tail(log),
            });
        }
        if started.elapsed() >= timeout {
            return Err(Error::NotReady {
                what: what.to_string(),
                port,
                timeout,
                log: log.to_path_buf(),
                tail: file_tail(log),
            });
        }
        thread::sleep(READY_POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_differ() {
        let top = ephemeral_port_min();
        let a = free_port();
        let b = free_port();
        for p in [a, b] {
            assert!((TEST_PORT_MIN..top).contains(&p), "{p}");
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
        assert_ne!(a, b);
    }

    #[test]
    fn a_reserved_port_is_not_handed_out_again_until_its_reservation_expires() {
        let port = free_port();
        assert!(!reserve_port(port), "reserved by the free_port call");
        let path = std::env::temp_dir()
            .join(PORT_RESERVATION_DIR)
            .join(port.to_string());
        let old = std::time::SystemTime::now() - PORT_RESERVATION_TTL - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("age the reservation");
        assert!(reserve_port(port), "a stale reservation is taken over");
        assert!(!reserve_port(port), "and is fresh again");
    }

    use super::*;
    use std::process::Command;

    #[test]
    fn banner_probe_tells_a_greeting_from_silence_and_from_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            for greeting in [&b"220 ok\r\n"[..], b"554 no\r\n"] {
                let (mut stream, _) = listener.accept().unwrap();
                stream.write_all(greeting).unwrap();
            }
        });
        assert!(smtp_banner_ok(port));
        assert!(!smtp_banner_ok(port));
        server.join().unwrap();
        assert!(!smtp_banner_ok(free_port()));
    }

    #[test]
    fn greeting_wait_reports_an_early_exit_with_the_log() {
        let dir = std::env::temp_dir().join(format!("testkit-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        std::fs::write(&log, "cannot bind\n").unwrap();
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let mut guard = ChildGuard::new("server", child);
        let error = wait_for_greeting(
            "server",
            free_port(),
            Some(&mut guard),
            &log,
            Duration::from_secs(30),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("server exited (exit status: 7)"), "{text}");
        assert!(text.ends_with("cannot bind\n"), "{text}");
        let error = wait_for_greeting("idle", free_port(), None, &log, Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(error, Error::NotReady { .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
