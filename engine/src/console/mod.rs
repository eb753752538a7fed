//! The control console: Momentum's `ec_console` commands served on the
//! Control_Listener unix socket(s) and TCP consoles, on threads of the
//! console's own. A TCP client the listener's `Peer` rules exclude
//! (`ControlListenerConfig::allows`) gets one `Access denied` line and is
//! closed; a Unix client must be root or the daemon's user (SO_PEERCRED).
//! The status commands (`summary`, `summary reset`, `pid`, `memory`,
//! `sysinfo`, `version`) are rendered by `status`.
//!
//! Owns: the console wire framing, the command table and the rendering of
//! each answer ([`execute`] is pure: a command line and a snapshot in, text
//! out, or a control request to ask the shards), and the console threads.
//! Counters are read from what every shard publishes (`stats`), without
//! waiting on a shard; commands about queues and the resolver (`mailq`,
//! `active`, `delayed`, `domain`, `showqueue`, `message`, `flush domain`,
//! `fail domain`, `binding summary`, `suspend`, `resume`, `reroute
//! queue`, `dns_cache`) are asked of every shard through `control`, with
//! a timeout, so a console client can never hold up mail.
//! May call: `stats`, `control`, `config`, `queue` (the `MessageId` type),
//! `clock`. Never: the spool, the queues directly.
//!
//! Framing: the client sends one command per line. The server answers with
//! the reply's lines, a line that starts with `.` sent with a second `.`
//! (as in SMTP DATA), and ends the reply with a line holding a lone `.`.

mod reload;

pub use reload::{reload, reopen_logs, RunningConfig, RECONFIGURE_FAILED};
mod status;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_unix_ms;
use crate::config::{Config, ControlListenerConfig};
use crate::control::{
    render_binding_summary, render_dns_flushed, render_dns_lookup, render_dns_stats, render_domain,
    render_domains, render_failed, render_flushed, render_mailq, render_message,
    render_message_changed, render_rerouted, render_showqueue, render_suspended, ControlHandle,
    ControlRequest, DnsCacheRequest, DnsKind, MessageAction, QueueSide, Target, CONTROL_TIMEOUT_MS,
    SHOWQUEUE_ROWS_DEFAULT, SHOWQUEUE_ROWS_MAX,
};
use crate::queue::MessageId;
use crate::stats::{Counter, EngineStats, Figures};
pub use status::Baseline;

/// Longest command line accepted; a longer one closes the connection.
pub const CONSOLE_LINE_BYTES_MAX: usize = 4096;
/// Most console connections served at once.
pub const CONSOLE_CONNECTIONS_MAX: usize = 64;
/// How long the one-line refusal to a client the `Peer` rules exclude may
/// take to write, and how long its unread input is then drained, before
/// the connection is closed anyway.
pub const CONSOLE_REFUSAL_WRITE_MS: u64 = 1_000;

/// A bound control socket.
pub struct ControlSocket {
    listener: Endpoint,
    /// Idle sessions close after this long (the Listen's `timeout`).
    idle: Duration,
    /// As written in the configuration (a path or `host:port`).
    name: String,
}

enum Endpoint {
    Unix(UnixListener),
    /// A TCP console and the `Peer` rules its clients must pass.
    Tcp(TcpListener, ControlListenerConfig),
}

/// Binds every Control_Listener socket: Unix sockets with the configured
/// mode (a stale socket file from an earlier run is replaced, a live one
/// is an error), TCP consoles on their address.
pub fn bind(config: &Config) -> std::io::Result<Vec<ControlSocket>> {
    let mut sockets = Vec::new();
    for c in config.control_listeners() {
        let name = c.path.display().to_string();
        if let Some(address) = c.tcp {
            let listener = TcpListener::bind(address).map_err(|e| {
                std::io::Error::new(e.kind(), format!("Control_Listener {address}: {e}"))
            })?;
            sockets.push(ControlSocket {
                listener: Endpoint::Tcp(listener, c.clone()),
                idle: c.timeout,
                name,
            });
            continue;
        }
        if let Some(dir) = c.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        if c.path.exists() {
            if UnixStream::connect(&c.path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running ecelerity", c.path.display()),
                ));
            }
            std::fs::remove_file(&c.path)?;
        }
        let listener = UnixListener::bind(&c.path)?;
        std::fs::set_permissions(&c.path, std::fs::Permissions::from_mode(c.file_mode))?;
        sockets.push(ControlSocket {
            listener: Endpoint::Unix(listener),
            idle: c.timeout,
            name,
        });
    }
    Ok(sockets)
}

/// What every console session reads or changes.
#[derive(Clone)]
struct Shared {
    stats: Arc<EngineStats>,
    control: ControlHandle,
    config: Arc<RunningConfig>,
    stop: Arc<AtomicBool>,
    baseline: Arc<Baseline>,
    open: Arc<AtomicUsize>,
}

