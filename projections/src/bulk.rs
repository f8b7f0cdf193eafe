//! A rebuild's bulk path (PostgreSQL): a fresh scratch is filled by one pass over the log,
//! folded in memory, its rows loaded by `COPY`.
//!
//! The batched path a live runner takes costs a rebuild, per batch, a read of the states it
//! folds, upserts row by row (heap, primary key, WAL) and a `VALUES` or array parse of every
//! value. Here each projection folds the whole log in memory instead ([`Fold`]): rows that are
//! final at once (a feed entry, an analytics event) stream out in large `COPY` chunks while the
//! fold goes on, and the rows of folded state (a ticket, its facts) go in at the end. Every row
//! comes from the same functions the batched path writes with, so both give identical tables;
//! the rebuild equality tests compare the two on every run.
//!
//! Work runs in parallel wherever it can: each page of the log is decoded once, on a thread of
//! its own, while each projection's fold takes the page before on a thread of its own too; and
//! each table loads on a connection of its own ([`Loader`]), by `COPY` in one transaction that
//! starts by truncating it, so `COPY … FREEZE` writes its rows frozen and all-visible (no later
//! `VACUUM` needs to visit them, and index-only scans work at once), and a load that fails or
//! is started again never leaves rows twice. Each value goes in its type's binary form, search
//! vectors too (`Bind::Vector`: sorted lexemes, which the server takes without parsing).
//!
//! Once every table is loaded, each commits and builds its secondary indexes (deferred by the
//! rebuild), all at once, in [`Lanes`]. The checkpoints move last, in a transaction of their
//! own; until then the scratch stays at the start of the log.
//!
//! Memory grows with the tickets folded: once [`BULK_TICKETS`] streams have been seen, the pass
//! stops at that event, loads what it has, and the rebuild goes on from there by the batched
//! path, which builds the secondary indexes at its end.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use ticketd_commands::handler::decode_ref;
use ticketd_commands::pgcopy::{copy_in_header, copy_in_trailer};
use ticketd_commands::postgres::Bystanders;
use ticketd_commands::{EventBatch, EventRef, EventStore, Position, StoreError, StoredEvent};
use ticketd_domain::Recorded;

use crate::rebuild::Standing;
use crate::sql::{unavailable, Bind, Conn, CopyRows};
use crate::{micros, tx_i64, Projection};

/// Most tickets (streams) a pass holds in memory before it loads what it has (see the
/// module's doc), by default: about 3 kB each across the three folds for a ticket of nine
/// events (`ticketd rebuild` peaked at 2.8 GB resident over 1,000,000 such tickets), so about
/// 4.5 GB at the bound. `ticketd rebuild --rebuild-tickets-in-memory` sets it.
pub const BULK_TICKETS: usize = 1_500_000;
/// Bytes of rows gathered before they go to the database as one `COPY`.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Pages queued per fold, and steps per table, before their sender waits.
const QUEUE: usize = 2;

/// Rows for the database, in the order given: a `COPY` of `rows` into the table and columns
/// of `insert` (`INSERT INTO t (a, b, …)`).
pub struct Step {
    insert: &'static str,
    rows: CopyRows,
}

impl Step {
    /// A `COPY` of `rows` for `insert` once at least `min` bytes of them have gathered (any,
    /// with 0), leaving `rows` empty: what a fold's [`Fold::ready`] gives for a streamed table.
    pub fn copy_when(insert: &'static str, rows: &mut CopyRows, min: usize) -> Option<Step> {
        (rows.size() >= min.max(1)).then(|| Step {
            insert,
            rows: rows.split(),
        })
    }
}

/// Where a fold sends its last rows as it makes them, so its tables load while it goes on.
pub type Sink<'a> = dyn FnMut(Step) -> Result<(), StoreError> + 'a;

