//! The client-shapes scenario (issue 9): ecelerity (and the peers of
//! `--peers`: the floor relay, KumoMTA, Postfix) relaying 1 KiB
//! messages with 1 recipient to ecbench's sink (the gateway the relay
//! scenario uses), driven by the clients real injectors look like, Postfix's
//! smtp-source (a connection per message; a reused connection without
//! pipelining; one session), and by ecbench's own pipelined client with 50
//! sessions. Each row reports the end-to-end rate, the daemon's CPU per
//! message (user and system) and its context switches per message by thread
//! kind, beside the CPU goal for that shape.
//! Owns: the shape table, running smtp-source and reading its outcome.
//! May call: scenario (cells, rows, sink, directories), peers, procstat,
//! client, `ecelerity_testkit` (child guard).
//! Never: the engine crate (the daemon is measured from outside).
//!
//! smtp-source never pipelines and stops at the first reply it does not
//! expect (it exits non-zero), so a zero exit means every message got its
//! 250; the sink then counts what arrived. Its `-l` is the body length:
//! the headers it adds (From, To, Date, Message-Id) and the Received line
//! of the relay come on top (the rows give the bytes that arrived).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use ecelerity_testkit::ChildGuard;

use crate::client::run_load;
use crate::peers::{self, PeerKind, RunningPeer};
use crate::procstat::SwitchSampler;
use crate::report::{LatencySummary, LoadReport};
use crate::scenario::{
    fresh_dir, loopback_sink, measure_cell, spec_for, CellLoad, ClientShape, Results, RunOptions,
};
use crate::sink::Sink;

/// Postfix's load generator (Debian's path).
pub const SMTP_SOURCE_BIN: &str = "/usr/sbin/smtp-source";
/// Message size of every row; smtp-source's `-l`.
const SHAPE_SIZE_BYTES: u64 = 1024;
/// Messages per row in smoke mode (`--quick`): 4 rows stay a few hundred.
const QUICK_MESSAGES_PER_SHAPE: u64 = 100;
/// How long the idle daemon is watched before the rows (its own timers).
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// smtp-source gets this long plus a millisecond per message to finish.
const SMTP_SOURCE_TIMEOUT_BASE: Duration = Duration::from_secs(60);
/// Sender, recipient and HELO name of the smtp-source rows.
const SOURCE_SENDER: &str = "bench@ecbench.test";
const SOURCE_RECIPIENT: &str = "rcpt@sink.test";
const SOURCE_HELO: &str = "ecbench.test";

/// Who drives a row.
#[derive(Clone, Copy, Debug)]
pub enum Generator {
    /// `smtp-source -s SESSIONS [-d]`: no pipelining; `-d` keeps the
    /// connection for the next message, without it every message has one.
    SmtpSource {
        sessions: usize,
        reuse_connection: bool,
    },
    /// ecbench's client: PIPELINING, connections reused.
    Ecbench { sessions: usize },
}

impl Generator {
    fn sessions(self) -> usize {
        match self {
            Generator::SmtpSource { sessions, .. } | Generator::Ecbench { sessions } => sessions,
        }
    }
}

/// One client shape and issue 9's goal for it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub generator: Generator,
    /// MTA CPU per relayed 1 KiB message on 2 cores (issue 9, item 6).
    pub goal_cpu_us_per_msg: f64,
}

/// The four rows of issue 9, in its order.
pub const SHAPES: [Shape; 4] = [
    Shape {
        name: "connection per message",
        generator: Generator::SmtpSource {
            sessions: 20,
            reuse_connection: false,
        },
        goal_cpu_us_per_msg: 150.0,
    },
    Shape {
        name: "reused, no pipelining",
        generator: Generator::SmtpSource {
            sessions: 20,
            reuse_connection: true,
        },
        goal_cpu_us_per_msg: 100.0,
    },
    Shape {
        name: "single session",
        generator: Generator::SmtpSource {
            sessions: 1,
            reuse_connection: true,
        },
        goal_cpu_us_per_msg: 200.0,
    },
    Shape {
        name: "pipelined (ecbench)",
        generator: Generator::Ecbench { sessions: 50 },
        goal_cpu_us_per_msg: 60.0,
    },
];

