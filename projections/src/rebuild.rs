//! Blue/green rebuilds and row-for-row checks of read models.
//!
//! A rebuild lays out fresh read-model tables in a *scratch* place — a new PostgreSQL schema,
//! or a new SQLite file beside the store's — from the very migrations in `migrations/`, replays
//! the whole log into them while the service keeps serving (and updating) the live tables, and
//! then switches over in one transaction:
//!
//! - PostgreSQL: the live tables move to a throw-away schema and the rebuilt ones take their
//!   place (`ALTER TABLE … SET SCHEMA`, so no row is copied), together with the checkpoint;
//!   the old tables are then dropped.
//! - SQLite: one `BEGIN IMMEDIATE` transaction replaces the live rows with the rebuilt ones
//!   (readers keep the old snapshot until it commits: WAL), then the scratch file is deleted.
//!
//! The switch's transaction first gives the rebuilt tables what the live ones applied since
//! the scratch last caught up, so the checkpoint never moves back and the live runner goes on
//! from where it was. (A checkpoint moved under a runner is still safe: its next batch finds it
//! moved and follows on from there, see `BatchError::moved`.)
//!
//! The same scratch build, stopped exactly at a live projection's checkpoint, is how `verify`
//! and the tests prove that an incrementally kept read model equals a fresh rebuild.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Row};
use uuid::Uuid;

use ticketd_commands::postgres::{read_settled_on, Bystanders, SharedBystander};
use ticketd_commands::{Database, EventStore, Position, StoreError, StoredEvent};

use crate::bulk::{self, BULK_TICKETS};
use crate::sql::unavailable;
use crate::sql::{Bind, Conn};
use crate::{
    apply_in, checkpoint_on, commit_batch, describe, ensure_checkpoint, read_checkpoint, tx_i64,
    BatchError, Mark, Projection, Writer,
};

/// The four counts of a comparison query.
macro_rules! row_counts {
    ($row:expr) => {{
        let row = $row;
        let mut out = [0i64; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = row.try_get(i).map_err(unavailable)?;
        }
        out
    }};
}

/// Events per scratch transaction: bigger than the live runner's, nothing else writes there.
pub const REBUILD_BATCH: usize = 5_000;
/// How often a comparison retries when the live projection moves under it.
const COMPARE_TRIES: usize = 50;
/// Rounds of following the live projections before a switch takes its locks.
pub const FOLLOW_ROUNDS: usize = 5;
/// The pause after a PostgreSQL switch's first attempt that could not take its locks in time;
/// it doubles after each such attempt, up to [`MAX_SWITCH_PAUSE`].
const FIRST_SWITCH_PAUSE: Duration = Duration::from_millis(500);
const MAX_SWITCH_PAUSE: Duration = Duration::from_secs(30);

/// How a PostgreSQL switch waits for the locks on the live tables (see
/// [`Scratch::set_switch_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchWait {
    /// The most one attempt waits for all its locks. While it waits, it holds the tables it has
    /// locked already, and readers of the one it waits for queue behind it: this is how long
    /// a reader may be held back, once an attempt. At most twice the server's
    /// `deadlock_timeout` (1 s by default), the switch is most often the one a deadlock
    /// aborts (see [`lock_not_had`]); a longer wait makes the other transaction that more often.
    pub per_attempt: Duration,
    /// The most the switch takes, attempts and pauses together, before the rebuild fails (the
    /// live tables as they were, the scratch dropped): after the first, no attempt starts
    /// whose wait would end past it (the following of the live projections before it aside).
    pub total: Duration,
}

impl Default for SwitchWait {
    fn default() -> Self {
        SwitchWait {
            per_attempt: Duration::from_secs(2),
            total: Duration::from_secs(600),
        }
    }
}

/// Where a PostgreSQL switch works: the live pool and schema (`base`), the scratch's schema,
/// and the throw-away schema the live tables move to (the scratch's tag in its name, so the
/// owner lock covers it too: see `sweep`).
struct LivePlace<'a> {
    pool: &'a PgPool,
    base: &'a str,
    schema: &'a str,
    old: String,
}

/// How an attempt of a PostgreSQL switch ended, when it did not switch.
enum Attempt {
    /// Its locks were not had within [`SwitchWait::per_attempt`]; nothing changed.
    Busy,
    Failed(StoreError),
}

/// Whether `e` says a switch's attempt did not get its locks: its statement cancelled by its
/// timeout (or, the same to a switch, by an operator's `pg_cancel_backend`), a lock not had
/// within `lock_timeout`, or a deadlock. (A transaction that holds one live table and then
/// reads another, locked by the waiting switch, closes a cycle; the server aborts whichever
/// waiter finds it first, `deadlock_timeout`, 1 s by default, after it began to wait. When the
/// switch began to wait first, as it does when it waits on the transaction's table before the
/// transaction reads on, an attempt that waits at most twice that long is the one to find
/// it, and lets go. Otherwise, the switch having waited on another table first, say, the
/// transaction may be the one aborted.)
fn lock_not_had(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if matches!(d.code().as_deref(), Some("57014" | "55P03" | "40P01")))
}

/// For an operator: the sessions, other than this one, holding a lock on one of the live
/// `tables` (in schema `base`), oldest transaction first.
async fn lock_holders(pool: &PgPool, base: &str, tables: &[Table]) -> String {
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", ident(base), ident(t.name)))
        .collect();
    let found: Result<Vec<(i32, String, String, f64)>, sqlx::Error> = sqlx::query_as(
        "SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), \
           coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8 \
         FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid() AND EXISTS (SELECT 1 \
           FROM pg_locks l WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.relation = ANY ($1::text[]::regclass[])) \
         ORDER BY a.xact_start NULLS LAST LIMIT 3",
    )
    .bind(&names)
    .fetch_all(pool)
    .await;
    match found {
        Ok(found) if found.is_empty() => "none holds them now".to_owned(),
        Ok(found) => {
            let each: Vec<String> = found
                .iter()
                .map(|(pid, user, app, secs)| {
                    format!("pid {pid} (user {user:?}, application {app:?}), its transaction open {secs:.1} s")
                })
                .collect();
            format!("held by {}", each.join("; "))
        }
        Err(e) => format!("their holders unknown ({e})"),
    }
}

