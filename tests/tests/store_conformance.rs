//! The event-store conformance suite: every case runs against SQLite and PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use sqlx::ConnectOptions;
use ticketd_commands::{
    log_reaches, Database, EventStore, Position, SqliteStore, StoreError, StoredEvent, PAGE_BYTES,
};
use ticketd_domain::ZERO_HASH;
use ticketd_tests::{
    both_backends, head, idempotency_record, micros_time, new_event, new_events, new_stream,
    read_everything, read_until, request, tick_until_visible,
};

both_backends!(
    append_to_a_new_stream,
    append_at_the_expected_version,
    conflict_at_a_wrong_expected_version,
    wrong_prev_hash_conflicts,
    multi_event_append_is_atomic,
    concurrent_appends_to_one_stream_let_exactly_one_win,
    concurrent_appends_to_many_streams_each_decide_alone,
    plain_appends_sharing_a_batch_each_decide_alone,
    read_stream_order_and_after_version,
    read_all_log_order_and_paging,
    read_batch_is_read_all,
    read_batch_stops_at_its_byte_bound,
    read_all_stops_at_its_byte_bound,
    hash_chain_verifies,
    stored_bytes_and_times_round_trip,
    idempotency_record_is_kept_with_the_append,
    idempotency_key_taken_writes_nothing,
    idempotency_only_append,
    purge_idempotency,
    a_purge_takes_every_expired_record,
    ticket_numbers_unique_and_increasing,
    a_caller_gone_mid_draw_costs_the_others_nothing,
    subscribe_ticks_after_append,
    position_round_trips,
    log_reaches_appended_positions,
);

fn assert_conflict(
    result: Result<impl std::fmt::Debug, StoreError>,
    stream: Uuid,
    expected: u64,
    actual: u64,
) {
    match result {
        Err(StoreError::Conflict {
            stream_id,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (stream_id, e, a),
                (stream, expected, actual),
                "conflict details"
            );
        }
        other => panic!("expected a conflict at version {actual}, got {other:?}"),
    }
}

async fn append_to_a_new_stream(store: Arc<dyn EventStore>) {
    let stream = Uuid::now_v7();
    let events = new_events(1);
    let appended = store
        .append(request(stream, 0, ZERO_HASH, events.clone()))
        .await
        .expect("append");
    assert_eq!(appended.version, 1);
    assert_eq!(appended.events.len(), 1);
    let e = &appended.events[0];
    assert_eq!(
        (e.stream_id, e.version, e.event_id),
        (stream, 1, events[0].event_id)
    );
    assert_eq!(e.prev_hash, ZERO_HASH);
    assert_ne!(e.position, Position::START);
    // What append reports is exactly what is stored.
    assert_eq!(
        store.read_stream(stream, 0).await.expect("read"),
        appended.events
    );
}

async fn append_at_the_expected_version(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 2).await;
    let (version, hash) = head(&first);
    assert_eq!(version, 2);
    let second = store
        .append(request(stream, version, hash, new_events(1)))
        .await
        .expect("append at version 2");
    assert_eq!(second.version, 3);
    assert_eq!(second.events[0].version, 3);
    assert_eq!(second.events[0].prev_hash, hash);
    assert!(second.events[0].position > first.events[1].position);
    assert_eq!(store.read_stream(stream, 0).await.expect("read").len(), 3);
}

async fn conflict_at_a_wrong_expected_version(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 2).await;
    let (_, hash) = head(&first);
    for wrong in [0, 1, 3, 1000, u64::MAX] {
        let result = store
            .append(request(stream, wrong, hash, new_events(2)))
            .await;
        assert_conflict(result, stream, wrong, 2);
    }
    // A stream that does not exist is at version 0.
    let missing = Uuid::now_v7();
    assert_conflict(
        store.append(request(missing, 4, hash, new_events(1))).await,
        missing,
        4,
        0,
    );
    assert!(store
        .read_stream(missing, 0)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(
        store.read_stream(stream, 0).await.expect("read"),
        first.events
    );
    let last = first.events[1].position;
    assert_eq!(
        read_until(&*store, last).await,
        first.events,
        "nothing written"
    );
}

async fn wrong_prev_hash_conflicts(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 1).await;
    assert_conflict(
        store
            .append(request(stream, 1, [7; 32], new_events(1)))
            .await,
        stream,
        1,
        1,
    );
    assert_conflict(
        store
            .append(request(stream, 1, ZERO_HASH, new_events(1)))
            .await,
        stream,
        1,
        1,
    );
    // Version 1 chains from zeros only.
    let fresh = Uuid::now_v7();
    assert_conflict(
        store
            .append(request(fresh, 0, [1; 32], new_events(1)))
            .await,
        fresh,
        0,
        0,
    );
    assert_eq!(
        store.read_stream(stream, 0).await.expect("read"),
        first.events
    );
    assert!(store.read_stream(fresh, 0).await.expect("read").is_empty());
}

async fn multi_event_append_is_atomic(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 3).await;
    assert_eq!(
        first.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let (version, hash) = head(&first);

    // The second request was decided on the same version: all of it is refused.
    let winner = store
        .append(request(stream, version, hash, new_events(2)))
        .await
        .expect("first request");
    assert_conflict(
        store
            .append(request(stream, version, hash, new_events(4)))
            .await,
        stream,
        3,
        5,
    );

    // A request whose last event reuses a stored event id fails at the database: its first
    // events and its idempotency record must go too.
    let (version, hash) = head(&winner);
    let mut events = new_events(3);
    events[2].event_id = first.events[0].event_id;
    let mut req = request(stream, version, hash, events);
    req.idempotency = Some(idempotency_record("alice", "atomic"));
    assert!(
        store.append(req).await.is_err(),
        "a reused event id must fail"
    );
    let since = Utc::now() - TimeDelta::hours(1);
    assert_eq!(
        store
            .idempotency("alice", "atomic", since)
            .await
            .expect("lookup"),
        None
    );

    let stored = store.read_stream(stream, 0).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(read_until(&*store, stored[4].position).await, stored);

    // The stream is still usable at its real head.
    store
        .append(request(stream, version, hash, new_events(1)))
        .await
        .expect("append after the failures");
}

async fn concurrent_appends_to_one_stream_let_exactly_one_win(store: Arc<dyn EventStore>) {
    let (hot, first) = new_stream(&*store, 1).await;
    let (version, hash) = head(&first);
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Odd tasks write streams of their own, which must not be hurt by the losers.
            if i % 2 == 1 {
                let (_, appended) = new_stream(&*store, 1 + i % 3).await;
                return Ok(appended);
            }
            store
                .append(request(hot, version, hash, new_events(1 + i % 3)))
                .await
        }));
    }
    let mut winners = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(_) if i % 2 == 0 => winners += 1,
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) if i % 2 == 0 => {}
            Err(e) => panic!("task {i}: {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one append at version 1 wins");
    let stored = store.read_stream(hot, 0).await.expect("read");
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=stored.len() as u64).collect::<Vec<_>>());
}

