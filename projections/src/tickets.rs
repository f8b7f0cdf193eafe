//! The `tickets` read model: one row per ticket, its state folded by the domain's own `evolve`
//! and kept as JSON, with the columns that filters and sorts need derived from it; and the
//! queries of CONTRACT §6.1 and §6.2 over it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::{Database, StoreError, StoredEvent};
use ticketd_domain::{
    evolve, Actor, Channel, Event, Priority, Role, State, Status, Ticket, Visibility,
};

use crate::sql::{Bind, Conn};
use crate::{micros, tx_i64, Pooled, Projection};

pub const NAME: &str = "tickets";

/// Feeds the `tickets` and `ticket_cc` tables.
pub struct TicketsProjection;

fn corrupt(e: &StoredEvent, what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "tickets row of stream {} at version {}: {what}",
        e.stream_id, e.version
    ))
}

pub fn priority_rank(p: Priority) -> i64 {
    match p {
        Priority::None => 0,
        Priority::Low => 1,
        Priority::Medium => 2,
        Priority::High => 3,
        Priority::Urgent => 4,
    }
}

/// `due_at` for sorting: a ticket without one sorts after every dated one.
fn due_sort(t: &Ticket) -> i64 {
    t.due_at.map_or(i64::MAX, micros)
}

async fn load(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<String>, StoreError> {
    let rows: Vec<String> = conn
        .fetch_column("SELECT state FROM tickets WHERE id = ?", &[Bind::Uuid(id)])
        .await?;
    Ok(rows.into_iter().next())
}

const TICKET_INSERT: &str = "INSERT INTO tickets (id, number, status, active, priority, \
     priority_rank, channel, requester, org, assignee, created_at, last_activity_at, due_sort, \
     version, position_tx, position_seq, state)";
const TICKET_UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET number = excluded.number, \
     status = excluded.status, active = excluded.active, priority = excluded.priority, \
     priority_rank = excluded.priority_rank, channel = excluded.channel, \
     requester = excluded.requester, org = excluded.org, assignee = excluded.assignee, \
     created_at = excluded.created_at, last_activity_at = excluded.last_activity_at, \
     due_sort = excluded.due_sort, version = excluded.version, \
     position_tx = excluded.position_tx, position_seq = excluded.position_seq, \
     state = excluded.state";
const CC_INSERT: &str = "INSERT INTO ticket_cc (ticket_id, member)";
const CC_TAIL: &str = "ON CONFLICT DO NOTHING";

/// `?, ?, …` for `n` values.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Whether the event sets the ticket's CC (all of it).
fn cc_changed(event: &Event) -> bool {
    match event {
        Event::Opened(_) => true,
        Event::Edited(e) => e.cc.is_some(),
        _ => false,
    }
}

/// The `tickets` row of `t`, as of `event` (its last event).
fn ticket_binds(t: &Ticket, event: &StoredEvent) -> Result<Vec<Bind>, StoreError> {
    let json = serde_json::to_string(t).map_err(|e| corrupt(event, e))?;
    let (tx, seq) = tx_i64(event.position)?;
    let num = |v: u64| i64::try_from(v).map_err(|e| corrupt(event, e));
    Ok(vec![
        Bind::Uuid(t.id),
        Bind::I64(num(t.number)?),
        Bind::Text(t.status.as_str().to_owned()),
        Bind::I64(i64::from(t.status.is_active())),
        Bind::Text(t.priority.as_str().to_owned()),
        Bind::I64(priority_rank(t.priority)),
        Bind::Text(t.channel.as_str().to_owned()),
        Bind::Text(t.requester.clone()),
        Bind::OptText(t.org.clone()),
        Bind::OptText(t.assignee.clone()),
        Bind::I64(micros(t.created_at)),
        Bind::I64(micros(t.last_activity_at)),
        Bind::I64(due_sort(t)),
        Bind::I64(num(t.version)?),
        Bind::I64(tx),
        Bind::I64(seq),
        Bind::Text(json),
    ])
}

#[async_trait]
impl Projection for TicketsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tickets", "ticket_cc", "ticket_text"]
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &StoredEvent) -> Result<(), StoreError> {
        let recorded = decode(event)?;
        let state: State = match load(conn, event.stream_id).await? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| corrupt(event, e))?),
            None => None,
        };
        // The checkpoint already prevents a second application; this keeps a row from ever
        // moving backwards regardless.
        if state.as_ref().is_some_and(|t| t.version >= event.version) {
            return Ok(());
        }
        let Some(t) = evolve(state, &recorded) else {
            return Ok(());
        };
        conn.execute(
            &format!("{TICKET_INSERT} VALUES ({}) {TICKET_UPSERT}", marks(17)),
            &ticket_binds(&t, event)?,
        )
        .await?;
        index_text(conn, &t, &recorded.event).await?;
        if cc_changed(&recorded.event) {
            conn.execute(
                "DELETE FROM ticket_cc WHERE ticket_id = ?",
                &[Bind::Uuid(t.id)],
            )
            .await?;
            let rows: Vec<Vec<Bind>> =
                t.cc.iter()
                    .map(|m| vec![Bind::Uuid(t.id), Bind::Text(m.clone())])
                    .collect();
            conn.insert_rows(CC_INSERT, rows, CC_TAIL).await?;
        }
        Ok(())
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut states: HashMap<Uuid, Ticket> = HashMap::with_capacity(ids.len());
        for (id, json) in conn
            .fetch_rows_in::<(Uuid, String)>("SELECT id, state FROM tickets WHERE id IN (…)", &ids)
            .await?
        {
            let t: Ticket = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("ticket {id}'s row: {e}")))?;
            states.insert(id, t);
        }
        // Fold in memory; the search text is written event by event, in order (each
        // statement depends on what the ticket's text holds so far); each ticket's row and CC
        // once, at the end.
        let mut last: HashMap<Uuid, &StoredEvent> = HashMap::new();
        let mut order: Vec<Uuid> = Vec::new();
        let mut cc: HashSet<Uuid> = HashSet::new();
        for event in events {
            let recorded = decode(event)?;
            let state = states.remove(&event.stream_id);
            if state.as_ref().is_some_and(|t| t.version >= event.version) {
                if let Some(t) = state {
                    states.insert(event.stream_id, t);
                }
                continue;
            }
            let Some(t) = evolve(state, &recorded) else {
                continue;
            };
            index_text(conn, &t, &recorded.event).await?;
            if cc_changed(&recorded.event) {
                cc.insert(t.id);
            }
            if last.insert(t.id, event).is_none() {
                order.push(t.id);
            }
            states.insert(t.id, t);
        }
        let mut rows = Vec::with_capacity(order.len());
        let mut members = Vec::new();
        for id in &order {
            let (Some(t), Some(event)) = (states.get(id), last.get(id)) else {
                continue;
            };
            rows.push(ticket_binds(t, event)?);
            if cc.contains(id) {
                members.extend(
                    t.cc.iter()
                        .map(|m| vec![Bind::Uuid(t.id), Bind::Text(m.clone())]),
                );
            }
        }
        conn.insert_rows(TICKET_INSERT, rows, TICKET_UPSERT).await?;
        let gone: Vec<Uuid> = order.iter().filter(|id| cc.contains(id)).copied().collect();
        for chunk in gone.chunks(crate::sql::MAX_BINDS) {
            let binds: Vec<Bind> = chunk.iter().map(|id| Bind::Uuid(*id)).collect();
            conn.execute(
                &format!(
                    "DELETE FROM ticket_cc WHERE ticket_id IN ({})",
                    marks(chunk.len())
                ),
                &binds,
            )
            .await?;
        }
        conn.insert_rows(CC_INSERT, members, CC_TAIL).await?;
        Ok(true)
    }
}

