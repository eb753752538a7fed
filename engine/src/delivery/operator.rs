//! The operator's commands on this shard's queues and resolver: this
//! shard's part of every control request (`control` renders the sum).
//!
//! Owns: [`Suspensions`] (what the operator suspended; every shard keeps
//! the same list, since `suspend` reaches every shard) and the queue
//! changes behind `flush domain`, `fail domain`, `message retry|fail`,
//! `suspend` / `resume` and `reroute queue`; the read-only requests go to
//! the pure `control::answer`.
//! May call: the queues (through [`Outbound`]), `settle` (failures),
//! `mesh` (rerouted entries go to their new owner), `dns` (the cache).
//! Never: I/O of its own; a message's path (finding a message or a
//! domain's delayed entries rebuilds the delayed heap: fine for an
//! operator's command, never per message).
//!
//! An entry inside a connection attempt at that moment is neither found
//! nor changed by these commands (ask again once the attempt settles).

use std::collections::VecDeque;
use std::rc::Rc;

use super::{settle, Outbound};
use crate::control::{
    self, ControlReply, ControlRequest, DnsCacheRequest, DnsCached, DnsData, DnsKind, DnsStats,
    MessageAction, Target,
};
use crate::dns::{Answer, RecordKind};
use crate::queue::{BindingId, MessageId, MessageRef, QueueId, QueueKey};

/// Most domains and bindings suspended at once on a shard.
pub const SUSPENSIONS_MAX: usize = 10_000;
/// Most connections `resume` opens at once per queue (more follow as
/// these finish, as for any queue).
const RESUME_KICKS_MAX: usize = 64;

/// What the operator suspended. Queues created later (a domain's first
/// message after `suspend domain`) are suspended too. Kept in memory:
/// a restart resumes everything.
#[derive(Debug, Default)]
pub struct Suspensions {
    /// Lower case. At most `SUSPENSIONS_MAX`.
    domains: Vec<Box<str>>,
    bindings: Vec<BindingId>,
}

/// The list is at `SUSPENSIONS_MAX`.
#[derive(Debug, PartialEq, Eq)]
pub struct SuspensionsFull;

impl Suspensions {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.bindings.is_empty()
    }

    /// Whether the queue of `key` is suspended.
    pub fn covers(&self, key: &QueueKey) -> bool {
        self.bindings.contains(&key.binding)
            || self
                .domains
                .iter()
                .any(|d| control::domain_matches(d, &key.domain))
    }

    /// Suspends (`on`) or resumes a domain (`binding` `None`) or a binding.
    pub fn set(
        &mut self,
        domain: Option<&str>,
        binding: Option<BindingId>,
        on: bool,
    ) -> Result<(), SuspensionsFull> {
        if let Some(d) = domain {
            self.domains.retain(|x| !control::domain_matches(x, d));
            if on {
                if self.domains.len() >= SUSPENSIONS_MAX {
                    return Err(SuspensionsFull);
                }
                self.domains.push(d.to_ascii_lowercase().into());
            }
        }
        if let Some(b) = binding {
            self.bindings.retain(|x| *x != b);
            if on {
                self.bindings.push(b);
            }
        }
        Ok(())
    }
}

impl Outbound {
    /// This shard's part of a control request; the ones that change queues
    /// or read the resolver are carried out here.
    pub fn answer(self: &Rc<Self>, request: &ControlRequest) -> ControlReply {
        match request {
            ControlRequest::Flush { domain } => {
                ControlReply::Flushed(self.flush(domain.as_deref()))
            }
            ControlRequest::Fail { domain, quiet } => {
                ControlReply::Failed(self.fail_domain(domain, *quiet))
            }
            ControlRequest::Domain { domain } => ControlReply::Domain {
                queues: control::domain_queues(&self.queues.borrow(), &self.bindings, domain),
                mx: self.cached(domain, DnsKind::Mx),
            },
            ControlRequest::Message {
                id,
                action: MessageAction::Retry,
            } => ControlReply::Requeued(self.retry_message(*id)),
            ControlRequest::Message {
                id,
                action: MessageAction::Fail { quiet },
            } => ControlReply::Failed(self.fail_message(*id, *quiet)),
            ControlRequest::Suspend { target, suspend } => self.suspend(target, *suspend),
            ControlRequest::Reroute { from, to } => ControlReply::Moved(self.reroute(from, to)),
            ControlRequest::DnsCache(request) => self.dns_cache(request),
            ControlRequest::Status => {
                let reply = control::answer(request, &self.queues.borrow(), &self.bindings);
                let ControlReply::Status(mut status) = reply else {
                    unreachable!("status answers with a status")
                };
                let latency = self.env.latency.borrow();
                status.rates = latency.rates();
                status.accept = latency.accept_summary();
                status.delivery = latency.delivery_summary();
                ControlReply::Status(status)
            }
            _ => control::answer(request, &self.queues.borrow(), &self.bindings),
        }
    }

