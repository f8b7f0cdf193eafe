//! The SQLite event store: the embedded default.
//!
//! Every write (appends, ticket numbers, purges) goes through one writer task that owns the
//! only writing connection. It drains up to [`MAX_BATCH`] pending requests, applies them
//! inside one transaction (a failing request is undone on its own, by a savepoint or by
//! statement atomicity, without touching the others), commits once, and only then answers.
//! Plain appends to distinct streams share their statements: one reads all their heads, one
//! inserts all their events.
//! With WAL and `synchronous=FULL`, an acknowledged append survives a SIGKILL or power loss.
//! The read models live in a file of their own beside the log (`ticketd.views.db` beside
//! `ticketd.db`, laid out by `migrations/sqlite-views`): SQLite has one write lock per file,
//! and in one file the projections' commits and the appends took turns at it.
//! A checkpointer task per file copies the WAL into the database file on its own connection,
//! so no commit waits for a checkpoint.
//! Reads use a separate pool and see only committed batches; because one writer commits in
//! order, the row id is the log order and `read_all` can never skip an event.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use ticketd_domain::{event_hash, HashInput, HASH_LEN, ZERO_HASH};

use crate::store::{
    AppendRequest, Appended, EventBatch, EventStore, IdempotencyHit, IdempotencyRecord, Position,
    StoreError, StoreResult, StoredEvent, PAGE_BYTES,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");
static VIEWS_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite-views");

/// Applies the read models' embedded migrations (`migrations/sqlite-views`) through any pool:
/// a rebuild uses it to lay out fresh read-model tables in a scratch file from the very same
/// DDL.
pub async fn migrate_views_pool(pool: &sqlx::SqlitePool) -> StoreResult<()> {
    run_migrations(&VIEWS_MIGRATOR, pool).await
}

async fn run_migrations(migrator: &Migrator, pool: &sqlx::SqlitePool) -> StoreResult<()> {
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
}

/// The read models' file for the log at `log`: `data/ticketd.db` → `data/ticketd.views.db`
/// (`.views` before the extension, or at the end of a name without one).
pub fn views_path(log: &std::path::Path) -> std::path::PathBuf {
    let stem = log.file_stem().unwrap_or_default().to_string_lossy();
    let name = match log.extension() {
        Some(ext) => format!("{stem}.views.{}", ext.to_string_lossy()),
        None => format!("{stem}.views"),
    };
    log.with_file_name(name)
}

/// Most requests one writer transaction takes (one fsync for all of them).
const MAX_BATCH: usize = 256;
/// Pending writes before callers wait: backpressure instead of unbounded memory.
const QUEUE: usize = 4096;
/// Expired idempotency records one write deletes (see `purge_idempotency`).
pub const PURGE_CHUNK: i64 = 1_000;
/// Events per INSERT statement, well under SQLite's limit of bound parameters.
const INSERT_CHUNK: usize = 64;
/// Streams per head lookup of [`append_together`].
const HEADS_CHUNK: usize = 64;
const READERS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, at most, the checkpointer copies the WAL into the database while appends come.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages at which a committing connection checkpoints by itself (SQLite's own default is
/// 1,000): a guard for when the checkpointer falls behind, not the usual path.
const WAL_GUARD_PAGES: u32 = 10_000;

const EVENT_COLUMNS: &str = "seq, stream_id, version, event_id, event_type, schema_version, \
                             recorded_at, metadata, payload, prev_hash, hash";

/// The SQLite adapter of [`EventStore`].
pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    reads: SqlitePool,
    /// The read models' file ([`views_path`]).
    views: SqlitePool,
    ticks: Arc<watch::Sender<u64>>,
    /// Set by [`EventStore::close`]: the writer and the checkpointers finish and close their
    /// connections.
    closing: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directory) the database at `url`, e.g.
    /// `sqlite://data/ticketd.db`, and its read models' file beside it ([`views_path`]), and
    /// starts the writer task. Call [`Self::migrate`] next.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Checkpoints run on their own connection (`run_checkpointer`); this higher
            // threshold only bounds the WAL should that task fall behind.
            .pragma("wal_autocheckpoint", WAL_GUARD_PAGES.to_string());
        // (`sqlite::memory:` is a named in-memory database here, and its read models another.)
        let filename = options.get_filename();
        if filename.as_os_str().is_empty() {
            return Err(StoreError::Unavailable(
                "the SQLite URL names no file: the log and its read models need one each".into(),
            ));
        }
        if let Some(parent) = filename.parent() {
            if !parent.as_os_str().is_empty() && !filename.starts_with("file:") {
                tokio::fs::create_dir_all(parent).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        // The writer connects first, so the file and its WAL exist before readers open it.
        let conn = options.connect().await.map_err(unavailable)?;
        let reads = readers(&options).await?;
        // The read models: derived data, rebuilt from the log if lost, so their commits wait
        // for no fsync (WAL keeps each atomic). Only the projections write here. Temporary
        // files in memory: the runner's multi-row upserts inside savepoints each opened,
        // wrote and deleted a statement journal file (`perf`: inode evictions on close), and
        // keeping them in memory took its time per event from 149 - 176 to 127 - 128 µs for
        // `tickets` and from 71 - 81 to 65 - 67 µs for `analytics` at 32 clients.
        let views_options = options
            .clone()
            .filename(views_path(filename))
            .synchronous(SqliteSynchronous::Normal)
            .pragma("temp_store", "memory");
        let views = readers(&views_options).await?;
        let (writer, rx) = mpsc::channel(QUEUE);
        let ticks = Arc::new(watch::channel(0u64).0);
        let checkpoints = options.connect().await.map_err(unavailable)?;
        let views_checkpoints = views_options.connect().await.map_err(unavailable)?;
        let closing = watch::channel(false).0;
        let tasks = vec![
            tokio::spawn(run_writer(conn, rx, ticks.clone(), closing.subscribe())),
            tokio::spawn(run_checkpointer(
                "log",
                checkpoints,
                ticks.subscribe(),
                closing.subscribe(),
            )),
            // The projections commit as the appends come, so the appends pace this one too.
            tokio::spawn(run_checkpointer(
                "views",
                views_checkpoints,
                ticks.subscribe(),
                closing.subscribe(),
            )),
        ];
        Ok(SqliteStore {
            writer,
            reads,
            views,
            ticks,
            closing,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Applies the embedded migrations: the log's (`migrations/sqlite`), then the read
    /// models' (`migrations/sqlite-views`); then checks that the read models were built from
    /// this log ([`Self::check_views`]).
    pub async fn migrate(&self) -> StoreResult<()> {
        run_migrations(&MIGRATOR, &self.reads).await?;
        migrate_views_pool(&self.views).await?;
        self.check_views().await
    }

    /// Refuses read models that are not of this log: built from another log (the log's file
    /// replaced, or deleted and imported again), or from further along this one (the log's
    /// file restored from a backup). Their checkpoints would sit past events they never
    /// applied, and the projections would skip those. A read-model file with no source yet
    /// (new) is bound to this log here.
    pub async fn check_views(&self) -> StoreResult<()> {
        let log_id: Vec<u8> = sqlx::query_scalar("SELECT id FROM log_identity")
            .fetch_one(&self.reads)
            .await
            .map_err(unavailable)?;
        let views = self.views.connect_options().get_filename().to_path_buf();
        let refuse = |why: &str| {
            StoreError::Unavailable(format!(
                "the read models in {} {why}: with the service stopped, move that file (and its \
                 -wal and -shm files) away, and ticketd builds it again from the log",
                views.display()
            ))
        };
        // IMMEDIATE: two processes starting at once bind the file once. A transaction that
        // is dropped on an error rolls back.
        let mut tx = self
            .views
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let source: Option<Vec<u8>> = sqlx::query_scalar("SELECT log_id FROM views_source")
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        match source {
            Some(id) if id == log_id => {}
            Some(_) => return Err(refuse("were built from another log")),
            None => {
                sqlx::query("INSERT INTO views_source (log_id) VALUES (?)")
                    .bind(&log_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(position_seq) FROM projection_checkpoints")
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        let end: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM events")
            .fetch_one(&self.reads)
            .await
            .map_err(unavailable)?;
        if applied.unwrap_or(0) > end.unwrap_or(0) {
            return Err(refuse("have applied events this log does not hold"));
        }
        Ok(())
    }

    /// The read pool (it can write too): for imports into an empty store, which bypass the
    /// writer task.
    pub fn pool(&self) -> &SqlitePool {
        &self.reads
    }

    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteOp,
    ) -> StoreResult<T> {
        // Once a close has begun the writer only finishes what is queued.
        if *self.closing.borrow() {
            return Err(StoreError::Unavailable(
                "the SQLite store is closing".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }

    /// A page of the whole log: at most `limit` events after `after`, cut where the bytes of
    /// payload and metadata before an event reach `max_bytes` (a running sum over the page,
    /// which is cut to `limit` first).
    async fn page(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        // Every SQLite position has tx 0, so one with a larger tx is after the whole log.
        if after.tx > 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let after_seq = i64::try_from(after.seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes.max(1)).unwrap_or(i64::MAX);
        let size = "(coalesce(length(payload), 0) + coalesce(length(metadata), 0))";
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS}, \
             sum({size}) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - {size} AS before \
             FROM (SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?)) \
             WHERE before < ? ORDER BY seq"
        ))
        .bind(after_seq)
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(&self.reads)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn database(&self) -> Option<crate::store::Database> {
        Some(crate::store::Database::Sqlite(self.views.clone()))
    }

    fn log_database(&self) -> Option<crate::store::Database> {
        Some(crate::store::Database::Sqlite(self.reads.clone()))
    }

    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        // Hashing only needs the request, so callers do it in parallel, off the writer.
        let events = chain(&request)?;
        let prepared = Box::new(Prepared { request, events });
        self.submit(|reply| WriteOp::Append(prepared, reply)).await
    }

    async fn read_stream(
        &self,
        stream_id: Uuid,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>> {
        let after = i64::try_from(after_version).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version > ? ORDER BY version"
        ))
        .bind(stream_id)
        .bind(after)
        .fetch_all(&self.reads)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all(&self, after: Position, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.page(after, limit, PAGE_BYTES).await
    }

    async fn read_batch_within(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<EventBatch> {
        Ok(self.page(after, limit, max_bytes).await?.into())
    }

    async fn idempotency(
        &self,
        user: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyHit>> {
        let row = sqlx::query(
            "SELECT fingerprint, response, created_at FROM idempotency \
             WHERE user = ? AND key = ? AND created_at > ?",
        )
        .bind(user)
        .bind(key)
        .bind(since.timestamp_micros())
        .fetch_optional(&self.reads)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(IdempotencyHit {
            fingerprint: row.try_get(0).map_err(corrupt)?,
            response: row.try_get(1).map_err(corrupt)?,
            created_at: from_micros(row.try_get(2).map_err(corrupt)?)?,
        }))
    }

    async fn purge_idempotency(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let before = before.timestamp_micros();
        // A chunk a write: the appends batched with each wait for one chunk, not for the whole
        // purge (after a long stop, a day's keys or more).
        let mut purged = 0;
        loop {
            let n = self.submit(|reply| WriteOp::Purge(before, reply)).await?;
            purged += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(purged);
            }
        }
    }

    async fn next_ticket_number(&self) -> StoreResult<u64> {
        self.submit(WriteOp::TicketNumber).await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.ticks.subscribe()
    }

    /// The writer finishes the requests already queued; then every connection closes, and the
    /// last one to each file folds its WAL into it and deletes it, so a stopped service leaves
    /// `ticketd.db` and `ticketd.views.db` whole on their own.
    async fn close(&self) {
        self.closing.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        crate::store::close_pool(&self.reads).await;
        crate::store::close_pool(&self.views).await;
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Unavailable(
                "the SQLite writer has stopped".into(),
            ));
        }
        for pool in [&self.reads, &self.views] {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// An append with its events already chained and hashed.
struct Prepared {
    request: AppendRequest,
    events: Vec<StoredEvent>,
}

enum WriteOp {
    Append(Box<Prepared>, oneshot::Sender<StoreResult<Appended>>),
    TicketNumber(oneshot::Sender<StoreResult<u64>>),
    Purge(i64, oneshot::Sender<StoreResult<u64>>),
}

/// What one request will answer once the batch commits.
enum Outcome {
    Append(StoreResult<Appended>),
    Number(u64),
    Purged(u64),
}

impl WriteOp {
    fn answer(self, outcome: Outcome) {
        // A caller that stopped waiting gets nothing; the write stands.
        match (self, outcome) {
            (WriteOp::Append(_, reply), Outcome::Append(r)) => drop(reply.send(r)),
            (WriteOp::TicketNumber(reply), Outcome::Number(n)) => drop(reply.send(Ok(n))),
            (WriteOp::Purge(_, reply), Outcome::Purged(n)) => drop(reply.send(Ok(n))),
            (op, _) => op.fail("internal error: mismatched write outcome"),
        }
    }

    fn fail(self, message: &str) {
        let err = || StoreError::Unavailable(message.to_owned());
        match self {
            WriteOp::Append(_, reply) => drop(reply.send(Err(err()))),
            WriteOp::TicketNumber(reply) => drop(reply.send(Err(err()))),
            WriteOp::Purge(_, reply) => drop(reply.send(Err(err()))),
        }
    }
}

/// The pool that reads a file (the log's or the read models'), up to [`READERS`] at once.
async fn readers(options: &SqliteConnectOptions) -> StoreResult<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(READERS)
        .min_connections(0)
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options.clone())
        .await
        .map_err(unavailable)
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteOp>,
    ticks: Arc<watch::Sender<u64>>,
    mut closing: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut sql = SqlCache::default();
    let mut closed = false;
    loop {
        tokio::select! {
            // On close, take no new requests but finish those already queued.
            _ = closing.wait_for(|c| *c), if !closed => {
                closed = true;
                rx.close();
                continue;
            }
            n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
        }
        let began = std::time::Instant::now();
        let ops = batch.len();
        let wrote = write_batch(&mut conn, &mut sql, &mut batch).await;
        tracing::debug!(
            ops,
            write_ms = began.elapsed().as_secs_f64() * 1e3,
            "write batch"
        );
        if wrote {
            ticks.send_modify(|n| *n = n.wrapping_add(1));
        }
        batch.clear();
    }
    let _ = conn.close().await;
}

/// Copies committed WAL frames into the database file, on a connection of its own.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold: that
/// commit, and the write turn it holds, then waits for the copy and two fsyncs (measured at 32
/// clients: one commit in eight took 15 ms instead of 1.5). A PASSIVE checkpoint takes no
/// write lock, so here it overlaps the writers instead of stalling them. It ends with the store.
async fn run_checkpointer(
    file: &'static str,
    mut conn: SqliteConnection,
    mut ticks: watch::Receiver<u64>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = closing.wait_for(|c| *c) => break,
            changed = ticks.changed() => if changed.is_err() { break },
        }
        let started = tokio::time::Instant::now();
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((_, log, copied)) => tracing::debug!(file, log, copied, "checkpoint"),
            Err(e) => {
                tracing::warn!(file, error = %e, "WAL checkpoint failed; retrying with the next appends")
            }
        }
        tokio::select! {
            _ = closing.wait_for(|c| *c) => break,
            () = tokio::time::sleep_until(started + CHECKPOINT_EVERY) => {}
        }
    }
    let _ = conn.close().await;
}

/// Applies and commits `ops`, answers each, and says whether any event was written.
async fn write_batch(
    conn: &mut SqliteConnection,
    sql: &mut SqlCache,
    ops: &mut Vec<WriteOp>,
) -> bool {
    // IMMEDIATE takes the write lock up front, so the version checks below cannot race
    // another process writing the same file.
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        fail_all(ops, &format!("cannot begin: {e}"));
        return false;
    }
    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    if let Err(e) = append_together(conn, sql, ops, &mut outcomes).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        fail_all(ops, &format!("write failed: {e}"));
        return false;
    }
    for (op, slot) in ops.iter().zip(outcomes.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let applied = match op {
            WriteOp::Append(prepared, _) => {
                apply_append(conn, sql, prepared).await.map(Outcome::Append)
            }
            WriteOp::TicketNumber(_) => next_number(conn).await.map(Outcome::Number),
            WriteOp::Purge(before, _) => sqlx::query(
                "DELETE FROM idempotency WHERE (user, key) IN (SELECT user, key \
                     FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)",
            )
            .bind(before)
            .bind(PURGE_CHUNK)
            .execute(&mut *conn)
            .await
            .map(|r| Outcome::Purged(r.rows_affected())),
        };
        match applied {
            Ok(outcome) => *slot = Some(outcome),
            Err(e) => {
                // Not a request's own conflict but the database failing: nothing is safe to keep.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                fail_all(ops, &format!("write failed: {e}"));
                return false;
            }
        }
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        fail_all(ops, &format!("commit failed: {e}"));
        return false;
    }
    let wrote_events = outcomes
        .iter()
        .any(|o| matches!(o, Some(Outcome::Append(Ok(a))) if !a.events.is_empty()));
    for (op, outcome) in ops.drain(..).zip(outcomes) {
        match outcome {
            Some(outcome) => op.answer(outcome),
            None => op.fail("internal error: a write was left out of its batch"),
        }
    }
    wrote_events
}

