//! 8-bit to 7-bit conversion of an outbound message for a server that does
//! not offer 8BITMIME (RFC 6152 section 3: convert, or do not send; we
//! convert, as Postfix does). Each text or other leaf MIME part with 8-bit
//! octets (Content-Transfer-Encoding 8bit, 7bit or none) is re-encoded as
//! quoted-printable (RFC 2045 6.7) and its Content-Transfer-Encoding
//! rewritten; multiparts are walked part by part; the top level gets
//! `MIME-Version: 1.0` (and a `Content-Type` naming the charset) when it
//! has none. Every other byte of the message is kept as it was.
//!
//! What cannot be converted safely is refused with an [`Unconvertible`]
//! reason (the client makes that a `554 5.6.3` for each recipient): 8-bit
//! header text (that needs SMTPUTF8 or RFC 2047, not a body encoding),
//! a `message/*` part holding 8-bit octets (RFC 2046 5.2 allows it no
//! encoding), `binary`, 8-bit octets inside base64 or quoted-printable,
//! a multipart without a boundary, 8-bit octets in a preamble or epilogue,
//! nesting past [`MIME_DEPTH_MAX`].
//!
//! Written by hand: MIME libraries parse into a tree and write it back in
//! their own form, while a relay must leave every byte it has no reason to
//! touch exactly as it came (signatures, the sender's formatting); this
//! needs only header fields, boundaries and a quoted-printable encoder.
//!
//! Owns: [`downgrade`], [`has_8bit`]. May call: std only. Never: I/O.

use std::fmt;

/// Deepest MIME nesting converted (the top level is depth 0). Postfix's
/// `mime_nesting_limit` is 100; real mail rarely goes past 5.
pub const MIME_DEPTH_MAX: usize = 32;
/// Largest 8-bit body converted. The conversion walks the MIME structure
/// of the whole message in memory, so a delivery converting holds the
/// body and its conversion at once; a larger 8-bit body for a server
/// without 8BITMIME is refused (`Unconvertible::TooLarge`) rather than
/// read whole. 7-bit bodies of any size need no conversion and stream.
pub const DOWNGRADE_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Longest quoted-printable line, soft-break "=" included (RFC 2045 6.7).
pub const QP_LINE_BYTES_MAX: usize = 76;

/// Why a message cannot be sent to a server without 8BITMIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconvertible {
    HeaderText,
    MessagePart,
    Binary,
    EncodedPart,
    NoBoundary,
    PreambleOrEpilogue,
    TooDeep,
    /// Over DOWNGRADE_BODY_BYTES_MAX.
    TooLarge,
}

impl fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            Unconvertible::HeaderText => "8-bit header text",
            Unconvertible::MessagePart => "8-bit data in a message/* part",
            Unconvertible::Binary => "binary content",
            Unconvertible::EncodedPart => "8-bit data in a base64 or quoted-printable part",
            Unconvertible::NoBoundary => "a multipart without a boundary",
            Unconvertible::PreambleOrEpilogue => "8-bit data outside the MIME parts",
            Unconvertible::TooDeep => "MIME parts nested too deep",
            Unconvertible::TooLarge => "a body over 8 MiB (DOWNGRADE_BODY_BYTES_MAX)",
        };
        write!(
            f,
            "8-bit message cannot be converted to 7-bit for a server without 8BITMIME: {why}"
        )
    }
}

/// True when any octet has its high bit set.
pub fn has_8bit(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b >= 0x80)
}

/// Writes into `out` (cleared first) `message` with every 8-bit part made
/// quoted-printable. Call only for a message with 8-bit octets.
pub fn downgrade(message: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
    out.clear();
    out.reserve(message.len() + message.len() / 4);
    convert_entity(message, Level::Top, DefaultType::Text, 0, out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Part,
}

/// The type of an entity without Content-Type (RFC 2046 5.1.1, 5.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultType {
    Text,
    Message,
}

