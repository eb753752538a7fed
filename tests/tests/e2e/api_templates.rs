//! Stored templates, recipient lists, substitution and tracking (issue 13
//! items 2 and 3) end to end: Python `requests` against the real daemon
//! (tests/py/api_client.py), what arrives at the aiosmtpd sink checked
//! byte for byte (the header block after our Received header, the parts
//! as Python's `email` package decodes them), and a delivered tracking
//! token opened with `msggen` and the daemon's `<spoolbase>/tracking_key`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ecelerity_msggen::tracking::{TokenKind, TrackingKey};
use ecelerity_tests::{strip_leading_received, SinkMessage};
use serde_json::{json, Value};

use crate::api::{header, parse_messages, Api};

const WAIT: Duration = Duration::from_secs(60);

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["errors"][0]["code"].as_str().unwrap_or(""),
        body["errors"][0]["description"].as_str().unwrap_or(""),
    )
}

/// The decoded leaves (text, html) of a delivered message.
fn leaves(m: &Value) -> Vec<String> {
    m["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(l["data"].as_str().unwrap())
                .unwrap();
            String::from_utf8(data).unwrap()
        })
        .collect()
}

/// The header block (to the blank line), after a Received header if one
/// leads (a generated message has none: it was never received over SMTP).
fn header_block(m: &SinkMessage) -> String {
    let bytes = m.bytes();
    let rest = strip_leading_received(&bytes).unwrap_or(&bytes);
    let text = String::from_utf8(rest.to_vec()).unwrap();
    let end = text.find("\r\n\r\n").expect("a header block") + 4;
    text[..end].to_string()
}

fn by_rcpt(messages: Vec<SinkMessage>, rcpt: &str) -> SinkMessage {
    messages
        .into_iter()
        .find(|m| m.rcpts == [rcpt])
        .unwrap_or_else(|| panic!("no message for {rcpt}"))
}

/// A template using every construct of the language.
fn showcase_content() -> Value {
    let text = "Hi {{name or 'Customer'}} <{{address.email}}> ({{address.name}}),\n\
{{if vip}}VIP{{elseif points > 100}}Member with {{points}} points{{else}}Guest{{end}}\n\
Total: {{order.total * 2 - 1}} half: {{(order.total + 1) / 2}}\n\
{{each order.lines}}- {{loop_index + 1}}. {{loop_var.sku}} x{{loop_var.qty}}{{each loop_var.tags}} [{{loop_var}} of {{loop_vars.lines.sku}}]{{end}}\n\
{{end}}Raw: {{{snippet}}} Escaped: {{snippet}}\n\
City: {{user.address.city}} / {{user['address']['city']}} First: {{order.lines[1].sku or 'none'}}\n\
{{opening_double_curly()}}literal{{closing_double_curly()}} {{if empty(coupons)}}no coupons{{else}}{{coupons[1]}}{{end}}\n\
rp={{return_path}}\n";
    let html = "<html><body><p>Hi {{name or 'Customer'}}</p><p>{{{snippet}}} / {{snippet}}</p>\
<ul>{{each order.lines}}<li>{{loop_var.sku}}</li>{{end}}</ul></body></html>";
    json!({
        "from": {"email": "{{sender or 'news'}}@example.net", "name": "{{brand}} News"},
        "subject": "Order {{order.id}} for {{name or 'Customer'}}",
        "reply_to": "help+{{order.id}}@example.net",
        "headers": {
            "X-Campaign": "{{campaign}}",
            "X-Tier": "{{if vip}}gold{{elseif points > 100}}silver{{else}}standard{{end}}"
        },
        "text": text,
        "html": html
    })
}

