//! The MTAs under test, each started on loopback in its own directory and
//! torn down afterwards: ecelerity (this project's daemon), Postfix (a
//! second instance with its own config and queue directories), Haraka (npm,
//! when it installs), KumoMTA (a kumod relay script, when given) and the
//! floor (`ecbench floor-relay`, the least a durable relay does).
//! Owns: the peers' config files (Haraka's, KumoMTA's arguments), their
//! running processes, readiness waits.
//! May call: `ecelerity_testkit` (the ecelerity config renderer, the
//! private Postfix, child guards, the banner wait), std::process, npm, the
//! kumod relay script, procstat.
//! Never: the system's own Postfix instance or its files.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ecelerity_testkit::{
    ecelerity_command, wait_for_greeting, ChildGuard, EcelerityConfig, Postfix, PostfixConfig,
};

use crate::procstat;

pub use ecelerity_testkit::free_port;

/// How long a peer may take from start to answering 220.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a peer may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// main.cf lines for throughput: enough processes and parallel deliveries
/// for the benchmark's sessions, connection caching, no per-client limits.
const POSTFIX_BENCH_MAIN_CF: &str = "default_process_limit = 300\n\
     default_destination_concurrency_limit = 100\n\
     smtp_connection_cache_on_demand = yes\n\
     smtpd_client_connection_count_limit = 0\n\
     smtpd_client_connection_rate_limit = 0\n";
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerKind {
    Ecelerity,
    Postfix,
    Haraka,
    Kumo,
    /// `ecbench floor-relay`: not an MTA, the least a durable relay does.
    Floor,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Ecelerity => "ecelerity",
            PeerKind::Postfix => "postfix",
            PeerKind::Haraka => "haraka",
            PeerKind::Kumo => "kumomta",
            PeerKind::Floor => "floor",
        }
    }

    pub fn parse(text: &str) -> Result<PeerKind> {
        Ok(match text {
            "ecelerity" => PeerKind::Ecelerity,
            "postfix" => PeerKind::Postfix,
            "haraka" => PeerKind::Haraka,
            "kumo" | "kumomta" | "kumod" => PeerKind::Kumo,
            "floor" => PeerKind::Floor,
            other => bail!("unknown peer `{other}` (ecelerity, postfix, haraka, kumomta, floor)"),
        })
    }
}

/// Where the peers' programs are.
#[derive(Clone, Debug)]
pub struct PeerPaths {
    pub ecelerity_bin: PathBuf,
    pub kumod_relay_script: Option<PathBuf>,
    /// Directory holding node_modules/Haraka (installed on demand).
    pub haraka_cache: PathBuf,
}

/// Options for one ecelerity start.
#[derive(Clone, Debug)]
pub struct EcelerityOptions {
    pub shards: u32,
    /// `delivery_shards`: over how many shards one domain's queue is spread.
    pub delivery_shards: u32,
    pub max_outbound_connections: u32,
    pub retry_interval_s: u32,
    pub connect_timeout_s: u32,
    /// Appended verbatim to the config at global scope (`--ecelerity-extra`).
    pub extra: String,
}

impl Default for EcelerityOptions {
    fn default() -> Self {
        EcelerityOptions {
            shards: 0,
            delivery_shards: 1,
            max_outbound_connections: 64,
            retry_interval_s: 1,
            connect_timeout_s: 30,
            extra: String::new(),
        }
    }
}

/// A started peer; stopped (and its child reaped) on drop.
pub struct RunningPeer {
    pub kind: PeerKind,
    pub port: u16,
    /// Process whose tree's CPU time counts as the peer's.
    pub root_pid: u32,
    pub durability: String,
    process: Process,
}

/// What runs a peer, and so how it is stopped.
enum Process {
    /// Our child, leading its own process group (wrappers such as Haraka's
    /// launcher take their children along).
    Child(ChildGuard),
    /// A private Postfix instance (its master daemonizes).
    Postfix(Postfix),
}

impl RunningPeer {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn cpu(&self) -> Duration {
        procstat::tree_cpu(self.root_pid)
    }

    /// CPU time of the peer's tree split into (user, system).
    pub fn cpu_split(&self) -> (Duration, Duration) {
        procstat::tree_cpu_split(self.root_pid)
    }

    pub fn rss(&self) -> u64 {
        procstat::tree_rss(self.root_pid)
    }

