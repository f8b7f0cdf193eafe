//! The `analytics` projection: tables an analytics job may query with plain SQL
//! (docs/ANALYTICS.md), and CONTRACT §6.5's summary served from them.
//!
//! - `analytics_ticket_facts`: one row per ticket (see [`Facts`]).
//! - `analytics_events`: one row per counted event, for counts over any window.
//! - `analytics_daily_org`: per UTC day and organization, what happened that day.
//!
//! Every value comes from the events alone (their `recorded_at`, never the clock), so a rebuild
//! from the log gives identical rows. [`fold`] is that derivation, free of I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::{Database, Position, StoreError, StoredEvent};
use ticketd_domain::{Channel, Event, Priority, Recorded, Status, Visibility};

use crate::bulk::{copy_all, Fold, Sink, Step};
use crate::kept::{Keeper, Weigh};

use crate::sql::{pg_text, unavailable, Bind, Conn, CopyRows};
use crate::{micros, Projection, Reader};

pub const NAME: &str = "analytics";

/// The counted kinds, in the contract's order.
pub const KINDS: &[&str] = &[
    "opened",
    "resolved",
    "closed",
    "withdrawn",
    "escalated",
    "reopened",
];

/// `org` of `analytics_daily_org` for tickets without one: the key must not be NULL.
pub const NO_ORG: &str = "";

/// One row of `analytics_ticket_facts`. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub ticket_id: Uuid,
    pub number: i64,
    pub org: Option<String>,
    pub requester: String,
    /// Current.
    pub priority: Priority,
    /// Where the ticket came in (never changes).
    pub channel: Channel,
    /// Current.
    pub status: Status,
    pub opened_at: i64,
    /// The first public comment by staff.
    pub first_response_at: Option<i64>,
    /// The first move to `resolved` or `closed`.
    pub first_resolved_at: Option<i64>,
    /// The last move to `closed`; `None` unless the ticket is closed now.
    pub closed_at: Option<i64>,
    pub reopens: i64,
    pub escalations: i64,
    pub withdrawn_at: Option<i64>,
    pub withdrawn_reason: Option<String>,
    /// Current; `None`: no due date.
    pub due_at: Option<i64>,
    /// When the ticket first became overdue (active with `due_at` past), as far as the events
    /// show: `due_at` itself if the ticket was active when it passed, else the event that made
    /// an active ticket late (opened or edited with a past due date, reopened after it).
    pub breached_at: Option<i64>,
    /// The last event of any kind, reads included (as `version` counts them).
    pub last_event_at: i64,
    pub version: i64,
}

/// What one event adds to its day's `analytics_daily_org` row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Daily {
    pub opened: i64,
    pub first_responses: i64,
    pub first_response_us: i64,
    pub resolved: i64,
    pub closed: i64,
    pub first_resolutions: i64,
    pub resolution_us: i64,
    pub reopened: i64,
    pub escalated: i64,
    pub withdrawn: i64,
}

impl Daily {
    fn is_zero(&self) -> bool {
        *self == Daily::default()
    }

    fn add(&mut self, o: &Daily) {
        self.opened += o.opened;
        self.first_responses += o.first_responses;
        self.first_response_us += o.first_response_us;
        self.resolved += o.resolved;
        self.closed += o.closed;
        self.first_resolutions += o.first_resolutions;
        self.resolution_us += o.resolution_us;
        self.reopened += o.reopened;
        self.escalated += o.escalated;
        self.withdrawn += o.withdrawn;
    }
}

/// What applying one event changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub facts: Facts,
    /// Rows for `analytics_events`, each one of [`KINDS`].
    pub kinds: Vec<&'static str>,
    pub daily: Daily,
}

/// Folds one event of ticket `id` into its facts row (`prev`, `None` before `opened`).
/// `None`: the event changes nothing here (already applied, or no ticket to apply it to).
pub fn fold(prev: Option<Facts>, id: Uuid, r: &Recorded) -> Option<Applied> {
    fold_from(prev.map(Box::new), id, r).ok()
}

