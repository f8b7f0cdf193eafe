//! The `tickets` read model: one row per ticket, its state folded by the domain's own `evolve`
//! and kept as JSON, with the columns that filters and sorts need derived from it; and the
//! queries of CONTRACT §6.1 and §6.2 over it.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::{Database, Position, StoreError, StoredEvent};
use ticketd_domain::{
    evolve, Actor, Channel, Event, Priority, Recorded, Role, State, Status, Ticket, Visibility,
};

use crate::bulk::{Fold, Sink, Step, CHUNK_BYTES};
use crate::kept::{Keeper, Weigh};
use crate::keys::{keys, Keys, RecentKeys, Snapshot, CURSOR_TTL_MICROS};
use crate::sql::{Bind, Conn, CopyRows};
use crate::{micros, position_from, tx_i64, Pooled, Projection, Reader};

pub const NAME: &str = "tickets";

/// Feeds the `tickets` and `ticket_cc` tables.
#[derive(Default)]
pub struct TicketsProjection {
    /// Each ticket's row as the last batch wrote it.
    kept: Keeper<TicketRow>,
}

/// What a ticket's `tickets` row holds, folded: its state, its recent changes of sort keys,
/// and its position (of its last event that [`moves`] it). Both paths, batch by batch and
/// bulk, fold events into it with [`TicketRow::next`].
struct TicketRow {
    t: Ticket,
    recent: RecentKeys,
    at: Position,
}

impl TicketRow {
    /// Whether `row` already holds `event`: one at or below its version changes nothing.
    fn has(row: Option<&TicketRow>, event: &StoredEvent) -> bool {
        row.is_some_and(|r| r.t.version >= event.version)
    }

    /// The row after `event` (decoded as `recorded`); `None` where `evolve` makes no ticket.
    fn next(
        prev: Option<TicketRow>,
        event: &StoredEvent,
        recorded: &Recorded,
    ) -> Result<Option<TicketRow>, StoreError> {
        let (state, mut recent, was_at) = match prev {
            Some(r) => (Some(r.t), r.recent, Some(r.at)),
            None => (None, RecentKeys::default(), None),
        };
        let before = state.as_ref().map(keys);
        let Some(t) = evolve(state, recorded) else {
            return Ok(None);
        };
        note_keys(&mut recent, before, &t, event)?;
        let at = match was_at {
            Some(was) if !moves(&recorded.event) => was,
            _ => event.position,
        };
        Ok(Some(TicketRow { t, recent, at }))
    }

    /// Its `tickets` row's values.
    fn binds(&self) -> Result<Vec<Bind>, StoreError> {
        ticket_binds(&self.t, self.at, &self.recent)
    }
}

impl Weigh for TicketRow {
    /// The ticket's, its recent keys', and a fixed part.
    fn weight(&self) -> usize {
        64 + self.t.weight() + self.recent.weight()
    }
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
pub(crate) fn due_sort(t: &Ticket) -> i64 {
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
     version, position_tx, position_seq, state, recent_keys)";
/// Sets only what an event after the opening can change: number, channel, requester, org and
/// creation time are the opening's for good. SQLite rewrites the entries of every index over a
/// column an UPDATE sets, changed or not, so leaving them out spares four of its indexes a row
/// (measured: `tickets` took 0.92x the time per event on SQLite).
const TICKET_UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET \
     status = excluded.status, active = excluded.active, priority = excluded.priority, \
     priority_rank = excluded.priority_rank, assignee = excluded.assignee, \
     last_activity_at = excluded.last_activity_at, \
     due_sort = excluded.due_sort, version = excluded.version, \
     position_tx = excluded.position_tx, position_seq = excluded.position_seq, \
     state = excluded.state, recent_keys = excluded.recent_keys";
const CC_INSERT: &str = "INSERT INTO ticket_cc (ticket_id, member)";
const CC_TAIL: &str = "ON CONFLICT DO NOTHING";

/// PostgreSQL: the text of a ticket opened in the batch at hand. Its `ticket_search` row is
/// then written once with all of it: the same vectors as event by event, since a 'simple'
/// vector of texts joined by newlines holds exactly the words of each.
#[derive(Default)]
struct FreshText {
    public: Vec<String>,
    private: Vec<String>,
    /// Every text the events carried (heads included): what bounds the vectors' size.
    bytes: usize,
}

impl FreshText {
    fn add(&mut self, event: &Event) {
        match event {
            Event::Opened(o) => self.bytes += o.subject.len() + o.description.len(),
            Event::Edited(e) => {
                self.bytes += e.subject.as_ref().map_or(0, |c| c.to.len())
                    + e.description.as_ref().map_or(0, |c| c.to.len());
            }
            Event::Commented(c) => {
                self.bytes += c.body.len() + 1;
                if c.visibility == Visibility::Private {
                    self.private.push(c.body.clone());
                } else {
                    self.public.push(c.body.clone());
                }
            }
            // As `text_op` has it: a withdrawal's comment is a public one.
            Event::Withdrawn(w) => {
                if let Some(c) = &w.comment {
                    self.bytes += c.len() + 1;
                    self.public.push(c.clone());
                }
            }
            _ => {}
        }
    }
}

/// A vector's text form is at most this many times the bytes of the text it came from
/// (quotes and a space per word, doubled quotes, case folding that grows a character). Text
/// within budget by this measure can never reach the budget, so no comment would be dropped.
const FRESH_TEXT_FACTOR: usize = 5;

/// `?, ?, …` for `n` values.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Keeps `t`'s change of sort keys by `event` (none for the event that opened it).
fn note_keys(
    recent: &mut RecentKeys,
    before: Option<Keys>,
    t: &Ticket,
    event: &StoredEvent,
) -> Result<(), StoreError> {
    let after = keys(t);
    recent.note(
        before.unwrap_or(after),
        after,
        event.position,
        micros(event.recorded_at),
    )
}

/// Whether the event sets the ticket's CC (all of it).
fn cc_changed(event: &Event) -> bool {
    match event {
        Event::Opened(_) => true,
        Event::Edited(e) => e.cc.is_some(),
        _ => false,
    }
}

/// A ticket's sort keys and log position, as both `tickets` and `ticket_search` (migration
/// 0012) store them: one derivation, so a search ranking by either table ranks alike.
struct RowKeys {
    last_activity_at: i64,
    created_at: i64,
    due_sort: i64,
    priority_rank: i64,
    position_tx: i64,
    position_seq: i64,
}

impl RowKeys {
    /// `t`'s keys as of `at`, the position of its last event.
    fn of(t: &Ticket, at: Position) -> Result<Self, StoreError> {
        let (position_tx, position_seq) = tx_i64(at)?;
        Ok(RowKeys {
            last_activity_at: micros(t.last_activity_at),
            created_at: micros(t.created_at),
            due_sort: due_sort(t),
            priority_rank: priority_rank(t.priority),
            position_tx,
            position_seq,
        })
    }

    /// In `ticket_search`'s column order: `last_activity_at, created_at, due_sort,
    /// priority_rank, position_tx, position_seq`.
    fn search_binds(&self) -> [Bind; 6] {
        [
            Bind::I64(self.last_activity_at),
            Bind::I64(self.created_at),
            Bind::I64(self.due_sort),
            Bind::I64(self.priority_rank),
            Bind::I64(self.position_tx),
            Bind::I64(self.position_seq),
        ]
    }
}

/// Whether an event may move its ticket in the list's orders: every event but a read (which
/// changes no sort key). A row's position (`tickets`, `ticket_search`) is that of its ticket's
/// last such event: all that paging needs of it (migration 0009: a row at or before a
/// cursor's snapshot still has the keys it had then). A read then leaves every indexed column
/// of the row as it was, so PostgreSQL can update the row in place of the old one (a HOT
/// update) instead of adding an entry to each of its indexes, and leaves
/// `ticket_search` alone.
fn moves(event: &Event) -> bool {
    !matches!(event, Event::Read(_))
}

/// The `tickets` row of `t`, with the position of its last event that [`moves`] it.
fn ticket_binds(t: &Ticket, at: Position, recent: &RecentKeys) -> Result<Vec<Bind>, StoreError> {
    let bad = |what: String| StoreError::Corrupt(format!("tickets row of {}: {what}", t.id));
    let json = serde_json::to_string(t).map_err(|e| bad(e.to_string()))?;
    let (tx, seq) = tx_i64(at)?;
    let num = |v: u64| i64::try_from(v).map_err(|e| bad(e.to_string()));
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
        Bind::Text(recent.encode()),
    ])
}

/// PostgreSQL: a ticket's whole search row, from the text of every event it has had, with its
/// sort keys and position as of its last event (migration 0012).
const SEARCH_INSERT: &str = "INSERT INTO ticket_search (ticket_id, head, public_comments, \
     private_comments, last_activity_at, created_at, due_sort, priority_rank, position_tx, \
     position_seq)";
const SEARCH_ROW: &str = "(?, ?::tsvector, ?::tsvector, ?::tsvector, ?, ?, ?, ?, ?, ?)";

/// The values of [`SEARCH_ROW`] for ticket `t`, at `at`, whose events carried `text`, if that
/// text cannot reach [`PG_TEXT_BUDGET`] (see [`FRESH_TEXT_FACTOR`]); a ticket's that might is
/// applied comment by comment, where the budget cuts it as it always does.
fn search_binds(
    t: &Ticket,
    at: Position,
    text: &FreshText,
) -> Result<Option<Vec<Bind>>, StoreError> {
    if text.bytes.saturating_mul(FRESH_TEXT_FACTOR) > PG_TEXT_BUDGET as usize {
        return Ok(None);
    }
    let mut row = vec![
        Bind::Uuid(t.id),
        Bind::Vector(vector_text(&head_text(t))),
        Bind::Vector(vector_text(&search_text(&text.public.join("\n")))),
        Bind::Vector(vector_text(&search_text(&text.private.join("\n")))),
    ];
    row.extend(RowKeys::of(t, at)?.search_binds());
    Ok(Some(row))
}