/// Fresh read-model tables beside the live ones. Call [`Scratch::discard`] when done.
pub struct Scratch {
    db: Database,
    place: Place,
    /// The bulk path's bound (see [`bulk`]); 0 turns it off.
    bulk_tickets: usize,
    /// How a PostgreSQL switch waits for its locks.
    switch_wait: SwitchWait,
    /// Tables the bulk path analyzed once indexed (loaded frozen and all-visible), which the
    /// switch need not vacuum or analyze.
    analyzed: std::sync::Mutex<Vec<String>>,
}

enum Place {
    Postgres {
        base: String,
        base_oid: i64,
        schema: String,
        /// Holds the scratch's owner lock (see [`sweep`]) while the scratch exists.
        owner: sqlx::PgConnection,
    },
    Sqlite {
        path: PathBuf,
        /// Holds the scratch's owner lock (see [`crate::scratch_files`]) while it exists.
        owner: std::fs::File,
    },
}

/// A PostgreSQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Scratch {
    /// Creates an empty, fully migrated scratch place for the store's database.
    pub async fn create(db: &Database) -> Result<Scratch, StoreError> {
        let tag = Uuid::now_v7().simple().to_string();
        match db {
            Database::Postgres(pool) => {
                let (base, base_oid): (String, i64) = sqlx::query_as(
                    "SELECT nspname::text, oid::bigint FROM pg_namespace \
                     WHERE nspname = current_schema()",
                )
                .fetch_one(pool)
                .await
                .map_err(unavailable)?;
                // Named after the live schema's oid too, so stores sharing a database can
                // tell their own scratch schemas apart (at most 59 characters of the 63).
                let schema = format!("ticketd_rebuild_{base_oid}_{tag}");
                let mut owner = crate::take_lock(pool, SCRATCH, &tag)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Unavailable(format!("the owner lock of scratch {tag} is taken"))
                    })?;
                sweep(&mut owner, base_oid).await;
                pool.execute(format!("CREATE SCHEMA {}", ident(&schema)).as_str())
                    .await
                    .map_err(unavailable)?;
                let options = (*pool.connect_options())
                    .clone()
                    .options([("search_path", schema.as_str())]);
                let scratch = PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await;
                let scratch = match scratch {
                    Ok(s) => s,
                    Err(e) => {
                        drop_schema(pool, &schema).await;
                        return Err(unavailable(e));
                    }
                };
                let me = Scratch {
                    bulk_tickets: BULK_TICKETS,
                    switch_wait: SwitchWait::default(),
                    analyzed: Default::default(),
                    db: Database::Postgres(scratch.clone()),
                    place: Place::Postgres {
                        base,
                        base_oid,
                        schema,
                        owner,
                    },
                };
                if let Err(e) = ticketd_commands::postgres::migrate_pool(&scratch).await {
                    me.discard(db).await;
                    return Err(e);
                }
                Ok(me)
            }
            Database::Sqlite(pool) => {
                let live = pool.connect_options().get_filename().to_path_buf();
                // SQLite names no file for an in-memory database (sqlx gives it a
                // `file:sqlx-in-memory-N` URI name, not a path).
                let file: String =
                    sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(pool)
                        .await
                        .map_err(unavailable)?;
                if file.is_empty() {
                    return Err(StoreError::Unavailable(
                        "an in-memory SQLite store cannot be rebuilt beside itself".into(),
                    ));
                }
                let path = crate::scratch_files::with_suffix(&live, &format!(".rebuild-{tag}"));
                // Off the runtime's threads: the lock may wait a moment for a sweep, and a
                // sweep removes files as large as the read models.
                let owner = {
                    let (path, tag) = (path.clone(), tag.clone());
                    tokio::task::spawn_blocking(move || {
                        let owner = crate::scratch_files::own(&path)?;
                        crate::scratch_files::sweep(&live, &tag);
                        Ok::<_, StoreError>(owner)
                    })
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!("a scratch's owner lock: {e}"))
                    })??
                };
                // Disposable until the switch copies it: no fsync, one writer.
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Off);
                let scratch = match SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        crate::scratch_files::remove_off_runtime(path, owner).await;
                        return Err(unavailable(e));
                    }
                };
                let me = Scratch {
                    bulk_tickets: BULK_TICKETS,
                    switch_wait: SwitchWait::default(),
                    analyzed: Default::default(),
                    db: Database::Sqlite(scratch.clone()),
                    place: Place::Sqlite { path, owner },
                };
                if let Err(e) = ticketd_commands::sqlite::migrate_views_pool(&scratch).await {
                    me.discard(db).await;
                    return Err(e);
                }
                Ok(me)
            }
        }
    }

    /// Sets how many tickets a bulk pass folds in memory before it loads them and the build
    /// goes on batch by batch (see [`bulk`]); 0 builds batch by batch throughout.
    pub fn set_bulk_tickets(&mut self, tickets: usize) {
        self.bulk_tickets = tickets;
    }

    /// Sets how a PostgreSQL switch waits for the locks on the live tables (see
    /// [`SwitchWait`]).
    pub fn set_switch_wait(&mut self, wait: SwitchWait) {
        self.switch_wait = wait;
    }

    /// The scratch database, where the projections write while rebuilding.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Removes the scratch place and everything in it.
    pub async fn discard(self, live: &Database) {
        match (&self.db, self.place) {
            (Database::Postgres(scratch), Place::Postgres { schema, owner, .. }) => {
                ticketd_commands::store::close_pool(scratch).await;
                if let Database::Postgres(pool) = live {
                    drop_schema(pool, &schema).await;
                }
                // Its lock goes with it.
                let _ = owner.close().await;
            }
            (Database::Sqlite(scratch), Place::Sqlite { path, owner }) => {
                ticketd_commands::store::close_pool(scratch).await;
                crate::scratch_files::remove_off_runtime(path, owner).await;
            }
            _ => {}
        }
    }

    /// Replays the log into the scratch tables of `projections` from where each stands there,
    /// up to `upto` (inclusive) or, with `None`, to the end of the log as it is now. Returns
    /// the events applied.
    pub async fn build(
        &self,
        store: &dyn EventStore,
        projections: &[Arc<dyn Projection>],
        upto: Option<Position>,
    ) -> Result<u64, StoreError> {
        let mut at = Position::START;
        for (i, p) in projections.iter().enumerate() {
            let stored = ensure_checkpoint(&self.db, p.name()).await?;
            // One pass feeds every projection, so they must stand at the same place.
            if i > 0 && stored != at {
                return Err(StoreError::Unavailable(format!(
                    "scratch projections disagree: {} is at {stored}, not {at}",
                    p.name()
                )));
            }
            at = stored;
        }
        // A fresh PostgreSQL scratch gets its secondary indexes after the load: one sorted
        // build each instead of an insert per row (and, for GIN, per word).
        let mut deferred = match (&self.db, &self.place) {
            (Database::Postgres(pool), Place::Postgres { schema, .. }) if at == Position::START => {
                defer_indexes(pool, schema, projections).await?
            }
            _ => Vec::new(),
        };
        let mut applied = 0;
        // From the start of the log, on PostgreSQL: one pass in memory, rows loaded by COPY
        // (see `bulk`), each table indexed as soon as it is loaded.
        if let (Database::Postgres(pool), true) = (&self.db, at == Position::START) {
            // Every projection's fold, or none: one pass feeds them all.
            let folds: Option<Vec<_>> = projections.iter().map(|p| p.bulk()).collect();
            if let Some(folds) =
                folds.filter(|_| self.bulk_tickets > 0 && upto.is_none_or(|u| u > at))
            {
                let tables: Vec<&'static str> = live_tables(&self.db, projections)
                    .await?
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
                let (end, folded, analyzed) = bulk::pass(
                    pool,
                    store,
                    projections,
                    folds,
                    &tables,
                    &mut deferred,
                    upto,
                    self.bulk_tickets,
                )
                .await?;
                at = end;
                applied += folded;
                // What the batched path adds after the pass (the live traffic meanwhile) is
                // too little to change the statistics taken.
                if let Ok(mut a) = self.analyzed.lock() {
                    a.extend(analyzed);
                }
            }
        }
        // One connection per projection. On PostgreSQL their batches run at once, each in its
        // own server process; SQLite has one writer at a time anyway.
        let mut writers = Vec::with_capacity(projections.len());
        for _ in projections {
            writers.push(Writer::connect(&self.db, store.bystanders()).await?);
        }
        let parallel = matches!(self.db, Database::Postgres(_));
        let limit = |mut batch: Vec<StoredEvent>| {
            if let Some(u) = upto {
                batch.retain(|e| e.position <= u);
            }
            batch
        };
        let mut batch = if upto.is_some_and(|u| at >= u) {
            Vec::new()
        } else {
            limit(read_page(store, at).await?)
        };
        while let Some(last) = batch.last().map(|e| e.position) {
            // The next page is read while this one is applied.
            let read_next = async {
                if upto.is_some_and(|u| last >= u) {
                    Ok(Vec::new())
                } else {
                    read_page(store, last).await.map(limit)
                }
            };
            let apply = async {
                if parallel {
                    futures::future::try_join_all(
                        projections
                            .iter()
                            .zip(writers.iter_mut())
                            .map(|(p, w)| apply_one(w, p.as_ref(), at, &batch)),
                    )
                    .await
                    .map(|_| ())
                } else {
                    for (p, w) in projections.iter().zip(writers.iter_mut()) {
                        apply_one(w, p.as_ref(), at, &batch).await?;
                    }
                    Ok(())
                }
            };
            let (next, applied_now) = tokio::join!(read_next, apply);
            applied_now?;
            applied += batch.len() as u64;
            at = last;
            batch = next?;
        }
        if let Database::Postgres(pool) = &self.db {
            if !deferred.is_empty() {
                let started = std::time::Instant::now();
                let left = deferred.into_iter().map(|(_, d)| d).collect();
                restore_indexes(pool, left, store.bystanders().as_ref()).await?;
                tracing::info!(
                    secs = started.elapsed().as_secs_f64(),
                    "rebuild: secondary indexes built"
                );
            }
        }
        Ok(applied)
    }

    /// Puts the scratch tables of `projections` in place of the live ones, with their
    /// checkpoints, in one transaction (see the module's doc). The live projections have gone
    /// on meanwhile: the scratch first follows to where they stand, and in the switch's
    /// transaction the switched-in tables take what they applied since (see [`follow_live`]),
    /// so no checkpoint moves back. On PostgreSQL an attempt that cannot take its locks within
    /// [`SwitchWait::per_attempt`] lets go of them, pauses (0.5 s, doubling up to 30 s),
    /// follows the live projections again and tries again, until [`SwitchWait::total`].
    pub async fn switch(
        &self,
        store: &dyn EventStore,
        live: &Database,
        projections: &[Arc<dyn Projection>],
    ) -> Result<(), StoreError> {
        for p in projections {
            // The row must exist to be locked and moved.
            ensure_checkpoint(live, p.name()).await?;
        }
        let tables = live_tables(live, projections).await?;
        let (
            Database::Postgres(pool),
            Place::Postgres {
                base,
                base_oid,
                schema,
                ..
            },
        ) = (live, &self.place)
        else {
            let positions = self.follow(store, live, projections).await?;
            return self
                .switch_sqlite(store, live, projections, &tables, &positions)
                .await;
        };
        let at = LivePlace {
            pool,
            base,
            old: format!("ticketd_old_{base_oid}_{}", tag_of(schema)),
            schema,
        };
        // Fresh tables have no statistics and no visibility map until autovacuum comes by:
        // plans over them would be guesses, and index-only scans (a search ranks its matches by
        // the primary key alone) would read the heap anyway (1 M tickets: search p50 51 ms
        // instead of 33). Before the switch, outside its locks, but for the tables the bulk
        // path analyzed as soon as they were indexed (`ticket_search`, the longest; loaded
        // frozen and all-visible, but for the rows of the few tickets it replayed after the
        // load, those whose text might reach the budget).
        let done = self.analyzed.lock().map(|a| a.clone()).unwrap_or_default();
        let left: Vec<&Table> = tables
            .iter()
            .filter(|t| !done.iter().any(|d| d == t.name))
            .collect();
        vacuum_all(pool, schema, &left).await?;
        let started = std::time::Instant::now();
        let mut pause = FIRST_SWITCH_PAUSE;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let positions = self.follow(store, live, projections).await?;
            match self
                .try_switch_postgres(&at, store, projections, &tables, &positions)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Busy) => {
                    let holders = lock_holders(pool, base, &tables).await;
                    let wait = self.switch_wait;
                    if started.elapsed() + pause + wait.per_attempt > wait.total {
                        return Err(StoreError::Unavailable(format!(
                            "the switch could not lock the live tables in {:.1} s ({attempt} \
                             attempts, each waiting at most {} ms): {holders}; the live tables \
                             are as they were",
                            started.elapsed().as_secs_f64(),
                            wait.per_attempt.as_millis()
                        )));
                    }
                    tracing::warn!(
                        attempt,
                        waited_ms = wait.per_attempt.as_millis() as u64,
                        "a rebuild's switch let go of its locks, not to hold readers back \
                         behind a longer transaction ({holders}); trying again in {} ms",
                        pause.as_millis()
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_SWITCH_PAUSE);
                }
            }
        }
    }

    /// Follows the live projections, round by round, each shorter than the one before (the
    /// scratch applies in large batches), so what is left for the switch's locks is what the
    /// live runner did during the last round. Returns the scratch's checkpoints.
    async fn follow(
        &self,
        store: &dyn EventStore,
        live: &Database,
        projections: &[Arc<dyn Projection>],
    ) -> Result<Vec<Position>, StoreError> {
        for _ in 0..FOLLOW_ROUNDS {
            let mut ahead = Position::START;
            for p in projections {
                ahead = ahead.max(read_checkpoint(live, p.name()).await?);
            }
            let mut behind = ahead;
            for p in projections {
                behind = behind.min(read_checkpoint(&self.db, p.name()).await?);
            }
            if ahead <= behind {
                break;
            }
            self.build(store, projections, Some(ahead)).await?;
        }
        let mut positions = Vec::new();
        for p in projections {
            positions.push(read_checkpoint(&self.db, p.name()).await?);
        }
        Ok(positions)
    }

    /// One attempt of a PostgreSQL switch. Its locks are taken within
    /// [`SwitchWait::per_attempt`]: a transaction that holds one of the live tables (an
    /// analytics query, say) would otherwise keep the switch waiting with the other tables
    /// locked, and every reader of those, queued behind it, waiting as long. `Busy` when the
    /// locks were not had in time; the transaction is rolled back and nothing changed.
    async fn try_switch_postgres(
        &self,
        at: &LivePlace<'_>,
        store: &dyn EventStore,
        projections: &[Arc<dyn Projection>],
        tables: &[Table],
        positions: &[Position],
    ) -> Result<(), Attempt> {
        let LivePlace {
            pool,
            base,
            schema,
            old,
        } = at;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| Attempt::Failed(unavailable(e)))?;
        // A bystander (it appends no event): while it holds its locks and applies what
        // the live runner did, no log reader waits for it.
        let mut tx = Standing::begin(&mut conn, store.bystanders().as_ref())
            .await
            .map_err(Attempt::Failed)?;
        let locked = async {
            // One bound for all the locks of the attempt: each statement's timeout is what is
            // left of it (`lock_timeout` would bound each lock's wait alone). The connection's
            // own setting comes back after.
            let own: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
                .fetch_one(&mut *tx)
                .await?;
            let started = std::time::Instant::now();
            let left = || {
                let ms = self
                    .switch_wait
                    .per_attempt
                    .saturating_sub(started.elapsed())
                    .as_millis()
                    .max(1);
                format!("{ms}ms")
            };
            const TIMEOUT: &str = "SELECT set_config('statement_timeout', $1, true)";
            sqlx::query(TIMEOUT).bind(left()).execute(&mut *tx).await?;
            // Tables first, then checkpoint rows: the order a live batch takes them in, so a
            // batch in flight finishes (or waits) instead of deadlocking.
            let names: Vec<String> = tables
                .iter()
                .map(|t| format!("{}.{}", ident(base), ident(t.name)))
                .collect();
            tx.execute(
                format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", names.join(", ")).as_str(),
            )
            .await?;
            sqlx::query(TIMEOUT).bind(left()).execute(&mut *tx).await?;
            let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
            sqlx::query(
                "SELECT 1 FROM projection_checkpoints WHERE name = ANY($1) ORDER BY name \
                 FOR UPDATE",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
            sqlx::query(TIMEOUT).bind(own).execute(&mut *tx).await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(e) = locked {
            let busy = lock_not_had(&e);
            if !busy {
                tracing::warn!(error = %e, "a rebuild's switch failed to take its locks");
            }
            // The locks go with the transaction, at once: readers queued behind go on.
            tx.rollback().await.map_err(Attempt::Failed)?;
            return Err(if busy {
                Attempt::Busy
            } else {
                Attempt::Failed(unavailable(e))
            });
        }
        let switched = async {
            let mut lives = Vec::new();
            for p in projections {
                lives.push(checkpoint_on(&mut Conn::Postgres(&mut tx), p.name()).await?);
            }
            tx.execute(format!("CREATE SCHEMA {}", ident(old)).as_str())
                .await
                .map_err(unavailable)?;
            for t in tables {
                tx.execute(
                    format!(
                        "ALTER TABLE {}.{t} SET SCHEMA {}; ALTER TABLE {}.{t} SET SCHEMA {}",
                        ident(base),
                        ident(old),
                        ident(schema),
                        ident(base),
                        t = ident(t.name)
                    )
                    .as_str(),
                )
                .await
                .map_err(unavailable)?;
            }
            let mut held = Conn::Postgres(&mut tx);
            hand_over(&mut held, store, projections, positions, &lives).await?;
            tx.commit().await
        }
        .await;
        switched.map_err(Attempt::Failed)?;
        // Back to the pool first: it may hold no other connection for the drop.
        drop(conn);
        drop_schema(pool, old).await;
        Ok(())
    }

    /// The SQLite switch: where tables cannot move between files, one `BEGIN IMMEDIATE`
    /// transaction replaces the live rows with the rebuilt ones. Readers keep their WAL
    /// snapshot meanwhile and hold no lock a writer waits for, so it needs no attempts.
    async fn switch_sqlite(
        &self,
        store: &dyn EventStore,
        live: &Database,
        projections: &[Arc<dyn Projection>],
        tables: &[Table],
        positions: &[Position],
    ) -> Result<(), StoreError> {
        let (Database::Sqlite(pool), Place::Sqlite { path, .. }) = (live, &self.place) else {
            return Err(StoreError::Unavailable(
                "the scratch place is not of the live store's kind".into(),
            ));
        };
        let mut conn = attach_scratch(pool, path).await?;
        let copied = async {
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(unavailable)?;
            for t in tables {
                let into = if t.columns == "*" {
                    String::new()
                } else {
                    format!(" ({})", t.columns)
                };
                tx.execute(
                    format!(
                        "DELETE FROM main.{n}; \
                         INSERT INTO main.{n}{into} SELECT {c} FROM scratch.{n}",
                        n = ident(t.name),
                        c = t.columns
                    )
                    .as_str(),
                )
                .await
                .map_err(unavailable)?;
            }
            let mut lives = Vec::new();
            for p in projections {
                lives.push(checkpoint_on(&mut Conn::Sqlite(&mut tx), p.name()).await?);
            }
            let mut held = Conn::Sqlite(&mut tx);
            hand_over(&mut held, store, projections, positions, &lives).await?;
            tx.commit().await.map_err(unavailable)
        }
        .await;
        let _ = conn.close().await;
        copied
    }

    /// Compares the live tables of `p` with a rebuild in this scratch place, row for row, at
    /// the same checkpoint: builds the scratch copy up to the live checkpoint, then compares
    /// both in one read snapshot, retrying while the live projection moves on. Returns one
    /// line per table that differs (empty when they are equal) and the position compared at.
    pub async fn compare(
        &self,
        store: &dyn EventStore,
        live: &Database,
        p: &Arc<dyn Projection>,
    ) -> Result<(Vec<String>, Position), StoreError> {
        let one = [p.clone()];
        for _ in 0..COMPARE_TRIES {
            let target = read_checkpoint(live, p.name()).await?;
            if read_checkpoint(&self.db, p.name()).await? > target {
                return Err(StoreError::Unavailable(format!(
                    "the scratch copy of {} is past the live checkpoint {target}",
                    p.name()
                )));
            }
            self.build(store, &one, Some(target)).await?;
            if let Some(found) = self.compare_at(live, p, target).await? {
                return Ok((found, target));
            }
        }
        Err(StoreError::Unavailable(format!(
            "projection {} kept moving during the comparison; try again",
            p.name()
        )))
    }

    /// `None` when the live checkpoint is no longer `target`.
    async fn compare_at(
        &self,
        live: &Database,
        p: &Arc<dyn Projection>,
        target: Position,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let (tx_id, seq) = tx_i64(target)?;
        let tables = live_tables(live, std::slice::from_ref(p)).await?;
        let mut found = Vec::new();
        match (live, &self.place) {
            (Database::Postgres(pool), Place::Postgres { base, schema, .. }) => {
                let mut tx = pool.begin().await.map_err(unavailable)?;
                tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(unavailable)?;
                let at: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT position_tx, position_seq FROM projection_checkpoints WHERE name = $1",
                )
                .bind(p.name())
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
                if at.unwrap_or((0, 0)) != (tx_id, seq) {
                    return Ok(None);
                }
                for t in &tables {
                    let (a, b) = (
                        format!("{}.{}", ident(base), ident(t.name)),
                        format!("{}.{}", ident(schema), ident(t.name)),
                    );
                    let row = sqlx::query(&format!(
                        "SELECT (SELECT count(*) FROM {a}), (SELECT count(*) FROM {b}), \
                         (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) x), \
                         (SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}) y)"
                    ))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    report(&mut found, t.name, &row_counts!(&row));
                }
                Ok(Some(found))
            }
            (Database::Sqlite(pool), Place::Sqlite { path, .. }) => {
                let mut conn = attach_scratch(pool, path).await?;
                let compared = async {
                    // One read transaction: both files' snapshots hold until it ends.
                    let mut tx = conn.begin().await.map_err(unavailable)?;
                    let at: Option<(i64, i64)> = sqlx::query_as(
                        "SELECT position_tx, position_seq FROM main.projection_checkpoints \
                         WHERE name = ?",
                    )
                    .bind(p.name())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    if at.unwrap_or((0, 0)) != (tx_id, seq) {
                        return Ok(None);
                    }
                    let mut found = Vec::new();
                    for t in &tables {
                        let c = &t.columns;
                        let (a, b) = (
                            format!("main.{}", ident(t.name)),
                            format!("scratch.{}", ident(t.name)),
                        );
                        // SQLite has no EXCEPT ALL; every read-model table has a primary
                        // key, so its rows are distinct and the counts catch duplicates.
                        let row = sqlx::query(&format!(
                            "SELECT (SELECT count(*) FROM {a}), (SELECT count(*) FROM {b}), \
                             (SELECT count(*) FROM (SELECT {c} FROM {a} EXCEPT SELECT {c} FROM {b})), \
                             (SELECT count(*) FROM (SELECT {c} FROM {b} EXCEPT SELECT {c} FROM {a}))"
                        ))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                        report(&mut found, t.name, &row_counts!(&row));
                    }
                    Ok(Some(found))
                }
                .await;
                let _ = conn.close().await;
                compared
            }
            _ => Err(StoreError::Unavailable(
                "the scratch place is not of the live store's kind".into(),
            )),
        }
    }
}

