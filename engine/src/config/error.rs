//! What can be wrong with an ecelerity.conf, and the scope names used to say
//! where. Every error carries the file and line the operator must edit.
//! Owns: `ConfigError`, `ConfigErrorKind`, `Scope` and its display names.
//! May call: std only.
//! Never: parsing or file I/O (the lexer, parser and model build these).

use std::fmt;
use std::path::PathBuf;

/// A configuration error, rendered as `file:line: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {kind}", .file.display())]
pub struct ConfigError {
    /// The file holding the offending text: the top-level file or an
    /// included one, as the path it was opened by.
    pub file: PathBuf,
    /// 1-based line of the offending text; 0 when the file itself could
    /// not be read.
    pub line: u32,
    pub kind: ConfigErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read configuration: {reason}")]
    Unreadable { reason: String },
    #[error("file is larger than {max_bytes} bytes")]
    FileTooLarge { max_bytes: u64 },
    #[error("unterminated string: missing closing `\"` on this line")]
    UnterminatedString,
    #[error("unterminated comment: `/*` without `*/`")]
    UnterminatedComment,
    #[error("unterminated list for `{option}`: `(` without `)`")]
    UnterminatedList { option: String },
    #[error("unterminated scope `{scope}`: `{{` without `}}`")]
    UnterminatedScope { scope: String },
    #[error("unexpected {found}, expected {expected}")]
    UnexpectedToken {
        found: String,
        expected: &'static str,
    },
    #[error("missing `=` after option `{option}` (found {found})")]
    MissingEquals { option: String, found: String },
    #[error("unknown scope keyword `{keyword}`")]
    UnknownScope { keyword: String },
    #[error("scopes nested deeper than {max_depth}")]
    ScopesTooDeep { max_depth: usize },
    #[error("{keyword} scope is not allowed inside {parent} scope")]
    ScopeNotAllowedHere { keyword: String, parent: Scope },
    #[error("{scope} scope needs a name, e.g. `{scope} \"name\" {{ }}`")]
    ScopeNeedsName { scope: Scope },
    #[error("{scope} scope takes no name, got `{name}`")]
    ScopeTakesNoName { scope: Scope, name: String },
    #[error("bad {scope} name `{name}`: {reason}")]
    BadScopeName {
        scope: Scope,
        name: String,
        reason: &'static str,
    },
    #[error("unknown option `{option}` in {scope} scope")]
    UnknownOption { option: String, scope: Scope },
    #[error("option `{option}` is not valid in {scope} scope (valid in: {allowed})")]
    WrongScope {
        option: String,
        scope: Scope,
        allowed: String,
    },
    #[error("`{option}` must be {expected}, got {got}")]
    WrongType {
        option: String,
        expected: &'static str,
        got: String,
    },
    #[error("`{option}` must lie in {min}..={max}{unit}, got {got}")]
    OutOfRange {
        option: String,
        min: u64,
        max: u64,
        unit: &'static str,
        got: String,
    },
    #[error("`{option}`: `{value}` is not an IP address or CIDR netblock")]
    BadCidr { option: String, value: String },
    #[error("`{option}`: `{value}` is not an IP address with an optional port, such as \"127.0.0.1:5353\", \"[::1]:53\" or \"192.0.2.1\"")]
    BadNameserver { option: String, value: String },
    #[error("`{option}`: `{value}` is not an IP address")]
    BadIpAddress { option: String, value: String },
    #[error("bad gateway `{value}`: {reason}")]
    BadGateway { value: String, reason: &'static str },
    #[error("`routes`: bad route `{value}`: {reason}")]
    BadRoute { value: String, reason: &'static str },
    #[error("`routes`: {count} items, at most {max} are allowed")]
    TooManyRoutes { count: usize, max: usize },
    #[error("bad listen address `{address}`: {reason}")]
    BadListenAddress {
        address: String,
        reason: &'static str,
    },
    #[error("ESMTP Listen `{address}`: {reason}")]
    ListenerTls {
        address: String,
        reason: &'static str,
    },
    #[error("include file `{path}` not found (looked for {resolved})")]
    IncludeNotFound { path: String, resolved: String },
    #[error("cannot read include `{path}`: {reason}")]
    IncludeUnreadable { path: String, reason: String },
    #[error("include cycle: `{path}` is already being read")]
    IncludeCycle { path: String },
    #[error("includes nested deeper than {max_depth}")]
    IncludesTooDeep { max_depth: usize },
    #[error("binding `{binding}` is in binding_group `{first_group}` and again in binding_group `{second_group}`; a binding belongs to one group (a top-level binding is in `default`)")]
    BindingInTwoGroups {
        binding: String,
        first_group: String,
        second_group: String,
    },
    /// Something wrong inside an `opendkim` stanza (`config::dkim`).
    #[error("opendkim: {reason}")]
    Opendkim { reason: String },
    /// Something wrong inside a `Datasource` stanza (`config::datasource`).
    #[error("datasource: {reason}")]
    Datasource { reason: String },
    /// `api_store_datasource` names no PostgreSQL `Datasource`.
    #[error("api_store_datasource: {reason}")]
    ApiStoreDatasource { reason: String },
    /// Something wrong inside a `scriptlet` stanza (`config::scriptlet`).
    #[error("scriptlet: {reason}")]
    Scriptlet { reason: String },
    /// Valid ecelerity.conf that the engine would not act on yet. `scope`
    /// is empty or starts with a space (" in binding `b`").
    #[error("`{option}`{scope} is not supported yet ({reason})")]
    NotSupportedYet {
        option: String,
        scope: String,
        reason: &'static str,
    },
    #[error("more than {max} `outbound_throttle_*` settings: each is a token bucket of its own; set the throttle in a binding_group or binding to share one")]
    TooManyThrottles { max: u32 },
    #[error("{reason}")]
    BadPasswordFile { reason: String },
    #[error("ESMTP Listen `{listener}` has enable_authentication but no auth_password_file")]
    AuthWithoutPasswordFile { listener: String },
    #[error("webhook `{name}` has no `target`")]
    WebhookWithoutTarget { name: String },
    #[error("webhook `{name}` needs an `eventlog` in the ec_logger stanza (its events are read from there)")]
    WebhookWithoutEventlog { name: String },
    #[error("webhook `{name}`: `auth_token` must be printable ASCII")]
    BadWebhookToken { name: String },
    #[error("bad webhook target `{value}`: {reason}")]
    BadWebhookTarget { value: String, reason: &'static str },
    #[error("`events`: unknown event type `{value}` (known: {known})")]
    UnknownEventType { value: String, known: String },
    #[error("second ec_logger instance `{name}`: only one (`{first}`) is supported")]
    SecondLogger { name: String, first: String },
}

/// The kind of scope an option or stanza sits in, as named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    BindingGroup,
    Binding,
    Domain,
    EsmtpListener,
    /// A `Listen` inside `ESMTP_Listener`.
    EsmtpListen,
    ControlListener,
    /// A `Listen` inside `Control_Listener`.
    ControlListen,
    HttpListener,
    /// A `Listen` inside `HTTP_Listener`.
    HttpListen,
    EcLogger,
    Security,
    /// `host "mx.example" { }`: an MX host (or gateway) by name or address.
    Host,
    /// A `Peer "cidr"` inside `Control_Listener` or one of its `Listen`s:
    /// who may use a TCP console.
    ControlPeer,
    /// `webhook "name" { target = "http://..." }`: an event endpoint.
    Webhook,
}

impl Scope {
    pub const ALL: [Scope; 15] = [
        Scope::Global,
        Scope::BindingGroup,
        Scope::Binding,
        Scope::Domain,
        Scope::EsmtpListener,
        Scope::EsmtpListen,
        Scope::ControlListener,
        Scope::ControlListen,
        Scope::HttpListener,
        Scope::HttpListen,
        Scope::EcLogger,
        Scope::Security,
        Scope::Host,
        Scope::ControlPeer,
        Scope::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::BindingGroup => "binding_group",
            Scope::Binding => "binding",
            Scope::Domain => "domain",
            Scope::EsmtpListener => "ESMTP_Listener",
            Scope::EsmtpListen => "ESMTP_Listener Listen",
            Scope::ControlListener => "Control_Listener",
            Scope::ControlListen => "Control_Listener Listen",
            Scope::HttpListener => "HTTP_Listener",
            Scope::HttpListen => "HTTP_Listener Listen",
            Scope::EcLogger => "ec_logger",
            Scope::Security => "Security",
            Scope::Host => "host",
            Scope::ControlPeer => "Control_Listener Peer",
            Scope::Webhook => "webhook",
        }
    }

    /// One bit per scope, for `ScopeSet`.
    pub(super) const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes an option may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScopeSet(pub(super) u16);

impl ScopeSet {
    pub(super) const fn of(scopes: &[Scope]) -> ScopeSet {
        let mut bits = 0;
        let mut i = 0;
        while i < scopes.len() {
            bits |= scopes[i].bit();
            i += 1;
        }
        ScopeSet(bits)
    }

    pub(super) fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// "global, binding_group, binding, domain"
    pub(super) fn describe(self) -> String {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.name())
            .collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_renders_file_colon_line_colon_message() {
        let error = ConfigError {
            file: PathBuf::from("ecelerity.conf"),
            line: 41,
            kind: ConfigErrorKind::UnknownOption {
                option: "max_outbond_connections".into(),
                scope: Scope::Domain,
            },
        };
        assert_eq!(
            error.to_string(),
            "ecelerity.conf:41: unknown option `max_outbond_connections` in domain scope"
        );
    }

    #[test]
    fn scope_set_describes_members_in_a_fixed_order() {
        let set = ScopeSet::of(&[Scope::Domain, Scope::Global, Scope::Binding]);
        assert!(set.contains(Scope::Binding));
        assert!(!set.contains(Scope::EsmtpListen));
        assert_eq!(set.describe(), "global, binding, domain");
    }
}