/// Concurrent appends to distinct streams may share a statement (PostgreSQL batches them);
/// each must still succeed, conflict or lose its idempotency key on its own.
async fn concurrent_appends_to_many_streams_each_decide_alone(store: Arc<dyn EventStore>) {
    const STREAMS: usize = 40;
    let mut heads = Vec::new();
    for _ in 0..STREAMS {
        let (stream, first) = new_stream(&*store, 1).await;
        let (version, hash) = head(&first);
        heads.push((stream, version, hash));
    }
    let mut tasks = Vec::new();
    for (i, (stream, version, hash)) in heads.iter().copied().enumerate() {
        // The right append; streams 4k and 4k+1 race for one idempotency key.
        let store_right = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = request(stream, version, hash, new_events(1 + (i % 2) as u32));
            if i % 4 < 2 {
                req.idempotency = Some(idempotency_record("carol", &format!("k{}", i / 4)));
            }
            (i, true, store_right.append(req).await)
        }));
        // A stale one, which must conflict without hurting the others.
        let store_stale = store.clone();
        tasks.push(tokio::spawn(async move {
            let req = request(stream, version + 5, hash, new_events(1));
            (i, false, store_stale.append(req).await)
        }));
    }
    let mut written = [false; STREAMS];
    let mut key_losers = 0;
    let mut last = Position::START;
    for task in tasks {
        let (i, right, result) = task.await.expect("task");
        match (right, result) {
            (true, Ok(appended)) => {
                assert_eq!(appended.version, 2 + (i % 2) as u64);
                assert!(appended.events.iter().all(|e| e.position > Position::START));
                last = last.max(
                    appended
                        .events
                        .iter()
                        .map(|e| e.position)
                        .max()
                        .unwrap_or(last),
                );
                written[i] = true;
            }
            (true, Err(StoreError::IdempotencyKeyTaken)) if i % 4 < 2 => key_losers += 1,
            (false, Err(StoreError::Conflict { stream_id, .. })) => {
                assert_eq!(stream_id, heads[i].0)
            }
            (right, other) => panic!("stream {i} (right: {right}): {other:?}"),
        }
    }
    assert_eq!(key_losers, STREAMS / 4, "one of each raced key loses");
    for (i, (stream, _, _)) in heads.iter().enumerate() {
        let stored = store.read_stream(*stream, 0).await.expect("read");
        let expected = if written[i] { 2 + i % 2 } else { 1 };
        assert_eq!(stored.len(), expected, "stream {i}");
        assert_chained(&stored);
    }
    let log = read_until(&*store, last).await;
    let mut ids: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), log.len(), "each event once in the log");
}

/// A stream read whole: versions 1, 2, … and each event chained to the one before.
fn assert_chained(stored: &[StoredEvent]) {
    let mut prev = ZERO_HASH;
    for (k, e) in stored.iter().enumerate() {
        assert_eq!(e.version, k as u64 + 1);
        assert_eq!(e.prev_hash, prev);
        prev = e.hash;
    }
}

/// Plain appends (no idempotency key) to distinct streams, sent at once so that they share
/// batches and statements (both stores write such a batch in a few shared statements): each
/// right one is written, and each stale one (by version or by hash) fails alone and leaves
/// nothing behind. A second round adds an append reusing a stored event id, which fails the
/// shared statement: that one must fail alone too. A third round has more events than one
/// insert statement takes, so the clash must also undo the statements before it.
async fn plain_appends_sharing_a_batch_each_decide_alone(store: Arc<dyn EventStore>) {
    for (reuse, extra) in [(false, 0), (true, 0), (true, 3)] {
        plain_appends_round(&store, reuse, extra).await;
    }
}

