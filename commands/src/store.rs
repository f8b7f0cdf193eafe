//! The event-store port: what command handling and projections need from a store, and
//! nothing about how a particular database provides it.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_domain::{event_hash, HashInput, HASH_LEN};

/// A place in the whole log. Ordered by `(tx, seq)`: on PostgreSQL `tx` is the appending
/// transaction's id and `seq` the row's sequence number; on SQLite, where one writer commits in
/// order, `tx` is 0. Clients see it only as an opaque string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub tx: u64,
    pub seq: u64,
}

impl Position {
    /// Before the first event.
    pub const START: Position = Position { tx: 0, seq: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.tx, self.seq)
    }
}

/// A position string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a log position")]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, seq) = s.split_once('-').ok_or(BadPosition)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) || !digits(seq) {
            return Err(BadPosition);
        }
        Ok(Position {
            tx: tx.parse().map_err(|_| BadPosition)?,
            seq: seq.parse().map_err(|_| BadPosition)?,
        })
    }
}

/// An event to append; the store assigns version, position and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// Whole microseconds (stores keep microseconds; the hash covers them).
    pub recorded_at: DateTime<Utc>,
    pub metadata: Vec<u8>,
    pub payload: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub position: Position,
    pub stream_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Vec<u8>,
    pub payload: Vec<u8>,
    pub prev_hash: [u8; HASH_LEN],
    pub hash: [u8; HASH_LEN],
}

impl StoredEvent {
    /// SHA-256 over this event's canonical bytes and its `prev_hash` (CONTRACT §7,
    /// docs/AUDIT.md): what `hash` must be for the event to be intact.
    pub fn computed_hash(&self) -> [u8; HASH_LEN] {
        event_hash(&HashInput {
            prev_hash: &self.prev_hash,
            stream_id: self.stream_id,
            version: self.version,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            metadata: &self.metadata,
            payload: &self.payload,
        })
    }
}

/// A stored event borrowed from wherever its bytes are (a [`StoredEvent`], or a row of raw
/// COPY data), so that bulk readers can encode it without copying it first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    pub position: Position,
    pub stream_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub metadata: &'a [u8],
    pub payload: &'a [u8],
    pub prev_hash: &'a [u8; HASH_LEN],
    pub hash: &'a [u8; HASH_LEN],
}

/// A page of the log from [`EventStore::read_batch`]: `read_all`'s events, in a form a bulk
/// reader can encode in place.
#[derive(Debug, Clone)]
pub struct EventBatch(Batch);

#[derive(Debug, Clone)]
enum Batch {
    Events(Vec<StoredEvent>),
    Copy(crate::pgcopy::CopyRows),
}

