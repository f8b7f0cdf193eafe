-- Projection `analytics` (CONTRACT §6.5, docs/ANALYTICS.md): tables an analytics job may query
-- with plain SQL. Every value is derived from the log alone, so a rebuild gives the same rows.
-- Times are microseconds since the Unix epoch (UTC), as in every read model and on PostgreSQL,
-- so one SQL text does the same arithmetic on both backends.

-- One row per ticket.
CREATE TABLE analytics_ticket_facts (
    ticket_id         BLOB    PRIMARY KEY,
    number            INTEGER NOT NULL,
    -- NULL: the ticket has no organization.
    org               TEXT,
    requester         TEXT    NOT NULL,
    -- Current values.
    priority          TEXT    NOT NULL,
    channel           TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    opened_at         INTEGER NOT NULL,
    -- The first public comment by staff.
    first_response_at INTEGER,
    -- The first move to resolved or closed.
    first_resolved_at INTEGER,
    -- The last move to closed; NULL unless the ticket is closed now.
    closed_at         INTEGER,
    reopens           INTEGER NOT NULL,
    escalations       INTEGER NOT NULL,
    withdrawn_at      INTEGER,
    withdrawn_reason  TEXT,
    -- The current due time; NULL: none.
    due_at            INTEGER,
    -- When the ticket first became overdue (active with due_at past), as the log shows it.
    breached_at       INTEGER,
    last_event_at     INTEGER NOT NULL,
    version           INTEGER NOT NULL
) STRICT;

-- Response and resolution spreads over tickets opened in a window; covering, so the
-- percentile queries read the index alone.
CREATE INDEX analytics_ticket_facts_opened
    ON analytics_ticket_facts (opened_at, first_response_at, first_resolved_at);
CREATE INDEX analytics_ticket_facts_org_opened
    ON analytics_ticket_facts (org, opened_at, first_response_at, first_resolved_at);
-- The backlog and overdue tickets now: only active statuses' entries are read.
CREATE INDEX analytics_ticket_facts_status
    ON analytics_ticket_facts (status, org, due_at);

-- One row per counted event, for counts over any window: kind is one of opened, resolved,
-- closed, withdrawn, escalated, reopened. `org` is the ticket's (it never changes).
CREATE TABLE analytics_events (
    ticket_id BLOB    NOT NULL,
    version   INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    org       TEXT,
    PRIMARY KEY (ticket_id, version, kind)
) STRICT, WITHOUT ROWID;

-- Covering: a window's counts by kind read the index alone.
CREATE INDEX analytics_events_at ON analytics_events (at, kind);
CREATE INDEX analytics_events_org_at ON analytics_events (org, at, kind);

-- Per UTC day and organization ('' for tickets without one, so the key has no NULL), what
-- happened that day; added to as events are applied, so a past day's row no longer changes.
CREATE TABLE analytics_daily_org (
    -- 'YYYY-MM-DD', UTC.
    day               TEXT    NOT NULL,
    org               TEXT    NOT NULL,
    opened            INTEGER NOT NULL DEFAULT 0,
    first_responses   INTEGER NOT NULL DEFAULT 0,
    -- Sum over that day's first responses of (first_response_at - opened_at), microseconds.
    first_response_us INTEGER NOT NULL DEFAULT 0,
    resolved          INTEGER NOT NULL DEFAULT 0,
    closed            INTEGER NOT NULL DEFAULT 0,
    first_resolutions INTEGER NOT NULL DEFAULT 0,
    -- Sum over that day's first resolutions of (first_resolved_at - opened_at), microseconds.
    resolution_us     INTEGER NOT NULL DEFAULT 0,
    reopened          INTEGER NOT NULL DEFAULT 0,
    escalated         INTEGER NOT NULL DEFAULT 0,
    withdrawn         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, org)
) STRICT, WITHOUT ROWID;

CREATE INDEX analytics_daily_org_org ON analytics_daily_org (org, day);