/// Keeps `ticket_text` (for `q`): the ticket's subject and description, and each comment.
async fn index_text(conn: &mut Conn<'_>, t: &Ticket, event: &Event) -> Result<(), StoreError> {
    let (part, private, body) = match event {
        Event::Opened(_) => ("ticket".to_owned(), false, ticket_text(t)),
        Event::Edited(e) if e.subject.is_some() || e.description.is_some() => {
            ("ticket".to_owned(), false, ticket_text(t))
        }
        Event::Commented(c) => (
            c.comment_id.to_string(),
            c.visibility == Visibility::Private,
            c.body.to_lowercase(),
        ),
        _ => return Ok(()),
    };
    conn.execute(
        "INSERT INTO ticket_text (ticket_id, part, private, body) VALUES (?, ?, ?, ?) \
         ON CONFLICT (ticket_id, part) DO UPDATE SET private = excluded.private, \
         body = excluded.body",
        &[
            Bind::Uuid(t.id),
            Bind::Text(part),
            Bind::I64(i64::from(private)),
            Bind::Text(body),
        ],
    )
    .await?;
    Ok(())
}

fn ticket_text(t: &Ticket) -> String {
    format!("{}\n{}", t.subject, t.description).to_lowercase()
}

/// `q`'s words: lowercased, split on whitespace.
pub fn words(q: &str) -> Vec<String> {
    q.split_whitespace().map(str::to_lowercase).collect()
}

