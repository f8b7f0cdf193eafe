//! The audit endpoints of CONTRACT §7, for auditors and admins only: the whole log (paged, or
//! streamed as NDJSON), one ticket's events, a ticket as of an instant, and the chain check.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::verify::{verify_store, Report};
use ticketd_commands::{log_reaches, EventStore, Position, StoreError};
use ticketd_domain::{evolve, Actor, DomainError, Role};

use crate::app::AppState;
use crate::auth::Caller;
use crate::dto::TicketView;
use crate::error::{ApiError, Problem};
use crate::extract::IdPath;
use crate::ndjson::LineWriter;
use crate::queries::MIN_POSITION_WAIT;
use crate::record::{timestamp, AuditEvent};

/// `limit` when none is given, and the largest accepted.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Events read from the store per page (and chunk) of an NDJSON stream.
pub const STREAM_BATCH: usize = 5000;
/// Encoded pages an NDJSON stream may hold that the client has not taken yet.
const STREAM_AHEAD: usize = 2;
pub const NDJSON: &str = "application/x-ndjson";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/events", get(log))
        .route("/v1/audit/tickets/{id}/events", get(ticket_events))
        .route("/v1/audit/tickets/{id}/state", get(ticket_state))
        .route("/v1/audit/verify", post(verify))
}

/// CONTRACT §7: auditors and admins; everyone else 403.
fn require_auditor(actor: &Actor) -> Result<(), ApiError> {
    match actor.role {
        Role::Auditor | Role::Admin => Ok(()),
        _ => Err(ApiError::forbidden(
            "Only auditors and admins may use the audit endpoints.",
        )),
    }
}

/// The query string as name/value pairs; 400 if it does not parse or names a parameter twice.
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::malformed("The query string does not parse."))?;
        // A set, not a scan of the names before: a 64 kB query string holds thousands.
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (name, _) in &pairs {
            if !seen.insert(name.as_str()) {
                return Err(ApiError::malformed(format!(
                    "The query parameter {name:?} is given more than once."
                )));
            }
        }
        Ok(QueryParams(pairs))
    }
}

impl QueryParams {
    /// The parameter names given, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// 400 for a parameter the endpoint does not take: a typo should not silently change the
    /// answer (an `afetr=` would page from the start).
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.names().find(|name| !allowed.contains(name)) {
            None => Ok(()),
            Some(name) => Err(ApiError::malformed(format!(
                "Unknown query parameter {name:?}; this endpoint takes: {}.",
                allowed.join(", ")
            ))),
        }
    }

    /// `min_position`, if given: 400 unless it is a log position.
    pub fn min_position(&self) -> Result<Option<Position>, ApiError> {
        self.get("min_position")
            .map(|raw| {
                raw.parse().map_err(|_| {
                    ApiError::malformed(format!(
                        "min_position={raw:?} is not a log position; pass the `position` of a command's answer."
                    ))
                })
            })
            .transpose()
    }

    /// `after`: a position from an earlier answer; 400 if it is not one.
    fn position(&self, name: &str) -> Result<Position, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(Position::START),
            Some(raw) => raw.parse().map_err(|_| {
                ApiError::malformed(format!(
                    "{name}={raw:?} is not a log position; pass a position from an earlier answer."
                ))
            }),
        }
    }

    /// `limit`: 400 unless a whole number from 1 to `max` (as `/v1/tickets` answers).
    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(default);
        };
        match raw.parse::<u64>() {
            Ok(n) if (1..=max as u64).contains(&n) => Ok(n as usize),
            _ => Err(ApiError::malformed(format!(
                "limit={raw:?} must be a whole number from 1 to {max}."
            ))),
        }
    }
}

/// A page of the log (§7.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<AuditEvent>,
    /// Pass as `after` for the next page: the last item's position, or the `after` given when
    /// there are no items (so a client can poll from it for events appended later).
    pub next: String,
}

/// One ticket's events (§7.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<AuditEvent>,
}

