//! The TLS decision for each target of a queue: DANE (RFC 7672), MTA-STS
//! (RFC 8461), or the queue's own `tls` options.
//!
//! With `dane = true`, an MX host whose MX answer, address answer and
//! TLSA answer (`_PORT._tcp.HOST`) all came with the AD bit of the resolver (a
//! validating resolver the operator trusts, on loopback, as Postfix's
//! `smtp_tls_security_level = dane` does) and has usable TLSA records
//! (DANE-TA or DANE-EE) must be reached over TLS with a certificate the
//! records match; a failure is transient, never clear text. No usable
//! record (none, unsigned, only PKIX usages) falls back to the queue's
//! `tls` options; a TLSA lookup that fails for a signed host makes the
//! host unusable now (RFC 7672 section 2.2). With `mta_sts = true` and an
//! `enforce` policy, only MX hosts matching the policy are tried, over TLS
//! with a certificate valid for the MX name (WebPKI against `mta_sts_ca`);
//! a host with usable TLSA records keeps DANE (RFC 8461 section 2). A
//! `testing` policy changes nothing and logs what enforce would refuse.
//!
//! Owns: [`HostTls`], [`decide`], the texts of these failures. May call:
//! `dns` (the shard's resolver), `tls::dane`, `tls::sts`, `route` (types).
//! Never: sockets other than the resolver's and the policy fetch, protocol
//! decisions, queues.

use std::net::SocketAddr;

use super::route::{Plan, RouteFailure, Target};
use super::Outbound;
use crate::config::DeliveryOptions;
use crate::dns::{Answer, RecordKind, Tlsa};
use crate::tls::dane;
use crate::tls::sts::{Lookup, Mode, Policy};

/// How one target is to be secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTls {
    /// The queue's `tls`, `tls_verify`, `tls_ca` options.
    Default,
    /// TLS required; these usable TLSA records (never empty) decide.
    Dane(Vec<Tlsa>),
    /// TLS required, `tls_verify = host` against `mta_sts_ca`: an
    /// enforced MTA-STS policy.
    Sts,
}

impl HostTls {
    /// What a failure on such a host adds to its reply, for the T line.
    pub fn context(&self, target: &Target, domain: &str) -> String {
        match self {
            HostTls::Default => String::new(),
            HostTls::Dane(records) => format!(
                " (DANE: {} usable TLSA record{} at _{}._tcp.{}; no clear text)",
                records.len(),
                if records.len() == 1 { "" } else { "s" },
                target.port,
                target.host
            ),
            HostTls::Sts => format!(" (MTA-STS policy of {domain}: enforce; no clear text)"),
        }
    }
}

/// The targets to try, each with how it is secured, in the order given;
/// or why none may be tried now (always transient).
pub async fn decide(
    out: &Outbound,
    nameservers: &[SocketAddr],
    options: &DeliveryOptions,
    domain: &str,
    plan: &Plan,
    targets: Vec<Target>,
) -> Result<Vec<(Target, HostTls)>, RouteFailure> {
    let mut decided: Vec<(Target, HostTls)> = Vec::with_capacity(targets.len());
    let mut dane_refusal: Option<String> = None;
    for target in targets {
        let tls = if options.dane {
            match dane_of(out, nameservers, domain, plan, &target).await {
                Ok(tls) => tls,
                Err(why) => {
                    tracing::warn!("{domain}: {} ({}): {why}", target.host, target.address);
                    dane_refusal.get_or_insert(why);
                    continue;
                }
            }
        } else {
            HostTls::Default
        };
        decided.push((target, tls));
    }
    if decided.is_empty() {
        let why = dane_refusal.unwrap_or_else(|| "no target".into());
        return Err(transient(format!("451 4.7.5 {domain}: {why}")));
    }
    if options.mta_sts && matches!(plan, Plan::Mx { .. }) {
        decided = apply_sts(out, nameservers, options, domain, decided).await?;
    }
    Ok(decided)
}

fn transient(reply: String) -> RouteFailure {
    RouteFailure {
        permanent: false,
        reply,
    }
}

/// DANE for one target: `Dane` when its MX (or, off MX routing, its
/// address) answer and its TLSA answer are authenticated and usable,
/// `Default` when DANE does not apply, an error when a signed host's TLSA
/// lookup failed.
async fn dane_of(
    out: &Outbound,
    nameservers: &[SocketAddr],
    domain: &str,
    plan: &Plan,
    target: &Target,
) -> Result<HostTls, String> {
    if target.host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(HostTls::Default);
    }
    // Cache hits: `connect::resolve` asked these a moment ago. The MX
    // answer (MX routing) and the host's address answer must both be
    // authentic (RFC 7672 sections 2.2.1 and 2.2.2).
    let mx_secure = match plan {
        Plan::Mx { .. } => out
            .resolver
            .lookup_authenticated(nameservers, domain, RecordKind::Mx)
            .await
            .is_ok_and(|(_, ad)| ad),
        _ => true,
    };
    let kind = match target.address {
        std::net::IpAddr::V4(_) => RecordKind::A,
        std::net::IpAddr::V6(_) => RecordKind::Aaaa,
    };
    let address_secure = mx_secure
        && out
            .resolver
            .lookup_authenticated(nameservers, &target.host, kind)
            .await
            .is_ok_and(|(_, ad)| ad);
    if !address_secure {
        tracing::debug!(
            "{domain}: {}: MX or address answer not DNSSEC-validated: no DANE",
            target.host
        );
        return Ok(HostTls::Default);
    }
    let name = format!("_{}._tcp.{}", target.port, target.host);
    let answer = out
        .resolver
        .lookup_authenticated(nameservers, &name, RecordKind::Tlsa)
        .await;
    match answer {
        Ok((Answer::Tlsa(records), true)) => {
            let usable = dane::usable(&records);
            if usable.is_empty() {
                tracing::info!(
                    "{domain}: {name}: {} TLSA record(s), none usable for SMTP: no DANE",
                    records.len()
                );
                return Ok(HostTls::Default);
            }
            Ok(HostTls::Dane(usable))
        }
        Ok(_) => Ok(HostTls::Default),
        Err(e) => Err(format!(
            "TLSA lookup of {name} failed for a DNSSEC-signed MX host (DANE): {e}"
        )),
    }
}

