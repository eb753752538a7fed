//! The `Received:` header the engine prepends to each message before
//! spooling (RFC 5321 section 4.4), and the RFC 5322 date it ends with.
//! Written here because it is a few dozen lines and std has no calendar.
//!
//! Owns: the header's text and folding, the date arithmetic.
//! May call: nothing.
//! Never: clocks (the caller passes the time), I/O.

use std::net::IpAddr;

/// What a Received header says (RFC 5321 section 4.4).
#[derive(Debug, Clone, Copy)]
pub struct ReceivedFields<'a> {
    pub helo: &'a str,
    pub peer_ip: IpAddr,
    pub hostname: &'a str,
    pub version: &'a str,
    /// "with ESMTP" rather than "with SMTP" (RFC 3848).
    pub esmtp: bool,
    /// The session ran over TLS: "with ESMTPS" (RFC 3848) and a comment
    /// naming the protocol and cipher.
    pub tls: Option<&'a super::TlsInfo>,
    pub queue_id: &'a str,
    /// Named in a `for` clause; pass it only for a single-recipient message
    /// so one copy does not reveal the other recipients.
    pub recipient: Option<&'a str>,
    /// Time of reception, seconds since the Unix epoch.
    pub unix_secs: i64,
    /// MAIL carried SMTPUTF8: "with UTF8ESMTP" (RFC 6531 section 3.7.3).
    pub smtputf8: bool,
    /// The client authenticated (AUTH): "with ESMTPA" (RFC 3848).
    pub authenticated: bool,
}

/// The Received header the engine prepends before spooling, folded and
/// CRLF-terminated:
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example (ecelerity 0.1.0) with ESMTP id 0A1B2C
///         for <a@example.com>; Tue, 14 Nov 2023 22:13:20 +0000
/// ```
///
/// Continuation lines start with a tab. The peer is an RFC 5321 address
/// literal (`[IPv6:...]` for IPv6).
pub fn received_header(fields: &ReceivedFields<'_>) -> String {
    use std::fmt::Write as _;
    let mut header = String::with_capacity(160 + fields.helo.len());
    let protocol = match (fields.esmtp, fields.tls.is_some()) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, true) => "SMTPS",
        (false, false) => "SMTP",
    };
    let auth = if fields.authenticated && fields.esmtp {
        "A"
    } else {
        ""
    };
    // SMTPUTF8 is an ESMTP parameter, so it never goes with plain SMTP.
    let utf8 = if fields.smtputf8 && fields.esmtp {
        "UTF8"
    } else {
        ""
    };
    let _ = write!(header, "Received: from {} (", fields.helo);
    match fields.peer_ip.to_canonical() {
        IpAddr::V4(v4) => {
            let _ = write!(header, "[{v4}]");
        }
        IpAddr::V6(v6) => {
            let _ = write!(header, "[IPv6:{v6}]");
        }
    }
    let _ = write!(
        header,
        ")\r\n\tby {} (ecelerity {}) with {utf8}{protocol}{auth}",
        fields.hostname, fields.version
    );
    if let Some(tls) = fields.tls {
        let _ = write!(
            header,
            "\r\n\t(version={} cipher={})",
            tls.protocol, tls.cipher
        );
    }
    let _ = write!(header, " id {}", fields.queue_id);
    match fields.recipient {
        Some(rcpt) => {
            let _ = write!(header, "\r\n\tfor <{rcpt}>; ");
        }
        None => header.push_str(";\r\n\t"),
    }
    write_rfc5322_date(&mut header, fields.unix_secs);
    header.push_str("\r\n");
    header
}

/// Latest time [`write_rfc5322_date`] renders; later times are clamped,
/// as are times before the epoch, so the year always has four digits.
pub const RFC5322_DATE_UNIX_SECS_MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Append `unix_secs` as an RFC 5322 date-time in UTC, e.g.
/// `Tue, 14 Nov 2023 22:13:20 +0000`. Written here because it is twenty
/// lines and std has no calendar.
pub fn write_rfc5322_date(out: &mut String, unix_secs: i64) {
    use std::fmt::Write as _;
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_secs.clamp(0, RFC5322_DATE_UNIX_SECS_MAX);
    let days = secs / 86_400;
    let day_secs = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    let _ = write!(
        out,
        "{weekday}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    );
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count
/// since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March = 0
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_dates_are_formatted_in_utc() {
        let cases: [(i64, &str); 6] = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 +0000"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 +0000"),
            (-5, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (i64::MAX, "Fri, 31 Dec 9999 23:59:59 +0000"),
        ];
        for (secs, text) in cases {
            let mut out = String::new();
            write_rfc5322_date(&mut out, secs);
            assert_eq!(out, text, "{secs}");
        }
    }

    #[test]
    fn received_header_is_folded_and_names_a_single_recipient() {
        let mut fields = ReceivedFields {
            helo: "client.test",
            peer_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mx.test",
            version: "0.1.0",
            esmtp: true,
            tls: None,
            queue_id: "0A1B",
            recipient: Some("b@x.test"),
            unix_secs: 1_700_000_000,
            smtputf8: false,
            authenticated: false,
        };
        assert_eq!(
            received_header(&fields),
            "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (ecelerity 0.1.0) with ESMTP id 0A1B\r\n\tfor <b@x.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        let tls = crate::smtp::TlsInfo {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        fields.tls = Some(&tls);
        assert_eq!(
            received_header(&fields),
            "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (ecelerity 0.1.0) with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384) id 0A1B\r\n\tfor <b@x.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        fields.tls = None;
        fields.recipient = None;
        fields.esmtp = false;
        fields.peer_ip = "2001:db8::1".parse().unwrap();
        assert_eq!(
            received_header(&fields),
            "Received: from client.test ([IPv6:2001:db8::1])\r\n\tby mx.test (ecelerity 0.1.0) with SMTP id 0A1B;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn smtputf8_makes_the_protocol_utf8esmtp() {
        let tls = crate::smtp::TlsInfo {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        let mut fields = ReceivedFields {
            helo: "client.test",
            peer_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mx.test",
            version: "0.1.0",
            esmtp: true,
            tls: None,
            queue_id: "0A1B",
            recipient: Some("j\u{f6}rg@b\u{fc}cher.test"),
            unix_secs: 1_700_000_000,
            smtputf8: true,
            authenticated: false,
        };
        assert!(received_header(&fields).contains(" with UTF8ESMTP id 0A1B"));
        assert!(received_header(&fields).contains("for <j\u{f6}rg@b\u{fc}cher.test>;"));
        fields.tls = Some(&tls);
        assert!(received_header(&fields).contains(" with UTF8ESMTPS\r\n"));
        fields.authenticated = true;
        assert!(received_header(&fields).contains(" with UTF8ESMTPSA\r\n"));
        fields.tls = None;
        assert!(received_header(&fields).contains(" with UTF8ESMTPA id "));
        fields.smtputf8 = false;
        assert!(received_header(&fields).contains(" with ESMTPA id "));
    }
}
