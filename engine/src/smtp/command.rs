//! The SMTP command-line parser (RFC 5321 section 4.1, with the ESMTP
//! parameters of RFC 1870 SIZE and RFC 6152 8BITMIME).
//!
//! Owns: turning one command line (CRLF already stripped) into a
//! [`Command`] that borrows from the line, the path and mailbox grammar
//! (source routes, quoted local parts, address literals) with the RFC 5321
//! length limits, and [`CommandError`], which names the reply each error
//! earns.
//! May call: std only.
//! Never: session state, policy, I/O. The parser allocates nothing; the
//! session copies out only what it keeps.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::params::{parse_envid, parse_notify, parse_orcpt, parse_ret, Notify, Ret};

/// Longest local part, RFC 5321 section 4.5.3.1.1.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// Longest domain, RFC 5321 section 4.5.3.1.2.
pub const DOMAIN_BYTES_MAX: usize = 255;
/// Longest domain label (RFC 1035).
pub const LABEL_BYTES_MAX: usize = 63;
/// Longest reverse or forward path, angle brackets included, RFC 5321
/// section 4.5.3.1.3.
pub const PATH_BYTES_MAX: usize = 256;
/// Most digits a SIZE value may have (RFC 1870 `size-value ::= 1*20DIGIT`).
pub const SIZE_DIGITS_MAX: usize = 20;

/// One parsed command. Text fields borrow from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo {
        domain: &'a str,
    },
    Helo {
        domain: &'a str,
    },
    /// `reverse_path` has no angle brackets and no source route; empty for
    /// the null sender `<>`.
    Mail {
        reverse_path: &'a str,
        params: MailParams<'a>,
    },
    /// `forward_path` has no angle brackets and no source route. The bare
    /// reserved mailbox comes back as [`Command::RcptPostmaster`] instead.
    Rcpt {
        forward_path: &'a str,
        params: RcptDsn<'a>,
    },
    /// `RCPT TO:<postmaster>` (any case): RFC 5321 section 4.5.1 says it
    /// must be accepted without a domain.
    RcptPostmaster,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// RFC 3207; no argument.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954); the mechanism as
    /// written (the session matches it), the response still base64.
    Auth {
        mechanism: &'a str,
        initial_response: Option<&'a str>,
    },
    /// A verb we know but do not offer (EXPN, TURN, ETRN,
    /// SEND, SOML, SAML): `502 5.5.1`.
    NotImplemented,
    /// `BDAT chunk-size [LAST]` (RFC 3030): `size` octets follow the line.
    Bdat {
        size: u64,
        last: bool,
    },
}

/// The MAIL FROM parameters we advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// RFC 1870 `SIZE=`; a value too large for a u64 saturates (it is over
    /// any limit anyway).
    pub size_bytes: Option<u64>,
    /// RFC 6152 `BODY=`.
    pub body: Option<BodyType>,
    /// RFC 4954 `AUTH=` was given; its value is not used (we trust no
    /// identity a client asserts for a message).
    pub auth: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
    /// RFC 3461 `RET=`.
    pub ret: Option<Ret>,
    /// RFC 3461 `ENVID=`, as written (valid xtext; `params::parse_envid`
    /// decodes it).
    pub envid: Option<&'a str>,
}

/// The RCPT TO parameters (RFC 3461 DSN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptDsn<'a> {
    pub notify: Option<Notify>,
    /// `ORCPT=`, as written (valid; `params::parse_orcpt` decodes it).
    pub orcpt: Option<&'a str>,
}

impl RcptDsn<'_> {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// Why a command line was refused; [`CommandError::reply`] gives the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("Error: command not recognized")]
    Unrecognized,
    #[error("Syntax: {usage}")]
    Syntax { usage: &'static str },
    #[error("Bad sender address syntax")]
    BadSender,
    #[error("Bad recipient address syntax")]
    BadRecipient,
    #[error("Error: unsupported parameter")]
    UnknownParameter,
    #[error("Error: bad parameter syntax")]
    BadParameter,
}

