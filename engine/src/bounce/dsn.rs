//! The delivery status notification (RFC 3464) for the permanent failures
//! of one message, or for its recipients still being retried (a delay
//! DSN): a multipart/report with a human-readable part, a
//! message/delivery-status part (Reporting-MTA, Arrival-Date, and per
//! recipient Final-Recipient, Action: failed or delayed, Status,
//! Diagnostic-Code, Will-Retry-Until for a delay) and the original's header
//! block as text/rfc822-headers.
//!
//! Owns: [`build`], a pure function from the facts to the message bytes,
//! and [`original_headers`] (the header block of a spooled body).
//! May call: `smtp::received` (the RFC 5322 date), `classify` (the enhanced
//! code of a reply). Never: I/O.
//!
//! Written by hand rather than with mail-builder: the report is three
//! fixed 7-bit parts of a few lines each, and the builder's defaults
//! (base64 for non-text leaves) would have to be overridden part by part;
//! this is under a hundred lines and keeps the engine free of a MIME
//! builder it needs nowhere else.

use super::classify::reply_codes;
use crate::smtp::received::write_rfc5322_date;

/// Most bytes of the original's header block a DSN carries; a longer block
/// is cut after its last whole line below this.
pub const ORIGINAL_HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of a recipient address or a diagnostic a DSN line carries:
/// well below RFC 5322's 998-byte line limit, with room for the field name.
pub const DSN_FIELD_BYTES_MAX: usize = 900;

/// One recipient a DSN reports on: failed, or delayed in a delay DSN, or
/// relayed (a success DSN).
#[derive(Debug, Clone, Copy, Default)]
pub struct FailedRecipient<'a> {
    pub rcpt: &'a str,
    /// The reply that decided the failure (remote, or our `554 5.4.7`), or
    /// the last transient reply of a delayed recipient, or the reply that
    /// accepted a relayed one.
    pub reply: &'a str,
    /// RCPT's `ORCPT` (RFC 3461): address type and address, reported as
    /// `Original-Recipient`.
    pub original: Option<(&'a str, &'a str)>,
    /// Delivered to a next hop that does not offer DSN, with
    /// `NOTIFY=SUCCESS`: `Action: relayed`, status 2.x.x.
    pub relayed: bool,
}

/// What a DSN reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The recipients failed for good (Action: failed, Status 5.x.x).
    Failed,
    /// The recipients are still being retried (Action: delayed, Status
    /// 4.x.x), until this time at the latest (Will-Retry-Until).
    Delayed { will_retry_until_unix_secs: i64 },
    /// Every recipient was relayed (a success DSN, RFC 3461 section 6.2).
    Relayed,
}

/// What a DSN says.
#[derive(Debug, Clone, Copy)]
pub struct Dsn<'a> {
    /// This MTA's host name (`hostname`): Reporting-MTA and From.
    pub reporting_mta: &'a str,
    /// The original's return path: the DSN's To (and envelope recipient).
    pub return_path: &'a str,
    /// The original's queue id, for the operator who reads the DSN.
    pub original_id: &'a str,
    /// The DSN's own queue id: its Message-ID and MIME boundary.
    pub dsn_id: &'a str,
    pub arrival_unix_secs: i64,
    pub now_unix_secs: i64,
    pub failed: &'a [FailedRecipient<'a>],
    pub report: Report,
    /// The original's header block (see [`original_headers`]).
    pub original_headers: &'a [u8],
    /// MAIL's `ENVID` (RFC 3461), reported as `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// `RET=FULL` on a failure DSN: the whole original (at most
    /// [`RETURNED_MESSAGE_BYTES_MAX`]), returned as message/rfc822 instead
    /// of its headers.
    pub returned_message: Option<&'a [u8]>,
}

