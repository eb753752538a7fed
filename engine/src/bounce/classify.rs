//! Momentum's bounce classification: which of the bounce classification
//! codes (1 Undetermined, 10 Invalid Recipient, 22 Mailbox Full, 50 Mail
//! Block, ...) a failing reply belongs to, from its reply code, its
//! enhanced status code (RFC 3463) and its text.
//!
//! Owns: [`BOUNCE_CLASSES`] (Momentum's table: number, name, category) and
//! [`RULES`] (what selects each class), and [`classify`], a pure function.
//! May call: std. Never: I/O, configuration, logs.
//!
//! The rules are tried in order and the first that matches wins, so the
//! order carries meaning: expiry first (our own `5.4.7` carries the last
//! remote reply in its text), then words that name a cause more precisely
//! than the enhanced code does (a `5.7.1` can be relaying, a blocklist or
//! spam content), then enhanced codes, then words alone for receivers that
//! send no enhanced code.

/// Momentum's category of a bounce class (the SparkPost `bounce_class`
/// groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Undetermined,
    Hard,
    Soft,
    Block,
    Admin,
}

/// One row of Momentum's bounce classification table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BounceClass {
    /// Momentum's number, as in the bouncelog and webhooks.
    pub code: u16,
    pub name: &'static str,
    pub category: Category,
}

const fn class(code: u16, name: &'static str, category: Category) -> BounceClass {
    BounceClass {
        code,
        name,
        category,
    }
}

/// Momentum's bounce classification codes (bounce_logger.classification).
pub const BOUNCE_CLASSES: &[BounceClass] = &[
    class(1, "Undetermined", Category::Undetermined),
    class(10, "Invalid Recipient", Category::Hard),
    class(20, "Soft Bounce", Category::Soft),
    class(21, "DNS Failure", Category::Soft),
    class(22, "Mailbox Full", Category::Soft),
    class(23, "Too Large", Category::Soft),
    class(24, "Timeout", Category::Soft),
    class(25, "Admin Failure", Category::Admin),
    class(30, "Generic Bounce: No RCPT", Category::Hard),
    class(40, "Generic Bounce", Category::Soft),
    class(50, "Mail Block", Category::Block),
    class(51, "Spam Block", Category::Block),
    class(52, "Spam Content", Category::Block),
    class(53, "Prohibited Attachment", Category::Block),
    class(54, "Relaying Denied", Category::Block),
    class(60, "Auto-Reply", Category::Soft),
    class(70, "Transient Failure", Category::Soft),
    class(80, "Subscribe", Category::Admin),
    class(90, "Unsubscribe", Category::Hard),
    class(100, "Challenge-Response", Category::Soft),
];

pub const UNDETERMINED: u16 = 1;
pub const INVALID_RECIPIENT: u16 = 10;
pub const SOFT_BOUNCE: u16 = 20;
pub const DNS_FAILURE: u16 = 21;
pub const MAILBOX_FULL: u16 = 22;
pub const TOO_LARGE: u16 = 23;
pub const TIMEOUT: u16 = 24;
pub const GENERIC_BOUNCE: u16 = 40;
pub const MAIL_BLOCK: u16 = 50;
pub const SPAM_BLOCK: u16 = 51;
pub const SPAM_CONTENT: u16 = 52;
pub const PROHIBITED_ATTACHMENT: u16 = 53;
pub const RELAYING_DENIED: u16 = 54;
pub const AUTO_REPLY: u16 = 60;
pub const CHALLENGE_RESPONSE: u16 = 100;

/// What a rule looks at in the enhanced status code: its subject and
/// detail (`1.1` of `5.1.1`), or only its subject (`7` of `5.7.x`).
#[derive(Debug, Clone, Copy)]
pub enum Status {
    Any,
    Exactly(&'static str),
    Subject(&'static str),
}

/// One classification rule: it matches when the enhanced code fits
/// `status` and (if `words` is not empty) the lower-cased text contains
/// one of `words`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub status: Status,
    pub words: &'static [&'static str],
    pub code: u16,
}

const fn rule(status: Status, words: &'static [&'static str], code: u16) -> Rule {
    Rule {
        status,
        words,
        code,
    }
}

use Status::{Any, Exactly, Subject};

