//! Tamper evidence, on SQLite and on PostgreSQL: an untouched store verifies; changing one
//! byte of a stored event, deleting an event or swapping two makes `ticketd verify` (the
//! library, and `POST /v1/audit/verify`) fail naming the right stream and version; and the
//! independent Python script (tests/verify_chain.py) agrees on an export every time.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use ticketd_api::config::Format;
use ticketd_api::transfer::{anchors, export_to, Selection};
use ticketd_commands::verify::{verify_store, verify_store_with, Problem, Verifier};
use ticketd_commands::EventStore;
use ticketd_domain::Role;
use ticketd_tests::http::TestServer;
use ticketd_tests::{PostgresTestStore, SqliteTestStore};

/// A store with direct database access, to tamper with it.
enum Db {
    Sqlite(Box<SqliteTestStore>),
    Postgres(Box<PostgresTestStore>),
}

/// A value to bind.
enum B {
    Id(Uuid),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Db {
    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Db::Sqlite(t) => t.store.clone(),
            Db::Postgres(t) => t.store.clone(),
        }
    }

    /// Runs `sql`, written with `?` placeholders, straight against the database.
    async fn exec(&self, sql: &str, binds: Vec<B>) {
        macro_rules! run {
            ($sql:expr, $pool:expr) => {{
                let mut q = sqlx::query($sql);
                for b in binds {
                    q = match b {
                        B::Id(u) => q.bind(u),
                        B::Int(i) => q.bind(i),
                        B::Bytes(v) => q.bind(v),
                    };
                }
                q.execute($pool).await.expect("tamper")
            }};
        }
        match self {
            Db::Sqlite(t) => {
                run!(sql, t.store.pool());
            }
            Db::Postgres(t) => {
                let mut n = 0;
                let sql: String = sql
                    .chars()
                    .map(|c| {
                        if c == '?' {
                            n += 1;
                            format!("${n}")
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                run!(&sql, t.store.pool());
            }
        }
    }

    /// Sets one stored column of one event to `bytes`.
    async fn set_bytes(&self, column: &str, stream: Uuid, version: i64, bytes: Vec<u8>) {
        let sql = format!("UPDATE events SET {column} = ? WHERE stream_id = ? AND version = ?");
        self.exec(&sql, vec![B::Bytes(bytes), B::Id(stream), B::Int(version)])
            .await;
    }
}

/// Three tickets of three events each; returns the server and the ticket ids.
async fn populated(db: &Db) -> (TestServer, Vec<Uuid>) {
    let s = TestServer::start(db.store()).await;
    let agent = s.agent("agent-1");
    let mut ids = Vec::new();
    let mut last = Value::Null;
    for i in 0..3 {
        let id = s
            .open(
                &s.customer("alice"),
                json!({"subject": format!("T{i}"), "description": "d"}),
            )
            .await;
        for body in [json!({"body": "on it"}), json!({"body": "done"})] {
            let a = s
                .post(&format!("/v1/tickets/{id}/comments"), &agent, body)
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
            last = a.body["position"].clone();
        }
        ids.push(id.parse().expect("uuid"));
    }
    s.log_upto(&last).await;
    (s, ids)
}

/// (stream, version) of every finding.
type Named = BTreeSet<(Uuid, u64)>;

/// Runs all three checks; asserts they agree, and returns what they named.
async fn check(s: &TestServer) -> (bool, Named) {
    let report = verify_store(s.store.as_ref()).await.expect("verify");
    let named: Named = report
        .findings
        .iter()
        .map(|f| (f.stream_id, f.version))
        .collect();

    let token = s.token("audrey", Role::Auditor, None, false);
    let a = s
        .call(
            Method::POST,
            "/v1/audit/verify?projections=false",
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["ok"], report.is_ok(), "{}", a.body);
    let http: Named = a.body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["stream"].as_str().expect("stream").parse().expect("uuid"),
                f["version"].as_u64().expect("version"),
            )
        })
        .collect();
    assert_eq!(http, named);

    let (python_ok, python) = python_verdict(s.store.as_ref(), None).await;
    assert_eq!(python_ok, report.is_ok(), "the script and verify disagree");
    // The script cannot decode payloads; every chain finding it must share.
    let chain: Named = report
        .findings
        .iter()
        .filter(|f| f.problem != Problem::Undecodable)
        .map(|f| (f.stream_id, f.version))
        .collect();
    assert_eq!(python, chain, "the script names what verify names");
    (report.is_ok(), named)
}

async fn export(store: &dyn EventStore) -> Vec<u8> {
    let (_, bytes) = export_to(store, Selection::default(), Format::Ndjson, Vec::new())
        .await
        .expect("export");
    bytes
}

