//! A raw SMTP client for the hostile-network tests: it can bind its source
//! address (127.0.0.2 is "outside relay_hosts" when those are
//! 127.0.0.1/32), write any bytes, and read replies until the server
//! closes. Nothing here interprets SMTP beyond splitting reply lines.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Read timeout of one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP connection to 127.0.0.1:`port` from `source`:0.
pub fn connect_from(source: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Owned from here on: dropped (closed) on every error path.
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(source, 0);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One connection; `buffer` holds bytes read past the last reply.
pub struct Raw {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw::connect_from(Ipv4Addr::LOCALHOST, port)
    }

    pub fn connect_from(source: Ipv4Addr, port: u16) -> Raw {
        let stream =
            connect_from(source, port).unwrap_or_else(|e| panic!("connect from {source}: {e}"));
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Raw {
            stream,
            buffer: Vec::new(),
        }
    }

    /// One reply: (code, lines joined with '\n'), or None at EOF, reset or
    /// timeout.
    pub fn reply(&mut self) -> Option<(u16, String)> {
        let mut text = String::new();
        loop {
            let line = self.line()?;
            let code: u16 = line.get(..3)?.parse().ok()?;
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some((code, text));
            }
            text.push('\n');
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(lf) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=lf).collect();
                let text = String::from_utf8_lossy(&line);
                return Some(text.trim_end_matches(['\r', '\n']).to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send `line` + CRLF and read the reply; panics at EOF.
    pub fn command(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("write {line}: {e}"));
        self.reply()
            .unwrap_or_else(|| panic!("connection closed after {line}"))
    }

    /// Every reply until the server closes or `timeout` passes.
    pub fn replies_until_close(&mut self, timeout: Duration) -> Vec<(u16, String)> {
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::new();
        while Instant::now() < deadline {
            match self.reply() {
                Some(reply) => replies.push(reply),
                None => break,
            }
        }
        replies
    }

    /// True when the server has closed (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        closed
    }
}