fn report(
    found: &mut Vec<String>,
    table: &str,
    [live, rebuilt, only_live, only_rebuilt]: &[i64; 4],
) {
    if live != rebuilt || *only_live != 0 || *only_rebuilt != 0 {
        found.push(format!(
            "table {table}: {live} live rows, {rebuilt} rebuilt; {only_live} only live, \
             {only_rebuilt} only rebuilt"
        ));
    }
}

/// One projection's share of a scratch batch, with an error naming the event it failed on.
async fn apply_one(
    writer: &mut Writer,
    p: &dyn Projection,
    at: Position,
    batch: &[StoredEvent],
) -> Result<(), StoreError> {
    // A scratch's tables are never switched under it: their generation is the first.
    let mark = Mark { at, generation: 0 };
    commit_batch(writer, p, mark, batch).await.map_err(
        |BatchError {
             failed_at, error, ..
         }| match failed_at {
            Some(i) => StoreError::Corrupt(format!(
                "projection {} cannot apply {}: {error}",
                p.name(),
                describe(&batch[i])
            )),
            None => error,
        },
    )
}

/// A read-model table as the live database has it.
struct Table {
    name: &'static str,
    /// The select list that covers the whole row: `*`, or on SQLite for a virtual (FTS5)
    /// table `rowid, <columns>`, since its rowid carries meaning and `*` leaves it out.
    columns: String,
}

