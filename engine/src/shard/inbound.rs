//! Inbound SMTP on a shard: the accept loop and the I/O driver of one
//! session. The driver moves bytes between the socket and the pure
//! [`ServerSession`], spools each message it hands over, and answers it
//! only after the group commit that covers it. It makes no protocol
//! decision of its own.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ecelerity_policy::RelayControl;
use ecelerity_spool::SpoolError;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::{now_unix_ms, Shard, ShardStats};
use crate::config::ListenerConfig;
use crate::log::{format_reception, format_rejection, Reception, RecordIds, Rejection};
use crate::queue::record::SpooledEnvelope;
use crate::queue::MessageId;
use crate::smtp::server::{Envelope, Event, ServerLimits, ServerParams, ServerSession, SpoolOutcome};

/// Bytes read from a client socket at a time.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Most inbound connections one shard serves at once; past it new
/// connections get `421 4.3.2` and are closed.
pub const INBOUND_CONNECTIONS_MAX: u64 = 20_000;
/// Pause after an accept error (EMFILE and friends) before trying again.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, config: Rc<ListenerConfig>) {
    let policy: Rc<dyn ecelerity_policy::Policy> =
        Rc::new(RelayControl { relay_hosts: config.relay_hosts.clone(), local_domains: Vec::new() });
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(shard = shard.id, "accept on {} failed: {e}", config.address);
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let stats = shard.my_stats();
        if stats.inbound_connections.load(std::sync::atomic::Ordering::Relaxed) >= INBOUND_CONNECTIONS_MAX {
            let mut s = stream;
            let _ = s.write_all(b"421 4.3.2 Too many connections, try again later\r\n").await;
            continue;
        }
        let (shard2, config2, policy2) = (shard.clone(), config.clone(), policy.clone());
        let spawned = shard.sessions.spawn(async move {
            ShardStats::add(&shard2.my_stats().inbound_connections, 1);
            ShardStats::add(&shard2.my_stats().inbound_connections_total, 1);
            if let Err(e) = serve(&shard2, stream, &config2, policy2).await {
                tracing::debug!(shard = shard2.id, "session ended: {e}");
            }
            ShardStats::sub(&shard2.my_stats().inbound_connections, 1);
        });
        match spawned {
            Ok(task) => task.detach(),
            Err(_) => return, // the gate is closed: the shard is stopping
        };
    }
}

/// What a session's connection looks like, for the logs.
struct Conn {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
}