/// Serves the console on threads of its own, apart from the shards: a
/// console command reads the counters every shard publishes and never
/// runs on (or waits for) a shard's event loop.
pub fn serve(
    sockets: Vec<ControlSocket>,
    stats: Arc<EngineStats>,
    control: ControlHandle,
    config: Arc<RunningConfig>,
    stop: Arc<AtomicBool>,
) {
    let shared = Shared {
        baseline: Arc::new(Baseline::new(stats.started)),
        open: Arc::new(AtomicUsize::new(0)),
        stats,
        control,
        config,
        stop,
    };
    for socket in sockets {
        let shared = shared.clone();
        let spawned =
            std::thread::Builder::new()
                .name("console".into())
                .spawn(move || match socket.listener {
                    Endpoint::Unix(listener) => {
                        for stream in listener.incoming() {
                            match stream {
                                Ok(s) if peer_is_trusted(&s) => {
                                    start_session(s, socket.idle, &shared)
                                }
                                Ok(_) => {} // dropped: closes the connection
                                Err(e) => accept_failed(&socket.name, e),
                            }
                        }
                    }
                    Endpoint::Tcp(listener, rules) => {
                        for stream in listener.incoming() {
                            match stream {
                                Ok(s) => match s.peer_addr() {
                                    Ok(peer) if rules.allows(peer.ip()) => {
                                        start_session(s, socket.idle, &shared)
                                    }
                                    Ok(peer) => refuse(s, peer.ip(), &socket.name),
                                    Err(_) => {}
                                },
                                Err(e) => accept_failed(&socket.name, e),
                            }
                        }
                    }
                });
        if let Err(e) = spawned {
            tracing::error!("cannot start the console thread: {e}");
        }
    }
}

fn accept_failed(name: &str, e: std::io::Error) {
    tracing::warn!("console accept on {name} failed: {e}");
    std::thread::sleep(Duration::from_millis(50));
}

/// Tells a client the `Peer` rules exclude that it may not use the
/// console, in one line, and closes.
fn refuse(mut stream: TcpStream, ip: std::net::IpAddr, name: &str) {
    tracing::warn!("console {name}: refused {ip} (Control_Listener Peer rules)");
    let _ = stream.set_write_timeout(Some(Duration::from_millis(CONSOLE_REFUSAL_WRITE_MS)));
    let _ = stream.write_all(
        format!("Access denied: {ip} may not use this console (Control_Listener Peer rules)\n")
            .as_bytes(),
    );
    // Close gracefully: a close with the client's command still unread
    // would reset the connection and the client might never read the line.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(CONSOLE_REFUSAL_WRITE_MS)));
    let mut sink = [0u8; 512];
    let mut left = CONSOLE_LINE_BYTES_MAX;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// A console stream of either kind.
trait ConsoleStream: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn idle_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

impl ConsoleStream for UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn idle_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl ConsoleStream for TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn idle_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// Serves `stream` on a thread of its own, if fewer than
/// [`CONSOLE_CONNECTIONS_MAX`] are open (else it is closed).
fn start_session<S: ConsoleStream>(stream: S, idle: Duration, shared: &Shared) {
    if shared.open.load(SeqCst) >= CONSOLE_CONNECTIONS_MAX {
        return;
    }
    shared.open.fetch_add(1, SeqCst);
    let open = shared.open.clone();
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("console-session".into())
        .spawn(move || {
            let _ = session(stream, idle, &shared);
            shared.open.fetch_sub(1, SeqCst);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a console session thread: {e}");
        open.fetch_sub(1, SeqCst);
    }
}

/// Only root and the daemon's own user may use the console (the socket's
/// mode says the same; this holds even if the mode is widened).
fn peer_is_trusted(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == 0 || cred.uid == me)
}

fn session<S: ConsoleStream>(
    mut stream: S,
    idle: Duration,
    shared: &Shared,
) -> std::io::Result<()> {
    let (stats, control, running, stop, baseline) = (
        &*shared.stats,
        &shared.control,
        &*shared.config,
        &*shared.stop,
        &*shared.baseline,
    );
    stream.idle_timeout(idle)?;
    let mut reader = BufReader::new(stream.duplicate()?);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(CONSOLE_LINE_BYTES_MAX as u64)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            stream.write_all(&frame("Command line too long\n"))?;
            return Ok(());
        }
        let config = running.get();
        if let Some(command) = reload::command(line.trim(), &config) {
            let reply = reload::run(command, running, control);
            stream.write_all(&frame(&reply))?;
            continue;
        }
        let now_secs = now_unix_ms() / 1000;
        if let Some(reply) = crate::api::keys::console(line.trim(), config.spoolbase(), now_secs) {
            stream.write_all(&frame(&reply))?;
            continue;
        }
        let snapshot = Snapshot::take(stats, &config, baseline);
        let (reply, action) = execute(line.trim(), &snapshot);
        let reply = match &action {
            Action::Ask(request) => ask(control, request.clone()),
            Action::ResetSummary => {
                baseline.reset(snapshot.total());
                reply
            }
            Action::Memory => {
                status::memory(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
            }
            Action::Sysinfo => status::sysinfo(&status::SysFacts::gather(snapshot.shards.len())),
            _ => reply,
        };
        stream.write_all(&frame(&reply))?;
        match action {
            Action::None
            | Action::Ask(_)
            | Action::ResetSummary
            | Action::Memory
            | Action::Sysinfo => {}
            Action::Shutdown => {
                tracing::info!("console: shutdown requested");
                stop.store(true, SeqCst);
            }
            Action::Close => return Ok(()),
        }
    }
}