/// [`fold`], which gives `prev` back where the event changes nothing, so that a caller keeping
/// the facts need not clone them for every event.
fn fold_from(
    prev: Option<Box<Facts>>,
    id: Uuid,
    r: &Recorded,
) -> Result<Applied, Option<Box<Facts>>> {
    let at = micros(r.recorded_at);
    // Versions and numbers past i64 cannot come from a store (its columns are 64-bit signed).
    let Ok(version) = i64::try_from(r.version) else {
        return Err(prev);
    };
    let mut kinds = Vec::new();
    let mut daily = Daily::default();
    let mut f = match (prev, &r.event) {
        (None, Event::Opened(e)) => {
            let Ok(number) = i64::try_from(e.number) else {
                return Err(None);
            };
            kinds.push("opened");
            daily.opened = 1;
            Facts {
                ticket_id: id,
                number,
                org: e.org.clone(),
                requester: e.requester.clone(),
                priority: e.priority,
                channel: e.channel,
                status: Status::Open,
                opened_at: at,
                first_response_at: None,
                first_resolved_at: None,
                closed_at: None,
                reopens: 0,
                escalations: 0,
                withdrawn_at: None,
                withdrawn_reason: None,
                due_at: e.due_at.map(micros),
                breached_at: None,
                last_event_at: at,
                version,
            }
        }
        (None, _) => return Err(None),
        (Some(f), Event::Opened(_)) => return Err(Some(f)),
        (Some(f), _) if f.version >= version => return Err(Some(f)),
        (Some(f), event) => {
            let mut f = *f;
            // Nothing happened between the previous event and this one, so an active ticket
            // whose due time passed in between became overdue exactly then.
            if f.breached_at.is_none() && f.status.is_active() {
                f.breached_at = f.due_at.filter(|&due| due < at);
            }
            match event {
                Event::Commented(c)
                    if c.visibility == Visibility::Public
                        && r.actor.is_staff()
                        && f.first_response_at.is_none() =>
                {
                    f.first_response_at = Some(at);
                    daily.first_responses = 1;
                    daily.first_response_us = at - f.opened_at;
                }
                Event::StatusChanged(s) => {
                    f.status = s.to;
                    match s.to {
                        Status::Resolved => {
                            kinds.push("resolved");
                            daily.resolved = 1;
                        }
                        Status::Closed => {
                            kinds.push("closed");
                            daily.closed = 1;
                        }
                        // Staff may move a ticket to `escalated` by its status as well as by
                        // escalating it (CONTRACT §3): either way it was escalated.
                        Status::Escalated => {
                            f.escalations += 1;
                            kinds.push("escalated");
                            daily.escalated = 1;
                        }
                        _ => {}
                    }
                    f.closed_at = (s.to == Status::Closed).then_some(at);
                    if matches!(s.to, Status::Resolved | Status::Closed)
                        && f.first_resolved_at.is_none()
                    {
                        f.first_resolved_at = Some(at);
                        daily.first_resolutions = 1;
                        daily.resolution_us = at - f.opened_at;
                    }
                    if s.is_reopen() {
                        f.reopens += 1;
                        kinds.push("reopened");
                        daily.reopened = 1;
                    }
                }
                Event::Edited(e) => {
                    if let Some(c) = &e.priority {
                        f.priority = c.to;
                    }
                    if let Some(c) = &e.due_at {
                        f.due_at = c.to.map(micros);
                    }
                }
                Event::Escalated(_) => {
                    f.status = Status::Escalated;
                    f.escalations += 1;
                    kinds.push("escalated");
                    daily.escalated = 1;
                }
                Event::Withdrawn(w) => {
                    f.status = Status::Withdrawn;
                    f.withdrawn_at = Some(at);
                    f.withdrawn_reason = Some(w.reason.clone());
                    kinds.push("withdrawn");
                    daily.withdrawn = 1;
                }
                Event::Commented(_) | Event::Read(_) | Event::Opened(_) => {}
            }
            f
        }
    };
    // This event itself may leave an active ticket past its due time.
    if f.breached_at.is_none() && f.status.is_active() && f.due_at.is_some_and(|due| due < at) {
        f.breached_at = Some(at);
    }
    f.version = version;
    f.last_event_at = at;
    Ok(Applied {
        facts: f,
        kinds,
        daily,
    })
}

/// The facts table's columns, as a macro so that statements can be spelled with `concat!`.
macro_rules! fact_columns {
    () => {
        "ticket_id, number, org, requester, priority, channel, status, \
        opened_at, first_response_at, first_resolved_at, closed_at, reopens, escalations, \
        withdrawn_at, withdrawn_reason, due_at, breached_at, last_event_at, version"
    };
}

const FACT_COLUMNS: &str = fact_columns!();

const FACT_INSERT: &str = concat!("INSERT INTO analytics_ticket_facts (", fact_columns!(), ")");

