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
//! Each projection loads on a connection of its own, in one transaction that starts by
//! truncating its tables: `COPY … FREEZE` then writes its rows frozen and all-visible (no later
//! `VACUUM` needs to visit them, and index-only scans work at once), and a load that fails or
//! is started again never leaves rows twice. The checkpoints move last, in a transaction of
//! their own; until then the scratch stays at the start of the log.
//!
//! Memory grows with the tickets folded: past [`BULK_TICKETS`] the fold stops at the end of a
//! page, loads what it has, and the rebuild goes on from there by the batched path.

use std::sync::Arc;

use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use ticketd_commands::handler::decode;
use ticketd_commands::{EventStore, Position, StoreError, StoredEvent};
use ticketd_domain::Recorded;

use crate::sql::{unavailable, Bind, Conn, CopyRows};
use crate::{micros, tx_i64, Projection};

/// Most tickets a fold holds before it loads what it has (see the module's doc): about 1 kB
/// of memory each across the three projections with a thread of ten events.
pub const BULK_TICKETS: usize = 2_000_000;
/// Bytes of streamed rows gathered before they go to the database as one `COPY`.
const CHUNK_BYTES: usize = 4 << 20;
/// Loads queued per projection before the fold waits for its database.
const QUEUE: usize = 2;

/// Rows for the database, in the order given.
pub enum Step {
    /// `COPY` of `rows` into the table and columns of `insert` (`INSERT INTO t (a, b, …)`).
    Copy {
        insert: &'static str,
        rows: CopyRows,
    },
    /// Rows whose values need SQL (such as `to_tsvector`): `Conn::insert_rows_as` without a
    /// conflict clause.
    Insert {
        head: &'static str,
        one: &'static str,
        rows: Vec<Vec<Bind>>,
    },
}

/// What a fold leaves when the pass ends.
#[derive(Default)]
pub struct Finished {
    pub steps: Vec<Step>,
    /// Streams the fold left out, to apply by the projection's own batched path after the
    /// load (a ticket with more text than the one-statement search row can take).
    pub replay: Vec<Uuid>,
}

/// One projection's side of the pass.
pub trait Fold: Send {
    /// Folds one event, decoded once for every projection.
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError>;

    /// Rows already final, once at least `min` bytes of them have gathered.
    fn ready(&mut self, _min: usize) -> Vec<Step> {
        Vec::new()
    }

    /// Tickets (or other keys) held in memory.
    fn held(&self) -> usize;

    /// Everything else, at the end of the pass.
    fn finish(self: Box<Self>) -> Result<Finished, StoreError>;
}

enum Load {
    Step(Step),
    Commit,
}

/// One projection's loader: its own connection and transaction, fed steps in order.
struct Loader {
    queue: mpsc::Sender<Load>,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Loader {
    async fn start(pool: &PgPool, tables: Vec<&'static str>) -> Result<Loader, StoreError> {
        let conn = PgConnection::connect_with(&crate::writer_options(pool))
            .await
            .map_err(unavailable)?;
        let (queue, rx) = mpsc::channel(QUEUE);
        Ok(Loader {
            queue,
            task: tokio::spawn(load(conn, tables, rx)),
        })
    }

    /// Queues `load`; when the loader has stopped, its error.
    async fn send(&mut self, load: Load) -> Result<(), StoreError> {
        if self.queue.send(load).await.is_ok() {
            return Ok(());
        }
        match (&mut self.task).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(StoreError::Unavailable(
                "a bulk loader stopped early".into(),
            )),
            Err(e) => Err(StoreError::Unavailable(format!(
                "a bulk loader failed: {e}"
            ))),
        }
    }

    async fn commit(mut self) -> Result<(), StoreError> {
        self.send(Load::Commit).await?;
        match self.task.await {
            Ok(done) => done,
            Err(e) => Err(StoreError::Unavailable(format!(
                "a bulk loader failed: {e}"
            ))),
        }
    }
}

