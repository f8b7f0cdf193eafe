//! The per-stream SHA-256 hash chain (CONTRACT §7).
//!
//! `hash = SHA-256(canonical bytes)`, where the canonical bytes are, in order:
//!
//! | part | encoding |
//! |---|---|
//! | domain tag | the 16 ASCII bytes `ticketd.event.v1` |
//! | `prev_hash` | 32 raw bytes (all zero for version 1) |
//! | stream id | 16 raw UUID bytes |
//! | version | u64, big-endian |
//! | event id | 16 raw UUID bytes |
//! | event type | u32 big-endian length, then UTF-8 bytes |
//! | schema version | u32, big-endian |
//! | recorded_at | i64 big-endian microseconds since the Unix epoch (UTC) |
//! | metadata | u32 big-endian length, then the stored MessagePack bytes |
//! | payload | u32 big-endian length, then the stored MessagePack bytes |
//!
//! Length prefixes make the encoding unambiguous, so no two different events share bytes.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const HASH_LEN: usize = 32;
pub const ZERO_HASH: [u8; HASH_LEN] = [0; HASH_LEN];
const DOMAIN_TAG: &[u8; 16] = b"ticketd.event.v1";

/// The parts of a stored event that its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub prev_hash: &'a [u8; HASH_LEN],
    pub stream_id: Uuid,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub metadata: &'a [u8],
    pub payload: &'a [u8],
}

fn length_prefixed(h: &mut Sha256, bytes: &[u8]) {
    // Payloads are bounded far below 4 GiB by the request size limit.
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// Computes an event's chain hash.
pub fn event_hash(input: &HashInput<'_>) -> [u8; HASH_LEN] {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    h.update(input.prev_hash);
    h.update(input.stream_id.as_bytes());
    h.update(input.version.to_be_bytes());
    h.update(input.event_id.as_bytes());
    length_prefixed(&mut h, input.event_type.as_bytes());
    h.update(input.schema_version.to_be_bytes());
    h.update(input.recorded_at.timestamp_micros().to_be_bytes());
    length_prefixed(&mut h, input.metadata);
    length_prefixed(&mut h, input.payload);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(prev: &'a [u8; 32], payload: &'a [u8]) -> HashInput<'a> {
        HashInput {
            prev_hash: prev,
            stream_id: Uuid::nil(),
            version: 1,
            event_id: Uuid::nil(),
            event_type: "ticket.read",
            schema_version: 1,
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("valid"),
            metadata: b"",
            payload,
        }
    }

    #[test]
    fn any_changed_part_changes_the_hash() {
        let base = event_hash(&input(&ZERO_HASH, b"\x80"));
        assert_ne!(base, event_hash(&input(&[1; 32], b"\x80")));
        assert_ne!(base, event_hash(&input(&ZERO_HASH, b"\x81")));
        let mut other = input(&ZERO_HASH, b"\x80");
        other.version = 2;
        assert_ne!(base, event_hash(&other));
    }

    #[test]
    fn known_vector_is_stable() {
        // Pinned so that a change to the canonical bytes cannot go unnoticed.
        let h = hex::encode(event_hash(&input(&ZERO_HASH, b"\x80")));
        assert_eq!(h, KNOWN);
    }

    const KNOWN: &str = include_str!("../tests/known_hash.txt");
}