/// Exports the store and runs tests/verify_chain.py on the file (with an anchor export).
async fn python_verdict(store: &dyn EventStore, anchor: Option<&[u8]>) -> (bool, Named) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("export.ndjson");
    std::fs::write(&file, export(store).await).expect("write export");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/verify_chain.py");
    let mut command = std::process::Command::new("python3");
    command.arg(script).arg(&file);
    if let Some(anchor) = anchor {
        let path = dir.path().join("anchor.ndjson");
        std::fs::write(&path, anchor).expect("write anchor");
        command.arg("--anchor").arg(path);
    }
    let out = command
        .output()
        .expect("python3 runs (it is needed for this suite)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let named = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL stream="))
        .map(|l| {
            let (stream, rest) = l.split_once(" version=").expect("version");
            let (version, _) = rest.split_once(' ').expect("problem");
            (
                stream.parse().expect("uuid"),
                version.parse().expect("number"),
            )
        })
        .collect();
    (code == Some(0), named)
}

/// The payload with one letter of the comment "on it" changed: still a valid event.
fn letter_changed(payload: &[u8]) -> Vec<u8> {
    let at = payload
        .windows(5)
        .position(|w| w == b"on it")
        .expect("the comment body");
    let mut changed = payload.to_vec();
    changed[at + 4] = b'T';
    changed
}

fn set(items: &[(Uuid, u64)]) -> Named {
    items.iter().copied().collect()
}

async fn an_untouched_store_passes(db: Db) {
    let (s, _) = populated(&db).await;
    let (ok, named) = check(&s).await;
    assert!(ok);
    assert!(named.is_empty());
}

async fn a_changed_payload_byte_is_named(db: Db) {
    let (s, ids) = populated(&db).await;
    let victim = ids[1];
    let events = s.store.read_stream(victim, 1).await.expect("read");
    let payload = letter_changed(&events[0].payload);
    db.set_bytes("payload", victim, 2, payload).await;
    let (ok, named) = check(&s).await;
    assert!(!ok);
    assert_eq!(named, set(&[(victim, 2)]));
}

async fn a_changed_hash_byte_is_named(db: Db) {
    let (s, ids) = populated(&db).await;
    let victim = ids[2];
    let events = s.store.read_stream(victim, 0).await.expect("read");
    let mut hash = events[0].hash.to_vec();
    hash[31] ^= 0x80;
    db.set_bytes("hash", victim, 1, hash).await;
    let (ok, named) = check(&s).await;
    assert!(!ok);
    // The event itself, and the link from the next one.
    assert_eq!(named, set(&[(victim, 1), (victim, 2)]));
}

async fn a_deleted_event_is_named(db: Db) {
    let (s, ids) = populated(&db).await;
    let victim = ids[0];
    db.exec(
        "DELETE FROM events WHERE stream_id = ? AND version = ?",
        vec![B::Id(victim), B::Int(2)],
    )
    .await;
    let (ok, named) = check(&s).await;
    assert!(!ok);
    assert_eq!(named, set(&[(victim, 2)]));
    let report = verify_store(s.store.as_ref()).await.expect("verify");
    assert_eq!(report.findings[0].problem, Problem::MissingVersions);
}

async fn swapped_events_are_named(db: Db) {
    let (s, ids) = populated(&db).await;
    let victim = ids[1];
    for (from, to) in [(2, 1_000_000), (3, 2), (1_000_000, 3)] {
        db.exec(
            "UPDATE events SET version = ? WHERE stream_id = ? AND version = ?",
            vec![B::Int(to), B::Id(victim), B::Int(from)],
        )
        .await;
    }
    let (ok, named) = check(&s).await;
    assert!(!ok);
    assert_eq!(named, set(&[(victim, 2), (victim, 3)]));
}