/// Sends `rows` for `insert` to `out` as `COPY` steps of about [`CHUNK_BYTES`] each, as they
/// are made: what a fold's [`Fold::finish`] does with a table of folded state.
pub fn copy_all(
    insert: &'static str,
    rows: impl IntoIterator<Item = Vec<Bind>>,
    out: &mut Sink<'_>,
) -> Result<(), StoreError> {
    let mut copy = CopyRows::default();
    for row in rows {
        copy.push(&row)?;
        Step::copy_when(insert, &mut copy, CHUNK_BYTES).map_or(Ok(()), &mut *out)?;
    }
    Step::copy_when(insert, &mut copy, 0).map_or(Ok(()), &mut *out)
}

/// One projection's side of the pass.
pub trait Fold: Send {
    /// Folds one event, decoded once for every projection: `recorded` is its payload and
    /// metadata, which `event` does not carry (see [`Page`]).
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError>;

    /// Rows already final, once at least `min` bytes of them have gathered.
    fn ready(&mut self, _min: usize) -> Vec<Step> {
        Vec::new()
    }

    /// Everything else, at the end of the pass, sent to `out` in chunks as it is made
    /// ([`copy_all`], or [`Step::copy_when`] with [`CHUNK_BYTES`]).
    /// Returns the streams it left out, to apply by the projection's own batched path after
    /// the load (a ticket whose text might reach the search text budget, which that path
    /// applies comment by comment).
    fn finish(self: Box<Self>, out: &mut Sink<'_>) -> Result<Vec<Uuid>, StoreError>;
}

enum Load {
    Step(Step),
    /// The last step was sent: commit, then build these indexes of the table, in `Lanes`.
    Commit(Vec<String>, Arc<Lanes>),
}

/// Where the tables' index builds run once they are loaded, all tables at once. PostgreSQL 15
/// builds a GIN index in one backend, and the search index's build is the load's longest; when
/// the other builds ran beside it each with parallel workers, it got a fraction of a core, and
/// for its last 22 s at 1 M tickets nothing else was left to run (docs/PERFORMANCE.md, session
/// 19). So a GIN build runs at once, and the B-tree builds share what is left: one at a time
/// without parallel workers while a GIN build runs, two at a time otherwise. (Once the GIN
/// build took less time than the B-tree lane beside it, the lane was the load's longest:
/// hence the second lane as soon as the GIN builds are done.)
pub(crate) struct Lanes {
    btree: tokio::sync::Semaphore,
    /// GIN builds not yet done.
    gin: std::sync::atomic::AtomicUsize,
}

impl Lanes {
    /// Lanes for a load whose deferred index `definitions` are these.
    pub(crate) fn for_builds<'a>(definitions: impl IntoIterator<Item = &'a str>) -> Lanes {
        let gin = definitions.into_iter().filter(|d| is_gin(d)).count();
        Lanes {
            btree: tokio::sync::Semaphore::new(if gin > 0 { 1 } else { 2 }),
            gin: std::sync::atomic::AtomicUsize::new(gin),
        }
    }

