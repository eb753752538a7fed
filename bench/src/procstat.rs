//! CPU time and memory of processes under test, read from /proc.
//! Owns: parsing /proc/PID/stat and /proc/PID/status.
//! May call: the filesystem under /proc, `sysconf(_SC_CLK_TCK)`.
//! Never: signals or changes any process.
//!
//! An MTA may be one process (ecelerity, kumod) or a tree (Postfix's master
//! and its smtpd/cleanup/qmgr/smtp children). `tree_cpu` sums user+system
//! time of the root and every live descendant, plus the time of children
//! they already reaped (cutime+cstime), so a Postfix smtpd that exits during
//! a run is still counted through master's cutime.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

/// One process's fields from /proc/PID/stat that we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parse the text of /proc/PID/stat. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ppid = field(4)? as u32;
    let cpu_ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Some(ProcStat { ppid, cpu_ticks })
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
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        assert!(rss_bytes(pid) > 0);
        assert!(tree_pids(pid).contains(&pid));
        assert_eq!(parse_vm_rss("Name: x\nVmRSS:\t  2048 kB\n"), 2048 * 1024);
    }
}
