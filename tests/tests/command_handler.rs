//! What the command handler asks of the store, on SQLite and PostgreSQL: an open reads no
//! stream (its id was just drawn), and an open whose id a stream somehow holds already fails
//! on the append's version check, reads the stream on its retry, and appends nothing. A
//! handler whose cached state another process's writes made stale answers a command that
//! appends nothing (a no-op, a refusal, an `If-Match`) from the store's state, and a retry that
//! overlapped its first attempt answers as the first did.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use uuid::Uuid;

use ticketd_commands::{
    AppendRequest, CommandError, CommandHandler, EventStore, Idempotency, Options, Outcome,
    StoreResult,
};
use ticketd_domain::{
    Actor, ChangeStatus, CommandKind, DomainError, OpenTicket, Role, SlaPolicy, Status, Withdraw,
};
use ticketd_tests::both_backends;
use ticketd_tests::hooked::{Hooked, StoreHooks};

/// Hooks that count stream reads and, with `rival` set, let a rival open the same stream just
/// before the first append at version 0, remembering which stream that was.
struct Watched {
    stream_reads: AtomicUsize,
    rival: AtomicBool,
    raced: Mutex<Option<Uuid>>,
}

impl Watched {
    fn new(rival: bool) -> Watched {
        Watched {
            stream_reads: AtomicUsize::new(0),
            rival: AtomicBool::new(rival),
            raced: Mutex::new(None),
        }
    }

    fn reads(&self) -> usize {
        self.stream_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StoreHooks for Watched {
    async fn before_append(
        &self,
        inner: &dyn EventStore,
        request: &AppendRequest,
    ) -> StoreResult<()> {
        if request.expected_version == 0 && self.rival.swap(false, Ordering::SeqCst) {
            // The same opening under fresh event ids: a stream that already holds this id.
            let mut rival = request.clone();
            for e in &mut rival.events {
                e.event_id = Uuid::now_v7();
            }
            inner.append(rival).await?;
            *self.raced.lock().expect("raced") = Some(request.stream_id);
        }
        Ok(())
    }
    async fn before_read_stream(&self) {
        self.stream_reads.fetch_add(1, Ordering::SeqCst);
    }
}

fn customer() -> Actor {
    Actor {
        id: "alice".into(),
        name: None,
        role: Role::Customer,
        org: Some("acme".into()),
        org_wide: false,
    }
}

fn printer() -> OpenTicket {
    OpenTicket {
        subject: "Printer".into(),
        description: "On fire.".into(),
        ..OpenTicket::default()
    }
}

async fn an_open_reads_no_stream(store: Arc<dyn EventStore>) {
    let watched = Hooked::new(store, Watched::new(false));
    let h = CommandHandler::new(watched.clone(), SlaPolicy::default(), 100);
    let out = h
        .open(customer(), printer(), Options::default())
        .await
        .expect("open");
    assert_eq!(out.version, 1);
    assert_eq!(watched.hooks.reads(), 0, "stream reads during an open");
}

async fn an_open_of_a_taken_id_conflicts_and_appends_nothing(store: Arc<dyn EventStore>) {
    let watched = Hooked::new(store.clone(), Watched::new(true));
    let h = CommandHandler::new(watched.clone(), SlaPolicy::default(), 100);
    let refused = h.open(customer(), printer(), Options::default()).await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Domain(DomainError::InvalidTransition(_)))
        ),
        "{refused:?}"
    );
    assert_eq!(watched.hooks.reads(), 1, "the retry reads the stream once");
    let raced = watched
        .hooks
        .raced
        .lock()
        .expect("raced")
        .expect("the rival appended");
    // The stream itself, not the log: PostgreSQL's log shows a commit a moment later.
    let stream = store.read_stream(raced, 0).await.expect("read the stream");
    assert_eq!(stream.len(), 1, "only the rival's opening: {stream:?}");
}

fn agent() -> Actor {
    Actor {
        id: "bob".into(),
        name: None,
        role: Role::Agent,
        org: None,
        org_wide: false,
    }
}

/// An agent sets `status` on ticket `id` through `h`.
async fn staff_sets(
    h: &CommandHandler,
    id: Uuid,
    status: Status,
    options: Options,
) -> Result<Outcome, CommandError> {
    let kind = CommandKind::ChangeStatus(ChangeStatus {
        status,
        reason: None,
    });
    h.execute(id, agent(), kind, options).await
}

/// Opens a ticket through `h` (which caches it at version 1).
async fn opened(h: &CommandHandler) -> Uuid {
    h.open(customer(), printer(), Options::default())
        .await
        .expect("open")
        .ticket
        .id
}

/// The requester withdraws ticket `id` through `h`.
async fn withdraw(h: &CommandHandler, id: Uuid) {
    let kind = CommandKind::Withdraw(Withdraw {
        reason: "Not needed".into(),
        comment: None,
    });
    h.execute(id, customer(), kind, Options::default())
        .await
        .expect("withdraw");
}