    /// One GIN build is done (or failed): after the last, the B-tree builds get two lanes.
    fn gin_done(&self) {
        if self.gin.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.btree.add_permits(1);
        }
    }

    /// Builds `definitions` on `conns`, each connection taking the next one not yet begun
    /// (so one table's builds can run in both lanes), each build in its lane.
    async fn build(
        &self,
        conns: Vec<&mut PgConnection>,
        definitions: Vec<String>,
        by: Option<&Bystanders>,
    ) -> Result<(), StoreError> {
        let queue = std::sync::Mutex::new(definitions.into_iter());
        let next = || queue.lock().ok().and_then(|mut q| q.next());
        let workers = conns.into_iter().map(|conn| async {
            while let Some(definition) = next() {
                self.build_one(conn, &definition, by).await?;
            }
            Ok::<_, StoreError>(())
        });
        futures::future::try_join_all(workers).await.map(|_| ())
    }

    /// Builds one index `definition` on `conn`, in its lane.
    async fn build_one(
        &self,
        conn: &mut PgConnection,
        definition: &str,
        by: Option<&Bystanders>,
    ) -> Result<(), StoreError> {
        let one = [definition.to_owned()];
        if is_gin(definition) {
            let built = crate::rebuild::build_indexes(conn, &one, by).await;
            self.gin_done();
            return built;
        }
        let _lane = self
            .btree
            .acquire()
            .await
            .map_err(|e| StoreError::Unavailable(format!("an index build lane: {e}")))?;
        // The lanes are the parallelism: workers of their own would take the GIN build's
        // core.
        conn.execute("SET max_parallel_maintenance_workers = 0")
            .await
            .map_err(unavailable)?;
        crate::rebuild::build_indexes(conn, &one, by).await?;
        conn.execute("RESET max_parallel_maintenance_workers")
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Whether an index definition (`pg_get_indexdef`'s) builds a GIN index.
pub(crate) fn is_gin(definition: &str) -> bool {
    definition.contains(" USING gin ")
}

/// What a statement (`INSERT INTO t (a, …)`) inserts into: `t (a, …)`, as `COPY` names it.
fn target_of(statement: &str) -> Result<&str, StoreError> {
    statement
        .strip_prefix("INSERT INTO ")
        .filter(|rest| !rest.trim().is_empty())
        .ok_or_else(|| StoreError::Unavailable(format!("not an insert: {statement}")))
}

/// The table a statement (`INSERT INTO t (…)`) writes.
fn table_of(statement: &str) -> Result<&str, StoreError> {
    target_of(statement)?
        .split_whitespace()
        .next()
        .ok_or_else(|| StoreError::Unavailable(format!("not an insert: {statement}")))
}

/// One table's loader: a task with connections of its own, fed that table's steps in order.
/// Each table loads at once with the others, and builds its indexes once all are loaded.
struct Loader {
    table: String,
    queue: mpsc::Sender<Load>,
    /// Whether the loader analyzed its table (see [`load_copies`]).
    task: tokio::task::JoinHandle<Result<bool, StoreError>>,
}

impl Loader {
    /// A loader for the table `first` writes: its steps run in one transaction that
    /// truncates the table first (so `FREEZE` applies).
    async fn start(
        pool: &PgPool,
        first: &Step,
        by: Option<Bystanders>,
    ) -> Result<Loader, StoreError> {
        let options = crate::writer_options(pool);
        let conn = PgConnection::connect_with(&options)
            .await
            .map_err(unavailable)?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let table = table_of(first.insert)?.to_owned();
        let task = tokio::spawn(load_copies(conn, options, table.clone(), rx, by));
        Ok(Loader { table, queue, task })
    }

    /// Queues `load`; when the loader has stopped, its error.
    async fn send(&mut self, load: Load) -> Result<(), StoreError> {
        if self.queue.send(load).await.is_ok() {
            return Ok(());
        }
        match (&mut self.task).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err(StoreError::Unavailable(
                "a bulk loader stopped early".into(),
            )),
            Err(e) => Err(StoreError::Unavailable(format!(
                "a bulk loader failed: {e}"
            ))),
        }
    }

    /// Commits and builds `indexes` in `lanes`; whether the table was analyzed too (loaded
    /// frozen, it needs no `VACUUM`).
    async fn commit(mut self, indexes: Vec<String>, lanes: Arc<Lanes>) -> Result<bool, StoreError> {
        self.send(Load::Commit(indexes, lanes)).await?;
        match self.task.await {
            Ok(done) => done,
            Err(e) => Err(StoreError::Unavailable(format!(
                "a bulk loader failed: {e}"
            ))),
        }
    }
}

fn stopped_short() -> StoreError {
    StoreError::Unavailable("the bulk pass stopped before its end".into())
}

/// A `COPY` loader's task: truncates the table, runs each step, commits on
/// [`Load::Commit`] (and only then: a pass that stops short rolls back).
async fn load_copies(
    mut conn: PgConnection,
    options: sqlx::postgres::PgConnectOptions,
    table: String,
    mut queue: mpsc::Receiver<Load>,
    by: Option<Bystanders>,
) -> Result<bool, StoreError> {
    // Open for most of the pass: the live log readers look past it.
    let mut tx = Standing::begin(&mut conn, by.as_ref()).await?;
    let name = crate::rebuild::ident(&table);
    tx.execute(format!("TRUNCATE {name}").as_str())
        .await
        .map_err(unavailable)?;
    loop {
        match queue.recv().await.ok_or_else(stopped_short)? {
            Load::Step(step) => copy_frozen(&mut tx, step).await?,
            Load::Commit(indexes, lanes) => {
                tx.commit().await?;
                // A second connection, so that the table's builds can take both lanes once
                // the other tables' are done (`tickets` has seven).
                let mut second = match indexes.len() {
                    0 | 1 => None,
                    _ => Some(
                        PgConnection::connect_with(&options)
                            .await
                            .map_err(unavailable)?,
                    ),
                };
                // Frozen and all-visible already, it needs no `VACUUM`. A table with a search
                // index is analyzed here as soon as that is built, beside other tables' index
                // builds, rather than last before the switch: its expression's statistics
                // (1,000 buckets of lexemes) are the longest to gather (`ticket_search`: 2.1 s
                // at 1 M tickets, docs/PERFORMANCE.md, session 29). The others, with the rest.
                let analyze = indexes.iter().any(|d| is_gin(d));
                let conns = std::iter::once(&mut conn).chain(second.as_mut()).collect();
                lanes.build(conns, indexes, by.as_ref()).await?;
                if let Some(second) = second {
                    let _ = second.close().await;
                }
                if analyze {
                    conn.execute(format!("ANALYZE {name}").as_str())
                        .await
                        .map_err(unavailable)?;
                }
                return Ok(analyze);
            }
        }
    }
}

/// Runs `step` on `conn` as one binary `COPY … FREEZE`: its table must have been created or
/// truncated in the transaction `conn` is in.
pub async fn copy_frozen(conn: &mut PgConnection, step: Step) -> Result<(), StoreError> {
    let Step { insert, mut rows } = step;
    let target = target_of(insert)?;
    let mut copy = conn
        .copy_in_raw(&format!("COPY {target} FROM STDIN (FORMAT binary, FREEZE)"))
        .await
        .map_err(unavailable)?;
    let (mut header, mut trailer) = (Vec::new(), Vec::new());
    copy_in_header(&mut header);
    copy_in_trailer(&mut trailer);
    copy.send(header).await.map_err(unavailable)?;
    copy.send(rows.take()).await.map_err(unavailable)?;
    copy.send(trailer).await.map_err(unavailable)?;
    copy.finish().await.map_err(unavailable)?;
    Ok(())
}

/// The loaders of a pass, one per table, started as their tables' first steps come.
struct Loaders<'p> {
    pool: &'p PgPool,
    by: Option<Bystanders>,
    started: Vec<Loader>,
}

