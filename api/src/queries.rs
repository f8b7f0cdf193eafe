//! The query endpoints of CONTRACT §6, answered from the read models of `ticketd-projections`.
//! Every query accepts `min_position`: it waits (up to 5 s) until the projection it reads has
//! applied that position, else answers 503 with `Retry-After`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use ticketd_domain::{Actor, Channel, DomainError, Priority, Role, Status, Ticket};
use ticketd_projections::tickets::{self, Cursor, ListQuery, Sort, View};
use ticketd_projections::{analytics, feed};
use ticketd_projections::{Projector, WaitError};

use crate::app::AppState;
use crate::audit::QueryParams;
use crate::auth::{Auth, Caller};
use crate::dto::TicketView;
use crate::error::{ApiError, Problem};
use crate::extract::IdPath;

/// How long a query waits for `min_position` (CONTRACT §6).
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;
/// The parameters `GET /v1/tickets` takes (§6.1).
pub const LIST_PARAMS: &[&str] = &[
    "view",
    "status",
    "active",
    "overdue",
    "priority",
    "channel",
    "org",
    "q",
    "sort",
    "limit",
    "cursor",
    "min_position",
];
/// Words of `q` one search may name, as typed (split at blanks).
pub const MAX_WORDS: usize = 16;
/// Distinct words of `q` once split at punctuation too, as the search looks them up.
pub const MAX_SEARCH_WORDS: usize = 32;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tickets", get(list))
        .route("/v1/tickets/{id}", get(get_ticket))
        .route("/v1/tickets/{id}/feed", get(feed))
        .route("/v1/tickets/{id}/read-by", get(read_by))
        .route("/v1/analytics/summary", get(analytics_summary))
}

/// The ticket if the caller may see it, else 404. A ticket the read model does not hold yet, or
/// holds as hidden from the caller, is read from its stream, so 404 never means "not projected
/// yet" (a customer just put on the CC sees the ticket at once, as its feed does).
async fn visible_ticket(
    app: &AppState,
    reads: &Projector,
    id: uuid::Uuid,
    actor: &Actor,
) -> Result<Ticket, ApiError> {
    if let Some(t) = tickets::get(app.reader(reads), id).await? {
        if t.visible_to(actor) {
            return Ok(t);
        }
    }
    match app.handler.load_fresh(id).await?.state {
        Some(t) if t.visible_to(actor) => Ok(t),
        _ => Err(DomainError::NotFound.into()),
    }
}

/// 404 unless `actor` may see ticket `id` now, by its own stream (through the command
/// handler's cache, which reads the stream's tail). The feed and read-by come from the `feed`
/// projection, which may be ahead of `tickets`: a visibility taken from `tickets` could still
/// show a customer removed from the CC what was said after. The stream is never behind.
async fn visible_now(app: &AppState, id: uuid::Uuid, actor: &Actor) -> Result<(), ApiError> {
    match app.handler.load_fresh(id).await?.state {
        Some(t) if t.visible_to(actor) => Ok(()),
        _ => Err(DomainError::NotFound.into()),
    }
}

fn projector(app: &AppState) -> Result<&Projector, ApiError> {
    app.projector
        .as_deref()
        .ok_or_else(|| ApiError::unavailable("This server keeps no read models."))
}

/// Waits for `min_position`, if the request gives one.
async fn consistent(
    reads: &Projector,
    params: &QueryParams,
    projection: &str,
) -> Result<(), ApiError> {
    let Some(wanted) = params.min_position()? else {
        return Ok(());
    };
    match reads.wait_for(projection, wanted, MIN_POSITION_WAIT).await {
        Ok(()) => Ok(()),
        Err(WaitError::Timeout { .. }) => Err(ApiError::unavailable(format!(
            "The read model has not reached position {wanted} yet; retry shortly."
        ))),
        Err(e @ WaitError::UnknownProjection(_)) => Err(ApiError::internal(&e)),
    }
}

/// A comma-separated list of enumeration values, each once; empty means no filter. Repeats
/// are dropped: each value is a bound parameter of each branch of the query, and PostgreSQL
/// takes 65,535 at most.
fn list_of<T: std::str::FromStr + PartialEq>(
    params: &QueryParams,
    name: &str,
    allowed: &[&str],
) -> Result<Vec<T>, ApiError> {
    let Some(raw) = params.get(name) else {
        return Ok(Vec::new());
    };
    let mut values = Vec::new();
    for v in raw.split(',') {
        let value: T = v.trim().parse().map_err(|_| {
            ApiError::malformed(format!(
                "{name}={raw:?}: {v:?} is not one of {}.",
                allowed.join(", ")
            ))
        })?;
        if !values.contains(&value) {
            values.push(value);
        }
    }
    Ok(values)
}

