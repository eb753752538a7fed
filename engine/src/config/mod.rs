//! ecelerity.conf: reading, checking and answering questions about the
//! configuration, in Momentum's syntax (docs/configuration.md).
//! Owns: the typed, immutable `Config` built once at start-up (and on
//! reload) and shared read-only by every shard behind an `Arc`; the
//! built-in defaults; option fallback (binding_group::binding::domain down
//! to global); `dump` (ec_dump_config).
//! May call: the file system, to read the config file and its includes and
//! the system hostname; `ecelerity_policy::Cidr`.
//! Never: sockets, the spool, logging, or any shard state. Paths are kept as
//! written: the daemon resolves relative ones against its working directory.
//!
//! Layout: `lexer` (text to tokens), `parse` (tokens to a tree, includes
//! spliced in), `options` (one declarative table per option family, from
//! which the typed fields, scope rules, ranges, fallback and dump entries
//! are generated), `model` (tree to typed settings: scope walk, type and
//! range checks, fallback), `dump` (settings back to text), `error`.
//! Adding an option is one line in its family's table in `options` plus
//! its line in docs/configuration.md.
//! `Config::load` also refuses valid settings the engine does not act on
//! yet (`check_supported`), so nothing in the file is silently ignored.

mod datasource;
mod dkim;
mod dump;
mod error;
mod lexer;
mod model;
mod options;
mod parse;
mod reload;
mod scriptlet;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ecelerity_policy::Cidr;

pub use datasource::{parse_uri as parse_datasource_uri, DatasourceConfig, DatasourceUri};
pub use dkim::{is_within as dkim_is_within, Canon, Digest, DkimDomain, OpendkimConfig};
pub use error::{ConfigError, ConfigErrorKind, Scope};
pub use model::parse_webhook_target;
pub use options::{
    ControlListenerConfig, ControlPeer, DeliveryOptions, ListenerConfig, LogPaths, Security,
    WebhookConfig,
};
pub use reload::RESTART_OPTIONS;
pub use scriptlet::{ScriptConfig, ScriptletConfig, TimeoutOutcome};

// Built-in defaults and accepted ranges. Seconds and bytes are whole
// numbers in the file; ranges are inclusive.

pub const SPOOLBASE_DEFAULT: &str = "/var/spool/ecelerity";
pub const PIDFILE_DEFAULT: &str = "/var/run/ecelerity.pid";
/// Where the default `hostname` is read from (first line, trimmed).
pub const HOSTNAME_PATH: &str = "/proc/sys/kernel/hostname";
/// Longest `hostname` or `ehlo_hostname`: a domain name's limit, and what
/// the SMTP client accepts after EHLO (`smtp::client::EHLO_HOSTNAME_BYTES_MAX`).
pub const HOST_NAME_BYTES_MAX: usize = 255;
/// Longest `binding_header` name. RFC 5322 sets no limit but the line's;
/// a header naming a binding has a short name.
pub const HEADER_NAME_BYTES_MAX: usize = 64;
/// `hostname` when `HOSTNAME_PATH` cannot be read or is empty.
pub const HOSTNAME_FALLBACK: &str = "localhost";
/// Most shards (`shards`); 0 means one per CPU.
pub const SHARDS_MAX: u64 = 256;
pub const RELAY_HOSTS_DEFAULT: [&str; 2] = ["127.0.0.0/8", "::1"];

/// Largest `max_message_size` accepted (0 = unlimited: the engine still
/// applies its own ceiling).
pub const MESSAGE_SIZE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
pub const RECIPIENTS_PER_MESSAGE_MAX: u64 = 1_000_000;
pub const RECEPTIONS_PER_CONNECTION_MAX: u64 = 1_000_000;
pub const IDLE_TIME_SECONDS_DEFAULT: u64 = 300;
/// `max_line_length`: DATA text line bytes including CRLF. RFC 5321
/// 4.5.3.1.6 requires at least 1000, so less is refused.
pub const LINE_LENGTH_BYTES_DEFAULT: u64 = 1000;
pub const LINE_LENGTH_BYTES_MIN: u64 = 1000;
pub const LINE_LENGTH_BYTES_MAX: u64 = 1024 * 1024;
/// `server_max_inbound_connections`: open inbound SMTP connections over
/// all listeners and shards; past it a new connection gets `421 4.3.2`.
pub const SERVER_MAX_INBOUND_CONNECTIONS_DEFAULT: u64 = 20_000;
pub const SERVER_MAX_INBOUND_CONNECTIONS_MAX: u64 = 1_000_000;
/// `backlog_slowdown_entries`: entries ready for delivery but not yet taken
/// (the active queues of every shard) above which reception slows: each
/// accepted message's reply is delayed, up to `in_flow_delay_ms`.
pub const BACKLOG_SLOWDOWN_ENTRIES_DEFAULT: u64 = 100_000;
/// `backlog_refuse_entries`: above it new transactions get `452 4.3.1` and
/// new connections `421 4.3.2` until delivery catches up.
pub const BACKLOG_REFUSE_ENTRIES_DEFAULT: u64 = 1_000_000;
pub const BACKLOG_ENTRIES_MAX: u64 = 100_000_000;
/// `in_flow_delay_ms`: the longest delay of a reply while reception slows
/// (Postfix's `in_flow_delay`, 1 s by default).
pub const IN_FLOW_DELAY_MS_DEFAULT: u64 = 1_000;
pub const IN_FLOW_DELAY_MS_MAX: u64 = 60_000;
/// `spool_compaction_bytes_per_second`: the pace of spool compaction on
/// each shard (bytes of live messages copied forward per second); 0 turns
/// it off.
pub const SPOOL_COMPACTION_BYTES_PER_SECOND_DEFAULT: u64 =
    ecelerity_spool::COMPACTION_BYTES_PER_SECOND_DEFAULT;
pub const SPOOL_COMPACTION_BYTES_PER_SECOND_MAX: u64 = 1024 * 1024 * 1024;
/// `spool_compaction_live_percent`: a sealed spool segment whose live
/// messages take at most this share of a segment is compacted.
pub const SPOOL_COMPACTION_LIVE_PERCENT_DEFAULT: u64 =
    ecelerity_spool::COMPACTION_LIVE_PERCENT_DEFAULT as u64;
/// `max_inbound_connections_per_ip`: open connections from one client
/// address (peers in `relay_hosts` are exempt); 0 = unlimited. Postfix's
/// `smtpd_client_connection_count_limit` is 50 too.
pub const MAX_INBOUND_CONNECTIONS_PER_IP_DEFAULT: u64 = 50;
pub const MAX_INBOUND_CONNECTIONS_PER_IP_MAX: u64 = 1_000_000;
/// `max_auth_failures_per_ip`: failed AUTH attempts from one client
/// address within `auth_failure_window` before its AUTH is answered
/// `421 4.7.0` unchecked (every shard counts together).
pub const MAX_AUTH_FAILURES_PER_IP_DEFAULT: u64 = 5;
pub const MAX_AUTH_FAILURES_PER_IP_MAX: u64 = 1_000_000;
/// `auth_failure_window`: how long a failed AUTH counts against its address.
pub const AUTH_FAILURE_WINDOW_SECONDS_DEFAULT: u64 = 300;
/// `auth_failure_delay_ms`: a failed AUTH is answered this much later
/// (Postfix's `smtpd_error_sleep_time` idea: guessing gets slow).
pub const AUTH_FAILURE_DELAY_MS_DEFAULT: u64 = 1000;
pub const AUTH_FAILURE_DELAY_MS_MAX: u64 = 60_000;
/// `inbound_command_timeout`: from our last reply until the client's next
/// command line is complete, however the bytes trickle in.
pub const INBOUND_COMMAND_TIMEOUT_SECONDS_DEFAULT: u64 = 300;
/// `proxy_protocol_timeout` (Postfix's `smtpd_upstream_proxy_timeout`).
pub const PROXY_PROTOCOL_TIMEOUT_SECONDS_DEFAULT: u64 = 5;
/// `inbound_data_timeout`: from the 354 until the final `.` of DATA.
pub const INBOUND_DATA_TIMEOUT_SECONDS_DEFAULT: u64 = 900;

pub const RETRY_INTERVAL_SECONDS_DEFAULT: u64 = 1200;
pub const MAX_RETRY_INTERVAL_SECONDS_DEFAULT: u64 = 43_200;
pub const MESSAGE_EXPIRATION_SECONDS_DEFAULT: u64 = 86_400;
/// `delay_dsn_retry_interval`: Momentum's default, one hour.
pub const DELAY_DSN_RETRY_INTERVAL_SECONDS_DEFAULT: u64 = 3_600;
/// `delay_dsn_max_retry_interval`: Momentum's default (accepted, refused
/// as not supported yet).
pub const DELAY_DSN_MAX_RETRY_INTERVAL_SECONDS_DEFAULT: u64 = 43_200;
/// Longest retry interval or message expiration accepted: one year.
pub const INTERVAL_SECONDS_MAX: u64 = 365 * 86_400;
/// Largest `max_retries = N`, and the cap on the count `auto` derives.
pub const RETRIES_MAX: u64 = 100_000;
pub const MAX_OUTBOUND_CONNECTIONS_DEFAULT: u64 = 32;
pub const OUTBOUND_CONNECTIONS_MAX: u64 = 20_000;
pub const MAX_RECIPIENTS_PER_BATCH_DEFAULT: u64 = 100;
pub const RECIPIENTS_PER_BATCH_MAX: u64 = 10_000;
/// `max_deliveries_per_connection`: 0 = unlimited.
pub const DELIVERIES_PER_CONNECTION_MAX: u64 = 1_000_000;
/// `server_max_outbound_connections`: Momentum's sample configuration value.
pub const SERVER_MAX_OUTBOUND_CONNECTIONS_DEFAULT: u64 = 20_000;
pub const SERVER_MAX_OUTBOUND_CONNECTIONS_MAX: u64 = 1_000_000;
/// `host_failure_retry`: how long a host that refused or timed out a
/// connection is skipped, for every domain that uses it.
pub const HOST_FAILURE_RETRY_SECONDS_DEFAULT: u64 = 120;
/// Largest N and S of a throttle rate `"N/S"`.
pub const THROTTLE_COUNT_MAX: u64 = 1_000_000;
pub const THROTTLE_SECONDS_MAX: u64 = 86_400;
/// Most `outbound_throttle_*` settings in one configuration: each is a
/// token bucket of its own in the engine's fixed table.
pub const THROTTLE_BUCKETS_MAX: u32 = 65_536;
/// `delivery_shards`: one shard per domain unless tuned.
pub const DELIVERY_SHARDS_DEFAULT: u64 = 1;
/// Most shards a domain may be spread over (the engine's shard ceiling).
pub const DELIVERY_SHARDS_MAX: u64 = 256;
/// How long an idle outbound connection waits for more mail.
pub const IDLE_TIMEOUT_SECONDS_DEFAULT: u64 = 5;
/// connect, EHLO, MAIL, RCPT and DATA reply timeouts.
pub const COMMAND_TIMEOUT_SECONDS_DEFAULT: u64 = 300;
/// Wait for the reply after the final `.` of DATA.
pub const BODY_TIMEOUT_SECONDS_DEFAULT: u64 = 600;
/// Longest timeout accepted: one day.
pub const TIMEOUT_SECONDS_MAX: u64 = 86_400;
pub const REMOTE_SMTP_PORT_DEFAULT: u16 = 25;
/// `prohibited_hosts` unless set: "this network" (0.0.0.0/8, which Linux
/// routes to the host itself), multicast and reserved IPv4, the
/// unspecified and multicast IPv6 addresses. Loopback stays allowed (the
/// tests deliver to sinks on 127.0.0.x); a production host should add
/// 127.0.0.0/8 and ::1 (docs/configuration.md).
pub const PROHIBITED_HOSTS_DEFAULT: &[&str] = &[
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "ff00::/8",
];