impl EventBatch {
    pub fn len(&self) -> usize {
        match &self.0 {
            Batch::Events(events) => events.len(),
            Batch::Copy(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last event's position: where the next page starts.
    pub fn last_position(&self) -> Option<Position> {
        match &self.0 {
            Batch::Events(events) => events.last().map(|e| e.position),
            Batch::Copy(rows) => rows.last_position(),
        }
    }

    /// Event `i`; `Corrupt` if its row holds a value out of range (as `read_all` would say).
    pub fn get(&self, i: usize) -> StoreResult<EventRef<'_>> {
        match &self.0 {
            Batch::Events(events) => events
                .get(i)
                .map(EventRef::from)
                .ok_or_else(|| StoreError::Corrupt(format!("no event {i} in the batch"))),
            Batch::Copy(rows) => rows.get(i),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = StoreResult<EventRef<'_>>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl From<Vec<StoredEvent>> for EventBatch {
    fn from(events: Vec<StoredEvent>) -> Self {
        EventBatch(Batch::Events(events))
    }
}

impl From<crate::pgcopy::CopyRows> for EventBatch {
    fn from(rows: crate::pgcopy::CopyRows) -> Self {
        EventBatch(Batch::Copy(rows))
    }
}

impl EventRef<'_> {
    /// The event, owned.
    pub fn to_stored(&self) -> StoredEvent {
        StoredEvent {
            position: self.position,
            stream_id: self.stream_id,
            version: self.version,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            metadata: self.metadata.to_vec(),
            payload: self.payload.to_vec(),
            prev_hash: *self.prev_hash,
            hash: *self.hash,
        }
    }
}

impl<'a> From<&'a StoredEvent> for EventRef<'a> {
    fn from(e: &'a StoredEvent) -> Self {
        EventRef {
            position: e.position,
            stream_id: e.stream_id,
            version: e.version,
            event_id: e.event_id,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            metadata: &e.metadata,
            payload: &e.payload,
            prev_hash: &e.prev_hash,
            hash: &e.hash,
        }
    }
}

/// A command's answer kept under its idempotency key (CONTRACT §4), written in the same
/// transaction as the command's events.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub user: String,
    pub key: String,
    /// Digest of the request (method, path, body), to tell a repeat from a reuse of the key.
    pub fingerprint: Vec<u8>,
    /// Opaque to the store: what the API needs to answer again.
    pub response: Vec<u8>,
}

/// A stored idempotency record found by key.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyHit {
    pub fingerprint: Vec<u8>,
    pub response: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// Append `events` to `stream_id`, atomically, if its version is still `expected_version`
/// (0: the stream must not exist yet) and its last hash is `prev_hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub stream_id: Uuid,
    pub expected_version: u64,
    pub prev_hash: [u8; HASH_LEN],
    /// May be empty when only an idempotency record is to be kept (a no-op command).
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyRecord>,
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// The written events with their positions and hashes, in order.
    pub events: Vec<StoredEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the expected version (or hash); nothing was written.
    #[error("stream {stream_id} is at version {actual}, not {expected}")]
    Conflict {
        stream_id: Uuid,
        expected: u64,
        actual: u64,
    },
    /// Another request already holds this idempotency key; nothing was written.
    #[error("idempotency key already used")]
    IdempotencyKeyTaken,
    /// The database could not be reached or failed; nothing is known to be written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data violates an invariant (e.g. a hash that does not decode).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A store's database: that of its read models ([`EventStore::database`]) or of its log
/// ([`EventStore::log_database`]). On PostgreSQL both are one.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The event store. Implementations: SQLite (embedded default) and PostgreSQL.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends atomically: all of the request's events and its idempotency record, or nothing.
    async fn append(&self, request: AppendRequest) -> StoreResult<Appended>;

