//! The message a transmission's inline content makes: RFC 5322 headers
//! and a MIME body (text, html, inline images, attachments), built once
//! per transmission; each recipient's message is its own few header lines
//! (To, Message-ID) in front of the shared rest.
//!
//! Owns: the MIME layout, quoted-printable and base64 bodies, RFC 2047
//! encoded words for non-ASCII header text. May call: `base64`. Never: I/O.
//!
//! Layout: text alone or html alone is a single part; both are
//! multipart/alternative; inline images put the html in a
//! multipart/related with them; attachments wrap everything in a
//! multipart/mixed. Text parts are quoted-printable, binary parts base64
//! at 76 columns: no line is over 78 bytes, and a boundary (`=_` ...) can
//! never occur inside an encoded part.

use std::fmt::Write as _;

use base64::Engine as _;

use super::transmission::{Address, Attachment, Inline};

/// Longest encoded line of a body part (RFC 2045's 76).
pub const ENCODED_LINE_BYTES_MAX: usize = 76;

/// The shared part of every recipient's message: headers after To and
/// Message-ID, the blank line, and the body.
pub fn build_shared(c: &Inline, date: &str, boundary_seed: &str) -> Vec<u8> {
    let from = mailbox(&c.from);
    let headers: Vec<(&str, &str)> = c
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    build(
        &Parts {
            from: &from,
            subject: &c.subject,
            reply_to: c.reply_to.as_deref(),
            date,
            headers: &headers,
            text: c.text.as_deref().map(str::as_bytes),
            html: c.html.as_deref().map(str::as_bytes),
            inline_images: &c.inline_images,
            attachments: &c.attachments,
        },
        boundary_seed,
    )
}

/// What one message is made of (one recipient's rendering, or content
/// shared by all).
pub struct Parts<'a> {
    /// The From field's value (`mailbox`).
    pub from: &'a str,
    pub subject: &'a str,
    pub reply_to: Option<&'a str>,
    pub date: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub text: Option<&'a [u8]>,
    pub html: Option<&'a [u8]>,
    pub inline_images: &'a [Attachment],
    pub attachments: &'a [Attachment],
}

