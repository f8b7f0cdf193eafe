//! `decide`: the rules of CONTRACT §3–§5 as one pure function from state and command to events.

use chrono::{DateTime, Datelike, Utc};

use crate::command::{
    AddComment, ChangeStatus, Command, CommandKind, EditTicket, Escalate, OpenTicket, Withdraw,
};
use crate::error::{DomainError, FieldError};
use crate::event::{self, Change, Edited, Event};
use crate::policy::SlaPolicy;
use crate::ticket::{State, Ticket};
use crate::types::{
    fields_text_bytes, Actor, Channel, FieldValue, Fields, FieldsPatch, Priority, Role, Status,
    Visibility,
};

/// Input limits (CONTRACT §3, §4).
pub mod limits {
    pub const SUBJECT_MAX: usize = 200;
    pub const TEXT_MAX: usize = 20_000;
    pub const REASON_MAX: usize = 2_000;
    pub const ID_MAX: usize = 128;
    pub const CC_MAX: usize = 100;
    pub const FIELDS_MAX: usize = 50;
    /// The bytes (UTF-8) of a ticket's custom fields together, keys and values: what a whole
    /// map could come to in a request under the 1 MiB body limit. An edit merges into the
    /// map, so without it edits could grow the map past any one request, and each later edit
    /// event, which carries the map before and after, with it.
    pub const FIELDS_BYTES_MAX: usize = 1 << 20;
    pub const FIELD_KEY_MAX: usize = 100;
    pub const FIELD_VALUE_MAX: usize = 5_000;
    pub const FIELD_LIST_MAX: usize = 100;
    pub const EMAIL_MAX: usize = 254;
    /// Events a ticket's stream holds before it takes no more comments, edits of its text, or
    /// reads (which succeed without appending): the feed, the stream reads and a cache miss
    /// load a ticket whole. Status changes and staff's assignment edits still go, so a full
    /// ticket can be closed out. (Zendesk stops a ticket at 5,000 comments, GitHub an issue at
    /// 2,500.)
    pub const HISTORY_EVENTS_MAX: u64 = 10_000;
    /// The text a ticket's events carry together (`Event::text_bytes`) before it takes no
    /// more comments or edits: 800 comments of 20,000 ASCII characters, or eight edits of a
    /// full 1 MiB map of custom fields, each carrying the map before and after.
    pub const HISTORY_BYTES_MAX: u64 = 16 << 20;
}

/// Decides which events a command appends to a ticket in `state`, or why it may not.
/// An empty list means the command is a no-op that succeeds.
pub fn decide(state: &State, cmd: &Command, sla: &SlaPolicy) -> Result<Vec<Event>, DomainError> {
    let actor = &cmd.actor;
    if actor.role == Role::Auditor {
        return Err(forbidden("auditors run no commands"));
    }
    if let CommandKind::Open(open) = &cmd.kind {
        return decide_open(state, actor, cmd.at, open, sla);
    }
    // Every other command needs a ticket the caller can see.
    let ticket = match state {
        Some(t) if t.visible_to(actor) => t,
        _ => return Err(DomainError::NotFound),
    };
    match &cmd.kind {
        CommandKind::Open(_) => unreachable_open(),
        CommandKind::Comment(c) => decide_comment(ticket, actor, c),
        CommandKind::ChangeStatus(c) => decide_status(ticket, actor, c),
        CommandKind::Withdraw(c) => decide_withdraw(ticket, actor, c),
        CommandKind::Escalate(c) => decide_escalate(ticket, actor, c),
        // A full ticket's reads are no-ops: reading it must still succeed.
        CommandKind::MarkRead if ticket.version >= limits::HISTORY_EVENTS_MAX => Ok(vec![]),
        CommandKind::MarkRead => Ok(vec![Event::Read(event::Read {})]),
        CommandKind::Edit(c) => decide_edit(ticket, actor, c),
    }
}

// `Open` returns early above; this keeps the match exhaustive without a panic.
fn unreachable_open() -> Result<Vec<Event>, DomainError> {
    Err(DomainError::InvalidTransition(
        "the ticket already exists".into(),
    ))
}

fn forbidden(msg: &str) -> DomainError {
    DomainError::Forbidden(msg.to_owned())
}

fn conflict(msg: impl Into<String>) -> DomainError {
    DomainError::InvalidTransition(msg.into())
}

/// A ticket whose history reached its bounds takes no more comments or edits: open a new one.
fn reject_if_full(t: &Ticket) -> Result<(), DomainError> {
    if t.version >= limits::HISTORY_EVENTS_MAX {
        Err(conflict(format!(
            "the ticket holds {} events, as many as a ticket may; open a new ticket",
            limits::HISTORY_EVENTS_MAX
        )))
    } else if t.history_bytes >= limits::HISTORY_BYTES_MAX {
        Err(conflict(format!(
            "the ticket holds {} MiB of text, as much as a ticket may; open a new ticket",
            limits::HISTORY_BYTES_MAX >> 20
        )))
    } else {
        Ok(())
    }
}