type FactRow = (
    Uuid,
    i64,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

fn facts_from(row: FactRow) -> Result<Facts, StoreError> {
    let bad = |what: &str, v: &str| {
        StoreError::Corrupt(format!("analytics_ticket_facts {}: {what} {v:?}", row.0))
    };
    Ok(Facts {
        ticket_id: row.0,
        number: row.1,
        org: row.2.clone(),
        requester: row.3.clone(),
        priority: row.4.parse().map_err(|_| bad("priority", &row.4))?,
        channel: row.5.parse().map_err(|_| bad("channel", &row.5))?,
        status: row.6.parse().map_err(|_| bad("status", &row.6))?,
        opened_at: row.7,
        first_response_at: row.8,
        first_resolved_at: row.9,
        closed_at: row.10,
        reopens: row.11,
        escalations: row.12,
        withdrawn_at: row.13,
        withdrawn_reason: row.14.clone(),
        due_at: row.15,
        breached_at: row.16,
        last_event_at: row.17,
        version: row.18,
    })
}

async fn load(conn: &mut Conn<'_>, id: Uuid) -> Result<Option<Facts>, StoreError> {
    let rows: Vec<FactRow> = conn
        .fetch_rows(
            &format!("SELECT {FACT_COLUMNS} FROM analytics_ticket_facts WHERE ticket_id = ?"),
            &[Bind::Uuid(id)],
        )
        .await?;
    rows.into_iter().next().map(facts_from).transpose()
}

/// One ticket's facts row, if it has one yet.
pub async fn ticket_facts(db: &Database, id: Uuid) -> Result<Option<Facts>, StoreError> {
    let mut pooled = crate::Pooled::acquire(db).await?;
    load(&mut pooled.conn(), id).await
}

fn fact_binds(f: &Facts) -> Vec<Bind> {
    vec![
        Bind::Uuid(f.ticket_id),
        Bind::I64(f.number),
        Bind::OptText(f.org.clone()),
        Bind::Text(f.requester.clone()),
        Bind::Text(f.priority.as_str().to_owned()),
        Bind::Text(f.channel.as_str().to_owned()),
        Bind::Text(f.status.as_str().to_owned()),
        Bind::I64(f.opened_at),
        Bind::OptI64(f.first_response_at),
        Bind::OptI64(f.first_resolved_at),
        Bind::OptI64(f.closed_at),
        Bind::I64(f.reopens),
        Bind::I64(f.escalations),
        Bind::OptI64(f.withdrawn_at),
        Bind::OptText(f.withdrawn_reason.clone()),
        Bind::OptI64(f.due_at),
        Bind::OptI64(f.breached_at),
        Bind::I64(f.last_event_at),
        Bind::I64(f.version),
    ]
}

#[derive(Default)]
pub struct AnalyticsProjection {
    /// Each ticket's facts as its row holds them, from the last batch.
    kept: Keeper<Facts>,
}

impl Weigh for Facts {
    /// Their strings and a fixed part.
    fn weight(&self) -> usize {
        256 + self.requester.len()
            + self.org.as_ref().map_or(0, String::len)
            + self.withdrawn_reason.as_ref().map_or(0, String::len)
    }
}

#[async_trait]
impl Projection for AnalyticsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "analytics_ticket_facts",
            "analytics_events",
            "analytics_daily_org",
        ]
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        // What the last batch left; the other tickets' rows are read.
        let started = self.kept.start(after, events);
        let mut facts: HashMap<Uuid, Option<Facts>> = started
            .found
            .into_iter()
            .map(|(id, f)| (id, Some(f)))
            .collect();
        let rows = if started.to_read.is_empty() {
            Vec::new()
        } else {
            conn.fetch_rows_in::<FactRow>(
                &format!(
                    "SELECT {FACT_COLUMNS} FROM analytics_ticket_facts WHERE ticket_id IN (…)"
                ),
                &started.to_read,
            )
            .await?
        };
        for row in rows {
            let f = facts_from(row)?;
            facts.insert(f.ticket_id, Some(f));
        }
        // The same fold, event by event, in memory; then each table in one go.
        let mut changed: Vec<Uuid> = Vec::new();
        let mut seen: HashSet<Uuid> = HashSet::new();
        let mut counted: Vec<Vec<Bind>> = Vec::new();
        let mut days: BTreeMap<(String, Option<String>), Daily> = BTreeMap::new();
        for event in events {
            let recorded = decode(event)?;
            let id = event.stream_id;
            let slot = facts.entry(id).or_insert(None);
            // Taken, not cloned: an event that changes nothing gives the facts back.
            let Applied {
                facts: f,
                kinds,
                daily,
            } = match fold_from(slot.take().map(Box::new), id, &recorded) {
                Ok(applied) => applied,
                Err(kept) => {
                    *slot = kept.map(|f| *f);
                    continue;
                }
            };
            let at = micros(recorded.recorded_at);
            for kind in kinds {
                counted.push(event_binds(&f, kind, at));
            }
            if !daily.is_zero() {
                days.entry((day(recorded.recorded_at), f.org.clone()))
                    .or_default()
                    .add(&daily);
            }
            if seen.insert(id) {
                changed.push(id);
            }
            *slot = Some(f);
        }
        let rows: Vec<Vec<Bind>> = changed
            .iter()
            .filter_map(|id| facts.get(id).and_then(Option::as_ref))
            .map(fact_binds)
            .collect();
        conn.insert_rows(FACT_INSERT, rows, FACT_UPSERT).await?;
        conn.insert_rows(EVENT_INSERT, counted, EVENT_TAIL).await?;
        let sums: Vec<Vec<Bind>> = days
            .iter()
            .map(|((day, org), d)| daily_binds(day, org, d))
            .collect();
        conn.insert_rows(DAILY_INSERT, sums, DAILY_TAIL).await?;
        let written = facts.into_iter().filter_map(|(id, f)| Some((id, f?)));
        self.kept.finish(started.rest, after, events, written);
        Ok(true)
    }

    fn forget(&self) {
        self.kept.forget();
    }

    fn bulk(&self) -> Option<Box<dyn Fold>> {
        Some(Box::<AnalyticsFold>::default())
    }
}

