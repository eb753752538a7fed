//! A private Postfix instance on 127.0.0.1 that relays everything to
//! `[127.0.0.1]:relay_port`: the strict peer of the end-to-end tests and
//! the reference MTA of `ecbench`. Its config, queue and data directories
//! live under the directory it is given; it logs to `DIR/maillog`.
//! Owns: those directories and files, the instance's master process.
//! May call: /usr/sbin/postfix (`start`, `stop`, `abort`), `chown` (Postfix
//! insists that its data directory belongs to `mail_owner`), libc `kill`
//! on its master when `postfix abort` does not end it.
//! Never: the system's own Postfix instance, its config or its queue.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::files::file_tail;
use crate::net::wait_for_greeting;
use crate::process::{poll_every, process_alive, ChildGuard};
use crate::Error;

/// The `postfix` command (Debian's layout).
pub const POSTFIX_BIN: &str = "/usr/sbin/postfix";
/// The SMTP server daemon, which the instance cannot run without.
const POSTFIX_SMTPD: &str = "/usr/lib/postfix/sbin/smtpd";
/// `postconf`, which `postfix start` runs.
const POSTCONF_BIN: &str = "/usr/sbin/postconf";
/// How long `postfix start` may take.
const POSTFIX_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `stop` looks whether the master has gone.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What differs between one private instance and another.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    /// smtpd listens on 127.0.0.1:`port`.
    pub port: u16,
    /// Every message is relayed to `[127.0.0.1]:relay_port`.
    pub relay_port: u16,
    pub hostname: String,
    /// Further main.cf lines (`name = value\n` each), after the defaults;
    /// Postfix takes the last setting of a parameter.
    pub main_cf_extra: String,
}

/// A started instance; stopped on drop (`postfix stop`, then `postfix
/// abort` and SIGKILL of the master if that does not end it).
pub struct Postfix {
    dir: PathBuf,
    config_dir: PathBuf,
    port: u16,
    master_pid: libc::pid_t,
    stopped: bool,
    stop_timeout: Duration,
}

impl Postfix {
    /// True when the Postfix binaries are installed; callers skip (and say
    /// why) when they are not.
    pub fn available() -> bool {
        Path::new(POSTFIX_BIN).is_file()
            && Path::new(POSTFIX_SMTPD).is_file()
            && Path::new(POSTCONF_BIN).is_file()
    }

