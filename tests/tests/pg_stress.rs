//! Concurrent writers against a concurrent whole-log reader: the reader must see every
//! acknowledged event exactly once, in an order that never changes (CONTRACT §7.1).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use ticketd_commands::postgres::Bystanders;
use ticketd_commands::{EventStore, Position, StoreError, StoredEvent};
use ticketd_domain::{HASH_LEN, ZERO_HASH};
use ticketd_tests::{head, new_events, postgres_store, read_everything, request, sqlite_store};

const WRITERS: usize = 32;
const EVENTS_PER_WRITER: usize = 200;
/// Streams every writer races for (the others are each writer's own).
const HOT_STREAMS: usize = 4;
const OWN_STREAMS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(60);
/// Transactions registered as never appending, open at once while the writers run.
const BYSTANDERS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writers_and_a_reader() {
    if let Some(t) = postgres_store(16).await {
        // Meanwhile transactions that never append come and go, registered as bystanders
        // the way projection batches are: the gate looks past them and must still pass no
        // appending transaction.
        let bystanders = t
            .store
            .bystanders()
            .expect("a PostgreSQL store has bystanders");
        let done = Arc::new(AtomicBool::new(false));
        let standing: Vec<_> = (0..BYSTANDERS)
            .map(|i| {
                tokio::spawn(stand_by(
                    t.schema.options.clone(),
                    bystanders.clone(),
                    done.clone(),
                    i,
                ))
            })
            .collect();
        stress("postgres", t.store.clone()).await;
        done.store(true, Ordering::Relaxed);
        for s in standing {
            assert!(s.await.expect("bystander") > 0, "a bystander stood by");
        }
    }
}

/// Opens, registers, holds (0 to 19 ms) and commits one bystander transaction after another
/// until `done`; returns how many.
async fn stand_by(
    options: PgConnectOptions,
    bystanders: Bystanders,
    done: Arc<AtomicBool>,
    seed: u64,
) -> usize {
    let mut conn = options.connect().await.expect("connect");
    let (mut held, mut pause) = (0, seed);
    while !done.load(Ordering::Relaxed) {
        let mut tx = conn.begin().await.expect("begin");
        let registered = bystanders.enter(&mut tx).await.expect("register");
        pause = (pause * 7 + 3) % 20;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        tx.commit().await.expect("commit");
        drop(registered);
        held += 1;
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writers_and_a_reader() {
    let t = sqlite_store().await;
    stress("sqlite", t.store.clone()).await;
}

/// What a writer got acknowledged: (event id, stream, version).
type Acked = Vec<(Uuid, Uuid, u64)>;

async fn stress(backend: &str, store: Arc<dyn EventStore>) {
    let hot: Arc<Vec<Uuid>> = Arc::new((0..HOT_STREAMS).map(|_| Uuid::now_v7()).collect());
    let total = WRITERS * EVENTS_PER_WRITER;
    let started = Instant::now();

    let reader = tokio::spawn(read_while_written(store.clone(), total));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(store.clone(), w, hot.clone())))
        .collect();
    let mut acked: Acked = Vec::with_capacity(total);
    let mut appends = 0;
    for writer in writers {
        let (events, count) = writer.await.expect("writer");
        acked.extend(events);
        appends += count;
    }
    let written_in = started.elapsed();
    let seen = reader.await.expect("reader");
    eprintln!(
        "{backend}: {appends} appends ({total} events) in {written_in:?} ({:.0} appends/s); reader done after {:?}",
        appends as f64 / written_in.as_secs_f64(),
        started.elapsed()
    );

    // Every acknowledged event exactly once, and nothing else.
    assert_eq!(acked.len(), total);
    assert_eq!(
        seen.len(),
        total,
        "the reader saw as many events as were acknowledged"
    );
    let seen_ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(seen_ids.len(), total, "no event seen twice");
    let acked_ids: HashSet<Uuid> = acked.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        seen_ids, acked_ids,
        "the reader saw exactly the acknowledged events"
    );

    // The log agrees with what writers were told, and keeps each stream in version order.
    let told: HashMap<Uuid, (Uuid, u64)> = acked.iter().map(|(id, s, v)| (*id, (*s, *v))).collect();
    let mut stream_versions: HashMap<Uuid, u64> = HashMap::new();
    for e in &seen {
        assert_eq!(told.get(&e.event_id), Some(&(e.stream_id, e.version)));
        let last = stream_versions.entry(e.stream_id).or_insert(0);
        assert_eq!(
            e.version,
            *last + 1,
            "stream {} in version order",
            e.stream_id
        );
        *last = e.version;
    }
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "positions strictly increase"
    );

    // Nothing more shows up, and a second full read gives the very same order.
    let last = seen.last().map_or(Position::START, |e| e.position);
    assert!(store.read_all(last, 10).await.expect("read_all").is_empty());
    let again = read_everything(&*store, 1000).await;
    let order = |events: &[StoredEvent]| {
        events
            .iter()
            .map(|e| (e.position, e.event_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        order(&again),
        order(&seen),
        "a second full read gives the same order"
    );
}

/// Pages the log from the start until it has seen `total` events.
async fn read_while_written(store: Arc<dyn EventStore>, total: usize) -> Vec<StoredEvent> {
    let deadline = Instant::now() + DEADLINE;
    let mut ticks = store.subscribe();
    let mut seen: Vec<StoredEvent> = Vec::with_capacity(total);
    let mut after = Position::START;
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "reader saw only {} of {total} events",
            seen.len()
        );
        let batch = store.read_all(after, 300).await.expect("read_all");
        if batch.is_empty() {
            // Ticks say when to look again; the timeout guards against a missed one.
            let _ = tokio::time::timeout(Duration::from_millis(50), ticks.changed()).await;
            continue;
        }
        for e in batch {
            assert!(
                e.position > after,
                "positions strictly increase while paging"
            );
            after = e.position;
            seen.push(e);
        }
    }
    seen
}

