//! One shard's executor body: build the rooms in order (mesh, spool and
//! recovery, logs, listeners), report ready, serve, tick, and stop.
//!
//! Owns: [`Shard`], the wiring of one shard's rooms (inbound, message
//! lifecycle, outbound, router), its [`Inbox`] (what the mesh brings is
//! handed to the room that owns it), its listeners (bound at start, added,
//! changed or dropped by a reload: `Shard::reload`), the log reopen, the
//! shard's clock (the tick, and shard 0's mainlog heartbeat) and its
//! graceful stop. May call: every engine room. Never: another shard's
//! state except through the mesh.

use crate::tls::server::ServerTls;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use ecelerity_spool::{BodyReader, Spool, SpoolOptions};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::sync::Gate;

use super::StartError;
use crate::clock::now_unix_ms;
use crate::config::{Config, ListenerConfig};
use crate::control::{ControlHandle, ControlReply, ControlRequest, Envelope, CONTROL_POLL_MS};
use crate::delivery::Outbound;
use crate::dns::{system_nameservers, Resolver};
use crate::env::{LiveConfig, ShardEnv, Stopping};
use crate::events::EventLog;
use crate::http::{self, HttpContext, HTTP_SHARES};
use crate::inbound::{accept_loop, shard_policy, Inbound, LiveListener};
use crate::latency::RATE_SAMPLE_MS;
use crate::log::{format_heartbeat, ShardLogs};
use crate::mesh::{dispatch, Inbox, Outcome, Router, ShardMsg};
use crate::message::Messages;
use crate::queue::{Bindings, MessageRef};
use crate::stats::{Counter, EngineStats};

/// How often a shard checks the stop flag, refreshes its gauges and
/// promotes due entries of its delayed queue.
pub const TICK_MS: u64 = 100;
/// How long shard 0 keeps polling its control queue quickly after a
/// request.
const CONTROL_BUSY_MS: u64 = 1_000;
/// Ticks between two prunings of idle queues (one minute).
const PRUNE_TICKS: u64 = 600;
/// How often a ready shard checks whether it may start serving.
const SERVE_POLL_MS: u64 = 5;
/// Shares of the inbound task queue (sessions, spool writer) and of the
/// delivery queue: equal, so neither starves; what differs is latency.
const INBOUND_SHARES: usize = 1000;
const DELIVERY_SHARES: usize = 1000;
/// Preemption target of the inbound queue: how long it lets another queue
/// run before it gets the core back.
const INBOUND_LATENCY_MS: u64 = 1;
/// How long notes and completions wait for a message to share their
/// fdatasync (see `SpoolOptions::progress_linger_ms`): a client sending
/// one message at a time sends the next well within it.
const SPOOL_PROGRESS_LINGER_MS: u64 = 20;
/// How long a stopping shard waits for open SMTP sessions to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 10_000;

/// What a shard's executor starts with.
pub(super) struct Setup {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub stats: Arc<EngineStats>,
    /// Set to stop every shard (signal, console `shutdown`, failed start).
    pub stop: Arc<AtomicBool>,
    /// Set once every shard is ready and the daemon may serve.
    pub serving: Arc<AtomicBool>,
    pub mesh: MeshBuilder<ShardMsg, Full>,
    pub ready: mpsc::Sender<Result<(), StartError>>,
    /// Shard 0 only: control requests from threads outside the shards.
    pub control_queue: Option<Receiver<Envelope>>,
    /// The DKIM signers (`opendkim`), loaded once before the shards start.
    pub dkim: Option<Arc<crate::dkim::Signers>>,
    /// How this shard's HTTP listener asks every shard for its status.
    pub control: ControlHandle,
    /// The `Datasource` drivers, opened once before the shards start.
    pub datasources: Arc<crate::datasource::DatasourceSet>,
}