#[test]
fn a_template_with_every_construct_renders_per_recipient_byte_for_byte() {
    let api = Api::start_with("api-tpl-showcase", "");
    let key = api.create_key("app", &[]);
    let (status, created) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&key),
        Some(
            &json!({"id": "showcase", "name": "Showcase", "published": true,
                     "content": showcase_content()}),
        ),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["results"]["id"], "showcase");
    let body = json!({
        "campaign_id": "c1",
        "return_path": "bounce@example.net",
        "metadata": {"campaign": "spring"},
        "substitution_data": {
            "brand": "Acme", "snippet": "<i>tx</i>", "points": 0, "coupons": [],
            "user": {"address": {"city": "Default"}},
            "order": {"id": 3, "total": 0, "lines": [{"sku": "Z", "qty": 1, "tags": ["t"]}]}
        },
        "recipients": [
            {"address": {"email": "ann@example.com", "name": "Ann Example"},
             "substitution_data": {
                "name": "Ann & Co", "vip": true, "snippet": "<b>hi</b>",
                "user": {"address": {"city": "Oslo"}},
                "order": {"id": 1, "total": 10, "lines": [
                    {"sku": "A1", "qty": 2, "tags": ["red", "big"]},
                    {"sku": "B2", "qty": 1, "tags": []}]}}},
            {"address": "bob@example.org",
             "metadata": {"name": "Bob", "campaign": "bob-camp"},
             "substitution_data": {"points": 150, "coupons": ["SAVE5"], "sender": "offers",
                                   "order": {"id": 2, "total": 3.5, "lines": []}}},
            {"address": {"email": "cy@example.com"}}
        ],
        "content": {"template_id": "showcase"}
    });
    let (status, reply) = api.post(&key, &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 3);
    let tx = reply["results"]["id"].as_str().unwrap().to_string();
    let messages = api.sink.wait_for_messages(3, WAIT);
    struct Want {
        rcpt: &'static str,
        to: &'static str,
        from: &'static str,
        subject: &'static str,
        reply_to: &'static str,
        campaign: &'static str,
        tier: &'static str,
        text: &'static str,
        html: &'static str,
    }
    let wants = [
        Want {
            rcpt: "ann@example.com",
            to: "\"Ann Example\" <ann@example.com>",
            from: "\"Acme News\" <news@example.net>",
            subject: "Order 1 for Ann & Co",
            reply_to: "help+1@example.net",
            campaign: "spring",
            tier: "gold",
            text: "Hi Ann & Co <ann@example.com> (Ann Example),\r\nVIP\r\nTotal: 19 half: 5.5\r\n\
- 1. A1 x2 [red of A1] [big of A1]\r\n- 2. B2 x1\r\nRaw: <b>hi</b> Escaped: <b>hi</b>\r\n\
City: Oslo / Oslo First: A1\r\n{{literal}} no coupons\r\nrp=bounce@example.net\r\n",
            html: "<html><body><p>Hi Ann &amp; Co</p><p><b>hi</b> / &lt;b&gt;hi&lt;/b&gt;</p>\
<ul><li>A1</li><li>B2</li></ul></body></html>",
        },
        Want {
            rcpt: "bob@example.org",
            to: "bob@example.org",
            from: "\"Acme News\" <offers@example.net>",
            subject: "Order 2 for Bob",
            reply_to: "help+2@example.net",
            campaign: "bob-camp",
            tier: "silver",
            text:
                "Hi Bob <bob@example.org> (),\r\nMember with 150 points\r\nTotal: 6 half: 2.25\r\n\
Raw: <i>tx</i> Escaped: <i>tx</i>\r\nCity: Default / Default First: none\r\n\
{{literal}} SAVE5\r\nrp=bounce@example.net\r\n",
            html: "<html><body><p>Hi Bob</p><p><i>tx</i> / &lt;i&gt;tx&lt;/i&gt;</p>\
<ul></ul></body></html>",
        },
        Want {
            rcpt: "cy@example.com",
            to: "cy@example.com",
            from: "\"Acme News\" <news@example.net>",
            subject: "Order 3 for Customer",
            reply_to: "help+3@example.net",
            campaign: "spring",
            tier: "standard",
            text: "Hi Customer <cy@example.com> (),\r\nGuest\r\nTotal: -1 half: 0.5\r\n\
- 1. Z x1 [t of Z]\r\nRaw: <i>tx</i> Escaped: <i>tx</i>\r\nCity: Default / Default First: Z\r\n\
{{literal}} no coupons\r\nrp=bounce@example.net\r\n",
            html: "<html><body><p>Hi Customer</p><p><i>tx</i> / &lt;i&gt;tx&lt;/i&gt;</p>\
<ul><li>Z</li></ul></body></html>",
        },
    ];
    for (n, want) in wants.iter().enumerate() {
        let m = by_rcpt(messages.clone(), want.rcpt);
        assert_eq!(m.mail_from, "bounce@example.net");
        let block = header_block(&m);
        let date = m.header("Date").expect("a Date field");
        let expected = format!(
            "To: {}\r\nMessage-ID: <{tx}.{n}@mta.test>\r\nFrom: {}\r\nSubject: {}\r\n\
             Reply-To: {}\r\nDate: {date}\r\nX-Campaign: {}\r\nX-Tier: {}\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"=_ec_{tx}_1\"\r\n\r\n",
            want.to, want.from, want.subject, want.reply_to, want.campaign, want.tier
        );
        assert_eq!(block, expected, "{}", want.rcpt);
        let parsed = parse_messages(&[m.path.as_path()]);
        assert_eq!(parsed[0]["defects"], json!([]));
        assert_eq!(
            parsed[0]["tree"],
            json!({"multipart/alternative": ["text/plain", "text/html"]})
        );
        assert_eq!(
            leaves(&parsed[0]),
            vec![want.text, want.html],
            "{}",
            want.rcpt
        );
    }
}

