//! Scenarios: each one command that starts what it needs on loopback (a
//! sink, an MTA), drives load through it, waits until the sink has every
//! accepted recipient, tears everything down and reports.
//! Owns: the run matrix, per-cell measurement (CPU from /proc, end-to-end
//! rate), the results JSON and text tables.
//! May call: client, sink, peers, procstat, plot, shapes (the client-shapes
//! scenario lives in its own module and measures its cells through
//! `measure_cell`).
//! Never: the engine crate (peers are black boxes behind sockets and /proc).

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::client::{run_load, LoadSpec};
use crate::peers::{self, EcelerityOptions, PeerKind, PeerPaths, RunningPeer};
use crate::procstat::{SwitchSampler, SwitchTotals};
use crate::report::{fmt_us, Dist, LatencySummary, LoadReport, SinkReport};
use crate::sink::{ReplyScript, Sink};

/// Extra time a relay gets to deliver everything after the load ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// fdatasync calls timed when measuring the disk's sync cost.
const FDATASYNC_PROBES: u32 = 300;
/// Pause after injection before reading RSS (queue settles, retries start).
/// Open-loop rates of the latency scenario, as fractions of its peak: the
/// low ones show the tail when the cores are not the bottleneck (the load
/// generator and the sink share them with the MTA).
const LATENCY_FRACTIONS_OF_PEAK: [f64; 4] = [0.1, 0.25, 0.5, 0.9];
const RSS_SETTLE: Duration = Duration::from_secs(3);

/// Knobs common to all scenarios.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub sizes: Vec<u64>,
    pub recipients: Vec<u64>,
    pub concurrency: Vec<usize>,
    /// Message cap per cell.
    pub messages: u64,
    /// Time cap per cell (stop claiming new messages after it).
    pub cell_seconds: Option<f64>,
    pub new_connection_per_message: bool,
    pub peers: Vec<PeerKind>,
    pub paths: PeerPaths,
    pub work_dir: PathBuf,
    pub out_dir: PathBuf,
    pub shards: u32,
    /// ecelerity's `delivery_shards` (1 = its default).
    pub delivery_shards: u32,
    /// queue scenario: messages to inject.
    pub queue_messages: u64,
    /// shapes scenario: runs of each row (interleaved: a, b, c, d, a, ...).
    pub repeat: u32,
    /// mx scenario: recipient domains, each with its own MX record.
    pub mx_domains: u64,
    /// mx scenario: MX hosts (sinks on 127.0.0.2, .3, ...) the domains share.
    pub mx_hosts: u32,
    /// Smoke mode (`--quick`): scenarios keep to a few hundred messages.
    pub quick: bool,
    pub progress: bool,
    pub command_line: String,
    /// ecelerity config text appended at global scope (e.g. a scriptlet).
    pub ecelerity_extra: String,
}

impl RunOptions {
    /// How ecelerity is started in these scenarios.
    pub fn ecelerity(&self) -> EcelerityOptions {
        EcelerityOptions {
            shards: self.shards,
            delivery_shards: self.delivery_shards,
            extra: self.ecelerity_extra.clone(),
            ..EcelerityOptions::default()
        }
    }
}

/// One measured cell: one peer (or none), one size/recipients/sessions point.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRow {
    pub scenario: String,
    /// "limit" (no MTA), "ecelerity", "postfix", ...
    pub peer: String,
    pub durability: String,
    pub size_bytes: u64,
    pub recipients: u64,
    pub sessions: usize,
    pub rate_per_s: Option<f64>,
    pub sent: u64,
    pub accepted: u64,
    pub arrived_messages: u64,
    pub arrived_recipients: u64,
    pub recipients_accepted: u64,
    pub failed: u64,
    /// All accepted recipients reached the sink before DRAIN_TIMEOUT.
    pub complete: bool,
    /// Accepted messages / time until the last one reached the sink.
    pub msgs_per_s: f64,
    /// Accepted messages / time the client took to hand them over.
    pub accept_msgs_per_s: f64,
    pub mb_per_s: f64,
    pub seconds: f64,
    pub mta_cpu_s: f64,
    pub mta_cpu_us_per_msg: f64,
    /// The user-mode part of `mta_cpu_us_per_msg` (the rest is the kernel).
    #[serde(default)]
    pub mta_user_us_per_msg: f64,
    /// Message bytes that reached the sink.
    #[serde(default)]
    pub arrived_bytes: u64,
    pub accept_latency: LatencySummary,
    pub end_to_end_latency: LatencySummary,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// shapes scenario: the client that drove the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientShape>,
    /// shapes scenario: the MTA's context switches during the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_switches: Option<SwitchTotals>,
}