/// smtp-source's arguments for one row (the target last).
fn smtp_source_args(
    sessions: usize,
    reuse_connection: bool,
    messages: u64,
    target: &str,
) -> Vec<String> {
    let mut args = vec!["-s".to_string(), sessions.to_string()];
    if reuse_connection {
        args.push("-d".into());
    }
    args.extend(
        [
            "-m",
            &messages.to_string(),
            "-l",
            &SHAPE_SIZE_BYTES.to_string(),
            "-M",
            SOURCE_HELO,
            "-f",
            SOURCE_SENDER,
            "-t",
            SOURCE_RECIPIENT,
            target,
        ]
        .map(String::from),
    );
    args
}

/// Run smtp-source to completion; what it did, in the shape of ecbench's
/// own load report (no accept latency: smtp-source does not time replies).
fn run_smtp_source(args: &[String], log: &Path) -> LoadReport {
    let messages: u64 = args
        .iter()
        .position(|a| a == "-m")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0);
    let sessions: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_default();
    let mut report = LoadReport {
        target: args.last().cloned().unwrap_or_default(),
        sessions,
        size_bytes: format!("{SHAPE_SIZE_BYTES} (body)"),
        recipients: "1".into(),
        new_connection_per_message: !args.iter().any(|a| a == "-d"),
        sent: messages,
        accept_latency: LatencySummary::default(),
        ..LoadReport::default()
    };
    let started = Instant::now();
    let outcome = (|| -> Result<bool, String> {
        let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(SMTP_SOURCE_BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {SMTP_SOURCE_BIN}: {e}"))?;
        let mut guard = ChildGuard::new("smtp-source", child);
        let timeout = SMTP_SOURCE_TIMEOUT_BASE + Duration::from_millis(messages);
        match guard.wait_timeout(timeout) {
            Some(status) => Ok(status.success()),
            None => Err(format!("still running after {timeout:?}")),
        }
    })();
    report.elapsed_s = started.elapsed().as_secs_f64().max(1e-9);
    let ok = matches!(outcome, Ok(true));
    if ok {
        report.accepted = messages;
        report.recipients_accepted = messages;
        report.msgs_per_s = messages as f64 / report.elapsed_s;
    } else {
        report.failed = messages;
        let why = match outcome {
            Err(e) => e,
            _ => fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .last()
                .unwrap_or("exit status not 0")
                .to_string(),
        };
        report.errors.insert(format!("smtp-source: {why}"), 1);
    }
    report
}

/// Measure one shape through `peer`.
fn shape_row(
    o: &RunOptions,
    peer: &RunningPeer,
    sink: &Sink,
    shape: &Shape,
    messages: u64,
    run: u32,
) -> crate::scenario::RunRow {
    let cell = CellLoad {
        size_bytes: SHAPE_SIZE_BYTES,
        recipients: 1,
        sessions: shape.generator.sessions(),
        rate_per_s: None,
    };
    let target = peer.addr().to_string();
    let (mut row, command) = match shape.generator {
        Generator::SmtpSource {
            sessions,
            reuse_connection,
        } => {
            let args = smtp_source_args(sessions, reuse_connection, messages, &target);
            let command = format!("{SMTP_SOURCE_BIN} {}", args.join(" "));
            let log = o.work_dir.join("smtp-source.log");
            let row = measure_cell("shapes", Some(peer), sink, cell, true, || {
                run_smtp_source(&args, &log)
            });
            (row, command)
        }
        Generator::Ecbench { sessions } => {
            let mut spec = spec_for(o, peer.addr(), SHAPE_SIZE_BYTES, 1, sessions, "ecbench");
            spec.messages = messages;
            let mut command = format!(
                "ecbench send --to {target} -c {sessions} -m {messages} -s {SHAPE_SIZE_BYTES} -r 1"
            );
            if let Some(d) = spec.duration {
                command.push_str(&format!(" --duration {}", d.as_secs_f64()));
            }
            let row = measure_cell("shapes", Some(peer), sink, cell, true, || run_load(&spec));
            (row, command)
        }
    };
    row.client = Some(ClientShape {
        name: shape.name.to_string(),
        command,
        goal_cpu_us_per_msg: shape.goal_cpu_us_per_msg,
        run,
    });
    row
}

