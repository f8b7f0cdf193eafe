//! The API layer's one error type and its rendering as RFC 9457 problem+json (CONTRACT §2).
//!
//! Every rejection, from the extractors to the store, becomes an [`ApiError`]. A 500's cause is
//! logged here and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use ticketd_commands::{CommandError, StoreError};
use ticketd_domain::{DomainError, FieldError};

const PROBLEM_BASE: &str = "https://ticketd.dev/problems/";
/// How long a client should wait after a 503 before it retries.
const RETRY_AFTER_SECONDS: u64 = 1;

/// An RFC 9457 problem document with the contract's `code`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `https://ticketd.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    /// A sentence a person can act on.
    pub detail: String,
    /// `malformed_request`, `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `invalid_transition`, `version_mismatch`, `payload_too_large`, `unsupported_media_type`,
    /// `unavailable`; `method_not_allowed` and `internal` for what the contract does not cover.
    pub code: String,
    /// For `invalid_request`: each offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ProblemField>>,
}

/// One invalid field of an `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

/// Why a request failed, as the client will see it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    errors: Option<Vec<ProblemField>>,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, title: &'static str, detail: String) -> Self {
        ApiError {
            status,
            code,
            title,
            detail,
            errors: None,
            allow: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "Malformed request",
            detail.into(),
        )
    }

    /// A 422 listing each offending field.
    pub fn invalid(errors: Vec<ProblemField>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!(
                "{} fields are invalid: {}",
                many.len(),
                many.iter()
                    .map(|e| e.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "Invalid request",
            detail,
        );
        e.errors = Some(errors);
        e
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![ProblemField {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail.into(),
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            detail.into(),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            detail.into(),
        )
    }

    pub fn route_not_found() -> Self {
        Self::not_found("There is no such endpoint; see /openapi.json for the API.")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "This endpoint does not take that method; see /openapi.json for the API.".into(),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("The request body is over the limit of {limit} bytes."),
        )
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail.into(),
        )
    }

    /// A body that did not arrive in time (see `extract::read_body`); the connection closes.
    pub fn request_timeout(within: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            format!(
                "The request body did not arrive within {} s; nothing was changed.",
                within.as_secs()
            ),
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail.into(),
        )
    }

    /// A 500. The cause goes to the log only.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "The server failed to answer; the failure is logged. Nothing was changed.".into(),
        )
    }

    fn to_problem(&self) -> Problem {
        Problem {
            problem_type: format!("{PROBLEM_BASE}{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            errors: self.errors.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ticketd\""),
                );
            }
            // The rest of an oversize body stays unread, so this connection cannot carry another
            // request; saying so stops clients from reusing it and seeing it drop.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            _ => {}
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn fields(errors: Vec<FieldError>) -> Vec<ProblemField> {
    errors
        .into_iter()
        .map(|e| ProblemField {
            field: e.field,
            message: e.message,
        })
        .collect()
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound => {
                ApiError::not_found("There is no ticket with this id, or you may not see it.")
            }
            DomainError::Forbidden(why) => ApiError::forbidden(why),
            DomainError::InvalidTransition(why) => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                "Invalid transition",
                why,
            ),
            DomainError::Invalid(errors) => ApiError::invalid(fields(errors)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                ApiError::unavailable(
                    "The store could not be reached or did not answer in time; nothing was changed. \
                     Retry shortly.",
                )
            }
            // The handler resolves a lost key race itself; should one surface, a retry answers.
            StoreError::IdempotencyKeyTaken => ApiError::unavailable(
                "Another request with this Idempotency-Key is in progress; retry it shortly.",
            ),
            StoreError::Conflict { .. } => ApiError::unavailable(
                "The ticket changed concurrently; nothing was applied. Retry shortly.",
            ),
            StoreError::Corrupt(cause) => ApiError::internal(&cause),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Domain(d) => d.into(),
            CommandError::VersionMismatch { expected, current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "Version mismatch",
                format!(
                    "If-Match named version {expected}, but the ticket is at version {current}; \
                     fetch it again and retry."
                ),
            ),
            CommandError::IdempotencyKeyReused => ApiError::invalid_field(
                "Idempotency-Key",
                "this key was already used by you for a different request; use a new key",
            ),
            CommandError::Contention => ApiError::unavailable(
                "The ticket is being changed by many requests at once; nothing was applied. \
                 Retry shortly.",
            ),
            CommandError::Store(s) => s.into(),
        }
    }
}

impl ApiError {
    /// Adds an `Allow` header (for 405s).
    pub fn with_allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_500_hides_its_cause() {
        let e: ApiError = StoreError::Corrupt("row 7 hash is 3 bytes".into()).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.detail().contains("row 7"));
    }

    #[test]
    fn every_command_error_has_the_contract_code() {
        let cases: Vec<(CommandError, u16, &str)> = vec![
            (DomainError::NotFound.into(), 404, "not_found"),
            (DomainError::Forbidden("no".into()).into(), 403, "forbidden"),
            (
                DomainError::InvalidTransition("no".into()).into(),
                409,
                "invalid_transition",
            ),
            (
                CommandError::invalid("body", "empty"),
                422,
                "invalid_request",
            ),
            (
                CommandError::VersionMismatch {
                    expected: 1,
                    current: 2,
                },
                412,
                "version_mismatch",
            ),
            (CommandError::IdempotencyKeyReused, 422, "invalid_request"),
            (CommandError::Contention, 503, "unavailable"),
            (
                StoreError::Unavailable("down".into()).into(),
                503,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let api: ApiError = e.into();
            assert_eq!(api.status().as_u16(), status);
            assert_eq!(api.code(), code);
        }
    }
}
