//! The kill -9 soak: the long version of crash.rs's zero_loss_under_kill9.
//! Several clients inject without pause while the daemon is SIGKILLed at
//! random moments `ECELERITY_SOAK_KILLS` times (default 100) and restarted;
//! at the end every Message-ID that got 250 must have reached the sink.
//! Ignored by default (minutes long): run it with `tests/soak [KILLS]`.
//! `ECELERITY_SEED` repeats the kill timing.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use ecelerity_tests::{
    free_port, send_py, ChildGuard, Daemon, MessageIdTally, Rng, Sink, TempDir, TestConfig,
};

const SOAK_KILLS_DEFAULT: usize = 100;
/// Client processes, and threads (connections) in each.
const SOAK_CLIENTS: usize = 3;
const SOAK_THREADS_PER_CLIENT: usize = 2;
/// Pause between a restart and the next kill.
const KILL_GAP_MS_MIN: u64 = 200;
const KILL_GAP_MS_MAX: u64 = 2000;
/// After the last kill, every accepted message must arrive within this.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Goal: zero loss over many kill -9 cycles under continuous load; the
/// figures (kills, accepted, delivered, lost, duplicates) are printed.
#[test]
#[ignore = "minutes long: run with tests/soak [KILLS]"]
fn kill9_soak_loses_nothing() {
    let kills_wanted: usize = std::env::var("ECELERITY_SOAK_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SOAK_KILLS_DEFAULT);
    let dir = TempDir::new("soak");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let config = TestConfig::new(sink.port());
    let mut daemon = Daemon::start(dir.path(), &config.render());
    let mut rng = Rng::from_env_or_clock();

    let mut clients: Vec<(ChildGuard, std::path::PathBuf)> = (0..SOAK_CLIENTS)
        .map(|i| {
            let out = dir.join(format!("client{i}.out"));
            let mut command = send_py(daemon.smtp_port());
            command.args([
                "--count",
                "1000000000",
                "--threads",
                &SOAK_THREADS_PER_CLIENT.to_string(),
                "--min-size",
                "512",
                "--max-size",
                "8192",
                "--prefix",
                &format!("soak{i}"),
                "--seed",
                &(i + 1).to_string(),
                "--until-accepted",
                "--deadline",
                "100000",
            ]);
            let child = command
                .stdin(Stdio::null())
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(dir.join(format!("client{i}.err"))).unwrap())
                .spawn()
                .expect("spawn send.py");
            (ChildGuard::new("send.py", child), out)
        })
        .collect();

    let started = Instant::now();
    for kill in 1..=kills_wanted {
        thread::sleep(Duration::from_millis(
            rng.range(KILL_GAP_MS_MIN, KILL_GAP_MS_MAX),
        ));
        daemon.kill9();
        if kill % 10 == 0 || kill == kills_wanted {
            eprintln!("e2e: soak kill -9 #{kill} at {:?}", started.elapsed());
        }
        daemon.restart();
    }
    // Let the clients run a moment on the last life, then stop them. A
    // client killed mid-transaction never printed that message's code, so
    // it is not counted as accepted.
    thread::sleep(Duration::from_secs(2));
    for (client, _) in clients.iter_mut() {
        client.kill();
    }
    let mut accepted = BTreeSet::new();
    let mut attempts = 0usize;
    for (_, out) in &clients {
        for line in fs::read_to_string(out).unwrap_or_default().lines() {
            if let Some((id, code)) = line.split_once('\t') {
                attempts += 1;
                if code == "250" {
                    accepted.insert(id.to_string());
                }
            }
        }
    }

    let mut tally = MessageIdTally::default();
    let lost = tally.wait_for_all(&sink, &accepted, DRAIN_TIMEOUT, Duration::from_millis(500));
    let counts: &HashMap<String, usize> = &tally.counts;
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    let extra_copies: usize = counts.values().map(|&n| n.saturating_sub(1)).sum();
    let unconfirmed = counts.keys().filter(|id| !accepted.contains(*id)).count();
    let summary = format!(
        "soak: {kills_wanted} kill -9 cycles in {:?}; {attempts} attempts, {} answered 250; \
         delivered {} distinct; lost {}; duplicated {duplicated} ({extra_copies} extra copies); \
         {unconfirmed} delivered without a 250 seen (client cut mid-transaction or refused after spooling)",
        started.elapsed(),
        accepted.len(),
        counts.len(),
        lost.len(),
    );
    eprintln!("e2e: {summary}");
    if let Some(path) = std::env::var_os("ECELERITY_SOAK_REPORT") {
        let _ = fs::write(path, format!("{summary}\n"));
    }
    assert!(!accepted.is_empty(), "no message was accepted");
    assert!(
        lost.is_empty(),
        "{} messages answered 250 never arrived (first: {:?}); daemon stderr:\n{}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>(),
        daemon.stderr_text()
    );
}
