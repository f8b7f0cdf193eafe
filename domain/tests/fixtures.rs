//! Frozen encodings of every event type, so a change to an event's shape that would stop stored
//! events from decoding cannot go unnoticed.
//!
//! Layout: `tests/fixtures/events/<type>.v<schema>.msgpack` at the workspace root holds the
//! payload bytes of `Event::encode` for one sample of each type and schema version (e.g.
//! `ticket.opened.v1.msgpack`), and `metadata.msgpack` the bytes of `Metadata::encode`.
//!
//! The files are written once and then kept as they are: they stand for events already in
//! someone's store. To add the fixture of a new event type or schema version, give it a sample
//! below and run
//!
//! ```text
//! cargo test -p ticketd-domain --test fixtures -- --ignored write_missing_fixtures
//! ```
//!
//! which writes only the files that do not exist yet. An existing fixture is never rewritten;
//! when an old schema version's fixture stops decoding, the change that broke it is the bug.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use ticketd_domain::event::{self, Change, Edited};
use ticketd_domain::{
    Actor, Channel, Event, FieldValue, Fields, Metadata, Priority, Role, Status, Visibility,
    EVENT_TYPES,
};
use uuid::Uuid;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/events");
const METADATA_FILE: &str = "metadata.msgpack";

fn dir() -> &'static Path {
    Path::new(DIR)
}

/// A time with microseconds, so truncation would show.
fn at(day: u32, hour: u32, micros: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, day, hour, 30, 15).unwrap()
        + chrono::Duration::microseconds(i64::from(micros))
}

fn fields() -> Fields {
    let mut f = Fields::new();
    f.insert("event_id".into(), FieldValue::Text("E-77".into()));
    f.insert(
        "countries".into(),
        FieldValue::List(vec!["DE".into(), "FR".into()]),
    );
    f
}

/// One sample of every event type this build writes, each field away from its default.
fn samples() -> Vec<Event> {
    vec![
        Event::Opened(event::Opened {
            ticket_id: Uuid::from_u128(0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_1042),
            number: 1042,
            subject: "Drucker brennt 🔥".into(),
            description: "It is <b>actually</b> on fire.\nPlease hurry.".into(),
            priority: Priority::Urgent,
            channel: Channel::Twitter,
            requester: "alice".into(),
            requester_name: Some("Alice Liddell".into()),
            org: Some("acme".into()),
            cc: vec!["bob".into(), "carol".into()],
            fields: fields(),
            due_at: Some(at(1, 13, 123_456)),
            contact_email: Some("alice@example.com".into()),
        }),
        Event::Commented(event::Commented {
            comment_id: Uuid::from_u128(0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_c001),
            body: "Internal: the customer's printer model is recalled.".into(),
            visibility: Visibility::Private,
            channel: Channel::Email,
        }),
        Event::StatusChanged(event::StatusChanged {
            from: Status::Resolved,
            to: Status::Open,
            reason: Some("customer replied".into()),
            reopen: true,
            automatic: true,
        }),
        Event::Edited(Edited {
            subject: Some(Change {
                from: "Drucker brennt 🔥".into(),
                to: "Printer on fire".into(),
            }),
            description: Some(Change {
                from: "It is on fire.".into(),
                to: "It was on fire.".into(),
            }),
            priority: Some(Change {
                from: Priority::Urgent,
                to: Priority::High,
            }),
            fields: Some(Change {
                from: Fields::new(),
                to: fields(),
            }),
            cc: Some(Change {
                from: vec!["bob".into()],
                to: vec!["bob".into(), "dave".into()],
            }),
            assignee: Some(Change {
                from: None,
                to: Some("sam".into()),
            }),
            due_at: Some(Change {
                from: Some(at(1, 13, 123_456)),
                to: None,
            }),
        }),
        Event::Escalated(event::Escalated {
            from: Status::AwaitingCustomer,
            reason: "No answer in a week.".into(),
        }),
        Event::Withdrawn(event::Withdrawn {
            from: Status::OnHold,
            reason: "duplicate".into(),
            comment: Some("See #1041.".into()),
        }),
        Event::Read(event::Read {}),
    ]
}