impl CommandError {
    /// Basic and RFC 3463 enhanced code. Address syntax gets the address
    /// codes (5.1.7 sender, 5.1.3 recipient) as Postfix does, so a client
    /// can tell a bad address from a malformed command (5.5.4).
    pub fn reply(&self) -> (u16, &'static str) {
        match self {
            CommandError::Unrecognized => (500, "5.5.1"),
            CommandError::Syntax { .. } => (501, "5.5.4"),
            CommandError::BadSender => (501, "5.1.7"),
            CommandError::BadRecipient => (501, "5.1.3"),
            CommandError::UnknownParameter => (555, "5.5.4"),
            CommandError::BadParameter => (501, "5.5.4"),
        }
    }
}

const USAGE_EHLO: &str = "EHLO hostname";
const USAGE_HELO: &str = "HELO hostname";
const USAGE_MAIL: &str = "MAIL FROM:<address>";
const USAGE_RCPT: &str = "RCPT TO:<address>";
const USAGE_DATA: &str = "DATA";
const USAGE_RSET: &str = "RSET";
const USAGE_VRFY: &str = "VRFY address";
const USAGE_AUTH: &str = "AUTH mechanism [initial-response]";
const USAGE_BDAT: &str = "BDAT count [LAST]";

/// Parse one command line, without its CRLF. Verbs are case-insensitive;
/// trailing spaces and tabs are ignored.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let line = trim_trailing_blanks(line);
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    let args_bytes = if verb_end < line.len() {
        &line[verb_end + 1..]
    } else {
        &[][..]
    };
    let Some(kind) = Verb::parse(verb) else {
        return Err(CommandError::Unrecognized);
    };
    let usage = kind.usage();
    // Arguments are ASCII, but for MAIL and RCPT, whose paths may be
    // UTF-8 (RFC 6531: the session refuses them without SMTPUTF8);
    // anything else is a syntax error, never a panic.
    let utf8_paths = matches!(kind, Verb::Mail | Verb::Rcpt);
    let args = match std::str::from_utf8(args_bytes) {
        Ok(text) if text.is_ascii() || utf8_paths => text,
        _ => return Err(CommandError::Syntax { usage }),
    };
    match kind {
        Verb::Ehlo => Ok(Command::Ehlo {
            domain: parse_helo_domain(args, usage)?,
        }),
        Verb::Helo => Ok(Command::Helo {
            domain: parse_helo_domain(args, usage)?,
        }),
        Verb::Mail => parse_mail(args),
        Verb::Rcpt => parse_rcpt(args),
        Verb::Data => no_args(args, usage, Command::Data),
        Verb::Rset => no_args(args, usage, Command::Rset),
        // RFC 5321 lets NOOP and HELP carry a string; QUIT with junk after
        // it still means the client is leaving.
        Verb::Noop => Ok(Command::Noop),
        Verb::Help => Ok(Command::Help),
        Verb::Quit => Ok(Command::Quit),
        Verb::Vrfy => {
            if args.trim().is_empty() {
                Err(CommandError::Syntax { usage })
            } else {
                Ok(Command::Vrfy)
            }
        }
        Verb::StartTls => no_args(args, usage, Command::StartTls),
        Verb::Auth => parse_auth(args, usage),
        Verb::NotImplemented => Ok(Command::NotImplemented),
        Verb::Bdat => parse_bdat(args, usage),
    }
}

/// `BDAT chunk-size [LAST]` (RFC 3030 section 2): the size is 1 to
/// SIZE_DIGITS_MAX digits (a value beyond a u64 is a syntax error: the
/// chunk could never be read), `LAST` in any case.
fn parse_bdat(args: &str, usage: &'static str) -> Result<Command<'static>, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = match words.next() {
        Some(digits)
            if !digits.is_empty()
                && digits.len() <= SIZE_DIGITS_MAX
                && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            digits
                .parse::<u64>()
                .map_err(|_| CommandError::Syntax { usage })?
        }
        _ => return Err(CommandError::Syntax { usage }),
    };
    match (words.next(), words.next()) {
        (None, None) => Ok(Command::Bdat { size, last: false }),
        (Some(marker), None) if marker.eq_ignore_ascii_case("LAST") => {
            Ok(Command::Bdat { size, last: true })
        }
        _ => Err(CommandError::Syntax { usage }),
    }
}

