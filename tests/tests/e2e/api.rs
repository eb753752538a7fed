//! The REST API (issue 13 items 1, 2 and 4) end to end: keys made with
//! `ec_console`, transmissions posted with Python `requests`
//! (tests/py/api_client.py), what arrives at the aiosmtpd sink parsed with
//! Python's `email` package and compared with what was posted, the event
//! log's fields, start_time across a kill -9, sandbox, and X-MSYS-API over
//! SMTP.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ecelerity_tests::{
    complete_lines, free_port, poll_until, py_dir, python, run, Daemon, PostfixSink, Sink,
    SmtpClient, TempDir, TestConfig,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const EVENTLOG: &str = "ec_logger \"ec_logger\" { eventlog = \"log/events.jsonl\" }\n";

/// A sink and a daemon with an HTTP_Listener and an event log.
pub(crate) struct Api {
    pub(crate) daemon: Daemon,
    pub(crate) sink: Sink,
    pub(crate) http: u16,
    pub(crate) dir: TempDir,
}

impl Api {
    fn start(label: &str) -> Api {
        Api::start_with(label, "")
    }

    /// With `extra` global configuration.
    pub(crate) fn start_with(label: &str, extra: &str) -> Api {
        let dir = TempDir::new(label);
        let sink = Sink::start(&dir.join("sink"), free_port());
        let http = free_port();
        let mut config = TestConfig::new(sink.port());
        config.extra =
            format!("HTTP_Listener {{ Listen \"127.0.0.1:{http}\" {{ }} }}\n{EVENTLOG}{extra}");
        let daemon = Daemon::start(dir.path(), &config.render());
        Api {
            daemon,
            sink,
            http,
            dir,
        }
    }

    /// `api_key create NAME grants...` through ec_console: the key.
    pub(crate) fn create_key(&self, name: &str, grants: &[&str]) -> String {
        let out = self
            .daemon
            .console(&format!("api_key create {name} {}\n", grants.join(" ")));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let key = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && *l != ".")
            .unwrap_or_default()
            .to_string();
        assert!(
            key.len() == 40 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "no key on the last line: {text:?}"
        );
        key
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        api_request(self.dir.path(), self.http, method, path, key, body)
    }

    pub(crate) fn post(&self, key: &str, body: &Value) -> (u16, Value) {
        self.request("POST", "/api/v1/transmissions", Some(key), Some(body))
    }

    fn events(&self) -> Vec<Value> {
        events(self.dir.path())
    }
}

