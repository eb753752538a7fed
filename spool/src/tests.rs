//! Spool tests that need a glommio executor and a real directory: append
//! and reopen, torn tails, group commit, roll-over, segment GC and
//! compaction.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::*;
use crate::storage::segment_file_name;

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ecelerity-spool-test-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a test body on a glommio executor (shared with the simulator's tests).
pub(crate) fn run<G, F>(test: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(test)
        .expect("executor starts")
        .join()
        .expect("test body ran");
}

fn envelope_of(id: u64) -> Vec<u8> {
    format!("MAIL FROM:<s{id}@example.com> RCPT TO:<r{id}@example.net>").into_bytes()
}

fn body_of(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + id * 7) as u8).collect()
}

fn small_segments() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 64 * 1024,
        ..SpoolOptions::default()
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(segment_file_name(segment))
}

/// Offset of a message record from the BodyRef of its body.
fn record_offset(body: &BodyRef, envelope_len: usize) -> u64 {
    body.offset - (record::RECORD_HEADER_BYTES + 4 + envelope_len) as u64
}

#[test]
fn every_acknowledged_message_comes_back_after_reopen_and_completed_ones_do_not() {
    // Goal: what append_* acknowledged is recovered byte for byte, with its
    // notes in order; completed messages are gone. Method: append, note and
    // complete through one spool, close, reopen, compare.
    let tmp = TempDir::new("reopen");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert!(recovery.messages.is_empty());
        let mut bodies = Vec::new();
        for id in 1..=30u64 {
            let body = body_of(id, 100 + id as usize * 37);
            let at = spool
                .append_message(id, &envelope_of(id), &body)
                .await
                .unwrap();
            bodies.push((id, at));
            if id % 2 == 0 {
                spool
                    .append_note(id, format!("try 1 of {id}").as_bytes())
                    .await
                    .unwrap();
                spool
                    .append_note(id, format!("try 2 of {id}").as_bytes())
                    .await
                    .unwrap();
            }
            if id % 3 == 0 {
                spool.complete(id).await.unwrap();
            }
        }
        // A note or complete for an unknown id is stored and ignored.
        spool.append_note(999, b"stray").await.unwrap();
        spool.complete(998).await.unwrap();
        assert_eq!(spool.stats().live_messages, 20);
        spool.close().await.unwrap();
        assert!(matches!(
            spool.append_note(1, b"late").await,
            Err(SpoolError::Closed)
        ));

        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert_eq!(recovery.max_id, 999);
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        let expected: Vec<u64> = (1..=30).filter(|id| id % 3 != 0).collect();
        let got: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, expected);
        let reader = BodyReader::new(dir.clone());
        let mut buf = Vec::new();
        for message in &recovery.messages {
            let id = message.id;
            assert_eq!(message.envelope, envelope_of(id));
            let acked = bodies.iter().find(|(i, _)| *i == id).unwrap().1;
            assert_eq!(message.body, acked);
            reader.read(&message.body, &mut buf).await.unwrap();
            assert_eq!(buf, body_of(id, 100 + id as usize * 37));
            let notes: Vec<Vec<u8>> = if id % 2 == 0 {
                vec![
                    format!("try 1 of {id}").into_bytes(),
                    format!("try 2 of {id}").into_bytes(),
                ]
            } else {
                vec![]
            };
            assert_eq!(message.notes, notes);
        }
        // New appends continue after the cleanly ended newest segment's
        // last record, in the space it already holds.
        let old_segment = recovery.messages[0].body.segment;
        let at = spool.append_message(1000, b"e", b"b").await.unwrap();
        assert_eq!(at.segment, old_segment);
        assert!(at.offset > recovery.messages.last().unwrap().body.offset);
        // A body past the end of its segment is an error, not garbage.
        let beyond = BodyRef {
            offset: at.offset + 1_000_000,
            ..at
        };
        let err = reader.read(&beyond, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        assert_eq!(recovery.messages.last().unwrap().id, 1000);
        spool.close().await.unwrap();
    });
}

/// Appends `count` messages one after another and closes; returns their
/// body references.
async fn spool_messages(dir: &Path, count: u64) -> Vec<BodyRef> {
    let (spool, _) = Spool::open(dir, SpoolOptions::default()).await.unwrap();
    let mut refs = Vec::new();
    for id in 0..count {
        refs.push(
            spool
                .append_message(id, &envelope_of(id), &body_of(id, 500))
                .await
                .unwrap(),
        );
    }
    spool.close().await.unwrap();
    refs
}

#[test]
fn a_segment_cut_mid_record_keeps_every_record_before_the_cut() {
    // Goal: a torn tail loses only the torn record and what follows, is
    // reported, and the spool opens and appends. Method: truncate the file
    // in the middle of the body of message 7.
    let tmp = TempDir::new("torn");
    let dir = tmp.0.clone();
    run(move || async move {
        let refs = spool_messages(&dir, 10).await;
        let torn = refs[7];
        let path = segment_path(&dir, torn.segment);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(torn.offset + torn.len as u64 / 2).unwrap();
        drop(file);

        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, (0..7).collect::<Vec<_>>());
        assert_eq!(recovery.truncated.len(), 1);
        let cut = &recovery.truncated[0];
        assert_eq!(cut.segment, torn.segment);
        assert_eq!(cut.offset, record_offset(&torn, envelope_of(7).len()));
        assert!(cut.reason.contains("torn"), "{}", cut.reason);
        spool.append_message(100, b"env", b"body").await.unwrap();
        spool.close().await.unwrap();
        let (_, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert_eq!(recovery.messages.len(), 8);
    });
}