/// `AUTH mechanism [initial-response]`: exactly one or two words.
fn parse_auth<'a>(args: &'a str, usage: &'static str) -> Result<Command<'a>, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    match (words.next(), words.next(), words.next()) {
        (Some(mechanism), initial_response, None) => Ok(Command::Auth {
            mechanism,
            initial_response,
        }),
        _ => Err(CommandError::Syntax { usage }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth,
    NotImplemented,
    Bdat,
}

impl Verb {
    fn parse(verb: &[u8]) -> Option<Verb> {
        const VERBS: [(&[u8], Verb); 19] = [
            (b"EHLO", Verb::Ehlo),
            (b"HELO", Verb::Helo),
            (b"MAIL", Verb::Mail),
            (b"RCPT", Verb::Rcpt),
            (b"DATA", Verb::Data),
            (b"RSET", Verb::Rset),
            (b"NOOP", Verb::Noop),
            (b"QUIT", Verb::Quit),
            (b"VRFY", Verb::Vrfy),
            (b"HELP", Verb::Help),
            (b"EXPN", Verb::NotImplemented),
            (b"TURN", Verb::NotImplemented),
            (b"ETRN", Verb::NotImplemented),
            (b"BDAT", Verb::Bdat),
            (b"AUTH", Verb::Auth),
            (b"STARTTLS", Verb::StartTls),
            (b"SEND", Verb::NotImplemented),
            (b"SOML", Verb::NotImplemented),
            (b"SAML", Verb::NotImplemented),
        ];
        VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(verb))
            .map(|(_, v)| *v)
    }

    fn usage(self) -> &'static str {
        match self {
            Verb::Ehlo => USAGE_EHLO,
            Verb::Helo => USAGE_HELO,
            Verb::Mail => USAGE_MAIL,
            Verb::Rcpt => USAGE_RCPT,
            Verb::Data => USAGE_DATA,
            Verb::Rset => USAGE_RSET,
            Verb::Vrfy => USAGE_VRFY,
            Verb::Auth => USAGE_AUTH,
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Help => "HELP",
            Verb::StartTls => "STARTTLS",
            Verb::NotImplemented => "command",
            Verb::Bdat => USAGE_BDAT,
        }
    }
}

fn trim_trailing_blanks(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    &line[..end]
}

fn no_args<'a>(
    args: &str,
    usage: &'static str,
    command: Command<'a>,
) -> Result<Command<'a>, CommandError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax { usage })
    }
}

/// The EHLO/HELO argument: one token of printable ASCII, at most
/// DOMAIN_BYTES_MAX long. We accept any such token (a domain, an address
/// literal, or the junk many clients send) because refusing a client for a
/// sloppy greeting loses mail and buys nothing; the token lands in the
/// Received header, so controls and spaces are refused.
fn parse_helo_domain<'a>(args: &'a str, usage: &'static str) -> Result<&'a str, CommandError> {
    let domain = args.trim_start_matches(' ');
    let printable = domain.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if domain.is_empty() || !printable || domain.len() > DOMAIN_BYTES_MAX {
        return Err(CommandError::Syntax { usage });
    }
    Ok(domain)
}

/// Strip a case-insensitive keyword such as `FROM:`, then any spaces
/// (`MAIL FROM: <a@b>` is common and harmless, so we allow it as Postfix
/// does).
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(args[keyword.len()..].trim_start_matches(' '))
}

fn parse_mail(args: &str) -> Result<Command<'_>, CommandError> {
    let usage = USAGE_MAIL;
    let rest = strip_keyword(args, "FROM:").ok_or(CommandError::Syntax { usage })?;
    if !rest.starts_with('<') {
        return Err(CommandError::Syntax { usage });
    }
    let (reverse_path, rest) = match rest.strip_prefix("<>") {
        Some(rest) => ("", rest),
        None => parse_path(rest).map_err(|_| CommandError::BadSender)?,
    };
    let params = parse_mail_params(separated_params(rest, usage)?)?;
    Ok(Command::Mail {
        reverse_path,
        params,
    })
}

fn parse_rcpt(args: &str) -> Result<Command<'_>, CommandError> {
    let usage = USAGE_RCPT;
    let rest = strip_keyword(args, "TO:").ok_or(CommandError::Syntax { usage })?;
    if !rest.starts_with('<') {
        return Err(CommandError::Syntax { usage });
    }
    if let Some(tail) = rest.get(..12) {
        if tail.eq_ignore_ascii_case("<postmaster>") {
            reject_any_params(separated_params(&rest[12..], usage)?)?;
            return Ok(Command::RcptPostmaster);
        }
    }
    let (forward_path, rest) = parse_path(rest).map_err(|_| CommandError::BadRecipient)?;
    let params = parse_rcpt_params(separated_params(rest, usage)?)?;
    Ok(Command::Rcpt {
        forward_path,
        params,
    })
}