/// MTA-STS on targets already decided for DANE.
async fn apply_sts(
    out: &Outbound,
    nameservers: &[SocketAddr],
    options: &DeliveryOptions,
    domain: &str,
    decided: Vec<(Target, HostTls)>,
) -> Result<Vec<(Target, HostTls)>, RouteFailure> {
    let lookup = out
        .sts
        .policy(
            &out.resolver,
            nameservers,
            domain,
            options.mta_sts_ca.as_ref(),
        )
        .await;
    let policy = match lookup {
        Lookup::None => return Ok(decided),
        Lookup::Unavailable(why) => {
            tracing::warn!("{domain}: MTA-STS policy announced but unavailable: {why}");
            return Ok(decided);
        }
        Lookup::Policy(policy) => policy,
    };
    match policy.mode {
        Mode::None => Ok(decided),
        Mode::Testing => {
            for (target, tls) in &decided {
                if *tls == HostTls::Default && !policy.matches(&target.host) {
                    tracing::warn!(
                        "{domain}: MTA-STS policy (testing) would refuse MX host {}: \
                         it matches no mx of the policy ({})",
                        target.host,
                        policy.mx.join(", ")
                    );
                }
            }
            Ok(decided)
        }
        Mode::Enforce => enforce(&policy, domain, decided),
    }
}

/// An `enforce` policy on targets decided for DANE: a DANE host stays as
/// it is (RFC 8461 section 2), a host matching the policy needs verified
/// TLS, any other is dropped; none left is a transient failure.
fn enforce(
    policy: &Policy,
    domain: &str,
    decided: Vec<(Target, HostTls)>,
) -> Result<Vec<(Target, HostTls)>, RouteFailure> {
    assert_eq!(policy.mode, Mode::Enforce);
    let before = decided.len();
    let kept: Vec<(Target, HostTls)> = decided
        .into_iter()
        .filter_map(|(target, tls)| match tls {
            HostTls::Dane(_) => Some((target, tls)),
            _ if policy.matches(&target.host) => Some((target, HostTls::Sts)),
            _ => None,
        })
        .collect();
    if kept.is_empty() {
        return Err(transient(format!(
            "451 4.7.5 {domain}: MTA-STS policy (enforce) matches no MX host \
             ({before} address{} refused; policy mx: {})",
            if before == 1 { "" } else { "es" },
            policy.mx.join(", ")
        )));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::sts::parse_policy;

    fn target(host: &str, ip: &str) -> Target {
        Target {
            host: host.into(),
            address: ip.parse().unwrap(),
            port: 25,
        }
    }

    #[test]
    fn enforce_keeps_matching_hosts_with_verified_tls_and_dane_hosts_as_they_are() {
        let policy =
            parse_policy("version: STSv1\nmode: enforce\nmx: *.d.test\nmax_age: 60\n").unwrap();
        let dane = HostTls::Dane(vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }]);
        let decided = vec![
            (target("mx1.d.test", "192.0.2.1"), HostTls::Default),
            (target("other.test", "192.0.2.2"), HostTls::Default),
            (target("dane.other.test", "192.0.2.3"), dane.clone()),
            (target("mx2.d.test", "192.0.2.4"), HostTls::Default),
        ];
        let kept = enforce(&policy, "d.test", decided).unwrap();
        let hosts: Vec<(&str, &HostTls)> = kept.iter().map(|(t, tls)| (&t.host[..], tls)).collect();
        assert_eq!(
            hosts,
            [
                ("mx1.d.test", &HostTls::Sts),
                ("dane.other.test", &dane),
                ("mx2.d.test", &HostTls::Sts)
            ]
        );
        let none = vec![(target("evil.test", "192.0.2.9"), HostTls::Default)];
        let failure = enforce(&policy, "d.test", none).unwrap_err();
        assert!(!failure.permanent, "transient, never a bounce");
        assert!(
            failure
                .reply
                .starts_with("451 4.7.5 d.test: MTA-STS policy (enforce) matches no MX host"),
            "{}",
            failure.reply
        );
        assert!(
            failure.reply.contains("policy mx: *.d.test"),
            "{}",
            failure.reply
        );
    }

    #[test]
    fn a_failure_on_a_dane_or_sts_host_says_which_in_the_t_line() {
        let t = target("mx.d.test", "192.0.2.1");
        assert_eq!(HostTls::Default.context(&t, "d.test"), "");
        let dane = HostTls::Dane(vec![
            Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0; 32],
            };
            2
        ]);
        assert_eq!(
            dane.context(&t, "d.test"),
            " (DANE: 2 usable TLSA records at _25._tcp.mx.d.test; no clear text)"
        );
        assert_eq!(
            HostTls::Sts.context(&t, "d.test"),
            " (MTA-STS policy of d.test: enforce; no clear text)"
        );
    }
}