/// One shard's rooms, wired.
struct Shard {
    env: Rc<ShardEnv>,
    router: Rc<Router>,
    messages: Rc<Messages>,
    outbound: Rc<Outbound>,
    inbound: Rc<Inbound>,
    /// The ESMTP listeners this shard accepts on (a reload adds and
    /// removes them), and the task queue their accept loops run in.
    listening: RefCell<Vec<Listening>>,
    inbound_queue: Cell<Option<glommio::TaskQueueHandle>>,
    /// The REST API's generation on this shard (its HTTP listener's, and
    /// other shards' shares of their transmissions).
    api: Rc<crate::api::ShardApi>,
}

/// One listener a shard accepts on: its live options and its accept loop
/// (dropping the task closes the socket; open sessions go on).
struct Listening {
    address: SocketAddr,
    live: LiveListener,
    _accepting: glommio::Task<()>,
}

impl Shard {
    /// Starts accepting on `socket` with `config`.
    fn listen(
        &self,
        socket: TcpListener,
        config: &ListenerConfig,
        tls: Option<Rc<ServerTls>>,
    ) -> Result<(), String> {
        let queue = self.inbound_queue.get().ok_or("not serving yet")?;
        let live: LiveListener = Rc::new(RefCell::new(Rc::new(config.clone())));
        let task = glommio::spawn_local_into(
            accept_loop(self.inbound.clone(), socket, live.clone(), tls),
            queue,
        )
        .map_err(|e| format!("cannot start an accept loop on {}: {e}", config.address))?;
        self.listening.borrow_mut().push(Listening {
            address: config.address,
            live,
            _accepting: task,
        });
        Ok(())
    }

    /// `config reload`: swaps the configuration in (queues resolve their
    /// options again on their next decision: `LiveConfig`'s generation),
    /// the policy (listeners' `relay_hosts`), and the listeners: a changed
    /// one takes its new options for its next connection, a new one is
    /// bound, a removed one stops accepting (its sessions finish).
    fn reload(&self, config: &Arc<Config>) -> Vec<String> {
        self.env.config.replace(config.clone());
        // Every shard loads the scripts; shard 0 speaks for them all.
        let mut script_errors = self
            .inbound
            .scriptlets
            .reload(config, &self.inbound.bindings);
        for e in &script_errors {
            tracing::error!(shard = self.env.id, "config reload: {e}");
        }
        if self.env.id != 0 {
            script_errors.clear();
        }
        *self.inbound.policy.borrow_mut() = shard_policy(config, &self.inbound.scriptlets);
        let wanted: Vec<&ListenerConfig> = config
            .esmtp_listeners()
            .iter()
            .filter(|l| l.enabled)
            .collect();
        let mut errors = script_errors;
        self.listening
            .borrow_mut()
            .retain(|l| wanted.iter().any(|w| w.address == l.address));
        for listener in wanted {
            let existing = self
                .listening
                .borrow()
                .iter()
                .find(|l| l.address == listener.address)
                .map(|l| l.live.clone());
            match existing {
                Some(live) => *live.borrow_mut() = Rc::new(listener.clone()),
                None => {
                    let bound = crate::inbound::listener_tls(listener).and_then(|tls| {
                        TcpListener::bind(listener.address)
                            .map_err(|e| format!("cannot listen on {}: {e}", listener.address))
                            .and_then(|socket| self.listen(socket, listener, tls))
                    });
                    if let Err(e) = bound {
                        errors.push(format!("shard {}: {e}", self.env.id));
                    }
                }
            }
        }
        errors
    }

    /// Stops accepting on every listener.
    fn stop_listening(&self) {
        self.listening.borrow_mut().clear();
    }
}

impl Inbox for Shard {
    fn on_entries(&self, entries: Vec<MessageRef>) {
        for e in entries {
            self.outbound.enqueue(e);
        }
    }

    fn on_outcomes(&self, outcomes: Vec<Outcome>) {
        self.messages.on_outcomes(outcomes, &self.router);
    }

    fn on_generate(&self, job: Box<crate::api::generate::GenerateJob>) {
        self.api.on_generate(*job);
    }

