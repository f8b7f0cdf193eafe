//! The PostgreSQL event store, for many concurrent writers (and processes).
//!
//! An append is one statement, so one round trip and one implicit transaction: a CTE that
//! moves the stream's head in `streams` only if it is still at the expected version and hash
//! (or creates it when 0 is expected), and only then inserts the idempotency record and the
//! events. The row lock on the head serializes writers of one stream; writers of different
//! streams never wait for each other. The statement is specialised to the request's shape
//! (new or existing stream, with or without idempotency record, zero, one or many events).
//!
//! The whole-log order is `(tx_id, seq)`. `read_all` only returns rows of transactions older
//! than its snapshot's xmin: every transaction below xmin has ended, so no event can later
//! commit before the returned ones, and paging never skips an event (no timeouts, no gaps).
//! The price: an append shows in `read_all` only once every older transaction on the server
//! has ended, usually within milliseconds.
//!
//! `subscribe` ticks once appends are visible to `read_all`: a watcher task learns the server's
//! xmin from append results (or asks for it) and compares it with the newest committed
//! transaction id. Other processes learn of our appends by NOTIFY on [`NOTIFY_CHANNEL`], sent
//! outside the append (inside, it would serialize all commits behind the notify lock).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use ticketd_domain::ZERO_HASH;

use crate::sqlite::{chain, corrupt, hash_from, is_unique_violation, unavailable};
use crate::store::{
    AppendRequest, Appended, EventStore, IdempotencyHit, Position, StoreError, StoreResult,
    StoredEvent,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// The LISTEN/NOTIFY channel on which appends announce their transaction id.
pub const NOTIFY_CHANNEL: &str = "ticketd_events";

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadlocks and serialization failures roll back everything; the append is simply retried.
const ATTEMPTS: usize = 3;
/// First pause before the visibility watcher asks the server itself: later appends usually
/// report a newer xmin in the meantime, for free.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(100);
/// Least time between two ticks, and between two notifications to other processes.
const MIN_TICK: Duration = Duration::from_millis(1);
const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);
const RECONNECT: Duration = Duration::from_secs(1);

const EVENT_COLUMNS: &str = "tx_id::text::bigint AS tx, seq, stream_id, version, event_id, \
                             event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash";

/// The append statements, one per shape of request (see [`append_sql`]).
static APPEND_SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut all = Vec::with_capacity(12);
    for create in [false, true] {
        for idempotency in [false, true] {
            for shape in [Shape::NoEvents, Shape::One, Shape::Many] {
                all.push(append_sql(create, idempotency, shape));
            }
        }
    }
    all
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    NoEvents,
    One,
    Many,
}

fn append_sql_index(create: bool, idempotency: bool, shape: Shape) -> usize {
    usize::from(create) * 6 + usize::from(idempotency) * 3 + shape as usize
}

