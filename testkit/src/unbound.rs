//! `Unbound`: a private unbound (the OS package) answering with fixed
//! records on a loopback port, for the MX-routed tests and the MX-routed
//! ecbench scenario. Authoritative for `test.` only: a name under `test.`
//! that is not listed is NXDOMAIN (an SOA with a 5 s minimum), anything
//! else is REFUSED, so nothing ever leaves the machine.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{file_tail, free_port, poll_until, ChildGuard, Error};

/// Where the OS package puts the server.
pub const UNBOUND_BIN: &str = "/usr/sbin/unbound";

/// A running unbound; killed on drop.
pub struct Unbound {
    port: u16,
    _child: ChildGuard,
}

impl Unbound {
    /// Starts unbound on 127.0.0.1 and a free port, its files in `dir`,
    /// answering `records` (zone-file lines such as
    /// `"a.test. 60 IN MX 10 mx.a.test."`); waits up to `timeout` for it to
    /// serve.
    pub fn start(dir: &Path, records: &[String], timeout: Duration) -> Result<Unbound, Error> {
        fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let port = free_port();
        let log = dir.join("unbound.log");
        let conf_path = dir.join("unbound.conf");
        fs::write(&conf_path, config(dir, port, records))
            .map_err(Error::io(format!("write {}", conf_path.display())))?;
        let child = Command::new(UNBOUND_BIN)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io(format!(
                "spawn {UNBOUND_BIN} (tests/install-deps)"
            )))?;
        let child = ChildGuard::new("unbound", child);
        let ready = poll_until(timeout, || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            text.contains("start of service").then_some(())
        });
        if ready.is_none() {
            return Err(Error::NotReady {
                what: "unbound".into(),
                port,
                timeout,
                tail: file_tail(&log),
                log,
            });
        }
        Ok(Unbound {
            port,
            _child: child,
        })
    }

    /// The UDP and TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `nameservers` item that points ecelerity at this server.
    pub fn nameserver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// unbound.conf: one thread, no daemonizing, chroot or privilege drop, a
/// static `test.` zone holding `records`.
fn config(dir: &Path, port: u16, records: &[String]) -> String {
    let mut conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  \
         do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{dir}\"\n  \
         pidfile: \"{dir}/unbound.pid\"\n  use-syslog: no\n  logfile: \"{dir}/unbound.log\"\n  \
         verbosity: 1\n  num-threads: 1\n  access-control: 127.0.0.0/8 allow\n  \
         local-zone: \".\" refuse\n  local-zone: \"test.\" static\n  \
         local-data: \"test. 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 5\"\n",
        dir = dir.display(),
    );
    for record in records {
        // A TXT record holds its own double-quoted strings.
        let quote = if record.contains('"') { '\'' } else { '"' };
        conf.push_str(&format!("  local-data: {quote}{record}{quote}\n"));
    }
    conf.push_str("remote-control:\n  control-enable: no\n");
    conf
}
