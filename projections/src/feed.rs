//! The `feed` projection: a ticket's activity as feed entries (CONTRACT §6.3) and who read it
//! (§6.4), each from the decoded (upcast) event, so every schema reads the same.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::{Position, StoreError, StoredEvent};
use ticketd_domain::{Event, Recorded, Visibility};

use crate::bulk::{copy_all, Fold, Sink, Step};
use crate::sql::{Bind, Conn, CopyRows};
use crate::{micros, Projection, Reader};

pub const NAME: &str = "feed";

/// Feed entry types (§6.3), in the contract's order.
pub const TYPES: &[&str] = &[
    "opened",
    "comment",
    "status_changed",
    "edited",
    "escalated",
    "withdrawn",
    "read",
];

/// Feeds `ticket_feed` and `ticket_reads`.
pub struct FeedProjection;

const FEED_INSERT: &str =
    "INSERT INTO ticket_feed (ticket_id, version, kind, private, entry, event_id, at)";
const FEED_TAIL: &str = "ON CONFLICT (ticket_id, version) DO NOTHING";
const READ_INSERT: &str =
    "INSERT INTO ticket_reads (ticket_id, member, name, first_read_at, last_read_at)";
const READ_TAIL: &str = "ON CONFLICT (ticket_id, member) DO UPDATE \
     SET name = excluded.name, last_read_at = excluded.last_read_at";

/// An event's `ticket_feed` row and, for a read, its `ticket_reads` row.
fn rows(event: &StoredEvent) -> Result<(Vec<Bind>, Option<Vec<Bind>>), StoreError> {
    rows_of(event, &decode(event)?)
}

fn rows_of(
    event: &StoredEvent,
    recorded: &Recorded,
) -> Result<(Vec<Bind>, Option<Vec<Bind>>), StoreError> {
    let kind = kind_of(&recorded.event);
    let private =
        matches!(&recorded.event, Event::Commented(c) if c.visibility == Visibility::Private);
    let version = i64::try_from(event.version)
        .map_err(|e| StoreError::Corrupt(format!("version {}: {e}", event.version)))?;
    let entry = entry_text(recorded).map_err(|e| {
        StoreError::Corrupt(format!("the feed entry of event {}: {e}", event.event_id))
    })?;
    let feed = vec![
        Bind::Uuid(event.stream_id),
        Bind::I64(version),
        Bind::Text(kind.to_owned()),
        Bind::I64(i64::from(private)),
        Bind::Text(entry),
        Bind::Uuid(event.event_id),
        Bind::I64(at_micros(event)),
    ];
    let read = matches!(recorded.event, Event::Read(_)).then(|| {
        vec![
            Bind::Uuid(event.stream_id),
            Bind::Text(recorded.actor.id.clone()),
            Bind::OptText(recorded.actor.name.clone()),
            Bind::I64(at_micros(event)),
            Bind::I64(at_micros(event)),
        ]
    });
    Ok((feed, read))
}

/// The entry's type.
fn kind_of(event: &Event) -> &'static str {
    match event {
        Event::Opened(_) => "opened",
        Event::Commented(_) => "comment",
        Event::StatusChanged(_) => "status_changed",
        Event::Edited(_) => "edited",
        Event::Escalated(_) => "escalated",
        Event::Withdrawn(_) => "withdrawn",
        Event::Read(_) => "read",
    }
}

/// What an `opened` entry shows of its event.
#[derive(serde::Serialize)]
struct OpenedEntry<'a> {
    subject: &'a str,
    priority: ticketd_domain::Priority,
    channel: ticketd_domain::Channel,
}

/// A JSON object's members by key, each value's text as written.
type Members<'a> = BTreeMap<&'a str, &'a RawValue>;

/// Members every entry has; an event's own field of one of these names is left out.
const BASE: [&str; 5] = ["actor", "actor_name", "at", "id", "type"];