/// Largest original a failure DSN returns whole (`RET=FULL`); a larger one
/// comes back as its headers (RFC 3461 section 4.3 lets an MTA do so, as
/// Postfix's `bounce_size_limit` does).
pub const RETURNED_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// An address as a DSN field value: `rfc822; addr` when ASCII, otherwise
/// `utf-8; ` and RFC 6533's utf-8-addr-xtext (each non-ASCII character,
/// `\`, `+` and `=` as `\x{HEX}`), so the report stays 7-bit.
fn address_field(out: &mut Vec<u8>, address: &str) {
    use std::io::Write as _;
    if address.is_ascii() {
        out.extend_from_slice(b"rfc822; ");
        one_line(out, address);
        return;
    }
    out.extend_from_slice(b"utf-8; ");
    let start = out.len();
    for c in address.chars() {
        if out.len() - start > DSN_FIELD_BYTES_MAX {
            break;
        }
        match c {
            '\\' | '+' | '=' => {
                let _ = write!(out, "\\x{{{:X}}}", c as u32);
            }
            c if c.is_ascii_control() => out.push(b' '),
            c if c.is_ascii() => out.push(c as u8),
            c => {
                let _ = write!(out, "\\x{{{:X}}}", c as u32);
            }
        }
    }
}

/// The header block at the start of `body` (up to and without the empty
/// line that ends it), at most [`ORIGINAL_HEADERS_BYTES_MAX`] bytes, cut
/// after a whole line.
pub fn original_headers(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 2)
        .unwrap_or(body.len());
    let block = &body[..end];
    if block.len() <= ORIGINAL_HEADERS_BYTES_MAX {
        return block;
    }
    let cut = &block[..ORIGINAL_HEADERS_BYTES_MAX];
    match cut.windows(2).rposition(|w| w == b"\r\n") {
        Some(at) => &cut[..at + 2],
        None => &[],
    }
}

