//! `ec_dump_config`: the effective configuration written back out in
//! ecelerity.conf syntax, so an operator sees every value in force and can
//! feed the output back in unchanged.
//! Owns: the output layout (global options with defaults filled in, then
//! Security, listeners, the logger, binding groups, bindings, domains).
//! May call: `model` (settings), `options` (the generated override sets,
//! to turn resolved values back into table-ordered entries).
//! Never: parsing, the file system.

use std::path::Path;

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

/// Listener options of `listener` in table order; `with_enable` keeps
/// `Enable` (not a global option).
fn inbound_entries(listener: &ListenerConfig, with_enable: bool) -> Vec<(&'static str, Typed)> {
    let mut entries = InboundOverrides::complete(listener).entries();
    entries.retain(|(name, _)| with_enable || *name != "Enable");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_the_lexer_unescapes() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }

    #[test]
    fn file_modes_print_as_four_octal_digits() {
        assert_eq!(format_value(&Typed::FileMode(0o600)), "0600");
        assert_eq!(format_value(&Typed::FileMode(0o4755)), "4755");
    }
}
