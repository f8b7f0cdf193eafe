//! Rebuilds, on both backends: read models kept incrementally — through random command
//! histories, with crashes injected inside batches (an event fails, the batch rolls back) and
//! between them (the runner is killed at an arbitrary point) — equal a fresh rebuild row for
//! row; and a blue/green rebuild switches over under live traffic without losing an event.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use ticketd_commands::{
    CommandHandler, Database, EventStore, Options, Position, StoreError, StoredEvent,
};
use ticketd_domain::{Actor, AddComment, CommandKind, Recorded, Role, SlaPolicy};
use ticketd_projections::bulk::{Fold, Sink, Step};
use ticketd_projections::rebuild::{check_all, rebuild, Scratch, SwitchWait, FOLLOW_ROUNDS};
use ticketd_projections::sql::Conn;
use ticketd_projections::{all, read_checkpoint, Projection, Projector};
use ticketd_tests::both_backends;
use ticketd_tests::history::{self, Rng};
use ticketd_tests::http::TestServer;

const WAIT: Duration = Duration::from_secs(30);

/// Inside `impl Projection` of a wrapper with an `inner` projection: what it passes through
/// as it is (its name, tables, and what it keeps in memory).
macro_rules! passed_through {
    () => {
        fn name(&self) -> &'static str {
            self.inner.name()
        }

        fn tables(&self) -> &'static [&'static str] {
            self.inner.tables()
        }

        fn forget(&self) {
            self.inner.forget();
        }
    };
}

/// A real projection that fails the first time it meets every `every`-th event: the batch
/// rolls back, the runner keeps what preceded the event, backs off and retries.
struct Crashy {
    inner: Arc<dyn Projection>,
    every: u64,
    failed: Mutex<HashSet<Position>>,
}

#[async_trait]
impl Projection for Crashy {
    passed_through!();

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        // Apply first, then fail: the failure must undo the event's writes too.
        self.inner.apply(conn, after, event).await?;
        if event.position.seq.is_multiple_of(self.every)
            && self
                .failed
                .lock()
                .expect("failed set")
                .insert(event.position)
        {
            return Err(StoreError::Unavailable("injected crash".into()));
        }
        Ok(())
    }
}

fn crashy(every: u64) -> Vec<Arc<dyn Projection>> {
    all()
        .into_iter()
        .map(|inner| {
            Arc::new(Crashy {
                inner,
                every,
                failed: Mutex::new(HashSet::new()),
            }) as Arc<dyn Projection>
        })
        .collect()
}

async fn wait_all(p: &Projector, at: Position) {
    for s in p.status() {
        p.wait_for(s.name, at, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}; {:?}", s.name, p.status()));
    }
}

/// Every projection, built in `scratch` up to its live checkpoint, equals the live one, and
/// that checkpoint is `at`.
async fn assert_scratch_equals_live(
    scratch: &Scratch,
    store: &Arc<dyn EventStore>,
    at: Position,
    context: &str,
) {
    let db = store.database().expect("database");
    for p in all() {
        let (found, compared_at) = scratch
            .compare(store.as_ref(), &db, &p)
            .await
            .expect("compare");
        assert!(found.is_empty(), "{context}, {}: {found:?}", p.name());
        assert_eq!(compared_at, at, "{context}, {}", p.name());
    }
}

async fn assert_equal_to_rebuild(store: &Arc<dyn EventStore>) {
    let findings = check_all(store.as_ref(), &all()).await.expect("compare");
    assert!(findings.is_empty(), "differs from a rebuild: {findings:?}");
}

async fn incremental_with_crashes_equals_rebuild(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let db = store.database().expect("database");
    for seed in [7u64, 1234] {
        let mut rng = Rng::new(seed);
        let mut last = Position::START;
        let mut projector = Projector::start_with(store.clone(), db.clone(), crashy(7 + seed % 5));
        for round in 0..8 {
            last = last.max(history::run(&h, &mut rng, 4, 40).await);
            // Kill the runners wherever they are (often mid-batch) and start over from the
            // checkpoints, as after a crash.
            if rng.below(2) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                drop(projector);
                projector = Projector::start_with(store.clone(), db.clone(), crashy(9 + round));
            }
        }
        wait_all(&projector, last).await;
        assert!(
            projector.status().iter().all(|s| s.errors > 0),
            "every projection met an injected crash: {:?}",
            projector.status()
        );
        drop(projector);
        assert_equal_to_rebuild(&store).await;
    }
}

/// A random history (`seed`) of `commands` on `tickets`, projected by every projection, whose
/// runners are then stopped; its handler and the read models' database.
async fn projected_history(
    store: &Arc<dyn EventStore>,
    seed: u64,
    tickets: usize,
    commands: usize,
) -> (CommandHandler, Database) {
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let db = store.database().expect("database");
    let last = history::run(&h, &mut Rng::new(seed), tickets, commands).await;
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    wait_all(&projector, last).await;
    drop(projector);
    (h, db)
}

/// A comparison must see a difference: a changed, a missing and an extra row.
async fn a_tampered_read_model_differs_from_its_rebuild(store: Arc<dyn EventStore>) {
    let (_, db) = projected_history(&store, 3, 5, 30).await;
    assert_equal_to_rebuild(&store).await;
    let mut pooled = ticketd_projections::Pooled::acquire(&db)
        .await
        .expect("conn");
    pooled
        .conn()
        .execute(
            "UPDATE tickets SET version = version + 100 WHERE number = 2",
            &[],
        )
        .await
        .expect("tamper");
    pooled
        .conn()
        .execute(
            "DELETE FROM ticket_feed WHERE version = 1 AND ticket_id = \
             (SELECT id FROM tickets WHERE number = 3)",
            &[],
        )
        .await
        .expect("tamper");
    drop(pooled);
    let findings = check_all(store.as_ref(), &all()).await.expect("compare");
    let named: Vec<_> = findings.iter().map(|(p, f)| format!("{p}: {f}")).collect();
    assert_eq!(findings.len(), 2, "{named:?}");
    assert!(named[0].starts_with("tickets: table tickets:"), "{named:?}");
    assert!(
        named[1].starts_with("feed: table ticket_feed:"),
        "{named:?}"
    );

    // A rebuild repairs it.
    rebuild(store.as_ref(), &all()).await.expect("rebuild");
    assert_equal_to_rebuild(&store).await;
}