#[test]
fn drafts_published_versions_and_preview() {
    let api = Api::start_with("api-tpl-drafts", "");
    let key = api.create_key("app", &[]);
    let viewer = api.create_key("viewer", &["templates:view"]);
    let content = |subject: &str| json!({"from": "news@example.net", "subject": subject, "text": "Hello {{name}}\n"});
    let (status, err) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&viewer),
        Some(&json!({"name": "Welcome", "content": content("v1 {{name}}")})),
    );
    assert_eq!(status, 403, "templates:modify is needed: {err}");
    let (status, made) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&key),
        Some(&json!({"name": "Welcome Mail", "content": content("v1 {{name}}")})),
    );
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["results"]["id"], "welcome-mail");
    let send = |use_draft: bool, rcpt: &str| {
        api.post(
            &key,
            &json!({"recipients": [{"address": rcpt, "substitution_data": {"name": rcpt}}],
                    "content": {"template_id": "welcome-mail", "use_draft_template": use_draft}}),
        )
    };
    // Only a draft: sending the published version is refused.
    let (status, err) = send(false, "a@example.com");
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        error_of(&err),
        (
            "1600",
            "content.template_id: no published template 'welcome-mail'"
        )
    );
    let (status, ok) = send(true, "draft1@example.com");
    assert_eq!(status, 200, "{ok}");
    // Publish the draft, then start a new draft.
    let (status, r) = api.request(
        "PUT",
        "/api/v1/templates/welcome-mail",
        Some(&key),
        Some(&json!({"published": true})),
    );
    assert_eq!(status, 200, "{r}");
    let (status, r) = api.request(
        "PUT",
        "/api/v1/templates/welcome-mail",
        Some(&key),
        Some(&json!({"content": content("v2 {{name}}")})),
    );
    assert_eq!(status, 200, "{r}");
    let get = |q: &str| {
        api.request(
            "GET",
            &format!("/api/v1/templates/welcome-mail{q}"),
            Some(&viewer),
            None,
        )
    };
    let (_, d) = get("?draft=true");
    assert_eq!(d["results"]["content"]["subject"], "v2 {{name}}", "{d}");
    assert_eq!(d["results"]["published"], false);
    assert_eq!(d["results"]["has_published"], true);
    let (_, p) = get("?draft=false");
    assert_eq!(p["results"]["content"]["subject"], "v1 {{name}}", "{p}");
    assert_eq!(p["results"]["published"], true);
    let (status, _) = send(false, "pub@example.com");
    assert_eq!(status, 200);
    let (status, _) = send(true, "draft2@example.com");
    assert_eq!(status, 200);
    // update_published changes the published version in place.
    let (status, r) = api.request(
        "PUT",
        "/api/v1/templates/welcome-mail?update_published=true",
        Some(&key),
        Some(&json!({"content": content("v3 {{name}}")})),
    );
    assert_eq!(status, 200, "{r}");
    let (status, _) = send(false, "pub3@example.com");
    assert_eq!(status, 200);
    let messages = api.sink.wait_for_messages(4, WAIT);
    for (rcpt, subject) in [
        ("draft1@example.com", "v1 draft1@example.com"),
        ("pub@example.com", "v1 pub@example.com"),
        ("draft2@example.com", "v2 draft2@example.com"),
        ("pub3@example.com", "v3 pub3@example.com"),
    ] {
        let m = by_rcpt(messages.clone(), rcpt);
        assert_eq!(m.header("Subject").as_deref(), Some(subject));
    }
    // Preview renders with the data given, draft or published.
    let preview = |q: &str| {
        api.request(
            "POST",
            &format!("/api/v1/templates/welcome-mail/preview{q}"),
            Some(&viewer),
            Some(&json!({"substitution_data": {"name": "Zoë"}})),
        )
    };
    let (status, pv) = preview("?draft=true");
    assert_eq!(status, 200, "{pv}");
    assert_eq!(pv["results"]["subject"], "v2 Zoë");
    assert_eq!(pv["results"]["text"], "Hello Zoë\n");
    assert_eq!(pv["results"]["from"]["email"], "news@example.net");
    let (_, pv) = preview("?draft=false");
    assert_eq!(pv["results"]["subject"], "v3 Zoë");
    // The list, then a delete.
    let (status, list) = api.request("GET", "/api/v1/templates", Some(&viewer), None);
    assert_eq!(status, 200);
    let row = &list["results"][0];
    assert_eq!(
        (&row["id"], &row["has_draft"], &row["has_published"]),
        (&json!("welcome-mail"), &json!(true), &json!(true)),
        "{list}"
    );
    let (status, _) = api.request("DELETE", "/api/v1/templates/welcome-mail", Some(&key), None);
    assert_eq!(status, 200);
    let (status, err) = get("");
    assert_eq!(status, 404, "{err}");
}

