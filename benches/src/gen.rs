//! `ticketd-gen`: fills a store with realistic ticket histories for benchmarks.
//!
//! Each ticket's history is made by the domain's own `decide` and `evolve` (so every event is
//! one the service could have written), then appended to the store in one append per ticket;
//! on PostgreSQL concurrent appends share statements through the store's batch writers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use uuid::Uuid;

use ticketd_commands::{AppendRequest, EventStore, NewEvent, PostgresStore, SqliteStore};
use ticketd_domain::{
    decide, evolve, Actor, AddComment, ChangeStatus, Command, CommandKind, EditTicket, Metadata,
    OpenTicket, Priority, Recorded, Role, SlaPolicy, State, Status, Visibility, ZERO_HASH,
};

#[derive(Debug, Parser)]
#[command(
    name = "ticketd-gen",
    about = "Fill a ticketd store with ticket histories"
)]
struct Args {
    /// `postgres://…` or `sqlite://path` (migrated first).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How many tickets to write.
    #[arg(long, default_value_t = 10_000)]
    tickets: u64,
    /// Appends in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Comments (and status moves) per ticket beyond the opening; each round adds about ten
    /// events.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// PostgreSQL pool size.
    #[arg(long, default_value_t = 16)]
    pg_max_connections: u32,
    /// Assign each ticket to its agent as they first take it up (one more event a ticket), so
    /// that agents' `view=mine` lists hold tickets; off by default, which keeps the data of
    /// the figures in docs/PERFORMANCE.md.
    #[arg(long)]
    assign: bool,
}

fn actor(id: String, role: Role, org: Option<String>) -> Actor {
    Actor {
        name: Some(format!("{id} (generated)")),
        id,
        role,
        org,
        org_wide: false,
    }
}

/// Subjects and descriptions are drawn from these, so that searches select realistic slices.
const THINGS: [&str; 41] = [
    "printer",
    "laptop",
    "monitor",
    "keyboard",
    "mouse",
    "docking station",
    "headset",
    "webcam",
    "phone",
    "tablet",
    "router",
    "switch",
    "firewall",
    "VPN client",
    "mail client",
    "calendar",
    "invoice",
    "payment",
    "refund",
    "subscription",
    "license",
    "account",
    "password",
    "badge",
    "scanner",
    "projector",
    "speaker",
    "charger",
    "battery",
    "server",
    "database",
    "backup",
    "website",
    "checkout",
    "shipment",
    "parcel",
    "warranty",
    "contract",
    "report",
    "dashboard",
    "API key",
];
const TROUBLES: [&str; 37] = [
    "jams",
    "crashes",
    "freezes",
    "overheats",
    "is slow",
    "will not start",
    "shows an error",
    "is missing",
    "was charged twice",
    "cannot connect",
    "drops the connection",
    "is locked",
    "expired",
    "flickers",
    "makes noise",
    "loses data",
    "cannot sync",
    "is broken",
    "arrived damaged",
    "is late",
    "was rejected",
    "times out",
    "reboots",
    "is unreadable",
    "prints blank pages",
    "cannot log in",
    "needs a reset",
    "is out of stock",
    "was cancelled",
    "leaks",
    "beeps",
    "is duplicated",
    "shows the wrong total",
    "asks for a code again",
    "cannot be found",
    "is blocked",
    "needs approval",
];

/// One ticket's history: the commands, in order, by whom.
fn script(k: u64, rounds: usize, assign: bool) -> (Actor, Actor, Vec<(bool, CommandKind)>) {
    let customer = actor(
        format!("customer-{}", k % 5_000),
        Role::Customer,
        Some(format!("org-{}", k % 200)),
    );
    let agent = actor(format!("agent-{}", k % 50), Role::Agent, None);
    // Hashed, so priority does not follow the status pattern below (k % 10).
    let spread = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let priority = Priority::ALL[(spread % Priority::ALL.len() as u64) as usize];
    let mut steps = vec![(
        false,
        CommandKind::Open(OpenTicket {
            id: Uuid::nil(),
            number: 0,
            subject: format!(
                "{} {} on floor {} (#{k})",
                THINGS[(k % 41) as usize],
                TROUBLES[(k / 41 % 37) as usize],
                k % 12
            ),
            description: format!(
                "Since the {} update the {} {}. Error code E-{}.",
                THINGS[(k / 7 % 41) as usize],
                THINGS[(k % 41) as usize],
                TROUBLES[(k / 13 % 37) as usize],
                k % 997
            ),
            priority: Some(priority),
            channel: None,
            cc: k
                .is_multiple_of(7)
                .then(|| vec![format!("customer-{}", (k + 1) % 5_000)]),
            fields: None,
            org: None,
            requester: None,
            due_at: None,
            contact_email: None,
        }),
    )];
    let comment = |body: &str, visibility| {
        CommandKind::Comment(AddComment {
            comment_id: Uuid::now_v7(),
            body: body.to_owned(),
            visibility: Some(visibility),
        })
    };
    let status = |s| {
        CommandKind::ChangeStatus(ChangeStatus {
            status: s,
            reason: None,
        })
    };
    if assign {
        steps.push((
            true,
            CommandKind::Edit(EditTicket {
                assignee: Some(Some(agent.id.clone())),
                ..EditTicket::default()
            }),
        ));
    }
    for round in 0..rounds {
        // One ticket in five stays waiting on the customer and one in ten in progress in its
        // last round: a realistic backlog, most of it overdue since it opened long ago.
        let last = round + 1 == rounds;
        if last && k % 10 == 3 {
            steps.extend([
                (true, status(Status::InProgress)),
                (true, comment("Looking into it today.", Visibility::Public)),
            ]);
            break;
        }
        if last && k % 5 == 1 {
            steps.extend([
                (true, status(Status::InProgress)),
                (
                    true,
                    comment("Could you send a photo of the error?", Visibility::Public),
                ),
                (false, CommandKind::MarkRead),
                (true, status(Status::AwaitingCustomer)),
            ]);
            break;
        }
        steps.extend([
            (true, status(Status::InProgress)),
            (
                true,
                comment("Could you send a photo of the error?", Visibility::Public),
            ),
            (false, CommandKind::MarkRead),
            (false, comment("Here it is, attached.", Visibility::Public)),
            (
                true,
                comment("Likely the fuser; order part 7731.", Visibility::Private),
            ),
            (true, status(Status::AwaitingCustomer)),
            (
                false,
                comment("Still jams after the reset.", Visibility::Public),
            ),
            (true, status(Status::Resolved)),
            (false, CommandKind::MarkRead),
        ]);
    }
    (customer, agent, steps)
}

