//! Request and response bodies of the ticket endpoints (CONTRACT §3, §4), with their OpenAPI
//! schemas. Requests reject unknown fields; responses render the domain's state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use ticketd_domain::{
    AddComment, ChangeStatus, Channel, EditTicket, Escalate, Fields, FieldsPatch, OpenTicket,
    Priority, Status, Ticket, Visibility, Withdraw,
};

use crate::extract::double_option;

/// CONTRACT §4.1.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTicketBody {
    /// 1–200 characters after trimming; stored trimmed.
    pub subject: String,
    /// 1–20 000 characters, not all whitespace.
    pub description: String,
    pub priority: Option<Priority>,
    /// Defaults to `web`.
    pub channel: Option<Channel>,
    /// User ids to copy on the ticket; duplicates are dropped.
    pub cc: Option<Vec<String>>,
    /// Custom form fields: string → string or array of strings; at most 50 keys.
    #[schema(value_type = Option<Object>)]
    pub fields: Option<Fields>,
    /// Staff only: the customer's organization.
    pub org: Option<String>,
    /// Staff only: the customer the ticket is opened for (default: the caller).
    pub requester: Option<String>,
    /// Staff only: overrides the SLA policy's due date.
    pub due_at: Option<DateTime<Utc>>,
    /// Required, and only accepted, on the anonymous public form.
    pub contact_email: Option<String>,
}

impl From<OpenTicketBody> for OpenTicket {
    fn from(b: OpenTicketBody) -> Self {
        OpenTicket {
            id: Uuid::nil(),
            number: 0,
            subject: b.subject,
            description: b.description,
            priority: b.priority,
            channel: b.channel,
            cc: b.cc,
            fields: b.fields,
            org: b.org,
            requester: b.requester,
            due_at: b.due_at,
            contact_email: b.contact_email,
        }
    }
}

/// CONTRACT §4.2.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// 1–20 000 characters, not all whitespace.
    pub body: String,
    /// `public` (default) or `private` (staff only).
    pub visibility: Option<Visibility>,
}

impl CommentBody {
    pub fn into_command(self) -> AddComment {
        AddComment {
            comment_id: Uuid::now_v7(),
            body: self.body,
            visibility: self.visibility,
        }
    }
}

/// CONTRACT §4.3.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    pub status: Status,
    pub reason: Option<String>,
}

impl From<StatusBody> for ChangeStatus {
    fn from(b: StatusBody) -> Self {
        ChangeStatus {
            status: b.status,
            reason: b.reason,
        }
    }
}

/// CONTRACT §4.4.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    /// Why the ticket is withdrawn; required.
    pub reason: String,
    /// An optional closing remark shown in the feed.
    pub comment: Option<String>,
}

impl From<WithdrawBody> for Withdraw {
    fn from(b: WithdrawBody) -> Self {
        Withdraw {
            reason: b.reason,
            comment: b.comment,
        }
    }
}

/// CONTRACT §4.5.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalateBody {
    pub reason: String,
}

impl From<EscalateBody> for Escalate {
    fn from(b: EscalateBody) -> Self {
        Escalate { reason: b.reason }
    }
}

/// CONTRACT §4.7. Absent fields are left alone; `assignee: null` and `due_at: null` clear.
/// `fields` is merged into the ticket's as RFC 7396 merges an object (Zendesk's custom fields
/// behave alike): each key given is set, a key given `null` is removed, others are kept.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    pub subject: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Priority>,
    /// Keys to set, or with `null` to remove; keys not named are kept (`"fields": null` itself
    /// changes nothing). The merged map must stay within 50 keys and 1 MiB of keys and values;
    /// an error may name a key the ticket already had.
    #[schema(value_type = Option<Object>)]
    pub fields: Option<FieldsPatch>,
    pub cc: Option<Vec<String>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub due_at: Option<Option<DateTime<Utc>>>,
}

impl From<EditBody> for EditTicket {
    fn from(b: EditBody) -> Self {
        EditTicket {
            subject: b.subject,
            description: b.description,
            priority: b.priority,
            fields: b.fields,
            cc: b.cc,
            assignee: b.assignee,
            due_at: b.due_at,
        }
    }
}

/// A ticket as clients see it (CONTRACT §3).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketView {
    pub id: Uuid,
    pub number: u64,
    pub subject: String,
    pub description: String,
    pub status: Status,
    pub priority: Priority,
    pub channel: Channel,
    pub requester: String,
    pub org: Option<String>,
    pub cc: Vec<String>,
    pub assignee: Option<String>,
    #[schema(value_type = Object)]
    pub fields: Fields,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    /// `due_at` is past and the ticket is active.
    pub overdue: bool,
    /// The stream's version after its last event (reads included).
    pub version: u64,
}

impl TicketView {
    pub fn new(t: &Ticket, now: DateTime<Utc>) -> Self {
        TicketView {
            id: t.id,
            number: t.number,
            subject: t.subject.clone(),
            description: t.description.clone(),
            status: t.status,
            priority: t.priority,
            channel: t.channel,
            requester: t.requester.clone(),
            org: t.org.clone(),
            cc: t.cc.clone(),
            assignee: t.assignee.clone(),
            fields: t.fields.clone(),
            created_at: t.created_at,
            last_activity_at: t.last_activity_at,
            due_at: t.due_at,
            overdue: t.is_overdue(now),
            version: t.version,
        }
    }
}

/// A ticket with the log position of the command that produced it (§4.1, §4.7).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketWithPosition {
    #[serde(flatten)]
    pub ticket: TicketView,
    /// Opaque consistency token: pass as `min_position` to read your writes.
    pub position: String,
}

/// The public form's answer (§4.1): no way to read the ticket back.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicOpened {
    pub id: Uuid,
    pub number: u64,
    pub position: String,
}

/// §4.2's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommentAdded {
    pub comment_id: Uuid,
    pub status: Status,
    pub version: u64,
    pub position: String,
}

/// §4.3–§4.5's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusAnswer {
    pub status: Status,
    pub version: u64,
    pub position: String,
}

/// §4.6's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReadAnswer {
    pub version: u64,
    pub position: String,
}
