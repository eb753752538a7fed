//! End-to-end harness: runs the built `ecelerity` binaries as real processes
//! against real clients (smtplib via `tests/py/send.py`, swaks, Postfix
//! `smtp-source`) and real sinks (aiosmtpd via `tests/py/sink.py`, Postfix
//! `smtp-sink`), and reads what they leave behind (mainlog, sink files).
//! Owns: temporary directories, the children of a test (daemon, sinks,
//! clients) and what they leave behind.
//! May call: `ecelerity_testkit` (child guards, ports, banner probe, log
//! tail, config rendering, Postfix, `Rng`), the binaries in target/debug
//! (or `ECELERITY_BIN_DIR`), the Python helpers in tests/py, swaks,
//! smtp-sink, smtp-source.
//! Never: the daemon's internals (this harness has no engine or spool
//! dependency); a test sees the daemon only through its sockets, files and
//! exit status. One test (`e2e/outbound_strict.rs`) writes a spool with the
//! real spool crate before the daemon starts, to plant bodies no SMTP
//! client could send.
//!
//! Every child process is killed when its owner is dropped, also while a
//! test panics, so a failed test never leaves a daemon or sink behind.
//! Tests are independent: each makes its own `TempDir`, ports and processes,
//! so nextest may run them in parallel. The helpers the tests share with
//! `ecbench` live in `ecelerity_testkit` and are re-exported here under the
//! names the tests have always used.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use ecelerity_testkit::{
    bin_dir, complete_lines, file_tail, free_port, poll_until, process_alive, run, run_with_input,
    smtp_banner_ok, ChildGuard, EcelerityConfig, PidFileGuard, Postgres, Rng, CONFIG_FILE_NAME,
    MAINLOG_RELATIVE, POLL_INTERVAL, POSTFIX_BIN,
};
use ecelerity_testkit::{ecelerity_command, wait_for_greeting, Postfix, PostfixConfig};

/// How long a daemon or sink may take from spawn to answering `220`. The
/// contract says 20 s; CI has two cores shared by parallel tests, so we wait
/// longer before calling it a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a graceful stop (SIGTERM, console `shutdown`, `ec_ctl stop`) may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Default wait for a mainlog line or a sink arrival in a simple test.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of one of the project's binaries; panics with advice when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (tests/run does), \
         or point ECELERITY_BIN_DIR at the binaries",
        path.display()
    );
    path
}

/// Directory of the Python helpers (sink.py, send.py).
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// The Python interpreter: `PYTHON` if set, else `python3` from PATH.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

// ---------------------------------------------------------------------------
// Temporary directories and ports.

