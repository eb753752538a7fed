//! Outbound delivery on a queue owner's shard, in parts:
//!
//! - [`route`] (pure): a queue's options and DNS answers → the addresses
//!   to try, or why there are none (transient or permanent);
//! - [`pool`] (pure): admission, whether a queue may open a connection,
//!   and the back-off of a destination that failed outside a transaction;
//! - [`limits`]: what spans shards, in tables of atomics: the server's
//!   connection count, the throttles' token buckets, the memory of dead
//!   hosts;
//! - [`connect`]: the lookups through the shard's `dns` resolver and the
//!   TCP connect;
//! - `source`: a connection from a binding's `bind_address` (the socket
//!   bound before a non-blocking connect, then handed to glommio);
//! - [`driver`]: the I/O driver of one client connection over any
//!   [`Transport`](crate::transport::Transport), moving bytes between it
//!   and the pure [`ClientSession`](crate::smtp::client::ClientSession);
//! - [`disposition`] (pure): one recipient's reply → delivered, failed or
//!   retry at a time;
//! - [`settle`]: applies dispositions (mainlog, counters, the delayed
//!   queue, the report to the message's home shard);
//! - `secure`: the TLS decision per target (DANE, MTA-STS, or the
//!   queue's `tls` options);
//! - [`operator`]: the console's commands on this shard's queues and
//!   resolver (flush, fail, retry, suspend, reroute, `dns_cache`).
//!
//! This file owns [`Outbound`]: the queues this shard owns and their
//! scheduling (enqueue, waking idle connections, opening new ones,
//! promoting due entries; queues that a shared limit
//! (`server_max_outbound_connections`, `outbound_throttle_connections`)
//! kept from opening a connection are kicked again by the tick once it may
//! let them; the entries of a queue backed off by
//! [`pool::back_off`] wait in the delayed heap until its back-off ends),
//! and the spool readers bodies are read with.
//! May call: `dns`, `queue`, `mesh` (routing checks and reports), `smtp::client`,
//! `log`, `stats`, the spool's body reader. Never: protocol decisions (the
//! client session makes them), another shard's queues.

pub mod connect;
pub mod disposition;
mod driver;
pub mod limits;
mod operator;
pub mod pool;
pub mod route;
mod secure;
mod settle;
mod source;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ecelerity_spool::BodyReader;
use glommio::TaskQueueHandle;

use crate::clock::{now_unix_ms, now_unix_us};
use crate::config::DeliveryOptions;
use crate::dns::Resolver;
use crate::env::ShardEnv;
use crate::mesh::Router;
use crate::queue::{Bindings, MessageRef, QueueId, Queues};
use crate::stats::Counter;

/// Most delayed entries promoted per tick.
pub const PROMOTE_ENTRIES_MAX: usize = 100_000;

/// The outbound side of one shard.
pub struct Outbound {
    env: Rc<ShardEnv>,
    bindings: Rc<Bindings>,
    router: Rc<Router>,
    queues: RefCell<Queues>,
    /// Readers of every shard's spool folder, for bodies of queued messages.
    bodies: RefCell<Vec<BodyReader>>,
    /// Task queue of delivery connections.
    task_queue: TaskQueueHandle,
    /// This shard's DNS resolver and cache.
    resolver: Resolver,
    /// Counts connections; rotates MX hosts of equal preference.
    spread: Cell<u64>,
    /// What the operator suspended (`operator`).
    suspensions: RefCell<operator::Suspensions>,
    /// Queues a shared limit kept from opening a connection, each once,
    /// with the time (unix ms) to kick them again. At most one per queue.
    stalled: RefCell<Vec<(QueueId, u64)>>,
    /// Outbound TLS configurations, built on first use (`tls::client`).
    tls: crate::tls::client::ClientTls,
    /// The shard's Lua scripts, told every outcome when they want them
    /// (`set_scriptlets`; none until the shard is wired).
    scriptlets: RefCell<Option<Rc<crate::scriptlet::Scriptlets>>>,
    /// MTA-STS policies by domain (`tls::sts`).
    sts: crate::tls::sts::StsCache,
}