#[async_trait]
impl Projection for TicketsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        // `ticket_search` on PostgreSQL, `ticket_fts` on SQLite (see migrations 0004).
        &["tickets", "ticket_cc", "ticket_search", "ticket_fts"]
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        // What the last batch left; the other tickets' rows are read.
        let started = self.kept.start(after, events);
        let mut tickets: HashMap<Uuid, TicketRow> = started.found.into_iter().collect();
        let rows = if started.to_read.is_empty() {
            Vec::new()
        } else {
            conn.fetch_rows_in::<(Uuid, String, String, i64, i64)>(
                "SELECT id, state, recent_keys, position_tx, position_seq FROM tickets \
                 WHERE id IN (…)",
                &started.to_read,
            )
            .await?
        };
        for (id, json, keys, tx, seq) in rows {
            let t: Ticket = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("ticket {id}'s row: {e}")))?;
            let row = TicketRow {
                t,
                recent: RecentKeys::parse(&keys)?,
                at: position_from(tx, seq)?,
            };
            tickets.insert(id, row);
        }
        // Fold in memory; the search text is written event by event, in order (each
        // statement depends on what the ticket's text holds so far); each ticket's row and CC
        // once, at the end.
        let pg = matches!(conn, Conn::Postgres(_));
        let mut fresh: HashMap<Uuid, FreshText> = HashMap::new();
        let mut pending: HashMap<Uuid, Vec<TextOp>> = HashMap::new();
        // The tickets the batch moved (see [`moves`]): their search rows get new keys.
        let mut moved: HashSet<Uuid> = HashSet::new();
        let mut order: Vec<Uuid> = Vec::new();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut cc: HashSet<Uuid> = HashSet::new();
        // SQLite: the search rows the batch writes, in order, written together below.
        let mut parts: Vec<(i64, String)> = Vec::new();
        for event in events {
            let recorded = decode(event)?;
            if TicketRow::has(tickets.get(&event.stream_id), event) {
                continue;
            }
            let prev = tickets.remove(&event.stream_id);
            let Some(row) = TicketRow::next(prev, event, &recorded)? else {
                continue;
            };
            let t = &row.t;
            match fresh.get_mut(&t.id) {
                // A ticket opened in this batch: its text is written once, below.
                Some(f) => f.add(&recorded.event),
                None if pg && matches!(recorded.event, Event::Opened(_)) => {
                    let mut f = FreshText::default();
                    f.add(&recorded.event);
                    fresh.insert(t.id, f);
                }
                // An older ticket's text changes: written after the loop, in one statement.
                None if pg => {
                    if let Some(op) = text_op(t, &recorded.event) {
                        pending.entry(t.id).or_default().push(op);
                    }
                }
                None => parts.extend(sqlite_part(t, &recorded.event, event.version)),
            }
            if cc_changed(&recorded.event) {
                cc.insert(t.id);
            }
            if moves(&recorded.event) {
                moved.insert(t.id);
            }
            if seen.insert(t.id) {
                order.push(t.id);
            }
            tickets.insert(t.id, row);
        }
        let mut rows = Vec::with_capacity(order.len());
        let mut members = Vec::new();
        for id in &order {
            // Every ticket in `order` was folded.
            let Some(row) = tickets.get(id) else {
                continue;
            };
            rows.push(row.binds()?);
            let t = &row.t;
            if cc.contains(id) {
                members.extend(
                    t.cc.iter()
                        .map(|m| vec![Bind::Uuid(t.id), Bind::Text(m.clone())]),
                );
            }
        }
        conn.insert_rows(TICKET_INSERT, rows, TICKET_UPSERT).await?;
        put_parts(conn, parts).await?;
        let mut texts = Vec::new();
        // Tickets whose search row the batch writes whole, keys included.
        let mut keyed: HashSet<Uuid> = HashSet::new();
        for id in &order {
            let (Some(f), Some(r)) = (fresh.get(id), tickets.get(id)) else {
                continue;
            };
            if let Some(row) = search_binds(&r.t, r.at, f)? {
                texts.push(row);
                keyed.insert(*id);
            } else {
                // So much text that the budget may cut it: event by event, as one at a time.
                let mut state: State = None;
                for event in events.iter().filter(|e| e.stream_id == *id) {
                    let recorded = decode(event)?;
                    state = evolve(state, &recorded);
                    if let Some(op) = state.as_ref().and_then(|t| text_op(t, &recorded.event)) {
                        pg_text(conn, *id, &op).await?;
                    }
                }
            }
        }
        conn.insert_rows_as(
            SEARCH_INSERT,
            SEARCH_ROW,
            texts,
            "ON CONFLICT (ticket_id) DO UPDATE SET head = excluded.head, \
             public_comments = excluded.public_comments, \
             private_comments = excluded.private_comments",
        )
        .await?;
        if pg {
            let mut keys = HashMap::with_capacity(order.len());
            for id in order.iter().filter(|id| !keyed.contains(id)) {
                // A ticket only read in the batch keeps its search row's keys.
                if let Some(r) = tickets.get(id).filter(|_| moved.contains(id)) {
                    keys.insert(*id, RowKeys::of(&r.t, r.at)?);
                }
            }
            // Text and keys in one update (it returns whose).
            keyed.extend(pg_text_batch(conn, &order, &pending, &keys).await?);
            // A ticket whose text went one op at a time: its search row's keys, after it.
            let mut rows = Vec::new();
            for id in order.iter().filter(|id| !keyed.contains(id)) {
                let Some(k) = keys.get(id) else {
                    continue;
                };
                let mut row = vec![Bind::Uuid(*id)];
                row.extend(k.search_binds());
                rows.push(row);
            }
            conn.insert_rows_as(
                "UPDATE ticket_search s SET last_activity_at = n.la, created_at = n.ca, \
                 due_sort = n.ds, priority_rank = n.pr, position_tx = n.tx, \
                 position_seq = n.seq FROM (",
                "(?, ?, ?, ?, ?, ?, ?)",
                rows,
                ") n (id, la, ca, ds, pr, tx, seq) WHERE s.ticket_id = n.id",
            )
            .await?;
        }
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
        self.kept.finish(started.rest, after, events, tickets);
        Ok(true)
    }

    fn forget(&self) {
        self.kept.forget();
    }

    fn bulk(&self) -> Option<Box<dyn Fold>> {
        Some(Box::<TicketsFold>::default())
    }
}

/// The bulk fold (PostgreSQL only, as is the bulk path): every ticket's state and the text its
/// events carried, in memory; the rows at the end, each ticket's once.
#[derive(Default)]
struct TicketsFold {
    /// Boxed: a table of a million states inline (hundreds of bytes each) was copied whole
    /// into fresh memory at each growth, and the page faults of those copies were most of the
    /// fold's system time (docs/PERFORMANCE.md, session 27).
    held: HashMap<Uuid, Box<Held>>,
    /// Tickets in the order they were opened, as the table gets them.
    order: Vec<Uuid>,
}

struct Held {
    row: TicketRow,
    text: FreshText,
}