    /// Makes every delayed entry of `domain` (every binding; `None`: every
    /// domain) due now: the queues' back-offs end, the entries move to
    /// their active queues and a connection is kicked. Returns how many
    /// entries moved.
    fn flush(self: &Rc<Self>, domain: Option<&str>) -> u64 {
        let (ids, moved) = {
            let mut queues = self.queues.borrow_mut();
            let ids =
                queues.ids_where(|k| domain.is_none_or(|d| control::domain_matches(d, &k.domain)));
            let taken = queues.take_delayed(&ids);
            (ids, self.activate(&mut queues, taken))
        };
        for id in ids {
            self.kick(id);
        }
        moved
    }

    /// Puts `taken` delayed entries in their active queues and ends those
    /// queues' back-offs; returns how many moved.
    fn activate(
        &self,
        queues: &mut crate::queue::Queues,
        taken: Vec<(QueueId, MessageRef)>,
    ) -> u64 {
        let moved = taken.len() as u64;
        for (id, entry) in taken {
            if let Some(q) = queues.get_mut(id) {
                q.not_before_unix_ms = 0;
                q.active.push_back(entry);
            }
        }
        moved
    }

    /// Fails every queued entry of `domain` (active and delayed, every
    /// binding) with [`control::OPERATOR_FAILURE_REPLY`] through the
    /// normal settle path (P lines, bouncelog, a DSN unless `quiet`).
    /// Returns how many entries failed.
    fn fail_domain(self: &Rc<Self>, domain: &str, quiet: bool) -> u64 {
        let mut entries = {
            let mut queues = self.queues.borrow_mut();
            let ids = queues.ids_where(|k| control::domain_matches(domain, &k.domain));
            let mut entries = queues.take_delayed(&ids);
            for id in ids {
                if let Some(q) = queues.get_mut(id) {
                    entries.extend(q.active.drain(..).map(|e| (id, e)));
                }
            }
            entries
        };
        let failed = entries.len() as u64;
        self.fail_taken(&mut entries, quiet);
        failed
    }

    /// Fails every queued recipient of message `id` on this shard, as
    /// `fail domain` does; returns how many recipients failed.
    fn fail_message(self: &Rc<Self>, id: MessageId, quiet: bool) -> u64 {
        let mut entries = {
            let mut queues = self.queues.borrow_mut();
            let mut entries = queues.take_delayed_where(|_, e| e.id == id);
            let holding = queues.ids_where(|_| true);
            for qid in holding {
                let Some(q) = queues.get_mut(qid) else {
                    continue;
                };
                if !q.active.iter().any(|e| e.id == id) {
                    continue;
                }
                let (mine, kept): (VecDeque<_>, VecDeque<_>) =
                    q.active.drain(..).partition(|e| e.id == id);
                q.active = kept;
                entries.extend(mine.into_iter().map(|e| (qid, e)));
            }
            entries
        };
        let failed = entries.iter().map(|(_, e)| e.rcpts.len() as u64).sum();
        self.fail_taken(&mut entries, quiet);
        failed
    }

    /// Settles `entries` (taken from their queues) as failed by the
    /// operator, one queue at a time with its own options.
    fn fail_taken(self: &Rc<Self>, entries: &mut Vec<(QueueId, MessageRef)>, quiet: bool) {
        while let Some((id, _)) = entries.first() {
            let id = *id;
            let mine: Vec<MessageRef> = entries
                .extract_if(.., |(of, _)| *of == id)
                .map(|(_, e)| e)
                .collect();
            assert!(!mine.is_empty(), "the first entry is of queue {id:?}");
            // The entries were taken from this queue in this same call, and
            // only the tick prunes queues: it is still there.
            let options = self
                .options(id)
                .expect("a queue whose entries were just taken exists");
            let options = if quiet {
                let mut o = (*options).clone();
                o.generate_bounces = false;
                Rc::new(o)
            } else {
                options
            };
            settle::fail_entries(self, id, &options, mine, control::OPERATOR_FAILURE_REPLY);
        }
    }

