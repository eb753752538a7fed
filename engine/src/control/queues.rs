//! Queues as a whole: `domain`, `binding summary`, `suspend` / `resume`
//! and `reroute queue`.
//!
//! Owns: [`domain_queues`] and [`binding_rows`] (pure: one shard's queues
//! in, its part out) and the renderers of these commands. May call:
//! `queue` (read-only). Never: I/O, the clock (the caller passes now).

use std::fmt::Write as _;

use super::{domain_matches, BindingRow, ControlReply, DnsCached, DnsData, QueueDetail, Target};
use crate::queue::{BindingId, Bindings, Queues};

/// This shard's queues of `domain`, one per binding.
pub fn domain_queues(queues: &Queues, bindings: &Bindings, domain: &str) -> Vec<QueueDetail> {
    queues
        .iter()
        .filter(|q| domain_matches(domain, &q.key.domain))
        .map(|q| QueueDetail {
            binding_group: bindings.group(q.key.binding).to_string(),
            binding: bindings.name(q.key.binding).to_string(),
            domain: q.key.domain.to_string(),
            active: q.active.len() as u64,
            delayed: q.delayed_count as u64,
            connections: q.connections as u64,
            delivered: q.delivered,
            failed: q.failed,
            suspended: q.suspended,
            backed_off_until_unix_ms: q.not_before_unix_ms,
        })
        .collect()
}

/// One row per configured binding (`only`: that one), with this shard's
/// queues of it summed.
pub fn binding_rows(queues: &Queues, bindings: &Bindings, only: Option<&str>) -> Vec<BindingRow> {
    let mut rows: Vec<BindingRow> = bindings
        .iter()
        .map(|(id, name)| BindingRow {
            binding: name.to_string(),
            binding_group: bindings.group(id).to_string(),
            ..BindingRow::default()
        })
        .collect();
    for q in queues.iter() {
        let BindingId(index) = q.key.binding;
        let r = &mut rows[index as usize];
        r.queues += 1;
        r.suspended_queues += q.suspended as u64;
        r.active += q.active.len() as u64;
        r.delayed += q.delayed_count as u64;
        r.connections += q.connections as u64;
    }
    rows.retain(|r| only.is_none_or(|b| b == r.binding));
    rows
}

/// The state of a queue in words.
fn status(q: &QueueDetail, now_unix_ms: u64) -> String {
    if q.suspended {
        "suspended".to_string()
    } else if q.backed_off_until_unix_ms > now_unix_ms {
        let secs = (q.backed_off_until_unix_ms - now_unix_ms).div_ceil(1000);
        format!("backed off for {secs} more seconds")
    } else {
        "ready".to_string()
    }
}

/// Momentum's `domain <d>`: the MX records the resolver holds (Momentum's
/// `Domain 'd' has N MXs and a TTL of T seconds`, `[pref host TTL:t]`),
/// then per binding its queue (`Queue: Active: N  Delayed: M`), active
/// connections, deliveries, failures and status. A queue spread over
/// shards is summed.
pub fn render_domain(parts: &[ControlReply], domain: &str, now_unix_ms: u64) -> String {
    let mut queues: Vec<QueueDetail> = Vec::new();
    let mut mx: Option<&DnsCached> = None;
    for part in parts {
        let ControlReply::Domain {
            queues: part_queues,
            mx: part_mx,
        } = part
        else {
            continue;
        };
        if let Some(m) = part_mx {
            if mx.is_none_or(|seen| m.ttl_left_s > seen.ttl_left_s) {
                mx = Some(m);
            }
        }
        for q in part_queues {
            match queues.iter_mut().find(|x| x.binding == q.binding) {
                Some(x) => {
                    x.active += q.active;
                    x.delayed += q.delayed;
                    x.connections += q.connections;
                    x.delivered += q.delivered;
                    x.failed += q.failed;
                    x.suspended |= q.suspended;
                    x.backed_off_until_unix_ms =
                        x.backed_off_until_unix_ms.max(q.backed_off_until_unix_ms);
                }
                None => queues.push(q.clone()),
            }
        }
    }
    queues.sort();
    let mut out = String::new();
    match mx.map(|m| (&m.answer, m.ttl_left_s)) {
        Some((DnsData::Records(records), ttl)) => {
            let _ = writeln!(
                out,
                "Domain '{domain}' has {} MXs and a TTL of {ttl} seconds",
                records.len()
            );
            for r in records {
                let _ = writeln!(out, "  [{r} TTL:{ttl}]");
            }
        }
        Some((DnsData::NxDomain, ttl)) => {
            let _ = writeln!(
                out,
                "Domain '{domain}' does not exist (NXDOMAIN, TTL {ttl} seconds)"
            );
        }
        Some((DnsData::NoData, ttl)) => {
            let _ = writeln!(
                out,
                "Domain '{domain}' has no MX (its A/AAAA records are used; TTL {ttl} seconds)"
            );
        }
        None => {}
    }
    if queues.is_empty() {
        let _ = writeln!(out, "Domain '{domain}' has no queue.");
    }
    for q in &queues {
        let _ = writeln!(out, "Binding {}/{}:", q.binding_group, q.binding);
        let _ = writeln!(out, "  Queue: Active: {}  Delayed: {}", q.active, q.delayed);
        let _ = writeln!(out, "  Active Connections: {}", q.connections);
        let _ = writeln!(out, "  Deliveries: {}", q.delivered);
        let _ = writeln!(out, "  Failures: {}", q.failed);
        let _ = writeln!(out, "  Status: {}", status(q, now_unix_ms));
    }
    out
}

