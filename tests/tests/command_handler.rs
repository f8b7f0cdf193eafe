//! What the command handler asks of the store, on SQLite and PostgreSQL: an open reads no
//! stream (its id was just drawn), and an open whose id a stream somehow holds already fails
//! on the append's version check, reads the stream on its retry, and appends nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_commands::{
    AppendRequest, Appended, CommandError, CommandHandler, EventStore, IdempotencyHit, Options,
    Position, StoreResult, StoredEvent,
};
use ticketd_domain::{Actor, DomainError, OpenTicket, Role, SlaPolicy};
use ticketd_tests::both_backends;

/// A store that counts stream reads and, with `rival` set, lets a rival open the same stream
/// just before the first append at version 0.
struct Watched {
    inner: Arc<dyn EventStore>,
    stream_reads: AtomicUsize,
    rival: AtomicBool,
}

impl Watched {
    fn new(inner: Arc<dyn EventStore>, rival: bool) -> Arc<Watched> {
        Arc::new(Watched {
            inner,
            stream_reads: AtomicUsize::new(0),
            rival: AtomicBool::new(rival),
        })
    }

    fn reads(&self) -> usize {
        self.stream_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventStore for Watched {
    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        if request.expected_version == 0 && self.rival.swap(false, Ordering::SeqCst) {
            // The same opening under fresh event ids: a stream that already holds this id.
            let mut rival = request.clone();
            for e in &mut rival.events {
                e.event_id = Uuid::now_v7();
            }
            self.inner.append(rival).await?;
        }
        self.inner.append(request).await
    }
    async fn read_stream(&self, stream_id: Uuid, after: u64) -> StoreResult<Vec<StoredEvent>> {
        self.stream_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_stream(stream_id, after).await
    }
    async fn read_all(&self, after: Position, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.inner.read_all(after, limit).await
    }
    async fn idempotency(
        &self,
        user: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyHit>> {
        self.inner.idempotency(user, key, since).await
    }
    async fn purge_idempotency(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.purge_idempotency(before).await
    }
    async fn next_ticket_number(&self) -> StoreResult<u64> {
        self.inner.next_ticket_number().await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

fn customer() -> Actor {
    Actor {
        id: "alice".into(),
        name: None,
        role: Role::Customer,
        org: Some("acme".into()),
        org_wide: false,
    }
}

fn printer() -> OpenTicket {
    OpenTicket {
        subject: "Printer".into(),
        description: "On fire.".into(),
        ..OpenTicket::default()
    }
}

async fn an_open_reads_no_stream(store: Arc<dyn EventStore>) {
    let watched = Watched::new(store, false);
    let h = CommandHandler::new(watched.clone(), SlaPolicy::default(), 100);
    let out = h
        .open(customer(), printer(), Options::default())
        .await
        .expect("open");
    assert_eq!(out.version, 1);
    assert_eq!(watched.reads(), 0, "stream reads during an open");
}

async fn an_open_of_a_taken_id_conflicts_and_appends_nothing(store: Arc<dyn EventStore>) {
    let watched = Watched::new(store.clone(), true);
    let h = CommandHandler::new(watched.clone(), SlaPolicy::default(), 100);
    let refused = h.open(customer(), printer(), Options::default()).await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Domain(DomainError::InvalidTransition(_)))
        ),
        "{refused:?}"
    );
    assert_eq!(watched.reads(), 1, "the retry reads the stream once");
    let log = ticketd_tests::read_everything(store.as_ref(), 100).await;
    assert_eq!(log.len(), 1, "only the rival's opening: {log:?}");
}

both_backends!(
    an_open_reads_no_stream,
    an_open_of_a_taken_id_conflicts_and_appends_nothing
);