/// Asks every shard and renders their answer (or why there is none).
fn ask(control: &ControlHandle, request: ControlRequest) -> String {
    match control.ask_all(request.clone(), Duration::from_millis(CONTROL_TIMEOUT_MS)) {
        Ok(parts) => render(&request, &parts, now_unix_ms()),
        Err(e) => format!("Error: {e}\n"),
    }
}

/// The text of every shard's `parts` of the answer to `request`, at
/// `now_unix_ms` (for "in N seconds").
pub fn render(
    request: &ControlRequest,
    parts: &[crate::control::ControlReply],
    now_unix_ms: u64,
) -> String {
    match request {
        ControlRequest::Mailq { limit, .. } => render_mailq(parts, *limit),
        ControlRequest::Domains { side, above } => render_domains(parts, *side, *above),
        ControlRequest::Flush { domain } => render_flushed(parts, domain.as_deref()),
        ControlRequest::Fail { domain, .. } => render_failed(parts, domain),
        ControlRequest::Domain { domain } => render_domain(parts, domain, now_unix_ms),
        ControlRequest::ShowQueue {
            domain,
            limit,
            offset,
            ..
        } => render_showqueue(parts, domain, *limit, *offset),
        ControlRequest::Message {
            id,
            action: MessageAction::Details,
        } => render_message(parts, *id, now_unix_ms),
        ControlRequest::Message { id, action } => render_message_changed(parts, *id, *action),
        ControlRequest::BindingSummary { binding } => {
            render_binding_summary(parts, binding.as_deref())
        }
        ControlRequest::Suspend { target, suspend } => render_suspended(parts, target, *suspend),
        ControlRequest::Reroute { from, to } => render_rerouted(parts, from, to),
        ControlRequest::DnsCache(DnsCacheRequest::Stats) => render_dns_stats(parts),
        ControlRequest::DnsCache(DnsCacheRequest::Lookup { name, kinds }) => {
            render_dns_lookup(parts, name, kinds)
        }
        ControlRequest::DnsCache(DnsCacheRequest::Flush) => render_dns_flushed(parts),
        // `console::reload` asks and renders these itself.
        // `console::reload` and the metrics API ask and render these themselves.
        ControlRequest::Reload(_) | ControlRequest::ReopenLogs | ControlRequest::Metrics(_) => {
            String::new()
        }
        ControlRequest::Status => crate::http::render::render_shards(parts),
        ControlRequest::Scriptlet { line } => crate::scriptlet::render_control(line, parts),
    }
}

/// Encodes a reply for the wire (see the module comment).
pub fn frame(reply: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len() + 8);
    for line in reply.lines() {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b".\n");
    out
}

/// Decodes one framed reply line; `None` marks the end of the reply.
pub fn unframe_line(line: &str) -> Option<&str> {
    if line == "." {
        None
    } else if let Some(rest) = line.strip_prefix('.') {
        Some(rest)
    } else {
        Some(line)
    }
}

/// What the server does after answering.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Shutdown,
    Close,
    /// The answer needs every shard: ask them (the reply text is theirs).
    Ask(ControlRequest),
    /// `summary reset`: the current totals become the new zero.
    ResetSummary,
    /// `memory`: the reply is read from /proc/self/status.
    Memory,
    /// `sysinfo`: the reply is read from the system.
    Sysinfo,
}

/// Everything the counter commands need, read without locks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub shards: Vec<Figures>,
    pub uptime_secs: u64,
    pub config_source: String,
    /// Totals at the last `summary reset` (zeros before one).
    pub baseline: Figures,
    /// Milliseconds since the last `summary reset` (or the start).
    pub since_reset_ms: u64,
    pub pid: u32,
}

impl Snapshot {
    pub fn take(stats: &EngineStats, config: &Config, baseline: &Baseline) -> Snapshot {
        let (baseline, since_reset_ms) = baseline.read();
        Snapshot {
            shards: stats.shards.iter().map(|s| s.figures()).collect(),
            uptime_secs: stats.started.elapsed().as_secs(),
            baseline,
            since_reset_ms,
            pid: std::process::id(),
            config_source: config
                .source()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(embedded default)".into()),
        }
    }

    pub fn total(&self) -> Figures {
        Figures::sum(&self.shards)
    }
}

