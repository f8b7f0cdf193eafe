//! Migrations that move rows keep what they must: a store made before a migration is migrated
//! as `ticketd migrate` (or `serve`) would, and its rows are checked afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqlitePoolOptions;

use ticketd_commands::{CommandHandler, Database, EventStore, Options, Position, SqliteStore};
use ticketd_domain::{Actor, AddComment, CommandKind, OpenTicket, Role, SlaPolicy};
use ticketd_projections::sql::Bind;
use ticketd_projections::{all, rebuild, tickets, Pooled, Projector};
use ticketd_tests::{postgres_store, row_positions, sqlite_store, PgTestSchema};

/// The migrations in `migrations/<dir>` before `version`: what an older `ticketd` applied.
#[derive(Debug)]
struct Before(&'static str, i64);

impl MigrationSource<'static> for Before {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(self.0);
            let all = dir.resolve().await?;
            Ok(all.into_iter().filter(|m| m.version < self.1).collect())
        })
    }
}

/// Migration 0012 rebuilds `ticket_search` with each ticket's sort keys and log position: every
/// row keeps its text and gets exactly its `tickets` row's keys, the text index is back, and
/// the table keeps room for HOT updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_rows_get_their_tickets_keys() {
    let Some(schema) = PgTestSchema::create().await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(schema.options.clone())
        .await
        .expect("connect");
    Migrator::new(Before("postgres", 12))
        .await
        .expect("migrations up to 0011")
        .run(&pool)
        .await
        .expect("migrate to 0011");
    // Three tickets as the `tickets` projection left them, each with distinct keys.
    for (n, words) in [
        (1_i64, "printer jams"),
        (2, "laptop crashes"),
        (3, "router leaks"),
    ] {
        let id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO tickets (id, number, status, active, priority, priority_rank, channel, \
             requester, org, assignee, created_at, last_activity_at, due_sort, version, \
             position_tx, position_seq, state) \
             VALUES ($1, $2, 'open', 1, 'high', $2 + 10, 'web', 'alice', NULL, NULL, $2 * 100, \
             $2 * 1000, $2 * 10000, 2, $2 + 500, $2 + 7, '{}')",
        )
        .bind(id)
        .bind(n)
        .execute(&pool)
        .await
        .expect("a tickets row");
        sqlx::query(
            "INSERT INTO ticket_search (ticket_id, head, public_comments, private_comments) \
             VALUES ($1, strip(to_tsvector('simple', $2)), '', strip(to_tsvector('simple', $3)))",
        )
        .bind(id)
        .bind(words)
        .bind(format!("note {n}"))
        .execute(&pool)
        .await
        .expect("a ticket_search row");
    }
    ticketd_commands::postgres::migrate_pool(&pool)
        .await
        .expect("migrate from 0011 on");

    let keyed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ticket_search s JOIN tickets t ON t.id = s.ticket_id \
         WHERE (s.last_activity_at, s.created_at, s.due_sort, s.priority_rank, s.position_tx, \
         s.position_seq) = (t.last_activity_at, t.created_at, t.due_sort, t.priority_rank, \
         t.position_tx, t.position_seq)",
    )
    .fetch_one(&pool)
    .await
    .expect("compare keys");
    assert_eq!(keyed, 3, "every search row carries its ticket's keys");
    let texts: Vec<(i64, String)> = sqlx::query_as(
        "SELECT t.number, s.head::text || ' | ' || s.private_comments::text \
         FROM ticket_search s JOIN tickets t ON t.id = s.ticket_id ORDER BY t.number",
    )
    .fetch_all(&pool)
    .await
    .expect("texts");
    assert_eq!(
        texts,
        [
            (1, "'jams' 'printer' | '1' 'note'".to_owned()),
            (2, "'crashes' 'laptop' | '2' 'note'".to_owned()),
            (3, "'leaks' 'router' | '3' 'note'".to_owned()),
        ]
    );
    // The search condition as `ticketd` writes it, answered from the text index.
    let sql = "SELECT t.number FROM ticket_search s JOIN tickets t ON t.id = s.ticket_id \
               WHERE (s.head || s.public_comments || s.private_comments) \
               @@ 'laptop'::tsquery";
    let mut conn = pool.acquire().await.expect("connection");
    // Three rows: left alone, the planner would read them all rather than any index.
    for off in ["enable_seqscan", "enable_indexscan"] {
        sqlx::query(&format!("SET {off} = off"))
            .execute(&mut *conn)
            .await
            .expect("no plain scans");
    }
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    assert!(
        plan.iter().any(|l| l.contains("ticket_search_staff")),
        "{}",
        plan.join("\n")
    );
    let found: Vec<i64> = sqlx::query_scalar(sql)
        .fetch_all(&mut *conn)
        .await
        .expect("search");
    assert_eq!(found, [2]);
    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT reloptions::text[] FROM pg_class WHERE oid = 'ticket_search'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("table options");
    assert_eq!(options, Some(vec!["fillfactor=80".to_owned()]));
}

