//! hyper's I/O traits over a glommio `TcpStream`, shared with the
//! connection's watchdog.
//!
//! Owns: [`Io`] (the stream behind an `Rc<RefCell<_>>`, so that the
//! watchdog can still answer 408 after dropping hyper's connection) and
//! [`Activity`] (when the connection last moved, and whether a request is
//! in progress: bytes read and no response written yet).
//! May call: glommio's stream through futures-io. Never: protocol
//! decisions (hyper parses; `http::serve_connection` decides).

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// What the watchdog looks at.
pub struct Activity {
    /// Last read or write of at least one byte.
    pub last: Cell<Instant>,
    /// When the first byte of the request being read arrived (`None`
    /// between requests, and from the first byte of a response on).
    pub request_started: Cell<Option<Instant>>,
    /// A handler is working on a request that has arrived (a REST
    /// transmission being spooled): the watchdog leaves it alone.
    pub working: Cell<bool>,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity {
            last: Cell::new(now),
            request_started: Cell::new(None),
            working: Cell::new(false),
        }
    }
}

/// A connection's stream as hyper sees it.
pub struct Io {
    pub stream: Rc<RefCell<TcpStream>>,
    pub activity: Rc<Activity>,
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = {
            // SAFETY: the bytes are initialised (zeroed) before a slice of
            // them is made, and only `n` of them are marked filled below.
            let spare = unsafe { buf.as_mut() };
            for b in spare.iter_mut() {
                *b = MaybeUninit::new(0);
            }
            let spare = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let mut stream = this.stream.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, spare) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        };
        if n > 0 {
            let now = Instant::now();
            this.activity.last.set(now);
            if this.activity.request_started.get().is_none() {
                this.activity.request_started.set(Some(now));
            }
        }
        // SAFETY: `n` bytes were written by the read above.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.stream.borrow_mut()).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.activity.last.set(Instant::now());
                this.activity.request_started.set(None);
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream.borrow_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream.borrow_mut()).poll_close(cx)
    }
}
