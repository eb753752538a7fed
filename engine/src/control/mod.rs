//! The control plane: requests that must see a shard's own state (its
//! queues), asked of every shard and answered by each.
//!
//! Owns: [`ControlRequest`] and [`ControlReply`], the [`Envelope`] that
//! carries a request over the mesh with the channel its answers go back
//! on, [`ControlHandle`] (how a thread outside the shards, such as the
//! console, asks), and the pure handlers: [`answer`] (a request and one
//! shard's queues in, that shard's part out; the requests that change
//! queues or read the resolver are carried out by `delivery::Outbound`)
//! and the renderers: here [`render_mailq`], [`render_domains`],
//! [`render_flushed`], [`render_failed`]; `showqueue` and `message` in
//! `messages.rs`, `domain`, `binding summary`, `suspend` and `reroute` in
//! `queues.rs`, `dns_cache` in `resolver.rs`.
//! May call: `queue` (read-only), `config` (the type a reload carries). Never: I/O, a lock on a shard's path
//! (a shard answers with a non-blocking send; a full or closed reply
//! channel drops that part).
//!
//! Path of a request: the asking thread pushes an [`Envelope`] into shard
//! 0's control queue (a bounded crossbeam channel, polled by shard 0 every
//! [`CONTROL_POLL_MS`] while requests come, once a tick otherwise); shard 0 sends a copy to every shard
//! over the mesh (`ShardMsg::Control`, itself included); each shard
//! answers into the envelope's reply channel; the asker gathers one part
//! per shard or gives up after its timeout.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};

use crate::config::Config;
use crate::queue::{Bindings, MessageId, Queues};

mod messages;
mod queues;
mod resolver;

pub use messages::{queued_messages, render_message, render_message_changed, render_showqueue};
pub use queues::{
    binding_rows, domain_queues, render_binding_summary, render_domain, render_rerouted,
    render_suspended,
};
pub use resolver::{render_dns_flushed, render_dns_lookup, render_dns_stats};

/// How often shard 0 looks at its control queue while requests come (it
/// looks once a tick otherwise).
pub const CONTROL_POLL_MS: u64 = 10;
/// Requests waiting for shard 0 at most; past it an asker is told busy.
pub const CONTROL_QUEUE_MAX: usize = 64;
/// How long an asker waits for every shard's part.
pub const CONTROL_TIMEOUT_MS: u64 = 5_000;
/// Most rows one shard returns for `mailq`.
pub const MAILQ_ROWS_MAX: usize = 10_000;
/// Most domains one shard returns for `active` / `delayed`.
pub const DOMAIN_ROWS_MAX: usize = 10_000;
/// Most messages one shard returns for `showqueue` or `message details`.
pub const SHOWQUEUE_ROWS_MAX: usize = 10_000;
/// Messages `showqueue` shows unless told otherwise.
pub const SHOWQUEUE_ROWS_DEFAULT: usize = 100;
/// The reply every recipient failed by `fail domain` or `message fail` gets.
pub const OPERATOR_FAILURE_REPLY: &str = "554 5.4.0 [internal] failed by the operator";

