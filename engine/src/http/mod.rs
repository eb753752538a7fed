//! The HTTP_Listener: `GET /metrics` (Prometheus text), `GET
//! /api/v1/status` (JSON), and a live status page at `/`, served on every
//! shard (each binds every `Listen` address with SO_REUSEPORT, as the
//! ESMTP listeners do).
//!
//! Owns: the accept loop and connection tasks of a shard's HTTP listeners
//! (in a task queue of their own with few shares, so requests never hold
//! mail work back), the request router, the per-shard connection count,
//! and the timeouts: hyper has no timer on glommio, so each connection is
//! raced against a watchdog that closes it when a request takes longer
//! than [`HTTP_REQUEST_TIMEOUT_MS`] to arrive (408) or the connection sits
//! idle for [`HTTP_IDLE_TIMEOUT_MS`].
//! May call: `control` (a `Status` request to every shard, polled without
//! blocking), `stats` (read-only), [`render`] (pure). Never: queues or
//! histograms directly (their shard answers), a blocking wait.

mod io;
pub mod render;
pub mod track;

use std::cell::{Cell, OnceCell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::control::{ControlError, ControlHandle, ControlReply, ControlRequest};
use crate::stats::{Counter, EngineStats};
use io::{Activity, Io};
use render::{ShardView, StatusView};

/// Open HTTP connections one shard serves at most; past it a new one is
/// answered 503 and closed.
pub const HTTP_CONNECTIONS_PER_SHARD_MAX: usize = 64;
/// Largest request head (request line and headers) read; a larger one is
/// answered 431 (hyper's read buffer limit; hyper's least is 8 KiB).
pub const HTTP_REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// From a request's first byte until its response starts; past it the
/// client gets 408 and the connection closes (slow clients, slowloris).
pub const HTTP_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// A keep-alive connection with no traffic for this long is closed.
pub const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;
/// How often a connection's watchdog looks at it.
const WATCHDOG_MS: u64 = 250;
/// How long a request waits for every shard's status.
pub const HTTP_STATUS_TIMEOUT_MS: u64 = 3_000;
/// How often a waiting request looks for the shards' parts.
const STATUS_POLL_MS: u64 = 5;
/// A gathered status is reused by this shard's requests for this long, and
/// one gather at a time runs per shard: however many clients poll, the
/// shards answer at most one `Status` per HTTP shard per this interval.
pub const HTTP_STATUS_CACHE_MS: u64 = 500;
/// Shares of the HTTP task queue (the inbound and delivery queues have
/// 1000 each): under load a request waits, mail does not.
pub const HTTP_SHARES: usize = 100;

/// The embedded status page.
const INDEX_HTML: &str = include_str!("page/index.html");
const STATUS_JS: &str = include_str!("page/status.js");
const STATUS_CSS: &str = include_str!("page/status.css");

/// What a shard's HTTP tasks share.
pub struct HttpContext {
    pub shard: usize,
    pub stats: Arc<EngineStats>,
    pub control: ControlHandle,
    queue: glommio::TaskQueueHandle,
    /// The last gathered status and when it was gathered.
    cached: RefCell<Option<(Instant, Rc<Snapshot>)>>,
    /// A gather is under way (others wait for its result).
    gathering: Cell<bool>,
    /// The REST API of this shard (`/api/v1/...` but status), set once the
    /// shard is wired.
    pub api: OnceCell<Rc<crate::api::ShardApi>>,
    /// The shard's environment (its event log, counters, configuration),
    /// set once the shard is wired: the tracking endpoints and the
    /// metrics and webhooks API use it.
    pub env: OnceCell<Rc<crate::env::ShardEnv>>,
}

impl HttpContext {
    pub fn new(
        shard: usize,
        stats: Arc<EngineStats>,
        control: ControlHandle,
        queue: glommio::TaskQueueHandle,
    ) -> Rc<HttpContext> {
        Rc::new(HttpContext {
            shard,
            stats,
            control,
            queue,
            cached: RefCell::new(None),
            gathering: Cell::new(false),
            api: OnceCell::new(),
            env: OnceCell::new(),
        })
    }
}

impl HttpContext {
    /// Open connections on this shard: its `http_connections` gauge (which
    /// the spool also reads, counting each as a client: `ecelerity_spool`
    /// `sync_choice`).
    fn connections(&self) -> usize {
        self.stats.shards[self.shard].get(Counter::HttpConnections) as usize
    }

    fn connection_opened(&self) {
        self.stats.shards[self.shard].add(Counter::HttpConnections, 1);
    }

    fn connection_closed(&self) {
        self.stats.shards[self.shard].sub(Counter::HttpConnections, 1);
    }
}

/// Accepts connections on `listener` until the task is cancelled; each is
/// served by a task of its own in the HTTP task queue.
pub async fn accept_loop(ctx: Rc<HttpContext>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = ctx.shard, "http: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ctx.connections() >= HTTP_CONNECTIONS_PER_SHARD_MAX {
            glommio::spawn_local_into(refuse_busy(stream), ctx.queue)
                .map(|t| t.detach())
                .ok();
            continue;
        }
        ctx.connection_opened();
        let task = {
            let ctx = ctx.clone();
            async move {
                serve_connection(&ctx, stream).await;
                ctx.connection_closed();
            }
        };
        if glommio::spawn_local_into(task, ctx.queue)
            .map(|t| t.detach())
            .is_err()
        {
            ctx.connection_closed();
        }
    }
}