#[test]
fn a_corrupt_middle_record_keeps_the_records_before_it() {
    // Goal: a flipped byte is caught by the CRC and cuts the segment there.
    // Method: flip one body byte of message 4 of 10.
    let tmp = TempDir::new("flip");
    let dir = tmp.0.clone();
    run(move || async move {
        let refs = spool_messages(&dir, 10).await;
        let bad = refs[4];
        let path = segment_path(&dir, bad.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[bad.offset as usize + 3] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();

        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(recovery.truncated.len(), 1);
        assert_eq!(
            recovery.truncated[0].offset,
            record_offset(&bad, envelope_of(4).len())
        );
        assert!(recovery.truncated[0].reason.contains("checksum"));
        assert_eq!(recovery.records_read, 4);
        spool.close().await.unwrap();
    });
}

#[test]
fn a_segment_with_a_damaged_header_is_kept_and_reported_at_every_open() {
    // Goal: a media fault in a segment header loses that segment's records
    // for the daemon but never the file: it stays for inspection and is
    // reported at each start. Method: flip a byte of the header, open
    // twice, check the report and that the file is still there.
    let tmp = TempDir::new("header");
    let dir = tmp.0.clone();
    run(move || async move {
        let refs = spool_messages(&dir, 3).await;
        let path = segment_path(&dir, refs[0].segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        for _ in 0..2 {
            let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
            assert!(recovery.messages.is_empty());
            assert_eq!(recovery.truncated.len(), 1);
            assert_eq!(recovery.truncated[0].offset, 0);
            assert!(recovery.truncated[0].reason.contains("kept on disk"));
            spool.append_message(50, b"env", b"body").await.unwrap();
            spool.complete(50).await.unwrap();
            spool.close().await.unwrap();
            assert!(path.exists(), "the damaged segment must stay on disk");
        }
    });
}

/// Appends a 1 KiB message for each of `ids`, one task each, all at once.
async fn append_concurrently(spool: &Spool, ids: std::ops::Range<u64>) {
    let tasks: Vec<_> = ids
        .map(|id| {
            let spool = spool.clone();
            glommio::spawn_local(async move {
                spool
                    .append_message(id, &envelope_of(id), &body_of(id, 1024))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

#[test]
fn concurrent_appends_share_syncs() {
    // Goal: group commit. Method: 200 tasks append at once; count syncs.
    let tmp = TempDir::new("group");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        let appends = 200u64;
        append_concurrently(&spool, 0..appends).await;
        let stats = spool.stats();
        assert_eq!(stats.records_appended, appends);
        assert!(stats.syncs < appends, "{stats:?}");
        println!("group commit: {appends} appends in {} syncs", stats.syncs);
        spool.close().await.unwrap();
        let (_, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert_eq!(recovery.messages.len(), appends as usize);
    });
}

#[test]
fn a_lone_client_s_messages_sync_on_the_writer_s_thread_and_come_back() {
    // Goal: with one client on the shard, a group commit of its one message
    // syncs inline (a blocking fdatasync), and what it acknowledged is
    // recovered; with several clients, or several messages in a batch, the
    // syncs go through io_uring. Method: sequential appends with the hint
    // set and unset, then concurrent ones with it set; count inline syncs;
    // reopen and compare.
    let tmp = TempDir::new("inline-sync");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        let clients = std::rc::Rc::new(std::cell::Cell::new(1usize));
        spool.set_client_count({
            let clients = clients.clone();
            move || clients.get()
        });
        for id in 0..20u64 {
            spool
                .append_message(id, &envelope_of(id), &body_of(id, 1024))
                .await
                .unwrap();
        }
        let lone = spool.stats();
        assert_eq!(lone.inline_syncs, 20, "{lone:?}");
        assert_eq!(lone.syncs, 20, "{lone:?}");

        clients.set(2);
        for id in 20..30u64 {
            spool
                .append_message(id, &envelope_of(id), &body_of(id, 1024))
                .await
                .unwrap();
        }
        assert_eq!(spool.stats().inline_syncs, 20, "several clients: io_uring");

        // The hint says one client, but 40 appends at once make batches of
        // several messages: those never sync inline.
        clients.set(1);
        append_concurrently(&spool, 30..70).await;
        let after = spool.stats();
        let concurrent_syncs = after.syncs - 30;
        let concurrent_inline = after.inline_syncs - 20;
        assert!(concurrent_syncs < 40, "{after:?}");
        assert!(concurrent_inline < concurrent_syncs, "{after:?}");

        // Without the option, never inline.
        spool.close().await.unwrap();
        let options = SpoolOptions {
            inline_sync: false,
            ..SpoolOptions::default()
        };
        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, (0..70).collect::<Vec<u64>>());
        spool.set_client_count(|| 0);
        spool
            .append_message(70, &envelope_of(70), &body_of(70, 1024))
            .await
            .unwrap();
        assert_eq!(spool.stats().inline_syncs, 0);
        spool.close().await.unwrap();
    });
}

#[test]
fn a_full_batch_holds_appenders_back_without_losing_any() {
    // Goal: back-pressure. Method: the smallest batch limit, 64 tasks
    // appending 3 KiB each; all succeed and come back.
    let tmp = TempDir::new("pressure");
    let dir = tmp.0.clone();
    run(move || async move {
        let options = SpoolOptions {
            batch_bytes_max: BATCH_BYTES_MIN,
            ..small_segments()
        };
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let tasks: Vec<_> = (0..64u64)
            .map(|id| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    spool
                        .append_message(id, b"e", &body_of(id, 3 * 1024))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        // A record above the batch limit still goes through, alone.
        spool
            .append_message(64, b"e", &body_of(64, 2 * BATCH_BYTES_MIN))
            .await
            .unwrap();
        spool.close().await.unwrap();
        let (_, recovery) = Spool::open(&dir, options).await.unwrap();
        assert_eq!(recovery.messages.len(), 65);
    });
}

#[test]
fn oversized_records_are_refused() {
    let tmp = TempDir::new("large");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, small_segments()).await.unwrap();
        let body = vec![0u8; 64 * 1024];
        assert!(matches!(
            spool.append_message(1, b"", &body).await,
            Err(SpoolError::TooLarge { .. })
        ));
        spool.close().await.unwrap();
    });
    assert!(matches!(
        SpoolOptions {
            segment_bytes: 10,
            ..SpoolOptions::default()
        }
        .validate(),
        Err(SpoolError::InvalidOptions { .. })
    ));
}

/// Time the writer gets to delete a dead segment after the sync that made
/// it dead (the deletion follows the waiters' wake-up, with two directory
/// syncs: one before and one after the removal).
const SEGMENT_DELETION_WAIT_MS_MAX: u64 = 5_000;

async fn wait_until_gone(path: &Path) {
    for _ in 0..SEGMENT_DELETION_WAIT_MS_MAX {
        if !path.exists() {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("{} still exists", path.display());
}

/// Waits until the spool counts `segments` segment files (the GC task
/// updates the count after each removal's directory sync).
async fn wait_for_segment_count(spool: &Spool, segments: u32) {
    for _ in 0..SEGMENT_DELETION_WAIT_MS_MAX {
        if spool.stats().segments == segments {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[test]
fn segments_roll_over_and_are_deleted_once_nothing_in_them_is_live() {
    // Goal: roll-over at the segment size and GC of dead segments, both
    // while running and at open. Method: 64 KiB segments, 8 KiB bodies;
    // complete everything in the first segment, and all but one message
    // in the second.
    let tmp = TempDir::new("gc");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, small_segments()).await.unwrap();
        let mut refs = Vec::new();
        for id in 0..40u64 {
            let at = spool
                .append_message(id, b"env", &body_of(id, 8 * 1024))
                .await
                .unwrap();
            assert!(at.offset + at.len as u64 <= 64 * 1024);
            refs.push((id, at));
        }
        let first = refs[0].1.segment;
        let second = first + 1;
        assert!(refs.iter().filter(|(_, r)| r.segment == first).count() > 1);
        assert!(refs.last().unwrap().1.segment >= first + 4);
        let segments_before = spool.stats().segments;
        assert_eq!(
            segments_before as u64,
            refs.last().unwrap().1.segment - first + 1
        );

        for (id, at) in &refs {
            if at.segment == first {
                assert!(segment_path(&dir, first).exists());
                spool.complete(*id).await.unwrap();
            }
        }
        wait_until_gone(&segment_path(&dir, first)).await;
        wait_for_segment_count(&spool, segments_before - 1).await;
        assert_eq!(
            spool.stats().segments,
            segments_before - 1,
            "{:?} {:?}",
            spool.stats(),
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );

        let in_second: Vec<u64> = refs
            .iter()
            .filter(|(_, r)| r.segment == second)
            .map(|(id, _)| *id)
            .collect();
        let (kept, done) = in_second.split_first().unwrap();
        for id in done {
            spool.complete(*id).await.unwrap();
        }
        assert!(segment_path(&dir, second).exists());
        spool.close().await.unwrap();

        // At open: nothing more to delete (the completes sit in the newest
        // segment, which still holds live messages).
        let (spool, recovery) = Spool::open(&dir, small_segments()).await.unwrap();
        assert!(recovery.messages.iter().any(|m| m.id == *kept));
        assert!(recovery.messages.iter().all(|m| m.body.segment != first));
        // Complete the last live message of the second segment; it goes.
        spool.complete(*kept).await.unwrap();
        wait_until_gone(&segment_path(&dir, second)).await;
        // Complete everything: every old segment goes, at run time or at
        // the next open.
        for message in &recovery.messages {
            if message.id != *kept {
                spool.complete(message.id).await.unwrap();
            }
        }
        wait_for_segment_count(&spool, 1).await;
        assert_eq!(spool.stats().segments, 1, "only the current segment");
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, small_segments()).await.unwrap();
        assert!(recovery.messages.is_empty());
        assert_eq!(recovery.segments_deleted, 1);
        assert_eq!(spool.stats().segments, 0);
        spool.close().await.unwrap();
    });
}

#[test]
#[ignore = "throughput print, run with --ignored --nocapture (use --release)"]
fn throughput_of_1k_appends_with_64_appenders() {
    let tmp = TempDir::new("throughput");
    let dir = tmp.0.clone();
    run(move || async move {
        const APPENDERS: u64 = 64;
        const APPENDS_EACH: u64 = 500;
        let (spool, _) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        let started = Instant::now();
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|task| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    let body = body_of(task, 1024);
                    let envelope = envelope_of(task);
                    for i in 0..APPENDS_EACH {
                        let id = task * APPENDS_EACH + i;
                        spool.append_message(id, &envelope, &body).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = spool.stats();
        let appends = (APPENDERS * APPENDS_EACH) as f64;
        println!(
            "{} appends of 1 KiB with {APPENDERS} appenders: {:.0} appends/s, {} syncs \
             ({:.0}/s, {:.1} records per sync), sync max {} us",
            appends,
            appends / seconds,
            stats.syncs,
            stats.syncs as f64 / seconds,
            appends / stats.syncs as f64,
            stats.sync_latency_us_max
        );
        spool.close().await.unwrap();
    });
}

#[test]
fn a_completion_lingers_for_the_next_message_and_shares_its_sync() {
    // Goal: with progress_linger_ms set, a completion alone waits for a
    // message and rides its fdatasync; with nothing coming it is synced
    // once the linger runs out; with lingering off it is synced at once.
    // Method: count the spool's syncs around each case.
    let tmp = TempDir::new("linger");
    let dir = tmp.0.clone();
    run(move || async move {
        let options = SpoolOptions {
            progress_linger_ms: 200,
            ..SpoolOptions::default()
        };
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        spool
            .append_message(1, &envelope_of(1), b"one")
            .await
            .unwrap();
        let before = spool.stats().syncs;
        let started = std::time::Instant::now();
        let complete = glommio::spawn_local({
            let spool = spool.clone();
            async move { spool.complete(1).await }
        });
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        spool
            .append_message(2, &envelope_of(2), b"two")
            .await
            .unwrap();
        complete.await.unwrap();
        assert_eq!(spool.stats().syncs, before + 1, "one sync for both");
        assert!(started.elapsed() < std::time::Duration::from_millis(200));

        let started = std::time::Instant::now();
        spool.complete(2).await.unwrap();
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(200),
            "alone, it waits the linger out"
        );
        assert_eq!(spool.stats().syncs, before + 2);
        spool.close().await.unwrap();

        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert!(recovery.messages.is_empty(), "both completions are durable");
        spool
            .append_message(3, &envelope_of(3), b"three")
            .await
            .unwrap();
        let before = spool.stats().syncs;
        let started = std::time::Instant::now();
        spool.complete(3).await.unwrap();
        assert_eq!(spool.stats().syncs, before + 1);
        assert!(started.elapsed() < std::time::Duration::from_millis(200));
        spool.close().await.unwrap();
    });
}

/// Segment numbers of the segment files in `dir`, ascending.
fn segment_files(dir: &Path) -> Vec<u64> {
    let mut segments: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            crate::storage::parse_segment_file_name(name.to_str()?)
        })
        .collect();
    segments.sort_unstable();
    segments
}