/// What a control client asks every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    /// Momentum's `mailq`: every queue with its active and delayed sizes,
    /// optionally only some domains or bindings, at most `limit` rows.
    Mailq {
        domains: Vec<String>,
        bindings: Vec<String>,
        limit: usize,
    },
    /// Momentum's `active N` / `delayed N`: domains whose active (or
    /// delayed) queue holds more than `above` entries, summed over shards.
    Domains { side: QueueSide, above: u64 },
    /// Momentum's `flush domain <d|all>`: every delayed entry of the domain
    /// (every binding; `None`: every domain) is due now.
    Flush { domain: Option<String> },
    /// Momentum's `fail domain [quiet] <d>`: every queued entry of the
    /// domain (active and delayed, every binding) fails permanently with
    /// [`OPERATOR_FAILURE_REPLY`]; `quiet` sends no DSN.
    Fail { domain: String, quiet: bool },
    /// Momentum's `domain <d>`: the queues of the domain, one per binding,
    /// with their sizes, connections and state.
    Domain { domain: String },
    /// Momentum's `showqueue [binding <b>|binding all] <d> [limit,offset]`:
    /// the messages queued for the domain (`binding` `None`: every binding).
    ShowQueue {
        domain: String,
        binding: Option<String>,
        limit: usize,
        offset: usize,
    },
    /// Momentum's `message details|retry|fail [quiet] <id>`.
    Message {
        id: MessageId,
        action: MessageAction,
    },
    /// Momentum's `binding summary [name]`: per binding, its queues,
    /// messages and connections (`None`: every binding).
    BindingSummary { binding: Option<String> },
    /// `suspend` / `resume` of a domain's queues or a binding's queues.
    Suspend { target: Target, suspend: bool },
    /// Momentum's `reroute queue <d1> <d2>`: the queued messages of `from`
    /// are delivered through the route of `to`.
    Reroute { from: String, to: String },
    /// `dns_cache stats|lookup <name> [type]|flush` over every shard's
    /// resolver cache.
    DnsCache(DnsCacheRequest),
    /// `config reload` / SIGHUP: every shard swaps in this configuration
    /// (already checked) at a point between two decisions, and binds or
    /// closes the listeners that changed.
    Reload(NewConfig),
    /// `reopen logs` / SIGUSR1: every shard flushes its log buffers to the
    /// files it has open, then opens the paths again.
    ReopenLogs,
    /// The HTTP listener's `/metrics` and `/api/v1/status`, and console
    /// `shards`: every non-empty queue with its sizes, and the shard's
    /// rates and latency summaries.
    Status,
    /// A console line no built-in command took: a command a scriptlet
    /// registered (`msys.registerControl`, run on shard 0), or `scriptlet
    /// counters` (every shard's `msys.counter` values).
    Scriptlet { line: String },
    /// `GET /api/v1/metrics/...`: this shard's `count_*` sums
    /// (`events::metrics`).
    Metrics(Box<crate::events::metrics::MetricsQuery>),
}

/// A configuration a reload hands to every shard; two are equal when they
/// are the same one.
#[derive(Debug, Clone)]
pub struct NewConfig(pub Arc<Config>);

impl PartialEq for NewConfig {
    fn eq(&self, other: &NewConfig) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for NewConfig {}

/// What `message` does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageAction {
    /// Shows where it is queued.
    Details,
    /// Makes every queued part of it due now.
    Retry,
    /// Fails every queued recipient of it permanently; `quiet`: no DSN.
    Fail { quiet: bool },
}

/// What `suspend` / `resume` act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every binding's queue of the domain.
    Domain(String),
    /// Every queue of the binding.
    Binding(String),
}

/// The `dns_cache` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCacheRequest {
    Stats,
    /// The cached answers for `name`, of `kinds` (MX, A, AAAA).
    Lookup {
        name: String,
        kinds: Vec<DnsKind>,
    },
    Flush,
}

/// The record types the resolver caches, as the console names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DnsKind {
    Mx,
    A,
    Aaaa,
    /// DANE's TLSA records (asked for by name only).
    Tlsa,
    /// MTA-STS's TXT records (asked for by name only).
    Txt,
}

impl DnsKind {
    /// What `dns_cache lookup NAME` shows without a type.
    pub const ALL: [DnsKind; 3] = [DnsKind::Mx, DnsKind::A, DnsKind::Aaaa];
    /// Types shown only when asked for (`dns_cache lookup NAME TLSA`).
    pub const ON_REQUEST: [DnsKind; 2] = [DnsKind::Tlsa, DnsKind::Txt];

    pub fn name(self) -> &'static str {
        match self {
            DnsKind::Mx => "MX",
            DnsKind::A => "A",
            DnsKind::Aaaa => "AAAA",
            DnsKind::Tlsa => "TLSA",
            DnsKind::Txt => "TXT",
        }
    }

    pub fn parse(text: &str) -> Option<DnsKind> {
        DnsKind::ALL
            .into_iter()
            .chain(DnsKind::ON_REQUEST)
            .find(|k| k.name().eq_ignore_ascii_case(text))
    }
}

