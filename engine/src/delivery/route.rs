//! Where mail for a queue goes: a pure function of its options.
//!
//! Owns: [`route`] and [`Route`]. Today a queue has a route only through
//! `gateway` (MX routing, bindings' source addresses and `routes` come
//! with the delivery issue); a queue without one has no route, which is a
//! transient failure so nothing is lost.
//! May call: `config`. Never: I/O (a host name is resolved by `connect`,
//! off the shard's thread).

use std::net::IpAddr;

use crate::config::DeliveryOptions;

/// The transient reply for a queue with no route.
pub const NO_ROUTE_REPLY: &str =
    "451 4.4.0 no route: set a gateway for this domain (MX routing is not supported yet)";

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The address when `host` is an IP literal (no lookup needed).
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Where a queue's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub targets: Vec<Target>,
}

/// The route for a queue with `options`, or the transient reply that
/// says why it has none.
pub fn route(options: &DeliveryOptions) -> Result<Route, &'static str> {
    match &options.gateway {
        Some(g) => Ok(Route {
            targets: vec![Target {
                host: g.host.clone(),
                port: g.port,
            }],
        }),
        None => Err(NO_ROUTE_REPLY),
    }
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

    #[test]
    fn a_gateway_is_the_route_and_none_is_a_transient_failure() {
        let r = route(&options("gateway = \"127.0.0.1:2526\"\n")).unwrap();
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].literal(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(r.targets[0].port, 2526);
        let none = route(&options("")).unwrap_err();
        assert!(none.starts_with("451 4.4.0"));
    }
}
