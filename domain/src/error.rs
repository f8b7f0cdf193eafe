//! The domain's one error type: why `decide` refused a command.

use std::fmt;

/// One invalid input field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// No such ticket, or one the caller may not see (existence is not leaked).
    #[error("no such ticket")]
    NotFound,
    /// The caller sees the ticket but their role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The ticket's state forbids the command.
    #[error("{0}")]
    InvalidTransition(String),
    /// Input values out of range.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}