/// The tables of `projections` that exist in the live database, in order. A projection may
/// name a table only one backend has (search: `ticket_search` on PostgreSQL, `ticket_fts` on
/// SQLite).
async fn live_tables(
    live: &Database,
    projections: &[Arc<dyn Projection>],
) -> Result<Vec<Table>, StoreError> {
    let mut out = Vec::new();
    for name in projections.iter().flat_map(|p| p.tables()) {
        match live {
            Database::Postgres(pool) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1)) \
                     IS NOT NULL",
                )
                .bind(*name)
                .fetch_one(pool)
                .await
                .map_err(unavailable)?;
                if exists {
                    out.push(Table {
                        name,
                        columns: "*".into(),
                    });
                }
            }
            Database::Sqlite(pool) => {
                let sql: Option<String> = sqlx::query_scalar(
                    "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                )
                .bind(*name)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
                let Some(sql) = sql else { continue };
                let columns = if sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE") {
                    let names: Vec<String> =
                        sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                            .bind(*name)
                            .fetch_all(pool)
                            .await
                            .map_err(unavailable)?;
                    std::iter::once("rowid".to_owned())
                        .chain(names.iter().map(|n| ident(n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    "*".into()
                };
                out.push(Table { name, columns });
            }
        }
    }
    Ok(out)
}