/// One round: each right append writes `extra` events more than its base 1 – 3.
async fn plain_appends_round(store: &Arc<dyn EventStore>, reuse: bool, extra: u32) {
    const STREAMS: usize = 45;
    let mut heads = Vec::new();
    for _ in 0..STREAMS {
        let (stream, first) = new_stream(&**store, 1).await;
        heads.push((stream, first));
    }
    let reused = heads[0].1.events[0].event_id;
    // What each stream's append is: right (0, 1), stale by version (2) or by hash (3), or, in
    // the rounds with `reuse`, the last stream's reusing an event id (4).
    let kind = |i: usize| match i % 5 {
        4 if !reuse || i + 1 < STREAMS => 0,
        k => k,
    };
    // SQLite: the log's write lock, held on a connection of its own while the appends queue,
    // keeps the writer waiting in `BEGIN IMMEDIATE` (inside its busy timeout), so that it
    // takes them together once the lock is let go.
    let mut lock = match store.log_database() {
        Some(Database::Sqlite(pool)) => {
            let mut conn = pool.connect_options().connect().await.expect("connect");
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .expect("the log's write lock");
            Some(conn)
        }
        _ => None,
    };
    let mut tasks = Vec::new();
    for (i, (stream, first)) in heads.iter().enumerate() {
        let (version, hash) = head(first);
        let req = match kind(i) {
            2 => request(*stream, version + 1, hash, new_events(1)),
            3 => request(*stream, version, [7; 32], new_events(2)),
            4 => {
                let mut events = new_events(2);
                events[1].event_id = reused;
                request(*stream, version, hash, events)
            }
            _ => request(
                *stream,
                version,
                hash,
                new_events(extra + 1 + (i % 3) as u32),
            ),
        };
        if kind(i) == 4 {
            // Queued after the others, so its events come last: past the first insert
            // statement when a round has more events than one takes.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = store.clone();
        tasks.push(tokio::spawn(async move { (i, store.append(req).await) }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(conn) = lock.as_mut() {
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .expect("let the lock go");
    }
    let mut last = Position::START;
    let mut written = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("task");
        match (kind(i), result) {
            (0 | 1, Ok(appended)) => {
                let right = 2 + u64::from(extra) + (i % 3) as u64;
                assert_eq!(appended.version, right, "stream {i}");
                for e in &appended.events {
                    assert!(e.position > Position::START, "stream {i}: a position");
                    last = last.max(e.position);
                }
                written.extend(appended.events);
            }
            (2 | 3, Err(StoreError::Conflict { stream_id, .. })) => {
                assert_eq!(stream_id, heads[i].0)
            }
            (4, Err(_)) => {}
            (kind, other) => panic!("stream {i} (kind {kind}, reuse {reuse}): {other:?}"),
        }
    }
    for (i, (stream, _)) in heads.iter().enumerate() {
        let stored = store.read_stream(*stream, 0).await.expect("read");
        let expected = if kind(i) < 2 {
            2 + extra as usize + i % 3
        } else {
            1
        };
        assert_eq!(stored.len(), expected, "stream {i}");
        assert_chained(&stored);
    }
    // Each written event is in the log once, as its append reported it (position included).
    let log = read_until(&**store, last).await;
    let mut ids: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), log.len(), "each event once in the log");
    for e in &written {
        assert!(log.contains(e), "event {} as reported", e.event_id);
    }
}

async fn read_stream_order_and_after_version(store: Arc<dyn EventStore>) {
    let (stream, a) = new_stream(&*store, 2).await;
    let (_other, _) = new_stream(&*store, 2).await;
    let (v, h) = head(&a);
    let b = store
        .append(request(stream, v, h, new_events(1)))
        .await
        .expect("append");
    let (v, h) = head(&b);
    store
        .append(request(stream, v, h, new_events(2)))
        .await
        .expect("append");

    let all = store.read_stream(stream, 0).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(all.iter().all(|e| e.stream_id == stream));
    let tail = store.read_stream(stream, 2).await.expect("read");
    assert_eq!(tail, all[2..]);
    assert!(store.read_stream(stream, 5).await.expect("read").is_empty());
    assert!(store
        .read_stream(stream, u64::MAX)
        .await
        .expect("read")
        .is_empty());
    assert!(store
        .read_stream(Uuid::now_v7(), 0)
        .await
        .expect("read")
        .is_empty());
}

async fn read_all_log_order_and_paging(store: Arc<dyn EventStore>) {
    // Sequential appends over interleaved streams: the log holds them in append order.
    let mut written: Vec<StoredEvent> = Vec::new();
    let mut heads = Vec::new();
    for i in 0..4u32 {
        let (stream, appended) = new_stream(&*store, 1 + i % 2).await;
        written.extend(appended.events.iter().cloned());
        heads.push((stream, head(&appended)));
    }
    for round in 0..3u32 {
        for (stream, (version, hash)) in heads.iter_mut() {
            let appended = store
                .append(request(*stream, *version, *hash, new_events(1 + round % 3)))
                .await
                .expect("append");
            written.extend(appended.events.iter().cloned());
            (*version, *hash) = head(&appended);
        }
    }

    let last = written.last().map(|e| e.position).expect("events");
    read_until(&*store, last).await;
    let whole = store
        .read_all(Position::START, 10_000)
        .await
        .expect("read_all");
    assert_eq!(
        whole, written,
        "one page: every event in append order, as written"
    );
    assert!(whole.windows(2).all(|w| w[0].position < w[1].position));

    for page in [1, 3, 7] {
        assert_eq!(
            read_everything(&*store, page).await,
            written,
            "pages of {page}"
        );
    }
    // Starting from the middle of the log.
    let middle = written[5].position;
    assert_eq!(
        store.read_all(middle, 4).await.expect("read_all"),
        written[6..10]
    );
    assert!(store.read_all(last, 10).await.expect("read_all").is_empty());
    assert!(store
        .read_all(Position::START, 0)
        .await
        .expect("read_all")
        .is_empty());
    let beyond = Position {
        tx: u64::MAX,
        seq: u64::MAX,
    };
    assert!(store
        .read_all(beyond, 10)
        .await
        .expect("read_all")
        .is_empty());
    let beyond = Position {
        tx: last.tx,
        seq: u64::MAX,
    };
    assert!(store
        .read_all(beyond, 10)
        .await
        .expect("read_all")
        .is_empty());

    assert_eq!(
        read_everything(&*store, 4).await,
        written,
        "a second full read"
    );
}

/// `read_batch(after, limit)` as owned events.
async fn batch(store: &dyn EventStore, after: Position, limit: usize) -> Vec<StoredEvent> {
    let batch = store.read_batch(after, limit).await.expect("read_batch");
    let events: Vec<StoredEvent> = batch
        .iter()
        .map(|e| e.map(|e| e.to_stored()))
        .collect::<Result<_, _>>()
        .expect("every event of the batch");
    assert_eq!(batch.last_position(), events.last().map(|e| e.position));
    events
}

/// The bulk read (binary COPY rows on PostgreSQL) returns exactly what `read_all` does, odd
/// values included, for any page.
async fn read_batch_is_read_all(store: Arc<dyn EventStore>) {
    let mut events = new_events(6);
    events[0].metadata = Vec::new();
    events[1].payload = vec![0, 0xff, 0, 0x80];
    events[2].event_type = "ticket.é✓ \"quoted\"".into();
    events[3].schema_version = u32::MAX;
    // Year 1 and the last microsecond of 9999.
    events[4].recorded_at = DateTime::from_timestamp_micros(-62_135_596_800_000_000).expect("t");
    events[5].recorded_at = DateTime::from_timestamp_micros(253_402_300_799_999_999).expect("t");
    let appended = store
        .append(request(Uuid::now_v7(), 0, ZERO_HASH, events))
        .await
        .expect("append");
    let (_, more) = new_stream(&*store, 4).await;
    let last = more.events[3].position;
    let written = read_until(&*store, last).await;
    assert_eq!(written.len(), 10);
    assert_eq!(written[..6], appended.events);
    for after in [
        Position::START,
        written[0].position,
        written[5].position,
        last,
    ] {
        for limit in [0, 1, 3, 10, 1000, usize::MAX] {
            assert_eq!(
                batch(&*store, after, limit).await,
                store.read_all(after, limit).await.expect("read_all"),
                "after {after}, limit {limit}"
            );
        }
    }
    let beyond = Position {
        tx: u64::MAX,
        seq: u64::MAX,
    };
    assert!(batch(&*store, beyond, 10).await.is_empty());
}

/// A bulk page stops at its byte bound: each event whose predecessors in the page hold less
/// than the bound (so at least one), and paging on gives every event once, in log order.
async fn read_batch_stops_at_its_byte_bound(store: Arc<dyn EventStore>) {
    let mut events = new_events(10);
    for (i, e) in events.iter_mut().enumerate() {
        // Sizes that differ, one of them empty.
        e.payload = vec![b'x'; 1000 * (i % 3)];
    }
    let appended = store
        .append(request(Uuid::now_v7(), 0, ZERO_HASH, events))
        .await
        .expect("append");
    let written = read_until(&*store, appended.events[9].position).await;
    let size = |e: &StoredEvent| e.payload.len() + e.metadata.len();
    for max_bytes in [0, 1, 1500, 2500, 100_000] {
        let (mut after, mut pages, mut read) = (Position::START, 0, Vec::new());
        loop {
            let batch = store
                .read_batch_within(after, 1000, max_bytes)
                .await
                .expect("read_batch_within");
            let page: Vec<StoredEvent> = batch
                .iter()
                .map(|e| e.map(|e| e.to_stored()))
                .collect::<Result<_, _>>()
                .expect("every event of the page");
            let Some(last) = page.last() else { break };
            // Every event but the last had less than the bound before it.
            let before: usize = page[..page.len() - 1].iter().map(size).sum();
            assert!(
                page.len() == 1 || before < max_bytes,
                "bound {max_bytes}: {} events, {before} bytes before the last",
                page.len()
            );
            // And the page stopped only at the bound, or the log's end.
            let all: usize = page.iter().map(size).sum();
            assert!(
                all >= max_bytes || read.len() + page.len() == written.len(),
                "bound {max_bytes}: a page of {all} bytes stopped short"
            );
            after = last.position;
            pages += 1;
            read.extend(page);
        }
        assert_eq!(
            read, written,
            "bound {max_bytes}: every event once, in order"
        );
        if max_bytes <= 1 {
            assert_eq!(pages, written.len(), "one event a page");
        }
        if max_bytes == 100_000 {
            assert_eq!(pages, 1);
        }
    }
}

/// A `read_all` page (what a projection applies in one batch) stops at [`PAGE_BYTES`] too:
/// events of a third of it each come three a page, each once and in order.
async fn read_all_stops_at_its_byte_bound(store: Arc<dyn EventStore>) {
    let mut events = new_events(7);
    for e in &mut events {
        e.payload = vec![b'x'; PAGE_BYTES / 3 + 1];
    }
    let appended = store
        .append(request(Uuid::now_v7(), 0, ZERO_HASH, events))
        .await
        .expect("append");
    let written = read_until(&*store, appended.events[6].position).await;
    let (mut after, mut sizes, mut read) = (Position::START, Vec::new(), Vec::new());
    loop {
        let page = store.read_all(after, 500).await.expect("read_all");
        let Some(last) = page.last() else { break };
        after = last.position;
        sizes.push(page.len());
        read.extend(page);
    }
    assert_eq!(
        sizes,
        [3, 3, 1],
        "pages of at most PAGE_BYTES and one event more"
    );
    assert_eq!(read, written, "every event once, in order");
}

/// PostgreSQL: a settled read (a rebuild's switch, past the gate) keeps the log pages' byte
/// bound too, and stops at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_settled_read_stops_at_its_byte_bound_and_its_end() {
    let Some(t) = ticketd_tests::postgres_store(2).await else {
        return;
    };
    let mut events = new_events(7);
    for e in &mut events {
        e.payload = vec![b'x'; PAGE_BYTES / 3 + 1];
    }
    let appended = t
        .store
        .append(request(Uuid::now_v7(), 0, ZERO_HASH, events))
        .await
        .expect("append");
    let upto = appended.events[5].position;
    let mut conn = t.store.pool().acquire().await.expect("a connection");
    let (mut after, mut sizes, mut read) = (Position::START, Vec::new(), Vec::new());
    loop {
        let page = ticketd_commands::postgres::read_settled_on(&mut conn, after, upto, 500)
            .await
            .expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        sizes.push(page.len());
        read.extend(page.into_iter().map(|e| e.position));
    }
    assert_eq!(
        sizes,
        [3, 3],
        "pages of at most PAGE_BYTES and one event more"
    );
    let written: Vec<Position> = appended.events[..6].iter().map(|e| e.position).collect();
    assert_eq!(read, written, "every event up to its end once, in order");
}

