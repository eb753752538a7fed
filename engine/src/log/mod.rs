//! Momentum's logs: mainlog (R, D, T, P records and the M heartbeat),
//! bouncelog (B records), rejectlog, acctlog (auth records) and paniclog,
//! and their reopen for log rotation.
//!
//! Owns: the line formats (tested against golden lines) and the per-shard
//! writers. Each shard formats into its own buffer and writes it with one
//! `write(2)` per flush to a file opened with O_APPEND, so shards never take
//! a lock and lines from different shards never interleave (an O_APPEND
//! write to a regular file is placed atomically). The paniclog takes a lock:
//! it is for diagnostics, never per message.
//! May call: std, tracing, `config` (the log paths). Never: the spool, the
//! network.

mod panic;

pub use panic::{install_paniclog, paniclog_path, reopen_paniclog};

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::LogPaths;

/// A shard writes its buffer out once it holds this much, even before the
/// periodic flush.
pub const LOG_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// How often a shard flushes its log buffers when they hold anything.
pub const LOG_FLUSH_INTERVAL_MS: u64 = 100;

/// Which mail addresses the R line splits into local part and domain.
fn split_address(address: &str) -> (&str, &str) {
    match address.rsplit_once('@') {
        Some((local, domain)) => (local, domain),
        None => (address, ""),
    }
}

/// Appends `field` with Momentum's escaping: `@`, `\` and control
/// characters are backslash-escaped so a field can never split a line.
pub fn push_field(buf: &mut Vec<u8>, field: &str) {
    for &b in field.as_bytes() {
        match b {
            b'@' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            0..=31 | 127 => {
                let _ = write!(Fmt(buf), "\\x{b:02x}");
            }
            _ => buf.push(b),
        }
    }
}

/// `fmt::Write` into a byte buffer, so numbers format without a String.
struct Fmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Ids every mainlog record starts with, already rendered.
#[derive(Debug, Clone, Copy)]
pub struct RecordIds<'a> {
    pub unix_secs: u64,
    pub message_id: &'a str,
    pub batch_id: &'a str,
    pub connection_id: &'a str,
}

fn head(buf: &mut Vec<u8>, ids: &RecordIds<'_>, kind: u8) {
    let _ = write!(Fmt(buf), "{}@", ids.unix_secs);
    buf.extend_from_slice(ids.message_id.as_bytes());
    buf.push(b'@');
    buf.extend_from_slice(ids.batch_id.as_bytes());
    buf.push(b'@');
    buf.extend_from_slice(ids.connection_id.as_bytes());
    buf.push(b'@');
    buf.push(kind);
}

/// Fields of a reception record: one per recipient.
pub struct Reception<'a> {
    pub rcpt: &'a str,
    pub mail_from: &'a str,
    /// The client's address; `None` (written `unknown`, as Momentum does)
    /// for a message written by this MTA.
    pub peer_ip: Option<IpAddr>,
    pub size_bytes: u64,
    pub protocol: &'a str,
    pub binding_group: &'a str,
    pub binding: &'a str,
}

/// `ts@msgid@batchid@connid@R@rcpt_local@rcpt_domain@from_local@from_domain@peer_ip@size@proto@binding_group@binding`
pub fn format_reception(buf: &mut Vec<u8>, ids: &RecordIds<'_>, r: &Reception<'_>) {
    head(buf, ids, b'R');
    let (rcpt_local, rcpt_domain) = split_address(r.rcpt);
    let (from_local, from_domain) = split_address(r.mail_from);
    for field in [rcpt_local, rcpt_domain, from_local, from_domain] {
        buf.push(b'@');
        push_field(buf, field);
    }
    match r.peer_ip {
        Some(ip) => {
            let _ = write!(Fmt(buf), "@{ip}");
        }
        None => buf.extend_from_slice(b"@unknown"),
    }
    let _ = write!(Fmt(buf), "@{}@", r.size_bytes);
    push_field(buf, r.protocol);
    buf.push(b'@');
    push_field(buf, r.binding_group);
    buf.push(b'@');
    push_field(buf, r.binding);
    buf.push(b'\n');
}