impl Outbound {
    pub fn new(
        env: Rc<ShardEnv>,
        bindings: Rc<Bindings>,
        router: Rc<Router>,
        bodies: Vec<BodyReader>,
        task_queue: TaskQueueHandle,
        resolver: Resolver,
    ) -> Outbound {
        Outbound {
            env,
            bindings,
            router,
            queues: RefCell::new(Queues::default()),
            bodies: RefCell::new(bodies),
            task_queue,
            resolver,
            spread: Cell::new(0),
            suspensions: RefCell::default(),
            stalled: RefCell::new(Vec::new()),
            tls: crate::tls::client::ClientTls::default(),
            scriptlets: RefCell::new(None),
            sts: crate::tls::sts::StsCache::default(),
        }
    }

    /// `msys.dnsLookup`: the shard's resolver and cache, with the
    /// configured `nameservers` (the system's when none).
    pub async fn dns_lookup(
        &self,
        name: &str,
        kind: crate::dns::RecordKind,
    ) -> Result<crate::dns::Answer, crate::dns::DnsError> {
        let config = self.env.config.get();
        self.resolver.lookup(config.nameservers(), name, kind).await
    }

    /// The shard's Lua scripts, told each delivery outcome they ask for.
    pub fn set_scriptlets(&self, scriptlets: Rc<crate::scriptlet::Scriptlets>) {
        *self.scriptlets.borrow_mut() = Some(scriptlets);
    }

    /// The options of queue `id`, refreshed if the configuration changed
    /// since they were resolved.
    fn options(&self, id: QueueId) -> Option<Rc<DeliveryOptions>> {
        let config = self.env.config.get();
        let generation = self.env.config.generation();
        self.queues
            .borrow_mut()
            .refresh_options(id, generation, |key| {
                config.delivery(self.bindings.name(key.binding), &key.domain)
            })
    }

    /// Puts one entry this shard owns in its queue and makes sure a
    /// connection will take it (or the delayed heap, until it is due).
    pub fn enqueue(self: &Rc<Self>, entry: MessageRef) {
        assert_eq!(
            self.router.entry_owner(&entry),
            self.env.id,
            "queue entry routed to the wrong shard"
        );
        let config = self.env.config.get();
        let generation = self.env.config.generation();
        let mut queues = self.queues.borrow_mut();
        let id = queues.find_or_create(entry.binding, &entry.domain, generation, || {
            config.delivery(self.bindings.name(entry.binding), &entry.domain)
        });
        let q = queues.get_mut(id).expect("just found");
        q.suspended = self.is_suspended(&q.key);
        let now = now_unix_ms();
        let held = pool::held_until(queues.get(id).expect("just found"), now);
        let due = entry.next_attempt_unix_ms.max(held.unwrap_or(0));
        if due > now {
            queues.push_delayed(id, entry, due);
            return;
        }
        queues.get_mut(id).unwrap().active.push_back(entry);
        drop(queues);
        self.kick(id);
    }

