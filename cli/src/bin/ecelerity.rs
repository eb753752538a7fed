//! `ecelerity`: the MTA daemon.
//!
//! Runs in the foreground by default (logs to stderr and the paniclog);
//! `--daemon` detaches. Without `--config` it runs on the embedded default
//! configuration (ESMTP on 127.0.0.1:2525, everything under ./var).
//! SIGTERM or SIGINT (or the console's `shutdown`) stop it gracefully;
//! SIGHUP reloads the configuration (the console's `config reload`: a bad
//! file keeps the running one, and the paniclog says `file:line: what is
//! wrong`); SIGUSR1 reopens every log file (the console's `reopen logs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use ecelerity_cli::{load_config_or_exit, privileges, systemd, EXIT_FAILED};
use ecelerity_engine::runtime;

#[derive(Parser)]
#[command(version, about = "ecelerity: a thread-per-core mail transfer agent")]
struct Args {
    /// ecelerity.conf to run with (default: the embedded default configuration).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Detach from the terminal and run in the background.
    #[arg(long)]
    daemon: bool,
    /// PID file (default: the config's `pidfile`).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Most verbose paniclog level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

fn main() {
    let args = Args::parse();
    let config = load_config_or_exit(args.config.as_deref());
    if args.daemon {
        daemonize();
    }
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| config.pidfile().to_path_buf());
    if let Err(e) = write_pid_file(&pid_file) {
        eprintln!("ecelerity: {e}");
        std::process::exit(EXIT_FAILED);
    }
    let paniclog = &config.logs().paniclog;
    if let Err(e) = ecelerity_engine::log::install_paniclog(paniclog, args.log_level, !args.daemon)
    {
        eprintln!(
            "ecelerity: cannot open the paniclog {}: {e}",
            paniclog.display()
        );
        remove_pid_file(&pid_file);
        std::process::exit(EXIT_FAILED);
    }
    raise_open_files_limit();
    let signals = block_stop_signals();
    let run_as = match prepare_run_as(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecelerity: {e}");
            remove_pid_file(&pid_file);
            std::process::exit(EXIT_FAILED);
        }
    };
    let drop_privileges = || match run_as {
        None => Ok(()),
        Some(who) => {
            for c in config
                .control_listeners()
                .iter()
                .filter(|c| c.tcp.is_none())
            {
                privileges::chown_tree(&c.path, who)?;
            }
            // So that the unprivileged daemon can at least empty it at exit.
            privileges::chown_tree(&pid_file, who)?;
            privileges::drop_to(who)?;
            tracing::info!("running as uid {} gid {}", who.uid, who.gid);
            Ok(())
        }
    };
    let engine = match runtime::start(config.clone(), drop_privileges) {
        Ok(e) => e,
        Err(e @ runtime::StartError::Config(_)) => {
            // A file the configuration names (a DKIM key) is bad: bad input,
            // `file:line: what is wrong` as for any configuration error.
            eprintln!("{e}");
            remove_pid_file(&pid_file);
            std::process::exit(ecelerity_cli::EXIT_BAD_INPUT);
        }
        Err(e) => {
            tracing::error!("cannot start: {e}");
            if args.daemon {
                let _ = writeln!(std::io::stderr(), "ecelerity: cannot start: {e}");
            }
            remove_pid_file(&pid_file);
            std::process::exit(EXIT_FAILED);
        }
    };
    let listeners: Vec<String> = config
        .esmtp_listeners()
        .iter()
        .filter(|l| l.enabled)
        .map(|l| l.address.to_string())
        .collect();
    let consoles: Vec<String> = config
        .control_listeners()
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    tracing::info!(
        "ecelerity {} ready: {} shard(s); ESMTP on {}; console on {}; config {}",
        ecelerity_engine::VERSION,
        engine.shard_count,
        listeners.join(", "),
        consoles.join(", "),
        config
            .source()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(embedded default)".into())
    );
    let stop = engine.stop_flag();
    let mut systemd = Systemd::from_env();
    loop {
        systemd.poll(&engine.stats);
        match wait_signal(&signals, Duration::from_millis(200)) {
            Some(libc::SIGHUP) => {
                tracing::info!("signal SIGHUP: reloading the configuration");
                let _ = engine.reload();
            }
            Some(libc::SIGUSR1) => {
                tracing::info!("signal SIGUSR1: reopening the logs");
                let _ = engine.reopen_logs();
            }
            Some(sig) => {
                tracing::info!("signal {sig}: stopping");
                engine.request_stop();
            }
            None => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    systemd.notify("STOPPING=1");
    engine.join();
    remove_pid_file(&pid_file);
    tracing::info!("ecelerity stopped");
}

/// systemd's `Type=notify` protocol, driven by the shards' clocks: READY=1
/// once every shard has ticked (its accept loops run), then WATCHDOG=1
/// only while every shard keeps ticking. Does nothing without systemd.
struct Systemd {
    notifier: Option<systemd::Notifier>,
    watchdog: Option<systemd::Watchdog>,
    ready: bool,
}

impl Systemd {
    fn from_env() -> Systemd {
        let notifier = systemd::Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!("NOTIFY_SOCKET is set but unusable: {e}");
            None
        });
        let watchdog = notifier
            .as_ref()
            .and(systemd::watchdog_interval_from_env())
            .map(systemd::Watchdog::new);
        Systemd {
            notifier,
            watchdog,
            ready: false,
        }
    }

    fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.notify(state) {
                tracing::warn!("systemd notification {state} failed: {e}");
            }
        }
    }

    fn poll(&mut self, stats: &ecelerity_engine::stats::EngineStats) {
        if self.notifier.is_none() {
            return;
        }
        let ticks: Vec<u64> = stats
            .shards
            .iter()
            .map(|s| s.get(ecelerity_engine::stats::Counter::ShardTicks))
            .collect();
        if !self.ready {
            if ticks.iter().all(|&t| t > 0) {
                self.ready = true;
                self.notify(&format!("READY=1\nMAINPID={}", std::process::id()));
            }
            return;
        }
        let ping = self
            .watchdog
            .as_mut()
            .is_some_and(|w| w.check(std::time::Instant::now(), &ticks));
        if ping {
            self.notify("WATCHDOG=1");
        }
    }
}

