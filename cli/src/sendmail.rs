//! The pure part of `ec_sendmail`: sendmail's command line, the message
//! read from stdin (line ends, the lone-dot rule, `-t` recipients, Bcc
//! removal, a From header when there is none), SMTP DATA dot-stuffing, and
//! the exit code for each outcome (sysexits.h, as sendmail uses them).
//!
//! Owns: [`Options`] and [`parse_args`], [`prepare`], [`dot_stuff`],
//! [`reply_code`]. May call: std. Never: sockets or files (the binary does
//! the I/O).

/// sysexits.h codes, as sendmail exits with them.
pub const EX_OK: i32 = 0;
/// Bad command line.
pub const EX_USAGE: i32 = 64;
/// The message or an address in it is bad (a 5xx to the message).
pub const EX_DATAERR: i32 = 65;
/// A recipient was refused (5xx to RCPT).
pub const EX_NOUSER: i32 = 67;
/// The daemon refused the session or the sender (5xx).
pub const EX_UNAVAILABLE: i32 = 69;
/// An internal error.
pub const EX_SOFTWARE: i32 = 70;
/// Reading stdin failed.
pub const EX_IOERR: i32 = 74;
/// Try again later: the daemon is down, busy, or answered 4xx.
pub const EX_TEMPFAIL: i32 = 75;
/// The daemon's answer made no sense.
pub const EX_PROTOCOL: i32 = 76;
/// The configuration file is bad.
pub const EX_CONFIG: i32 = 78;

/// Longest message read from stdin; a longer one is refused (EX_DATAERR)
/// rather than held in memory without bound.
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Most recipients one invocation sends to.
pub const RECIPIENTS_MAX: usize = 10_000;

/// What the command line asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from To, Cc and Bcc (added to those given as
    /// arguments, as Postfix does); Bcc is removed.
    pub extract: bool,
    /// `-i` / `-oi`: a line holding a lone dot does not end the message.
    pub ignore_dots: bool,
    /// `-f sender` (`-r` is the old name).
    pub sender: Option<String>,
    /// `-F fullname`, for the From header added when there is none.
    pub fullname: Option<String>,
    /// `-C path`: the ecelerity.conf to read the listener from.
    pub config: Option<String>,
    /// Recipients given as arguments.
    pub recipients: Vec<String>,
}

/// Options sendmail takes that change nothing here (delivery mode, error
/// mode, queue options, verbosity): accepted and ignored, as Postfix does.
const IGNORED_FLAGS: [&str; 10] = [
    "-bm", "-odi", "-odb", "-odq", "-oem", "-oep", "-oeq", "-om", "-v", "-U",
];

/// Parses sendmail's arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut words = args.iter();
    while let Some(w) = words.next() {
        let mut value = |flag: &str, rest: &str| -> Result<String, String> {
            if !rest.is_empty() {
                return Ok(rest.to_string());
            }
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("option {flag} needs a value"))
        };
        match w.as_str() {
            "--" => {
                o.recipients.extend(words.by_ref().cloned());
                break;
            }
            "-t" => o.extract = true,
            "-i" | "-oi" => o.ignore_dots = true,
            f if IGNORED_FLAGS.contains(&f) || f.starts_with("-O") || f.starts_with("-B") => {}
            f if f.starts_with("-f") || f.starts_with("-r") => {
                o.sender = Some(value(&f[..2], &f[2..])?)
            }
            f if f.starts_with("-F") => o.fullname = Some(value("-F", &f[2..])?),
            f if f.starts_with("-C") => o.config = Some(value("-C", &f[2..])?),
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(format!("unsupported option {f}"));
            }
            address => o.recipients.push(address.to_string()),
        }
    }
    if let Some(s) = &o.sender {
        check_address(s).map_err(|e| format!("-f {s:?}: {e}"))?;
    }
    for r in &o.recipients {
        check_address(r).map_err(|e| format!("recipient {r:?}: {e}"))?;
    }
    Ok(o)
}

/// An envelope address must fit between `<` and `>` on one SMTP line.
fn check_address(a: &str) -> Result<(), &'static str> {
    if a.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err("spaces, control characters and angle brackets are not allowed");
    }
    if a.len() > 254 {
        return Err("longer than 254 bytes");
    }
    Ok(())
}