/// A row's `entry` as JSON text: the feed entry (§6.3) but for `id`, `at` and `type`, which
/// the row holds in columns of their own (see [`served`]): `actor`, `actor_name` and the
/// event's own fields but those named as a member every entry has, keys in order.
///
/// Written without building a `serde_json::Value` (one per event was a quarter of a
/// rebuild's CPU): the event is serialized once and only its top-level members (and an edit's
/// changes) are put in order; the objects inside them are in order already (`Change` is
/// `from`, `to`; `Fields` is a `BTreeMap`), which a test checks against a `Value` for every
/// event type.
fn entry_text(recorded: &Recorded) -> Result<String, serde_json::Error> {
    let own = match &recorded.event {
        Event::Opened(e) => serde_json::to_string(&OpenedEntry {
            subject: &e.subject,
            priority: e.priority,
            channel: e.channel,
        })?,
        Event::Read(_) => "{}".to_owned(),
        Event::Edited(e) => {
            let changes = serde_json::to_string(e)?;
            let changes: Members = serde_json::from_str(&changes)?;
            let mut out = String::from("{\"changes\":");
            write_object(&mut out, changes.iter().map(|(k, v)| (*k, v.get())))?;
            out.push('}');
            out
        }
        other => serde_json::to_string(other)?,
    };
    let actor = serde_json::to_string(&recorded.actor.id)?;
    let actor_name = serde_json::to_string(&recorded.actor.name)?;
    let fields: Members = serde_json::from_str(&own)?;
    let mut all: Vec<(&str, &str)> = vec![("actor", &actor), ("actor_name", &actor_name)];
    all.extend(
        fields
            .iter()
            .filter(|(k, _)| !BASE.contains(k))
            .map(|(k, v)| (*k, v.get())),
    );
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(own.len() + 64);
    write_object(&mut out, all.into_iter())?;
    Ok(out)
}

/// The feed entry a row holds: its `entry` with the event's `id`, `at` (the row's `event_id`
/// and `at`) and `type` (its `kind`) put back. A row written before migration 0021
/// (PostgreSQL; SQLite views: 0005) leaves both columns NULL: its `entry` is whole.
fn served(entry: &str, kind: &str, id: Option<Uuid>, at: Option<i64>) -> Result<Value, String> {
    let columns = match (id, at) {
        (Some(id), Some(at)) => Some((id, at)),
        (None, None) => None,
        _ => return Err("one of event_id and at is NULL".to_owned()),
    };
    let mut entry: Value = serde_json::from_str(entry).map_err(|e| e.to_string())?;
    if let (Some((id, at)), Value::Object(members)) = (columns, &mut entry) {
        let at = DateTime::from_timestamp_micros(at).ok_or_else(|| format!("time {at}"))?;
        let at = serde_json::to_value(at).map_err(|e| e.to_string())?;
        members.insert("id".to_owned(), Value::String(id.to_string()));
        members.insert("at".to_owned(), at);
        members.insert("type".to_owned(), Value::String(kind.to_owned()));
    }
    Ok(with_every_member(entry))
}

/// `{"k":v,…}` of members in the order given, each value's text as it is.
fn write_object<'a>(
    out: &mut String,
    members: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), serde_json::Error> {
    out.push('{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k)?);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    Ok(())
}

fn at_micros(e: &StoredEvent) -> i64 {
    micros(e.recorded_at)
}

#[async_trait]
impl Projection for FeedProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["ticket_feed", "ticket_reads"]
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        _after: Option<Position>,
        events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        let mut entries = Vec::with_capacity(events.len());
        let mut reads = Reads::default();
        for event in events {
            let (entry, read) = rows(event)?;
            entries.push(entry);
            reads.add(read);
        }
        conn.insert_rows(FEED_INSERT, entries, FEED_TAIL).await?;
        conn.insert_rows(READ_INSERT, reads.rows, READ_TAIL).await?;
        Ok(true)
    }

    fn bulk(&self) -> Option<Box<dyn Fold>> {
        Some(Box::<FeedFold>::default())
    }
}

/// `ticket_reads` rows of several events: per (ticket, reader), the first read opens the row,
/// the last one sets the name and latest read, as one event at a time would.
#[derive(Default)]
struct Reads {
    rows: Vec<Vec<Bind>>,
    index: HashMap<(Uuid, String), usize>,
}

