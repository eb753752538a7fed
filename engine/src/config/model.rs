//! From syntax tree to typed settings: which scope may hold which stanza,
//! how same-named stanzas merge, where each setting is stored, and how
//! options fall back from specific scopes to global.
//! Owns: the scope walker, `Settings` (what `Config` wraps), value
//! conversion (`convert`: type and range checks against the option's
//! `Kind`), and the list of settings the engine does not act on yet.
//! May call: `options` (the tables and their generated override sets),
//! `parse` (tree types), `error`, `ecelerity_policy::Cidr`, and the file
//! system for the default hostname only.
//! Never: tokens or include files (that is `parse`); per-option code (that
//! is generated from the tables in `options`); text output (`dump`).
//!
//! Fallback is resolved in two steps. At build time global values are
//! merged onto the built-in defaults, and each listener's values onto its
//! listener's and the global ones, so those are stored complete. Outbound
//! options vary by (binding, domain), so each binding group, binding and
//! domain scope stores only what it sets (`DeliveryOverrides`), and
//! `Settings::delivery` layers them at lookup time.
//!
//! Options the engine does not act on yet (a `not_yet` table entry) are
//! valid language: `build` accepts them so the model stays Momentum's, and
//! records the first one for `Config::check_supported`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ecelerity_policy::Cidr;

use super::error::{ConfigError, ConfigErrorKind, Scope};
use super::options::*;
use super::parse::{FileId, Item, Keyword, Stanza, Tree, Value, Word};
use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DomainScope {
    /// The name as first written; the map key is its lowercase form.
    pub(super) name: String,
    pub(super) overrides: DeliveryOverrides,
}

/// A `host "name" { }` scope: an MX host (or gateway) by name or address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostScope {
    /// The name as first written; the map key is its lowercase form.
    pub(super) name: String,
    /// Open connections per address of the host, over every domain and
    /// shard; unset = unlimited (Momentum's -1).
    pub(super) max_outbound_connections: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GroupScope {
    pub(super) overrides: DeliveryOverrides,
    /// binding_group::domain, keyed by lowercase domain.
    pub(super) domains: BTreeMap<String, DomainScope>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BindingScope {
    /// Always a key of `Settings::groups`.
    pub(super) group: String,
    pub(super) overrides: DeliveryOverrides,
    /// binding::domain: domains inside a top-level `binding` stanza.
    pub(super) domains: BTreeMap<String, DomainScope>,
    /// binding_group::binding::domain: domains inside a `binding` stanza
    /// inside its `binding_group`.
    pub(super) group_domains: BTreeMap<String, DomainScope>,
}

impl BindingScope {
    fn new(group: &str) -> BindingScope {
        BindingScope {
            group: group.to_string(),
            overrides: DeliveryOverrides::default(),
            domains: BTreeMap::new(),
            group_domains: BTreeMap::new(),
        }
    }
}

/// Everything `Config` knows, fallback for global and listener options
/// already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    /// Options only the global scope sets, over the defaults.
    pub(super) global: GlobalOptions,
    /// Global listener options over the defaults. `address` is unused
    /// (unspecified) and `enabled` is true: Enable is not a global option.
    pub(super) inbound: ListenerConfig,
    /// Global outbound options over the defaults.
    pub(super) delivery: DeliveryOptions,
    pub(super) esmtp_listeners: Vec<ListenerConfig>,
    pub(super) control_listeners: Vec<ControlListenerConfig>,
    /// Every `HTTP_Listener` `Listen` address, in file order.
    pub(super) http_listeners: Vec<SocketAddr>,
    pub(super) logger_name: String,
    pub(super) logs: LogPaths,
    pub(super) security: Option<Security>,
    /// Global domain scopes, keyed by lowercase name.
    pub(super) domains: BTreeMap<String, DomainScope>,
    /// Always holds `DEFAULT_BINDING`.
    pub(super) groups: BTreeMap<String, GroupScope>,
    /// Always holds `DEFAULT_BINDING`.
    pub(super) bindings: BTreeMap<String, BindingScope>,
    /// Global `host` scopes, keyed by lowercase name.
    pub(super) hosts: BTreeMap<String, HostScope>,
    /// The `opendkim` module stanza, if any (`config::dkim`).
    pub(super) opendkim: Option<super::dkim::OpendkimConfig>,
    /// `webhook` stanzas, in file order.
    pub(super) webhooks: Vec<WebhookConfig>,
    /// `Datasource` stanzas, in file order (`config::datasource`).
    pub(super) datasources: Vec<super::datasource::DatasourceConfig>,
    /// The `scriptlet` module stanza, if any (`config::scriptlet`).
    pub(super) scriptlet: Option<super::scriptlet::ScriptletConfig>,
}

impl Settings {
    fn binding(&self, binding: &str) -> &BindingScope {
        let found = self
            .bindings
            .get(binding)
            .or_else(|| self.bindings.get(DEFAULT_BINDING));
        found.expect("the default binding always exists")
    }

    pub(super) fn binding_group_of(&self, binding: &str) -> &str {
        &self.binding(binding).group
    }

    pub(super) fn delivery(&self, binding: &str, domain: &str) -> DeliveryOptions {
        let binding = self.binding(binding);
        let group = &self.groups[&binding.group];
        let key: Cow<str> = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(domain.to_ascii_lowercase())
        } else {
            Cow::Borrowed(domain)
        };
        let key = key.as_ref();
        let mut options = self.delivery.clone();
        // Least specific first, so each later layer wins.
        let layers = [
            self.domains.get(key).map(|d| &d.overrides),
            Some(&group.overrides),
            Some(&binding.overrides),
            group.domains.get(key).map(|d| &d.overrides),
            binding.domains.get(key).map(|d| &d.overrides),
            binding.group_domains.get(key).map(|d| &d.overrides),
        ];
        for layer in layers.into_iter().flatten() {
            layer.apply(&mut options);
            settle_route_choice(layer, &mut options);
        }
        options
    }
}

/// `gateway` and `routes` both say where a domain's mail goes: the one
/// set in the more specific scope wins, and `gateway` when one scope sets
/// both (it "ignores MX", Momentum's strongest statement). Called after
/// each layer is applied, least specific first.
fn settle_route_choice(layer: &DeliveryOverrides, options: &mut DeliveryOptions) {
    if layer.gateway.is_some() {
        options.routes = None;
    } else if layer.routes.is_some() {
        options.gateway = None;
    }
}

/// The system hostname, or `HOSTNAME_FALLBACK`.
pub(super) fn system_hostname() -> String {
    let read = std::fs::read_to_string(HOSTNAME_PATH).unwrap_or_default();
    let name = read.lines().next().unwrap_or("").trim();
    if name.is_empty() {
        HOSTNAME_FALLBACK.to_string()
    } else {
        name.to_string()
    }
}

/// Parses a `Listen` address for SMTP: `ip:port`, `:port` or `*:port`
/// (all IPv4 addresses), `[ipv6]:port`, `[*]:port` (all IPv6 addresses).
/// Port 0 asks the kernel for a free port.
pub(super) fn parse_listen_address(text: &str) -> Result<SocketAddr, &'static str> {
    let (ip, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or("expected `[address]:port`")?;
        let ip = if host == "*" {
            Ipv6Addr::UNSPECIFIED
        } else {
            host.parse::<Ipv6Addr>()
                .map_err(|_| "not an IPv6 address inside the brackets")?
        };
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or("missing `:port`")?;
        if host.contains(':') {
            return Err("IPv6 addresses must be bracketed, e.g. \"[::1]:25\"");
        }
        let ip = if host.is_empty() || host == "*" {
            Ipv4Addr::UNSPECIFIED
        } else {
            host.parse::<Ipv4Addr>()
                .map_err(|_| "the host must be an IPv4 address, `*`, or a bracketed IPv6 address")?
        };
        (IpAddr::V4(ip), port)
    };
    let port = parse_decimal(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("the port must be a number in 0..=65535")?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses one `nameservers` item: `ip` (port 53), `ip:port`, `[ipv6]:port`.
pub(super) fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

/// Parses a `gateway`: `host:port`, `host` (`remote_smtp_port`), `[ipv6]:port`,
/// `[ipv6]`.
pub(super) fn parse_gateway(text: &str) -> Result<Gateway, &'static str> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.chars().any(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("missing `]` after the IPv6 address")?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address inside the brackets")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("expected `:port` after `]`")?,
            ),
        };
        (host, port)
    } else {
        match text.split_once(':') {
            None => (text, None),
            Some((_, port)) if port.contains(':') => {
                return Err("IPv6 addresses must be bracketed, e.g. \"[::1]:25\"")
            }
            Some((host, port)) => (host, Some(port)),
        }
    };
    if host.is_empty() {
        return Err("missing host");
    }
    let port = match port {
        None => None,
        Some(port) => Some(
            parse_decimal(port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or("the port must be a number in 1..=65535")?,
        ),
    };
    Ok(Gateway {
        host: host.to_string(),
        port,
    })
}