/// When running as root with a `Security { user }` stanza: resolves the
/// user and gives it the spool and log folders, so that once the shards
/// have bound their sockets the daemon can drop to it (Postfix's habit:
/// bind as root, serve as nobody in particular).
fn prepare_run_as(
    config: &ecelerity_engine::config::Config,
) -> Result<Option<privileges::RunAs>, String> {
    let Some(user) = config.security().and_then(|s| s.user.as_deref()) else {
        return Ok(None);
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::warn!("Security: user `{user}` is set but we are not root; running as we are");
        return Ok(None);
    }
    let who = privileges::resolve(user, config.security().and_then(|s| s.group.as_deref()))?;
    let shards = runtime::shard_count(config).map_err(|e| e.to_string())?;
    for shard in 0..shards {
        let dir = config.spoolbase().join(shard.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    privileges::chown_tree(config.spoolbase(), who)?;
    let logs = config.logs();
    for log in [
        &logs.mainlog,
        &logs.rejectlog,
        &logs.paniclog,
        &logs.bouncelog,
    ]
    .into_iter()
    .chain(logs.acctlog.as_ref())
    {
        let file = ecelerity_engine::log::open_append(log, 0o644)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        drop(file);
        privileges::chown_tree(log, who)?;
    }
    Ok(Some(who))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every inbound
/// connection is a descriptor, and the common soft default (1024) would
/// cap the daemon far below `server_max_inbound_connections`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let wanted = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        tracing::warn!(
            "cannot raise the open files limit from {}: {}",
            limit.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
}

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in this thread before any shard
/// starts, so every thread inherits the mask and only [`wait_signal`]
/// sees them.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: sigtimedwait reads the set and the timespec we own.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn daemonize() {
    // SAFETY: called before any thread exists; the parent exits at once.
    unsafe {
        match libc::fork() {
            -1 => {
                eprintln!(
                    "ecelerity: fork failed: {}",
                    std::io::Error::last_os_error()
                );
                std::process::exit(EXIT_FAILED);
            }
            0 => {}
            _ => libc::_exit(0),
        }
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
    }
}

/// Writes our pid, refusing when the file names a live process.
fn write_pid_file(path: &Path) -> std::io::Result<()> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid > 0 && pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("already running (pid {pid} in {})", path.display()),
                ));
            }
        }
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot write the pid file {}: {e}", path.display()),
        )
    })
}

/// Removes our pid file; after a privilege drop the folder may not be ours
/// to change, so the file is emptied instead (ec_ctl reads an empty pid
/// file as "not running").
fn remove_pid_file(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        if text.trim() == std::process::id().to_string() && std::fs::remove_file(path).is_err() {
            let _ = std::fs::write(path, "");
        }
    }
}
