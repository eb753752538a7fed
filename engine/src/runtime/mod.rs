//! The runtime: one glommio `LocalExecutor` per core, pinned to it, each
//! running one shard ([`shard`]); start-up in order, the ready handshake,
//! and the handle the daemon stops and joins.
//!
//! Owns: the executors and their threads, the shard count (never fewer
//! than the spool needs), the registered-memory size that fits the
//! locked-memory limit ([`limits`]), the stop flag, the control queue into
//! shard 0.
//! May call: every engine room (it wires them). Never: a shard's state
//! from another thread (only the stop flag and the control queue cross).

mod limits;
mod shard;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::config::Config;
use crate::console::RunningConfig;
use crate::control::ControlHandle;
use crate::mesh::{ShardMsg, SHARD_CHANNEL_MESSAGES_MAX};
use crate::stats::EngineStats;
pub use limits::{io_memory_bytes, IO_MEMORY_BYTES_DEFAULT, IO_MEMORY_BYTES_MIN};
pub use shard::{SHUTDOWN_GRACE_MS, TICK_MS};

/// Most shards (the message id keeps the home shard in 8 bits).
pub const SHARDS_MAX: usize = 256;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: {what}: {source}")]
    Io {
        shard: usize,
        what: String,
        source: io::Error,
    },
    #[error("shard {shard}: {what}")]
    Other { shard: usize, what: String },
    /// The configuration names something that cannot be loaded (a DKIM
    /// key): `file:line: what is wrong`.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// A running engine: the shard threads and the flag that stops them.
pub struct Engine {
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<EngineStats>,
    pub control: ControlHandle,
    pub shard_count: usize,
    pub io_memory_bytes: usize,
    /// The configuration in effect; `reload` replaces it.
    pub running: Arc<RunningConfig>,
}

impl Engine {
    /// Asks every shard to stop gracefully: stop accepting, let open
    /// sessions finish (up to [`SHUTDOWN_GRACE_MS`]), sync the spool, exit.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// SIGHUP: `config reload` of the file the daemon runs from.
    pub fn reload(&self) -> String {
        crate::console::reload(&self.running, &self.control, None)
    }

    /// SIGUSR1: `reopen logs`.
    pub fn reopen_logs(&self) -> String {
        crate::console::reopen_logs(&self.control)
    }

    /// Waits for every shard thread to end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Shard count to run: the configured one, or one per available CPU, and
/// never fewer than the spool needs. Each shard owns `spoolbase/<shard>`,
/// and its messages can only be recovered by a shard of that number: with
/// `shards = 0` the count grows to cover every folder that still holds
/// segments (a spool moved to a smaller machine keeps working); a
/// configured count that would strand a folder is an error, never a loss.
pub fn shard_count(config: &Config) -> Result<usize, StartError> {
    let needed = spooled_shard_folders(config.spoolbase());
    match config.shards() {
        0 => {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            Ok(cpus.max(needed).clamp(1, SHARDS_MAX))
        }
        n if n < needed => Err(StartError::Other {
            shard: needed - 1,
            what: format!(
                "{} holds spooled messages but shards = {n}: set shards to at least {needed} \
                 (or 0) so that they are delivered",
                config.spoolbase().join((needed - 1).to_string()).display()
            ),
        }),
        n => Ok(n.clamp(1, SHARDS_MAX)),
    }
}

/// One more than the highest `spoolbase/<n>` folder that holds a segment
/// file (0 when none does).
fn spooled_shard_folders(spoolbase: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(spoolbase) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n: usize = e.file_name().to_str()?.parse().ok()?;
            let has_segment = std::fs::read_dir(e.path())
                .ok()?
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".seg"));
            (has_segment && n < SHARDS_MAX).then_some(n + 1)
        })
        .max()
        .unwrap_or(0)
}