    fn on_control(&self, envelope: Envelope) {
        if envelope.fan_out {
            // Shard 0 took it from the control queue: every shard answers.
            let router = self.router.clone();
            let count = self.env.count;
            glommio::spawn_local(async move {
                for peer in 0..count {
                    let mut copy = envelope.clone();
                    copy.fan_out = false;
                    router.control(peer, copy).await;
                }
            })
            .detach();
        } else if let ControlRequest::Scriptlet { line } = &envelope.request {
            // A Lua function may wait: answered from a task of its own.
            let line = line.clone();
            let scriptlets = self.inbound.scriptlets.clone();
            let id = self.env.id;
            glommio::spawn_local(async move {
                let reply = crate::scriptlet::control_reply(&scriptlets, id, &line).await;
                envelope.answer(id, reply);
            })
            .detach();
        } else {
            let reply = match &envelope.request {
                ControlRequest::Reload(new) => ControlReply::Reloaded {
                    errors: self.reload(&new.0),
                },
                ControlRequest::ReopenLogs => ControlReply::LogsReopened {
                    error: self
                        .env
                        .logs
                        .reopen()
                        .and_then(|()| self.env.events.reopen())
                        .err()
                        .map(|e| e.to_string()),
                },
                ControlRequest::Metrics(query) => {
                    ControlReply::Metrics(self.env.events.metrics_query(query))
                }
                request => self.outbound.answer(request),
            };
            envelope.answer(self.env.id, reply);
        }
    }
}

/// A start-up step slower than this is reported in the paniclog.
const SLOW_START_STEP_MS: u64 = 1_000;

/// Says in the paniclog that a start-up step was slow (a file system slow
/// to sync, a peer shard slow to start), so a slow start is never silent.
fn note_slow_step(id: usize, step: &str, since: Instant) {
    let took = since.elapsed();
    if took >= Duration::from_millis(SLOW_START_STEP_MS) {
        tracing::warn!(shard = id, "{step} took {:.1} s", took.as_secs_f64());
    }
}

/// How often a starting shard wakes itself.
const START_NUDGE_MS: u64 = 5;

/// Wakes the executor every `START_NUDGE_MS` while `starting` holds.
/// Start-up waits on cross-thread notifications (glommio's mesh join, then
/// the channels that carry recovered entries to their owners); seen here
/// under load, a shard that missed one slept until something else woke it,
/// and start-up stalled for tens of seconds with nothing in the log. Any
/// wake-up makes glommio look at its shared channels again, so this bounds
/// such a miss to a few milliseconds. Once serving, the shard's tick does
/// the same every `TICK_MS`.
async fn nudge_while(starting: Rc<Cell<bool>>) {
    while starting.get() {
        glommio::timer::sleep(Duration::from_millis(START_NUDGE_MS)).await;
    }
}

/// Tells the starter this shard failed, with what.
fn fail(ready: &mpsc::Sender<Result<(), StartError>>, id: usize, what: String) {
    let _ = ready.send(Err(StartError::Other { shard: id, what }));
}