/// Blue/green under traffic: commands keep coming while every projection is rebuilt; after
/// the switch the live runners follow on from the rebuilt position, and every query still
/// answers, with every command's effect.
async fn rebuild_while_serving(store: Arc<dyn EventStore>) {
    let s = TestServer::start(store.clone()).await;
    let agent = s.agent("agent-1");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            s.open(
                &s.customer("alice"),
                json!({"subject": format!("before {i}"), "description": "d"}),
            )
            .await,
        );
    }
    let writes = async {
        for (i, id) in ids.iter().cycle().take(60).enumerate() {
            let a = s
                .post(
                    &format!("/v1/tickets/{id}/comments"),
                    &agent,
                    json!({"body": format!("during {i}")}),
                )
                .await;
            assert_eq!(a.status, 201, "{}", a.body);
        }
    };
    // The rebuilt tables carry every index the migrations define (a PostgreSQL rebuild drops
    // the secondary ones for the load and creates them again), with the statistics targets
    // set on index columns and their storage parameters.
    let indexes = || async {
        match store.database() {
            Some(ticketd_commands::Database::Postgres(pool)) => sqlx::query_scalar::<_, String>(
                "SELECT indexdef || coalesce((SELECT ' statistics ' \
                     || string_agg(a.attstattarget::text, ',' ORDER BY a.attnum) \
                     FROM pg_attribute a WHERE a.attrelid = format('%I.%I', \
                     schemaname, indexname)::regclass AND a.attstattarget >= 0), '') \
                     FROM pg_indexes WHERE schemaname = current_schema() ORDER BY indexname",
            )
            .fetch_all(&pool)
            .await
            .expect("indexes"),
            _ => Vec::new(),
        }
    };
    // And the statistics targets set on table columns.
    let column_targets = || async {
        match store.database() {
            Some(ticketd_commands::Database::Postgres(pool)) => sqlx::query_scalar::<_, String>(
                "SELECT c.relname || '.' || a.attname || ' ' || a.attstattarget \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' \
                 AND a.attnum > 0 AND a.attstattarget >= 0 ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .expect("column statistics targets"),
            _ => Vec::new(),
        }
    };
    let before = indexes().await;
    let targets = column_targets().await;
    let every = all();
    let (rebuilt, ()) = tokio::join!(rebuild(store.as_ref(), &every), writes);
    let rebuilt = rebuilt.expect("rebuild");
    assert_eq!(rebuilt.projections, vec!["tickets", "feed", "analytics"]);
    assert_eq!(indexes().await, before, "indexes after the rebuild");
    assert_eq!(
        column_targets().await,
        targets,
        "column statistics targets after the rebuild"
    );
    if matches!(
        store.database(),
        Some(ticketd_commands::Database::Postgres(_))
    ) {
        assert!(
            before.iter().any(|d| d.contains("USING gin")),
            "the secondary indexes were read: {before:?}"
        );
        assert!(
            before.iter().any(|d| d.ends_with(" statistics 1000")),
            "the statistics targets were read: {before:?}"
        );
        assert!(
            before
                .iter()
                .any(|d| d.contains("gin_pending_list_limit='128'")),
            "the storage parameters were read (migration 0013): {before:?}"
        );
        assert!(
            targets.iter().any(|t| t == "ticket_search.head 0"),
            "the column statistics targets were read (migration 0014): {targets:?}"
        );
        // Analyzed, and all-visible (or vacuumed), before the switch: index-only scans (a
        // search ranks its matches from the primary key) need the visibility map. The bulk
        // path loads every table frozen and all-visible, and analyzes `ticket_search` as soon
        // as it is indexed; the switch vacuums and analyzes the others.
        if let Some(ticketd_commands::Database::Postgres(pool)) = store.database() {
            let found: Vec<(String, bool, bool, i32, i32)> = sqlx::query_as(
                "SELECT s.relname::text, s.last_vacuum IS NOT NULL, s.last_analyze IS NOT NULL, \
                 c.relallvisible, c.relpages FROM pg_stat_user_tables s \
                 JOIN pg_class c ON c.oid = s.relid \
                 WHERE s.schemaname = current_schema() ORDER BY s.relname",
            )
            .fetch_all(&pool)
            .await
            .expect("vacuum statistics");
            for table in [
                "ticket_search",
                "tickets",
                "ticket_feed",
                "analytics_events",
                "analytics_ticket_facts",
            ] {
                let ready = found.iter().any(|(t, vacuumed, analyzed, visible, pages)| {
                    t == table && *analyzed && (*vacuumed || (*pages > 0 && visible == pages))
                });
                assert!(ready, "{table} analyzed and all-visible: {found:?}");
            }
        }
    }
    assert!(rebuilt.events >= 20);
    let after = s
        .open(
            &agent,
            json!({"subject": "after", "description": "d", "requester": "alice"}),
        )
        .await;

    // Read-your-writes across the switch: `get` passes the last position seen.
    let page = s.get("/v1/tickets?limit=200", &agent).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["items"].as_array().expect("items").len(), 21);
    let feed = s.get(&format!("/v1/tickets/{}/feed", ids[0]), &agent).await;
    assert_eq!(feed.status, 200);
    // Opened, then three comments (60 spread over 20 tickets).
    assert_eq!(
        feed.body["items"].as_array().expect("items").len(),
        4,
        "{}",
        feed.body
    );
    let one = s.get(&format!("/v1/tickets/{after}"), &agent).await;
    assert_eq!(one.status, 200);
    let projector = s.projector.clone().expect("projector");
    wait_all(&projector, s.last_position()).await;
    assert_equal_to_rebuild(&store).await;

    // Nothing is left behind: no scratch schema or file.
    if let Some(ticketd_commands::Database::Postgres(pool)) = store.database() {
        // This store's own (named after its schema's oid): other tests rebuild beside it.
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_namespace, \
             (SELECT oid::text AS me FROM pg_namespace WHERE nspname = current_schema()) b \
             WHERE nspname LIKE 'ticketd\\_rebuild\\_' || me || '\\_%' \
             OR nspname LIKE 'ticketd\\_old\\_' || me || '\\_%'",
        )
        .fetch_one(&pool)
        .await
        .expect("schemas");
        assert_eq!(left, 0, "scratch schemas left behind");
    }
}

/// The scratch place is a full store layout, and comparing an untouched empty store passes.
async fn an_empty_store_equals_its_rebuild(store: Arc<dyn EventStore>) {
    let db = store.database().expect("database");
    let scratch = Scratch::create(&db).await.expect("scratch");
    assert_scratch_equals_live(&scratch, &store, Position::START, "empty").await;
    scratch.discard(&db).await;
}