/// Starts every shard and returns once all of them serve (or with the
/// first error). Each shard recovers its spool and binds its sockets, then
/// waits; `before_serving` runs once all are ready (the daemon drops its
/// privileges there), and only then do the shards accept connections.
pub fn start(
    config: Arc<Config>,
    before_serving: impl FnOnce() -> Result<(), String>,
) -> Result<Engine, StartError> {
    let count = shard_count(&config)?;
    // Keys are read before privileges are dropped; a bad one stops the start.
    let dkim = crate::dkim::Signers::for_config(&config)?.map(Arc::new);
    // The engagement-tracking secret, made on the first start.
    crate::api::tracking::load_at_start(config.spoolbase())
        .map_err(|what| StartError::Other { shard: 0, what })?;
    // The REST API's webhooks, handed to the sender before it starts.
    crate::api::webhooks::load_at_start(config.spoolbase())
        .map_err(|what| StartError::Other { shard: 0, what })?;
    // SQLite files are opened (created) now: a bad one stops the start.
    let datasources = crate::datasource::DatasourceSet::open_at_start(config.datasources())?;
    // A script that does not load stops the start too (file:line: what).
    crate::scriptlet::check(&config, &datasources)
        .map_err(|what| StartError::Other { shard: 0, what })?;
    let (io_memory, memlock) = io_memory_bytes(count);
    let stats = EngineStats::new(count);
    let stop = Arc::new(AtomicBool::new(false));
    let serving = Arc::new(AtomicBool::new(false));
    let (control, control_queue) = ControlHandle::new(count);
    let consoles = crate::console::bind(&config).map_err(|e| StartError::Other {
        shard: 0,
        what: format!("cannot open the control socket: {e}"),
    })?;
    let mesh = MeshBuilder::<ShardMsg, _>::full(count, SHARD_CHANNEL_MESSAGES_MAX);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let mut threads = Vec::with_capacity(count);
    for id in 0..count {
        let dkim = dkim.clone();
        let datasources = datasources.clone();
        let control = control.clone();
        let (config, stats, stop, serving, mesh, ready) = (
            config.clone(),
            stats.clone(),
            stop.clone(),
            serving.clone(),
            mesh.clone(),
            ready_tx.clone(),
        );
        // Only shard 0 polls the control queue; it fans requests out.
        let control_queue = (id == 0).then(|| control_queue.clone());
        let builder = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("shard{id}"))
            .io_memory(io_memory)
            // CPU-heavy helpers (an AUTH's argon2 check) run on this
            // pool's thread, on whichever core is free, not the shard's.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1));
        let handle = builder
            .spawn(move || async move {
                shard::run(shard::Setup {
                    id,
                    count,
                    config,
                    stats,
                    stop,
                    serving,
                    mesh,
                    ready,
                    control_queue,
                    dkim,
                    control,
                    datasources,
                })
                .await;
            })
            .map_err(|e| StartError::Other {
                shard: id,
                what: format!("cannot start its executor: {e}"),
            })?;
        threads.push(handle);
    }
    drop(ready_tx);
    tracing::info!(
        "starting {count} shard(s), glommio io_memory {} KiB per shard ({})",
        io_memory >> 10,
        match memlock {
            None => "no locked-memory limit".to_string(),
            Some(l) => format!("locked-memory limit {} KiB", l >> 10),
        }
    );
    drop(control_queue);
    let engine = Engine {
        threads,
        stop: stop.clone(),
        stats,
        control,
        shard_count: count,
        io_memory_bytes: io_memory,
        running: Arc::new(RunningConfig::new(config.clone())),
    };
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                engine.join();
                return Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::SeqCst);
                engine.join();
                return Err(StartError::Other {
                    shard: 0,
                    what: "a shard ended during start-up".into(),
                });
            }
        }
    }
    if let Err(what) = before_serving() {
        stop.store(true, Ordering::SeqCst);
        engine.join();
        return Err(StartError::Other { shard: 0, what });
    }
    if let Err(e) = crate::events::webhook::start(&config, engine.stats.clone(), stop.clone()) {
        stop.store(true, Ordering::SeqCst);
        engine.join();
        return Err(StartError::Other {
            shard: 0,
            what: format!("cannot start the webhook sender: {e}"),
        });
    }
    serving.store(true, Ordering::SeqCst);
    crate::console::serve(
        consoles,
        engine.stats.clone(),
        engine.control.clone(),
        engine.running.clone(),
        stop,
    );
    Ok(engine)
}
