//! `ec_sendmail [-t] [-i|-oi] [-f sender] [-F fullname] [-C conf] [rcpt...]`:
//! sendmail-compatible local submission. Reads the message on stdin and
//! hands it to the local daemon over SMTP, to the first enabled ESMTP
//! listener of `-C FILE` (default: the embedded default configuration,
//! 127.0.0.1:2525); `$EC_SENDMAIL_SMTP` (`host:port`) overrides both.
//! Exits as sendmail does (sysexits.h): 0 when the daemon accepted the
//! message, 64 bad usage, 65 message refused, 67 recipient refused, 69
//! daemon refused, 75 daemon down or busy (try again later), 76 protocol
//! error, 78 bad configuration.
//!
//! Blocking std I/O: one short session per invocation. The message logic
//! (lone dot, `-t`, Bcc, dot-stuffing) is in `ecelerity_cli::sendmail`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ecelerity_cli::sendmail::{
    dot_stuff, parse_args, prepare, reply_code, Step, EX_CONFIG, EX_DATAERR, EX_IOERR, EX_OK,
    EX_PROTOCOL, EX_TEMPFAIL, EX_USAGE, MESSAGE_BYTES_MAX,
};
use ecelerity_engine::config::Config;

/// Environment variable naming the daemon's SMTP address (`host:port`).
const ADDRESS_ENV: &str = "EC_SENDMAIL_SMTP";
/// How long connecting to the daemon may take.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long each reply may take (the end of DATA waits for fdatasync).
const REPLY_TIMEOUT_MS: u64 = 120_000;
/// Longest SMTP reply line read.
const REPLY_LINE_BYTES_MAX: u64 = 4096;

const USAGE: &str =
    "usage: ec_sendmail [-t] [-i|-oi] [-f sender] [-F fullname] [-C ecelerity.conf] [recipient ...]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let options = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ec_sendmail: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    let (address, hostname) = match daemon_address(options.config.as_deref()) {
        Ok(a) => a,
        Err((code, e)) => {
            eprintln!("ec_sendmail: {e}");
            return code;
        }
    };
    let mut input = Vec::new();
    match std::io::stdin()
        .lock()
        .take(MESSAGE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut input)
    {
        Ok(n) if n > MESSAGE_BYTES_MAX => {
            eprintln!("ec_sendmail: message larger than {MESSAGE_BYTES_MAX} bytes");
            return EX_DATAERR;
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("ec_sendmail: reading the message: {e}");
            return EX_IOERR;
        }
    }
    let sender = options
        .sender
        .clone()
        .unwrap_or_else(|| format!("{}@{hostname}", login_name()));
    let prepared = match prepare(&input, &options, &sender) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ec_sendmail: {e}");
            return EX_USAGE;
        }
    };
    match submit(address, &sender, &prepared.recipients, &prepared.message) {
        Ok(()) => EX_OK,
        Err((code, e)) => {
            eprintln!("ec_sendmail: {e}");
            code
        }
    }
}

/// Where the daemon listens (from the environment or the configuration)
/// and the host name for a default sender.
fn daemon_address(config: Option<&str>) -> Result<(SocketAddr, String), (i32, String)> {
    let config = match config {
        None => Config::embedded_default(),
        Some(path) => {
            Config::load(std::path::Path::new(path)).map_err(|e| (EX_CONFIG, e.to_string()))?
        }
    };
    let hostname = config.hostname().to_string();
    if let Ok(text) = std::env::var(ADDRESS_ENV) {
        let address = text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or((EX_USAGE, format!("{ADDRESS_ENV}={text:?} is not host:port")))?;
        return Ok((address, hostname));
    }
    let listener = config.esmtp_listeners().iter().find(|l| l.enabled).ok_or((
        EX_CONFIG,
        "the configuration has no enabled ESMTP_Listener".to_string(),
    ))?;
    let mut address = listener.address;
    // A wildcard listener is reached on loopback.
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok((address, hostname))
}

fn login_name() -> String {
    // SAFETY: getpwuid returns static storage or null; we copy the name out
    // before any other call.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

type Failure = (i32, String);

struct Session {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Session {
    /// One reply: its code, and its text (every line).
    fn reply(&mut self, step: Step) -> Result<(u16, String), Failure> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = (&mut self.reader)
                .take(REPLY_LINE_BYTES_MAX)
                .read_line(&mut line)
                .map_err(|e| (EX_TEMPFAIL, format!("reading the reply to {step:?}: {e}")))?;
            if n == 0 {
                return Err((
                    EX_TEMPFAIL,
                    format!("the daemon closed the connection at {step:?}"),
                ));
            }
            let line = line.trim_end();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code.filter(|c| (200..600).contains(c)) else {
                return Err((
                    EX_PROTOCOL,
                    format!("not an SMTP reply at {step:?}: {line:?}"),
                ));
            };
            text.push_str(line);
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text));
            }
        }
    }

    /// Sends `command` (or nothing) and checks the reply is 2xx/3xx.
    fn step(&mut self, step: Step, command: Option<&[u8]>) -> Result<(), Failure> {
        if let Some(c) = command {
            self.writer
                .write_all(c)
                .map_err(|e| (EX_TEMPFAIL, format!("sending {step:?}: {e}")))?;
        }
        let (code, text) = self.reply(step)?;
        match reply_code(step, code) {
            EX_OK => Ok(()),
            exit => Err((exit, format!("{step:?} refused: {}", text.trim_end()))),
        }
    }
}

/// One SMTP transaction: EHLO, MAIL, every RCPT, DATA. Every recipient
/// must be accepted (else nothing is sent and the refusal is reported).
fn submit(
    address: SocketAddr,
    sender: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<(), Failure> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| {
            (
                EX_TEMPFAIL,
                format!("cannot reach the daemon at {address}: {e}"),
            )
        })?;
    let timeout = Some(Duration::from_millis(REPLY_TIMEOUT_MS));
    stream
        .set_read_timeout(timeout)
        .and_then(|_| stream.set_write_timeout(timeout))
        .map_err(|e| (EX_TEMPFAIL, e.to_string()))?;
    let reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| (EX_TEMPFAIL, e.to_string()))?,
    );
    let mut s = Session {
        writer: stream,
        reader,
    };
    s.step(Step::Greeting, None)?;
    s.step(Step::Ehlo, Some(b"EHLO localhost\r\n"))?;
    s.step(
        Step::MailFrom,
        Some(format!("MAIL FROM:<{sender}>\r\n").as_bytes()),
    )?;
    for rcpt in rcpts {
        s.step(
            Step::RcptTo,
            Some(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()),
        )?;
    }
    s.step(Step::Data, Some(b"DATA\r\n"))?;
    let mut data = dot_stuff(message);
    data.extend_from_slice(b".\r\n");
    s.step(Step::EndOfData, Some(&data))?;
    let _ = s.writer.write_all(b"QUIT\r\n");
    Ok(())
}