/// Appends exactly `EVENTS_PER_WRITER` events: 1–3 at a time, mostly to streams of its own,
/// every fourth append to a hot stream shared with every writer (retrying on conflicts).
async fn write(store: Arc<dyn EventStore>, w: usize, hot: Arc<Vec<Uuid>>) -> (Acked, usize) {
    let mut own: Vec<(Uuid, (u64, [u8; HASH_LEN]))> = (0..OWN_STREAMS)
        .map(|_| (Uuid::now_v7(), (0, ZERO_HASH)))
        .collect();
    let mut hot_heads: HashMap<Uuid, (u64, [u8; HASH_LEN])> =
        hot.iter().map(|s| (*s, (0, ZERO_HASH))).collect();
    let mut acked = Vec::with_capacity(EVENTS_PER_WRITER);
    let mut appends = 0;
    let mut i = 0;
    while acked.len() < EVENTS_PER_WRITER {
        let n = (1 + (i + w) % 3).min(EVENTS_PER_WRITER - acked.len()) as u32;
        let appended = if i % 4 == 0 {
            let stream = hot[(w + i) % hot.len()];
            loop {
                let (version, hash) = hot_heads.get(&stream).copied().unwrap_or((0, ZERO_HASH));
                match store
                    .append(request(stream, version, hash, new_events(n)))
                    .await
                {
                    Ok(appended) => break appended,
                    Err(StoreError::Conflict { .. }) => {
                        // Catch up with the winners and try again at the new head.
                        let newer = store
                            .read_stream(stream, version)
                            .await
                            .expect("read_stream");
                        if let Some(last) = newer.last() {
                            hot_heads.insert(stream, (last.version, last.hash));
                        }
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
        } else {
            let (stream, (version, hash)) = own[i % OWN_STREAMS];
            store
                .append(request(stream, version, hash, new_events(n)))
                .await
                .unwrap_or_else(|e| panic!("writer {w}: {e}"))
        };
        let stream = appended.events[0].stream_id;
        if let Some(slot) = own.iter_mut().find(|(s, _)| *s == stream) {
            slot.1 = head(&appended);
        } else {
            hot_heads.insert(stream, head(&appended));
        }
        acked.extend(
            appended
                .events
                .iter()
                .map(|e| (e.event_id, e.stream_id, e.version)),
        );
        appends += 1;
        i += 1;
    }
    (acked, appends)
}

/// Not a check but a measurement (`cargo test --release -- --ignored --nocapture`): appends/s
/// of single-event appends by 32 writers to streams of their own, and CPU time per append
/// (this process, and PostgreSQL's processes when the server is local), which stays
/// meaningful on a busy machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn append_throughput() {
    const APPENDS: usize = 300;
    let sqlite = sqlite_store().await;
    let mut stores: Vec<(&str, Arc<dyn EventStore>)> = vec![("sqlite", sqlite.store.clone())];
    let pool: u32 = std::env::var("TICKETD_BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let pg = postgres_store(pool).await;
    if let Some(t) = &pg {
        stores.push(("postgres", t.store.clone()));
    }
    for (backend, store) in stores {
        let (own_before, server_before) = (cpu_ticks(&["self"]), cpu_ticks(&postgres_pids()));
        let started = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (stream, mut head_now) = (Uuid::now_v7(), (0, ZERO_HASH));
                    for _ in 0..APPENDS {
                        let appended = store
                            .append(request(stream, head_now.0, head_now.1, new_events(1)))
                            .await
                            .expect("append");
                        head_now = head(&appended);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer");
        }
        let elapsed = started.elapsed();
        let own = cpu_ticks(&["self"]).saturating_sub(own_before);
        let server = cpu_ticks(&postgres_pids()).saturating_sub(server_before);
        let n = WRITERS * APPENDS;
        // Clock ticks are 10 ms on Linux.
        let per = |ticks: u64| ticks as f64 * 10_000.0 / n as f64;
        eprintln!(
            "{backend}: {n} appends in {elapsed:?}: {:.0} appends/s; CPU per append: {:.0} µs here, {:.0} µs in postgres processes",
            n as f64 / elapsed.as_secs_f64(),
            per(own),
            per(server)
        );
    }
}

/// utime + stime of the given /proc entries, in clock ticks (0 where unreadable).
fn cpu_ticks<S: AsRef<str>>(pids: &[S]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{}/stat", pid.as_ref())).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn postgres_pids() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}