impl Fold for TicketsFold {
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError> {
        if TicketRow::has(self.held.get(&event.stream_id).map(|h| &h.row), event) {
            return Ok(());
        }
        let prev = self.held.remove(&event.stream_id);
        let first = prev.is_none();
        let (prev, mut text) = match prev {
            Some(h) => {
                let Held { row, text } = *h;
                (Some(row), text)
            }
            None => (None, FreshText::default()),
        };
        let Some(row) = TicketRow::next(prev, event, recorded)? else {
            return Ok(());
        };
        text.add(&recorded.event);
        let id = row.t.id;
        if self.held.insert(id, Box::new(Held { row, text })).is_none() && first {
            self.order.push(id);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, out: &mut Sink<'_>) -> Result<Vec<Uuid>, StoreError> {
        let (mut tickets, mut cc, mut texts) = (
            CopyRows::default(),
            CopyRows::default(),
            CopyRows::default(),
        );
        let mut replay = Vec::new();
        for id in &self.order {
            let Some(h) = self.held.get(id) else {
                continue;
            };
            let Some(text) = search_binds(&h.row.t, h.row.at, &h.text)? else {
                // Its text may reach the budget: the batched path, comment by comment.
                replay.push(*id);
                continue;
            };
            texts.push(&text)?;
            tickets.push(&h.row.binds()?)?;
            // The batched path's conflict clause drops a member named twice, as PostgreSQL
            // holds it: `c\0c` and `c\u{FFFD}c` are one member there (`pg_text`).
            let members: std::collections::BTreeSet<_> =
                h.row.t.cc.iter().map(|m| crate::sql::pg_text(m)).collect();
            for m in members {
                cc.push(&[Bind::Uuid(h.row.t.id), Bind::Text(m.into_owned())])?;
            }
            // The search rows first: their vectors are the longest load.
            Step::copy_when(SEARCH_INSERT, &mut texts, CHUNK_BYTES).map_or(Ok(()), &mut *out)?;
            Step::copy_when(TICKET_INSERT, &mut tickets, CHUNK_BYTES).map_or(Ok(()), &mut *out)?;
            Step::copy_when(CC_INSERT, &mut cc, CHUNK_BYTES).map_or(Ok(()), &mut *out)?;
        }
        Step::copy_when(SEARCH_INSERT, &mut texts, 0).map_or(Ok(()), &mut *out)?;
        Step::copy_when(TICKET_INSERT, &mut tickets, 0).map_or(Ok(()), &mut *out)?;
        Step::copy_when(CC_INSERT, &mut cc, 0).map_or(Ok(()), &mut *out)?;
        Ok(replay)
    }
}

/// How much of a ticket's comments PostgreSQL indexes: bytes of the three vectors' text form
/// (larger than the words a tsvector holds). Past it, further comments are not searchable: a
/// vector over 1 MB would fail its event, and the projection with it, for good; and each
/// comment re-enters all the ticket's words into the GIN index (the row is rewritten), so
/// this also bounds what one comment costs. ~30,000 distinct words, where a long thread in
/// prose has a few thousand. The subject and description at their limits stay under 250 kB in
/// any script, so an edit keeps every vector under 1 MB too.
const PG_TEXT_BUDGET: i64 = 300_000;

/// A change to a ticket's PostgreSQL search row, from one event's own text.
enum TextOp {
    /// Opened: the row starts afresh, so replaying a stream over stale text cannot append its
    /// comments twice.
    Start(String),
    /// The subject or description changed: the head vector is replaced.
    Head(String),
    /// A comment: its words are added to its part, within [`PG_TEXT_BUDGET`].
    Comment { private: bool, text: String },
}

fn text_op(t: &Ticket, event: &Event) -> Option<TextOp> {
    match event {
        Event::Opened(_) => Some(TextOp::Start(head_text(t))),
        Event::Edited(e) if e.subject.is_some() || e.description.is_some() => {
            Some(TextOp::Head(head_text(t)))
        }
        Event::Commented(c) => Some(TextOp::Comment {
            private: c.visibility == Visibility::Private,
            text: search_text(&c.body),
        }),
        // A withdrawal's comment is a comment everyone who sees the ticket reads (§4.4, §6.3).
        Event::Withdrawn(w) => w.comment.as_ref().map(|c| TextOp::Comment {
            private: false,
            text: search_text(c),
        }),
        _ => None,
    }
}

/// Applies one [`TextOp`] to ticket `id`'s PostgreSQL search row.
async fn pg_text(conn: &mut Conn<'_>, id: Uuid, op: &TextOp) -> Result<(), StoreError> {
    match op {
        TextOp::Start(head) => {
            conn.execute(
                "INSERT INTO ticket_search (ticket_id, head, public_comments, private_comments) \
                 VALUES (?, ?::tsvector, '', '') \
                 ON CONFLICT (ticket_id) DO UPDATE SET head = excluded.head, \
                 public_comments = excluded.public_comments, \
                 private_comments = excluded.private_comments",
                &[Bind::Uuid(id), Bind::Text(vector_text(head))],
            )
            .await?;
        }
        TextOp::Head(head) => {
            conn.execute(
                "UPDATE ticket_search SET head = ?::tsvector WHERE ticket_id = ?",
                &[Bind::Text(vector_text(head)), Bind::Uuid(id)],
            )
            .await?;
        }
        TextOp::Comment { private, text } => {
            let column = if *private {
                "private_comments"
            } else {
                "public_comments"
            };
            conn.execute(
                &format!(
                    "UPDATE ticket_search s SET {column} = s.{column} || n.v \
                     FROM (SELECT ?::tsvector AS v) n \
                     WHERE s.ticket_id = ? AND octet_length(s.head::text) \
                     + octet_length(s.public_comments::text) \
                     + octet_length(s.private_comments::text) + octet_length(n.v::text) <= ?"
                ),
                &[
                    Bind::Text(vector_text(text)),
                    Bind::Uuid(id),
                    Bind::I64(PG_TEXT_BUDGET),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// PostgreSQL: the text changes of tickets opened before this batch, in one statement instead
/// of a round trip per comment (which, under load, is what bounded how fast the projection
/// kept up). A ticket's comments in the batch are added at once, as one vector of their texts
/// joined (the same words as one by one); its edits leave the last head. That gives the rows
/// of applying the events one by one whenever no comment could hit [`PG_TEXT_BUDGET`]: the
/// statement checks the row's size plus a bound on what each comment could add (each step of
/// the one-by-one path adds at most that, so each would have passed its own check). Tickets
/// whose ops mix heads and comments, or whose row fails the check, go one by one.
/// The same update writes the row's sort keys and position (`keys`, migration 0012), so the
/// row is not rewritten a second time for them, and writes them alone for every other ticket
/// of the batch whose row was there before it: one statement per batch rather than two. It
/// returns the tickets it updated; only the others get the keys' own update after it.
async fn pg_text_batch(
    conn: &mut Conn<'_>,
    order: &[Uuid],
    pending: &HashMap<Uuid, Vec<TextOp>>,
    keys: &HashMap<Uuid, RowKeys>,
) -> Result<HashSet<Uuid>, StoreError> {
    let mut rows = Vec::new();
    for id in order {
        let Some(k) = keys.get(id) else {
            continue;
        };
        // No text change: a row of NULLs and a zero bound, which writes the keys alone.
        let ops = pending.get(id).map_or(&[][..], Vec::as_slice);
        let heads_only = ops.iter().all(|op| matches!(op, TextOp::Head(_)));
        let comments_only = ops.iter().all(|op| matches!(op, TextOp::Comment { .. }));
        if !heads_only && !comments_only {
            continue;
        }
        let (mut head, mut public, mut private, mut bound) = (None, Vec::new(), Vec::new(), 0);
        for op in ops {
            match op {
                TextOp::Head(h) => head = Some(h.as_str()),
                TextOp::Comment { private: p, text } => {
                    bound += text.len().saturating_mul(FRESH_TEXT_FACTOR) + 1;
                    if *p {
                        private.push(text.as_str());
                    } else {
                        public.push(text.as_str());
                    }
                }
                TextOp::Start(_) => {}
            }
        }
        if bound > PG_TEXT_BUDGET as usize {
            continue;
        }
        let joined = |parts: Vec<&str>| (!parts.is_empty()).then(|| vector_text(&parts.join("\n")));
        let mut row = vec![
            Bind::Uuid(*id),
            Bind::OptText(head.map(vector_text)),
            Bind::OptText(joined(public)),
            Bind::OptText(joined(private)),
            Bind::I64(i64::try_from(bound).unwrap_or(i64::MAX)),
        ];
        row.extend(k.search_binds());
        rows.push(row);
    }
    // PostgreSQL only (a derived table with column names), so the rows go in as arrays.
    let updated: Vec<Uuid> = conn
        .rows_as(
            "UPDATE ticket_search s SET \
             head = coalesce(n.head::tsvector, s.head), \
             public_comments = CASE WHEN n.pub IS NULL THEN s.public_comments \
             ELSE s.public_comments || n.pub::tsvector END, \
             private_comments = CASE WHEN n.priv IS NULL THEN s.private_comments \
             ELSE s.private_comments || n.priv::tsvector END, \
             last_activity_at = n.la, created_at = n.ca, due_sort = n.ds, \
             priority_rank = n.pr, position_tx = n.tx, position_seq = n.seq \
             FROM (",
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
            &format!(
                ") n (id, head, pub, priv, bound, la, ca, ds, pr, tx, seq) \
                 WHERE s.ticket_id = n.id AND (n.bound = 0 \
                 OR octet_length(s.head::text) + octet_length(s.public_comments::text) \
                 + octet_length(s.private_comments::text) + n.bound <= {PG_TEXT_BUDGET}) \
                 RETURNING s.ticket_id"
            ),
        )
        .await?;
    let done: HashSet<Uuid> = updated.into_iter().collect();
    for id in order {
        if done.contains(id) {
            continue;
        }
        for op in pending.get(id).into_iter().flatten() {
            pg_text(conn, *id, op).await?;
        }
    }
    Ok(done)
}

/// SQLite: the search row an event writes, `(rowid, text)`: a row per part under a rowid made
/// of the ticket and the event, so replaying an event writes the same row again, and an edit
/// replaces the head in place.
fn sqlite_part(t: &Ticket, event: &Event, version: u64) -> Option<(i64, String)> {
    let (rowid, body) = match text_op(t, event)? {
        TextOp::Start(head) | TextOp::Head(head) => (fts_rowid(t.number, 0, false), head),
        TextOp::Comment { private, text } => (fts_rowid(t.number, version, private), text),
    };
    Some((rowid?, body))
}

/// The FTS5 rowid of a part (see `migrations/sqlite/0004_search.sql`): `None` past 2^31
/// tickets or 2^31 events in one ticket, which leaves that part unsearchable rather than the
/// projection stuck.
fn fts_rowid(number: u64, version: u64, private: bool) -> Option<i64> {
    const LIMIT: u64 = 1 << 31;
    if number >= LIMIT || version >= LIMIT {
        return None;
    }
    i64::try_from((number << 32) | (version << 1) | u64::from(private)).ok()
}

/// SQLite: writes search rows in few statements. Each replaces the row under its rowid, so of
/// several for one rowid (a head edited twice in a batch) only the last one counts.
async fn put_parts(conn: &mut Conn<'_>, parts: Vec<(i64, String)>) -> Result<(), StoreError> {
    let mut last: HashMap<i64, usize> = HashMap::with_capacity(parts.len());
    for (i, (rowid, _)) in parts.iter().enumerate() {
        last.insert(*rowid, i);
    }
    let rows: Vec<Vec<Bind>> = parts
        .into_iter()
        .enumerate()
        .filter(|(i, (rowid, _))| last.get(rowid) == Some(i))
        .map(|(_, (rowid, body))| vec![Bind::I64(rowid), Bind::Text(body)])
        .collect();
    conn.insert_rows("INSERT OR REPLACE INTO ticket_fts (rowid, body)", rows, "")
        .await
}

fn head_text(t: &Ticket) -> String {
    search_text(&format!("{}\n{}", t.subject, t.description))
}

/// Text as both indexes take it: lowercased here, so case folds the same whatever the
/// database's locale, with every character that is not part of a word blanked (control
/// characters, which PostgreSQL text cannot hold, punctuation, symbols). SQLite's tokenizer
/// splits words at punctuation; PostgreSQL's vectors are these very words ([`vector_text`]).
/// (PostgreSQL's text parser kept e-mail addresses, host names, paths, versions and hyphenated
/// words whole: `q=example` found `alice@example.com` on SQLite only.)
fn search_text(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if in_word(c) { c } else { ' ' })
        .collect()
}

/// Bytes a PostgreSQL text-search lexeme holds at most (its `MAXSTRLEN`).
const PG_LEXEME_MAX: usize = 2047;
/// Bytes of words a `tsvector`'s input may hold, repeats included: PostgreSQL refuses more than
/// 1 MB (`MAXSTRPOS`); this leaves room for the last word.
const PG_VECTOR_INPUT_MAX: usize = 1_000_000;

/// PostgreSQL: `text` of [`search_text`] (words between blanks) as the input of a `tsvector`,
/// which PostgreSQL reads as those very words, each once (`'b a b'::tsvector` is `'a' 'b'`),
/// and the query's words are the rows' very lexemes ([`TextQuery`]). No text parser: its idea
/// of a letter follows the database's locale (`C` takes every character beyond ASCII for
/// one), and over 1,000,000 tickets' vectors it spent 12 s of the server's CPU where this input
/// spends 3.5 (docs/PERFORMANCE.md, session 28). The words hold no quote, backslash or colon,
/// the input's syntax. Left out: a word longer than a lexeme can be (which the input refuses,
/// and `to_tsvector` skipped); a word of no letter or digit (a lone mark, such as an emoji's
/// variation selector), which no search looks for; and, of a text past
/// [`PG_VECTOR_INPUT_MAX`] (only an imported event's: the API bounds what one holds), every
/// word once its distinct words pass it, rather than a vector PostgreSQL refuses and a
/// projection stopped for good.
fn vector_text(text: &str) -> String {
    let kept = |w: &&str| w.len() <= PG_LEXEME_MAX && w.chars().any(char::is_alphanumeric);
    if text.len() <= PG_VECTOR_INPUT_MAX && text.split_whitespace().all(|w| kept(&w)) {
        return text.to_owned();
    }
    let mut seen = HashSet::new();
    let mut bytes = 0;
    let mut out = Vec::new();
    for w in text.split_whitespace().filter(kept) {
        if seen.insert(w) {
            bytes += w.len() + 1;
            if bytes > PG_VECTOR_INPUT_MAX {
                break;
            }
            out.push(w);
        }
    }
    out.join(" ")
}

/// Letters, digits and combining marks make words, as SQLite's tokenizer is told (`L* N* M*`):
/// a mark is part of its letter (`İ` lowercases to `i` and a combining dot; Devanagari's
/// virama joins the letters of one word).
fn in_word(c: char) -> bool {
    c.is_alphanumeric() || unicode_normalization::char::is_combining_mark(c)
}

/// `q` as typed: split on whitespace and control characters (what the API's bound on words
/// counts, so that a pasted address or path is one word however many it holds).
pub fn typed_words(q: &str) -> impl Iterator<Item = &str> {
    q.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
}

/// `q`'s words, each once: lowercased and split where the text is ([`search_text`]), so
/// `alice@example.com` is the three words `alice`, `example` and `com`, each to be found. A
/// typed word without a letter or digit stays as given, to find nothing.
pub fn words(q: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // A set beside the list: a 64 kB `q` of one-letter words is tens of thousands of them,
    // each compared with every one before (the bound on words is checked on what this returns).
    let mut seen: HashSet<String> = HashSet::new();
    for word in typed_words(q) {
        let word = word.to_lowercase();
        let parts: Vec<&str> = word
            .split(|c: char| !in_word(c))
            .filter(|p| !p.is_empty())
            .collect();
        let found = if parts.is_empty() {
            vec![word.clone()]
        } else {
            parts.into_iter().map(str::to_owned).collect()
        };
        for w in found {
            if seen.insert(w.clone()) {
                out.push(w);
            }
        }
    }
    out
}

/// One ticket as the read model has it (visibility is the caller's to check).
pub async fn get<'a>(
    reader: impl Into<Reader<'a>>,
    id: Uuid,
) -> Result<Option<Ticket>, StoreError> {
    let mut pooled = reader.into().acquire().await?;
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

impl View {
    /// The names `view=` takes, as `FromStr` reads them.
    pub const NAMES: &'static [&'static str] = &["mine", "cc", "org", "all"];
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

    /// The lists' default order, either way: what the organization's, the requester's and
    /// the assignee's indexes hold their tickets in (migrations 0016 - 0018).
    fn is_default_order(self) -> bool {
        matches!(self, Sort::LastActivityDesc | Sort::LastActivity)
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
    /// The last item's sort key as it stood at the snapshot, and its id.
    pub key: i64,
    pub id: Uuid,
    /// Where the paging session started (see [`crate::keys`]); `None` in cursors made before
    /// sessions kept their order, which page by the keys of now.
    pub from: Option<Snapshot>,
}

impl Cursor {
    /// Opaque to clients: hex of `sort|key|id|tx|seq|issued`.
    pub fn encode(&self) -> String {
        let mut text = format!("{}|{}|{}", self.sort.as_str(), self.key, self.id);
        if let Some(s) = &self.from {
            text.push_str(&format!("|{}|{}|{}", s.tx, s.seq, s.issued));
        }
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Past its lifetime, a cursor's session may no longer find the keys it started with.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.from
            .is_some_and(|s| micros(now).saturating_sub(s.issued) > CURSOR_TTL_MICROS)
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
        let rest: Vec<i64> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let from = match rest[..] {
            [] => None,
            [tx, seq, issued] => Some(Snapshot { tx, seq, issued }),
            _ => return None,
        };
        Some(Cursor {
            sort,
            key,
            id,
            from,
        })
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

impl ListQuery {
    /// The rows a page reads: one more than it shows tells whether another follows.
    fn rows(&self) -> i64 {
        i64::try_from(self.limit).unwrap_or(200) + 1
    }
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

/// Which SQL dialect a query is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(db: &Database) -> Self {
        match db {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }
}

/// What `q` asks of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TextQuery {
    /// No `q`: every ticket.
    Any,
    /// Only words without a letter or digit, which no text holds as a word (or, on
    /// PostgreSQL, a word longer than a lexeme, which no vector holds): no ticket.
    Nothing,
    /// Words of letters, digits and marks alone (see [`words`]), each a quoted `tsquery`
    /// lexeme, as the rows' vectors hold them ([`vector_text`]), each to be found in the whole
    /// text (`all`) or in the subject, description and public comments.
    Postgres { all: bool, words: Vec<String> },
    /// One FTS5 query per word, the word a quoted string (so `"`, `*`, `OR`, `NEAR`, `-`, `:`
    /// are text, not syntax).
    Sqlite(Vec<String>),
}

/// The text condition of `words`. A word with no letter or digit (`-`, `&`) is dropped: no
/// index holds one (SQLite's tokenizer drops it, [`vector_text`] leaves it out); the rest must
/// all appear, each in any visible part.
fn text_query(words: &[String], staff: bool, backend: Backend) -> TextQuery {
    if words.is_empty() {
        return TextQuery::Any;
    }
    let words: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    if words.is_empty() {
        return TextQuery::Nothing;
    }
    match backend {
        Backend::Postgres => {
            // The vectors' lexemes: words as [`words`] gives them (the API's are already),
            // lowercased and split where the text is, each of letters, digits and marks alone.
            let lexemes: Vec<String> = words
                .iter()
                .flat_map(|w| self::words(w))
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .collect();
            // No vector holds a word longer than a lexeme can be.
            if lexemes.iter().any(|w| w.len() > PG_LEXEME_MAX) {
                return TextQuery::Nothing;
            }
            TextQuery::Postgres {
                all: staff,
                words: lexemes,
            }
        }
        Backend::Sqlite => TextQuery::Sqlite(
            words
                .iter()
                .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
                .collect(),
        ),
    }
}

/// PostgreSQL: the condition on `ticket_search s` that each word is in the text the caller may
/// see. The whole text's expression is exactly that of the index (migrations 0007, 0008), so
/// every word is a key of one GIN scan that intersects the words' posting lists itself; for a
/// customer (`all` false), each match is then checked against the text without the private
/// comments.
fn pg_text_condition(words: &[String], all: bool) -> (String, Vec<Bind>) {
    const WHOLE: &str = "(s.head || s.public_comments || s.private_comments)";
    const PUBLIC: &str = "(s.head || s.public_comments)";
    let mut sql = vec![format!("{WHOLE} @@ ?::tsquery"); words.len()].join(" AND ");
    // The words are letters, digits and marks ([`text_query`]); quoted all the same.
    let lexeme =
        |w: &String| Bind::Text(format!("'{}'", w.replace('\\', "\\\\").replace('\'', "''")));
    let mut binds: Vec<Bind> = words.iter().map(lexeme).collect();
    if !all {
        for w in words {
            sql.push_str(&format!(" AND {PUBLIC} @@ ?::tsquery"));
            binds.push(lexeme(w));
        }
    }
    (sql, binds)
}

/// How a search finds its tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextPlan {
    /// [`TextPlan::FromIndex`] when the words are expected in at most [`FROM_INDEX_MAX`]
    /// tickets (PostgreSQL: the planner's estimate; SQLite: the rarest word's count of parts,
    /// counted up to one more than that), else [`TextPlan::Walk`]. SQLite refines both: see
    /// [`TextPlan::FromIndexAll`] and [`TextPlan::WalkWithSet`].
    #[default]
    Auto,
    /// Every match from the text index first, then just those tickets filtered, sorted and
    /// paged: the way for rare words. (SQLite: the rarest word's matches, the other words
    /// checked per ticket.)
    FromIndex,
    /// SQLite: every word's matches from the text index, intersected, then those tickets
    /// filtered, sorted and paged: the way when no word is far more common than the rarest
    /// (a check per ticket is an FTS5 query of its own, about 50 µs; a word's matches cost
    /// about 0.2 µs each). PostgreSQL: as [`TextPlan::FromIndex`].
    FromIndexAll,
    /// For common words: walk the list in its order and check each ticket's text until the
    /// page is full. (PostgreSQL: what the planner then picks, usually this.)
    Walk,
    /// SQLite: walk the list in its order, testing each ticket against the rarest word's
    /// tickets (read from the index once) and checking the other words per ticket for those
    /// only: the way when the rarest word is common but not everywhere. PostgreSQL: as
    /// [`TextPlan::Walk`].
    WalkWithSet,
}

impl TextPlan {
    fn reads_the_index_first(self) -> bool {
        matches!(self, TextPlan::FromIndex | TextPlan::FromIndexAll)
    }
}

/// SQLite: a walk tests its rarest word against that word's tickets read from the index when
/// it is in at most this many parts ([`TextPlan::WalkWithSet`]), rather than by a check per
/// ticket. Measured at 1,000,000 tickets: "printer jams" (45,301 and 753,221 parts) took 2.3 s
/// walking with a check per ticket per word, 9 ms walking with the set.
const WALK_SET_MAX: i64 = 100_000;

/// SQLite: a word whose matches (parts) number at most this many times the rarest word's is
/// read from the index too ([`TextPlan::FromIndexAll`]) rather than checked ticket by ticket.
/// Measured at 100,000 tickets: "printer jams" (4,534 and 75,312 parts) took 120 ms checked
/// per ticket and 18 ms intersected; the break-even is about 240.
const ALL_FROM_INDEX_RATIO: i64 = 100;

/// Up to this many expected matches, a search starts from the text index. Measured at
/// 1,000,000 tickets (2 shared cores, warm cache): a word in 3,000 tickets took 20–30 ms from
/// the index and 100–150 ms walking; one in 8,000 took 50–120 ms from the index and 30–50 ms
/// walking. PostgreSQL's planner, left alone, walks for the first too: it rates a probe of
/// the text per ticket far cheaper than it is.
pub const FROM_INDEX_MAX: i64 = 5_000;

/// Which rows of a list a query reads, and what of them (see [`crate::keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A first page: each row's state, and the `tickets` checkpoint the page was read at.
    First,
    /// A page by the keys of now (a cursor without a snapshot): each row's state.
    Plain,
    /// The page among tickets whose row is at or before the snapshot `(tx, seq)`, whose keys
    /// are still the snapshot's: each row's state, and two NULLs (see `Part::Changed`).
    Unchanged(i64, i64),
    /// Every ticket changed since the snapshot, unordered: state, key now, and recent keys.
    Changed(i64, i64),
}

/// The `tickets` checkpoint, as two columns of a list query's rows: one statement reads the
/// rows and the checkpoint they are at, since a batch commits both together.
const CHECKPOINT_COLUMNS: &str =
    ", (SELECT c.position_tx FROM projection_checkpoints c WHERE c.name = 'tickets'), \
     (SELECT c.position_seq FROM projection_checkpoints c WHERE c.name = 'tickets')";

/// The ticket at hand has the viewer (the placeholder) on its CC.
const IN_CC: &str = " AND EXISTS (SELECT 1 FROM ticket_cc c WHERE c.ticket_id = tickets.id \
                     AND c.member = ?)";

/// The SQL and binds of a list query; the first `limit + 1` rows tell whether a page follows.
fn list_sql(
    q: &ListQuery,
    backend: Backend,
    text: TextQuery,
    plan: TextPlan,
    part: Part,
) -> (String, Vec<Bind>) {
    // A common table expression comes first in the text, and so do its placeholders.
    let mut with = String::new();
    let mut with_binds = Vec::new();
    let me = &q.viewer.id;
    // The conditions on `tickets` (visibility, view, filters), then the text's; the select
    // list and the table they apply to come last: both depend on the plan.
    let mut sql = String::new();
    // PostgreSQL, from the text index: rank the matches by their sort keys and read whole rows
    // for the page only.
    let mut rank_first = false;
    let mut binds = Vec::new();
    let mut visible = None;
    // CONTRACT §5: a customer sees what they requested, are CC'd on, or (org-wide) their org's.
    if q.viewer.role != Role::Agent && q.viewer.role != Role::Admin {
        match q.viewer.role {
            Role::Auditor => {}
            // Their own requests, or those they are CC'd on: the view itself admits only
            // tickets they may see, and a second set of ids would cost more than the query
            // ("my overdue requests" read every ticket of the customer twice).
            Role::Customer if matches!(q.view, View::Mine | View::Cc) => {}
            // Set below, once the text's plan is known.
            Role::Customer => visible = Some(Visible::of(&q.viewer, q.sort)),
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
            sql.push_str(IN_CC);
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
    // A literal, not a placeholder: the planner can then use the indexes on active tickets
    // (SQLite: partial, migration 0006; PostgreSQL: led by `active`, migration 0016) in a
    // generic plan too. On PostgreSQL a status filter says it too, when its statuses agree.
    let implied = match backend {
        Backend::Postgres if q.active.is_none() && q.overdue != Some(true) => {
            statuses_active(&q.statuses)
        }
        _ => None,
    };
    match q.active.or(implied) {
        Some(true) => sql.push_str(" AND active = 1"),
        Some(false) => sql.push_str(" AND active = 0"),
        None => {}
    }
    // Whether the list admits one value of `active` only (overdue says `active = 1` below).
    let one_kind = q.active.or(implied).is_some() || q.overdue == Some(true);
    if let Some(org) = &q.org {
        sql.push_str(" AND org = ?");
        binds.push(Bind::Text(org.clone()));
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
    // With no condition on `tickets` (staff, every ticket, no filter), a search from the text
    // index ranks its matches by the keys their `ticket_search` rows carry (migration 0012), as
    // `m`'s columns of the same names; otherwise by the copy of the keys in the `tickets`
    // primary key (migrations 0007, 0010), a probe per match.
    let mut table = "tickets";
    let searching = text != TextQuery::Any;
    match text {
        TextQuery::Any => {}
        TextQuery::Nothing => sql.push_str(" AND 1 = 0"),
        TextQuery::Postgres { all, words } => {
            let (cond, cond_binds) = pg_text_condition(&words, all);
            if plan.reads_the_index_first() && sql.is_empty() && visible.is_none() {
                table = "m";
                with = format!(
                    "WITH m AS MATERIALIZED (SELECT s.ticket_id AS id, s.last_activity_at, \
                     s.created_at, s.due_sort, s.priority_rank, s.position_tx, s.position_seq \
                     FROM ticket_search s WHERE {cond}) "
                );
                with_binds = cond_binds;
                rank_first = true;
            } else if plan.reads_the_index_first() {
                // MATERIALIZED: computed once, from the indexes, before any ticket is read.
                with = format!(
                    "WITH m AS MATERIALIZED (SELECT s.ticket_id FROM ticket_search s \
                     WHERE {cond}) "
                );
                with_binds = cond_binds;
                sql.push_str(" AND id IN (SELECT ticket_id FROM m)");
                rank_first = true;
            } else {
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM ticket_search s \
                     WHERE s.ticket_id = tickets.id AND {cond})"
                ));
                binds.extend(cond_binds);
            }
        }
        // The first word's parts, from the index alone (the ticket is in the rowid); each other
        // word (every word, walking) checked in the index within the ticket's rowids.
        TextQuery::Sqlite(phrases) => {
            let public = if staff(&q.viewer) {
                ""
            } else {
                " AND ticket_fts.rowid & 1 = 0"
            };
            let from_index = match plan {
                TextPlan::FromIndexAll => phrases.len(),
                TextPlan::FromIndex | TextPlan::WalkWithSet => 1,
                TextPlan::Auto | TextPlan::Walk => 0,
            };
            // `+number`: a test of each ticket the walk reaches, not an index to start from.
            let number = if plan == TextPlan::WalkWithSet {
                "+number"
            } else {
                "number"
            };
            let (sets, check) = phrases.split_at(from_index.min(phrases.len()));
            for phrase in sets {
                sql.push_str(&format!(
                    " AND {number} IN (SELECT ticket_fts.rowid >> 32 FROM ticket_fts \
                     WHERE ticket_fts MATCH ?{public})"
                ));
                binds.push(Bind::Text(phrase.clone()));
            }
            for phrase in check {
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM ticket_fts WHERE ticket_fts MATCH ? \
                     AND ticket_fts.rowid BETWEEN tickets.number << 32 \
                     AND (tickets.number << 32) | 4294967295\
                     {public})"
                ));
                binds.push(Bind::Text(phrase.clone()));
            }
        }
    }
    // Disjoint conditions whose union is what the list admits, each walked on its own and
    // merged (PostgreSQL; not for a search ranked from the text index, nor for the tickets
    // changed since a snapshot, which are few): a customer's tickets, each part from its own
    // index (requester, organization, CC) rather than as a set of ids each read by its key
    // (at 1 M tickets an org-wide customer's list: p50 0.46x); or both values of `active`.
    let mut parts: Vec<Branch> = Vec::new();
    // (Only a search from the text index makes a CTE, and it ranks first: branches need none.)
    let apart = backend == Backend::Postgres && !rank_first && !matches!(part, Part::Changed(..));
    // One owner's tickets (an organization's, a customer's requests, an agent's assigned
    // tickets) have an index of their own in the default order, which a walk of the list
    // takes; in another order a sort index walked for them tests every ticket on the way (at
    // 1 M tickets, 5,000 an organization, an agent's `org=` list by another key: p50 25 ms,
    // p99 2.8 s), and read whole they cost a heap row each: they are ranked from their own
    // index instead (migration 0018).
    let one_owner = q.org.is_some() || matches!(q.view, View::Org | View::Mine);
    let read = if one_owner {
        Read::of_owner(q.sort)
    } else {
        Read::Walk
    };
    let col = q.sort.column();
    // Both values of `active`, each a range of an index that leads with it (migration 0016).
    let kinds = |cond: String, binds: Vec<Bind>, read: Read| -> Vec<Branch> {
        if one_kind {
            vec![Branch { cond, binds, read }]
        } else {
            [0, 1]
                .map(|a| Branch {
                    cond: format!("{cond} AND active = {a}"),
                    binds: binds.clone(),
                    read,
                })
                .into()
        }
    };
    if let Some(v) = visible {
        // A search tests its words on the ids first, and reads the rows of the matches only.
        if apart && !searching {
            for b in v.parts {
                if b.read == Read::Walk {
                    parts.extend(kinds(b.cond, b.binds, b.read));
                } else {
                    parts.push(b);
                }
            }
        } else {
            sql.push_str(&v.whole.0);
            binds.extend(v.whole.1);
        }
    } else if apart && (!one_kind || read == Read::Ranked) {
        // PostgreSQL's sort indexes lead with `active` (migration 0016): a list that admits
        // both is two walks, one per value.
        parts = kinds(String::new(), vec![], read);
    }
    match part {
        Part::Unchanged(tx, seq) => {
            sql.push_str(" AND (position_tx, position_seq) <= (?, ?)");
            binds.extend([Bind::I64(tx), Bind::I64(seq)]);
        }
        Part::Changed(tx, seq) => {
            // Their keys of then are computed from `recent_keys`; the caller filters and sorts.
            sql.push_str(" AND (position_tx, position_seq) > (?, ?)");
            binds.extend([Bind::I64(tx), Bind::I64(seq)]);
            with_binds.extend(binds);
            return (
                format!("{with}SELECT state, {col}, recent_keys FROM {table} WHERE 1 = 1{sql}"),
                with_binds,
            );
        }
        Part::First | Part::Plain => {}
    }
    let checkpoint = match part {
        Part::First => CHECKPOINT_COLUMNS,
        Part::Unchanged(..) => ", CAST(NULL AS bigint), CAST(NULL AS text)",
        _ => "",
    };
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
    let order = |of: &str| format!(" ORDER BY {of}{col} {dir}, {of}id {dir}");
    let limit = Bind::I64(q.rows());
    if !parts.is_empty() {
        // Each walk stops at a page's worth; the merge keeps the first of them all.
        let walks: Vec<String> = parts
            .iter()
            .map(|Branch { cond, read, .. }| {
                // `+ 0`: an expression no index holds, so no index is walked for its order.
                let by = if *read == Read::Walk {
                    order("")
                } else {
                    format!(" ORDER BY {col} + 0 {dir}, id {dir}")
                };
                if *read == Read::Ranked {
                    format!(
                        "(SELECT t.state, k.{col}, k.id FROM (SELECT id, {col} FROM tickets \
                             WHERE 1 = 1{sql}{cond}{by} LIMIT ?) k JOIN tickets t USING (id))"
                    )
                } else {
                    format!(
                        "(SELECT state, {col}, id FROM tickets WHERE 1 = 1{sql}{cond}{by} \
                             LIMIT ?)"
                    )
                }
            })
            .collect();
        let sql = format!(
            "SELECT state{checkpoint} FROM ({}) u{} LIMIT ?",
            walks.join(" UNION ALL "),
            order("u.")
        );
        let mut all = Vec::new();
        for b in parts {
            all.extend(binds.iter().cloned());
            all.extend(b.binds);
            all.push(limit.clone());
        }
        all.push(limit);
        return (sql, all);
    }
    let mut sql = format!(" FROM {table} WHERE 1 = 1{sql}");
    sql.push_str(&order(""));
    sql.push_str(" LIMIT ?");
    binds.push(limit);
    with_binds.extend(binds);
    let sql = if rank_first {
        format!(
            "{with}, page AS (SELECT id, {col}{sql}) \
             SELECT tickets.state{checkpoint} FROM page JOIN tickets USING (id){}",
            order("page.")
        )
    } else {
        format!("{with}SELECT state{checkpoint}{sql}")
    };
    (sql, with_binds)
}

/// The tickets a customer may see (CONTRACT §5): those they requested, are CC'd on, or (when
/// org-wide) their organization's.
struct Visible {
    /// As one condition: a set of ids from the indexes (requester, CC member, org), not an OR
    /// over every ticket: a customer sees a few hundred tickets out of millions.
    whole: (String, Vec<Bind>),
    /// As disjoint conditions, each served by one index, whose union is the same tickets.
    parts: Vec<Branch>,
}

/// One of the disjoint conditions a PostgreSQL list is read in, the branches merged by the
/// sort key.
struct Branch {
    cond: String,
    binds: Vec<Bind>,
    read: Read,
}

/// How a [`Branch`] is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Walked in the sort's order on an index that holds it, stopped at a page.
    Walk,
    /// Read whole and sorted: a few tickets (a customer's CCs), each read by its key.
    Whole,
    /// Its ids ranked by an index-only scan of an index holding every column a list filters
    /// or sorts on (the organization's, the requester's, the assignee's: migration 0018), then
    /// the rows of the page alone read: read whole, the heap row of each of its tickets was
    /// fetched to sort them (at 1 M tickets an org-wide customer's list by another key: p50
    /// 44 ms).
    Ranked,
}