impl Loaders<'_> {
    async fn send(&mut self, step: Step) -> Result<(), StoreError> {
        let table = table_of(step.insert)?;
        let i = match self.started.iter().position(|l| l.table == table) {
            Some(i) => i,
            None => {
                self.started
                    .push(Loader::start(self.pool, &step, self.by.clone()).await?);
                self.started.len() - 1
            }
        };
        self.started[i].send(Load::Step(step)).await
    }
}

/// A fold's thread: folds each page as it comes, sends its rows as they become ready, and at
/// the end of the pages (the pass closed its input) its last ones, if the pass read the log to
/// its end (`complete`; otherwise the pass failed, and finishing would be wasted work). Returns
/// the streams it left for the batched path.
fn run_fold(
    mut fold: Box<dyn Fold>,
    mut pages: mpsc::Receiver<Page>,
    rows: mpsc::Sender<Step>,
    complete: &AtomicBool,
) -> Result<Vec<Uuid>, StoreError> {
    let send = |step| rows.blocking_send(step).map_err(|_| stopped_short());
    while let Some(page) = pages.blocking_recv() {
        for (event, recorded) in page.iter() {
            fold.add(event, recorded)?;
        }
        fold.ready(CHUNK_BYTES).into_iter().try_for_each(send)?;
    }
    if !complete.load(Ordering::Acquire) {
        return Err(stopped_short());
    }
    fold.finish(&mut |step| send(step))
}