/// RCPT's RFC 3461 parameters, each at most once.
fn parse_rcpt_params(text: &str) -> Result<RcptDsn<'_>, CommandError> {
    let mut params = RcptDsn::default();
    for param in esmtp_params(text) {
        let (keyword, value) = param?;
        let value = value.ok_or(CommandError::BadParameter);
        if keyword.eq_ignore_ascii_case("NOTIFY") {
            if params.notify.is_some() {
                return Err(CommandError::BadParameter);
            }
            let notify = parse_notify(value?).map_err(|_| CommandError::BadParameter)?;
            params.notify = Some(notify);
        } else if keyword.eq_ignore_ascii_case("ORCPT") {
            let value = value?;
            if params.orcpt.is_some() || parse_orcpt(value).is_err() {
                return Err(CommandError::BadParameter);
            }
            params.orcpt = Some(value);
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    Ok(params)
}

/// What follows a path must be empty or start with a space.
fn separated_params<'a>(rest: &'a str, usage: &'static str) -> Result<&'a str, CommandError> {
    if rest.is_empty() {
        return Ok(rest);
    }
    match rest.strip_prefix(' ') {
        Some(params) => Ok(params.trim_start_matches(' ')),
        None => Err(CommandError::Syntax { usage }),
    }
}

/// Split `keyword[=value]` parameters separated by spaces, checking the
/// RFC 5321 `esmtp-param` grammar.
fn esmtp_params(text: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), CommandError>> {
    text.split(' ').filter(|p| !p.is_empty()).map(|param| {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126): printable, no '='.
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
        });
        if keyword_ok && value_ok {
            Ok((keyword, value))
        } else {
            Err(CommandError::BadParameter)
        }
    })
}

fn parse_mail_params(text: &str) -> Result<MailParams<'_>, CommandError> {
    let mut params = MailParams::default();
    for param in esmtp_params(text) {
        let (keyword, value) = param?;
        if keyword.eq_ignore_ascii_case("SIZE") {
            let value = value.ok_or(CommandError::BadParameter)?;
            if params.size_bytes.is_some() {
                return Err(CommandError::BadParameter);
            }
            params.size_bytes = Some(parse_size(value)?);
        } else if keyword.eq_ignore_ascii_case("BODY") {
            let value = value.ok_or(CommandError::BadParameter)?;
            if params.body.is_some() {
                return Err(CommandError::BadParameter);
            }
            params.body = Some(if value.eq_ignore_ascii_case("7BIT") {
                BodyType::SevenBit
            } else if value.eq_ignore_ascii_case("8BITMIME") {
                BodyType::EightBitMime
            } else {
                return Err(CommandError::UnknownParameter);
            });
        } else if keyword.eq_ignore_ascii_case("AUTH") {
            if value.is_none() || params.auth {
                return Err(CommandError::BadParameter);
            }
            params.auth = true;
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() || params.smtputf8 {
                return Err(CommandError::BadParameter);
            }
            params.smtputf8 = true;
        } else if keyword.eq_ignore_ascii_case("RET") {
            let value = value.ok_or(CommandError::BadParameter)?;
            if params.ret.is_some() {
                return Err(CommandError::BadParameter);
            }
            params.ret = Some(parse_ret(value).map_err(|_| CommandError::BadParameter)?);
        } else if keyword.eq_ignore_ascii_case("ENVID") {
            let value = value.ok_or(CommandError::BadParameter)?;
            if params.envid.is_some() || parse_envid(value).is_err() {
                return Err(CommandError::BadParameter);
            }
            params.envid = Some(value);
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    Ok(params)
}

fn reject_any_params(text: &str) -> Result<(), CommandError> {
    match esmtp_params(text).next() {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err(CommandError::UnknownParameter),
    }
}

fn parse_size(value: &str) -> Result<u64, CommandError> {
    if value.is_empty()
        || value.len() > SIZE_DIGITS_MAX
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(CommandError::BadParameter);
    }
    // Twenty digits may exceed u64::MAX; such a size is over every limit.
    Ok(value.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path does not start with '<'")]
    NoOpeningBracket,
    #[error("path does not end with '>'")]
    NoClosingBracket,
    #[error("path longer than {PATH_BYTES_MAX} bytes")]
    TooLong,
    #[error("bad source route")]
    BadRoute,
    #[error("bad local part")]
    BadLocalPart,
    #[error("bad domain")]
    BadDomain,
}

/// Parse `<[@route,@route:]local@domain>` at the start of `text`. Returns
/// the mailbox (route dropped, as RFC 5321 section 4.1.1.3 asks servers to
/// do) and the text after `>`. The null path `<>` is not a mailbox; MAIL
/// handles it before calling this.
pub fn parse_path(text: &str) -> Result<(&str, &str), PathError> {
    let inner = text.strip_prefix('<').ok_or(PathError::NoOpeningBracket)?;
    let mut mailbox_start = 0;
    if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(PathError::BadRoute)?;
        for hop in inner[..colon].split(',') {
            let domain = hop.strip_prefix('@').ok_or(PathError::BadRoute)?;
            check_domain(domain).map_err(|_| PathError::BadRoute)?;
        }
        mailbox_start = colon + 1;
    }
    let mailbox_text = &inner[mailbox_start..];
    let local_len = local_part_len(mailbox_text)?;
    let after_local = &mailbox_text[local_len..];
    let domain_text = after_local.strip_prefix('@').ok_or(PathError::BadDomain)?;
    let domain_len = domain_text.find('>').ok_or(PathError::NoClosingBracket)?;
    check_domain(&domain_text[..domain_len])?;
    let mailbox_len = local_len + 1 + domain_len;
    let mailbox = &mailbox_text[..mailbox_len];
    // '<' + route + mailbox + '>'.
    let path_len = 1 + mailbox_start + mailbox_len + 1;
    if path_len > PATH_BYTES_MAX {
        return Err(PathError::TooLong);
    }
    Ok((mailbox, &text[path_len..]))
}

