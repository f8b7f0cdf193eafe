//! `GET /metrics` (CONTRACT §8): Prometheus text with request counts and latencies by route,
//! and the events appended. Counters are process-wide, like Prometheus' default registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use ticketd_projections::{lag, read_checkpoint, Projector};

use crate::app::AppState;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Registry {
    /// (method, route, status) → requests
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → latency
    latency: BTreeMap<(String, String), Histogram>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Middleware: counts each request and its latency under its route template (never the raw
/// path, whose ids would make every ticket a series).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method()).to_owned();
    let start = Instant::now();
    let response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Ok(mut r) = REGISTRY.lock() {
        *r.requests
            .entry((method.clone(), route.clone(), status))
            .or_default() += 1;
        let h = r.latency.entry((method, route)).or_default();
        h.count += 1;
        h.sum += seconds;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
    }
    response
}

/// A request's method as a label: HTTP admits any token as a method, and each would be a
/// series kept for the life of the process.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ]
    .iter()
    .find(|m| *m == method)
    .map_or("other", Method::as_str)
}

/// Escapes a label value per the exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text (exposition format 0.0.4): request counts and latencies by route, events
/// appended, and each projection's position and lag.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP ticketd_events_appended_total Events appended by this process's commands.\n\
         # TYPE ticketd_events_appended_total counter\n\
         ticketd_events_appended_total {}",
        app.handler.events_appended()
    );
    if let Ok(r) = REGISTRY.lock() {
        let _ = writeln!(
            out,
            "# HELP ticketd_http_requests_total HTTP requests by method, route and status.\n\
             # TYPE ticketd_http_requests_total counter"
        );
        for ((method, route, status), n) in &r.requests {
            let _ = writeln!(
                out,
                "ticketd_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(method),
                label(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ticketd_http_request_duration_seconds HTTP request latency by method and route.\n\
             # TYPE ticketd_http_request_duration_seconds histogram"
        );
        for ((method, route), h) in &r.latency {
            let labels = format!("method=\"{}\",route=\"{}\"", label(method), label(route));
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "ticketd_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "ticketd_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 ticketd_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 ticketd_http_request_duration_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
    }
    if let Some(projector) = &app.projector {
        render_projections(&mut out, projector).await;
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
}

/// Per projection: position, lag in events and seconds, events applied, errors, and the
/// error it is stuck on, if any.
async fn render_projections(out: &mut String, projector: &Projector) {
    let statuses = projector.status();
    let mut rows = Vec::with_capacity(statuses.len());
    for s in statuses {
        // The lag is read from the database, so it shows a leader in another process too.
        let stored = read_checkpoint(projector.database(), s.name)
            .await
            .unwrap_or(s.position);
        let at = stored.max(s.position);
        let lag = lag(projector.log_database(), at).await.ok();
        rows.push((s, at, lag));
    }
    let gauges: [(&str, &str, &str); 7] = [
        (
            "ticketd_projection_position",
            "gauge",
            "The sequence number of the last event applied. On PostgreSQL the log is in \
             commit order, not sequence order: it may go down as the projection goes on; the \
             lag gauges tell how far behind it is.",
        ),
        (
            "ticketd_projection_lag_events",
            "gauge",
            "Events in the log not applied yet (on PostgreSQL counted up to 1e6).",
        ),
        (
            "ticketd_projection_lag_seconds",
            "gauge",
            "Age of the oldest event not applied yet; 0 when caught up.",
        ),
        (
            "ticketd_projection_events_applied_total",
            "counter",
            "Events this process applied.",
        ),
        (
            "ticketd_projection_errors_total",
            "counter",
            "Failed attempts (each retried with backoff, never skipped).",
        ),
        (
            "ticketd_projection_leader",
            "gauge",
            "1 where this process runs the projection.",
        ),
        (
            "ticketd_projection_failing",
            "gauge",
            "1 while the projection is stopped by an error (see the error label).",
        ),
    ];
    for (i, (name, kind, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (s, at, lag) in &rows {
            let p = label(s.name);
            let line = match i {
                0 => format!("{name}{{projection=\"{p}\"}} {}", at.seq),
                1 => match lag {
                    Some((n, _)) => format!("{name}{{projection=\"{p}\"}} {n}"),
                    None => continue,
                },
                2 => match lag {
                    Some((_, secs)) => format!("{name}{{projection=\"{p}\"}} {secs}"),
                    None => continue,
                },
                3 => format!("{name}{{projection=\"{p}\"}} {}", s.events_applied),
                4 => format!("{name}{{projection=\"{p}\"}} {}", s.errors),
                5 => format!("{name}{{projection=\"{p}\"}} {}", u8::from(s.leader)),
                _ => match s.last_error.as_ref().filter(|_| s.failing) {
                    Some(e) => format!(
                        "{name}{{projection=\"{p}\",error=\"{}\"}} 1",
                        label(&e.chars().take(300).collect::<String>())
                    ),
                    None => format!("{name}{{projection=\"{p}\",error=\"\"}} 0"),
                },
            };
            let _ = writeln!(out, "{line}");
        }
    }
}