/// On PostgreSQL a rebuild from the start folds the log in memory and loads its rows by COPY,
/// up to a bound on the tickets held; past it, the build goes on batch by batch from the event
/// it stopped at. Wherever that falls (after the first ticket, mid-thread, never), and with the
/// bulk path off, the rebuilt tables equal the incrementally kept ones. (SQLite always builds
/// batch by batch: the same assertions hold there.)
async fn a_bulk_pass_cut_short_goes_on_batch_by_batch(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let db = store.database().expect("database");
    let mut rng = Rng::new(99);
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    let last = history::run(&h, &mut rng, 4, 40).await;
    wait_all(&projector, last).await;
    drop(projector);
    for bound in [0, 1, 2, 3, usize::MAX] {
        let mut scratch = Scratch::create(&db).await.expect("scratch");
        scratch.set_bulk_tickets(bound);
        assert_scratch_equals_live(&scratch, &store, last, &format!("bound {bound}")).await;
        // The secondary indexes dropped for the load are back, whichever path built them.
        assert_eq!(
            index_names(scratch.database()).await,
            index_names(&db).await,
            "bound {bound}: indexes"
        );
        scratch.discard(&db).await;
    }
}

/// PostgreSQL: the indexes of `db`'s schema, by name (SQLite: none).
async fn index_names(db: &Database) -> Vec<String> {
    let Database::Postgres(pool) = db else {
        return Vec::new();
    };
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
         ORDER BY indexname",
    )
    .fetch_all(pool)
    .await
    .expect("index names")
}

/// A real projection whose bulk fold fails at its `after`-th event.
struct FailingBulk {
    inner: Arc<dyn Projection>,
    after: usize,
}

#[async_trait]
impl Projection for FailingBulk {
    passed_through!();

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        events: &[StoredEvent],
    ) -> Result<bool, StoreError> {
        self.inner.apply_batch(conn, after, events).await
    }

    fn bulk(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(FailAfter {
            inner: self.inner.bulk()?,
            left: self.after,
        }))
    }
}

struct FailAfter {
    inner: Box<dyn Fold>,
    left: usize,
}

impl Fold for FailAfter {
    fn add(&mut self, event: &StoredEvent, recorded: &Recorded) -> Result<(), StoreError> {
        if self.left == 0 {
            return Err(StoreError::Corrupt("injected fold failure".into()));
        }
        self.left -= 1;
        self.inner.add(event, recorded)
    }

    fn ready(&mut self, min: usize) -> Vec<Step> {
        self.inner.ready(min)
    }

    fn finish(self: Box<Self>, out: &mut Sink<'_>) -> Result<Vec<uuid::Uuid>, StoreError> {
        self.inner.finish(out)
    }
}

/// A bulk pass that fails returns the failure, leaves the scratch's checkpoints at the start,
/// and the next pass starts from a clean slate: rows a failed pass committed (the search rows
/// go in statement by statement) do not stay, since each table is truncated first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bulk_pass_that_failed_starts_again_cleanly() {
    let Some(t) = ticketd_tests::postgres_store(8).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let db = store.database().expect("database");
    let mut rng = Rng::new(5);
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    let last = history::run(&h, &mut rng, 4, 40).await;
    wait_all(&projector, last).await;
    drop(projector);

    let scratch = Scratch::create(&db).await.expect("scratch");
    let failing: Vec<Arc<dyn Projection>> = all()
        .into_iter()
        .map(|inner| Arc::new(FailingBulk { inner, after: 20 }) as Arc<dyn Projection>)
        .collect();
    let failed = scratch.build(store.as_ref(), &failing, None).await;
    assert!(
        matches!(&failed, Err(StoreError::Corrupt(m)) if m.contains("injected")),
        "{failed:?}"
    );
    for p in all() {
        assert_eq!(
            read_checkpoint(scratch.database(), p.name())
                .await
                .expect("checkpoint"),
            Position::START
        );
    }
    // What a failed pass may leave behind.
    let Database::Postgres(pool) = scratch.database() else {
        panic!("a PostgreSQL scratch");
    };
    sqlx::query(
        "INSERT INTO ticket_search (ticket_id, head, public_comments, private_comments) \
         VALUES ($1, '', '', '')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(pool)
    .await
    .expect("a leftover search row");
    sqlx::query(
        "INSERT INTO ticket_feed (ticket_id, version, kind, private, entry) \
         VALUES ($1, 1, 'opened', 0, '{}')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(pool)
    .await
    .expect("a leftover feed row");
    assert_scratch_equals_live(&scratch, &store, last, "after a failed pass").await;
    scratch.discard(&db).await;
}

/// A comment's worth of distinct words (about 19,000 characters), tagged so each comment's
/// words are its own.
fn long_body(tag: &str) -> String {
    let mut body = String::new();
    let mut i = 0;
    while body.len() < 19_000 {
        body.push_str(&format!("{tag}w{i} "));
        i += 1;
    }
    body
}

/// Live batches that add comments to tickets opened in earlier batches take a batched path on
/// PostgreSQL (one statement for all their text); they must leave the rows that one event at a
/// time leaves — what the rebuild does here, where each ticket's events fall in one batch with
/// its opening — including a thread that runs past PostgreSQL's per-ticket text budget, whose
/// later comments are then not indexed, and a ticket edited between its comments.
async fn long_threads_in_live_batches_equal_rebuild(store: Arc<dyn EventStore>) {
    use ticketd_commands::Options;
    use ticketd_domain::{
        Actor, AddComment, CommandKind, EditTicket, OpenTicket, Role, Visibility,
    };

    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let db = store.database().expect("database");
    let agent = Actor {
        id: "agent-1".into(),
        name: Some("Agent One".into()),
        role: Role::Agent,
        org: None,
        org_wide: false,
    };
    let mut last = Position::START;
    let mut ids = Vec::new();
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    for n in 0..4 {
        let open = OpenTicket {
            subject: format!("thread {n}"),
            description: "long".into(),
            requester: Some("alice".into()),
            ..OpenTicket::default()
        };
        let out = h
            .open(agent.clone(), open, Options::default())
            .await
            .expect("open");
        last = last.max(out.position);
        ids.push(out.ticket.id);
    }
    wait_all(&projector, last).await;
    // Stopped while the comments arrive, so the next start finds them all in one batch.
    drop(projector);
    let comment = |body: String, private: bool| {
        CommandKind::Comment(AddComment {
            comment_id: uuid::Uuid::now_v7(),
            body,
            visibility: private.then_some(Visibility::Private),
        })
    };
    let run = |id, kind| {
        let (h, agent) = (&h, agent.clone());
        async move {
            h.execute(id, agent, kind, Options::default())
                .await
                .expect("command")
                .position
        }
    };
    // Past the budget: about 23 kB of vector text a comment, against 300 kB.
    for i in 0..16 {
        last = last.max(run(ids[0], comment(long_body(&format!("a{i}x")), i % 4 == 3)).await);
    }
    // Small comments, both kinds: the one-statement path.
    for i in 0..5 {
        last = last.max(run(ids[1], comment(format!("small b{i} note"), i == 2)).await);
    }
    // A comment, a new subject, a comment.
    last = last.max(run(ids[2], comment("before cedit".into(), false)).await);
    let edit = CommandKind::Edit(EditTicket {
        subject: Some("renamed topic".into()),
        ..EditTicket::default()
    });
    last = last.max(run(ids[2], edit).await);
    last = last.max(run(ids[2], comment("after cedit".into(), false)).await);
    // Only edits: the last subject stays.
    for subject in ["first retitle", "second retitle"] {
        let edit = CommandKind::Edit(EditTicket {
            subject: Some(subject.into()),
            ..EditTicket::default()
        });
        last = last.max(run(ids[3], edit).await);
    }
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    wait_all(&projector, last).await;
    drop(projector);
    assert_equal_to_rebuild(&store).await;

    if let ticketd_commands::Database::Postgres(pool) = &db {
        let has = |word: &'static str, id| async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT (head || public_comments || private_comments) @@ $1::tsquery \
                 FROM ticket_search WHERE ticket_id = $2",
            )
            .bind(word)
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("search row")
        };
        assert!(
            has("a0xw7", ids[0]).await,
            "the first long comment is indexed"
        );
        assert!(
            !has("a15xw7", ids[0]).await,
            "comments past the budget are not"
        );
        assert!(has("b4", ids[1]).await && has("b2", ids[1]).await);
        assert!(has("renamed", ids[2]).await && !has("thread", ids[2]).await);
        assert!(has("before", ids[2]).await && has("after", ids[2]).await);
        assert!(has("second", ids[3]).await && !has("first", ids[3]).await);
    }
}