/// The loader's task: truncates `tables`, runs each step, commits on [`Load::Commit`] (and
/// only then: a pass that stops short rolls back).
async fn load(
    mut conn: PgConnection,
    tables: Vec<&'static str>,
    mut queue: mpsc::Receiver<Load>,
) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(unavailable)?;
    let names: Vec<String> = tables.iter().map(|t| crate::rebuild::ident(t)).collect();
    tx.execute(format!("TRUNCATE {}", names.join(", ")).as_str())
        .await
        .map_err(unavailable)?;
    while let Some(load) = queue.recv().await {
        match load {
            Load::Commit => return tx.commit().await.map_err(unavailable),
            Load::Step(Step::Copy { insert, mut rows }) => {
                let target = insert.strip_prefix("INSERT INTO ").ok_or_else(|| {
                    StoreError::Unavailable(format!("not an insert to copy into: {insert}"))
                })?;
                // FREEZE: the table was truncated in this transaction.
                let mut copy = tx
                    .copy_in_raw(&format!("COPY {target} FROM STDIN (FREEZE)"))
                    .await
                    .map_err(unavailable)?;
                copy.send(rows.take()).await.map_err(unavailable)?;
                copy.finish().await.map_err(unavailable)?;
            }
            Load::Step(Step::Insert { head, one, rows }) => {
                Conn::Postgres(&mut tx)
                    .insert_rows_as(head, one, rows, "")
                    .await?;
            }
        }
    }
    Err(StoreError::Unavailable(
        "the bulk pass stopped before its end".into(),
    ))
}

/// Folds the log from its start (up to `upto`, or as it is now) into the empty scratch tables
/// of `projections`, each of which has a [`Fold`]; `tables` are the tables of each that the
/// scratch holds. Returns where the pass stopped and the events it folded: the checkpoints
/// are there, and the rebuild goes on from there.
pub(crate) async fn pass(
    pool: &PgPool,
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
    tables: Vec<Vec<&'static str>>,
    upto: Option<Position>,
    limit: usize,
) -> Result<(Position, u64), StoreError> {
    let mut folds = Vec::with_capacity(projections.len());
    for p in projections {
        folds.push(p.bulk().ok_or_else(|| {
            StoreError::Unavailable(format!("projection {} has no bulk fold", p.name()))
        })?);
    }
    let mut loaders = Vec::with_capacity(projections.len());
    for t in tables {
        loaders.push(Loader::start(pool, t).await?);
    }
    let within = |mut page: Vec<StoredEvent>| {
        if let Some(u) = upto {
            page.retain(|e| e.position <= u);
        }
        page
    };
    let mut at = Position::START;
    let mut folded = 0u64;
    let mut full = false;
    let mut page = within(crate::rebuild::read_page(store, at).await?);
    while let Some(last) = page.last().map(|e| e.position) {
        // The next page is read while this one is folded and its rows sent.
        let more = upto.is_none_or(|u| last < u);
        let read_next = async {
            if more {
                crate::rebuild::read_page(store, last).await.map(within)
            } else {
                Ok(Vec::new())
            }
        };
        let fold = async {
            for event in &page {
                let recorded = decode(event)?;
                for f in folds.iter_mut() {
                    f.add(event, &recorded)?;
                }
                folded += 1;
                at = event.position;
                // Stopped at an event: the batched path goes on from the next one.
                if folds.iter().any(|f| f.held() >= limit) {
                    full = true;
                    break;
                }
            }
            for (f, l) in folds.iter_mut().zip(loaders.iter_mut()) {
                for step in f.ready(CHUNK_BYTES) {
                    l.send(Load::Step(step)).await?;
                }
            }
            Ok::<(), StoreError>(())
        };
        let (next, done) = tokio::join!(read_next, fold);
        done?;
        if full {
            break;
        }
        page = next?;
    }
    let mut replays = Vec::with_capacity(folds.len());
    for (f, l) in folds.into_iter().zip(loaders.iter_mut()) {
        let finished = f.finish()?;
        for step in finished.steps {
            l.send(Load::Step(step)).await?;
        }
        replays.push(finished.replay);
    }
    for l in loaders {
        l.commit().await?;
    }
    // The streams left out, and every checkpoint, in one transaction.
    let mut conn = PgConnection::connect_with(&crate::writer_options(pool))
        .await
        .map_err(unavailable)?;
    let mut tx = conn.begin().await.map_err(unavailable)?;
    for (p, replay) in projections.iter().zip(replays) {
        for id in replay {
            let events: Vec<StoredEvent> = store
                .read_stream(id, 0)
                .await?
                .into_iter()
                .filter(|e| e.position <= at)
                .collect();
            let mut conn = Conn::Postgres(&mut tx);
            if !p.apply_batch(&mut conn, &events).await? {
                for e in &events {
                    p.apply(&mut conn, e).await?;
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
    tx.commit().await.map_err(unavailable)?;
    let _ = conn.close().await;
    Ok((at, folded))
}
