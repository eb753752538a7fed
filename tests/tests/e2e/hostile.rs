//! Hostile clients end to end: connection floods against the global and
//! per-address limits, slow-drip clients against the command and DATA
//! deadlines, and thousands of idle connections against memory.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ecelerity_tests::{poll_until, send_messages, ARRIVAL_TIMEOUT};

use crate::common::Mta;
use crate::raw::Raw;

/// The client address outside `relay_hosts = ("127.0.0.1/32")`.
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER_OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Per-address limit the flood test sets.
const PER_IP_LIMIT: usize = 3;
/// Global limit the flood test sets.
const SERVER_LIMIT: usize = 6;
/// Deadlines the slow-drip tests set, in seconds.
const DRIP_DEADLINE_S: u64 = 2;
/// Pause between two dripped bytes.
const DRIP_PAUSE: Duration = Duration::from_millis(400);
/// How late a deadline may fire on a loaded CI machine.
const DEADLINE_SLACK: Duration = Duration::from_secs(8);
/// Idle connections held in CI; `ECELERITY_IDLE_CONNECTIONS` sets more.
const IDLE_CONNECTIONS_DEFAULT: usize = 2000;
/// Most daemon memory one idle connection may cost (RSS growth / count).
const IDLE_CONNECTION_BYTES_MAX: u64 = 32 * 1024;

/// Goal: one address cannot take more than `max_inbound_connections_per_ip`
/// connections; the one past it gets 421 4.7.0 and is closed, other
/// addresses and relay_hosts are unaffected, and a closed connection gives
/// its place back.
#[test]
fn per_ip_limit_refuses_the_connection_past_it_with_421() {
    let mta = Mta::start_with("per-ip-limit", |c| {
        c.relay_hosts = vec!["127.0.0.1/32".into()];
        c.extra = format!("max_inbound_connections_per_ip = {PER_IP_LIMIT}\n");
    });
    let port = mta.port();
    let mut held: Vec<Raw> = (0..PER_IP_LIMIT)
        .map(|_| {
            let mut c = Raw::connect_from(OUTSIDER, port);
            assert_eq!(c.reply().expect("greeting").0, 220);
            c
        })
        .collect();
    let mut over = Raw::connect_from(OUTSIDER, port);
    let (code, text) = over.reply().expect("a 421, not silence");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.7.0"), "{text}");
    assert!(over.closed_within(Duration::from_secs(10)));

    let mut other = Raw::connect_from(OTHER_OUTSIDER, port);
    assert_eq!(
        other.reply().unwrap().0,
        220,
        "another address has its own count"
    );
    let mut relay = Raw::connect(port);
    assert_eq!(relay.reply().unwrap().0, 220, "relay_hosts are exempt");

    held.pop().unwrap().command("QUIT");
    let back = poll_until(ARRIVAL_TIMEOUT, || {
        let mut c = Raw::connect_from(OUTSIDER, port);
        (c.reply()?.0 == 220).then_some(())
    });
    assert!(
        back.is_some(),
        "the slot of a closed connection never came back"
    );
}

/// Goal: `server_max_inbound_connections` caps connections over every
/// shard; past it a connection gets 421 4.3.2.
#[test]
fn server_limit_refuses_the_connection_past_it_with_421() {
    let mta = Mta::start_with("server-limit", |c| {
        c.extra = format!("server_max_inbound_connections = {SERVER_LIMIT}\n");
    });
    let port = mta.port();
    // The readiness probe's connection may still be closing: retry until
    // exactly SERVER_LIMIT are open.
    let mut held = Vec::new();
    let filled = poll_until(ARRIVAL_TIMEOUT, || {
        while held.len() < SERVER_LIMIT {
            let mut c = Raw::connect(port);
            match c.reply() {
                Some((220, _)) => held.push(c),
                _ => return None,
            }
        }
        Some(())
    });
    assert!(
        filled.is_some(),
        "could not open {SERVER_LIMIT} connections"
    );
    let mut over = Raw::connect(port);
    let (code, text) = over.reply().expect("a 421, not silence");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.3.2"), "{text}");
    drop(held);
    let back = poll_until(ARRIVAL_TIMEOUT, || {
        let mut c = Raw::connect(port);
        (c.reply()?.0 == 220).then_some(())
    });
    assert!(
        back.is_some(),
        "connections never came back after the flood closed"
    );
}

