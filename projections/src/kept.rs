//! What a projection's batches leave in memory of each ticket (its state, its facts), so the
//! next batch need not read those rows back.
//!
//! The entries are exactly what the rows hold once the batch that wrote them has committed,
//! and they are trusted only by a batch that follows the checkpoint where the last one ended
//! (see [`crate::Projection::apply_batch`]): a batch that fails takes them out and leaves
//! nothing, and one that never committed leaves the checkpoint before it, where nothing kept
//! is at.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use ticketd_commands::{Position, StoredEvent};

/// The bound of one generation, by the entries' [`Weigh::weight`].
const GENERATION_BYTES: usize = 32 << 20;

/// About how many bytes a kept entry takes in memory.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

/// A batch's start: what the last batch left for the batch's tickets (`found`), the entries
/// it left for others (`rest`, kept again by [`Keeper::finish`]), and the tickets whose rows
/// the batch must read (`to_read`).
pub(crate) struct Started<V> {
    pub(crate) rest: Kept<V>,
    pub(crate) found: Vec<(Uuid, V)>,
    pub(crate) to_read: Vec<Uuid>,
}

/// The entries a projection's last batch left, as of the position that batch ended at. Two
/// generations bound them: when the newer one passes [`GENERATION_BYTES`], the older one is
/// dropped and the newer one takes its place, so a ticket worked on now stays and one left
/// alone for long goes.
pub(crate) struct Kept<V> {
    at: Option<Position>,
    new: HashMap<Uuid, (V, usize)>,
    old: HashMap<Uuid, (V, usize)>,
    new_bytes: usize,
}

impl<V> Default for Kept<V> {
    fn default() -> Self {
        Kept {
            at: None,
            new: HashMap::new(),
            old: HashMap::new(),
            new_bytes: 0,
        }
    }
}

impl<V: Weigh> Kept<V> {
    /// Takes out ticket `id`'s entry.
    fn take(&mut self, id: &Uuid) -> Option<V> {
        if let Some((v, size)) = self.new.remove(id) {
            self.new_bytes = self.new_bytes.saturating_sub(size);
            return Some(v);
        }
        self.old.remove(id).map(|(v, _)| v)
    }

