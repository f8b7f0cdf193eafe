//! The PostgreSQL event store, for many concurrent writers (and processes).
//!
//! An append is one statement, so one round trip and one implicit transaction: a CTE that
//! moves the stream's head in `streams` only if it is still at the expected version and hash
//! (or creates it when 0 is expected), and only then inserts the idempotency record and the
//! events. The row lock on the head serializes writers of one stream; writers of different
//! streams never wait for each other. The statement is specialised to the request's shape
//! (new or existing stream, with or without idempotency record, zero, one or many events).
//!
//! The whole-log order is `(tx_id, seq)`. `read_all` only returns rows of transactions below
//! the snapshot gate: its snapshot's oldest running transaction, leaving out the
//! [`Bystanders`] (transactions known never to append: this process's projection batches, and
//! any process's long transactions listed in `log_bystanders`). Every transaction below the gate that
//! could append has ended, so no event can later commit before the returned ones, and paging
//! never skips an event (no timeouts, no gaps). The price: an append shows in `read_all` only
//! once every older transaction on the server that is not a bystander has ended, usually
//! within milliseconds.
//!
//! `subscribe` ticks once appends are visible to `read_all`: a watcher task learns a gate from
//! append results (their snapshot's xmin, which never passes the gate) or asks for the gate
//! itself, and compares it with the newest committed transaction id. Other processes learn of
//! our appends by NOTIFY on [`NOTIFY_CHANNEL`], sent outside the append (inside, it would
//! serialize all commits behind the notify lock).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolCopyExt, PgPoolOptions, PgRow,
};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, Postgres, Row};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use ticketd_domain::ZERO_HASH;

use crate::pgcopy::{CopyRows, PAGE_COLUMNS};
use crate::sqlite::{chain, corrupt, hash_from, is_unique_violation, unavailable};
use crate::store::{
    AppendRequest, Appended, EventBatch, EventStore, IdempotencyHit, Position, StoreError,
    StoreResult, StoredEvent, PAGE_BYTES,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Applies the embedded migrations (`migrations/postgres`) through any pool: a rebuild uses it to lay out
/// fresh read-model tables in a scratch schema from the very same DDL.
pub async fn migrate_pool(pool: &sqlx::PgPool) -> StoreResult<()> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
}

/// Transactions of this process that never append events: the projection runners' batches.
/// The snapshot gate looks past them ([`gate_sql`]). Without that, every event appended while
/// a runner's batch is open stays hidden from every log reader, the other runners included,
/// until that batch commits: one slow batch held every projection back.
///
/// Safe because an event's position is its appending transaction's id: leaving out of the
/// gate a transaction that inserts no event cannot let a reader pass an event that commits
/// later. A transaction registered here must therefore never insert into `events`.
///
/// Long transactions that never append, of this process or another (a rebuild's loads and
/// index builds), register with every process on the store instead: [`Bystanders::enter_shared`]
/// puts them in the table `log_bystanders` (migration 0019), which the gate reads too.
#[derive(Clone, Default)]
pub struct Bystanders {
    list: Arc<Mutex<Vec<i64>>>,
    /// The store's pool, for `log_bystanders` (`None` in a value made by `default`).
    store: Option<PgPool>,
}

impl Bystanders {
    fn of_store(pool: PgPool) -> Self {
        Bystanders {
            list: Arc::default(),
            store: Some(pool),
        }
    }

