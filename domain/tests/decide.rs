//! The command rules of CONTRACT §3–§5 as given/when/then tests on `decide`.
//!
//! `given(history)` folds past events through `evolve` (versions 1, 2, …, one minute apart from
//! `t0()`); `.when(actor, command)` runs `decide` one minute after the last event; `.then…`
//! asserts the events appended or the error's variant. A test that shows `decide` contradicting
//! the contract is `#[ignore]`d with the contract's words, not "fixed" here.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ticketd_domain::event::{self, Change, Edited};
use ticketd_domain::{
    decide, evolve, limits, Actor, AddComment, ChangeStatus, Channel, Command, CommandKind,
    DomainError, EditTicket, Escalate, Event, FieldValue, Fields, FieldsPatch, OpenTicket,
    Priority, Recorded, Role, SlaPolicy, State, Status, Ticket, Visibility, Withdraw,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

const TICKET: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_1042);
const COMMENT: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_c001);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 9, 0, 0).unwrap()
}

fn minutes(n: u64) -> Duration {
    Duration::minutes(n as i64)
}

struct Given {
    state: State,
    version: u64,
    now: DateTime<Utc>,
    sla: SlaPolicy,
}

/// A stream holding `history`, folded with increasing versions and times.
fn given(history: Vec<(Actor, Event)>) -> Given {
    let mut state = None;
    let mut version = 0;
    for (actor, event) in history {
        version += 1;
        let recorded = Recorded {
            version,
            recorded_at: t0() + minutes(version - 1),
            actor,
            event,
        };
        state = evolve(state, &recorded);
    }
    Given {
        state,
        version,
        now: t0() + minutes(version),
        sla: SlaPolicy::default(),
    }
}

/// A stream nothing was ever appended to.
fn nothing() -> Given {
    given(vec![])
}

impl Given {
    fn with_policy(mut self, sla: SlaPolicy) -> Self {
        self.sla = sla;
        self
    }

    fn ticket(&self) -> &Ticket {
        self.state
            .as_ref()
            .expect("the given history opens a ticket")
    }

    fn when(self, actor: Actor, kind: CommandKind) -> Then {
        let cmd = Command {
            actor,
            at: self.now,
            kind,
        };
        let result = decide(&self.state, &cmd, &self.sla);
        Then {
            given: self,
            cmd,
            result,
        }
    }
}

struct Then {
    given: Given,
    cmd: Command,
    result: Result<Vec<Event>, DomainError>,
}

impl Then {
    #[track_caller]
    fn then(self, expected: Vec<Event>) -> Self {
        assert_eq!(self.result, Ok(expected), "command: {:?}", self.cmd);
        self
    }

    #[track_caller]
    fn then_nothing(self) -> Self {
        self.then(vec![])
    }

    #[track_caller]
    fn then_ok(self) -> Self {
        assert!(
            self.result.is_ok(),
            "command: {:?} -> {:?}",
            self.cmd,
            self.result
        );
        self
    }

    #[track_caller]
    fn then_not_found(self) {
        assert_eq!(
            self.result,
            Err(DomainError::NotFound),
            "command: {:?}",
            self.cmd
        );
    }

    #[track_caller]
    fn then_forbidden(self) {
        assert!(
            matches!(self.result, Err(DomainError::Forbidden(_))),
            "expected Forbidden for {:?}, got {:?}",
            self.cmd,
            self.result
        );
    }

    #[track_caller]
    fn then_conflict(self) {
        assert!(
            matches!(self.result, Err(DomainError::InvalidTransition(_))),
            "expected InvalidTransition for {:?}, got {:?}",
            self.cmd,
            self.result
        );
    }

    /// The command is refused as invalid input naming exactly `fields`, in this order.
    #[track_caller]
    fn then_invalid(self, fields: &[&str]) {
        match &self.result {
            Err(DomainError::Invalid(errors)) => {
                let got: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(got, fields, "invalid fields for {:?}", self.cmd);
                assert!(errors.iter().all(|e| !e.message.is_empty()));
            }
            other => panic!(
                "expected Invalid({fields:?}) for {:?}, got {other:?}",
                self.cmd
            ),
        }
    }

    /// The ticket after the decided events are appended (versions and time continue).
    #[track_caller]
    fn ticket_after(&self) -> Ticket {
        let events = self.result.clone().expect("the command succeeded");
        let mut state = self.given.state.clone();
        for (version, event) in (self.given.version + 1..).zip(events) {
            state = evolve(
                state,
                &Recorded {
                    version,
                    recorded_at: self.cmd.at,
                    actor: self.cmd.actor.clone(),
                    event,
                },
            );
        }
        state.expect("a ticket after the command")
    }
}

// ---------------------------------------------------------------------------------------------
// Actors: alice requested the ticket (org acme), bob is on CC, carol sees acme org-wide, dave is
// in acme without org_wide, eve sees globex org-wide.
// ---------------------------------------------------------------------------------------------

fn customer(id: &str, name: Option<&str>, org: Option<&str>, org_wide: bool) -> Actor {
    Actor {
        id: id.into(),
        name: name.map(Into::into),
        role: Role::Customer,
        org: org.map(Into::into),
        org_wide,
    }
}

fn staff(id: &str, name: &str, role: Role) -> Actor {
    Actor {
        id: id.into(),
        name: Some(name.into()),
        role,
        org: None,
        org_wide: false,
    }
}

