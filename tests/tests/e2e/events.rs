//! The event log and webhooks (issue 11 item 5). Method: the daemon writes
//! `eventlog` and POSTs to a `webhook` whose target is a Python
//! `http.server` receiver (tests/py/webhook_receiver.py) that records every
//! event of every batch with the token header it came with. Mail goes to
//! the aiosmtpd sink, started late so that the first message is deferred
//! first; its `reject*` recipient then bounces (550 5.1.1). The receiver is
//! stopped while more mail flows, restarted on the same port, and the
//! daemon is restarted: every event of the log must reach it exactly once,
//! in the log's order per message.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ecelerity_tests::{
    complete_lines, free_port, poll_until, py_dir, python, summary_value, ChildGuard, Daemon, Sink,
    SmtpClient, TempDir, TestConfig,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "t0ken-for-tests";
/// Events per POST, small so that a backlog takes several batches.
const BATCH_SIZE: usize = 3;

/// The webhook receiver as a child process.
struct Receiver {
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<ChildGuard>,
}

impl Receiver {
    fn start(dir: &Path, port: u16) -> Receiver {
        Receiver::start_with(dir, port, &[])
    }

    /// As `start`, with extra webhook_receiver.py arguments.
    fn start_with(dir: &Path, port: u16, args: &[&str]) -> Receiver {
        let mut r = Receiver {
            dir: dir.to_path_buf(),
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(python())
            .arg(py_dir().join("webhook_receiver.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn webhook_receiver.py");
        self.child = Some(ChildGuard::new("webhook_receiver.py", child));
        let up = poll_until(WAIT, || {
            TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .map(|_| ())
        });
        assert!(up.is_some(), "webhook receiver did not listen");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGTERM);
            if child.wait_timeout(WAIT).is_none() {
                child.kill();
            }
        }
    }

    /// Every recorded event, in arrival order.
    fn records(&self) -> Vec<Value> {
        complete_lines(&self.dir.join("received.jsonl"))
            .iter()
            .map(|l| serde_json::from_str(l).expect("receiver line is JSON"))
            .collect()
    }
}

/// The `message_event` object of an event line or element.
fn inner(event: &Value) -> &Value {
    &event["msys"]["message_event"]
}

fn text<'a>(event: &'a Value, name: &str) -> &'a str {
    inner(event)[name].as_str().unwrap_or("")
}

