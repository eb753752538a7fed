//! The engagement-tracking secret: one per daemon, in
//! `<spoolbase>/tracking_key` (64 hex digits, mode 0600), made from the
//! system's randomness the first time the daemon starts and kept across
//! restarts, so links in mail already sent keep working. Generation seals
//! tokens with it (`msggen::tracking`), the tracking endpoints open them.
//!
//! Owns: that file. May call: `ring` (randomness), `keys` (the atomic
//! write). Never: a shard's state; read once, at start.

use std::path::Path;
use std::sync::OnceLock;

use ecelerity_msggen::tracking::TrackingKey;

/// The file under the spool base.
pub const TRACKING_KEY_FILE: &str = "tracking_key";
/// Bytes of a new secret.
pub const TRACKING_SECRET_BYTES: usize = 32;

static KEY: OnceLock<TrackingKey> = OnceLock::new();

/// Reads (or first creates) the secret under `spoolbase`. Called once at
/// start, before the shards run; a file that cannot be read or made stops
/// the start.
pub fn load_at_start(spoolbase: &Path) -> Result<&'static TrackingKey, String> {
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let path = spoolbase.join(TRACKING_KEY_FILE);
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).ok_or_else(|| {
            format!(
                "{}: not a tracking secret (64 hex digits expected)",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; TRACKING_SECRET_BYTES];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| "no randomness for the tracking secret".to_string())?;
            let text = format!("{}\n", hex(&secret));
            super::keys::write_atomically(&path, text.as_bytes())
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
            secret.to_vec()
        }
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let key = TrackingKey::new(&secret).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(KEY.get_or_init(|| key))
}

/// The secret read at start; `None` before [`load_at_start`] ran (unit
/// tests of other rooms).
pub fn key() -> Option<&'static TrackingKey> {
    KEY.get()
}

fn parse(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() != TRACKING_SECRET_BYTES * 2 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_through_its_file_text() {
        let secret: Vec<u8> = (0..TRACKING_SECRET_BYTES as u8).collect();
        assert_eq!(parse(&format!("{}\n", hex(&secret))), Some(secret));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(&"zz".repeat(TRACKING_SECRET_BYTES)), None);
    }
}