static ONE_SWITCH_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What [`Meanwhile`] has left to do: rounds, and the live head as its last round began.
struct Rounds {
    left: usize,
    began_at: Position,
    /// Once the rounds are done, the next event is applied under the switch's locks: with a
    /// store here, a command is run then and the log must show it (the switch holds no log
    /// reader back); set to `None` once checked.
    under_locks: Option<Arc<dyn EventStore>>,
    checked_under_locks: bool,
    /// PostgreSQL: the switch's `statement_timeout` as it applies what the live runner did,
    /// after its bounded wait for the locks (the connection's own again).
    timeout_under_locks: Option<String>,
}

/// A projection through which the scratch follows the live projections: each time the scratch
/// applies an event past the live head of its last round (once per round of a switch's
/// following, up to `left`), more commands run and it waits until the live projections applied
/// them. So the live tables are always a round ahead, and the switch's locks find them ahead.
struct Meanwhile {
    inner: Arc<dyn Projection>,
    h: Arc<CommandHandler>,
    live: Database,
    rounds: Arc<tokio::sync::Mutex<Rounds>>,
}

#[async_trait]
impl Projection for Meanwhile {
    passed_through!();

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        after: Option<Position>,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        let mut rounds = self.rounds.lock().await;
        if rounds.left == 0 && event.position > rounds.began_at {
            if let Some(store) = rounds.under_locks.take() {
                if let Conn::Postgres(c) = conn {
                    rounds.timeout_under_locks = Some(
                        sqlx::query_scalar("SHOW statement_timeout")
                            .fetch_one(&mut **c)
                            .await
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                    );
                }
                let at = history::run(&self.h, &mut Rng::new(3), 1, 0).await;
                let shown =
                    ticketd_commands::log_reaches(store.as_ref(), at, Duration::from_secs(3))
                        .await?;
                rounds.checked_under_locks = shown;
            }
        }
        if rounds.left > 0 && event.position > rounds.began_at {
            rounds.left -= 1;
            rounds.began_at = read_checkpoint(&self.live, self.inner.name()).await?;
            let seed = 77 + rounds.left as u64;
            let last = history::run(&self.h, &mut Rng::new(seed), 2, 10).await;
            let deadline = std::time::Instant::now() + WAIT;
            for p in all() {
                while read_checkpoint(&self.live, p.name()).await? < last {
                    if std::time::Instant::now() > deadline {
                        return Err(StoreError::Unavailable(format!("{} stalled", p.name())));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        drop(rounds);
        self.inner.apply(conn, after, event).await
    }
}

/// Builds a scratch, has the live projections go on, then switches while they go on in every
/// round of its following (see [`Meanwhile`]); with `check_under_locks`, a command is run under
/// the switch's locks too. Returns whether the log showed that command, the live position
/// the switch had to reach, and the projector (still running).
async fn switch_while_live_goes_on(
    store: &Arc<dyn EventStore>,
    check_under_locks: bool,
) -> (bool, Position, Projector) {
    // One at a time: [`Meanwhile`] waits for the live projections inside an open scratch
    // transaction, which the log gate of every other store on the server waits for in turn
    // (it is registered with its own store alone); two such waits would wait on each other.
    let _alone = ONE_SWITCH_AT_A_TIME.lock().await;
    let h = Arc::new(CommandHandler::new(
        store.clone(),
        SlaPolicy::default(),
        100,
    ));
    let db = store.database().expect("database");
    let mut rng = Rng::new(5);
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    history::run(&h, &mut rng, 4, 40).await;
    let rounds = Arc::new(tokio::sync::Mutex::new(Rounds {
        left: 0,
        began_at: Position::START,
        under_locks: None,
        checked_under_locks: false,
        timeout_under_locks: None,
    }));
    let projections: Vec<Arc<dyn Projection>> = all()
        .into_iter()
        .map(|inner| {
            Arc::new(Meanwhile {
                inner,
                h: h.clone(),
                live: db.clone(),
                rounds: rounds.clone(),
            }) as Arc<dyn Projection>
        })
        .collect();
    let mut scratch = Scratch::create(&db).await.expect("scratch");
    // Batch by batch on both backends, so the projections' own `apply` runs.
    scratch.set_bulk_tickets(0);
    scratch
        .build(store.as_ref(), &projections, None)
        .await
        .expect("build");
    let ahead = history::run(&h, &mut rng, 4, 40).await;
    wait_all(&projector, ahead).await;
    {
        let mut r = rounds.lock().await;
        r.left = FOLLOW_ROUNDS;
        r.under_locks = check_under_locks.then(|| store.clone());
    }
    scratch
        .switch(store.as_ref(), &db, &projections)
        .await
        .expect("switch");
    scratch.discard(&db).await;
    let r = rounds.lock().await;
    assert_eq!(r.left, 0, "the live projections went on");
    if let (true, Database::Postgres(pool)) = (check_under_locks, &db) {
        // The bound on the wait for the locks is lifted once they are had (the connection's
        // own setting back): applying what the live runner did may take longer.
        let own: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(pool)
            .await
            .expect("statement_timeout");
        assert_eq!(r.timeout_under_locks.as_deref(), Some(own.as_str()));
    }
    (r.checked_under_locks, ahead, projector)
}

/// While a switch holds its locks and applies what the live projections did, commands go on
/// and log readers see them: its transaction is a registered bystander (on PostgreSQL it
/// otherwise held every log reader of every process back, `min_position` reads timing out).
async fn a_switch_holds_no_log_reader_back(store: Arc<dyn EventStore>) {
    let (shown, ..) = switch_while_live_goes_on(&store, true).await;
    assert!(shown, "the log showed a command run during the switch");
}

/// The live projections go on while a rebuild builds, and in every round in which its switch
/// follows them, so its locks find them ahead of the scratch; then nothing new comes. The
/// switch takes what they applied, so no checkpoint moves back (a runner with nothing new to
/// read would not notice, and `min_position` waits would count events the tables lack), and
/// the tables equal a rebuild.
async fn a_switch_keeps_what_the_live_projections_applied(store: Arc<dyn EventStore>) {
    let (_, ahead, projector) = switch_while_live_goes_on(&store, false).await;
    let db = store.database().expect("database");
    let last = ticketd_tests::read_everything(store.as_ref(), 1000)
        .await
        .last()
        .expect("events")
        .position;
    assert!(last > ahead);
    for p in all() {
        let at = read_checkpoint(&db, p.name()).await.expect("checkpoint");
        assert_eq!(at, last, "{} after the switch", p.name());
    }
    drop(projector);
    assert_equal_to_rebuild(&store).await;
}

/// A rebuild's repair holds: after its switch, no live runner writes back what its batches
/// kept in memory of the rows the switch replaced. (The switch leaves each checkpoint where the
/// live runner stood; the runners trusted what they kept of the old rows and, on each ticket's
/// next event, wrote the old values over the rebuilt ones.)
async fn a_switch_leaves_the_runners_nothing_of_the_old_rows(store: Arc<dyn EventStore>) {
    let (h, db) = projected_history(&store, 5, 4, 20).await;
    // Rows as an older build might have left them: values each ticket's fold carries on.
    let mut pooled = ticketd_projections::Pooled::acquire(&db)
        .await
        .expect("conn");
    for sql in [
        "UPDATE tickets SET state = replace(state, '\"subject\":\"', '\"subject\":\"old ')",
        "UPDATE analytics_ticket_facts SET escalations = escalations + 5",
    ] {
        let changed = pooled.conn().execute(sql, &[]).await.expect("tamper");
        assert!(changed > 0, "{sql}");
    }
    drop(pooled);
    let tickets: Vec<uuid::Uuid> = ticketd_tests::read_everything(store.as_ref(), 1000)
        .await
        .iter()
        .filter(|e| e.version == 1)
        .map(|e| e.stream_id)
        .collect();
    let agent = Actor {
        id: "agent-9".into(),
        name: None,
        role: Role::Agent,
        org: None,
        org_wide: false,
    };
    let comment_on_each = || async {
        let mut last = None;
        for id in &tickets {
            let comment = CommandKind::Comment(AddComment {
                comment_id: uuid::Uuid::now_v7(),
                body: "again".into(),
                visibility: None,
            });
            // A withdrawn ticket refuses it.
            if let Ok(out) = h
                .execute(*id, agent.clone(), comment, Options::default())
                .await
            {
                last = last.max(Some(out.position));
            }
        }
        last.expect("a ticket took a comment")
    };
    // The live runners read the old rows, and keep them.
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    wait_all(&projector, comment_on_each().await).await;
    rebuild(store.as_ref(), &all()).await.expect("rebuild");
    wait_all(&projector, comment_on_each().await).await;
    drop(projector);
    assert_equal_to_rebuild(&store).await;
}

/// Ids and orgs that differ only by a U+0000 where the other has U+FFFD (PostgreSQL's text
/// holds the first as the second), as an older build or an import could have logged them:
/// two orgs' tickets opened the same day, a CC of both, a reader of both. Projected batch by
/// batch, they equal a rebuild, whose bulk load on PostgreSQL merges them as the batches do.
async fn ids_alike_but_for_a_nul_equal_their_rebuild(store: Arc<dyn EventStore>) {
    use ticketd_domain::{event, Channel, Event, Metadata, Priority, ZERO_HASH};
    let metadata = |id: &str| {
        Metadata {
            actor: Actor {
                id: id.into(),
                name: Some(format!("{id} name")),
                role: Role::Agent,
                org: None,
                org_wide: false,
            },
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
        }
        .encode()
        .expect("metadata")
    };
    let new_event = |e: &Event, by: &str| ticketd_commands::NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: e.type_name().to_owned(),
        schema_version: e.schema_version(),
        recorded_at: chrono::Utc::now(),
        metadata: metadata(by),
        payload: e.encode().expect("encode"),
    };
    let mut last = Position::START;
    for org in ["o\u{0}rg", "o\u{FFFD}rg"] {
        let id = uuid::Uuid::now_v7();
        let opened = Event::Opened(event::Opened {
            ticket_id: id,
            number: store.next_ticket_number().await.expect("number"),
            subject: "s".into(),
            description: "d".into(),
            priority: Priority::None,
            channel: Channel::Web,
            requester: "req".into(),
            requester_name: None,
            org: Some(org.into()),
            cc: vec!["c\u{0}c".into(), "c\u{FFFD}c".into()],
            fields: Default::default(),
            due_at: None,
            contact_email: None,
        });
        let read = Event::Read(event::Read {});
        let events = vec![
            new_event(&opened, "agent"),
            new_event(&read, "m\u{0}"),
            new_event(&read, "m\u{FFFD}"),
        ];
        let appended = store
            .append(ticketd_tests::request(id, 0, ZERO_HASH, events))
            .await
            .expect("append");
        last = appended.events.last().expect("events").position;
    }
    let db = store.database().expect("database");
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    wait_all(&projector, last).await;
    drop(projector);
    assert_equal_to_rebuild(&store).await;
}

both_backends!(
    a_switch_leaves_the_runners_nothing_of_the_old_rows,
    ids_alike_but_for_a_nul_equal_their_rebuild,
    a_switch_keeps_what_the_live_projections_applied,
    a_switch_holds_no_log_reader_back,
    long_threads_in_live_batches_equal_rebuild,
    incremental_with_crashes_equals_rebuild,
    a_tampered_read_model_differs_from_its_rebuild,
    rebuild_while_serving,
    an_empty_store_equals_its_rebuild,
    a_bulk_pass_cut_short_goes_on_batch_by_batch,
);

/// PostgreSQL: `ticketd rebuild` run beside the service, in a process of its own, switches in
/// while one of the service's runner batches is open (registered with the service's process
/// alone, so the rebuild's log reads stop below it) and the service's projections went on past
/// it. What they applied is settled, and the switch reads it as such: the tables end where the
/// live ones stood. (Read through the gate, the switch found nothing past the open batch and
/// failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rebuild_of_another_process_switches_past_the_services_batches() {
    use sqlx::Connection;
    let Some(t) = ticketd_tests::postgres_store(8).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let Some(Database::Postgres(pool)) = store.database() else {
        panic!("a PostgreSQL store");
    };
    let db = store.database().expect("database");
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    let mut rng = Rng::new(11);
    history::run(&h, &mut rng, 4, 20).await;
    // A batch of the service's, open, with its transaction id taken.
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a connection");
    let mut batch = conn.begin().await.expect("begin");
    let registry = store.bystanders().expect("a registry");
    let looked_past = registry.enter(&mut batch).await.expect("registered");
    let last = history::run(&h, &mut rng, 4, 20).await;
    wait_all(&projector, last).await;
    // The rebuild's process: a pool and a registry of its own.
    let other: Arc<dyn EventStore> = Arc::new(t.another_process(4).await);
    let rebuilt = tokio::time::timeout(WAIT, rebuild(other.as_ref(), &all())).await;
    rebuilt
        .expect("the rebuild ends")
        .expect("the rebuild switches in");
    batch.rollback().await.expect("rollback");
    drop(looked_past);
    for p in all() {
        let at = read_checkpoint(&db, p.name()).await.expect("checkpoint");
        assert_eq!(at, last, "{} after the switch", p.name());
    }
    drop(projector);
    other.close().await;
    assert_equal_to_rebuild(&store).await;
}

/// PostgreSQL: a live table held by a long transaction (`analytics_events`, read by an
/// analytics job) while the store is rebuilt, the scratch built and the checkpoints still.
/// Returns the store, the scratch (its switch waiting `per_attempt` for its locks, `total` in
/// all), the long transaction's connection (its transaction open) and its server pid.
async fn switch_beside_a_long_reader(
    t: &ticketd_tests::PostgresTestStore,
    per_attempt: Duration,
    total: Duration,
) -> (Scratch, sqlx::PgConnection, i32) {
    let store: Arc<dyn EventStore> = t.store.clone();
    let Some(Database::Postgres(pool)) = store.database() else {
        panic!("a PostgreSQL store");
    };
    let (_, db) = projected_history(&store, 21, 4, 20).await;
    let mut scratch = Scratch::create(&db).await.expect("scratch");
    scratch.set_switch_wait(SwitchWait { per_attempt, total });
    scratch
        .build(store.as_ref(), &all(), None)
        .await
        .expect("build");
    let (long, pid) =
        ticketd_tests::a_transaction_reading(&pool.connect_options(), "analytics_events").await;
    (scratch, long, pid)
}

/// Returns once a session waits for a lock on `table` (the switch's attempt, once it is
/// there).
async fn until_someone_waits_on(conn: &mut sqlx::PgConnection, table: &str) {
    let waiting = std::time::Instant::now() + WAIT;
    while !sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = $1::regclass)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .expect("pg_locks")
    {
        assert!(std::time::Instant::now() < waiting, "the switch never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends the long transaction `long`; the switch then gets through.
async fn gets_through_once_it_ends(
    long: &mut sqlx::PgConnection,
    switching: tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    sqlx::query("COMMIT")
        .execute(&mut *long)
        .await
        .expect("commit");
    tokio::time::timeout(WAIT, switching)
        .await
        .expect("the switch ends")
        .expect("the task")
        .expect("the switch gets through once the long transaction ends");
}

/// `scratch`'s switch of every projection, in a task of its own, then its discard.
fn switch_in_a_task(
    scratch: Scratch,
    store: &Arc<dyn EventStore>,
) -> tokio::task::JoinHandle<Result<(), StoreError>> {
    let store = store.clone();
    tokio::spawn(async move {
        let db = store.database().expect("database");
        let switched = scratch.switch(store.as_ref(), &db, &all()).await;
        scratch.discard(&db).await;
        switched
    })
}

/// PostgreSQL: while a long transaction holds one live table (an analytics job's query), a
/// rebuild's switch does not hold the service's readers of the other tables back for as long:
/// each attempt lets go of the tables it locked once it has waited its bound, and the switch
/// gets through once the long transaction ends. (It waited with `tickets` locked for as long as
/// the long transaction ran, and every read of the ticket list waited behind it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_switch_lets_go_while_a_long_transaction_holds_a_table() {
    use sqlx::Connection;
    let Some(t) = ticketd_tests::postgres_store(8).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let db = store.database().expect("database");
    let Database::Postgres(pool) = &db else {
        panic!("a PostgreSQL store");
    };
    let per_attempt = Duration::from_millis(300);
    let (scratch, mut long, _) = switch_beside_a_long_reader(&t, per_attempt, WAIT).await;
    let before: Vec<Position> = {
        let mut at = Vec::new();
        for p in all() {
            at.push(read_checkpoint(&db, p.name()).await.expect("checkpoint"));
        }
        at
    };
    let switching = switch_in_a_task(scratch, &store);
    let mut reader = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a connection");
    until_someone_waits_on(&mut reader, "analytics_events").await;
    // Readers of the ticket list, through several attempts and pauses (0.5 s, then 1 s, …).
    let reading = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    while reading.elapsed() < Duration::from_secs(3) {
        let one = std::time::Instant::now();
        let counted = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tickets").fetch_one(&mut reader),
        )
        .await;
        assert!(
            matches!(counted, Ok(Ok(n)) if n > 0),
            "a read of tickets behind the switch: {counted:?}"
        );
        slowest = slowest.max(one.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One attempt's wait at most, and some slack for a busy machine.
    assert!(
        slowest < per_attempt + Duration::from_millis(1500),
        "a read of tickets waited {slowest:?} behind the switch"
    );
    assert!(
        !switching.is_finished(),
        "the switch waits for the long transaction"
    );
    for (p, at) in all().iter().zip(&before) {
        let now = read_checkpoint(&db, p.name()).await.expect("checkpoint");
        assert_eq!(now, *at, "{} not switched yet", p.name());
    }
    gets_through_once_it_ends(&mut long, switching).await;
    let _ = long.close().await;
    let _ = reader.close().await;
    assert_equal_to_rebuild(&store).await;
}

/// PostgreSQL: a transaction that holds one live table and then reads another, which the
/// waiting switch has locked, closes a cycle. The switch is the waiter the server aborts (its
/// attempt waits at most twice `deadlock_timeout`, and began to wait first): the transaction
/// reads on, and the switch gets through once it ends. (A deadlock failed the rebuild.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_switch_in_a_deadlock_lets_go_and_the_reader_reads_on() {
    let Some(t) = ticketd_tests::postgres_store(8).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let (scratch, mut long, _) =
        switch_beside_a_long_reader(&t, Duration::from_millis(1500), WAIT).await;
    let switching = switch_in_a_task(scratch, &store);
    until_someone_waits_on(&mut long, "analytics_events").await;
    // The long transaction now reads a table the switch holds.
    let reading = std::time::Instant::now();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tickets").fetch_one(&mut long),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0),
        "the reader read on past the switch: {read:?}"
    );
    // It waited behind the switch (a read that waits for nothing takes a millisecond): the
    // cycle was there (had the switch locked this table last, there would have been none).
    assert!(
        reading.elapsed() >= Duration::from_millis(100),
        "the read waited behind the switch: {:?}",
        reading.elapsed()
    );
    assert!(
        !switching.is_finished(),
        "the switch waits for the long transaction"
    );
    gets_through_once_it_ends(&mut long, switching).await;
    assert_equal_to_rebuild(&store).await;
}

/// PostgreSQL: a switch that cannot lock the live tables within its bound gives up with an
/// error naming the session that holds them, and leaves the live tables as they were, still
/// served and still kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_switch_gives_up_naming_who_holds_the_tables() {
    use sqlx::Connection;
    let Some(t) = ticketd_tests::postgres_store(8).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let db = store.database().expect("database");
    let (scratch, mut long, pid) =
        switch_beside_a_long_reader(&t, Duration::from_millis(200), Duration::from_millis(1500))
            .await;
    let switched = tokio::time::timeout(WAIT, scratch.switch(store.as_ref(), &db, &all()))
        .await
        .expect("the switch ends");
    scratch.discard(&db).await;
    let refused = switched.expect_err("the switch gives up");
    let said = refused.to_string();
    assert!(said.contains("could not lock the live tables"), "{said}");
    assert!(
        said.contains(&format!("pid {pid} ")),
        "names the holder: {said}"
    );
    sqlx::query("COMMIT")
        .execute(&mut long)
        .await
        .expect("commit");
    let _ = long.close().await;
    // The live tables go on: they take new commands and still equal a rebuild.
    let h = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let last = history::run(&h, &mut Rng::new(22), 2, 10).await;
    let projector = Projector::start_with(store.clone(), db.clone(), all());
    wait_all(&projector, last).await;
    drop(projector);
    assert_equal_to_rebuild(&store).await;
}