/// The kind of advisory lock (see [`crate::LOCK_KEY`]) a scratch's owner holds, keyed by the
/// scratch's tag, on a connection of its own while the scratch exists: a scratch schema whose
/// lock is free belongs to no running process.
const SCRATCH: &str = "scratch";

/// The tag of a scratch schema (`ticketd_rebuild_<oid>_<tag>`, `ticketd_old_<oid>_<tag>`): its
/// name's last part.
fn tag_of(schema: &str) -> &str {
    schema.rsplit('_').next().unwrap_or(schema)
}

/// Drops the scratch schemas of the store whose schema is `base_oid` (a rebuild's or a
/// verification's `ticketd_rebuild_<oid>_<tag>`, a switch's `ticketd_old_<oid>_<tag>`) that
/// no running process owns: what a rebuild or verification killed before its end left (as
/// large as the read models). Best effort: what it cannot drop stays for the next one.
async fn sweep(owner: &mut sqlx::PgConnection, base_oid: i64) {
    let found: Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 OR nspname LIKE $2",
    )
    .bind(format!("ticketd\\_rebuild\\_{base_oid}\\_%"))
    .bind(format!("ticketd\\_old\\_{base_oid}\\_%"))
    .fetch_all(&mut *owner)
    .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for scratch schemas left behind");
            return;
        }
    };
    let lock = |f: &str| format!("SELECT {f}({})", crate::LOCK_KEY);
    for schema in found {
        let tag = tag_of(&schema);
        let free: Result<bool, _> = sqlx::query_scalar(&lock("pg_try_advisory_lock"))
            .bind(SCRATCH)
            .bind(tag)
            .fetch_one(&mut *owner)
            .await;
        match free {
            Ok(true) => {}
            // Its owner runs.
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(schema, error = %e, "could not check a scratch schema's owner");
                return;
            }
        }
        if drop_schema_on(&mut *owner, &schema).await.is_ok() {
            tracing::info!(
                schema,
                "dropped the scratch copy of a rebuild or verification that did not finish"
            );
        }
        let unlocked = sqlx::query(&lock("pg_advisory_unlock"))
            .bind(SCRATCH)
            .bind(tag)
            .execute(&mut *owner)
            .await;
        if unlocked.is_err() {
            return;
        }
    }
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    let _ = drop_schema_on(pool, schema).await;
}