    /// Makes every queued part of message `id` due now (Momentum's
    /// `message retry`); returns how many entries were found (those
    /// already active count: they are due).
    fn retry_message(self: &Rc<Self>, id: MessageId) -> u64 {
        let (kicked, found) = {
            let mut queues = self.queues.borrow_mut();
            let active = queues
                .iter()
                .map(|q| q.active.iter().filter(|e| e.id == id).count() as u64)
                .sum::<u64>();
            let taken = queues.take_delayed_where(|_, e| e.id == id);
            let mut kicked: Vec<QueueId> = taken.iter().map(|(q, _)| *q).collect();
            kicked.dedup();
            let moved = self.activate(&mut queues, taken);
            (kicked, active + moved)
        };
        for q in kicked {
            self.kick(q);
        }
        found
    }

    /// Suspends or resumes the queues of `target`, those there are now and
    /// those created later; a suspended queue's idle connections close.
    fn suspend(self: &Rc<Self>, target: &Target, on: bool) -> ControlReply {
        let (domain, binding) = match target {
            Target::Domain(d) => (Some(d.as_str()), None),
            Target::Binding(name) => match self.bindings.find(name) {
                Some(b) => (None, Some(b)),
                None => return ControlReply::UnknownBinding(name.clone()),
            },
        };
        if self
            .suspensions
            .borrow_mut()
            .set(domain, binding, on)
            .is_err()
        {
            tracing::warn!(
                shard = self.env.id,
                "{SUSPENSIONS_MAX} domains suspended: resume some before suspending more"
            );
        }
        let (changed, messages) = {
            let suspensions = self.suspensions.borrow();
            let mut queues = self.queues.borrow_mut();
            let ids = queues.ids_where(|k| {
                domain.is_none_or(|d| control::domain_matches(d, &k.domain))
                    && binding.is_none_or(|b| b == k.binding)
            });
            let mut changed = Vec::new();
            let mut messages = 0;
            for id in ids {
                let q = queues.get_mut(id).expect("just listed");
                let now = suspensions.covers(&q.key);
                if q.suspended == now {
                    continue;
                }
                q.suspended = now;
                // Idle connections wake with nothing and close.
                q.idle.clear();
                messages += (q.active.len() + q.delayed_count) as u64;
                changed.push(id);
            }
            (changed, messages)
        };
        if !on {
            for id in &changed {
                self.kick_resumed(*id);
            }
        }
        ControlReply::Suspended {
            queues: changed.len() as u64,
            messages,
        }
    }

    /// Opens what connections a resumed queue may have.
    fn kick_resumed(self: &Rc<Self>, id: QueueId) {
        let active = match self.queues.borrow().get(id) {
            Some(q) => q.active.len(),
            None => return,
        };
        for _ in 0..active.min(RESUME_KICKS_MAX) {
            self.kick(id);
        }
    }

    /// Whether a queue of `key` is suspended now (for a new queue).
    pub(super) fn is_suspended(&self, key: &QueueKey) -> bool {
        let suspensions = self.suspensions.borrow();
        !suspensions.is_empty() && suspensions.covers(key)
    }

    /// Moves every queued entry of `from` (active and delayed, every
    /// binding) to the queue of `to` in the same binding, due now: it is
    /// delivered through `to`'s route (gateway or MX), its recipients
    /// unchanged. The owner of the new queue may be another shard; the
    /// move is in memory only (after a restart the spool puts the
    /// entries back under `from`). Returns how many entries moved.
    fn reroute(self: &Rc<Self>, from: &str, to: &str) -> u64 {
        let taken = {
            let mut queues = self.queues.borrow_mut();
            let ids = queues.ids_where(|k| control::domain_matches(from, &k.domain));
            let mut taken = queues.take_delayed(&ids);
            for id in ids {
                if let Some(q) = queues.get_mut(id) {
                    taken.extend(q.active.drain(..).map(|e| (id, e)));
                }
            }
            taken
        };
        let to: Box<str> = to.to_ascii_lowercase().into();
        let moved: Vec<MessageRef> = taken
            .into_iter()
            .map(|(_, mut e)| {
                e.domain = to.clone();
                e.next_attempt_unix_ms = 0;
                e
            })
            .collect();
        let n = moved.len() as u64;
        if n > 0 {
            let router = self.router.clone();
            glommio::spawn_local(async move { router.route(moved).await }).detach();
        }
        n
    }