fn event_log(dir: &Path) -> Vec<Value> {
    complete_lines(&dir.join("log/events.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until the event log holds an event matching `want`.
fn wait_for_event(dir: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    poll_until(WAIT, || {
        let events = event_log(dir);
        events.iter().any(&want).then_some(events)
    })
    .unwrap_or_else(|| panic!("no {what} in the event log: {:#?}", event_log(dir)))
}

/// The DSN of a bounce (to the sender) was delivered: the last event.
fn dsn_delivered(e: &Value) -> bool {
    text(e, "type") == "delivery" && text(e, "rcpt_to") == "sender@client.test"
}

/// Sends one message and returns its queue id (the 250 reply's last word).
fn send(port: u16, rcpts: &[&str], subject: &str) -> String {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<sender@client.test>").0, 250);
    for rcpt in rcpts {
        assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    }
    assert_eq!(client.command("DATA").0, 354);
    let body = format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n");
    client.write_raw(body.as_bytes());
    let (code, reply) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{reply}");
    client.command("QUIT");
    reply.rsplit(' ').next().unwrap().to_string()
}

/// The (type, rcpt_to) sequence of each message in `events`.
fn per_message(events: &[&Value]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for e in events {
        let id = text(e, "message_id").to_string();
        let entry = (text(e, "type").to_string(), text(e, "rcpt_to").to_string());
        out.entry(id).or_default().push(entry);
    }
    out
}

fn summary(daemon: &Daemon) -> String {
    String::from_utf8_lossy(&daemon.console("summary\n").stdout).into_owned()
}

/// Every event id of the log has reached the receiver.
fn wait_until_received(receiver: &Receiver, dir: &Path) {
    let done = poll_until(WAIT, || {
        let log: BTreeSet<String> = event_log(dir)
            .iter()
            .map(|e| text(e, "event_id").to_string())
            .collect();
        let got: BTreeSet<String> = receiver
            .records()
            .iter()
            .map(|r| text(&r["event"], "event_id").to_string())
            .collect();
        (!log.is_empty() && log.is_subset(&got)).then_some(())
    });
    assert!(
        done.is_some(),
        "receiver is missing events: log {:#?}\nreceived {:#?}",
        event_log(dir),
        receiver.records()
    );
}

#[test]
fn events_are_logged_in_order_and_posted_exactly_once_across_outages() {
    let dir = TempDir::new("events");
    let sink_port = free_port();
    let hook_port = free_port();
    let mut receiver = Receiver::start(&dir.join("hook"), hook_port);
    let mut config = TestConfig::new(sink_port);
    config.extra = format!(
        "ec_logger \"ec_logger\" {{ eventlog = \"log/events.jsonl\" }}\n\
         webhook \"test\" {{\n  target = \"http://127.0.0.1:{hook_port}/ingest\"\n  \
         auth_token = \"{TOKEN}\"\n  batch_size = {BATCH_SIZE}\n}}\n"
    );
    let mut daemon = Daemon::start(dir.path(), &config.render());
    let port = daemon.smtp_port();

    // A rejected command: a policy_rejection event from the client's address.
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("RCPT TO:<nobody@example.com>").0, 503);
    client.command("QUIT");

    // Sink down: both recipients are deferred first.
    let first = send(port, &["ok1@example.com", "reject1@example.com"], "first");
    wait_for_event(dir.path(), "delay of reject1", |e| {
        text(e, "type") == "delay" && text(e, "rcpt_to") == "reject1@example.com"
    });
    let sink = Sink::start(&dir.join("sink"), sink_port);
    wait_for_event(dir.path(), "bounce of reject1", |e| {
        text(e, "type") == "bounce"
    });
    wait_for_event(dir.path(), "delivery of ok1", |e| {
        text(e, "type") == "delivery" && text(e, "rcpt_to") == "ok1@example.com"
    });
    wait_for_event(dir.path(), "delivery of the DSN", dsn_delivered);
    wait_until_received(&receiver, dir.path());

    // Receiver down: the events wait in the log; the endpoint shows failing.
    receiver.stop();
    let second = send(port, &["ok2@example.com"], "second");
    wait_for_event(dir.path(), "delivery of ok2", |e| {
        text(e, "type") == "delivery" && text(e, "rcpt_to") == "ok2@example.com"
    });
    let failing = poll_until(WAIT, || {
        let s = summary(&daemon);
        (summary_value(&s, "Failing Webhooks") == Some(1)).then_some(s)
    });
    assert!(failing.is_some(), "summary: {}", summary(&daemon));

    // Receiver back on the same port: everything arrives, then it is well.
    receiver.spawn();
    wait_until_received(&receiver, dir.path());
    let healthy = poll_until(WAIT, || {
        (summary_value(&summary(&daemon), "Failing Webhooks") == Some(0)).then_some(())
    });
    assert!(healthy.is_some(), "summary: {}", summary(&daemon));

    // A daemon restart resumes at the persisted cursor: no event twice.
    daemon.stop();
    daemon.restart();
    let third = send(daemon.smtp_port(), &["ok3@example.com"], "third");
    wait_for_event(dir.path(), "delivery of ok3", |e| {
        text(e, "type") == "delivery" && text(e, "rcpt_to") == "ok3@example.com"
    });
    wait_until_received(&receiver, dir.path());
    drop(sink);

    let log = event_log(dir.path());
    let records = receiver.records();

    // Exactly once: the receiver's event ids are the log's, none twice.
    let ids: Vec<&str> = records
        .iter()
        .map(|r| text(&r["event"], "event_id"))
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates: {ids:?}");
    let log_ids: BTreeSet<&str> = log.iter().map(|e| text(e, "event_id")).collect();
    assert_eq!(unique, log_ids);
    // Byte for byte: each received element is the log's object.
    for r in &records {
        let id = text(&r["event"], "event_id");
        let logged = log.iter().find(|e| text(e, "event_id") == id).unwrap();
        assert_eq!(&r["event"], logged);
    }
    // In order per message, in the log and at the receiver alike.
    let log_refs: Vec<&Value> = log.iter().collect();
    let got_refs: Vec<&Value> = records.iter().map(|r| &r["event"]).collect();
    assert_eq!(per_message(&got_refs), per_message(&log_refs));
    // Every POST carried the token, JSON, to the target path, in batches.
    let mut per_post: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["token"], TOKEN, "{r}");
        assert_eq!(r["content_type"], "application/json", "{r}");
        assert_eq!(r["path"], "/ingest", "{r}");
        *per_post.entry(r["post"].as_u64().unwrap()).or_default() += 1;
    }
    assert!(per_post.values().all(|n| *n <= BATCH_SIZE), "{per_post:?}");
    assert!(
        per_post.values().any(|n| *n > 1),
        "backlog sent in batches: {per_post:?}"
    );

    // The log's content, message by message.
    let messages = per_message(&log_refs);
    let seq = |id: &str, rcpt: &str| -> Vec<String> {
        messages[id]
            .iter()
            .filter(|(_, r)| r == rcpt)
            .map(|(t, _)| t.clone())
            .collect()
    };
    for (rcpt, last) in [
        ("ok1@example.com", "delivery"),
        ("reject1@example.com", "bounce"),
    ] {
        let types = seq(&first, rcpt);
        assert_eq!(
            types.first().map(String::as_str),
            Some("injection"),
            "{types:?}"
        );
        assert_eq!(types.last().map(String::as_str), Some(last), "{types:?}");
        let middle = &types[1..types.len() - 1];
        assert!(
            !middle.is_empty() && middle.iter().all(|t| t == "delay"),
            "{types:?}"
        );
    }
    assert_eq!(seq(&second, "ok2@example.com"), ["injection", "delivery"]);
    assert_eq!(seq(&third, "ok3@example.com"), ["injection", "delivery"]);

    let find = |kind: &str, rcpt: &str| {
        log.iter()
            .find(|e| text(e, "type") == kind && text(e, "rcpt_to") == rcpt)
            .unwrap_or_else(|| panic!("no {kind} for {rcpt}"))
    };
    let injection = find("injection", "ok1@example.com");
    assert_eq!(text(injection, "msg_from"), "sender@client.test");
    assert_eq!(text(injection, "ip_address"), "127.0.0.1");
    assert_eq!(text(injection, "recv_method"), "esmtp");
    assert_eq!(text(injection, "routing_domain"), "example.com");
    assert_eq!(text(injection, "binding"), "default");
    let bounce = find("bounce", "reject1@example.com");
    assert_eq!(text(bounce, "bounce_class"), "10", "{bounce}");
    assert_eq!(text(bounce, "error_code"), "550", "{bounce}");
    assert!(
        text(bounce, "raw_reason").contains("reject requested"),
        "{bounce}"
    );
    assert!(text(bounce, "num_retries").parse::<u32>().unwrap() >= 1);
    let delay = find("delay", "ok1@example.com");
    assert_eq!(text(delay, "num_retries"), "0", "{delay}");
    let delivery = find("delivery", "ok1@example.com");
    assert_eq!(text(delivery, "ip_address"), "127.0.0.1");
    assert!(text(delivery, "queue_time").parse::<u64>().unwrap() > 0);
    let rejection = log
        .iter()
        .find(|e| text(e, "type") == "policy_rejection")
        .expect("a policy_rejection event");
    assert_eq!(text(rejection, "error_code"), "503", "{rejection}");
    assert_eq!(text(rejection, "ip_address"), "127.0.0.1", "{rejection}");
    // Every event carries the fields every consumer keys on.
    for e in &log {
        for name in ["type", "event_id", "timestamp"] {
            assert!(!text(e, name).is_empty(), "{name} missing: {e}");
        }
    }
}

