//! systemd's service notification protocol (`Type=notify`), without a
//! crate: `READY=1` once every shard serves, `WATCHDOG=1` while every
//! shard's clock moves, `STOPPING=1` at a graceful stop.
//!
//! Owns: reading `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`, the datagram sent
//! to systemd, and the watchdog rule ([`Watchdog::check`], pure: each
//! shard's tick count in, whether to ping out).
//! May call: std. Never: the engine (the daemon hands it tick counts).
//!
//! Without `$NOTIFY_SOCKET` (ec_ctl, a shell, a test) every call is a
//! no-op, so the daemon behaves the same with and without systemd.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Shortest watchdog period honoured; a smaller `$WATCHDOG_USEC` is
/// raised to it (the daemon's main loop wakes every 200 ms).
pub const WATCHDOG_PERIOD_MS_MIN: u64 = 500;

/// The socket systemd listens on, if we were started by it.
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket);
    /// `None` when unset or empty.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let name = name.to_string_lossy().into_owned();
        if name.is_empty() {
            return Ok(None);
        }
        let target = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&name)?,
        };
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        }))
    }

    /// Sends one notification, e.g. `READY=1`.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.target)
            .map(|_| ())
    }
}

/// The watchdog period systemd asked for (`$WATCHDOG_USEC`, only when
/// `$WATCHDOG_PID` is unset or ours), halved as sd_watchdog_enabled(3)
/// advises.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_millis(
        (usec / 2000).max(WATCHDOG_PERIOD_MS_MIN / 2),
    ))
}

/// Pings only while every shard's clock moves: a shard stuck in a loop
/// (or a dead one) stops the pings and systemd restarts the daemon.
#[derive(Debug)]
pub struct Watchdog {
    interval: Duration,
    last_ping: Option<Instant>,
    last_ticks: Vec<u64>,
}

impl Watchdog {
    pub fn new(interval: Duration) -> Watchdog {
        Watchdog {
            interval,
            last_ping: None,
            last_ticks: Vec::new(),
        }
    }

    /// Whether to send `WATCHDOG=1` now, given each shard's tick count:
    /// at most once per interval, and only if every shard ticked since the
    /// last ping (the first check only records the counts).
    pub fn check(&mut self, now: Instant, ticks: &[u64]) -> bool {
        if self
            .last_ping
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return false;
        }
        let moved = self.last_ticks.len() == ticks.len()
            && self.last_ticks.iter().zip(ticks).all(|(a, b)| b > a);
        if self.last_ticks.len() != ticks.len() || moved {
            self.last_ticks = ticks.to_vec();
        }
        if moved {
            self.last_ping = Some(now);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_only_when_every_shard_moved_and_not_too_often() {
        let mut w = Watchdog::new(Duration::from_millis(1000));
        let t0 = Instant::now();
        assert!(!w.check(t0, &[1, 1]), "the first check only records");
        assert!(w.check(t0, &[2, 3]));
        let soon = t0 + Duration::from_millis(500);
        assert!(!w.check(soon, &[9, 9]), "not twice within the interval");
        let later = t0 + Duration::from_millis(1100);
        assert!(!w.check(later, &[9, 3]), "shard 1 is stuck");
        assert!(!w.check(later, &[10, 3]), "still stuck");
        assert!(w.check(later, &[10, 4]), "both moved since the last ping");
    }
}