fn alice() -> Actor {
    customer("alice", Some("Alice"), Some("acme"), false)
}
fn bob() -> Actor {
    customer("bob", None, Some("acme"), false)
}
fn carol() -> Actor {
    customer("carol", Some("Carol"), Some("acme"), true)
}
fn dave() -> Actor {
    customer("dave", None, Some("acme"), false)
}
fn eve() -> Actor {
    customer("eve", None, Some("globex"), true)
}
fn agent() -> Actor {
    staff("sam", "Sam", Role::Agent)
}
fn admin() -> Actor {
    staff("ada", "Ada", Role::Admin)
}
fn auditor() -> Actor {
    staff("aud", "Aud", Role::Auditor)
}
fn public() -> Actor {
    Actor {
        id: String::new(),
        name: None,
        role: Role::Public,
        org: None,
        org_wide: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Events and commands
// ---------------------------------------------------------------------------------------------

/// Alice's ticket in acme, with bob on CC.
fn opened() -> event::Opened {
    event::Opened {
        ticket_id: TICKET,
        number: 1042,
        subject: "Printer on fire".into(),
        description: "It is actually on fire.".into(),
        priority: Priority::Medium,
        channel: Channel::Web,
        requester: "alice".into(),
        requester_name: Some("Alice".into()),
        org: Some("acme".into()),
        cc: vec!["bob".into()],
        fields: Fields::new(),
        due_at: Some(t0() + Duration::hours(72)),
        contact_email: None,
    }
}

fn opened_by_alice() -> (Actor, Event) {
    (alice(), Event::Opened(opened()))
}

fn status_changed(from: Status, to: Status) -> Event {
    Event::StatusChanged(event::StatusChanged {
        from,
        to,
        reason: None,
        reopen: false,
        automatic: false,
    })
}

fn automatic(from: Status, to: Status, reopen: bool) -> Event {
    Event::StatusChanged(event::StatusChanged {
        from,
        to,
        reason: None,
        reopen,
        automatic: true,
    })
}

/// Alice's ticket, brought into `status` by the agent.
fn ticket_in(status: Status) -> Given {
    let mut history = vec![opened_by_alice()];
    match status {
        Status::Open => {}
        Status::Escalated => history.push((
            agent(),
            Event::Escalated(event::Escalated {
                from: Status::Open,
                reason: "VIP".into(),
            }),
        )),
        Status::Withdrawn => history.push((
            alice(),
            Event::Withdrawn(event::Withdrawn {
                from: Status::Open,
                reason: "sorted it out myself".into(),
                comment: None,
            }),
        )),
        other => history.push((agent(), status_changed(Status::Open, other))),
    }
    given(history)
}

const ACTIVE: [Status; 5] = [
    Status::Open,
    Status::InProgress,
    Status::AwaitingCustomer,
    Status::OnHold,
    Status::Escalated,
];

fn open_cmd(subject: &str, description: &str) -> OpenTicket {
    OpenTicket {
        id: TICKET,
        number: 1042,
        subject: subject.into(),
        description: description.into(),
        ..OpenTicket::default()
    }
}

fn open(o: OpenTicket) -> CommandKind {
    CommandKind::Open(o)
}

fn comment(body: &str) -> CommandKind {
    CommandKind::Comment(AddComment {
        comment_id: COMMENT,
        body: body.into(),
        visibility: None,
    })
}

fn private_comment(body: &str) -> CommandKind {
    CommandKind::Comment(AddComment {
        comment_id: COMMENT,
        body: body.into(),
        visibility: Some(Visibility::Private),
    })
}

fn commented(body: &str, visibility: Visibility) -> Event {
    Event::Commented(event::Commented {
        comment_id: COMMENT,
        body: body.into(),
        visibility,
        channel: Channel::Web,
    })
}

fn set_status(status: Status) -> CommandKind {
    CommandKind::ChangeStatus(ChangeStatus {
        status,
        reason: None,
    })
}

fn set_status_because(status: Status, reason: &str) -> CommandKind {
    CommandKind::ChangeStatus(ChangeStatus {
        status,
        reason: Some(reason.into()),
    })
}

fn withdraw(reason: &str) -> CommandKind {
    CommandKind::Withdraw(Withdraw {
        reason: reason.into(),
        comment: None,
    })
}

fn escalate(reason: &str) -> CommandKind {
    CommandKind::Escalate(Escalate {
        reason: reason.into(),
    })
}

fn read() -> CommandKind {
    CommandKind::MarkRead
}

fn edit(e: EditTicket) -> CommandKind {
    CommandKind::Edit(e)
}

fn edit_subject(s: &str) -> CommandKind {
    edit(EditTicket {
        subject: Some(s.into()),
        ..EditTicket::default()
    })
}

fn read_event() -> Event {
    Event::Read(event::Read {})
}

/// One of each command on an existing ticket, each valid in itself.
fn every_command_on_a_ticket() -> Vec<CommandKind> {
    vec![
        comment("hello"),
        private_comment("note to self"),
        set_status(Status::Closed),
        set_status(Status::InProgress),
        withdraw("no longer needed"),
        escalate("too slow"),
        read(),
        edit_subject("New subject"),
    ]
}

fn fields_with(n: usize) -> Fields {
    (0..n)
        .map(|i| (format!("k{i:02}"), FieldValue::Text(format!("v{i}"))))
        .collect()
}

/// An edit that sets each of `fields`.
fn setting(fields: &Fields) -> FieldsPatch {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect()
}

fn text(s: &str) -> FieldValue {
    FieldValue::Text(s.into())
}

// ---------------------------------------------------------------------------------------------
// 4.1 open
// ---------------------------------------------------------------------------------------------

#[test]
fn customer_opens_with_requester_and_org_from_the_token_and_defaults() {
    nothing()
        .when(
            alice(),
            open(open_cmd("Printer on fire", "It is actually on fire.")),
        )
        .then(vec![Event::Opened(event::Opened {
            ticket_id: TICKET,
            number: 1042,
            subject: "Printer on fire".into(),
            description: "It is actually on fire.".into(),
            priority: Priority::None,
            channel: Channel::Web,
            requester: "alice".into(),
            requester_name: Some("Alice".into()),
            org: Some("acme".into()),
            cc: vec![],
            fields: Fields::new(),
            due_at: None, // priority none: no due date under the default policy
            contact_email: None,
        })]);
}

#[test]
fn opened_ticket_starts_open_at_version_1() {
    let t = nothing()
        .when(alice(), open(open_cmd("Printer on fire", "It is on fire.")))
        .then_ok()
        .ticket_after();
    assert_eq!(t.status, Status::Open);
    assert_eq!(t.version, 1);
    assert_eq!(t.created_at, t0());
    assert_eq!(t.last_activity_at, t0());
    assert_eq!(t.assignee, None);
    assert_eq!((t.reopens, t.escalations), (0, 0));
}

#[test]
fn customer_may_give_priority_channel_cc_and_fields() {
    let mut fields = Fields::new();
    fields.insert("event_id".into(), FieldValue::Text("E-77".into()));
    fields.insert(
        "countries".into(),
        FieldValue::List(vec!["DE".into(), "FR".into()]),
    );
    let cmd = OpenTicket {
        priority: Some(Priority::High),
        channel: Some(Channel::Email),
        cc: Some(vec!["bob".into(), "dave".into()]),
        fields: Some(fields.clone()),
        ..open_cmd("Printer on fire", "It is on fire.")
    };
    nothing()
        .when(alice(), open(cmd))
        .then(vec![Event::Opened(event::Opened {
            ticket_id: TICKET,
            number: 1042,
            subject: "Printer on fire".into(),
            description: "It is on fire.".into(),
            priority: Priority::High,
            channel: Channel::Email,
            requester: "alice".into(),
            requester_name: Some("Alice".into()),
            org: Some("acme".into()),
            cc: vec!["bob".into(), "dave".into()],
            fields,
            due_at: Some(t0() + Duration::hours(24)),
            contact_email: None,
        })]);
}

#[test]
fn customer_without_an_org_opens_a_ticket_of_no_org() {
    let t = nothing()
        .when(
            customer("zoe", None, None, false),
            open(open_cmd("Hi", "Hello")),
        )
        .then_ok()
        .ticket_after();
    assert_eq!((t.requester.as_str(), t.org), ("zoe", None));
}

fn due_at_for(priority: Priority, sla: SlaPolicy) -> Option<DateTime<Utc>> {
    let then = nothing().with_policy(sla).when(
        alice(),
        open(OpenTicket {
            priority: Some(priority),
            ..open_cmd("Subject", "Description")
        }),
    );
    match then.result {
        Ok(events) => match events.as_slice() {
            [Event::Opened(o)] => o.due_at,
            other => panic!("expected one Opened, got {other:?}"),
        },
        Err(e) => panic!("open failed: {e:?}"),
    }
}

#[test]
fn due_date_follows_the_default_sla_policy() {
    let expected = [
        (Priority::Urgent, Some(Duration::hours(4))),
        (Priority::High, Some(Duration::hours(24))),
        (Priority::Medium, Some(Duration::hours(72))),
        (Priority::Low, Some(Duration::hours(120))),
        (Priority::None, None),
    ];
    for (priority, after) in expected {
        assert_eq!(
            due_at_for(priority, SlaPolicy::default()),
            after.map(|d| t0() + d),
            "{priority}"
        );
    }
}

#[test]
fn due_date_follows_a_configured_sla_policy() {
    let sla = SlaPolicy::parse("urgent=1h,none=2d").expect("a valid policy");
    let expected = [
        (Priority::Urgent, Some(Duration::hours(1))),
        (Priority::High, Some(Duration::hours(24))), // unnamed: keeps the default
        (Priority::Medium, Some(Duration::hours(72))),
        (Priority::Low, Some(Duration::hours(120))),
        (Priority::None, Some(Duration::days(2))),
    ];
    for (priority, after) in expected {
        assert_eq!(
            due_at_for(priority, sla.clone()),
            after.map(|d| t0() + d),
            "{priority}"
        );
    }
}

#[test]
fn a_policy_with_a_unit_of_several_bytes_is_refused() {
    for spec in ["urgent=4ü", "urgent=ü", "high=1h,low=2€"] {
        assert!(SlaPolicy::parse(spec).is_err(), "{spec}");
    }
}

#[test]
fn staff_may_give_an_explicit_due_date_that_beats_the_policy() {
    let due = t0() + Duration::days(10);
    let t = nothing()
        .when(
            agent(),
            open(OpenTicket {
                priority: Some(Priority::Urgent),
                due_at: Some(due),
                requester: Some("alice".into()),
                org: Some("acme".into()),
                ..open_cmd("Subject", "Description")
            }),
        )
        .then_ok()
        .ticket_after();
    assert_eq!(t.due_at, Some(due));
    assert_eq!(t.priority, Priority::Urgent);
}

#[test]
fn a_due_date_has_a_four_digit_year() {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").to_utc();
    // What chrono's serde reads of `"+10000-01-01T00:00:00Z"` and `"-0001-12-31 23:59:59Z"`.
    let outside = [
        Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).single(),
        Utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).single(),
    ];
    for due in outside.map(|t| t.expect("time")) {
        nothing()
            .when(
                agent(),
                open(OpenTicket {
                    due_at: Some(due),
                    ..open_cmd("S", "D")
                }),
            )
            .then_invalid(&["due_at"]);
        ticket_in(Status::Open)
            .when(
                agent(),
                edit(EditTicket {
                    due_at: Some(Some(due)),
                    ..EditTicket::default()
                }),
            )
            .then_invalid(&["due_at"]);
    }
    for due in [
        at("0000-01-01T00:00:00Z"),
        at("9999-12-31T23:59:59.999999Z"),
    ] {
        let t = ticket_in(Status::Open)
            .when(
                agent(),
                edit(EditTicket {
                    due_at: Some(Some(due)),
                    ..EditTicket::default()
                }),
            )
            .then_ok()
            .ticket_after();
        assert_eq!(t.due_at, Some(due));
    }
}

