//! The read side of ticketd: projections that fold the event log into read models kept in the
//! store's own database (the SQLite file or the PostgreSQL schema), and the queries over them.
//!
//! This crate owns the projector runner (checkpoints, catch-up, following new commits, retry
//! with backoff, one leader per projection on PostgreSQL) and what a runner's last batch left
//! in memory for the next (module `kept`), each projection's status for
//! `/metrics`, waiting for `min_position` (CONTRACT §6), the read models: [`tickets`]
//! (§6.1, §6.2), [`feed`] (§6.3, §6.4) and [`analytics`] (§6.5), and their blue/green
//! [`rebuild`]s (on PostgreSQL from a [`bulk`] pass loaded by `COPY`). Every piece of DDL is in
//! `migrations/`.

pub mod analytics;
pub mod bulk;
pub mod feed;
mod kept;
pub mod keys;
pub mod rebuild;
mod scratch_files;
pub mod sql;
pub mod tickets;
mod together;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteSynchronous;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use ticketd_commands::postgres::Bystanders;
use ticketd_commands::{Database, EventStore, Position, StoreError, StoredEvent};

use crate::sql::{unavailable, Bind, Conn};

/// Events applied per transaction: short enough that SQLite's single writer is never held long.
pub const BATCH: usize = 500;
/// PostgreSQL: events a runner applies per transaction. A runner that falls behind under load
/// takes full batches, and the oldest event of one waits for all of it: at 32 clients the
/// `tickets` runner took 60 - 150 ms for 500 events. With 250 its lag p99 was under 100 ms in
/// 5 of 6 runs against 3 of 6, the highest lag lower in 5 of 6 pairs, and catching up with
/// 450,000 events took 1.07x the time (docs/PERFORMANCE.md, session 22).
const PG_BATCH: usize = 250;
/// How often a projection looks for new events when no commit signal arrives.
const POLL: Duration = Duration::from_secs(1);
/// SQLite: the least time between the starts of a caught-up runner's batches (see `turn`).
/// Each batch pays a log read, `BEGIN IMMEDIATE` and a commit; taken at every append's commit,
/// they would hold a handful of events each and take that CPU from the commands.
const TURN_GAP: Duration = Duration::from_millis(25);
/// PostgreSQL: the least time between the starts of a caught-up runner's batches (see `turn`).
/// Under load a runner that read every commit at once took batches of about 7 events, and
/// their fixed cost (a log read, the state reads, a commit each) was PostgreSQL's largest
/// consumer of CPU; at 20 ms a batch holds about 80 events and the commands get that CPU back
/// (docs/PERFORMANCE.md, session 12). An event after a quiet spell waits for nothing.
const BATCH_GAP: Duration = Duration::from_millis(20);
/// How often a PostgreSQL projector that is not the leader tries to become it.
const LOCK_RETRY: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A read model fed by the log, one event at a time, inside the runner's batch transaction.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the key of its checkpoint.
    fn name(&self) -> &'static str;

    /// The read-model tables it alone writes: what a rebuild replaces and compares.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one event. An error rolls the event back and stops the projection there; it is
    /// retried, never skipped. By default a batch of one, so a read model that implements
    /// [`Projection::apply_batch`] has one path writing its rows either way. `after`: as for
    /// [`Projection::apply_batch`].
    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        if self
            .apply_batch(conn, after, std::slice::from_ref(event))
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "projection {} implements neither apply nor apply_batch",
                self.name()
            )))
        }
    }

    /// Applies a whole batch in few statements, leaving exactly the rows that applying each
    /// event in turn would; `Ok(false)` (the default) has the runner apply them one by one. On
    /// an error the runner rolls the batch back and applies it one by one, which finds the
    /// failing event. `after` is the checkpoint the events follow, in the tables `conn` writes
    /// (`None`: they follow no checkpoint, such as one stream's events replayed alone): a
    /// projection that keeps what its last batch left in memory may trust it only when that
    /// batch ended at `after`, since then the tables hold exactly that (a batch that never
    /// committed leaves the checkpoint before it, and another runner's batches leave the
    /// states any runner would, the fold being deterministic). A rebuild's switch puts other
    /// tables in place at the same checkpoint: the runner then has it [`Projection::forget`]
    /// (the switch moves the checkpoint's generation on, see [`Mark`]).
    async fn apply_batch(
        &self,
        _conn: &mut Conn<'_>,
        _after: Option<Position>,
        _events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Its fold for a rebuild's bulk path (see [`bulk`]); `None`: rebuilt batch by batch.
    fn bulk(&self) -> Option<Box<dyn bulk::Fold>> {
        None
    }

    /// Forgets whatever its batches keep in memory of its rows: the runner found its
    /// checkpoint moved, by another runner or by a rebuild's switch to other tables.
    fn forget(&self) {}
}