/// Parses one `routes` item: `__mx__`, a bare host name or IP address
/// (IPv6 bracketed), or `smtp://host?pref=P&ttl=T&port=O&type=mx|a`.
pub(super) fn parse_route(text: &str) -> Result<Route, &'static str> {
    if text.eq_ignore_ascii_case(ROUTE_MX) {
        return Ok(Route::Mx);
    }
    if text.is_empty() {
        return Err("empty");
    }
    if text.chars().any(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    let (host, query) = match text.split_once("://") {
        None => (text, None),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("smtp") => match rest.split_once('?') {
            Some((host, query)) => (host, Some(query)),
            None => (rest, None),
        },
        Some(_) => return Err("only smtp:// routes are supported (delivery_method is ESMTP)"),
    };
    let mut route = RouteHost {
        host: parse_route_host(host)?,
        preference: None,
        port: None,
        mx_lookup: false,
        ttl_seconds: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or("expected key=value after `?`")?;
        let number = parse_decimal(value);
        match key.to_ascii_lowercase().as_str() {
            "pref" => {
                let pref = number.and_then(|n| u16::try_from(n).ok());
                route.preference = Some(pref.ok_or("pref must be a number in 0..=65535")?);
            }
            "port" => {
                let port = number
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|p| *p != 0);
                route.port = Some(port.ok_or("port must be a number in 1..=65535")?);
            }
            "ttl" => {
                let ttl = number.and_then(|n| u32::try_from(n).ok());
                route.ttl_seconds = Some(ttl.ok_or("ttl must be a whole number of seconds")?);
            }
            "type" if value.eq_ignore_ascii_case("mx") => route.mx_lookup = true,
            "type" if value.eq_ignore_ascii_case("a") => route.mx_lookup = false,
            "type" => return Err("type must be `mx` or `a`"),
            _ => return Err("unknown key; use pref, ttl, port or type"),
        }
    }
    Ok(Route::Host(route))
}

/// The host of a route: a name or an IP address; an IPv6 address must be
/// bracketed, and a port goes in `?port=`.
fn parse_route_host(text: &str) -> Result<String, &'static str> {
    let host = match text.strip_prefix('[') {
        Some(rest) => {
            let inner = rest
                .strip_suffix(']')
                .ok_or("an IPv6 address is written \"[address]\"; give a port as ?port=")?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| "not an IPv6 address inside the brackets")?;
            inner
        }
        None if text.matches(':').count() > 1 => {
            return Err("IPv6 addresses must be bracketed, e.g. \"[::1]\"")
        }
        None if text.contains(':') => {
            return Err("give the port as ?port=, e.g. smtp://host?port=2525")
        }
        None => text,
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if host.contains(['/', '?', '&', '@']) {
        return Err("not a host name or IP address");
    }
    Ok(host.to_string())
}

/// Digits only; `None` for anything else, including overflow.
/// A webhook target: `http://host[:port][/path]`; the port defaults to 80
/// and the path to `/`. Returns (host, port, path). (https waits for the
/// TLS client.)
pub fn parse_webhook_target(text: &str) -> Result<(String, u16, String), &'static str> {
    let Some(rest) = text.strip_prefix("http://") else {
        return Err("only http:// targets are supported");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("the path may not contain spaces or control characters");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port.parse::<u16>().map_err(|_| "bad port")?;
            (host, port)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 || host.contains('@') {
        return Err("needs a host and a port other than 0");
    }
    Ok((host.to_string(), port, path.to_string()))
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

pub(super) fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "yes", "on", "1"];
    const FALSE: [&str; 4] = ["false", "no", "off", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

/// Where in the scope tree the walker is.
#[derive(Debug, Clone)]
enum Place {
    Global,
    Group(String),
    Binding {
        binding: String,
        nested: bool,
    },
    Domain {
        at: DomainAt,
        key: String,
    },
    EsmtpListener,
    EsmtpListen(usize),
    ControlListener,
    ControlListen(usize),
    /// A `Peer` of the Control_Listener: its index in `control_peers`.
    ControlPeer(usize),
    HttpListener,
    HttpListen,
    EcLogger,
    Security,
    /// A global `host` scope; the key is the lowercase name.
    Host(String),
    /// Index into `Builder::webhooks`.
    Webhook(usize),
}

#[derive(Debug, Clone)]
enum DomainAt {
    Global,
    Group(String),
    /// Inside a top-level `binding` stanza.
    Binding(String),
    /// Inside a `binding` stanza inside a `binding_group`.
    GroupBinding(String),
}

impl Place {
    fn scope(&self) -> Scope {
        match self {
            Place::Global => Scope::Global,
            Place::Group(_) => Scope::BindingGroup,
            Place::Binding { .. } => Scope::Binding,
            Place::Domain { .. } => Scope::Domain,
            Place::EsmtpListener => Scope::EsmtpListener,
            Place::EsmtpListen(_) => Scope::EsmtpListen,
            Place::ControlListener => Scope::ControlListener,
            Place::ControlListen(_) => Scope::ControlListen,
            Place::ControlPeer(_) => Scope::ControlPeer,
            Place::HttpListener => Scope::HttpListener,
            Place::HttpListen => Scope::HttpListen,
            Place::EcLogger => Scope::EcLogger,
            Place::Security => Scope::Security,
            Place::Host(_) => Scope::Host,
            Place::Webhook(_) => Scope::Webhook,
        }
    }
}

/// A setting the engine would not act on yet (its table entry says
/// `not_yet`), kept in reading order.
#[derive(Debug)]
struct Unheeded {
    file: FileId,
    line: u32,
    /// As written.
    option: String,
    /// Why, from the table entry.
    reason: &'static str,
}

/// Collects what each scope sets while walking the tree.
struct Builder<'t> {
    tree: &'t Tree,
    global: GlobalOverrides,
    global_inbound: InboundOverrides,
    global_delivery: DeliveryOverrides,
    esmtp_listener: InboundOverrides,
    /// In order of first appearance; stanzas for the same address merge.
    listens: Vec<(SocketAddr, InboundOverrides)>,
    /// Where each of `listens` was first opened, for errors about it.
    listen_lines: Vec<(FileId, u32)>,
    control_listener: ControlOverrides,
    /// In order of first appearance; stanzas for the same path merge.
    control_listens: Vec<(PathBuf, ControlOverrides)>,
    /// Every `Peer` of the Control_Listener: the `Listen` it is in (`None`:
    /// the listener's own), its netblock and its `Enable`.
    control_peers: Vec<(Option<usize>, Cidr, bool)>,
    /// `HTTP_Listener` `Listen` addresses, in order of first appearance.
    http_listens: Vec<SocketAddr>,
    /// The instance name (never empty) and its paths.
    logger: Option<(String, LoggerOverrides)>,
    security: Option<SecurityOverrides>,
    domains: BTreeMap<String, DomainScope>,
    groups: BTreeMap<String, GroupScope>,
    bindings: BTreeMap<String, BindingScope>,
    /// In reading order.
    unheeded: Vec<Unheeded>,
    /// Global `host` scopes, keyed by lowercase name.
    hosts: BTreeMap<String, HostScope>,
    /// Throttle settings read so far: the next one's bucket.
    throttles: u32,
    opendkim: Option<super::dkim::OpendkimConfig>,
    /// `webhook` stanzas in order of first appearance (same name merges),
    /// with where each was first written.
    webhooks: Vec<WebhookStanza>,
    datasources: Vec<super::datasource::DatasourceConfig>,
    /// Where `api_store_datasource` was last set.
    api_store_line: Option<(FileId, u32)>,
    scriptlet: Option<super::scriptlet::ScriptletConfig>,
}