/// Writes a batch's plain appends (no idempotency key, the only append to its stream in the
/// batch) in shared statements: one reads their streams' heads, one inserts the events of every
/// append that still matches its head. That is two statements for the batch instead of two for
/// each append, and each statement is a round trip to SQLite's connection thread. The slots of
/// the appends it decided are filled in; the rest are left to [`apply_append`], one by one.
async fn append_together(
    conn: &mut SqliteConnection,
    sql: &mut SqlCache,
    ops: &[WriteOp],
    outcomes: &mut [Option<Outcome>],
) -> Result<(), sqlx::Error> {
    let mut picked: Vec<(usize, &Prepared)> = Vec::new();
    let mut streams: HashMap<Uuid, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Append(prepared, _) = op else {
            continue;
        };
        *streams.entry(prepared.request.stream_id).or_default() += 1;
        // Past i64::MAX a version cannot match; `apply_append` answers that conflict.
        let fits = prepared
            .events
            .iter()
            .all(|e| i64::try_from(e.version).is_ok());
        if prepared.request.idempotency.is_none() && !prepared.events.is_empty() && fits {
            picked.push((i, prepared));
        }
    }
    // A stream's second append must see its first one's head: those go one by one.
    picked.retain(|(_, p)| streams.get(&p.request.stream_id) == Some(&1));
    if picked.len() < 2 {
        return Ok(());
    }

    let mut heads: HashMap<Uuid, (i64, Vec<u8>)> = HashMap::with_capacity(picked.len());
    for chunk in picked.chunks(HEADS_CHUNK) {
        let mut query = sqlx::query_as::<_, (Uuid, i64, Vec<u8>)>(sql.heads(chunk.len()));
        for (_, p) in chunk {
            query = query.bind(p.request.stream_id);
        }
        for (stream, version, hash) in query.fetch_all(&mut *conn).await? {
            heads.insert(stream, (version, hash));
        }
    }

    let mut accepted: Vec<(usize, &Prepared)> = Vec::with_capacity(picked.len());
    for (i, p) in picked {
        let head = heads.get(&p.request.stream_id);
        match check_head(&p.request, head.map(|(v, h)| (*v, &h[..]))) {
            Ok(_) => accepted.push((i, p)),
            Err(e) => outcomes[i] = Some(Outcome::Append(Err(e))),
        }
    }

    let rows: Vec<&StoredEvent> = accepted.iter().flat_map(|(_, p)| &p.events).collect();
    let savepoint = rows.len() > INSERT_CHUNK;
    open_part(conn, savepoint).await?;
    let Some(seqs) = insert_events(conn, sql, &rows).await? else {
        // A reused event id (the heads rule out a taken version). Undone, the appends go one
        // by one, where the clash is pinned on its own request.
        undo(conn, savepoint).await?;
        return Ok(());
    };
    keep(conn, savepoint).await?;
    for (i, p) in accepted {
        outcomes[i] = Some(Outcome::Append(positioned(p, &seqs)));
    }
    Ok(())
}