/// Goal: an endpoint gets only the event types it asked for, and a non-2xx
/// answer is retried until accepted, without duplicates. Method: two
/// webhooks; "bounces" asks for bounces only and its receiver answers 503
/// to its first two POSTs; "all" takes everything. One message with a
/// delivered and a rejected recipient, sink up.
#[test]
fn endpoints_get_their_event_types_and_non_2xx_is_retried() {
    let dir = TempDir::new("events-filter");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let (all_port, bounce_port) = (free_port(), free_port());
    let all = Receiver::start(&dir.join("all"), all_port);
    let bounces = Receiver::start_with(&dir.join("bounces"), bounce_port, &["--fail-first", "2"]);
    let mut config = TestConfig::new(sink.port());
    config.extra = format!(
        "ec_logger \"ec_logger\" {{ eventlog = \"log/events.jsonl\" }}\n\
         webhook \"all\" {{ target = \"http://127.0.0.1:{all_port}/\" }}\n\
         webhook \"bounces\" {{ target = \"http://127.0.0.1:{bounce_port}/b\" \
         events = ( \"bounce\" ) }}\n"
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    let id = send(
        daemon.smtp_port(),
        &["ok@example.com", "reject@example.com"],
        "f",
    );
    wait_for_event(dir.path(), "bounce", |e| text(e, "type") == "bounce");
    wait_for_event(dir.path(), "delivery of the DSN", dsn_delivered);
    wait_until_received(&all, dir.path());
    let got = poll_until(WAIT, || {
        let records = bounces.records();
        (!records.is_empty()).then_some(records)
    })
    .expect("the bounce reaches the bounces endpoint");
    let refused = std::fs::read_to_string(dir.join("bounces/refused.txt")).unwrap_or_default();
    assert_eq!(refused.trim(), "2", "two 503s before the 200");
    // Give a wrongly repeated POST time to show.
    std::thread::sleep(Duration::from_secs(1));
    let got_again = bounces.records();
    assert_eq!(got_again.len(), got.len());
    let log = event_log(dir.path());
    let logged: Vec<&Value> = log.iter().filter(|e| text(e, "type") == "bounce").collect();
    assert_eq!(logged.len(), 1, "{log:#?}");
    assert_eq!(got_again.len(), 1, "{got_again:#?}");
    assert_eq!(&got_again[0]["event"], logged[0]);
    assert_eq!(text(logged[0], "message_id"), id);
    assert_eq!(
        got_again[0]["token"],
        Value::Null,
        "no auth_token, no header"
    );
    assert_eq!(got_again[0]["path"], "/b");
    assert_eq!(
        all.records().len(),
        log.len(),
        "the other endpoint gets all"
    );
    drop(daemon);
}

/// Goal: the backlog of an endpoint is bounded by `max_backlog_bytes`.
/// Method: with the receiver down and a 1000-byte bound, mail makes the
/// event log grow well past 1000 bytes; once the receiver is back it gets
/// only the newest events: a proper suffix of the log, whole events, each
/// once, none older than the bound allows.
#[test]
fn a_lagging_endpoint_skips_its_oldest_events_past_the_bound() {
    let dir = TempDir::new("events-backlog");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let hook_port = free_port();
    let mut config = TestConfig::new(sink.port());
    config.extra = format!(
        "ec_logger \"ec_logger\" {{ eventlog = \"log/events.jsonl\" }}\n\
         webhook \"small\" {{ target = \"http://127.0.0.1:{hook_port}/\" max_backlog_bytes = 1000 }}\n"
    );
    let daemon = Daemon::start(dir.path(), &config.render());
    let rcpts: Vec<String> = (0..6).map(|i| format!("ok{i}@example.com")).collect();
    for rcpt in &rcpts {
        send(daemon.smtp_port(), &[rcpt.as_str()], "backlog");
    }
    let last = rcpts.last().unwrap().clone();
    wait_for_event(dir.path(), "the last delivery", |e| {
        text(e, "type") == "delivery" && text(e, "rcpt_to") == last
    });
    let log_bytes = std::fs::metadata(dir.join("log/events.jsonl"))
        .unwrap()
        .len();
    assert!(log_bytes > 3000, "the log outgrew the bound: {log_bytes}");

    let receiver = Receiver::start(&dir.join("hook"), hook_port);
    let log = event_log(dir.path());
    let last_id = text(log.last().unwrap(), "event_id").to_string();
    let got = poll_until(WAIT, || {
        let records = receiver.records();
        records
            .iter()
            .any(|r| text(&r["event"], "event_id") == last_id)
            .then_some(records)
    })
    .expect("the newest event arrives");
    let got: Vec<&Value> = got.iter().map(|r| &r["event"]).collect();
    assert!(
        !got.is_empty() && got.len() < log.len(),
        "{} of {}",
        got.len(),
        log.len()
    );
    let suffix: Vec<&Value> = log[log.len() - got.len()..].iter().collect();
    assert_eq!(got, suffix, "the newest events, in order, each once");
    let sent_bytes: usize = got.iter().map(|e| e.to_string().len() + 1).sum();
    assert!(
        sent_bytes <= 1000,
        "{sent_bytes} bytes sent past a 1000-byte bound"
    );
    drop(daemon);
}

/// Goal: a `kill -9` loses no event that reached the event log: every one
/// is POSTed at least once after the restart. Method: mail flows, the
/// daemon is killed right after its first events are written, restarted,
/// more mail flows; every event id of the log reaches the receiver.
#[test]
fn after_kill_9_every_logged_event_is_posted() {
    let dir = TempDir::new("events-crash");
    let sink = Sink::start(&dir.join("sink"), free_port());
    let hook_port = free_port();
    let receiver = Receiver::start(&dir.join("hook"), hook_port);
    let mut config = TestConfig::new(sink.port());
    config.extra = format!(
        "ec_logger \"ec_logger\" {{ eventlog = \"log/events.jsonl\" }}\n\
         webhook \"crash\" {{ target = \"http://127.0.0.1:{hook_port}/\" batch_size = 1 }}\n"
    );
    let mut daemon = Daemon::start(dir.path(), &config.render());
    for i in 0..5 {
        send(daemon.smtp_port(), &[&format!("pre{i}@example.com")], "pre");
    }
    wait_for_event(dir.path(), "a first delivery", |e| {
        text(e, "type") == "delivery"
    });
    daemon.kill9();
    daemon.restart();
    let last = send(daemon.smtp_port(), &["post@example.com"], "post");
    wait_for_event(dir.path(), "the delivery after the restart", |e| {
        text(e, "type") == "delivery" && text(e, "message_id") == last
    });
    wait_until_received(&receiver, dir.path());
    let got: BTreeSet<String> = receiver
        .records()
        .iter()
        .map(|r| text(&r["event"], "event_id").to_string())
        .collect();
    for e in event_log(dir.path()) {
        assert!(got.contains(text(&e, "event_id")), "never posted: {e}");
    }
    drop(daemon);
}
