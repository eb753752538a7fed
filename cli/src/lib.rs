//! Shared pieces of ecelerity's binaries: loading the configuration the way
//! every tool does (a `--config FILE`, else the embedded default) and the
//! exit codes (0 success, 1 bad input such as a bad config, 2 could not do
//! the work).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ecelerity_engine::config::Config;

pub mod sendmail;
pub mod systemd;

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

/// The control socket a tool should use: the first Control_Listener Unix
/// socket path, else the first TCP console (`host:port`).
pub fn control_socket(config: &Config) -> Option<PathBuf> {
    let listeners = config.control_listeners();
    listeners
        .iter()
        .find(|c| c.tcp.is_none())
        .or_else(|| listeners.first())
        .map(|c| c.path.clone())
}

/// Dropping root for the `Security { user group }` stanza.
pub mod privileges {
    use std::ffi::CString;
    use std::path::Path;

    /// A resolved user and group to run as.
    #[derive(Debug, Clone, Copy)]
    pub struct RunAs {
        pub uid: libc::uid_t,
        pub gid: libc::gid_t,
    }

    /// Resolves `user` (and `group`, else the user's primary group).
    pub fn resolve(user: &str, group: Option<&str>) -> Result<RunAs, String> {
        let name = CString::new(user).map_err(|_| format!("bad user name `{user}`"))?;
        // SAFETY: getpwnam returns a pointer into static storage or null;
        // we copy the two ids out before any other call.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(format!("Security: no such user `{user}`"));
        }
        let (uid, mut gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        if let Some(group) = group {
            let gname = CString::new(group).map_err(|_| format!("bad group name `{group}`"))?;
            // SAFETY: as above, for getgrnam.
            let gr = unsafe { libc::getgrnam(gname.as_ptr()) };
            if gr.is_null() {
                return Err(format!("Security: no such group `{group}`"));
            }
            gid = unsafe { (*gr).gr_gid };
        }
        Ok(RunAs { uid, gid })
    }

    /// Gives `path` (and, for a folder, everything below it) to `who`, so
    /// the daemon can still write there once it is no longer root.
    pub fn chown_tree(path: &Path, who: RunAs) -> Result<(), String> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        std::os::unix::fs::lchown(path, Some(who.uid), Some(who.gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for entry in entries.flatten() {
                chown_tree(&entry.path(), who)?;
            }
        }
        Ok(())
    }

    /// Drops every privilege for good: supplementary groups, then the
    /// group, then the user (glibc applies each to every thread).
    pub fn drop_to(who: RunAs) -> Result<(), String> {
        // SAFETY: plain libc calls; each result is checked.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
            }
            if libc::setgid(who.gid) != 0 {
                return Err(format!(
                    "setgid {}: {}",
                    who.gid,
                    std::io::Error::last_os_error()
                ));
            }
            if libc::setuid(who.uid) != 0 {
                return Err(format!(
                    "setuid {}: {}",
                    who.uid,
                    std::io::Error::last_os_error()
                ));
            }
            if libc::setuid(0) == 0 {
                return Err("privileges could be regained after setuid".into());
            }
        }
        Ok(())
    }
}