fn reject_if_withdrawn(t: &Ticket) -> Result<(), DomainError> {
    if t.status == Status::Withdrawn {
        Err(conflict(
            "the ticket was withdrawn; withdrawn tickets accept no further changes",
        ))
    } else {
        Ok(())
    }
}

fn decide_open(
    state: &State,
    actor: &Actor,
    at: DateTime<Utc>,
    cmd: &OpenTicket,
    sla: &SlaPolicy,
) -> Result<Vec<Event>, DomainError> {
    let staff = actor.is_staff();
    if !staff && (cmd.requester.is_some() || cmd.org.is_some() || cmd.due_at.is_some()) {
        return Err(forbidden("only staff may give requester, org or due_at"));
    }
    let mut v = Validator::default();
    let subject = v.subject("subject", &cmd.subject);
    v.text("description", &cmd.description);
    let cc = cmd.cc.as_ref().map(|cc| v.cc("cc", cc)).unwrap_or_default();
    if let Some(fields) = &cmd.fields {
        v.fields("fields", fields);
    }
    if let Some(r) = &cmd.requester {
        v.id("requester", r);
    }
    if let Some(o) = &cmd.org {
        v.id("org", o);
    }
    if let Some(due) = &cmd.due_at {
        v.due_at("due_at", due);
    }
    if actor.role == Role::Public {
        match &cmd.contact_email {
            Some(e) => v.email("contact_email", e),
            None => v.push(
                "contact_email",
                "is required for a ticket from the public form",
            ),
        }
    } else if cmd.contact_email.is_some() {
        v.push(
            "contact_email",
            "is only for the public form; signed-in callers are the requester",
        );
    }
    v.finish()?;
    if state.is_some() {
        return Err(conflict("the ticket already exists"));
    }

    let (requester, requester_name, org) = match actor.role {
        Role::Public => (cmd.contact_email.clone().unwrap_or_default(), None, None),
        Role::Customer => (actor.id.clone(), actor.name.clone(), actor.org.clone()),
        _ => match &cmd.requester {
            Some(r) if r != &actor.id => (r.clone(), None, cmd.org.clone()),
            _ => (actor.id.clone(), actor.name.clone(), cmd.org.clone()),
        },
    };
    let priority = cmd.priority.unwrap_or(Priority::None);
    let due_at = cmd.due_at.or_else(|| sla.target(priority).map(|d| at + d));
    Ok(vec![Event::Opened(event::Opened {
        ticket_id: cmd.id,
        number: cmd.number,
        subject,
        description: cmd.description.clone(),
        priority,
        channel: cmd.channel.unwrap_or(crate::types::Channel::Web),
        requester,
        requester_name,
        org,
        cc,
        fields: cmd.fields.clone().unwrap_or_default(),
        due_at,
        contact_email: cmd.contact_email.clone(),
    })])
}

fn decide_comment(t: &Ticket, actor: &Actor, c: &AddComment) -> Result<Vec<Event>, DomainError> {
    reject_if_withdrawn(t)?;
    let visibility = c.visibility.unwrap_or(Visibility::Public);
    let mut v = Validator::default();
    v.text("body", &c.body);
    v.finish()?;
    if visibility == Visibility::Private && !actor.is_staff() {
        return Err(forbidden("only staff may write private comments"));
    }
    reject_if_full(t)?;
    let mut events = vec![Event::Commented(event::Commented {
        comment_id: c.comment_id,
        body: c.body.clone(),
        visibility,
        // The API has no way yet to say a comment came in by another channel.
        channel: Channel::Web,
    })];
    // A customer's public reply hands the ticket back to support (CONTRACT §3).
    if visibility == Visibility::Public
        && actor.role == Role::Customer
        && t.is_participant(&actor.id)
    {
        let to = match t.status {
            Status::AwaitingCustomer => Some((Status::InProgress, false)),
            Status::Resolved | Status::Closed => Some((Status::Open, true)),
            _ => None,
        };
        if let Some((to, reopen)) = to {
            events.push(Event::StatusChanged(event::StatusChanged {
                from: t.status,
                to,
                reason: None,
                reopen,
                automatic: true,
            }));
        }
    }
    Ok(events)
}

