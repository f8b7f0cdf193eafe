//! A test double over a real store: [`Hooked`] hands every call to `inner`, after the
//! [`StoreHooks`] a test overrides (count calls, hold or fail a read, race an append).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use ticketd_commands::{
    AppendRequest, Appended, EventBatch, EventStore, IdempotencyHit, Position, StoreResult,
    StoredEvent,
};

/// What a test does before a call reaches the real store; each default does nothing.
#[async_trait]
pub trait StoreHooks: Send + Sync + 'static {
    /// Before `request` is appended to `inner`; an error is the append's answer.
    async fn before_append(
        &self,
        _inner: &dyn EventStore,
        _request: &AppendRequest,
    ) -> StoreResult<()> {
        Ok(())
    }
    async fn before_read_stream(&self) {}
    /// Before a page of the log is read; an error is the read's answer.
    async fn before_read_all(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// `inner` with `hooks` in front of it.
pub struct Hooked<H> {
    pub inner: Arc<dyn EventStore>,
    pub hooks: H,
}

impl<H: StoreHooks> Hooked<H> {
    pub fn new(inner: Arc<dyn EventStore>, hooks: H) -> Arc<Hooked<H>> {
        Arc::new(Hooked { inner, hooks })
    }
}

#[async_trait]
impl<H: StoreHooks> EventStore for Hooked<H> {
    async fn append(&self, request: AppendRequest) -> StoreResult<Appended> {
        self.hooks
            .before_append(self.inner.as_ref(), &request)
            .await?;
        self.inner.append(request).await
    }
    async fn read_stream(&self, stream_id: Uuid, after: u64) -> StoreResult<Vec<StoredEvent>> {
        self.hooks.before_read_stream().await;
        self.inner.read_stream(stream_id, after).await
    }
    async fn read_all(&self, after: Position, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.hooks.before_read_all().await?;
        self.inner.read_all(after, limit).await
    }
    async fn read_batch_within(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<EventBatch> {
        self.hooks.before_read_all().await?;
        self.inner.read_batch_within(after, limit, max_bytes).await
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