    /// Registers the transaction open on `conn` (giving it a transaction id now) with every
    /// process on the store, until the returned guard drops. The caller promises it appends no
    /// event. Costs a statement on the store's pool; meant for transactions that run long
    /// (seconds), not for each projection batch.
    pub async fn enter_shared(&self, conn: &mut PgConnection) -> StoreResult<SharedBystander> {
        let Some(pool) = &self.store else {
            return Err(StoreError::Unavailable(
                "no store to register a bystander with".into(),
            ));
        };
        let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
        sqlx::query("INSERT INTO log_bystanders (xid) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(xid)
            .execute(pool)
            .await
            .map_err(unavailable)?;
        // Rows of transactions that ended (their guards dropped in a process that died) go
        // with the next registration; the new one is running, so above the horizon. Best
        // effort, apart from the insert: two of these at once may wait on each other's rows.
        let _ = sqlx::query(
            "DELETE FROM log_bystanders \
             WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .execute(pool)
        .await;
        Ok(SharedBystander {
            pool: pool.clone(),
            xid,
        })
    }

    /// Registers the transaction open on `conn` (giving it a transaction id now, if it has
    /// none yet) until the returned guard drops. The caller promises it appends no event.
    pub async fn enter(&self, conn: &mut PgConnection) -> StoreResult<Bystander> {
        let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
            .fetch_one(conn)
            .await
            .map_err(unavailable)?;
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(xid);
        Ok(Bystander {
            list: self.clone(),
            xid,
        })
    }

    /// The registered transaction ids, for a gate's `ALL (...)` list.
    pub fn current(&self) -> Vec<i64> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A registration in `log_bystanders` ([`Bystanders::enter_shared`]); dropping it (after the
/// transaction ends) removes the row in the background. Removing it early only makes the gate
/// wait for the transaction again; a row left behind is harmless (see migration 0019).
pub struct SharedBystander {
    pool: PgPool,
    xid: i64,
}

impl Drop for SharedBystander {
    fn drop(&mut self) {
        let (pool, xid) = (self.pool.clone(), self.xid);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = sqlx::query("DELETE FROM log_bystanders WHERE xid = $1")
                    .bind(xid)
                    .execute(&pool)
                    .await;
            });
        }
    }
}

/// A registration in [`Bystanders`]; dropping it (after the transaction ends, or when its
/// task is cancelled) removes it. Removing it early only makes the gate wait for it again.
pub struct Bystander {
    list: Bystanders,
    xid: i64,
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let mut list = self.list.list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = list.iter().position(|x| *x == self.xid) {
            list.swap_remove(i);
        }
    }
}

/// The snapshot gate as SQL, for a statement's own snapshot: the oldest transaction running
/// when it began, other than the bystanders in `skip` (an SQL `bigint[]` expression) and those
/// in `log_bystanders`; if none, the first transaction id not yet assigned. Every transaction
/// below it that is not a bystander has ended.
fn gate_sql(skip: &str) -> String {
    format!(
        "COALESCE((SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
         WHERE x::text::bigint <> ALL ({skip}) AND NOT EXISTS (SELECT 1 FROM log_bystanders b \
         WHERE b.xid = x::text::bigint)), pg_snapshot_xmax(pg_current_snapshot()))"
    )
}

/// A page of the whole log as `out` columns: the events after (`after_tx`, `after_seq`) that
/// `until` admits (the gate, or an end already settled), at most `limit` of them, cut where the
/// bytes of payload and metadata before an event reach `max_bytes` (a running sum over the
/// page, which is cut to `limit` first). Each argument is SQL: a parameter, or a literal for
/// `COPY`, which takes none.
fn page_sql(
    out: &str,
    after_tx: &str,
    after_seq: &str,
    limit: &str,
    until: &str,
    max_bytes: &str,
) -> String {
    let size = "(coalesce(octet_length(payload), 0) + coalesce(octet_length(metadata), 0))";
    format!(
        "SELECT {out} FROM (SELECT {PAGE_COLUMNS}, \
         sum({size}) OVER (ORDER BY tx_id, seq ROWS UNBOUNDED PRECEDING) - {size} AS before \
         FROM (SELECT {PAGE_COLUMNS} FROM events \
         WHERE (tx_id, seq) > ({after_tx}::xid8, {after_seq}) AND {until} \
         ORDER BY tx_id, seq LIMIT {limit}) page) sized \
         WHERE before < {max_bytes} ORDER BY tx_id, seq"
    )
}

/// The whole log's next page: `$1`, `$2` the position after which, `$3` the most rows, `$4`
/// the bystanders, `$5` the bound in bytes.
static READ_ALL_SQL: LazyLock<String> = LazyLock::new(|| {
    page_sql(
        EVENT_COLUMNS,
        "$1::text",
        "$2",
        "$3",
        &format!("tx_id < {}", gate_sql("$4::bigint[]")),
        "$5",
    )
});

/// [`read_settled_on`]'s page: as [`READ_ALL_SQL`], up to (`$4`, `$5`) instead of the gate.
static READ_SETTLED_SQL: LazyLock<String> = LazyLock::new(|| {
    page_sql(
        EVENT_COLUMNS,
        "$1::text",
        "$2",
        "$3",
        "(tx_id, seq) <= ($4::text::xid8, $5)",
        "$6",
    )
});