/// The rules, first match wins (see the module comment for the order).
pub const RULES: &[Rule] = &[
    // Expiry: ours is `554 5.4.7 [internal] exceeded max time ...`.
    rule(Exactly("4.7"), &[], TIMEOUT),
    rule(Any, &["exceeded max time", "exceeded max retries"], TIMEOUT),
    rule(
        Any,
        &[
            "out of office",
            "auto-reply",
            "autoreply",
            "automatic reply",
            "on vacation",
        ],
        AUTO_REPLY,
    ),
    rule(
        Any,
        &["challenge-response", "challenge response"],
        CHALLENGE_RESPONSE,
    ),
    rule(
        Any,
        &[
            "relay access denied",
            "relaying denied",
            "relay denied",
            "relay not permitted",
            "relaying not allowed",
            "not permitted to relay",
            "unable to relay",
            "we do not relay",
        ],
        RELAYING_DENIED,
    ),
    rule(
        Any,
        &["attachment", "prohibited file", "file type", "executable"],
        PROHIBITED_ATTACHMENT,
    ),
    rule(
        Any,
        &[
            "unsolicited",
            "looks like spam",
            "appears to be spam",
            "detected as spam",
            "identified as spam",
            "classified as spam",
            "spam content",
            "content rejected",
            "spam score",
            "probability of spam",
            "virus",
            "malware",
            "phishing",
        ],
        SPAM_CONTENT,
    ),
    rule(
        Any,
        &[
            "spamhaus",
            "spamcop",
            "barracuda",
            "sorbs",
            "blacklist",
            "blocklist",
            "block list",
            "blacklisted",
            "dnsbl",
            "rbl",
            "reputation",
            "listed",
            "spam",
        ],
        SPAM_BLOCK,
    ),
    rule(Exactly("1.1"), &[], INVALID_RECIPIENT),
    rule(Exactly("1.3"), &[], INVALID_RECIPIENT),
    rule(Exactly("1.6"), &[], INVALID_RECIPIENT),
    rule(Exactly("2.1"), &[], INVALID_RECIPIENT),
    rule(Exactly("1.2"), &[], DNS_FAILURE),
    rule(Exactly("1.10"), &[], DNS_FAILURE),
    rule(Exactly("4.4"), &[], DNS_FAILURE),
    rule(Exactly("2.2"), &[], MAILBOX_FULL),
    rule(Exactly("2.3"), &[], TOO_LARGE),
    rule(Exactly("3.4"), &[], TOO_LARGE),
    rule(Exactly("4.2"), &["timed out", "timeout"], TIMEOUT),
    rule(Subject("7"), &[], MAIL_BLOCK),
    // Words alone, for receivers without enhanced codes (or with x.0.0).
    rule(
        Any,
        &[
            "over quota",
            "quota exceeded",
            "exceeds quota",
            "mailbox full",
            "mailbox is full",
            "full mailbox",
            "insufficient storage",
            "exceeded storage",
            "mailbox size limit",
        ],
        MAILBOX_FULL,
    ),
    rule(
        Any,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "no such mailbox",
            "no such recipient",
            "recipient unknown",
            "unknown recipient",
            "invalid recipient",
            "invalid mailbox",
            "user not found",
            "recipient not found",
            "mailbox not found",
            "mailbox unavailable",
            "does not exist",
            "doesn't exist",
            "doesn't have a",
            "account disabled",
            "account has been disabled",
            "address rejected",
            "unrouteable address",
        ],
        INVALID_RECIPIENT,
    ),
    rule(
        Any,
        &[
            "too large",
            "too big",
            "message size",
            "size limit",
            "message too long",
        ],
        TOO_LARGE,
    ),
    rule(
        Any,
        &[
            "host not found",
            "domain not found",
            "no mx",
            "null mx",
            "nxdomain",
            "name service error",
            "unrouteable domain",
            "dns",
        ],
        DNS_FAILURE,
    ),
    rule(Any, &["timed out", "timeout"], TIMEOUT),
    rule(
        Any,
        &[
            "blocked",
            "denied",
            "refused",
            "policy",
            "not allowed",
            "prohibited",
            "rejected",
        ],
        MAIL_BLOCK,
    ),
];

/// The reply code and enhanced status code at the start of a reply such
/// as `550 5.1.1 user unknown` or `550-5.1.1 The email account ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyCodes<'a> {
    /// 0 when the reply does not start with three digits.
    pub code: u16,
    /// The enhanced code without its class (`1.1` of `5.1.1`), if any.
    pub status: Option<&'a str>,
}

/// Reads the codes at the start of `reply`.
pub fn reply_codes(reply: &str) -> ReplyCodes<'_> {
    let bytes = reply.as_bytes();
    let code = match bytes.get(..3) {
        Some(d) if d.iter().all(u8::is_ascii_digit) => reply[..3].parse().unwrap_or(0),
        _ => 0,
    };
    let rest = if code == 0 { reply } else { &reply[3..] };
    let rest = rest.trim_start_matches([' ', '-']);
    let token = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    let status = enhanced_status(token);
    ReplyCodes { code, status }
}

