//! `ticketd verify`: reads the whole log once, in log order, and checks every stream's hash
//! chain (CONTRACT §7), that its versions run 1, 2, 3, … in log order, and that every event
//! decodes (through upcasting where its schema is old).
//!
//! Memory is one head (version, hash) per stream, never the log itself.

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;

use ticketd_domain::{HASH_LEN, ZERO_HASH};

use crate::handler::decode;
use crate::store::{EventStore, Position, StoreError, StoredEvent};

/// Events read per `read_all` call.
pub const VERIFY_BATCH: usize = 1000;

/// What is wrong with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// The stored hash is not the hash of the event's canonical bytes: the event (or its
    /// hash) was altered.
    HashMismatch,
    /// `prev_hash` is not the hash of the stream's previous event: an event before it was
    /// altered, removed or reordered.
    BrokenLink,
    /// Versions are missing from the stream (removed, or moved later in the log): the finding
    /// names the first missing version, at the position of the event found in its place.
    MissingVersions,
    /// A version comes after a higher one of its stream in the log: events were reordered.
    OutOfOrder,
    /// The payload or metadata does not decode with this build's codec and upcasters.
    Undecodable,
    /// An anchored version (from an earlier export) is no longer in the log: the stream was
    /// truncated or removed.
    AnchorMissing,
    /// An anchored version's hash differs from the anchor's: the stream's history up to it
    /// was rewritten (even if every hash was recomputed).
    AnchorMismatch,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::HashMismatch => "hash_mismatch",
            Problem::BrokenLink => "broken_link",
            Problem::MissingVersions => "missing_versions",
            Problem::OutOfOrder => "out_of_order",
            Problem::Undecodable => "undecodable",
            Problem::AnchorMissing => "anchor_missing",
            Problem::AnchorMismatch => "anchor_mismatch",
        }
    }
}

/// One finding, naming the event it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub stream_id: Uuid,
    pub version: u64,
    /// Where in the log the problem showed; `None` for an anchor that no event matched.
    pub position: Option<Position>,
    pub problem: Problem,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let position = self
            .position
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        write!(
            f,
            "stream {} version {} (position {position}): {}: {}",
            self.stream_id,
            self.version,
            self.problem.as_str(),
            self.detail
        )
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub events: u64,
    pub streams: u64,
    pub findings: Vec<Finding>,
    /// Set when the log could not be read to its end (e.g. a row the store cannot decode):
    /// the position after which reading stopped, and why. A report with this set is not ok.
    pub unreadable: Option<(Position, String)>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty() && self.unreadable.is_none()
    }
}

/// Checks events one at a time, in log order.
#[derive(Debug, Default)]
pub struct Verifier {
    heads: HashMap<Uuid, (u64, [u8; HASH_LEN])>,
    /// Per stream, a (version, hash) from an earlier export that the log must still hold,
    /// and whether an event matched it yet.
    anchors: HashMap<Uuid, (u64, [u8; HASH_LEN], bool)>,
    events: u64,
    findings: Vec<Finding>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requires, for each stream, that the log still holds this version with this hash:
    /// what a chain alone cannot show (truncation, removal, a rewrite that recomputed every
    /// hash) shows against an anchor kept from an earlier export.
    pub fn with_anchors(anchors: impl IntoIterator<Item = (Uuid, u64, [u8; HASH_LEN])>) -> Self {
        Verifier {
            anchors: anchors
                .into_iter()
                .map(|(stream, version, hash)| (stream, (version, hash, false)))
                .collect(),
            ..Self::default()
        }
    }

