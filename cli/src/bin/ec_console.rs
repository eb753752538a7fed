//! `ec_console [SOCKET|HOST:PORT] [COMMAND...]`: the control console.
//!
//! SOCKET is a Control_Listener Unix socket path; `127.0.0.1:2025` or
//! `[::1]:2025` a TCP console. Without SOCKET it uses the first Control_Listener of `--config FILE`, or
//! of the embedded default (var/run/ecelerity.sock under the working
//! directory). With COMMAND it runs that one command and exits. Otherwise
//! it reads commands: with line editing and history on a terminal, or one
//! per line from stdin when stdin is not a terminal.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ecelerity_cli::{control_socket, load_config_or_exit, EXIT_FAILED};
use ecelerity_engine::console::unframe_line;

#[derive(Parser)]
#[command(version, about = "ecelerity's control console")]
struct Args {
    /// Take the control socket from this ecelerity.conf.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Control socket path (default: from the configuration).
    socket: Option<PathBuf>,
    /// Run this one command and exit.
    command: Vec<String>,
}

/// How long the console waits for the daemon's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to a TCP console may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A console connection: a Unix socket or TCP.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// `host:port` (or `[v6]:port`) names a TCP console.
fn tcp_address(path: &Path) -> Option<SocketAddr> {
    path.to_str()?.parse().ok()
}

struct Console {
    path: PathBuf,
    conn: Option<(Stream, BufReader<Stream>)>,
}

impl Console {
    fn connect(path: &Path) -> std::io::Result<(Stream, BufReader<Stream>)> {
        let (stream, reader) = match tcp_address(path) {
            Some(address) => {
                let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
                stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                let reader = stream.try_clone()?;
                (Stream::Tcp(stream), Stream::Tcp(reader))
            }
            None => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                let reader = stream.try_clone()?;
                (Stream::Unix(stream), Stream::Unix(reader))
            }
        };
        Ok((stream, BufReader::new(reader)))
    }

    /// Sends one command and returns its reply. Reconnects once if the
    /// daemon closed an idle session.
    fn run(&mut self, command: &str) -> std::io::Result<String> {
        for attempt in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(Self::connect(&self.path)?);
            }
            match self.exchange(command) {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt == 0 => {
                    self.conn = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    fn exchange(&mut self, command: &str) -> std::io::Result<String> {
        let (stream, reader) = self.conn.as_mut().unwrap();
        stream.write_all(command.as_bytes())?;
        stream.write_all(b"\n")?;
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                // What it said before closing (e.g. a refusal) is the reason.
                let said = reply.trim_end();
                let why = if said.is_empty() {
                    "the daemon closed the console".to_string()
                } else {
                    format!("the daemon closed the console: {said}")
                };
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why));
            }
            match unframe_line(line.trim_end_matches('\n')) {
                None => return Ok(reply),
                Some(text) => {
                    reply.push_str(text);
                    reply.push('\n');
                }
            }
        }
    }
}

fn main() {
    let mut args = Args::parse();
    // `ec_console summary` (no socket): a first word that is neither a path
    // nor an existing file is the command.
    if let Some(first) = args.socket.clone() {
        let text = first.to_string_lossy();
        if !text.contains('/') && !first.exists() && tcp_address(&first).is_none() {
            args.command.insert(0, text.into_owned());
            args.socket = None;
        }
    }
    let path = match args.socket.clone() {
        Some(p) => p,
        None => {
            let config = load_config_or_exit(args.config.as_deref());
            match control_socket(&config) {
                Some(p) => p,
                None => {
                    eprintln!("ec_console: the configuration has no Control_Listener");
                    std::process::exit(EXIT_FAILED);
                }
            }
        }
    };
    let mut console = Console {
        path: path.clone(),
        conn: None,
    };
    match Console::connect(&path) {
        Ok(conn) => console.conn = Some(conn),
        Err(e) => {
            eprintln!(
                "ec_console: cannot connect to {}: {e} (is ecelerity running?)",
                path.display()
            );
            std::process::exit(EXIT_FAILED);
        }
    }
    if !args.command.is_empty() {
        let command = args.command.join(" ");
        std::process::exit(run_one(&mut console, &command));
    }
    if std::io::stdin().is_terminal() {
        interactive(&mut console, &path);
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if run_one(&mut console, line) == EXIT_FAILED {
                std::process::exit(EXIT_FAILED);
            }
            if is_quit(line) {
                break;
            }
        }
    }
}

fn is_quit(line: &str) -> bool {
    line.eq_ignore_ascii_case("quit") || line.eq_ignore_ascii_case("exit")
}

fn run_one(console: &mut Console, command: &str) -> i32 {
    match console.run(command) {
        Ok(reply) => {
            print!("{reply}");
            let _ = std::io::stdout().flush();
            0
        }
        Err(e) => {
            eprintln!("ec_console: {e}");
            EXIT_FAILED
        }
    }
}

fn interactive(console: &mut Console, path: &Path) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ec_console: no line editor: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ec_console_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        let prompt = format!("{} {}> ", clock(), path.display());
        match editor.readline(&prompt) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line);
                if run_one(console, line) == EXIT_FAILED || is_quit(line) {
                    break;
                }
            }
            Err(_) => break, // ^D or ^C
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
}

/// `HH:MM:SS` in local time, as Momentum's prompt shows.
fn clock() -> String {
    // SAFETY: time and localtime_r write into values we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}
