-- Projection `analytics` (CONTRACT §6.5). Times are microseconds since the Unix epoch.
-- Per ticket: its org and the instants the response and resolution figures need.
CREATE TABLE analytics_tickets (
    ticket_id         BLOB    PRIMARY KEY,
    org               TEXT,
    opened_at         INTEGER NOT NULL,
    -- The first public comment by staff.
    first_response_at INTEGER,
    -- The first move to resolved or closed.
    resolved_at       INTEGER
) STRICT, WITHOUT ROWID;

CREATE INDEX analytics_tickets_opened ON analytics_tickets (opened_at);

-- One row per counted event: opened, resolved, closed, withdrawn, escalated, reopened.
CREATE TABLE analytics_events (
    ticket_id BLOB    NOT NULL,
    version   INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (ticket_id, version, kind)
) STRICT, WITHOUT ROWID;

CREATE INDEX analytics_events_at ON analytics_events (at);