static TEMP_DIR_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A unique directory under `std::env::temp_dir()`, removed on drop. Kept
/// (and its path printed) when `ECELERITY_KEEP_TMP` is set or the test is
/// panicking, so a failure can be read afterwards.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let sequence = TEMP_DIR_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "ecelerity-e2e-{label}-{}-{sequence}-{nanos:08x}",
            std::process::id()
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("ECELERITY_KEEP_TMP").is_some() || thread::panicking() {
            eprintln!("e2e: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Configuration.

/// The options a test usually varies, rendered into Momentum config syntax.
#[derive(Clone, Debug)]
pub struct TestConfig {
    pub smtp_port: u16,
    /// Where all mail goes (`gateway`), normally a sink.
    pub gateway_port: u16,
    pub shards: u32,
    pub relay_hosts: Vec<String>,
    pub retry_interval_s: u32,
    pub max_retry_interval_s: u32,
    /// How long a host that refused a connection is skipped by every
    /// domain (Momentum's default is 120 s; tests restart sinks).
    pub host_failure_retry_s: u32,
    /// Appended verbatim at global scope.
    pub extra: String,
}

impl TestConfig {
    /// A config listening on a fresh port and delivering everything to
    /// 127.0.0.1:`gateway_port`, relaying for 127.0.0.0/8, retrying every
    /// second (a failed host too).
    pub fn new(gateway_port: u16) -> TestConfig {
        TestConfig {
            smtp_port: free_port(),
            gateway_port,
            shards: 2,
            relay_hosts: vec!["127.0.0.0/8".to_string()],
            retry_interval_s: 1,
            max_retry_interval_s: 2,
            host_failure_retry_s: 1,
            extra: String::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut config =
            EcelerityConfig::new("mta.test", self.smtp_port, self.gateway_port, self.shards);
        config.relay_hosts = self.relay_hosts.clone();
        config
            .option("retry_interval", self.retry_interval_s)
            .option("max_retry_interval", self.max_retry_interval_s)
            .option("host_failure_retry", self.host_failure_retry_s);
        config.extra = self.extra.clone();
        config.render()
    }
}

/// The first quoted `Listen "..."` address after `scope` in a config text.
pub fn listen_address_after(config_text: &str, scope: &str) -> Option<String> {
    let at = config_text.find(scope)?;
    let rest = &config_text[at..];
    let listen = rest.find("Listen")?;
    let rest = &rest[listen + "Listen".len()..];
    let open = rest.find('"')?;
    let rest = &rest[open + 1..];
    let close = rest.find('"')?;
    Some(rest[..close].to_string())
}

// ---------------------------------------------------------------------------
// Mainlog.

/// One mainlog line split on '@'. For T and P lines the last field (the
/// remote reply) may itself contain '@' and is kept whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MainlogLine {
    pub fields: Vec<String>,
}

/// Index of the error text in T and P lines.
const MAINLOG_FAILURE_ERROR_FIELD: usize = 13;

impl MainlogLine {
    pub fn parse(line: &str) -> Option<MainlogLine> {
        let mut fields: Vec<String> = line.split('@').map(str::to_string).collect();
        if fields.len() < 5 {
            return None;
        }
        if matches!(fields[4].as_str(), "T" | "P") && fields.len() > MAINLOG_FAILURE_ERROR_FIELD + 1
        {
            let error = fields[MAINLOG_FAILURE_ERROR_FIELD..].join("@");
            fields.truncate(MAINLOG_FAILURE_ERROR_FIELD);
            fields.push(error);
        }
        Some(MainlogLine { fields })
    }

    /// R, D, T, P, X or M.
    pub fn kind(&self) -> &str {
        &self.fields[4]
    }

    pub fn message_id(&self) -> &str {
        &self.fields[1]
    }

    pub fn field(&self, index: usize) -> &str {
        self.fields.get(index).map(String::as_str).unwrap_or("")
    }
}

pub fn parse_mainlog(lines: &[String]) -> Vec<MainlogLine> {
    lines.iter().filter_map(|l| MainlogLine::parse(l)).collect()
}

/// Count of mainlog lines per kind.
pub fn count_kinds(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in parse_mainlog(lines) {
        *counts.entry(line.kind().to_string()).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// The daemon.

/// A running (or stopped) `ecelerity --config ecelerity.conf` with cwd = the
/// test directory. stdout and stderr go to `daemon.stdout` / `daemon.stderr`
/// in that directory, appended across restarts.
pub struct Daemon {
    dir: PathBuf,
    config_path: PathBuf,
    smtp_port: u16,
    control_socket: PathBuf,
    child: Option<ChildGuard>,
    starts: u32,
}

impl Daemon {
    /// Write `config_text` to DIR/ecelerity.conf, start the daemon and wait
    /// until its first ESMTP listener answers 220. Panics (quoting the
    /// daemon's stderr) when it exits or does not become ready.
    pub fn start(dir: &Path, config_text: &str) -> Daemon {
        let mut daemon = Daemon::spawn(dir, config_text);
        daemon.wait_ready();
        daemon
    }

    /// Write the config and spawn the daemon without waiting for readiness.
    pub fn spawn(dir: &Path, config_text: &str) -> Daemon {
        let config_path = dir.join(CONFIG_FILE_NAME);
        fs::write(&config_path, config_text).expect("write config");
        let smtp_port = listen_address_after(config_text, "ESMTP_Listener")
            .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        let control = listen_address_after(config_text, "Control_Listener")
            .unwrap_or_else(|| "ctl.sock".to_string());
        let mut daemon = Daemon {
            dir: dir.to_path_buf(),
            config_path,
            smtp_port,
            control_socket: dir.join(control),
            child: None,
            starts: 0,
        };
        daemon.spawn_process();
        daemon
    }

    fn spawn_process(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let stdout = self.open_output("daemon.stdout");
        let stderr = self.open_output("daemon.stderr");
        self.starts += 1;
        let banner = format!("--- e2e: start {} ---\n", self.starts);
        let _ = (&stderr).write_all(banner.as_bytes());
        let child = ecelerity_command(&bin("ecelerity"), &self.dir, Path::new(CONFIG_FILE_NAME))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn ecelerity");
        self.child = Some(ChildGuard::new("ecelerity", child));
    }

    fn open_output(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("open daemon output file")
    }

    /// Wait until the ESMTP listener answers 220.
    pub fn wait_ready(&mut self) {
        assert!(
            self.smtp_port != 0,
            "config has no ESMTP_Listener Listen \"host:port\""
        );
        let stderr = self.dir.join("daemon.stderr");
        wait_for_greeting(
            "ecelerity",
            self.smtp_port,
            self.child.as_mut(),
            &stderr,
            READY_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().is_none(),
            None => false,
        }
    }

    /// SIGKILL the daemon and reap it: the crash the spool must survive.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        child.signal(libc::SIGKILL);
        let _ = child.wait_timeout(STOP_TIMEOUT);
        child.kill();
    }

    /// Send SIGTERM (graceful stop) without waiting.
    pub fn term(&mut self) {
        self.child
            .as_ref()
            .expect("daemon not running")
            .signal(libc::SIGTERM);
    }

    /// Wait up to `timeout` for the daemon to exit; on exit the process is
    /// reaped and the daemon counts as stopped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.wait_timeout(timeout)?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM and wait for a clean exit (status 0); panics otherwise.
    pub fn stop(&mut self) {
        self.term();
        let status = self.wait_exit(STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "ecelerity still running {STOP_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                self.stderr_text()
            )
        });
        assert!(
            status.success(),
            "ecelerity exited with {status} after SIGTERM; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Start the daemon again with the same config (it must be stopped) and
    /// wait until it is ready.
    pub fn restart(&mut self) {
        if let Some(child) = self.child.as_mut() {
            assert!(
                child.try_wait().is_some(),
                "restart while the daemon still runs"
            );
            self.child = None;
        }
        self.spawn_process();
        self.wait_ready();
    }

    pub fn stderr_text(&self) -> String {
        file_tail(&self.dir.join("daemon.stderr"))
    }

    pub fn mainlog_path(&self) -> PathBuf {
        self.dir.join(MAINLOG_RELATIVE)
    }

    /// Complete mainlog lines so far.
    pub fn mainlog_lines(&self) -> Vec<String> {
        complete_lines(&self.mainlog_path())
    }

    pub fn mainlog(&self) -> Vec<MainlogLine> {
        parse_mainlog(&self.mainlog_lines())
    }

    /// Poll the mainlog until `condition` holds; returns the lines that
    /// satisfied it. Panics after `timeout`, quoting the mainlog and stderr.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&[String]) -> bool,
    ) -> Vec<String> {
        poll_until(timeout, || {
            let lines = self.mainlog_lines();
            condition(&lines).then_some(lines)
        })
        .unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; mainlog tail:\n{}\nstderr tail:\n{}",
                file_tail(&self.mainlog_path()),
                self.stderr_text()
            )
        })
    }

    /// Wait until the mainlog holds at least `count` lines of `kind`.
    pub fn wait_for_kind(&self, kind: &str, count: usize, timeout: Duration) -> Vec<String> {
        self.wait_for(&format!("{count} mainlog {kind} lines"), timeout, |lines| {
            count_kinds(lines).get(kind).copied().unwrap_or(0) >= count
        })
    }

    /// Run `ec_console SOCKET` with `input` on stdin (one command per line).
    pub fn console(&self, input: &str) -> Output {
        console(&self.control_socket, input)
    }
}