/// Waits (bounded) until the GC task has removed every segment below
/// `segment`.
async fn wait_for_removal_below(dir: &Path, segment: u64) {
    for _ in 0..200 {
        if segment_files(dir).iter().all(|&s| s >= segment) {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!(
        "segments below {segment} still there: {:?}",
        segment_files(dir)
    );
}

#[test]
fn compaction_moves_the_one_live_message_forward_and_frees_its_segment() {
    // Goal: a segment kept alive by one long-lived message among many
    // completed ones is copied forward and deleted; the moved message keeps
    // its notes, its body reads byte for byte through the old reference
    // and the new one, and recovery returns exactly it, once. Method: fill
    // segment 0 with messages, complete all but one, roll to segment 1,
    // compact, check the files, read, reopen.
    let tmp = TempDir::new("compact");
    let dir = tmp.0.clone();
    run(move || async move {
        let options = small_segments();
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let kept = 7u64;
        let kept_body = body_of(kept, 3000);
        let mut old_ref = None;
        let mut id = 0u64;
        // Fill segment 0; the last message lands in segment 1.
        loop {
            id += 1;
            let body = if id == kept {
                kept_body.clone()
            } else {
                body_of(id, 3000)
            };
            let at = spool
                .append_message(id, &envelope_of(id), &body)
                .await
                .unwrap();
            if id == kept {
                old_ref = Some(at);
                spool
                    .append_note(kept, b"deferred: 451 try later")
                    .await
                    .unwrap();
            }
            if at.segment == 1 {
                break;
            }
        }
        let old_ref = old_ref.expect("kept message spooled");
        assert_eq!(old_ref.segment, 0);
        for done in (1..=id).filter(|&i| i != kept) {
            spool.complete(done).await.unwrap();
        }
        // Segment 0 holds one live message of ~3 KiB out of 64 KiB.
        assert_eq!(segment_files(&dir), vec![0, 1]);
        let report = spool
            .compact(1024 * 1024, COMPACTION_LIVE_PERCENT_DEFAULT)
            .await
            .unwrap();
        assert_eq!(report.messages_moved, 1, "{report:?}");
        assert_eq!(report.segments_compacted, 1, "{report:?}");
        assert!(report.bytes_copied > kept_body.len() as u64, "{report:?}");
        wait_for_removal_below(&dir, 1).await;
        assert_eq!(segment_files(&dir), vec![1]);
        // A second step finds nothing to do: segment 1 is the current one.
        let idle = spool.compact(1024 * 1024, 100).await.unwrap();
        assert_eq!(idle, CompactReport::default());

        // The engine's old reference still reads the body, byte for byte.
        let reader = BodyReader::new(dir.clone());
        let mut got = Vec::new();
        reader.read(&old_ref, &mut got).await.unwrap();
        assert_eq!(got, kept_body);
        let moved = relocated(&dir, &old_ref).expect("relocated");
        assert_eq!(moved.segment, 1);
        reader.read(&moved, &mut got).await.unwrap();
        assert_eq!(got, kept_body);
        spool.append_note(kept, b"deferred again").await.unwrap();
        spool.close().await.unwrap();

        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        assert_eq!(recovery.messages.len(), 1, "{:?}", recovery.messages);
        let m = &recovery.messages[0];
        assert_eq!((m.id, m.envelope.clone()), (kept, envelope_of(kept)));
        assert_eq!(m.body, moved);
        assert_eq!(
            m.notes,
            vec![
                b"deferred: 451 try later".to_vec(),
                b"deferred again".to_vec()
            ]
        );
        reader.read(&m.body, &mut got).await.unwrap();
        assert_eq!(got, kept_body);
        // Completing the moved message ends it for good.
        spool.complete(kept).await.unwrap();
        assert!(relocated(&dir, &old_ref).is_none());
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        assert!(recovery.messages.is_empty(), "{:?}", recovery.messages);
        spool.close().await.unwrap();
    });
}

#[test]
fn compaction_leaves_segments_with_enough_live_data_alone() {
    // Goal: the threshold holds: a sealed segment whose live records take
    // more than live_percent_max of a segment is not copied. Method: fill
    // segment 0 with live messages, roll, compact at 25 %, then at 100 %.
    let tmp = TempDir::new("compact-threshold");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, small_segments()).await.unwrap();
        let mut id = 0;
        loop {
            id += 1;
            let at = spool
                .append_message(id, &envelope_of(id), &body_of(id, 4000))
                .await
                .unwrap();
            if at.segment == 1 {
                break;
            }
        }
        let report = spool.compact(u64::MAX, 25).await.unwrap();
        assert_eq!(report, CompactReport::default());
        assert_eq!(segment_files(&dir), vec![0, 1]);
        let report = spool.compact(u64::MAX, 100).await.unwrap();
        assert_eq!(report.messages_moved, id - 1, "{report:?}");
        wait_for_removal_below(&dir, 1).await;
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, small_segments()).await.unwrap();
        let mut ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=id).collect::<Vec<_>>());
        spool.close().await.unwrap();
    });
}