impl Reads {
    fn add(&mut self, read: Option<Vec<Bind>>) {
        let Some(read) = read else { return };
        let key = match (&read[0], &read[1]) {
            (Bind::Uuid(t), Bind::Text(m)) => (*t, m.clone()),
            _ => return,
        };
        match self.index.get(&key) {
            Some(&i) => {
                self.rows[i][2] = read[2].clone();
                self.rows[i][4] = read[4].clone();
            }
            None => {
                self.index.insert(key, self.rows.len());
                self.rows.push(read);
            }
        }
    }
}

/// The bulk fold: feed entries stream out as they come; reads are merged in memory.
#[derive(Default)]
struct FeedFold {
    entries: CopyRows,
    reads: Reads,
}

impl Fold for FeedFold {
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError> {
        let (entry, mut read) = rows_of(event, recorded)?;
        self.entries.push(&entry)?;
        // Merged as PostgreSQL holds the reader (the fold is its bulk load): there `m\0` and
        // `m\u{FFFD}` are one reader, whose row the batched path's conflict clause updates.
        if let Some(Bind::Text(member)) = read.as_mut().and_then(|r| r.get_mut(1)) {
            if let std::borrow::Cow::Owned(held) = crate::sql::pg_text(member) {
                *member = held;
            }
        }
        self.reads.add(read);
        Ok(())
    }

    fn ready(&mut self, min: usize) -> Vec<Step> {
        Step::copy_when(FEED_INSERT, &mut self.entries, min)
            .into_iter()
            .collect()
    }

    fn finish(mut self: Box<Self>, out: &mut Sink<'_>) -> Result<Vec<Uuid>, StoreError> {
        self.ready(0).into_iter().try_for_each(&mut *out)?;
        copy_all(READ_INSERT, self.reads.rows, out)?;
        Ok(Vec::new())
    }
}

/// A ticket's feed, oldest first: entries of `types` (all but `read` when empty), without
/// private ones unless `include_private`.
pub async fn feed<'a>(
    reader: impl Into<Reader<'a>>,
    ticket: Uuid,
    types: &[String],
    include_private: bool,
) -> Result<Vec<Value>, StoreError> {
    let mut sql =
        String::from("SELECT entry, kind, event_id, at FROM ticket_feed WHERE ticket_id = ?");
    let mut binds = vec![Bind::Uuid(ticket)];
    if types.is_empty() {
        sql.push_str(" AND kind <> 'read'");
    } else {
        sql.push_str(" AND kind IN (");
        for (i, t) in types.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            binds.push(Bind::Text(t.clone()));
        }
        sql.push(')');
    }
    if !include_private {
        sql.push_str(" AND private = 0");
    }
    sql.push_str(" ORDER BY version");
    let mut pooled = reader.into().acquire().await?;
    let rows: Vec<(String, String, Option<Uuid>, Option<i64>)> =
        pooled.conn().fetch_four(&sql, &binds).await?;
    rows.into_iter()
        .map(|(entry, kind, id, at)| served(&entry, &kind, id, at))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(format!("a ticket_feed row of {ticket}: {e}")))
}

/// The members §6.3 names for an entry's type that its event may leave out (a status change
/// without a reason, a withdrawal without a comment), as `null`: a client reads every listed
/// member. Rows keep the event's own shape, so this is done as they are read.
fn with_every_member(mut entry: Value) -> Value {
    let optional: &[&str] = match entry.get("type").and_then(Value::as_str) {
        Some("status_changed") => &["reason"],
        Some("withdrawn") => &["comment"],
        _ => &[],
    };
    if let Value::Object(members) = &mut entry {
        for key in optional {
            members.entry(*key).or_insert(Value::Null);
        }
    }
    entry
}

/// One reader of a ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBy {
    pub user: String,
    pub name: Option<String>,
    pub first_read_at: DateTime<Utc>,
    pub read_at: DateTime<Utc>,
}