/// Control socket mode. Momentum uses 0660; we refuse the group by default.
pub const FILE_MODE_DEFAULT: u32 = 0o600;
pub const FILE_MODE_MAX: u32 = 0o7777;
/// An idle console connection is closed after this long (Momentum's
/// Control_Listener `timeout`).
pub const CONSOLE_TIMEOUT_SECONDS_DEFAULT: u64 = 60;
pub const LOGGER_NAME_DEFAULT: &str = "ec_logger";
pub const MAINLOG_DEFAULT: &str = "/var/log/ecelerity/mainlog.ec";
pub const REJECTLOG_DEFAULT: &str = "/var/log/ecelerity/rejectlog.ec";
pub const PANICLOG_DEFAULT: &str = "/var/log/ecelerity/paniclog.ec";
/// Momentum's bounce_logger default; here an `ec_logger` option.
pub const BOUNCELOG_DEFAULT: &str = "/var/log/ecelerity/bouncelog.ec";
/// `heartbeat` (ec_logger): seconds between two mainlog `M` lines, as
/// Momentum; 0 writes none.
pub const HEARTBEAT_SECONDS_DEFAULT: u64 = 60;
pub const HEARTBEAT_SECONDS_MAX: u64 = 86_400;

/// Event types a `webhook` may ask for (`events`), as SparkPost names them.
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "injection",
    "delivery",
    "delay",
    "bounce",
    "policy_rejection",
    "open",
    "click",
];
/// Momentum's event groupings (the object under `msys`): a webhook asking
/// for one gets every type in it.
pub const WEBHOOK_EVENT_GROUPINGS: &[&str] = &["message_event", "track_event"];
/// Events per webhook POST: default and maximum of `batch_size`.
pub const WEBHOOK_BATCH_SIZE_DEFAULT: u32 = 100;
pub const WEBHOOK_BATCH_SIZE_MAX: u64 = 10_000;
/// `tracking_domain` unless configured (Momentum's; change it).
pub const TRACKING_DOMAIN_DEFAULT: &str = "localhost:8080";
/// `tracking_link_expiry`: one year unless configured, ten at most.
pub const TRACKING_LINK_EXPIRY_SECONDS_DEFAULT: u64 = 31_536_000;
pub const TRACKING_LINK_EXPIRY_SECONDS_MAX: u64 = 10 * 31_536_000;
/// `max_metadata_len`: Momentum's 1000 bytes; at most what a token holds.
pub const MAX_METADATA_LEN_DEFAULT: u64 = 1000;
pub const MAX_METADATA_LEN_MAX: u64 = ecelerity_msggen::tracking::METADATA_BYTES_MAX as u64;
/// How far (bytes of event log) a webhook may lag before its oldest events
/// are skipped: default and bounds of `max_backlog_bytes`.
pub const WEBHOOK_BACKLOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
pub const WEBHOOK_BACKLOG_BYTES_MIN: u64 = 1000;
pub const WEBHOOK_BACKLOG_BYTES_MAX: u64 = 1 << 40;

/// The binding (and binding group) that exists without being declared and
/// takes all mail not assigned elsewhere.
pub const DEFAULT_BINDING: &str = "default";

const _: () = assert!(RECIPIENTS_PER_MESSAGE_MAX <= u32::MAX as u64);
const _: () = assert!(RECEPTIONS_PER_CONNECTION_MAX <= u32::MAX as u64);
const _: () = assert!(LINE_LENGTH_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(LINE_LENGTH_BYTES_MIN <= LINE_LENGTH_BYTES_DEFAULT);
const _: () = assert!(SERVER_MAX_INBOUND_CONNECTIONS_MAX <= u32::MAX as u64);
const _: () = assert!(MAX_INBOUND_CONNECTIONS_PER_IP_MAX <= u32::MAX as u64);
const _: () = assert!(SERVER_MAX_INBOUND_CONNECTIONS_DEFAULT <= SERVER_MAX_INBOUND_CONNECTIONS_MAX);
const _: () = assert!(MAX_INBOUND_CONNECTIONS_PER_IP_DEFAULT <= MAX_INBOUND_CONNECTIONS_PER_IP_MAX);
const _: () = assert!(OUTBOUND_CONNECTIONS_MAX <= u32::MAX as u64);
const _: () = assert!(RECIPIENTS_PER_BATCH_MAX <= u32::MAX as u64);
const _: () = assert!(RETRIES_MAX <= u32::MAX as u64);
const _: () = assert!(THROTTLE_COUNT_MAX <= u32::MAX as u64);
const _: () = assert!(THROTTLE_SECONDS_MAX <= u32::MAX as u64);
const _: () = assert!(SERVER_MAX_OUTBOUND_CONNECTIONS_MAX <= u32::MAX as u64);
const _: () = assert!(DELIVERIES_PER_CONNECTION_MAX <= u32::MAX as u64);
const _: () = assert!(RETRY_INTERVAL_SECONDS_DEFAULT <= MAX_RETRY_INTERVAL_SECONDS_DEFAULT);

/// The configuration used when no file is given: a development setup whose
/// paths are relative to the working directory.
pub const EMBEDDED_DEFAULT: &str = r#"# ecelerity built-in configuration (used when no config file is given).
# Paths are relative to the daemon's working directory.
spoolbase = "var/spool"
pidfile = "var/run/ecelerity.pid"
relay_hosts = ( "127.0.0.0/8" "::1" )

ESMTP_Listener {
  Listen "127.0.0.1:2525" { }
}

Control_Listener {
  Listen "var/run/ecelerity.sock" {
    File_Mode = 0600
  }
}

ec_logger "ec_logger" {
  mainlog = "var/log/mainlog.ec"
  rejectlog = "var/log/rejectlog.ec"
  paniclog = "var/log/paniclog.ec"
}
"#;

/// The parsed, checked configuration. Immutable; cheap to share behind an
/// `Arc`. Two configs are equal when their effective settings are, wherever
/// they were read from.
#[derive(Debug, Clone)]
pub struct Config {
    source: Option<PathBuf>,
    settings: model::Settings,
    /// The first setting the engine does not act on yet; not part of
    /// equality (it is derived from the settings and where they were read).
    unsupported: Option<ConfigError>,
    /// The `auth_password_file` of every listener that authenticates,
    /// read by `load` (empty after `parse` alone).
    passwords: crate::auth::PasswordFiles,
}

impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        self.settings == other.settings
    }
}

impl Config {
    /// Reads and checks `path` and everything it includes, and refuses what
    /// the engine does not act on yet (`check_supported`): this is what the
    /// daemon and the tools run on.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let unreadable = |reason: String| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            kind: ConfigErrorKind::Unreadable { reason },
        };
        let size = std::fs::metadata(path)
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        if size > parse::CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError {
                file: path.to_path_buf(),
                line: 0,
                kind: ConfigErrorKind::FileTooLarge {
                    max_bytes: parse::CONFIG_FILE_BYTES_MAX,
                },
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        let mut config = Config::parse(&text, path)?;
        config.check_supported()?;
        config.passwords = crate::auth::PasswordFiles::load(config.esmtp_listeners(), path)?;
        Ok(config)
    }

    /// Checks `text` as if read from `file` against Momentum's language:
    /// scopes, names, types and ranges. Includes are resolved against
    /// `file`'s directory. The result may hold settings the engine does not
    /// act on yet; `load` (and a reload) must also call `check_supported`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let tree = parse::parse_tree(text, file)?;
        let built = model::build(&tree)?;
        Ok(Config {
            source: Some(file.to_path_buf()),
            settings: built.settings,
            unsupported: built.unsupported,
            passwords: Default::default(),
        })
    }

    /// `EMBEDDED_DEFAULT`, parsed.
    pub fn embedded_default() -> Config {
        let parsed = Config::parse(EMBEDDED_DEFAULT, Path::new("<embedded default>"));
        // A unit test proves the embedded text parses; failing here is a
        // build defect, not an operator error.
        let mut config = parsed.expect("EMBEDDED_DEFAULT parses");
        config.source = None;
        config
    }

    /// `Err` naming the first setting, in reading order, that is valid
    /// ecelerity.conf but that the engine would ignore today: an option
    /// marked `not_yet` in the table (none at the moment). Accepting those
    /// would silently do less than the file says. Also a listener whose
    /// TLS settings do not add up (a certificate without its key,
    /// `tls = required` without either), named by its Listen line.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        match &self.unsupported {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The file this was read from; `None` for the embedded default.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn spoolbase(&self) -> &Path {
        &self.settings.global.spoolbase
    }

    /// The PostgreSQL `Datasource` holding the API's templates and lists
    /// (`None`: SQLite under the spoolbase).
    pub fn api_store_datasource(&self) -> Option<&str> {
        self.settings.global.api_store_datasource.as_deref()
    }

    pub fn hostname(&self) -> &str {
        &self.settings.global.hostname
    }

    /// Number of shards; 0 means one per CPU.
    pub fn shards(&self) -> usize {
        self.settings.global.shards as usize
    }

    pub fn pidfile(&self) -> &Path {
        &self.settings.global.pidfile
    }

    /// The engagement-tracking options (`open_tracking_enabled`,
    /// `click_tracking_enabled`, `tracking_domain`, the two schemes,
    /// `tracking_link_expiry`, `click_tracking_include_metadata`,
    /// `max_metadata_len`), checked when the file was read.
    pub fn tracking_options(&self) -> ecelerity_msggen::tracking::TrackingOptions {
        use ecelerity_msggen::tracking::{Scheme, TrackingOptions};
        let g = &self.settings.global;
        let scheme = |s: &str| {
            if s == "https" {
                Scheme::Https
            } else {
                Scheme::Http
            }
        };
        TrackingOptions {
            open_tracking_enabled: g.open_tracking_enabled,
            click_tracking_enabled: g.click_tracking_enabled,
            open_tracking_scheme: scheme(&g.open_tracking_scheme),
            click_tracking_scheme: scheme(&g.click_tracking_scheme),
            tracking_domain: g.tracking_domain.clone(),
            tracking_link_expiry: g.tracking_link_expiry.as_secs(),
            click_tracking_include_metadata: g.click_tracking_include_metadata,
            max_metadata_len: g.max_metadata_len as usize,
        }
    }

    /// `server_max_inbound_connections`: the cap on open inbound SMTP
    /// connections over every listener and shard.
    pub fn server_max_inbound_connections(&self) -> u32 {
        self.settings.global.server_max_inbound_connections
    }

    /// The reception back-pressure limits: (`backlog_slowdown_entries`,
    /// `backlog_refuse_entries`, `in_flow_delay_ms`).
    pub fn backlog(&self) -> (u64, u64, u64) {
        let g = &self.settings.global;
        (
            g.backlog_slowdown_entries,
            g.backlog_refuse_entries,
            g.in_flow_delay_ms,
        )
    }

    /// `spool_compaction_bytes_per_second` and
    /// `spool_compaction_live_percent`: how each shard compacts its spool.
    pub fn spool_compaction(&self) -> ecelerity_spool::CompactionOptions {
        let g = &self.settings.global;
        ecelerity_spool::CompactionOptions {
            bytes_per_second: g.spool_compaction_bytes_per_second,
            live_percent_max: g.spool_compaction_live_percent as u32,
        }
    }

    /// `nameservers`: the DNS servers delivery asks, in order; empty means
    /// the system's (/etc/resolv.conf).
    /// `max_outbound_connections` of a `host` scope named `host` (an MX
    /// host or gateway name, or an address as text): open connections per
    /// address of that host, over every domain and shard. `None`:
    /// unlimited (no such scope, or it does not set the option).
    pub fn host_max_outbound_connections(&self, host: &str) -> Option<u32> {
        if self.settings.hosts.is_empty() {
            return None;
        }
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        self.settings.hosts.get(&key)?.max_outbound_connections
    }

    /// Cap on open outbound connections over every shard.
    pub fn server_max_outbound_connections(&self) -> u32 {
        self.settings.global.server_max_outbound_connections
    }

    pub fn nameservers(&self) -> &[std::net::SocketAddr] {
        &self.settings.global.nameservers
    }

    /// `prohibited_hosts`: addresses delivery never connects to.
    pub fn prohibited_hosts(&self) -> &[Cidr] {
        &self.settings.global.prohibited_hosts
    }

    /// The global `relay_hosts` (listeners carry their own resolved copy).
    pub fn relay_hosts(&self) -> &[Cidr] {
        &self.settings.inbound.relay_hosts
    }

    /// Every `ESMTP_Listener` `Listen`, in file order, fallback applied;
    /// disabled ones included (see `enabled`).
    /// The password file read for a listener's `auth_password_file`.
    pub fn password_file(&self, path: &Path) -> Option<&crate::auth::PasswordFile> {
        self.passwords.get(path).map(|file| &**file)
    }

    pub fn esmtp_listeners(&self) -> &[ListenerConfig] {
        &self.settings.esmtp_listeners
    }

    pub fn control_listeners(&self) -> &[ControlListenerConfig] {
        &self.settings.control_listeners
    }

    /// Every `HTTP_Listener` `Listen` address (served on every shard).
    pub fn http_listeners(&self) -> &[std::net::SocketAddr] {
        &self.settings.http_listeners
    }

    pub fn logs(&self) -> &LogPaths {
        &self.settings.logs
    }

    /// The `webhook` stanzas, in file order.
    pub fn webhooks(&self) -> &[WebhookConfig] {
        &self.settings.webhooks
    }

    /// The `Security` stanza, if one was written.
    pub fn security(&self) -> Option<&Security> {
        self.settings.security.as_ref()
    }

    /// Outbound options for mail to `domain` sent from `binding`, after
    /// fallback. An unknown binding means the default binding; `domain`
    /// matches case-insensitively.
    /// The `opendkim` module stanza, if configured.
    pub fn opendkim(&self) -> Option<&OpendkimConfig> {
        self.settings.opendkim.as_ref()
    }

    /// The `Datasource` stanzas, in file order.
    pub fn datasources(&self) -> &[DatasourceConfig] {
        &self.settings.datasources
    }

    /// The `scriptlet` module stanza (Lua policy), if configured.
    pub fn scriptlet(&self) -> Option<&ScriptletConfig> {
        self.settings.scriptlet.as_ref()
    }

    pub fn delivery(&self, binding: &str, domain: &str) -> DeliveryOptions {
        self.settings.delivery(binding, domain)
    }

    /// The group `binding` belongs to; the default binding's group for an
    /// unknown binding.
    pub fn binding_group_of(&self, binding: &str) -> &str {
        self.settings.binding_group_of(binding)
    }

    /// Names of the configured bindings (the default binding included).
    pub fn bindings(&self) -> impl Iterator<Item = &str> {
        self.settings.bindings.keys().map(String::as_str)
    }

    /// The effective configuration in ecelerity.conf syntax: every global
    /// option with its value (defaults included), then Security, listeners,
    /// the logger, binding groups, bindings and domains as configured.
    /// Parsing the result gives an equal `Config`.
    pub fn dump(&self) -> String {
        dump::dump(&self.settings, self.source.as_deref())
    }

    /// Momentum's `config eval [scope ...] <option>`: `Option = value` in
    /// effect in the scope (fallback applied), or why not.
    pub fn eval(&self, words: &[&str]) -> Result<String, String> {
        dump::eval(&self.settings, words)
    }
}

