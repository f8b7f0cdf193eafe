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
//! Nothing here checks hash chains: callers run [`crate::verify::Verifier`] over the events
//! they push and call [`Importer::rollback`] on any finding.

use sqlx::{Postgres, Sqlite, Transaction};
use uuid::Uuid;

use ticketd_domain::Event;

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
    Postgres(Transaction<'static, Postgres>),
}

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
        Ok(Importer {
            tx: Tx::Postgres(tx),
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
        let out_of_range = || StoreError::Corrupt("a version is beyond 2^63".into());
        let mut versions = Vec::with_capacity(events.len());
        for e in events {
            versions.push(i64::try_from(e.version).map_err(|_| out_of_range())?);
        }
        match &mut self.tx {
            Tx::Sqlite(tx) => {
                for (e, version) in events.iter().zip(versions) {
                    sqlx::query(
                        "INSERT INTO events (stream_id, version, event_id, event_type, \
                         schema_version, recorded_at, metadata, payload, prev_hash, hash) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(e.stream_id)
                    .bind(version)
                    .bind(e.event_id)
                    .bind(e.event_type.as_str())
                    .bind(i64::from(e.schema_version))
                    .bind(e.recorded_at.timestamp_micros())
                    .bind(e.metadata.as_slice())
                    .bind(e.payload.as_slice())
                    .bind(e.prev_hash.as_slice())
                    .bind(e.hash.as_slice())
                    .execute(&mut **tx)
                    .await
                    .map_err(unavailable)?;
                }
            }
            Tx::Postgres(tx) => {
                // One statement per batch; `ORDER BY ord` makes `seq` follow the given order.
                sqlx::query(
                    "INSERT INTO events (stream_id, version, event_id, event_type, \
                     schema_version, recorded_at, metadata, payload, prev_hash, hash) \
                     SELECT s, v, i, t, sv, r, m, p, ph, h FROM UNNEST($1::uuid[], $2::int8[], \
                     $3::uuid[], $4::text[], $5::int8[], $6::timestamptz[], $7::bytea[], \
                     $8::bytea[], $9::bytea[], $10::bytea[]) WITH ORDINALITY \
                     AS x(s, v, i, t, sv, r, m, p, ph, h, ord) ORDER BY ord",
                )
                .bind(events.iter().map(|e| e.stream_id).collect::<Vec<_>>())
                .bind(versions)
                .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.event_type.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    events
                        .iter()
                        .map(|e| i64::from(e.schema_version))
                        .collect::<Vec<_>>(),
                )
                .bind(events.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.metadata.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.prev_hash.to_vec())
                        .collect::<Vec<_>>(),
                )
                .bind(events.iter().map(|e| e.hash.to_vec()).collect::<Vec<_>>())
                .execute(&mut **tx)
                .await
                .map_err(pg)?;
            }
        }
        self.imported.events += events.len() as u64;
        Ok(())
    }

    /// Sets the stream heads and the ticket-number counter, and commits.
    pub async fn commit(self) -> StoreResult<Imported> {
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
            Tx::Postgres(mut tx) => {
                sqlx::query(
                    "INSERT INTO streams (stream_id, version, last_hash) \
                     SELECT DISTINCT ON (stream_id) stream_id, version, hash FROM events \
                     ORDER BY stream_id, version DESC",
                )
                .execute(&mut *tx)
                .await
                .map_err(pg)?;
                if number > 0 {
                    sqlx::query("SELECT setval('ticket_numbers', $1)")
                        .bind(number)
                        .execute(&mut *tx)
                        .await
                        .map_err(pg)?;
                }
                tx.commit().await.map_err(pg)?;
            }
        }
        Ok(imported)
    }

    /// Abandons the import: nothing of it stays.
    pub async fn rollback(self) -> StoreResult<()> {
        match self.tx {
            Tx::Sqlite(tx) => tx.rollback().await.map_err(unavailable),
            Tx::Postgres(tx) => tx.rollback().await.map_err(pg),
        }
    }
}
