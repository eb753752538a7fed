//! Where mail for a queue goes: pure functions of its options and of the
//! DNS answers `connect` looked up, returning the ordered targets.
//!
//! Owns: [`plan`] (a `gateway`, or MX routing on `remote_smtp_port`),
//! [`mx_hosts`] (MX records → hosts to try: by preference, equal
//! preferences spread, implicit MX, null MX, NXDOMAIN), [`targets`]
//! (hosts and their addresses → addresses to try, minus
//! `prohibited_hosts`) and the replies of a failed route.
//! May call: `config`, `dns` (its answer types only). Never: I/O (the
//! lookups are `connect`'s), clocks, randomness (the caller passes the
//! spread).

use std::net::IpAddr;

use ecelerity_policy::Cidr;

use crate::config::DeliveryOptions;
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

/// The plan for a queue with `options`.
pub fn plan(options: &DeliveryOptions) -> Plan {
    match &options.gateway {
        Some(g) => Plan::Gateway {
            host: g.host.clone(),
            port: g.port.unwrap_or(options.remote_smtp_port),
        },
        None => Plan::Mx {
            port: options.remote_smtp_port,
        },
    }
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
        Answer::NoData | Answer::Addresses(_) => Ok(vec![domain.to_ascii_lowercase()]),
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
/// given, hosts in order, on `port`, without addresses in `prohibited`.
/// `lookups` holds each host with the answer to its address lookup.
/// `implicit` says the only host is the domain itself (no MX): then a
/// domain without addresses is a permanent failure; a host of an MX
/// record without addresses is skipped, and if none has one the failure
/// is transient (a broken zone can be fixed).
pub fn targets(
    domain: &str,
    lookups: &[(String, Result<Answer, DnsError>)],
    port: u16,
    implicit: bool,
    prohibited: &[Cidr],
) -> Result<Vec<Target>, RouteFailure> {
    let mut out = Vec::new();
    let mut skipped_prohibited = 0;
    let mut first_error: Option<RouteFailure> = None;
    for (host, answer) in lookups {
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
                        port,
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
        let t = targets("d.test", &lookups, 2525, false, &[]).unwrap();
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
        let implicit = targets("d.test", &none, 25, true, &[]).unwrap_err();
        assert!(implicit.permanent);
        assert!(implicit.reply.starts_with("550 5.1.2 "));
        let mx_host = vec![("mx.test".to_string(), Ok(Answer::NxDomain))];
        assert!(
            !targets("d.test", &mx_host, 25, false, &[])
                .unwrap_err()
                .permanent
        );
        let servfail = vec![("mx.test".to_string(), Err(DnsError::Timeout))];
        let failure = targets("d.test", &servfail, 25, true, &[]).unwrap_err();
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
        let t = targets("d.test", &lookups, 25, false, &prohibited).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].address.to_string(), "127.0.0.2");
        let only_bad = vec![("mx.test".to_string(), ips(&["0.0.0.0"]))];
        let failure = targets("d.test", &only_bad, 25, false, &prohibited).unwrap_err();
        assert!(!failure.permanent);
        assert!(failure.reply.contains("prohibited_hosts"));
    }
}