/// Momentum's `tls`: on a listener, whether STARTTLS is offered (`no`),
/// offered (`ifavailable`) or demanded before MAIL, RCPT, DATA and AUTH
/// (`required`); outbound, whether delivery uses STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    No,
    IfAvailable,
    Required,
}

impl TlsMode {
    pub(crate) fn parse(text: &str) -> Option<TlsMode> {
        [TlsMode::No, TlsMode::IfAvailable, TlsMode::Required]
            .into_iter()
            .find(|mode| mode.to_string().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::No => "no",
            TlsMode::IfAvailable => "ifavailable",
            TlsMode::Required => "required",
        })
    }
}

/// Momentum's `tls_verify` (outbound): how a server certificate is
/// checked. `no`: not at all; `ca`: signed by `tls_ca` (or the system's
/// roots); `host`: `ca` and the name matches the host connected to, else
/// the delivery fails; `optional`: checked like `host`, the result only
/// logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVerify {
    No,
    Ca,
    Host,
    Optional,
}

impl TlsVerify {
    pub(crate) fn parse(text: &str) -> Option<TlsVerify> {
        [
            TlsVerify::No,
            TlsVerify::Ca,
            TlsVerify::Host,
            TlsVerify::Optional,
        ]
        .into_iter()
        .find(|v| v.to_string().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for TlsVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVerify::No => "no",
            TlsVerify::Ca => "ca",
            TlsVerify::Host => "host",
            TlsVerify::Optional => "optional",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRetries {
    /// Derive a count from `message_expiration` and the back-off.
    Auto,
    /// Only `message_expiration` limits retries.
    None,
    /// Fail after this many retries (or at expiration, if sooner).
    Count(u32),
}

impl fmt::Display for MaxRetries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxRetries::Auto => f.write_str("auto"),
            MaxRetries::None => f.write_str("none"),
            MaxRetries::Count(n) => write!(f, "{n}"),
        }
    }
}

/// A static smarthost. `host` is a name or an IP address (IPv6 without
/// brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub host: String,
    /// As written; `None` means `remote_smtp_port`.
    pub port: Option<u16>,
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host.contains(':'), self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (true, None) => write!(f, "[{}]", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (false, None) => write!(f, "{}", self.host),
        }
    }
}

/// Most entries in one `routes` list.
pub const ROUTES_ENTRIES_MAX: usize = 32;
/// The `routes` item that stands for the domain's own MX hosts.
pub const ROUTE_MX: &str = "__mx__";

/// One item of a `routes` list (Momentum's syntax): `"__mx__"`, a bare
/// host name or IP address, or `"smtp://host?pref=P&ttl=T&port=O&type=mx|a"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `__mx__`: the domain's MX hosts from DNS (or its own address
    /// without MX).
    Mx,
    Host(RouteHost),
}

/// A host of a `routes` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHost {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    /// `pref=`: lower is tried first. `None`: the item's position in the
    /// list (0 for the first).
    pub preference: Option<u16>,
    /// `port=`; `None` means `remote_smtp_port`.
    pub port: Option<u16>,
    /// `type=mx`: the host is a mail domain whose MX hosts are used;
    /// `type=a` (the default): the host's own addresses.
    pub mx_lookup: bool,
    /// `ttl=` as written. Momentum's route cache keeps an item this long;
    /// ecelerity plans every connection from the live configuration and
    /// the DNS cache, so it has no effect (docs/configuration.md).
    pub ttl_seconds: Option<u32>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = match self {
            Route::Mx => return f.write_str(ROUTE_MX),
            Route::Host(h) => h,
        };
        let host = if h.host.contains(':') {
            format!("[{}]", h.host)
        } else {
            h.host.clone()
        };
        let mut query = Vec::new();
        if let Some(pref) = h.preference {
            query.push(format!("pref={pref}"));
        }
        if let Some(ttl) = h.ttl_seconds {
            query.push(format!("ttl={ttl}"));
        }
        if let Some(port) = h.port {
            query.push(format!("port={port}"));
        }
        if h.mx_lookup {
            query.push("type=mx".to_string());
        }
        if query.is_empty() {
            return f.write_str(&host);
        }
        write!(f, "smtp://{host}?{}", query.join("&"))
    }
}

/// A throttle rate in Momentum's syntax: `"N"` is N per second, `"N/S"`
/// N per S seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At least 1: a rate of 0 is no throttle.
    pub count: u32,
    /// At least 1.
    pub per_seconds: u32,
}

impl Rate {
    /// The time between two events at this rate, in microseconds (at
    /// least 1).
    pub fn interval_us(self) -> u64 {
        assert!(self.count > 0 && self.per_seconds > 0);
        (u64::from(self.per_seconds) * 1_000_000 / u64::from(self.count)).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per_seconds)
    }
}

/// An `outbound_throttle_*` setting as a queue resolved it. Throttles are
/// by reference (Momentum): every (binding, domain) that inherits one
/// setting shares its token bucket, so a throttle set in a binding_group
/// limits everything under it together, and one set in a domain scope
/// that domain. `bucket` names the setting: each occurrence in the file
/// gets its own, in reading order.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// `None`: unlimited (unset, or set to 0).
    pub rate: Option<Rate>,
    /// Below `THROTTLE_BUCKETS_MAX`; meaningless without a rate.
    pub bucket: u32,
}

impl Throttle {
    pub const UNLIMITED: Throttle = Throttle {
        rate: None,
        bucket: 0,
    };
}

/// Two throttles are the same setting when their rates are: a dump read
/// back numbers its buckets afresh.
impl PartialEq for Throttle {
    fn eq(&self, other: &Throttle) -> bool {
        self.rate == other.rate
    }
}

impl Eq for Throttle {}

impl fmt::Display for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate {
            Some(rate) => rate.fmt(f),
            None => f.write_str("0"),
        }
    }
}

impl DeliveryOptions {
    /// Delay before the next attempt after `attempts_so_far` attempts:
    /// R, 2R, 4R, ... capped at `max_retry_interval` (0 attempts counts as 1).
    pub fn retry_delay(&self, attempts_so_far: u32) -> Duration {
        // 2^31 × any retry_interval saturates or passes the cap anyway.
        let doublings = attempts_so_far.saturating_sub(1).min(31);
        let factor = 1u32 << doublings;
        self.retry_interval
            .saturating_mul(factor)
            .min(self.max_retry_interval)
    }

    /// Whether a message that has had `attempts_so_far` attempts (the first
    /// one included) may not be retried again. `message_expiration` is
    /// checked separately by the caller.
    pub fn retries_exhausted(&self, attempts_so_far: u32) -> bool {
        match self.max_retries {
            MaxRetries::Count(retries) => attempts_so_far > retries,
            MaxRetries::None => false,
            MaxRetries::Auto => attempts_so_far > self.auto_retries(),
        }
    }