/// What `/metrics` shows of one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// The last log position applied (as this process last saw it).
    pub position: Position,
    /// When this process last committed a batch.
    pub last_applied_at: Option<DateTime<Utc>>,
    /// Events this process applied since it started.
    pub events_applied: u64,
    /// Failed attempts since start (each is retried).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Stopped by an error and not past it yet (the last attempt failed).
    pub failing: bool,
    /// Whether this process runs the projection (always on SQLite; on PostgreSQL the holder of
    /// its advisory lock).
    pub leader: bool,
}

struct Shared {
    status: Mutex<ProjectionStatus>,
    checkpoint: watch::Sender<Position>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        // A poisoned lock only means another thread panicked mid-update; the data stays usable.
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    fn snapshot(&self) -> ProjectionStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A runner's view of [`Projector::shutdown`]. Runners look at it between batches, never
/// inside one, so a shutdown neither cuts a batch short nor leaves a transaction open.
#[derive(Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    pub(crate) fn asked(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a stop is asked; never if the projector is gone (its drop aborts the
    /// runners).
    pub(crate) async fn wait(&mut self) {
        if self.0.wait_for(|asked| *asked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `d`, less if a stop is asked meanwhile.
    pub(crate) async fn sleep(&mut self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.wait() => {}
        }
    }

    /// A caught-up runner's wait: until the store's next commit tick, `until` (the poll that
    /// guards against a missed tick), or a stop.
    pub(crate) async fn idle(&mut self, ticks: &mut watch::Receiver<u64>, until: Instant) {
        tokio::select! {
            changed = ticks.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(until).await;
                }
            }
            () = tokio::time::sleep_until(until) => {}
            () = self.wait() => {}
        }
    }
}

/// Why a `min_position` wait ended without the position.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("projection {0} is not running")]
    UnknownProjection(String),
    #[error("projection {name} has not reached {wanted} yet")]
    Timeout { name: String, wanted: Position },
}

/// The running projections of one process; dropping it stops them.
pub struct Projector {
    db: Database,
    /// The log's database: on SQLite another file than the read models'.
    log: Database,
    entries: Vec<Arc<Shared>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by [`Projector::shutdown`]; the runners see it through their [`Stop`].
    stopping: watch::Sender<bool>,
    /// The runners' own thread, when [`Projector::start`] made one.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Projector {
    fn drop(&mut self) {
        self.stop();
        // Dropping a runtime blocks, which async code must not; its tasks are aborted anyway.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The projections this build runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(tickets::TicketsProjection::default()),
        Arc::new(feed::FeedProjection),
        Arc::new(analytics::AnalyticsProjection::default()),
    ]
}

impl Projector {
    /// Starts every projection over the store's database, or `None` for a store without one,
    /// on a thread of their own. A batch is several round trips to the database, and on a
    /// saturated machine a runner sharing the request runtime waits behind the queued
    /// requests after each one (32 clients on 2 cores, PostgreSQL: tickets lag p50 43–65 →
    /// 23–33 ms). Without that thread (the OS refused it), on the current runtime.
    pub fn start(store: Arc<dyn EventStore>) -> Option<Projector> {
        let db = store.database()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ticketd-projector")
            .enable_all()
            .build();
        Some(match runtime {
            Ok(rt) => {
                let mut projector = {
                    let _on = rt.enter();
                    Projector::start_with(store.clone(), db, all())
                };
                projector.runtime = Some(rt);
                projector
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the projections; they share the server's");
                Projector::start_with(store.clone(), db, all())
            }
        })
    }