/// Which queue of a domain `active` / `delayed` look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSide {
    Active,
    Delayed,
}

/// One shard's part of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    Mailq(Vec<QueueRow>),
    Domains(Vec<DomainRow>),
    /// Delayed entries made due.
    Flushed(u64),
    /// Entries failed.
    Failed(u64),
    /// `domain`: this shard's queues of the domain, and the domain's MX
    /// records if this shard's resolver has them cached.
    Domain {
        queues: Vec<QueueDetail>,
        mx: Option<DnsCached>,
    },
    /// `showqueue`, `message details`: queued messages.
    Messages(Vec<QueuedMessage>),
    /// `message retry`: entries made due.
    Requeued(u64),
    /// `binding summary`: one row per binding (idle ones included).
    Bindings(Vec<BindingRow>),
    /// `suspend` / `resume`: queues whose state changed and the entries
    /// they hold.
    Suspended {
        queues: u64,
        messages: u64,
    },
    /// `reroute queue`: entries moved.
    Moved(u64),
    /// The binding named does not exist.
    UnknownBinding(String),
    /// `dns_cache stats`.
    DnsStats(DnsStats),
    /// `dns_cache lookup`: what this shard's cache holds.
    DnsCached(Vec<DnsCached>),
    /// `dns_cache flush`: entries forgotten.
    DnsFlushed(u64),
    /// `config reload`: what this shard could not do (a listener it could
    /// not bind); empty when all is in effect.
    Reloaded {
        errors: Vec<String>,
    },
    /// `reopen logs`: why this shard could not reopen its logs, if so.
    LogsReopened {
        error: Option<String>,
    },
    /// `Status`: this shard's queues, rates and latencies.
    Status(Box<ShardStatus>),
    /// `Scriptlet`: the registered command's answer (shard 0, when one
    /// matched) and this shard's script counters.
    Scriptlet {
        answer: Option<String>,
        counters: Vec<(String, i64)>,
    },
    /// `Metrics`: this shard's rows (group name, sums).
    Metrics(crate::events::metrics::MetricsRows),
}

/// One shard's part of a `Status` answer: cheap copies, made on the shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Non-empty queues (at most `MAILQ_ROWS_MAX`).
    pub queues: Vec<QueueRow>,
    pub rates: crate::latency::Rates,
    pub accept: crate::latency::LatencySummary,
    pub delivery: crate::latency::LatencySummary,
}

/// One (binding, domain) queue as `domain` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueDetail {
    pub binding_group: String,
    pub binding: String,
    pub domain: String,
    pub active: u64,
    pub delayed: u64,
    pub connections: u64,
    /// Recipients delivered and failed since the queue was created.
    pub delivered: u64,
    pub failed: u64,
    pub suspended: bool,
    /// The destination is backed off until then (0: it is not).
    pub backed_off_until_unix_ms: u64,
}

/// One queue entry (a message's recipients at one domain) as `showqueue`
/// and `message details` show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuedMessage {
    /// In the delayed queue (else the active one).
    pub delayed: bool,
    pub binding: String,
    pub id: MessageId,
    pub binding_group: String,
    pub domain: String,
    pub received_unix_ms: u64,
    /// Due then (delayed entries only; 0 for active ones).
    pub next_attempt_unix_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub size_bytes: u64,
    pub suspended: bool,
}

/// One binding as `binding summary` shows it (one shard's part).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingRow {
    pub binding: String,
    pub binding_group: String,
    pub queues: u64,
    pub suspended_queues: u64,
    pub active: u64,
    pub delayed: u64,
    pub connections: u64,
}

/// One shard resolver's counts, as `dns_cache stats` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub entries: u64,
    pub negative_entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub queries: u64,
    pub failures: u64,
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCached {
    /// Lower case, without the final dot.
    pub name: String,
    pub kind: DnsKind,
    pub ttl_left_s: u32,
    pub answer: DnsData,
}