    /// The retry count `max_retries = auto` stands for: how many back-off
    /// delays fit, one after another, in `message_expiration`. At most
    /// `RETRIES_MAX`.
    pub fn auto_retries(&self) -> u32 {
        let mut remaining = self.message_expiration;
        let mut retries: u32 = 0;
        // Delays double until they hit the cap (or saturate), at most ~32
        // steps; from then on they are constant and the rest is a division.
        loop {
            let delay = self.retry_delay(retries + 1);
            if delay.is_zero() {
                return RETRIES_MAX as u32;
            }
            if delay > remaining {
                return retries;
            }
            if self.retry_delay(retries + 2) == delay {
                let more = remaining.as_nanos() / delay.as_nanos();
                let total = u128::from(retries) + more;
                return total.min(u128::from(RETRIES_MAX)) as u32;
            }
            remaining -= delay;
            retries += 1;
            if u64::from(retries) >= RETRIES_MAX {
                return RETRIES_MAX as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn parse(text: &str) -> Config {
        match Config::parse(text, Path::new("test.conf")) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        }
    }

    fn error(text: &str) -> String {
        Config::parse(text, Path::new("test.conf"))
            .unwrap_err()
            .to_string()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A fresh directory under the system temp dir for include tests.
    fn temp_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ecelerity-config-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Sets every option at least once, in upper, lower and mixed case,
    /// with both comment kinds and quoted and bare values.
    const FULL: &str = r#"
# ecelerity.conf used by the tests
spoolbase = "/srv/spool"
HOSTNAME = mta1.example.net      # bare word
Shards = 4
pidfile = "run/ec.pid"
relay_hosts = ( "10.0.0.0/8" 192.168.0.0/16 "::1" )
max_message_size = 20971520
max_recipients_per_message = 500
idle_time = 120
max_receptions_per_connection = 50
max_line_length = 2000
server_max_inbound_connections = 9000
max_inbound_connections_per_ip = 7
inbound_command_timeout = 40
inbound_data_timeout = 400
nameservers = ( "127.0.0.1:5353" "[::1]:53" 192.0.2.53 )
/* outbound, global */
gateway = "smarthost.example.net:2525"
retry_interval = 600
max_retry_interval = 7200
max_retries = 10
message_expiration = 604800
max_outbound_connections = 20
max_recipients_per_batch = 50
idle_timeout = 10
connect_timeout = 30
ehlo_timeout = 31
mailfrom_timeout = 32
rcptto_timeout = 33
data_timeout = 34
body_timeout = 35
remote_smtp_port = 2526
ehlo_hostname = "out.example.net"
bind_address = 192.0.2.1
generate_bounces = false
generate_delay_dsn = true
delay_dsn_retry_interval = 1800
max_deliveries_per_connection = 25
outbound_throttle_messages = "100/60"
outbound_throttle_connections = 5
host_failure_retry = 90
server_max_outbound_connections = 900

Security {
  user = ecuser
  Group = "ecgroup"
}

esmtp_listener {
  max_message_size = 1000000
  Listen ":25" {
    Enable = no
  }
  LISTEN "[::1]:2525" {
    relay_hosts = ( "fd00::/8" )
    max_recipients_per_message = 5
    idle_time = 60
    max_receptions_per_connection = 3
    max_line_length = 1000
    max_message_size = 0
    max_inbound_connections_per_ip = 0
    inbound_command_timeout = 30
    enable = "on"
  }
}

Control_Listener {
  Listen "/var/run/ec.sock" { File_Mode = 0660 }
  Listen "ctl.sock" { }
}

ec_logger "ec_logger" {
  mainlog = "/logs/main.ec"
  rejectlog = "/logs/reject.ec"
  bouncelog = "/logs/bounce.ec"
  paniclog = "/logs/panic.ec"
}

Binding_Group "marketing" {
  max_outbound_connections = 10
  bind_address = "192.0.2.10"
  domain "Example.COM" { max_outbound_connections = 2 }
  binding "mkt1" {
    ehlo_hostname = "mkt1.example.net"
    bind_address = "2001:db8::11"
    domain "example.com" { max_recipients_per_batch = 7 }
  }
  binding "mkt2" { }
}

binding "tx" {
  max_retries = none
  domain "example.org" { gateway = "[2001:db8::25]" }
}

domain "example.com" {
  retry_interval = 60
  max_retries = auto
}
"#;

    #[test]
    fn embedded_default_parses_and_has_the_documented_values() {
        let config = Config::embedded_default();
        assert_eq!(config.source(), None);
        assert_eq!(config.spoolbase(), Path::new("var/spool"));
        assert_eq!(config.pidfile(), Path::new("var/run/ecelerity.pid"));
        assert_eq!(config.relay_hosts(), &cidrs(&["127.0.0.0/8", "::1"])[..]);
        assert_eq!(config.shards(), 0);
        assert_eq!(config.esmtp_listeners().len(), 1);
        let listener = &config.esmtp_listeners()[0];
        assert_eq!(listener.address, "127.0.0.1:2525".parse().unwrap());
        assert!(listener.enabled);
        assert_eq!(listener.max_line_length_bytes, 1000);
        assert_eq!(
            config.control_listeners(),
            &[ControlListenerConfig {
                path: "var/run/ecelerity.sock".into(),
                tcp: None,
                peers: Vec::new(),
                file_mode: 0o600,
                timeout: Duration::from_secs(60),
            }]
        );
        assert_eq!(config.logs().paniclog, Path::new("var/log/paniclog.ec"));
        assert_eq!(config.security(), None);
        let delivery = config.delivery("default", "example.com");
        assert_eq!(delivery.gateway, None);
        assert_eq!(delivery, DeliveryOptions::builtin(config.hostname()));
    }

    #[test]
    fn a_file_without_settings_gets_the_builtin_defaults() {
        let config = parse("# nothing\n");
        assert_eq!(config.spoolbase(), Path::new(SPOOLBASE_DEFAULT));
        assert_eq!(config.pidfile(), Path::new(PIDFILE_DEFAULT));
        assert!(!config.hostname().is_empty());
        assert_eq!(config.relay_hosts(), &cidrs(&RELAY_HOSTS_DEFAULT)[..]);
        assert!(config.esmtp_listeners().is_empty());
        assert!(config.control_listeners().is_empty());
        assert_eq!(config.logs().mainlog, Path::new(MAINLOG_DEFAULT));
        assert_eq!(config.logs().rejectlog, Path::new(REJECTLOG_DEFAULT));
        let delivery = config.delivery("default", "x.example");
        assert_eq!(delivery.retry_interval, secs(1200));
        assert_eq!(delivery.max_retry_interval, secs(43_200));
        assert_eq!(delivery.max_retries, MaxRetries::Auto);
        assert_eq!(delivery.message_expiration, secs(86_400));
        assert_eq!(delivery.max_outbound_connections, 32);
        assert_eq!(delivery.max_recipients_per_batch, 100);
        assert_eq!(delivery.idle_timeout, secs(5));
        assert_eq!(delivery.connect_timeout, secs(300));
        assert_eq!(delivery.data_timeout, secs(300));
        assert_eq!(delivery.body_timeout, secs(600));
        assert_eq!(delivery.remote_smtp_port, 25);
        assert_eq!(delivery.ehlo_hostname, config.hostname());
        assert_eq!(delivery.bind_address, None);
    }

    #[test]
    fn full_example_sets_every_global_listener_logger_and_security_option() {
        let config = parse(FULL);
        assert_eq!(config.source(), Some(Path::new("test.conf")));
        assert_eq!(config.spoolbase(), Path::new("/srv/spool"));
        assert_eq!(config.hostname(), "mta1.example.net");
        assert_eq!(config.shards(), 4);
        assert_eq!(config.pidfile(), Path::new("run/ec.pid"));
        assert_eq!(config.server_max_inbound_connections(), 9000);
        assert_eq!(config.server_max_outbound_connections(), 900);
        assert_eq!(
            config.relay_hosts(),
            &cidrs(&["10.0.0.0/8", "192.168.0.0/16", "::1"])[..]
        );
        assert_eq!(
            config.security(),
            Some(&Security {
                user: Some("ecuser".into()),
                group: Some("ecgroup".into())
            })
        );
        assert_eq!(
            config.logs(),
            &LogPaths {
                mainlog: "/logs/main.ec".into(),
                rejectlog: "/logs/reject.ec".into(),
                paniclog: "/logs/panic.ec".into(),
                bouncelog: "/logs/bounce.ec".into(),
                acctlog: None,
                heartbeat: Duration::from_secs(HEARTBEAT_SECONDS_DEFAULT),
                eventlog: None,
            }
        );
        assert_eq!(
            config.control_listeners(),
            &[
                ControlListenerConfig {
                    path: "/var/run/ec.sock".into(),
                    tcp: None,
                    peers: Vec::new(),
                    file_mode: 0o660,
                    timeout: Duration::from_secs(60),
                },
                ControlListenerConfig {
                    path: "ctl.sock".into(),
                    tcp: None,
                    peers: Vec::new(),
                    file_mode: 0o600,
                    timeout: Duration::from_secs(60),
                },
            ]
        );
        let listeners = config.esmtp_listeners();
        assert_eq!(listeners.len(), 2);
        // Listen ":25": everything from global except the listener-level size.
        assert_eq!(
            listeners[0],
            ListenerConfig {
                address: "0.0.0.0:25".parse().unwrap(),
                enabled: false,
                relay_hosts: cidrs(&["10.0.0.0/8", "192.168.0.0/16", "::1"]),
                max_message_size_bytes: 1_000_000,
                max_recipients_per_message: 500,
                idle_time: secs(120),
                max_receptions_per_connection: 50,
                max_line_length_bytes: 2000,
                max_inbound_connections_per_ip: 7,
                inbound_command_timeout: secs(40),
                inbound_data_timeout: secs(400),
                binding_header: None,
                ..ListenerConfig::builtin()
            }
        );
        assert_eq!(
            listeners[1],
            ListenerConfig {
                address: "[::1]:2525".parse().unwrap(),
                enabled: true,
                relay_hosts: cidrs(&["fd00::/8"]),
                max_message_size_bytes: 0,
                max_recipients_per_message: 5,
                idle_time: secs(60),
                max_receptions_per_connection: 3,
                max_line_length_bytes: 1000,
                max_inbound_connections_per_ip: 0,
                inbound_command_timeout: secs(30),
                inbound_data_timeout: secs(400),
                binding_header: None,
                ..ListenerConfig::builtin()
            }
        );
    }

    #[test]
    fn full_example_sets_every_outbound_option_globally() {
        let config = parse(FULL);
        let servers: Vec<String> = config.nameservers().iter().map(|a| a.to_string()).collect();
        assert_eq!(servers, ["127.0.0.1:5353", "[::1]:53", "192.0.2.53:53"]);
        assert!(
            parse("").nameservers().is_empty(),
            "the system's by default"
        );
        assert_eq!(
            error("nameservers = ( 127.0.0.1:0 )"),
            "test.conf:1: `nameservers`: `127.0.0.1:0` is not an IP address with an optional \
             port, such as \"127.0.0.1:5353\", \"[::1]:53\" or \"192.0.2.1\""
        );
        let delivery = config.delivery("default", "elsewhere.example");
        assert_eq!(
            delivery,
            DeliveryOptions {
                gateway: Some(Gateway {
                    host: "smarthost.example.net".into(),
                    port: Some(2525)
                }),
                retry_interval: secs(600),
                max_retry_interval: secs(7200),
                max_retries: MaxRetries::Count(10),
                message_expiration: secs(604_800),
                generate_bounces: false,
                opendkim_sign: false,
                generate_delay_dsn: true,
                delay_dsn_retry_interval: secs(1800),
                delay_dsn_max_retry_interval: secs(43_200),
                routes: None,
                max_outbound_connections: 20,
                max_recipients_per_batch: 50,
                max_deliveries_per_connection: 25,
                outbound_throttle_messages: Throttle {
                    rate: Some(Rate {
                        count: 100,
                        per_seconds: 60
                    }),
                    bucket: 0,
                },
                outbound_throttle_connections: Throttle {
                    rate: Some(Rate {
                        count: 5,
                        per_seconds: 1
                    }),
                    bucket: 1,
                },
                host_failure_retry: secs(90),
                delivery_shards: 1,
                idle_timeout: secs(10),
                connect_timeout: secs(30),
                ehlo_timeout: secs(31),
                mailfrom_timeout: secs(32),
                rcptto_timeout: secs(33),
                data_timeout: secs(34),
                body_timeout: secs(35),
                remote_smtp_port: 2526,
                ehlo_hostname: "out.example.net".into(),
                bind_address: Some("192.0.2.1".parse().unwrap()),
                tls: TlsMode::No,
                tls_verify: TlsVerify::No,
                tls_ca: None,
                tls_certificate: None,
                tls_key: None,
                tls_ifavailable_fallback: true,
                outbound_smtp_auth_user: None,
                outbound_smtp_auth_pass: None,
                outbound_smtp_auth_type: None,
                outbound_smtp_auth_allow_plaintext: false,
                send_chunking: false,
                mta_sts: false,
                mta_sts_ca: None,
                dane: false,
            }
        );
    }

    #[test]
    fn generate_bounces_is_on_by_default_and_off_where_a_domain_says() {
        let config = parse(r#"domain "quiet.example" { generate_bounces = false }"#);
        assert!(
            config
                .delivery(DEFAULT_BINDING, "loud.example")
                .generate_bounces
        );
        assert!(
            !config
                .delivery(DEFAULT_BINDING, "quiet.example")
                .generate_bounces
        );
    }

    #[test]
    fn a_host_scope_limits_connections_per_address_and_dumps_back() {
        let config = parse(
            r#"
            host "MX1.Example.net" { max_outbound_connections = 4 }
            host "192.0.2.7" { max_outbound_connections = 1 }
            host "mx2.example.net" { }
            "#,
        );
        assert_eq!(
            config.host_max_outbound_connections("mx1.example.net"),
            Some(4)
        );
        assert_eq!(
            config.host_max_outbound_connections("mx1.example.net."),
            Some(4)
        );
        assert_eq!(config.host_max_outbound_connections("192.0.2.7"), Some(1));
        assert_eq!(
            config.host_max_outbound_connections("mx2.example.net"),
            None,
            "unset: unlimited"
        );
        assert_eq!(config.host_max_outbound_connections("other.example"), None);
        let again = parse(&config.dump());
        assert_eq!(
            again.host_max_outbound_connections("mx1.example.net"),
            Some(4)
        );
        assert_eq!(
            error("host h { retry_interval = 5 }"),
            "test.conf:1: option `retry_interval` is not valid in host scope (valid in: global, \
             binding_group, binding, domain)"
        );
        assert_eq!(
            error("domain d { host h { } }"),
            "test.conf:1: host scope is not allowed inside domain scope"
        );
    }

    #[test]
    fn a_throttle_is_one_bucket_for_every_scope_that_inherits_it() {
        // Goal: Momentum's by-reference throttles. Method: a throttle set
        // globally, in a domain, in a group and unset again (0) in one
        // domain of the group; what each (binding, domain) resolves to.
        let config = parse(
            r#"
            outbound_throttle_messages = "10"
            domain "a.example" { outbound_throttle_messages = "5/2" }
            binding_group "g" {
              outbound_throttle_messages = "100/60"
              binding "b1" { }
              binding "b2" { domain "free.example" { outbound_throttle_messages = 0 } }
            }
            "#,
        );
        let throttle = |binding: &str, domain: &str| {
            let t = config.delivery(binding, domain).outbound_throttle_messages;
            (t.rate.map(|r| r.to_string()), t.bucket)
        };
        let global = (Some("10/1".to_string()), 0);
        assert_eq!(throttle("default", "x.example"), global);
        assert_eq!(
            throttle("default", "y.example"),
            global,
            "one bucket for all"
        );
        assert_eq!(throttle("default", "a.example"), (Some("5/2".into()), 1));
        let group = (Some("100/60".to_string()), 2);
        assert_eq!(throttle("b1", "x.example"), group);
        assert_eq!(
            throttle("b2", "y.example"),
            group,
            "the group's bindings share"
        );
        assert_eq!(
            throttle("b1", "a.example"),
            group,
            "binding_group beats a global domain"
        );
        assert_eq!(throttle("b2", "free.example").0, None, "0 is unlimited");
        let connections = config.delivery("default", "x.example");
        assert_eq!(
            connections.outbound_throttle_connections,
            Throttle::UNLIMITED
        );
        assert_eq!(
            error("outbound_throttle_messages = \"5/0\""),
            "test.conf:1: `outbound_throttle_messages` must be a rate \"N\" (per second) or \
             \"N/S\" (N per S seconds), N in 0..=1000000 (0 = unlimited), S in 1..=86400, \
             got `5/0`"
        );
    }

    #[test]
    fn outbound_fallback_honours_every_level_in_order() {
        // Goal: each of Momentum's seven levels wins over the ones below it.
        // Method: one option per level, each set at that level and every
        // level below it, read back for the most specific key.
        let text = r#"
            max_outbound_connections = 1
            domain "d.example" { max_outbound_connections = 2  retry_interval = 2 }
            binding_group "g" {
              max_outbound_connections = 3  retry_interval = 3  connect_timeout = 3
              domain "d.example" {
                max_outbound_connections = 6  retry_interval = 6  connect_timeout = 6
                ehlo_timeout = 6  mailfrom_timeout = 6  rcptto_timeout = 6
              }
              binding "b" {
                max_outbound_connections = 4  retry_interval = 4  connect_timeout = 4
                ehlo_timeout = 4
                domain "d.example" {
                  max_outbound_connections = 8  retry_interval = 8  connect_timeout = 8
                  ehlo_timeout = 8  mailfrom_timeout = 8  rcptto_timeout = 8
                  data_timeout = 8
                }
              }
            }
        "#;
        let config = parse(text);
        let d = config.delivery("b", "d.example");
        // binding_group::binding::domain
        assert_eq!(d.max_outbound_connections, 8);
        assert_eq!(d.data_timeout, secs(8));
        let other = config.delivery("b", "other.example");
        // binding beats binding_group and global.
        assert_eq!(other.max_outbound_connections, 4);
        assert_eq!(other.ehlo_timeout, secs(4));
        // binding_group beats global when the binding is silent.
        assert_eq!(other.mailfrom_timeout, secs(300));
        let group_only = parse(
            r#"binding_group "g" { connect_timeout = 3 binding "b" { } }
               domain "d.example" { connect_timeout = 2 ehlo_timeout = 2 }"#,
        );
        let d = group_only.delivery("b", "d.example");
        assert_eq!(
            d.connect_timeout,
            secs(3),
            "binding_group beats global domain"
        );
        assert_eq!(d.ehlo_timeout, secs(2), "global domain beats global");
        assert_eq!(
            group_only.delivery("default", "d.example").connect_timeout,
            secs(2)
        );
        assert_eq!(
            group_only.delivery("default", "e.example").connect_timeout,
            secs(300)
        );

        // binding_group::domain beats binding; binding::domain beats
        // binding_group::domain; bg::binding::domain beats binding::domain.
        let text = r#"
            binding_group "default" {
              domain "d.example" { connect_timeout = 6 ehlo_timeout = 6 data_timeout = 6 }
              binding "b" { domain "d.example" { data_timeout = 9 } }
            }
            binding "b" {
              connect_timeout = 4
              domain "d.example" { ehlo_timeout = 7 data_timeout = 7 }
            }
        "#;
        let config = parse(text);
        let d = config.delivery("b", "D.Example");
        assert_eq!(
            d.connect_timeout,
            secs(6),
            "binding_group::domain beats binding"
        );
        assert_eq!(
            d.ehlo_timeout,
            secs(7),
            "binding::domain beats binding_group::domain"
        );
        assert_eq!(
            d.data_timeout,
            secs(9),
            "bg::binding::domain beats binding::domain"
        );
        assert_eq!(config.binding_group_of("b"), "default");
    }

    #[test]
    fn full_example_resolves_bindings_groups_and_domains() {
        let config = parse(FULL);
        assert_eq!(config.binding_group_of("mkt1"), "marketing");
        assert_eq!(config.binding_group_of("mkt2"), "marketing");
        assert_eq!(config.binding_group_of("tx"), "default");
        assert_eq!(config.binding_group_of("nonesuch"), "default");
        let names: Vec<&str> = config.bindings().collect();
        assert_eq!(names, ["default", "mkt1", "mkt2", "tx"]);

        let mkt1 = config.delivery("mkt1", "EXAMPLE.com");
        assert_eq!(mkt1.max_outbound_connections, 2, "binding_group::domain");
        assert_eq!(mkt1.max_recipients_per_batch, 7, "bg::binding::domain");
        assert_eq!(mkt1.retry_interval, secs(60), "global domain");
        assert_eq!(mkt1.max_retries, MaxRetries::Auto, "global domain");
        assert_eq!(mkt1.ehlo_hostname, "mkt1.example.net");
        assert_eq!(mkt1.bind_address, Some("2001:db8::11".parse().unwrap()));
        let mkt2 = config.delivery("mkt2", "other.example");
        assert_eq!(mkt2.max_outbound_connections, 10);
        assert_eq!(mkt2.bind_address, Some("192.0.2.10".parse().unwrap()));
        let tx = config.delivery("tx", "example.org");
        assert_eq!(tx.max_retries, MaxRetries::None);
        assert_eq!(
            tx.gateway,
            Some(Gateway {
                host: "2001:db8::25".into(),
                port: None
            })
        );
        // An unknown binding is the default binding.
        assert_eq!(
            config.delivery("nonesuch", "x"),
            config.delivery("default", "x")
        );
    }

    #[test]
    fn same_named_stanzas_merge_and_the_last_setting_wins() {
        let config = parse(
            r#"
            domain "a.example" { retry_interval = 10 connect_timeout = 10 }
            max_retries = 3
            DOMAIN "A.EXAMPLE" { retry_interval = 20 }
            max_retries = 4
            ESMTP_Listener { Listen ":25" { idle_time = 5 } }
            ESMTP_Listener { Listen "*:25" { max_recipients_per_message = 9 } idle_time = 7 }
            "#,
        );
        let d = config.delivery("default", "a.example");
        assert_eq!(d.retry_interval, secs(20));
        assert_eq!(d.connect_timeout, secs(10));
        assert_eq!(d.max_retries, MaxRetries::Count(4));
        let listeners = config.esmtp_listeners();
        assert_eq!(
            listeners.len(),
            1,
            "\":25\" and \"*:25\" are the same socket"
        );
        assert_eq!(
            listeners[0].idle_time,
            secs(5),
            "Listen beats ESMTP_Listener"
        );
        assert_eq!(listeners[0].max_recipients_per_message, 9);
    }

    #[test]
    fn listener_options_fall_back_listen_listener_global_default() {
        let config = parse(
            r#"
            max_message_size = 100
            max_recipients_per_message = 100
            ESMTP_Listener {
              max_recipients_per_message = 200
              max_receptions_per_connection = 200
              Enable = false
              Listen "127.0.0.1:1" { max_receptions_per_connection = 300 Enable = true }
              Listen "127.0.0.1:2" { }
            }
            "#,
        );
        let [one, two] = config.esmtp_listeners() else {
            panic!("two listeners")
        };
        assert_eq!(one.max_receptions_per_connection, 300);
        assert_eq!(one.max_recipients_per_message, 200);
        assert_eq!(one.max_message_size_bytes, 100);
        assert_eq!(one.idle_time, secs(IDLE_TIME_SECONDS_DEFAULT));
        assert!(one.enabled);
        assert!(!two.enabled);
        assert_eq!(two.max_receptions_per_connection, 200);
    }

    #[test]
    fn comments_of_both_kinds_and_keyword_case_are_ignored() {
        let a = parse(
            "/* block\n comment */ MAX_RETRIES = 5 # trailing\nDomain \"X.example\" { Retry_Interval = 9 }",
        );
        let b = parse("max_retries = 5\ndomain X.example { retry_interval = 9 }");
        assert_eq!(a, b);
        assert_eq!(a.delivery("default", "x.EXAMPLE").retry_interval, secs(9));
    }

    #[test]
    fn binding_names_are_case_sensitive() {
        let config = parse("binding \"Mkt\" { max_retries = 1 }");
        assert_eq!(
            config.delivery("Mkt", "d").max_retries,
            MaxRetries::Count(1)
        );
        assert_eq!(config.delivery("mkt", "d").max_retries, MaxRetries::Auto);
    }

    #[test]
    fn quoted_and_bare_values_mean_the_same() {
        assert_eq!(
            parse("shards = \"2\"\nmax_retries = \"none\""),
            parse("shards = 2\nmax_retries = none")
        );
    }

    #[test]
    fn dump_of_the_full_example_reparses_to_an_equal_config() {
        let config = parse(FULL);
        let text = config.dump();
        let again = Config::parse(&text, Path::new("dumped.conf")).unwrap_or_else(|e| {
            panic!("{e}\n{text}");
        });
        assert_eq!(config, again, "\n{text}");
        assert_eq!(
            again.dump().lines().skip(2).collect::<Vec<_>>(),
            text.lines().skip(2).collect::<Vec<_>>()
        );
        assert!(text.contains("max_outbound_connections = 20\n"));
        assert!(text.contains("binding_group \"marketing\" {\n"));
    }

    #[test]
    fn dump_includes_defaults_and_round_trips_the_embedded_default() {
        let config = Config::embedded_default();
        let text = config.dump();
        for option in [
            "spoolbase",
            "hostname",
            "shards",
            "retry_interval",
            "body_timeout",
            "idle_time",
        ] {
            assert!(
                text.contains(&format!("\n{option} = ")),
                "{option} missing:\n{text}"
            );
        }
        assert!(text.contains("# gateway is unset"));
        assert!(text.contains("File_Mode = 0600"));
        assert_eq!(Config::parse(&text, Path::new("d.conf")).unwrap(), config);
    }

    #[test]
    fn dump_round_trips_nested_default_group_bindings_and_odd_strings() {
        let config = parse(
            r#"
            hostname = "we\"ird\\host"
            binding_group "default" { binding "b" { domain "d" { max_retries = 1 } } }
            binding "b" { domain "d" { max_retries = 2 } }
            binding_group "g" { binding "default" { } }
            relay_hosts = ( )
            "#,
        );
        assert_eq!(config.hostname(), "we\"ird\\host");
        assert!(config.relay_hosts().is_empty());
        let text = config.dump();
        assert_eq!(
            Config::parse(&text, Path::new("d.conf")).unwrap(),
            config,
            "\n{text}"
        );
    }

    #[test]
    fn routes_parse_momentums_forms_and_dump_back() {
        let config = parse(
            r#"
            routes = ( "__mx__" )
            domain "example.com" {
              Routes = ( "smtp://10.0.0.1?pref=10&ttl=300&port=2525&type=a"
                         "smtp://[2001:db8::25]?pref=10"
                         "relay.example.net" "[::1]" "smtp://hub.example?type=mx" "__MX__" )
            }
            binding "default" { domain "example.org" { routes = "smtp://relay?port=2600" } }
            "#,
        );
        let host = |host: &str, preference, port, mx_lookup, ttl_seconds| {
            Route::Host(RouteHost {
                host: host.into(),
                preference,
                port,
                mx_lookup,
                ttl_seconds,
            })
        };
        assert_eq!(
            config.delivery("default", "Example.COM").routes.unwrap(),
            [
                host("10.0.0.1", Some(10), Some(2525), false, Some(300)),
                host("2001:db8::25", Some(10), None, false, None),
                host("relay.example.net", None, None, false, None),
                host("::1", None, None, false, None),
                host("hub.example", None, None, true, None),
                Route::Mx,
            ]
        );
        assert_eq!(
            config.delivery("default", "other.example").routes.unwrap(),
            [Route::Mx]
        );
        assert_eq!(
            config.delivery("default", "example.org").routes.unwrap(),
            [host("relay", None, Some(2600), false, None)]
        );
        let text = config.dump();
        assert!(text.contains("\"smtp://[2001:db8::25]?pref=10\""), "{text}");
        assert_eq!(
            Config::parse(&text, Path::new("d.conf")).unwrap(),
            config,
            "\n{text}"
        );
    }

    #[test]
    fn routes_in_a_bindings_domain_apply_to_that_binding_only() {
        let config =
            parse("binding \"mta2\" { domain \"example.com\" { routes = \"relay.example\" } }\n");
        assert!(config.check_supported().is_ok());
        let routed = config.delivery("mta2", "example.com").routes.unwrap();
        assert_eq!(routed.len(), 1);
        assert_eq!(config.delivery("default", "example.com").routes, None);
        assert_eq!(config.delivery("mta2", "example.org").routes, None);
    }

    #[test]
    fn error_bad_routes_name_the_item_and_its_line() {
        assert_eq!(
            error("routes = (\n \"__mx__\"\n \"smtp://h?pref=x\" )"),
            "test.conf:3: `routes`: bad route `smtp://h?pref=x`: pref must be a number in 0..=65535"
        );
        assert_eq!(
            error("routes = \"h:25\""),
            "test.conf:1: `routes`: bad route `h:25`: give the port as ?port=, e.g. smtp://host?port=2525"
        );
        assert_eq!(
            error("routes = \"::1\""),
            "test.conf:1: `routes`: bad route `::1`: IPv6 addresses must be bracketed, e.g. \"[::1]\""
        );
        assert_eq!(
            error("routes = \"apn://gateway.push.apple.com?port=2195\""),
            "test.conf:1: `routes`: bad route `apn://gateway.push.apple.com?port=2195`: only \
             smtp:// routes are supported (delivery_method is ESMTP)"
        );
        assert_eq!(
            error("routes = \"smtp://h?type=srv\""),
            "test.conf:1: `routes`: bad route `smtp://h?type=srv`: type must be `mx` or `a`"
        );
        assert_eq!(
            error("routes = \"smtp://h?weight=1\""),
            "test.conf:1: `routes`: bad route `smtp://h?weight=1`: unknown key; use pref, ttl, \
             port or type"
        );
        assert!(
            error("routes = ( )").starts_with("test.conf:1: `routes`: bad route ``: an empty list")
        );
        let many = format!("routes = ( {} )", "\"h\" ".repeat(ROUTES_ENTRIES_MAX + 1));
        assert_eq!(
            error(&many),
            format!("test.conf:1: `routes`: 33 items, at most {ROUTES_ENTRIES_MAX} are allowed")
        );
        assert!(
            error("binding_group g { routes = \"h\" }").contains("`routes`"),
            "routes is a global and domain option, as in Momentum"
        );
    }

    #[test]
    fn config_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Config>();
    }

    // Errors: one test per class, asserting the exact text and line.

    #[test]
    fn webhook_stanzas_resolve_in_order_with_defaults() {
        let config = parse(
            "ec_logger { eventlog = \"/logs/events.jsonl\" }\n\
             webhook \"a\" { target = \"http://127.0.0.1:8080/in\" events = ( \"delivery\" \"bounce\" ) \
             auth_token = \"s3cret\" batch_size = 10 max_backlog_bytes = 100000 }\n\
             webhook \"b\" { target = \"http://hooks.example/\" }\n",
        );
        assert_eq!(
            config.logs().eventlog.as_deref(),
            Some(Path::new("/logs/events.jsonl"))
        );
        let hooks = config.webhooks();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "a");
        assert_eq!(hooks[0].events, ["delivery", "bounce"]);
        assert_eq!(hooks[0].auth_token.as_deref(), Some("s3cret"));
        assert_eq!(
            (hooks[0].batch_size, hooks[0].max_backlog_bytes),
            (10, 100000)
        );
        assert_eq!(hooks[1].events.len(), WEBHOOK_EVENT_TYPES.len());
        assert_eq!(hooks[1].batch_size, WEBHOOK_BATCH_SIZE_DEFAULT);
        assert_eq!(
            parse_webhook_target(hooks[1].target.as_deref().unwrap()),
            Ok(("hooks.example".to_string(), 80, "/".to_string()))
        );
        let again = parse(&config.dump());
        assert_eq!(again, config, "the dump reads back the same");
    }

    #[test]
    fn webhook_errors_name_the_line() {
        let logger = "ec_logger { eventlog = \"e\" }\n";
        assert_eq!(
            error(&format!("{logger}webhook \"w\" {{\n}}\n")),
            "test.conf:2: webhook `w` has no `target`"
        );
        assert!(error("webhook \"w\" { target = \"http://h/\" }")
            .starts_with("test.conf:1: webhook `w` needs an `eventlog`"));
        assert_eq!(
            error(&format!(
                "{logger}webhook \"w\" {{\n target = \"https://h/\" }}"
            )),
            "test.conf:3: bad webhook target `https://h/`: only http:// targets are supported"
        );
        assert!(error(&format!(
            "{logger}webhook \"w\" {{ target = \"http://h/\"\n events = ( \"delivery\" \"clack\" ) }}"
        ))
        .starts_with("test.conf:3: `events`: unknown event type `clack`"));
        assert!(error(&format!(
            "{logger}webhook \"w\" {{ target = \"http://h/\" auth_token = \"a\tb\" }}"
        ))
        .contains("`auth_token` must be printable ASCII"));
        assert!(error("webhook \"a b\" { }").starts_with("test.conf:1: bad webhook name"));
    }

    #[test]
    fn error_unknown_option() {
        assert_eq!(
            error("\ndomain \"d\" {\n  max_outbond_connections = 5\n}\n"),
            "test.conf:3: unknown option `max_outbond_connections` in domain scope"
        );
    }

    #[test]
    fn error_option_in_the_wrong_scope() {
        assert_eq!(
            error("domain \"d\" {\n spoolbase = \"/x\"\n}"),
            "test.conf:2: option `spoolbase` is not valid in domain scope (valid in: global)"
        );
        assert_eq!(
            error("domain \"d\" { bind_address = 10.0.0.1 }"),
            "test.conf:1: option `bind_address` is not valid in domain scope \
             (valid in: global, binding_group, binding)"
        );
        assert_eq!(
            error("Enable = false"),
            "test.conf:1: option `Enable` is not valid in global scope \
             (valid in: ESMTP_Listener, ESMTP_Listener Listen)"
        );
    }

    #[test]
    fn tracking_options_are_read_and_bad_ones_name_the_line() {
        let c = parse(
            "tracking_domain = \"track.example.com:8443\"\nclick_tracking_scheme = HTTPS\n\
             open_tracking_enabled = yes\ntracking_link_expiry = 86400\nmax_metadata_len = 200",
        );
        let t = c.tracking_options();
        assert_eq!(t.tracking_domain, "track.example.com:8443");
        assert_eq!(
            t.click_tracking_scheme,
            ecelerity_msggen::tracking::Scheme::Https
        );
        assert_eq!(
            t.open_tracking_scheme,
            ecelerity_msggen::tracking::Scheme::Http
        );
        assert!(t.open_tracking_enabled && !t.click_tracking_enabled);
        assert_eq!((t.tracking_link_expiry, t.max_metadata_len), (86_400, 200));
        assert!(t.click_tracking_include_metadata);
        assert_eq!(
            error("\ntracking_domain = \"bad domain!\""),
            "test.conf:2: `tracking_domain` must be a host name or address with an optional :port, \
             at most 261 bytes, got `bad domain!`"
        );
        assert_eq!(
            error("open_tracking_scheme = ftp"),
            "test.conf:1: `open_tracking_scheme` must be http or https, got `ftp`"
        );
        assert!(error("max_metadata_len = 20000").starts_with("test.conf:1: `max_metadata_len`"));
    }

    /// Goal: `api_store_datasource` names a PostgreSQL Datasource
    /// (declared before or after it); anything else is refused at its
    /// line; it survives the dump; a reload keeps it and says restart.
    #[test]
    fn api_store_datasource_names_a_postgresql_datasource() {
        assert_eq!(parse("").api_store_datasource(), None);
        let text = "api_store_datasource = \"pg\"\n\
                    Datasource \"pg\" {\n  uri = ( \"pgsql:host=/tmp;dbname=m\" )\n}\n";
        let c = parse(text);
        assert_eq!(c.api_store_datasource(), Some("pg"));
        let again = Config::parse(&c.dump(), Path::new("test.conf")).unwrap();
        assert_eq!(again.api_store_datasource(), Some("pg"));
        assert_eq!(
            error("\napi_store_datasource = \"pg\"\n"),
            "test.conf:2: api_store_datasource: no Datasource `pg` is configured"
        );
        assert_eq!(
            error(
                "Datasource \"lite\" {\n  uri = ( \"sqlite::memory:\" )\n}\n\
                 api_store_datasource = \"lite\"\n"
            ),
            "test.conf:4: api_store_datasource: Datasource `lite` is not a PostgreSQL one \
             (leave the option unset to keep the API store in SQLite)"
        );
        assert!(
            error("api_store_datasource = \"\"").starts_with("test.conf:1: `api_store_datasource`")
        );
        let dir = std::env::temp_dir().join(format!("ec-apistore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("new.conf");
        std::fs::write(
            &path,
            "Datasource \"pg\" {\n  uri = ( \"pgsql:host=/tmp;dbname=m\" )\n}\n",
        )
        .unwrap();
        let (new, kept) = c.reload(&path).unwrap();
        assert!(kept.contains(&"api_store_datasource"), "{kept:?}");
        assert_eq!(new.api_store_datasource(), Some("pg"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_wrong_type() {
        assert_eq!(
            error("\n\nmax_retries = sometimes"),
            "test.conf:3: `max_retries` must be an integer, \"auto\" or \"none\", got `sometimes`"
        );
        assert_eq!(
            error("max_outbound_connections = lots"),
            "test.conf:1: `max_outbound_connections` must be an integer, got `lots`"
        );
        assert_eq!(
            error("max_message_size = ( 1 2 )"),
            "test.conf:1: `max_message_size` must be an integer, got a list"
        );
        assert_eq!(
            error("ESMTP_Listener { Enable = maybe }"),
            "test.conf:1: `Enable` must be a boolean (true/false, yes/no, on/off, 1/0), got `maybe`"
        );
        assert_eq!(
            error("Control_Listener { Listen \"s\" {\n File_Mode = 0999 } }"),
            "test.conf:2: `File_Mode` must be an octal file mode between 0000 and 7777 such as 0600, \
             got `0999`"
        );
        assert_eq!(
            error("spoolbase = \"\""),
            "test.conf:1: `spoolbase` must be a path, got an empty string"
        );
    }

    #[test]
    fn error_out_of_range() {
        assert_eq!(
            error("shards = 300"),
            "test.conf:1: `shards` must lie in 0..=256, got 300"
        );
        assert_eq!(
            error("\nretry_interval = 0"),
            "test.conf:2: `retry_interval` must lie in 1..=31536000 seconds, got 0"
        );
        assert_eq!(
            error("max_line_length = 80"),
            "test.conf:1: `max_line_length` must lie in 1000..=1048576 bytes, got 80"
        );
        assert_eq!(
            error("remote_smtp_port = 99999999999999999999999"),
            "test.conf:1: `remote_smtp_port` must lie in 1..=65535, got 99999999999999999999999"
        );
    }

    #[test]
    fn error_bad_cidr_blames_the_item_line() {
        assert_eq!(
            error("relay_hosts = (\n  \"10.0.0.0/8\"\n  \"10.0.0.0/33\"\n)"),
            "test.conf:3: `relay_hosts`: `10.0.0.0/33` is not an IP address or CIDR netblock"
        );
    }

    #[test]
    fn error_bad_ip_and_gateway() {
        assert_eq!(
            error("bind_address = mail.example"),
            "test.conf:1: `bind_address`: `mail.example` is not an IP address"
        );
        assert_eq!(
            error("gateway = \"::1:25\""),
            "test.conf:1: bad gateway `::1:25`: IPv6 addresses must be bracketed, e.g. \"[::1]:25\""
        );
    }

    #[test]
    fn error_bad_listen_address() {
        assert_eq!(
            error("ESMTP_Listener {\n  Listen \"localhost:25\" { }\n}"),
            "test.conf:2: bad listen address `localhost:25`: the host must be an IPv4 address, `*`, \
             or a bracketed IPv6 address"
        );
        assert_eq!(
            error("ESMTP_Listener { Listen \"/tmp/smtp\" { } }"),
            "test.conf:1: bad listen address `/tmp/smtp`: missing `:port`"
        );
    }

    #[test]
    fn http_listener_listens_merge_and_take_momentums_address_forms() {
        let config = parse(
            "HTTP_Listener {\n Listen \":2081\" { }\n Listen \"127.0.0.1:8081\" { }\n}\n\
             http_listener { Listen \"*:2081\" { } }",
        );
        let addresses: Vec<String> = config
            .http_listeners()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addresses, ["0.0.0.0:2081", "127.0.0.1:8081"]);
        assert!(parse("").http_listeners().is_empty());
        let dumped = config.dump();
        assert!(
            dumped.contains("HTTP_Listener {\n  Listen \"0.0.0.0:2081\" {"),
            "{dumped}"
        );
    }

    #[test]
    fn error_in_http_listener() {
        assert_eq!(
            error("HTTP_Listener {\n  Listen \"localhost:2081\" { }\n}"),
            "test.conf:2: bad listen address `localhost:2081`: the host must be an IPv4 address, \
             `*`, or a bracketed IPv6 address"
        );
        assert!(
            error("HTTP_Listener { Listen \":2081\" {\n idle_time = 5 } }")
                .starts_with("test.conf:2: "),
        );
        assert!(
            error("HTTP_Listener { Listen \":2081\" { Listen \":2082\" { } } }")
                .starts_with("test.conf:1: ")
        );
    }

    #[test]
    fn tcp_control_listener_with_peer_rules() {
        let config = Config::parse(
            "Control_Listener {\n Peer \"10.0.0.0/8\" { Enable = true }\n              Listen \"127.0.0.1:2025\" {\n  Peer \"127.0.0.2\" { Enable = false }\n               Peer \"10.1.0.0/16\" { Enable = false }\n }\n Listen \"ctl.sock\" { }\n}\n",
            "test.conf".as_ref(),
        )
        .unwrap();
        let [tcp, unix] = config.control_listeners() else {
            panic!("two listeners")
        };
        assert_eq!(tcp.tcp, Some("127.0.0.1:2025".parse().unwrap()));
        assert_eq!(unix.tcp, None);
        assert!(unix.peers.is_empty(), "Peer rules are for TCP consoles");
        let ip = |s: &str| s.parse().unwrap();
        assert!(tcp.allows(ip("127.0.0.1")), "loopback by default");
        assert!(!tcp.allows(ip("127.0.0.2")), "a Peer says no");
        assert!(tcp.allows(ip("10.2.3.4")), "the listener's Peer says yes");
        assert!(!tcp.allows(ip("10.1.3.4")), "the more specific Peer wins");
        assert!(!tcp.allows(ip("192.0.2.1")), "no rule: not loopback");
        assert!(tcp.allows(ip("::ffff:10.2.3.4")), "v4-mapped is v4");
        assert_eq!(
            error("Control_Listener {\n Peer \"10.0.0.0/8\" {\n  File_Mode = 0600\n }\n}"),
            "test.conf:3: option `File_Mode` is not valid in Control_Listener Peer scope \
             (valid in: Control_Listener, Control_Listener Listen)"
        );
        assert!(error("Control_Listener {\n Peer \"nope\" { }\n}").starts_with("test.conf:2: "));
        assert!(error("Peer \"10.0.0.0/8\" { }").starts_with("test.conf:1: "));
    }

    #[test]
    fn error_unterminated_string_comment_scope_and_list() {
        assert_eq!(
            error("a = 1\nhostname = \"mta\n"),
            "test.conf:2: unterminated string: missing closing `\"` on this line"
        );
        assert_eq!(
            error("shards = 1\n/* comment\n\n"),
            "test.conf:2: unterminated comment: `/*` without `*/`"
        );
        assert_eq!(
            error("\nbinding_group \"g\" {\n  binding \"b\" {\n  }\n"),
            "test.conf:2: unterminated scope `binding_group \"g\"`: `{` without `}`"
        );
        assert_eq!(
            error("relay_hosts = ( \"::1\"\n"),
            "test.conf:1: unterminated list for `relay_hosts`: `(` without `)`"
        );
    }

    #[test]
    fn error_unexpected_token_and_missing_equals() {
        assert_eq!(
            error("shards = 1\n= 2"),
            "test.conf:2: unexpected `=`, expected an option name or a scope keyword"
        );
        assert_eq!(
            error("\nretry_interval 5"),
            "test.conf:2: missing `=` after option `retry_interval` (found `5`)"
        );
    }

    #[test]
    fn error_unknown_scope_and_misplaced_or_misnamed_scopes() {
        assert_eq!(
            error("\nThreadPool \"IO\" { Concurrency = 50 }"),
            "test.conf:2: unknown scope keyword `ThreadPool`"
        );
        assert_eq!(
            error("domain \"d\" {\n binding \"b\" { }\n}"),
            "test.conf:2: binding scope is not allowed inside domain scope"
        );
        assert_eq!(
            error("Listen \":25\" { }"),
            "test.conf:1: Listen scope is not allowed inside global scope"
        );
        assert_eq!(
            error("binding { }"),
            "test.conf:1: binding scope needs a name, e.g. `binding \"name\" { }`"
        );
        assert_eq!(
            error("ESMTP_Listener \"x\" { }"),
            "test.conf:1: ESMTP_Listener scope takes no name, got `x`"
        );
        assert_eq!(
            error("binding \"a:b\" { }"),
            "test.conf:1: bad binding name `a:b`: names may not be empty or contain spaces or colons"
        );
    }

    #[test]
    fn error_duplicate_singleton_conflicts() {
        assert_eq!(
            error("binding_group \"g1\" { binding \"b\" { } }\nbinding_group \"g2\" {\n binding \"b\" { }\n}"),
            "test.conf:3: binding `b` is in binding_group `g1` and again in binding_group `g2`; \
             a binding belongs to one group (a top-level binding is in `default`)"
        );
        assert_eq!(
            error("binding \"b\" { }\nbinding_group \"g\" { binding \"b\" { } }"),
            "test.conf:2: binding `b` is in binding_group `default` and again in binding_group `g`; \
             a binding belongs to one group (a top-level binding is in `default`)"
        );
        assert_eq!(
            error("ec_logger \"a\" { }\nec_logger \"b\" { }"),
            "test.conf:2: second ec_logger instance `b`: only one (`a`) is supported"
        );
    }

    #[test]
    fn includes_splice_files_and_directories_relative_to_the_includer() {
        let dir = temp_dir("ok");
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/20-b.conf"), "max_retries = 2\n").unwrap();
        std::fs::write(
            dir.join("conf.d/10-a.conf"),
            "max_retries = 1\nshards = 3\n",
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/.hidden"), "this is not valid\n").unwrap();
        std::fs::create_dir_all(dir.join("conf.d/subdir")).unwrap();
        std::fs::write(dir.join("domain-opts.conf"), "retry_interval = 77\n").unwrap();
        let main = dir.join("ecelerity.conf");
        std::fs::write(
            &main,
            "include \"conf.d\"\ndomain \"d\" { include domain-opts.conf }\n",
        )
        .unwrap();
        let config = Config::load(&main).unwrap();
        assert_eq!(config.source(), Some(main.as_path()));
        assert_eq!(config.shards(), 3);
        // 20-b.conf is read after 10-a.conf, so its value wins.
        assert_eq!(
            config.delivery("default", "x").max_retries,
            MaxRetries::Count(2)
        );
        assert_eq!(config.delivery("default", "d").retry_interval, secs(77));
        // Config::parse resolves against the given file's directory too.
        let text = "include \"conf.d/10-a.conf\"";
        assert_eq!(Config::parse(text, &main).unwrap().shards(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_in_an_included_file_names_that_file_and_line() {
        let dir = temp_dir("bad");
        std::fs::write(dir.join("inc.conf"), "\n\nmax_retries = x\n").unwrap();
        let main = dir.join("main.conf");
        std::fs::write(&main, "include \"inc.conf\"\n").unwrap();
        let err = Config::load(&main).unwrap_err();
        assert_eq!(err.file, dir.join("inc.conf"));
        assert_eq!(
            err.to_string(),
            format!(
                "{}: `max_retries` must be an integer, \"auto\" or \"none\", got `x`",
                dir.join("inc.conf:3").display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_include_not_found() {
        let dir = temp_dir("missing");
        let main = dir.join("main.conf");
        let err = Config::parse("\ninclude \"nope.conf\"", &main).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: include file `nope.conf` not found (looked for {})",
                main.display(),
                dir.join("nope.conf").display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_include_cycle() {
        let dir = temp_dir("cycle");
        std::fs::write(dir.join("a.conf"), "shards = 1\ninclude \"b.conf\"\n").unwrap();
        std::fs::write(dir.join("b.conf"), "\n\ninclude \"a.conf\"\n").unwrap();
        let err = Config::load(&dir.join("a.conf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: include cycle: `{}` is already being read",
                dir.join("b.conf").display(),
                dir.join("a.conf").display()
            )
        );
        std::fs::write(dir.join("self.conf"), "include \"self.conf\"\n").unwrap();
        let err = Config::load(&dir.join("self.conf")).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(matches!(err.kind, ConfigErrorKind::IncludeCycle { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn error_unreadable_top_level_file() {
        let err = Config::load(Path::new("/nonexistent/ecelerity.conf")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/ecelerity.conf:0: cannot read configuration: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn host_names_the_smtp_client_would_replace_are_refused() {
        // Goal: an EHLO name the client would silently swap for `localhost`
        // is a config error instead. Method: a space, a tab and one byte
        // too many, for ehlo_hostname and hostname (its default).
        let expected = "a host name of at most 255 printable ASCII characters without spaces";
        assert_eq!(
            error("domain d {\n ehlo_hostname = \"mta 1.example\" }"),
            format!("test.conf:2: `ehlo_hostname` must be {expected}, got `mta 1.example`")
        );
        assert_eq!(
            error("hostname = \"mta\t1\""),
            format!("test.conf:1: `hostname` must be {expected}, got `mta\t1`")
        );
        let longest = "a".repeat(HOST_NAME_BYTES_MAX);
        assert_eq!(
            parse(&format!("hostname = {longest}"))
                .delivery("x", "y")
                .ehlo_hostname,
            longest
        );
        assert!(error(&format!("ehlo_hostname = {longest}a")).starts_with("test.conf:1: "));
        assert_eq!(
            parse("ehlo_hostname = [192.0.2.1]")
                .delivery("default", "d")
                .ehlo_hostname,
            "[192.0.2.1]"
        );
    }

    #[test]
    fn bindings_and_their_groups_may_set_outbound_options_and_bind_address() {
        // Goal: now that mail can be assigned to any binding, every scope
        // of the outbound fallback is honoured, bind_address included.
        // Method: settings in other bindings, groups and their domains,
        // once refused as "not supported yet", pass check_supported, a
        // file holding them loads, and each binding resolves its own
        // bind_address (the global one is the default binding's and the
        // fallback of bindings that set none).
        let ok = [
            "shards = 2\n\nbind_address = 192.0.2.1",
            "binding \"tx\" {\n max_retries = none\n}",
            "binding \"tx\" { domain \"d\" {\n retry_interval = 5 } }",
            "binding_group \"g\" {\n binding \"b\" { }\n domain d { max_retries = 1 } }",
            "binding_group \"g\" { binding \"b\" { domain d {\n gateway = x } } }",
            "binding_group g { binding default { } }\nbinding_group default { max_retries = 4 }",
            FULL,
        ];
        for text in ok {
            assert_eq!(parse(text).check_supported(), Ok(()), "{text}");
        }
        let config = parse(
            "bind_address = 127.0.0.1\n\
             binding \"a\" { bind_address = 127.0.0.5 ehlo_hostname = a.example }\n\
             binding_group \"g\" { bind_address = \"::1\" binding \"b\" { } }\n\
             binding \"c\" { }",
        );
        let source = |b: &str| config.delivery(b, "d.example").bind_address;
        assert_eq!(source("a"), Some("127.0.0.5".parse().unwrap()));
        assert_eq!(source("b"), Some("::1".parse().unwrap()), "binding_group");
        assert_eq!(source("c"), Some("127.0.0.1".parse().unwrap()), "global");
        assert_eq!(source("default"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source("nonesuch"), source("default"));
        assert_eq!(config.delivery("a", "d").ehlo_hostname, "a.example");
        assert_ne!(config.delivery("c", "d").ehlo_hostname, "a.example");

        let dir = temp_dir("bindings-load");
        let file = dir.join("ecelerity.conf");
        std::fs::write(
            &file,
            "gateway = \"127.0.0.1:25\"\nbinding b {\n bind_address = ::1\n}\n",
        )
        .unwrap();
        let loaded = Config::load(&file).unwrap();
        assert_eq!(
            loaded.delivery("b", "x").bind_address,
            Some("::1".parse().unwrap())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bind_address_is_refused_outside_the_binding_scopes() {
        // Goal: a source address belongs to a binding, not to a domain or a
        // listener. Method: each wrong place gives file:line and the scopes
        // it is valid in.
        let valid_in = "(valid in: global, binding_group, binding)";
        assert_eq!(
            error("binding b {\n domain d {\n  bind_address = 10.0.0.1 } }"),
            format!("test.conf:3: option `bind_address` is not valid in domain scope {valid_in}")
        );
        assert_eq!(
            error("ESMTP_Listener {\n bind_address = 10.0.0.1 }"),
            format!(
                "test.conf:2: option `bind_address` is not valid in ESMTP_Listener scope \
                 {valid_in}"
            )
        );
        assert_eq!(
            error("binding b { bind_address = 10.0.0.256 }"),
            "test.conf:1: `bind_address`: `10.0.0.256` is not an IP address"
        );
    }

    #[test]
    fn binding_header_is_a_listener_option_naming_a_header() {
        // Goal: `binding_header` is off unless a listener sets it, and only
        // a header name is taken. Method: unset, set on the listener and
        // overridden per Listen; refused globally, in a binding, and with
        // a name holding a colon or a space.
        let config = parse(
            "ESMTP_Listener {\n binding_header = X-Binding\n Listen \"127.0.0.1:25\" { }\n \
             Listen \"127.0.0.1:26\" { binding_header = \"X-MTA-Binding\" }\n \
             }\nESMTP_Listener { Listen \"127.0.0.1:27\" { } }",
        );
        let headers: Vec<Option<&str>> = config
            .esmtp_listeners()
            .iter()
            .map(|l| l.binding_header.as_deref())
            .collect();
        assert_eq!(
            headers,
            [Some("X-Binding"), Some("X-MTA-Binding"), Some("X-Binding")]
        );
        let plain = parse("ESMTP_Listener { Listen \"127.0.0.1:25\" { } }");
        assert_eq!(plain.esmtp_listeners()[0].binding_header, None);
        assert!(error("binding_header = X-Binding")
            .starts_with("test.conf:1: option `binding_header` is not valid in global scope"));
        assert!(error("binding b { binding_header = X-Binding }")
            .starts_with("test.conf:1: option `binding_header` is not valid in binding scope"));
        for bad in ["\"X-Binding:\"", "\"X Binding\"", "\"\""] {
            let text = format!("ESMTP_Listener {{ binding_header = {bad} }}");
            assert!(
                error(&text).starts_with("test.conf:1: `binding_header` must be a header name"),
                "{text}: {}",
                error(&text)
            );
        }
    }

    #[test]
    fn the_embedded_default_and_every_dump_pass_check_supported() {
        // Goal: ec_dump_config output can be fed to validate_config.
        // Method: the embedded default and a dump of a config that sets
        // only supported options both pass; the dump names the options
        // that are not supported yet as comments.
        let config = Config::embedded_default();
        assert_eq!(config.check_supported(), Ok(()));
        let text = config.dump();
        assert!(
            text.contains("\n# remote_smtp_port = 25\n")
                || text.contains("\nremote_smtp_port = 25\n"),
            "{text}"
        );
        let again = Config::parse(&text, Path::new("d.conf")).unwrap();
        assert_eq!(again.check_supported(), Ok(()));
        assert_eq!(again, config);
        let tuned =
            parse("domain d { max_outbound_connections = 3 }\nbinding default { max_retries = 2 }");
        let again = Config::parse(&tuned.dump(), Path::new("d.conf")).unwrap();
        assert_eq!(again.check_supported(), Ok(()));
        assert_eq!(again, tuned);
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let mut d = DeliveryOptions::builtin("h");
        d.retry_interval = secs(1200);
        d.max_retry_interval = secs(43_200);
        let delays: Vec<u64> = (0..9).map(|n| d.retry_delay(n).as_secs()).collect();
        assert_eq!(
            delays,
            [1200, 1200, 2400, 4800, 9600, 19_200, 38_400, 43_200, 43_200]
        );
        assert_eq!(d.retry_delay(u32::MAX), secs(43_200));
    }

    #[test]
    fn retries_exhausted_counts_retries_after_the_first_attempt() {
        let mut d = DeliveryOptions::builtin("h");
        d.max_retries = MaxRetries::Count(2);
        assert!(!d.retries_exhausted(2));
        assert!(d.retries_exhausted(3));
        d.max_retries = MaxRetries::None;
        assert!(!d.retries_exhausted(u32::MAX));
    }

    #[test]
    fn auto_retries_fit_the_back_off_into_message_expiration() {
        // Defaults: 1200+2400+4800+9600+19200+38400 = 75600 s fit in a day;
        // the next (43200, capped) does not.
        let mut d = DeliveryOptions::builtin("h");
        assert_eq!(d.auto_retries(), 6);
        assert!(!d.retries_exhausted(6));
        assert!(!d.retries_exhausted(6 + 1 - 1));
        assert!(d.retries_exhausted(7));
        // A week: 75600 s, then (604800 - 75600) / 43200 = 12 capped delays.
        d.message_expiration = secs(604_800);
        assert_eq!(d.auto_retries(), 18);
        // A tiny cap would derive millions; the count stops at RETRIES_MAX.
        d.max_retry_interval = secs(1);
        d.message_expiration = secs(INTERVAL_SECONDS_MAX);
        assert_eq!(d.auto_retries(), RETRIES_MAX as u32);
        d.retry_interval = secs(2 * 86_400);
        d.max_retry_interval = secs(2 * 86_400);
        d.message_expiration = secs(86_400);
        assert_eq!(d.auto_retries(), 0);
        assert!(d.retries_exhausted(1));
    }
}