/// SQLite migration 0009 moves the read models out of the log's file into their own
/// (`migrations/sqlite-views`): the log keeps every event, the old read-model tables are gone
/// from it, and the projections build the new file from the start of the log, not from the
/// old checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_models_move_to_their_own_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("ticketd.db");
    let url = format!("sqlite://{}", log.display());
    // The log's file as `ticketd` 0008 left it, read models and all, with checkpoints past the
    // end of the log and a row no event made.
    {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&log)
                    .create_if_missing(true),
            )
            .await
            .expect("connect");
        Migrator::new(Before("sqlite", 9))
            .await
            .expect("migrations up to 0008")
            .run(&pool)
            .await
            .expect("migrate to 0008");
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, position_tx, position_seq, updated_at) \
             VALUES ('tickets', 0, 999, 0), ('feed', 0, 999, 0), ('analytics', 0, 999, 0)",
        )
        .execute(&pool)
        .await
        .expect("old checkpoints");
        pool.close().await;
    }
    // Events appended before the upgrade: the new store appends to the old file unmigrated.
    let store = Arc::new(SqliteStore::open(&url).await.expect("open"));
    let handler = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let mut last = None;
    for subject in ["printer jams", "laptop crashes", "router leaks"] {
        last = Some(open_ticket(&handler, subject).await.1);
    }
    let last = last.expect("three tickets");

    store.migrate().await.expect("migrate");

    let Some(Database::Sqlite(log_pool)) = store.log_database() else {
        panic!("a SQLite log");
    };
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&log_pool)
    .await
    .expect("the log's tables");
    assert_eq!(left, ["counters", "events", "idempotency", "log_identity"]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&log_pool)
        .await
        .expect("count events");
    assert_eq!(events, 3, "every event stays in the log");
    assert!(
        dir.path().join("ticketd.views.db").exists(),
        "the read models have a file of their own"
    );

    let p = Projector::start(store.clone()).expect("a projector");
    p.wait_for(tickets::NAME, last, Duration::from_secs(10))
        .await
        .expect("the tickets projection reaches the end of the log");
    let Database::Sqlite(views) = p.database() else {
        panic!("SQLite read models");
    };
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT json_extract(state, '$.subject') FROM tickets ORDER BY number")
            .fetch_all(views)
            .await
            .expect("the tickets read model");
    assert_eq!(subjects, ["printer jams", "laptop crashes", "router leaks"]);
    p.shutdown(Duration::from_secs(5)).await;
}

/// An agent opens a ticket for customer `cust`: its id and position.
async fn open_ticket(h: &CommandHandler, subject: &str) -> (uuid::Uuid, Position) {
    let opened = h
        .open(
            agent(),
            OpenTicket {
                subject: subject.into(),
                description: "d".into(),
                requester: Some("cust".into()),
                ..OpenTicket::default()
            },
            Options::default(),
        )
        .await
        .expect("open a ticket");
    (opened.ticket.id, opened.position)
}