#[test]
fn a_bad_template_is_refused_with_the_part_line_and_column() {
    let api = Api::start_with("api-tpl-bad", "");
    let key = api.create_key("app", &[]);
    let (status, err) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&key),
        Some(&json!({"name": "Bad", "content": {
            "from": "news@example.net", "subject": "ok",
            "html": "<p>fine</p>\n{{if vip}}<b>VIP</b>"}})),
    );
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        err["errors"][0]["message"],
        "substitution language syntax error in template content"
    );
    assert_eq!(
        error_of(&err),
        (
            "3000",
            "content.html: line 2, column 1: '{{if' without a matching '{{end}}'"
        )
    );
    // Inline content is a template too: the same check, nothing sent.
    let (status, err) = api.post(
        &key,
        &json!({"recipients": [{"address": "a@example.com"}],
                "content": {"from": "news@example.net", "subject": "Hi {{name +}}", "text": "t"}}),
    );
    assert_eq!(status, 422, "{err}");
    assert_eq!(error_of(&err).0, "3000");
    assert!(
        error_of(&err)
            .1
            .starts_with("content.subject: line 1, column "),
        "{err}"
    );
    let (status, _) = api.request("GET", "/api/v1/templates/bad", Some(&key), None);
    assert_eq!(status, 404);
}

