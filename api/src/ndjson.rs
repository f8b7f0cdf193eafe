//! The NDJSON audit line (docs/AUDIT.md §1), written straight into a buffer.
//!
//! The bytes are exactly those of `serde_json::to_writer(out, &AuditEvent::new(e, …))` and a
//! newline — the line format is a stable interface that exports are compared by, byte for
//! byte — but without building the record: no `Value` trees, no owned hex strings. Fixed
//! parts are copied, hex and timestamps are formatted by hand, strings are escaped by
//! serde_json, and `actor` and `data` go through [`SortedJson`], falling back to the `Value`
//! path for anything it does not write.

use chrono::{DateTime, Datelike, Timelike, Utc};

use ticketd_commands::{EventRef, Position};
use ticketd_domain::{Event, Metadata};

use crate::record::timestamp;
use crate::sorted_json::SortedJson;

/// Writes audit lines; keep one per thread, its buffers are reused.
#[derive(Default)]
pub struct LineWriter {
    json: SortedJson,
}

impl LineWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `e`'s line, with its `position` for the API (not in exports), and `\n`.
    pub fn write(&mut self, e: EventRef<'_>, with_position: bool, out: &mut Vec<u8>) {
        // Fixed parts plus hex: an exact reservation for all but strings and `data`.
        out.reserve(
            400 + e.event_type.len() + 2 * (e.metadata.len() + e.payload.len()) + e.payload.len(),
        );
        if with_position {
            out.extend_from_slice(b"{\"position\":\"");
            push_position(out, e.position);
            out.extend_from_slice(b"\",\"stream\":\"");
        } else {
            out.extend_from_slice(b"{\"stream\":\"");
        }
        push_uuid(out, e.stream_id);
        out.extend_from_slice(b"\",\"version\":");
        push_int(out, e.version);
        out.extend_from_slice(b",\"id\":\"");
        push_uuid(out, e.event_id);
        out.extend_from_slice(b"\",\"type\":");
        push_str(out, e.event_type);
        out.extend_from_slice(b",\"schema_version\":");
        push_int(out, e.schema_version);
        out.extend_from_slice(b",\"recorded_at\":\"");
        push_timestamp(out, e.recorded_at);
        out.extend_from_slice(b"\",\"actor\":");
        self.actor(out, e.metadata);
        out.extend_from_slice(b",\"data\":");
        self.data(out, e);
        out.extend_from_slice(b",\"hash\":\"");
        push_hex(out, e.hash);
        out.extend_from_slice(b"\",\"prev_hash\":\"");
        push_hex(out, e.prev_hash);
        out.extend_from_slice(b"\",\"metadata\":\"");
        push_hex(out, e.metadata);
        out.extend_from_slice(b"\",\"payload\":\"");
        push_hex(out, e.payload);
        out.extend_from_slice(b"\"}\n");
    }

    /// The metadata's actor, or `null` if the metadata does not decode.
    fn actor(&mut self, out: &mut Vec<u8>, metadata: &[u8]) {
        match Metadata::decode(metadata) {
            Ok(m) => {
                if self.json.write(&m.actor, out).is_err() {
                    push_value(out, serde_json::to_value(&m.actor).ok());
                }
            }
            Err(_) => out.extend_from_slice(b"null"),
        }
    }

    /// The payload decoded (and upcast), or `null` if it does not decode.
    fn data(&mut self, out: &mut Vec<u8>, e: EventRef<'_>) {
        match Event::decode(e.event_type, e.schema_version, e.payload) {
            Ok(event) => {
                if self.json.write(&event, out).is_err() {
                    push_value(out, Some(event.to_json()));
                }
            }
            Err(_) => out.extend_from_slice(b"null"),
        }
    }
}

/// The `Value` path, as the record has always written it.
fn push_value(out: &mut Vec<u8>, value: Option<serde_json::Value>) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, &value).is_err() {
        // Writing a `Value` into memory cannot fail; keep the line whole regardless.
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Plain ASCII without quotes, backslashes or control characters needs no escaping.
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_value(out, Some(serde_json::Value::String(s.to_owned())));
    }
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_position(out: &mut Vec<u8>, p: Position) {
    push_int(out, p.tx);
    out.push(b'-');
    push_int(out, p.seq);
}

