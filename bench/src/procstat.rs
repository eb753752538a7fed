//! CPU time, context switches and memory of processes under test, read
//! from /proc.
//! Owns: parsing /proc/PID/stat, /proc/PID/status and the per-thread
//! /proc/PID/task/TID/{comm,status}.
//! May call: the filesystem under /proc, `sysconf(_SC_CLK_TCK)`.
//! Never: signals or changes any process.
//!
//! An MTA may be one process (ecelerity, kumod) or a tree (Postfix's master
//! and its smtpd/cleanup/qmgr/smtp children). `tree_cpu` sums user+system
//! time of the root and every live descendant, plus the time of children
//! they already reaped (cutime+cstime), so a Postfix smtpd that exits during
//! a run is still counted through master's cutime.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One process's fields from /proc/PID/stat that we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub cpu_ticks: u64,
    /// utime + cutime, in clock ticks (part of `cpu_ticks`).
    pub user_ticks: u64,
}

/// Parse the text of /proc/PID/stat. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ppid = field(4)? as u32;
    let user_ticks = field(14)? + field(16)?;
    let cpu_ticks = user_ticks + field(15)? + field(17)?;
    Some(ProcStat {
        ppid,
        cpu_ticks,
        user_ticks,
    })
}

/// Clock ticks per second for /proc CPU fields.
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every live process: pid → stat.
fn all_stats() -> HashMap<u32, ProcStat> {
    let mut stats = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return stats;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            stats.insert(pid, stat);
        }
    }
    stats
}

/// `root` and all its live descendants.
pub fn tree_pids(root: u32) -> Vec<u32> {
    let stats = all_stats();
    let mut pids = vec![root];
    let mut index = 0;
    while index < pids.len() {
        let parent = pids[index];
        for (&pid, stat) in &stats {
            if stat.ppid == parent && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        index += 1;
    }
    pids.retain(|pid| stats.contains_key(pid));
    pids
}

/// CPU time used so far by `root` and its descendants (live and reaped).
pub fn tree_cpu(root: u32) -> Duration {
    let ticks: u64 = tree_pids(root)
        .iter()
        .filter_map(|&pid| read_stat(pid))
        .map(|s| s.cpu_ticks)
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_s() as f64)
}

/// CPU time used so far by `root` and its descendants, split into
/// (user, system).
pub fn tree_cpu_split(root: u32) -> (Duration, Duration) {
    let (mut user, mut all) = (0u64, 0u64);
    for stat in tree_pids(root).iter().filter_map(|&pid| read_stat(pid)) {
        user += stat.user_ticks;
        all += stat.cpu_ticks;
    }
    let ticks = clock_ticks_per_s() as f64;
    (
        Duration::from_secs_f64(user as f64 / ticks),
        Duration::from_secs_f64(all.saturating_sub(user) as f64 / ticks),
    )
}

/// Resident set size in bytes (VmRSS) of one process; 0 when unreadable.
pub fn rss_bytes(pid: u32) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    parse_vm_rss(&text)
}

/// VmRSS from the text of /proc/PID/status, in bytes.
pub fn parse_vm_rss(text: &str) -> u64 {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return kib * 1024;
        }
    }
    0
}

/// Sum of VmRSS over a process tree.
pub fn tree_rss(root: u32) -> u64 {
    tree_pids(root).iter().map(|&pid| rss_bytes(pid)).sum()
}

/// Context switches of one thread, or a sum over threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switches {
    /// The thread gave up the CPU itself (it blocked: a sleep, a wait).
    pub voluntary: u64,
    /// The scheduler took the CPU away (preempted).
    pub involuntary: u64,
}

impl Switches {
    pub fn total(self) -> u64 {
        self.voluntary + self.involuntary
    }

    fn saturating_sub(self, earlier: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    fn add(&mut self, other: Switches) {
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
    }
}

/// voluntary_ctxt_switches and nonvoluntary_ctxt_switches from the text of
/// /proc/PID/task/TID/status.
pub fn parse_switches(text: &str) -> Option<Switches> {
    let mut voluntary = None;
    let mut involuntary = None;
    for line in text.lines() {
        let value = |rest: &str| rest.trim().parse::<u64>().ok();
        if let Some(rest) = line.strip_prefix("voluntary_ctxt_switches:") {
            voluntary = value(rest);
        } else if let Some(rest) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
            involuntary = value(rest);
        }
    }
    Some(Switches {
        voluntary: voluntary?,
        involuntary: involuntary?,
    })
}

/// A thread's name with its instance numbers dropped, so threads of one
/// kind add up: glommio's `shard0-1` and `shard1-2` are `shard`,
/// `iou-wrk-4711` is `iou-wrk`.
pub fn thread_kind(comm: &str) -> String {
    comm.trim()
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
        .to_string()
}

/// Suffix of the kind of a thread that shares its exact name with an older
/// thread: a thread inherits its creator's name, so glommio's blocking
/// thread pool (file opens, closes, renames) shows as a second `shard0-1`,
/// created after its executor.
pub const HELPER_SUFFIX: &str = " helper";

/// Every live thread of `pid`: (tid, name, context switches so far).
pub fn thread_switches(pid: u32) -> Vec<(u32, String, Switches)> {
    let mut threads = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Some(switches) = fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|text| parse_switches(&text))
        else {
            continue;
        };
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        threads.push((tid, comm.trim().to_string(), switches));
    }
    threads
}