fn sample_metadata() -> Metadata {
    Metadata {
        actor: Actor {
            id: "carol".into(),
            name: Some("Carol".into()),
            role: Role::Customer,
            org: Some("acme".into()),
            org_wide: true,
        },
        correlation_id: Some(Uuid::from_u128(0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_aaaa)),
        causation_id: Some(Uuid::from_u128(0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_bbbb)),
        idempotency_key: Some("retry-7f3a".into()),
    }
}

fn file_name(event_type: &str, schema_version: u32) -> String {
    format!("{event_type}.v{schema_version}.msgpack")
}

/// `ticket.opened.v1.msgpack` → (`ticket.opened`, 1).
fn parse_file_name(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(".msgpack")?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    Some((event_type, version.parse().ok()?))
}

/// The value a fixture must decode to. A fixture of an older schema version decodes, through
/// the upcasters, to this build's newest shape: its expected value is given here.
fn expected(event_type: &str, schema_version: u32) -> Option<Event> {
    match (event_type, schema_version) {
        // v1 had no `channel`; upcasting gives `web` (domain/src/upcast.rs).
        ("ticket.commented", 1) => Some(Event::Commented(event::Commented {
            comment_id: Uuid::from_u128(0x0190_8d2e_4f00_7a1b_8c3d_0000_0000_c001),
            body: "Internal: the customer's printer model is recalled.".into(),
            visibility: Visibility::Private,
            channel: Channel::Web,
        })),
        _ => samples()
            .into_iter()
            .find(|e| e.type_name() == event_type && e.schema_version() == schema_version),
    }
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir())
        .unwrap_or_else(|e| panic!("reading {DIR}: {e}"))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_decodes_to_its_expected_value() {
    let files = fixture_files();
    assert!(!files.is_empty(), "no fixtures in {DIR}");
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
        if name == METADATA_FILE {
            let decoded = Metadata::decode(&bytes)
                .unwrap_or_else(|e| panic!("{name} no longer decodes: {e}"));
            assert_eq!(decoded, sample_metadata(), "{name}");
            continue;
        }
        let (event_type, version) = parse_file_name(name)
            .unwrap_or_else(|| panic!("{name} is not named <type>.v<schema>.msgpack"));
        let want = expected(event_type, version)
            .unwrap_or_else(|| panic!("{name} has no expected value in fixtures.rs"));
        let decoded = Event::decode(event_type, version, &bytes)
            .unwrap_or_else(|e| panic!("{name} no longer decodes: {e}"));
        assert_eq!(decoded, want, "{name}");
    }
}

#[test]
fn every_event_type_has_a_fixture_of_its_current_schema() {
    let sampled: BTreeSet<&str> = samples().iter().map(Event::type_name).collect();
    let known: BTreeSet<&str> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(
        sampled, known,
        "fixtures.rs needs exactly one sample of each type in EVENT_TYPES"
    );
    assert_eq!(samples().len(), EVENT_TYPES.len());
    for sample in samples() {
        let name = file_name(sample.type_name(), sample.schema_version());
        assert!(
            dir().join(&name).is_file(),
            "missing fixture {name}; see the top of domain/tests/fixtures.rs"
        );
    }
    assert!(
        dir().join(METADATA_FILE).is_file(),
        "missing {METADATA_FILE}"
    );
}

#[test]
#[ignore = "writes fixture files; run with --ignored to add missing ones (see the top of this file)"]
fn write_missing_fixtures() {
    fs::create_dir_all(dir()).expect("creating the fixture directory");
    let mut files: Vec<(String, Vec<u8>)> = samples()
        .iter()
        .map(|e| {
            let name = file_name(e.type_name(), e.schema_version());
            (name, e.encode().expect("encodable"))
        })
        .collect();
    files.push((
        METADATA_FILE.to_owned(),
        sample_metadata().encode().expect("encodable"),
    ));
    for (name, bytes) in files {
        let path = dir().join(&name);
        if path.exists() {
            eprintln!("kept {name} (fixtures are never rewritten)");
        } else {
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
            eprintln!("wrote {name}");
        }
    }
}
