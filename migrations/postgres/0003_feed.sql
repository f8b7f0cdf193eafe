-- Projection `feed`: one row per event of a ticket (CONTRACT §6.3). `entry` is the feed item as
-- JSON; `private` marks entries a customer may not see (private comments).
CREATE TABLE ticket_feed (
    ticket_id uuid   NOT NULL,
    version   bigint NOT NULL,
    kind      text   NOT NULL,
    private   bigint NOT NULL,
    entry     text   NOT NULL,
    PRIMARY KEY (ticket_id, version)
);

-- Projection `feed` too: who read each ticket (CONTRACT §6.4); times in microseconds.
CREATE TABLE ticket_reads (
    ticket_id     uuid   NOT NULL,
    member        text   NOT NULL,
    name          text,
    first_read_at bigint NOT NULL,
    last_read_at  bigint NOT NULL,
    PRIMARY KEY (ticket_id, member)
);
