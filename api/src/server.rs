//! The HTTP/1.1 server loop: hyper serving the router, as `axum::serve` does, with what it leaves
//! out. `axum::serve` gives hyper no timer, so hyper's header-read timeout never runs, and it
//! accepts connections without bound: a client that opens connections and sends nothing (or a
//! header a byte at a time) held each open for good, until the process ran out of file
//! descriptors and the store could open no file or connection either.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
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