const HELP: &str = "\
Commands:
  help                 this list
  version              the daemon's version
  summary              Summary Statistics, in total and per shard
  summary reset        counters (not queue sizes) start again from zero
  pid                  the daemon's process id
  memory               the daemon's memory use
  sysinfo              the host: OS, CPUs, load, memory
  shards               per shard: rates, queue sizes, accept-latency percentiles
  mailq [-d domain ...] [-b binding ...] [-l N]
                       queues with their active (AQ) and delayed (DQ) sizes
  active [N]           domains whose active queue holds more than N (default 0)
  delayed [N]          domains whose delayed queue holds more than N (default 0)
  flush domain <d|all> every delayed message of the domain is retried now
  fail domain [quiet] <d>
                       every queued message of the domain fails now (quiet: no DSN)
  domain <d>           the domain's queues per binding: sizes, connections, state, cached MXs
  showqueue [binding <b>|binding all] <d> [limit[,offset]]
                       the messages queued for the domain (default 100, every binding)
  message details <id> where a message (id as in the mainlog) is queued
  message retry <id>   the message is retried now
  message fail [quiet] <id>
                       the message's queued recipients fail now (quiet: no DSN)
  binding summary [b]  per binding: queues, messages, connections
  suspend domain <d> | suspend binding <b>
                       hold the queues: they keep their messages, open no connections
  resume domain <d> | resume binding <b>
                       release them: delivery starts again
  reroute queue <d1> <d2>
                       the messages queued for d1 go through d2's route
  dns_cache stats | dns_cache lookup <name> [MX|A|AAAA|TLSA|TXT] | dns_cache flush
                       every shard's DNS cache: counts, a cached answer, forget all
  signing_stats        DKIM signing (opendkim): messages processed, signed, failed, time spent
  config reload [path] re-read the configuration (a bad file keeps the running one)
  config show          the configuration in effect
  config eval [scope ...] <option>
                       an option's value in effect in a scope (fallback applied)
  reopen logs          reopen every log file (after logrotate renamed them)
  scriptlet counters   the Lua scripts' msys.counter values, summed over shards
                       (commands the scripts register with msys.registerControl run too)
  api_key create NAME [grant ...]
                       a REST API key (its last line; every grant when none is named)
  api_key list         the API keys: names, grants, creation times (never a key)
  api_key revoke NAME  the key stops working at once, on every shard
  shutdown             stop gracefully: stop accepting, finish open transactions, sync the spool, exit
  quit                 close this console session
";

/// Runs one console command against `snapshot`.
pub fn execute(line: &str, snapshot: &Snapshot) -> (String, Action) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => (String::new(), Action::None),
        [w] if w.eq_ignore_ascii_case("help") => (HELP.to_string(), Action::None),
        [w] if w.eq_ignore_ascii_case("version") => (status::version(), Action::None),
        [w] if w.eq_ignore_ascii_case("summary") => (summary(snapshot), Action::None),
        [w] if w.eq_ignore_ascii_case("signing_stats") => (signing_stats(snapshot), Action::None),
        [w, r] if w.eq_ignore_ascii_case("signing_stats") && r.eq_ignore_ascii_case("reset") => (
            "signing_stats reset is not supported yet: the counters only grow.\n".to_string(),
            Action::None,
        ),
        [w, r] if w.eq_ignore_ascii_case("summary") && r.eq_ignore_ascii_case("reset") => {
            ("Summary statistics reset.\n".to_string(), Action::ResetSummary)
        }
        [w] if w.eq_ignore_ascii_case("pid") => (format!("{}\n", snapshot.pid), Action::None),
        [w] if w.eq_ignore_ascii_case("memory") => (String::new(), Action::Memory),
        [w] if w.eq_ignore_ascii_case("sysinfo") => (String::new(), Action::Sysinfo),
        [w] if w.eq_ignore_ascii_case("shards") => (String::new(), Action::Ask(ControlRequest::Status)),
        [w, args @ ..] if w.eq_ignore_ascii_case("mailq") => match parse_mailq(args) {
            Ok(request) => (String::new(), Action::Ask(request)),
            Err(e) => (format!("{e}\n"), Action::None),
        },
        [w, args @ ..]
            if w.eq_ignore_ascii_case("active")
                || w.eq_ignore_ascii_case("delayed")
                || w.eq_ignore_ascii_case("flush")
                || w.eq_ignore_ascii_case("fail") =>
        {
            match parse_queue_command(w, args) {
                Ok(request) => (String::new(), Action::Ask(request)),
                Err(e) => (format!("{e}\n"), Action::None),
            }
        }
        [w, args @ ..] if is_message_command(w) => match parse_message_command(w, args) {
            Ok(request) => (String::new(), Action::Ask(request)),
            Err(e) => (format!("{e}\n"), Action::None),
        },
        [w] if w.eq_ignore_ascii_case("shutdown") => {
            ("Shutdown requested: no new connections; open transactions finish, the spool syncs, then the daemon exits.\n".to_string(), Action::Shutdown)
        }
        [w] if w.eq_ignore_ascii_case("quit") || w.eq_ignore_ascii_case("exit") => (String::new(), Action::Close),
        // Perhaps a scriptlet's command (`msys.registerControl`); the
        // shards say "Unknown command" when it is not.
        _ => (
            format!("Unknown command: {line}. Type 'help' for the list.\n"),
            Action::Ask(ControlRequest::Scriptlet { line: line.to_string() }),
        ),
    }
}

/// The first words of the commands [`parse_message_command`] reads.
const MESSAGE_COMMANDS: [&str; 8] = [
    "domain",
    "showqueue",
    "message",
    "binding",
    "suspend",
    "resume",
    "reroute",
    "dns_cache",
];

fn is_message_command(word: &str) -> bool {
    MESSAGE_COMMANDS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(word))
}

