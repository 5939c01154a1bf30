//! Graceful shutdown with a deadline. When the shutdown future resolves:
//! health goes NOT_SERVING (and `/readyz` 503) first; calls are still
//! accepted for `shutdown_delay_ms` (load balancers stop sending); health
//! watchers are let go; the listener closes and every connection is asked
//! to finish (HTTP/2 GOAWAY: in-flight calls complete, no new ones start).
//! Whatever is still open `shutdown_grace_seconds` after the signal is
//! closed by force: each accepted connection's socket is wrapped so that
//! it can be failed from outside, which ends hyper's connection task and
//! drops the calls on it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that can be closed by force; it holds one of
/// the daemon's connection slots while it lives.
pub struct Conn {
    io: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Conn {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.killed.as_mut().poll(cx).is_ready() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "shutdown grace period over",
            ))
        } else {
            Ok(())
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The force switch of one serve() call, and its connection slots.
pub struct Drain {
    kill: CancellationToken,
    grace: Duration,
    /// `limits.max_connections` slots (`None`: no cap).
    slots: Option<Arc<Semaphore>>,
    max: usize,
    daemon: &'static str,
}

impl Drain {
    pub fn new(shell: &crate::Shell) -> Self {
        let max = shell.limits.max_connections;
        Drain {
            kill: CancellationToken::new(),
            grace: Duration::from_secs(shell.shutdown_grace_seconds),
            slots: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            max,
            daemon: shell.name,
        }
    }

    /// Wraps each accepted connection so that it can be closed by force.
    /// Beyond `limits.max_connections` open at once, a new connection is
    /// reset as soon as it is accepted (the client sees UNAVAILABLE) and
    /// logged, naming the key; existing connections are not affected.
    pub fn incoming<S>(&self, incoming: S) -> impl Stream<Item = io::Result<Conn>>
    where
        S: Stream<Item = io::Result<TcpStream>>,
    {
        let kill = self.kill.clone();
        let slots = self.slots.clone();
        let (daemon, max) = (self.daemon, self.max);
        let mut refused = 0u64;
        incoming.filter_map(move |r| {
            let io = match r {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            let slot = match &slots {
                None => None,
                Some(s) => match s.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        // Log the first refusal of a burst and every 1000th.
                        if refused.is_multiple_of(1000) {
                            tracing::warn!(
                                daemon,
                                peer = ?io.peer_addr().ok(),
                                refused = refused + 1,
                                "connection refused: {max} connections are open, the {daemon}.limits.max_connections limit"
                            );
                        }
                        refused += 1;
                        // A reset, not a FIN: the caller fails at once,
                        // as UNAVAILABLE, and no socket lingers here.
                        let _ = io.set_zero_linger();
                        return None;
                    }
                },
            };
            if slot.is_some() && refused > 0 {
                refused = 0;
            }
            Some(Ok(Conn {
                io,
                killed: Box::pin(kill.clone().cancelled_owned()),
                _slot: slot,
            }))
        })
    }

    /// Runs `server` (tonic's graceful serve) to the end; `began` says when
    /// the shutdown signal came. Connections still open `grace` after it
    /// are closed by force.
    pub async fn run<E>(
        self,
        server: impl Future<Output = Result<(), E>>,
        began: impl Future<Output = Instant>,
    ) -> Result<(), E> {
        tokio::pin!(server);
        tokio::pin!(began);
        let began = tokio::select! {
            r = &mut server => return r,
            t = &mut began => t,
        };
        match tokio::time::timeout_at(began + self.grace, &mut server).await {
            Ok(r) => {
                tracing::info!(
                    after_ms = began.elapsed().as_millis() as u64,
                    "every call finished; stopped"
                );
                r
            }
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.grace.as_secs(),
                    "shutdown grace period over: closing the calls still open"
                );
                self.kill.cancel();
                match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::error!("connections did not close 5 s after being forced");
                        Ok(())
                    }
                }
            }
        }
    }
}