/// The gate alone, `$1` the bystanders.
static GATE_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT ({})::text::bigint", gate_sql("$1::bigint[]")));

/// `ids` as an SQL `bigint[]` literal, for statements that take no parameters (`COPY`).
fn bigint_array(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("'{{{}}}'::bigint[]", list.join(","))
}

/// The LISTEN/NOTIFY channel on which appends announce their transaction id.
pub const NOTIFY_CHANNEL: &str = "ticketd_events";

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadlocks and serialization failures roll back everything; the append is simply retried.
const ATTEMPTS: usize = 3;
/// First pause before the visibility watcher asks the server for the gate: later appends
/// usually report a newer xmin (a lower bound of it) in the meantime, for free.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(100);
/// Least time between two ticks, and between two notifications to other processes.
const MIN_TICK: Duration = Duration::from_millis(1);
const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);
const RECONNECT: Duration = Duration::from_secs(1);
/// A pooled connection idle longer than this is pinged before use (see `connect_with`).
const PING_IF_IDLE: Duration = Duration::from_secs(1);

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
    core: Arc<Core>,
    batches: mpsc::Sender<Job>,
    numbers: Arc<Numbers>,
    /// The LISTEN connection's own pool (see [`Self::from_pool`]).
    listen_pool: PgPool,
    tasks: Vec<JoinHandle<()>>,
}

/// What appends need, shared with the batch writer.
struct Core {
    pool: PgPool,
    shared: Arc<Shared>,
}

/// An append waiting for a batch writer.
struct Job {
    request: AppendRequest,
    done: oneshot::Sender<StoreResult<Appended>>,
}

/// State shared with the background tasks that turn commits into ticks.
struct Shared {
    ticks: watch::Sender<u64>,
    /// The largest transaction id known committed (here or by another process).
    pending: AtomicU64,
    /// The largest transaction id already announced by a tick once visible.
    announced: AtomicU64,
    /// The largest gate seen (an append's snapshot xmin, or [`gate_sql`]'s): every
    /// transaction below it that could append has ended.
    gate: AtomicU64,
    /// This process's transactions that never append, which the gate looks past.
    bystanders: Bystanders,
    /// The largest transaction id of our own appends, and the largest announced (visible) one.
    local: AtomicU64,
    local_visible: AtomicU64,
    wake: Notify,
    wake_notifier: Notify,
    /// Held (read) by a background task for each query it sends on the pool, and (write) by
    /// [`EventStore::close`] before it aborts them: a task aborted mid-query drops its
    /// connection with the answer unread, sqlx then returns it to the pool late, after the
    /// pool's close, and it stayed open (`postgres_close_ends_every_connection`, about one run
    /// in five).
    queries: tokio::sync::RwLock<()>,
}

