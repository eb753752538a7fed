//! DATA transparency on the way out (RFC 5321 4.5.2): the encoder that
//! turns a spooled body into the bytes sent after DATA; and the BDAT
//! framing (RFC 3030) of a body sent in chunks as it is.
//!
//! Owns: [`BodyEncoder`] (streaming, chunk by chunk), [`encode_body`]
//! (a whole body) and [`bdat_chunk`]. May call: nothing. Never: I/O.

/// DATA transparency (RFC 5321 4.5.2) for a body streamed in chunks: the
/// output is CRLF text that any receiver, however strict, parses as exactly
/// the input: a bare CR or LF becomes CRLF, a '.' opening a line is
/// doubled, the last line gets a CRLF, then ".\r\n" ends the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyEncoder {
    /// The next byte opens a line (the output so far ends with CRLF, or is
    /// empty and follows the DATA command's CRLF).
    at_line_start: bool,
    /// The last input byte was CR, already written as CRLF: an LF next is
    /// its pair and is dropped.
    after_cr: bool,
}

/// Bytes `BodyEncoder::finish` writes at most.
pub const BODY_TRAILER_BYTES_MAX: usize = 5;

impl Default for BodyEncoder {
    fn default() -> Self {
        BodyEncoder::new()
    }
}

impl BodyEncoder {
    pub fn new() -> BodyEncoder {
        BodyEncoder {
            at_line_start: true,
            after_cr: false,
        }
    }

    /// Exact bytes `encode_chunk(chunk)` would append now.
    pub fn encoded_len(&self, chunk: &[u8]) -> usize {
        let mut probe = *self;
        let mut counter = ByteCounter(0);
        probe.run(chunk, &mut counter);
        counter.0
    }

    /// Appends the encoding of `chunk`, reserving exactly what it needs.
    pub fn encode_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.encoded_len(chunk));
        self.run(chunk, out);
    }

    /// Appends the missing final CRLF, if any, and the terminating ".\r\n".
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }

    fn run<S: ByteSink>(&mut self, chunk: &[u8], sink: &mut S) {
        // Bytes chunk[run_start..i] are plain and written in one piece.
        let mut run_start = 0;
        for (i, &byte) in chunk.iter().enumerate() {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    run_start = i + 1;
                    continue;
                }
            }
            match byte {
                b'\r' | b'\n' => {
                    sink.put(&chunk[run_start..i]);
                    sink.put(b"\r\n");
                    run_start = i + 1;
                    self.at_line_start = true;
                    self.after_cr = byte == b'\r';
                }
                b'.' if self.at_line_start => {
                    sink.put(&chunk[run_start..i]);
                    sink.put(b".");
                    // The '.' itself opens the next run.
                    run_start = i;
                    self.at_line_start = false;
                }
                _ => self.at_line_start = false,
            }
        }
        sink.put(&chunk[run_start..]);
    }
}

/// Encodes a whole body for DATA into `out`, ".\r\n" included, reserving
/// once.
pub fn encode_body(body: &[u8], out: &mut Vec<u8>) {
    let mut encoder = BodyEncoder::new();
    out.reserve(encoder.encoded_len(body) + BODY_TRAILER_BYTES_MAX);
    encoder.run(body, out);
    encoder.finish(out);
}

/// Most bytes of the command line `bdat_chunk` puts before a chunk:
/// `BDAT `, 20 digits, ` LAST`, CRLF.
pub const BDAT_COMMAND_BYTES_MAX: usize = 5 + 20 + 5 + 2;

/// Appends one BDAT chunk: `BDAT <len>[ LAST]` and CRLF, then `chunk` as
/// it is (BDAT needs no transparency: the size says where it ends).
pub fn bdat_chunk(chunk: &[u8], last: bool, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.reserve(BDAT_COMMAND_BYTES_MAX + chunk.len());
    let marker = if last { " LAST" } else { "" };
    let _ = write!(out, "BDAT {}{marker}\r\n", chunk.len());
    out.extend_from_slice(chunk);
}

trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
}

impl ByteSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct ByteCounter(usize);

impl ByteSink for ByteCounter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_chunks_carry_their_bytes_unchanged() {
        let mut out = Vec::new();
        bdat_chunk(b".\r\nbare\n\xff", false, &mut out);
        bdat_chunk(b"", true, &mut out);
        assert_eq!(out, b"BDAT 9\r\n.\r\nbare\n\xffBDAT 0 LAST\r\n");
        out.clear();
        bdat_chunk(b"end", true, &mut out);
        assert_eq!(out, b"BDAT 3 LAST\r\nend");
    }
}
