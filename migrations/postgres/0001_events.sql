-- Each stream's head, for optimistic concurrency: an append updates it only at the expected
-- version and hash, and the row lock serializes writers of one stream.
CREATE TABLE streams (
    stream_id uuid   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 0),
    last_hash bytea  NOT NULL
);

-- The event log, ordered by (tx_id, seq). Readers of the whole log only see transactions
-- older than their snapshot's xmin, so a later commit of an earlier id is never skipped.
CREATE TABLE events (
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    stream_id      uuid        NOT NULL,
    version        bigint      NOT NULL CHECK (version >= 1),
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version bigint      NOT NULL,
    recorded_at    timestamptz NOT NULL,
    metadata       bytea       NOT NULL,
    payload        bytea       NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
);

CREATE UNIQUE INDEX events_log_order ON events (tx_id, seq);

-- Command answers kept under their idempotency key, written in the append's statement.
-- User and key are bytea because text cannot hold NUL, and any string must be a valid key.
CREATE TABLE idempotency (
    user_id     bytea       NOT NULL,
    key         bytea       NOT NULL,
    fingerprint bytea       NOT NULL,
    response    bytea       NOT NULL,
    created_at  timestamptz NOT NULL,
    CONSTRAINT idempotency_pkey PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_created_at ON idempotency (created_at);

CREATE SEQUENCE ticket_numbers AS bigint START 1;