impl Shared {
    fn new(pool: PgPool) -> Self {
        Shared {
            ticks: watch::channel(0).0,
            pending: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            gate: AtomicU64::new(0),
            bystanders: Bystanders::of_store(pool),
            local: AtomicU64::new(0),
            local_visible: AtomicU64::new(0),
            wake: Notify::new(),
            wake_notifier: Notify::new(),
            queries: tokio::sync::RwLock::new(()),
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
            // sqlx pings every connection as it goes back to the pool; by default it pings it
            // again as it comes out, a second round trip for every pooled statement. Only a
            // connection idle for a while (which the server may have closed meanwhile: a
            // restart, an idle timeout) is pinged again; a dead one is replaced.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(
                    async move { Ok(meta.idle_for < PING_IF_IDLE || conn.ping().await.is_ok()) },
                )
            })
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
        let shared = Arc::new(Shared::new(pool.clone()));
        // Its own one-connection pool, so listening never takes a connection from appends.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with((*pool.connect_options()).clone());
        let core = Arc::new(Core {
            pool: pool.clone(),
            shared: shared.clone(),
        });
        let (batches, queue) = mpsc::channel(BATCH_QUEUE);
        let tasks = vec![
            runtime.spawn(listen(listen_pool.clone(), shared.clone())),
            runtime.spawn(watch_visibility(pool.clone(), shared.clone())),
            runtime.spawn(notify_others(pool.clone(), shared.clone())),
            runtime.spawn(write_batches(core.clone(), queue)),
        ];
        Ok(PostgresStore {
            pool,
            shared,
            core,
            batches,
            numbers: Arc::default(),
            listen_pool,
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
}

impl Core {
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

    /// One append in its own specialised statement.
    async fn append_one(&self, request: AppendRequest) -> StoreResult<Appended> {
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
                .gate
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
}

impl Numbers {
    /// Draws for every request waiting now, unless another draw is under way (it takes them,
    /// or leaves them to the next). Whoever holds the leader lock draws numbers for everyone
    /// waiting at that moment, in one statement. A request whose number an earlier leader drew
    /// finds the queue empty here and its answer ready.
    async fn serve(&self, pool: &PgPool) {
        let mut leader = self.leader.lock().await;
        let waiting = self
            .waiting
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if waiting.is_empty() {
            return;
        }
        match Self::draw(pool, &mut leader, waiting.len()).await {
            Ok(numbers) => {
                for (done, n) in waiting.into_iter().zip(numbers) {
                    let _ = done.send(Ok(n));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for done in waiting {
                    let _ = done.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }

    /// [`draw_numbers`] on the numbers' own connection, made anew (once) when there is none
    /// or the one there fails: a server restart costs no open an error.
    async fn draw(
        pool: &PgPool,
        slot: &mut Option<PgConnection>,
        n: usize,
    ) -> StoreResult<Vec<u64>> {
        if let Some(conn) = slot.as_mut() {
            match draw_numbers(conn, n).await {
                Ok(numbers) => return Ok(numbers),
                Err(e) => {
                    tracing::debug!(error = %e, "the ticket-number connection failed; reconnecting");
                    *slot = None;
                }
            }
        }
        let options = pool.connect_options();
        let conn = match tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(conn)) => slot.insert(conn),
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "connecting for ticket numbers timed out".into(),
                ))
            }
        };
        let drawn = draw_numbers(conn, n).await;
        if drawn.is_err() {
            *slot = None;
        }
        drawn
    }
}

/// Draws `n` ticket numbers in one statement, ascending. Concurrent opens have no order among
/// themselves, so any of them may take any of the numbers; every later open gets a larger one.
async fn draw_numbers(conn: &mut PgConnection, n: usize) -> StoreResult<Vec<u64>> {
    let count = i64::try_from(n).map_err(corrupt)?;
    let mut numbers: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('ticket_numbers') FROM generate_series(1, $1)")
            .bind(count)
            .fetch_all(conn)
            .await
            .map_err(unavailable)?;
    numbers.sort_unstable();
    if numbers.len() != n {
        return Err(StoreError::Corrupt(
            "the sequence drew too few numbers".into(),
        ));
    }
    numbers
        .into_iter()
        .map(|v| u64::try_from(v).map_err(corrupt))
        .collect()
}

/// Ticket-number requests waiting for a draw.
#[derive(Default)]
struct Numbers {
    waiting: std::sync::Mutex<Vec<oneshot::Sender<StoreResult<u64>>>>,
    /// Held by whoever draws, with the connection the draws go through (made on first use,
    /// and again after a failure). It is not the pool's: from the pool an open waited for a
    /// connection twice, for its number and for its append, behind every other request.
    leader: tokio::sync::Mutex<Option<PgConnection>>,
}

/// Appends per batch statement (see [`write_batches`]).
const MAX_BATCH: usize = 64;
const BATCH_QUEUE: usize = 4096;

/// Many appends to distinct streams in one statement. Each request succeeds or conflicts on
/// its own: its head moves only at its expected version and hash, and only requests whose head
/// moved insert their idempotency record and events.
const BATCH_SQL: &str = "WITH req AS (\
      SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bigint[], $5::bytea[]) \
      AS r(stream_id, new_version, new_hash, expected, prev_hash)), \
    upd AS (UPDATE streams s SET version = r.new_version, last_hash = r.new_hash FROM req r \
      WHERE r.expected > 0 AND s.stream_id = r.stream_id AND s.version = r.expected \
      AND s.last_hash = r.prev_hash RETURNING s.stream_id), \
    ins AS (INSERT INTO streams (stream_id, version, last_hash) \
      SELECT stream_id, new_version, new_hash FROM req WHERE expected = 0 \
      ON CONFLICT (stream_id) DO NOTHING RETURNING stream_id), \
    ok AS (SELECT stream_id FROM upd UNION ALL SELECT stream_id FROM ins), \
    idem AS (INSERT INTO idempotency (user_id, key, fingerprint, response, created_at) \
      SELECT i.user_id, i.key, i.fingerprint, i.response, $6 \
      FROM unnest($7::uuid[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[]) \
      AS i(stream_id, user_id, key, fingerprint, response) \
      WHERE i.stream_id IN (SELECT stream_id FROM ok)), \
    evs AS (INSERT INTO events (stream_id, version, event_id, event_type, schema_version, \
      recorded_at, metadata, payload, prev_hash, hash) \
      SELECT e.stream_id, e.version, e.event_id, e.event_type, e.schema_version, e.recorded_at, \
      e.metadata, e.payload, e.prev_hash, e.hash \
      FROM unnest($12::uuid[], $13::bigint[], $14::uuid[], $15::text[], $16::bigint[], \
      $17::timestamptz[], $18::bytea[], $19::bytea[], $20::bytea[], $21::bytea[]) \
      WITH ORDINALITY AS e(stream_id, version, event_id, event_type, schema_version, \
      recorded_at, metadata, payload, prev_hash, hash, ord) \
      WHERE e.stream_id IN (SELECT stream_id FROM ok) ORDER BY e.ord \
      RETURNING stream_id, seq, version, tx_id) \
    SELECT stream_id, seq, version, tx_id::text::bigint AS tx, \
      pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin FROM evs";

/// The batch writer. It takes every append waiting (up to [`MAX_BATCH`], one per stream) and
/// writes them in one statement, so concurrent commands share statements and commits instead
/// of paying for one each; with a single append waiting it uses the specialised statement.
///
/// One writer: the appends that arrive while a batch commits make up the next, larger one.
/// With several, each took a share of them, and the server paid for more statements and
/// commits (an fdatasync each) on the same CPU the commands need. At 32 clients, in
/// alternating runs (docs/PERFORMANCE.md, session 17): 1 writer 5,666 - 5,965 commands/s with
/// p99 11.1 - 12.4 ms, 2 writers 5,125 - 5,487, 3 writers 5,183 - 5,214, 4 writers 4,532 -
/// 4,817 (p99 14.9 - 16.4 ms), 8 writers 4,188 - 4,260.
async fn write_batches(core: Arc<Core>, mut queue: mpsc::Receiver<Job>) {
    // An append for a stream already in the batch waits for the next one: a statement must
    // not move one head twice.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            if batch
                .iter()
                .any(|b| b.request.stream_id == job.request.stream_id)
            {
                held = Some(job);
                break;
            }
            batch.push(job);
        }
        core.run_batch(batch).await;
    }
}