/// Body of one shard's executor.
pub(super) async fn run(setup: Setup) {
    let Setup {
        id,
        count,
        config,
        stats,
        stop,
        serving,
        mesh,
        ready,
        control_queue,
        dkim,
        control,
        datasources,
    } = setup;
    // Join the mesh first: it only needs every shard to reach this point,
    // and a shard that fails later must not leave the others waiting here.
    let started = Instant::now();
    // Until this shard is ready nothing else wakes it on a timer (the tick
    // starts with serving), so it nudges itself through the mesh join and
    // the routing of what recovery found.
    let starting = Rc::new(Cell::new(true));
    glommio::spawn_local(nudge_while(starting.clone())).detach();
    let join = mesh.join().await;
    let Ok((senders, mut receivers)) = join else {
        return fail(&ready, id, "cannot join the shard mesh".into());
    };
    note_slow_step(id, "joining the shard mesh", started);
    // Two task queues (Seastar's scheduling groups): reception and the
    // spool's group commit, where a client waits for each step, run in a
    // latency-sensitive queue; delivery runs in its own queue, so a burst
    // of outbound work on the shard that owns a busy domain cannot hold a
    // waiting 250 back for a whole time slice.
    let inbound_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(INBOUND_SHARES),
        glommio::Latency::Matters(Duration::from_millis(INBOUND_LATENCY_MS)),
        "inbound",
    );
    let delivery_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(DELIVERY_SHARES),
        glommio::Latency::NotImportant,
        "delivery",
    );
    let spool_dir = config.spoolbase().join(id.to_string());
    let opened = glommio::spawn_local_into(
        {
            let spool_dir = spool_dir.clone();
            let options = SpoolOptions {
                progress_linger_ms: SPOOL_PROGRESS_LINGER_MS,
                ..SpoolOptions::default()
            };
            async move { Spool::open(&spool_dir, options).await }
        },
        inbound_queue,
    );
    let opening = Instant::now();
    let opened = match opened {
        Ok(task) => task.await,
        Err(e) => return fail(&ready, id, format!("cannot start the spool task: {e}")),
    };
    note_slow_step(id, "opening and recovering the spool", opening);
    let (spool, recovery) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            let what = format!("cannot open the spool {}: {e}", spool_dir.display());
            return fail(&ready, id, what);
        }
    };
    for cut in &recovery.truncated {
        tracing::warn!(
            shard = id,
            "spool: segment {:016x} cut at offset {}: {}",
            cut.segment,
            cut.offset,
            cut.reason
        );
    }
    let logs = match ShardLogs::open(config.logs()) {
        Ok(l) => l,
        Err(source) => {
            let _ = ready.send(Err(StartError::Io {
                shard: id,
                what: "cannot open the mainlog, rejectlog or bouncelog".into(),
                source,
            }));
            return;
        }
    };
    let events = match EventLog::open(config.logs().eventlog.as_deref(), id, now_unix_ms()) {
        Ok(e) => e,
        Err(source) => {
            let _ = ready.send(Err(StartError::Io {
                shard: id,
                what: "cannot open the eventlog".into(),
                source,
            }));
            return;
        }
    };
    let mut listeners = Vec::new();
    for l in config.esmtp_listeners().iter().filter(|l| l.enabled) {
        let tls = match crate::inbound::listener_tls(l) {
            Ok(tls) => tls,
            Err(why) => return fail(&ready, id, why),
        };
        match TcpListener::bind(l.address) {
            Ok(sock) => listeners.push((sock, l.clone(), tls)),
            Err(e) => return fail(&ready, id, format!("cannot listen on {}: {e}", l.address)),
        }
    }
    let mut http_listeners = Vec::new();
    for address in config.http_listeners() {
        match glommio::net::TcpListener::bind(address) {
            Ok(sock) => http_listeners.push(sock),
            Err(e) => {
                return fail(
                    &ready,
                    id,
                    format!("cannot listen on {address} (HTTP): {e}"),
                )
            }
        }
    }
    let shard = wire(
        id,
        count,
        &config,
        stats,
        (logs, events),
        senders,
        spool,
        recovery.max_id,
        delivery_queue,
        dkim,
        datasources,
    );
    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                dispatch(&*shard, msg);
            }
        })
        .detach();
    }
    let recovered = recovery.messages.len();
    let entries = shard.messages.recover(recovery.messages).await;
    shard.router.route(entries).await;
    if recovered > 0 {
        // Recovery held every live envelope at once; hand that memory back
        // so a restarted daemon with a large queue costs what a live one
        // does (glibc keeps freed heap otherwise).
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
        tracing::info!(
            shard = id,
            "spool: recovered {recovered} live message(s) from {} segment(s)",
            recovery.segments_read
        );
    }

    let _ = ready.send(Ok(()));
    // Serve only once every shard is ready and the daemon has dropped its
    // privileges: not a byte is read from the network before that.
    while !serving.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(SERVE_POLL_MS)).await;
    }
    starting.set(false);
    shard.inbound_queue.set(Some(inbound_queue));
    for (sock, listener, tls) in listeners {
        if let Err(e) = shard.listen(sock, &listener, tls) {
            tracing::error!(shard = id, "{e}");
        }
    }
    // The HTTP listener in a queue of its own with few shares: a request
    // waits for mail work, never the other way round.
    let http_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(HTTP_SHARES),
        glommio::Latency::NotImportant,
        "http",
    );
    let http = HttpContext::new(id, shard.env.stats.clone(), control, http_queue);
    let _ = http.api.set(shard.api.clone());
    let _ = http.env.set(shard.env.clone());
    let mut http_tasks = Vec::new();
    for sock in http_listeners {
        match glommio::spawn_local_into(http::accept_loop(http.clone(), sock), http_queue) {
            Ok(task) => http_tasks.push(task),
            Err(e) => tracing::error!(shard = id, "cannot start an HTTP accept loop: {e}"),
        }
    }
    // Spool compaction in the background queue, at its configured pace:
    // never in the path of a message.
    let compaction = shard
        .messages
        .spool
        .compaction_task(config.spool_compaction());
    match glommio::spawn_local_into(compaction, delivery_queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(shard = id, "cannot start spool compaction: {e}"),
    }
    if let Some(queue) = control_queue {
        let shard = shard.clone();
        glommio::spawn_local(async move { poll_control(&shard, queue).await }).detach();
    }

    tick_until_stopped(&shard, &stop).await;

    // Graceful stop: no new connections, open sessions finish or get 421.
    shard.stop_listening();
    for t in http_tasks {
        t.cancel().await;
    }
    shard.env.stopping.start();
    let _ = glommio::timer::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        let _ = shard.inbound.sessions.close().await;
        Ok(())
    })
    .await;
    if let Err(e) = shard.messages.spool.close().await {
        tracing::error!(shard = id, "spool: final sync failed: {e}");
    }
    shard.env.logs.flush();
    shard.env.events.flush();
    tracing::info!(shard = id, "stopped");
}

