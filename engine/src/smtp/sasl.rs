//! SMTP AUTH (RFC 4954) mechanisms PLAIN (RFC 4616) and LOGIN, both
//! sides, as pure functions: base64 responses in, credentials out (server),
//! credentials in, base64 responses out (client).
//!
//! Owns: [`Mechanism`], [`Credentials`], the decoding of a client's
//! responses and its errors ([`SaslError`], each naming its reply), the
//! encoding of ours.
//! May call: std, `base64`. Never: session state, password files, I/O.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Longest user name or password we take from a client, in bytes. RFC 4616
/// allows 255 octets for each; a longer one is refused as malformed.
pub const CREDENTIAL_BYTES_MAX: usize = 255;

/// The `334` challenge of LOGIN asking for the user name ("Username:").
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// The `334` challenge of LOGIN asking for the password ("Password:").
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// The mechanism named (any case), or `None` for one we do not speak.
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// A user name and password given by a client. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why a client's AUTH response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 section 4).
    #[error("Authentication aborted")]
    Cancelled,
    /// Not base64, or base64 of something the mechanism cannot read.
    #[error("Error: malformed authentication response")]
    Malformed,
}

impl SaslError {
    /// Basic and enhanced code: RFC 4954 answers a cancel with 501 5.7.0
    /// and a response that cannot be decoded with 501 5.5.2.
    pub fn reply(self) -> (u16, &'static str) {
        match self {
            SaslError::Cancelled => (501, "5.7.0"),
            SaslError::Malformed => (501, "5.5.2"),
        }
    }
}

/// Decodes one response line (CRLF stripped): `*` cancels, `=` is the
/// empty initial response (RFC 4954 section 4).
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches([' ', '\t']);
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Malformed)
}

/// The credentials of a decoded PLAIN message `authzid NUL authcid NUL
/// passwd`. An authorization identity other than the user itself (acting
/// for someone else) is refused as malformed: we grant no such right.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        user: credential_text(user)?,
        password: credential_text(password)?,
    })
}

/// A user name or password: UTF-8 without control characters, 1 to
/// CREDENTIAL_BYTES_MAX bytes.
pub fn credential_text(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.is_empty() || bytes.len() > CREDENTIAL_BYTES_MAX {
        return Err(SaslError::Malformed);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
    if text.chars().any(char::is_control) {
        return Err(SaslError::Malformed);
    }
    Ok(text.to_string())
}

/// The base64 PLAIN initial response for `user`/`password` (client side).
pub fn encode_plain(user: &str, password: &str) -> String {
    let mut message = Vec::with_capacity(user.len() + password.len() + 2);
    message.push(0);
    message.extend_from_slice(user.as_bytes());
    message.push(0);
    message.extend_from_slice(password.as_bytes());
    STANDARD.encode(message)
}

/// `text` in base64 (a LOGIN response, client side).
pub fn encode(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn plain_round_trips_and_accepts_an_authzid_equal_to_the_user() {
        let response = encode_plain("alice", "s3cret pass");
        let message = decode_response(&response).unwrap();
        assert_eq!(parse_plain(&message), Ok(creds("alice", "s3cret pass")));
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Ok(creds("alice", "pw")),
            "authzid = authcid is the same identity"
        );
    }

    #[test]
    fn plain_refuses_malformed_messages() {
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0alice\0",
            b"\0\0pw",
            b"\0alice\0pw\0extra",
            b"bob\0alice\0pw",
            b"\0al\x01ice\0pw",
            b"\0alice\0\xff\xfe",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
        let long = format!("\0{}\0pw", "u".repeat(CREDENTIAL_BYTES_MAX + 1));
        assert_eq!(parse_plain(long.as_bytes()), Err(SaslError::Malformed));
    }

    #[test]
    fn responses_decode_cancel_and_refuse_bad_base64() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("="), Ok(Vec::new()));
        assert_eq!(decode_response("YWxpY2U="), Ok(b"alice".to_vec()));
        assert_eq!(decode_response("YWxpY2U= "), Ok(b"alice".to_vec()));
        for bad in ["YWxpY2U", "!!!!", "YW xp", "YWxpY2U==="] {
            assert_eq!(decode_response(bad), Err(SaslError::Malformed), "{bad}");
        }
        assert_eq!(SaslError::Cancelled.reply(), (501, "5.7.0"));
        assert_eq!(SaslError::Malformed.reply(), (501, "5.5.2"));
    }

    #[test]
    fn login_challenges_are_the_usual_prompts_and_debug_hides_the_password() {
        assert_eq!(
            decode_response(LOGIN_USERNAME_CHALLENGE).unwrap(),
            b"Username:"
        );
        assert_eq!(
            decode_response(LOGIN_PASSWORD_CHALLENGE).unwrap(),
            b"Password:"
        );
        assert_eq!(encode("alice"), "YWxpY2U=");
        let shown = format!("{:?}", creds("alice", "topsecret"));
        assert!(shown.contains("alice") && !shown.contains("topsecret"));
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LOGIN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }
}