/// Fields shared by delivery, transient and permanent failure records.
pub struct Attempt<'a> {
    pub domain: &'a str,
    /// D: message size; T/P: bytes sent on this attempt (0: no connection).
    pub bytes: u64,
    pub binding_group: &'a str,
    pub binding: &'a str,
    /// Momentum's connection stage code (T and P only).
    pub stage: u8,
    /// Attempts before this one (0 for the first).
    pub retries: u32,
    pub secs_since_reception: f64,
    /// The remote host's address, or empty when none was reached.
    pub remote_ip: &'a str,
    /// The remote reply or our reason (T and P only).
    pub error: &'a str,
}

/// `D: ts@msgid@batchid@connid@D@dest_domain@size@binding_group@binding@retries@secs@remote_ip`
pub fn format_delivery(buf: &mut Vec<u8>, ids: &RecordIds<'_>, a: &Attempt<'_>) {
    attempt_head(buf, ids, b'D', a);
    let _ = write!(Fmt(buf), "@{}@{:.3}@", a.retries, a.secs_since_reception);
    push_field(buf, a.remote_ip);
    buf.push(b'\n');
}

/// `T|P: ts@msgid@batchid@connid@T@dest_domain@bytes_sent@binding_group@binding@stage@retries@secs@remote_ip@error`
pub fn format_failure(buf: &mut Vec<u8>, ids: &RecordIds<'_>, permanent: bool, a: &Attempt<'_>) {
    attempt_head(buf, ids, if permanent { b'P' } else { b'T' }, a);
    let _ = write!(
        Fmt(buf),
        "@{}@{}@{:.3}@",
        a.stage,
        a.retries,
        a.secs_since_reception
    );
    push_field(buf, a.remote_ip);
    buf.push(b'@');
    push_field(buf, a.error);
    buf.push(b'\n');
}

/// The fields D, T and P records share: ids, type, domain, bytes, binding
/// group and binding.
fn attempt_head(buf: &mut Vec<u8>, ids: &RecordIds<'_>, kind: u8, a: &Attempt<'_>) {
    head(buf, ids, kind);
    buf.push(b'@');
    push_field(buf, a.domain);
    let _ = write!(Fmt(buf), "@{}@", a.bytes);
    push_field(buf, a.binding_group);
    buf.push(b'@');
    push_field(buf, a.binding);
}

/// Fields of a bouncelog record: one per permanently failed recipient.
pub struct Bounce<'a> {
    pub rcpt: &'a str,
    pub mail_from: &'a str,
    pub binding_group: &'a str,
    pub binding: &'a str,
    /// Momentum's connection stage code the failure came at.
    pub stage: u8,
    /// Momentum's bounce classification code (`bounce::classify`).
    pub bounce_code: u16,
    /// Size of the message in bytes.
    pub size_bytes: u64,
    /// The remote host's address, or empty when none was reached.
    pub remote_ip: &'a str,
    /// The failing reply as received (or ours, for expiry).
    pub raw_reply: &'a str,
}

/// `ts@msgid@batchid@connid@B@rcpt_local@rcpt_domain@from_local@from_domain@binding_group@binding@stage@bounce_code@size@remote_ip@raw_reply`
pub fn format_bounce(buf: &mut Vec<u8>, ids: &RecordIds<'_>, b: &Bounce<'_>) {
    head(buf, ids, b'B');
    let (rcpt_local, rcpt_domain) = split_address(b.rcpt);
    let (from_local, from_domain) = split_address(b.mail_from);
    for field in [
        rcpt_local,
        rcpt_domain,
        from_local,
        from_domain,
        b.binding_group,
        b.binding,
    ] {
        buf.push(b'@');
        push_field(buf, field);
    }
    let _ = write!(Fmt(buf), "@{}@{}@{}@", b.stage, b.bounce_code, b.size_bytes);
    push_field(buf, b.remote_ip);
    buf.push(b'@');
    push_field(buf, b.raw_reply);
    buf.push(b'\n');
}

/// Fields of a rejectlog line.
pub struct Rejection<'a> {
    pub remote: &'a str,
    pub local: &'a str,
    pub connection_id: &'a str,
    pub phase: &'a str,
    pub code: u16,
    pub ehlo: &'a str,
    pub mail_from: &'a str,
    pub text: &'a str,
}