fn events(dir: &Path) -> Vec<Value> {
    complete_lines(&dir.join("log/events.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["msys"]["message_event"].clone())
        .collect()
}

/// Parses sink files with Python's email package.
pub(crate) fn parse_messages(paths: &[&Path]) -> Vec<Value> {
    let out = run(
        Command::new(python())
            .arg(py_dir().join("api_client.py"))
            .arg("parse")
            .args(paths),
        Duration::from_secs(60),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("parse: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

pub(crate) fn header<'a>(m: &'a Value, name: &str) -> Option<&'a str> {
    m["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

#[test]
fn keys_from_the_console_gate_the_api_and_revoking_one_takes_effect_at_once() {
    let api = Api::start("api-keys");
    let body = json!({"recipients": [{"address": "a@example.com"}],
        "content": {"from": "me@example.net", "subject": "s", "text": "t"}});
    let (status, err) = api.request("POST", "/api/v1/transmissions", None, Some(&body));
    assert_eq!(status, 401, "{err}");
    assert!(
        err["errors"][0]["message"].is_string(),
        "SparkPost's shape: {err}"
    );
    let (status, _) = api.post("0123456789012345678901234567890123456789", &body);
    assert_eq!(status, 401);
    let viewer = api.create_key("viewer", &["transmissions:view"]);
    let (status, err) = api.post(&viewer, &body);
    assert_eq!(status, 403, "{err}");
    assert!(err["errors"][0]["description"]
        .as_str()
        .unwrap()
        .contains("transmissions:modify"));
    let sender = api.create_key("sender", &["transmissions:modify", "transmissions:view"]);
    let listed = String::from_utf8_lossy(&api.daemon.console("api_key list\n").stdout).into_owned();
    assert!(
        listed.contains("viewer") && listed.contains("sender"),
        "{listed}"
    );
    assert!(
        !listed.contains(&sender) && !listed.contains(&viewer),
        "a key is never listed"
    );
    let (status, ok) = api.post(&sender, &body);
    assert_eq!(status, 200, "{ok}");
    let id = ok["results"]["id"].as_str().unwrap();
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{ok}");
    let (status, got) = api.request(
        "GET",
        &format!("/api/v1/transmissions/{id}"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["results"]["transmission"]["id"], id);
    api.sink.wait_for_messages(1, WAIT);
    let revoked =
        String::from_utf8_lossy(&api.daemon.console("api_key revoke sender\n").stdout).into_owned();
    assert!(revoked.contains("revoked"), "{revoked}");
    let (status, _) = api.post(&sender, &body);
    assert_eq!(status, 401, "revoked: refused on every shard at once");
}

#[test]
fn an_inline_transmission_arrives_as_the_mime_message_posted_with_its_events() {
    let api = Api::start("api-inline");
    let key = api.create_key("app", &[]);
    let text =
        "Hello Zoë,\nline two with a long tail ".to_string() + &"x".repeat(100) + "\n.\nend\n";
    let html = "<html><body><p>Hello <b>Zoë</b></p><img src=\"cid:logo.png\"></body></html>";
    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let logo = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    let body = json!({
        "campaign_id": "spring",
        "description": "the spring mailing",
        "return_path": "bounces@example.net",
        "metadata": {"shared": "t", "over": "t"},
        "recipients": [
            {"address": {"email": "ann@example.com", "name": "Ann Example"}, "tags": ["t1", "t2"],
             "metadata": {"over": "r", "n": 1}},
            {"address": {"email": "bob@example.org", "header_to": "list@example.org"}},
            {"address": "not-an-address"}
        ],
        "content": {
            "from": {"email": "news@example.net", "name": "The News"},
            "subject": "Grüße from the API",
            "reply_to": "reply@example.net",
            "headers": {"X-Campaign": "spring-2026"},
            "text": text, "html": html,
            "attachments": [{"name": "data.bin", "type": "application/octet-stream", "data": b64(&attachment)}],
            "inline_images": [{"name": "logo.png", "type": "image/png", "data": b64(&logo)}]
        }
    });
    let (status, reply) = api.post(&key, &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 2);
    assert_eq!(reply["results"]["total_rejected_recipients"], 1);
    let tx = reply["results"]["id"].as_str().unwrap().to_string();
    let messages = api.sink.wait_for_messages(2, WAIT);
    let mut by_rcpt: Vec<_> = messages.iter().map(|m| (m.rcpts[0].clone(), m)).collect();
    by_rcpt.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(by_rcpt[0].0, "ann@example.com");
    assert_eq!(by_rcpt[1].0, "bob@example.org");
    for (_, m) in &by_rcpt {
        assert_eq!(m.mail_from, "bounces@example.net");
    }
    let paths: Vec<&Path> = by_rcpt.iter().map(|(_, m)| m.path.as_path()).collect();
    let parsed = parse_messages(&paths);
    for (i, m) in parsed.iter().enumerate() {
        assert_eq!(m["defects"], json!([]), "{m}");
        assert_eq!(header(m, "Subject"), Some("Grüße from the API"));
        assert_eq!(header(m, "From"), Some("The News <news@example.net>"));
        assert_eq!(header(m, "Reply-To"), Some("reply@example.net"));
        assert_eq!(header(m, "X-Campaign"), Some("spring-2026"));
        assert!(header(m, "Message-ID").unwrap().contains(&tx));
        let to = header(m, "To").unwrap();
        assert_eq!(to, ["Ann Example <ann@example.com>", "list@example.org"][i]);
        assert_eq!(
            m["tree"],
            json!({"multipart/mixed": [
                {"multipart/alternative": ["text/plain", {"multipart/related": ["text/html", "image/png"]}]},
                "application/octet-stream"]}),
        );
        let leaves = m["leaves"].as_array().unwrap();
        let data = |n: usize| {
            base64::engine::general_purpose::STANDARD
                .decode(leaves[n]["data"].as_str().unwrap())
                .unwrap()
        };
        assert_eq!(
            String::from_utf8(data(0)).unwrap(),
            text.replace('\n', "\r\n")
        );
        assert_eq!(String::from_utf8(data(1)).unwrap(), html);
        assert_eq!(data(2), logo);
        assert_eq!(leaves[2]["content_id"], "<logo.png>");
        assert_eq!(leaves[2]["disposition"], "inline");
        assert_eq!(data(3), attachment);
        assert_eq!(leaves[3]["filename"], "data.bin");
        assert_eq!(leaves[3]["disposition"], "attachment");
    }
    // Events: injection and delivery of both, with the transmission's fields.
    let evs = poll_until(WAIT, || {
        let e = api.events();
        (e.iter().filter(|e| e["type"] == "delivery").count() >= 2).then_some(e)
    })
    .expect("two delivery events");
    for kind in ["injection", "delivery"] {
        let ann = evs
            .iter()
            .find(|e| e["type"] == kind && e["rcpt_to"] == "ann@example.com")
            .unwrap_or_else(|| panic!("no {kind} of ann: {evs:#?}"));
        assert_eq!(ann["transmission_id"], tx.as_str(), "{ann}");
        assert_eq!(ann["campaign_id"], "spring");
        assert_eq!(
            ann["rcpt_meta"],
            json!({"shared": "t", "over": "r", "n": 1})
        );
        assert_eq!(ann["rcpt_tags"], json!(["t1", "t2"]));
        assert_eq!(ann["recv_method"], "rest");
        let bob = evs
            .iter()
            .find(|e| e["type"] == kind && e["rcpt_to"] == "bob@example.org")
            .unwrap();
        assert_eq!(bob["rcpt_meta"], json!({"shared": "t", "over": "t"}));
        assert_eq!(bob["rcpt_tags"], json!([]));
    }
    let (status, got) = api.request(
        "GET",
        &format!("/api/v1/transmissions/{tx}"),
        Some(&key),
        None,
    );
    assert_eq!(status, 200);
    let t = &got["results"]["transmission"];
    assert_eq!(t["campaign_id"], "spring");
    assert_eq!(t["num_rcpts"], 2);
    assert_eq!(t["state"], "Success");
    let (status, list) = api.request("GET", "/api/v1/transmissions", Some(&key), None);
    assert_eq!(status, 200);
    assert!(
        list["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == tx.as_str()),
        "{list}"
    );
}

#[test]
fn email_rfc822_is_delivered_as_given_and_bad_requests_are_refused_with_nothing_sent() {
    let api = Api::start("api-rfc822");
    let key = api.create_key("app", &["transmissions:modify"]);
    let raw = "From: Sender <sender@example.net>\nTo: whoever@example.com\nSubject: raw\nX-Raw: 1\n\n..leading dot line\nbody\n";
    let body = json!({"recipients": [{"address": "r1@example.com"}, {"address": "r2@example.com"}],
        "content": {"email_rfc822": raw}});
    let (status, reply) = api.post(&key, &body);
    assert_eq!(status, 200, "{reply}");
    let messages = api.sink.wait_for_messages(2, WAIT);
    for m in &messages {
        assert_eq!(
            m.mail_from, "sender@example.net",
            "the From address is the envelope sender"
        );
        assert_eq!(
            String::from_utf8(m.bytes()).unwrap(),
            raw.replace('\n', "\r\n")
        );
    }
    // Refused requests: each names its problem; nothing is spooled.
    let cases = [
        (
            json!({"recipients": [{"address": "a@example.com"}], "content": {"template_id": "t"}}),
            422,
            "1600",
        ),
        (
            json!({"recipients": {"list_id": "l"}, "content": {"email_rfc822": raw}}),
            422,
            "1600",
        ),
        (
            json!({"recipients": [{"address": "a@example.com"}], "content": {"from": "x@example.net", "subject": "s"}}),
            422,
            "1400",
        ),
        (
            json!({"recipients": [{"address": "bad"}], "content": {"email_rfc822": raw}}),
            422,
            "1902",
        ),
        (json!([1, 2]), 400, "1300"),
    ];
    for (body, status, code) in cases {
        let (got, reply) = api.post(&key, &body);
        assert_eq!((got, error_code(&reply)), (status, code), "{body}: {reply}");
        assert!(
            reply["errors"][0]["description"].as_str().unwrap().len() > 5,
            "{reply}"
        );
    }
    let (got, reply) = api.request("POST", "/api/v1/transmissions", Some(&key), None);
    assert_eq!(got, 400, "{reply}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        api.sink.messages().len(),
        2,
        "no refused request sent anything"
    );
}

/// Goal: a transmission of 10,000 recipients arrives complete, each
/// recipient once. Method: Postfix's smtp-sink (aiosmtpd takes a minute
/// for 10,000 on a loaded machine) dumps every transaction; each dump's To
/// header names its recipient.
#[test]
fn ten_thousand_recipients_arrive_complete() {
    let dir = TempDir::new("api-10k");
    let sink = PostfixSink::start(&dir.join("dump"), free_port());
    let http = free_port();
    let mut config = TestConfig::new(sink.port());
    config.extra = format!("HTTP_Listener {{ Listen \"127.0.0.1:{http}\" {{ }} }}\n");
    let daemon = Daemon::start(dir.path(), &config.render());
    let api = Api {
        daemon,
        sink: Sink::start(&dir.join("unused-sink"), free_port()),
        http,
        dir,
    };
    let key = api.create_key("bulk", &["transmissions:modify"]);
    let n = 10_000;
    let recipients: Vec<Value> = (0..n)
        .map(|i| json!({"address": format!("user{i}@d{}.example.com", i % 20)}))
        .collect();
    let body = json!({"recipients": recipients,
        "content": {"from": "bulk@example.net", "subject": "bulk", "text": "one of many\n"}});
    let started = Instant::now();
    let (status, reply) = api.post(&key, &body);
    let posted = started.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], n);
    eprintln!("api-10k: POST to spooled answer in {posted:?}");
    let dumps = poll_until(Duration::from_secs(240), || {
        let dumps = sink.dumps();
        (dumps.len() >= n).then_some(dumps)
    })
    .unwrap_or_else(|| panic!("only {} of {n} arrived", sink.dumps().len()));
    eprintln!("api-10k: all {n} at the sink after {:?}", started.elapsed());
    let mut rcpts: Vec<String> = dumps
        .iter()
        .map(|d| {
            // smtp-sink's dump: the envelope recipient, then our To header.
            let text = String::from_utf8_lossy(d);
            let rcpt = text.lines().find_map(|l| l.strip_prefix("X-Rcpt-Args: <"));
            let to = text.lines().find_map(|l| l.strip_prefix("To: "));
            let rcpt = rcpt.unwrap_or_default().trim_end_matches('>').to_string();
            assert_eq!(Some(rcpt.as_str()), to, "{text}");
            rcpt
        })
        .collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), n, "every recipient once");
}

#[test]
fn a_future_start_time_survives_kill_9_and_sends_on_time() {
    let mut api = Api::start("api-start-time");
    let key = api.create_key("app", &["transmissions:modify"]);
    let start = now_secs() + 12;
    let start_text = Command::new("date")
        .args(["-u", "-d", &format!("@{start}"), "+%Y-%m-%dT%H:%M:%S+00:00"])
        .output()
        .unwrap();
    let start_text = String::from_utf8(start_text.stdout)
        .unwrap()
        .trim()
        .to_string();
    let body = json!({"options": {"start_time": start_text},
        "recipients": [{"address": "later@example.com"}],
        "content": {"from": "me@example.net", "subject": "scheduled", "text": "later\n"}});
    let (status, reply) = api.post(&key, &body);
    assert_eq!(status, 200, "{reply}");
    api.daemon.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(api.sink.messages().is_empty());
    api.daemon.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        now_secs() < start,
        "the machine was too slow to check before start_time"
    );
    assert!(api.sink.messages().is_empty(), "sent before its start_time");
    let m = api.sink.wait_for_messages(1, WAIT);
    let arrived = now_secs();
    assert!(arrived >= start, "arrived at {arrived}, start_time {start}");
    assert!(
        arrived <= start + 10,
        "arrived at {arrived}, start_time {start}: late"
    );
    assert_eq!(m[0].rcpts, vec!["later@example.com"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.sink.messages().len(), 1, "sent once");
}

#[test]
fn a_sandbox_transmission_is_generated_and_recorded_but_not_delivered() {
    let api = Api::start("api-sandbox");
    let key = api.create_key("app", &[]);
    let body = json!({"options": {"sandbox": true}, "campaign_id": "test-run",
        "recipients": [{"address": "s1@example.com"}, {"address": "s2@example.com"}],
        "content": {"from": "me@example.net", "subject": "sandbox", "text": "x\n"}});
    let (status, reply) = api.post(&key, &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 2);
    let tx = reply["results"]["id"].as_str().unwrap().to_string();
    let evs = poll_until(WAIT, || {
        let e = api.events();
        (e.iter().filter(|e| e["type"] == "injection").count() >= 2).then_some(e)
    })
    .expect("two injection events");
    for e in evs.iter().filter(|e| e["type"] == "injection") {
        assert_eq!(e["transmission_id"], tx.as_str());
        assert_eq!(e["sandbox"], "true");
        assert_eq!(e["campaign_id"], "test-run");
    }
    let (_, got) = api.request(
        "GET",
        &format!("/api/v1/transmissions/{tx}"),
        Some(&key),
        None,
    );
    assert_eq!(got["results"]["transmission"]["state"], "sandbox");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        api.sink.messages().is_empty(),
        "a sandbox message is never delivered"
    );
    assert!(api.events().iter().all(|e| e["type"] == "injection"));
}

/// Sends one message with `header` lines and `text` as its body; the
/// reply to the end of DATA.
fn send_smtp(port: u16, rcpt: &str, header: &str, text: &str) -> (u16, String) {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    assert_eq!(client.command("DATA").0, 354);
    let body =
        format!("From: sender@client.test\r\n{header}Subject: smtpapi\r\n\r\n{text}\r\n.\r\n");
    client.write_raw(body.as_bytes());
    let reply = client.read_reply().expect("reply after DATA");
    client.command("QUIT");
    reply
}

#[test]
fn x_msys_api_over_smtp_reaches_the_events_and_not_the_recipient() {
    let api = Api::start("api-smtpapi");
    let port = api.daemon.smtp_port();
    let send = |header: &str| send_smtp(port, "x1@example.com", header, "hello");
    let (code, text) = send("X-MSYS-API: {\"campaign_id\": \"smtp-camp\",\r\n \"metadata\": {\"user\": \"42\"}, \"tags\": [\"a\", \"b\"],\r\n \"options\": {\"open_tracking\": false}}\r\n");
    assert_eq!(code, 250, "{text}");
    let (code, text) = send("X-MSYS-API: {\"metadata\": [1]}\r\n");
    let want = "550 5.6.0 X-MSYS-API 'metadata' must be of type 'json object'";
    assert_eq!((code, text.as_str()), (550, want));
    let (code, text) = send(&format!(
        "X-MSYS-API: {{\"campaign_id\": \"{}\"}}\r\n",
        "c".repeat(65)
    ));
    let want = "550 5.6.0 smtpapi_campaign_id context is limited to 64 bytes";
    assert_eq!((code, text.as_str()), (550, want));
    // Over 256 KiB: the body is streamed to the spool as it arrives.
    let big = ("0123456789abcdef".repeat(4) + "\r\n").repeat(4500);
    let header = "X-MSYS-API: {\"campaign_id\": \"big-camp\", \"tags\": [\"big\"]}\r\n";
    let (code, text) = send_smtp(port, "big@example.com", header, &big);
    assert_eq!(code, 250, "{text}");
    let m = api.sink.wait_for_messages(2, WAIT);
    for m in &m {
        let delivered = String::from_utf8(m.bytes()).unwrap();
        let head = &delivered[..delivered.find("\r\n\r\n").unwrap()];
        assert!(!head.to_ascii_lowercase().contains("x-msys-api"), "{head}");
        assert!(head.contains("Subject: smtpapi"), "{head}");
    }
    let evs = poll_until(WAIT, || {
        let e = api.events();
        (e.iter().filter(|e| e["type"] == "delivery").count() >= 2).then_some(e)
    })
    .expect("two delivery events");
    for kind in ["injection", "delivery"] {
        let e = evs
            .iter()
            .find(|e| e["type"] == kind && e["rcpt_to"] == "x1@example.com")
            .unwrap();
        assert_eq!(e["campaign_id"], "smtp-camp", "{e}");
        assert_eq!(e["rcpt_meta"], json!({"user": "42"}));
        assert_eq!(e["rcpt_tags"], json!(["a", "b"]));
        assert_eq!(e["recv_method"], "esmtp");
        let tx = e["transmission_id"].as_str().unwrap();
        assert!(tx.bytes().all(|b| b.is_ascii_digit()), "{e}");
        let big = evs
            .iter()
            .find(|e| e["type"] == kind && e["rcpt_to"] == "big@example.com")
            .unwrap();
        assert_eq!(big["campaign_id"], "big-camp", "{big}");
        assert_eq!(big["rcpt_tags"], json!(["big"]));
    }
    let sent = api.sink.messages().len();
    assert_eq!(sent, 2, "the refused messages were not sent");
}

/// One REST API request on `http_port` with Python `requests`
/// (tests/py/api_client.py): (status, JSON body). A body goes through a
/// file in `dir`.
pub(crate) fn api_request(
    dir: &Path,
    http_port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut cmd = Command::new(python());
    cmd.arg(py_dir().join("api_client.py"))
        .args(["request", "--port", &http_port.to_string()])
        .args(["--method", method, "--path", path]);
    if let Some(k) = key {
        cmd.args(["--key", k]);
    }
    if let Some(b) = body {
        let file = dir.join(format!("body-{}.json", free_port()));
        std::fs::write(&file, b.to_string()).unwrap();
        cmd.arg("--body").arg(file);
    }
    let out = run(&mut cmd, Duration::from_secs(300));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "api_client: {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v["status"].as_u64().unwrap() as u16, v["body"].clone())
}