/// Length of the local part (dot-string or quoted-string) at the start of
/// `text`.
fn local_part_len(text: &str) -> Result<usize, PathError> {
    let bytes = text.as_bytes();
    let len = if bytes.first() == Some(&b'"') {
        let mut at = 1;
        loop {
            match bytes.get(at) {
                None => return Err(PathError::BadLocalPart),
                Some(b'"') => break at + 1,
                Some(b'\\') => match bytes.get(at + 1) {
                    Some(b) if (32..=126).contains(b) => at += 2,
                    _ => return Err(PathError::BadLocalPart),
                },
                Some(b) if (32..=126).contains(b) || *b >= 0x80 => at += 1,
                Some(_) => return Err(PathError::BadLocalPart),
            }
        }
    } else {
        // RFC 6531 section 3.3: atext also takes UTF8-non-ascii (the
        // text is a str, so such bytes come as whole characters).
        let len = bytes
            .iter()
            .position(|&b| !(is_atext(b) || b == b'.' || b >= 0x80))
            .unwrap_or(bytes.len());
        let dot_string = &text[..len];
        if dot_string.is_empty() || dot_string.split('.').any(|atom| atom.is_empty()) {
            return Err(PathError::BadLocalPart);
        }
        len
    };
    if len > LOCAL_PART_BYTES_MAX {
        return Err(PathError::BadLocalPart);
    }
    Ok(len)
}

/// RFC 5322 atext.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// A domain (`label.label`) or an address literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`, `[tag:content]`).
pub fn check_domain(domain: &str) -> Result<(), PathError> {
    if domain.is_empty() || domain.len() > DOMAIN_BYTES_MAX {
        return Err(PathError::BadDomain);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal.strip_suffix(']').ok_or(PathError::BadDomain)?;
        return check_address_literal(literal);
    }
    if !domain.is_ascii() {
        // RFC 6531 section 3.3: a domain of U-labels, valid when its
        // A-label form (IDNA 2008, the form DNS sees) is.
        let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| PathError::BadDomain)?;
        return check_domain(&ascii);
    }
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= LABEL_BYTES_MAX
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !ok {
            return Err(PathError::BadDomain);
        }
    }
    Ok(())
}

