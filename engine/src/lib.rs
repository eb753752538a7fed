//! ecelerity's engine: one glommio event loop per core ("shard"), each
//! owning its listeners, spool segments, queues, counters and log buffers.
//!
//! Owns: configuration ([`config`]), the SMTP protocol ([`smtp`]: pure state
//! machines), the spooled-message codec and outbound queues ([`queue`]),
//! delivery I/O ([`delivery`]), Momentum's logs ([`log`]), the control
//! console ([`console`]) and the shard runtime that wires them ([`shard`]).
//! May call: `ecelerity-spool` (durable storage), `ecelerity-policy`
//! (reception phases). Never: anything in `cli` (the binaries call us).

pub mod config;
pub mod console;
pub mod delivery;
pub mod log;
pub mod queue;
pub mod shard;
pub mod smtp;

/// The version every banner, console and log line reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
