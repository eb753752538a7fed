//! What a policy answers for one phase: go on, refuse with a reply, or
//! refuse and close. A reply may come from a scriptlet, so it is checked
//! ([`Rejection::check`]) before it reaches the wire; a bad one is an
//! operating error the session answers with `451 4.3.0`, never a panic.
//!
//! Owns: [`Verdict`], [`Rejection`], [`ReplyError`] and the rules of a
//! well-formed policy reply.
//! May call: std only.
//! Never: I/O; deciding what the session does with a bad reply (that is
//! the session's).

use std::borrow::Cow;
use std::fmt;

/// Longest reply text a policy may give, in bytes. RFC 5321 section
/// 4.5.3.1.5 caps a reply line at 512 bytes with its code and CRLF; the
/// session adds the code, the enhanced code and an address before the text.
pub const REPLY_TEXT_BYTES_MAX: usize = 256;

/// What a phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the command (Momentum's `VALIDATE_CONT`).
    Continue,
    /// Refuse the command with this reply; the session stays open unless
    /// the code is 421 (Momentum's `vctx:set_code`).
    Reject(Rejection),
    /// Refuse with this reply, then close the session (Momentum's
    /// `vctx:disconnect`).
    Disconnect(Rejection),
}

/// An SMTP reply a policy chose: basic code, enhanced code, text. Built
/// without checks (a scriptlet may build anything); the session calls
/// [`Rejection::check`] before it writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Must be 4xx or 5xx.
    pub code: u16,
    /// RFC 3463 enhanced status code such as `5.7.1`, of the same class
    /// as `code`.
    pub enhanced: Cow<'static, str>,
    /// At most REPLY_TEXT_BYTES_MAX bytes. Control and non-ASCII
    /// characters are replaced on the wire, so a CR or LF cannot forge a
    /// second reply.
    pub text: Cow<'static, str>,
}

/// Why a policy's reply cannot be sent. The text quotes the bad value so
/// the scriptlet's author can find it in the paniclog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Not a 4xx or 5xx code.
    CodeNotFailure {
        code: u16,
    },
    /// Not `class.subject.detail` with class 4 or 5 and one to three
    /// digits for subject and detail (RFC 3463 section 2).
    EnhancedMalformed {
        enhanced: String,
    },
    /// The enhanced class differs from the first digit of the code.
    EnhancedClassMismatch {
        code: u16,
        enhanced: String,
    },
    TextTooLong {
        text_bytes: usize,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::CodeNotFailure { code } => {
                write!(f, "reply code {code} is not a 4xx or 5xx code")
            }
            ReplyError::EnhancedMalformed { enhanced } => write!(
                f,
                "enhanced status code `{}` is not class.subject.detail (e.g. 5.7.1)",
                enhanced.escape_debug()
            ),
            ReplyError::EnhancedClassMismatch { code, enhanced } => write!(
                f,
                "enhanced status code `{enhanced}` is of another class than reply code {code}"
            ),
            ReplyError::TextTooLong { text_bytes } => write!(
                f,
                "reply text of {text_bytes} bytes is over {REPLY_TEXT_BYTES_MAX} bytes"
            ),
        }
    }
}

impl std::error::Error for ReplyError {}

impl Rejection {
    /// A reply as given; see [`Rejection::check`].
    pub fn new(
        code: u16,
        enhanced: impl Into<Cow<'static, str>>,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            code,
            enhanced: enhanced.into(),
            text: text.into(),
        }
    }

    /// Whether this reply may be sent as it is.
    pub fn check(&self) -> Result<(), ReplyError> {
        if !(400..600).contains(&self.code) {
            return Err(ReplyError::CodeNotFailure { code: self.code });
        }
        let class =
            enhanced_class(&self.enhanced).ok_or_else(|| ReplyError::EnhancedMalformed {
                enhanced: self.enhanced.chars().take(REPLY_TEXT_BYTES_MAX).collect(),
            })?;
        if u16::from(class) != self.code / 100 {
            return Err(ReplyError::EnhancedClassMismatch {
                code: self.code,
                enhanced: self.enhanced.to_string(),
            });
        }
        if self.text.len() > REPLY_TEXT_BYTES_MAX {
            return Err(ReplyError::TextTooLong {
                text_bytes: self.text.len(),
            });
        }
        Ok(())
    }
}

/// The class (4 or 5) of a failure enhanced code `class.subject.detail`,
/// or `None` when it is malformed.
fn enhanced_class(enhanced: &str) -> Option<u8> {
    let mut parts = enhanced.split('.');
    let class = match parts.next()? {
        "4" => 4,
        "5" => 5,
        _ => return None,
    };
    for _ in 0..2 {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    parts.next().is_none().then_some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_failure_replies_pass_the_check() {
        for (code, enhanced) in [(550, "5.7.1"), (451, "4.3.0"), (421, "4.123.999")] {
            assert_eq!(Rejection::new(code, enhanced, "text").check(), Ok(()));
        }
    }

    #[test]
    fn bad_replies_are_errors_that_quote_the_bad_value() {
        let cases: [(u16, &str, &str); 9] = [
            (250, "2.0.0", "reply code 250 is not a 4xx or 5xx code"),
            (600, "5.0.0", "reply code 600 is not a 4xx or 5xx code"),
            (550, "", "enhanced status code `` is not"),
            (550, "5.7", "enhanced status code `5.7` is not"),
            (550, "5.7.1.2", "`5.7.1.2` is not"),
            (550, "2.7.1", "`2.7.1` is not"),
            (550, "5.1234.1", "`5.1234.1` is not"),
            (550, "5.x.1\r\n", "`5.x.1\\r\\n` is not"),
            (
                451,
                "5.7.1",
                "`5.7.1` is of another class than reply code 451",
            ),
        ];
        for (code, enhanced, message) in cases {
            let error = Rejection::new(code, enhanced, "text").check().unwrap_err();
            assert!(
                error.to_string().contains(message),
                "{code} {enhanced}: {error}"
            );
        }
        let long = "x".repeat(REPLY_TEXT_BYTES_MAX + 1);
        assert_eq!(
            Rejection::new(550, "5.7.1", long).check(),
            Err(ReplyError::TextTooLong {
                text_bytes: REPLY_TEXT_BYTES_MAX + 1
            })
        );
    }
}
