//! The ticket commands of CONTRACT §4 (reads are in crate::queries).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use ticketd_commands::{Idempotency, Options, Outcome};
use ticketd_domain::{Actor, CommandKind, Role};

use crate::app::AppState;
use crate::auth::{Caller, OptionalCaller};
use crate::dto::{
    CommentAdded, CommentBody, EditBody, EscalateBody, OpenTicketBody, PublicOpened, ReadAnswer,
    StatusAnswer, StatusBody, TicketView, TicketWithPosition, WithdrawBody,
};
use crate::error::{ApiError, Problem};
use crate::extract::{IdPath, IdempotencyKey, IfMatch, Json};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tickets", post(open))
        .route("/v1/tickets/{id}", patch(edit))
        .route("/v1/tickets/{id}/comments", post(comment))
        .route("/v1/tickets/{id}/status", post(status))
        .route("/v1/tickets/{id}/withdraw", post(withdraw))
        .route("/v1/tickets/{id}/escalate", post(escalate))
        .route("/v1/tickets/{id}/read", post(read))
}

/// Command options from the request's headers. The fingerprint covers the route, the ticket and
/// the parsed body, so a key reused for a different request is told apart from a repeat.
fn options<B: Serialize>(
    route: &str,
    ticket: Option<Uuid>,
    body: &B,
    if_match: IfMatch,
    key: IdempotencyKey,
) -> Options {
    let idempotency = key.0.map(|key| {
        let mut h = Sha256::new();
        h.update(route.as_bytes());
        h.update(b"\n");
        if let Some(id) = ticket {
            h.update(id.as_bytes());
        }
        h.update(b"\n");
        // Serializing these plain structs to JSON cannot fail.
        h.update(serde_json::to_vec(body).unwrap_or_default());
        Idempotency {
            key,
            fingerprint: h.finalize().to_vec(),
        }
    });
    Options {
        expected_version: if_match.0,
        idempotency,
        correlation_id: None,
    }
}

fn etag(version: u64) -> (header::HeaderName, HeaderValue) {
    // Digits inside quotes are always a valid header value.
    let value = HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    (header::ETAG, value)
}

fn json_with_version<T: Serialize>(status: StatusCode, version: u64, body: T) -> Response {
    (status, [etag(version)], axum::Json(body)).into_response()
}

fn ticket_answer(out: &Outcome) -> TicketWithPosition {
    TicketWithPosition {
        ticket: TicketView::new(&out.ticket, chrono::Utc::now()),
        position: out.position.to_string(),
    }
}

/// Who opens a ticket: the token's user or, with public submission on, the public form (`None`).
/// Without either it is a 401 before the body is read, as on every other command (§1).
pub struct Opener(Option<Actor>);

impl FromRequestParts<AppState> for Opener {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        match OptionalCaller::from_request_parts(parts, app).await?.0 {
            None if !app.public_submission => Err(ApiError::unauthorized(
                "This request needs Authorization: Bearer <token>.",
            )),
            actor => Ok(Opener(actor)),
        }
    }
}

/// Open a ticket (§4.1). With `TICKETD_PUBLIC_SUBMISSION=true`, a request with no token may
/// open one by giving `contact_email`.
#[utoipa::path(post, path = "/v1/tickets", tag = "tickets",
    request_body = OpenTicketBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key, per user, kept 24 h")),
    responses(
        (status = 201, description = "Opened", body = TicketWithPosition, headers(("Location" = String), ("ETag" = String))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)),
    security((), ("bearer" = [])))]
