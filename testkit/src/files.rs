//! Reading what a child leaves in its log files: the tail quoted in a
//! failure message, and the complete lines of a log another process is
//! still writing.
//! Owns: nothing (reads only). May call: std::fs.
//! Never: write, truncate or lock a file.

use std::fs;
use std::path::Path;

/// Longest tail of a log file quoted in a failure message.
pub const LOG_TAIL_BYTES_MAX: usize = 4096;

/// The last `LOG_TAIL_BYTES_MAX` bytes of a file, lossily decoded, for
/// failure messages. Empty when the file cannot be read.
pub fn file_tail(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Complete lines (terminated by '\n') of a log file; a partly written last
/// line is left for the next read. Empty when the file cannot be read.
pub fn complete_lines(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_bounded_and_lines_stop_at_the_last_newline() {
        let dir = std::env::temp_dir().join(format!("testkit-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut text = "x".repeat(LOG_TAIL_BYTES_MAX);
        text.push_str("one\ntwo\npart");
        fs::write(&path, &text).unwrap();
        let tail = file_tail(&path);
        assert_eq!(tail.len(), LOG_TAIL_BYTES_MAX);
        assert!(tail.ends_with("two\npart"));
        let lines = complete_lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "two");
        assert!(file_tail(&dir.join("missing")).is_empty());
        assert!(complete_lines(&dir.join("missing")).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