/// Headers after To and Message-ID, the blank line, and the MIME body.
pub fn build(c: &Parts<'_>, boundary_seed: &str) -> Vec<u8> {
    let mut out = String::new();
    let _ = write!(out, "From: {}\r\n", c.from);
    let _ = write!(out, "Subject: {}\r\n", header_text(c.subject));
    if let Some(r) = c.reply_to {
        let _ = write!(out, "Reply-To: {}\r\n", header_text(r));
    }
    let _ = write!(out, "Date: {}\r\n", c.date);
    for (name, value) in c.headers {
        let _ = write!(out, "{name}: {}\r\n", header_text(value));
    }
    out.push_str("MIME-Version: 1.0\r\n");
    let mut n = 0;
    let mut next_boundary = || {
        n += 1;
        format!("=_ec_{boundary_seed}_{n}")
    };
    let body = match (c.text, c.html) {
        (Some(t), None) => leaf("text/plain; charset=UTF-8", t, true),
        (None, Some(h)) => html_part(h, c.inline_images, &mut next_boundary),
        (Some(t), Some(h)) => {
            let b = next_boundary();
            let parts = [
                leaf("text/plain; charset=UTF-8", t, true),
                html_part(h, c.inline_images, &mut next_boundary),
            ];
            multipart("alternative", &b, &parts)
        }
        (None, None) => unreachable!("validation requires text or html"),
    };
    let body = if c.attachments.is_empty() {
        body
    } else {
        let b = next_boundary();
        let mut parts = vec![body];
        parts.extend(c.attachments.iter().map(|a| file_part(a, "attachment")));
        multipart("mixed", &b, &parts)
    };
    out.push_str(&body);
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn html_part(html: &[u8], images: &[Attachment], next: &mut impl FnMut() -> String) -> String {
    let part = leaf("text/html; charset=UTF-8", html, true);
    if images.is_empty() {
        return part;
    }
    let b = next();
    let mut parts = vec![part];
    parts.extend(images.iter().map(|i| file_part(i, "inline")));
    multipart("related", &b, &parts)
}

/// A part's headers, blank line and encoded body (ending in CRLF).
fn leaf(content_type: &str, data: &[u8], text: bool) -> String {
    let mut out = format!("Content-Type: {content_type}\r\n");
    if text {
        out.push_str("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        out.push_str(&quoted_printable(data));
    } else {
        out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        out.push_str(&base64_lines(data));
    }
    out
}

fn file_part(a: &Attachment, disposition: &str) -> String {
    let mut out = format!(
        "Content-Type: {}; name=\"{}\"\r\n",
        a.content_type,
        param_text(&a.name)
    );
    if disposition == "inline" {
        let _ = write!(out, "Content-ID: <{}>\r\n", param_text(&a.name));
    }
    let _ = write!(
        out,
        "Content-Disposition: {disposition}; filename=\"{}\"\r\n",
        param_text(&a.name)
    );
    out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    out.push_str(&base64_lines(&a.data));
    out
}

fn multipart(kind: &str, boundary: &str, parts: &[String]) -> String {
    let mut out = format!("Content-Type: multipart/{kind}; boundary=\"{boundary}\"\r\n\r\n");
    // The line break before a delimiter belongs to it (RFC 2046 5.1.1):
    // a part's own last line break is kept by writing another.
    for p in parts {
        let _ = write!(out, "--{boundary}\r\n{p}\r\n");
    }
    let _ = write!(out, "--{boundary}--\r\n");
    out
}

/// Base64 in lines of [`ENCODED_LINE_BYTES_MAX`], each ending CRLF.
pub fn base64_lines(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for chunk in encoded.as_bytes().chunks(ENCODED_LINE_BYTES_MAX) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// Quoted-printable (RFC 2045 6.7) of text whose line ends may be LF or
/// CRLF: hard line breaks become CRLF, soft breaks keep lines within 76,
/// trailing spaces and tabs are encoded. Ends with CRLF only when the text
/// ends with a line break.
pub fn quoted_printable(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() + data.len() / 8 + 2);
    let mut col = 0;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        if b == b'\n' {
            out.push_str("\r\n");
            col = 0;
            i += 1;
            continue;
        }
        let at_line_end = matches!(data.get(i + 1), None | Some(b'\n'))
            || (data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n'));
        let literal = match b {
            b' ' | b'\t' => !at_line_end,
            // A dot opening a line is encoded: no relay can mistake it.
            b'.' => col != 0,
            b'=' => false,
            b => b.is_ascii_graphic(),
        };
        let width = if literal { 1 } else { 3 };
        if col + width > ENCODED_LINE_BYTES_MAX - 1 {
            out.push_str("=\r\n");
            col = 0;
        }
        if literal {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
        col += width;
        i += 1;
    }
    out
}

/// Header text as is when it is printable ASCII, else one RFC 2047
/// encoded word per up to 45 bytes of UTF-8 (whole characters).
pub fn header_text(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// A parameter value inside quotes (validation kept `"`, `\` and line
/// breaks out); non-ASCII as an encoded word, which mail clients read.
fn param_text(text: &str) -> String {
    header_text(text)
}

/// `Name <email>` (the name quoted, or encoded when not ASCII), or the
/// address alone.
pub fn mailbox(a: &Address) -> String {
    match a.name.as_deref().filter(|n| !n.is_empty()) {
        None => a.email.clone(),
        Some(name) if name.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{}>", a.email)
        }
        Some(name) => format!("{} <{}>", header_text(name), a.email),
    }
}

/// One recipient's message: To and Message-ID, then the shared rest.
pub fn message_for(to: &str, message_id: &str, shared: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(shared.len() + to.len() + message_id.len() + 32);
    out.extend_from_slice(b"To: ");
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(b"\r\nMessage-ID: <");
    out.extend_from_slice(message_id.as_bytes());
    out.extend_from_slice(b">\r\n");
    out.extend_from_slice(shared);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline() -> Inline {
        Inline {
            from: Address {
                email: "me@x.example".into(),
                name: Some("Me \"Boss\"".into()),
            },
            subject: "Grüße".into(),
            text: Some("line one\nline two  \n".into()),
            html: None,
            reply_to: None,
            headers: vec![("X-Foo".into(), "bar".into())],
            attachments: vec![],
            inline_images: vec![],
        }
    }

    #[test]
    fn text_alone_is_one_quoted_printable_part() {
        let m = String::from_utf8(build_shared(
            &inline(),
            "Thu, 03 Dec 2026 22:00:00 +0000",
            "1",
        ))
        .unwrap();
        assert_eq!(
            m,
            "From: \"Me \\\"Boss\\\"\" <me@x.example>\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
             Date: Thu, 03 Dec 2026 22:00:00 +0000\r\nX-Foo: bar\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
             line one\r\nline two =20\r\n"
        );
    }

    #[test]
    fn text_html_images_and_attachments_nest_as_mail_clients_expect() {
        let mut c = inline();
        c.html = Some("<p>hi <img src=\"cid:logo.png\"></p>".into());
        c.inline_images = vec![Attachment {
            name: "logo.png".into(),
            content_type: "image/png".into(),
            data: vec![0x89, b'P', b'N', b'G'],
        }];
        c.attachments = vec![Attachment {
            name: "a.bin".into(),
            content_type: "application/octet-stream".into(),
            data: (0..=255u8).collect(),
        }];
        let m = String::from_utf8(build_shared(&c, "d", "7")).unwrap();
        let mixed = m.find("multipart/mixed; boundary=\"=_ec_7_3\"").unwrap();
        let alt = m
            .find("multipart/alternative; boundary=\"=_ec_7_1\"")
            .unwrap();
        let related = m.find("multipart/related; boundary=\"=_ec_7_2\"").unwrap();
        assert!(mixed < alt && alt < related, "{m}");
        assert!(m.contains(
            "Content-ID: <logo.png>\r\nContent-Disposition: inline; filename=\"logo.png\""
        ));
        assert!(m.contains("Content-Disposition: attachment; filename=\"a.bin\""));
        assert!(m.ends_with("--=_ec_7_3--\r\n"), "{m}");
        assert!(m.split("\r\n").all(|l| l.len() <= 78), "{m}");
    }

    #[test]
    fn quoted_printable_wraps_escapes_and_keeps_dots_safe() {
        let long = "a".repeat(100);
        let qp = quoted_printable(long.as_bytes());
        assert!(qp.split("\r\n").all(|l| l.len() <= 76), "{qp}");
        assert_eq!(qp.replace("=\r\n", ""), long);
        assert_eq!(
            quoted_printable(b"a=b\tc \r\n.\n"),
            "a=3Db\tc=20\r\n=2E\r\n"
        );
        assert_eq!(quoted_printable("é".as_bytes()), "=C3=A9");
    }
}
