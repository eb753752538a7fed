//! Engagement (issue 13 items 5, 6 and 7) end to end, two ways.
//!
//! From a transmission: posted over the REST API with open and click
//! tracking (`tracking_domain` is the daemon's own HTTP_Listener),
//! delivered to the aiosmtpd sink; the pixel and the rewritten links taken
//! from the delivered body (parsed by Python's `email`) and fetched with
//! Python `requests`; the redirects, the track_event lines, a webhook made
//! through the webhooks API and the metrics API checked.
//!
//! From minted tokens: a message sent over
//! SMTP (campaign from X-MSYS-API) and delivered to the aiosmtpd sink; its
//! tracking tokens minted exactly as generation mints them
//! (`ecelerity_msggen::tracking::TrackingKey` with the daemon's own
//! `<spoolbase>/tracking_key`); the pixel and a link fetched like a mail
//! client with Python `requests` (User-Agent set, redirects not followed);
//! the open and click events checked in a webhook receiver
//! (tests/py/webhook_receiver.py, Python's http.server) fed by a webhook
//! made through the webhooks API, and the counts read back from the
//! metrics API by domain and campaign, with filters and grants. A forged
//! token gets 404 and no event; an expired one a redirect and no event; a
//! deleted webhook gets nothing more; a webhook survives a restart.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ecelerity_msggen::tracking::{Link, TokenKind, TrackingKey};
use ecelerity_tests::{
    complete_lines, free_port, poll_until, py_dir, python, run, ChildGuard, Daemon, Sink,
    SmtpClient, TempDir, TestConfig,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "engage-t0ken";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) TestMail/1.0";
const TARGET: &str = "https://shop.example.net/landing?item=42&x=%C3%A9";

/// The daemon (HTTP_Listener, event log), the sink and a webhook receiver.
struct Setup {
    daemon: Daemon,
    sink: Sink,
    _receiver: ChildGuard,
    receiver_dir: PathBuf,
    receiver_port: u16,
    http: u16,
    dir: TempDir,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_with("engagement", |_| String::new())
    }

    /// With global configuration `extra(http_port)`.
    fn start_with(label: &str, extra: impl Fn(u16) -> String) -> Setup {
        let dir = TempDir::new(label);
        let sink = Sink::start(&dir.join("sink"), free_port());
        let http = free_port();
        let mut config = TestConfig::new(sink.port());
        config.extra = format!(
            "HTTP_Listener {{ Listen \"127.0.0.1:{http}\" {{ }} }}\n\
             ec_logger \"ec_logger\" {{ eventlog = \"log/events.jsonl\" }}\n{}",
            extra(http)
        );
        let daemon = Daemon::start(dir.path(), &config.render());
        let receiver_dir = dir.join("hook");
        let receiver_port = free_port();
        let receiver = start_receiver(&receiver_dir, receiver_port);
        Setup {
            daemon,
            sink,
            _receiver: receiver,
            receiver_dir,
            receiver_port,
            http,
            dir,
        }
    }

    fn create_key(&self, name: &str, grants: &[&str]) -> String {
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
        assert_eq!(key.len(), 40, "no key on the last line: {text:?}");
        key
    }

    /// One API request with Python `requests`: (status, JSON body).
    fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        super::api::api_request(self.dir.path(), self.http, method, path, key, body)
    }

    /// A tracking URL fetched like a mail client: (status, headers, body).
    fn fetch(&self, method: &str, path: &str) -> (u16, Value, Vec<u8>) {
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        let out = run(
            Command::new(python())
                .arg(py_dir().join("track_client.py"))
                .args(["--url", &url, "--method", method, "--user-agent", UA]),
            Duration::from_secs(120),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "track_client: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap();
        (
            v["status"].as_u64().unwrap() as u16,
            v["headers"].clone(),
            body,
        )
    }

    /// Every event the receiver got: (path, token, event).
    fn received(&self) -> Vec<(String, String, Value)> {
        complete_lines(&self.receiver_dir.join("received.jsonl"))
            .iter()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                (
                    r["path"].as_str().unwrap_or("").to_string(),
                    r["token"].as_str().unwrap_or("").to_string(),
                    r["event"].clone(),
                )
            })
            .collect()
    }

    fn events(&self) -> Vec<Value> {
        complete_lines(&self.dir.join("log/events.jsonl"))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn track_events(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter_map(|e| e["msys"].get("track_event").cloned())
            .collect()
    }

    /// The daemon's tracking secret, as generation reads it.
    fn tracking_key(&self) -> TrackingKey {
        let text = std::fs::read_to_string(self.dir.join("spool/tracking_key")).unwrap();
        let text = text.trim();
        let secret: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        TrackingKey::new(&secret).unwrap()
    }

    fn create_webhook(&self, key: &str, name: &str, path: &str, events: &[&str]) -> String {
        let body = json!({
            "name": name,
            "target": format!("http://127.0.0.1:{}{path}", self.receiver_port),
            "events": events,
            "auth_token": TOKEN,
        });
        let (status, got) = self.request("POST", "/api/v1/webhooks", Some(key), Some(&body));
        assert_eq!(status, 200, "{got}");
        let id = got["results"]["id"].as_str().unwrap().to_string();
        assert_eq!(
            got["results"]["links"][0]["href"],
            format!("/api/v1/webhooks/{id}")
        );
        id
    }
}

