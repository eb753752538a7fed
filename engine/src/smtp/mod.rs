//! SMTP, as pure protocol code: bytes in, replies and events out. Nothing
//! here opens a socket or reads a clock; `inbound` and `delivery`
//! (outbound) do the I/O and make no protocol decisions.
//!
//! * [`capabilities`]: the ESMTP extensions a listener offers and the
//!   EHLO reply that lists them.
//! * [`command`]: the command-line parser (verbs, paths, ESMTP parameters).
//! * [`server`]: the inbound session state machine (RFC 5321, PIPELINING,
//!   DATA transparency, limits, smuggling defence).
//! * [`received`]: the `Received:` header prepended before spooling.
//! * [`header`]: finding fields in a received header section (the
//!   `binding_header` is read and left out).
//! * [`reply`]: the incremental reply parser used by the client.
//! * [`client`]: the outbound session state machine (its EHLO reading and
//!   Momentum stage codes in `client/ehlo.rs` and `client/stage.rs`).
//! * [`body`]: DATA encoding of an outbound body.
//! * [`downgrade`]: 8-bit to 7-bit conversion for a server without 8BITMIME.
//! * [`sasl`]: SMTP AUTH PLAIN and LOGIN responses, both sides.
//! * [`params`]: SMTPUTF8 and DSN parameters (xtext, NOTIFY, RET, ENVID,
//!   ORCPT), what a message keeps of them and passes on.
//! * [`proxy`]: the PROXY protocol v1/v2 header a load balancer sends
//!   before SMTP.

pub mod body;
pub mod capabilities;
pub mod client;
pub mod command;
pub mod downgrade;
pub mod header;
pub mod params;
pub mod proxy;
pub mod received;
pub mod reply;
pub mod sasl;
pub mod server;

/// What a TLS session negotiated, as a Received header and the logs name
/// it: `protocol` like `TLSv1.3`, `cipher` like `TLS13_AES_256_GCM_SHA384`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
}
