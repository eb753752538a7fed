//! Opening an outbound connection to a route target: name resolution off
//! the shard's thread (getaddrinfo blocks; it runs on glommio's blocking
//! pool) and a connect bounded by `connect_timeout`.
//!
//! Owns: [`connect`]. May call: glommio's sockets and blocking pool.
//! Never: protocol decisions, queues.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use glommio::net::TcpStream;

use super::route::Target;

/// Resolves `target` (an IP literal needs no lookup) and connects within
/// `timeout`. On failure, the transient reply that says what went wrong.
pub async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let address = match target.literal() {
        Some(ip) => SocketAddr::new(ip, target.port),
        None => {
            let (host, port) = (target.host.clone(), target.port);
            let looked_up = glommio::executor()
                .spawn_blocking(move || {
                    (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|mut a| a.next())
                })
                .await;
            match looked_up {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return Err(format!(
                        "451 4.4.3 cannot resolve {}: no address",
                        target.host
                    ))
                }
                Err(e) => return Err(format!("451 4.4.3 cannot resolve {}: {e}", target.host)),
            }
        }
    };
    match TcpStream::connect_timeout(address, timeout.max(Duration::from_millis(1))).await {
        Ok(stream) => {
            // glommio leaves Nagle on; SMTP's small commands need it off.
            let _ = stream.set_nodelay(true);
            Ok((stream, address))
        }
        Err(e) => Err(format!("451 4.4.1 connection to {address} failed: {e}")),
    }
}