#[test]
fn a_stored_recipient_list_is_sent_to_with_its_substitution_data() {
    let api = Api::start_with("api-tpl-lists", "");
    let key = api.create_key("app", &[]);
    let viewer = api.create_key("viewer", &["recipient_lists:view"]);
    let (status, made) = api.request(
        "POST",
        "/api/v1/recipient-lists",
        Some(&key),
        Some(&json!({"id": "vip", "name": "VIPs", "recipients": [
            {"address": {"email": "l1@example.com", "name": "One"}, "tags": ["gold"],
             "metadata": {"tier": "gold"}, "substitution_data": {"first": "Uno"}},
            {"address": "l2@example.com", "substitution_data": {"first": "Dos"}},
            {"address": "broken"}]})),
    );
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["results"]["total_accepted_recipients"], 2);
    assert_eq!(made["results"]["total_rejected_recipients"], 1);
    let (status, got) = api.request(
        "GET",
        "/api/v1/recipient-lists/vip?show_recipients=true",
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["results"]["total_accepted_recipients"], 2);
    assert_eq!(got["results"]["recipients"][1]["address"], "l2@example.com");
    let (status, err) = api.request(
        "POST",
        "/api/v1/recipient-lists",
        Some(&viewer),
        Some(&json!({"recipients": []})),
    );
    assert_eq!(status, 403, "{err}");
    let (status, reply) = api.post(
        &key,
        &json!({"recipients": {"list_id": "vip"},
                "substitution_data": {"first": "Nobody"},
                "content": {"from": "news@example.net",
                            "subject": "Hola {{first}} ({{tier or 'plain'}})", "text": "x\n"}}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 2);
    let messages = api.sink.wait_for_messages(2, WAIT);
    let l1 = by_rcpt(messages.clone(), "l1@example.com");
    assert_eq!(l1.header("Subject").as_deref(), Some("Hola Uno (gold)"));
    let l2 = by_rcpt(messages, "l2@example.com");
    assert_eq!(l2.header("Subject").as_deref(), Some("Hola Dos (plain)"));
    let (status, err) = api.post(
        &key,
        &json!({"recipients": {"list_id": "nope"},
                "content": {"from": "news@example.net", "subject": "s", "text": "x"}}),
    );
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        error_of(&err),
        ("1600", "recipients.list_id: no recipient list 'nope'")
    );
    let (status, _) = api.request(
        "PUT",
        "/api/v1/recipient-lists/vip",
        Some(&key),
        Some(&json!({"name": "Renamed"})),
    );
    assert_eq!(status, 200);
    let (_, all) = api.request("GET", "/api/v1/recipient-lists", Some(&viewer), None);
    assert_eq!(all["results"][0]["name"], "Renamed", "{all}");
    assert_eq!(all["results"][0]["total_accepted_recipients"], 2);
    let (status, _) = api.request("DELETE", "/api/v1/recipient-lists/vip", Some(&key), None);
    assert_eq!(status, 200);
    let (status, _) = api.request("GET", "/api/v1/recipient-lists/vip", Some(&viewer), None);
    assert_eq!(status, 404);
}

#[test]
fn ten_thousand_recipients_of_a_template_all_arrive() {
    let api = Api::start_with("api-tpl-10k", "");
    let key = api.create_key("app", &[]);
    let (status, made) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&key),
        Some(
            &json!({"id": "bulk", "name": "Bulk", "published": true, "content": {
            "from": "news@example.net",
            "subject": "Hi {{name}} #{{n}}",
            "text": "{{if vip}}VIP {{end}}{{each items}}{{loop_var}},{{end}}\n"}}),
        ),
    );
    assert_eq!(status, 200, "{made}");
    const N: usize = 10_000;
    let recipients: Vec<Value> = (0..N)
        .map(|n| {
            json!({"address": format!("r{n}@example.com"),
                   "substitution_data": {"name": format!("R{n}"), "n": n, "vip": n % 7 == 0}})
        })
        .collect();
    let (status, reply) = api.post(
        &key,
        &json!({"recipients": recipients,
                "substitution_data": {"items": ["a", "b"]},
                "content": {"template_id": "bulk"}}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], N);
    let messages = api.sink.wait_for_messages(N, Duration::from_secs(300));
    assert_eq!(messages.len(), N);
    let mut seen = vec![false; N];
    for m in &messages {
        let n: usize = m.rcpts[0]
            .trim_start_matches('r')
            .trim_end_matches("@example.com")
            .parse()
            .unwrap();
        assert!(!seen[n], "r{n} twice");
        seen[n] = true;
    }
    let m = by_rcpt(messages, "r7@example.com");
    assert_eq!(m.header("Subject").as_deref(), Some("Hi R7 #7"));
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tracking_key(spoolbase: &Path) -> TrackingKey {
    let text = std::fs::read_to_string(spoolbase.join("tracking_key")).unwrap();
    let text = text.trim();
    let secret: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    TrackingKey::new(&secret).unwrap()
}