/// What the header section says about an entity.
#[derive(Debug, Default)]
struct Fields {
    /// Lower-cased "type/subtype"; None without Content-Type.
    content_type: Option<String>,
    boundary: Option<Vec<u8>>,
    /// Lower-cased mechanism; None without the field.
    encoding: Option<String>,
    mime_version: bool,
}

fn convert_entity(
    entity: &[u8],
    level: Level,
    default: DefaultType,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unconvertible> {
    if depth > MIME_DEPTH_MAX {
        return Err(Unconvertible::TooDeep);
    }
    let (header, separator, body) = split_header(entity);
    if has_8bit(header) {
        return Err(Unconvertible::HeaderText);
    }
    if !has_8bit(body) {
        out.extend_from_slice(entity);
        return Ok(());
    }
    let fields = read_fields(header);
    let media = fields
        .content_type
        .clone()
        .unwrap_or_else(|| match default {
            DefaultType::Text => "text/plain".to_string(),
            DefaultType::Message => "message/rfc822".to_string(),
        });
    match fields.encoding.as_deref() {
        None | Some("7bit") | Some("8bit") => {}
        Some("binary") => return Err(Unconvertible::Binary),
        Some(_) => return Err(Unconvertible::EncodedPart),
    }
    if media.starts_with("message/") {
        return Err(Unconvertible::MessagePart);
    }
    let eol = line_end_of(header);
    if media.starts_with("multipart/") {
        let Some(boundary) = fields.boundary.as_deref() else {
            return Err(Unconvertible::NoBoundary);
        };
        // Everything inside will be 7-bit: say so, where it said 8bit.
        let encoding = fields.encoding.is_some().then_some("7bit");
        write_header(header, encoding, out);
        if level == Level::Top && !fields.mime_version {
            put_field(out, "MIME-Version: 1.0", eol);
        }
        out.extend_from_slice(separator);
        let inner = if media == "multipart/digest" {
            DefaultType::Message
        } else {
            DefaultType::Text
        };
        return convert_multipart(body, boundary, inner, depth, out);
    }
    write_header(header, Some("quoted-printable"), out);
    if level == Level::Top && !fields.mime_version {
        put_field(out, "MIME-Version: 1.0", eol);
    }
    if fields.content_type.is_none() {
        let charset = if std::str::from_utf8(body).is_ok() {
            "utf-8"
        } else {
            // RFC 1428: 8-bit text of unknown character set.
            "unknown-8bit"
        };
        put_field(
            out,
            &format!("Content-Type: text/plain; charset={charset}"),
            eol,
        );
    }
    out.extend_from_slice(separator);
    encode_quoted_printable(body, out);
    Ok(())
}

/// Splits an entity into its header section (each field with its line
/// end), the empty line after it, and the body. An entity without an
/// empty line is all header.
fn split_header(entity: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut start = 0;
    while start < entity.len() {
        let end = entity[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(entity.len(), |lf| start + lf + 1);
        let line = &entity[start..end];
        if line == b"\r\n" || line == b"\n" {
            return (&entity[..start], line, &entity[end..]);
        }
        start = end;
    }
    (entity, &[], &[])
}

/// The line end the header section uses ("\r\n" unless it uses bare LF).
fn line_end_of(header: &[u8]) -> &'static [u8] {
    match header.iter().position(|&b| b == b'\n') {
        Some(lf) if lf == 0 || header[lf - 1] != b'\r' => b"\n",
        _ => b"\r\n",
    }
}

/// The fields of a header section, each as (name, raw bytes with its
/// continuation lines and line ends).
fn header_fields(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let mut field_start = 0;
    let mut start = 0;
    while start < header.len() {
        let end = header[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |lf| start + lf + 1);
        let continues = start > 0 && matches!(header[start], b' ' | b'\t');
        if !continues && start > 0 {
            fields.push(field_at(&header[field_start..start]));
            field_start = start;
        }
        start = end;
    }
    if field_start < header.len() {
        fields.push(field_at(&header[field_start..]));
    }
    fields
}

fn field_at(raw: &[u8]) -> (&[u8], &[u8]) {
    let name_end = raw.iter().position(|&b| b == b':').unwrap_or(0);
    (raw[..name_end].trim_ascii(), raw)
}

fn is_named(name: &[u8], wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted.as_bytes())
}