fn decide_status(t: &Ticket, actor: &Actor, c: &ChangeStatus) -> Result<Vec<Event>, DomainError> {
    reject_if_withdrawn(t)?;
    let mut v = Validator::default();
    if c.status == Status::Withdrawn {
        v.push(
            "status",
            "use POST /v1/tickets/{id}/withdraw to withdraw a ticket",
        );
    }
    if let Some(r) = &c.reason {
        v.reason("reason", r);
    }
    v.finish()?;
    // The current status is a no-op for anyone who may see the ticket (CONTRACT §3).
    if c.status == t.status {
        return Ok(vec![]);
    }
    if !actor.is_staff() && c.status != Status::Closed {
        return Err(forbidden("customers may only close a ticket"));
    }
    // Staff work active tickets and may move resolved or closed ones on; customers may close a
    // ticket in any status but withdrawn. A reopen is a move from resolved or closed back to
    // open (CONTRACT §6.5); to another active status it is a status change like any other.
    let reopen = matches!(t.status, Status::Resolved | Status::Closed) && c.status == Status::Open;
    Ok(vec![Event::StatusChanged(event::StatusChanged {
        from: t.status,
        to: c.status,
        reason: c.reason.clone(),
        reopen,
        automatic: false,
    })])
}

fn decide_withdraw(t: &Ticket, actor: &Actor, c: &Withdraw) -> Result<Vec<Event>, DomainError> {
    reject_if_withdrawn(t)?;
    let mut v = Validator::default();
    v.reason("reason", &c.reason);
    if let Some(comment) = &c.comment {
        v.text("comment", comment);
    }
    v.finish()?;
    if !actor.is_staff() && t.requester != actor.id {
        return Err(forbidden(
            "only the requester or staff may withdraw a ticket",
        ));
    }
    if !t.status.is_active() {
        return Err(conflict(format!(
            "only an active ticket can be withdrawn; this one is {}",
            t.status
        )));
    }
    Ok(vec![Event::Withdrawn(event::Withdrawn {
        from: t.status,
        reason: c.reason.clone(),
        comment: c.comment.clone(),
    })])
}

fn decide_escalate(t: &Ticket, actor: &Actor, c: &Escalate) -> Result<Vec<Event>, DomainError> {
    reject_if_withdrawn(t)?;
    let mut v = Validator::default();
    v.reason("reason", &c.reason);
    v.finish()?;
    if !actor.is_staff() && t.requester != actor.id {
        return Err(forbidden(
            "only the requester or staff may escalate a ticket",
        ));
    }
    if !t.status.is_active() {
        return Err(conflict(format!(
            "only an active ticket can be escalated; this one is {}",
            t.status
        )));
    }
    if t.status == Status::Escalated {
        return Ok(vec![]);
    }
    Ok(vec![Event::Escalated(event::Escalated {
        from: t.status,
        reason: c.reason.clone(),
    })])
}

fn decide_edit(t: &Ticket, actor: &Actor, c: &EditTicket) -> Result<Vec<Event>, DomainError> {
    reject_if_withdrawn(t)?;
    let mut v = Validator::default();
    let subject = c.subject.as_ref().map(|s| v.subject("subject", s));
    if let Some(d) = &c.description {
        v.text("description", d);
    }
    let cc = c.cc.as_ref().map(|cc| v.cc("cc", cc));
    // Checked as merged: the ticket's keys and the edit's together must stay within bounds.
    let fields = c.fields.as_ref().map(|patch| {
        let merged = merge_fields(&t.fields, patch);
        v.fields("fields", &merged);
        merged
    });
    if let Some(Some(a)) = &c.assignee {
        v.id("assignee", a);
    }
    if let Some(Some(due)) = &c.due_at {
        v.due_at("due_at", due);
    }
    v.finish()?;
    if !actor.is_staff() {
        if t.requester != actor.id {
            return Err(forbidden("only the requester or staff may edit a ticket"));
        }
        if c.touches_staff_fields() {
            return Err(forbidden(
                "the requester may edit only subject, description and cc",
            ));
        }
        if !t.status.is_active() {
            return Err(conflict(format!(
                "the requester may edit only an active ticket; this one is {}",
                t.status
            )));
        }
    }
    fn diff<T: PartialEq + Clone>(old: &T, new: Option<&T>) -> Option<Change<T>> {
        new.filter(|n| *n != old).map(|n| Change {
            from: old.clone(),
            to: n.clone(),
        })
    }
    let edited = Edited {
        subject: diff(&t.subject, subject.as_ref()),
        description: diff(&t.description, c.description.as_ref()),
        priority: diff(&t.priority, c.priority.as_ref()),
        fields: diff(&t.fields, fields.as_ref()),
        cc: diff(&t.cc, cc.as_ref()),
        assignee: diff(&t.assignee, c.assignee.as_ref()),
        due_at: diff(&t.due_at, c.due_at.as_ref()),
    };
    if edited.is_empty() {
        return Ok(vec![]);
    }
    // Staff may still assign, prioritise and reschedule a full ticket (small, and what
    // closing it out takes); what carries text waits for a new one.
    if edited.subject.is_some()
        || edited.description.is_some()
        || edited.fields.is_some()
        || edited.cc.is_some()
    {
        reject_if_full(t)?;
    }
    Ok(vec![Event::Edited(edited)])
}