fn push_uuid(out: &mut Vec<u8>, id: uuid::Uuid) {
    out.extend_from_slice(
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
}

/// Lower-case hex digits of every byte value, two at a time.
static HEX: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    table
};

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    for (pair, &b) in out[start..].chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX[usize::from(b)]);
    }
}

/// `n` as exactly `digits.len()` decimal digits.
fn fill_digits(digits: &mut [u8], mut n: u32) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// [`timestamp`]'s text: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn push_timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let t = at.naive_utc();
    let nanos = t.nanosecond();
    // Years beyond four digits and leap seconds are chrono's to spell.
    let Ok(year) = u32::try_from(t.year()) else {
        out.extend_from_slice(timestamp(at).as_bytes());
        return;
    };
    if year > 9999 || nanos >= 1_000_000_000 {
        out.extend_from_slice(timestamp(at).as_bytes());
        return;
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    fill_digits(&mut text[0..4], year);
    fill_digits(&mut text[5..7], t.month());
    fill_digits(&mut text[8..10], t.day());
    fill_digits(&mut text[11..13], t.hour());
    fill_digits(&mut text[14..16], t.minute());
    fill_digits(&mut text[17..19], t.second());
    fill_digits(&mut text[20..26], nanos / 1000);
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use uuid::Uuid;

    use ticketd_commands::{CommandHandler, StoredEvent};
    use ticketd_domain::event::{
        Change, Commented, Edited, Escalated, Opened, Read, StatusChanged, Withdrawn,
    };
    use ticketd_domain::upcast::frozen::CommentedV1;
    use ticketd_domain::{
        Actor, Channel, FieldValue, Priority, Role, SlaPolicy, Status, Visibility, HASH_LEN,
    };

    use super::*;
    use crate::config::Format;
    use crate::record::AuditEvent;
    use crate::transfer::read_records;

    /// The line as the record has always been written.
    fn old_line(e: &StoredEvent, with_position: bool) -> String {
        let mut out = serde_json::to_vec(&AuditEvent::new(e, with_position)).expect("json");
        out.push(b'\n');
        String::from_utf8(out).expect("utf-8")
    }

    fn new_line(w: &mut LineWriter, e: &StoredEvent, with_position: bool) -> String {
        let mut out = b"earlier lines\n".to_vec();
        w.write(e.into(), with_position, &mut out);
        String::from_utf8(out[14..].to_vec()).expect("utf-8")
    }

    fn assert_same(events: &[StoredEvent]) {
        let mut w = LineWriter::new();
        for e in events {
            for with_position in [false, true] {
                assert_eq!(
                    new_line(&mut w, e, with_position),
                    old_line(e, with_position),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn every_fixture_line_is_written_byte_for_byte() {
        let fixture = include_str!("../../tests/fixtures/audit/export.ndjson");
        let events = read_records(fixture.as_bytes(), Format::Ndjson).expect("fixture");
        assert_same(&events);
        // An earlier build wrote it: lines whose payload this build shows in a newer shape
        // (upcast comments) differ in `data` only, every other line is the same to the byte.
        let mut w = LineWriter::new();
        let mut same = 0;
        for (e, line) in events.iter().zip(fixture.split_inclusive('\n')) {
            let current = Event::decode(&e.event_type, e.schema_version, &e.payload)
                .is_ok_and(|event| event.schema_version() == e.schema_version);
            if current {
                assert_eq!(new_line(&mut w, e, false), line);
                same += 1;
            }
        }
        assert!(same > 15, "{same} lines compared");
    }

    fn actor(id: &str, role: Role, name: Option<&str>, org: Option<&str>, wide: bool) -> Actor {
        Actor {
            id: id.into(),
            name: name.map(Into::into),
            role,
            org: org.map(Into::into),
            org_wide: wide,
        }
    }

    fn stored(
        n: u64,
        event_type: &str,
        schema_version: u32,
        payload: Vec<u8>,
        metadata: Vec<u8>,
        recorded_at: DateTime<Utc>,
    ) -> StoredEvent {
        StoredEvent {
            position: Position {
                tx: n * 7919,
                seq: u64::MAX - n,
            },
            stream_id: Uuid::from_u128(u128::from(n) << 64 | 0xabc),
            version: n + 1,
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            recorded_at,
            metadata,
            payload,
            prev_hash: [n as u8; HASH_LEN],
            hash: std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(n as u8)),
        }
    }

    /// Every event type with its optional fields set and unset, odd strings, old schemas,
    /// and bytes that do not decode.
    fn crafted() -> Vec<StoredEvent> {
        let odd = "é \"q\" \\ \n\t\u{1}\u{7f}\u{2028} 😀 </script>";
        let at = Utc
            .with_ymd_and_hms(2026, 3, 4, 5, 6, 7)
            .single()
            .expect("time");
        let fields: BTreeMap<String, FieldValue> = [
            ("a".to_owned(), FieldValue::Text(odd.into())),
            (
                "b\"".to_owned(),
                FieldValue::List(vec!["x".into(), String::new()]),
            ),
            (String::new(), FieldValue::List(vec![])),
        ]
        .into_iter()
        .collect();
        let opened = |full: bool| Opened {
            ticket_id: Uuid::from_u128(42),
            number: if full { u64::MAX } else { 0 },
            subject: odd.into(),
            description: String::new(),
            priority: Priority::Urgent,
            channel: Channel::Email,
            requester: "alice".into(),
            requester_name: full.then(|| odd.to_owned()),
            org: full.then(|| "acme".to_owned()),
            cc: if full {
                vec!["bob".into(), odd.into()]
            } else {
                vec![]
            },
            fields: if full {
                fields.clone()
            } else {
                BTreeMap::new()
            },
            due_at: full.then_some(at),
            contact_email: full.then(|| "a@b.c".to_owned()),
        };
        let edited_full = Edited {
            subject: Some(Change {
                from: "a".into(),
                to: odd.into(),
            }),
            description: Some(Change {
                from: String::new(),
                to: "d".into(),
            }),
            priority: Some(Change {
                from: Priority::None,
                to: Priority::Low,
            }),
            fields: Some(Change {
                from: BTreeMap::new(),
                to: fields.clone(),
            }),
            cc: Some(Change {
                from: vec![],
                to: vec!["c".into()],
            }),
            assignee: Some(Change {
                from: None,
                to: Some("agent-1".into()),
            }),
            due_at: Some(Change {
                from: Some(at),
                to: None,
            }),
        };
        let events = vec![
            Event::Opened(opened(true)),
            Event::Opened(opened(false)),
            Event::Commented(Commented {
                comment_id: Uuid::from_u128(7),
                body: odd.into(),
                visibility: Visibility::Private,
                channel: Channel::Phone,
            }),
            Event::StatusChanged(StatusChanged {
                from: Status::AwaitingCustomer,
                to: Status::InProgress,
                reason: Some(odd.into()),
                reopen: true,
                automatic: true,
            }),
            Event::StatusChanged(StatusChanged {
                from: Status::Open,
                to: Status::Closed,
                reason: None,
                reopen: false,
                automatic: false,
            }),
            Event::Edited(edited_full),
            Event::Edited(Edited::default()),
            Event::Escalated(Escalated {
                from: Status::OnHold,
                reason: odd.into(),
            }),
            Event::Withdrawn(Withdrawn {
                from: Status::Escalated,
                reason: "r".into(),
                comment: Some(odd.into()),
            }),
            Event::Withdrawn(Withdrawn {
                from: Status::Open,
                reason: String::new(),
                comment: None,
            }),
            Event::Read(Read {}),
        ];
        let actors = [
            actor("alice", Role::Customer, Some(odd), Some("acme"), true),
            actor(odd, Role::Agent, None, None, false),
            actor("p", Role::Public, Some("n"), None, false),
            actor("a", Role::Auditor, None, Some("o"), false),
        ];
        let metadata = |i: usize| {
            let mut m = Metadata {
                actor: actors[i % actors.len()].clone(),
                correlation_id: None,
                causation_id: None,
                idempotency_key: None,
            };
            if i % 2 == 1 {
                m.correlation_id = Some(Uuid::from_u128(1));
                m.idempotency_key = Some(odd.into());
            }
            m.encode().expect("metadata")
        };
        let mut out = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let payload = event.encode().expect("payload");
            out.push(stored(
                i as u64,
                event.type_name(),
                event.schema_version(),
                payload,
                metadata(i),
                at + chrono::Duration::microseconds(i as i64 * 1_234_567),
            ));
        }
        // Schema 1 of `ticket.commented`, upcast on the way out.
        let v1 = rmp_serde::to_vec_named(&CommentedV1 {
            comment_id: Uuid::from_u128(9),
            body: odd.into(),
            visibility: Visibility::Public,
        })
        .expect("v1");
        let n = out.len() as u64;
        out.push(stored(n, "ticket.commented", 1, v1, metadata(0), at));
        // What does not decode: an unknown schema or type, bad payload or metadata bytes.
        let read = Event::Read(Read {}).encode().expect("read");
        for (i, (event_type, schema, payload, metadata)) in [
            ("ticket.read", 99, read.clone(), metadata(1)),
            ("ticket.unknown", 1, read.clone(), metadata(2)),
            (odd, 1, read.clone(), metadata(3)),
            ("ticket.opened", 1, vec![0xc1], metadata(0)),
            ("ticket.read", 1, read.clone(), vec![]),
            ("ticket.read", 1, read, vec![0x80]),
        ]
        .into_iter()
        .enumerate()
        {
            let n = out.len() as u64 + i as u64;
            out.push(stored(n, event_type, schema, payload, metadata, at));
        }
        out
    }

    #[test]
    fn crafted_events_of_every_type_are_written_byte_for_byte() {
        let events = crafted();
        assert_same(&events);
        // And without the fallback: every event type this build writes takes the fast path.
        let mut json = SortedJson::new();
        for e in &events {
            if let Ok(event) = Event::decode(&e.event_type, e.schema_version, &e.payload) {
                json.write(&event, &mut Vec::new()).expect("sorted writer");
            }
            if let Ok(m) = Metadata::decode(&e.metadata) {
                json.write(&m.actor, &mut Vec::new())
                    .expect("sorted writer");
            }
        }
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let mut rng = ticketd_tests::history::Rng::new(4);
        let mut times: Vec<DateTime<Utc>> = [
            0i64,
            -1,
            1,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
            253_402_300_800_000_000, // year 10000
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // year -1
            951_782_400_000_000,     // 2000-02-29
        ]
        .into_iter()
        .filter_map(DateTime::from_timestamp_micros)
        .collect();
        for _ in 0..20_000 {
            let micros =
                (rng.next_u64() % 400_000_000_000_000_000) as i64 - 100_000_000_000_000_000;
            times.extend(DateTime::from_timestamp_micros(micros));
        }
        // A leap second, which a store never returns but chrono can hold.
        times.extend(
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 1_500_000))
                .map(|t| t.and_utc()),
        );
        for t in times {
            let mut out = Vec::new();
            push_timestamp(&mut out, t);
            assert_eq!(String::from_utf8(out).expect("utf-8"), timestamp(t));
        }
    }

    #[test]
    fn hex_is_lower_case_and_complete() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = b"x".to_vec();
        push_hex(&mut out, &bytes);
        assert_eq!(out[1..], *hex::encode(&bytes).as_bytes());
    }

    /// A generated history, through the real command handler, as in the other audit tests.
    #[tokio::test]
    async fn a_generated_history_is_written_byte_for_byte() {
        let store = ticketd_tests::sqlite_store().await;
        let handler = CommandHandler::new(store.store.clone(), SlaPolicy::default(), 64);
        let mut rng = ticketd_tests::history::Rng::new(11);
        ticketd_tests::history::run(&handler, &mut rng, 40, 600).await;
        let events = ticketd_tests::read_everything(store.store.as_ref(), 100).await;
        assert!(events.len() > 400, "{} events", events.len());
        assert_same(&events);
        // The fixture-style whole export too.
        let mut old = Vec::new();
        let mut new = Vec::new();
        let mut w = LineWriter::new();
        for e in &events {
            old.extend_from_slice(old_line(e, false).as_bytes());
            w.write(e.into(), false, &mut new);
        }
        assert_eq!(new, old);
    }
}
