//! `ecbench`: SMTP load generator, sink, and benchmark scenarios for
//! ecelerity and its peers (Postfix, Haraka, KumoMTA) on one machine.
//! Owns: the command line; each subcommand delegates to a module.
//! May call: client, sink, scenario, shapes, mx, plot, floor, `ecelerity_testkit` (the
//! binary directory).
//! Never: the engine crate: every MTA is measured from outside.
//!
//! `ecbench send` drives load at an SMTP server; `ecbench sink` is the
//! counting server; `ecbench scenario NAME` starts what it needs, measures,
//! tears down and writes `NAME.json`, `NAME.txt` and PNG plots to `--out`.

mod client;
mod floor;
mod mx;
mod peers;
mod plot;
mod procstat;
mod report;
mod scenario;
mod shapes;
mod sink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::client::{run_load, LoadSpec};
use crate::peers::{PeerKind, PeerPaths};
use crate::report::Dist;
use crate::scenario::{Results, RunOptions};
use crate::sink::{ReplyScript, Sink};

#[derive(Parser)]
#[command(
    version,
    about = "ecbench: SMTP load generator, sink and side-by-side MTA benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive load at an SMTP server and report throughput and accept latency.
    Send {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:2525")]
        to: SocketAddr,
        /// Concurrent sessions.
        #[arg(short = 'c', long, default_value_t = 50)]
        sessions: usize,
        /// Messages to send.
        #[arg(short = 'm', long, default_value_t = 10_000)]
        messages: u64,
        /// Message size in bytes: `1024`, `10k`, or weighted `1k:70,10k:25,100k:5`.
        #[arg(short = 's', long, default_value = "1k")]
        size: String,
        /// Recipients per message: `1`, `10`, or weighted `1:80,10:20`.
        #[arg(short = 'r', long, default_value = "1")]
        recipients: String,
        /// Open loop: start messages at this rate (msgs/s) instead of as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Stop starting messages after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Open a new connection for each message.
        #[arg(long)]
        new_connection: bool,
        /// Recipient domain.
        #[arg(long, default_value = "sink.test")]
        domain: String,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Accept, count and discard mail; report end-to-end latency from the X-Ecbench-Ts header.
    Sink {
        #[arg(long, default_value = "127.0.0.1:2526")]
        listen: SocketAddr,
        /// Percent of recipients answered 550.
        #[arg(long, default_value_t = 0.0)]
        reject_5xx: f64,
        /// Percent of recipients answered 451.
        #[arg(long, default_value_t = 0.0)]
        defer_4xx: f64,
        /// Delay before each 250 after DATA, milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Write the final report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a scenario: limit, relay, side-by-side, latency, shards, queue, shapes, mx, all.
    Scenario(ScenarioArgs),
    /// The floor: the least a durable relay does per message (blocking
    /// threads, group-committed fdatasync before 250, then a relay over a
    /// kept connection); the shapes scenario's `floor` peer.
    FloorRelay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        gateway: SocketAddr,
        /// Directory of its spool file.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Re-draw the PNG plots from a results JSON file.
    Plot {
        results: PathBuf,
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// limit | relay | side-by-side | latency | shards | queue | shapes | mx | all
    name: String,
    /// Message sizes, comma separated.
    #[arg(long, default_value = "1k,10k,100k")]
    sizes: String,
    /// Recipient counts, comma separated.
    #[arg(long, default_value = "1,10")]
    recipients: String,
    /// Concurrent sessions, comma separated.
    #[arg(long, default_value = "1,50,500")]
    concurrency: String,
    /// Message cap per cell.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Time cap per cell, seconds (stop starting messages after it); 0 = none.
    #[arg(long, default_value_t = 8.0)]
    cell_seconds: f64,
    /// Peers for side-by-side (relay uses the first), comma separated.
    #[arg(long, default_value = "ecelerity,postfix,haraka,kumomta")]
    peers: String,
    /// New connection per message (default: sessions reuse connections).
    #[arg(long)]
    new_connection: bool,
    /// ecelerity binary (default: beside ecbench).
    #[arg(long)]
    ecelerity_bin: Option<PathBuf>,
    /// KumoMTA relay script (default: ../shared/peers/run-kumod-relay.sh when present).
    #[arg(long)]
    kumod_relay_script: Option<PathBuf>,
    /// Where Haraka is npm-installed.
    #[arg(long)]
    haraka_cache: Option<PathBuf>,
    /// ecelerity shards (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    shards: u32,
    /// ecelerity `delivery_shards`: spread one domain's queue over this many
    /// shards (0 = all; 1 = ecelerity's default, one shard per domain).
    #[arg(long, default_value_t = 1)]
    delivery_shards: u32,
    /// queue scenario: messages to inject into a blocked gateway.
    #[arg(long, default_value_t = 200_000)]
    queue_messages: u64,
    /// shapes scenario: runs of each client shape (interleaved).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// mx scenario: recipient domains, each with its own MX record.
    #[arg(long, default_value_t = 1000)]
    mx_domains: u64,
    /// mx scenario: MX hosts the domains share (sinks on 127.0.0.2, .3, ...).
    #[arg(long, default_value_t = 4)]
    mx_hosts: u32,
    /// Scratch directory for spools and configs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Results directory (JSON, text, PNG).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Smoke mode: 1 KiB, 1 recipient, 4 sessions, 300 messages, no time cap
    /// (shapes: 100 messages per client shape, one run).
    #[arg(long)]
    quick: bool,
    /// Exit 1 unless every run's counts add up (sent = accepted = arrived).
    #[arg(long)]
    check: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// A file of ecelerity config appended at global scope (e.g. a
    /// `scriptlet` stanza to measure a Lua policy).
    #[arg(long)]
    ecelerity_extra: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(text: &str, what: &str) -> Result<Vec<T>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("bad {what} `{s}`"))
        })
        .collect()
}

