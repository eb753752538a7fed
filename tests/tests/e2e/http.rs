//! The HTTP_Listener end to end: `/metrics` read with curl and with Python
//! `requests` + prometheus_client's parser, `/api/v1/status`, both checked
//! against the console's `summary` after N messages sent with smtplib; the
//! status page in headless Chromium (Playwright); bad requests (unknown
//! path 404, wrong method 405, oversized header 431, a slowloris client
//! 408); and the console's `shards`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ecelerity_tests::{
    free_port, poll_until, py_dir, python, run, send_messages, summary_value, ARRIVAL_TIMEOUT,
};
use serde_json::Value;

use crate::common::Mta;

/// Messages sent before comparing the metrics with the console.
const MESSAGES: usize = 6;
/// Shards of the test daemons (TestConfig's default).
const SHARDS: usize = 2;
/// The daemon's request timeout (engine `HTTP_REQUEST_TIMEOUT_MS`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How late a timeout may fire on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);
/// Longest wait for a Python client (the browser included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A daemon with an HTTP_Listener on a fresh port; `extra` is appended.
fn start(label: &str, extra: &str) -> (Mta, u16) {
    let http_port = free_port();
    let extra = format!("HTTP_Listener {{ Listen \"127.0.0.1:{http_port}\" {{ }} }}\n{extra}");
    let mta = Mta::start_with(label, |c| c.extra = extra);
    (mta, http_port)
}

/// `curl -sS URL` plus extra arguments: (HTTP status, body).
fn curl(port: u16, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let output = run(
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url),
        Duration::from_secs(40),
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {url}: no status in {text:?}; stderr {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, body.to_string())
}