/// The client-shapes scenario: every shape `o.repeat` times for every
/// peer of `--peers` (ecelerity, the floor, KumoMTA, Postfix, ...),
/// interleaved (a, b, c, d for each peer, then again) so a burst of load
/// from outside spreads over the shapes and peers rather than hitting one.
/// The peers are started together and idle while another is measured.
pub fn shapes(o: &RunOptions, results: &mut Results) -> Result<()> {
    let sink = loopback_sink()?;
    results.notes.push(
        "shapes: gateway is ecbench's own sink (as in the relay scenario), not Postfix's smtp-sink"
            .into(),
    );
    let mut peers = Vec::new();
    for &kind in &o.peers {
        if kind == PeerKind::Kumo && o.paths.kumod_relay_script.is_none() {
            results.note(
                "shapes: kumomta skipped (no --kumod-relay-script and none under ../shared/peers)"
                    .into(),
            );
            continue;
        }
        let dir = fresh_dir(o, &format!("shapes-{}", kind.name()))?;
        let peer = peers::start_peer(kind, &o.paths, &dir, sink.addr.port(), &o.ecelerity())?;
        peers.push(peer);
    }
    let have_source = Path::new(SMTP_SOURCE_BIN).is_file();
    if !have_source {
        results.notes.push(format!(
            "shapes: {SMTP_SOURCE_BIN} not installed; only the ecbench row ran"
        ));
    }
    let messages = if o.quick {
        o.messages.min(QUICK_MESSAGES_PER_SHAPE)
    } else {
        o.messages
    };
    if !o.quick {
        for peer in &peers {
            measure_idle(peer, results);
        }
    }
    for run in 1..=o.repeat.max(1) {
        for peer in &peers {
            for shape in &SHAPES {
                if matches!(shape.generator, Generator::SmtpSource { .. }) && !have_source {
                    continue;
                }
                results
                    .rows
                    .push(shape_row(o, peer, &sink, shape, messages, run));
            }
        }
    }
    for peer in &mut peers {
        peer.stop();
    }
    Ok(())
}

/// What the idle peer does on its own (ticks, timers): the floor under
/// every row's switch count.
fn measure_idle(peer: &RunningPeer, results: &mut Results) {
    let name = peer.kind.name();
    let cpu_before = peer.cpu();
    let sampler = SwitchSampler::start(peer.root_pid);
    std::thread::sleep(IDLE_WINDOW);
    let idle = sampler.finish();
    let cpu = peer.cpu().saturating_sub(cpu_before);
    let seconds = IDLE_WINDOW.as_secs_f64();
    results.measurements.push((
        format!("idle {name}: context switches per second (vol+invol)"),
        idle.all.total() as f64 / seconds,
        "switches/s".into(),
    ));
    results.measurements.push((
        format!("idle {name}: CPU per second"),
        cpu.as_secs_f64() * 1e6 / seconds,
        "us/s".into(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_source_arguments_follow_the_shape() {
        let per_message = smtp_source_args(20, false, 500, "127.0.0.1:2525");
        assert_eq!(
            per_message.join(" "),
            "-s 20 -m 500 -l 1024 -M ecbench.test -f bench@ecbench.test -t rcpt@sink.test 127.0.0.1:2525"
        );
        let reused = smtp_source_args(1, true, 500, "127.0.0.1:2525");
        assert_eq!(&reused[..3], ["-s", "1", "-d"]);
        assert_eq!(
            SHAPES.map(|s| s.goal_cpu_us_per_msg),
            [150.0, 100.0, 200.0, 60.0]
        );
    }

    #[test]
    fn smtp_source_into_the_sink_adds_up() {
        if !Path::new(SMTP_SOURCE_BIN).is_file() {
            eprintln!("skipped: {SMTP_SOURCE_BIN} not installed");
            return;
        }
        let sink = loopback_sink().expect("sink");
        let args = smtp_source_args(2, true, 50, &sink.addr.to_string());
        let log = std::env::temp_dir().join(format!("ecbench-shapes-{}.log", std::process::id()));
        let report = run_smtp_source(&args, &log);
        let _ = fs::remove_file(&log);
        assert_eq!(report.accepted, 50, "{:?}", report.errors);
        assert!(sink.wait_for_recipients(50, Duration::from_secs(10)));
        assert_eq!(sink.messages(), 50);
        assert!(sink.report().bytes >= 50 * SHAPE_SIZE_BYTES);
    }
}