/// A cached answer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsData {
    /// Record data in zone-file form (`10 mx.example.com.`, `192.0.2.1`).
    Records(Vec<String>),
    NoData,
    NxDomain,
}

/// One domain as `active` / `delayed` show it (every binding summed).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DomainRow {
    pub domain: String,
    pub connections: u64,
    pub active: u64,
    pub delayed: u64,
    /// Recipients delivered since the queue was created.
    pub sent: u64,
}

/// Whether `filter` (a domain, case-insensitive) names `domain`.
pub fn domain_matches(filter: &str, domain: &str) -> bool {
    filter.eq_ignore_ascii_case(domain)
}

/// One queue as `mailq` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueRow {
    pub binding_group: String,
    pub binding: String,
    pub domain: String,
    pub active: u64,
    pub delayed: u64,
    /// The operator suspended the queue (shown after the sizes).
    pub suspended: bool,
}

/// A request on its way, and where its parts go.
#[derive(Clone)]
pub struct Envelope {
    pub request: ControlRequest,
    /// (shard, part).
    pub reply: Sender<(usize, ControlReply)>,
    /// Shard 0 sends this envelope to every shard (set by the asker; the
    /// copies shard 0 sends have it cleared).
    pub fan_out: bool,
}

impl Envelope {
    /// Sends this shard's part; never waits.
    pub fn answer(&self, shard: usize, part: ControlReply) {
        match self.reply.try_send((shard, part)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(shard, "control reply channel full; part dropped")
            }
        }
    }
}

/// Why a control request got no full answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the engine is busy with other control requests; try again")]
    Busy,
    #[error("the engine is not running")]
    Stopped,
    #[error("only {got} of {expected} shards answered in time")]
    Timeout { got: usize, expected: usize },
}

/// How a thread outside the shards asks them. Cheap to clone, `Send`.
#[derive(Clone)]
pub struct ControlHandle {
    to_first_shard: Sender<Envelope>,
    shard_count: usize,
}

