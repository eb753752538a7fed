//! A full disk for real: the spool on a size-limited tmpfs. When the spool
//! cannot write, clients get 452 4.3.1, nothing already accepted is
//! harmed, the paniclog says why, and acceptance resumes by itself when
//! space returns. Needs root (mount); skipped with a printed reason
//! otherwise.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ecelerity_tests::{
    free_port, send_messages, Daemon, MessageIdTally, Sink, TempDir, TestConfig,
};

/// tmpfs size: room for two 64 MiB preallocated segments and a little more.
const TMPFS_MIB: u64 = 136;
/// Message size while filling the spool: below the 256 KiB inline limit,
/// so each goes into the segment as one record (a larger body streams to
/// a body file of its own, outside the segment's reservation).
const FILL_MESSAGE_BYTES: u64 = 200 * 1024;
/// A message large enough to be streamed to a body file.
const STREAMED_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Most fill messages before the test gives up on seeing 452.
const FILL_MESSAGES_MAX: usize = 400;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// Unmounts on drop, so a failing test leaves no mount behind.
pub(crate) struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub(crate) fn mount_tmpfs(dir: &Path, mib: u64) -> Result<Mount, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: cannot mount a tmpfs".into());
    }
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if !status.success() {
        return Err(format!("mount -t tmpfs failed with {status}"));
    }
    Ok(Mount(dir.to_path_buf()))
}

/// Fills the file system holding `path` until ENOSPC.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).expect("ballast");
    let chunk = vec![0x5au8; 1024 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

/// One send.py message of `bytes`; returns its (Message-ID, code).
fn send_one(port: u16, prefix: &str, bytes: u64) -> (String, String) {
    let size = bytes.to_string();
    let report = send_messages(
        port,
        &[
            "--count",
            "1",
            "--min-size",
            &size,
            "--max-size",
            &size,
            "--prefix",
            prefix,
        ],
        Duration::from_secs(60),
    );
    report
        .results
        .first()
        .cloned()
        .unwrap_or_else(|| ("?".into(), format!("no result: {}", report.stderr)))
}

/// Goal: disk full gives 452 4.3.1, harms nothing accepted, is explained
/// in the paniclog, and heals by itself. Method: the spool on a 136 MiB
/// tmpfs; the gateway is down (so messages stay live); a ballast file takes
/// everything outside the first (preallocated) segment; 1 MiB messages
/// fill that segment until the spool must open a new one and cannot: 452.
/// A message large enough to stream to a body file gets 452 too. Delete
/// the ballast and the next message is accepted without a restart. Every
/// 250 is delivered.
#[test]
fn disk_full_gives_452_harms_nothing_and_heals() {
    let dir = TempDir::new("disk-full");
    let spool = dir.join("spool");
    let _mount = match mount_tmpfs(&spool, TMPFS_MIB) {
        Ok(m) => m,
        Err(reason) => {
            eprintln!("e2e: SKIPPED disk_full_gives_452_harms_nothing_and_heals: {reason}");
            return;
        }
    };
    let mut sink = Sink::start(&dir.join("sink"), free_port());
    let mut config = TestConfig::new(sink.port());
    config.shards = 1;
    let daemon = Daemon::start(dir.path(), &config.render());
    let port = daemon.smtp_port();

    let mut accepted = BTreeSet::new();
    let first = send_one(port, "before", 4096);
    assert_eq!(first.1, "250", "a message before the disk fills");
    accepted.insert(first.0);
    // The gateway goes down so that the fill messages stay live: the spool
    // reuses the space of delivered messages (a full disk heals by
    // itself, see diskfull_heal.rs), so only live ones can fill it.
    sink.wait_for_messages(1, DELIVERY_TIMEOUT);
    sink.stop();

    let ballast = spool.join("ballast");
    let ballast_bytes = fill(&ballast);
    eprintln!("e2e: ballast took {} MiB", ballast_bytes >> 20);

    // One session sends them all (a process per message is slow under
    // load); once the disk is full every later one is refused too, since
    // nothing completes with the gateway down.
    let size = FILL_MESSAGE_BYTES.to_string();
    let report = send_messages(
        port,
        &[
            "--count",
            &FILL_MESSAGES_MAX.to_string(),
            "--min-size",
            &size,
            "--max-size",
            &size,
            "--prefix",
            "fill",
        ],
        Duration::from_secs(300),
    );
    let mut full_reply = None;
    for (i, (id, code)) in report.results.iter().enumerate() {
        match code.as_str() {
            "250" if full_reply.is_none() => {
                accepted.insert(id.clone());
            }
            "250" => panic!("fill message {i} accepted after a full disk was reported"),
            "452" | "451" => {
                full_reply.get_or_insert((i, code.clone()));
            }
            other => panic!("fill message {i} got {other}: {}", report.stderr),
        }
    }
    let (filled, code) = full_reply.expect("the spool never reported a full disk");
    eprintln!("e2e: {filled} x 200 KiB accepted, then {code}");
    assert_eq!(code, "452", "a full disk is 452 4.3.1, not a generic 451");
    // Still full: still 452, and the daemon is alive.
    assert_eq!(send_one(port, "still-full", FILL_MESSAGE_BYTES).1, "452");
    assert_eq!(
        send_one(port, "still-full-streamed", STREAMED_MESSAGE_BYTES).1,
        "452",
        "a streamed body on a full disk is 452 4.3.1 too"
    );
    let paniclog = fs::read_to_string(dir.join("log/paniclog.ec")).unwrap_or_default();
    assert!(
        paniclog.contains("No space left on device") || paniclog.contains("spool full"),
        "the paniclog does not say why:\n{paniclog}"
    );

    fs::remove_file(&ballast).unwrap();
    let started = Instant::now();
    let mut healed = None;
    while started.elapsed() < Duration::from_secs(30) {
        let (id, code) = send_one(port, "after", 4096);
        if code == "250" {
            accepted.insert(id);
            healed = Some(started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let healed = healed.expect("acceptance did not resume after space returned");
    eprintln!("e2e: accepting again {healed:?} after the ballast went");
    sink.restart();

    let mut tally = MessageIdTally::default();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while Instant::now() < deadline {
        tally.update(&sink);
        if accepted.iter().all(|id| tally.counts.contains_key(id)) {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !tally.counts.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "accepted but never delivered: {lost:?}\n{}",
        daemon.stderr_text()
    );
    drop(daemon);
}
