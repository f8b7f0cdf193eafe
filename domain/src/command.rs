//! Commands: what a caller asks of a ticket, already parsed but not yet validated.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::types::{Actor, Channel, Fields, FieldsPatch, Priority, Status, Visibility};

/// A command with who issued it and when. `at` comes from the caller so `decide` stays pure.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub actor: Actor,
    pub at: DateTime<Utc>,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    Open(OpenTicket),
    Comment(AddComment),
    ChangeStatus(ChangeStatus),
    Withdraw(Withdraw),
    Escalate(Escalate),
    MarkRead,
    Edit(EditTicket),
}

/// CONTRACT §4.1. `id` and `number` are assigned by the command handler.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenTicket {
    pub id: Uuid,
    pub number: u64,
    pub subject: String,
    pub description: String,
    pub priority: Option<Priority>,
    pub channel: Option<Channel>,
    pub cc: Option<Vec<String>>,
    pub fields: Option<Fields>,
    pub org: Option<String>,
    pub requester: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub contact_email: Option<String>,
}

/// CONTRACT §4.2. `comment_id` is assigned by the command handler.
#[derive(Debug, Clone, PartialEq)]
pub struct AddComment {
    pub comment_id: Uuid,
    pub body: String,
    pub visibility: Option<Visibility>,
}

/// CONTRACT §4.3.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeStatus {
    pub status: Status,
    pub reason: Option<String>,
}

/// CONTRACT §4.4.
#[derive(Debug, Clone, PartialEq)]
pub struct Withdraw {
    pub reason: String,
    pub comment: Option<String>,
}

/// CONTRACT §4.5.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalate {
    pub reason: String,
}

/// CONTRACT §4.7. The outer `Option` is "not given"; for `assignee` and `due_at` an inner
/// `None` clears the value. `fields` is merged into the ticket's (see [`FieldsPatch`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EditTicket {
    pub subject: Option<String>,
    pub description: Option<String>,
    pub priority: Option<Priority>,
    pub fields: Option<FieldsPatch>,
    pub cc: Option<Vec<String>>,
    pub assignee: Option<Option<String>>,
    pub due_at: Option<Option<DateTime<Utc>>>,
}

impl EditTicket {
    /// Whether the edit touches a field only staff may change.
    pub fn touches_staff_fields(&self) -> bool {
        self.priority.is_some()
            || self.fields.is_some()
            || self.assignee.is_some()
            || self.due_at.is_some()
    }
}
