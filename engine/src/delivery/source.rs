//! Outbound TCP connections from a chosen source address: a binding's
//! `bind_address`. Written here because glommio 0.9's
//! `TcpStream::connect` makes and connects its own socket with no way to
//! bind it first. So the socket is made with libc (non-blocking), bound,
//! and connected without blocking (`EINPROGRESS`); glommio then owns it,
//! and a zero-length write learns how the connect ended: it waits for
//! POLLOUT through io_uring like any write, and the kernel answers a send
//! on a socket still connecting with `EAGAIN`, on a failed one with the
//! connect's error, on a connected one with 0.
//!
//! None of the syscalls made on the shard's thread here blocks: `socket`,
//! `setsockopt`, `bind` and a non-blocking `connect`.
//!
//! Owns: [`connect_from`]. May call: libc, glommio's `TcpStream`, glommio
//! timers. Never: routing or protocol decisions, queues.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

/// Why a connection from a source address failed.
#[derive(Debug)]
pub enum SourceError {
    /// The source address could not be bound: not an address of this
    /// host, or of the other family than the destination. The binding's
    /// fault, not the destination's.
    Bind(io::Error),
    /// The connect itself failed or timed out.
    Connect(io::Error),
}

/// Connects to `destination` from `source` (the kernel picks the port)
/// within `timeout`.
pub async fn connect_from(
    source: IpAddr,
    destination: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, SourceError> {
    let socket = bound_socket(source, destination.is_ipv6()).map_err(SourceError::Bind)?;
    let connected = start_connect(&socket, destination).map_err(SourceError::Connect)?;
    // SAFETY: the descriptor is a TCP socket this function made and owns;
    // `into_raw_fd` gives that ownership to the stream, which closes it.
    let mut stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    if !connected {
        wait_connected(&mut stream, timeout)
            .await
            .map_err(SourceError::Connect)?;
    }
    Ok(stream)
}

/// A non-blocking TCP socket of `destination`'s family bound to `source`.
fn bound_socket(source: IpAddr, destination_ipv6: bool) -> io::Result<OwnedFd> {
    if source.is_ipv6() != destination_ipv6 {
        let families = if destination_ipv6 {
            "an IPv4 source for an IPv6 destination"
        } else {
            "an IPv6 source for an IPv4 destination"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, families));
    }
    let family = if destination_ipv6 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(family, kind, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // Let connect pick the port, so one source address is not limited to
    // one port per connection whatever the destination (Linux 4.2+; an
    // older kernel just binds the port now).
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let (address, length) = raw_address(SocketAddr::new(source, 0));
    // SAFETY: `address` holds a valid sockaddr of `length` bytes.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            &address as *const libc::sockaddr_storage as *const libc::sockaddr,
            length,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Starts a non-blocking connect: `true` if it completed at once, `false`
/// if it is in progress.
fn start_connect(socket: &OwnedFd, destination: SocketAddr) -> io::Result<bool> {
    let (address, length) = raw_address(destination);
    // SAFETY: `address` holds a valid sockaddr of `length` bytes.
    let result = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            &address as *const libc::sockaddr_storage as *const libc::sockaddr,
            length,
        )
    };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINPROGRESS) => Ok(false),
        _ => Err(error),
    }
}

/// Waits until the connect of `stream` ends, at most `timeout`.
async fn wait_connected(stream: &mut TcpStream, timeout: Duration) -> io::Result<()> {
    let limit = timeout.max(Duration::from_millis(1));
    let written = glommio::timer::timeout(limit, async { Ok(stream.write(&[]).await) }).await;
    match written {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => unreachable!("a zero-length write wrote {n} bytes"),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
    }
}

/// `address` as a sockaddr_in or sockaddr_in6, and its length.
fn raw_address(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                // The octets in memory order are network order.
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_carry_family_port_and_address_in_network_order() {
        let (storage, length) = raw_address("127.0.0.5:2525".parse().unwrap());
        assert_eq!(length as usize, size_of::<libc::sockaddr_in>());
        // SAFETY: written as a sockaddr_in above.
        let sin = unsafe { *(&storage as *const _ as *const libc::sockaddr_in) };
        assert_eq!(sin.sin_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(u16::from_be(sin.sin_port), 2525);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 5]);
        let (storage, length) = raw_address("[::1]:25".parse().unwrap());
        assert_eq!(length as usize, size_of::<libc::sockaddr_in6>());
        // SAFETY: written as a sockaddr_in6 above.
        let sin6 = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
        assert_eq!(sin6.sin6_family, libc::AF_INET6 as libc::sa_family_t);
        assert_eq!(u16::from_be(sin6.sin6_port), 25);
        assert_eq!(sin6.sin6_addr.s6_addr[15], 1);
    }

    /// Goal: the socket takes the source address, or says why not.
    /// Method: bind 127.0.0.5 (all of 127/8 is this host's on Linux), an
    /// address that is not this host's, and a family mismatch.
    #[test]
    fn sockets_bind_their_source_or_fail_with_the_reason() {
        let socket = bound_socket("127.0.0.5".parse().unwrap(), false).unwrap();
        let mut address: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut length = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `address` has room for `length` bytes.
        let named = unsafe {
            libc::getsockname(
                socket.as_raw_fd(),
                &mut address as *mut _ as *mut libc::sockaddr,
                &mut length,
            )
        };
        assert_eq!(named, 0);
        assert_eq!(address.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 5]);
        let foreign = bound_socket("192.0.2.99".parse().unwrap(), false).unwrap_err();
        assert_eq!(
            foreign.raw_os_error(),
            Some(libc::EADDRNOTAVAIL),
            "{foreign}"
        );
        let mixed = bound_socket("127.0.0.5".parse().unwrap(), true).unwrap_err();
        assert_eq!(mixed.kind(), io::ErrorKind::InvalidInput);
    }
}