/// `fields` with `patch` merged in (RFC 7396): keys given a value set, keys given `None` gone.
fn merge_fields(fields: &Fields, patch: &FieldsPatch) -> Fields {
    let mut merged = fields.clone();
    for (key, value) in patch {
        match value {
            Some(v) => merged.insert(key.clone(), v.clone()),
            None => merged.remove(key),
        };
    }
    merged
}

/// Collects every invalid field of a command, so one answer names them all.
#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError::new(field, message));
    }

    fn finish(self) -> Result<(), DomainError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.errors))
        }
    }

    fn length(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if value.trim().is_empty() {
            self.push(field, "must not be empty");
        } else if n > max {
            self.push(
                field,
                &format!("must be at most {max} characters (got {n})"),
            );
        }
    }

    /// The subject is trimmed; its 1–200 characters count after trimming.
    fn subject(&mut self, field: &str, value: &str) -> String {
        let trimmed = value.trim();
        self.length(field, trimmed, limits::SUBJECT_MAX);
        trimmed.to_owned()
    }

    fn text(&mut self, field: &str, value: &str) {
        self.length(field, value, limits::TEXT_MAX);
    }

    /// A due date every answer can print as RFC 3339, whose years have four digits: chrono
    /// reads `+10000-01-01T00:00:00Z` and `-0001-…` too, and would print them so.
    fn due_at(&mut self, field: &str, value: &DateTime<Utc>) {
        if !(0..=9999).contains(&value.year()) {
            self.push(field, "must be a time in the years 0000 to 9999");
        }
    }

    fn reason(&mut self, field: &str, value: &str) {
        self.length(field, value, limits::REASON_MAX);
    }

    /// User and organization ids: no control characters, which would name nobody (and which
    /// PostgreSQL's text columns refuse in the case of U+0000).
    fn id(&mut self, field: &str, value: &str) {
        if value.is_empty() || value.chars().count() > limits::ID_MAX {
            self.push(
                field,
                &format!("must be 1 to {} characters", limits::ID_MAX),
            );
        } else if value.chars().any(char::is_control) {
            self.push(field, "must not contain control characters");
        }
    }

    fn email(&mut self, field: &str, value: &str) {
        let ok = value.len() <= limits::EMAIL_MAX
            && value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.contains('@')
            })
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            self.push(field, "must be an email address");
        }
    }

    /// Validates CC user ids and returns them without duplicates, in the order given. A list
    /// over the bound is one error, its entries unchecked: a 1 MiB body holds hundreds of
    /// thousands, and each would be an error of its own and a scan of the others.
    fn cc(&mut self, field: &str, cc: &[String]) -> Vec<String> {
        if cc.len() > limits::CC_MAX {
            self.push(
                field,
                &format!("must list at most {} users", limits::CC_MAX),
            );
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::with_capacity(cc.len());
        for (i, user) in cc.iter().enumerate() {
            self.id(&format!("{field}[{i}]"), user);
            if !out.contains(user) {
                out.push(user.clone());
            }
        }
        out
    }

    /// Over the bound on keys, one error and no key checked (as with `cc`).
    fn fields(&mut self, field: &str, fields: &Fields) {
        if fields.len() > limits::FIELDS_MAX {
            self.push(
                field,
                &format!("must have at most {} keys", limits::FIELDS_MAX),
            );
            return;
        }
        let bytes = fields_text_bytes(fields);
        if bytes > limits::FIELDS_BYTES_MAX {
            self.push(
                field,
                &format!(
                    "must come to at most {} bytes of keys and values together",
                    limits::FIELDS_BYTES_MAX
                ),
            );
        }
        for (key, value) in fields {
            let name = format!("{field}.{key}");
            if key.is_empty() || key.chars().count() > limits::FIELD_KEY_MAX {
                self.push(
                    &name,
                    &format!("keys must be 1 to {} characters", limits::FIELD_KEY_MAX),
                );
            }
            let too_long = |s: &String| s.chars().count() > limits::FIELD_VALUE_MAX;
            match value {
                FieldValue::Text(s) if too_long(s) => self.push(
                    &name,
                    &format!("must be at most {} characters", limits::FIELD_VALUE_MAX),
                ),
                FieldValue::List(items) if items.len() > limits::FIELD_LIST_MAX => self.push(
                    &name,
                    &format!("must list at most {} values", limits::FIELD_LIST_MAX),
                ),
                FieldValue::List(items) if items.iter().any(too_long) => self.push(
                    &name,
                    &format!(
                        "values must be at most {} characters",
                        limits::FIELD_VALUE_MAX
                    ),
                ),
                _ => {}
            }
        }
    }
}