/// `text` on one 7-bit line: control characters become spaces and other
/// bytes outside ASCII `?`, cut to [`DSN_FIELD_BYTES_MAX`] bytes.
fn one_line(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(DSN_FIELD_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend(text[..end].bytes().map(|b| match b {
        0..=31 | 127 => b' ',
        128.. => b'?',
        _ => b,
    }));
}

/// The RFC 3463 status of a failed recipient: the reply's enhanced code
/// with class 5, or 5.0.0 when it has none.
pub fn status_of(reply: &str) -> String {
    class_status(5, reply)
}

/// The reply's enhanced code with class `class` (2, 4 or 5), or `class`.0.0.
fn class_status(class: u8, reply: &str) -> String {
    assert!(class == 2 || class == 4 || class == 5);
    match reply_codes(reply).status {
        Some(status) => format!("{class}.{status}"),
        None => format!("{class}.0.0"),
    }
}

/// The words that differ between a failure DSN and a delay DSN.
struct Wording {
    subject: &'static str,
    summary: &'static str,
    detail: [&'static str; 2],
    action: &'static str,
    class: u8,
}

fn wording(report: Report) -> Wording {
    match report {
        Report::Failed => Wording {
            subject: "Undelivered Mail Returned to Sender",
            summary: "Your message could not be delivered to one or more recipients.",
            detail: [
                "It has been returned with the reasons below; no further attempts",
                "will be made for these recipients.",
            ],
            action: "failed",
            class: 5,
        },
        Report::Delayed { .. } => Wording {
            subject: "Delayed Mail (still being retried)",
            summary: "Your message has not been delivered yet to the recipients below.",
            detail: [
                "This is a warning only: you do not need to send the message again;",
                "delivery will be retried until the time given below.",
            ],
            action: "delayed",
            class: 4,
        },
        Report::Relayed => Wording {
            subject: "Successful Mail Relay Report",
            summary: "Your message was relayed to the recipients below.",
            detail: [
                "The next mail system does not offer delivery notifications,",
                "so this is the last report you will get for these recipients.",
            ],
            action: "relayed",
            class: 2,
        },
    }
}

/// The DSN message (headers and body, CRLF line ends).
pub fn build(dsn: &Dsn<'_>) -> Vec<u8> {
    let mut boundary = format!("=_ecelerity_dsn_{}", dsn.dsn_id.replace('/', "_"));
    let needle = |b: &str| format!("--{b}");
    let returned = dsn.returned_message.unwrap_or(dsn.original_headers);
    while contains(returned, needle(&boundary).as_bytes()) {
        boundary.push('_');
    }
    let mut date = String::new();
    write_rfc5322_date(&mut date, dsn.now_unix_secs);
    let mut arrival = String::new();
    write_rfc5322_date(&mut arrival, dsn.arrival_unix_secs);
    let host = dsn.reporting_mta;
    let words = wording(dsn.report);
    let mut until = String::new();
    if let Report::Delayed {
        will_retry_until_unix_secs,
    } = dsn.report
    {
        write_rfc5322_date(&mut until, will_retry_until_unix_secs);
    }
    let mut out = Vec::with_capacity(2048 + returned.len());
    let line = |out: &mut Vec<u8>, parts: &[&str]| {
        for p in parts {
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    };
    line(
        &mut out,
        &["From: Mail Delivery System <MAILER-DAEMON@", host, ">"],
    );
    out.extend_from_slice(b"To: <");
    if dsn.return_path.is_ascii() {
        one_line(&mut out, dsn.return_path);
    } else {
        // A UTF-8 return path (SMTPUTF8): the DSN goes as SMTPUTF8 too,
        // so its header may carry it (RFC 6532), controls made spaces.
        let text = dsn.return_path.replace(|c: char| c.is_control(), " ");
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b">\r\n");
    line(&mut out, &["Subject: ", words.subject]);
    line(&mut out, &["Date: ", &date]);
    line(
        &mut out,
        &["Message-ID: <", &boundary[16..], "@", host, ">"],
    );
    line(&mut out, &["Auto-Submitted: auto-replied"]);
    line(&mut out, &["MIME-Version: 1.0"]);
    line(
        &mut out,
        &["Content-Type: multipart/report; report-type=delivery-status;"],
    );
    line(&mut out, &["\tboundary=\"", &boundary, "\""]);
    line(&mut out, &[]);
    line(&mut out, &["This is a MIME-encapsulated message."]);
    line(&mut out, &[]);

    line(&mut out, &["--", &boundary]);
    line(&mut out, &["Content-Type: text/plain; charset=us-ascii"]);
    line(&mut out, &["Content-Transfer-Encoding: 7bit"]);
    line(&mut out, &[]);
    line(&mut out, &["This is the mail system at host ", host, "."]);
    line(&mut out, &[]);
    line(&mut out, &[words.summary]);
    line(&mut out, &[words.detail[0]]);
    line(&mut out, &[words.detail[1]]);
    if !until.is_empty() {
        line(&mut out, &["Retries end: ", &until]);
    }
    line(&mut out, &[]);
    for f in dsn.failed {
        out.push(b'<');
        one_line(&mut out, f.rcpt);
        out.extend_from_slice(b">: ");
        if f.relayed && dsn.report != Report::Relayed {
            out.extend_from_slice(b"relayed to a system without DSN: ");
        }
        one_line(&mut out, f.reply);
        out.extend_from_slice(b"\r\n");
    }
    line(&mut out, &[]);

    line(&mut out, &["--", &boundary]);
    line(&mut out, &["Content-Type: message/delivery-status"]);
    line(&mut out, &["Content-Transfer-Encoding: 7bit"]);
    line(&mut out, &[]);
    if let Some(envid) = dsn.envid {
        out.extend_from_slice(b"Original-Envelope-Id: ");
        one_line(&mut out, envid);
        out.extend_from_slice(b"\r\n");
    }
    line(&mut out, &["Reporting-MTA: dns; ", host]);
    line(&mut out, &["X-Ecelerity-Queue-ID: ", dsn.original_id]);
    line(&mut out, &["Arrival-Date: ", &arrival]);
    for f in dsn.failed {
        line(&mut out, &[]);
        if let Some((addr_type, address)) = f.original {
            out.extend_from_slice(b"Original-Recipient: ");
            if addr_type.eq_ignore_ascii_case("rfc822") {
                address_field(&mut out, address);
            } else {
                one_line(&mut out, addr_type);
                out.extend_from_slice(b"; ");
                one_line(&mut out, address);
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Final-Recipient: ");
        address_field(&mut out, f.rcpt);
        out.extend_from_slice(b"\r\n");
        let (action, class) = if f.relayed {
            ("relayed", 2)
        } else {
            (words.action, words.class)
        };
        line(&mut out, &["Action: ", action]);
        line(&mut out, &["Status: ", &class_status(class, f.reply)]);
        out.extend_from_slice(b"Diagnostic-Code: smtp; ");
        one_line(&mut out, f.reply);
        out.extend_from_slice(b"\r\n");
        if !until.is_empty() {
            line(&mut out, &["Will-Retry-Until: ", &until]);
        }
    }
    line(&mut out, &[]);

    line(&mut out, &["--", &boundary]);
    let content_type = match dsn.returned_message {
        Some(_) => "message/rfc822",
        None => "text/rfc822-headers",
    };
    line(&mut out, &["Content-Type: ", content_type]);
    let eight_bit = returned.iter().any(|&b| b >= 0x80);
    let encoding = if eight_bit { "8bit" } else { "7bit" };
    line(&mut out, &["Content-Transfer-Encoding: ", encoding]);
    line(&mut out, &[]);
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        line(&mut out, &[]);
    }
    line(&mut out, &[]);
    line(&mut out, &["--", &boundary, "--"]);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small multipart reader for the tests: the top-level headers, the
    /// boundary, and each part split into its headers and body.
    struct Parsed {
        headers: String,
        parts: Vec<(String, String)>,
        closed: bool,
    }

    fn parse(message: &[u8]) -> Parsed {
        let text = String::from_utf8_lossy(message).into_owned();
        let (headers, body) = text.split_once("\r\n\r\n").expect("a header block");
        let unfolded = headers.replace("\r\n\t", " ");
        let boundary = unfolded
            .split("boundary=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a boundary")
            .to_string();
        let delimiter = format!("\r\n--{boundary}");
        let body = format!("\r\n{body}");
        let mut pieces: Vec<&str> = body.split(delimiter.as_str()).collect();
        let last = pieces.pop().expect("a closing delimiter");
        let closed = last.starts_with("--");
        let parts = pieces[1..]
            .iter()
            .map(|p| {
                let p = p.strip_prefix("\r\n").expect("CRLF after the delimiter");
                let (h, b) = p.split_once("\r\n\r\n").expect("part headers");
                (h.to_string(), b.to_string())
            })
            .collect();
        Parsed {
            headers: unfolded.to_string(),
            parts,
            closed,
        }
    }

    /// Field groups of a delivery-status body: per-message, then one per
    /// recipient, each as (name, value) pairs.
    fn groups(body: &str) -> Vec<Vec<(String, String)>> {
        body.split("\r\n\r\n")
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                g.lines()
                    .map(|l| {
                        let (n, v) = l.split_once(':').expect("a field");
                        (n.to_string(), v.trim().to_string())
                    })
                    .collect()
            })
            .collect()
    }

    const ORIGINAL: &[u8] = b"Received: from client.example\r\nFrom: <news@example.net>\r\nSubject: hello\r\nMessage-ID: <1@example.net>\r\n\r\nbody text\r\n";

    fn sample(failed: &[FailedRecipient<'_>]) -> Vec<u8> {
        build(&Dsn {
            reporting_mta: "mx.example.org",
            return_path: "news@example.net",
            original_id: "00/00-01234-0A1B2C3D",
            dsn_id: "00/00-01234-0A1B2C40",
            arrival_unix_secs: 1_700_000_000,
            now_unix_secs: 1_700_000_060,
            failed,
            report: Report::Failed,
            original_headers: original_headers(ORIGINAL),
            envid: None,
            returned_message: None,
        })
    }

    /// Goal: a DSN parses back as RFC 3464 says. Method: build one for two
    /// recipients, split it on its boundary, read the delivery-status
    /// field groups.
    #[test]
    fn dsn_is_a_multipart_report_with_one_status_group_per_recipient() {
        let failed = [
            FailedRecipient {
                rcpt: "bob@example.com",
                reply: "550 5.1.1 user unknown",
                ..FailedRecipient::default()
            },
            FailedRecipient {
                rcpt: "carol@example.com",
                reply: "552 5.2.2 mailbox full",
                ..FailedRecipient::default()
            },
        ];
        let dsn = sample(&failed);
        let parsed = parse(&dsn);
        assert!(parsed
            .headers
            .contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(parsed.headers.contains("To: <news@example.net>"));
        assert!(parsed.headers.contains("Auto-Submitted: auto-replied"));
        assert!(parsed
            .headers
            .contains("Date: Tue, 14 Nov 2023 22:14:20 +0000"));
        assert!(parsed.closed, "closing delimiter");
        assert_eq!(parsed.parts.len(), 3);
        assert!(parsed.parts[0].0.contains("text/plain"));
        assert!(parsed.parts[0]
            .1
            .contains("<bob@example.com>: 550 5.1.1 user unknown"));
        assert!(parsed.parts[1]
            .0
            .contains("Content-Type: message/delivery-status"));
        assert!(parsed.parts[1]
            .0
            .contains("Content-Transfer-Encoding: 7bit"));
        let g = groups(&parsed.parts[1].1);
        assert_eq!(g.len(), 3, "{g:?}");
        assert!(g[0].contains(&("Reporting-MTA".into(), "dns; mx.example.org".into())));
        assert!(g[0].contains(&(
            "Arrival-Date".into(),
            "Tue, 14 Nov 2023 22:13:20 +0000".into()
        )));
        let want = [
            ("bob@example.com", "5.1.1", "550 5.1.1 user unknown"),
            ("carol@example.com", "5.2.2", "552 5.2.2 mailbox full"),
        ];
        for (group, (rcpt, status, diagnostic)) in g[1..].iter().zip(want) {
            assert_eq!(
                group,
                &vec![
                    ("Final-Recipient".to_string(), format!("rfc822; {rcpt}")),
                    ("Action".to_string(), "failed".to_string()),
                    ("Status".to_string(), status.to_string()),
                    ("Diagnostic-Code".to_string(), format!("smtp; {diagnostic}")),
                ]
            );
        }
        assert!(parsed.parts[2]
            .0
            .contains("Content-Type: text/rfc822-headers"));
        assert!(parsed.parts[2]
            .1
            .starts_with("Received: from client.example\r\n"));
        assert!(parsed.parts[2].1.contains("Subject: hello\r\n"));
        assert!(!parsed.parts[2].1.contains("body text"), "headers only");
    }

    /// Goal: a delay DSN says delayed, not failed. Method: build one for a
    /// recipient deferred with a 451 and one whose reply has no enhanced
    /// code; read the subject and the status groups.
    #[test]
    fn a_delay_dsn_reports_delayed_with_4xx_status_and_will_retry_until() {
        let delayed = [
            FailedRecipient {
                rcpt: "bob@example.com",
                reply: "451 4.2.0 try again later",
                ..FailedRecipient::default()
            },
            FailedRecipient {
                rcpt: "carol@example.com",
                reply: "421 busy",
                ..FailedRecipient::default()
            },
        ];
        let dsn = build(&Dsn {
            reporting_mta: "mx.example.org",
            return_path: "news@example.net",
            original_id: "00/00-01234-0A1B2C3D",
            dsn_id: "00/00-01234-0A1B2C41",
            arrival_unix_secs: 1_700_000_000,
            now_unix_secs: 1_700_003_600,
            failed: &delayed,
            report: Report::Delayed {
                will_retry_until_unix_secs: 1_700_086_400,
            },
            original_headers: original_headers(ORIGINAL),
            envid: None,
            returned_message: None,
        });
        let parsed = parse(&dsn);
        assert!(parsed
            .headers
            .contains("Subject: Delayed Mail (still being retried)"));
        assert!(parsed.parts[0].1.contains("<bob@example.com>: 451 4.2.0"));
        assert!(!parsed.parts[0].1.contains("no further attempts"));
        let g = groups(&parsed.parts[1].1);
        assert_eq!(g.len(), 3, "{g:?}");
        let until = "Wed, 15 Nov 2023 22:13:20 +0000";
        assert_eq!(
            g[1],
            vec![
                (
                    "Final-Recipient".to_string(),
                    "rfc822; bob@example.com".to_string()
                ),
                ("Action".to_string(), "delayed".to_string()),
                ("Status".to_string(), "4.2.0".to_string()),
                (
                    "Diagnostic-Code".to_string(),
                    "smtp; 451 4.2.0 try again later".to_string()
                ),
                ("Will-Retry-Until".to_string(), until.to_string()),
            ]
        );
        assert_eq!(g[2][2], ("Status".into(), "4.0.0".into()));
        assert!(parsed.closed);
    }

    #[test]
    fn replies_without_enhanced_codes_get_5_0_0_and_cannot_inject_lines() {
        let failed = [FailedRecipient {
            rcpt: "bob@example.com\r\nBcc: x@evil.example",
            reply: "550 no\r\nStatus: 2.0.0",
            ..FailedRecipient::default()
        }];
        let dsn = sample(&failed);
        let parsed = parse(&dsn);
        let g = groups(&parsed.parts[1].1);
        assert_eq!(g[1][2], ("Status".into(), "5.0.0".into()));
        assert_eq!(g[1].len(), 4, "{g:?}");
        assert!(!String::from_utf8_lossy(&dsn).contains("\r\nBcc:"));
    }

    #[test]
    fn a_boundary_found_in_the_original_is_changed() {
        let headers = b"X-Evil: --=_ecelerity_dsn_00_00-01234-0A1B2C40\r\n";
        let dsn = build(&Dsn {
            reporting_mta: "mx.example.org",
            return_path: "a@example.net",
            original_id: "x",
            dsn_id: "00/00-01234-0A1B2C40",
            arrival_unix_secs: 0,
            now_unix_secs: 0,
            failed: &[FailedRecipient {
                rcpt: "b@example.com",
                reply: "550 5.1.1 no",
                ..FailedRecipient::default()
            }],
            report: Report::Failed,
            original_headers: headers,
            envid: None,
            returned_message: None,
        });
        let parsed = parse(&dsn);
        assert_eq!(parsed.parts.len(), 3);
        assert!(parsed.closed);
        assert!(parsed.parts[2].1.contains("X-Evil"));
    }

    #[test]
    fn original_headers_stop_at_the_empty_line_and_at_the_limit() {
        assert_eq!(
            original_headers(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(original_headers(b"A: 1\r\n"), b"A: 1\r\n");
        let long: Vec<u8> = b"X: 0123456789\r\n"
            .iter()
            .copied()
            .cycle()
            .take(ORIGINAL_HEADERS_BYTES_MAX * 2)
            .collect();
        let cut = original_headers(&long);
        assert!(cut.len() <= ORIGINAL_HEADERS_BYTES_MAX);
        assert!(cut.ends_with(b"\r\n"));
    }

    /// Goal: the RFC 3461 fields and actions. Method: a DSN with ENVID, an
    /// ORCPT, a UTF-8 recipient, one relayed recipient and RET=FULL.
    #[test]
    fn envid_orcpt_relayed_and_the_full_message_are_reported() {
        let failed = [
            FailedRecipient {
                rcpt: "bob@example.com",
                reply: "550 5.1.1 user unknown",
                original: Some(("rfc822", "robert@example.org")),
                relayed: false,
            },
            FailedRecipient {
                rcpt: "j\u{f6}rg=x@b\u{fc}cher.example",
                reply: "250 2.0.0 Ok: queued as 1",
                original: None,
                relayed: true,
            },
        ];
        let dsn = build(&Dsn {
            reporting_mta: "mx.example.org",
            return_path: "news@example.net",
            original_id: "x",
            dsn_id: "00/00-01234-0A1B2C42",
            arrival_unix_secs: 0,
            now_unix_secs: 0,
            failed: &failed,
            report: Report::Failed,
            original_headers: original_headers(ORIGINAL),
            envid: Some("QQ314159"),
            returned_message: Some(ORIGINAL),
        });
        let parsed = parse(&dsn);
        let g = groups(&parsed.parts[1].1);
        assert_eq!(g[0][0], ("Original-Envelope-Id".into(), "QQ314159".into()));
        assert_eq!(
            g[1][0],
            (
                "Original-Recipient".into(),
                "rfc822; robert@example.org".into()
            )
        );
        assert_eq!(g[1][2], ("Action".into(), "failed".into()));
        assert_eq!(
            g[2][0],
            (
                "Final-Recipient".into(),
                "utf-8; j\\x{F6}rg\\x{3D}x@b\\x{FC}cher.example".into()
            )
        );
        assert_eq!(g[2][1], ("Action".into(), "relayed".into()));
        assert_eq!(g[2][2], ("Status".into(), "2.0.0".into()));
        assert!(parsed.parts[2].0.contains("Content-Type: message/rfc822"));
        assert!(parsed.parts[2].1.contains("body text"), "the whole message");
        assert!(dsn.is_ascii(), "a 7-bit report");
    }
}
