//! Finding and opening an outbound connection: the DNS lookups a route
//! needs (through the shard's [`Resolver`], never blocking the shard),
//! handed to the pure `route` functions, and a TCP connect bounded by
//! `connect_timeout`, from the binding's `bind_address` when it has one.
//!
//! Owns: [`resolve`] and [`connect`]. May call: `dns`, `route`, `source`,
//! glommio's sockets. Never: routing decisions (`route` makes them),
//! protocol decisions, queues.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ecelerity_policy::Cidr;
use glommio::net::TcpStream;

use super::route::{self, HostLookup, Plan, RouteFailure, Target};
use super::source::{self, SourceError};
use crate::dns::{Answer, RecordKind, Resolver};

/// Most MX hosts (or route hosts) whose addresses are looked up for one
/// domain.
pub const MX_HOSTS_MAX: usize = 10;

/// The addresses to try for `domain` under `plan`, in order. `spread`
/// rotates MX hosts (and route items) of equal preference.
pub async fn resolve(
    resolver: &Resolver,
    nameservers: &[SocketAddr],
    prohibited: &[Cidr],
    domain: &str,
    plan: &Plan,
    spread: u64,
) -> Result<Vec<Target>, RouteFailure> {
    // A U-label domain (SMTPUTF8) is looked up by its A-labels.
    let a_labels = route::a_labels(domain)?;
    let domain: &str = &a_labels;
    let (mut hosts, implicit) = match plan {
        Plan::Gateway { host, port } => (vec![(host.clone(), *port)], false),
        Plan::Mx { port } => {
            let answer = resolver
                .lookup(nameservers, domain, RecordKind::Mx)
                .await
                .map_err(|e| RouteFailure::lookup("MX of", domain, &e))?;
            let implicit = !matches!(answer, Answer::Mx(_));
            let hosts = route::mx_hosts(domain, &answer, spread)?;
            (hosts.into_iter().map(|h| (h, *port)).collect(), implicit)
        }
        Plan::Routes { routes, port } => {
            let mut answers = Vec::with_capacity(routes.len());
            for item in routes {
                let answer = match route::mx_name_of(item, domain) {
                    Some(name) => Some(resolver.lookup(nameservers, name, RecordKind::Mx).await),
                    None => None,
                };
                answers.push(answer);
            }
            let hosts = route::route_hosts(domain, routes, &answers, *port, spread)?;
            // A route list is the operator's: it never bounces.
            (hosts, false)
        }
    };
    hosts.truncate(MX_HOSTS_MAX);
    let mut lookups = Vec::with_capacity(hosts.len());
    for (host, port) in hosts {
        let answer = resolver.addresses(nameservers, &host).await;
        lookups.push(HostLookup { host, port, answer });
    }
    // A gateway that does not resolve is the operator's to fix: never a
    // bounce.
    route::targets(domain, &lookups, implicit, prohibited)
}

/// Where an outbound connection comes from: `address` is the binding's
/// `bind_address` (`None`: the kernel picks).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub binding: &'a str,
    pub address: Option<IpAddr>,
}

/// Why a connection was not made: the transient reply that says so, and
/// whether the destination is to blame (a refused or timed-out connect) or
/// our side is (a `bind_address` that cannot be bound), which must not
/// mark the host down for every domain.
#[derive(Debug)]
pub struct ConnectFailure {
    pub reply: String,
    pub host_at_fault: bool,
}

/// Connects to `target` from `from` within `timeout`.
pub async fn connect(
    target: &Target,
    from: Source<'_>,
    timeout: Duration,
) -> Result<TcpStream, ConnectFailure> {
    let address = SocketAddr::new(target.address, target.port);
    let timeout = timeout.max(Duration::from_millis(1));
    let connected = match from.address {
        None => TcpStream::connect_timeout(address, timeout)
            .await
            .map_err(|e| SourceError::Connect(e.into())),
        Some(source) => source::connect_from(source, address, timeout).await,
    };
    match connected {
        Ok(stream) => {
            // glommio leaves Nagle on; SMTP's small commands need it off.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(SourceError::Bind(e)) => Err(ConnectFailure {
            reply: format!(
                "451 4.4.1 cannot bind source address {} of binding {} (bind_address) \
                 to connect to {} ({address}): {e}",
                from.address.expect("only a bound source fails to bind"),
                from.binding,
                target.host
            ),
            host_at_fault: false,
        }),
        Err(SourceError::Connect(e)) => Err(ConnectFailure {
            reply: format!(
                "451 4.4.1 connection to {} ({address}) failed: {e}",
                target.host
            ),
            host_at_fault: true,
        }),
    }
}