/// A LIKE pattern matching `word` anywhere, with LIKE's own characters escaped.
fn contains_pattern(word: &str) -> String {
    let mut p = String::from("%");
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// One ticket as the read model has it (visibility is the caller's to check).
pub async fn get(db: &Database, id: Uuid) -> Result<Option<Ticket>, StoreError> {
    let mut pooled = Pooled::acquire(db).await?;
    match load(&mut pooled.conn(), id).await? {
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("tickets row {id}: {e}"))),
        None => Ok(None),
    }
}

/// CONTRACT §6.1 `view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Customer: requested by me; staff: assigned to me.
    Mine,
    /// I am on the CC.
    Cc,
    /// My organization's tickets (that I may see).
    Org,
    #[default]
    All,
}

impl FromStr for View {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "mine" => Ok(View::Mine),
            "cc" => Ok(View::Cc),
            "org" => Ok(View::Org),
            "all" => Ok(View::All),
            _ => Err(()),
        }
    }
}

/// CONTRACT §6.1 `sort`; ties are broken by id in the same direction, so the order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    LastActivityDesc,
    LastActivity,
    CreatedDesc,
    Created,
    Due,
    PriorityDesc,
}

impl Sort {
    pub const NAMES: &'static [&'static str] = &[
        "-last_activity",
        "last_activity",
        "-created",
        "created",
        "due",
        "-priority",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::LastActivityDesc => "-last_activity",
            Sort::LastActivity => "last_activity",
            Sort::CreatedDesc => "-created",
            Sort::Created => "created",
            Sort::Due => "due",
            Sort::PriorityDesc => "-priority",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Sort::LastActivityDesc | Sort::LastActivity => "last_activity_at",
            Sort::CreatedDesc | Sort::Created => "created_at",
            Sort::Due => "due_sort",
            Sort::PriorityDesc => "priority_rank",
        }
    }

    fn descending(self) -> bool {
        matches!(
            self,
            Sort::LastActivityDesc | Sort::CreatedDesc | Sort::PriorityDesc
        )
    }

    /// The ticket's value of the sort column, as stored.
    fn key(self, t: &Ticket) -> i64 {
        match self {
            Sort::LastActivityDesc | Sort::LastActivity => micros(t.last_activity_at),
            Sort::CreatedDesc | Sort::Created => micros(t.created_at),
            Sort::Due => due_sort(t),
            Sort::PriorityDesc => priority_rank(t.priority),
        }
    }
}

impl FromStr for Sort {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "-last_activity" => Ok(Sort::LastActivityDesc),
            "last_activity" => Ok(Sort::LastActivity),
            "-created" => Ok(Sort::CreatedDesc),
            "created" => Ok(Sort::Created),
            "due" => Ok(Sort::Due),
            "-priority" => Ok(Sort::PriorityDesc),
            _ => Err(()),
        }
    }
}

/// Where a page ended: the last item's sort key and id, under the sort it was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub sort: Sort,
    pub key: i64,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: hex of `sort|key|id`.
    pub fn encode(&self) -> String {
        let text = format!("{}|{}|{}", self.sort.as_str(), self.key, self.id);
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        if s.len() > 256 || s.len() & 1 == 1 {
            return None;
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let sort = parts.next()?.parse().ok()?;
        let key = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Cursor { sort, key, id })
    }
}

/// A list query (CONTRACT §6.1), already validated.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub viewer: Actor,
    pub view: View,
    pub statuses: Vec<Status>,
    pub active: Option<bool>,
    pub overdue: Option<bool>,
    pub priorities: Vec<Priority>,
    pub channels: Vec<Channel>,
    pub org: Option<String>,
    /// `q`, lowercased words; each must appear in the subject, the description or a comment
    /// the viewer may see.
    pub words: Vec<String>,
    pub sort: Sort,
    /// 1–200.
    pub limit: usize,
    pub after: Option<Cursor>,
    pub now: DateTime<Utc>,
}

fn push_in(sql: &mut String, binds: &mut Vec<Bind>, column: &str, values: Vec<String>) {
    if values.is_empty() {
        return;
    }
    sql.push_str(" AND ");
    sql.push_str(column);
    sql.push_str(" IN (");
    for (i, v) in values.into_iter().enumerate() {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
        binds.push(Bind::Text(v));
    }
    sql.push(')');
}