fn check_address_literal(literal: &str) -> Result<(), PathError> {
    if literal.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if literal
        .get(..5)
        .is_some_and(|tag| tag.eq_ignore_ascii_case("IPv6:"))
    {
        return literal[5..]
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| PathError::BadDomain);
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent.
    let (tag, content) = literal.split_once(':').ok_or(PathError::BadDomain)?;
    let tag_ok = !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-');
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err(PathError::BadDomain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_takes_a_mechanism_and_an_optional_initial_response() {
        assert_eq!(
            parse_command(b"auth plain AGFsaWNlAHB3"),
            Ok(Command::Auth {
                mechanism: "plain",
                initial_response: Some("AGFsaWNlAHB3"),
            })
        );
        assert_eq!(
            parse_command(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN",
                initial_response: None,
            })
        );
        for bad in [&b"AUTH"[..], b"AUTH PLAIN a b", b"AUTH   "] {
            assert_eq!(
                parse_command(bad),
                Err(CommandError::Syntax { usage: USAGE_AUTH }),
                "{bad:?}"
            );
        }
    }

    fn parse(line: &str) -> Result<Command<'_>, CommandError> {
        parse_command(line.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive_and_trailing_blanks_are_ignored() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo {
                domain: "client.example"
            })
        );
        assert_eq!(
            parse("HeLo client.example \t"),
            Ok(Command::Helo {
                domain: "client.example"
            })
        );
        assert_eq!(parse("rset"), Ok(Command::Rset));
        assert_eq!(parse("Data "), Ok(Command::Data));
        assert_eq!(parse("nOoP anything"), Ok(Command::Noop));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(parse("help mail"), Ok(Command::Help));
        assert_eq!(parse("expn list"), Ok(Command::NotImplemented));
    }

    #[test]
    fn bdat_takes_a_size_and_an_optional_last() {
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 12345  last "),
            Ok(Command::Bdat {
                size: 12345,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 18446744073709551615"),
            Ok(Command::Bdat {
                size: u64::MAX,
                last: false
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT +1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 18446744073709551616",
            "BDAT 123456789012345678901",
        ] {
            assert_eq!(
                parse(bad),
                Err(CommandError::Syntax { usage: USAGE_BDAT }),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_verbs_and_empty_lines_are_unrecognized() {
        for line in [
            "",
            "MAILX FROM:<a@b.c>",
            "XYZZY",
            "\u{0}",
            "GET / HTTP/1.0",
            " EHLO x",
        ] {
            assert_eq!(parse(line), Err(CommandError::Unrecognized), "{line:?}");
        }
        assert_eq!(CommandError::Unrecognized.reply(), (500, "5.5.1"));
    }

    #[test]
    fn helo_needs_one_printable_token() {
        for line in ["EHLO", "EHLO ", "HELO", "EHLO two words", "EHLO caf\u{e9}"] {
            assert!(
                matches!(parse(line), Err(CommandError::Syntax { .. })),
                "{line:?}"
            );
        }
        assert_eq!(
            parse("EHLO [192.0.2.1]"),
            Ok(Command::Ehlo {
                domain: "[192.0.2.1]"
            })
        );
        assert_eq!(
            parse_command(b"EHLO \xff"),
            Err(CommandError::Syntax { usage: USAGE_EHLO })
        );
    }

    #[test]
    fn mail_from_parses_paths_and_parameters() {
        assert_eq!(
            parse("MAIL FROM:<a@example.com>"),
            Ok(Command::Mail {
                reverse_path: "a@example.com",
                params: MailParams::default()
            })
        );
        assert_eq!(
            parse("mail from: <a@example.com> size=1000 BODY=8bitmime"),
            Ok(Command::Mail {
                reverse_path: "a@example.com",
                params: MailParams {
                    size_bytes: Some(1000),
                    body: Some(BodyType::EightBitMime),
                    auth: false,
                    ..MailParams::default()
                },
            })
        );
        assert_eq!(
            parse("MAIL FROM:<> BODY=7BIT"),
            Ok(Command::Mail {
                reverse_path: "",
                params: MailParams {
                    size_bytes: None,
                    body: Some(BodyType::SevenBit),
                    auth: false,
                    ..MailParams::default()
                },
            })
        );
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> AUTH=<>"),
            Ok(Command::Mail { params, .. }) if params.auth
        ));
        assert_eq!(
            parse("MAIL FROM:<a@b.example> AUTH"),
            Err(CommandError::BadParameter)
        );
        let huge = parse("MAIL FROM:<> SIZE=99999999999999999999");
        assert!(
            matches!(huge, Ok(Command::Mail { params, .. }) if params.size_bytes == Some(u64::MAX))
        );
    }

    #[test]
    fn mail_from_errors_name_their_reply() {
        let cases: [(&str, CommandError); 16] = [
            ("MAIL", CommandError::Syntax { usage: USAGE_MAIL }),
            (
                "MAIL TO:<a@b.c>",
                CommandError::Syntax { usage: USAGE_MAIL },
            ),
            (
                "MAIL FROM:a@b.c",
                CommandError::Syntax { usage: USAGE_MAIL },
            ),
            ("MAIL FROM:<a@b.c", CommandError::BadSender),
            ("MAIL FROM:<a@@b.c>", CommandError::BadSender),
            (
                "MAIL FROM:<a@b.c>SIZE=1",
                CommandError::Syntax { usage: USAGE_MAIL },
            ),
            ("MAIL FROM:<a@b.c> SIZE=x", CommandError::BadParameter),
            (
                "MAIL FROM:<a@b.c> SIZE=1 SIZE=2",
                CommandError::BadParameter,
            ),
            (
                "MAIL FROM:<a@b.c> BODY=BINARYMIME",
                CommandError::UnknownParameter,
            ),
            ("MAIL FROM:<a@b.c> SMTPUTF8=YES", CommandError::BadParameter),
            ("MAIL FROM:<a@b.c> RET=BODY", CommandError::BadParameter),
            (
                "MAIL FROM:<a@b.c> RET=FULL RET=HDRS",
                CommandError::BadParameter,
            ),
            ("MAIL FROM:<a@b.c> ENVID=a+zz", CommandError::BadParameter),
            ("MAIL FROM:<a@b.c> ENVID", CommandError::BadParameter),
            (
                "MAIL FROM:<a@b.c> MT-PRIORITY=1",
                CommandError::UnknownParameter,
            ),
            ("MAIL FROM:<a@b.c> =x", CommandError::BadParameter),
        ];
        for (line, error) in cases {
            assert_eq!(parse(line), Err(error), "{line}");
        }
        assert_eq!(CommandError::UnknownParameter.reply(), (555, "5.5.4"));
        assert_eq!(CommandError::BadSender.reply(), (501, "5.1.7"));
    }

    #[test]
    fn rcpt_to_accepts_bare_postmaster_and_refuses_parameters() {
        assert_eq!(parse("RCPT TO:<PostMaster>"), Ok(Command::RcptPostmaster));
        assert_eq!(
            parse("rcpt to:<b@example.org>"),
            Ok(Command::Rcpt {
                forward_path: "b@example.org",
                params: RcptDsn::default(),
            })
        );
        assert_eq!(
            parse("RCPT TO:<b@example.org> XYZZY=1"),
            Err(CommandError::UnknownParameter)
        );
        assert_eq!(parse("RCPT TO:<>"), Err(CommandError::BadRecipient));
        assert_eq!(
            parse("RCPT TO:<postmaster@>"),
            Err(CommandError::BadRecipient)
        );
        assert_eq!(
            parse("RCPT FROM:<b@example.org>"),
            Err(CommandError::Syntax { usage: USAGE_RCPT })
        );
    }

    #[test]
    fn source_routes_are_dropped_and_quoted_local_parts_kept() {
        assert_eq!(
            parse_path("<@relay.example,@b.example:user@c.example> X"),
            Ok(("user@c.example", " X"))
        );
        assert_eq!(
            parse_path("<\"a>b c\"@example.com>"),
            Ok(("\"a>b c\"@example.com", ""))
        );
        assert_eq!(
            parse_path("<\"a\\\"b\"@example.com>"),
            Ok(("\"a\\\"b\"@example.com", ""))
        );
        assert_eq!(parse_path("<a@[192.0.2.1]>"), Ok(("a@[192.0.2.1]", "")));
        assert_eq!(
            parse_path("<a@[IPv6:2001:db8::1]>"),
            Ok(("a@[IPv6:2001:db8::1]", ""))
        );
        assert_eq!(parse_path("<@bad_route:a@b.c>"), Err(PathError::BadRoute));
        assert_eq!(parse_path("<a@[IPv6:zz]>"), Err(PathError::BadDomain));
    }

    #[test]
    fn malformed_mailboxes_are_refused() {
        for path in [
            "<a..b@c.d>",
            "<.a@c.d>",
            "<a.@c.d>",
            "<a@-c.d>",
            "<a@c-.d>",
            "<a@c..d>",
            "<a b@c.d>",
            "<\"unterminated@c.d>",
            "<a@c.d",
            "<a>",
            "<@c.d>",
        ] {
            assert!(parse_path(path).is_err(), "{path}");
        }
    }

    #[test]
    fn rfc_5321_length_limits_are_enforced() {
        let local_ok = "l".repeat(LOCAL_PART_BYTES_MAX);
        let local_long = "l".repeat(LOCAL_PART_BYTES_MAX + 1);
        assert!(parse_path(&format!("<{local_ok}@example.com>")).is_ok());
        assert_eq!(
            parse_path(&format!("<{local_long}@example.com>")),
            Err(PathError::BadLocalPart)
        );
        let label_long = "d".repeat(LABEL_BYTES_MAX + 1);
        assert_eq!(
            parse_path(&format!("<a@{label_long}.com>")),
            Err(PathError::BadDomain)
        );
        // Four labels of 63 and three dots: 255 bytes of domain, which a
        // path cannot carry (1 + 2 + 255 + 1 > 256).
        let label = "d".repeat(LABEL_BYTES_MAX);
        let domain = format!("{label}.{label}.{label}.{label}");
        assert_eq!(domain.len(), DOMAIN_BYTES_MAX);
        assert_eq!(
            parse_path(&format!("<a@{domain}>")),
            Err(PathError::TooLong)
        );
        let domain_short = &domain[..domain.len() - 3];
        assert!(parse_path(&format!("<a@{domain_short}>")).is_ok());
    }

    #[test]
    fn errors_render_their_usage() {
        assert_eq!(
            CommandError::Syntax { usage: USAGE_MAIL }.to_string(),
            "Syntax: MAIL FROM:<address>"
        );
    }

    #[test]
    fn utf8_paths_parse_for_mail_and_rcpt_only() {
        assert_eq!(
            parse("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8"),
            Ok(Command::Mail {
                reverse_path: "j\u{f6}rg@b\u{fc}cher.example",
                params: MailParams {
                    smtputf8: true,
                    ..MailParams::default()
                },
            })
        );
        assert!(matches!(
            parse("RCPT TO:<\u{7528}\u{6237}@\u{4f8b}\u{5b50}.\u{5e7f}\u{544a}>"),
            Ok(Command::Rcpt { forward_path, .. }) if forward_path.starts_with('\u{7528}')
        ));
        assert!(matches!(
            parse("RCPT TO:<\"j\u{f6}rg x\"@example.com>"),
            Ok(Command::Rcpt { .. })
        ));
        // A domain whose A-label form is invalid is refused.
        assert_eq!(
            parse("RCPT TO:<a@ex_ample\u{fc}.test>"),
            Err(CommandError::BadRecipient)
        );
        // Elsewhere UTF-8 is still a syntax error.
        assert_eq!(
            parse("EHLO b\u{fc}cher.example"),
            Err(CommandError::Syntax { usage: USAGE_EHLO })
        );
        // Not in parameters either.
        assert_eq!(
            parse("MAIL FROM:<a@b.example> ENVID=\u{e9}"),
            Err(CommandError::BadParameter)
        );
    }

    #[test]
    fn dsn_parameters_parse_on_mail_and_rcpt() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2B1"),
            Ok(Command::Mail {
                reverse_path: "a@b.example",
                params: MailParams {
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ+2B1"),
                    ..MailParams::default()
                },
            })
        );
        assert_eq!(
            parse("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.org"),
            Ok(Command::Rcpt {
                forward_path: "b@example.org",
                params: RcptDsn {
                    notify: Some(parse_notify("SUCCESS,FAILURE").unwrap()),
                    orcpt: Some("rfc822;b+40example.org"),
                },
            })
        );
        for bad in [
            "RCPT TO:<b@example.org> NOTIFY=NEVER,DELAY",
            "RCPT TO:<b@example.org> NOTIFY=SOMETIMES",
            "RCPT TO:<b@example.org> NOTIFY",
            "RCPT TO:<b@example.org> ORCPT=b@example.org",
            "RCPT TO:<b@example.org> NOTIFY=NEVER NOTIFY=NEVER",
        ] {
            assert_eq!(parse(bad), Err(CommandError::BadParameter), "{bad}");
            assert_eq!(CommandError::BadParameter.reply(), (501, "5.5.4"));
        }
    }
}
