//! One shard's REST API: authenticates a request, checks a transmission,
//! generates its messages, spools every one (durable before the answer),
//! and only then hands them to delivery; serves the transmission records.
//!
//! Owns: [`ShardApi`] (the shard's generation count and its handles on
//! the message room and the router), the routes under `/api/v1/` and the
//! transmission records. May call: `message`, `mesh::Router`, `events`,
//! `api::{keys, transmission, mime}`. Never: queues, another shard.
//!
//! All or nothing: the messages of a transmission are spooled in waves of
//! [`API_SPOOL_WAVE`] and none is routed before all are durable. If one
//! cannot be spooled, the ones already spooled are taken back (completed
//! in the spool, never delivered) and the client gets 503 with nothing
//! sent. A crash in the middle (no answer reached the client) leaves the
//! messages spooled so far, which are delivered after the restart.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::rc::Rc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::keys::{self, Access};
use super::transmission::{self, Content, Transmission};
use super::{
    event_fields, merged, mime, rfc3339, ApiError, EventFields, TAG_EVENT_FIELDS, TAG_NOT_BEFORE,
};
use crate::clock::now_unix_ms;
use crate::config::DEFAULT_BINDING;
use crate::env::ShardEnv;
use crate::events::{format_event, Event, EventType};
use crate::mesh::Router;
use crate::message::{Messages, Spooled};
use crate::queue::record::SpooledEnvelope;
use crate::queue::{MessageId, MessageRef};

/// Largest request body read; a larger one is answered 413.
pub const API_REQUEST_BODY_BYTES_MAX: usize = 20 * 1024 * 1024;
/// Transmissions one shard generates at once; past it 429.
pub const API_GENERATIONS_PER_SHARD_MAX: usize = 4;
/// Messages spooled at once by one generation (they share group commits).
pub const API_SPOOL_WAVE: usize = 1024;
/// Most transmissions `GET /api/v1/transmissions` lists.
pub const API_LIST_ROWS_MAX: usize = 1000;
/// The R-line protocol and `recv_method` of a message generated here.
pub const PROTOCOL_REST: &str = "rest";

/// The directory of the transmission records.
const RECORDS_DIR: &str = "transmissions";

type Reply = Response<Full<Bytes>>;

/// A shard's REST API.
pub struct ShardApi {
    env: Rc<ShardEnv>,
    messages: Rc<Messages>,
    router: Rc<Router>,
    generating: Cell<usize>,
}

