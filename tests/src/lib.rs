//! Shared test support for ticketd's integration tests: fresh event stores (SQLite in a temp
//! dir; PostgreSQL in a schema of its own on the server named by `TEST_DATABASE_URL`), a macro
//! that runs one suite body against both backends, small builders for append requests, and a
//! store double that delegates to a real store behind hooks.
//!
//! Without `TEST_DATABASE_URL`, PostgreSQL tests print `skipped: TEST_DATABASE_URL not set` and
//! pass; CI always sets it.

pub mod history;
pub mod hooked;
pub mod http;

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;
use uuid::Uuid;

use ticketd_commands::{
    AppendRequest, Appended, Database, EventStore, IdempotencyRecord, NewEvent, Position,
    PostgresStore, SqliteStore, StoredEvent,
};
use ticketd_domain::{HASH_LEN, ZERO_HASH};
use ticketd_projections::sql::Bind;
use ticketd_projections::Pooled;

/// The variable naming the PostgreSQL server tests may use.
pub const DATABASE_ENV: &str = "TEST_DATABASE_URL";

/// A migrated SQLite store in a temp dir that lives as long as this value.
pub struct SqliteTestStore {
    pub store: Arc<SqliteStore>,
    pub url: String,
    pub dir: TempDir,
}

/// A fresh, migrated SQLite store.
pub async fn sqlite_store() -> SqliteTestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    // A missing subdirectory, to check that `open` creates it.
    let url = format!("sqlite://{}/data/ticketd.db", dir.path().display());
    let store = SqliteStore::open(&url).await.expect("open SQLite store");
    store.migrate().await.expect("migrate SQLite store");
    SqliteTestStore {
        store: Arc::new(store),
        url,
        dir,
    }
}

/// `TEST_DATABASE_URL`, or `None` after printing the skip line. Under CI (`CI` set) a missing
/// variable fails the test instead, so the PostgreSQL suites can never be skipped there.
pub fn database_url() -> Option<String> {
    match std::env::var(DATABASE_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{DATABASE_ENV} must be set in CI: the PostgreSQL suites must run"
            );
            eprintln!("skipped: {DATABASE_ENV} not set");
            None
        }
    }
}

/// A uniquely named, empty schema on the test server, dropped (with everything in it) when
/// this value is dropped.
pub struct PgTestSchema {
    pub name: String,
    /// Options for connections whose `search_path` is this schema.
    pub options: PgConnectOptions,
    server: PgConnectOptions,
}

impl PgTestSchema {
    /// Creates the schema, or returns `None` (after printing the skip line) without a server.
    pub async fn create() -> Option<PgTestSchema> {
        let url = database_url()?;
        let server = PgConnectOptions::from_str(&url).expect("TEST_DATABASE_URL parses");
        let name = format!("ticketd_test_{}", Uuid::new_v4().simple());
        let mut conn = server
            .connect()
            .await
            .expect("connect to TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        let _ = conn.close().await;
        let options = server.clone().options([("search_path", name.as_str())]);
        Some(PgTestSchema {
            name,
            options,
            server,
        })
    }
}

impl PgTestSchema {
    /// A database URL whose connections use this schema, as a `ticketd` process is given it.
    pub fn url(&self) -> String {
        let base = database_url().expect("a schema was made, so the URL is set");
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }
}

impl Drop for PgTestSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, so the async cleanup gets a thread of its own.
        let server = self.server.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let mut conn = server.connect().await?;
                sqlx::query(&sql).execute(&mut conn).await?;
                conn.close().await
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("warning: could not drop test schema: {e}");
        }
    }
}

/// A connection (of `options`) in a transaction left open that has run `statement` (a read
/// of a table, as an analytics job's long read holds it; an operator's `LOCK TABLE`), and the
/// connection's server pid. `ROLLBACK` on it lets go.
pub async fn a_transaction_holding(
    options: &PgConnectOptions,
    statement: &str,
) -> (sqlx::PgConnection, i32) {
    let mut conn = sqlx::PgConnection::connect_with(options)
        .await
        .expect("a connection");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pid");
    sqlx::query(statement)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    (conn, pid)
}

/// [`a_transaction_holding`] a read of `table`.
pub async fn a_transaction_reading(
    options: &PgConnectOptions,
    table: &str,
) -> (sqlx::PgConnection, i32) {
    a_transaction_holding(options, &format!("SELECT count(*) FROM {table}")).await
}

/// A migrated PostgreSQL store in its own schema, dropped with this value.
pub struct PostgresTestStore {
    // Declared first so the pool closes before the schema is dropped.
    pub store: Arc<PostgresStore>,
    pub schema: PgTestSchema,
}

/// A fresh, migrated PostgreSQL store, or `None` when `TEST_DATABASE_URL` is not set.
pub async fn postgres_store(max_connections: u32) -> Option<PostgresTestStore> {
    let schema = PgTestSchema::create().await?;
    let store = PostgresStore::connect_with(schema.options.clone(), max_connections)
        .await
        .expect("connect PostgreSQL store");
    store.migrate().await.expect("migrate PostgreSQL store");
    Some(PostgresTestStore {
        store: Arc::new(store),
        schema,
    })
}

impl PostgresTestStore {
    /// The same store as another `ticketd` process would open it: a pool (of
    /// `max_connections`) and a registry of bystanders of its own, on the same schema.
    pub async fn another_process(&self, max_connections: u32) -> PostgresStore {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.schema.options.clone())
            .await
            .expect("another pool");
        PostgresStore::from_pool(pool).expect("another store")
    }
}

