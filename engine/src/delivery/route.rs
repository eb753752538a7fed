//! Where mail for a queue goes: pure functions of its options and of the
//! DNS answers `connect` looked up, returning the ordered targets.
//!
//! Owns: [`plan`] (a `gateway`, Momentum's `routes`, or MX routing on
//! `remote_smtp_port`), [`mx_hosts`] (MX records → hosts to try: by
//! preference, equal preferences spread, implicit MX, null MX, NXDOMAIN),
//! [`route_hosts`] (a `routes` list and its MX answers → hosts and ports
//! to try), [`targets`] (hosts and their addresses → addresses to try,
//! minus `prohibited_hosts`) and the replies of a failed route.
//! May call: `config`, `dns` (its answer types only). Never: I/O (the
//! lookups are `connect`'s), clocks, randomness (the caller passes the
//! spread).

use std::net::IpAddr;

use ecelerity_policy::Cidr;

use crate::config::{DeliveryOptions, Route};
use crate::dns::{Answer, DnsError, Mx};

/// One address to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX host, gateway or domain the address belongs to (for logs).
    pub host: String,
    pub address: IpAddr,
    pub port: u16,
}

/// How a queue's destination is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A `gateway`: its host's addresses, its port (`remote_smtp_port`
    /// when it names none).
    Gateway { host: String, port: u16 },
    /// The domain's MX hosts (or the domain itself without MX) on `port`
    /// (`remote_smtp_port`).
    Mx { port: u16 },
    /// A `routes` list other than a lone `__mx__`; `port`
    /// (`remote_smtp_port`) for the items that name none.
    Routes { routes: Vec<Route>, port: u16 },
}

/// A host to try and the answer to its address lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLookup {
    pub host: String,
    pub port: u16,
    pub answer: Result<Answer, DnsError>,
}

/// Why a queue has no target now. A permanent failure fails its
/// recipients (P lines, bounces); a transient one defers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    pub permanent: bool,
    /// The reply logged and, for a permanent one, given in the bounce.
    pub reply: String,
}

impl RouteFailure {
    fn permanent(reply: String) -> RouteFailure {
        RouteFailure {
            permanent: true,
            reply,
        }
    }

    fn transient(reply: String) -> RouteFailure {
        RouteFailure {
            permanent: false,
            reply,
        }
    }

    /// A lookup that failed (SERVFAIL, timeout, unreachable nameserver):
    /// transient; a name DNS cannot even ask about fails for good.
    pub fn lookup(what: &str, name: &str, error: &DnsError) -> RouteFailure {
        if *error == DnsError::BadName {
            return RouteFailure::permanent(format!("550 5.1.2 {name}: not a valid domain name"));
        }
        RouteFailure::transient(format!("451 4.4.3 cannot resolve {what} {name}: {error}"))
    }
}

/// The plan for a queue with `options`. Config resolution leaves at most
/// one of `gateway` and `routes` set.
/// The name DNS knows `domain` by: itself when ASCII, else its IDNA
/// A-label form (`b\u{fc}cher.example` -> `xn--bcher-kva.example`); a
/// domain that has none fails permanently.
pub fn a_labels(domain: &str) -> Result<std::borrow::Cow<'_, str>, RouteFailure> {
    if domain.is_ascii() {
        return Ok(std::borrow::Cow::Borrowed(domain));
    }
    match idna::domain_to_ascii_strict(domain) {
        Ok(ascii) => Ok(std::borrow::Cow::Owned(ascii)),
        Err(_) => Err(RouteFailure::permanent(format!(
            "550 5.1.2 {domain}: not a valid domain name"
        ))),
    }
}

pub fn plan(options: &DeliveryOptions) -> Plan {
    let port = options.remote_smtp_port;
    match (&options.gateway, &options.routes) {
        (Some(g), _) => Plan::Gateway {
            host: g.host.clone(),
            port: g.port.unwrap_or(port),
        },
        (None, Some(routes)) if routes[..] != [Route::Mx] => Plan::Routes {
            routes: routes.clone(),
            port,
        },
        (None, _) => Plan::Mx { port },
    }
}

