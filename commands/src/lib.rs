//! Command handling for ticketd: the event-store port and its SQLite and PostgreSQL adapters,
//! and the handler that loads a ticket, runs the domain's `decide`, and appends the result at
//! the expected version.

pub mod error;
pub mod handler;
pub mod import;
pub mod packed;
pub mod pgcopy;
pub mod postgres;
pub mod sqlite;
pub mod store;
pub mod verify;

pub use error::CommandError;
pub use handler::{CommandHandler, Idempotency, Loaded, Options, Outcome};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

pub use store::{
    log_reaches, AppendRequest, Appended, BadPosition, Database, EventBatch, EventRef, EventStore,
    IdempotencyHit, IdempotencyRecord, NewEvent, Position, StoreError, StoreResult, StoredEvent,
    BATCH_BYTES, PAGE_BYTES,
};