/// One statement (so one round trip and one implicit transaction) per append, specialised to
/// the request's shape: general-purpose branches cost measurable server CPU per append.
///
/// Parameters: `$1` stream, `$2` new version, `$3` new last hash, `$4` expected version,
/// `$5` prev hash, `$6..$10` the idempotency record, `$11..$19` the event columns (scalars
/// for one event, arrays for several). Every variant is bound with `$1..$10`.
fn append_sql(create: bool, idempotency: bool, shape: Shape) -> String {
    let head = match (create, shape) {
        // No event, no head to move: only check that the stream does not exist yet.
        (true, Shape::NoEvents) => {
            "SELECT 1 AS ok WHERE NOT EXISTS (SELECT 1 FROM streams WHERE stream_id = $1)"
        }
        // A concurrent creator makes this a no-op (after waiting for it to commit).
        (true, _) => {
            "INSERT INTO streams (stream_id, version, last_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id) DO NOTHING RETURNING 1 AS ok"
        }
        // A concurrent writer of the stream is waited for, then the condition is re-checked.
        (false, _) => {
            "UPDATE streams SET version = $2, last_hash = $3 \
             WHERE stream_id = $1 AND version = $4 AND last_hash = $5 RETURNING 1 AS ok"
        }
    };
    let mut sql = format!("WITH s AS ({head})");
    if idempotency {
        sql.push_str(
            ", idem AS (INSERT INTO idempotency (user_id, key, fingerprint, response, created_at) \
             SELECT $6, $7, $8, $9, $10 FROM s)",
        );
    }
    const INSERT: &str = ", evs AS (INSERT INTO events (stream_id, version, event_id, event_type, \
                          schema_version, recorded_at, metadata, payload, prev_hash, hash) ";
    const RESULT: &str = " RETURNING seq, version, tx_id) \
                          SELECT seq, version, tx_id::text::bigint AS tx, \
                          pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin FROM evs";
    match shape {
        Shape::NoEvents => sql.push_str(" SELECT count(*) AS ok FROM s"),
        Shape::One => {
            sql.push_str(INSERT);
            sql.push_str("SELECT $1, $11, $12, $13, $14, $15, $16, $17, $18, $19 FROM s");
            sql.push_str(RESULT);
        }
        Shape::Many => {
            sql.push_str(INSERT);
            // ORDER BY keeps identity values (seq) in version order.
            sql.push_str(
                "SELECT $1, e.version, e.event_id, e.event_type, e.schema_version, e.recorded_at, \
                 e.metadata, e.payload, e.prev_hash, e.hash \
                 FROM s, unnest($11::bigint[], $12::uuid[], $13::text[], $14::bigint[], \
                 $15::timestamptz[], $16::bytea[], $17::bytea[], $18::bytea[], $19::bytea[]) \
                 WITH ORDINALITY AS e(version, event_id, event_type, schema_version, recorded_at, \
                 metadata, payload, prev_hash, hash, ord) ORDER BY e.ord",
            );
            sql.push_str(RESULT);
        }
    }
    sql
}

/// The PostgreSQL adapter of [`EventStore`].
pub struct PostgresStore {
    pool: PgPool,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// State shared with the background tasks that turn commits into ticks.
struct Shared {
    ticks: watch::Sender<u64>,
    /// The largest transaction id known committed (here or by another process).
    pending: AtomicU64,
    /// The largest transaction id already announced by a tick once visible.
    announced: AtomicU64,
    /// The largest snapshot xmin seen: every transaction below it has ended.
    xmin: AtomicU64,
    /// The largest transaction id of our own appends, and the largest announced (visible) one.
    local: AtomicU64,
    local_visible: AtomicU64,
    wake: Notify,
    wake_notifier: Notify,
}

impl Shared {
    fn new() -> Self {
        Shared {
            ticks: watch::channel(0).0,
            pending: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            xmin: AtomicU64::new(0),
            local: AtomicU64::new(0),
            local_visible: AtomicU64::new(0),
            wake: Notify::new(),
            wake_notifier: Notify::new(),
        }
    }

    /// Our own append committed in `tx`.
    fn appended(&self, tx: u64) {
        self.local.fetch_max(tx, Ordering::AcqRel);
        self.committed(tx);
    }