    /// Checks `e` against its stream's previous event and records any findings.
    pub fn check(&mut self, e: &StoredEvent) {
        self.events += 1;
        let mut find = |version: u64, problem: Problem, detail: String| {
            self.findings.push(Finding {
                stream_id: e.stream_id,
                version,
                position: Some(e.position),
                problem,
                detail,
            });
        };
        let (head_version, head_hash) = self
            .heads
            .get(&e.stream_id)
            .copied()
            .unwrap_or((0, ZERO_HASH));
        let expected = head_version.saturating_add(1);
        if e.version > expected {
            find(
                expected,
                Problem::MissingVersions,
                format!(
                    "versions {expected}..{} are missing: version {} follows version \
                     {head_version} in the log",
                    e.version - 1,
                    e.version
                ),
            );
        } else if e.version < expected {
            find(
                e.version,
                Problem::OutOfOrder,
                format!(
                    "version {} comes after version {head_version} in the log",
                    e.version
                ),
            );
        } else if e.prev_hash != head_hash {
            find(
                e.version,
                Problem::BrokenLink,
                format!(
                    "prev_hash {} is not the hash {} of version {head_version}",
                    hex::encode(e.prev_hash),
                    hex::encode(head_hash)
                ),
            );
        }
        let computed = e.computed_hash();
        if computed != e.hash {
            find(
                e.version,
                Problem::HashMismatch,
                format!(
                    "stored hash {} but the event's bytes hash to {}",
                    hex::encode(e.hash),
                    hex::encode(computed)
                ),
            );
        }
        if let Err(err) = decode(e) {
            find(e.version, Problem::Undecodable, err.to_string());
        }
        if let Some((version, hash, seen)) = self.anchors.get_mut(&e.stream_id) {
            if *version == e.version && !*seen {
                *seen = true;
                if *hash != e.hash {
                    let detail = format!(
                        "the anchor has hash {} for this version, the log {}: its history \
                         was rewritten",
                        hex::encode(*hash),
                        hex::encode(e.hash)
                    );
                    self.findings.push(Finding {
                        stream_id: e.stream_id,
                        version: e.version,
                        position: Some(e.position),
                        problem: Problem::AnchorMismatch,
                        detail,
                    });
                }
            }
        }
        // Continue from what is stored, so that one altered event is reported once rather
        // than breaking every later link of its stream.
        let next = e.version.max(head_version);
        let hash = if e.version >= head_version {
            e.hash
        } else {
            head_hash
        };
        self.heads.insert(e.stream_id, (next, hash));
    }

    pub fn finish(self) -> Report {
        self.finish_with_heads().0
    }

    /// The report, and each stream's head: its highest version and that version's hash. When
    /// the report is clean these are exactly the streams' last events (import sets them).
    pub fn finish_with_heads(
        mut self,
    ) -> (Report, impl Iterator<Item = (Uuid, u64, [u8; HASH_LEN])>) {
        let mut missing: Vec<Finding> = self
            .anchors
            .iter()
            .filter(|(_, (_, _, seen))| !*seen)
            .map(|(stream, (version, _, _))| Finding {
                stream_id: *stream,
                version: *version,
                position: None,
                problem: Problem::AnchorMissing,
                detail: format!(
                    "the anchor names version {version}, which the log no longer holds: the \
                     stream was truncated or removed"
                ),
            })
            .collect();
        missing.sort_by_key(|f| (f.stream_id, f.version));
        self.findings.extend(missing);
        let report = Report {
            events: self.events,
            streams: self.heads.len() as u64,
            findings: self.findings,
            unreadable: None,
        };
        let heads = self
            .heads
            .into_iter()
            .map(|(stream, (version, hash))| (stream, version, hash));
        (report, heads)
    }
}

/// Verifies the whole log of `store`. Store failures other than unreadable data are errors;
/// a row the store cannot read ends the check, after every event before it, with
/// [`Report::unreadable`] set.
pub async fn verify_store(store: &dyn EventStore) -> Result<Report, StoreError> {
    verify_store_with(store, Verifier::new()).await
}

