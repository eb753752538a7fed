//! The SQLite worker: one OS thread owns one `rusqlite::Connection`, and
//! shards send it jobs (closures over `&mut Connection`) over a bounded
//! channel, then await the reply on their own executor.
//!
//! SQLite calls block (disk, locks, long queries), so they never run on a
//! shard: a slow query delays the tasks waiting for its answer and nothing
//! else. The worker is `Clone + Send`; every shard holds a clone and all
//! share one connection (SQLite serialises writers anyway). The reply is a
//! one-slot flume channel: the worker's send wakes the awaiting task from
//! another thread (glommio's foreign wake), one wake per job.
//!
//! Limits: at most [`SqliteLimits::queue_limit_jobs`] jobs wait; one more
//! fails at once with [`WorkerError::Busy`] (the caller decides: refuse,
//! tempfail, retry) rather than queueing without bound. A caller stops
//! waiting after [`SqliteLimits::call_timeout_ms`]; a job whose caller has
//! gone is skipped if it has not started, and a statement still running
//! then is interrupted (a progress handler; the statement fails). SQLite's own lock wait is
//! [`SqliteLimits::busy_timeout_ms`]. A job that panics answers
//! [`WorkerError::Panicked`] and the worker carries on (with
//! `panic = "abort"`, the release profile, a panic ends the process as
//! anywhere else). A file database is opened in WAL mode.
//!
//! Owns: the worker thread and its connection. May call: rusqlite, flume,
//! glommio's timer. Never: shard state, the spool, queues.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use rusqlite::Connection;

/// Default bound of the job channel (jobs waiting for the worker).
pub const DEFAULT_QUEUE_LIMIT_JOBS: usize = 1024;
/// Default wait of a caller for its reply, queueing included.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 5_000;
/// Default time SQLite waits for a lock held by another connection.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 2_000;

/// The worker's limits, each with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteLimits {
    /// Jobs that may wait in the channel; one more is refused (`Busy`).
    pub queue_limit_jobs: usize,
    /// How long `call` waits for its reply (queueing and running).
    pub call_timeout_ms: u64,
    /// SQLite's `busy_timeout`: how long a statement waits for a lock.
    pub busy_timeout_ms: u64,
}

impl Default for SqliteLimits {
    fn default() -> Self {
        SqliteLimits {
            queue_limit_jobs: DEFAULT_QUEUE_LIMIT_JOBS,
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            busy_timeout_ms: DEFAULT_BUSY_TIMEOUT_MS,
        }
    }
}

/// What can go wrong around a job (the job's own result is the caller's
/// `R`, typically a `rusqlite::Result`).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("sqlite: cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("sqlite: cannot start the worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("sqlite: worker busy ({limit} jobs waiting)")]
    Busy { limit: usize },
    #[error("sqlite: no reply within {0} ms")]
    Timeout(u64),
    #[error("sqlite: the worker has stopped")]
    Stopped,
    #[error("sqlite: the job panicked")]
    Panicked,
}

/// A job's body: runs the caller's closure and sends the reply.
type RunJob = Box<dyn FnOnce(&mut Connection, &AtomicBool) + Send + 'static>;

/// A queued closure and the moment its caller stops waiting for it.
struct Job {
    deadline: Instant,
    /// Runs the closure and replies; the flag tells it whether the
    /// progress handler interrupted it.
    run: RunJob,
}

/// SQLite calls the progress handler every this many virtual machine
/// steps; it interrupts the statement once the job's caller gave up.
const PROGRESS_CHECK_STEPS: i32 = 1000;
/// How long after its caller's timeout a statement is interrupted: the
/// caller's own timer fires first, so it always sees `Timeout`, never a
/// race between that and the interrupted statement's error.
const INTERRUPT_GRACE_MS: u64 = 10;

/// A handle on the worker; clone it for every shard. The thread ends when
/// the last handle is dropped (after finishing the jobs already queued).
#[derive(Clone)]
pub struct SqliteWorker {
    jobs: flume::Sender<Job>,
    limits: SqliteLimits,
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Detached when the last handle drops: the thread then drains the
    /// jobs already queued and ends (joining from a shard would block it).
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for SqliteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWorker")
            .field("path", &self.inner.path)
            .field("limits", &self.limits)
            .finish()
    }
}