    /// Starts `projections` on the current runtime.
    pub fn start_with(
        store: Arc<dyn EventStore>,
        db: Database,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Projector {
        let mut entries = Vec::new();
        let mut members = Vec::new();
        for p in projections {
            let shared = Arc::new(Shared {
                status: Mutex::new(ProjectionStatus {
                    name: p.name(),
                    position: Position::START,
                    last_applied_at: None,
                    events_applied: 0,
                    errors: 0,
                    last_error: None,
                    failing: false,
                    leader: false,
                }),
                checkpoint: watch::channel(Position::START).0,
            });
            entries.push(shared.clone());
            members.push((p, shared));
        }
        let (stopping, asked) = watch::channel(false);
        let stop = Stop(asked);
        let tasks = match &db {
            // One write lock: every projection's batch in one transaction (see `together`).
            Database::Sqlite(_) => vec![tokio::spawn(together::run(
                store.clone(),
                db.clone(),
                members,
                stop,
            ))],
            Database::Postgres(pool) => members
                .into_iter()
                .map(|(p, shared)| {
                    tokio::spawn(run(store.clone(), pool.clone(), p, shared, stop.clone()))
                })
                .collect(),
        };
        Projector {
            log: store.log_database().unwrap_or_else(|| db.clone()),
            db,
            entries,
            tasks: Mutex::new(tasks),
            stopping,
            runtime: None,
        }
    }

    /// Stops every projection at once (also done on drop). A batch cut short rolls back.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }

    /// Stops every runner between its batches: each finishes the batch it is in, commits it
    /// and closes its connection (on PostgreSQL releasing its advisory lock with it, for
    /// another process to take). What has not stopped `within` is aborted, its batch rolled
    /// back. Returns whether every runner stopped by itself.
    pub async fn shutdown(&self, within: Duration) -> bool {
        self.stopping.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = Instant::now() + within;
        let mut clean = true;
        for task in &mut tasks {
            if !matches!(
                tokio::time::timeout_at(deadline, &mut *task).await,
                Ok(Ok(()))
            ) {
                clean = false;
                task.abort();
            }
        }
        clean
    }

    /// The database the read models are in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The database the log is in (for [`lag`]).
    pub fn log_database(&self) -> &Database {
        &self.log
    }

    /// Every projection's status, in a fixed order.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.entries.iter().map(|e| e.snapshot()).collect()
    }

    /// Waits until projection `name` has applied `wanted`, for at most `timeout`. Reads the
    /// stored checkpoint too, so it also sees a leader in another process (PostgreSQL).
    pub async fn wait_for(
        &self,
        name: &str,
        wanted: Position,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let shared = self
            .entries
            .iter()
            .find(|e| e.snapshot().name == name)
            .ok_or_else(|| WaitError::UnknownProjection(name.to_owned()))?;
        let mut rx = shared.checkpoint.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() >= wanted {
                return Ok(());
            }
            let leader = shared.snapshot().leader;
            if !leader {
                if let Ok(at) = read_checkpoint(&self.db, name).await {
                    if at >= wanted {
                        return Ok(());
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    name: name.to_owned(),
                    wanted,
                });
            }
            // A follower cannot be told when another process commits: it polls. So does a
            // leader's waiter, in case the leader steps down and another process goes on.
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }
}

/// A pooled connection of either backend.
pub enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
    /// A read-only PostgreSQL transaction, its statements bounded ([`Reader`]); dropped, it
    /// rolls back (sqlx sends the `ROLLBACK` as the connection goes back to the pool).
    PostgresReading(sqlx::Transaction<'static, Postgres>),
}

impl Pooled {
    pub async fn acquire(db: &Database) -> Result<Pooled, StoreError> {
        Ok(match db {
            Database::Sqlite(p) => Pooled::Sqlite(p.acquire().await.map_err(unavailable)?),
            Database::Postgres(p) => Pooled::Postgres(p.acquire().await.map_err(unavailable)?),
        })
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
            Pooled::PostgresReading(tx) => Conn::Postgres(tx),
        }
    }
}

/// The read models as a query reads them: their database and, on PostgreSQL, how long each
/// of the query's statements may run (`statement_timeout`, for a read-only transaction), so
/// that a query stuck behind a lock (an operator's `ALTER TABLE`, an analytics job's `LOCK`)
/// or running away fails as the store unavailable instead of holding a connection for good.
/// SQLite needs no bound: in WAL mode a reader waits on no writer. From a bare `&Database`,
/// unbounded.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub db: &'a Database,
    pub timeout: Option<Duration>,
}

impl<'a> From<&'a Database> for Reader<'a> {
    fn from(db: &'a Database) -> Self {
        Reader { db, timeout: None }
    }
}