    /// A stream's events with version > `after_version`, in version order.
    async fn read_stream(
        &self,
        stream_id: Uuid,
        after_version: u64,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Up to `limit` events of the whole log after `after`, in log order, and about
    /// [`PAGE_BYTES`] (a short page is not the end of the log, an empty one is). Never skips
    /// an event that commits later: an event becomes visible here only once every event
    /// ordered before it is visible too.
    async fn read_all(&self, after: Position, limit: usize) -> StoreResult<Vec<StoredEvent>>;

    /// The events `read_all` returns, for bulk readers (export, the NDJSON stream, a rebuild)
    /// that encode each in place rather than keep it. PostgreSQL sends raw `COPY` rows for
    /// this. At most `limit` events and about [`BATCH_BYTES`]: a short page is not the end of
    /// the log, an empty one is.
    async fn read_batch(&self, after: Position, limit: usize) -> StoreResult<EventBatch> {
        self.read_batch_within(after, limit, BATCH_BYTES).await
    }

    /// [`EventStore::read_batch`] with its bound in bytes given: the page holds each event
    /// whose predecessors in it hold less than `max_bytes` of payload and metadata (so at
    /// least one). Each store bounds it in its SQL, so a page is never read whole first.
    async fn read_batch_within(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<EventBatch>;

    /// The idempotency record of `user`'s `key`, if written after `since`.
    async fn idempotency(
        &self,
        user: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyHit>>;

    /// Deletes idempotency records written before `before`; returns how many.
    async fn purge_idempotency(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// A new ticket number: unique, and larger than every number handed out before.
    async fn next_ticket_number(&self) -> StoreResult<u64>;

    /// Ticks after commits become visible to `read_all` (local appends, and on PostgreSQL other
    /// processes' appends too). Receivers should re-read rather than trust the value.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Stops the store's background work and closes its connections, for a clean exit. Call
    /// it once nothing else uses the store (the projections stopped first): it waits for
    /// connections lent out to come back, and requests made after it fail as unavailable.
    async fn close(&self) {}

    /// The database the read models live in, for projections; `None` for stores that have
    /// none (test wrappers), which then serve no queries. On PostgreSQL that of the log too;
    /// SQLite keeps them in a file of their own (see [`Self::log_database`]).
    fn database(&self) -> Option<Database> {
        None
    }

    /// The database the log itself is in, for readers of its tables in plain SQL (the lag a
    /// scrape reports, tests). SQLite keeps its read models apart: there, not [`Self::database`].
    fn log_database(&self) -> Option<Database> {
        self.database()
    }

    /// PostgreSQL: where this process registers its transactions that never append events
    /// (projection batches), so that log readers do not wait for them; `None` elsewhere.
    fn bystanders(&self) -> Option<crate::postgres::Bystanders> {
        None
    }
}

/// What one [`EventStore::read_batch`] page holds at most of its events' payloads and metadata
/// (past it the page ends after the event that crossed it). Events are small, but a ticket's
/// custom fields may fill most of a 1 MiB request: thousands of such events in a row made a
/// page of 5,000 as many GB, in the NDJSON stream (a few pages in flight) and in a rebuild.
pub const BATCH_BYTES: usize = 64 << 20;

/// [`BATCH_BYTES`] for [`EventStore::read_all`] pages, which their readers keep whole and
/// decode (a projection's batch, the audit JSON page, `verify`): far above what hundreds of
/// ordinary events hold, far below what hundreds of edits of large custom fields would.
pub const PAGE_BYTES: usize = 8 << 20;

/// Waits until `read_all` shows the log up to `position`, that is until some event ordered at
/// or after it is visible (a log reader only ever sees a prefix of the log), or until
/// `timeout` passes. Returns whether it got there. It checks again on every tick of
/// [`EventStore::subscribe`], and at least every [`RECHECK`] in case a tick came from
/// elsewhere before the subscription began.
pub async fn log_reaches(
    store: &dyn EventStore,
    position: Position,
    timeout: std::time::Duration,
) -> StoreResult<bool> {
    if position == Position::START {
        return Ok(true);
    }
    // Just before `position`, so that an event at `position` itself counts.
    let before = match position.seq.checked_sub(1) {
        Some(seq) => Position { seq, ..position },
        None => position,
    };
    let mut ticks = store.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        ticks.borrow_and_update();
        if !store.read_all(before, 1).await?.is_empty() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        let wake = deadline.min(tokio::time::Instant::now() + RECHECK);
        if let Ok(Err(_closed)) = tokio::time::timeout_at(wake, ticks.changed()).await {
            // A store shutting down ticks no more: only the periodic re-check is left.
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// How often [`log_reaches`] looks again without a tick.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Closes `pool` and every connection it holds. A connection given back (a finished query's,
/// or an aborted task's, PostgreSQL's listener's after its `UNLISTEN *`) returns to the pool by
/// a task of sqlx's own, which runs when it runs; one that comes back while `close` waits for
/// the last permits is left idle in the closed pool, still connected (sqlx 0.8 pops idle
/// connections only before each wait). So `close` again until the pool counts none: a second
/// `close` alone still left one connection about one run in ten
/// (`postgres_close_ends_every_connection`: the background NOTIFY's connection), and on a
/// busy machine SQLite's `-wal` file stayed after a command (`cli_close`).
pub async fn close_pool<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    pool.close().await;
    for _ in 0..100 {
        if pool.size() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        pool.close().await;
    }
    // Not silently: a connection still open here keeps what the close was for (SQLite's
    // `-wal` file, a PostgreSQL backend).
    tracing::warn!(
        open = pool.size(),
        "a pool still held connections a second after it was closed"
    );
}
