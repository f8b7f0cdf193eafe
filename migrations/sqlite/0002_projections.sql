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
    state            TEXT    NOT NULL
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