impl Reader<'_> {
    /// A connection to run the query on: on PostgreSQL with a timeout, in a read-only
    /// transaction bounded by it.
    pub async fn acquire(self) -> Result<Pooled, StoreError> {
        match (self.db, self.timeout) {
            (Database::Postgres(pool), Some(_)) => {
                Ok(Pooled::PostgresReading(self.begin(pool, None).await?))
            }
            _ => Pooled::acquire(self.db).await,
        }
    }

    /// A read-only transaction on `pool` (at `isolation`, e.g. `REPEATABLE READ`, when given)
    /// whose statements the timeout bounds, if there is one: begun in one round trip.
    pub async fn begin(
        &self,
        pool: &PgPool,
        isolation: Option<&str>,
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        let mut begin = String::from("BEGIN");
        if let Some(level) = isolation {
            begin.push_str(" ISOLATION LEVEL ");
            begin.push_str(level);
        }
        begin.push_str(" READ ONLY");
        if let Some(timeout) = self.timeout {
            let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
            begin.push_str(&format!("; SET LOCAL statement_timeout = {millis}"));
        }
        // Begun in a task of its own: sqlx counts the transaction only once the server has
        // answered the `BEGIN`, so a request dropped (its client gone) while it is in flight
        // would put the connection back in the pool inside a read-only transaction nobody
        // ends. The task finishes the `BEGIN`; a transaction it hands to nobody rolls back.
        let pool = pool.clone();
        tokio::spawn(async move { pool.begin_with(begin).await })
            .await
            .map_err(|e| StoreError::Unavailable(format!("beginning a query's transaction: {e}")))?
            .map_err(unavailable)
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn tx_i64(p: Position) -> Result<(i64, i64), StoreError> {
    match (i64::try_from(p.tx), i64::try_from(p.seq)) {
        (Ok(tx), Ok(seq)) => Ok((tx, seq)),
        _ => Err(StoreError::Corrupt(format!("position {p} out of range"))),
    }
}

fn position_from(tx: i64, seq: i64) -> Result<Position, StoreError> {
    match (u64::try_from(tx), u64::try_from(seq)) {
        (Ok(tx), Ok(seq)) => Ok(Position { tx, seq }),
        _ => Err(StoreError::Corrupt(format!(
            "negative checkpoint {tx}-{seq}"
        ))),
    }
}

/// The stored checkpoint of `name` (the start if it has none yet).
pub async fn read_checkpoint(db: &Database, name: &str) -> Result<Position, StoreError> {
    checkpoint_on(&mut Pooled::acquire(db).await?.conn(), name).await
}

/// A runner's checkpoint as it last saw it: the position applied, and the generation of the
/// tables it applied it in, which a rebuild's switch moves on (migration 0020). A batch moves
/// the checkpoint only from both, so no batch of a runner that has not seen a switch lands in
/// the switched-in tables, and none built on what it kept of the tables the switch replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) at: Position,
    pub(crate) generation: i64,
}

/// The stored checkpoint of `name` with its generation (the start, generation 0, if none).
pub(crate) async fn mark_on(conn: &mut Conn<'_>, name: &str) -> Result<Mark, StoreError> {
    let rows: Vec<(i64, i64, i64)> = conn
        .fetch_rows(
            "SELECT position_tx, position_seq, generation FROM projection_checkpoints \
             WHERE name = ?",
            &[Bind::Text(name.to_owned())],
        )
        .await?;
    match rows.first() {
        Some(&(tx, seq, generation)) => Ok(Mark {
            at: position_from(tx, seq)?,
            generation,
        }),
        None => Ok(Mark {
            at: Position::START,
            generation: 0,
        }),
    }
}

pub(crate) async fn checkpoint_on(conn: &mut Conn<'_>, name: &str) -> Result<Position, StoreError> {
    Ok(mark_on(conn, name).await?.at)
}

async fn ensure_checkpoint(db: &Database, name: &str) -> Result<Position, StoreError> {
    ensure_checkpoint_on(&mut Pooled::acquire(db).await?.conn(), name).await
}

async fn ensure_checkpoint_on(conn: &mut Conn<'_>, name: &str) -> Result<Position, StoreError> {
    Ok(ensure_mark_on(conn, name).await?.at)
}

async fn ensure_mark_on(conn: &mut Conn<'_>, name: &str) -> Result<Mark, StoreError> {
    conn.execute(
        "INSERT INTO projection_checkpoints (name, position_tx, position_seq, updated_at) \
         VALUES (?, 0, 0, ?) ON CONFLICT (name) DO NOTHING",
        &[Bind::Text(name.to_owned()), Bind::I64(micros(Utc::now()))],
    )
    .await?;
    mark_on(conn, name).await
}

/// Most events a lag count reads: past that, "at least this many" is all a scrape needs.
pub const LAG_COUNT_CAP: i64 = 1_000_000;

