//! Momentum's connection stages of an outbound session, as the mainlog
//! `T`/`P` lines and the bouncelog record them.
//!
//! Owns: [`Stage`], its numeric code and its text. May call: nothing.

use std::fmt;

/// Momentum's connection stage codes (MOMENTUM.md 3.6), as logged in the
/// mainlog `T`/`P` lines and the bouncelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stage {
    NotConnected = 0,
    Idle = 1,
    DuringMailFrom = 2,
    AfterMailFrom = 3,
    DuringRcptTo = 4,
    AfterRcptTo = 5,
    DuringData = 6,
    AfterData = 7,
    SendingBody = 8,
    ReadingConfirmation = 9,
    DuringEhlo = 10,
    AfterEhlo = 11,
    ReadingBanner = 12,
    DuringRset = 13,
    AfterRset = 14,
    DuringStarttls = 15,
    AfterStarttls = 16,
    TlsHandshake = 17,
    TlsRenegotiation = 18,
    DuringXclient = 19,
    AfterXclient = 20,
    OutOfBandBounce = 21,
    Unknown = 22,
}

impl Stage {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::NotConnected => "not connected",
            Stage::Idle => "idle",
            Stage::DuringMailFrom => "during MAIL FROM",
            Stage::AfterMailFrom => "after MAIL FROM",
            Stage::DuringRcptTo => "during RCPT TO",
            Stage::AfterRcptTo => "after RCPT TO",
            Stage::DuringData => "during DATA",
            Stage::AfterData => "after DATA",
            Stage::SendingBody => "sending body",
            Stage::ReadingConfirmation => "reading confirmation",
            Stage::DuringEhlo => "during EHLO",
            Stage::AfterEhlo => "after EHLO",
            Stage::ReadingBanner => "reading banner",
            Stage::DuringRset => "during RSET",
            Stage::AfterRset => "after RSET",
            Stage::DuringStarttls => "during STARTTLS",
            Stage::AfterStarttls => "after STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::TlsRenegotiation => "TLS renegotiation",
            Stage::DuringXclient => "during XCLIENT",
            Stage::AfterXclient => "after XCLIENT",
            Stage::OutOfBandBounce => "out-of-band bounce",
            Stage::Unknown => "unknown",
        })
    }
}
