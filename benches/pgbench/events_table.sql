-- The raw PostgreSQL baseline: a table shaped like ticketd's `events` (same columns, keys and
-- indexes), appended to by pgbench one event per transaction. Used by benches/pgbench/run.sh.
DROP TABLE IF EXISTS bench_events;
CREATE TABLE bench_events (
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
    CONSTRAINT bench_events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT bench_events_event_id UNIQUE (event_id)
);
CREATE UNIQUE INDEX bench_events_log_order ON bench_events (tx_id, seq);
