//! Ticket state and `evolve`, the fold of a stream's events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, Recorded};
use crate::types::{Actor, Channel, Fields, Priority, Role, Status};

/// A ticket as its events leave it.
/// Deserialize: the `tickets` read model keeps each ticket's state as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
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
    pub fields: Fields,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub version: u64,
    /// Moves from `resolved`/`closed` back to an active status.
    pub reopens: u32,
    /// Moves to `escalated`: by escalating, or by a status change.
    pub escalations: u32,
    /// The text its events carry together ([`Event::text_bytes`]): a ticket stops taking
    /// comments and edits at [`crate::limits::HISTORY_BYTES_MAX`].
    #[serde(default)]
    pub history_bytes: u64,
}

impl Ticket {
    /// About how many bytes the ticket holds in memory, its text and custom fields included
    /// (a ticket's fields alone may come to most of a 1 MiB request): what caches weigh it by.
    pub fn weight(&self) -> usize {
        let text = |s: &str| s.len() + 24;
        // Each entry: its key's and value's text, and their headers.
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| 96 + k.len() + v.text_bytes())
            .sum();
        std::mem::size_of::<Ticket>()
            + self.subject.len()
            + self.description.len()
            + self.requester.len()
            + self.org.as_deref().map_or(0, text)
            + self.assignee.as_deref().map_or(0, text)
            + self.cc.iter().map(|c| text(c)).sum::<usize>()
            + fields
    }

    /// `due_at` is past and the ticket is active (CONTRACT §3).
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        self.status.is_active() && self.due_at.is_some_and(|due| due < now)
    }

    /// CONTRACT §5: customers see tickets they requested, are CC'd on, or (org-wide) their org's.
    pub fn visible_to(&self, actor: &Actor) -> bool {
        match actor.role {
            Role::Agent | Role::Admin | Role::Auditor => true,
            Role::Customer => {
                self.requester == actor.id
                    || self.cc.iter().any(|c| c == &actor.id)
                    || (actor.org_wide && actor.org.is_some() && self.org == actor.org)
            }
            Role::Public => false,
        }
    }

    /// The requester or someone on CC: whose public replies move the status.
    pub fn is_participant(&self, user: &str) -> bool {
        self.requester == user || self.cc.iter().any(|c| c == user)
    }
}

/// A stream's state: `None` until its `opened` event.
pub type State = Option<Ticket>;

/// Applies one recorded event. Events are facts, so this never fails; an event that cannot
/// apply (anything before `opened`) leaves the state as it was.
pub fn evolve(state: State, recorded: &Recorded) -> State {
    let at = recorded.recorded_at;
    let version = recorded.version;
    if let Event::Opened(e) = &recorded.event {
        return Some(Ticket {
            id: e.ticket_id,
            number: e.number,
            subject: e.subject.clone(),
            description: e.description.clone(),
            status: Status::Open,
            priority: e.priority,
            channel: e.channel,
            requester: e.requester.clone(),
            org: e.org.clone(),
            cc: e.cc.clone(),
            assignee: None,
            fields: e.fields.clone(),
            created_at: at,
            last_activity_at: at,
            due_at: e.due_at,
            version,
            reopens: 0,
            escalations: 0,
            history_bytes: recorded.event.text_bytes(),
        });
    }
    let mut t = state?;
    t.version = version;
    t.history_bytes += recorded.event.text_bytes();
    match &recorded.event {
        Event::Opened(_) => {}
        Event::Commented(_) => t.last_activity_at = at,
        Event::StatusChanged(e) => {
            t.status = e.to;
            if e.is_reopen() {
                t.reopens += 1;
            }
            // A move to `escalated` by status is an escalation too (CONTRACT §3).
            if e.to == Status::Escalated {
                t.escalations += 1;
            }
            t.last_activity_at = at;
        }
        Event::Edited(e) => {
            if let Some(c) = &e.subject {
                t.subject = c.to.clone();
            }
            if let Some(c) = &e.description {
                t.description = c.to.clone();
            }
            if let Some(c) = &e.priority {
                t.priority = c.to;
            }
            if let Some(c) = &e.fields {
                t.fields = c.to.clone();
            }
            if let Some(c) = &e.cc {
                t.cc = c.to.clone();
            }
            if let Some(c) = &e.assignee {
                t.assignee = c.to.clone();
            }
            if let Some(c) = &e.due_at {
                t.due_at = c.to;
            }
            t.last_activity_at = at;
        }
        Event::Escalated(_) => {
            t.status = Status::Escalated;
            t.escalations += 1;
            t.last_activity_at = at;
        }
        Event::Withdrawn(_) => {
            t.status = Status::Withdrawn;
            t.last_activity_at = at;
        }
        // A read raises the version but is not activity (CONTRACT §3).
        Event::Read(_) => {}
    }
    Some(t)
}