struct WebhookStanza {
    name: String,
    file: FileId,
    line: u32,
    overrides: WebhookOverrides,
}

/// What `build` makes of a tree.
pub(super) struct Built {
    pub(super) settings: Settings,
    /// The first setting, in reading order, that the engine does not act on
    /// yet (see `Config::check_supported`).
    pub(super) unsupported: Option<ConfigError>,
}

/// Checks `tree` and builds the settings it describes.
pub(super) fn build(tree: &Tree) -> Result<Built, ConfigError> {
    let mut builder = Builder {
        tree,
        global: GlobalOverrides::default(),
        global_inbound: InboundOverrides::default(),
        global_delivery: DeliveryOverrides::default(),
        esmtp_listener: InboundOverrides::default(),
        listens: Vec::new(),
        listen_lines: Vec::new(),
        control_listener: ControlOverrides::default(),
        control_listens: Vec::new(),
        control_peers: Vec::new(),
        http_listens: Vec::new(),
        logger: None,
        security: None,
        domains: BTreeMap::new(),
        groups: BTreeMap::new(),
        bindings: BTreeMap::new(),
        unheeded: Vec::new(),
        hosts: BTreeMap::new(),
        throttles: 0,
        opendkim: None,
        webhooks: Vec::new(),
        datasources: Vec::new(),
        api_store_line: None,
        scriptlet: None,
    };
    builder
        .groups
        .insert(DEFAULT_BINDING.to_string(), GroupScope::default());
    builder.walk(&Place::Global, &tree.items)?;
    let lines = std::mem::take(&mut builder.listen_lines);
    builder.check_webhooks()?;
    builder.check_api_store()?;
    let mut built = builder.finish();
    // Refused by `Config::load` (with the `not_yet` settings), so that an
    // option set alone still parses.
    for (listener, (file, line)) in built.settings.esmtp_listeners.iter().zip(lines) {
        if let Some(reason) = listener_tls_problem(listener) {
            let kind = ConfigErrorKind::ListenerTls {
                address: listener.address.to_string(),
                reason,
            };
            built.unsupported = built.unsupported.or(Some(tree.error(file, line, kind)));
            break;
        }
    }
    Ok(built)
}

/// What is wrong with a listener's TLS settings, if anything: a
/// certificate without its key (or the reverse), or `tls = required`
/// with neither.
fn listener_tls_problem(listener: &ListenerConfig) -> Option<&'static str> {
    match (&listener.tls_certificate, &listener.tls_key, listener.tls) {
        (Some(_), None, _) | (None, Some(_), _) => Some("tls_certificate and tls_key go together"),
        (None, None, TlsMode::Required) => Some("tls = required needs tls_certificate and tls_key"),
        _ => None,
    }
}

