//! Stress test for glommio's sleep/wake protocol (issue 9 item 6, the lost
//! wake-up of the timer and fence patches in vendor/glommio).
//!
//! Two executors park and wake as fast as they can for a few seconds while
//! everything that can wake a parked executor happens at random moments:
//! its own timers (fired, and cancelled before they fire), a message on a
//! shared channel from the other executor, a waker called from a plain
//! thread, and preemption of CPU bursts in a task queue with a 1 ms latency
//! requirement (as the engine's inbound queue has). Every wait is measured
//! against the moment it should have ended; a lost wake-up shows as one that
//! ends late by seconds (or never: the watchdog then fails the test).
//!
//! Owns: nothing but this test. May call: glommio's public API, std threads.
//! Never: sockets, files.
//!
//! Longer run: `ECELERITY_WAKEUP_STRESS_MS=60000 cargo nextest run -p
//! ecelerity-engine --test glommio_wakeups`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::shared_channel;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

/// How long the stress runs when `ECELERITY_WAKEUP_STRESS_MS` is unset.
const STRESS_MS_DEFAULT: u64 = 4_000;
/// A wait that ends this much later than it should is a lost wake-up. The
/// machine is shared and loaded (at load 20 on 2 cores a whole process was
/// seen off its cores for ~0.5 s), so the bound is far above scheduling
/// noise; the stall this test looks for lasts until the watchdog.
const LATE_LIMIT_MS: u64 = 5_000;
/// The whole test fails (the process exits) when it has not finished this
/// long after its stress time: an executor that never wakes again.
const WATCHDOG_GRACE_MS: u64 = 20_000;

/// Small deterministic generator (xorshift64*), one per task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// The latest moment each kind of wait ended, measured against when it
/// should have ended, in microseconds; and how many waits of each kind ran.
#[derive(Default)]
struct Lateness {
    worst_us: [AtomicU64; KINDS],
    count: [AtomicU64; KINDS],
}

const KINDS: usize = 4;
const KIND_NAMES: [&str; KINDS] = [
    "timer (sleep)",
    "shared channel round trip",
    "foreign wake",
    "timer raced against a cancelled timer",
];
const TIMER: usize = 0;
const CHANNEL: usize = 1;
const FOREIGN: usize = 2;
const RACED: usize = 3;