#[test]
fn customer_may_not_give_requester_org_or_due_at() {
    let cases = [
        OpenTicket {
            requester: Some("mallory".into()),
            ..open_cmd("S", "D")
        },
        OpenTicket {
            requester: Some("alice".into()), // even naming themselves
            ..open_cmd("S", "D")
        },
        OpenTicket {
            org: Some("globex".into()),
            ..open_cmd("S", "D")
        },
        OpenTicket {
            due_at: Some(t0() + Duration::days(1)),
            ..open_cmd("S", "D")
        },
    ];
    for case in cases {
        nothing().when(alice(), open(case)).then_forbidden();
    }
}

#[test]
fn staff_opens_a_ticket_on_a_customers_behalf() {
    let then = nothing()
        .when(
            agent(),
            open(OpenTicket {
                requester: Some("alice".into()),
                org: Some("acme".into()),
                channel: Some(Channel::Phone),
                ..open_cmd("Called about the printer", "Customer reports fire.")
            }),
        )
        .then(vec![Event::Opened(event::Opened {
            ticket_id: TICKET,
            number: 1042,
            subject: "Called about the printer".into(),
            description: "Customer reports fire.".into(),
            priority: Priority::None,
            channel: Channel::Phone,
            requester: "alice".into(),
            requester_name: None, // the agent's name is not the requester's
            org: Some("acme".into()),
            cc: vec![],
            fields: Fields::new(),
            due_at: None,
            contact_email: None,
        })]);
    // The customer the ticket was opened for, and her org-wide colleague, see it.
    let t = then.ticket_after();
    assert!(t.visible_to(&alice()));
    assert!(t.visible_to(&carol()));
    assert!(!t.visible_to(&dave()));
    let opened = then.result.unwrap().remove(0);
    given(vec![(agent(), opened)])
        .when(alice(), read())
        .then(vec![read_event()]);
}

#[test]
fn staff_opening_for_themselves_is_the_requester() {
    let t = nothing()
        .when(admin(), open(open_cmd("Internal", "Rotate the keys.")))
        .then_ok()
        .ticket_after();
    assert_eq!((t.requester.as_str(), t.org), ("ada", None));
}

#[test]
fn public_form_requires_a_contact_email() {
    nothing()
        .when(public(), open(open_cmd("Help", "Please help.")))
        .then_invalid(&["contact_email"]);
    nothing()
        .when(
            public(),
            open(OpenTicket {
                contact_email: Some("not an email".into()),
                ..open_cmd("Help", "Please help.")
            }),
        )
        .then_invalid(&["contact_email"]);
}

#[test]
fn public_form_with_a_contact_email_opens_a_ticket() {
    nothing()
        .when(
            public(),
            open(OpenTicket {
                contact_email: Some("pat@example.com".into()),
                ..open_cmd("Help", "Please help.")
            }),
        )
        .then(vec![Event::Opened(event::Opened {
            ticket_id: TICKET,
            number: 1042,
            subject: "Help".into(),
            description: "Please help.".into(),
            priority: Priority::None,
            channel: Channel::Web,
            requester: "pat@example.com".into(),
            requester_name: None,
            org: None,
            cc: vec![],
            fields: Fields::new(),
            due_at: None,
            contact_email: Some("pat@example.com".into()),
        })]);
}

#[test]
fn public_form_may_not_give_requester_org_or_due_at() {
    nothing()
        .when(
            public(),
            open(OpenTicket {
                contact_email: Some("pat@example.com".into()),
                org: Some("acme".into()),
                ..open_cmd("Help", "Please help.")
            }),
        )
        .then_forbidden();
}

#[test]
fn signed_in_callers_give_no_contact_email() {
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                contact_email: Some("alice@example.com".into()),
                ..open_cmd("Help", "Please help.")
            }),
        )
        .then_invalid(&["contact_email"]);
}

