//! The paniclog: diagnostics from `tracing`, one line per event,
//! `<epoch>: [<level>] <target>: <message>`, appended to the configured file
//! and, when the daemon runs in the foreground, echoed to stderr.
//!
//! glommio 0.9 logs one spurious ERROR per device when it probes iopoll on
//! this kernel ("probing iopoll support ... Bad file descriptor"); that one
//! line is dropped here, every other error is kept.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

static PANICLOG_PATH: OnceLock<PathBuf> = OnceLock::new();
/// The open paniclog, shared with the subscriber so `reopen_paniclog` can
/// swap it.
static PANICLOG_FILE: OnceLock<Arc<Mutex<Option<File>>>> = OnceLock::new();

/// Where the paniclog is, once installed.
pub fn paniclog_path() -> Option<&'static Path> {
    PANICLOG_PATH.get().map(|p| p.as_path())
}

struct PanicFormat;

impl<S, N> FormatEvent<S, N> for PanicFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(w, "{secs}: [{level}] {}: ", event.metadata().target())?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// File plus optional stderr, behind one lock (diagnostics only).
struct Sink {
    file: Arc<Mutex<Option<File>>>,
    echo_stderr: bool,
}

struct SinkWriter<'a> {
    sink: &'a Sink,
    line: Vec<u8>,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SinkWriter<'_> {
    fn drop(&mut self) {
        if self.line.is_empty() || is_spurious(&self.line) {
            return;
        }
        if let Ok(mut file) = self.sink.file.lock() {
            if let Some(file) = file.as_mut() {
                let _ = file.write_all(&self.line);
            }
        }
        if self.sink.echo_stderr {
            let _ = io::stderr().write_all(&self.line);
        }
    }
}

fn is_spurious(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.contains("iopoll") && text.contains("Bad file descriptor")
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter {
            sink: self,
            line: Vec::with_capacity(256),
        }
    }
}

/// Installs the paniclog as the global `tracing` subscriber. `level` is the
/// most verbose level written (the daemon's `--log-level`).
pub fn install_paniclog(path: &Path, level: Level, echo_stderr: bool) -> io::Result<()> {
    let file = super::open_append(path, 0o644)?;
    let _ = PANICLOG_PATH.set(path.to_path_buf());
    let file = Arc::new(Mutex::new(Some(file)));
    let _ = PANICLOG_FILE.set(file.clone());
    let sink = Sink { file, echo_stderr };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(PanicFormat)
        .with_writer(sink)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e.to_string()))
}

/// Opens the paniclog's path again (console `reopen logs`, SIGUSR1): the
/// lines written so far stay in the file logrotate renamed, the next ones
/// go to the path. On error the old file is kept.
pub fn reopen_paniclog() -> io::Result<()> {
    let (Some(path), Some(file)) = (PANICLOG_PATH.get(), PANICLOG_FILE.get()) else {
        return Ok(());
    };
    let reopened = super::open_append(path, super::LOG_FILE_MODE)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if let Ok(mut file) = file.lock() {
        *file = Some(reopened);
    }
    Ok(())
}