    /// Wakes an idle connection of queue `id`, or opens a new one when
    /// admission allows.
    fn kick(self: &Rc<Self>, id: QueueId) {
        let mut queues = self.queues.borrow_mut();
        let Some(q) = queues.get_mut(id) else {
            return;
        };
        if q.suspended {
            return;
        }
        while let Some(waiter) = q.idle.pop() {
            if waiter.try_send(()).is_ok() {
                return;
            }
        }
        let now = now_unix_ms();
        if let Some(until) = pool::held_until(q, now) {
            // Backed off: what is active waits for the back-off to end.
            let held: Vec<MessageRef> = q.active.drain(..).collect();
            for entry in held {
                queues.push_delayed(id, entry, until);
            }
            return;
        }
        if self.env.is_stopping() || !pool::may_open(q, self.env.count, now) {
            return;
        }
        if self.is_stalled(id) {
            return;
        }
        // A throttled queue whose connections wait for a token gains
        // nothing from another one until tokens are free when work comes.
        let throttle = &q.options.outbound_throttle_messages;
        if q.connections > 0 && limits::token_wait(throttle, now_unix_us()).is_some() {
            return;
        }
        let server_max = self.env.config.get().server_max_outbound_connections();
        let Some(slot) = limits::ServerSlot::take(server_max) else {
            return self.stall(id, now);
        };
        if let Err(at_us) =
            limits::take_token(&q.options.outbound_throttle_connections, now_unix_us())
        {
            return self.stall(id, at_us.div_ceil(1000));
        }
        q.connections += 1;
        drop(queues);
        self.env.stats().add(Counter::OutboundConnections, 1);
        let outbound = self.clone();
        let connection = glommio::spawn_local_into(
            async move {
                driver::run_connection(&outbound, id).await;
                drop(slot);
                outbound.env.stats().sub(Counter::OutboundConnections, 1);
                let more = match outbound.queues.borrow_mut().get_mut(id) {
                    Some(q) => {
                        q.connections -= 1;
                        !q.active.is_empty()
                    }
                    None => false,
                };
                if more {
                    outbound.kick(id);
                }
            },
            self.task_queue,
        );
        match connection {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                tracing::error!(
                    shard = self.env.id,
                    "cannot start a delivery connection: {e}"
                )
            }
        }
    }

    /// Remembers that a shared limit kept queue `id` from opening a
    /// connection until `at_unix_ms`.
    fn stall(&self, id: QueueId, at_unix_ms: u64) {
        let mut stalled = self.stalled.borrow_mut();
        match stalled.iter_mut().find(|(of, _)| *of == id) {
            Some((_, at)) => *at = (*at).min(at_unix_ms),
            None => stalled.push((id, at_unix_ms)),
        }
    }

    /// Whether queue `id` waits for a shared limit (until the tick kicks it).
    fn is_stalled(&self, id: QueueId) -> bool {
        self.stalled.borrow().iter().any(|(of, _)| *of == id)
    }

    /// Kicks the stalled queues whose time has come.
    fn kick_stalled(self: &Rc<Self>, now_unix_ms: u64) {
        let due: Vec<QueueId> = self
            .stalled
            .borrow_mut()
            .extract_if(.., |(_, at)| *at <= now_unix_ms)
            .map(|(id, _)| id)
            .collect();
        for id in due {
            self.kick(id);
        }
    }

    /// Moves due delayed entries to their active queues and kicks them,
    /// and the stalled queues whose time has come.
    pub fn promote_due(self: &Rc<Self>) {
        let now = now_unix_ms();
        self.kick_stalled(now);
        let due = self.queues.borrow_mut().pop_due(now, PROMOTE_ENTRIES_MAX);
        let mut kicked: Vec<QueueId> = Vec::new();
        {
            let mut queues = self.queues.borrow_mut();
            for (id, entry) in due {
                let Some(q) = queues.get_mut(id) else {
                    continue;
                };
                if let Some(until) = pool::held_until(q, now) {
                    queues.push_delayed(id, entry, until);
                    continue;
                }
                q.active.push_back(entry);
                if !kicked.contains(&id) {
                    kicked.push(id);
                }
            }
        }
        for id in kicked {
            self.kick(id);
        }
    }

    /// Refreshes the queue gauges the console shows.
    pub fn refresh_gauges(&self) {
        let queues = self.queues.borrow();
        let stats = self.env.stats();
        stats.set(Counter::ActiveQueue, queues.active_count() as u64);
        stats.set(Counter::DelayedQueue, queues.delayed_count() as u64);
        let domains = queues
            .iter()
            .filter(|q| !q.active.is_empty() || q.delayed_count > 0)
            .count();
        stats.set(Counter::ActiveDomains, domains as u64);
        let (dns, _, _) = self.resolver.stats();
        stats.set(Counter::DnsAQueries, dns.a_queries);
        stats.set(Counter::DnsMxQueries, dns.mx_queries);
        stats.set(Counter::DnsPending, dns.pending);
    }

    /// Forgets idle queues.
    pub fn prune(&self) {
        self.queues.borrow_mut().prune(now_unix_ms());
    }
}