/// The SQL and binds of a list query; the first `limit + 1` rows tell whether a page follows.
fn list_sql(q: &ListQuery) -> (String, Vec<Bind>) {
    let me = &q.viewer.id;
    let mut sql = String::from("SELECT state FROM tickets WHERE 1 = 1");
    let mut binds = Vec::new();
    let in_cc = " AND EXISTS (SELECT 1 FROM ticket_cc c WHERE c.ticket_id = tickets.id \
                 AND c.member = ?)";
    // CONTRACT §5: a customer sees what they requested, are CC'd on, or (org-wide) their org's.
    if q.viewer.role != Role::Agent && q.viewer.role != Role::Admin {
        match q.viewer.role {
            Role::Auditor => {}
            Role::Customer => {
                sql.push_str(
                    " AND (requester = ? OR EXISTS (SELECT 1 FROM ticket_cc c \
                     WHERE c.ticket_id = tickets.id AND c.member = ?)",
                );
                binds.push(Bind::Text(me.clone()));
                binds.push(Bind::Text(me.clone()));
                if let (true, Some(org)) = (q.viewer.org_wide, &q.viewer.org) {
                    sql.push_str(" OR org = ?");
                    binds.push(Bind::Text(org.clone()));
                }
                sql.push(')');
            }
            // Nobody else holds a token that reaches here; see nothing rather than guess.
            _ => sql.push_str(" AND 1 = 0"),
        }
    }
    match q.view {
        View::All => {}
        View::Mine if q.viewer.role == Role::Customer => {
            sql.push_str(" AND requester = ?");
            binds.push(Bind::Text(me.clone()));
        }
        View::Mine => {
            sql.push_str(" AND assignee = ?");
            binds.push(Bind::Text(me.clone()));
        }
        View::Cc => {
            sql.push_str(in_cc);
            binds.push(Bind::Text(me.clone()));
        }
        View::Org => {
            // No org on the token: no organization's tickets.
            sql.push_str(" AND org = ?");
            binds.push(Bind::OptText(q.viewer.org.clone()));
        }
    }
    push_in(
        &mut sql,
        &mut binds,
        "status",
        q.statuses.iter().map(|s| s.as_str().to_owned()).collect(),
    );
    push_in(
        &mut sql,
        &mut binds,
        "priority",
        q.priorities.iter().map(|s| s.as_str().to_owned()).collect(),
    );
    push_in(
        &mut sql,
        &mut binds,
        "channel",
        q.channels.iter().map(|s| s.as_str().to_owned()).collect(),
    );
    if let Some(active) = q.active {
        sql.push_str(" AND active = ?");
        binds.push(Bind::I64(i64::from(active)));
    }
    if let Some(org) = &q.org {
        sql.push_str(" AND org = ?");
        binds.push(Bind::Text(org.clone()));
    }
    let staff_view = matches!(q.viewer.role, Role::Agent | Role::Admin | Role::Auditor);
    for w in &q.words {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM ticket_text x WHERE x.ticket_id = tickets.id \
             AND x.body LIKE ? ESCAPE '\\'",
        );
        if !staff_view {
            sql.push_str(" AND x.private = 0");
        }
        sql.push(')');
        binds.push(Bind::Text(contains_pattern(w)));
    }
    // Overdue: active with `due_at` past (due_sort holds i64::MAX when there is none).
    match q.overdue {
        Some(true) => {
            sql.push_str(" AND active = 1 AND due_sort < ?");
            binds.push(Bind::I64(micros(q.now)));
        }
        Some(false) => {
            sql.push_str(" AND (active = 0 OR due_sort >= ?)");
            binds.push(Bind::I64(micros(q.now)));
        }
        None => {}
    }
    let col = q.sort.column();
    let (cmp, dir) = if q.sort.descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(c) = q.after {
        sql.push_str(&format!(" AND ({col}, id) {cmp} (?, ?)"));
        binds.push(Bind::I64(c.key));
        binds.push(Bind::Uuid(c.id));
    }
    sql.push_str(&format!(" ORDER BY {col} {dir}, id {dir} LIMIT ?"));
    binds.push(Bind::I64(i64::try_from(q.limit).unwrap_or(200) + 1));
    (sql, binds)
}

/// A page of the list and the cursor of the next one, if any.
pub async fn list(
    db: &Database,
    q: &ListQuery,
) -> Result<(Vec<Ticket>, Option<Cursor>), StoreError> {
    let (sql, binds) = list_sql(q);
    let mut pooled = Pooled::acquire(db).await?;
    let rows: Vec<String> = pooled.conn().fetch_column(&sql, &binds).await?;
    let mut items = rows
        .iter()
        .map(|json| serde_json::from_str::<Ticket>(json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("a tickets row: {e}")))?;
    let next = if items.len() > q.limit {
        items.truncate(q.limit);
        items.last().map(|t| Cursor {
            sort: q.sort,
            key: q.sort.key(t),
            id: t.id,
        })
    } else {
        None
    };
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
        assert_eq!(words("  Printer  ON\tFire "), ["printer", "on", "fire"]);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            sort: Sort::Due,
            key: i64::MAX,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "zz", "abc", "7c7c7c", &"00".repeat(200)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