/// Run `ec_console SOCKET` with `input` on stdin.
pub fn console(socket: &Path, input: &str) -> Output {
    run_with_input(
        Command::new(bin("ec_console")).arg(socket),
        input.as_bytes(),
        STOP_TIMEOUT,
    )
}

/// The number after `label:` in Momentum-style summary output
/// ("   Received Messages:     12").
pub fn summary_value(text: &str, label: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?;
        let rest = rest.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------
// Sinks.

/// One transaction stored by `tests/py/sink.py`.
#[derive(Clone, Debug)]
pub struct SinkMessage {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub path: PathBuf,
    /// The IP address the message came from (the client's source address).
    pub peer: String,
    /// The name the client gave in EHLO (or HELO).
    pub ehlo: String,
    /// The TLS version of the session (`TLSv1.3`), `-` in clear text.
    pub tls: String,
}

impl SinkMessage {
    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap_or_else(|e| panic!("read {}: {e}", self.path.display()))
    }

    /// The first header with this name (case-insensitive), unfolded, value trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.bytes(), name)
    }
}

/// The value of the first header `name` in a message's header section.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let mut found: Option<String> = None;
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if let Some(value) = found.as_mut() {
            if line.starts_with(' ') || line.starts_with('\t') {
                value.push_str(line);
                continue;
            }
            break;
        }
        if let Some((field, value)) = line.split_once(':') {
            if field.eq_ignore_ascii_case(name) {
                found = Some(value.to_string());
            }
        }
    }
    found.map(|v| v.trim().to_string())
}