/// The token after `prefix` up to the closing quote or white space.
fn token_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        + prefix.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn click_and_open_tracking_rewrite_links_with_tokens_that_name_the_recipient() {
    let api = Api::start_with(
        "api-tpl-tracking",
        "tracking_domain = \"track.example.com:8443\"\nclick_tracking_scheme = \"https\"\n",
    );
    let key = api.create_key("app", &[]);
    let (status, reply) = api.post(
        &key,
        &json!({"campaign_id": "spring",
                "options": {"open_tracking": true, "click_tracking": true},
                "metadata": {"shared": 1},
                "recipients": [{"address": "t1@example.com", "metadata": {"user": "u1"}}],
                "content": {"from": "news@example.net", "subject": "links",
                    "text": "See https://shop.example.com/t?x={{x or 1}}\n",
                    "html": "<html><body><a href=\"https://shop.example.com/item?id=7\">Buy</a> \
<a href=\"https://keep.example.com/\" data-msys-clicktrack=\"0\">keep</a></body></html>"}}),
    );
    assert_eq!(status, 200, "{reply}");
    let tx = reply["results"]["id"].as_str().unwrap().to_string();
    let messages = api.sink.wait_for_messages(1, WAIT);
    let parsed = parse_messages(&[messages[0].path.as_path()]);
    let parts = leaves(&parsed[0]);
    let (text, html) = (&parts[0], &parts[1]);
    let key = tracking_key(&api.dir.join("spool"));
    let now = now_secs();
    // The html click link.
    let token = token_after(html, "<a href=\"https://track.example.com:8443/f/");
    let click = key.decode(token.as_bytes(), now).expect("a genuine token");
    assert_eq!(click.kind, TokenKind::Click);
    assert_eq!(click.target_url, "https://shop.example.com/item?id=7");
    assert_eq!(click.recipient, "t1@example.com");
    assert_eq!(click.transmission_id, tx);
    assert_eq!(click.campaign_id, "spring");
    let meta: Value = serde_json::from_str(&click.metadata).unwrap();
    assert_eq!(meta, json!({"shared": 1, "user": "u1"}));
    assert!(click.expires_at > now + 364 * 86_400, "a year by default");
    // The text link, the untracked link, the open pixel.
    let token = token_after(text, "See https://track.example.com:8443/f/");
    let text_click = key.decode(token.as_bytes(), now).unwrap();
    assert_eq!(text_click.target_url, "https://shop.example.com/t?x=1");
    assert!(
        html.contains("<a href=\"https://keep.example.com/\" data-msys-clicktrack=\"0\">keep</a>"),
        "{html}"
    );
    let token = token_after(html, "src=\"http://track.example.com:8443/q/");
    let open = key.decode(token.as_bytes(), now).unwrap();
    assert_eq!(open.kind, TokenKind::Open);
    assert_eq!(open.recipient, "t1@example.com");
    assert!(html.ends_with("</body></html>"), "{html}");
    assert!(
        html.contains("<img border=\"0\" width=\"1\" height=\"1\" alt=\"\" src=\"http://track.example.com:8443/q/"),
        "{html}"
    );
    // Without the options, ecelerity.conf's (off) apply: links stay.
    let (status, _) = api.post(
        &key_of(&api),
        &json!({"recipients": [{"address": "t2@example.com"}],
                "content": {"from": "news@example.net", "subject": "plain",
                    "html": "<a href=\"https://shop.example.com/\">x</a>"}}),
    );
    assert_eq!(status, 200);
    let messages = api.sink.wait_for_messages(2, WAIT);
    let m = by_rcpt(messages, "t2@example.com");
    let parsed = parse_messages(&[m.path.as_path()]);
    assert_eq!(
        leaves(&parsed[0])[0],
        "<a href=\"https://shop.example.com/\">x</a>\r\n"
    );
    assert_eq!(header(&parsed[0], "Subject"), Some("plain"));
}