/// The name whose MX records item `route` of a `routes` list needs
/// (`__mx__`: the domain's; a `type=mx` host: its own), or `None`. An IP
/// address has no MX records: `type=mx` on one (Momentum's own synopsis
/// writes `smtp://1.2.3.4?pref=10&ttl=300&type=mx`) means the address.
pub fn mx_name_of<'a>(route: &'a Route, domain: &'a str) -> Option<&'a str> {
    match route {
        Route::Mx => Some(domain),
        Route::Host(h) if h.mx_lookup && h.host.parse::<IpAddr>().is_err() => Some(&h.host),
        Route::Host(_) => None,
    }
}

/// The hosts (with ports) to try for `domain` under a `routes` list, in
/// Momentum's order: by preference, lowest first, where an item without
/// `pref` (and `__mx__`) has its position in the list (0 for the first);
/// equal preferences keep list order, except items that both give the same
/// `pref`, which take turns being first (rotated by `spread`). An item
/// that needs MX records (`__mx__`, `type=mx`) expands in place to those
/// hosts (`mx_hosts`). `mx_answers[i]` is the answer for item `i` when it
/// needs one. Hosts repeated are tried once. An item that resolves to
/// nothing is skipped; when none resolves the failure is transient: a
/// route list is the operator's, never a bounce.
pub fn route_hosts(
    domain: &str,
    routes: &[Route],
    mx_answers: &[Option<Result<Answer, DnsError>>],
    port: u16,
    spread: u64,
) -> Result<Vec<(String, u16)>, RouteFailure> {
    assert_eq!(routes.len(), mx_answers.len());
    let order = route_order(routes, spread);
    let mut out: Vec<(String, u16)> = Vec::with_capacity(routes.len());
    let mut first_failure: Option<RouteFailure> = None;
    for index in order {
        let expanded = expand(domain, &routes[index], &mx_answers[index], port, spread);
        match expanded {
            Ok(hosts) => {
                for host in hosts {
                    if !out.contains(&host) {
                        out.push(host);
                    }
                }
            }
            Err(failure) => {
                first_failure.get_or_insert(failure);
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let why = first_failure.map_or_else(String::new, |f| format!(": {}", f.reply));
    Err(RouteFailure::transient(format!(
        "451 4.4.4 no item of the routes of {domain} has a host{why}"
    )))
}

/// Indices of `routes` in the order they are tried (see [`route_hosts`]).
fn route_order(routes: &[Route], spread: u64) -> Vec<usize> {
    let explicit = |i: usize| match &routes[i] {
        Route::Host(h) => h.preference,
        Route::Mx => None,
    };
    let preference = |i: usize| explicit(i).map_or(i as u64, u64::from);
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| preference(i));
    // Runs of items sharing one explicit `pref` share the load.
    let mut start = 0;
    while start < order.len() {
        let pref = explicit(order[start]);
        let mut end = start + 1;
        while end < order.len() && pref.is_some() && explicit(order[end]) == pref {
            end += 1;
        }
        let run = &mut order[start..end];
        let shift = (spread % run.len() as u64) as usize;
        run.rotate_left(shift);
        start = end;
    }
    order
}

/// The hosts one `routes` item stands for.
fn expand(
    domain: &str,
    route: &Route,
    mx_answer: &Option<Result<Answer, DnsError>>,
    port: u16,
    spread: u64,
) -> Result<Vec<(String, u16)>, RouteFailure> {
    let port = match route {
        Route::Host(h) => h.port.unwrap_or(port),
        Route::Mx => port,
    };
    let Some(name) = mx_name_of(route, domain) else {
        let Route::Host(h) = route else {
            unreachable!("__mx__ always needs MX records")
        };
        return Ok(vec![(h.host.to_ascii_lowercase(), port)]);
    };
    let answer = match mx_answer {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => return Err(RouteFailure::lookup("MX of", name, e)),
        None => unreachable!("the caller looks up every item that needs MX records"),
    };
    let hosts = mx_hosts(name, answer, spread)?;
    Ok(hosts.into_iter().map(|host| (host, port)).collect())
}

/// The hosts to try for `domain`, given the answer to its MX query:
/// by preference (lowest first); within one preference, rotated by
/// `spread` so that connections share equal hosts out. No MX records
/// (the name exists) is an implicit MX: the domain itself (RFC 5321
/// 5.1). A null MX (a lone `MX 0 .`, RFC 7505) and NXDOMAIN are
/// permanent failures.
pub fn mx_hosts(domain: &str, answer: &Answer, spread: u64) -> Result<Vec<String>, RouteFailure> {
    match answer {
        Answer::NxDomain => Err(RouteFailure::permanent(format!(
            "550 5.1.2 {domain}: domain does not exist (NXDOMAIN)"
        ))),
        // An MX question never gets TLSA or TXT records back; read as no MX.
        Answer::NoData | Answer::Addresses(_) | Answer::Tlsa(_) | Answer::Txt(_) => {
            Ok(vec![domain.to_ascii_lowercase()])
        }
        Answer::Mx(records) => {
            let mut records: Vec<&Mx> = records.iter().filter(|mx| mx.exchange != ".").collect();
            if records.is_empty() {
                return Err(RouteFailure::permanent(format!(
                    "556 5.1.10 {domain} accepts no mail (null MX, RFC 7505)"
                )));
            }
            records.sort_by_key(|mx| mx.preference);
            records.dedup_by(|a, b| a.exchange == b.exchange);
            let mut hosts: Vec<String> = Vec::with_capacity(records.len());
            for group in records.chunk_by(|a, b| a.preference == b.preference) {
                let shift = (spread % group.len() as u64) as usize;
                let start = hosts.len();
                hosts.extend(group.iter().map(|mx| mx.exchange.clone()));
                hosts[start..].rotate_left(shift);
            }
            Ok(hosts)
        }
    }
}

/// The addresses to try, in order: each host's addresses in the order
/// given, hosts in order, on the host's port, without addresses in
/// `prohibited`. `lookups` holds each host with the answer to its address
/// lookup.
/// `implicit` says the only host is the domain itself (no MX): then a
/// domain without addresses is a permanent failure; a host of an MX
/// record without addresses is skipped, and if none has one the failure
/// is transient (a broken zone can be fixed).
pub fn targets(
    domain: &str,
    lookups: &[HostLookup],
    implicit: bool,
    prohibited: &[Cidr],
) -> Result<Vec<Target>, RouteFailure> {
    let mut out = Vec::new();
    let mut skipped_prohibited = 0;
    let mut first_error: Option<RouteFailure> = None;
    for HostLookup { host, port, answer } in lookups {
        match answer {
            Ok(Answer::Addresses(ips)) => {
                for &address in ips {
                    if prohibited.iter().any(|cidr| cidr.contains(address)) {
                        skipped_prohibited += 1;
                        continue;
                    }
                    out.push(Target {
                        host: host.clone(),
                        address,
                        port: *port,
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert_with(|| RouteFailure::lookup("host", host, e));
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    if skipped_prohibited > 0 {
        return Err(RouteFailure::transient(format!(
            "451 4.4.4 every address of {domain} is in prohibited_hosts"
        )));
    }
    if let Some(failure) = first_error {
        return Err(failure);
    }
    if implicit {
        return Err(RouteFailure::permanent(format!(
            "550 5.1.2 {domain}: no MX and no address record"
        )));
    }
    Err(RouteFailure::transient(format!(
        "451 4.4.4 no MX host of {domain} has an address"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_BINDING};

    fn options(text: &str) -> DeliveryOptions {
        Config::parse(text, std::path::Path::new("t.conf"))
            .unwrap()
            .delivery(DEFAULT_BINDING, "example.com")
    }

    fn mx(records: &[(u16, &str)]) -> Answer {
        Answer::Mx(
            records
                .iter()
                .map(|(preference, exchange)| Mx {
                    preference: *preference,
                    exchange: exchange.to_string(),
                })
                .collect(),
        )
    }

    /// Each (host, answer) of `list` on `port`.
    fn on(port: u16, list: &[(String, Result<Answer, DnsError>)]) -> Vec<HostLookup> {
        list.iter()
            .map(|(host, answer)| HostLookup {
                host: host.clone(),
                port,
                answer: answer.clone(),
            })
            .collect()
    }

    fn ips(list: &[&str]) -> Result<Answer, DnsError> {
        Ok(Answer::Addresses(
            list.iter().map(|ip| ip.parse().unwrap()).collect(),
        ))
    }

    #[test]
    fn a_gateway_is_the_plan_and_otherwise_mx_on_remote_smtp_port() {
        assert_eq!(
            plan(&options("gateway = \"127.0.0.1:2526\"\n")),
            Plan::Gateway {
                host: "127.0.0.1".into(),
                port: 2526
            }
        );
        assert_eq!(
            plan(&options(
                "gateway = \"relay.test\"\nremote_smtp_port = 2527\n"
            )),
            Plan::Gateway {
                host: "relay.test".into(),
                port: 2527
            },
            "a gateway without a port takes remote_smtp_port"
        );
        assert_eq!(plan(&options("")), Plan::Mx { port: 25 });
        assert_eq!(
            plan(&options("remote_smtp_port = 2525\n")),
            Plan::Mx { port: 2525 }
        );
    }

    #[test]
    fn mx_hosts_go_by_preference() {
        let answer = mx(&[(20, "b.test"), (10, "a.test"), (30, "c.test")]);
        assert_eq!(
            mx_hosts("d.test", &answer, 0).unwrap(),
            ["a.test", "b.test", "c.test"]
        );
        // The spread never reorders different preferences.
        assert_eq!(
            mx_hosts("d.test", &answer, 7).unwrap(),
            ["a.test", "b.test", "c.test"]
        );
    }

    #[test]
    fn equal_preferences_are_spread_and_every_host_is_first_in_turn() {
        let answer = mx(&[
            (10, "a.test"),
            (10, "b.test"),
            (10, "c.test"),
            (20, "z.test"),
        ]);
        let mut firsts = Vec::new();
        for spread in 0..3 {
            let hosts = mx_hosts("d.test", &answer, spread).unwrap();
            assert_eq!(hosts.len(), 4);
            assert_eq!(hosts[3], "z.test", "a worse preference stays last");
            let mut group = hosts[..3].to_vec();
            group.sort();
            assert_eq!(group, ["a.test", "b.test", "c.test"]);
            firsts.push(hosts[0].clone());
        }
        firsts.sort();
        assert_eq!(firsts, ["a.test", "b.test", "c.test"]);
    }

    #[test]
    fn no_mx_is_an_implicit_mx_and_nxdomain_and_null_mx_are_permanent() {
        assert_eq!(mx_hosts("D.test", &Answer::NoData, 0).unwrap(), ["d.test"]);
        let nx = mx_hosts("d.test", &Answer::NxDomain, 0).unwrap_err();
        assert!(nx.permanent);
        assert!(nx.reply.starts_with("550 5.1.2 d.test"), "{}", nx.reply);
        let null = mx_hosts("d.test", &mx(&[(0, ".")]), 0).unwrap_err();
        assert!(null.permanent);
        assert!(null.reply.starts_with("556 5.1.10 "), "{}", null.reply);
        // A root among real hosts is a zone error: the real hosts are used.
        assert_eq!(
            mx_hosts("d.test", &mx(&[(0, "."), (10, "a.test")]), 0).unwrap(),
            ["a.test"]
        );
    }

    #[test]
    fn targets_keep_each_hosts_addresses_in_order_and_skip_hosts_without() {
        let lookups = vec![
            ("a.test".to_string(), ips(&["127.0.0.2", "::1"])),
            ("dead.test".to_string(), Ok(Answer::NxDomain)),
            ("b.test".to_string(), ips(&["127.0.0.3"])),
        ];
        let t = targets("d.test", &on(2525, &lookups), false, &[]).unwrap();
        let got: Vec<(String, String, u16)> = t
            .iter()
            .map(|t| (t.host.clone(), t.address.to_string(), t.port))
            .collect();
        assert_eq!(
            got,
            [
                ("a.test".into(), "127.0.0.2".into(), 2525),
                ("a.test".into(), "::1".into(), 2525),
                ("b.test".into(), "127.0.0.3".into(), 2525),
            ]
        );
    }

    #[test]
    fn targets_fail_permanently_only_for_a_domain_without_any_address() {
        let none = vec![("d.test".to_string(), Ok(Answer::NoData))];
        let implicit = targets("d.test", &on(25, &none), true, &[]).unwrap_err();
        assert!(implicit.permanent);
        assert!(implicit.reply.starts_with("550 5.1.2 "));
        let mx_host = vec![("mx.test".to_string(), Ok(Answer::NxDomain))];
        assert!(
            !targets("d.test", &on(25, &mx_host), false, &[])
                .unwrap_err()
                .permanent
        );
        let servfail = vec![("mx.test".to_string(), Err(DnsError::Timeout))];
        let failure = targets("d.test", &on(25, &servfail), true, &[]).unwrap_err();
        assert!(!failure.permanent);
        assert!(failure.reply.starts_with("451 4.4.3 "), "{}", failure.reply);
    }

    #[test]
    fn a_lookup_failure_is_transient_unless_the_name_is_invalid() {
        let failure = RouteFailure::lookup("MX of", "d.test", &DnsError::Timeout);
        assert!(!failure.permanent);
        assert!(failure
            .reply
            .starts_with("451 4.4.3 cannot resolve MX of d.test: "));
        let bad = RouteFailure::lookup("MX of", "a..b", &DnsError::BadName);
        assert!(bad.permanent);
        assert_eq!(bad.reply, "550 5.1.2 a..b: not a valid domain name");
    }

    #[test]
    fn prohibited_addresses_are_never_targets() {
        let prohibited: Vec<Cidr> = ["0.0.0.0/8", "192.0.2.0/24"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let lookups = vec![(
            "mx.test".to_string(),
            ips(&["0.0.0.1", "192.0.2.9", "127.0.0.2"]),
        )];
        let t = targets("d.test", &on(25, &lookups), false, &prohibited).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].address.to_string(), "127.0.0.2");
        let only_bad = vec![("mx.test".to_string(), ips(&["0.0.0.0"]))];
        let failure = targets("d.test", &on(25, &only_bad), false, &prohibited).unwrap_err();
        assert!(!failure.permanent);
        assert!(failure.reply.contains("prohibited_hosts"));
    }

    fn routes_plan(text: &str) -> (Vec<Route>, u16) {
        match plan(&options(text)) {
            Plan::Routes { routes, port } => (routes, port),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn routes_are_a_plan_of_their_own_and_a_lone_mx_item_is_mx_routing() {
        let (routes, port) = routes_plan("routes = ( \"smtp://relay.test?port=2526\" )\n");
        assert_eq!(routes.len(), 1);
        assert_eq!(port, 25);
        assert_eq!(
            plan(&options(
                "routes = ( \"__mx__\" )\nremote_smtp_port = 2600\n"
            )),
            Plan::Mx { port: 2600 }
        );
    }

    #[test]
    fn the_more_specific_of_gateway_and_routes_wins_and_gateway_within_a_scope() {
        // A domain's routes beat a global gateway.
        let text = "gateway = \"hub.test:2525\"\ndomain example.com { routes = \"relay.test\" }\n";
        assert!(matches!(plan(&options(text)), Plan::Routes { .. }));
        // A domain's gateway beats global routes.
        let text = "routes = \"relay.test\"\ndomain example.com { gateway = \"hub.test\" }\n";
        assert!(matches!(plan(&options(text)), Plan::Gateway { .. }));
        // One scope with both: the gateway.
        let text = "domain example.com { routes = \"relay.test\"\n gateway = \"hub.test\" }\n";
        assert!(matches!(plan(&options(text)), Plan::Gateway { .. }));
        let text = "routes = \"relay.test\"\ngateway = \"hub.test\"\n";
        assert!(matches!(plan(&options(text)), Plan::Gateway { .. }));
        // A binding::domain routes beat a global domain gateway.
        let text = "domain example.com { gateway = \"hub.test\" }\n\
                    binding default { domain example.com { routes = \"relay.test\" } }\n";
        assert!(matches!(plan(&options(text)), Plan::Routes { .. }));
    }

    /// The MX answers `route_hosts` needs for `routes`: `mx` for every item
    /// that needs MX records.
    fn answers_for(routes: &[Route], mx: &Answer) -> Vec<Option<Result<Answer, DnsError>>> {
        routes
            .iter()
            .map(|r| mx_name_of(r, "d.test").map(|_| Ok(mx.clone())))
            .collect()
    }

    fn hosts_of(text: &str, mx_answer: &Answer, spread: u64) -> Vec<(String, u16)> {
        let (routes, port) = routes_plan(text);
        let answers = answers_for(&routes, mx_answer);
        route_hosts("d.test", &routes, &answers, port, spread).unwrap()
    }

    fn names(hosts: &[(String, u16)]) -> Vec<&str> {
        hosts.iter().map(|(h, _)| h.as_str()).collect()
    }

    #[test]
    fn routes_without_pref_are_tried_in_the_order_written() {
        let text = "routes = ( \"b.test\" \"A.test\" \"192.0.2.7\" )\nremote_smtp_port = 2525\n";
        for spread in 0..3 {
            let hosts = hosts_of(text, &Answer::NoData, spread);
            assert_eq!(
                hosts,
                [
                    ("b.test".to_string(), 2525),
                    ("a.test".to_string(), 2525),
                    ("192.0.2.7".to_string(), 2525)
                ],
                "without prefs the first item is used exclusively"
            );
        }
    }

    #[test]
    fn explicit_prefs_order_items_and_equal_ones_take_turns() {
        let text = "routes = ( \"smtp://c.test?pref=30\" \"smtp://a.test?pref=10\" \
                    \"smtp://b.test?pref=10&port=2600\" )\n";
        let mut firsts = Vec::new();
        for spread in 0..2 {
            let hosts = hosts_of(text, &Answer::NoData, spread);
            assert_eq!(hosts.len(), 3);
            assert_eq!(hosts[2], ("c.test".to_string(), 25));
            assert!(hosts.contains(&("b.test".to_string(), 2600)), "{hosts:?}");
            firsts.push(hosts[0].0.clone());
        }
        firsts.sort();
        assert_eq!(firsts, ["a.test", "b.test"]);
    }

    #[test]
    fn mx_items_expand_in_place_to_the_mx_hosts() {
        let answer = mx(&[(20, "mx2.test"), (10, "mx1.test")]);
        // A smarthost first, the MX as the fallback.
        let text = "routes = ( \"smtp://relay.test?pref=1\" \"__mx__\" )\n";
        assert_eq!(
            names(&hosts_of(text, &answer, 0)),
            ["relay.test", "mx1.test", "mx2.test"]
        );
        // The MX first, a backup host after it.
        let text = "routes = ( \"__mx__\" \"backup.test\" )\n";
        assert_eq!(
            names(&hosts_of(text, &answer, 0)),
            ["mx1.test", "mx2.test", "backup.test"]
        );
        // type=mx: another domain's MX hosts, on the item's port.
        let text = "routes = ( \"smtp://hub.test?type=mx&port=2700\" )\n";
        assert_eq!(
            hosts_of(text, &answer, 0),
            [
                ("mx1.test".to_string(), 2700),
                ("mx2.test".to_string(), 2700)
            ]
        );
        // type=mx on an address is the address (Momentum's synopsis).
        let text = "routes = ( \"smtp://127.0.0.9?pref=10&ttl=300&type=mx\" )\n";
        assert_eq!(names(&hosts_of(text, &answer, 0)), ["127.0.0.9"]);
        // A host both listed and an MX is tried once.
        let text = "routes = ( \"mx2.test\" \"__mx__\" )\n";
        assert_eq!(names(&hosts_of(text, &answer, 0)), ["mx2.test", "mx1.test"]);
    }

    #[test]
    fn a_route_list_skips_items_without_hosts_and_never_bounces() {
        let (routes, port) = routes_plan("routes = ( \"__mx__\" \"relay.test\" )\n");
        let nx = vec![Some(Ok(Answer::NxDomain)), None];
        let hosts = route_hosts("d.test", &routes, &nx, port, 0).unwrap();
        assert_eq!(names(&hosts), ["relay.test"]);
        let (routes, port) =
            routes_plan("routes = ( \"smtp://hub.test?type=mx\" \"smtp://hub2.test?type=mx\" )\n");
        let answers = vec![Some(Ok(Answer::NxDomain)), Some(Err(DnsError::Timeout))];
        let failure = route_hosts("d.test", &routes, &answers, port, 0).unwrap_err();
        assert!(!failure.permanent, "a route list is the operator's to fix");
        assert!(
            failure
                .reply
                .starts_with("451 4.4.4 no item of the routes of d.test"),
            "{}",
            failure.reply
        );
        assert!(failure.reply.contains("hub.test"), "{}", failure.reply);
    }

    #[test]
    fn a_u_label_domain_is_looked_up_by_its_a_labels() {
        assert_eq!(a_labels("example.com").unwrap(), "example.com");
        assert_eq!(
            a_labels("b\u{fc}cher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            a_labels("\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}").unwrap(),
            "xn--r8jz45g.xn--zckzah"
        );
        let bad = a_labels("ex_ample\u{fc}.test").unwrap_err();
        assert!(bad.reply.starts_with("550 5.1.2"), "{}", bad.reply);
    }
}