/// How far the log in `log` (the store's [`EventStore::log_database`]) is ahead of `at`: the
/// events after it (on PostgreSQL counted up to [`LAG_COUNT_CAP`]) and the age in seconds of the oldest of
/// them (0 when there is none). On PostgreSQL this counts committed events the snapshot gate
/// does not show yet, which are lag too.
pub async fn lag(log: &Database, at: Position) -> Result<(u64, f64), StoreError> {
    let (tx, seq) = tx_i64(at)?;
    let now = Utc::now().timestamp_micros();
    // The events after `at`, in log order, and the column that gives their time in micros.
    let (after, order, micros, mut binds) = match log {
        Database::Sqlite(_) => ("seq > ?", "seq", "recorded_at", vec![Bind::I64(seq)]),
        Database::Postgres(_) => (
            "(tx_id, seq) > (?::text::xid8, ?)",
            "tx_id, seq",
            "(extract(epoch FROM recorded_at) * 1000000)::bigint",
            vec![Bind::Text(tx.to_string()), Bind::I64(seq)],
        ),
    };
    let mut pooled = Pooled::acquire(log).await?;
    let mut conn = pooled.conn();
    let oldest: Option<i64> = conn
        .fetch_column(
            &format!("SELECT {micros} FROM events WHERE {after} ORDER BY {order} LIMIT 1"),
            &binds,
        )
        .await?
        .into_iter()
        .next();
    let count: i64 = if matches!(log, Database::Sqlite(_)) {
        // SQLite's sequence has no gaps (AUTOINCREMENT, whose counter a rolled-back insert
        // takes back; no event is ever deleted): the count is a subtraction, where counting
        // read up to a million rows of the log on each scrape, on a pool the commands share.
        let last: Option<i64> = conn
            .fetch_column("SELECT max(seq) FROM events", &[])
            .await?
            .into_iter()
            .next()
            .flatten();
        last.map_or(0, |last| last.saturating_sub(seq))
    } else {
        binds.push(Bind::I64(LAG_COUNT_CAP));
        // The ORDER BY keeps PostgreSQL's cached (generic) plan on the log-order index:
        // without it the plan scans the whole table on every scrape.
        conn.fetch_column(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE {after} \
                 ORDER BY {order} LIMIT ?) x"
            ),
            &binds,
        )
        .await?
        .into_iter()
        .next()
        .unwrap_or(0)
    };
    let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
    Ok((u64::try_from(count).unwrap_or(0), age))
}

/// Names an event in a failure message: where it is in the log, what and whose it is.
fn describe(e: &StoredEvent) -> String {
    format!(
        "event {} ({} v{} of stream {})",
        e.position, e.event_type, e.version, e.stream_id
    )
}

/// A batch that did not commit: `failed_at` is the index of the event that failed, if one did.
struct BatchError {
    failed_at: Option<usize>,
    error: StoreError,
    /// The stored checkpoint was no longer where this runner left it (a rebuild switched the
    /// read model in, or another runner moved it): not a failure, the runner starts again
    /// from the stored checkpoint.
    moved: bool,
    /// The batched path failed: apply the batch again event by event to find the event.
    batched: bool,
}

impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> Self {
        BatchError {
            failed_at: None,
            error,
            moved: false,
            batched: false,
        }
    }
}

/// Applies `events` and moves the checkpoint from `mark` to the last of them, in one
/// transaction; the checkpoint moves only if it still is `mark`, generation and all, so two
/// runners can never both apply a batch, nor a runner apply one across a rebuild's switch.
pub(crate) async fn apply_in(
    conn: &mut Conn<'_>,
    p: &dyn Projection,
    mark: Mark,
    events: &[StoredEvent],
    batched: bool,
) -> Result<(), BatchError> {
    let from = mark.at;
    let done = if batched {
        p.apply_batch(conn, Some(from), events)
            .await
            .map_err(|error| BatchError {
                failed_at: None,
                error,
                moved: false,
                batched: true,
            })?
    } else {
        false
    };
    if !done {
        let mut after = from;
        for (i, e) in events.iter().enumerate() {
            p.apply(conn, Some(after), e)
                .await
                .map_err(|error| BatchError {
                    failed_at: Some(i),
                    error,
                    moved: false,
                    batched: false,
                })?;
            after = e.position;
        }
    }
    let to = events.last().map_or(from, |e| e.position);
    let (to_tx, to_seq) = tx_i64(to)?;
    let (from_tx, from_seq) = tx_i64(from)?;
    let moved = conn
        .execute(
            "UPDATE projection_checkpoints SET position_tx = ?, position_seq = ?, updated_at = ? \
             WHERE name = ? AND position_tx = ? AND position_seq = ? AND generation = ?",
            &[
                Bind::I64(to_tx),
                Bind::I64(to_seq),
                Bind::I64(micros(Utc::now())),
                Bind::Text(p.name().to_owned()),
                Bind::I64(from_tx),
                Bind::I64(from_seq),
                Bind::I64(mark.generation),
            ],
        )
        .await?;
    if moved != 1 {
        return Err(BatchError {
            failed_at: None,
            error: StoreError::Unavailable(format!(
                "the checkpoint of {} is no longer {from} (generation {}): another runner \
                 or a rebuild's switch moved it",
                p.name(),
                mark.generation
            )),
            moved: true,
            batched: false,
        });
    }
    Ok(())
}

/// The connection a runner writes its batches through. A runner owns its connection instead of
/// borrowing one from the pool: when the runner is stopped mid-transaction (shutdown, or a
/// test's injected crash), the connection is dropped and closed, which rolls the batch back,
/// rather than going back to the pool inside an open transaction.
pub(crate) enum Writer {
    /// The read models' file, which this process's appends do not write (see
    /// `ticketd_commands::sqlite`): no turn to take at it.
    Sqlite(SqliteConnection),
    /// With the store's register of transactions that never append, which each batch joins
    /// (see [`Bystanders`]).
    Postgres(PgConnection, Option<Bystanders>),
}