/// `DROP SCHEMA … CASCADE` of a scratch (or a switch's throw-away) schema, on `db`; a failure
/// is logged.
async fn drop_schema_on<'c>(
    db: impl Executor<'c, Database = sqlx::Postgres>,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let dropped = db
        .execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)).as_str())
        .await;
    if let Err(e) = &dropped {
        tracing::warn!(schema, error = %e, "could not drop a scratch schema; drop it by hand");
    }
    dropped.map(|_| ())
}

/// The end of a switch, in its transaction, the live tables and checkpoints held: each
/// projection's checkpoint moves to where its scratch stood (`positions`), in a new generation
/// (no live runner's batch started before then moves it on), and its switched-in tables take
/// what the live runner applied up to where it stood (`lives`, see [`follow_live`]). On
/// SQLite the scratch is attached beside `main`, whose checkpoint table the unqualified name
/// finds first.
async fn hand_over(
    conn: &mut Conn<'_>,
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
    positions: &[Position],
    lives: &[Position],
) -> Result<(), StoreError> {
    let now = Utc::now().timestamp_micros();
    for ((p, at), to) in projections.iter().zip(positions).zip(lives) {
        let (tx_id, seq) = tx_i64(*at)?;
        let generation: Option<i64> = conn
            .fetch_column(
                "UPDATE projection_checkpoints SET position_tx = ?, position_seq = ?, \
                 updated_at = ?, generation = generation + 1 WHERE name = ? \
                 RETURNING generation",
                &[
                    Bind::I64(tx_id),
                    Bind::I64(seq),
                    Bind::I64(now),
                    Bind::Text(p.name().to_owned()),
                ],
            )
            .await?
            .into_iter()
            .next();
        let generation = generation.ok_or_else(|| {
            StoreError::Unavailable(format!("the checkpoint of {} is gone", p.name()))
        })?;
        let mark = Mark {
            at: *at,
            generation,
        };
        follow_live(conn, store, p.as_ref(), mark, *to).await?;
    }
    Ok(())
}