    /// Keeps ticket `id`'s entry.
    fn put(&mut self, id: Uuid, v: V) {
        let size = v.weight();
        self.old.remove(&id);
        if let Some((_, was)) = self.new.insert(id, (v, size)) {
            self.new_bytes = self.new_bytes.saturating_sub(was);
        }
        self.new_bytes += size;
        if self.new_bytes > GENERATION_BYTES {
            self.old = std::mem::take(&mut self.new);
            self.new_bytes = 0;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

/// One projection's [`Kept`], between its batches.
pub(crate) struct Keeper<V>(Mutex<Kept<V>>);

impl<V> Default for Keeper<V> {
    fn default() -> Self {
        Keeper(Mutex::new(Kept::default()))
    }
}

impl<V: Weigh> Keeper<V> {
    /// Starts a batch of `events` that follow `after` (see [`crate::Projection::apply_batch`]):
    /// takes out what the last batch left, if it ended there, and names the batch's tickets
    /// that have no entry and a row to read: with a checkpoint, a ticket opened after it has
    /// none yet.
    pub(crate) fn start(&self, after: Option<Position>, events: &[StoredEvent]) -> Started<V> {
        let mut rest = self.take_at(after);
        let opened: HashSet<Uuid> = match after {
            Some(_) => events
                .iter()
                .filter(|e| e.version == 1)
                .map(|e| e.stream_id)
                .collect(),
            None => HashSet::new(),
        };
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut found = Vec::new();
        let mut to_read = Vec::new();
        for id in ids {
            match rest.take(&id) {
                Some(v) => found.push((id, v)),
                None if opened.contains(&id) => {}
                None => to_read.push(id),
            }
        }
        Started {
            rest,
            found,
            to_read,
        }
    }

    /// Ends a batch of `events` that followed `after` and wrote `entries`: keeps them with
    /// `rest`, as of where the batch ended (nothing for events that followed no checkpoint).
    /// Call it once the batch's writes are done: a batch that fails before keeps nothing.
    pub(crate) fn finish(
        &self,
        mut rest: Kept<V>,
        after: Option<Position>,
        events: &[StoredEvent],
        entries: impl IntoIterator<Item = (Uuid, V)>,
    ) {
        for (id, v) in entries {
            rest.put(id, v);
        }
        self.keep(rest, after.map(|a| events.last().map_or(a, |e| e.position)));
    }

    /// Drops every entry: the rows they mirror may be gone (see [`crate::Projection::forget`]).
    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Kept::default();
    }

    /// What the last batch left, if it ended at `after`; else nothing. Taken out, so a batch
    /// that fails leaves nothing behind.
    fn take_at(&self, after: Option<Position>) -> Kept<V> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = std::mem::take(&mut *guard);
        if after.is_some() && kept.at == after {
            kept
        } else {
            Kept::default()
        }
    }

    /// Keeps what a batch ending at `at` left; nothing when its events followed no checkpoint
    /// (`at` is `None`).
    fn keep(&self, mut kept: Kept<V>, at: Option<Position>) {
        if at.is_none() {
            return;
        }
        kept.at = at;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = kept;
    }

    /// How many tickets it holds now (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value and its weight.
    #[derive(Debug, PartialEq)]
    struct W(u32, usize);

    impl Weigh for W {
        fn weight(&self) -> usize {
            self.1
        }
    }

    fn at(seq: u64) -> Option<Position> {
        Some(Position { tx: 1, seq })
    }

    /// An event of stream `id` at `version`, at log position `seq`.
    fn event(id: Uuid, version: u64, seq: u64) -> StoredEvent {
        StoredEvent {
            position: Position { tx: 1, seq },
            stream_id: id,
            version,
            event_id: Uuid::from_u128(u128::from(seq)),
            event_type: "ticket.commented".into(),
            schema_version: 1,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            metadata: Vec::new(),
            payload: Vec::new(),
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn entries_are_trusted_only_by_the_batch_that_follows() {
        let keeper: Keeper<W> = Keeper::default();
        let id = Uuid::from_u128(7);
        let first = [event(id, 2, 5)];
        let started = keeper.start(at(0), &first);
        assert_eq!((started.found.len(), started.to_read), (0, vec![id]));
        keeper.finish(started.rest, at(0), &first, [(id, W(1, 10))]);
        // A batch from elsewhere (a retry from an older checkpoint) finds nothing, and the
        // entries are gone for good.
        assert_eq!(keeper.start(at(3), &[event(id, 2, 5)]).to_read, vec![id]);
        assert_eq!(keeper.held(), 0);
        let second = [event(id, 2, 9)];
        let started = keeper.start(at(5), &second);
        keeper.finish(started.rest, at(5), &second, [(id, W(2, 10))]);
        let next = [event(id, 3, 12)];
        let started = keeper.start(at(9), &next);
        assert_eq!(started.found, vec![(id, W(2, 10))]);
        assert!(started.to_read.is_empty());
        // Taken out: a batch that fails keeps nothing.
        assert_eq!(keeper.start(at(9), &next).to_read, vec![id]);
    }

    #[test]
    fn events_after_no_checkpoint_keep_nothing() {
        let keeper: Keeper<W> = Keeper::default();
        let id = Uuid::from_u128(1);
        // A stream replayed alone: its opening does not mean it has no row.
        let replay = [event(id, 1, 4), event(id, 2, 6)];
        let started = keeper.start(None, &replay);
        assert_eq!(started.to_read, vec![id]);
        keeper.finish(started.rest, None, &replay, [(id, W(1, 10))]);
        assert_eq!(keeper.held(), 0);
        assert_eq!(keeper.take_at(None).len(), 0);
    }

    #[test]
    fn a_ticket_opened_after_the_checkpoint_has_no_row_to_read() {
        let keeper: Keeper<W> = Keeper::default();
        let (opened, older) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let batch = [event(opened, 1, 4), event(older, 5, 5), event(opened, 2, 6)];
        let started = keeper.start(at(3), &batch);
        assert!(started.found.is_empty());
        assert_eq!(started.to_read, vec![older]);
    }

    #[test]
    fn the_older_generation_goes_when_the_newer_one_fills() {
        let mut kept: Kept<W> = Kept::default();
        let half = GENERATION_BYTES / 2 + 1;
        kept.put(Uuid::from_u128(1), W(1, half));
        kept.put(Uuid::from_u128(2), W(2, half));
        // The generation filled: both are now the older one.
        assert_eq!((kept.new.len(), kept.old.len()), (0, 2));
        kept.put(Uuid::from_u128(3), W(3, half));
        kept.put(Uuid::from_u128(4), W(4, half));
        assert_eq!(kept.take(&Uuid::from_u128(1)), None);
        assert_eq!(kept.take(&Uuid::from_u128(3)), Some(W(3, half)));
        assert_eq!(kept.len(), 1);
        // Put again, an entry counts once.
        kept.put(Uuid::from_u128(5), W(5, 100));
        kept.put(Uuid::from_u128(5), W(6, 100));
        assert_eq!(kept.new_bytes, 100);
    }
}