fn key_of(api: &Api) -> String {
    api.create_key("second", &[])
}

/// Goal: with `api_store_datasource` naming a PostgreSQL Datasource, the
/// templates and lists API works as with SQLite (draft, publish, a
/// transmission from a published template to a stored list, delete) and
/// the rows are in PostgreSQL's tables, with no `api.sqlite` made.
#[test]
fn templates_and_lists_live_in_postgresql_when_api_store_datasource_names_one() {
    let pg = ecelerity_tests::Postgres::start();
    let extra = format!(
        "Datasource \"store\" {{\n  uri = ( \"pgsql:host={};dbname=postgres;user=postgres\" )\n}}\n\
         api_store_datasource = \"store\"\n",
        pg.socket_dir().display()
    );
    let api = Api::start_with("api-tpl-pg", &extra);
    let key = api.create_key("app", &[]);
    let (status, made) = api.request(
        "POST",
        "/api/v1/templates",
        Some(&key),
        Some(&json!({"id": "promo", "name": "Promo",
                     "content": {"from": "news@example.net", "subject": "Draft {{first}}",
                                 "text": "x\n"}})),
    );
    assert_eq!(status, 200, "{made}");
    let (status, published) = api.request(
        "PUT",
        "/api/v1/templates/promo",
        Some(&key),
        Some(&json!({"published": true,
                     "content": {"from": "news@example.net", "subject": "Hi {{first}}",
                                 "text": "x\n"}})),
    );
    assert_eq!(status, 200, "{published}");
    let (status, made) = api.request(
        "POST",
        "/api/v1/recipient-lists",
        Some(&key),
        Some(&json!({"id": "club", "name": "Club", "recipients": [
            {"address": "p1@example.com", "substitution_data": {"first": "Uno"}},
            {"address": "p2@example.com", "substitution_data": {"first": "Dos"}}]})),
    );
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        pg.psql("SELECT id, draft FROM api_templates ORDER BY id, draft"),
        "promo|f\n"
    );
    assert_eq!(
        pg.psql("SELECT id, name, total FROM api_recipient_lists"),
        "club|Club|2\n"
    );
    let (status, reply) = api.post(
        &key,
        &json!({"recipients": {"list_id": "club"}, "content": {"template_id": "promo"}}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"]["total_accepted_recipients"], 2);
    let messages = api.sink.wait_for_messages(2, WAIT);
    let p1 = by_rcpt(messages.clone(), "p1@example.com");
    assert_eq!(p1.header("Subject").as_deref(), Some("Hi Uno"));
    let p2 = by_rcpt(messages, "p2@example.com");
    assert_eq!(p2.header("Subject").as_deref(), Some("Hi Dos"));
    let (status, got) = api.request("GET", "/api/v1/templates/promo", Some(&key), None);
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (&got["results"]["published"], &got["results"]["has_draft"]),
        (&json!(true), &json!(false))
    );
    let (status, _) = api.request("DELETE", "/api/v1/templates/promo", Some(&key), None);
    assert_eq!(status, 200);
    let (status, _) = api.request("DELETE", "/api/v1/recipient-lists/club", Some(&key), None);
    assert_eq!(status, 200);
    assert_eq!(pg.psql("SELECT count(*) FROM api_templates"), "0\n");
    assert_eq!(pg.psql("SELECT count(*) FROM api_recipient_lists"), "0\n");
    assert!(
        !api.dir.join("spool").join("api.sqlite").exists(),
        "the SQLite store was made too"
    );
    drop(api);
}