/// Who read a ticket, by their latest read, oldest first.
pub async fn read_by<'a>(
    reader: impl Into<Reader<'a>>,
    ticket: Uuid,
) -> Result<Vec<ReadBy>, StoreError> {
    let mut pooled = reader.into().acquire().await?;
    let rows: Vec<(String, Option<String>, i64, i64)> = pooled
        .conn()
        .fetch_four(
            "SELECT member, name, first_read_at, last_read_at FROM ticket_reads \
             WHERE ticket_id = ? ORDER BY last_read_at, member",
            &[Bind::Uuid(ticket)],
        )
        .await?;
    let time = |us: i64| {
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| StoreError::Corrupt(format!("a read time out of range: {us}")))
    };
    rows.into_iter()
        .map(|(user, name, first, last)| {
            Ok(ReadBy {
                user,
                name,
                first_read_at: time(first)?,
                read_at: time(last)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketd_commands::Position;
    use ticketd_domain::{Actor, Role};

    /// The entry as rows held it before [`entry_text`]: built as a `serde_json::Value`.
    fn entry_as_value(event: &StoredEvent, recorded: &Recorded) -> String {
        let data = recorded.event.to_json();
        let fields = match &recorded.event {
            Event::Opened(e) => {
                serde_json::json!({"subject": e.subject, "priority": e.priority, "channel": e.channel})
            }
            Event::Edited(_) => serde_json::json!({ "changes": data }),
            Event::Read(_) => serde_json::json!({}),
            _ => data,
        };
        let mut entry = serde_json::json!({
            "id": event.event_id,
            "type": kind_of(&recorded.event),
            "at": recorded.recorded_at,
            "actor": recorded.actor.id,
            "actor_name": recorded.actor.name,
        });
        if let (Some(entry), Value::Object(fields)) = (entry.as_object_mut(), fields) {
            for (k, v) in fields {
                entry.entry(k).or_insert(v);
            }
        }
        entry.to_string()
    }

    /// Every stored event type, each field away from its default (the decoding fixtures).
    fn fixtures() -> Vec<Event> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/events");
        let mut events = Vec::new();
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let Some((kind, version)) = name
                .strip_suffix(".msgpack")
                .and_then(|stem| stem.rsplit_once(".v"))
            else {
                continue;
            };
            let version: u32 = version.parse().expect("schema version");
            let bytes = std::fs::read(&path).expect("fixture");
            events.push(Event::decode(kind, version, &bytes).expect("decodes"));
        }
        events
    }

    /// A row's entry, its columns put back, is the entry as a `Value` of it would print; so is
    /// a row written before the columns, whose entry is whole.
    #[test]
    fn rows_serve_what_a_value_of_the_entry_would_print() {
        let events = fixtures();
        assert!(
            events.len() >= ticketd_domain::EVENT_TYPES.len(),
            "a fixture per type"
        );
        for (i, event) in events.into_iter().enumerate() {
            for name in [Some("Zoë \"Z\" <z@x>".to_owned()), None] {
                let stored = StoredEvent {
                    position: Position::START,
                    stream_id: Uuid::from_u128(7),
                    version: i as u64 + 1,
                    event_id: Uuid::from_u128(
                        0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_0001 + i as u128,
                    ),
                    event_type: event.type_name().to_owned(),
                    schema_version: 1,
                    recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456)
                        .expect("time"),
                    metadata: Vec::new(),
                    payload: Vec::new(),
                    prev_hash: [0; ticketd_domain::HASH_LEN],
                    hash: [0; ticketd_domain::HASH_LEN],
                };
                let recorded = Recorded {
                    version: stored.version,
                    recorded_at: stored.recorded_at,
                    actor: Actor {
                        id: "agent\t7".into(),
                        name,
                        role: Role::Agent,
                        org: None,
                        org_wide: false,
                    },
                    event: event.clone(),
                };
                let (row, _) = rows_of(&stored, &recorded).expect("rows");
                let [Bind::Uuid(_), Bind::I64(_), Bind::Text(kind), Bind::I64(_), Bind::Text(entry), Bind::Uuid(id), Bind::I64(at)] =
                    row.as_slice()
                else {
                    panic!("a feed row: {row:?}");
                };
                assert!(
                    !entry.contains("\"id\"") && !entry.contains("\"type\""),
                    "{entry}"
                );
                let whole = entry_as_value(&stored, &recorded);
                let want = with_every_member(serde_json::from_str(&whole).expect("json"));
                assert_eq!(
                    served(entry, kind, Some(*id), Some(*at)).expect("served"),
                    want,
                    "{event:?}"
                );
                assert_eq!(served(&whole, kind, None, None).expect("served"), want);
                assert!(served(entry, kind, Some(*id), None).is_err());
            }
        }
    }
}
