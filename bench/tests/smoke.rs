//! CI smoke test for ecbench: every scenario runs once on a few hundred
//! messages against target/<profile>/ecelerity (and a private Postfix when
//! /usr/sbin/postfix exists), and the results must add up: sent = accepted =
//! arrived for every run, and the JSON report must parse. No timing
//! assertions: throughput on a shared 2-core CI machine means nothing.
//! Haraka and KumoMTA are left out here (npm and kumod start-up are slow);
//! `ecbench scenario side-by-side` runs them when present.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ecbench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ecbench"))
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ecbench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Run one scenario in smoke mode; returns the parsed results JSON.
fn run_scenario(name: &str, peers: &str, dir: &Path) -> serde_json::Value {
    let out = dir.join("out");
    let output = Command::new(ecbench())
        .args([
            "scenario", name, "--quick", "--check", "--quiet", "--peers", peers,
        ])
        .arg("--work-dir")
        .arg(dir.join(format!("work-{name}")))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ecbench");
    assert!(
        output.status.success(),
        "ecbench scenario {name} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text =
        std::fs::read_to_string(out.join(format!("{name}.json"))).expect("results JSON written");
    serde_json::from_str(&text).expect("results JSON parses")
}

fn rows(results: &serde_json::Value) -> &Vec<serde_json::Value> {
    results["rows"].as_array().expect("rows is an array")
}

fn assert_counts_add_up(results: &serde_json::Value) {
    for row in rows(results) {
        let n = |k: &str| {
            row[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} missing in {row}"))
        };
        assert_eq!(n("sent"), n("accepted"), "{row}");
        assert_eq!(n("recipients_accepted"), n("arrived_recipients"), "{row}");
        assert_eq!(n("failed"), 0, "{row}");
        assert!(n("accepted") > 0, "{row}");
    }
}

#[test]
fn every_scenario_counts_every_message_in_smoke_mode() {
    let ecelerity = ecbench().with_file_name("ecelerity");
    if !ecelerity.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing: tests/run builds every binary first",
            ecelerity.display()
        );
        eprintln!(
            "smoke: {} not built; skipping (run `cargo build --workspace --bins`)",
            ecelerity.display()
        );
        return;
    }
    let dir = scratch_dir();
    let postfix = Path::new("/usr/sbin/postfix").exists();
    let side_peers = if postfix {
        "ecelerity,postfix"
    } else {
        "ecelerity"
    };

    let limit = run_scenario("limit", "ecelerity", &dir);
    assert_eq!(rows(&limit).len(), 1);
    assert_eq!(rows(&limit)[0]["accepted"], 300);
    assert_counts_add_up(&limit);

    let relay = run_scenario("relay", "ecelerity", &dir);
    assert_eq!(rows(&relay).len(), 1);
    assert_eq!(rows(&relay)[0]["peer"], "ecelerity");
    assert_eq!(rows(&relay)[0]["arrived_messages"], 300);
    assert_counts_add_up(&relay);

    let side = run_scenario("side-by-side", side_peers, &dir);
    let peers: Vec<&str> = rows(&side)
        .iter()
        .filter_map(|r| r["peer"].as_str())
        .collect();
    assert!(
        peers.contains(&"limit") && peers.contains(&"ecelerity"),
        "{peers:?}"
    );
    assert_counts_add_up(&side);

    let latency = run_scenario("latency", "ecelerity", &dir);
    assert_eq!(rows(&latency).len(), 5, "peak, 10 %, 25 %, 50 %, 90 %");
    assert_counts_add_up(&latency);

    let shards = run_scenario("shards", "ecelerity", &dir);
    assert_eq!(rows(&shards).len(), 2, "1 shard and 2 shards");
    assert_counts_add_up(&shards);

    // Client shapes: 100 messages per shape in smoke mode; the three
    // smtp-source rows need Postfix's smtp-source.
    // The floor relay runs the same shapes beside the daemon.
    let shapes = run_scenario("shapes", "ecelerity,floor", &dir);
    let smtp_source = Path::new("/usr/sbin/smtp-source").exists();
    assert_eq!(rows(&shapes).len(), if smtp_source { 8 } else { 2 });
    for row in rows(&shapes) {
        assert_eq!(row["accepted"], 100, "{row}");
        assert!(row["mta_switches"].is_object(), "{row}");
        assert!(row["client"]["command"].is_string(), "{row}");
    }
    assert!(
        rows(&shapes).iter().any(|r| r["peer"] == "floor"),
        "the floor relay's rows"
    );
    assert_counts_add_up(&shapes);

    let queue = run_scenario("queue", "ecelerity", &dir);
    let measurements = queue["measurements"].as_array().expect("measurements");
    assert!(
        measurements.iter().any(|m| m[0]
            .as_str()
            .is_some_and(|s| s.starts_with("restart to accepting"))),
        "{measurements:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
