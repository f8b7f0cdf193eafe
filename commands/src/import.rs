//! `ticketd import`: writes exported events verbatim into an empty store — the same event ids,
//! versions, timestamps, bytes and hashes, in the exported log order — in one transaction, so
//! an import either lands whole or not at all.
//!
//! Positions are the store's own and are not reproduced (PostgreSQL's come from transaction
//! ids); the log *order* is, because rows are inserted in order inside one transaction, which
//! gives them one `tx_id` and increasing `seq` (SQLite: increasing row ids). Stream heads and
//! the ticket-number counter are set from the imported events, so the service carries on
//! where the exported one stopped.
//!
//! On PostgreSQL the events go in by one binary `COPY` (a writer task owns the transaction
//! and streams the rows to the server while the caller parses and verifies the next ones),
//! and the stream heads by a second one, from the heads the caller's verifier kept, rather
//! than a scan and sort of the whole table.
//!
//! Nothing here checks hash chains: callers run [`crate::verify::Verifier`] over the events
//! they push and call [`Importer::rollback`] on any finding.

use sqlx::{Postgres, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use ticketd_domain::{Event, HASH_LEN};

use crate::pgcopy::{copy_in_header, copy_in_row, copy_in_trailer, IMPORT_COLUMNS};
use crate::postgres::PostgresStore;
use crate::sqlite::{unavailable, SqliteStore};
use crate::store::{StoreError, StoreResult, StoredEvent};

/// What an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub events: u64,
    /// The largest ticket number among the imported `ticket.opened` events.
    pub max_ticket_number: u64,
}

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(PgWriter),
}

/// The PostgreSQL side of an import: a task that owns the transaction and its `COPY`.
struct PgWriter {
    chunks: mpsc::Sender<Chunk>,
    task: JoinHandle<StoreResult<()>>,
}

/// What the writer task is sent, in this order: event rows, then head rows, then the end.
enum Chunk {
    Events(Vec<u8>),
    Heads(Vec<u8>),
    Commit {
        ticket_number: i64,
        done: oneshot::Sender<StoreResult<()>>,
    },
}

/// Chunks (of a batch of rows each) queued for the writer task.
const QUEUED: usize = 4;
/// Head rows per chunk.
const HEADS_CHUNK: usize = 10_000;

/// An import in progress: one open transaction on an empty store.
pub struct Importer {
    tx: Tx,
    imported: Imported,
}