/// Runs each named `async fn case(store: Arc<dyn EventStore>)` as two tests, in modules
/// `sqlite` and `postgres` (the latter skipped without `TEST_DATABASE_URL`).
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = $crate::sqlite_store().await;
                    super::$case(t.store.clone()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(t) = $crate::postgres_store(8).await {
                        super::$case(t.store.clone()).await;
                    }
                }
            )+
        }
    };
}

/// Plain SQL for `n` synthetic rows numbered `i` = 1…`n`, in the store's dialect: the `WITH`
/// prefix of an `INSERT … SELECT`, its `FROM` source, and an expression for a fresh ticket id.
/// Quick enough for the million-row fills that test plans and figures.
pub fn numbered_rows(db: &Database, n: i64) -> (String, String, &'static str) {
    match db {
        Database::Sqlite(_) => (
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
            ),
            "s".to_owned(),
            "randomblob(16)",
        ),
        Database::Postgres(_) => (
            String::new(),
            format!("generate_series(CAST(1 AS bigint), {n}) AS s(i)"),
            "gen_random_uuid()",
        ),
    }
}

/// A time with a non-zero microsecond part, so that lost precision shows.
pub fn micros_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_700_000_000_000_000 + micros).expect("in range")
}

/// An event with a fresh id and distinctive bytes.
pub fn new_event(event_type: &str, n: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1 + n % 3,
        recorded_at: micros_time(i64::from(n) * 1_000_003),
        metadata: format!("meta-{n}").into_bytes(),
        // Every byte value, including NUL, must survive.
        payload: (0..=255u8).chain(n.to_be_bytes()).collect(),
    }
}

/// `n` new events for one append.
pub fn new_events(n: u32) -> Vec<NewEvent> {
    (0..n).map(|i| new_event("ticket.test", i)).collect()
}

/// An append of `events` at `expected_version` after `prev_hash`, with no idempotency record.
pub fn request(
    stream_id: Uuid,
    expected_version: u64,
    prev_hash: [u8; HASH_LEN],
    events: Vec<NewEvent>,
) -> AppendRequest {
    AppendRequest {
        stream_id,
        expected_version,
        prev_hash,
        events,
        idempotency: None,
    }
}

/// An idempotency record with a distinctive fingerprint and response.
pub fn idempotency_record(user: &str, key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        user: user.to_owned(),
        key: key.to_owned(),
        fingerprint: format!("fp:{user}:{key}").into_bytes(),
        response: format!("{{\"answer\":\"{key}\"}}").into_bytes(),
    }
}

/// The head (version, last hash) after an append.
pub fn head(appended: &Appended) -> (u64, [u8; HASH_LEN]) {
    (
        appended.version,
        appended.events.last().map_or(ZERO_HASH, |e| e.hash),
    )
}

/// Appends `n` events to a new stream and returns its id and the result.
pub async fn new_stream(store: &dyn EventStore, n: u32) -> (Uuid, Appended) {
    let stream = Uuid::now_v7();
    let appended = store
        .append(request(stream, 0, ZERO_HASH, new_events(n)))
        .await
        .expect("append to a new stream");
    (stream, appended)
}

/// Pages through the whole log, `page` events at a time.
pub async fn read_everything(store: &dyn EventStore, page: usize) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store.read_all(after, page).await.expect("read_all");
        let Some(last) = batch.last() else { break };
        after = last.position;
        all.extend(batch);
    }
    all
}

/// The whole log, once it shows every event up to `position`. On PostgreSQL an append shows in
/// `read_all` only after every older transaction on the server has ended (usually within
/// milliseconds), so tests wait for it rather than assume it.
pub async fn read_until(store: &dyn EventStore, position: Position) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let all = read_everything(store, 1000).await;
        if all.last().is_some_and(|e| e.position >= position) {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "position {position} not visible after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits for ticks of `ticks` until the log shows `position`, and returns the log. Fails after
/// 5 s. A tick may be for something else (other processes' appends tick too), so each one is
/// followed by a read, as real subscribers do.
pub async fn tick_until_visible(
    store: &dyn EventStore,
    ticks: &mut tokio::sync::watch::Receiver<u64>,
    position: Position,
) -> Vec<StoredEvent> {
    let wait = async {
        loop {
            ticks.changed().await.expect("store alive");
            let log = read_everything(store, 1000).await;
            if log.last().is_some_and(|e| e.position >= position) {
                return log;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no tick made position {position} visible within 5 s"))
}

/// Ticket `id`'s read-model row positions as `tx-seq`: its `tickets` row's and, on
/// PostgreSQL, its `ticket_search` row's.
pub async fn row_positions(db: &Database, id: Uuid) -> Vec<String> {
    let mut sql = "SELECT position_tx || '-' || position_seq FROM tickets WHERE id = ?".to_owned();
    let mut binds = vec![Bind::Uuid(id)];
    if matches!(db, Database::Postgres(_)) {
        sql.push_str(
            " UNION ALL SELECT position_tx || '-' || position_seq FROM ticket_search \
             WHERE ticket_id = ?",
        );
        binds.push(Bind::Uuid(id));
    }
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    pooled
        .conn()
        .fetch_column(&sql, &binds)
        .await
        .expect("positions")
}