/// [`verify_store`] with a prepared verifier (e.g. one with anchors).
pub async fn verify_store_with(
    store: &dyn EventStore,
    mut verifier: Verifier,
) -> Result<Report, StoreError> {
    let mut after = Position::START;
    let mut batch_size = VERIFY_BATCH;
    loop {
        let batch = match store.read_all(after, batch_size).await {
            Ok(batch) => batch,
            // Re-read one event at a time, to check every event before the bad row and
            // name the position it follows.
            Err(StoreError::Corrupt(_)) if batch_size > 1 => {
                batch_size = 1;
                continue;
            }
            Err(StoreError::Corrupt(why)) => {
                let mut report = verifier.finish();
                report.unreadable = Some((after, why));
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        let Some(last) = batch.last() else { break };
        after = last.position;
        for e in &batch {
            verifier.check(e);
        }
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn chain(stream: Uuid, n: u64) -> Vec<StoredEvent> {
        let mut prev = ZERO_HASH;
        (1..=n)
            .map(|version| {
                let mut e = StoredEvent {
                    position: Position {
                        tx: 0,
                        seq: version,
                    },
                    stream_id: stream,
                    version,
                    event_id: Uuid::from_u128(u128::from(version)),
                    event_type: "ticket.read".into(),
                    schema_version: 1,
                    recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000)
                        .expect("valid"),
                    metadata: rmp_serde::to_vec_named(&ticketd_domain::Metadata {
                        actor: ticketd_domain::Actor {
                            id: "a".into(),
                            name: None,
                            role: ticketd_domain::Role::Agent,
                            org: None,
                            org_wide: false,
                        },
                        correlation_id: None,
                        causation_id: None,
                        idempotency_key: None,
                    })
                    .expect("encodes"),
                    payload: b"\x80".to_vec(),
                    prev_hash: prev,
                    hash: ZERO_HASH,
                };
                e.hash = e.computed_hash();
                prev = e.hash;
                e
            })
            .collect()
    }

    fn run(events: &[StoredEvent]) -> Report {
        let mut v = Verifier::new();
        events.iter().for_each(|e| v.check(e));
        v.finish()
    }

    fn named(r: &Report) -> Vec<(u64, Problem)> {
        r.findings.iter().map(|f| (f.version, f.problem)).collect()
    }

    #[test]
    fn an_intact_chain_passes() {
        let s = Uuid::from_u128(7);
        let r = run(&chain(s, 4));
        assert!(r.is_ok(), "{r:?}");
        assert_eq!((r.events, r.streams), (4, 1));
    }

    #[test]
    fn an_altered_payload_is_named_once() {
        let mut log = chain(Uuid::from_u128(7), 4);
        log[1].payload = b"\x81".to_vec();
        let r = run(&log);
        assert_eq!(
            named(&r),
            vec![(2, Problem::HashMismatch), (2, Problem::Undecodable)]
        );
    }

    #[test]
    fn a_removed_event_is_named() {
        let mut log = chain(Uuid::from_u128(7), 4);
        log.remove(1);
        assert_eq!(named(&run(&log)), vec![(2, Problem::MissingVersions)]);
    }

    #[test]
    fn swapped_events_are_named() {
        let mut log = chain(Uuid::from_u128(7), 4);
        log.swap(1, 2);
        assert_eq!(
            named(&run(&log)),
            vec![(2, Problem::MissingVersions), (2, Problem::OutOfOrder)]
        );
    }

    #[test]
    fn anchors_catch_truncation_and_rewrites() {
        let s = Uuid::from_u128(7);
        let log = chain(s, 4);
        let anchor = |v: usize| (s, log[v - 1].version, log[v - 1].hash);
        let check = |verifier: Verifier, events: &[StoredEvent]| {
            let mut v = verifier;
            events.iter().for_each(|e| v.check(e));
            named(&v.finish())
        };
        assert!(check(Verifier::with_anchors([anchor(4)]), &log).is_empty());
        // The last event removed: the chain holds, the anchor does not.
        assert_eq!(
            check(Verifier::with_anchors([anchor(4)]), &log[..3]),
            vec![(4, Problem::AnchorMissing)]
        );
        // A rewritten stream with every hash recomputed.
        let rewritten = chain(s, 4)
            .into_iter()
            .map(|mut e| {
                e.event_id = Uuid::from_u128(99 + u128::from(e.version));
                e
            })
            .collect::<Vec<_>>();
        let rehashed: Vec<StoredEvent> = {
            let mut prev = ZERO_HASH;
            rewritten
                .into_iter()
                .map(|mut e| {
                    e.prev_hash = prev;
                    e.hash = e.computed_hash();
                    prev = e.hash;
                    e
                })
                .collect()
        };
        assert!(check(Verifier::new(), &rehashed).is_empty());
        assert_eq!(
            check(Verifier::with_anchors([anchor(4)]), &rehashed),
            vec![(4, Problem::AnchorMismatch)]
        );
    }

    #[test]
    fn an_altered_hash_breaks_the_next_link() {
        let mut log = chain(Uuid::from_u128(7), 3);
        log[0].hash[0] ^= 1;
        assert_eq!(
            named(&run(&log)),
            vec![(1, Problem::HashMismatch), (2, Problem::BrokenLink)]
        );
    }
}