/// Remove the first header if it is `Received:`, with its folded
/// continuation lines. Returns None when the message does not start with one.
pub fn strip_leading_received(message: &[u8]) -> Option<&[u8]> {
    const PREFIX: &[u8] = b"received:";
    if message.len() < PREFIX.len() || !message[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let mut at = 0;
    loop {
        let end = at + message[at..].windows(2).position(|w| w == b"\r\n")? + 2;
        at = end;
        match message.get(at) {
            Some(b' ') | Some(b'\t') => continue,
            _ => return Some(&message[at..]),
        }
    }
}

/// The aiosmtpd sink (`tests/py/sink.py`) as a child process.
pub struct Sink {
    dir: PathBuf,
    /// The loopback address it listens on (127.0.0.1 unless `start_on`).
    host: String,
    port: u16,
    extra_args: Vec<String>,
    log_path: PathBuf,
    child: Option<ChildGuard>,
}

impl Sink {
    /// Start a sink on 127.0.0.1:`port` storing into `dir` and wait until it
    /// answers 220.
    pub fn start(dir: &Path, port: u16) -> Sink {
        Sink::start_with_args(dir, port, &[])
    }

    /// As `start`, with extra sink.py arguments (e.g. `--rule bob=452`).
    pub fn start_with_args(dir: &Path, port: u16, extra_args: &[&str]) -> Sink {
        Sink::start_on(dir, "127.0.0.1", port, extra_args)
    }

    /// As `start_with_args`, listening on `host` (another loopback address
    /// such as 127.0.0.2, for MX hosts).
    pub fn start_on(dir: &Path, host: &str, port: u16, extra_args: &[&str]) -> Sink {
        fs::create_dir_all(dir).expect("create sink dir");
        let mut sink = Sink {
            dir: dir.to_path_buf(),
            host: host.to_string(),
            port,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log_path: dir.with_extension("log"),
            child: None,
        };
        sink.spawn_and_wait();
        sink
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "sink already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open sink log");
        let child = Command::new(python())
            .arg(py_dir().join("sink.py"))
            .arg("--host")
            .arg(&self.host)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn python3 sink.py (run tests/install-deps)");
        self.child = Some(ChildGuard::new("sink.py", child));
        if self.host != "127.0.0.1" {
            let address = format!("{}:{}", self.host, self.port);
            let greeted = poll_until(READY_TIMEOUT, || banner_at(&address).then_some(()));
            if greeted.is_none() {
                panic!(
                    "sink.py on {address} not ready; log:\n{}",
                    file_tail(&self.log_path)
                );
            }
            return;
        }
        wait_for_greeting(
            "sink.py",
            self.port,
            self.child.as_mut(),
            &self.log_path,
            READY_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop the sink (SIGTERM, then SIGKILL if it lingers).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM);
            if child.wait_timeout(STOP_TIMEOUT).is_none() {
                child.kill();
            }
        }
    }

    /// Start the sink again on the same port and directory; numbering continues.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Every transaction stored so far, in arrival order.
    pub fn messages(&self) -> Vec<SinkMessage> {
        complete_lines(&self.dir.join("index.txt"))
            .iter()
            .filter_map(|line| {
                let mut parts = line.split('\t');
                let mail_from = parts.next()?.to_string();
                let rcpts = parts.next()?.split(',').map(str::to_string).collect();
                let file = parts.next()?;
                let peer = parts.next().unwrap_or_default().to_string();
                let ehlo = parts.next().unwrap_or_default().to_string();
                let tls = parts.next().unwrap_or("-").to_string();
                Some(SinkMessage {
                    mail_from,
                    rcpts,
                    path: self.dir.join(file),
                    peer,
                    ehlo,
                    tls,
                })
            })
            .collect()
    }

    /// Wait until at least `count` transactions are stored; panics after `timeout`.
    pub fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<SinkMessage> {
        poll_until(timeout, || {
            let messages = self.messages();
            (messages.len() >= count).then_some(messages)
        })
        .unwrap_or_else(|| {
            panic!(
                "sink has {} of {count} messages after {timeout:?}; sink log:\n{}",
                self.messages().len(),
                file_tail(&self.log_path)
            )
        })
    }

    /// Count of stored transactions per Message-ID header value.
    pub fn message_id_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for message in self.messages() {
            if let Some(id) = message.header("Message-ID") {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Whether an SMTP server at `address` answers with a 220 banner.
fn banner_at(address: &str) -> bool {
    let Ok(stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("220")
}

/// Postfix `smtp-sink`, dumping each transaction into a file under `dir`.
pub struct PostfixSink {
    dir: PathBuf,
    port: u16,
    _child: ChildGuard,
}

impl PostfixSink {
    pub fn start(dir: &Path, port: u16) -> PostfixSink {
        fs::create_dir_all(dir).expect("create smtp-sink dir");
        let template = format!("{}/msg.", dir.display());
        let log_path = dir.with_extension("log");
        let log = File::create(&log_path).expect("smtp-sink log");
        let mut command = Command::new("/usr/sbin/smtp-sink");
        // smtp-sink refuses to run as root without a user to switch to.
        if unsafe { libc::geteuid() } == 0 {
            command.arg("-u").arg("root");
        }
        let child = command
            .arg("-d")
            .arg(template)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn smtp-sink (run tests/install-deps)");
        let mut child = ChildGuard::new("smtp-sink", child);
        wait_for_greeting(
            "smtp-sink",
            port,
            Some(&mut child),
            &log_path,
            READY_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        PostfixSink {
            dir: dir.to_path_buf(),
            port,
            _child: child,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Dumped transactions so far. smtp-sink writes each file as the
    /// transaction ends, so a file may be incomplete for a moment; a dump is
    /// counted once it ends with the empty line smtp-sink appends.
    pub fn dumps(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("msg."))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter(|bytes| bytes.ends_with(b"\n\n"))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// Result of one send.py run: Message-ID (or file) → final reply code.
pub struct SendReport {
    pub results: Vec<(String, String)>,
    pub status: ExitStatus,
    pub stderr: String,
}

impl SendReport {
    pub fn parse(stdout: &[u8], status: ExitStatus, stderr: &[u8]) -> SendReport {
        let results = String::from_utf8_lossy(stdout)
            .lines()
            .filter_map(|line| {
                let (id, code) = line.split_once('\t')?;
                Some((id.to_string(), code.to_string()))
            })
            .collect();
        SendReport {
            results,
            status,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// Message-IDs that got 250.
    pub fn accepted(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|(_, code)| code == "250")
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Build a send.py command; add arguments (e.g. `--count`) before running.
pub fn send_py(port: u16) -> Command {
    let mut command = Command::new(python());
    command
        .arg(py_dir().join("send.py"))
        .arg("--port")
        .arg(port.to_string());
    command
}

/// Run send.py to completion with `args`.
pub fn send_messages(port: u16, args: &[&str], timeout: Duration) -> SendReport {
    let output = run(send_py(port).args(args), timeout);
    SendReport::parse(&output.stdout, output.status, &output.stderr)
}

/// Send the exact bytes of `file` (CRLF) with smtplib; returns the DATA code.
pub fn send_file(port: u16, file: &Path, from: &str, to: &[&str]) -> String {
    let file_arg = file.to_string_lossy().into_owned();
    let to_arg = to.join(",");
    let report = send_messages(
        port,
        &[
            "--file",
            &file_arg,
            "--from",
            from,
            "--to",
            &to_arg,
            "--deadline",
            "60",
        ],
        ARRIVAL_TIMEOUT,
    );
    report
        .results
        .first()
        .map(|(_, code)| code.clone())
        .unwrap_or_else(|| format!("no result; stderr: {}", report.stderr))
}

/// Run swaks against 127.0.0.1:`port` with extra arguments.
pub fn swaks(port: u16, args: &[&str]) -> Output {
    run(
        Command::new("swaks")
            .arg("--server")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--timeout")
            .arg("60")
            .args(args),
        ARRIVAL_TIMEOUT,
    )
}

/// A Python client process left running (e.g. send.py during kill -9 rounds).
pub struct Background {
    guard: ChildGuard,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Background {
    /// Spawn `command` with stdout and stderr to files named `name`.out/.err in `dir`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Background {
        let stdout_path = dir.join(format!("{name}.out"));
        let stderr_path = dir.join(format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("stdout file"))
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Background {
            guard: ChildGuard::new(name, child),
            stdout_path,
            stderr_path,
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.guard.try_wait()
    }

    /// Wait for exit and parse its output as a send.py report.
    pub fn wait_report(mut self, timeout: Duration) -> SendReport {
        let status = self.guard.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "client still running after {timeout:?}:\n{}",
                file_tail(&self.stderr_path)
            )
        });
        let stdout = fs::read(&self.stdout_path).unwrap_or_default();
        let stderr = fs::read(&self.stderr_path).unwrap_or_default();
        SendReport::parse(&stdout, status, &stderr)
    }
}

/// Counts Message-IDs at a sink, reading only files added since the last
/// call, so polling thousands of arrivals stays cheap.
#[derive(Default)]
pub struct MessageIdTally {
    files_read: usize,
    pub counts: HashMap<String, usize>,
}

impl MessageIdTally {
    /// Read the sink's new arrivals; returns how many were new.
    pub fn update(&mut self, sink: &Sink) -> usize {
        let messages = sink.messages();
        let new = messages.len().saturating_sub(self.files_read);
        for message in &messages[self.files_read..] {
            let id = message.header("Message-ID").unwrap_or_default();
            *self.counts.entry(id).or_insert(0) += 1;
        }
        self.files_read = messages.len();
        new
    }

    /// Reads the sink until every id in `accepted` has arrived or
    /// `timeout` passes (polling every `poll`); returns the ids that never
    /// arrived, sorted.
    pub fn wait_for_all<'a>(
        &mut self,
        sink: &Sink,
        accepted: impl IntoIterator<Item = &'a String> + Clone,
        timeout: Duration,
        poll: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.update(sink);
            let mut lost: Vec<String> = accepted
                .clone()
                .into_iter()
                .filter(|id| !self.counts.contains_key(*id))
                .cloned()
                .collect();
            if lost.is_empty() || Instant::now() >= deadline {
                lost.sort();
                return lost;
            }
            thread::sleep(poll);
        }
    }
}

/// A raw SMTP client for protocol tests that smtplib and swaks would hide
/// (bare LF, replies after errors, connection closes).
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
}

/// Read timeout of a raw SMTP client.
const SMTP_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

impl SmtpClient {
    /// Connect and read the greeting; panics unless it is 220.
    pub fn connect(port: u16) -> SmtpClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to daemon");
        stream
            .set_read_timeout(Some(SMTP_CLIENT_TIMEOUT))
            .expect("set_read_timeout");
        let mut client = SmtpClient {
            reader: BufReader::new(stream),
        };
        let (code, text) = client.read_reply().expect("greeting");
        assert_eq!(code, 220, "greeting: {text}");
        client
    }

    /// One reply (all lines of a multi-line reply joined with '\n'), or None
    /// at EOF or on a read error.
    pub fn read_reply(&mut self) -> Option<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line.get(..3)?.parse().ok()?;
            text.push_str(line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some((code, text));
            }
            text.push('\n');
        }
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write to daemon");
    }

    /// Send one command line (CRLF added) and read its reply; panics at EOF.
    pub fn command(&mut self, line: &str) -> (u16, String) {
        self.write_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
            .unwrap_or_else(|| panic!("connection closed after {line}"))
    }

    /// True when the server has closed the connection (EOF, or a reset).
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// A strict Postfix relay.

/// main.cf lines that make the relay strict: any bare LF from any client
/// is refused (no exclusions, not even mynetworks), and Postfix leaves
/// headers and MIME alone so what reaches the sink is what it was handed.
const STRICT_RELAY_MAIN_CF: &str = "smtpd_forbid_bare_newline = reject\n\
     smtpd_forbid_bare_newline_exclusions =\n\
     local_header_rewrite_clients =\n\
     disable_mime_output_conversion = yes\n";

/// Starts of the Postfix relay fixture before a test gives up.
const POSTFIX_START_TRIES: u32 = 3;

/// A private Postfix instance (`ecelerity_testkit::Postfix`) on
/// 127.0.0.1:`port` that relays everything to `[127.0.0.1]:sink_port` and
/// refuses any bare LF from any client. Its files live under the test's
/// directory; it logs to `DIR/maillog`; it is stopped on drop.
pub struct PostfixRelay {
    postfix: Postfix,
}

impl PostfixRelay {
    /// True when Postfix's binaries are installed; tests that need the
    /// relay skip (with a printed reason) when they are not.
    pub fn available() -> bool {
        Postfix::available()
    }

    /// Write the configuration under `dir`, start the instance and wait
    /// until it answers 220 on `port`. Another test can take a port that
    /// `free_port` found free before Postfix binds it: a start that fails
    /// is tried again on a fresh port, in a fresh directory, up to
    /// POSTFIX_START_TRIES times (callers read the port back with
    /// `port()`). Panics, quoting the last log, when no try works.
    pub fn start(dir: &Path, port: u16, sink_port: u16) -> PostfixRelay {
        let mut port = port;
        let mut failures = Vec::new();
        for attempt in 1..=POSTFIX_START_TRIES {
            let config = PostfixConfig {
                port,
                relay_port: sink_port,
                hostname: "postfix.test".into(),
                main_cf_extra: STRICT_RELAY_MAIN_CF.into(),
            };
            let dir = if attempt == 1 {
                dir.to_path_buf()
            } else {
                dir.join(format!("retry-{attempt}"))
            };
            match Postfix::start(&dir, &config, READY_TIMEOUT, STOP_TIMEOUT) {
                Ok(postfix) => return PostfixRelay { postfix },
                Err(e) => failures.push(format!("try {attempt} on port {port}: {e}")),
            }
            port = crate::free_port();
        }
        panic!("{}", failures.join("\n"))
    }

    pub fn port(&self) -> u16 {
        self.postfix.port()
    }

    pub fn maillog_path(&self) -> PathBuf {
        self.postfix.maillog_path()
    }

    /// The log so far (postlogd writes it; may lag a line for a moment).
    pub fn maillog_text(&self) -> String {
        self.postfix.maillog_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mainlog_failure_line_keeps_at_signs_in_the_error_text() {
        let line = "1700000003@00/00-1@00/00-2@00/00-3@P@example.com@35@default@default@5@1@900.2\
                    @192.0.2.25@550 5.1.1 <bob@example.com> no such user";
        let parsed = MainlogLine::parse(line).unwrap();
        assert_eq!(parsed.kind(), "P");
        assert_eq!(parsed.fields.len(), 14);
        assert_eq!(parsed.field(13), "550 5.1.1 <bob@example.com> no such user");
    }

    #[test]
    fn strip_leading_received_removes_folded_continuations_only() {
        let message = b"Received: from a\r\n\tby b;\r\n Thu, 1 Jan\r\nSubject: x\r\n\r\nbody\r\n";
        assert_eq!(
            strip_leading_received(message).unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        assert!(strip_leading_received(b"Subject: x\r\n\r\n").is_none());
    }

    #[test]
    fn summary_value_reads_right_aligned_numbers() {
        let text = "Summary Statistics\n   Received Messages:        12\n\
                    Successfully Delivered Messages:  3\n";
        assert_eq!(summary_value(text, "Received Messages"), Some(12));
        assert_eq!(
            summary_value(text, "Successfully Delivered Messages"),
            Some(3)
        );
        assert_eq!(summary_value(text, "Failed Messages"), None);
    }

    #[test]
    fn listen_address_is_found_per_listener_scope() {
        let text = TestConfig::new(2525).render();
        let smtp = listen_address_after(&text, "ESMTP_Listener").unwrap();
        assert!(smtp.starts_with("127.0.0.1:"));
        assert_eq!(
            listen_address_after(&text, "Control_Listener").unwrap(),
            "ctl.sock"
        );
    }

    #[test]
    fn header_value_unfolds_and_stops_at_the_body() {
        let message = b"Subject: a\r\n b\r\nMessage-ID: <1@x>\r\n\r\nMessage-ID: <2@x>\r\n";
        assert_eq!(header_value(message, "message-id").unwrap(), "<1@x>");
        assert_eq!(header_value(message, "Subject").unwrap(), "a b");
    }

    #[test]
    fn python_sink_stores_exact_bytes_and_scripts_replies() {
        let dir = TempDir::new("sink-selftest");
        let sink = Sink::start(&dir.join("sink"), free_port());
        let message = b"Subject: t\r\n\r\n.dot first\r\n..two dots\r\nend\r\n";
        let file = dir.join("m.eml");
        fs::write(&file, message).unwrap();
        let code = send_file(sink.port(), &file, "a@x.test", &["b@y.test", "c@y.test"]);
        assert_eq!(code, "250");
        let stored = sink.wait_for_messages(1, ARRIVAL_TIMEOUT);
        assert_eq!(stored[0].bytes(), message);
        assert_eq!(stored[0].rcpts, vec!["b@y.test", "c@y.test"]);
        assert_eq!(
            send_file(sink.port(), &file, "a@x.test", &["reject1@y.test"]),
            "550"
        );
        assert_eq!(
            send_file(sink.port(), &file, "a@x.test", &["tempfail@y.test"]),
            "451"
        );
        assert_eq!(sink.messages().len(), 1);
    }

    #[test]
    fn postfix_smtp_sink_dumps_what_smtp_source_sends() {
        let dir = TempDir::new("smtp-sink-selftest");
        let sink = PostfixSink::start(&dir.join("dump"), free_port());
        let output = run(
            Command::new("/usr/sbin/smtp-source")
                .args(["-m", "5", "-s", "2", "-l", "512", "-t", "to@example.com"])
                .arg(format!("127.0.0.1:{}", sink.port())),
            ARRIVAL_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let dumps = poll_until(ARRIVAL_TIMEOUT, || {
            let dumps = sink.dumps();
            (dumps.len() >= 5).then_some(dumps)
        })
        .expect("5 dumps");
        assert_eq!(dumps.len(), 5);
    }
}