/// `<ts>: R="ip:port" L="ip:port" C="connid" PATH="" PATH_GRP="" P="phase" E=550 M=esmtp CTXCONN=[ehlo_domain=..] CTXMESS=[mailfrom_string=..] text`
pub fn format_rejection(buf: &mut Vec<u8>, unix_secs: u64, r: &Rejection<'_>) {
    let _ = write!(
        Fmt(buf),
        "{unix_secs}: R=\"{}\" L=\"{}\" C=\"{}\" PATH=\"\" PATH_GRP=\"\" P=\"{}\" E={} M=esmtp CTXCONN=[ehlo_domain=\"",
        r.remote, r.local, r.connection_id, r.phase, r.code
    );
    push_field(buf, r.ehlo);
    buf.extend_from_slice(b"\"] CTXMESS=[mailfrom_string=\"");
    push_field(buf, r.mail_from);
    buf.extend_from_slice(b"\"] ");
    push_field(buf, r.text);
    buf.push(b'\n');
}

/// Opens a log file for appending, creating it and its folder.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
}

/// Bytes a shard's bouncelog buffer starts with: bounces are rare next to
/// deliveries, so it starts small and grows to [`LOG_BUFFER_BYTES_MAX`].
pub const BOUNCELOG_BUFFER_BYTES_INITIAL: usize = 4096;

/// A shard's mainlog, bouncelog, rejectlog and acctlog: buffers it
/// formats into, written out by [`ShardLogs::flush`] (called every
/// [`LOG_FLUSH_INTERVAL_MS`] and when a buffer passes
/// [`LOG_BUFFER_BYTES_MAX`]). [`ShardLogs::reopen`] (console `reopen logs`,
/// SIGUSR1) flushes every buffer to the files open now, then opens the
/// paths again: after logrotate renamed a file, the lines before the
/// reopen are in the renamed file and the lines after it in the new one,
/// none lost and none twice.
pub struct ShardLogs {
    paths: LogPaths,
    files: RefCell<Files>,
    main: RefCell<Vec<u8>>,
    reject: RefCell<Vec<u8>>,
    bounce: RefCell<Vec<u8>>,
    acct: RefCell<Vec<u8>>,
}

/// The open log files of a shard.
struct Files {
    mainlog: File,
    rejectlog: File,
    bouncelog: File,
    acctlog: Option<File>,
}

impl Files {
    fn open(paths: &LogPaths) -> io::Result<Files> {
        let open = |path: &Path| {
            open_append(path, LOG_FILE_MODE)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        Ok(Files {
            mainlog: open(&paths.mainlog)?,
            rejectlog: open(&paths.rejectlog)?,
            bouncelog: open(&paths.bouncelog)?,
            acctlog: paths.acctlog.as_deref().map(open).transpose()?,
        })
    }
}

/// Mode of a log file this daemon creates (Momentum's `<log>_mode`).
pub const LOG_FILE_MODE: u32 = 0o644;

impl ShardLogs {
    pub fn open(paths: &LogPaths) -> io::Result<ShardLogs> {
        Ok(ShardLogs {
            paths: paths.clone(),
            files: RefCell::new(Files::open(paths)?),
            main: RefCell::new(Vec::with_capacity(LOG_BUFFER_BYTES_MAX)),
            reject: RefCell::new(Vec::with_capacity(4096)),
            bounce: RefCell::new(Vec::with_capacity(BOUNCELOG_BUFFER_BYTES_INITIAL)),
            acct: RefCell::new(Vec::new()),
        })
    }

    /// Formats into `buf` with `f`; flushes once it is full.
    fn append(&self, buf: &RefCell<Vec<u8>>, f: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut buf = buf.borrow_mut();
            f(&mut buf);
            buf.len() >= LOG_BUFFER_BYTES_MAX
        };
        if full {
            self.flush();
        }
    }

    /// Formats bouncelog records with `f`; flushes if the buffer is full.
    pub fn bouncelog(&self, f: impl FnOnce(&mut Vec<u8>)) {
        self.append(&self.bounce, f);
    }

    /// Formats one mainlog record with `f`; flushes if the buffer is full.
    pub fn mainlog(&self, f: impl FnOnce(&mut Vec<u8>)) {
        self.append(&self.main, f);
    }

    /// Formats one rejectlog line with `f`; flushes if the buffer is full
    /// (a flood of rejections must not grow it without bound).
    pub fn rejectlog(&self, f: impl FnOnce(&mut Vec<u8>)) {
        self.append(&self.reject, f);
    }