impl Writer {
    pub(crate) async fn connect(
        db: &Database,
        bystanders: Option<Bystanders>,
    ) -> Result<Writer, StoreError> {
        Ok(match db {
            Database::Sqlite(pool) => Writer::Sqlite(
                // As on PostgreSQL below: a commit waits for no fsync (WAL mode keeps it
                // atomic; a checkpoint syncs it later).
                (*pool.connect_options())
                    .clone()
                    .synchronous(SqliteSynchronous::Normal)
                    .connect()
                    .await
                    .map_err(unavailable)?,
            ),
            Database::Postgres(pool) => Writer::Postgres(
                PgConnection::connect_with(&writer_options(pool))
                    .await
                    .map_err(unavailable)?,
                bystanders,
            ),
        })
    }

    /// Waits until the runner may read and apply its next batch. A runner that is caught up
    /// (`paced`: its last page was not full) starts it no sooner than a gap after the start of
    /// its last one ([`TURN_GAP`] on SQLite, [`BATCH_GAP`] on PostgreSQL), so that the events
    /// committed meanwhile share one batch. An event after a quiet spell waits for nothing.
    async fn turn(&self, last: &mut Option<Instant>, paced: bool) {
        let gap = match self {
            Writer::Sqlite(_) => TURN_GAP,
            Writer::Postgres(..) => BATCH_GAP,
        };
        if let (true, Some(at)) = (paced, *last) {
            tokio::time::sleep_until(at + gap).await;
        }
        *last = Some(Instant::now());
    }

    fn conn(&mut self) -> Conn<'_> {
        match self {
            Writer::Sqlite(c) => Conn::Sqlite(c),
            Writer::Postgres(c, _) => Conn::Postgres(c),
        }
    }

    /// Closes the connection the way the database expects, so it logs no dropped client.
    async fn close(self) {
        let closed = match self {
            Writer::Sqlite(c) => c.close().await,
            Writer::Postgres(c, _) => c.close().await,
        };
        if let Err(e) = closed {
            tracing::debug!(error = %e, "closing a runner's connection");
        }
    }
}

/// PostgreSQL: a runner's connection commits without waiting for its WAL to reach the disk.
/// A read model is derived data: a crash may lose the last few batches, but each batch and its
/// checkpoint still commit or vanish together (WAL order is kept), so the runner re-applies
/// them from the durable log. The wait it saves sat in every batch, and so in the lag.
///
/// Every statement is planned for its own values (`force_custom_plan`). A runner's statements
/// look rows up by arrays of ids, and a generic plan made while its tables were small scans
/// them whole; it stays cached until the next `ANALYZE`, which autovacuum may not run for a
/// minute. Measured on a fresh database under 32 clients: each batch's state reads took 3 to
/// 4 ms by sequential scan, the tickets projection fell seconds behind, and planning each
/// statement afresh costs a fraction of a millisecond.
///
/// Its random page cost is 1.1, not 4: a runner looks rows up by the ids of a batch, in tables
/// its own writes keep in the buffer cache. At the default, a batch of 200 ids among 15,000
/// tickets was planned as a whole-table scan (`pg_stat_user_tables`: 575 of them over
/// `analytics_ticket_facts` in a 32-client run, 443 over `ticket_search`); at 1.1 they are
/// index lookups (150 and 93 left, early on, while the tables are small), and the
/// commands/s rose 1.05 - 1.07× (docs/PERFORMANCE.md, session 17).
fn writer_options(pool: &PgPool) -> sqlx::postgres::PgConnectOptions {
    runner_settings(&pool.connect_options())
}

fn runner_settings(base: &sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    base.clone().options([
        ("synchronous_commit", "off"),
        ("plan_cache_mode", "force_custom_plan"),
        ("random_page_cost", "1.1"),
    ])
}

/// One batch in one transaction: its read-model writes and its checkpoint commit together.
async fn commit_batch(
    writer: &mut Writer,
    p: &dyn Projection,
    from: Mark,
    events: &[StoredEvent],
) -> Result<(), BatchError> {
    match commit_batch_as(writer, p, from, events, true).await {
        Err(BatchError { batched: true, .. }) => {
            commit_batch_as(writer, p, from, events, false).await
        }
        done => done,
    }
}

