//! `dns_cache stats|lookup|flush`: the renderers over every shard's
//! resolver cache (each shard has its own; the console shows them summed,
//! or the freshest answer).
//!
//! Owns: the renderers. May call: nothing with I/O. Never: the resolver
//! itself (`delivery::Outbound` asks it and fills the replies).

use std::fmt::Write as _;

use super::{ControlReply, DnsCached, DnsData, DnsKind, DnsStats};

/// `dns_cache stats`: a `DNS Cache Statistics` block in `summary`'s shape
/// (every shard summed), then one row per shard.
pub fn render_dns_stats(parts: &[ControlReply]) -> String {
    let shards: Vec<DnsStats> = parts
        .iter()
        .filter_map(|p| match p {
            ControlReply::DnsStats(s) => Some(*s),
            _ => None,
        })
        .collect();
    let mut t = DnsStats::default();
    for s in &shards {
        t.entries += s.entries;
        t.negative_entries += s.negative_entries;
        t.hits += s.hits;
        t.misses += s.misses;
        t.queries += s.queries;
        t.failures += s.failures;
    }
    let mut out = String::from("DNS Cache Statistics\n\n");
    let rows: [(&str, u64); 6] = [
        ("Cached Entries", t.entries),
        ("Negative Entries", t.negative_entries),
        ("Cache Hits", t.hits),
        ("Cache Misses", t.misses),
        ("Queries Sent", t.queries),
        ("Failed Queries", t.failures),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "{label:>32}: {value:>14}");
    }
    let _ = writeln!(
        out,
        "\nPer shard:\n{:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "shard", "entries", "negative", "hits", "misses", "queries", "failed"
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8}",
            i, s.entries, s.negative_entries, s.hits, s.misses, s.queries, s.failures
        );
    }
    out
}

/// `dns_cache lookup <name> [type]`, dig-style as Momentum prints it: a
/// `;; QUESTION SECTION:`, then the `;; ANSWER SECTION:` of the freshest
/// answer any shard holds (most seconds left), or Momentum's `Cached
/// result not found`.
pub fn render_dns_lookup(parts: &[ControlReply], name: &str, kinds: &[DnsKind]) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut out = String::new();
    for (i, kind) in kinds.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut holders = 0;
        let mut freshest: Option<&DnsCached> = None;
        for part in parts {
            let ControlReply::DnsCached(answers) = part else {
                continue;
            };
            if let Some(a) = answers.iter().find(|a| a.kind == *kind && a.name == name) {
                holders += 1;
                if freshest.is_none_or(|f| a.ttl_left_s > f.ttl_left_s) {
                    freshest = Some(a);
                }
            }
        }
        let _ = writeln!(out, ";; QUESTION SECTION:\n;{name}.\t\tIN\t{}", kind.name());
        let Some(a) = freshest else {
            let _ = writeln!(out, "\nCached result not found.");
            continue;
        };
        let _ = writeln!(out, "\n;; ANSWER SECTION:");
        match &a.answer {
            DnsData::Records(records) => {
                for r in records {
                    let _ = writeln!(out, "{name}.\t{}\tIN\t{}\t{r}", a.ttl_left_s, kind.name());
                }
            }
            DnsData::NoData => {
                let _ = writeln!(
                    out,
                    ";; no {} records (cached for {} s)",
                    kind.name(),
                    a.ttl_left_s
                );
            }
            DnsData::NxDomain => {
                let _ = writeln!(out, ";; NXDOMAIN (cached for {} s)", a.ttl_left_s);
            }
        }
        let _ = writeln!(out, ";; cached on {holders} of {} shards", parts.len());
    }
    out
}

/// `dns_cache flush`: `DNS cache flushed: N entries.`
pub fn render_dns_flushed(parts: &[ControlReply]) -> String {
    let n: u64 = parts
        .iter()
        .map(|p| match p {
            ControlReply::DnsFlushed(n) => *n,
            _ => 0,
        })
        .sum();
    format!("DNS cache flushed: {n} entries.\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_sum_every_shard() {
        let s = DnsStats {
            entries: 2,
            negative_entries: 1,
            hits: 5,
            misses: 2,
            queries: 2,
            failures: 0,
        };
        let text = render_dns_stats(&[ControlReply::DnsStats(s), ControlReply::DnsStats(s)]);
        assert!(text.starts_with("DNS Cache Statistics\n\n"));
        let value = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(value("Cached Entries:"), Some(4));
        assert_eq!(value("Cache Hits:"), Some(10));
        assert_eq!(value("Negative Entries:"), Some(2));
        assert_eq!(text.lines().filter(|l| l.starts_with("    1 ")).count(), 1);
    }

    fn cached(kind: DnsKind, ttl: u32, answer: DnsData) -> DnsCached {
        DnsCached {
            name: "one.test".into(),
            kind,
            ttl_left_s: ttl,
            answer,
        }
    }

    #[test]
    fn lookup_prints_the_freshest_answer_dig_style_or_not_found() {
        let mx = |ttl| {
            cached(
                DnsKind::Mx,
                ttl,
                DnsData::Records(vec!["10 mx.one.test.".into()]),
            )
        };
        let parts = vec![
            ControlReply::DnsCached(vec![mx(30)]),
            ControlReply::DnsCached(vec![mx(50), cached(DnsKind::A, 9, DnsData::NxDomain)]),
        ];
        let text = render_dns_lookup(&parts, "One.Test.", &[DnsKind::Mx]);
        assert_eq!(
            text,
            ";; QUESTION SECTION:\n;one.test.\t\tIN\tMX\n\n;; ANSWER SECTION:\n\
             one.test.\t50\tIN\tMX\t10 mx.one.test.\n;; cached on 2 of 2 shards\n"
        );
        let text = render_dns_lookup(&parts, "one.test", &[DnsKind::A, DnsKind::Aaaa]);
        assert!(text.contains(";; NXDOMAIN (cached for 9 s)\n"), "{text}");
        assert!(
            text.ends_with("IN\tAAAA\n\nCached result not found.\n"),
            "{text}"
        );
        assert_eq!(
            render_dns_flushed(&[ControlReply::DnsFlushed(3), ControlReply::DnsFlushed(4)]),
            "DNS cache flushed: 7 entries.\n"
        );
    }
}