    /// Stop: SIGTERM to the group (or `postfix stop`), wait, SIGKILL after
    /// STOP_TIMEOUT. Returns how long the stop took and whether it was
    /// graceful; a second call does nothing.
    pub fn stop(&mut self) -> (Duration, bool) {
        match &mut self.process {
            Process::Postfix(postfix) => postfix.stop(),
            Process::Child(child) => {
                let stopped = child.terminate(STOP_TIMEOUT);
                (stopped.took, stopped.graceful)
            }
        }
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Render ecelerity's config for a relay to `gateway_port`.
pub fn ecelerity_config(port: u16, gateway_port: u16, o: &EcelerityOptions) -> String {
    let mut config = EcelerityConfig::new("ecelerity.bench", port, gateway_port, o.shards);
    config
        .option("max_outbound_connections", o.max_outbound_connections)
        .option("delivery_shards", o.delivery_shards)
        .option("retry_interval", o.retry_interval_s)
        .option("connect_timeout", o.connect_timeout_s);
    config.extra = o.extra.clone();
    format!(
        "# ecbench: ecelerity as a durable relay to a sink on loopback\n{}",
        config.render()
    )
}

/// Spawn `command` in its own process group with stdout and stderr to
/// `log`, and wait until it greets on `port`. Returns the guarded child
/// and the time from spawn to the greeting.
fn spawn_and_wait(
    what: &str,
    mut command: Command,
    port: u16,
    log: &Path,
) -> Result<(ChildGuard, Duration)> {
    let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let started = Instant::now();
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {what} ({:?})", command.get_program()))?;
    let mut guard = ChildGuard::new_group(what, child);
    wait_for_greeting(what, port, Some(&mut guard), log, READY_TIMEOUT)?;
    Ok((guard, started.elapsed()))
}

fn running(kind: PeerKind, port: u16, durability: String, process: Process) -> RunningPeer {
    let root_pid = match &process {
        Process::Child(child) => child.pid().expect("a started peer has a pid"),
        Process::Postfix(postfix) => postfix.master_pid(),
    };
    RunningPeer {
        kind,
        port,
        root_pid,
        durability,
        process,
    }
}

/// Start ecelerity in `dir` (kept: a restart reuses its spool).
pub fn start_ecelerity(
    paths: &PeerPaths,
    dir: &Path,
    port: u16,
    gateway_port: u16,
    o: &EcelerityOptions,
) -> Result<(RunningPeer, Duration)> {
    fs::create_dir_all(dir.join("log"))?;
    let config = dir.join("ecelerity.conf");
    if !config.exists() {
        fs::write(&config, ecelerity_config(port, gateway_port, o))?;
    }
    let mut command = ecelerity_command(&paths.ecelerity_bin, dir, &config);
    command.arg("--log-level").arg("warn");
    let (child, ready) = spawn_and_wait("ecelerity", command, port, &dir.join("stderr.log"))?;
    let shards = if o.shards == 0 {
        "one per CPU".to_string()
    } else {
        o.shards.to_string()
    };
    let durability = format!("spool fdatasync (group commit) before 250; shards: {shards}");
    Ok((
        running(PeerKind::Ecelerity, port, durability, Process::Child(child)),
        ready,
    ))
}

/// Start a private Postfix instance as a relay to `sink_port`.
pub fn start_postfix(dir: &Path, port: u16, sink_port: u16) -> Result<RunningPeer> {
    let config = PostfixConfig {
        port,
        relay_port: sink_port,
        hostname: "postfix.bench".into(),
        main_cf_extra: POSTFIX_BENCH_MAIN_CF.into(),
    };
    let postfix = Postfix::start(dir, &config, READY_TIMEOUT, STOP_TIMEOUT)?;
    let durability = "queue file fsync before 250 (Postfix default)".to_string();
    Ok(running(
        PeerKind::Postfix,
        port,
        durability,
        Process::Postfix(postfix),
    ))
}

/// Start the floor relay (this binary's `floor-relay`).
pub fn start_floor(dir: &Path, port: u16, sink_port: u16) -> Result<RunningPeer> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("floor-relay")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--gateway")
        .arg(format!("127.0.0.1:{sink_port}"))
        .arg("--dir")
        .arg(dir.join("spool"));
    let (child, _) = spawn_and_wait("floor", command, port, &dir.join("floor.log"))?;
    let durability = "group-committed pwrite + fdatasync before 250 (no queue)".to_string();
    Ok(running(
        PeerKind::Floor,
        port,
        durability,
        Process::Child(child),
    ))
}

/// Start kumod through its relay script, fdatasync before each 250.
pub fn start_kumo(script: &Path, dir: &Path, port: u16, sink_port: u16) -> Result<RunningPeer> {
    let spool = dir.join("spool");
    fs::create_dir_all(&spool)?;
    let mut command = Command::new(script);
    command
        .arg(&spool)
        .arg(port.to_string())
        .arg(sink_port.to_string())
        .arg("true")
        .env("KUMO_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("KUMO_CONN_LIMIT", "64");
    let (child, _) = spawn_and_wait("kumod", command, port, &dir.join("kumod.log"))?;
    let durability = "RocksDB spool, flush=true + force_sync: WAL synced before 250".to_string();
    Ok(running(
        PeerKind::Kumo,
        port,
        durability,
        Process::Child(child),
    ))
}

/// `npm install Haraka` into the cache once; the path of its `haraka` script.
pub fn install_haraka(cache: &Path) -> Result<PathBuf> {
    let bin = cache.join("node_modules/Haraka/bin/haraka");
    if bin.exists() {
        return Ok(bin);
    }
    fs::create_dir_all(cache)?;
    let status = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "Haraka",
        ])
        .current_dir(cache)
        .stdout(Stdio::null())
        .status()
        .context("run npm")?;
    if !status.success() || !bin.exists() {
        bail!("npm install Haraka failed ({status})");
    }
    Ok(bin)
}