impl Read {
    /// One owner's tickets (an organization's, a requester's, an assignee's) in `sort`: their
    /// own index holds them in the default order only.
    fn of_owner(sort: Sort) -> Self {
        if sort.is_default_order() {
            Read::Walk
        } else {
            Read::Ranked
        }
    }
}

impl Visible {
    /// For a list in `sort`. A part whose index holds its tickets of one value of `active` in
    /// the default order (`last_activity_at, id`: the organization's, migration 0017, and the
    /// requester's, migration 0016) is walked when the list is in that order. Any other part
    /// is small, but the planner, which cannot know how its tickets fall in the sort's order,
    /// would walk a sort index testing each row (at 1 M tickets an organization with no active
    /// ticket made `active=true&sort=due` read 300,000 of them): the organization's and the
    /// requester's are ranked from their indexes, the CCs read whole; each costs what the
    /// customer sees.
    fn of(viewer: &Actor, sort: Sort) -> Self {
        let branch = |cond: String, binds: Vec<Bind>, owned: bool| Branch {
            cond,
            binds,
            read: if owned {
                Read::of_owner(sort)
            } else {
                Read::Whole
            },
        };
        let me = Bind::Text(viewer.id.clone());
        let mut whole = String::from(
            " AND id IN (SELECT id FROM tickets WHERE requester = ? \
             UNION SELECT ticket_id FROM ticket_cc WHERE member = ?",
        );
        let mut whole_binds = vec![me.clone(), me.clone()];
        let parts = match (viewer.org_wide, &viewer.org) {
            (true, Some(org)) => {
                let org = Bind::Text(org.clone());
                whole.push_str(" UNION SELECT id FROM tickets WHERE org = ?");
                whole_binds.push(org.clone());
                vec![
                    branch(" AND org = ?".to_owned(), vec![org.clone()], true),
                    branch(
                        " AND requester = ? AND org IS DISTINCT FROM ?".to_owned(),
                        vec![me.clone(), org.clone()],
                        true,
                    ),
                    branch(
                        format!(" AND requester <> ? AND org IS DISTINCT FROM ?{IN_CC}"),
                        vec![me.clone(), org, me],
                        false,
                    ),
                ]
            }
            _ => vec![
                branch(" AND requester = ?".to_owned(), vec![me.clone()], true),
                branch(
                    format!(" AND requester <> ?{IN_CC}"),
                    vec![me.clone(), me],
                    false,
                ),
            ],
        };
        whole.push(')');
        Self {
            whole: (whole, whole_binds),
            parts,
        }
    }
}

