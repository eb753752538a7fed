//! Child processes of a test or a benchmark: `ChildGuard` kills and reaps
//! its child when dropped (also while a test panics, so a failed test
//! never leaves a daemon or sink behind), `PidFileGuard` does the same for
//! a daemon that is not our child, `run` runs a command to completion under
//! a timeout, and `poll_until` is the one polling loop.
//! Owns: the `Child` handles it is given and the pipes of `run`.
//! May call: std::process, libc `kill` on those children (and on the
//! process group a `ChildGuard::new_group` child leads).
//! Never: a process it did not start or was not pointed at by a pid file.

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How often `poll_until` looks again. Pollers read whole log files, so
/// not much more often than this.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often a guard checks whether its child exited; `try_wait` is cheap
/// and stop times are measured, so finer than `POLL_INTERVAL`.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for a pipe's EOF after the command exited. A daemon
/// started in the background may keep the pipe open; we then take what came.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a child's pipe per read call.
const PIPE_CHUNK_BYTES: usize = 8192;

/// Poll `condition` every `POLL_INTERVAL` until it returns `Some` or
/// `timeout` passes.
pub fn poll_until<T>(timeout: Duration, condition: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL_INTERVAL, timeout, condition)
}

/// Poll `condition` every `interval` until it returns `Some` or `timeout`
/// passes. The condition runs at least once.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// How a `ChildGuard::terminate` ended.
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    /// From SIGTERM to the child's exit (or to the SIGKILL).
    pub took: Duration,
    /// The child exited on SIGTERM within the timeout.
    pub graceful: bool,
    /// None when the guard held no child.
    pub status: Option<ExitStatus>,
}

/// A child process that is killed (SIGKILL) and reaped when dropped. A
/// guard made with `new_group` owns a child started with
/// `process_group(0)`: its signals go to the whole group, so a wrapper
/// script takes its own children along.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    /// The child leads its own process group; signals go to the group.
    group: bool,
    /// Set once `try_wait` has reaped the child: from then on its pid may
    /// belong to another process and is never signalled again.
    exit_status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            group: false,
            exit_status: None,
        }
    }

    /// For a child spawned with `CommandExt::process_group(0)`.
    pub fn new_group(name: &str, child: Child) -> ChildGuard {
        let mut guard = ChildGuard::new(name, child);
        guard.group = true;
        guard
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Some(status) once the child has exited; None while it runs (or
    /// when the guard holds no child).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if self.exit_status.is_none() {
            self.exit_status = child.try_wait().expect("try_wait");
        }
        self.exit_status
    }

    /// Send `signal` to the child (or its group). A reaped child is not
    /// signalled (its pid may have been reused); its group still is, so
    /// that stragglers a wrapper left behind go too (a process group lives
    /// on while any member does, and its id is not reused until then).
    pub fn signal(&self, signal: libc::c_int) {
        let Some(child) = &self.child else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        let target = match (self.group, self.exit_status) {
            (true, _) => -pid,
            (false, None) => pid,
            (false, Some(_)) => return,
        };
        // SAFETY: kill(2) on our own unreaped child, or on the group it leads.
        let _ = unsafe { libc::kill(target, signal) };
    }

    /// Wait up to `timeout` for the child to exit; the child is kept (and
    /// the status returned) once it has.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_every(EXIT_POLL_INTERVAL, timeout, || self.try_wait())
    }

    /// SIGKILL (the group too) and reap. Returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        let mut child = self.child.take()?;
        let _ = child.kill();
        Some(child.wait().expect("wait after kill"))
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. The guard is empty
    /// afterwards. A group's stragglers (a wrapper's workers) are killed
    /// once its leader has exited.
    pub fn terminate(&mut self, timeout: Duration) -> Stopped {
        let started = Instant::now();
        if self.child.is_none() {
            return Stopped {
                took: Duration::ZERO,
                graceful: true,
                status: None,
            };
        }
        self.signal(libc::SIGTERM);
        let exited = self.wait_timeout(timeout);
        let took = started.elapsed();
        let status = self.kill();
        Stopped {
            took,
            graceful: exited.is_some(),
            status: exited.or(status),
        }
    }

    /// Take the child out of the guard (after it exited) to read its output.
    pub fn into_child(mut self) -> Child {
        self.child.take().expect("child already taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("testkit: killing {} (pid {})", self.name, child.id());
            }
        }
        self.kill();
    }
}