/// One connection over the limit: a plain 503, then close.
async fn refuse_busy(mut stream: TcpStream) {
    let body = "503 Service Unavailable: too many HTTP connections\n";
    let _ = stream
        .write_all(plain_response(503, "Service Unavailable", body).as_bytes())
        .await;
    let _ = stream.close().await;
}

/// A complete HTTP/1.1 response written by hand (when hyper no longer
/// owns the connection).
fn plain_response(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// How a connection ended, as the watchdog saw it.
enum Ended {
    /// hyper finished (client closed, or an error hyper answered).
    Done,
    /// A request took too long to arrive.
    RequestTimeout,
    Idle,
}

/// Serves one connection: hyper parses, [`route`] answers, the watchdog
/// enforces the timeouts.
async fn serve_connection(ctx: &Rc<HttpContext>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let stream = Rc::new(RefCell::new(stream));
    let activity = Rc::new(Activity::new(Instant::now()));
    let io = Io {
        stream: stream.clone(),
        activity: activity.clone(),
    };
    let service = {
        let ctx = ctx.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let ctx = ctx.clone();
            let activity = activity.clone();
            async move { Ok::<_, Infallible>(route(&ctx, request, &activity, peer).await) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(HTTP_REQUEST_HEAD_BYTES_MAX)
        .keep_alive(true)
        .serve_connection(io, service);
    let served = async {
        if let Err(e) = connection.await {
            tracing::debug!(shard = ctx.shard, "http: connection ended: {e}");
        }
        Ended::Done
    };
    let watchdog = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(WATCHDOG_MS)).await;
            let now = Instant::now();
            if activity.working.get() {
                // The request has arrived and is being worked on: its
                // answer gets the whole request time once the work ends.
                activity.last.set(now);
                if activity.request_started.get().is_some() {
                    activity.request_started.set(Some(now));
                }
                continue;
            }
            if let Some(started) = activity.request_started.get() {
                if now.duration_since(started) >= Duration::from_millis(HTTP_REQUEST_TIMEOUT_MS) {
                    return Ended::RequestTimeout;
                }
            } else if now.duration_since(activity.last.get())
                >= Duration::from_millis(HTTP_IDLE_TIMEOUT_MS)
            {
                return Ended::Idle;
            }
        }
    };
    let ended = futures_lite::future::or(served, watchdog).await;
    // hyper's connection is dropped: the stream is ours again.
    let mut stream = stream.borrow_mut();
    if let Ended::RequestTimeout = ended {
        let body = "408 Request Timeout: the request did not arrive in time\n";
        let response = plain_response(408, "Request Timeout", body);
        let _ = stream.write_all(response.as_bytes()).await;
    }
    if !matches!(ended, Ended::Done) {
        let _ = stream.close().await;
    }
}

