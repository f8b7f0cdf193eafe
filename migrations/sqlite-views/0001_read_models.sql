-- The read models of a SQLite store, in a file of their own beside the log (`ticketd.db` →
-- `ticketd.views.db`), so that the projections' commits and the appends each have a write
-- lock of their own (docs/ARCHITECTURE.md, "Event stores"). Every table here is derived from
-- the log: a new file starts with no checkpoints, and the projections build it from the start
-- of the log. This is the shape `migrations/sqlite` 0002 – 0008 gave these tables in the log's
-- file, which 0009 there drops.

-- The log these read models were built from (`log_identity` in the log's file), written when
-- the store first migrates this file; a store refuses to start on read models of another log.
CREATE TABLE views_source (
    log_id BLOB NOT NULL
) STRICT;

-- The read side (projections/). Each projection's checkpoint: the last log position it applied,
-- committed in the same transaction as the read-model rows of that batch.
CREATE TABLE projection_checkpoints (
    name         TEXT    PRIMARY KEY,
    position_tx  INTEGER NOT NULL,
    position_seq INTEGER NOT NULL,
    -- Microseconds since the Unix epoch.
    updated_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- One row per ticket (projection `tickets`). `state` is the domain's `Ticket` as JSON, folded
-- by `evolve`; the other columns are derived from it for filters and sorts. Times are
-- microseconds since the Unix epoch; `due_sort` is `due_at` with "none" as the largest value,
-- so keyset paging never compares NULLs.
CREATE TABLE tickets (
    id               BLOB    PRIMARY KEY,
    number           INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    active           INTEGER NOT NULL,
    priority         TEXT    NOT NULL,
    priority_rank    INTEGER NOT NULL,
    channel          TEXT    NOT NULL,
    requester        TEXT    NOT NULL,
    org              TEXT,
    assignee         TEXT,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    due_sort         INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    position_tx      INTEGER NOT NULL,
    position_seq     INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    -- Paging that keeps its order while tickets change (CONTRACT §6.1: "paging through with
    -- it returns every matching ticket exactly once even while tickets change"). A cursor
    -- remembers the `tickets` checkpoint its first page was read at, and every later page
    -- orders tickets by their sort keys as they were then. A ticket whose row has moved past
    -- that position needs its keys from before its first later change: for each change of a
    -- sort key in the last two hours of the ticket's events, the position of the change and
    -- the keys before it, as JSON `[[tx, seq, recorded_at, last_activity_at, due_sort,
    -- priority_rank], …]` (times in microseconds since the Unix epoch), oldest first. Cursors
    -- last an hour.
    recent_keys      TEXT    NOT NULL DEFAULT '[]'
) STRICT;

CREATE INDEX tickets_last_activity ON tickets (last_activity_at, id);
CREATE INDEX tickets_created ON tickets (created_at, id);
CREATE INDEX tickets_due ON tickets (due_sort, id);
CREATE INDEX tickets_priority ON tickets (priority_rank, id);
CREATE INDEX tickets_requester ON tickets (requester);
CREATE INDEX tickets_assignee ON tickets (assignee);
CREATE INDEX tickets_org ON tickets (org);

-- Who is on each ticket's CC, for the customer visibility rule and `view=cc`.
CREATE TABLE ticket_cc (
    ticket_id BLOB NOT NULL,
    member    TEXT NOT NULL,
    PRIMARY KEY (ticket_id, member)
) STRICT, WITHOUT ROWID;

CREATE INDEX ticket_cc_member ON ticket_cc (member, ticket_id);

-- Projection `feed`: one row per event of a ticket (CONTRACT §6.3). `entry` is the feed item as
-- JSON; `private` marks entries a customer may not see (private comments).
CREATE TABLE ticket_feed (
    ticket_id BLOB    NOT NULL,
    version   INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    private   INTEGER NOT NULL,
    entry     TEXT    NOT NULL,
    PRIMARY KEY (ticket_id, version)
) STRICT, WITHOUT ROWID;

-- Projection `feed` too: who read each ticket (CONTRACT §6.4); times in microseconds.
CREATE TABLE ticket_reads (
    ticket_id     BLOB    NOT NULL,
    member        TEXT    NOT NULL,
    name          TEXT,
    first_read_at INTEGER NOT NULL,
    last_read_at  INTEGER NOT NULL,
    PRIMARY KEY (ticket_id, member)
) STRICT, WITHOUT ROWID;

-- Full-text search for `q` (CONTRACT §6.1), kept by projection `tickets`: an FTS5 row per part
-- of a ticket, lowercased by the projection: one for its subject and description, one per
-- comment. The rowid says whose part it is, so a search reads nothing but the index:
--
--     rowid = number << 32 | version << 1 | private
--
-- `number` is the ticket's (CONTRACT §3), `version` that of the comment's event (0 for the
-- subject and description, which an edit replaces in place) and `private` 1 for a private
-- comment. A word of `q` may be in any part the caller may see, so each word is matched on its
-- own and the tickets intersected.
--
-- A row per part, not per ticket: FTS5 re-indexes a whole row when it changes, so a row per
-- ticket would make every comment cost as much as all the ticket's text so far.
--
-- unicode61 folds case but keeps diacritics ("resume" does not match "résumé", as on
-- PostgreSQL), and with marks (M*) as token characters, words of scripts with combining vowel
-- signs stay whole.
CREATE VIRTUAL TABLE ticket_fts USING fts5 (
    body,
    tokenize = "unicode61 remove_diacritics 0 categories 'L* N* Co M*'"
);

-- From a search's ticket numbers to the tickets.
CREATE INDEX tickets_number ON tickets (number);

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

-- Lists of active tickets (an agent's queue, "my overdue requests") walk these partial
-- indexes, which hold only the active rows: a queue sorted by any key finds its page without
-- stepping over the resolved and closed majority. The list query spells `active = 1` as a
-- literal so that generic plans can use them.
CREATE INDEX tickets_active_last_activity ON tickets (last_activity_at, id) WHERE active = 1;
CREATE INDEX tickets_active_created ON tickets (created_at, id) WHERE active = 1;
CREATE INDEX tickets_active_due ON tickets (due_sort, id) WHERE active = 1;
CREATE INDEX tickets_active_priority ON tickets (priority_rank, id) WHERE active = 1;

-- "My overdue requests" (CONTRACT §6.1 `view=mine&overdue=true`, default sort -last_activity):
-- a customer's active tickets in the list's default order with `due_sort` beside the key, so
-- the overdue test is made in the index and only the page's rows are read.
CREATE INDEX tickets_requester_active_recent
    ON tickets (requester, last_activity_at, id, due_sort) WHERE active = 1;

-- The tickets changed since a page's starting position, found without a scan.
CREATE INDEX tickets_position ON tickets (position_tx, position_seq);
