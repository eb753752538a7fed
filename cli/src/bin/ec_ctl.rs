//! `ec_ctl [--config FILE] start|stop|restart|status`: process control.
//!
//! * start: runs `ecelerity` (the binary beside this one) in the background
//!   and returns once it accepts SMTP connections (exit 0), or prints why it
//!   did not start (exit 2).
//! * stop: asks the daemon to shut down gracefully over the control socket
//!   (SIGTERM if the socket does not answer) and returns once the process
//!   is gone.
//! * status: `ecelerity is running (pid N)` and exit 0, or `ecelerity is not
//!   running` and exit 3 (the LSB code for a stopped service).
//!
//! Relative paths in the configuration resolve against the working
//! directory, as they do for the daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ecelerity_cli::{control_socket, load_config_or_exit, EXIT_FAILED};
use ecelerity_engine::config::Config;

#[derive(Parser)]
#[command(version, about = "Start, stop and query the ecelerity daemon")]
struct Args {
    /// ecelerity.conf (default: the embedded default configuration).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Seconds to wait for start or stop.
    #[arg(long, default_value_t = 60, global = true)]
    wait_secs: u64,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Start the daemon in the background; return once it accepts connections.
    Start,
    /// Stop the daemon gracefully; return once it has exited.
    Stop,
    /// Stop, then start.
    Restart,
    /// Say whether the daemon runs (exit 0) or not (exit 3).
    Status,
}

/// LSB exit code of `status` for a service that is not running.
const EXIT_NOT_RUNNING: i32 = 3;

fn main() {
    let args = Args::parse();
    let config = load_config_or_exit(args.config.as_deref());
    let wait = Duration::from_secs(args.wait_secs);
    let code = match args.action {
        Action::Start => start(&config, args.config.as_deref(), wait),
        Action::Stop => stop(&config, wait),
        Action::Restart => match stop(&config, wait) {
            0 => start(&config, args.config.as_deref(), wait),
            code => code,
        },
        Action::Status => match running_pid(config.pidfile()) {
            Some(pid) => {
                println!("ecelerity is running (pid {pid})");
                0
            }
            None => {
                println!("ecelerity is not running");
                EXIT_NOT_RUNNING
            }
        },
    };
    std::process::exit(code);
}

/// The pid in `pid_file` if that process is alive.
fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// True while `pid` exists and is not a zombie (a daemon whose parent
/// exited may wait unreaped for a while).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn start(config: &Config, config_path: Option<&Path>, wait: Duration) -> i32 {
    if let Some(pid) = running_pid(config.pidfile()) {
        println!("ecelerity is already running (pid {pid})");
        return 0;
    }
    let daemon = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ecelerity")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ecelerity"));
    // The daemon's own stdout/stderr go to a file beside the paniclog, so a
    // start-up failure before the paniclog opens is still on record.
    let out_path = config.logs().paniclog.with_file_name("ecelerity.out");
    if let Some(dir) = out_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ec_ctl: cannot open {}: {e}", out_path.display());
            return EXIT_FAILED;
        }
    };
    let start_offset = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(&daemon);
    if let Some(p) = config_path {
        command.arg("--config").arg(p);
    }
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our
    // session so it outlives this command and the terminal.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ec_ctl: cannot run {}: {e}", daemon.display());
            return EXIT_FAILED;
        }
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("ec_ctl: ecelerity did not start ({status}):");
            eprint!("{}", tail_from(&out_path, start_offset));
            return EXIT_FAILED;
        }
        if accepts_smtp(config) {
            println!("ecelerity started (pid {})", child.id());
            return 0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "ec_ctl: ecelerity (pid {}) did not accept connections within {:?}",
        child.id(),
        wait
    );
    EXIT_FAILED
}

fn tail_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// True once every enabled ESMTP listener answers with a 220 banner (or
/// the control socket answers, when there is no ESMTP listener).
fn accepts_smtp(config: &Config) -> bool {
    let listeners: Vec<_> = config
        .esmtp_listeners()
        .iter()
        .filter(|l| l.enabled)
        .collect();
    if listeners.is_empty() {
        return control_socket(config)
            .is_some_and(|p| std::os::unix::net::UnixStream::connect(p).is_ok());
    }
    listeners.iter().all(|l| {
        let mut addr = l.address;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut banner = String::new();
        let ok =
            BufReader::new(&stream).read_line(&mut banner).is_ok() && banner.starts_with("220");
        let _ = (&stream).write_all(b"QUIT\r\n");
        ok
    })
}

fn stop(config: &Config, wait: Duration) -> i32 {
    let Some(pid) = running_pid(config.pidfile()) else {
        println!("ecelerity is not running");
        return 0;
    };
    let asked = control_socket(config).is_some_and(|p| ask_shutdown(&p));
    if !asked {
        // SAFETY: plain kill(2) on the pid the daemon wrote.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if !alive(pid) {
            println!("ecelerity stopped");
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("ec_ctl: ecelerity (pid {pid}) still runs after {wait:?}");
    EXIT_FAILED
}

fn ask_shutdown(socket: &Path) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"shutdown\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).is_ok() && !reply.is_empty()
}