impl Lateness {
    fn record(&self, kind: usize, late: Duration) {
        let us = late.as_micros() as u64;
        self.worst_us[kind].fetch_max(us, Ordering::Relaxed);
        self.count[kind].fetch_add(1, Ordering::Relaxed);
    }
    fn report(&self) -> String {
        (0..KINDS)
            .map(|k| {
                format!(
                    "{}: {} waits, worst {} us late",
                    KIND_NAMES[k],
                    self.count[k].load(Ordering::Relaxed),
                    self.worst_us[k].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A slot a plain thread wakes: it stores the instant of the wake, then
/// calls the waker the task left there.
#[derive(Default)]
struct ForeignSlot {
    state: Mutex<(Option<Instant>, Option<Waker>)>,
}

struct ForeignWait<'a>(&'a ForeignSlot);

impl Future for ForeignWait<'_> {
    type Output = Instant;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        let mut state = self.0.state.lock().unwrap();
        match state.0.take() {
            Some(at) => Poll::Ready(at),
            None => {
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn stress_ms() -> u64 {
    std::env::var("ECELERITY_WAKEUP_STRESS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STRESS_MS_DEFAULT)
}

/// Sleeps for a random 0-3 ms and records how late it woke.
async fn sleeper(seed: u64, until: Instant, lateness: Arc<Lateness>) {
    let mut rng = Rng::new(seed);
    while Instant::now() < until {
        let d = Duration::from_micros(rng.below(3_000));
        let start = Instant::now();
        glommio::timer::sleep(d).await;
        lateness.record(TIMER, start.elapsed().saturating_sub(d));
    }
}

/// Races a short sleep against a longer one (the longer one is cancelled:
/// its timer leaves the wheel while the shard may have armed it), so the
/// next timer the executor must wake for keeps moving earlier and later.
async fn racer(seed: u64, until: Instant, lateness: Arc<Lateness>) {
    let mut rng = Rng::new(seed);
    while Instant::now() < until {
        let short = Duration::from_micros(rng.below(4_000));
        let long = short + Duration::from_micros(1 + rng.below(20_000));
        let start = Instant::now();
        futures_lite::future::or(glommio::timer::sleep(short), glommio::timer::sleep(long)).await;
        lateness.record(RACED, start.elapsed().saturating_sub(short));
    }
}

/// CPU bursts of 0-3 ms in a task queue that wants 1 ms latency, with a
/// yield whenever glommio asks: the preempt timer is armed, fires and is
/// cancelled at every park.
async fn burner(seed: u64, until: Instant) {
    let mut rng = Rng::new(seed);
    while Instant::now() < until {
        let burst = Duration::from_micros(rng.below(3_000));
        let start = Instant::now();
        while start.elapsed() < burst {
            glommio::yield_if_needed().await;
        }
        glommio::timer::sleep(Duration::from_micros(rng.below(5_000))).await;
    }
}

#[test]
fn parked_executors_wake_for_timers_channels_and_foreign_wakes() {
    let run = Duration::from_millis(stress_ms());
    let until = Instant::now() + run;
    let lateness = Arc::new(Lateness::default());
    let done = Arc::new(AtomicBool::new(false));

    {
        let (lateness, done) = (lateness.clone(), done.clone());
        let limit = run + Duration::from_millis(WATCHDOG_GRACE_MS);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "lost wake-up: the executors did not finish {:?} after their {:?} of stress ({})",
                limit - run,
                run,
                lateness.report()
            );
            std::process::exit(101);
        });
    }

    let foreign = Arc::new(ForeignSlot::default());
    let foreign_stop = Arc::new(AtomicBool::new(false));
    let waker_thread = {
        let (foreign, stop) = (foreign.clone(), foreign_stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(rng.below(2_000)));
                let waker = {
                    let mut state = foreign.state.lock().unwrap();
                    if state.0.is_some() {
                        None
                    } else {
                        state.0 = Some(Instant::now());
                        state.1.take()
                    }
                };
                if let Some(w) = waker {
                    w.wake();
                }
            }
        })
    };

    let (ping_tx, ping_rx) = shared_channel::new_bounded::<Instant>(1);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<Instant>(1);

    let a = {
        let (lateness, foreign) = (lateness.clone(), foreign.clone());
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("wake-a")
            .spawn(move || async move {
                let tx = ping_tx.connect().await;
                let rx = pong_rx.connect().await;
                let burn = glommio::executor().create_task_queue(
                    Shares::Static(100),
                    Latency::Matters(Duration::from_millis(1)),
                    "burn",
                );
                let mut tasks = vec![
                    glommio::spawn_local(sleeper(1, until, lateness.clone())).detach(),
                    glommio::spawn_local(racer(2, until, lateness.clone())).detach(),
                    glommio::spawn_local_into(burner(3, until), burn)
                        .unwrap()
                        .detach(),
                ];
                let waits = lateness.clone();
                tasks.push(
                    glommio::spawn_local(async move {
                        while Instant::now() < until {
                            let at = ForeignWait(&foreign).await;
                            waits.record(FOREIGN, at.elapsed());
                        }
                    })
                    .detach(),
                );
                // Ping-pong with the other executor; the other side sleeps
                // a random while before it answers, so this side parks.
                let mut rng = Rng::new(4);
                let rounds = Rc::new(Cell::new(0u64));
                while Instant::now() < until {
                    let pause = Duration::from_micros(rng.below(1_500));
                    let sent = Instant::now();
                    if tx.send(sent + pause).await.is_err() {
                        break;
                    }
                    match rx.recv().await {
                        Some(_) => {
                            lateness.record(CHANNEL, sent.elapsed().saturating_sub(pause));
                            rounds.set(rounds.get() + 1);
                        }
                        None => break,
                    }
                }
                drop(tx);
                for t in tasks {
                    t.await;
                }
                rounds.get()
            })
            .unwrap()
    };

    let b = {
        let lateness = lateness.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("wake-b")
            .spawn(move || async move {
                let rx = ping_rx.connect().await;
                let tx = pong_tx.connect().await;
                let tasks = vec![
                    glommio::spawn_local(sleeper(11, until, lateness.clone())).detach(),
                    glommio::spawn_local(racer(12, until, lateness.clone())).detach(),
                ];
                while let Some(answer_at) = rx.recv().await {
                    let now = Instant::now();
                    if answer_at > now {
                        glommio::timer::sleep(answer_at - now).await;
                    }
                    if tx.send(Instant::now()).await.is_err() {
                        break;
                    }
                }
                drop(tx);
                for t in tasks {
                    t.await;
                }
            })
            .unwrap()
    };

    let rounds = a.join().unwrap();
    b.join().unwrap();
    foreign_stop.store(true, Ordering::SeqCst);
    waker_thread.join().unwrap();
    done.store(true, Ordering::SeqCst);

    let report = lateness.report();
    eprintln!("{rounds} round trips; {report}");
    for k in 0..KINDS {
        assert!(
            lateness.count[k].load(Ordering::Relaxed) > 0,
            "no wait of kind {} ran: {report}",
            KIND_NAMES[k]
        );
        let worst = lateness.worst_us[k].load(Ordering::Relaxed);
        assert!(
            worst < LATE_LIMIT_MS * 1_000,
            "lost wake-up: a {} ended {worst} us late: {report}",
            KIND_NAMES[k]
        );
    }
}