/// A feed entry's type, one of [`feed::TYPES`], as [`list_of`] takes it.
#[derive(PartialEq)]
struct FeedType(&'static str);

impl std::str::FromStr for FeedType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        feed::TYPES
            .iter()
            .find(|t| **t == s)
            .map(|t| FeedType(t))
            .ok_or(())
    }
}

fn boolean(params: &QueryParams, name: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(raw) => Err(ApiError::malformed(format!(
            "{name}={raw:?} must be true or false."
        ))),
    }
}

/// The names of every value of an enumeration, as its `as_str` spells them.
pub(crate) fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|v| name(*v)).collect()
}

/// `org=`: an organization id, never empty, with no control characters (an id has none, and
/// PostgreSQL's text refuses U+0000).
fn org_param(params: &QueryParams) -> Result<Option<String>, ApiError> {
    match params.get("org") {
        Some("") => Err(ApiError::malformed("org must not be empty.")),
        Some(o) if o.chars().any(char::is_control) => Err(ApiError::malformed(
            "org must not contain control characters.",
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

fn parse_list(actor: Actor, params: &QueryParams, auth: &Auth) -> Result<ListQuery, ApiError> {
    let now = chrono::Utc::now();
    params.only(LIST_PARAMS)?;
    let view: View = match params.get("view") {
        None => View::All,
        Some(raw) => raw.parse().map_err(|()| {
            ApiError::malformed(format!("view={raw:?} must be one of mine, cc, org, all."))
        })?,
    };
    let sort: Sort = match params.get("sort") {
        None => Sort::default(),
        Some(raw) => raw.parse().map_err(|()| {
            ApiError::malformed(format!(
                "sort={raw:?} must be one of {}.",
                Sort::NAMES.join(", ")
            ))
        })?,
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::malformed(format!(
                    "limit={raw:?} must be a whole number from 1 to {MAX_LIMIT}."
                )))
            }
        },
    };
    let after = match params.get("cursor") {
        None => None,
        Some(raw) => match auth
            .open_cursor(raw)
            .and_then(|(text, signed)| Cursor::decode(text).map(|c| (c, signed)))
        {
            // One that names where its paging session started must be this service's own
            // (`Auth::sign_cursor`); those from before sessions were kept need no tag.
            Some((c, false)) if c.from.is_some() => {
                return Err(ApiError::malformed(
                    "cursor is not one this service made; pass `next_cursor` as given.",
                ))
            }
            Some((c, _)) if c.expired(now) => {
                return Err(ApiError::malformed(
                    "This cursor has expired (a cursor lasts an hour); start again from the first page.",
                ))
            }
            Some((c, _)) if c.sort == sort => Some(c),
            Some(_) => {
                return Err(ApiError::malformed(
                    "This cursor belongs to another sort order; keep `sort` while paging.",
                ))
            }
            None => {
                return Err(ApiError::malformed(
                    "cursor is not one this service made; pass `next_cursor` as given.",
                ))
            }
        },
    };
    let org = org_param(params)?;
    let q = params.get("q").unwrap_or_default();
    if tickets::typed_words(q).count() > MAX_WORDS {
        return Err(ApiError::malformed(format!(
            "q may have at most {MAX_WORDS} words."
        )));
    }
    let words = tickets::words(q);
    // Each distinct word is a condition (and on SQLite a count): a bound on them, loose enough
    // for a pasted address or path, which is one word as typed.
    if words.len() > MAX_SEARCH_WORDS || words.iter().any(|w| w.chars().count() > 100) {
        return Err(ApiError::malformed(format!(
            "q holds {} distinct words once split at punctuation; at most {MAX_SEARCH_WORDS}, \
             of at most 100 characters each.",
            words.len()
        )));
    }
    Ok(ListQuery {
        viewer: actor,
        words,
        view,
        statuses: list_of(params, "status", &names(Status::ALL, Status::as_str))?,
        active: boolean(params, "active")?,
        overdue: boolean(params, "overdue")?,
        priorities: list_of(params, "priority", &names(Priority::ALL, Priority::as_str))?,
        channels: list_of(params, "channel", &names(Channel::ALL, Channel::as_str))?,
        org,
        sort,
        limit,
        after,
        now,
    })
}

/// A page of tickets (§6.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketPage {
    pub items: Vec<TicketView>,
    /// Pass as `cursor` (with the same other parameters) for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// List the tickets the caller may see (§6.1), filtered and sorted, one page at a time.
///
/// Paging keeps the order of its first page: every later page continues in the order of the
/// sort keys as they stood when the first page was read, so a walk returns each matching
/// ticket exactly once even while tickets change, their sort keys included (new activity
/// under `-last_activity` does not move a ticket within a walk; each item shows the ticket as
/// it is now). A ticket opened during a walk takes its place by the keys it was opened with,
/// and comes if that place is still ahead. A cursor lasts an hour; an older one answers 400.
/// Unknown parameters answer 400.
#[utoipa::path(get, path = "/v1/tickets", tag = "tickets",
    params(
        ("view" = Option<String>, Query, description = "mine | cc | org | all (default)"),
        ("status" = Option<String>, Query, description = "comma-separated statuses"),
        ("active" = Option<bool>, Query),
        ("overdue" = Option<bool>, Query),
        ("priority" = Option<String>, Query, description = "comma-separated priorities"),
        ("channel" = Option<String>, Query, description = "comma-separated channels"),
        ("org" = Option<String>, Query),
        ("q" = Option<String>, Query, description = "words (case-insensitive, whole words, no query syntax; split at spaces and at every character that is neither a letter, a digit nor a combining mark, so alice@example.com is the words alice, example and com), each of which must appear in the subject, the description or a comment the caller may see; words without a letter or digit are ignored, and a q of only such words matches nothing; at most 16 words as typed, and 32 distinct ones of at most 100 characters once split at punctuation (else 400). On PostgreSQL a ticket's searchable text stops growing at about 300 kB (30,000 distinct words): comments past that are not found by their words"),
        ("sort" = Option<String>, Query, description = "-last_activity (default) | last_activity | -created | created | due | -priority"),
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s) until the read model has applied this position"),
    ),
    responses((status = 200, body = TicketPage),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    Caller(actor): Caller,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let query = parse_list(actor, &params, &app.auth)?;
    let reads = projector(&app)?;
    consistent(reads, &params, tickets::NAME).await?;
    let (items, next) = tickets::list(app.reader(reads), &query).await?;
    let now = chrono::Utc::now();
    let page = TicketPage {
        items: items.iter().map(|t| TicketView::new(t, now)).collect(),
        next_cursor: next.map(|c| app.auth.sign_cursor(&c.encode())),
    };
    Ok(axum::Json(page).into_response())
}