/// What a chain alone cannot show — the last events of a stream removed, or a stream rewritten
/// with every hash recomputed — shows against an anchor: an earlier export.
async fn truncation_and_rewrites_show_against_an_anchor(db: Db) {
    let (s, ids) = populated(&db).await;
    let anchor = export(s.store.as_ref()).await;

    db.exec(
        "DELETE FROM events WHERE stream_id = ? AND version = ?",
        vec![B::Id(ids[0]), B::Int(3)],
    )
    .await;
    let events = s.store.read_stream(ids[1], 0).await.expect("read");
    let mut prev = events[0].hash;
    for (i, e) in events.iter().enumerate().skip(1) {
        // The event as rewritten: its new payload (for the first), chained to the new hashes.
        let mut rewritten = e.clone();
        if i == 1 {
            rewritten.payload = letter_changed(&e.payload);
        }
        rewritten.prev_hash = prev;
        let hash = rewritten.computed_hash();
        let payload = rewritten.payload;
        db.exec(
            "UPDATE events SET payload = ?, prev_hash = ?, hash = ? \
             WHERE stream_id = ? AND version = ?",
            vec![
                B::Bytes(payload),
                B::Bytes(prev.to_vec()),
                B::Bytes(hash.to_vec()),
                B::Id(e.stream_id),
                B::Int(e.version as i64),
            ],
        )
        .await;
        prev = hash;
    }

    // The chains hold: without an anchor nothing shows.
    let (ok, named) = check(&s).await;
    assert!(ok && named.is_empty());

    let anchors = anchors(anchor.as_slice()).expect("anchors");
    let report = verify_store_with(s.store.as_ref(), Verifier::with_anchors(anchors))
        .await
        .expect("verify");
    let found: BTreeSet<(Uuid, u64, Problem)> = report
        .findings
        .iter()
        .map(|f| (f.stream_id, f.version, f.problem))
        .collect();
    let want = [
        (ids[0], 3, Problem::AnchorMissing),
        (ids[1], 3, Problem::AnchorMismatch),
    ];
    assert_eq!(found, want.into_iter().collect());
    let (python_ok, python) = python_verdict(s.store.as_ref(), Some(&anchor)).await;
    assert!(!python_ok);
    assert_eq!(python, set(&[(ids[0], 3), (ids[1], 3)]));
}

/// SQLite only: two events of one stream trade places in the log (row ids), hashes intact.
/// (PostgreSQL's log order is an identity column that cannot be updated.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reordered_log_is_named() {
    let db = Db::Sqlite(Box::new(ticketd_tests::sqlite_store().await));
    let (s, ids) = populated(&db).await;
    let victim = ids[2];
    let seq = |v: i64| {
        let Db::Sqlite(t) = &db else { unreachable!() };
        let pool = t.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT seq FROM events WHERE stream_id = ? AND version = ?",
            )
            .bind(victim)
            .bind(v)
            .fetch_one(&pool)
            .await
            .expect("seq")
        }
    };
    let (a, b) = (seq(2).await, seq(3).await);
    for (from, to) in [(a, -1), (b, a), (-1, b)] {
        db.exec(
            "UPDATE events SET seq = ? WHERE seq = ? AND stream_id = ?",
            vec![B::Int(to), B::Int(from), B::Id(victim)],
        )
        .await;
    }
    let (ok, named) = check(&s).await;
    assert!(!ok);
    assert_eq!(named, set(&[(victim, 2)]));
}

macro_rules! tamper_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Db::Sqlite(Box::new(ticketd_tests::sqlite_store().await))).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(t) = ticketd_tests::postgres_store(8).await {
                        super::$case(super::Db::Postgres(Box::new(t))).await;
                    }
                }
            )+
        }
    };
}

tamper_both_backends!(
    an_untouched_store_passes,
    a_changed_payload_byte_is_named,
    a_changed_hash_byte_is_named,
    a_deleted_event_is_named,
    swapped_events_are_named,
    truncation_and_rewrites_show_against_an_anchor,
);

/// SQLite only (its columns are loosely typed): a row the store cannot read at all stops the
/// check, which then fails and says where, rather than erring or answering 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_unreadable_row_fails_verification() {
    let db = Db::Sqlite(Box::new(ticketd_tests::sqlite_store().await));
    let (s, ids) = populated(&db).await;
    db.exec(
        "UPDATE events SET schema_version = -1 WHERE stream_id = ? AND version = 2",
        vec![B::Id(ids[1])],
    )
    .await;
    let report = verify_store(s.store.as_ref()).await.expect("verify");
    assert!(!report.is_ok());
    let (after, _) = report.unreadable.expect("unreadable");
    // Everything before the bad row was read and checked: ticket 0, then ticket 1's first event.
    let first = s.store.read_stream(ids[1], 0).await;
    assert!(
        first.is_err(),
        "the bad row is unreadable through the store too"
    );
    let log = s
        .store
        .read_all(ticketd_commands::Position::START, 4)
        .await
        .expect("read");
    assert_eq!(after, log[3].position);
    assert_eq!((log[3].stream_id, log[3].version), (ids[1], 1));
    assert_eq!(report.events, 4);
    let a = s
        .call(
            Method::POST,
            "/v1/audit/verify",
            Some(&s.token("root", Role::Admin, None, false)),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["ok"], false);
    assert!(a.body["unreadable"]["after"].is_string(), "{}", a.body);
}