/// Why a batch statement could not decide for its requests.
enum BatchFailure {
    /// A unique key (idempotency key, event id) clashed: each request is retried on its own,
    /// where the clash is attributed precisely.
    Separately,
    Unavailable(String),
}

/// One request's share of a batch.
struct Part {
    job: Job,
    events: Vec<StoredEvent>,
    new_version: u64,
}

impl Core {
    async fn run_batch(&self, mut batch: Vec<Job>) {
        if batch.len() == 1 {
            if let Some(job) = batch.pop() {
                let result = self.append_one(job.request).await;
                let _ = job.done.send(result);
            }
            return;
        }
        let mut parts = Vec::with_capacity(batch.len());
        for job in batch {
            let request = &job.request;
            // Requests the single path answers specially (overflowing versions, a create that
            // does not chain from zeros, chain errors) take it.
            let simple = i64::try_from(request.expected_version).is_ok()
                && (request.expected_version > 0 || request.prev_hash == ZERO_HASH);
            match chain(request) {
                Ok(events)
                    if simple
                        && events
                            .last()
                            .is_some_and(|e| i64::try_from(e.version).is_ok()) =>
                {
                    let new_version = events.last().map_or(0, |e| e.version);
                    parts.push(Part {
                        job,
                        events,
                        new_version,
                    });
                }
                _ => {
                    let result = self.append_one(job.request).await;
                    let _ = job.done.send(result);
                }
            }
        }
        match self.append_parts(&mut parts).await {
            Ok(found) => {
                for (part, found) in parts.into_iter().zip(found) {
                    let result = if found {
                        Ok(Appended {
                            version: part.new_version,
                            events: part.events,
                        })
                    } else {
                        self.conflict(&part.job.request).await
                    };
                    let _ = part.job.done.send(result);
                }
            }
            Err(BatchFailure::Separately) => {
                let results = futures::future::join_all(
                    parts.iter().map(|p| self.append_one(p.job.request.clone())),
                )
                .await;
                for (part, result) in parts.into_iter().zip(results) {
                    let _ = part.job.done.send(result);
                }
            }
            Err(BatchFailure::Unavailable(why)) => {
                for part in parts {
                    let _ = part
                        .job
                        .done
                        .send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }

    /// Writes the parts in one statement, fills in their positions, and says which of them
    /// were written (the rest conflicted).
    async fn append_parts(&self, parts: &mut [Part]) -> Result<Vec<bool>, BatchFailure> {
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut heads = HeadArrays::default();
        let mut idem = IdemArrays::default();
        let mut evs = EventArrays::default();
        for part in parts.iter() {
            let r = &part.job.request;
            heads.stream_ids.push(r.stream_id);
            heads.new_versions.push(as_i64(part.new_version));
            heads
                .new_hashes
                .push(part.events.last().map_or(&r.prev_hash[..], |e| &e.hash[..]));
            heads.expected.push(as_i64(r.expected_version));
            heads.prev_hashes.push(&r.prev_hash[..]);
            if let Some(rec) = &r.idempotency {
                idem.stream_ids.push(r.stream_id);
                idem.users.push(rec.user.as_bytes());
                idem.keys.push(rec.key.as_bytes());
                idem.fingerprints.push(&rec.fingerprint);
                idem.responses.push(&rec.response);
            }
            for e in &part.events {
                evs.push(e);
            }
        }
        let created_at = Utc::now();
        let mut attempt = 1;
        let rows = loop {
            let result = sqlx::query(BATCH_SQL)
                .bind(&heads.stream_ids)
                .bind(&heads.new_versions)
                .bind(&heads.new_hashes)
                .bind(&heads.expected)
                .bind(&heads.prev_hashes)
                .bind(created_at)
                .bind(&idem.stream_ids)
                .bind(&idem.users)
                .bind(&idem.keys)
                .bind(&idem.fingerprints)
                .bind(&idem.responses)
                .bind(&evs.stream_ids)
                .bind(&evs.versions)
                .bind(&evs.event_ids)
                .bind(&evs.types)
                .bind(&evs.schema_versions)
                .bind(&evs.recorded_at)
                .bind(&evs.metadata)
                .bind(&evs.payloads)
                .bind(&evs.prev_hashes)
                .bind(&evs.hashes)
                .fetch_all(&self.pool)
                .await;
            match result {
                Ok(rows) => break rows,
                // Deadlocks between batches of several processes roll back the whole batch.
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => attempt += 1,
                Err(e) if is_unique_violation(&e) || is_transient(&e) => {
                    return Err(BatchFailure::Separately)
                }
                Err(e) => return Err(BatchFailure::Unavailable(e.to_string())),
            }
        };
        let index: std::collections::HashMap<Uuid, usize> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.job.request.stream_id, i))
            .collect();
        let mut found = vec![false; parts.len()];
        let mut max_tx = 0;
        let bad = || BatchFailure::Unavailable("inserted rows do not match the batch".into());
        for row in &rows {
            let get = |name: &str| {
                row.try_get::<i64, _>(name)
                    .ok()
                    .and_then(|v| u64::try_from(v).ok())
            };
            let stream_id: Uuid = row.try_get("stream_id").map_err(|_| bad())?;
            let (Some(seq), Some(version), Some(tx), Some(xmin)) =
                (get("seq"), get("version"), get("tx"), get("xmin"))
            else {
                return Err(bad());
            };
            self.shared.gate.fetch_max(xmin, Ordering::AcqRel);
            max_tx = max_tx.max(tx);
            let i = *index.get(&stream_id).ok_or_else(bad)?;
            let part = &mut parts[i];
            let slot = version
                .checked_sub(part.job.request.expected_version.saturating_add(1))
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| part.events.get_mut(k))
                .ok_or_else(bad)?;
            slot.position = Position { tx, seq };
            found[i] = true;
        }
        if max_tx > 0 {
            self.shared.appended(max_tx);
        }
        Ok(found)
    }
}