/// Decides and folds one ticket's history into an append request.
fn history(
    k: u64,
    number: u64,
    start: DateTime<Utc>,
    rounds: usize,
    assign: bool,
) -> anyhow::Result<AppendRequest> {
    let (customer, agent, steps) = script(k, rounds, assign);
    let id = Uuid::now_v7();
    let sla = SlaPolicy::default();
    let mut state: State = None;
    let mut version = 0;
    let mut events = Vec::new();
    for (i, (by_agent, mut kind)) in steps.into_iter().enumerate() {
        if let CommandKind::Open(open) = &mut kind {
            open.id = id;
            open.number = number;
        }
        let who = if by_agent { &agent } else { &customer };
        // Whole microseconds, as the store keeps them.
        let at = start + Duration::minutes(7 * i as i64);
        let cmd = Command {
            actor: who.clone(),
            at,
            kind,
        };
        let decided = decide(&state, &cmd, &sla).map_err(|e| anyhow::anyhow!("step {i}: {e}"))?;
        let metadata = Metadata {
            actor: who.clone(),
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
        }
        .encode()?;
        for event in decided {
            version += 1;
            events.push(NewEvent {
                event_id: Uuid::now_v7(),
                event_type: event.type_name().to_owned(),
                schema_version: event.schema_version(),
                recorded_at: at,
                metadata: metadata.clone(),
                payload: event.encode()?,
            });
            state = evolve(
                state,
                &Recorded {
                    version,
                    recorded_at: at,
                    actor: who.clone(),
                    event,
                },
            );
        }
    }
    Ok(AppendRequest {
        stream_id: id,
        expected_version: 0,
        prev_hash: ZERO_HASH,
        events,
        idempotency: None,
    })
}

async fn open(url: &str, pool: u32) -> anyhow::Result<Arc<dyn EventStore>> {
    if url.starts_with("postgres") {
        let store = PostgresStore::connect(url, pool).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else {
        let store = SqliteStore::open(url).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = open(&args.database_url, args.pg_max_connections)
        .await
        .context("opening the store")?;
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    // Opened over the last 90 days, oldest first.
    let epoch = Utc::now() - Duration::days(90);
    let spacing = Duration::days(90).num_microseconds().unwrap_or(1) / args.tickets.max(1) as i64;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (store, next, written) = (store.clone(), next.clone(), written.clone());
        let (tickets, rounds, assign) = (args.tickets, args.rounds, args.assign);
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= tickets {
                    return anyhow::Ok(());
                }
                let number = store.next_ticket_number().await?;
                let start = epoch + Duration::microseconds(spacing * k as i64);
                let request = history(k, number, start, rounds, assign)?;
                let n = request.events.len() as u64;
                store.append(request).await?;
                let total = written.fetch_add(n, Ordering::Relaxed) + n;
                if (k + 1).is_multiple_of(100_000) {
                    eprintln!("{} tickets, {total} events", k + 1);
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let events = written.load(Ordering::Relaxed);
    println!(
        "tickets={} events={events} seconds={secs:.1} events_per_s={:.0}",
        args.tickets,
        events as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_history_is_what_the_service_would_write() {
        let request = history(7, 42, Utc::now(), 2, false).expect("history");
        // open + 2 rounds of 10 events (a customer reply to awaiting_customer adds a move)
        assert_eq!(request.events.len(), 21);
        let t = fold(&request);
        assert_eq!(t.number, 42);
        assert_eq!(t.status, Status::Resolved);
        assert_eq!(t.cc.len(), 1, "ticket 7 has a CC");
        assert_eq!(t.assignee, None);
        // With assignments, one more event: the ticket's agent takes it up.
        let request = history(7, 42, Utc::now(), 2, true).expect("history");
        assert_eq!(request.events.len(), 22);
        let t = fold(&request);
        assert_eq!(t.assignee.as_deref(), Some("agent-7"));
        assert_eq!(t.status, Status::Resolved);
    }

    /// The ticket the request's events fold into.
    fn fold(request: &AppendRequest) -> ticketd_domain::Ticket {
        let mut state: State = None;
        for (i, e) in request.events.iter().enumerate() {
            let event = ticketd_domain::Event::decode(&e.event_type, e.schema_version, &e.payload)
                .expect("decodes");
            let meta = Metadata::decode(&e.metadata).expect("metadata");
            state = evolve(
                state,
                &Recorded {
                    version: i as u64 + 1,
                    recorded_at: e.recorded_at,
                    actor: meta.actor,
                    event,
                },
            );
        }
        state.expect("a ticket")
    }
}
