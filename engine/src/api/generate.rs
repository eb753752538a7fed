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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use ecelerity_msggen::content::Rendered;

use super::keys::{self, Access};
use super::personal::{personal_message, Personal};
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

pub(super) type Reply = Response<Full<Bytes>>;

/// A shard's REST API.
pub struct ShardApi {
    pub(super) env: Rc<ShardEnv>,
    messages: Rc<Messages>,
    router: Rc<Router>,
    generating: Cell<usize>,
    /// Shares of other shards' transmissions spooled here and waiting for
    /// their commit or withdrawal, by transmission id.
    pending: RefCell<HashMap<u64, Vec<Generated>>>,
    /// Template versions this shard compiled (`store`).
    pub(super) compiled: super::store::CompiledCache,
}

/// Reads a request body (at most [`API_REQUEST_BODY_BYTES_MAX`]); from
/// then on the request is `working` (its watchdog waits for the answer).
pub(super) async fn read_body(
    request: Request<Incoming>,
    working: &Cell<bool>,
) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), API_REQUEST_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(b) => {
            working.set(true);
            Ok(b.to_bytes())
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "1300",
            "request too large",
            format!("the body is over {API_REQUEST_BODY_BYTES_MAX} bytes"),
        )),
        Err(e) => Err(ApiError::new(400, "1300", "bad request", format!("{e}"))),
    }
}