/// `domain`, `showqueue`, `message`, `binding summary`, `suspend`,
/// `resume`, `reroute queue`, `dns_cache`: a control request, or the
/// usage of the command.
fn parse_message_command(command: &str, args: &[&str]) -> Result<ControlRequest, String> {
    let command = command.to_ascii_lowercase();
    let is = |w: &&str, word: &str| w.eq_ignore_ascii_case(word);
    let lower = |w: &&str| w.to_ascii_lowercase();
    match (command.as_str(), args) {
        ("domain", [d]) => Ok(ControlRequest::Domain { domain: lower(d) }),
        ("domain", _) => Err("Usage: domain <domain>".into()),
        ("showqueue", _) => parse_showqueue(args),
        ("message", [a, id]) if is(a, "details") => message(id, MessageAction::Details),
        ("message", [a, id]) if is(a, "retry") => message(id, MessageAction::Retry),
        ("message", [a, id]) if is(a, "fail") && !is(id, "quiet") => {
            message(id, MessageAction::Fail { quiet: false })
        }
        ("message", [a, q, id]) if is(a, "fail") && is(q, "quiet") => {
            message(id, MessageAction::Fail { quiet: true })
        }
        ("message", _) => {
            Err("Usage: message details|retry <id> | message fail [quiet] <id>".into())
        }
        ("binding", [s]) if is(s, "summary") => {
            Ok(ControlRequest::BindingSummary { binding: None })
        }
        ("binding", [s, b]) if is(s, "summary") => Ok(ControlRequest::BindingSummary {
            binding: Some(b.to_string()),
        }),
        ("binding", _) => Err("Usage: binding summary [binding]".into()),
        ("suspend" | "resume", [kind, name]) if is(kind, "domain") || is(kind, "binding") => {
            let target = if is(kind, "domain") {
                Target::Domain(lower(name))
            } else {
                Target::Binding(name.to_string())
            };
            Ok(ControlRequest::Suspend {
                target,
                suspend: command == "suspend",
            })
        }
        ("suspend" | "resume", _) => Err(format!(
            "Usage: {command} domain <domain> | {command} binding <binding>"
        )),
        ("reroute", [q, from, to]) if is(q, "queue") && !from.eq_ignore_ascii_case(to) => {
            Ok(ControlRequest::Reroute {
                from: lower(from),
                to: lower(to),
            })
        }
        ("reroute", _) => {
            Err("Usage: reroute queue <from-domain> <to-domain> (two different domains)".into())
        }
        ("dns_cache", [s]) if is(s, "stats") => {
            Ok(ControlRequest::DnsCache(DnsCacheRequest::Stats))
        }
        ("dns_cache", [s]) if is(s, "flush") => {
            Ok(ControlRequest::DnsCache(DnsCacheRequest::Flush))
        }
        ("dns_cache", [s, name, kind @ ..]) if is(s, "lookup") && kind.len() <= 1 => {
            let kinds = match kind.first() {
                None => DnsKind::ALL.to_vec(),
                Some(k) => vec![DnsKind::parse(k).ok_or_else(|| {
                    format!("Usage: dns_cache lookup <name> [MX|A|AAAA|TLSA|TXT]: the cache holds no '{k}' records")
                })?],
            };
            Ok(ControlRequest::DnsCache(DnsCacheRequest::Lookup {
                name: name.trim_end_matches('.').to_ascii_lowercase(),
                kinds,
            }))
        }
        _ => Err(
            "Usage: dns_cache stats | dns_cache lookup <name> [MX|A|AAAA|TLSA|TXT] | dns_cache flush".into(),
        ),
    }
}

fn message(id: &str, action: MessageAction) -> Result<ControlRequest, String> {
    let id: MessageId = id.parse().map_err(|e| format!("{e}"))?;
    Ok(ControlRequest::Message { id, action })
}

/// `showqueue [binding <b>|binding all] <domain> [limit[,offset]]`.
fn parse_showqueue(args: &[&str]) -> Result<ControlRequest, String> {
    const USAGE: &str = "Usage: showqueue [binding <b>|binding all] <domain> [limit[,offset]]";
    let (binding, rest) = match args {
        [b, name, rest @ ..] if b.eq_ignore_ascii_case("binding") => {
            let binding = (!name.eq_ignore_ascii_case("all")).then(|| name.to_string());
            (binding, rest)
        }
        _ => (None, args),
    };
    let (domain, window) = match rest {
        [domain] => (domain, None),
        [domain, window] => (domain, Some(*window)),
        _ => return Err(USAGE.into()),
    };
    let (mut limit, mut offset) = (SHOWQUEUE_ROWS_DEFAULT, 0);
    if let Some(window) = window {
        let (l, o) = window.split_once(',').unwrap_or((window, "0"));
        limit = l
            .parse()
            .map_err(|_| format!("{USAGE}: '{window}' is not limit[,offset]"))?;
        offset = o
            .parse()
            .map_err(|_| format!("{USAGE}: '{window}' is not limit[,offset]"))?;
    }
    if limit == 0 || limit > SHOWQUEUE_ROWS_MAX {
        return Err(format!("{USAGE}: limit is 1..={SHOWQUEUE_ROWS_MAX}"));
    }
    Ok(ControlRequest::ShowQueue {
        domain: domain.to_ascii_lowercase(),
        binding,
        limit,
        offset,
    })
}

/// Rows `mailq` shows unless told otherwise.
pub const MAILQ_ROWS_DEFAULT: usize = 1000;