/// Whether every status of a filter is active (`Some(true)`) or none is (`Some(false)`); `None`
/// for no filter or a mix.
fn statuses_active(statuses: &[Status]) -> Option<bool> {
    let first = statuses.first()?.is_active();
    statuses
        .iter()
        .all(|s| s.is_active() == first)
        .then_some(first)
}

/// Staff see every comment (CONTRACT §5).
fn staff(viewer: &Actor) -> bool {
    matches!(viewer.role, Role::Agent | Role::Admin | Role::Auditor)
}

/// The planner's estimate of how many tickets hold every word anywhere (the rows of the
/// index's condition alone; a customer's matches are among them), or `None` if `EXPLAIN` says
/// something unexpected. A customer's own check is left out: the planner has no statistics
/// for its expression and would guess it at a fixed fraction. An `EXPLAIN` that fails (its
/// statement timed out) fails the query: in the query's transaction, nothing after it could
/// run.
async fn pg_estimate(conn: &mut Conn<'_>, words: &[String]) -> Result<Option<f64>, StoreError> {
    let (cond, binds) = pg_text_condition(words, true);
    let sql = format!("EXPLAIN SELECT 1 FROM ticket_search s WHERE {cond}");
    let lines: Vec<String> = conn.fetch_column_unprepared(&sql, &binds).await?;
    Ok(lines.first().and_then(|line| plan_rows(line)))
}