/// The message as it goes into DATA (CRLF line ends, not dot-stuffed yet)
/// and its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub message: Vec<u8>,
    pub recipients: Vec<String>,
}

/// Turns what stdin gave into the message to send: every line end becomes
/// CRLF; without `-i` a line holding a lone `.` ends the message; with
/// `-t` the recipients of To, Cc and Bcc are added and Bcc removed; a From
/// header is added when there is none (`-F fullname <sender>`).
pub fn prepare(input: &[u8], options: &Options, sender: &str) -> Result<Prepared, String> {
    let lines = split_lines(input, options.ignore_dots);
    let header_end = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let (headers, body) = lines.split_at(header_end);
    let fields = header_fields(headers);
    let mut recipients = options.recipients.clone();
    if options.extract {
        for (name, value) in &fields {
            if ["to", "cc", "bcc"].contains(&name.to_ascii_lowercase().as_str()) {
                recipients.extend(addresses(value));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_ascii_lowercase()));
    for r in &recipients {
        check_address(r).map_err(|e| format!("recipient {r:?}: {e}"))?;
    }
    if recipients.is_empty() {
        return Err("no recipients (give them as arguments, or use -t)".into());
    }
    if recipients.len() > RECIPIENTS_MAX {
        return Err(format!("more than {RECIPIENTS_MAX} recipients"));
    }
    let mut message = Vec::with_capacity(input.len() + 64);
    let has_from = fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("from"));
    if !has_from {
        let from = match &options.fullname {
            Some(name) => format!("From: {name} <{sender}>"),
            None => format!("From: {sender}"),
        };
        message.extend_from_slice(from.as_bytes());
        message.extend_from_slice(b"\r\n");
    }
    let mut in_bcc = false;
    for line in headers {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            in_bcc =
                options.extract && field_name(line).is_some_and(|n| n.eq_ignore_ascii_case("bcc"));
        }
        if !in_bcc {
            message.extend_from_slice(line);
            message.extend_from_slice(b"\r\n");
        }
    }
    for line in body {
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    Ok(Prepared {
        message,
        recipients,
    })
}

/// The lines of `input` without their line ends (LF, CRLF), stopping at a
/// lone `.` unless `ignore_dots`. A last line without an end counts.
fn split_lines(input: &[u8], ignore_dots: bool) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !ignore_dots && line == b"." {
            break;
        }
        lines.push(line);
        rest = next;
    }
    lines
}

fn field_name(line: &[u8]) -> Option<&str> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = std::str::from_utf8(&line[..colon]).ok()?;
    (!name.is_empty() && !name.contains([' ', '\t'])).then_some(name)
}

/// (name, unfolded value) of every header field.
fn header_fields(headers: &[&[u8]]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in headers {
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(text.trim());
            }
        } else if let Some(name) = field_name(line) {
            let value = text[name.len() + 1..].trim().to_string();
            fields.push((name.to_string(), value));
        }
    }
    fields
}

/// The addresses of an address-list header value: `a@x, "B, b" <b@y>,
/// c@z (comment), group: d@w;`.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut angle) = (0usize, false, false);
    let mut item = String::new();
    let mut flush = |item: &mut String| {
        let text = std::mem::take(item);
        let text = text.trim();
        let text = match text.find('<') {
            Some(start) => text[start + 1..].split('>').next().unwrap_or(""),
            None => text.rsplit(':').next().unwrap_or(text),
        };
        let text = text.trim().trim_end_matches(';').trim();
        if text.contains('@') || (!text.is_empty() && !text.contains(' ')) {
            out.push(text.to_string());
        }
    };
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                continue;
            }
            '(' if !quoted => {
                depth += 1;
                continue;
            }
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                continue;
            }
            _ if depth > 0 => continue,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' | ';' if !quoted && !angle => {
                flush(&mut item);
                continue;
            }
            _ if quoted => continue,
            _ => {}
        }
        item.push(c);
    }
    flush(&mut item);
    out
}

/// `message` (CRLF lines) as DATA carries it: a line that starts with `.`
/// gets a second one, and it ends with CRLF (the caller sends `.` CRLF).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The SMTP step a reply answered, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    MailFrom,
    RcptTo,
    Data,
    EndOfData,
}

