//! Lingering close: once the last answer is written, stop writing (FIN), then read and throw
//! away whatever the client is still sending, bounded in time and bytes, before the socket
//! is closed.
//!
//! Without it, a server that refuses a request before reading its whole body (a 413 for a
//! body over the limit, say) closes a socket with unread data in it; the kernel then sends a
//! reset, which can reach the client before it read the answer, so the client sees "broken
//! pipe" or "connection reset" instead of its status. nginx calls this `lingering_close`;
//! the bounds here play its `lingering_timeout` and `lingering_time`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long to wait for more bytes from the client before closing (default 2 s).
pub const DEFAULT_LINGER_IDLE: Duration = Duration::from_secs(2);
/// The most time spent discarding after the answer (default 10 s).
pub const DEFAULT_LINGER_TIME: Duration = Duration::from_secs(10);
/// The most bytes discarded after the answer (default 32 MiB).
pub const DEFAULT_LINGER_BYTES: u64 = 32 << 20;

/// A stream whose shutdown lingers: `poll_shutdown` sends FIN, then reads and discards until
/// the client closes, goes quiet for [`DEFAULT_LINGER_IDLE`], or a bound is reached.
#[derive(Debug)]
pub struct Lingering<S> {
    inner: S,
    state: State,
}

#[derive(Debug)]
enum State {
    Open,
    Draining {
        idle: Pin<Box<Sleep>>,
        deadline: Instant,
        discarded: u64,
    },
    Closed,
}

impl<S> Lingering<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Lingering<S> {
        Lingering {
            inner,
            state: State::Open,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> Lingering<S> {
    /// Reads and discards until EOF, an error, quiet, or a bound. Ready when done.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let State::Draining {
            idle,
            deadline,
            discarded,
        } = &mut self.state
        else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 8192];
        loop {
            if Instant::now() >= *deadline || *discarded >= DEFAULT_LINGER_BYTES {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    *discarded += buf.filled().len() as u64;
                    let next = (Instant::now() + DEFAULT_LINGER_IDLE).min(*deadline);
                    idle.as_mut().reset(next);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {
                    ready!(idle.as_mut().poll(cx));
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Open => {
                    let sent = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if let Err(e) = sent {
                        this.state = State::Closed;
                        return Poll::Ready(Err(e));
                    }
                    let now = Instant::now();
                    this.state = State::Draining {
                        idle: Box::pin(tokio::time::sleep(DEFAULT_LINGER_IDLE)),
                        deadline: now + DEFAULT_LINGER_TIME,
                        discarded: 0,
                    };
                }
                State::Draining { .. } => {
                    ready!(this.poll_discard(cx));
                    this.state = State::Closed;
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// An axum listener whose connections linger on close.
#[derive(Debug)]
pub struct LingeringListener(pub tokio::net::TcpListener);

impl axum::serve::Listener for LingeringListener {
    type Io = Lingering<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (Lingering::new(stream), addr);
                }
                // Out of descriptors or a connection reset before accept: wait a little
                // instead of spinning, then go on (as axum's own listener does).
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_discards_what_the_peer_still_sends_then_returns() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut s = Lingering::new(s);
        s.write_all(b"413").await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        assert_eq!(client.await.unwrap(), b"413");
    }
}
