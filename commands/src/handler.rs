//! The command handler: load a ticket, `decide`, append at the expected version.
//!
//! State comes from a bounded cache of recent tickets; a stale entry (another process wrote
//! since) shows up as a version conflict at append time, which reloads and retries. With
//! `If-Match` there is no retry: the caller asked for that exact version. A command that
//! appends nothing (refused, or a no-op) is answered from the store's state, never the cache's.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use ticketd_domain::{
    decide, evolve, Actor, Command, CommandKind, DomainError, Event, Metadata, Recorded, Role,
    SlaPolicy, State, Ticket, HASH_LEN, ZERO_HASH,
};

use crate::error::CommandError;
use crate::store::{
    AppendRequest, EventRef, EventStore, IdempotencyRecord, NewEvent, Position, StoreError,
    StoredEvent,
};

/// How long an idempotency key is honoured (CONTRACT §4).
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// Attempts at an append that keeps losing the race for a ticket, before giving up.
const MAX_ATTEMPTS: usize = 8;

/// Per-ticket write locks, striped: commands on one ticket in this process queue rather than
/// race, so optimistic retries are left for writers in other processes. Unrelated tickets
/// share a stripe only by hash collision, which merely orders them.
const LOCK_STRIPES: usize = 4096;

/// The most the state cache holds, by [`Ticket::weight`]: at a few kB a ticket its count bounds
/// it first; this bounds it when tickets carry large custom fields (up to most of 1 MiB each).
const CACHE_BYTES: usize = 128 << 20;

/// A ticket's state with what an append needs to follow it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: State,
    pub version: u64,
    pub last_hash: [u8; HASH_LEN],
    /// Position of the stream's last event (`START` for an empty stream).
    pub last_position: Position,
}

impl Loaded {
    /// About its bytes in memory.
    fn weight(&self) -> usize {
        std::mem::size_of::<Loaded>() + self.state.as_ref().map_or(0, Ticket::weight)
    }

    fn empty() -> Self {
        Loaded {
            state: None,
            version: 0,
            last_hash: ZERO_HASH,
            last_position: Position::START,
        }
    }

    /// Folds stored events onto this state, checking they continue it.
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), StoreError> {
        for stored in events {
            if stored.version != self.version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "stream {} jumps from version {} to {}",
                    stored.stream_id, self.version, stored.version
                )));
            }
            let recorded = decode(stored)?;
            self.state = evolve(self.state.take(), &recorded);
            self.version = stored.version;
            self.last_hash = stored.hash;
            self.last_position = stored.position;
        }
        Ok(())
    }
}

/// Recent tickets' states, least recently used first out, bounded by count and by weight.
struct StateCache {
    entries: lru::LruCache<Uuid, Loaded>,
    bytes: usize,
    max_bytes: usize,
}

impl StateCache {
    fn new(capacity: NonZeroUsize, max_bytes: usize) -> Self {
        StateCache {
            entries: lru::LruCache::new(capacity),
            bytes: 0,
            max_bytes,
        }
    }

    fn get(&mut self, id: &Uuid) -> Option<Loaded> {
        self.entries.get(id).cloned()
    }

    fn version(&self, id: &Uuid) -> Option<u64> {
        self.entries.peek(id).map(|l| l.version)
    }

    fn put(&mut self, id: Uuid, loaded: Loaded) {
        let weight = loaded.weight();
        if weight > self.max_bytes {
            self.pop(&id);
            return;
        }
        // The entry it replaces, or the one the count bound pushed out.
        if let Some((_, old)) = self.entries.push(id, loaded) {
            self.bytes = self.bytes.saturating_sub(old.weight());
        }
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, old)) => self.bytes = self.bytes.saturating_sub(old.weight()),
                None => break,
            }
        }
    }

    fn pop(&mut self, id: &Uuid) {
        if let Some(old) = self.entries.pop(id) {
            self.bytes = self.bytes.saturating_sub(old.weight());
        }
    }
}

/// Decodes a stored event into what `evolve` folds.
pub fn decode(stored: &StoredEvent) -> Result<Recorded, StoreError> {
    decode_ref(&EventRef::from(stored))
}

