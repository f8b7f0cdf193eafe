//! What keeps a paging session's order while tickets change (CONTRACT §6.1: paging "returns
//! every matching ticket exactly once even while tickets change").
//!
//! A first page is read at a position of the `tickets` projection, its *snapshot*, which the
//! cursor carries on. Every later page orders tickets by their sort keys as they stood at the
//! snapshot, a total order that no later change moves, so a walk through it meets each ticket
//! once. A ticket whose row is still at or before the snapshot has those keys in its row. For
//! one changed since, each `tickets` row keeps its recent changes of a sort key (`recent_keys`,
//! migrations 0009/0007): the keys before its first change after the snapshot are the keys it
//! had then. A ticket opened after the snapshot takes the keys it was opened with.
//!
//! `recent_keys` is written compactly ([`RecentKeys::encode`]): every `tickets` upsert rewrites
//! the whole row, so its width is paid on each event (the JSON of migration 0009 was about 75
//! bytes a change; this is about 20). Rows still holding that JSON are read as before.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use ticketd_commands::{Position, StoreError};
use ticketd_domain::Ticket;

use crate::tickets::{due_sort, priority_rank, Sort};
use crate::{micros, tx_i64};

/// How long a cursor keeps its first page's order; an older one is refused.
pub const CURSOR_TTL_MICROS: i64 = 3_600 * 1_000_000;

/// How far back from a ticket's latest event its changes are kept: a cursor's lifetime, and as
/// long again for clocks and commit order (an event committed after a snapshot may have been
/// recorded a little before it).
const KEPT_MICROS: i64 = 2 * CURSOR_TTL_MICROS;

/// At most this many changes are kept per ticket (about 20 bytes each in the row). Only a
/// ticket changed more often than this within one paging session can leave its first page's
/// order (and come twice or not at all).
const KEPT_MAX: usize = 100;

/// Where a paging session started: a position of the `tickets` projection, and when (for the
/// cursor's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub tx: i64,
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub issued: i64,
}

/// The sort keys that change: last activity, due, priority rank.
pub(crate) type Keys = [i64; 3];

pub(crate) fn keys(t: &Ticket) -> Keys {
    [
        micros(t.last_activity_at),
        due_sort(t),
        priority_rank(t.priority),
    ]
}

/// One change of a ticket's sort keys: the position of its event, when that was recorded, and
/// the keys before it: `(tx, seq, recorded_at, last_activity_at, due_sort, priority_rank)`.
/// In JSON (migration 0009's form, still read) an array of those six numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyChange(i64, i64, i64, i64, i64, i64);

/// A ticket's recent changes of its sort keys, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct RecentKeys(Vec<KeyChange>);

impl RecentKeys {
    /// About its bytes in memory.
    pub(crate) fn weight(&self) -> usize {
        self.0.len() * std::mem::size_of::<KeyChange>()
    }