    /// `dns_cache stats|lookup|flush` on this shard's resolver.
    fn dns_cache(&self, request: &DnsCacheRequest) -> ControlReply {
        match request {
            DnsCacheRequest::Stats => {
                let (s, entries, negative) = self.resolver.stats();
                ControlReply::DnsStats(DnsStats {
                    entries: entries as u64,
                    negative_entries: negative as u64,
                    hits: s.hits,
                    misses: s.misses,
                    queries: s.queries,
                    failures: s.failures,
                })
            }
            DnsCacheRequest::Lookup { name, kinds } => ControlReply::DnsCached(
                kinds.iter().filter_map(|k| self.cached(name, *k)).collect(),
            ),
            DnsCacheRequest::Flush => ControlReply::DnsFlushed(self.resolver.flush() as u64),
        }
    }

    /// What this shard's resolver has cached for `name` and `kind`.
    fn cached(&self, name: &str, kind: DnsKind) -> Option<DnsCached> {
        let record_kind = match kind {
            DnsKind::Mx => RecordKind::Mx,
            DnsKind::A => RecordKind::A,
            DnsKind::Aaaa => RecordKind::Aaaa,
            DnsKind::Tlsa => RecordKind::Tlsa,
            DnsKind::Txt => RecordKind::Txt,
        };
        let (answer, ttl_left_s) = self.resolver.cached_answer(name, record_kind)?;
        Some(DnsCached {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            kind,
            ttl_left_s,
            answer: dns_data(&answer),
        })
    }
}

/// An answer in zone-file form.
fn dns_data(answer: &Answer) -> DnsData {
    let fqdn = |host: &str| {
        if host == "." {
            ".".to_string()
        } else {
            format!("{host}.")
        }
    };
    match answer {
        Answer::Mx(records) => DnsData::Records(
            records
                .iter()
                .map(|mx| format!("{} {}", mx.preference, fqdn(&mx.exchange)))
                .collect(),
        ),
        Answer::Addresses(ips) => DnsData::Records(ips.iter().map(|ip| ip.to_string()).collect()),
        Answer::NoData => DnsData::NoData,
        Answer::NxDomain => DnsData::NxDomain,
        Answer::Tlsa(records) => DnsData::Records(
            records
                .iter()
                .map(|t| {
                    let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
                    format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
                })
                .collect(),
        ),
        Answer::Txt(texts) => DnsData::Records(texts.iter().map(|t| format!("\"{t}\"")).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Mx;

    fn key(binding: u16, domain: &str) -> QueueKey {
        QueueKey {
            binding: BindingId(binding),
            domain: domain.into(),
        }
    }

    #[test]
    fn suspensions_cover_a_domain_in_every_binding_or_every_queue_of_a_binding() {
        let mut s = Suspensions::default();
        assert!(s.is_empty());
        s.set(Some("A.example"), None, true).unwrap();
        assert!(s.covers(&key(0, "a.example")));
        assert!(s.covers(&key(3, "a.example")));
        assert!(!s.covers(&key(0, "b.example")));
        s.set(None, Some(BindingId(2)), true).unwrap();
        assert!(s.covers(&key(2, "b.example")));
        s.set(Some("a.example"), None, true).unwrap();
        s.set(Some("a.example"), None, false).unwrap();
        assert!(
            !s.covers(&key(0, "a.example")),
            "one resume undoes repeated suspends"
        );
        assert!(
            s.covers(&key(2, "a.example")),
            "the binding is still suspended"
        );
        s.set(None, Some(BindingId(2)), false).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn cached_answers_read_in_zone_file_form() {
        let mx = Answer::Mx(vec![
            Mx {
                preference: 10,
                exchange: "mx.one.test".into(),
            },
            Mx {
                preference: 0,
                exchange: ".".into(),
            },
        ]);
        assert_eq!(
            dns_data(&mx),
            DnsData::Records(vec!["10 mx.one.test.".into(), "0 .".into()])
        );
        let a = Answer::Addresses(vec!["127.0.0.2".parse().unwrap()]);
        assert_eq!(dns_data(&a), DnsData::Records(vec!["127.0.0.2".into()]));
        assert_eq!(dns_data(&Answer::NxDomain), DnsData::NxDomain);
    }
}