/// The value of a raw field: after the colon, unfolded, trimmed.
fn field_value(raw: &[u8]) -> String {
    let colon = raw
        .iter()
        .position(|&b| b == b':')
        .map_or(raw.len(), |c| c + 1);
    let unfolded: Vec<u8> = raw[colon..]
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(unfolded.trim_ascii()).into_owned()
}

fn read_fields(header: &[u8]) -> Fields {
    let mut fields = Fields::default();
    for (name, raw) in header_fields(header) {
        if is_named(name, "Content-Type") && fields.content_type.is_none() {
            let value = field_value(raw);
            let (media, params) = value.split_once(';').unwrap_or((&value, ""));
            fields.content_type = Some(media.trim().to_ascii_lowercase());
            fields.boundary = parameter(params, "boundary").map(String::into_bytes);
        } else if is_named(name, "Content-Transfer-Encoding") && fields.encoding.is_none() {
            fields.encoding = Some(field_value(raw).to_ascii_lowercase());
        } else if is_named(name, "MIME-Version") {
            fields.mime_version = true;
        }
    }
    fields
}

/// A parameter of a Content-Type value, unquoted (RFC 2045 5.1).
fn parameter(params: &str, wanted: &str) -> Option<String> {
    let mut rest = params;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(';').trim();
        let after = rest[eq + 1..].trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let close = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..close], quoted.get(close + 1..).unwrap_or(""))
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        if name.eq_ignore_ascii_case(wanted) && !value.is_empty() {
            return Some(value.to_string());
        }
        rest = next
            .trim_start_matches(|c: char| c != ';')
            .trim_start_matches(';');
    }
    None
}

/// Copies the header section, leaving out every Content-Transfer-Encoding
/// field and ending with `encoding` (when given) instead.
fn write_header(header: &[u8], encoding: Option<&str>, out: &mut Vec<u8>) {
    let eol = line_end_of(header);
    for (name, raw) in header_fields(header) {
        if is_named(name, "Content-Transfer-Encoding") {
            continue;
        }
        out.extend_from_slice(raw);
        if !raw.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
    }
    if let Some(encoding) = encoding {
        put_field(out, &format!("Content-Transfer-Encoding: {encoding}"), eol);
    }
}

fn put_field(out: &mut Vec<u8>, field: &str, eol: &[u8]) {
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(eol);
}

/// Converts each part of a multipart body; the preamble, the delimiter
/// lines and the epilogue are copied (and must be 7-bit).
fn convert_multipart(
    body: &[u8],
    boundary: &[u8],
    inner: DefaultType,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unconvertible> {
    // (line start, line end after its LF, closing) of each delimiter line.
    let mut delimiters: Vec<(usize, usize, bool)> = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |lf| start + lf + 1);
        if let Some(closing) = delimiter_kind(&body[start..end], boundary) {
            delimiters.push((start, end, closing));
            if closing {
                break;
            }
        }
        start = end;
    }
    let Some(&(first, _, _)) = delimiters.first() else {
        // No part at all: nothing is MIME structure, so nothing to convert.
        return Err(Unconvertible::PreambleOrEpilogue);
    };
    if has_8bit(&body[..first]) {
        return Err(Unconvertible::PreambleOrEpilogue);
    }
    out.extend_from_slice(&body[..first]);
    for (index, &(line_start, line_end, closing)) in delimiters.iter().enumerate() {
        out.extend_from_slice(&body[line_start..line_end]);
        let next = delimiters.get(index + 1).map(|d| d.0);
        if closing {
            if has_8bit(&body[line_end..]) {
                return Err(Unconvertible::PreambleOrEpilogue);
            }
            out.extend_from_slice(&body[line_end..]);
            return Ok(());
        }
        let part_end = next.unwrap_or(body.len());
        // The line end before a delimiter belongs to the delimiter.
        let content_end = match &body[line_end..part_end] {
            [.., b'\r', b'\n'] if next.is_some() => part_end - 2,
            [.., b'\n'] if next.is_some() => part_end - 1,
            _ => part_end,
        };
        convert_entity(
            &body[line_end..content_end],
            Level::Part,
            inner,
            depth + 1,
            out,
        )?;
        out.extend_from_slice(&body[content_end..part_end]);
    }
    Ok(())
}