/// PostgreSQL: a search vector loaded by the bulk path's binary `COPY` equals the one the
/// batched path's text input makes of the same words (`$1::tsvector`), for words that sort
/// by bytes unlike by letters, prefixes, repeats, several scripts, combining marks, a word as
/// long as a lexeme may be, and no words at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_vectors_by_copy_equal_their_text_input() {
    use sqlx::Connection;
    use ticketd_projections::bulk::{copy_frozen, Step};
    use ticketd_projections::sql::{Bind, CopyRows};
    let Some(t) = ticketd_tests::postgres_store(2).await else {
        return;
    };
    let Some(Database::Postgres(pool)) = t.store.database() else {
        panic!("a PostgreSQL store");
    };
    let long = "é".repeat(1023) + "x";
    let texts = [
        "b a b",
        "ab a abc a",
        "zebra éclair eclair ézèbre z",
        "naïve naive nai\u{308}ve",
        "日本 語 日本 中文 ελληνικά",
        "x\u{301}y xy",
        "",
        long.as_str(),
    ];
    let mut rows = CopyRows::default();
    let mut ids = Vec::new();
    for text in texts {
        let id = uuid::Uuid::new_v4();
        ids.push(id);
        let mut row = vec![
            Bind::Uuid(id),
            Bind::Vector(text.to_owned()),
            Bind::Vector(text.to_owned()),
            Bind::Vector(String::new()),
        ];
        row.extend([0, 0, 0, 0, 0, 0].map(Bind::I64));
        rows.push(&row).expect("row");
    }
    // As a rebuild's loader does: a transaction that truncated the table, then its `COPY`.
    let mut conn = pool.acquire().await.expect("conn");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("TRUNCATE ticket_search")
        .execute(&mut *tx)
        .await
        .expect("truncate");
    let insert = "INSERT INTO ticket_search (ticket_id, head, public_comments, \
                  private_comments, last_activity_at, created_at, due_sort, priority_rank, \
                  position_tx, position_seq)";
    let step = Step::copy_when(insert, &mut rows, 0).expect("rows");
    copy_frozen(&mut tx, step).await.expect("copy");
    for (id, text) in ids.iter().zip(texts) {
        let (equal, loaded, typed): (bool, String, String) = sqlx::query_as(
            "SELECT head = $1::tsvector AND public_comments = $1::tsvector \
             AND private_comments = ''::tsvector, head::text, ($1::tsvector)::text \
             FROM ticket_search WHERE ticket_id = $2",
        )
        .bind(text)
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .expect("compare");
        assert!(equal, "{text:?}: loaded {loaded}, typed {typed}");
        assert_eq!(loaded, typed, "{text:?}");
    }
}