async fn hash_chain_verifies(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 3).await;
    let (mut version, mut hash) = head(&first);
    for n in [1, 2, 4] {
        let appended = store
            .append(request(stream, version, hash, new_events(n)))
            .await
            .expect("append");
        (version, hash) = head(&appended);
    }
    let stored = store.read_stream(stream, 0).await.expect("read");
    assert_eq!(stored.len(), 10);
    let mut prev = ZERO_HASH;
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1);
        assert_eq!(e.prev_hash, prev, "prev_hash of version {}", e.version);
        let recomputed = e.computed_hash();
        assert_eq!(e.hash, recomputed, "hash of version {}", e.version);
        prev = e.hash;
    }
    assert_eq!(prev, hash, "the last hash is the stream's head");
}

async fn stored_bytes_and_times_round_trip(store: Arc<dyn EventStore>) {
    let mut events = vec![
        new_event("ticket.opened", 1),
        new_event("ticket.comment_added", 2),
    ];
    events[0].metadata = Vec::new();
    events[0].payload = vec![0, 0xff, 0, 0x80];
    events[1].event_type = "ticket.é✓".into();
    events[1].schema_version = u32::MAX;
    // Nanoseconds are not kept: stored (and hashed) as whole microseconds.
    let with_nanos = micros_time(123_456) + TimeDelta::nanoseconds(789);
    events[1].recorded_at = with_nanos;
    let stream = Uuid::now_v7();
    let appended = store
        .append(request(stream, 0, ZERO_HASH, events.clone()))
        .await
        .expect("append");
    let stored = store.read_stream(stream, 0).await.expect("read");
    assert_eq!(stored, appended.events);
    for (written, read) in events.iter().zip(&stored) {
        assert_eq!(read.event_id, written.event_id);
        assert_eq!(read.event_type, written.event_type);
        assert_eq!(read.schema_version, written.schema_version);
        assert_eq!(read.metadata, written.metadata);
        assert_eq!(read.payload, written.payload);
    }
    assert_eq!(stored[0].recorded_at, events[0].recorded_at);
    assert_eq!(
        stored[0].recorded_at.timestamp_subsec_micros() % 1000,
        3,
        "micros kept"
    );
    assert_eq!(stored[1].recorded_at, micros_time(123_456));
    assert_eq!(read_until(&*store, stored[1].position).await, stored);
}

async fn idempotency_record_is_kept_with_the_append(store: Arc<dyn EventStore>) {
    let before = Utc::now() - TimeDelta::seconds(5);
    let stream = Uuid::now_v7();
    let mut req = request(stream, 0, ZERO_HASH, new_events(2));
    let record = idempotency_record("alice", "key-1");
    req.idempotency = Some(record.clone());
    store.append(req).await.expect("append");

    let hit = store
        .idempotency("alice", "key-1", before)
        .await
        .expect("lookup")
        .expect("found by (user, key)");
    assert_eq!(hit.fingerprint, record.fingerprint);
    assert_eq!(hit.response, record.response);
    assert!(hit.created_at > before && hit.created_at < Utc::now() + TimeDelta::seconds(5));
    assert_eq!(
        store
            .idempotency("bob", "key-1", before)
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .idempotency("alice", "key-2", before)
            .await
            .expect("lookup"),
        None
    );
    let later = Utc::now() + TimeDelta::seconds(5);
    assert_eq!(
        store
            .idempotency("alice", "key-1", later)
            .await
            .expect("lookup"),
        None,
        "not found when written before `since`"
    );

    // Any string is a key: NUL, quotes, non-ASCII.
    let odd = idempotency_record("u\0ser'\"é", "k\0ey ✓ ;--");
    let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    req.idempotency = Some(odd.clone());
    store.append(req).await.expect("append with an odd key");
    let hit = store
        .idempotency(&odd.user, &odd.key, before)
        .await
        .expect("lookup");
    assert_eq!(hit.map(|h| h.response), Some(odd.response));
}

async fn idempotency_key_taken_writes_nothing(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 1).await;
    let (version, hash) = head(&first);
    let mut req = request(stream, version, hash, new_events(1));
    req.idempotency = Some(idempotency_record("alice", "once"));
    let done = store.append(req).await.expect("append");
    let (version, hash) = head(&done);

    // The same key on another stream, and on the same stream at its right version.
    let other = Uuid::now_v7();
    let mut req = request(other, 0, ZERO_HASH, new_events(2));
    req.idempotency = Some(idempotency_record("alice", "once"));
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::IdempotencyKeyTaken)
    ));
    let mut req = request(stream, version, hash, new_events(1));
    req.idempotency = Some(idempotency_record("alice", "once"));
    assert!(matches!(
        store.append(req).await,
        Err(StoreError::IdempotencyKeyTaken)
    ));

    assert!(store.read_stream(other, 0).await.expect("read").is_empty());
    assert_eq!(store.read_stream(stream, 0).await.expect("read").len(), 2);
    let since = Utc::now() - TimeDelta::hours(1);
    let hit = store
        .idempotency("alice", "once", since)
        .await
        .expect("lookup")
        .expect("kept");
    assert_eq!(
        hit.fingerprint,
        idempotency_record("alice", "once").fingerprint
    );

    // Another user may use the same key.
    let mut req = request(other, 0, ZERO_HASH, new_events(1));
    req.idempotency = Some(idempotency_record("bob", "once"));
    store.append(req).await.expect("bob's key is his own");
}