/// Whether `Accept` prefers NDJSON: it names `application/x-ndjson` with a q-value above zero
/// and at least that of any JSON it also accepts (a tie goes to the type named explicitly).
fn wants_ndjson(headers: &HeaderMap) -> bool {
    let mut ndjson: f32 = 0.0;
    let mut json: f32 = 0.0;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match mime.as_str() {
            NDJSON => ndjson = ndjson.max(q),
            "application/json" | "application/*" | "*/*" => json = json.max(q),
            _ => {}
        }
    }
    ndjson > 0.0 && ndjson >= json
}

/// The whole log in its one stable order (§7.1). Paging with `after` from the start returns
/// every event exactly once, even while writers append. With `Accept: application/x-ndjson`
/// the answer is a stream, one event a line, from `after` to the end of the log as it is
/// when the stream reaches it (at most `limit` events if given); it starts at once and reads
/// the store a batch at a time as the client consumes it.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit",
    params(
        ("after" = Option<String>, Query, description = "A position from an earlier answer; default: the start of the log"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 100; no default limit for NDJSON. A JSON page ends early once its events' payloads and metadata reach 8 MiB: only an empty page ends the log"),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s, else 503) until the log shows this position"),
        ("Accept" = Option<String>, Header, description = "application/x-ndjson for a stream")),
    responses(
        (status = 200, description = "A page; with Accept: application/x-ndjson, a stream of one AuditEvent a line",
            content((EventPage = "application/json"), (AuditEvent = "application/x-ndjson"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn log(
    State(app): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    query: Result<QueryParams, ApiError>,
) -> Result<Response, ApiError> {
    // The role before the request's parameters: everyone else gets 403 (CONTRACT §7), even
    // with a query string that does not parse.
    require_auditor(&actor)?;
    let query = query?;
    query.only(&["after", "limit", "min_position"])?;
    let after = query.position("after")?;
    if let Some(wanted) = query.min_position()? {
        // The log shows an event only once every event before it is visible (on PostgreSQL a
        // just-acknowledged one can wait a moment behind an older transaction).
        if !log_reaches(app.store.as_ref(), wanted, MIN_POSITION_WAIT).await? {
            return Err(ApiError::unavailable(format!(
                "The log does not show position {wanted} yet; retry shortly."
            )));
        }
    }
    if wants_ndjson(&headers) {
        let limit = match query.get("limit") {
            None => None,
            Some(_) => Some(query.limit(MAX_LIMIT, usize::MAX)?),
        };
        return Ok(stream_log(app.store.clone(), after, limit));
    }
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let events = app.store.read_all(after, limit).await?;
    let next = events.last().map_or(after, |e| e.position).to_string();
    let items = events.iter().map(|e| AuditEvent::new(e, true)).collect();
    Ok(axum::Json(EventPage { items, next }).into_response())
}

/// The NDJSON stream: a task reads the store a page at a time and encodes each page on a
/// blocking thread while it reads the next, handing the lines to the response through a
/// bounded channel. It reads ahead by at most [`STREAM_AHEAD`] pages the client has not
/// taken, so memory stays flat however large the log.
fn stream_log(store: Arc<dyn EventStore>, after: Position, limit: Option<usize>) -> Response {
    let (lines, chunks) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    tokio::spawn(produce(store, after, limit, lines));
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

type Chunk = Result<Bytes, std::io::Error>;

/// Feeds `lines` until the end of the log (or `limit`), a store failure, or the client going
/// away (the channel closes).
async fn produce(
    store: Arc<dyn EventStore>,
    mut after: Position,
    mut remaining: Option<usize>,
    lines: tokio::sync::mpsc::Sender<Chunk>,
) {
    let mut encoding: Option<tokio::task::JoinHandle<Result<Bytes, StoreError>>> = None;
    loop {
        let n = remaining.map_or(STREAM_BATCH, |r| r.min(STREAM_BATCH));
        let read = async {
            match n {
                0 => Ok(Vec::new().into()),
                n => store.read_batch(after, n).await,
            }
        };
        // The page before goes to the client while the next is read.
        let send = async {
            let Some(task) = encoding.take() else {
                return true;
            };
            let chunk = match task.await {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the encoding thread failed: {e}")),
            };
            match chunk {
                Ok(bytes) => lines.send(Ok(bytes)).await.is_ok(),
                Err(e) => {
                    fail(&lines, after, e).await;
                    false
                }
            }
        };
        let (batch, sent) = tokio::join!(read, send);
        if !sent {
            return;
        }
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => return fail(&lines, after, e.to_string()).await,
        };
        let Some(last) = batch.last_position() else {
            return;
        };
        after = last;
        remaining = remaining.map(|r| r.saturating_sub(batch.len()));
        encoding = Some(tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::with_capacity(batch.len() * 1024);
            let mut writer = LineWriter::new();
            for e in batch.iter() {
                writer.write(e?, true, &mut bytes);
            }
            Ok(Bytes::from(bytes))
        }));
    }
}

/// The status line is long gone: ending the body with an error aborts the response, so the
/// client sees a truncated stream rather than a clean end.
async fn fail(lines: &tokio::sync::mpsc::Sender<Chunk>, after: Position, e: String) {
    tracing::warn!(error = %e, after = %after, "audit stream failed");
    let _ = lines.send(Err(std::io::Error::other(e))).await;
}

/// Every event of one ticket, in version order (§7.2). 404 if the ticket has none.
#[utoipa::path(get, path = "/v1/audit/tickets/{id}/events", tag = "audit",
    params(("id" = Uuid, Path),
        ("min_position" = Option<String>, Query, description = "accepted for symmetry with every query; a stream is never behind")),
    responses((status = 200, body = EventList),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn ticket_events(
    State(app): State<AppState>,
    Caller(actor): Caller,
    id: Result<IdPath, ApiError>,
    query: Result<QueryParams, ApiError>,
) -> Result<Response, ApiError> {
    require_auditor(&actor)?;
    let (IdPath(id), query) = (id?, query?);
    query.only(&["min_position"])?;
    // Checked, but nothing to wait for: a stream is read directly, so it holds every event
    // that was acknowledged.
    query.min_position()?;
    let events = app.store.read_stream(id, 0).await?;
    if events.is_empty() {
        return Err(DomainError::NotFound.into());
    }
    let items = events.iter().map(|e| AuditEvent::new(e, true)).collect();
    Ok(axum::Json(EventList { items }).into_response())
}

/// An RFC 3339 time from a query parameter.
pub(crate) fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        // An unescaped `+` in a query string arrives as a space.
        .or_else(|| DateTime::parse_from_rfc3339(&raw.replace(' ', "+")).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The ticket as it stood at `as_of` (§7.3): its stream replayed through the service's own
/// `evolve`, up to its last event recorded at or before `as_of`. `overdue` is as of then.
/// 404 if the ticket did not exist yet.
#[utoipa::path(get, path = "/v1/audit/tickets/{id}/state", tag = "audit",
    params(("id" = Uuid, Path),
        ("as_of" = String, Query, description = "RFC 3339 instant, e.g. 2026-01-31T12:00:00Z"),
        ("min_position" = Option<String>, Query, description = "accepted for symmetry with every query; a stream is never behind")),
    responses((status = 200, body = TicketView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn ticket_state(
    State(app): State<AppState>,
    Caller(actor): Caller,
    id: Result<IdPath, ApiError>,
    query: Result<QueryParams, ApiError>,
) -> Result<Response, ApiError> {
    require_auditor(&actor)?;
    let (IdPath(id), query) = (id?, query?);
    query.only(&["as_of", "min_position"])?;
    // As for a ticket's events: its stream is never behind.
    query.min_position()?;
    let raw = query.get("as_of").ok_or_else(|| {
        ApiError::malformed("as_of is required: an RFC 3339 instant, e.g. 2026-01-31T12:00:00Z.")
    })?;
    let as_of = parse_time(raw).ok_or_else(|| {
        ApiError::malformed(format!(
            "as_of={raw:?} is not an RFC 3339 instant, e.g. 2026-01-31T12:00:00Z."
        ))
    })?;
    let events = app.store.read_stream(id, 0).await?;
    let mut state = None;
    // The stream's prefix up to `as_of`: a later event is not folded even if a clock stepped
    // back, so the answer is always a state the ticket really passed through.
    for stored in events.iter().take_while(|e| e.recorded_at <= as_of) {
        state = evolve(state, &decode(stored)?);
    }
    let ticket = state.ok_or(DomainError::NotFound)?;
    Ok(axum::Json(TicketView::new(&ticket, as_of)).into_response())
}

/// `POST /v1/audit/verify`'s answer: `ticketd verify`'s report.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// No findings, and the whole log was read.
    pub ok: bool,
    pub events: u64,
    pub streams: u64,
    pub findings: Vec<FindingView>,
    /// Set when the store could not read the log past `after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Unreadable>,
    /// Where a projection differs from a rebuild of it made from the log. Checked only when
    /// the log itself verifies, and not with `?projections=false`.
    pub projections: Vec<ProjectionFinding>,
    /// When the check finished.
    pub checked_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FindingView {
    pub stream: Uuid,
    pub version: u64,
    /// Where in the log the problem showed.
    pub position: Option<String>,
    /// `hash_mismatch`, `broken_link`, `missing_versions`, `out_of_order` or `undecodable`.
    pub problem: String,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionFinding {
    pub projection: String,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unreadable {
    pub after: String,
    pub detail: String,
}

impl From<Report> for VerifyReport {
    fn from(r: Report) -> Self {
        VerifyReport {
            ok: r.is_ok(),
            events: r.events,
            streams: r.streams,
            findings: r
                .findings
                .into_iter()
                .map(|f| FindingView {
                    stream: f.stream_id,
                    version: f.version,
                    position: f.position.map(|p| p.to_string()),
                    problem: f.problem.as_str().to_owned(),
                    detail: f.detail,
                })
                .collect(),
            unreadable: r.unreadable.map(|(after, detail)| Unreadable {
                after: after.to_string(),
                detail,
            }),
            projections: Vec::new(),
            checked_at: timestamp(Utc::now()),
        }
    }
}

/// Runs `ticketd verify` over the whole log: every stream's hash chain, contiguous versions,
/// every event decoding, and (unless `projections=false`) that every projection equals a
/// rebuild from the log. 200 with `ok: false` and the findings when anything is wrong.
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit",
    params(("projections" = Option<bool>, Query, description = "also compare every projection with a rebuild from the log; default true")),
    responses((status = 200, body = VerifyReport),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn verify(
    State(app): State<AppState>,
    Caller(actor): Caller,
    params: Result<QueryParams, ApiError>,
) -> Result<Response, ApiError> {
    require_auditor(&actor)?;
    let params = params?;
    params.only(&["projections"])?;
    let projections = match params.get("projections") {
        None | Some("true") => true,
        Some("false") => false,
        Some(raw) => {
            return Err(ApiError::malformed(format!(
                "projections={raw:?} is neither true nor false."
            )))
        }
    };
    // One check at a time: each builds a whole scratch copy of the read models (disk, and on
    // PostgreSQL the memory of its folds) for minutes at scale.
    let Ok(slot) = app.verify_slot.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "A verification is already running; retry when it is done.",
        ));
    };
    // In a task of its own: a caller that goes away (a proxy's timeout) leaves the check to
    // finish and discard its scratch copy, instead of dropping it halfway and leaving the copy.
    let store = app.store.clone();
    let report = tokio::spawn(async move {
        let report = check(store.as_ref(), projections).await;
        drop(slot);
        report
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}

/// The log's check, then (with `projections`, over a log that verified) every projection's
/// comparison with a rebuild.
async fn check(store: &dyn EventStore, projections: bool) -> Result<VerifyReport, ApiError> {
    let report = verify_store(store).await?;
    let mut report = VerifyReport::from(report);
    // A rebuild replays the log, so it is only meaningful (and only possible) over a log that
    // verified.
    if projections && report.ok && store.database().is_some() {
        let findings =
            match ticketd_projections::rebuild::check_all(store, &ticketd_projections::all()).await
            {
                Ok(f) => f,
                Err(StoreError::Corrupt(detail)) => {
                    vec![("*", format!("cannot rebuild: {detail}"))]
                }
                Err(e) => return Err(e.into()),
            };
        report.ok &= findings.is_empty();
        report.projections = findings
            .into_iter()
            .map(|(projection, detail)| ProjectionFinding {
                projection: projection.to_owned(),
                detail,
            })
            .collect();
        report.checked_at = timestamp(Utc::now());
    }
    Ok(report)
}
