//! Kills `ticketd serve` with SIGKILL during a burst of concurrent commands, restarts it on the
//! same data, and checks that every acknowledged command's events are there with intact hash
//! chains — on SQLite and on PostgreSQL.

mod serving;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use ticketd_commands::{EventStore, PostgresStore, SqliteStore};
use ticketd_domain::{Event, ZERO_HASH};

use serving::{token, Server};

#[derive(Default)]
struct Acknowledged {
    /// ticket id → highest version acknowledged for it
    versions: HashMap<Uuid, u64>,
    comments: HashSet<Uuid>,
}

/// 16 clients open tickets and comment on them as fast as they can until stopped.
async fn burst(base: String, acked: Arc<Mutex<Acknowledged>>, stop_at: Instant) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let base = base.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let customer = token(&format!("crash-{i}"), "customer");
            let mut mine: Vec<Uuid> = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                n += 1;
                let (url, body) = match mine.last() {
                    Some(id) if !n.is_multiple_of(3) => (
                        format!("{base}/v1/tickets/{id}/comments"),
                        json!({"body": format!("comment {n}")}),
                    ),
                    _ => (
                        format!("{base}/v1/tickets"),
                        json!({"subject": "crash", "description": format!("ticket {n}")}),
                    ),
                };
                let Ok(r) = http
                    .post(url)
                    .bearer_auth(&customer)
                    .json(&body)
                    .send()
                    .await
                else {
                    break; // the server is gone
                };
                if !r.status().is_success() {
                    continue;
                }
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                let mut a = acked.lock().expect("lock");
                if let Some(id) = v["id"].as_str().and_then(|s| s.parse().ok()) {
                    mine.push(id);
                    a.versions.insert(id, 1);
                } else if let Some(c) = v["comment_id"].as_str().and_then(|s| s.parse().ok()) {
                    a.comments.insert(c);
                    let id = *mine.last().expect("a ticket");
                    let version = v["version"].as_u64().expect("version");
                    let e = a.versions.entry(id).or_insert(0);
                    *e = (*e).max(version);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn check(store: Arc<dyn EventStore>, acked: &Acknowledged) {
    let mut comments_seen = HashSet::new();
    for (id, version) in &acked.versions {
        let events = store.read_stream(*id, 0).await.expect("read stream");
        assert!(
            events.len() as u64 >= *version,
            "ticket {id}: acknowledged version {version}, found {}",
            events.len()
        );
        let mut prev = ZERO_HASH;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "versions contiguous");
            assert_eq!(e.prev_hash, prev, "chain links");
            let h = e.computed_hash();
            assert_eq!(e.hash, h, "hash of {id} v{}", e.version);
            prev = e.hash;
            if let Ok(Event::Commented(c)) =
                Event::decode(&e.event_type, e.schema_version, &e.payload)
            {
                comments_seen.insert(c.comment_id);
            }
        }
    }
    let lost: Vec<_> = acked.comments.difference(&comments_seen).collect();
    assert!(lost.is_empty(), "acknowledged comments lost: {lost:?}");
}

async fn kill_during_burst(database_url: &str, data_dir: &std::path::Path) -> Acknowledged {
    let server = Server::start(database_url, data_dir, &[]).await;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop_at = Instant::now() + Duration::from_secs(30);
    let burst_task = tokio::spawn(burst(server.base.clone(), acked.clone(), stop_at));
    // Let the burst run, then kill the server mid-flight.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = acked.lock().expect("lock").comments.len();
        if n >= 200 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    server.kill();
    let _ = burst_task.await;
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(
        acked.comments.len() >= 50,
        "the burst made progress before the kill"
    );
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_command_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/ticketd.db", dir.path().display());
    let acked = kill_during_burst(&url, dir.path()).await;
    // The restarted service serves the same data.
    let server = Server::start(&url, dir.path(), &[]).await;
    let id = acked.versions.keys().next().expect("a ticket");
    let r = reqwest::Client::new()
        .get(format!("{}/v1/tickets/{id}", server.base))
        .bearer_auth(token("auditor", "auditor"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    server.kill();
    let store = SqliteStore::open(&url).await.expect("open");
    check(Arc::new(store), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_command_after_sigkill() {
    let Some(schema) = ticketd_tests::PgTestSchema::create().await else {
        return;
    };
    let url = schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = kill_during_burst(&url, dir.path()).await;
    let server = Server::start(&url, dir.path(), &[]).await;
    server.kill();
    let store = PostgresStore::connect_with(schema.options.clone(), 4)
        .await
        .expect("connect");
    check(Arc::new(store), &acked).await;
}