    /// Formats one acctlog record with `f` (see [`format_acct_auth`]);
    /// dropped when no `acctlog` is configured.
    pub fn acctlog(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.paths.acctlog.is_some() {
            self.append(&self.acct, f);
        }
    }

    /// Writes the buffers out, one write each. A failed write is reported
    /// to the paniclog and the lines are dropped: logs never hold up mail.
    pub fn flush(&self) {
        let mut files = self.files.borrow_mut();
        let Files {
            mainlog,
            rejectlog,
            bouncelog,
            acctlog,
        } = &mut *files;
        for (buf, file, name) in [
            (&self.main, Some(mainlog), "mainlog"),
            (&self.reject, Some(rejectlog), "rejectlog"),
            (&self.bounce, Some(bouncelog), "bouncelog"),
            (&self.acct, acctlog.as_mut(), "acctlog"),
        ] {
            let mut buf = buf.borrow_mut();
            if buf.is_empty() {
                continue;
            }
            let written = match file {
                Some(file) => file.write_all(&buf),
                None => Ok(()),
            };
            if let Err(e) = written {
                tracing::error!(
                    "cannot write the {name}: {e}; {} bytes of log lines dropped",
                    buf.len()
                );
            }
            buf.clear();
        }
    }

    /// Flushes what is buffered to the files open now, then opens every
    /// path again (created if logrotate moved it away). When a path cannot
    /// be opened the shard keeps writing to the file it had.
    pub fn reopen(&self) -> io::Result<()> {
        self.flush();
        let files = Files::open(&self.paths)?;
        *self.files.borrow_mut() = files;
        Ok(())
    }
}

/// Momentum's mainlog heartbeat: `ts@@@@M`.
pub fn format_heartbeat(buf: &mut Vec<u8>, unix_secs: u64) {
    let _ = writeln!(Fmt(buf), "{unix_secs}@@@@M");
}

/// Whether a login succeeded, failed or timed out, for the acctlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Success,
    Failure,
    /// The client did not finish the exchange in time (type `T`).
    Timeout,
}