/// Some(closing) when `line` is a delimiter line of `boundary`: "--"
/// boundary, "--" more for the closing one, then optional white space.
fn delimiter_kind(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (closing, rest) = match rest.strip_prefix(b"--") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    rest.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .then_some(closing)
}

/// Quoted-printable (RFC 2045 6.7) of `body`: CRLF or LF line ends become
/// CRLF hard breaks; '=', octets outside printable ASCII, a lone CR, and
/// white space before a line end are encoded; lines are cut with soft
/// breaks to at most QP_LINE_BYTES_MAX. A body without a final line end
/// gets none.
pub fn encode_quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut line_bytes = 0;
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        let line_end = match byte {
            b'\n' => 1,
            b'\r' if body.get(i + 1) == Some(&b'\n') => 2,
            _ => 0,
        };
        if line_end > 0 {
            out.extend_from_slice(b"\r\n");
            line_bytes = 0;
            i += line_end;
            continue;
        }
        let before_line_end = match body.get(i + 1) {
            None => true,
            Some(b'\n') => true,
            Some(b'\r') => body.get(i + 2) == Some(&b'\n'),
            Some(_) => false,
        };
        let literal = match byte {
            b' ' | b'\t' => !before_line_end,
            b'=' => false,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        if line_bytes + width > QP_LINE_BYTES_MAX - 1 {
            out.extend_from_slice(b"=\r\n");
            line_bytes = 0;
        }
        if literal {
            out.push(byte);
        } else {
            out.extend_from_slice(&[b'=', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]]);
        }
        line_bytes += width;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_quoted_printable(encoded: &[u8]) -> Vec<u8> {
        let hex = |b: u8| (b as char).to_digit(16).unwrap() as u8;
        let mut out = Vec::new();
        let mut i = 0;
        while i < encoded.len() {
            match encoded[i] {
                b'=' if encoded[i + 1..].starts_with(b"\r\n") => i += 3,
                b'=' => {
                    out.push(hex(encoded[i + 1]) << 4 | hex(encoded[i + 2]));
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn qp(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_quoted_printable(body, &mut out);
        out
    }

    fn converted(message: &str) -> Result<String, Unconvertible> {
        let mut out = Vec::new();
        downgrade(message.as_bytes(), &mut out)?;
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn quoted_printable_round_trips_and_keeps_lines_short() {
        let cases: Vec<Vec<u8>> = vec![
            b"plain ascii\r\n".to_vec(),
            "Gr\u{fc}\u{df}e = 100 \u{20ac}\r\n".as_bytes().to_vec(),
            b"trailing space \r\ntrailing tab\t\r\nlast space ".to_vec(),
            b"lone\rcr and \x00 nul\r\n".to_vec(),
            "\u{e9}".repeat(200).into_bytes(),
            b"x".repeat(300),
            b"=".repeat(100),
            b".dot\r\n.\r\n".to_vec(),
        ];
        for body in cases {
            let encoded = qp(&body);
            assert!(encoded.is_ascii());
            for line in encoded.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(
                    line.len() <= QP_LINE_BYTES_MAX,
                    "{:?}",
                    String::from_utf8_lossy(line)
                );
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            }
            assert_eq!(decode_quoted_printable(&encoded), body, "{body:?}");
        }
        assert_eq!(qp(b"a=b \r\n"), b"a=3Db=20\r\n");
        // A bare LF becomes a hard CRLF break.
        assert_eq!(qp(b"a\nb"), b"a\r\nb");
    }

    #[test]
    fn a_single_part_text_body_gets_qp_and_mime_headers() {
        let out = converted(
            "Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9}\r\n",
        )
        .unwrap();
        assert_eq!(
            out,
            "Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\ncaf=C3=A9\r\n"
        );
        // No MIME headers at all: the charset is named from the bytes.
        let out = converted("Subject: hi\r\n\r\ncaf\u{e9}\r\n").unwrap();
        assert!(out.contains("MIME-Version: 1.0\r\n"), "{out}");
        assert!(
            out.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{out}"
        );
        let mut latin1 = Vec::new();
        downgrade(b"Subject: x\r\n\r\ncaf\xe9\r\n", &mut latin1).unwrap();
        let latin1 = String::from_utf8(latin1).unwrap();
        assert!(latin1.contains("charset=unknown-8bit"), "{latin1}");
        assert!(latin1.ends_with("\r\n\r\ncaf=E9\r\n"), "{latin1}");
        // A kept MIME-Version is not doubled; a folded CTE goes whole.
        let out = converted(
            "MIME-Version: 1.0\r\nContent-Transfer-Encoding:\r\n 8bit\r\nSubject: s\r\n\r\n\u{e9}",
        )
        .unwrap();
        assert_eq!(out.matches("MIME-Version").count(), 1);
        assert!(!out.contains("8bit"), "{out}");
        assert!(
            out.starts_with("MIME-Version: 1.0\r\nSubject: s\r\n"),
            "{out}"
        );
    }

    #[test]
    fn multipart_parts_are_converted_one_by_one_and_the_rest_kept() {
        let message = "MIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
            Content-Transfer-Encoding: 8bit\r\n\r\n\
            preamble\r\n\
            --b1\r\nContent-Type: text/plain\r\n\r\nascii part\r\n\
            --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>\u{e9}t\u{e9}</p>\r\n\
            --b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n\
            --b2\r\n\r\nna\u{ef}ve\r\n--b2--\r\n\
            --b1--\r\nepilogue\r\n";
        let out = converted(message).unwrap();
        let expected = "MIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
            Content-Transfer-Encoding: 7bit\r\n\r\n\
            preamble\r\n\
            --b1\r\nContent-Type: text/plain\r\n\r\nascii part\r\n\
            --b1\r\nContent-Type: text/html; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>=C3=A9t=C3=A9</p>\r\n\
            --b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n\
            --b2\r\nContent-Transfer-Encoding: quoted-printable\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\r\nna=C3=AFve\r\n--b2--\r\n\
            --b1--\r\nepilogue\r\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn what_cannot_be_converted_safely_is_refused_with_a_reason() {
        let cases = [
            ("Subject: caf\u{e9}\r\n\r\nbody \u{e9}\r\n", Unconvertible::HeaderText),
            (
                "Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\n\u{e9}\r\n",
                Unconvertible::MessagePart,
            ),
            (
                "Content-Transfer-Encoding: binary\r\n\r\n\u{e9}\r\n",
                Unconvertible::Binary,
            ),
            (
                "Content-Transfer-Encoding: base64\r\n\r\n\u{e9}\r\n",
                Unconvertible::EncodedPart,
            ),
            (
                "Content-Type: multipart/mixed\r\n\r\n\u{e9}\r\n",
                Unconvertible::NoBoundary,
            ),
            (
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n\u{e9}\r\n--b\r\n\r\nx\r\n--b--\r\n",
                Unconvertible::PreambleOrEpilogue,
            ),
            (
                "Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\nSubject: x\r\n\r\n\u{e9}\r\n--b--\r\n",
                Unconvertible::MessagePart,
            ),
        ];
        for (message, why) in cases {
            assert_eq!(converted(message), Err(why), "{message:?}");
        }
        let mut deep = String::new();
        for level in 0..=MIME_DEPTH_MAX {
            deep.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=l{level}\r\n\r\n--l{level}\r\n"
            ));
        }
        deep.push_str("\r\n\u{e9}\r\n");
        assert_eq!(converted(&deep), Err(Unconvertible::TooDeep));
        assert!(Unconvertible::Binary.to_string().contains("binary content"));
    }
}