/// One ticket (§6.2) from the `tickets` read model, with `ETag: "<version>"`.
///
/// Like every query it may lag the log: pass a command's `position` as `min_position` to see
/// that command's effect. A ticket the read model does not hold yet (just opened, or a
/// projection still catching up after a restart or an import) is read from its stream instead,
/// so 404 always means there is no such ticket (or the caller may not see it), never "not yet".
#[utoipa::path(get, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = uuid::Uuid, Path),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s) until the read model has applied this position")),
    responses((status = 200, body = TicketView, headers(("ETag" = String))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_ticket(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&["min_position"])?;
    let reads = projector(&app)?;
    consistent(reads, &params, tickets::NAME).await?;
    let t = visible_ticket(&app, reads, id, &actor).await?;
    // Digits inside quotes are always a valid header value.
    let etag = HeaderValue::from_str(&format!("\"{}\"", t.version))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    let view = TicketView::new(&t, chrono::Utc::now());
    Ok((StatusCode::OK, [(header::ETAG, etag)], axum::Json(view)).into_response())
}

/// A ticket's feed (§6.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    /// Oldest first: `{id, type, at, actor, actor_name, …}` with the type's own fields.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

/// A ticket's activity, oldest first (§6.3). `read` entries only when `types` names them;
/// customers never see private comments.
#[utoipa::path(get, path = "/v1/tickets/{id}/feed", tag = "tickets",
    params(("id" = uuid::Uuid, Path),
        ("types" = Option<String>, Query, description = "comma-separated: opened, comment, status_changed, edited, escalated, withdrawn, read (default: all but read)"),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s) until the read model has applied this position")),
    responses((status = 200, body = FeedPage),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn feed(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&["types", "min_position"])?;
    let types: Vec<FeedType> = list_of(&params, "types", feed::TYPES)?;
    let types: Vec<String> = types.into_iter().map(|t| t.0.to_owned()).collect();
    let reads = projector(&app)?;
    consistent(reads, &params, feed::NAME).await?;
    visible_now(&app, id, &actor).await?;
    let include_private = actor.role != Role::Customer;
    let items = feed::feed(app.reader(reads), id, &types, include_private).await?;
    Ok(axum::Json(FeedPage { items }).into_response())
}

/// One reader of a ticket (§6.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct Reader {
    pub user: String,
    pub name: Option<String>,
    /// The latest read.
    pub read_at: chrono::DateTime<chrono::Utc>,
    pub first_read_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadByPage {
    pub items: Vec<Reader>,
}

/// Who read a ticket (§6.4): one item per user, `read_at` their latest read, oldest first.
#[utoipa::path(get, path = "/v1/tickets/{id}/read-by", tag = "tickets",
    params(("id" = uuid::Uuid, Path),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s) until the read model has applied this position")),
    responses((status = 200, body = ReadByPage),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn read_by(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    params: QueryParams,
) -> Result<Response, ApiError> {
    params.only(&["min_position"])?;
    let reads = projector(&app)?;
    consistent(reads, &params, feed::NAME).await?;
    visible_now(&app, id, &actor).await?;
    let items = feed::read_by(app.reader(reads), id)
        .await?
        .into_iter()
        .map(|r| Reader {
            user: r.user,
            name: r.name,
            read_at: r.read_at,
            first_read_at: r.first_read_at,
        })
        .collect();
    Ok(axum::Json(ReadByPage { items }).into_response())
}

/// `{p50, p90}` in seconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Spread {
    pub p50: f64,
    pub p90: f64,
}

/// CONTRACT §6.5.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub org: Option<String>,
    pub opened: i64,
    pub resolved: i64,
    pub closed: i64,
    pub withdrawn: i64,
    /// Escalations: by the escalate command, or by staff setting the status `escalated`.
    pub escalated: i64,
    /// Reopens: moves from `resolved` or `closed` back to `open` (by a customer's reply, or by
    /// staff setting `open`), as recorded in the status-change event's `reopen` flag.
    pub reopened: i64,
    /// Each active status: its count of tickets now.
    #[schema(value_type = Object)]
    pub backlog: std::collections::BTreeMap<&'static str, i64>,
    pub overdue_now: i64,
    /// Opened to the first public comment by staff, over tickets opened in the window.
    pub first_response_seconds: Option<Spread>,
    /// Opened to the first `resolved` or `closed`, over tickets opened in the window.
    pub resolution_seconds: Option<Spread>,
}