impl Builder<'_> {
    fn error(&self, file: FileId, line: u32, kind: ConfigErrorKind) -> ConfigError {
        self.tree.error(file, line, kind)
    }

    fn walk(&mut self, place: &Place, items: &[Item]) -> Result<(), ConfigError> {
        for item in items {
            match item {
                Item::Setting {
                    file,
                    line,
                    name,
                    value,
                } => self.set(place, *file, *line, name, value)?,
                Item::Stanza(stanza)
                    if stanza.keyword == Keyword::Opendkim && matches!(place, Place::Global) =>
                {
                    if self.opendkim.is_some() {
                        let kind = ConfigErrorKind::Opendkim {
                            reason: "only one opendkim stanza may be configured".into(),
                        };
                        return Err(self.error(stanza.file, stanza.line, kind));
                    }
                    self.opendkim = Some(super::dkim::read(self.tree, stanza)?);
                }
                Item::Stanza(stanza)
                    if stanza.keyword == Keyword::Datasource && matches!(place, Place::Global) =>
                {
                    let read = super::datasource::read(self.tree, stanza)?;
                    let fail = |reason: String| {
                        self.error(
                            stanza.file,
                            stanza.line,
                            ConfigErrorKind::Datasource { reason },
                        )
                    };
                    if self.datasources.iter().any(|d| d.name == read.name) {
                        return Err(fail(format!("Datasource `{}` appears twice", read.name)));
                    }
                    if self.datasources.len() == super::datasource::DATASOURCES_MAX {
                        return Err(fail(format!(
                            "more than {} Datasource stanzas",
                            super::datasource::DATASOURCES_MAX
                        )));
                    }
                    self.datasources.push(read);
                }
                Item::Stanza(stanza)
                    if stanza.keyword == Keyword::Scriptlet && matches!(place, Place::Global) =>
                {
                    if self.scriptlet.is_some() {
                        let kind = ConfigErrorKind::Scriptlet {
                            reason: "only one scriptlet stanza may be configured".into(),
                        };
                        return Err(self.error(stanza.file, stanza.line, kind));
                    }
                    self.scriptlet = Some(super::scriptlet::read(self.tree, stanza)?);
                }
                Item::Stanza(stanza) => {
                    let inner = self.enter(place, stanza)?;
                    self.walk(&inner, &stanza.items)?;
                }
            }
        }
        Ok(())
    }

    /// Checks that `stanza` may appear in `parent`, creates or finds what it
    /// names, and returns where its items go.
    fn enter(&mut self, parent: &Place, stanza: &Stanza) -> Result<Place, ConfigError> {
        let (file, line) = (stanza.file, stanza.line);
        let not_allowed = || {
            let kind = ConfigErrorKind::ScopeNotAllowedHere {
                keyword: stanza.keyword_text.clone(),
                parent: parent.scope(),
            };
            self.error(file, line, kind)
        };
        let scope = match (parent, stanza.keyword) {
            (Place::Global, Keyword::BindingGroup) => Scope::BindingGroup,
            (Place::Global | Place::Group(_), Keyword::Binding) => Scope::Binding,
            (Place::Global | Place::Group(_) | Place::Binding { .. }, Keyword::Domain) => {
                Scope::Domain
            }
            (Place::Global, Keyword::EsmtpListener) => Scope::EsmtpListener,
            (Place::Global, Keyword::ControlListener) => Scope::ControlListener,
            (Place::Global, Keyword::HttpListener) => Scope::HttpListener,
            (Place::Global, Keyword::EcLogger) => Scope::EcLogger,
            (Place::Global, Keyword::Security) => Scope::Security,
            (Place::Global, Keyword::Host) => Scope::Host,
            (Place::Global, Keyword::Webhook) => Scope::Webhook,
            (Place::EsmtpListener, Keyword::Listen) => Scope::EsmtpListen,
            (Place::ControlListener, Keyword::Listen) => Scope::ControlListen,
            (Place::ControlListener | Place::ControlListen(_), Keyword::Peer) => Scope::ControlPeer,
            (Place::HttpListener, Keyword::Listen) => Scope::HttpListen,
            _ => return Err(not_allowed()),
        };
        let named = matches!(
            scope,
            Scope::BindingGroup
                | Scope::Binding
                | Scope::Domain
                | Scope::Host
                | Scope::Webhook
                | Scope::EsmtpListen
                | Scope::ControlListen
                | Scope::ControlPeer
                | Scope::HttpListen
        );
        let name = stanza.name.as_ref().map(|w| w.text.as_str());
        let name = match (named, name) {
            (true, None) => {
                return Err(self.error(file, line, ConfigErrorKind::ScopeNeedsName { scope }))
            }
            (false, Some(name)) if scope != Scope::EcLogger => {
                let kind = ConfigErrorKind::ScopeTakesNoName {
                    scope,
                    name: name.to_string(),
                };
                return Err(self.error(file, line, kind));
            }
            (_, name) => name.unwrap_or(""),
        };
        let bad_name = |reason: &'static str| {
            let kind = ConfigErrorKind::BadScopeName {
                scope,
                name: name.to_string(),
                reason,
            };
            self.error(file, line, kind)
        };
        match scope {
            Scope::BindingGroup | Scope::Binding
                if name.is_empty()
                    || name.contains(':')
                    || name.chars().any(char::is_whitespace) =>
            {
                return Err(bad_name(
                    "names may not be empty or contain spaces or colons",
                ));
            }
            Scope::Webhook
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                return Err(bad_name(
                    "webhook names are letters, digits, `-`, `_` and `.`",
                ));
            }
            Scope::Host if name.is_empty() || name.chars().any(char::is_whitespace) => {
                return Err(bad_name("host names may not be empty or contain spaces"));
            }
            Scope::Domain => {
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    return Err(bad_name("domain names may not be empty or contain spaces"));
                }
                if name.len() > 1 && name.starts_with('/') && name.ends_with('/') {
                    return Err(bad_name(
                        "regular-expression domain scopes are not supported yet",
                    ));
                }
            }
            _ => {}
        }
        let place = match scope {
            Scope::BindingGroup => {
                self.groups.entry(name.to_string()).or_default();
                Place::Group(name.to_string())
            }
            Scope::Binding => {
                let (group, nested) = match parent {
                    Place::Group(group) => (group.as_str(), true),
                    _ => (DEFAULT_BINDING, false),
                };
                self.join_group(file, line, name, group)?;
                Place::Binding {
                    binding: name.to_string(),
                    nested,
                }
            }
            Scope::Domain => {
                let key = name.to_ascii_lowercase();
                let at = match parent {
                    Place::Group(group) => DomainAt::Group(group.clone()),
                    Place::Binding {
                        binding,
                        nested: false,
                    } => DomainAt::Binding(binding.clone()),
                    Place::Binding {
                        binding,
                        nested: true,
                    } => DomainAt::GroupBinding(binding.clone()),
                    _ => DomainAt::Global,
                };
                let domains = self.domain_map(&at);
                domains.entry(key.clone()).or_insert_with(|| DomainScope {
                    name: name.to_string(),
                    overrides: DeliveryOverrides::default(),
                });
                Place::Domain { at, key }
            }
            Scope::Host => {
                let key = name.to_ascii_lowercase();
                self.hosts.entry(key.clone()).or_insert_with(|| HostScope {
                    name: name.to_string(),
                    max_outbound_connections: None,
                });
                Place::Host(key)
            }
            Scope::Webhook => {
                let index = match self.webhooks.iter().position(|w| w.name == name) {
                    Some(index) => index,
                    None => {
                        self.webhooks.push(WebhookStanza {
                            name: name.to_string(),
                            file,
                            line,
                            overrides: WebhookOverrides::default(),
                        });
                        self.webhooks.len() - 1
                    }
                };
                Place::Webhook(index)
            }
            Scope::EsmtpListener => Place::EsmtpListener,
            Scope::EsmtpListen => {
                let address = self.listen_address(file, line, name)?;
                let index = match self.listens.iter().position(|(a, _)| *a == address) {
                    Some(index) => index,
                    None => {
                        self.listens.push((address, InboundOverrides::default()));
                        self.listen_lines.push((file, line));
                        self.listens.len() - 1
                    }
                };
                Place::EsmtpListen(index)
            }
            Scope::ControlListener => Place::ControlListener,
            Scope::ControlListen => {
                if name.is_empty() {
                    let kind = ConfigErrorKind::BadListenAddress {
                        address: String::new(),
                        reason: "empty socket path",
                    };
                    return Err(self.error(file, line, kind));
                }
                // "host:port" is a TCP console; anything else a socket path.
                let path = PathBuf::from(name);
                let index = match self.control_listens.iter().position(|(p, _)| *p == path) {
                    Some(index) => index,
                    None => {
                        self.control_listens
                            .push((path, ControlOverrides::default()));
                        self.control_listens.len() - 1
                    }
                };
                Place::ControlListen(index)
            }
            Scope::ControlPeer => {
                let cidr = name
                    .parse::<Cidr>()
                    .map_err(|_| bad_name("not an IP address or CIDR netblock"))?;
                let listen = match parent {
                    Place::ControlListen(index) => Some(*index),
                    _ => None,
                };
                self.control_peers.push((listen, cidr, true));
                Place::ControlPeer(self.control_peers.len() - 1)
            }
            Scope::HttpListener => Place::HttpListener,
            Scope::HttpListen => {
                let address = self.listen_address(file, line, name)?;
                if !self.http_listens.contains(&address) {
                    self.http_listens.push(address);
                }
                Place::HttpListen
            }
            Scope::EcLogger => {
                let name = if name.is_empty() {
                    LOGGER_NAME_DEFAULT
                } else {
                    name
                };
                match &self.logger {
                    Some((first, _)) if first != name => {
                        let kind = ConfigErrorKind::SecondLogger {
                            name: name.to_string(),
                            first: first.clone(),
                        };
                        return Err(self.error(file, line, kind));
                    }
                    Some(_) => {}
                    None => self.logger = Some((name.to_string(), LoggerOverrides::default())),
                }
                Place::EcLogger
            }
            Scope::Security => {
                self.security.get_or_insert_with(SecurityOverrides::default);
                Place::Security
            }
            Scope::Global => unreachable!("global is never entered"),
        };
        Ok(place)
    }

    fn join_group(
        &mut self,
        file: FileId,
        line: u32,
        binding: &str,
        group: &str,
    ) -> Result<(), ConfigError> {
        match self.bindings.get(binding) {
            Some(existing) if existing.group != group => {
                let kind = ConfigErrorKind::BindingInTwoGroups {
                    binding: binding.to_string(),
                    first_group: existing.group.clone(),
                    second_group: group.to_string(),
                };
                Err(self.error(file, line, kind))
            }
            Some(_) => Ok(()),
            None => {
                assert!(self.groups.contains_key(group));
                self.bindings
                    .insert(binding.to_string(), BindingScope::new(group));
                Ok(())
            }
        }
    }

    /// A `Listen "addr"` name of an ESMTP or HTTP listener, or the
    /// `file:line` error saying why it is not an address.
    fn listen_address(
        &self,
        file: FileId,
        line: u32,
        name: &str,
    ) -> Result<SocketAddr, ConfigError> {
        parse_listen_address(name).map_err(|reason| {
            let kind = ConfigErrorKind::BadListenAddress {
                address: name.to_string(),
                reason,
            };
            self.error(file, line, kind)
        })
    }

    /// A `Control_Listener` `Peer` takes one option, `Enable`.
    fn set_control_peer(
        &mut self,
        index: usize,
        file: FileId,
        line: u32,
        name: &str,
        value: &Value,
    ) -> Result<(), ConfigError> {
        if !name.eq_ignore_ascii_case("enable") {
            let option = name.to_string();
            let scope = Scope::ControlPeer;
            let kind = match lookup(name, scope) {
                Some(spec) => ConfigErrorKind::WrongScope {
                    option,
                    scope,
                    allowed: spec.scopes.describe(),
                },
                None => ConfigErrorKind::UnknownOption { option, scope },
            };
            return Err(self.error(file, line, kind));
        }
        match convert(Kind::Bool, name, value)
            .map_err(|(l, kind)| self.error(file, l.unwrap_or(line), kind))?
        {
            Typed::Bool(enable) => {
                self.control_peers[index].2 = enable;
                Ok(())
            }
            _ => unreachable!("Kind::Bool converts to Typed::Bool"),
        }
    }

    fn domain_map(&mut self, at: &DomainAt) -> &mut BTreeMap<String, DomainScope> {
        match at {
            DomainAt::Global => &mut self.domains,
            DomainAt::Group(group) => &mut self.groups.get_mut(group).expect("entered").domains,
            DomainAt::Binding(binding) => {
                &mut self.bindings.get_mut(binding).expect("entered").domains
            }
            DomainAt::GroupBinding(binding) => {
                &mut self
                    .bindings
                    .get_mut(binding)
                    .expect("entered")
                    .group_domains
            }
        }
    }

    fn set(
        &mut self,
        place: &Place,
        file: FileId,
        line: u32,
        name: &str,
        value: &Value,
    ) -> Result<(), ConfigError> {
        let scope = place.scope();
        if let Place::ControlPeer(index) = place {
            return self.set_control_peer(*index, file, line, name, value);
        }
        let Some(spec) = lookup(name, scope) else {
            let kind = ConfigErrorKind::UnknownOption {
                option: name.to_string(),
                scope,
            };
            return Err(self.error(file, line, kind));
        };
        if !spec.scopes.contains(scope) {
            let kind = ConfigErrorKind::WrongScope {
                option: name.to_string(),
                scope,
                allowed: spec.scopes.describe(),
            };
            return Err(self.error(file, line, kind));
        }
        let mut typed = convert(spec.kind, name, value)
            .map_err(|(l, kind)| self.error(file, l.unwrap_or(line), kind))?;
        if let Typed::Throttle(throttle) = &mut typed {
            throttle.bucket = self.next_throttle_bucket(file, line)?;
        }
        self.note_unheeded(spec, file, line, name);
        let key = spec.name;
        if key == "api_store_datasource" {
            self.api_store_line = Some((file, line));
        }
        let unclaimed = match place {
            Place::Global => self.set_global(key, typed),
            Place::Group(group) => self
                .groups
                .get_mut(group)
                .expect("entered")
                .overrides
                .set(key, typed),
            Place::Binding { binding, .. } => self
                .bindings
                .get_mut(binding)
                .expect("entered")
                .overrides
                .set(key, typed),
            Place::Domain { at, key: domain } => {
                let domains = self.domain_map(at);
                domains
                    .get_mut(domain)
                    .expect("entered")
                    .overrides
                    .set(key, typed)
            }
            Place::EsmtpListener => self.esmtp_listener.set(key, typed),
            Place::EsmtpListen(index) => self.listens[*index].1.set(key, typed),
            Place::ControlListener => self.control_listener.set(key, typed),
            Place::ControlListen(index) => self.control_listens[*index].1.set(key, typed),
            Place::ControlPeer(_) => unreachable!("handled by set_control_peer"),
            // No option names these scopes (the table is checked first).
            Place::HttpListener | Place::HttpListen => Err(typed),
            Place::EcLogger => {
                let logger = self.logger.as_mut().expect("entered");
                logger.1.set(key, typed)
            }
            Place::Security => self.security.as_mut().expect("entered").set(key, typed),
            Place::Host(host) => match (key, typed) {
                ("max_outbound_connections", Typed::Integer(n)) => {
                    let scope = self.hosts.get_mut(host).expect("entered");
                    scope.max_outbound_connections = Some(narrow_u32(n));
                    Ok(())
                }
                (_, typed) => Err(typed),
            },
            Place::Webhook(index) => self.webhooks[*index].overrides.set(key, typed),
        };
        // The option table said this scope takes this option; a setter that
        // does not is a bug in this file.
        assert!(unclaimed.is_ok(), "no setter for `{key}` in {scope} scope");
        Ok(())
    }

    /// The bucket of the throttle setting at `line`: one per occurrence, so
    /// that everything inheriting it shares it (by reference).
    fn next_throttle_bucket(&mut self, file: FileId, line: u32) -> Result<u32, ConfigError> {
        if self.throttles >= THROTTLE_BUCKETS_MAX {
            let kind = ConfigErrorKind::TooManyThrottles {
                max: THROTTLE_BUCKETS_MAX,
            };
            return Err(self.error(file, line, kind));
        }
        self.throttles += 1;
        Ok(self.throttles - 1)
    }

    fn set_global(&mut self, key: &str, typed: Typed) -> Result<(), Typed> {
        let typed = match self.global.set(key, typed) {
            Ok(()) => return Ok(()),
            Err(typed) => typed,
        };
        // A name both families know (`tls`) is the listeners' only where
        // their table allows the global scope.
        let inbound_at_global = INBOUND_SPECS
            .iter()
            .any(|spec| spec.name == key && spec.scopes.contains(Scope::Global));
        let typed = if inbound_at_global {
            match self.global_inbound.set(key, typed) {
                Ok(()) => return Ok(()),
                Err(typed) => typed,
            }
        } else {
            typed
        };
        self.global_delivery.set(key, typed)
    }

    /// Every webhook has a target and a printable token, and the events
    /// it sends are written somewhere.
    fn check_webhooks(&self) -> Result<(), ConfigError> {
        let eventlog = self
            .logger
            .as_ref()
            .is_some_and(|(_, l)| l.eventlog.is_some());
        for w in &self.webhooks {
            let name = w.name.clone();
            let kind = if w.overrides.target.is_none() {
                ConfigErrorKind::WebhookWithoutTarget { name }
            } else if !eventlog {
                ConfigErrorKind::WebhookWithoutEventlog { name }
            } else if w
                .overrides
                .auth_token
                .as_ref()
                .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            {
                ConfigErrorKind::BadWebhookToken { name }
            } else {
                continue;
            };
            return Err(self.error(w.file, w.line, kind));
        }
        Ok(())
    }

    /// `api_store_datasource`, when set, names a PostgreSQL `Datasource`
    /// (anywhere in the file: stanzas may come after the option).
    fn check_api_store(&self) -> Result<(), ConfigError> {
        let (Some(name), Some((file, line))) =
            (&self.global.api_store_datasource, self.api_store_line)
        else {
            return Ok(());
        };
        let reason = match self.datasources.iter().find(|d| &d.name == name) {
            None => format!("no Datasource `{name}` is configured"),
            Some(d) if !matches!(d.uri, super::datasource::DatasourceUri::Pgsql(_)) => format!(
                "Datasource `{name}` is not a PostgreSQL one (leave the option unset to keep \
                 the API store in SQLite)"
            ),
            Some(_) => return Ok(()),
        };
        Err(self.error(file, line, ConfigErrorKind::ApiStoreDatasource { reason }))
    }

    /// Remembers a setting that the engine may not act on.
    fn note_unheeded(&mut self, spec: &OptionSpec, file: FileId, line: u32, name: &str) {
        if let Support::NotYet(reason) = spec.support {
            self.unheeded.push(Unheeded {
                file,
                line,
                option: name.to_string(),
                reason,
            });
        }
    }

    /// The first remembered setting the engine does not act on: a `not_yet`
    /// option anywhere.
    fn first_unsupported(&self) -> Option<ConfigError> {
        self.unheeded.first().map(|u| {
            let kind = ConfigErrorKind::NotSupportedYet {
                option: u.option.clone(),
                scope: String::new(),
                reason: u.reason,
            };
            self.error(u.file, u.line, kind)
        })
    }

    fn finish(mut self) -> Built {
        if !self.bindings.contains_key(DEFAULT_BINDING) {
            self.bindings.insert(
                DEFAULT_BINDING.to_string(),
                BindingScope::new(DEFAULT_BINDING),
            );
        }
        let unsupported = self.first_unsupported();
        let mut global = GlobalOptions::builtin();
        self.global.apply(&mut global);
        assert!(global.shards <= SHARDS_MAX);
        let mut delivery = DeliveryOptions::builtin(&global.hostname);
        self.global_delivery.apply(&mut delivery);
        settle_route_choice(&self.global_delivery, &mut delivery);
        let mut inbound = ListenerConfig::builtin();
        self.global_inbound.apply(&mut inbound);
        let esmtp_listeners = self
            .listens
            .iter()
            .map(|(address, overrides)| {
                let mut listener = inbound.clone();
                listener.address = *address;
                self.esmtp_listener.apply(&mut listener);
                overrides.apply(&mut listener);
                listener
            })
            .collect();
        let control_peers = self.control_peers;
        let control_listeners = self
            .control_listens
            .into_iter()
            .enumerate()
            .map(|(index, (path, overrides))| {
                let mut listener = ControlListenerConfig::builtin();
                listener.tcp = path.to_str().and_then(|p| parse_listen_address(p).ok());
                listener.path = path;
                // Peer rules are for TCP consoles; a Unix socket has its mode.
                listener.peers = control_peers
                    .iter()
                    .filter(|_| listener.tcp.is_some())
                    .filter(|(at, _, _)| at.is_none() || *at == Some(index))
                    .map(|(at, cidr, enable)| ControlPeer {
                        cidr: *cidr,
                        enable: *enable,
                        in_listen: at.is_some(),
                    })
                    .collect();
                self.control_listener.apply(&mut listener);
                overrides.apply(&mut listener);
                listener
            })
            .collect();
        let (logger_name, logger) = self
            .logger
            .unwrap_or_else(|| (LOGGER_NAME_DEFAULT.to_string(), LoggerOverrides::default()));
        let mut logs = LogPaths::builtin();
        logger.apply(&mut logs);
        let security = self.security.map(|overrides| {
            let mut security = Security::builtin();
            overrides.apply(&mut security);
            security
        });
        let webhooks = self
            .webhooks
            .iter()
            .map(|stanza| {
                let mut webhook = WebhookConfig::builtin();
                webhook.name = stanza.name.clone();
                stanza.overrides.apply(&mut webhook);
                webhook
            })
            .collect();
        let settings = Settings {
            global,
            inbound,
            delivery,
            esmtp_listeners,
            control_listeners,
            http_listeners: self.http_listens,
            logger_name,
            logs,
            security,
            domains: self.domains,
            groups: self.groups,
            bindings: self.bindings,
            hosts: self.hosts,
            opendkim: self.opendkim,
            webhooks,
            datasources: self.datasources,
            scriptlet: self.scriptlet,
        };
        Built {
            settings,
            unsupported,
        }
    }
}