/// [`decode`] of an event read in place (a page of [`EventStore::read_batch`]).
pub fn decode_ref(stored: &EventRef<'_>) -> Result<Recorded, StoreError> {
    let corrupt = |what: String| {
        StoreError::Corrupt(format!(
            "event {} (stream {} version {}): {what}",
            stored.event_id, stored.stream_id, stored.version
        ))
    };
    let event = Event::decode(stored.event_type, stored.schema_version, stored.payload)
        .map_err(|e| corrupt(e.to_string()))?;
    let metadata = Metadata::decode(stored.metadata).map_err(|e| corrupt(e.to_string()))?;
    Ok(Recorded {
        version: stored.version,
        recorded_at: stored.recorded_at,
        actor: metadata.actor,
        event,
    })
}

/// What the caller attaches to a command besides its content.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `If-Match`: the version the caller last saw.
    pub expected_version: Option<u64>,
    pub idempotency: Option<Idempotency>,
    pub correlation_id: Option<Uuid>,
}

/// An `Idempotency-Key` with a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// The result of a command: the ticket after it, and where its last event sits.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ticket: Ticket,
    pub version: u64,
    /// The log position of the last event written (for a no-op, the ticket's last event).
    pub position: Position,
    /// Events this command appended (empty for a no-op or an idempotent repeat).
    pub appended: Vec<StoredEvent>,
    /// The id of the comment a comment command added.
    pub comment_id: Option<Uuid>,
    /// True when this answers a repeat of an earlier request with the same key.
    pub replayed: bool,
}

/// What is kept under an idempotency key: enough to rebuild the first answer from the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    stream_id: Uuid,
    version: u64,
    #[serde(default)]
    comment_id: Option<Uuid>,
}

