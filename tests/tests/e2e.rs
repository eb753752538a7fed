//! The one end-to-end test binary: every test starts the built `ecelerity`
//! (target/debug, or `ECELERITY_BIN_DIR`) in its own temporary directory on
//! its own ports, drives it with real clients and sinks, and checks what
//! arrives, what the mainlog says and what the operator tools print.
//! Build the binaries first: `tests/run` does (`cargo build --workspace --bins`).

#[path = "e2e/common.rs"]
mod common;

#[path = "e2e/api.rs"]
mod api;
#[path = "e2e/api_templates.rs"]
mod api_templates;
#[path = "e2e/auth.rs"]
mod auth;
#[path = "e2e/backpressure.rs"]
mod backpressure;
#[path = "e2e/bindings.rs"]
mod bindings;
#[path = "e2e/bounces.rs"]
mod bounces;
#[path = "e2e/chunking.rs"]
mod chunking;
#[path = "e2e/config.rs"]
mod config;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/console_ops.rs"]
mod console_ops;
#[path = "e2e/crash.rs"]
mod crash;
#[path = "e2e/dane.rs"]
mod dane;
#[path = "e2e/datasource.rs"]
mod datasource;
#[path = "e2e/delay.rs"]
mod delay;
#[path = "e2e/delivery.rs"]
mod delivery;
#[path = "e2e/diskfull.rs"]
mod diskfull;
#[path = "e2e/diskfull_heal.rs"]
mod diskfull_heal;
#[path = "e2e/dkim.rs"]
mod dkim;
#[path = "e2e/ec_ctl.rs"]
mod ec_ctl;
#[path = "e2e/engagement.rs"]
mod engagement;
#[path = "e2e/events.rs"]
mod events;
#[path = "e2e/hostile.rs"]
mod hostile;
#[path = "e2e/http.rs"]
mod http;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/logrotate.rs"]
mod logrotate;
#[path = "e2e/mta_sts.rs"]
mod mta_sts;
#[path = "e2e/mx.rs"]
mod mx;
#[path = "e2e/odd_servers.rs"]
mod odd_servers;
#[path = "e2e/outbound_strict.rs"]
mod outbound_strict;
#[path = "e2e/policy.rs"]
mod policy;
#[path = "e2e/proxy.rs"]
mod proxy;
#[path = "e2e/raw.rs"]
mod raw;
#[path = "e2e/relay.rs"]
mod relay;
#[path = "e2e/reload.rs"]
mod reload;
#[path = "e2e/retry.rs"]
mod retry;
#[path = "e2e/routes.rs"]
mod routes;
#[path = "e2e/scriptlet.rs"]
mod scriptlet;
#[path = "e2e/sendmail.rs"]
mod sendmail;
#[path = "e2e/sighup.rs"]
mod sighup;
#[path = "e2e/smuggling.rs"]
mod smuggling;
#[path = "e2e/soak.rs"]
mod soak;
#[path = "e2e/stream.rs"]
mod stream;
#[path = "e2e/systemd.rs"]
mod systemd;
#[path = "e2e/tls.rs"]
mod tls;
#[path = "e2e/utf8dsn.rs"]
mod utf8dsn;