/// SQLite: the phrases, those in the fewest parts first (so the walk rejects a ticket at the
/// first check it can), each with the parts that hold it, counted only up to `cap`, which
/// stops counting a common word early.
async fn rarest_first(
    conn: &mut Conn<'_>,
    phrases: &[String],
    cap: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut counts = count_parts(conn, phrases, cap).await?;
    counts.sort_by_key(|&(i, n)| (n, i));
    Ok(counts
        .iter()
        .filter_map(|&(i, n)| Some((phrases.get(usize::try_from(i).ok()?)?.clone(), n)))
        .collect())
}

/// SQLite: how the plan of a search from the text index reads the words other than the rarest
/// (`counted`, rarest first, as [`rarest_first`] gives them): all from the index when none is
/// in more than [`ALL_FROM_INDEX_RATIO`] times the rarest's parts (counting further those
/// whose count stopped at its bound), else checked per ticket.
async fn sqlite_from_index(
    conn: &mut Conn<'_>,
    counted: &[(String, i64)],
) -> Result<TextPlan, StoreError> {
    let counts: Vec<i64> = counted.iter().map(|c| c.1).collect();
    let Some((bound, further)) = all_from_index(&counts) else {
        return Ok(TextPlan::FromIndex);
    };
    if !further.is_empty() {
        let phrases: Vec<String> = further.iter().map(|&i| counted[i].0.clone()).collect();
        let counts = count_parts(conn, &phrases, bound + 1).await?;
        if counts.iter().any(|&(_, n)| n > bound) {
            return Ok(TextPlan::FromIndex);
        }
    }
    Ok(TextPlan::FromIndexAll)
}

/// For [`sqlite_from_index`], from parts counted up to [`FROM_INDEX_MAX`] + 1 (rarest
/// first): `None` when some word is known to be too common to read from the index, else the
/// most parts a word may have, and which words (their places) need counting up to it.
fn all_from_index(counts: &[i64]) -> Option<(i64, Vec<usize>)> {
    let fewest = counts.first().copied().unwrap_or(0).max(1);
    let bound = fewest.saturating_mul(ALL_FROM_INDEX_RATIO);
    let mut further = Vec::new();
    for (i, &n) in counts.iter().enumerate().skip(1) {
        if n <= FROM_INDEX_MAX {
            if n > bound {
                return None;
            }
        } else if bound <= FROM_INDEX_MAX {
            return None;
        } else {
            further.push(i);
        }
    }
    Some((bound, further))
}

