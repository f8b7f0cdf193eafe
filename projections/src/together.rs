//! SQLite: one runner applies every projection, each batch (a turn) in one transaction.
//!
//! SQLite has one write lock per file. With a runner per projection, each runner paid for its
//! own log read, `BEGIN IMMEDIATE` and commit per batch, and while the read models shared the
//! log's file the appends got one turn at its lock in four (docs/PERFORMANCE.md, session 10:
//! the machine half idle at 32 clients); they now have a file of their own (session 16). Here
//! the projections share one turn: the log is read once (one page per distinct checkpoint, so
//! a projection that is behind holds no other back), and each projection's batch and
//! checkpoint are written inside a savepoint of one transaction. A projection that fails on an
//! event rolls back to its savepoint alone, keeps the events before the failing one, and is
//! left out of the turns until its backoff has passed; the others go on.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, Sqlite, Transaction};
use tokio::time::Instant;

use ticketd_commands::{Database, EventStore, Position, StoreError, StoredEvent};

use crate::sql::{unavailable, Conn};
use crate::{
    advanced, apply_in, describe, fail, moved_to, start_at, BatchError, Mark, Projection, Shared,
    Stop, Writer, BATCH, FIRST_BACKOFF, MAX_BACKOFF, POLL,
};

/// One projection of the shared runner.
struct Member {
    p: Arc<dyn Projection>,
    shared: Arc<Shared>,
    /// Its last committed position, and the generation of its tables.
    mark: Mark,
    /// After a failure: left out of the turns until then.
    resume: Option<Instant>,
    /// The wait after its next failure.
    backoff: Duration,
}

impl Member {
    fn due(&self, now: Instant) -> bool {
        self.resume.is_none_or(|at| at <= now)
    }
}

/// What one projection's part of a turn came to, once the turn's transaction commits.
enum Outcome {
    Applied(usize),
    /// Its stored checkpoint was no longer its own (a rebuild switched in): re-read it.
    Moved,
    /// An event failed: the `kept` events before it are applied.
    Failed {
        kept: usize,
        error: String,
    },
}