async fn idempotency_only_append(store: Arc<dyn EventStore>) {
    let (stream, first) = new_stream(&*store, 2).await;
    let (version, hash) = head(&first);
    let mut req = request(stream, version, hash, Vec::new());
    req.idempotency = Some(idempotency_record("carol", "noop"));
    let done = store
        .append(req)
        .await
        .expect("a no-op command keeps its answer");
    assert_eq!(done.version, 2);
    assert!(done.events.is_empty());
    let since = Utc::now() - TimeDelta::hours(1);
    assert!(store
        .idempotency("carol", "noop", since)
        .await
        .expect("lookup")
        .is_some());
    assert_eq!(
        store.read_stream(stream, 0).await.expect("read"),
        first.events
    );
    // It is still checked against the stream's version.
    let mut req = request(stream, 1, hash, Vec::new());
    req.idempotency = Some(idempotency_record("carol", "stale"));
    assert_conflict(store.append(req).await, stream, 1, 2);
    assert!(store
        .idempotency("carol", "stale", since)
        .await
        .expect("lookup")
        .is_none());
    // The stream goes on at its version.
    store
        .append(request(stream, version, hash, new_events(1)))
        .await
        .expect("append after a no-op");
}

async fn purge_idempotency(store: Arc<dyn EventStore>) {
    let since = Utc::now() - TimeDelta::hours(1);
    for key in ["a", "b", "c"] {
        let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
        req.idempotency = Some(idempotency_record("dave", key));
        store.append(req).await.expect("append");
    }
    assert_eq!(
        store.purge_idempotency(since).await.expect("purge"),
        0,
        "none older"
    );
    assert!(store
        .idempotency("dave", "a", since)
        .await
        .expect("lookup")
        .is_some());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = Utc::now();
    let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    req.idempotency = Some(idempotency_record("dave", "d"));
    store.append(req).await.expect("append");

    assert_eq!(store.purge_idempotency(cut).await.expect("purge"), 3);
    for key in ["a", "b", "c"] {
        assert!(store
            .idempotency("dave", key, since)
            .await
            .expect("lookup")
            .is_none());
    }
    assert!(store
        .idempotency("dave", "d", since)
        .await
        .expect("lookup")
        .is_some());
    // A purged key may be used again.
    let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    req.idempotency = Some(idempotency_record("dave", "a"));
    store.append(req).await.expect("reuse after purge");
}

/// A purge takes every expired record, however many: SQLite's goes a chunk a write
/// (`PURGE_CHUNK`), so appends wait for one chunk at a time, not for the whole purge.
async fn a_purge_takes_every_expired_record(store: Arc<dyn EventStore>) {
    use futures::StreamExt;
    let n = 2 * ticketd_commands::sqlite::PURGE_CHUNK as usize + 7;
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let store = store.clone();
            async move {
                let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
                req.idempotency = Some(idempotency_record("erin", &format!("k{i}")));
                store.append(req).await.expect("append");
            }
        })
        .await;
    let since = Utc::now() - TimeDelta::hours(1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = Utc::now();
    let mut req = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    req.idempotency = Some(idempotency_record("erin", "kept"));
    store.append(req).await.expect("append");
    assert_eq!(store.purge_idempotency(cut).await.expect("purge"), n as u64);
    for key in ["k0", &format!("k{}", n - 1)] {
        let found = store.idempotency("erin", key, since).await.expect("lookup");
        assert!(found.is_none(), "{key}");
    }
    let kept = store.idempotency("erin", "kept", since).await;
    assert!(kept.expect("lookup").is_some());
}

async fn ticket_numbers_unique_and_increasing(store: Arc<dyn EventStore>) {
    let first = store.next_ticket_number().await.expect("number");
    assert!(first >= 1);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.next_ticket_number().await })
        })
        .collect();
    let mut seen = HashSet::new();
    for task in tasks {
        let n = task.await.expect("task").expect("number");
        assert!(n > first);
        assert!(seen.insert(n), "{n} handed out twice");
    }
    let max = seen.iter().copied().max().expect("numbers");
    let mut last = store.next_ticket_number().await.expect("number");
    assert!(last > max, "larger than every number before");
    for _ in 0..5 {
        let n = store.next_ticket_number().await.expect("number");
        assert!(n > last);
        last = n;
    }
}

/// A caller that goes away while numbers are drawn (a client disconnecting drops its request's
/// future) costs the callers drawn with it nothing: each of them still gets a number.
async fn a_caller_gone_mid_draw_costs_the_others_nothing(store: Arc<dyn EventStore>) {
    let mut seen = HashSet::new();
    for round in 0..100u64 {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.next_ticket_number().await })
            })
            .collect();
        // Let the draw begin (on the other worker), then drop every other caller wherever it
        // is: from at once to past a draw's round trip.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_micros(round * 7 % 500) {
            std::hint::spin_loop();
        }
        for task in tasks.iter().step_by(2) {
            task.abort();
        }
        for task in tasks {
            match task.await {
                Ok(n) => assert!(seen.insert(n.expect("a number")), "handed out twice"),
                Err(e) => assert!(e.is_cancelled(), "{e}"),
            }
        }
    }
}

async fn subscribe_ticks_after_append(store: Arc<dyn EventStore>) {
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    let (stream, appended) = new_stream(&*store, 2).await;
    let log = tick_until_visible(&*store, &mut rx, appended.events[1].position).await;
    assert_eq!(log, appended.events);

    // And again for a second append.
    let (version, hash) = head(&appended);
    let second = store
        .append(request(stream, version, hash, new_events(1)))
        .await
        .expect("append");
    let log = tick_until_visible(&*store, &mut rx, second.events[0].position).await;
    assert_eq!(log.len(), 3);
}

/// `log_reaches` answers at once for what is visible and waits out its timeout for a
/// position no event has reached.
async fn log_reaches_appended_positions(store: Arc<dyn EventStore>) {
    let wait = Duration::from_secs(5);
    assert!(log_reaches(&*store, Position::START, wait)
        .await
        .expect("start"));
    let (_, appended) = new_stream(&*store, 3).await;
    for e in &appended.events {
        assert!(
            log_reaches(&*store, e.position, wait).await.expect("reach"),
            "{}",
            e.position
        );
    }
    let last = appended.events[2].position;
    let future = Position {
        tx: last.tx.saturating_mul(2),
        seq: last.seq + 1_000_000,
    };
    let started = std::time::Instant::now();
    let short = Duration::from_millis(150);
    assert!(!log_reaches(&*store, future, short).await.expect("future"));
    assert!(started.elapsed() >= short, "it waited for the timeout");
}

