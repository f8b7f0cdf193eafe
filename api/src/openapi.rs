//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{NAME_MAX, ORG_MAX, SUB_MAX};
use crate::dto;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ticketd",
        description = "An event-sourced help-desk ticketing service. Errors are \
            application/problem+json (RFC 9457) with a `code`; every command answers the stream's \
            new `version` and an opaque log `position`. Every POST accepts `Idempotency-Key` \
            (per user, kept 24 h; reusing a key for a different request answers 422), and every \
            command on an existing ticket accepts `If-Match: \"<version>\"` (412 when stale)."
    ),
    paths(
        crate::tickets::open,
        crate::queries::list,
        crate::queries::get_ticket,
        crate::queries::feed,
        crate::queries::read_by,
        crate::queries::analytics_summary,
        crate::tickets::comment,
        crate::tickets::status,
        crate::tickets::withdraw,
        crate::tickets::escalate,
        crate::tickets::read,
        crate::tickets::edit,
        crate::audit::log,
        crate::audit::ticket_events,
        crate::audit::ticket_state,
        crate::audit::verify,
        crate::app::healthz,
        crate::app::readyz,
        crate::metrics::render,
    ),
    components(schemas(
        dto::OpenTicketBody, dto::CommentBody, dto::StatusBody, dto::WithdrawBody,
        dto::EscalateBody, dto::EditBody, dto::TicketView, dto::TicketWithPosition,
        dto::PublicOpened, dto::CommentAdded, dto::StatusAnswer, dto::ReadAnswer,
        crate::queries::TicketPage, crate::queries::FeedPage, crate::queries::ReadByPage,
        crate::queries::Reader, crate::queries::Summary, crate::queries::Spread,
        crate::error::Problem,
        crate::record::AuditEvent, crate::audit::EventPage, crate::audit::EventList,
        crate::audit::VerifyReport, crate::audit::FindingView, crate::audit::Unreadable,
    )),
    modifiers(&BearerAuth),
    tags((name = "tickets", description = "Commands and reads on tickets"),
         (name = "analytics", description = "CONTRACT §6.5, staff and auditors only"),
         (name = "audit", description = "CONTRACT §7, auditors and admins only: the log, a \
            ticket's events and past states, and the hash-chain check"),
         (name = "operations", description = "Health and readiness"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(format!(
                            "HS256 JWT (CONTRACT §1): `sub` of 1–{SUB_MAX} characters, `role`, \
                             `exp` (seconds since the epoch, any JSON number); optional `name` \
                             of at most {NAME_MAX} characters, `org` of at most {ORG_MAX}, \
                             `org_wide`. A longer `name` or `org`, or a control character in \
                             `sub`, `name` or `org`, is a 401: they are copied into events."
                        )))
                        .build(),
                ),
            );
        }
    }
}
