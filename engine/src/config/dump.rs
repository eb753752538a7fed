//! `ec_dump_config`: the effective configuration written back out in
//! ecelerity.conf syntax, so an operator sees every value in force and can
//! feed the output back in unchanged.
//! Owns: the output layout (global options with defaults filled in, then
//! Security, listeners, the logger, binding groups, bindings, domains).
//! May call: `model` (settings), `options` (the generated override sets,
//! to turn resolved values back into table-ordered entries).
//! Never: parsing, the file system.

use std::path::Path;

use super::error::Scope;
use super::model::{BindingScope, DomainScope, Settings};
use super::options::{
    spec_of, ControlOverrides, DeliveryOverrides, GlobalOverrides, InboundOverrides,
    LoggerOverrides, SecurityOverrides, Support, Typed, WebhookOverrides,
};
use super::{DeliveryOptions, ListenerConfig, DEFAULT_BINDING};

const INDENT: &str = "  ";

/// Double-quotes `text`, escaping `"` and `\` the way the lexer reads them.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn format_value(value: &Typed) -> String {
    match value {
        Typed::Path(path) => quote(&path.to_string_lossy()),
        Typed::Text(text) => quote(text),
        Typed::Integer(n) => n.to_string(),
        Typed::Seconds(duration) => duration.as_secs().to_string(),
        Typed::Bool(b) => b.to_string(),
        Typed::Cidrs(cidrs) => {
            let mut out = String::from("(");
            for cidr in cidrs {
                out.push(' ');
                out.push_str(&quote(&cidr.to_string()));
            }
            out.push_str(" )");
            out
        }
        Typed::Nameservers(servers) => {
            let mut out = String::from("(");
            for server in servers {
                out.push(' ');
                out.push_str(&quote(&server.to_string()));
            }
            out.push_str(" )");
            out
        }
        Typed::Gateway(gateway) => quote(&gateway.to_string()),
        Typed::Routes(routes) => {
            let mut out = String::from("(");
            for route in routes {
                out.push(' ');
                out.push_str(&quote(&route.to_string()));
            }
            out.push_str(" )");
            out
        }
        Typed::Ip(ip) => quote(&ip.to_string()),
        Typed::MaxRetries(retries) => retries.to_string(),
        Typed::FileMode(mode) => format!("{mode:04o}"),
        Typed::Throttle(throttle) => quote(&throttle.to_string()),
        Typed::TlsMode(mode) => quote(&mode.to_string()),
        Typed::TlsVerify(verify) => quote(&verify.to_string()),
        Typed::Names(names) => {
            let quoted: Vec<String> = names.iter().map(|n| quote(n)).collect();
            format!("( {} )", quoted.join(" "))
        }
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str(INDENT);
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn option(&mut self, depth: usize, name: &str, value: &Typed) {
        self.line(depth, &format!("{name} = {}", format_value(value)));
    }

    fn options(&mut self, depth: usize, entries: &[(&'static str, Typed)]) {
        for (name, value) in entries {
            self.option(depth, name, value);
        }
    }

    fn open(&mut self, depth: usize, keyword: &str, name: Option<&str>) {
        match name {
            Some(name) => self.line(depth, &format!("{keyword} {} {{", quote(name))),
            None => self.line(depth, &format!("{keyword} {{")),
        }
    }

    fn close(&mut self, depth: usize) {
        self.line(depth, "}");
    }

    fn domains<'a>(&mut self, depth: usize, domains: impl Iterator<Item = &'a DomainScope>) {
        for domain in domains {
            self.open(depth, "domain", Some(&domain.name));
            self.options(depth + 1, &domain.overrides.entries());
            self.close(depth);
        }
    }
}

/// Listener options of `listener` in table order; `with_enable` (a
/// Listen) keeps the listener-only ones (`Enable`, the AUTH options), which
/// the global scope does not take.
fn inbound_entries(listener: &ListenerConfig, with_enable: bool) -> Vec<(&'static str, Typed)> {
    let mut entries = InboundOverrides::complete(listener).entries();
    entries.retain(|(name, _)| with_enable || spec_of(name).scopes.contains(Scope::Global));
    entries
}

pub(super) fn dump(settings: &Settings, source: Option<&Path>) -> String {
    let mut w = Writer { out: String::new() };
    w.line(0, "# ecelerity effective configuration (ec_dump_config)");
    match source {
        Some(path) => w.line(0, &format!("# read from {}", path.display())),
        None => w.line(0, "# built-in default configuration"),
    }

    w.line(0, "");
    w.line(0, "# global");
    w.options(0, &GlobalOverrides::complete(&settings.global).entries());
    w.options(0, &inbound_entries(&settings.inbound, false));
    let delivery = DeliveryOverrides::complete(&settings.delivery);
    if delivery.gateway.is_none() && delivery.routes.is_none() {
        w.line(
            0,
            "# gateway is unset: mail goes to each domain's MX hosts (remote_smtp_port)",
        );
    }
    // An option the engine does not act on yet is written as a comment
    // while it has its default, so the dump passes `Config::load`.
    let builtin = DeliveryOverrides::complete(&DeliveryOptions::builtin(&settings.global.hostname));
    let builtin = builtin.entries();
    for (name, value) in delivery.entries() {
        match spec_of(name).support {
            Support::NotYet(reason) if builtin.contains(&(name, value.clone())) => {
                let text = format_value(&value);
                w.line(
                    0,
                    &format!("# {name} = {text} is not supported yet ({reason})"),
                );
            }
            _ => w.option(0, name, &value),
        }
    }
    if delivery.bind_address.is_none() {
        w.line(
            0,
            "# bind_address is unset: the kernel picks the source address",
        );
    }

    if let Some(security) = &settings.security {
        w.line(0, "");
        w.open(0, "Security", None);
        w.options(1, &SecurityOverrides::complete(security).entries());
        w.close(0);
    }

    if !settings.esmtp_listeners.is_empty() {
        w.line(0, "");
        w.open(0, "ESMTP_Listener", None);
        for listener in &settings.esmtp_listeners {
            w.open(1, "Listen", Some(&listener.address.to_string()));
            w.options(2, &inbound_entries(listener, true));
            w.close(1);
        }
        w.close(0);
    }

    if !settings.control_listeners.is_empty() {
        w.line(0, "");
        w.open(0, "Control_Listener", None);
        for listener in &settings.control_listeners {
            w.open(1, "Listen", Some(&listener.path.to_string_lossy()));
            w.options(2, &ControlOverrides::complete(listener).entries());
            for peer in &listener.peers {
                w.open(2, "Peer", Some(&peer.cidr.to_string()));
                w.line(3, &format!("Enable = {}", peer.enable));
                w.close(2);
            }
            w.close(1);
        }
        w.close(0);
    }

    if !settings.http_listeners.is_empty() {
        w.line(0, "");
        w.open(0, "HTTP_Listener", None);
        for address in &settings.http_listeners {
            w.open(1, "Listen", Some(&address.to_string()));
            w.close(1);
        }
        w.close(0);
    }

    w.line(0, "");
    w.open(0, "ec_logger", Some(&settings.logger_name));
    w.options(1, &LoggerOverrides::complete(&settings.logs).entries());
    w.close(0);

    for webhook in &settings.webhooks {
        w.line(0, "");
        w.open(0, "webhook", Some(&webhook.name));
        w.options(1, &WebhookOverrides::complete(webhook).entries());
        w.close(0);
    }

    for datasource in &settings.datasources {
        w.line(0, "");
        w.open(0, "Datasource", Some(&datasource.name));
        for line in datasource.lines() {
            w.line(1, &line);
        }
        w.close(0);
    }
    if let Some(s) = &settings.scriptlet {
        let outcome = match s.timeout_outcome {
            super::TimeoutOutcome::Tempfail => "tempfail",
            super::TimeoutOutcome::Reject => "reject",
            super::TimeoutOutcome::Continue => "continue",
        };
        w.line(0, "");
        w.open(0, "scriptlet", Some(&s.instance));
        w.line(1, &format!("lua_path = {}", quote(&s.lua_path)));
        w.line(1, &format!("max_instructions = {}", s.max_instructions));
        w.line(1, &format!("timeout_outcome = {}", quote(outcome)));
        w.line(1, &format!("max_memory = {}", s.max_memory_bytes));
        for script in &s.scripts {
            w.line(
                1,
                &format!(
                    "script {} {{ source = {} }}",
                    quote(&script.name),
                    quote(&script.source)
                ),
            );
        }
        w.close(0);
    }

    // A binding of the default group is written at top level (its options
    // and binding::domain scopes); only its binding_group::binding::domain
    // scopes go inside `binding_group "default"`.
    for (group_name, group) in &settings.groups {
        let is_default = group_name == DEFAULT_BINDING;
        let members: Vec<(&String, &BindingScope)> = settings
            .bindings
            .iter()
            .filter(|(_, b)| &b.group == group_name)
            .collect();
        let nested_domains = members.iter().any(|(_, b)| !b.group_domains.is_empty());
        let empty = group.overrides.is_empty() && group.domains.is_empty() && !nested_domains;
        if is_default && empty {
            continue;
        }
        w.line(0, "");
        w.open(0, "binding_group", Some(group_name));
        w.options(1, &group.overrides.entries());
        w.domains(1, group.domains.values());
        for (binding_name, binding) in members {
            if is_default && binding.group_domains.is_empty() {
                continue;
            }
            w.open(1, "binding", Some(binding_name));
            if !is_default {
                w.options(2, &binding.overrides.entries());
                // A binding outside the default group cannot also have a
                // top-level stanza, so it has no binding::domain scopes.
                assert!(binding.domains.is_empty());
            }
            w.domains(2, binding.group_domains.values());
            w.close(1);
        }
        w.close(0);
    }
    for (binding_name, binding) in &settings.bindings {
        if binding.group != DEFAULT_BINDING {
            continue;
        }
        let implicit = binding_name == DEFAULT_BINDING
            && binding.overrides.is_empty()
            && binding.domains.is_empty();
        if implicit {
            continue;
        }
        w.line(0, "");
        w.open(0, "binding", Some(binding_name));
        w.options(1, &binding.overrides.entries());
        w.domains(1, binding.domains.values());
        w.close(0);
    }

    if !settings.domains.is_empty() {
        w.line(0, "");
        w.domains(0, settings.domains.values());
    }
    for host in settings.hosts.values() {
        w.line(0, "");
        w.open(0, "host", Some(&host.name));
        if let Some(n) = host.max_outbound_connections {
            let entry = ("max_outbound_connections", Typed::Integer(u64::from(n)));
            w.options(1, &[entry]);
        }
        w.close(0);
    }
    w.out
}

/// A scope path of `config eval`, as Momentum's console takes it.
#[derive(Default)]
struct ScopePath<'a> {
    group: Option<&'a str>,
    binding: Option<&'a str>,
    domain: Option<&'a str>,
    esmtp_listener: bool,
    control_listener: bool,
    listen: Option<&'a str>,
    logger: bool,
    security: bool,
}

