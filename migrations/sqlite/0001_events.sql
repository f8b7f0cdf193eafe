-- The event log. One writer task commits in order, so the autoincrement row id is the log
-- order (positions are `0-<seq>`); AUTOINCREMENT keeps ids from ever being reused.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id      BLOB    NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_id       BLOB    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    -- Microseconds since the Unix epoch: exactly what the hash covers.
    recorded_at    INTEGER NOT NULL,
    metadata       BLOB    NOT NULL,
    payload        BLOB    NOT NULL,
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
) STRICT;

-- Command answers kept under their idempotency key, written with the command's events.
CREATE TABLE idempotency (
    user        TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    -- Microseconds since the Unix epoch.
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user, key)
) STRICT, WITHOUT ROWID;

CREATE INDEX idempotency_created_at ON idempotency (created_at);

-- Durable counters, advanced only by the writer task (ticket numbers).
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO counters (name, value) VALUES ('ticket_number', 0);
