//! The audit record: one stored event as auditors see it (CONTRACT §7) and as `ticketd export`
//! writes it. Besides the contract's fields it carries the event id and the stored metadata and
//! payload bytes (hex), which is everything the hash covers, so anyone can recompute every
//! chain from it without trusting ticketd (docs/AUDIT.md).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use ticketd_commands::{Position, StoredEvent};
use ticketd_domain::{Event, Metadata, HASH_LEN};

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Opaque log position (absent in exports: positions are the store's, not the event's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// The ticket's id: its stream.
    pub stream: Uuid,
    /// 1 for the ticket's first event, then 2, 3, …
    pub version: u64,
    /// The event's own id.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The schema the payload was stored with (`data` is shown in this build's newest shape).
    pub schema_version: u32,
    /// RFC 3339, UTC, always with six fractional digits: exactly the microseconds hashed.
    pub recorded_at: String,
    /// Who did it, decoded from the metadata; `null` if it does not decode.
    #[schema(value_type = Option<Object>)]
    pub actor: Option<Value>,
    /// The payload decoded to JSON; `null` if it does not decode.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// SHA-256 (hex) over the event's canonical bytes (docs/AUDIT.md).
    pub hash: String,
    /// The `hash` of the stream's previous event; 64 zeros for version 1.
    pub prev_hash: String,
    /// The stored MessagePack metadata, hex.
    pub metadata: String,
    /// The stored MessagePack payload, hex.
    pub payload: String,
}

/// RFC 3339 with exactly six fractional digits and `Z`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl AuditEvent {
    /// The record of `e`; `with_position` for the API, not for exports.
    pub fn new(e: &StoredEvent, with_position: bool) -> AuditEvent {
        let actor = Metadata::decode(&e.metadata)
            .ok()
            .and_then(|m| serde_json::to_value(m.actor).ok());
        let data = Event::decode(&e.event_type, e.schema_version, &e.payload)
            .ok()
            .map(|event| event.to_json());
        AuditEvent {
            position: with_position.then(|| e.position.to_string()),
            stream: e.stream_id,
            version: e.version,
            id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: timestamp(e.recorded_at),
            actor,
            data,
            hash: hex::encode(e.hash),
            prev_hash: hex::encode(e.prev_hash),
            metadata: hex::encode(&e.metadata),
            payload: hex::encode(&e.payload),
        }
    }

    /// The stored event this record describes, for import. `actor` and `data` are derived
    /// and ignored; the position is left at [`Position::START`] for the store to assign.
    pub fn to_stored(&self) -> Result<StoredEvent, String> {
        let hash = |field: &str, s: &str| -> Result<[u8; HASH_LEN], String> {
            let bytes = hex::decode(s).map_err(|e| format!("{field} is not hex: {e}"))?;
            <[u8; HASH_LEN]>::try_from(bytes)
                .map_err(|b| format!("{field} has {} bytes, not {HASH_LEN}", b.len()))
        };
        let recorded_at = DateTime::parse_from_rfc3339(&self.recorded_at)
            .map_err(|e| format!("recorded_at is not RFC 3339: {e}"))?
            .with_timezone(&Utc);
        if self.version == 0 {
            return Err("version must be at least 1".into());
        }
        Ok(StoredEvent {
            position: Position::START,
            stream_id: self.stream,
            version: self.version,
            event_id: self.id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            recorded_at,
            metadata: hex::decode(&self.metadata)
                .map_err(|e| format!("metadata is not hex: {e}"))?,
            payload: hex::decode(&self.payload).map_err(|e| format!("payload is not hex: {e}"))?,
            prev_hash: hash("prev_hash", &self.prev_hash)?,
            hash: hash("hash", &self.hash)?,
        })
    }
}