fn instant(
    params: &QueryParams,
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            crate::audit::parse_time(raw).ok_or_else(|| {
                ApiError::malformed(format!(
                    "{name}={raw:?} is not an RFC 3339 time (e.g. 2026-01-31T00:00:00Z)."
                ))
            })
        })
        .transpose()
}

/// What happened in `[from, to)` (default: the last 30 days), and the backlog now (§6.5).
/// Staff and auditors only; `org` narrows every figure to one organization. Counts are of
/// events in the window; the response and resolution spreads are over tickets opened in it.
#[utoipa::path(get, path = "/v1/analytics/summary", tag = "analytics",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive; default `to` minus 30 days"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive; default now"),
        ("org" = Option<String>, Query),
        ("min_position" = Option<String>, Query, description = "wait (up to 5 s) until the read models have applied this position")),
    responses((status = 200, body = Summary),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn analytics_summary(
    State(app): State<AppState>,
    Caller(actor): Caller,
    params: QueryParams,
) -> Result<Response, ApiError> {
    if !matches!(actor.role, Role::Agent | Role::Admin | Role::Auditor) {
        return Err(ApiError::forbidden("Analytics are for staff and auditors."));
    }
    params.only(&["from", "to", "org", "min_position"])?;
    let now = chrono::Utc::now();
    let to = instant(&params, "to")?.unwrap_or(now);
    let from = instant(&params, "from")?.unwrap_or(to - chrono::Duration::days(30));
    if from > to {
        return Err(ApiError::malformed("from must not be after to."));
    }
    let org = org_param(&params)?;
    let reads = projector(&app)?;
    // Every figure, the backlog included, comes from the `analytics` tables.
    consistent(reads, &params, analytics::NAME).await?;
    let s = analytics::summary(app.reader(reads), from, to, org.as_deref(), now).await?;
    let count = |k: &str| s.counts.get(k).copied().unwrap_or(0);
    let spread = |p: Option<analytics::Percentiles>| {
        p.map(|p| Spread {
            p50: p.p50,
            p90: p.p90,
        })
    };
    let answer = Summary {
        from,
        to,
        org,
        opened: count("opened"),
        resolved: count("resolved"),
        closed: count("closed"),
        withdrawn: count("withdrawn"),
        escalated: count("escalated"),
        reopened: count("reopened"),
        backlog: s.backlog,
        overdue_now: s.overdue_now,
        first_response_seconds: spread(s.first_response),
        resolution_seconds: spread(s.resolution),
    };
    Ok(axum::Json(answer).into_response())
}