/// An in-memory SQLite store (`sqlite::memory:`) has no file to lay a scratch one beside: a
/// rebuild says so, and leaves nothing behind in the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_store_is_not_rebuilt_beside_itself() {
    let store = ticketd_commands::SqliteStore::open("sqlite::memory:")
        .await
        .expect("an in-memory store");
    store.migrate().await.expect("migrate");
    let before: Vec<_> = std::fs::read_dir(".")
        .expect("cwd")
        .map(|e| e.expect("entry").file_name())
        .collect();
    let refused = rebuild(&store, &all())
        .await
        .expect_err("no rebuild in memory");
    assert!(refused.to_string().contains("in-memory"), "{refused}");
    let after: Vec<_> = std::fs::read_dir(".")
        .expect("cwd")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(before, after, "no scratch file left");
}

/// A rebuild or verification killed before its end leaves its scratch schema (as large as the
/// read models): the next scratch of the same store drops every one no running process owns,
/// a switch's throw-away schema too, and leaves a running one's and other stores' alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_new_scratch_drops_what_killed_ones_left() {
    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let db = store.database().expect("database");
    let Database::Postgres(pool) = &db else {
        panic!("a PostgreSQL store");
    };
    let oid: i64 =
        sqlx::query_scalar("SELECT oid::bigint FROM pg_namespace WHERE nspname = current_schema()")
            .fetch_one(pool)
            .await
            .expect("the store's schema");
    let tag = || uuid::Uuid::now_v7().simple().to_string();
    let killed = format!("ticketd_rebuild_{oid}_{}", tag());
    let killed_switch = format!("ticketd_old_{oid}_{}", tag());
    // No schema has this oid (past 2^32): another store's, never this one's to drop.
    let other_store = format!("ticketd_rebuild_{oid}0000000_{}", tag());
    for schema in [&killed, &killed_switch, &other_store] {
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(pool)
            .await
            .expect("a schema left behind");
        sqlx::query(&format!("CREATE TABLE \"{schema}\".t (x int)"))
            .execute(pool)
            .await
            .expect("a table in it");
    }
    let exists = |schema: String| async move {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await
            .expect("a schema lookup")
    };
    let running = Scratch::create(&db).await.expect("a running scratch");
    assert!(
        !exists(killed.clone()).await,
        "a killed rebuild's scratch stays"
    );
    assert!(
        !exists(killed_switch.clone()).await,
        "a killed switch's schema stays"
    );
    assert!(
        exists(other_store.clone()).await,
        "another store's scratch went"
    );
    let scratches = || async move {
        sqlx::query_scalar::<_, String>(
            "SELECT nspname::text FROM pg_namespace \
             WHERE nspname LIKE 'ticketd\\_rebuild\\_' || $1 || '\\_%' ORDER BY 1",
        )
        .bind(oid.to_string())
        .fetch_all(pool)
        .await
        .expect("list scratch schemas")
    };
    let [running_schema] = scratches().await.try_into().expect("one running scratch");
    // A switch of the running scratch, between its commit and its clean-up: its throw-away
    // schema shares the scratch's tag, and so its owner's lock.
    let tag = running_schema.rsplit('_').next().expect("a tag");
    let switching = format!("ticketd_old_{oid}_{tag}");
    sqlx::query(&format!("CREATE SCHEMA \"{switching}\""))
        .execute(pool)
        .await
        .expect("a running switch's schema");
    let next = Scratch::create(&db).await.expect("the next scratch");
    assert_eq!(
        scratches().await.len(),
        2,
        "the running scratch went with the killed ones"
    );
    assert!(
        exists(switching.clone()).await,
        "a running switch's schema went"
    );
    // A scratch whose owner ends without discarding it (a failure past `?`, a panic): its
    // lock goes with its connection, and the next scratch drops it.
    let before = scratches().await;
    let abandoned = Scratch::create(&db).await.expect("a scratch to abandon");
    let [abandoned_schema] = scratches()
        .await
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect::<Vec<_>>()
        .try_into()
        .expect("the abandoned scratch's schema");
    drop(abandoned);
    // The server ends the owner's session once it sees the connection closed.
    let mut conn = pool.acquire().await.expect("a connection");
    let abandoned_tag = abandoned_schema.rsplit('_').next().expect("a tag");
    for _ in 0..100 {
        let free: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/scratch/' || $1, 0))",
        )
        .bind(abandoned_tag)
        .fetch_one(&mut *conn)
        .await
        .expect("try the lock");
        if free {
            sqlx::query(
                "SELECT pg_advisory_unlock(hashtextextended(current_schema() || '/scratch/' || $1, 0))",
            )
            .bind(abandoned_tag)
            .execute(&mut *conn)
            .await
            .expect("unlock");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(conn);
    let last = Scratch::create(&db).await.expect("the last scratch");
    assert!(
        !exists(abandoned_schema.clone()).await,
        "an abandoned scratch stays"
    );
    last.discard(&db).await;
    next.discard(&db).await;
    running.discard(&db).await;
    for schema in [&other_store, &switching] {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(pool)
            .await
            .expect("drop a schema the test made");
    }
}