pub async fn open(
    State(app): State<AppState>,
    opener: Opener,
    key: IdempotencyKey,
    Json(body): Json<OpenTicketBody>,
) -> Result<Response, ApiError> {
    let (actor, public) = match opener.0 {
        Some(actor) => (actor, false),
        None => {
            // The anonymous form's submitter is known only by the address they gave; keys are
            // scoped to it so one submitter cannot replay another's answer.
            let email = body.contact_email.clone().unwrap_or_default();
            let actor = Actor {
                id: email,
                name: None,
                role: Role::Public,
                org: None,
                org_wide: false,
            };
            (actor, true)
        }
    };
    let options = options("open", None, &body, IfMatch(None), key);
    let out = app.handler.open(actor, body.into(), options).await?;
    let location = format!("/v1/tickets/{}", out.ticket.id);
    if public {
        let answer = PublicOpened {
            id: out.ticket.id,
            number: out.ticket.number,
            position: out.position.to_string(),
        };
        return Ok((StatusCode::CREATED, axum::Json(answer)).into_response());
    }
    let mut response = json_with_version(StatusCode::CREATED, out.version, ticket_answer(&out));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Add a comment (§4.2). A public reply by the requester or a CC moves an `awaiting_customer`
/// ticket to `in_progress`, and reopens a `resolved` or `closed` one.
#[utoipa::path(post, path = "/v1/tickets/{id}/comments", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CommentBody,
    responses((status = 201, body = CommentAdded),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn comment(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
    Json(body): Json<CommentBody>,
) -> Result<Response, ApiError> {
    let options = options("comment", Some(id), &body, if_match, key);
    let kind = CommandKind::Comment(body.into_command());
    let out = app.handler.execute(id, actor, kind, options).await?;
    let answer = CommentAdded {
        comment_id: out.comment_id.unwrap_or_default(),
        status: out.ticket.status,
        version: out.version,
        position: out.position.to_string(),
    };
    Ok(json_with_version(StatusCode::CREATED, out.version, answer))
}

fn status_answer(out: &Outcome) -> Response {
    let answer = StatusAnswer {
        status: out.ticket.status,
        version: out.version,
        position: out.position.to_string(),
    };
    json_with_version(StatusCode::OK, out.version, answer)
}

/// Change the status (§4.3). Staff may set any status but `withdrawn`; customers may only
/// close. Setting the current status is a no-op.
#[utoipa::path(post, path = "/v1/tickets/{id}/status", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body = StatusBody,
    responses((status = 200, body = StatusAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn status(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
    Json(body): Json<StatusBody>,
) -> Result<Response, ApiError> {
    let options = options("status", Some(id), &body, if_match, key);
    let kind = CommandKind::ChangeStatus(body.into());
    let out = app.handler.execute(id, actor, kind, options).await?;
    Ok(status_answer(&out))
}

/// Withdraw an active ticket (§4.4): requester or staff, with a reason; terminal.
#[utoipa::path(post, path = "/v1/tickets/{id}/withdraw", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body = WithdrawBody,
    responses((status = 200, body = StatusAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn withdraw(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
    Json(body): Json<WithdrawBody>,
) -> Result<Response, ApiError> {
    let options = options("withdraw", Some(id), &body, if_match, key);
    let kind = CommandKind::Withdraw(body.into());
    let out = app.handler.execute(id, actor, kind, options).await?;
    Ok(status_answer(&out))
}

/// Escalate an active ticket (§4.5): its requester (a complaint) or staff, with a reason.
/// Escalating an escalated ticket is a no-op.
#[utoipa::path(post, path = "/v1/tickets/{id}/escalate", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body = EscalateBody,
    responses((status = 200, body = StatusAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn escalate(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
    Json(body): Json<EscalateBody>,
) -> Result<Response, ApiError> {
    let options = options("escalate", Some(id), &body, if_match, key);
    let kind = CommandKind::Escalate(body.into());
    let out = app.handler.execute(id, actor, kind, options).await?;
    Ok(status_answer(&out))
}

/// Record that the caller read the ticket (§4.6). Takes no body; raises the version.
#[utoipa::path(post, path = "/v1/tickets/{id}/read", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = ReadAnswer),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 412, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
) -> Result<Response, ApiError> {
    let options = options("read", Some(id), &(), if_match, key);
    let out = app
        .handler
        .execute(id, actor, CommandKind::MarkRead, options)
        .await?;
    let answer = ReadAnswer {
        version: out.version,
        position: out.position.to_string(),
    };
    Ok(json_with_version(StatusCode::OK, out.version, answer))
}

/// Edit a ticket (§4.7): staff any field; the requester only subject, description and cc while
/// the ticket is active. An edit that changes nothing appends nothing.
#[utoipa::path(patch, path = "/v1/tickets/{id}", tag = "tickets",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    request_body = EditBody,
    responses((status = 200, body = TicketWithPosition, headers(("ETag" = String))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn edit(
    State(app): State<AppState>,
    Caller(actor): Caller,
    IdPath(id): IdPath,
    if_match: IfMatch,
    key: IdempotencyKey,
    Json(body): Json<EditBody>,
) -> Result<Response, ApiError> {
    let options = options("edit", Some(id), &body, if_match, key);
    let kind = CommandKind::Edit(body.into());
    let out = app.handler.execute(id, actor, kind, options).await?;
    Ok(json_with_version(
        StatusCode::OK,
        out.version,
        ticket_answer(&out),
    ))
}