/// Checks a stream's head as read (version and hash of its last event; `None` for an empty
/// stream) against what the request expects, and gives the stream's version.
fn check_head(request: &AppendRequest, head: Option<(i64, &[u8])>) -> StoreResult<u64> {
    let (actual, last_hash) = match head {
        None => (0, ZERO_HASH),
        Some((version, hash)) => match (u64::try_from(version), <[u8; HASH_LEN]>::try_from(hash)) {
            (Ok(v), Ok(h)) => (v, h),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "bad head of stream {}",
                    request.stream_id
                )))
            }
        },
    };
    if actual != request.expected_version || last_hash != request.prev_hash {
        return Err(StoreError::Conflict {
            stream_id: request.stream_id,
            expected: request.expected_version,
            actual,
        });
    }
    Ok(actual)
}

/// Log positions by (stream, version), as the inserts returned them.
type Seqs = HashMap<(Uuid, i64), i64>;

/// Inserts `rows` in statements of [`INSERT_CHUNK`] events; `None` when a unique key clashed
/// (that statement undid itself; earlier ones are the caller's to undo).
async fn insert_events(
    conn: &mut SqliteConnection,
    sql: &mut SqlCache,
    rows: &[&StoredEvent],
) -> Result<Option<Seqs>, sqlx::Error> {
    let mut seqs = Seqs::with_capacity(rows.len());
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut query = sqlx::query(sql.insert_events(chunk.len()));
        for event in chunk {
            query = bind_event(query, event);
        }
        match query.fetch_all(&mut *conn).await {
            Ok(returned) => {
                for row in returned {
                    let seq: i64 = row.try_get(0)?;
                    let version: i64 = row.try_get(1)?;
                    let stream: Uuid = row.try_get(2)?;
                    seqs.insert((stream, version), seq);
                }
            }
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(seqs))
}

