//! The command layer's one error type.

use ticketd_domain::{DomainError, FieldError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused the command (404, 403, 409 or 422 at the API).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// `If-Match` named a version that is no longer current.
    #[error("the ticket is at version {current}, not {expected}")]
    VersionMismatch { expected: u64, current: u64 },
    /// The idempotency key was used before by this user for a different request.
    #[error("Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Concurrent writers kept winning the race for this ticket; nothing was written.
    #[error("the ticket changed concurrently too often; try again")]
    Contention,
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CommandError {
    /// A 422 with one field error, for request-level validation done before `decide`.
    pub fn invalid(field: &str, message: &str) -> Self {
        CommandError::Domain(DomainError::Invalid(vec![FieldError::new(field, message)]))
    }
}
