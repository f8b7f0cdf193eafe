//! The analytics tables (docs/ANALYTICS.md) and CONTRACT §6.5 on both backends, over a
//! scripted history with chosen times: the facts and daily rows it must give, the summary
//! endpoint's figures, a rebuild from the log giving identical rows, the summary's queries
//! using their indexes, and every example query of the doc running as written.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use ticketd_commands::{AppendRequest, Database, EventStore, NewEvent, Position};
use ticketd_domain::{
    decide, evolve, Actor, AddComment, ChangeStatus, Channel, Command, CommandKind, EditTicket,
    Escalate, Metadata, OpenTicket, Priority, Recorded, Role, SlaPolicy, State, Status, Ticket,
    Visibility, Withdraw, ZERO_HASH,
};
use ticketd_projections::analytics::{self, AnalyticsProjection, Facts};
use ticketd_projections::sql::{Bind, Conn};
use ticketd_projections::{Pooled, Projector};
use ticketd_tests::http::TestServer;
use ticketd_tests::{both_backends, numbered_rows};

const WAIT: Duration = Duration::from_secs(10);

fn user(id: &str, role: Role, org: Option<&str>) -> Actor {
    Actor {
        id: id.into(),
        name: None,
        role,
        org: org.map(Into::into),
        org_wide: false,
    }
}

fn agent() -> Actor {
    user("agent-1", Role::Agent, None)
}

fn alice() -> Actor {
    user("alice", Role::Customer, Some("acme"))
}

/// Monday 2 March 2026, 00:00 UTC: day 0 of the script.
fn day0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .single()
        .expect("valid")
}

/// Day `d` of the script at `h:m`.
fn t(d: i64, h: i64, m: i64) -> DateTime<Utc> {
    day0() + chrono::Duration::days(d) + chrono::Duration::hours(h) + chrono::Duration::minutes(m)
}

