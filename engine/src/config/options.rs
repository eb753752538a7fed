//! The option tables: every option ecelerity understands, one declarative
//! table per family, from which `option_family!` generates everything else.
//! Owns: `Kind` (what a value must look like), `Typed` (a checked value),
//! `OptionSpec` and `OPTIONS` (name, scopes, type and range, whether the
//! engine acts on it yet), and the six families with their typed structs
//! and override sets: global (`GlobalOptions`), inbound (`ListenerConfig`),
//! control (`ControlListenerConfig`), logger (`LogPaths`), `Security`, and
//! outbound (`DeliveryOptions`).
//! May call: `error` (scope sets), `model::system_hostname` (the default
//! `hostname`), `ecelerity_policy::Cidr`.
//! Never: syntax trees or files (that is `parse` and `model`); text output
//! (that is `dump`); per-option code outside a table entry.
//!
//! Adding an option is one entry in its family's table (plus its row in
//! docs/configuration.md): the entry names the typed field, the option as
//! written, the scopes it may appear in, its kind with the accepted range,
//! the built-in default and, if the engine does not act on it yet, why
//! (`not_yet`). From that the macro generates the public struct field, the
//! `Overrides` field (`None` falls back to the next scope), parsing into it
//! (`set`), fallback (`apply`), the dump (`complete`, `entries`), the
//! `OptionSpec` the parser checks scope, type and range against, and a
//! compile-time check that the range fits the field's type. Which scopes
//! layer over which is `model`'s business (and `Settings::delivery`'s for
//! outbound options).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ecelerity_policy::Cidr;

use super::error::{Scope, ScopeSet};
use super::model::system_hostname;
use super::*;

/// What an option's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A non-empty path, kept as written.
    Path,
    /// A non-empty string.
    Text,
    /// A name to send after EHLO: printable ASCII without spaces, at most
    /// `HOST_NAME_BYTES_MAX` bytes. The SMTP client would otherwise replace
    /// it with `localhost` without a word.
    HostName,
    /// A header field name (RFC 5322 2.2: printable ASCII but `:`), at most
    /// `HEADER_NAME_BYTES_MAX` bytes.
    HeaderName,
    /// A decimal integer in `min..=max`; `unit` is for messages.
    Integer {
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// Whole seconds in `min..=max`.
    Seconds {
        min: u64,
        max: u64,
    },
    Bool,
    /// A list (or a single item) of IP addresses / CIDR netblocks.
    CidrList,
    /// A list (or a single item) of nameserver addresses: `ip`, `ip:port`
    /// or `[ipv6]:port` (port 53 when none is written).
    NameserverList,
    Gateway,
    /// A list (or a single item) of Momentum routes (`config::Route`).
    Routes,
    IpAddress,
    MaxRetries,
    /// Octal permission bits, e.g. `0600`.
    FileMode,
    /// An SMTP AUTH mechanism we speak: `PLAIN` or `LOGIN` (any case;
    /// kept upper case).
    AuthMechanism,
    /// A throttle rate: `"N"` per second or `"N/S"` per S seconds; 0 is
    /// unlimited.
    Rate,
    /// `no`, `ifavailable` or `required` ([`TlsMode`]).
    TlsMode,
    /// `no`, `ca`, `host` or `optional` ([`TlsVerify`]).
    TlsVerify,
    /// A list (or a single item) of event types from `WEBHOOK_EVENT_TYPES`.
    EventTypes,
    /// An `http://host:port/path` URL (`parse_webhook_target`).
    WebhookTarget,
    /// `host[:port]` of the engagement-tracking server: letters, digits,
    /// `. - : [ ]`, at most `TRACKING_DOMAIN_BYTES_MAX` bytes.
    TrackingDomain,
    /// `http` or `https` (kept lower case).
    UrlScheme,
}

impl Kind {
    /// Completes "`option` must be ...".
    pub(super) fn expected(self) -> &'static str {
        match self {
            Kind::Path => "a path",
            Kind::Text => "a non-empty string",
            // The text names HOST_NAME_BYTES_MAX (asserted below).
            Kind::HostName => {
                "a host name of at most 255 printable ASCII characters without spaces"
            }
            // The text names HEADER_NAME_BYTES_MAX (asserted below).
            Kind::HeaderName => {
                "a header name of at most 64 printable ASCII characters without spaces or `:`"
            }
            Kind::Integer { .. } => "an integer",
            Kind::Seconds { .. } => "a whole number of seconds",
            Kind::Bool => "a boolean (true/false, yes/no, on/off, 1/0)",
            Kind::CidrList => "a list of IP addresses or CIDR netblocks",
            Kind::NameserverList => "a list of IP addresses with optional ports",
            Kind::Gateway => "a single \"host:port\" or \"host\"",
            Kind::Routes => {
                "a list of routes: \"__mx__\", \"host\" or \"smtp://host?pref=P&port=O&type=mx\""
            }
            Kind::IpAddress => "an IP address",
            Kind::MaxRetries => "an integer, \"auto\" or \"none\"",
            Kind::FileMode => "an octal file mode between 0000 and 7777 such as 0600",
            Kind::AuthMechanism => "PLAIN or LOGIN",
            // The numbers are THROTTLE_COUNT_MAX and THROTTLE_SECONDS_MAX.
            Kind::EventTypes => "a list of event types",
            Kind::WebhookTarget => "an URL \"http://host:port/path\"",
            Kind::Rate => {
                "a rate \"N\" (per second) or \"N/S\" (N per S seconds), N in 0..=1000000 \
                 (0 = unlimited), S in 1..=86400"
            }
            Kind::TlsMode => "one of no, ifavailable, required",
            Kind::TlsVerify => "one of no, ca, host, optional",
            Kind::TrackingDomain => {
                "a host name or address with an optional :port, at most 261 bytes"
            }
            Kind::UrlScheme => "http or https",
        }
    }

    /// The largest number the kind accepts (0 for non-numbers); checked at
    /// compile time against the field type it lands in.
    pub(super) const fn max(self) -> u64 {
        match self {
            Kind::Integer { max, .. } | Kind::Seconds { max, .. } => max,
            Kind::MaxRetries => RETRIES_MAX,
            Kind::FileMode => FILE_MODE_MAX as u64,
            _ => 0,
        }
    }
}

