//! The floor: the least work a durable relay can do per message on this
//! machine, to measure every client shape against (issue 9, item 6). It
//! speaks just enough SMTP to take a message, appends it to one file with
//! a group commit (pwrite + fdatasync, shared by every message that
//! arrived while the previous sync ran), answers 250 only after the sync,
//! then relays the message over a connection to the gateway that its
//! thread keeps open. Blocking threads, one connection each, no queue, no
//! logs, no policy, no retries: whatever ecelerity spends above this on
//! the same client shape is the price of being an MTA; what this spends is
//! the kernel's price for the sockets and the disk.
//!
//! Owns: the floor's listener, its worker threads, its spool file and
//! their group commit.
//! May call: std::net, std::fs, libc (pwrite, fdatasync through std).
//! Never: anything of the engine; it is not an MTA (a failed relay drops
//! the message, which `--check` then reports).
//!
//! `ecbench floor-relay --listen ADDR --gateway ADDR --dir DIR`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use anyhow::{Context, Result};

/// Bytes of the spool file, zero-filled at start and written round: every
/// sync then overwrites allocated blocks (no metadata), as ecelerity's
/// zeros ahead make its own syncs.
const FLOOR_SPOOL_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes written per call while zero-filling the spool file.
const ZERO_FILL_STEP_BYTES: usize = 1024 * 1024;
/// Worker threads: each serves one client connection at a time (the
/// shapes use at most 50 at once).
pub const FLOOR_THREADS: usize = 64;
/// Longest command or data line taken; longer input ends the session.
const LINE_MAX_BYTES: usize = 64 * 1024;
/// Largest message taken (the shapes send 1 KiB).
const MESSAGE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Recipients per message.
const RECIPIENTS_MAX: usize = 1000;

