//! Random but reproducible command histories, run through the real command handler: every
//! event is one the service could have written. Commands the rules refuse are simply skipped.

use chrono::{Duration, Utc};
use uuid::Uuid;

use ticketd_commands::{CommandHandler, Options, Position};
use ticketd_domain::{
    Actor, AddComment, ChangeStatus, CommandKind, EditTicket, Escalate, OpenTicket, Priority, Role,
    Status, Visibility, Withdraw,
};

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn person(id: &str, role: Role, org: Option<&str>) -> Actor {
    Actor {
        id: id.into(),
        name: Some(format!("{id} (name)")),
        role,
        org: org.map(Into::into),
        org_wide: false,
    }
}

const STATUSES: [Status; 8] = [
    Status::Open,
    Status::InProgress,
    Status::AwaitingCustomer,
    Status::OnHold,
    Status::Escalated,
    Status::Resolved,
    Status::Closed,
    Status::Withdrawn,
];
const PRIORITIES: [Priority; 5] = [
    Priority::None,
    Priority::Low,
    Priority::Medium,
    Priority::High,
    Priority::Urgent,
];
const WORDS: [&str; 8] = [
    "printer",
    "invoice",
    "login",
    "refund",
    "crash",
    "päckchen",
    "VPN",
    "latency",
];

/// Runs `commands` random commands against `tickets` tickets (opened first, by customers of
/// two orgs or by staff on their behalf); returns the last position written.
pub async fn run(h: &CommandHandler, rng: &mut Rng, tickets: usize, commands: usize) -> Position {
    let customers = [
        person("alice", Role::Customer, Some("acme")),
        person("bob", Role::Customer, Some("acme")),
        person("carol", Role::Customer, Some("globex")),
    ];
    let staff = [
        person("agent-1", Role::Agent, None),
        person("agent-2", Role::Agent, None),
        person("admin-1", Role::Admin, None),
    ];
    let mut last = Position::START;
    let mut ids: Vec<(Uuid, Actor)> = Vec::new();
    for _ in 0..tickets {
        let requester = rng.pick(&customers).clone();
        let by_staff = rng.below(3) == 0;
        let open = OpenTicket {
            subject: format!("{} {}", rng.pick(&WORDS), rng.below(1000)),
            description: format!("{} broke", rng.pick(&WORDS)),
            priority: Some(*rng.pick(&PRIORITIES)),
            cc: (rng.below(2) == 0).then(|| vec!["bob".to_owned()]),
            requester: by_staff.then(|| requester.id.clone()),
            org: by_staff.then(|| requester.org.clone()).flatten(),
            ..OpenTicket::default()
        };
        let actor = if by_staff {
            rng.pick(&staff).clone()
        } else {
            requester.clone()
        };
        if let Ok(out) = h.open(actor, open, Options::default()).await {
            last = last.max(out.position);
            ids.push((out.ticket.id, requester));
        }
    }
    if ids.is_empty() {
        return last;
    }
    for _ in 0..commands {
        let (id, requester) = rng.pick(&ids).clone();
        let customer_turn = rng.below(3) == 0;
        let actor = if customer_turn {
            requester.clone()
        } else {
            rng.pick(&staff).clone()
        };
        let kind = match rng.below(16) {
            0..=4 => CommandKind::Comment(AddComment {
                comment_id: Uuid::now_v7(),
                body: format!("about the {} {}", rng.pick(&WORDS), rng.below(100)),
                visibility: (!customer_turn && rng.below(3) == 0).then_some(Visibility::Private),
            }),
            5..=8 => CommandKind::ChangeStatus(ChangeStatus {
                status: *rng.pick(&STATUSES[..7]),
                reason: (rng.below(2) == 0).then(|| "because".to_owned()),
            }),
            9 => CommandKind::Escalate(Escalate {
                reason: "angry".into(),
            }),
            10 if rng.below(4) == 0 => CommandKind::Withdraw(Withdraw {
                reason: "solved it myself".into(),
                comment: (rng.below(2) == 0).then(|| "thanks anyway".to_owned()),
            }),
            11 | 12 => CommandKind::MarkRead,
            _ => CommandKind::Edit(if customer_turn {
                EditTicket {
                    subject: Some(format!("{} again", rng.pick(&WORDS))),
                    cc: (rng.below(2) == 0).then(|| vec!["carol".to_owned()]),
                    ..EditTicket::default()
                }
            } else {
                EditTicket {
                    priority: Some(*rng.pick(&PRIORITIES)),
                    assignee: Some((rng.below(3) > 0).then(|| rng.pick(&staff).id.clone())),
                    due_at: (rng.below(3) == 0)
                        .then(|| Some(Utc::now() + Duration::hours(rng.below(48) as i64 - 24))),
                    ..EditTicket::default()
                }
            }),
        };
        // Refused commands (a customer closing what is not theirs, anything on a withdrawn
        // ticket, …) are part of a realistic history: they just append nothing.
        if let Ok(out) = h.execute(id, actor, kind, Options::default()).await {
            last = last.max(out.position);
        }
    }
    last
}
