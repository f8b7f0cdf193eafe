//! Logging: `tracing` to stdout, one line per request.

use std::io::{BufWriter, IsTerminal};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::http::StatusCode;
use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::trace::{DefaultOnResponse, MakeSpan, OnFailure, TraceLayer};
use tracing::{Level, Span};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; levels from `RUST_LOG` (default `info`). Lines go to stdout
/// through a writer thread that batches them into few writes (one write per request line cost
/// a fifth of the server's throughput); it blocks rather than drops when it falls behind.
/// Keep the guard until exit: dropping it flushes what is buffered.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    // A second init (e.g. in tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// A request's span: method and path (never the query, which may carry search words).
#[derive(Clone, Copy)]
pub struct RequestSpan;

impl MakeSpan<Body> for RequestSpan {
    fn make_span(&mut self, req: &Request<Body>) -> Span {
        tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
    }
}

/// How a failed response is logged: a 503 (the store unreachable, or a `min_position` the
/// read models did not reach in time) is a warning the client is told to retry; anything
/// else is an error. (tower-http's default logs every 5xx as an error.)
#[derive(Clone, Copy)]
pub struct LogFailure;

impl OnFailure<ServerErrorsFailureClass> for LogFailure {
    fn on_failure(&mut self, class: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
        let latency_ms = latency.as_millis();
        match class {
            ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
                tracing::warn!(status = 503, latency_ms, "service unavailable")
            }
            other => tracing::error!(failure = %other, latency_ms, "response failed"),
        }
    }
}

/// Logs each request's status and latency when it completes.
pub fn trace_layer() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    (),
    DefaultOnResponse,
    (),
    (),
    LogFailure,
> {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::INFO))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(LogFailure)
}
