//! The built-in relay control (`relay_hosts`) and the netblocks it is
//! written in.
//!
//! Owns: [`RelayControl`], [`Cidr`], [`local_delivery_domain`].
//! May call: std, the crate's verdict types.
//! Never: I/O; a per-message allocation beyond the reply it refuses with.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::{Answer, Check, Connection, Policy, Rejection, Validation, ValidationContext, Verdict};

/// The built-in relay control: a client whose address is in `relay_hosts`,
/// or that authenticated (SMTP AUTH), may send to any domain; anyone else may send only to the local domains
/// (none by default), and is refused with `550 5.7.1` at RCPT TO, as
/// Momentum and Postfix do. Defaults refuse.
///
/// One instance serves every listener of a shard: `relay_hosts` is a
/// listener option, so it is kept per listener and looked up by the
/// listener the connection came in on ([`Connection::listener`]).
#[derive(Debug, Clone, Default)]
pub struct RelayControl {
    /// `relay_hosts` of each listener. A connection on a listener not
    /// listed here may not relay.
    pub listeners: Vec<ListenerRelayHosts>,
    /// Domains this host accepts mail for from anyone (lower case).
    pub local_domains: Vec<String>,
}

/// The `relay_hosts` of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRelayHosts {
    /// The listener's configured `Listen` address.
    pub listener: SocketAddr,
    pub relay_hosts: Vec<Cidr>,
}

impl RelayControl {
    /// Whether the peer of `conn` is in the `relay_hosts` of the listener
    /// it came in on.
    pub fn may_relay(&self, conn: &Connection) -> bool {
        self.listeners
            .iter()
            .find(|l| l.listener == conn.listener)
            .is_some_and(|l| l.relay_hosts.iter().any(|c| c.contains(conn.peer_ip)))
    }

    fn validate_rcptto(&self, conn: &Connection, rcpt_to: &str) -> Verdict {
        // An authenticated client relays (SMTP AUTH), as in Momentum and
        // Postfix's permit_sasl_authenticated.
        if conn.auth_user.is_some() || self.may_relay(conn) {
            return Verdict::Continue;
        }
        if let Some(domain) = local_delivery_domain(rcpt_to) {
            if self
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            {
                return Verdict::Continue;
            }
        }
        Verdict::Reject(Rejection::new(550, "5.7.1", "relaying denied"))
    }
}

/// Decides at once: relay control needs no lookup.
impl Policy for RelayControl {
    fn validate<'a>(
        &'a self,
        validation: Validation<'a>,
        _vctx: &'a mut ValidationContext,
    ) -> Answer<'a> {
        match validation.check {
            Check::RcptTo { forward_path } => {
                Answer::Now(self.validate_rcptto(validation.connection, forward_path))
            }
            _ => Answer::CONTINUE,
        }
    }
}

/// The domain of a plain `local@domain` address, or `None` for anything a
/// relay trick could hide behind: source routes (`@a:b@c`), the percent
/// hack (`b%c@a`), a second `@`, a quoted local part or bang path, or an
/// empty side. Such addresses are never local: they are relayed or refused.
pub fn local_delivery_domain(address: &str) -> Option<&str> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    if address.starts_with('@') || local.contains(['@', '%', '!', '"', ':']) {
        return None;
    }
    Some(domain)
}

