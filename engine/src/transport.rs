//! The byte streams SMTP runs over, inbound and outbound: any async
//! stream (plain TCP, or TLS after STARTTLS: `tls::Stream`), with timeouts from glommio timers
//! rather than socket options, so a wrapper such as a TLS stream keeps
//! them.
//!
//! Owns: the [`Transport`] bound, [`read_within`] and [`write_all_within`].
//! May call: glommio's timer, futures-lite. Never: protocol decisions.

use std::io;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a session driver needs of its connection.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Transport for T {}

/// Shortest timeout used: a zero duration would fire before any I/O.
const TIMEOUT_MS_MIN: u64 = 1;

fn at_least_min(limit: Duration) -> Duration {
    limit.max(Duration::from_millis(TIMEOUT_MS_MIN))
}

/// Reads what is there (at most `buf.len()` bytes), waiting at most
/// `limit`; a timeout is an `ErrorKind::TimedOut` error.
pub async fn read_within<S: Transport>(
    stream: &mut S,
    buf: &mut [u8],
    limit: Duration,
) -> io::Result<usize> {
    match glommio::timer::timeout(at_least_min(limit), async { Ok(stream.read(buf).await) }).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

/// Writes all of `bytes`, taking at most `limit` (a peer that does not
/// read cannot park us in a write).
pub async fn write_all_within<S: Transport>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    match glommio::timer::timeout(at_least_min(limit), async {
        // A TLS stream may hold written bytes until flushed.
        Ok(async {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        .await)
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}