/// Momentum's `binding summary`: `Summary Statistics For Binding <b>`
/// per binding, then label: value lines (every shard summed).
pub fn render_binding_summary(parts: &[ControlReply], only: Option<&str>) -> String {
    let mut rows: Vec<BindingRow> = Vec::new();
    for part in parts {
        let ControlReply::Bindings(part_rows) = part else {
            continue;
        };
        for r in part_rows {
            match rows.iter_mut().find(|x| x.binding == r.binding) {
                Some(x) => {
                    x.queues += r.queues;
                    x.suspended_queues += r.suspended_queues;
                    x.active += r.active;
                    x.delayed += r.delayed;
                    x.connections += r.connections;
                }
                None => rows.push(r.clone()),
            }
        }
    }
    rows.sort();
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(out, "Unknown binding '{}'.", only.unwrap_or(""));
    }
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "Summary Statistics For Binding {}\n", r.binding);
        let lines: [(&str, String); 7] = [
            ("Binding Group", r.binding_group.clone()),
            ("Open Connections", r.connections.to_string()),
            ("Queues", r.queues.to_string()),
            ("Suspended Queues", r.suspended_queues.to_string()),
            ("Active Queue Size", r.active.to_string()),
            ("Delayed Queue Size", r.delayed.to_string()),
            ("Total Queue Size", (r.active + r.delayed).to_string()),
        ];
        for (label, value) in lines {
            let _ = writeln!(out, "{label:>32}: {value:>14}");
        }
    }
    out
}

/// The answer to `suspend` / `resume`: `<d> suspended.  N queues, M
/// messages held.` (or `resumed`, `released`); for a binding,
/// `binding <b> ...`.
pub fn render_suspended(parts: &[ControlReply], target: &Target, suspend: bool) -> String {
    let (mut queues, mut messages) = (0, 0);
    for part in parts {
        match part {
            ControlReply::Suspended {
                queues: q,
                messages: m,
            } => {
                queues += q;
                messages += m;
            }
            ControlReply::UnknownBinding(b) => return format!("Unknown binding '{b}'.\n"),
            _ => {}
        }
    }
    let name = match target {
        Target::Domain(d) => d.clone(),
        Target::Binding(b) => format!("binding {b}"),
    };
    let (done, held) = if suspend {
        ("suspended", "held")
    } else {
        ("resumed", "released")
    };
    format!("{name} {done}.  {queues} queues, {messages} messages {held}.\n")
}