/// A page of the log, each event with its decoding. The events carry their positions, ids,
/// types, versions and times, but not their payloads and metadata: `Recorded` is those,
/// decoded, and leaving the bytes out saves two copies of each event (a fold reads neither).
type Page = Arc<Vec<(StoredEvent, Recorded)>>;

/// The page of the log after `after` as read, with its last position (`None` at the end of
/// the log, or past `upto`).
async fn fetch(
    store: &dyn EventStore,
    upto: Option<Position>,
    after: Position,
) -> Result<Option<(EventBatch, Position)>, StoreError> {
    if upto.is_some_and(|u| after >= u) {
        return Ok(None);
    }
    let batch = store
        .read_batch(after, crate::rebuild::REBUILD_BATCH)
        .await?;
    Ok(batch.last_position().map(|end| (batch, end)))
}

/// An event of a page, without its payload and metadata (see [`Page`]).
fn bare(e: &EventRef<'_>) -> StoredEvent {
    EventRef {
        metadata: &[],
        payload: &[],
        ..*e
    }
    .to_stored()
}

/// The pass's decoder: pages cut at the event that brings the tickets (streams) seen to
/// `limit`.
struct Decoder {
    limit: usize,
    /// The streams seen so far (`None` only while a page is being decoded).
    streams: Option<HashSet<Uuid>>,
    /// The pass stopped at the bound: the batched path goes on from its last event.
    full: bool,
}

impl Decoder {
    /// `raw` decoded on a thread of its own, up to `upto` and to the event that reaches the
    /// bound.
    async fn decode(
        &mut self,
        raw: EventBatch,
        upto: Option<Position>,
    ) -> Result<Page, StoreError> {
        let (mut streams, limit) = (self.streams.take().unwrap_or_default(), self.limit);
        let decoded = tokio::task::spawn_blocking(move || {
            let mut page = Vec::with_capacity(raw.len());
            let mut full = false;
            for e in raw.iter() {
                let e = e?;
                if upto.is_some_and(|u| e.position > u) {
                    break;
                }
                let recorded = decode_ref(&e)?;
                streams.insert(e.stream_id);
                page.push((bare(&e), recorded));
                if streams.len() >= limit {
                    full = true;
                    break;
                }
            }
            Ok::<_, StoreError>((page, streams, full))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("decoding a page failed: {e}")))?;
        let (page, streams, full) = decoded?;
        self.streams = Some(streams);
        self.full = full;
        Ok(Arc::new(page))
    }
}

