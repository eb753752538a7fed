//! What every room of a shard shares: who the shard is, the configuration
//! it runs on now, its counters, its log buffers and its stop signal.
//! Inbound, delivery, the message lifecycle and the mesh each get an
//! `Rc<ShardEnv>` and their own narrow state, never the whole shard.
//!
//! Owns: [`ShardEnv`], [`LiveConfig`] (the configuration of this shard and
//! its generation, so that a reload can swap it and queues notice) and
//! [`Stopping`]. May call: `config`, `log`, `stats`, `datasource` (the
//! shard's `Datasources`, a type). Never: queues, the spool, sockets.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;

use crate::config::Config;
use crate::events::EventLog;
use crate::latency::ShardLatency;
use crate::log::ShardLogs;
use crate::stats::{EngineStats, ShardStats};

/// The configuration a shard runs on. Cheap to read (an `Arc` clone); a
/// reload replaces it and bumps the generation, and whoever cached
/// something derived from it (queue options) compares generations.
pub struct LiveConfig {
    current: RefCell<Arc<Config>>,
    generation: Cell<u64>,
}

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> LiveConfig {
        LiveConfig {
            current: RefCell::new(config),
            generation: Cell::new(1),
        }
    }

    pub fn get(&self) -> Arc<Config> {
        self.current.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Swaps in a new configuration (a reload).
    pub fn replace(&self, config: Arc<Config>) {
        *self.current.borrow_mut() = config;
        self.generation.set(self.generation.get() + 1);
    }
}

/// The shard's stop signal: a flag for quick checks and a semaphore that
/// is closed when stopping starts, so every task waiting on it wakes.
pub struct Stopping {
    started: Cell<bool>,
    signal: Rc<Semaphore>,
}

impl Default for Stopping {
    fn default() -> Self {
        Stopping {
            started: Cell::new(false),
            signal: Rc::new(Semaphore::new(0)),
        }
    }
}

impl Stopping {
    pub fn is_stopping(&self) -> bool {
        self.started.get()
    }

    pub fn start(&self) {
        self.started.set(true);
        self.signal.close();
    }

    /// Resolves once stopping has started.
    pub async fn wait(&self) {
        let _ = self.signal.acquire(1).await;
    }
}

/// A shard's shared environment.
pub struct ShardEnv {
    pub id: usize,
    pub count: usize,
    pub config: LiveConfig,
    pub stats: Arc<EngineStats>,
    pub logs: ShardLogs,
    /// The JSON-lines event log (a no-op when `eventlog` is unset).
    pub events: EventLog,
    pub stopping: Stopping,
    /// This shard's latency histograms and rate window (only it records).
    pub latency: RefCell<ShardLatency>,
    /// The `Datasource`s (drivers shared by all shards) with this shard's
    /// result caches: what Lua's `msys.db` queries.
    pub datasources: Rc<crate::datasource::Datasources>,
}

impl ShardEnv {
    /// This shard's own counters (it is their single writer).
    pub fn stats(&self) -> &ShardStats {
        &self.stats.shards[self.id]
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_stopping()
    }
}