/// The request's events with the positions their insert returned (RETURNING order is
/// unspecified, so each is matched by stream and version).
fn positioned(prepared: &Prepared, seqs: &Seqs) -> StoreResult<Appended> {
    let mut events = prepared.events.clone();
    for event in &mut events {
        let seq = i64::try_from(event.version)
            .ok()
            .and_then(|v| seqs.get(&(event.stream_id, v)))
            .and_then(|seq| u64::try_from(*seq).ok())
            .ok_or_else(|| StoreError::Corrupt("inserted rows do not match the request".into()))?;
        event.position = Position { tx: 0, seq };
    }
    Ok(Appended {
        version: events
            .last()
            .map_or(prepared.request.expected_version, |e| e.version),
        events,
    })
}

/// Binds one event's columns, in the order of [`SqlCache::insert_events`]. The caller has
/// checked that the version fits an i64.
pub(crate) fn bind_event<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    event: &'q StoredEvent,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let version = i64::try_from(event.version).unwrap_or(i64::MAX);
    query
        .bind(event.stream_id)
        .bind(version)
        .bind(event.event_id)
        .bind(event.event_type.as_str())
        .bind(i64::from(event.schema_version))
        .bind(event.recorded_at.timestamp_micros())
        .bind(event.metadata.as_slice())
        .bind(event.payload.as_slice())
        .bind(event.prev_hash.as_slice())
        .bind(event.hash.as_slice())
}