/// The exit code for a reply `code` at `step` (`EX_OK` for 2xx/3xx).
pub fn reply_code(step: Step, code: u16) -> i32 {
    match (code / 100, step) {
        (2 | 3, _) => EX_OK,
        (4, _) => EX_TEMPFAIL,
        (5, Step::RcptTo) => EX_NOUSER,
        (5, Step::Data | Step::EndOfData) => EX_DATAERR,
        (5, _) => EX_UNAVAILABLE,
        _ => EX_PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments_as_sendmail_takes_them() {
        let o = parse_args(&args(
            "-t -oi -fbob@x.test -F Bob -C /etc/e.conf -odi a@y.test",
        ))
        .unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("bob@x.test"));
        assert_eq!(o.fullname.as_deref(), Some("Bob"));
        assert_eq!(o.config.as_deref(), Some("/etc/e.conf"));
        assert_eq!(o.recipients, vec!["a@y.test"]);
        let o = parse_args(&args("-f bob@x.test -i -- -odd@y.test")).unwrap();
        assert_eq!(o.sender.as_deref(), Some("bob@x.test"));
        assert_eq!(o.recipients, vec!["-odd@y.test"]);
        assert!(parse_args(&args("-q")).is_err());
        assert!(parse_args(&args("-f")).is_err());
        assert!(parse_args(&args("<a@b>")).is_err());
    }

    #[test]
    fn lone_dot_ends_the_message_unless_i() {
        let o = Options {
            recipients: vec!["a@b".into()],
            ..Options::default()
        };
        let input = b"From: x\nSubject: s\n\none\n.\ntwo\n";
        let p = prepare(input, &o, "s@x").unwrap();
        assert_eq!(p.message, b"From: x\r\nSubject: s\r\n\r\none\r\n");
        let o = Options {
            ignore_dots: true,
            ..o
        };
        let p = prepare(input, &o, "s@x").unwrap();
        assert_eq!(
            p.message,
            b"From: x\r\nSubject: s\r\n\r\none\r\n.\r\ntwo\r\n"
        );
    }

    #[test]
    fn t_takes_to_cc_bcc_and_removes_bcc() {
        let o = Options {
            extract: true,
            recipients: vec!["arg@x.test".into()],
            ..Options::default()
        };
        let input = b"From: me@x.test\r\nTo: \"Doe, J\" <j@a.test>, k@a.test (K)\r\nCc: team: l@b.test, m@b.test;\r\nBcc: hidden@c.test,\r\n\tother@c.test\r\nSubject: hi\r\n\r\nBcc: not a header\r\n";
        let p = prepare(input, &o, "me@x.test").unwrap();
        assert_eq!(
            p.recipients,
            vec![
                "arg@x.test",
                "j@a.test",
                "k@a.test",
                "l@b.test",
                "m@b.test",
                "hidden@c.test",
                "other@c.test"
            ]
        );
        let text = String::from_utf8(p.message).unwrap();
        assert!(!text.contains("hidden"), "{text}");
        assert!(
            text.ends_with("Subject: hi\r\n\r\nBcc: not a header\r\n"),
            "{text}"
        );
    }

    #[test]
    fn from_is_added_when_missing_and_no_recipients_is_an_error() {
        let o = Options {
            fullname: Some("Jo Doe".into()),
            recipients: vec!["a@b".into()],
            ..Options::default()
        };
        let p = prepare(b"Subject: s\n\nx", &o, "jo@x.test").unwrap();
        assert_eq!(
            p.message,
            b"From: Jo Doe <jo@x.test>\r\nSubject: s\r\n\r\nx\r\n"
        );
        assert!(prepare(b"Subject: s\n\nx", &Options::default(), "s@x").is_err());
    }

    #[test]
    fn dots_are_stuffed_at_line_starts_only() {
        assert_eq!(dot_stuff(b".a\r\nb.c\r\n..\r\n"), b"..a\r\nb.c\r\n...\r\n");
        assert_eq!(dot_stuff(b"x"), b"x\r\n");
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        assert_eq!(reply_code(Step::RcptTo, 250), EX_OK);
        assert_eq!(reply_code(Step::RcptTo, 550), EX_NOUSER);
        assert_eq!(reply_code(Step::MailFrom, 451), EX_TEMPFAIL);
        assert_eq!(reply_code(Step::EndOfData, 554), EX_DATAERR);
        assert_eq!(reply_code(Step::Greeting, 554), EX_UNAVAILABLE);
        assert_eq!(reply_code(Step::Ehlo, 999), EX_PROTOCOL);
    }
}