#[test]
fn a_compaction_budget_bounds_the_bytes_one_step_copies() {
    // Goal: a step copies at most its budget (one message at least), and
    // steps resume where the last one stopped. Method: 10 live messages of
    // 2 KiB in a sealed segment, steps of 5 KiB, count.
    let tmp = TempDir::new("compact-budget");
    let dir = tmp.0.clone();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, small_segments()).await.unwrap();
        for id in 1..=10u64 {
            spool
                .append_message(id, &envelope_of(id), &body_of(id, 2048))
                .await
                .unwrap();
        }
        let mut id = 10;
        // Roll with messages completed at once, so only 1..=10 stay live.
        loop {
            id += 1;
            let at = spool
                .append_message(id, &envelope_of(id), &body_of(id, 4000))
                .await
                .unwrap();
            spool.complete(id).await.unwrap();
            if at.segment == 1 {
                break;
            }
        }
        let mut steps = 0;
        let mut moved = 0;
        while moved < 10 {
            let report = spool.compact(5 * 1024, 50).await.unwrap();
            assert!(report.bytes_copied <= 5 * 1024, "{report:?}");
            assert!(report.messages_moved >= 1, "{report:?}");
            moved += report.messages_moved;
            steps += 1;
            assert!(steps <= 10);
        }
        assert_eq!(moved, 10);
        assert!(steps >= 4, "{steps} steps for 20 KiB at 5 KiB a step");
        wait_for_removal_below(&dir, 1).await;
        spool.close().await.unwrap();
    });
}