/// Momentum's answer to `reroute queue`: `Moved N messages from 'd1' to
/// 'd2'`.
pub fn render_rerouted(parts: &[ControlReply], from: &str, to: &str) -> String {
    let n: u64 = parts
        .iter()
        .map(|p| match p {
            ControlReply::Moved(n) => *n,
            _ => 0,
        })
        .sum();
    format!("Moved {n} messages from '{from}' to '{to}'\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::control::DnsKind;

    fn detail(binding: &str, active: u64, delayed: u64) -> QueueDetail {
        QueueDetail {
            binding_group: "default".into(),
            binding: binding.into(),
            domain: "a.example".into(),
            active,
            delayed,
            connections: 1,
            delivered: 2,
            failed: 0,
            suspended: false,
            backed_off_until_unix_ms: 0,
        }
    }

    #[test]
    fn domain_sums_a_spread_queue_shows_the_cached_mx_and_the_state() {
        let mut suspended = detail("default", 0, 1);
        suspended.suspended = true;
        let mut backed_off = detail("mkt", 0, 0);
        backed_off.backed_off_until_unix_ms = 10_500;
        let mx = DnsCached {
            name: "a.example".into(),
            kind: DnsKind::Mx,
            ttl_left_s: 55,
            answer: DnsData::Records(vec!["10 mx1.a.example.".into(), "20 mx2.a.example.".into()]),
        };
        let parts = vec![
            ControlReply::Domain {
                queues: vec![detail("default", 3, 4), backed_off],
                mx: Some(mx),
            },
            ControlReply::Domain {
                queues: vec![suspended],
                mx: None,
            },
        ];
        let text = render_domain(&parts, "a.example", 1_000);
        assert_eq!(
            text,
            "Domain 'a.example' has 2 MXs and a TTL of 55 seconds\n  \
             [10 mx1.a.example. TTL:55]\n  [20 mx2.a.example. TTL:55]\n\
             Binding default/default:\n  Queue: Active: 3  Delayed: 5\n  Active Connections: 2\n  \
             Deliveries: 4\n  Failures: 0\n  Status: suspended\n\
             Binding default/mkt:\n  Queue: Active: 0  Delayed: 0\n  Active Connections: 1\n  \
             Deliveries: 2\n  Failures: 0\n  Status: backed off for 10 more seconds\n"
        );
        let none = render_domain(
            &[ControlReply::Domain {
                queues: vec![],
                mx: None,
            }],
            "b.example",
            0,
        );
        assert_eq!(none, "Domain 'b.example' has no queue.\n");
    }

    #[test]
    fn binding_rows_list_every_binding_and_sum_its_queues() {
        let config =
            Config::parse("binding \"mkt\" {\n}\n", std::path::Path::new("t.conf")).unwrap();
        let bindings = Bindings::from_config(&config);
        let mut queues = Queues::default();
        let options = || config.delivery("default", "x");
        let a = queues.find_or_create(Bindings::DEFAULT, "a.example", 1, options);
        let b = queues.find_or_create(Bindings::DEFAULT, "b.example", 1, options);
        queues.get_mut(a).unwrap().delayed_count = 2;
        queues.get_mut(b).unwrap().connections = 1;
        queues.get_mut(b).unwrap().suspended = true;
        let rows = binding_rows(&queues, &bindings, None);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (
                rows[0].binding.as_str(),
                rows[0].queues,
                rows[0].delayed,
                rows[0].connections,
                rows[0].suspended_queues
            ),
            ("default", 2, 2, 1, 1)
        );
        assert_eq!((rows[1].binding.as_str(), rows[1].queues), ("mkt", 0));
        assert_eq!(binding_rows(&queues, &bindings, Some("mkt")).len(), 1);
        assert!(binding_rows(&queues, &bindings, Some("nope")).is_empty());
    }

    #[test]
    fn binding_summary_sums_shards_in_momentums_block() {
        let row = BindingRow {
            binding: "default".into(),
            binding_group: "default".into(),
            queues: 1,
            suspended_queues: 0,
            active: 1,
            delayed: 2,
            connections: 1,
        };
        let parts = vec![
            ControlReply::Bindings(vec![row.clone()]),
            ControlReply::Bindings(vec![row]),
        ];
        let text = render_binding_summary(&parts, None);
        assert!(
            text.starts_with("Summary Statistics For Binding default\n\n"),
            "{text}"
        );
        let value = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .and_then(|l| l.rsplit(' ').next())
                .map(String::from)
        };
        assert_eq!(value("Total Queue Size:").as_deref(), Some("6"));
        assert_eq!(value("Open Connections:").as_deref(), Some("2"));
        assert_eq!(value("Queues:").as_deref(), Some("2"));
        assert_eq!(
            render_binding_summary(&[ControlReply::Bindings(vec![])], Some("x")),
            "Unknown binding 'x'.\n"
        );
    }

    #[test]
    fn suspend_resume_and_reroute_answer_with_sums() {
        let parts = [
            ControlReply::Suspended {
                queues: 1,
                messages: 3,
            },
            ControlReply::Suspended {
                queues: 1,
                messages: 0,
            },
        ];
        assert_eq!(
            render_suspended(&parts, &Target::Domain("a.example".into()), true),
            "a.example suspended.  2 queues, 3 messages held.\n"
        );
        assert_eq!(
            render_suspended(&parts, &Target::Binding("mkt".into()), false),
            "binding mkt resumed.  2 queues, 3 messages released.\n"
        );
        assert_eq!(
            render_suspended(
                &[ControlReply::UnknownBinding("x".into())],
                &Target::Binding("x".into()),
                true
            ),
            "Unknown binding 'x'.\n"
        );
        assert_eq!(
            render_rerouted(
                &[ControlReply::Moved(2), ControlReply::Moved(1)],
                "a.example",
                "b.example"
            ),
            "Moved 3 messages from 'a.example' to 'b.example'\n"
        );
    }
}