impl SqliteWorker {
    /// Opens (creating if needed) the database at `path` on a new thread;
    /// `":memory:"` opens a private in-memory database. Returns once the
    /// connection is open, or the open error as a value.
    pub fn open(path: impl AsRef<Path>, limits: SqliteLimits) -> Result<SqliteWorker, WorkerError> {
        let path = path.as_ref().to_path_buf();
        assert!(limits.queue_limit_jobs > 0, "queue_limit_jobs must be > 0");
        let (jobs_tx, jobs_rx) = flume::bounded::<Job>(limits.queue_limit_jobs);
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let thread_path = path.clone();
        let busy = Duration::from_millis(limits.busy_timeout_ms);
        let thread = std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                let mut conn = match open_connection(&thread_path, busy) {
                    Ok(conn) => {
                        let _ = opened_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                run(&mut conn, jobs_rx);
            })
            .map_err(WorkerError::Spawn)?;
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                let _ = thread.join();
                return Err(WorkerError::Open { path, source });
            }
            Err(_) => return Err(WorkerError::Stopped),
        }
        Ok(SqliteWorker {
            jobs: jobs_tx,
            limits,
            inner: Arc::new(Inner {
                path,
                _thread: thread,
            }),
        })
    }

    /// The database path this worker opened.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The limits the worker was opened with.
    pub fn limits(&self) -> SqliteLimits {
        self.limits
    }

    /// Jobs waiting in the channel now (not counting the one running).
    pub fn queued_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Runs `f` on the worker's connection and returns its result, waiting
    /// at most `call_timeout_ms`. Must be awaited inside a glommio executor
    /// (the timeout is a glommio timer).
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, WorkerError> {
        self.call_with_timeout(Duration::from_millis(self.limits.call_timeout_ms), f)
            .await
    }

    /// [`call`](Self::call) with a timeout of the caller's choosing.
    pub async fn call_with_timeout<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, WorkerError> {
        let deadline = Instant::now() + timeout + Duration::from_millis(INTERRUPT_GRACE_MS);
        let reply = self.submit(deadline, f)?;
        let waited = glommio::timer::timeout(timeout, async { Ok(reply.recv_async().await) }).await;
        match waited {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(Failed::Panicked))) => Err(WorkerError::Panicked),
            // Interrupted past the deadline: the caller's timer was late.
            Ok(Ok(Err(Failed::Interrupted))) => {
                Err(WorkerError::Timeout(timeout.as_millis() as u64))
            }
            // The worker dropped the reply sender without answering: it stopped.
            Ok(Err(flume::RecvError::Disconnected)) => Err(WorkerError::Stopped),
            Err(_) => Err(WorkerError::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// Queues `f` without waiting; the returned receiver yields its result.
    fn submit<R: Send + 'static>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<flume::Receiver<Result<R, Failed>>, WorkerError> {
        let (reply_tx, reply_rx) = flume::bounded(1);
        let run = Box::new(move |conn: &mut Connection, interrupted: &AtomicBool| {
            // A caller that gave up (timeout, dropped future) no longer
            // wants the answer: skip work nobody will read.
            if reply_tx.is_disconnected() {
                return;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .map_err(|_| Failed::Panicked)
                .and_then(|r| match interrupted.load(Ordering::Relaxed) {
                    true => Err(Failed::Interrupted),
                    false => Ok(r),
                });
            let _ = reply_tx.send(result);
        });
        match self.jobs.try_send(Job { deadline, run }) {
            Ok(()) => Ok(reply_rx),
            Err(flume::TrySendError::Full(_)) => Err(WorkerError::Busy {
                limit: self.limits.queue_limit_jobs,
            }),
            Err(flume::TrySendError::Disconnected(_)) => Err(WorkerError::Stopped),
        }
    }
}

/// Why a job sends back no result.
#[derive(Debug)]
enum Failed {
    /// The job panicked (the worker survives).
    Panicked,
    /// The job's statement was interrupted at its deadline.
    Interrupted,
}

