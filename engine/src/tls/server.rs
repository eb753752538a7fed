//! The server side of STARTTLS for one listener on one shard: its
//! `ServerConfig`, built from `tls_certificate` and `tls_key`, cached and
//! rebuilt when either file changes (modification time or size), looked
//! at no more than once per [`RELOAD_CHECK_MS`]. A shard owns its copy:
//! no lock per handshake, and a new certificate is served from the next
//! session after the check that saw it. A changed file that does not load
//! (half written, wrong key) keeps the last good configuration and says
//! so in the paniclog once per change.
//!
//! Owns: [`ServerTls`]. May call: the PEM readers and provider of
//! `super`, std files. Never: sockets, protocol decisions.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;

use super::{provider, read_certificates, read_key, TlsFileError, PROTOCOL_VERSIONS};

/// Least time between two looks at the certificate and key files.
pub const RELOAD_CHECK_MS: u64 = 1000;

/// What identifies a version of a file: modification time and size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A listener's TLS on one shard.
pub struct ServerTls {
    certificate: PathBuf,
    key: PathBuf,
    state: RefCell<State>,
}

struct State {
    config: Arc<ServerConfig>,
    /// The files as they were when `config` (or a failed reload) was read.
    stamps: (Stamp, Stamp),
    checked: Instant,
}

/// Builds the configuration from the two PEM files.
pub fn load(certificate: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let chain = read_certificates(certificate)?;
    let key = read_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

impl ServerTls {
    /// Loads the files now; an error stops the listener from starting.
    pub fn new(certificate: &Path, key: &Path) -> Result<ServerTls, TlsFileError> {
        let stamps = (stamp(certificate), stamp(key));
        let config = load(certificate, key)?;
        Ok(ServerTls {
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
            state: RefCell::new(State {
                config,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a handshake starting at `now`: the cached
    /// one, re-read first when a file changed since the last look (at
    /// most one look per `RELOAD_CHECK_MS`).
    pub fn config(&self, now: Instant) -> Arc<ServerConfig> {
        let mut state = self.state.borrow_mut();
        if now.saturating_duration_since(state.checked) >= Duration::from_millis(RELOAD_CHECK_MS) {
            state.checked = now;
            let stamps = (stamp(&self.certificate), stamp(&self.key));
            if stamps != state.stamps {
                state.stamps = stamps;
                match load(&self.certificate, &self.key) {
                    Ok(config) => {
                        tracing::info!(
                            "tls: reloaded {} and {}",
                            self.certificate.display(),
                            self.key.display()
                        );
                        state.config = config;
                    }
                    Err(e) => tracing::error!(
                        "tls: {} or {} changed but does not load ({e}); still serving the \
                         previous certificate",
                        self.certificate.display(),
                        self.key.display()
                    ),
                }
            }
        }
        state.config.clone()
    }
}