async fn position_round_trips(store: Arc<dyn EventStore>) {
    let (_, appended) = new_stream(&*store, 3).await;
    let samples = appended.events.iter().map(|e| e.position).chain([
        Position::START,
        Position {
            tx: u64::MAX,
            seq: u64::MAX,
        },
        Position { tx: 7, seq: 0 },
    ]);
    for p in samples {
        let text = p.to_string();
        assert_eq!(text.parse::<Position>(), Ok(p), "{text}");
    }
    for bad in [
        "",
        "-",
        "1",
        "1-",
        "-1",
        "a-1",
        "1-b",
        "1-2-3",
        " 1-2",
        "+1-2",
        "18446744073709551616-0",
        "1-99999999999999999999",
    ] {
        assert!(bad.parse::<Position>().is_err(), "{bad:?} must not parse");
    }
    // Ordering is by (tx, seq).
    assert!(Position { tx: 1, seq: 9 } < Position { tx: 2, seq: 1 });
}

/// Set in the child process of [`sqlite_acknowledged_appends_survive_sigkill`].
const SIGKILL_CHILD_DB: &str = "TICKETD_TEST_SIGKILL_CHILD_DB";

/// Every append acknowledged before a SIGKILL is there after reopening: the test runs itself
/// as a child that appends (printing each acknowledged event id), and kills it mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_appends_survive_sigkill() {
    if let Ok(url) = std::env::var(SIGKILL_CHILD_DB) {
        return append_until_killed(&url).await;
    }
    let ticketd_tests::SqliteTestStore {
        store,
        url,
        dir: _dir,
    } = ticketd_tests::sqlite_store().await;
    drop(store);
    let exe = std::env::current_exe().expect("test binary");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "sqlite_acknowledged_appends_survive_sigkill",
            "--nocapture",
        ])
        .env(SIGKILL_CHILD_DB, &url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut acked = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.len() < 300 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("child acknowledges appends")
            .expect("read child output")
            .expect("child still running");
        if let Some(id) = line.strip_prefix("acked ") {
            acked.insert(id.parse::<Uuid>().expect("event id"));
        }
    }
    child.start_kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    child.wait().await.expect("reap child");
    // Lines already in the pipe were acknowledged before the kill too.
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(id) = line.strip_prefix("acked ") {
            acked.insert(id.parse::<Uuid>().expect("event id"));
        }
    }

    let store = SqliteStore::open(&url).await.expect("reopen");
    let stored: HashSet<Uuid> = read_everything(&store, 1000)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    eprintln!("acknowledged {}, stored {}", acked.len(), stored.len());
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {lost:?}",
        lost.len()
    );
}

async fn append_until_killed(url: &str) {
    let store = Arc::new(SqliteStore::open(url).await.expect("open in child"));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (stream, mut at) = (Uuid::now_v7(), (0, ZERO_HASH));
                // Bounded, in case the parent dies without killing us.
                for _ in 0..100_000 {
                    let appended = store
                        .append(request(stream, at.0, at.1, new_events(1)))
                        .await
                        .expect("append");
                    at = head(&appended);
                    println!("acked {}", appended.events[0].event_id);
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.await;
    }
}

/// Appends reach the database file itself, not only its WAL, without any commit crossing
/// SQLite's automatic checkpoint threshold: the store's own checkpointer copies them. A
/// connection opened `immutable` reads the file alone and ignores the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpointer_copies_appends_into_the_database_file() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::ConnectOptions;
    use std::str::FromStr;

    let t = ticketd_tests::sqlite_store().await;
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let (_, appended) = new_stream(&*t.store, 3).await;
        ids.extend(appended.events.iter().map(|e| e.event_id));
    }
    // Far fewer WAL pages than even SQLite's default threshold of 1,000.
    let file_only = SqliteConnectOptions::from_str(&t.url)
        .expect("url")
        .immutable(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut in_file = 0;
    while tokio::time::Instant::now() < deadline {
        // Each try on a fresh connection: an immutable one caches what it read.
        if let Ok(mut conn) = file_only.connect().await {
            let found: Result<Vec<Uuid>, _> = sqlx::query_scalar("SELECT event_id FROM events")
                .fetch_all(&mut conn)
                .await;
            if let Ok(found) = found {
                in_file = found.iter().filter(|id| ids.contains(*id)).count();
                if in_file == ids.len() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{in_file} of {} events reached the database file",
        ids.len()
    );
}

/// SQLite keeps its read models in a file of their own, with a write lock of their own: a
/// projection batch holding it (here a transaction left open) keeps no append waiting. In one
/// file the append waited for the lock, up to the busy timeout of 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_appends_go_on_while_the_read_models_are_locked() {
    let t = ticketd_tests::sqlite_store().await;
    let Some(ticketd_commands::Database::Sqlite(views)) = t.store.database() else {
        panic!("SQLite read models");
    };
    let mut batch = views.acquire().await.expect("a read-model connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *batch)
        .await
        .expect("the read models' write lock");
    let (stream, _) = tokio::time::timeout(Duration::from_secs(2), new_stream(&*t.store, 3))
        .await
        .expect("the append waits for no lock of the read models");
    assert_eq!(t.store.read_stream(stream, 0).await.expect("read").len(), 3);
    sqlx::query("ROLLBACK")
        .execute(&mut *batch)
        .await
        .expect("release the lock");
}

/// The read models' file belongs to its log. Read models built from another log (the log's
/// file replaced), or further along this one (the log's file restored from a backup), hold
/// checkpoints past events they never applied, so the store refuses them at start, naming the
/// file, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_read_models_of_another_log() {
    let t = ticketd_tests::sqlite_store().await;
    new_stream(&*t.store, 3).await;
    t.store.migrate().await.expect("its own read models, again");
    let Some(ticketd_commands::Database::Sqlite(views)) = t.store.database() else {
        panic!("SQLite read models");
    };
    let source: Vec<u8> = sqlx::query_scalar("SELECT log_id FROM views_source")
        .fetch_one(&views)
        .await
        .expect("bound to its log");

    sqlx::query("UPDATE views_source SET log_id = randomblob(16)")
        .execute(&views)
        .await
        .expect("another log's");
    let refused = t
        .store
        .migrate()
        .await
        .expect_err("another log's read models");
    assert!(
        refused.to_string().contains("built from another log")
            && refused.to_string().contains("ticketd.views.db"),
        "{refused}"
    );
    sqlx::query("UPDATE views_source SET log_id = ?")
        .bind(&source)
        .execute(&views)
        .await
        .expect("its own again");

    sqlx::query(
        "INSERT INTO projection_checkpoints (name, position_tx, position_seq, updated_at) \
         VALUES ('tickets', 0, 4, 0)",
    )
    .execute(&views)
    .await
    .expect("a checkpoint past the log's 3 events");
    let refused = t
        .store
        .migrate()
        .await
        .expect_err("read models ahead of the log");
    assert!(
        refused
            .to_string()
            .contains("events this log does not hold"),
        "{refused}"
    );
    let bound: Vec<Vec<u8>> = sqlx::query_scalar("SELECT log_id FROM views_source")
        .fetch_all(&views)
        .await
        .expect("source");
    assert_eq!(bound, [source], "a refusal changes nothing");
}

/// Two processes starting at once on a read-models file that no log has claimed yet bind it
/// once, to their one log, and both start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_starting_at_once_bind_the_read_models_once() {
    let t = ticketd_tests::sqlite_store().await;
    let Some(Database::Sqlite(views)) = t.store.database() else {
        panic!("SQLite read models");
    };
    let other = SqliteStore::open(&t.url).await.expect("a second store");
    // Rounds, since two starts meet in the same moment only some of the time.
    for round in 0..20 {
        sqlx::query("DELETE FROM views_source")
            .execute(&views)
            .await
            .expect("unclaimed again");
        let (a, b) = tokio::join!(t.store.check_views(), other.check_views());
        a.unwrap_or_else(|e| panic!("round {round}: the first starts: {e}"));
        b.unwrap_or_else(|e| panic!("round {round}: the second starts: {e}"));
        let bound: i64 = sqlx::query_scalar("SELECT count(*) FROM views_source")
            .fetch_one(&views)
            .await
            .expect("count");
        assert_eq!(bound, 1, "round {round}: bound once");
    }
}