    /// Write the configuration under `dir`, start the instance and wait up
    /// to `ready_timeout` until it answers 220. `stop_timeout` is how long
    /// a stop may take before it turns into an abort.
    pub fn start(
        dir: &Path,
        config: &PostfixConfig,
        ready_timeout: Duration,
        stop_timeout: Duration,
    ) -> Result<Postfix, Error> {
        if !Postfix::available() {
            return Err(Error::PostfixMissing);
        }
        let config_dir = dir.join("etc");
        let queue_dir = dir.join("queue");
        let data_dir = dir.join("data");
        for d in [&config_dir, &queue_dir, &data_dir] {
            fs::create_dir_all(d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        let main_cf = main_cf(dir, &queue_dir, &data_dir, config);
        let main_cf_path = config_dir.join("main.cf");
        fs::write(&main_cf_path, main_cf)
            .map_err(Error::io(format!("write {}", main_cf_path.display())))?;
        let master_cf_path = config_dir.join("master.cf");
        fs::write(&master_cf_path, master_cf(config.port))
            .map_err(Error::io(format!("write {}", master_cf_path.display())))?;
        let _ = Command::new("chown")
            .arg("-R")
            .arg("postfix")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Output to a file, not a pipe: the master it leaves running could
        // hold a pipe open.
        let start_log = dir.join("postfix-start.log");
        let log = File::create(&start_log)
            .map_err(Error::io(format!("create {}", start_log.display())))?;
        let log_copy = log.try_clone().map_err(Error::io("clone the start log"))?;
        let child = Command::new(POSTFIX_BIN)
            .arg("-c")
            .arg(&config_dir)
            .arg("start")
            .stdin(Stdio::null())
            .stdout(log_copy)
            .stderr(log)
            .spawn()
            .map_err(Error::io(format!("spawn {POSTFIX_BIN} start")))?;
        let maillog = dir.join("maillog");
        let mut start = ChildGuard::new("postfix start", child);
        let status = start.wait_timeout(POSTFIX_COMMAND_TIMEOUT);
        match status {
            Some(status) if status.success() => {}
            Some(status) => {
                return Err(Error::PostfixStart {
                    status,
                    output: file_tail(&start_log),
                    maillog: file_tail(&maillog),
                })
            }
            None => {
                return Err(Error::NotReady {
                    what: "`postfix start`".into(),
                    port: config.port,
                    timeout: POSTFIX_COMMAND_TIMEOUT,
                    log: start_log.clone(),
                    tail: file_tail(&start_log),
                })
            }
        }
        let pid_file = queue_dir.join("pid/master.pid");
        let master_pid = poll_every(STOP_POLL_INTERVAL, ready_timeout, || {
            fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .ok_or_else(|| Error::PostfixNoPid {
            pid_file: pid_file.clone(),
            timeout: ready_timeout,
            maillog: file_tail(&maillog),
        })?;
        // From here on a failure still stops the master (on drop).
        let postfix = Postfix {
            dir: dir.to_path_buf(),
            config_dir,
            port: config.port,
            master_pid,
            stopped: false,
            stop_timeout,
        };
        wait_for_greeting("postfix", config.port, None, &maillog, ready_timeout)?;
        Ok(postfix)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The master process: the root of the instance's process tree.
    pub fn master_pid(&self) -> u32 {
        self.master_pid as u32
    }

    pub fn maillog_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    /// The log so far (postlogd writes it; may lag a line for a moment).
    pub fn maillog_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.maillog_path()).unwrap_or_default()).into_owned()
    }

    /// `postfix stop`, wait for the master to go, `postfix abort` and
    /// SIGKILL when it has not within the stop timeout. Returns how long
    /// it took and whether the stop was graceful; a second call does nothing.
    pub fn stop(&mut self) -> (Duration, bool) {
        if self.stopped {
            return (Duration::ZERO, true);
        }
        self.stopped = true;
        let started = Instant::now();
        self.postfix_command("stop");
        let pid = self.master_pid;
        let gone = poll_every(STOP_POLL_INTERVAL, self.stop_timeout, || {
            (!process_alive(pid)).then_some(())
        });
        let took = started.elapsed();
        if gone.is_none() {
            eprintln!("testkit: postfix master {pid} ignored `postfix stop`; aborting");
            self.postfix_command("abort");
            if process_alive(pid) {
                // SAFETY: kill(2) on the master our instance wrote to its pid file.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        (took, gone.is_some())
    }

    fn postfix_command(&self, verb: &str) {
        let _ = Command::new(POSTFIX_BIN)
            .arg("-c")
            .arg(&self.config_dir)
            .arg(verb)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// main.cf: no local delivery, relay for 127.0.0.0/8 only, no TLS, a log
/// file of its own, then the caller's lines.
fn main_cf(dir: &Path, queue_dir: &Path, data_dir: &Path, config: &PostfixConfig) -> String {
    format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         mail_owner = postfix\n\
         setgid_group = postdrop\n\
         myhostname = {hostname}\n\
         mydestination =\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         relayhost = [127.0.0.1]:{relay_port}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject\n\
         in_flow_delay = 0\n\
         smtp_tls_security_level = none\n\
         smtpd_tls_security_level = none\n\
         biff = no\n\
         maillog_file_prefixes = {dir}\n\
         maillog_file = {dir}/maillog\n\
         alias_maps =\n\
         alias_database =\n\
         local_recipient_maps =\n\
         {extra}",
        queue = queue_dir.display(),
        data = data_dir.display(),
        dir = dir.display(),
        hostname = config.hostname,
        relay_port = config.relay_port,
        extra = config.main_cf_extra,
    )
}

/// master.cf: smtpd on 127.0.0.1:`port` instead of :25, the stock services
/// otherwise, and postlogd for `maillog_file`.
fn master_cf(port: u16) -> String {
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         pickup    unix  n       -       n       60      1       pickup\n\
         cleanup   unix  n       -       n       -       0       cleanup\n\
         qmgr      unix  n       -       n       300     1       qmgr\n\
         tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n\
         rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
         bounce    unix  -       -       n       -       0       bounce\n\
         defer     unix  -       -       n       -       0       bounce\n\
         trace     unix  -       -       n       -       0       bounce\n\
         verify    unix  -       -       n       -       1       verify\n\
         flush     unix  n       -       n       1000?   0       flush\n\
         proxymap  unix  -       -       n       -       -       proxymap\n\
         smtp      unix  -       -       n       -       -       smtp\n\
         relay     unix  -       -       n       -       -       smtp\n\
         showq     unix  n       -       n       -       -       showq\n\
         error     unix  -       -       n       -       -       error\n\
         retry     unix  -       -       n       -       -       error\n\
         discard   unix  -       -       n       -       -       discard\n\
         local     unix  -       n       n       -       -       local\n\
         anvil     unix  -       -       n       -       1       anvil\n\
         scache    unix  -       -       n       -       1       scache\n\
         postlog   unix-dgram n  -       n       -       1       postlogd\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_cf_relays_to_the_port_and_ends_with_the_callers_lines() {
        let config = PostfixConfig {
            port: 2525,
            relay_port: 2526,
            hostname: "postfix.test".into(),
            main_cf_extra: "in_flow_delay = 1s\n".into(),
        };
        let text = main_cf(
            Path::new("/d"),
            Path::new("/d/queue"),
            Path::new("/d/data"),
            &config,
        );
        assert!(text.contains("relayhost = [127.0.0.1]:2526\n"));
        assert!(text.contains("myhostname = postfix.test\n"));
        assert!(text.contains("maillog_file = /d/maillog\n"));
        assert!(text.ends_with("in_flow_delay = 1s\n"));
        assert!(master_cf(2525).starts_with("127.0.0.1:2525 inet n - n - - smtpd\n"));
    }

    #[test]
    fn a_private_instance_starts_greets_and_stops() {
        if !Postfix::available() {
            eprintln!("skipped: postfix is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("testkit-postfix-{}", std::process::id()));
        let config = PostfixConfig {
            port: crate::free_port(),
            relay_port: crate::free_port(),
            hostname: "postfix.test".into(),
            main_cf_extra: String::new(),
        };
        let timeout = Duration::from_secs(60);
        let mut postfix = Postfix::start(&dir, &config, timeout, timeout).unwrap();
        assert!(crate::smtp_banner_ok(postfix.port()));
        let pid = postfix.master_pid() as libc::pid_t;
        assert!(process_alive(pid));
        let (_, graceful) = postfix.stop();
        assert!(graceful);
        assert!(!process_alive(pid));
        drop(postfix);
        let _ = fs::remove_dir_all(&dir);
    }
}
