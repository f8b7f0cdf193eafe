//! The HTTP/1.1 server loop: hyper serving the router, as `axum::serve` does, with what it leaves
//! out. `axum::serve` gives hyper no timer, so hyper's header-read timeout never runs, and it
//! accepts connections without bound: a client that opens connections and sends nothing (or a
//! header a byte at a time) held each open for good, until the process ran out of file
//! descriptors and the store could open no file or connection either. Nor has hyper a write
//! timeout: a client that stops reading its answers held its connection for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;

/// How the server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this, counted from when
    /// the connection waits for it: an idle keep-alive connection is closed then too, so it
    /// must be longer than the idle timeout of any proxy in front (60 s for AWS's load
    /// balancers and nginx's upstream connections), or the proxy may send a request down a
    /// connection as it closes.
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this, once its head has (see
    /// [`crate::extract::read_body`]): 408 otherwise.
    pub body_timeout: Duration,
    /// Connections open at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// A write to a client must make progress within this: a client that stops reading its
    /// answers (a full socket buffer) is cut off then, instead of holding its connection, and
    /// a shutdown waiting for it, for good. A slow reader that takes some bytes each time
    /// keeps its connection, however long the answer.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            // nginx's `send_timeout` is 60 s.
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a request's body may take to arrive, as the server was told (a request
/// extension; [`Limits::body_timeout`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Descriptors kept for the store's files and connections, the logs and the rest, beside the
/// HTTP connections.
const DESCRIPTORS_KEPT: u64 = 256;

/// Raises the process's limit of open files to its hard limit (Linux starts services at 1,024
/// unless told otherwise), and returns `wanted` connections or, if the limit leaves fewer, as
/// many as it leaves beside [`DESCRIPTORS_KEPT`]: past the limit accepts fail, and with them
/// the store's own opens.
pub fn connections_within_descriptors(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; HTTP connections are not fitted to it");
            return wanted;
        }
    };
    let fitted = fitted(wanted, limit);
    if fitted < wanted {
        tracing::warn!(
            wanted,
            open_files_limit = limit,
            connections = fitted,
            "the open-files limit leaves room for fewer HTTP connections; raise it (ulimit -n, LimitNOFILE=) for more"
        );
    }
    fitted
}

/// `wanted` connections, or fewer if `limit` open files leave less room beside
/// [`DESCRIPTORS_KEPT`]; one at least.
fn fitted(wanted: usize, limit: u64) -> usize {
    let room = usize::try_from(limit.saturating_sub(DESCRIPTORS_KEPT)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// the open connections to finish their requests (each closes once its response is sent).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let body_timeout = BodyTimeout(limits.body_timeout);
        let service =
            TowerToHyperService::new(app.clone().map_request(move |req: Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(body_timeout);
                req
            }));
        let stream = WriteDeadline::new(stream, limits.write_timeout);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose writes must make progress: a write, flush or shutdown left pending for
/// the timeout (the client's receive window closed) fails with `TimedOut`, and hyper drops
/// the connection. Each write that moves bytes starts the clock again.
struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first waits; cleared when one completes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// What a write's poll gives, with the deadline kept: pending past it is an error.
    fn within<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.within(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.within(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.within(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.within(cx, polled)
    }
}

/// A failed accept: a connection reset before it was taken is the client's business; any
/// other error (out of file descriptors) is logged and waited out, as hyper 0.14 did.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::fitted;

    #[test]
    fn connections_fit_under_the_open_files_limit() {
        assert_eq!(fitted(4096, 1024), 768, "systemd's default soft limit");
        assert_eq!(fitted(4096, 1 << 20), 4096);
        assert_eq!(fitted(4096, u64::MAX), 4096);
        assert_eq!(fitted(4096, 100), 1, "a limit under what the store keeps");
    }
}