/// Goal: a large body streamed into its own file comes back byte for byte
/// through bounded chunk reads and after a reopen, and its file goes once
/// the message completes. Method: 3 MiB written in uneven chunks larger
/// than a 64 KiB segment, committed with `append_message_file` between two
/// inline messages, read back in 256 KiB chunks, the spool reopened, the
/// message completed and the spool reopened again.
#[test]
fn a_streamed_body_is_read_back_exactly_and_its_file_goes_with_its_message() {
    run(|| async {
        let dir = TempDir::new("streamed");
        let body = body_of(7, 3 * 1024 * 1024 + 5);
        let (spool, _) = Spool::open(&dir.0, small_segments()).await.expect("open");
        spool
            .append_message(1, &envelope_of(1), b"small\r\n")
            .await
            .expect("append");
        let mut writer = spool.body_writer(2).await.expect("body file");
        for piece in body.chunks(100_003) {
            writer.write(piece.to_vec()).await.expect("write");
        }
        assert_eq!(writer.len(), body.len() as u64);
        let file_body = writer.finish().await.expect("finish");
        assert_eq!(file_body.crc32c, crc32c::crc32c(&body));
        let body_ref = spool
            .append_message_file(&envelope_of(2), &file_body)
            .await
            .expect("commit");
        assert_eq!(body_ref, BodyRef::file(2, body.len() as u32));
        spool
            .append_message(3, &envelope_of(3), b"after\r\n")
            .await
            .expect("append");

        let reader = BodyReader::new(dir.0.clone());
        let mut chunks = reader.chunks(&body_ref).await.expect("open body");
        let (mut read, mut chunk, mut reads) = (Vec::new(), Vec::new(), 0);
        while chunks
            .next(&mut chunk, BODY_READ_CHUNK_BYTES)
            .await
            .expect("read")
        {
            assert!(chunk.len() <= BODY_READ_CHUNK_BYTES);
            read.extend_from_slice(&chunk);
            reads += 1;
        }
        assert_eq!(read, body, "chunked read differs");
        assert_eq!(reads, body.len().div_ceil(BODY_READ_CHUNK_BYTES));
        drop(chunks);
        spool.close().await.expect("close");

        let (spool, recovery) = Spool::open(&dir.0, small_segments()).await.expect("reopen");
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3], "in the order spooled");
        assert_eq!(recovery.messages[1].body, body_ref);
        assert_eq!(recovery.messages[1].envelope, envelope_of(2));
        assert_eq!(recovery.body_files_deleted, 0);
        let mut whole = Vec::new();
        reader
            .read(&body_ref, &mut whole)
            .await
            .expect("read whole");
        assert_eq!(whole, body);

        let path = dir.0.join(bodies::body_file_name(2));
        assert!(path.exists());
        spool.complete(2).await.expect("complete");
        wait_until_gone(&path).await;
        spool.close().await.expect("close");
        let (spool, recovery) = Spool::open(&dir.0, small_segments()).await.expect("reopen");
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 3]);
        spool.close().await.expect("close");
    });
}

