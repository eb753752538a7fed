//! Shared pieces of ecelerity's binaries: loading the configuration the way
//! every tool does (a `--config FILE`, else the embedded default) and the
//! exit codes (0 success, 1 bad input such as a bad config, 2 could not do
//! the work).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ecelerity_engine::config::Config;

/// Exit code for bad input (a config error, a bad argument).
pub const EXIT_BAD_INPUT: i32 = 1;
/// Exit code when the work could not be done (I/O, permissions, a peer).
pub const EXIT_FAILED: i32 = 2;

/// Loads `path`, or the embedded default when `None`. On error prints
/// `file:line: what is wrong` and exits with [`EXIT_BAD_INPUT`].
pub fn load_config_or_exit(path: Option<&Path>) -> Arc<Config> {
    match path {
        None => Arc::new(Config::embedded_default()),
        Some(p) => match Config::load(p) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(EXIT_BAD_INPUT);
            }
        },
    }
}

/// The control socket a tool should use: the first Control_Listener path.
pub fn control_socket(config: &Config) -> Option<PathBuf> {
    config.control_listeners().first().map(|c| c.path.clone())
}
