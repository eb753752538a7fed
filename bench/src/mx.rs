//! The MX-routed scenario: ecelerity delivering to many domains over a few
//! MX hosts, as a sender to the Internet does, instead of to one gateway.
//! A private unbound (`ecelerity_testkit::Unbound`) serves a generated
//! `test.` zone on loopback: domain `d<k>.mx.test` has one MX,
//! `mx<k % hosts>.mx.test`, whose A record is `127.0.0.<2 + k % hosts>`;
//! one ecbench sink listens on each of those addresses on one port, which
//! is ecelerity's `remote_smtp_port`. ecelerity has no gateway: every
//! queue resolves its domain (MX, then A) through `nameservers` and opens
//! its own connections. The rows report messages/s end to end and the
//! daemon's CPU per message like the relay scenario.
//! Owns: the zone, the scenario's sink on the MX addresses, the daemon's
//! config for MX routing.
//! May call: scenario (cells, rows, directories), peers, sink, client,
//! `ecelerity_testkit::Unbound`.
//! Never: the engine crate (the daemon is measured from outside).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ecelerity_testkit::Unbound;

use crate::peers;
use crate::scenario::{fresh_dir, run_cell, spec_for, Results, RunOptions};
use crate::sink::{ReplyScript, Sink};

/// The parent of every generated recipient domain.
pub const MX_ZONE: &str = "mx.test";
/// Most MX hosts: 127.0.0.2 up to 127.0.0.201.
pub const MX_HOSTS_MAX: u32 = 200;
/// Most generated domains (the zone unbound loads).
pub const MX_DOMAINS_MAX: u64 = 100_000;
/// TTL of the generated records: longer than any run, so each shard asks
/// once per name.
const RECORD_TTL_SECONDS: u32 = 3600;
/// How long unbound may take to load the zone.
const UNBOUND_READY: Duration = Duration::from_secs(30);

/// The loopback address of MX host `index`.
fn mx_address(index: u32) -> Ipv4Addr {
    assert!(index < MX_HOSTS_MAX);
    Ipv4Addr::new(127, 0, 0, 2 + index as u8)
}

/// The zone: one MX per domain, spread round-robin over `hosts` hosts,
/// and each host's A record.
fn zone(domains: u64, hosts: u32) -> Vec<String> {
    let mut records = Vec::with_capacity(domains as usize + hosts as usize);
    for k in 0..domains {
        records.push(format!(
            "d{k}.{MX_ZONE}. {RECORD_TTL_SECONDS} IN MX 10 mx{}.{MX_ZONE}.",
            k % u64::from(hosts)
        ));
    }
    for h in 0..hosts {
        records.push(format!(
            "mx{h}.{MX_ZONE}. {RECORD_TTL_SECONDS} IN A {}",
            mx_address(h)
        ));
    }
    records
}

/// ecelerity's config for the scenario: the relay scenario's, without
/// the gateway, resolving through `nameserver`, MX hosts on `mx_port`.
fn ecelerity_mx_config(o: &RunOptions, port: u16, nameserver: &str, mx_port: u16) -> String {
    // The gateway port is a placeholder: its line is removed.
    let relay = peers::ecelerity_config(port, mx_port, &o.ecelerity());
    let gateway = format!("gateway = \"127.0.0.1:{mx_port}\"\n");
    assert!(relay.contains(&gateway), "the relay config names a gateway");
    format!(
        "{}# ecbench mx scenario: MX routing, no gateway\n\
         nameservers = ( \"{nameserver}\" )\nremote_smtp_port = {mx_port}\n",
        relay.replace(&gateway, "")
    )
}

/// Many domains over a few MX hosts: `o.mx_domains` domains, `o.mx_hosts`
/// hosts, each cell of sizes x recipients x concurrency.
pub fn mx(o: &RunOptions, results: &mut Results) -> Result<()> {
    if o.mx_hosts == 0 || o.mx_hosts > MX_HOSTS_MAX {
        bail!("--mx-hosts must lie in 1..={MX_HOSTS_MAX}");
    }
    if o.mx_domains == 0 || o.mx_domains > MX_DOMAINS_MAX {
        bail!("--mx-domains must lie in 1..={MX_DOMAINS_MAX}");
    }
    let dir = fresh_dir(o, "mx-ecelerity")?;
    let unbound = Unbound::start(
        &dir.join("unbound"),
        &zone(o.mx_domains, o.mx_hosts),
        UNBOUND_READY,
    )
    .context("unbound (the mx scenario needs the unbound package)")?;
    let addrs: Vec<SocketAddr> = (0..o.mx_hosts)
        .map(|h| SocketAddr::new(IpAddr::V4(mx_address(h)), 0))
        .collect();
    let sink =
        Sink::start_many(&addrs, ReplyScript::default()).context("sinks on the MX addresses")?;
    let port = peers::free_port();
    fs::write(
        dir.join("ecelerity.conf"),
        ecelerity_mx_config(o, port, &unbound.nameserver(), sink.addr.port()),
    )?;
    // start_ecelerity keeps a config already in the directory.
    let (mut peer, _) =
        peers::start_ecelerity(&o.paths, &dir, port, sink.addr.port(), &o.ecelerity())?;
    results.note(format!(
        "mx: {} domains d<k>.{MX_ZONE} over {} MX hosts ({}..{}:{}), unbound on {}",
        o.mx_domains,
        o.mx_hosts,
        mx_address(0),
        mx_address(o.mx_hosts - 1),
        sink.addr.port(),
        unbound.nameserver()
    ));
    let peer_name = format!("ecelerity (MX, {} domains)", o.mx_domains);
    for &size in &o.sizes {
        for &recipients in &o.recipients {
            for &sessions in &o.concurrency {
                let mut spec = spec_for(o, peer.addr(), size, recipients, sessions, "mx");
                spec.rcpt_domain = MX_ZONE.to_string();
                spec.rcpt_domains = o.mx_domains;
                let mut row = run_cell("mx", Some(&peer), &sink, &spec);
                row.peer = peer_name.clone();
                results.rows.push(row);
            }
        }
    }
    peer.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_spreads_domains_round_robin_over_the_hosts() {
        let records = zone(5, 2);
        assert_eq!(records.len(), 7);
        assert_eq!(records[0], "d0.mx.test. 3600 IN MX 10 mx0.mx.test.");
        assert_eq!(records[1], "d1.mx.test. 3600 IN MX 10 mx1.mx.test.");
        assert_eq!(records[4], "d4.mx.test. 3600 IN MX 10 mx0.mx.test.");
        assert_eq!(records[5], "mx0.mx.test. 3600 IN A 127.0.0.2");
        assert_eq!(records[6], "mx1.mx.test. 3600 IN A 127.0.0.3");
    }
}
