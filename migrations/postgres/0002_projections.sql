-- The read side (projections/). Each projection's checkpoint: the last log position it applied,
-- committed in the same transaction as the read-model rows of that batch.
CREATE TABLE projection_checkpoints (
    name         text        PRIMARY KEY,
    position_tx  bigint      NOT NULL,
    position_seq bigint      NOT NULL,
    -- Microseconds since the Unix epoch, as on SQLite.
    updated_at   bigint      NOT NULL
);

-- One row per ticket (projection `tickets`). `state` is the domain's `Ticket` as JSON, folded
-- by `evolve`; the other columns are derived from it for filters and sorts. Sort times are
-- microseconds since the Unix epoch, the same on both backends, so one keyset query serves
-- both; `due_sort` is `due_at` with "none" as the largest value, so paging never compares NULLs.
CREATE TABLE tickets (
    id               uuid   PRIMARY KEY,
    number           bigint NOT NULL,
    status           text   NOT NULL,
    active           bigint NOT NULL,
    priority         text   NOT NULL,
    priority_rank    bigint NOT NULL,
    channel          text   NOT NULL,
    requester        text   NOT NULL,
    org              text,
    assignee         text,
    created_at       bigint NOT NULL,
    last_activity_at bigint NOT NULL,
    due_sort         bigint NOT NULL,
    version          bigint NOT NULL,
    position_tx      bigint NOT NULL,
    position_seq     bigint NOT NULL,
    state            text   NOT NULL
);

CREATE INDEX tickets_last_activity ON tickets (last_activity_at, id);
CREATE INDEX tickets_created ON tickets (created_at, id);
CREATE INDEX tickets_due ON tickets (due_sort, id);
CREATE INDEX tickets_priority ON tickets (priority_rank, id);
CREATE INDEX tickets_requester ON tickets (requester);
CREATE INDEX tickets_assignee ON tickets (assignee);
CREATE INDEX tickets_org ON tickets (org);

-- Who is on each ticket's CC, for the customer visibility rule and `view=cc`.
CREATE TABLE ticket_cc (
    ticket_id uuid NOT NULL,
    member    text NOT NULL,
    PRIMARY KEY (ticket_id, member)
);

CREATE INDEX ticket_cc_member ON ticket_cc (member, ticket_id);