fn scope_path<'a>(words: &[&'a str]) -> Result<ScopePath<'a>, String> {
    let mut path = ScopePath::default();
    let mut rest = words;
    while let Some((&word, tail)) = rest.split_first() {
        let kind = word.to_ascii_lowercase();
        let named = matches!(
            kind.as_str(),
            "binding_group" | "binding" | "domain" | "listen"
        );
        let name = if named {
            let (&name, tail) = tail
                .split_first()
                .ok_or_else(|| format!("Scope '{word}' needs a name"))?;
            rest = tail;
            Some(name)
        } else {
            rest = tail;
            None
        };
        match kind.as_str() {
            "binding_group" => path.group = name,
            "binding" => path.binding = name,
            "domain" => path.domain = name,
            "listen" => path.listen = name,
            "esmtp_listener" => path.esmtp_listener = true,
            "control_listener" => path.control_listener = true,
            "ec_logger" => {
                path.logger = true;
                // The logger's instance name is optional.
                if let Some((_, tail)) = rest.split_first().filter(|(w, _)| w.starts_with('"')) {
                    rest = tail;
                }
            }
            "security" => path.security = true,
            _ => return Err(format!("Unknown scope '{word}'")),
        }
    }
    Ok(path)
}

/// Momentum's `config eval [scope...] <option>`: the value of `option`
/// in effect in the scope, fallback applied (`Option = value`).
pub(super) fn eval(settings: &Settings, words: &[&str]) -> Result<String, String> {
    let Some((&option, scope)) = words.split_last() else {
        return Err("Usage: config eval [scope ...] <option>".into());
    };
    if super::options::lookup(option, Scope::Global).is_none() {
        return Err(format!("Unknown option '{option}'"));
    }
    let path = scope_path(scope)?;
    let global = GlobalOverrides::complete(&settings.global).entries();
    let mut entries: Vec<(&'static str, Typed)> = Vec::new();
    if path.control_listener {
        let found = match path.listen {
            Some(name) => settings
                .control_listeners
                .iter()
                .find(|c| c.path.to_string_lossy() == name),
            None => settings.control_listeners.first(),
        };
        let listener = found.ok_or_else(|| format!("No Control_Listener Listen '{scope:?}'"))?;
        entries.extend(ControlOverrides::complete(listener).entries());
    } else if path.esmtp_listener || path.listen.is_some() {
        match path.listen {
            Some(name) => {
                let listener = settings
                    .esmtp_listeners
                    .iter()
                    .find(|l| {
                        l.address.to_string() == name || format!(":{}", l.address.port()) == name
                    })
                    .ok_or_else(|| format!("No ESMTP_Listener Listen \"{name}\""))?;
                entries.extend(inbound_entries(listener, true));
            }
            None => entries.extend(inbound_entries(&settings.inbound, false)),
        }
    } else if path.logger {
        entries.extend(LoggerOverrides::complete(&settings.logs).entries());
    } else if path.security {
        if let Some(security) = &settings.security {
            entries.extend(SecurityOverrides::complete(security).entries());
        }
    } else {
        let mut delivery = settings.delivery.clone();
        match (path.binding, path.group) {
            (Some(binding), _) => {
                delivery = settings.delivery(binding, path.domain.unwrap_or(""));
            }
            (None, Some(group)) => {
                if let Some(group) = settings.groups.get(group) {
                    group.overrides.apply(&mut delivery);
                    let domain = path.domain.map(str::to_ascii_lowercase);
                    if let Some(d) = domain.and_then(|d| group.domains.get(&d)) {
                        d.overrides.apply(&mut delivery);
                    }
                }
            }
            (None, None) => {
                if let Some(domain) = path.domain {
                    delivery = settings.delivery(DEFAULT_BINDING, domain);
                }
            }
        }
        entries.extend(DeliveryOverrides::complete(&delivery).entries());
        entries.extend(inbound_entries(&settings.inbound, false));
    }
    entries.extend(global);
    let found = entries
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(option));
    match found {
        Some((name, Typed::Bool(b))) => Ok(format!("{name} = {}\n", u8::from(*b))),
        Some((name, value)) => Ok(format!("{name} = {}\n", format_value(value))),
        None => Ok(format!(
            "Option '{option}' is not set in scope '{}'.\n",
            scope.join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_the_lexer_unescapes() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }

    fn settings(text: &str) -> Settings {
        super::super::Config::parse(text, Path::new("t.conf"))
            .unwrap()
            .settings
    }

    #[test]
    fn eval_falls_back_through_scopes() {
        let s = settings(
            "max_outbound_connections = 9\nbinding_group \"g\" { max_outbound_connections = 4 \
             binding \"b\" { domain \"x.test\" { max_outbound_connections = 2 } } }\n\
             ESMTP_Listener { idle_time = 77 Listen \"127.0.0.1:2525\" { } }\n",
        );
        let eval = |w: &str| eval(&s, &w.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!(
            eval("max_outbound_connections"),
            "max_outbound_connections = 9\n"
        );
        assert_eq!(
            eval("binding_group g binding b domain x.test max_outbound_connections"),
            "max_outbound_connections = 2\n"
        );
        assert_eq!(
            eval("binding b domain y.test max_outbound_connections"),
            "max_outbound_connections = 4\n"
        );
        assert_eq!(
            eval("ESMTP_Listener Listen 127.0.0.1:2525 idle_time"),
            "idle_time = 77\n"
        );
        assert_eq!(
            eval("binding b hostname").split(" = ").next(),
            Some("hostname")
        );
        assert!(eval("gateway").starts_with("Option 'gateway' is not set"));
        assert!(super::eval(&s, &["no_such_option"]).is_err());
        assert!(super::eval(&s, &["nowhere", "x", "idle_time"]).is_err());
    }

    #[test]
    fn file_modes_print_as_four_octal_digits() {
        assert_eq!(format_value(&Typed::FileMode(0o600)), "0600");
        assert_eq!(format_value(&Typed::FileMode(0o4755)), "4755");
    }
}
