//! The ESMTP extensions a listener offers, and the EHLO reply that lists
//! them. A listener's configuration builds the set (SIZE carries its
//! `max_message_size`); the server session advertises and enforces it
//! (a MAIL parameter of an extension not offered gets `555`, and without
//! ENHANCEDSTATUSCODES replies carry no enhanced code, RFC 2034 section 3).
//!
//! Owns: [`Capabilities`] and the order of the EHLO lines.
//! May call: nothing.
//! Never: I/O; deciding what a command does (that is `server`).

use std::io::Write as _;
use std::net::IpAddr;

/// SASL mechanisms offered with AUTH; none until AUTH is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMechanisms {
    pub plain: bool,
    pub login: bool,
}

impl AuthMechanisms {
    pub fn is_empty(&self) -> bool {
        !self.plain && !self.login
    }
}

/// ESMTP extensions offered in the EHLO reply. The default is what the
/// session implements today: PIPELINING, SIZE, 8BITMIME and
/// ENHANCEDSTATUSCODES. The others are here so their issues can switch
/// them on once the session speaks them; [`Capabilities::check_supported`]
/// refuses them until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870; advertised with the session's message size limit.
    pub size: bool,
    /// RFC 6152 (`BODY=`).
    pub eight_bit_mime: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 3207: the listener has a certificate (`tls_certificate`,
    /// `tls_key`); the session stops offering it once TLS is on.
    pub starttls: bool,
    /// RFC 4954.
    pub auth: AuthMechanisms,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030 (BDAT).
    pub chunking: bool,
    /// RFC 3461.
    pub dsn: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            pipelining: true,
            size: true,
            eight_bit_mime: true,
            enhanced_status_codes: true,
            starttls: false,
            auth: AuthMechanisms::default(),
            smtputf8: false,
            chunking: false,
            dsn: false,
        }
    }
}

impl Capabilities {
    /// Appends the EHLO reply: the greeting line, then one line per
    /// extension, the last with `250 `. `size_bytes` is the SIZE value.
    /// No enhanced codes here (RFC 2034 section 3).
    pub fn write_ehlo_reply(
        &self,
        out: &mut Vec<u8>,
        hostname: &str,
        peer: IpAddr,
        size_bytes: u64,
    ) {
        let auth = self.auth;
        let keywords: [(bool, &str); 9] = [
            (self.pipelining, "PIPELINING"),
            (self.size, "SIZE"),
            (self.eight_bit_mime, "8BITMIME"),
            (self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (self.starttls, "STARTTLS"),
            (!auth.is_empty(), "AUTH"),
            (self.smtputf8, "SMTPUTF8"),
            (self.chunking, "CHUNKING"),
            (self.dsn, "DSN"),
        ];
        let offered = keywords.iter().filter(|(on, _)| *on).count();
        let more = if offered == 0 { ' ' } else { '-' };
        let _ = write!(out, "250{more}{hostname} says EHLO to {peer}\r\n");
        let offered_keywords = keywords.iter().filter(|(on, _)| *on).map(|(_, k)| *k);
        for (index, keyword) in offered_keywords.enumerate() {
            let more = if index + 1 == offered { ' ' } else { '-' };
            let _ = write!(out, "250{more}{keyword}");
            match keyword {
                "SIZE" => {
                    let _ = write!(out, " {size_bytes}");
                }
                "AUTH" => {
                    if auth.plain {
                        out.extend_from_slice(b" PLAIN");
                    }
                    if auth.login {
                        out.extend_from_slice(b" LOGIN");
                    }
                }
                _ => {}
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(capabilities: Capabilities) -> String {
        let mut out = b"previous reply\r\n".to_vec();
        capabilities.write_ehlo_reply(&mut out, "mx.test", "192.0.2.1".parse().unwrap(), 1000);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_default_set_gives_todays_ehlo_reply() {
        assert_eq!(
            ehlo(Capabilities::default()),
            "previous reply\r\n250-mx.test says EHLO to 192.0.2.1\r\n250-PIPELINING\r\n\
             250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
    }

    #[test]
    fn every_extension_has_its_line_and_an_empty_set_only_the_greeting() {
        let all = Capabilities {
            starttls: true,
            auth: AuthMechanisms {
                plain: true,
                login: true,
            },
            smtputf8: true,
            chunking: true,
            dsn: true,
            ..Capabilities::default()
        };
        assert_eq!(
            ehlo(all),
            "previous reply\r\n250-mx.test says EHLO to 192.0.2.1\r\n250-PIPELINING\r\n\
             250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n\
             250-AUTH PLAIN LOGIN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n"
        );
        let none = Capabilities {
            pipelining: false,
            size: false,
            eight_bit_mime: false,
            enhanced_status_codes: false,
            ..Capabilities::default()
        };
        assert_eq!(
            ehlo(none),
            "previous reply\r\n250 mx.test says EHLO to 192.0.2.1\r\n"
        );
    }
}