fn fail_all(ops: &mut Vec<WriteOp>, message: &str) {
    for op in ops.drain(..) {
        op.fail(message);
    }
}

async fn next_number(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "UPDATE counters SET value = value + 1 WHERE name = 'ticket_number' RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    u64::try_from(n).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Applies one append inside the batch's transaction. `Err` means the database failed (the
/// batch is abandoned); a conflict is `Ok(Err(..))` and leaves nothing of this request behind.
async fn apply_append(
    conn: &mut SqliteConnection,
    sql: &mut SqlCache,
    prepared: &Prepared,
) -> Result<StoreResult<Appended>, sqlx::Error> {
    let request = &prepared.request;
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, hash FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1",
    )
    .bind(request.stream_id)
    .fetch_optional(&mut *conn)
    .await?;
    let actual = match check_head(request, head.as_ref().map(|(v, h)| (*v, &h[..]))) {
        Ok(actual) => actual,
        Err(e) => return Ok(Err(e)),
    };
    let conflict = || {
        Ok(Err(StoreError::Conflict {
            stream_id: request.stream_id,
            expected: request.expected_version,
            actual,
        }))
    };
    // Past i64::MAX the stream cannot really be at the expected version.
    if prepared
        .events
        .iter()
        .any(|e| i64::try_from(e.version).is_err())
    {
        return conflict();
    }
    let rows: Vec<&StoredEvent> = prepared.events.iter().collect();

    let chunks = rows.chunks(INSERT_CHUNK).len();
    let statements = usize::from(request.idempotency.is_some()) + chunks;
    // A single statement is atomic on its own; more need a savepoint to be undone together.
    let savepoint = statements > 1;
    open_part(conn, savepoint).await?;

    if let Some(record) = &request.idempotency {
        match insert_idempotency(conn, record).await {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                undo(conn, savepoint).await?;
                return Ok(Err(StoreError::IdempotencyKeyTaken));
            }
            Err(e) => return Err(e),
        }
    }

    // Only a reused event id can collide: the head check rules out a taken version.
    let Some(seqs) = insert_events(conn, sql, &rows).await? else {
        undo(conn, savepoint).await?;
        return conflict();
    };
    keep(conn, savepoint).await?;
    Ok(positioned(prepared, &seqs))
}