/// The snapshot gate: an event committed by a newer transaction stays out of `read_all` while
/// an older one is open, and the older one's events come first once it commits (log order is
/// transaction order, not commit order). Subscribers get a tick when both become visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_all_waits_for_older_transactions() {
    use sqlx::{ConnectOptions, Connection};

    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let (_, first) = new_stream(&*store, 1).await;
    read_until(&*store, first.events[0].position).await;

    // An older transaction writes an event but does not commit yet.
    let mut conn = t.schema.options.connect().await.expect("connect");
    let mut older = conn.begin().await.expect("begin");
    let (older_event, older_tx) = insert_event(&mut older).await;

    let (_, newer) = new_stream(&*store, 1).await;
    assert!(newer.events[0].position.tx > older_tx as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        read_everything(&*store, 100).await,
        first.events,
        "a newer commit stays hidden while an older transaction is open"
    );
    assert_eq!(
        batch(&*store, Position::START, 100).await,
        first.events,
        "from the bulk read too"
    );

    assert!(
        !log_reaches(
            &*store,
            newer.events[0].position,
            Duration::from_millis(200)
        )
        .await
        .expect("gate"),
        "log_reaches waits behind the gate too"
    );

    let mut ticks = store.subscribe();
    ticks.borrow_and_update();
    let waiter = tokio::spawn({
        let store = store.clone();
        let position = newer.events[0].position;
        async move { log_reaches(&*store, position, Duration::from_secs(5)).await }
    });
    older.commit().await.expect("commit");
    assert!(
        waiter.await.expect("join").expect("reach"),
        "reached once the gate opened"
    );
    let log = tick_until_visible(&*store, &mut ticks, newer.events[0].position).await;
    let ids: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        [
            first.events[0].event_id,
            older_event,
            newer.events[0].event_id
        ],
        "the older transaction's event comes first"
    );
}

/// A second store on `t`'s schema under an application name of its own, so that
/// `pg_stat_activity` finds this store's connections only; the name; and a pool to end them
/// from.
async fn named_store(
    t: &ticketd_tests::PostgresTestStore,
    prefix: &str,
) -> (ticketd_commands::PostgresStore, String, sqlx::PgPool) {
    let app = format!("{prefix}-{}", Uuid::new_v4().simple());
    let store = ticketd_commands::PostgresStore::connect_with(
        t.schema.options.clone().application_name(&app),
        2,
    )
    .await
    .expect("store");
    let admin = sqlx::PgPool::connect_with(t.schema.options.clone())
        .await
        .expect("admin");
    (store, app, admin)
}

/// PostgreSQL: the pool pings a connection before use only once it has been idle a while
/// (every use would be a round trip more). One the server closed while it sat idle, past that
/// while, is replaced unseen: the next append and read succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_replaces_connections_closed_while_idle() {
    let Some(t) = ticketd_tests::postgres_store(2).await else {
        return;
    };
    let (store, app, admin) = named_store(&t, "idle").await;
    let (stream, first) = new_stream(&store, 1).await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    assert!(!ended.is_empty(), "the store's connections were ended");
    // Idle past the point where the pool pings before use.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = store
        .read_stream(stream, 0)
        .await
        .expect("a read after the break");
    assert_eq!(events.len(), 1);
    let more = store
        .append(request(stream, 1, first.events[0].hash, new_events(1)))
        .await
        .expect("an append after the break");
    assert_eq!(more.version, 2);
}

/// Inserts one event of a new stream by hand, in the caller's (open) transaction: its id and
/// the transaction's.
async fn insert_event(conn: &mut sqlx::PgConnection) -> (Uuid, i64) {
    let event = Uuid::now_v7();
    let tx: i64 = sqlx::query_scalar(
        "INSERT INTO events (stream_id, version, event_id, event_type, schema_version, \
         recorded_at, metadata, payload, prev_hash, hash) \
         VALUES ($1, 1, $2, 'older', 1, now(), '', '', $3, $3) RETURNING tx_id::text::bigint",
    )
    .bind(Uuid::now_v7())
    .bind(event)
    .bind(&ZERO_HASH[..])
    .fetch_one(conn)
    .await
    .expect("insert in the open transaction");
    (event, tx)
}

/// The gate looks past bystanders, transactions registered as never appending (projection
/// batches): a newer commit shows while one is open. An appending transaction older than the
/// bystander still holds the newer commit back until it commits itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_all_looks_past_bystanders() {
    use sqlx::{ConnectOptions, Connection};

    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let store: Arc<dyn EventStore> = t.store.clone();
    let bystanders = store
        .bystanders()
        .expect("a PostgreSQL store has bystanders");

    let mut appending = t.schema.options.connect().await.expect("connect");
    let mut older = appending.begin().await.expect("begin");
    let (older_event, older_tx) = insert_event(&mut older).await;
    // Registering gives the bystander a transaction id, newer than the appending one's.
    let mut standing = t.schema.options.connect().await.expect("connect");
    let mut bystander = standing.begin().await.expect("begin");
    let registered = bystanders.enter(&mut bystander).await.expect("register");

    let (_, newer) = new_stream(&*store, 1).await;
    let newer_at = newer.events[0].position;
    assert!(newer_at.tx > older_tx as u64);
    assert!(
        !log_reaches(&*store, newer_at, Duration::from_millis(300))
            .await
            .expect("gate"),
        "the older appending transaction still holds the gate"
    );
    assert!(read_everything(&*store, 100).await.is_empty());

    let mut ticks = store.subscribe();
    ticks.borrow_and_update();
    older.commit().await.expect("commit");
    let log = tick_until_visible(&*store, &mut ticks, newer_at).await;
    let ids: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        [older_event, newer.events[0].event_id],
        "both show, in log order, while the bystander is still open"
    );
    assert_eq!(
        batch(&*store, Position::START, 100).await,
        log,
        "bulk read too"
    );

    // The same transaction unregistered holds the gate like any other.
    drop(registered);
    let (_, last) = new_stream(&*store, 1).await;
    assert!(
        !log_reaches(&*store, last.events[0].position, Duration::from_millis(300))
            .await
            .expect("gate"),
        "an open transaction no longer registered holds the gate"
    );
    bystander.rollback().await.expect("rollback");
    read_until(&*store, last.events[0].position).await;
}