const _: () = assert!(HOST_NAME_BYTES_MAX == 255);
const _: () = assert!(ecelerity_msggen::tracking::TRACKING_DOMAIN_BYTES_MAX == 261);
const _: () = assert!(HEADER_NAME_BYTES_MAX == 64);

/// Whether the engine acts on an option yet. The parser knows Momentum's
/// options before the engine implements them; `Config::load` refuses an
/// option marked `NotYet` rather than accept and ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    Yes,
    /// Completes "`option` is not supported yet (...)". No option waits
    /// for the engine today; the next one Momentum has and we do not act
    /// on yet goes here rather than being accepted and ignored.
    #[allow(dead_code)]
    NotYet(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct OptionSpec {
    /// Canonical spelling, used by `dump` and docs; lookups ignore case.
    pub(super) name: &'static str,
    pub(super) scopes: ScopeSet,
    pub(super) kind: Kind,
    pub(super) support: Support,
}

pub(super) const GLOBAL: ScopeSet = ScopeSet::of(&[Scope::Global]);
pub(super) const INBOUND: ScopeSet =
    ScopeSet::of(&[Scope::Global, Scope::EsmtpListener, Scope::EsmtpListen]);
pub(super) const LISTENER: ScopeSet = ScopeSet::of(&[Scope::EsmtpListener, Scope::EsmtpListen]);
pub(super) const CONTROL: ScopeSet = ScopeSet::of(&[Scope::ControlListener, Scope::ControlListen]);
pub(super) const OUTBOUND: ScopeSet = ScopeSet::of(&[
    Scope::Global,
    Scope::BindingGroup,
    Scope::Binding,
    Scope::Domain,
]);
/// `routes`: Momentum documents it for the global and domain scopes only.
pub(super) const ROUTES: ScopeSet = ScopeSet::of(&[Scope::Global, Scope::Domain]);
/// `max_outbound_connections`: the outbound scopes, and `host` (per address).
pub(super) const OUTBOUND_AND_HOST: ScopeSet = ScopeSet::of(&[
    Scope::Global,
    Scope::BindingGroup,
    Scope::Binding,
    Scope::Domain,
    Scope::Host,
]);
pub(super) const BINDING_LEVEL: ScopeSet =
    ScopeSet::of(&[Scope::Global, Scope::BindingGroup, Scope::Binding]);
/// Momentum's `host_failure_retry` scopes.
pub(super) const GLOBAL_OR_DOMAIN: ScopeSet = ScopeSet::of(&[Scope::Global, Scope::Domain]);
pub(super) const LOGGER: ScopeSet = ScopeSet::of(&[Scope::EcLogger]);
pub(super) const SECURITY: ScopeSet = ScopeSet::of(&[Scope::Security]);
pub(super) const WEBHOOK: ScopeSet = ScopeSet::of(&[Scope::Webhook]);

pub(super) const fn integer(min: u64, max: u64) -> Kind {
    Kind::Integer { min, max, unit: "" }
}

pub(super) const fn bytes(min: u64, max: u64) -> Kind {
    Kind::Integer {
        min,
        max,
        unit: " bytes",
    }
}

pub(super) const fn seconds(min: u64, max: u64) -> Kind {
    Kind::Seconds { min, max }
}

pub(super) const TIMEOUT: Kind = seconds(1, TIMEOUT_SECONDS_MAX);
pub(super) const INTERVAL: Kind = seconds(1, INTERVAL_SECONDS_MAX);

/// A checked option value. The variant is fixed by the option's `Kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Typed {
    Path(PathBuf),
    Text(String),
    Integer(u64),
    Seconds(Duration),
    Bool(bool),
    Cidrs(Vec<Cidr>),
    Nameservers(Vec<SocketAddr>),
    Gateway(Gateway),
    Routes(Vec<Route>),
    Ip(IpAddr),
    MaxRetries(MaxRetries),
    FileMode(u32),
    Throttle(Throttle),
    TlsMode(TlsMode),
    TlsVerify(TlsVerify),
    /// Event type names, as configured.
    Names(Vec<String>),
}

pub(super) fn narrow_u32(value: u64) -> u32 {
    // Every integer option stored as u32 has a table maximum that fits
    // (checked at compile time by `option_family!`).
    assert!(value <= u64::from(u32::MAX));
    value as u32
}

/// A Rust type an option's value is stored as, and its `Typed` form.
pub(super) trait OptionValue: Clone + Sized {
    /// Largest number the type holds; a table range above it fails to
    /// compile.
    const CEILING: u64;
    /// The value, or `typed` handed back when its variant is not ours.
    fn from_typed(typed: Typed) -> Result<Self, Typed>;
    /// `kind` is the option's: it picks the variant where a type serves two
    /// (a `u32` is an integer or a file mode).
    fn to_typed(&self, kind: Kind) -> Typed;
}

macro_rules! option_value {
    ($ty:ty, $ceiling:expr, $variant:ident($v:ident) => $from:expr, |$s:ident| $to:expr) => {
        impl OptionValue for $ty {
            const CEILING: u64 = $ceiling;
            fn from_typed(typed: Typed) -> Result<Self, Typed> {
                match typed {
                    Typed::$variant($v) => Ok($from),
                    other => Err(other),
                }
            }
            fn to_typed(&self, _: Kind) -> Typed {
                let $s = self;
                $to
            }
        }
    };
}

impl OptionValue for u32 {
    const CEILING: u64 = u32::MAX as u64;
    fn from_typed(typed: Typed) -> Result<Self, Typed> {
        match typed {
            Typed::Integer(v) => Ok(narrow_u32(v)),
            Typed::FileMode(v) => Ok(v),
            other => Err(other),
        }
    }
    fn to_typed(&self, kind: Kind) -> Typed {
        match kind {
            Kind::FileMode => Typed::FileMode(*self),
            _ => Typed::Integer(u64::from(*self)),
        }
    }
}