/// Goal: a body file without a durable message record (a DATA cut short
/// by a crash, or a record that failed) is not a message and does not
/// stay on disk. Method: one body file finished but never committed, one
/// left mid-write (as a kill -9 leaves it), and one committed; reopen:
/// only the committed one is live and the two others are deleted.
#[test]
fn body_files_without_a_record_are_not_messages_and_are_removed_at_open() {
    run(|| async {
        let dir = TempDir::new("orphans");
        let (spool, _) = Spool::open(&dir.0, small_segments()).await.expect("open");
        let mut finished = spool.body_writer(10).await.expect("create");
        finished.write(body_of(10, 300_000)).await.expect("write");
        let _ = finished.finish().await.expect("finish");
        let mut cut = spool.body_writer(11).await.expect("create");
        cut.write(body_of(11, 200_000)).await.expect("write");
        std::mem::forget(cut);
        let mut kept = spool.body_writer(12).await.expect("create");
        kept.write(body_of(12, 70_000)).await.expect("write");
        let kept = kept.finish().await.expect("finish");
        spool
            .append_message_file(b"env", &kept)
            .await
            .expect("commit");
        // A discarded writer removes its file at once.
        let mut discarded = spool.body_writer(13).await.expect("create");
        discarded.write(body_of(13, 1000)).await.expect("write");
        discarded.discard().await;
        assert!(!dir.0.join(bodies::body_file_name(13)).exists());
        spool.close().await.expect("close");

        let (spool, recovery) = Spool::open(&dir.0, small_segments()).await.expect("reopen");
        let ids: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, [12]);
        assert_eq!(recovery.body_files_deleted, 2);
        assert!(recovery.body_files_missing.is_empty());
        assert_eq!(bodies::list_body_files(&dir.0).expect("list"), [12]);
        spool.close().await.expect("close");

        // A live message whose file vanished is reported, not dropped.
        std::fs::remove_file(dir.0.join(bodies::body_file_name(12))).expect("rm");
        let (spool, recovery) = Spool::open(&dir.0, small_segments()).await.expect("reopen");
        assert_eq!(recovery.messages.len(), 1);
        assert_eq!(recovery.body_files_missing, [12]);
        spool.close().await.expect("close");
    });
}