/// Builds the rooms of shard `id` and ties them together.
#[allow(clippy::too_many_arguments)]
fn wire(
    id: usize,
    count: usize,
    config: &Arc<Config>,
    stats: Arc<EngineStats>,
    (logs, events): (ShardLogs, EventLog),
    senders: glommio::channels::channel_mesh::Senders<ShardMsg>,
    spool: Spool,
    max_recovered_id: u64,
    delivery_queue: glommio::TaskQueueHandle,
    dkim: Option<Arc<crate::dkim::Signers>>,
    datasources: Arc<crate::datasource::DatasourceSet>,
) -> Rc<Shard> {
    let env = Rc::new(ShardEnv {
        id,
        count,
        config: LiveConfig::new(config.clone()),
        stats,
        logs,
        events,
        stopping: Stopping::default(),
        latency: Default::default(),
        datasources: Rc::new(crate::datasource::Datasources::new(datasources)),
    });
    let bindings = Rc::new(Bindings::from_config(config));
    let router = Rc::new(Router::new(env.clone(), bindings.clone(), senders));
    let spool_dirs: Vec<PathBuf> = (0..count)
        .map(|s| config.spoolbase().join(s.to_string()))
        .collect();
    let messages = Rc::new(Messages::new(
        env.clone(),
        bindings.clone(),
        spool,
        BodyReader::new(spool_dirs[id].clone()),
        now_unix_ms(),
        max_recovered_id,
    ));
    // Read once at start (like the logs opened above), before any traffic.
    let system_nameservers = system_nameservers();
    let outbound = Rc::new(Outbound::new(
        env.clone(),
        bindings.clone(),
        router.clone(),
        spool_dirs.into_iter().map(BodyReader::new).collect(),
        delivery_queue,
        Resolver::new(system_nameservers),
    ));
    let dns: crate::scriptlet::api::DnsLookup = {
        let outbound = outbound.clone();
        Rc::new(move |name, kind| {
            let outbound = outbound.clone();
            Box::pin(async move { outbound.dns_lookup(&name, kind).await })
        })
    };
    let scriptlets = crate::scriptlet::Scriptlets::start(
        config,
        &bindings,
        id,
        crate::scriptlet::api::Services {
            dns: Some(dns),
            datasources: Some(env.datasources.clone()),
        },
    );
    outbound.set_scriptlets(scriptlets.clone());
    let inbound = Rc::new(Inbound {
        env: env.clone(),
        messages: messages.clone(),
        router: router.clone(),
        policy: RefCell::new(shard_policy(config, &scriptlets)),
        scriptlets,
        bindings,
        sessions: Gate::new(),
        episodes: Default::default(),
        unknown_bindings: Default::default(),
        dkim,
    });
    // The spool's clients: inbound SMTP sessions and HTTP connections of
    // this shard (a lone client's group commits sync on this thread).
    messages.spool.set_client_count({
        let env = env.clone();
        move || {
            let stats = env.stats();
            (stats.get(Counter::InboundConnections) + stats.get(Counter::HttpConnections)) as usize
        }
    });
    let api = crate::api::ShardApi::new(env.clone(), messages.clone(), router.clone());
    let shard = Rc::new(Shard {
        env,
        router,
        messages,
        outbound,
        inbound,
        listening: RefCell::new(Vec::new()),
        inbound_queue: Cell::new(None),
        api,
    });
    let inbox: Rc<dyn Inbox> = shard.clone();
    shard.router.set_inbox(Rc::downgrade(&inbox));
    shard
}

