//! ecelerity's engine: one glommio event loop per core ("shard"), each
//! owning its listeners, spool segments, queues, counters and log buffers.
//!
//! Rooms, and the direction of their arrows (docs/architecture.md):
//!
//! - [`runtime`]: executors, start/stop, the wiring of a shard's rooms;
//!   may call every room below.
//! - [`inbound`]: accept loops and the I/O driver of a server session;
//!   calls `smtp`, `message`, `mesh`.
//! - [`message`]: the life of a message on its home shard (live set,
//!   spooling, outcomes, completion, recovery); calls the spool, `queue`.
//! - [`delivery`]: the queues a shard owns and everything outbound (route,
//!   admission, connect, driver, disposition, settle); calls `smtp`,
//!   `queue`, `mesh`.
//! - [`mesh`]: what crosses between shards, and the router; calls `queue`.
//! - [`control`]: control requests answered by every shard; [`console`]
//!   serves them (and the counters) on the control socket.
//! - [`bounce`]: pure bounce parts (Momentum's classification, the
//!   RFC 3464 DSN builder), called by `delivery` and `message`.
//! - [`dkim`]: DKIM signing (the `opendkim` stanza's keys, the choice of
//!   signer, body hashing as it streams), called by `inbound`.
//! - [`sqlite`]: the SQLite worker thread shards send jobs to (used by
//!   datasources and storage); a leaf.
//! - [`queue`], [`smtp`], [`config`], [`stats`], [`log`], [`transport`],
//!   [`env`], [`clock`]: leaves (types, pure protocol code, shared pieces).
//!
//! May call: `ecelerity-spool` (durable storage), `ecelerity-policy`
//! (reception phases). Never: anything in `cli` (the binaries call us).

pub mod api;
pub mod auth;
pub mod bounce;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod datasource;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod env;
pub mod events;
pub mod http;
pub mod inbound;
pub mod latency;
pub mod log;
pub mod mesh;
pub mod message;
pub mod queue;
pub mod runtime;
pub mod scriptlet;
pub mod smtp;
pub mod sqlite;
pub mod stats;
pub mod tls;
pub mod transport;

/// The version every banner, console and log line reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
