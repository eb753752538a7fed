//! The console's status commands: `summary` (and `summary reset`), `pid`,
//! `memory`, `sysinfo`, `version`, in Momentum's output shapes.
//!
//! Owns: the rendering of each (pure: figures, or the text of a /proc
//! file, in; text out) and the `summary reset` baseline ([`Baseline`]).
//! May call: `stats`. Never: a shard.
//!
//! Shards' counters only grow (each has a single writer), so `summary
//! reset` does not touch them: the console remembers the totals at the
//! reset and shows counters minus those; gauges (queue sizes,
//! concurrency) are shown as they are.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use crate::stats::{Counter, Figures, Kind};

/// Totals at the last `summary reset` (all zero until one), and when.
/// Only console threads touch it, a few times a second at most.
#[derive(Debug)]
pub struct Baseline {
    inner: Mutex<(Figures, Instant)>,
}

impl Baseline {
    pub fn new(started: Instant) -> Baseline {
        Baseline {
            inner: Mutex::new((Figures::default(), started)),
        }
    }

    /// The totals at the last reset and the milliseconds since it.
    pub fn read(&self) -> (Figures, u64) {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.elapsed().as_millis() as u64)
    }

    /// Makes `totals` the new zero, from now.
    pub fn reset(&self, totals: Figures) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *guard = (totals, Instant::now());
    }
}

/// Counters minus the baseline; gauges as they are.
pub fn since_reset(totals: &Figures, baseline: &Figures) -> Figures {
    let mut out = *totals;
    for &c in Counter::ALL {
        if c.kind() == Kind::Counter {
            out.set(c, totals.get(c).saturating_sub(baseline.get(c)));
        }
    }
    out
}

/// `count` per second over `ms` milliseconds (at least one second).
pub fn rate_per_second(count: u64, ms: u64) -> f64 {
    count as f64 * 1000.0 / ms.max(1000) as f64
}

/// Width of the label column of `summary` (right-aligned labels, as
/// Momentum prints them).
const LABEL_WIDTH: usize = 32;
/// Width of the value column.
const VALUE_WIDTH: usize = 14;

/// Momentum's `Summary Statistics` block: `t` are the totals since the
/// last reset (see [`since_reset`]), `reset_ms` how long ago that was.
pub fn summary_block(t: &Figures, reset_ms: u64, uptime_secs: u64) -> String {
    use Counter::*;
    let dns = t.get(DnsAQueries) + t.get(DnsMxQueries);
    let rate = |count: u64, unit: &str| {
        format!(
            "{:>VALUE_WIDTH$.2} {unit}/second",
            rate_per_second(count, reset_ms)
        )
    };
    let rows: [(&str, String); 24] = [
        (
            "Outbound Concurrency",
            t.get(OutboundConnections).to_string(),
        ),
        ("Inbound Concurrency", t.get(InboundConnections).to_string()),
        ("Active Domains", t.get(ActiveDomains).to_string()),
        ("Active Queue Size", t.get(ActiveQueue).to_string()),
        ("Delayed Queue Size", t.get(DelayedQueue).to_string()),
        // Every queued message is on disk and its entry in memory: there is
        // no third, swapped-out state.
        ("Destaged Queue Size", "0".to_string()),
        (
            "Total Queue Size",
            (t.get(ActiveQueue) + t.get(DelayedQueue)).to_string(),
        ),
        ("DNS A Queries", t.get(DnsAQueries).to_string()),
        ("DNS MX Queries", t.get(DnsMxQueries).to_string()),
        ("Pending DNS Queries", t.get(DnsPending).to_string()),
        ("Query Rate", rate(dns, "queries")),
        (
            "Successfully Delivered Messages",
            t.get(Delivered).to_string(),
        ),
        ("Failed Messages", t.get(Failed).to_string()),
        ("Rejected Messages", t.get(Rejections).to_string()),
        ("Received Messages", t.get(MessagesReceived).to_string()),
        ("Delivery Rate", rate(t.get(Delivered), "messages")),
        ("Reception Rate", rate(t.get(MessagesReceived), "messages")),
        ("Transient Failures", t.get(TransientFailures).to_string()),
        ("Spooled Messages", t.get(LiveMessages).to_string()),
        ("Received Bytes", t.get(BytesReceived).to_string()),
        ("Spool Segments", t.get(SpoolSegments).to_string()),
        (
            "Failing Webhooks",
            format!(
                "{} of {}",
                t.get(WebhookEndpointsFailing),
                t.get(WebhookEndpoints)
            ),
        ),
        (
            "Statistics Last Reset",
            format!("{} seconds", reset_ms / 1000),
        ),
        ("Uptime", format!("{uptime_secs} seconds")),
    ];
    let mut out = String::from("Summary Statistics\n\n");
    for (label, value) in rows {
        let _ = writeln!(out, "{label:>LABEL_WIDTH$}: {value:>VALUE_WIDTH$}");
    }
    out
}

/// `version`: the version string, then the product type.
pub fn version() -> String {
    format!(
        "ecelerity {} (thread-per-core MTA)\nProduct type: ecelerity MTA (Momentum 4 compatible console and configuration)\n",
        crate::VERSION
    )
}

/// The `/proc/self/status` lines `memory` shows, in this order.
const MEMORY_FIELDS: [(&str, &str); 6] = [
    ("VmPeak", "Peak Virtual Memory"),
    ("VmSize", "Virtual Memory"),
    ("VmHWM", "Peak Resident Memory"),
    ("VmRSS", "Resident Memory"),
    ("VmData", "Data Segment"),
    ("VmLck", "Locked Memory"),
];