/// A gathered status and its renderings, each made once, on first use.
struct Snapshot {
    view: StatusView,
    metrics: OnceCell<Bytes>,
    json: OnceCell<Bytes>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("a valid content type"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

/// The answer to one request.
async fn route(
    ctx: &Rc<HttpContext>,
    request: Request<Incoming>,
    activity: &Activity,
    peer: Option<std::net::IpAddr>,
) -> Reply {
    if track::is_tracking_path(request.uri().path()) {
        if let Some(env) = ctx.env.get() {
            return track::serve(env, &request, peer);
        }
    }
    let path = request.uri().path().to_string();
    if path.starts_with("/api/v1/") && path != "/api/v1/status" {
        if let (Some(api), Some(env)) = (ctx.api.get(), ctx.env.get()) {
            let reach = crate::api::Reach {
                env,
                control: &ctx.control,
            };
            return crate::api::serve(api, &reach, request, &activity.working).await;
        }
    }
    let known = matches!(
        path.as_str(),
        "/" | "/index.html" | "/status.js" | "/status.css" | "/metrics" | "/api/v1/status"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, format!("404 Not Found: {path}\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("405 Method Not Allowed: {} {path}\n", request.method()),
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path.as_str() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/status.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", STATUS_JS),
        "/status.css" => reply(StatusCode::OK, "text/css; charset=utf-8", STATUS_CSS),
        "/metrics" => match status(ctx).await {
            Ok(snapshot) => {
                let body = snapshot
                    .metrics
                    .get_or_init(|| render::prometheus(&snapshot.view).into());
                let content_type = "text/plain; version=0.0.4; charset=utf-8";
                reply(StatusCode::OK, content_type, body.clone())
            }
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("503: {e}\n")),
        },
        _ => match status(ctx).await {
            Ok(snapshot) => {
                let body = snapshot
                    .json
                    .get_or_init(|| render::status_json(&snapshot.view).into());
                reply(StatusCode::OK, "application/json", body.clone())
            }
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("503: {e}\n")),
        },
    }
}

/// The engine's status, at most `HTTP_STATUS_CACHE_MS` old: a fresh enough
/// copy is reused; otherwise one request gathers while the others wait.
async fn status(ctx: &HttpContext) -> Result<Rc<Snapshot>, ControlError> {
    let fresh = Duration::from_millis(HTTP_STATUS_CACHE_MS);
    let deadline = Instant::now() + Duration::from_millis(HTTP_STATUS_TIMEOUT_MS);
    loop {
        if let Some((at, snapshot)) = &*ctx.cached.borrow() {
            if at.elapsed() < fresh {
                return Ok(snapshot.clone());
            }
        }
        if !ctx.gathering.get() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Busy);
        }
        glommio::timer::sleep(Duration::from_millis(STATUS_POLL_MS)).await;
    }
    // Cleared on drop: a request whose connection is dropped mid-gather
    // must not leave the flag set.
    struct Gathering<'a>(&'a Cell<bool>);
    impl Drop for Gathering<'_> {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }
    ctx.gathering.set(true);
    let guard = Gathering(&ctx.gathering);
    let gathered = gather(ctx).await;
    drop(guard);
    let snapshot = Rc::new(Snapshot {
        view: gathered?,
        metrics: OnceCell::new(),
        json: OnceCell::new(),
    });
    *ctx.cached.borrow_mut() = Some((Instant::now(), snapshot.clone()));
    // Rendering is the costly part: let queued mail work run first.
    glommio::yield_if_needed().await;
    Ok(snapshot)
}

/// Every shard's counters (read directly) and status (asked of each shard
/// through the control plane, polled: this task never blocks its shard).
async fn gather(ctx: &HttpContext) -> Result<StatusView, ControlError> {
    let count = ctx.control.shard_count();
    let parts = ctx.control.start(ControlRequest::Status)?;
    let deadline = Instant::now() + Duration::from_millis(HTTP_STATUS_TIMEOUT_MS);
    let mut got: Vec<Option<ControlReply>> = vec![None; count];
    let mut answered = 0;
    while answered < count {
        while let Ok((shard, part)) = parts.try_recv() {
            if shard < count && got[shard].is_none() {
                got[shard] = Some(part);
                answered += 1;
            }
        }
        if answered == count {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ControlError::Timeout {
                got: answered,
                expected: count,
            });
        }
        glommio::timer::sleep(Duration::from_millis(STATUS_POLL_MS)).await;
    }
    let shards = got
        .into_iter()
        .enumerate()
        .map(|(shard, part)| {
            let status = match part {
                Some(ControlReply::Status(status)) => *status,
                _ => Default::default(),
            };
            ShardView {
                figures: ctx.stats.shards[shard].figures(),
                status,
            }
        })
        .collect();
    Ok(StatusView {
        uptime_secs: ctx.stats.started.elapsed().as_secs(),
        shards,
    })
}