/// An IPv4 or IPv6 netblock, as written in `relay_hosts` ("127.0.0.0/8",
/// "::1", "10.1.2.3").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not an IP address or CIDR netblock", self.0)
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// The netblock's prefix length (32 or 128 for a single address).
    pub fn prefix_bits(&self) -> u8 {
        self.prefix_bits
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                u32::from(n) as u128,
                u32::from(a) as u128,
                self.prefix_bits,
                32,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_eq(u128::from(n), u128::from(a), self.prefix_bits, 128)
            }
            (IpAddr::V4(_), IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_eq(network: u128, address: u128, prefix_bits: u8, width_bits: u8) -> bool {
    assert!(prefix_bits <= width_bits);
    if prefix_bits == 0 {
        return true;
    }
    let shift = (width_bits - prefix_bits) as u32;
    (network >> shift) == (address >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_string());
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| error())?;
        let width_bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix {
            None => width_bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= width_bits)
                .ok_or_else(error)?,
        };
        Ok(Cidr {
            network,
            prefix_bits,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = "127.0.0.1:25";

    fn conn(ip: &str) -> Connection {
        Connection {
            peer_ip: ip.parse().unwrap(),
            listener: LISTENER.parse().unwrap(),
            ehlo_domain: String::new(),
            auth_user: None,
        }
    }

    fn relay_control(relay_hosts: &[&str], local_domains: &[&str]) -> RelayControl {
        RelayControl {
            listeners: vec![ListenerRelayHosts {
                listener: LISTENER.parse().unwrap(),
                relay_hosts: relay_hosts.iter().map(|c| c.parse().unwrap()).collect(),
            }],
            local_domains: local_domains.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// Runs the RCPT TO phase of `policy` for `rcpt_to` from `conn`.
    fn rcptto(policy: &RelayControl, conn: &Connection, rcpt_to: &str) -> Verdict {
        let mut vctx = ValidationContext::new();
        let validation = Validation {
            connection: conn,
            mail_from: "a@c.test",
            rcpts: &[],
            check: Check::RcptTo {
                forward_path: rcpt_to,
            },
        };
        let verdict = match policy.validate(validation, &mut vctx) {
            Answer::Now(verdict) => verdict,
            Answer::Later(_) => panic!("relay control answers at once"),
        };
        verdict
    }

    #[test]
    fn an_authenticated_client_relays_from_anywhere() {
        let policy = relay_control(&["10.0.0.0/8"], &[]);
        let mut stranger = conn("192.0.2.7");
        assert!(matches!(
            rcptto(&policy, &stranger, "bob@far.test"),
            Verdict::Reject(_)
        ));
        stranger.auth_user = Some("alice".into());
        assert_eq!(
            rcptto(&policy, &stranger, "bob@far.test"),
            Verdict::Continue
        );
    }

    #[test]
    fn cidr_matches_its_netblock_only() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn cidr_rejects_bad_text() {
        for bad in ["", "127.0.0.0/33", "foo", "10.0.0.0/", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn relay_hosts_may_relay_others_get_550_5_7_1() {
        let p = relay_control(&["127.0.0.0/8"], &["local.test"]);
        assert_eq!(
            rcptto(&p, &conn("127.0.0.1"), "a@example.com"),
            Verdict::Continue
        );
        let denied = rcptto(&p, &conn("192.0.2.1"), "a@example.com");
        assert!(matches!(denied, Verdict::Reject(ref r) if r.code == 550 && r.enhanced == "5.7.1"));
        assert_eq!(
            rcptto(&p, &conn("192.0.2.1"), "a@LOCAL.test"),
            Verdict::Continue
        );
    }

    #[test]
    fn relay_hosts_belong_to_their_listener() {
        let p = relay_control(&["127.0.0.0/8"], &[]);
        let mut other = conn("127.0.0.1");
        other.listener = "127.0.0.1:587".parse().unwrap();
        assert!(p.may_relay(&conn("127.0.0.1")));
        assert!(!p.may_relay(&other), "another listener has no relay_hosts");
        assert!(matches!(
            rcptto(&p, &other, "a@example.com"),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn relay_tricks_are_never_local() {
        let p = relay_control(&[], &["local.test"]);
        for trick in [
            "a%example.com@local.test",
            "@local.test:a@example.com",
            "\"a@example.com\"@local.test",
            "example.com!a@local.test",
            "@local.test",
        ] {
            assert!(
                matches!(rcptto(&p, &conn("192.0.2.1"), trick), Verdict::Reject(_)),
                "{trick}"
            );
        }
    }

    #[test]
    fn other_phases_continue() {
        let p = relay_control(&[], &[]);
        let c = conn("192.0.2.1");
        let mut vctx = ValidationContext::new();
        for check in [
            Check::Connect,
            Check::Ehlo {
                domain: "c.test",
                esmtp: true,
            },
            Check::MailFrom {
                reverse_path: "a@c.test",
            },
            Check::Data {
                body: b"hi\r\n",
                streamed: false,
            },
        ] {
            let validation = Validation {
                connection: &c,
                mail_from: "",
                rcpts: &[],
                check,
            };
            assert!(matches!(
                p.validate(validation, &mut vctx),
                Answer::Now(Verdict::Continue)
            ));
        }
    }
}