/// Context switches of one process over a window, thread by thread. The
/// kernel keeps these counts per thread and drops them when a thread exits
/// (io_uring's `iou-wrk-*` workers come and go), so the meter is sampled
/// during the window and keeps each thread's last sampled count: a thread
/// that exits counts up to its last sample, one born and gone between two
/// samples not at all. The totals are therefore a lower bound, tight when
/// samples are frequent against worker lifetimes (io-wq keeps an idle worker
/// for seconds).
#[derive(Clone, Debug)]
pub struct SwitchMeter {
    pid: u32,
    /// Counts of the threads alive when the window opened.
    baseline: HashMap<u32, Switches>,
    /// Last sampled name and counts of every thread seen in the window.
    latest: HashMap<u32, (String, Switches)>,
}

/// What a `SwitchMeter` counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchTotals {
    pub all: Switches,
    /// By thread kind (`thread_kind`, `HELPER_SUFFIX`): `shard`,
    /// `shard helper`, `iou-wrk`, ...
    pub by_kind: BTreeMap<String, Switches>,
    /// Threads seen during the window.
    pub threads_seen: u64,
    /// Threads seen that were not alive when the window opened.
    pub threads_started: u64,
}

impl SwitchMeter {
    /// Open a window on `pid`'s threads now.
    pub fn start(pid: u32) -> SwitchMeter {
        let threads = thread_switches(pid);
        SwitchMeter {
            pid,
            baseline: threads.iter().map(|(tid, _, s)| (*tid, *s)).collect(),
            latest: threads
                .into_iter()
                .map(|(tid, comm, s)| (tid, (comm, s)))
                .collect(),
        }
    }

    /// Read every live thread's counts again.
    pub fn sample(&mut self) {
        for (tid, comm, switches) in thread_switches(self.pid) {
            self.latest.insert(tid, (comm, switches));
        }
    }

    /// Switches since `start` up to the last sample.
    pub fn totals(&self) -> SwitchTotals {
        let mut totals = SwitchTotals::default();
        // The oldest (lowest) tid of each exact name is the original; later
        // namesakes are its helpers.
        let mut first_of_name: HashMap<&str, u32> = HashMap::new();
        for (tid, (comm, _)) in &self.latest {
            let first = first_of_name.entry(comm.as_str()).or_insert(*tid);
            *first = (*first).min(*tid);
        }
        for (tid, (comm, switches)) in &self.latest {
            let before = self.baseline.get(tid).copied().unwrap_or_default();
            let delta = switches.saturating_sub(before);
            totals.all.add(delta);
            let mut kind = thread_kind(comm);
            if first_of_name.get(comm.as_str()) != Some(tid) {
                kind.push_str(HELPER_SUFFIX);
            }
            totals.by_kind.entry(kind).or_default().add(delta);
            totals.threads_seen += 1;
            if !self.baseline.contains_key(tid) {
                totals.threads_started += 1;
            }
        }
        totals
    }
}

/// How often a `SwitchSampler` reads the threads' counts. io-wq keeps an
/// idle worker for seconds, so 50 ms loses next to nothing, and reading a
/// dozen small files 20 times a second costs the shared cores little.
pub const SWITCH_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// A `SwitchMeter` sampled on a thread of its own until `finish`.
pub struct SwitchSampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<SwitchMeter>,
}

impl SwitchSampler {
    pub fn start(pid: u32) -> SwitchSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let mut meter = SwitchMeter::start(pid);
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("ecbench-switches".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(SWITCH_SAMPLE_INTERVAL);
                    meter.sample();
                }
                meter
            })
            .expect("spawn the context switch sampler");
        SwitchSampler { stop, thread }
    }

    /// Stop sampling, take a last sample and return the window's totals.
    pub fn finish(self) -> SwitchTotals {
        self.stop.store(true, Ordering::Relaxed);
        let mut meter = self.thread.join().expect("sampler thread");
        meter.sample();
        meter.totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text =
            "42 (a (weird) name) S 7 42 42 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 1 0 5 0 0";
        let stat = parse_stat(text).expect("parses");
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.cpu_ticks, 11 + 22 + 33 + 44);
        assert_eq!(stat.user_ticks, 11 + 33);
    }

    #[test]
    fn switches_are_read_from_status_and_threads_group_by_kind() {
        let text = "Name:\tshard0\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_switches(text),
            Some(Switches {
                voluntary: 120,
                involuntary: 7
            })
        );
        assert_eq!(parse_switches("Name:\tx\n"), None);
        assert_eq!(thread_kind("shard1-2"), "shard");
        assert_eq!(thread_kind("iou-wrk-4711\n"), "iou-wrk");
        assert_eq!(thread_kind("ecelerity"), "ecelerity");
    }

    #[test]
    fn a_thread_that_sleeps_is_counted_by_the_meter() {
        // The sleeper blocks 20 times, waits to be sampled, then exits: its
        // counts must survive its exit.
        let mut meter = SwitchMeter::start(std::process::id());
        let (slept, sampled) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (slept_tx, slept_rx) = slept;
        let (sampled_tx, sampled_rx) = sampled;
        let sleeper = std::thread::Builder::new()
            .name("meter-test".into())
            .spawn(move || {
                for _ in 0..20 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                slept_tx.send(()).expect("send");
                let _ = sampled_rx.recv();
            })
            .expect("spawn");
        slept_rx.recv().expect("the sleeper slept");
        meter.sample();
        sampled_tx.send(()).expect("send");
        sleeper.join().expect("join");
        meter.sample();
        let totals = meter.totals();
        let kind = totals
            .by_kind
            .get("meter-test")
            .copied()
            .unwrap_or_default();
        assert!(kind.voluntary >= 20, "{totals:?}");
        assert!(totals.threads_started >= 1);
        assert!(totals.all.total() >= kind.total());
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        assert!(rss_bytes(pid) > 0);
        assert!(tree_pids(pid).contains(&pid));
        assert_eq!(parse_vm_rss("Name: x\nVmRSS:\t  2048 kB\n"), 2048 * 1024);
    }
}