/// Run the floor relay until killed.
pub fn run(listen: SocketAddr, gateway: SocketAddr, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let spool = Arc::new(GroupCommit::create(&dir.join("floor.spool"))?);
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let mut workers = Vec::with_capacity(FLOOR_THREADS);
    for _ in 0..FLOOR_THREADS {
        let listener = listener.try_clone()?;
        let spool = Arc::clone(&spool);
        workers.push(thread::spawn(move || worker(listener, spool, gateway)));
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Accept a connection, serve it to its end, repeat.
fn worker(listener: TcpListener, spool: Arc<GroupCommit>, gateway: SocketAddr) {
    let mut relay = Relay::new(gateway);
    let mut envelope = Envelope::default();
    loop {
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A session that fails (peer gone, bad input) just ends.
        let _ = serve(stream, &spool, &mut relay, &mut envelope);
    }
}

/// One message's envelope and body, reused from message to message.
#[derive(Default)]
struct Envelope {
    sender: Vec<u8>,
    recipients: Vec<Vec<u8>>,
    /// The body as it came, dot-stuffed, with the final ".\r\n".
    data: Vec<u8>,
    /// The spool record: envelope lines, then `data`.
    record: Vec<u8>,
}

/// What one command line asks for (protocol only, no I/O).
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Ehlo,
    Helo,
    Mail(&'a [u8]),
    Rcpt(&'a [u8]),
    Data,
    Rset,
    Noop,
    Quit,
    Unknown,
}

fn parse_command(line: &[u8]) -> Command<'_> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
    let rest = line.get(4..).unwrap_or_default();
    let arg = |prefix: &[u8]| {
        let r = rest.strip_prefix(b" ").unwrap_or(rest);
        if r.len() >= prefix.len() && r[..prefix.len()].eq_ignore_ascii_case(prefix) {
            &r[prefix.len()..]
        } else {
            r
        }
    };
    match verb.as_slice() {
        b"EHLO" => Command::Ehlo,
        b"HELO" => Command::Helo,
        b"MAIL" => Command::Mail(arg(b"FROM:")),
        b"RCPT" => Command::Rcpt(arg(b"TO:")),
        b"DATA" => Command::Data,
        b"RSET" => Command::Rset,
        b"NOOP" => Command::Noop,
        b"QUIT" => Command::Quit,
        _ => Command::Unknown,
    }
}

/// Serve one client connection. Replies are held until the input buffer
/// has no more commands (PIPELINING), then written in one go.
fn serve(
    stream: TcpStream,
    spool: &GroupCommit,
    relay: &mut Relay,
    env: &mut Envelope,
) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut replies: Vec<u8> = Vec::with_capacity(1024);
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    out.write_all(b"220 floor.bench ESMTP\r\n")?;
    env.recipients.clear();
    loop {
        line.clear();
        if read_line(&mut input, &mut line)? == 0 {
            return Ok(());
        }
        match parse_command(&line) {
            Command::Ehlo => {
                replies.extend_from_slice(b"250-floor.bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            }
            Command::Helo => replies.extend_from_slice(b"250 floor.bench\r\n"),
            Command::Mail(from) => {
                env.sender.clear();
                env.sender.extend_from_slice(from);
                env.recipients.clear();
                replies.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            Command::Rcpt(to) if env.recipients.len() < RECIPIENTS_MAX => {
                env.recipients.push(to.to_vec());
                replies.extend_from_slice(b"250 2.1.5 Ok\r\n");
            }
            Command::Rcpt(_) => replies.extend_from_slice(b"452 4.5.3 Too many recipients\r\n"),
            Command::Data if env.recipients.is_empty() => {
                replies.extend_from_slice(b"503 5.5.1 No valid recipients\r\n")
            }
            Command::Data => {
                replies.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                out.write_all(&replies)?;
                replies.clear();
                read_data(&mut input, &mut line, &mut env.data)?;
                env.fill_record();
                spool.append(&env.record)?;
                out.write_all(b"250 2.0.0 Ok: queued\r\n")?;
                // Relayed after the 250, before the next command is read:
                // the client's next message overlaps nothing, which only
                // makes this floor cheaper.
                let _ = relay.send(env);
                env.recipients.clear();
                continue;
            }
            Command::Rset => {
                env.recipients.clear();
                replies.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            Command::Noop => replies.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            Command::Quit => {
                replies.extend_from_slice(b"221 2.0.0 Bye\r\n");
                out.write_all(&replies)?;
                return Ok(());
            }
            Command::Unknown => replies.extend_from_slice(b"502 5.5.2 Unknown command\r\n"),
        }
        if input.buffer().is_empty() {
            out.write_all(&replies)?;
            replies.clear();
        }
    }
}

/// One line into `line` (cleared by the caller), at most LINE_MAX_BYTES.
fn read_line(input: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> io::Result<usize> {
    let n = input
        .by_ref()
        .take(LINE_MAX_BYTES as u64)
        .read_until(b'\n', line)?;
    if n == LINE_MAX_BYTES && !line.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n)
}

/// DATA lines up to and including the lone ".", kept dot-stuffed.
fn read_data(
    input: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    data: &mut Vec<u8>,
) -> io::Result<()> {
    data.clear();
    loop {
        line.clear();
        if read_line(input, line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(line);
        if line.as_slice() == b".\r\n" || line.as_slice() == b".\n" {
            return Ok(());
        }
        if data.len() > MESSAGE_MAX_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message too big",
            ));
        }
    }
}

impl Envelope {
    /// The spool record: sender and recipients, one per line, then the data.
    fn fill_record(&mut self) {
        self.record.clear();
        self.record.extend_from_slice(&self.sender);
        self.record.extend_from_slice(b"\n");
        for r in &self.recipients {
            self.record.extend_from_slice(r);
            self.record.extend_from_slice(b"\n");
        }
        self.record.extend_from_slice(&self.data);
    }
}

/// A thread's connection to the gateway, opened on first use and kept.
struct Relay {
    gateway: SocketAddr,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
    line: Vec<u8>,
    commands: Vec<u8>,
}

impl Relay {
    fn new(gateway: SocketAddr) -> Relay {
        Relay {
            gateway,
            conn: None,
            line: Vec::with_capacity(512),
            commands: Vec::with_capacity(512),
        }
    }

    /// Relay one message; a broken connection is opened again once.
    fn send(&mut self, env: &Envelope) -> io::Result<()> {
        match self.try_send(env) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.conn = None;
                self.try_send(env)
            }
        }
    }

    fn try_send(&mut self, env: &Envelope) -> io::Result<()> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let Relay {
            conn: Some((input, out)),
            line,
            commands,
            ..
        } = self
        else {
            unreachable!("connected above");
        };
        // MAIL, RCPTs and DATA pipelined in one write; the gateway
        // advertises PIPELINING.
        commands.clear();
        commands.extend_from_slice(b"MAIL FROM:");
        commands.extend_from_slice(&env.sender);
        commands.extend_from_slice(b"\r\n");
        for r in &env.recipients {
            commands.extend_from_slice(b"RCPT TO:");
            commands.extend_from_slice(r);
            commands.extend_from_slice(b"\r\n");
        }
        commands.extend_from_slice(b"DATA\r\n");
        out.write_all(commands)?;
        expect_reply(input, line, b'2')?;
        for _ in &env.recipients {
            expect_reply(input, line, b'2')?;
        }
        expect_reply(input, line, b'3')?;
        out.write_all(&env.data)?;
        expect_reply(input, line, b'2')
    }

    fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect(self.gateway)?;
        stream.set_nodelay(true)?;
        let mut out = stream.try_clone()?;
        let mut input = BufReader::new(stream);
        expect_reply(&mut input, &mut self.line, b'2')?;
        out.write_all(b"EHLO floor.bench\r\n")?;
        expect_reply(&mut input, &mut self.line, b'2')?;
        self.conn = Some((input, out));
        Ok(())
    }
}

