//! Finding header fields in a received message's header section (RFC
//! 5322 2.2), so the engine can read a field and leave it out of what it
//! spools (`binding_header`).
//!
//! Owns: the header-section scan ([`field_ranges`]) and a field's value
//! ([`field_value`]). May call: nothing. Never: I/O, rewriting anything
//! but what the caller copies.
//!
//! The section ends at the first empty line, or at the first line that is
//! neither a field nor the continuation of one (the body starts there, as
//! Postfix's cleanup reads it).

use std::ops::Range;

/// Appends to `found` the byte range of every field of `message`'s header
/// section named `name` (case-insensitive): from the start of its name to
/// the end of its last folded line, CRLF included.
pub fn field_ranges(message: &[u8], name: &str, found: &mut Vec<Range<usize>>) {
    assert!(!name.is_empty() && !name.contains(':'));
    let mut at = 0;
    // The field being read, if it is one of ours: where it started.
    let mut open: Option<usize> = None;
    while at < message.len() {
        let end = line_end(message, at);
        let line = &message[at..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(start) = open.take() {
                found.push(start..at);
            }
            match field_name(line) {
                Some(field) if field.eq_ignore_ascii_case(name.as_bytes()) => open = Some(at),
                Some(_) => {}
                None => return,
            }
        }
        at = end;
    }
    if let Some(start) = open {
        found.push(start..message.len());
    }
}

/// The value of a whole field as [`field_ranges`] found it: what follows
/// the colon, without the whitespace and line ends around it.
pub fn field_value(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':');
    let value = &field[colon.map_or(field.len(), |c| c + 1)..];
    value.trim_ascii()
}

/// The index just past the LF ending the line that starts at `at` (or the
/// message's end).
fn line_end(message: &[u8], at: usize) -> usize {
    match message[at..].iter().position(|&b| b == b'\n') {
        Some(lf) => at + lf + 1,
        None => message.len(),
    }
}

/// The field name of `line` if it starts a field: printable ASCII up to
/// the colon (obsolete syntax allows blanks before it). `None` for the
/// empty line and for anything else.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let valid = !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic());
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(message: &str, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        field_ranges(message.as_bytes(), name, &mut found);
        found.into_iter().map(|r| message[r].to_string()).collect()
    }

    #[test]
    fn fields_are_found_by_name_in_any_case_with_their_folded_lines() {
        let message = "From: a@b\r\nx-binding: mkt1\r\nSubject: hi\r\n\
                       X-BINDING:\r\n\tmkt2\r\nTo: c@d\r\n\r\nX-Binding: body\r\n";
        assert_eq!(
            ranges(message, "X-Binding"),
            ["x-binding: mkt1\r\n", "X-BINDING:\r\n\tmkt2\r\n"]
        );
        assert_eq!(ranges(message, "Cc"), Vec::<String>::new());
        assert_eq!(field_value(b"x-binding: mkt1\r\n"), b"mkt1");
        assert_eq!(field_value(b"X-BINDING:\r\n\tmkt2\r\n"), b"mkt2");
        assert_eq!(field_value(b"X-Binding : \r\n"), b"");
    }

    #[test]
    fn the_section_ends_at_the_empty_line_or_at_a_line_that_is_no_field() {
        // The last field runs to the end of a message without a body.
        assert_eq!(
            ranges("X-Binding: a\r\n", "x-binding"),
            ["X-Binding: a\r\n"]
        );
        assert_eq!(ranges("X-Binding: a", "x-binding"), ["X-Binding: a"]);
        // Nothing is a field after a line without a colon, or after one
        // whose name holds a space.
        assert_eq!(
            ranges("Subject: s\r\nnot a field\r\nX-Binding: a\r\n", "X-Binding"),
            Vec::<String>::new()
        );
        assert_eq!(
            ranges("Bad name: s\r\nX-Binding: a\r\n", "X-Binding"),
            Vec::<String>::new()
        );
        assert_eq!(
            ranges("\r\nX-Binding: a\r\n", "X-Binding"),
            Vec::<String>::new()
        );
        // A prefix of the name is another field.
        assert_eq!(
            ranges("X-Bindings: a\r\n", "X-Binding"),
            Vec::<String>::new()
        );
        assert_eq!(ranges("", "X-Binding"), Vec::<String>::new());
    }
}