fn start_receiver(dir: &Path, port: u16) -> ChildGuard {
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(python())
        .arg(py_dir().join("webhook_receiver.py"))
        .args(["--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn webhook_receiver.py");
    let guard = ChildGuard::new("webhook_receiver.py", child);
    let up = poll_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "webhook receiver did not listen");
    guard
}

/// Sends one message with an X-MSYS-API campaign and metadata.
fn send(port: u16, rcpt: &str) {
    let mut client = SmtpClient::connect(port);
    assert_eq!(client.command("EHLO client.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<news@client.test>").0, 250);
    assert_eq!(client.command(&format!("RCPT TO:<{rcpt}>")).0, 250);
    assert_eq!(client.command("DATA").0, 354);
    let body = "From: news@client.test\r\n\
                X-MSYS-API: {\"campaign_id\": \"spring\", \"metadata\": {\"user\": \"42\"}}\r\n\
                Subject: offer\r\n\r\nhello\r\n.\r\n";
    client.write_raw(body.as_bytes());
    let (code, reply) = client.read_reply().expect("reply after DATA");
    assert_eq!(code, 250, "{reply}");
    client.command("QUIT");
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM` (UTC) of a unix time, SparkPost's metrics format.
fn minute_text(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = unix_secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}", t / 3600, t % 3600 / 60)
}

/// What a delivered message's tokens carry.
struct Delivered {
    message_id: String,
    transmission_id: String,
    rcpt: String,
}

fn mint(key: &TrackingKey, d: &Delivered, kind: TokenKind, expires_at: u64) -> String {
    let link = Link {
        kind,
        expires_at,
        unsubscribe: false,
        target_url: if kind == TokenKind::Click { TARGET } else { "" },
        link_name: if kind == TokenKind::Click {
            "Landing page"
        } else {
            ""
        },
        transmission_id: &d.transmission_id,
        message_id: &d.message_id,
        recipient: &d.rcpt,
        campaign_id: "spring",
        metadata: "{\"user\":\"42\"}",
    };
    let mut out = Vec::new();
    key.encode(&link, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// A token with one character changed (still base64url).
fn tampered(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn field<'a>(e: &'a Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or("")
}

#[test]
fn opens_and_clicks_reach_webhooks_and_metrics() {
    let mut s = Setup::start();
    let admin = s.create_key("admin", &[]);
    let viewer = s.create_key("viewer", &["metrics:view"]);
    let started = now_secs();

    // Grants: no key, a key without the grant.
    let (status, got) = s.request("GET", "/api/v1/webhooks", None, None);
    assert_eq!(status, 401, "{got}");
    assert_eq!(got["errors"][0]["code"], "1000");
    let (status, got) = s.request("GET", "/api/v1/webhooks", Some(&viewer), None);
    assert_eq!(status, 403, "{got}");
    assert_eq!(got["errors"][0]["code"], "1100");
    let path = format!(
        "/api/v1/metrics/deliverability?from={}&metrics=count_injected",
        minute_text(started - 600)
    );
    assert_eq!(s.request("GET", &path, None, None).0, 401);

    // A webhook made through the API, for track events and deliveries.
    let hook_a = s.create_webhook(&admin, "engagement", "/a", &["track_event", "delivery"]);
    let (status, got) = s.request("GET", "/api/v1/webhooks", Some(&admin), None);
    assert_eq!(status, 200);
    let listed = &got["results"][0];
    assert_eq!(
        (listed["id"].as_str(), listed["name"].as_str()),
        (Some(hook_a.as_str()), Some("engagement"))
    );
    assert_eq!(listed["events"], json!(["track_event", "delivery"]));
    assert_eq!(listed["active"], true);
    let bad = json!({"name": "x", "target": "http://127.0.0.1:1/", "events": ["clack"]});
    let (status, got) = s.request("POST", "/api/v1/webhooks", Some(&admin), Some(&bad));
    assert_eq!(status, 422, "{got}");

    // A message delivered; its ids from the event log.
    let rcpt = "Reader@Example.COM";
    send(s.daemon.smtp_port(), rcpt);
    let delivery = poll_until(WAIT, || {
        s.events().into_iter().find_map(|e| {
            let d = &e["msys"]["message_event"];
            (field(d, "type") == "delivery").then(|| d.clone())
        })
    })
    .expect("a delivery event");
    let delivered = Delivered {
        message_id: field(&delivery, "message_id").to_string(),
        transmission_id: field(&delivery, "transmission_id").to_string(),
        rcpt: rcpt.to_string(),
    };
    assert_eq!(field(&delivery, "campaign_id"), "spring");

    // Like a mail client: the pixel (GET and HEAD), then the link.
    let key = s.tracking_key();
    let later = now_secs() + 3600;
    let open = mint(&key, &delivered, TokenKind::Open, later);
    let click = mint(&key, &delivered, TokenKind::Click, later);
    let (status, headers, body) = s.fetch("GET", &format!("/q/{open}"));
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/gif");
    assert!(field(&headers, "cache-control").contains("no-cache"));
    assert_eq!(body.len(), 43);
    assert!(body.starts_with(b"GIF89a"));
    let (status, headers, body) = s.fetch("HEAD", &format!("/q/{open}"));
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], "43");
    let (status, headers, _) = s.fetch("GET", &format!("/f/landing/{click}"));
    assert_eq!(status, 302);
    assert_eq!(headers["location"], TARGET);
    assert!(field(&headers, "cache-control").contains("no-store"));

    // Forged, tampered, wrong kind: 404 and no event. Expired: redirect,
    // no event.
    let forged = mint(
        &TrackingKey::new(&[9u8; 32]).unwrap(),
        &delivered,
        TokenKind::Click,
        later,
    );
    for bad in [
        format!("/f/{forged}"),
        format!("/f/{}", tampered(&click)),
        format!("/q/{}", tampered(&open)),
        format!("/q/{click}"),
        "/f/not*a*token".to_string(),
    ] {
        let (status, headers, _) = s.fetch("GET", &bad);
        assert_eq!(status, 404, "{bad}");
        assert!(headers.get("location").is_none());
    }
    let expired = mint(&key, &delivered, TokenKind::Click, now_secs() - 10);
    let (status, headers, _) = s.fetch("GET", &format!("/f/{expired}"));
    assert_eq!((status, field(&headers, "location")), (302, TARGET));

    // The webhook gets two opens and one click with the right fields.
    let track = poll_until(WAIT, || {
        let got: Vec<(String, String, Value)> = s
            .received()
            .into_iter()
            .filter(|(_, _, e)| e["msys"].get("track_event").is_some())
            .collect();
        (got.len() >= 3).then_some(got)
    })
    .unwrap_or_else(|| panic!("track events not received: {:#?}", s.received()));
    assert_eq!(track.len(), 3, "{track:#?}");
    for (path, token, e) in &track {
        assert_eq!((path.as_str(), token.as_str()), ("/a", TOKEN));
        let t = &e["msys"]["track_event"];
        assert_eq!(field(t, "message_id"), delivered.message_id);
        assert_eq!(field(t, "transmission_id"), delivered.transmission_id);
        assert_eq!(field(t, "rcpt_to"), rcpt);
        assert_eq!(field(t, "routing_domain"), "example.com");
        assert_eq!(field(t, "campaign_id"), "spring");
        assert_eq!(t["rcpt_meta"], json!({"user": "42"}));
        assert_eq!(field(t, "user_agent"), UA);
        assert_eq!(field(t, "accept_language"), "en-GB,en;q=0.8");
        assert_eq!(field(t, "ip_address"), "127.0.0.1");
        let ts: u64 = field(t, "timestamp").parse().unwrap();
        assert!(ts >= started && ts <= now_secs(), "{t}");
        assert!(!field(t, "event_id").is_empty());
    }
    let kinds: Vec<&str> = track
        .iter()
        .map(|(_, _, e)| field(&e["msys"]["track_event"], "type"))
        .collect();
    assert_eq!(kinds, ["open", "open", "click"]);
    let c = &track[2].2["msys"]["track_event"];
    assert_eq!(field(c, "target_link_url"), TARGET);
    assert_eq!(field(c, "target_link_name"), "Landing page");
    assert!(s
        .received()
        .iter()
        .any(|(_, _, e)| field(&e["msys"]["message_event"], "type") == "delivery"));
    assert_eq!(s.track_events().len(), 3, "refused and expired: no event");
    let prometheus = s.fetch("GET", "/metrics").2;
    let prometheus = String::from_utf8_lossy(&prometheus);
    for want in [
        "ecelerity_track_refused_total{shard=\"total\"} 5",
        "ecelerity_track_expired_total{shard=\"total\"} 1",
        "ecelerity_track_clicks_total{shard=\"total\"} 1",
    ] {
        assert!(prometheus.contains(want), "{want} in {prometheus}");
    }

    // Metrics by domain and by campaign, filtered.
    let from = minute_text(started - 120);
    let metrics = "count_injected,count_delivered,count_sent,count_rendered,\
                   count_unique_rendered,count_clicked,count_unique_clicked,count_bounce";
    let want = json!({"count_injected": 1, "count_delivered": 1, "count_sent": 1,
        "count_rendered": 2, "count_unique_rendered": 1, "count_clicked": 1,
        "count_unique_clicked": 1, "count_bounce": 0});
    let ask = |path: &str| {
        let (status, got) = s.request("GET", path, Some(&viewer), None);
        assert_eq!(status, 200, "{path}: {got}");
        got["results"].clone()
    };
    let by_domain = ask(&format!(
        "/api/v1/metrics/deliverability/domain?from={from}&metrics={metrics}&domains=example.com"
    ));
    let mut row = want.clone();
    row["domain"] = json!("example.com");
    assert_eq!(by_domain, json!([row]));
    let by_campaign = ask(&format!(
        "/api/v1/metrics/deliverability/campaign?from={from}&metrics={metrics}&campaigns=spring"
    ));
    let mut row = want.clone();
    row["campaign_id"] = json!("spring");
    assert_eq!(by_campaign, json!([row]));
    let none = ask(&format!(
        "/api/v1/metrics/deliverability/domain?from={from}&metrics={metrics}&domains=other.example"
    ));
    assert_eq!(none, json!([]));
    let whole = ask(&format!(
        "/api/v1/metrics/deliverability?from={from}&metrics=count_injected,count_clicked&campaigns=spring"
    ));
    assert_eq!(whole, json!([{"count_injected": 1, "count_clicked": 1}]));
    let (status, got) = s.request(
        "GET",
        &format!("/api/v1/metrics/deliverability?from={from}&metrics=count_nothing"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 400, "{got}");
    assert!(got["errors"][0]["description"]
        .as_str()
        .unwrap()
        .contains("count_nothing"));

    // Webhook A deleted: it gets nothing more; webhook B (clicks only,
    // made after) gets the next click, and A's count stays.
    let (status, _) = s.request(
        "DELETE",
        &format!("/api/v1/webhooks/{hook_a}"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = s.request(
        "GET",
        &format!("/api/v1/webhooks/{hook_a}"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 404);
    let a_before = s.received().iter().filter(|(p, _, _)| p == "/a").count();
    let hook_b = s.create_webhook(&admin, "clicks", "/b", &["click"]);
    assert_eq!(s.fetch("GET", &format!("/f/{click}")).0, 302);
    assert_eq!(s.fetch("GET", &format!("/q/{open}")).0, 200);
    let b = at_b(&s, 1);
    assert_eq!(field(&b[0]["msys"]["track_event"], "type"), "click");
    let a_after = s.received().iter().filter(|(p, _, _)| p == "/a").count();
    assert_eq!(a_before, a_after, "a deleted webhook got events");

    // A restart keeps webhook B (and its cursor): the next click reaches
    // it once, the one before is not sent again.
    s.daemon.stop();
    s.daemon.restart();
    let (status, got) = s.request("GET", "/api/v1/webhooks", Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(got["results"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["results"][0]["id"], hook_b.as_str());
    assert_eq!(s.fetch("GET", &format!("/f/{click}")).0, 302);
    let b = at_b(&s, 2);
    assert_eq!(b.len(), 2, "{b:#?}");
    assert_ne!(
        field(&b[0]["msys"]["track_event"], "event_id"),
        field(&b[1]["msys"]["track_event"], "event_id")
    );
}

/// The events webhook B (`/b`) got, once there are `n` at least.
fn at_b(s: &Setup, n: usize) -> Vec<Value> {
    poll_until(WAIT, || {
        let got: Vec<Value> = s
            .received()
            .into_iter()
            .filter(|(p, _, _)| p == "/b")
            .map(|(_, _, e)| e)
            .collect();
        (got.len() >= n).then_some(got)
    })
    .unwrap_or_else(|| panic!("webhook B got no click: {:#?}", s.received()))
}

/// The html link of the tracked transmission (its `&amp;` is `&` once
/// the rewriter has read it) and the text link.
const HTML_TARGET: &str = "https://shop.example.net/autumn?item=7&lang=%C3%A9";
const TEXT_TARGET: &str = "https://shop.example.net/text-link";

/// The decoded leaf of type `mime` of a delivered message, parsed by
/// Python's `email` package.
fn leaf(m: &ecelerity_tests::SinkMessage, mime: &str) -> String {
    let parsed = crate::api::parse_messages(&[m.path.as_path()]);
    let leaf = parsed[0]["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["type"] == mime)
        .unwrap_or_else(|| panic!("no {mime} part in {}", parsed[0]));
    let data = base64::engine::general_purpose::STANDARD
        .decode(leaf["data"].as_str().unwrap())
        .unwrap();
    String::from_utf8(data).unwrap()
}

/// The path of the first URL in `text` that starts with `prefix`, up to
/// the closing quote, `>` or white space.
fn url_path(text: &str, prefix: &str) -> String {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {text}"));
    let rest = &text[at..];
    let end = rest
        .find(|c: char| c == '"' || c == '>' || c.is_whitespace())
        .unwrap_or(rest.len());
    let url = &rest[..end];
    let scheme_host = url.find("//").unwrap() + 2;
    let path = &url[scheme_host..];
    path[path.find('/').unwrap()..].to_string()
}

/// Sorted `(type, target_link_url, target_link_name)` of track events.
fn kinds_and_targets(events: &[Value]) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = events
        .iter()
        .map(|t| {
            (
                field(t, "type").to_string(),
                field(t, "target_link_url").to_string(),
                field(t, "target_link_name").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The whole path: a transmission of a stored template posted over the
/// REST API with open and click tracking, delivered to the aiosmtpd sink;
/// the pixel and the rewritten links taken from the delivered body and
/// fetched like a mail client (Python `requests`); the redirects go to the original URLs, and
/// the opens and clicks are in the event log, at a webhook made through
/// the webhooks API, and in the metrics API.
#[test]
fn a_tracked_transmission_is_opened_and_clicked_from_the_delivered_body() {
    let s = Setup::start_with("engagement-tx", |http| {
        format!("tracking_domain = \"127.0.0.1:{http}\"\n")
    });
    let admin = s.create_key("admin", &[]);
    let started = now_secs();
    let hook = s.create_webhook(&admin, "engagement", "/t", &["open", "click"]);

    // A stored template; two recipients; only the reader opens and clicks.
    let html = format!(
        "<html><body><p>Autumn</p><a href=\"{}\" data-msys-linkname=\"Autumn sale\">Shop</a>\
         </body></html>",
        HTML_TARGET.replace('&', "&amp;")
    );
    let template = json!({"id": "autumn-news", "name": "Autumn news", "published": true,
        "content": {"from": "news@example.net", "subject": "Autumn offer",
                    "text": format!("Shop at {TEXT_TARGET}\n"), "html": html}});
    let (status, got) = s.request("POST", "/api/v1/templates", Some(&admin), Some(&template));
    assert_eq!(status, 200, "{got}");
    let body = json!({
        "campaign_id": "autumn",
        "metadata": {"list": "weekly"},
        "options": {"open_tracking": true, "click_tracking": true},
        "recipients": [
            {"address": {"email": "reader@example.com", "name": "Reader"},
             "metadata": {"user": "7"}},
            {"address": "idle@example.org"}
        ],
        "content": {"template_id": "autumn-news"}
    });
    let (status, got) = s.request("POST", "/api/v1/transmissions", Some(&admin), Some(&body));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["results"]["total_accepted_recipients"], 2);
    let tx = got["results"]["id"].as_str().unwrap().to_string();

    // The delivered body: the pixel and the two rewritten links point at
    // the daemon's HTTP_Listener (tracking_domain), never at the targets.
    let messages = s.sink.wait_for_messages(2, WAIT);
    let reader = messages
        .iter()
        .find(|m| m.rcpts == ["reader@example.com"])
        .expect("the reader's message");
    let (html, text) = (leaf(reader, "text/html"), leaf(reader, "text/plain"));
    let base = format!("http://127.0.0.1:{}/", s.http);
    assert!(!html.contains("shop.example.net"), "{html}");
    assert!(!text.contains(TEXT_TARGET), "{text}");
    let pixel = url_path(&html, &format!("{base}q/"));
    let html_click = url_path(&html, &format!("{base}f/"));
    let text_click = url_path(&text, &format!("{base}f/"));
    assert_ne!(html_click, text_click);

    let delivery = poll_until(WAIT, || {
        s.events().into_iter().find_map(|e| {
            let d = &e["msys"]["message_event"];
            (field(d, "type") == "delivery" && field(d, "rcpt_to") == "reader@example.com")
                .then(|| d.clone())
        })
    })
    .expect("the reader's delivery event");
    assert_eq!(field(&delivery, "transmission_id"), tx);
    assert_eq!(field(&delivery, "template_id"), "autumn-news");
    let message_id = field(&delivery, "message_id").to_string();

    // Like a mail client: the pixel twice (the message opened again), each
    // link once; the redirects go to the original URLs exactly.
    for _ in 0..2 {
        let (status, headers, gif) = s.fetch("GET", &pixel);
        assert_eq!(
            (status, field(&headers, "content-type")),
            (200, "image/gif")
        );
        assert!(gif.starts_with(b"GIF89a") && gif.len() == 43);
    }
    let (status, headers, _) = s.fetch("GET", &html_click);
    assert_eq!((status, field(&headers, "location")), (302, HTML_TARGET));
    let (status, headers, _) = s.fetch("GET", &text_click);
    assert_eq!((status, field(&headers, "location")), (302, TEXT_TARGET));

    // The event log: two opens and two clicks, all the reader's.
    let want = vec![
        (
            "click".to_string(),
            HTML_TARGET.to_string(),
            "Autumn sale".to_string(),
        ),
        ("click".to_string(), TEXT_TARGET.to_string(), String::new()),
        ("open".to_string(), String::new(), String::new()),
        ("open".to_string(), String::new(), String::new()),
    ];
    let logged = poll_until(WAIT, || {
        let t = s.track_events();
        (t.len() >= 4).then_some(t)
    })
    .unwrap_or_else(|| panic!("track_event lines: {:#?}", s.track_events()));
    assert_eq!(kinds_and_targets(&logged), want, "{logged:#?}");
    for t in &logged {
        assert_eq!(field(t, "rcpt_to"), "reader@example.com", "{t}");
        assert_eq!(field(t, "routing_domain"), "example.com");
        assert_eq!(field(t, "transmission_id"), tx);
        assert_eq!(field(t, "message_id"), message_id);
        assert_eq!(field(t, "campaign_id"), "autumn");
        assert_eq!(t["rcpt_meta"], json!({"list": "weekly", "user": "7"}));
        assert_eq!(field(t, "user_agent"), UA);
        assert_eq!(field(t, "ip_address"), "127.0.0.1");
        let ts: u64 = field(t, "timestamp").parse().unwrap();
        assert!(ts >= started && ts <= now_secs(), "{t}");
    }

    // The webhook (open and click only): the same four events, with its
    // token, and no delivery.
    let hooked = poll_until(WAIT, || {
        let got = s.received();
        (got.len() >= 4).then_some(got)
    })
    .unwrap_or_else(|| panic!("webhook {hook} got: {:#?}", s.received()));
    assert_eq!(hooked.len(), 4, "{hooked:#?}");
    let mut hooked_events = Vec::new();
    for (path, token, e) in &hooked {
        assert_eq!((path.as_str(), token.as_str()), ("/t", TOKEN));
        hooked_events.push(e["msys"]["track_event"].clone());
    }
    assert_eq!(kinds_and_targets(&hooked_events), want);
    let ids = |events: &[Value]| {
        let mut ids: Vec<String> = events
            .iter()
            .map(|t| field(t, "event_id").to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&hooked_events), ids(&logged));

    // The metrics API: the campaign as a whole and by domain.
    let viewer = s.create_key("viewer", &["metrics:view"]);
    let from = minute_text(started - 120);
    let metrics = "count_injected,count_delivered,count_rendered,count_unique_rendered,\
                   count_unique_confirmed_opened,count_clicked,count_unique_clicked";
    let ask = |path: &str| {
        let (status, got) = s.request("GET", path, Some(&viewer), None);
        assert_eq!(status, 200, "{path}: {got}");
        got["results"].clone()
    };
    let whole = ask(&format!(
        "/api/v1/metrics/deliverability?from={from}&metrics={metrics}&campaigns=autumn"
    ));
    assert_eq!(
        whole,
        json!([{"count_injected": 2, "count_delivered": 2, "count_rendered": 2,
                "count_unique_rendered": 1, "count_unique_confirmed_opened": 1,
                "count_clicked": 2, "count_unique_clicked": 1}])
    );
    let by_domain = ask(&format!(
        "/api/v1/metrics/deliverability/domain?from={from}&metrics={metrics}"
    ));
    assert_eq!(
        by_domain,
        json!([
            {"domain": "example.com", "count_injected": 1, "count_delivered": 1,
             "count_rendered": 2, "count_unique_rendered": 1,
             "count_unique_confirmed_opened": 1, "count_clicked": 2, "count_unique_clicked": 1},
            {"domain": "example.org", "count_injected": 1, "count_delivered": 1,
             "count_rendered": 0, "count_unique_rendered": 0,
             "count_unique_confirmed_opened": 0, "count_clicked": 0, "count_unique_clicked": 0}
        ])
    );
    // By template: the messages' events count under it (track events
    // carry no template).
    let by_template = ask(&format!(
        "/api/v1/metrics/deliverability/template?from={from}\
         &metrics=count_injected,count_delivered&templates=autumn-news"
    ));
    assert_eq!(
        by_template,
        json!([{"template_id": "autumn-news", "count_injected": 2, "count_delivered": 2}])
    );
}