async fn commit_batch_as(
    writer: &mut Writer,
    p: &dyn Projection,
    from: Mark,
    events: &[StoredEvent],
    batched: bool,
) -> Result<(), BatchError> {
    match writer {
        Writer::Sqlite(conn) => {
            // IMMEDIATE takes the write lock up front (waiting out busy_timeout), instead of
            // failing when a read transaction tries to become a write one.
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(unavailable)?;
            apply_in(&mut Conn::Sqlite(&mut tx), p, from, events, batched).await?;
            tx.commit().await.map_err(unavailable)?;
        }
        Writer::Postgres(conn, bystanders) => {
            let mut tx = conn.begin().await.map_err(unavailable)?;
            // Registered before its first write, which would give it an id that holds the gate.
            let _looked_past = match bystanders {
                Some(b) => Some(b.enter(&mut tx).await?),
                None => None,
            };
            apply_in(&mut Conn::Postgres(&mut tx), p, from, events, batched).await?;
            tx.commit().await.map_err(unavailable)?;
        }
    }
    Ok(())
}

/// The key of the store's advisory lock `$1`/`$2` (a projection's: `projection` and its name;
/// a scratch's owner's: `scratch` and its tag). It includes the schema, so stores in
/// different schemas do not contend.
pub(crate) const LOCK_KEY: &str = "hashtextextended(current_schema() || '/' || $1 || '/' || $2, 0)";