impl ControlHandle {
    /// A handle and the queue shard 0 polls.
    pub fn new(shard_count: usize) -> (ControlHandle, Receiver<Envelope>) {
        assert!(shard_count > 0);
        let (tx, rx) = crossbeam::channel::bounded(CONTROL_QUEUE_MAX);
        (
            ControlHandle {
                to_first_shard: tx,
                shard_count,
            },
            rx,
        )
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Sends `request` to every shard without waiting: the parts arrive on
    /// the returned channel as `(shard, part)` (for askers that must not
    /// block, such as a shard's HTTP task, which polls it).
    pub fn start(
        &self,
        request: ControlRequest,
    ) -> Result<Receiver<(usize, ControlReply)>, ControlError> {
        let (reply, parts) = crossbeam::channel::bounded(self.shard_count);
        let envelope = Envelope {
            request,
            reply,
            fan_out: true,
        };
        match self.to_first_shard.try_send(envelope) {
            Ok(()) => Ok(parts),
            Err(TrySendError::Full(_)) => Err(ControlError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(ControlError::Stopped),
        }
    }

    /// Asks every shard and returns their parts in shard order.
    pub fn ask_all(
        &self,
        request: ControlRequest,
        timeout: Duration,
    ) -> Result<Vec<ControlReply>, ControlError> {
        let (reply, parts) = crossbeam::channel::bounded(self.shard_count);
        let envelope = Envelope {
            request,
            reply,
            fan_out: true,
        };
        match self.to_first_shard.try_send(envelope) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ControlError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ControlError::Stopped),
        }
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<ControlReply>> = vec![None; self.shard_count];
        let mut count = 0;
        while count < self.shard_count {
            let left = deadline.saturating_duration_since(Instant::now());
            match parts.recv_timeout(left) {
                Ok((shard, part)) if shard < self.shard_count && got[shard].is_none() => {
                    got[shard] = Some(part);
                    count += 1;
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(ControlError::Timeout {
                        got: count,
                        expected: self.shard_count,
                    })
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }
}

/// One shard's part of a read-only `request` about queues, from its own
/// queues (the requests that change queues or read the resolver are
/// carried out by the shard's `delivery::Outbound`; here they answer 0).
pub fn answer(request: &ControlRequest, queues: &Queues, bindings: &Bindings) -> ControlReply {
    match request {
        ControlRequest::Domain { domain } => ControlReply::Domain {
            queues: domain_queues(queues, bindings, domain),
            mx: None,
        },
        ControlRequest::ShowQueue {
            domain,
            binding,
            limit,
            offset,
        } => ControlReply::Messages(queued_messages(
            queues,
            bindings,
            |q, _| {
                domain_matches(domain, &q.key.domain)
                    && binding
                        .as_deref()
                        .is_none_or(|b| b == bindings.name(q.key.binding))
            },
            limit.saturating_add(*offset).min(SHOWQUEUE_ROWS_MAX),
        )),
        ControlRequest::Message {
            id,
            action: MessageAction::Details,
        } => ControlReply::Messages(queued_messages(
            queues,
            bindings,
            |_, e| e.id == *id,
            SHOWQUEUE_ROWS_MAX,
        )),
        ControlRequest::BindingSummary { binding } => {
            ControlReply::Bindings(binding_rows(queues, bindings, binding.as_deref()))
        }
        ControlRequest::Message { .. } => ControlReply::Requeued(0),
        ControlRequest::Suspend { .. } => ControlReply::Suspended {
            queues: 0,
            messages: 0,
        },
        ControlRequest::Reroute { .. } => ControlReply::Moved(0),
        ControlRequest::DnsCache(_) => ControlReply::DnsFlushed(0),
        // Carried out by the shard itself (`runtime`), never here.
        ControlRequest::Reload(_) => ControlReply::Reloaded { errors: Vec::new() },
        ControlRequest::ReopenLogs => ControlReply::LogsReopened { error: None },
        ControlRequest::Scriptlet { .. } => ControlReply::Scriptlet {
            answer: None,
            counters: Vec::new(),
        },
        // Answered by the shard's event log (`runtime`), never here.
        ControlRequest::Metrics(_) => ControlReply::Metrics(Vec::new()),
        ControlRequest::Status => {
            let all = ControlRequest::Mailq {
                domains: Vec::new(),
                bindings: Vec::new(),
                limit: MAILQ_ROWS_MAX,
            };
            let ControlReply::Mailq(queues) = answer(&all, queues, bindings) else {
                unreachable!("mailq answers with rows")
            };
            ControlReply::Status(Box::new(ShardStatus {
                queues,
                ..ShardStatus::default()
            }))
        }
        ControlRequest::Domains { .. } => {
            let mut rows: Vec<DomainRow> = Vec::new();
            for q in queues.iter() {
                if q.active.is_empty() && q.delayed_count == 0 && q.connections == 0 {
                    continue;
                }
                let at = match rows.iter().position(|r| *r.domain == *q.key.domain) {
                    Some(at) => at,
                    None if rows.len() < DOMAIN_ROWS_MAX => {
                        rows.push(DomainRow {
                            domain: q.key.domain.to_string(),
                            ..DomainRow::default()
                        });
                        rows.len() - 1
                    }
                    None => continue,
                };
                let r = &mut rows[at];
                r.connections += q.connections as u64;
                r.active += q.active.len() as u64;
                r.delayed += q.delayed_count as u64;
                r.sent += q.delivered;
            }
            ControlReply::Domains(rows)
        }
        ControlRequest::Flush { .. } => ControlReply::Flushed(0),
        ControlRequest::Fail { .. } => ControlReply::Failed(0),
        ControlRequest::Mailq {
            domains,
            bindings: only,
            limit,
        } => {
            let limit = (*limit).min(MAILQ_ROWS_MAX);
            let rows = queues
                .iter()
                .filter(|q| {
                    domains.is_empty()
                        || domains
                            .iter()
                            .any(|d| d.eq_ignore_ascii_case(&q.key.domain))
                })
                .filter(|q| {
                    only.is_empty() || only.iter().any(|b| b == bindings.name(q.key.binding))
                })
                .filter(|q| !q.active.is_empty() || q.delayed_count > 0)
                .take(limit)
                .map(|q| QueueRow {
                    binding_group: bindings.group(q.key.binding).to_string(),
                    binding: bindings.name(q.key.binding).to_string(),
                    domain: q.key.domain.to_string(),
                    active: q.active.len() as u64,
                    delayed: q.delayed_count as u64,
                    suspended: q.suspended,
                })
                .collect();
            ControlReply::Mailq(rows)
        }
    }
}

/// Momentum's `mailq` table: `Group/Binding  Domain  AQ  DQ`, one row per
/// queue (a queue spread over several shards is summed), sorted; a
/// suspended queue has `suspended` after its sizes.
pub fn render_mailq(parts: &[ControlReply], limit: usize) -> String {
    let mut rows: Vec<QueueRow> = Vec::new();
    for part in parts {
        let ControlReply::Mailq(part_rows) = part else {
            continue;
        };
        for r in part_rows {
            match rows
                .iter_mut()
                .find(|x| x.binding == r.binding && x.domain == r.domain)
            {
                Some(x) => {
                    x.active += r.active;
                    x.delayed += r.delayed;
                    x.suspended |= r.suspended;
                }
                None => rows.push(r.clone()),
            }
        }
    }
    rows.sort();
    rows.truncate(limit);
    let width = rows
        .iter()
        .map(|r| r.binding_group.len() + 1 + r.binding.len())
        .max()
        .unwrap_or(0)
        .max("Group/Binding".len());
    let domain_width = rows
        .iter()
        .map(|r| r.domain.len())
        .max()
        .unwrap_or(0)
        .max("Domain".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<domain_width$}  {:>8}  {:>8}",
        "Group/Binding", "Domain", "AQ", "DQ"
    );
    for r in &rows {
        let _ = write!(
            out,
            "{:<width$}  {:<domain_width$}  {:>8}  {:>8}",
            format!("{}/{}", r.binding_group, r.binding),
            r.domain,
            r.active,
            r.delayed
        );
        out.push_str(if r.suspended { "  suspended\n" } else { "\n" });
    }
    out
}

/// Momentum's `active N` / `delayed N`: one `Domain:` line per domain
/// whose `side` queue holds more than `above` entries (every shard
/// summed), sorted, then a `Total:` line over every domain queued.
pub fn render_domains(parts: &[ControlReply], side: QueueSide, above: u64) -> String {
    let mut rows: Vec<DomainRow> = Vec::new();
    for part in parts {
        let ControlReply::Domains(part_rows) = part else {
            continue;
        };
        for r in part_rows {
            match rows.iter_mut().find(|x| x.domain == r.domain) {
                Some(x) => {
                    x.connections += r.connections;
                    x.active += r.active;
                    x.delayed += r.delayed;
                    x.sent += r.sent;
                }
                None => rows.push(r.clone()),
            }
        }
    }
    rows.sort();
    let mut total = DomainRow::default();
    let mut out = String::new();
    for r in &rows {
        total.connections += r.connections;
        total.active += r.active;
        total.delayed += r.delayed;
        total.sent += r.sent;
        let size = match side {
            QueueSide::Active => r.active,
            QueueSide::Delayed => r.delayed,
        };
        if size > above {
            let _ = writeln!(
                out,
                "Domain: {}  C: {}  A: {}  D: {}  S: {}",
                r.domain, r.connections, r.active, r.delayed, r.sent
            );
        }
    }
    let _ = writeln!(
        out,
        "Total:  C: {}  A: {}  D: {}  S: {}",
        total.connections, total.active, total.delayed, total.sent
    );
    out
}

/// Momentum's answer to `flush domain`: `<d> flushed.  N messages requeued.`
pub fn render_flushed(parts: &[ControlReply], domain: Option<&str>) -> String {
    let n: u64 = parts
        .iter()
        .map(|p| match p {
            ControlReply::Flushed(n) => *n,
            _ => 0,
        })
        .sum();
    format!(
        "{} flushed.  {n} messages requeued.\n",
        domain.unwrap_or("all")
    )
}

/// Momentum's answer to `fail domain`: `<d> purged, N messages failed.`
pub fn render_failed(parts: &[ControlReply], domain: &str) -> String {
    let n: u64 = parts
        .iter()
        .map(|p| match p {
            ControlReply::Failed(n) => *n,
            _ => 0,
        })
        .sum();
    format!("{domain} purged, {n} messages failed.\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn row(domain: &str, active: u64, delayed: u64) -> QueueRow {
        QueueRow {
            binding_group: "default".into(),
            binding: "default".into(),
            domain: domain.into(),
            active,
            delayed,
            suspended: false,
        }
    }

    #[test]
    fn mailq_sums_a_spread_queue_and_sorts() {
        let mut suspended = row("b.example", 4, 5);
        suspended.suspended = true;
        let parts = vec![
            ControlReply::Mailq(vec![row("b.example", 1, 2), row("a.example", 3, 0)]),
            ControlReply::Mailq(vec![suspended]),
        ];
        let text = render_mailq(&parts, 100);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Group/Binding"));
        let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(words(lines[1]), ["default/default", "a.example", "3", "0"]);
        assert_eq!(
            words(lines[2]),
            ["default/default", "b.example", "5", "7", "suspended"]
        );
        assert_eq!(render_mailq(&parts, 1).lines().count(), 2);
    }

    fn domain(name: &str, active: u64, delayed: u64) -> DomainRow {
        DomainRow {
            domain: name.into(),
            connections: 1,
            active,
            delayed,
            sent: 2,
        }
    }

    #[test]
    fn domains_sum_shards_filter_above_n_and_total_every_domain() {
        let parts = vec![
            ControlReply::Domains(vec![domain("b.example", 0, 3), domain("a.example", 1, 0)]),
            ControlReply::Domains(vec![domain("b.example", 2, 1)]),
        ];
        let text = render_domains(&parts, QueueSide::Delayed, 0);
        assert_eq!(
            text,
            "Domain: b.example  C: 2  A: 2  D: 4  S: 4\n\
             Total:  C: 3  A: 3  D: 4  S: 6\n"
        );
        let text = render_domains(&parts, QueueSide::Active, 1);
        assert_eq!(
            text.lines().next(),
            Some("Domain: b.example  C: 2  A: 2  D: 4  S: 4")
        );
        assert_eq!(text.lines().count(), 2);
        let text = render_domains(&parts, QueueSide::Active, 0);
        assert!(text.starts_with("Domain: a.example  C: 1  A: 1  D: 0"));
        assert_eq!(
            render_domains(&[], QueueSide::Active, 0),
            "Total:  C: 0  A: 0  D: 0  S: 0\n"
        );
    }

    #[test]
    fn flush_and_fail_sum_every_shard_in_momentum_words() {
        let flushed = [ControlReply::Flushed(3), ControlReply::Flushed(1)];
        assert_eq!(
            render_flushed(&flushed, Some("example.com")),
            "example.com flushed.  4 messages requeued.\n"
        );
        assert_eq!(
            render_flushed(&flushed, None),
            "all flushed.  4 messages requeued.\n"
        );
        let failed = [ControlReply::Failed(2), ControlReply::Failed(0)];
        assert_eq!(
            render_failed(&failed, "example.com"),
            "example.com purged, 2 messages failed.\n"
        );
    }

    #[test]
    fn answer_sums_the_bindings_of_a_domain() {
        let config = Config::parse("", std::path::Path::new("t.conf")).unwrap();
        let bindings = Bindings::from_config(&config);
        let mut queues = Queues::default();
        let options = || config.delivery("default", "x");
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        queues.find_or_create(Bindings::DEFAULT, "idle.example", 1, options);
        queues.get_mut(a).unwrap().delayed_count = 2;
        queues.get_mut(a).unwrap().delivered = 5;
        let reply = answer(
            &ControlRequest::Domains {
                side: QueueSide::Delayed,
                above: 0,
            },
            &queues,
            &bindings,
        );
        assert_eq!(
            reply,
            ControlReply::Domains(vec![DomainRow {
                domain: "a.example".into(),
                connections: 0,
                active: 0,
                delayed: 2,
                sent: 5
            }])
        );
    }

    #[test]
    fn answer_filters_by_domain_and_skips_empty_queues() {
        let config = Config::parse("", std::path::Path::new("t.conf")).unwrap();
        let bindings = Bindings::from_config(&config);
        let mut queues = Queues::default();
        let options = || config.delivery("default", "x");
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        queues.find_or_create(Bindings::DEFAULT, "idle.example", 1, options);
        queues.get_mut(a).unwrap().delayed_count = 2;
        let all = answer(
            &ControlRequest::Mailq {
                domains: vec![],
                bindings: vec![],
                limit: 10,
            },
            &queues,
            &bindings,
        );
        assert_eq!(all, ControlReply::Mailq(vec![row("a.example", 0, 2)]));
        let none = answer(
            &ControlRequest::Mailq {
                domains: vec!["other.example".into()],
                bindings: vec![],
                limit: 10,
            },
            &queues,
            &bindings,
        );
        assert_eq!(none, ControlReply::Mailq(vec![]));
    }

    #[test]
    fn answer_lists_a_domains_messages_and_queues_filtered_by_binding() {
        let config =
            Config::parse("binding \"mkt\" {\n}\n", std::path::Path::new("t.conf")).unwrap();
        let bindings = Bindings::from_config(&config);
        let mkt = bindings.find("mkt").unwrap();
        let mut queues = Queues::default();
        let options = || config.delivery("default", "x");
        let entry = |binding| crate::queue::MessageRef {
            id: MessageId::new(0, 1),
            body: ecelerity_spool::BodyRef {
                segment: 1,
                offset: 0,
                len: 10,
            },
            mail_from: "s@x".into(),
            rcpts: vec![(0, "r@a.example".into())],
            binding,
            domain: "a.example".into(),
            received_unix_ms: 0,
            attempts: 0,
            next_attempt_unix_ms: 0,
            connection_id: 0,
            body_8bitmime: false,
            params: None,
            event_fields: None,
        };
        let d = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let m = queues.find_or_create(mkt, "a.example", 1, options);
        queues.push_delayed(d, entry(Bindings::DEFAULT), 10);
        queues.get_mut(m).unwrap().active.push_back(entry(mkt));
        let show = |binding: Option<&str>| match answer(
            &ControlRequest::ShowQueue {
                domain: "A.example".into(),
                binding: binding.map(String::from),
                limit: 10,
                offset: 0,
            },
            &queues,
            &bindings,
        ) {
            ControlReply::Messages(rows) => rows
                .iter()
                .map(|r| (r.binding.clone(), r.delayed))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            show(None),
            [("mkt".to_string(), false), ("default".to_string(), true)]
        );
        assert_eq!(show(Some("default")), [("default".to_string(), true)]);
        let ControlReply::Domain { queues: rows, mx } = answer(
            &ControlRequest::Domain {
                domain: "a.example".into(),
            },
            &queues,
            &bindings,
        ) else {
            panic!("a Domain reply");
        };
        assert_eq!(mx, None, "the resolver's part is delivery's");
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn an_asker_times_out_when_a_shard_does_not_answer() {
        let (handle, rx) = ControlHandle::new(2);
        let shard0 = std::thread::spawn(move || {
            let envelope: Envelope = rx.recv().unwrap();
            envelope.answer(0, ControlReply::Mailq(vec![]));
            // Shard 1 never answers.
        });
        let result = handle.ask_all(
            ControlRequest::Mailq {
                domains: vec![],
                bindings: vec![],
                limit: 1,
            },
            Duration::from_millis(200),
        );
        shard0.join().unwrap();
        assert_eq!(
            result,
            Err(ControlError::Timeout {
                got: 1,
                expected: 2
            })
        );
    }
}