/// Start Haraka as a relay with its outbound queue, forwarding to the sink.
pub fn start_haraka(
    paths: &PeerPaths,
    dir: &Path,
    port: u16,
    sink_port: u16,
) -> Result<RunningPeer> {
    let bin = install_haraka(&paths.haraka_cache)?;
    let config = dir.join("config");
    // `haraka -i` lays out a default config (connection.ini and friends).
    let status = Command::new("node")
        .arg(&bin)
        .arg("-i")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("haraka -i {} failed ({status})", dir.display());
    }
    fs::create_dir_all(&config)?;
    fs::create_dir_all(dir.join("queue"))?;
    let files: [(&str, String); 7] = [
        ("smtp.ini", format!("listen=127.0.0.1:{port}\nnodes=1\n")),
        ("plugins", "relay\nqueue/smtp_forward\n".into()),
        ("relay.ini", "[relay]\nacl=true\nforce_routing=false\ndest_domains=false\n".into()),
        ("relay_acl_allow", "127.0.0.0/8\n".into()),
        (
            "smtp_forward.ini",
            format!("host=127.0.0.1\nport={sink_port}\nenable_outbound=true\nenable_tls=false\nqueue=smtp\n"),
        ),
        ("outbound.ini", "concurrency_max=100\nenable_tls=false\n".into()),
        ("me", "haraka.bench\n".into()),
    ];
    for (name, text) in files {
        fs::write(config.join(name), text)?;
    }
    fs::write(config.join("log.ini"), "[main]\nlevel=warn\n")?;
    fs::write(config.join("host_list"), "")?;
    let mut command = Command::new("node");
    command.arg(&bin).arg("-c").arg(dir).current_dir(dir);
    let (child, _) = spawn_and_wait("haraka", command, port, &dir.join("haraka.log"))?;
    let durability = "outbound queue file written before 250 (no fsync)".to_string();
    Ok(running(
        PeerKind::Haraka,
        port,
        durability,
        Process::Child(child),
    ))
}

/// Start any peer kind with defaults.
pub fn start_peer(
    kind: PeerKind,
    paths: &PeerPaths,
    dir: &Path,
    sink_port: u16,
    ecelerity: &EcelerityOptions,
) -> Result<RunningPeer> {
    let port = free_port();
    match kind {
        PeerKind::Ecelerity => {
            start_ecelerity(paths, dir, port, sink_port, ecelerity).map(|(p, _)| p)
        }
        PeerKind::Postfix => start_postfix(dir, port, sink_port),
        PeerKind::Kumo => {
            let script = paths
                .kumod_relay_script
                .as_deref()
                .ok_or_else(|| anyhow!("no --kumod-relay-script given and none found"))?;
            start_kumo(script, dir, port, sink_port)
        }
        PeerKind::Haraka => start_haraka(paths, dir, port, sink_port),
        PeerKind::Floor => start_floor(dir, port, sink_port),
    }
}