/// Goal: compaction copies a message whose body is in a file of its own
/// forward as a moved-file record, without reading or copying the body:
/// the segment goes, the `BodyRef::file` stays valid, recovery gives it
/// back with the notes, the open sweep keeps the file, and the file goes
/// when the message completes. Method: a streamed body committed into
/// segment 0 among inline messages, all but it completed, one compaction
/// step, reads, reopen, complete, reopen.
#[test]
fn compaction_moves_a_body_file_message_as_its_record_only() {
    let tmp = TempDir::new("compact-file");
    let dir = tmp.0.clone();
    run(move || async move {
        let options = small_segments();
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let kept = 5u64;
        let body = body_of(kept, 300 * 1024 + 11);
        let mut kept_ref = None;
        let mut id = 0u64;
        loop {
            id += 1;
            let at = if id == kept {
                let mut writer = spool.body_writer(kept).await.unwrap();
                writer.write(body.clone()).await.unwrap();
                let file_body = writer.finish().await.unwrap();
                let at = spool
                    .append_message_file(&envelope_of(kept), &file_body)
                    .await
                    .unwrap();
                spool.append_note(kept, b"deferred").await.unwrap();
                kept_ref = Some(at);
                continue;
            } else {
                spool
                    .append_message(id, &envelope_of(id), &body_of(id, 3000))
                    .await
                    .unwrap()
            };
            if at.segment == 1 {
                break;
            }
        }
        let kept_ref = kept_ref.expect("kept message spooled");
        assert_eq!(kept_ref, BodyRef::file(kept, body.len() as u32));
        for done in (1..=id).filter(|&i| i != kept) {
            spool.complete(done).await.unwrap();
        }
        assert_eq!(segment_files(&dir), vec![0, 1]);
        let report = spool
            .compact(1024 * 1024, COMPACTION_LIVE_PERCENT_DEFAULT)
            .await
            .unwrap();
        assert_eq!(report.messages_moved, 1, "{report:?}");
        assert_eq!(report.segments_compacted, 1, "{report:?}");
        assert!(
            report.bytes_copied < 1024,
            "the body is not copied: {report:?}"
        );
        wait_for_removal_below(&dir, 1).await;
        assert!(relocated(&dir, &kept_ref).is_none(), "nothing to relocate");
        let reader = BodyReader::new(dir.clone());
        let mut got = Vec::new();
        reader.read(&kept_ref, &mut got).await.unwrap();
        assert_eq!(got, body);
        spool.close().await.unwrap();

        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        assert_eq!(recovery.body_files_deleted, 0);
        assert!(recovery.body_files_missing.is_empty());
        assert_eq!(recovery.messages.len(), 1, "{:?}", recovery.messages);
        let m = &recovery.messages[0];
        assert_eq!((m.id, m.body), (kept, kept_ref));
        assert_eq!(m.envelope, envelope_of(kept));
        assert_eq!(m.notes, vec![b"deferred".to_vec()]);
        reader.read(&m.body, &mut got).await.unwrap();
        assert_eq!(got, body);
        let path = dir.join(bodies::body_file_name(kept));
        assert!(path.exists());
        spool.complete(kept).await.unwrap();
        wait_until_gone(&path).await;
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        assert!(recovery.messages.is_empty(), "{:?}", recovery.messages);
        spool.close().await.unwrap();
    });
}

#[test]
fn the_spool_ring_group_commits_concurrent_appends_and_they_come_back() {
    // Goal: with `sync_ring` (fdatasync through the spool's own io_uring)
    // every acknowledged message is durable and readable after a reopen,
    // completed ones are gone, and concurrent appenders share syncs.
    // Method: 40 appenders at once (half completed), close, reopen over
    // the glommio path, compare bodies byte for byte.
    let tmp = TempDir::new("sync-ring");
    let dir = tmp.0.clone();
    run(move || async move {
        let options = SpoolOptions {
            sync_ring: true,
            ..SpoolOptions::default()
        };
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let tasks: Vec<_> = (1..=40u64)
            .map(|id| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    let at = spool
                        .append_message(id, &envelope_of(id), &body_of(id, 500 + id as usize))
                        .await
                        .unwrap();
                    if id % 2 == 0 {
                        spool.complete(id).await.unwrap();
                    }
                    (id, at)
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.push(task.await);
        }
        let stats = spool.stats();
        assert!(
            stats.syncs < 40,
            "40 concurrent appends took {} syncs: no group commit",
            stats.syncs
        );
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, SpoolOptions::default()).await.unwrap();
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        let mut got: Vec<u64> = recovery.messages.iter().map(|m| m.id).collect();
        got.sort_unstable();
        let expected: Vec<u64> = (1..=40).filter(|id| id % 2 == 1).collect();
        assert_eq!(got, expected);
        let reader = BodyReader::new(dir.clone());
        let mut buf = Vec::new();
        for message in &recovery.messages {
            let at = acked.iter().find(|(id, _)| *id == message.id).unwrap().1;
            assert_eq!(message.body, at);
            reader.read(&message.body, &mut buf).await.unwrap();
            assert_eq!(buf, body_of(message.id, 500 + message.id as usize));
        }
        spool.close().await.unwrap();
    });
}