/// The stream heads of a batch, bound as arrays.
#[derive(Default)]
struct HeadArrays<'a> {
    stream_ids: Vec<Uuid>,
    new_versions: Vec<i64>,
    new_hashes: Vec<&'a [u8]>,
    expected: Vec<i64>,
    prev_hashes: Vec<&'a [u8]>,
}

/// The idempotency records of a batch, bound as arrays.
#[derive(Default)]
struct IdemArrays<'a> {
    stream_ids: Vec<Uuid>,
    users: Vec<&'a [u8]>,
    keys: Vec<&'a [u8]>,
    fingerprints: Vec<&'a [u8]>,
    responses: Vec<&'a [u8]>,
}

/// The event columns of a batch, bound as arrays.
#[derive(Default)]
struct EventArrays<'a> {
    stream_ids: Vec<Uuid>,
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

impl<'a> EventArrays<'a> {
    fn push(&mut self, e: &'a StoredEvent) {
        self.stream_ids.push(e.stream_id);
        self.versions
            .push(i64::try_from(e.version).unwrap_or(i64::MAX));
        self.event_ids.push(e.event_id);
        self.types.push(&e.event_type);
        self.schema_versions.push(i64::from(e.schema_version));
        self.recorded_at.push(e.recorded_at);
        self.metadata.push(&e.metadata);
        self.payloads.push(&e.payload);
        self.prev_hashes.push(&e.prev_hash);
        self.hashes.push(&e.hash);
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
    fn database(&self) -> Option<crate::store::Database> {
        Some(crate::store::Database::Postgres(self.pool.clone()))
    }

    fn bystanders(&self) -> Option<Bystanders> {
        Some(self.shared.bystanders.clone())
    }

    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        if request.events.is_empty() {
            return self.core.append_one(request).await;
        }
        // Concurrent appends share one statement and one commit (see `write_batches`).
        let (done, answer) = oneshot::channel();
        self.batches
            .send(Job { request, done })
            .await
            .map_err(|_| StoreError::Unavailable("the batch writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the batch writer dropped an append".into()))?
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
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        read_all_on(&mut conn, after, limit, &self.shared.bystanders.current()).await
    }