#[test]
fn opening_an_existing_ticket_conflicts() {
    given(vec![opened_by_alice()])
        .when(alice(), open(open_cmd("Again", "Again")))
        .then_conflict();
}

// ---------------------------------------------------------------------------------------------
// §5 auditors and visibility
// ---------------------------------------------------------------------------------------------

#[test]
fn auditors_run_no_command() {
    nothing()
        .when(auditor(), open(open_cmd("Subject", "Description")))
        .then_forbidden();
    for status in [Status::Open, Status::Resolved, Status::Withdrawn] {
        for cmd in every_command_on_a_ticket() {
            ticket_in(status).when(auditor(), cmd).then_forbidden();
        }
    }
}

#[test]
fn customer_who_cannot_see_the_ticket_gets_not_found() {
    // dave is in acme but neither requester, CC nor org-wide; eve sees globex, not acme.
    for stranger in [dave(), eve(), customer("zoe", None, None, true)] {
        for cmd in every_command_on_a_ticket() {
            ticket_in(Status::Open)
                .when(stranger.clone(), cmd)
                .then_not_found();
        }
        // Even on a withdrawn ticket existence is not leaked.
        ticket_in(Status::Withdrawn)
            .when(stranger.clone(), comment("hi"))
            .then_not_found();
    }
}

#[test]
fn org_wide_customer_without_an_org_sees_no_org_less_ticket() {
    let mut o = opened();
    o.org = None;
    given(vec![(agent(), Event::Opened(o))])
        .when(customer("zoe", None, None, true), read())
        .then_not_found();
}

#[test]
fn everyone_who_can_see_the_ticket_may_read_it() {
    for reader in [alice(), bob(), carol(), agent(), admin()] {
        ticket_in(Status::Open)
            .when(reader, read())
            .then(vec![read_event()]);
    }
}

#[test]
fn commands_on_a_never_opened_stream_are_not_found() {
    for actor in [agent(), admin(), alice()] {
        for cmd in every_command_on_a_ticket() {
            nothing().when(actor.clone(), cmd).then_not_found();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (§3, §4)
// ---------------------------------------------------------------------------------------------

#[test]
fn subject_counts_1_to_200_characters_after_trimming_and_is_stored_trimmed() {
    let max = "s".repeat(limits::SUBJECT_MAX);
    let t = nothing()
        .when(alice(), open(open_cmd(&format!("  {max}\t\n"), "D")))
        .then_ok()
        .ticket_after();
    assert_eq!(t.subject, max);

    // Characters, not bytes.
    nothing()
        .when(alice(), open(open_cmd(&"é".repeat(200), "D")))
        .then_ok();

    for bad in [
        "",
        "   ",
        &"s".repeat(201),
        &format!(" {} ", "é".repeat(201)),
    ] {
        nothing()
            .when(alice(), open(open_cmd(bad, "D")))
            .then_invalid(&["subject"]);
    }
}

#[test]
fn description_counts_1_to_20000_characters_and_is_stored_as_given() {
    nothing()
        .when(alice(), open(open_cmd("S", &"d".repeat(20_000))))
        .then_ok();
    for bad in ["", &"d".repeat(20_001)] {
        nothing()
            .when(alice(), open(open_cmd("S", bad)))
            .then_invalid(&["description"]);
    }
    // Not trimmed, not stripped of markup (§4: strings are stored as given).
    let t = nothing()
        .when(alice(), open(open_cmd("S", "  <b>bold</b>\n")))
        .then_ok()
        .ticket_after();
    assert_eq!(t.description, "  <b>bold</b>\n");
}

#[test]
fn comment_body_counts_1_to_20000_characters() {
    ticket_in(Status::Open)
        .when(agent(), comment(&"b".repeat(20_000)))
        .then_ok();
    for bad in ["", &"b".repeat(20_001)] {
        ticket_in(Status::Open)
            .when(agent(), comment(bad))
            .then_invalid(&["body"]);
    }
    ticket_in(Status::Open)
        .when(agent(), comment("<script>x</script>"))
        .then(vec![commented("<script>x</script>", Visibility::Public)]);
}

#[test]
fn withdraw_and_escalate_require_a_reason() {
    for bad in ["", "   "] {
        ticket_in(Status::Open)
            .when(alice(), withdraw(bad))
            .then_invalid(&["reason"]);
        ticket_in(Status::Open)
            .when(alice(), escalate(bad))
            .then_invalid(&["reason"]);
    }
}

#[test]
fn a_status_reason_when_given_is_not_empty() {
    ticket_in(Status::Open)
        .when(agent(), set_status_because(Status::Resolved, ""))
        .then_invalid(&["reason"]);
}

#[test]
fn fields_have_at_most_50_keys() {
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                fields: Some(fields_with(limits::FIELDS_MAX)),
                ..open_cmd("S", "D")
            }),
        )
        .then_ok();
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                fields: Some(fields_with(51)),
                ..open_cmd("S", "D")
            }),
        )
        .then_invalid(&["fields"]);
    ticket_in(Status::Open)
        .when(
            agent(),
            edit(EditTicket {
                fields: Some(setting(&fields_with(51))),
                ..EditTicket::default()
            }),
        )
        .then_invalid(&["fields"]);
}

#[test]
fn cc_lists_user_ids_of_1_to_128_characters() {
    let longest = "u".repeat(128);
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec![longest.clone()]),
                ..open_cmd("S", "D")
            }),
        )
        .then_ok();
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec!["bob".into(), String::new(), "u".repeat(129)]),
                ..open_cmd("S", "D")
            }),
        )
        .then_invalid(&["cc[1]", "cc[2]"]);
    // Control characters name nobody (and PostgreSQL's text refuses U+0000).
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec!["b\u{0}ob".into(), "bob\n".into(), "b\u{85}".into()]),
                ..open_cmd("S", "D")
            }),
        )
        .then_invalid(&["cc[0]", "cc[1]", "cc[2]"]);
    ticket_in(Status::Open)
        .when(
            alice(),
            edit(EditTicket {
                cc: Some(vec![String::new()]),
                ..EditTicket::default()
            }),
        )
        .then_invalid(&["cc[0]"]);
}

#[test]
fn an_overlong_list_is_one_error() {
    // A 1 MiB body holds hundreds of thousands of entries: the answer names the list once,
    // not each bad entry of it (nor each bad key of too many fields).
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec![String::new(); 100_000]),
                fields: Some(
                    (0..=limits::FIELDS_MAX)
                        .map(|i| (format!("{i:>101}"), text("v")))
                        .collect(),
                ),
                ..open_cmd("S", "D")
            }),
        )
        .then_invalid(&["cc", "fields"]);
}

