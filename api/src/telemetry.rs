//! Logging: `tracing` to stdout, one line per request.

use std::io::{BufWriter, IsTerminal};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::http::StatusCode;
use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnResponse, MakeSpan, OnFailure, TraceLayer,
};
use tracing::{Level, Span};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where log lines go: the service's to stdout; a command's to stderr, so that its own output
/// (a token to paste, a report) is all stdout holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// Installs the global subscriber; levels from `RUST_LOG` (default `info`). Lines go out
/// through a writer thread that batches them into few writes (one write per request line cost
/// a fifth of the server's throughput); it blocks rather than drops when it falls behind.
/// Keep the guard until exit: dropping it flushes what is buffered.
pub fn init(format: LogFormat, to: LogTo) -> WorkerGuard {
    let (out, terminal): (Box<dyn std::io::Write + Send>, bool) = match to {
        LogTo::Stdout => (Box::new(std::io::stdout()), std::io::stdout().is_terminal()),
        LogTo::Stderr => (Box::new(std::io::stderr()), std::io::stderr().is_terminal()),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(BufWriter::with_capacity(64 * 1024, out));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(terminal)
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
    DefaultOnBodyChunk,
    DefaultOnEos,
    LogFailure,
> {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::INFO))
        .on_failure(LogFailure)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `LogFailure` writes for `class`.
    fn logged(class: ServerErrorsFailureClass) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            LogFailure.on_failure(class, Duration::from_millis(5), &Span::none());
        });
        let text = lines.0.lock().expect("lock").clone();
        String::from_utf8(text).expect("utf-8")
    }

    #[test]
    fn a_503_is_a_warning_and_other_failures_are_errors() {
        let unavailable = logged(ServerErrorsFailureClass::StatusCode(
            StatusCode::SERVICE_UNAVAILABLE,
        ));
        assert!(unavailable.contains(" WARN "), "{unavailable}");
        assert!(unavailable.contains("latency_ms=5"), "{unavailable}");
        let internal = logged(ServerErrorsFailureClass::StatusCode(
            StatusCode::INTERNAL_SERVER_ERROR,
        ));
        assert!(internal.contains(" ERROR "), "{internal}");
        let broken = logged(ServerErrorsFailureClass::Error("stream reset".into()));
        assert!(
            broken.contains(" ERROR ") && broken.contains("stream reset"),
            "{broken}"
        );
    }
}
