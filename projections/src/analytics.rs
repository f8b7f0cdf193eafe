//! The `analytics` projection (CONTRACT §6.5): counted events with their time, and per ticket
//! the instants the response and resolution figures need. The backlog and overdue figures
//! are "now", so they come from the `tickets` read model.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use ticketd_commands::handler::decode;
use ticketd_commands::{Database, StoreError, StoredEvent};
use ticketd_domain::{Event, Status, Visibility};

use crate::sql::{Bind, Conn};
use crate::{micros, Pooled, Projection};

pub const NAME: &str = "analytics";

/// The counted kinds, in the contract's order.
pub const KINDS: &[&str] = &[
    "opened",
    "resolved",
    "closed",
    "withdrawn",
    "escalated",
    "reopened",
];

pub struct AnalyticsProjection;

#[async_trait]
impl Projection for AnalyticsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["analytics_tickets", "analytics_events"]
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &StoredEvent) -> Result<(), StoreError> {
        let recorded = decode(event)?;
        let at = micros(recorded.recorded_at);
        let id = event.stream_id;
        let mut kinds: Vec<&str> = Vec::new();
        match &recorded.event {
            Event::Opened(e) => {
                conn.execute(
                    "INSERT INTO analytics_tickets (ticket_id, org, opened_at) VALUES (?, ?, ?) \
                     ON CONFLICT (ticket_id) DO NOTHING",
                    &[Bind::Uuid(id), Bind::OptText(e.org.clone()), Bind::I64(at)],
                )
                .await?;
                kinds.push("opened");
            }
            Event::Commented(c)
                if c.visibility == Visibility::Public && recorded.actor.is_staff() =>
            {
                conn.execute(
                    "UPDATE analytics_tickets SET first_response_at = ? \
                     WHERE ticket_id = ? AND first_response_at IS NULL",
                    &[Bind::I64(at), Bind::Uuid(id)],
                )
                .await?;
            }
            Event::StatusChanged(s) => {
                if matches!(s.to, Status::Resolved | Status::Closed) {
                    kinds.push(if s.to == Status::Resolved {
                        "resolved"
                    } else {
                        "closed"
                    });
                    conn.execute(
                        "UPDATE analytics_tickets SET resolved_at = ? \
                         WHERE ticket_id = ? AND resolved_at IS NULL",
                        &[Bind::I64(at), Bind::Uuid(id)],
                    )
                    .await?;
                }
                if s.reopen {
                    kinds.push("reopened");
                }
            }
            Event::Escalated(_) => kinds.push("escalated"),
            Event::Withdrawn(_) => kinds.push("withdrawn"),
            _ => {}
        }
        let version = i64::try_from(event.version)
            .map_err(|e| StoreError::Corrupt(format!("version {}: {e}", event.version)))?;
        for kind in kinds {
            conn.execute(
                "INSERT INTO analytics_events (ticket_id, version, kind, at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
                &[
                    Bind::Uuid(id),
                    Bind::I64(version),
                    Bind::Text(kind.to_owned()),
                    Bind::I64(at),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

/// The 50th and 90th percentile (nearest rank) in seconds, or `None` without samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
}

pub fn percentiles(mut micros: Vec<i64>) -> Option<Percentiles> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let rank = |percent: usize| {
        let n = micros.len();
        // Nearest rank: the smallest value with at least `percent` of the samples at or below
        // it; integer arithmetic, so 90 % of 10 is exactly the 9th.
        let i = (percent * n).div_ceil(100).clamp(1, n) - 1;
        micros[i] as f64 / 1e6
    };
    Some(Percentiles {
        p50: rank(50),
        p90: rank(90),
    })
}

/// CONTRACT §6.5's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events of each of [`KINDS`] in the window.
    pub counts: BTreeMap<&'static str, i64>,
    /// Each active status's count of tickets now.
    pub backlog: BTreeMap<&'static str, i64>,
    pub overdue_now: i64,
    pub first_response: Option<Percentiles>,
    pub resolution: Option<Percentiles>,
}

/// The figures for `[from, to)`, narrowed to `org` when given.
pub async fn summary(
    db: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    org: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Summary, StoreError> {
    let mut pooled = Pooled::acquire(db).await?;
    let mut conn = pooled.conn();
    let window = [Bind::I64(micros(from)), Bind::I64(micros(to))];
    let org_bind = |mut b: Vec<Bind>| {
        if let Some(o) = org {
            b.push(Bind::Text(o.to_owned()));
        }
        b
    };
    let org_sql = |column: &str| {
        org.map(|_| format!(" AND {column} = ?"))
            .unwrap_or_default()
    };

    let rows: Vec<(String, i64)> = conn
        .fetch_pairs(
            &format!(
                "SELECT e.kind, COUNT(*) FROM analytics_events e \
                 JOIN analytics_tickets t ON t.ticket_id = e.ticket_id \
                 WHERE e.at >= ? AND e.at < ?{} GROUP BY e.kind",
                org_sql("t.org")
            ),
            &org_bind(window.to_vec()),
        )
        .await?;
    let mut counts: BTreeMap<&'static str, i64> = KINDS.iter().map(|k| (*k, 0)).collect();
    for (kind, n) in rows {
        if let Some(k) = KINDS.iter().find(|k| **k == kind) {
            counts.insert(k, n);
        }
    }

    let rows: Vec<(String, i64)> = conn
        .fetch_pairs(
            &format!(
                "SELECT status, COUNT(*) FROM tickets WHERE active = 1{} GROUP BY status",
                org_sql("org")
            ),
            &org_bind(Vec::new()),
        )
        .await?;
    let mut backlog: BTreeMap<&'static str, i64> = Status::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| (s.as_str(), 0))
        .collect();
    for (status, n) in rows {
        if let Some(s) = Status::ALL.iter().find(|s| s.as_str() == status) {
            backlog.insert(s.as_str(), n);
        }
    }

    let overdue: Vec<i64> = conn
        .fetch_column(
            &format!(
                "SELECT COUNT(*) FROM tickets WHERE active = 1 AND due_sort < ?{}",
                org_sql("org")
            ),
            &org_bind(vec![Bind::I64(micros(now))]),
        )
        .await?;

    let durations = |column: &str| {
        let sql = format!(
            "SELECT {column} - opened_at FROM analytics_tickets \
             WHERE opened_at >= ? AND opened_at < ? AND {column} IS NOT NULL{}",
            org_sql("org")
        );
        let binds = org_bind(window.to_vec());
        (sql, binds)
    };
    let (sql, binds) = durations("first_response_at");
    let first: Vec<i64> = conn.fetch_column(&sql, &binds).await?;
    let (sql, binds) = durations("resolved_at");
    let resolved: Vec<i64> = conn.fetch_column(&sql, &binds).await?;
    Ok(Summary {
        counts,
        backlog,
        overdue_now: overdue.first().copied().unwrap_or(0),
        first_response: percentiles(first),
        resolution: percentiles(resolved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentiles(vec![]), None);
        let p = percentiles(vec![3_000_000, 1_000_000, 2_000_000]).expect("samples");
        assert_eq!((p.p50, p.p90), (2.0, 3.0));
        let p = percentiles((1..=10).map(|s| s * 1_000_000).collect()).expect("samples");
        assert_eq!((p.p50, p.p90), (5.0, 9.0));
    }
}