option_value!(u64, u64::MAX, Integer(v) => v, |s| Typed::Integer(*s));
option_value!(u16, u16::MAX as u64, Integer(v) => {
    assert!(v <= u64::from(u16::MAX));
    v as u16
}, |s| Typed::Integer(u64::from(*s)));
option_value!(Duration, u64::MAX, Seconds(v) => v, |s| Typed::Seconds(*s));
option_value!(bool, 0, Bool(v) => v, |s| Typed::Bool(*s));
option_value!(String, 0, Text(v) => v, |s| Typed::Text(s.clone()));
option_value!(PathBuf, 0, Path(v) => v, |s| Typed::Path(s.clone()));
option_value!(Vec<Cidr>, 0, Cidrs(v) => v, |s| Typed::Cidrs(s.clone()));
option_value!(Vec<SocketAddr>, 0, Nameservers(v) => v, |s| Typed::Nameservers(s.clone()));
option_value!(Gateway, 0, Gateway(v) => v, |s| Typed::Gateway(s.clone()));
option_value!(Vec<Route>, 0, Routes(v) => v, |s| Typed::Routes(s.clone()));
option_value!(IpAddr, 0, Ip(v) => v, |s| Typed::Ip(*s));
option_value!(MaxRetries, u32::MAX as u64, MaxRetries(v) => v, |s| Typed::MaxRetries(*s));
option_value!(Throttle, 0, Throttle(v) => v, |s| Typed::Throttle(*s));
option_value!(TlsMode, 0, TlsMode(v) => v, |s| Typed::TlsMode(*s));
option_value!(TlsVerify, 0, TlsVerify(v) => v, |s| Typed::TlsVerify(*s));
option_value!(Vec<String>, 0, Names(v) => v, |s| Typed::Names(s.clone()));

/// How a resolved field holds its option's value: as the value itself, or
/// as `Option<value>` when "unset" is a meaningful resolved state (no
/// gateway, no bind address). A scope can set such an option but not unset
/// it, as in Momentum.
pub(super) trait Field {
    type Value: OptionValue;
    fn take(&mut self, value: &Self::Value);
    /// The value, for dumping; `None` when unset.
    fn get(&self) -> Option<Self::Value>;
}

macro_rules! plain_field {
    ($($ty:ty),*) => {$(
        impl Field for $ty {
            type Value = $ty;
            fn take(&mut self, value: &$ty) {
                *self = value.clone();
            }
            fn get(&self) -> Option<$ty> {
                Some(self.clone())
            }
        }
    )*};
}

macro_rules! optional_field {
    ($($ty:ty),*) => {$(
        impl Field for Option<$ty> {
            type Value = $ty;
            fn take(&mut self, value: &$ty) {
                *self = Some(value.clone());
            }
            fn get(&self) -> Option<$ty> {
                self.clone()
            }
        }
    )*};
}

plain_field!(
    u64,
    u32,
    u16,
    Duration,
    bool,
    String,
    PathBuf,
    Vec<Cidr>,
    Vec<SocketAddr>,
    MaxRetries,
    Throttle,
    TlsMode,
    TlsVerify,
    Vec<String>
);
optional_field!(Gateway, Vec<Route>, IpAddr, String, PathBuf);

/// `Support` of a table entry: `Yes` unless it names a `not_yet` reason.
macro_rules! support {
    () => {
        Support::Yes
    };
    ($reason:expr) => {
        Support::NotYet($reason)
    };
}