#[test]
fn a_full_ticket_takes_no_more_comments_text_edits_or_reads() {
    // Full by events: the opening and reads up to the bound.
    let by_events = || {
        let mut history = vec![opened_by_alice()];
        let reads = (1..limits::HISTORY_EVENTS_MAX).map(|_| (bob(), read_event()));
        history.extend(reads);
        given(history)
    };
    // Full by text: 839 comments of 20,000 ASCII characters pass 16 MiB.
    let by_text = || {
        let mut history = vec![opened_by_alice()];
        let body = "x".repeat(limits::TEXT_MAX);
        let n = limits::HISTORY_BYTES_MAX / limits::TEXT_MAX as u64 + 1;
        history.extend((0..n).map(|_| (alice(), commented(&body, Visibility::Public))));
        given(history)
    };
    for full in [by_events, by_text] {
        full().when(alice(), comment("one more")).then_conflict();
        full()
            .when(agent(), private_comment("one more"))
            .then_conflict();
        full()
            .when(alice(), edit_subject("New subject"))
            .then_conflict();
        full()
            .when(
                agent(),
                edit(EditTicket {
                    fields: Some(setting(&fields_with(1))),
                    ..EditTicket::default()
                }),
            )
            .then_conflict();
        // What closing it out takes still goes: a status, an assignee, a withdrawal.
        full().when(agent(), set_status(Status::Resolved)).then_ok();
        full()
            .when(
                agent(),
                edit(EditTicket {
                    assignee: Some(Some("agent-2".into())),
                    ..EditTicket::default()
                }),
            )
            .then_ok();
        full().when(alice(), withdraw("moving on")).then_ok();
        // Invalid input is still named first, and an edit that changes nothing still succeeds.
        full().when(alice(), comment("")).then_invalid(&["body"]);
        full()
            .when(alice(), edit_subject("Printer on fire"))
            .then_nothing();
    }
    // Reads succeed and append nothing once the events reach the bound.
    by_events().when(alice(), read()).then_nothing();
    by_text().when(alice(), read()).then_ok();
    // One event short of the bound, a comment still goes.
    let mut history = vec![opened_by_alice()];
    history.extend((2..limits::HISTORY_EVENTS_MAX).map(|_| (bob(), read_event())));
    given(history).when(alice(), comment("last one")).then_ok();
}

#[test]
fn cc_is_stored_without_duplicates_in_the_order_given() {
    let t = nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec!["dave".into(), "bob".into(), "dave".into()]),
                ..open_cmd("S", "D")
            }),
        )
        .then_ok()
        .ticket_after();
    assert_eq!(t.cc, ["dave", "bob"]);
}

#[test]
fn every_invalid_field_is_reported_together() {
    nothing()
        .when(
            alice(),
            open(OpenTicket {
                cc: Some(vec![String::new()]),
                fields: Some(fields_with(51)),
                ..open_cmd("  ", "")
            }),
        )
        .then_invalid(&["subject", "description", "cc[0]", "fields"]);
    ticket_in(Status::Open)
        .when(
            agent(),
            edit(EditTicket {
                subject: Some(String::new()),
                description: Some("d".repeat(20_001)),
                assignee: Some(Some(String::new())),
                ..EditTicket::default()
            }),
        )
        .then_invalid(&["subject", "description", "assignee"]);
    ticket_in(Status::Open)
        .when(
            alice(),
            CommandKind::Withdraw(Withdraw {
                reason: String::new(),
                comment: Some(String::new()),
            }),
        )
        .then_invalid(&["reason", "comment"]);
}

// ---------------------------------------------------------------------------------------------
// 4.3 status
// ---------------------------------------------------------------------------------------------

#[test]
fn staff_may_move_an_active_ticket_to_any_status_but_withdrawn() {
    for actor in [agent(), admin()] {
        for from in ACTIVE {
            for to in Status::ALL.iter().copied() {
                if to == from || to == Status::Withdrawn {
                    continue;
                }
                let then = ticket_in(from)
                    .when(actor.clone(), set_status_because(to, "triage"))
                    .then(vec![Event::StatusChanged(event::StatusChanged {
                        from,
                        to,
                        reason: Some("triage".into()),
                        reopen: false,
                        automatic: false,
                    })]);
                let after = then.ticket_after();
                assert_eq!(after.status, to);
                // A move to `escalated` counts as an escalation, by whichever command.
                let escalated = u32::from(to == Status::Escalated);
                assert_eq!(
                    after.escalations,
                    u32::from(from == Status::Escalated) + escalated
                );
            }
        }
    }
}

#[test]
fn withdrawing_through_the_status_command_is_invalid() {
    for actor in [agent(), alice()] {
        ticket_in(Status::Open)
            .when(actor, set_status(Status::Withdrawn))
            .then_invalid(&["status"]);
    }
}

#[test]
fn a_customer_who_sees_the_ticket_may_close_it() {
    for actor in [alice(), bob(), carol()] {
        for from in [
            Status::Open,
            Status::AwaitingCustomer,
            Status::Escalated,
            Status::Resolved,
        ] {
            ticket_in(from)
                .when(actor.clone(), set_status_because(Status::Closed, "fixed"))
                .then(vec![Event::StatusChanged(event::StatusChanged {
                    from,
                    to: Status::Closed,
                    reason: Some("fixed".into()),
                    reopen: false,
                    automatic: false,
                })]);
        }
    }
}

#[test]
fn a_customer_may_set_no_status_but_closed() {
    for actor in [alice(), bob(), carol()] {
        for to in [
            Status::Open,
            Status::InProgress,
            Status::AwaitingCustomer,
            Status::OnHold,
            Status::Escalated,
            Status::Resolved,
        ] {
            let from = if to == Status::OnHold {
                Status::Open
            } else {
                Status::OnHold
            };
            ticket_in(from)
                .when(actor.clone(), set_status(to))
                .then_forbidden();
        }
        // Reopening a closed ticket goes through a reply, not the status command.
        ticket_in(Status::Closed)
            .when(actor.clone(), set_status(Status::Open))
            .then_forbidden();
    }
}

#[test]
fn setting_the_current_status_is_a_no_op() {
    for status in Status::ALL.iter().copied() {
        if status == Status::Withdrawn {
            continue;
        }
        ticket_in(status)
            .when(agent(), set_status(status))
            .then_nothing();
    }
    ticket_in(Status::Closed)
        .when(alice(), set_status(Status::Closed))
        .then_nothing();
    // Even a status a customer may not set: nothing changes, so nothing is refused.
    ticket_in(Status::Open)
        .when(alice(), set_status(Status::Open))
        .then_nothing();
}

#[test]
fn staff_reopening_a_resolved_ticket_counts_a_reopen() {
    let then = ticket_in(Status::Resolved)
        .when(agent(), set_status(Status::Open))
        .then(vec![Event::StatusChanged(event::StatusChanged {
            from: Status::Resolved,
            to: Status::Open,
            reason: None,
            reopen: true,
            automatic: false,
        })]);
    assert_eq!(then.ticket_after().reopens, 1);
    ticket_in(Status::Resolved)
        .when(agent(), set_status(Status::Closed))
        .then(vec![status_changed(Status::Resolved, Status::Closed)]);
    // Back to another active status is not a reopen (CONTRACT §6.5: "back to open").
    let then = ticket_in(Status::Closed)
        .when(agent(), set_status(Status::InProgress))
        .then(vec![status_changed(Status::Closed, Status::InProgress)]);
    assert_eq!(then.ticket_after().reopens, 0);
}