/// In a switch's transaction, with the live projection `p` held still: its switched-in tables,
/// at `from`, take the events up to `to`, where the live ones they replace stood, and its
/// checkpoint moves there. The scratch followed the live projection just before the switch's
/// locks, so these are only what the live runner applied during the last round of that
/// (a few of its batches), applied one by one. Without this the checkpoint moved back: a
/// runner with nothing new to read did not notice, the tables lacked those events until the
/// next append, and `min_position` waits counted them as applied. On PostgreSQL the log is
/// read on the transaction's own connection (the pool may have no other to give) and without
/// the gate, which a live runner's batch of another process, waiting on the switch's locks,
/// would hold below `to`: every event up to `to` is settled, since a runner read it.
async fn follow_live(
    conn: &mut Conn<'_>,
    store: &dyn EventStore,
    p: &dyn Projection,
    from: Mark,
    to: Position,
) -> Result<(), StoreError> {
    let mut at = from.at;
    while at < to {
        let page = match conn {
            Conn::Postgres(c) => read_settled_on(c, at, to, REBUILD_BATCH).await?,
            Conn::Sqlite(_) => store.read_all(at, REBUILD_BATCH).await?,
        };
        let upto: Vec<StoredEvent> = page.into_iter().take_while(|e| e.position <= to).collect();
        let Some(last) = upto.last().map(|e| e.position) else {
            return Err(StoreError::Unavailable(format!(
                "the log shows nothing after {at}, yet {} stands at {to}",
                p.name()
            )));
        };
        let mark = Mark {
            at,
            generation: from.generation,
        };
        apply_in(conn, p, mark, &upto, false)
            .await
            .map_err(|e| e.error)?;
        at = last;
    }
    Ok(())
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    pub projections: Vec<&'static str>,
    pub events: u64,
}

/// Rebuilds `projections` from the start of the log, blue/green (see the module's doc). The
/// live tables keep serving until the switch.
pub async fn rebuild(
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
) -> Result<Rebuilt, StoreError> {
    rebuild_with(store, projections, BULK_TICKETS, SwitchWait::default()).await
}

/// [`rebuild`] with the bulk pass's bound on the tickets held in memory (see
/// [`Scratch::set_bulk_tickets`]) and how its switch waits for its locks (see
/// [`Scratch::set_switch_wait`]).
pub async fn rebuild_with(
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
    bulk_tickets: usize,
    switch_wait: SwitchWait,
) -> Result<Rebuilt, StoreError> {
    let live = store
        .database()
        .ok_or_else(|| StoreError::Unavailable("this store keeps no read models".into()))?;
    let mut scratch = Scratch::create(&live).await?;
    scratch.set_bulk_tickets(bulk_tickets);
    scratch.set_switch_wait(switch_wait);
    let done = async {
        let events = scratch.build(store, projections, None).await?;
        scratch.switch(store, &live, projections).await?;
        Ok(events)
    }
    .await;
    scratch.discard(&live).await;
    Ok(Rebuilt {
        projections: projections.iter().map(|p| p.name()).collect(),
        events: done?,
    })
}

/// Compares every live projection with a fresh rebuild in a scratch place (for `verify`).
/// Returns `(projection, finding)` pairs; empty when all are equal.
pub async fn check_all(
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
) -> Result<Vec<(&'static str, String)>, StoreError> {
    let live = store
        .database()
        .ok_or_else(|| StoreError::Unavailable("this store keeps no read models".into()))?;
    let scratch = Scratch::create(&live).await?;
    let checked = async {
        let mut findings = Vec::new();
        for p in projections {
            let (found, _) = scratch.compare(store, &live, p).await?;
            findings.extend(found.into_iter().map(|f| (p.name(), f)));
        }
        Ok(findings)
    }
    .await;
    scratch.discard(&live).await;
    checked
}

/// SQLite: a new connection to the live store with the scratch file attached as `scratch`. A
/// connection of its own: ATTACH is per connection and must not leak into the pool.
async fn attach_scratch(
    pool: &sqlx::SqlitePool,
    path: &std::path::Path,
) -> Result<sqlx::SqliteConnection, StoreError> {
    let mut conn = pool
        .connect_options()
        .connect()
        .await
        .map_err(unavailable)?;
    sqlx::query("ATTACH DATABASE ? AS scratch")
        .bind(path.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
    Ok(conn)
}

/// A page of the log for a rebuild, read the bulk way (binary `COPY` on PostgreSQL).
pub(crate) async fn read_page(
    store: &dyn EventStore,
    after: Position,
) -> Result<Vec<StoredEvent>, StoreError> {
    let batch = store.read_batch(after, REBUILD_BATCH).await?;
    batch.iter().map(|e| e.map(|e| e.to_stored())).collect()
}

/// PostgreSQL: drops the secondary indexes (neither primary keys nor unique: upserts need
/// those) of the scratch tables of `projections`, returning the statements that create them
/// again, with their tables — the migrations' own definitions, as the catalog holds them, with
/// the statistics targets set on their columns (an expression's statistics live with its
/// index).
async fn defer_indexes(
    pool: &PgPool,
    schema: &str,
    projections: &[Arc<dyn Projection>],
) -> Result<Vec<(String, String)>, StoreError> {
    let tables: Vec<String> = projections
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| (*t).to_owned()))
        .collect();
    let found: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid) || coalesce((\
           SELECT string_agg(format('; ALTER INDEX %I.%I ALTER COLUMN %s SET STATISTICS %s', \
             n.nspname, i.relname, a.attnum, a.attstattarget), '' ORDER BY a.attnum) \
           FROM pg_attribute a WHERE a.attrelid = x.indexrelid AND a.attstattarget >= 0), '') \
         FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = $1 AND t.relname = ANY($2) AND NOT x.indisunique AND NOT x.indisprimary",
    )
    .bind(schema)
    .bind(&tables)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let mut definitions = Vec::with_capacity(found.len());
    for (table, name, definition) in found {
        pool.execute(format!("DROP INDEX {}.{}", ident(schema), ident(&name)).as_str())
            .await
            .map_err(unavailable)?;
        definitions.push((table, definition));
    }
    Ok(definitions)
}

/// Memory for each B-tree build after a rebuild's load (PostgreSQL's default is 64 MB): the
/// sorts of the larger `tickets` indexes stay in memory.
const INDEX_BUILD_MEMORY: &str = "256MB";
/// Memory for a GIN build. Less is quicker: the build gathers entries in a tree that it writes
/// out whenever this fills, and a small tree stays in the CPU's caches. Over 1 M tickets the
/// search index took 18.3 s with 256 MB, 15.6 – 16.2 s with 64 MB, 13.0 – 13.6 s with 16 or
/// 32 MB and 12.3 s with 4 MB (docs/PERFORMANCE.md, session 27); 32 MB leaves room for a
/// larger vocabulary than the generator's, whose every word is flushed once per fill.
const GIN_BUILD_MEMORY: &str = "32MB";

