//! The MTAs under test, each started on loopback in its own directory and
//! torn down afterwards: ecelerity (this project's daemon), Postfix (a
//! second instance with its own config and queue directories), Haraka (npm,
//! when it installs) and KumoMTA (a kumod relay script, when given).
//! Owns: the peers' config files, child processes, readiness waits.
//! May call: std::process, /usr/sbin/postfix, npm, the kumod relay script, procstat.
//! Never: the system's own Postfix instance or its files.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procstat;

/// How long a peer may take from start to answering 220.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a peer may take to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval while waiting for a peer.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerKind {
    Ecelerity,
    Postfix,
    Haraka,
    Kumo,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Ecelerity => "ecelerity",
            PeerKind::Postfix => "postfix",
            PeerKind::Haraka => "haraka",
            PeerKind::Kumo => "kumomta",
        }
    }

    pub fn parse(text: &str) -> Result<PeerKind> {
        Ok(match text {
            "ecelerity" => PeerKind::Ecelerity,
            "postfix" => PeerKind::Postfix,
            "haraka" => PeerKind::Haraka,
            "kumo" | "kumomta" | "kumod" => PeerKind::Kumo,
            other => bail!("unknown peer `{other}` (ecelerity, postfix, haraka, kumomta)"),
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
}

impl Default for EcelerityOptions {
    fn default() -> Self {
        EcelerityOptions {
            shards: 0,
            delivery_shards: 1,
            max_outbound_connections: 64,
            retry_interval_s: 1,
            connect_timeout_s: 30,
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
    child: Option<Child>,
    postfix_config_dir: Option<PathBuf>,
}

impl RunningPeer {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn cpu(&self) -> Duration {
        procstat::tree_cpu(self.root_pid)
    }

    pub fn rss(&self) -> u64 {
        procstat::tree_rss(self.root_pid)
    }

    /// Stop: SIGTERM (or `postfix stop`), wait, SIGKILL after STOP_TIMEOUT.
    /// Returns how long the stop took and whether it was graceful.
    pub fn stop(&mut self) -> (Duration, bool) {
        let started = Instant::now();
        if let Some(config_dir) = self.postfix_config_dir.take() {
            let _ = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&config_dir)
                .arg("stop")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Path::new(&format!("/proc/{}", self.root_pid)).exists()
                && Instant::now() < deadline
            {
                thread::sleep(POLL_INTERVAL);
            }
            let graceful = !Path::new(&format!("/proc/{}", self.root_pid)).exists();
            if !graceful {
                let _ = Command::new("/usr/sbin/postfix")
                    .arg("-c")
                    .arg(&config_dir)
                    .arg("abort")
                    .status();
            }
            return (started.elapsed(), graceful);
        }
        let Some(mut child) = self.child.take() else {
            return (Duration::ZERO, true);
        };
        // Each peer runs in its own process group (process_group(0) at
        // spawn), so wrappers such as Haraka's launcher take their children along.
        let group = -(child.id() as i32);
        // SAFETY: kill(2) on the process group we created for our child.
        unsafe {
            libc::kill(group, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                // Reap stragglers of the group (e.g. Haraka's worker).
                // SAFETY: as above.
                unsafe {
                    libc::kill(group, libc::SIGKILL);
                }
                return (started.elapsed(), true);
            }
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(group, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return (started.elapsed(), false);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// True once 127.0.0.1:port answers with a 220 greeting.
pub fn banner_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match crate::client::Conn::open(addr, Duration::from_secs(5)) {
        Ok(Ok(conn)) => {
            conn.quit();
            true
        }
        _ => false,
    }
}

/// Poll until the peer greets; fail early if its child exited.
fn wait_ready(port: u16, child: Option<&mut Child>, what: &str, log: &Path) -> Result<Duration> {
    let started = Instant::now();
    let mut child = child;
    loop {
        // A bare connect first: cheap, and avoids half-open sessions.
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && banner_ok(port) {
            return Ok(started.elapsed());
        }
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                bail!(
                    "{what} exited ({status}) before accepting; see {}:\n{}",
                    log.display(),
                    tail(log)
                );
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{what} did not greet on port {port} within {READY_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    text.get(start..).unwrap_or("").to_string()
}

/// Render ecelerity's config for a relay to `gateway_port`.
pub fn ecelerity_config(port: u16, gateway_port: u16, o: &EcelerityOptions) -> String {
    format!(
        "# ecbench: ecelerity as a durable relay to a sink on loopback\n\
         spoolbase = \"spool\"\n\
         pidfile = \"ecelerity.pid\"\n\
         hostname = \"ecelerity.bench\"\n\
         shards = {shards}\n\
         relay_hosts = ( \"127.0.0.0/8\" )\n\
         gateway = \"127.0.0.1:{gateway_port}\"\n\
         max_outbound_connections = {conns}\n\
         delivery_shards = {delivery_shards}\n\
         retry_interval = {retry}\n\
         connect_timeout = {connect}\n\
         ESMTP_Listener {{ Listen \"127.0.0.1:{port}\" {{ }} }}\n\
         Control_Listener {{ Listen \"ctl.sock\" {{ File_Mode = 0600 }} }}\n\
         ec_logger \"ec_logger\" {{\n  mainlog = \"log/mainlog.ec\"\n  rejectlog = \"log/rejectlog.ec\"\n  paniclog = \"log/paniclog.ec\"\n}}\n",
        shards = o.shards,
        delivery_shards = o.delivery_shards,
        conns = o.max_outbound_connections,
        retry = o.retry_interval_s,
        connect = o.connect_timeout_s,
    )
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
    let log = dir.join("stderr.log");
    let started = Instant::now();
    let mut child = Command::new(&paths.ecelerity_bin)
        .arg("--config")
        .arg(&config)
        .arg("--log-level")
        .arg("warn")
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("spawn {}", paths.ecelerity_bin.display()))?;
    wait_ready(port, Some(&mut child), "ecelerity", &log)?;
    let ready = started.elapsed();
    let shards = if o.shards == 0 {
        "one per CPU".to_string()
    } else {
        o.shards.to_string()
    };
    Ok((
        RunningPeer {
            kind: PeerKind::Ecelerity,
            port,
            root_pid: child.id(),
            durability: format!("spool fdatasync (group commit) before 250; shards: {shards}"),
            child: Some(child),
            postfix_config_dir: None,
        },
        ready,
    ))
}

/// Start a private Postfix instance as a relay to `sink_port`.
pub fn start_postfix(dir: &Path, port: u16, sink_port: u16) -> Result<RunningPeer> {
    if !Path::new("/usr/sbin/postfix").exists() {
        bail!("postfix is not installed (tests/install-deps installs it)");
    }
    let config_dir = dir.join("etc");
    let queue_dir = dir.join("queue");
    let data_dir = dir.join("data");
    for d in [&config_dir, &queue_dir, &data_dir] {
        fs::create_dir_all(d)?;
    }
    let main_cf = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         myhostname = postfix.bench\n\
         mydestination =\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         relayhost = [127.0.0.1]:{sink_port}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         in_flow_delay = 0\n\
         default_process_limit = 300\n\
         default_destination_concurrency_limit = 100\n\
         smtp_connection_cache_on_demand = yes\n\
         smtpd_client_connection_count_limit = 0\n\
         smtpd_client_connection_rate_limit = 0\n\
         smtp_tls_security_level = none\n\
         smtpd_tls_security_level = none\n\
         biff = no\n\
         maillog_file_prefixes = {dir}\n\
         maillog_file = {dir}/maillog\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n",
        queue = queue_dir.display(),
        data = data_dir.display(),
        dir = dir.display(),
    );
    fs::write(config_dir.join("main.cf"), main_cf)?;
    let master_cf = format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         local     unix  -       n       n       -       -       local\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n"
    );
    fs::write(config_dir.join("master.cf"), master_cf)?;
    let _ = Command::new("chown")
        .arg("-R")
        .arg("postfix")
        .arg(&data_dir)
        .status();
    let log = dir.join("start.log");
    let status = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(&config_dir)
        .arg("start")
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .status()?;
    if !status.success() {
        bail!(
            "postfix start failed ({status}):\n{}\n{}",
            tail(&log),
            tail(&dir.join("maillog"))
        );
    }
    let pid_file = queue_dir.join("pid/master.pid");
    let deadline = Instant::now() + READY_TIMEOUT;
    let root_pid = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            break pid;
        }
        if Instant::now() > deadline {
            bail!("postfix wrote no {}", pid_file.display());
        }
        thread::sleep(POLL_INTERVAL);
    };
    let peer = RunningPeer {
        kind: PeerKind::Postfix,
        port,
        root_pid,
        durability: "queue file fsync before 250 (Postfix default)".into(),
        child: None,
        postfix_config_dir: Some(config_dir),
    };
    wait_ready(port, None, "postfix", &dir.join("maillog"))?;
    Ok(peer)
}

/// Start kumod through its relay script, fdatasync before each 250.
pub fn start_kumo(script: &Path, dir: &Path, port: u16, sink_port: u16) -> Result<RunningPeer> {
    let spool = dir.join("spool");
    fs::create_dir_all(&spool)?;
    let log = dir.join("kumod.log");
    let mut child = Command::new(script)
        .arg(&spool)
        .arg(port.to_string())
        .arg(sink_port.to_string())
        .arg("true")
        .env("KUMO_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("KUMO_CONN_LIMIT", "64")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .spawn()
        .with_context(|| format!("spawn {}", script.display()))?;
    wait_ready(port, Some(&mut child), "kumod", &log)?;
    Ok(RunningPeer {
        kind: PeerKind::Kumo,
        port,
        root_pid: child.id(),
        durability: "RocksDB spool, flush=true + force_sync: WAL synced before 250".into(),
        child: Some(child),
        postfix_config_dir: None,
    })
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
    let log = dir.join("haraka.log");
    let mut child = Command::new("node")
        .arg(&bin)
        .arg("-c")
        .arg(dir)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .spawn()
        .context("spawn haraka")?;
    wait_ready(port, Some(&mut child), "haraka", &log)?;
    Ok(RunningPeer {
        kind: PeerKind::Haraka,
        port,
        root_pid: child.id(),
        durability: "outbound queue file written before 250 (no fsync)".into(),
        child: Some(child),
        postfix_config_dir: None,
    })
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
    }
}