/// `class.subject.detail` with a class of 2, 4 or 5, a subject of 1 to 3
/// digits and a detail of 1 to 3 digits (RFC 3463): the part after the
/// class.
fn enhanced_status(token: &str) -> Option<&str> {
    let mut parts = token.splitn(3, '.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !matches!(class, "2" | "4" | "5") || !digits(subject, 3) || !digits(detail, 3) {
        return None;
    }
    Some(&token[2..])
}

/// Momentum's bounce classification code of a failing reply (the text of
/// a `P` line: a remote reply or our own `554 5.4.7 ...`).
pub fn classify(reply: &str) -> u16 {
    let codes = reply_codes(reply);
    let text = reply.to_ascii_lowercase();
    let fits = |status: Status| match (status, codes.status) {
        (Any, _) => true,
        (Exactly(want), Some(got)) => want == got,
        (Subject(want), Some(got)) => got.split('.').next() == Some(want),
        _ => false,
    };
    let found = RULES.iter().find(|r| {
        fits(r.status) && (r.words.is_empty() || r.words.iter().any(|w| text.contains(w)))
    });
    match found {
        Some(r) => r.code,
        None if (400..500).contains(&codes.code) => SOFT_BOUNCE,
        None if codes.status.is_some() => GENERIC_BOUNCE,
        None => UNDETERMINED,
    }
}

/// The table row of `code`, if it is one of Momentum's.
pub fn bounce_class(code: u16) -> Option<&'static BounceClass> {
    BOUNCE_CLASSES.iter().find(|c| c.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: typical refusals of big receivers land in Momentum's classes.
    /// Method: reply texts as those receivers send them, one per row.
    #[test]
    fn replies_of_big_receivers_get_momentums_classes() {
        let cases: &[(&str, u16)] = &[
            ("550 5.1.1 user unknown", 10),
            ("550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos", 10),
            ("550 5.5.0 Requested action not taken: mailbox unavailable", 10),
            ("550 Requested action not taken: mailbox unavailable", 10),
            ("554 delivery error: dd This user doesn't have a yahoo.com account", 10),
            ("550 5.2.1 The email account that you tried to reach is disabled", 10),
            ("552 5.2.2 mailbox full", 22),
            ("552-5.2.2 The email account that you tried to reach is over quota", 22),
            ("452 4.2.2 The email account that you tried to reach is over quota", 22),
            ("552 5.3.4 Message size exceeds fixed limit", 23),
            ("550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", 51),
            ("550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150)", 51),
            ("554 5.7.1 Message rejected as spam by Content Filtering", 51),
            ("550-5.7.1 Our system has detected that this message is likely unsolicited mail", 52),
            ("554 5.7.1 <x@example.com>: Relay access denied", 54),
            ("550 5.7.1 Email rejected per DMARC policy", 50),
            ("554 5.7.9 Message not accepted for policy reasons", 50),
            ("552-5.7.0 This message was blocked because it contains an attachment type not allowed", 53),
            ("554 5.4.7 [internal] exceeded max time without delivery", 24),
            ("554 5.4.7 [internal] exceeded max retries (last: 452 4.2.2 mailbox full)", 24),
            ("556 5.1.10 Recipient address has null MX", 21),
            ("550 5.4.4 Unable to route", 21),
            ("550 Host not found", 21),
            ("554 5.0.0 Service unavailable", 40),
            ("554 transaction failed", 1),
            ("421 4.3.0 please try later", 20),
        ];
        for (reply, want) in cases {
            assert_eq!(classify(reply), *want, "{reply}");
        }
    }

    #[test]
    fn reply_codes_read_the_code_and_enhanced_code() {
        assert_eq!(
            reply_codes("550-5.1.1 no"),
            ReplyCodes {
                code: 550,
                status: Some("1.1")
            }
        );
        assert_eq!(reply_codes("556 5.1.10 x").status, Some("1.10"));
        assert_eq!(reply_codes("550 user unknown").status, None);
        assert_eq!(reply_codes("5.1.1 bare").status, Some("1.1"));
        assert_eq!(reply_codes("x").code, 0);
        assert_eq!(reply_codes("550 9.1.1").status, None);
        assert_eq!(reply_codes("").code, 0);
    }

    #[test]
    fn every_rule_names_a_class_of_the_table() {
        for r in RULES {
            assert!(bounce_class(r.code).is_some(), "{}", r.code);
        }
        assert_eq!(bounce_class(22).unwrap().name, "Mailbox Full");
        assert_eq!(BOUNCE_CLASSES.len(), 20);
    }
}