/// Runs tests/py/http_check.py with `args`; its JSON report (asserting ok).
fn http_check(args: &[&str]) -> Value {
    let script = py_dir().join("http_check.py");
    let output = run(
        Command::new(python()).arg(&script).args(args),
        CLIENT_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "http_check.py {args:?}: {e}; stdout {stdout}; stderr {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["ok"], true, "http_check.py {args:?}: {report}");
    assert!(output.status.success(), "{report}");
    report
}

/// The value of a sample line `name value` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Goal: /metrics and /api/v1/status say what the console says. Method:
/// send N messages with smtplib, wait until every one is delivered and the
/// console's summary says N received and N delivered, then read /metrics
/// with curl and with requests (parsed by prometheus_client) and the JSON
/// status: totals, per-shard sums, the latency histograms' counts.
#[test]
fn metrics_and_status_match_the_console_summary() {
    let (mta, http) = start("http-metrics", "");
    let count = MESSAGES.to_string();
    let report = send_messages(mta.port(), &["--count", &count], ARRIVAL_TIMEOUT);
    assert_eq!(report.accepted().len(), MESSAGES, "{}", report.stderr);
    mta.sink.wait_for_messages(MESSAGES, ARRIVAL_TIMEOUT);
    mta.daemon.wait_for_kind("D", MESSAGES, ARRIVAL_TIMEOUT);

    let want = MESSAGES as u64;
    let mut summary = String::new();
    let settled = poll_until(ARRIVAL_TIMEOUT, || {
        summary = String::from_utf8_lossy(&mta.daemon.console("summary\n").stdout).into_owned();
        let received = summary_value(&summary, "Received Messages");
        let delivered = summary_value(&summary, "Successfully Delivered Messages");
        (received == Some(want) && delivered == Some(want)).then_some(())
    });
    assert!(
        settled.is_some(),
        "summary never said {want}/{want}:\n{summary}"
    );

    // curl: the text format, its content type, the same totals.
    let (code, text) = curl(http, "/metrics", &[]);
    assert_eq!(code, 200, "{text}");
    let total = |name: &str| sample(&text, &format!("{name}{{shard=\"total\"}}"));
    assert_eq!(
        total("ecelerity_messages_received_total"),
        Some(want as f64),
        "{text}"
    );
    assert_eq!(
        total("ecelerity_delivered_total"),
        Some(want as f64),
        "{text}"
    );
    assert_eq!(
        total("ecelerity_accept_latency_seconds_count"),
        Some(want as f64),
        "{text}"
    );
    assert_eq!(
        total("ecelerity_delivery_latency_seconds_count"),
        Some(want as f64),
        "{text}"
    );
    assert_eq!(sample(&text, "ecelerity_shards"), Some(SHARDS as f64));
    // send.py used one connection: the shard that took it served one
    // client, so each message's group commit synced on the shard's thread
    // (spool `sync_choice`); the gauge is refreshed every 100 ms tick.
    let inline = poll_until(ARRIVAL_TIMEOUT, || {
        let (_, text) = curl(http, "/metrics", &[]);
        let n = sample(&text, "ecelerity_spool_inline_syncs_total{shard=\"total\"}")?;
        (n >= want as f64).then_some(n)
    });
    assert!(
        inline.is_some(),
        "fewer than {want} inline spool syncs for one client's {want} messages:\n{}",
        curl(http, "/metrics", &[]).1
    );

    // requests + prometheus_client: every family parses once, types hold,
    // per-shard samples add up to the total, buckets are cumulative.
    let parsed = http_check(&["metrics", "--port", &http.to_string()]);
    assert!(
        parsed["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{parsed}"
    );
    let types = &parsed["types"];
    assert_eq!(types["ecelerity_messages_received"], "counter");
    assert_eq!(types["ecelerity_active_queue"], "gauge");
    assert_eq!(types["ecelerity_queue_active"], "gauge");
    assert_eq!(types["ecelerity_accept_latency_seconds"], "histogram");
    assert_eq!(types["ecelerity_delivery_latency_seconds"], "histogram");
    let samples = parsed["samples"].as_object().unwrap();
    let value = |key: &str| {
        samples
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("no sample {key}"))
    };
    let console_received = summary_value(&summary, "Received Messages").unwrap() as f64;
    let console_delivered =
        summary_value(&summary, "Successfully Delivered Messages").unwrap() as f64;
    assert_eq!(
        value("ecelerity_messages_received_total{shard=total}"),
        console_received
    );
    assert_eq!(
        value("ecelerity_delivered_total{shard=total}"),
        console_delivered
    );
    for name in [
        "ecelerity_messages_received_total",
        "ecelerity_delivered_total",
        "ecelerity_accept_latency_seconds_count",
    ] {
        let per_shard: f64 = (0..SHARDS)
            .map(|s| value(&format!("{name}{{shard={s}}}")))
            .sum();
        assert_eq!(
            per_shard,
            value(&format!("{name}{{shard=total}}")),
            "{name}"
        );
    }
    let buckets: Vec<f64> = ["0.001", "0.01", "0.1", "1.0", "10.0", "+Inf"]
        .iter()
        .map(|le| {
            value(&format!(
                "ecelerity_accept_latency_seconds_bucket{{le={le},shard=total}}"
            ))
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last().copied(), Some(want as f64));

    // The JSON status says the same.
    let status = &parsed["status"];
    assert_eq!(parsed["status_content_type"], "application/json");
    assert_eq!(status["shard_count"], SHARDS);
    assert_eq!(status["shards"].as_array().unwrap().len(), SHARDS);
    assert_eq!(status["total"]["counters"]["messages_received"], want);
    assert_eq!(status["total"]["counters"]["delivered"], want);
    assert_eq!(status["total"]["accept_latency"]["count"], want);
    assert_eq!(status["total"]["delivery_latency"]["count"], want);
    let p99 = status["total"]["accept_latency"]["p99_ms"]
        .as_f64()
        .unwrap();
    assert!(p99 > 0.0, "an accepted message took some time: {status}");

    // Console `shards`: a line per shard and a total with the queues.
    let shards = String::from_utf8_lossy(&mta.daemon.console("shards\n").stdout).into_owned();
    let lines: Vec<&str> = shards.lines().collect();
    assert!(lines[0].trim_start().starts_with("Shard"), "{shards}");
    for (i, line) in lines[1..=SHARDS].iter().enumerate() {
        assert!(line.trim_start().starts_with(&format!("{i} ")), "{shards}");
    }
    assert!(
        lines[SHARDS + 1].trim_start().starts_with("total"),
        "{shards}"
    );
    assert!(lines[SHARDS + 1].contains("ms"), "{shards}");
}

/// Goal: a queue that holds mail shows in /metrics with its (binding,
/// domain) labels, and the status page in a real browser shows the shards
/// and that queue, with no console errors, and its numbers change while
/// mail flows. Method: route `held.test` to a port nothing listens on, so
/// its messages wait in the delayed queue; open the page in headless
/// Chromium, wait for the queue row, send more, watch the count grow.
#[test]
fn status_page_shows_shards_and_queues_live_in_chromium() {
    let dead = free_port();
    let (mta, http) = start(
        "http-page",
        &format!("domain \"held.test\" {{ gateway = \"127.0.0.1:{dead}\" }}\n"),
    );
    let report = send_messages(
        mta.port(),
        &["--count", "2", "--to", "rcpt@held.test"],
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(report.accepted().len(), 2, "{}", report.stderr);
    let key = "binding_group=\"default\",binding=\"default\",domain=\"held.test\"";
    let mut text = String::new();
    let queued = poll_until(ARRIVAL_TIMEOUT, || {
        text = curl(http, "/metrics", &[]).1;
        let active = sample(&text, &format!("ecelerity_queue_active{{{key}}}"))?;
        let delayed = sample(&text, &format!("ecelerity_queue_delayed{{{key}}}"))?;
        (active + delayed == 2.0).then_some(())
    });
    assert!(queued.is_some(), "held.test never showed 2 queued:\n{text}");

    let page = http_check(&[
        "page",
        "--port",
        &http.to_string(),
        "--smtp-port",
        &mta.port().to_string(),
        "--shards",
        &SHARDS.to_string(),
        "--domain",
        "held.test",
        "--count",
        "3",
    ]);
    assert_eq!(page["shards"], serde_json::json!(["0", "1"]), "{page}");
    assert_eq!(page["queue"][2], "held.test", "{page}");
    let before = page["received_before"].as_u64().unwrap();
    assert!(
        page["received_after"].as_u64().unwrap() >= before + 3,
        "{page}"
    );
}

/// Goal: bad requests get clear answers and a slow client cannot hold a
/// connection. Method: curl an unknown path (404), POST (405), a 20 KiB
/// header (431); a raw client that sends a header line every 300 ms never
/// finishing its request gets 408 within the request timeout (plus slack)
/// and is closed; a new request is served afterwards.
#[test]
fn bad_requests_get_clear_answers_and_slowloris_times_out() {
    let (mta, http) = start("http-bad", "");
    let (code, body) = curl(http, "/no/such/page", &[]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("404 Not Found: /no/such/page"), "{body}");
    let (code, body) = curl(http, "/metrics", &["-X", "POST"]);
    assert_eq!(code, 405, "{body}");
    let big = format!("X-Big: {}", "a".repeat(20 * 1024));
    let (code, _) = curl(http, "/metrics", &["-H", &big]);
    assert_eq!(code, 431);

    let mut slow = TcpStream::connect(("127.0.0.1", http)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while started.elapsed() < REQUEST_TIMEOUT + SLACK {
        if slow.write_all(b"X-Drip: 1\r\n").is_err() {
            break;
        }
        match slow.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{took:?}: {answer:?}");
    assert!(took >= REQUEST_TIMEOUT - Duration::from_secs(1), "{took:?}");
    assert!(took < REQUEST_TIMEOUT + SLACK, "{took:?}");

    let (code, _) = curl(http, "/api/v1/status", &[]);
    assert_eq!(code, 200);
    drop(mta);
}
