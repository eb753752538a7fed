//! Bounces: what a permanent failure turns into besides its mainlog `P`
//! line. Pure parts only: Momentum's bounce classification of a failing
//! reply ([`classify`]), and (in `dsn`) the RFC 3464 delivery status
//! notification built from the failures of one message.
//!
//! Owns: the classification table and rules, the DSN text builder.
//! May call: std, `smtp` (date formatting). Never: I/O, queues, the spool
//! (the home shard's `message` room reads the original and spools the DSN).

pub mod classify;
pub mod dsn;

pub use classify::{bounce_class, classify, BounceClass, Category, BOUNCE_CLASSES};