/// Folds the log from its start (up to `upto`, or as it is now) into the empty scratch
/// `tables` of `projections`, through `folds` (theirs, in the same order). Unless the pass stops at `limit`
/// tickets, each table's `deferred` indexes are built once the tables are loaded (and taken
/// out of `deferred`). Returns where the pass stopped and the events it folded (the checkpoints
/// are there, and the rebuild goes on from there), and the tables it analyzed (loaded frozen and
/// all-visible, they need no `VACUUM` either).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pass(
    pool: &PgPool,
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
    folds: Vec<Box<dyn Fold>>,
    tables: &[&'static str],
    deferred: &mut Vec<(String, String)>,
    upto: Option<Position>,
    limit: usize,
) -> Result<(Position, u64, Vec<String>), StoreError> {
    let by = store.bystanders();
    let mut loaders = Loaders {
        pool,
        by: by.clone(),
        started: Vec::new(),
    };
    // Each page is decoded once, on a thread of its own, and handed to every fold, each on a
    // thread of its own that takes pages at its own pace; their rows come back through one
    // queue and go to the tables' loaders.
    let mut reader = Decoder {
        limit,
        streams: Some(HashSet::new()),
        full: false,
    };
    let (rows, mut from_folds) = mpsc::channel::<Step>(QUEUE * folds.len());
    let complete = Arc::new(AtomicBool::new(false));
    let mut inputs = Vec::with_capacity(folds.len());
    let mut threads = Vec::with_capacity(folds.len());
    for f in folds {
        let (input, pages) = mpsc::channel::<Page>(QUEUE);
        let (rows, complete) = (rows.clone(), complete.clone());
        threads.push(tokio::task::spawn_blocking(move || {
            run_fold(f, pages, rows, &complete)
        }));
        inputs.push(input);
    }
    drop(rows);
    let produce = async {
        // Owned here: when this ends (the end of the log, or a failure), the inputs close
        // and the folds finish.
        let inputs = inputs;
        let (mut at, mut folded) = (Position::START, 0u64);
        let mut raw = fetch(store, upto, at).await?;
        // The next page is read while this one is decoded.
        while let Some((batch, end)) = raw {
            let (page, next) = tokio::join!(reader.decode(batch, upto), fetch(store, upto, end));
            let page = page?;
            if page.is_empty() {
                // Every event of it lies past `upto`.
                break;
            }
            for input in &inputs {
                // A fold that stopped has failed: its thread tells why, below.
                if input.send(page.clone()).await.is_err() {
                    return Ok((at, folded));
                }
            }
            folded += page.len() as u64;
            at = page.last().map_or(at, |(e, _)| e.position);
            if reader.full {
                break;
            }
            raw = next?;
        }
        complete.store(true, Ordering::Release);
        Ok::<_, StoreError>((at, folded))
    };
    // Owns the queue, so that a failure here drops it and stops the folds' threads.
    let forward = async move {
        while let Some(step) = from_folds.recv().await {
            loaders.send(step).await?;
        }
        Ok::<_, StoreError>(loaders)
    };
    let ((at, folded), loaders) = async {
        let (produced, forwarded) = tokio::join!(produce, forward);
        Ok::<_, StoreError>((produced?, forwarded?))
    }
    .await?;
    let started = std::time::Instant::now();
    let full = reader.full;
    tracing::info!(events = folded, %at, full, "bulk pass: log folded, rows sent");
    let mut replays = Vec::with_capacity(threads.len());
    for thread in threads {
        replays.push(
            thread
                .await
                .map_err(|e| StoreError::Unavailable(format!("a bulk fold failed: {e}")))??,
        );
    }
    // Every table loaded commits and builds its indexes, all at once; the lanes count only
    // the builds the loaders run (a table no step wrote keeps its indexes for later).
    let mut handed = Vec::with_capacity(loaders.started.len());
    for l in loaders.started {
        let indexes: Vec<String> = if full {
            Vec::new()
        } else {
            let (mine, rest) = std::mem::take(deferred)
                .into_iter()
                .partition(|(t, _)| *t == l.table);
            *deferred = rest;
            mine.into_iter().map(|(_, d)| d).collect()
        };
        handed.push((l, indexes));
    }
    let lanes = Arc::new(Lanes::for_builds(
        handed
            .iter()
            .flat_map(|(_, i)| i.iter().map(String::as_str)),
    ));
    let committing: Vec<_> = handed
        .into_iter()
        .map(|(l, indexes)| (l.table.clone(), l.commit(indexes, lanes.clone())))
        .collect();
    let loaded: Vec<String> = committing.iter().map(|(t, _)| t.clone()).collect();
    let analyzed: Vec<String> =
        futures::future::try_join_all(committing.into_iter().map(|(_, c)| c))
            .await?
            .into_iter()
            .zip(&loaded)
            .filter(|(done, _)| *done)
            .map(|(_, t)| t.clone())
            .collect();
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        "bulk pass: folded state loaded and indexed"
    );
    // The tables no step wrote, the streams left out, and every checkpoint, in one
    // transaction.
    let mut conn = PgConnection::connect_with(&crate::writer_options(pool))
        .await
        .map_err(unavailable)?;
    let mut tx = Standing::begin(&mut conn, by.as_ref()).await?;
    for t in tables.iter().filter(|t| !loaded.iter().any(|l| l == *t)) {
        tx.execute(format!("TRUNCATE {}", crate::rebuild::ident(t)).as_str())
            .await
            .map_err(unavailable)?;
    }
    for (p, replay) in projections.iter().zip(replays) {
        for id in replay {
            let events: Vec<StoredEvent> = store
                .read_stream(id, 0)
                .await?
                .into_iter()
                .filter(|e| e.position <= at)
                .collect();
            let mut conn = Conn::Postgres(&mut tx);
            // One stream's events, after no checkpoint.
            if !p.apply_batch(&mut conn, None, &events).await? {
                for e in &events {
                    p.apply(&mut conn, None, e).await?;
                }
            }
        }
        let (to_tx, to_seq) = tx_i64(at)?;
        Conn::Postgres(&mut tx)
            .execute(
                "UPDATE projection_checkpoints SET position_tx = ?, position_seq = ?, \
                 updated_at = ? WHERE name = ?",
                &[
                    Bind::I64(to_tx),
                    Bind::I64(to_seq),
                    Bind::I64(micros(chrono::Utc::now())),
                    Bind::Text(p.name().to_owned()),
                ],
            )
            .await?;
    }
    tx.commit().await?;
    let _ = conn.close().await;
    Ok((at, folded, analyzed))
}