    /// Some append committed in `tx`.
    fn committed(&self, tx: u64) {
        if tx > self.announced.load(Ordering::Acquire) {
            self.pending.fetch_max(tx, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// Everything up to `target` is visible to `read_all`.
    fn announce(&self, target: u64) {
        self.announced.fetch_max(target, Ordering::AcqRel);
        self.tick();
        let local = self.local.load(Ordering::Acquire);
        if local <= target && local > self.local_visible.fetch_max(local, Ordering::AcqRel) {
            self.wake_notifier.notify_one();
        }
    }

    fn tick(&self) {
        self.ticks.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl PostgresStore {
    /// Connects a pool of at most `max_connections` to `url`
    /// (e.g. `postgres://user@host/db?sslmode=disable`). Call [`Self::migrate`] next.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect_with(options, max_connections).await
    }

    /// Like [`Self::connect`], with options built by the caller (e.g. a `search_path`).
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> StoreResult<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Self::from_pool(pool)
    }

    /// Wraps an existing pool. Must run inside a Tokio runtime (it starts background tasks:
    /// a LISTEN on [`NOTIFY_CHANNEL`] over one extra connection, and a visibility watcher).
    pub fn from_pool(pool: PgPool) -> StoreResult<PostgresStore> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Unavailable(format!("no Tokio runtime: {e}")))?;
        let shared = Arc::new(Shared::new());
        // Its own one-connection pool, so listening never takes a connection from appends.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with((*pool.connect_options()).clone());
        let tasks = vec![
            runtime.spawn(listen(listen_pool, shared.clone())),
            runtime.spawn(watch_visibility(pool.clone(), shared.clone())),
            runtime.spawn(notify_others(pool.clone(), shared.clone())),
        ];
        Ok(PostgresStore {
            pool,
            shared,
            tasks,
        })
    }

    /// Applies the embedded migrations (`migrations/postgres`) in the connection's schema.
    pub async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    /// The underlying pool, e.g. for projections kept in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn conflict<T>(&self, request: &AppendRequest) -> StoreResult<T> {
        let actual: Option<i64> =
            sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
                .bind(request.stream_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Err(StoreError::Conflict {
            stream_id: request.stream_id,
            expected: request.expected_version,
            actual: actual.map_or(Ok(0), u64::try_from).map_err(corrupt)?,
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The append's arrays, bound as parameters of [`APPEND_SQL`].
struct Columns<'a> {
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    recorded_at: Vec<DateTime<Utc>>,
    metadata: Vec<&'a [u8]>,
    payloads: Vec<&'a [u8]>,
    prev_hashes: Vec<&'a [u8]>,
    hashes: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn new(events: &'a [StoredEvent]) -> Self {
        Columns {
            // Callers checked that the last (largest) version fits.
            versions: events
                .iter()
                .map(|e| i64::try_from(e.version).unwrap_or(i64::MAX))
                .collect(),
            event_ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(|e| i64::from(e.schema_version)).collect(),
            recorded_at: events.iter().map(|e| e.recorded_at).collect(),
            metadata: events.iter().map(|e| e.metadata.as_slice()).collect(),
            payloads: events.iter().map(|e| e.payload.as_slice()).collect(),
            prev_hashes: events.iter().map(|e| e.prev_hash.as_slice()).collect(),
            hashes: events.iter().map(|e| e.hash.as_slice()).collect(),
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        let mut events = chain(&request)?;
        let new_version = events
            .last()
            .map_or(request.expected_version, |e| e.version);
        let (Ok(expected), Ok(new_version_i64)) = (
            i64::try_from(request.expected_version),
            i64::try_from(new_version),
        ) else {
            // No stream gets this far; the head cannot be at the expected version.
            return self.conflict(&request).await;
        };
        let create = request.expected_version == 0;
        if create && request.prev_hash != ZERO_HASH {
            // Version 1 always chains from zeros.
            return self.conflict(&request).await;
        }
        let new_hash = events.last().map_or(request.prev_hash, |e| e.hash);
        let shape = match events.len() {
            0 => Shape::NoEvents,
            1 => Shape::One,
            _ => Shape::Many,
        };
        let idem = request.idempotency.as_ref();
        let sql = APPEND_SQL
            .get(append_sql_index(create, idem.is_some(), shape))
            .ok_or_else(|| StoreError::Unavailable("internal error: no append statement".into()))?;
        let columns = (shape == Shape::Many).then(|| Columns::new(&events));
        let created_at = Utc::now();

        let query = || -> Query<'_, Postgres, PgArguments> {
            let query = sqlx::query(sql)
                .bind(request.stream_id)
                .bind(new_version_i64)
                .bind(new_hash.as_slice())
                .bind(expected)
                .bind(request.prev_hash.as_slice())
                .bind(idem.map(|r| r.user.as_bytes()))
                .bind(idem.map(|r| r.key.as_bytes()))
                .bind(idem.map(|r| r.fingerprint.as_slice()))
                .bind(idem.map(|r| r.response.as_slice()))
                .bind(created_at);
            match (shape, events.first()) {
                (Shape::One, Some(e)) => query
                    .bind(new_version_i64)
                    .bind(e.event_id)
                    .bind(e.event_type.as_str())
                    .bind(i64::from(e.schema_version))
                    .bind(e.recorded_at)
                    .bind(e.metadata.as_slice())
                    .bind(e.payload.as_slice())
                    .bind(e.prev_hash.as_slice())
                    .bind(e.hash.as_slice()),
                (Shape::Many, _) => match &columns {
                    Some(columns) => query
                        .bind(&columns.versions)
                        .bind(&columns.event_ids)
                        .bind(&columns.types)
                        .bind(&columns.schema_versions)
                        .bind(&columns.recorded_at)
                        .bind(&columns.metadata)
                        .bind(&columns.payloads)
                        .bind(&columns.prev_hashes)
                        .bind(&columns.hashes),
                    None => query,
                },
                _ => query,
            }
        };

        let mut attempt = 1;
        let rows = loop {
            match query().fetch_all(&self.pool).await {
                Ok(rows) => break rows,
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => attempt += 1,
                Err(e) if is_unique_violation(&e) => {
                    let on_key = matches!(&e, sqlx::Error::Database(db) if db.constraint() == Some("idempotency_pkey"));
                    if on_key {
                        return Err(StoreError::IdempotencyKeyTaken);
                    }
                    // A reused event id: the handler retries with fresh events, as on a race.
                    return self.conflict(&request).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        };

        if shape == Shape::NoEvents {
            let ok: i64 = rows
                .first()
                .map_or(Ok(0), |r| r.try_get("ok"))
                .map_err(corrupt)?;
            if ok == 0 {
                return self.conflict(&request).await;
            }
            return Ok(Appended {
                version: new_version,
                events,
            });
        }
        if rows.is_empty() {
            return self.conflict(&request).await;
        }
        if rows.len() != events.len() {
            return Err(StoreError::Corrupt(
                "inserted rows do not match the request".into(),
            ));
        }
        let mut tx = 0;
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(corrupt)?;
            let version: i64 = row.try_get("version").map_err(corrupt)?;
            let row_tx: i64 = row.try_get("tx").map_err(corrupt)?;
            let xmin: i64 = row.try_get("xmin").map_err(corrupt)?;
            tx = u64::try_from(row_tx).map_err(corrupt)?;
            self.shared
                .xmin
                .fetch_max(u64::try_from(xmin).map_err(corrupt)?, Ordering::AcqRel);
            // RETURNING order is unspecified: place each row by its version.
            let index = u64::try_from(version)
                .ok()
                .and_then(|v| v.checked_sub(request.expected_version.saturating_add(1)))
                .and_then(|i| usize::try_from(i).ok());
            let event = index.and_then(|i| events.get_mut(i)).ok_or_else(|| {
                StoreError::Corrupt("inserted rows do not match the request".into())
            })?;
            event.position = Position {
                tx,
                seq: u64::try_from(seq).map_err(corrupt)?,
            };
        }
        self.shared.appended(tx);
        Ok(Appended {
            version: new_version,
            events,
        })
    }

    async fn read_stream(
        &self,
        stream_id: Uuid,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version"
        ))
        .bind(stream_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all(&self, after: Position, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // seq never exceeds i64::MAX, so clamping keeps "(tx, seq) > after" exact.
        let after_seq = i64::try_from(after.seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE (tx_id, seq) > ($1::text::xid8, $2) \
               AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id, seq LIMIT $3"
        ))
        .bind(after.tx.to_string())
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn idempotency(
        &self,
        user: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyHit>> {
        let row = sqlx::query(
            "SELECT fingerprint, response, created_at FROM idempotency \
             WHERE user_id = $1 AND key = $2 AND created_at > $3",
        )
        .bind(user.as_bytes())
        .bind(key.as_bytes())
        .bind(since)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(IdempotencyHit {
            fingerprint: row.try_get(0).map_err(corrupt)?,
            response: row.try_get(1).map_err(corrupt)?,
            created_at: row.try_get(2).map_err(corrupt)?,
        }))
    }

    async fn purge_idempotency(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM idempotency WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn next_ticket_number(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT nextval('ticket_numbers')")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        u64::try_from(n).map_err(corrupt)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.ticks.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn event_from_row(row: &PgRow) -> StoreResult<StoredEvent> {
    let tx: i64 = row.try_get("tx").map_err(corrupt)?;
    let seq: i64 = row.try_get("seq").map_err(corrupt)?;
    let version: i64 = row.try_get("version").map_err(corrupt)?;
    let schema_version: i64 = row.try_get("schema_version").map_err(corrupt)?;
    Ok(StoredEvent {
        position: Position {
            tx: u64::try_from(tx).map_err(corrupt)?,
            seq: u64::try_from(seq).map_err(corrupt)?,
        },
        stream_id: row.try_get("stream_id").map_err(corrupt)?,
        version: u64::try_from(version).map_err(corrupt)?,
        event_id: row.try_get("event_id").map_err(corrupt)?,
        event_type: row.try_get("event_type").map_err(corrupt)?,
        schema_version: u32::try_from(schema_version).map_err(corrupt)?,
        recorded_at: row.try_get("recorded_at").map_err(corrupt)?,
        metadata: row.try_get("metadata").map_err(corrupt)?,
        payload: row.try_get("payload").map_err(corrupt)?,
        prev_hash: hash_from(row.try_get("prev_hash").map_err(corrupt)?)?,
        hash: hash_from(row.try_get("hash").map_err(corrupt)?)?,
    })
}

/// Deadlock or serialization failure: the statement was rolled back whole.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Turns commits (ours and, via NOTIFY, other processes') into ticks once `read_all` can see
/// them: when some snapshot's xmin has passed the committed transaction id.
async fn watch_visibility(pool: PgPool, shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        let mut pause = FIRST_POLL;
        loop {
            let target = shared.pending.load(Ordering::Acquire);
            if target <= shared.announced.load(Ordering::Acquire) {
                break;
            }
            if shared.xmin.load(Ordering::Acquire) > target {
                shared.announce(target);
                // Coalesces ticks under load; appends meanwhile leave a wake-up behind.
                tokio::time::sleep(MIN_TICK).await;
                break;
            }
            tokio::time::sleep(pause).await;
            if shared.xmin.load(Ordering::Acquire) <= target {
                match sqlx::query_scalar::<_, i64>(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                )
                .fetch_one(&pool)
                .await
                {
                    Ok(xmin) => {
                        shared
                            .xmin
                            .fetch_max(u64::try_from(xmin).unwrap_or(0), Ordering::AcqRel);
                    }
                    Err(_) => tokio::time::sleep(RECONNECT).await,
                }
            }
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}

/// Tells other processes about our visible appends. NOTIFY inside the append would serialize
/// every commit behind PostgreSQL's notify lock (measured: -43% appends/s), so it is sent
/// here instead, at most once per [`NOTIFY_INTERVAL`].
async fn notify_others(pool: PgPool, shared: Arc<Shared>) {
    let mut sent = 0;
    loop {
        shared.wake_notifier.notified().await;
        let visible = shared.local_visible.load(Ordering::Acquire);
        if visible > sent {
            let done = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(visible.to_string())
                .execute(&pool)
                .await;
            if done.is_ok() {
                sent = visible;
            } else {
                // Try again later with whatever is newest by then.
                shared.wake_notifier.notify_one();
            }
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}

/// Hears other processes' appends. After a lost connection (notifications may be lost) it
/// ticks anyway, so subscribers re-read.
async fn listen(pool: PgPool, shared: Arc<Shared>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(_) => {
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        if listener.listen(NOTIFY_CHANNEL).await.is_err() {
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                    Ok(tx) => shared.committed(tx),
                    Err(_) => shared.tick(),
                },
                Ok(None) => shared.tick(),
                Err(_) => {
                    shared.tick();
                    tokio::time::sleep(RECONNECT).await;
                    break;
                }
            }
        }
    }
}
