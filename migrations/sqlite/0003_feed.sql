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
