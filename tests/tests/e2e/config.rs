//! Configuration errors as the operator meets them: the daemon and
//! `validate_config` name the file and line and exit 1.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ecelerity_tests::{bin, run, Daemon, TempDir, TestConfig, CONFIG_FILE_NAME};

/// Line of the config on which the typo is placed (1-based).
const TYPO_LINE: usize = 4;

/// A valid test config with `max_outbond_connections` (a typo) on TYPO_LINE.
fn config_with_typo(config: &TestConfig) -> String {
    config_with_line(config, "max_outbond_connections = 20")
}

/// The test config with `line` inserted as line TYPO_LINE.
fn config_with_line(config: &TestConfig, line: &str) -> String {
    let mut lines: Vec<String> = config.render().lines().map(str::to_string).collect();
    lines.insert(TYPO_LINE - 1, line.to_string());
    lines.join("\n") + "\n"
}

/// Binding settings that were refused until mail could be assigned to
/// bindings; valid now.
const BINDING_SETTINGS: [&str; 3] = [
    "bind_address = 127.0.0.1",
    "binding \"tx\" { max_outbound_connections = 3 bind_address = 127.0.0.6 }",
    "binding_group \"mkt\" { binding \"m1\" { } domain \"d.example\" { max_retries = 1 } }",
];

/// Binding settings in a scope they do not belong to, and the start of
/// what the operator is told about them.
const MISPLACED: [(&str, &str); 2] = [
    (
        "domain \"d.example\" { bind_address = 127.0.0.5 }",
        "option `bind_address` is not valid in domain scope",
    ),
    (
        "binding_header = \"X-Binding\"",
        "option `binding_header` is not valid in global scope",
    ),
];

/// Goal: a bad config stops start-up before anything listens.
/// Method: start the daemon on a config with an unknown option on a known
/// line; expect exit 1, `FILE:LINE:` on stderr and a closed port.
#[test]
fn bad_config_refuses_to_start() {
    let dir = TempDir::new("bad-config");
    let config = TestConfig::new(1);
    let mut daemon = Daemon::spawn(dir.path(), &config_with_typo(&config));
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("daemon with a bad config must exit");
    let stderr = daemon.stderr_text();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let location = format!("{CONFIG_FILE_NAME}:{TYPO_LINE}:");
    assert!(
        stderr.contains(&location),
        "no `{location}` in stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("max_outbond_connections"),
        "stderr:\n{stderr}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", config.smtp_port)).is_err(),
        "something listens on the port of a refused config"
    );
}

/// Goal: validate_config agrees with the daemon. Method: the bad file exits
/// 1 naming FILE:LINE; the same config without the typo exits 0.
#[test]
fn validate_config_reports_file_and_line() {
    let dir = TempDir::new("validate-config");
    let config = TestConfig::new(1);
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, config_with_typo(&config)).unwrap();
    let output = run(
        Command::new(bin("validate_config")).arg(&bad),
        Duration::from_secs(30),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{all}");
    let location = format!("bad.conf:{TYPO_LINE}:");
    assert!(all.contains(&location), "no `{location}` in:\n{all}");

    let good = dir.join("good.conf");
    std::fs::write(&good, config.render()).unwrap();
    let output = run(
        Command::new(bin("validate_config")).arg(&good),
        Duration::from_secs(30),
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Goal: binding settings are taken where Momentum takes them and
/// refused elsewhere, by validate_config and the daemon alike. Method:
/// each binding setting validates (exit 0); each misplaced one exits 1
/// naming FILE:LINE; the daemon, given the first, exits 1 the same way
/// and listens on nothing.
#[test]
fn binding_settings_are_taken_in_binding_scopes_and_refused_elsewhere() {
    let dir = TempDir::new("binding-settings");
    let config = TestConfig::new(1);
    let validate = |name: &str, line: &str| {
        let file = dir.join(name);
        std::fs::write(&file, config_with_line(&config, line)).unwrap();
        run(
            Command::new(bin("validate_config")).arg(&file),
            Duration::from_secs(30),
        )
    };
    for (index, line) in BINDING_SETTINGS.iter().enumerate() {
        let output = validate(&format!("binding-{index}.conf"), line);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{line}: {stderr}");
    }
    for (index, (line, message)) in MISPLACED.iter().enumerate() {
        let name = format!("misplaced-{index}.conf");
        let output = validate(&name, line);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{line}: {stderr}");
        let expected = format!("{name}:{TYPO_LINE}: {message}");
        assert!(
            stderr.contains(&expected),
            "{line}: want `{expected}` in:\n{stderr}"
        );
    }

    let (line, message) = MISPLACED[0];
    let mut daemon = Daemon::spawn(dir.path(), &config_with_line(&config, line));
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("daemon with a misplaced setting must exit");
    let stderr = daemon.stderr_text();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let expected = format!("{CONFIG_FILE_NAME}:{TYPO_LINE}: {message}");
    assert!(
        stderr.contains(&expected),
        "want `{expected}` in:\n{stderr}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", config.smtp_port)).is_err(),
        "something listens on the port of a refused config"
    );
}