/// Opens a savepoint when a write takes several statements (`savepoint`); one statement
/// undoes itself when it fails. Closed by [`keep`] or [`undo`].
async fn open_part(conn: &mut SqliteConnection, savepoint: bool) -> Result<(), sqlx::Error> {
    if savepoint {
        sqlx::query("SAVEPOINT append").execute(&mut *conn).await?;
    }
    Ok(())
}

/// Keeps what was written since [`open_part`].
async fn keep(conn: &mut SqliteConnection, savepoint: bool) -> Result<(), sqlx::Error> {
    if savepoint {
        sqlx::query("RELEASE append").execute(&mut *conn).await?;
    }
    Ok(())
}

/// Undoes a failed write's earlier statements (a failed statement undoes itself).
async fn undo(conn: &mut SqliteConnection, savepoint: bool) -> Result<(), sqlx::Error> {
    if savepoint {
        sqlx::query("ROLLBACK TO append")
            .execute(&mut *conn)
            .await?;
        sqlx::query("RELEASE append").execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_idempotency(
    conn: &mut SqliteConnection,
    record: &IdempotencyRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency (user, key, fingerprint, response, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(record.user.as_str())
    .bind(record.key.as_str())
    .bind(record.fingerprint.as_slice())
    .bind(record.response.as_slice())
    .bind(Utc::now().timestamp_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// INSERT statements for 1..=INSERT_CHUNK events, built once per writer.
#[derive(Default)]
struct SqlCache {
    insert: Vec<String>,
    heads: Vec<String>,
}

impl SqlCache {
    fn insert_events(&mut self, n: usize) -> &str {
        while self.insert.len() < n {
            let count = self.insert.len() + 1;
            let mut sql = String::from(
                "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, \
                 recorded_at, metadata, payload, prev_hash, hash) VALUES ",
            );
            for i in 0..count {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
            }
            sql.push_str(" RETURNING seq, version, stream_id");
            self.insert.push(sql);
        }
        self.insert
            .get(n.saturating_sub(1))
            .map_or("", String::as_str)
    }

    /// The head (version and hash of the last event) of each of `n` streams. Each stream's
    /// head is one seek to the end of its `(stream_id, version)` index, then one row by id.
    fn heads(&mut self, n: usize) -> &str {
        while self.heads.len() < n {
            let count = self.heads.len() + 1;
            let mut sql = String::from("WITH s(id) AS (VALUES ");
            for i in 0..count {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}(?)");
            }
            sql.push_str(
                ") SELECT e.stream_id, e.version, e.hash FROM s JOIN events e ON e.seq = \
                 (SELECT seq FROM events WHERE stream_id = s.id ORDER BY version DESC LIMIT 1)",
            );
            self.heads.push(sql);
        }
        self.heads
            .get(n.saturating_sub(1))
            .map_or("", String::as_str)
    }
}

fn event_from_row(row: &SqliteRow) -> StoreResult<StoredEvent> {
    let seq: i64 = row.try_get("seq").map_err(corrupt)?;
    let version: i64 = row.try_get("version").map_err(corrupt)?;
    let schema_version: i64 = row.try_get("schema_version").map_err(corrupt)?;
    Ok(StoredEvent {
        position: Position {
            tx: 0,
            seq: u64::try_from(seq).map_err(corrupt)?,
        },
        stream_id: row.try_get("stream_id").map_err(corrupt)?,
        version: u64::try_from(version).map_err(corrupt)?,
        event_id: row.try_get("event_id").map_err(corrupt)?,
        event_type: row.try_get("event_type").map_err(corrupt)?,
        schema_version: u32::try_from(schema_version).map_err(corrupt)?,
        recorded_at: from_micros(row.try_get("recorded_at").map_err(corrupt)?)?,
        metadata: row.try_get("metadata").map_err(corrupt)?,
        payload: row.try_get("payload").map_err(corrupt)?,
        prev_hash: hash_from(row.try_get("prev_hash").map_err(corrupt)?)?,
        hash: hash_from(row.try_get("hash").map_err(corrupt)?)?,
    })
}

// Helpers shared with the PostgreSQL adapter.

/// The request's events as they will be stored: versions after `expected_version`, recorded_at
/// cut to whole microseconds (what both stores keep), and the hash chain starting at the
/// request's `prev_hash`. Positions are filled in once written.
pub fn chain(request: &AppendRequest) -> StoreResult<Vec<StoredEvent>> {
    let mut prev_hash = request.prev_hash;
    let mut version = request.expected_version;
    let mut out = Vec::with_capacity(request.events.len());
    for event in &request.events {
        // Saturating: a version this large cannot match the stream, so the append conflicts.
        version = version.saturating_add(1);
        let recorded_at = from_micros(event.recorded_at.timestamp_micros())?;
        let hash = event_hash(&HashInput {
            prev_hash: &prev_hash,
            stream_id: request.stream_id,
            version,
            event_id: event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            recorded_at,
            metadata: &event.metadata,
            payload: &event.payload,
        });
        out.push(StoredEvent {
            position: Position::START,
            stream_id: request.stream_id,
            version,
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            recorded_at,
            metadata: event.metadata.clone(),
            payload: event.payload.clone(),
            prev_hash,
            hash,
        });
        prev_hash = hash;
    }
    Ok(out)
}

pub(crate) fn from_micros(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp out of range: {micros} µs")))
}

pub(crate) fn hash_from(bytes: Vec<u8>) -> StoreResult<[u8; HASH_LEN]> {
    <[u8; HASH_LEN]>::try_from(bytes).map_err(|b| {
        StoreError::Corrupt(format!(
            "a stored hash has {} bytes, not {HASH_LEN}",
            b.len()
        ))
    })
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

#[cfg(test)]
mod tests {
    use super::{views_path, SqliteStore};
    use std::path::Path;

    #[test]
    fn the_read_models_file_sits_beside_the_log() {
        assert_eq!(
            views_path(Path::new("data/ticketd.db")),
            Path::new("data/ticketd.views.db")
        );
        assert_eq!(
            views_path(Path::new("/srv/t/log.sqlite3")),
            Path::new("/srv/t/log.views.sqlite3")
        );
        assert_eq!(views_path(Path::new("ticketd")), Path::new("ticketd.views"));
    }

    /// A URL with no file in it (`sqlite://`) would give every connection a private
    /// temporary database, and the read models no place beside the log: refused, saying why.
    #[tokio::test]
    async fn a_url_without_a_file_is_refused() {
        let refused = SqliteStore::open("sqlite://")
            .await
            .err()
            .unwrap_or_else(|| panic!("sqlite:// opened"));
        assert!(refused.to_string().contains("names no file"), "{refused}");
    }
}