fn json_reply(status: u16, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_reply(e: &ApiError) -> Reply {
    json_reply(e.status, e.json())
}

/// A message generated and spooled, not yet handed to delivery.
struct Generated {
    id: MessageId,
    envelope: SpooledEnvelope,
    spooled: Spooled,
    size: u64,
}

impl ShardApi {
    pub fn new(env: Rc<ShardEnv>, messages: Rc<Messages>, router: Rc<Router>) -> Rc<ShardApi> {
        Rc::new(ShardApi {
            env,
            messages,
            router,
            generating: Cell::new(0),
        })
    }

    fn records_dir(&self) -> PathBuf {
        self.env.config.get().spoolbase().join(RECORDS_DIR)
    }

    /// Answers one request under `/api/v1/`.
    pub async fn handle(
        self: &Rc<Self>,
        request: Request<Incoming>,
        working: &Cell<bool>,
    ) -> Reply {
        let path = request.uri().path().trim_end_matches('/').to_string();
        let method = request.method().clone();
        let route = match (&method, path.as_str()) {
            (&Method::POST, "/api/v1/transmissions") => Route::Create,
            (&Method::GET, "/api/v1/transmissions") => Route::List,
            (&Method::GET, p) if p.starts_with("/api/v1/transmissions/") => {
                Route::Get(p["/api/v1/transmissions/".len()..].to_string())
            }
            (_, p) if p == "/api/v1/transmissions" || p.starts_with("/api/v1/transmissions/") => {
                return error_reply(&ApiError::new(
                    405,
                    "1001",
                    "method not allowed",
                    format!("{method} {path}"),
                ))
            }
            _ => {
                return error_reply(&ApiError::new(
                    404,
                    "1600",
                    "resource not found",
                    format!("no endpoint {path}"),
                ))
            }
        };
        let grant = match route {
            Route::Create => "transmissions:modify",
            _ => "transmissions:view",
        };
        let presented = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let store = keys::store(self.env.config.get().spoolbase());
        match store.check(presented, grant) {
            Access::Granted(_) => {}
            Access::Unknown => {
                return error_reply(&ApiError::new(
                    401,
                    "1000",
                    "Unauthorized.",
                    "an API key is required in the Authorization header".into(),
                ))
            }
            Access::Forbidden(name) => {
                return error_reply(&ApiError::new(
                    403,
                    "1100",
                    "Forbidden.",
                    format!("API key '{name}' lacks the grant {grant}"),
                ))
            }
        }
        match route {
            Route::Create => self.create(request, working).await,
            Route::List => self.list(),
            Route::Get(id) => self.get(&id),
        }
    }

    async fn create(self: &Rc<Self>, request: Request<Incoming>, working: &Cell<bool>) -> Reply {
        let body = match Limited::new(request.into_body(), API_REQUEST_BODY_BYTES_MAX)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_reply(&ApiError::new(
                    413,
                    "1300",
                    "request too large",
                    format!("the body is over {API_REQUEST_BODY_BYTES_MAX} bytes"),
                ))
            }
            Err(e) => {
                return error_reply(&ApiError::new(400, "1300", "bad request", format!("{e}")))
            }
        };
        working.set(true);
        let t = match transmission::parse(&body) {
            Ok(t) => t,
            Err(e) => return error_reply(&e),
        };
        drop(body);
        if self.generating.get() >= API_GENERATIONS_PER_SHARD_MAX {
            return error_reply(&ApiError::new(
                429,
                "2102",
                "too many requests",
                format!("{API_GENERATIONS_PER_SHARD_MAX} transmissions are being generated on this shard; try again"),
            ));
        }
        self.generating.set(self.generating.get() + 1);
        struct Release<'a>(&'a Cell<usize>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        let _release = Release(&self.generating);
        let id = MessageId(self.messages.next_connection_id()).0;
        let started = now_unix_ms();
        let generated = if t.options.sandbox {
            self.sandbox(&t, id, started);
            Ok(t.recipients.len())
        } else {
            self.generate(&t, id, started).await
        };
        let accepted = match generated {
            Ok(n) => n,
            Err(e) => return error_reply(&e),
        };
        let record = record(&t, id, self.env.id, started, now_unix_ms());
        let path = self.records_dir().join(format!("{id}.json"));
        if let Err(e) = write_record(&path, &record.to_string()) {
            tracing::error!("api: cannot write {}: {e}", path.display());
        }
        let body = json!({"results": {
            "total_rejected_recipients": t.rejected,
            "total_accepted_recipients": accepted,
            "id": id.to_string(),
        }});
        json_reply(200, body.to_string())
    }

    /// The messages' shared part and envelope sender.
    fn shared(&self, t: &Transmission, id: u64, started_ms: u64) -> (Vec<u8>, String) {
        match &t.content {
            Content::Inline(c) => {
                let mut date = String::new();
                crate::smtp::received::write_rfc5322_date(&mut date, (started_ms / 1000) as i64);
                (
                    mime::build_shared(c, &date, &id.to_string()),
                    c.from.email.clone(),
                )
            }
            Content::Rfc822(raw) => (raw.clone().into_bytes(), rfc822_sender(raw)),
        }
    }

    /// Generates, spools (all or nothing) and routes every recipient's
    /// message; the number generated.
    async fn generate(
        &self,
        t: &Transmission,
        id: u64,
        started_ms: u64,
    ) -> Result<usize, ApiError> {
        let (shared, from) = self.shared(t, id, started_ms);
        let hostname = self.env.config.get().hostname().to_string();
        let tx = id.to_string();
        let mut done: Vec<Generated> = Vec::with_capacity(t.recipients.len());
        for (wave_no, wave) in t.recipients.chunks(API_SPOOL_WAVE).enumerate() {
            let mut tasks = Vec::with_capacity(wave.len());
            for (i, r) in wave.iter().enumerate() {
                let n = wave_no * API_SPOOL_WAVE + i;
                let message_id = match self.messages.admit() {
                    Ok(m) => m,
                    Err(_) => break,
                };
                let body = match &t.content {
                    Content::Inline(_) => {
                        let to = match &r.header_to {
                            Some(h) => h.clone(),
                            None => mime::mailbox(&r.address),
                        };
                        mime::message_for(
                            &mime::header_text(&to),
                            &format!("{tx}.{n}@{hostname}"),
                            &shared,
                        )
                    }
                    Content::Rfc822(_) => shared.clone(),
                };
                let mail_from = r
                    .return_path
                    .clone()
                    .or_else(|| t.return_path.clone())
                    .unwrap_or_else(|| from.clone());
                let meta = match merged(&t.metadata, &r.metadata) {
                    Value::Object(m) => m,
                    _ => unreachable!("merged metadata is an object"),
                };
                let fields = event_fields(&EventFields {
                    transmission_id: &tx,
                    campaign_id: t.campaign_id.as_deref(),
                    rcpt_meta: &meta,
                    rcpt_tags: &r.tags,
                    recv_method: PROTOCOL_REST,
                    sandbox: false,
                });
                let mut envelope = SpooledEnvelope {
                    received_unix_ms: now_unix_ms(),
                    peer_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    connection_id: id,
                    body_8bitmime: body.iter().any(|&b| b >= 0x80),
                    binding: DEFAULT_BINDING.to_string(),
                    mail_from,
                    rcpts: vec![r.address.email.clone()],
                    extensions: Vec::new(),
                };
                envelope.set_extension(TAG_EVENT_FIELDS, fields.into_bytes());
                if let Some(at) = t.options.start_time_unix_ms {
                    envelope.set_extension(TAG_NOT_BEFORE, at.to_le_bytes().to_vec());
                }
                let messages = self.messages.clone();
                tasks.push(glommio::spawn_local(async move {
                    let size = body.len() as u64;
                    let spooled = messages.spool(message_id, &envelope, &body).await;
                    spooled.map(|spooled| Generated {
                        id: message_id,
                        envelope,
                        spooled,
                        size,
                    })
                }));
            }
            let wanted = wave.len();
            let mut failed = None;
            let got = tasks.len();
            for task in tasks {
                match task.await {
                    Ok(g) => done.push(g),
                    Err(e) => failed = Some(format!("{e:?}")),
                }
            }
            if got < wanted && failed.is_none() {
                failed = Some("the shard's live-message limit is reached".into());
            }
            if let Some(why) = failed {
                let n = done.len();
                for g in done {
                    if let Err(e) = self.messages.withdraw(g.id).await {
                        tracing::error!("api: transmission {tx}: cannot take back {}: {e}", g.id);
                    }
                }
                tracing::error!("api: transmission {tx}: spooling failed ({why}); {n} spooled message(s) taken back, none sent");
                return Err(ApiError::new(
                    503,
                    "1901",
                    "transmission failed",
                    format!("the messages could not be spooled ({why}); none was sent: try again"),
                ));
            }
        }
        let mut entries: Vec<MessageRef> = Vec::with_capacity(done.len());
        for g in &done {
            self.messages
                .log_receptions(g.id, &g.envelope, g.size, None, PROTOCOL_REST);
            let not_before = t.options.start_time_unix_ms.unwrap_or(0);
            entries.extend(self.messages.entries_for(
                g.id,
                g.spooled.body,
                &g.envelope,
                std::iter::once((0, 0, not_before)),
            ));
        }
        let n = done.len();
        drop(done);
        self.router.route(entries).await;
        Ok(n)
    }

    /// A sandbox transmission: its messages are generated (so they are
    /// checked) and an injection event is written for each, marked
    /// `sandbox`; none is spooled or delivered.
    fn sandbox(&self, t: &Transmission, id: u64, started_ms: u64) {
        let (shared, from) = self.shared(t, id, started_ms);
        let tx = id.to_string();
        let events = &self.env.events;
        events.write(|buf| {
            for r in &t.recipients {
                let meta = match merged(&t.metadata, &r.metadata) {
                    Value::Object(m) => m,
                    _ => unreachable!(),
                };
                let fields = event_fields(&EventFields {
                    transmission_id: &tx,
                    campaign_id: t.campaign_id.as_deref(),
                    rcpt_meta: &meta,
                    rcpt_tags: &r.tags,
                    recv_method: PROTOCOL_REST,
                    sandbox: true,
                });
                let mail_from = r
                    .return_path
                    .as_deref()
                    .or(t.return_path.as_deref())
                    .unwrap_or(&from);
                let e = Event {
                    kind: EventType::Injection,
                    event_id: events.next_id(),
                    unix_secs: started_ms / 1000,
                    message_id: "",
                    rcpt_to: &r.address.email,
                    msg_from: mail_from,
                    binding: "",
                    binding_group: "",
                    msg_size: Some(shared.len() as u64),
                    ip_address: None,
                    num_retries: None,
                    queue_time_ms: None,
                    raw_reason: None,
                    bounce_class: None,
                    method: PROTOCOL_REST,
                    generation: Some(&fields),
                };
                format_event(buf, &e);
            }
        });
        events.flush();
    }

    fn get(&self, id: &str) -> Reply {
        let not_found = || {
            error_reply(&ApiError::new(
                404,
                "1600",
                "resource not found",
                format!("no transmission {id}"),
            ))
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 20 {
            return not_found();
        }
        match std::fs::read_to_string(self.records_dir().join(format!("{id}.json"))) {
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(v) => json_reply(200, json!({"results": {"transmission": v}}).to_string()),
                Err(_) => not_found(),
            },
            Err(_) => not_found(),
        }
    }

    fn list(&self) -> Reply {
        let mut ids: Vec<u64> = std::fs::read_dir(self.records_dir())
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.truncate(API_LIST_ROWS_MAX);
        let rows: Vec<Value> = ids
            .iter()
            .filter_map(|id| {
                let text =
                    std::fs::read_to_string(self.records_dir().join(format!("{id}.json"))).ok()?;
                let v: Value = serde_json::from_str(&text).ok()?;
                Some(json!({
                    "id": v["id"], "state": v["state"], "campaign_id": v["campaign_id"],
                    "description": v["description"], "num_rcpts": v["num_rcpts"],
                }))
            })
            .collect();
        json_reply(200, json!({"results": rows}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rfc822_senders_address_is_found() {
        assert_eq!(
            rfc822_sender("Subject: s\r\nFrom: \"A\" <a@x.example>\r\n\r\nb"),
            "a@x.example"
        );
        assert_eq!(rfc822_sender("From: a@x.example\r\n\r\nb"), "a@x.example");
        assert_eq!(rfc822_sender("Subject: s\r\n\r\nFrom: a@x.example\r\n"), "");
    }
}

enum Route {
    Create,
    List,
    Get(String),
}

/// The address of an rfc822 message's From field (in angle brackets, or
/// the whole value), for the envelope when no return_path is given;
/// empty (the null sender) when there is none.
pub fn rfc822_sender(raw: &str) -> String {
    let mut fields = Vec::new();
    crate::smtp::header::field_ranges(raw.as_bytes(), "From", &mut fields);
    let Some(first) = fields.first() else {
        return String::new();
    };
    let value = String::from_utf8_lossy(crate::smtp::header::field_value(
        &raw.as_bytes()[first.clone()],
    ));
    let address = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    };
    if transmission::usable_address(address) {
        address.to_string()
    } else {
        String::new()
    }
}

/// What `GET /api/v1/transmissions/<id>` shows of a transmission.
fn record(t: &Transmission, id: u64, shard: usize, started_ms: u64, done_ms: u64) -> Value {
    let content = match &t.content {
        Content::Inline(c) => json!({
            "from": {"email": c.from.email, "name": c.from.name},
            "subject": c.subject,
            "reply_to": c.reply_to,
            "attachments": c.attachments.len(),
            "inline_images": c.inline_images.len(),
        }),
        Content::Rfc822(_) => json!({"email_rfc822": true}),
    };
    let state = if t.options.sandbox {
        "sandbox"
    } else if t.options.start_time_unix_ms.is_some_and(|at| at > done_ms) {
        "submitted"
    } else {
        "Success"
    };
    json!({
        "id": id.to_string(),
        "state": state,
        "campaign_id": t.campaign_id,
        "description": t.description,
        "metadata": Value::Object(t.metadata.clone()),
        "return_path": t.return_path,
        "options": {
            "sandbox": t.options.sandbox,
            "transactional": t.options.transactional,
            "open_tracking": t.options.open_tracking,
            "click_tracking": t.options.click_tracking,
            "start_time": t.options.start_time,
        },
        "content": content,
        "num_rcpts": t.recipients.len(),
        "num_generated": if t.options.sandbox { 0 } else { t.recipients.len() },
        "num_rejected": t.rejected,
        "generation_start_time": rfc3339(started_ms / 1000),
        "generation_end_time": rfc3339(done_ms / 1000),
        "shard": shard,
    })
}

/// Writes a record beside and renames it in (not synced: a record lost in
/// a crash loses no mail; its messages are in the spool).
fn write_record(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