/// `mailq [-d domain ...] [-b binding ...] [-l N]`.
fn parse_mailq(args: &[&str]) -> Result<ControlRequest, String> {
    let (mut domains, mut bindings, mut limit) = (Vec::new(), Vec::new(), MAILQ_ROWS_DEFAULT);
    let mut list: Option<&mut Vec<String>> = None;
    let mut words = args.iter();
    while let Some(w) = words.next() {
        match *w {
            "-d" => list = Some(&mut domains),
            "-b" => list = Some(&mut bindings),
            "-l" => {
                list = None;
                limit = words.next().and_then(|n| n.parse().ok()).ok_or(
                    "Usage: mailq [-d domain ...] [-b binding ...] [-l N]: -l takes a number",
                )?;
            }
            other => match list.as_deref_mut() {
                Some(l) => l.push(other.to_string()),
                None => {
                    return Err(format!(
                        "Usage: mailq [-d domain ...] [-b binding ...] [-l N]: unexpected '{other}'"
                    ))
                }
            },
        }
    }
    Ok(ControlRequest::Mailq {
        domains,
        bindings,
        limit,
    })
}

/// `active [N]`, `delayed [N]`, `flush domain <d|all>`,
/// `fail domain [quiet] <d>`.
fn parse_queue_command(command: &str, args: &[&str]) -> Result<ControlRequest, String> {
    let command = command.to_ascii_lowercase();
    let is = |w: &&str, word: &str| w.eq_ignore_ascii_case(word);
    match (command.as_str(), args) {
        ("active" | "delayed", [] | [_]) => {
            let side = if command == "active" {
                QueueSide::Active
            } else {
                QueueSide::Delayed
            };
            let above = match args.first() {
                None => 0,
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("Usage: {command} [N]: N is a number of messages"))?,
            };
            Ok(ControlRequest::Domains { side, above })
        }
        ("flush", [d, domain]) if is(d, "domain") => Ok(ControlRequest::Flush {
            domain: (!domain.eq_ignore_ascii_case("all")).then(|| domain.to_ascii_lowercase()),
        }),
        ("fail", [d, domain]) if is(d, "domain") && !is(domain, "quiet") => {
            Ok(ControlRequest::Fail {
                domain: domain.to_ascii_lowercase(),
                quiet: false,
            })
        }
        ("fail", [d, q, domain]) if is(d, "domain") && is(q, "quiet") => Ok(ControlRequest::Fail {
            domain: domain.to_ascii_lowercase(),
            quiet: true,
        }),
        ("active" | "delayed", _) => Err(format!("Usage: {command} [N]")),
        ("flush", _) => Err("Usage: flush domain <domain|all>".to_string()),
        _ => Err("Usage: fail domain [quiet] <domain>".to_string()),
    }
}

/// Momentum's `signing_stats` (opendkim): the global figures under their
/// Momentum names, then one row per shard. Per domain and per binding
/// figures are not kept yet.
pub fn signing_stats(s: &Snapshot) -> String {
    use Counter::*;
    let mut out = String::from("DKIM Signing Statistics\n\nGlobal:\n");
    let t = s.total();
    let micros = t.get(DkimSigningMicros);
    let _ = writeln!(
        out,
        "  AccumulatedSigningTime: {}.{:06} seconds",
        micros / 1_000_000,
        micros % 1_000_000
    );
    let _ = writeln!(out, "  TotalMessagesSigned: {}", t.get(DkimMessagesSigned));
    let _ = writeln!(
        out,
        "  FailedSigningAttempts: {}",
        t.get(DkimSigningFailures)
    );
    let _ = writeln!(
        out,
        "  TotalMessagesProcessed: {}",
        t.get(DkimMessagesProcessed)
    );
    let _ = writeln!(
        out,
        "\nPer shard:\n{:>5} {:>10} {:>10} {:>10} {:>14}",
        "shard", "processed", "signed", "failed", "signing_us"
    );
    for (i, f) in s.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>5} {:>10} {:>10} {:>10} {:>14}",
            i,
            f.get(DkimMessagesProcessed),
            f.get(DkimMessagesSigned),
            f.get(DkimSigningFailures),
            f.get(DkimSigningMicros)
        );
    }
    out
}

