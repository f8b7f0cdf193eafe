//! What a projection's batches leave in memory of each ticket (its state, its facts), so the
//! next batch need not read those rows back.
//!
//! The entries are exactly what the rows hold once the batch that wrote them has committed,
//! and they are trusted only by a batch that follows the checkpoint where the last one ended
//! (see [`crate::Projection::apply_batch`]): a batch that fails takes them out and leaves
//! nothing, and one that never committed leaves the checkpoint before it, where nothing kept
//! is at.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use ticketd_commands::Position;

/// The bound of one generation, by the sizes the callers give.
const GENERATION_BYTES: usize = 32 << 20;

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

impl<V> Kept<V> {
    /// Takes out ticket `id`'s entry.
    pub(crate) fn take(&mut self, id: &Uuid) -> Option<V> {
        if let Some((v, size)) = self.new.remove(id) {
            self.new_bytes = self.new_bytes.saturating_sub(size);
            return Some(v);
        }
        self.old.remove(id).map(|(v, _)| v)
    }

    /// Keeps ticket `id`'s entry, of about `size` bytes.
    pub(crate) fn put(&mut self, id: Uuid, v: V, size: usize) {
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

impl<V> Keeper<V> {
    /// What the last batch left, if it ended at `after`; else nothing. Taken out, so a batch
    /// that fails leaves nothing behind.
    pub(crate) fn take_at(&self, after: Option<Position>) -> Kept<V> {
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
    pub(crate) fn keep(&self, mut kept: Kept<V>, at: Option<Position>) {
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

    fn at(seq: u64) -> Option<Position> {
        Some(Position { tx: 1, seq })
    }

    #[test]
    fn entries_are_trusted_only_by_the_batch_that_follows() {
        let keeper: Keeper<u32> = Keeper::default();
        let id = Uuid::from_u128(7);
        let mut kept = keeper.take_at(at(0));
        kept.put(id, 1, 10);
        keeper.keep(kept, at(5));
        // A batch from elsewhere (a retry from an older checkpoint) finds nothing, and the
        // entries are gone for good.
        assert_eq!(keeper.take_at(at(3)).take(&id), None);
        assert_eq!(keeper.held(), 0);
        let mut kept = keeper.take_at(at(5));
        kept.put(id, 2, 10);
        keeper.keep(kept, at(9));
        assert_eq!(keeper.take_at(at(9)).take(&id), Some(2));
        // Taken out: a batch that fails keeps nothing.
        assert_eq!(keeper.take_at(at(9)).take(&id), None);
    }

    #[test]
    fn events_after_no_checkpoint_keep_nothing() {
        let keeper: Keeper<u32> = Keeper::default();
        let mut kept = keeper.take_at(None);
        kept.put(Uuid::from_u128(1), 1, 10);
        keeper.keep(kept, None);
        assert_eq!(keeper.held(), 0);
        assert_eq!(keeper.take_at(None).len(), 0);
    }

    #[test]
    fn the_older_generation_goes_when_the_newer_one_fills() {
        let mut kept: Kept<u32> = Kept::default();
        let half = GENERATION_BYTES / 2 + 1;
        kept.put(Uuid::from_u128(1), 1, half);
        kept.put(Uuid::from_u128(2), 2, half);
        // The generation filled: both are now the older one.
        assert_eq!((kept.new.len(), kept.old.len()), (0, 2));
        kept.put(Uuid::from_u128(3), 3, half);
        kept.put(Uuid::from_u128(4), 4, half);
        assert_eq!(kept.take(&Uuid::from_u128(1)), None);
        assert_eq!(kept.take(&Uuid::from_u128(3)), Some(3));
        assert_eq!(kept.len(), 1);
        // Put again, an entry counts once.
        kept.put(Uuid::from_u128(5), 5, 100);
        kept.put(Uuid::from_u128(5), 6, 100);
        assert_eq!(kept.new_bytes, 100);
    }
}