/// The shard's clock: stop flag, delayed queue, gauges, log flush.
async fn tick_until_stopped(shard: &Rc<Shard>, stop: &AtomicBool) {
    let mut ticks: u64 = 0;
    let mut last_heartbeat = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        if shard.env.id == 0 {
            heartbeat(&shard.env, &mut last_heartbeat);
        }
        shard.outbound.promote_due();
        shard.outbound.refresh_gauges();
        let spool = shard.messages.spool.stats();
        shard
            .env
            .stats()
            .set(Counter::SpoolSegments, spool.segments as u64);
        shard.env.stats().set(Counter::SpoolSyncs, spool.syncs);
        shard
            .env
            .stats()
            .set(Counter::SpoolInlineSyncs, spool.inline_syncs);
        shard.env.stats().add(Counter::ShardTicks, 1);
        shard.env.logs.flush();
        if ticks.is_multiple_of(RATE_SAMPLE_MS / TICK_MS) {
            let figures = shard.env.stats().figures();
            let mut latency = shard.env.latency.borrow_mut();
            latency.sample(Instant::now(), &figures);
        }
        shard.env.events.flush();
        ticks += 1;
        if ticks.is_multiple_of(PRUNE_TICKS) {
            shard.outbound.prune();
        }
    }
}

/// Shard 0 only (the daemon has one logger): the mainlog's `M` line every
/// `heartbeat` seconds (0: none), read from the live configuration.
fn heartbeat(env: &ShardEnv, last: &mut Instant) {
    let every = env.config.get().logs().heartbeat;
    if every.is_zero() || last.elapsed() < every {
        return;
    }
    *last = Instant::now();
    let secs = now_unix_ms() / 1000;
    env.logs.mainlog(|buf| format_heartbeat(buf, secs));
}

/// Shard 0 only: takes control requests from threads outside the shards
/// and fans each out to every shard (see `control`).
/// It looks every `CONTROL_POLL_MS` for a second after a request (a
/// console session usually sends several) and every `TICK_MS` otherwise,
/// so an idle shard is not woken a hundred times a second for nothing.
async fn poll_control(shard: &Rc<Shard>, queue: Receiver<Envelope>) {
    let mut last_request: Option<Instant> = None;
    while !shard.env.is_stopping() {
        while let Ok(envelope) = queue.try_recv() {
            shard.on_control(envelope);
            last_request = Some(Instant::now());
        }
        let busy =
            last_request.is_some_and(|t| t.elapsed() < Duration::from_millis(CONTROL_BUSY_MS));
        let pause = if busy { CONTROL_POLL_MS } else { TICK_MS };
        glommio::timer::sleep(Duration::from_millis(pause)).await;
    }
}