// ---------------------------------------------------------------------------------------------
// withdrawn is terminal
// ---------------------------------------------------------------------------------------------

#[test]
fn on_a_withdrawn_ticket_every_command_but_read_conflicts() {
    for actor in [agent(), admin(), alice(), bob(), carol()] {
        for cmd in every_command_on_a_ticket() {
            let is_read = cmd == read();
            let then = ticket_in(Status::Withdrawn).when(actor.clone(), cmd);
            if is_read {
                then.then(vec![read_event()]);
            } else {
                then.then_conflict();
            }
        }
        for status in Status::ALL.iter().copied() {
            if status == Status::Withdrawn {
                continue; // see the ignored test below
            }
            ticket_in(Status::Withdrawn)
                .when(actor.clone(), set_status(status))
                .then_conflict();
        }
    }
}

#[test]
fn setting_withdrawn_on_a_withdrawn_ticket_conflicts() {
    for actor in [agent(), alice()] {
        ticket_in(Status::Withdrawn)
            .when(actor, set_status(Status::Withdrawn))
            .then_conflict();
    }
}

#[test]
fn a_withdrawn_ticket_can_still_be_read_and_reads_raise_the_version() {
    let then = ticket_in(Status::Withdrawn)
        .when(alice(), read())
        .then(vec![read_event()]);
    let t = then.ticket_after();
    assert_eq!(t.status, Status::Withdrawn);
    assert_eq!(t.version, 3);
}

// ---------------------------------------------------------------------------------------------
// 4.2 comments and the automatic moves
// ---------------------------------------------------------------------------------------------

#[test]
fn a_reply_by_the_requester_or_a_cc_on_awaiting_customer_moves_it_to_in_progress() {
    for actor in [alice(), bob()] {
        let then = ticket_in(Status::AwaitingCustomer)
            .when(actor, comment("Here are the logs."))
            .then(vec![
                commented("Here are the logs.", Visibility::Public),
                automatic(Status::AwaitingCustomer, Status::InProgress, false),
            ]);
        let t = then.ticket_after();
        assert_eq!(t.status, Status::InProgress);
        assert_eq!(t.reopens, 0);
    }
}

#[test]
fn a_reply_by_the_requester_or_a_cc_on_resolved_or_closed_reopens_it() {
    for actor in [alice(), bob()] {
        for from in [Status::Resolved, Status::Closed] {
            let then = ticket_in(from)
                .when(actor.clone(), comment("Still broken."))
                .then(vec![
                    commented("Still broken.", Visibility::Public),
                    automatic(from, Status::Open, true),
                ]);
            let t = then.ticket_after();
            assert_eq!(t.status, Status::Open);
            assert_eq!(t.reopens, 1);
            assert_eq!(t.version, 4);
        }
    }
}

#[test]
fn every_reopen_counts() {
    let t = given(vec![
        opened_by_alice(),
        (agent(), status_changed(Status::Open, Status::Resolved)),
        (alice(), commented("again", Visibility::Public)),
        (alice(), automatic(Status::Resolved, Status::Open, true)),
        (agent(), status_changed(Status::Open, Status::Closed)),
    ])
    .when(bob(), comment("and again"))
    .then_ok()
    .ticket_after();
    assert_eq!((t.status, t.reopens), (Status::Open, 2));
}

#[test]
fn a_reply_on_other_active_statuses_moves_nothing() {
    for from in [
        Status::Open,
        Status::InProgress,
        Status::OnHold,
        Status::Escalated,
    ] {
        ticket_in(from)
            .when(alice(), comment("Any news?"))
            .then(vec![commented("Any news?", Visibility::Public)]);
    }
}

#[test]
fn a_customer_may_not_write_a_private_comment() {
    for actor in [alice(), bob(), carol()] {
        ticket_in(Status::Open)
            .when(actor, private_comment("psst"))
            .then_forbidden();
    }
}

#[test]
fn staff_comments_do_not_move_the_status() {
    for from in [Status::AwaitingCustomer, Status::Resolved, Status::Closed] {
        for actor in [agent(), admin()] {
            ticket_in(from)
                .when(actor.clone(), comment("Any update?"))
                .then(vec![commented("Any update?", Visibility::Public)]);
            ticket_in(from)
                .when(actor, private_comment("Customer is slow."))
                .then(vec![commented("Customer is slow.", Visibility::Private)]);
        }
    }
}

#[test]
fn an_org_wide_colleagues_reply_does_not_move_the_status() {
    for from in [Status::AwaitingCustomer, Status::Resolved, Status::Closed] {
        ticket_in(from)
            .when(carol(), comment("Same here."))
            .then(vec![commented("Same here.", Visibility::Public)]);
    }
}

#[test]
fn an_explicitly_public_comment_is_public() {
    ticket_in(Status::Open)
        .when(
            alice(),
            CommandKind::Comment(AddComment {
                comment_id: COMMENT,
                body: "hi".into(),
                visibility: Some(Visibility::Public),
            }),
        )
        .then(vec![commented("hi", Visibility::Public)]);
}

// ---------------------------------------------------------------------------------------------
// 4.4 withdraw
// ---------------------------------------------------------------------------------------------

#[test]
fn the_requester_or_staff_may_withdraw_an_active_ticket_with_a_reason() {
    for actor in [alice(), agent(), admin()] {
        for from in ACTIVE {
            let then = ticket_in(from)
                .when(
                    actor.clone(),
                    CommandKind::Withdraw(Withdraw {
                        reason: "duplicate".into(),
                        comment: Some("See #1041.".into()),
                    }),
                )
                .then(vec![Event::Withdrawn(event::Withdrawn {
                    from,
                    reason: "duplicate".into(),
                    comment: Some("See #1041.".into()),
                })]);
            assert_eq!(then.ticket_after().status, Status::Withdrawn);
        }
    }
}

#[test]
fn only_the_requester_or_staff_may_withdraw() {
    for actor in [bob(), carol()] {
        ticket_in(Status::Open)
            .when(actor, withdraw("not mine"))
            .then_forbidden();
    }
}