/// One run of `sync_path_latency`: `sessions` tasks append 1 KiB messages
/// at `rate_per_s` in total for `seconds`, while a CPU-bound task in a
/// queue of its own stands for delivery work; returns the sorted
/// append-to-durable latencies in microseconds.
fn commit_latency_run(sync_ring: bool, sessions: u64, rate_per_s: u64, seconds: u64) -> Vec<u64> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;
    let tmp = TempDir::new("sync-path");
    let dir = tmp.0.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let options = SpoolOptions {
            sync_ring,
            ..SpoolOptions::default()
        };
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let stop = Rc::new(std::cell::Cell::new(false));
        let busy_queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::NotImportant,
            "busy",
        );
        let inbound = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(Duration::from_millis(1)),
            "sessions",
        );
        let busy = {
            let stop = stop.clone();
            glommio::spawn_local_into(
                async move {
                    // Half of the core: 100 us of work, 100 us asleep.
                    while !stop.get() {
                        let until = Instant::now() + Duration::from_micros(100);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        glommio::timer::sleep(Duration::from_micros(100)).await;
                    }
                },
                busy_queue,
            )
            .unwrap()
        };
        let latencies = Rc::new(RefCell::new(Vec::new()));
        let gap = Duration::from_micros(1_000_000 * sessions / rate_per_s);
        let mut tasks = Vec::new();
        for s in 0..sessions {
            let spool = spool.clone();
            let latencies = latencies.clone();
            let body = body_of(s, 1024);
            tasks.push(
                glommio::spawn_local_into(
                    async move {
                        let started = Instant::now();
                        let mut next = started + gap * (s as u32) / (sessions as u32);
                        let mut id = s << 32;
                        while started.elapsed() < Duration::from_secs(seconds) {
                            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                                glommio::timer::sleep(wait).await;
                            }
                            next += gap;
                            let t = Instant::now();
                            spool
                                .append_message(id, &envelope_of(id), &body)
                                .await
                                .unwrap();
                            latencies.borrow_mut().push(t.elapsed().as_micros() as u64);
                            spool.complete(id).await.unwrap();
                            id += 1;
                        }
                    },
                    inbound,
                )
                .unwrap(),
            );
        }
        for task in tasks {
            task.await;
        }
        stop.set(true);
        busy.await;
        spool.close().await.unwrap();
        let mut out = std::mem::take(&mut *latencies.borrow_mut());
        out.sort_unstable();
        tx.send(out).unwrap();
    });
    rx.recv().unwrap()
}

#[test]
#[ignore = "a measurement (seconds of disk syncs), run by hand: cargo test -p ecelerity-spool --release -- --ignored --nocapture sync_path_latency"]
fn sync_path_latency() {
    // Compares the spool ring with glommio's fdatasync under a CPU-bound
    // neighbour, alternating so that both see the same disk.
    let q = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    for round in 0..3 {
        for ring in [false, true] {
            let v = commit_latency_run(ring, 50, 2_000, 4);
            println!(
                "round {round} {}: n={} p50={}us p99={}us p99.9={}us",
                if ring { "spool ring" } else { "glommio  " },
                v.len(),
                q(&v, 0.5),
                q(&v, 0.99),
                q(&v, 0.999)
            );
        }
    }
}

#[test]
fn a_reserved_head_is_filled_in_place_and_in_the_crc() {
    let dir = TempDir::new("reserved-head");
    let path = dir.0.clone();
    std::fs::create_dir_all(&path).unwrap();
    run(move || async move {
        let mut writer = crate::BodyWriter::create(&path, 9, 0o600).await.unwrap();
        writer.reserve_head(5);
        writer.write(b"world, ".to_vec()).await.unwrap();
        writer.write(b"again".to_vec()).await.unwrap();
        writer.fill_head(b"hello".to_vec()).await.unwrap();
        let body = writer.finish().await.unwrap();
        let whole = b"helloworld, again";
        assert_eq!(body.len, whole.len() as u64);
        assert_eq!(body.crc32c, crc32c::crc32c(whole));
        let on_disk = std::fs::read(path.join(crate::bodies::body_file_name(9))).unwrap();
        assert_eq!(on_disk, whole);
    });
}

/// Goal: on a real file system the zeros ahead land in the segment file
/// (its length is a step boundary past the records, not the records' end),
/// a reopen reads them as the clean end (no cut) and continues after the
/// records, and steps that are not whole blocks are refused.
#[test]
fn a_segment_file_ends_in_the_zeros_written_ahead_and_reopens_cleanly() {
    let tmp = TempDir::new("zero-ahead");
    let dir = tmp.0.clone();
    let options = SpoolOptions {
        segment_bytes: 256 * 1024,
        zero_ahead_bytes: 16 * 1024,
        ..SpoolOptions::default()
    };
    run(move || async move {
        let (spool, _) = Spool::open(&dir, options).await.unwrap();
        let at = spool.append_message(1, b"env", &[7u8; 1000]).await.unwrap();
        let path = segment_path(&dir, at.segment);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 16 * 1024, "zeros up to the first step");
        let records_end = at.offset as usize + 1000;
        assert!(bytes[records_end..].iter().all(|&b| b == 0));
        // 20 more records of ~1 KiB pass the step: the file grows by
        // whole steps, always at least half a step past the records.
        for id in 2..22 {
            spool
                .append_message(id, b"env", &[8u8; 1000])
                .await
                .unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len % (16 * 1024), 0, "{len}");
        assert!(len >= 21 * 1000 + 8 * 1024, "{len}");
        spool.close().await.unwrap();
        let (spool, recovery) = Spool::open(&dir, options).await.unwrap();
        assert_eq!(recovery.messages.len(), 21);
        assert!(recovery.truncated.is_empty(), "{:?}", recovery.truncated);
        let next = spool.append_message(30, b"env", &[9u8; 100]).await.unwrap();
        assert_eq!(
            next.segment, at.segment,
            "appends continue after the zeros' start"
        );
        spool.close().await.unwrap();
        let (_, recovery) = Spool::open(&dir, options).await.unwrap();
        assert_eq!(recovery.messages.len(), 22);
    });
    for bad in [1000, 2 * crate::ZERO_AHEAD_BYTES_MAX] {
        assert!(matches!(
            SpoolOptions {
                zero_ahead_bytes: bad,
                ..SpoolOptions::default()
            }
            .validate(),
            Err(SpoolError::InvalidOptions { .. })
        ));
    }
}