/// SQLite, a search whose rarest word is in more than [`FROM_INDEX_MAX`] parts: how far words
/// are counted to price its plans; a word in more is common enough that a walk meets it at
/// once.
const COUNT_MAX: i64 = 200_000;

/// SQLite: the cheaper of walking with the rarest word's tickets as a set to test
/// ([`TextPlan::WalkWithSet`]) and reading every word's tickets from the index
/// ([`TextPlan::FromIndexAll`]), priced from each word's parts (`counts`, rarest first,
/// counted up to [`COUNT_MAX`] + 1), the tickets there are, and the rows a page needs, with
/// words taken as independent; past [`WALK_SET_MAX`] parts for the rarest, a plain walk. The
/// costs were measured at 100,000 and 1,000,000 tickets (session 22): a match read from the
/// index about 0.2 µs, a ticket read by its number and sorted about 3 µs, a word checked in
/// one ticket (an FTS5 query) about 50 µs, a step of the walk about 0.5 µs.
fn walk_or_sets(counts: &[i64], tickets: i64, page: i64) -> TextPlan {
    const MATCH_US: f64 = 0.2;
    const ROW_US: f64 = 3.0;
    const CHECK_US: f64 = 50.0;
    const STEP_US: f64 = 0.5;
    let Some(&rarest) = counts.first() else {
        return TextPlan::Walk;
    };
    if rarest > WALK_SET_MAX {
        return TextPlan::Walk;
    }
    if counts.len() == 1 {
        return TextPlan::WalkWithSet;
    }
    let t = tickets.max(1) as f64;
    // How likely a ticket holds each word.
    let p: Vec<f64> = counts
        .iter()
        .map(|&n| (n as f64 / t).clamp(1.0 / t, 1.0))
        .collect();
    let meet = p.iter().product::<f64>() * t;
    let parts = counts.iter().sum::<i64>() as f64;
    let sets_us = parts * MATCH_US + meet * ROW_US;
    // The rarest word's tickets the walk checks for the others before the page is full.
    let others: f64 = p[1..].iter().product();
    let checked = (page as f64 / others).min(p[0] * t);
    let walk_us = rarest as f64 * MATCH_US
        + checked * CHECK_US * (counts.len() - 1) as f64
        + checked / p[0] * STEP_US;
    if sets_us < walk_us {
        TextPlan::FromIndexAll
    } else {
        TextPlan::WalkWithSet
    }
}

/// SQLite: each phrase's index in `phrases` and the parts that hold it, counted up to `cap`.
async fn count_parts(
    conn: &mut Conn<'_>,
    phrases: &[String],
    cap: i64,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let one = format!(
        "SELECT ?, (SELECT count(*) FROM (SELECT 1 FROM ticket_fts WHERE ticket_fts MATCH ? \
         LIMIT {cap}))"
    );
    let sql = vec![one.as_str(); phrases.len()].join(" UNION ALL ");
    let binds: Vec<Bind> = phrases
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [Bind::I64(i as i64), Bind::Text(p.clone())])
        .collect();
    conn.fetch_pairs(&sql, &binds).await
}

/// `rows=` of an `EXPLAIN` line such as `Seq Scan on t  (cost=0.00..1.10 rows=42 width=4)`.
fn plan_rows(line: &str) -> Option<f64> {
    line.split(" rows=").nth(1)?.split(' ').next()?.parse().ok()
}

/// The statement of a first page without `q` (a search is planned for its very words), with
/// its binds: what tests `EXPLAIN` to check that a list is read from an index in its order.
pub fn first_page_statement(q: &ListQuery, postgres: bool) -> (String, Vec<Bind>) {
    let backend = if postgres {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    list_sql(q, backend, TextQuery::Any, TextPlan::Walk, Part::First)
}

/// The text query and plan a search of `q` takes: `plan`, or, for [`TextPlan::Auto`], the one
/// chosen for its words.
async fn planned(
    conn: &mut Conn<'_>,
    q: &ListQuery,
    text: TextQuery,
    plan: TextPlan,
) -> Result<(TextQuery, TextPlan), StoreError> {
    Ok(match (text, plan) {
        (TextQuery::Postgres { all, words }, TextPlan::Auto) => {
            // Without an estimate, the planner decides as it would anyway.
            let plan = match pg_estimate(conn, &words).await? {
                Some(rows) if rows <= FROM_INDEX_MAX as f64 => TextPlan::FromIndex,
                _ => TextPlan::Walk,
            };
            (TextQuery::Postgres { all, words }, plan)
        }
        (TextQuery::Sqlite(phrases), TextPlan::Auto) => {
            let mut counted = rarest_first(conn, &phrases, FROM_INDEX_MAX + 1).await?;
            let plan = match counted.first() {
                Some((_, fewest)) if *fewest <= FROM_INDEX_MAX => {
                    sqlite_from_index(conn, &counted).await?
                }
                Some(_) => {
                    // Every word counted further, so the rarest is known and the plans priced.
                    counted = rarest_first(conn, &phrases, COUNT_MAX + 1).await?;
                    let tickets: Vec<i64> = conn
                        .fetch_column("SELECT coalesce(max(number), 0) FROM tickets", &[])
                        .await?;
                    let counts: Vec<i64> = counted.iter().map(|c| c.1).collect();
                    let tickets = tickets.first().copied().unwrap_or(0);
                    walk_or_sets(&counts, tickets, q.rows())
                }
                None => TextPlan::Walk,
            };
            let phrases = counted.into_iter().map(|(p, _)| p).collect();
            (TextQuery::Sqlite(phrases), plan)
        }
        other => other,
    })
}

/// The plan [`TextPlan::Auto`] takes for the words of `q` (tests check the choice).
pub async fn auto_plan(db: &Database, q: &ListQuery) -> Result<TextPlan, StoreError> {
    let backend = Backend::of(db);
    let text = text_query(&q.words, staff(&q.viewer), backend);
    let mut pooled = Pooled::acquire(db).await?;
    let mut conn = pooled.conn();
    Ok(planned(&mut conn, q, text, TextPlan::Auto).await?.1)
}

/// A page of the list and the cursor of the next one, if any.
pub async fn list<'a>(
    reader: impl Into<Reader<'a>>,
    q: &ListQuery,
) -> Result<(Vec<Ticket>, Option<Cursor>), StoreError> {
    list_with(reader, q, TextPlan::Auto).await
}

/// [`list`], with the way a search finds its tickets chosen rather than left to
/// [`TextPlan::Auto`] (tests run every plan against the same rows).
pub async fn list_with<'a>(
    reader: impl Into<Reader<'a>>,
    q: &ListQuery,
    plan: TextPlan,
) -> Result<(Vec<Ticket>, Option<Cursor>), StoreError> {
    let reader = reader.into();
    let backend = Backend::of(reader.db);
    let text = text_query(&q.words, staff(&q.viewer), backend);
    let mut pooled = reader.acquire().await?;
    let mut conn = pooled.conn();
    let (text, plan) = planned(&mut conn, q, text, plan).await?;
    // A search is planned for its very words (see `Conn::fetch_column_unprepared`).
    let persistent = q.words.is_empty();
    let (mut items, from) = match q.after {
        None => {
            let (sql, binds) = list_sql(q, backend, text, plan, Part::First);
            let rows: Vec<(String, Option<i64>, Option<i64>)> =
                conn.fetch_rows_with(&sql, &binds, persistent).await?;
            let from = rows.first().map(|r| Snapshot {
                tx: r.1.unwrap_or(0),
                seq: r.2.unwrap_or(0),
                issued: micros(q.now),
            });
            let items = rows
                .iter()
                .map(|r| keyed(q.sort, &r.0))
                .collect::<Result<_, _>>()?;
            (items, from)
        }
        Some(Cursor { from: None, .. }) => {
            let (sql, binds) = list_sql(q, backend, text, plan, Part::Plain);
            let rows: Vec<(String,)> = conn.fetch_rows_with(&sql, &binds, persistent).await?;
            let items = rows
                .iter()
                .map(|r| keyed(q.sort, &r.0))
                .collect::<Result<_, _>>()?;
            (items, None)
        }
        Some(Cursor {
            from: Some(snapshot),
            key,
            id,
            ..
        }) => {
            let page = SessionPage {
                snapshot,
                after: (key, id),
                persistent,
            };
            (page.read(&mut conn, q, text, plan).await?, Some(snapshot))
        }
    };
    let next = if items.len() > q.limit {
        items.truncate(q.limit);
        items.last().map(|(key, t)| Cursor {
            sort: q.sort,
            key: *key,
            id: t.id,
            from,
        })
    } else {
        None
    };
    Ok((items.into_iter().map(|(_, t)| t).collect(), next))
}

/// A `tickets` row's state, with its sort key of now.
fn keyed(sort: Sort, json: &str) -> Result<(i64, Ticket), StoreError> {
    let t: Ticket = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("a tickets row: {e}")))?;
    Ok((sort.key(&t), t))
}

/// A later page of a paging session (see [`crate::keys`]).
struct SessionPage {
    snapshot: Snapshot,
    /// The cursor: the last item's key at the snapshot, and its id.
    after: (i64, Uuid),
    persistent: bool,
}