    async fn read_batch_within(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<EventBatch> {
        if limit == 0 {
            return Ok(Vec::new().into());
        }
        // read_all's page as binary COPY rows. COPY takes no parameters: the values are plain
        // integers, formatted here.
        let after_seq = i64::try_from(after.seq).unwrap_or(i64::MAX);
        let rows = i64::try_from(limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
        let gate = gate_sql(&bigint_array(&self.shared.bystanders.current()));
        let page = page_sql(
            PAGE_COLUMNS,
            &format!("'{}'", after.tx),
            &after_seq.to_string(),
            &rows.to_string(),
            &format!("tx_id < {gate}"),
            &max_bytes.to_string(),
        );
        let sql = format!("COPY ({page}) TO STDOUT (FORMAT binary)");
        let mut chunks = self.pool.copy_out_raw(&sql).await.map_err(unavailable)?;
        let mut data = Vec::with_capacity(limit.min(100_000) * 600);
        while let Some(chunk) = chunks.next().await {
            data.extend_from_slice(&chunk.map_err(unavailable)?);
        }
        Ok(CopyRows::parse(data)?.into())
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
        let (done, answer) = oneshot::channel();
        if let Ok(mut waiting) = self.numbers.waiting.lock() {
            waiting.push(done);
        }
        // The draw runs as a task of its own: in this request's future, a client that went away
        // mid-draw would drop the answers of every open waiting on it (503s for nothing).
        let (numbers, pool) = (self.numbers.clone(), self.pool.clone());
        let _ = tokio::spawn(async move { numbers.serve(&pool).await }).await;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("no ticket number was drawn".into()))?
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.ticks.subscribe()
    }

    /// Ends the background tasks (LISTEN, the visibility watcher, the batch writer) and
    /// says goodbye on every connection, rather than leaving PostgreSQL to find them reset.
    async fn close(&self) {
        // No background query is left in flight (see `Shared::queries`).
        let _quiet = self.shared.queries.write().await;
        for task in &self.tasks {
            task.abort();
        }
        if let Some(conn) = self.numbers.leader.lock().await.take() {
            let _ = conn.close().await;
        }
        // The aborted listener's connection comes back after an `UNLISTEN *` (sqlx's drop), so
        // no notification is left unread on it: closing it with unread data in its socket
        // reset the connection, which PostgreSQL logged as an error.
        crate::store::close_pool(&self.listen_pool).await;
        crate::store::close_pool(&self.pool).await;
    }

    async fn ping(&self) -> StoreResult<()> {
        // Appends go through the one batch writer: without it the store cannot write.
        if self.batches.is_closed() {
            return Err(StoreError::Unavailable(
                "the batch writer has stopped".into(),
            ));
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// [`EventStore::read_all`] on a connection of the caller's, into the store's database and
/// schema: a projection runner reads the log on the connection it writes with. The gate looks
/// past the transactions in `bystanders` ([`Bystanders::current`]).
pub async fn read_all_on(
    conn: &mut PgConnection,
    after: Position,
    limit: usize,
    bystanders: &[i64],
) -> StoreResult<Vec<StoredEvent>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // seq never exceeds i64::MAX, so clamping keeps "(tx, seq) > after" exact.
    let after_seq = i64::try_from(after.seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let max_bytes = i64::try_from(PAGE_BYTES).unwrap_or(i64::MAX);
    let rows = sqlx::query(&READ_ALL_SQL)
        .bind(after.tx.to_string())
        .bind(after_seq)
        .bind(limit)
        .bind(bystanders)
        .bind(max_bytes)
        .fetch_all(conn)
        .await
        .map_err(unavailable)?;
    rows.iter().map(event_from_row).collect()
}

/// Up to `limit` events after `after` and up to `upto`, in log order, within [`PAGE_BYTES`]
/// as every page of the log is (but for its first event), with no gate: for a
/// reader that knows every event up to `upto` is settled (a log reader saw `upto`, so every
/// transaction ordered before it had ended). A rebuild's switch reads this way what the live
/// projections applied: the gate, computed while it holds their tables, may stop at a live
/// runner's batch of another process that waits on its locks.
pub async fn read_settled_on(
    conn: &mut PgConnection,
    after: Position,
    upto: Position,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let rows = sqlx::query(&READ_SETTLED_SQL)
        .bind(after.tx.to_string())
        .bind(clamp(after.seq))
        .bind(clamp(limit as u64))
        .bind(upto.tx.to_string())
        .bind(clamp(upto.seq))
        .bind(clamp(PAGE_BYTES as u64))
        .fetch_all(conn)
        .await
        .map_err(unavailable)?;
    rows.iter().map(event_from_row).collect()
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
/// them: when the gate has passed the committed transaction id.
async fn watch_visibility(pool: PgPool, shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        let mut pause = FIRST_POLL;
        loop {
            let target = shared.pending.load(Ordering::Acquire);
            if target <= shared.announced.load(Ordering::Acquire) {
                break;
            }
            let gate = shared.gate.load(Ordering::Acquire);
            if gate > target {
                shared.announce(target);
                // Coalesces ticks under load; appends meanwhile leave a wake-up behind.
                tokio::time::sleep(MIN_TICK).await;
                break;
            }
            // Under steady load the newest append is always still in flight: announce what
            // is visible already (everything below the gate) rather than wait for a lull.
            if gate > 0 && gate - 1 > shared.announced.load(Ordering::Acquire) {
                shared.announce(gate - 1);
                pause = FIRST_POLL;
            }
            tokio::time::sleep(pause).await;
            if shared.gate.load(Ordering::Acquire) <= target {
                let gate = {
                    let _query = shared.queries.read().await;
                    sqlx::query_scalar::<_, i64>(&GATE_SQL)
                        .bind(shared.bystanders.current())
                        .fetch_one(&pool)
                        .await
                };
                match gate {
                    Ok(gate) => {
                        shared
                            .gate
                            .fetch_max(u64::try_from(gate).unwrap_or(0), Ordering::AcqRel);
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
            let done = {
                let _query = shared.queries.read().await;
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(visible.to_string())
                    .execute(&pool)
                    .await
            };
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
