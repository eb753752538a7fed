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

/// Valid ecelerity.conf that the engine would not act on yet, and the
/// start of what the operator is told about it.
const NOT_SUPPORTED_YET: [(&str, &str); 3] = [
    (
        "bind_address = 192.0.2.1",
        "`bind_address` is not supported yet (",
    ),
    (
        "binding \"tx\" { max_outbound_connections = 3 }",
        "`max_outbound_connections` in binding `tx` is not supported yet (",
    ),
    (
        "binding_group \"mkt\" { binding \"m1\" { } domain \"d.example\" { max_retries = 1 } }",
        "`max_retries` in binding_group `mkt` is not supported yet (",
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

/// Goal: nothing the engine would silently ignore is accepted. Method: for
/// each setting that is valid ecelerity.conf but not acted on yet,
/// validate_config exits 1 naming FILE:LINE and the setting; the daemon,
/// given the first of them, exits 1 the same way and listens on nothing.
#[test]
fn settings_not_supported_yet_are_refused_with_file_and_line() {
    let dir = TempDir::new("not-supported-yet");
    let config = TestConfig::new(1);
    for (index, (line, message)) in NOT_SUPPORTED_YET.iter().enumerate() {
        let name = format!("unsupported-{index}.conf");
        let file = dir.join(&name);
        std::fs::write(&file, config_with_line(&config, line)).unwrap();
        let output = run(
            Command::new(bin("validate_config")).arg(&file),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{line}: {stderr}");
        let expected = format!("{name}:{TYPO_LINE}: {message}");
        assert!(
            stderr.contains(&expected),
            "{line}: want `{expected}` in:\n{stderr}"
        );
    }

    let (line, message) = NOT_SUPPORTED_YET[0];
    let mut daemon = Daemon::spawn(dir.path(), &config_with_line(&config, line));
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("daemon with an unsupported setting must exit");
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
