//! `ec_console [SOCKET] [COMMAND...]`: the control console.
//!
//! Without SOCKET it uses the first Control_Listener of `--config FILE`, or
//! of the embedded default (var/run/ecelerity.sock under the working
//! directory). With COMMAND it runs that one command and exits. Otherwise
//! it reads commands: with line editing and history on a terminal, or one
//! per line from stdin when stdin is not a terminal.

use std::io::{BufRead, BufReader, IsTerminal, Write};
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

struct Console {
    path: PathBuf,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
}

impl Console {
    fn connect(path: &Path) -> std::io::Result<(UnixStream, BufReader<UnixStream>)> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok((stream, reader))
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
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the console",
                ));
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
        if !text.contains('/') && !first.exists() {
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