/// Another process's append (here: another store on the same schema) ticks subscribers too,
/// through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_other_process_appends_tick_subscribers() {
    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let other = ticketd_commands::PostgresStore::connect_with(t.schema.options.clone(), 2)
        .await
        .expect("second store");
    // Let its listener start before the append.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ticks = other.subscribe();
    ticks.borrow_and_update();
    let (_, appended) = new_stream(&*t.store, 2).await;
    let log = tick_until_visible(&other, &mut ticks, appended.events[1].position).await;
    assert_eq!(log, appended.events);
}

/// PostgreSQL: ticket numbers come through a connection of their own; when it breaks (a server
/// restart, a terminated backend), the next draw makes a new one instead of failing its opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ticket_numbers_survive_a_broken_connection() {
    let Some(t) = ticketd_tests::postgres_store(2).await else {
        return;
    };
    let (store, app, admin) = named_store(&t, "numbers").await;
    let first = store.next_ticket_number().await.expect("number");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND query LIKE '%nextval%'",
    )
    .bind(&app)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    assert_eq!(ended, [true], "the numbers' connection, and only it");
    let next = store
        .next_ticket_number()
        .await
        .expect("a number after the break");
    assert!(next > first, "{next} > {first}");
}

/// Closing the store finishes the appends already queued, then closes every connection, so
/// SQLite folds each WAL into its file and deletes it: a stopped service leaves `ticketd.db`
/// and `ticketd.views.db` whole on their own, as a back-up copies them. Requests after it
/// fail as unavailable instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_close_folds_the_wal_files_into_the_databases() {
    let t = ticketd_tests::sqlite_store().await;
    let data = t.dir.path().join("data");
    let queued: Vec<_> = (0..20)
        .map(|_| {
            let store = t.store.clone();
            tokio::spawn(async move { new_stream(&*store, 2).await })
        })
        .collect();
    let mut streams = Vec::new();
    for task in queued {
        streams.push(task.await.expect("append").0);
    }
    let Some(Database::Sqlite(views)) = t.store.database() else {
        panic!("SQLite read models");
    };
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, position_tx, position_seq, updated_at) \
         VALUES ('tickets', 0, 1, 0)",
    )
    .execute(&views)
    .await
    .expect("a read-model write");
    for file in ["ticketd.db-wal", "ticketd.views.db-wal"] {
        assert!(data.join(file).exists(), "{file} while the store is open");
    }

    t.store.close().await;
    for file in ["ticketd.db-wal", "ticketd.views.db-wal"] {
        assert!(!data.join(file).exists(), "{file} after close");
    }
    let late = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    let refused = tokio::time::timeout(Duration::from_secs(5), t.store.append(late))
        .await
        .expect("an append after close answers");
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );

    let again = SqliteStore::open(&t.url).await.expect("reopen");
    again.migrate().await.expect("the same log and read models");
    for stream in streams {
        assert_eq!(again.read_stream(stream, 0).await.expect("read").len(), 2);
    }
}

/// PostgreSQL: closing the store ends every connection it opened (the pool's, the ticket
/// numbers', the LISTEN), and requests after it fail as unavailable instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_close_ends_every_connection() {
    let Some(t) = ticketd_tests::postgres_store(2).await else {
        return;
    };
    let (store, app, admin) = named_store(&t, "close").await;
    new_stream(&store, 2).await;
    store.next_ticket_number().await.expect("a ticket number");
    let connections = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(&admin)
        .await
        .expect("count")
    };
    assert!(connections().await >= 2, "the pool's and the numbers'");

    tokio::time::timeout(Duration::from_secs(5), store.close())
        .await
        .expect("close returns");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections left after close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    let refused = tokio::time::timeout(Duration::from_secs(5), store.append(late))
        .await
        .expect("an append after close answers");
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    // `/readyz` names the missing writer, not just the closed pool.
    let unready = store.ping().await.expect_err("not ready after close");
    assert!(unready.to_string().contains("batch writer"), "{unready}");
}

/// PostgreSQL: the batch writer never puts two appends to one stream in one statement (the
/// statement reads every head as it was before it, so the second would conflict with the
/// first). Here the writer is held in a batch by a row lock while an append to a new stream and
/// its follow-up at version 1 queue up behind it; once released, both succeed, the follow-up in
/// the next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_to_one_stream_queued_together_go_in_turn() {
    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let (store, app, admin) = named_store(&t, "held").await;
    let store = Arc::new(store);
    let (blocker, at) = new_stream(&*store, 1).await;
    let mut lock = admin.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM streams WHERE stream_id = $1 FOR UPDATE")
        .bind(blocker)
        .execute(&mut *lock)
        .await
        .expect("lock the blocker's head");
    let held = {
        let store = store.clone();
        let next = request(blocker, 1, at.events[0].hash, new_events(1));
        tokio::spawn(async move { store.append(next).await })
    };
    // The writer is inside that append's statement, waiting for the lock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&app)
        .fetch_one(&admin)
        .await
        .expect("count");
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stream = Uuid::now_v7();
    let first = request(stream, 0, ZERO_HASH, new_events(1));
    // The hash the opening append will write, so the follow-up can name it before it commits.
    let first_hash = ticketd_commands::sqlite::chain(&first).expect("chain")[0].hash;
    let opened = {
        let store = store.clone();
        tokio::spawn(async move { store.append(first).await })
    };
    // Queued after the opening append, and valid only once it has committed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let followed = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(request(stream, 1, first_hash, new_events(1)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    lock.commit().await.expect("release the lock");

    held.await.expect("task").expect("the blocked append");
    let opened = opened.await.expect("task").expect("the opening append");
    assert_eq!(opened.events[0].hash, first_hash);
    let followed = followed.await.expect("task").expect("the follow-up append");
    assert_eq!(followed.version, 2);
}

/// SQLite: a close lets the writer finish the appends already queued, and refuses those made
/// after it. The log's write lock, held on a connection of its own, keeps the writer waiting
/// in `BEGIN IMMEDIATE` (inside its busy timeout) while the appends queue and the close begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_close_finishes_the_appends_already_queued() {
    let t = ticketd_tests::sqlite_store().await;
    let Some(Database::Sqlite(log)) = t.store.log_database() else {
        panic!("SQLite log");
    };
    let mut lock = log.connect_options().connect().await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("the log's write lock");
    let queued: Vec<_> = (0..16)
        .map(|_| {
            let store = t.store.clone();
            let stream = Uuid::now_v7();
            tokio::spawn(async move {
                let done = store
                    .append(request(stream, 0, ZERO_HASH, new_events(2)))
                    .await;
                (stream, done)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closing = {
        let store = t.store.clone();
        tokio::spawn(async move { store.close().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = request(Uuid::now_v7(), 0, ZERO_HASH, new_events(1));
    let refused = tokio::time::timeout(Duration::from_secs(5), t.store.append(late))
        .await
        .expect("an append after the close began answers");
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("let the lock go");
    drop(lock);
    tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .expect("close returns")
        .expect("task");

    let again = SqliteStore::open(&t.url).await.expect("reopen");
    for task in queued {
        let (stream, done) = task.await.expect("task");
        assert_eq!(done.expect("a queued append is finished").version, 2);
        assert_eq!(again.read_stream(stream, 0).await.expect("read").len(), 2);
    }
}