/// Momentum's acctlog auth record:
/// `ts@N@<listener endpoint>@<peer ip:port, empty for unix>@<user>@<1|0>`
/// (`T` instead of `N` for a timed-out exchange).
pub fn format_acct_auth(
    buf: &mut Vec<u8>,
    unix_secs: u64,
    endpoint: &str,
    peer: &str,
    user: &str,
    outcome: AuthOutcome,
) {
    let kind = if outcome == AuthOutcome::Timeout {
        'T'
    } else {
        'N'
    };
    let _ = write!(Fmt(buf), "{unix_secs}@{kind}@");
    push_field(buf, endpoint);
    buf.push(b'@');
    push_field(buf, peer);
    buf.push(b'@');
    push_field(buf, user);
    let ok = u8::from(outcome == AuthOutcome::Success);
    let _ = writeln!(Fmt(buf), "@{ok}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_line_is_momentums_acctlog_shape_with_escaped_fields() {
        let mut buf = Vec::new();
        format_acct_auth(
            &mut buf,
            1160503808,
            "127.0.0.1:2525",
            "127.0.0.1:40000",
            "alice",
            AuthOutcome::Success,
        );
        format_acct_auth(
            &mut buf,
            1160503809,
            "127.0.0.1:2525",
            "127.0.0.1:40001",
            "a@b",
            AuthOutcome::Failure,
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1160503808@N@127.0.0.1:2525@127.0.0.1:40000@alice@1\n\
             1160503809@N@127.0.0.1:2525@127.0.0.1:40001@a\\@b@0\n"
        );
    }

    fn ids() -> RecordIds<'static> {
        RecordIds {
            unix_secs: 1700000000,
            message_id: "00/00-01234-0A1B2C3D",
            batch_id: "00/00-01234-0A1B2C3D",
            connection_id: "00/00-01234-0A1B2C3F",
        }
    }

    #[test]
    fn reception_line_matches_momentum_layout() {
        let mut buf = Vec::new();
        let r = Reception {
            rcpt: "bob@example.com",
            mail_from: "news@example.net",
            peer_ip: Some("10.0.0.5".parse().unwrap()),
            size_bytes: 2048,
            protocol: "esmtp",
            binding_group: "default",
            binding: "default",
        };
        format_reception(&mut buf, &ids(), &r);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1700000000@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3F@R@bob@example.com@news@example.net@10.0.0.5@2048@esmtp@default@default\n"
        );
    }

    #[test]
    fn delivery_and_failure_lines_match_momentum_layout() {
        let a = Attempt {
            domain: "example.com",
            bytes: 2048,
            binding_group: "default",
            binding: "default",
            stage: 5,
            retries: 1,
            secs_since_reception: 3.12,
            remote_ip: "192.0.2.25",
            error: "550 5.1.1 no such user",
        };
        let mut buf = Vec::new();
        format_delivery(&mut buf, &ids(), &a);
        format_failure(&mut buf, &ids(), true, &a);
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1700000000@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3F@D@example.com@2048@default@default@1@3.120@192.0.2.25");
        assert_eq!(lines[1], "1700000000@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3F@P@example.com@2048@default@default@5@1@3.120@192.0.2.25@550 5.1.1 no such user");
    }

    #[test]
    fn bounce_line_matches_momentum_layout() {
        let b = Bounce {
            rcpt: "bob@example.com",
            mail_from: "news@example.net",
            binding_group: "default",
            binding: "default",
            stage: 5,
            bounce_code: 10,
            size_bytes: 2048,
            remote_ip: "192.0.2.25",
            raw_reply: "550 5.1.1 <bob@example.com>: user unknown",
        };
        let mut buf = Vec::new();
        format_bounce(&mut buf, &ids(), &b);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1700000000@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3D@00/00-01234-0A1B2C3F@B@bob@example.com@news@example.net@default@default@5@10@2048@192.0.2.25@550 5.1.1 <bob\\@example.com>: user unknown\n"
        );
    }

    #[test]
    fn bounce_line_of_a_null_sender_keeps_its_field_count() {
        let b = Bounce {
            rcpt: "bob@example.com",
            mail_from: "",
            binding_group: "default",
            binding: "default",
            stage: 0,
            bounce_code: 24,
            size_bytes: 10,
            remote_ip: "",
            raw_reply: "554 5.4.7 [internal] exceeded max time without delivery",
        };
        let mut buf = Vec::new();
        format_bounce(&mut buf, &ids(), &b);
        let line = String::from_utf8(buf).unwrap();
        assert_eq!(line.trim_end().split('@').count(), 16, "{line}");
        assert!(line.contains("@bob@example.com@@@default@default@0@24@10@@554 5.4.7"));
    }

    #[test]
    fn heartbeat_and_acctlog_lines_match_momentum_layout() {
        let mut buf = Vec::new();
        format_heartbeat(&mut buf, 1700000000);
        format_acct_auth(
            &mut buf,
            1160503808,
            "/tmp/2025",
            "",
            "ec-user",
            AuthOutcome::Success,
        );
        format_acct_auth(
            &mut buf,
            1160503809,
            "*:587",
            "10.0.0.1:4000",
            "a@b",
            AuthOutcome::Timeout,
        );
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1700000000@@@@M\n1160503808@N@/tmp/2025@@ec-user@1\n\
             1160503809@T@*:587@10.0.0.1:4000@a\\@b@0\n"
        );
    }

    #[test]
    fn reopen_flushes_to_the_old_file_then_writes_the_new_path() {
        let dir = std::env::temp_dir().join(format!("ec-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut paths = LogPaths::builtin();
        paths.mainlog = dir.join("mainlog.ec");
        paths.rejectlog = dir.join("rejectlog.ec");
        paths.bouncelog = dir.join("bouncelog.ec");
        paths.acctlog = Some(dir.join("acctlog.ec"));
        let logs = ShardLogs::open(&paths).unwrap();
        logs.mainlog(|b| b.extend_from_slice(b"one\n"));
        logs.acctlog(|b| b.extend_from_slice(b"auth\n"));
        std::fs::rename(&paths.mainlog, dir.join("mainlog.ec.1")).unwrap();
        logs.reopen().unwrap();
        logs.mainlog(|b| b.extend_from_slice(b"two\n"));
        logs.flush();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("mainlog.ec.1"), "one\n");
        assert_eq!(read("mainlog.ec"), "two\n");
        assert_eq!(read("acctlog.ec"), "auth\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fields_cannot_split_a_line_or_a_record() {
        let mut buf = Vec::new();
        push_field(&mut buf, "a@b\nc\\d\x01");
        assert_eq!(buf, b"a\\@b\\nc\\\\d\\x01");
    }
}
