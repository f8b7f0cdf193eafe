//! The MessagePack export format (`ticketd export --format msgpack`): one map per event with
//! the stored fields under the same names as the NDJSON record, the stored bytes as `bin`,
//! and `recorded_at` as microseconds since the Unix epoch. No position: see docs/AUDIT.md.

use std::io::Read;

use chrono::DateTime;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use ticketd_domain::HASH_LEN;

use crate::store::{EventRef, Position, StoredEvent};

/// One event in the MessagePack export: the stored fields, bytes as binary.
#[derive(Debug, Serialize, Deserialize)]
pub struct Packed {
    stream: Uuid,
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    /// Microseconds since the Unix epoch.
    recorded_at: i64,
    #[serde(with = "bin")]
    metadata: Vec<u8>,
    #[serde(with = "bin")]
    payload: Vec<u8>,
    #[serde(with = "bin")]
    prev_hash: Vec<u8>,
    #[serde(with = "bin")]
    hash: Vec<u8>,
}

/// Byte strings as MessagePack `bin` rather than arrays of integers.
mod bin {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// [`Packed`] borrowing the event, for writing: the same fields, names and order, so the
/// same bytes, without copying the event first.
#[derive(Serialize)]
struct PackedRef<'a> {
    stream: Uuid,
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u32,
    recorded_at: i64,
    #[serde(serialize_with = "bin::serialize")]
    metadata: &'a [u8],
    #[serde(serialize_with = "bin::serialize")]
    payload: &'a [u8],
    #[serde(serialize_with = "bin::serialize")]
    prev_hash: &'a [u8],
    #[serde(serialize_with = "bin::serialize")]
    hash: &'a [u8],
}

impl Packed {
    pub fn new(e: &StoredEvent) -> Packed {
        Packed {
            stream: e.stream_id,
            version: e.version,
            id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at.timestamp_micros(),
            metadata: e.metadata.clone(),
            payload: e.payload.clone(),
            prev_hash: e.prev_hash.to_vec(),
            hash: e.hash.to_vec(),
        }
    }

    pub fn into_stored(self) -> Result<StoredEvent, String> {
        let hash = |field: &str, v: Vec<u8>| {
            <[u8; HASH_LEN]>::try_from(v)
                .map_err(|b| format!("{field} has {} bytes, not {HASH_LEN}", b.len()))
        };
        Ok(StoredEvent {
            position: Position::START,
            stream_id: self.stream,
            version: self.version,
            event_id: self.id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            recorded_at: DateTime::from_timestamp_micros(self.recorded_at)
                .ok_or("recorded_at is out of range")?,
            metadata: self.metadata,
            payload: self.payload,
            prev_hash: hash("prev_hash", self.prev_hash)?,
            hash: hash("hash", self.hash)?,
        })
    }
}

/// Appends `e` to `out`.
pub fn encode(e: EventRef<'_>, out: &mut Vec<u8>) -> Result<(), rmp_serde::encode::Error> {
    let packed = PackedRef {
        stream: e.stream_id,
        version: e.version,
        id: e.event_id,
        event_type: e.event_type,
        schema_version: e.schema_version,
        recorded_at: e.recorded_at.timestamp_micros(),
        metadata: e.metadata,
        payload: e.payload,
        prev_hash: e.prev_hash,
        hash: e.hash,
    };
    rmp_serde::encode::write_named(out, &packed)
}

/// Reads the next event from `input` (which must not be at its end).
pub fn decode(input: &mut impl Read) -> Result<StoredEvent, String> {
    let packed: Packed = rmp_serde::from_read(input).map_err(|e| e.to_string())?;
    packed.into_stored()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowing_writer_writes_what_packed_wrote() {
        for n in [0u8, 1, 200] {
            let e = StoredEvent {
                position: Position { tx: 3, seq: 4 },
                stream_id: Uuid::from_u128(u128::from(n) * 77),
                version: u64::from(n) << 40,
                event_id: Uuid::now_v7(),
                event_type: format!("ticket.ü{n}"),
                schema_version: u32::from(n) * 1000,
                recorded_at: DateTime::from_timestamp_micros(-1_234_567 * i64::from(n))
                    .expect("time"),
                metadata: vec![n; usize::from(n)],
                payload: vec![n; 300 * usize::from(n)],
                prev_hash: [n; HASH_LEN],
                hash: [!n; HASH_LEN],
            };
            let old = rmp_serde::to_vec_named(&Packed::new(&e)).expect("old");
            let mut new = Vec::new();
            encode((&e).into(), &mut new).expect("new");
            assert_eq!(new, old);
            // Positions are the store's, not exported.
            let e = StoredEvent {
                position: Position::START,
                ..e
            };
            assert_eq!(decode(&mut new.as_slice()), Ok(e));
        }
    }
}