/// Writes `bytes` one at a time until the server closes; returns the
/// replies seen and how long it took.
fn drip(client: &mut Raw, bytes: &[u8]) -> (Vec<(u16, String)>, Duration) {
    let started = Instant::now();
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut replies = Vec::new();
    for &byte in bytes.iter().cycle() {
        if client.send(&[byte]).is_err() {
            break;
        }
        thread::sleep(DRIP_PAUSE);
        if let Some(reply) = client.reply() {
            let closing = reply.0 == 421;
            replies.push(reply);
            if closing {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(DRIP_DEADLINE_S) + DEADLINE_SLACK * 2 {
            break;
        }
    }
    (replies, started.elapsed())
}

/// Goal: a client that drips a command line a byte at a time (each byte
/// well within idle_time) is cut off with 421 4.4.2 once
/// `inbound_command_timeout` has passed since our last reply.
#[test]
fn slow_drip_command_is_cut_off_by_inbound_command_timeout() {
    let mta = Mta::start_with("drip-command", |c| {
        c.extra = format!("idle_time = 60\ninbound_command_timeout = {DRIP_DEADLINE_S}\n");
    });
    let mut client = Raw::connect(mta.port());
    assert_eq!(client.reply().unwrap().0, 220);
    let (replies, took) = drip(&mut client, b"EHLO a-very-slow-client.example.test\r\n");
    let last = replies.last().cloned().unwrap_or((0, "no reply".into()));
    assert_eq!(last.0, 421, "{replies:?}");
    assert!(last.1.contains("4.4.2"), "{last:?}");
    assert!(
        took < Duration::from_secs(DRIP_DEADLINE_S) + DEADLINE_SLACK,
        "cut off only after {took:?}"
    );
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(client.closed_within(Duration::from_secs(10)));
}

/// Goal: a DATA dripped a byte at a time is cut off with 421 4.4.2 once
/// `inbound_data_timeout` has passed since the 354, and nothing of it is
/// delivered.
#[test]
fn slow_drip_data_is_cut_off_by_inbound_data_timeout() {
    let mta = Mta::start_with("drip-data", |c| {
        c.extra = format!("idle_time = 60\ninbound_data_timeout = {DRIP_DEADLINE_S}\n");
    });
    let mut client = Raw::connect(mta.port());
    assert_eq!(client.reply().unwrap().0, 220);
    assert_eq!(client.command("EHLO c.test").0, 250);
    assert_eq!(client.command("MAIL FROM:<a@c.test>").0, 250);
    assert_eq!(client.command("RCPT TO:<b@x.test>").0, 250);
    assert_eq!(client.command("DATA").0, 354);
    let (replies, took) = drip(&mut client, b"Subject: slow\r\n\r\nvery slow body\r\n");
    let last = replies.last().cloned().unwrap_or((0, "no reply".into()));
    assert_eq!(last.0, 421, "{replies:?}");
    assert!(last.1.contains("4.4.2"), "{last:?}");
    assert!(took < Duration::from_secs(DRIP_DEADLINE_S) + DEADLINE_SLACK);
    thread::sleep(Duration::from_secs(1));
    assert!(
        mta.sink.messages().is_empty(),
        "a cut-off DATA was delivered"
    );
}

/// Goal: byte-at-a-time clients do not hold a shard: with one shard and
/// twenty dripping connections, ordinary mail still flows at once.
#[test]
fn dripping_clients_do_not_hold_a_shard() {
    let mta = Mta::start_with("drip-shard", |c| {
        c.shards = 1;
    });
    let port = mta.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drippers: Vec<_> = (0..20)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut c = Raw::connect(port);
                let _ = c.reply();
                for &b in b"EHLO drip.test\r\nMAIL FROM:<a@drip.test>\r\n"
                    .iter()
                    .cycle()
                {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || c.send(&[b]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let report = send_messages(port, &["--count", "10", "--threads", "2"], ARRIVAL_TIMEOUT);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(report.accepted().len(), 10, "{}", report.stderr);
    assert!(
        took < Duration::from_secs(20),
        "10 messages took {took:?} beside the drippers"
    );
    mta.sink.wait_for_messages(10, ARRIVAL_TIMEOUT);
    for d in drippers {
        let _ = d.join();
    }
}

/// Resident set of a process in bytes, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Goal: thousands of idle connections (greeted, EHLO answered, then
/// silent) cost bounded memory each, and mail still flows beside them.
/// Method: RSS of the daemon before and after; prints bytes per idle
/// connection. `ECELERITY_IDLE_CONNECTIONS=10000` for the full figure.
#[test]
fn idle_connections_hold_bounded_memory() {
    let count: usize = std::env::var("ECELERITY_IDLE_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(IDLE_CONNECTIONS_DEFAULT);
    let mta = Mta::start_with("idle-memory", |c| {
        c.shards = 2;
        c.extra = "idle_time = 600\ninbound_command_timeout = 600\n".into();
    });
    let port = mta.port();
    let pid = mta.daemon.pid().expect("daemon pid");
    // Warm up the session path so the first connections' one-off
    // allocations are not charged to the idle ones.
    let report = send_messages(port, &["--count", "4", "--threads", "2"], ARRIVAL_TIMEOUT);
    assert_eq!(report.accepted().len(), 4, "{}", report.stderr);
    thread::sleep(Duration::from_millis(500));
    let before = rss_bytes(pid);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = Raw::connect(port);
        assert_eq!(c.reply().map(|r| r.0), Some(220), "connection {i}");
        assert_eq!(c.command("EHLO idle.test").0, 250, "connection {i}");
        held.push(c.stream);
    }
    thread::sleep(Duration::from_secs(1));
    let after = rss_bytes(pid);
    let per = after.saturating_sub(before) / count as u64;
    eprintln!(
        "e2e: {count} idle connections opened in {:?}; daemon RSS {} KiB -> {} KiB: {per} bytes per idle connection",
        started.elapsed(),
        before / 1024,
        after / 1024
    );
    let report = send_messages(port, &["--count", "4", "--threads", "2"], ARRIVAL_TIMEOUT);
    assert_eq!(
        report.accepted().len(),
        4,
        "mail beside idle connections: {}",
        report.stderr
    );
    mta.sink.wait_for_messages(8, ARRIVAL_TIMEOUT);
    assert!(
        per <= IDLE_CONNECTION_BYTES_MAX,
        "{per} bytes per idle connection (limit {IDLE_CONNECTION_BYTES_MAX})"
    );
    drop(held);
}