/// Kills the process named in a pid file on drop: for daemons started by
/// `ec_ctl start`, which are not our children.
pub struct PidFileGuard {
    pub path: PathBuf,
}

impl PidFileGuard {
    pub fn read_pid(&self) -> Option<libc::pid_t> {
        fs::read_to_string(&self.path).ok()?.trim().parse().ok()
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.read_pid() {
            if pid > 1 && process_alive(pid) {
                eprintln!("testkit: killing pid {pid} from {}", self.path.display());
                // SAFETY: kill(2) on the pid our daemon wrote; checked alive.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True while a process with this pid exists and is not a zombie (a
/// daemon reparented to a container's init may never be reaped).
pub fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    state != Some('Z')
}

/// Run a command to completion with `stdin` fed from `input`, killing it if
/// it runs longer than `timeout`. Panics on timeout.
pub fn run_with_input(command: &mut Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out_bytes = read_in_background(stdout);
    let err_bytes = read_in_background(stderr);
    let mut guard = ChildGuard::new(&format!("{command:?}"), child);
    let status = guard
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("{command:?} still running after {timeout:?}"));
    let _ = writer.join();
    Output {
        status,
        stdout: collect_output(&out_bytes),
        stderr: collect_output(&err_bytes),
    }
}

/// Run a command with no input (stdin empty) and a timeout.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    run_with_input(command, b"", timeout)
}

/// Read a pipe on a thread, sending each chunk as it comes.
fn read_in_background(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut buffer = [0u8; PIPE_CHUNK_BYTES];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sender.send(buffer[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

/// Everything a background reader sent until EOF or `PIPE_DRAIN_TIMEOUT`.
fn collect_output(receiver: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    let deadline = Instant::now() + PIPE_DRAIN_TIMEOUT;
    let mut bytes = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => return bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn run_feeds_stdin_and_collects_both_pipes() {
        let output = run_with_input(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            b"hello",
            Duration::from_secs(30),
        );
        assert_eq!(output.stdout, b"hello");
        assert_eq!(output.stderr, b"err\n");
        assert_eq!(output.status.code(), Some(3));
    }

    #[test]
    fn a_dropped_guard_kills_its_child() {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        assert!(process_alive(pid));
        drop(ChildGuard::new("sleep", child));
        assert!(!process_alive(pid));
    }

    #[test]
    fn terminate_stops_a_whole_group_and_says_it_was_graceful() {
        // The shell leads the group and leaves a grandchild behind it.
        let dir = std::env::temp_dir().join(format!("testkit-group-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("grandchild.pid");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep 600 & echo $! > {}; wait",
                pid_file.display()
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        let mut guard = ChildGuard::new_group("sh", child);
        let grandchild: libc::pid_t = poll_until(Duration::from_secs(30), || {
            fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .expect("grandchild pid");
        let stopped = guard.terminate(Duration::from_secs(30));
        assert!(stopped.graceful, "{stopped:?}");
        assert!(stopped.status.is_some());
        assert!(guard.pid().is_none());
        // The grandchild is not ours to reap; it goes once init reaps it.
        let gone = poll_until(Duration::from_secs(30), || {
            (!process_alive(grandchild)).then_some(())
        });
        assert!(gone.is_some(), "grandchild {grandchild} survived");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn poll_every_returns_the_first_value_or_none_at_the_deadline() {
        let mut calls = 0;
        let found = poll_every(Duration::from_millis(1), Duration::from_secs(30), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(found, Some(3));
        let started = Instant::now();
        let none: Option<()> =
            poll_every(Duration::from_millis(5), Duration::from_millis(30), || None);
        assert!(none.is_none());
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