    /// A row's `recent_keys`: the compact form of [`RecentKeys::encode`], or the JSON array of
    /// migration 0009 (it starts with `[`, which base64url never holds).
    pub(crate) fn parse(text: &str) -> Result<RecentKeys, StoreError> {
        let corrupt = |e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("a tickets row's recent_keys: {e}"))
        };
        if text.starts_with('[') {
            return serde_json::from_str(text).map_err(|e| corrupt(&e));
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|e| corrupt(&e))?;
        let mut rest = &bytes[..];
        let mut changes = Vec::new();
        let mut prev: Option<KeyChange> = None;
        while !rest.is_empty() {
            let mut next = || take(&mut rest).ok_or_else(|| corrupt(&"a truncated number"));
            let base = prev.unwrap_or(KeyChange(0, 0, 0, 0, 0, 0));
            let tx = base.0.wrapping_add(next()?);
            let seq = base.1.wrapping_add(next()?);
            let recorded = base.2.wrapping_add(next()?);
            let activity = recorded.wrapping_sub(next()?);
            let due = prev.map_or(recorded, |p| p.4).wrapping_add(next()?);
            let rank = base.5.wrapping_add(next()?);
            let c = KeyChange(tx, seq, recorded, activity, due, rank);
            changes.push(c);
            prev = Some(c);
        }
        Ok(RecentKeys(changes))
    }

    /// The row's text: per change, six zigzag LEB128 numbers, each a difference from what is
    /// likely close to it (position and times from the previous change, the last activity
    /// from this change's time, the due time from the previous change's or, first, from this
    /// change's time), all in base64url without padding. Empty for no changes.
    pub(crate) fn encode(&self) -> String {
        let mut out = Vec::with_capacity(self.0.len() * 16);
        let mut prev: Option<KeyChange> = None;
        for c in &self.0 {
            let base = prev.unwrap_or(KeyChange(0, 0, 0, 0, 0, 0));
            put(&mut out, c.0.wrapping_sub(base.0));
            put(&mut out, c.1.wrapping_sub(base.1));
            put(&mut out, c.2.wrapping_sub(base.2));
            put(&mut out, c.2.wrapping_sub(c.3));
            put(&mut out, c.4.wrapping_sub(prev.map_or(c.2, |p| p.4)));
            put(&mut out, c.5.wrapping_sub(base.5));
            prev = Some(*c);
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The event at `at`, recorded at `recorded`, took the ticket's keys from `before` to
    /// `after`. Changes no live cursor can need are forgotten, by the event's own time, so a
    /// rebuild keeps exactly what the live projection keeps.
    pub(crate) fn note(
        &mut self,
        before: Keys,
        after: Keys,
        at: Position,
        recorded: i64,
    ) -> Result<(), StoreError> {
        if before != after {
            let (tx, seq) = tx_i64(at)?;
            self.0.push(KeyChange(
                tx, seq, recorded, before[0], before[1], before[2],
            ));
        }
        let horizon = recorded.saturating_sub(KEPT_MICROS);
        self.0.retain(|c| c.2 >= horizon);
        if self.0.len() > KEPT_MAX {
            let extra = self.0.len() - KEPT_MAX;
            self.0.drain(..extra);
        }
        Ok(())
    }

    /// `sort`'s key as it stood at `snapshot`, given the key now.
    pub(crate) fn key_at(&self, sort: Sort, now: i64, snapshot: &Snapshot) -> i64 {
        let first_after = self
            .0
            .iter()
            .find(|c| (c.0, c.1) > (snapshot.tx, snapshot.seq));
        match (first_after, sort) {
            (None, _) | (_, Sort::Created | Sort::CreatedDesc) => now,
            (Some(c), Sort::LastActivity | Sort::LastActivityDesc) => c.3,
            (Some(c), Sort::Due) => c.4,
            (Some(c), Sort::PriorityDesc) => c.5,
        }
    }
}

/// Appends `v` zigzag-encoded as an unsigned LEB128 number (small magnitudes, small bytes).
fn put(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// The number [`put`] wrote at the start of `bytes`, which then start after it; `None` if
/// they end inside it or it runs past 64 bits.
fn take(bytes: &mut &[u8]) -> Option<i64> {
    let mut u = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        u |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((u >> 1) as i64) ^ -((u & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Position {
        Position { tx: seq, seq }
    }

    fn snap(seq: i64) -> Snapshot {
        Snapshot {
            tx: seq,
            seq,
            issued: 0,
        }
    }

    #[test]
    fn the_keys_at_a_snapshot_are_those_before_the_first_change_after_it() {
        let mut r = RecentKeys::default();
        r.note([10, 100, 1], [20, 100, 1], at(5), 20).expect("note");
        r.note([20, 100, 1], [20, 100, 1], at(6), 21).expect("note");
        r.note([20, 100, 1], [30, 50, 4], at(7), 30).expect("note");
        assert_eq!(r.0.len(), 2, "a change that changes no key is not kept");
        let now = [30, 50, 4];
        let key = |sort: Sort, snapshot: i64| {
            let current = match sort {
                Sort::Due => now[1],
                Sort::PriorityDesc => now[2],
                Sort::Created | Sort::CreatedDesc => 1,
                _ => now[0],
            };
            r.key_at(sort, current, &snap(snapshot))
        };
        assert_eq!(key(Sort::LastActivityDesc, 4), 10);
        assert_eq!(key(Sort::LastActivityDesc, 5), 20);
        assert_eq!(key(Sort::LastActivity, 6), 20);
        assert_eq!(key(Sort::LastActivity, 7), 30);
        assert_eq!(key(Sort::Due, 4), 100);
        assert_eq!(key(Sort::PriorityDesc, 6), 1);
        assert_eq!(key(Sort::PriorityDesc, 9), 4);
        assert_eq!(key(Sort::Created, 4), 1);
        // Rows written before the compact form hold migration 0009's JSON; it still reads.
        let legacy = "[[5,5,20,10,100,1],[7,7,30,20,100,1]]";
        assert_eq!(RecentKeys::parse(legacy).expect("legacy"), r);
        assert_eq!(RecentKeys::parse(&r.encode()).expect("parse"), r);
        assert!(RecentKeys::parse("[1,").is_err());
    }

    #[test]
    fn the_compact_form_keeps_every_value_and_is_small() {
        assert_eq!(RecentKeys::default().encode(), "");
        assert_eq!(RecentKeys::parse("").expect("empty"), RecentKeys::default());
        let extremes = RecentKeys(vec![
            KeyChange(i64::MAX, 0, i64::MIN, i64::MAX, i64::MAX, -1),
            KeyChange(0, i64::MAX, i64::MAX, i64::MIN, i64::MIN, i64::MAX),
            KeyChange(i64::MIN, i64::MIN, 0, 0, 0, i64::MIN),
        ]);
        assert_eq!(
            RecentKeys::parse(&extremes.encode()).expect("parse"),
            extremes
        );
        // A ticket's typical changes: close positions and times, a due date a day on, then
        // unchanged.
        let t0 = 1_790_000_000_000_000;
        let day = 86_400_000_000;
        let typical = RecentKeys(
            (0..10)
                .map(|i| {
                    KeyChange(
                        812_345 + 40 * i,
                        9_123_456 + 300 * i,
                        t0 + 7_000_000 * i,
                        t0 + 7_000_000 * i - 6_500_000,
                        t0 + day,
                        3,
                    )
                })
                .collect(),
        );
        let text = typical.encode();
        assert_eq!(RecentKeys::parse(&text).expect("parse"), typical);
        let json = serde_json::to_string(&typical).expect("json");
        assert!(
            text.len() * 3 < json.len(),
            "{} against {}",
            text.len(),
            json.len()
        );
        // Corrupt text is an error, never a panic: not base64, or a number cut short.
        assert!(RecentKeys::parse("not base64!").is_err());
        let mut cut = URL_SAFE_NO_PAD.decode(&text).expect("bytes");
        cut.pop();
        assert!(RecentKeys::parse(&URL_SAFE_NO_PAD.encode(&cut)).is_err());
        assert!(RecentKeys::parse(&URL_SAFE_NO_PAD.encode([0xff; 11])).is_err());
    }

    #[test]
    fn old_and_surplus_changes_are_forgotten() {
        let mut r = RecentKeys::default();
        r.note([1, 0, 0], [2, 0, 0], at(1), 0).expect("note");
        r.note([2, 0, 0], [3, 0, 0], at(2), KEPT_MICROS)
            .expect("note");
        assert_eq!(r.0.len(), 2, "exactly at the horizon: kept");
        r.note([3, 0, 0], [3, 0, 0], at(3), KEPT_MICROS + 1)
            .expect("note");
        assert_eq!(r.0, vec![KeyChange(2, 2, KEPT_MICROS, 2, 0, 0)]);
        for i in 0..(KEPT_MAX as i64 + 10) {
            r.note([i, 0, 0], [i + 1, 0, 0], at(10 + i as u64), KEPT_MICROS + 2)
                .expect("note");
        }
        assert_eq!(r.0.len(), KEPT_MAX);
        assert_eq!(r.0[KEPT_MAX - 1].3, KEPT_MAX as i64 + 9, "the newest kept");
    }
}