fn pg(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The store already holds events: the first one found is reported as a conflict with the
/// version 0 every imported stream expects.
fn not_empty(row: Option<(Uuid, i64)>) -> StoreResult<()> {
    match row {
        None => Ok(()),
        Some((stream_id, version)) => Err(StoreError::Conflict {
            stream_id,
            expected: 0,
            actual: u64::try_from(version).unwrap_or(0),
        }),
    }
}

impl Importer {
    /// Begins an import into `store`, which must hold no events.
    pub async fn sqlite(store: &SqliteStore) -> StoreResult<Importer> {
        let mut tx = store.pool().begin().await.map_err(unavailable)?;
        let row: Option<(Uuid, i64)> =
            sqlx::query_as("SELECT stream_id, version FROM events LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        not_empty(row)?;
        Ok(Importer {
            tx: Tx::Sqlite(tx),
            imported: Imported::default(),
        })
    }

    /// Begins an import into `store`, which must hold no events. Appends wait until it ends.
    pub async fn postgres(store: &PostgresStore) -> StoreResult<Importer> {
        let mut tx = store.pool().begin().await.map_err(pg)?;
        sqlx::query("LOCK TABLE events, streams IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(pg)?;
        let row: Option<(Uuid, i64)> =
            sqlx::query_as("SELECT stream_id, version FROM events LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg)?;
        not_empty(row)?;
        let (chunks, queue) = mpsc::channel(QUEUED);
        Ok(Importer {
            tx: Tx::Postgres(PgWriter {
                chunks,
                task: tokio::spawn(write_postgres(tx, queue)),
            }),
            imported: Imported::default(),
        })
    }

    /// Writes `events` after those pushed before, in this order.
    pub async fn push(&mut self, events: &[StoredEvent]) -> StoreResult<()> {
        for e in events {
            if e.event_type == "ticket.opened" {
                if let Ok(Event::Opened(o)) =
                    Event::decode(&e.event_type, e.schema_version, &e.payload)
                {
                    self.imported.max_ticket_number = self.imported.max_ticket_number.max(o.number);
                }
            }
        }
        if events.iter().any(|e| i64::try_from(e.version).is_err()) {
            return Err(StoreError::Corrupt("a version is beyond 2^63".into()));
        }
        match &mut self.tx {
            Tx::Sqlite(tx) => {
                for e in events {
                    let insert = sqlx::query(
                        "INSERT INTO events (stream_id, version, event_id, event_type, \
                         schema_version, recorded_at, metadata, payload, prev_hash, hash) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    );
                    crate::sqlite::bind_event(insert, e)
                        .execute(&mut **tx)
                        .await
                        .map_err(unavailable)?;
                }
            }
            Tx::Postgres(writer) => {
                let mut rows = Vec::with_capacity(events.len() * 600);
                for e in events {
                    copy_in_row(e, &mut rows)?;
                }
                writer.send(Chunk::Events(rows)).await?;
            }
        }
        self.imported.events += events.len() as u64;
        Ok(())
    }

    /// Sets the stream heads and the ticket-number counter, and commits. `heads` are each
    /// stream's last version and hash, as the caller's verifier found them (SQLite derives
    /// its heads from the events and ignores them).
    pub async fn commit(
        self,
        heads: impl Iterator<Item = (Uuid, u64, [u8; HASH_LEN])>,
    ) -> StoreResult<Imported> {
        let imported = self.imported;
        let number = i64::try_from(imported.max_ticket_number)
            .map_err(|_| StoreError::Corrupt("a ticket number is beyond 2^63".into()))?;
        match self.tx {
            Tx::Sqlite(mut tx) => {
                // SQLite keeps no heads table: a stream's head is its highest version.
                sqlx::query(
                    "UPDATE counters SET value = max(value, ?) WHERE name = 'ticket_number'",
                )
                .bind(number)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                tx.commit().await.map_err(unavailable)?;
            }
            Tx::Postgres(mut writer) => {
                let mut rows = Vec::with_capacity(HEADS_CHUNK * 70);
                for (stream, version, hash) in heads {
                    let version = i64::try_from(version)
                        .map_err(|_| StoreError::Corrupt("a version is beyond 2^63".into()))?;
                    rows.extend_from_slice(&3i16.to_be_bytes());
                    for field in [stream.as_bytes().as_slice(), &version.to_be_bytes(), &hash] {
                        rows.extend_from_slice(&(field.len() as i32).to_be_bytes());
                        rows.extend_from_slice(field);
                    }
                    if rows.len() >= HEADS_CHUNK * 70 {
                        writer.send(Chunk::Heads(std::mem::take(&mut rows))).await?;
                    }
                }
                writer.send(Chunk::Heads(rows)).await?;
                let (done, answer) = oneshot::channel();
                writer
                    .send(Chunk::Commit {
                        ticket_number: number,
                        done,
                    })
                    .await?;
                let committed = answer.await;
                writer.join().await?;
                committed
                    .map_err(|_| StoreError::Unavailable("the import writer ended".into()))??;
            }
        }
        Ok(imported)
    }

    /// Abandons the import: nothing of it stays.
    pub async fn rollback(self) -> StoreResult<()> {
        match self.tx {
            Tx::Sqlite(tx) => tx.rollback().await.map_err(unavailable),
            Tx::Postgres(writer) => {
                // Without a commit the task aborts the COPY and rolls back. Its own failure,
                // if any, is what led here and already reported.
                drop(writer.chunks);
                let _ = writer.task.await;
                Ok(())
            }
        }
    }
}

impl PgWriter {
    /// Queues `chunk`; if the task has stopped, its error.
    async fn send(&mut self, chunk: Chunk) -> StoreResult<()> {
        if self.chunks.send(chunk).await.is_ok() {
            return Ok(());
        }
        self.join().await?;
        Err(StoreError::Unavailable("the import writer stopped".into()))
    }

    /// Waits for the task to end; its error, if it failed.
    async fn join(&mut self) -> StoreResult<()> {
        (&mut self.task)
            .await
            .map_err(|e| StoreError::Unavailable(format!("the import writer failed: {e}")))?
    }
}

/// The writer task: streams event rows into `events`, then head rows into `streams`, then
/// sets the ticket-number counter and commits. If the queue closes before a commit, it aborts
/// the `COPY` and rolls back; on any error it stops (the transaction rolls back as it drops).
async fn write_postgres(
    mut tx: Transaction<'static, Postgres>,
    mut queue: mpsc::Receiver<Chunk>,
) -> StoreResult<()> {
    let mut data = Vec::new();
    copy_in_header(&mut data);
    let sql = format!("COPY events ({IMPORT_COLUMNS}) FROM STDIN (FORMAT binary)");
    let mut copy = tx.copy_in_raw(&sql).await.map_err(pg)?;
    copy.send(data.as_slice()).await.map_err(pg)?;
    let mut next = queue.recv().await;
    while let Some(Chunk::Events(rows)) = next {
        copy.send(rows).await.map_err(pg)?;
        next = queue.recv().await;
    }
    if next.is_none() {
        copy.abort("import abandoned").await.map_err(pg)?;
        return tx.rollback().await.map_err(pg);
    }
    data.clear();
    copy_in_trailer(&mut data);
    copy.send(data.as_slice()).await.map_err(pg)?;
    copy.finish().await.map_err(pg)?;

    data.clear();
    copy_in_header(&mut data);
    let mut copy = tx
        .copy_in_raw("COPY streams (stream_id, version, last_hash) FROM STDIN (FORMAT binary)")
        .await
        .map_err(pg)?;
    copy.send(data.as_slice()).await.map_err(pg)?;
    while let Some(Chunk::Heads(rows)) = next {
        copy.send(rows).await.map_err(pg)?;
        next = queue.recv().await;
    }
    let Some(Chunk::Commit {
        ticket_number,
        done,
    }) = next
    else {
        copy.abort("import abandoned").await.map_err(pg)?;
        return tx.rollback().await.map_err(pg);
    };
    data.clear();
    copy_in_trailer(&mut data);
    copy.send(data.as_slice()).await.map_err(pg)?;
    let result = match copy.finish().await {
        Ok(_) => set_number_and_commit(tx, ticket_number).await,
        Err(e) => Err(e),
    };
    let result = result.map_err(pg);
    let _ = done.send(result);
    Ok(())
}

async fn set_number_and_commit(
    mut tx: Transaction<'static, Postgres>,
    ticket_number: i64,
) -> Result<(), sqlx::Error> {
    if ticket_number > 0 {
        sqlx::query("SELECT setval('ticket_numbers', $1)")
            .bind(ticket_number)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