/// The bulk fold: every ticket's facts and each day's sums in memory, the counted events
/// streaming out as they come.
#[derive(Default)]
struct AnalyticsFold {
    /// Boxed, as the tickets fold's states are: the table's growth copies pointers.
    facts: HashMap<Uuid, Box<Facts>>,
    /// Tickets in the order of their first row, as the table gets them.
    order: Vec<Uuid>,
    counted: CopyRows,
    /// Keyed as stored (`NO_ORG` for none), so each key is one row.
    days: BTreeMap<(String, String), Daily>,
}

impl Fold for AnalyticsFold {
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError> {
        let id = event.stream_id;
        let prev = self.facts.remove(&id);
        let first = prev.is_none();
        let Applied {
            facts: f,
            kinds,
            daily,
        } = match fold_from(prev, id, recorded) {
            Ok(applied) => applied,
            Err(kept) => {
                if let Some(kept) = kept {
                    self.facts.insert(id, kept);
                }
                return Ok(());
            }
        };
        let at = micros(recorded.recorded_at);
        for kind in kinds {
            self.counted.push(&event_binds(&f, kind, at))?;
        }
        if !daily.is_zero() {
            // Keyed as PostgreSQL holds the org (the fold is its bulk load): there `o\0rg` and
            // `o\u{FFFD}rg` are one org, whose day the batched path adds up.
            let org = f
                .org
                .as_deref()
                .map_or_else(|| NO_ORG.to_owned(), |o| pg_text(o).into_owned());
            self.days
                .entry((day(recorded.recorded_at), org))
                .or_default()
                .add(&daily);
        }
        self.facts.insert(id, Box::new(f));
        if first {
            self.order.push(id);
        }
        Ok(())
    }

    fn ready(&mut self, min: usize) -> Vec<Step> {
        Step::copy_when(EVENT_INSERT, &mut self.counted, min)
            .into_iter()
            .collect()
    }

    fn finish(mut self: Box<Self>, out: &mut Sink<'_>) -> Result<Vec<Uuid>, StoreError> {
        self.ready(0).into_iter().try_for_each(&mut *out)?;
        let facts = self
            .order
            .iter()
            .filter_map(|id| self.facts.get(id).map(|f| &**f));
        copy_all(FACT_INSERT, facts.map(fact_binds), out)?;
        let days = self.days.iter();
        copy_all(
            DAILY_INSERT,
            days.map(|((day, org), d)| daily_binds(day, &Some(org.clone()), d)),
            out,
        )?;
        Ok(Vec::new())
    }
}

/// An `analytics_events` row.
fn event_binds(f: &Facts, kind: &str, at: i64) -> Vec<Bind> {
    vec![
        Bind::Uuid(f.ticket_id),
        Bind::I64(f.version),
        Bind::Text(kind.to_owned()),
        Bind::I64(at),
        Bind::OptText(f.org.clone()),
    ]
}