#[track_caller]
fn assert_withdrawn_refusal<T: std::fmt::Debug>(answer: Result<T, CommandError>, what: &str) {
    assert!(
        matches!(
            answer,
            Err(CommandError::Domain(DomainError::InvalidTransition(_)))
        ),
        "{what}: {answer:?}"
    );
}

/// Two handlers on one store, as two `ticketd` processes on one PostgreSQL: `here` caches the
/// ticket as opened, `there` then changes it.
async fn a_stale_cache_answers_nothing(store: Arc<dyn EventStore>) {
    let here = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let there = CommandHandler::new(store.clone(), SlaPolicy::default(), 100);
    let at = |version| Options {
        expected_version: Some(version),
        ..Options::default()
    };

    // The same status is a no-op: on the stale state it would answer 200 with version 1.
    let id = opened(&here).await;
    withdraw(&there, id).await;
    let stale = staff_sets(&here, id, Status::Open, Options::default()).await;
    assert_withdrawn_refusal(stale, "a no-op on a ticket withdrawn elsewhere");

    // A command that appends, with `If-Match` of the cached version, on a ticket withdrawn
    // elsewhere: the append conflicts, and the answer is the withdrawn ticket's 409, not 412.
    let id = opened(&here).await;
    withdraw(&there, id).await;
    let stale = staff_sets(&here, id, Status::InProgress, at(1)).await;
    assert_withdrawn_refusal(stale, "If-Match on a ticket withdrawn elsewhere");

    // `If-Match` of the cached version, which is no longer current, on what the stale state
    // calls a no-op: 412, nothing appended.
    let id = opened(&here).await;
    staff_sets(&there, id, Status::InProgress, Options::default())
        .await
        .expect("a status change there");
    let stale = staff_sets(&here, id, Status::Open, at(1)).await;
    assert!(
        matches!(
            stale,
            Err(CommandError::VersionMismatch {
                expected: 1,
                current: 2
            })
        ),
        "If-Match of a version changed elsewhere: {stale:?}"
    );
    // And without it, the same command is a no-op on the ticket as it is.
    let now = staff_sets(&here, id, Status::InProgress, Options::default())
        .await
        .expect("a no-op");
    assert_eq!((now.version, now.ticket.status), (2, Status::InProgress));
    assert!(now.appended.is_empty(), "{:?}", now.appended);
    let stream = store.read_stream(id, 0).await.expect("read the stream");
    assert_eq!(
        stream.len(),
        2,
        "nothing appended by the refusals: {stream:?}"
    );
}

/// Hooks that, before the next append, let the first attempt of a request (another process,
/// `first`) run whole: a retry that overlaps it, as a client's after a timeout.
struct Overlapped {
    first: CommandHandler,
    pending: tokio::sync::Mutex<Option<(Uuid, Options)>>,
}

#[async_trait]
impl StoreHooks for Overlapped {
    async fn before_append(&self, _: &dyn EventStore, _: &AppendRequest) -> StoreResult<()> {
        if let Some((id, options)) = self.pending.lock().await.take() {
            let kind = CommandKind::Withdraw(Withdraw {
                reason: "Not needed".into(),
                comment: None,
            });
            let first = self.first.execute(id, customer(), kind, options).await;
            assert_eq!(first.expect("the first attempt").version, 2);
        }
        Ok(())
    }
}

/// A retry with the first attempt's `Idempotency-Key` that found no record (the first had not
/// committed) and then lost the race to it answers as the first did (CONTRACT §4), with or
/// without `If-Match`, not 412 or the withdrawn ticket's 409.
async fn an_overlapping_retry_answers_as_the_first(store: Arc<dyn EventStore>) {
    let hooked = Hooked::new(
        store.clone(),
        Overlapped {
            first: CommandHandler::new(store.clone(), SlaPolicy::default(), 100),
            pending: tokio::sync::Mutex::new(None),
        },
    );
    let retry = CommandHandler::new(hooked.clone(), SlaPolicy::default(), 100);
    for (i, expected_version) in [Some(1), None].into_iter().enumerate() {
        let id = opened(&retry).await;
        let options = Options {
            expected_version,
            idempotency: Some(Idempotency {
                key: format!("withdraw-{i}"),
                fingerprint: vec![7; 32],
            }),
            ..Options::default()
        };
        *hooked.hooks.pending.lock().await = Some((id, options.clone()));
        let kind = CommandKind::Withdraw(Withdraw {
            reason: "Not needed".into(),
            comment: None,
        });
        let answer = retry.execute(id, customer(), kind, options).await;
        let answer = answer.unwrap_or_else(|e| panic!("If-Match {expected_version:?}: {e:?}"));
        assert_eq!(
            (answer.version, answer.ticket.status),
            (2, Status::Withdrawn)
        );
        let stream = store.read_stream(id, 0).await.expect("read the stream");
        assert_eq!(stream.len(), 2, "one withdrawal: {stream:?}");
    }
}

both_backends!(
    an_open_reads_no_stream,
    an_open_of_a_taken_id_conflicts_and_appends_nothing,
    a_stale_cache_answers_nothing,
    an_overlapping_retry_answers_as_the_first
);