/// `memory`: the daemon's memory use, from the text of `/proc/self/status`
/// (sizes in bytes).
pub fn memory(proc_status: &str) -> String {
    let mut out = String::from("Memory Statistics\n\n");
    for (field, label) in MEMORY_FIELDS {
        let Some(kib) = proc_kib(proc_status, field) else {
            continue;
        };
        let _ = writeln!(
            out,
            "{label:>LABEL_WIDTH$}: {:>VALUE_WIDTH$} bytes",
            kib * 1024
        );
    }
    out
}

/// The value of a `Name:   123 kB` line.
fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// What `sysinfo` reads from the system (gathered by the console thread).
#[derive(Debug, Default, Clone)]
pub struct SysFacts {
    pub hostname: String,
    /// `uname -srm`.
    pub os: String,
    pub cpus: usize,
    pub shards: usize,
    /// Text of /proc/loadavg.
    pub loadavg: String,
    /// Text of /proc/meminfo.
    pub meminfo: String,
    /// Text of /proc/uptime.
    pub uptime: String,
}

impl SysFacts {
    /// Reads the facts (blocking, on a console thread).
    pub fn gather(shards: usize) -> SysFacts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let (hostname, os) = uname();
        SysFacts {
            hostname,
            os,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shards,
            loadavg: read("/proc/loadavg"),
            meminfo: read("/proc/meminfo"),
            uptime: read("/proc/uptime"),
        }
    }
}

fn uname() -> (String, String) {
    // SAFETY: uname fills the struct we own; its fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (String::new(), String::new());
        }
        let s = |f: &[libc::c_char]| {
            std::ffi::CStr::from_ptr(f.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        (
            s(&u.nodename),
            format!("{} {} {}", s(&u.sysname), s(&u.release), s(&u.machine)),
        )
    }
}

/// `sysinfo`: the host the daemon runs on.
pub fn sysinfo(f: &SysFacts) -> String {
    let load: Vec<&str> = f.loadavg.split_whitespace().take(3).collect();
    let uptime = f
        .uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |s| s as u64);
    let mem = |field| proc_kib(&f.meminfo, field).map_or(0, |k| k * 1024);
    let rows: [(&str, String); 8] = [
        ("Hostname", f.hostname.clone()),
        ("Operating System", f.os.clone()),
        ("CPUs", f.cpus.to_string()),
        ("Shards (event loops)", f.shards.to_string()),
        ("Load Average", load.join(" ")),
        ("Total Memory", format!("{} bytes", mem("MemTotal"))),
        ("Available Memory", format!("{} bytes", mem("MemAvailable"))),
        ("System Uptime", format!("{uptime} seconds")),
    ];
    let mut out = String::from("System Information\n\n");
    for (label, value) in rows {
        let _ = writeln!(out, "{label:>LABEL_WIDTH$}: {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_subtracts_counters_but_not_gauges() {
        let mut before = Figures::default();
        before.set(Counter::Delivered, 5);
        before.set(Counter::ActiveQueue, 3);
        let mut now = before;
        now.set(Counter::Delivered, 8);
        let shown = since_reset(&now, &before);
        assert_eq!(shown.get(Counter::Delivered), 3);
        assert_eq!(shown.get(Counter::ActiveQueue), 3, "a gauge is not reset");
    }

    #[test]
    fn summary_has_every_momentum_line_and_rates() {
        let mut t = Figures::default();
        t.set(Counter::Delivered, 30);
        t.set(Counter::MessagesReceived, 60);
        t.set(Counter::DnsAQueries, 4);
        t.set(Counter::DnsMxQueries, 6);
        let text = summary_block(&t, 10_000, 99);
        for label in [
            "Outbound Concurrency",
            "Inbound Concurrency",
            "Active Domains",
            "Active Queue Size",
            "Delayed Queue Size",
            "Destaged Queue Size",
            "Total Queue Size",
            "DNS A Queries",
            "DNS MX Queries",
            "Pending DNS Queries",
            "Successfully Delivered Messages",
            "Failed Messages",
            "Rejected Messages",
            "Received Messages",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{label}:"))),
                "{label} missing:\n{text}"
            );
        }
        let line = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap()
                .trim()
                .to_string()
        };
        assert!(line("Query Rate:").ends_with(" 1.00 queries/second"));
        assert!(line("Delivery Rate:").ends_with(" 3.00 messages/second"));
        assert!(line("Reception Rate:").ends_with(" 6.00 messages/second"));
        assert!(line("Statistics Last Reset:").ends_with(" 10 seconds"));
        assert!(line("Uptime:").ends_with(" 99 seconds"));
    }

    #[test]
    fn memory_reads_proc_status_in_bytes() {
        let text = memory("Name:\tx\nVmPeak:\t  200 kB\nVmRSS:\t   12 kB\n");
        assert!(text.contains("Peak Virtual Memory:"));
        assert!(text
            .lines()
            .any(|l| l.trim() == "Resident Memory:          12288 bytes"));
        assert!(!text.contains("Data Segment"), "absent fields are skipped");
    }

    #[test]
    fn sysinfo_shows_load_and_memory() {
        let f = SysFacts {
            hostname: "h".into(),
            os: "Linux 6 x86_64".into(),
            cpus: 2,
            shards: 2,
            loadavg: "0.50 0.25 0.10 1/100 42\n".into(),
            meminfo: "MemTotal: 1000 kB\nMemAvailable: 500 kB\n".into(),
            uptime: "123.45 6.7\n".into(),
        };
        let text = sysinfo(&f);
        assert!(text.contains("Load Average: 0.50 0.25 0.10"));
        assert!(text.contains("Total Memory: 1024000 bytes"));
        assert!(text.contains("System Uptime: 123 seconds"));
    }
}