/// The client of a shapes row.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientShape {
    /// "connection per message", "reused, no pipelining", ...
    pub name: String,
    /// The generator's exact command line.
    pub command: String,
    /// Issue 9's goal for MTA CPU per message with this client.
    pub goal_cpu_us_per_msg: f64,
    /// Which repetition (1, 2, ...).
    pub run: u32,
}

impl RunRow {
    /// Context switches of the MTA per accepted message (voluntary,
    /// involuntary) and the same restricted to threads of one kind.
    pub fn switches_per_msg(&self, kind: Option<&str>) -> Option<(f64, f64)> {
        let totals = self.mta_switches.as_ref()?;
        let switches = match kind {
            None => totals.all,
            Some(kind) => totals.by_kind.get(kind).copied().unwrap_or_default(),
        };
        let messages = self.accepted.max(1) as f64;
        Some((
            switches.voluntary as f64 / messages,
            switches.involuntary as f64 / messages,
        ))
    }
}

/// Everything a scenario produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub rows: Vec<RunRow>,
    pub notes: Vec<String>,
    pub measurements: Vec<(String, f64, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib: kib / 1024.0 / 1024.0,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

impl Results {
    pub fn new(o: &RunOptions) -> Results {
        Results {
            command: o.command_line.clone(),
            machine: Machine::probe(),
            ..Results::default()
        }
    }

    pub(crate) fn note(&mut self, text: String) {
        eprintln!("ecbench: {text}");
        self.notes.push(text);
    }

    fn measure(&mut self, name: &str, value: f64, unit: &str) {
        eprintln!("ecbench: {name}: {value:.3} {unit}");
        self.measurements
            .push((name.to_string(), value, unit.to_string()));
    }

    /// Every row's counts add up: sent = accepted = arrived (recipients too).
    pub fn counts_add_up(&self) -> Result<()> {
        for r in &self.rows {
            if r.rate_per_s.is_none() && r.scenario == "queue" {
                continue;
            }
            if r.sent != r.accepted
                || !r.complete
                || r.arrived_recipients != r.recipients_accepted
                || r.failed != 0
            {
                bail!(
                    "{} {} {}B x{} s{}: sent {} accepted {} failed {} rcpts accepted {} arrived {} complete {}",
                    r.scenario,
                    r.peer,
                    r.size_bytes,
                    r.recipients,
                    r.sessions,
                    r.sent,
                    r.accepted,
                    r.failed,
                    r.recipients_accepted,
                    r.arrived_recipients,
                    r.complete
                );
            }
        }
        Ok(())
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "machine: {} x {}, {:.1} GiB, kernel {}",
            self.machine.cpus, self.machine.cpu_model, self.machine.memory_gib, self.machine.kernel
        );
        let _ = writeln!(s, "command: {}\n", self.command);
        let _ = writeln!(
            s,
            "| scenario | peer | size | rcpts | sessions | rate | accepted | arrived | msgs/s | accept msgs/s | MB/s | CPU us/msg | accept p50 | p99 | p99.9 | e2e p50 | e2e p99 | errors |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        // smtp-source does not time replies, and its messages carry no
        // timestamp header: no latency rather than a latency of 0.
        let latency = |summary: &LatencySummary, us: u64| {
            if summary.count == 0 {
                "-".to_string()
            } else {
                fmt_us(us)
            }
        };
        for r in &self.rows {
            let (accept, e2e) = (&r.accept_latency, &r.end_to_end_latency);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.peer,
                size_label(r.size_bytes),
                r.recipients,
                r.sessions,
                r.rate_per_s.map(|v| format!("{v:.0}/s")).unwrap_or_else(|| "closed".into()),
                r.accepted,
                r.arrived_messages,
                r.msgs_per_s,
                r.accept_msgs_per_s,
                r.mb_per_s,
                if r.peer == "limit" { "-".into() } else { format!("{:.0}", r.mta_cpu_us_per_msg) },
                latency(accept, accept.p50_us),
                latency(accept, accept.p99_us),
                latency(accept, accept.p999_us),
                latency(e2e, e2e.p50_us),
                latency(e2e, e2e.p99_us),
                r.failed
            );
        }
        let peers: Vec<(String, String)> = {
            let mut v: Vec<(String, String)> = Vec::new();
            for r in &self.rows {
                if !v.iter().any(|(p, _)| *p == r.peer) {
                    v.push((r.peer.clone(), r.durability.clone()));
                }
            }
            v
        };
        let _ = writeln!(s, "\ndurability:");
        for (p, d) in &peers {
            let _ = writeln!(s, "- {p}: {d}");
        }
        if peers.len() > 2 {
            let _ = writeln!(s, "\nratios (end-to-end msgs/s, same cell):");
            let names: Vec<&str> = peers
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| *p != "limit")
                .collect();
            let _ = write!(s, "| size | rcpts | sessions |");
            for p in &names {
                let _ = write!(s, " {p}/limit |");
            }
            for p in &names {
                if *p != "ecelerity" && names.contains(&"ecelerity") {
                    let _ = write!(s, " ecelerity/{p} |");
                }
            }
            let _ = writeln!(s);
            let cols = 3
                + names.len()
                + names
                    .iter()
                    .filter(|p| **p != "ecelerity" && names.contains(&"ecelerity"))
                    .count();
            let _ = writeln!(s, "{}", "|---".repeat(cols) + "|");
            for r in self.rows.iter().filter(|r| {
                r.peer == "limit"
                    || (r.peer == "ecelerity" && !peers.iter().any(|p| p.0 == "limit"))
            }) {
                let find = |peer: &str| {
                    self.rows.iter().find(|x| {
                        x.peer == peer
                            && x.size_bytes == r.size_bytes
                            && x.recipients == r.recipients
                            && x.sessions == r.sessions
                            && x.scenario == r.scenario
                    })
                };
                let _ = write!(
                    s,
                    "| {} | {} | {} |",
                    size_label(r.size_bytes),
                    r.recipients,
                    r.sessions
                );
                for p in &names {
                    let v = match (find(p), find("limit")) {
                        (Some(a), Some(l)) if l.msgs_per_s > 0.0 => {
                            format!("{:.2}", a.msgs_per_s / l.msgs_per_s)
                        }
                        _ => "-".into(),
                    };
                    let _ = write!(s, " {v} |");
                }
                for p in &names {
                    if *p != "ecelerity" && names.contains(&"ecelerity") {
                        let v = match (find("ecelerity"), find(p)) {
                            (Some(e), Some(o)) if o.msgs_per_s > 0.0 => {
                                format!("{:.2}", e.msgs_per_s / o.msgs_per_s)
                            }
                            _ => "-".into(),
                        };
                        let _ = write!(s, " {v} |");
                    }
                }
                let _ = writeln!(s);
            }
        }
        self.shapes_text(&mut s);
        if !self.measurements.is_empty() {
            let _ = writeln!(s, "\nmeasurements:");
            for (name, value, unit) in &self.measurements {
                let _ = writeln!(s, "- {name}: {value:.3} {unit}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nnotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The client-shapes table (rows with a `client`), if any.
    fn shapes_text(&self, s: &mut String) {
        let rows: Vec<&RunRow> = self.rows.iter().filter(|r| r.client.is_some()).collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nclient shapes (MTA = the daemon; context switches from /proc/PID/task/*/status, vol+invol):"
        );
        let _ = writeln!(
            s,
            "| run | peer | client | sessions | arrived | msgs/s | MTA CPU us/msg | user | goal | switches/msg | shard | shard helper | iou-wrk | other | threads started |"
        );
        let _ = writeln!(s, "{}|", "|---".repeat(15));
        let pair = |v: Option<(f64, f64)>| match v {
            Some((vol, invol)) => format!("{:.1} ({vol:.1}+{invol:.1})", vol + invol),
            None => "-".into(),
        };
        const NAMED_KINDS: [&str; 3] = ["shard", "shard helper", "iou-wrk"];
        for r in &rows {
            let client = r.client.as_ref().expect("filtered on client");
            let other = r.mta_switches.as_ref().map(|t| {
                let (mut vol, mut invol) = (0u64, 0u64);
                for (kind, sw) in &t.by_kind {
                    if !NAMED_KINDS.contains(&kind.as_str()) {
                        vol += sw.voluntary;
                        invol += sw.involuntary;
                    }
                }
                let n = r.accepted.max(1) as f64;
                (vol as f64 / n, invol as f64 / n)
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}/{} | {:.0} | {:.0} | {:.0} | <= {:.0} | {} | {} | {} | {} | {} | {} |",
                client.run,
                r.peer,
                client.name,
                r.sessions,
                r.arrived_messages,
                r.accepted,
                r.msgs_per_s,
                r.mta_cpu_us_per_msg,
                r.mta_user_us_per_msg,
                client.goal_cpu_us_per_msg,
                pair(r.switches_per_msg(None)),
                pair(r.switches_per_msg(Some(NAMED_KINDS[0]))),
                pair(r.switches_per_msg(Some(NAMED_KINDS[1]))),
                pair(r.switches_per_msg(Some(NAMED_KINDS[2]))),
                pair(other),
                r.mta_switches
                    .as_ref()
                    .map(|t| t.threads_started.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let _ = writeln!(s, "\nclient commands:");
        for r in &rows {
            let client = r.client.as_ref().expect("filtered on client");
            let _ = writeln!(
                s,
                "- run {}, {}: `{}`",
                client.run, client.name, client.command
            );
        }
    }

    /// Write results.json and results.txt (and plots) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        fs::write(dir.join(format!("{name}.txt")), self.text())?;
        Ok(())
    }
}

pub fn size_label(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// One cell's load spec.
pub(crate) fn spec_for(
    o: &RunOptions,
    target: SocketAddr,
    size: u64,
    recipients: u64,
    sessions: usize,
    label: &str,
) -> LoadSpec {
    let mut spec = LoadSpec::new(target);
    spec.sessions = sessions;
    spec.messages = o.messages;
    spec.duration = o.cell_seconds.map(Duration::from_secs_f64);
    spec.size = Dist::fixed(size);
    spec.recipients = Dist::fixed(recipients);
    spec.new_connection_per_message = o.new_connection_per_message;
    spec.progress = o.progress;
    spec.label = label.to_string();
    spec
}

/// How a cell's load was shaped, for its row.
#[derive(Clone, Copy, Debug)]
pub struct CellLoad {
    pub size_bytes: u64,
    pub recipients: u64,
    pub sessions: usize,
    pub rate_per_s: Option<f64>,
}

/// Run one cell through `peer` (or straight into the sink) and measure it.
pub fn run_cell(
    scenario: &str,
    peer: Option<&RunningPeer>,
    sink: &Sink,
    spec: &LoadSpec,
) -> RunRow {
    let cell = CellLoad {
        size_bytes: spec.size.choices[0].0,
        recipients: spec.recipients.choices[0].0,
        sessions: spec.sessions,
        rate_per_s: spec.rate,
    };
    measure_cell(scenario, peer, sink, cell, false, || run_load(spec))
}

/// Measure one cell whose load `drive` produces (ecbench's client or an
/// outside generator): reset the sink, read the peer's CPU (and, with
/// `count_switches`, sample its threads' context switches), drive, wait
/// until the sink holds every accepted recipient, read again.
pub fn measure_cell(
    scenario: &str,
    peer: Option<&RunningPeer>,
    sink: &Sink,
    cell: CellLoad,
    count_switches: bool,
    drive: impl FnOnce() -> LoadReport,
) -> RunRow {
    sink.reset();
    let cpu_before = peer.map(|p| p.cpu_split()).unwrap_or_default();
    let sampler = peer
        .filter(|_| count_switches)
        .map(|p| SwitchSampler::start(p.root_pid));
    let started = Instant::now();
    let load: LoadReport = drive();
    let complete = sink.wait_for_recipients(load.recipients_accepted, DRAIN_TIMEOUT);
    let sink_report: SinkReport = sink.report();
    // CPU right after the last arrival: the peer's idle time is not counted.
    let (user, system) = peer
        .map(|p| {
            let (user, system) = p.cpu_split();
            (
                user.saturating_sub(cpu_before.0),
                system.saturating_sub(cpu_before.1),
            )
        })
        .unwrap_or_default();
    let mta_switches = sampler.map(SwitchSampler::finish);
    let cpu = user + system;
    let seconds = if sink_report.last_arrival_s > 0.0 {
        sink_report.last_arrival_s
    } else {
        started.elapsed().as_secs_f64()
    };
    let seconds = seconds.max(load.elapsed_s.min(seconds)).max(1e-9);
    // An outside generator does not count bytes; the sink does.
    let bytes = if load.bytes_accepted > 0 {
        load.bytes_accepted
    } else {
        sink_report.bytes
    };
    let per_message = |d: Duration| {
        if load.accepted > 0 {
            d.as_secs_f64() * 1e6 / load.accepted as f64
        } else {
            0.0
        }
    };
    let row = RunRow {
        scenario: scenario.to_string(),
        peer: peer.map(|p| p.kind.name()).unwrap_or("limit").to_string(),
        durability: peer
            .map(|p| p.durability.clone())
            .unwrap_or_else(|| "none (sink discards)".into()),
        size_bytes: cell.size_bytes,
        recipients: cell.recipients,
        sessions: cell.sessions,
        rate_per_s: cell.rate_per_s,
        sent: load.sent,
        accepted: load.accepted,
        arrived_messages: sink_report.messages,
        arrived_recipients: sink_report.recipients,
        recipients_accepted: load.recipients_accepted,
        failed: load.failed,
        complete,
        msgs_per_s: load.accepted as f64 / seconds,
        accept_msgs_per_s: load.msgs_per_s,
        mb_per_s: bytes as f64 / seconds / 1e6,
        seconds,
        mta_cpu_s: cpu.as_secs_f64(),
        mta_cpu_us_per_msg: per_message(cpu),
        mta_user_us_per_msg: per_message(user),
        arrived_bytes: sink_report.bytes,
        accept_latency: load.accept_latency.clone(),
        end_to_end_latency: sink_report.end_to_end_latency.clone(),
        errors: load.errors.clone(),
        client: None,
        mta_switches,
    };
    eprintln!(
        "ecbench: {scenario} {} {} x{} s{}: {:.0} msgs/s end to end, {:.0} accepted/s, CPU {:.0} us/msg, accept {}; arrived {}/{}{}",
        row.peer,
        size_label(row.size_bytes),
        row.recipients,
        row.sessions,
        row.msgs_per_s,
        row.accept_msgs_per_s,
        row.mta_cpu_us_per_msg,
        row.accept_latency.one_line(),
        row.arrived_recipients,
        row.recipients_accepted,
        if complete { "" } else { " (INCOMPLETE)" }
    );
    row
}

pub(crate) fn loopback_sink() -> Result<Sink> {
    Ok(Sink::start(
        "127.0.0.1:0".parse().expect("static address"),
        ReplyScript::default(),
    )?)
}

pub(crate) fn fresh_dir(o: &RunOptions, name: &str) -> Result<PathBuf> {
    let dir = o.work_dir.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn each_cell(o: &RunOptions, mut f: impl FnMut(u64, u64, usize) -> Result<()>) -> Result<()> {
    for &size in &o.sizes {
        for &recipients in &o.recipients {
            for &sessions in &o.concurrency {
                f(size, recipients, sessions)?;
            }
        }
    }
    Ok(())
}

/// (a) the loopback ceiling: the load straight into a sink.
pub fn limit(o: &RunOptions, results: &mut Results) -> Result<()> {
    let sink = loopback_sink()?;
    each_cell(o, |size, recipients, sessions| {
        let spec = spec_for(o, sink.addr, size, recipients, sessions, "limit");
        results.rows.push(run_cell("limit", None, &sink, &spec));
        Ok(())
    })
}

/// (b) client -> peer -> sink for one peer kind.
pub fn relay_peer(
    o: &RunOptions,
    kind: PeerKind,
    scenario: &str,
    results: &mut Results,
) -> Result<()> {
    let sink = loopback_sink()?;
    let dir = fresh_dir(o, &format!("{scenario}-{}", kind.name()))?;
    let mut peer = match peers::start_peer(kind, &o.paths, &dir, sink.addr.port(), &o.ecelerity()) {
        Ok(p) => p,
        Err(e) => {
            results.note(format!("{}: skipped, could not start: {e:#}", kind.name()));
            return Ok(());
        }
    };
    each_cell(o, |size, recipients, sessions| {
        let spec = spec_for(o, peer.addr(), size, recipients, sessions, kind.name());
        results
            .rows
            .push(run_cell(scenario, Some(&peer), &sink, &spec));
        Ok(())
    })?;
    peer.stop();
    Ok(())
}

/// (c) limit, then every peer, all in one run.
pub fn side_by_side(o: &RunOptions, results: &mut Results) -> Result<()> {
    limit(o, results)?;
    for &kind in &o.peers {
        if kind == PeerKind::Kumo && o.paths.kumod_relay_script.is_none() {
            results.note(
                "kumomta: skipped (no --kumod-relay-script and none under ../shared/peers)".into(),
            );
            continue;
        }
        relay_peer(o, kind, "side-by-side", results)?;
    }
    for r in results.rows.iter_mut() {
        if r.scenario == "limit" {
            r.scenario = "side-by-side".into();
        }
    }
    Ok(())
}

/// Median and p99 cost of write(4 KiB)+fdatasync in `dir`, in microseconds.
pub fn fdatasync_cost(dir: &Path) -> Result<(f64, f64)> {
    let path = dir.join("ecbench-fdatasync-probe");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![b'x'; 4096];
    let mut samples = Vec::with_capacity(FDATASYNC_PROBES as usize);
    for _ in 0..FDATASYNC_PROBES {
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = fs::remove_file(&path);
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

/// Accept latency at 50 % and 90 % of ecelerity's closed-loop peak (open loop).
pub fn latency(o: &RunOptions, results: &mut Results) -> Result<()> {
    let sink = loopback_sink()?;
    let dir = fresh_dir(o, "latency-ecelerity")?;
    let mut peer = peers::start_peer(
        PeerKind::Ecelerity,
        &o.paths,
        &dir,
        sink.addr.port(),
        &o.ecelerity(),
    )?;
    let (sync_p50, sync_p99) = fdatasync_cost(&dir)?;
    results.measure(
        "fdatasync p50 (4 KiB append, spool filesystem)",
        sync_p50,
        "us",
    );
    results.measure("fdatasync p99", sync_p99, "us");
    let size = o.sizes[0];
    let sessions = o
        .concurrency
        .iter()
        .copied()
        .find(|&c| c >= 50)
        .unwrap_or(50);
    let spec = spec_for(o, peer.addr(), size, 1, sessions, "peak");
    let peak = run_cell("latency-peak", Some(&peer), &sink, &spec);
    let peak_rate = peak.accept_msgs_per_s;
    results.rows.push(peak);
    for fraction in LATENCY_FRACTIONS_OF_PEAK {
        let rate = (peak_rate * fraction).max(1.0);
        let mut spec = spec_for(o, peer.addr(), size, 1, sessions.max(200), "open-loop");
        spec.rate = Some(rate);
        if let Some(secs) = o.cell_seconds {
            spec.messages = spec.messages.min((rate * secs) as u64 + 1);
        }
        spec.duration = None;
        let row = run_cell(
            &format!("latency-{:.0}%", fraction * 100.0),
            Some(&peer),
            &sink,
            &spec,
        );
        results.measure(
            &format!(
                "accept p99 at {:.0}% of peak / fdatasync p50",
                fraction * 100.0
            ),
            row.accept_latency.p99_us as f64 / sync_p50,
            "fdatasyncs",
        );
        results.rows.push(row);
    }
    peer.stop();
    Ok(())
}

/// 1 shard vs 2 shards, same cells.
pub fn shards(o: &RunOptions, results: &mut Results) -> Result<()> {
    for shards in [1u32, 2] {
        let mut o = o.clone();
        o.shards = shards;
        let before = results.rows.len();
        relay_peer(
            &o,
            PeerKind::Ecelerity,
            &format!("shards-{shards}"),
            results,
        )?;
        for r in &mut results.rows[before..] {
            r.peer = format!(
                "ecelerity ({shards} shard{})",
                if shards == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

/// RAM per queued message (gateway blocked), then restart-to-accepting time.
pub fn queue(o: &RunOptions, results: &mut Results) -> Result<()> {
    // A "blocked gateway": a listener that never accepts.
    let blocked = std::net::TcpListener::bind("127.0.0.1:0")?;
    let gateway_port = blocked.local_addr()?.port();
    let dir = fresh_dir(o, "queue-ecelerity")?;
    let port = peers::free_port();
    let options = EcelerityOptions {
        retry_interval_s: 3600,
        connect_timeout_s: 3600,
        ..o.ecelerity()
    };
    let (mut peer, first_start) =
        peers::start_ecelerity(&o.paths, &dir, port, gateway_port, &options)?;
    results.measure(
        "ecelerity start to accepting (empty spool)",
        first_start.as_secs_f64() * 1e3,
        "ms",
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = peer.rss();
    let size = o.sizes[0];
    let sessions = o.concurrency.iter().copied().max().unwrap_or(50).min(100);
    let mut spec = spec_for(o, peer.addr(), size, 1, sessions, "inject");
    spec.messages = o.queue_messages;
    spec.duration = None;
    let cpu_before = peer.cpu();
    let load = run_load(&spec);
    let cpu = peer.cpu().saturating_sub(cpu_before);
    std::thread::sleep(RSS_SETTLE);
    let rss_after = peer.rss();
    let per_message = (rss_after.saturating_sub(rss_before)) as f64 / load.accepted.max(1) as f64;
    results.measure(
        "queued messages (gateway blocked)",
        load.accepted as f64,
        "messages",
    );
    results.measure(
        "injection rate into a blocked gateway",
        load.msgs_per_s,
        "msgs/s",
    );
    results.measure(
        "CPU per injected message",
        cpu.as_secs_f64() * 1e6 / load.accepted.max(1) as f64,
        "us",
    );
    results.measure("RSS before injection", rss_before as f64 / 1048576.0, "MiB");
    results.measure("RSS with the queue", rss_after as f64 / 1048576.0, "MiB");
    results.measure(
        "RAM per queued message (RSS delta / messages)",
        per_message,
        "bytes",
    );
    let (stop_time, graceful) = peer.stop();
    results.measure(
        &format!(
            "stop with the queue ({})",
            if graceful {
                "graceful"
            } else {
                "SIGKILL after timeout"
            }
        ),
        stop_time.as_secs_f64() * 1e3,
        "ms",
    );
    let (peer2, restart) = peers::start_ecelerity(&o.paths, &dir, port, gateway_port, &options)?;
    results.measure(
        &format!("restart to accepting with {} queued", load.accepted),
        restart.as_secs_f64() * 1e3,
        "ms",
    );
    std::thread::sleep(RSS_SETTLE);
    results.measure(
        "RSS after restart (recovered queue)",
        peer2.rss() as f64 / 1048576.0,
        "MiB",
    );
    if load.failed > 0 {
        results.note(format!(
            "queue: {} injections failed: {:?}",
            load.failed, load.errors
        ));
    }
    drop(peer2);
    drop(blocked);
    Ok(())
}