/// The runner's life: follow the log for every projection; on a failure of the turn itself
/// (the connection, a read, the commit) log it against each projection, back off and start
/// again from the stored checkpoints. Ends when a stop is asked.
pub(crate) async fn run(
    store: Arc<dyn EventStore>,
    db: Database,
    projections: Vec<(Arc<dyn Projection>, Arc<Shared>)>,
    mut stop: Stop,
) {
    let mut members: Vec<Member> = projections
        .into_iter()
        .map(|(p, shared)| Member {
            p,
            shared,
            mark: Mark {
                at: Position::START,
                generation: 0,
            },
            resume: None,
            backoff: FIRST_BACKOFF,
        })
        .collect();
    let mut backoff = FIRST_BACKOFF;
    while !stop.asked() {
        for m in &members {
            m.shared.update(|s| s.leader = true);
        }
        let followed = follow(&*store, &db, &mut members, &mut backoff, &mut stop).await;
        for m in &mut members {
            m.shared.update(|s| s.leader = false);
        }
        let Err(error) = followed else {
            return;
        };
        for m in &mut members {
            fail(&m.shared, m.p.name(), &error);
            m.resume = None;
        }
        stop.sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Catches every projection up from its checkpoint, then applies new events as they commit.
/// Returns when a stop is asked, between turns, with its connection closed; or when the turn
/// itself fails, with what went wrong.
async fn follow(
    store: &dyn EventStore,
    db: &Database,
    members: &mut [Member],
    backoff: &mut Duration,
    stop: &mut Stop,
) -> Result<(), String> {
    let mut writer = match Writer::connect(db, None).await {
        Ok(w) => w,
        Err(e) => return Err(format!("connecting: {e}")),
    };
    let mut ticks = store.subscribe();
    for m in members.iter_mut() {
        m.mark = start_at(&mut writer, &*m.p, &m.shared).await?;
    }
    let (mut turned, mut paced) = (None, false);
    loop {
        loop {
            if stop.asked() {
                writer.close().await;
                return Ok(());
            }
            writer.turn(&mut turned, paced).await;
            let started = Instant::now();
            let mut pages: Vec<(Position, Vec<StoredEvent>)> = Vec::new();
            for m in members.iter().filter(|m| m.due(started)) {
                if pages.iter().all(|(at, _)| *at != m.mark.at) {
                    match store.read_all(m.mark.at, BATCH).await {
                        Ok(page) => pages.push((m.mark.at, page)),
                        Err(e) => return Err(format!("reading the log after {}: {e}", m.mark.at)),
                    }
                }
            }
            paced = pages.iter().all(|(_, page)| page.len() < BATCH);
            if pages.iter().all(|(_, page)| page.is_empty()) {
                break;
            }
            let read = started.elapsed();
            let Writer::Sqlite(conn) = &mut writer else {
                return Err("the shared runner writes only to SQLite".to_owned());
            };
            let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => tx,
                Err(e) => return Err(format!("beginning a batch: {e}")),
            };
            let mut outcomes = Vec::new();
            for (i, m) in members.iter().enumerate() {
                let Some((_, page)) = pages.iter().find(|(at, _)| *at == m.mark.at) else {
                    continue;
                };
                if page.is_empty() || !m.due(started) {
                    continue;
                }
                let began = Instant::now();
                match apply_member(&mut tx, &*m.p, m.mark, page).await {
                    Ok(outcome) => {
                        tracing::debug!(
                            projection = m.p.name(),
                            events = page.len(),
                            ms = began.elapsed().as_secs_f64() * 1e3,
                            "applied"
                        );
                        outcomes.push((i, page, outcome))
                    }
                    Err(e) => return Err(format!("applying a batch of {}: {e}", m.p.name())),
                }
            }
            if let Err(e) = tx.commit().await {
                return Err(format!("committing a batch: {e}"));
            }
            tracing::debug!(
                projections = outcomes.len(),
                pages = pages.len(),
                read_ms = read.as_secs_f64() * 1e3,
                apply_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
                "batch"
            );
            for (i, page, outcome) in outcomes {
                let m = &mut members[i];
                match outcome {
                    Outcome::Applied(n) => {
                        m.mark.at = page[n - 1].position;
                        advanced(&m.shared, m.mark.at, n, true);
                        m.backoff = FIRST_BACKOFF;
                        *backoff = FIRST_BACKOFF;
                    }
                    Outcome::Moved => m.mark = moved_to(&mut writer, &*m.p, &m.shared).await?,
                    Outcome::Failed { kept, error } => {
                        if kept > 0 {
                            // Progress: the next wait starts short again, as in `run`.
                            m.mark.at = page[kept - 1].position;
                            advanced(&m.shared, m.mark.at, kept, false);
                            m.backoff = FIRST_BACKOFF;
                        }
                        fail(&m.shared, m.p.name(), &error);
                        m.resume = Some(Instant::now() + m.backoff);
                        m.backoff = (m.backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        // Until a commit, the poll, or the first projection's backoff ends.
        let wake = members
            .iter()
            .filter_map(|m| m.resume)
            .fold(Instant::now() + POLL, Instant::min);
        stop.idle(&mut ticks, wake).await;
    }
}

/// One projection's batch and checkpoint inside a savepoint of the turn's transaction, so that
/// its failure undoes its own writes only. An error here is the savepoint itself failing.
async fn apply_member(
    tx: &mut Transaction<'_, Sqlite>,
    p: &dyn Projection,
    at: Mark,
    events: &[StoredEvent],
) -> Result<Outcome, StoreError> {
    let mut sp = tx.begin().await.map_err(unavailable)?;
    let mut result = apply_in(&mut Conn::Sqlite(&mut sp), p, at, events, true).await;
    if let Err(BatchError { batched: true, .. }) = result {
        // The batched path failed: again event by event, which finds the event.
        sp.rollback().await.map_err(unavailable)?;
        sp = tx.begin().await.map_err(unavailable)?;
        result = apply_in(&mut Conn::Sqlite(&mut sp), p, at, events, false).await;
    }
    let failure = match result {
        Ok(()) => {
            sp.commit().await.map_err(unavailable)?;
            return Ok(Outcome::Applied(events.len()));
        }
        Err(failure) => failure,
    };
    sp.rollback().await.map_err(unavailable)?;
    if failure.moved {
        return Ok(Outcome::Moved);
    }
    let Some(i) = failure.failed_at else {
        return Ok(Outcome::Failed {
            kept: 0,
            error: format!("committing after {}: {}", at.at, failure.error),
        });
    };
    // Keep what precedes the failing event, then stop there.
    let mut kept = 0;
    if i > 0 {
        let mut sp = tx.begin().await.map_err(unavailable)?;
        if apply_in(&mut Conn::Sqlite(&mut sp), p, at, &events[..i], false)
            .await
            .is_ok()
        {
            sp.commit().await.map_err(unavailable)?;
            kept = i;
        } else {
            sp.rollback().await.map_err(unavailable)?;
        }
    }
    Ok(Outcome::Failed {
        kept,
        error: format!("applying {}: {}", describe(&events[i]), failure.error),
    })
}