#[cfg(test)]
mod tests {
    use super::{is_gin, table_of, target_of, Lanes};

    /// Definitions as `pg_get_indexdef` gives them (see `rebuild::defer_indexes`).
    const GIN: &str = "CREATE INDEX ticket_search_staff ON s.ticket_search USING gin \
        ((((head || public_comments) || private_comments))) WITH (fastupdate='on'); \
        ALTER INDEX s.ticket_search_staff ALTER COLUMN 1 SET STATISTICS 1000";
    const BTREE: &str = "CREATE INDEX tickets_org ON s.tickets USING btree (org)";

    #[test]
    fn a_gin_build_leaves_the_b_tree_builds_one_lane() {
        assert!(is_gin(GIN));
        assert!(!is_gin(BTREE));
        assert_eq!(crate::rebuild::build_memory(GIN), "32MB");
        assert_eq!(crate::rebuild::build_memory(BTREE), "256MB");
        assert_eq!(Lanes::for_builds([BTREE, GIN]).btree.available_permits(), 1);
        assert_eq!(
            Lanes::for_builds([BTREE, BTREE]).btree.available_permits(),
            2
        );
        assert_eq!(Lanes::for_builds([]).btree.available_permits(), 2);
        let lanes = Lanes::for_builds([BTREE, GIN, GIN]);
        lanes.gin_done();
        assert_eq!(lanes.btree.available_permits(), 1, "a GIN build still runs");
        lanes.gin_done();
        assert_eq!(
            lanes.btree.available_permits(),
            2,
            "every GIN build is done"
        );
    }

    #[test]
    fn a_step_names_its_table_by_its_insert() {
        assert_eq!(
            table_of("INSERT INTO ticket_feed (ticket_id, version)").expect("table"),
            "ticket_feed"
        );
        assert_eq!(table_of("INSERT INTO t").expect("table"), "t");
        assert_eq!(
            target_of("INSERT INTO t (a, b)").expect("target"),
            "t (a, b)"
        );
        assert!(table_of("SELECT 1").is_err());
        assert!(table_of("INSERT INTO ").is_err());
    }
}