pub(super) fn json_reply(status: u16, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn error_reply(e: &ApiError) -> Reply {
    json_reply(e.status, e.json())
}

/// A message generated and spooled, not yet handed to delivery.
pub struct Generated {
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
            pending: RefCell::new(HashMap::new()),
            compiled: ShardApi::new_cache(),
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
        // Templates and recipient lists (api/store.rs).
        if Self::is_stored_path(&path) {
            return self.stored(request, &path, working).await;
        }
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
        if let Err(reply) = self.authorize(&request, grant) {
            return reply;
        }
        match route {
            Route::Create => self.create(request, working).await,
            Route::List => self.list(),
            Route::Get(id) => self.get(&id),
        }
    }

    /// Checks the request's API key for `grant`; the refusal otherwise.
    pub(super) fn authorize(&self, request: &Request<Incoming>, grant: &str) -> Result<(), Reply> {
        let presented = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let store = keys::store(self.env.config.get().spoolbase());
        match store.check(presented, grant) {
            Access::Granted(_) => Ok(()),
            Access::Unknown => Err(error_reply(&ApiError::new(
                401,
                "1000",
                "Unauthorized.",
                "an API key is required in the Authorization header".into(),
            ))),
            Access::Forbidden(name) => Err(error_reply(&ApiError::new(
                403,
                "1100",
                "Forbidden.",
                format!("API key '{name}' lacks the grant {grant}"),
            ))),
        }
    }

    async fn create(self: &Rc<Self>, request: Request<Incoming>, working: &Cell<bool>) -> Reply {
        let body = match read_body(request, working).await {
            Ok(b) => b,
            Err(e) => return error_reply(&e),
        };
        let mut value = match transmission::json_body(&body) {
            Ok(v) => v,
            Err(e) => return error_reply(&e),
        };
        drop(body);
        let resolved = match self.resolve_stored(&mut value).await {
            Ok(r) => r,
            Err(e) => return error_reply(&e),
        };
        let t = match transmission::parse_value(value) {
            Ok(t) => t,
            Err(e) => return error_reply(&e),
        };
        let personal = match self.personal(&t, &resolved) {
            Ok(p) => p,
            Err(e) => return error_reply(&e),
        };
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
        let template_id = resolved.template.as_ref().map(|(id, _, _)| id.as_str());
        let generated = if t.options.sandbox {
            self.sandbox(&t, template_id, id, started);
            Ok(t.recipients.len())
        } else {
            self.generate(&t, template_id, personal, id, started).await
        };
        let accepted = match generated {
            Ok(n) => n,
            Err(e) => return error_reply(&e),
        };
        let mut record = record(&t, id, self.env.id, started, now_unix_ms());
        if let Some((template_id, _, _)) = &resolved.template {
            record["content"]["template_id"] = json!(template_id);
        }
        if let Some(list_id) = &resolved.list_id {
            record["recipients"] = json!({ "list_id": list_id });
        }
        record["num_generated"] = json!(if t.options.sandbox { 0 } else { accepted });
        record["num_failed_gen"] = json!(t.recipients.len() - accepted.min(t.recipients.len()));
        let path = self.records_dir().join(format!("{id}.json"));
        if let Err(e) = write_record(&path, &record.to_string()) {
            tracing::error!("api: cannot write {}: {e}", path.display());
        }
        let body = json!({"results": {
            "total_rejected_recipients": t.rejected + (t.recipients.len() - accepted.min(t.recipients.len())),
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
    /// message; the number generated. The recipients are cut into one
    /// contiguous share per shard; each shard spools its share into its
    /// own spool (`ShardMsg::Generate`), and only when every share is
    /// durable does each shard hand its messages to delivery. If a share
    /// fails, every shard takes its messages back.
    async fn generate(
        &self,
        t: &Transmission,
        template_id: Option<&str>,
        personal: Option<Personal>,
        id: u64,
        started_ms: u64,
    ) -> Result<usize, ApiError> {
        let (shared, from) = match &personal {
            // Every message is built per recipient.
            Some(_) => (Vec::new(), String::new()),
            None => self.shared(t, id, started_ms),
        };
        let mut date = String::new();
        crate::smtp::received::write_rfc5322_date(&mut date, (started_ms / 1000) as i64);
        let plan = Arc::new(Plan {
            t: t.clone(),
            shared,
            from,
            tx: id,
            template_id: template_id.map(str::to_string),
            hostname: self.env.config.get().hostname().to_string(),
            personal,
            date,
        });
        let count = self.env.count;
        let me = self.env.id;
        let shares = split(plan.t.recipients.len(), count);
        let (reply, answers) = crossbeam::channel::unbounded();
        let mut asked = Vec::new();
        for (shard, range) in shares.iter().enumerate() {
            if shard == me || range.is_empty() {
                continue;
            }
            let job = GenerateJob {
                plan: plan.clone(),
                step: Step::Spool(range.clone()),
                reply: reply.clone(),
            };
            self.router.generate(shard, job).await;
            asked.push(shard);
        }
        let local = self.spool_share(&plan, shares[me].clone()).await;
        let remote = gather(&answers, asked.len()).await;
        let failed = local
            .as_ref()
            .err()
            .cloned()
            .or_else(|| remote.iter().find_map(|(_, r)| r.as_ref().err().cloned()));
        let remote_ok: Vec<usize> = remote
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| *s)
            .collect();
        let missing = asked.len() - remote.len();
        let failed = failed.or_else(|| {
            (missing > 0).then(|| format!("{missing} shard(s) did not answer in time"))
        });
        let tx = id.to_string();
        if let Some(why) = failed {
            if let Ok(mine) = local {
                self.withdraw(mine).await;
            }
            for &shard in &remote_ok {
                let job = GenerateJob {
                    plan: plan.clone(),
                    step: Step::Withdraw,
                    reply: reply.clone(),
                };
                self.router.generate(shard, job).await;
            }
            let _ = gather(&answers, remote_ok.len()).await;
            tracing::error!("api: transmission {tx}: spooling failed ({why}); every spooled message taken back, none sent");
            return Err(ApiError::new(
                503,
                "1901",
                "transmission failed",
                format!("the messages could not be spooled ({why}); none was sent: try again"),
            ));
        }
        for &shard in &remote_ok {
            let job = GenerateJob {
                plan: plan.clone(),
                step: Step::Commit,
                reply: reply.clone(),
            };
            self.router.generate(shard, job).await;
        }
        let mine = local.expect("checked above");
        let mut total = mine.len();
        self.commit(&plan, mine).await;
        for (_, r) in gather(&answers, remote_ok.len()).await {
            total += r.unwrap_or(0);
        }
        Ok(total)
    }

    /// Another shard's step of a transmission (`ShardMsg::Generate`).
    pub fn on_generate(self: &Rc<Self>, job: GenerateJob) {
        let api = self.clone();
        glommio::spawn_local(async move {
            let GenerateJob { plan, step, reply } = job;
            let answer = match step {
                Step::Spool(range) => match api.spool_share(&plan, range).await {
                    Ok(done) => {
                        let n = done.len();
                        api.pending.borrow_mut().insert(plan.tx, done);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                },
                Step::Commit => {
                    let done = api
                        .pending
                        .borrow_mut()
                        .remove(&plan.tx)
                        .unwrap_or_default();
                    let n = done.len();
                    api.commit(&plan, done).await;
                    Ok(n)
                }
                Step::Withdraw => {
                    let done = api
                        .pending
                        .borrow_mut()
                        .remove(&plan.tx)
                        .unwrap_or_default();
                    api.withdraw(done).await;
                    Ok(0)
                }
            };
            let _ = reply.send((api.env.id, answer));
        })
        .detach();
    }

    /// Spools the messages of recipients `range` in this shard's spool, in
    /// waves; on a failure takes back what it spooled and says why.
    async fn spool_share(
        &self,
        plan: &Plan,
        range: Range<usize>,
    ) -> Result<Vec<Generated>, String> {
        let t = &plan.t;
        let tx = plan.tx.to_string();
        let mut done: Vec<Generated> = Vec::with_capacity(range.len());
        let mut rendered = Rendered::default();
        let mut at = range.start;
        while at < range.end {
            let wave = at..(at + API_SPOOL_WAVE).min(range.end);
            at = wave.end;
            let mut tasks = Vec::with_capacity(wave.len());
            let mut failed = None;
            for n in wave {
                let r = &t.recipients[n];
                let message_id = match self.messages.admit() {
                    Ok(m) => m,
                    Err(_) => {
                        failed = Some("the shard's live-message limit is reached".to_string());
                        break;
                    }
                };
                let mut from = None;
                let body = match (&plan.personal, &t.content) {
                    (Some(p), _) => match personal_message(plan, p, n, message_id, &mut rendered) {
                        Ok((body, sender)) => {
                            from = Some(sender);
                            body
                        }
                        Err(why) => {
                            tracing::warn!(
                                "api: transmission {tx}: recipient {n} ({}): generation failed: {why}",
                                r.address.email
                            );
                            continue;
                        }
                    },
                    (None, Content::Inline(_)) => {
                        let to = match &r.header_to {
                            Some(h) => h.clone(),
                            None => mime::mailbox(&r.address),
                        };
                        let mid = format!("{tx}.{n}@{}", plan.hostname);
                        mime::message_for(&mime::header_text(&to), &mid, &plan.shared)
                    }
                    (None, Content::Rfc822(_)) => plan.shared.clone(),
                };
                let envelope = envelope_for(plan, n, from.as_deref(), &body);
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
            for task in tasks {
                match task.await {
                    Ok(g) => done.push(g),
                    Err(e) => failed = Some(format!("{e:?}")),
                }
            }
            if let Some(why) = failed {
                self.withdraw(done).await;
                return Err(format!("shard {}: {why}", self.env.id));
            }
        }
        Ok(done)
    }

    /// Writes the R lines and injection events of spooled messages and
    /// hands them to delivery.
    async fn commit(&self, plan: &Plan, done: Vec<Generated>) {
        let not_before = plan.t.options.start_time_unix_ms.unwrap_or(0);
        let mut entries: Vec<MessageRef> = Vec::with_capacity(done.len());
        for g in &done {
            self.messages
                .log_receptions(g.id, &g.envelope, g.size, None, PROTOCOL_REST);
            entries.extend(self.messages.entries_for(
                g.id,
                g.spooled.body,
                &g.envelope,
                std::iter::once((0, 0, not_before)),
            ));
        }
        drop(done);
        self.router.route(entries).await;
    }

    /// Takes spooled messages back: never delivered.
    async fn withdraw(&self, done: Vec<Generated>) {
        for g in done {
            if let Err(e) = self.messages.withdraw(g.id).await {
                tracing::error!("api: cannot take back {}: {e}", g.id);
            }
        }
    }

    /// A sandbox transmission: its messages are generated (so they are
    /// checked) and an injection event is written for each, marked
    /// `sandbox`; none is spooled or delivered.
    fn sandbox(&self, t: &Transmission, template_id: Option<&str>, id: u64, started_ms: u64) {
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
                    template_id,
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
    fn recipients_are_cut_into_one_share_per_shard() {
        assert_eq!(split(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(split(1, 2), vec![0..1, 1..1]);
        assert_eq!(split(0, 1), vec![0..0]);
    }

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

/// A transmission being generated, shared by the shards that spool it.
pub struct Plan {
    pub t: Transmission,
    /// What every recipient's message shares (`mime::build_shared`, or the
    /// rfc822 message).
    pub shared: Vec<u8>,
    /// The envelope sender when neither recipient nor transmission names
    /// a return_path.
    pub from: String,
    pub tx: u64,
    /// The stored template the content came from, for the events.
    pub template_id: Option<String>,
    pub hostname: String,
    /// Content rendered per recipient (substitution, tracking); `None`:
    /// every message is `shared` with its own To and Message-ID.
    pub personal: Option<Personal>,
    /// The Date field of every message.
    pub date: String,
}

/// One step of a transmission asked of another shard.
pub enum Step {
    /// Spool the messages of these recipients; hold them.
    Spool(Range<usize>),
    /// Hand the held messages to delivery.
    Commit,
    /// Take the held messages back.
    Withdraw,
}

/// What crosses to a shard for a transmission (`ShardMsg::Generate`); the
/// shard answers (its id, messages spooled or handed on, or why not).
pub struct GenerateJob {
    pub plan: Arc<Plan>,
    pub step: Step,
    pub reply: crossbeam::channel::Sender<(usize, Result<usize, String>)>,
}

/// How long a transmission waits for another shard's answer.
pub const API_SHARD_ANSWER_TIMEOUT_MS: u64 = 120_000;
/// How often it looks for the answers.
const ANSWER_POLL_MS: u64 = 2;

/// Waits (polling: a shard never blocks) for `expected` answers, at most
/// [`API_SHARD_ANSWER_TIMEOUT_MS`]; the answers that came.
async fn gather(
    answers: &crossbeam::channel::Receiver<(usize, Result<usize, String>)>,
    expected: usize,
) -> Vec<(usize, Result<usize, String>)> {
    let deadline = std::time::Instant::now() + Duration::from_millis(API_SHARD_ANSWER_TIMEOUT_MS);
    let mut got = Vec::with_capacity(expected);
    while got.len() < expected && std::time::Instant::now() < deadline {
        while let Ok(a) = answers.try_recv() {
            got.push(a);
        }
        if got.len() < expected {
            glommio::timer::sleep(Duration::from_millis(ANSWER_POLL_MS)).await;
        }
    }
    got
}

/// `len` recipients cut into `count` contiguous shares, the first ones a
/// recipient longer when it does not divide.
pub fn split(len: usize, count: usize) -> Vec<Range<usize>> {
    assert!(count > 0);
    let (each, extra) = (len / count, len % count);
    let mut at = 0;
    (0..count)
        .map(|s| {
            let n = each + usize::from(s < extra);
            let r = at..at + n;
            at += n;
            r
        })
        .collect()
}

/// The spool envelope of recipient `n`'s message, with its event fields
/// and start time.
fn envelope_for(plan: &Plan, n: usize, from: Option<&str>, body: &[u8]) -> SpooledEnvelope {
    let t = &plan.t;
    let r = &t.recipients[n];
    let mail_from = r
        .return_path
        .clone()
        .or_else(|| t.return_path.clone())
        .unwrap_or_else(|| from.unwrap_or(&plan.from).to_string());
    let meta = match merged(&t.metadata, &r.metadata) {
        Value::Object(m) => m,
        _ => unreachable!("merged metadata is an object"),
    };
    let fields = event_fields(&EventFields {
        transmission_id: &plan.tx.to_string(),
        campaign_id: t.campaign_id.as_deref(),
        template_id: plan.template_id.as_deref(),
        rcpt_meta: &meta,
        rcpt_tags: &r.tags,
        recv_method: PROTOCOL_REST,
        sandbox: false,
    });
    let body_8bitmime =
        body.iter().any(|&b| b >= 0x80) || r.address.name.as_deref().is_some_and(|n| !n.is_ascii());
    let mut envelope = SpooledEnvelope {
        received_unix_ms: now_unix_ms(),
        peer_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        connection_id: plan.tx,
        body_8bitmime,
        binding: DEFAULT_BINDING.to_string(),
        mail_from,
        rcpts: vec![r.address.email.clone()],
        extensions: Vec::new(),
    };
    envelope.set_extension(TAG_EVENT_FIELDS, fields.into_bytes());
    if let Some(at) = t.options.start_time_unix_ms {
        envelope.set_extension(TAG_NOT_BEFORE, at.to_le_bytes().to_vec());
    }
    envelope
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