/// Momentum's `summary` block ("Label: value", values right-aligned), then
/// one row per shard.
/// Momentum's `summary` block (counters since the last `summary reset`),
/// then one row per shard (since start).
pub fn summary(s: &Snapshot) -> String {
    let t = status::since_reset(&s.total(), &s.baseline);
    let mut out = status::summary_block(&t, s.since_reset_ms, s.uptime_secs);
    use Counter::*;
    let _ = writeln!(
        out,
        "\nPer shard:\n{:>5} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>14} {:>8}",
        "shard",
        "in",
        "out",
        "received",
        "delivered",
        "failed",
        "active",
        "delayed",
        "bytes",
        "segments"
    );
    for (i, f) in s.shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>14} {:>8}",
            i,
            f.get(InboundConnections),
            f.get(OutboundConnections),
            f.get(MessagesReceived),
            f.get(Delivered),
            f.get(Failed),
            f.get(ActiveQueue),
            f.get(DelayedQueue),
            f.get(BytesReceived),
            f.get(SpoolSegments)
        );
    }
    let _ = writeln!(out, "\nConfiguration: {}", s.config_source);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut a = Figures::default();
        a.set(Counter::MessagesReceived, 3);
        a.set(Counter::Delivered, 2);
        let mut b = Figures::default();
        b.set(Counter::MessagesReceived, 4);
        b.set(Counter::Delivered, 5);
        b.set(Counter::ActiveQueue, 1);
        Snapshot {
            shards: vec![a, b],
            uptime_secs: 7,
            config_source: "x.conf".into(),
            baseline: Figures::default(),
            since_reset_ms: 7000,
            pid: 4242,
        }
    }

    #[test]
    fn signing_stats_totals_the_shards_under_momentum_names() {
        let mut snapshot = snapshot();
        snapshot.shards[0].set(Counter::DkimMessagesProcessed, 3);
        snapshot.shards[0].set(Counter::DkimMessagesSigned, 2);
        snapshot.shards[0].set(Counter::DkimSigningFailures, 1);
        snapshot.shards[0].set(Counter::DkimSigningMicros, 1_500_000);
        snapshot.shards[1].set(Counter::DkimMessagesProcessed, 4);
        snapshot.shards[1].set(Counter::DkimMessagesSigned, 4);
        snapshot.shards[1].set(Counter::DkimSigningMicros, 2_250);
        let (text, action) = execute("signing_stats", &snapshot);
        assert_eq!(action, Action::None);
        assert!(
            text.contains("  AccumulatedSigningTime: 1.502250 seconds\n"),
            "{text}"
        );
        assert!(text.contains("  TotalMessagesSigned: 6\n"), "{text}");
        assert!(text.contains("  FailedSigningAttempts: 1\n"), "{text}");
        assert!(text.contains("  TotalMessagesProcessed: 7\n"), "{text}");
        assert!(
            text.contains("    1          4          4          0           2250\n"),
            "{text}"
        );
        let (text, _) = execute("signing_stats reset", &snapshot);
        assert!(text.contains("not supported yet"), "{text}");
    }

    #[test]
    fn summary_totals_every_shard_in_momentum_labels() {
        let (text, action) = execute("summary", &snapshot());
        assert_eq!(action, Action::None);
        let line = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap()
                .to_string()
        };
        assert!(line("Received Messages:").ends_with(" 7"));
        assert!(line("Successfully Delivered Messages:").ends_with(" 7"));
        assert!(line("Total Queue Size:").ends_with(" 1"));
        assert!(line("Uptime:").ends_with("7 seconds"));
    }

    #[test]
    fn summary_reset_pid_memory_sysinfo_and_version() {
        let mut s = snapshot();
        assert_eq!(execute("summary reset", &s).1, Action::ResetSummary);
        assert_eq!(execute("pid", &s).0, "4242\n");
        assert_eq!(execute("memory", &s).1, Action::Memory);
        assert_eq!(execute("SYSINFO", &s).1, Action::Sysinfo);
        assert!(execute("version", &s).0.starts_with("ecelerity "));
        s.baseline = s.total();
        s.since_reset_ms = 2000;
        let text = execute("summary", &s).0;
        let line = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap()
                .to_string()
        };
        assert!(line("Received Messages:").ends_with(" 0"), "{text}");
        assert!(line("Total Queue Size:").ends_with(" 1"), "a gauge stays");
        assert!(line("Statistics Last Reset:").ends_with(" 2 seconds"));
    }

    #[test]
    fn unknown_command_is_an_error_and_keeps_the_session() {
        let (text, action) = execute("frobnicate now", &snapshot());
        assert!(text.starts_with("Unknown command: frobnicate now"));
        // The scripts are asked whether it is theirs.
        assert_eq!(
            action,
            Action::Ask(ControlRequest::Scriptlet {
                line: "frobnicate now".into()
            })
        );
        assert_eq!(execute("SHUTDOWN", &snapshot()).1, Action::Shutdown);
    }

    #[test]
    fn mailq_asks_the_shards_with_its_filters() {
        let (text, action) = execute("mailq -d a.example b.example -l 5", &snapshot());
        assert!(text.is_empty());
        assert_eq!(
            action,
            Action::Ask(ControlRequest::Mailq {
                domains: vec!["a.example".into(), "b.example".into()],
                bindings: vec![],
                limit: 5
            })
        );
        let (text, action) = execute("mailq -l many", &snapshot());
        assert!(text.starts_with("Usage: mailq"));
        assert_eq!(action, Action::None);
    }

    #[test]
    fn queue_commands_parse_into_control_requests() {
        let ask = |line: &str| execute(line, &snapshot()).1;
        let usage = |line: &str| {
            let (text, action) = execute(line, &snapshot());
            assert_eq!(action, Action::None, "{line}");
            text
        };
        assert_eq!(
            ask("active"),
            Action::Ask(ControlRequest::Domains {
                side: QueueSide::Active,
                above: 0
            })
        );
        assert_eq!(
            ask("DELAYED 10"),
            Action::Ask(ControlRequest::Domains {
                side: QueueSide::Delayed,
                above: 10
            })
        );
        assert!(usage("delayed lots").starts_with("Usage: delayed [N]"));
        assert!(usage("active 1 2").starts_with("Usage: active [N]"));
        assert_eq!(
            ask("flush domain Example.COM"),
            Action::Ask(ControlRequest::Flush {
                domain: Some("example.com".into())
            })
        );
        assert_eq!(
            ask("flush domain all"),
            Action::Ask(ControlRequest::Flush { domain: None })
        );
        assert!(usage("flush example.com").starts_with("Usage: flush domain"));
        assert_eq!(
            ask("fail domain example.com"),
            Action::Ask(ControlRequest::Fail {
                domain: "example.com".into(),
                quiet: false
            })
        );
        assert_eq!(
            ask("fail domain quiet example.com"),
            Action::Ask(ControlRequest::Fail {
                domain: "example.com".into(),
                quiet: true
            })
        );
        assert!(usage("fail domain").starts_with("Usage: fail domain"));
        assert!(usage("fail domain quiet").starts_with("Usage: fail domain"));
        assert!(usage("fail example.com").starts_with("Usage: fail domain"));
    }

    #[test]
    fn message_and_queue_commands_parse_into_control_requests() {
        let ask = |line: &str| match execute(line, &snapshot()) {
            (text, Action::Ask(request)) => {
                assert!(text.is_empty());
                request
            }
            (text, action) => panic!("{line}: {action:?} {text}"),
        };
        let usage = |line: &str| {
            let (text, action) = execute(line, &snapshot());
            assert_eq!(action, Action::None, "{line}");
            assert!(
                text.starts_with("Usage: ") || text.contains("not a message id"),
                "{line}: {text}"
            );
            text
        };
        assert_eq!(
            ask("domain Example.COM"),
            ControlRequest::Domain {
                domain: "example.com".into()
            }
        );
        usage("domain");
        usage("domain a b");
        assert_eq!(
            ask("showqueue example.com"),
            ControlRequest::ShowQueue {
                domain: "example.com".into(),
                binding: None,
                limit: SHOWQUEUE_ROWS_DEFAULT,
                offset: 0
            }
        );
        assert_eq!(
            ask("showqueue binding mkt example.com 10,20"),
            ControlRequest::ShowQueue {
                domain: "example.com".into(),
                binding: Some("mkt".into()),
                limit: 10,
                offset: 20
            }
        );
        assert_eq!(
            ask("showqueue binding all example.com 5"),
            ControlRequest::ShowQueue {
                domain: "example.com".into(),
                binding: None,
                limit: 5,
                offset: 0
            }
        );
        usage("showqueue");
        usage("showqueue example.com ten");
        usage("showqueue example.com 0");
        let id = MessageId::new(1, 42);
        assert_eq!(
            ask(&format!("message details {id}")),
            ControlRequest::Message {
                id,
                action: MessageAction::Details
            }
        );
        assert_eq!(
            ask(&format!("MESSAGE retry {id}")),
            ControlRequest::Message {
                id,
                action: MessageAction::Retry
            }
        );
        assert_eq!(
            ask(&format!("message fail quiet {id}")),
            ControlRequest::Message {
                id,
                action: MessageAction::Fail { quiet: true }
            }
        );
        assert_eq!(
            ask(&format!("message fail {id}")),
            ControlRequest::Message {
                id,
                action: MessageAction::Fail { quiet: false }
            }
        );
        assert!(usage("message details 42").contains("not a message id"));
        usage("message fail quiet");
        usage("message bounce 01/00-00000-00000001");
        assert_eq!(
            ask("binding summary"),
            ControlRequest::BindingSummary { binding: None }
        );
        assert_eq!(
            ask("binding summary mkt"),
            ControlRequest::BindingSummary {
                binding: Some("mkt".into())
            }
        );
        usage("binding");
        assert_eq!(
            ask("suspend domain A.example"),
            ControlRequest::Suspend {
                target: Target::Domain("a.example".into()),
                suspend: true
            }
        );
        assert_eq!(
            ask("resume binding mkt"),
            ControlRequest::Suspend {
                target: Target::Binding("mkt".into()),
                suspend: false
            }
        );
        usage("suspend a.example");
        usage("resume queue a.example");
        assert_eq!(
            ask("reroute queue a.example B.example"),
            ControlRequest::Reroute {
                from: "a.example".into(),
                to: "b.example".into()
            }
        );
        usage("reroute queue a.example a.example");
        usage("reroute a.example b.example");
        assert_eq!(
            ask("dns_cache stats"),
            ControlRequest::DnsCache(DnsCacheRequest::Stats)
        );
        assert_eq!(
            ask("dns_cache flush"),
            ControlRequest::DnsCache(DnsCacheRequest::Flush)
        );
        assert_eq!(
            ask("dns_cache lookup One.Test. mx"),
            ControlRequest::DnsCache(DnsCacheRequest::Lookup {
                name: "one.test".into(),
                kinds: vec![DnsKind::Mx]
            })
        );
        assert_eq!(
            ask("dns_cache lookup one.test"),
            ControlRequest::DnsCache(DnsCacheRequest::Lookup {
                name: "one.test".into(),
                kinds: DnsKind::ALL.to_vec()
            })
        );
        assert_eq!(
            ask("dns_cache lookup _25._tcp.mx.one.test tlsa"),
            ControlRequest::DnsCache(DnsCacheRequest::Lookup {
                name: "_25._tcp.mx.one.test".into(),
                kinds: vec![DnsKind::Tlsa]
            })
        );
        usage("dns_cache lookup one.test SRV");
        usage("dns_cache");
        usage("dns_cache refcnts");
    }

    #[test]
    fn framing_round_trips_dot_lines() {
        let framed = String::from_utf8(frame("a\n.b\n")).unwrap();
        assert_eq!(framed, "a\n..b\n.\n");
        let lines: Vec<Option<&str>> = framed.lines().map(unframe_line).collect();
        assert_eq!(lines, vec![Some("a"), Some(".b"), None]);
    }
}