/// Generates a family of options with fallback from one table; see the
/// module comment. `fixed` fields are part of the struct but not options
/// (a listener's address).
macro_rules! option_family {
    (
        $(#[$meta:meta])*
        pub struct $Options:ident {
            fixed { $( $(#[$fixed_meta:meta])* $fixed:ident: $fixed_ty:ty = $fixed_default:expr, )* }
        }
        $(#[$builtin_meta:meta])*
        fn builtin($($param:ident: $param_ty:ty),*);
        overrides $Overrides:ident;
        specs $SPECS:ident;
        options {
            $(
                $(#[$field_meta:meta])*
                $field:ident: $ty:ty = $name:literal in $scopes:expr, $kind:expr,
                    default $default:expr $(, not_yet $reason:expr)?;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $Options {
            $( $(#[$fixed_meta])* pub $fixed: $fixed_ty, )*
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $Options {
            $(#[$builtin_meta])*
            pub fn builtin($($param: $param_ty),*) -> $Options {
                $Options {
                    $( $fixed: $fixed_default, )*
                    $( $field: $default, )*
                }
            }
        }

        /// Options a scope sets; `None` falls back to the next scope.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub(super) struct $Overrides {
            $( pub(super) $field: Option<<$ty as Field>::Value>, )*
        }

        impl $Overrides {
            /// Takes `typed` if `name` (canonical spelling) is one of ours;
            /// hands it back otherwise.
            pub(super) fn set(&mut self, name: &str, typed: Typed) -> Result<(), Typed> {
                $(
                    if name == $name {
                        self.$field = Some(OptionValue::from_typed(typed)?);
                        return Ok(());
                    }
                )*
                Err(typed)
            }

            /// Layers what this scope sets over `target`.
            pub(super) fn apply(&self, target: &mut $Options) {
                $(
                    if let Some(value) = &self.$field {
                        Field::take(&mut target.$field, value);
                    }
                )*
            }

            /// Every option of `options` as set, for dumping a complete
            /// scope; unset optional fields stay `None`.
            pub(super) fn complete(options: &$Options) -> $Overrides {
                $Overrides {
                    $( $field: Field::get(&options.$field), )*
                }
            }

            /// The options set, in table order, for `dump`.
            pub(super) fn entries(&self) -> Vec<(&'static str, Typed)> {
                let mut out = Vec::new();
                $(
                    if let Some(value) = &self.$field {
                        out.push(($name, OptionValue::to_typed(value, $kind)));
                    }
                )*
                out
            }

            #[allow(dead_code)] // not every family dumps scopes that may be empty
            pub(super) fn is_empty(&self) -> bool {
                *self == $Overrides::default()
            }
        }

        pub(super) const $SPECS: &[OptionSpec] = &[
            $(
                OptionSpec {
                    name: $name,
                    scopes: $scopes,
                    kind: $kind,
                    support: support!($($reason)?),
                },
            )*
        ];

        // A range that does not fit the field it is stored in is a table
        // bug: refuse to compile rather than truncate.
        $(
            const _: () = assert!(
                Kind::max($kind) <= <<$ty as Field>::Value as OptionValue>::CEILING
            );
        )*
    };
}

option_family! {
    /// Outbound options for one (binding, domain), fallback applied.
    pub struct DeliveryOptions {
        fixed {}
    }
    /// The built-in defaults, with `ehlo_hostname` = `hostname`.
    fn builtin(hostname: &str);
    overrides DeliveryOverrides;
    specs OUTBOUND_SPECS;
    options {
        /// Deliver every message here instead of looking up MX records.
        gateway: Option<Gateway> = "gateway" in OUTBOUND, Kind::Gateway,
            default None;
        /// Momentum's routing table for a domain (global and domain scopes,
        /// as in Momentum; a domain inside a binding makes it per binding).
        /// Between `gateway` and `routes` the more specific scope wins, and
        /// `gateway` within one scope (`model::settle_route_choice`).
        routes: Option<Vec<Route>> = "routes" in ROUTES, Kind::Routes,
            default None;
        /// First retry delay; each later one doubles.
        retry_interval: Duration = "retry_interval" in OUTBOUND, INTERVAL,
            default Duration::from_secs(RETRY_INTERVAL_SECONDS_DEFAULT);
        /// Cap on the doubled retry delay.
        max_retry_interval: Duration = "max_retry_interval" in OUTBOUND, INTERVAL,
            default Duration::from_secs(MAX_RETRY_INTERVAL_SECONDS_DEFAULT);
        max_retries: MaxRetries = "max_retries" in OUTBOUND, Kind::MaxRetries,
            default MaxRetries::Auto;
        /// Age at which an undelivered message fails permanently.
        message_expiration: Duration = "message_expiration" in OUTBOUND, INTERVAL,
            default Duration::from_secs(MESSAGE_EXPIRATION_SECONDS_DEFAULT);
        /// Momentum's `opendkim_sign`: sign messages of this binding and
        /// recipient domain with the `opendkim` stanza (before spooling).
        opendkim_sign: bool = "opendkim_sign" in OUTBOUND, Kind::Bool, default false;
        /// Send a DSN to the return path when a recipient fails for good.
        generate_bounces: bool = "generate_bounces" in OUTBOUND, Kind::Bool, default true;
        /// Send one delay DSN (Action: delayed) to the return path of a
        /// message still undelivered `delay_dsn_retry_interval` after it
        /// was received.
        generate_delay_dsn: bool = "generate_delay_dsn" in OUTBOUND, Kind::Bool,
            default false;
        /// Age of a still-deferred message at which its delay DSN goes out
        /// (Momentum's first delay DSN; ecelerity sends no later ones).
        delay_dsn_retry_interval: Duration = "delay_dsn_retry_interval" in OUTBOUND, INTERVAL,
            default Duration::from_secs(DELAY_DSN_RETRY_INTERVAL_SECONDS_DEFAULT);
        /// Momentum's cap on the interval between later delay DSNs.
        delay_dsn_max_retry_interval: Duration = "delay_dsn_max_retry_interval" in OUTBOUND,
            INTERVAL,
            default Duration::from_secs(DELAY_DSN_MAX_RETRY_INTERVAL_SECONDS_DEFAULT),
            not_yet NOT_YET_DELAY_DSN_SERIES;
        /// Concurrent connections per domain.
        /// (In a `host` scope: per address of that host, every domain
        /// together; see `Config::host_max_outbound_connections`.)
        max_outbound_connections: u32 = "max_outbound_connections" in OUTBOUND_AND_HOST,
            integer(1, OUTBOUND_CONNECTIONS_MAX),
            default MAX_OUTBOUND_CONNECTIONS_DEFAULT as u32;
        /// RCPTs per outbound transaction.
        max_recipients_per_batch: u32 = "max_recipients_per_batch" in OUTBOUND,
            integer(1, RECIPIENTS_PER_BATCH_MAX),
            default MAX_RECIPIENTS_PER_BATCH_DEFAULT as u32;
        /// Messages delivered on one connection before QUIT; 0 = unlimited.
        max_deliveries_per_connection: u32 = "max_deliveries_per_connection" in OUTBOUND,
            integer(0, DELIVERIES_PER_CONNECTION_MAX), default 0;
        /// Messages sent per time, shared by every queue inheriting the
        /// setting (by reference).
        outbound_throttle_messages: Throttle = "outbound_throttle_messages" in OUTBOUND,
            Kind::Rate, default Throttle::UNLIMITED;
        /// Connections opened per time, shared like the message throttle.
        outbound_throttle_connections: Throttle = "outbound_throttle_connections" in OUTBOUND,
            Kind::Rate, default Throttle::UNLIMITED;
        /// How long a host that refused or timed out a connection is
        /// skipped, for every domain.
        host_failure_retry: Duration = "host_failure_retry" in GLOBAL_OR_DOMAIN,
            seconds(1, INTERVAL_SECONDS_MAX),
            default Duration::from_secs(HOST_FAILURE_RETRY_SECONDS_DEFAULT);
        /// Over how many shards the queue of one domain is spread (Momentum's
        /// delivery_pool idea, per domain): 1 keeps a domain on one shard,
        /// 0 spreads it over every shard. `max_outbound_connections` is then
        /// shared out between the parts.
        delivery_shards: u32 = "delivery_shards" in OUTBOUND, integer(0, DELIVERY_SHARDS_MAX),
            default DELIVERY_SHARDS_DEFAULT as u32;
        /// How long an idle outbound connection is kept for more mail.
        idle_timeout: Duration = "idle_timeout" in OUTBOUND, seconds(0, TIMEOUT_SECONDS_MAX),
            default Duration::from_secs(IDLE_TIMEOUT_SECONDS_DEFAULT);
        connect_timeout: Duration = "connect_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(COMMAND_TIMEOUT_SECONDS_DEFAULT);
        ehlo_timeout: Duration = "ehlo_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(COMMAND_TIMEOUT_SECONDS_DEFAULT);
        mailfrom_timeout: Duration = "mailfrom_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(COMMAND_TIMEOUT_SECONDS_DEFAULT);
        rcptto_timeout: Duration = "rcptto_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(COMMAND_TIMEOUT_SECONDS_DEFAULT);
        /// Wait for the reply to the DATA command.
        data_timeout: Duration = "data_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(COMMAND_TIMEOUT_SECONDS_DEFAULT);
        /// Wait for the reply after the message body.
        body_timeout: Duration = "body_timeout" in OUTBOUND, TIMEOUT,
            default Duration::from_secs(BODY_TIMEOUT_SECONDS_DEFAULT);
        /// Destination port of MX hosts (a gateway carries its own).
        remote_smtp_port: u16 = "remote_smtp_port" in OUTBOUND, integer(1, u16::MAX as u64),
            default REMOTE_SMTP_PORT_DEFAULT;
        ehlo_hostname: String = "ehlo_hostname" in OUTBOUND, Kind::HostName,
            default hostname.to_string();
        /// Source address of the binding's connections; `None` lets the
        /// kernel choose.
        bind_address: Option<IpAddr> = "bind_address" in BINDING_LEVEL, Kind::IpAddress,
            default None;
        /// STARTTLS to the receiving server: `no`, `ifavailable`
        /// (opportunistic), `required` (never in clear text).
        tls: TlsMode = "tls" in OUTBOUND, Kind::TlsMode, default TlsMode::No;
        /// How the server's certificate is checked (`TlsVerify`).
        tls_verify: TlsVerify = "tls_verify" in OUTBOUND, Kind::TlsVerify,
            default TlsVerify::No;
        /// PEM file of the CAs `tls_verify` trusts; `None`: the system's.
        tls_ca: Option<PathBuf> = "tls_ca" in OUTBOUND, Kind::Path, default None;
        /// PEM client certificate (chain) and key offered to servers.
        tls_certificate: Option<PathBuf> = "tls_certificate" in OUTBOUND, Kind::Path,
            default None;
        tls_key: Option<PathBuf> = "tls_key" in OUTBOUND, Kind::Path, default None;
        /// With `tls = ifavailable`: a failed handshake is retried in clear
        /// text to the same host.
        tls_ifavailable_fallback: bool = "tls_ifavailable_fallback" in OUTBOUND, Kind::Bool,
            default true;
        /// Momentum's outbound_smtp_auth module: the user sent with AUTH
        /// to a server that offers it (with `outbound_smtp_auth_pass`).
        outbound_smtp_auth_user: Option<String> = "outbound_smtp_auth_user" in OUTBOUND,
            Kind::Text, default None;
        outbound_smtp_auth_pass: Option<String> = "outbound_smtp_auth_pass" in OUTBOUND,
            Kind::Text, default None;
        /// `PLAIN` or `LOGIN`; unset: PLAIN when offered, else LOGIN.
        outbound_smtp_auth_type: Option<String> = "outbound_smtp_auth_type" in OUTBOUND,
            Kind::AuthMechanism, default None;
        /// ecelerity's own: send the credentials over a connection without
        /// TLS. Otherwise such a connection sends no credentials: its
        /// mail is deferred (docs/auth.md).
        outbound_smtp_auth_allow_plaintext: bool = "outbound_smtp_auth_allow_plaintext" in OUTBOUND,
            Kind::Bool, default false;
        /// ecelerity's own, after Momentum's `send_8bitmime`: send bodies
        /// with BDAT (RFC 3030) to a server that offers CHUNKING, as they
        /// are spooled (no dot-stuffing, no line-end rewriting). Off:
        /// DATA, as Postfix always does.
        send_chunking: bool = "send_chunking" in OUTBOUND, Kind::Bool, default false;
        /// MTA-STS (RFC 8461): look up the domain's policy and, in
        /// `enforce` mode, deliver only to its MX hosts, over TLS with a
        /// certificate valid for the MX name (docs/tls.md).
        mta_sts: bool = "mta_sts" in OUTBOUND, Kind::Bool, default false;
        /// PEM file of the CAs the MTA-STS policy fetch (HTTPS) and an
        /// enforced policy's MX certificates are checked against; `None`:
        /// the system's.
        mta_sts_ca: Option<PathBuf> = "mta_sts_ca" in OUTBOUND, Kind::Path, default None;
        /// DANE (RFC 7672): TLSA records of an MX host, from DNSSEC
        /// answers (the resolver's AD bit), make TLS mandatory and decide
        /// which certificate is accepted (docs/tls.md).
        dane: bool = "dane" in OUTBOUND, Kind::Bool, default false;
    }
}

/// Why `delay_dsn_max_retry_interval` is refused.
pub(super) const NOT_YET_DELAY_DSN_SERIES: &str =
    "ecelerity sends one delay DSN per message, after delay_dsn_retry_interval";

option_family! {
    /// One `ESMTP_Listener` `Listen`, with Listen > ESMTP_Listener > global >
    /// default already applied.
    pub struct ListenerConfig {
        fixed {
            address: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        }
    }
    /// The listener options every ESMTP Listen starts from; `address` is
    /// unspecified (0.0.0.0:0).
    fn builtin();
    overrides InboundOverrides;
    specs INBOUND_SPECS;
    options {
        enabled: bool = "Enable" in LISTENER, Kind::Bool,
            default true;
        relay_hosts: Vec<Cidr> = "relay_hosts" in INBOUND, Kind::CidrList,
            default RELAY_HOSTS_DEFAULT
                .iter()
                .map(|text| text.parse::<Cidr>().expect("RELAY_HOSTS_DEFAULT parses"))
                .collect();
        /// 0 = unlimited (the engine's own ceiling still applies).
        max_message_size_bytes: u64 = "max_message_size" in INBOUND,
            bytes(0, MESSAGE_SIZE_BYTES_MAX), default 0;
        /// 0 = unlimited.
        max_recipients_per_message: u32 = "max_recipients_per_message" in INBOUND,
            integer(0, RECIPIENTS_PER_MESSAGE_MAX), default 0;
        idle_time: Duration = "idle_time" in INBOUND, TIMEOUT,
            default Duration::from_secs(IDLE_TIME_SECONDS_DEFAULT);
        /// 0 = unlimited.
        max_receptions_per_connection: u32 = "max_receptions_per_connection" in INBOUND,
            integer(0, RECEPTIONS_PER_CONNECTION_MAX), default 0;
        /// Longest DATA text line, CRLF included.
        max_line_length_bytes: u32 = "max_line_length" in INBOUND,
            bytes(LINE_LENGTH_BYTES_MIN, LINE_LENGTH_BYTES_MAX),
            default LINE_LENGTH_BYTES_DEFAULT as u32;
        /// Open connections from one client address; 0 = unlimited. Peers in
        /// `relay_hosts` are exempt.
        max_inbound_connections_per_ip: u32 = "max_inbound_connections_per_ip" in INBOUND,
            integer(0, MAX_INBOUND_CONNECTIONS_PER_IP_MAX),
            default MAX_INBOUND_CONNECTIONS_PER_IP_DEFAULT as u32;
        /// From our last reply until the next command line is complete.
        inbound_command_timeout: Duration = "inbound_command_timeout" in INBOUND, TIMEOUT,
            default Duration::from_secs(INBOUND_COMMAND_TIMEOUT_SECONDS_DEFAULT);
        /// From the 354 reply until the end of the DATA.
        inbound_data_timeout: Duration = "inbound_data_timeout" in INBOUND, TIMEOUT,
            default Duration::from_secs(INBOUND_DATA_TIMEOUT_SECONDS_DEFAULT);
        /// ecelerity's own, until policy can assign bindings: the header
        /// whose value names the binding a message leaves from. It is
        /// removed before the message is spooled. `None`: every message
        /// leaves from the binding `default`.
        binding_header: Option<String> = "binding_header" in LISTENER, Kind::HeaderName,
            default None;
        /// PEM certificate chain and private key: with both set, STARTTLS
        /// is offered (unless `tls = no`).
        tls_certificate: Option<PathBuf> = "tls_certificate" in LISTENER, Kind::Path,
            default None;
        tls_key: Option<PathBuf> = "tls_key" in LISTENER, Kind::Path, default None;
        /// `required`: MAIL, RCPT, DATA and AUTH get `530 5.7.0` before
        /// STARTTLS; `no`: STARTTLS is not offered.
        tls: TlsMode = "tls" in LISTENER, Kind::TlsMode, default TlsMode::IfAvailable;
        /// SMTP AUTH (PLAIN, LOGIN) against `auth_password_file`; offered
        /// only under TLS unless `allow_plaintext_auth`.
        enable_authentication: bool = "enable_authentication" in LISTENER, Kind::Bool,
            default false;
        /// ecelerity's own (Momentum names a datasource in its auth
        /// parameters): `user:hash` lines, argon2 PHC hashes (`ec_passwd`).
        auth_password_file: Option<PathBuf> = "auth_password_file" in LISTENER, Kind::Path,
            default None;
        /// ecelerity's own: offer AUTH on a connection without TLS (else
        /// only after STARTTLS, Postfix's `smtpd_tls_auth_only = yes`).
        allow_plaintext_auth: bool = "allow_plaintext_auth" in LISTENER, Kind::Bool,
            default false;
        /// ecelerity's own: failed AUTHs from one address within
        /// `auth_failure_window`, after which AUTH is answered `421 4.7.0`.
        max_auth_failures_per_ip: u32 = "max_auth_failures_per_ip" in LISTENER,
            integer(1, MAX_AUTH_FAILURES_PER_IP_MAX),
            default MAX_AUTH_FAILURES_PER_IP_DEFAULT as u32;
        /// ecelerity's own: how long a failed AUTH counts.
        auth_failure_window: Duration = "auth_failure_window" in LISTENER, INTERVAL,
            default Duration::from_secs(AUTH_FAILURE_WINDOW_SECONDS_DEFAULT);
        /// ecelerity's own: delay before a `535` is answered.
        auth_failure_delay_ms: u64 = "auth_failure_delay_ms" in LISTENER,
            Kind::Integer { min: 0, max: AUTH_FAILURE_DELAY_MS_MAX, unit: " ms" },
            default AUTH_FAILURE_DELAY_MS_DEFAULT;
        /// ecelerity's own (Postfix's `smtputf8_enable`): offer SMTPUTF8
        /// (RFC 6531); without it a UTF-8 address gets `553 5.6.7`.
        enable_smtputf8: bool = "enable_smtputf8" in LISTENER, Kind::Bool, default true;
        /// ecelerity's own: offer DSN (RFC 3461: NOTIFY, ORCPT, RET, ENVID).
        enable_dsn: bool = "enable_dsn" in LISTENER, Kind::Bool, default true;
        /// ecelerity's own: offer CHUNKING (RFC 3030 BDAT), as Postfix
        /// does by default.
        enable_chunking: bool = "enable_chunking" in LISTENER, Kind::Bool, default true;
        /// ecelerity's own (Postfix's `smtpd_upstream_proxy_protocol`,
        /// restricted to known proxies): connections from these addresses
        /// must open with a PROXY protocol v1 or v2 header, whose client
        /// address is then the peer's for everything; connections from
        /// elsewhere may not send one. Empty: no PROXY protocol.
        proxy_protocol_hosts: Vec<Cidr> = "proxy_protocol_hosts" in LISTENER, Kind::CidrList,
            default Vec::new();
        /// ecelerity's own (Postfix's `smtpd_upstream_proxy_timeout`): how
        /// long a proxy may take to send its PROXY header.
        proxy_protocol_timeout: Duration = "proxy_protocol_timeout" in LISTENER, TIMEOUT,
            default Duration::from_secs(PROXY_PROTOCOL_TIMEOUT_SECONDS_DEFAULT);
    }
}

option_family! {
    /// The global options that only the global scope sets.
    pub struct GlobalOptions {
        fixed {}
    }
    /// The built-in defaults (the hostname is the system's).
    fn builtin();
    overrides GlobalOverrides;
    specs GLOBAL_SPECS;
    options {
        spoolbase: PathBuf = "spoolbase" in GLOBAL, Kind::Path, default SPOOLBASE_DEFAULT.into();
        /// This node's name: the banner, Received headers, and the default
        /// `ehlo_hostname`.
        hostname: String = "hostname" in GLOBAL, Kind::HostName, default system_hostname();
        /// 0 means one per CPU.
        shards: u64 = "shards" in GLOBAL, integer(0, SHARDS_MAX), default 0;
        pidfile: PathBuf = "pidfile" in GLOBAL, Kind::Path, default PIDFILE_DEFAULT.into();
        /// ecelerity's own: bytes per second each shard's spool compaction
        /// may copy (0: off).
        spool_compaction_bytes_per_second: u64 = "spool_compaction_bytes_per_second" in GLOBAL,
            Kind::Integer { min: 0, max: SPOOL_COMPACTION_BYTES_PER_SECOND_MAX, unit: " bytes/s" },
            default SPOOL_COMPACTION_BYTES_PER_SECOND_DEFAULT;
        /// ecelerity's own: the live share (percent of a segment) at or
        /// below which a sealed spool segment is compacted.
        spool_compaction_live_percent: u64 = "spool_compaction_live_percent" in GLOBAL,
            Kind::Integer { min: 0, max: 100, unit: " %" },
            default SPOOL_COMPACTION_LIVE_PERCENT_DEFAULT;
        server_max_inbound_connections: u32 = "server_max_inbound_connections" in GLOBAL,
            integer(1, SERVER_MAX_INBOUND_CONNECTIONS_MAX),
            default SERVER_MAX_INBOUND_CONNECTIONS_DEFAULT as u32;
        /// Open outbound connections over every shard.
        server_max_outbound_connections: u32 = "server_max_outbound_connections" in GLOBAL,
            integer(1, SERVER_MAX_OUTBOUND_CONNECTIONS_MAX),
            default SERVER_MAX_OUTBOUND_CONNECTIONS_DEFAULT as u32;
        /// Reception slows above this many entries waiting for delivery.
        backlog_slowdown_entries: u64 = "backlog_slowdown_entries" in GLOBAL,
            integer(1, BACKLOG_ENTRIES_MAX), default BACKLOG_SLOWDOWN_ENTRIES_DEFAULT;
        /// Reception refuses new work above this many.
        backlog_refuse_entries: u64 = "backlog_refuse_entries" in GLOBAL,
            integer(1, BACKLOG_ENTRIES_MAX), default BACKLOG_REFUSE_ENTRIES_DEFAULT;
        /// Longest delay of a reply while reception slows.
        in_flow_delay_ms: u64 = "in_flow_delay_ms" in GLOBAL,
            Kind::Integer { min: 0, max: IN_FLOW_DELAY_MS_MAX, unit: " ms" },
            default IN_FLOW_DELAY_MS_DEFAULT;
        /// ecelerity's own: the DNS servers delivery asks, in order; empty
        /// means the system's (/etc/resolv.conf).
        nameservers: Vec<SocketAddr> = "nameservers" in GLOBAL, Kind::NameserverList,
            default Vec::new();
        /// Addresses delivery never connects to, whatever DNS says.
        prohibited_hosts: Vec<Cidr> = "prohibited_hosts" in GLOBAL, Kind::CidrList,
            default PROHIBITED_HOSTS_DEFAULT
                .iter()
                .map(|text| text.parse::<Cidr>().expect("PROHIBITED_HOSTS_DEFAULT parses"))
                .collect();
        /// Engagement tracking (docs/templates.md "Options"): an open
        /// pixel in generated html, unless a transmission says otherwise.
        open_tracking_enabled: bool = "open_tracking_enabled" in GLOBAL, Kind::Bool,
            default false;
        /// Click links rewritten in generated text and html, unless a
        /// transmission says otherwise.
        click_tracking_enabled: bool = "click_tracking_enabled" in GLOBAL, Kind::Bool,
            default false;
        /// `host[:port]` the tracking URLs point at.
        tracking_domain: String = "tracking_domain" in GLOBAL, Kind::TrackingDomain,
            default TRACKING_DOMAIN_DEFAULT.to_string();
        open_tracking_scheme: String = "open_tracking_scheme" in GLOBAL, Kind::UrlScheme,
            default "http".to_string();
        click_tracking_scheme: String = "click_tracking_scheme" in GLOBAL, Kind::UrlScheme,
            default "http".to_string();
        /// How long a tracking link stays valid after generation.
        tracking_link_expiry: Duration = "tracking_link_expiry" in GLOBAL,
            seconds(1, TRACKING_LINK_EXPIRY_SECONDS_MAX),
            default Duration::from_secs(TRACKING_LINK_EXPIRY_SECONDS_DEFAULT);
        /// Whether click and open tokens carry the recipient's metadata.
        click_tracking_include_metadata: bool = "click_tracking_include_metadata" in GLOBAL,
            Kind::Bool, default true;
        /// Metadata longer than this is left out of tracking tokens.
        max_metadata_len: u64 = "max_metadata_len" in GLOBAL,
            bytes(0, MAX_METADATA_LEN_MAX), default MAX_METADATA_LEN_DEFAULT;
        /// ecelerity's own: the PostgreSQL `Datasource` holding the REST
        /// API's stored templates and recipient lists; unset: SQLite in
        /// `<spoolbase>/api.sqlite`. Restart only.
        api_store_datasource: Option<String> = "api_store_datasource" in GLOBAL, Kind::Text,
            default None;
    }
}

option_family! {
    /// One `Control_Listener` `Listen` (a Unix socket), with Listen >
    /// Control_Listener > default applied.
    pub struct ControlListenerConfig {
        fixed {
            /// As written; relative to the daemon's working directory if
            /// relative. For a TCP console, its address as written.
            path: PathBuf = PathBuf::new(),
            /// A TCP console's address (`Listen "127.0.0.1:2025"`); `None`
            /// for a Unix socket.
            tcp: Option<SocketAddr> = None,
            /// The `Peer` rules of this Listen and of the Control_Listener
            /// (TCP consoles only; see [`ControlListenerConfig::allows`]).
            peers: Vec<ControlPeer> = Vec::new(),
        }
    }
    /// The defaults every control Listen starts from; `path` is empty.
    fn builtin();
    overrides ControlOverrides;
    specs CONTROL_SPECS;
    options {
        /// Permission bits for the socket, at most `FILE_MODE_MAX`.
        file_mode: u32 = "File_Mode" in CONTROL, Kind::FileMode, default FILE_MODE_DEFAULT;
        /// An idle console session is closed after this long.
        timeout: Duration = "timeout" in CONTROL, TIMEOUT,
            default Duration::from_secs(CONSOLE_TIMEOUT_SECONDS_DEFAULT);
    }
}

/// A `Peer "cidr" { Enable = true|false }` rule of a TCP console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPeer {
    pub cidr: Cidr,
    pub enable: bool,
    /// Written inside the `Listen` (wins over the listener's own rule for
    /// the same netblock).
    pub in_listen: bool,
}

impl ControlListenerConfig {
    /// Whether a TCP console client at `ip` may connect: the most specific
    /// `Peer` netblock that holds it decides (a `Listen`'s rule before the
    /// listener's for the same size); with no rule for it, only loopback
    /// clients may.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.peers
            .iter()
            .filter(|p| p.cidr.contains(ip))
            .max_by_key(|p| (p.cidr.prefix_bits(), p.in_listen))
            .map_or(ip.is_loopback(), |p| p.enable)
    }
}

option_family! {
    /// Where the `ec_logger` writes.
    pub struct LogPaths {
        fixed {}
    }
    /// The built-in log paths.
    fn builtin();
    overrides LoggerOverrides;
    specs LOGGER_SPECS;
    options {
        mainlog: PathBuf = "mainlog" in LOGGER, Kind::Path, default MAINLOG_DEFAULT.into();
        rejectlog: PathBuf = "rejectlog" in LOGGER, Kind::Path, default REJECTLOG_DEFAULT.into();
        paniclog: PathBuf = "paniclog" in LOGGER, Kind::Path, default PANICLOG_DEFAULT.into();
        bouncelog: PathBuf = "bouncelog" in LOGGER, Kind::Path, default BOUNCELOG_DEFAULT.into();
        /// Momentum's acctlog (auth lines); unset: no acctlog is written.
        acctlog: Option<PathBuf> = "acctlog" in LOGGER, Kind::Path, default None;
        /// Seconds between two mainlog `M` heartbeat lines; 0: none.
        heartbeat: Duration = "heartbeat" in LOGGER, seconds(0, HEARTBEAT_SECONDS_MAX),
            default Duration::from_secs(HEARTBEAT_SECONDS_DEFAULT);
        /// The JSON-lines event log (`events`); none when unset.
        eventlog: Option<PathBuf> = "eventlog" in LOGGER, Kind::Path, default None;
    }
}

option_family! {
    /// One `webhook "name"` stanza: where events are POSTed (`events`).
    pub struct WebhookConfig {
        fixed {
            /// The stanza's name.
            name: String = String::new(),
        }
    }
    /// A webhook without a target (`model` refuses one left so).
    fn builtin();
    overrides WebhookOverrides;
    specs WEBHOOK_SPECS;
    options {
        target: Option<String> = "target" in WEBHOOK, Kind::WebhookTarget, default None;
        /// Event types sent; all of `WEBHOOK_EVENT_TYPES` by default.
        events: Vec<String> = "events" in WEBHOOK, Kind::EventTypes,
            default WEBHOOK_EVENT_TYPES.iter().map(|t| t.to_string()).collect();
        /// Sent in `X-MessageSystems-Webhook-Token` when set.
        auth_token: Option<String> = "auth_token" in WEBHOOK, Kind::Text, default None;
        /// Events per POST, at most.
        batch_size: u32 = "batch_size" in WEBHOOK,
            integer(1, WEBHOOK_BATCH_SIZE_MAX), default WEBHOOK_BATCH_SIZE_DEFAULT;
        /// Event log bytes this endpoint may lag behind; older events are
        /// skipped (and counted) beyond it.
        max_backlog_bytes: u64 = "max_backlog_bytes" in WEBHOOK,
            bytes(WEBHOOK_BACKLOG_BYTES_MIN, WEBHOOK_BACKLOG_BYTES_MAX),
            default WEBHOOK_BACKLOG_BYTES_DEFAULT;
    }
}

option_family! {
    /// The `Security` stanza: whom the daemon runs as once its sockets are
    /// bound.
    pub struct Security {
        fixed {}
    }
    /// Neither user nor group: the daemon keeps its identity.
    fn builtin();
    overrides SecurityOverrides;
    specs SECURITY_SPECS;
    options {
        user: Option<String> = "user" in SECURITY, Kind::Text, default None;
        group: Option<String> = "group" in SECURITY, Kind::Text, default None;
    }
}

/// The family tables, in the order `OPTIONS` lists them.
const FAMILIES: [&[OptionSpec]; 7] = [
    GLOBAL_SPECS,
    INBOUND_SPECS,
    CONTROL_SPECS,
    LOGGER_SPECS,
    SECURITY_SPECS,
    OUTBOUND_SPECS,
    WEBHOOK_SPECS,
];

const OPTIONS_COUNT: usize = options_count(FAMILIES);

const fn options_count(tables: [&[OptionSpec]; FAMILIES.len()]) -> usize {
    let (mut t, mut n) = (0, 0);
    while t < tables.len() {
        n += tables[t].len();
        t += 1;
    }
    n
}

const fn concat(tables: [&[OptionSpec]; FAMILIES.len()]) -> [OptionSpec; OPTIONS_COUNT] {
    let mut out = [GLOBAL_SPECS[0]; OPTIONS_COUNT];
    let (mut t, mut n) = (0, 0);
    while t < tables.len() {
        let mut i = 0;
        while i < tables[t].len() {
            out[n] = tables[t][i];
            n += 1;
            i += 1;
        }
        t += 1;
    }
    assert!(n == OPTIONS_COUNT);
    out
}

/// Every option ecelerity understands (docs/configuration.md lists them
/// with their meaning).
pub(super) const OPTIONS: &[OptionSpec] = &concat(FAMILIES);

/// The spec of `name` for `scope`: a few names (`tls`, `tls_certificate`,
/// `tls_key`) are a listener's option in listener scopes and an outbound
/// one elsewhere, as in Momentum. A scope no spec allows gets the first,
/// for the error message.
pub(super) fn lookup(name: &str, scope: Scope) -> Option<&'static OptionSpec> {
    let mut named = OPTIONS
        .iter()
        .filter(|spec| spec.name.eq_ignore_ascii_case(name));
    let first = named.clone().next()?;
    Some(
        named
            .find(|spec| spec.scopes.contains(scope))
            .unwrap_or(first),
    )
}

/// The spec of `name` as spelled in the table.
pub(super) fn spec_of(name: &str) -> &'static OptionSpec {
    let found = OPTIONS.iter().find(|spec| spec.name == name);
    found.expect("a name from the option table")
}
