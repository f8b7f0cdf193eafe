//! Event schema evolution: upcasting as pure functions.
//!
//! Stored events are never rewritten (their hashes cover their bytes). When an event type's
//! payload changes shape, its schema version goes up by one, the old shape is frozen here as a
//! struct of its own, and a pure function takes a payload of schema n to schema n + 1. Decoding
//! a stored payload of an older schema decodes the frozen shape and applies every step up to
//! the newest, so the rest of the service only ever sees the newest shape. The fixture of each
//! old schema (tests/fixtures/events/<type>.v<n>.msgpack) must keep decoding to it.
//!
//! | type | schema | change | upcast |
//! |---|---|---|---|
//! | `ticket.commented` | 2 | added `channel` | v1 → `web`, the only way comments came in before |

use crate::event::{Commented, Event};
use crate::types::Channel;

/// Payload shapes as they were at older schema versions. Frozen: never edit one.
pub mod frozen {
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use crate::types::Visibility;

    /// `ticket.commented` schema 1.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct CommentedV1 {
        pub comment_id: Uuid,
        pub body: String,
        pub visibility: Visibility,
    }
}

/// `ticket.commented` 1 → 2: comments before schema 2 all came in through the web portal.
pub fn commented_v1_to_v2(e: frozen::CommentedV1) -> Commented {
    Commented {
        comment_id: e.comment_id,
        body: e.body,
        visibility: e.visibility,
        channel: Channel::Web,
    }
}

/// Decodes a payload stored with an older schema than this build writes, upcast to the
/// newest; `None` when there is no such older schema.
pub fn decode_old(
    event_type: &str,
    schema_version: u32,
    payload: &[u8],
) -> Option<Result<Event, rmp_serde::decode::Error>> {
    match (event_type, schema_version) {
        ("ticket.commented", 1) => Some(
            rmp_serde::from_slice(payload)
                .map(commented_v1_to_v2)
                .map(Event::Commented),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Visibility;
    use uuid::Uuid;

    #[test]
    fn a_v1_comment_decodes_to_the_v2_shape() {
        let v1 = frozen::CommentedV1 {
            comment_id: Uuid::from_u128(1),
            body: "hi".into(),
            visibility: Visibility::Public,
        };
        let bytes = rmp_serde::to_vec_named(&v1).expect("encodes");
        let decoded = Event::decode("ticket.commented", 1, &bytes).expect("decodes");
        assert_eq!(decoded, Event::Commented(commented_v1_to_v2(v1)));
        assert!(matches!(
            decoded,
            Event::Commented(Commented {
                channel: Channel::Web,
                ..
            })
        ));
    }

    #[test]
    fn unknown_schemas_are_refused() {
        assert!(Event::decode("ticket.commented", 0, b"\x80").is_err());
        assert!(Event::decode("ticket.commented", 3, b"\x80").is_err());
        assert!(Event::decode("ticket.read", 2, b"\x80").is_err());
    }

    #[test]
    fn a_v2_payload_without_channel_is_not_silently_defaulted() {
        let v1 = frozen::CommentedV1 {
            comment_id: Uuid::from_u128(1),
            body: "hi".into(),
            visibility: Visibility::Public,
        };
        let bytes = rmp_serde::to_vec_named(&v1).expect("encodes");
        assert!(Event::decode("ticket.commented", 2, &bytes).is_err());
    }
}