/// Read one (possibly multi-line) reply; an error unless its code starts
/// with `class`.
fn expect_reply(input: &mut BufReader<TcpStream>, line: &mut Vec<u8>, class: u8) -> io::Result<()> {
    loop {
        line.clear();
        if read_line(input, line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line[0] != class {
            return Err(io::Error::other(format!(
                "gateway replied {}",
                String::from_utf8_lossy(line).trim_end()
            )));
        }
        if line[3] != b'-' {
            return Ok(());
        }
    }
}

/// One file, written round, synced by whoever finds no sync running: the
/// records that arrive during a sync go out together in the next one.
struct GroupCommit {
    file: File,
    state: Mutex<GroupState>,
    synced: Condvar,
}

struct GroupState {
    /// Records waiting for the next sync.
    pending: Vec<u8>,
    /// The batch `pending` will be synced as.
    next_batch: u64,
    /// Every batch up to this one is on disk.
    durable_batch: u64,
    /// A thread is writing and syncing a batch now.
    syncing: bool,
    /// The last sync failed: the batches it covered are not durable.
    failed_batch: u64,
    /// Where the next batch is written.
    offset: u64,
    /// The previous batch's buffer, kept for its allocation.
    spare: Vec<u8>,
}

impl GroupCommit {
    fn create(path: &Path) -> Result<GroupCommit> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let zeros = vec![0u8; ZERO_FILL_STEP_BYTES];
        let mut at = 0;
        while at < FLOOR_SPOOL_BYTES {
            file.write_all_at(&zeros, at)?;
            at += ZERO_FILL_STEP_BYTES as u64;
        }
        file.sync_all()?;
        Ok(GroupCommit {
            file,
            state: Mutex::new(GroupState {
                pending: Vec::with_capacity(1 << 20),
                next_batch: 1,
                durable_batch: 0,
                syncing: false,
                failed_batch: 0,
                offset: 0,
                spare: Vec::with_capacity(1 << 20),
            }),
            synced: Condvar::new(),
        })
    }

    /// Returns once `record` is on disk.
    fn append(&self, record: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().expect("floor spool lock");
        s.pending.extend_from_slice(record);
        let mine = s.next_batch;
        loop {
            if s.failed_batch >= mine {
                return Err(io::Error::other("floor spool sync failed"));
            }
            if s.durable_batch >= mine {
                return Ok(());
            }
            if s.syncing {
                s = self.synced.wait(s).expect("floor spool lock");
                continue;
            }
            // Lead: take what is pending and sync it.
            let spare = std::mem::take(&mut s.spare);
            let batch = std::mem::replace(&mut s.pending, spare);
            let number = s.next_batch;
            s.next_batch += 1;
            s.syncing = true;
            let len = batch.len() as u64;
            if s.offset + len > FLOOR_SPOOL_BYTES {
                s.offset = 0;
            }
            let at = s.offset;
            s.offset += len;
            drop(s);
            let outcome = self
                .file
                .write_all_at(&batch, at)
                .and_then(|()| self.file.sync_data());
            s = self.state.lock().expect("floor spool lock");
            s.syncing = false;
            match outcome {
                Ok(()) => s.durable_batch = number,
                Err(_) => s.failed_batch = number,
            }
            let mut batch = batch;
            batch.clear();
            s.spare = batch;
            self.synced.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognised_in_any_case() {
        assert_eq!(parse_command(b"ehlo x\r\n"), Command::Ehlo);
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b>\r\n"),
            Command::Mail(b"<a@b>")
        );
        assert_eq!(
            parse_command(b"rcpt to:<c@d> NOTIFY=NEVER\r\n"),
            Command::Rcpt(b"<c@d> NOTIFY=NEVER")
        );
        assert_eq!(parse_command(b"DATA\r\n"), Command::Data);
        assert_eq!(parse_command(b"QUIT\n"), Command::Quit);
        assert_eq!(parse_command(b"VRFY x\r\n"), Command::Unknown);
        assert_eq!(parse_command(b""), Command::Unknown);
    }

    #[test]
    fn concurrent_appends_all_return_after_a_sync_and_land_in_the_file() {
        let dir = std::env::temp_dir().join(format!("ecbench-floor-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let spool = Arc::new(GroupCommit::create(&dir.join("s")).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let spool = Arc::clone(&spool);
                thread::spawn(move || {
                    for _ in 0..50 {
                        spool.append(&[b'a' + t; 100]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = spool.state.lock().unwrap();
        assert_eq!(s.offset, 8 * 50 * 100, "every record written once");
        assert!(s.durable_batch >= 1 && s.durable_batch == s.next_batch - 1);
        assert!(s.pending.is_empty());
        drop(s);
        let mut head = vec![0u8; 8 * 50 * 100];
        spool.file.read_exact_at(&mut head, 0).unwrap();
        for t in 0..8u8 {
            let n = head.iter().filter(|&&b| b == b'a' + t).count();
            assert_eq!(n, 50 * 100, "thread {t}'s bytes");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