impl SessionPage {
    /// The next `limit + 1` tickets after the cursor in the order of their keys at the
    /// snapshot, each with that key: the page among tickets unchanged since, read in that order
    /// from the indexes, merged with every ticket changed since, its key of then from
    /// `recent_keys`.
    async fn read(
        &self,
        conn: &mut Conn<'_>,
        q: &ListQuery,
        text: TextQuery,
        plan: TextPlan,
    ) -> Result<Vec<(i64, Ticket)>, StoreError> {
        let s = self.snapshot;
        let backend = match conn {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        };
        let unchanged = Part::Unchanged(s.tx, s.seq);
        let (unchanged, mut binds) = list_sql(q, backend, text.clone(), plan, unchanged);
        // Few tickets change within a walk: each is checked for the words, rather than all of
        // a search's matches read from the text index again.
        let changed = Part::Changed(s.tx, s.seq);
        let (changed, more) = list_sql(q, backend, text, TextPlan::Walk, changed);
        binds.extend(more);
        // One statement, so one snapshot: every ticket is in exactly one of the two parts.
        let sql = format!("SELECT * FROM ({unchanged}) a UNION ALL SELECT * FROM ({changed}) b");
        let rows: Vec<(String, Option<i64>, Option<String>)> =
            conn.fetch_rows_with(&sql, &binds, self.persistent).await?;
        let desc = q.sort.descending();
        let order = |a: (i64, Uuid), b: (i64, Uuid)| {
            if desc {
                b.cmp(&a)
            } else {
                a.cmp(&b)
            }
        };
        let mut items = Vec::with_capacity(rows.len());
        for (state, now, recent) in &rows {
            let (key, t) = keyed(q.sort, state)?;
            match (now, recent) {
                (Some(now), Some(recent)) => {
                    let key = RecentKeys::parse(recent)?.key_at(q.sort, *now, &s);
                    if order(self.after, (key, t.id)).is_lt() {
                        items.push((key, t));
                    }
                }
                _ => items.push((key, t)),
            }
        }
        items.sort_by(|a, b| order((a.0, a.1.id), (b.0, b.1.id)));
        items.truncate(q.limit + 1);
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_and_split_on_blanks_and_punctuation() {
        assert_eq!(words("  Printer  ON\tFire "), ["printer", "on", "fire"]);
        assert_eq!(words("Ärger\u{0}über"), ["ärger", "über"]);
        assert!(words(" \t\n").is_empty());
        assert_eq!(search_text("A\u{0}B\nÜ"), "a b ü");
        assert_eq!(
            words("Alice@Example.com /var/log v2.5 printer,toner don't"),
            ["alice", "example", "com", "var", "log", "v2", "5", "printer", "toner", "don", "t"]
        );
        assert_eq!(
            search_text("Alice@Example.com, /var/log; e-mail_x"),
            "alice example com   var log  e mail x"
        );
        // Punctuation alone stays a word (which finds nothing); any punctuation splits, and
        // each word comes once.
        assert_eq!(
            words("- café—naïve 10.0.0.1"),
            ["-", "café", "naïve", "10", "0", "1"]
        );
        // (The emoji's variation selector is a mark: a word of no letter, which finds nothing.)
        assert_eq!(search_text("«Größe» — 東京🖨️"), " größe    東京 \u{fe0f}");
        // Combining marks stay in their words.
        assert_eq!(words("İstanbul नमस्ते"), ["i\u{307}stanbul", "नमस्ते"]);
        assert_eq!(search_text("İstanbul, नमस्ते!"), "i\u{307}stanbul  नमस्ते ");
    }

    #[test]
    fn vectors_leave_out_words_longer_than_a_lexeme() {
        // 2,047 bytes, the most a lexeme holds; one more is too long.
        let long = format!("{}x", "é".repeat(1_023));
        assert_eq!(vector_text("a  b\nc"), "a  b\nc");
        assert_eq!(
            vector_text(&format!("a {long} b\n{long}x")),
            format!("a {long} b")
        );
        assert_eq!(vector_text("\u{fe0f} a \u{301} \u{301}b"), "a \u{301}b");
        // Past a vector input's bound, each word once, and none past the bound.
        let many = (0..400_000)
            .map(|i| format!("w{i} w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let vector = vector_text(&many);
        assert!(vector.len() <= PG_VECTOR_INPUT_MAX, "{}", vector.len());
        assert!(vector.starts_with("w0 w1 w2 "), "{}", &vector[..20]);
        assert_eq!(
            vector.split(' ').count(),
            vector.split(' ').collect::<HashSet<_>>().len()
        );
        let q = text_query(&["a".into(), format!("{long}x")], true, Backend::Postgres);
        assert_eq!(q, TextQuery::Nothing);
        let q = text_query(&["a".into(), long.clone()], true, Backend::Postgres);
        assert!(matches!(q, TextQuery::Postgres { .. }), "{q:?}");
    }

    #[test]
    fn postgres_words_are_lowercased_split_and_quoted_lexemes() {
        let q = text_query(
            &["Alice@Example".into(), "-".into()],
            false,
            Backend::Postgres,
        );
        let TextQuery::Postgres { all, words } = q else {
            panic!("{q:?}");
        };
        assert!(!all);
        assert_eq!(words, ["alice", "example"]);
        let (sql, binds) = pg_text_condition(&["it's".into(), "a\\b".into()], false);
        assert_eq!(sql.matches("?::tsquery").count(), 4, "{sql}");
        let quoted: Vec<&Bind> = binds.iter().take(2).collect();
        assert_eq!(
            quoted,
            [
                &Bind::Text("'it''s'".into()),
                &Bind::Text("'a\\\\b'".into())
            ]
        );
    }

    #[test]
    fn fts5_words_are_quoted_and_wordless_words_dropped() {
        let w = |q: &str| words(q);
        assert_eq!(
            text_query(&w(r#"a"b NEAR OR * -x c:d"#), true, Backend::Sqlite),
            TextQuery::Sqlite(
                [
                    r#""a""#,
                    r#""b""#,
                    r#""near""#,
                    r#""or""#,
                    r#""x""#,
                    r#""c""#,
                    r#""d""#
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
        assert_eq!(
            text_query(&w("Printer & 100%"), false, Backend::Postgres),
            TextQuery::Postgres {
                all: false,
                words: vec!["printer".to_owned(), "100".to_owned()]
            }
        );
        assert_eq!(text_query(&w(""), true, Backend::Sqlite), TextQuery::Any);
        assert_eq!(
            text_query(&w("_ - \""), true, Backend::Postgres),
            TextQuery::Nothing
        );
    }

    #[test]
    fn words_are_all_read_from_the_index_unless_one_is_far_more_common() {
        let capped = FROM_INDEX_MAX + 1;
        // One word, or others within the ratio: all from the index.
        assert_eq!(all_from_index(&[40]), Some((4_000, vec![])));
        assert_eq!(all_from_index(&[40, 4_000]), Some((4_000, vec![])));
        // A word past the ratio, counted or known past it by the bound: checked per ticket.
        assert_eq!(all_from_index(&[40, 4_001]), None);
        assert_eq!(all_from_index(&[40, capped]), None);
        assert_eq!(all_from_index(&[40, 100, capped]), None);
        // Past the first count's bound but maybe within the ratio: counted further.
        assert_eq!(
            all_from_index(&[2_000, 3_000, capped, capped]),
            Some((200_000, vec![2, 3]))
        );
        // No match at all still bounds the others by the ratio.
        assert_eq!(all_from_index(&[0, 100]), Some((100, vec![])));
        assert_eq!(all_from_index(&[0, 101]), None);
    }

    #[test]
    fn a_walk_is_priced_against_every_word_from_the_index() {
        let million = 1_000_000;
        // Two words that rarely meet: both from the index (the walk would check ~1,000
        // tickets of the rarer one).
        assert_eq!(
            walk_or_sets(&[45_301, 53_000], million, 51),
            TextPlan::FromIndexAll
        );
        // A word nearly everywhere: the walk meets it at once.
        assert_eq!(
            walk_or_sets(&[45_301, COUNT_MAX + 1], million, 51),
            TextPlan::WalkWithSet
        );
        // One word: the walk takes its tickets in order.
        assert_eq!(walk_or_sets(&[45_301], million, 51), TextPlan::WalkWithSet);
        // Too common to read as a set: a plain walk.
        assert_eq!(
            walk_or_sets(&[WALK_SET_MAX + 1, COUNT_MAX + 1], million, 51),
            TextPlan::Walk
        );
        assert_eq!(walk_or_sets(&[], million, 51), TextPlan::Walk);
    }

    #[test]
    fn explain_rows_are_read_from_the_top_line() {
        let line = "Bitmap Heap Scan on ticket_search s  (cost=24.91..2405.42 rows=633 width=4)";
        assert_eq!(plan_rows(line), Some(633.0));
        assert_eq!(
            plan_rows("Result  (cost=0.00..0.01 rows=1 width=4)"),
            Some(1.0)
        );
        assert_eq!(plan_rows("nothing here"), None);
    }

    #[test]
    fn fts_rowids_carry_ticket_version_and_visibility() {
        assert_eq!(fts_rowid(1, 0, false), Some(1 << 32));
        assert_eq!(fts_rowid(3, 5, true), Some((3 << 32) | (5 << 1) | 1));
        let top = (1u64 << 31) - 1;
        assert_eq!(fts_rowid(top, top, true), Some(i64::MAX));
        assert_eq!(fts_rowid(1 << 31, 1, false), None);
        assert_eq!(fts_rowid(1, 1 << 31, false), None);
    }

    /// The first page's snapshot is this projection's own checkpoint.
    #[test]
    fn a_first_page_reads_the_tickets_checkpoint() {
        assert_eq!(
            CHECKPOINT_COLUMNS
                .matches(&format!("c.name = '{NAME}'"))
                .count(),
            2
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let mut c = Cursor {
            sort: Sort::Due,
            key: i64::MAX,
            id: Uuid::now_v7(),
            from: None,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        c.from = Some(Snapshot {
            tx: 7,
            seq: -1,
            issued: 1_700_000_000_000_000,
        });
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        let id = c.id;
        for bad in [
            format!("due|1|{id}|1"),
            format!("due|1|{id}|1|2"),
            format!("due|1|{id}|1|2|x"),
            format!("due|1|{id}|1|2|3|4"),
        ] {
            assert_eq!(Cursor::decode(&hex(&bad)), None, "{bad}");
        }
        let issued = chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("time");
        assert!(!c.expired(issued + chrono::Duration::minutes(60)));
        assert!(c.expired(issued + chrono::Duration::minutes(61)));
        for bad in ["", "zz", "abc", "7c7c7c", &"00".repeat(200)] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
