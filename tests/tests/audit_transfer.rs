//! `ticketd export` / `ticketd import`: SQLite → file → PostgreSQL → file reproduces the file
//! byte for byte (NDJSON and MessagePack); the imported store verifies, answers as the original
//! did and carries on (stream heads, ticket numbers); import refuses a non-empty store and a
//! tampered file, writing nothing.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use ticketd_api::app::OpenedStore;
use ticketd_api::config::Format;
use ticketd_api::transfer::{export_to, import_from, read_records, Selection};
use ticketd_commands::verify::verify_store;
use ticketd_commands::EventStore;
use ticketd_tests::http::TestServer;

/// A few tickets with every kind of event; returns the ticket ids once all are in the log.
async fn populate(store: Arc<dyn EventStore>) -> Vec<Uuid> {
    let s = TestServer::start(store).await;
    let agent = s.agent("agent-1");
    let mut ids = Vec::new();
    let mut last = Value::Null;
    for i in 0..4 {
        let id = s
            .open(
                &s.customer("alice"),
                json!({"subject": format!("T{i} ünïcødé"), "description": "d\n\"quoted\"",
                       "priority": "high", "cc": ["bob"], "fields": {"k": ["a", "b"]}}),
            )
            .await;
        let base = format!("/v1/tickets/{id}");
        for (path, body) in [
            (
                "/comments",
                json!({"body": "private", "visibility": "private"}),
            ),
            ("/escalate", json!({"reason": "slow"})),
            ("/read", json!({})),
            ("/status", json!({"status": "resolved", "reason": "ok"})),
        ] {
            let a = s.post(&format!("{base}{path}"), &agent, body).await;
            assert!(a.status.is_success(), "{path}: {}", a.body);
            last = a.body["position"].clone();
        }
        if i == 3 {
            let a = s
                .post(
                    &format!("{base}/comments"),
                    &s.customer("alice"),
                    json!({"body": "still broken"}),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED);
            let a = s
                .post(
                    &format!("{base}/withdraw"),
                    &s.customer("alice"),
                    json!({"reason": "gave up"}),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            last = a.body["position"].clone();
        }
        ids.push(id.parse().expect("uuid"));
    }
    s.log_upto(&last).await;
    ids
}

async fn export(store: &dyn EventStore, format: Format) -> Vec<u8> {
    let (_, out) = export_to(store, Selection::default(), format, Vec::new())
        .await
        .expect("export");
    out
}

async fn import(target: &OpenedStore, bytes: &[u8], format: Format) -> anyhow::Result<u64> {
    let records = read_records(bytes, format)?;
    import_from(target, records.into_iter().map(Ok))
        .await
        .map(|i| i.events)
}

/// Waits until `store`'s log shows `n` events (PostgreSQL shows a commit once older
/// transactions end).
async fn wait_for(store: &dyn EventStore, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ticketd_tests::read_everything(store, 1000).await.len() < n {
        assert!(std::time::Instant::now() < deadline, "import not visible");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_file_to_postgres_to_file_is_byte_for_byte() {
    let Some(pg_ndjson) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let Some(pg_msgpack) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let source = ticketd_tests::sqlite_store().await;
    let ids = populate(source.store.clone()).await;
    let original = ticketd_tests::read_everything(source.store.as_ref(), 1000).await;
    // Four tickets of five events; the last one reopened by a reply, then withdrawn.
    assert_eq!(original.len(), 4 * 5 + 3);

    for (format, pg) in [(Format::Ndjson, &pg_ndjson), (Format::Msgpack, &pg_msgpack)] {
        let first = export(source.store.as_ref(), format).await;
        let target = OpenedStore::Postgres(pg.store.clone());
        assert_eq!(
            import(&target, &first, format).await.expect("import"),
            original.len() as u64
        );
        wait_for(pg.store.as_ref(), original.len()).await;
        let second = export(pg.store.as_ref(), format).await;
        assert!(
            first == second,
            "{format:?} export differs after the round trip"
        );

        // Every event, in the same order, with the same bytes; only positions differ.
        let copied = ticketd_tests::read_everything(pg.store.as_ref(), 1000).await;
        assert_eq!(copied.len(), original.len());
        for (a, b) in original.iter().zip(&copied) {
            let mut b = b.clone();
            b.position = a.position;
            assert_eq!(a, &b);
        }
        assert!(verify_store(pg.store.as_ref())
            .await
            .expect("verify")
            .is_ok());
    }
    // Both formats carry the same events.
    assert_eq!(
        export(pg_ndjson.store.as_ref(), Format::Ndjson).await,
        export(pg_msgpack.store.as_ref(), Format::Ndjson).await
    );

    // The imported store answers as the original did, and carries on.
    let old = TestServer::start(source.store.clone()).await;
    let new = TestServer::start(pg_ndjson.store.clone()).await;
    let agent = old.agent("agent-1");
    // Neither server has answered a command yet, so ask both to wait until their projections
    // hold the whole (imported) log: GET is served from the read model (CONTRACT §6).
    let (old_last, new_last) = (
        original.last().expect("events").position,
        ticketd_tests::read_everything(pg_ndjson.store.as_ref(), 1000)
            .await
            .last()
            .expect("events")
            .position,
    );
    for id in &ids {
        let (a, b) = (
            old.get(&format!("/v1/tickets/{id}?min_position={old_last}"), &agent)
                .await,
            new.get(&format!("/v1/tickets/{id}?min_position={new_last}"), &agent)
                .await,
        );
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body, b.body);
    }
    let reopened = new
        .post(
            &format!("/v1/tickets/{}/comments", ids[0]),
            &new.agent("agent-2"),
            json!({"body": "it is back"}),
        )
        .await;
    assert_eq!(reopened.status, StatusCode::CREATED, "{}", reopened.body);
    assert_eq!(
        reopened.body["version"], 6,
        "appends continue the imported stream"
    );
    let numbers: Vec<u64> = {
        let mut n = Vec::new();
        for id in &ids {
            n.push(
                old.get(&format!("/v1/tickets/{id}"), &agent).await.body["number"]
                    .as_u64()
                    .expect("number"),
            );
        }
        n
    };
    let opened = new
        .post(
            "/v1/tickets",
            &new.customer("carol"),
            json!({"subject": "new", "description": "d"}),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED);
    let number = opened.body["number"].as_u64().expect("number");
    assert!(
        numbers.iter().all(|n| *n < number),
        "ticket numbers continue after the imported ones: {number} vs {numbers:?}"
    );
}

/// PostgreSQL → MessagePack → SQLite (the SQLite importer), and the SQLite store carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_sqlite() {
    let Some(pg) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let ids = populate(pg.store.clone()).await;
    let file = export(pg.store.as_ref(), Format::Msgpack).await;
    let sqlite = ticketd_tests::sqlite_store().await;
    let target = OpenedStore::Sqlite(sqlite.store.clone());
    import(&target, &file, Format::Msgpack)
        .await
        .expect("import");
    assert_eq!(export(sqlite.store.as_ref(), Format::Msgpack).await, file);
    let s = TestServer::start(sqlite.store.clone()).await;
    let a = s
        .post(
            &format!("/v1/tickets/{}/comments", ids[1]),
            &s.agent("agent-1"),
            json!({"body": "more"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["version"], 6);
    let opened = s
        .post(
            "/v1/tickets",
            &s.customer("carol"),
            json!({"subject": "new", "description": "d"}),
        )
        .await;
    assert_eq!(opened.body["number"], 5, "{}", opened.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_a_non_empty_store_and_a_tampered_file() {
    let source = ticketd_tests::sqlite_store().await;
    populate(source.store.clone()).await;
    let file = export(source.store.as_ref(), Format::Ndjson).await;

    // Into itself: not empty.
    let err = import(
        &OpenedStore::Sqlite(source.store.clone()),
        &file,
        Format::Ndjson,
    )
    .await
    .expect_err("not empty");
    assert!(err.to_string().contains("not empty"), "{err}");

    // One changed letter in one comment: refused, and nothing written.
    let text = String::from_utf8(file).expect("utf-8");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut event: Value = serde_json::from_str(&lines[1]).expect("json");
    let payload = event["payload"].as_str().expect("hex").to_owned();
    let flipped = format!(
        "{}{}",
        &payload[..payload.len() - 1],
        if payload.ends_with('0') { "1" } else { "0" }
    );
    event["payload"] = json!(flipped);
    lines[1] = serde_json::to_string(&event).expect("json");
    let tampered = lines.join("\n") + "\n";
    let stream = event["stream"].as_str().expect("stream").to_owned();

    let empty = ticketd_tests::sqlite_store().await;
    let err = import(
        &OpenedStore::Sqlite(empty.store.clone()),
        tampered.as_bytes(),
        Format::Ndjson,
    )
    .await
    .expect_err("tampered");
    let message = err.to_string();
    assert!(message.contains("fails verification"), "{message}");
    assert!(
        message.contains(&format!("stream {stream} version 2")),
        "{message}"
    );
    assert!(ticketd_tests::read_everything(empty.store.as_ref(), 10)
        .await
        .is_empty());

    // A line that is not a record: refused, naming the line.
    let err = import(
        &OpenedStore::Sqlite(empty.store.clone()),
        b"{\"stream\": 1}\n",
        Format::Ndjson,
    )
    .await
    .expect_err("garbage");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_takes_a_range_or_one_ticket() {
    let source = ticketd_tests::sqlite_store().await;
    let ids = populate(source.store.clone()).await;
    let log = ticketd_tests::read_everything(source.store.as_ref(), 1000).await;
    let store = source.store.as_ref();
    let lines = |bytes: Vec<u8>| -> Vec<Value> {
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };

    let selection = Selection {
        after: Some(log[2].position),
        until: Some(log[6].position),
        ticket: None,
    };
    let (_, out) = export_to(store, selection, Format::Ndjson, Vec::new())
        .await
        .expect("export");
    let got = lines(out);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0]["id"], log[3].event_id.to_string());
    assert_eq!(got[3]["id"], log[6].event_id.to_string());
    assert!(
        got[0].get("position").is_none(),
        "exports carry no positions"
    );

    let selection = Selection {
        ticket: Some(ids[3]),
        ..Selection::default()
    };
    let (_, out) = export_to(store, selection, Format::Ndjson, Vec::new())
        .await
        .expect("export");
    let got = lines(out);
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|e| e["stream"] == ids[3].to_string()));
    assert_eq!(got[7]["type"], "ticket.withdrawn");
}

const EXPORT_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/audit/export.ndjson");

/// An export written by an earlier build, kept as it is: it must keep importing, verifying
/// and describing the same events (CI also runs tests/verify_chain.py on it). To write it the
/// first time: `cargo test -p ticketd-tests --test audit_transfer -- --ignored write_export_fixture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_export_still_imports_and_verifies() {
    let file = std::fs::read(EXPORT_FIXTURE).expect("the export fixture");
    let records = read_records(&file, Format::Ndjson).expect("parses");
    let store = ticketd_tests::sqlite_store().await;
    import(
        &OpenedStore::Sqlite(store.store.clone()),
        &file,
        Format::Ndjson,
    )
    .await
    .expect("imports");
    let report = verify_store(store.store.as_ref()).await.expect("verify");
    assert!(report.is_ok(), "{report:?}");
    let again = export(store.store.as_ref(), Format::Ndjson).await;
    let reread = read_records(&again, Format::Ndjson).expect("parses");
    assert_eq!(reread, records, "the stored fields round-trip");

    // Its comments were stored with schema 1, before `channel` existed: they are shown, and
    // folded, in the newest shape, while the stored schema and bytes stay as they were.
    let s = TestServer::start(store.store.clone()).await;
    let auditor = s.token("audrey", ticketd_domain::Role::Auditor, None, false);
    let ticket = records[0].stream_id;
    let a = s
        .get(&format!("/v1/audit/tickets/{ticket}/events"), &auditor)
        .await;
    let comment = &a.body["items"][1];
    assert_eq!(comment["type"], "ticket.commented");
    assert_eq!(comment["schema_version"], 1);
    assert_eq!(comment["data"]["channel"], "web", "{comment}");
    assert_eq!(comment["data"]["visibility"], "private");
    // New comments are written with schema 2, continuing the same chain.
    let added = s
        .post(
            &format!("/v1/tickets/{ticket}/comments"),
            &s.agent("agent-1"),
            json!({"body": "new schema"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let stream = store.store.read_stream(ticket, 0).await.expect("read");
    let schemas: Vec<(String, u32)> = stream
        .iter()
        .map(|e| (e.event_type.clone(), e.schema_version))
        .collect();
    assert_eq!(schemas[1], ("ticket.commented".to_owned(), 1));
    assert_eq!(
        schemas.last().expect("last"),
        &("ticket.commented".to_owned(), 2)
    );
    let log = ticketd_tests::read_everything(store.store.as_ref(), 1000).await;
    assert_eq!(log.len(), records.len() + 1);
    assert!(verify_store(store.store.as_ref())
        .await
        .expect("verify")
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/audit/export.ndjson if it is missing"]
async fn write_export_fixture() {
    let path = std::path::Path::new(EXPORT_FIXTURE);
    if path.exists() {
        eprintln!("kept {EXPORT_FIXTURE} (fixtures are never rewritten)");
        return;
    }
    let source = ticketd_tests::sqlite_store().await;
    populate(source.store.clone()).await;
    let bytes = export(source.store.as_ref(), Format::Ndjson).await;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write fixture");
}

/// Into PostgreSQL (one COPY for the events, one for the stream heads): a tampered file, and
/// a file whose chains verify but that repeats an event id, are refused with nothing written;
/// the store then takes a good import, whose heads are each stream's last event, and refuses
/// a second one as not empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_import_refuses_writes_nothing_then_sets_heads() {
    let Some(pg) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let source = ticketd_tests::sqlite_store().await;
    populate(source.store.clone()).await;
    let file = export(source.store.as_ref(), Format::Ndjson).await;
    let target = OpenedStore::Postgres(pg.store.clone());
    let pool = pg.store.pool();
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .expect("count")
    };

    let mut records = read_records(&file, Format::Ndjson).expect("records");
    let mut tampered = records.clone();
    tampered[3].payload.push(0);
    let err = import_from(&target, tampered.into_iter().map(Ok))
        .await
        .expect_err("tampered");
    assert!(err.to_string().contains("fails verification"), "{err}");
    assert_eq!((count("events").await, count("streams").await), (0, 0));

    // Another stream's event takes the first event's id, its chain rehashed: it verifies,
    // and the database refuses it when the COPY ends.
    let k = records
        .iter()
        .position(|e| e.stream_id != records[0].stream_id)
        .expect("a second stream");
    let mut duplicate = records.clone();
    duplicate[k].event_id = records[0].event_id;
    let stream = duplicate[k].stream_id;
    let mut prev = duplicate[k].prev_hash;
    for e in duplicate
        .iter_mut()
        .skip(k)
        .filter(|e| e.stream_id == stream)
    {
        e.prev_hash = prev;
        e.hash = e.computed_hash();
        prev = e.hash;
    }
    import_from(&target, duplicate.into_iter().map(Ok))
        .await
        .expect_err("a repeated event id");
    assert_eq!((count("events").await, count("streams").await), (0, 0));

    let n = records.len() as u64;
    let imported = import_from(&target, records.clone().into_iter().map(Ok))
        .await
        .expect("import");
    assert_eq!(imported.events, n);
    let wrong_heads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM streams s FULL JOIN \
         (SELECT DISTINCT ON (stream_id) stream_id, version, hash FROM events \
          ORDER BY stream_id, version DESC) e USING (stream_id) \
         WHERE s.version IS DISTINCT FROM e.version OR s.last_hash IS DISTINCT FROM e.hash",
    )
    .fetch_one(pool)
    .await
    .expect("heads");
    assert_eq!(wrong_heads, 0);
    assert_eq!(count("streams").await, 4);

    records.truncate(1);
    let err = import_from(&target, records.into_iter().map(Ok))
        .await
        .expect_err("not empty");
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(count("events").await, n as i64);
}