/// Runs commands against an event store.
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    sla: SlaPolicy,
    cache: Mutex<StateCache>,
    locks: Box<[tokio::sync::Mutex<()>]>,
    appended: std::sync::atomic::AtomicU64,
}

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>, sla: SlaPolicy, cache_capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(cache_capacity).unwrap_or(NonZeroUsize::MIN);
        CommandHandler {
            store,
            sla,
            cache: Mutex::new(StateCache::new(capacity, CACHE_BYTES)),
            appended: std::sync::atomic::AtomicU64::new(0),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Events appended through this handler since it started (for `/metrics`).
    pub fn events_appended(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn lock_for(&self, id: Uuid) -> &tokio::sync::Mutex<()> {
        // v7 ids lead with a timestamp; the tail is random.
        let (_, low) = id.as_u64_pair();
        &self.locks[(low as usize) % self.locks.len()]
    }

    fn cached(&self, id: Uuid) -> Option<Loaded> {
        // A poisoned lock only means another task panicked mid-update of a cache; treat it as
        // a miss rather than spreading the panic.
        self.cache.lock().ok().and_then(|mut c| c.get(&id))
    }

    fn remember(&self, id: Uuid, loaded: &Loaded) {
        if let Ok(mut c) = self.cache.lock() {
            // Never let a slower writer put back an older state.
            if c.version(&id).is_none_or(|old| old <= loaded.version) {
                c.put(id, loaded.clone());
            }
        }
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut c) = self.cache.lock() {
            c.pop(&id);
        }
    }

    /// The ticket's current state, read through to the store so it is never stale.
    pub async fn load_fresh(&self, id: Uuid) -> Result<Loaded, StoreError> {
        let mut loaded = self.cached(id).unwrap_or_else(Loaded::empty);
        let tail = self.store.read_stream(id, loaded.version).await?;
        if !tail.is_empty() {
            loaded.apply(&tail)?;
            self.remember(id, &loaded);
        }
        Ok(loaded)
    }

    /// The ticket's state from the cache, or the store on a miss; true when from the store.
    async fn load(&self, id: Uuid) -> Result<(Loaded, bool), StoreError> {
        match self.cached(id) {
            Some(loaded) => Ok((loaded, false)),
            None => Ok((self.load_fresh(id).await?, true)),
        }
    }

    /// Opens a ticket (CONTRACT §4.1). The id and number are assigned here.
    pub async fn open(
        &self,
        actor: Actor,
        mut open: ticketd_domain::OpenTicket,
        options: Options,
    ) -> Result<Outcome, CommandError> {
        if let Some(outcome) = self.replay(&actor, &options).await? {
            return Ok(outcome);
        }
        open.id = Uuid::now_v7();
        // Refused before a number is drawn: drawing one commits the counter, and a command
        // that got an error changes nothing (CONTRACT §2), a gap in the numbers included.
        decide(
            &None,
            &Command {
                actor: actor.clone(),
                at: now_micros(),
                kind: CommandKind::Open(open.clone()),
            },
            &self.sla,
        )?;
        open.number = self.store.next_ticket_number().await?;
        self.run(open.id, &actor, CommandKind::Open(open), &options)
            .await
    }

    /// Runs a command on an existing ticket (CONTRACT §4.2–§4.7).
    pub async fn execute(
        &self,
        ticket_id: Uuid,
        actor: Actor,
        kind: CommandKind,
        options: Options,
    ) -> Result<Outcome, CommandError> {
        if let Some(outcome) = self.replay(&actor, &options).await? {
            return Ok(outcome);
        }
        match self.run(ticket_id, &actor, kind, &options).await {
            // A retry that overlapped its first attempt can be refused for what the first did
            // (412 on the version it moved, 409 on the ticket it withdrew) without reaching an
            // append, which would have found the key. The first's events came with its key's
            // record, so if the refusal saw them, the record is there: answer as the first did.
            Err(
                e @ (CommandError::VersionMismatch { .. }
                | CommandError::Domain(DomainError::InvalidTransition(_))),
            ) => match self.replay(&actor, &options).await {
                Ok(Some(outcome)) => Ok(outcome),
                // No record, or none to be read now: the refusal stands. (A key reused for
                // another request, or a record that does not decode, is said as such.)
                Ok(None) | Err(CommandError::Store(StoreError::Unavailable(_))) => Err(e),
                Err(other) => Err(other),
            },
            answer => answer,
        }
    }

    async fn run(
        &self,
        ticket_id: Uuid,
        actor: &Actor,
        kind: CommandKind,
        options: &Options,
    ) -> Result<Outcome, CommandError> {
        let comment_id = match &kind {
            CommandKind::Comment(c) => Some(c.comment_id),
            _ => None,
        };
        let _serial = self.lock_for(ticket_id).lock().await;
        // `refreshed`: the state was read from the store during this command. Only an append
        // checks a cached state; an answer that appends nothing (a refusal, a no-op) is given
        // from a refreshed one, or another process's writes would go unseen.
        let (mut loaded, mut refreshed) = match kind {
            // `open` drew this id just now (UUIDv7), so the store has no stream to read: no
            // round trip. Were one there, the append at version 0 would conflict and the retry
            // below would read it.
            CommandKind::Open(_) => (Loaded::empty(), true),
            _ => self.load(ticket_id).await?,
        };
        for _ in 0..MAX_ATTEMPTS {
            let cmd = Command {
                actor: actor.clone(),
                at: now_micros(),
                kind: kind.clone(),
            };
            // Visibility first, so If-Match cannot reveal that a hidden ticket exists.
            if !matches!(kind, CommandKind::Open(_)) {
                match &loaded.state {
                    Some(t) if t.visible_to(actor) => {}
                    _ if !refreshed => {
                        // A cached miss may be stale: check the store before saying 404.
                        loaded = self.load_fresh(ticket_id).await?;
                        refreshed = true;
                        continue;
                    }
                    _ => return Err(DomainError::NotFound.into()),
                }
            }
            if let Some(expected) = options.expected_version {
                if expected != loaded.version {
                    if !refreshed {
                        loaded = self.load_fresh(ticket_id).await?;
                        refreshed = true;
                        continue;
                    }
                    // A command that fails on the ticket as it is answers that failure, not
                    // 412 (RFC 9110 §13.2.1; CONTRACT §3: on a withdrawn ticket every command
                    // answers 409): a client re-reading for a new version would fail anyway.
                    decide(&loaded.state, &cmd, &self.sla)?;
                    return Err(CommandError::VersionMismatch {
                        expected,
                        current: loaded.version,
                    });
                }
            }
            let decided = decide(&loaded.state, &cmd, &self.sla);
            let appends = matches!(&decided, Ok(events)
                if !events.is_empty() || options.idempotency.is_some());
            if !appends && !refreshed {
                loaded = self.load_fresh(ticket_id).await?;
                refreshed = true;
                continue;
            }
            let events = decided?;
            if !appends {
                return outcome(&loaded, vec![], comment_id, false);
            }
            let request =
                self.append_request(ticket_id, &loaded, &cmd, &events, options, comment_id)?;
            match self.store.append(request).await {
                Ok(appended) => {
                    self.appended.fetch_add(
                        appended.events.len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    loaded.apply(&appended.events)?;
                    self.remember(ticket_id, &loaded);
                    return outcome(&loaded, appended.events, comment_id, false);
                }
                Err(StoreError::Conflict { .. }) => {
                    // Another writer came first. With `If-Match`, the next round answers from
                    // the ticket as it is now: the command's own refusal if it fails there
                    // (on a withdrawn ticket, 409), else 412.
                    self.forget(ticket_id);
                    loaded = self.load_fresh(ticket_id).await?;
                    refreshed = true;
                }
                Err(StoreError::IdempotencyKeyTaken) => {
                    // A concurrent request with the same key won; answer as it did.
                    if let Some(outcome) = self.replay(actor, options).await? {
                        return Ok(outcome);
                    }
                    // The key's record is older than the window, which no longer counts it
                    // (CONTRACT §4), and the hourly purge has not removed it yet: remove it
                    // now, and this command runs as a new one.
                    let since = Utc::now() - Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
                    self.store.purge_idempotency(since).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention)
    }

    fn append_request(
        &self,
        ticket_id: Uuid,
        loaded: &Loaded,
        cmd: &Command,
        events: &[Event],
        options: &Options,
        comment_id: Option<Uuid>,
    ) -> Result<AppendRequest, CommandError> {
        let metadata = Metadata {
            actor: cmd.actor.clone(),
            correlation_id: options.correlation_id,
            causation_id: None,
            idempotency_key: options.idempotency.as_ref().map(|i| i.key.clone()),
        }
        .encode()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut new_events = Vec::with_capacity(events.len());
        for event in events {
            new_events.push(NewEvent {
                event_id: Uuid::now_v7(),
                event_type: event.type_name().to_owned(),
                schema_version: event.schema_version(),
                recorded_at: cmd.at,
                metadata: metadata.clone(),
                payload: event
                    .encode()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            });
        }
        let idempotency = match &options.idempotency {
            Some(i) => Some(IdempotencyRecord {
                user: key_owner(&cmd.actor),
                key: i.key.clone(),
                fingerprint: i.fingerprint.clone(),
                response: rmp_serde::to_vec_named(&Remembered {
                    stream_id: ticket_id,
                    version: loaded.version + events.len() as u64,
                    comment_id,
                })
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            }),
            None => None,
        };
        Ok(AppendRequest {
            stream_id: ticket_id,
            expected_version: loaded.version,
            prev_hash: loaded.last_hash,
            events: new_events,
            idempotency,
        })
    }

    /// The first answer to a repeated request, rebuilt from the stream as it stood then.
    async fn replay(
        &self,
        actor: &Actor,
        options: &Options,
    ) -> Result<Option<Outcome>, CommandError> {
        let Some(idem) = &options.idempotency else {
            return Ok(None);
        };
        let since = Utc::now() - Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
        let owner = key_owner(actor);
        let Some(hit) = self.store.idempotency(&owner, &idem.key, since).await? else {
            return Ok(None);
        };
        if hit.fingerprint != idem.fingerprint {
            return Err(CommandError::IdempotencyKeyReused);
        }
        let remembered: Remembered = rmp_serde::from_slice(&hit.response)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))?;
        let events = self.store.read_stream(remembered.stream_id, 0).await?;
        let upto: Vec<StoredEvent> = events
            .into_iter()
            .take_while(|e| e.version <= remembered.version)
            .collect();
        let mut loaded = Loaded::empty();
        loaded.apply(&upto)?;
        if loaded.version != remembered.version {
            return Err(StoreError::Corrupt(format!(
                "idempotency record names version {} of stream {}, which has {}",
                remembered.version, remembered.stream_id, loaded.version
            ))
            .into());
        }
        outcome(&loaded, vec![], remembered.comment_id, true).map(Some)
    }
}

fn outcome(
    loaded: &Loaded,
    appended: Vec<StoredEvent>,
    comment_id: Option<Uuid>,
    replayed: bool,
) -> Result<Outcome, CommandError> {
    let ticket = loaded
        .state
        .clone()
        .ok_or(CommandError::Domain(DomainError::NotFound))?;
    Ok(Outcome {
        ticket,
        version: loaded.version,
        position: loaded.last_position,
        appended,
        comment_id,
        replayed,
    })
}

/// Now, to the microsecond: the precision every store keeps and the hash covers.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Whose `Idempotency-Key`s a command's is among (CONTRACT §4: per user). A public-form
/// submitter is known only by the address they typed, which may be a signed-in user's id:
/// their keys are kept apart, so neither can replay or block the other's.
fn key_owner(actor: &Actor) -> String {
    match actor.role {
        Role::Public => format!("public form\0{}", actor.id),
        _ => actor.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticketd_domain::FieldValue;

    /// A ticket whose custom fields come to about `bytes`.
    fn loaded_with(bytes: usize) -> Loaded {
        let opened = ticketd_domain::event::Opened {
            ticket_id: Uuid::now_v7(),
            number: 1,
            subject: "s".into(),
            description: "d".into(),
            priority: ticketd_domain::Priority::None,
            channel: ticketd_domain::Channel::Web,
            requester: "alice".into(),
            requester_name: None,
            org: None,
            cc: vec![],
            fields: [("k".to_owned(), FieldValue::Text("x".repeat(bytes)))].into(),
            due_at: None,
            contact_email: None,
        };
        let recorded = Recorded {
            version: 1,
            recorded_at: Utc::now(),
            actor: ticketd_domain::Actor {
                id: "alice".into(),
                name: None,
                role: ticketd_domain::Role::Customer,
                org: None,
                org_wide: false,
            },
            event: Event::Opened(opened),
        };
        Loaded {
            state: evolve(None, &recorded),
            version: 1,
            last_hash: ZERO_HASH,
            last_position: Position::START,
        }
    }

    #[test]
    fn the_state_cache_is_bounded_by_weight_as_well_as_count() {
        let capacity = NonZeroUsize::new(1_000).expect("non-zero");
        let mut cache = StateCache::new(capacity, 1 << 20);
        let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.put(*id, loaded_with(100_000));
        }
        // 20 tickets of ~100 kB in 1 MiB: the oldest went, the newest stayed.
        assert!(cache.bytes <= 1 << 20, "{} bytes", cache.bytes);
        assert!(cache.entries.len() < 11, "{} entries", cache.entries.len());
        assert!(cache.get(&ids[19]).is_some() && cache.get(&ids[0]).is_none());
        let counted: usize = cache.entries.iter().map(|(_, l)| l.weight()).sum();
        assert_eq!(cache.bytes, counted, "the running total is the entries'");
        // Replacing and removing keep the total true.
        cache.put(ids[19], loaded_with(10));
        cache.pop(&ids[18]);
        let counted: usize = cache.entries.iter().map(|(_, l)| l.weight()).sum();
        assert_eq!(cache.bytes, counted);
        // A ticket heavier than the whole bound is not kept (and drops its older state).
        cache.put(ids[19], loaded_with(2 << 20));
        assert!(cache.get(&ids[19]).is_none());
        // Small ones are bounded by the count.
        let mut small = StateCache::new(NonZeroUsize::new(3).expect("non-zero"), 1 << 20);
        for id in &ids {
            small.put(*id, loaded_with(10));
        }
        assert_eq!(small.entries.len(), 3);
        let counted: usize = small.entries.iter().map(|(_, l)| l.weight()).sum();
        assert_eq!(small.bytes, counted);
    }

    #[test]
    fn a_ticket_weighs_its_custom_fields() {
        let light = loaded_with(10).weight();
        let heavy = loaded_with(500_000).weight();
        assert_eq!(heavy - light, 500_000 - 10, "{light} {heavy}");
    }
}
