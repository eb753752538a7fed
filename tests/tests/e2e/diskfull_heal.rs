//! A spool that fills its own disk heals by itself (issue 9, finding 1):
//! the spool on a small tmpfs is filled by the daemon's own messages while
//! the gateway is down, until clients get 452 4.3.1. Then the gateway comes
//! up: every accepted message must arrive exactly once, the spool must
//! free its segments, and new messages must be accepted again, all without
//! a restart. Needs root (mount); skipped with a printed reason otherwise.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use ecelerity_tests::{
    free_port, send_messages, Daemon, MessageIdTally, Sink, TempDir, TestConfig,
};

use crate::diskfull::mount_tmpfs;

/// tmpfs size: a few hundred 100 KiB messages, far below one 64 MiB
/// segment, so the spool must reserve smaller segments and run out.
const TMPFS_MIB: u64 = 16;
/// Message size while filling the spool.
const FILL_MESSAGE_BYTES: u64 = 100 * 1024;
/// Messages per send.py run while filling.
const FILL_BATCH: usize = 10;
/// Most fill messages before the test gives up on seeing 452.
const FILL_MESSAGES_MAX: usize = 400;
/// How long the accepted messages get to arrive once the gateway is up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long acceptance gets to resume once everything is delivered.
const HEAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `count` messages of `bytes` with Message-IDs starting `prefix`;
/// returns (Message-ID, reply code) per attempt.
fn send(port: u16, prefix: &str, count: usize, bytes: u64) -> Vec<(String, String)> {
    let size = bytes.to_string();
    let count = count.to_string();
    let report = send_messages(
        port,
        &[
            "--count",
            &count,
            "--min-size",
            &size,
            "--max-size",
            &size,
            "--prefix",
            prefix,
        ],
        Duration::from_secs(60),
    );
    assert!(!report.results.is_empty(), "send.py: {}", report.stderr);
    report.results
}

/// The segment files of shard 0's spool folder, sorted.
fn segment_files(spool: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool.join("0"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Bytes used on the file system holding `path`.
fn used_bytes(path: &std::path::Path) -> u64 {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    (stat.f_blocks - stat.f_bfree) * stat.f_frsize
}

/// Goal: a spool the daemon filled itself heals with no restart, and
/// nothing is delivered twice because of the full disk. Method: spool on
/// a 16 MiB tmpfs, gateway port closed; 100 KiB messages until 452; start
/// the sink on the gateway port; wait until every accepted Message-ID has
/// arrived; check each arrived once, that the file system emptied, and that
/// new messages get 250 and arrive once too.
#[test]
fn a_spool_that_filled_its_own_disk_heals_without_a_restart() {
    let dir = TempDir::new("disk-full-heal");
    let spool = dir.join("spool");
    let _mount = match mount_tmpfs(&spool, TMPFS_MIB) {
        Ok(m) => m,
        Err(reason) => {
            eprintln!(
                "e2e: SKIPPED a_spool_that_filled_its_own_disk_heals_without_a_restart: {reason}"
            );
            return;
        }
    };
    // The gateway's port, closed until the sink starts on it.
    let gateway_port = free_port();
    let mut config = TestConfig::new(gateway_port);
    config.shards = 1;
    let daemon = Daemon::start(dir.path(), &config.render());
    let port = daemon.smtp_port();

    let mut accepted = BTreeSet::new();
    let mut full_replies = 0;
    let mut batch = 0;
    while full_replies == 0 {
        assert!(
            accepted.len() < FILL_MESSAGES_MAX,
            "the spool never reported a full disk after {} messages",
            accepted.len()
        );
        for (id, code) in send(
            port,
            &format!("fill{batch}"),
            FILL_BATCH,
            FILL_MESSAGE_BYTES,
        ) {
            match code.as_str() {
                "250" => {
                    accepted.insert(id);
                }
                "452" => full_replies += 1,
                other => panic!("fill message {id} got {other}"),
            }
        }
        batch += 1;
    }
    let full_bytes = used_bytes(&spool);
    let full_segments = segment_files(&spool);
    eprintln!(
        "e2e: {} x 100 KiB accepted, then 452 ({full_replies} in the last batch); \
         spool file system {} KiB used",
        accepted.len(),
        full_bytes >> 10
    );
    assert!(accepted.len() >= 50, "too few accepted: {}", accepted.len());
    // Still full while the gateway is down.
    let (_, code) = &send(port, "still-full", 1, FILL_MESSAGE_BYTES)[0];
    assert_eq!(code, "452", "a full spool answers 452 4.3.1");

    let sink = Sink::start(&dir.join("sink"), gateway_port);
    let started = Instant::now();
    let mut tally = MessageIdTally::default();
    let lost = tally.wait_for_all(
        &sink,
        accepted.iter(),
        DELIVERY_TIMEOUT,
        Duration::from_millis(200),
    );
    assert!(
        lost.is_empty(),
        "accepted but never delivered: {lost:?}\n{}",
        daemon.stderr_text()
    );
    eprintln!(
        "e2e: all delivered {:?} after the gateway came up",
        started.elapsed()
    );

    // Acceptance resumes by itself: completions freed the segments.
    let healing = Instant::now();
    let mut after = BTreeSet::new();
    let mut codes = Vec::new();
    while after.is_empty() {
        assert!(
            healing.elapsed() < HEAL_TIMEOUT,
            "acceptance did not resume {HEAL_TIMEOUT:?} after delivery (replies {codes:?}, \
             segments {:?}); paniclog:\n{}",
            segment_files(&spool),
            std::fs::read_to_string(dir.join("log/paniclog.ec")).unwrap_or_default()
        );
        for (id, code) in send(port, "after", 1, FILL_MESSAGE_BYTES) {
            if code == "250" {
                after.insert(id);
            }
            codes.push(code);
        }
        if after.is_empty() {
            thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!(
        "e2e: accepting again {:?} after delivery",
        healing.elapsed()
    );
    let more = send(port, "after-more", 10, FILL_MESSAGE_BYTES);
    assert!(more.iter().all(|(_, code)| code == "250"), "{more:?}");
    after.extend(more.into_iter().map(|(id, _)| id));
    let lost = tally.wait_for_all(
        &sink,
        after.iter(),
        DELIVERY_TIMEOUT,
        Duration::from_millis(200),
    );
    assert!(
        lost.is_empty(),
        "accepted after healing, never delivered: {lost:?}"
    );

    // Exactly once: nothing was delivered again because of the full disk.
    thread::sleep(Duration::from_secs(2));
    tally.update(&sink);
    let duplicated: Vec<_> = tally.counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {duplicated:?}"
    );
    assert_eq!(tally.counts.len(), accepted.len() + after.len());
    // The segments that filled the disk are gone (the new ones reserve
    // space again, so the file system's usage alone proves nothing).
    let healed_segments = segment_files(&spool);
    eprintln!("e2e: segments {full_segments:?} when full, {healed_segments:?} after healing");
    assert!(
        full_segments.iter().all(|s| !healed_segments.contains(s)),
        "segments were not freed: {full_segments:?} -> {healed_segments:?}"
    );
    drop(daemon);
}