fn agent() -> Actor {
    Actor {
        id: "agent-1".into(),
        name: None,
        role: Role::Agent,
        org: None,
        org_wide: false,
    }
}

/// Migrations postgres 0015 and sqlite-views 0002 (a read moves nothing): rows an older
/// `ticketd` left at the position of a read end up where the projection now puts them, so
/// `verify`'s comparison with a rebuild finds every projection equal again. `forget` drops the
/// migration's record, so that migrating again applies it as an upgrade would.
async fn rows_left_at_a_read_are_moved_back(store: Arc<dyn EventStore>, forget: &str) {
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let run = |id: uuid::Uuid, kind: CommandKind| {
        let h = &h;
        async move {
            h.execute(id, agent(), kind, Options::default())
                .await
                .expect("command")
                .position
        }
    };
    let comment = || {
        CommandKind::Comment(AddComment {
            comment_id: uuid::Uuid::now_v7(),
            body: "hello".into(),
            visibility: None,
        })
    };
    let (read_last, _) = open_ticket(&h, "read last").await;
    let commented = run(read_last, comment()).await;
    let read = run(read_last, CommandKind::MarkRead).await;
    let (other, _) = open_ticket(&h, "commented last").await;
    run(other, CommandKind::MarkRead).await;
    let last = run(other, comment()).await;
    let p = Projector::start(store.clone()).expect("a projector");
    p.wait_for(tickets::NAME, last, Duration::from_secs(10))
        .await
        .expect("projected");
    drop(p);
    let db = store.database().expect("read models");
    let at = |p: Position| format!("{}-{}", p.tx, p.seq);
    // As an older `ticketd` wrote them: at the read.
    let mut pooled = Pooled::acquire(&db).await.expect("connection");
    for table in ["tickets", "ticket_search"] {
        if table == "ticket_search" && matches!(db, Database::Sqlite(_)) {
            continue;
        }
        let key = if table == "tickets" {
            "id"
        } else {
            "ticket_id"
        };
        pooled
            .conn()
            .execute(
                &format!("UPDATE {table} SET position_tx = ?, position_seq = ? WHERE {key} = ?"),
                &[
                    Bind::I64(i64::try_from(read.tx).expect("tx")),
                    Bind::I64(i64::try_from(read.seq).expect("seq")),
                    Bind::Uuid(read_last),
                ],
            )
            .await
            .expect("an older row");
    }
    let found = rebuild::check_all(store.as_ref(), &all())
        .await
        .expect("compare");
    assert!(
        found.iter().any(|(p, _)| *p == tickets::NAME),
        "an older row differs from a rebuild: {found:?}"
    );
    pooled
        .conn()
        .execute(forget, &[])
        .await
        .expect("forget the migration");
    drop(pooled);

    match &db {
        Database::Postgres(pool) => ticketd_commands::postgres::migrate_pool(pool)
            .await
            .expect("migrate"),
        Database::Sqlite(pool) => ticketd_commands::sqlite::migrate_views_pool(pool)
            .await
            .expect("migrate"),
    }
    let p = Projector::start(store.clone()).expect("a projector");
    p.wait_for(tickets::NAME, last, Duration::from_secs(10))
        .await
        .expect("projected again");
    drop(p);
    let rows = row_positions(&db, read_last).await;
    assert!(
        !rows.is_empty() && rows.iter().all(|r| *r == at(commented)),
        "{rows:?} at {}",
        at(commented)
    );
    let found = rebuild::check_all(store.as_ref(), &all())
        .await
        .expect("compare");
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_left_at_a_read_are_moved_back() {
    if let Some(t) = postgres_store(4).await {
        rows_left_at_a_read_are_moved_back(
            t.store.clone(),
            "DELETE FROM _sqlx_migrations WHERE version = 15",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_left_at_a_read_are_moved_back() {
    let t = sqlite_store().await;
    rows_left_at_a_read_are_moved_back(
        t.store.clone(),
        "DELETE FROM _sqlx_migrations WHERE version = 2",
    )
    .await;
}