fn us(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

const HOUR_US: i64 = 3_600_000_000;

fn comment(body: &str, visibility: Visibility) -> CommandKind {
    CommandKind::Comment(AddComment {
        comment_id: Uuid::now_v7(),
        body: body.into(),
        visibility: Some(visibility),
    })
}

fn status(s: Status) -> CommandKind {
    CommandKind::ChangeStatus(ChangeStatus {
        status: s,
        reason: None,
    })
}

fn open(priority: Priority, channel: Channel, org: Option<&str>, requester: &str) -> OpenTicket {
    OpenTicket {
        subject: "s".into(),
        description: "d".into(),
        priority: Some(priority),
        channel: Some(channel),
        org: org.map(Into::into),
        requester: Some(requester.into()),
        ..OpenTicket::default()
    }
}

/// Decides each step with the domain's own rules at its chosen time and appends the ticket's
/// whole history; returns its id, final state, and the position of its last event.
async fn ticket(
    store: &dyn EventStore,
    steps: Vec<(Actor, DateTime<Utc>, CommandKind)>,
) -> (Uuid, Ticket, Position) {
    let id = Uuid::now_v7();
    let number = store.next_ticket_number().await.expect("number");
    let sla = SlaPolicy::default();
    let mut state: State = None;
    let mut version = 0;
    let mut events = Vec::new();
    for (actor, at, mut kind) in steps {
        if let CommandKind::Open(o) = &mut kind {
            o.id = id;
            o.number = number;
        }
        let cmd = Command {
            actor: actor.clone(),
            at,
            kind,
        };
        let decided = decide(&state, &cmd, &sla).expect("the script follows the rules");
        assert!(!decided.is_empty(), "a no-op step: {cmd:?}");
        let metadata = Metadata {
            actor: actor.clone(),
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
        }
        .encode()
        .expect("metadata");
        for event in decided {
            version += 1;
            events.push(NewEvent {
                event_id: Uuid::now_v7(),
                event_type: event.type_name().to_owned(),
                schema_version: event.schema_version(),
                recorded_at: at,
                metadata: metadata.clone(),
                payload: event.encode().expect("encode"),
            });
            state = evolve(
                state,
                &Recorded {
                    version,
                    recorded_at: at,
                    actor: actor.clone(),
                    event,
                },
            );
        }
    }
    let appended = store
        .append(AppendRequest {
            stream_id: id,
            expected_version: 0,
            prev_hash: ZERO_HASH,
            events,
            idempotency: None,
        })
        .await
        .expect("append");
    let position = appended.events.last().expect("events").position;
    (id, state.expect("opened"), position)
}

/// The scripted tickets.
struct Script {
    /// acme, high (due day 1 08:00), email: response, resolution, a reopen, a close.
    t1: (Uuid, Ticket),
    /// acme, urgent (due day 0 13:00), phone: escalated, answered late, withdrawn.
    t2: (Uuid, Ticket),
    /// No org, no priority, web: given a due time that then passes; open.
    t3: (Uuid, Ticket),
    /// globex, medium (due day 3 23:30), chat, opened just before midnight: escalated by its
    /// status, then in progress.
    t4: (Uuid, Ticket),
    /// globex, due in 2099, api: on hold.
    t5: (Uuid, Ticket),
    last: Position,
}

async fn script(store: &dyn EventStore) -> Script {
    let acme_agent_open = |p, c, r: &str| CommandKind::Open(open(p, c, Some("acme"), r));
    let (id1, s1, _) = ticket(
        store,
        vec![
            (
                agent(),
                t(0, 8, 0),
                acme_agent_open(Priority::High, Channel::Email, "alice"),
            ),
            (
                agent(),
                t(0, 8, 30),
                comment("looking", Visibility::Private),
            ),
            (
                alice(),
                t(0, 9, 0),
                comment("any news?", Visibility::Public),
            ),
            (
                agent(),
                t(0, 10, 0),
                comment("try this", Visibility::Public),
            ),
            (
                agent(),
                t(0, 11, 0),
                comment("and this", Visibility::Public),
            ),
            (agent(), t(0, 12, 0), status(Status::Resolved)),
            // Past the due time (day 1 08:00), the customer's reply reopens it.
            (
                alice(),
                t(1, 9, 0),
                comment("still broken", Visibility::Public),
            ),
            (agent(), t(1, 10, 0), status(Status::Resolved)),
            (alice(), t(1, 11, 0), status(Status::Closed)),
        ],
    )
    .await;
    let (id2, s2, _) = ticket(
        store,
        vec![
            (
                alice(),
                t(0, 9, 0),
                CommandKind::Open(OpenTicket {
                    subject: "urgent".into(),
                    description: "d".into(),
                    priority: Some(Priority::Urgent),
                    channel: Some(Channel::Phone),
                    ..OpenTicket::default()
                }),
            ),
            (
                alice(),
                t(0, 10, 0),
                CommandKind::Escalate(Escalate {
                    reason: "nobody answers".into(),
                }),
            ),
            (agent(), t(0, 14, 0), comment("sorry", Visibility::Public)),
            (
                alice(),
                t(1, 8, 0),
                CommandKind::Withdraw(Withdraw {
                    reason: "found a workaround".into(),
                    comment: None,
                }),
            ),
        ],
    )
    .await;
    let (id3, s3, _) = ticket(
        store,
        vec![
            (
                agent(),
                t(1, 10, 0),
                CommandKind::Open(open(Priority::None, Channel::Web, None, "zed")),
            ),
            (
                agent(),
                t(1, 10, 30),
                CommandKind::Edit(EditTicket {
                    priority: Some(Priority::Low),
                    ..EditTicket::default()
                }),
            ),
            (
                agent(),
                t(1, 10, 45),
                CommandKind::Edit(EditTicket {
                    due_at: Some(Some(t(1, 11, 0))),
                    ..EditTicket::default()
                }),
            ),
            (agent(), t(1, 12, 0), CommandKind::MarkRead),
        ],
    )
    .await;
    let (id4, s4, _) = ticket(
        store,
        vec![
            (
                agent(),
                t(0, 23, 30),
                CommandKind::Open(open(Priority::Medium, Channel::Chat, Some("globex"), "gus")),
            ),
            // Escalated by its status, not the escalate command: an escalation all the same.
            (agent(), t(1, 0, 15), status(Status::Escalated)),
            (agent(), t(1, 0, 30), status(Status::InProgress)),
        ],
    )
    .await;
    let far = Utc
        .with_ymd_and_hms(2099, 1, 1, 0, 0, 0)
        .single()
        .expect("valid");
    let (id5, s5, last) = ticket(
        store,
        vec![
            (
                agent(),
                t(1, 13, 0),
                CommandKind::Open(OpenTicket {
                    due_at: Some(far),
                    ..open(Priority::Low, Channel::Api, Some("globex"), "gus")
                }),
            ),
            (agent(), t(1, 13, 30), status(Status::OnHold)),
        ],
    )
    .await;
    Script {
        t1: (id1, s1),
        t2: (id2, s2),
        t3: (id3, s3),
        t4: (id4, s4),
        t5: (id5, s5),
        last,
    }
}

async fn facts(db: &Database, id: Uuid) -> Facts {
    analytics::ticket_facts(db, id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("no facts row for {id}"))
}

/// The columns the facts share with the domain's own fold of the stream.
fn assert_agrees_with_fold(f: &Facts, t: &Ticket) {
    assert_eq!(f.number, t.number as i64);
    assert_eq!(
        (f.status, f.priority, f.channel),
        (t.status, t.priority, t.channel)
    );
    assert_eq!((&f.org, &f.requester), (&t.org, &t.requester));
    assert_eq!(f.reopens, i64::from(t.reopens));
    assert_eq!(f.escalations, i64::from(t.escalations));
    assert_eq!(f.version, t.version as i64);
    assert_eq!(f.opened_at, us(t.created_at));
    assert_eq!(f.due_at, t.due_at.map(us));
}

type DailyRow = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

async fn daily_rows(db: &Database) -> Vec<DailyRow> {
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    pooled
        .conn()
        .fetch_rows(
            "SELECT day, org, opened, first_responses, first_response_us, resolved, closed, \
             first_resolutions, resolution_us, reopened, escalated, withdrawn \
             FROM analytics_daily_org ORDER BY day, org",
            &[],
        )
        .await
        .expect("daily rows")
}

type EventRow = (Uuid, i64, String, i64, Option<String>);

async fn event_rows(db: &Database) -> Vec<EventRow> {
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    pooled
        .conn()
        .fetch_rows(
            "SELECT ticket_id, version, kind, at, org FROM analytics_events \
             ORDER BY ticket_id, version, kind",
            &[],
        )
        .await
        .expect("event rows")
}

async fn all_facts(db: &Database) -> Vec<Facts> {
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    let ids: Vec<Uuid> = pooled
        .conn()
        .fetch_rows::<(Uuid,)>(
            "SELECT ticket_id FROM analytics_ticket_facts ORDER BY ticket_id",
            &[],
        )
        .await
        .expect("ids")
        .into_iter()
        .map(|(id,)| id)
        .collect();
    drop(pooled);
    let mut out = Vec::new();
    for id in ids {
        out.push(facts(db, id).await);
    }
    out
}

fn daily(day: &str, org: &str, counts: [i64; 10]) -> DailyRow {
    let [a, b, c, d, e, f, g, h, i, j] = counts;
    (day.into(), org.into(), a, b, c, d, e, f, g, h, i, j)
}

/// The facts and daily rows of the script, and a rebuild from the log giving the same rows.
async fn facts_daily_and_rebuild(store: Arc<dyn EventStore>) {
    let s = script(store.as_ref()).await;
    let db = store.database().expect("database");
    let p = Projector::start_with(
        store.clone(),
        db.clone(),
        vec![Arc::new(AnalyticsProjection::default())],
    );
    p.wait_for(analytics::NAME, s.last, WAIT)
        .await
        .expect("caught up");

    let f1 = facts(&db, s.t1.0).await;
    assert_agrees_with_fold(&f1, &s.t1.1);
    // The private comment and the customer's comment are no response.
    assert_eq!(f1.first_response_at, Some(us(t(0, 10, 0))));
    assert_eq!(f1.first_resolved_at, Some(us(t(0, 12, 0))));
    assert_eq!(f1.closed_at, Some(us(t(1, 11, 0))));
    assert_eq!(
        (f1.status, f1.reopens, f1.escalations),
        (Status::Closed, 1, 0)
    );
    assert_eq!(f1.due_at, Some(us(t(1, 8, 0))));
    // Resolved when it fell due, so the breach is the reopen that made it late.
    assert_eq!(f1.breached_at, Some(us(t(1, 9, 0))));
    assert_eq!((f1.withdrawn_at, f1.withdrawn_reason.clone()), (None, None));
    assert_eq!((f1.version, f1.last_event_at), (10, us(t(1, 11, 0))));
    assert_eq!(f1.org.as_deref(), Some("acme"));

    let f2 = facts(&db, s.t2.0).await;
    assert_agrees_with_fold(&f2, &s.t2.1);
    assert_eq!(f2.first_response_at, Some(us(t(0, 14, 0))));
    assert_eq!((f2.first_resolved_at, f2.closed_at), (None, None));
    assert_eq!((f2.status, f2.escalations), (Status::Withdrawn, 1));
    assert_eq!(f2.withdrawn_at, Some(us(t(1, 8, 0))));
    assert_eq!(f2.withdrawn_reason.as_deref(), Some("found a workaround"));
    assert_eq!(
        f2.breached_at,
        Some(us(t(0, 13, 0))),
        "due 4 h after opening"
    );
    assert_eq!(f2.channel, Channel::Phone);

    let f3 = facts(&db, s.t3.0).await;
    assert_agrees_with_fold(&f3, &s.t3.1);
    assert_eq!((f3.org.clone(), f3.priority), (None, Priority::Low));
    assert_eq!(f3.due_at, Some(us(t(1, 11, 0))));
    // Learned from the read at 12:00.
    assert_eq!(f3.breached_at, Some(us(t(1, 11, 0))));
    assert_eq!((f3.version, f3.last_event_at), (4, us(t(1, 12, 0))));

    let f4 = facts(&db, s.t4.0).await;
    assert_agrees_with_fold(&f4, &s.t4.1);
    assert_eq!(f4.due_at, Some(us(t(3, 23, 30))));
    // Overdue now by the clock, but no event says so: not a stored breach.
    assert_eq!((f4.status, f4.breached_at), (Status::InProgress, None));
    assert_eq!(f4.escalations, 1);

    let f5 = facts(&db, s.t5.0).await;
    assert_agrees_with_fold(&f5, &s.t5.1);
    assert_eq!((f5.status, f5.breached_at), (Status::OnHold, None));

    let h = HOUR_US;
    assert_eq!(
        daily_rows(&db).await,
        vec![
            // opened, first_responses, first_response_us, resolved, closed,
            // first_resolutions, resolution_us, reopened, escalated, withdrawn
            daily("2026-03-02", "acme", [2, 2, 7 * h, 1, 0, 1, 4 * h, 0, 1, 0]),
            daily("2026-03-02", "globex", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            daily("2026-03-03", "", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            daily("2026-03-03", "acme", [0, 0, 0, 1, 1, 0, 0, 1, 0, 1]),
            daily("2026-03-03", "globex", [1, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
        ]
    );
    let events = event_rows(&db).await;
    let kinds = |id: Uuid| -> Vec<(i64, String)> {
        events
            .iter()
            .filter(|e| e.0 == id)
            .map(|e| (e.1, e.2.clone()))
            .collect()
    };
    assert_eq!(
        kinds(s.t1.0),
        [
            (1, "opened".to_owned()),
            (6, "resolved".to_owned()),
            (8, "reopened".to_owned()),
            (9, "resolved".to_owned()),
            (10, "closed".to_owned()),
        ]
    );
    assert_eq!(
        kinds(s.t2.0),
        [
            (1, "opened".to_owned()),
            (2, "escalated".to_owned()),
            (4, "withdrawn".to_owned()),
        ]
    );
    assert_eq!(
        kinds(s.t4.0),
        [(1, "opened".to_owned()), (2, "escalated".to_owned())]
    );
    assert!(events
        .iter()
        .all(|e| e.4 == facts_org(&[&f1, &f2, &f3, &f4, &f5], e.0)));

    // A rebuild from the log: the same rows, to the microsecond.
    let before = (
        all_facts(&db).await,
        event_rows(&db).await,
        daily_rows(&db).await,
    );
    drop(p);
    reset(&db).await;
    assert!(all_facts(&db).await.is_empty());
    let p = Projector::start_with(
        store.clone(),
        db.clone(),
        vec![Arc::new(AnalyticsProjection::default())],
    );
    p.wait_for(analytics::NAME, s.last, WAIT)
        .await
        .expect("rebuilt");
    let after = (
        all_facts(&db).await,
        event_rows(&db).await,
        daily_rows(&db).await,
    );
    assert_eq!(before, after);
}

fn facts_org(all: &[&Facts], id: Uuid) -> Option<String> {
    all.iter()
        .find(|f| f.ticket_id == id)
        .and_then(|f| f.org.clone())
}

/// Empties the analytics tables and rewinds their checkpoint, as a rebuild does.
async fn reset(db: &Database) {
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    let mut conn = pooled.conn();
    for sql in [
        "DELETE FROM analytics_ticket_facts",
        "DELETE FROM analytics_events",
        "DELETE FROM analytics_daily_org",
        "UPDATE projection_checkpoints SET position_tx = 0, position_seq = 0 \
         WHERE name = 'analytics'",
    ] {
        conn.execute(sql, &[]).await.expect(sql);
    }
}

fn summary_path(query: &str, last: Position) -> String {
    format!("/v1/analytics/summary?{query}&min_position={last}")
}

/// CONTRACT §6.5 over the script: event counts in the window, the backlog and overdue tickets
/// now, the spreads over tickets opened in the window; narrowed by org.
async fn summary_figures(store: Arc<dyn EventStore>) {
    let s = script(store.as_ref()).await;
    let server = TestServer::start(store.clone()).await;
    let agent = server.agent("agent-1");
    let window = |from: DateTime<Utc>, to: DateTime<Utc>| {
        format!(
            "from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };
    let two_days = window(t(0, 0, 0), t(2, 0, 0));
    let get = |q: String| {
        let server = &server;
        let agent = agent.clone();
        async move {
            let a = server.get(&summary_path(&q, s.last), &agent).await;
            assert_eq!(a.status, StatusCode::OK, "{q}: {}", a.body);
            a.body
        }
    };
    let counts = |b: &serde_json::Value| -> Vec<i64> {
        [
            "opened",
            "resolved",
            "closed",
            "withdrawn",
            "escalated",
            "reopened",
            "overdue_now",
        ]
        .iter()
        .map(|k| b[*k].as_i64().unwrap_or_else(|| panic!("{k}: {b}")))
        .collect()
    };

    let b = get(two_days.clone()).await;
    // T3 and T4 are active and past due now; T5 is due in 2099. Escalated: T2 by the command,
    // T4 by its status.
    assert_eq!(counts(&b), [5, 2, 1, 1, 2, 1, 2], "{b}");
    assert_eq!(
        b["backlog"],
        json!({"open": 1, "in_progress": 1, "awaiting_customer": 0, "on_hold": 1, "escalated": 0})
    );
    // Responses after 2 h (T1) and 5 h (T2); one resolution after 4 h (T1).
    assert_eq!(
        b["first_response_seconds"],
        json!({"p50": 7200.0, "p90": 18000.0})
    );
    assert_eq!(
        b["resolution_seconds"],
        json!({"p50": 14400.0, "p90": 14400.0})
    );

    let b = get(format!("{two_days}&org=acme")).await;
    assert_eq!(counts(&b), [2, 2, 1, 1, 1, 1, 0], "{b}");
    assert_eq!(
        b["backlog"],
        json!({"open": 0, "in_progress": 0, "awaiting_customer": 0, "on_hold": 0, "escalated": 0})
    );
    assert_eq!(
        b["first_response_seconds"],
        json!({"p50": 7200.0, "p90": 18000.0})
    );
    assert_eq!(b["org"], "acme");

    let b = get(format!("{two_days}&org=globex")).await;
    assert_eq!(counts(&b), [2, 0, 0, 0, 1, 0, 1], "{b}");
    assert_eq!(b["backlog"]["in_progress"], 1);
    assert_eq!(b["backlog"]["on_hold"], 1);
    assert!(b["first_response_seconds"].is_null(), "{b}");
    assert!(b["resolution_seconds"].is_null(), "{b}");

    // Day 1 only: T4 opened at 23:30 the day before does not count; T1's reopen, second
    // resolution and close, T2's withdrawal and T4's escalation do. No ticket opened that day
    // got a response.
    let b = get(window(t(1, 0, 0), t(2, 0, 0))).await;
    assert_eq!(counts(&b), [2, 1, 1, 1, 1, 1, 2], "{b}");
    assert!(b["first_response_seconds"].is_null(), "{b}");
    assert!(b["resolution_seconds"].is_null(), "{b}");

    // The window's end is excluded: [day 0 00:00, day 0 08:00) holds nothing; [.., 08:00:01)
    // holds T1's opening.
    let b = get(window(t(0, 0, 0), t(0, 8, 0))).await;
    assert_eq!(b["opened"], 0, "{b}");
    let b = get(format!(
        "from={}&to={}",
        "2026-03-02T00:00:00Z", "2026-03-02T08:00:00.000001Z"
    ))
    .await;
    assert_eq!(b["opened"], 1, "{b}");

    // The default window is the last 30 days: the script is long before it, the backlog is now.
    let b = get(String::from("org=globex")).await;
    assert_eq!(b["opened"], 0, "{b}");
    assert_eq!(b["backlog"]["on_hold"], 1, "{b}");
}

/// Synthetic facts and events for `n` tickets opened one `step_us` apart from `base_us`, in
/// plain SQL (no projection, so millions are quick): 50 orgs, 6 % of tickets active, the rest
/// resolved and closed, three counted events per closed ticket.
async fn fill(db: &Database, n: i64, base_us: i64, step_us: i64) {
    let (with, source, id) = numbered_rows(db, n);
    let opened = format!("({base_us} + i * {step_us})");
    let resolved =
        format!("CASE WHEN i % 50 < 4 THEN NULL ELSE {opened} + (i % 89) * 3600000000 END");
    let statements = [
        format!(
            "{with}INSERT INTO analytics_ticket_facts (ticket_id, number, org, requester, \
             priority, channel, status, opened_at, first_response_at, first_resolved_at, \
             closed_at, reopens, escalations, withdrawn_at, withdrawn_reason, due_at, \
             breached_at, last_event_at, version) \
             SELECT {id}, i, 'org-' || (i % 50), 'user-' || (i % 5000), \
             CASE i % 5 WHEN 0 THEN 'urgent' WHEN 1 THEN 'high' WHEN 2 THEN 'medium' \
             WHEN 3 THEN 'low' ELSE 'none' END, \
             CASE i % 3 WHEN 0 THEN 'web' WHEN 1 THEN 'email' ELSE 'phone' END, \
             CASE i % 50 WHEN 0 THEN 'open' WHEN 1 THEN 'in_progress' WHEN 2 THEN 'escalated' \
             WHEN 3 THEN 'withdrawn' ELSE 'closed' END, \
             {opened}, {opened} + (i % 97) * 60000000, {resolved}, {resolved}, 0, \
             CASE i % 50 WHEN 2 THEN 1 ELSE 0 END, NULL, NULL, {opened} + 86400000000, NULL, \
             {opened} + (i % 89) * 3600000000, 6 FROM {source}"
        ),
        "INSERT INTO analytics_events (ticket_id, version, kind, at, org) \
         SELECT ticket_id, 1, 'opened', opened_at, org FROM analytics_ticket_facts"
            .to_owned(),
        "INSERT INTO analytics_events (ticket_id, version, kind, at, org) \
         SELECT ticket_id, 5, 'resolved', first_resolved_at, org FROM analytics_ticket_facts \
         WHERE first_resolved_at IS NOT NULL"
            .to_owned(),
        "INSERT INTO analytics_events (ticket_id, version, kind, at, org) \
         SELECT ticket_id, 6, 'closed', closed_at + 1000000, org FROM analytics_ticket_facts \
         WHERE closed_at IS NOT NULL"
            .to_owned(),
    ];
    let mut pooled = Pooled::acquire(db).await.expect("connection");
    let mut conn = pooled.conn();
    for sql in statements {
        conn.execute(&sql, &[]).await.expect("fill");
    }
    if let Conn::Postgres(_) = conn {
        // What autovacuum would have done by the time a table is this big.
        conn.execute("VACUUM ANALYZE", &[]).await.expect("analyze");
    }
}

const YEAR_US: i64 = 365 * 86_400_000_000;

/// The summary's statements read their indexes, not whole tables, so they stay fast at
/// millions of tickets. SQLite plans without statistics (ticketd never gathers them);
/// PostgreSQL plans with them, as autovacuum keeps them.
async fn summary_queries_use_indexes(store: Arc<dyn EventStore>) {
    let db = store.database().expect("database");
    let n = 20_000;
    let base = us(day0()) - YEAR_US;
    fill(&db, n, base, YEAR_US / n).await;
    let end = base + YEAR_US;
    let mut pooled = Pooled::acquire(&db).await.expect("connection");
    let mut conn = pooled.conn();
    let postgres = matches!(conn, Conn::Postgres(_));
    for org in [false, true] {
        for (i, (sql, index)) in analytics::summary_statements(org).into_iter().enumerate() {
            // The last 30 days (or "now" for the overdue count), then the org, as the summary
            // binds them.
            let mut binds = if i == 1 {
                vec![]
            } else if i == 2 {
                vec![Bind::I64(end)]
            } else {
                vec![Bind::I64(end - 30 * 86_400_000_000), Bind::I64(end)]
            };
            if org {
                binds.push(Bind::Text("org-7".into()));
            }
            let (explain, plan): (String, Vec<String>) = if postgres {
                let e = format!("EXPLAIN {sql}");
                let p = conn.fetch_column(&e, &binds).await;
                (e, p.expect("explain"))
            } else {
                let e = format!("EXPLAIN QUERY PLAN {sql}");
                let rows: Vec<(i64, i64, i64, String)> =
                    conn.fetch_rows(&e, &binds).await.expect("explain");
                (e, rows.into_iter().map(|r| r.3).collect())
            };
            let plan = plan.join("\n");
            assert!(
                plan.contains(index) && !plan.contains("Seq Scan"),
                "{explain}\nshould use {index}:\n{plan}"
            );
            if !postgres {
                assert!(
                    !plan.contains(&format!("SCAN {}", table_of(&sql))),
                    "{explain}\nscans the table:\n{plan}"
                );
            }
        }
    }
}

/// How long the summary takes at a million tickets (about three million counted events).
/// Not part of the suite (it fills for minutes); run with
/// `cargo test --release -p ticketd-tests --test analytics -- --ignored --nocapture`.
async fn summary_at_a_million_tickets(store: Arc<dyn EventStore>) {
    let db = store.database().expect("database");
    let n = 1_000_000;
    let end = us(day0());
    let base = end - YEAR_US;
    let filling = std::time::Instant::now();
    fill(&db, n, base, YEAR_US / n).await;
    let backend = match db {
        Database::Sqlite(_) => "sqlite",
        Database::Postgres(_) => "postgres",
    };
    eprintln!("{backend}: filled {n} tickets in {:?}", filling.elapsed());
    let at = |micros: i64| DateTime::from_timestamp_micros(micros).expect("in range");
    let month = (at(end - 30 * 86_400_000_000), at(end));
    for (what, (from, to), org) in [
        ("30 days", month, None),
        ("30 days, one org", month, Some("org-7")),
        ("a year", (at(base), at(end)), None),
        ("a year, one org", (at(base), at(end)), Some("org-7")),
    ] {
        // The first run warms the cache; the second is the figure.
        let mut took = Duration::ZERO;
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let s = analytics::summary(&db, from, to, org, at(end))
                .await
                .expect("summary");
            took = started.elapsed();
            assert!(s.counts["opened"] > 0);
        }
        eprintln!("{backend}: summary over {what}: {took:?}");
    }
}

mod million {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "minutes of filling; a measurement, not a check"]
    async fn sqlite() {
        let t = ticketd_tests::sqlite_store().await;
        super::summary_at_a_million_tickets(t.store.clone()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "minutes of filling; a measurement, not a check"]
    async fn postgres() {
        if let Some(t) = ticketd_tests::postgres_store(8).await {
            super::summary_at_a_million_tickets(t.store.clone()).await;
        }
    }
}

fn table_of(sql: &str) -> &str {
    sql.split("FROM ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
}

/// Every ```sql block of docs/ANALYTICS.md, in order.
fn doc_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ANALYTICS.md");
    let doc = std::fs::read_to_string(path).expect("docs/ANALYTICS.md");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(q), "```") => {
                out.push(q.clone());
                current = None;
            }
            (Some(q), l) => {
                q.push_str(l);
                q.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// The doc's example queries run as written on both backends, with the parameters as psql and
/// sqlite3 would put them, and find the script's rows.
async fn doc_examples_run(store: Arc<dyn EventStore>) {
    let s = script(store.as_ref()).await;
    let db = store.database().expect("database");
    let p = Projector::start_with(
        store.clone(),
        db.clone(),
        vec![Arc::new(AnalyticsProjection::default())],
    );
    p.wait_for(analytics::NAME, s.last, WAIT)
        .await
        .expect("caught up");
    let queries = doc_queries();
    assert!(queries.len() >= 5, "{} examples", queries.len());
    // "Now" is the end of the script, so "the last 30 days" hold it.
    let params = [
        (":now_us", us(t(2, 0, 0))),
        (":from_us", us(t(0, 0, 0))),
        (":to_us", us(t(2, 0, 0))),
    ];
    for raw in queries {
        let mut sql = raw.clone();
        for (name, value) in params {
            sql = sql.replace(name, &value.to_string());
        }
        assert!(
            !sql.contains(':'),
            "an unknown parameter or a cast that is not portable:\n{raw}"
        );
        let rows = match &db {
            Database::Sqlite(pool) => sqlx::query(&sql).fetch_all(pool).await.map(|r| r.len()),
            Database::Postgres(pool) => sqlx::query(&sql).fetch_all(pool).await.map(|r| r.len()),
        };
        let rows = rows.unwrap_or_else(|e| panic!("{e}\n{raw}"));
        assert!(rows > 0, "no rows from:\n{raw}");
    }
}

both_backends!(
    facts_daily_and_rebuild,
    summary_figures,
    summary_queries_use_indexes,
    doc_examples_run,
);