#[test]
fn only_an_active_ticket_can_be_withdrawn() {
    for actor in [alice(), agent()] {
        for from in [Status::Resolved, Status::Closed, Status::Withdrawn] {
            ticket_in(from)
                .when(actor.clone(), withdraw("never mind"))
                .then_conflict();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4.5 escalate
// ---------------------------------------------------------------------------------------------

#[test]
fn the_requester_may_escalate_their_ticket() {
    for from in [
        Status::Open,
        Status::InProgress,
        Status::AwaitingCustomer,
        Status::OnHold,
    ] {
        let then = ticket_in(from)
            .when(alice(), escalate("No answer in a week."))
            .then(vec![Event::Escalated(event::Escalated {
                from,
                reason: "No answer in a week.".into(),
            })]);
        let t = then.ticket_after();
        assert_eq!((t.status, t.escalations), (Status::Escalated, 1));
    }
}

#[test]
fn a_customer_may_not_escalate_a_ticket_they_did_not_request() {
    for actor in [bob(), carol()] {
        ticket_in(Status::Open)
            .when(actor, escalate("me too"))
            .then_forbidden();
    }
}

#[test]
fn staff_may_escalate_any_active_ticket() {
    for actor in [agent(), admin()] {
        for from in [
            Status::Open,
            Status::InProgress,
            Status::AwaitingCustomer,
            Status::OnHold,
        ] {
            ticket_in(from)
                .when(actor.clone(), escalate("VIP"))
                .then(vec![Event::Escalated(event::Escalated {
                    from,
                    reason: "VIP".into(),
                })]);
        }
    }
}

#[test]
fn only_an_active_ticket_can_be_escalated() {
    for actor in [alice(), agent()] {
        for from in [Status::Resolved, Status::Closed, Status::Withdrawn] {
            ticket_in(from)
                .when(actor.clone(), escalate("angry"))
                .then_conflict();
        }
    }
}

#[test]
fn escalating_an_escalated_ticket_is_a_no_op() {
    for actor in [alice(), agent()] {
        ticket_in(Status::Escalated)
            .when(actor, escalate("still angry"))
            .then_nothing();
    }
}

// ---------------------------------------------------------------------------------------------
// 4.7 edit
// ---------------------------------------------------------------------------------------------

#[test]
fn staff_may_edit_every_field_and_changes_carry_from_and_to() {
    let due = t0() + Duration::days(5);
    let mut fields = Fields::new();
    fields.insert("event_id".into(), FieldValue::Text("E-77".into()));
    let then = ticket_in(Status::InProgress)
        .when(
            agent(),
            edit(EditTicket {
                subject: Some("  Printer smoking  ".into()),
                description: Some("Smoke, not fire.".into()),
                priority: Some(Priority::Urgent),
                fields: Some(setting(&fields)),
                cc: Some(vec!["bob".into(), "dave".into()]),
                assignee: Some(Some("sam".into())),
                due_at: Some(Some(due)),
            }),
        )
        .then(vec![Event::Edited(Edited {
            subject: Some(Change {
                from: "Printer on fire".into(),
                to: "Printer smoking".into(),
            }),
            description: Some(Change {
                from: "It is actually on fire.".into(),
                to: "Smoke, not fire.".into(),
            }),
            priority: Some(Change {
                from: Priority::Medium,
                to: Priority::Urgent,
            }),
            fields: Some(Change {
                from: Fields::new(),
                to: fields.clone(),
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
                from: Some(t0() + Duration::hours(72)),
                to: Some(due),
            }),
        })]);
    let t = then.ticket_after();
    assert_eq!(t.subject, "Printer smoking");
    assert_eq!(t.description, "Smoke, not fire.");
    assert_eq!(t.priority, Priority::Urgent);
    assert_eq!(t.fields, fields);
    assert_eq!(t.cc, ["bob", "dave"]);
    assert_eq!(t.assignee.as_deref(), Some("sam"));
    assert_eq!(t.due_at, Some(due));
    assert_eq!(t.status, Status::InProgress);
    assert_eq!(t.last_activity_at, then.cmd.at);
}

#[test]
fn staff_may_clear_the_assignee_and_the_due_date() {
    let then = given(vec![
        opened_by_alice(),
        (
            agent(),
            Event::Edited(Edited {
                assignee: Some(Change {
                    from: None,
                    to: Some("sam".into()),
                }),
                ..Edited::default()
            }),
        ),
    ])
    .when(
        admin(),
        edit(EditTicket {
            assignee: Some(None),
            due_at: Some(None),
            ..EditTicket::default()
        }),
    )
    .then(vec![Event::Edited(Edited {
        assignee: Some(Change {
            from: Some("sam".into()),
            to: None,
        }),
        due_at: Some(Change {
            from: Some(t0() + Duration::hours(72)),
            to: None,
        }),
        ..Edited::default()
    })]);
    let t = then.ticket_after();
    assert_eq!((t.assignee, t.due_at), (None, None));
}

#[test]
fn staff_may_edit_a_resolved_ticket() {
    ticket_in(Status::Resolved)
        .when(
            agent(),
            edit(EditTicket {
                priority: Some(Priority::Low),
                ..EditTicket::default()
            }),
        )
        .then(vec![Event::Edited(Edited {
            priority: Some(Change {
                from: Priority::Medium,
                to: Priority::Low,
            }),
            ..Edited::default()
        })]);
}

#[test]
fn the_requester_may_edit_subject_description_and_cc_while_active() {
    for from in ACTIVE {
        ticket_in(from)
            .when(
                alice(),
                edit(EditTicket {
                    subject: Some("Printer smoking".into()),
                    description: Some("Smoke.".into()),
                    cc: Some(vec![]),
                    ..EditTicket::default()
                }),
            )
            .then(vec![Event::Edited(Edited {
                subject: Some(Change {
                    from: "Printer on fire".into(),
                    to: "Printer smoking".into(),
                }),
                description: Some(Change {
                    from: "It is actually on fire.".into(),
                    to: "Smoke.".into(),
                }),
                cc: Some(Change {
                    from: vec!["bob".into()],
                    to: vec![],
                }),
                ..Edited::default()
            })]);
    }
}

#[test]
fn the_requester_may_not_edit_staff_fields() {
    let cases = [
        EditTicket {
            priority: Some(Priority::Urgent),
            ..EditTicket::default()
        },
        EditTicket {
            fields: Some(setting(&fields_with(1))),
            ..EditTicket::default()
        },
        EditTicket {
            assignee: Some(Some("sam".into())),
            ..EditTicket::default()
        },
        EditTicket {
            assignee: Some(None),
            ..EditTicket::default()
        },
        EditTicket {
            due_at: Some(None),
            ..EditTicket::default()
        },
        EditTicket {
            subject: Some("Allowed".into()),
            priority: Some(Priority::Medium), // unchanged, still not theirs to give
            ..EditTicket::default()
        },
    ];
    for case in cases {
        ticket_in(Status::Open)
            .when(alice(), edit(case))
            .then_forbidden();
    }
}

#[test]
fn the_requester_may_not_edit_an_inactive_ticket() {
    for from in [Status::Resolved, Status::Closed] {
        ticket_in(from)
            .when(alice(), edit_subject("Too late"))
            .then_conflict();
    }
}

#[test]
fn a_customer_who_is_not_the_requester_may_not_edit() {
    for actor in [bob(), carol()] {
        ticket_in(Status::Open)
            .when(actor, edit_subject("Mine now"))
            .then_forbidden();
    }
}

/// Alice's ticket with custom fields `a` and `b`.
fn ticket_with_fields() -> Given {
    given(vec![(
        alice(),
        Event::Opened(event::Opened {
            fields: [("a".to_owned(), text("A")), ("b".to_owned(), text("B"))].into(),
            ..opened()
        }),
    )])
}

#[test]
fn an_edit_of_fields_merges_them_and_null_removes_a_key() {
    let then = ticket_with_fields()
        .when(
            agent(),
            edit(EditTicket {
                fields: Some(
                    [
                        ("a".to_owned(), None),
                        ("b".to_owned(), Some(text("B2"))),
                        ("c".to_owned(), Some(FieldValue::List(vec!["DE".into()]))),
                    ]
                    .into(),
                ),
                ..EditTicket::default()
            }),
        )
        .then(vec![Event::Edited(Edited {
            fields: Some(Change {
                from: [("a".to_owned(), text("A")), ("b".to_owned(), text("B"))].into(),
                to: [
                    ("b".to_owned(), text("B2")),
                    ("c".to_owned(), FieldValue::List(vec!["DE".into()])),
                ]
                .into(),
            }),
            ..Edited::default()
        })]);
    assert_eq!(then.ticket_after().fields.len(), 2);
    // Keys not named are kept: setting one leaves the other.
    ticket_with_fields()
        .when(
            agent(),
            edit(EditTicket {
                fields: Some([("b".to_owned(), Some(text("B2")))].into()),
                ..EditTicket::default()
            }),
        )
        .then(vec![Event::Edited(Edited {
            fields: Some(Change {
                from: [("a".to_owned(), text("A")), ("b".to_owned(), text("B"))].into(),
                to: [("a".to_owned(), text("A")), ("b".to_owned(), text("B2"))].into(),
            }),
            ..Edited::default()
        })]);
    // Removing a key the ticket lacks, or setting one to its value, changes nothing.
    ticket_with_fields()
        .when(
            agent(),
            edit(EditTicket {
                fields: Some([("z".to_owned(), None), ("a".to_owned(), Some(text("A")))].into()),
                ..EditTicket::default()
            }),
        )
        .then_nothing();
}

#[test]
fn fields_are_bounded_as_merged() {
    let full = || {
        given(vec![(
            alice(),
            Event::Opened(event::Opened {
                fields: fields_with(limits::FIELDS_MAX),
                ..opened()
            }),
        )])
    };
    // One more key than the bound, though the edit names one key only.
    full()
        .when(
            agent(),
            edit(EditTicket {
                fields: Some([("new".to_owned(), Some(text("x")))].into()),
                ..EditTicket::default()
            }),
        )
        .then_invalid(&["fields"]);
    // Under the key bound, but the merge would pass the byte bound: 20 keys of 100 values of
    // 5,000 characters (10 MB) sent 2 at a time (about 1 MB a request) would otherwise pile
    // up on one ticket.
    let value = || {
        Some(FieldValue::List(vec![
            "v".repeat(limits::FIELD_VALUE_MAX);
            100
        ]))
    };
    let heavy = |keys: std::ops::Range<usize>| {
        given(vec![(
            alice(),
            Event::Opened(event::Opened {
                fields: keys
                    .map(|i| (format!("h{i}"), value().expect("a value")))
                    .collect(),
                ..opened()
            }),
        )])
    };
    heavy(0..2)
        .when(
            agent(),
            edit(EditTicket {
                fields: Some([("h2".to_owned(), value()), ("h3".to_owned(), value())].into()),
                ..EditTicket::default()
            }),
        )
        .then_invalid(&["fields"]);
    // Replacing what is there, within it.
    heavy(0..2)
        .when(
            agent(),
            edit(EditTicket {
                fields: Some([("h0".to_owned(), None), ("h2".to_owned(), value())].into()),
                ..EditTicket::default()
            }),
        )
        .then_ok();
    // One removed, one added: within it.
    full()
        .when(
            agent(),
            edit(EditTicket {
                fields: Some(
                    [
                        ("k00".to_owned(), None),
                        ("new".to_owned(), Some(text("x"))),
                    ]
                    .into(),
                ),
                ..EditTicket::default()
            }),
        )
        .then_ok();
}

#[test]
fn an_edit_that_changes_nothing_appends_nothing() {
    ticket_in(Status::Open)
        .when(agent(), edit(EditTicket::default()))
        .then_nothing();
    ticket_in(Status::Open)
        .when(
            agent(),
            edit(EditTicket {
                subject: Some("Printer on fire".into()),
                description: Some("It is actually on fire.".into()),
                priority: Some(Priority::Medium),
                fields: Some(FieldsPatch::new()),
                cc: Some(vec!["bob".into(), "bob".into()]),
                assignee: Some(None),
                due_at: Some(Some(t0() + Duration::hours(72))),
            }),
        )
        .then_nothing();
    // The subject is compared after trimming.
    ticket_in(Status::Open)
        .when(alice(), edit_subject("  Printer on fire "))
        .then_nothing();
}

#[test]
fn an_edit_reports_only_the_fields_it_changes() {
    ticket_in(Status::Open)
        .when(
            agent(),
            edit(EditTicket {
                subject: Some("Printer on fire".into()),
                priority: Some(Priority::High),
                ..EditTicket::default()
            }),
        )
        .then(vec![Event::Edited(Edited {
            priority: Some(Change {
                from: Priority::Medium,
                to: Priority::High,
            }),
            ..Edited::default()
        })]);
}

// ---------------------------------------------------------------------------------------------
// §3 overdue and evolve
// ---------------------------------------------------------------------------------------------

#[test]
fn a_ticket_is_overdue_when_its_due_date_is_past_and_it_is_active() {
    let due = t0() + Duration::hours(72);
    for status in Status::ALL.iter().copied() {
        let t = ticket_in(status).ticket().clone();
        assert_eq!(t.due_at, Some(due));
        assert!(!t.is_overdue(due - Duration::seconds(1)), "{status}");
        assert_eq!(
            t.is_overdue(due + Duration::seconds(1)),
            status.is_active(),
            "{status}"
        );
    }
    let mut no_due = ticket_in(Status::Open).ticket().clone();
    no_due.due_at = None;
    assert!(!no_due.is_overdue(due + Duration::days(365)));
}

#[test]
fn a_ticket_is_not_overdue_at_the_instant_it_falls_due() {
    let t = ticket_in(Status::Open).ticket().clone();
    let due = t.due_at.expect("a due date");
    assert!(!t.is_overdue(due));
}

#[test]
fn reads_raise_the_version_but_are_not_activity() {
    let g = given(vec![
        opened_by_alice(),
        (alice(), commented("hello", Visibility::Public)),
        (agent(), read_event()),
        (bob(), read_event()),
    ]);
    let t = g.ticket();
    assert_eq!(t.version, 4);
    assert_eq!(t.created_at, t0());
    assert_eq!(t.last_activity_at, t0() + minutes(1));

    let after = g
        .when(alice(), read())
        .then(vec![read_event()])
        .ticket_after();
    assert_eq!(after.version, 5);
    assert_eq!(after.last_activity_at, t0() + minutes(1));
}

#[test]
fn every_other_event_is_activity() {
    let then = ticket_in(Status::Open).when(agent(), comment("on it"));
    let t = then.then_ok().ticket_after();
    assert_eq!(t.version, 2);
    assert_eq!(t.last_activity_at, t0() + minutes(1));
}

#[test]
fn events_before_opened_leave_the_stream_empty() {
    let g = given(vec![(agent(), read_event())]);
    assert!(g.state.is_none());
}