fn default_kumod_script() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("../shared/peers/run-kumod-relay.sh"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/run-kumod-relay.sh"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// `ecelerity` next to `ecbench` (or in `ECELERITY_BIN_DIR`).
fn default_ecelerity_bin() -> PathBuf {
    ecelerity_testkit::bin_dir().join("ecelerity")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ecelerity-peers")
}

fn scenario(args: ScenarioArgs) -> Result<()> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let sizes: Vec<u64> = args
        .sizes
        .split(',')
        .map(report::parse_size)
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let mut peers = Vec::new();
    for p in args.peers.split(',').filter(|s| !s.is_empty()) {
        peers.push(PeerKind::parse(p.trim())?);
    }
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ecbench-{}", std::process::id())));
    let mut o = RunOptions {
        sizes,
        recipients: list(&args.recipients, "recipient count")?,
        concurrency: list(&args.concurrency, "concurrency")?,
        messages: args.messages,
        cell_seconds: (args.cell_seconds > 0.0).then_some(args.cell_seconds),
        new_connection_per_message: args.new_connection,
        peers,
        paths: PeerPaths {
            ecelerity_bin: args
                .ecelerity_bin
                .clone()
                .unwrap_or_else(default_ecelerity_bin),
            kumod_relay_script: args
                .kumod_relay_script
                .clone()
                .or_else(default_kumod_script),
            haraka_cache: args
                .haraka_cache
                .clone()
                .unwrap_or_else(|| cache_dir().join("haraka")),
        },
        work_dir: work_dir.clone(),
        out_dir: args.out.clone(),
        shards: args.shards,
        delivery_shards: args.delivery_shards,
        queue_messages: args.queue_messages,
        repeat: args.repeat,
        mx_domains: args.mx_domains,
        mx_hosts: args.mx_hosts,
        quick: args.quick,
        progress: !args.quiet,
        command_line,
        ecelerity_extra: match &args.ecelerity_extra {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?
            }
            None => String::new(),
        },
    };
    if args.quick {
        o.sizes = vec![1024];
        o.recipients = vec![1];
        o.concurrency = vec![4];
        o.messages = 300;
        o.cell_seconds = None;
        o.queue_messages = o.queue_messages.min(2_000);
        o.repeat = 1;
    }
    std::fs::create_dir_all(&o.work_dir)?;
    let mut results = Results::new(&o);
    let started = Instant::now();
    let outcome = match args.name.as_str() {
        "limit" => scenario::limit(&o, &mut results),
        "relay" => {
            let kind = o.peers.first().copied().unwrap_or(PeerKind::Ecelerity);
            scenario::relay_peer(&o, kind, "relay", &mut results).and_then(|_| {
                if results.rows.is_empty() {
                    bail!(
                        "{}: the relay did not start: {:?}",
                        kind.name(),
                        results.notes
                    )
                }
                Ok(())
            })
        }
        "side-by-side" => scenario::side_by_side(&o, &mut results),
        "latency" => scenario::latency(&o, &mut results),
        "shards" => scenario::shards(&o, &mut results),
        "queue" => scenario::queue(&o, &mut results),
        "shapes" => shapes::shapes(&o, &mut results),
        "mx" => mx::mx(&o, &mut results),
        "all" => scenario::side_by_side(&o, &mut results)
            .and_then(|_| scenario::latency(&o, &mut results))
            .and_then(|_| scenario::shards(&o, &mut results))
            .and_then(|_| scenario::queue(&o, &mut results))
            .and_then(|_| shapes::shapes(&o, &mut results)),
        other => bail!(
            "unknown scenario `{other}` (limit, relay, side-by-side, latency, shards, queue, shapes, mx, all)"
        ),
    };
    eprintln!(
        "ecbench: scenario {} took {:.1}s",
        args.name,
        started.elapsed().as_secs_f64()
    );
    let name = args.name.replace('/', "_");
    results.write(&o.out_dir, &name)?;
    match plot::plot_all(&results, &o.out_dir) {
        Ok(files) => {
            for f in files {
                eprintln!("ecbench: wrote {}", f.display());
            }
        }
        Err(e) => eprintln!("ecbench: {e:#}"),
    }
    print!("{}", results.text());
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    outcome?;
    if args.check {
        results.counts_add_up()?;
        eprintln!("ecbench: counts add up ({} runs)", results.rows.len());
    }
    Ok(())
}

