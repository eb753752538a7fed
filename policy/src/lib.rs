//! Policy phases of a reception, after Momentum's validation phases
//! (connect, ehlo, mailfrom, rcptto, data).
//!
//! Owns: the [`Policy`] trait (one method per phase, each returning a
//! [`Verdict`]), the built-in [`RelayControl`] policy, and [`Cidr`] for
//! netblock lists such as `relay_hosts`.
//! May call: nothing but std. A policy is pure: it sees what the session
//! saw and answers; it never does I/O, so an SMTP session that consults it
//! stays a pure state machine. Lua scriptlets will implement the same trait.
//! Never: the engine, the spool, the network.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What a phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next phase (Momentum's `VALIDATE_CONT`).
    Continue,
    /// Refuse with this SMTP reply; the session stays open.
    Reject(Rejection),
}

/// An SMTP reply a policy chose: basic code, enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 4xx or 5xx.
    pub code: u16,
    /// RFC 3463 enhanced status code such as `5.7.1`.
    pub enhanced: &'static str,
    pub text: String,
}

impl Rejection {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        assert!(
            (400..600).contains(&code),
            "a rejection is a 4xx or 5xx reply"
        );
        Rejection {
            code,
            enhanced,
            text: text.into(),
        }
    }
}

/// What a policy knows of the connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer_ip: IpAddr,
    /// The EHLO/HELO argument, empty before the client sent one.
    pub ehlo_domain: String,
}

/// One method per reception phase. Every method defaults to `Continue`, so
/// a policy implements only the phases it cares about.
pub trait Policy {
    fn validate_connect(&self, _conn: &Connection) -> Verdict {
        Verdict::Continue
    }
    fn validate_ehlo(&self, _conn: &Connection, _domain: &str) -> Verdict {
        Verdict::Continue
    }
    /// `mail_from` is the reverse path without angle brackets; empty for `<>`.
    fn validate_mailfrom(&self, _conn: &Connection, _mail_from: &str) -> Verdict {
        Verdict::Continue
    }
    /// `rcpt_to` is the forward path without angle brackets.
    fn validate_rcptto(&self, _conn: &Connection, _rcpt_to: &str) -> Verdict {
        Verdict::Continue
    }
}

/// The built-in relay control: a client whose address is in `relay_hosts`
/// may send to any domain; anyone else may send only to the local domains
/// (none by default), and is refused with `550 5.7.1` at RCPT TO, as
/// Momentum and Postfix do. Defaults refuse.
#[derive(Debug, Clone, Default)]
pub struct RelayControl {
    pub relay_hosts: Vec<Cidr>,
    /// Domains this host accepts mail for from anyone (lower case).
    pub local_domains: Vec<String>,
}

impl RelayControl {
    pub fn may_relay(&self, peer_ip: IpAddr) -> bool {
        self.relay_hosts.iter().any(|c| c.contains(peer_ip))
    }
}

impl Policy for RelayControl {
    fn validate_rcptto(&self, conn: &Connection, rcpt_to: &str) -> Verdict {
        if self.may_relay(conn.peer_ip) {
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

    fn conn(ip: &str) -> Connection {
        Connection {
            peer_ip: ip.parse().unwrap(),
            ehlo_domain: String::new(),
        }
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
        let p = RelayControl {
            relay_hosts: vec!["127.0.0.0/8".parse().unwrap()],
            local_domains: vec!["local.test".into()],
        };
        assert_eq!(
            p.validate_rcptto(&conn("127.0.0.1"), "a@example.com"),
            Verdict::Continue
        );
        let denied = p.validate_rcptto(&conn("192.0.2.1"), "a@example.com");
        assert!(matches!(denied, Verdict::Reject(ref r) if r.code == 550 && r.enhanced == "5.7.1"));
        assert_eq!(
            p.validate_rcptto(&conn("192.0.2.1"), "a@LOCAL.test"),
            Verdict::Continue
        );
    }

    #[test]
    fn relay_tricks_are_never_local() {
        let p = RelayControl {
            relay_hosts: vec![],
            local_domains: vec!["local.test".into()],
        };
        for trick in [
            "a%example.com@local.test",
            "@local.test:a@example.com",
            "\"a@example.com\"@local.test",
            "example.com!a@local.test",
            "@local.test",
        ] {
            assert!(
                matches!(
                    p.validate_rcptto(&conn("192.0.2.1"), trick),
                    Verdict::Reject(_)
                ),
                "{trick}"
            );
        }
    }
}
