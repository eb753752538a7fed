//! The daemon as the tests and `ecbench` start it: where the built binaries
//! are, its command line, and `EcelerityConfig`, which renders the
//! ecelerity.conf of a relay on loopback (one ESMTP listener, a control
//! socket, the three logs, everything sent to one gateway).
//! Owns: the text of that config and the names of the files it puts in the
//! daemon's directory (spool, pid file, control socket, logs).
//! May call: std::env (the binary directory), std::process (a `Command`,
//! not spawned here).
//! Never: parse a config (that is the engine's), spawn or wait for the
//! daemon (the caller owns the child and its output files).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Name of the config file the launchers write into the daemon's directory.
pub const CONFIG_FILE_NAME: &str = "ecelerity.conf";
/// Mainlog path relative to the daemon's directory, as rendered.
pub const MAINLOG_RELATIVE: &str = "log/mainlog.ec";
/// Control socket path relative to the daemon's directory, as rendered.
pub const CONTROL_SOCKET_RELATIVE: &str = "ctl.sock";

/// Directory holding `ecelerity`, `ec_ctl`, `ec_console`, `validate_config`
/// and `ec_dump_config`: `ECELERITY_BIN_DIR` if set, else the directory of
/// the running executable (target/<profile> for `ecbench`), or the one
/// above it when that is a test's `deps` directory
/// (target/<profile>/deps/e2e-HASH).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ECELERITY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// `BIN --config CONFIG` with `dir` as its working directory (the config's
/// relative paths are relative to it) and no stdin. The caller adds output
/// files, further arguments and the process group, then spawns it.
pub fn ecelerity_command(bin: &Path, dir: &Path, config: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// An ecelerity.conf for a relay on loopback. Renders, in order: the
/// spool, pid file and hostname; `shards`; `relay_hosts`; `gateway`; each
/// of `options`; the ESMTP and control listeners; the logger; `extra`.
#[derive(Clone, Debug)]
pub struct EcelerityConfig {
    pub hostname: String,
    /// The ESMTP listener's port on 127.0.0.1.
    pub smtp_port: u16,
    /// Where all mail goes (`gateway = "127.0.0.1:PORT"`).
    pub gateway_port: u16,
    /// 0 = one shard per CPU.
    pub shards: u32,
    /// CIDRs allowed to relay.
    pub relay_hosts: Vec<String>,
    /// Further global options as (name, value), rendered `name = value`
    /// with the value verbatim (numbers bare, strings quoted by the caller).
    pub options: Vec<(String, String)>,
    /// Appended verbatim at global scope, after everything else.
    pub extra: String,
}

impl EcelerityConfig {
    /// A relay on `smtp_port` for 127.0.0.0/8 to 127.0.0.1:`gateway_port`.
    pub fn new(hostname: &str, smtp_port: u16, gateway_port: u16, shards: u32) -> EcelerityConfig {
        EcelerityConfig {
            hostname: hostname.to_string(),
            smtp_port,
            gateway_port,
            shards,
            relay_hosts: vec!["127.0.0.0/8".to_string()],
            options: Vec::new(),
            extra: String::new(),
        }
    }

    /// Add a global option (`value` verbatim).
    pub fn option(&mut self, name: &str, value: impl ToString) -> &mut EcelerityConfig {
        self.options.push((name.to_string(), value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let relay_hosts: Vec<String> = self
            .relay_hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect();
        let mut text = format!(
            "spoolbase = \"spool\"\n\
             pidfile = \"ecelerity.pid\"\n\
             hostname = \"{hostname}\"\n\
             shards = {shards}\n\
             relay_hosts = ( {relay} )\n\
             gateway = \"127.0.0.1:{gateway}\"\n",
            hostname = self.hostname,
            shards = self.shards,
            relay = relay_hosts.join(", "),
            gateway = self.gateway_port,
        );
        for (name, value) in &self.options {
            let _ = writeln!(text, "{name} = {value}");
        }
        let _ = write!(
            text,
            "ESMTP_Listener {{ Listen \"127.0.0.1:{smtp}\" {{ }} }}\n\
             Control_Listener {{ Listen \"{control}\" {{ File_Mode = 0600 }} }}\n\
             ec_logger \"ec_logger\" {{ mainlog = \"{mainlog}\" rejectlog = \"log/rejectlog.ec\" \
             paniclog = \"log/paniclog.ec\" bouncelog = \"log/bouncelog.ec\" }}\n\
             {extra}\n",
            smtp = self.smtp_port,
            control = CONTROL_SOCKET_RELATIVE,
            mainlog = MAINLOG_RELATIVE,
            extra = self.extra,
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_renders_options_in_order_between_gateway_and_listeners() {
        let mut config = EcelerityConfig::new("mta.test", 2525, 2526, 2);
        config.relay_hosts.push("10.0.0.0/8".into());
        config
            .option("retry_interval", 1)
            .option("max_retry_interval", 2);
        config.extra = "open_relay = true".into();
        let text = config.render();
        let order = [
            "hostname = \"mta.test\"",
            "shards = 2",
            "relay_hosts = ( \"127.0.0.0/8\", \"10.0.0.0/8\" )",
            "gateway = \"127.0.0.1:2526\"",
            "retry_interval = 1\nmax_retry_interval = 2\n",
            "ESMTP_Listener { Listen \"127.0.0.1:2525\" { } }",
            "Control_Listener { Listen \"ctl.sock\"",
            "mainlog = \"log/mainlog.ec\"",
            "open_relay = true\n",
        ];
        let mut at = 0;
        for piece in order {
            let found = text[at..]
                .find(piece)
                .unwrap_or_else(|| panic!("{piece} after {at}:\n{text}"));
            at += found + piece.len();
        }
    }

    #[test]
    fn command_runs_in_the_directory_with_the_config() {
        let command = ecelerity_command(
            Path::new("/bin/ecelerity"),
            Path::new("/tmp/d"),
            Path::new("e.conf"),
        );
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["--config", "e.conf"]);
        assert_eq!(command.get_current_dir(), Some(Path::new("/tmp/d")));
    }
}