fn open_connection(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = if path == Path::new(":memory:") {
        Connection::open_in_memory()?
    } else {
        Connection::open(path)?
    };
    conn.busy_timeout(busy)?;
    if path != Path::new(":memory:") {
        // Readers do not wait for a writer, and a writer does not wait for
        // readers: what a datasource shared by all shards wants.
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    Ok(conn)
}

/// The worker's loop. A statement still running when its job's caller
/// stopped waiting is interrupted (`SQLITE_INTERRUPT`: the statement fails,
/// its transaction rolls back), so a runaway query cannot hold the worker
/// and every datasource query queued behind it.
fn run(conn: &mut Connection, jobs: flume::Receiver<Job>) {
    let base = Instant::now();
    let deadline_ns = Arc::new(AtomicU64::new(u64::MAX));
    let interrupted = Arc::new(AtomicBool::new(false));
    let (handler_deadline, handler_interrupted) = (deadline_ns.clone(), interrupted.clone());
    let installed = conn.progress_handler(
        PROGRESS_CHECK_STEPS,
        Some(move || {
            let late = base.elapsed().as_nanos() as u64 > handler_deadline.load(Ordering::Relaxed);
            if late {
                handler_interrupted.store(true, Ordering::Relaxed);
            }
            late
        }),
    );
    debug_assert!(installed.is_ok());
    while let Ok(job) = jobs.recv() {
        let ns = job.deadline.saturating_duration_since(base).as_nanos() as u64;
        interrupted.store(false, Ordering::Relaxed);
        deadline_ns.store(ns, Ordering::Relaxed);
        (job.run)(conn, &interrupted);
        deadline_ns.store(u64::MAX, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Instant;

    fn on_executor<T: Send + 'static>(
        f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn memory(limits: SqliteLimits) -> SqliteWorker {
        SqliteWorker::open(":memory:", limits).unwrap()
    }

    /// Goal: a job runs on the connection and its result comes back, SQL
    /// errors come back as values, and the worker survives a panic.
    #[test]
    fn results_and_errors_come_back_as_values() {
        let worker = memory(SqliteLimits::default());
        on_executor(move || {
            Box::pin(async move {
                let n: i64 = worker
                    .call(|c| c.query_row("SELECT 6 * 7", [], |r| r.get(0)))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(n, 42);
                let bad = worker
                    .call(|c| c.execute("INSERT INTO missing VALUES (1)", []))
                    .await
                    .unwrap();
                let message = bad.unwrap_err().to_string();
                assert!(message.contains("no such table: missing"), "{message}");
                let panicked = worker.call(|_| -> i32 { panic!("job panics") }).await;
                assert!(matches!(panicked, Err(WorkerError::Panicked)));
                let after: i64 = worker
                    .call(|c| c.query_row("SELECT 1", [], |r| r.get(0)))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(after, 1);
            })
        });
    }

    /// Goal: opening a path that cannot be a database is an error value.
    #[test]
    fn open_failure_is_an_error() {
        let err =
            SqliteWorker::open("/nonexistent-dir/x/y.db", SqliteLimits::default()).unwrap_err();
        assert!(matches!(err, WorkerError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-dir/x/y.db"));
    }

    /// Goal: several shards (executors on their own threads) share one
    /// worker, each with many jobs in flight at once, and every insert
    /// lands exactly once.
    #[test]
    fn many_shards_concurrent_jobs_share_one_worker() {
        let dir = std::env::temp_dir().join(format!("ec-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shards.db");
        let _ = std::fs::remove_file(&path);
        let worker = SqliteWorker::open(&path, SqliteLimits::default()).unwrap();
        const SHARDS: i64 = 4;
        const JOBS: i64 = 200;
        on_executor({
            let worker = worker.clone();
            move || {
                Box::pin(async move {
                    worker
                        .call(|c| {
                            // One fsync per insert would make this a disk test.
                            c.execute_batch(
                                "PRAGMA synchronous = OFF;
                                 CREATE TABLE t (shard INTEGER, n INTEGER)",
                            )
                        })
                        .await
                        .unwrap()
                        .unwrap();
                })
            }
        });
        let shards: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let worker = worker.clone();
                std::thread::spawn(move || {
                    on_executor(move || {
                        Box::pin(async move {
                            let tasks: Vec<_> = (0..JOBS)
                                .map(|n| {
                                    let worker = worker.clone();
                                    glommio::spawn_local(async move {
                                        worker
                                            .call(move |c| {
                                                c.execute(
                                                    "INSERT INTO t VALUES (?1, ?2)",
                                                    (shard, n),
                                                )
                                            })
                                            .await
                                            .unwrap()
                                            .unwrap()
                                    })
                                })
                                .collect();
                            for t in tasks {
                                assert_eq!(t.await, 1);
                            }
                        })
                    })
                })
            })
            .collect();
        for s in shards {
            s.join().unwrap();
        }
        let (rows, distinct) = on_executor(move || {
            Box::pin(async move {
                worker
                    .call(|c| {
                        c.query_row(
                            "SELECT COUNT(*), COUNT(DISTINCT shard * 100000 + n) FROM t",
                            [],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                        )
                    })
                    .await
                    .unwrap()
                    .unwrap()
            })
        });
        assert_eq!(rows, SHARDS * JOBS);
        assert_eq!(distinct, SHARDS * JOBS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Goal: while a slow job runs on the worker, the shard keeps running
    /// its other tasks (ticks advance), and the slow job still answers.
    #[test]
    fn a_slow_query_does_not_block_the_shard() {
        let worker = memory(SqliteLimits::default());
        on_executor(move || {
            Box::pin(async move {
                let ticks = Rc::new(Cell::new(0u32));
                let ticker = glommio::spawn_local({
                    let ticks = ticks.clone();
                    async move {
                        for _ in 0..20 {
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                            ticks.set(ticks.get() + 1);
                        }
                    }
                });
                let started = Instant::now();
                let slow = worker
                    .call(|_| {
                        std::thread::sleep(Duration::from_millis(300));
                        7
                    })
                    .await
                    .unwrap();
                assert_eq!(slow, 7);
                assert!(started.elapsed() >= Duration::from_millis(300));
                // 300 ms of 10 ms ticks: the shard was free the whole time.
                assert!(ticks.get() >= 15, "only {} ticks", ticks.get());
                ticker.await;
            })
        });
    }

    /// Goal: with the worker stuck and `queue_limit_jobs` jobs waiting, one
    /// more is refused at once with `Busy`; a caller's timeout is a value;
    /// once the worker frees up, queued jobs whose callers remain complete.
    #[test]
    fn the_channel_limit_refuses_and_timeouts_are_values() {
        let limits = SqliteLimits {
            queue_limit_jobs: 3,
            call_timeout_ms: 2_000,
            ..SqliteLimits::default()
        };
        let worker = memory(limits);
        on_executor(move || {
            Box::pin(async move {
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let (started_tx, started_rx) = flume::bounded::<()>(1);
                let blocker = glommio::spawn_local({
                    let worker = worker.clone();
                    async move {
                        worker
                            .call(move |_| {
                                started_tx.send(()).unwrap();
                                release_rx.recv().unwrap();
                                "released"
                            })
                            .await
                    }
                });
                started_rx.recv_async().await.unwrap();
                let waiting: Vec<_> = (0..3)
                    .map(|i| {
                        let worker = worker.clone();
                        glommio::spawn_local(async move { worker.call(move |_| i).await })
                    })
                    .collect();
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert_eq!(worker.queued_jobs(), 3);
                let refused = worker.call(|_| 99).await;
                assert!(
                    matches!(refused, Err(WorkerError::Busy { limit: 3 })),
                    "{refused:?}"
                );
                release_tx.send(()).unwrap();
                assert_eq!(blocker.await.unwrap(), "released");
                for (i, w) in waiting.into_iter().enumerate() {
                    assert_eq!(w.await.unwrap(), i);
                }
                let late = worker
                    .call_with_timeout(Duration::from_millis(50), |_| {
                        std::thread::sleep(Duration::from_millis(200));
                        1
                    })
                    .await;
                assert!(matches!(late, Err(WorkerError::Timeout(50))), "{late:?}");
                // A runaway statement is interrupted when its caller gives
                // up: the worker is free for the next job at once. (First
                // let the sleeping job above finish.)
                glommio::timer::sleep(Duration::from_millis(200)).await;
                let runaway = worker
                    .call_with_timeout(Duration::from_millis(100), |c| {
                        c.query_row(
                            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
                            [],
                            |r| r.get::<_, i64>(0),
                        )
                    })
                    .await;
                assert!(
                    matches!(runaway, Err(WorkerError::Timeout(100))),
                    "{runaway:?}"
                );
                let t = Instant::now();
                let next: i64 = worker
                    .call(|c| c.query_row("SELECT 5", [], |r| r.get(0)))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(next, 5);
                assert!(
                    t.elapsed() < Duration::from_millis(100),
                    "{:?}",
                    t.elapsed()
                );
            })
        });
    }

    /// Measures one round trip shard -> worker -> shard (a trivial job).
    /// Run with `--nocapture` to see the numbers.
    #[test]
    fn round_trip_latency() {
        let worker = memory(SqliteLimits::default());
        let (median, p99) = on_executor(move || {
            Box::pin(async move {
                const N: usize = 2_000;
                let mut took = Vec::with_capacity(N);
                for _ in 0..N {
                    let t = Instant::now();
                    worker.call(|_| 1u8).await.unwrap();
                    took.push(t.elapsed());
                }
                took.sort();
                (took[N / 2], took[N * 99 / 100])
            })
        });
        println!("sqlite worker round trip: median {median:?}, p99 {p99:?}");
        assert!(median < Duration::from_millis(50), "median {median:?}");
    }
}
