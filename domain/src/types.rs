//! Value types shared by commands, events and state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name, as in CONTRACT §3.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        kind: stringify!($name),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A string that names no value of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub kind: &'static str,
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "must be one of: {}", self.allowed.join(", "))
    }
}

impl std::error::Error for UnknownValue {}

string_enum!(
    /// Ticket status (CONTRACT §3). The first five are active.
    Status {
        Open => "open",
        InProgress => "in_progress",
        AwaitingCustomer => "awaiting_customer",
        OnHold => "on_hold",
        Escalated => "escalated",
        Resolved => "resolved",
        Closed => "closed",
        Withdrawn => "withdrawn",
    }
);

impl Status {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Open
                | Status::InProgress
                | Status::AwaitingCustomer
                | Status::OnHold
                | Status::Escalated
        )
    }
}

string_enum!(
    /// Ticket priority; drives the SLA due date.
    Priority {
        None => "none",
        Low => "low",
        Medium => "medium",
        High => "high",
        Urgent => "urgent",
    }
);

string_enum!(
    /// Where a ticket came from.
    Channel {
        Web => "web",
        Email => "email",
        Phone => "phone",
        Chat => "chat",
        Twitter => "twitter",
        Facebook => "facebook",
        Api => "api",
    }
);

string_enum!(
    /// Comment visibility; private comments are staff-only.
    Visibility {
        Public => "public",
        Private => "private",
    }
);

string_enum!(
    /// What a caller may do (CONTRACT §5). `Public` is the anonymous public form (§4.1) and is
    /// never accepted from a token.
    Role {
        Customer => "customer",
        Agent => "agent",
        Admin => "admin",
        Auditor => "auditor",
        Public => "public",
    }
);

/// A custom form field value: a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum FieldValue {
    Text(String),
    List(Vec<String>),
}

impl FieldValue {
    /// The bytes (UTF-8) of its text, or of its values' together.
    pub fn text_bytes(&self) -> usize {
        match self {
            FieldValue::Text(s) => s.len(),
            FieldValue::List(items) => items.iter().map(String::len).sum(),
        }
    }
}

/// Custom form fields, ordered by key so that equal maps encode to equal bytes.
pub type Fields = BTreeMap<String, FieldValue>;

/// The bytes (UTF-8) of a map of fields' keys and values together: what
/// `limits::FIELDS_BYTES_MAX` bounds, and what an event's fields add to a ticket's history.
pub fn fields_text_bytes(fields: &Fields) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.text_bytes()).sum()
}

/// An edit of custom form fields, merged into the ticket's as RFC 7396 merges a JSON object:
/// each key given is set, a key given `None` (JSON `null`) is removed, the rest are kept.
pub type FieldsPatch = BTreeMap<String, Option<FieldValue>>;

/// Who issued a command; copied into every event's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default)]
    pub org_wide: bool,
}

impl Actor {
    /// Agents and admins: the roles that work tickets.
    pub fn is_staff(&self) -> bool {
        matches!(self.role, Role::Agent | Role::Admin)
    }
}