/// A batch writes each ticket's facts once, inserted or replaced whole.
const FACT_UPSERT: &str = "ON CONFLICT (ticket_id) DO UPDATE SET number = excluded.number, \
     org = excluded.org, requester = excluded.requester, priority = excluded.priority, \
     channel = excluded.channel, status = excluded.status, opened_at = excluded.opened_at, \
     first_response_at = excluded.first_response_at, \
     first_resolved_at = excluded.first_resolved_at, closed_at = excluded.closed_at, \
     reopens = excluded.reopens, escalations = excluded.escalations, \
     withdrawn_at = excluded.withdrawn_at, withdrawn_reason = excluded.withdrawn_reason, \
     due_at = excluded.due_at, breached_at = excluded.breached_at, \
     last_event_at = excluded.last_event_at, version = excluded.version";

/// The UTC day of an instant, as `analytics_daily_org.day` keeps it.
pub fn day(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

const DAILY_INSERT: &str = "INSERT INTO analytics_daily_org (day, org, opened, \
     first_responses, first_response_us, resolved, closed, first_resolutions, resolution_us, \
     reopened, escalated, withdrawn)";
const DAILY_TAIL: &str = "ON CONFLICT (day, org) DO UPDATE SET \
     opened = analytics_daily_org.opened + excluded.opened, \
     first_responses = analytics_daily_org.first_responses + excluded.first_responses, \
     first_response_us = analytics_daily_org.first_response_us + excluded.first_response_us, \
     resolved = analytics_daily_org.resolved + excluded.resolved, \
     closed = analytics_daily_org.closed + excluded.closed, \
     first_resolutions = analytics_daily_org.first_resolutions + excluded.first_resolutions, \
     resolution_us = analytics_daily_org.resolution_us + excluded.resolution_us, \
     reopened = analytics_daily_org.reopened + excluded.reopened, \
     escalated = analytics_daily_org.escalated + excluded.escalated, \
     withdrawn = analytics_daily_org.withdrawn + excluded.withdrawn";
const EVENT_INSERT: &str = "INSERT INTO analytics_events (ticket_id, version, kind, at, org)";
const EVENT_TAIL: &str = "ON CONFLICT DO NOTHING";

fn daily_binds(day: &str, org: &Option<String>, d: &Daily) -> Vec<Bind> {
    vec![
        Bind::Text(day.to_owned()),
        Bind::Text(org.clone().unwrap_or_else(|| NO_ORG.to_owned())),
        Bind::I64(d.opened),
        Bind::I64(d.first_responses),
        Bind::I64(d.first_response_us),
        Bind::I64(d.resolved),
        Bind::I64(d.closed),
        Bind::I64(d.first_resolutions),
        Bind::I64(d.resolution_us),
        Bind::I64(d.reopened),
        Bind::I64(d.escalated),
        Bind::I64(d.withdrawn),
    ]
}

/// The 50th and 90th percentile (nearest rank) in seconds, or `None` without samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
}

pub fn percentiles(mut micros: Vec<i64>) -> Option<Percentiles> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let rank = |percent: usize| {
        let n = micros.len();
        // Nearest rank: the smallest value with at least `percent` of the samples at or below
        // it; integer arithmetic, so 90 % of 10 is exactly the 9th.
        let i = (percent * n).div_ceil(100).clamp(1, n) - 1;
        micros[i] as f64 / 1e6
    };
    Some(Percentiles {
        p50: rank(50),
        p90: rank(90),
    })
}

/// CONTRACT §6.5's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events of each of [`KINDS`] in the window.
    pub counts: BTreeMap<&'static str, i64>,
    /// Each active status's count of tickets now.
    pub backlog: BTreeMap<&'static str, i64>,
    pub overdue_now: i64,
    pub first_response: Option<Percentiles>,
    pub resolution: Option<Percentiles>,
}

/// The active statuses as an SQL list: `'open', 'in_progress', …`.
pub fn active_statuses_sql() -> String {
    Status::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures for `[from, to)`, narrowed to `org` when given; "now" figures as of `now`.
/// Read in one transaction, so the figures agree with each other.
pub async fn summary<'a>(
    reader: impl Into<Reader<'a>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    org: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let reader = reader.into();
    match reader.db {
        Database::Sqlite(pool) => {
            // A deferred transaction: its first read fixes the snapshot, and it never writes.
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let s = figures(&mut Conn::Sqlite(&mut tx), from, to, org, now).await?;
            tx.rollback().await.map_err(unavailable)?;
            Ok(s)
        }
        Database::Postgres(pool) => {
            let mut tx = reader.begin(pool, Some("REPEATABLE READ")).await?;
            let mut conn = Conn::Postgres(&mut tx);
            let s = figures(&mut conn, from, to, org, now).await?;
            tx.rollback().await.map_err(unavailable)?;
            Ok(s)
        }
    }
}