/// PostgreSQL: a connection of its own holding the store's advisory lock `kind`/`name` (see
/// [`LOCK_KEY`]), or `None` while another session holds it. Closing the connection, or the
/// process's end, releases it.
pub(crate) async fn take_lock(
    pool: &PgPool,
    kind: &str,
    name: &str,
) -> Result<Option<PgConnection>, StoreError> {
    let mut conn = PgConnection::connect_with(&writer_options(pool))
        .await
        .map_err(unavailable)?;
    let got: bool = sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({LOCK_KEY})"))
        .bind(kind)
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .map_err(unavailable)?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// PostgreSQL: a projection's life: become its runner (the holder of its advisory lock),
/// follow the log, and on any failure log it, back off and start again from the stored
/// checkpoint. Ends when a stop is asked (see [`Projector::shutdown`]). SQLite runs every
/// projection in one runner instead (see `together`).
async fn run(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    p: Arc<dyn Projection>,
    shared: Arc<Shared>,
    mut stop: Stop,
) {
    let name = p.name();
    let mut backoff = FIRST_BACKOFF;
    while !stop.asked() {
        let lock = match take_lock(&pool, "projection", name).await {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                stop.sleep(LOCK_RETRY).await;
                continue;
            }
            Err(e) => {
                fail(&shared, name, &e.to_string());
                stop.sleep(LOCK_RETRY).await;
                continue;
            }
        };
        shared.update(|s| s.leader = true);
        let followed = follow(&*store, &*p, &shared, lock, &mut backoff, &mut stop).await;
        shared.update(|s| s.leader = false);
        let Err(error) = followed else {
            return;
        };
        fail(&shared, name, &error);
        stop.sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Announces a committed batch of `applied` events ending at `at`; `past_it`: no event of it
/// failed, so the projection is no longer stopped by one.
fn advanced(shared: &Shared, at: Position, applied: usize, past_it: bool) {
    let now = Utc::now();
    // Before the checkpoint is announced, so a waiter woken by it sees the status that goes
    // with it.
    shared.update(|s| {
        s.position = at;
        s.last_applied_at = Some(now);
        s.events_applied += applied as u64;
        s.failing &= !past_it;
    });
    shared.checkpoint.send_replace(at);
}

/// Announces `at` as the projection's position when no batch brought it there.
fn announce(shared: &Shared, at: Position) {
    shared.update(|s| s.position = at);
    shared.checkpoint.send_replace(at);
}

/// Where a runner starts: the projection's stored checkpoint (made if missing), announced.
async fn start_at(
    writer: &mut Writer,
    p: &dyn Projection,
    shared: &Shared,
) -> Result<Mark, String> {
    // A runner starting over (after a failure) may have kept rows of tables since switched.
    p.forget();
    let mark = ensure_mark_on(&mut writer.conn(), p.name())
        .await
        .map_err(|e| format!("reading the checkpoint of {}: {e}", p.name()))?;
    announce(shared, mark.at);
    Ok(mark)
}

/// After a batch found the stored checkpoint no longer its own (a rebuild switched in, or
/// another runner moved it): the stored one, announced, to follow from, with nothing kept of
/// the rows before.
async fn moved_to(
    writer: &mut Writer,
    p: &dyn Projection,
    shared: &Shared,
) -> Result<Mark, String> {
    p.forget();
    let mark = mark_on(&mut writer.conn(), p.name())
        .await
        .map_err(|e| format!("re-reading the checkpoint of {}: {e}", p.name()))?;
    let at = mark.at;
    tracing::info!(projection = p.name(), %at, generation = mark.generation, "checkpoint moved (a rebuild switched in?); following from it");
    announce(shared, at);
    Ok(mark)
}

fn fail(shared: &Shared, name: &str, error: &str) {
    tracing::error!(projection = name, error, "projection failed; retrying");
    shared.update(|s| {
        s.errors += 1;
        s.last_error = Some(error.to_owned());
        s.failing = true;
    });
}

/// Catches up from the checkpoint, then applies new events as they commit. Returns when a
/// stop is asked, between batches, with its connection closed; or on failure, with what went
/// wrong.
async fn follow(
    store: &dyn EventStore,
    p: &dyn Projection,
    shared: &Shared,
    lock: PgConnection,
    backoff: &mut Duration,
    stop: &mut Stop,
) -> Result<(), String> {
    // The connection holding the advisory lock writes the batches too, so a leader that lost
    // its lock's connection cannot commit another batch.
    let mut writer = Writer::Postgres(lock, store.bystanders());
    let mut ticks = store.subscribe();
    // The runner's own connection throughout (see the log read below).
    let mut mark = start_at(&mut writer, p, shared).await?;
    let mut pinged = Instant::now();
    let (mut turned, mut paced) = (None, false);
    loop {
        loop {
            if stop.asked() {
                writer.close().await;
                return Ok(());
            }
            writer.turn(&mut turned, paced).await;
            let started = Instant::now();
            // On the runner's own connection, made on the runner's runtime, so no pooled
            // connection of the server's ends up driven by the runner's thread.
            let Writer::Postgres(conn, bystanders) = &mut writer else {
                return Err("this runner writes only to PostgreSQL".to_owned());
            };
            let past = bystanders
                .as_ref()
                .map_or_else(Vec::new, Bystanders::current);
            let read =
                ticketd_commands::postgres::read_all_on(conn, mark.at, PG_BATCH, &past).await;
            let batch = match read {
                Ok(b) => b,
                Err(e) => return Err(format!("reading the log after {}: {e}", mark.at)),
            };
            paced = batch.len() < PG_BATCH;
            if batch.is_empty() {
                break;
            }
            let read = started.elapsed();
            let committed = commit_batch(&mut writer, p, mark, &batch).await;
            tracing::debug!(
                projection = p.name(),
                events = batch.len(),
                read_ms = read.as_secs_f64() * 1e3,
                apply_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
                "batch"
            );
            let (applied, failure) = match committed {
                Ok(()) => (batch.len(), None),
                Err(BatchError { moved: true, .. }) => {
                    mark = moved_to(&mut writer, p, shared).await?;
                    continue;
                }
                Err(BatchError {
                    failed_at: Some(i),
                    error,
                    ..
                }) => {
                    // Keep what precedes the failing event, then stop there.
                    let kept = if i > 0 {
                        commit_batch(&mut writer, p, mark, &batch[..i])
                            .await
                            .is_ok()
                    } else {
                        false
                    };
                    let msg = format!("applying {}: {error}", describe(&batch[i]));
                    (if kept { i } else { 0 }, Some(msg))
                }
                Err(BatchError {
                    failed_at: None,
                    error,
                    ..
                }) => (0, Some(format!("committing after {}: {error}", mark.at))),
            };
            if applied > 0 {
                mark.at = batch[applied - 1].position;
                advanced(shared, mark.at, applied, failure.is_none());
                *backoff = FIRST_BACKOFF;
            }
            if let Some(msg) = failure {
                return Err(msg);
            }
        }
        stop.idle(&mut ticks, Instant::now() + POLL).await;
        // A leader whose lock connection died has lost the lock: step down. Checked about once
        // per poll interval, not per commit.
        if let Writer::Postgres(conn, _) = &mut writer {
            if pinged.elapsed() >= POLL {
                if let Err(e) = conn.ping().await {
                    return Err(format!("lost the advisory lock's connection: {e}"));
                }
                pinged = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runner_settings;
    use sqlx::postgres::PgConnectOptions;

    /// What `writer_options` says of runner connections: commits without waiting for the
    /// WAL, and every statement planned for its own values (the generic plans of a table
    /// that was small scanned it whole; docs/PERFORMANCE.md, session 6). The connection's own
    /// options (the scratch's `search_path`) are kept.
    #[test]
    fn runner_connections_commit_async_and_plan_each_statement() {
        let base = PgConnectOptions::new().options([("search_path", "s1")]);
        let options = runner_settings(&base);
        let set = options.get_options().expect("options");
        for setting in [
            "search_path=s1",
            "synchronous_commit=off",
            "plan_cache_mode=force_custom_plan",
            "random_page_cost=1.1",
        ] {
            assert!(set.contains(setting), "{setting} in {set}");
        }
    }
}