/// Block SIGINT/SIGTERM in every thread (call before spawning any) and
/// return a waiter that reports whether one arrived within `timeout`.
fn block_stop_signals() -> impl Fn(Duration) -> bool {
    // SAFETY: plain signal-mask manipulation on a zeroed sigset.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    move |timeout: Duration| {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; the info pointer may be null.
        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) > 0 }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Send {
            to,
            sessions,
            messages,
            size,
            recipients,
            rate,
            duration,
            new_connection,
            domain,
            json,
        } => {
            let mut spec = LoadSpec::new(to);
            spec.sessions = sessions;
            spec.messages = messages;
            spec.size = Dist::parse(&size).map_err(anyhow::Error::msg)?;
            spec.recipients = Dist::parse(&recipients).map_err(anyhow::Error::msg)?;
            spec.rate = rate;
            spec.duration = duration.map(Duration::from_secs_f64);
            spec.new_connection_per_message = new_connection;
            spec.rcpt_domain = domain;
            spec.label = "send".into();
            let report = run_load(&spec);
            print!("{}", report.text());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
        }
        Cmd::Sink {
            listen,
            reject_5xx,
            defer_4xx,
            delay_ms,
            duration,
            json,
        } => {
            let wait = block_stop_signals();
            let script = ReplyScript {
                reject_5xx_pct: reject_5xx,
                defer_4xx_pct: defer_4xx,
                delay: Duration::from_millis(delay_ms),
            };
            let sink =
                Sink::start(listen, script).with_context(|| format!("listen on {listen}"))?;
            eprintln!("ecbench sink: listening on {}", sink.addr);
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            loop {
                let stopped = wait(Duration::from_secs(1));
                let now = Instant::now();
                let messages = sink.messages();
                eprintln!(
                    "ecbench sink: {:>6.1}s messages {messages} ({:.0} msgs/s)",
                    (now - started).as_secs_f64(),
                    (messages - last.1.min(messages)) as f64 / (now - last.0).as_secs_f64()
                );
                last = (now, messages);
                if stopped || duration.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
                    break;
                }
            }
            let report = sink.report();
            print!("{}", report.text());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Cmd::Scenario(args) => scenario(args)?,
        Cmd::FloorRelay {
            listen,
            gateway,
            dir,
        } => floor::run(listen, gateway, &dir)?,
        Cmd::Plot { results, out } => {
            let results: Results = serde_json::from_str(&std::fs::read_to_string(&results)?)?;
            std::fs::create_dir_all(&out)?;
            for f in plot::plot_all(&results, &out)? {
                println!("{}", f.display());
            }
        }
    }
    Ok(())
}