/// The summary's statements, in the order [`figures`] runs them, each with the index it is
/// meant to read: the window's event counts, the backlog, the overdue count, and the response
/// and resolution times. Binds: the window (or `now`), then the org when `org` is true.
pub fn summary_statements(org: bool) -> [(String, &'static str); 5] {
    let org_sql = if org { " AND org = ?" } else { "" };
    let active = active_statuses_sql();
    let spread = |column: &str| {
        format!(
            "SELECT {column} - opened_at FROM analytics_ticket_facts \
             WHERE opened_at >= ? AND opened_at < ? AND {column} IS NOT NULL{org_sql}"
        )
    };
    let opened = if org {
        "analytics_ticket_facts_org_opened"
    } else {
        "analytics_ticket_facts_opened"
    };
    [
        (
            format!(
                "SELECT kind, COUNT(*) FROM analytics_events \
                 WHERE at >= ? AND at < ?{org_sql} GROUP BY kind"
            ),
            if org {
                "analytics_events_org_at"
            } else {
                "analytics_events_at"
            },
        ),
        (
            format!(
                "SELECT status, COUNT(*) FROM analytics_ticket_facts \
                 WHERE status IN ({active}){org_sql} GROUP BY status"
            ),
            "analytics_ticket_facts_status",
        ),
        (
            format!(
                "SELECT COUNT(*) FROM analytics_ticket_facts \
                 WHERE status IN ({active}) AND due_at < ?{org_sql}"
            ),
            "analytics_ticket_facts_status",
        ),
        (spread("first_response_at"), opened),
        (spread("first_resolved_at"), opened),
    ]
}

/// `at` in microseconds, rounded up: the first whole microsecond not before it.
fn micros_up(at: DateTime<Utc>) -> i64 {
    let whole = micros(at);
    if at.timestamp_subsec_nanos().is_multiple_of(1000) {
        whole
    } else {
        whole.saturating_add(1)
    }
}

async fn figures(
    conn: &mut Conn<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    org: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let binds = |mut b: Vec<Bind>| {
        if let Some(o) = org {
            b.push(Bind::Text(o.to_owned()));
        }
        b
    };
    // Stored times are whole microseconds, so `at >= from` and `at < to` (and `due_at < now`)
    // hold exactly when they hold against each bound rounded up to one.
    let window = || binds(vec![Bind::I64(micros_up(from)), Bind::I64(micros_up(to))]);
    let [(counts_sql, _), (backlog_sql, _), (overdue_sql, _), (first_sql, _), (resolved_sql, _)] =
        summary_statements(org.is_some());

    let rows: Vec<(String, i64)> = conn.fetch_pairs(&counts_sql, &window()).await?;
    let mut counts: BTreeMap<&'static str, i64> = KINDS.iter().map(|k| (*k, 0)).collect();
    for (kind, n) in rows {
        if let Some(k) = KINDS.iter().find(|k| **k == kind) {
            counts.insert(k, n);
        }
    }

    let rows: Vec<(String, i64)> = conn.fetch_pairs(&backlog_sql, &binds(Vec::new())).await?;
    let mut backlog: BTreeMap<&'static str, i64> = Status::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| (s.as_str(), 0))
        .collect();
    for (status, n) in rows {
        if let Some(s) = Status::ALL.iter().find(|s| s.as_str() == status) {
            backlog.insert(s.as_str(), n);
        }
    }
    let overdue: Vec<i64> = conn
        .fetch_column(&overdue_sql, &binds(vec![Bind::I64(micros_up(now))]))
        .await?;

    let first: Vec<i64> = conn.fetch_column(&first_sql, &window()).await?;
    let resolved: Vec<i64> = conn.fetch_column(&resolved_sql, &window()).await?;
    Ok(Summary {
        counts,
        backlog,
        overdue_now: overdue.first().copied().unwrap_or(0),
        first_response: percentiles(first),
        resolution: percentiles(resolved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketd_domain::event::{Commented, Edited, Opened, StatusChanged, Withdrawn};
    use ticketd_domain::{Actor, Role};

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentiles(vec![]), None);
        let p = percentiles(vec![3_000_000, 1_000_000, 2_000_000]).expect("samples");
        assert_eq!((p.p50, p.p90), (2.0, 3.0));
        let p = percentiles((1..=10).map(|s| s * 1_000_000).collect()).expect("samples");
        assert_eq!((p.p50, p.p90), (5.0, 9.0));
    }

    /// A bound finer than a microsecond counts the events a stored microsecond puts on its
    /// side of it: `[from, to)` of §6.5 exactly.
    #[test]
    fn bounds_round_up_to_whole_microseconds() {
        let exact = at(5);
        assert_eq!(micros_up(exact), micros(exact));
        let just_after = exact + chrono::Duration::nanoseconds(1);
        assert_eq!(micros_up(just_after), micros(exact) + 1);
        let before_epoch = DateTime::from_timestamp(-1, 999_999_001).expect("time");
        assert_eq!(micros(before_epoch), -1);
        assert_eq!(micros_up(before_epoch), 0);
    }

    const H: i64 = 3_600_000_000;

    fn at(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_000_000 + us).expect("in range")
    }

    fn actor(role: Role) -> Actor {
        Actor {
            id: format!("{role}"),
            name: None,
            role,
            org: None,
            org_wide: false,
        }
    }

    fn rec(version: u64, us: i64, role: Role, event: Event) -> Recorded {
        Recorded {
            version,
            recorded_at: at(us),
            actor: actor(role),
            event,
        }
    }

    fn opened(due_us: Option<i64>) -> Event {
        Event::Opened(Opened {
            ticket_id: Uuid::nil(),
            number: 7,
            subject: "s".into(),
            description: "d".into(),
            priority: Priority::High,
            channel: Channel::Email,
            requester: "alice".into(),
            requester_name: None,
            org: Some("acme".into()),
            cc: vec![],
            fields: Default::default(),
            due_at: due_us.map(at),
            contact_email: None,
        })
    }

    fn status(from: Status, to: Status, reopen: bool) -> Event {
        Event::StatusChanged(StatusChanged {
            from,
            to,
            reason: None,
            reopen,
            automatic: false,
        })
    }

    fn comment(visibility: Visibility) -> Event {
        Event::Commented(Commented {
            comment_id: Uuid::nil(),
            body: "b".into(),
            visibility,
            channel: Channel::Web,
        })
    }

    /// Folds the events in order, as the projection would.
    fn run(events: &[Recorded]) -> (Facts, Vec<&'static str>, Daily) {
        let mut facts = None;
        let mut kinds = Vec::new();
        let mut daily = Daily::default();
        for r in events {
            if let Some(a) = fold(facts.clone(), Uuid::nil(), r) {
                kinds.extend(a.kinds);
                let d = a.daily;
                daily.opened += d.opened;
                daily.first_responses += d.first_responses;
                daily.first_response_us += d.first_response_us;
                daily.resolved += d.resolved;
                daily.closed += d.closed;
                daily.first_resolutions += d.first_resolutions;
                daily.resolution_us += d.resolution_us;
                daily.reopened += d.reopened;
                daily.escalated += d.escalated;
                daily.withdrawn += d.withdrawn;
                facts = Some(a.facts);
            }
        }
        (facts.expect("opened"), kinds, daily)
    }

    #[test]
    fn response_resolution_reopen_close() {
        let (f, kinds, d) = run(&[
            rec(1, 0, Role::Customer, opened(Some(24 * H))),
            rec(2, H, Role::Agent, comment(Visibility::Private)),
            rec(3, 2 * H, Role::Customer, comment(Visibility::Public)),
            rec(4, 3 * H, Role::Agent, comment(Visibility::Public)),
            rec(5, 4 * H, Role::Agent, comment(Visibility::Public)),
            rec(
                6,
                5 * H,
                Role::Agent,
                status(Status::Open, Status::Resolved, false),
            ),
            rec(
                7,
                6 * H,
                Role::Customer,
                status(Status::Resolved, Status::Open, true),
            ),
            rec(
                8,
                7 * H,
                Role::Agent,
                status(Status::Open, Status::Closed, false),
            ),
            rec(9, 8 * H, Role::Agent, Event::Read(Default::default())),
        ]);
        assert_eq!(f.first_response_at, Some(micros(at(3 * H))));
        assert_eq!(f.first_resolved_at, Some(micros(at(5 * H))));
        assert_eq!(f.closed_at, Some(micros(at(7 * H))));
        assert_eq!((f.status, f.reopens, f.escalations), (Status::Closed, 1, 0));
        assert_eq!((f.version, f.last_event_at), (9, micros(at(8 * H))));
        assert_eq!(f.breached_at, None);
        assert_eq!(kinds, ["opened", "resolved", "reopened", "closed"]);
        assert_eq!(
            d,
            Daily {
                opened: 1,
                first_responses: 1,
                first_response_us: 3 * H,
                resolved: 1,
                closed: 1,
                first_resolutions: 1,
                resolution_us: 5 * H,
                reopened: 1,
                ..Daily::default()
            }
        );
    }

    #[test]
    fn a_reopen_is_a_move_back_to_open() {
        // Events recorded before 2026-11-23 flagged staff moves back to any active status.
        let (f, kinds, d) = run(&[
            rec(1, 0, Role::Customer, opened(None)),
            rec(
                2,
                H,
                Role::Agent,
                status(Status::Open, Status::Closed, false),
            ),
            rec(
                3,
                2 * H,
                Role::Agent,
                status(Status::Closed, Status::InProgress, true),
            ),
        ]);
        assert_eq!((f.reopens, d.reopened), (0, 0));
        assert_eq!(kinds, ["opened", "closed"]);
    }

    #[test]
    fn breach_is_when_the_due_time_passed_while_active() {
        // Resolved in time: no breach, even though later events come after the due time.
        let (f, ..) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(
                2,
                H / 2,
                Role::Agent,
                status(Status::Open, Status::Resolved, false),
            ),
            rec(3, 2 * H, Role::Agent, Event::Read(Default::default())),
        ]);
        assert_eq!(f.breached_at, None);
        // Still open when it fell due: breached at the due time, learned from a later event.
        let (f, ..) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(
                2,
                2 * H,
                Role::Agent,
                status(Status::Open, Status::Resolved, false),
            ),
        ]);
        assert_eq!(f.breached_at, Some(micros(at(H))));
        // Opened already late: breached at opening.
        let (f, ..) = run(&[rec(1, 5, Role::Agent, opened(Some(0)))]);
        assert_eq!(f.breached_at, Some(micros(at(5))));
        // Reopened after the due time: breached at the reopen.
        let (f, ..) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(
                2,
                H / 2,
                Role::Agent,
                status(Status::Open, Status::Resolved, false),
            ),
            rec(
                3,
                3 * H,
                Role::Customer,
                status(Status::Resolved, Status::Open, true),
            ),
        ]);
        assert_eq!(f.breached_at, Some(micros(at(3 * H))));
        // The due time moved later before it passed: no breach; the first breach then stays.
        let later = Event::Edited(Edited {
            due_at: Some(ticketd_domain::event::Change {
                from: Some(at(H)),
                to: Some(at(10 * H)),
            }),
            ..Edited::default()
        });
        let (f, ..) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(2, H / 2, Role::Agent, later.clone()),
            rec(3, 2 * H, Role::Agent, comment(Visibility::Public)),
        ]);
        assert_eq!((f.breached_at, f.due_at), (None, Some(micros(at(10 * H)))));
        let (f, ..) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(2, 2 * H, Role::Agent, later),
        ]);
        assert_eq!(f.breached_at, Some(micros(at(H))));
        // Withdrawn before the due time: never breached.
        let (f, kinds, d) = run(&[
            rec(1, 0, Role::Agent, opened(Some(H))),
            rec(
                2,
                H / 2,
                Role::Customer,
                Event::Withdrawn(Withdrawn {
                    from: Status::Open,
                    reason: "dup".into(),
                    comment: None,
                }),
            ),
            rec(3, 2 * H, Role::Agent, Event::Read(Default::default())),
        ]);
        assert_eq!(f.breached_at, None);
        assert_eq!(f.withdrawn_reason.as_deref(), Some("dup"));
        assert_eq!(kinds, ["opened", "withdrawn"]);
        assert_eq!(d.withdrawn, 1);
    }

    #[test]
    fn an_event_is_applied_once() {
        let first = rec(1, 0, Role::Agent, opened(None));
        let a = fold(None, Uuid::nil(), &first).expect("opened");
        assert_eq!(fold(Some(a.facts.clone()), Uuid::nil(), &first), None);
        let second = rec(2, 1, Role::Agent, comment(Visibility::Public));
        let b = fold(Some(a.facts), Uuid::nil(), &second).expect("comment");
        assert_eq!(fold(Some(b.facts), Uuid::nil(), &second), None);
        assert_eq!(fold(None, Uuid::nil(), &second), None, "no ticket yet");
    }
}
