//! What a server offers in its EHLO reply, as the client reads it.
//!
//! Owns: [`Capabilities`] and its parser. May call: `reply`. Never: I/O.

use crate::smtp::reply::Reply;

/// What the server offered in its EHLO reply (RFC 5321 4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `None`: SIZE not offered. `Some(0)`: offered without a usable limit.
    /// `Some(n)`: messages above n bytes are refused (RFC 1870).
    pub size_max: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub enhancedstatuscodes: bool,
    pub starttls: bool,
    pub chunking: bool,
    /// AUTH offered with PLAIN (RFC 4954; also the old `AUTH=` form).
    pub auth_plain: bool,
    /// AUTH offered with LOGIN.
    pub auth_login: bool,
    /// RFC 3461.
    pub dsn: bool,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply; the first line is the server's
    /// greeting and carries none. Unknown keywords are ignored.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let is = |name: &str| keyword.eq_ignore_ascii_case(name);
            if is("PIPELINING") {
                capabilities.pipelining = true;
            } else if is("SIZE") {
                let size_max = words.next().and_then(|value| value.parse::<u64>().ok());
                capabilities.size_max = Some(size_max.unwrap_or(0));
            } else if is("8BITMIME") {
                capabilities.eightbitmime = true;
            } else if is("SMTPUTF8") {
                capabilities.smtputf8 = true;
            } else if is("ENHANCEDSTATUSCODES") {
                capabilities.enhancedstatuscodes = true;
            } else if is("STARTTLS") {
                capabilities.starttls = true;
            } else if is("CHUNKING") {
                capabilities.chunking = true;
            } else if is("DSN") {
                capabilities.dsn = true;
            } else if is("AUTH")
                || keyword
                    .get(..5)
                    .is_some_and(|prefix| prefix.eq_ignore_ascii_case("AUTH="))
            {
                let first = keyword.get(5..).filter(|m| !m.is_empty());
                for mechanism in first.into_iter().chain(words) {
                    if mechanism.eq_ignore_ascii_case("PLAIN") {
                        capabilities.auth_plain = true;
                    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
                        capabilities.auth_login = true;
                    }
                }
            }
        }
        capabilities
    }
}
