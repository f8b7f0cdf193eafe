//! Domain events: what happened to a ticket, versioned for life.
//!
//! Each event has a stable type name and a schema version. Payloads are MessagePack maps with
//! named fields (`rmp_serde::to_vec_named`), so a later schema may add optional fields
//! (`#[serde(default)]`) and every stored event still decodes. A change that old payloads
//! cannot simply default into raises the type's schema version and adds an upcaster
//! (crate::upcast): stored bytes are never rewritten.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::{fields_text_bytes, Actor, Channel, Fields, Priority, Status, Visibility};

/// A ticket was opened (always version 1 of its stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub ticket_id: Uuid,
    pub number: u64,
    pub subject: String,
    pub description: String,
    pub priority: Priority,
    pub channel: Channel,
    pub requester: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub fields: Fields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    /// Set for tickets from the anonymous public form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
}

/// A comment was added.
///
/// Schema 2 added `channel`; schema 1 payloads are upcast with `web` (crate::upcast).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commented {
    pub comment_id: Uuid,
    pub body: String,
    pub visibility: Visibility,
    /// Where the comment came in.
    pub channel: Channel,
}

/// The status moved. `automatic` marks moves caused by a customer's reply; `reopen` marks a
/// move from `resolved`/`closed` back to `open` (events recorded before 2026-11-23 set it for
/// staff moves back to any active status: read it through [`StatusChanged::is_reopen`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub from: Status,
    pub to: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub reopen: bool,
    #[serde(default)]
    pub automatic: bool,
}

impl StatusChanged {
    /// A reopen as CONTRACT §6.5 counts it: a move from `resolved` or `closed` back to `open`,
    /// whatever older events' flag says.
    pub fn is_reopen(&self) -> bool {
        self.reopen && self.to == Status::Open
    }
}

/// One edited field's old and new value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

/// Fields changed by an edit; only changed fields are present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edited {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Change<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Change<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Change<Priority>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Change<Fields>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<Change<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<Change<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Change<Option<DateTime<Utc>>>>,
}

impl Edited {
    pub fn is_empty(&self) -> bool {
        *self == Edited::default()
    }
}

/// The ticket was escalated (a complaint, or staff raising it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalated {
    pub from: Status,
    pub reason: String,
}

/// The ticket was withdrawn by its requester or staff; terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub from: Status,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Someone read the ticket; the reader is the event's actor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Read {}

/// Every event a ticket stream may hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Opened(Opened),
    Commented(Commented),
    StatusChanged(StatusChanged),
    Edited(Edited),
    Escalated(Escalated),
    Withdrawn(Withdrawn),
    Read(Read),
}

impl Event {
    /// The bytes of text the event carries (UTF-8 of its strings, custom fields' keys and
    /// values): what a ticket's history holds, which [`crate::limits::HISTORY_BYTES_MAX`]
    /// bounds.
    pub fn text_bytes(&self) -> u64 {
        let list = |l: &[String]| -> usize { l.iter().map(String::len).sum() };
        let n = match self {
            Event::Opened(o) => {
                o.subject.len() + o.description.len() + fields_text_bytes(&o.fields) + list(&o.cc)
            }
            Event::Commented(c) => c.body.len(),
            Event::StatusChanged(s) => s.reason.as_deref().map_or(0, str::len),
            Event::Edited(e) => {
                let text = |c: &Option<Change<String>>| {
                    c.as_ref().map_or(0, |c| c.from.len() + c.to.len())
                };
                text(&e.subject)
                    + text(&e.description)
                    + e.fields
                        .as_ref()
                        .map_or(0, |c| fields_text_bytes(&c.from) + fields_text_bytes(&c.to))
                    + e.cc.as_ref().map_or(0, |c| list(&c.from) + list(&c.to))
            }
            Event::Escalated(e) => e.reason.len(),
            Event::Withdrawn(w) => w.reason.len() + w.comment.as_deref().map_or(0, str::len),
            Event::Read(_) => 0,
        };
        n as u64
    }
}

/// Why stored bytes could not become an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported schema version {version} for event type {event_type}")]
    UnknownSchema { event_type: String, version: u32 },
    #[error("undecodable {event_type} payload: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: rmp_serde::decode::Error,
    },
}

/// Why an event could not be encoded (never expected for these plain types).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode event: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

macro_rules! event_kinds {
    ($($variant:ident => $name:literal, v $schema:literal);+ $(;)?) => {
        impl Event {
            /// Stable type name, stored with the event.
            pub fn type_name(&self) -> &'static str {
                match self { $(Event::$variant(_) => $name),+ }
            }

            /// Schema version this build writes for the event's type.
            pub fn schema_version(&self) -> u32 {
                match self { $(Event::$variant(_) => $schema),+ }
            }

            /// MessagePack payload with named fields.
            pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
                Ok(match self { $(Event::$variant(e) => rmp_serde::to_vec_named(e)?),+ })
            }

            /// Decodes a stored payload by its type name and schema version.
            pub fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Event, DecodeError> {
                match event_type {
                    $($name => {
                        let decoded = if schema_version == $schema {
                            rmp_serde::from_slice(payload).map(Event::$variant)
                        } else if let Some(upcast) =
                            crate::upcast::decode_old(event_type, schema_version, payload)
                        {
                            // An older schema, brought to this one step by step.
                            upcast
                        } else {
                            return Err(DecodeError::UnknownSchema {
                                event_type: event_type.to_owned(),
                                version: schema_version,
                            });
                        };
                        decoded.map_err(|source| DecodeError::Payload { event_type: event_type.to_owned(), source })
                    })+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            /// The payload as JSON, for the audit API and exports.
            pub fn to_json(&self) -> serde_json::Value {
                // These types serialize to JSON infallibly (string keys, no non-finite floats).
                serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
            }
        }

        /// Serializes as the payload alone (what [`Event::to_json`] shows), so that writers
        /// can stream it without building a `serde_json::Value`.
        impl Serialize for Event {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $(Event::$variant(e) => e.serialize(s)),+ }
            }
        }

        /// Every event type name this build knows.
        pub const EVENT_TYPES: &[&str] = &[$($name),+];
    };
}

event_kinds! {
    Opened => "ticket.opened", v 1;
    Commented => "ticket.commented", v 2;
    StatusChanged => "ticket.status_changed", v 1;
    Edited => "ticket.edited", v 1;
    Escalated => "ticket.escalated", v 1;
    Withdrawn => "ticket.withdrawn", v 1;
    Read => "ticket.read", v 1;
}

/// Event metadata stored beside the payload (MessagePack, named fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Metadata {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Metadata, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// An event as it stands in a stream: what `evolve` folds.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub version: u64,
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    pub event: Event,
}