/// The `maintenance_work_mem` an index `definition` (`pg_get_indexdef`'s) builds with.
pub(crate) fn build_memory(definition: &str) -> &'static str {
    if crate::bulk::is_gin(definition) {
        GIN_BUILD_MEMORY
    } else {
        INDEX_BUILD_MEMORY
    }
}

/// Runs index `definitions` (of [`defer_indexes`]) on `conn`, one after the other.
/// Each build is a transaction the live log readers look past (`by`): a GIN build over a
/// million tickets takes a core for tens of seconds.
pub(crate) async fn build_indexes(
    conn: &mut sqlx::PgConnection,
    definitions: &[String],
    by: Option<&Bystanders>,
) -> Result<(), StoreError> {
    if definitions.is_empty() {
        return Ok(());
    }
    for definition in definitions {
        let memory = build_memory(definition);
        conn.execute(format!("SET maintenance_work_mem = '{memory}'").as_str())
            .await
            .map_err(unavailable)?;
        let mut tx = Standing::begin(conn, by).await?;
        tx.execute(definition.as_str()).await.map_err(unavailable)?;
        tx.commit().await?;
    }
    conn.execute("RESET maintenance_work_mem")
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// `VACUUM (ANALYZE)` of each of `tables` in `schema`, two at a time, the largest first: one
/// table's (`ticket_search`'s, whose statistics sample 300,000 rows, when the bulk path has
/// not done it) took most of the time, and the others' waited behind it on one connection (at
/// 1 M tickets 7.7 s of 9.6).
async fn vacuum_all(pool: &PgPool, schema: &str, tables: &[&Table]) -> Result<(), StoreError> {
    let names: Vec<&str> = tables.iter().map(|t| t.name).collect();
    let largest_first: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', $1::text, t) FROM unnest($2::text[]) AS t \
         ORDER BY pg_total_relation_size(format('%I.%I', $1::text, t)::regclass) DESC",
    )
    .bind(schema)
    .bind(&names)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    two_at_a_time(largest_first, |table| async move {
        pool.execute(format!("VACUUM (ANALYZE) {table}").as_str())
            .await
            .map(drop)
            .map_err(unavailable)
    })
    .await
}

/// Runs the `definitions` that [`defer_indexes`] returned, two at a time.
async fn restore_indexes(
    pool: &PgPool,
    definitions: Vec<String>,
    by: Option<&Bystanders>,
) -> Result<(), StoreError> {
    two_at_a_time(definitions, |definition| async move {
        let mut conn = pool.acquire().await.map_err(unavailable)?;
        build_indexes(&mut conn, &[definition], by).await
    })
    .await
}

/// A rebuild's transaction, registered with every process on the store while it runs, where
/// the store keeps such a registry (PostgreSQL, migration 0019): a rebuild's transactions
/// append no event, and those that run long would otherwise hold every live projection and
/// `min_position` wait back until they end, the service's own included. A registration that
/// fails (the store's pool busy, say, under `verify` in a loaded service) only leaves the
/// transaction holding the readers back, as before registries: the rebuild goes on, with a
/// warning.
pub(crate) struct Standing<'c> {
    tx: sqlx::Transaction<'c, sqlx::Postgres>,
    /// Dropped after `tx` (fields drop in order): the registration outlives the transaction.
    _registered: Option<SharedBystander>,
}

impl<'c> Standing<'c> {
    pub(crate) async fn begin(
        conn: &'c mut sqlx::PgConnection,
        by: Option<&Bystanders>,
    ) -> Result<Standing<'c>, StoreError> {
        let mut tx = conn.begin().await.map_err(unavailable)?;
        let registered = match by {
            None => None,
            Some(by) => match by.enter_shared(&mut tx).await {
                Ok(registered) => Some(registered),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "a rebuild transaction could not register as a bystander; live \
                         projections wait for it"
                    );
                    None
                }
            },
        };
        Ok(Standing {
            tx,
            _registered: registered,
        })
    }

    /// Commits, then ends the registration.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(unavailable)
    }

    /// Rolls back (its locks go at once), then ends the registration.
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(unavailable)
    }
}

impl std::ops::Deref for Standing<'_> {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Standing<'_> {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }
}

/// Runs `work` on each of `items` in their order, two at a time: the machine's two cores, and
/// the scratch pool's two connections.
async fn two_at_a_time<T, F, Fut>(items: Vec<T>, work: F) -> Result<(), StoreError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let queue = std::sync::Mutex::new(items.into_iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next());
    let worker = || async {
        while let Some(item) = next() {
            work(item).await?;
        }
        Ok::<(), StoreError>(())
    };
    futures::future::try_join(worker(), worker()).await?;
    Ok(())
}

/// The projections named, in the order given; an unknown name is an error naming the known.
pub fn select(names: &[String]) -> Result<Vec<Arc<dyn Projection>>, String> {
    let all = crate::all();
    if names.is_empty() {
        return Ok(all);
    }
    let mut chosen: Vec<Arc<dyn Projection>> = Vec::new();
    for n in names {
        let p = all.iter().find(|p| p.name() == n).cloned().ok_or_else(|| {
            let known: Vec<_> = all.iter().map(|p| p.name()).collect();
            format!("no projection {n:?}; known: {}", known.join(", "))
        })?;
        // Named twice, rebuilt once: two builds of one projection would share its tables.
        if !chosen.iter().any(|c| c.name() == p.name()) {
            chosen.push(p);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::select;

    fn names(list: &[&str]) -> Result<Vec<&'static str>, String> {
        let list: Vec<String> = list.iter().map(|n| (*n).to_owned()).collect();
        select(&list).map(|ps| ps.iter().map(|p| p.name()).collect())
    }

    #[test]
    fn a_projection_named_twice_is_rebuilt_once() {
        assert_eq!(
            names(&["tickets", "feed", "tickets"]),
            Ok(vec!["tickets", "feed"])
        );
        assert_eq!(names(&[]).map(|n| n.len()), Ok(crate::all().len()));
        let unknown = names(&["tickets", "nope"]).expect_err("unknown");
        assert!(unknown.starts_with("no projection \"nope\""), "{unknown}");
    }
}