/// Momentum's throttle rate: `N` (per second) or `N/S` (N per S seconds).
/// `Some(None)` is unlimited (N = 0); `None` is not a rate.
fn parse_rate(text: &str) -> Option<Option<Rate>> {
    let (count, seconds) = text.split_once('/').unwrap_or((text, "1"));
    let number = |t: &str, max: u64| -> Option<u32> {
        let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let n = t.parse::<u64>().ok().filter(|n| digits && *n <= max)?;
        Some(narrow_u32(n))
    };
    let count = number(count, THROTTLE_COUNT_MAX)?;
    let per_seconds = number(seconds, THROTTLE_SECONDS_MAX).filter(|s| *s > 0)?;
    Some((count > 0).then_some(Rate { count, per_seconds }))
}

/// Line to blame (if not the option's own) and what is wrong.
type ConvertError = (Option<u32>, ConfigErrorKind);

/// Checks `value` against `kind`. `option` is the name as written.
fn convert(kind: Kind, option: &str, value: &Value) -> Result<Typed, ConvertError> {
    let wrong_type = |got: String, line: u32| {
        let kind = ConfigErrorKind::WrongType {
            option: option.to_string(),
            expected: kind.expected(),
            got,
        };
        (Some(line), kind)
    };
    if kind == Kind::CidrList {
        let items: &[Word] = match value {
            Value::Scalar(word) => std::slice::from_ref(word),
            Value::List(items) => items,
        };
        let mut cidrs = Vec::with_capacity(items.len());
        for item in items {
            let cidr = item.text.parse::<Cidr>().map_err(|_| {
                let kind = ConfigErrorKind::BadCidr {
                    option: option.to_string(),
                    value: item.text.clone(),
                };
                (Some(item.line), kind)
            })?;
            cidrs.push(cidr);
        }
        return Ok(Typed::Cidrs(cidrs));
    }
    if kind == Kind::NameserverList {
        let items: &[Word] = match value {
            Value::Scalar(word) => std::slice::from_ref(word),
            Value::List(items) => items,
        };
        let mut servers = Vec::with_capacity(items.len());
        for item in items {
            let server = parse_nameserver(&item.text).ok_or_else(|| {
                let kind = ConfigErrorKind::BadNameserver {
                    option: option.to_string(),
                    value: item.text.clone(),
                };
                (Some(item.line), kind)
            })?;
            servers.push(server);
        }
        return Ok(Typed::Nameservers(servers));
    }
    if kind == Kind::Routes {
        let items: &[Word] = match value {
            Value::Scalar(word) => std::slice::from_ref(word),
            Value::List(items) => items,
        };
        if items.len() > ROUTES_ENTRIES_MAX {
            let kind = ConfigErrorKind::TooManyRoutes {
                count: items.len(),
                max: ROUTES_ENTRIES_MAX,
            };
            return Err((None, kind));
        }
        if items.is_empty() {
            let kind = ConfigErrorKind::BadRoute {
                value: String::new(),
                reason: "an empty list routes nowhere; leave `routes` unset for MX routing",
            };
            return Err((None, kind));
        }
        let mut routes = Vec::with_capacity(items.len());
        for item in items {
            let route = parse_route(&item.text).map_err(|reason| {
                let kind = ConfigErrorKind::BadRoute {
                    value: item.text.clone(),
                    reason,
                };
                (Some(item.line), kind)
            })?;
            routes.push(route);
        }
        return Ok(Typed::Routes(routes));
    }
    if kind == Kind::EventTypes {
        let items: &[Word] = match value {
            Value::Scalar(word) => std::slice::from_ref(word),
            Value::List(items) => items,
        };
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let known = WEBHOOK_EVENT_TYPES
                .iter()
                .chain(WEBHOOK_EVENT_GROUPINGS)
                .find(|t| **t == item.text);
            let Some(known) = known else {
                let kind = ConfigErrorKind::UnknownEventType {
                    value: item.text.clone(),
                    known: WEBHOOK_EVENT_TYPES
                        .iter()
                        .chain(WEBHOOK_EVENT_GROUPINGS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                return Err((Some(item.line), kind));
            };
            if !names.iter().any(|n| n == known) {
                names.push(known.to_string());
            }
        }
        if names.is_empty() {
            let kind = ConfigErrorKind::WrongType {
                option: option.to_string(),
                expected: kind.expected(),
                got: "an empty list".into(),
            };
            return Err((None, kind));
        }
        return Ok(Typed::Names(names));
    }
    let word = match value {
        Value::Scalar(word) => word,
        Value::List(_) => return Err((None, wrong_type("a list".into(), 0).1)),
    };
    let (text, line) = (word.text.as_str(), word.line);
    let got = || format!("`{text}`");
    let out_of_range = |min: u64, max: u64, unit: &'static str| {
        let kind = ConfigErrorKind::OutOfRange {
            option: option.to_string(),
            min,
            max,
            unit,
            got: text.to_string(),
        };
        (Some(line), kind)
    };
    // All digits but too big for u64 is out of range, not a wrong type.
    let integer_in = |min: u64, max: u64, unit: &'static str| -> Result<u64, ConvertError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(wrong_type(got(), line));
        }
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(out_of_range(min, max, unit)),
        }
    };
    let typed = match kind {
        Kind::Path | Kind::Text | Kind::HostName | Kind::HeaderName if text.is_empty() => {
            return Err(wrong_type("an empty string".into(), line))
        }
        Kind::Path => Typed::Path(PathBuf::from(text)),
        Kind::Text => Typed::Text(text.to_string()),
        Kind::HostName => {
            let valid =
                text.len() <= HOST_NAME_BYTES_MAX && text.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return Err(wrong_type(got(), line));
            }
            Typed::Text(text.to_string())
        }
        Kind::HeaderName => {
            let valid = text.len() <= HEADER_NAME_BYTES_MAX
                && text.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !valid {
                return Err(wrong_type(got(), line));
            }
            Typed::Text(text.to_string())
        }
        Kind::Integer { min, max, unit } => Typed::Integer(integer_in(min, max, unit)?),
        Kind::Seconds { min, max } => {
            Typed::Seconds(Duration::from_secs(integer_in(min, max, " seconds")?))
        }
        Kind::Bool => Typed::Bool(parse_bool(text).ok_or_else(|| wrong_type(got(), line))?),
        Kind::Gateway => {
            let gateway = parse_gateway(text).map_err(|reason| {
                (
                    Some(line),
                    ConfigErrorKind::BadGateway {
                        value: text.to_string(),
                        reason,
                    },
                )
            })?;
            Typed::Gateway(gateway)
        }
        Kind::IpAddress => {
            let ip = text.parse::<IpAddr>().map_err(|_| {
                let kind = ConfigErrorKind::BadIpAddress {
                    option: option.to_string(),
                    value: text.to_string(),
                };
                (Some(line), kind)
            })?;
            Typed::Ip(ip)
        }
        Kind::MaxRetries => {
            if text.eq_ignore_ascii_case("auto") {
                Typed::MaxRetries(MaxRetries::Auto)
            } else if text.eq_ignore_ascii_case("none") {
                Typed::MaxRetries(MaxRetries::None)
            } else {
                let count = integer_in(0, RETRIES_MAX, "")?;
                Typed::MaxRetries(MaxRetries::Count(narrow_u32(count)))
            }
        }
        Kind::FileMode => {
            let valid = !text.is_empty() && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
            let mode = if valid {
                u32::from_str_radix(text, 8).ok()
            } else {
                None
            };
            match mode.filter(|m| *m <= FILE_MODE_MAX) {
                Some(mode) => Typed::FileMode(mode),
                None => return Err(wrong_type(got(), line)),
            }
        }
        Kind::AuthMechanism => {
            if !(text.eq_ignore_ascii_case("PLAIN") || text.eq_ignore_ascii_case("LOGIN")) {
                return Err(wrong_type(got(), line));
            }
            Typed::Text(text.to_ascii_uppercase())
        }
        Kind::Rate => Typed::Throttle(Throttle {
            rate: parse_rate(text).ok_or_else(|| wrong_type(got(), line))?,
            bucket: 0,
        }),
        Kind::TlsMode => {
            Typed::TlsMode(TlsMode::parse(text).ok_or_else(|| wrong_type(got(), line))?)
        }
        Kind::TlsVerify => {
            Typed::TlsVerify(TlsVerify::parse(text).ok_or_else(|| wrong_type(got(), line))?)
        }
        Kind::WebhookTarget => {
            parse_webhook_target(text).map_err(|reason| {
                let kind = ConfigErrorKind::BadWebhookTarget {
                    value: text.to_string(),
                    reason,
                };
                (Some(line), kind)
            })?;
            Typed::Text(text.to_string())
        }
        Kind::TrackingDomain => {
            let options = ecelerity_msggen::tracking::TrackingOptions {
                tracking_domain: text.to_string(),
                ..Default::default()
            };
            if options.validate().is_err() {
                return Err(wrong_type(got(), line));
            }
            Typed::Text(text.to_string())
        }
        Kind::UrlScheme => {
            if !(text.eq_ignore_ascii_case("http") || text.eq_ignore_ascii_case("https")) {
                return Err(wrong_type(got(), line));
            }
            Typed::Text(text.to_ascii_lowercase())
        }
        Kind::CidrList | Kind::NameserverList | Kind::Routes | Kind::EventTypes => {
            unreachable!("handled above")
        }
    };
    Ok(typed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str) -> Value {
        Value::Scalar(Word {
            text: text.into(),
            quoted: false,
            line: 1,
        })
    }

    fn sample(kind: Kind) -> &'static str {
        match kind {
            Kind::Path => "some/path",
            Kind::Text => "text",
            Kind::HostName => "host.example",
            Kind::HeaderName => "X-Binding",
            Kind::Integer { min, .. } if min > 0 => "1000",
            Kind::Integer { .. } | Kind::Seconds { .. } => "1",
            Kind::Bool => "yes",
            Kind::CidrList => "10.0.0.0/8",
            Kind::NameserverList => "127.0.0.1:5353",
            Kind::Gateway => "relay.example:2525",
            Kind::Routes => "smtp://relay.example?pref=5",
            Kind::IpAddress => "192.0.2.1",
            Kind::MaxRetries => "auto",
            Kind::FileMode => "0640",
            Kind::Rate => "50/1",
            Kind::TlsMode => "required",
            Kind::TlsVerify => "host",
            Kind::AuthMechanism => "login",
            Kind::EventTypes => "delivery",
            Kind::WebhookTarget => "http://127.0.0.1:8080/hook",
            Kind::TrackingDomain => "track.example:8080",
            Kind::UrlScheme => "https",
        }
    }

    /// `line` with, for `api_store_datasource`, the PostgreSQL Datasource
    /// it must name (the sample value `text`).
    fn with_store_datasource(option: &str, line: String) -> String {
        if option == "api_store_datasource" {
            format!("Datasource \"text\" {{\n  uri = ( \"pgsql:host=/tmp\" )\n}}\n{line}")
        } else {
            line
        }
    }

    #[test]
    fn every_option_is_settable_in_every_scope_the_table_allows() {
        // Goal: the table and the setters agree (no assert fires).
        // Method: a config setting each option, with a sample value, in
        // each scope the table lists for it.
        for spec in OPTIONS {
            for scope in Scope::ALL {
                if !spec.scopes.contains(scope) {
                    continue;
                }
                let line = format!("{} = \"{}\"", spec.name, sample(spec.kind));
                let text = match scope {
                    Scope::Global => with_store_datasource(spec.name, line),
                    Scope::BindingGroup => format!("binding_group g {{ {line} }}"),
                    Scope::Binding => format!("binding b {{ {line} }}"),
                    Scope::Domain => format!("domain d {{ {line} }}"),
                    Scope::EsmtpListener => format!("ESMTP_Listener {{ {line} }}"),
                    Scope::EsmtpListen => format!("ESMTP_Listener {{ Listen :25 {{ {line} }} }}"),
                    Scope::ControlListener => format!("Control_Listener {{ {line} }}"),
                    Scope::ControlListen => format!("Control_Listener {{ Listen s {{ {line} }} }}"),
                    Scope::HttpListener => format!("HTTP_Listener {{ {line} }}"),
                    Scope::HttpListen => format!("HTTP_Listener {{ Listen :2081 {{ {line} }} }}"),
                    Scope::EcLogger => format!("ec_logger {{ {line} }}"),
                    Scope::Security => format!("Security {{ {line} }}"),
                    Scope::Host => format!("host mx.example {{ {line} }}"),
                    Scope::ControlPeer => continue,
                    Scope::Webhook => format!(
                        "ec_logger {{ eventlog = e }} webhook w {{ target = \"http://127.0.0.1/\" {line} }}"
                    ),
                };
                let tree = super::super::parse::parse_tree(&text, "t".as_ref()).unwrap();
                if let Err(error) = build(&tree) {
                    panic!("{text}: {error}");
                }
            }
        }
    }

    /// A value of `kind` other than any built-in default, so that reading
    /// it back proves it was stored.
    fn distinct_sample(kind: Kind) -> &'static str {
        match kind {
            Kind::Integer { min, .. } if min > 0 => "1001",
            Kind::Integer { .. } => "2",
            Kind::Seconds { .. } => "3",
            Kind::Bool => "no",
            Kind::MaxRetries => "7",
            Kind::Rate => "7/3",
            other => sample(other),
        }
    }

    #[test]
    fn every_table_entry_is_parsed_stored_resolved_and_dumped() {
        // Goal: each line of each family table is wired end to end (the
        // macro generates set, apply, complete and entries per entry).
        // Method: set each option alone, in the most specific scope its
        // family resolves, to a value unlike any default; the resolved
        // settings, turned back into dump entries, hold that exact value.
        type Resolve = fn(&Settings) -> Vec<(&'static str, Typed)>;
        type Family = (&'static [OptionSpec], fn(&str) -> String, Resolve);
        let families: [Family; 7] = [
            (
                GLOBAL_SPECS,
                |line| line.to_string(),
                |s| GlobalOverrides::complete(&s.global).entries(),
            ),
            (
                INBOUND_SPECS,
                |line| format!("ESMTP_Listener {{ Listen :25 {{ {line} }} }}"),
                |s| InboundOverrides::complete(&s.esmtp_listeners[0]).entries(),
            ),
            (
                CONTROL_SPECS,
                |line| format!("Control_Listener {{ Listen s {{ {line} }} }}"),
                |s| ControlOverrides::complete(&s.control_listeners[0]).entries(),
            ),
            (
                LOGGER_SPECS,
                |line| format!("ec_logger {{ {line} }}"),
                |s| LoggerOverrides::complete(&s.logs).entries(),
            ),
            (
                SECURITY_SPECS,
                |line| format!("Security {{ {line} }}"),
                |s| SecurityOverrides::complete(s.security.as_ref().unwrap()).entries(),
            ),
            (
                OUTBOUND_SPECS,
                |line| format!("binding_group g {{ binding b {{ domain d {{ {line} }} }} }}"),
                |s| DeliveryOverrides::complete(&s.delivery("b", "d")).entries(),
            ),
            (
                WEBHOOK_SPECS,
                |line| {
                    format!(
                        "ec_logger {{ eventlog = e }} webhook w {{ target = \"http://127.0.0.1/\" {line} }}"
                    )
                },
                |s| WebhookOverrides::complete(&s.webhooks[0]).entries(),
            ),
        ];
        let mut checked = 0;
        for (specs, place, resolve) in families {
            for spec in specs {
                let empty = super::super::parse::parse_tree(&place(""), "t".as_ref()).unwrap();
                let default = resolve(&build(&empty).unwrap().settings);
                let mut text = distinct_sample(spec.kind);
                let mut expected = convert(spec.kind, spec.name, &scalar(text)).unwrap();
                if spec.kind == Kind::Bool && default.contains(&(spec.name, expected.clone())) {
                    // A boolean that is off by default.
                    text = "yes";
                    expected = convert(spec.kind, spec.name, &scalar(text)).unwrap();
                }
                let config = if spec.name == "bind_address" {
                    // Not a domain option: its most specific scope is binding.
                    format!("binding_group g {{ binding b {{ bind_address = {text} }} }}")
                } else {
                    place(&with_store_datasource(
                        spec.name,
                        format!("{} = \"{text}\"", spec.name),
                    ))
                };
                let tree = super::super::parse::parse_tree(&config, "t".as_ref()).unwrap();
                let settings = build(&tree).unwrap().settings;
                let entries = resolve(&settings);
                assert!(
                    entries.contains(&(spec.name, expected.clone())),
                    "{config}: want {expected:?} in {entries:?}"
                );
                assert!(
                    !default.contains(&(spec.name, expected)),
                    "{config}: sample is the default"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, OPTIONS.len());
    }

    #[test]
    fn option_names_are_unique_ignoring_case_in_every_scope() {
        // A name may serve two families (`tls`: a listener's, and the
        // outbound scopes') only where their scopes do not meet, so the
        // scope picks the one meant.
        for (i, a) in OPTIONS.iter().enumerate() {
            for b in &OPTIONS[i + 1..] {
                if a.name.eq_ignore_ascii_case(b.name) {
                    for scope in Scope::ALL {
                        let both = a.scopes.contains(scope) && b.scopes.contains(scope);
                        assert!(!both, "{} twice in {scope}", a.name);
                    }
                }
            }
        }
    }

    #[test]
    fn tls_is_a_listeners_option_in_a_listener_and_an_outbound_one_elsewhere() {
        let text = "tls = ifavailable\ndomain \"d\" { tls = required tls_verify = host }\n\
                    ESMTP_Listener { Listen \"127.0.0.1:25\" { tls = required \
                    tls_certificate = \"c.pem\" tls_key = \"k.pem\" } }\n";
        let config = Config::parse(text, "t.conf".as_ref()).unwrap();
        let listener = &config.esmtp_listeners()[0];
        assert_eq!(listener.tls, TlsMode::Required);
        assert_eq!(listener.tls_key, Some("k.pem".into()));
        assert_eq!(
            config.delivery(DEFAULT_BINDING, "e").tls,
            TlsMode::IfAvailable
        );
        assert_eq!(config.delivery(DEFAULT_BINDING, "d").tls, TlsMode::Required);
        assert_eq!(
            config.delivery(DEFAULT_BINDING, "d").tls_verify,
            TlsVerify::Host
        );
        let err = Config::parse(
            "ESMTP_Listener {\n Listen \"127.0.0.1:25\" {\n tls = required\n }\n}\n",
            "t.conf".as_ref(),
        )
        .unwrap()
        .check_supported()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:2: ESMTP Listen `127.0.0.1:25`: tls = required needs tls_certificate and \
             tls_key"
        );
        let err = Config::parse("tls = sometimes\n", "t.conf".as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:1: `tls` must be one of no, ifavailable, required, got `sometimes`"
        );
    }

    #[test]
    fn listen_addresses_cover_momentums_forms() {
        let ok = |t: &str| parse_listen_address(t).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:2525"), "127.0.0.1:2525");
        assert_eq!(ok(":25"), "0.0.0.0:25");
        assert_eq!(ok("*:25"), "0.0.0.0:25");
        assert_eq!(ok("[::1]:25"), "[::1]:25");
        assert_eq!(ok("[*]:25"), "[::]:25");
        assert!(parse_listen_address("::1:25").is_err());
        assert!(parse_listen_address("localhost:25").is_err());
        assert!(parse_listen_address("1.2.3.4").is_err());
        assert!(parse_listen_address("1.2.3.4:65536").is_err());
        assert!(parse_listen_address("[::1]").is_err());
        assert!(parse_listen_address("/tmp/sock").is_err());
    }

    #[test]
    fn gateways_without_a_port_take_remote_smtp_port_and_bracket_ipv6() {
        let ok = |t: &str| parse_gateway(t).unwrap();
        assert_eq!(
            ok("relay.example"),
            Gateway {
                host: "relay.example".into(),
                port: None
            }
        );
        assert_eq!(
            ok("10.0.0.1:2525"),
            Gateway {
                host: "10.0.0.1".into(),
                port: Some(2525)
            }
        );
        assert_eq!(
            ok("[::1]:26"),
            Gateway {
                host: "::1".into(),
                port: Some(26)
            }
        );
        assert_eq!(
            ok("[::1]"),
            Gateway {
                host: "::1".into(),
                port: None
            }
        );
        assert_eq!(ok("[::1]:26").to_string(), "[::1]:26");
        assert_eq!(ok("[::1]").to_string(), "[::1]");
        assert_eq!(ok("relay.example").to_string(), "relay.example");
        assert_eq!(
            parse_gateway("::1"),
            Err("IPv6 addresses must be bracketed, e.g. \"[::1]:25\"")
        );
        assert!(parse_gateway("h:0").is_err());
        assert!(parse_gateway(":25").is_err());
        assert!(parse_gateway("[zz]:25").is_err());
        assert!(parse_gateway("a b").is_err());
    }

    #[test]
    fn booleans_accept_the_documented_spellings() {
        for t in ["true", "YES", "on", "1"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for t in ["false", "No", "OFF", "0"] {
            assert_eq!(parse_bool(t), Some(false));
        }
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn throttle_rates_read_momentums_syntax() {
        let rate = |count, per_seconds| Some(Some(Rate { count, per_seconds }));
        assert_eq!(parse_rate("50/1"), rate(50, 1));
        assert_eq!(parse_rate("50"), rate(50, 1), "N alone is per second");
        assert_eq!(parse_rate("1/60"), rate(1, 60));
        assert_eq!(parse_rate("0"), Some(None), "0 is unlimited");
        assert_eq!(parse_rate("0/5"), Some(None));
        for bad in [
            "", "/", "5/", "/5", "5/0", "-1", "1.5", "5/1/2", "a/1", "1000001",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
        assert_eq!(
            Rate {
                count: 50,
                per_seconds: 1
            }
            .interval_us(),
            20_000
        );
        assert_eq!(
            Rate {
                count: 1,
                per_seconds: 60
            }
            .interval_us(),
            60_000_000
        );
    }

    #[test]
    fn convert_checks_type_and_range() {
        let kind = integer(1, 10);
        assert_eq!(convert(kind, "x", &scalar("10")), Ok(Typed::Integer(10)));
        assert!(convert(kind, "x", &scalar("11")).is_err());
        assert!(convert(kind, "x", &scalar("-1")).is_err());
        assert!(convert(kind, "x", &scalar("99999999999999999999999")).is_err());
        assert_eq!(
            convert(Kind::FileMode, "m", &scalar("0660")),
            Ok(Typed::FileMode(0o660))
        );
        assert!(convert(Kind::FileMode, "m", &scalar("0680")).is_err());
        assert!(convert(Kind::FileMode, "m", &scalar("17777")).is_err());
    }
}