/// SQLite: a rebuild or verification killed before its end leaves its scratch file (as large as
/// the read models): the next scratch of the same store removes every one whose owner's lock is
/// free (or that has no lock file: a `ticketd` before these locks), with its `-wal`, `-shm` and
/// lock, and leaves a running one's, other files and its own alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_new_scratch_removes_what_killed_ones_left() {
    let t = ticketd_tests::sqlite_store().await;
    let store: Arc<dyn EventStore> = t.store.clone();
    let db = store.database().expect("database");
    let dir = t.dir.path().join("data");
    let tag = || uuid::Uuid::now_v7().simple().to_string();
    let scratch = |tag: &str| format!("ticketd.views.db.rebuild-{tag}");
    let write = |name: String| std::fs::write(dir.join(name), b"left").expect("a file left behind");
    let listed = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("data dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.contains(".rebuild-"))
            .collect();
        names.sort();
        names
    };
    // Killed: its lock file is there and free.
    let (killed, old, running) = (tag(), tag(), tag());
    for suffix in ["", "-wal", "-shm", ".lock"] {
        write(format!("{}{suffix}", scratch(&killed)));
    }
    // A scratch of a `ticketd` before the locks: no lock file.
    write(scratch(&old));
    // Running: its owner holds the lock.
    write(scratch(&running));
    write(format!("{}-wal", scratch(&running)));
    let held = std::fs::File::create(dir.join(format!("{}.lock", scratch(&running))))
        .expect("a running owner's lock file");
    held.lock().expect("the running owner's lock");
    // Not a scratch's name.
    write("ticketd.views.db.rebuild-notatag".to_owned());
    write(format!("other.db.rebuild-{}", tag()));

    let next = Scratch::create(&db).await.expect("a new scratch");
    let mine: Vec<String> = listed()
        .into_iter()
        .filter(|n| {
            ![&killed, &old, &running]
                .iter()
                .any(|t| n.contains(t.as_str()))
                && n.starts_with("ticketd.views.db.rebuild-0")
        })
        .collect();
    assert!(
        mine.iter().any(|n| n.ends_with(".lock")),
        "the new scratch's lock file: {mine:?}"
    );
    let mut want = vec![
        scratch(&running),
        format!("{}-wal", scratch(&running)),
        format!("{}.lock", scratch(&running)),
        "ticketd.views.db.rebuild-notatag".to_owned(),
    ];
    want.extend(mine.iter().cloned());
    want.sort();
    let after: Vec<String> = listed()
        .into_iter()
        .filter(|n| !n.starts_with("other.db"))
        .collect();
    assert_eq!(after, want);
    assert!(listed().iter().any(|n| n.starts_with("other.db")));
    // The running owner ends; the next scratch removes its files, and a discarded scratch
    // leaves nothing of its own.
    drop(held);
    next.discard(&db).await;
    let last = Scratch::create(&db).await.expect("the next scratch");
    last.discard(&db).await;
    let after: Vec<String> = listed()
        .into_iter()
        .filter(|n| !n.starts_with("other.db"))
        .collect();
    assert_eq!(after, ["ticketd.views.db.rebuild-notatag"]);
}