async fn serve(
    shard: &Rc<Shard>,
    mut stream: TcpStream,
    listener: &ListenerConfig,
    policy: Rc<dyn ecelerity_policy::Policy>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let conn = Conn { id: shard.next_connection_id(), peer: stream.peer_addr()?, local: stream.local_addr()? };
    let limits = ServerLimits {
        text_line_bytes_max: listener.max_line_length_bytes as usize,
        message_bytes_max: listener.max_message_size_bytes,
        recipients_max: listener.max_recipients_per_message,
        receptions_per_connection_max: listener.max_receptions_per_connection,
        ..ServerLimits::default()
    };
    let params = ServerParams {
        hostname: shard.hostname.clone(),
        peer_ip: conn.peer.ip(),
        limits,
        version: crate::VERSION,
    };
    let mut session = ServerSession::new(params, policy);
    session.start();
    stream.set_read_timeout(Some(listener.idle_time.max(Duration::from_secs(1))))?;
    let mut output = Vec::with_capacity(1024);
    let mut input = vec![0u8; READ_BUFFER_BYTES];
    let mut stop_seen = false;
    loop {
        session.take_output(&mut output);
        if !output.is_empty() {
            log_rejections(shard, &conn, &session, &output);
            stream.write_all(&output).await?;
            output.clear();
        }
        if session.is_closed() {
            break;
        }
        if let Some(event) = session.next_event() {
            match event {
                Event::Message(envelope) => {
                    let (outcome, body) = receive(shard, &conn, &session, envelope).await;
                    session.spooled(outcome);
                    session.recycle_body(body);
                    continue;
                }
                Event::Close => {
                    session.take_output(&mut output);
                    stream.write_all(&output).await?;
                    break;
                }
            }
        }
        if !stop_seen && shard.is_stopping() {
            stop_seen = true;
            session.shutdown();
            continue;
        }
        if !session.wants_input() {
            // Nothing to read until the session drains; it only asks for
            // less input while a message waits for the spool, which the
            // event above handles, so this is a stuck session.
            tracing::warn!(shard = shard.id, "session from {} stopped asking for input; closing", conn.peer);
            break;
        }
        let read = futures_lite::future::or(
            async {
                let capacity = session.input_capacity().min(input.len());
                Some(stream.read(&mut input[..capacity]).await)
            },
            async {
                if stop_seen {
                    std::future::pending::<()>().await;
                }
                let _ = shard.stopping.acquire(1).await;
                None
            },
        )
        .await;
        match read {
            None => continue, // stopping: handled at the top of the loop
            Some(Ok(0)) => break,
            Some(Ok(n)) => {
                ShardStats::add(&shard.my_stats().bytes_received, n as u64);
                session.input(&input[..n]);
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => session.idle_timeout(),
            Some(Err(e)) => return Err(e),
        }
    }
    let _ = stream.close().await;
    Ok(())
}

/// Spools one message and routes its recipients; the reply waits for it.
async fn receive(
    shard: &Rc<Shard>,
    conn: &Conn,
    session: &ServerSession,
    mut envelope: Envelope,
) -> (SpoolOutcome, Vec<u8>) {
    let id = shard.next_message_id();
    let queue_id = id.to_string();
    let now_ms = now_unix_ms();
    let header = session.received_header(&envelope, &queue_id, (now_ms / 1000) as i64);
    let received = std::mem::take(&mut envelope.body);
    let mut body = Vec::with_capacity(header.len() + received.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&received);
    let spooled = SpooledEnvelope {
        received_unix_ms: now_ms,
        peer_ip: conn.peer.ip(),
        connection_id: conn.id,
        body_8bitmime: envelope.body_8bitmime,
        mail_from: envelope.mail_from,
        rcpts: envelope.rcpts,
    };
    let mut encoded = Vec::with_capacity(64 + spooled.rcpts.iter().map(|r| r.len() + 2).sum::<usize>());
    spooled.encode(&mut encoded);
    let body_ref = match shard.spool.append_message(id.0, &encoded, &body).await {
        Ok(r) => r,
        Err(SpoolError::StorageFull) => {
            tracing::error!(shard = shard.id, "spool full: message from {} refused with 452 4.3.1", conn.peer);
            return (SpoolOutcome::StorageFull, received);
        }
        Err(e) => {
            tracing::error!(shard = shard.id, "spool write failed: {e}: message from {} refused with 451 4.3.0", conn.peer);
            return (SpoolOutcome::TemporaryFailure, received);
        }
    };
    let stats = shard.my_stats();
    ShardStats::add(&stats.messages_received, 1);
    ShardStats::add(&stats.live_messages, 1);
    shard.live.borrow_mut().insert(id.0, spooled.rcpts.len() as u32);
    log_receptions(shard, conn, id, &spooled, body.len() as u64);
    let entries = shard.entries_for(id, body_ref, &spooled, (0..spooled.rcpts.len() as u32).map(|i| (i, 0, 0)));
    shard.route(entries).await;
    (SpoolOutcome::Queued { queue_id }, received)
}

fn log_receptions(shard: &Shard, conn: &Conn, id: MessageId, envelope: &SpooledEnvelope, size: u64) {
    let message_id = id.to_string();
    let connection_id = MessageId(conn.id).to_string();
    let ids = RecordIds {
        unix_secs: envelope.received_unix_ms / 1000,
        message_id: &message_id,
        batch_id: &message_id,
        connection_id: &connection_id,
    };
    shard.logs.mainlog(|buf| {
        for rcpt in &envelope.rcpts {
            let r = Reception {
                rcpt,
                mail_from: &envelope.mail_from,
                peer_ip: conn.peer.ip(),
                size_bytes: size,
                protocol: "esmtp",
                binding_group: "default",
                binding: "default",
            };
            format_reception(buf, &ids, &r);
        }
    });
}

/// Writes a rejectlog line for each final 4xx/5xx reply line the session
/// is about to send (the replies are the session's decisions; this only
/// records them).
fn log_rejections(shard: &Shard, conn: &Conn, session: &ServerSession, output: &[u8]) {
    for line in output.split(|&b| b == b'\n') {
        if line.len() < 4 || !(line[0] == b'4' || line[0] == b'5') || line[3] != b' ' {
            continue;
        }
        let Ok(code) = std::str::from_utf8(&line[..3]).unwrap_or("0").parse::<u16>() else { continue };
        let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        ShardStats::add(&shard.my_stats().rejections, 1);
        let (remote, local, connection_id) = (conn.peer.to_string(), conn.local.to_string(), MessageId(conn.id).to_string());
        shard.logs.rejectlog(|buf| {
            format_rejection(
                buf,
                now_unix_ms() / 1000,
                &Rejection {
                    remote: &remote,
                    local: &local,
                    connection_id: &connection_id,
                    phase: session.phase_name(),
                    code,
                    ehlo: session.helo(),
                    mail_from: session.mail_from(),
                    text: &text,
                },
            )
        });
    }
}
